//! The offline commands behind `incident-gateway check` and `render`: test a configuration
//! and its templates before they go live, without sending anything.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::config::Config;
use crate::connector::{Connector, Target};
use crate::deliver::prepare::{self, AttemptFacts, Outgoing, Unprepared};
use crate::deliver::smtp;
use crate::model::{Completion, Event, TicketFacts};
use crate::render::{Escape, RenderedRequest, Renderer};
use crate::schema::IncidentSchema;

/// The delivery id `check` and `render` use: never sent.
pub const PREVIEW_DELIVERY_ID: &str = "msg_preview";

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Gateway(#[from] crate::Error),
    #[error("{file}: {message}")]
    Input { file: PathBuf, message: String },
    #[error("no connector named {0:?} in the config")]
    UnknownConnector(String),
}

/// What `check` found: problems (each a line naming file, line and reason) and what it did.
#[derive(Debug, Default)]
pub struct CheckReport {
    pub errors: Vec<String>,
    /// Problems that do not stop a deployment, e.g. a connector whose requests never carry
    /// the incident's id (its tickets could not be traced back).
    pub warnings: Vec<String>,
    pub renders: usize,
    pub incidents: usize,
}

fn read_incident(file: &Path) -> Result<Value, CliError> {
    let text = std::fs::read_to_string(file).map_err(|e| CliError::Input {
        file: file.to_path_buf(),
        message: e.to_string(),
    })?;
    serde_json::from_str(&text).map_err(|e| CliError::Input {
        file: file.to_path_buf(),
        message: format!("not valid JSON: {e}"),
    })
}

/// The example incidents `check` renders: every `*.json` in `dir`, sorted.
pub fn example_incidents(dir: &Path) -> Result<Vec<PathBuf>, CliError> {
    let entries = std::fs::read_dir(dir).map_err(|e| CliError::Input {
        file: dir.to_path_buf(),
        message: format!("cannot list example incidents: {e}"),
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    Ok(files)
}

/// The ticket id `check` and `render` show once a ticket exists.
pub const PREVIEW_TICKET_ID: &str = "TICKET-PREVIEW-1";

/// The facts a real attempt of `event` would carry: after `created` the ticket has an id (for
/// mail, the Message-ID replies thread on), `completed` carries a completion.
pub fn preview_facts(
    renderer: &Renderer,
    incident: &Value,
    connector: &Connector,
    event: Event,
) -> AttemptFacts {
    let now_ms = crate::model::now_ms();
    let key = crate::ticket::route_for(renderer, connector, incident).key;
    let ticket = match (event, &connector.target) {
        (Event::Created, _) => TicketFacts {
            key,
            id: None,
            url: None,
            reopened: false,
        },
        (Event::Updated | Event::Completed, target) => TicketFacts {
            key,
            id: Some(match target {
                Target::Smtp(smtp) => smtp::message_id(smtp, "msg_preview_root"),
                Target::Http(_) => PREVIEW_TICKET_ID.into(),
            }),
            url: Some(format!("https://tickets.example.com/{PREVIEW_TICKET_ID}")),
            reopened: false,
        },
    };
    let completion = (event == Event::Completed).then(|| Completion {
        reason_code: "threat_not_valid".into(),
        notes: Some("Closed from the ticketing system (preview)".into()),
        status_change_time: crate::model::rfc3339(now_ms),
    });
    AttemptFacts {
        event,
        delivery_id: PREVIEW_DELIVERY_ID.into(),
        attempt: 1,
        received_at_ms: now_ms,
        ticket,
        completion,
    }
}

/// The context a real delivery of `event` would see (see [`preview_facts`]).
pub fn preview_context(
    renderer: &Renderer,
    incident: &Value,
    connector: &Connector,
    event: Event,
) -> Value {
    let facts = preview_facts(renderer, incident, connector, event);
    prepare::context(connector, incident, &facts)
}

/// What a real attempt of `event` would send — rendered, stamped and signed, or built as a
/// threaded message — by the same steps a delivery takes.
pub fn preview(
    renderer: &Renderer,
    incident: &Value,
    connector: &Connector,
    event: Event,
) -> Result<Outgoing, Unprepared> {
    let facts = preview_facts(renderer, incident, connector, event);
    let unix_seconds = facts.received_at_ms / 1000;
    prepare::prepare(renderer, connector, incident, &facts, unix_seconds)
}

/// A preview's failure as `check` reports it: the template's own location, or the message
/// problem with the connector and event.
fn preview_problem(connector: &Connector, event: Event, e: Unprepared) -> String {
    match e {
        Unprepared::Render(e) => e.to_string(),
        other => format!("connector {} ({}): {other}", connector.name, event.as_str()),
    }
}

/// Loads the config, compiles every template, and renders every connector for every event
/// against each example incident. A configuration error stops at once (`Err`); template
/// problems are collected in the report.
pub fn check(config_file: &Path, incidents_dir: Option<&Path>) -> Result<CheckReport, CliError> {
    let config = Config::load(config_file).map_err(crate::Error::from)?;
    let mut report = CheckReport::default();
    let renderer = match Renderer::new(config.partials_dir.as_deref(), &config.connectors) {
        Ok(r) => r,
        Err(e) => {
            report.errors.push(e.to_string());
            return Ok(report);
        }
    };
    let schema = IncidentSchema::shipped().map_err(crate::Error::from)?;
    let dir = incidents_dir
        .map(Path::to_path_buf)
        .unwrap_or_else(|| config.base_dir.join("incidents"));
    let mut traceable: BTreeMap<&str, bool> = config
        .connectors
        .iter()
        .map(|c| (c.name.as_str(), false))
        .collect();
    let mut failed: BTreeSet<&str> = BTreeSet::new();
    // The same problem found for many incidents and events is reported once, with a count.
    let mut problems: BTreeMap<String, (String, usize)> = BTreeMap::new();
    let target_schemas = compile_target_schemas(&config, &mut report);
    // Connectors whose lookup searches by `ticket.ref`: whether their `created` stores it.
    let mut stores_ref: BTreeMap<&str, bool> = BTreeMap::new();
    for file in example_incidents(&dir)? {
        let incident = match read_incident(&file) {
            Ok(i) => i,
            Err(e) => {
                report.errors.push(e.to_string());
                continue;
            }
        };
        report.incidents += 1;
        for v in schema.violations(&incident, "") {
            report.errors.push(format!(
                "{}: schema: #{}: {}",
                file.display(),
                v.pointer,
                v.detail
            ));
        }
        for connector in &config.connectors {
            if connector.lookup().is_some() {
                report.renders += 1;
                let context = preview_context(&renderer, &incident, connector, Event::Created);
                match renderer.render_lookup(connector, &context) {
                    Some(Err(e)) => {
                        failed.insert(connector.name.as_str());
                        problems
                            .entry(format!("lookup: {e}"))
                            .and_modify(|(_, n)| *n += 1)
                            .or_insert((
                                format!(
                                    "connector {}, lookup, incident {}",
                                    connector.name,
                                    file.display()
                                ),
                                1,
                            ));
                    }
                    Some(Ok(lookup)) => {
                        stores_ref.entry(connector.name.as_str()).or_insert(false);
                        let key = crate::ticket::route_for(&renderer, connector, &incident).key;
                        let reference = crate::render::ticket_ref(&connector.name, &key);
                        // A lookup that does not search by the ref needs none stored; one
                        // that does needs the created to carry it.
                        if !lookup.url.contains(&reference)
                            || created_carries(&renderer, &incident, connector, &reference)
                        {
                            stores_ref.insert(connector.name.as_str(), true);
                        }
                    }
                    None => {}
                }
            }
            for event in [Event::Created, Event::Updated, Event::Completed] {
                if !connector.sends(event) {
                    continue;
                }
                report.renders += 1;
                let seen_in = format!(
                    "connector {}, event {}, incident {}",
                    connector.name,
                    event.as_str(),
                    file.display()
                );
                let mut problem = |message: String| {
                    failed.insert(connector.name.as_str());
                    problems
                        .entry(message)
                        .and_modify(|(_, n)| *n += 1)
                        .or_insert((seen_in.clone(), 1));
                };
                let request = match preview(&renderer, &incident, connector, event) {
                    Ok(Outgoing::Request(request)) => request,
                    Ok(Outgoing::Mail { message, .. }) => {
                        if String::from_utf8_lossy(&message.formatted()).contains(
                            incident
                                .get("incidentId")
                                .and_then(Value::as_str)
                                .unwrap_or_default(),
                        ) {
                            traceable.insert(connector.name.as_str(), true);
                        }
                        continue;
                    }
                    Err(e) => {
                        problem(preview_problem(connector, event, e));
                        continue;
                    }
                };
                if carries_incident_id(&request, &incident) {
                    traceable.insert(connector.name.as_str(), true);
                }
                // An HTTP request: the connector's target is HTTP.
                let Target::Http(http) = &connector.target else {
                    continue;
                };
                let Some(request_config) = http.requests.get(event) else {
                    continue;
                };
                let template = &request_config.template.as_written;
                if Escape::for_file(template) != Escape::Json {
                    continue;
                }
                let body = match serde_json::from_str::<Value>(&request.body) {
                    Ok(body) => body,
                    Err(e) => {
                        problem(format!(
                            "{}: renders invalid JSON (output line {}, column {}: {e})",
                            template,
                            e.line(),
                            e.column()
                        ));
                        continue;
                    }
                };
                let schema_path = request_config
                    .target_schema
                    .as_ref()
                    .or(connector.target_schema.as_ref());
                if let Some((schema_file, validator)) = schema_path
                    .and_then(|p| target_schemas.get(p).map(|v| (p.display().to_string(), v)))
                {
                    for error in validator.iter_errors(&body).take(5) {
                        problem(format!(
                            "{}: output does not satisfy {}: #{}: {}",
                            template,
                            schema_file,
                            error.instance_path().as_str(),
                            crate::schema::truncate_chars(&error.to_string(), 200)
                        ));
                    }
                }
            }
        }
    }
    for (message, (first, count)) in problems {
        let more = if count > 1 {
            format!("; {} renders in all", count)
        } else {
            String::new()
        };
        report.errors.push(format!("{message} ({first}{more})"));
    }
    for (name, stored) in stores_ref {
        if !stored && !failed.contains(name) {
            report.warnings.push(format!(
                "connector {name}: its lookup searches for {{{{ticket.ref}}}}, but its created request never sends it; the lookup cannot find the tickets it opens"
            ));
        }
    }
    if report.incidents > 0 {
        for (name, seen) in traceable {
            if !seen && !failed.contains(name) {
                let template = config
                    .connector(name)
                    .map(|c| c.template.as_written.clone())
                    .unwrap_or_default();
                report.warnings.push(format!(
                    "{template}: connector {name}'s requests never carry the incident's id (incidentId); its tickets cannot be traced back"
                ));
            }
        }
    }
    Ok(report)
}

/// Whether the connector's `created` (its request, or its mail) carries `reference`.
fn created_carries(
    renderer: &Renderer,
    incident: &Value,
    connector: &Connector,
    reference: &str,
) -> bool {
    match preview(renderer, incident, connector, Event::Created) {
        Ok(Outgoing::Request(created)) => {
            created.body.contains(reference) || created.url.contains(reference)
        }
        Ok(Outgoing::Mail { message, .. }) => {
            String::from_utf8_lossy(&message.formatted()).contains(reference)
        }
        Err(_) => false,
    }
}

/// Every `target_schema` (connectors' and per-event requests'), compiled, by path; a schema
/// that does not compile is an error.
fn compile_target_schemas(
    config: &Config,
    report: &mut CheckReport,
) -> BTreeMap<PathBuf, jsonschema::Validator> {
    let mut out = BTreeMap::new();
    let paths = config
        .connectors
        .iter()
        .flat_map(|c| c.target_schemas().into_iter().map(Path::to_path_buf));
    for path in paths {
        if out.contains_key(&path) {
            continue;
        }
        let compiled = std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|text| serde_json::from_str::<Value>(&text).map_err(|e| e.to_string()))
            .and_then(|schema| jsonschema::validator_for(&schema).map_err(|e| e.to_string()));
        match compiled {
            Ok(v) => {
                out.insert(path, v);
            }
            Err(e) => report.errors.push(format!(
                "{}: target schema does not compile: {e}",
                path.display()
            )),
        }
    }
    out
}

/// Whether the request names the incident: its id in the URL, a header or the body, as
/// written or as the URL or JSON escaping writes it.
fn carries_incident_id(request: &RenderedRequest, incident: &Value) -> bool {
    let Some(id) = incident.get("incidentId").and_then(Value::as_str) else {
        return true;
    };
    if id.is_empty() {
        return true;
    }
    let forms = [
        id.to_string(),
        crate::render::escape_json_string(id),
        percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC).to_string(),
    ];
    forms.iter().any(|f| {
        request.url.contains(f.as_str())
            || request.body.contains(f.as_str())
            || request.headers.values().any(|v| v.contains(f.as_str()))
    })
}

/// Renders the exact request `connector` would send for `incident_file`, secrets masked.
pub fn render(
    config_file: &Path,
    connector_name: &str,
    incident_file: &Path,
    event: Event,
) -> Result<String, CliError> {
    let config = Config::load(config_file).map_err(crate::Error::from)?;
    let renderer = Renderer::new(config.partials_dir.as_deref(), &config.connectors)
        .map_err(crate::Error::from)?;
    let connector = config
        .connector(connector_name)
        .ok_or_else(|| CliError::UnknownConnector(connector_name.to_string()))?;
    let incident = read_incident(incident_file)?;
    match preview(&renderer, &incident, connector, event) {
        Ok(Outgoing::Request(mut request)) => {
            // The token is fetched when the request is sent; its place is shown, masked.
            if matches!(&connector.target, Target::Http(h) if h.oauth2.is_some()) {
                request
                    .headers
                    .insert("authorization".into(), "Bearer (OAuth2 token)".into());
            }
            Ok(format_request(&request, &config))
        }
        Ok(Outgoing::Mail { message, .. }) => {
            let text = String::from_utf8_lossy(&message.formatted()).into_owned();
            let (host, port, from) = match &connector.target {
                Target::Smtp(smtp) => (smtp.host.as_str(), smtp.port, smtp.from.as_str()),
                Target::Http(_) => ("", 0, ""),
            };
            Ok(format!(
                "SMTP {host}:{port} (MAIL FROM {from})\n{}",
                config.secrets.mask(&text)
            ))
        }
        Err(Unprepared::Render(e)) => Err(crate::Error::from(e).into()),
        Err(e) => Err(CliError::Input {
            file: incident_file.to_path_buf(),
            message: preview_problem(connector, event, e),
        }),
    }
}

/// The request as text: request line, headers, blank line, body. Known secrets are masked,
/// and so is every value of a header that carries credentials.
pub fn format_request(request: &RenderedRequest, config: &Config) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} {}",
        request.method,
        config.secrets.mask(&request.url)
    );
    for (name, value) in &request.headers {
        let shown = if crate::secrets::is_credential_header(name) {
            "********".to_string()
        } else {
            config.secrets.mask(value)
        };
        let _ = writeln!(out, "{name}: {shown}");
    }
    out.push('\n');
    out.push_str(&config.secrets.mask(&request.body));
    if !request.body.ends_with('\n') {
        out.push('\n');
    }
    out
}

/// The log filter from `IGW_LOG` (default `info`). Handlebars logs helper arguments and the
/// values it renders at `debug`, which can hold secret vars and whole incidents, so it is held
/// at `warn` unless `IGW_LOG` asks for `handlebars=trace` by name.
pub fn log_filter(spec: Option<&str>) -> tracing_subscriber::EnvFilter {
    let spec = spec.unwrap_or("info");
    let filter = tracing_subscriber::EnvFilter::try_new(spec)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if spec.split(',').any(|d| d.trim() == "handlebars=trace") {
        return filter;
    }
    match "handlebars=warn".parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    }
}
