//! Ingress hardening: a captured signed request stays refused after a restart, an older
//! version never replaces a newer one, what the headers alone can refuse is refused before
//! the body is read, and bodies in flight share one byte budget.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A receiver, and a gateway config with a signature-only source and one HTTP connector to
/// the receiver (which sends `updated`); `extra_server` is added to `[server]`.
async fn signed_setup(extra_server: &str) -> (Receiver, Workspace, PathBuf) {
    let (receiver, ws, config) = receiver_and_config("ticketing", "/hook", "").await;
    with_server(&config, extra_server);
    with_shutdown_grace(&config, "2s");
    with_sources(&config, &signed_source("signed"));
    (receiver, ws, config)
}

fn with_update_time(id: &str, update_time: Option<i64>, summary: &str) -> Value {
    let mut v = incident(id);
    match update_time {
        Some(t) => v["updateTime"] = json!(t),
        None => {
            v.as_object_mut().unwrap().remove("updateTime");
        }
    }
    v["incident"]["summary"] = json!(summary);
    v
}

/// `incident:event` of every delivery, oldest first.
fn deliveries(ws: &Workspace) -> Vec<String> {
    ws.texts("SELECT incident_id || ':' || event FROM deliveries ORDER BY seq")
}

async fn stored_incident(base: &str, id: &str) -> Value {
    let (status, view) = admin_get(base, &format!("/v1/incidents/{id}")).await;
    assert_eq!(status, 200, "{view}");
    view["incident"].clone()
}

/// Writes the request head and the first `sent` bytes of a body of `length` bytes in one
/// write, sends nothing more, and returns the status line the server answers within
/// `within` (`None`: no answer in time, i.e. the server waits for the body).
async fn post_partially(
    addr: std::net::SocketAddr,
    from: &str,
    headers: &[(String, String)],
    body: &[u8],
    sent: usize,
    within: Duration,
) -> (Option<String>, TcpStream) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let mut head = format!(
        "POST /v1/incidents HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut first = head.into_bytes();
    first.extend_from_slice(&body[..sent]);
    stream.write_all(&first).await.unwrap();
    let status = tokio::time::timeout(within, read_status(&mut stream))
        .await
        .ok()
        .flatten();
    (status, stream)
}

/// A body of max_body_bytes (16 KiB): the incident `id`, padded.
fn slow_body(id: &str) -> Vec<u8> {
    let mut body = incident(id).to_string().into_bytes();
    body.resize(16384, b' ');
    body
}

/// Sends half of `slow_body(id)` from `from`, with the source's key (see `post_partially`).
async fn half_sent(
    addr: std::net::SocketAddr,
    from: &str,
    id: &str,
    within: Duration,
) -> (Option<String>, TcpStream) {
    let bearer = [("authorization".to_string(), format!("Bearer {SOURCE_KEY}"))];
    post_partially(addr, from, &bearer, &slow_body(id), 8192, within).await
}

/// Reads a response head and returns its status line (and, for a caller that wants them,
/// the head is consumed).
async fn read_status(stream: &mut TcpStream) -> Option<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&got).to_string();
    text.lines()
        .next()
        .filter(|l| l.starts_with("HTTP/"))
        .map(str::to_string)
}

#[tokio::test]
async fn a_captured_signed_request_is_refused_after_a_restart() {
    let (_receiver, ws, config) = signed_setup("").await;
    let (gw, base) = start_gateway(&config).await;
    let v1 = Signed::new("evt_v1", &with_update_time("RE-1", Some(100), "first"));
    let v2 = Signed::new("evt_v2", &with_update_time("RE-1", Some(200), "second"));
    assert_eq!(v1.post(&base).await.status(), 202);
    assert_eq!(v2.post(&base).await.status(), 202);
    assert_eq!(deliveries(&ws), ["RE-1:created", "RE-1:updated"]);
    let before = ws.counts();
    gw.stop().await.unwrap();

    // A new process on the same file and config: nothing in memory, still no replay.
    let (gw, base) = start_gateway(&config).await;
    assert_eq!(
        v1.post(&base).await.status(),
        401,
        "the older version replayed"
    );
    assert_eq!(
        v2.post(&base).await.status(),
        401,
        "the newer version replayed"
    );
    // Refused from its headers: the server answers with most of the body never sent.
    let body = v1.body.as_bytes();
    let (status, _held) = post_partially(
        gw.addr,
        "127.0.0.1",
        &v1.headers(),
        body,
        16,
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(
        status.as_deref(),
        Some("HTTP/1.1 401 Unauthorized"),
        "a replay is refused before its body is read"
    );

    let (incidents, versions, delivery_rows, _) = ws.counts();
    assert_eq!(
        (incidents, versions, delivery_rows),
        (before.0, before.1, before.2),
        "nothing new stored"
    );
    assert_eq!(
        deliveries(&ws),
        ["RE-1:created", "RE-1:updated"],
        "no updated queued"
    );
    let stored = stored_incident(&base, "RE-1").await;
    assert_eq!(stored["updateTime"], 200);
    assert_eq!(stored["incident"]["summary"], "second");
    // A new request from the same source still gets in.
    let v3 = Signed::new("evt_v3", &with_update_time("RE-1", Some(300), "third"));
    assert_eq!(v3.post(&base).await.status(), 202);
    gw.stop().await.unwrap();
}

/// Posts each version of incident `id` in turn — (updateTime, summary, the status it must get,
/// how many deliveries it must queue) — each accepted (202).
async fn post_versions(base: &str, id: &str, versions: &[(Option<i64>, &str, &str, usize)]) {
    for &(update_time, summary, status, queued) in versions {
        let r = accepted(base, &with_update_time(id, update_time, summary)).await;
        let got = (
            r["status"].as_str().unwrap(),
            r["deliveries"].as_array().unwrap().len(),
        );
        assert_eq!(got, (status, queued), "{id} {update_time:?} {summary}");
    }
}

#[tokio::test]
async fn an_older_version_never_replaces_a_newer_one() {
    let (_receiver, ws, gw, base) = receiver_and_gateway("ticketing", "/hook", "").await;
    // With times: only a greater one replaces; an older one, or one without, is not applied.
    post_versions(
        &base,
        "ORD-1",
        &[
            (Some(200), "v2", "accepted", 1),
            (Some(100), "v1", "duplicate", 0),
            // A version without updateTime after one with it.
            (None, "untimed", "duplicate", 0),
        ],
    )
    .await;
    let stored = stored_incident(&base, "ORD-1").await;
    assert_eq!(stored["updateTime"], 200);
    assert_eq!(stored["incident"]["summary"], "v2");
    post_versions(&base, "ORD-1", &[(Some(201), "v3", "updated", 1)]).await;

    // Without times: arrival order; the first time given is newer than none.
    post_versions(
        &base,
        "ORD-2",
        &[
            (None, "a", "accepted", 1),
            (None, "a", "duplicate", 0),
            (None, "b", "updated", 1),
            (Some(50), "c", "updated", 1),
            (None, "d", "duplicate", 0),
        ],
    )
    .await;
    assert_eq!(
        stored_incident(&base, "ORD-2").await["incident"]["summary"],
        "c"
    );

    // Without times, a version seen before is an older one coming late: not applied.
    for (summary, expected) in [("a", "accepted"), ("b", "updated"), ("a", "duplicate")] {
        let r = accepted(&base, &with_update_time("ORD-3", None, summary)).await;
        assert_eq!(r["status"], expected, "ORD-3 {summary}");
    }
    assert_eq!(
        stored_incident(&base, "ORD-3").await["incident"]["summary"],
        "b"
    );

    assert_eq!(
        deliveries(&ws),
        [
            "ORD-1:created",
            "ORD-1:updated",
            "ORD-2:created",
            "ORD-2:updated",
            "ORD-2:updated",
            "ORD-3:created",
            "ORD-3:updated"
        ]
    );
    gw.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_copies_after_a_restart_get_one_202() {
    let (_receiver, ws, config) = signed_setup("").await;
    let (gw, base) = start_gateway(&config).await;
    let old = Signed::new("evt_old", &with_update_time("CC-1", Some(100), "old"));
    assert_eq!(old.post(&base).await.status(), 202);
    gw.stop().await.unwrap();

    let (gw, base) = start_gateway(&config).await;
    let fresh = Signed::new("evt_fresh", &with_update_time("CC-2", Some(100), "fresh"));
    let copies: Vec<_> = (0..16)
        .map(|i| {
            let (base, request) = (
                base.clone(),
                if i % 2 == 0 {
                    old.clone()
                } else {
                    fresh.clone()
                },
            );
            tokio::spawn(async move {
                let status = request.post(&base).await.status().as_u16();
                (request.id.clone(), status)
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for c in copies {
        statuses.push(c.await.unwrap());
    }
    let accepted = |id: &str| {
        statuses
            .iter()
            .filter(|(i, s)| i == id && *s == 202)
            .count()
    };
    assert_eq!(accepted("evt_old"), 0, "{statuses:?}");
    assert_eq!(accepted("evt_fresh"), 1, "{statuses:?}");
    assert_eq!(
        statuses.iter().filter(|(_, s)| *s == 401).count(),
        15,
        "{statuses:?}"
    );
    assert_eq!(deliveries(&ws), ["CC-1:created", "CC-2:created"]);
    gw.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_bodies_are_refused_before_they_are_read() {
    // A body slower than this would be a 408; the refusals must come long before. The 140
    // senders below all come from 127.0.0.1: lift the per-client connection limit (64).
    let (_receiver, ws, config) =
        signed_setup("body_read_timeout = \"30s\"\nmax_connections_per_client = 1024\n").await;
    let (gw, base) = start_gateway(&config).await;
    let used = Signed::new("evt_used", &incident("UN-1"));
    assert_eq!(used.post(&base).await.status(), 202);

    let body = vec![b' '; 1_000_000];
    let now = now();
    let good_sig = sign(INBOUND_SECRET, "evt_x", now, "{}");
    let h = |pairs: &[(&str, String)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    };
    let kinds: Vec<(&str, Vec<(String, String)>)> = vec![
        ("no credential", vec![]),
        (
            "a wrong bearer key",
            h(&[("authorization", "Bearer not-a-key-0123456789".into())]),
        ),
        (
            "a stale timestamp",
            h(&[
                ("webhook-id", "evt_stale".into()),
                ("webhook-timestamp", (now - 400).to_string()),
                ("webhook-signature", good_sig.clone()),
            ]),
        ),
        (
            "a timestamp that is no number",
            h(&[
                ("webhook-id", "evt_nan".into()),
                ("webhook-timestamp", "soon".into()),
                ("webhook-signature", good_sig.clone()),
            ]),
        ),
        (
            "a malformed signature",
            h(&[
                ("webhook-id", "evt_bad".into()),
                ("webhook-timestamp", now.to_string()),
                ("webhook-signature", "v1,bm90LWEtbWFj".into()),
            ]),
        ),
        (
            "no webhook-id",
            h(&[
                ("webhook-timestamp", now.to_string()),
                ("webhook-signature", good_sig.clone()),
            ]),
        ),
        ("an id already used", used.headers()),
    ];
    // Many at once, each with 1 KB of its 1 MB body sent: every one is answered 401 without
    // the server waiting for the rest.
    let mut tasks = Vec::new();
    for i in 0..140 {
        let (what, headers) = kinds[i % kinds.len()].clone();
        let body = body.clone();
        let addr = gw.addr;
        tasks.push(tokio::spawn(async move {
            let (status, _stream) = post_partially(
                addr,
                "127.0.0.1",
                &headers,
                &body,
                1024,
                Duration::from_secs(5),
            )
            .await;
            (what, status)
        }));
    }
    for t in tasks {
        let (what, status) = t.await.unwrap();
        assert_eq!(
            status.as_deref(),
            Some("HTTP/1.1 401 Unauthorized"),
            "{what}: refused before the body"
        );
    }
    let (incidents, ..) = ws.counts();
    assert_eq!(incidents, 1);
    // A correct request is still read and accepted.
    let ok = Signed::new("evt_ok", &incident("UN-2"));
    assert_eq!(ok.post(&base).await.status(), 202);
    gw.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_in_flight_share_one_budget() {
    let (_receiver, ws, config) = receiver_and_config("ticketing", "/hook", "").await;
    with_server(
        &config,
        "max_body_bytes = 16384\nmax_body_bytes_in_flight = 49152\nbody_read_timeout = \"30s\"",
    );
    let (gw, base) = start_gateway(&config).await;
    let waited = Duration::from_millis(300);

    // Three slow senders, from three addresses (one may hold a quarter of the budget, or one
    // body), each with a body of max_body_bytes half sent: the whole budget.
    let mut slow = Vec::new();
    for i in 0..3 {
        let id = format!("SLOW-{i}");
        // The pause lets the server take each one's reservation before the probes below.
        let from = format!("127.0.0.{}", 2 + i);
        let (status, stream) = half_sent(gw.addr, &from, &id, waited).await;
        assert_eq!(status, None, "a slow body is waited for");
        slow.push((stream, slow_body(&id)));
    }
    // Once the server holds them, any further body is refused at once.
    let probe = |i: usize| {
        let base = base.clone();
        async move {
            let r = post_incident(&base, &incident(&format!("PROBE-{i}"))).await;
            let status = r.status().as_u16();
            let retry_after = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            let content_type = r
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_string());
            (status, retry_after, content_type)
        }
    };
    let mut n = 0;
    let full = eventually(Duration::from_secs(5), || {
        n += 1;
        let p = probe(n);
        async move { Some(p.await).filter(|(s, ..)| *s == 503) }
    })
    .await;
    let (_, retry_after, content_type) = full.expect("a body beyond the budget gets 503");
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert_eq!(content_type.as_deref(), Some("application/problem+json"));
    let more: Vec<_> = (0..4).map(|i| tokio::spawn(probe(100 + i))).collect();
    for m in more {
        assert_eq!(m.await.unwrap().0, 503);
    }

    // The slow ones, within the budget, finish and are accepted.
    for (stream, body) in &mut slow {
        stream.write_all(&body[8192..]).await.unwrap();
    }
    for (stream, _) in &mut slow {
        let status = tokio::time::timeout(Duration::from_secs(10), read_status(stream))
            .await
            .unwrap();
        assert_eq!(status.as_deref(), Some("HTTP/1.1 202 Accepted"));
    }
    // And the budget is whole again.
    assert_eq!(probe(1000).await.0, 202);
    // One address cannot hold more than its share, though the budget has room.
    let (status, _held) = half_sent(gw.addr, "127.0.0.5", "SHARE-1", waited).await;
    assert_eq!(
        status, None,
        "the first slow body of an address is waited for"
    );
    let (status, _) = half_sent(gw.addr, "127.0.0.5", "SHARE-2", Duration::from_secs(5)).await;
    assert_eq!(status.as_deref(), Some("HTTP/1.1 503 Service Unavailable"));
    let (status, _other) = half_sent(gw.addr, "127.0.0.6", "SHARE-3", waited).await;
    assert_eq!(status, None, "another address still gets its share");
    let slow_stored: i64 = ws
        .store()
        .query_row(
            "SELECT COUNT(*) FROM incidents WHERE incident_id LIKE 'SLOW-%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(slow_stored, 3);
    gw.stop().await.unwrap();
}
