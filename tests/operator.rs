//! The operator commands (`deliveries`, `incidents`) against a real running gateway, as an
//! admin runs them in a terminal: the admin API's URL and token from the environment.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::*;

fn operator(base: &str, token: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_incident-gateway"));
    cmd.args(args)
        .env("IGW_ADMIN_URL", base)
        .env_remove("IGW_ADMIN_TOKEN");
    if let Some(t) = token {
        cmd.env("IGW_ADMIN_TOKEN", t);
    }
    cmd.output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_lists_shows_and_replays_dead_deliveries_from_the_terminal() {
    let receiver = Receiver::start().await;
    let ws = Workspace::new();
    let config = ws.config(
        "127.0.0.1:0",
        &http_connector("hook", &receiver.url("/hook"), ""),
    );
    let (mut child, base) = spawn_binary(&config);
    receiver.script((0..3).map(|_| Reply::status(400)));
    for i in 0..3 {
        let r = post_incident(&base, &common::incident(&format!("OPS-{i}"))).await;
        assert_eq!(r.status(), 202);
    }
    let dead = eventually(Duration::from_secs(30), || async {
        let o = operator(
            &base,
            Some(ADMIN_TOKEN),
            &["deliveries", "list", "--status", "dead"],
        );
        stdout(&o).contains("3 deliveries").then_some(o)
    })
    .await
    .expect("three dead deliveries listed");
    let table = stdout(&dead);
    assert!(table.starts_with("ID"), "{table}");
    for i in 0..3 {
        assert!(table.contains(&format!("OPS-{i}")), "{table}");
    }
    assert!(
        table.contains("HTTP 400") || table.contains("400"),
        "{table}"
    );
    let id = table
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();

    let shown = operator(&base, Some(ADMIN_TOKEN), &["deliveries", "show", &id]);
    assert!(shown.status.success(), "{}", stderr(&shown));
    let view: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(view["id"], id.as_str());
    assert_eq!(view["attempts"].as_array().unwrap().len(), 1);

    let listed = operator(
        &base,
        Some(ADMIN_TOKEN),
        &["incidents", "list", "--status", "open", "--limit", "2"],
    );
    assert!(listed.status.success(), "{}", stderr(&listed));
    let listing = stdout(&listed);
    assert!(listing.starts_with("INCIDENT"), "{listing}");
    assert!(
        listing.ends_with("2 incidents\n"),
        "a page of two: {listing}"
    );
    let all = operator(&base, Some(ADMIN_TOKEN), &["incidents", "list", "--json"]);
    let all: serde_json::Value = serde_json::from_slice(&all.stdout).unwrap();
    let mut ids: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["incidentId"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, ["OPS-0", "OPS-1", "OPS-2"]);

    let incident = operator(&base, Some(ADMIN_TOKEN), &["incidents", "show", "OPS-0"]);
    assert!(incident.status.success(), "{}", stderr(&incident));
    let view: serde_json::Value = serde_json::from_slice(&incident.stdout).unwrap();
    assert_eq!(view["incidentId"], "OPS-0", "{view}");

    // Bulk: every dead one of the connector, with a summary.
    let replayed = operator(
        &base,
        Some(ADMIN_TOKEN),
        &["deliveries", "replay", "--dead", "--connector", "hook"],
    );
    assert!(replayed.status.success(), "{}", stderr(&replayed));
    assert!(
        stdout(&replayed).starts_with("replayed 3 dead deliveries (connector=hook, until="),
        "{}",
        stdout(&replayed)
    );
    receiver.wait_for(6, Duration::from_secs(30)).await;

    // One by one: a delivered one is not dead, and says so.
    let again = operator(&base, Some(ADMIN_TOKEN), &["deliveries", "replay", &id]);
    assert!(again.status.success());
    assert!(
        stdout(&again).contains("not replayed (409"),
        "{}",
        stdout(&again)
    );
    assert!(
        stdout(&again).ends_with("0 replayed, 1 not\n"),
        "{}",
        stdout(&again)
    );

    // Without the token, or with a wrong one: a clear error, non-zero, the token not echoed.
    let none = operator(&base, None, &["deliveries", "list"]);
    assert!(!none.status.success());
    assert!(
        stderr(&none).contains("IGW_ADMIN_TOKEN"),
        "{}",
        stderr(&none)
    );
    let wrong = operator(&base, Some("not-the-token-123456"), &["deliveries", "list"]);
    assert!(!wrong.status.success());
    assert!(
        stderr(&wrong).contains("admin token was refused"),
        "{}",
        stderr(&wrong)
    );
    assert!(!stderr(&wrong).contains("not-the-token-123456"));
    let unknown = operator(
        &base,
        Some(ADMIN_TOKEN),
        &["deliveries", "show", "msg_nope"],
    );
    assert!(!unknown.status.success());
    assert!(stderr(&unknown).contains("404"), "{}", stderr(&unknown));
    sigkill(&mut child);
}
