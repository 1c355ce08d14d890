//! Collection windows (`collect_for`) against the real server and an in-test receiver: the
//! incidents of one correlation key that arrive within the window go as one delivery listing
//! them all; the next window is another delivery; another key has its own; a tenant's window
//! is its own; and a restart inside a window neither loses nor doubles the batch.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

/// What the receiver gets: the event, the ticket's key, and the window's incidents.
const BATCH_TEMPLATE: &str = r#"{"event": "{{event}}", "key": "{{ticket.key}}", "count": {{collected_count}}, "ids": [{{#each collected}}"{{incidentId}}"{{#unless @last}}, {{/unless}}{{/each}}]}
"#;

/// A connector `hook` posting [`BATCH_TEMPLATE`] to the receiver, grouping by class.
fn batch_connector(ws: &Workspace, receiver: &Receiver, extra: &str) -> String {
    ws.connector_with_template(
        "hook",
        &receiver.url("/batch"),
        BATCH_TEMPLATE,
        &format!("correlation_key = \"{{{{incident_class}}}}\"\n{extra}"),
    )
}

/// The sample incident as `id`, of class `class`.
fn of_class(id: &str, class: &str) -> Value {
    let mut v = incident(id);
    v["incident_class"] = json!(class);
    v
}

/// Posts `incident`; the id of the delivery the answer names for it.
async fn post(base: &str, incident: &Value) -> String {
    first_delivery(&accepted(base, incident).await)
}

/// The receiver's batches, by their first incident's id.
fn batches(receiver: &Receiver) -> Vec<Value> {
    let mut all: Vec<Value> = receiver.received().iter().map(|r| r.json()).collect();
    all.sort_by_key(|b| b["ids"][0].as_str().unwrap_or_default().to_string());
    all
}

/// Waits `settle` for anything more than the `n` requests already seen.
async fn nothing_more(receiver: &Receiver, n: usize, settle: Duration) {
    tokio::time::sleep(settle).await;
    assert_eq!(receiver.received().len(), n, "{:?}", batches(receiver));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_incidents_within_the_window_go_as_one_delivery_and_the_next_as_another() {
    let receiver = Receiver::start().await;
    let ws = Workspace::new();
    let config = ws.config(
        "127.0.0.1:0",
        &batch_connector(&ws, &receiver, "collect_for = \"1500ms\""),
    );
    let (_gw, base) = start_gateway(&config).await;
    // The first two sends take their time: A4 below arrives while its window is being sent.
    receiver.script([
        Reply::status(200).after(Duration::from_millis(1500)),
        Reply::status(200).after(Duration::from_millis(1500)),
    ]);

    let posted = Instant::now();
    let window = post(&base, &of_class("A1", "auth")).await;
    let other = post(&base, &of_class("B1", "scan")).await;
    assert_ne!(window, other, "another key has a window of its own");
    // A2 and A3 join A1's window: their answers name its delivery.
    for id in ["A2", "A3"] {
        assert_eq!(post(&base, &of_class(id, "auth")).await, window, "{id}");
    }
    let got = receiver.wait_for(2, Duration::from_secs(15)).await;
    // Nothing is sent before the window ends.
    let first = got.iter().map(|r| r.at).min().unwrap();
    assert!(
        first.duration_since(posted) >= Duration::from_millis(1400),
        "sent {:?} after the first incident",
        first.duration_since(posted)
    );
    // The window is being sent (leased): A4 opens the ticket's next one, a delivery of its
    // own, and is not lost in the one under way.
    let next = post(&base, &of_class("A4", "auth")).await;
    assert_ne!(next, window);
    assert_eq!(receiver.received().len(), 2);
    assert_eq!(
        batches(&receiver),
        [
            json!({"event": "created", "key": "auth", "count": 3, "ids": ["A1", "A2", "A3"]}),
            json!({"event": "created", "key": "scan", "count": 1, "ids": ["B1"]}),
        ]
    );
    let webhook_ids: Vec<String> = receiver
        .received()
        .iter()
        .map(|r| r.header("webhook-id").unwrap())
        .collect();
    assert!(webhook_ids.contains(&window), "{webhook_ids:?}");

    let got = receiver.wait_for(3, Duration::from_secs(15)).await;
    assert_eq!(
        got[2].json(),
        json!({"event": "updated", "key": "auth", "count": 1, "ids": ["A4"]})
    );
    nothing_more(&receiver, 3, Duration::from_millis(300)).await;

    // The admin view of A2 shows the delivery that carried it.
    let (status, view) = admin_get(&base, "/v1/incidents/A2").await;
    assert_eq!(status, 200);
    let carried: Vec<&str> = view["connectors"]["hook"]["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(carried, [window.as_str()]);
    assert_eq!(ws.counts().2, 3, "three deliveries for five incidents");
}

/// acme collects over a second (its own `collect_for`); globex, without one, gets a delivery
/// per incident; `routes` shows acme's window and not globex's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_window_is_its_own() {
    let receiver = Receiver::start().await;
    let ws = Workspace::new();
    let connector = batch_connector(
        &ws,
        &receiver,
        "[connectors.per_tenant.acme]\ncollect_for = \"1s\"\n",
    );
    let config = ws.config(
        "127.0.0.1:0",
        &format!(
            "[[tenants]]\nname = \"acme\"\naccount_id = 2\n\n\
             [[tenants]]\nname = \"globex\"\naccount_id = 7\n{connector}"
        ),
    );
    let (_gw, base) = start_gateway(&config).await;
    let for_account = |id: &str, account: i64| {
        let mut v = of_class(id, "auth");
        v["accountId"] = json!(account);
        v
    };
    let acme = post(&base, &for_account("ACME-1", 2)).await;
    let globex = post(&base, &for_account("GLOBEX-1", 7)).await;
    assert_eq!(post(&base, &for_account("ACME-2", 2)).await, acme);
    let second = post(&base, &for_account("GLOBEX-2", 7)).await;
    assert_ne!(second, globex);
    receiver.wait_for(3, Duration::from_secs(15)).await;
    nothing_more(&receiver, 3, Duration::from_millis(300)).await;
    let of_key = |key: &str| -> Vec<Value> {
        receiver
            .received()
            .iter()
            .map(|r| r.json())
            .filter(|b| b["key"] == key)
            .map(|b| json!([b["event"], b["count"], b["ids"]]))
            .collect()
    };
    assert_eq!(
        of_key("acme:auth"),
        [json!(["created", 2, ["ACME-1", "ACME-2"]])]
    );
    // Without a window, each globex incident went alone, with an empty collection.
    assert_eq!(
        of_key("globex:auth"),
        [json!(["created", 0, []]), json!(["updated", 0, []])]
    );

    let file = |name: &str, account: i64| ws.write(name, &for_account("R-1", account).to_string());
    let routes = |f: &Path| incident_gateway::cli::routes(&config, f).unwrap().text;
    let acme_routes = routes(&file("acme.json", 2));
    assert!(
        acme_routes.contains("collect_for = \"1s\": the key's incidents within 1s"),
        "{acme_routes}"
    );
    let globex_routes = routes(&file("globex.json", 7));
    assert!(!globex_routes.contains("collect_for"), "{globex_routes}");
}

/// Two incidents in a window, the gateway killed (SIGKILL) and started again on the same
/// store, a third incident: one delivery, sent once the window ends, lists all three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_inside_the_window_neither_loses_nor_doubles_the_batch() {
    let receiver = Receiver::start().await;
    let ws = Workspace::new();
    let config = ws.config(
        "127.0.0.1:0",
        &batch_connector(&ws, &receiver, "collect_for = \"3s\""),
    );
    let (mut child, base) = spawn_binary(&config);
    let window = post(&base, &of_class("K1", "auth")).await;
    assert_eq!(post(&base, &of_class("K2", "auth")).await, window);
    sigkill(&mut child);
    assert!(
        receiver.received().is_empty(),
        "sent before the window ended"
    );

    let (mut child, base) = spawn_binary(&config);
    assert_eq!(
        post(&base, &of_class("K3", "auth")).await,
        window,
        "the window survived the restart"
    );
    let got = receiver.wait_for(1, Duration::from_secs(20)).await;
    nothing_more(&receiver, 1, Duration::from_millis(800)).await;
    assert_eq!(
        got[0].json(),
        json!({"event": "created", "key": "auth", "count": 3, "ids": ["K1", "K2", "K3"]})
    );
    assert_eq!(got[0].header("webhook-id").unwrap(), window);
    sigkill(&mut child);
    assert_eq!(ws.counts().2, 1, "one delivery for the three incidents");
}

fn load(text: &str) -> Result<incident_gateway::config::Config, String> {
    incident_gateway::config::Config::from_toml(text, Path::new("gateway.toml"), |_| None)
        .map_err(|e| e.to_string())
}

#[test]
fn collect_for_is_checked_at_load_by_field_and_line() {
    let with = |connector_extra: &str| {
        load(&format!(
            "[storage]\nurl = \"sqlite://gateway.db\"\n\
             [[tenants]]\nname = \"acme\"\naccount_id = 2\n\
             [[connectors]]\nname = \"jira\"\nkind = \"http\"\nurl = \"http://127.0.0.1:9/hook\"\n\
             template = \"{}\"\n{connector_extra}\n",
            repo().join("templates/generic/incident.json.hbs").display()
        ))
    };
    let ok = with(
        "correlation_key = \"{{incident_class}}\"\ncollect_for = \"30s\"\n\
         [connectors.per_tenant.acme]\ncollect_for = \"2s\"\n",
    )
    .unwrap();
    let c = &ok.connectors[0];
    assert_eq!(c.collect_for(None), Some(Duration::from_secs(30)));
    assert_eq!(c.collect_for(Some(2)), Some(Duration::from_secs(2)));
    assert_eq!(c.collect_for(Some(7)), Some(Duration::from_secs(30)));
    // A tenant's own key lets the tenant collect where the connector does not.
    let tenant_only = with(
        "[connectors.per_tenant.acme]\ncorrelation_key = \"{{asset_host_name}}\"\ncollect_for = \"1m\"\n",
    )
    .unwrap();
    assert_eq!(tenant_only.connectors[0].collect_for(None), None);
    assert_eq!(
        tenant_only.connectors[0].collect_for(Some(2)),
        Some(Duration::from_secs(60))
    );
    for (extra, field, says) in [
        (
            "correlation_key = \"{{incident_class}}\"\ncollect_for = \"0s\"",
            "connectors[0].collect_for",
            "more than 0",
        ),
        (
            "correlation_key = \"{{incident_class}}\"\ncollect_for = \"2h\"",
            "connectors[0].collect_for",
            "longer than the most a collection may wait, 1h",
        ),
        (
            "collect_for = \"30s\"",
            "connectors[0].collect_for",
            "set correlation_key too",
        ),
        (
            "[connectors.per_tenant.acme]\ncollect_for = \"30s\"",
            "connectors[0].per_tenant.acme.collect_for",
            "set correlation_key too",
        ),
        (
            "correlation_key = \"{{incident_class}}\"\n[connectors.per_tenant.acme]\ncollect_for = \"0s\"",
            "connectors[0].per_tenant.acme.collect_for",
            "more than 0",
        ),
        (
            "upstream = true\ncorrelation_key = \"{{incident_class}}\"\ncollect_for = \"30s\"",
            "connectors[0].collect_for",
            "upstream connector has no tickets",
        ),
        (
            "correlation_key = \"{{incident_class}}\"\ncollect_for = \"soon\"",
            "collect_for",
            "soon",
        ),
    ] {
        let e = with(extra).unwrap_err();
        assert!(e.contains(field), "{extra}: {e}");
        assert!(e.contains(says), "{extra}: {e}");
        assert!(e.contains("line "), "{extra}: {e}");
    }
}

#[test]
fn check_refuses_a_window_no_template_reads() {
    let ws = Workspace::new();
    ws.add_sample_incident();
    let config = ws.config(
        "127.0.0.1:0",
        &http_connector(
            "jira",
            "http://127.0.0.1:9/hook",
            "correlation_key = \"{{incident_class}}\"\ncollect_for = \"30s\"",
        ),
    );
    let out = check(&config, &[]);
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("connectors[0].collect_for: collect_for is set, but no template of \"jira\" reads `collected`"),
        "{text}"
    );
    // The shipped batch template lists them.
    edit(&config, |t| {
        t.replace("generic/incident.json.hbs", "generic/batch.json.hbs")
    });
    let out = check(&config, &[]);
    assert!(out.status.success(), "{}", output_text(&out));
}
