//! The way back: `POST /v1/incidents/{incidentId}/complete`. A source or a connector (by its
//! `callback_token`, see [`crate::auth::Callback`]) closes the incident here; the store queues
//! `completed` for every connector that has a ticket for it, and for the detection platform's
//! own API (`upstream` connectors). `GET /v1/incidents/{incidentId}/info` (seed 004's `info`
//! action) shows the same caller the incident and its tickets as the gateway sees them.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;

use crate::App;
use crate::app::PathId;
use crate::auth::Callback;
use crate::model::Event;
use crate::problem::Problem;
use crate::query::NoQuery;
use crate::schema::Violation;
use crate::server::Client;
use crate::store::{Caller, CompleteOutcome, Completing};
use crate::ticket::REASON_CODES;

/// Longest `notes` accepted on completion (characters).
pub const MAX_NOTES_CHARS: usize = 10_000;

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

/// The largest completion body read: notes of 10,000 characters fit even when each is a
/// `\u`-escaped surrogate pair (12 bytes), as JSON encoders may write them.
const MAX_COMPLETE_BYTES: usize = 256 * 1024;

/// `POST /v1/incidents/{incidentId}/complete`: `{"reason_code": …, "notes": …}` →
/// 200 with seed 000's `{"old": {…}, "new": {…}}`.
pub async fn complete(
    State(app): State<Arc<App>>,
    Callback(caller): Callback,
    _: NoQuery,
    Client(client): Client,
    PathId(incident_id): PathId,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, Problem> {
    // Read only once the caller is known, and bounded as every body is.
    let (body, _budget) = app
        .read_body(client, &headers, body, MAX_COMPLETE_BYTES)
        .await?;
    let request = parse_complete(&body)?;
    let generation = app.live.current();
    // The platform completing its own incident needs no word back; a target closing its
    // own ticket needs no request to close it.
    let upstream: Vec<String> = match &caller {
        Caller::Source(_) => Vec::new(),
        Caller::Connector(_) => generation
            .connectors
            .iter()
            .filter(|c| c.upstream)
            .map(|c| c.name.clone())
            .collect(),
    };
    let skipping: Vec<String> = generation
        .connectors
        .iter()
        .filter(|c| !c.sends(Event::Completed))
        .map(|c| c.name.clone())
        .chain(match &caller {
            Caller::Connector(name) => Some(name.clone()),
            Caller::Source(_) => None,
        })
        .collect();
    let connectors = &generation.connectors;
    let completes_all = match &caller {
        Caller::Connector(name) => {
            crate::connector::find(connectors, name).is_some_and(|c| c.target_close_completes_all)
        }
        Caller::Source(_) => false,
    };
    let outcome = app
        .store
        .complete(Completing {
            incident_id: incident_id.clone(),
            caller: caller.clone(),
            reason_code: request.reason_code,
            notes: request.notes,
            skipping,
            upstream,
            close_policies: connectors
                .iter()
                .map(|c| (c.name.clone(), c.close_ticket))
                .collect(),
            takes_notes: connectors
                .iter()
                .filter(|c| c.sends(Event::Updated))
                .map(|c| c.name.clone())
                .collect(),
            completes_all,
        })
        .await
        .map_err(|e| {
            Problem::store_failed(
                &e,
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
            along,
        } => {
            if !deliveries.is_empty() {
                app.wake.notify_one();
            }
            tracing::info!(incident = %incident_id, by = ?caller, deliveries = deliveries.len(),
                completed_along = along.len(), "incident completed");
            let mut body = serde_json::json!({ "old": old, "new": new, "deliveries": deliveries });
            // The ticket's other incidents the target's close completed too.
            if !along.is_empty() {
                body["completed_along"] = serde_json::json!(along);
            }
            Ok(Json(body))
        }
    }
}

/// `GET /v1/incidents/{incidentId}/info`: the incident as the gateway sees it — status,
/// priority, tenant, times, completion — its tickets with where each is assigned, and their
/// SLA clocks. Scoped
/// as `complete` is: a source sees its own incidents (with every connector's tickets), a
/// connector's target those it holds a ticket for (with its own tickets only); any other
/// incident is, for the caller, a 404.
pub async fn info(
    State(app): State<Arc<App>>,
    Callback(caller): Callback,
    _: NoQuery,
    PathId(incident_id): PathId,
) -> Result<Json<Value>, Problem> {
    let missing = || Problem::not_found(format!("no incident {incident_id:?}"));
    let view = app
        .store
        .incident(incident_id.clone())
        .await
        .map_err(|e| Problem::store_failed(&e, "the store could not answer; try again"))?
        .ok_or_else(missing)?;
    let entitled = match &caller {
        Caller::Source(name) => *name == view.source,
        Caller::Connector(name) => view
            .connectors
            .get(name)
            .is_some_and(|c| !c.tickets.is_empty()),
    };
    if !entitled {
        return Err(missing());
    }
    let generation = app.live.current();
    let tickets: Vec<Value> = view
        .connectors
        .iter()
        .filter(|(name, _)| match &caller {
            Caller::Source(_) => true,
            Caller::Connector(own) => *name == own,
        })
        .flat_map(|(name, side)| {
            let assignment = crate::connector::find(&generation.connectors, name)
                .map(|c| c.assignment.assign(name, &view.incident))
                .unwrap_or_default();
            side.tickets.iter().map(move |t| {
                serde_json::json!({
                    "connector": name,
                    "correlation_key": t.correlation_key,
                    "ticket_id": t.ticket_id,
                    "ticket_url": t.ticket_url,
                    "status": t.status,
                    "opened_at": t.opened_at,
                    "aggregates_until": t.aggregates_until,
                    "incidents": t.incidents,
                    "assignment": assignment,
                })
            })
        })
        .collect();
    let rows = app
        .store
        .sla_of_incident(incident_id.clone())
        .await
        .map_err(|e| Problem::store_failed(&e, "the store could not answer; try again"))?;
    let sla = crate::slas::views(&app, crate::slas::own_clocks(&caller, rows)).await?;
    let account = crate::route::account_of(&view.incident);
    let tenant = account.and_then(|a| generation.config.tenant_names.get(&a).cloned());
    let priority = crate::model::ThreatRating::of_incident(&view.incident).map(|r| r.name());
    Ok(Json(serde_json::json!({
        "incidentId": view.incident_id,
        "status": view.status,
        "priority": priority,
        "accountId": account,
        "tenant": tenant,
        "source": view.source,
        "received_at": view.received_at,
        "updated_at": view.updated_at,
        "completed_at": (view.status == "completed").then_some(&view.status_change_time),
        "completion": view.completion,
        "versions": view.versions,
        "tickets": tickets,
        // Each of those tickets' SLA clocks (take-over, complete): state and deadlines.
        "sla": sla,
    })))
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
