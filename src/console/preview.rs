//! Template preview: pick a connector and an event, an example incident or paste one, edit
//! the template if you like, and see the exact request that would be sent (secrets masked),
//! re-rendered as you type. It runs the steps a delivery runs (`cli::preview_text`: render,
//! stamp, sign, or build the mail); an error names the template file, line and what failed.
//! Edits are not saved: the file on disk stays what the admin's editor and `check` see.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};

use super::session::{self, Session};
use crate::App;
use crate::cli::BUILT_IN_INCIDENTS;
use crate::model::Event;
use crate::render::Renderer;

/// The most template text a preview takes (a template file is far smaller).
const MAX_TEMPLATE: usize = 256 * 1024;
const EVENTS: [Event; 3] = [Event::Created, Event::Updated, Event::Completed];

struct Choice {
    connector: String,
    event: Event,
    example: String,
}

fn choice(app: &App, pairs: &[(String, String)]) -> Choice {
    let generation = app.live.current();
    let get = |name| super::field(pairs, name).unwrap_or_default().to_string();
    let connector = Some(get("connector"))
        .filter(|c| generation.connector(c).is_some())
        .or_else(|| generation.connectors.first().map(|c| c.name.clone()))
        .unwrap_or_default();
    let example = Some(get("example"))
        .filter(|e| BUILT_IN_INCIDENTS.iter().any(|(n, _)| n == e))
        .unwrap_or_else(|| BUILT_IN_INCIDENTS[0].0.to_string());
    Choice {
        connector,
        event: Event::parse(&get("event")).unwrap_or(Event::Created),
        example,
    }
}

/// The body template file `event` renders for `connector`, as the config names it, and its
/// text on disk.
async fn template_of(app: &App, connector: &str, event: Event) -> Option<(String, String)> {
    let generation = app.live.current();
    let path = generation.connector(connector)?.template(event)?.clone();
    let text = tokio::fs::read_to_string(&path.resolved)
        .await
        .unwrap_or_default();
    Some((path.as_written, text))
}

/// The preview shows connectors' settings and renders templates an admin types: the server
/// admin's, as connector health is.
fn admins_only(session: &Session) -> Markup {
    super::page(
        session,
        "/ui/preview",
        "Template preview",
        html! {
            h1 { "Template preview" }
            (super::failure("The template preview needs the server's admin token: it shows every connector's settings and renders templates as typed."))
        },
    )
}

/// Previews render one at a time, on a permit of their own: typing cannot take ingest's.
static PREVIEWS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// `GET /ui/preview?connector=&event=&example=`.
pub async fn page(
    State(app): State<Arc<App>>,
    session: Session,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Markup {
    if !session.is_admin() {
        return admins_only(&session);
    }
    // htmx asks for the page to take one part of it (a new template or incident): that part
    // renders itself as it arrives, so the page's own render is not needed.
    let swapping = headers.contains_key("hx-request");
    let pairs = super::query_pairs(raw);
    let c = choice(&app, &pairs);
    let generation = app.live.current();
    let incident_text = BUILT_IN_INCIDENTS
        .iter()
        .find(|(n, _)| *n == c.example)
        .map_or("", |(_, text)| *text)
        .to_string();
    let template = template_of(&app, &c.connector, c.event).await;
    let output = if swapping {
        html! {}
    } else {
        run(
            &app,
            &c.connector,
            c.event,
            &incident_text,
            template.as_ref().map(|t| t.1.clone()),
        )
        .await
    };
    super::page(
        &session,
        "/ui/preview",
        "Template preview",
        html! {
            h1 { "Template preview" }
            // A connector or event change brings that template (the incident typed or pasted
            // stays); an example change brings that incident (the template edited stays).
            // Either swapped part asks for a render as it arrives.
            form #choose method="get" action="/ui/preview" aria-label="What to preview" {
                div.field {
                    label for="connector" { "Connector" }
                    select #connector name="connector" hx-get="/ui/preview" hx-include="#choose" hx-trigger="change"
                        hx-target="#template-field" hx-select="#template-field" hx-swap="outerHTML" hx-push-url="true" {
                        @for conn in generation.connectors.iter() {
                            option value=(conn.name) selected[conn.name == c.connector] { (conn.name) " (" (conn.target.kind()) ")" }
                        }
                    }
                }
                div.field {
                    label for="event" { "Event" }
                    select #event name="event" hx-get="/ui/preview" hx-include="#choose" hx-trigger="change"
                        hx-target="#template-field" hx-select="#template-field" hx-swap="outerHTML" hx-push-url="true" {
                        @for e in EVENTS { option value=(e.as_str()) selected[e == c.event] { (e.as_str()) } }
                    }
                }
                div.field {
                    label for="example" { "Example incident" }
                    select #example name="example" hx-get="/ui/preview" hx-include="#choose" hx-trigger="change"
                        hx-target="#incident-field" hx-select="#incident-field" hx-swap="outerHTML" hx-push-url="true" {
                        @for (name, _) in BUILT_IN_INCIDENTS { option value=(name) selected[*name == c.example] { (name) } }
                    }
                }
                noscript { button type="submit" { "Show" } }
            }
            div #preview {
                form #edit.preview method="post" action="/ui/preview/render"
                    hx-post="/ui/preview/render" hx-trigger="input delay:300ms, submit" hx-target="#output" hx-swap="innerHTML" {
                    input type="hidden" name="csrf" value=(session.csrf);
                    div.field #incident-field {
                        label for="incident" { "Incident JSON" }
                        textarea #incident name="incident" rows="18" spellcheck="false" { (incident_text) }
                        @if swapping { (render_on_arrival()) }
                    }
                    div.field #template-field {
                        input type="hidden" name="connector" value=(c.connector);
                        input type="hidden" name="event" value=(c.event.as_str());
                        @match &template {
                            Some((file, text)) => {
                                label for="template" { "Template" }
                                p.small #template-file { "File " code { (file) } " — edits here are not saved." }
                                textarea #template name="template" rows="18" spellcheck="false" aria-describedby="template-file" { (text) }
                            }
                            None => {
                                label for="template" { "Template" }
                                p.small #template-file { "This connector sends nothing for " (c.event.as_str()) "." }
                                textarea #template name="template" rows="4" disabled aria-describedby="template-file" {}
                            }
                        }
                        @if swapping { (render_on_arrival()) }
                    }
                    noscript { button type="submit" { "Render" } }
                }
                section #output aria-label="Rendered request" aria-live="polite" { (output) }
            }
        },
    )
}

/// Swapped in with a new template or incident, renders the form again.
fn render_on_arrival() -> Markup {
    html! {
        span hx-post="/ui/preview/render" hx-include="#edit" hx-target="#output"
            hx-swap="innerHTML" hx-trigger="load" {}
    }
}

/// `POST /ui/preview/render`: the output part for the form's connector, event, incident and
/// template text.
pub async fn render(
    State(app): State<Arc<App>>,
    session: Session,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let limit = app
        .server
        .max_body_bytes
        .saturating_mul(2)
        .max(MAX_TEMPLATE * 2);
    let form = match super::action_form(&app, &session, &headers, body, limit).await {
        Ok(form) => form,
        Err(refused) => return refused,
    };
    if !session.is_admin() {
        return session::Refused("the template preview needs the server's admin token")
            .into_response();
    }
    let c = choice(&app, &form);
    let incident = super::field(&form, "incident").unwrap_or_default();
    let template = super::field(&form, "template").map(str::to_string);
    if incident.len() > app.server.max_body_bytes {
        return super::failure(&format!(
            "the incident is larger than server.max_body_bytes ({} bytes)",
            app.server.max_body_bytes
        ))
        .into_response();
    }
    if template.as_ref().is_some_and(|t| t.len() > MAX_TEMPLATE) {
        return super::failure(&format!("the template is larger than {MAX_TEMPLATE} bytes"))
            .into_response();
    }
    run(&app, &c.connector, c.event, incident, template)
        .await
        .into_response()
}

/// Renders off the runtime (one of the ingest's CPU permits), as a delivery would.
async fn run(
    app: &Arc<App>,
    connector: &str,
    event: Event,
    incident: &str,
    template: Option<String>,
) -> Markup {
    let Ok(_permit) = PREVIEWS.acquire().await else {
        return super::failure("the gateway is stopping");
    };
    let generation = app.live.current();
    let connector = connector.to_string();
    let incident = incident.to_string();
    let app = app.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        render_blocking(
            &generation.config,
            &app.schema,
            &connector,
            event,
            &incident,
            template.as_deref(),
        )
    })
    .await;
    match outcome {
        Ok(markup) => markup,
        Err(_) => super::failure("the preview stopped unexpectedly"),
    }
}

fn render_blocking(
    config: &crate::config::Config,
    schema: &crate::schema::IncidentSchema,
    connector_name: &str,
    event: Event,
    incident_text: &str,
    template: Option<&str>,
) -> Markup {
    let Some(connector) = config.connector(connector_name) else {
        return super::failure(&format!(
            "no connector {connector_name:?} in the config in force"
        ));
    };
    let mut incident: serde_json::Value = match serde_json::from_str(incident_text) {
        Ok(v) => v,
        Err(e) => {
            return super::failure(&format!(
                "Incident JSON, line {}, column {}: {e}",
                e.line(),
                e.column()
            ));
        }
    };
    let violations = schema.violations(&incident, "");
    // The template typed here could print a secret var transformed (split, replaced), past
    // the output's masking: the vars are masked before it reads them.
    let mut connector = connector.clone();
    for value in connector.vars.values_mut() {
        if config.secrets.contains_any(value) {
            *value = config.secrets.mask(value);
        }
    }
    let connector = &connector;
    let (mut renderer, compile_errors) = Renderer::build(
        config.partials_dir.as_deref(),
        std::slice::from_ref(connector),
    );
    let Some(path) = connector.template(event) else {
        return html! { p { "Connector " (connector.name) " sends nothing for " (event.as_str()) "." } };
    };
    if let Some(text) = template
        && let Err(e) = renderer.replace_template(path, text)
    {
        return render_error(&e);
    } else if template.is_none()
        && let Some(first) = compile_errors.first()
    {
        return render_error(&first.error);
    }
    config.threat_intel.enrich(&mut incident);
    let rendered = crate::cli::preview_text(config, &renderer, &incident, connector, event);
    html! {
        @if !violations.is_empty() {
            div.warning {
                p { "This incident would be refused at ingress (422); rendered anyway:" }
                ul { @for v in violations.iter().take(10) { li { code { (v.pointer) } " " (v.detail) } } }
            }
        }
        @match rendered {
            Ok(text) => { pre.request { (text) } }
            Err(crate::deliver::prepare::Unprepared::Render(e)) => { (render_error(&e)) }
            Err(e) => { (super::failure(&e.to_string())) }
        }
    }
}

/// A template error: the file, the line and column, and the reason (a strict render names the
/// variable that is missing).
fn render_error(e: &crate::render::RenderError) -> Markup {
    let place = match (e.line, e.column) {
        (Some(l), Some(c)) => format!(", line {l}, column {c}"),
        (Some(l), None) => format!(", line {l}"),
        _ => String::new(),
    };
    html! {
        div.error role="alert" {
            p { strong { (e.template) (place) } }
            p { (e.reason) }
        }
    }
}
