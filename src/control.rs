//! Control: what an operator changes while the gateway runs (Bearer `admin_token`; bulk
//! replay also takes a tenant-scoped token with `access = "write"`, and replays only theirs) —
//! reload the config, pause and resume a connector, replay dead deliveries in bulk, and the
//! connectors' state (paused, orphaned, queued).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::App;
use crate::app::PathId as Name;
use crate::auth::{Admin, Viewer};
use crate::problem::Problem;
use crate::query::NoQuery;
use crate::schema::Violation;
use crate::server::Client;
use crate::store::{DeadDelivery, DeadFilter, PauseNote, ReplayOutcome};

fn store_failed(e: crate::store::StoreError) -> Problem {
    Problem::store_failed(&e, "the store could not answer; try again")
}

fn no_connector(name: &str) -> Problem {
    Problem::not_found(format!("no connector {name:?} in the config in force"))
}

/// The largest control body read (a reason, a filter).
const MAX_CONTROL_BYTES: usize = 16 * 1024;

/// Reads an optional JSON object body: empty is `{}`.
async fn object_body(
    app: &App,
    client: Option<std::net::IpAddr>,
    headers: &axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<Value, Problem> {
    let (bytes, _budget) = app
        .read_body(client, headers, body, MAX_CONTROL_BYTES)
        .await?;
    if bytes.is_empty() {
        return Ok(json!({}));
    }
    let value: Value = serde_json::from_slice(&bytes).map_err(Problem::malformed_json)?;
    if !value.is_object() {
        return Err(invalid("", "the body is a JSON object"));
    }
    Ok(value)
}

fn invalid(pointer: &str, detail: impl Into<String>) -> Problem {
    let detail = detail.into();
    Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-request",
        "Invalid request",
        detail.clone(),
    )
    .with_violations(vec![Violation {
        pointer: pointer.into(),
        detail,
    }])
}

/// `POST /v1/admin/reload`: loads the config file again; 200 with the generation now in
/// force, or 422 with why the new file was refused (the running config stays).
pub async fn reload(
    State(app): State<Arc<App>>,
    _: Admin,
    _: NoQuery,
) -> Result<Json<Value>, Problem> {
    match app.live.reload().await {
        Ok(done) => Ok(Json(json!({
            "generation": done.generation,
            "restart_needed": done.restart_needed,
        }))),
        Err(e) => {
            let detail = app.live.current().secrets.mask(&e.to_string());
            Err(Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "config-refused",
                "Config refused",
                format!("the new config was not loaded; the running one stays in force: {detail}"),
            ))
        }
    }
}

/// `GET /v1/connectors`: every configured connector with whether it is paused (and how) and
/// its queue; then the connectors only queued deliveries still name (orphaned: they stay
/// queued until a reload brings the connector back).
pub async fn list_connectors(
    State(app): State<Arc<App>>,
    _: Admin,
    _: NoQuery,
) -> Result<Json<Value>, Problem> {
    let generation = app.live.current();
    let depths = app.store.queue_depths().await.map_err(store_failed)?;
    let now = crate::model::now_ms();
    let queue = |name: &str| {
        let depth = depths.iter().find(|d| d.connector == name);
        json!({
            "pending": depth.map_or(0, |d| d.pending),
            "oldest_due_seconds": depth
                .and_then(|d| d.oldest_due_ms)
                .map(|due| (now - due).max(0) as f64 / 1000.0),
        })
    };
    let alerting = app.alerts.alerting();
    let mut list: Vec<Value> = generation
        .connectors
        .iter()
        .map(|c| {
            let api = app.live.api_pause(&c.name);
            json!({
                "name": c.name,
                "kind": c.target.kind(),
                "paused": c.paused || api.is_some(),
                "paused_by": if c.paused { Some("config") } else if api.is_some() { Some("api") } else { None },
                "paused_since": api.as_ref().map(|p| crate::model::rfc3339(p.since_ms)),
                "pause_reason": api.and_then(|p| p.reason),
                "orphaned": false,
                "circuit": if app.circuits.is_open(&c.name) { "open" } else { "closed" },
                "alerting": alerting.contains(&c.name),
                "queue": queue(&c.name),
            })
        })
        .collect();
    for depth in &depths {
        if generation.connector(&depth.connector).is_none() {
            list.push(json!({
                "name": depth.connector,
                "kind": null,
                "paused": false,
                "paused_by": null,
                "paused_since": null,
                "pause_reason": null,
                "orphaned": true,
                "circuit": null,
                "alerting": false,
                "queue": queue(&depth.connector),
            }));
        }
    }
    Ok(Json(
        json!({ "generation": generation.number, "connectors": list }),
    ))
}

/// `POST /v1/connectors/{name}/pause` with an optional `{"reason": …}`: its deliveries stay
/// queued, none sent (a send under way finishes), on every process sharing the store.
pub async fn pause(
    State(app): State<Arc<App>>,
    _: Admin,
    _: NoQuery,
    Client(client): Client,
    Name(name): Name,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<Json<Value>, Problem> {
    let body = object_body(&app, client, &headers, body).await?;
    let reason = match body.get("reason") {
        None | Some(Value::Null) => None,
        Some(Value::String(r)) if r.chars().count() <= 500 => Some(r.clone()),
        Some(_) => return Err(invalid("/reason", "a string of at most 500 characters")),
    };
    pause_connector(&app, &name, reason).await?;
    Ok(Json(json!({ "connector": name, "paused": true })))
}

/// Pauses `name` on every process sharing the store (the API's and the console's pause).
pub async fn pause_connector(app: &App, name: &str, reason: Option<String>) -> Result<(), Problem> {
    if app.live.current().connector(name).is_none() {
        return Err(no_connector(name));
    }
    let note = PauseNote {
        connector: name.to_string(),
        since_ms: crate::model::now_ms(),
        reason,
    };
    app.store
        .set_paused(name.to_string(), Some(note))
        .await
        .map_err(store_failed)?;
    app.live.reread_pauses().await.map_err(store_failed)?;
    tracing::warn!(connector = %name, "connector paused by an admin");
    Ok(())
}

/// `POST /v1/connectors/{name}/resume`: its queued deliveries go out again. A connector
/// paused in the config is resumed by editing the config (409 here).
pub async fn resume(
    State(app): State<Arc<App>>,
    _: Admin,
    _: NoQuery,
    Name(name): Name,
) -> Result<Json<Value>, Problem> {
    resume_connector(&app, &name).await?;
    Ok(Json(json!({ "connector": name, "paused": false })))
}

/// Resumes `name` (the API's and the console's resume); one paused in the config is 409.
pub async fn resume_connector(app: &App, name: &str) -> Result<(), Problem> {
    let generation = app.live.current();
    let Some(connector) = generation.connector(name) else {
        return Err(no_connector(name));
    };
    if connector.paused {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "paused-in-config",
            "Paused in the config",
            "this connector has `paused = true` in the config: take it out and reload",
        ));
    }
    let was = app
        .store
        .set_paused(name.to_string(), None)
        .await
        .map_err(store_failed)?;
    app.live.reread_pauses().await.map_err(store_failed)?;
    if was {
        tracing::info!(connector = %name, "connector resumed by an admin");
    }
    Ok(())
}

/// How a dead delivery's last attempt ended, as bulk replay filters it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// The receiver answered 4xx.
    #[serde(rename = "http_4xx")]
    Http4xx,
    /// The receiver answered 5xx.
    #[serde(rename = "http_5xx")]
    Http5xx,
    /// Another status (a 3xx not followed, a 2xx without the ticket id it needed).
    HttpOther,
    /// No answer: connection refused or broken, timeout, TLS, refused by the egress rules.
    NoResponse,
    /// Nothing was sent: the render failed or its connector was gone.
    NotSent,
}

impl ErrorClass {
    pub fn of(dead: &DeadDelivery) -> ErrorClass {
        match (dead.attempted, dead.status_code) {
            (false, _) => ErrorClass::NotSent,
            (true, None) => ErrorClass::NoResponse,
            (true, Some(s)) if (400..500).contains(&s) => ErrorClass::Http4xx,
            (true, Some(s)) if (500..600).contains(&s) => ErrorClass::Http5xx,
            (true, Some(_)) => ErrorClass::HttpOther,
        }
    }
}

/// The most dead deliveries one bulk replay takes (a filter that matches more says so).
const MAX_BULK_REPLAY: usize = 100_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BulkReplay {
    connector: Option<String>,
    /// RFC 3339: died at or after.
    since: Option<String>,
    /// RFC 3339: died before.
    until: Option<String>,
    error_class: Option<ErrorClass>,
    /// A JSON integer (`500`, or `500.0` as JSON Schema counts it).
    limit: Option<serde_json::Number>,
}

fn instant(pointer: &str, text: Option<&str>) -> Result<Option<i64>, Problem> {
    text.map(|t| {
        chrono::DateTime::parse_from_rfc3339(t)
            .map(|at| at.timestamp_millis())
            .map_err(|e| {
                invalid(
                    pointer,
                    format!("{t:?} is not an RFC 3339 time (e.g. 2026-01-31T09:00:00Z): {e}"),
                )
            })
    })
    .transpose()
}

/// `POST /v1/deliveries/replay` with a filter (`connector`, `since`, `until`, `error_class`,
/// `limit`): every dead delivery it matches goes back in the queue; answers how many.
pub async fn bulk_replay(
    State(app): State<Arc<App>>,
    Viewer(scope): Viewer,
    _: NoQuery,
    Client(client): Client,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<(StatusCode, Json<Value>), Problem> {
    scope.may_write()?;
    let body = object_body(&app, client, &headers, body).await?;
    let filter: BulkReplay = serde_json::from_value(body).map_err(|e| {
        invalid(
            "",
            format!(
                "{e}; the filter takes connector, since, until, error_class \
                 (http_4xx, http_5xx, http_other, no_response, not_sent) and limit"
            ),
        )
    })?;
    let since_ms = instant("/since", filter.since.as_deref())?;
    let until_ms = instant("/until", filter.until.as_deref())?;
    let limit = match &filter.limit {
        None => Some(10_000),
        Some(n) => n
            .as_u64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= MAX_BULK_REPLAY as f64)
                    .map(|f| f as u64)
            })
            .and_then(|n| usize::try_from(n).ok()),
    };
    let limit = limit.unwrap_or(0);
    if limit == 0 || limit > MAX_BULK_REPLAY {
        return Err(invalid("/limit", format!("from 1 to {MAX_BULK_REPLAY}")));
    }
    // Read one more than asked: whether more remain.
    let dead = app
        .store
        .dead(DeadFilter {
            accounts: scope.accounts(),
            connector: filter.connector.clone(),
            since_ms,
            until_ms,
            limit: if filter.error_class.is_some() {
                MAX_BULK_REPLAY + 1
            } else {
                limit + 1
            },
        })
        .await
        .map_err(store_failed)?;
    let mut matched: Vec<DeadDelivery> = dead
        .into_iter()
        .filter(|d| filter.error_class.is_none_or(|c| ErrorClass::of(d) == c))
        .collect();
    let more = matched.len() > limit;
    matched.truncate(limit);
    let mut replayed = 0usize;
    for d in &matched {
        // One at a time, each its own transaction: ingest keeps its turns on the store.
        if app
            .store
            .replay(d.delivery_id.clone())
            .await
            .map_err(store_failed)?
            == ReplayOutcome::Replayed
        {
            replayed += 1;
        }
    }
    if replayed > 0 {
        app.wake.notify_one();
    }
    tracing::info!(replayed, more, "dead deliveries replayed in bulk");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "replayed": replayed, "more": more })),
    ))
}

/// The config's and the connectors' state for `/metrics`: reloads by outcome, the generation
/// in force, and each connector's pause (Prometheus text format).
pub fn live_metrics(app: &App) -> String {
    use std::fmt::Write as _;
    use std::sync::atomic::Ordering::Relaxed;
    let live = &app.live;
    let generation = live.current();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP igw_config_reloads_total Config reloads, by outcome (a failed one changed nothing).\n\
         # TYPE igw_config_reloads_total counter\n\
         igw_config_reloads_total{{outcome=\"ok\"}} {}\n\
         igw_config_reloads_total{{outcome=\"failed\"}} {}",
        live.reloads_ok.load(Relaxed),
        live.reloads_failed.load(Relaxed),
    );
    let _ = writeln!(
        out,
        "# HELP igw_config_generation The config in force: 1 at start, one more per reload.\n\
         # TYPE igw_config_generation gauge\n\
         igw_config_generation {}",
        generation.number
    );
    let paused = live.paused(&generation.connectors);
    let _ = writeln!(
        out,
        "# HELP igw_connector_paused Whether a connector is paused (its deliveries held).\n\
         # TYPE igw_connector_paused gauge"
    );
    for c in generation.connectors.iter() {
        let _ = writeln!(
            out,
            "igw_connector_paused{{connector=\"{}\"}} {}",
            crate::metrics::label_value(&c.name),
            u8::from(paused.contains(&c.name))
        );
    }
    let alerting = app.alerts.alerting();
    let _ = writeln!(
        out,
        "# HELP igw_connector_alerting Whether a connector's alert is raised (its target down).\n\
         # TYPE igw_connector_alerting gauge"
    );
    for c in generation.connectors.iter() {
        let _ = writeln!(
            out,
            "igw_connector_alerting{{connector=\"{}\"}} {}",
            crate::metrics::label_value(&c.name),
            u8::from(alerting.contains(&c.name))
        );
    }
    let _ = writeln!(
        out,
        "# HELP igw_connector_alerts_total Alerts raised for a connector.\n\
         # TYPE igw_connector_alerts_total counter"
    );
    if let Ok(totals) = app.alerts.raised_total.lock() {
        for c in generation.connectors.iter() {
            let _ = writeln!(
                out,
                "igw_connector_alerts_total{{connector=\"{}\"}} {}",
                crate::metrics::label_value(&c.name),
                totals.get(&c.name).copied().unwrap_or(0)
            );
        }
    }
    out
}

/// Reads the queue's depth per connector for `/metrics` until shutdown: every
/// [`crate::metrics::QUEUE_REFRESH`], or ten times as long as the last read took if that is
/// longer, so that a huge queue costs the store at most a tenth of its time here.
pub async fn read_queue(
    store: crate::store::Store,
    metrics: Arc<crate::metrics::Metrics>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        let started = std::time::Instant::now();
        let read = async {
            Ok::<_, crate::store::StoreError>((
                store.queue_depths().await?,
                store.dead_counts().await?,
            ))
        };
        match read.await {
            Ok((depths, dead)) => {
                let depths = depths
                    .into_iter()
                    .map(|d| crate::metrics::QueueDepth {
                        connector: d.connector,
                        pending: d.pending,
                        oldest_due_ms: d.oldest_due_ms,
                    })
                    .collect();
                metrics.set_queue(depths, dead, crate::model::now_ms(), started.elapsed());
            }
            Err(e) => tracing::warn!(error = %e, "reading the queue's depth for /metrics failed"),
        }
        let pause = crate::metrics::QUEUE_REFRESH.max(started.elapsed() * 10);
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = shutdown.cancelled() => return,
        }
    }
}
