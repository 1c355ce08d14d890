//! `[delivery]`: how the workers send — how many at once, the lease, the render budget and
//! threads — built into the workers' own [`DeliveryConfig`].

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, Validator};
use crate::deliver::DeliveryConfig;

/// The shortest lease: renewed every third of it, a renewal must have time to commit.
const MIN_LEASE: Duration = Duration::from_secs(3);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDelivery {
    concurrency: Option<usize>,
    #[serde(default = "default_lease", with = "humantime_serde")]
    lease: Duration,
    #[serde(default = "default_render_budget", with = "humantime_serde")]
    render_budget: Duration,
    render_threads: Option<usize>,
}

impl Default for RawDelivery {
    fn default() -> Self {
        RawDelivery {
            concurrency: None,
            lease: default_lease(),
            render_budget: default_render_budget(),
            render_threads: None,
        }
    }
}

fn default_lease() -> Duration {
    Duration::from_secs(120)
}
fn default_render_budget() -> Duration {
    Duration::from_secs(5)
}

/// Half the cores (at least one): renders never take every core from the listener.
fn default_render_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

impl Validator<'_> {
    pub(super) fn delivery(&self, raw: &RawDelivery) -> Result<DeliveryConfig, ConfigError> {
        if raw.concurrency == Some(0) {
            return Err(self.invalid("delivery.concurrency", "must be at least 1"));
        }
        if raw.lease < MIN_LEASE {
            return Err(self.invalid(
                "delivery.lease",
                format!("must be at least {}", humantime::format_duration(MIN_LEASE)),
            ));
        }
        if raw.render_budget.is_zero() {
            return Err(self.invalid("delivery.render_budget", "must be more than 0"));
        }
        if raw.render_threads == Some(0) {
            return Err(self.invalid("delivery.render_threads", "must be at least 1"));
        }
        Ok(DeliveryConfig {
            concurrency: raw.concurrency,
            lease: raw.lease,
            render_budget: raw.render_budget,
            render_threads: raw.render_threads.unwrap_or_else(default_render_threads),
        })
    }
}
