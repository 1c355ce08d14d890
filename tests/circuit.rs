//! The real binary with a target that is down: its circuit opens after a few failed attempts
//! (its deliveries stay queued, their retry budgets unspent), an alert goes out through
//! another connector, probes follow the cool-down, and when the target is back the circuit
//! closes, everything queued is delivered and the alert recovers.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_target_opens_its_circuit_alerts_and_gets_everything_when_back() {
    let chat = Receiver::start().await;
    let down_port = free_port();
    let down_url = format!("http://127.0.0.1:{down_port}/hook");
    let ws = Workspace::new();
    let hook = http_connector(
        "hook",
        &down_url,
        &format!(
            "{}\n[connectors.circuit]\nfailures = 3\ncool_down = \"1s\"\nmax_cool_down = \"2s\"\n",
            fast_retry()
        ),
    );
    // The chat connector takes only the gateway's own incidents.
    let chat_connector = http_connector(
        "chat",
        &chat.url("/chat"),
        "[[connectors.matchers]]\nfield = \"/incident_type\"\nequals = \"gateway_alert\"\n",
    );
    let config = ws.config(
        "127.0.0.1:0",
        &format!("{hook}\n{chat_connector}\n[alerts]\nnotify = \"chat\"\nfailing_for = \"1h\"\n"),
    );
    with_delivery(&config, "concurrency = 4");
    let (mut child, base) = spawn_binary(&config);
    for i in 0..10 {
        let r = post_incident(&base, &common::incident(&format!("DOWN-{i}"))).await;
        assert_eq!(r.status(), 202);
    }
    // The circuit opens and the alert goes to chat.
    let alert = chat.wait_for(1, Duration::from_secs(30)).await;
    let alert = alert[0].json();
    assert_eq!(
        alert["incident"]["extra"]["gateway_alert"]["connector"], "hook",
        "{alert}"
    );
    assert_eq!(
        alert["incident"]["extra"]["gateway_alert"]["state"], "failing",
        "{alert}"
    );
    let listed = connectors(&base).await;
    assert_eq!(connector(&listed, "hook")["circuit"], "open", "{listed}");
    assert_eq!(connector(&listed, "hook")["alerting"], true, "{listed}");
    let metrics = admin(reqwest::Method::GET, &base, "/metrics")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("igw_connector_alerting{connector=\"hook\"} 1"),
        "{metrics}"
    );

    // Three seconds open: with a 100 ms retry schedule, ten deliveries would have spent
    // dozens of attempts; the circuit lets only probes through (at 1 s, then every 2 s).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let deliveries: Value = admin(reqwest::Method::GET, &base, "/v1/deliveries?connector=hook")
        .await
        .json()
        .await
        .unwrap();
    let list = deliveries["deliveries"].as_array().unwrap();
    assert_eq!(list.len(), 10);
    assert!(
        list.iter().all(|d| d["status"] == "pending"),
        "none dead: {deliveries}"
    );
    let attempts: u64 = list
        .iter()
        .map(|d| d["attempt_count"].as_u64().unwrap())
        .sum();
    assert!(
        (3..=8).contains(&attempts),
        "3 failures open the circuit, then a probe per cool-down: {attempts} attempts"
    );

    // The target is back: the next probe closes the circuit and everything goes.
    let target = Receiver::start_on(format!("127.0.0.1:{down_port}").parse().unwrap()).await;
    let got = target.wait_for(10, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 10);
    let recovered = chat.wait_for(2, Duration::from_secs(30)).await;
    let recovered = recovered[1].json();
    assert_eq!(
        recovered["incident"]["extra"]["gateway_alert"]["state"], "recovered",
        "{recovered}"
    );
    let listed = connectors(&base).await;
    assert_eq!(connector(&listed, "hook")["circuit"], "closed", "{listed}");
    assert_eq!(connector(&listed, "hook")["alerting"], false, "{listed}");
    let metrics = admin(reqwest::Method::GET, &base, "/metrics")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("igw_connector_circuit_open{connector=\"hook\"} 0"),
        "{metrics}"
    );
    sigkill(&mut child);
}
