//! Ingress: `POST /v1/incidents` — authenticate the sender, bound and parse the body,
//! validate every incident, route, store, and only then answer 202.
//!
//! A batch is all or nothing: one invalid incident refuses the whole request, and nothing
//! is stored for any error.
//!
//! A source is known by its bearer API key, its Standard Webhooks signature, or both (a
//! source with a signing secret must sign every request: timestamp within 5 minutes, a
//! `webhook-id` never seen before in that window). Every authentication failure is the same
//! 401, counted in the `igw_auth_failures_total` metric.
//!
//! Whatever the headers alone can refuse (no credential that could match, a stale timestamp,
//! a malformed signature, an id already used) is refused before the body is read, and bodies
//! being read share one byte budget (`server.max_body_bytes_in_flight`, 503 beyond it), so
//! unauthenticated senders cannot make the gateway buffer their bodies.
//!
//! A `webhook-id` is claimed durably, in the transaction that stores the request's incidents
//! ([`crate::store::Store::ingest`]); the in-memory claims here only refuse copies early.

use std::net::IpAddr;
use std::sync::Arc;

use base64::Engine as _;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::App;
use crate::admission::BodyReservation;
use crate::auth::{self, SourceConfig, TenantBinding};
use crate::problem::Problem;
use crate::query::NoQuery;
use crate::route;
use crate::schema::Violation;
use crate::server::Client;
use crate::store::{NewIncident, StoreError};

/// Longest `webhook-id` accepted.
const MAX_WEBHOOK_ID: usize = 256;

use crate::model::SIGNATURE_TOLERANCE;

/// The Standard Webhooks headers of a signed request, if all three are there.
fn signature_headers(headers: &HeaderMap) -> Option<(&str, &str, &str)> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    Some((
        get("webhook-id")?,
        get("webhook-timestamp")?,
        get("webhook-signature")?,
    ))
}

/// The signature headers, when they could belong to a valid request: an id of sane length, a
/// timestamp within the tolerance, and a `webhook-signature` of at most
/// [`MAX_SIGNATURES`](crate::signature::MAX_SIGNATURES) entries with at least one `v1,`
/// signature of the right length. Checked before the body is read: what fails here could
/// never verify.
fn plausible_signature(headers: &HeaderMap) -> Option<(&str, &str, &str)> {
    use crate::signature::{MAX_SIGNATURE_HEADER, MAX_SIGNATURES};
    let (id, timestamp, signature) = signature_headers(headers)?;
    if id.is_empty() || id.len() > MAX_WEBHOOK_ID {
        return None;
    }
    let sent_at = timestamp.trim().parse::<i64>().ok()?;
    if chrono::Utc::now().timestamp().abs_diff(sent_at) > SIGNATURE_TOLERANCE.as_secs() {
        return None;
    }
    if signature.len() > MAX_SIGNATURE_HEADER
        || signature.split_whitespace().count() > MAX_SIGNATURES
    {
        return None;
    }
    let well_formed = signature.split_whitespace().any(|part| {
        part.strip_prefix("v1,").is_some_and(|encoded| {
            base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .is_ok_and(|mac| mac.len() == 32)
        })
    });
    well_formed.then_some((id, timestamp, signature))
}

/// Whether the request is signed by `source`'s secret and fresh. (A replay is refused when
/// its id is claimed, after this.)
fn signature_holds(source: &SourceConfig, headers: &HeaderMap, body: &[u8]) -> bool {
    let Some(secret) = &source.signing_secret else {
        return true;
    };
    let Some((id, timestamp, signature)) = signature_headers(headers) else {
        return false;
    };
    if id.is_empty() || id.len() > MAX_WEBHOOK_ID {
        return false;
    }
    let Ok(sent_at) = timestamp.trim().parse::<i64>() else {
        return false;
    };
    let now = chrono::Utc::now().timestamp();
    if now.abs_diff(sent_at) > SIGNATURE_TOLERANCE.as_secs() {
        return false;
    }
    secret.verifies(id, timestamp, body, signature)
}

/// Sources that sign without a key. A source with both a key and a secret must present both.
fn signature_only(source: &&SourceConfig) -> bool {
    source.signing_secret.is_some() && source.api_key.is_none()
}

fn unauthorized(app: &App) -> Problem {
    crate::metrics::Metrics::inc(&app.metrics.auth_failures);
    Problem::unauthorized()
}

fn rate_limited(app: &App, source: &SourceConfig, retry_after: u64) -> Problem {
    crate::metrics::Metrics::inc(&app.metrics.rate_limited);
    let mut p = Problem::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate-limited",
        "Too many requests",
        format!(
            "source {} is over its rate limit; retry after {retry_after} s",
            source.name
        ),
    );
    p.retry_after = Some(retry_after);
    p
}

/// The nesting depth of JSON text, without parsing it (so a hostile document is refused
/// before it costs a parse).
pub fn json_depth(bytes: &[u8]) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Every string (value or key) longer than `max` characters, located.
fn long_strings(value: &Value, max: usize, pointer: &mut String, out: &mut Vec<Violation>) {
    if out.len() >= crate::schema::MAX_VIOLATIONS {
        return;
    }
    let escape = |key: &str| key.replace('~', "~0").replace('/', "~1");
    match value {
        Value::String(s) if s.len() > max && s.chars().count() > max => out.push(Violation {
            pointer: pointer.clone(),
            detail: format!(
                "a string of {} characters; at most {max} are accepted",
                s.chars().count()
            ),
        }),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = pointer.len();
                pointer.push_str(&format!("/{i}"));
                long_strings(item, max, pointer, out);
                pointer.truncate(len);
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                let len = pointer.len();
                pointer.push('/');
                pointer.push_str(&escape(key));
                if key.chars().count() > max {
                    out.push(Violation {
                        pointer: pointer.clone(),
                        detail: format!(
                            "a key of {} characters; at most {max} are accepted",
                            key.chars().count()
                        ),
                    });
                }
                long_strings(item, max, pointer, out);
                pointer.truncate(len);
            }
        }
        _ => {}
    }
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
    _: NoQuery,
    Client(client): Client,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match accept(&app, client, &headers, body).await {
        Ok(response) => response,
        Err(problem) => {
            if !matches!(problem.status, 401 | 429) && problem.status < 500 {
                crate::metrics::Metrics::inc(&app.metrics.rejected_4xx);
            }
            problem.into_response()
        }
    }
}

async fn accept(
    app: &Arc<App>,
    client: Option<IpAddr>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let limits = &app.server;
    // One generation of the config for the whole request, though a reload may come mid-way.
    let generation = app.live.current();
    let config = &generation.config;
    // A bearer key names the source now; a signature-only source is found once the body is in.
    let keyed = match auth::bearer(headers) {
        Some(_) => Some(auth::source(&config.sources, headers).ok_or_else(|| unauthorized(app))?),
        None => None,
    };
    // The sources this request could still authenticate as, from its headers alone.
    let candidates: Vec<&SourceConfig> = match keyed {
        Some(source) => vec![source],
        None => config.sources.iter().filter(signature_only).collect(),
    };
    if candidates.is_empty() {
        return Err(unauthorized(app));
    }
    if candidates.iter().all(|s| s.signing_secret.is_some()) {
        let (id, ..) = plausible_signature(headers).ok_or_else(|| unauthorized(app))?;
        // An id every candidate has used can only be a replay. The store is asked too, so a
        // replay after a restart is refused unread as well.
        let in_memory = candidates.iter().all(|s| app.guard.seen(&s.name, id));
        let stored = in_memory
            || app
                .store
                .webhook_id_seen(
                    candidates.iter().map(|s| s.name.clone()).collect(),
                    id.to_string(),
                )
                .await
                // The claim at commit still decides; an unreadable store only loses the
                // early refusal.
                .unwrap_or(false);
        if stored {
            return Err(unauthorized(app));
        }
    }
    if let Some(source) = keyed {
        app.guard
            .take(source)
            .map_err(|secs| rate_limited(app, source, secs))?;
    }
    if !is_json(headers) {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            "send the incident as application/json",
        ));
    }
    let (bytes, budget) = app
        .read_body(client, headers, body, limits.max_body_bytes)
        .await?;
    let source = match keyed {
        Some(source) if signature_holds(source, headers, &bytes) => source,
        Some(_) => return Err(unauthorized(app)),
        None => {
            let signed = config
                .sources
                .iter()
                .filter(signature_only)
                .find(|s| signature_holds(s, headers, &bytes))
                .ok_or_else(|| unauthorized(app))?;
            app.guard
                .take(signed)
                .map_err(|secs| rate_limited(app, signed, secs))?;
            signed
        }
    };
    // A signed request's id is claimed now, atomically: a replay, or a concurrent copy, is
    // refused. The claim is given back if the request fails after all.
    let claimed = match (&source.signing_secret, signature_headers(headers)) {
        (Some(_), Some((id, ..))) => {
            if !app.guard.claim(&source.name, id) {
                return Err(unauthorized(app));
            }
            Some(id.to_string())
        }
        _ => None,
    };
    let result = accept_document(app, source, claimed.clone(), bytes, budget).await;
    if let Err(p) = &result
        && !matches!(p.status, 401 | 429)
        && p.status < 500
    {
        app.metrics.incident_rejected(&source.name);
    }
    match (&result, &claimed) {
        // The store refused the id (a replay from before a restart): it stays claimed here.
        (Err(p), _) if p.status == 401 => {}
        (Err(_), Some(id)) => app.guard.release(&source.name, id),
        _ => {}
    }
    result
}

/// Limits, parse, validate and route a body: the CPU part of ingest, run on a blocking
/// thread (see [`accept_document`]). Returns what it made of the body ([`Checked`]).
fn check_document(
    app: &App,
    bytes: &[u8],
    tenants: Option<&TenantBinding>,
) -> Result<Checked, Problem> {
    let limits = &app.server;
    let generation = app.live.current();
    if json_depth(bytes) > limits.max_json_depth {
        return Err(unprocessable(vec![Violation {
            pointer: String::new(),
            detail: format!(
                "arrays and objects nest deeper than server.max_json_depth ({})",
                limits.max_json_depth
            ),
        }]));
    }
    let document: Value = serde_json::from_slice(bytes).map_err(Problem::malformed_json)?;

    let (mut incidents, is_batch) = match document {
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
        let mut pointer = item_pointer(is_batch, i);
        long_strings(
            incident,
            limits.max_string_chars,
            &mut pointer,
            &mut violations,
        );
    }
    for (i, incident) in incidents.iter().enumerate() {
        violations.extend(app.schema.violations(incident, &item_pointer(is_batch, i)));
        // The gateway's own incidents (its alerts, SLA alerts) have ids of their own: a
        // source that took one could turn a later alert into a duplicate, or make it fail.
        if let Some(id) = incident.get("incidentId").and_then(Value::as_str)
            && id.starts_with(crate::model::GATEWAY_ID_PREFIX)
        {
            violations.push(Violation {
                pointer: item_pointer(is_batch, i) + "/incidentId",
                detail: format!(
                    "ids starting {:?} are the gateway's own (its alerts)",
                    crate::model::GATEWAY_ID_PREFIX
                ),
            });
        }
    }
    if !violations.is_empty() {
        return Err(unprocessable(violations));
    }
    if let Some(tenants) = tenants {
        foreign_accounts(&incidents, is_batch, tenants)?;
    }
    // Findings are stored with the incident: routing, every render and every later reader
    // see the lists as they were when it arrived.
    let intel = &generation.config.threat_intel;
    for incident in &mut incidents {
        intel.enrich(incident);
    }
    let matched = incidents
        .iter()
        .filter(|i| i.pointer("/ti/matched") == Some(&Value::Bool(true)))
        .count();
    // Correlation keys are templates: they get a delivery's render budget (one that runs
    // over falls back to the incident id, as any key that fails to render does).
    let batch =
        crate::render::bounds::with_budget(generation.config.delivery.render_budget, || {
            incidents
                .iter()
                .map(|incident| prepare(&generation.connectors, &generation.renderer, incident))
                .collect()
        });
    Ok(Checked {
        batch,
        is_batch,
        matched,
    })
}

/// What [`check_document`] made of a body: the incidents to store, whether it was a batch,
/// and how many of them matched a threat-intel list (counted once they are stored).
struct Checked {
    batch: Vec<NewIncident>,
    is_batch: bool,
    matched: usize,
}

/// Where the `i`th incident of a body starts, as a JSON pointer: `/i` in a batch, the
/// root otherwise.
fn item_pointer(is_batch: bool, i: usize) -> String {
    if is_batch {
        format!("/{i}")
    } else {
        String::new()
    }
}

/// A source bound to tenants posts only for their accounts: any incident for another
/// account (or for none) refuses the whole request, before anything is stored.
fn foreign_accounts(
    incidents: &[Value],
    is_batch: bool,
    tenants: &TenantBinding,
) -> Result<(), Problem> {
    let foreign: Vec<Violation> = incidents
        .iter()
        .enumerate()
        .filter_map(|(i, incident)| {
            let account = incident.get("accountId").and_then(Value::as_i64);
            (!tenants.admits(account)).then(|| Violation {
                pointer: item_pointer(is_batch, i) + "/accountId",
                detail: match account {
                    Some(id) => format!("account {id} is not one of this source's tenants"),
                    None => "names no account; this source posts only for its tenants".into(),
                },
            })
        })
        .collect();
    if foreign.is_empty() {
        return Ok(());
    }
    Err(Problem::new(
        StatusCode::FORBIDDEN,
        "foreign-tenant",
        "Not this source's tenant",
        format!(
            "this source posts only for {}; nothing was stored",
            tenants.names().join(", ")
        ),
    )
    .with_violations(foreign))
}

/// An incident already stored for another account (or none) was posted again for this one:
/// its account is fixed, so the whole request is refused and nothing is stored.
fn account_changed(is_batch: bool, index: usize, incident_id: &str) -> Problem {
    Problem::new(
        StatusCode::FORBIDDEN,
        "foreign-tenant",
        "Incident belongs to another account",
        format!(
            "incident {incident_id:?} is stored for another account, and an incident's \
             accountId cannot change; nothing was stored"
        ),
    )
    .with_violations(vec![Violation {
        pointer: item_pointer(is_batch, index) + "/accountId",
        detail: "differs from the stored incident's".into(),
    }])
}

/// Checks an authenticated request's body off the async runtime (parsing, schema validation
/// and correlation-key templates cost CPU in proportion to the body: on a runtime thread
/// they would hold up every other connection), then stores it.
async fn accept_document(
    app: &Arc<App>,
    source: &SourceConfig,
    webhook_id: Option<String>,
    bytes: Bytes,
    budget: BodyReservation,
) -> Result<Response, Problem> {
    let Ok(permit) = app.checks.clone().acquire_owned().await else {
        return Err(Problem::unavailable("the gateway is shutting down"));
    };
    // The permits go with the work: a client that hangs up mid-check frees neither its core
    // nor its share of the body budget before the check is done with the bytes.
    let checked = {
        let app = app.clone();
        let tenants = source.tenants.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            check_document(&app, &bytes, tenants.as_ref()).map(|checked| (checked, budget))
        })
        .await
    };
    let (
        Checked {
            batch,
            is_batch,
            matched,
        },
        _budget,
    ) = checked.map_err(|e| {
        tracing::error!(error = %e, "checking an incident failed");
        Problem::unavailable("the incident could not be checked; nothing was accepted; try again")
    })??;
    let accounts: Vec<Option<i64>> = batch.iter().map(|i| i.account_id).collect();
    let ingested = app
        .store
        .ingest(source.name.clone(), webhook_id, batch)
        .await
        .map_err(|e| match e {
            StoreError::ForeignAccount { index, incident_id } => {
                account_changed(is_batch, index, &incident_id)
            }
            e => {
                app.metrics
                    .store_failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Problem::store_failed(
                    &e,
                    "the incident could not be stored; nothing was accepted; try again",
                )
            }
        })?;
    let outcomes = match ingested {
        crate::store::Ingested::Stored(outcomes) => outcomes,
        crate::store::Ingested::Replay => return Err(unauthorized(app)),
    };
    if outcomes.iter().any(|o| !o.deliveries.is_empty()) {
        app.wake.notify_one();
    }
    app.metrics
        .intel_matched
        .fetch_add(matched as u64, std::sync::atomic::Ordering::Relaxed);

    let tenant_names = app.live.current().config.tenant_names.clone();
    for (o, account) in outcomes.iter().zip(&accounts) {
        app.metrics.incident(
            &source.name,
            crate::metrics::tenant_label(&tenant_names, *account),
            match o.status {
                crate::store::IngestStatus::Accepted => crate::metrics::Ingested::Accepted,
                crate::store::IngestStatus::Duplicate => crate::metrics::Ingested::Duplicate,
                crate::store::IngestStatus::Updated => crate::metrics::Ingested::Updated,
            },
        );
    }
    for o in &outcomes {
        tracing::info!(incident = %o.incident_id, source = %source.name, status = ?o.status,
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
/// Lower-case hex, in one allocation.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

fn prepare(
    connectors: &[crate::connector::Connector],
    renderer: &crate::render::Renderer,
    incident: &Value,
) -> NewIncident {
    let body = incident.to_string();
    let body_hash = hex(&Sha256::digest(body.as_bytes()));
    NewIncident {
        incident_id: incident
            .get("incidentId")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        account_id: incident.get("accountId").and_then(Value::as_i64),
        update_time: incident.get("updateTime").and_then(Value::as_f64),
        body,
        body_hash,
        // One render context for every matching connector whose key needs one.
        routes: crate::ticket::routes_for(renderer, route::route(connectors, incident), incident),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stored body hashes keep their format (lower-case hex of SHA-256): a file written
    /// before still recognises repeats.
    #[test]
    fn body_hashes_are_lower_case_hex_sha256() {
        assert_eq!(
            hex(&Sha256::digest(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(hex(&[]), "");
    }
}
