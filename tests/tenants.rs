//! Tenants (issue 16, item 1, first part): a source bound to tenants posts only for their
//! accounts. Through the real server and store: a foreign account is a 403 problem+json naming
//! the incident's `accountId`, and nothing of the request is stored or sent. The config names a
//! mistaken tenant with the one most likely meant.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// The key of a source bound to no tenant (it posts for every account).
const HUB_KEY: &str = "hub-source-key-0123456789";

const TENANTS: &str = r#"
[[tenants]]
name = "acme"
account_id = 2

[[tenants]]
name = "globex"
account_id = 7
"#;

fn for_account(id: &str, account: Value) -> Value {
    let mut incident = incident(id);
    incident["accountId"] = account;
    incident
}

async fn post_with(base: &str, key: &str, body: &Value) -> reqwest::Response {
    post_raw(base, Some(key), Some(APPLICATION_JSON), body.to_string()).await
}

async fn stored(base: &str, id: &str) -> bool {
    let (status, _) = admin_get(base, &format!("/v1/incidents/{id}")).await;
    assert!(status == 200 || status == 404, "{id}: {status}");
    status == 200
}

async fn refused(r: reqwest::Response, pointers: &[&str]) -> Value {
    let p = problem(r, 403).await;
    assert!(
        p["type"].as_str().unwrap().ends_with("foreign-tenant"),
        "{p}"
    );
    assert!(p["detail"].as_str().unwrap().contains("acme"), "{p}");
    let got: Vec<&str> = p["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["pointer"].as_str().unwrap())
        .collect();
    assert_eq!(got, pointers, "{p}");
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_bound_to_a_tenant_posts_only_for_its_account() {
    let (receiver, _ws, config) = receiver_and_config("notify", "/hook", "").await;
    with_sources(
        &config,
        &format!(
            "{TENANTS}\n[[sources]]\nname = \"acme-edr\"\napi_key = \"{SOURCE_KEY}\"\n\
             tenants = [\"acme\"]\n\n[[sources]]\nname = \"hub\"\napi_key = \"{HUB_KEY}\"\n"
        ),
    );
    let (_gw, base) = start_gateway(&config).await;

    // Its own account: accepted and delivered.
    accepted(&base, &for_account("ACME-1", json!(2))).await;

    // Another tenant's account, an account no tenant has, and none at all: refused, kept
    // nowhere.
    for (id, account) in [
        ("GLOBEX-1", json!(7)),
        ("STRAY-1", json!(99)),
        ("NOBODY-1", Value::Null),
    ] {
        let p = refused(
            post_incident(&base, &for_account(id, account.clone())).await,
            &["#/accountId"],
        )
        .await;
        assert!(
            p["errors"][0]["detail"]
                .as_str()
                .unwrap()
                .contains(&account.to_string().replace("null", "no account")),
            "{p}"
        );
        assert!(!stored(&base, id).await, "{id} was stored");
    }
    // A batch is all or nothing: one foreign incident refuses the lot, and its index is named.
    let batch = json!([
        for_account("ACME-2", json!(2)),
        for_account("GLOBEX-2", json!(7)),
        for_account("ACME-3", json!(2)),
    ]);
    refused(post_incident(&base, &batch).await, &["#/1/accountId"]).await;
    for id in ["ACME-2", "GLOBEX-2", "ACME-3"] {
        assert!(!stored(&base, id).await, "{id} was stored");
    }

    // A source bound to no tenant posts for any account.
    let r = post_with(&base, HUB_KEY, &for_account("GLOBEX-3", json!(7))).await;
    assert_eq!(r.status(), 202);

    let sent = receiver.wait_for(2, Duration::from_secs(10)).await;
    let ids: Vec<String> = sent
        .iter()
        .map(|r| r.json()["incidentId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["ACME-1", "GLOBEX-3"]);
    // Nothing else arrives: the refused incidents were never queued.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received().len(), 2);
}

fn load(text: &str) -> Result<incident_gateway::config::Config, String> {
    incident_gateway::config::Config::from_toml(text, Path::new("gateway.toml"), |_| None)
        .map_err(|e| e.to_string())
}

fn config_with(sources_and_tenants: &str) -> String {
    format!(
        "[storage]\nurl = \"sqlite://gateway.db\"\n{sources_and_tenants}\n\
         [[connectors]]\nname = \"notify\"\nkind = \"http\"\nurl = \"http://127.0.0.1:9/hook\"\n\
         template = \"{}\"\n",
        repo().join("templates/generic/incident.json.hbs").display()
    )
}

#[test]
fn a_mistaken_tenant_is_named_with_its_line() {
    let source = |tenants: &str| {
        format!("[[sources]]\nname = \"edr\"\napi_key = \"{SOURCE_KEY}\"\ntenants = {tenants}\n")
    };
    let ok = load(&config_with(&format!(
        "{TENANTS}{}",
        source("[\"acme\", \"globex\"]")
    )));
    let config = ok.unwrap();
    assert_eq!(config.tenants.len(), 2);
    assert!(config.sources[0].tenants.as_ref().unwrap().admits(Some(7)));
    assert!(!config.sources[0].tenants.as_ref().unwrap().admits(Some(3)));

    let typo = load(&config_with(&format!("{TENANTS}{}", source("[\"acmee\"]")))).unwrap_err();
    assert!(typo.contains("sources[0].tenants[0]"), "{typo}");
    assert!(typo.contains("did you mean \"acme\""), "{typo}");
    assert!(typo.contains("line "), "{typo}");

    let none = load(&config_with(&source("[\"acme\"]"))).unwrap_err();
    assert!(none.contains("[[tenants]] defines none"), "{none}");

    let empty = load(&config_with(&format!("{TENANTS}{}", source("[]")))).unwrap_err();
    assert!(empty.contains("names no tenant"), "{empty}");

    let twice = TENANTS.replace("account_id = 7", "account_id = 2");
    let twice = load(&config_with(&format!("{twice}{}", source("[\"acme\"]")))).unwrap_err();
    assert!(twice.contains("tenants[1].account_id"), "{twice}");
    assert!(twice.contains("already tenant \"acme\"'s"), "{twice}");
}
