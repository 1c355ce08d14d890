//! Ingest → validate → route → render, as the gateway does it for `POST /v1/incidents`, then
//! every connector of the shipped examples for every event (`check`/`render`'s preview path).
//!
//! Errors are fine (every step returns a Result); panics, hangs and memory blow-ups are bugs.
//! Invariants checked beside "does not panic":
//! - schema: at most MAX_VIOLATIONS violations, each pointer under the batch prefix, each
//!   detail bounded (MAX_DETAIL_CHARS + the ellipsis);
//! - a `*.json.hbs` body that rendered is valid JSON;
//! - a rendered URL keeps the scheme, host, port and number of path segments the connector's
//!   URL has for the sample incident (incident text cannot move a request elsewhere);
//! - rendered header values and email subjects hold no line break;
//! - a built email's header block holds only the headers the gateway writes (incident text
//!   cannot add a header or a recipient).
#![no_main]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use incident_gateway::cli::{preview, preview_context};
use incident_gateway::deliver::prepare::Outgoing;
use incident_gateway::config::Config;
use incident_gateway::connector::{Connector, Target};
use incident_gateway::model::Event;
use incident_gateway::render::{Escape, Renderer};
use incident_gateway::schema::{IncidentSchema, MAX_VIOLATIONS};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const EVENTS: [Event; 3] = [Event::Created, Event::Updated, Event::Completed];
/// `server.max_batch`'s default: ingress refuses larger batches before validating.
const MAX_BATCH: usize = 100;
/// Rendering is the slow part: render the first few incidents of a batch only.
const RENDER_PER_BATCH: usize = 3;
/// schema.rs: MAX_DETAIL_CHARS (300) plus the "…" truncate_chars appends.
const MAX_DETAIL_CHARS: usize = 301;

struct Setup {
    config: Config,
    renderer: Renderer,
    /// (connector, event) → (scheme, host, port, path segment count) for the sample incident.
    url_shape: HashMap<(String, &'static str), UrlShape>,
}

type UrlShape = (String, Option<String>, Option<u16>, usize);

struct Fixture {
    schema: IncidentSchema,
    setups: Vec<Setup>,
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn env(name: &str) -> Option<String> {
    match name {
        "IGW_SOURCE_KEY" => Some("fuzz-source-key-0123456789".into()),
        "IGW_ADMIN_TOKEN" => Some("fuzz-admin-token-0123456789".into()),
        _ => None,
    }
}

fn shape(url: &str) -> UrlShape {
    // The renderer returns a URL it parsed itself.
    let u =
        url::Url::parse(url).unwrap_or_else(|e| panic!("rendered URL {url:?} does not parse: {e}"));
    (
        u.scheme().to_string(),
        u.host_str().map(str::to_string),
        u.port(),
        u.path_segments().map_or(0, |s| s.count()),
    )
}

fn setup(file: &Path, sample: &Value) -> Setup {
    let config = Config::load_with_env(file, env)
        .unwrap_or_else(|e| panic!("fuzz setup: {}: {e}", file.display()));
    let renderer =
        Renderer::new(config.partials_dir.as_deref(), &config.connectors).unwrap_or_else(|e| panic!("fuzz setup: {}: {e}", file.display()));
    let mut url_shape = HashMap::new();
    for connector in &config.connectors {
        // The sample must get all the way to a request or a MIME message, or the target
        // would only ever fuzz error paths.
        for event in EVENTS {
            if !connector.sends(event) {
                continue;
            }
            let outgoing = preview(&renderer, sample, connector, event).unwrap_or_else(|e| {
                panic!(
                    "fuzz setup: the sample does not render for {} {}: {e}",
                    connector.name,
                    event.as_str()
                )
            });
            let Outgoing::Request(request) = outgoing else {
                continue;
            };
            url_shape.insert(
                (connector.name.clone(), event.as_str()),
                shape(&request.url),
            );
        }
    }
    Setup {
        config,
        renderer,
        url_shape,
    }
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let repo = repo();
        let sample: Value = serde_json::from_slice(
            &std::fs::read(repo.join("examples/incidents/sample.json")).expect("sample.json"),
        )
        .expect("sample.json is JSON");
        let files = [
            repo.join("examples/connectors.toml"),
            repo.join("examples/gateway.toml"),
            repo.join("fuzz/configs/email.toml"),
        ];
        Fixture {
            schema: IncidentSchema::shipped().expect("the shipped schema compiles"),
            setups: files.iter().map(|f| setup(f, &sample)).collect(),
        }
    })
}

/// Headers `build_message` writes (lettre adds Date, MIME-Version and the content headers).
const MAIL_HEADERS: &[&str] = &[
    "from",
    "to",
    "cc",
    "subject",
    "message-id",
    "in-reply-to",
    "references",
    "user-agent",
    "date",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
];

fn render_email(setup: &Setup, connector: &Connector, incident: &Value) {
    if !matches!(connector.target, Target::Smtp(_)) {
        return;
    }
    for event in EVENTS {
        if !connector.sends(event) {
            continue;
        }
        // The rendered subject, before the message builder normalises it.
        let ctx = preview_context(&setup.renderer, incident, connector, event);
        if let Ok(email) = setup.renderer.render_email(connector, event, &ctx) {
            assert!(
                !email.subject.contains(['\r', '\n']),
                "subject holds a line break: {:?}",
                email.subject
            );
        }
        // The message as a delivery builds it: the same steps, threaded on the ticket.
        let Ok(Outgoing::Mail { message, .. }) =
            preview(&setup.renderer, incident, connector, event)
        else {
            continue;
        };
        let formatted = message.formatted();
        let text = String::from_utf8_lossy(&formatted);
        let head = text.split("\r\n\r\n").next().unwrap_or("");
        let mut counts: HashMap<String, usize> = HashMap::new();
        for line in head.split("\r\n") {
            if line.starts_with([' ', '\t']) {
                continue; // folded continuation
            }
            let name = line
                .split_once(':')
                .map(|(n, _)| n.trim().to_ascii_lowercase())
                .unwrap_or_else(|| panic!("header line without a colon: {line:?}\n{head}"));
            assert!(
                MAIL_HEADERS.contains(&name.as_str()),
                "incident text added a mail header {name:?}:\n{head}"
            );
            *counts.entry(name).or_default() += 1;
        }
        for (name, n) in counts {
            assert!(n == 1, "mail header {name:?} appears {n} times:\n{head}");
        }
    }
}

fn render_http(setup: &Setup, connector: &Connector, incident: &Value) {
    for event in EVENTS {
        let Some(template) = connector.template(event) else {
            continue;
        };
        let Ok(Outgoing::Request(request)) = preview(&setup.renderer, incident, connector, event)
        else {
            continue;
        };
        if Escape::for_file(&template.as_written) == Escape::Json {
            if let Err(e) = serde_json::from_str::<Value>(&request.body) {
                panic!(
                    "{} ({} {}) rendered invalid JSON: {e}\n{}",
                    template.as_written,
                    connector.name,
                    event.as_str(),
                    request.body
                );
            }
        }
        if let Some(expected) = setup
            .url_shape
            .get(&(connector.name.clone(), event.as_str()))
        {
            let got = shape(&request.url);
            assert_eq!(
                &got,
                expected,
                "{} {}: incident text changed the URL's shape: {}",
                connector.name,
                event.as_str(),
                request.url
            );
        }
        for (name, value) in &request.headers {
            assert!(
                !value.contains(['\r', '\n', '\0']),
                "header {name} holds a control character: {value:?}"
            );
        }
    }
}

fn ingest(data: &[u8]) {
    let fx = fixture();
    // As ingress parses the body.
    let Ok(document) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let (incidents, is_batch) = match document {
        Value::Array(items) => (items, true),
        single => (vec![single], false),
    };
    if is_batch && (incidents.is_empty() || incidents.len() > MAX_BATCH) {
        return;
    }
    for (i, incident) in incidents.iter().enumerate() {
        let prefix = if is_batch {
            format!("/{i}")
        } else {
            String::new()
        };
        let violations = fx.schema.violations(incident, &prefix);
        assert!(violations.len() <= MAX_VIOLATIONS);
        for v in &violations {
            assert!(v.pointer.starts_with(&prefix), "{v:?}");
            assert!(v.detail.chars().count() <= MAX_DETAIL_CHARS, "{v:?}");
        }
        // The problem response serializes them.
        let _ = serde_json::to_string(&violations).expect("violations serialize");

        // Ingress renders only valid incidents; `check` and `render` render any JSON file, so
        // every incident is rendered here (the crash report says whether it was valid).
        if i >= RENDER_PER_BATCH {
            continue;
        }
        // As ingress's `prepare`: serialize, route, correlation key.
        let _ = incident.to_string();
        for setup in &fx.setups {
            for connector in incident_gateway::route::route(&setup.config.connectors, incident) {
                let _ = incident_gateway::ticket::route_for(&setup.renderer, connector, incident);
            }
            for connector in &setup.config.connectors {
                match &connector.target {
                    Target::Smtp(_) => render_email(setup, connector, incident),
                    Target::Http(_) => render_http(setup, connector, incident),
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    ingest(data);
});
