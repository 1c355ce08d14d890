//! The overview: ingest and delivery rates (with the last hour as a chart), each
//! connector's queue, oldest due delivery, dead letters, circuit and pause (pause and resume
//! from here), and the SLA clocks breached. The live part refreshes itself every 5 s.
//!
//! Rates come from this process's counters, sampled every [`SAMPLE_EVERY`] into a ring of an
//! hour; the queue from the snapshot `/metrics` shows (read in the background, so a page view
//! never scans the queue). Connector state is the server admin's: a token scoped to tenants
//! sees its own SLA breaches only.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use tokio_util::sync::CancellationToken;

use super::session::{self, Session};
use super::{enc, incident_href};
use crate::App;
use crate::metrics::{Rates, SAMPLE_EVERY};
use crate::store::SlaListing;

/// Samples the counters every [`SAMPLE_EVERY`] until shutdown.
pub async fn sample(app: Arc<App>, shutdown: CancellationToken) {
    loop {
        app.trend
            .record(crate::model::now_ms(), app.metrics.totals());
        tokio::select! {
            () = tokio::time::sleep(SAMPLE_EVERY) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// `GET /ui/`.
pub async fn page(State(app): State<Arc<App>>, session: Session) -> Markup {
    let live = live_part(&app, &session).await;
    super::page(
        &session,
        "/ui/",
        "Overview",
        html! {
            h1 { "Overview" }
            div #live hx-get="/ui/overview/live" hx-trigger="every 5s" hx-swap="innerHTML" {
                (live)
            }
        },
    )
}

/// `GET /ui/overview/live`: the part that refreshes.
pub async fn live(State(app): State<Arc<App>>, session: Session) -> Markup {
    live_part(&app, &session).await
}

async fn live_part(app: &App, session: &Session) -> Markup {
    let now = crate::model::now_ms();
    let breached = app
        .store
        .sla_list(SlaListing {
            accounts: session.scope.accounts(),
            breached: Some(true),
            limit: 11,
            ..Default::default()
        })
        .await;
    let sla = html! {
        section aria-labelledby="sla-h" {
            h2 #sla-h { "SLA breaches" }
            @match &breached {
                Err(e) => { (super::failure(&format!("the store could not list SLA clocks: {e}"))) }
                Ok(rows) if rows.is_empty() => { p { "No SLA clock is breached." } }
                Ok(rows) => {
                    table {
                        caption.visually-hidden { "Breached SLA clocks, newest first" }
                        thead { tr { th scope="col" { "Incident" } th scope="col" { "Connector" } th scope="col" { "Ticket" } th scope="col" { "Clock" } th scope="col" { "Policy" } th scope="col" { "Opened" } } }
                        tbody {
                            @for r in rows.iter().take(10) {
                                tr {
                                    td { a href=(incident_href(&r.incident_id)) { (r.incident_id) } }
                                    td { (r.connector) }
                                    td { (r.ticket_id.as_deref().unwrap_or("—")) }
                                    td { (r.level.as_str()) @if r.closed_ms.is_some() { " (closed)" } }
                                    td { (r.policy) }
                                    td { (super::when_ms(r.opened_ms)) }
                                }
                            }
                        }
                    }
                    @if rows.len() > 10 { p { "More are breached: " code { "GET /v1/sla?breached=true" } " lists them all." } }
                }
            }
        }
    };
    if !session.is_admin() {
        return html! {
            p { "Connector health and rates are shown to the server's admin token; this token sees its tenants' incidents, dead letters and SLA clocks." }
            (sla)
        };
    }
    let totals = app.metrics.totals();
    let rate = app.trend.last_minute(now, totals);
    let series = app.trend.series();
    let queue = app.metrics.queue_view();
    let generation = app.live.current();
    let alerting = app.alerts.alerting();
    let pending: i64 = queue.depths.iter().map(|d| d.pending).sum();
    let dead: i64 = queue.dead.iter().map(|d| d.1).sum();
    let [warnings, breaches, _] =
        [0, 1, 2].map(|i| app.metrics.sla_alerts[i].load(std::sync::atomic::Ordering::Relaxed));
    html! {
        section aria-labelledby="rates-h" {
            h2 #rates-h { "Rates" }
            dl.stats {
                div { dt { "Incidents in" } dd { (per_second(rate.incidents)) } }
                div { dt { "Delivered" } dd { (per_second(rate.delivered)) } }
                div { dt { "Failed attempts" } dd { (per_second(rate.failed)) } }
                div { dt { "Queued" } dd { (pending) } }
                div { dt { "Dead letters" } dd { a href="/ui/dead" { (dead) } } }
                div { dt { "SLA warnings / breaches" } dd { (warnings) " / " (breaches) } }
            }
            p.small { "Rates over the last minute, of this process; the queue as read "
                @if queue.read_at_ms > 0 { (super::ago((now - queue.read_at_ms).max(0) / 1000)) " ago" } @else { "(not yet read)" }
                "." }
            (chart(&series))
        }
        section aria-labelledby="connectors-h" {
            h2 #connectors-h { "Connectors" }
            table {
                caption.visually-hidden { "Each connector's state and queue" }
                thead { tr {
                    th scope="col" { "Connector" } th scope="col" { "Kind" } th scope="col" { "State" }
                    th scope="col" { "Circuit" } th scope="col" class="num" { "Queued" }
                    th scope="col" { "Oldest due" } th scope="col" class="num" { "Dead" } th scope="col" { "Action" }
                } }
                tbody {
                    @for c in generation.connectors.iter() {
                        @let depth = queue.depths.iter().find(|d| d.connector == c.name);
                        @let api = app.live.api_pause(&c.name);
                        @let dead_here = queue.dead.iter().find(|d| d.0 == c.name).map_or(0, |d| d.1);
                        tr {
                            th scope="row" { (c.name) }
                            td { (c.target.kind()) }
                            td {
                                @if c.paused { span.badge.warn { "paused (config)" } }
                                @else if let Some(p) = &api { span.badge.warn title=(p.reason.clone().unwrap_or_default()) { "paused" } " since " (super::when_ms(p.since_ms)) }
                                @else { span.badge.ok { "running" } }
                                @if alerting.contains(&c.name) { " " span.badge.bad { "alerting" } }
                            }
                            td { @if app.circuits.is_open(&c.name) { span.badge.bad { "open" } } @else { "closed" } }
                            td.num { (depth.map_or(0, |d| d.pending)) }
                            td { (depth.and_then(|d| d.oldest_due_ms).map_or("—".to_string(), |due| super::ago((now - due).max(0) / 1000) + " overdue")) }
                            td.num { @if dead_here > 0 { a href=(format!("/ui/dead?connector={}", enc(&c.name))) { (dead_here) } } @else { "0" } }
                            td {
                                @if c.paused { "edit the config" }
                                @else if api.is_some() {
                                    button hx-post=(format!("/ui/connectors/{}/resume", enc(&c.name))) hx-target="#live" aria-label=(format!("Resume {}", c.name)) { "Resume" }
                                } @else {
                                    button hx-post=(format!("/ui/connectors/{}/pause", enc(&c.name))) hx-target="#live" aria-label=(format!("Pause {}", c.name)) { "Pause" }
                                }
                            }
                        }
                    }
                }
            }
        }
        (sla)
    }
}

fn per_second(rate: f64) -> String {
    if rate >= 10.0 {
        format!("{rate:.0}/s")
    } else {
        format!("{rate:.1}/s")
    }
}

/// The last hour's rates as an SVG line chart (incidents in, delivered, failed), with its
/// figures in words for a screen reader.
fn chart(series: &[(i64, Rates)]) -> Markup {
    const W: f64 = 720.0;
    const H: f64 = 140.0;
    if series.len() < 2 {
        return html! { p.small { "The chart fills in as samples come (one per 10 s)." } };
    }
    let top = series
        .iter()
        .flat_map(|(_, r)| [r.incidents, r.delivered, r.failed])
        .fold(1.0_f64, f64::max);
    let first = series[0].0;
    let span = (series[series.len() - 1].0 - first).max(1) as f64;
    let line = |pick: fn(&Rates) -> f64| -> String {
        series
            .iter()
            .map(|(at, r)| {
                let x = (*at - first) as f64 / span * W;
                let y = H - pick(r) / top * (H - 10.0);
                format!("{x:.1},{y:.1}")
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let peak_in = series.iter().map(|(_, r)| r.incidents).fold(0.0, f64::max);
    let peak_out = series.iter().map(|(_, r)| r.delivered).fold(0.0, f64::max);
    let covered = super::ago((span / 1000.0).round() as i64);
    let label = format!(
        "Rates over the last {covered}: incidents in peaked at {}, deliveries at {}",
        per_second(peak_in),
        per_second(peak_out)
    );
    html! {
        figure.chart {
            svg viewBox=(format!("0 0 {W} {H}")) role="img" aria-label=(label) preserveAspectRatio="none" {
                line x1="0" y1=(H) x2=(W) y2=(H) class="axis" {}
                polyline class="in" points=(line(|r| r.incidents)) {}
                polyline class="out" points=(line(|r| r.delivered)) {}
                polyline class="failed" points=(line(|r| r.failed)) {}
            }
            figcaption {
                span.key.in { "incidents in" } " "
                span.key.out { "delivered" } " "
                span.key.failed { "failed attempts" }
                " — per second, the last " (covered) "; top of the chart " (per_second(top))
            }
        }
    }
}

/// `POST /ui/connectors/{name}/pause` (server admin only).
pub async fn pause(
    State(app): State<Arc<App>>,
    session: Session,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    switch(&app, &session, &headers, &name, true).await
}

/// `POST /ui/connectors/{name}/resume` (server admin only).
pub async fn resume(
    State(app): State<Arc<App>>,
    session: Session,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    switch(&app, &session, &headers, &name, false).await
}

async fn switch(
    app: &App,
    session: &Session,
    headers: &HeaderMap,
    name: &str,
    pause: bool,
) -> Response {
    if let Err(refused) = session::check_action(session, headers, None) {
        return refused.into_response();
    }
    if !session.is_admin() {
        return session::Refused("pausing a connector needs the server's admin token")
            .into_response();
    }
    let done = if pause {
        crate::control::pause_connector(
            app,
            name,
            Some(format!("paused from the console by {}", session.who)),
        )
        .await
    } else {
        crate::control::resume_connector(app, name).await
    };
    let live = live_part(app, session).await;
    let message = match done {
        Ok(()) if pause => format!("{name} paused: its deliveries stay queued."),
        Ok(()) => format!("{name} resumed."),
        Err(p) => p.detail,
    };
    html! { (super::notice(&message)) (live) }.into_response()
}
