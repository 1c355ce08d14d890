//! `GET /metrics` of the real binary after it has delivered, retried and dead-lettered:
//! the per-connector and per-source series hold what happened, and `promtool check metrics`
//! (Prometheus' own linter) accepts the text.

mod common;

use std::io::Write as _;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

/// Three connectors: `hook` fails once then delivers, `refuser` answers 400 (dead at once),
/// `held` is paused (its delivery stays pending). One incident accepted, then sent again
/// (a duplicate), then one refused as invalid.
async fn gateway_with_history() -> (Child, String, Receiver, Receiver) {
    let hook = Receiver::start().await;
    hook.script([Reply::status(500)]);
    let refuser = Receiver::start().await;
    refuser.script([Reply::status(400)]);
    let ws = Workspace::new();
    let connectors = [
        http_connector("hook", &hook.url("/hook"), fast_retry()),
        http_connector("refuser", &refuser.url("/refuser"), ""),
        http_connector("held", &hook.url("/held"), "paused = true"),
    ]
    .concat();
    let config = ws.config("127.0.0.1:0", &connectors);
    let (child, base) = spawn_binary(&config);
    // The workspace must outlive the gateway (it holds the database); leak it for the test.
    std::mem::forget(ws);
    assert_eq!(post_incident(&base, &incident("MET-1")).await.status(), 202);
    assert_eq!(post_incident(&base, &incident("MET-1")).await.status(), 202);
    let invalid = post_incident(&base, &serde_json::json!({"not": "an incident"})).await;
    assert_eq!(invalid.status(), 422);
    hook.wait_for(2, Duration::from_secs(30)).await;
    refuser.wait_for(1, Duration::from_secs(30)).await;
    (child, base, hook, refuser)
}

async fn scrape(base: &str) -> String {
    let r = admin(reqwest::Method::GET, base, "/metrics").await;
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

/// `/metrics` once every line in `want` is in it (attempts are recorded, and the queue read,
/// a moment after the receiver has seen them).
async fn scrape_when(base: &str, want: &[&str]) -> String {
    let found = eventually(Duration::from_secs(20), || async {
        let text = scrape(base).await;
        want.iter()
            .all(|line| text.lines().any(|l| l == *line))
            .then_some(text)
    })
    .await;
    match found {
        Some(text) => text,
        None => panic!(
            "some of {want:#?} never appeared in /metrics:\n{}",
            scrape(base).await
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_connector_and_per_source_series_count_what_happened() {
    let (mut child, base, _hook, _refuser) = gateway_with_history().await;
    let text = scrape_when(
        &base,
        &[
            r#"igw_connector_deliveries_total{connector="hook",outcome="delivered"} 1"#,
            r#"igw_connector_deliveries_total{connector="hook",outcome="retry"} 1"#,
            r#"igw_connector_deliveries_total{connector="hook",outcome="dead"} 0"#,
            r#"igw_connector_deliveries_total{connector="refuser",outcome="dead"} 1"#,
            r#"igw_connector_deliveries_total{connector="refuser",outcome="delivered"} 0"#,
            r#"igw_connector_deliveries_total{connector="held",outcome="delivered"} 0"#,
            r#"igw_connector_attempt_duration_seconds_count{connector="hook"} 2"#,
            r#"igw_connector_attempt_duration_seconds_bucket{connector="hook",le="+Inf"} 2"#,
            r#"igw_connector_attempt_duration_seconds_count{connector="refuser"} 1"#,
            r#"igw_connector_pending_deliveries{connector="held"} 1"#,
            r#"igw_connector_pending_deliveries{connector="hook"} 0"#,
            r#"igw_connector_dead_deliveries{connector="refuser"} 1"#,
            r#"igw_connector_dead_deliveries{connector="hook"} 0"#,
            r#"igw_connector_paused{connector="held"} 1"#,
            r#"igw_connector_paused{connector="hook"} 0"#,
            r#"igw_connector_circuit_open{connector="hook"} 0"#,
            r#"igw_incidents_total{source="detector",outcome="accepted"} 1"#,
            r#"igw_incidents_total{source="detector",outcome="duplicate"} 1"#,
            r#"igw_incidents_total{source="detector",outcome="rejected"} 1"#,
            r#"igw_config_reloads_total{outcome="ok"} 0"#,
        ],
    )
    .await;
    let build = format!(
        r#"igw_build_info{{version="{}",name="incident-gateway"}} 1"#,
        env!("CARGO_PKG_VERSION")
    );
    assert!(text.lines().any(|l| l == build), "{text}");
    // The held delivery is due (paused, not scheduled later), so it has an age.
    let age: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix(r#"igw_connector_oldest_due_age_seconds{connector="held"} "#))
        .unwrap()
        .parse()
        .unwrap();
    assert!(age >= 0.0, "{text}");
    assert!(
        text.lines()
            .any(|l| l == r#"igw_connector_oldest_due_age_seconds{connector="hook"} 0.000"#),
        "nothing due for hook: {text}"
    );
    sigkill(&mut child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_the_metrics_text() {
    if Command::new("promtool").arg("--version").output().is_err() {
        let in_ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false");
        assert!(
            !in_ci,
            "promtool is required in CI (Debian package `prometheus`; scripts/test installs it)"
        );
        eprintln!(
            "\n!!!!! SKIPPED promtool_accepts_the_metrics_text: promtool is not installed \
             (apt-get install prometheus, or run scripts/test) !!!!!\n"
        );
        return;
    }
    let (mut child, base, _hook, _refuser) = gateway_with_history().await;
    let text = scrape_when(
        &base,
        &[
            r#"igw_connector_deliveries_total{connector="hook",outcome="delivered"} 1"#,
            r#"igw_connector_deliveries_total{connector="refuser",outcome="dead"} 1"#,
            r#"igw_connector_pending_deliveries{connector="held"} 1"#,
        ],
    )
    .await;
    sigkill(&mut child);
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics refused /metrics:\n{}{}\n--- the text ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
