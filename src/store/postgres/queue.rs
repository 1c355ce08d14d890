//! The delivery queue on PostgreSQL, shared by every gateway on the database: the same
//! `ready`/`due_ms` design as on SQLite (only a line's head is ready; a lease pushes its
//! `due_ms` to the lease's end, so an expired lease is due again by itself), leased with
//! `FOR UPDATE SKIP LOCKED` so gateways never wait on each other's picks, and every change of
//! a line's head made under the line's lock.

use async_trait::async_trait;
use deadpool_postgres::Transaction;

use super::{
    Postgres, completion, count, execute, instance, int, lock_line, query_opt, ticket_facts,
};
use crate::model::{DeliveryStatus, Event, Purpose, TicketFacts, now_ms};
use crate::store::rules::{COLLECTED_SHOWN, UNREADABLE_DELIVERY, order_key, transition};
use crate::store::{Attempted, Collected, Lease, LeasedDelivery, Queue, ReplayOutcome, StoreError};

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
        lease_due(self, limit, lease_ms, &busy, now_ms()).await
    }

    async fn record_attempt(&self, attempt: Attempted) -> Result<bool, StoreError> {
        transaction!(self, |tx| record_attempt(&tx, &attempt, now_ms()).await)
    }

    async fn next_due_ms(&self, busy: Vec<String>) -> Result<Option<i64>, StoreError> {
        let client = self.pool.get().await?;
        let statement = client.prepare_cached(NEXT_DUE).await?;
        Ok(client.query_one(&statement, &[&busy]).await?.try_get(0)?)
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

/// The connectors with a head of a line ready, as the CTE `c(name)`: a loose index scan of
/// `deliveries_ready`, one seek per connector (`name` is NULL on its last row).
macro_rules! ready_connectors {
    () => {
        "RECURSIVE c(name) AS (
             (SELECT connector FROM deliveries WHERE ready ORDER BY connector LIMIT 1)
             UNION ALL
             SELECT (SELECT connector FROM deliveries WHERE ready AND connector > c.name
                     ORDER BY connector LIMIT 1)
             FROM c WHERE c.name IS NOT NULL)"
    };
}

/// A whole lease in one statement (`$1` now, `$2` how many, `$3` busy connectors, `$4` the
/// lease's end, `$5` the holder): each ready connector's due heads, earliest first, from
/// `deliveries_ready`; the earliest `$2` of them locked, skipping what another gateway is
/// taking; leased (which ends a collection window); and returned with what the attempt needs
/// (the version, the ticket, the completion). One round trip, where a lease was eight; a
/// window's incidents are read after it ([`COLLECTED_BODIES`]), in a snapshot that has every
/// join committed before the lease.
pub(super) const LEASE_DUE: &str = concat!(
    "WITH ",
    ready_connectors!(),
    ",
     due AS (
         SELECT h.seq, h.due_ms FROM c
         CROSS JOIN LATERAL (SELECT seq, due_ms FROM deliveries
                             WHERE ready AND connector = c.name AND due_ms <= $1
                             ORDER BY due_ms, seq LIMIT $2) h
         WHERE c.name IS NOT NULL AND c.name <> ALL($3)
         ORDER BY h.due_ms, h.seq LIMIT $2),
     picked AS (
         SELECT d.seq FROM deliveries d
         WHERE d.seq IN (SELECT seq FROM due) AND d.ready AND d.due_ms <= $1
         FOR UPDATE SKIP LOCKED),
     leased AS (
         UPDATE deliveries d
            SET lease_until_ms = $4, due_ms = $4, lease_holder = $5,
                lease_token = replace(gen_random_uuid()::text, '-', ''), collecting = FALSE
         FROM picked WHERE d.seq = picked.seq
         RETURNING d.seq, d.delivery_id, d.incident_id, d.version_id, d.connector, d.event,
                   d.attempts, d.budget_attempts, d.budget_since_ms, d.ticket_seq, d.order_key,
                   d.lease_token, d.outcome_unknown, d.purpose, d.collected)
     SELECT l.*, v.body, v.received_ms, t.correlation_key, t.ticket_id, t.ticket_url,
            i.status AS incident_status, i.reason_code, i.notes, i.status_change_ms
     FROM leased l JOIN due ON due.seq = l.seq
     LEFT JOIN incident_versions v ON v.version_id = l.version_id
     LEFT JOIN tickets t ON t.ticket_seq = l.ticket_seq
     LEFT JOIN incidents i ON i.incident_id = l.incident_id AND i.status = 'completed'
     ORDER BY due.due_ms, l.seq"
);

/// When the first head of a line falls due, outside the busy connectors `$1`: one seek per
/// ready connector, in one statement.
pub(super) const NEXT_DUE: &str = concat!(
    "WITH ",
    ready_connectors!(),
    "
     SELECT MIN(x.due) FROM c
     CROSS JOIN LATERAL (SELECT MIN(due_ms) AS due FROM deliveries
                         WHERE ready AND connector = c.name) x
     WHERE c.name IS NOT NULL AND c.name <> ALL($1)"
);

/// Makes a line's first blocking delivery ready, if it is pending.
pub(super) const PROMOTE_HEAD: &str = concat!(
    "UPDATE deliveries SET ready = TRUE
             WHERE seq = (SELECT seq FROM deliveries WHERE connector = $1 AND order_key = $2 AND ",
    blocking!(),
    " ORDER BY seq LIMIT 1)
               AND status = 'pending' AND NOT ready"
);

/// A new delivery, ready when nothing of its line holds it back, due at `$10` (its retry
/// budget counted from then: a window's wait is not the target's fault); `$11` true and `$12`
/// 1 when it opens a collection window (which then holds its own incident).
pub(super) const INSERT_DELIVERY: &str = concat!(
            "INSERT INTO deliveries (delivery_id, incident_id, version_id, connector, event, status,
                                     order_key, ticket_seq, budget_since_ms, next_attempt_ms, due_ms,
                                     created_ms, updated_ms, purpose, ready, collecting, collected)
             VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7, $10, $10, $10, $8, $8, $9,
                     NOT EXISTS (SELECT 1 FROM deliveries e WHERE e.connector = $4 AND e.order_key = $6
                                 AND ",
            blocking!(),
            "), $11, $12)
             RETURNING seq"
        );

/// A delivery to queue.
pub(super) struct NewDelivery<'a> {
    pub incident_id: &'a str,
    pub version_id: i64,
    pub connector: &'a str,
    pub event: Event,
    pub ticket_seq: Option<i64>,
    pub purpose: Purpose,
    /// It opens a collection window ending then (ms): it is due only then, and later
    /// incidents of its line join it until it is leased. `None`: due at once.
    pub collect_until: Option<i64>,
}

/// Queues one delivery, due at `now` (or, opening a collection window, when it ends), ready
/// when nothing of its line holds it back; returns its id. Under the line's lock: a head
/// finishing on another gateway at the same time either sees this delivery (and makes it
/// ready) or is seen finished by it.
pub(super) async fn insert_delivery(
    tx: &Transaction<'_>,
    d: &NewDelivery<'_>,
    now: i64,
) -> Result<String, StoreError> {
    let id = format!("msg_{}", uuid::Uuid::now_v7().simple());
    let order_key = order_key(d.incident_id, d.ticket_seq);
    lock_line(tx, d.connector, &order_key).await?;
    let seq: i64 = query_opt(
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
            &d.purpose.as_stored(),
            &d.collect_until.unwrap_or(now),
            &d.collect_until.is_some(),
            &i32::from(d.collect_until.is_some()),
        ],
    )
    .await?
    .ok_or(StoreError::Missing("delivery"))?
    .try_get("seq")?;
    if d.collect_until.is_some() {
        // The window's first incident is its own: `collected` lists every incident it holds.
        execute(
            tx,
            "INSERT INTO collected_incidents (delivery_seq, position, incident_id, version_id)
             VALUES ($1, 0, $2, $3)",
            &[&seq, &d.incident_id, &d.version_id],
        )
        .await?;
    }
    Ok(id)
}

/// The newest delivery of a line that holds it (`$1` connector, `$2` order key): a window is
/// open only while it is that one, pending and not yet leased (`collecting`), so whatever was
/// queued after it (a completion's note, its `completed`) is never overtaken by incidents
/// that arrive later. Read under the line's lock, so no delivery is queued on the line
/// meanwhile.
const NEWEST_OF_LINE: &str = concat!(
    "SELECT seq, collecting, collected FROM deliveries
     WHERE connector = $1 AND order_key = $2 AND ",
    blocking!(),
    " ORDER BY seq DESC LIMIT 1"
);

/// That window (`$1` its seq), locked, if it still collects. A lease holds its row only
/// while it closes the window, so a locked row is a window closing: skipped, never waited
/// for (a wait could close a cycle with an attempt being recorded, which takes the row, then
/// the ticket and the line, which the ingest holds).
const LOCK_WINDOW: &str = "SELECT seq, delivery_id, event FROM deliveries
     WHERE seq = $1 AND collecting FOR UPDATE SKIP LOCKED";

/// A collection window open on a line.
pub(super) struct Window {
    pub seq: i64,
    pub delivery_id: String,
    pub event: String,
}

/// The collection window open on a line, if there is one, locked until the transaction
/// ends (under the line's lock, as every change of a line is).
pub(super) async fn open_collection(
    tx: &Transaction<'_>,
    connector: &str,
    order_key: &str,
) -> Result<Option<Window>, StoreError> {
    lock_line(tx, connector, order_key).await?;
    let Some(newest) = query_opt(tx, NEWEST_OF_LINE, &[&connector, &order_key]).await? else {
        return Ok(None);
    };
    // Once closed, a window never opens again: no lock is needed to see that.
    // A full window is closed too: what it holds is bounded (every incident it takes is sent).
    if !newest.try_get::<_, bool>("collecting")?
        || i64::from(newest.try_get::<_, i32>("collected")?) >= COLLECTED_SHOWN
    {
        return Ok(None);
    }
    let seq: i64 = newest.try_get("seq")?;
    let Some(row) = query_opt(tx, LOCK_WINDOW, &[&seq]).await? else {
        return Ok(None);
    };
    Ok(Some(Window {
        seq: row.try_get("seq")?,
        delivery_id: row.try_get("delivery_id")?,
        event: row.try_get("event")?,
    }))
}

/// Puts an incident version into an open window: a new incident after the others; a new
/// version of one it holds where that one stands. The delivery keeps the version it was
/// queued with (its top-level fields): changing it here could leave a lease that started
/// before this commit joining a version its snapshot cannot see. The delivery's row is updated either way, so a lease
/// that raced this join reads the window only after it is committed.
pub(super) async fn collect(
    tx: &Transaction<'_>,
    window: &Window,
    incident_id: &str,
    version_id: i64,
    now: i64,
) -> Result<(), StoreError> {
    let replaced = execute(
        tx,
        "UPDATE collected_incidents SET version_id = $3
         WHERE delivery_seq = $1 AND incident_id = $2",
        &[&window.seq, &incident_id, &version_id],
    )
    .await?;
    if replaced == 0 {
        execute(
            tx,
            "INSERT INTO collected_incidents (delivery_seq, position, incident_id, version_id)
             SELECT seq, collected, $2, $3 FROM deliveries WHERE seq = $1",
            &[&window.seq, &incident_id, &version_id],
        )
        .await?;
    }
    let added: i32 = i32::from(replaced == 0);
    execute(
        tx,
        "UPDATE deliveries SET collected = collected + $2, updated_ms = $3 WHERE seq = $1",
        &[&window.seq, &added, &now],
    )
    .await?;
    Ok(())
}

/// The incidents the windows `$1` (delivery seqs) gathered, in arrival order, the first
/// `$2` of each.
const COLLECTED_BODIES: &str = "SELECT c.delivery_seq, v.body
     FROM unnest($1::bigint[]) AS w(seq)
     CROSS JOIN LATERAL (SELECT delivery_seq, version_id, position FROM collected_incidents
                         WHERE delivery_seq = w.seq ORDER BY position LIMIT $2) c
     JOIN incident_versions v ON v.version_id = c.version_id
     ORDER BY c.delivery_seq, c.position";

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

/// [`Queue::lease_due`] at `now`, for the process `holder` ([`LEASE_DUE`], on its own: one
/// statement needs no transaction around it). A row this version cannot read (its incident
/// version missing, an event it does not know) goes dead, so it cannot stop every other.
async fn lease_due(
    pg: &Postgres,
    limit: usize,
    lease_ms: i64,
    busy: &[String],
    now: i64,
) -> Result<Vec<LeasedDelivery>, StoreError> {
    let cap = i64::try_from(limit).unwrap_or(i64::MAX);
    let until = now.saturating_add(lease_ms);
    let client = pg.pool.get().await?;
    let statement = client.prepare_cached(LEASE_DUE).await?;
    let rows = client
        .query(&statement, &[&now, &cap, &busy, &until, &pg.instance.id])
        .await?;
    drop(client);
    let mut leased = Vec::with_capacity(rows.len());
    // Each leased delivery's seq, beside it.
    let mut seqs = Vec::with_capacity(rows.len());
    let mut unreadable = Vec::new();
    for r in rows {
        let body: Option<String> = r.try_get("body")?;
        let event = Event::parse(r.try_get("event")?);
        let (Some(body), Some(event)) = (body, event) else {
            unreadable.push((
                r.try_get::<_, i64>("seq")?,
                r.try_get::<_, String>("connector")?,
                r.try_get::<_, String>("order_key")?,
            ));
            continue;
        };
        seqs.push(r.try_get::<_, i64>("seq")?);
        let completed = r.try_get::<_, Option<String>>("incident_status")?.is_some();
        let ticket_seq: Option<i64> = r.try_get("ticket_seq")?;
        let purpose = Purpose::from_stored(r.try_get::<_, Option<&str>>("purpose")?);
        leased.push(LeasedDelivery {
            id: r.try_get("delivery_id")?,
            lease_token: r
                .try_get::<_, Option<String>>("lease_token")?
                .unwrap_or_default(),
            incident_id: r.try_get("incident_id")?,
            connector: r.try_get("connector")?,
            event,
            attempts: count(&r, "attempts")?,
            budget_attempts: count(&r, "budget_attempts")?,
            budget_since_ms: r.try_get("budget_since_ms")?,
            incident_body: body,
            received_at_ms: r.try_get::<_, Option<i64>>("received_ms")?.unwrap_or(0),
            ticket: match ticket_seq {
                Some(_) => TicketFacts {
                    reopened: purpose == Purpose::Reopen,
                    ..ticket_facts(&r)?
                },
                None => Default::default(),
            },
            ticket_seq,
            // The state it was queued for: only a `completed` (or the note of a completion)
            // announces the completion.
            completion: if completed
                && (event == Event::Completed || purpose == Purpose::CompletionNote)
            {
                Some(completion(&r)?)
            } else {
                None
            },
            outcome_unknown: r.try_get("outcome_unknown")?,
            collected: match count(&r, "collected")? {
                0 => None,
                n => Some(Collected {
                    bodies: Vec::new(),
                    count: n,
                }),
            },
        });
    }
    if leased.iter().any(|d| d.collected.is_some()) {
        read_collected(pg, &mut leased, &seqs).await?;
    }
    if !unreadable.is_empty() {
        transaction!(pg, |tx| {
            for (seq, connector, order_key) in &unreadable {
                execute(
                    &tx,
                    "UPDATE deliveries SET status = 'dead', ready = FALSE, lease_until_ms = 0,
                            lease_token = NULL, updated_ms = $2, last_error = $3
                     WHERE seq = $1",
                    &[seq, &now, &UNREADABLE_DELIVERY],
                )
                .await?;
                promote_head(&tx, connector, order_key).await?;
            }
            Ok(())
        })?;
    }
    Ok(leased)
}

/// Fills in the incidents of the leased windows (`seqs`: each delivery's seq), in one
/// statement after the lease: READ COMMITTED gives it a snapshot taken after the lease, so it
/// sees every join committed before the lease closed the window (the lease itself, one
/// statement, may have started before the last join committed).
async fn read_collected(
    pg: &Postgres,
    leased: &mut [LeasedDelivery],
    seqs: &[i64],
) -> Result<(), StoreError> {
    let windows: Vec<i64> = leased
        .iter()
        .zip(seqs)
        .filter(|(d, _)| d.collected.is_some())
        .map(|(_, seq)| *seq)
        .collect();
    let client = pg.pool.get().await?;
    let statement = client.prepare_cached(COLLECTED_BODIES).await?;
    let rows = client
        .query(&statement, &[&windows, &COLLECTED_SHOWN])
        .await?;
    for r in rows {
        let seq: i64 = r.try_get("delivery_seq")?;
        let body: String = r.try_get("body")?;
        if let Some(Some(c)) = seqs
            .iter()
            .position(|s| *s == seq)
            .map(|i| leased[i].collected.as_mut())
        {
            c.bodies.push(body);
        }
    }
    Ok(())
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
    // The delivery moved on and its attempt recorded in one statement; neither happens
    // unless the lease is still this worker's.
    let line = query_opt(
        tx,
        "WITH d AS (
             UPDATE deliveries SET status = $3, attempts = $4, next_attempt_ms = $5, due_ms = $5,
                    lease_until_ms = 0, lease_token = NULL, updated_ms = $6, last_error = $7,
                    ready = ready AND $3 = 'pending', outcome_unknown = $14
             WHERE delivery_id = $1 AND lease_token = $2 AND status = 'pending'
             RETURNING delivery_id, connector, order_key, event, ticket_seq),
         a AS (
             INSERT INTO attempts (delivery_id, attempt, started_ms, latency_ms, status_code,
                                   error, response_body, outcome, lookup)
             SELECT d.delivery_id, $4, $8, $9, $10, $11, $12, $13, $15 FROM d)
         SELECT connector, order_key, event, ticket_seq FROM d",
        &[
            &lease.delivery_id,
            &lease.token,
            &to.status.as_str(),
            &int(record.attempt),
            &to.next_attempt_ms,
            &now,
            &to.last_error,
            &record.started_at_ms,
            &record.latency_ms,
            &record.status_code.map(i32::from),
            &record.error,
            &record.response_body,
            &record.outcome.as_str(),
            &record.outcome_unknown,
            &record.lookup,
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
    // The ticket exists in the target now: its SLA clocks learn when (before the line's lock
    // is taken, the order a completion takes the clocks and the line in).
    let event: String = line.try_get("event")?;
    if let (DeliveryStatus::Delivered, Some(ticket_seq)) = (to.status, line.try_get("ticket_seq")?)
        && event == Event::Created.as_str()
    {
        super::sla::created_ok(tx, ticket_seq, now).await?;
    }
    // Delivered, or dead and not a `created` (a dead `created` still holds its ticket's
    // line): the next delivery of the line may go.
    if to.status != DeliveryStatus::Pending {
        let connector: String = line.try_get("connector")?;
        let order_key: String = line.try_get("order_key")?;
        promote_head(tx, &connector, &order_key).await?;
    }
    Ok(true)
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
        let busy: Vec<String> = vec!["busy".into()];
        let statements: [(&str, &str, Vec<Param>); 7] = [
            (
                "lease",
                LEASE_DUE,
                vec![
                    Box::new(0i64),
                    Box::new(10i64),
                    Box::new(busy.clone()),
                    Box::new(1i64),
                    Box::new("gw"),
                ],
            ),
            ("next due", NEXT_DUE, vec![Box::new(busy)]),
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
                    Box::new(None::<String>),
                    Box::new(0i64),
                    Box::new(false),
                    Box::new(0i32),
                ],
            ),
            (
                "newest of a line",
                NEWEST_OF_LINE,
                vec![Box::new("hook"), Box::new("ticket:1")],
            ),
            ("lock a window", LOCK_WINDOW, vec![Box::new(1i64)]),
            (
                "a window's incidents",
                COLLECTED_BODIES,
                vec![Box::new(vec![1i64]), Box::new(100i64)],
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
