//! The four baselines of issue 12, built from the gateway's own crates (hyper, serde_json with
//! the gateway's features, rusqlite, reqwest), doing the least each kind of work needs:
//!
//! - parse-only: parse the body as JSON, answer 202;
//! - relay: the same, then forward the body to the receiver (storing nothing);
//! - durable ingest: parse, one writer thread inserts an incident row and a delivery row and
//!   group-commits whatever has queued (WAL, synchronous=FULL), then 202;
//! - durable relay: the same, then forward and mark the delivery row done through the same
//!   group commit.
//!
//! Each runs in its own process (the tool re-runs itself as `load baseline-server …`), like
//! the gateway, so it has a runtime and an allocator of its own and its peak RSS can be read.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rusqlite::Connection;
use serde_json::Value;
use tokio::sync::{Semaphore, oneshot};

/// Writes gathered into one commit at most (the gateway's writer uses the same bound).
const MAX_GROUP: usize = 512;
/// Forwards under way at once: the gateway's `[delivery] concurrency` in the tool's config.
pub const FORWARDS: usize = 32;

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Kind {
    ParseOnly,
    Relay,
    DurableIngest,
    DurableRelay,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::ParseOnly => "parse-only",
            Kind::Relay => "storing-nothing relay",
            Kind::DurableIngest => "durable ingest",
            Kind::DurableRelay => "durable relay",
        }
    }

    pub fn forwards(self) -> bool {
        matches!(self, Kind::Relay | Kind::DurableRelay)
    }

    fn durable(self) -> bool {
        matches!(self, Kind::DurableIngest | Kind::DurableRelay)
    }
}

enum Job {
    Insert {
        id: String,
        body: Bytes,
        done: oneshot::Sender<Result<i64, String>>,
    },
    Delivered {
        row: i64,
    },
}

struct Server {
    kind: Kind,
    forward_to: Option<String>,
    client: reqwest::Client,
    forwards: Arc<Semaphore>,
    writer: Option<std::sync::mpsc::Sender<Job>>,
}

/// Serves `kind` on `listener` until the process ends (or the future is dropped).
pub async fn serve(
    kind: Kind,
    listener: tokio::net::TcpListener,
    forward_to: Option<String>,
    db: &Path,
) -> anyhow::Result<()> {
    let writer = if kind.durable() {
        Some(spawn_writer(db)?)
    } else {
        None
    };
    let server = Arc::new(Server {
        kind,
        forward_to,
        client: reqwest::Client::builder().no_proxy().build()?,
        forwards: Arc::new(Semaphore::new(FORWARDS)),
        writer,
    });
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        let server = server.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(server.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

async fn handle(
    server: Arc<Server>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let Ok(body) = req.into_body().collect().await else {
        return Ok(answer(StatusCode::BAD_REQUEST));
    };
    let body = body.to_bytes();
    let Ok(value) = serde_json::from_slice::<Value>(&body) else {
        return Ok(answer(StatusCode::BAD_REQUEST));
    };
    let mut row = None;
    if let Some(writer) = &server.writer {
        let id = value
            .get("incidentId")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let (done, stored) = oneshot::channel();
        let job = Job::Insert {
            id,
            body: body.clone(),
            done,
        };
        if writer.send(job).is_err() {
            return Ok(answer(StatusCode::SERVICE_UNAVAILABLE));
        }
        match stored.await {
            Ok(Ok(r)) => row = Some(r),
            _ => return Ok(answer(StatusCode::SERVICE_UNAVAILABLE)),
        }
    }
    if server.kind.forwards()
        && let Some(url) = server.forward_to.clone()
    {
        let s = server.clone();
        // After the answer, as the gateway delivers after its 202.
        tokio::spawn(async move {
            let Ok(_permit) = s.forwards.clone().acquire_owned().await else {
                return;
            };
            let sent = s
                .client
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await;
            let ok = match sent {
                Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                Err(_) => false,
            };
            if ok && let (Some(row), Some(writer)) = (row, &s.writer) {
                let _ = writer.send(Job::Delivered { row });
            }
        });
    }
    Ok(answer(StatusCode::ACCEPTED))
}

fn answer(status: StatusCode) -> Response<Full<Bytes>> {
    let body = if status == StatusCode::ACCEPTED {
        Bytes::from_static(b"{\"status\":\"accepted\"}")
    } else {
        Bytes::new()
    };
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn spawn_writer(db: &Path) -> anyhow::Result<std::sync::mpsc::Sender<Job>> {
    let conn = Connection::open(db).with_context(|| format!("opening {}", db.display()))?;
    // As the gateway's store: a commit is on disk before the caller hears of it.
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
         CREATE TABLE IF NOT EXISTS incidents (
             id TEXT PRIMARY KEY, body BLOB NOT NULL, received_at INTEGER NOT NULL);
         CREATE TABLE IF NOT EXISTS deliveries (
             seq INTEGER PRIMARY KEY, incident_id TEXT NOT NULL, status TEXT NOT NULL,
             due_at INTEGER NOT NULL);",
    )?;
    let (tx, rx) = std::sync::mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("baseline-writer".into())
        .spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut group = vec![first];
                while group.len() < MAX_GROUP {
                    match rx.try_recv() {
                        Ok(job) => group.push(job),
                        Err(_) => break,
                    }
                }
                commit(&conn, group);
            }
        })?;
    Ok(tx)
}

/// One transaction for the whole group; each insert hears back after the commit.
fn commit(conn: &Connection, group: Vec<Job>) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let mut answers = Vec::with_capacity(group.len());
    let mut failed = conn.execute_batch("BEGIN").err().map(|e| e.to_string());
    for job in group {
        match job {
            Job::Insert { id, body, done } => {
                let row = match &failed {
                    Some(e) => Err(e.clone()),
                    None => insert(conn, &id, &body, now).map_err(|e| e.to_string()),
                };
                answers.push((done, row));
            }
            Job::Delivered { row } => {
                if failed.is_none() {
                    let _ = conn
                        .prepare_cached("UPDATE deliveries SET status = 'done' WHERE seq = ?1")
                        .and_then(|mut s| s.execute([row]));
                }
            }
        }
    }
    if failed.is_none()
        && let Err(e) = conn.execute_batch("COMMIT")
    {
        failed = Some(e.to_string());
        let _ = conn.execute_batch("ROLLBACK");
    }
    for (done, row) in answers {
        let _ = done.send(match &failed {
            Some(e) => Err(e.clone()),
            None => row,
        });
    }
}

fn insert(conn: &Connection, id: &str, body: &[u8], now: i64) -> rusqlite::Result<i64> {
    conn.prepare_cached("INSERT INTO incidents (id, body, received_at) VALUES (?1, ?2, ?3)")?
        .execute(rusqlite::params![id, body, now])?;
    conn.prepare_cached(
        "INSERT INTO deliveries (incident_id, status, due_at) VALUES (?1, 'pending', ?2)",
    )?
    .execute(rusqlite::params![id, now])?;
    Ok(conn.last_insert_rowid())
}

/// A running baseline: a child process (the tool itself) or, for tests, a thread.
pub struct Running {
    pub addr: SocketAddr,
    inner: RunningInner,
}

enum RunningInner {
    Process(super::child::Child),
    Thread(
        Option<oneshot::Sender<()>>,
        Option<std::thread::JoinHandle<()>>,
    ),
}

/// How baselines are started.
#[derive(Clone, Debug)]
pub enum Launch {
    /// `exe baseline-server …`: the tool itself (its own process, as the gateway has).
    Process(PathBuf),
    /// A thread with its own runtime, in this process (for tests, where the executable is
    /// the test harness).
    Thread,
}

impl Running {
    pub fn start(
        launch: &Launch,
        kind: Kind,
        forward_to: Option<String>,
        db: PathBuf,
        log: &Path,
    ) -> anyhow::Result<Running> {
        match launch {
            Launch::Process(exe) => {
                let mut cmd = std::process::Command::new(exe);
                cmd.arg("baseline-server")
                    .arg("--kind")
                    .arg(kind_arg(kind))
                    .arg("--db")
                    .arg(&db);
                if let Some(url) = &forward_to {
                    cmd.arg("--forward-to").arg(url);
                }
                let child = super::child::Child::spawn(cmd, log, kind.label())?;
                Ok(Running {
                    addr: child.addr,
                    inner: RunningInner::Process(child),
                })
            }
            Launch::Thread => {
                let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
                std_listener.set_nonblocking(true)?;
                let addr = std_listener.local_addr()?;
                let (stop, stopped) = oneshot::channel::<()>();
                let thread = std::thread::Builder::new()
                    .name(format!("baseline {}", kind.label()))
                    .spawn(move || {
                        let Ok(rt) = tokio::runtime::Runtime::new() else {
                            return;
                        };
                        rt.block_on(async move {
                            let Ok(listener) = tokio::net::TcpListener::from_std(std_listener)
                            else {
                                return;
                            };
                            tokio::select! {
                                r = serve(kind, listener, forward_to, &db) => {
                                    if let Err(e) = r {
                                        eprintln!("baseline {}: {e:#}", kind.label());
                                    }
                                }
                                _ = stopped => {}
                            }
                        });
                    })?;
                Ok(Running {
                    addr,
                    inner: RunningInner::Thread(Some(stop), Some(thread)),
                })
            }
        }
    }

    /// Peak resident memory (VmHWM) in KiB, when it runs as a process.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        match &self.inner {
            RunningInner::Process(c) => c.peak_rss_kib(),
            RunningInner::Thread(..) => None,
        }
    }

    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        match &mut self.inner {
            RunningInner::Process(c) => c.kill(),
            RunningInner::Thread(stop, thread) => {
                if let Some(s) = stop.take() {
                    let _ = s.send(());
                }
                if let Some(t) = thread.take() {
                    let _ = t.join();
                }
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.halt();
    }
}

fn kind_arg(kind: Kind) -> &'static str {
    match kind {
        Kind::ParseOnly => "parse-only",
        Kind::Relay => "relay",
        Kind::DurableIngest => "durable-ingest",
        Kind::DurableRelay => "durable-relay",
    }
}

/// The `baseline-server` subcommand: serve `kind` on an ephemeral port, print where.
pub fn main(kind: Kind, forward_to: Option<String>, db: PathBuf) -> anyhow::Result<()> {
    // The gateway's runtime: tokio's default multi-thread runtime, one worker per core.
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        // The same first line as the gateway's, so one launcher reads both.
        println!("listening on http://{}", listener.local_addr()?);
        serve(kind, listener, forward_to, &db).await
    })
}
