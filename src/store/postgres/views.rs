//! What the admin API shows, read from PostgreSQL: an incident with its tickets and deliveries
//! per connector, and deliveries (with what each waits for, and its attempts).

use std::collections::BTreeMap;

use async_trait::async_trait;
use deadpool_postgres::Transaction;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::{Postgres, completion_of, count, query, query_opt};
use crate::model::rfc3339;
use crate::store::listing::{self, Arg};
use crate::store::{
    AttemptView, ConnectorView, DeliveryFilter, DeliveryKey, DeliveryListing, DeliveryView,
    IncidentKey, IncidentListing, IncidentSummary, IncidentView, Page, StoreError, TicketView,
    Views,
};

#[async_trait]
impl Views for Postgres {
    async fn incident(&self, incident_id: String) -> Result<Option<IncidentView>, StoreError> {
        transaction!(self, |tx| incident_view(&tx, &incident_id).await)
    }

    async fn deliveries(&self, filter: DeliveryFilter) -> Result<Vec<DeliveryView>, StoreError> {
        let limit = filter.limit.clamp(1, 1000) as i64;
        transaction!(self, |tx| {
            query_deliveries(
                &tx,
                "WHERE ($1::text IS NULL OR d.status = $1) AND ($2::text IS NULL OR d.connector = $2)
                 ORDER BY d.seq LIMIT $3",
                &[&filter.status, &filter.connector, &limit],
                false,
            )
            .await
        })
    }

    async fn delivery(&self, delivery_id: String) -> Result<Option<DeliveryView>, StoreError> {
        transaction!(self, |tx| {
            Ok(
                query_deliveries(&tx, "WHERE d.delivery_id = $1", &[&delivery_id], true)
                    .await?
                    .into_iter()
                    .next(),
            )
        })
    }

    async fn account_of(&self, incident_id: String) -> Result<Option<Option<i64>>, StoreError> {
        transaction!(self, |tx| {
            query_opt(
                &tx,
                "SELECT account_id FROM incidents WHERE incident_id = $1",
                &[&incident_id],
            )
            .await?
            .map(|row| row.try_get::<_, Option<i64>>(0))
            .transpose()
            .map_err(StoreError::from)
        })
    }

    async fn list_deliveries(
        &self,
        listing: DeliveryListing,
    ) -> Result<Page<DeliveryView, DeliveryKey>, StoreError> {
        let clause = listing::deliveries(&listing, '$');
        let args = bound(&clause.args);
        let size = listing::page_size(listing.limit);
        transaction!(self, |tx| {
            let mut items = query_deliveries(&tx, &clause.sql, &refs(&args), false).await?;
            let more = items.len() > size;
            items.truncate(size);
            let next = match items.last() {
                Some(last) if more => {
                    let row = query(
                        &tx,
                        "SELECT created_ms, seq FROM deliveries WHERE delivery_id = $1",
                        &[&last.id],
                    )
                    .await?;
                    let row = row
                        .first()
                        .ok_or(StoreError::Missing("a listed delivery"))?;
                    Some(DeliveryKey {
                        created_ms: row.try_get("created_ms")?,
                        seq: row.try_get("seq")?,
                    })
                }
                _ => None,
            };
            Ok(Page { items, next })
        })
    }

    async fn list_incidents(
        &self,
        listing: IncidentListing,
    ) -> Result<Page<IncidentSummary, IncidentKey>, StoreError> {
        let clause = listing::incidents(&listing, '$');
        let args = bound(&clause.args);
        let sql = format!(
            "SELECT i.incident_id, i.source, i.status, i.status_change_ms, i.received_ms,
                    i.updated_ms, i.versions, {} AS summary
             FROM incidents i JOIN incident_versions v ON v.version_id = i.version_id {}",
            listing::incident_summary('$'),
            clause.sql
        );
        transaction!(self, |tx| {
            let mut keyed = Vec::new();
            for r in query(&tx, &sql, &refs(&args)).await? {
                let incident_id: String = r.try_get("incident_id")?;
                let received_ms: i64 = r.try_get("received_ms")?;
                keyed.push((
                    IncidentSummary {
                        incident_id: incident_id.clone(),
                        source: r.try_get("source")?,
                        status: r.try_get("status")?,
                        status_change_time: rfc3339(r.try_get("status_change_ms")?),
                        received_at: rfc3339(received_ms),
                        updated_at: rfc3339(r.try_get("updated_ms")?),
                        versions: count(&r, "versions")?,
                        summary: r.try_get("summary")?,
                    },
                    IncidentKey {
                        received_ms,
                        incident_id,
                    },
                ));
            }
            Ok(listing::page(keyed, listing.limit))
        })
    }
}

/// A list's values, as PostgreSQL binds them.
fn bound(args: &[Arg]) -> Vec<Box<dyn ToSql + Sync + Send>> {
    args.iter()
        .map(|a| -> Box<dyn ToSql + Sync + Send> {
            match a {
                Arg::Text(s) => Box::new(s.clone()),
                Arg::Int(n) => Box::new(*n),
            }
        })
        .collect()
}

fn refs(args: &[Box<dyn ToSql + Sync + Send>]) -> Vec<&(dyn ToSql + Sync)> {
    args.iter()
        .map(|a| a.as_ref() as &(dyn ToSql + Sync))
        .collect()
}

fn ticket_view(r: &Row) -> Result<(String, TicketView), StoreError> {
    Ok((
        r.try_get("connector")?,
        TicketView {
            correlation_key: r.try_get("correlation_key")?,
            ticket_id: r.try_get("ticket_id")?,
            ticket_url: r.try_get("ticket_url")?,
            status: r.try_get("status")?,
            opened_at: rfc3339(r.try_get("opened_ms")?),
            aggregates_until: r.try_get::<_, Option<i64>>("window_until_ms")?.map(rfc3339),
            incidents: u32::try_from(r.try_get::<_, i64>("incidents")?).unwrap_or(0),
        },
    ))
}

fn delivery_view(r: &Row) -> Result<DeliveryView, StoreError> {
    let status: String = r.try_get("status")?;
    let next: i64 = r.try_get("next_attempt_ms")?;
    Ok(DeliveryView {
        id: r.try_get("delivery_id")?,
        incident_id: r.try_get("incident_id")?,
        connector: r.try_get("connector")?,
        event: r.try_get("event")?,
        next_attempt_at: (status == "pending").then(|| rfc3339(next)),
        status,
        attempt_count: count(r, "attempts")?,
        created_at: rfc3339(r.try_get("created_ms")?),
        updated_at: rfc3339(r.try_get("updated_ms")?),
        last_error: r.try_get("last_error")?,
        waiting_for: r.try_get("waiting_for")?,
        attempts: None,
    })
}

fn attempt_view(r: &Row) -> Result<AttemptView, StoreError> {
    Ok(AttemptView {
        attempt: count(r, "attempt")?,
        started_at: rfc3339(r.try_get("started_ms")?),
        latency_ms: r.try_get("latency_ms")?,
        status_code: r
            .try_get::<_, Option<i32>>("status_code")?
            .and_then(|c| u16::try_from(c).ok()),
        error: r.try_get("error")?,
        response_body: r.try_get("response_body")?,
        outcome: r.try_get("outcome")?,
        lookup: r.try_get("lookup")?,
    })
}

/// [`Views::incident`].
async fn incident_view(
    tx: &Transaction<'_>,
    incident_id: &str,
) -> Result<Option<IncidentView>, StoreError> {
    let Some(row) = query_opt(
        tx,
        concat!(incident_view_select!(), " WHERE i.incident_id = $1"),
        &[&incident_id],
    )
    .await?
    else {
        return Ok(None);
    };
    let deliveries = query_deliveries(
        tx,
        // Its own deliveries, and those of others' that carry it (a collection window's).
        "WHERE d.incident_id = $1
            OR d.seq IN (SELECT delivery_seq FROM collected_incidents WHERE incident_id = $1)
         ORDER BY d.seq",
        &[&incident_id],
        true,
    )
    .await?;
    let mut connectors = BTreeMap::<String, ConnectorView>::new();
    for r in query(
        tx,
        concat!(
            ticket_views_select!(),
            " WHERE ti.incident_id = $1 ORDER BY t.ticket_seq"
        ),
        &[&incident_id],
    )
    .await?
    {
        let (connector, ticket) = ticket_view(&r)?;
        connectors
            .entry(connector)
            .or_default()
            .tickets
            .push(ticket);
    }
    for d in deliveries {
        connectors
            .entry(d.connector.clone())
            .or_default()
            .deliveries
            .push(d);
    }
    let body: String = row.try_get("body")?;
    Ok(Some(IncidentView {
        status_change_time: rfc3339(row.try_get("status_change_ms")?),
        received_at: rfc3339(row.try_get("received_ms")?),
        updated_at: rfc3339(row.try_get("updated_ms")?),
        incident: serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
        incident_id: row.try_get("incident_id")?,
        source: row.try_get("source")?,
        status: row.try_get("status")?,
        versions: count(&row, "versions")?,
        account_id: row.try_get("account_id")?,
        completion: completion_of(tx, incident_id).await?,
        connectors,
    }))
}

/// Deliveries matching `clause` (over `deliveries d`, binding `args`), each with what it
/// waits for (the ordering rule) and, if asked, its attempts.
async fn query_deliveries(
    tx: &Transaction<'_>,
    clause: &str,
    args: &[&(dyn ToSql + Sync)],
    with_attempts: bool,
) -> Result<Vec<DeliveryView>, StoreError> {
    let sql = format!("{} {clause}", delivery_views_select!());
    let mut out = query(tx, &sql, args)
        .await?
        .iter()
        .map(delivery_view)
        .collect::<Result<Vec<_>, _>>()?;
    if with_attempts {
        for d in &mut out {
            d.attempts = Some(
                query(
                    tx,
                    "SELECT attempt, started_ms, latency_ms, status_code, error, response_body,
                            outcome, lookup
                     FROM attempts WHERE delivery_id = $1 ORDER BY attempt",
                    &[&d.id],
                )
                .await?
                .iter()
                .map(attempt_view)
                .collect::<Result<Vec<_>, _>>()?,
            );
        }
    }
    Ok(out)
}
