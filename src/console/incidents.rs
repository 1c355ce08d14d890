//! Incidents: the list (filtered by status, connector, source, time received and text in
//! the summary; 50 a page, keyset-paged as the admin API is), and an incident's page — its
//! fields, and per connector its tickets and a timeline of deliveries and attempts.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};

use super::session::Session;
use super::{enc, incident_href};
use crate::App;
use crate::store::{IncidentListing, IncidentView};

const PAGE: usize = 50;

/// The list's filters as the form sends them (empty fields are no filter).
#[derive(Debug, Default, Clone)]
struct Filters {
    status: String,
    connector: String,
    source: String,
    since: String,
    until: String,
    q: String,
    cursor: String,
}

impl Filters {
    fn parse(raw: Option<String>) -> Filters {
        let pairs = super::query_pairs(raw);
        let get = |name| {
            super::field(&pairs, name)
                .unwrap_or_default()
                .trim()
                .to_string()
        };
        Filters {
            status: get("status"),
            connector: get("connector"),
            source: get("source"),
            since: get("since"),
            until: get("until"),
            q: get("q"),
            cursor: get("cursor"),
        }
    }

    /// The query string of these filters, on the page after `cursor` (the first: `None`).
    fn query(&self, cursor: Option<&str>) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("status", &self.status),
            ("connector", &self.connector),
            ("source", &self.source),
            ("since", &self.since),
            ("until", &self.until),
            ("q", &self.q),
        ] {
            if !v.is_empty() {
                q.append_pair(k, v);
            }
        }
        if let Some(cursor) = cursor {
            q.append_pair("cursor", cursor);
        }
        q.finish()
    }
}

fn some(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_string())
}

/// A `datetime-local` value (`2026-12-04T09:30`, read as UTC) or RFC 3339, as ms.
fn local_time(field: &str, text: &str) -> Result<Option<i64>, String> {
    if text.is_empty() {
        return Ok(None);
    }
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(Some(at.timestamp_millis()));
    }
    for format in ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"] {
        if let Ok(at) = chrono::NaiveDateTime::parse_from_str(text, format) {
            return Ok(Some(at.and_utc().timestamp_millis()));
        }
    }
    Err(format!(
        "{field}: {text:?} is not a time (2026-12-04T09:30, UTC)"
    ))
}

/// `GET /ui/incidents`.
pub async fn list(
    State(app): State<Arc<App>>,
    session: Session,
    RawQuery(raw): RawQuery,
) -> Markup {
    let f = Filters::parse(raw);
    let generation = app.live.current();
    let connectors: Vec<&str> = generation
        .connectors
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    let mut sources: Vec<&str> = generation
        .config
        .sources
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    sources.push(crate::model::GATEWAY_SOURCE);
    let results = results(&app, &session, &f).await;
    let select = |name: &str, label: &str, options: &[&str], chosen: &str| {
        html! {
            div.field {
                label for=(name) { (label) }
                select #(name) name=(name) {
                    option value="" selected[chosen.is_empty()] { "any" }
                    @for o in options {
                        option value=(o) selected[*o == chosen] { (o) }
                    }
                }
            }
        }
    };
    super::page(
        &session,
        "/ui/incidents",
        "Incidents",
        html! {
            h1 { "Incidents" }
            form.filters method="get" action="/ui/incidents" aria-label="Filter incidents"
                hx-get="/ui/incidents" hx-trigger="change, input delay:400ms from:#q, submit"
                hx-target="#results" hx-select="#results" hx-swap="outerHTML" hx-push-url="true" {
                (select("status", "Status", &["open", "completed"], &f.status))
                (select("connector", "Connector", &connectors, &f.connector))
                (select("source", "Source", &sources, &f.source))
                div.field { label for="since" { "Received from (UTC)" } input #since type="datetime-local" name="since" value=(f.since); }
                div.field { label for="until" { "Received until (UTC)" } input #until type="datetime-local" name="until" value=(f.until); }
                div.field.grow { label for="q" { "Summary contains" } input #q type="search" name="q" value=(f.q) maxlength="200"; }
                button type="submit" { "Apply" }
            }
            (results)
        },
    )
}

async fn results(app: &App, session: &Session, f: &Filters) -> Markup {
    let times = local_time("Received from", &f.since)
        .and_then(|since| Ok((since, local_time("Received until", &f.until)?)));
    let (since_ms, until_ms) = match times {
        Ok(t) => t,
        Err(e) => return html! { div #results { (super::failure(&e)) } },
    };
    let after = match f.cursor.as_str() {
        "" => None,
        c => match crate::admin::incident_key(c) {
            Some(k) => Some(k),
            None => {
                return html! { div #results { (super::failure("that page's cursor is not one the console made; start again from the first page")) } };
            }
        },
    };
    let listing = IncidentListing {
        accounts: session.scope.accounts(),
        source: some(&f.source),
        status: some(&f.status),
        connector: some(&f.connector),
        text: some(&f.q),
        since_ms,
        until_ms,
        after,
        limit: PAGE,
    };
    let page = match app.store.list_incidents(listing).await {
        Ok(page) => page,
        Err(e) => {
            return html! { div #results { (super::failure(&format!("the store could not list incidents: {e}"))) } };
        }
    };
    let next = page
        .next
        .map(|k| format!("i{}.{}", k.received_ms, crate::query::hex(&k.incident_id)));
    html! {
        div #results {
            @if page.items.is_empty() {
                p { "No incident matches." }
            } @else {
                table {
                    caption.visually-hidden { "Incidents, newest received first" }
                    thead { tr {
                        th scope="col" { "Incident" } th scope="col" { "Summary" } th scope="col" { "Source" }
                        th scope="col" { "Status" } th scope="col" { "Received" } th scope="col" class="num" { "Versions" }
                    } }
                    tbody {
                        @for i in &page.items {
                            tr {
                                td { a href=(incident_href(&i.incident_id)) { (i.incident_id) } }
                                td.summary { (i.summary.as_deref().unwrap_or("")) }
                                td { (i.source) }
                                td { span class=(format!("badge {}", if i.status == "open" { "ok" } else { "muted" })) { (i.status) } }
                                td { (super::when(&i.received_at)) }
                                td.num { (i.versions) }
                            }
                        }
                    }
                }
            }
            @if !f.q.is_empty() && next.is_some() && page.items.len() < PAGE {
                p.small { "A search reads " (crate::store::SEARCH_WINDOW) " incidents a page, newest first; \u{201c}Next page\u{201d} searches further back." }
            }
            nav.pager aria-label="Pages" {
                @if !f.cursor.is_empty() { a href=(format!("/ui/incidents?{}", f.query(None))) { "First page" } }
                @if let Some(next) = next { " " a href=(format!("/ui/incidents?{}", f.query(Some(&next)))) rel="next" { "Next page" } }
            }
        }
    }
}

/// `GET /ui/incidents/{id}`.
pub async fn show(
    State(app): State<Arc<App>>,
    session: Session,
    Path(id): Path<String>,
) -> Response {
    let view = match app.store.incident(id.clone()).await {
        Ok(Some(view)) if session.scope.sees(view.account_id) => view,
        Ok(_) => {
            let body = super::page(
                &session,
                "/ui/incidents",
                "Not found",
                html! {
                    h1 { "Incident " (id) }
                    (super::failure("No such incident (or not one of this token's tenants)."))
                },
            );
            return (StatusCode::NOT_FOUND, body).into_response();
        }
        Err(e) => {
            let body = super::page(
                &session,
                "/ui/incidents",
                "Store error",
                html! {
                    h1 { "Incident " (id) }
                    (super::failure(&format!("the store could not read it: {e}")))
                },
            );
            return (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
        }
    };
    let title = format!("Incident {id}");
    super::page(&session, "/ui/incidents", &title, incident(&view, &session)).into_response()
}

fn text(incident: &serde_json::Value, pointer: &str) -> String {
    match incident.pointer(pointer) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

fn incident(view: &IncidentView, session: &Session) -> Markup {
    let i = &view.incident;
    let fields = [
        ("Summary", text(i, "/incident/summary")),
        (
            "Threat rating",
            crate::model::ThreatRating::of_incident(i)
                .map_or(String::new(), |r| r.name().to_string()),
        ),
        ("Class", text(i, "/incident_class")),
        ("Short id", text(i, "/humanFriendlyId")),
        ("Customer", text(i, "/customer")),
        ("Account", text(i, "/accountId")),
        ("Source", view.source.clone()),
        ("Status", view.status.clone()),
        ("Received", super::when(&view.received_at)),
        ("Updated", super::when(&view.updated_at)),
        ("Versions", view.versions.to_string()),
    ];
    let pretty = serde_json::to_string_pretty(i).unwrap_or_default();
    html! {
        h1 { "Incident " (view.incident_id) }
        dl.fields {
            @for (name, value) in &fields {
                @if !value.is_empty() { div { dt { (name) } dd { (value) } } }
            }
            @if let Some(c) = &view.completion {
                div { dt { "Completed" } dd { (c.reason_code) " at " (super::when(&c.status_change_time)) @if let Some(n) = &c.notes { " — " (n) } } }
            }
        }
        details {
            summary { "The incident as stored (current version)" }
            pre.json { (pretty) }
        }
        @if view.connectors.is_empty() {
            p { "No connector took this incident (no matcher met)." }
        }
        @for (name, c) in &view.connectors {
            @let created_delivered = c.deliveries.iter().any(|d| d.event == "created" && d.status == "delivered");
            section.connector aria-labelledby=(format!("c-{}", enc(name))) {
                h2 #(format!("c-{}", enc(name))) { "Connector " (name) }
                @for t in &c.tickets {
                    dl.ticket {
                        div { dt { "Ticket" } dd {
                            @match (&t.ticket_id, &t.ticket_url) {
                                (Some(id), Some(url)) if url.starts_with("https://") || url.starts_with("http://") => { a href=(url) rel="noreferrer" { (id) } }
                                (Some(id), _) => { (id) }
                                (None, _) if created_delivered => { "no id (the connector reads none)" }
                                (None, _) => { "not yet opened" }
                            }
                        } }
                        div { dt { "Ticket status" } dd { (t.status) } }
                        div { dt { "Correlation key" } dd { code { (t.correlation_key) } } }
                        div { dt { "Opened" } dd { (super::when(&t.opened_at)) } }
                        div { dt { "Incidents on it" } dd { (t.incidents) } }
                    }
                }
                table.deliveries {
                    caption.visually-hidden { "Deliveries to " (name) ", oldest first" }
                    thead { tr {
                        th scope="col" { "Delivery" } th scope="col" { "Event" } th scope="col" { "Status" }
                        th scope="col" class="num" { "Attempts" } th scope="col" { "Created" } th scope="col" { "Next attempt" } th scope="col" { "Last error" }
                    } }
                    tbody {
                        @for d in &c.deliveries {
                            tr {
                                td { code { (d.id) } }
                                td { (d.event) }
                                td class=(format!("status {}", d.status)) { (d.status) }
                                td.num { (d.attempt_count) }
                                td { (super::when(&d.created_at)) }
                                td { (d.next_attempt_at.as_deref().map(super::when).unwrap_or_default()) @if let Some(w) = &d.waiting_for { " (waits for " code { (w) } ")" } }
                                td.reason { (d.last_error.as_deref().unwrap_or("")) }
                            }
                            @if let Some(attempts) = d.attempts.as_ref().filter(|a| !a.is_empty()) {
                                tr.attempts {
                                    td colspan="7" {
                                        ol.timeline aria-label=(format!("Attempts of {}", d.id)) {
                                            @for a in attempts {
                                                li class=(format!("outcome-{}", a.outcome)) {
                                                    span.time { (super::when(&a.started_at)) }
                                                    " · #" (a.attempt) " · "
                                                    strong { @if let Some(code) = a.status_code { "HTTP " (code) } @else { (a.error.as_deref().unwrap_or("no answer")) } }
                                                    " · " (a.latency_ms) " ms · " (a.outcome)
                                                    @if let Some(lookup) = &a.lookup { " · lookup: " (lookup) }
                                                    @if let Some(body) = a.response_body.as_deref().filter(|b| !b.is_empty()) {
                                                        pre.excerpt { (excerpt(body)) }
                                                    }
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                @if session.may_write() && c.deliveries.iter().any(|d| d.status == "dead") {
                    p { a href=(format!("/ui/dead?incident={}", enc(&view.incident_id))) { "Replay its dead deliveries" } }
                }
            }
        }
    }
}

/// The start of a response body (the store keeps a bounded excerpt already).
fn excerpt(body: &str) -> String {
    const MAX: usize = 600;
    match body.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &body[..cut]),
        None => body.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_read_as_utc_and_bad_ones_named() {
        assert_eq!(local_time("x", "").unwrap(), None);
        assert_eq!(local_time("x", "1970-01-01T00:01").unwrap(), Some(60_000));
        assert_eq!(
            local_time("x", "1970-01-01T01:00:00+01:00").unwrap(),
            Some(0)
        );
        let e = local_time("Received from", "yesterday").unwrap_err();
        assert!(
            e.contains("Received from") && e.contains("yesterday"),
            "{e}"
        );
    }

    #[test]
    fn a_next_page_keeps_the_filters() {
        let f = Filters::parse(Some("status=open&q=a+b&cursor=old&junk=1".into()));
        assert_eq!(f.status, "open");
        assert_eq!(f.q, "a b");
        assert_eq!(f.query(Some("i1.41")), "status=open&q=a+b&cursor=i1.41");
        assert_eq!(f.query(None), "status=open&q=a+b");
    }
}
