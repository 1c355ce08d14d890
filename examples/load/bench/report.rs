//! What a run measured, and the table of figures against baselines and targets.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use super::load::Outcome;
use super::receiver::Receipt;

/// Latency percentiles in milliseconds; infinite: some requests' deliveries never arrived.
#[derive(Clone, Copy, Debug)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    /// From durations in nanoseconds (`u64::MAX`: never happened).
    fn of(mut ns: Vec<u64>) -> Option<Percentiles> {
        if ns.is_empty() {
            return None;
        }
        ns.sort_unstable();
        let at = |q: f64| {
            // Nearest rank: the smallest value with at least q of the samples at or below it.
            // (Less a hair, so 0.99 × 100 is rank 99 whichever way the float rounds.)
            let rank = ((q * ns.len() as f64 - 1e-9).ceil() as usize).clamp(1, ns.len());
            ms(ns[rank - 1])
        };
        Some(Percentiles {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: at(1.0),
        })
    }
}

fn ms(ns: u64) -> f64 {
    if ns == u64::MAX {
        f64::INFINITY
    } else {
        ns as f64 / 1e6
    }
}

/// One measured run against one server.
#[derive(Clone, Debug)]
pub struct RunResult {
    pub label: String,
    /// Requests answered 202 over the whole run, warm-up included.
    pub accepted_total: u64,
    /// Requests answered 202 per second in the window.
    pub rate: f64,
    /// Ingest response latency of the requests started in the window.
    pub latency: Option<Percentiles>,
    /// Requests not answered 202, over the whole run.
    pub errors: u64,
    pub error_kinds: BTreeMap<String, u64>,
    /// Distinct deliveries (request, connector) received per second in the window.
    pub received_rate: f64,
    /// Ingest-to-receipt latency (from the request's start), when the run waited for them.
    pub e2e: Option<Percentiles>,
    /// Deliveries of requests accepted in the window that never arrived (when the run
    /// waited for them).
    pub missing: u64,
    /// Deliveries received more than once.
    pub duplicates: u64,
    pub peak_rss_kib: Option<u64>,
}

/// The destinations (connectors) each accepted request goes to: lanes `0..n`.
#[derive(Clone, Copy, Debug)]
pub struct Lanes(pub u16);

/// Folds what was sent and what was received into a run's figures.
pub fn analyze(
    label: String,
    outcome: &Outcome,
    receipts: &[Receipt],
    warmup: f64,
    duration: f64,
    waited: Option<Lanes>,
) -> RunResult {
    let w0 = outcome.started + (warmup * 1e9) as u64;
    let w1 = w0 + (duration * 1e9) as u64;
    let in_window = |t: u64| t >= w0 && t <= w1;

    // A delivery is one (request, connector): the first time it arrived.
    let mut first: HashMap<(u64, u16), u64> = HashMap::with_capacity(receipts.len());
    for r in receipts {
        first
            .entry((r.seq, r.lane))
            .and_modify(|t| *t = (*t).min(r.at))
            .or_insert(r.at);
    }
    let duplicates = (receipts.len() - first.len()) as u64;
    let received = first.values().filter(|&&t| in_window(t)).count();

    let mut error_kinds = outcome.failures.clone();
    let (mut accepted_total, mut accepted_window, mut errors) = (0u64, 0u64, 0u64);
    let mut latencies = Vec::new();
    let mut e2e = Vec::new();
    let mut missing = 0;
    for s in &outcome.sent {
        if s.status != 202 {
            errors += 1;
            if s.status != 0 {
                *error_kinds.entry(format!("HTTP {}", s.status)).or_insert(0) += 1;
            }
            continue;
        }
        accepted_total += 1;
        if in_window(s.end) {
            accepted_window += 1;
        }
        if in_window(s.start) {
            latencies.push(s.end - s.start);
            for lane in waited.map_or(0..0, |l| 0..l.0) {
                match first.get(&(s.seq, lane)) {
                    Some(&at) => e2e.push(at.saturating_sub(s.start)),
                    None => {
                        missing += 1;
                        e2e.push(u64::MAX);
                    }
                }
            }
        }
    }
    RunResult {
        label,
        accepted_total,
        rate: accepted_window as f64 / duration,
        latency: Percentiles::of(latencies),
        errors,
        error_kinds,
        received_rate: received as f64 / duration,
        e2e: Percentiles::of(e2e),
        missing,
        duplicates,
        peak_rss_kib: None,
    }
}

impl RunResult {
    /// One line for the terminal as the run ends.
    pub fn summary(&self) -> String {
        let mut s = format!("{}: {:.0}/s accepted", self.label, self.rate);
        if let Some(l) = self.latency {
            let _ = write!(
                s,
                ", ingest latency p50 {} p90 {} p99 {} max {} ms",
                num(l.p50),
                num(l.p90),
                num(l.p99),
                num(l.max)
            );
        }
        if self.received_rate > 0.0 {
            let _ = write!(s, ", delivered {:.0}/s", self.received_rate);
        }
        if let Some(l) = self.e2e {
            let _ = write!(
                s,
                ", ingest-to-receipt p50 {} p99 {} ms",
                num(l.p50),
                num(l.p99)
            );
            if self.missing > 0 {
                let _ = write!(s, " ({} never arrived)", self.missing);
            }
        }
        if self.duplicates > 0 {
            let _ = write!(s, ", {} received twice", self.duplicates);
        }
        let _ = write!(s, ", errors {}", self.errors);
        if !self.error_kinds.is_empty() {
            let kinds: Vec<String> = self
                .error_kinds
                .iter()
                .map(|(k, n)| format!("{k} ×{n}"))
                .collect();
            let _ = write!(s, " ({})", kinds.join("; "));
        }
        if let Some(kib) = self.peak_rss_kib {
            let _ = write!(s, ", peak RSS {:.0} MB", mib(kib));
        }
        s
    }
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// A number with sensible precision (ms, rates).
pub fn num(x: f64) -> String {
    if x.is_infinite() {
        "∞".into()
    } else if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// What a target asks of a figure.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    None,
    /// The ratio to the baseline at least this.
    RatioAtLeast(f64),
    /// The ratio to the baseline at most this (a latency that may grow only so much).
    RatioAtMost(f64),
    /// The value at most this (in the figure's unit).
    AtMost(f64),
}

/// One line of the table.
#[derive(Clone, Debug)]
pub struct Row {
    pub figure: String,
    pub value: f64,
    pub unit: &'static str,
    pub baseline: Option<(String, f64)>,
    pub target: Target,
}

impl Row {
    pub fn new(figure: impl Into<String>, value: f64, unit: &'static str) -> Row {
        Row {
            figure: figure.into(),
            value,
            unit,
            baseline: None,
            target: Target::None,
        }
    }

    pub fn against(mut self, name: impl Into<String>, value: f64) -> Row {
        self.baseline = Some((name.into(), value));
        self
    }

    pub fn target(mut self, t: Target) -> Row {
        self.target = t;
        self
    }

    pub fn ratio(&self) -> Option<f64> {
        self.baseline
            .as_ref()
            .and_then(|(_, b)| (*b > 0.0 && b.is_finite()).then(|| self.value / b))
    }

    pub fn met(&self) -> Option<bool> {
        match self.target {
            Target::None => None,
            Target::RatioAtLeast(r) => Some(self.ratio().is_some_and(|x| x >= r)),
            Target::RatioAtMost(r) => Some(self.ratio().is_some_and(|x| x <= r)),
            Target::AtMost(v) => Some(self.value <= v),
        }
    }

    fn cells(&self) -> [String; 6] {
        let value = |v: f64| match self.unit {
            "" => format!("{v:.0}"),
            unit => format!("{} {unit}", num(v)),
        };
        let baseline = match &self.baseline {
            Some((name, v)) => format!("{} ({name})", value(*v)),
            None => "—".into(),
        };
        let ratio = match self.ratio() {
            Some(r) => format!("{:.0}%", r * 100.0),
            None => "—".into(),
        };
        let target = match self.target {
            Target::None => "—".into(),
            Target::RatioAtLeast(r) => format!("≥ {:.0}%", r * 100.0),
            Target::RatioAtMost(r) => format!("≤ {:.0}%", r * 100.0),
            Target::AtMost(v) => format!("≤ {}", value(v)),
        };
        let met = match self.met() {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "—",
        };
        [
            self.figure.clone(),
            value(self.value),
            baseline,
            ratio,
            target,
            met.into(),
        ]
    }
}

/// The rows as a Markdown table (pasteable into BENCHMARKS.md).
pub fn table(rows: &[Row]) -> String {
    let header = ["figure", "value", "baseline", "ratio", "target", "met?"].map(String::from);
    let cells: Vec<[String; 6]> = rows.iter().map(Row::cells).collect();
    let mut width = header.clone().map(|h| h.chars().count());
    for c in &cells {
        for (w, s) in width.iter_mut().zip(c) {
            *w = (*w).max(s.chars().count());
        }
    }
    let line = |c: &[String; 6]| {
        let padded: Vec<String> = c
            .iter()
            .zip(width)
            .map(|(s, w)| format!("{s}{}", " ".repeat(w - s.chars().count())))
            .collect();
        format!("| {} |\n", padded.join(" | "))
    };
    let mut out = line(&header);
    out.push_str(&format!(
        "|{}|\n",
        width.map(|w| "-".repeat(w + 2)).join("|")
    ));
    for c in &cells {
        out.push_str(&line(c));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let p = Percentiles::of((1..=100).map(|i| i * 1_000_000).collect()).expect("samples");
        assert_eq!((p.p50, p.p90, p.p99, p.max), (50.0, 90.0, 99.0, 100.0));
        let p = Percentiles::of(vec![1_000_000, u64::MAX]).expect("samples");
        assert!(p.max.is_infinite() && p.p50 == 1.0);
    }

    #[test]
    fn ratios_and_targets() {
        let r = Row::new("rate", 80.0, "/s")
            .against("b", 100.0)
            .target(Target::RatioAtLeast(0.8));
        assert_eq!(r.met(), Some(true));
        let r = Row::new("p99", 12.0, "ms")
            .against("b", 3.0)
            .target(Target::AtMost(10.0));
        assert_eq!((r.ratio(), r.met()), (Some(4.0), Some(false)));
        assert!(table(&[r]).contains("| p99"));
    }
}
