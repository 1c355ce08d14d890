//! Tenants (issue 16, item 1): a source bound to tenants posts only for their accounts, and an
//! admin token scoped to tenants reads and replays only theirs. Through the real server and
//! store: a foreign account is a 403 problem+json naming the incident's `accountId`, and
//! nothing of the request is stored or sent; an incident's account cannot be changed by a later
//! version; another tenant's incidents and deliveries are 404 to a scoped token, absent from its
//! lists and untouched by its replays. The config names a mistaken tenant with the one most
//! likely meant.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// The key of a source bound to no tenant (it posts for every account).
const HUB_KEY: &str = "hub-source-key-0123456789";

fn for_account(id: &str, account: Value) -> Value {
    let mut incident = incident(id);
    incident["accountId"] = account;
    incident
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
    let r = post_as(&base, HUB_KEY, &for_account("GLOBEX-3", json!(7))).await;
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

async fn call(method: reqwest::Method, base: &str, path: &str, token: &str) -> (u16, Value) {
    let r = client()
        .request(method, format!("{base}{path}"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn get(base: &str, path: &str, token: &str) -> (u16, Value) {
    call(reqwest::Method::GET, base, path, token).await
}

async fn post(base: &str, path: &str, token: &str) -> (u16, Value) {
    call(reqwest::Method::POST, base, path, token).await
}

fn problem_type(v: &Value) -> &str {
    v["type"]
        .as_str()
        .unwrap_or("")
        .rsplit('/')
        .next()
        .unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scoped_admin_token_reads_and_replays_only_its_tenants() {
    let (receiver, _ws, config) = receiver_and_config("notify", "/hook", "").await;
    with_sources(
        &config,
        &format!(
            "{TENANTS}{SCOPED_TOKENS}\n[[sources]]\nname = \"hub\"\napi_key = \"{HUB_KEY}\"\n"
        ),
    );
    // Both first sends are refused for good: one dead delivery per tenant.
    receiver.script([Reply::status(400), Reply::status(400)]);
    let (_gw, base) = start_gateway(&config).await;
    let acme = post_as(&base, HUB_KEY, &for_account("ACME-1", json!(2))).await;
    assert_eq!(acme.status(), 202);
    let acme_delivery = first_delivery(&acme.json().await.unwrap());
    settled(&base, &acme_delivery, &["dead"], Duration::from_secs(10)).await;
    let globex = post_as(&base, HUB_KEY, &for_account("GLOBEX-1", json!(7))).await;
    assert_eq!(globex.status(), 202);
    let globex_delivery = first_delivery(&globex.json().await.unwrap());
    settled(&base, &globex_delivery, &["dead"], Duration::from_secs(10)).await;

    for token in [ACME_READ, ACME_WRITE] {
        // Lists hold its tenant's rows only, whatever the filter asks for.
        let (status, list) = get(&base, "/v1/incidents", token).await;
        assert_eq!(status, 200, "{list}");
        assert_eq!(pluck(&list["incidents"], "incidentId"), ["ACME-1"]);
        let (_, list) = get(&base, "/v1/deliveries", token).await;
        assert_eq!(pluck(&list["deliveries"], "id"), [acme_delivery.as_str()]);
        let (_, list) = get(&base, "/v1/deliveries?incident=GLOBEX-1", token).await;
        assert_eq!(list["deliveries"], json!([]), "{list}");
        // Its own are found; another tenant's are not there at all.
        assert_eq!(get(&base, "/v1/incidents/ACME-1", token).await.0, 200);
        assert_eq!(
            get(&base, &format!("/v1/deliveries/{acme_delivery}"), token)
                .await
                .0,
            200
        );
        let (status, p) = get(&base, "/v1/incidents/GLOBEX-1", token).await;
        assert_eq!((status, problem_type(&p)), (404, "not-found"), "{p}");
        let (status, _) = get(&base, &format!("/v1/deliveries/{globex_delivery}"), token).await;
        assert_eq!(status, 404);
        for path in [
            format!("/v1/deliveries/{globex_delivery}/replay"),
            format!("/v1/deliveries/{globex_delivery}/resolve"),
        ] {
            let (status, p) = post(&base, &path, token).await;
            assert_eq!(status, 404, "{path}: {p}");
        }
        // What is not a tenant's to see: metrics, connectors, reload, pause.
        for (method, path) in [
            (reqwest::Method::GET, "/metrics"),
            (reqwest::Method::GET, "/v1/connectors"),
            (reqwest::Method::POST, "/v1/admin/reload"),
            (reqwest::Method::POST, "/v1/connectors/notify/pause"),
        ] {
            let (status, p) = call(method, &base, path, token).await;
            assert_eq!(
                (status, problem_type(&p)),
                (403, "scoped-token"),
                "{path}: {p}"
            );
        }
    }

    // Read-only: no replay of its own either, one at a time or in bulk.
    for path in [
        format!("/v1/deliveries/{acme_delivery}/replay"),
        "/v1/deliveries/replay".to_string(),
    ] {
        let (status, p) = post(&base, &path, ACME_READ).await;
        assert_eq!(
            (status, problem_type(&p)),
            (403, "read-only-token"),
            "{path}: {p}"
        );
    }
    // Resolving names a ticket id the gateway cannot check against the tenant: the server's
    // admin token only.
    let (status, p) = post(
        &base,
        &format!("/v1/deliveries/{acme_delivery}/resolve"),
        ACME_WRITE,
    )
    .await;
    assert_eq!((status, problem_type(&p)), (403, "scoped-token"), "{p}");
    // Write access: a bulk replay takes its tenant's dead deliveries only.
    let (status, replayed) = post(&base, "/v1/deliveries/replay", ACME_WRITE).await;
    assert_eq!(status, 202, "{replayed}");
    assert_eq!(replayed["replayed"], 1, "{replayed}");
    settled(
        &base,
        &acme_delivery,
        &["delivered"],
        Duration::from_secs(10),
    )
    .await;
    let (_, other) = admin_get(&base, &format!("/v1/deliveries/{globex_delivery}")).await;
    assert_eq!(other["status"], "dead", "{other}");

    // A later version cannot move an incident to another account: refused, nothing stored.
    let mut moved = for_account("GLOBEX-1", json!(2));
    moved["updateTime"] = json!(4_102_444_800.0);
    let r = post_as(
        &base,
        HUB_KEY,
        &json!([for_account("ACME-2", json!(2)), moved]),
    )
    .await;
    let p = problem(r, 403).await;
    assert_eq!(problem_type(&p), "foreign-tenant", "{p}");
    assert_eq!(p["errors"][0]["pointer"], "#/1/accountId", "{p}");
    assert!(!stored(&base, "ACME-2").await, "the batch was half stored");
    let (_, view) = admin_get(&base, "/v1/incidents/GLOBEX-1").await;
    assert_eq!(view["versions"], 1, "{view}");
    assert_eq!(
        get(&base, "/v1/incidents/GLOBEX-1", ACME_WRITE).await.0,
        404
    );

    // The server's admin token still sees and replays everything.
    let (_, all) = admin_get(&base, "/v1/incidents").await;
    assert_eq!(
        pluck(&all["incidents"], "incidentId"),
        ["GLOBEX-1", "ACME-1"]
    );
    let (status, _) = post(
        &base,
        &format!("/v1/deliveries/{globex_delivery}/replay"),
        ADMIN_TOKEN,
    )
    .await;
    assert_eq!(status, 202);
    settled(
        &base,
        &globex_delivery,
        &["delivered"],
        Duration::from_secs(10),
    )
    .await;
}

#[test]
fn a_scoped_token_is_checked_at_load() {
    let token =
        |fields: &str| format!("{TENANTS}\n[[admin_tokens]]\nname = \"acme-customer\"\n{fields}\n");
    let ok = load(&config_with(&token(&format!(
        "token = \"{ACME_READ}\"\ntenants = [\"acme\", \"globex\"]\naccess = \"write\""
    ))))
    .unwrap();
    assert_eq!(ok.admin_tokens.len(), 1);
    assert!(ok.admin_tokens[0].write);
    assert_eq!(ok.admin_tokens[0].tenants.accounts(), [2, 7]);
    // Never shown, even in a debug dump of the config.
    assert!(!format!("{:?}", ok.admin_tokens).contains(ACME_READ));

    for (fields, field, says) in [
        (
            format!("token = \"{ACME_READ}\"\ntenants = [\"acme\"]\naccess = \"admin\""),
            "admin_tokens",
            "unknown variant `admin`",
        ),
        (
            format!("token = \"{ACME_READ}\"\ntenants = [\"acmee\"]"),
            "admin_tokens[0].tenants[0]",
            "did you mean \"acme\"",
        ),
        (
            format!("token = \"{ACME_READ}\"\ntenants = []"),
            "admin_tokens[0].tenants",
            "names no tenant",
        ),
        (
            "token = \"short\"\ntenants = [\"acme\"]".to_string(),
            "admin_tokens[0].token",
            "at least 16 characters",
        ),
        (
            format!("token = \"{SOURCE_KEY}\"\ntenants = [\"acme\"]"),
            "admin_tokens[0].token",
            "must differ",
        ),
        (
            "tenants = [\"acme\"]".to_string(),
            "admin_tokens[0].token",
            "give token or token_file",
        ),
    ] {
        let source = format!("[[sources]]\nname = \"edr\"\napi_key = \"{SOURCE_KEY}\"\n");
        let e = load(&config_with(&format!("{source}{}", token(&fields)))).unwrap_err();
        assert!(e.contains(field), "{fields}: {e}");
        assert!(e.contains(says), "{fields}: {e}");
    }
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

    let spaced = TENANTS.replace("\"globex\"", "\"glo bex\"");
    let spaced = load(&config_with(&format!("{spaced}{}", source("[\"acme\"]")))).unwrap_err();
    assert!(spaced.contains("tenants[1].name"), "{spaced}");
    let reserved = TENANTS.replace("\"globex\"", "\"other\"");
    let reserved = load(&config_with(&format!("{reserved}{}", source("[\"acme\"]")))).unwrap_err();
    assert!(reserved.contains("tenants[1].name"), "{reserved}");
    assert!(reserved.contains("is reserved"), "{reserved}");

    let twice = TENANTS.replace("account_id = 7", "account_id = 2");
    let twice = load(&config_with(&format!("{twice}{}", source("[\"acme\"]")))).unwrap_err();
    assert!(twice.contains("tenants[1].account_id"), "{twice}");
    assert!(twice.contains("already tenant \"acme\"'s"), "{twice}");
}

/// Two connectors: a Jira-like one for every tenant, grouping by class, where acme groups by
/// host instead (over four hours) and globex's incidents go elsewhere (a matcher of its own);
/// and a pager for acme alone.
fn per_tenant_connectors(jira: &str, pager: &str) -> String {
    format!(
        r#"
[[connectors]]
name = "jira"
kind = "http"
url = "{jira}"
template = "TEMPLATES/generic/incident.json.hbs"
correlation_key = "{{{{incident_class}}}}"

[connectors.per_tenant.acme]
correlation_key = "{{{{asset_host_name}}}}"
aggregate_for = "4h"

[[connectors.per_tenant.globex.matchers]]
field = "/incident_class"
equals = "never:this"

[[connectors]]
name = "acme-pager"
kind = "http"
url = "{pager}"
template = "TEMPLATES/generic/incident.json.hbs"
tenants = ["acme"]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connectors_keys_and_windows_are_set_per_tenant_and_tickets_keep_tenants_apart() {
    let receiver = Receiver::start().await;
    let ws = Workspace::new();
    let config = ws.config(
        "127.0.0.1:0",
        &per_tenant_connectors(&receiver.url("/jira"), &receiver.url("/pager")),
    );
    with_sources(
        &config,
        &format!("{TENANTS}\n[[sources]]\nname = \"hub\"\napi_key = \"{HUB_KEY}\"\n"),
    );
    let (_gw, base) = start_gateway(&config).await;
    // All share one class and one host.
    for (id, account) in [
        ("ACME-1", json!(2)),
        ("ACME-2", json!(2)),
        ("GLOBEX-1", json!(7)),
        ("STRAY-1", json!(99)),
        ("STRAY-2", json!(99)),
        ("NONE-1", Value::Null),
    ] {
        let r = post_as(&base, HUB_KEY, &for_account(id, account)).await;
        assert_eq!(r.status(), 202, "{id}");
    }
    let tickets = |view: &Value, connector: &str| -> Vec<(String, u64)> {
        view["connectors"][connector]["tickets"]
            .as_array()
            .map(|list| {
                list.iter()
                    .map(|t| {
                        (
                            t["correlation_key"].as_str().unwrap().to_string(),
                            t["incidents"].as_u64().unwrap(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let view = |id: &'static str| {
        let base = base.clone();
        async move { admin_get(&base, &format!("/v1/incidents/{id}")).await.1 }
    };
    // acme: its own key (the host), prefixed with the tenant; a window of four hours; and
    // its pager.
    let acme = view("ACME-2").await;
    assert_eq!(
        tickets(&acme, "jira"),
        [("acme:10.1.2.3".to_string(), 2)],
        "{acme}"
    );
    assert!(
        acme["connectors"]["jira"]["tickets"][0]["aggregates_until"].is_string(),
        "{acme}"
    );
    assert_eq!(
        acme["connectors"]["jira"]["deliveries"][0]["event"],
        "updated"
    );
    // Every key carries the tenant, the incident id it defaults to included.
    assert_eq!(
        tickets(&acme, "acme-pager"),
        [("acme:ACME-2".to_string(), 1)]
    );
    // globex: its matcher keeps it from jira, and the pager is acme's alone.
    let globex = view("GLOBEX-1").await;
    assert_eq!(globex["connectors"], json!({}), "{globex}");
    // An account no tenant has, and no account: apart from every tenant's (and from each
    // other); no window (until completed).
    let stray = view("STRAY-2").await;
    assert_eq!(
        tickets(&stray, "jira"),
        [("account 99:authentication:activity".to_string(), 2)],
        "{stray}"
    );
    assert!(stray["connectors"]["jira"]["tickets"][0]["aggregates_until"].is_null());
    let none = view("NONE-1").await;
    assert_eq!(
        tickets(&none, "jira"),
        [("none:authentication:activity".to_string(), 1)],
        "{none}"
    );
    // What arrived: jira got acme's created and update, the strays' created and update and
    // the no-account created; the pager acme's two.
    let sent = receiver.wait_for(7, Duration::from_secs(10)).await;
    let mut arrived: Vec<(String, String)> = sent
        .iter()
        .map(|r| {
            (
                r.path.clone(),
                r.json()["incidentId"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    arrived.sort();
    let expected: Vec<(String, String)> = [
        ("/jira", "ACME-1"),
        ("/jira", "ACME-2"),
        ("/jira", "NONE-1"),
        ("/jira", "STRAY-1"),
        ("/jira", "STRAY-2"),
        ("/pager", "ACME-1"),
        ("/pager", "ACME-2"),
    ]
    .iter()
    .map(|(p, i)| (p.to_string(), i.to_string()))
    .collect();
    assert_eq!(arrived, expected);

    // Metrics count incidents by tenant, the label bounded by the config.
    let metrics = client()
        .get(format!("{base}/metrics"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (tenant, n) in [("acme", 2), ("globex", 1), ("other", 2), ("none", 1)] {
        let line =
            format!("igw_tenant_incidents_total{{tenant=\"{tenant}\",outcome=\"accepted\"}} {n}");
        assert!(metrics.contains(&line), "{line} not in\n{metrics}");
    }

    // `routes` says the same, for one incident of acme's.
    let incident_file = ws.write("acme.json", &for_account("ACME-9", json!(2)).to_string());
    let routes = incident_gateway::cli::routes(&config, &incident_file)
        .unwrap()
        .text;
    assert!(routes.contains("per_tenant.acme"), "{routes}");
    assert!(
        routes.contains("correlation key \"acme:10.1.2.3\", takes more incidents for 4h"),
        "{routes}"
    );
    assert!(
        routes.contains("tenants = [\"acme\"]: incident's account 2: met"),
        "{routes}"
    );
    let globex_file = ws.write(
        "globex.json",
        &for_account("GLOBEX-9", json!(7)).to_string(),
    );
    let routes = incident_gateway::cli::routes(&config, &globex_file)
        .unwrap()
        .text;
    assert!(
        routes.contains("tenants = [\"acme\"]: incident's account 7: not met"),
        "{routes}"
    );
    assert!(routes.contains("reaches: no connector"), "{routes}");
}

#[test]
fn per_tenant_settings_are_checked_at_load() {
    let with = |connector_extra: &str| {
        let text = format!(
            "[storage]\nurl = \"sqlite://gateway.db\"\n{TENANTS}\n\
             [[connectors]]\nname = \"jira\"\nkind = \"http\"\nurl = \"http://127.0.0.1:9/hook\"\n\
             template = \"{}\"\n{connector_extra}\n",
            repo().join("templates/generic/incident.json.hbs").display()
        );
        load(&text)
    };
    let ok = with("tenants = [\"acme\"]\n[connectors.per_tenant.acme]\naggregate_for = \"1h\"\n")
        .unwrap();
    assert_eq!(ok.connectors[0].per_tenant[&2].tenant, "acme");
    for (extra, field, says) in [
        (
            "[connectors.per_tenant.acmee]\naggregate_for = \"1h\"",
            "connectors[0].per_tenant.acmee",
            "did you mean \"acme\"",
        ),
        (
            "tenants = [\"acme\"]\n[connectors.per_tenant.globex]\naggregate_for = \"1h\"",
            "connectors[0].per_tenant.globex",
            "not one this connector serves",
        ),
        (
            "tenants = [\"globexx\"]",
            "connectors[0].tenants[0]",
            "did you mean \"globex\"",
        ),
        (
            "[connectors.per_tenant.acme]\naggregate_for = \"0s\"",
            "connectors[0].per_tenant.acme.aggregate_for",
            "more than 0",
        ),
        (
            "[connectors.per_tenant.acme]\nmin_threat_rating = \"severe\"",
            "connectors[0].per_tenant.acme",
            "severe",
        ),
        (
            "[connectors.per_tenant.acme]\ncorelation_key = \"x\"",
            "per_tenant",
            "correlation_key",
        ),
    ] {
        let e = with(extra).unwrap_err();
        assert!(e.contains(field), "{extra}: {e}");
        assert!(e.contains(says), "{extra}: {e}");
    }
}
