//! `[reload]`: whether the gateway watches its config and template files and reloads when
//! they change (SIGHUP and `POST /v1/admin/reload` work either way).

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, Validator};

/// Below this, polling the files' metadata costs more than it tells.
const MIN_INTERVAL: Duration = Duration::from_millis(200);

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReload {
    #[serde(default)]
    watch: bool,
    #[serde(default, with = "humantime_serde")]
    interval: Option<Duration>,
}

/// `[reload]`, validated.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReloadConfig {
    /// How often the files are looked at, when they are watched.
    pub watch: Option<Duration>,
}

impl Validator<'_> {
    pub(super) fn reload(&self, raw: &RawReload) -> Result<ReloadConfig, ConfigError> {
        let interval = raw.interval.unwrap_or(Duration::from_secs(2));
        if interval < MIN_INTERVAL {
            return Err(self.invalid(
                "reload.interval",
                format!(
                    "must be at least {}",
                    humantime::format_duration(MIN_INTERVAL)
                ),
            ));
        }
        Ok(ReloadConfig {
            watch: raw.watch.then_some(interval),
        })
    }
}
