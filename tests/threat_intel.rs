//! Threat-intel enrichment (issue 16, item 3): the real server matches each incident against
//! IOC lists (a global plain list, a tenant's CSV list) at ingest; the findings (`ti`) route
//! an incident to the pager and show in the shipped PagerDuty template; a sender cannot set
//! them itself; a changed list file is read again and swapped in whole, a broken one refused
//! with the lists in force kept; `check` names a bad list's file and line.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

const BLOCKLIST: &str = "# test list\n203.0.113.66\n198.51.100.0/24\nmalware-drop.example\n";
const ACME_FEED: &str = "first_seen,indicator\n2026-12-01,192.0.2.77\n";

/// The two lists (the global plain one, acme's CSV) and the source, as the configs name them.
fn lists() -> String {
    format!(
        r#"
[[threat_intel.lists]]
name = "blocklist"
file = "intel/blocklist.txt"

[[threat_intel.lists]]
name = "acme-feed"
file = "intel/acme.csv"
format = "csv"
column = "indicator"
tenants = ["acme"]

[[sources]]
name = "detector"
api_key = "{SOURCE_KEY}"
"#
    )
}

/// Two connectors: `pager` (the shipped PagerDuty template) takes only incidents an IOC list
/// matched; `all` (the generic template, the stored incident whole) takes every one.
fn config(ws: &Workspace, receiver: &Receiver, refresh: &str) -> std::path::PathBuf {
    ws.write("intel/blocklist.txt", BLOCKLIST);
    ws.write("intel/acme.csv", ACME_FEED);
    let config = ws.config(
        "127.0.0.1:0",
        &format!(
            r#"
[[connectors]]
name = "pager"
kind = "http"
url = "{pager}"
template = "TEMPLATES/pagerduty/created.json.hbs"
priorities = {{ default = "critical" }}
vars = {{ routing_key = "R0UT1NGKEY0123456789abcdefABCDEF" }}
[[connectors.matchers]]
field = "/ti/matched"
equals = "true"

[[connectors]]
name = "all"
kind = "http"
url = "{all}"
template = "TEMPLATES/generic/incident.json.hbs"
"#,
            pager = receiver.url("/pager"),
            all = receiver.url("/all"),
        ),
    );
    with_sources(
        &config,
        &format!(
            r#"
[templates]
partials = "{partials}"
{TENANTS}
[threat_intel]
fields = ["/extra/url"]
refresh = "{refresh}"
{lists}"#,
            partials = repo().join("templates/partials").display(),
            lists = lists(),
        ),
    );
    config
}

/// The sample incident with one attacker address (and no other party that could match).
fn incident_from(id: &str, account: i64, attacker_ip: &str) -> Value {
    let mut incident = incident(id);
    incident["accountId"] = json!(account);
    incident["attacker"]["ip"] = json!(attacker_ip);
    incident
}

/// The incident ids the pager received (the shipped PagerDuty template's custom details).
fn paged_ids(received: &[Received]) -> Vec<String> {
    received
        .iter()
        .filter(|r| r.path == "/pager")
        .map(|r| {
            r.json()["payload"]["custom_details"]["incident_id"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect()
}

fn bodies(received: &[Received], path: &str, id: &str) -> Vec<Value> {
    received
        .iter()
        .filter(|r| r.path == path && String::from_utf8_lossy(&r.body).contains(id))
        .map(Received::json)
        .collect()
}

async fn metrics_text(base: &str) -> String {
    reqwest::Client::new()
        .get(format!("{base}/metrics"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the metric line starting with `series`, 0 when absent.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).map(str::trim))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Polls the metrics until `series` reaches `at_least` (the list watcher runs every second);
/// fails after 20 s.
async fn wait_for_metric(base: &str, series: &str, at_least: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = metrics_text(base).await;
        if metric(&text, series) >= at_least {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{series} never reached {at_least}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn findings_route_to_the_pager_and_show_in_its_template() {
    let receiver = Receiver::start().await;
    let ws = Workspace::new();
    let config = config(&ws, &receiver, "30s");
    let (_gw, base) = start_gateway(&config).await;

    let mut spoofed = incident_from("SPOOFED", 2, "10.9.9.9");
    spoofed["ti"] = json!({"matched": true, "lists": {"blocklist": true}, "matches": []});
    let mut by_url = incident_from("BY-URL", 7, "10.9.9.10");
    by_url["extra"]["url"] = json!("https://cdn.MALWARE-drop.example/payload.bin");
    let posted = [
        incident_from("GLOBAL-HIT", 7, "203.0.113.66"),
        incident_from("RANGE-HIT", 2, "198.51.100.200"),
        incident_from("ACME-HIT", 2, "192.0.2.77"),
        // acme's list is not looked up for globex's incidents.
        incident_from("GLOBEX-MISS", 7, "192.0.2.77"),
        incident_from("CLEAN", 2, "10.9.9.8"),
        spoofed,
        by_url,
    ];
    for incident in &posted {
        assert_eq!(post_incident(&base, incident).await.status(), 202);
    }
    // Every incident reaches `all`; four reach the pager.
    let received = receiver.wait_for(11, Duration::from_secs(15)).await;
    assert_eq!(
        received.len(),
        11,
        "{:?}",
        received.iter().map(|r| &r.path).collect::<Vec<_>>()
    );

    let paged = paged_ids(&received);
    let mut paged_sorted = paged.clone();
    paged_sorted.sort();
    assert_eq!(
        paged_sorted,
        ["ACME-HIT", "BY-URL", "GLOBAL-HIT", "RANGE-HIT"]
    );

    // The shipped PagerDuty template shows what matched, and where.
    let global = &bodies(&received, "/pager", "GLOBAL-HIT")[0];
    assert_eq!(
        global["payload"]["custom_details"]["threat_intel"],
        json!("203.0.113.66 (blocklist)")
    );
    let by_url = &bodies(&received, "/pager", "BY-URL")[0];
    assert_eq!(
        by_url["payload"]["custom_details"]["threat_intel"],
        json!("https://cdn.MALWARE-drop.example/payload.bin (blocklist)")
    );

    // The stored incident carries the findings: list, value and field.
    let acme = &bodies(&received, "/all", "ACME-HIT")[0]["incident"]["ti"];
    assert_eq!(
        acme,
        &json!({"matched": true, "lists": {"acme-feed": true, "blocklist": false},
            "matches": [{"list": "acme-feed", "value": "192.0.2.77", "field": "attackers"}]})
    );
    let globex = &bodies(&received, "/all", "GLOBEX-MISS")[0]["incident"]["ti"];
    assert_eq!(globex["matched"], json!(false));
    // What a sender wrote under `ti` is replaced by the gateway's own findings.
    let spoofed = &bodies(&received, "/all", "SPOOFED")[0]["incident"]["ti"];
    assert_eq!(
        spoofed,
        &json!({"matched": false, "lists": {"acme-feed": false, "blocklist": false}, "matches": []})
    );

    let text = metrics_text(&base).await;
    assert_eq!(
        metric(&text, "igw_threat_intel_matched_total"),
        4.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "igw_threat_intel_entries{list=\"blocklist\"}"),
        3.0
    );
    assert!(metric(&text, "igw_threat_intel_bytes{list=\"blocklist\"}") > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_list_is_swapped_in_whole_and_a_broken_one_refused() {
    let receiver = Receiver::start().await;
    let ws = Workspace::new();
    let config = config(&ws, &receiver, "1s");
    let (_gw, base) = start_gateway(&config).await;
    let list = ws.path().join("intel/blocklist.txt");

    assert_eq!(
        post_incident(&base, &incident_from("BEFORE", 7, "100.64.1.1"))
            .await
            .status(),
        202
    );
    // The feed adds an address: written aside and renamed over, as feed fetchers do.
    swap_list(&base, &list, &format!("{BLOCKLIST}100.64.1.1\n"), "success").await;
    assert_eq!(
        post_incident(&base, &incident_from("AFTER", 7, "100.64.1.1"))
            .await
            .status(),
        202
    );

    // A broken file replaces nothing: the address stays on the list in force.
    swap_list(&base, &list, "100.64.1.1\nnot!an!ioc\n", "refused").await;
    assert_eq!(
        post_incident(&base, &incident_from("BROKEN", 7, "100.64.1.1"))
            .await
            .status(),
        202
    );

    let received = receiver.wait_for(5, Duration::from_secs(15)).await;
    let paged: Vec<&str> = received
        .iter()
        .filter(|r| r.path == "/pager")
        .map(|r| {
            if String::from_utf8_lossy(&r.body).contains("AFTER") {
                "AFTER"
            } else if String::from_utf8_lossy(&r.body).contains("BROKEN") {
                "BROKEN"
            } else {
                "BEFORE"
            }
        })
        .collect();
    assert_eq!(received.len(), 5, "3 to all, 2 paged");
    let mut paged = paged;
    paged.sort();
    assert_eq!(paged, ["AFTER", "BROKEN"]);
}

/// Replaces the blocklist with `text` and waits for the watcher's reload with `outcome`;
/// either way the list in force holds 4 entries after it (the new ones, or the old kept).
async fn swap_list(base: &str, list: &Path, text: &str, outcome: &str) {
    replace_file(list, text);
    let series = format!("igw_threat_intel_reloads_total{{outcome=\"{outcome}\"}}");
    let text = wait_for_metric(base, &series, 1.0).await;
    assert_eq!(
        metric(&text, "igw_threat_intel_entries{list=\"blocklist\"}"),
        4.0,
        "{text}"
    );
}

/// Writes `text` beside `path` and renames it over (the change is seen whole).
fn replace_file(path: &Path, text: &str) {
    let aside = path.with_extension("new");
    std::fs::write(&aside, text).unwrap();
    // A new modification time even on a coarse clock: the length differs as well.
    std::fs::rename(&aside, path).unwrap();
}

#[test]
fn check_names_a_bad_list_file_and_line_and_reports_sizes() {
    let ws = Workspace::new();
    let receiver_url = "http://127.0.0.1:9/x";
    ws.add_sample_incident();
    ws.write("intel/blocklist.txt", BLOCKLIST);
    ws.write(
        "intel/acme.csv",
        "first_seen,indicator\n2026-12-01,192.0.2.77\n2026-12-02,300.1.2.3\n",
    );
    let config = ws.config("127.0.0.1:0", &http_connector("all", receiver_url, ""));
    with_sources(
        &config,
        &format!(
            r#"
[[tenants]]
name = "acme"
account_id = 2

[threat_intel]
{lists}"#,
            lists = lists()
        ),
    );
    let out = check(&config, &[]);
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    let list = ws.path().join("intel/acme.csv");
    assert!(
        text.contains(&format!(
            "threat_intel.lists[1].file: {}: line 3: \"300.1.2.3\" is not an IP address",
            list.display()
        )),
        "{text}"
    );

    ws.write("intel/acme.csv", ACME_FEED);
    // A matcher naming a list the config does not have is a typo `check` catches.
    edit(&config, |t| {
        t + "\n[[connectors.matchers]]\nfield = \"/ti/lists/acme\"\nequals = \"true\"\n"
    });
    let out = check(&config, &[]);
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("\"/ti/lists/acme\" reads nothing"), "{text}");

    edit(&config, |t| {
        t.replace("/ti/lists/acme\"", "/ti/lists/acme-feed\"")
    });
    let out = check(&config, &[]);
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("threat-intel list blocklist: 3 entries"),
        "{text}"
    );
    assert!(
        text.contains("threat-intel list acme-feed: 1 entries"),
        "{text}"
    );

    // A tenant's own matchers on a connector and the assignment rules' are held to the same.
    edit(&config, |t| {
        t + "\n[connectors.per_tenant.acme]\n[[connectors.per_tenant.acme.matchers]]\n\
             field = \"/ti/list/acme-feed\"\nequals = \"true\"\n\n\
             [[assignment]]\ngroup = \"IOC\"\n[[assignment.matchers]]\n\
             field = \"/ti/lists/blocklst\"\nequals = \"true\"\n"
    });
    let out = check(&config, &[]);
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains(
            "connectors[0].per_tenant.acme.matchers[0].field: \"/ti/list/acme-feed\" reads nothing"
        ),
        "{text}"
    );
    assert!(
        text.contains("assignment[0].matchers[0].field: \"/ti/lists/blocklst\" reads nothing"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_list_at_start_is_held_empty_and_the_gateway_runs() {
    let receiver = Receiver::start().await;
    let ws = Workspace::new();
    let config = config(&ws, &receiver, "30s");
    // The feed fetcher left a bad line behind before the gateway (re)started.
    ws.write(
        "intel/acme.csv",
        "first_seen,indicator\n2026-12-01,192.0.2.77\n2026-12-02,x y z\n",
    );
    let (_gw, base) = start_gateway(&config).await;
    for incident in [
        incident_from("GLOBAL-HIT", 2, "203.0.113.66"),
        incident_from("ACME-NOT-LOADED", 2, "192.0.2.77"),
    ] {
        assert_eq!(post_incident(&base, &incident).await.status(), 202);
    }
    let received = receiver.wait_for(3, Duration::from_secs(15)).await;
    let paged = paged_ids(&received);
    assert_eq!(paged, ["GLOBAL-HIT"]);
    let text = metrics_text(&base).await;
    assert_eq!(
        metric(&text, "igw_threat_intel_entries{list=\"acme-feed\"}"),
        0.0,
        "{text}"
    );
    // `check` refuses what the gateway runs without, naming the file and line.
    let out = check(&config, &[]);
    let shown = output_text(&out);
    assert!(!out.status.success(), "{shown}");
    assert!(shown.contains("acme.csv: line 3: \"x y z\""), "{shown}");
}
