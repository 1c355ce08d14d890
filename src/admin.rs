//! Admin: read incidents and deliveries, and replay dead deliveries (Bearer `admin_token`).
//!
//! Without an `admin_token` in the config the admin API is off and answers 401 to everyone;
//! a source's API key never opens it. Every handler takes [`Admin`] first, so nothing of a
//! request — its path, its query, its body — is looked at before the caller is known
//! ([`crate::auth`]).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::App;
use crate::app::PathId as Id;
use crate::auth::Admin;
use crate::problem::Problem;
use crate::server::Client;
use crate::store::{DeliveryFilter, DeliveryView, IncidentView, ReplayOutcome, ResolveOutcome};

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

/// `GET /v1/incidents/{id}`: the incident, its versions, tickets and deliveries.
pub async fn get_incident(
    State(app): State<Arc<App>>,
    _: Admin,
    Id(incident_id): Id,
) -> Result<Json<IncidentView>, Problem> {
    found(app.store.incident(incident_id.clone()).await, || {
        Problem::not_found(format!("no incident {incident_id:?}"))
    })
}

#[derive(Deserialize)]
pub struct DeliveryQuery {
    status: Option<String>,
    connector: Option<String>,
    limit: Option<usize>,
}

/// `GET /v1/deliveries?status=&connector=&limit=`: the newest deliveries first.
pub async fn list_deliveries(
    State(app): State<Arc<App>>,
    _: Admin,
    query: Result<Query<DeliveryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let bad_query =
        |detail: String| Problem::new(StatusCode::BAD_REQUEST, "bad-query", "Bad query", detail);
    let Query(q) = query.map_err(|e| bad_query(e.body_text()))?;
    if let Some(s) = &q.status
        && !matches!(s.as_str(), "pending" | "delivered" | "dead")
    {
        return Err(bad_query(format!(
            "status {s:?}: expected pending, delivered or dead"
        )));
    }
    let list = app
        .store
        .deliveries(DeliveryFilter {
            status: q.status,
            connector: q.connector,
            limit: q.limit.unwrap_or(100),
        })
        .await
        .map_err(store_failed)?;
    Ok(Json(serde_json::json!({ "deliveries": list })).into_response())
}

/// `GET /v1/deliveries/{id}`: the delivery and its attempts.
pub async fn get_delivery(
    State(app): State<Arc<App>>,
    _: Admin,
    Id(delivery_id): Id,
) -> Result<Json<DeliveryView>, Problem> {
    found(app.store.delivery(delivery_id.clone()).await, || {
        no_delivery(&delivery_id)
    })
}

/// `POST /v1/deliveries/{id}/replay`: a dead delivery goes back in the queue, its attempt
/// budget new.
pub async fn replay_delivery(
    State(app): State<Arc<App>>,
    _: Admin,
    Id(delivery_id): Id,
) -> Result<Response, Problem> {
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
            app.metrics.render(&configured, crate::model::now_ms())
                + &crate::control::live_metrics(&app)
        },
    )
        .into_response()
}

/// The largest resolve body read (a ticket id of at most 1024 characters, and a URL).
const MAX_RESOLVE_BYTES: usize = 16 * 1024;

/// `POST /v1/deliveries/{id}/resolve` with `{"ticket_id": …, "ticket_url": …}`: a dead
/// `created` whose ticket does exist in the target (an interrupted send, a response without the
/// id) becomes delivered with that id; the ticket's waiting deliveries go on.
pub async fn resolve_delivery(
    State(app): State<Arc<App>>,
    _: Admin,
    Client(client): Client,
    Id(delivery_id): Id,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<Json<serde_json::Value>, Problem> {
    // Read only once the caller is known, and bounded as every body is.
    let (body, _budget) = app
        .read_body(client, &headers, body, MAX_RESOLVE_BYTES)
        .await?;
    let value: serde_json::Value =
        serde_json::from_slice(&body).map_err(Problem::malformed_json)?;
    let text = |key: &str| {
        value
            .get(key)
            .and_then(|v| v.as_str())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    let ticket_id = text("ticket_id")
        .filter(|t| t.len() <= 1024)
        .ok_or_else(|| {
            Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-resolve",
                "Invalid resolve",
                "ticket_id is required: the id the target gave the ticket",
            )
            .with_violations(vec![crate::schema::Violation {
                pointer: "/ticket_id".into(),
                detail: "a non-empty string of at most 1024 characters".into(),
            }])
        })?;
    match app
        .store
        .resolve(delivery_id.clone(), ticket_id, text("ticket_url"))
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
