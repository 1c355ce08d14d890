//! Assignment rules (issue 16, item 4): the real server renders the shipped ServiceNow, Jira
//! and Redmine templates for an in-test receiver, each ticket carrying the group and owner
//! the first applying rule gives — the incident's tenant's rules first, then the global ones,
//! a rule naming connectors only for them — and nothing where no rule applies. The config
//! names a mistaken rule with its line.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const RULES: &str = r#"
[[tenants]]
name = "acme"
account_id = 2

[[tenants.assignment]]
group = "ACME SOC"
[[tenants.assignment.matchers]]
field = "/incident_class"
regex = "authentication:.*"

[[tenants]]
name = "globex"
account_id = 7

[[assignment]]
connectors = ["redmine"]
owner = "12"
[[assignment.matchers]]
field = "/incident_class"
regex = "authentication:.*"

[[assignment]]
group = "Identity and Access"
owner = "iam-oncall"
[[assignment.matchers]]
field = "/incident_class"
regex = "authentication:.*"
"#;

fn connectors(receiver: &Receiver) -> String {
    format!(
        r#"
[[connectors]]
name = "servicenow"
kind = "http"
url = "{sn}"
template = "TEMPLATES/servicenow/created.json.hbs"
priorities = {{ default = 3 }}

[[connectors]]
name = "jira"
kind = "http"
url = "{jira}"
template = "TEMPLATES/jira/created.json.hbs"
priorities = {{ default = "Medium" }}
vars = {{ project_key = "SEC", issue_type = "Task" }}

[[connectors]]
name = "redmine"
kind = "http"
url = "{redmine}"
template = "TEMPLATES/redmine/created.json.hbs"
priorities = {{ default = 2 }}
vars = {{ project_id = "soc", tracker_id = "1" }}
"#,
        sn = receiver.url("/servicenow"),
        jira = receiver.url("/jira"),
        redmine = receiver.url("/redmine"),
    )
}

fn incident_of(id: &str, account: i64, class: &str) -> Value {
    let mut incident = incident(id);
    incident["accountId"] = json!(account);
    incident["incident_class"] = json!(class);
    incident
}

/// What each connector's `created` carried for `id`, by path.
fn bodies_for(received: &[Received], id: &str) -> std::collections::BTreeMap<String, Value> {
    received
        .iter()
        .filter(|r| String::from_utf8_lossy(&r.body).contains(id))
        .map(|r| (r.path.clone(), r.json()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_land_in_the_queue_the_first_applying_rule_names() {
    let receiver = Receiver::start().await;
    let ws = Workspace::new();
    let config = ws.config("127.0.0.1:0", &connectors(&receiver));
    with_sources(
        &config,
        &format!(
            "[templates]\npartials = \"{}\"\n{RULES}\n[[sources]]\nname = \"hub\"\napi_key = \"{HUB_KEY}\"\n",
            repo().join("templates/partials").display()
        ),
    );
    let (_gw, base) = start_gateway(&config).await;
    for incident in [
        incident_of("ACME-AUTH", 2, "authentication:activity"),
        incident_of("GLOBEX-AUTH", 7, "authentication:activity"),
        incident_of("GLOBEX-MALWARE", 7, "malware:trojan"),
    ] {
        assert_eq!(post_as(&base, HUB_KEY, &incident).await.status(), 202);
    }
    let received = receiver.wait_for(9, Duration::from_secs(15)).await;
    if received.len() != 9 {
        let (_, deliveries) = admin_get(&base, "/v1/deliveries").await;
        panic!("three connectors, three incidents: {deliveries}");
    }

    // acme: its own rule (a group) wins over the global ones, on every connector.
    let acme = bodies_for(&received, "ACME-AUTH");
    assert_eq!(acme["/servicenow"]["assignment_group"], "ACME SOC");
    assert!(
        acme["/servicenow"].get("assigned_to").is_none(),
        "{}",
        acme["/servicenow"]
    );
    assert_eq!(
        acme["/jira"]["fields"]["components"],
        json!([{"name": "ACME SOC"}])
    );
    assert!(acme["/jira"]["fields"].get("assignee").is_none());
    // A group assigns nothing in Redmine (it takes a user's id).
    assert!(acme["/redmine"]["issue"].get("assigned_to_id").is_none());

    // globex: the global rules, Redmine's own first.
    let globex = bodies_for(&received, "GLOBEX-AUTH");
    assert_eq!(
        globex["/servicenow"]["assignment_group"],
        "Identity and Access"
    );
    assert_eq!(globex["/servicenow"]["assigned_to"], "iam-oncall");
    assert_eq!(
        globex["/jira"]["fields"]["components"],
        json!([{"name": "Identity and Access"}])
    );
    assert_eq!(
        globex["/jira"]["fields"]["assignee"],
        json!({"accountId": "iam-oncall"})
    );
    assert_eq!(globex["/redmine"]["issue"]["assigned_to_id"], 12);

    // No rule applies: no assignment field at all.
    let other = bodies_for(&received, "GLOBEX-MALWARE");
    assert!(other["/servicenow"].get("assignment_group").is_none());
    assert!(other["/servicenow"].get("assigned_to").is_none());
    assert!(other["/jira"]["fields"].get("components").is_none());
    assert!(other["/jira"]["fields"].get("assignee").is_none());
    assert!(other["/redmine"]["issue"].get("assigned_to_id").is_none());

    // `render` shows the same, offline.
    let file = ws.write(
        "globex.json",
        &incident_of("GLOBEX-9", 7, "authentication:activity").to_string(),
    );
    let shown = incident_gateway::cli::render(
        &config,
        "servicenow",
        &file,
        incident_gateway::model::Event::Created,
    )
    .unwrap();
    assert!(shown.contains("\"assigned_to\": \"iam-oncall\""), "{shown}");
}

fn load(text: &str) -> Result<incident_gateway::config::Config, String> {
    incident_gateway::config::Config::from_toml(text, Path::new("gateway.toml"), |_| None)
        .map_err(|e| e.to_string())
}

#[test]
fn a_mistaken_rule_is_named_with_its_line() {
    let config = |rules: &str| {
        format!(
            "[storage]\nurl = \"sqlite://gateway.db\"\n[[tenants]]\nname = \"acme\"\n\
             account_id = 2\n{rules}\n[[connectors]]\nname = \"redmine\"\nkind = \"http\"\n\
             url = \"http://127.0.0.1:9/hook\"\ntemplate = \"{}\"\n",
            repo().join("templates/generic/incident.json.hbs").display()
        )
    };
    let ok = load(&config("[[assignment]]\ngroup = \"SOC\"\n")).unwrap();
    assert_eq!(ok.connectors[0].assignment.global.len(), 1);
    for (rules, field, says) in [
        (
            "[[assignment]]\nconnectors = [\"redmine\"]\n",
            "assignment[0].group",
            "a group, an owner, or both",
        ),
        (
            "[[assignment]]\nowner = \"12\"\nconnectors = [\"redmin\"]\n",
            "assignment[0].connectors[0]",
            "did you mean \"redmine\"",
        ),
        (
            "[[tenants.assignment]]\ngroup = \"x\"\n[[tenants.assignment.matchers]]\nfield = \"incident_class\"\nequals = \"x\"\n",
            "tenants[0].assignment[0].matchers[0].field",
            "not a JSON pointer",
        ),
        (
            "[[assignment]]\ngroup = \"x\"\nqueue = \"y\"\n",
            "assignment",
            "unknown field `queue`",
        ),
    ] {
        let e = load(&config(rules)).unwrap_err();
        assert!(e.contains(field), "{rules}: {e}");
        assert!(e.contains(says), "{rules}: {e}");
        assert!(e.contains("line "), "{rules}: {e}");
    }
}
