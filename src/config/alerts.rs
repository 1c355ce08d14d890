//! `[alerts]`: when a failing connector raises an alert, and which connector carries it.

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, Validator};
use crate::alert::AlertConfig;
use crate::connector::Connector;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAlerts {
    #[serde(default, with = "humantime_serde")]
    failing_for: Option<Duration>,
    notify: Option<String>,
}

impl Validator<'_> {
    pub(super) fn alerts(
        &self,
        raw: &RawAlerts,
        connectors: &[Connector],
    ) -> Result<AlertConfig, ConfigError> {
        let failing_for = raw.failing_for.unwrap_or(Duration::from_secs(600));
        if failing_for.is_zero() {
            return Err(self.invalid("alerts.failing_for", "must be more than 0"));
        }
        if let Some(name) = &raw.notify
            && crate::connector::find(connectors, name).is_none()
        {
            let names: Vec<&str> = connectors.iter().map(|c| c.name.as_str()).collect();
            return Err(self.invalid(
                "alerts.notify",
                format!(
                    "names no connector (the connectors are: {})",
                    names.join(", ")
                ),
            ));
        }
        Ok(AlertConfig {
            failing_for,
            notify: raw.notify.clone(),
        })
    }
}
