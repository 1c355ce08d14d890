//! `[retention]`: how long delivered (and, if asked, dead) work is kept before a background
//! task purges it, and how that task paces itself.

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, Validator};

/// Below this, the purge would look at the tables more often than anything changes in them.
const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Past this, one purge transaction holds the store's writer long enough to be felt by ingest.
const MAX_BATCH: usize = 10_000;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetention {
    #[serde(default, with = "humantime_serde")]
    delivered_after: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    dead_after: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    interval: Option<Duration>,
    batch: Option<usize>,
}

/// `[retention]`, validated.
#[derive(Debug, Clone, Copy)]
pub struct RetentionConfig {
    /// Incidents whose every delivery was delivered longer ago than this are purged.
    pub delivered_after: Duration,
    /// Dead deliveries older than this are purged too; `None`: kept until replayed.
    pub dead_after: Option<Duration>,
    /// How long the task waits after a pass that found nothing more to purge.
    pub interval: Duration,
    /// Incidents purged per transaction at most.
    pub batch: usize,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            delivered_after: Duration::from_secs(30 * 24 * 3600),
            dead_after: None,
            interval: Duration::from_secs(60),
            batch: 100,
        }
    }
}

impl Validator<'_> {
    pub(super) fn retention(&self, raw: &RawRetention) -> Result<RetentionConfig, ConfigError> {
        let defaults = RetentionConfig::default();
        let delivered_after = raw.delivered_after.unwrap_or(defaults.delivered_after);
        if delivered_after.is_zero() {
            return Err(self.invalid("retention.delivered_after", "must be more than 0"));
        }
        if matches!(raw.dead_after, Some(d) if d.is_zero()) {
            return Err(self.invalid("retention.dead_after", "must be more than 0"));
        }
        let interval = raw.interval.unwrap_or(defaults.interval);
        if interval < MIN_INTERVAL {
            return Err(self.invalid(
                "retention.interval",
                format!(
                    "must be at least {}",
                    humantime::format_duration(MIN_INTERVAL)
                ),
            ));
        }
        let batch = raw.batch.unwrap_or(defaults.batch);
        if !(1..=MAX_BATCH).contains(&batch) {
            return Err(self.invalid(
                "retention.batch",
                format!("must be between 1 and {MAX_BATCH}"),
            ));
        }
        Ok(RetentionConfig {
            delivered_after,
            dead_after: raw.dead_after,
            interval,
            batch,
        })
    }
}
