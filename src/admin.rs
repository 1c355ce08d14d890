//! Admin: list and read incidents and deliveries, and replay dead deliveries (Bearer
//! `admin_token`, or a token of `[[admin_tokens]]` scoped to tenants: it lists only their
//! incidents and deliveries, finds no other (404), and replays only with `access = "write"`).
//!
//! Without an `admin_token` in the config the admin API is off and answers 401 to everyone;
//! a source's API key never opens it. Every handler takes [`Admin`] first, so nothing of a
//! request — its path, its query, its body — is looked at before the caller is known
//! ([`crate::auth`]).

use std::sync::Arc;

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::App;
use crate::app::PathId as Id;
use crate::auth::{Admin, AdminScope, Viewer};
use crate::problem::Problem;
use crate::query::{NoQuery, Params, hex, unhex};
use crate::server::Client;
use crate::store::{
    DeliveryKey, DeliveryListing, DeliveryView, IncidentKey, IncidentListing, IncidentView,
    ReplayOutcome, ResolveOutcome,
};

fn store_failed(e: crate::store::StoreError) -> Problem {
    Problem::store_failed(&e, "the store could not answer; try again")
}

/// A view the store found, or 404 naming what was asked for.
fn found<T>(
    view: Result<Option<T>, crate::store::StoreError>,
    missing: impl FnOnce() -> Problem,
) -> Result<Json<T>, Problem> {
    view.map_err(store_failed)?.map(Json).ok_or_else(missing)
}

fn no_delivery(id: &str) -> Problem {
    Problem::not_found(format!("no delivery {id:?}"))
}

/// Whether `scope` sees the incident `incident_id` (a missing one is seen by no one).
async fn sees_incident(app: &App, scope: &AdminScope, incident_id: &str) -> Result<bool, Problem> {
    if let AdminScope::All = scope {
        return Ok(true);
    }
    let account = app
        .store
        .account_of(incident_id.to_string())
        .await
        .map_err(store_failed)?;
    Ok(account.is_some_and(|account| scope.sees(account)))
}

/// The delivery, when `scope` sees its incident; else 404, as if it did not exist.
async fn visible_delivery(
    app: &App,
    scope: &AdminScope,
    delivery_id: &str,
) -> Result<DeliveryView, Problem> {
    let view = app
        .store
        .delivery(delivery_id.to_string())
        .await
        .map_err(store_failed)?
        .ok_or_else(|| no_delivery(delivery_id))?;
    if sees_incident(app, scope, &view.incident_id).await? {
        Ok(view)
    } else {
        Err(no_delivery(delivery_id))
    }
}

/// A delivery a replay or resolve may change: seen by `scope` (else 404), which may write
/// (else 403).
pub(crate) async fn changeable_delivery(
    app: &App,
    scope: &AdminScope,
    delivery_id: &str,
) -> Result<(), Problem> {
    if let AdminScope::Tenants(_) = scope {
        visible_delivery(app, scope, delivery_id).await?;
    }
    scope.may_write()
}

/// `GET /v1/incidents/{id}`: the incident, its versions, tickets and deliveries.
pub async fn get_incident(
    State(app): State<Arc<App>>,
    Viewer(scope): Viewer,
    _: NoQuery,
    Id(incident_id): Id,
) -> Result<Json<IncidentView>, Problem> {
    let missing = || Problem::not_found(format!("no incident {incident_id:?}"));
    let view = found(app.store.incident(incident_id.clone()).await, missing)?;
    if scope.sees(view.account_id) {
        Ok(view)
    } else {
        Err(missing())
    }
}

/// `GET /v1/deliveries?incident=&status=&connector=&since=&until=&cursor=&limit=`: a page of
/// deliveries, newest first; `next_cursor` continues it (null on the last page).
pub async fn list_deliveries(
    State(app): State<Arc<App>>,
    Viewer(scope): Viewer,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    let q = Params::parse(
        raw.as_deref(),
        &[
            "incident",
            "status",
            "connector",
            "since",
            "until",
            "cursor",
            "limit",
        ],
    )?;
    let listing = DeliveryListing {
        accounts: scope.accounts(),
        incident: q.text("incident"),
        status: q.one_of("status", &["pending", "delivered", "dead"])?,
        connector: q.text("connector"),
        since_ms: q.time_ms("since")?,
        until_ms: q.time_ms("until")?,
        after: q.cursor(delivery_key)?,
        limit: q.limit()?,
    };
    let page = app
        .store
        .list_deliveries(listing)
        .await
        .map_err(store_failed)?;
    let next = page.next.map(|k| format!("d{}.{}", k.created_ms, k.seq));
    Ok(Json(serde_json::json!({ "deliveries": page.items, "next_cursor": next })).into_response())
}

/// A delivery cursor: `d<created_ms>.<seq>` (the document's pattern for it says the same).
pub fn delivery_key(text: &str) -> Option<DeliveryKey> {
    let (created_ms, seq) = text.strip_prefix('d')?.split_once('.')?;
    Some(DeliveryKey {
        created_ms: digits(created_ms)?,
        seq: digits(seq)?,
    })
}

/// A cursor's number: digits only (no sign), as the document's pattern says.
fn digits(text: &str) -> Option<i64> {
    text.bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| text.parse().ok())
        .flatten()
}

/// `GET /v1/incidents?source=&status=&connector=&q=&since=&until=&cursor=&limit=`: a page of
/// incidents (without bodies, with their summary), newest received first; `q` searches the
/// summary (case-insensitive).
pub async fn list_incidents(
    State(app): State<Arc<App>>,
    Viewer(scope): Viewer,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    let q = Params::parse(
        raw.as_deref(),
        &[
            "source",
            "status",
            "connector",
            "q",
            "since",
            "until",
            "cursor",
            "limit",
        ],
    )?;
    let listing = IncidentListing {
        accounts: scope.accounts(),
        source: q.text("source"),
        status: q.one_of("status", &["open", "completed"])?,
        connector: q.text("connector"),
        text: q.text("q"),
        since_ms: q.time_ms("since")?,
        until_ms: q.time_ms("until")?,
        after: q.cursor(incident_key)?,
        limit: q.limit()?,
    };
    let page = app
        .store
        .list_incidents(listing)
        .await
        .map_err(store_failed)?;
    let next = page
        .next
        .map(|k| format!("i{}.{}", k.received_ms, hex(&k.incident_id)));
    Ok(Json(serde_json::json!({ "incidents": page.items, "next_cursor": next })).into_response())
}

/// An incident cursor: `i<received_ms>.<incident id in hex>`.
pub fn incident_key(text: &str) -> Option<IncidentKey> {
    let (received_ms, incident_id) = text.strip_prefix('i')?.split_once('.')?;
    Some(IncidentKey {
        received_ms: digits(received_ms)?,
        incident_id: unhex(incident_id)?,
    })
}

/// `GET /v1/deliveries/{id}`: the delivery and its attempts.
pub async fn get_delivery(
    State(app): State<Arc<App>>,
    Viewer(scope): Viewer,
    _: NoQuery,
    Id(delivery_id): Id,
) -> Result<Json<DeliveryView>, Problem> {
    visible_delivery(&app, &scope, &delivery_id).await.map(Json)
}

/// `POST /v1/deliveries/{id}/replay`: a dead delivery goes back in the queue, its attempt
/// budget new.
pub async fn replay_delivery(
    State(app): State<Arc<App>>,
    Viewer(scope): Viewer,
    _: NoQuery,
    Id(delivery_id): Id,
) -> Result<Response, Problem> {
    changeable_delivery(&app, &scope, &delivery_id).await?;
    match app
        .store
        .replay(delivery_id.clone())
        .await
        .map_err(store_failed)?
    {
        ReplayOutcome::Replayed => {
            app.wake.notify_one();
            tracing::info!(delivery = ?delivery_id, "delivery replayed");
            Ok((
                StatusCode::ACCEPTED,
                Json(serde_json::json!({ "id": delivery_id, "status": "pending" })),
            )
                .into_response())
        }
        ReplayOutcome::NotFound => Err(no_delivery(&delivery_id)),
        ReplayOutcome::NotDead(status) => Err(Problem::new(
            StatusCode::CONFLICT,
            "not-dead",
            "Delivery is not dead",
            format!("only dead deliveries can be replayed; this one is {status}"),
        )),
    }
}

/// `GET /metrics`: Prometheus text format (Bearer `admin_token`, as Prometheus can send).
pub async fn metrics(State(app): State<Arc<App>>, _: Admin) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        {
            let generation = app.live.current();
            let configured: Vec<&str> = generation
                .connectors
                .iter()
                .map(|c| c.name.as_str())
                .collect();
            let intel = generation.config.threat_intel.current();
            let lists: Vec<(&str, usize, usize)> = intel
                .lists
                .iter()
                .map(|l| (l.name.as_str(), l.entries, l.heap_bytes()))
                .collect();
            app.metrics.render(&configured, crate::model::now_ms())
                + &app.metrics.render_threat_intel(&lists)
                + &crate::control::live_metrics(&app)
        },
    )
        .into_response()
}

/// The largest resolve body read: a ticket id of 1024 characters and a URL of 2048, each
/// character as a `\u`-escaped surrogate pair (12 bytes), fit.
const MAX_RESOLVE_BYTES: usize = 64 * 1024;

/// The longest `ticket_id` and `ticket_url` of a resolve (characters).
const MAX_TICKET_ID_CHARS: usize = 1024;
const MAX_TICKET_URL_CHARS: usize = 2048;

/// What trimming takes off a resolve's texts: ASCII blanks only, as the document's pattern
/// says (Unicode's many spaces are kept as the admin gave them).
fn blank(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

/// `POST /v1/deliveries/{id}/resolve` with `{"ticket_id": …, "ticket_url": …}`: a dead
/// `created` whose ticket does exist in the target (an interrupted send, a response without the
/// id) becomes delivered with that id; the ticket's waiting deliveries go on.
pub async fn resolve_delivery(
    State(app): State<Arc<App>>,
    Viewer(scope): Viewer,
    _: NoQuery,
    Client(client): Client,
    Id(delivery_id): Id,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<Json<serde_json::Value>, Problem> {
    changeable_delivery(&app, &scope, &delivery_id).await?;
    // The ticket id is taken as given: a tenant could point its delivery at another tenant's
    // ticket in a shared target. Only the server's admin token resolves.
    if let AdminScope::Tenants(token) = &scope {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "scoped-token",
            "Token is scoped to tenants",
            format!(
                "admin token {:?} cannot resolve: the ticket id it names is not checked against \
                 its tenants; ask for the server's admin_token",
                token.name
            ),
        ));
    }
    // Read only once the caller is known, and bounded as every body is.
    let (body, _budget) = app
        .read_body(client, &headers, body, MAX_RESOLVE_BYTES)
        .await?;
    let value: serde_json::Value =
        serde_json::from_slice(&body).map_err(Problem::malformed_json)?;
    let mut violations = Vec::new();
    let ticket_id = match value.get("ticket_id").and_then(|v| v.as_str()) {
        Some(t)
            if t.chars().count() <= MAX_TICKET_ID_CHARS && !t.trim_matches(blank).is_empty() =>
        {
            Some(t.trim_matches(blank).to_string())
        }
        _ => {
            violations.push(crate::schema::Violation {
                pointer: "/ticket_id".into(),
                detail: format!(
                    "the id the target gave the ticket is required: a string of at most {MAX_TICKET_ID_CHARS} characters, not blank"
                ),
            });
            None
        }
    };
    let ticket_url = match value.get("ticket_url") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(u)) if u.chars().count() <= MAX_TICKET_URL_CHARS => {
            Some(u.trim_matches(blank).to_string()).filter(|u| !u.is_empty())
        }
        Some(_) => {
            violations.push(crate::schema::Violation {
                pointer: "/ticket_url".into(),
                detail: format!("a string of at most {MAX_TICKET_URL_CHARS} characters, or null"),
            });
            None
        }
    };
    let (Some(ticket_id), true) = (ticket_id, violations.is_empty()) else {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-resolve",
            "Invalid resolve",
            "the delivery was not resolved: see errors",
        )
        .with_violations(violations));
    };
    match app
        .store
        .resolve(delivery_id.clone(), ticket_id, ticket_url)
        .await
        .map_err(store_failed)?
    {
        ResolveOutcome::Resolved => {
            app.wake.notify_one();
            tracing::info!(delivery = ?delivery_id, "created delivery resolved by an admin");
            Ok(Json(
                serde_json::json!({ "id": delivery_id, "status": "delivered" }),
            ))
        }
        ResolveOutcome::NotFound => Err(no_delivery(&delivery_id)),
        ResolveOutcome::NotApplicable(reason) => Err(Problem::new(
            StatusCode::CONFLICT,
            "not-resolvable",
            "Delivery cannot be resolved",
            reason,
        )),
    }
}
