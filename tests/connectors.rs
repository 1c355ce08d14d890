//! The shipped connectors (examples/connectors.toml and templates/<target>/): every one renders,
//! for every event, against the example incidents and against hostile variants of the sample,
//! the request its target documents for that event (method, URL with the ticket in it, a body
//! the event's own schema in schemas/targets/ accepts, within the target's size limits), also
//! with hostile completion notes and ticket ids; golden snapshots of what each sends; and
//! `check` / `render` as an admin runs them.

mod common;
#[path = "support/hostile.rs"]
mod hostile;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::*;
use hostile::{NASTY, UNICODE};
use incident_gateway::config::Config;
use incident_gateway::connector::Target;
use incident_gateway::model::{Completion, Event, TicketFacts};
use incident_gateway::render::{self, DeliveryFacts, RenderedRequest, Renderer};
use serde_json::{Value, json};

const EVENTS: [Event; 3] = [Event::Created, Event::Updated, Event::Completed];

/// Every shipped connector and its `target_schema`: the schema `check` applies to the body of
/// every event (for the ticketing connectors, one that accepts each of their request shapes).
const SHIPPED: &[(&str, &str)] = &[
    ("servicenow", "servicenow"),
    ("jira", "jira"),
    ("pagerduty", "pagerduty-event"),
    ("opsgenie", "opsgenie"),
    ("slack", "slack-webhook"),
    ("teams", "teams-adaptive-card"),
    ("redmine", "redmine"),
    ("rt", "rt"),
    ("generic", "generic-envelope"),
];

/// Every shipped email connector (mail to a ticketing system's mail gateway).
const SHIPPED_MAIL: &[&str] = &["email"];

/// The connectors that keep a ticket (or alert) open across events: `updated` and `completed`
/// address it, so they send other requests than `created`.
const TICKETING: [&str; 6] = [
    "servicenow",
    "jira",
    "pagerduty",
    "opsgenie",
    "redmine",
    "rt",
];

/// The ticket id `render_with` gives `updated` and `completed`, as the created response would.
const GOLDEN_TICKET_ID: &str = "TICKET-GOLDEN-1";

/// The schema of the one request `connector` sends for `event`: stricter than the connector's
/// `target_schema`, which cannot tell the events apart.
fn request_schema(connector: &str, event: Event) -> &'static str {
    match (connector, event) {
        ("servicenow", Event::Created) => "servicenow-incident",
        ("servicenow", _) => "servicenow-incident-update",
        ("jira", Event::Created) => "jira-issue",
        ("jira", Event::Updated) => "jira-comment",
        ("jira", Event::Completed) => "jira-transition",
        ("pagerduty", _) => "pagerduty-event",
        ("opsgenie", Event::Created) => "opsgenie-alert",
        ("opsgenie", Event::Updated) => "opsgenie-note",
        ("opsgenie", Event::Completed) => "opsgenie-close",
        ("redmine", Event::Created) => "redmine-issue",
        ("redmine", _) => "redmine-issue-update",
        ("rt", Event::Created) => "rt-ticket",
        ("rt", _) => "rt-correspond",
        ("slack", _) => "slack-webhook",
        ("teams", _) => "teams-adaptive-card",
        ("generic", _) => "generic-envelope",
        (other, _) => panic!("{other} is not a shipped connector"),
    }
}

const SERVICENOW: &str = "https://example.service-now.com/api/now/table/incident";
const JIRA: &str = "https://example.atlassian.net/rest/api/2/issue";
const OPSGENIE: &str = "https://api.opsgenie.com/v2/alerts";
const REDMINE: &str = "https://redmine.example.com/issues";
const RT: &str = "https://rt.example.com/REST/2.0/ticket";
const SLACK: &str = "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX";
const TEAMS: &str = "https://example.webhook.office.com/webhookb2/team-id@tenant-id/IncomingWebhook/connector-id/owner-id";

/// The method and URL each event sends, `{id}` standing for the ticket id and `{key}` for the
/// correlation key (each as the URL template writes it: percent-encoded).
fn expected_request(connector: &str, event: Event) -> (&'static str, String) {
    use Event::*;
    let fields = "?sysparm_fields=sys_id,number";
    let by_alias = "?identifierType=alias";
    match (connector, event) {
        ("servicenow", Created) => ("POST", format!("{SERVICENOW}{fields}")),
        ("servicenow", _) => ("PATCH", format!("{SERVICENOW}/{{id}}{fields}")),
        ("jira", Created) => ("POST", JIRA.into()),
        ("jira", Updated) => ("POST", format!("{JIRA}/{{id}}/comment")),
        ("jira", Completed) => ("POST", format!("{JIRA}/{{id}}/transitions")),
        ("pagerduty", _) => ("POST", "https://events.pagerduty.com/v2/enqueue".into()),
        ("opsgenie", Created) => ("POST", OPSGENIE.into()),
        ("opsgenie", Updated) => ("POST", format!("{OPSGENIE}/{{key}}/notes{by_alias}")),
        ("opsgenie", Completed) => ("POST", format!("{OPSGENIE}/{{key}}/close{by_alias}")),
        ("redmine", Created) => ("POST", format!("{REDMINE}.json")),
        ("redmine", _) => ("PUT", format!("{REDMINE}/{{id}}.json")),
        ("rt", Created) => ("POST", RT.into()),
        // A reply; `completed` sets Status with it.
        ("rt", _) => ("POST", format!("{RT}/{{id}}/correspond")),
        ("slack", _) => ("POST", SLACK.into()),
        ("teams", _) => ("POST", TEAMS.into()),
        ("generic", _) => (
            "POST",
            "https://soar.example.com/hooks/incident-gateway".into(),
        ),
        (other, _) => panic!("{other} is not a shipped connector"),
    }
}

/// A value as the URL template writes it: everything but RFC 3986's unreserved characters
/// percent-encoded.
fn url_component(value: &str) -> String {
    const COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(value, COMPONENT).to_string()
}

/// The URL `connector` sends `event` to, for this ticket.
fn expected_url(connector: &str, event: Event, ticket: &TicketFacts) -> String {
    let (_, url) = expected_request(connector, event);
    let mut url = url.replace("{key}", &url_component(&ticket.key));
    if let Some(id) = &ticket.id {
        url = url.replace("{id}", &url_component(id));
    }
    url
}

/// Teams refuses messages over 28 KB.
const TEAMS_MAX_BYTES: usize = 28 * 1024;
/// PagerDuty refuses events over 512 KB.
const PAGERDUTY_MAX_BYTES: usize = 512 * 1024;
/// Opsgenie keeps at most 8000 characters of `details` (keys and values).
const OPSGENIE_DETAILS_MAX_CHARS: usize = 8000;

fn example_config_path() -> PathBuf {
    repo().join("examples/connectors.toml")
}

/// The example config with only the two variables it requires set: every other `${…}` takes
/// its default.
fn example_config() -> Config {
    Config::load_with_env(&example_config_path(), |name| lookup(EXAMPLE_ENV, name))
        .expect("examples/connectors.toml loads")
}

/// The renderer of `config`'s connectors.
fn renderer(config: &Config) -> Renderer {
    Renderer::new(config.partials_dir.as_deref(), &config.connectors)
        .expect("the shipped templates compile")
}

/// The body of `request` as JSON; if it is not, a failure `at`.
fn json_body(request: &RenderedRequest, at: &str, failures: &mut Vec<String>) -> Option<Value> {
    serde_json::from_str(&request.body)
        .map_err(|e| failures.push(format!("{at}: not JSON: {e}")))
        .ok()
}

fn assert_no_failures(failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn target_schema(name: &str) -> jsonschema::Validator {
    let path = repo().join(format!("schemas/targets/{name}.schema.json"));
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    jsonschema::draft202012::new(&schema)
        .unwrap_or_else(|e| panic!("{} does not compile: {e}", path.display()))
}

fn schema_errors(validator: &jsonschema::Validator, body: &Value) -> Vec<String> {
    validator
        .iter_errors(body)
        .map(|e| {
            let mut shown = e.to_string();
            if shown.len() > 300 {
                let mut cut = 300;
                while !shown.is_char_boundary(cut) {
                    cut -= 1;
                }
                shown.truncate(cut);
                shown.push('…');
            }
            format!("{}: {shown}", e.instance_path())
        })
        .collect()
}

/// The ticket a delivery of `event` sees: after `created`, the target has named it.
fn golden_ticket(incident: &Value, event: Event) -> TicketFacts {
    let key = incident
        .get("incidentId")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    match event {
        Event::Created => TicketFacts {
            key,
            id: None,
            url: None,
            reopened: false,
        },
        _ => TicketFacts {
            key,
            id: Some(GOLDEN_TICKET_ID.into()),
            url: Some(format!("https://tickets.example.com/{GOLDEN_TICKET_ID}")),
            reopened: false,
        },
    }
}

/// The completion a `completed` delivery carries.
fn golden_completion(event: Event) -> Option<Completion> {
    (event == Event::Completed).then(|| Completion {
        reason_code: "threat_not_valid".into(),
        notes: Some("Closed in the ticketing system: expected scanner traffic".into()),
        status_change_time: "2026-01-02T09:30:00.000Z".into(),
    })
}

/// Fixed delivery facts, so renders (and snapshots) do not depend on the clock.
fn render_with(
    renderer: &Renderer,
    config: &Config,
    connector: &str,
    incident: &Value,
    event: Event,
) -> RenderedRequest {
    try_render(
        renderer,
        config,
        connector,
        incident,
        event,
        golden_ticket(incident, event),
        golden_completion(event),
    )
    .unwrap_or_else(|e| panic!("{connector} does not render: {e}"))
}

/// As `render_with`, with the ticket and completion given.
fn try_render(
    renderer: &Renderer,
    config: &Config,
    connector: &str,
    incident: &Value,
    event: Event,
    ticket: TicketFacts,
    completion: Option<Completion>,
) -> Result<RenderedRequest, render::RenderError> {
    let connector = config
        .connector(connector)
        .unwrap_or_else(|| panic!("no connector {connector} in examples/connectors.toml"));
    let facts = DeliveryFacts {
        event,
        delivery_id: "msg_golden",
        attempt: 1,
        connector,
        received_at: "2026-01-01T00:00:00.000Z",
        ticket,
        completion,
        collected: None,
    };
    renderer.render(connector, event, &render::context(incident, &facts))
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn example_incidents() -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("examples/incidents"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            (name, read_json(&p))
        })
        .collect()
}

/// Hostile variants of the sample incident, each a valid incident (checked by a test).
fn hostile_variants() -> Vec<(&'static str, Value)> {
    hostile::hostile_variants(&sample())
}

/// Every incident the connectors are tested with: the examples and the hostile variants.
fn all_incidents() -> Vec<(String, Value)> {
    let mut all = example_incidents();
    all.extend(
        hostile_variants()
            .into_iter()
            .map(|(n, v)| (format!("hostile:{n}"), v)),
    );
    all
}

#[test]
fn hostile_variants_are_valid_incidents() {
    let schema = incident_gateway::schema::IncidentSchema::shipped().unwrap();
    for (name, incident) in hostile_variants() {
        let violations = schema.violations(&incident, "");
        assert!(violations.is_empty(), "{name}: {violations:?}");
    }
}

/// The renders of one incident version share its context and keep what reads the incident
/// alone: every shipped connector, for every incident (hostile ones too) and every event in
/// any order, renders from a shared context exactly what a context of its own renders.
#[test]
fn renders_sharing_an_incident_context_equal_renders_of_their_own() {
    let config = example_config();
    let renderer = Renderer::new(config.partials_dir.as_deref(), &config.connectors)
        .expect("the shipped templates compile");
    let orders = [
        [
            Event::Created,
            Event::Updated,
            Event::Completed,
            Event::Created,
        ],
        [
            Event::Completed,
            Event::Updated,
            Event::Created,
            Event::Completed,
        ],
    ];
    for (name, incident) in all_incidents() {
        for order in orders {
            let shared = render::IncidentContext::new(&incident);
            for connector in &config.connectors {
                for event in order {
                    let facts = DeliveryFacts {
                        event,
                        delivery_id: "msg_shared",
                        attempt: 2,
                        connector,
                        received_at: "2026-01-01T00:00:00.000Z",
                        ticket: golden_ticket(&incident, event),
                        completion: golden_completion(event),
                        collected: None,
                    };
                    // Each rendered the way its target sends: a request, or a mail.
                    let (own, from_shared) = match connector.target {
                        Target::Smtp(_) => (
                            renderer
                                .render_email(connector, event, &render::context(&incident, &facts))
                                .map(|m| format!("{m:?}")),
                            renderer
                                .render_email(connector, event, &shared.with_facts(&facts))
                                .map(|m| format!("{m:?}")),
                        ),
                        Target::Http(_) => (
                            renderer
                                .render(connector, event, &render::context(&incident, &facts))
                                .map(|r| format!("{r:?}")),
                            renderer
                                .render(connector, event, &shared.with_facts(&facts))
                                .map(|r| format!("{r:?}")),
                        ),
                    };
                    assert_eq!(
                        from_shared.map_err(|e| e.to_string()),
                        own.map_err(|e| e.to_string()),
                        "{} × {name} × {}",
                        connector.name,
                        event.as_str()
                    );
                }
            }
        }
    }
}

/// Every connector of the example has its own `*_renders_valid_bodies` test below, and every
/// one listed there is in the example.
#[test]
fn every_shipped_connector_is_in_the_example_config() {
    let config = example_config();
    let configured: Vec<&str> = config.connectors.iter().map(|c| c.name.as_str()).collect();
    let shipped: Vec<&str> = SHIPPED
        .iter()
        .map(|(n, _)| *n)
        .chain(SHIPPED_MAIL.iter().copied())
        .collect();
    assert_eq!(configured, shipped);
}

/// Checks beyond the schema: byte and total limits JSON Schema cannot express, and the
/// incident's id somewhere in the request.
fn target_limits(connector: &str, request: &RenderedRequest, body: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let bytes = request.body.len();
    match connector {
        "teams" if bytes > TEAMS_MAX_BYTES => {
            problems.push(format!("{bytes} bytes > Teams' {TEAMS_MAX_BYTES}"))
        }
        "pagerduty" if bytes > PAGERDUTY_MAX_BYTES => {
            problems.push(format!("{bytes} bytes > PagerDuty's {PAGERDUTY_MAX_BYTES}"))
        }
        "opsgenie" => {
            let total: usize = body["details"]
                .as_object()
                .map(|d| {
                    d.iter()
                        .map(|(k, v)| k.chars().count() + v.as_str().unwrap_or("").chars().count())
                        .sum()
                })
                .unwrap_or(0);
            if total > OPSGENIE_DETAILS_MAX_CHARS {
                problems.push(format!(
                    "details total {total} characters > {OPSGENIE_DETAILS_MAX_CHARS}"
                ));
            }
            // A note (the `updated` note, the `completed` close note): Opsgenie (Java) may
            // count UTF-16 code units, and it stays within 25 000 of those too.
            let note = body["note"].as_str().unwrap_or("").encode_utf16().count();
            if note > 25000 {
                problems.push(format!("note is {note} UTF-16 units > 25000"));
            }
        }
        "jira" => {
            // Jira counts UTF-16 code units, not the code points the schema counts.
            let units = |v: &Value| v.as_str().unwrap_or("").encode_utf16().count();
            let summary = units(&body["fields"]["summary"]);
            let description = units(&body["fields"]["description"]);
            if summary > 255 {
                problems.push(format!("summary is {summary} UTF-16 units > 255"));
            }
            if description > 32767 {
                problems.push(format!("description is {description} UTF-16 units > 32767"));
            }
            // Comments: the `updated` comment, and the one the `completed` transition adds.
            let comments = std::iter::once(&body["body"]).chain(
                body["update"]["comment"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| &c["add"]["body"]),
            );
            for comment in comments {
                let n = units(comment);
                if n > 32767 {
                    problems.push(format!("comment is {n} UTF-16 units > 32767"));
                }
            }
        }

        "slack" => {
            // Incident text is escaped: no `<` or `>` reaches Slack, so no <!channel>, <@U…>
            // or <url|disguised link> (the template itself writes none).
            // (plain_text, as in the header, is shown as written: Slack parses no markup there.)
            let mut texts = vec![&body["text"]];
            for block in body["blocks"].as_array().into_iter().flatten() {
                let objects = std::iter::once(&block["text"])
                    .chain(block["fields"].as_array().into_iter().flatten())
                    .chain(block["elements"].as_array().into_iter().flatten());
                texts.extend(
                    objects
                        .filter(|o| o["type"] == "mrkdwn")
                        .map(|o| &o["text"]),
                );
            }
            for t in texts.into_iter().filter_map(Value::as_str) {
                if t.contains(['<', '>']) {
                    problems.push(format!("unescaped < or > in Slack text {t:.80?}"));
                }
            }
        }
        _ => {}
    }
    problems
}

/// Checks of one event's request beyond its body's schema: the method and URL the target
/// documents for the event (the ticket in the URL), that the request names the incident, and
/// what each target needs to act on the event (resolve, close, transition).
fn request_problems(
    connector: &str,
    event: Event,
    request: &RenderedRequest,
    body: &Value,
    incident: &Value,
    ticket: &TicketFacts,
) -> Vec<String> {
    let mut problems = Vec::new();
    let (method, _) = expected_request(connector, event);
    if request.method.as_str() != method {
        problems.push(format!("method {} (expected {method})", request.method));
    }
    let url = expected_url(connector, event, ticket);
    if request.url != url {
        problems.push(format!("URL {} (expected {url})", request.url));
    }
    // The incident id, as written, JSON-escaped, or percent-encoded; at least its first line
    // (text put on one line turns a line break into a space) and its first 255 characters
    // (as a dedup key cuts it).
    let id = incident["incidentId"].as_str().unwrap_or_default();
    let head: String = id
        .chars()
        .take_while(|c| !c.is_control())
        .take(255)
        .collect();
    let named = [
        head.clone(),
        render::escape_json_string(&head),
        url_component(&head),
    ]
    .iter()
    .any(|f| request.body.contains(f.as_str()) || request.url.contains(f.as_str()));
    if !named {
        problems.push("the request does not name the incident".into());
    }
    let key255: String = ticket.key.chars().take(255).collect();
    let key512: String = ticket.key.chars().take(512).collect();
    let mut expect = |what: &str, found: &Value, wanted: Value| {
        if *found != wanted {
            problems.push(format!("{what} is {found} (expected {wanted})"));
        }
    };
    match (connector, event) {
        ("servicenow", Event::Updated) => {
            expect("state", &body["state"], Value::Null);
        }
        ("servicenow", Event::Completed) => {
            expect("state", &body["state"], json!("6"));
            expect(
                "close_code",
                &body["close_code"],
                json!("Resolved by caller"),
            );
        }
        ("jira", Event::Completed) => {
            expect("transition", &body["transition"], json!({"id": "31"}));
        }
        ("pagerduty", Event::Completed) => {
            expect("event_action", &body["event_action"], json!("resolve"));
            expect("dedup_key", &body["dedup_key"], json!(key255));
        }
        ("pagerduty", _) => {
            expect("event_action", &body["event_action"], json!("trigger"));
            expect("dedup_key", &body["dedup_key"], json!(key255));
        }
        ("opsgenie", Event::Created) => {
            expect("alias", &body["alias"], json!(key512));
        }
        ("redmine", Event::Completed) => {
            expect("status_id", &body["issue"]["status_id"], json!(5));
        }
        ("redmine", Event::Updated) => {
            expect("status_id", &body["issue"]["status_id"], Value::Null);
        }
        ("rt", Event::Created) => {
            expect("Queue", &body["Queue"], json!("General"));
            expect("ContentType", &body["ContentType"], json!("text/plain"));
            // The ticket's ref, for the lookup: igw- and 32 hex digits.
            let reference = body["CustomFields"]["Correlation key"]
                .as_str()
                .unwrap_or("");
            let hex = reference.strip_prefix("igw-").unwrap_or("");
            if hex.len() != 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                problems.push(format!(
                    "Correlation key is {reference:?} (expected the ref)"
                ));
            }
        }
        ("rt", Event::Completed) => {
            expect("Status", &body["Status"], json!("resolved"));
            expect("ContentType", &body["ContentType"], json!("text/plain"));
        }
        ("rt", Event::Updated) => {
            expect("Status", &body["Status"], Value::Null);
            expect("ContentType", &body["ContentType"], json!("text/plain"));
        }
        _ => {}
    }
    // What the completion says reaches the target (its reason, and its notes when short).
    if event == Event::Completed
        && TICKETING.contains(&connector)
        && connector != "pagerduty"
        && !request.body.contains("threat_not_valid")
    {
        problems.push("the completion's reason code is not in the request".into());
    }
    problems
}

/// One shipped connector, every event, every incident: the body parses as JSON, satisfies the
/// connector's `target_schema` (as `check` applies it) and the event's own request schema, and
/// the target's limits; the method and URL are the event's. Prints the largest body
/// (`--nocapture` to see it).
fn renders_valid_bodies(connector: &str) {
    let schema_name = SHIPPED
        .iter()
        .find(|(c, _)| *c == connector)
        .map(|(_, s)| *s)
        .unwrap_or_else(|| panic!("{connector} is not in SHIPPED"));
    let config = example_config();
    let renderer = renderer(&config);
    let schema = target_schema(schema_name);
    let event_schemas: Vec<(&str, jsonschema::Validator)> = EVENTS
        .iter()
        .map(|e| {
            let name = request_schema(connector, *e);
            (name, target_schema(name))
        })
        .collect();
    let mut failures = Vec::new();
    let mut largest = (0, String::new());
    for (incident_name, incident) in &all_incidents() {
        for (i, event) in EVENTS.into_iter().enumerate() {
            let at = format!("{connector} × {incident_name} × {}", event.as_str());
            let request = render_with(&renderer, &config, connector, incident, event);
            let Some(body) = json_body(&request, &at, &mut failures) else {
                continue;
            };
            for e in schema_errors(&schema, &body) {
                failures.push(format!("{at}: {schema_name}: {e}"));
            }
            let (event_schema_name, event_schema) = &event_schemas[i];
            for e in schema_errors(event_schema, &body) {
                failures.push(format!("{at}: {event_schema_name}: {e}"));
            }
            for p in target_limits(connector, &request, &body) {
                failures.push(format!("{at}: {p}"));
            }
            let ticket = golden_ticket(incident, event);
            for p in request_problems(connector, event, &request, &body, incident, &ticket) {
                failures.push(format!("{at}: {p}"));
            }
            if request.body.len() > largest.0 {
                largest = (request.body.len(), at);
            }
        }
    }
    eprintln!(
        "largest {connector} body: {} bytes ({})",
        largest.0, largest.1
    );
    assert_no_failures(&failures);
}

#[test]
fn servicenow_renders_valid_bodies() {
    renders_valid_bodies("servicenow");
}

#[test]
fn jira_renders_valid_bodies() {
    renders_valid_bodies("jira");
}

#[test]
fn pagerduty_renders_valid_bodies() {
    renders_valid_bodies("pagerduty");
}

#[test]
fn opsgenie_renders_valid_bodies() {
    renders_valid_bodies("opsgenie");
}

#[test]
fn slack_renders_valid_bodies() {
    renders_valid_bodies("slack");
}

#[test]
fn teams_renders_valid_bodies() {
    renders_valid_bodies("teams");
}

#[test]
fn redmine_renders_valid_bodies() {
    renders_valid_bodies("redmine");
}

#[test]
fn rt_renders_valid_bodies() {
    renders_valid_bodies("rt");
}

#[test]
fn generic_renders_valid_bodies() {
    renders_valid_bodies("generic");
}

/// Each connector's `target_schema` in the example config is the one SHIPPED names.
#[test]
fn shipped_connectors_name_their_target_schema() {
    let config = example_config();
    for (connector, schema) in SHIPPED {
        let path = config.connector(connector).unwrap().target_schema.clone();
        assert_eq!(
            path.as_deref().and_then(Path::file_name),
            Some(std::ffi::OsStr::new(&format!("{schema}.schema.json"))),
            "{connector}"
        );
    }
}

/// A connector-level schema bundles the request schemas it dispatches to under `$defs`,
/// keyed by file name: each must stay identical to its file (edit the file, then copy it
/// there).
#[test]
fn bundled_target_schemas_match_their_files() {
    let dir = repo().join("schemas/targets");
    let mut bundles = 0;
    for (_, schema) in SHIPPED {
        let bundle = read_json(&dir.join(format!("{schema}.schema.json")));
        let Some(defs) = bundle["$defs"].as_object() else {
            continue;
        };
        for (file, embedded) in defs {
            if !file.ends_with(".schema.json") {
                continue; // a definition of the schema's own, not a bundled file
            }
            bundles += 1;
            assert_eq!(
                embedded,
                &read_json(&dir.join(file)),
                "{schema}.schema.json's $defs[{file:?}] differs from {file}"
            );
        }
    }
    assert_eq!(
        bundles, 12,
        "servicenow 2 + jira 3 + opsgenie 3 + redmine 2 + rt 2"
    );

    // Each bundle dispatches to the request schema of the body's shape.
    let long = |n: usize| "x".repeat(n);
    let cases: &[(&str, Value, bool)] = &[
        (
            "servicenow",
            json!({"short_description": "s", "work_notes": "n"}),
            true,
        ),
        ("servicenow", json!({"short_description": long(161)}), false),
        ("servicenow", json!({"work_notes": "n"}), true),
        (
            "servicenow",
            json!({"state": "6", "close_code": "c", "close_notes": "n"}),
            true,
        ),
        (
            "servicenow",
            json!({"state": "6", "close_notes": "n"}),
            false,
        ),
        (
            "servicenow",
            json!({"state": "6", "close_code": "c", "close_notes": " "}),
            false,
        ),
        ("servicenow", json!({}), false),
        (
            "jira",
            json!({"fields": {"project": {"key": "P"}, "summary": "s", "issuetype": {"name": "Task"}}}),
            true,
        ),
        (
            "jira",
            json!({"fields": {"project": {"key": "P"}, "summary": "a\nb", "issuetype": {"name": "Task"}}}),
            false,
        ),
        ("jira", json!({"body": "c"}), true),
        ("jira", json!({"body": " "}), false),
        (
            "jira",
            json!({"transition": {"id": "31"}, "update": {"comment": [{"add": {"body": "c"}}]}}),
            true,
        ),
        ("jira", json!({"transition": {"id": "Done"}}), false),
        (
            "jira",
            json!({"transition": {"id": "31"}, "update": {"comment": [{"add": {"body": long(32768)}}]}}),
            false,
        ),
        ("opsgenie", json!({"message": "m", "alias": "a"}), true),
        ("opsgenie", json!({"message": long(131)}), false),
        (
            "opsgenie",
            json!({"note": "n", "user": "u", "source": "s"}),
            true,
        ),
        ("opsgenie", json!({"note": long(25001)}), false),
        ("opsgenie", json!({"source": long(101)}), false),
        (
            "redmine",
            json!({"issue": {"project_id": "p", "subject": "s"}}),
            true,
        ),
        ("redmine", json!({"issue": {"project_id": "p"}}), false),
        ("redmine", json!({"issue": {"notes": "n"}}), true),
        (
            "redmine",
            json!({"issue": {"status_id": 5, "notes": "n"}}),
            true,
        ),
        ("redmine", json!({"issue": {"status_id": "closed"}}), false),
        ("redmine", json!({"issue": {}}), false),
        (
            "rt",
            json!({"Queue": "General", "Subject": "s", "Content": "c", "ContentType": "text/plain", "Priority": 50}),
            true,
        ),
        (
            "rt",
            json!({"Queue": "General", "Subject": long(201)}),
            false,
        ),
        ("rt", json!({"Queue": "General", "Priority": "High"}), false),
        (
            "rt",
            json!({"Queue": "General", "CustomFields": {"Correlation key": "igw-1"}}),
            true,
        ),
        (
            "rt",
            json!({"Content": "n", "ContentType": "text/plain"}),
            true,
        ),
        (
            "rt",
            json!({"Content": "n", "ContentType": "text/plain", "Status": "resolved"}),
            true,
        ),
        ("rt", json!({"Content": "n"}), false),
        (
            "rt",
            json!({"Content": " ", "ContentType": "text/plain"}),
            false,
        ),
        ("rt", json!({"Status": "resolved"}), false),
        ("rt", json!({}), false),
    ];
    for (schema, body, valid) in cases {
        let errors = schema_errors(&target_schema(schema), body);
        assert_eq!(errors.is_empty(), *valid, "{schema} {body}: {errors:?}");
    }
}

/// Every connector block carries a `callback_token` example, commented out; uncommented, with
/// its variable set, each loads as that connector's token.
#[test]
fn every_connector_has_a_callback_token_example() {
    let text = std::fs::read_to_string(example_config_path()).unwrap();
    let prefix = "# callback_token = \"${";
    let uncommented: String = text
        .lines()
        .map(|l| {
            l.strip_prefix("# ")
                .filter(|_| l.starts_with(prefix))
                .unwrap_or(l)
        })
        .collect::<Vec<_>>()
        .join("\n");
    let copy = example_copy();
    let file = copy.path().join("examples/connectors.toml");
    std::fs::write(&file, uncommented).unwrap();
    let token = |name: &str| format!("{}-callback-token", name.to_lowercase());
    let config = Config::load_with_env(&file, move |name| {
        lookup(EXAMPLE_ENV, name).or_else(|| name.ends_with("_CALLBACK_TOKEN").then(|| token(name)))
    })
    .unwrap_or_else(|e| panic!("the example with its callback tokens does not load: {e}"));
    for (connector, _) in SHIPPED {
        let c = config.connector(connector).unwrap();
        assert!(
            c.callback_token
                .as_deref()
                .is_some_and(|t| t.ends_with("_callback_token-callback-token")),
            "{connector} has no callback_token example"
        );
    }
}

/// Completions as the back channel may carry them: no notes, blank notes, the longest notes it
/// accepts (10 000 characters) in hostile text, control characters only, and a reason code
/// the templates do not know.
fn hostile_completions() -> Vec<(&'static str, Completion)> {
    let completion = |reason: &str, notes: Option<String>| Completion {
        reason_code: reason.into(),
        notes,
        status_change_time: "2026-01-02T09:30:00.000Z".into(),
    };
    let chars = |unit: &str, n: usize| unit.chars().cycle().take(n).collect::<String>();
    let mut out = vec![
        ("no_notes", completion("acceptable_risk", None)),
        ("blank_notes", completion("other", Some(" \n\t ".into()))),
        (
            "nasty_notes",
            completion(
                "further_action",
                Some(chars(&format!("{NASTY} {UNICODE} "), 10_000)),
            ),
        ),
        (
            "control_notes",
            completion("compensating_control", Some("\u{1}".repeat(10_000))),
        ),
        (
            "emoji_notes",
            completion("not_concluded", Some("🚨".repeat(10_000))),
        ),
        (
            "unknown_reason",
            completion("reason \"from\" {{elsewhere}}\n", Some("n".into())),
        ),
    ];
    for reason in incident_gateway::ticket::REASON_CODES {
        out.push(("each_reason", completion(reason, Some("notes".into()))));
    }
    out
}

/// `completed` with every hostile completion, for the sample and the worst incidents: valid
/// bodies within limits, carrying the reason.
#[test]
fn completed_renders_valid_bodies_for_hostile_completions() {
    let config = example_config();
    let renderer = renderer(&config);
    let incidents: Vec<(String, Value)> = all_incidents()
        .into_iter()
        .filter(|(n, _)| {
            [
                "sample",
                "minimal",
                "hostile:nasty_text",
                "hostile:worst_escaping",
                "hostile:long_id",
                "hostile:all_null",
            ]
            .contains(&n.as_str())
        })
        .collect();
    assert_eq!(incidents.len(), 6);
    let mut failures = Vec::new();
    for (connector, schema_name) in SHIPPED {
        let schema = target_schema(schema_name);
        let event_schema = target_schema(request_schema(connector, Event::Completed));
        for (incident_name, incident) in &incidents {
            for (completion_name, completion) in hostile_completions() {
                let at = format!("{connector} × {incident_name} × {completion_name}");
                let ticket = golden_ticket(incident, Event::Completed);
                let request = match try_render(
                    &renderer,
                    &config,
                    connector,
                    incident,
                    Event::Completed,
                    ticket.clone(),
                    Some(completion.clone()),
                ) {
                    Ok(r) => r,
                    Err(e) => {
                        failures.push(format!("{at}: does not render: {e}"));
                        continue;
                    }
                };
                let Some(body) = json_body(&request, &at, &mut failures) else {
                    continue;
                };
                for e in schema_errors(&schema, &body)
                    .into_iter()
                    .chain(schema_errors(&event_schema, &body))
                    .chain(target_limits(connector, &request, &body))
                {
                    failures.push(format!("{at}: {e}"));
                }
                let reason =
                    render::escape_json_string(completion.reason_code.lines().next().unwrap_or(""));
                if TICKETING.contains(connector)
                    && *connector != "pagerduty"
                    && !request.body.contains(reason.trim())
                {
                    failures.push(format!("{at}: the reason code is not in the request"));
                }
            }
        }
    }
    assert_no_failures(&failures);
}

/// Ticket ids come from the target's response and correlation keys from a template: whatever
/// they hold, they fill one path segment of the URL (or the render fails, for `.` and `..`,
/// which the engine refuses), and never add a segment or a query.
#[test]
fn hostile_ticket_ids_and_keys_stay_in_their_path_segment() {
    let config = example_config();
    let renderer = renderer(&config);
    let incident = sample();
    let hostile = [
        "1/../../admin",
        "a?b=c#d",
        "SEC-1 %2F%2e%2e",
        "x\r\nHost: evil.test",
        "Ä🚨/\\",
        "{{incidentId}}",
        "0123456789abcdef0123456789abcdef",
        &"k".repeat(600),
    ];
    let mut failures = Vec::new();
    for connector in TICKETING {
        for event in [Event::Updated, Event::Completed] {
            for value in hostile.iter().copied().chain([".", ".."]) {
                let ticket = TicketFacts {
                    key: value.to_string(),
                    id: Some(value.to_string()),
                    url: None,
                    reopened: false,
                };
                let at = format!("{connector} × {} × {value:.40?}", event.as_str());
                let result = try_render(
                    &renderer,
                    &config,
                    connector,
                    &incident,
                    event,
                    ticket.clone(),
                    golden_completion(event),
                );
                let addressed = expected_request(connector, event).1.contains('{');
                match result {
                    Err(e) if addressed && (value == "." || value == "..") => {
                        if !e.to_string().contains("\".\" or \"..\"") {
                            failures.push(format!("{at}: refused, but not as a dot segment: {e}"));
                        }
                    }
                    Err(e) => failures.push(format!("{at}: does not render: {e}")),
                    Ok(_) if addressed && (value == "." || value == "..") => {
                        failures.push(format!("{at}: a dot segment was sent"));
                    }
                    Ok(request) => {
                        let mut ticket = ticket;
                        // Opsgenie addresses the alert by its alias, cut as the create cuts it.
                        if connector == "opsgenie" {
                            ticket.key = ticket.key.chars().take(512).collect();
                        }
                        let url = expected_url(connector, event, &ticket);
                        if request.url != url {
                            failures.push(format!("{at}: URL {} (expected {url})", request.url));
                        }
                        let parsed = reqwest::Url::parse(&request.url).unwrap();
                        let template = expected_request(connector, event).1;
                        let segments = template.split('?').next().unwrap().matches('/').count();
                        if parsed.path().matches('/').count() + 2 != segments {
                            failures.push(format!("{at}: path {}", parsed.path()));
                        }
                        if parsed.fragment().is_some() {
                            failures.push(format!("{at}: a fragment in {}", request.url));
                        }
                    }
                }
            }
        }
    }
    assert_no_failures(&failures);
}

/// The request as `render` prints it (secrets and credential headers masked), without the
/// `webhook-*` stamp, which holds the clock.
fn shown(config: &Config, request: &RenderedRequest) -> String {
    incident_gateway::cli::format_request(request, config)
}

/// Every `${…}` of the example config, as a deployment gives them.
const DEPLOYED_ENV: &[(&str, &str)] = &[
    ("IGW_ADMIN_TOKEN", EXAMPLE_ADMIN_TOKEN),
    ("IGW_SOURCE_KEY", EXAMPLE_SOURCE_KEY),
    ("SERVICENOW_BASIC_AUTH", "c25vdzpzZWNyZXQ="),
    ("JIRA_BASIC_AUTH", "amlyYTpzZWNyZXQ="),
    ("PAGERDUTY_ROUTING_KEY", "R0UT1NGKEY0123456789abcdefABCDEF"),
    ("OPSGENIE_API_KEY", "0a0b0c0d-1111-2222-3333-444455556666"),
    (
        "SLACK_WEBHOOK_URL",
        "https://hooks.slack.com/services/TSECRET/BSECRET/slacksecret",
    ),
    (
        "TEAMS_WEBHOOK_URL",
        "https://acme.webhook.office.com/webhookb2/g1@t1/IncomingWebhook/teamssecret/o1",
    ),
    ("REDMINE_API_KEY", "redmine-secret-key"),
    ("RT_TOKEN", "1-27-rtsecrettoken0123456789abcdef"),
    ("GENERIC_WEBHOOK_TOKEN", "generic-secret-token"),
];

/// The example config as deployed: every `${…}` given, so each is a secret and masked in
/// what `render` shows, whatever the defaults.
fn deployed_config() -> Config {
    Config::load_with_env(&example_config_path(), |name| lookup(DEPLOYED_ENV, name))
        .expect("examples/connectors.toml loads")
}

/// Golden files: what each connector sends for the sample, the shipped hostile example, the
/// `nasty_text` variant and the minimal incident (review changes with `cargo insta review`, or
/// `INSTA_UPDATE=always` and `git diff tests/snapshots`).
#[test]
fn golden_requests() {
    let config = deployed_config();
    let renderer = renderer(&config);
    let mut incidents: BTreeMap<String, Value> = example_incidents().into_iter().collect();
    let nasty = hostile_variants()
        .into_iter()
        .find(|(n, _)| *n == "nasty_text")
        .unwrap()
        .1;
    incidents.insert("nasty_text".into(), nasty);
    let mut cases: Vec<(&str, &str, Event)> = Vec::new();
    for (connector, _) in SHIPPED {
        for incident in [
            "sample",
            "hostile-text",
            "hostile-markup",
            "nasty_text",
            "minimal",
        ] {
            cases.push((connector, incident, Event::Created));
        }
    }
    // The ticketing connectors send other requests for `updated` and `completed`.
    for connector in TICKETING {
        cases.push((connector, "sample", Event::Updated));
        cases.push((connector, "sample", Event::Completed));
    }
    for (connector, incident, event) in cases {
        let request = render_with(&renderer, &config, connector, &incidents[incident], event);
        let shown = shown(&config, &request);
        for (_, secret) in DEPLOYED_ENV {
            assert!(
                !shown.contains(secret),
                "{connector} shows {secret}: {shown}"
            );
        }
        let name = match event {
            Event::Created => format!("{connector}__{incident}"),
            other => format!("{connector}__{incident}__{}", other.as_str()),
        };
        insta::assert_snapshot!(name, shown);
    }
}

#[test]
fn check_passes_on_the_example_connectors_without_warnings() {
    let out = check(&example_config_path(), EXAMPLE_ENV);
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("ok:"), "{text}");
    assert!(!text.to_lowercase().contains("warning"), "{text}");
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A copy of examples/ (config and incidents), templates/ and schemas/ in a temporary folder.
fn example_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&repo().join("templates"), &dir.path().join("templates"));
    copy_tree(&repo().join("schemas"), &dir.path().join("schemas"));
    std::fs::create_dir_all(dir.path().join("examples")).unwrap();
    std::fs::copy(
        example_config_path(),
        dir.path().join("examples/connectors.toml"),
    )
    .unwrap();
    copy_tree(
        &repo().join("examples/incidents"),
        &dir.path().join("examples/incidents"),
    );
    dir
}

/// Inserts `line` after the first line of `file` that is exactly `after`; returns the
/// inserted line's number.
fn insert_line(file: &Path, after: &str, line: &str) -> usize {
    let text = std::fs::read_to_string(file).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .position(|l| *l == after)
        .unwrap_or_else(|| panic!("{} has no line {after:?}", file.display()))
        + 1;
    lines.insert(at, line);
    std::fs::write(file, lines.join("\n") + "\n").unwrap();
    at + 1
}

fn check_copy(dir: &Path) -> (bool, String) {
    let out = check(&dir.join("examples/connectors.toml"), EXAMPLE_ENV);
    (out.status.success(), output_text(&out))
}

#[test]
fn breaking_any_shipped_template_fails_check_naming_file_and_line() {
    let config = example_config();
    let copy = example_copy();
    let (ok, text) = check_copy(copy.path());
    assert!(ok, "the unbroken copy passes: {text}");
    // Every body template of every event (a template two events share, once).
    let mut templates: Vec<(&str, String)> = Vec::new();
    for (connector, _) in SHIPPED {
        for event in EVENTS {
            let Some(template) = config.connector(connector).unwrap().template(event) else {
                continue;
            };
            let written = template.as_written.clone();
            if !templates.iter().any(|(_, t)| *t == written) {
                templates.push((connector, written));
            }
        }
    }
    assert_eq!(templates.len(), 20, "{templates:?}");
    for (i, (connector, written)) in templates.into_iter().enumerate() {
        // Two kinds of breakage: a block never closed, and a tag never finished.
        let broken = if i % 2 == 0 {
            "  \"broken\": \"{{#if incidentId}}\","
        } else {
            "  \"broken\": \"{{incidentId}\","
        };
        let copy = example_copy();
        let file = copy.path().join("examples").join(&written);
        let line = insert_line(&file, "{", broken);
        let (ok, text) = check_copy(copy.path());
        assert!(
            !ok,
            "{connector}: check passed with {written} broken: {text}"
        );
        assert!(
            text.contains(&format!("{written}:{line}:")),
            "{connector}: the error names {written}:{line}: {text}"
        );
    }

    // A variable the incident never has: found when rendering, named with its line, in a
    // `created` template and in the templates only `updated` and `completed` render.
    for (connector, event) in [
        ("servicenow", Event::Created),
        ("servicenow", Event::Updated),
        ("jira", Event::Completed),
    ] {
        let copy = example_copy();
        let written = &config
            .connector(connector)
            .unwrap()
            .template(event)
            .unwrap()
            .as_written;
        let file = copy.path().join("examples").join(written);
        let line = insert_line(&file, "{", "  \"x\": \"{{incident.no_such_field}}\",");
        let (ok, text) = check_copy(copy.path());
        assert!(!ok, "{text}");
        assert!(text.contains(&format!("{written}:{line}")), "{text}");
        assert!(text.contains("incident.no_such_field"), "{text}");
    }

    // A shared partial: every connector that uses it is affected; the partial is named.
    // (A block left open in a partial is reported where the file ends, not where it opens:
    // the engine names the opener only for connector templates. So the tag is unfinished.)
    let copy = example_copy();
    let partial = copy.path().join("templates/partials/facts.txt.hbs");
    let line = insert_line(
        &partial,
        "Incident ID:   {{> oneline value=incidentId}}",
        "Seen:   {{customer}",
    );
    let (ok, text) = check_copy(copy.path());
    assert!(!ok, "{text}");
    assert!(text.contains(&format!("facts.txt.hbs:{line}:")), "{text}");
}

/// `render` as an admin runs it: for each connector and event, the printed body (after the
/// blank line) satisfies the target's schema.
#[test]
fn render_prints_a_valid_body_for_every_shipped_connector() {
    let config = example_config_path();
    let routing_key = "R0UT1NGKEY0123456789abcdefABCDEF";
    let mut env = EXAMPLE_ENV.to_vec();
    env.push(("PAGERDUTY_ROUTING_KEY", routing_key));
    for (connector, schema_name) in SHIPPED {
        let schema = target_schema(schema_name);
        for event in EVENTS {
            let out = render(
                &config,
                connector,
                &sample_file(),
                Some(event.as_str()),
                &env,
            );
            let text = output_text(&out);
            assert!(
                out.status.success(),
                "{connector} {}: {text}",
                event.as_str()
            );
            assert!(
                !text.contains(routing_key),
                "{connector}: a secret shown: {text}"
            );
            let stdout = String::from_utf8(out.stdout).unwrap();
            let (head, body) = stdout
                .split_once("\n\n")
                .expect("a blank line before the body");
            // Webhook URLs that hold a secret come from the environment and are masked.
            let (method, _) = expected_request(connector, event);
            let ticket = TicketFacts {
                key: "5F04D7E3-000A-8420-0002-757900000000".into(),
                id: Some(incident_gateway::cli::PREVIEW_TICKET_ID.into()),
                url: None,
                reopened: false,
            };
            let url = expected_url(connector, event, &ticket);
            assert!(
                head.starts_with(&format!("{method} {url}\n"))
                    || head.starts_with(&format!("{method} ********\n")),
                "{connector} {}: {head}",
                event.as_str()
            );
            assert!(
                head.contains("webhook-id: msg_preview"),
                "{connector}: {head}"
            );
            let mut body: Value = serde_json::from_str(body)
                .unwrap_or_else(|e| panic!("{connector}: body is not JSON ({e}): {body}"));
            if *connector == "pagerduty" {
                // The routing key comes from ${PAGERDUTY_ROUTING_KEY}: a secret, masked.
                assert_eq!(body["routing_key"], "********", "{connector}");
                body["routing_key"] = json!(routing_key);
            }
            let mut errors = schema_errors(&schema, &body);
            errors.extend(schema_errors(
                &target_schema(request_schema(connector, event)),
                &body,
            ));
            assert!(
                errors.is_empty(),
                "{connector} {}: {errors:#?}\n{body:#}",
                event.as_str()
            );
            assert!(
                stdout.contains("5F04D7E3-000A-8420-0002-757900000000"),
                "{connector}: the request carries the incident id"
            );
        }
    }
}

/// For reviewing by eye: writes every connector's body for every incident (hostile variants
/// too) and event to target/connector-renders/. Run with
/// `cargo test --test connectors -- --ignored write_renders_for_review`.
#[test]
#[ignore]
fn write_renders_for_review() {
    let config = example_config();
    let renderer = renderer(&config);
    let dir = repo().join("target/connector-renders");
    std::fs::create_dir_all(&dir).unwrap();
    for (connector, _) in SHIPPED {
        for (incident_name, incident) in all_incidents() {
            for event in EVENTS {
                let request = render_with(&renderer, &config, connector, &incident, event);
                let file = dir.join(format!(
                    "{connector}__{}__{}.txt",
                    incident_name.replace(':', "-"),
                    event.as_str()
                ));
                std::fs::write(file, shown(&config, &request)).unwrap();
            }
        }
    }
}

/// Redmine's default priorities are 1 Low, 2 Normal, 3 High, 4 Urgent, 5 Immediate: each
/// threat rating is sent as the Redmine priority of the same meaning (a medium threat is
/// Normal, not High).
#[test]
fn redmine_priorities_match_redmines_own_names() {
    let config = example_config();
    let renderer = renderer(&config);
    for (rating, redmine) in [
        ("Critical", 4),
        ("High", 3),
        ("Medium", 2),
        ("Low", 1),
        ("Info", 1),
    ] {
        let mut incident = read_json(&repo().join("examples/incidents/sample.json"));
        incident["incident"]["threatRating"] = Value::String(rating.into());
        let request = render_with(&renderer, &config, "redmine", &incident, Event::Created);
        let body: Value = serde_json::from_str(&request.body).unwrap();
        assert_eq!(body["issue"]["priority_id"], redmine, "{rating}");
    }
}

/// Request Tracker 5 shows priorities by label (%PriorityAsString, by default Low 0, Medium 50,
/// High 100; a number shows as the highest label it reaches): each threat rating is sent as a
/// number on the label of its meaning (critical and high are High, not a Medium 90).
#[test]
fn rt_priorities_land_on_rts_default_labels() {
    let config = example_config();
    let renderer = renderer(&config);
    for (rating, rt) in [
        ("Critical", 100),
        ("High", 100),
        ("Medium", 50),
        ("Low", 0),
        ("Info", 0),
    ] {
        let mut incident = read_json(&repo().join("examples/incidents/sample.json"));
        incident["incident"]["threatRating"] = Value::String(rating.into());
        let request = render_with(&renderer, &config, "rt", &incident, Event::Created);
        let body: Value = serde_json::from_str(&request.body).unwrap();
        assert_eq!(body["Priority"], rt, "{rating}");
    }
}

/// The shipped email connector mails every event for every example and hostile incident:
/// a one-line subject with the incident's tag, both parts, one recipient.
#[test]
fn email_renders_every_event_for_every_incident() {
    let config = example_config();
    let renderer = renderer(&config);
    for name in SHIPPED_MAIL {
        let connector = config.connector(name).unwrap();
        for (incident_name, incident) in all_incidents() {
            for event in EVENTS {
                let facts = DeliveryFacts {
                    event,
                    delivery_id: "msg_golden",
                    attempt: 1,
                    connector,
                    received_at: "2026-01-01T00:00:00.000Z",
                    ticket: golden_ticket(&incident, event),
                    completion: golden_completion(event),
                    collected: None,
                };
                let mail = renderer
                    .render_email(connector, event, &render::context(&incident, &facts))
                    .unwrap_or_else(|e| panic!("{name} × {incident_name} × {event:?}: {e}"));
                let at = format!("{name} × {incident_name} × {}", event.as_str());
                assert!(!mail.subject.contains('\n'), "{at}: {}", mail.subject);
                assert!(mail.subject.starts_with('['), "{at}: {}", mail.subject);
                assert!(!mail.text.trim().is_empty(), "{at}");
                assert!(mail.html.as_deref().is_some_and(|h| !h.is_empty()), "{at}");
                assert_eq!(mail.to, ["security@tickets.example.com"], "{at}");
            }
        }
    }
}
