//! The command line: parses arguments and calls the library.
// glibc's allocator spent a fifth of the gateway's CPU under load (malloc_consolidate among
// the top symbols of a profile); mimalloc keeps per-thread free lists.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use incident_gateway::config::Config;
use incident_gateway::model::Event;
use incident_gateway::{Gateway, cli, operator};

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
    /// Deliveries of a running gateway, through its admin API: list, show, replay.
    Deliveries {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        command: DeliveriesCommand,
    },
    /// Incidents of a running gateway, through its admin API: list, show.
    Incidents {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        command: IncidentsCommand,
    },
    /// Copy the SQLite store to a new file, safely while the gateway runs (PostgreSQL: use
    /// pg_dump). The copy is compacted, and set to give space freed by retention back.
    Backup {
        #[arg(long, short, env = "IGW_CONFIG")]
        config: PathBuf,
        /// The new file to write (never overwritten).
        #[arg(long)]
        to: PathBuf,
    },
}

/// Where the admin API is, and its token.
#[derive(clap::Args)]
struct ApiArgs {
    /// The admin API's base URL (the gateway's `listen`, or `admin_listen` when set).
    #[arg(
        long,
        env = "IGW_ADMIN_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    url: String,
    /// The config's `server.admin_token` (better in the environment than on the command line).
    #[arg(long, env = "IGW_ADMIN_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
}

#[derive(Subcommand)]
enum DeliveriesCommand {
    /// Deliveries, newest first.
    List {
        #[arg(long, value_parser = ["pending", "delivered", "dead"])]
        status: Option<String>,
        #[arg(long)]
        connector: Option<String>,
        #[arg(long)]
        incident: Option<String>,
        /// Created at or after (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Created before (RFC 3339).
        #[arg(long)]
        until: Option<String>,
        /// At most this many (pages are followed).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// The API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One delivery with its attempts (JSON).
    Show { id: String },
    /// Dead deliveries back in the queue: the ones named, or with `--dead` every one the
    /// filters match (in batches, with a progress bar and a summary).
    Replay {
        #[arg(required_unless_present = "dead", conflicts_with = "dead")]
        ids: Vec<String>,
        #[arg(long)]
        dead: bool,
        #[arg(long, requires = "dead")]
        connector: Option<String>,
        /// Died at or after (RFC 3339).
        #[arg(long, requires = "dead")]
        since: Option<String>,
        /// Died before (RFC 3339; default: now).
        #[arg(long, requires = "dead")]
        until: Option<String>,
        #[arg(long, requires = "dead", value_parser = ["http_4xx", "http_5xx", "http_other", "no_response", "not_sent"])]
        error_class: Option<String>,
    },
}

#[derive(Subcommand)]
enum IncidentsCommand {
    /// Incidents, newest received first.
    List {
        #[arg(long)]
        source: Option<String>,
        #[arg(long, value_parser = ["open", "completed"])]
        status: Option<String>,
        /// Received at or after (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Received before (RFC 3339).
        #[arg(long)]
        until: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// One incident: versions, tickets, deliveries and their attempts (JSON).
    Show { id: String },
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
        Command::Deliveries { api, command } => deliveries(api, command),
        Command::Incidents { api, command } => incidents(api, command),
        Command::Backup { config, to } => backup(&config, &to),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn backup(config: &Path, to: &Path) -> anyhow::Result<ExitCode> {
    let config = incident_gateway::config::Config::load(config)?;
    let done = incident_gateway::backup::backup(&config, to)?;
    println!(
        "backed up {} incidents to {} ({} bytes)",
        done.incidents,
        to.display(),
        done.bytes
    );
    Ok(ExitCode::SUCCESS)
}

/// The admin API a command talks to; a missing token is an error here, not a 401 there.
fn admin_api(api: ApiArgs) -> anyhow::Result<operator::AdminApi> {
    let token = api.token.filter(|t| !t.is_empty()).context(
        "no admin token: set IGW_ADMIN_TOKEN (or --token) to the config's server.admin_token",
    )?;
    Ok(operator::AdminApi {
        url: api.url,
        token,
    })
}

/// Runs an operator command on a small runtime of its own and prints what it returns.
fn print_from(
    work: impl std::future::Future<Output = Result<String, operator::OperatorError>>,
) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let text = runtime.block_on(work)?;
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

fn deliveries(api: ApiArgs, command: DeliveriesCommand) -> anyhow::Result<ExitCode> {
    let api = admin_api(api)?;
    match command {
        DeliveriesCommand::List {
            status,
            connector,
            incident,
            since,
            until,
            limit,
            json,
        } => {
            let filter = operator::ListFilter {
                limit: Some(limit),
                ..Default::default()
            }
            .with("status", status)
            .with("connector", connector)
            .with("incident", incident)
            .with("since", since)
            .with("until", until);
            print_from(operator::deliveries_list(&api, &filter, json))
        }
        DeliveriesCommand::Show { id } => print_from(operator::show(
            &api,
            &format!("/v1/deliveries/{}", operator::path_segment(&id)),
        )),
        DeliveriesCommand::Replay {
            ids,
            dead,
            connector,
            since,
            until,
            error_class,
        } => {
            if dead {
                let filter = operator::DeadFilter {
                    connector,
                    since,
                    until,
                    error_class,
                };
                print_from(operator::replay_dead(&api, &filter))
            } else {
                print_from(operator::replay_each(&api, &ids))
            }
        }
    }
}

fn incidents(api: ApiArgs, command: IncidentsCommand) -> anyhow::Result<ExitCode> {
    let api = admin_api(api)?;
    match command {
        IncidentsCommand::List {
            source,
            status,
            since,
            until,
            limit,
            json,
        } => {
            let filter = operator::ListFilter {
                limit: Some(limit),
                ..Default::default()
            }
            .with("source", source)
            .with("status", status)
            .with("since", since)
            .with("until", until);
            print_from(operator::incidents_list(&api, &filter, json))
        }
        IncidentsCommand::Show { id } => print_from(operator::show(
            &api,
            &format!("/v1/incidents/{}", operator::path_segment(&id)),
        )),
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
