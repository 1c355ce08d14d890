//! The stricter `check` and the `routes` command, run as the binary an admin runs: every
//! problem at once with file, line and field; partial arguments and matcher pointers held to
//! the incident schema; inline templates located in the TOML; the built-in example incidents;
//! `${VAR}` in file paths.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// A folder beside the repository's `templates/` (symlinked), so configs name the shipped
/// templates and partials as `../templates/…`, as the examples do.
struct Setup {
    root: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        let root = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(repo().join("templates"), root.path().join("templates"))
            .unwrap();
        std::os::unix::fs::symlink(repo().join("schemas"), root.path().join("schemas")).unwrap();
        std::fs::create_dir_all(root.path().join("conf")).unwrap();
        Setup { root }
    }

    fn dir(&self) -> PathBuf {
        self.root.path().join("conf")
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }

    /// `gateway.toml` with the standard head, the shipped partials and `connectors`.
    fn config(&self, connectors: &str) -> PathBuf {
        self.write(
            "gateway.toml",
            &format!(
                "[server]\nlisten = \"127.0.0.1:0\"\n\n[storage]\nurl = \"sqlite://g.db\"\n\n[templates]\npartials = \"../templates/partials\"\n\n{connectors}"
            ),
        )
    }

    fn incidents(&self) {
        std::os::unix::fs::symlink(
            repo().join("examples/incidents"),
            self.dir().join("incidents"),
        )
        .unwrap();
    }
}

/// The number (from 1) of the line of `file` that contains `text`, the `nth` such (from 0).
fn line_with(file: &Path, text: &str, nth: usize) -> usize {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(text))
        .nth(nth)
        .unwrap_or_else(|| panic!("no {text:?} in {}", file.display()))
        .0
        + 1
}

fn failing(out: &std::process::Output) -> String {
    let t = output_text(out);
    assert!(!out.status.success(), "check passed:\n{t}");
    t
}

const GENERIC: &str = "../templates/generic/incident.json.hbs";

#[test]
fn every_config_error_is_named_at_once_with_its_line_and_a_count() {
    let s = Setup::new();
    let config = s.config(&format!(
        r#"[[connectors]]
name = "first"
kind = "carrier-pigeon"
url = "http://127.0.0.1:9/a"
template = "{GENERIC}"

[[connectors]]
name = "second"
kind = "http"
url = "http://127.0.0.1:9/b"
template = "missing.json.hbs"

[[connectors]]
name = "third"
kind = "http"
url = "http://127.0.0.1:9/c"
template = "{GENERIC}"
[[connectors.matchers]]
field = "/incident_class"
regex = "(unclosed"

[delivery]
concurrency = 0
"#
    ));
    let t = failing(&check(&config, &[]));
    let file = config.display().to_string();
    for (field, text) in [
        ("connectors[0].kind", "kind = \"carrier-pigeon\""),
        ("connectors[1].template", "missing.json.hbs"),
        ("connectors[2].matchers[0].regex", "(unclosed"),
        ("delivery.concurrency", "concurrency = 0"),
    ] {
        let line = line_with(&config, text, 0);
        assert!(
            t.contains(&format!("{file}: line {line}: {field}")),
            "{field} at line {line}:\n{t}"
        );
    }
    assert!(t.contains("4 problem(s) found"), "{t}");
}

#[test]
fn template_compile_errors_of_every_connector_are_named_at_once() {
    let s = Setup::new();
    s.incidents();
    s.write("a.json.hbs", "{\"id\": \"{{incidentId}\"}\n");
    s.write(
        "b.json.hbs",
        "{\n\"id\": \"{{incidentId}}\",\n\"x\": \"{{#if x}}\"\n}\n",
    );
    let config = s.config(
        r#"[[connectors]]
name = "a"
kind = "http"
url = "http://127.0.0.1:9/a"
template = "a.json.hbs"

[[connectors]]
name = "b"
kind = "http"
url = "http://127.0.0.1:9/b"
template = "b.json.hbs"
"#,
    );
    let t = failing(&check(&config, &[]));
    assert!(t.contains("a.json.hbs:1:"), "{t}");
    assert!(t.contains("b.json.hbs:3:"), "{t}");
    assert!(t.contains("2 problem(s) found"), "{t}");
}

#[test]
fn a_partial_argument_that_reads_no_field_is_an_error_with_a_suggestion() {
    let s = Setup::new();
    s.incidents();
    let template = s.write(
        "slack.json.hbs",
        "{\n  \"id\": \"{{incidentId}}\",\n  \"text\": \"{{> slack_text value=incidentid}}\",\n  \"who\": \"{{> oneline value=attacker.ipp max=10}}\",\n  \"fine\": \"{{> oneline value=incident.summary}} {{> oneline value=(join attackers \", \")}} {{> oneline value=ticket.key}} {{> oneline value=connector.vars.project}}\"\n}\n",
    );
    let config = s.config(
        r#"[[connectors]]
name = "chat"
kind = "http"
url = "http://127.0.0.1:9/chat"
template = "slack.json.hbs"
vars = { project = "SEC" }
"#,
    );
    let out = check(&config, &[]);
    let t = failing(&out);
    let line = line_with(&template, "value=incidentid", 0);
    assert!(
        t.contains(&format!("slack.json.hbs:{line}:")) && t.contains("`incidentid` reads nothing"),
        "{t}"
    );
    assert!(t.contains("did you mean `incidentId`?"), "{t}");
    let line = line_with(&template, "attacker.ipp", 0);
    assert!(t.contains(&format!("slack.json.hbs:{line}:")), "{t}");
    assert!(t.contains("did you mean `attacker.ip`?"), "{t}");
    assert!(t.contains("2 problem(s) found"), "only the two typos:\n{t}");
}

#[test]
fn a_matcher_on_a_pointer_no_incident_has_is_an_error_with_a_suggestion() {
    let s = Setup::new();
    s.incidents();
    // An example incident's own extra field is the admin's to match on.
    s.write(
        "own/extra.json",
        r#"{"incidentId": "own-1", "tenant": {"tier": "gold"}}"#,
    );
    let config = s.config(&format!(
        r#"[[connectors]]
name = "oncall"
kind = "http"
url = "http://127.0.0.1:9/oncall"
template = "{GENERIC}"
[[connectors.matchers]]
field = "/incident/threatRatin"
equals = "high"
[[connectors.matchers]]
field = "/tenant/tier"
equals = "gold"
[[connectors.matchers]]
field = "/events/0/signature_name"
regex = ".*"
"#
    ));
    let t = failing(&check(&config, &[]));
    let line = line_with(&config, "/incident/threatRatin", 0);
    assert!(
        t.contains(&format!(
            "line {line}: connectors[0].matchers[0].field: \"/incident/threatRatin\" reads nothing"
        )),
        "{t}"
    );
    assert!(t.contains("did you mean /incident/threatRating?"), "{t}");
    // Without the example that has it, /tenant/tier is unknown too.
    assert!(t.contains("connectors[0].matchers[1].field"), "{t}");
    assert!(t.contains("2 problem(s) found"), "{t}");
    let out = run(
        &[
            "check",
            "--config",
            config.to_str().unwrap(),
            "--incidents",
            s.dir().join("own").to_str().unwrap(),
        ],
        &[],
    );
    let t = failing(&out);
    assert!(!t.contains("matchers[1]"), "{t}");
    assert!(t.contains("1 problem(s) found"), "{t}");
}

#[test]
fn inline_templates_name_their_toml_line() {
    let s = Setup::new();
    s.incidents();
    let config = s.config(&format!(
        r#"[[connectors]]
name = "hook"
kind = "http"
url = "http://127.0.0.1:9/{{{{incidentId}}}}/{{{{#if x}}}}"
template = "{GENERIC}"
[connectors.headers]
"X-Trace" = "{{{{nope}}"

[[connectors]]
name = "mail"
kind = "smtp"
smtp_url = "smtp://127.0.0.1:25"
from = "gateway@example.com"
to = ["soc@example.com"]
subject = "{{{{incident.summary}}}}"
template = "../templates/email/body.txt.hbs"

[[connectors]]
name = "tickets"
kind = "http"
url = "http://127.0.0.1:9/t"
template = "{GENERIC}"
[connectors.requests.updated]
url = "http://127.0.0.1:9/t/{{{{incident.sumary}}}}"
"#
    ));
    let t = failing(&check(&config, &[]));
    let updated = line_with(&config, "incident.sumary", 0);
    assert!(
        t.contains(&format!(
            "{}: line {updated}: connectors[2].requests.updated.url: column 22: variable `incident.sumary`",
            config.display()
        )),
        "{t}"
    );
    let file = config.display().to_string();
    let url = line_with(&config, "{{#if x}}", 0);
    assert!(
        t.contains(&format!("{file}: line {url}: connectors[0].url: column ")),
        "{t}"
    );
    let header = line_with(&config, "X-Trace", 0);
    assert!(
        t.contains(&format!(
            "{file}: line {header}: connectors[0].headers.X-Trace: column "
        )),
        "{t}"
    );
    let subject = line_with(&config, "subject = ", 0);
    assert!(
        t.contains(&format!(
            "{file}: line {subject}: connectors[1].subject: column 1: variable `incident.summary` is not in the incident"
        )),
        "{t}"
    );
    // The same field's problem is named once, not once per event.
    assert_eq!(t.matches("connectors[0].url:").count(), 1, "{t}");
    assert_eq!(t.matches("connectors[1].subject:").count(), 1, "{t}");
}

#[test]
fn without_an_incidents_folder_check_renders_the_built_in_examples_and_says_so() {
    let s = Setup::new();
    s.write(
        "bad.json.hbs",
        "{\"id\": \"{{incidentId}}\", \"s\": \"{{incident.summary}}\"}\n",
    );
    let config = s.config(
        r#"[[connectors]]
name = "hook"
kind = "http"
url = "http://127.0.0.1:9/x"
template = "bad.json.hbs"
"#,
    );
    // The built-in minimal incident has no summary: the strict template fails on it.
    let t = failing(&check(&config, &[]));
    assert!(t.contains("built into the gateway"), "{t}");
    assert!(t.contains("--incidents"), "{t}");
    assert!(t.contains("(built in) minimal.json"), "{t}");

    // An empty incidents/ says so, and how to give others.
    std::fs::create_dir_all(s.dir().join("incidents")).unwrap();
    let t = failing(&check(&config, &[]));
    assert!(t.contains("holds no *.json"), "{t}");
    assert!(t.contains("--incidents DIR"), "{t}");

    // Asked for by name, an empty folder is an error of its own.
    let out = run(
        &[
            "check",
            "--config",
            config.to_str().unwrap(),
            "--incidents",
            s.dir().join("incidents").to_str().unwrap(),
        ],
        &[],
    );
    let t = failing(&out);
    assert!(t.contains("no example incidents (*.json) to render"), "{t}");

    // With a template that copes, the built-in examples pass and are counted.
    s.write(
        "bad.json.hbs",
        "{\"id\": \"{{incidentId}}\", \"s\": \"{{default incident.summary incidentId}}\"}\n",
    );
    std::fs::remove_dir(s.dir().join("incidents")).unwrap();
    let out = check(&config, &[]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(output_text(&out).contains("(5 example incidents"));
}

#[test]
fn variables_expand_in_file_paths() {
    let s = Setup::new();
    s.incidents();
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::write(
        elsewhere.path().join("body.json.hbs"),
        "{\"id\": \"{{incidentId}}\", \"line\": \"{{> oneline value=incidentId}}\"}\n",
    )
    .unwrap();
    let config = s.config(
        r#"[[connectors]]
name = "hook"
kind = "http"
url = "http://127.0.0.1:9/x"
template = "${IGW_TEMPLATES}/body.json.hbs"
target_schema = "${IGW_SCHEMAS:-../schemas}/targets/generic-envelope.schema.json"
"#,
    );
    // `partials` too.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("../templates/partials", "${IGW_PARTIALS}");
    std::fs::write(&config, text).unwrap();
    let partials = repo().join("templates/partials");
    let env = [
        ("IGW_TEMPLATES", elsewhere.path().to_str().unwrap()),
        ("IGW_PARTIALS", partials.to_str().unwrap()),
    ];
    let out = check(&config, &env);
    let t = output_text(&out);
    // The envelope schema wants more than this body has: the schema was found and applied.
    assert!(t.contains("output does not satisfy"), "{t}");
    assert!(t.contains("generic-envelope.schema.json"), "{t}");
    // Paths are not secrets: the folder is shown, not masked.
    assert!(!t.contains("********"), "{t}");

    // An unset variable in a path names its line and field.
    let out = check(&config, &env[1..]);
    let t = failing(&out);
    let line = line_with(&config, "template = ", 0);
    assert!(
        t.contains(&format!("line {line}, column 12: connectors[0].template: environment variable IGW_TEMPLATES is not set")),
        "{t}"
    );
}

#[test]
fn routes_shows_each_connector_and_every_matcher_with_its_value() {
    let config = repo().join("examples/gateway.toml");
    let out = run(
        &[
            "routes",
            "--config",
            config.to_str().unwrap(),
            "--incident",
            sample_file().to_str().unwrap(),
        ],
        EXAMPLE_ENV,
    );
    let t = output_text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("ticketing: reached\n  no matchers: takes every incident"),
        "{t}"
    );
    assert!(t.contains("auth-oncall: reached"), "{t}");
    assert!(
        t.contains("  /incident_class regex = \"authentication:.*\": actual \"authentication:activity\": met"),
        "{t}"
    );
    assert!(t.contains("reaches: ticketing, auth-oncall"), "{t}");

    // An incident of another class and a datacenter: each failing step is named.
    let ws = tempfile::tempdir().unwrap();
    let incident = ws.path().join("dc.json");
    std::fs::write(
        &incident,
        r#"{"incidentId": "dc-1", "incident_class": "malware:activity", "asset_deployment_type": "datacenter", "incident_threat_rating": "low"}"#,
    )
    .unwrap();
    let out = run(
        &[
            "routes",
            "--config",
            config.to_str().unwrap(),
            "--incident",
            incident.to_str().unwrap(),
        ],
        EXAMPLE_ENV,
    );
    let t = output_text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("auth-oncall: not reached"), "{t}");
    assert!(
        t.contains("min_threat_rating = \"medium\": incident's rating low: not met"),
        "{t}"
    );
    assert!(
        t.contains(
            "/incident_class regex = \"authentication:.*\": actual \"malware:activity\": not met"
        ),
        "{t}"
    );
    assert!(
        t.contains(
            "/asset_deployment_type not_one_of = [\"datacenter\"]: actual \"datacenter\": not met"
        ),
        "{t}"
    );
    assert!(t.contains("reaches: ticketing\n"), "{t}");
    assert!(!t.contains("reads nothing"), "{t}");

    // A matcher on a field no incident has says so under its line.
    let typo = ws.path().join("typo.toml");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("field = \"/incident_class\"", "field = \"/incident_clas\"")
        .replace(
            "../templates",
            &repo().join("templates").display().to_string(),
        );
    std::fs::write(&typo, text).unwrap();
    let out = run(
        &[
            "routes",
            "--config",
            typo.to_str().unwrap(),
            "--incident",
            sample_file().to_str().unwrap(),
        ],
        EXAMPLE_ENV,
    );
    let t = output_text(&out);
    assert!(
        t.contains("/incident_clas regex = \"authentication:.*\": actual missing (compared as \"\"): not met\n    \"/incident_clas\" reads nothing"),
        "{t}"
    );
    assert!(t.contains("did you mean /incident_class?"), "{t}");

    // An incident the schema refuses reaches nothing, and the command fails.
    std::fs::write(&incident, r#"{"summary": "no id"}"#).unwrap();
    let out = run(
        &[
            "routes",
            "--config",
            config.to_str().unwrap(),
            "--incident",
            incident.to_str().unwrap(),
        ],
        EXAMPLE_ENV,
    );
    let t = output_text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("refused: the incident fails the schema"), "{t}");
    assert!(t.contains("reaches: no connector"), "{t}");
}

/// No false errors: every shipped template and partial, checked through the shipped example
/// configs and each body template on its own, passes the field checks.
#[test]
fn every_shipped_template_passes_the_field_checks() {
    for config in ["examples/gateway.toml", "examples/connectors.toml"] {
        let out = check(&repo().join(config), EXAMPLE_ENV);
        assert!(out.status.success(), "{config}: {}", output_text(&out));
    }
    let s = Setup::new();
    s.incidents();
    let mut connectors = String::new();
    let mut n = 0;
    for dir in std::fs::read_dir(repo().join("templates")).unwrap() {
        let dir = dir.unwrap().path();
        if !dir.is_dir() || dir.ends_with("partials") {
            continue;
        }
        for file in std::fs::read_dir(&dir).unwrap() {
            let file = file.unwrap().path();
            let shown = file.strip_prefix(repo()).unwrap().display().to_string();
            connectors.push_str(&format!(
                "[[connectors]]\nname = \"t{n}\"\nkind = \"http\"\nurl = \"http://127.0.0.1:9/x\"\ntemplate = \"../{shown}\"\nvars = {{ project = \"SEC\", issue_type = \"Task\", tracker_id = \"1\", project_id = \"1\", priority_id = \"1\", queue = \"General\", closed_status_id = \"5\", routing_key = \"k\", team = \"t\", assignment_group = \"g\", caller = \"c\", category = \"c\" }}\n\n"
            ));
            n += 1;
        }
    }
    assert!(n >= 20, "{n} templates");
    let config = s.config(&connectors);
    let out = check(&config, &[]);
    let t = output_text(&out);
    for line in t.lines().filter(|l| l.starts_with("error:")) {
        assert!(
            !line.contains("reads nothing"),
            "a shipped template fails the field check: {line}"
        );
    }
}

/// A partial's own partial arguments are judged when every call of it keeps the top scope;
/// one rendered for each item of a list reads the item's fields, which are not judged.
#[test]
fn partials_are_judged_in_the_scope_they_are_called_in() {
    let s = Setup::new();
    s.incidents();
    let oneline =
        std::fs::read_to_string(repo().join("templates/partials/oneline.txt.hbs")).unwrap();
    s.write("parts/oneline.txt.hbs", &oneline);
    s.write("parts/item.txt.hbs", "{{> oneline value=signature_name}}");
    let top = s.write("parts/top.txt.hbs", "\n{{> oneline value=incident_clas}}");
    s.write(
        "body.txt.hbs",
        "{{incidentId}}\n{{> top}}\n{{#if events}}{{#each events}}{{> item}}{{/each}}{{/if}}\n",
    );
    let config = s.config(
        r#"[[connectors]]
name = "hook"
kind = "http"
url = "http://127.0.0.1:9/x"
template = "body.txt.hbs"
"#,
    );
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("../templates/partials", "parts");
    std::fs::write(&config, text).unwrap();
    let t = failing(&check(&config, &[]));
    assert!(
        t.contains(&format!(
            "{}:2:1: `{{{{> oneline value=…}}}}`: `incident_clas` reads nothing",
            top.display()
        )),
        "{t}"
    );
    assert!(t.contains("did you mean `incident_class`?"), "{t}");
    assert!(!t.contains("signature_name"), "{t}");
    assert!(t.contains("1 problem(s) found"), "{t}");
}

#[test]
fn render_names_the_toml_line_of_an_inline_template_that_fails() {
    let s = Setup::new();
    let config = s.config(&format!(
        r#"[[connectors]]
name = "hook"
kind = "http"
url = "http://127.0.0.1:9/{{{{incident.sumary}}}}"
template = "{GENERIC}"
"#
    ));
    let out = render(&config, "hook", &sample_file(), None, &[]);
    let t = output_text(&out);
    assert!(!out.status.success(), "{t}");
    let line = line_with(&config, "incident.sumary", 0);
    assert!(
        t.contains(&format!(
            "{}: line {line}: connectors[0].url: column 20: variable `incident.sumary`",
            config.display()
        )),
        "{t}"
    );
}

#[test]
fn type_errors_and_unknown_fields_of_every_part_are_named_at_once() {
    let s = Setup::new();
    let config = s.write(
        "gateway.toml",
        r#"[server]
max_body_bytes = "big"

[storage]
url = "sqlite://g.db"

[[connectors]]
name = "a"
kind = "http"
url = "http://127.0.0.1:9/a"
templte = "x.json.hbs"

[[connectors]]
name = "b"
kind = "http"
url = "http://127.0.0.1:9/b"
template = "x.json.hbs"
[connectors.retry]
max_attempts = "many"
"#,
    );
    let t = failing(&check(&config, &[]));
    let file = config.display().to_string();
    for (text, field) in [
        ("max_body_bytes", "server.max_body_bytes"),
        ("templte", "connectors[0].templte"),
        ("max_attempts", "connectors[1].retry.max_attempts"),
    ] {
        let line = line_with(&config, text, 0);
        assert!(
            t.contains(&format!("{file}: line {line}, column ")) && t.contains(field),
            "{field}:\n{t}"
        );
    }
    assert!(t.contains("(did you mean `template`?)"), "{t}");
    assert!(t.contains("3 problem(s) found"), "{t}");
}
