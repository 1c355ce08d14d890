//! The template toolkit as an admin meets it: escaping by file type, partials, and every
//! example in templates/README.md rendered and compared.

mod common;

use std::path::Path;

use common::*;
use incident_gateway::config::Config;
use incident_gateway::model::{Completion, Event, TicketFacts};
use incident_gateway::render::{self, DeliveryFacts, Escape, Renderer, helpers::HELPER_NAMES};
use serde_json::{Value, json};

const HEADLINE: &str =
    "[{{humanFriendlyId}}] {{incident.summary}}\nrated {{incident.threatRating}}\n";

/// A config whose `example` connector uses `template` (written as `file_name`), with the
/// README's priorities, vars and `headline` partial.
fn setup(file_name: &str, template: &str) -> (Workspace, Config) {
    let ws = Workspace::new();
    ws.write(file_name, template);
    ws.write("partials/headline.txt.hbs", HEADLINE);
    let config = ws.write(
        "gateway.toml",
        &format!(
            r#"
[storage]
url = "sqlite://gateway.db"
[templates]
partials = "partials"
[[connectors]]
name = "example"
kind = "http"
url = "http://127.0.0.1:9/x"
template = "{file_name}"
priorities = {{ critical = "1", high = "2", medium = "3", low = "4", info = "5" }}
vars = {{ project = "SEC" }}
"#
        ),
    );
    let config = Config::load_with_env(&config, |_| None).expect("config loads");
    (ws, config)
}

fn facts_context(config: &Config, incident: &Value, event: Event) -> Value {
    let connector = config.connector("example").unwrap();
    // Its collection window gathered a second incident after it.
    let mut second = sample();
    second["incidentId"] = "5F04D7E3-000A-8420-0002-757900000001".into();
    second["humanFriendlyId"] = "ww1k40".into();
    second["incident"]["summary"] = "Brute force attempt from 5.6.7.8".into();
    let collected = render::Collected {
        incidents: vec![incident.clone(), second],
        count: 2,
    };
    render::context(
        incident,
        &DeliveryFacts {
            event,
            delivery_id: "msg_example",
            attempt: 1,
            connector,
            received_at: "2026-01-01T00:00:00.000Z",
            ticket: TicketFacts {
                key: "5F04D7E3-000A-8420-0002-757900000000".into(),
                id: Some("INC0012345".into()),
                url: Some("https://tickets.example.com/INC0012345".into()),
                reopened: false,
            },
            completion: Some(Completion {
                reason_code: "threat_not_valid".into(),
                notes: Some("Expected scanner traffic".into()),
                status_change_time: "2026-01-02T09:30:00.000Z".into(),
            }),
            collected: Some(&collected),
        },
    )
}

fn render_body(file_name: &str, template: &str, incident: &Value) -> String {
    let (_ws, config) = setup(file_name, template);
    let renderer = Renderer::new(config.partials_dir.as_deref(), &config.connectors)
        .expect("templates compile");
    let connector = config.connector("example").unwrap();
    renderer
        .render(
            connector,
            Event::Created,
            &facts_context(&config, incident, Event::Created),
        )
        .expect("renders")
        .body
}

/// Text that breaks naive templating in every content type.
const HOSTILE: &str = "q\"uote' \\back\nline\r\ttab\u{1}\u{7f} <script>alert(1)</script> &amp; {{x}} `=` é漢🚨\u{2028}";

fn hostile_incident() -> Value {
    let mut inc = sample();
    inc["incident"]["summary"] = json!(HOSTILE);
    inc
}

#[test]
fn json_templates_escape_for_json_strings() {
    let body = render_body(
        "t.json.hbs",
        "{\"s\": \"{{incident.summary}}\", \"upper\": \"{{upper incident.summary}}\", \"inc\": \"{{include \"headline\"}}\"}",
        &hostile_incident(),
    );
    let v: Value = serde_json::from_str(&body).expect("valid JSON");
    assert_eq!(v["s"], HOSTILE);
    assert_eq!(v["upper"], HOSTILE.to_uppercase());
    assert_eq!(v["inc"], format!("[ww1k39] {HOSTILE}\nrated Medium"));
}

#[test]
fn html_templates_escape_for_html() {
    let body = render_body(
        "t.html.hbs",
        "<p>{{incident.summary}}</p>",
        &hostile_incident(),
    );
    assert!(!body.contains("<script>"), "{body}");
    assert!(
        body.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp;amp;"),
        "{body}"
    );
    assert!(body.contains("q&quot;uote&#x27;"), "{body}");
}

#[test]
fn text_and_markdown_templates_do_not_escape() {
    for name in ["t.txt.hbs", "t.md.hbs", "t.hbs"] {
        let body = render_body(
            name,
            "{{incident.summary}}|{{> headline}}",
            &hostile_incident(),
        );
        assert_eq!(
            body,
            format!("{HOSTILE}|[ww1k39] {HOSTILE}\nrated Medium\n"),
            "{name}"
        );
    }
}

#[test]
fn templates_work_on_an_incident_with_only_its_id() {
    let minimal = json!({"incidentId": "ea1118de147187ba"});
    let body = render_body(
        "t.json.hbs",
        "{\"a\": {{json attackers}}, \"t\": {{json targets}}, \"level\": {{json threat_level}}, \"url\": {{json console_url}}, \"s\": \"{{default incident.summary \"(no summary)\"}}\", \"hosts\": {{json unique_hosts}}}",
        &minimal,
    );
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v,
        json!({"a": [], "t": [], "level": null, "url": null, "s": "(no summary)", "hosts": {}})
    );
}

#[test]
fn priority_without_a_rating_or_default_is_a_clear_render_error() {
    let (_ws, config) = setup("t.json.hbs", "{\"p\": \"{{priority}}\"}");
    let renderer = Renderer::new(config.partials_dir.as_deref(), &config.connectors).unwrap();
    let err = renderer
        .render(
            config.connector("example").unwrap(),
            Event::Created,
            &facts_context(&config, &json!({"incidentId": "x"}), Event::Created),
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("no priority for rating (none)"),
        "{err}"
    );
    assert!(err.to_string().starts_with("t.json.hbs:1:"), "{err}");
}

/// Every ```hbs block in templates/README.md, with the ```text block after it.
fn readme_examples(readme: &str) -> Vec<(usize, Escape, String, String)> {
    let mut examples = Vec::new();
    let lines: Vec<&str> = readme.lines().collect();
    let block = |start: usize| -> (String, usize) {
        let mut end = start + 1;
        while end < lines.len() && lines[end] != "```" {
            end += 1;
        }
        (lines[start + 1..end].join("\n"), end)
    };
    let mut i = 0;
    while i < lines.len() {
        let escape = match lines[i] {
            "```hbs" => Some(Escape::None),
            "```hbs json" => Some(Escape::Json),
            _ => None,
        };
        if let Some(escape) = escape {
            let (template, end) = block(i);
            let mut j = end + 1;
            while j < lines.len() && lines[j].trim().is_empty() {
                j += 1;
            }
            assert_eq!(
                lines.get(j),
                Some(&"```text"),
                "README line {}: an hbs block needs a text block after it",
                i + 1
            );
            let (expected, after) = block(j);
            examples.push((i + 1, escape, template, expected));
            i = after + 1;
        } else {
            i += 1;
        }
    }
    examples
}

#[test]
fn every_readme_example_renders_as_documented() {
    let readme = std::fs::read_to_string(repo().join("templates/README.md")).unwrap();
    let examples = readme_examples(&readme);
    assert!(examples.len() >= 20, "found {} examples", examples.len());
    let (_ws, config) = setup("t.txt.hbs", "{{incidentId}}");
    let renderer = Renderer::new(config.partials_dir.as_deref(), &config.connectors).unwrap();
    let context = facts_context(&config, &sample(), Event::Created);
    let mut failures = Vec::new();
    for (line, escape, template, expected) in examples {
        match renderer.render_inline(escape, &template, &context) {
            Ok(got) if got.trim_end_matches('\n') == expected => {}
            Ok(got) => failures.push(format!("README line {line}:\n  template: {template}\n  expected: {expected}\n  got:      {got}")),
            Err(e) => failures.push(format!("README line {line}: {template}\n  error: {e}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn readme_documents_every_helper_variable_and_derived_field() {
    let readme = std::fs::read_to_string(repo().join("templates/README.md")).unwrap();
    let examples: String = readme_examples(&readme)
        .into_iter()
        .map(|e| e.2)
        .collect::<Vec<_>>()
        .join("\n");
    for helper in HELPER_NAMES {
        let in_heading = readme
            .lines()
            .any(|l| l.starts_with("### ") && l.split([' ', ',']).any(|w| w == *helper));
        assert!(
            in_heading,
            "helper {helper} has no section in templates/README.md"
        );
        let used = examples.contains(&format!("{{{{{helper} "))
            || examples.contains(&format!("({helper} "))
            || examples.contains(&format!("{{{{#{helper} "))
            || examples.contains(&format!("{{{{{helper}}}}}"));
        assert!(
            used,
            "helper {helper} has no checked example in templates/README.md"
        );
    }
    let sample_context = {
        let (_ws, config) = setup("t.txt.hbs", "x");
        facts_context(&config, &sample(), Event::Created)
    };
    let incident_keys: Vec<String> = sample().as_object().unwrap().keys().cloned().collect();
    for key in sample_context.as_object().unwrap().keys() {
        if incident_keys.contains(key) {
            continue;
        }
        assert!(
            readme.contains(&format!("`{key}")),
            "gateway variable {key} is not documented"
        );
        assert!(
            examples.contains(key.as_str()),
            "gateway variable {key} has no checked example"
        );
    }
}

#[test]
fn shipped_partials_compile() {
    let dir = repo().join("templates/partials");
    if !Path::new(&dir).is_dir() {
        return;
    }
    let ws = Workspace::new();
    let config = ws.write(
        "gateway.toml",
        &format!(
            "[storage]\nurl = \"sqlite://g.db\"\n[templates]\npartials = \"{}\"\n",
            dir.display()
        ),
    );
    let config = Config::load_with_env(&config, |_| None).unwrap();
    Renderer::new(config.partials_dir.as_deref(), &config.connectors)
        .expect("shipped partials compile");
}
