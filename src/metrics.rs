//! Metrics: what an operator alerts on, in Prometheus' text format at `GET /metrics` (admin
//! API). Global counters are plain atomics; per-source and per-connector series live in
//! [`Family`] maps keyed by name, because connectors and sources come and go with a reload.
//!
//! Why hand-written rather than `prometheus-client`: its families are keyed by an owned label
//! set, so every lookup on the hot path builds (allocates) that key; here a lookup borrows the
//! name (`&str`) under a read lock held for one hash probe, and only a name's first use
//! allocates. The output is the classic text format `promtool check metrics` reads.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// How often the queue's depth per connector is read from the store in the background: a
/// scrape reads the last snapshot and so costs the same at 10 or 1,000,000 pending deliveries.
pub const QUEUE_REFRESH: Duration = Duration::from_secs(5);

/// Upper bounds (seconds) of the attempt latency histogram's buckets: from a fast local
/// receiver to a request that hits a long timeout.
const LATENCY_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Debug, Default)]
pub struct Metrics {
    /// Requests refused with 401 at ingress or the back channel (wrong key, bad signature,
    /// stale timestamp, replay): no hint which reaches the client, the count reaches you.
    pub auth_failures: AtomicU64,
    pub rate_limited: AtomicU64,
    pub rejected_4xx: AtomicU64,
    /// Requests refused before sending: a host outside allow_hosts, a forbidden address.
    pub egress_refused: AtomicU64,
    /// Incidents stored that matched a threat-intel list at ingest (counted after the commit).
    pub intel_matched: AtomicU64,
    /// Threat-intel list files read again after a change, and those refused (the old kept).
    pub intel_reloaded: AtomicU64,
    pub intel_refused: AtomicU64,
    /// Ingest requests refused with 503 because the store could not commit them (a full
    /// disk, an I/O error, the database down).
    pub store_failures: AtomicU64,
    /// SLA alerts said (queued), by kind: warning, breach, recovery.
    pub sla_alerts: [AtomicU64; 3],
    sources: Family<SourceMetrics>,
    /// Incidents by tenant: a bounded label (the configured tenants, `none`, `other`).
    tenants: Family<SourceMetrics>,
    connectors: Family<ConnectorMetrics>,
    queue: Mutex<QueueSnapshot>,
}

/// Incidents from one source, by outcome.
#[derive(Debug, Default)]
pub struct SourceMetrics {
    accepted: AtomicU64,
    duplicate: AtomicU64,
    updated: AtomicU64,
    rejected: AtomicU64,
}

/// One connector's attempts, latency and circuit.
#[derive(Debug, Default)]
pub struct ConnectorMetrics {
    delivered: AtomicU64,
    retry: AtomicU64,
    dead: AtomicU64,
    latency: Histogram,
    circuit_open: AtomicBool,
}

/// What one attempt led to, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    Delivered,
    Retry,
    Dead,
}

/// Series keyed by a name known only at run time.
#[derive(Debug)]
struct Family<T>(RwLock<HashMap<Arc<str>, Arc<T>>>);

impl<T> Default for Family<T> {
    fn default() -> Self {
        Family(RwLock::new(HashMap::new()))
    }
}

impl<T: Default> Family<T> {
    /// The series of `name`, created on first use; the read lock is held for one lookup.
    fn get(&self, name: &str) -> Arc<T> {
        if let Ok(map) = self.0.read()
            && let Some(found) = map.get(name)
        {
            return found.clone();
        }
        match self.0.write() {
            Ok(mut map) => map.entry(Arc::from(name)).or_default().clone(),
            // A panic while holding the lock cannot leave the map half-written (inserts are
            // whole), so its contents are still good.
            Err(poisoned) => poisoned
                .into_inner()
                .entry(Arc::from(name))
                .or_default()
                .clone(),
        }
    }

    fn snapshot(&self) -> Vec<(Arc<str>, Arc<T>)> {
        let map = match self.0.read() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// A Prometheus histogram of seconds with fixed buckets, updated without a lock.
#[derive(Debug, Default)]
struct Histogram {
    /// Per bucket (not cumulative; summed when rendered), and one past the last for +Inf.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|le| secs <= *le)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }
}

/// One connector's pending deliveries, as the store reported them.
#[derive(Debug, Clone, Default)]
pub struct QueueDepth {
    pub connector: String,
    pub pending: i64,
    /// The due time of its earliest due delivery (ms since the epoch), if one is due.
    pub oldest_due_ms: Option<i64>,
}

/// What the store made of an incident, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingested {
    Accepted,
    Duplicate,
    Updated,
}

/// The queue as last read from the store.
#[derive(Debug, Default)]
struct QueueSnapshot {
    depths: Vec<QueueDepth>,
    /// Dead deliveries per connector.
    dead: Vec<(String, i64)>,
    /// When it was read (ms since the epoch); 0 before the first read.
    read_at_ms: i64,
    /// How long the read took.
    took: Duration,
}

/// Running totals since start, for the console's rates: incidents stored (new versions),
/// attempts by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub incidents: u64,
    pub delivered: u64,
    pub retried: u64,
    pub dead: u64,
}

/// The queue as the background reader last saw it.
#[derive(Debug, Clone, Default)]
pub struct QueueView {
    pub depths: Vec<QueueDepth>,
    pub dead: Vec<(String, i64)>,
    /// 0 before the first read.
    pub read_at_ms: i64,
}

/// How often the console's rates are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// An hour of samples.
const SAMPLES: usize = 361;

/// The counters' samples, oldest first: the console's rates and its chart of the last hour.
#[derive(Default)]
pub struct Trend {
    samples: Mutex<VecDeque<(i64, Totals)>>,
}

/// Per-second rates between two samples.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rates {
    pub incidents: f64,
    pub delivered: f64,
    pub failed: f64,
}

fn rates(from: &(i64, Totals), to: &(i64, Totals)) -> Rates {
    let seconds = ((to.0 - from.0) as f64 / 1000.0).max(0.001);
    let per_s = |a: u64, b: u64| b.saturating_sub(a) as f64 / seconds;
    Rates {
        incidents: per_s(from.1.incidents, to.1.incidents),
        delivered: per_s(from.1.delivered, to.1.delivered),
        failed: per_s(from.1.retried + from.1.dead, to.1.retried + to.1.dead),
    }
}

impl Trend {
    pub fn record(&self, at_ms: i64, totals: Totals) {
        let mut samples = match self.samples.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        if samples.len() == SAMPLES {
            samples.pop_front();
        }
        samples.push_back((at_ms, totals));
    }

    /// The rates between consecutive samples, oldest first, each with its end time.
    pub fn series(&self) -> Vec<(i64, Rates)> {
        let samples = match self.samples.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        samples
            .iter()
            .zip(samples.iter().skip(1))
            .map(|(a, b)| (b.0, rates(a, b)))
            .collect()
    }

    /// The rates over the last minute (or as much as there is), up to `now` with `current`.
    pub fn last_minute(&self, now_ms: i64, current: Totals) -> Rates {
        let samples = match self.samples.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        let from = samples
            .iter()
            .find(|(at, _)| *at >= now_ms - 60_000)
            .or(samples.back());
        match from {
            Some(from) if from.0 < now_ms => rates(from, &(now_ms, current)),
            _ => Rates::default(),
        }
    }
}

impl Metrics {
    /// The totals the console's charts sample (reads only atomics).
    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for (_, s) in self.sources.snapshot() {
            t.incidents += s.accepted.load(Ordering::Relaxed) + s.updated.load(Ordering::Relaxed);
        }
        for (_, c) in self.connectors.snapshot() {
            t.delivered += c.delivered.load(Ordering::Relaxed);
            t.retried += c.retry.load(Ordering::Relaxed);
            t.dead += c.dead.load(Ordering::Relaxed);
        }
        t
    }

    /// The queue snapshot `/metrics` shows (read every [`QUEUE_REFRESH`], not per page view).
    pub fn queue_view(&self) -> QueueView {
        let q = match self.queue.lock() {
            Ok(q) => q,
            Err(poisoned) => poisoned.into_inner(),
        };
        QueueView {
            depths: q.depths.clone(),
            dead: q.dead.clone(),
            read_at_ms: q.read_at_ms,
        }
    }

    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one incident from `source` by what the store made of it.
    /// Counts an incident stored (or found a duplicate) from `source`, for `tenant` (see
    /// [`tenant_label`]).
    pub fn incident(&self, source: &str, tenant: &str, status: Ingested) {
        for s in [self.sources.get(source), self.tenants.get(tenant)] {
            Self::inc(match status {
                Ingested::Accepted => &s.accepted,
                Ingested::Duplicate => &s.duplicate,
                Ingested::Updated => &s.updated,
            });
        }
    }

    /// Counts a request from `source` refused as invalid (4xx other than 401 and 429).
    pub fn incident_rejected(&self, source: &str) {
        Self::inc(&self.sources.get(source).rejected);
    }

    /// Counts one attempt at `connector` and how long it took.
    pub fn attempt(&self, connector: &str, outcome: AttemptOutcome, elapsed: Duration) {
        let c = self.connectors.get(connector);
        Self::inc(match outcome {
            AttemptOutcome::Delivered => &c.delivered,
            AttemptOutcome::Retry => &c.retry,
            AttemptOutcome::Dead => &c.dead,
        });
        c.latency.observe(elapsed);
    }

    /// The circuit breaker's hook: call it whenever `connector`'s circuit opens (`true`) or
    /// closes (`false`); `igw_connector_circuit_open` shows the last value (0 until called).
    pub fn set_circuit(&self, connector: &str, open: bool) {
        self.connectors
            .get(connector)
            .circuit_open
            .store(open, Ordering::Relaxed);
    }

    /// Replaces the queue snapshot (the background reader calls this every [`QUEUE_REFRESH`]).
    pub fn set_queue(
        &self,
        depths: Vec<QueueDepth>,
        dead: Vec<(String, i64)>,
        read_at_ms: i64,
        took: Duration,
    ) {
        let mut q = match self.queue.lock() {
            Ok(q) => q,
            Err(poisoned) => poisoned.into_inner(),
        };
        *q = QueueSnapshot {
            depths,
            dead,
            read_at_ms,
            took,
        };
    }

    /// The text format; `configured` are the connectors in force, shown even before their
    /// first attempt so that a rate or an absence alert has a series to look at.
    pub fn render(&self, configured: &[&str], now_ms: i64) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP igw_build_info The running build; the value is always 1.\n\
             # TYPE igw_build_info gauge\n\
             igw_build_info{{version=\"{}\",name=\"{}\"}} 1",
            label_value(env!("CARGO_PKG_VERSION")),
            label_value(env!("CARGO_PKG_NAME")),
        );
        self.render_incidents(&mut out);
        for (name, help, counter) in [
            (
                "igw_auth_failures_total",
                "Requests refused with 401 (wrong key, bad signature, stale timestamp, replay).",
                &self.auth_failures,
            ),
            (
                "igw_rate_limited_total",
                "Requests refused with 429.",
                &self.rate_limited,
            ),
            (
                "igw_rejected_total",
                "Requests refused with another 4xx (malformed, too large, invalid).",
                &self.rejected_4xx,
            ),
            (
                "igw_egress_refused_total",
                "Requests not sent because of where they would go.",
                &self.egress_refused,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                counter.load(Ordering::Relaxed)
            );
        }
        self.render_connectors(&mut out, configured, now_ms);
        out
    }

    /// The threat-intel lists in force (entries and estimated memory, per list), what they
    /// matched, and how their reloads went.
    /// `lists`: each list's name, entries and estimated bytes.
    pub fn render_threat_intel(&self, lists: &[(&str, usize, usize)]) -> String {
        let mut out = String::new();
        for (metric, help, bytes) in [
            (
                "igw_threat_intel_entries",
                "IOC entries loaded, by list.",
                false,
            ),
            (
                "igw_threat_intel_bytes",
                "Estimated heap held by a list's lookup structures.",
                true,
            ),
        ] {
            let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} gauge");
            for (name, entries, heap) in lists {
                let value = if bytes { heap } else { entries };
                let _ = writeln!(out, "{metric}{{list=\"{}\"}} {value}", label_value(name));
            }
        }
        let _ = writeln!(
            out,
            "# HELP igw_ingest_store_failures_total Ingest requests refused with 503 because the store could not commit them (full disk, I/O error, database down).\n\
             # TYPE igw_ingest_store_failures_total counter\n\
             igw_ingest_store_failures_total {}",
            self.store_failures.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP igw_sla_alerts_total SLA warnings, breaches and recoveries this process queued (each once per ticket and level).\n\
             # TYPE igw_sla_alerts_total counter\n\
             igw_sla_alerts_total{{alert=\"warning\"}} {}\n\
             igw_sla_alerts_total{{alert=\"breach\"}} {}\n\
             igw_sla_alerts_total{{alert=\"recovery\"}} {}",
            self.sla_alerts[0].load(Ordering::Relaxed),
            self.sla_alerts[1].load(Ordering::Relaxed),
            self.sla_alerts[2].load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP igw_threat_intel_matched_total Incidents stored that matched a threat-intel list at ingest.\n\
             # TYPE igw_threat_intel_matched_total counter\n\
             igw_threat_intel_matched_total {}",
            self.intel_matched.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP igw_threat_intel_reloads_total List files read again after a change, by outcome (refused: a file did not parse; the lists in force stayed).\n\
             # TYPE igw_threat_intel_reloads_total counter\n\
             igw_threat_intel_reloads_total{{outcome=\"success\"}} {}\n\
             igw_threat_intel_reloads_total{{outcome=\"refused\"}} {}",
            self.intel_reloaded.load(Ordering::Relaxed),
            self.intel_refused.load(Ordering::Relaxed)
        );
        out
    }

    fn render_incidents(&self, out: &mut String) {
        let mut sources = self.sources.snapshot();
        sources.sort_by(|a, b| a.0.cmp(&b.0));
        let _ = writeln!(
            out,
            "# HELP igw_incidents_total Incidents received, by source and outcome.\n\
             # TYPE igw_incidents_total counter"
        );
        for (name, s) in &sources {
            let source = label_value(name);
            for (outcome, v) in [
                ("accepted", &s.accepted),
                ("duplicate", &s.duplicate),
                ("updated", &s.updated),
                ("rejected", &s.rejected),
            ] {
                let _ = writeln!(
                    out,
                    "igw_incidents_total{{source=\"{source}\",outcome=\"{outcome}\"}} {}",
                    v.load(Ordering::Relaxed)
                );
            }
        }
        let mut tenants = self.tenants.snapshot();
        tenants.sort_by(|a, b| a.0.cmp(&b.0));
        let _ = writeln!(
            out,
            "# HELP igw_tenant_incidents_total Incidents received, by tenant (none: no accountId; \
             other: an account no tenant has) and outcome.\n\
             # TYPE igw_tenant_incidents_total counter"
        );
        for (name, t) in &tenants {
            let tenant = label_value(name);
            for (outcome, v) in [
                ("accepted", &t.accepted),
                ("duplicate", &t.duplicate),
                ("updated", &t.updated),
            ] {
                let _ = writeln!(
                    out,
                    "igw_tenant_incidents_total{{tenant=\"{tenant}\",outcome=\"{outcome}\"}} {}",
                    v.load(Ordering::Relaxed)
                );
            }
        }
    }

    fn render_connectors(&self, out: &mut String, configured: &[&str], now_ms: i64) {
        let (depths, dead, read_at_ms, took) = match self.queue.lock() {
            Ok(q) => (q.depths.clone(), q.dead.clone(), q.read_at_ms, q.took),
            Err(poisoned) => {
                let q = poisoned.into_inner();
                (q.depths.clone(), q.dead.clone(), q.read_at_ms, q.took)
            }
        };
        // Every connector anything is known of: configured, attempted, or with a queue (an
        // orphaned connector keeps its queue after a reload removed it).
        let mut names: BTreeMap<String, Option<Arc<ConnectorMetrics>>> = BTreeMap::new();
        for name in configured {
            names.insert((*name).to_string(), None);
        }
        for d in &depths {
            names.entry(d.connector.clone()).or_default();
        }
        for (name, _) in &dead {
            names.entry(name.clone()).or_default();
        }
        for (name, m) in self.connectors.snapshot() {
            names.insert(name.to_string(), Some(m));
        }
        let series: Vec<(String, Option<Arc<ConnectorMetrics>>)> = names
            .into_iter()
            .map(|(name, m)| (label_value(&name), m))
            .collect();
        let load = |v: Option<&AtomicU64>| v.map_or(0, |v| v.load(Ordering::Relaxed));

        let _ = writeln!(
            out,
            "# HELP igw_connector_deliveries_total Delivery attempts, by connector and outcome.\n\
             # TYPE igw_connector_deliveries_total counter"
        );
        for (name, m) in &series {
            for (outcome, v) in [
                ("delivered", m.as_ref().map(|m| &m.delivered)),
                ("retry", m.as_ref().map(|m| &m.retry)),
                ("dead", m.as_ref().map(|m| &m.dead)),
            ] {
                let _ = writeln!(
                    out,
                    "igw_connector_deliveries_total{{connector=\"{name}\",outcome=\"{outcome}\"}} {}",
                    load(v)
                );
            }
        }

        let _ = writeln!(
            out,
            "# HELP igw_connector_attempt_duration_seconds How long one delivery attempt took, by connector.\n\
             # TYPE igw_connector_attempt_duration_seconds histogram"
        );
        for (name, m) in &series {
            let h = m.as_ref().map(|m| &m.latency);
            let mut cumulative = 0;
            for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
                cumulative += load(h.map(|h| &h.buckets[i]));
                let _ = writeln!(
                    out,
                    "igw_connector_attempt_duration_seconds_bucket{{connector=\"{name}\",le=\"{le}\"}} {cumulative}"
                );
            }
            let count = load(h.map(|h| &h.count));
            // Micros to seconds for display only; precision beyond a microsecond is noise here.
            #[allow(clippy::cast_precision_loss)]
            let sum = load(h.map(|h| &h.sum_micros)) as f64 / 1e6;
            let _ = writeln!(
                out,
                "igw_connector_attempt_duration_seconds_bucket{{connector=\"{name}\",le=\"+Inf\"}} {count}\n\
                 igw_connector_attempt_duration_seconds_sum{{connector=\"{name}\"}} {sum}\n\
                 igw_connector_attempt_duration_seconds_count{{connector=\"{name}\"}} {count}"
            );
        }

        let depth_of = |label: &str| depths.iter().find(|d| label_value(&d.connector) == label);
        let _ = writeln!(
            out,
            "# HELP igw_connector_pending_deliveries Deliveries waiting (due or scheduled), by connector, as of the last queue read.\n\
             # TYPE igw_connector_pending_deliveries gauge"
        );
        for (name, _) in &series {
            let pending = depth_of(name).map_or(0, |d| d.pending);
            let _ = writeln!(
                out,
                "igw_connector_pending_deliveries{{connector=\"{name}\"}} {pending}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP igw_connector_oldest_due_age_seconds How long the earliest due delivery has waited past its due time, by connector (0 if none is due).\n\
             # TYPE igw_connector_oldest_due_age_seconds gauge"
        );
        for (name, _) in &series {
            let age_ms = depth_of(name)
                .and_then(|d| d.oldest_due_ms)
                .map_or(0, |due| (now_ms - due).max(0));
            let _ = writeln!(
                out,
                "igw_connector_oldest_due_age_seconds{{connector=\"{name}\"}} {}",
                seconds(age_ms)
            );
        }
        let _ = writeln!(
            out,
            "# HELP igw_connector_dead_deliveries Dead deliveries kept (until replayed, resolved or purged), by connector, as of the last queue read.\n\
             # TYPE igw_connector_dead_deliveries gauge"
        );
        for (name, _) in &series {
            let count = dead
                .iter()
                .find(|(connector, _)| label_value(connector) == *name)
                .map_or(0, |(_, n)| *n);
            let _ = writeln!(
                out,
                "igw_connector_dead_deliveries{{connector=\"{name}\"}} {count}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP igw_connector_circuit_open Whether a connector's circuit breaker is open (sending held).\n\
             # TYPE igw_connector_circuit_open gauge"
        );
        for (name, m) in &series {
            let open = m
                .as_ref()
                .is_some_and(|m| m.circuit_open.load(Ordering::Relaxed));
            let _ = writeln!(
                out,
                "igw_connector_circuit_open{{connector=\"{name}\"}} {}",
                u8::from(open)
            );
        }
        let _ = writeln!(
            out,
            "# HELP igw_queue_snapshot_age_seconds How old the queue figures above are (-1 before the first read).\n\
             # TYPE igw_queue_snapshot_age_seconds gauge\n\
             igw_queue_snapshot_age_seconds {}",
            if read_at_ms == 0 {
                "-1".to_string()
            } else {
                seconds((now_ms - read_at_ms).max(0))
            }
        );
        let _ = writeln!(
            out,
            "# HELP igw_queue_read_duration_seconds How long the last read of the queue figures took in the store.\n\
             # TYPE igw_queue_read_duration_seconds gauge\n\
             igw_queue_read_duration_seconds {}",
            took.as_secs_f64()
        );
    }
}

fn seconds(ms: i64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// The `tenant` label of an incident of `account`: its tenant's name (`tenants`: account →
/// name), `none` without an account, `other` for an account no tenant has — bounded by the
/// config, whatever accounts arrive.
pub fn tenant_label(
    tenants: &std::collections::BTreeMap<i64, String>,
    account: Option<i64>,
) -> &str {
    match account {
        None => "none",
        Some(a) => tenants.get(&a).map_or("other", String::as_str),
    }
}

/// `value` escaped for a Prometheus label (backslash, double quote, newline).
pub fn label_value(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_per_second_between_samples() {
        let trend = Trend::default();
        let at = |incidents, delivered| Totals {
            incidents,
            delivered,
            retried: 0,
            dead: 0,
        };
        trend.record(0, at(0, 0));
        trend.record(10_000, at(50, 20));
        trend.record(20_000, at(150, 20));
        let series = trend.series();
        assert_eq!(series.len(), 2);
        assert_eq!(series[0].1.incidents, 5.0);
        assert_eq!(series[1].1.incidents, 10.0);
        assert_eq!(series[1].1.delivered, 0.0);
        // The last minute: from the oldest sample within it to now.
        let r = trend.last_minute(30_000, at(300, 50));
        assert_eq!(r.incidents, 10.0);
        // Nothing before: no rate rather than a division by nothing.
        assert_eq!(Trend::default().last_minute(5, at(1, 1)), Rates::default());
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_count_every_attempt() {
        let m = Metrics::default();
        m.attempt("a", AttemptOutcome::Delivered, Duration::from_millis(3));
        m.attempt("a", AttemptOutcome::Retry, Duration::from_millis(300));
        m.attempt("a", AttemptOutcome::Dead, Duration::from_secs(100));
        let text = m.render(&["a"], 0);
        assert!(text.contains(
            "igw_connector_attempt_duration_seconds_bucket{connector=\"a\",le=\"0.005\"} 1"
        ));
        assert!(text.contains(
            "igw_connector_attempt_duration_seconds_bucket{connector=\"a\",le=\"0.5\"} 2"
        ));
        assert!(text.contains(
            "igw_connector_attempt_duration_seconds_bucket{connector=\"a\",le=\"30\"} 2"
        ));
        assert!(text.contains(
            "igw_connector_attempt_duration_seconds_bucket{connector=\"a\",le=\"+Inf\"} 3"
        ));
        assert!(text.contains("igw_connector_attempt_duration_seconds_count{connector=\"a\"} 3"));
        assert!(
            text.contains("igw_connector_attempt_duration_seconds_sum{connector=\"a\"} 100.303")
        );
    }

    #[test]
    fn names_are_escaped_and_queue_ages_count_from_the_due_time() {
        let m = Metrics::default();
        m.set_circuit("q\"x", true);
        m.set_queue(
            vec![QueueDepth {
                connector: "q\"x".into(),
                pending: 7,
                oldest_due_ms: Some(1_000),
            }],
            vec![("q\"x".into(), 3)],
            2_000,
            Duration::from_millis(4),
        );
        let text = m.render(&[], 3_500);
        assert!(text.contains("igw_connector_circuit_open{connector=\"q\\\"x\"} 1"));
        assert!(text.contains("igw_connector_pending_deliveries{connector=\"q\\\"x\"} 7"));
        assert!(text.contains("igw_connector_oldest_due_age_seconds{connector=\"q\\\"x\"} 2.500"));
        assert!(text.contains("igw_connector_dead_deliveries{connector=\"q\\\"x\"} 3"));
        assert!(text.contains("igw_queue_snapshot_age_seconds 1.500"));
    }
}
