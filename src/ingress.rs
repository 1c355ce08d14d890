//! Ingress: `POST /v1/incidents` — authenticate the sender, bound and parse the body,
//! validate every incident, route, store, and only then answer 202.
//!
//! A batch is all or nothing: one invalid incident refuses the whole request, and nothing
//! is stored for any error.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::App;
use crate::config::SourceConfig;
use crate::problem::Problem;
use crate::route;
use crate::schema::Violation;
use crate::store::NewIncident;

/// The source whose API key is the request's bearer token. Keys are compared as SHA-256
/// digests in constant time, so neither content nor length leaks through timing.
pub fn authenticate<'a>(
    sources: &'a [SourceConfig],
    headers: &HeaderMap,
) -> Option<&'a SourceConfig> {
    let token = bearer(headers)?;
    let presented = Sha256::digest(token.as_bytes());
    let mut found = None;
    for source in sources {
        let expected = Sha256::digest(source.api_key.as_bytes());
        if bool::from(presented.as_slice().ct_eq(expected.as_slice())) {
            found = Some(source);
        }
    }
    found
}

pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

pub async fn post_incidents(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match accept(&app, &headers, body).await {
        Ok(response) => response,
        Err(problem) => problem.into_response(),
    }
}

async fn accept(app: &App, headers: &HeaderMap, body: Body) -> Result<Response, Problem> {
    let limits = &app.config.server;
    let source = authenticate(&app.config.sources, headers).ok_or_else(Problem::unauthorized)?;
    if !is_json(headers) {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            "send the incident as application/json",
        ));
    }
    let too_large = || {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            "Payload too large",
            format!(
                "the body exceeds server.max_body_bytes ({} bytes)",
                limits.max_body_bytes
            ),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body_bytes as u64) {
        return Err(too_large());
    }
    let read = tokio::time::timeout(
        limits.body_read_timeout,
        axum::body::to_bytes(body, limits.max_body_bytes),
    )
    .await
    .map_err(|_| {
        Problem::new(
            StatusCode::REQUEST_TIMEOUT,
            "body-timeout",
            "Request body too slow",
            format!(
                "the body did not arrive within server.body_read_timeout ({})",
                humantime::format_duration(limits.body_read_timeout)
            ),
        )
    })?;
    let bytes = read.map_err(|e| {
        let over_limit = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if over_limit {
            too_large()
        } else {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "bad-body",
                "Bad request body",
                "the request body could not be read",
            )
        }
    })?;
    let document: Value = serde_json::from_slice(&bytes).map_err(|e| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "malformed-json",
            "Malformed JSON",
            format!("the body is not valid JSON: {e}"),
        )
    })?;

    let (incidents, is_batch) = match document {
        Value::Array(items) => (items, true),
        single => (vec![single], false),
    };
    if is_batch && (incidents.is_empty() || incidents.len() > limits.max_batch) {
        return Err(unprocessable(vec![Violation {
            pointer: String::new(),
            detail: format!(
                "a batch holds 1 to {} incidents; this one has {}",
                limits.max_batch,
                incidents.len()
            ),
        }]));
    }
    let mut violations = Vec::new();
    for (i, incident) in incidents.iter().enumerate() {
        let prefix = if is_batch {
            format!("/{i}")
        } else {
            String::new()
        };
        violations.extend(app.schema.violations(incident, &prefix));
    }
    if !violations.is_empty() {
        return Err(unprocessable(violations));
    }

    let batch: Vec<NewIncident> = incidents
        .iter()
        .map(|incident| prepare(&app.config.connectors, &app.renderer, incident))
        .collect();
    let outcomes = app
        .store
        .ingest(source.name.clone(), batch)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "cannot store incidents");
            Problem::unavailable(
                "the incident could not be stored; nothing was accepted; try again",
            )
        })?;
    if outcomes.iter().any(|o| !o.deliveries.is_empty()) {
        app.wake.notify_one();
    }
    for o in &outcomes {
        tracing::info!(incident = ?o.incident_id, source = %source.name, status = ?o.status,
            deliveries = o.deliveries.len(), "incident received");
    }
    let body = if is_batch {
        serde_json::to_value(&outcomes)
    } else {
        serde_json::to_value(&outcomes[0])
    }
    .unwrap_or(Value::Null);
    Ok((StatusCode::ACCEPTED, axum::Json(body)).into_response())
}

fn unprocessable(violations: Vec<Violation>) -> Problem {
    let count = violations.len();
    let detail = if count >= crate::schema::MAX_VIOLATIONS {
        format!(
            "at least {count} schema violations (the first {count} are listed); nothing was stored"
        )
    } else {
        format!("{count} schema violation(s); nothing was stored")
    };
    Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-incident",
        "Invalid incident",
        detail,
    )
    .with_violations(violations)
}

/// Serializes and routes a validated incident.
fn prepare(
    connectors: &[crate::config::ConnectorConfig],
    renderer: &crate::render::Renderer,
    incident: &Value,
) -> NewIncident {
    let body = incident.to_string();
    let body_hash: String = Sha256::digest(body.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    NewIncident {
        incident_id: incident
            .get("incidentId")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        update_time: incident.get("updateTime").and_then(Value::as_f64),
        body,
        body_hash,
        routes: route::route(connectors, incident)
            .into_iter()
            .map(|c| crate::ticket::route_for(renderer, c, incident))
            .collect(),
    }
}
