//! `check` and `render` as an admin runs them.

mod common;

use std::process::{Command, Output};

use common::*;

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_incident-gateway"));
    cmd.args(args).env("IGW_LOG", "error");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

const EXAMPLE_ENV: &[(&str, &str)] = &[
    ("IGW_ADMIN_TOKEN", "example-admin-token-123"),
    ("IGW_SOURCE_KEY", "example-source-key-123"),
];

#[test]
fn check_passes_on_the_shipped_example() {
    let config = repo().join("examples/gateway.toml");
    let out = run(
        &["check", "--config", config.to_str().unwrap()],
        EXAMPLE_ENV,
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("ok:"));
}

/// A workspace with one connector using `body` as its template, and one example incident.
fn workspace_with_template(name: &str, body: &str) -> Workspace {
    let ws = Workspace::new();
    ws.write(name, body);
    ws.write(
        "incidents/sample.json",
        &std::fs::read_to_string(repo().join("examples/incidents/sample.json")).unwrap(),
    );
    ws.config(
        "127.0.0.1:0",
        &http_connector("ticketing", "http://127.0.0.1:9/x", "")
            .replace("TEMPLATES/generic/incident.json.hbs", name),
    );
    ws
}

#[test]
fn check_names_file_and_line_of_a_syntax_error() {
    let ws = workspace_with_template(
        "broken.json.hbs",
        "{\n  \"a\": \"{{incidentId}}\",\n  \"b\": \"{{#if x}}\"\n}\n",
    );
    let config = ws.path().join("gateway.toml");
    let out = run(&["check", "--config", config.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    let t = text(&out);
    assert!(t.contains("broken.json.hbs:"), "{t}");
    assert!(t.contains("broken.json.hbs:3:9"), "line named: {t}");
    assert!(t.contains("`{{#if}}` is never closed"), "{t}");

    let ws = workspace_with_template("typo.json.hbs", "{\n  \"a\": \"{{incidentId}\"\n}\n");
    let config = ws.path().join("gateway.toml");
    let out = run(&["check", "--config", config.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    let t = text(&out);
    assert!(t.contains("typo.json.hbs:2:"), "line named: {t}");
}

#[test]
fn check_names_file_line_and_variable_that_is_unknown() {
    let ws = workspace_with_template(
        "unknown.json.hbs",
        "{\n  \"id\": \"{{incidentId}}\",\n  \"who\": \"{{incident.asignee}}\"\n}\n",
    );
    let config = ws.path().join("gateway.toml");
    let out = run(&["check", "--config", config.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    let t = text(&out);
    assert!(t.contains("unknown.json.hbs:3"), "{t}");
    assert!(t.contains("incident.asignee"), "{t}");
}

#[test]
fn check_catches_a_template_that_renders_invalid_json() {
    let ws = workspace_with_template("raw.json.hbs", "{\"summary\": {{{incident.summary}}}}\n");
    let config = ws.path().join("gateway.toml");
    let out = run(&["check", "--config", config.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("renders invalid JSON"),
        "{}",
        text(&out)
    );
}

#[test]
fn check_names_a_missing_template_file() {
    let ws = Workspace::new();
    let config = ws.config(
        "127.0.0.1:0",
        &http_connector("ticketing", "http://127.0.0.1:9/x", "").replace(
            "TEMPLATES/generic/incident.json.hbs",
            "nowhere/missing.json.hbs",
        ),
    );
    let out = run(&["check", "--config", config.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    let t = text(&out);
    assert!(t.contains("gateway.toml"), "{t}");
    assert!(t.contains("connectors[0].template"), "{t}");
    assert!(t.contains("missing.json.hbs"), "{t}");
    let line = std::fs::read_to_string(&config)
        .unwrap()
        .lines()
        .position(|l| l.starts_with("template ="))
        .unwrap()
        + 1;
    assert!(
        t.contains(&format!("line {line}: connectors[0].template")),
        "{t}"
    );
}

#[test]
fn config_errors_name_file_line_and_field() {
    let ws = Workspace::new();
    let config = ws.write(
        "gateway.toml",
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_token = \"${IGW_UNSET_FOR_TEST}\"\n[storage]\nurl = \"sqlite://g.db\"\n",
    );
    let out = run(&["check", "--config", config.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    let t = text(&out);
    assert!(
        t.contains("gateway.toml") && t.contains("line 3") && t.contains("IGW_UNSET_FOR_TEST"),
        "{t}"
    );

    let config = ws.write(
        "gateway.toml",
        "[server]\nlisten = \"127.0.0.1:0\"\nmax_body_bytes = \"big\"\n[storage]\nurl = \"sqlite://g.db\"\n",
    );
    let out = run(&["check", "--config", config.to_str().unwrap()], &[]);
    let t = text(&out);
    assert!(!out.status.success());
    assert!(
        t.contains("line 3") && t.contains("server.max_body_bytes"),
        "{t}"
    );

    let config = ws.write(
        "gateway.toml",
        "[storage]\nurl = \"sqlite://g.db\"\n[[connectors]]\nname = \"x\"\nkind = \"carrier-pigeon\"\nurl = \"http://a\"\ntemplate = \"t\"\n",
    );
    let out = run(&["check", "--config", config.to_str().unwrap()], &[]);
    let t = text(&out);
    assert!(!out.status.success());
    assert!(t.contains("connectors[0].kind"), "{t}");
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
    let incident = repo().join("examples/incidents/sample.json");
    let out = run(
        &[
            "render",
            "--config",
            config.to_str().unwrap(),
            "--connector",
            "ticketing",
            "--incident",
            incident.to_str().unwrap(),
            "--event",
            "updated",
        ],
        &[("IGW_TEST_RENDER_TOKEN", "super-secret-target-token")],
    );
    let t = text(&out);
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

    let out = run(
        &[
            "render",
            "--config",
            config.to_str().unwrap(),
            "--connector",
            "nope",
            "--incident",
            incident.to_str().unwrap(),
        ],
        &[("IGW_TEST_RENDER_TOKEN", "super-secret-target-token")],
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("no connector named \"nope\""));
}

#[test]
fn check_warns_about_a_connector_that_never_sends_the_incident_id() {
    let ws = workspace_with_template("anon.json.hbs", "{\"summary\": \"{{incident.summary}}\"}\n");
    let config = ws.path().join("gateway.toml");
    let out = run(&["check", "--config", config.to_str().unwrap()], &[]);
    let t = text(&out);
    assert!(out.status.success(), "a warning does not fail check: {t}");
    assert!(
        t.contains(
            "warning: anon.json.hbs: connector ticketing's requests never carry the incident's id"
        ),
        "{t}"
    );

    let ws = workspace_with_template("traced.json.hbs", "{\"id\": \"{{incidentId}}\"}\n");
    let out = run(
        &[
            "check",
            "--config",
            ws.path().join("gateway.toml").to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success());
    assert!(!text(&out).contains("warning"), "{}", text(&out));
}

#[test]
fn check_validates_against_a_connectors_target_schema_and_reports_each_problem_once() {
    let ws = workspace_with_template(
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
    let config = ws.path().join("gateway.toml");
    let edited = std::fs::read_to_string(&config).unwrap().replace(
        "timeout = \"5s\"",
        "timeout = \"5s\"\ntarget_schema = \"target.schema.json\"",
    );
    std::fs::write(&config, edited).unwrap();
    let out = run(&["check", "--config", config.to_str().unwrap()], &[]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
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
    let ws = workspace_with_template(
        "t.json.hbs",
        "{\"id\": \"{{incidentId}}\", \"x\": \"{{include \"part\"}}\"}\n",
    );
    ws.write(
        "templates/partials/part.txt.hbs",
        "line one\n{{incident.nope}}\n",
    );
    let config = ws.path().join("gateway.toml");
    let out = run(&["check", "--config", config.to_str().unwrap()], &[]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("part.txt.hbs:2:"), "{t}");
    assert!(t.contains("incident.nope"), "{t}");

    ws.write(
        "templates/partials/part.txt.hbs",
        "line one\n{{#each attackers}}\n{{this}}\n",
    );
    let out = run(&["check", "--config", config.to_str().unwrap()], &[]);
    let t = text(&out);
    assert!(
        t.contains("part.txt.hbs:2:1: block `{{#each}}` is never closed"),
        "{t}"
    );
}

#[test]
fn a_per_event_target_schema_checks_that_events_requests() {
    let ws = workspace_with_template("t.json.hbs", "{\"id\": \"{{incidentId}}\"}\n");
    ws.write(
        "updated.schema.json",
        r#"{"type": "object", "required": ["work_notes"]}"#,
    );
    let config = ws.path().join("gateway.toml");
    let mut edited = std::fs::read_to_string(&config).unwrap();
    edited.push_str("[connectors.requests.updated]\nmethod = \"PATCH\"\ntarget_schema = \"updated.schema.json\"\n");
    std::fs::write(&config, edited).unwrap();
    let out = run(&["check", "--config", config.to_str().unwrap()], &[]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    let lines: Vec<&str> = t.lines().filter(|l| l.contains("work_notes")).collect();
    assert_eq!(lines.len(), 1, "{t}");
    assert!(lines[0].contains("event updated"), "{t}");
    assert!(
        !t.contains("event created") && !t.contains("event completed"),
        "{t}"
    );
}
