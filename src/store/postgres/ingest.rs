//! Incidents in, on PostgreSQL: the webhook-id claim, the duplicate rule under the incident's
//! lock, a version stored, and its tickets and deliveries ([`super::tickets`],
//! [`super::queue`]).

use async_trait::async_trait;
use deadpool_postgres::Transaction;

use super::{Postgres, execute, lock_incident, query_opt, queue, tickets};
use crate::model::{Event, now_ms};
use crate::store::rules::{
    StoredIncident, collection_due, needs_history, order_key, replay_window_ms, same_account,
    version_status,
};
use crate::store::{
    DeliveryRef, Ingest, IngestOutcome, IngestStatus, Ingested, NewIncident, StoreError,
};

/// The longest the advisory replay lookup may take before it answers "not seen".
const SEEN_LOOKUP: std::time::Duration = std::time::Duration::from_millis(250);

/// Expired ids deleted per claim (as on SQLite).
const PRUNE_PER_CLAIM: i64 = 64;

#[async_trait]
impl Ingest for Postgres {
    async fn ingest(
        &self,
        source: String,
        webhook_id: Option<String>,
        batch: Vec<NewIncident>,
    ) -> Result<Ingested, StoreError> {
        transaction!(self, |tx| {
            ingest(&tx, &source, webhook_id.as_deref(), &batch, now_ms()).await
        })
    }

    async fn webhook_id_seen(
        &self,
        sources: Vec<String>,
        webhook_id: String,
    ) -> Result<bool, StoreError> {
        if sources.is_empty() {
            return Ok(false);
        }
        let since = now_ms().saturating_sub(replay_window_ms());
        // Asked before the sender is authenticated: never waits for a busy pool or a slow
        // database (the claim in `ingest` is what decides).
        let lookup = async {
            let client = self.pool.get().await?;
            let statement = client
                .prepare_cached(
                    "SELECT COUNT(*) FROM seen_webhooks
                     WHERE source = ANY($1) AND webhook_id = $2 AND seen_ms >= $3",
                )
                .await?;
            let seen: i64 = client
                .query_one(&statement, &[&sources, &webhook_id, &since])
                .await?
                .try_get(0)?;
            Ok::<i64, StoreError>(seen)
        };
        let Ok(seen) = tokio::time::timeout(SEEN_LOOKUP, lookup).await else {
            return Ok(false);
        };
        let seen = seen?;
        let mut distinct = sources;
        distinct.sort();
        distinct.dedup();
        Ok(usize::try_from(seen).unwrap_or(0) == distinct.len())
    }
}

/// [`Ingest::ingest`] at `now`, in the caller's transaction.
pub(super) async fn ingest(
    tx: &Transaction<'_>,
    source: &str,
    webhook_id: Option<&str>,
    batch: &[NewIncident],
    now: i64,
) -> Result<Ingested, StoreError> {
    if let Some(id) = webhook_id
        && !claim_webhook_id(tx, source, id, now).await?
    {
        return Ok(Ingested::Replay);
    }
    let mut outcomes = Vec::with_capacity(batch.len());
    for (index, inc) in batch.iter().enumerate() {
        outcomes.push(ingest_one(tx, source, index, inc, now).await?);
    }
    Ok(Ingested::Stored(outcomes))
}

/// Claims (`source`, `id`): `false` when it is held and not expired. The primary key decides:
/// a second gateway inserting the same id waits for the first to commit, then finds it held.
async fn claim_webhook_id(
    tx: &Transaction<'_>,
    source: &str,
    id: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let expired_before = now.saturating_sub(replay_window_ms());
    // Bounded, through the index, and never waiting on another gateway's prune.
    execute(
        tx,
        "DELETE FROM seen_webhooks WHERE ctid IN
            (SELECT ctid FROM seen_webhooks WHERE seen_ms < $1 ORDER BY seen_ms LIMIT $2
             FOR UPDATE SKIP LOCKED)",
        &[&expired_before, &PRUNE_PER_CLAIM],
    )
    .await?;
    let claimed = execute(
        tx,
        "INSERT INTO seen_webhooks (source, webhook_id, seen_ms) VALUES ($1, $2, $3)
         ON CONFLICT (source, webhook_id) DO UPDATE SET seen_ms = excluded.seen_ms
         WHERE seen_webhooks.seen_ms < $4",
        &[&source, &id, &now, &expired_before],
    )
    .await?;
    Ok(claimed == 1)
}

async fn stored_incident(
    tx: &Transaction<'_>,
    incident_id: &str,
) -> Result<Option<StoredIncident>, StoreError> {
    let Some(row) = query_opt(
        tx,
        "SELECT account_id, update_time, body_hash, status FROM incidents WHERE incident_id = $1",
        &[&incident_id],
    )
    .await?
    else {
        return Ok(None);
    };
    Ok(Some(StoredIncident {
        account_id: row.try_get("account_id")?,
        update_time: row.try_get("update_time")?,
        body_hash: row.try_get("body_hash")?,
        status: row.try_get("status")?,
    }))
}

/// Whether `inc`'s body is one of its incident's earlier versions.
async fn seen_before(tx: &Transaction<'_>, inc: &NewIncident) -> Result<bool, StoreError> {
    Ok(query_opt(
        tx,
        "SELECT 1 FROM incident_versions WHERE incident_id = $1 AND body = $2 LIMIT 1",
        &[&inc.incident_id, &inc.body],
    )
    .await?
    .is_some())
}

/// Stores `inc` as its incident's current version (creating the incident if it is new);
/// returns the version's id.
async fn store_version(
    tx: &Transaction<'_>,
    source: &str,
    inc: &NewIncident,
    is_new: bool,
    now: i64,
) -> Result<i64, StoreError> {
    // The version and the incident's row in one statement (one round trip, not two).
    let row = if is_new {
        query_opt(
            tx,
            "WITH v AS (INSERT INTO incident_versions (incident_id, body, received_ms)
                        VALUES ($1, $2, $6) RETURNING version_id)
             INSERT INTO incidents (incident_id, source, update_time, body_hash, version_id,
                                    versions, status, status_change_ms, received_ms, updated_ms,
                                    account_id)
             SELECT $1, $5, $3, $4, v.version_id, 1, 'open', $6, $6, $6, $7 FROM v
             RETURNING version_id",
            &[
                &inc.incident_id,
                &inc.body,
                &inc.update_time,
                &inc.body_hash,
                &source,
                &now,
                &inc.account_id,
            ],
        )
        .await?
    } else {
        query_opt(
            tx,
            "WITH v AS (INSERT INTO incident_versions (incident_id, body, received_ms)
                        VALUES ($1, $2, $5) RETURNING version_id)
             UPDATE incidents SET update_time = $3, body_hash = $4, version_id = v.version_id,
                    versions = versions + 1, updated_ms = $5
             FROM v WHERE incident_id = $1
             RETURNING incidents.version_id",
            &[
                &inc.incident_id,
                &inc.body,
                &inc.update_time,
                &inc.body_hash,
                &now,
            ],
        )
        .await?
    };
    let version_id: i64 = row
        .ok_or(StoreError::Missing("incident version"))?
        .try_get(0)?;
    Ok(version_id)
}

async fn ingest_one(
    tx: &Transaction<'_>,
    source: &str,
    index: usize,
    inc: &NewIncident,
    now: i64,
) -> Result<IngestOutcome, StoreError> {
    // Another gateway storing the same incident waits here, then sees this one's version.
    lock_incident(tx, &inc.incident_id).await?;
    let stored = stored_incident(tx, &inc.incident_id).await?;
    same_account(stored.as_ref(), inc, index)?;
    let seen = needs_history(stored.as_ref(), inc) && seen_before(tx, inc).await?;
    let status = version_status(stored.as_ref(), inc, || Ok(seen))?;
    if status == IngestStatus::Duplicate {
        return Ok(IngestOutcome {
            incident_id: inc.incident_id.clone(),
            status,
            deliveries: vec![],
        });
    }
    let version_id = store_version(tx, source, inc, stored.is_none(), now).await?;
    let completed = stored.as_ref().is_some_and(StoredIncident::completed);
    let routes = if completed { &[][..] } else { &inc.routes[..] };
    let mut deliveries = Vec::with_capacity(routes.len());
    for route in routes {
        let attached = tickets::attach_to_ticket(
            tx,
            &inc.incident_id,
            inc.account_id,
            stored.is_none(),
            route,
            now,
        )
        .await?;
        // An open collection window of the ticket takes the incident instead of a delivery of
        // its own, in this transaction: a 202 means it is in the batch.
        if route.collect_for_ms.is_some() {
            let line = order_key(&inc.incident_id, Some(attached.ticket_seq));
            if let Some(window) = queue::open_collection(tx, &route.connector, &line).await? {
                queue::collect(tx, &window, &inc.incident_id, version_id, now).await?;
                deliveries.push(DeliveryRef {
                    id: window.delivery_id,
                    connector: route.connector.clone(),
                    event: Event::parse(&window.event).unwrap_or(attached.event),
                });
                continue;
            }
        }
        if attached.event == Event::Updated && !route.sends_updated {
            continue;
        }
        let id = queue::insert_delivery(
            tx,
            &queue::NewDelivery {
                incident_id: &inc.incident_id,
                version_id,
                connector: &route.connector,
                event: attached.event,
                ticket_seq: Some(attached.ticket_seq),
                purpose: attached.purpose,
                collect_until: route.collect_for_ms.map(|ms| collection_due(now, ms)),
            },
            now,
        )
        .await?;
        deliveries.push(DeliveryRef {
            id,
            connector: route.connector.clone(),
            event: attached.event,
        });
    }
    Ok(IngestOutcome {
        incident_id: inc.incident_id.clone(),
        status,
        deliveries,
    })
}
