//! `[console]`: the web console under `/ui/` (on the admin listener when there is one): on
//! or off, and how long a sign-in lasts.

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, Validator};

/// A sign-in shorter than this would end while the admin is still reading a page.
const MIN_SESSION: Duration = Duration::from_secs(60);
/// A stolen cookie works until it expires (or the token it signed in with changes): a week
/// at most.
const MAX_SESSION: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConsole {
    enabled: Option<bool>,
    #[serde(default, with = "humantime_serde")]
    session: Option<Duration>,
}

/// `[console]`, validated.
#[derive(Debug, Clone, Copy)]
pub struct ConsoleConfig {
    /// Off: every `/ui/` path answers 404, as if there were no console.
    pub enabled: bool,
    /// How long a sign-in lasts (the session cookie's life).
    pub session: Duration,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            enabled: true,
            session: Duration::from_secs(8 * 3600),
        }
    }
}

impl Validator<'_> {
    pub(super) fn console(&self, raw: &RawConsole) -> Result<ConsoleConfig, ConfigError> {
        let defaults = ConsoleConfig::default();
        let session = raw.session.unwrap_or(defaults.session);
        if !(MIN_SESSION..=MAX_SESSION).contains(&session) {
            return Err(self.invalid(
                "console.session",
                format!(
                    "must be between {} and {}",
                    humantime::format_duration(MIN_SESSION),
                    humantime::format_duration(MAX_SESSION)
                ),
            ));
        }
        Ok(ConsoleConfig {
            enabled: raw.enabled.unwrap_or(defaults.enabled),
            session,
        })
    }
}
