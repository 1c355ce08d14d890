//! The command line: parses arguments and calls the library.
// glibc's allocator spent a fifth of the gateway's CPU under load (malloc_consolidate among
// the top symbols of a profile); mimalloc keeps per-thread free lists.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use incident_gateway::config::Config;
use incident_gateway::model::Event;
use incident_gateway::{Gateway, cli};

#[derive(Parser)]
#[command(
    name = "incident-gateway",
    version,
    about = "Delivers security incidents to ticketing, chat and paging systems"
)]
struct Args {
    /// Log lines as human text or as one JSON object per line (for a log shipper).
    #[arg(
        long,
        global = true,
        env = "IGW_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        #[arg(long, short, env = "IGW_CONFIG")]
        config: PathBuf,
    },
    /// Load the config, compile every template, and render every connector against each
    /// example incident (built-in ones when there are none); hold partial arguments and
    /// matchers to the incident schema. Names every problem (file, line, field), exits non-zero.
    Check {
        #[arg(long, short, env = "IGW_CONFIG")]
        config: PathBuf,
        /// Example incidents to render (default: `incidents/` beside the config file, else the
        /// examples built into the gateway).
        #[arg(long)]
        incidents: Option<PathBuf>,
    },
    /// Show which connectors an incident would reach, and why: each connector's minimum
    /// threat rating and matchers (pointer, expected, actual value, met or not).
    Routes {
        #[arg(long, short, env = "IGW_CONFIG")]
        config: PathBuf,
        #[arg(long)]
        incident: PathBuf,
    },
    /// Print the exact request a connector would send for an incident, without sending it.
    Render {
        #[arg(long, short, env = "IGW_CONFIG")]
        config: PathBuf,
        #[arg(long)]
        connector: String,
        #[arg(long)]
        incident: PathBuf,
        #[arg(long, value_enum, default_value = "created")]
        event: EventArg,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum EventArg {
    Created,
    Updated,
    Completed,
}

impl From<EventArg> for Event {
    fn from(e: EventArg) -> Event {
        match e {
            EventArg::Created => Event::Created,
            EventArg::Updated => Event::Updated,
            EventArg::Completed => Event::Completed,
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Log lines are written by a thread of their own through a buffer: during an alert storm
    // a line per incident costs a copy into memory, not a write to the terminal on the thread
    // serving requests. Nothing is dropped (a full buffer waits); the guard flushes at exit.
    let (writer, _flush_logs_at_exit) =
        tracing_appender::non_blocking::NonBlockingBuilder::default()
            .lossy(false)
            .thread_name("igw-log")
            .finish(std::io::stderr());
    let filter = incident_gateway::cli::log_filter(std::env::var("IGW_LOG").ok().as_deref());
    // Colour codes only for a person at a terminal, never into a file or a pipe.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi);
    match args.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    let result = match args.command {
        Command::Serve { config } => serve(config),
        Command::Check { config, incidents } => check(config, incidents),
        Command::Routes { config, incident } => cli::routes(&config, &incident)
            .map(|routes| {
                print!("{}", routes.text);
                if routes.refused {
                    ExitCode::FAILURE
                } else {
                    ExitCode::SUCCESS
                }
            })
            .map_err(anyhow::Error::from),
        Command::Render {
            config,
            connector,
            incident,
            event,
        } => cli::render(&config, &connector, &incident, event.into())
            .map(|text| print!("{text}"))
            .map(|()| ExitCode::SUCCESS)
            .map_err(anyhow::Error::from),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(config: PathBuf, incidents: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let report = cli::check(&config, incidents.as_deref())?;
    for n in &report.notes {
        eprintln!("note: {n}");
    }
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    for e in &report.errors {
        eprintln!("error: {e}");
    }
    if report.errors.is_empty() {
        println!(
            "ok: {} renders ({} example incidents × connectors × events) passed",
            report.renders, report.incidents
        );
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("{} problem(s) found", report.errors.len());
        Ok(ExitCode::FAILURE)
    }
}

fn serve(config_file: PathBuf) -> anyhow::Result<ExitCode> {
    let config = Config::load(&config_file)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(async {
        #[cfg(unix)]
        let hangups = Hangups::listen();
        let gateway = Gateway::start(config).await?;
        // Printed on stdout so scripts and tests can find an ephemeral port.
        println!("listening on http://{}", gateway.addr);
        #[cfg(unix)]
        hangups.reload(gateway.live.clone());
        shutdown_signal().await;
        tracing::info!("shutting down");
        gateway.stop().await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// SIGHUP reloads the config (as Prometheus and Alertmanager do); it never stops the process.
/// Listened for before the gateway starts, so a SIGHUP during start-up is not fatal either:
/// it is taken once the gateway runs.
#[cfg(unix)]
struct Hangups(Option<tokio::signal::unix::Signal>);

#[cfg(unix)]
impl Hangups {
    fn listen() -> Hangups {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::hangup()) {
            Ok(s) => Hangups(Some(s)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; reload through the admin API");
                Hangups(None)
            }
        }
    }

    fn reload(self, live: std::sync::Arc<incident_gateway::reload::Live>) {
        let Some(mut hangups) = self.0 else {
            return;
        };
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading the config");
                // A refused config is logged and counted by the reload itself.
                let _ = live.reload().await;
            }
        });
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
