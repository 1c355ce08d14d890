//! Ticket: the life of a ticket in a target system.
//!
//! - Correlation: each connector groups incidents by a key (a template, `{{incidentId}}` by
//!   default); incidents with the same key share one ticket while it is open and within its
//!   `aggregate_for` window. The first delivery of a ticket renders `created`, later ones
//!   `updated` (the store keeps the tickets and orders their deliveries one at a time).
//! - Ticket ids: the `created` response names the ticket (`ticket_id`, `ticket_url` JSON
//!   pointers); later templates read it as `ticket.id` / `ticket.url`.
//! - The way back: `POST /v1/incidents/{incidentId}/complete` closes the incident here and
//!   queues `completed` for every connector that has a ticket for it, and for the detection
//!   platform's own API (`upstream` connectors).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::App;
use crate::config::{Config, ConnectorConfig};
use crate::ingress::bearer;
use crate::problem::Problem;
use crate::render::{self, DeliveryFacts, Event, Renderer, TicketFacts};
use crate::schema::Violation;
use crate::store::{Caller, CompleteOutcome, Route};

/// The reason codes seed 000 lists for completing an incident.
pub const REASON_CODES: &[&str] = &[
    "further_action",
    "acceptable_risk",
    "compensating_control",
    "threat_not_valid",
    "not_concluded",
    "other",
];

/// Longest `notes` accepted on completion (characters).
pub const MAX_NOTES_CHARS: usize = 10_000;

/// Where an incident goes for one connector: its correlation key and window. A key template
/// that fails (strict mode, a field this incident lacks) or renders blank falls back to the
/// incident id: the incident still gets its own ticket rather than none.
pub fn route_for(renderer: &Renderer, connector: &ConnectorConfig, incident: &Value) -> Route {
    let received_at = crate::store::rfc3339(crate::store::now_ms());
    let context = render::context(
        incident,
        &DeliveryFacts {
            event: Event::Created,
            delivery_id: "",
            attempt: 0,
            connector,
            received_at: &received_at,
            ticket: TicketFacts::default(),
            completion: None,
        },
    );
    let incident_id = incident
        .get("incidentId")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let key = match renderer.correlation_key(connector, &context) {
        Ok(key) if !key.is_empty() => key,
        Ok(_) => incident_id.to_string(),
        Err(e) => {
            tracing::warn!(connector = %connector.name, incident = ?incident_id, error = %e,
                "correlation key did not render; the incident gets a ticket of its own");
            incident_id.to_string()
        }
    };
    Route {
        connector: connector.name.clone(),
        key,
        aggregate_for_ms: connector
            .aggregate_for
            .map(|d| d.as_millis().min(i64::MAX as u128) as i64),
        sends_updated: connector.request(Event::Updated).is_some(),
    }
}

/// The ticket id (and link) in a `created` response, by the connector's JSON pointers.
/// `Ok(None)` when the connector does not track ids.
pub fn ticket_from_response(
    connector: &ConnectorConfig,
    status: u16,
    body: &str,
) -> Result<Option<(String, Option<String>)>, String> {
    let Some(id_pointer) = &connector.ticket_id else {
        return Ok(None);
    };
    let missing = |what: &str| {
        format!(
            "the created response (HTTP {status}) has no ticket id at {id_pointer}{what}; \
             the ticket may exist in the target, so it is not retried: read the id in this attempt's response and \
             POST /v1/deliveries/{{id}}/resolve with it (or fix ticket_id and replay)"
        )
    };
    let json: Value = serde_json::from_str(body).map_err(|_| missing(": the body is not JSON"))?;
    let as_text = |v: &Value| match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    let id = json
        .pointer(id_pointer)
        .and_then(as_text)
        .ok_or_else(|| missing(""))?;
    let url = connector
        .ticket_url
        .as_ref()
        .and_then(|p| json.pointer(p))
        .and_then(as_text);
    Ok(Some((id, url)))
}

/// Whose bearer token this is. Compared as SHA-256 digests in constant time.
fn caller(config: &Config, headers: &HeaderMap) -> Option<Caller> {
    let presented = Sha256::digest(bearer(headers)?.as_bytes());
    let matches = |token: &str| {
        bool::from(
            presented
                .as_slice()
                .ct_eq(Sha256::digest(token.as_bytes()).as_slice()),
        )
    };
    let mut found = None;
    for c in &config.connectors {
        if c.callback_token.as_deref().is_some_and(matches) {
            found = Some(Caller::Connector(c.name.clone()));
        }
    }
    for s in &config.sources {
        if s.callback_token.as_deref().is_some_and(matches) {
            found = found.or(Some(Caller::Source(s.name.clone())));
        }
    }
    found
}

#[derive(Debug)]
struct CompleteRequest {
    reason_code: String,
    notes: Option<String>,
}

fn parse_complete(body: &[u8]) -> Result<CompleteRequest, Problem> {
    let value: Value = serde_json::from_slice(body).map_err(Problem::malformed_json)?;
    let mut violations = Vec::new();
    let reason_code = match value.get("reason_code") {
        Some(Value::String(code)) if REASON_CODES.contains(&code.as_str()) => Some(code.clone()),
        Some(other) => {
            violations.push(Violation {
                pointer: "/reason_code".into(),
                detail: format!(
                    "{} is not one of {}",
                    crate::schema::truncate_chars(&other.to_string(), 80),
                    REASON_CODES.join(", ")
                ),
            });
            None
        }
        None if value.is_object() => {
            violations.push(Violation {
                pointer: "/reason_code".into(),
                detail: format!("is required: one of {}", REASON_CODES.join(", ")),
            });
            None
        }
        None => {
            violations.push(Violation {
                pointer: String::new(),
                detail: "expected an object with reason_code and notes".into(),
            });
            None
        }
    };
    let notes = match value.get("notes") {
        None | Some(Value::Null) => None,
        Some(Value::String(n)) if n.chars().count() <= MAX_NOTES_CHARS => Some(n.clone()),
        Some(Value::String(_)) => {
            violations.push(Violation {
                pointer: "/notes".into(),
                detail: format!("is longer than {MAX_NOTES_CHARS} characters"),
            });
            None
        }
        Some(_) => {
            violations.push(Violation {
                pointer: "/notes".into(),
                detail: "must be a string".into(),
            });
            None
        }
    };
    match (reason_code, violations.is_empty()) {
        (Some(reason_code), true) => Ok(CompleteRequest { reason_code, notes }),
        _ => Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-completion",
            "Invalid completion",
            "the completion was not recorded",
        )
        .with_violations(violations)),
    }
}

/// `POST /v1/incidents/{incidentId}/complete`: `{"reason_code": …, "notes": …}` →
/// 200 with seed 000's `{"old": {…}, "new": {…}}`.
pub async fn complete(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    incident_id: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Response {
    let result = async {
        let caller = caller(&app.config, &headers).ok_or_else(|| {
            crate::metrics::Metrics::inc(&app.metrics.auth_failures);
            Problem::unauthorized()
        })?;
        let Path(incident_id) = incident_id.map_err(|e| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "bad-path",
                "Bad path",
                e.body_text(),
            )
        })?;
        let request = parse_complete(&body)?;
        // The platform completing its own incident needs no word back; a target closing its
        // own ticket needs no request to close it.
        let upstream: Vec<String> = match &caller {
            Caller::Source(_) => Vec::new(),
            Caller::Connector(_) => app
                .config
                .connectors
                .iter()
                .filter(|c| c.upstream)
                .map(|c| c.name.clone())
                .collect(),
        };
        let skipping: Vec<String> = app
            .config
            .connectors
            .iter()
            .filter(|c| c.request(Event::Completed).is_none())
            .map(|c| c.name.clone())
            .chain(match &caller {
                Caller::Connector(name) => Some(name.clone()),
                Caller::Source(_) => None,
            })
            .collect();
        let outcome = app
            .store
            .complete(
                incident_id.clone(),
                caller.clone(),
                request.reason_code,
                request.notes,
                skipping,
                upstream,
            )
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "cannot record a completion");
                Problem::unavailable(
                    "the completion could not be stored; nothing changed; try again",
                )
            })?;
        match outcome {
            CompleteOutcome::NotFound => {
                Err(Problem::not_found(format!("no incident {incident_id:?}")))
            }
            CompleteOutcome::AlreadyCompleted { since } => {
                let mut p = Problem::new(
                    StatusCode::CONFLICT,
                    "already-completed",
                    "Incident already completed",
                    format!("the incident was completed at {since}"),
                );
                p.extra
                    .insert("status_change_time".into(), Value::String(since));
                Err(p)
            }
            CompleteOutcome::Completed {
                old,
                new,
                deliveries,
            } => {
                if !deliveries.is_empty() {
                    app.wake.notify_one();
                }
                tracing::info!(incident = ?incident_id, by = ?caller, deliveries = deliveries.len(),
                    "incident completed");
                Ok(serde_json::json!({ "old": old, "new": new, "deliveries": deliveries }))
            }
        }
    }
    .await;
    match result {
        Ok(body) => (StatusCode::OK, axum::Json(body)).into_response(),
        Err(p) => p.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_requests_are_checked() {
        let ok = parse_complete(br#"{"reason_code": "threat_not_valid", "notes": "n"}"#).unwrap();
        assert_eq!(ok.reason_code, "threat_not_valid");
        assert_eq!(ok.notes.as_deref(), Some("n"));
        let p = parse_complete(br#"{"reason_code": "because"}"#).unwrap_err();
        assert_eq!(p.status, 422);
        assert_eq!(p.errors[0].pointer, "#/reason_code");
        assert_eq!(parse_complete(b"{").unwrap_err().status, 400);
        assert_eq!(parse_complete(b"[]").unwrap_err().status, 422);
        let p = parse_complete(br#"{"reason_code": "other", "notes": 5}"#).unwrap_err();
        assert_eq!(p.errors[0].pointer, "#/notes");
    }
}
