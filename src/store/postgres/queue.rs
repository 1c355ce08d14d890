//! The delivery queue on PostgreSQL, shared by every gateway on the database: the same
//! `ready`/`due_ms` design as on SQLite (only a line's head is ready; a lease pushes its
//! `due_ms` to the lease's end, so an expired lease is due again by itself), leased with
//! `FOR UPDATE SKIP LOCKED` so gateways never wait on each other's picks, and every change of
//! a line's head made under the line's lock.

use std::collections::HashMap;

use async_trait::async_trait;
use deadpool_postgres::Transaction;

use super::{
    Postgres, completion, count, execute, instance, int, lock_line, query, query_opt, ticket_facts,
};
use crate::model::{DeliveryStatus, Event, now_ms};
use crate::store::rules::{UNREADABLE_DELIVERY, order_key, transition};
use crate::store::{Attempted, Lease, LeasedDelivery, Queue, ReplayOutcome, StoreError};

#[async_trait]
impl Queue for Postgres {
    /// Other gateways may be running: their leases are theirs. The leases of processes that
    /// died (an earlier run of this one, say) are recovered, as on SQLite; this process goes
    /// on doing so for any that die while it runs ([`Queue::lease_due`]).
    async fn recover(&self, tracked: Vec<String>) -> Result<usize, StoreError> {
        if let Ok(mut mine) = self.tracked.lock() {
            mine.clone_from(&tracked);
        }
        transaction!(self, |tx| {
            instance::recover_dead(&tx, &self.instance, &tracked, now_ms()).await
        })
    }

    async fn lease_due(
        &self,
        limit: usize,
        lease_ms: i64,
        busy: Vec<String>,
    ) -> Result<Vec<LeasedDelivery>, StoreError> {
        if self.sweep_due() {
            let tracked = self.tracked.lock().map(|t| t.clone()).unwrap_or_default();
            transaction!(self, |tx| {
                instance::recover_dead(&tx, &self.instance, &tracked, now_ms()).await
            })?;
        }
        transaction!(self, |tx| {
            lease_due(&tx, limit, lease_ms, &busy, &self.instance.id, now_ms()).await
        })
    }

    async fn record_attempt(&self, attempt: Attempted) -> Result<bool, StoreError> {
        transaction!(self, |tx| record_attempt(&tx, &attempt, now_ms()).await)
    }

    async fn next_due_ms(&self, busy: Vec<String>) -> Result<Option<i64>, StoreError> {
        transaction!(self, |tx| next_due_ms(&tx, &busy).await)
    }

    async fn release(&self, leases: Vec<(String, String)>) -> Result<(), StoreError> {
        let (ids, tokens): (Vec<String>, Vec<String>) = leases.into_iter().unzip();
        transaction!(self, |tx| {
            execute(
                &tx,
                "UPDATE deliveries d SET lease_until_ms = 0, lease_token = NULL, due_ms = d.next_attempt_ms
                 FROM unnest($1::text[], $2::text[]) AS l(delivery_id, token)
                 WHERE d.delivery_id = l.delivery_id AND d.lease_token = l.token
                   AND d.status = 'pending'",
                &[&ids, &tokens],
            )
            .await
            .map(drop)
        })
    }

    async fn extend_lease(&self, lease: Lease, lease_ms: i64) -> Result<bool, StoreError> {
        transaction!(self, |tx| {
            let until = now_ms().saturating_add(lease_ms);
            let changed = execute(
                &tx,
                "UPDATE deliveries SET lease_until_ms = $3, due_ms = $3
                 WHERE delivery_id = $1 AND lease_token = $2 AND status = 'pending'",
                &[&lease.delivery_id, &lease.token, &until],
            )
            .await?;
            Ok(changed == 1)
        })
    }

    async fn replay(&self, delivery_id: String) -> Result<ReplayOutcome, StoreError> {
        transaction!(self, |tx| replay(&tx, &delivery_id, now_ms()).await)
    }
}

/// The connectors with a head of a line ready (a loose index scan of `deliveries_ready`).
pub(super) const READY_CONNECTORS: &str = "WITH RECURSIVE c(name) AS (
             (SELECT connector FROM deliveries WHERE ready ORDER BY connector LIMIT 1)
             UNION ALL
             SELECT (SELECT connector FROM deliveries WHERE ready AND connector > c.name
                     ORDER BY connector LIMIT 1)
             FROM c WHERE c.name IS NOT NULL)
         SELECT name FROM c WHERE name IS NOT NULL";

/// A connector's due heads of their lines, earliest first.
pub(super) const DUE_HEADS: &str = "SELECT seq, due_ms FROM deliveries
             WHERE ready AND connector = $1 AND due_ms <= $2
             ORDER BY due_ms, seq LIMIT $3";

/// When a connector's first head of its line falls due.
pub(super) const NEXT_DUE: &str =
    "SELECT MIN(due_ms) FROM deliveries WHERE ready AND connector = $1";

/// Makes a line's first blocking delivery ready, if it is pending.
pub(super) const PROMOTE_HEAD: &str = concat!(
    "UPDATE deliveries SET ready = TRUE
             WHERE seq = (SELECT seq FROM deliveries WHERE connector = $1 AND order_key = $2 AND ",
    blocking!(),
    " ORDER BY seq LIMIT 1)
               AND status = 'pending' AND NOT ready"
);

/// A new delivery, ready when nothing of its line holds it back.
pub(super) const INSERT_DELIVERY: &str = concat!(
            "INSERT INTO deliveries (delivery_id, incident_id, version_id, connector, event, status,
                                     order_key, ticket_seq, budget_since_ms, next_attempt_ms, due_ms,
                                     created_ms, updated_ms, ready)
             VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7, $8, $8, $8, $8, $8,
                     NOT EXISTS (SELECT 1 FROM deliveries e WHERE e.connector = $4 AND e.order_key = $6
                                 AND ",
            blocking!(),
            "))"
        );

/// A delivery to queue.
pub(super) struct NewDelivery<'a> {
    pub incident_id: &'a str,
    pub version_id: i64,
    pub connector: &'a str,
    pub event: Event,
    pub ticket_seq: Option<i64>,
}

/// Queues one delivery, due at `now`, ready when nothing of its line holds it back; returns
/// its id. Under the line's lock: a head finishing on another gateway at the same time either
/// sees this delivery (and makes it ready) or is seen finished by it.
pub(super) async fn insert_delivery(
    tx: &Transaction<'_>,
    d: &NewDelivery<'_>,
    now: i64,
) -> Result<String, StoreError> {
    let id = format!("msg_{}", uuid::Uuid::now_v7().simple());
    let order_key = order_key(d.incident_id, d.ticket_seq);
    lock_line(tx, d.connector, &order_key).await?;
    execute(
        tx,
        INSERT_DELIVERY,
        &[
            &id,
            &d.incident_id,
            &d.version_id,
            &d.connector,
            &d.event.as_str(),
            &order_key,
            &d.ticket_seq,
            &now,
        ],
    )
    .await?;
    Ok(id)
}

/// After a delivery of a line stopped holding it (delivered, or dead and not a `created`),
/// its new head may go: it becomes ready, if it is pending.
pub(super) async fn promote_head(
    tx: &Transaction<'_>,
    connector: &str,
    order_key: &str,
) -> Result<(), StoreError> {
    lock_line(tx, connector, order_key).await?;
    execute(tx, PROMOTE_HEAD, &[&connector, &order_key]).await?;
    Ok(())
}

/// The connectors with a head of a line ready: a loose index scan of `deliveries_ready`, one
/// seek per connector.
async fn ready_connectors(tx: &Transaction<'_>) -> Result<Vec<String>, StoreError> {
    query(tx, READY_CONNECTORS, &[])
        .await?
        .iter()
        .map(|r| Ok(r.try_get(0)?))
        .collect()
}

/// A head of its line that is due, before it is leased.
struct Due {
    seq: i64,
    due_ms: i64,
}

/// [`Queue::lease_due`] at `now`, for the process `holder`: each connector's due heads
/// (outside `busy`) read from `deliveries_ready` in due order, the earliest `limit` of them
/// taken under row locks that skip what another gateway is taking, and leased in one
/// statement.
async fn lease_due(
    tx: &Transaction<'_>,
    limit: usize,
    lease_ms: i64,
    busy: &[String],
    holder: &str,
    now: i64,
) -> Result<Vec<LeasedDelivery>, StoreError> {
    let cap = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut candidates: Vec<Due> = Vec::new();
    for connector in ready_connectors(tx).await? {
        if busy.contains(&connector) {
            continue;
        }
        for r in query(tx, DUE_HEADS, &[&connector, &now, &cap]).await? {
            candidates.push(Due {
                seq: r.try_get("seq")?,
                due_ms: r.try_get("due_ms")?,
            });
        }
    }
    candidates.sort_by_key(|d| (d.due_ms, d.seq));
    candidates.truncate(limit);
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let seqs: Vec<i64> = candidates.iter().map(|d| d.seq).collect();
    let until = now.saturating_add(lease_ms);
    let taken = query(
        tx,
        "WITH picked AS (
             SELECT seq FROM deliveries
             WHERE seq = ANY($1) AND ready AND due_ms <= $2
             FOR UPDATE SKIP LOCKED)
         UPDATE deliveries d
            SET lease_until_ms = $3, due_ms = $3, lease_holder = $4,
                lease_token = replace(gen_random_uuid()::text, '-', '')
         FROM picked WHERE d.seq = picked.seq
         RETURNING d.seq, d.delivery_id, d.incident_id, d.version_id, d.connector, d.event,
                   d.attempts, d.budget_attempts, d.budget_since_ms, d.ticket_seq, d.order_key,
                   d.lease_token",
        &[&seqs, &now, &until, &holder],
    )
    .await?;
    let order: HashMap<i64, usize> = seqs.iter().enumerate().map(|(i, s)| (*s, i)).collect();
    let mut taken = taken;
    taken.sort_by_key(|r| {
        r.try_get::<_, i64>("seq")
            .ok()
            .and_then(|s| order.get(&s).copied())
    });

    let version_ids: Vec<i64> = taken
        .iter()
        .map(|r| r.try_get("version_id"))
        .collect::<Result<_, _>>()?;
    let ticket_seqs: Vec<i64> = taken
        .iter()
        .filter_map(|r| r.try_get::<_, Option<i64>>("ticket_seq").ok().flatten())
        .collect();
    let incident_ids: Vec<String> = taken
        .iter()
        .map(|r| r.try_get("incident_id"))
        .collect::<Result<_, _>>()?;
    let mut versions = HashMap::new();
    for r in query(
        tx,
        "SELECT version_id, body, received_ms FROM incident_versions WHERE version_id = ANY($1)",
        &[&version_ids],
    )
    .await?
    {
        let id: i64 = r.try_get("version_id")?;
        versions.insert(
            id,
            (
                r.try_get::<_, String>("body")?,
                r.try_get::<_, i64>("received_ms")?,
            ),
        );
    }
    let mut tickets = HashMap::new();
    for r in query(
        tx,
        "SELECT ticket_seq, correlation_key, ticket_id, ticket_url FROM tickets
         WHERE ticket_seq = ANY($1)",
        &[&ticket_seqs],
    )
    .await?
    {
        tickets.insert(r.try_get::<_, i64>("ticket_seq")?, ticket_facts(&r)?);
    }
    let mut completions = HashMap::new();
    for r in query(
        tx,
        "SELECT incident_id, reason_code, notes, status_change_ms FROM incidents
         WHERE incident_id = ANY($1) AND status = 'completed'",
        &[&incident_ids],
    )
    .await?
    {
        completions.insert(r.try_get::<_, String>("incident_id")?, completion(&r)?);
    }

    let mut leased = Vec::with_capacity(taken.len());
    for r in taken {
        let seq: i64 = r.try_get("seq")?;
        let connector: String = r.try_get("connector")?;
        let order_key: String = r.try_get("order_key")?;
        let event = Event::parse(r.try_get("event")?);
        // Deliveries of one version share it (one incident, several connectors).
        let version = versions.get(&r.try_get::<_, i64>("version_id")?).cloned();
        let (Some((body, received_ms)), Some(event)) = (version, event) else {
            // A row this version cannot read must not stop every other delivery.
            execute(
                tx,
                "UPDATE deliveries SET status = 'dead', ready = FALSE, lease_until_ms = 0,
                        lease_token = NULL, updated_ms = $2, last_error = $3
                 WHERE seq = $1",
                &[&seq, &now, &UNREADABLE_DELIVERY],
            )
            .await?;
            promote_head(tx, &connector, &order_key).await?;
            continue;
        };
        let incident_id: String = r.try_get("incident_id")?;
        let ticket_seq: Option<i64> = r.try_get("ticket_seq")?;
        leased.push(LeasedDelivery {
            id: r.try_get("delivery_id")?,
            lease_token: r
                .try_get::<_, Option<String>>("lease_token")?
                .unwrap_or_default(),
            completion: completions.get(&incident_id).cloned(),
            incident_id,
            connector,
            event,
            attempts: count(&r, "attempts")?,
            budget_attempts: count(&r, "budget_attempts")?,
            budget_since_ms: r.try_get("budget_since_ms")?,
            incident_body: body,
            received_at_ms: received_ms,
            ticket: ticket_seq
                .and_then(|t| tickets.get(&t).cloned())
                .unwrap_or_default(),
            ticket_seq,
        });
    }
    Ok(leased)
}

/// [`Queue::record_attempt`] at `now`: `false` (and nothing written) unless the lease is still
/// the delivery's. The ticket is written before the line moves on (ticket, then line: the
/// order every write takes them in).
async fn record_attempt(
    tx: &Transaction<'_>,
    attempt: &Attempted,
    now: i64,
) -> Result<bool, StoreError> {
    let Attempted {
        lease,
        record,
        next,
        ticket,
    } = attempt;
    let to = transition(record, next);
    let line = query_opt(
        tx,
        "UPDATE deliveries SET status = $3, attempts = $4, next_attempt_ms = $5, due_ms = $5,
                lease_until_ms = 0, lease_token = NULL, updated_ms = $6, last_error = $7,
                ready = ready AND $3 = 'pending'
         WHERE delivery_id = $1 AND lease_token = $2 AND status = 'pending'
         RETURNING connector, order_key",
        &[
            &lease.delivery_id,
            &lease.token,
            &to.status.as_str(),
            &int(record.attempt),
            &to.next_attempt_ms,
            &now,
            &to.last_error,
        ],
    )
    .await?;
    let Some(line) = line else {
        return Ok(false);
    };
    if let Some(t) = ticket {
        execute(
            tx,
            "UPDATE tickets SET ticket_id = $2, ticket_url = $3, updated_ms = $4 WHERE ticket_seq = $1",
            &[&t.ticket_seq, &t.id, &t.url, &now],
        )
        .await?;
    }
    // Delivered, or dead and not a `created` (a dead `created` still holds its ticket's
    // line): the next delivery of the line may go.
    if to.status != DeliveryStatus::Pending {
        let connector: String = line.try_get("connector")?;
        let order_key: String = line.try_get("order_key")?;
        promote_head(tx, &connector, &order_key).await?;
    }
    execute(
        tx,
        "INSERT INTO attempts (delivery_id, attempt, started_ms, latency_ms, status_code, error, response_body, outcome)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            &lease.delivery_id,
            &int(record.attempt),
            &record.started_at_ms,
            &record.latency_ms,
            &record.status_code.map(i32::from),
            &record.error,
            &record.response_body,
            &record.outcome.as_str(),
        ],
    )
    .await?;
    Ok(true)
}

/// [`Queue::next_due_ms`]: the earliest time a head of its line falls due, outside `busy`.
async fn next_due_ms(tx: &Transaction<'_>, busy: &[String]) -> Result<Option<i64>, StoreError> {
    let mut earliest: Option<i64> = None;
    for connector in ready_connectors(tx).await? {
        if busy.contains(&connector) {
            continue;
        }
        let due: Option<i64> = query_opt(tx, NEXT_DUE, &[&connector])
            .await?
            .map(|r| r.try_get(0))
            .transpose()?
            .flatten();
        earliest = match (earliest, due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    Ok(earliest)
}

/// [`Queue::replay`] at `now`.
async fn replay(
    tx: &Transaction<'_>,
    delivery_id: &str,
    now: i64,
) -> Result<ReplayOutcome, StoreError> {
    let Some(row) = query_opt(
        tx,
        "SELECT status FROM deliveries WHERE delivery_id = $1 FOR UPDATE",
        &[&delivery_id],
    )
    .await?
    else {
        return Ok(ReplayOutcome::NotFound);
    };
    let status: String = row.try_get("status")?;
    if status != "dead" {
        return Ok(ReplayOutcome::NotDead(status));
    }
    let line = query_opt(
        tx,
        "UPDATE deliveries SET status = 'pending', next_attempt_ms = $2, due_ms = $2,
                lease_until_ms = 0, budget_attempts = attempts, budget_since_ms = $2,
                updated_ms = $2
         WHERE delivery_id = $1
         RETURNING connector, order_key",
        &[&delivery_id, &now],
    )
    .await?;
    if let Some(line) = line {
        let connector: String = line.try_get("connector")?;
        let order_key: String = line.try_get("order_key")?;
        // Pending again, it holds its line: the head is now the first of the line.
        lock_line(tx, &connector, &order_key).await?;
        execute(
            tx,
            "UPDATE deliveries SET ready = FALSE
             WHERE connector = $1 AND order_key = $2 AND status = 'pending' AND ready",
            &[&connector, &order_key],
        )
        .await?;
        promote_head(tx, &connector, &order_key).await?;
    }
    Ok(ReplayOutcome::Replayed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_postgres::types::ToSql;

    /// A bound value of an EXPLAINed statement.
    type Param = Box<dyn ToSql + Sync>;

    /// The queue's statements have an index path on PostgreSQL as on SQLite: with sequential
    /// scans priced out, each plan reads `deliveries` through an index; a statement no index
    /// serves would still show a `Seq Scan on deliveries`, so this fails if one is lost.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_queue_answers_by_index_seeks_never_by_scanning_deliveries() {
        let db = super::super::testing::Database::create().await;
        let client = db.client().await;
        client
            .batch_execute("SET enable_seqscan = off")
            .await
            .unwrap();
        let statements: [(&str, &str, Vec<Param>); 5] = [
            ("ready connectors", READY_CONNECTORS, vec![]),
            (
                "due heads",
                DUE_HEADS,
                vec![Box::new("hook"), Box::new(0i64), Box::new(10i64)],
            ),
            ("next due", NEXT_DUE, vec![Box::new("hook")]),
            (
                "promote head",
                PROMOTE_HEAD,
                vec![Box::new("hook"), Box::new("ticket:1")],
            ),
            (
                "queue one",
                INSERT_DELIVERY,
                vec![
                    Box::new("msg_x"),
                    Box::new("A"),
                    Box::new(1i64),
                    Box::new("hook"),
                    Box::new("created"),
                    Box::new("ticket:1"),
                    Box::new(Some(1i64)),
                    Box::new(0i64),
                ],
            ),
        ];
        for (what, sql, params) in &statements {
            let params: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p.as_ref()).collect();
            let plan: Vec<String> = client
                .query(&format!("EXPLAIN {sql}"), &params)
                .await
                .unwrap()
                .iter()
                .map(|r| r.get::<_, String>(0))
                .collect();
            let plan = plan.join("\n");
            assert!(!plan.contains("Seq Scan on deliveries"), "{what}:\n{plan}");
            assert!(plan.contains("Index"), "{what}:\n{plan}");
        }
        db.drop().await;
    }
}
