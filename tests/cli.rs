//! `check` and `render` as an admin runs them.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// `check` fails on `config`; what it printed.
fn check_fails(config: &Path) -> String {
    let out = check(config, &[]);
    let t = output_text(&out);
    assert!(!out.status.success(), "{t}");
    t
}

#[test]
fn check_passes_on_the_shipped_example() {
    let out = check(&repo().join("examples/gateway.toml"), EXAMPLE_ENV);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(output_text(&out).contains("ok:"));
}

/// A workspace with one connector using `body` (written as `name`) as its template, and one
/// example incident; and its config.
fn workspace_with_template(name: &str, body: &str) -> (Workspace, PathBuf) {
    let ws = Workspace::new();
    ws.write(name, body);
    ws.add_sample_incident();
    let connector = templated_connector("ticketing", "http://127.0.0.1:9/x", name, "");
    let config = ws.config("127.0.0.1:0", &connector);
    (ws, config)
}

/// `check` fails on a workspace whose connector's template is `body` (written as `name`); what
/// it printed.
fn template_fails_check(name: &str, body: &str) -> String {
    let (_ws, config) = workspace_with_template(name, body);
    check_fails(&config)
}

#[test]
fn check_names_file_and_line_of_a_syntax_error() {
    let t = template_fails_check(
        "broken.json.hbs",
        "{\n  \"a\": \"{{incidentId}}\",\n  \"b\": \"{{#if x}}\"\n}\n",
    );
    assert!(t.contains("broken.json.hbs:"), "{t}");
    assert!(t.contains("broken.json.hbs:3:9"), "line named: {t}");
    assert!(t.contains("`{{#if}}` is never closed"), "{t}");

    let t = template_fails_check("typo.json.hbs", "{\n  \"a\": \"{{incidentId}\"\n}\n");
    assert!(t.contains("typo.json.hbs:2:"), "line named: {t}");
}

#[test]
fn check_names_file_line_and_variable_that_is_unknown() {
    let t = template_fails_check(
        "unknown.json.hbs",
        "{\n  \"id\": \"{{incidentId}}\",\n  \"who\": \"{{incident.asignee}}\"\n}\n",
    );
    assert!(t.contains("unknown.json.hbs:3"), "{t}");
    assert!(t.contains("incident.asignee"), "{t}");
}

#[test]
fn check_catches_a_template_that_renders_invalid_json() {
    let t = template_fails_check("raw.json.hbs", "{\"summary\": {{{incident.summary}}}}\n");
    assert!(t.contains("renders invalid JSON"), "{t}");
}

#[test]
fn check_names_a_missing_template_file() {
    let ws = Workspace::new();
    let connector = templated_connector(
        "ticketing",
        "http://127.0.0.1:9/x",
        "nowhere/missing.json.hbs",
        "",
    );
    let config = ws.config("127.0.0.1:0", &connector);
    let t = check_fails(&config);
    assert!(t.contains("gateway.toml"), "{t}");
    assert!(t.contains("connectors[0].template"), "{t}");
    assert!(t.contains("missing.json.hbs"), "{t}");
    let line = line_of(&config, "template =");
    assert!(
        t.contains(&format!("line {line}: connectors[0].template")),
        "{t}"
    );
}

#[test]
fn config_errors_name_file_line_and_field() {
    let ws = Workspace::new();
    let cases: [(&str, &[&str]); 3] = [
        (
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_token = \"${IGW_UNSET_FOR_TEST}\"\n[storage]\nurl = \"sqlite://g.db\"\n",
            &["gateway.toml", "line 3", "IGW_UNSET_FOR_TEST"],
        ),
        (
            "[server]\nlisten = \"127.0.0.1:0\"\nmax_body_bytes = \"big\"\n[storage]\nurl = \"sqlite://g.db\"\n",
            &["line 3", "server.max_body_bytes"],
        ),
        (
            "[storage]\nurl = \"sqlite://g.db\"\n[[connectors]]\nname = \"x\"\nkind = \"carrier-pigeon\"\nurl = \"http://a\"\ntemplate = \"t\"\n",
            &["connectors[0].kind"],
        ),
    ];
    for (text, named) in cases {
        let t = check_fails(&ws.write("gateway.toml", text));
        for name in named {
            assert!(t.contains(name), "{name}: {t}");
        }
    }
}

#[test]
fn render_prints_the_exact_request_with_secrets_masked() {
    let ws = Workspace::new();
    let extra = "[connectors.headers]\n\"Authorization\" = \"Bearer ${IGW_TEST_RENDER_TOKEN}\"\n\"X-Custom\" = \"id={{humanFriendlyId}}\"\n";
    let config = ws.config(
        "127.0.0.1:0",
        &http_connector(
            "ticketing",
            "https://tickets.example.com/api/{{incidentId}}",
            extra,
        ),
    );
    let env = [("IGW_TEST_RENDER_TOKEN", "super-secret-target-token")];
    let out = render(&config, "ticketing", &sample_file(), Some("updated"), &env);
    let t = output_text(&out);
    assert!(out.status.success(), "{t}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut lines = stdout.lines();
    assert_eq!(
        lines.next(),
        Some("POST https://tickets.example.com/api/5F04D7E3-000A-8420-0002-757900000000")
    );
    assert!(stdout.contains("authorization: ********"), "{stdout}");
    assert!(stdout.contains("x-custom: id=ww1k39"), "{stdout}");
    assert!(stdout.contains("webhook-id: msg_preview"), "{stdout}");
    assert!(!t.contains("super-secret-target-token"), "{t}");
    let body = stdout.split("\n\n").nth(1).unwrap();
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["event"], "updated");
    assert_eq!(v["incident"], sample());

    let out = render(&config, "nope", &sample_file(), None, &env);
    assert!(!out.status.success());
    assert!(output_text(&out).contains("no connector named \"nope\""));
}

#[test]
fn check_warns_about_a_connector_that_never_sends_the_incident_id() {
    let (_ws, config) =
        workspace_with_template("anon.json.hbs", "{\"summary\": \"{{incident.summary}}\"}\n");
    let out = check(&config, &[]);
    let t = output_text(&out);
    assert!(out.status.success(), "a warning does not fail check: {t}");
    assert!(
        t.contains(
            "warning: anon.json.hbs: connector ticketing's requests never carry the incident's id"
        ),
        "{t}"
    );

    let (_ws, config) =
        workspace_with_template("traced.json.hbs", "{\"id\": \"{{incidentId}}\"}\n");
    let out = check(&config, &[]);
    assert!(out.status.success());
    assert!(
        !output_text(&out).contains("warning"),
        "{}",
        output_text(&out)
    );
}

#[test]
fn check_validates_against_a_connectors_target_schema_and_reports_each_problem_once() {
    let (ws, config) = workspace_with_template(
        "t.json.hbs",
        "{\"id\": \"{{incidentId}}\", \"n\": \"{{incident.summary}}\"}\n",
    );
    ws.write(
        "target.schema.json",
        r#"{"type": "object", "required": ["id", "title"], "properties": {"n": {"maxLength": 10}}}"#,
    );
    ws.write(
        "incidents/second.json",
        "{\"incidentId\": \"x-2\", \"incident\": {\"summary\": \"a summary longer than ten\"}}",
    );
    edit(&config, |text| {
        text.replace(
            "timeout = \"5s\"",
            "timeout = \"5s\"\ntarget_schema = \"target.schema.json\"",
        )
    });
    let t = check_fails(&config);
    // "title" is missing in every render (2 incidents × 3 events): one line, counted.
    let missing: Vec<&str> = t
        .lines()
        .filter(|l| l.contains("\"title\" is a required property"))
        .collect();
    assert_eq!(missing.len(), 1, "{t}");
    assert!(missing[0].contains("6 renders in all"), "{t}");
    assert!(t.contains("#/n:"), "{t}");
}

#[test]
fn an_error_inside_a_partial_names_the_partials_file() {
    let (ws, config) = workspace_with_template(
        "t.json.hbs",
        "{\"id\": \"{{incidentId}}\", \"x\": \"{{include \"part\"}}\"}\n",
    );
    ws.write(
        "templates/partials/part.txt.hbs",
        "line one\n{{incident.nope}}\n",
    );
    let t = check_fails(&config);
    assert!(t.contains("part.txt.hbs:2:"), "{t}");
    assert!(t.contains("incident.nope"), "{t}");

    ws.write(
        "templates/partials/part.txt.hbs",
        "line one\n{{#each attackers}}\n{{this}}\n",
    );
    let t = output_text(&check(&config, &[]));
    assert!(
        t.contains("part.txt.hbs:2:1: block `{{#each}}` is never closed"),
        "{t}"
    );
}

#[test]
fn a_per_event_target_schema_checks_that_events_requests() {
    let (ws, config) = workspace_with_template("t.json.hbs", "{\"id\": \"{{incidentId}}\"}\n");
    ws.write(
        "updated.schema.json",
        r#"{"type": "object", "required": ["work_notes"]}"#,
    );
    edit(&config, |text| {
        text + "[connectors.requests.updated]\nmethod = \"PATCH\"\ntarget_schema = \"updated.schema.json\"\n"
    });
    let t = check_fails(&config);
    let lines: Vec<&str> = t.lines().filter(|l| l.contains("work_notes")).collect();
    assert_eq!(lines.len(), 1, "{t}");
    assert!(lines[0].contains("event updated"), "{t}");
    assert!(
        !t.contains("event created") && !t.contains("event completed"),
        "{t}"
    );
}

#[test]
fn check_renders_the_lookup_and_warns_when_the_created_request_never_stores_the_ref() {
    let lookup = "ticket_id = \"/id\"\n[connectors.lookup]\nurl = \"http://127.0.0.1:9/find?ref={{ticket.ref}}\"\nfound_id = \"/items/0/id\"";
    let setup = |body: &str| {
        let ws = Workspace::new();
        ws.write("t.json.hbs", body);
        ws.add_sample_incident();
        let connector =
            templated_connector("ticketing", "http://127.0.0.1:9/x", "t.json.hbs", lookup);
        let config = ws.config("127.0.0.1:0", &connector);
        (ws, config)
    };
    let (_ws, config) = setup("{\"id\": \"{{incidentId}}\"}\n");
    let t = output_text(&check(&config, &[]));
    assert!(
        t.contains("warning: connector ticketing: its lookup searches for {{ticket.ref}}, but its created request never sends it"),
        "{t}"
    );
    let (_ws, config) = setup("{\"id\": \"{{incidentId}}\", \"ref\": \"{{ticket.ref}}\"}\n");
    let out = check(&config, &[]);
    assert!(out.status.success());
    assert!(
        !output_text(&out).contains("warning"),
        "{}",
        output_text(&out)
    );
    // A lookup whose template fails is an error, named as the lookup's.
    let ws = Workspace::new();
    ws.write(
        "t.json.hbs",
        "{\"id\": \"{{incidentId}}\", \"ref\": \"{{ticket.ref}}\"}\n",
    );
    ws.add_sample_incident();
    let broken = lookup.replace("{{ticket.ref}}", "{{no_such_field}}");
    let connector = templated_connector("ticketing", "http://127.0.0.1:9/x", "t.json.hbs", &broken);
    let config = ws.config("127.0.0.1:0", &connector);
    let t = check_fails(&config);
    assert!(t.contains("lookup") && t.contains("no_such_field"), "{t}");
}
