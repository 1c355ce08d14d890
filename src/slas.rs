//! The SLA endpoints: a ticketing system reports its ticket's status through the back
//! channel (`POST /v1/incidents/{id}/sla`, its callback token), an admin sets one
//! (`POST /v1/tickets/{ticket}/sla`), and admins read the clocks (`GET /v1/incidents/{id}/sla`,
//! `GET /v1/sla`). Each report goes through [`crate::watchdog::report`]; the answer shows the
//! clocks as saved.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use crate::App;
use crate::app::PathId;
use crate::auth::{Callback, Viewer};
use crate::model::now_ms;
use crate::problem::Problem;
use crate::query::{NoQuery, Params};
use crate::schema::Violation;
use crate::server::Client;
use crate::sla::Report;
use crate::store::{Caller, SlaClockRow, SlaListing, StoreError};
use crate::watchdog::{ReportError, StatusReport};

/// A status report is a few short fields.
const MAX_REPORT_BYTES: usize = 4 * 1024;

fn store_failed(e: StoreError) -> Problem {
    Problem::store_failed(&e, "the store could not answer; try again")
}

fn report_failed(e: ReportError) -> Problem {
    match e {
        ReportError::Off => Problem::new(
            StatusCode::CONFLICT,
            "sla-off",
            "SLA clocks are off",
            "the gateway's config has no [sla] connectors, so no ticket has SLA clocks",
        ),
        ReportError::Store(e) => Problem::store_failed(
            &e,
            "the report could not be stored; nothing changed; try again",
        ),
        ReportError::Busy => Problem::unavailable("the clocks kept changing; try again"),
    }
}

/// `{"status": …, "until": …}`: a status is one of [`Report::NAMES`] or a name
/// `[sla.statuses]` maps; `until` (RFC 3339, in the future) ends a wait early.
fn parse_report(app: &App, body: &[u8]) -> Result<StatusReport, Problem> {
    let value: Value = serde_json::from_slice(body).map_err(Problem::malformed_json)?;
    let generation = app.live.current();
    let settings = generation.config.sla.as_deref();
    let mut violations = Vec::new();
    let report = match value.get("status") {
        Some(Value::String(status)) => {
            match settings.map_or_else(|| Report::parse(status), |s| s.report(status)) {
                Some(report) => Some(report),
                None => {
                    let mut known: Vec<String> =
                        Report::NAMES.iter().map(|s| s.to_string()).collect();
                    known.extend(
                        settings
                            .into_iter()
                            .flat_map(|s| s.statuses.keys().cloned()),
                    );
                    violations.push(Violation {
                        pointer: "/status".into(),
                        detail: format!(
                            "{:?} is not a status the gateway knows (it knows: {})",
                            crate::schema::truncate_chars(status, 80),
                            known.join(", ")
                        ),
                    });
                    None
                }
            }
        }
        Some(_) => {
            violations.push(Violation {
                pointer: "/status".into(),
                detail: "must be a string".into(),
            });
            None
        }
        None => {
            violations.push(Violation {
                pointer: if value.is_object() { "/status" } else { "" }.into(),
                detail: "is required: an object with status (and, for waiting, until)".into(),
            });
            None
        }
    };
    let until_ms = match value.get("until") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => match chrono::DateTime::parse_from_rfc3339(text) {
            Ok(t) if t.timestamp_millis() > now_ms() => Some(t.timestamp_millis()),
            Ok(_) => {
                violations.push(Violation {
                    pointer: "/until".into(),
                    detail: "is not in the future".into(),
                });
                None
            }
            Err(_) => {
                violations.push(Violation {
                    pointer: "/until".into(),
                    detail: "is not an RFC 3339 time (e.g. 2026-12-04T18:00:00Z)".into(),
                });
                None
            }
        },
        Some(_) => {
            violations.push(Violation {
                pointer: "/until".into(),
                detail: "must be a string".into(),
            });
            None
        }
    };
    if until_ms.is_some() && report.is_some_and(|r| r != Report::Waiting) {
        violations.push(Violation {
            pointer: "/until".into(),
            detail: "only a waiting status takes an end".into(),
        });
    }
    match (report, violations.is_empty()) {
        (Some(report), true) => Ok(StatusReport { report, until_ms }),
        _ => Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-sla-report",
            "Invalid SLA status report",
            "the report was not applied",
        )
        .with_violations(violations)),
    }
}

/// The clocks as the answer shows them (calendar walks, off the runtime's threads: a page
/// may hold a thousand clocks).
pub(crate) async fn views(app: &App, rows: Vec<SlaClockRow>) -> Result<Vec<Value>, Problem> {
    let generation = app.live.current();
    let now = now_ms();
    tokio::task::spawn_blocking(move || {
        rows.iter()
            .map(|row| {
                crate::watchdog::clock_view(
                    generation.config.sla.as_deref(),
                    &generation.config.tenant_names,
                    row,
                    now,
                )
            })
            .collect()
    })
    .await
    .map_err(|_| Problem::unavailable("the clocks could not be shown; try again"))
}

/// The clocks a back-channel caller may see and report on: a connector's target its own
/// tickets', a source (entitled to the incident) every ticket's.
pub(crate) fn own_clocks(caller: &Caller, rows: Vec<SlaClockRow>) -> Vec<SlaClockRow> {
    match caller {
        Caller::Connector(name) => rows.into_iter().filter(|r| &r.connector == name).collect(),
        Caller::Source(_) => rows,
    }
}

fn no_clocks(what: String) -> Problem {
    Problem::not_found(format!("{what} has no SLA clock"))
}

/// `POST /v1/incidents/{incidentId}/sla` (callback token): a ticketing system reports the
/// status of its ticket for the incident — its own tickets only; a source reports for every
/// ticket of its own incident. Another's incident is, for the caller, a 404.
pub async fn report_for_incident(
    State(app): State<Arc<App>>,
    Callback(caller): Callback,
    _: NoQuery,
    Client(client): Client,
    PathId(incident_id): PathId,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, Problem> {
    let (body, _budget) = app
        .read_body(client, &headers, body, MAX_REPORT_BYTES)
        .await?;
    let status = parse_report(&app, &body)?;
    let missing = || Problem::not_found(format!("no incident {incident_id:?}"));
    let own = |rows: Vec<SlaClockRow>| own_clocks(&caller, rows);
    if let Caller::Source(name) = &caller {
        let view = app
            .store
            .incident(incident_id.clone())
            .await
            .map_err(store_failed)?
            .ok_or_else(missing)?;
        if &view.source != name {
            return Err(missing());
        }
    }
    let rows = own(app
        .store
        .sla_of_incident(incident_id.clone())
        .await
        .map_err(store_failed)?);
    if rows.is_empty() {
        return Err(match &caller {
            // A target learns nothing of incidents it holds no ticket for.
            Caller::Connector(_) => missing(),
            Caller::Source(_) => no_clocks(format!("incident {incident_id:?}")),
        });
    }
    let generation = app.live.current();
    let store = app.store.clone();
    let (rows, said) = crate::watchdog::report(&app.store, &generation, status, now_ms(), || {
        let (store, id) = (store.clone(), incident_id.clone());
        let own = &own;
        async move { store.sla_of_incident(id).await.map(own) }
    })
    .await
    .map_err(report_failed)?;
    crate::watchdog::count(&app.metrics, &said);
    app.wake.notify_one();
    tracing::info!(incident = %incident_id, by = ?caller, status = ?status.report, "SLA status reported");
    Ok(Json(
        json!({ "incidentId": incident_id, "sla": views(&app, rows).await? }),
    ))
}

/// `POST /v1/tickets/{ticket}/sla` (admin, write): sets a ticket's SLA status as an admin
/// (seed 004's supervisor: suspend, resume).
pub async fn report_for_ticket(
    State(app): State<Arc<App>>,
    Viewer(scope): Viewer,
    _: NoQuery,
    Client(client): Client,
    Path(ticket): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, Problem> {
    let missing = || no_clocks(format!("ticket {ticket:?}"));
    let ticket_seq: i64 = ticket.parse().map_err(|_| missing())?;
    let rows = app
        .store
        .sla_of_ticket(ticket_seq)
        .await
        .map_err(store_failed)?;
    if rows.is_empty() || !rows.iter().all(|r| scope.sees(r.account_id)) {
        return Err(missing());
    }
    scope.may_write()?;
    let (body, _budget) = app
        .read_body(client, &headers, body, MAX_REPORT_BYTES)
        .await?;
    let status = parse_report(&app, &body)?;
    let generation = app.live.current();
    let store = app.store.clone();
    let (rows, said) = crate::watchdog::report(&app.store, &generation, status, now_ms(), || {
        let store = store.clone();
        async move { store.sla_of_ticket(ticket_seq).await }
    })
    .await
    .map_err(report_failed)?;
    crate::watchdog::count(&app.metrics, &said);
    app.wake.notify_one();
    tracing::info!(ticket = ticket_seq, status = ?status.report, "SLA status set by an admin");
    Ok(Json(
        json!({ "ticket": ticket_seq, "sla": views(&app, rows).await? }),
    ))
}

/// `GET /v1/incidents/{incidentId}/sla` (admin): the SLA clocks of every ticket the incident
/// is on, with their state and deadlines.
pub async fn incident_clocks(
    State(app): State<Arc<App>>,
    Viewer(scope): Viewer,
    _: NoQuery,
    PathId(incident_id): PathId,
) -> Result<Json<Value>, Problem> {
    let missing = || Problem::not_found(format!("no incident {incident_id:?}"));
    let account = app
        .store
        .account_of(incident_id.clone())
        .await
        .map_err(store_failed)?
        .ok_or_else(missing)?;
    if !scope.sees(account) {
        return Err(missing());
    }
    let rows = app
        .store
        .sla_of_incident(incident_id.clone())
        .await
        .map_err(store_failed)?;
    Ok(Json(
        json!({ "incidentId": incident_id, "sla": views(&app, rows).await? }),
    ))
}

/// `GET /v1/sla?connector=&state=&breached=&cursor=&limit=`: SLA clocks, newest first;
/// `next_cursor` continues the list (null on the last page).
pub async fn list(
    State(app): State<Arc<App>>,
    Viewer(scope): Viewer,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, Problem> {
    let q = Params::parse(
        raw.as_deref(),
        &["connector", "state", "breached", "cursor", "limit"],
    )?;
    let breached = q
        .one_of("breached", &["true", "false"])?
        .map(|b| b == "true");
    let limit = q.limit()?;
    let rows = app
        .store
        .sla_list(SlaListing {
            accounts: scope.accounts(),
            connector: q.text("connector"),
            state: q.one_of("state", &["running", "waiting", "suspended", "met"])?,
            breached,
            before_clock_id: q.cursor(|c| c.strip_prefix('s')?.parse().ok())?,
            limit: limit + 1,
        })
        .await
        .map_err(store_failed)?;
    let mut rows = rows;
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next = more
        .then(|| rows.last().map(|r| format!("s{}", r.clock_id)))
        .flatten();
    Ok(Json(
        json!({ "sla": views(&app, rows).await?, "next_cursor": next }),
    ))
}
