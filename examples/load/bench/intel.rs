//! `load intel`: ingest with a large IOC list loaded against the same gateway without one
//! (issue 16: lookups stay O(1) or O(log n) per value with 1,000,000 entries), with the list's
//! memory — the gateway's own estimate and the peak-RSS difference — and the time one lookup
//! takes, measured here on the same list through the gateway's library.

use std::io::Write as _;
use std::path::Path;
use std::time::Instant;

use super::Bench;
use super::load::Pace;
use super::report::{Row, Target as Goal, mib};

/// An address of the sample incident's attackers: every incident posted matches the list
/// once (the findings are written into each stored incident, as they would be in a storm of
/// matching incidents).
const MATCHED: &str = "86.34.222.99";

/// Writes a list of `n` entries: 60% IPv4 addresses (every 16th a /24), 30% domains, 10%
/// SHA-256 hashes, spread by a fixed sequence (the same file every run), plus [`MATCHED`].
pub fn write_list(path: &Path, n: u64) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(out, "# load intel: {n} entries")?;
    writeln!(out, "{MATCHED}")?;
    // A 64-bit LCG: fixed, fast, spread enough for a benchmark's list.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        x
    };
    for i in 1..n {
        let r = next();
        match i % 10 {
            0..=5 => {
                let [a, b, c, d] = ((r >> 32) as u32).to_be_bytes();
                // Keep clear of the sample's own networks (10/8 and 86/8).
                let a = if a == 10 || a == 86 { a + 1 } else { a };
                if i % 16 == 0 {
                    writeln!(out, "{a}.{b}.{c}.0/24")?;
                } else {
                    writeln!(out, "{a}.{b}.{c}.{d}")?;
                }
            }
            6..=8 => writeln!(out, "h{:012x}.bad{}.example", r >> 16, r % 97)?,
            _ => writeln!(
                out,
                "{:016x}{:016x}{:016x}{:016x}",
                r,
                next(),
                next(),
                next()
            )?,
        }
    }
    out.flush()?;
    Ok(())
}

impl Bench {
    pub(super) async fn intel(&mut self) -> anyhow::Result<()> {
        let n = self.cli.ioc_entries;
        eprintln!("\ningest with a {n}-entry IOC list loaded vs none, 1 connector");
        let dir = self.folder("intel")?;
        let list = dir.join("ioc.txt");
        write_list(&list, n)?;

        // The list through the gateway's own parser: load time, estimate, lookup time.
        let spec = incident_gateway::intel::ListSpec {
            name: "bench".into(),
            file: list.clone(),
            format: incident_gateway::intel::Format::Plain,
            accounts: None,
        };
        let started = Instant::now();
        let text = std::fs::read_to_string(&list)?;
        let parsed = incident_gateway::intel::IocList::parse(&spec, &text)?;
        let load_secs = started.elapsed().as_secs_f64();
        drop(text);
        let probes: Vec<String> = (0..200_000u32)
            .map(|i| match i % 3 {
                0 => std::net::Ipv4Addr::from(i.wrapping_mul(2_654_435_761)).to_string(),
                1 => format!("host{i}.bad{}.example", i % 97),
                _ => format!("{:064x}", u128::from(i) * 0x1000_0000_0000_0001),
            })
            .collect();
        let started = Instant::now();
        let mut found = 0usize;
        for p in &probes {
            found += usize::from(parsed.contains(p));
        }
        let lookup_ns = started.elapsed().as_nanos() as f64 / probes.len() as f64;
        let estimate = parsed.heap_bytes();
        eprintln!(
            "  parsed {} entries in {load_secs:.2} s; about {} bytes an entry; {lookup_ns:.0} ns a lookup ({found} of {} probes on the list)",
            parsed.entries,
            estimate / parsed.entries.max(1),
            probes.len()
        );
        drop(parsed);

        let tail = format!(
            "\n[threat_intel]\n[[threat_intel.lists]]\nname = \"bench\"\nfile = \"{}\"\n",
            list.display()
        );
        let rounds = self.cli.rounds.max(1);
        let (mut with, mut without) = (Vec::new(), Vec::new());
        for round in 1..=rounds {
            let tag = format!("round {round}/{rounds}");
            self.tail.clear();
            without.push(
                self.gateway_run(
                    &format!("gateway, no IOC list ({tag})"),
                    1,
                    Pace::Flat,
                    None,
                )
                .await?,
            );
            self.tail = tail.clone();
            let run = self
                .gateway_run(
                    &format!("gateway, {n} IOC entries ({tag})"),
                    1,
                    Pace::Flat,
                    None,
                )
                .await;
            self.tail.clear();
            with.push(run?);
        }
        let rss = |runs: &[super::report::RunResult]| {
            let mut v: Vec<u64> = runs.iter().filter_map(|r| r.peak_rss_kib).collect();
            v.sort_unstable();
            v.get(v.len() / 2).copied()
        };
        let (rss_with, rss_without) = (rss(&with), rss(&without));
        let w = self.median(&format!("gateway, {n} IOC entries"), with);
        let wo = self.median("gateway, no IOC list", without);
        self.rows.push(
            Row::new(format!("ingest rate, {n} IOC entries"), w.rate, "/s")
                .against("no list", wo.rate)
                .target(Goal::RatioAtLeast(0.9)),
        );
        if let (Some(a), Some(b)) = (rss_with, rss_without) {
            self.rows.push(
                Row::new(format!("peak RSS, {n} IOC entries"), mib(a), "MB")
                    .against("no list", mib(b)),
            );
            let per_entry = (a.saturating_sub(b) * 1024) as f64 / n.max(1) as f64;
            self.rows
                .push(Row::new("RSS added per IOC entry", per_entry, "B"));
        }
        self.rows.push(Row::new(
            "IOC list, gateway's estimate per entry",
            estimate as f64 / n.max(1) as f64,
            "B",
        ));
        self.rows.push(Row::new(
            format!("IOC lookup, {n} entries"),
            lookup_ns,
            "ns",
        ));
        self.rows.push(Row::new(
            format!("IOC list load, {n} entries"),
            load_secs,
            "s",
        ));
        Ok(())
    }
}
