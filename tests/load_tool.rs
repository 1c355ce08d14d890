//! Keeps the load tool (`examples/load`, see BENCHMARKS.md) working: its code, included here,
//! runs short scenarios against the real gateway binary. It asserts that the tool measures
//! something and that nothing failed, never how fast anything was.

use clap::Parser as _;

// The tool's own code (not a copy), so a change that breaks it fails here.
#[allow(dead_code)]
#[path = "../examples/load/bench/mod.rs"]
mod bench;

fn tool(args: &[&str]) -> bench::Report {
    let mut argv = vec![
        "load",
        "--gateway",
        env!("CARGO_BIN_EXE_incident-gateway"),
        // The test binary cannot be re-run as a baseline server: threads instead.
        "--baselines-in-process",
        "--connections",
        "4",
        "--duration",
        "1",
        "--warmup",
        "0.2",
        // Only waited out if deliveries are missing: generous, for a loaded CI machine.
        "--drain",
        "30",
        "--gateway-log",
        "warn",
    ];
    argv.extend_from_slice(args);
    let cli = bench::Cli::try_parse_from(argv).expect("the arguments parse");
    bench::run(cli).expect("the tool runs")
}

fn assert_no_errors(report: &bench::Report) {
    for run in &report.runs {
        assert_eq!(run.errors, 0, "{}", run.summary());
    }
}

#[test]
fn ingest_scenario_measures_the_gateway_and_its_baseline() {
    let report = tool(&["ingest"]);
    let gateway: Vec<_> = report
        .runs
        .iter()
        .filter(|r| r.label.starts_with("gateway"))
        .collect();
    // Flat out, then at a fixed rate.
    assert_eq!(gateway.len(), 2, "{:?}", report.runs);
    for run in &gateway {
        assert!(run.rate > 0.0, "{}", run.summary());
        assert!(run.latency.is_some(), "{}", run.summary());
    }
    assert!(
        report
            .runs
            .iter()
            .any(|r| r.label.starts_with("baseline durable ingest") && r.rate > 0.0)
    );
    assert!(
        report
            .rows
            .iter()
            .any(|r| r.figure.starts_with("p99 ingest latency"))
    );
    assert_no_errors(&report);
}

#[test]
fn rounds_alternate_the_gateway_and_its_baseline_and_report_the_medians() {
    let report = tool(&["ingest5", "--rounds", "3"]);
    let labels: Vec<_> = report.runs.iter().map(|r| r.label.as_str()).collect();
    let round = |who: &str, r: usize| {
        labels
            .iter()
            .position(|l| l.starts_with(&format!("{who} (round {r}/3)")))
            .unwrap_or_else(|| panic!("no round {r} of {who}: {labels:?}"))
    };
    for r in 1..=3 {
        assert!(round("gateway, 5 connectors", r) < round("baseline durable ingest", r));
        if r > 1 {
            assert!(round("baseline durable ingest", r - 1) < round("gateway, 5 connectors", r));
        }
    }
    let row = report
        .rows
        .iter()
        .find(|r| r.figure == "ingest rate, 5 connectors")
        .expect("the ingest row");
    let mut rates: Vec<f64> = report
        .runs
        .iter()
        .filter(|r| r.label.starts_with("gateway, 5 connectors (round"))
        .map(|r| r.rate)
        .collect();
    rates.sort_by(f64::total_cmp);
    assert_eq!(row.value, rates[1], "the median of the three rounds");
    assert_no_errors(&report);
}

#[test]
fn backlog_scenario_restarts_and_delivers() {
    let report = tool(&["backlog", "--backlog", "300"]);
    let restart = report
        .rows
        .iter()
        .find(|r| r.figure.starts_with("restart → first delivery"))
        .expect("a restart figure");
    assert!(restart.value.is_finite(), "no delivery after the restart");
    assert!(report.runs.iter().all(|r| r.rate > 0.0));
    assert_no_errors(&report);
}

#[test]
fn e2e_scenario_waits_for_every_delivery() {
    let report = tool(&["e2e"]);
    let waited = report
        .runs
        .iter()
        .filter(|r| r.e2e.is_some())
        .collect::<Vec<_>>();
    // The gateway and the durable relay, each at the fixed rate.
    assert_eq!(waited.len(), 2, "{:?}", report.runs);
    for run in waited {
        assert_eq!(run.missing, 0, "{}", run.summary());
    }
    assert_no_errors(&report);
}

/// On PostgreSQL, two gateway processes share the load and the database, every delivery
/// waited for (a database of the run's own on the test server, dropped after).
#[test]
fn e2e_runs_on_postgres_over_two_gateways() {
    let server = std::env::var("IGW_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let report = tool(&["e2e", "--storage", &server, "--instances", "2"]);
    let gateway: Vec<_> = report
        .runs
        .iter()
        .filter(|r| r.label.starts_with("gateway"))
        .collect();
    assert!(!gateway.is_empty(), "{:?}", report.runs);
    for run in &gateway {
        assert!(run.label.contains("2 gateways"), "{}", run.label);
        assert!(run.rate > 0.0, "{}", run.summary());
        assert_eq!(run.missing, 0, "{}", run.summary());
    }
    assert_no_errors(&report);
}

#[test]
fn several_gateways_need_postgres() {
    let cli = bench::Cli::try_parse_from(["load", "ingest", "--instances", "2"]).unwrap();
    let error = bench::run(cli).err().expect("refused").to_string();
    assert!(error.contains("--storage"), "{error}");
}

/// Connector 0's runs with connector 1 up, refused and hanging (breaker on and off): every
/// run measured, connector 0's deliveries all waited for at the fixed rate.
#[test]
fn isolation_scenario_measures_the_healthy_connector_in_each_case() {
    let report = tool(&["isolation"]);
    let gateway: Vec<_> = report
        .runs
        .iter()
        .filter(|r| r.label.starts_with("gateway, 2 connectors"))
        .collect();
    // Five cases, each flat out and at a fixed rate.
    assert_eq!(gateway.len(), 10, "{:?}", report.runs);
    for run in gateway.iter().filter(|r| r.e2e.is_some()) {
        assert_eq!(run.missing, 0, "{}", run.summary());
    }
    let compared = report
        .rows
        .iter()
        .filter(|r| r.figure.starts_with("connector 0") && r.baseline.is_some())
        .count();
    assert_eq!(compared, 8, "a rate and a p99 per failing case");
    assert_no_errors(&report);
}

/// The retention scenario purges what it filled while ingest runs, and reads the file sizes.
#[test]
fn retention_scenario_purges_what_it_filled() {
    let report = tool(&["retention", "--backlog", "500", "--rate", "100"]);
    let purged = report
        .rows
        .iter()
        .find(|r| r.figure == "incidents purged")
        .expect("a purge figure");
    // The 500 filled and those the first run took at 100/s.
    assert!(purged.value >= 500.0, "{}", purged.value);
    assert!(
        report
            .rows
            .iter()
            .any(|r| r.figure.starts_with("p99 ingest latency") && r.figure.ends_with("purging"))
    );
    assert_no_errors(&report);
}

#[test]
fn intel_scenario_measures_ingest_with_and_without_an_ioc_list() {
    let report = tool(&["intel", "--ioc-entries", "20000"]);
    let labels: Vec<_> = report.runs.iter().map(|r| r.label.as_str()).collect();
    for who in ["gateway, no IOC list", "gateway, 20000 IOC entries"] {
        let run = report
            .runs
            .iter()
            .find(|r| r.label.starts_with(&format!("{who} (round 1/1)")))
            .unwrap_or_else(|| panic!("no run of {who}: {labels:?}"));
        assert!(run.rate > 0.0, "{}", run.summary());
    }
    for figure in [
        "ingest rate, 20000 IOC entries",
        "IOC lookup, 20000 entries",
        "IOC list, gateway's estimate per entry",
    ] {
        let row = report
            .rows
            .iter()
            .find(|r| r.figure == figure)
            .unwrap_or_else(|| panic!("no row {figure}"));
        assert!(row.value > 0.0, "{figure}: {}", row.value);
    }
    assert_no_errors(&report);
}
