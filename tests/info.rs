//! The info API (issue 16, item 6; seed 004's `info` action): a ticketing system, with its
//! callback token, reads the incident and its ticket as the gateway sees them, scoped as
//! `complete` is. Through the real server, store and an in-test receiver.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const JIRA_CALLBACK: &str = "jira-callback-token-0123456789";
const CHAT_CALLBACK: &str = "chat-callback-token-0123456789";
const PAGER_CALLBACK: &str = "pager-callback-token-0123456789";

fn config_text(receiver: &Receiver) -> String {
    format!(
        r#"
[[connectors]]
name = "jira"
kind = "http"
url = "{jira}"
template = "TEMPLATES/generic/incident.json.hbs"
ticket_id = "/key"
callback_token = "{JIRA_CALLBACK}"

[[connectors]]
name = "chat"
kind = "http"
url = "{chat}"
template = "TEMPLATES/generic/incident.json.hbs"
callback_token = "{CHAT_CALLBACK}"

[[connectors]]
name = "pager"
kind = "http"
url = "{pager}"
template = "TEMPLATES/generic/incident.json.hbs"
min_threat_rating = "critical"
callback_token = "{PAGER_CALLBACK}"
"#,
        jira = receiver.url("/jira"),
        chat = receiver.url("/chat"),
        pager = receiver.url("/pager"),
    )
}

/// Tenants and the like; the sources are `HUB_SOURCES`.
const SOURCES: &str = r#"
[[tenants]]
name = "acme"
account_id = 2

[[assignment]]
group = "SOC Tier 1"
connectors = ["jira"]

"#;

async fn info(base: &str, id: &str, token: Option<&str>) -> (u16, Value) {
    let mut request = client().get(format!("{base}/v1/incidents/{id}/info"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let r = request.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn connectors_of(info: &Value) -> Vec<&str> {
    info["tickets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["connector"].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_reads_what_the_gateway_knows_of_its_incident() {
    let receiver = Receiver::start().await;
    // Both sends get the issue key back; the chat connector does not track ids.
    receiver.script([
        Reply::status(201).body(r#"{"key":"SEC-1"}"#),
        Reply::status(201).body(r#"{"key":"SEC-1"}"#),
    ]);
    let ws = Workspace::new();
    let config = ws.config("127.0.0.1:0", &config_text(&receiver));
    with_sources(&config, &format!("{SOURCES}{HUB_SOURCES}"));
    let (_gw, base) = start_gateway(&config).await;
    let mut incident = incident("ACME-1");
    incident["accountId"] = json!(2);
    assert_eq!(post_as(&base, HUB_KEY, &incident).await.status(), 202);
    receiver.wait_for(2, Duration::from_secs(10)).await;
    // Once jira's ticket has its id.
    let known = eventually(Duration::from_secs(10), || async {
        let (_, v) = info(&base, "ACME-1", Some(HUB_CALLBACK)).await;
        v["tickets"]
            .as_array()?
            .iter()
            .any(|t| t["ticket_id"] == "SEC-1")
            .then_some(v)
    })
    .await
    .expect("jira's ticket id is known");

    // The source sees its incident and every connector's ticket.
    assert_eq!(known["status"], "open");
    assert_eq!(known["priority"], "medium");
    assert_eq!(
        (known["accountId"].clone(), known["tenant"].clone()),
        (json!(2), json!("acme"))
    );
    assert_eq!(known["source"], "hub");
    assert!(known["completed_at"].is_null() && known["completion"].is_null());
    assert_eq!(connectors_of(&known), ["chat", "jira"]);
    let jira = &known["tickets"][1];
    assert_eq!(
        jira["assignment"],
        json!({"group": "SOC Tier 1", "owner": null})
    );
    assert_eq!(
        known["tickets"][0]["assignment"],
        json!({"group": null, "owner": null})
    );

    // A target sees its own ticket only.
    let (status, own) = info(&base, "ACME-1", Some(JIRA_CALLBACK)).await;
    assert_eq!(status, 200, "{own}");
    assert_eq!(connectors_of(&own), ["jira"]);
    assert_eq!(own["tickets"][0]["ticket_id"], "SEC-1");

    // Another source, a connector without a ticket for it, an unknown incident: not there.
    for (token, id) in [
        (OTHER_CALLBACK, "ACME-1"),
        (PAGER_CALLBACK, "ACME-1"),
        (HUB_CALLBACK, "NOPE-1"),
    ] {
        let (status, p) = info(&base, id, Some(token)).await;
        assert_eq!(status, 404, "{token} {id}: {p}");
    }
    // Only callback tokens: no token, a source's API key, the admin token get 401.
    for token in [None, Some(HUB_KEY), Some(ADMIN_TOKEN)] {
        assert_eq!(info(&base, "ACME-1", token).await.0, 401, "{token:?}");
    }

    // Completed by the target: the info says so, and when.
    let body = json!({"reason_code": "threat_not_valid", "notes": "scanner"}).to_string();
    let r = complete(&base, "ACME-1", Some(JIRA_CALLBACK), &body).await;
    assert_eq!(r.status(), 200);
    let (_, done) = info(&base, "ACME-1", Some(HUB_CALLBACK)).await;
    assert_eq!(done["status"], "completed");
    assert!(done["completed_at"].is_string(), "{done}");
    assert_eq!(done["completion"]["reason_code"], "threat_not_valid");
}
