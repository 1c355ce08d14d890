//! Dead letters: the dead deliveries, newest first, filtered by connector (or incident), each
//! with its reason; replay one, a selection, or every one matching the filter. A replay runs
//! in the background, one delivery per transaction (as the API's bulk replay does, so ingest
//! keeps its turns on the store), and its progress — how many are queued again, then how
//! many were delivered, are pending or died again — refreshes itself until they settle.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};

use super::session::Session;
use super::{enc, incident_href};
use crate::App;
use crate::replays::Job;
use crate::store::{DeliveryListing, ReplayOutcome};

const PAGE: usize = 50;
/// The most one "replay all matching" takes (the API's bulk replay default).
const MAX_MATCHING: usize = 10_000;
/// How long after a replay finished its progress keeps looking (deliveries still retrying).
const WATCH_FOR_MS: i64 = 5 * 60_000;
/// How many of a replay's deliveries its progress looks up each refresh.
const WATCHED: usize = 200;

struct Filter {
    connector: String,
    incident: String,
    cursor: String,
}

fn filter_of(pairs: &[(String, String)]) -> Filter {
    let get = |name| {
        super::field(pairs, name)
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    Filter {
        connector: get("connector"),
        incident: get("incident"),
        cursor: get("cursor"),
    }
}

fn listing(session: &Session, f: &Filter, limit: usize) -> DeliveryListing {
    let some = |t: &str| (!t.is_empty()).then(|| t.to_string());
    DeliveryListing {
        accounts: session.scope.accounts(),
        incident: some(&f.incident),
        status: Some("dead".into()),
        connector: some(&f.connector),
        after: crate::admin::delivery_key(&f.cursor),
        limit,
        ..Default::default()
    }
}

/// `GET /ui/dead?connector=&incident=&cursor=`.
pub async fn list(
    State(app): State<Arc<App>>,
    session: Session,
    RawQuery(raw): RawQuery,
) -> Markup {
    let pairs = super::query_pairs(raw);
    let f = filter_of(&pairs);
    let generation = app.live.current();
    let page = app.store.list_deliveries(listing(&session, &f, PAGE)).await;
    let counts = app.metrics.queue_view().dead;
    let may_write = session.may_write();
    let filter_query = |cursor: Option<&str>| {
        let mut q = form_urlencoded::Serializer::new(String::new());
        if !f.connector.is_empty() {
            q.append_pair("connector", &f.connector);
        }
        if !f.incident.is_empty() {
            q.append_pair("incident", &f.incident);
        }
        if let Some(c) = cursor {
            q.append_pair("cursor", c);
        }
        q.finish()
    };
    super::page(
        &session,
        "/ui/dead",
        "Dead letters",
        html! {
            h1 { "Dead letters" }
            @if session.is_admin() && !counts.is_empty() {
                p { "Per connector: "
                    @for (i, (name, n)) in counts.iter().enumerate() {
                        @if i > 0 { ", " }
                        a href=(format!("/ui/dead?connector={}", enc(name))) { (name) } " " (n)
                    }
                }
            }
            form.filters method="get" action="/ui/dead" aria-label="Filter dead letters" {
                div.field {
                    label for="connector" { "Connector" }
                    select #connector name="connector" {
                        option value="" selected[f.connector.is_empty()] { "any" }
                        @for c in generation.connectors.iter() {
                            option value=(c.name) selected[c.name == f.connector] { (c.name) }
                        }
                    }
                }
                div.field { label for="incident" { "Incident" } input #incident type="text" name="incident" value=(f.incident); }
                button type="submit" { "Apply" }
            }
            // Its content is a role="status" region, live by itself.
            div #progress {}
            @match page {
                Err(e) => { (super::failure(&format!("the store could not list dead deliveries: {e}"))) }
                Ok(page) if page.items.is_empty() => { p { "No dead delivery matches." } }
                Ok(page) => {
                    form #dead-form method="post" action="/ui/dead/replay" {
                        input type="hidden" name="csrf" value=(session.csrf);
                        input type="hidden" name="connector" value=(f.connector);
                        input type="hidden" name="incident" value=(f.incident);
                        @if may_write {
                            div.actions {
                                button type="submit" name="mode" value="selected"
                                    hx-post="/ui/dead/replay" hx-include="#dead-form" hx-vals=r#"{"mode":"selected"}"# hx-target="#progress" { "Replay selected" }
                                button type="submit" name="mode" value="matching"
                                    hx-post="/ui/dead/replay" hx-include="#dead-form" hx-vals=r#"{"mode":"matching"}"# hx-target="#progress"
                                    hx-confirm="Replay every dead delivery matching this filter (up to 10,000)?" { "Replay all matching" }
                            }
                        }
                        table {
                            caption.visually-hidden { "Dead deliveries, newest first" }
                            thead { tr {
                                @if may_write { th scope="col" { input type="checkbox" #select-all aria-label="Select all on this page"; } }
                                th scope="col" { "Delivery" } th scope="col" { "Incident" } th scope="col" { "Connector" }
                                th scope="col" { "Event" } th scope="col" class="num" { "Attempts" } th scope="col" { "Died" } th scope="col" { "Reason" }
                                @if may_write { th scope="col" { "Action" } }
                            } }
                            tbody {
                                @for d in &page.items {
                                    tr {
                                        @if may_write { td { input type="checkbox" name="id" value=(d.id) aria-label=(format!("Select {}", d.id)); } }
                                        td { code { (d.id) } }
                                        td { a href=(incident_href(&d.incident_id)) { (d.incident_id) } }
                                        td { (d.connector) }
                                        td { (d.event) }
                                        td.num { (d.attempt_count) }
                                        td { (super::when(&d.updated_at)) }
                                        td.reason { (d.last_error.as_deref().unwrap_or("")) }
                                        @if may_write {
                                            td { button type="button" hx-post="/ui/dead/replay"
                                                hx-vals=(serde_json::json!({"mode": "one", "id": d.id}).to_string())
                                                hx-target="#progress" aria-label=(format!("Replay {}", d.id)) { "Replay" } }
                                        }
                                    }
                                }
                            }
                        }
                    }
                    nav.pager aria-label="Pages" {
                        @if !f.cursor.is_empty() { a href=(format!("/ui/dead?{}", filter_query(None))) { "First page" } " " }
                        @if let Some(k) = page.next {
                            a rel="next" href=(format!("/ui/dead?{}", filter_query(Some(&format!("d{}.{}", k.created_ms, k.seq))))) { "Next page" }
                        }
                    }
                }
            }
        },
    )
}

/// `POST /ui/dead/replay` (`mode` = `one` with `id`, `selected` with each `id`, or `matching`
/// with the filter): starts the replay and answers its progress.
pub async fn replay(
    State(app): State<Arc<App>>,
    session: Session,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let form = match super::action_form(&app, &session, &headers, body, super::FORM_LIMIT).await {
        Ok(form) => form,
        Err(refused) => return refused,
    };
    if !session.may_write() {
        return super::failure("this token has access = \"read\": replaying needs \"write\"")
            .into_response();
    }
    let ids: Vec<String> = match super::field(&form, "mode").unwrap_or("selected") {
        "matching" => match matching(&app, &session, &filter_of(&form)).await {
            Ok(ids) => ids,
            Err(e) => return super::failure(&e).into_response(),
        },
        // One: the row's button names it (the page's ticked boxes are not part of it).
        mode => form
            .iter()
            .filter(|(k, _)| k == "id")
            .map(|(_, v)| v.clone())
            .take(if mode == "one" { 1 } else { MAX_MATCHING })
            .collect(),
    };
    if ids.is_empty() {
        return super::notice("Nothing selected to replay.").into_response();
    }
    let (job_id, job) = app.replays.add(Job::new(session.who.clone(), ids));
    tracing::info!(who = %session.who, deliveries = job.ids.len(), "replay from the console");
    let app2 = app.clone();
    let scope = session.scope.clone();
    let running = job.clone();
    tokio::spawn(async move {
        for id in &running.ids {
            let changeable = crate::admin::changeable_delivery(&app2, &scope, id).await;
            let replayed = changeable.is_ok()
                && matches!(
                    app2.store.replay(id.clone()).await,
                    Ok(ReplayOutcome::Replayed)
                );
            running.record(id, replayed);
            if replayed {
                app2.wake.notify_one();
            }
        }
        running.finish();
    });
    progress_of(&app, job_id, &job).await.into_response()
}

/// The ids of every dead delivery the filter matches, up to [`MAX_MATCHING`].
async fn matching(app: &App, session: &Session, f: &Filter) -> Result<Vec<String>, String> {
    let mut ids = Vec::new();
    let mut l = listing(
        session,
        &Filter {
            cursor: String::new(),
            connector: f.connector.clone(),
            incident: f.incident.clone(),
        },
        crate::store::listing::MAX_LIMIT,
    );
    loop {
        let page = app
            .store
            .list_deliveries(l.clone())
            .await
            .map_err(|e| format!("the store could not list dead deliveries: {e}"))?;
        ids.extend(page.items.into_iter().map(|d| d.id));
        match page.next {
            Some(next) if ids.len() < MAX_MATCHING => l.after = Some(next),
            _ => break,
        }
    }
    ids.truncate(MAX_MATCHING);
    Ok(ids)
}

/// `GET /ui/dead/progress/{job}`.
pub async fn progress(
    State(app): State<Arc<App>>,
    session: Session,
    Path(job_id): Path<u64>,
) -> Response {
    match app.replays.get(job_id) {
        Some(job) if job.who == session.who => {
            progress_of(&app, job_id, &job).await.into_response()
        }
        _ => super::failure("no such replay (they are kept for an hour)").into_response(),
    }
}

async fn progress_of(app: &App, job_id: u64, job: &Job) -> Markup {
    let total = job.ids.len();
    let skipped = job.skipped.load(Ordering::Relaxed);
    let finished = job.finished_ms();
    // Only what was replayed is looked at: an id the caller could not change tells it nothing.
    let (replayed, watched) = job.replayed(WATCHED);
    let (mut delivered, mut pending, mut dead) = (0, 0, 0);
    for id in watched {
        if let Ok(Some(d)) = app.store.delivery(id).await {
            match d.status.as_str() {
                "delivered" => delivered += 1,
                "pending" => pending += 1,
                _ => dead += 1,
            }
        }
    }
    // Settled when none is pending; or, with some still retrying (a paused or failing
    // target), the progress stops asking after a while and says where they stand.
    let given_up = finished.is_some_and(|at| crate::model::now_ms() - at > WATCH_FOR_MS);
    let settled = finished.is_some() && (pending == 0 || given_up);
    let sample = if replayed > WATCHED {
        format!(" (of the first {WATCHED})")
    } else {
        String::new()
    };
    let text = format!(
        "Replayed {replayed} of {total} · delivered {delivered} · pending {pending} · dead {dead}{sample}"
    );
    html! {
        @if settled {
            div.progress role="status" {
                p {
                    (text)
                    @if skipped > 0 { " · " (skipped) " not replayed (no longer dead, or not this token's)" }
                    @if pending > 0 { " · still pending: see the incidents' pages" } @else { " · " strong { "Done" } }
                }
            }
        } @else {
            div.progress role="status" hx-get=(format!("/ui/dead/progress/{job_id}")) hx-trigger="every 2s" hx-swap="outerHTML" {
                p { (text) @if skipped > 0 { " · " (skipped) " not replayed" } }
                progress max=(total.max(1)) value=(replayed + skipped) aria-label="Replay progress" {}
            }
        }
    }
}
