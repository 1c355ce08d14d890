//! Admin: read incidents and deliveries, and replay dead deliveries (Bearer `admin_token`).
//!
//! Without an `admin_token` in the config the admin API is off and answers 401 to everyone;
//! a source's API key never opens it.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::App;
use crate::auth;
use crate::problem::Problem;
use crate::server::Client;
use crate::store::{DeliveryFilter, ReplayOutcome};

fn require_admin(app: &App, headers: &HeaderMap) -> Result<(), Problem> {
    if auth::admin(app.config.server.admin_token.as_deref(), headers) {
        Ok(())
    } else {
        Err(Problem::unauthorized())
    }
}

fn bad_path(e: PathRejection) -> Problem {
    Problem::new(
        StatusCode::BAD_REQUEST,
        "bad-path",
        "Bad path",
        e.body_text(),
    )
}

fn bad_query(e: QueryRejection) -> Problem {
    Problem::new(
        StatusCode::BAD_REQUEST,
        "bad-query",
        "Bad query",
        e.body_text(),
    )
}

fn store_failed(e: crate::store::StoreError) -> Problem {
    tracing::error!(error = %e, "admin: store error");
    Problem::unavailable("the store could not answer; try again")
}

pub async fn get_incident(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    incident_id: Result<Path<String>, PathRejection>,
) -> Response {
    let result = async {
        require_admin(&app, &headers)?;
        let Path(incident_id) = incident_id.map_err(bad_path)?;
        app.store
            .incident(incident_id.clone())
            .await
            .map_err(store_failed)?
            .ok_or_else(|| Problem::not_found(format!("no incident {incident_id:?}")))
    }
    .await;
    match result {
        Ok(view) => Json(view).into_response(),
        Err(p) => p.into_response(),
    }
}

#[derive(Deserialize)]
pub struct DeliveryQuery {
    status: Option<String>,
    connector: Option<String>,
    limit: Option<usize>,
}

pub async fn list_deliveries(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    query: Result<Query<DeliveryQuery>, QueryRejection>,
) -> Response {
    let result = async {
        require_admin(&app, &headers)?;
        let Query(q) = query.map_err(bad_query)?;
        if let Some(s) = &q.status
            && !matches!(s.as_str(), "pending" | "delivered" | "dead")
        {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "bad-query",
                "Bad query",
                format!("status {s:?}: expected pending, delivered or dead"),
            ));
        }
        app.store
            .deliveries(DeliveryFilter {
                status: q.status,
                connector: q.connector,
                limit: q.limit.unwrap_or(100),
            })
            .await
            .map_err(store_failed)
    }
    .await;
    match result {
        Ok(list) => Json(serde_json::json!({ "deliveries": list })).into_response(),
        Err(p) => p.into_response(),
    }
}

pub async fn get_delivery(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    delivery_id: Result<Path<String>, PathRejection>,
) -> Response {
    let result = async {
        require_admin(&app, &headers)?;
        let Path(delivery_id) = delivery_id.map_err(bad_path)?;
        app.store
            .delivery(delivery_id.clone())
            .await
            .map_err(store_failed)?
            .ok_or_else(|| Problem::not_found(format!("no delivery {delivery_id:?}")))
    }
    .await;
    match result {
        Ok(view) => Json(view).into_response(),
        Err(p) => p.into_response(),
    }
}

pub async fn replay_delivery(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    delivery_id: Result<Path<String>, PathRejection>,
) -> Response {
    let result = async {
        require_admin(&app, &headers)?;
        let Path(delivery_id) = delivery_id.map_err(bad_path)?;
        match app
            .store
            .replay(delivery_id.clone())
            .await
            .map_err(store_failed)?
        {
            ReplayOutcome::Replayed => {
                app.wake.notify_one();
                tracing::info!(delivery = ?delivery_id, "delivery replayed");
                Ok(delivery_id)
            }
            ReplayOutcome::NotFound => {
                Err(Problem::not_found(format!("no delivery {delivery_id:?}")))
            }
            ReplayOutcome::NotDead(status) => Err(Problem::new(
                StatusCode::CONFLICT,
                "not-dead",
                "Delivery is not dead",
                format!("only dead deliveries can be replayed; this one is {status}"),
            )),
        }
    }
    .await;
    match result {
        Ok(id) => (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({ "id": id, "status": "pending" })),
        )
            .into_response(),
        Err(p) => p.into_response(),
    }
}

/// `GET /metrics`: Prometheus text format (Bearer `admin_token`, as Prometheus can send).
pub async fn metrics(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    match require_admin(&app, &headers) {
        Ok(()) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4",
            )],
            app.metrics.render(),
        )
            .into_response(),
        Err(p) => p.into_response(),
    }
}

/// The largest resolve body read (a ticket id of at most 1024 characters, and a URL).
const MAX_RESOLVE_BYTES: usize = 16 * 1024;

/// `POST /v1/deliveries/{id}/resolve` with `{"ticket_id": …, "ticket_url": …}`: a dead
/// `created` whose ticket does exist in the target (an interrupted send, a response without the
/// id) becomes delivered with that id; the ticket's waiting deliveries go on.
pub async fn resolve_delivery(
    State(app): State<Arc<App>>,
    Client(client): Client,
    headers: HeaderMap,
    delivery_id: Result<Path<String>, PathRejection>,
    body: axum::body::Body,
) -> Response {
    let result = async {
        require_admin(&app, &headers)?;
        let Path(delivery_id) = delivery_id.map_err(bad_path)?;
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
            crate::store::ResolveOutcome::Resolved => {
                app.wake.notify_one();
                tracing::info!(delivery = ?delivery_id, "created delivery resolved by an admin");
                Ok(delivery_id)
            }
            crate::store::ResolveOutcome::NotFound => {
                Err(Problem::not_found(format!("no delivery {delivery_id:?}")))
            }
            crate::store::ResolveOutcome::NotApplicable(reason) => Err(Problem::new(
                StatusCode::CONFLICT,
                "not-resolvable",
                "Delivery cannot be resolved",
                reason,
            )),
        }
    }
    .await;
    match result {
        Ok(id) => Json(serde_json::json!({ "id": id, "status": "delivered" })).into_response(),
        Err(p) => p.into_response(),
    }
}
