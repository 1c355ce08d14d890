//! Metrics: counters an operator alerts on, in Prometheus' text format at `GET /metrics`
//! (admin API).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Metrics {
    pub incidents_accepted: AtomicU64,
    pub incidents_duplicate: AtomicU64,
    pub incidents_updated: AtomicU64,
    /// Requests refused with 401 at ingress or the back channel (wrong key, bad signature,
    /// stale timestamp, replay): no hint which reaches the client, the count reaches you.
    pub auth_failures: AtomicU64,
    pub rate_limited: AtomicU64,
    pub rejected_4xx: AtomicU64,
    pub deliveries_delivered: AtomicU64,
    pub deliveries_retried: AtomicU64,
    pub deliveries_dead: AtomicU64,
    /// Requests refused before sending: a host outside allow_hosts, a forbidden address.
    pub egress_refused: AtomicU64,
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, samples: &[(&str, &AtomicU64)]| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            for (labels, value) in samples {
                let v = value.load(Ordering::Relaxed);
                if labels.is_empty() {
                    let _ = writeln!(out, "{name} {v}");
                } else {
                    let _ = writeln!(out, "{name}{{{labels}}} {v}");
                }
            }
        };
        counter(
            "igw_incidents_total",
            "Incidents received, by outcome.",
            &[
                ("status=\"accepted\"", &self.incidents_accepted),
                ("status=\"duplicate\"", &self.incidents_duplicate),
                ("status=\"updated\"", &self.incidents_updated),
            ],
        );
        counter(
            "igw_auth_failures_total",
            "Requests refused with 401 (wrong key, bad signature, stale timestamp, replay).",
            &[("", &self.auth_failures)],
        );
        counter(
            "igw_rate_limited_total",
            "Requests refused with 429.",
            &[("", &self.rate_limited)],
        );
        counter(
            "igw_rejected_total",
            "Requests refused with another 4xx (malformed, too large, invalid).",
            &[("", &self.rejected_4xx)],
        );
        counter(
            "igw_delivery_attempts_total",
            "Delivery attempts, by outcome.",
            &[
                ("outcome=\"delivered\"", &self.deliveries_delivered),
                ("outcome=\"retry\"", &self.deliveries_retried),
                ("outcome=\"dead\"", &self.deliveries_dead),
            ],
        );
        counter(
            "igw_egress_refused_total",
            "Requests not sent because of where they would go.",
            &[("", &self.egress_refused)],
        );
        out
    }
}

/// `value` escaped for a Prometheus label (backslash, double quote, newline).
pub fn label_value(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
