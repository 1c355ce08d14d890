//! The real binary: a 202 survives `kill -9`, and SIGTERM shuts down cleanly.

mod common;

use std::collections::HashSet;
use std::process::{Child, Command, ExitStatus};
use std::time::Duration;

use common::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_incidents_survive_sigkill_and_are_all_delivered() {
    const N: usize = 1000;
    // The receiver's port is chosen now but nothing listens there yet: it is "down".
    let receiver_port = free_port();
    let receiver_url = format!("http://127.0.0.1:{receiver_port}/hook");
    let ws = Workspace::new();
    let config = ws.config(
        "127.0.0.1:0",
        &http_connector("ticketing", &receiver_url, fast_retry()),
    );
    let (mut child, base) = spawn_binary(&config);

    // 1,000 single-incident POSTs, 16 at a time, each answered 202.
    let client = client();
    let started = std::time::Instant::now();
    let mut ids = Vec::with_capacity(N);
    let mut accepted_delivery_ids = HashSet::new();
    for chunk in (0..N).collect::<Vec<_>>().chunks(16) {
        let mut tasks = Vec::new();
        for &i in chunk {
            let client = client.clone();
            let base = base.clone();
            let id = format!("KILL-{i:04}");
            ids.push(id.clone());
            tasks.push(tokio::spawn(async move {
                let url = format!("{base}/v1/incidents");
                let r = post_incident_via(&client, &url, &incident(&id)).await;
                assert_eq!(r.status(), 202);
                let v: Value = r.json().await.unwrap();
                first_delivery(&v)
            }));
        }
        for t in tasks {
            accepted_delivery_ids.insert(t.await.unwrap());
        }
    }
    assert_eq!(accepted_delivery_ids.len(), N);
    eprintln!(
        "accepted {N} incidents (16 concurrent POSTs) in {:?}",
        started.elapsed()
    );

    sigkill(&mut child);

    let (incidents, _, deliveries, _) = ws.counts();
    assert_eq!(incidents as usize, N, "every accepted incident is on disk");
    assert_eq!(deliveries as usize, N);

    // Restart, then bring the receiver up.
    let (mut child, _base) = spawn_binary(&config);
    let receiver = Receiver::start_on(format!("127.0.0.1:{receiver_port}").parse().unwrap()).await;
    let restarted = std::time::Instant::now();
    let webhook_ids = || -> HashSet<String> {
        receiver
            .received()
            .iter()
            .filter_map(|r| r.header("webhook-id"))
            .collect()
    };
    let seen = eventually(Duration::from_secs(120), || {
        let ids = webhook_ids();
        async move { (ids.len() >= N).then_some(ids) }
    })
    .await
    .unwrap_or_else(webhook_ids);
    eprintln!(
        "after restart: {} distinct webhook-ids in {:?} ({} requests in all)",
        seen.len(),
        restarted.elapsed(),
        receiver.received().len()
    );
    assert_eq!(
        seen.len(),
        N,
        "every accepted delivery reached the receiver after the crash"
    );
    assert_eq!(
        seen, accepted_delivery_ids,
        "each under the id the 202 named"
    );
    let received: HashSet<String> = receiver
        .received()
        .iter()
        .map(|r| r.json()["incidentId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(received, ids.into_iter().collect::<HashSet<_>>());
    let delivered = eventually(Duration::from_secs(10), || async {
        let s = ws.statuses();
        s.iter().all(|st| st == "delivered").then_some(s.len())
    })
    .await;
    assert_eq!(delivered, Some(N));
    sigkill(&mut child);
}

/// Sends SIGTERM to `child` and waits for it to exit.
async fn terminate(mut child: Child) -> ExitStatus {
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn sigterm_lets_a_slow_send_finish_and_exits_zero() {
    let (receiver, ws, config) = receiver_and_config("ticketing", "/hook", "").await;
    receiver.script([Reply::status(200).after(Duration::from_millis(1500))]);
    let (child, base) = spawn_binary(&config);
    assert_eq!(
        post_incident(&base, &incident("TERM-1")).await.status(),
        202
    );
    // The send is under way (the receiver holds it for 1.5 s) when SIGTERM arrives.
    receiver.wait_for(1, Duration::from_secs(10)).await;
    let exit = terminate(child).await;
    assert!(exit.success(), "{exit:?}");
    assert_eq!(
        ws.statuses(),
        ["delivered"],
        "the in-flight send finished and was recorded before exit"
    );
}

#[tokio::test]
async fn slow_clients_are_cut_off_and_cannot_hold_shutdown() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ws = Workspace::new();
    let config = ws.config("127.0.0.1:0", "");
    with_server(
        &config,
        "header_read_timeout = \"1s\"\nbody_read_timeout = \"1s\"",
    );
    with_shutdown_grace(&config, "2s");
    let (child, base) = spawn_binary(&config);
    let addr = base.trim_start_matches("http://").to_string();

    // Headers that never end: the server closes the connection.
    let mut slow_headers = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow_headers
        .write_all(b"POST /v1/incidents HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read =
        tokio::time::timeout(Duration::from_secs(10), slow_headers.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "the server closed a connection whose headers never ended"
    );

    // A body that never arrives: 408 problem+json.
    let mut slow_body = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/incidents HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {SOURCE_KEY}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"incidentId\":"
    );
    slow_body.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), slow_body.read(&mut answer))
        .await
        .expect("answered")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).to_string();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");

    // A client stalled mid-body while SIGTERM arrives does not keep the process alive.
    let mut stalled = tokio::net::TcpStream::connect(&addr).await.unwrap();
    stalled.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let term_at = std::time::Instant::now();
    let exit = terminate(child).await;
    eprintln!(
        "exited {:?} after SIGTERM with a stalled client",
        term_at.elapsed()
    );
    assert!(exit.success(), "{exit:?}");
    let (incidents, ..) = ws.counts();
    assert_eq!(incidents, 0, "nothing half-sent was stored");
    drop(stalled);
}
