//! The SLA watchdog (issue 16, item 2), through the real server, store and an in-test
//! receiver. The clock is injected: the tests call the watchdog's pass
//! (`watchdog::check_due`) and a status report (`watchdog::report`) with the time they
//! choose, never sleeping for an SLA to run out. The gateway's own watchdog runs beside them
//! on the real clock; a save names the revision it read, so the two never both say an alert.

mod common;

use std::time::Duration;

use common::*;
use incident_gateway::Gateway;
use incident_gateway::model::now_ms;
use incident_gateway::sla::Report;
use incident_gateway::watchdog::{self, StatusReport};
use serde_json::{Value, json};

const JIRA_CALLBACK: &str = "jira-callback-token-0123456789";
const GLOBEX_ADMIN: &str = "globex-admin-token-0123456789";

const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;

fn connectors(receiver: &Receiver) -> String {
    format!(
        r#"
[[connectors]]
name = "jira"
kind = "http"
url = "{jira}"
template = "TEMPLATES/generic/incident.json.hbs"
ticket_id = "/key"
callback_token = "{JIRA_CALLBACK}"

# The pager takes no incident of its own here: only the SLA alerts sent to it.
[[connectors]]
name = "pager"
kind = "http"
url = "{pager}"
template = "TEMPLATES/generic/incident.json.hbs"
min_threat_rating = "critical"

[sla]
connectors = ["jira"]
notify = ["pager"]
take_over_on = "status"
waiting_expires = "30m"

[sla.statuses]
"In Progress" = "taken_over"
"Waiting for customer" = "waiting"

[[sla.policies]]
name = "acme"
tenants = ["acme"]
take_over = "1h"
complete = "2h"
warn_before = "10m"
"#,
        jira = receiver.url("/jira"),
        pager = receiver.url("/pager"),
    )
}

/// Tenants and the like; the sources are `HUB_SOURCES`.
const SOURCES: &str = r#"
[[tenants]]
name = "acme"
account_id = 2

[[tenants]]
name = "globex"
account_id = 3

[[admin_tokens]]
name = "globex-desk"
token = "globex-admin-token-0123456789"
tenants = ["globex"]

"#;

/// A gateway whose jira answers every `created` with issue key SEC-1.
async fn setup() -> (Receiver, Workspace, std::path::PathBuf, Gateway, String) {
    let receiver = Receiver::start().await;
    receiver.script((0..20).map(|_| Reply::status(201).body(r#"{"key":"SEC-1"}"#)));
    let ws = Workspace::new();
    let config = ws.config("127.0.0.1:0", &connectors(&receiver));
    with_sources(&config, &format!("{SOURCES}{HUB_SOURCES}"));
    let (gw, base) = start_gateway(&config).await;
    (receiver, ws, config, gw, base)
}

/// Posts an incident of acme and waits until jira's ticket has its id.
async fn open_ticket(receiver: &Receiver, base: &str, id: &str) {
    let mut incident = incident(id);
    incident["accountId"] = json!(2);
    assert_eq!(post_as(base, HUB_KEY, &incident).await.status(), 202);
    receiver.wait_for(1, Duration::from_secs(10)).await;
    eventually(Duration::from_secs(10), || async {
        let (_, v) = admin_get(base, &format!("/v1/incidents/{id}/sla")).await;
        (v["sla"][0]["ticket_id"] == "SEC-1").then_some(())
    })
    .await
    .expect("jira's ticket is opened and numbered");
}

/// The watchdog's pass at `now`, again while the gateway's own watchdog saved a clock first;
/// how many alerts it said.
async fn tick(gw: &Gateway, now: i64) -> usize {
    let mut said = 0;
    for _ in 0..10 {
        let pass = watchdog::check_due(&gw.store, &gw.live.current(), now)
            .await
            .expect("a pass");
        said += pass.said.len();
        if pass.lost == 0 {
            return said;
        }
    }
    panic!("the watchdog kept losing its saves");
}

/// The SLA alerts the pager got, by incident id.
fn paged(receiver: &Receiver) -> Vec<String> {
    receiver
        .received()
        .into_iter()
        .filter(|r| r.path == "/pager")
        .map(|r| {
            r.json()["incidentId"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

async fn paged_n(receiver: &Receiver, n: usize) -> Vec<String> {
    eventually(Duration::from_secs(10), || async {
        let p = paged(receiver);
        (p.len() >= n).then_some(p)
    })
    .await
    .unwrap_or_else(|| panic!("the pager got {:?}, not {n} alerts", paged(receiver)))
}

fn ms_of(text: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(text.as_str().expect("a time"))
        .expect("RFC 3339")
        .timestamp_millis()
}

async fn clocks(base: &str, id: &str) -> Vec<Value> {
    let (status, v) = admin_get(base, &format!("/v1/incidents/{id}/sla")).await;
    assert_eq!(status, 200, "{v}");
    v["sla"].as_array().expect("a list").clone()
}

/// `method` on `url` with `token` as bearer and, if given, a JSON body.
async fn as_token(
    method: reqwest::Method,
    url: String,
    token: &str,
    body: Option<&Value>,
) -> reqwest::Response {
    let mut request = client().request(method, url).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(body);
    }
    request.send().await.unwrap()
}

async fn report_as(base: &str, id: &str, token: &str, body: &Value) -> reqwest::Response {
    let url = format!("{base}/v1/incidents/{id}/sla");
    as_token(reqwest::Method::POST, url, token, Some(body)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warning_breach_and_recovery_are_paged_once_each_across_a_restart() {
    let (receiver, _ws, config, gw, base) = setup().await;
    open_ticket(&receiver, &base, "ACME-1").await;
    let both = clocks(&base, "ACME-1").await;
    let levels: Vec<&str> = both.iter().map(|c| c["level"].as_str().unwrap()).collect();
    assert_eq!(levels, ["take_over", "complete"]);
    let t0 = ms_of(&both[0]["started_at"]);
    assert_eq!(both[0]["state"], "running");
    assert_eq!(both[0]["tenant"], "acme");
    assert_eq!(both[0]["policy"], "acme");
    // A 24×7 calendar: the deadline is an hour of wall-clock time.
    assert_eq!(ms_of(&both[0]["deadline"]), t0 + HOUR);
    assert_eq!(ms_of(&both[1]["deadline"]), t0 + 2 * HOUR);
    let seq = both[0]["ticket"].as_i64().unwrap();

    assert_eq!(
        tick(&gw, t0 + 49 * MINUTE).await,
        0,
        "nothing before the warning"
    );
    assert_eq!(tick(&gw, t0 + 50 * MINUTE + 1).await, 1);
    assert_eq!(
        paged_n(&receiver, 1).await,
        [format!("igw-sla-{seq}-take_over-warning")]
    );
    assert_eq!(tick(&gw, t0 + 55 * MINUTE).await, 0, "said once");

    // A restart between the warning and the breach: the breach only, once.
    gw.stop().await.unwrap();
    let (gw, base) = start_gateway(&config).await;
    assert_eq!(tick(&gw, t0 + HOUR + 1).await, 1);
    assert_eq!(tick(&gw, t0 + HOUR + 2 * MINUTE).await, 0);
    let p = paged_n(&receiver, 2).await;
    assert_eq!(p[1], format!("igw-sla-{seq}-take_over-breach"));
    let breached = clocks(&base, "ACME-1").await;
    assert_eq!(
        (
            breached[0]["breached"].clone(),
            breached[0]["deadline"].clone()
        ),
        (json!(true), Value::Null)
    );
    assert_eq!(
        breached[1]["warned"], false,
        "the completion clock has time left"
    );

    // Jira reports its own status name for "taken over": the breached clock recovers.
    let r = report_as(
        &base,
        "ACME-1",
        JIRA_CALLBACK,
        &json!({"status": "In Progress"}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let after: Value = r.json().await.unwrap();
    assert_eq!(after["sla"][0]["state"], "met");
    assert_eq!(after["sla"][0]["recovered"], true);
    assert_eq!(after["sla"][1]["state"], "running");
    let p = paged_n(&receiver, 3).await;
    assert_eq!(p[2], format!("igw-sla-{seq}-take_over-recovery"));
    let recovery = receiver
        .received()
        .into_iter()
        .rfind(|r| r.path == "/pager")
        .unwrap()
        .json();
    let summary = recovery["incident"]["correlation_name"].as_str().unwrap();
    assert!(
        summary.contains("SLA recovered") && summary.contains("SEC-1"),
        "{summary}"
    );
    assert_eq!(recovery["incident"]["extra"]["sla"]["tenant"], "acme");

    // The list and the info API show the same clocks.
    let (_, list) = admin_get(&base, "/v1/sla?breached=true").await;
    assert_eq!(pluck(&list["sla"], "level"), ["take_over"]);
    let r = as_token(
        reqwest::Method::GET,
        format!("{base}/v1/incidents/ACME-1/info"),
        HUB_CALLBACK,
        None,
    )
    .await;
    let info: Value = r.json().await.unwrap();
    assert_eq!(pluck(&info["sla"], "state"), ["met", "running"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(paged(&receiver).len(), 3, "no alert twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_expires_and_a_suspension_holds_until_resumed() {
    let (receiver, _ws, _config, gw, base) = setup().await;
    open_ticket(&receiver, &base, "ACME-2").await;
    let t0 = ms_of(&clocks(&base, "ACME-2").await[1]["started_at"]);
    let report = |status: Report, at: i64| {
        let (store, generation) = (gw.store.clone(), gw.live.current());
        async move {
            let read = || store.sla_of_incident("ACME-2".into());
            watchdog::report(
                &store,
                &generation,
                StatusReport {
                    report: status,
                    until_ms: None,
                },
                at,
                read,
            )
            .await
            .expect("the report applies")
            .0
        }
    };
    // Taken over at once; the completion clock (2h, warned 10m before) is the one to watch.
    report(Report::TakenOver, t0 + MINUTE).await;
    // Waiting from 0:10 expires after 30 minutes (waiting_expires): 30 minutes do not count.
    report(Report::Waiting, t0 + 10 * MINUTE).await;
    assert_eq!(tick(&gw, t0 + 2 * HOUR).await, 0, "1h30m used");
    assert_eq!(
        tick(&gw, t0 + 2 * HOUR + 21 * MINUTE).await,
        1,
        "the warning at 1h50m used"
    );
    // Suspended at 2:25 (1h55m used) until resumed at 10:00: nothing in between.
    report(Report::Suspended, t0 + 2 * HOUR + 25 * MINUTE).await;
    assert_eq!(tick(&gw, t0 + 9 * HOUR).await, 0, "suspended");
    let held = clocks(&base, "ACME-2").await;
    assert_eq!(held[1]["state"], "suspended");
    assert!(held[1]["deadline"].is_null());
    report(Report::Running, t0 + 10 * HOUR).await;
    assert_eq!(
        tick(&gw, t0 + 10 * HOUR + 4 * MINUTE).await,
        0,
        "1h59m used"
    );
    assert_eq!(
        tick(&gw, t0 + 10 * HOUR + 6 * MINUTE).await,
        1,
        "the breach at 2h used"
    );
    let seq = held[1]["ticket"].as_i64().unwrap();
    // Two incidents of their own, each its own delivery: they may arrive in either order.
    let mut paged_both = paged_n(&receiver, 2).await;
    paged_both.sort();
    assert_eq!(
        paged_both,
        [
            format!("igw-sla-{seq}-complete-breach"),
            format!("igw-sla-{seq}-complete-warning")
        ]
    );
    // Completing the incident closes the ticket: the clock is met, and recovers.
    let r = complete(
        &base,
        "ACME-2",
        Some(HUB_CALLBACK),
        r#"{"reason_code": "threat_not_valid"}"#,
    )
    .await;
    assert_eq!(r.status(), 200);
    let recovered = eventually(Duration::from_secs(10), || async {
        let p = paged(&receiver);
        (p.len() >= 3).then_some(p)
    })
    .await
    .expect("the gateway's own watchdog sees the close");
    assert_eq!(recovered[2], format!("igw-sla-{seq}-complete-recovery"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_are_checked_and_scoped_as_the_back_channel_is() {
    let (receiver, _ws, _config, _gw, base) = setup().await;
    open_ticket(&receiver, &base, "ACME-3").await;
    // No source may take an alert's id.
    let mut taken = incident("igw-sla-1-take_over-breach");
    taken["accountId"] = json!(2);
    let p = problem(post_as(&base, HUB_KEY, &taken).await, 422).await;
    assert_eq!(p["errors"][0]["pointer"], "#/incidentId", "{p}");
    // Another source, or an unknown incident: 404, nothing learned.
    let r = report_as(
        &base,
        "ACME-3",
        OTHER_CALLBACK,
        &json!({"status": "waiting"}),
    )
    .await;
    problem(r, 404).await;
    let r = report_as(&base, "NOPE", JIRA_CALLBACK, &json!({"status": "waiting"})).await;
    problem(r, 404).await;
    // A status nobody maps, and an end for something other than a wait: 422 with pointers.
    let r = report_as(
        &base,
        "ACME-3",
        JIRA_CALLBACK,
        &json!({"status": "Resolved"}),
    )
    .await;
    let p = problem(r, 422).await;
    assert_eq!(p["errors"][0]["pointer"], "#/status", "{p}");
    assert!(
        p["errors"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("waiting for customer")
    );
    let r = report_as(
        &base,
        "ACME-3",
        JIRA_CALLBACK,
        &json!({"status": "suspended", "until": "2099-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(problem(r, 422).await["errors"][0]["pointer"], "#/until");
    // A wait with its own end; the source may report too.
    let r = report_as(
        &base,
        "ACME-3",
        HUB_CALLBACK,
        &json!({"status": "Waiting for customer", "until": "2099-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(pluck(&v["sla"], "state"), ["waiting", "waiting"]);
    // Capped at waiting_expires (30m) from now, not 2099.
    let until = ms_of(&v["sla"][0]["waiting_until"]);
    assert!(until <= now_ms() + 30 * MINUTE, "{until}");

    // An admin token of another tenant sees no clock of acme's, and cannot set one.
    let r = as_token(
        reqwest::Method::GET,
        format!("{base}/v1/incidents/ACME-3/sla"),
        GLOBEX_ADMIN,
        None,
    )
    .await;
    problem(r, 404).await;
    let r = as_token(
        reqwest::Method::GET,
        format!("{base}/v1/sla"),
        GLOBEX_ADMIN,
        None,
    )
    .await;
    assert_eq!(r.json::<Value>().await.unwrap()["sla"], json!([]));
    let seq = v["sla"][0]["ticket"].as_i64().unwrap();
    let r = as_token(
        reqwest::Method::POST,
        format!("{base}/v1/tickets/{seq}/sla"),
        GLOBEX_ADMIN,
        Some(&json!({"status": "running"})),
    )
    .await;
    problem(r, 404).await;
    // The admin resumes it.
    let r = as_token(
        reqwest::Method::POST,
        format!("{base}/v1/tickets/{seq}/sla"),
        ADMIN_TOKEN,
        Some(&json!({"status": "running"})),
    )
    .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(pluck(&v["sla"], "state"), ["running", "running"]);
}

#[test]
fn check_names_a_bad_policy_and_routes_shows_the_clocks() {
    let ws = Workspace::new();
    let receiver_url = "http://127.0.0.1:9/";
    let text = format!(
        "{}\n{}",
        templated_connector(
            "jira",
            receiver_url,
            "TEMPLATES/generic/incident.json.hbs",
            ""
        ),
        r#"
[sla]
connectors = ["jira"]

[sla.calendar]
time_zone = "Europe/Rome"
days = ["mon", "tue", "wed", "thu", "fri"]
start = "09:00"
hours = 8
holidays = ["2026-12-25"]

[[sla.policies]]
name = "all"
take_over = "4h"
complete = "2d"
"#
    );
    let config = ws.config("127.0.0.1:0", &text);
    ws.add_sample_incident();
    let out = common::cli::check(&config, &[]);
    let said = common::cli::output_text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("sla: clocks on the tickets of jira; 1 policy"),
        "{said}"
    );
    let out = common::cli::run(
        &[
            "routes",
            "--config",
            config.to_str().unwrap(),
            "--incident",
            sample_file().to_str().unwrap(),
        ],
        &[],
    );
    let said = common::cli::output_text(&out);
    assert!(
        said.contains("sla: policy all: taken over within 4h, completed within 2days"),
        "{said}"
    );
    // A policy naming no tenant the config has: refused with its line.
    edit(&config, |t| {
        t.replace("name = \"all\"", "name = \"all\"\ntenants = [\"initech\"]")
    });
    let out = common::cli::check(&config, &[]);
    let said = common::cli::output_text(&out);
    assert!(!out.status.success());
    let line = common::cli::line_of(&config, "tenants = [\"initech\"]");
    assert!(
        said.contains(&format!("line {line}")) && said.contains("sla.policies[0].tenants[0]"),
        "{said}"
    );
    assert!(said.contains("\"initech\" is not a tenant"), "{said}");
}
