//! The fault suite (issue 17): the real binary broken on purpose — killed mid-load, its disk
//! filled, its writes failed, its receivers misbehaving, its database restarted — and what it
//! acknowledged checked against what reached the receiver. Each fault prints its figures.
//!
//! Short by default (minutes, in CI); `IGW_FAULTS=long` runs the long form (100,000 incidents
//! and 20 kills in the crash loop): `scripts/faults`.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use common::*;
use serde_json::Value;

/// Whether the long form runs.
fn long() -> bool {
    std::env::var("IGW_FAULTS").is_ok_and(|v| v == "long")
}

/// A lean receiver: counts each incidentId it is sent (a big run keeps no bodies).
#[derive(Default)]
struct Tally {
    seen: Mutex<HashMap<String, u32>>,
}

impl Tally {
    fn distinct(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
    fn total(&self) -> u64 {
        self.seen
            .lock()
            .unwrap()
            .values()
            .map(|n| u64::from(*n))
            .sum()
    }
    fn ids(&self) -> HashSet<String> {
        self.seen.lock().unwrap().keys().cloned().collect()
    }
}

async fn tally(State(t): State<Arc<Tally>>, body: Bytes) -> &'static str {
    if let Ok(v) = serde_json::from_slice::<Value>(&body)
        && let Some(id) = v["incidentId"].as_str()
    {
        *t.seen.lock().unwrap().entry(id.to_string()).or_default() += 1;
    }
    "{\"ok\":true}"
}

async fn start_tally() -> (Arc<Tally>, SocketAddr) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let t = Arc::new(Tally::default());
    let app = axum::Router::new().fallback(tally).with_state(t.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (t, addr)
}

/// A config listening on `listen` whose one connector, `hook`, posts to the tally at
/// `receiver` with fast retries; `storage` replaces the workspace's `storage.url` line.
fn hook_config(
    ws: &Workspace,
    listen: &str,
    receiver: SocketAddr,
    storage: Option<String>,
) -> std::path::PathBuf {
    let config = ws.config(
        listen,
        &http_connector("hook", &format!("http://{receiver}/hook"), fast_retry()),
    );
    if let Some(storage) = storage {
        edit(&config, |t| {
            t.replace(&format!("url = \"{}\"", ws.storage_url()), &storage)
        });
    }
    config
}

/// A small PRNG (xorshift), seeded and printed so a run can be repeated.
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let seed = std::env::var("IGW_FAULTS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| now() as u64 | 1);
        eprintln!("seed {seed} (IGW_FAULTS_SEED={seed} repeats this run)");
        Rng(seed)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn between(&mut self, low: Duration, high: Duration) -> Duration {
        let span = (high - low).as_millis() as u64;
        low + Duration::from_millis(self.next() % span.max(1))
    }
}

/// Posts incidents `prefix-0 … prefix-(n-1)`, `concurrency` at a time, each until it is
/// answered 202 (a platform resends what was not acknowledged); returns the ids answered 202.
/// Connection errors while the gateway is down are retried after a short pause. With
/// `spread`, incident `i` is not posted before `i/n` of it has passed: the load lasts that
/// long however fast the machine (so the faults it is to meet land within it).
async fn post_until_acked(
    base: &str,
    prefix: &str,
    n: usize,
    concurrency: usize,
    deadline: Instant,
    spread: Option<Duration>,
) -> HashSet<String> {
    let t0 = tokio::time::Instant::now();
    use futures_util::StreamExt;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = format!("{base}/v1/incidents");
    futures_util::stream::iter(0..n)
        .map(|i| {
            let (client, url) = (client.clone(), url.clone());
            let id = format!("{prefix}-{i}");
            let not_before = spread.map(|d| t0 + d.mul_f64(i as f64 / n as f64));
            async move {
                if let Some(at) = not_before {
                    tokio::time::sleep_until(at).await;
                }
                let body = incident(&id).to_string();
                while Instant::now() < deadline {
                    let sent = client
                        .post(&url)
                        .bearer_auth(SOURCE_KEY)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status() == 202 => return Some(id),
                        _ => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
                None
            }
        })
        .buffer_unordered(concurrency)
        .filter_map(|id| async move { id })
        .collect()
        .await
}

/// Waits until the gateway at `base` answers `/readyz`; how long that took.
async fn ready(base: &str, within: Duration) -> Duration {
    let started = Instant::now();
    let client = client();
    while started.elapsed() < within {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await
            && r.status() == 200
        {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{base} not ready within {within:?}");
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// 1. The crash loop: incidents posted while the gateway is killed with SIGKILL at random
///    moments and restarted. Every 202 reaches the receiver; duplicates (a send cut off
///    before its outcome was recorded goes again) are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_loses_nothing_acknowledged() {
    let (n, kills) = if long() { (100_000, 20) } else { (3_000, 5) };
    let (tally, receiver) = start_tally().await;
    let port = free_port();
    let ws = Workspace::new();
    let config = hook_config(&ws, &format!("127.0.0.1:{port}"), receiver, None);
    let base = format!("http://127.0.0.1:{port}");
    let (mut child, _) = spawn_binary(&config);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(if long() { 3600 } else { 600 });
    // Kills spread over the load: each after a random pause, while the load runs; the load
    // is paced to outlast the longest such series (a fast machine would finish it first).
    let spread = if long() {
        (Duration::from_millis(500), Duration::from_millis(2500))
    } else {
        (Duration::from_millis(300), Duration::from_millis(1500))
    };
    let lasting = spread.1 * (kills as u32 + 2);
    let load = {
        let base = base.clone();
        tokio::spawn(
            async move { post_until_acked(&base, "CL", n, 16, deadline, Some(lasting)).await },
        )
    };
    let mut rng = Rng::seeded();
    let mut recoveries = Vec::new();
    for _ in 0..kills {
        tokio::time::sleep(rng.between(spread.0, spread.1)).await;
        if load.is_finished() {
            break;
        }
        let killed = Instant::now();
        sigkill(&mut child);
        child = spawn_binary(&config).0;
        ready(&base, Duration::from_secs(30)).await;
        recoveries.push(killed.elapsed());
    }
    let acked = load.await.unwrap();
    let kills_done = recoveries.len();
    let load_time = started.elapsed();
    let all_there = eventually(Duration::from_secs(if long() { 600 } else { 120 }), || {
        let missing = acked.difference(&tally.ids()).count();
        async move { (missing == 0).then_some(()) }
    })
    .await;
    let received = tally.ids();
    let lost: Vec<&String> = acked.difference(&received).take(10).collect();
    let duplicates = tally.total() - tally.distinct() as u64;
    eprintln!(
        "crash loop: {n} incidents posted, {} acknowledged in {load_time:?} with {kills_done} kills; \
         {} delivered ({} requests, {duplicates} duplicates), {} lost; recovery after a kill: \
         median {:?}, max {:?}",
        acked.len(),
        received.len(),
        tally.total(),
        acked.difference(&received).count(),
        median(recoveries.clone()),
        recoveries.iter().max().copied().unwrap_or_default(),
    );
    sigkill(&mut child);
    assert_eq!(acked.len(), n, "every incident was acknowledged in the end");
    assert_eq!(
        kills_done, kills,
        "only {kills_done} kills landed during the load"
    );
    assert!(all_there.is_some() && lost.is_empty(), "lost: {lost:?}");
}

/// How a scripted raw-TCP receiver misbehaves.
#[derive(Clone, Copy)]
enum Misbehaviour {
    /// Accepts the connection and never answers.
    Hang,
    /// Answers 200 and then a byte of body every 200 ms.
    Trickle,
    /// Answers 200 with a 1 GB body, as fast as it is read.
    Huge,
    /// Starts a response and resets the connection halfway.
    Reset,
}

/// A raw TCP server that reads a request's head and then misbehaves as told.
async fn misbehaving(how: Misbehaviour) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                // Enough of the request to answer it (its body may still be arriving).
                let _ = socket.read(&mut buf).await;
                match how {
                    Misbehaviour::Hang => {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    }
                    Misbehaviour::Trickle => {
                        let _ = socket
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n")
                            .await;
                        for _ in 0..100_000 {
                            if socket.write_all(b"x").await.is_err() {
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                    Misbehaviour::Huge => {
                        let size: u64 = 1 << 30;
                        let head = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {size}\r\n\r\n"
                        );
                        if socket.write_all(head.as_bytes()).await.is_err() {
                            return;
                        }
                        let chunk = vec![b' '; 1 << 20];
                        for _ in 0..1024 {
                            if socket.write_all(&chunk).await.is_err() {
                                return;
                            }
                        }
                    }
                    Misbehaviour::Reset => {
                        let _ = socket
                            .write_all(
                                b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n{\"partial\":",
                            )
                            .await;
                        let _ = socket.flush().await;
                        // SO_LINGER 0: the close is a reset, not a clean end.
                        #[allow(deprecated)]
                        let _ = socket.set_linger(Some(Duration::ZERO));
                        drop(socket);
                    }
                }
            });
        }
    });
    addr
}

/// The peak resident memory of process `pid` so far (VmHWM), in MiB.
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

/// The attempts of `connector`'s deliveries of incident `id`, as the admin API shows them.
async fn attempts_of(base: &str, id: &str, connector: &str) -> Vec<Value> {
    let (_, v) = admin_get(base, &format!("/v1/incidents/{id}")).await;
    v["connectors"][connector]["deliveries"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|d| d["attempts"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// 4. Receivers misbehaving: each attempt ends within the connector's timeout with its reason
///    recorded, a 1 GB answer is not read into memory, and a healthy connector beside them is
///    not slowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_receivers_end_within_the_timeout_and_slow_no_one_else() {
    let (good, good_addr) = start_tally().await;
    let hang = misbehaving(Misbehaviour::Hang).await;
    let trickle = misbehaving(Misbehaviour::Trickle).await;
    let huge = misbehaving(Misbehaviour::Huge).await;
    let reset = misbehaving(Misbehaviour::Reset).await;
    // One attempt each, so every one is looked at once.
    let once = "[connectors.retry]\nmax_attempts = 1\n";
    let connectors = [
        http_connector("good", &format!("http://{good_addr}/hook"), ""),
        http_connector("hang", &format!("http://{hang}/hook"), once),
        http_connector("trickle", &format!("http://{trickle}/hook"), once),
        http_connector("huge", &format!("http://{huge}/hook"), once),
        http_connector("reset", &format!("http://{reset}/hook"), once),
        // A name that never resolves (RFC 2606's .invalid).
        http_connector("nodns", "http://gateway-fault.invalid/hook", once),
    ]
    .join("\n")
    .replace("timeout = \"5s\"", "timeout = \"2s\"");
    let ws = Workspace::new();
    let config = ws.config("127.0.0.1:0", &connectors);
    let (mut child, base) = spawn_binary(&config);
    let rss_before = peak_rss_mib(child.id());
    let ids: Vec<String> = (0..3).map(|i| format!("MIS-{i}")).collect();
    let mut good_latency = Vec::new();
    for id in &ids {
        let posted = Instant::now();
        assert_eq!(post_incident(&base, &incident(id)).await.status(), 202);
        eventually(Duration::from_secs(10), || async {
            good.ids().contains(id.as_str()).then_some(())
        })
        .await
        .expect("the healthy connector delivers");
        good_latency.push(posted.elapsed());
    }
    let mut reasons = Vec::new();
    for connector in ["hang", "trickle", "huge", "reset", "nodns"] {
        for id in &ids {
            let attempts = eventually(Duration::from_secs(20), || async {
                let a = attempts_of(&base, id, connector).await;
                (!a.is_empty()).then_some(a)
            })
            .await
            .unwrap_or_else(|| panic!("{connector}: no attempt recorded for {id}"));
            let a = &attempts[0];
            let latency = a["latency_ms"].as_i64().unwrap();
            assert!(
                latency <= 2_000 + 1_000,
                "{connector}: an attempt took {latency} ms: {a}"
            );
            let reason = a["error"]
                .as_str()
                .map(str::to_string)
                .or(a["status_code"].as_u64().map(|s| format!("HTTP {s}")))
                .unwrap_or_default();
            assert!(!reason.is_empty(), "{connector}: no reason recorded: {a}");
            if id == &ids[0] {
                reasons.push(format!("{connector}: {latency} ms, {reason:.80}"));
            }
        }
    }
    let rss_peak = peak_rss_mib(child.id());
    eprintln!(
        "misbehaving receivers: healthy connector delivered in {:?} (max of {}); \
         peak RSS {rss_before} MiB before, {rss_peak} MiB after three 1 GB answers\n  {}",
        good_latency.iter().max().unwrap(),
        ids.len(),
        reasons.join("\n  ")
    );
    assert!(
        good_latency.iter().all(|l| *l < Duration::from_secs(2)),
        "{good_latency:?}"
    );
    assert!(
        rss_peak < rss_before + 64,
        "RSS grew from {rss_before} to {rss_peak} MiB"
    );
    sigkill(&mut child);
}

/// A size-limited tmpfs mounted for the test, unmounted when dropped.
struct SmallDisk {
    path: std::path::PathBuf,
}

impl SmallDisk {
    fn mount(path: &Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(path).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "cannot mount a tmpfs at {} (the disk-full fault needs root)",
            path.display()
        );
        SmallDisk {
            path: path.to_path_buf(),
        }
    }

    /// Fills what is left with a file (`dd` until ENOSPC); returns the file.
    fn fill(&self) -> std::path::PathBuf {
        let filler = self.path.join("filler");
        let _ = std::process::Command::new("dd")
            .args(["if=/dev/zero", "bs=64k"])
            .arg(format!("of={}", filler.display()))
            .stderr(std::process::Stdio::null())
            .status();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

fn integrity(db: &Path) -> String {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0))
        .unwrap()
}

/// 2. Disk full: ingest answers 503 problem+json (never 202 for what was not stored), what is
///    stored is still delivered, the database stays sound, and ingest comes back by itself
///    when space is freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_with_503_keeps_delivering_and_recovers() {
    let (tally, receiver) = start_tally().await;
    let ws = Workspace::new();
    let disk = SmallDisk::mount(&ws.path().join("disk"), "24m");
    let db = disk.path.join("gw.db");
    let storage = format!("url = \"sqlite://{}\"", db.display());
    let config = hook_config(&ws, "127.0.0.1:0", receiver, Some(storage));
    let (mut child, base) = spawn_binary(&config);
    let mut acked: HashSet<String> = HashSet::new();
    for i in 0..100 {
        let id = format!("DF-a{i}");
        assert_eq!(post_incident(&base, &incident(&id)).await.status(), 202);
        acked.insert(id);
    }
    let filler = disk.fill();
    // Post until the store refuses; every 202 must be stored.
    let (mut refused, mut i) = (0, 0);
    let mut first_problem = Value::Null;
    while refused < 20 && i < 20_000 {
        let id = format!("DF-b{i}");
        i += 1;
        let r = post_incident(&base, &incident(&id)).await;
        match r.status().as_u16() {
            202 => {
                acked.insert(id);
            }
            503 => {
                assert_eq!(r.headers()["content-type"], "application/problem+json");
                if first_problem.is_null() {
                    first_problem = r.json().await.unwrap();
                }
                refused += 1;
            }
            other => panic!("{id}: answered {other} on a full disk"),
        }
    }
    assert_eq!(
        refused, 20,
        "the full disk never refused an incident ({i} posted)"
    );
    assert_eq!(health(&base).await, 200, "the process stays up");
    assert!(
        store_failures(&base).await >= 20,
        "the refusals are counted"
    );
    // What was acknowledged is delivered while the disk is full.
    let delivered_full = eventually(Duration::from_secs(60), || async {
        acked.is_subset(&tally.ids()).then_some(())
    })
    .await;
    // Space comes back: ingest recovers without a restart.
    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    let recovered = eventually(Duration::from_secs(60), || async {
        let id = format!("DF-c{}", now());
        (post_incident(&base, &incident(&id)).await.status() == 202).then_some(id)
    })
    .await
    .expect("ingest recovers once space is freed");
    let recovery = freed.elapsed();
    acked.insert(recovered);
    eventually(Duration::from_secs(60), || async {
        acked.is_subset(&tally.ids()).then_some(())
    })
    .await
    .expect("everything acknowledged is delivered");
    sigkill(&mut child);
    let check = integrity(&db);
    eprintln!(
        "disk full: {} acknowledged, {refused} refused with 503 ({}), delivered while full: {}, \
         ingest back {recovery:?} after space was freed, integrity_check: {check}, duplicates {}",
        acked.len(),
        first_problem["detail"],
        delivered_full.is_some(),
        tally.total() - tally.distinct() as u64
    );
    assert!(
        delivered_full.is_some(),
        "delivery stopped while the disk was full"
    );
    assert_eq!(check, "ok");
}

/// `igw_ingest_store_failures_total` of the gateway at `base`.
async fn store_failures(base: &str) -> u64 {
    let r = admin(reqwest::Method::GET, base, "/metrics").await;
    let text = r.text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("igw_ingest_store_failures_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the metric is there")
}

/// Runs SQL on the test database `db` through psql (as another client would).
fn psql(db_url: &str, sql: &str) -> std::process::Child {
    std::process::Command::new("psql")
        .args([db_url, "-v", "ON_ERROR_STOP=0", "-q", "-c", sql])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("psql runs")
}

/// Restarts this machine's PostgreSQL cluster.
fn restart_postgres() {
    let version = std::fs::read_dir("/etc/postgresql")
        .expect("a PostgreSQL cluster on this machine")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .next()
        .unwrap();
    let status = std::process::Command::new("pg_ctlcluster")
        .args([
            "--skip-systemctl-redirect",
            &version,
            "main",
            "restart",
            "-m",
            "fast",
        ])
        .status()
        .expect("pg_ctlcluster runs");
    assert!(status.success(), "PostgreSQL did not restart");
}

/// Posts one incident after another until one is answered 202; how long that took.
async fn time_to_accept(base: &str, prefix: &str) -> Duration {
    let started = Instant::now();
    for i in 0.. {
        let id = format!("{prefix}-probe-{i}");
        if let Ok(r) = client()
            .post(format!("{base}/v1/incidents"))
            .bearer_auth(SOURCE_KEY)
            .json(&incident(&id))
            .send()
            .await
            && r.status() == 202
        {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{prefix}: no 202 within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    unreachable!()
}

/// 7. PostgreSQL faults, under load: every connection of the gateway killed
///    (`pg_terminate_backend`), the tables locked past `statement_timeout`, and the server
///    restarted. Nothing acknowledged is lost; ingest comes back after each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_faults_lose_nothing_acknowledged() {
    let n = if long() { 20_000 } else { 1_500 };
    let (tally, receiver) = start_tally().await;
    let db = common::pg::PgDb::create();
    let ws = Workspace::new();
    let storage = format!("url = \"{}\"\nstatement_timeout = \"1s\"", db.url);
    let config = hook_config(&ws, "127.0.0.1:0", receiver, Some(storage));
    let (mut child, base) = spawn_binary(&config);
    let deadline = Instant::now() + Duration::from_secs(600);
    let load = {
        let base = base.clone();
        tokio::spawn(async move { post_until_acked(&base, "PG", n, 8, deadline, None).await })
    };
    let mut recovered = Vec::new();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let db_name = db.name.clone();
    let mut killer = psql(
        &db.url,
        &format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = '{db_name}' AND pid <> pg_backend_pid()"
        ),
    );
    killer.wait().unwrap();
    recovered.push(("connections killed", time_to_accept(&base, "PG-k").await));
    let mut locker = psql(
        &db.url,
        "BEGIN; LOCK TABLE incidents, deliveries IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(3); COMMIT;",
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let locked = Instant::now();
    locker.wait().unwrap();
    recovered.push((
        "tables locked 3 s (statement_timeout 1 s)",
        time_to_accept(&base, "PG-l").await + locked.elapsed(),
    ));
    restart_postgres();
    recovered.push(("server restarted", time_to_accept(&base, "PG-r").await));
    let acked = load.await.unwrap();
    let all_there = eventually(Duration::from_secs(120), || async {
        acked.is_subset(&tally.ids()).then_some(())
    })
    .await;
    let lost = acked.difference(&tally.ids()).count();
    eprintln!(
        "postgres faults: {} of {n} acknowledged, {} delivered, {} duplicates, {lost} lost; recovery: {}",
        acked.len(),
        tally.distinct(),
        tally.total() - tally.distinct() as u64,
        recovered
            .iter()
            .map(|(what, t)| format!("{what}: {t:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    sigkill(&mut child);
    assert_eq!(acked.len(), n);
    assert!(
        all_there.is_some(),
        "{lost} acknowledged incidents were not delivered"
    );
}

/// 3. I/O errors: every `fsync`/`fdatasync` of the gateway fails with EIO for a while
///    (injected by `strace --inject`), then works again. A commit whose sync failed is never
///    answered 202; the error is logged; the process stays up (or exits and is restarted)
///    and, after a `kill -9` and restart, everything acknowledged is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_fsync_never_turns_into_a_202() {
    let (tally, receiver) = start_tally().await;
    let port = free_port();
    let ws = Workspace::new();
    let config = hook_config(&ws, &format!("127.0.0.1:{port}"), receiver, None);
    let log = ws.path().join("gateway.log");
    let (mut child, base) = spawn_binary_logged(&config, "warn", &[], &log);
    let mut acked = HashSet::new();
    for i in 0..50 {
        let id = format!("IO-a{i}");
        assert_eq!(post_incident(&base, &incident(&id)).await.status(), 202);
        acked.insert(id);
    }
    // From now on every sync of the gateway's threads fails.
    let mut strace = std::process::Command::new("strace")
        .args([
            "-f",
            "-qq",
            "-o",
            "/dev/null",
            "-e",
            "trace=fsync,fdatasync",
        ])
        .args(["-e", "inject=fsync,fdatasync:error=EIO"])
        .args(["-p", &child.id().to_string()])
        .spawn()
        .expect("strace runs");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (mut refused, mut other) = (0, 0);
    for i in 0..30 {
        let id = format!("IO-b{i}");
        match client()
            .post(format!("{base}/v1/incidents"))
            .bearer_auth(SOURCE_KEY)
            .json(&incident(&id))
            .timeout(Duration::from_secs(10))
            .send()
            .await
        {
            Ok(r) if r.status() == 202 => {
                acked.insert(id);
            }
            Ok(r) if r.status() == 503 => refused += 1,
            _ => other += 1,
        }
    }
    let _ = strace.kill();
    let _ = strace.wait();
    let counted = store_failures(&base).await;
    let up = child.try_wait().unwrap().is_none();
    if !up {
        // It exited on the error: a restart must lose nothing.
        child = spawn_binary_logged(&config, "warn", &[], &log).0;
    }
    let recovery = time_to_accept(&base, "IO-c").await;
    // And a crash after it all: what was acknowledged is on disk.
    sigkill(&mut child);
    let (mut child, _) = spawn_binary_logged(&config, "warn", &[], &ws.path().join("after.log"));
    let all_there = eventually(Duration::from_secs(60), || async {
        acked.is_subset(&tally.ids()).then_some(())
    })
    .await;
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    let errors = logged
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("error"))
        .count();
    eprintln!(
        "fsync failing: {refused} refused with 503, {other} other failures, {} acknowledged in all; \
         process {}; ingest back {recovery:?} after the fault ended; {errors} error lines logged; \
         all acknowledged delivered: {}",
        acked.len(),
        if up {
            "stayed up"
        } else {
            "exited and was restarted"
        },
        all_there.is_some()
    );
    sigkill(&mut child);
    assert!(
        refused + other > 0,
        "no request failed while every fsync failed: was it injected?"
    );
    assert!(errors > 0, "the failures were not logged");
    assert!(
        counted >= refused as u64,
        "{counted} counted for {refused} refused"
    );
    assert!(all_there.is_some(), "acknowledged incidents were lost");
}

/// How a scripted SMTP server misbehaves.
#[derive(Clone, Copy, PartialEq)]
enum SmtpFault {
    /// Greets, then never answers a command.
    StallAfterGreeting,
    /// Takes the message, then drops the connection before its reply to the final dot.
    DropAfterData,
    /// Answers 421 (closing) to the first session's MAIL FROM; later sessions go through.
    Busy421Once,
}

/// A raw SMTP server: each session follows the script until its fault; messages it replied
/// 250 to, and those it took but never replied to, are counted.
#[derive(Default)]
struct MailCount {
    sessions: std::sync::atomic::AtomicUsize,
    /// Messages whose data ended (final dot seen), replied to or not.
    taken: std::sync::atomic::AtomicUsize,
    /// Each message's Message-ID header.
    message_ids: Mutex<Vec<String>>,
}

async fn smtp_server(fault: SmtpFault) -> (Arc<MailCount>, u16) {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(MailCount::default());
    let shared = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            let count = shared.clone();
            tokio::spawn(async move {
                let session = count.sessions.fetch_add(1, Ordering::SeqCst);
                let (read, mut write) = socket.into_split();
                let mut lines = BufReader::new(read).lines();
                let _ = write.write_all(b"220 faults.test ESMTP\r\n").await;
                if fault == SmtpFault::StallAfterGreeting {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    return;
                }
                let mut in_data = false;
                while let Ok(Some(line)) = lines.next_line().await {
                    if in_data {
                        if let Some(id) = line
                            .strip_prefix("Message-ID:")
                            .or(line.strip_prefix("Message-Id:"))
                        {
                            count
                                .message_ids
                                .lock()
                                .unwrap()
                                .push(id.trim().to_string());
                        }
                        if line == "." {
                            in_data = false;
                            count.taken.fetch_add(1, Ordering::SeqCst);
                            // The first message is dropped before its reply: taken or not, the
                            // gateway cannot tell.
                            if fault == SmtpFault::DropAfterData && session == 0 {
                                return;
                            }
                            let _ = write.write_all(b"250 2.0.0 queued\r\n").await;
                        }
                        continue;
                    }
                    let verb = line.split(' ').next().unwrap_or("").to_ascii_uppercase();
                    let reply: &[u8] = match verb.as_str() {
                        "EHLO" | "HELO" => b"250 faults.test\r\n",
                        "MAIL" if fault == SmtpFault::Busy421Once && session == 0 => {
                            let _ = write.write_all(b"421 4.3.2 too busy, closing\r\n").await;
                            return;
                        }
                        "MAIL" | "RCPT" | "RSET" | "NOOP" => b"250 OK\r\n",
                        "DATA" => {
                            in_data = true;
                            b"354 go ahead\r\n"
                        }
                        "QUIT" => {
                            let _ = write.write_all(b"221 bye\r\n").await;
                            return;
                        }
                        _ => b"502 not implemented\r\n",
                    };
                    if write.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (count, port)
}

/// 6. SMTP servers misbehaving: one that greets and stalls (each attempt ends at the
///    connector's timeout, reason recorded), one that drops the connection after the message
///    before its reply (the outcome is unknown: sent again, at most one duplicate), one that
///    answers 421 mid-session (retried, delivered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_smtp_servers_are_bounded_and_retried() {
    use std::sync::atomic::Ordering;
    let (_, stall) = smtp_server(SmtpFault::StallAfterGreeting).await;
    let (dropped, drop_port) = smtp_server(SmtpFault::DropAfterData).await;
    let (busy, busy_port) = smtp_server(SmtpFault::Busy421Once).await;
    let ws = Workspace::new();
    ws.write("body.txt.hbs", "{{incidentId}}\n");
    let connector = |name: &str, port: u16, attempts: u32| {
        format!(
            r#"
[[connectors]]
name = "{name}"
kind = "smtp"
smtp_url = "smtp://127.0.0.1:{port}"
from = "soc@example.com"
to = ["tickets@example.com"]
subject = "incident {{{{incidentId}}}}"
template = "body.txt.hbs"
timeout = "2s"
[connectors.retry]
max_attempts = {attempts}
initial_backoff = "100ms"
max_backoff = "300ms"
"#
        )
    };
    let config = ws.config(
        "127.0.0.1:0",
        &[
            connector("stall", stall, 1),
            connector("dropper", drop_port, 5),
            connector("busy", busy_port, 5),
        ]
        .join("\n"),
    );
    let (mut child, base) = spawn_binary(&config);
    assert_eq!(
        post_incident(&base, &incident("SMTP-1")).await.status(),
        202
    );
    let delivered = |connector: &'static str| {
        let base = base.clone();
        async move {
            eventually(Duration::from_secs(20), || async {
                let (_, v) = admin_get(&base, "/v1/incidents/SMTP-1").await;
                let d = v["connectors"][connector]["deliveries"][0].clone();
                (d["status"] == "delivered" || d["status"] == "dead").then_some(d)
            })
            .await
            .unwrap_or_else(|| panic!("{connector}: not settled"))
        }
    };
    let stalled = delivered("stall").await;
    let attempt = &stalled["attempts"][0];
    let latency = attempt["latency_ms"].as_i64().unwrap();
    assert_eq!(stalled["status"], "dead");
    assert!(latency <= 3_000, "the stalled session took {latency} ms");
    let dropper = delivered("dropper").await;
    let busy_d = delivered("busy").await;
    eprintln!(
        "smtp: stalled session ended after {latency} ms ({}); dropped after DATA: {} after {} attempts, \
         the server took the message {} times ({} duplicate, same Message-ID: {}); 421: {} after {} attempts ({})",
        attempt["error"],
        dropper["status"],
        dropper["attempt_count"],
        dropped.taken.load(Ordering::SeqCst),
        dropped.taken.load(Ordering::SeqCst).saturating_sub(1),
        {
            let ids = dropped.message_ids.lock().unwrap();
            ids.len() == 2 && ids[0] == ids[1]
        },
        busy_d["status"],
        busy_d["attempt_count"],
        busy_d["attempts"][0]["error"],
    );
    assert_eq!(dropper["status"], "delivered");
    assert!(
        dropped.taken.load(Ordering::SeqCst) <= 2,
        "more than one duplicate mail"
    );
    // The copy sent again carries the first one's Message-ID: a ticketing system that
    // dedupes by it opens one ticket.
    let ids = dropped.message_ids.lock().unwrap().clone();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert_eq!(ids[0], ids[1], "the resent mail has a new Message-ID");
    assert_eq!(busy_d["status"], "delivered");
    assert_eq!(busy_d["attempt_count"], 2);
    assert_eq!(busy.taken.load(Ordering::SeqCst), 1);
    sigkill(&mut child);
}

/// libfaketime, which the clock fault runs the gateway under (Debian's `faketime`, installed
/// by scripts/test).
const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// 5. The wall clock jumps an hour back, then an hour forward, while retries are scheduled
///    (libfaketime moves the gateway's wall clock; its monotonic clock runs on). Each retry
///    still goes out about when it was due — none lost, none twice, none held for the hour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_jumps_neither_lose_nor_stall_retries() {
    assert!(
        Path::new(FAKETIME).exists(),
        "{FAKETIME} is missing: install Debian's faketime (scripts/test does)"
    );
    let receiver = Receiver::start().await;
    let ws = Workspace::new();
    let offset = ws.write("faketime", "+0\n");
    let retry = "[connectors.retry]\nmax_attempts = 10\ninitial_backoff = \"2s\"\nmax_backoff = \"2s\"\nmax_age = \"1d\"\n";
    let config = ws.config(
        "127.0.0.1:0",
        &http_connector("hook", &receiver.url("/hook"), retry),
    );
    let offset_file = offset.display().to_string();
    let env = [
        ("LD_PRELOAD", FAKETIME),
        ("FAKETIME_TIMESTAMP_FILE", offset_file.as_str()),
        ("FAKETIME_NO_CACHE", "1"),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ];
    let (mut child, base) =
        spawn_binary_logged(&config, "warn", &env, &ws.path().join("gateway.log"));
    let mut figures = Vec::new();
    for (jump, to) in [("back", "-3600"), ("forward", "+0")] {
        // The first attempt fails; its retry is due 2 s later. The clock jumps meanwhile.
        receiver.script([Reply::status(503)]);
        let before = receiver.received().len();
        let id = format!("CLK-{jump}");
        let posted = Instant::now();
        assert_eq!(post_incident(&base, &incident(&id)).await.status(), 202);
        receiver.wait_for(before + 1, Duration::from_secs(10)).await;
        std::fs::write(&offset, format!("{to}\n")).unwrap();
        let retried = eventually(Duration::from_secs(30), || async {
            (receiver.received().len() >= before + 2).then_some(posted.elapsed())
        })
        .await
        .unwrap_or_else(|| panic!("the retry after the jump {jump} was held (30 s and waiting)"));
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        let sent = receiver.received().len() - before;
        figures.push(format!(
            "{jump} an hour: retry {retried:?} after the post, {sent} requests"
        ));
        assert_eq!(sent, 2, "jump {jump}: the delivery went {sent} times");
    }
    eprintln!("clock jumps: {}", figures.join("; "));
    sigkill(&mut child);
}

/// A line of `/etc/hosts` for the test, taken out again when dropped.
struct HostsEntry {
    line: String,
}

impl HostsEntry {
    fn add(name: &str) -> HostsEntry {
        let line = format!("127.0.0.1 {name}");
        let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        std::fs::write("/etc/hosts", format!("{hosts}{line}\n"))
            .expect("/etc/hosts is writable (the DNS fault needs root)");
        HostsEntry { line }
    }
}

impl Drop for HostsEntry {
    fn drop(&mut self) {
        let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        let kept: String = hosts
            .lines()
            .filter(|l| *l != self.line)
            .map(|l| format!("{l}\n"))
            .collect();
        let _ = std::fs::write("/etc/hosts", kept);
    }
}

/// 4, continued. A name that resolved stops resolving (its `/etc/hosts` line taken out while
/// the gateway runs): the next attempt fails at once with the DNS error recorded, and a retry
/// delivers once the name is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_stops_resolving_fails_with_its_reason_and_recovers() {
    // The receiver closes each connection after its answer: a pooled connection would carry
    // the next delivery without asking the resolver again.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let receiver = listener.local_addr().unwrap();
    let counted = Arc::new(Tally::default());
    let closing = axum::middleware::map_response(|mut r: axum::response::Response| async {
        r.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
        r
    });
    let app = axum::Router::new()
        .fallback(tally)
        .layer(closing)
        .with_state(counted.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let name = format!("igw-fault-{}.test", std::process::id());
    let entry = HostsEntry::add(&name);
    let ws = Workspace::new();
    let url = format!("http://{name}:{}/hook", receiver.port());
    let config = ws.config("127.0.0.1:0", &http_connector("hook", &url, fast_retry()));
    let (mut child, base) = spawn_binary(&config);
    assert_eq!(post_incident(&base, &incident("DNS-1")).await.status(), 202);
    eventually(Duration::from_secs(10), || async {
        counted.ids().contains("DNS-1").then_some(())
    })
    .await
    .expect("delivered while the name resolves");
    drop(entry);
    assert_eq!(post_incident(&base, &incident("DNS-2")).await.status(), 202);
    let failed = eventually(Duration::from_secs(10), || async {
        let a = attempts_of(&base, "DNS-2", "hook").await;
        (!a.is_empty()).then_some(a)
    })
    .await
    .expect("an attempt is recorded");
    let reason = failed[0]["error"].as_str().unwrap_or_default().to_string();
    assert!(failed[0]["status_code"].is_null(), "{failed:?}");
    let latency = failed[0]["latency_ms"].as_i64().unwrap();
    assert!(reason.contains("dns"), "{reason}");
    assert!(latency < 5_000, "{latency} ms");
    let back = HostsEntry::add(&name);
    let returned = Instant::now();
    eventually(Duration::from_secs(30), || async {
        counted.ids().contains("DNS-2").then_some(())
    })
    .await
    .expect("delivered once the name resolves again");
    eprintln!(
        "dns: the name stopped resolving: attempt failed after {latency} ms ({reason:.70}); \
         delivered {:?} after the name came back",
        returned.elapsed()
    );
    drop(back);
    sigkill(&mut child);
}
