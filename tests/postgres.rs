//! What only PostgreSQL has: several gateway processes on one database. Migrations when
//! gateways start together, a schema newer than the binary, the leases of a process that died,
//! and (with real gateway processes) work shared and taken over, one ticket per key across
//! instances, and a replay refused by another instance.

mod common;

use std::time::Duration;

use common::pg::PgDb;
use incident_gateway::model::{AttemptOutcome, now_ms};
use incident_gateway::store::{
    AttemptRecord, Ingested, NewIncident, NextStep, PostgresConfig, Route, Store, StoreError,
};

fn pg_config(url: &str) -> PostgresConfig {
    common::pg::store_config(url, 4)
}

fn incident(id: &str, connector: &str) -> NewIncident {
    NewIncident {
        account_id: None,
        incident_id: id.into(),
        update_time: None,
        body: format!(r#"{{"incidentId":"{id}"}}"#),
        body_hash: id.into(),
        routes: vec![Route {
            connector: connector.into(),
            key: format!("key-{id}"),
            aggregate_for_ms: None,
            sends_updated: true,
            reopen_within_ms: None,
            collect_for_ms: None,
            sla: None,
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_starting_together_migrate_once() {
    let db = PgDb::create();
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let url = db.url.clone();
            tokio::spawn(async move { Store::open_postgres(&pg_config(&url)).await })
        })
        .collect();
    for open in opens {
        open.await.unwrap().unwrap();
    }
    // Each migration (numbered 1, 2, …) applied once, by one of them.
    assert_eq!(
        db.query_i64("SELECT COUNT(*) FROM schema_migrations"),
        i64::from(incident_gateway::store::postgres::SCHEMA_VERSION)
    );
    assert_eq!(
        db.query_i64("SELECT MAX(version)::bigint FROM schema_migrations"),
        i64::from(incident_gateway::store::postgres::SCHEMA_VERSION)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_newer_than_the_binary_is_refused() {
    let db = PgDb::create();
    drop(Store::open_postgres(&pg_config(&db.url)).await.unwrap());
    db.query_i64(
        "WITH added AS (INSERT INTO schema_migrations (version, name) VALUES (999, 'future')
         RETURNING version) SELECT COUNT(*) FROM added",
    );
    let Err(e) = Store::open_postgres(&pg_config(&db.url)).await else {
        panic!("a newer schema was accepted");
    };
    assert!(
        matches!(e, StoreError::SchemaTooNew { found: 999, .. }),
        "{e}"
    );
    let message = e.to_string();
    assert!(
        message.contains("999") && message.contains("newer"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_url_or_an_absent_server_is_an_error_that_names_no_password() {
    let bad = PostgresConfig {
        url: "postgres://gw:s3cret-pw@127.0.0.1:1/none".into(),
        connect_timeout: Duration::from_millis(500),
        ..pg_config("")
    };
    let Err(e) = Store::open_postgres(&bad).await else {
        panic!("connected to nothing");
    };
    assert!(!e.to_string().contains("s3cret-pw"), "{e}");
}

/// A gateway that dies holding leases: another takes them over at its next look (within
/// seconds, not at the leases' expiry), setting aside a tracked connector's `created`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leases_of_a_process_that_died_are_recovered_at_once() {
    let db = PgDb::create();
    let survivor = Store::open_postgres(&pg_config(&db.url)).await.unwrap();
    survivor.recover(vec!["jira".into()]).await.unwrap();
    {
        let dying = Store::open_postgres(&pg_config(&db.url)).await.unwrap();
        for (id, connector) in [("A", "jira"), ("B", "chat")] {
            let stored = dying
                .ingest("src".into(), None, vec![incident(id, connector)])
                .await
                .unwrap();
            assert!(matches!(stored, Ingested::Stored(_)));
        }
        // Leased for an hour, then the process is gone.
        let held = dying.lease_due(10, 3_600_000, vec![]).await.unwrap();
        assert_eq!(held.len(), 2);
    }
    let taken = common::eventually(Duration::from_secs(20), || async {
        let leased = survivor.lease_due(10, 30_000, vec![]).await.unwrap();
        (!leased.is_empty()).then_some(leased)
    })
    .await
    .expect("the dead process's leases were not recovered");
    // chat's delivery is sent again; jira's created may have opened its ticket: set aside.
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].connector, "chat");
    let dead = survivor
        .deliveries(incident_gateway::store::DeliveryFilter {
            status: Some("dead".into()),
            connector: None,
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0]
            .last_error
            .as_deref()
            .unwrap()
            .starts_with("interrupted")
    );
    assert!(
        survivor
            .record_attempt(
                taken[0].id.clone(),
                taken[0].lease_token.clone(),
                AttemptRecord {
                    attempt: 1,
                    started_at_ms: now_ms(),
                    latency_ms: 1,
                    status_code: Some(200),
                    error: None,
                    response_body: None,
                    outcome: AttemptOutcome::Delivered,
                    lookup: None,
                    outcome_unknown: false,
                },
                NextStep::Delivered,
                None,
            )
            .await
            .unwrap()
    );
    assert_eq!(db.query_i64("SELECT COUNT(*) FROM instances"), 1);
}

// ---------------------------------------------------------------------------------------
// Several real gateway processes on one database.

use std::collections::{HashMap, HashSet};
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::*;
use serde_json::Value;

/// A workspace on a PostgreSQL database of its own (whatever IGW_TEST_STORE says), with a
/// receiver and one http connector whose tickets are keyed by the incident's host.
async fn shared_database(extra_config: &str) -> (Receiver, Workspace, std::path::PathBuf) {
    let receiver = Receiver::start().await;
    let ws = Workspace {
        dir: tempfile::tempdir().unwrap(),
        pg: Some(PgDb::create()),
    };
    let connector = http_connector(
        "hook",
        &receiver.url("/hook"),
        &format!("correlation_key = \"{{{{asset_host_name}}}}\"\n{extra_config}"),
    );
    let config = ws.config("127.0.0.1:0", &connector);
    // Several gateways per test, tests side by side: within PostgreSQL's 100 connections.
    let url = ws.storage_url();
    edit(&config, |text| {
        text.replace(
            &format!("url = \"{url}\""),
            &format!("url = \"{url}\"\npool_size = 4"),
        )
    });
    (receiver, ws, config)
}

/// An incident on host `host`.
fn on_host(id: &str, host: &str) -> Value {
    let mut v = common::incident(id);
    v["asset_host_name"] = Value::String(host.into());
    v
}

/// Gateway processes on one config, killed when dropped (a failing test leaves none behind).
struct Gateways(Vec<(Child, String)>);

impl std::ops::Deref for Gateways {
    type Target = Vec<(Child, String)>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Gateways {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Gateways {
    fn drop(&mut self) {
        for (child, _) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn gateways(config: &std::path::Path, n: usize) -> Gateways {
    Gateways((0..n).map(|_| spawn_binary(config)).collect())
}

/// The delivery id and event of each request the receiver got, in arrival order.
fn arrivals(receiver: &Receiver) -> Vec<(String, String)> {
    receiver
        .received()
        .iter()
        .map(|r| {
            let body = r.json();
            (
                body["delivery"]["id"].as_str().unwrap().to_string(),
                body["event"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Checks every ticket's deliveries arrived in the order they were queued (a repeat of the
/// one in flight when a process died is allowed: it arrives right after itself).
fn assert_ticket_order(ws: &Workspace, arrived: &[(String, String)]) {
    let pg = ws.pg.as_ref().unwrap();
    let queued = pg.texts("SELECT order_key || ' ' || delivery_id FROM deliveries ORDER BY seq");
    let mut line_of = HashMap::new();
    let mut expected: HashMap<String, Vec<String>> = HashMap::new();
    for row in queued {
        let (line, id) = row.split_once(' ').unwrap();
        line_of.insert(id.to_string(), line.to_string());
        expected.entry(line.into()).or_default().push(id.into());
    }
    let mut seen: HashMap<String, Vec<String>> = HashMap::new();
    for (id, _) in arrived {
        let line = seen.entry(line_of[id].clone()).or_default();
        if line.last() != Some(id) {
            line.push(id.clone());
        }
    }
    assert_eq!(seen.len(), expected.len(), "every ticket heard of");
    for (line, ids) in &expected {
        assert_eq!(&seen[line], ids, "the deliveries of {line} out of order");
    }
}

/// Three gateways, incidents posted round-robin, one killed (SIGKILL) halfway and not
/// restarted: every accepted incident is delivered, repeats only for what the killed one had
/// in flight, and every ticket's deliveries arrive in order. `IGW_MULTI_INCIDENTS` sets the
/// number (600 here; the acceptance run in the closing note used 10,000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_gateways_share_the_work_and_one_killed_loses_nothing() {
    let total: usize = std::env::var("IGW_MULTI_INCIDENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(600);
    let (receiver, ws, config) = shared_database("").await;
    let mut gws = gateways(&config, 3);
    let bases: Vec<String> = gws.iter().map(|(_, b)| b.clone()).collect();
    let started = std::time::Instant::now();
    let mut accepted = 0usize;
    let mut refused = 0usize;
    let mut killed_at = None;
    for batch in 0..total.div_ceil(20) {
        let alive: Vec<&String> = if killed_at.is_some() {
            bases[1..].iter().collect()
        } else {
            bases.iter().collect()
        };
        let posts: Vec<_> = (0..20)
            .map(|j| batch * 20 + j)
            .filter(|i| *i < total)
            .map(|i| {
                let base = alive[i % alive.len()].clone();
                let body = on_host(&format!("MULTI-{i:05}"), &format!("host-{}", i % 50));
                tokio::spawn(async move { post_incident(&base, &body).await.status().as_u16() })
            })
            .collect();
        for p in posts {
            match p.await.unwrap() {
                202 => accepted += 1,
                _ => refused += 1,
            }
        }
        if killed_at.is_none() && batch * 20 >= total / 2 {
            sigkill(&mut gws[0].0);
            killed_at = Some(accepted);
        }
    }
    let posted_in = started.elapsed();
    let all = common::eventually(Duration::from_secs(120), || async {
        let ids: HashSet<String> = arrivals(&receiver).into_iter().map(|(id, _)| id).collect();
        (ids.len() >= accepted).then_some(())
    })
    .await;
    let delivered_in = started.elapsed();
    let arrived = arrivals(&receiver);
    let distinct: HashSet<&String> = arrived.iter().map(|(id, _)| id).collect();
    let holders = ws.pg.as_ref().unwrap().query_i64(
        "SELECT COUNT(DISTINCT lease_holder) FROM deliveries WHERE status = 'delivered'",
    );
    for (child, _) in &mut gws[1..] {
        sigkill(child);
    }
    eprintln!(
        "{total} posted round-robin to 3 gateways in {posted_in:?}, one killed after {} accepted: \
         {accepted} accepted, {refused} refused; {} distinct deliveries arrived ({} requests, \
         {} repeats) in {delivered_in:?}; delivered by {holders} processes",
        killed_at.unwrap_or(0),
        distinct.len(),
        arrived.len(),
        arrived.len() - distinct.len(),
    );
    assert!(all.is_some(), "{} of {accepted} delivered", distinct.len());
    assert_eq!(
        distinct.len(),
        accepted,
        "one delivery per accepted incident"
    );
    assert_eq!(refused, 0, "the live gateways took every incident");
    assert!(holders >= 2, "the work was shared");
    // Repeats only for what the killed process held (its concurrency at most).
    assert!(arrived.len() - distinct.len() <= 32);
    assert_ticket_order(&ws, &arrived);
}

/// 200 incidents over 10 keys posted at once to three gateways: exactly 10 tickets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_opens_one_ticket_whichever_gateways_take_its_incidents() {
    let (receiver, ws, config) = shared_database("").await;
    let mut gws = gateways(&config, 3);
    // 40 at a time (as many connections as one client may hold on each gateway, and more).
    for wave in 0..5 {
        let posts: Vec<_> = (wave * 40..(wave + 1) * 40)
            .map(|i| {
                let base = gws[i % 3].1.clone();
                let body = on_host(&format!("KEYED-{i:03}"), &format!("host-{}", i % 10));
                tokio::spawn(async move { post_incident(&base, &body).await.status().as_u16() })
            })
            .collect();
        for p in posts {
            assert_eq!(p.await.unwrap(), 202);
        }
    }
    receiver.wait_for(200, Duration::from_secs(60)).await;
    for (child, _) in gws.iter_mut() {
        sigkill(child);
    }
    let arrived = arrivals(&receiver);
    let created = arrived.iter().filter(|(_, e)| e == "created").count();
    let pg = ws.pg.as_ref().unwrap();
    assert_eq!(created, 10, "one created per key");
    assert_eq!(pg.query_i64("SELECT COUNT(*) FROM tickets"), 10);
    assert_ticket_order(&ws, &arrived);
}

/// A signed request replayed to another gateway inside the window is refused there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_request_replayed_to_another_gateway_is_refused() {
    let (_receiver, _ws, config) = shared_database("").await;
    with_sources(
        &config,
        &format!(
            "[[sources]]\nname = \"detector\"\napi_key = \"{SOURCE_KEY}\"\n{}",
            signed_source("signed")
        ),
    );
    let mut gws = gateways(&config, 2);
    let signed = Signed::new("evt_replayed", &common::incident("SIGNED-1"));
    assert_eq!(signed.post(&gws[0].1).await.status(), 202);
    let replay = signed.post(&gws[1].1).await;
    assert_eq!(
        replay.status(),
        401,
        "the replay was taken by the second gateway"
    );
    assert_eq!(signed.post(&gws[0].1).await.status(), 401);
    for (child, _) in gws.iter_mut() {
        sigkill(child);
    }
}

/// A TCP relay to PostgreSQL that can be cut: while down it drops every connection it holds
/// and refuses new ones, which is what a gateway sees of a database that stopped.
struct Cuttable {
    port: u16,
    down: Arc<AtomicBool>,
    cut: Arc<tokio::sync::Notify>,
}

impl Cuttable {
    async fn start(to: std::net::SocketAddr) -> Cuttable {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let down = Arc::new(AtomicBool::new(false));
        let cut = Arc::new(tokio::sync::Notify::new());
        let (d, c) = (down.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if d.load(Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                let cut = c.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.notified() => {}
                    }
                });
            }
        });
        Cuttable { port, down, cut }
    }

    /// Cuts the relay, or with `IGW_OUTAGE_REAL=1` (the long form, run alone) stops the
    /// machine's PostgreSQL itself and starts it again.
    fn set_down(&self, down: bool) {
        if std::env::var("IGW_OUTAGE_REAL").is_ok_and(|v| v == "1") {
            let version = std::fs::read_dir("/etc/postgresql")
                .unwrap()
                .next()
                .unwrap()
                .unwrap()
                .file_name();
            let action = if down { "stop" } else { "start" };
            let status = std::process::Command::new("pg_ctlcluster")
                .arg("--skip-systemctl-redirect")
                .arg(&version)
                .args(["main", action])
                .status()
                .unwrap();
            assert!(status.success(), "pg_ctlcluster {action}");
            return;
        }
        self.down.store(down, Ordering::SeqCst);
        if down {
            self.cut.notify_waiters();
        }
    }
}

/// Points the gateway's config at the workspace's database through a relay the test can cut.
async fn through_relay(ws: &Workspace, config: &std::path::Path) -> Cuttable {
    let relay = Cuttable::start("127.0.0.1:5432".parse().unwrap()).await;
    let db = ws.pg.as_ref().unwrap();
    let via_relay = format!("postgres://postgres@127.0.0.1:{}/{}", relay.port, db.name);
    edit(config, |text| {
        text.replace(
            &format!("url = \"{}\"", db.url),
            &format!("url = \"{via_relay}\"\nconnect_timeout = \"1s\""),
        )
        .replace("pool_size = 4", "")
    });
    relay
}

/// The database goes away while a `created` is at the receiver, so its attempt cannot be
/// recorded when the answer comes: the worker records it once the database is back. The
/// lease is long, so waiting for it to run out would show; and the `created` is sent once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_answered_while_the_database_is_down_is_recorded_when_it_returns() {
    let (receiver, ws, config) = shared_database("").await;
    let relay = through_relay(&ws, &config).await;
    common::with_delivery(&config, "lease = \"10m\"");
    let db = ws.pg.as_ref().unwrap();
    let gw = gateways(&config, 1);
    let base = gw[0].1.clone();
    receiver.script([Reply::status(200).after(Duration::from_secs(2))]);
    let r = post_incident(&base, &on_host("REC-1", "host-r")).await;
    assert_eq!(r.status(), 202);
    receiver.wait_for(1, Duration::from_secs(30)).await;
    relay.set_down(true);
    // The receiver answers during the outage; the record fails at least once.
    tokio::time::sleep(Duration::from_secs(4)).await;
    relay.set_down(false);
    // Ingest answers 503 until its pool reconnects.
    let follow_up = common::eventually(Duration::from_secs(30), || async {
        let r = post_incident(&base, &on_host("REC-2", "host-r")).await;
        (r.status() == 202).then_some(())
    })
    .await;
    assert!(follow_up.is_some(), "the follow-up was accepted");
    let both = receiver.wait_for(2, Duration::from_secs(60)).await;
    let ids: Vec<String> = both
        .iter()
        .map(|r| r.json()["incidentId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        ids,
        ["REC-1", "REC-2"],
        "the created once, then its follow-up"
    );
    assert!(
        common::eventually(Duration::from_secs(30), || async {
            (statuses(db) == ["delivered", "delivered"]).then_some(())
        })
        .await
        .is_some(),
        "both recorded delivered: {:?}",
        statuses(db)
    );
    assert_eq!(
        db.query_i64("SELECT COUNT(*) FROM attempts"),
        2,
        "one attempt each"
    );
}

fn statuses(db: &PgDb) -> Vec<String> {
    db.texts("SELECT status FROM deliveries ORDER BY seq")
}

/// PostgreSQL goes away during a load and comes back: meanwhile ingest answers 503
/// problem+json with Retry-After and /readyz 503; nothing accepted is lost; ingest and
/// delivery resume by themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_database_is_down_ingest_answers_503_and_all_resumes_when_it_returns() {
    let outage = Duration::from_secs(
        std::env::var("IGW_OUTAGE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(4),
    );
    let (receiver, ws, config) = shared_database("").await;
    let relay = through_relay(&ws, &config).await;
    let db = ws.pg.as_ref().unwrap();
    let mut gw = gateways(&config, 1);
    let base = gw[0].1.clone();
    let ready = |base: String| async move {
        client()
            .get(format!("{base}/readyz"))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    assert_eq!(ready(base.clone()).await, 200);

    let mut accepted = Vec::new();
    let mut unavailable = 0;
    let mut other = Vec::new();
    let mut cut_at = None;
    let mut back_at = None;
    let mut first_after = None;
    let mut ready_while_down = None;
    let started = std::time::Instant::now();
    let mut i = 0;
    while started.elapsed() < outage + Duration::from_secs(4) {
        let elapsed = started.elapsed();
        if cut_at.is_none() && elapsed >= Duration::from_secs(1) {
            relay.set_down(true);
            cut_at = Some(std::time::Instant::now());
            tokio::time::sleep(Duration::from_millis(200)).await;
            ready_while_down = Some(ready(base.clone()).await);
        }
        if back_at.is_none() && elapsed >= Duration::from_secs(1) + outage {
            relay.set_down(false);
            back_at = Some(std::time::Instant::now());
        }
        let id = format!("OUT-{i:04}");
        i += 1;
        let r = post_incident(&base, &on_host(&id, &format!("host-{}", i % 5))).await;
        match r.status().as_u16() {
            202 => {
                if back_at.is_some() && first_after.is_none() {
                    first_after = back_at.map(|b| b.elapsed());
                }
                accepted.push(id);
            }
            503 => {
                assert!(r.headers().contains_key("retry-after"));
                assert_eq!(r.headers()["content-type"], "application/problem+json");
                unavailable += 1;
            }
            s => other.push(s),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all = common::eventually(Duration::from_secs(60), || async {
        let got: HashSet<String> = receiver
            .received()
            .iter()
            .map(|r| r.json()["incidentId"].as_str().unwrap().to_string())
            .collect();
        accepted.iter().all(|id| got.contains(id)).then_some(())
    })
    .await;
    let delivered_after = back_at.map(|b| b.elapsed());
    let ready_after = ready(base.clone()).await;
    sigkill(&mut gw[0].0);
    eprintln!(
        "database down for {outage:?}: {} accepted, {unavailable} answered 503, other {other:?}; \
         /readyz while down {ready_while_down:?}, after {ready_after}; first 202 {first_after:?} \
         after it returned; everything accepted delivered {delivered_after:?} after it returned",
        accepted.len()
    );
    assert!(other.is_empty(), "only 202 or 503: {other:?}");
    assert!(unavailable > 0, "the outage was seen");
    assert_eq!(ready_while_down, Some(503));
    assert_eq!(ready_after, 200);
    assert!(first_after.is_some(), "ingest resumed without a restart");
    assert!(all.is_some(), "every accepted incident was delivered");
    // What was answered 503 was not stored.
    assert_eq!(
        db.query_i64("SELECT COUNT(*) FROM incidents") as usize,
        accepted.len()
    );
}
