//! The offline commands behind `incident-gateway check`, `routes` and `render`: test a
//! configuration, its routing and its templates before they go live, without sending anything.

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
    /// A problem of a template written in the config, named by its file, line and field.
    #[error("{0}")]
    Located(String),
}

/// A render error as `render` reports it: one of a template written inline in the config
/// names the config's file, line and field.
fn render_failure(config: &Config, e: crate::render::RenderError) -> CliError {
    let text = std::fs::read_to_string(&config.file).unwrap_or_default();
    let place = Placer::new(config, &text);
    match place.inline_field(&e.template) {
        Some(_) => CliError::Located(place.render_error(&e)),
        None => crate::Error::from(e).into(),
    }
}

/// What `check` found: problems (each a line naming file, line and reason) and what it did.
#[derive(Debug, Default)]
pub struct CheckReport {
    pub errors: Vec<String>,
    /// What the admin should know about how the check ran (which incidents it rendered).
    pub notes: Vec<String>,
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
    // A connector that collects sends the window's incidents: the preview's window holds
    // this one incident (a completion is never collected).
    let collected = connector
        .collect_for(crate::route::account_of(incident))
        .filter(|_| event != Event::Completed)
        .map(|_| crate::render::Collected {
            incidents: vec![incident.clone()],
            count: 1,
        });
    AttemptFacts {
        event,
        delivery_id: PREVIEW_DELIVERY_ID.into(),
        attempt: 1,
        received_at_ms: now_ms,
        ticket,
        completion,
        collected,
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

/// What a real attempt of `event` would send, as text with the config's secrets masked: the
/// request line, headers and body, or the SMTP envelope and message (`render` and the
/// console's preview show this).
pub fn preview_text(
    config: &Config,
    renderer: &Renderer,
    incident: &Value,
    connector: &Connector,
    event: Event,
) -> Result<String, Unprepared> {
    match preview(renderer, incident, connector, event)? {
        Outgoing::Request(mut request) => {
            // The token is fetched when the request is sent; its place is shown, masked.
            if matches!(&connector.target, Target::Http(h) if h.oauth2.is_some()) {
                request
                    .headers
                    .insert("authorization".into(), "Bearer (OAuth2 token)".into());
            }
            Ok(format_request(&request, config))
        }
        Outgoing::Mail { message, .. } => {
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
    }
}

/// A preview's failure as `check` reports it: the template's own location, or the message
/// problem with the connector and event.
fn preview_problem(connector: &Connector, event: Event, e: Unprepared) -> String {
    match e {
        Unprepared::Render(e) => e.to_string(),
        other => format!("connector {} ({}): {other}", connector.name, event.as_str()),
    }
}

/// The example incidents shipped in `examples/incidents/`, built into the binary: `check`
/// renders them when the config has no `incidents/` folder of its own.
pub const BUILT_IN_INCIDENTS: [(&str, &str); 5] = [
    (
        "cloud-defender.json",
        include_str!("../examples/incidents/cloud-defender.json"),
    ),
    (
        "hostile-markup.json",
        include_str!("../examples/incidents/hostile-markup.json"),
    ),
    (
        "hostile-text.json",
        include_str!("../examples/incidents/hostile-text.json"),
    ),
    (
        "minimal.json",
        include_str!("../examples/incidents/minimal.json"),
    ),
    (
        "sample.json",
        include_str!("../examples/incidents/sample.json"),
    ),
];

/// The incidents `check` renders: each with the name its messages give it, and its JSON or
/// why it has none.
fn check_incidents(
    config: &Config,
    incidents_dir: Option<&Path>,
    report: &mut CheckReport,
) -> Vec<(String, Result<Value, String>)> {
    let from_files = |files: Vec<PathBuf>| -> Vec<(String, Result<Value, String>)> {
        files
            .iter()
            .map(|f| {
                (
                    f.display().to_string(),
                    read_incident(f).map_err(|e| e.to_string()),
                )
            })
            .collect()
    };
    let built_in = || -> Vec<(String, Result<Value, String>)> {
        BUILT_IN_INCIDENTS
            .iter()
            .map(|(name, text)| {
                (
                    format!("(built in) {name}"),
                    serde_json::from_str(text).map_err(|e| format!("(built in) {name}: {e}")),
                )
            })
            .collect()
    };
    match incidents_dir {
        // Asked for by name: a folder that is missing or holds none is a problem.
        Some(dir) => match example_incidents(dir) {
            Ok(files) if files.is_empty() => {
                report.errors.push(format!(
                    "{}: no example incidents (*.json) to render",
                    dir.display()
                ));
                vec![]
            }
            Ok(files) => from_files(files),
            Err(e) => {
                report.errors.push(e.to_string());
                vec![]
            }
        },
        None => {
            let dir = config.base_dir.join("incidents");
            let files = if dir.is_dir() {
                example_incidents(&dir).unwrap_or_default()
            } else {
                vec![]
            };
            if !files.is_empty() {
                return from_files(files);
            }
            let why = if dir.is_dir() {
                format!("{} holds no *.json", dir.display())
            } else {
                format!("there is no {} beside the config", dir.display())
            };
            report.notes.push(format!(
                "{why}: rendered the {} example incidents built into the gateway instead; render your own with --incidents DIR (or put them in incidents/ beside the config)",
                BUILT_IN_INCIDENTS.len()
            ));
            built_in()
        }
    }
}

/// Loads the config, compiles every template, and renders every connector for every event
/// against each example incident (those in `incidents_dir`, else in `incidents/` beside the
/// config, else the built-in ones). Every problem is collected in the report — config errors
/// (then nothing is rendered), templates that do not compile, renders that fail, partial
/// arguments and matchers that read no field — each naming file, line and field.
pub fn check(config_file: &Path, incidents_dir: Option<&Path>) -> Result<CheckReport, CliError> {
    let mut report = CheckReport::default();
    let config = match Config::load_all(config_file) {
        Ok(config) => config,
        Err(errors) => {
            report.errors.extend(errors.iter().map(ToString::to_string));
            return Ok(report);
        }
    };
    let config_text = std::fs::read_to_string(config_file).unwrap_or_default();
    let place = Placer::new(&config, &config_text);
    let (renderer, compile_errors) =
        Renderer::build(config.partials_dir.as_deref(), &config.connectors);
    // Connectors whose templates do not compile: reported, not rendered.
    let mut broken: BTreeSet<String> = BTreeSet::new();
    let mut partials_broken = false;
    for e in &compile_errors {
        let shown = place.render_error(&e.error);
        if !report.errors.contains(&shown) {
            report.errors.push(shown);
        }
        match &e.connector {
            Some(name) => {
                broken.insert(name.clone());
            }
            None => partials_broken = true,
        }
    }
    let schema = IncidentSchema::shipped().map_err(crate::Error::from)?;
    let fields = crate::fields::IncidentFields::shipped().map_err(crate::Error::from)?;
    let incidents = check_incidents(&config, incidents_dir, &mut report);
    let examples: Vec<Value> = incidents
        .iter()
        .filter_map(|(_, i)| i.as_ref().ok().cloned())
        .collect();
    check_fields(&config, &place, &renderer, &fields, &examples, &mut report);
    report.notes.extend(threat_intel_note(&config));
    report.errors.extend(windows_never_read(&config, &place));
    // The gateway would run without a list that does not parse: the admin is told here.
    for (i, e) in config.threat_intel.problems() {
        let field = format!("threat_intel.lists[{i}].file");
        report.errors.push(format!("{}: {e}", place.field(&field)));
    }
    if partials_broken {
        report.notes.push(
            "a partial does not compile: nothing was rendered (fix it and run check again)".into(),
        );
        return Ok(report);
    }
    let mut traceable: BTreeMap<&str, bool> = config
        .connectors
        .iter()
        .map(|c| (c.name.as_str(), false))
        .collect();
    let mut failed: BTreeSet<&str> = broken.iter().map(String::as_str).collect();
    // The same problem found for many incidents and events is reported once, with a count.
    let mut problems: BTreeMap<String, (String, usize)> = BTreeMap::new();
    let target_schemas = compile_target_schemas(&config, &mut report);
    // Connectors whose lookup searches by `ticket.ref`: whether their `created` stores it.
    let mut stores_ref: BTreeMap<&str, bool> = BTreeMap::new();
    for (file, incident) in &incidents {
        let mut incident = match incident {
            Ok(i) => i.clone(),
            Err(e) => {
                report.errors.push(e.clone());
                continue;
            }
        };
        // Rendered as the gateway would store it: with its threat-intel findings.
        config.threat_intel.enrich(&mut incident);
        let incident = &incident;
        report.incidents += 1;
        for v in schema.violations(incident, "") {
            report
                .errors
                .push(format!("{file}: schema: #{}: {}", v.pointer, v.detail));
        }
        // A connector whose templates do not compile is reported above, not rendered.
        for connector in config
            .connectors
            .iter()
            .filter(|c| !broken.contains(&c.name))
        {
            if connector.lookup().is_some() {
                report.renders += 1;
                let context = preview_context(&renderer, incident, connector, Event::Created);
                match renderer.render_lookup(connector, &context) {
                    Some(Err(e)) => {
                        failed.insert(connector.name.as_str());
                        problems
                            .entry(format!("lookup: {}", place.render_error(&e)))
                            .and_modify(|(_, n)| *n += 1)
                            .or_insert((
                                format!("connector {}, lookup, incident {file}", connector.name),
                                1,
                            ));
                    }
                    Some(Ok(lookup)) => {
                        stores_ref.entry(connector.name.as_str()).or_insert(false);
                        let key = crate::ticket::route_for(&renderer, connector, incident).key;
                        let reference = crate::render::ticket_ref(&connector.name, &key);
                        // A lookup that does not search by the ref needs none stored; one
                        // that does needs the created to carry it.
                        if !lookup.url.contains(&reference)
                            || created_carries(&renderer, incident, connector, &reference)
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
                    "connector {}, event {}, incident {file}",
                    connector.name,
                    event.as_str(),
                );
                let mut problem = |message: String| {
                    failed.insert(connector.name.as_str());
                    problems
                        .entry(message)
                        .and_modify(|(_, n)| *n += 1)
                        .or_insert((seen_in.clone(), 1));
                };
                let request = match preview(&renderer, incident, connector, event) {
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
                    Err(Unprepared::Render(e)) => {
                        problem(place.render_error(&e));
                        continue;
                    }
                    Err(e) => {
                        problem(preview_problem(connector, event, e));
                        continue;
                    }
                };
                if carries_incident_id(&request, incident) {
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
    sla_checks(&config, &renderer, &mut report);
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

/// Names the place in the config file of a template written inline (a URL, a header, a
/// subject, a correlation key) and of other fields `check` reports on.
struct Placer<'a> {
    config: &'a Config,
    lines: crate::config::FieldLines<'a>,
    /// The file as TOML, for header names as written (the config keeps them lower-cased).
    table: toml::Table,
}

impl<'a> Placer<'a> {
    fn new(config: &'a Config, text: &'a str) -> Placer<'a> {
        Placer {
            config,
            lines: crate::config::FieldLines::new(text),
            table: text.parse().unwrap_or_default(),
        }
    }

    /// `FILE: line N: FIELD` for a field of the config.
    fn field(&self, field: &str) -> String {
        let line = self
            .lines
            .line_of(field)
            .map(|l| format!("line {l}: "))
            .unwrap_or_default();
        format!("{}: {line}{field}", self.config.file.display())
    }

    /// A render or compile error; one of a template written inline in the config names the
    /// config file, line and field first.
    /// The message is the same for every event that shares the field, so it is reported once.
    fn render_error(&self, e: &crate::render::RenderError) -> String {
        let Some(field) = self.inline_field(&e.template) else {
            return e.to_string();
        };
        let within = match (e.line, e.column) {
            // Most inline templates are one line: the column says where.
            (Some(1), Some(c)) => format!("column {c}: "),
            (Some(l), Some(c)) => format!("its line {l}, column {c}: "),
            (Some(l), None) => format!("its line {l}: "),
            _ => String::new(),
        };
        format!("{}: {within}{}", self.field(&field), e.reason)
    }

    /// The config field an inline template's name (`connector NAME PART …`, see
    /// [`crate::render`]) stands for: the per-event table's when it writes one.
    fn inline_field(&self, template: &str) -> Option<String> {
        let rest = template.strip_prefix("connector ")?;
        let words: Vec<&str> = rest.split(' ').collect();
        let (name, part, what) = (words.first()?, words.get(1)?, &words[2.min(words.len())..]);
        let i = self
            .config
            .connectors
            .iter()
            .position(|c| c.name == *name)?;
        let base = format!("connectors[{i}]");
        let first_written = |candidates: Vec<String>| -> Option<String> {
            let last = candidates.last().cloned();
            candidates
                .into_iter()
                .find(|f| self.lines.written(f).is_some())
                .or(last)
        };
        let header = |table: String, lower: &str| -> String {
            let written = self
                .toml_table(&table)
                .and_then(|t| t.keys().find(|k| k.eq_ignore_ascii_case(lower)).cloned())
                .unwrap_or_else(|| lower.to_string());
            format!("{table}.{written}")
        };
        match (*part, what) {
            ("correlation_key", []) => Some(format!("{base}.correlation_key")),
            ("correlation_key", ["tenant", tenant]) => {
                Some(format!("{base}.per_tenant.{tenant}.correlation_key"))
            }
            ("lookup", ["url"]) => Some(format!("{base}.lookup.url")),
            ("lookup", ["header", h]) => Some(header(format!("{base}.lookup.headers"), h)),
            (event, ["url"]) => first_written(vec![
                format!("{base}.requests.{event}.url"),
                format!("{base}.url"),
            ]),
            (event, ["header", h]) => first_written(vec![
                header(format!("{base}.requests.{event}.headers"), h),
                header(format!("{base}.headers"), h),
            ]),
            (event, ["subject"]) => first_written(vec![
                format!("{base}.requests.{event}.subject"),
                format!("{base}.subject"),
            ]),
            (_, ["subject_tag"]) => Some(format!("{base}.subject_tag")),
            (_, [list @ ("to" | "cc"), k]) => Some(format!("{base}.{list}[{k}]")),
            _ => None,
        }
    }

    /// The table at `field` (`connectors[0].requests.created.headers`) in the file as written.
    fn toml_table(&self, field: &str) -> Option<&toml::Table> {
        let mut value: Option<&toml::Value> = None;
        let mut table = &self.table;
        for step in field.split('.') {
            let (key, index) = match step.split_once('[') {
                Some((k, i)) => (k, i.trim_end_matches(']').parse::<usize>().ok()),
                None => (step, None),
            };
            let mut next = table.get(key)?;
            if let Some(i) = index {
                next = next.as_array()?.get(i)?;
            }
            value = Some(next);
            table = next.as_table()?;
        }
        value?.as_table()
    }
}

/// Why a matcher's pointer reads nothing: under `/ti`, the threat-intel findings the config's
/// lists give; elsewhere, the incident's fields.
fn matcher_problem(
    config: &Config,
    fields: &crate::fields::IncidentFields,
    pointer: &str,
    examples: &[Value],
) -> Option<String> {
    if pointer == "/ti" || pointer.starts_with("/ti/") {
        let lists: Vec<String> = config
            .threat_intel
            .settings
            .lists
            .iter()
            .map(|l| l.name.clone())
            .collect();
        return crate::intel::pointer_problem(pointer, &lists);
    }
    fields.pointer_problem(pointer, examples)
}

/// Connectors with a collection window (`collect_for`, theirs or a tenant's) none of whose
/// templates reads `collected`, directly or through a partial: the incidents after a
/// window's first would reach the target nowhere.
fn windows_never_read(config: &Config, place: &Placer) -> Vec<String> {
    // The partials that read `collected`, directly or through another partial, by name.
    let partials: Vec<(String, String)> = config
        .partials_dir
        .as_deref()
        .and_then(|dir| std::fs::read_dir(dir).ok())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e
                .file_name()
                .to_string_lossy()
                .split('.')
                .next()?
                .to_string();
            Some((name, std::fs::read_to_string(e.path()).ok()?))
        })
        .collect();
    let mut reading: BTreeSet<&str> = BTreeSet::new();
    loop {
        let before = reading.len();
        for (name, text) in &partials {
            if text.contains("collected") || reading.iter().any(|r| text.contains(r)) {
                reading.insert(name);
            }
        }
        if reading.len() == before {
            break;
        }
    }
    let mut errors = Vec::new();
    for (i, connector) in config.connectors.iter().enumerate() {
        let windowed = connector.collect_for.is_some()
            || connector
                .per_tenant
                .values()
                .any(|t| t.collect_for.is_some());
        if !windowed {
            continue;
        }
        let reads = [Event::Created, Event::Updated, Event::Completed]
            .into_iter()
            .flat_map(|event| connector_template_files(connector, event))
            .filter_map(|file| std::fs::read_to_string(&file.resolved).ok())
            .any(|text| text.contains("collected") || reading.iter().any(|r| text.contains(r)));
        if !reads {
            errors.push(format!(
                "{}: collect_for is set, but no template of {:?} reads `collected`: the incidents \
                 after a window's first would reach the target nowhere (use \
                 templates/generic/batch.json.hbs, or list `collected` in the template)",
                place.field(&format!("connectors[{i}].collect_for")),
                connector.name
            ));
        }
    }
    errors
}

/// What `check` says of the threat-intel lists it loaded: entries and memory, per list.
fn threat_intel_note(config: &Config) -> Vec<String> {
    let intel = config.threat_intel.current();
    intel
        .lists
        .iter()
        .map(|l| {
            let bytes = l.heap_bytes();
            format!(
                "threat-intel list {}: {} entries, about {} KiB in memory ({} bytes an entry)",
                l.name,
                l.entries,
                bytes / 1024,
                bytes.checked_div(l.entries).unwrap_or(0)
            )
        })
        .collect()
}

/// `[sla]`: a note on what it holds, and every connector that hears its alerts rendering a
/// sample one (a breach), so a template that cannot show an SLA alert is found here rather
/// than at the first breach.
fn sla_checks(config: &Config, renderer: &Renderer, report: &mut CheckReport) {
    let Some(sla) = &config.sla else {
        return;
    };
    let mut notify: BTreeSet<&str> = sla.notify.iter().map(String::as_str).collect();
    notify.extend(
        sla.policies
            .iter()
            .flat_map(|p| p.notify.iter().flatten().map(String::as_str)),
    );
    report.notes.push(format!(
        "sla: clocks on the tickets of {}; {} {}; alerts to {}",
        sla.connectors.join(", "),
        sla.policies.len(),
        if sla.policies.len() == 1 {
            "policy"
        } else {
            "policies"
        },
        if notify.is_empty() {
            "no connector (logged only)".to_string()
        } else {
            notify.iter().copied().collect::<Vec<_>>().join(", ")
        }
    ));
    let sample = crate::watchdog::sample_alert(sla);
    for name in notify {
        let Some(connector) = config.connector(name) else {
            continue;
        };
        report.renders += 1;
        match preview(renderer, &sample, connector, Event::Created) {
            Ok(_) => {}
            Err(Unprepared::Render(e)) => report.errors.push(format!(
                "connector {name} cannot send an SLA alert ([sla] notify): {}",
                e
            )),
            Err(e) => report.errors.push(format!(
                "connector {name} cannot send an SLA alert ([sla] notify): {}",
                preview_problem(connector, Event::Created, e)
            )),
        }
    }
}

/// Partial arguments and matchers that read no field an incident can have (see
/// [`crate::fields`]): each an error naming the template's file and line, or the matcher's
/// line in the config, with the field it most likely meant.
fn check_fields(
    config: &Config,
    place: &Placer,
    renderer: &Renderer,
    fields: &crate::fields::IncidentFields,
    examples: &[Value],
    report: &mut CheckReport,
) {
    // Every matcher the config has: connectors', tenants' own on a connector, and the
    // assignment rules' (global, then each tenant's), each by the field it is written as.
    let mut matchers: Vec<(String, &crate::route::Matcher)> = Vec::new();
    for (i, connector) in config.connectors.iter().enumerate() {
        for (j, m) in connector.matchers.iter().enumerate() {
            matchers.push((format!("connectors[{i}].matchers[{j}].field"), m));
        }
        for settings in connector.per_tenant.values() {
            for (j, m) in settings.matchers.iter().flatten().enumerate() {
                let at = format!("connectors[{i}].per_tenant.{}", settings.tenant);
                matchers.push((format!("{at}.matchers[{j}].field"), m));
            }
        }
    }
    if let Some(rules) = config.connectors.first().map(|c| &*c.assignment) {
        for (j, rule) in rules.global.iter().enumerate() {
            for (k, m) in rule.matchers.iter().enumerate() {
                matchers.push((format!("assignment[{j}].matchers[{k}].field"), m));
            }
        }
        for (account, own) in &rules.per_tenant {
            let Some(t) = config.tenants.iter().position(|t| t.account_id == *account) else {
                continue;
            };
            for (j, rule) in own.iter().enumerate() {
                for (k, m) in rule.matchers.iter().enumerate() {
                    let field = format!("tenants[{t}].assignment[{j}].matchers[{k}].field");
                    matchers.push((field, m));
                }
            }
        }
    }
    for (field, matcher) in matchers {
        if let Some(why) = matcher_problem(config, fields, &matcher.field, examples) {
            report
                .errors
                .push(format!("{}: {why}", place.field(&field)));
        }
    }
    let bare = serde_json::json!({"incidentId": "x"});
    let mut seen = BTreeSet::new();
    let mut check_text = |shown: &str, text: &str, locals: &[String], facts: &Value| {
        for arg in crate::fields::argument_paths(text, locals) {
            if let Some(why) = fields.context_path_problem(&arg.path, facts, examples) {
                let message = format!(
                    "{shown}:{}:{}: {}: {why}",
                    arg.line,
                    arg.column,
                    arg.shown()
                );
                if seen.insert(message.clone()) {
                    report.errors.push(message);
                }
            }
        }
    };
    let mut partial_keys: Vec<String> = Vec::new();
    // Every partial call of the connectors' templates: whether it keeps the top scope.
    let mut calls: Vec<(String, bool)> = Vec::new();
    for connector in &config.connectors {
        let context = preview_context(renderer, &bare, connector, Event::Completed);
        let facts = crate::fields::facts_of(&context, &bare);
        let files = [Event::Created, Event::Updated, Event::Completed]
            .into_iter()
            .flat_map(|event| connector_template_files(connector, event));
        for file in files {
            let Ok(text) = std::fs::read_to_string(&file.resolved) else {
                continue;
            };
            partial_keys.extend(
                crate::fields::argument_paths(&text, &[])
                    .iter()
                    .filter_map(|a| a.partial_key().map(String::from)),
            );
            calls.extend(crate::fields::partial_calls(&text));
            check_text(&file.as_written, &text, &[], &facts);
        }
    }
    let Some(dir) = &config.partials_dir else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut partials: Vec<(PathBuf, String, String)> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "hbs"))
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.split('.').next()?.to_string();
            std::fs::read_to_string(&p).ok().map(|t| (p, name, t))
        })
        .collect();
    partials.sort();
    for (_, _, text) in &partials {
        partial_keys.extend(
            crate::fields::argument_paths(text, &[])
                .iter()
                .filter_map(|a| a.partial_key().map(String::from)),
        );
    }
    partial_keys.sort();
    partial_keys.dedup();
    // A partial's top scope is its caller's: it is judged only when every call of it keeps
    // the top scope, from a template or from a partial judged so too (else its paths may be
    // an item's). The caller's arguments (`value`, `max`) are not fields there.
    let mut top_only: BTreeSet<&str> = partials.iter().map(|(_, n, _)| n.as_str()).collect();
    loop {
        let mut all_calls = calls.clone();
        for (_, name, text) in &partials {
            for (callee, top) in crate::fields::partial_calls(text) {
                all_calls.push((callee, top && top_only.contains(name.as_str())));
            }
        }
        let before = top_only.len();
        top_only.retain(|p| all_calls.iter().all(|(c, top)| c != p || *top));
        if top_only.len() == before {
            break;
        }
    }
    let Some(connector) = config.connectors.first() else {
        return;
    };
    let mut facts = crate::fields::facts_of(
        &preview_context(renderer, &bare, connector, Event::Completed),
        &bare,
    );
    // Connector vars differ by caller: any is allowed.
    if let Some(vars) = facts.pointer_mut("/connector/vars") {
        *vars = Value::Object(serde_json::Map::new());
    }
    for (path, name, text) in &partials {
        if top_only.contains(name.as_str()) {
            check_text(&path.display().to_string(), text, &partial_keys, &facts);
        }
    }
}

/// The template files a connector renders for `event`: its body, and an email's HTML body.
fn connector_template_files(
    connector: &Connector,
    event: Event,
) -> Vec<crate::connector::TemplatePath> {
    let mut files: Vec<crate::connector::TemplatePath> =
        connector.template(event).into_iter().cloned().collect();
    if let Target::Smtp(smtp) = &connector.target
        && let Some(html) = smtp
            .messages
            .get(event)
            .and_then(|m| m.html_template.as_ref())
    {
        files.push(html.clone());
    }
    files
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

/// What `routes` found: the text to print, and whether the gateway would refuse the incident
/// (it fails the schema: it would reach no connector).
#[derive(Debug)]
pub struct Routes {
    pub text: String,
    pub refused: bool,
}

/// Which connectors `incident_file` would reach under `config_file`, and why, as
/// Alertmanager's `amtool config routes test` shows it: for each connector, each step of its
/// routing (upstream, minimum threat rating, every matcher with its expected and actual
/// value), met or not.
pub fn routes(config_file: &Path, incident_file: &Path) -> Result<Routes, CliError> {
    let config = Config::load(config_file).map_err(crate::Error::from)?;
    let mut incident = read_incident(incident_file)?;
    let schema = IncidentSchema::shipped().map_err(crate::Error::from)?;
    let fields = crate::fields::IncidentFields::shipped().map_err(crate::Error::from)?;
    let mut out = String::new();
    let violations = schema.violations(&incident, "");
    let id = incident
        .get("incidentId")
        .map(|v| v.to_string())
        .unwrap_or_else(|| "(no incidentId)".into());
    let _ = writeln!(out, "incident {id} ({})", incident_file.display());
    if !violations.is_empty() {
        let _ = writeln!(
            out,
            "refused: the incident fails the schema, so the gateway answers 422 and it reaches no connector:"
        );
        for v in &violations {
            let _ = writeln!(out, "  #{}: {}", v.pointer, v.detail);
        }
    }
    // Routed as the gateway routes it: with its threat-intel findings.
    config.threat_intel.enrich(&mut incident);
    if !config.threat_intel.is_empty() {
        let _ = writeln!(out, "{}", threat_intel_line(&incident));
        for (_, e) in config.threat_intel.problems() {
            let _ = writeln!(out, "  not loaded (the gateway would run without it): {e}");
        }
    }
    // For the keys of the connectors reached (a template that does not compile is `check`'s
    // to report: the key is left out here).
    let renderer = Renderer::new(config.partials_dir.as_deref(), &config.connectors).ok();
    let mut reached = Vec::new();
    for connector in &config.connectors {
        let e = crate::route::explain(connector, &incident);
        let verdict = if e.accepted && violations.is_empty() {
            reached.push(connector.name.as_str());
            "reached"
        } else {
            "not reached"
        };
        let _ = writeln!(out, "\n{}: {verdict}", connector.name);
        if e.upstream {
            let _ = writeln!(
                out,
                "  upstream = true: hears only of completions, takes no incident"
            );
        }
        if let Some(served) = &connector.tenants {
            let names: Vec<&str> = served.values().map(String::as_str).collect();
            let account = crate::route::account_of(&incident)
                .map_or("no account".to_string(), |a| format!("account {a}"));
            let _ = writeln!(
                out,
                "  tenants = {names:?}: incident's {account}: {}",
                met_or_not(e.serves)
            );
        }
        if let Some(tenant) = &e.tenant {
            let _ = writeln!(
                out,
                "  per_tenant.{tenant}: this tenant's own settings apply (matchers, rating, key, windows where it sets them)"
            );
        }
        if let Some((min, rating, met)) = e.min_threat_rating {
            let actual = rating.map_or("none".to_string(), |r| r.name().to_string());
            let _ = writeln!(
                out,
                "  min_threat_rating = {:?}: incident's rating {actual}: {}",
                min.name(),
                met_or_not(met)
            );
        }
        for m in &e.matchers {
            let actual = match &m.actual {
                None => "missing (compared as \"\")".to_string(),
                Some(Value::String(s)) => format!("{s:?}"),
                Some(other) => other.to_string(),
            };
            let _ = writeln!(
                out,
                "  {} {}: actual {}: {}",
                m.field,
                m.condition,
                config
                    .secrets
                    .mask(&crate::schema::truncate_chars(&actual, 200)),
                met_or_not(m.met)
            );
            // A field missing here may be missing from every incident: a typo.
            if m.actual.is_none()
                && let Some(why) =
                    matcher_problem(&config, &fields, &m.field, std::slice::from_ref(&incident))
            {
                let _ = writeln!(out, "    {why}");
            }
        }
        if !e.upstream && e.min_threat_rating.is_none() && e.matchers.is_empty() {
            let _ = writeln!(out, "  no matchers: takes every incident");
        }
        if e.accepted
            && let Some(renderer) = &renderer
        {
            let route = crate::ticket::route_for(renderer, connector, &incident);
            let window = connector
                .aggregate_for(crate::route::account_of(&incident))
                .map_or("until completed".to_string(), |d| {
                    format!("for {}", humantime::format_duration(d))
                });
            let _ = writeln!(
                out,
                "  ticket: correlation key {:?}, takes more incidents {window}",
                config.secrets.mask(&route.key)
            );
            if let Some(d) = connector.collect_for(crate::route::account_of(&incident)) {
                let _ = writeln!(
                    out,
                    "  collect_for = {:?}: the key's incidents within {} of the first go as one delivery (`collected` lists them)",
                    humantime::format_duration(d).to_string(),
                    humantime::format_duration(d)
                );
            }
            if let Some(line) = sla_line(connector, &incident) {
                let _ = writeln!(out, "  {line}");
            }
        }
    }
    let _ = writeln!(
        out,
        "\nreaches: {}",
        if reached.is_empty() {
            "no connector".to_string()
        } else {
            reached.join(", ")
        }
    );
    Ok(Routes {
        text: out,
        refused: !violations.is_empty(),
    })
}

/// `routes`' line on the SLA clocks a ticket this incident opens starts with.
fn sla_line(connector: &Connector, incident: &Value) -> Option<String> {
    let settings = connector.sla.as_ref()?;
    let Some(start) = connector.sla_start(incident) else {
        return Some(
            "sla: no [[sla.policies]] entry applies: its tickets have no SLA clocks".into(),
        );
    };
    let business = |ms: i64| {
        humantime::format_duration(std::time::Duration::from_millis(
            u64::try_from(ms).unwrap_or(0),
        ))
        .to_string()
    };
    let mut clocks = Vec::new();
    if let Some(ms) = start.take_over_ms {
        clocks.push(format!("taken over within {}", business(ms)));
    }
    if let Some(ms) = start.complete_ms {
        clocks.push(format!("completed within {}", business(ms)));
    }
    let calendar = settings
        .policy(&start.policy)
        .map(|p| p.calendar.as_str())
        .filter(|c| !c.is_empty())
        .unwrap_or("sla.calendar");
    Some(format!(
        "sla: policy {}: {} (business time, calendar {calendar}), warned {} before",
        start.policy,
        clocks.join(", "),
        business(start.warn_before_ms)
    ))
}

fn met_or_not(met: bool) -> &'static str {
    if met { "met" } else { "not met" }
}

/// `routes`' line on what the lists found: `/ti/matched` and each match.
fn threat_intel_line(incident: &Value) -> String {
    let matches: Vec<String> = incident
        .pointer("/ti/matches")
        .and_then(Value::as_array)
        .map(|m| {
            m.iter()
                .map(|m| {
                    format!(
                        "{} ({} in {})",
                        m["value"].as_str().unwrap_or(""),
                        m["field"].as_str().unwrap_or(""),
                        m["list"].as_str().unwrap_or("")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    match matches.is_empty() {
        true => "threat intel: /ti/matched = false (no value is on a list)".into(),
        false => format!("threat intel: /ti/matched = true: {}", matches.join(", ")),
    }
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
        .map_err(|e| render_failure(&config, e))?;
    let connector = config
        .connector(connector_name)
        .ok_or_else(|| CliError::UnknownConnector(connector_name.to_string()))?;
    let mut incident = read_incident(incident_file)?;
    config.threat_intel.enrich(&mut incident);
    match preview_text(&config, &renderer, &incident, connector, event) {
        Ok(text) => Ok(text),
        Err(Unprepared::Render(e)) => Err(render_failure(&config, e)),
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
