//! The scenarios of issue 12's benchmark, their baselines, and the table of results.
//! (A module folder of its own so `tests/load_tool.rs` can include it with `#[path]`.)

pub mod baseline;
pub mod child;
pub mod console;
pub mod gateway;
pub mod intel;
pub mod load;
pub mod payload;
pub mod receiver;
pub mod report;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Parser, ValueEnum};

use baseline::{Kind, Launch};
use load::{Pace, Target};
use payload::{Ids, Payloads};
use receiver::{Mode, Receiver};
use report::{Lanes, Row, RunResult, Target as Goal, mib};

#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
pub enum Scenario {
    /// Everything below but `isolation`, in order (baselines first).
    All,
    /// The four baselines, flat out.
    Baselines,
    /// The gateway with 1 connector: ingest rate flat out, p99 ingest latency at half that rate.
    Ingest,
    /// The gateway with 5 matching connectors: ingest rate flat out.
    Ingest5,
    /// End to end (accepted → received): rate flat out, p99 ingest-to-receipt at half of it.
    E2e,
    /// The destination hanging: ingest rate with K deliveries queued vs an empty queue, peak
    /// RSS, and the time from a restart (destination back) to the first delivery.
    Backlog,
    /// One receiver down, another up: connector 0's delivery rate flat out and its p99
    /// ingest-to-receipt at a fixed rate, with connector 1 up, refusing connections, or
    /// never answering — each with the circuit breaker on and off.
    Isolation,
    /// Retention: `--backlog` incidents delivered, then purged by `[retention]` while ingest
    /// runs at `--rate` (default 1,000/s): p99 ingest latency before and during the purge, the
    /// purge's duration, and the SQLite file (with its WAL) before and after.
    Retention,
    /// Ingest with an IOC list of `--ioc-entries` loaded vs without, in `--rounds` rounds;
    /// the list's memory and one lookup's time (not part of `all`).
    Intel,
    /// The web console's pages with `--backlog` incidents stored vs one (not part of `all`).
    Console,
}

#[derive(Parser, Debug, Clone)]
#[command(
    name = "load",
    about = "Measures the gateway against its baselines (issue 12); see BENCHMARKS.md"
)]
pub struct Cli {
    /// Which scenario to run.
    #[arg(value_enum, default_value = "all")]
    pub scenario: Scenario,
    /// Keep-alive connections the load is sent over.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Seconds each run is measured for (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of load before each run's measurement starts.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Requests per second of the fixed-rate (latency) runs; default half the rate measured
    /// flat out in the same scenario.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Rounds of the flat-out rate runs: each round runs the gateway and then the baselines
    /// it is set against, so slow and fast spells of a noisy machine fall on both; each
    /// figure is the median of its rounds.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Deliveries queued before the backlog scenario measures ingest again; incidents the
    /// retention scenario purges.
    #[arg(long, default_value_t = 100_000)]
    pub backlog: u64,
    /// Seconds the backlog may take to fill; past them the scenario goes on with what is
    /// queued (and says so), so a gateway that slows as its queue grows cannot stall the run.
    #[arg(long, default_value_t = 180.0)]
    pub fill_limit: f64,
    /// Incident files to post, in turn (default: examples/incidents/sample.json); each
    /// request gets its own incidentId.
    #[arg(long = "incident", value_name = "FILE")]
    pub incidents: Vec<PathBuf>,
    /// The gateway binary to measure (default: built with cargo in the tool's profile).
    #[arg(long, value_name = "PATH")]
    pub gateway: Option<PathBuf>,
    /// Use the gateway binary already built, do not run cargo.
    #[arg(long)]
    pub no_build: bool,
    /// The gateway's log filter (IGW_LOG); its log goes to a file, never the terminal.
    #[arg(long, default_value = "info")]
    pub gateway_log: String,
    /// Seconds a latency run waits, after the load stops, for deliveries still on their way.
    #[arg(long, default_value_t = 10.0)]
    pub drain: f64,
    /// Keep the work folder (configs, databases, logs) and print where it is.
    #[arg(long)]
    pub keep: bool,
    /// Worker threads of the tool's own runtime (load generator and receiver); default one
    /// per core.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Run the gateway on PostgreSQL: a server URL (`postgres://USER@HOST:PORT/DB`) on which
    /// the tool creates a database of its own for each gateway run (dropped at the end unless
    /// `--keep`). Default: SQLite, a file in each run's folder.
    #[arg(long, value_name = "URL")]
    pub storage: Option<String>,
    /// Gateway processes per run, all on the same `--storage` database, the load's
    /// connections spread over them in turn (the backlog scenario runs one).
    #[arg(long, default_value_t = 1)]
    pub instances: usize,
    /// Entries of the IOC list the intel scenario loads.
    #[arg(long, default_value_t = 1_000_000)]
    pub ioc_entries: u64,
    /// Run the baselines as threads of this process instead of child processes (for tests).
    #[arg(long, hide = true)]
    pub baselines_in_process: bool,
}

/// `load baseline-server …`: how the tool runs a baseline as a process of its own.
#[derive(Parser, Debug)]
#[command(name = "load baseline-server")]
struct BaselineCli {
    #[arg(long, value_enum)]
    kind: Kind,
    #[arg(long)]
    db: PathBuf,
    #[arg(long)]
    forward_to: Option<String>,
}

pub fn main() -> anyhow::Result<()> {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "baseline-server") {
        args.remove(0);
        let b = BaselineCli::parse_from(args);
        return baseline::main(b.kind, b.forward_to, b.db);
    }
    let report = run(Cli::parse())?;
    println!("\n{}", report::table(&report.rows));
    println!("Runs:\n");
    for run in &report.runs {
        println!("- {}", run.summary());
    }
    Ok(())
}

/// What the tool measured.
pub struct Report {
    pub runs: Vec<RunResult>,
    pub rows: Vec<Row>,
}

/// Runs `cli.scenario`, printing each run as it ends; returns every run and the table.
pub fn run(cli: Cli) -> anyhow::Result<Report> {
    if cli.instances > 1 && cli.storage.is_none() {
        bail!(
            "--instances {} needs --storage postgres://…: a SQLite file takes one gateway process",
            cli.instances
        );
    }
    // Bounded, so no duration built from them can overflow.
    const DAY: f64 = 86_400.0;
    let seconds = |v: f64| (0.0..=DAY).contains(&v);
    if !(cli.duration > 0.0
        && seconds(cli.duration)
        && seconds(cli.warmup)
        && seconds(cli.drain)
        && seconds(cli.fill_limit))
    {
        bail!("--duration, --warmup, --drain and --fill-limit: 0 to 86400 s (--duration above 0)");
    }
    if !(1..=10_000).contains(&cli.connections) {
        bail!("--connections: 1 to 10000");
    }
    if !(1..=21).contains(&cli.rounds) {
        bail!("--rounds: 1 to 21");
    }
    if cli.rate.is_some_and(|r| !(0.01..=1e7).contains(&r)) {
        bail!("--rate: 0.01 to 10000000 requests per second");
    }
    if cfg!(debug_assertions) {
        eprintln!(
            "warning: a debug build measures nothing useful; run with `cargo run --release --example load`"
        );
    }
    let gateway = gateway::binary(cli.gateway.as_deref(), !cli.no_build)?;
    let launch = if cli.baselines_in_process {
        Launch::Thread
    } else {
        Launch::Process(std::env::current_exe().context("finding the tool's own path")?)
    };
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = cli.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = rt.enable_all().build()?;
    rt.block_on(async move {
        let mut bench = Bench::new(cli, gateway, launch).await?;
        bench.run().await?;
        Ok(Report {
            runs: bench.runs,
            rows: bench.rows,
        })
    })
}

struct Bench {
    cli: Cli,
    gateway: PathBuf,
    launch: Launch,
    epoch: Instant,
    payloads: Arc<Payloads>,
    receiver: Receiver,
    work: tempfile::TempDir,
    /// The next request's sequence number: ids never repeat within a tool run.
    next_seq: u64,
    /// Runs so far, for a figure two scenarios share.
    runs: Vec<RunResult>,
    /// The gateway with 1 connector flat out and its durable-ingest and durable-relay
    /// baselines (shared by `ingest` and `e2e`).
    flat_one: Option<(RunResult, RunResult, RunResult)>,
    rows: Vec<Row>,
    folders: usize,
    /// PostgreSQL databases made for gateway runs (`--storage`), dropped at the end.
    databases: Vec<String>,
    /// Config appended to every gateway run's (the intel scenario's list).
    tail: String,
}

impl Bench {
    async fn new(cli: Cli, gateway: PathBuf, launch: Launch) -> anyhow::Result<Bench> {
        let ids = Ids::new();
        let files = if cli.incidents.is_empty() {
            vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/incidents/sample.json")]
        } else {
            cli.incidents.clone()
        };
        let payloads = Arc::new(Payloads::read(&files, ids.clone())?);
        let epoch = Instant::now();
        let receiver = Receiver::start(epoch, ids).await?;
        let work = tempfile::Builder::new().prefix("igw-load-").tempdir()?;
        print_machine(&gateway, payloads.mean_len(), &cli);
        Ok(Bench {
            cli,
            gateway,
            launch,
            epoch,
            payloads,
            receiver,
            work,
            next_seq: 0,
            runs: Vec::new(),
            flat_one: None,
            rows: Vec::new(),
            folders: 0,
            databases: Vec::new(),
            tail: String::new(),
        })
    }

    async fn run(&mut self) -> anyhow::Result<()> {
        let result = self.scenarios().await;
        let errors: u64 = self.runs.iter().map(|r| r.errors).sum();
        self.rows
            .push(Row::new("errors (all runs)", errors as f64, "").target(Goal::AtMost(0.0)));
        if result.is_err() {
            // A long run that fails late still shows what it measured.
            eprintln!(
                "\nmeasured before the failure:\n{}",
                report::table(&self.rows)
            );
        }
        if self.cli.keep {
            let kept = std::mem::replace(&mut self.work, tempfile::tempdir()?).keep();
            eprintln!("configs, databases and logs kept in {}", kept.display());
            for db in &self.databases {
                eprintln!("PostgreSQL database kept: {db}");
            }
        } else if let Some(server) = &self.cli.storage {
            for db in &self.databases {
                if let Err(e) = gateway::drop_database(server, db).await {
                    eprintln!("cannot drop {db}: {e:#}");
                }
            }
        }
        result
    }

    async fn scenarios(&mut self) -> anyhow::Result<()> {
        match self.cli.scenario {
            Scenario::All => {
                self.baselines().await?;
                self.ingest().await?;
                self.ingest5().await?;
                self.e2e().await?;
                self.backlog().await
            }
            Scenario::Baselines => self.baselines().await,
            Scenario::Ingest => self.ingest().await,
            Scenario::Ingest5 => self.ingest5().await,
            Scenario::E2e => self.e2e().await,
            Scenario::Backlog => self.backlog().await,
            Scenario::Isolation => self.isolation().await,
            Scenario::Retention => self.retention().await,
            Scenario::Intel => self.intel().await,
            Scenario::Console => self.console().await,
        }
    }

    fn folder(&mut self, name: &str) -> anyhow::Result<PathBuf> {
        self.folders += 1;
        let dir = self.work.path().join(format!("{:02}-{name}", self.folders));
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// The `storage.url` of the next gateway run: its folder's SQLite file, or a new database
    /// on the `--storage` server.
    async fn storage_url(&mut self) -> anyhow::Result<String> {
        let Some(server) = self.cli.storage.clone() else {
            return Ok("sqlite://gateway.db".into());
        };
        let url = gateway::fresh_database(&server).await?;
        self.databases.push(url.clone());
        Ok(url)
    }

    fn pace_label(&self, pace: Pace) -> String {
        match pace {
            Pace::Flat => format!("flat out, {} conns", self.cli.connections),
            Pace::Rate(r) => format!("{r:.0}/s, {} conns", self.cli.connections),
        }
    }

    /// One measured run against the server at `addr`; with `wait`, it waits for the
    /// deliveries to that many connectors and measures ingest-to-receipt.
    async fn measure(
        &mut self,
        label: String,
        addrs: &[std::net::SocketAddr],
        pace: Pace,
        wait: Option<Lanes>,
    ) -> anyhow::Result<RunResult> {
        let _ = self.receiver.take();
        let target = Target {
            addrs: addrs.to_vec(),
            path: "/v1/incidents",
            bearer: Some(gateway::SOURCE_KEY.into()),
        };
        let seq0 = self.next_seq;
        let until = Duration::from_secs_f64(self.cli.warmup + self.cli.duration);
        let outcome = load::drive(
            &target,
            self.payloads.clone(),
            self.epoch,
            seq0,
            self.cli.connections,
            pace,
            until,
        )
        .await?;
        let last = outcome.sent.iter().map(|s| s.seq).max().unwrap_or(seq0);
        self.next_seq = last + 1;
        if let Some(Lanes(lanes)) = wait {
            let accepted = outcome.sent.iter().filter(|s| s.status == 202).count() as u64;
            let drain = Duration::from_secs_f64(self.cli.drain);
            self.receiver
                .wait_for(accepted * u64::from(lanes), drain)
                .await;
        }
        let receipts = self.receiver.take();
        let label = format!("{label} · {}", self.pace_label(pace));
        Ok(report::analyze(
            label,
            &outcome,
            &receipts,
            self.cli.warmup,
            self.cli.duration,
            wait,
        ))
    }

    fn finish(&mut self, run: RunResult) -> RunResult {
        eprintln!("  {}", run.summary());
        self.runs.push(run.clone());
        run
    }

    /// A run of baseline `kind`, reused if this tool run already measured it at that pace.
    async fn baseline(&mut self, kind: Kind, pace: Pace) -> anyhow::Result<RunResult> {
        let label = format!("baseline {}", kind.label());
        let full = format!("{label} · {}", self.pace_label(pace));
        if let Some(r) = self.runs.iter().find(|r| r.label == full) {
            return Ok(r.clone());
        }
        self.baseline_run(kind, pace, label).await
    }

    /// A new run of baseline `kind`, labelled `label`.
    async fn baseline_run(
        &mut self,
        kind: Kind,
        pace: Pace,
        label: String,
    ) -> anyhow::Result<RunResult> {
        let wait = (kind.forwards() && matches!(pace, Pace::Rate(_))).then_some(Lanes(1));
        let dir = self.folder(&kind_name(kind))?;
        let forward = kind.forwards().then(|| self.receiver.url("/relay"));
        let server = tokio::task::block_in_place(|| {
            baseline::Running::start(
                &self.launch,
                kind,
                forward,
                dir.join("baseline.db"),
                &dir.join("baseline.log"),
            )
        })?;
        let mut run = self.measure(label, &[server.addr], pace, wait).await?;
        run.peak_rss_kib = server.peak_rss_kib();
        tokio::task::block_in_place(|| server.stop());
        Ok(self.finish(run))
    }

    /// A run of a fresh gateway (its own folder and database) with `connectors` connectors.
    async fn gateway_run(
        &mut self,
        label: &str,
        connectors: usize,
        pace: Pace,
        wait: Option<Lanes>,
    ) -> anyhow::Result<RunResult> {
        let dir = self.folder("gateway")?;
        let storage = self.storage_url().await?;
        let config = gateway::write_config(
            &dir,
            &gateway::Setup {
                connectors,
                matchers: connectors > 1,
                receiver: self.receiver.url("/hook"),
                connections: self.cli.connections,
                storage,
                elsewhere: Vec::new(),
                circuit_failures: None,
                tail: self.tail.clone(),
            },
        )?;
        let mut gws = Vec::new();
        for n in 0..self.cli.instances.max(1) {
            gws.push(tokio::task::block_in_place(|| {
                gateway::start(
                    &self.gateway,
                    &config,
                    &dir.join(format!("gateway-{n}.log")),
                    &self.cli.gateway_log,
                )
            })?);
        }
        let addrs: Vec<_> = gws.iter().map(|g| g.addr).collect();
        let label = match gws.len() {
            1 => label.to_string(),
            n => format!("{label}, {n} gateways"),
        };
        let mut run = self.measure(label, &addrs, pace, wait).await?;
        run.peak_rss_kib = gws.iter().filter_map(|g| g.peak_rss_kib()).max();
        for (n, gw) in gws.iter_mut().enumerate() {
            if !gw.running() {
                bail!(
                    "gateway {n} exited during the run ({}); {}",
                    run.summary(),
                    child::log_tail(&dir.join(format!("gateway-{n}.log")))
                );
            }
        }
        for mut gw in gws {
            tokio::task::block_in_place(|| gw.terminate(gateway::STOP_GRACE));
        }
        Ok(self.finish(run))
    }

    async fn baselines(&mut self) -> anyhow::Result<()> {
        eprintln!("\nbaselines");
        for kind in [
            Kind::ParseOnly,
            Kind::Relay,
            Kind::DurableIngest,
            Kind::DurableRelay,
        ] {
            self.baseline(kind, Pace::Flat).await?;
        }
        Ok(())
    }

    /// The gateway with 1 connector flat out, and the durable-ingest and durable-relay
    /// baselines it is set against (shared by `ingest` and `e2e`).
    async fn flat_one(&mut self) -> anyhow::Result<(RunResult, RunResult, RunResult)> {
        if let Some(measured) = &self.flat_one {
            return Ok(measured.clone());
        }
        let (g, b) = self
            .rounds(
                "gateway, 1 connector",
                1,
                &[Kind::DurableIngest, Kind::DurableRelay],
            )
            .await?;
        let measured = (g, b[0].clone(), b[1].clone());
        self.flat_one = Some(measured.clone());
        Ok(measured)
    }

    /// The gateway with `connectors` connectors flat out, and the baselines `kinds` flat out,
    /// in `--rounds` rounds (gateway, then each baseline); with one round a baseline already
    /// measured in this tool run is reused. Each result is the median of its rounds.
    async fn rounds(
        &mut self,
        label: &str,
        connectors: usize,
        kinds: &[Kind],
    ) -> anyhow::Result<(RunResult, Vec<RunResult>)> {
        let n = self.cli.rounds;
        if n <= 1 {
            let g = self
                .gateway_run(label, connectors, Pace::Flat, None)
                .await?;
            let mut b = Vec::new();
            for kind in kinds {
                b.push(self.baseline(*kind, Pace::Flat).await?);
            }
            return Ok((g, b));
        }
        let mut gateway = Vec::new();
        let mut baselines = vec![Vec::new(); kinds.len()];
        for round in 1..=n {
            let tag = format!("round {round}/{n}");
            gateway.push(
                self.gateway_run(&format!("{label} ({tag})"), connectors, Pace::Flat, None)
                    .await?,
            );
            for (runs, kind) in baselines.iter_mut().zip(kinds) {
                let label = format!("baseline {} ({tag})", kind.label());
                runs.push(self.baseline_run(*kind, Pace::Flat, label).await?);
            }
        }
        let g = self.median(label, gateway);
        let b = kinds
            .iter()
            .zip(baselines)
            .map(|(kind, runs)| self.median(&format!("baseline {}", kind.label()), runs))
            .collect();
        Ok((g, b))
    }

    /// The run of median rate among `runs`, labelled `label`, with the median received rate;
    /// its errors are those of every round.
    fn median(&self, label: &str, mut runs: Vec<RunResult>) -> RunResult {
        let rounds = runs.len();
        let errors = runs.iter().map(|r| r.errors).sum();
        runs.sort_by(|a, b| a.received_rate.total_cmp(&b.received_rate));
        let received_rate = runs[rounds / 2].received_rate;
        runs.sort_by(|a, b| a.rate.total_cmp(&b.rate));
        let mut m = runs.swap_remove(rounds / 2);
        m.label = format!(
            "{label} · {}, median of {rounds} rounds",
            self.pace_label(Pace::Flat)
        );
        m.received_rate = received_rate;
        m.errors = errors;
        eprintln!("  {}", m.summary());
        m
    }

    /// The fixed rate of a latency run: `--rate`, or half of `max`.
    fn half(&self, max: f64) -> Option<Pace> {
        let r = self.cli.rate.unwrap_or(max / 2.0);
        (r > 0.0).then_some(Pace::Rate(r))
    }

    async fn ingest(&mut self) -> anyhow::Result<()> {
        eprintln!("\ningest, 1 connector (generic envelope)");
        let (g, b, _) = self.flat_one().await?;
        self.rows.push(
            Row::new("ingest rate, 1 connector", g.rate, "/s")
                .against("durable ingest", b.rate)
                .target(Goal::RatioAtLeast(0.8)),
        );
        if let Some(p) = self.find_baseline(Kind::ParseOnly) {
            self.rows.push(
                Row::new("ingest rate, 1 connector", g.rate, "/s").against("parse-only", p.rate),
            );
        }
        let Some(pace) = self.half(g.rate) else {
            eprintln!("  no fixed-rate run: nothing was accepted flat out");
            return Ok(());
        };
        let gh = self
            .gateway_run("gateway, 1 connector", 1, pace, None)
            .await?;
        let bh = self.baseline(Kind::DurableIngest, pace).await?;
        let rate = rate_of(pace);
        if let (Some(l), Some(bl)) = (gh.latency, bh.latency) {
            self.rows.push(
                Row::new(format!("p50 ingest latency at {rate:.0}/s"), l.p50, "ms")
                    .against("durable ingest", bl.p50),
            );
            self.rows.push(
                Row::new(format!("p99 ingest latency at {rate:.0}/s"), l.p99, "ms")
                    .against("durable ingest", bl.p99)
                    .target(Goal::AtMost(10.0)),
            );
        }
        Ok(())
    }

    fn find_baseline(&self, kind: Kind) -> Option<RunResult> {
        let full = format!(
            "baseline {} · {}",
            kind.label(),
            self.pace_label(Pace::Flat)
        );
        self.runs.iter().find(|r| r.label == full).cloned()
    }

    async fn ingest5(&mut self) -> anyhow::Result<()> {
        eprintln!("\ningest, 5 matching connectors");
        let (g, b) = self
            .rounds("gateway, 5 connectors", 5, &[Kind::DurableIngest])
            .await?;
        let b = &b[0];
        self.rows.push(
            Row::new("ingest rate, 5 connectors", g.rate, "/s")
                .against("durable ingest", b.rate)
                .target(Goal::RatioAtLeast(0.6)),
        );
        Ok(())
    }

    async fn e2e(&mut self) -> anyhow::Result<()> {
        eprintln!("\nend to end (accepted → received), 1 connector");
        let (g, _, b) = self.flat_one().await?;
        self.rows.push(
            Row::new("end-to-end rate", g.received_rate, "/s")
                .against("durable relay", b.received_rate)
                .target(Goal::RatioAtLeast(0.8)),
        );
        if let Some(r) = self.find_baseline(Kind::Relay) {
            self.rows.push(
                Row::new("end-to-end rate", g.received_rate, "/s")
                    .against("storing-nothing relay", r.received_rate),
            );
        }
        let Some(pace) = self.half(g.received_rate) else {
            eprintln!("  no fixed-rate run: nothing was received flat out");
            return Ok(());
        };
        let gh = self
            .gateway_run(
                "gateway, 1 connector, waiting for receipt",
                1,
                pace,
                Some(Lanes(1)),
            )
            .await?;
        let bh = self.baseline(Kind::DurableRelay, pace).await?;
        let rate = rate_of(pace);
        if let (Some(l), Some(bl)) = (gh.e2e, bh.e2e) {
            self.rows.push(
                Row::new(format!("p50 ingest-to-receipt at {rate:.0}/s"), l.p50, "ms")
                    .against("durable relay", bl.p50),
            );
            self.rows.push(
                Row::new(format!("p99 ingest-to-receipt at {rate:.0}/s"), l.p99, "ms")
                    .against("durable relay", bl.p99)
                    .target(Goal::AtMost(50.0)),
            );
        }
        Ok(())
    }

    async fn backlog(&mut self) -> anyhow::Result<()> {
        let k = self.cli.backlog;
        eprintln!("\nbacklog: destination hanging, {k} deliveries queued, then a restart");
        let dir = self.folder("gateway-backlog")?;
        let storage = self.storage_url().await?;
        let config = gateway::write_config(
            &dir,
            &gateway::Setup {
                connectors: 1,
                matchers: false,
                receiver: self.receiver.url("/hook"),
                connections: self.cli.connections,
                storage,
                elsewhere: Vec::new(),
                circuit_failures: None,
                tail: String::new(),
            },
        )?;
        let (exe, log_level) = (self.gateway.clone(), self.cli.gateway_log.clone());
        let start = |n: usize| {
            let log = dir.join(format!("gateway-{n}.log"));
            tokio::task::block_in_place(|| gateway::start(&exe, &config, &log, &log_level))
        };
        self.receiver.set_mode(Mode::Hang);
        let mut gw = start(1)?;

        let empty = self
            .measure("gateway, empty queue".into(), &[gw.addr], Pace::Flat, None)
            .await?;
        let empty = self.finish(empty);
        let queued = empty.accepted_total;
        let fill_started = Instant::now();
        let filled = self.fill(gw.addr, k.saturating_sub(queued)).await?;
        eprintln!(
            "  queued {} more in {:.1} s ({} queued in all)",
            filled,
            fill_started.elapsed().as_secs_f64(),
            queued + filled
        );
        let full = self
            .measure(
                format!("gateway, {} queued", queued + filled),
                &[gw.addr],
                Pace::Flat,
                None,
            )
            .await?;
        let rss_first = gw.peak_rss_kib();
        let full = self.finish(RunResult {
            peak_rss_kib: rss_first,
            ..full
        });
        tokio::task::block_in_place(|| gw.terminate(gateway::STOP_GRACE));

        // The destination back, the gateway restarted on the same database.
        let _ = self.receiver.take();
        self.receiver.set_mode(Mode::Answer);
        let spawned = self.epoch.elapsed();
        let mut gw = start(2)?;
        let listening = self.epoch.elapsed() - spawned;
        let arrived = self
            .receiver
            .wait_for(
                1,
                Duration::from_secs(60).max(Duration::from_secs_f64(self.cli.drain)),
            )
            .await;
        // Let it deliver a while: the drain rate, and the memory a big queue takes to serve.
        let drain_for = self.cli.duration.min(5.0);
        tokio::time::sleep(Duration::from_secs_f64(drain_for)).await;
        let receipts = self.receiver.take();
        let rss_second = gw.peak_rss_kib();
        tokio::task::block_in_place(|| gw.terminate(gateway::STOP_GRACE));

        let peak = rss_first.max(rss_second);
        let mut figure = format!("ingest rate, {} queued", queued + filled);
        if queued + filled < k {
            figure.push_str(&format!(" (of {k}: fill timed out)"));
        }
        self.rows.push(
            Row::new(figure, full.rate, "/s")
                .against("same, empty queue", empty.rate)
                .target(Goal::RatioAtLeast(0.9)),
        );
        if let Some(kib) = peak {
            self.rows.push(
                Row::new("gateway peak RSS (backlog, restart)", mib(kib), "MB")
                    .target(Goal::AtMost(300.0)),
            );
        }
        let first = receipts.iter().map(|r| r.at).min();
        match (arrived, first) {
            (true, Some(at)) => {
                let secs = Duration::from_nanos(at)
                    .saturating_sub(spawned)
                    .as_secs_f64();
                eprintln!(
                    "  restart: listening after {:.2} s, first delivery after {secs:.2} s, {:.0} deliveries/s over the next {drain_for:.0} s",
                    listening.as_secs_f64(),
                    receipts.len() as f64 / drain_for
                );
                self.rows.push(
                    Row::new("restart → first delivery (backlog)", secs, "s")
                        .target(Goal::AtMost(2.0)),
                );
            }
            _ => {
                eprintln!("  restart: no delivery arrived within 60 s");
                self.rows.push(
                    Row::new("restart → first delivery (backlog)", f64::INFINITY, "s")
                        .target(Goal::AtMost(2.0)),
                );
            }
        }
        Ok(())
    }

    /// Connector 0 posts to the counting receiver; connector 1 to a receiver of its own that
    /// answers, to a port that refuses connections, or to one that never answers. Only
    /// connector 0's deliveries reach the counting receiver, so its rate and latency are the
    /// healthy connector's alone. Not part of `all`: `load isolation`.
    async fn isolation(&mut self) -> anyhow::Result<()> {
        eprintln!(
            "\nisolation: 2 connectors; connector 1 up, refused or hanging, breaker on and off"
        );
        let other_up = Receiver::start(self.epoch, Ids::new()).await?;
        let hanging = Receiver::start(self.epoch, Ids::new()).await?;
        hanging.set_mode(Mode::Hang);
        // A port that refuses: bound, its address noted, then closed.
        let refused = {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            format!("http://{}/1", l.local_addr()?)
        };
        let cases = [
            ("both up", other_up.url("/1"), None),
            ("connector 1 refused, breaker on", refused.clone(), None),
            ("connector 1 refused, breaker off", refused, Some(0)),
            ("connector 1 hanging, breaker on", hanging.url("/1"), None),
            (
                "connector 1 hanging, breaker off",
                hanging.url("/1"),
                Some(0),
            ),
        ];
        let (receiver, connections) = (self.receiver.url("/hook"), self.cli.connections);
        let mut pace = None;
        let mut both_up: Option<(RunResult, RunResult)> = None;
        for (case, url, circuit_failures) in cases {
            let setup = |storage| gateway::Setup {
                connectors: 2,
                matchers: false,
                receiver: receiver.clone(),
                connections,
                storage,
                elsewhere: vec![(1, url.clone())],
                circuit_failures,
                tail: String::new(),
            };
            let label = format!("gateway, 2 connectors, {case}");
            let storage = self.storage_url().await?;
            let flat = self
                .isolation_run(&label, setup(storage), Pace::Flat, None)
                .await?;
            let at = match pace {
                Some(p) => p,
                None => {
                    let Some(p) = self.half(flat.received_rate) else {
                        bail!("isolation: connector 0 received nothing flat out with both up");
                    };
                    pace = Some(p);
                    p
                }
            };
            let storage = self.storage_url().await?;
            let fixed = self
                .isolation_run(&label, setup(storage), at, Some(Lanes(1)))
                .await?;
            let Some((up_flat, up_fixed)) = &both_up else {
                both_up = Some((flat, fixed));
                continue;
            };
            self.rows.push(
                Row::new(
                    format!("connector 0 delivery rate, {case}"),
                    flat.received_rate,
                    "/s",
                )
                .against("both up", up_flat.received_rate)
                .target(Goal::RatioAtLeast(0.9)),
            );
            if let (Some(l), Some(up)) = (fixed.e2e, up_fixed.e2e) {
                self.rows.push(
                    Row::new(
                        format!(
                            "connector 0 p99 ingest-to-receipt at {:.0}/s, {case}",
                            rate_of(at)
                        ),
                        l.p99,
                        "ms",
                    )
                    .against("both up", up.p99)
                    .target(Goal::RatioAtMost(1.1)),
                );
            }
        }
        Ok(())
    }

    /// One run of a fresh gateway on `setup`.
    async fn isolation_run(
        &mut self,
        label: &str,
        setup: gateway::Setup,
        pace: Pace,
        wait: Option<Lanes>,
    ) -> anyhow::Result<RunResult> {
        let dir = self.folder("gateway-isolation")?;
        let config = gateway::write_config(&dir, &setup)?;
        let log = dir.join("gateway.log");
        let mut gw = tokio::task::block_in_place(|| {
            gateway::start(&self.gateway, &config, &log, &self.cli.gateway_log)
        })?;
        let mut run = self
            .measure(label.to_string(), &[gw.addr], pace, wait)
            .await?;
        run.peak_rss_kib = gw.peak_rss_kib();
        if !gw.running() {
            bail!(
                "the gateway exited during the run ({}); {}",
                run.summary(),
                child::log_tail(&log)
            );
        }
        tokio::task::block_in_place(|| gw.terminate(gateway::STOP_GRACE));
        Ok(self.finish(run))
    }

    /// Fills a gateway with `--backlog` delivered incidents (`delivered_after` an hour, so none
    /// is purged), measures ingest at a fixed rate on it, then restarts it on the same file
    /// with `delivered_after = "1s"`: the purge starts at once, and ingest is measured again
    /// at the same rate while it runs. Not part of `all`: `load retention`.
    async fn retention(&mut self) -> anyhow::Result<()> {
        if self.cli.storage.is_some() {
            bail!("the retention scenario measures the SQLite file: run it without --storage");
        }
        let n = self.cli.backlog;
        let rate = self.cli.rate.unwrap_or(1000.0);
        eprintln!(
            "\nretention: {n} incidents delivered, then purged while ingest runs at {rate:.0}/s"
        );
        let dir = self.folder("gateway-retention")?;
        let (receiver, connections) = (self.receiver.url("/hook"), self.cli.connections);
        let setup = |delivered_after: &str| gateway::Setup {
            connectors: 1,
            matchers: false,
            receiver: receiver.clone(),
            connections,
            storage: "sqlite://gateway.db".into(),
            elsewhere: Vec::new(),
            circuit_failures: None,
            tail: format!(
                "\n[retention]\ndelivered_after = \"{delivered_after}\"\ninterval = \"1s\"\n"
            ),
        };
        let keep = gateway::write_config(&dir, &setup("1h"))?;
        // The purge is found by its log line, whatever the filter asked for.
        let log_level = format!("{},incident_gateway::retention=info", self.cli.gateway_log);
        let exe = self.gateway.clone();
        let start = |config: &Path, log: &Path| {
            tokio::task::block_in_place(|| gateway::start(&exe, config, log, &log_level))
        };
        let db_size = || -> u64 {
            ["gateway.db", "gateway.db-wal"]
                .iter()
                .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
                .map(|m| m.len())
                .sum()
        };

        let mut gw = start(&keep, &dir.join("gateway-1.log"))?;
        let _ = self.receiver.take();
        let started = Instant::now();
        let first_seq = self.next_seq;
        let filled = self.fill(gw.addr, n).await?;
        if filled < n {
            bail!("retention: only {filled} of {n} queued within --fill-limit");
        }
        if !self
            .receiver
            .wait_for(filled, Duration::from_secs(600))
            .await
        {
            bail!(
                "retention: {} of {filled} delivered within 600 s",
                self.receiver.count()
            );
        }
        // Finished work: each incident completed (its ticket closes with it), as purging
        // keeps an open incident on an open ticket.
        let ids: Vec<String> = (first_seq..first_seq + filled)
            .map(|seq| self.payloads.ids.id(seq))
            .collect();
        complete_all(gw.addr, &ids).await?;
        if !self
            .receiver
            .wait_for(2 * filled, Duration::from_secs(600))
            .await
        {
            bail!(
                "retention: {} of {filled} completions delivered within 600 s",
                self.receiver.count().saturating_sub(filled)
            );
        }
        eprintln!(
            "  {filled} incidents accepted, delivered, completed and their completions delivered in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let before = self
            .measure(
                "gateway, no purge".into(),
                &[gw.addr],
                Pace::Rate(rate),
                None,
            )
            .await?;
        let before = self.finish(before);
        tokio::task::block_in_place(|| gw.terminate(gateway::STOP_GRACE));
        let size_before = db_size();

        let purge = gateway::write_config(&dir, &setup("1s"))?;
        let log = dir.join("gateway-2.log");
        let spawned = Instant::now();
        let mut gw = start(&purge, &log)?;
        let during = self
            .measure(
                "gateway, purging".into(),
                &[gw.addr],
                Pace::Rate(rate),
                None,
            )
            .await?;
        let during = self.finish(during);
        // The pass logs what it purged when it ends.
        let mut purged = None;
        while spawned.elapsed() < Duration::from_secs(600) {
            purged = std::fs::read_to_string(&log)
                .ok()
                .and_then(|text| purged_incidents(&text));
            if purged.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let purge_secs = spawned.elapsed().as_secs_f64();
        tokio::task::block_in_place(|| gw.terminate(gateway::STOP_GRACE));
        let size_after = db_size();
        let Some(purged) = purged else {
            bail!(
                "retention: no purge logged within 600 s; {}",
                child::log_tail(&log)
            );
        };
        let window = self.cli.warmup + self.cli.duration;
        eprintln!(
            "  purged {purged} incidents; the pass ended {purge_secs:.1} s after the start (measured window: the first {window:.0} s); file with WAL {:.1} MB → {:.1} MB",
            size_before as f64 / 1e6,
            size_after as f64 / 1e6
        );
        if let (Some(l), Some(bl)) = (during.latency, before.latency) {
            self.rows.push(
                Row::new(
                    format!("p99 ingest latency at {rate:.0}/s, purging"),
                    l.p99,
                    "ms",
                )
                .against("no purge", bl.p99)
                .target(Goal::AtMost(10.0)),
            );
        }
        self.rows
            .push(Row::new("incidents purged", purged as f64, ""));
        self.rows
            .push(Row::new("purge pass, from start", purge_secs, "s"));
        self.rows.push(
            Row::new(
                "SQLite file + WAL after purge",
                size_after as f64 / 1e6,
                "MB",
            )
            .against("before", size_before as f64 / 1e6),
        );
        Ok(())
    }

    /// Queues `n` incidents (one delivery each) quickly: batches over a few connections.
    async fn fill(&mut self, addr: std::net::SocketAddr, n: u64) -> anyhow::Result<u64> {
        if n == 0 {
            return Ok(0);
        }
        // A batch must stay under the gateway's 1 MiB body limit and its 100 incidents.
        let per = (900_000 / self.payloads.mean_len().max(1)).clamp(1, 100) as u64;
        let batches = n.div_ceil(per);
        let seq0 = self.next_seq;
        self.next_seq += batches * per;
        let headers = Target {
            addrs: vec![addr],
            path: "/v1/incidents",
            bearer: Some(gateway::SOURCE_KEY.into()),
        }
        .headers()?;
        let next = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + Duration::from_secs_f64(self.cli.fill_limit);
        // Few connections: each holds a big body, and the gateway budgets bodies in flight
        // per client (a quarter of 64 MiB by default).
        let mut tasks = Vec::new();
        for _ in 0..self.cli.connections.min(8) {
            let (next, done, headers, payloads) = (
                next.clone(),
                done.clone(),
                headers.clone(),
                self.payloads.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut conn = None;
                let mut failures = 0u32;
                loop {
                    let b = next.fetch_add(1, Ordering::Relaxed);
                    if b >= batches || Instant::now() >= deadline {
                        return Ok::<(), anyhow::Error>(());
                    }
                    let size = per.min(n - b * per);
                    loop {
                        let sender = match &mut conn {
                            Some(s) => s,
                            None => conn.insert(load::connect(addr).await?),
                        };
                        let req = headers.request(payloads.batch(seq0 + b * per, size))?;
                        match load::send(sender, req).await {
                            Ok(s) if s.as_u16() == 202 => {
                                done.fetch_add(size, Ordering::Relaxed);
                                break;
                            }
                            // The body budget or the store is busy: the batch again, later.
                            Ok(s) if s.as_u16() == 503 || s.as_u16() == 429 => {}
                            Ok(s) => bail!("filling the backlog: the gateway answered {s}"),
                            Err(e) => {
                                failures += 1;
                                if failures > 100 {
                                    bail!("filling the backlog: {e} (100 times)");
                                }
                                conn = None;
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        if Instant::now() >= deadline {
                            return Ok(());
                        }
                    }
                }
            }));
        }
        let started = Instant::now();
        let mut last_print = started;
        while !tasks.iter().all(|t| t.is_finished()) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if last_print.elapsed() >= Duration::from_secs(5) {
                last_print = Instant::now();
                let d = done.load(Ordering::Relaxed);
                eprintln!(
                    "  filling: {d}/{n} ({:.0}/s)",
                    d as f64 / started.elapsed().as_secs_f64()
                );
            }
        }
        for t in tasks {
            t.await??;
        }
        Ok(done.load(Ordering::Relaxed))
    }
}

/// Completes each incident in `ids` through the back channel (16 at a time).
async fn complete_all(addr: std::net::SocketAddr, ids: &[String]) -> anyhow::Result<()> {
    use futures_util::StreamExt as _;
    let client = reqwest::Client::new();
    let mut answers = futures_util::stream::iter(ids)
        .map(|id| {
            client
                .post(format!("http://{addr}/v1/incidents/{id}/complete"))
                .bearer_auth(gateway::CALLBACK_TOKEN)
                .json(&serde_json::json!({"reason_code": "threat_not_valid"}))
                .send()
        })
        .buffer_unordered(16);
    while let Some(answer) = answers.next().await {
        let status = answer?.status();
        if !status.is_success() {
            bail!("completing an incident: the gateway answered {status}");
        }
    }
    Ok(())
}

/// The incidents the first purge pass logged (`retention: purged … incidents=N`).
fn purged_incidents(log: &str) -> Option<u64> {
    let line = log.lines().find(|l| l.contains("retention: purged"))?;
    let at = line.find("incidents=")? + "incidents=".len();
    let digits: String = line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

fn rate_of(pace: Pace) -> f64 {
    match pace {
        Pace::Flat => 0.0,
        Pace::Rate(r) => r,
    }
}

fn kind_name(kind: Kind) -> String {
    kind.label().replace(' ', "-")
}

/// The machine and the set-up, so a pasted result says where it came from.
fn print_machine(gateway: &Path, body: usize, cli: &Cli) {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or("unknown".into(), |kib| {
            format!("{:.1} GiB", kib as f64 / 1048576.0)
        });
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    eprintln!(
        "machine: {cores} cores, {model}, {mem} RAM, kernel {}",
        kernel.trim()
    );
    eprintln!(
        "load average before the run: {} (other work on the machine skews every figure)",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    eprintln!("gateway: {}", gateway.display());
    eprintln!(
        "load: {body}-byte incidents, unique ids, {} connections, {} s warm-up + {} s per run",
        cli.connections, cli.warmup, cli.duration
    );
}
