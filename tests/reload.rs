//! The real binary, operated while it runs: SIGHUP and `POST /v1/admin/reload` put an edited
//! config and templates in force (or refuse them and keep the old); a paused connector keeps
//! its deliveries queued; a connector taken out of the config keeps its queue (orphaned);
//! dead deliveries are replayed in bulk by filter.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

fn hangup(child: &Child) {
    let status = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

async fn admin_json(method: reqwest::Method, base: &str, path: &str, body: Value) -> (u16, Value) {
    let r = client()
        .request(method, format!("{base}{path}"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// A template that stamps each request with `version`.
fn stamped(version: &str) -> String {
    format!(r#"{{"incidentId": {{{{json incidentId}}}}, "template": "{version}"}}"#)
}

/// The incidents of a batch of `n` (ids `<prefix>-0000`…).
fn batch(prefix: &str, n: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|i| common::incident(&format!("{prefix}-{i:04}")))
            .collect(),
    )
}

async fn post_batches(base: &str, prefix: &str, n: usize) {
    for chunk in 0..n / 100 {
        let items = batch(&format!("{prefix}{chunk:02}"), 100);
        let r = post_incident(base, &items).await;
        assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    }
}

fn set_template(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

/// 1,000 deliveries wait behind a paused connector while its template is edited and SIGHUP
/// reloads it: once resumed, every one is sent once, with the new template. An invalid edit
/// then is refused (SIGHUP and the endpoint): the process stays up and the last good
/// template keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_template_is_in_force_after_sighup_and_a_broken_one_is_refused() {
    let receiver = Receiver::start().await;
    let ws = Workspace::new();
    let hook = ws.connector_with_template("hook", &receiver.url("/hook"), &stamped("v1"), "");
    let config = ws.config("127.0.0.1:0", &hook);
    let template = ws.path().join("hook.json.hbs");
    let (mut child, base) = spawn_binary(&config);

    let (status, body) = admin_json(
        reqwest::Method::POST,
        &base,
        "/v1/connectors/hook/pause",
        json!({"reason": "template fix"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let listed = connectors(&base).await;
    assert_eq!(connector(&listed, "hook")["paused"], true);
    assert_eq!(connector(&listed, "hook")["paused_by"], "api");
    assert_eq!(connector(&listed, "hook")["pause_reason"], "template fix");

    post_batches(&base, "RL", 1000).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        receiver.received().is_empty(),
        "a paused connector sends nothing"
    );
    let listed = connectors(&base).await;
    assert_eq!(connector(&listed, "hook")["queue"]["pending"], 1000);

    set_template(&template, &stamped("v2"));
    hangup(&child);
    let reloaded = eventually(Duration::from_secs(10), || async {
        let listed = connectors(&base).await;
        (listed["generation"] == 2).then_some(())
    })
    .await;
    assert!(reloaded.is_some(), "SIGHUP reloaded the config");

    let (status, body) = admin_json(
        reqwest::Method::POST,
        &base,
        "/v1/connectors/hook/resume",
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let got = receiver.wait_for(1000, Duration::from_secs(120)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = if receiver.received().len() > got.len() {
        receiver.received()
    } else {
        got
    };
    let mut seen: HashMap<String, usize> = HashMap::new();
    for r in &got {
        let body = r.json();
        assert_eq!(
            body["template"], "v2",
            "sent after the reload: the new template"
        );
        *seen
            .entry(body["incidentId"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(seen.len(), 1000, "none lost");
    assert!(seen.values().all(|n| *n == 1), "none sent twice");

    // A broken edit: refused by SIGHUP and by the endpoint; the process lives on.
    set_template(&template, "{\"incidentId\": {{json incidentId}");
    hangup(&child);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP never stops the process"
    );
    let (status, problem) =
        admin_json(reqwest::Method::POST, &base, "/v1/admin/reload", json!({})).await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(
        problem["type"]
            .as_str()
            .map(|t| t.ends_with("config-refused")),
        Some(true),
        "{problem}"
    );
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("hook.json.hbs"),
        "{problem}"
    );
    assert_eq!(
        connectors(&base).await["generation"],
        2,
        "the refused one replaced nothing"
    );
    let r = post_incident(&base, &common::incident("AFTER-BROKEN")).await;
    assert_eq!(r.status(), 202);
    let got = receiver.wait_for(1001, Duration::from_secs(30)).await;
    let last = got
        .iter()
        .find(|r| r.json()["incidentId"] == "AFTER-BROKEN")
        .unwrap()
        .json();
    assert_eq!(
        last["template"], "v2",
        "the last good template keeps working"
    );

    let metrics = admin(reqwest::Method::GET, &base, "/metrics")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("igw_config_reloads_total{outcome=\"failed\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("igw_config_reloads_total{outcome=\"ok\"} 1"),
        "{metrics}"
    );
    sigkill(&mut child);
}

/// A connector taken out of the config keeps its queued deliveries (orphaned, not dead) and
/// sends them once a reload brings it back; `paused = true` in the config holds a connector
/// as the API does, and only the config resumes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_connector_keeps_its_queue_until_it_comes_back() {
    let receiver = Receiver::start().await;
    let ws = Workspace::new();
    let hook = ws.connector_with_template(
        "hook",
        &receiver.url("/hook"),
        &stamped("v1"),
        "paused = true",
    );
    let config = ws.config("127.0.0.1:0", &hook);
    let (mut child, base) = spawn_binary(&config);
    for i in 0..5 {
        let r = post_incident(&base, &common::incident(&format!("ORPH-{i}"))).await;
        assert_eq!(r.status(), 202);
    }
    let listed = connectors(&base).await;
    assert_eq!(connector(&listed, "hook")["paused_by"], "config");
    let (status, problem) = admin_json(
        reqwest::Method::POST,
        &base,
        "/v1/connectors/hook/resume",
        json!({}),
    )
    .await;
    assert_eq!(status, 409, "{problem}");

    // Out of the config: its deliveries stay queued, orphaned.
    let full = std::fs::read_to_string(&config).unwrap();
    let head = full.split("[[connectors]]").next().unwrap().to_string();
    std::fs::write(&config, &head).unwrap();
    let (status, body) =
        admin_json(reqwest::Method::POST, &base, "/v1/admin/reload", json!({})).await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let listed = connectors(&base).await;
    let orphan = connector(&listed, "hook");
    assert_eq!(orphan["orphaned"], true, "{listed}");
    assert_eq!(orphan["queue"]["pending"], 5, "{listed}");
    let dead = admin(reqwest::Method::GET, &base, "/v1/deliveries?status=dead").await;
    let dead: Value = dead.json().await.unwrap();
    assert_eq!(
        dead["deliveries"].as_array().unwrap().len(),
        0,
        "none killed: {dead}"
    );

    // Back, unpaused: all five go out.
    std::fs::write(&config, full.replace("paused = true", "")).unwrap();
    hangup(&child);
    let got = receiver.wait_for(5, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 5);
    assert_eq!(
        connector(&connectors(&base).await, "hook")["orphaned"],
        false
    );
    sigkill(&mut child);
}

/// Dead deliveries are replayed in bulk by connector and error class; the answer says how
/// many were queued, and they are then delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_deliveries_are_replayed_in_bulk_by_filter() {
    let receiver = Receiver::start().await;
    let ws = Workspace::new();
    let a = http_connector("a", &receiver.url("/a"), "");
    let b = http_connector("b", &receiver.url("/b"), "");
    let config = ws.config("127.0.0.1:0", &format!("{a}\n{b}"));
    let (mut child, base) = spawn_binary(&config);
    // Every first send is refused with 400: dead at once.
    receiver.script((0..8).map(|_| Reply::status(400)));
    for i in 0..4 {
        let r = post_incident(&base, &common::incident(&format!("BULK-{i}"))).await;
        assert_eq!(r.status(), 202);
    }
    receiver.wait_for(8, Duration::from_secs(30)).await;
    let all_dead = eventually(Duration::from_secs(30), || async {
        let r = admin(reqwest::Method::GET, &base, "/v1/deliveries?status=dead").await;
        let v: Value = r.json().await.unwrap();
        (v["deliveries"].as_array().unwrap().len() == 8).then_some(())
    })
    .await;
    assert!(all_dead.is_some());

    let (status, body) = admin_json(
        reqwest::Method::POST,
        &base,
        "/v1/deliveries/replay",
        json!({"connector": "a", "error_class": "http_5xx"}),
    )
    .await;
    assert_eq!((status, &body["replayed"]), (202, &json!(0)), "{body}");
    let (status, body) = admin_json(
        reqwest::Method::POST,
        &base,
        "/v1/deliveries/replay",
        json!({"connector": "a", "error_class": "http_4xx", "since": "2000-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!((status, &body["replayed"]), (202, &json!(4)), "{body}");
    let got = receiver.wait_for(12, Duration::from_secs(30)).await;
    assert_eq!(got.iter().filter(|r| r.path == "/a").count(), 8);

    let (status, problem) = admin_json(
        reqwest::Method::POST,
        &base,
        "/v1/deliveries/replay",
        json!({"error_class": "teapot"}),
    )
    .await;
    assert_eq!(status, 422, "{problem}");
    let (status, problem) = admin_json(
        reqwest::Method::POST,
        &base,
        "/v1/deliveries/replay",
        json!({"since": "yesterday"}),
    )
    .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["pointer"], "#/since", "{problem}");
    sigkill(&mut child);
}

/// With `[reload] watch`, an edited template is in force without a signal; an edit that does
/// not load is refused once and the old one stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_template_is_reloaded_when_it_changes() {
    let receiver = Receiver::start().await;
    let ws = Workspace::new();
    let hook = ws.connector_with_template("hook", &receiver.url("/hook"), &stamped("v1"), "");
    let config = ws.config(
        "127.0.0.1:0",
        &format!("{hook}\n[reload]\nwatch = true\ninterval = \"200ms\"\n"),
    );
    let template = ws.path().join("hook.json.hbs");
    let (mut child, base) = spawn_binary(&config);
    assert_eq!(
        post_incident(&base, &common::incident("W-1"))
            .await
            .status(),
        202
    );
    receiver.wait_for(1, Duration::from_secs(30)).await;

    set_template(&template, "{\"incidentId\": {{json incidentId}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        connectors(&base).await["generation"],
        1,
        "a broken edit is refused"
    );
    set_template(&template, &stamped("v2"));
    let reloaded = eventually(Duration::from_secs(10), || async {
        (connectors(&base).await["generation"] == 2).then_some(())
    })
    .await;
    assert!(reloaded.is_some(), "the fixed edit was loaded");
    assert_eq!(
        post_incident(&base, &common::incident("W-2"))
            .await
            .status(),
        202
    );
    let got = receiver.wait_for(2, Duration::from_secs(30)).await;
    assert_eq!(got[0].json()["template"], "v1");
    assert_eq!(got[1].json()["template"], "v2");
    let metrics = admin(reqwest::Method::GET, &base, "/metrics")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("igw_config_reloads_total{outcome=\"failed\"} 1"),
        "{metrics}"
    );
    sigkill(&mut child);
}
