//! Ticket lifecycle against an in-test ticketing system that behaves like one: it opens
//! tickets and returns their ids, updates only tickets it knows (404 otherwise), and takes
//! its time.

mod common;

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{patch, post};
use common::*;
use serde_json::{Value, json};
use std::process::Command;

/// One request the ticketing system received.
#[derive(Debug, Clone)]
struct Call {
    method: String,
    path: String,
    webhook_id: String,
    body: Value,
    status: u16,
}

impl Call {
    fn new(method: &str, path: String, headers: &HeaderMap, body: &Bytes, status: u16) -> Call {
        Call {
            method: method.into(),
            path,
            webhook_id: headers
                .get("webhook-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string(),
            body: serde_json::from_slice(body).unwrap_or(Value::Null),
            status,
        }
    }
}

/// (method, status) of each call, in order.
fn shape(calls: &[Call]) -> Vec<(&str, u16)> {
    calls
        .iter()
        .map(|c| (c.method.as_str(), c.status))
        .collect()
}

#[derive(Default)]
struct Tickets {
    calls: Vec<Call>,
    known: HashSet<String>,
    /// sys_id by the `ref` its create carried, for lookups.
    by_ref: HashMap<String, String>,
    /// Statuses to answer the next lookups with, before answering what it holds.
    lookup_failures: VecDeque<u16>,
    /// Statuses to answer the next creates with, before answering 201.
    create_failures: VecDeque<u16>,
    /// Answer creates with 201 but no sys_id.
    omit_id: bool,
    delay: Duration,
}

type Shared = Arc<Mutex<Tickets>>;

async fn create(State(t): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    // Like a real system: the ticket is committed first, the answer may be slow to come back.
    let (status, reply, delay) = open_ticket(&t, &headers, &body);
    tokio::time::sleep(delay).await;
    (StatusCode::from_u16(status).unwrap(), axum::Json(reply)).into_response()
}

fn open_ticket(t: &Shared, headers: &HeaderMap, body: &Bytes) -> (u16, Value, Duration) {
    let mut t = t.lock().unwrap();
    let delay = t.delay;
    let failure = t.create_failures.pop_front();
    let (status, reply) = match failure {
        Some(code) => (code, json!({"error": {"message": "try later"}})),
        None if t.omit_id => (201, json!({"result": {"number": "INC0000000"}})),
        None => {
            let sys_id = format!("sys{:04}", t.known.len() + 1);
            t.known.insert(sys_id.clone());
            if let Some(r) = serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|b| b["ref"].as_str().map(str::to_string))
            {
                t.by_ref.insert(r, sys_id.clone());
            }
            (
                201,
                json!({"result": {"sys_id": sys_id, "number": format!("INC{:07}", t.known.len())}}),
            )
        }
    };
    let path = "/api/now/table/incident".to_string();
    t.calls.push(Call::new("POST", path, headers, body, status));
    (status, reply, delay)
}

/// A search by `ref`, as ServiceNow's Table API answers one: a list of the records found.
async fn search(
    State(t): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let mut t = t.lock().unwrap();
    let wanted = query.get("ref").cloned().unwrap_or_default();
    let (status, reply) = match t.lookup_failures.pop_front() {
        Some(code) => (code, json!({"error": {"message": "search unavailable"}})),
        None => {
            let found: Vec<Value> = t
                .by_ref
                .get(&wanted)
                .map(|id| json!({"sys_id": id}))
                .into_iter()
                .collect();
            (200, json!({"result": found}))
        }
    };
    let path = format!("/api/now/table/incident?ref={wanted}");
    t.calls
        .push(Call::new("GET", path, &headers, &Bytes::new(), status));
    (StatusCode::from_u16(status).unwrap(), axum::Json(reply)).into_response()
}

async fn update(
    State(t): State<Shared>,
    Path(sys_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let delay = t.lock().unwrap().delay;
    tokio::time::sleep(delay).await;
    let mut t = t.lock().unwrap();
    let status = if t.known.contains(&sys_id) { 200 } else { 404 };
    let path = format!("/api/now/table/incident/{sys_id}");
    t.calls
        .push(Call::new("PATCH", path, &headers, &body, status));
    let reply = if status == 200 {
        json!({"result": {"sys_id": sys_id}})
    } else {
        json!({"error": {"message": "No Record found"}})
    };
    (StatusCode::from_u16(status).unwrap(), axum::Json(reply)).into_response()
}

/// A small upstream "detection platform" API: records completions.
async fn upstream(State(t): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let call = Call::new("POST", "/upstream".into(), &headers, &body, 200);
    t.lock().unwrap().calls.push(call);
    StatusCode::OK.into_response()
}

struct TicketSystem {
    base: String,
    state: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl TicketSystem {
    async fn start() -> TicketSystem {
        let state: Shared = Arc::default();
        let app = axum::Router::new()
            .route("/api/now/table/incident", post(create).get(search))
            .route("/api/now/table/incident/{sys_id}", patch(update))
            .route("/upstream", post(upstream))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        TicketSystem { base, state, task }
    }

    fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }

    async fn wait_for(&self, n: usize, within: Duration) -> Vec<Call> {
        at_least(n, within, || self.calls()).await
    }

    fn set(&self, change: impl FnOnce(&mut Tickets)) {
        change(&mut self.state.lock().unwrap());
    }
}

impl Drop for TicketSystem {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Writes ServiceNow-like templates and a config whose `servicenow` connector opens a ticket
/// per correlation key, updates it with work notes and resolves it on completion.
fn ticket_config(ws: &Workspace, base: &str, extra: &str) -> PathBuf {
    ws.write(
        "created.json.hbs",
        r#"{"short_description": "{{incident.summary}}", "correlation_id": "{{incidentId}}", "ref": "{{ticket.ref}}"}"#,
    );
    ws.write(
        "updated.json.hbs",
        r#"{"work_notes": "{{incidentId}}", "ticket": "{{ticket.id}}", "key": "{{ticket.key}}"}"#,
    );
    ws.write(
        "completed.json.hbs",
        r#"{"state": "6", "ticket": "{{ticket.id}}", "close_code": "{{completion.reason_code}}", "close_notes": "{{completion.notes}}"}"#,
    );
    let connector = format!(
        r#"
[[connectors]]
name = "servicenow"
kind = "http"
url = "{base}/api/now/table/incident"
template = "created.json.hbs"
ticket_id = "/result/sys_id"
callback_token = "servicenow-callback-token-123"
{extra}
[connectors.retry]
max_attempts = 20
initial_backoff = "50ms"
max_backoff = "200ms"
[connectors.requests.updated]
method = "PATCH"
url = "{base}/api/now/table/incident/{{{{ticket.id}}}}"
template = "updated.json.hbs"
[connectors.requests.completed]
method = "PATCH"
url = "{base}/api/now/table/incident/{{{{ticket.id}}}}"
template = "completed.json.hbs"

[[connectors]]
name = "platform"
kind = "http"
upstream = true
url = "{base}/upstream"
template = "completed.json.hbs"
[connectors.requests.completed]
template = "upstream.json.hbs"
"#
    );
    ws.write(
        "upstream.json.hbs",
        r#"{"incident_id": "{{incidentId}}", "reason_code": "{{completion.reason_code}}", "notes": "{{completion.notes}}"}"#,
    );
    let config = ws.config("127.0.0.1:0", &connector);
    // Sources may complete incidents too.
    edit(&config, |text| {
        text.replace(
            &format!("api_key = \"{SOURCE_KEY}\""),
            &format!("api_key = \"{SOURCE_KEY}\"\ncallback_token = \"{SOURCE_CALLBACK}\""),
        )
    });
    config
}

/// The ticket system, and a config (in its workspace) whose connector opens tickets there;
/// `extra` is added to the connector's block.
async fn ticket_setup(extra: &str) -> (TicketSystem, Workspace, PathBuf) {
    let target = TicketSystem::start().await;
    let ws = Workspace::new();
    let config = ticket_config(&ws, &target.base, extra);
    (target, ws, config)
}

/// That, and the gateway started on it in process (with its base URL).
async fn ticketing(extra: &str) -> (TicketSystem, Workspace, incident_gateway::Gateway, String) {
    let (target, ws, config) = ticket_setup(extra).await;
    let (gw, base) = start_gateway(&config).await;
    (target, ws, gw, base)
}

/// The ticket system answering after `delay`, a config whose connector opens one ticket per
/// correlation key there, and the real binary serving it (its process and base URL).
async fn slow_target_and_binary(
    delay: Duration,
) -> (TicketSystem, Workspace, PathBuf, Child, String) {
    let (target, ws, config) = ticket_setup(SHARED_KEY).await;
    target.set(|t| t.delay = delay);
    let (child, base) = spawn_binary(&config);
    (target, ws, config, child, base)
}

/// That, with incident `id` accepted and its ticket opened.
async fn ticket_opened_for(
    id: &str,
) -> (TicketSystem, Workspace, incident_gateway::Gateway, String) {
    let (target, ws, gw, base) = ticketing("").await;
    accepted(&base, &incident(id)).await;
    target.wait_for(1, Duration::from_secs(10)).await;
    (target, ws, gw, base)
}

const SOURCE_CALLBACK: &str = "source-callback-token-0123";
const SHARED_KEY: &str = "correlation_key = \"{{incident_class}}/{{asset_host_name}}\"";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_incidents_on_one_key_open_one_ticket_and_update_it_in_order() {
    let (target, _ws, gw, base) = ticketing(SHARED_KEY).await;
    target.set(|t| t.delay = Duration::from_millis(200));

    let mut events = Vec::new();
    for i in 0..50 {
        let r = accepted(&base, &incident(&format!("BURST-{i:02}"))).await;
        events.push(r["deliveries"][0]["event"].as_str().unwrap().to_string());
    }
    assert_eq!(events[0], "created");
    assert!(events[1..].iter().all(|e| e == "updated"));

    let calls = target.wait_for(50, Duration::from_secs(60)).await;
    assert_eq!(calls.len(), 50);
    let creates: Vec<&Call> = calls.iter().filter(|c| c.method == "POST").collect();
    assert_eq!(creates.len(), 1, "exactly one ticket opened");
    assert_eq!(calls[0].method, "POST", "the create went first");
    assert_eq!(calls[0].body["correlation_id"], "BURST-00");
    let updates: Vec<String> = calls[1..]
        .iter()
        .map(|c| {
            assert_eq!(c.method, "PATCH");
            assert_eq!(
                c.status, 200,
                "every update named a ticket the system knows"
            );
            assert_eq!(c.path, "/api/now/table/incident/sys0001");
            assert_eq!(c.body["ticket"], "sys0001");
            assert_eq!(c.body["key"], "authentication:activity/10.1.2.3");
            c.body["work_notes"].as_str().unwrap().to_string()
        })
        .collect();
    let expected: Vec<String> = (1..50).map(|i| format!("BURST-{i:02}")).collect();
    assert_eq!(updates, expected, "updates arrive in acceptance order");

    let (_, view) = admin_get(&base, "/v1/incidents/BURST-07").await;
    let ticket = &view["connectors"]["servicenow"]["tickets"][0];
    assert_eq!(ticket["ticket_id"], "sys0001");
    assert_eq!(
        ticket["correlation_key"],
        "authentication:activity/10.1.2.3"
    );
    assert_eq!(ticket["status"], "open");
    assert_eq!(ticket["incidents"], 50);
    gw.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_in_the_middle_of_a_burst_still_opens_one_ticket() {
    let (target, _ws, config, mut child, base) =
        slow_target_and_binary(Duration::from_millis(200)).await;
    for i in 0..50 {
        accepted(&base, &incident(&format!("KILL-{i:02}"))).await;
    }
    // Kill once the ticket exists and updates are flowing.
    target.wait_for(5, Duration::from_secs(30)).await;
    sigkill(&mut child);
    let before_restart = target.calls().len();

    let (mut child, _) = spawn_binary(&config);
    let done = eventually(Duration::from_secs(60), || async {
        let ids: HashSet<String> = target
            .calls()
            .iter()
            .map(|c| c.webhook_id.clone())
            .collect();
        (ids.len() >= 50).then_some(())
    })
    .await;
    sigkill(&mut child);
    assert!(done.is_some(), "every delivery arrived after the restart");
    let calls = target.calls();
    eprintln!(
        "killed after {before_restart} requests; {} requests in all for 50 deliveries",
        calls.len()
    );
    assert_eq!(
        calls.iter().filter(|c| c.method == "POST").count(),
        1,
        "still exactly one created"
    );
    assert!(calls.iter().all(|c| c.status == 200 || c.status == 201));
    // Updates kept their order across the restart (a repeat of the one in flight is allowed).
    let mut seen = Vec::new();
    for c in calls.iter().filter(|c| c.method == "PATCH") {
        let id = c.body["work_notes"].as_str().unwrap().to_string();
        if seen.last() != Some(&id) {
            seen.push(id);
        }
    }
    let expected: Vec<String> = (1..50).map(|i| format!("KILL-{i:02}")).collect();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn no_update_goes_before_its_create_succeeds() {
    let (target, _ws, gw, base) = ticketing(SHARED_KEY).await;
    target.set(|t| t.create_failures = VecDeque::from([500, 500, 500]));
    let created = accepted(&base, &incident("FIRST")).await;
    let created_id = first_delivery(&created);
    let updated = accepted(&base, &incident("SECOND")).await;
    assert_eq!(updated["deliveries"][0]["event"], "updated");

    // While the create is failing, the update waits for it, visibly.
    let waiting = eventually(Duration::from_secs(5), || async {
        let (_, v) = admin_get(&base, "/v1/incidents/SECOND").await;
        let d = &v["connectors"]["servicenow"]["deliveries"][0];
        (d["status"] == "pending" && d["waiting_for"] == created_id.as_str()).then_some(())
    })
    .await;
    assert!(waiting.is_some(), "the update shows what it waits for");

    let calls = target.wait_for(5, Duration::from_secs(15)).await;
    assert_eq!(
        shape(&calls),
        [
            ("POST", 500),
            ("POST", 500),
            ("POST", 500),
            ("POST", 201),
            ("PATCH", 200)
        ]
    );
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn a_dead_create_holds_its_updates_until_it_is_replayed() {
    let (target, _ws, gw, base) = ticketing(SHARED_KEY).await;
    target.set(|t| t.create_failures = VecDeque::from([400]));
    let created = accepted(&base, &incident("DEAD-FIRST")).await;
    let created_id = first_delivery(&created);
    accepted(&base, &incident("DEAD-SECOND")).await;
    settled(&base, &created_id, &["dead"], Duration::from_secs(10)).await;
    // The update waits behind the dead create rather than patching a ticket that is not there.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, v) = admin_get(&base, "/v1/incidents/DEAD-SECOND").await;
    let follower = &v["connectors"]["servicenow"]["deliveries"][0];
    assert_eq!(follower["status"], "pending");
    assert_eq!(follower["waiting_for"], created_id.as_str());
    assert_eq!(target.calls().len(), 1);

    let r = admin_post(&base, &format!("/v1/deliveries/{created_id}/replay")).await;
    assert_eq!(r.status(), 202);
    let calls = target.wait_for(3, Duration::from_secs(10)).await;
    assert_eq!(
        shape(&calls),
        [("POST", 400), ("POST", 201), ("PATCH", 200)]
    );
    assert_eq!(calls[2].body["work_notes"], "DEAD-SECOND");
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn a_created_response_without_the_ticket_id_is_a_dead_delivery_with_the_reason() {
    let (target, _ws, gw, base) = ticketing("").await;
    target.set(|t| t.omit_id = true);
    let id = first_delivery(&accepted(&base, &incident("NO-ID")).await);
    let dead = settled(&base, &id, &["dead"], Duration::from_secs(10)).await;
    let reason = dead["last_error"].as_str().unwrap();
    assert!(
        reason.contains("no ticket id at /result/sys_id"),
        "{reason}"
    );
    assert_eq!(
        dead["attempt_count"], 1,
        "not retried: a retry could open a second ticket"
    );
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn the_aggregation_window_closes_and_a_new_ticket_opens() {
    let window = format!("{SHARED_KEY}\naggregate_for = \"1s\"");
    let (_target, _ws, gw, base) = ticketing(&window).await;
    let event = |v: Value| v["deliveries"][0]["event"].as_str().unwrap().to_string();
    assert_eq!(event(accepted(&base, &incident("WIN-1")).await), "created");
    assert_eq!(event(accepted(&base, &incident("WIN-2")).await), "updated");
    let mut other = incident("WIN-OTHER");
    other["asset_host_name"] = json!("10.9.9.9");
    assert_eq!(
        event(accepted(&base, &other).await),
        "created",
        "another key, another ticket"
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(event(accepted(&base, &incident("WIN-3")).await), "created");
    let (_, v) = admin_get(&base, "/v1/incidents/WIN-3").await;
    assert_eq!(v["connectors"]["servicenow"]["tickets"][0]["incidents"], 1);
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn the_back_channel_completes_an_incident_and_closes_its_tickets() {
    let (target, _ws, gw, base) = ticket_opened_for("DONE-1").await;
    let ok_body = r#"{"reason_code": "threat_not_valid", "notes": "User forgot their password"}"#;

    // Each error first.
    for (incident, token, status) in [
        ("DONE-1", None, 401),
        ("DONE-1", Some(SOURCE_KEY), 401),
        ("DONE-1", Some(ADMIN_TOKEN), 401),
        ("NOPE", Some(SOURCE_CALLBACK), 404),
    ] {
        problem(complete(&base, incident, token, ok_body).await, status).await;
    }
    let p = problem(
        complete(
            &base,
            "DONE-1",
            Some(SOURCE_CALLBACK),
            r#"{"reason_code": "because", "notes": "x"}"#,
        )
        .await,
        422,
    )
    .await;
    assert_eq!(p["errors"][0]["pointer"], "#/reason_code");
    problem(
        complete(&base, "DONE-1", Some(SOURCE_CALLBACK), "{").await,
        400,
    )
    .await;
    let (_, v) = admin_get(&base, "/v1/incidents/DONE-1").await;
    assert_eq!(v["status"], "open", "no error changed anything");

    // Success: seed 000's old/new objects.
    let r = complete(&base, "DONE-1", Some(SOURCE_CALLBACK), ok_body).await;
    assert_eq!(r.status(), 200);
    let done: Value = r.json().await.unwrap();
    assert_eq!(done["old"]["status"], "open");
    assert!(done["old"]["status_change_time"].is_string());
    assert_eq!(done["new"]["status"], "completed");
    assert_eq!(done["new"]["reason_code"], "threat_not_valid");
    assert_eq!(done["new"]["notes"], "User forgot their password");
    let since = done["new"]["status_change_time"]
        .as_str()
        .unwrap()
        .to_string();

    // The ticket is resolved, by its id; the platform hears of it too.
    let calls = target.wait_for(3, Duration::from_secs(10)).await;
    let resolve = calls
        .iter()
        .find(|c| c.method == "PATCH")
        .expect("resolve sent");
    assert_eq!(resolve.path, "/api/now/table/incident/sys0001");
    assert_eq!(resolve.status, 200);
    assert_eq!(resolve.body["state"], "6");
    assert_eq!(resolve.body["close_code"], "threat_not_valid");
    assert_eq!(resolve.body["close_notes"], "User forgot their password");
    // The source (the platform's side) completed it: the platform is not told what it did.
    assert!(calls.iter().all(|c| c.path != "/upstream"));

    // Twice is a conflict that says since when.
    let p = problem(
        complete(&base, "DONE-1", Some(SOURCE_CALLBACK), ok_body).await,
        409,
    )
    .await;
    assert_eq!(p["status_change_time"], since.as_str());
    assert!(p["detail"].as_str().unwrap().contains(&since));

    let (_, v) = admin_get(&base, "/v1/incidents/DONE-1").await;
    assert_eq!(v["status"], "completed");
    assert_eq!(v["completion"]["reason_code"], "threat_not_valid");
    assert_eq!(
        v["connectors"]["servicenow"]["tickets"][0]["status"],
        "completed"
    );

    // The same incident key again opens a new ticket: the old one is closed.
    let mut again = incident("DONE-2");
    again["incidentId"] = json!("DONE-1-REOPENED");
    let r = accepted(&base, &again).await;
    assert_eq!(r["deliveries"][0]["event"], "created");
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn a_target_closing_its_own_ticket_is_not_asked_to_close_it_again() {
    let (target, _ws, gw, base) = ticket_opened_for("SELF-1").await;
    let r = complete(
        &base,
        "SELF-1",
        Some("servicenow-callback-token-123"),
        r#"{"reason_code": "other", "notes": "Closed in ServiceNow"}"#,
    )
    .await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        pluck(&body["deliveries"], "connector"),
        ["platform"],
        "only the platform is told; ServiceNow closed it itself"
    );
    let calls = target.wait_for(2, Duration::from_secs(10)).await;
    let up = calls
        .iter()
        .find(|c| c.path == "/upstream")
        .expect("upstream told");
    assert_eq!(up.body["incident_id"], "SELF-1");
    assert_eq!(up.body["reason_code"], "other");
    let paths: HashMap<&str, usize> = calls.iter().fold(HashMap::new(), |mut m, c| {
        *m.entry(c.path.as_str()).or_default() += 1;
        m
    });
    assert_eq!(paths.get("/upstream"), Some(&1));
    assert!(calls.iter().all(|c| c.method != "PATCH"));
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn a_newer_version_stays_on_its_ticket_after_the_window_and_after_completion_opens_none() {
    let window = format!("{SHARED_KEY}\naggregate_for = \"1s\"");
    let (target, _ws, gw, base) = ticketing(&window).await;
    let event = |v: &Value| {
        v["deliveries"][0]["event"]
            .as_str()
            .unwrap_or("none")
            .to_string()
    };
    let first = incident("SAME-1");
    assert_eq!(event(&accepted(&base, &first).await), "created");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // The window closed, but this is the same incident: it stays on its ticket.
    let mut newer = first.clone();
    newer["updateTime"] = json!(1594159999);
    let r = accepted(&base, &newer).await;
    assert_eq!(r["status"], "updated");
    assert_eq!(event(&r), "updated");
    let (_, v) = admin_get(&base, "/v1/incidents/SAME-1").await;
    assert_eq!(
        v["connectors"]["servicenow"]["tickets"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Completed: a later version is kept but opens no ticket and sends nothing.
    target.wait_for(2, Duration::from_secs(10)).await;
    let done = complete(
        &base,
        "SAME-1",
        Some(SOURCE_CALLBACK),
        r#"{"reason_code": "other"}"#,
    )
    .await;
    assert_eq!(done.status(), 200);
    let mut later = newer.clone();
    later["updateTime"] = json!(1594169999);
    let r = accepted(&base, &later).await;
    assert_eq!(r["status"], "updated");
    assert_eq!(r["deliveries"], json!([]));
    let (_, v) = admin_get(&base, "/v1/incidents/SAME-1").await;
    assert_eq!(v["versions"], 3);
    let tickets = v["connectors"]["servicenow"]["tickets"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(tickets.len(), 1);
    assert_eq!(tickets[0]["status"], "completed");
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn a_callback_token_completes_only_its_holders_incidents() {
    let (target, _ws, config) = ticket_setup("").await;
    // A second source with its own key and callback token, and no ticket anywhere.
    edit(&config, |text| {
        text.replacen(
            "[[connectors]]",
            "[[sources]]\nname = \"other\"\napi_key = \"other-source-key-0123456\"\ncallback_token = \"other-callback-token-0123\"\n\n[[connectors]]",
            1,
        )
    });
    let (gw, base) = start_gateway(&config).await;
    accepted(&base, &incident("MINE-1")).await;
    target.wait_for(1, Duration::from_secs(10)).await;
    let body = r#"{"reason_code": "other"}"#;
    // Another source's token: for it, the incident is not there.
    let r = complete(&base, "MINE-1", Some("other-callback-token-0123"), body).await;
    assert_eq!(r.status(), 404);
    // The other source's own incident goes to ServiceNow too; ServiceNow's token may close
    // it, but not an incident it holds no ticket for (none here: "unknown" was never routed).
    let r = complete(
        &base,
        "UNKNOWN",
        Some("servicenow-callback-token-123"),
        body,
    )
    .await;
    assert_eq!(r.status(), 404);
    let r = complete(&base, "MINE-1", Some(SOURCE_CALLBACK), body).await;
    assert_eq!(r.status(), 200, "the owning source may");
    gw.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_interrupted_by_sigkill_is_set_aside_then_resolved_without_a_second_ticket() {
    let (target, _ws, config, mut child, base) =
        slow_target_and_binary(Duration::from_secs(3)).await;
    let created = accepted(&base, &incident("CUT-1")).await;
    let created_id = first_delivery(&created);
    accepted(&base, &incident("CUT-2")).await;
    // Kill while the create is in flight (the target takes 3 s to answer).
    tokio::time::sleep(Duration::from_millis(1000)).await;
    sigkill(&mut child);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    target.set(|t| t.delay = Duration::ZERO);
    let (mut child, base) = spawn_binary(&config);
    let (_, d) = admin_get(&base, &format!("/v1/deliveries/{created_id}")).await;
    assert_eq!(d["status"], "dead");
    assert!(
        d["last_error"].as_str().unwrap().starts_with("interrupted"),
        "{d}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The target did open the ticket before the crash; nothing was sent again.
    let calls = target.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    // The admin sees sys0001 in ServiceNow and resolves the delivery with it.
    let r = client()
        .post(format!("{base}/v1/deliveries/{created_id}/resolve"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"ticket_id": "sys0001"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let calls = target.wait_for(2, Duration::from_secs(10)).await;
    sigkill(&mut child);
    assert_eq!(
        calls.iter().filter(|c| c.method == "POST").count(),
        1,
        "one ticket"
    );
    assert_eq!(calls[1].method, "PATCH");
    assert_eq!(calls[1].path, "/api/now/table/incident/sys0001");
    assert_eq!(calls[1].status, 200);
}

/// The connector looks its ticket up by `ref` before it sends a `created` whose outcome is
/// unknown.
const LOOKUP: &str = r#"timeout = "700ms"
[connectors.lookup]
url = "__BASE__/api/now/table/incident?ref={{ticket.ref}}"
found_id = "/result/0/sys_id"
"#;

fn with_lookup(base: &str) -> String {
    LOOKUP.replace("__BASE__", base)
}

/// (method, status) of the calls, and the attempts of delivery `id` as the admin API shows them.
async fn attempts_of(base: &str, id: &str) -> Vec<Value> {
    let (_, d) = admin_get(base, &format!("/v1/deliveries/{id}")).await;
    d["attempts"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_that_times_out_after_the_target_stored_it_opens_exactly_one_ticket() {
    let target = TicketSystem::start().await;
    let ws = Workspace::new();
    let config = ticket_config(&ws, &target.base, &with_lookup(&target.base));
    // The target stores the ticket at once, then answers after the connector's timeout.
    target.set(|t| t.delay = Duration::from_secs(2));
    let (gw, base) = start_gateway(&config).await;
    let created = accepted(&base, &incident("SLOW-1")).await;
    let created_id = first_delivery(&created);
    target.wait_for(1, Duration::from_secs(10)).await;
    target.set(|t| t.delay = Duration::ZERO);
    // The retry looks first and finds the ticket: the update goes to it.
    let calls = target.wait_for(2, Duration::from_secs(15)).await;
    assert_eq!(
        shape(&calls[..2]),
        [("POST", 201), ("GET", 200)],
        "{calls:?}"
    );
    let mut update = incident("SLOW-1");
    update["updateTime"] = json!(1_900_000_000);
    accepted(&base, &update).await;
    let calls = target.wait_for(3, Duration::from_secs(15)).await;
    assert_eq!(calls[2].method, "PATCH");
    assert_eq!(calls[2].path, "/api/now/table/incident/sys0001");
    assert_eq!(
        calls.iter().filter(|c| c.method == "POST").count(),
        1,
        "one ticket"
    );
    let attempts = attempts_of(&base, &created_id).await;
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert!(
        attempts[0]["error"].as_str().unwrap().contains("timed out"),
        "{attempts:?}"
    );
    assert!(attempts[0].get("lookup").is_none(), "{attempts:?}");
    assert_eq!(attempts[1]["outcome"], "delivered");
    assert!(
        attempts[1]["lookup"]
            .as_str()
            .unwrap()
            .starts_with("found ticket sys0001"),
        "{attempts:?}"
    );
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn a_create_the_target_failed_is_looked_up_then_sent_again() {
    let target = TicketSystem::start().await;
    let ws = Workspace::new();
    let config = ticket_config(&ws, &target.base, &with_lookup(&target.base));
    // A 503 may come after the target stored the ticket: look first. A failed lookup
    // settles nothing and is tried again; then it finds none and the create goes out.
    target.set(|t| {
        t.create_failures.push_back(503);
        t.lookup_failures.push_back(500);
    });
    let (gw, base) = start_gateway(&config).await;
    let created = accepted(&base, &incident("FAIL-1")).await;
    let calls = target.wait_for(4, Duration::from_secs(15)).await;
    assert_eq!(
        shape(&calls),
        [("POST", 503), ("GET", 500), ("GET", 200), ("POST", 201)],
        "{calls:?}"
    );
    let attempts = eventually(Duration::from_secs(10), || {
        let base = base.clone();
        let id = first_delivery(&created);
        async move {
            let a = attempts_of(&base, &id).await;
            (a.len() == 3).then_some(a)
        }
    })
    .await
    .expect("three attempts recorded");
    assert!(
        attempts[1]["lookup"]
            .as_str()
            .unwrap()
            .starts_with("failed (HTTP 500)")
    );
    assert_eq!(attempts[1]["outcome"], "retry");
    assert!(
        attempts[2]["lookup"]
            .as_str()
            .unwrap()
            .starts_with("no ticket found")
    );
    assert_eq!(attempts[2]["status_code"], 201);
    gw.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_slow_create_then_restart_opens_one_ticket_with_no_manual_step() {
    let target = TicketSystem::start().await;
    let ws = Workspace::new();
    let lookup = with_lookup(&target.base).replace("timeout = \"700ms\"", "timeout = \"30s\"");
    let config = ticket_config(&ws, &target.base, &lookup);
    with_shutdown_grace(&config, "500ms");
    target.set(|t| t.delay = Duration::from_secs(5));
    let (child, base) = spawn_binary(&config);
    let created = accepted(&base, &incident("TERM-1")).await;
    let created_id = first_delivery(&created);
    target.wait_for(1, Duration::from_secs(10)).await;
    // The create is under way (the target stored it and takes 5 s to answer) when SIGTERM
    // comes; the grace runs out first.
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let mut child = child;
    let exit = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    target.set(|t| t.delay = Duration::ZERO);
    let (mut child, base) = spawn_binary(&config);
    let d = eventually(Duration::from_secs(15), || {
        let (base, id) = (base.clone(), created_id.clone());
        async move {
            let (_, d) = admin_get(&base, &format!("/v1/deliveries/{id}")).await;
            (d["status"] == "delivered").then_some(d)
        }
    })
    .await
    .expect("the create is delivered after the restart");
    let calls = target.calls();
    sigkill(&mut child);
    assert_eq!(shape(&calls), [("POST", 201), ("GET", 200)], "{calls:?}");
    let attempts = d["attempts"].as_array().unwrap();
    assert!(
        attempts
            .last()
            .and_then(|a| a["lookup"].as_str())
            .is_some_and(|l| l.starts_with("found ticket sys0001")),
        "{d}"
    );
}

/// Three incidents on one ticket (one correlation key). By default a completion of one of
/// them is a note on the ticket, which stays open; the target closing its ticket (its callback
/// names one incident) completes the other open ones with it, and the platform hears of each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregated_ticket_takes_notes_until_the_target_closes_it_for_all() {
    let (target, _ws, gw, base) = ticketing(SHARED_KEY).await;
    for id in ["AGG-1", "AGG-2", "AGG-3"] {
        accepted(&base, &incident(id)).await;
    }
    target.wait_for(3, Duration::from_secs(15)).await;
    let body = r#"{"reason_code": "threat_not_valid", "notes": "scanner"}"#;
    let r = complete(&base, "AGG-1", Some(SOURCE_CALLBACK), body).await;
    assert_eq!(r.status(), 200);
    let calls = target.wait_for(4, Duration::from_secs(15)).await;
    // A note (the updated request, for AGG-1), not the resolve.
    assert_eq!(calls[3].method, "PATCH");
    assert_eq!(calls[3].body["work_notes"], "AGG-1", "{:?}", calls[3]);
    assert!(calls[3].body.get("state").is_none());
    // ServiceNow closes the record: its business rule calls back for AGG-2.
    let r = complete(&base, "AGG-2", Some("servicenow-callback-token-123"), body).await;
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["completed_along"], json!(["AGG-3"]), "{answer}");
    // The platform hears of both; ServiceNow is not asked to close what it closed.
    let calls = target.wait_for(6, Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let calls_after = target.calls();
    assert_eq!(calls_after.len(), 6, "{calls_after:?}");
    let upstream: Vec<&str> = calls[4..]
        .iter()
        .map(|c| {
            assert_eq!(c.path, "/upstream");
            c.body["incident_id"].as_str().unwrap()
        })
        .collect();
    assert_eq!(upstream.len(), 2);
    assert!(upstream.contains(&"AGG-2") && upstream.contains(&"AGG-3"));
    let (_, v) = admin_get(&base, "/v1/incidents/AGG-3").await;
    assert_eq!(v["status"], "completed");
    // A new incident of the key opens a new ticket: the old one is closed.
    accepted(&base, &incident("AGG-4")).await;
    let calls = target.wait_for(7, Duration::from_secs(15)).await;
    assert_eq!(shape(&calls[6..]), [("POST", 201)]);
    gw.stop().await.unwrap();
}
