//! Ticket: the life of a ticket in a target system (the domain; its HTTP side is
//! [`crate::callback`]).
//!
//! - Correlation: each connector groups incidents by a key (a template, `{{incidentId}}` by
//!   default); incidents with the same key share one ticket while it is open and within its
//!   `aggregate_for` window. The first delivery of a ticket renders `created`, later ones
//!   `updated` (the store keeps the tickets and orders their deliveries one at a time).
//! - Collection: with `collect_for`, a ticket's next delivery waits that long and the
//!   incidents of its key that arrive meanwhile go with it, listed in `collected` (the store
//!   keeps the window, so a restart inside it neither loses nor doubles the batch).
//! - Ticket ids: the `created` response names the ticket (`ticket_id`, `ticket_url` JSON
//!   pointers); later templates read it as `ticket.id` / `ticket.url`.
//! - Completion: the reason codes an incident may be completed with.

use serde_json::Value;

use crate::connector::Connector;
use crate::model::{Event, TicketFacts};
use crate::render::{DeliveryFacts, Renderer, TemplateContext};
use crate::store::Route;

/// The reason codes seed 000 lists for completing an incident.
pub const REASON_CODES: &[&str] = &[
    "further_action",
    "acceptable_risk",
    "compensating_control",
    "threat_not_valid",
    "not_concluded",
    "other",
];

/// Where an incident goes for one connector: its correlation key and window (the tenant's
/// own, on a connector that sets them in `per_tenant`). A key template that fails (strict
/// mode, a field this incident lacks) or renders blank falls back to the incident id: the
/// incident still gets its own ticket rather than none.
///
/// Tenants are kept apart: where the config names tenants, every key — the incident id it
/// falls back to included — is prefixed with its tenant ([`tenant_scope`]), so that no ticket,
/// PagerDuty `dedup_key` or Opsgenie `alias` ever holds two tenants' incidents, whatever
/// the incident's id or fields say.
pub fn route_for(renderer: &Renderer, connector: &Connector, incident: &Value) -> Route {
    route_with(renderer, connector, incident, &mut None)
}

/// [`route_for`] for each of `connectors`: a key that needs a render context shares one
/// context, built once, with the others.
pub fn routes_for<'a>(
    renderer: &Renderer,
    connectors: impl IntoIterator<Item = &'a Connector>,
    incident: &Value,
) -> Vec<Route> {
    let mut context = None;
    connectors
        .into_iter()
        .map(|c| route_with(renderer, c, incident, &mut context))
        .collect()
}

/// What prefixes an incident's correlation keys when the config names tenants: its tenant's
/// name (`tenants`: account → name), `account N` for an account no tenant has, `none` for an
/// incident without an account (tenant names are letters, digits, `-`, `_` and `.`, and not
/// `none`, so no prefix is another's); nothing when no tenant is configured (keys stay as they
/// were).
pub fn tenant_scope(
    tenants: &std::collections::BTreeMap<i64, String>,
    incident: &Value,
) -> Option<String> {
    if tenants.is_empty() {
        return None;
    }
    let Some(account) = crate::route::account_of(incident) else {
        return Some("none".to_string());
    };
    Some(
        tenants
            .get(&account)
            .cloned()
            .unwrap_or_else(|| format!("account {account}")),
    )
}

/// [`route_for`], with the render context of an earlier connector to reuse (only the
/// connector's facts change between connectors).
fn route_with(
    renderer: &Renderer,
    connector: &Connector,
    incident: &Value,
    context: &mut Option<(String, TemplateContext)>,
) -> Route {
    let incident_id = incident
        .get("incidentId")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let account = crate::route::account_of(incident);
    let rendered = match renderer.plain_correlation_key(connector, incident) {
        Some(key) => Ok(key),
        None => {
            let (received_at, context) = context.get_or_insert_with(|| {
                let received_at = crate::model::rfc3339(crate::model::now_ms());
                let context = TemplateContext::new(incident, &key_facts(connector, &received_at));
                (received_at, context)
            });
            context.set_facts(&key_facts(connector, received_at));
            renderer.correlation_key(connector, account, &*context)
        }
    };
    let key = match rendered {
        Ok(key) if !key.is_empty() => key,
        Ok(_) => incident_id.to_string(),
        Err(e) => {
            tracing::warn!(connector = %connector.name, incident = ?incident_id, error = %e,
                "correlation key did not render; the incident gets a ticket of its own");
            incident_id.to_string()
        }
    };
    let key = match tenant_scope(&connector.key_scopes, incident) {
        Some(scope) => format!("{scope}:{key}"),
        None => key,
    };
    Route {
        connector: connector.name.clone(),
        key,
        aggregate_for_ms: connector
            .aggregate_for(account)
            .map(|d| d.as_millis().min(i64::MAX as u128) as i64),
        sends_updated: connector.sends(Event::Updated),
        reopen_within_ms: connector
            .reopen_within
            .map(|d| d.as_millis().min(i64::MAX as u128) as i64),
        collect_for_ms: connector
            .collect_for(account)
            .map(|d| d.as_millis().min(i64::MAX as u128) as i64),
        sla: connector.sla_start(incident),
    }
}

/// What a key template sees beside the incident: a `created` delivery not yet made.
fn key_facts<'a>(connector: &'a Connector, received_at: &'a str) -> DeliveryFacts<'a> {
    DeliveryFacts {
        event: Event::Created,
        delivery_id: "",
        attempt: 0,
        connector,
        received_at,
        ticket: TicketFacts::default(),
        completion: None,
        collected: None,
    }
}

/// A `created` response without the ticket's id: dead, since the ticket may exist.
#[derive(Debug, thiserror::Error)]
#[error(
    "the created response (HTTP {status}) has no ticket id at {pointer}{}; \
     the ticket may exist in the target, so it is not retried: read the id in this attempt's response and \
     POST /v1/deliveries/{{id}}/resolve with it (or fix ticket_id and replay)",
    if *.not_json { ": the body is not JSON" } else { "" }
)]
pub struct NoTicketId {
    pub status: u16,
    pub pointer: String,
    pub not_json: bool,
}

/// The ticket id (and link) in a `created` response, by the connector's JSON pointers.
/// `Ok(None)` when the connector does not track ids.
pub fn ticket_from_response(
    connector: &Connector,
    status: u16,
    body: &str,
) -> Result<Option<(String, Option<String>)>, NoTicketId> {
    let Some(id_pointer) = &connector.ticket_id else {
        return Ok(None);
    };
    let missing = |not_json| NoTicketId {
        status,
        pointer: id_pointer.clone(),
        not_json,
    };
    let json: Value = serde_json::from_str(body).map_err(|_| missing(true))?;
    let id = text_at(&json, id_pointer).ok_or_else(|| missing(false))?;
    let url = connector
        .ticket_url
        .as_ref()
        .and_then(|p| text_at(&json, p));
    Ok(Some((id, url)))
}

/// The id or link at `pointer`: a non-empty string, or a number as text.
pub fn text_at(doc: &Value, pointer: &str) -> Option<String> {
    match doc.pointer(pointer)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}
