//! The delivery queue: queue a delivery, lease due ones (the per-ticket ordering rule), record
//! an attempt under its lease token, find the next due time, release and extend leases,
//! replay a dead delivery, and recover leases after a crash.

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};

use super::{Sqlite, completion_of, json_list, optional_row, rows};
use crate::model::{DeliveryStatus, Event, Purpose, TicketFacts, now_ms};
use crate::store::rules::{
    COLLECTED_SHOWN, INTERRUPTED_CREATED, UNREADABLE_DELIVERY, order_key, transition,
};
use crate::store::{Attempted, Collected, Lease, LeasedDelivery, Queue, ReplayOutcome, StoreError};

#[async_trait]
impl Queue for Sqlite {
    async fn recover(&self, tracked: Vec<String>) -> Result<usize, StoreError> {
        self.write(move |conn| recover(conn, &tracked, now_ms()))
            .await
    }

    async fn lease_due(
        &self,
        limit: usize,
        lease_ms: i64,
        busy: Vec<String>,
    ) -> Result<Vec<LeasedDelivery>, StoreError> {
        self.write(move |conn| lease_due(conn, limit, lease_ms, &busy, now_ms()))
            .await
    }

    async fn record_attempt(&self, attempt: Attempted) -> Result<bool, StoreError> {
        self.write(move |conn| record_attempt(conn, &attempt, now_ms()))
            .await
    }

    async fn next_due_ms(&self, busy: Vec<String>) -> Result<Option<i64>, StoreError> {
        self.read(move |conn| next_due_ms(conn, &busy)).await
    }

    async fn release(&self, leases: Vec<(String, String)>) -> Result<(), StoreError> {
        self.write(move |conn| {
            let mut stmt = conn.prepare_cached(
                "UPDATE deliveries SET lease_until_ms = 0, lease_token = NULL, due_ms = next_attempt_ms
                 WHERE delivery_id = ?1 AND lease_token = ?2 AND status = 'pending'",
            )?;
            for (id, token) in leases {
                stmt.execute([id, token])?;
            }
            Ok(())
        })
        .await
    }

    async fn extend_lease(&self, lease: Lease, lease_ms: i64) -> Result<bool, StoreError> {
        self.write(move |conn| extend_lease(conn, &lease, now_ms().saturating_add(lease_ms)))
            .await
    }

    async fn replay(&self, delivery_id: String) -> Result<ReplayOutcome, StoreError> {
        self.write(move |conn| replay(conn, &delivery_id, now_ms()))
            .await
    }
}

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

/// A new delivery, ready when nothing of its line holds it back (an index seek), due at
/// `?10` (its retry budget counted from then: a window's wait is not the target's fault);
/// `?11` 1 when it opens a collection window (which then holds its own incident).
const INSERT_DELIVERY: &str = concat!(
            "INSERT INTO deliveries (delivery_id, incident_id, version_id, connector, event, status,
                                     order_key, ticket_seq, budget_since_ms, next_attempt_ms, due_ms,
                                     created_ms, updated_ms, purpose, ready, collecting, collected)
             VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6, ?7, ?10, ?10, ?10, ?8, ?8, ?9,
                     NOT EXISTS (SELECT 1 FROM deliveries e WHERE e.connector = ?4 AND e.order_key = ?6
                                 AND ",
            blocking!(),
            "), ?11, ?11)"
        );

/// Queues one delivery, due at `now` (or, opening a collection window, when it ends);
/// returns its id.
pub(super) fn insert_delivery(
    conn: &Connection,
    d: &NewDelivery<'_>,
    now: i64,
) -> Result<String, StoreError> {
    let id = format!("msg_{}", uuid::Uuid::now_v7().simple());
    conn.prepare_cached(INSERT_DELIVERY)?.execute(params![
        id,
        d.incident_id,
        d.version_id,
        d.connector,
        d.event.as_str(),
        order_key(d.incident_id, d.ticket_seq),
        d.ticket_seq,
        now,
        d.purpose.as_stored(),
        d.collect_until.unwrap_or(now),
        d.collect_until.is_some(),
    ])?;
    if d.collect_until.is_some() {
        // The window's first incident is its own: `collected` lists every incident it holds.
        conn.prepare_cached(
            "INSERT INTO collected_incidents (delivery_seq, position, incident_id, version_id)
             VALUES (?1, 0, ?2, ?3)",
        )?
        .execute(params![
            conn.last_insert_rowid(),
            d.incident_id,
            d.version_id
        ])?;
    }
    Ok(id)
}

from_row! {
    /// The newest delivery of a line that holds it (a collection window, if `collecting`).
    pub(super) struct Window {
        pub seq: i64,
        pub delivery_id: String,
        pub event: String,
        pub collecting: bool,
        pub collected: i64,
    }
}

/// The newest delivery of a line among those that hold it (an index seek): a window is open
/// only while it is that one, so whatever was queued after it (a completion's note, its
/// `completed`) is never overtaken by incidents that arrive later.
const NEWEST_OF_LINE: &str = concat!(
    "SELECT seq, delivery_id, event, collecting, collected
     FROM deliveries INDEXED BY deliveries_blocking
     WHERE connector = ?1 AND order_key = ?2 AND ",
    blocking!(),
    " ORDER BY seq DESC LIMIT 1"
);

/// The collection window open on a line (`connector`, `order_key`), if there is one: the
/// line's newest delivery, pending and not yet leased.
pub(super) fn open_collection(
    conn: &Connection,
    connector: &str,
    order_key: &str,
) -> Result<Option<Window>, StoreError> {
    let newest: Option<Window> = optional_row(conn, NEWEST_OF_LINE, params![connector, order_key])?;
    // A full window is closed: what it holds is bounded (every incident it takes is sent).
    Ok(newest.filter(|w| w.collecting && w.collected < COLLECTED_SHOWN))
}

/// Puts an incident version into an open window: a new incident after the others; a new
/// version of one it holds where that one stands. The delivery keeps the version it was
/// queued with (its top-level fields; `collected` has the latest), as on PostgreSQL.
pub(super) fn collect(
    conn: &Connection,
    window: &Window,
    incident_id: &str,
    version_id: i64,
    now: i64,
) -> Result<(), StoreError> {
    let replaced = conn
        .prepare_cached(
            "UPDATE collected_incidents SET version_id = ?3
             WHERE delivery_seq = ?1 AND incident_id = ?2",
        )?
        .execute(params![window.seq, incident_id, version_id])?;
    if replaced == 0 {
        conn.prepare_cached(
            "INSERT INTO collected_incidents (delivery_seq, position, incident_id, version_id)
             SELECT seq, collected, ?2, ?3 FROM deliveries WHERE seq = ?1",
        )?
        .execute(params![window.seq, incident_id, version_id])?;
    }
    conn.prepare_cached(
        "UPDATE deliveries SET collected = collected + ?2, updated_ms = ?3 WHERE seq = ?1",
    )?
    .execute(params![window.seq, i64::from(replaced == 0), now])?;
    Ok(())
}

/// The incidents a window gathered, in arrival order, the first [`COLLECTED_SHOWN`] of them.
const COLLECTED_BODIES: &str = "SELECT v.body FROM collected_incidents c
     CROSS JOIN incident_versions v ON v.version_id = c.version_id
     WHERE c.delivery_seq = ?1 ORDER BY c.position LIMIT ?2";

fn collected(conn: &Connection, seq: i64, count: u32) -> Result<Option<Collected>, StoreError> {
    if count == 0 {
        return Ok(None);
    }
    let bodies = conn
        .prepare_cached(COLLECTED_BODIES)?
        .query_map(params![seq, COLLECTED_SHOWN], |r| r.get(0))?
        .collect::<Result<Vec<String>, _>>()?;
    Ok(Some(Collected { bodies, count }))
}

from_row! {
    /// A due delivery at the head of its line, before it is leased.
    struct Due {
        seq: i64,
        delivery_id: String,
        incident_id: String,
        version_id: i64,
        connector: String,
        event: String,
        attempts: u32,
        budget_attempts: u32,
        budget_since_ms: i64,
        ticket_seq: Option<i64>,
        order_key: String,
        due_ms: i64,
        outcome_unknown: bool,
        purpose: Option<String>,
        collected: u32,
    }
}

from_row! {
    /// The incident version a delivery carries.
    struct Version {
        body: String,
        received_ms: i64,
    }
}

fn lease_token() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// A connector's due heads of their lines, earliest first.
const DUE_HEADS: &str =
    "SELECT seq, delivery_id, incident_id, version_id, connector, event, attempts,
        budget_attempts, budget_since_ms, ticket_seq, order_key, due_ms, outcome_unknown, purpose,
        collected
     FROM deliveries INDEXED BY deliveries_ready
     WHERE ready = 1 AND connector = ?1 AND due_ms <= ?2
     ORDER BY due_ms, seq LIMIT ?3";

/// When a connector's first head of its line falls due.
const NEXT_DUE: &str = "SELECT MIN(due_ms) FROM deliveries INDEXED BY deliveries_ready
     WHERE ready = 1 AND connector = ?1";

/// The connectors with a head of a line ready (a loose index scan of `deliveries_ready`).
const READY_CONNECTORS: &str = "WITH RECURSIVE c(name) AS (
         SELECT MIN(connector) FROM deliveries INDEXED BY deliveries_ready WHERE ready = 1
         UNION ALL
         SELECT (SELECT MIN(connector) FROM deliveries INDEXED BY deliveries_ready
                 WHERE ready = 1 AND connector > c.name)
         FROM c WHERE c.name IS NOT NULL)
     SELECT name FROM c WHERE name IS NOT NULL";

/// Makes a line's first blocking delivery ready, if it is pending.
const PROMOTE_HEAD: &str = concat!(
    "UPDATE deliveries SET ready = 1
     WHERE seq = (SELECT seq FROM deliveries INDEXED BY deliveries_blocking
                  WHERE connector = ?1 AND order_key = ?2 AND ",
    blocking!(),
    " ORDER BY seq LIMIT 1)
       AND status = 'pending' AND ready = 0"
);

/// [`Queue::lease_due`] at `now`: the heads of their lines that are due, outside `busy`,
/// earliest first. Each connector's due heads are read from `deliveries_ready` in due order,
/// so what is held back (followers, leases under way, a busy connector's backlog) is never
/// walked over: the cost is O(connectors · log n + taken).
pub(super) fn lease_due(
    conn: &Connection,
    limit: usize,
    lease_ms: i64,
    busy: &[String],
    now: i64,
) -> Result<Vec<LeasedDelivery>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut candidates: Vec<Due> = Vec::new();
    for connector in ready_connectors(conn)? {
        if busy.contains(&connector) {
            continue;
        }
        candidates.extend(rows::<Due>(
            conn,
            DUE_HEADS,
            params![connector, now, limit],
        )?);
    }
    candidates.sort_by_key(|d| (d.due_ms, d.seq));
    candidates.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    // A lease ends the delivery's collection window: the next incident of its line opens a
    // new one.
    let mut take = conn.prepare_cached(
        "UPDATE deliveries SET lease_until_ms = ?2, lease_token = ?3, due_ms = ?2, collecting = 0
         WHERE seq = ?1",
    )?;
    let mut leased = Vec::with_capacity(candidates.len());
    for due in candidates {
        let version: Option<Version> = optional_row(
            conn,
            "SELECT body, received_ms FROM incident_versions WHERE version_id = ?1",
            [due.version_id],
        )?;
        let (Some(version), Some(event)) = (version, Event::parse(&due.event)) else {
            // A row this version cannot read must not stop every other delivery.
            conn.execute(
                "UPDATE deliveries SET status = 'dead', ready = 0, updated_ms = ?2, last_error = ?3,
                        collecting = 0
                 WHERE seq = ?1",
                params![due.seq, now, UNREADABLE_DELIVERY],
            )?;
            promote_head(conn, &due.connector, &due.order_key)?;
            continue;
        };
        let purpose = Purpose::from_stored(due.purpose.as_deref());
        let mut ticket: TicketFacts = match due.ticket_seq {
            Some(t) => optional_row(
                conn,
                "SELECT correlation_key, ticket_id, ticket_url FROM tickets WHERE ticket_seq = ?1",
                [t],
            )?
            .unwrap_or_default(),
            None => TicketFacts::default(),
        };
        ticket.reopened = purpose == Purpose::Reopen;
        // A delivery renders the state it was queued for: only a `completed` (or the note of
        // a completion) announces the completion (an `updated` still waiting when the
        // incident was completed does not).
        let completion = if event == Event::Completed || purpose == Purpose::CompletionNote {
            completion_of(conn, &due.incident_id)?
        } else {
            None
        };
        let collected = collected(conn, due.seq, due.collected)?;
        let lease_token = lease_token();
        take.execute(params![due.seq, now.saturating_add(lease_ms), lease_token])?;
        leased.push(LeasedDelivery {
            id: due.delivery_id,
            lease_token,
            incident_id: due.incident_id,
            connector: due.connector,
            event,
            attempts: due.attempts,
            budget_attempts: due.budget_attempts,
            budget_since_ms: due.budget_since_ms,
            incident_body: version.body,
            received_at_ms: version.received_ms,
            ticket_seq: due.ticket_seq,
            ticket,
            completion,
            outcome_unknown: due.outcome_unknown,
            collected,
        });
    }
    Ok(leased)
}

/// [`Queue::record_attempt`] at `now`: `false` (and nothing written) unless `lease` is still
/// the delivery's.
pub(super) fn record_attempt(
    conn: &Connection,
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
    let recorded: Option<Recorded> = optional_row(
        conn,
        "UPDATE deliveries SET status = ?3, attempts = ?4, next_attempt_ms = ?5, due_ms = ?5,
                lease_until_ms = 0, lease_token = NULL, updated_ms = ?6, last_error = ?7,
                ready = ready AND ?3 = 'pending', outcome_unknown = ?8
         WHERE delivery_id = ?1 AND lease_token = ?2 AND status = 'pending'
         RETURNING connector, order_key, event, ticket_seq",
        params![
            lease.delivery_id,
            lease.token,
            to.status.as_str(),
            record.attempt,
            to.next_attempt_ms,
            now,
            to.last_error,
            record.outcome_unknown
        ],
    )?;
    let Some(recorded) = recorded else {
        return Ok(false);
    };
    // Delivered, or dead and not a `created` (a dead `created` still holds its ticket's
    // line): the next delivery of the line may go.
    if to.status != DeliveryStatus::Pending {
        promote_head(conn, &recorded.connector, &recorded.order_key)?;
    }
    // The ticket exists in the target now: its SLA clocks learn when.
    if let (DeliveryStatus::Delivered, Some(ticket_seq)) = (to.status, recorded.ticket_seq)
        && recorded.event == Event::Created.as_str()
    {
        super::sla::created_ok(conn, ticket_seq, now)?;
    }
    if let Some(t) = ticket {
        conn.prepare_cached(
            "UPDATE tickets SET ticket_id = ?2, ticket_url = ?3, updated_ms = ?4 WHERE ticket_seq = ?1",
        )?
        .execute(params![t.ticket_seq, t.id, t.url, now])?;
    }
    conn.prepare_cached(
        "INSERT INTO attempts (delivery_id, attempt, started_ms, latency_ms, status_code, error, response_body, outcome, lookup)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        lease.delivery_id,
        record.attempt,
        record.started_at_ms,
        record.latency_ms,
        record.status_code,
        record.error,
        record.response_body,
        record.outcome.as_str(),
        record.lookup,
    ])?;
    Ok(true)
}

/// [`Queue::next_due_ms`]: the earliest time a head of its line falls due, outside `busy`
/// (one index seek per connector).
fn next_due_ms(conn: &Connection, busy: &[String]) -> Result<Option<i64>, StoreError> {
    let mut earliest: Option<i64> = None;
    for connector in ready_connectors(conn)? {
        if busy.contains(&connector) {
            continue;
        }
        let due: Option<i64> = conn
            .prepare_cached(NEXT_DUE)?
            .query_row([&connector], |r| r.get(0))?;
        earliest = match (earliest, due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    Ok(earliest)
}

/// The connectors with deliveries ready to lease, read from `deliveries_ready` one index seek
/// per connector (a loose index scan), not by walking the rows.
fn ready_connectors(conn: &Connection) -> Result<Vec<String>, StoreError> {
    Ok(conn
        .prepare_cached(READY_CONNECTORS)?
        .query_map([], |r| r.get(0))?
        .collect::<Result<Vec<String>, _>>()?)
}

from_row! {
    /// What recording an attempt needs of its delivery: its line, and what it was for.
    struct Recorded {
        connector: String,
        order_key: String,
        event: String,
        ticket_seq: Option<i64>,
    }
}

from_row! {
    /// A ticket's line of deliveries: one connector, one order key.
    pub(super) struct Line {
        pub connector: String,
        pub order_key: String,
    }
}

/// After a delivery of `line` stopped holding the line (delivered, or dead and not a
/// `created`), its new head may go: it becomes ready, if it is pending.
pub(super) fn promote_head(
    conn: &Connection,
    connector: &str,
    order_key: &str,
) -> Result<(), StoreError> {
    conn.prepare_cached(PROMOTE_HEAD)?
        .execute(params![connector, order_key])?;
    Ok(())
}

/// Moves a held lease's end to `until`; `false` when the lease is no longer `lease`.
fn extend_lease(conn: &Connection, lease: &Lease, until: i64) -> Result<bool, StoreError> {
    let changed = conn
        .prepare_cached(
            "UPDATE deliveries SET lease_until_ms = ?3, due_ms = ?3
             WHERE delivery_id = ?1 AND lease_token = ?2 AND status = 'pending'",
        )?
        .execute(params![lease.delivery_id, lease.token, until])?;
    Ok(changed == 1)
}

/// [`Queue::replay`] at `now`.
pub(super) fn replay(
    conn: &Connection,
    delivery_id: &str,
    now: i64,
) -> Result<ReplayOutcome, StoreError> {
    let status: Option<String> = conn
        .prepare_cached("SELECT status FROM deliveries WHERE delivery_id = ?1")?
        .query_row([delivery_id], |r| r.get("status"))
        .optional()?;
    match status.as_deref() {
        None => Ok(ReplayOutcome::NotFound),
        Some("dead") => {
            let line: Option<Line> = optional_row(
                conn,
                "UPDATE deliveries SET status = 'pending', next_attempt_ms = ?2, due_ms = ?2,
                        lease_until_ms = 0, budget_attempts = attempts, budget_since_ms = ?2,
                        updated_ms = ?2
                 WHERE delivery_id = ?1
                 RETURNING connector, order_key",
                params![delivery_id, now],
            )?;
            if let Some(line) = line {
                // Pending again, it holds its line: the head is now the first of the line.
                conn.prepare_cached(
                    "UPDATE deliveries SET ready = 0
                     WHERE connector = ?1 AND order_key = ?2 AND ready = 1",
                )?
                .execute(params![line.connector, line.order_key])?;
                promote_head(conn, &line.connector, &line.order_key)?;
            }
            Ok(ReplayOutcome::Replayed)
        }
        Some(other) => Ok(ReplayOutcome::NotDead(other.to_string())),
    }
}

/// [`Queue::recover`] at `now`.
fn recover(conn: &Connection, tracked: &[String], now: i64) -> Result<usize, StoreError> {
    let parked = conn.execute(
        "UPDATE deliveries SET status = 'dead', ready = 0, lease_until_ms = 0, lease_token = NULL, updated_ms = ?2,
                last_error = ?3
         WHERE lease_until_ms > 0 AND status = 'pending' AND event = 'created'
           AND connector IN (SELECT value FROM json_each(?1))",
        params![json_list(tracked), now, INTERRUPTED_CREATED],
    )?;
    // Any other `created` cut off mid-send may have opened its ticket: its connector looks
    // it up before sending again (or its target dedupes creates by key).
    conn.execute(
        "UPDATE deliveries SET lease_until_ms = 0, lease_token = NULL, due_ms = next_attempt_ms,
                outcome_unknown = outcome_unknown OR event = 'created'
         WHERE lease_until_ms > 0 AND status = 'pending'",
        [],
    )?;
    Ok(parked)
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use crate::model::AttemptOutcome;
    use crate::store::{AttemptRecord, NextStep, Store};

    const LEASE: i64 = 30_000;

    fn record(attempt: u32, outcome: AttemptOutcome) -> AttemptRecord {
        AttemptRecord {
            attempt,
            started_at_ms: 0,
            latency_ms: 5,
            status_code: Some(500),
            error: None,
            response_body: None,
            outcome,
            lookup: None,
            outcome_unknown: false,
        }
    }

    fn ids(leased: &[LeasedDelivery]) -> Vec<&str> {
        leased.iter().map(|d| d.id.as_str()).collect()
    }

    fn lease(delivery_id: &str, token: &str) -> Lease {
        Lease {
            delivery_id: delivery_id.into(),
            token: token.into(),
        }
    }

    fn finish(db: &TestDb, d: &LeasedDelivery, next: NextStep, now: i64) -> bool {
        let outcome = match next {
            NextStep::Delivered => AttemptOutcome::Delivered,
            NextStep::RetryAt { .. } => AttemptOutcome::Retry,
            NextStep::Dead { .. } => AttemptOutcome::Dead,
        };
        let attempt = Attempted {
            lease: lease(&d.id, &d.lease_token),
            record: record(d.attempts + 1, outcome),
            next,
            ticket: None,
        };
        record_attempt(&db.conn, &attempt, now).unwrap()
    }

    #[test]
    fn an_update_waits_while_its_created_is_pending_or_dead_and_goes_once_it_is_delivered() {
        let db = TestDb::new();
        let route = route("jira", "k", None);
        let created = db.deliver_one(incident("A").routed(&route), 1_000);
        let updated = db.deliver_one(incident("B").routed(&route), 1_001);
        // Another ticket's delivery is not held up.
        let other = db.deliver_one(incident("C").routed(&route_other()), 1_002);

        let first = lease_due(&db.conn, 10, LEASE, &[], 2_000).unwrap();
        assert_eq!(ids(&first), [created.as_str(), other.as_str()]);
        assert_eq!(next_due_ms(&db.conn, &[]).unwrap(), Some(2_000 + LEASE));

        // Created fails and is given up on: the update still waits (no ticket to update).
        assert!(finish(
            &db,
            &first[0],
            NextStep::Dead {
                reason: "HTTP 400".into()
            },
            2_100
        ));
        assert_eq!(db.status(&created), "dead");
        assert!(finish(&db, &first[1], NextStep::Delivered, 2_101));
        assert!(
            lease_due(&db.conn, 10, LEASE, &[], 100_000)
                .unwrap()
                .is_empty()
        );

        // Replayed, it goes first again; delivered, the update follows.
        assert_eq!(
            replay(&db.conn, &created, 100_001).unwrap(),
            ReplayOutcome::Replayed
        );
        let again = lease_due(&db.conn, 10, LEASE, &[], 100_002).unwrap();
        assert_eq!(ids(&again), [created.as_str()]);
        assert_eq!(again[0].budget_attempts, 1);
        assert!(finish(&db, &again[0], NextStep::Delivered, 100_003));
        let then = lease_due(&db.conn, 10, LEASE, &[], 100_004).unwrap();
        assert_eq!(ids(&then), [updated.as_str()]);
        assert_eq!(then[0].event, Event::Updated);
    }

    /// `ready` is exactly "pending and first of its line among those holding it": what the
    /// lease query trusts instead of checking the rule row by row.
    fn assert_ready_is_the_rule(db: &TestDb) {
        let wrong: i64 = db
            .conn
            .query_row(
                concat!(
                    "SELECT COUNT(*) FROM deliveries d WHERE d.ready != (d.status = 'pending'
                     AND NOT EXISTS (SELECT 1 FROM deliveries e WHERE ",
                    waits_behind!(),
                    "))"
                ),
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(
            wrong, 0,
            "deliveries whose ready flag disagrees with the rule"
        );
    }

    #[test]
    fn a_replayed_dead_update_goes_back_ahead_of_the_updates_behind_it() {
        let db = TestDb::new();
        let route = route("jira", "k", None);
        let created = db.deliver_one(incident("A").routed(&route), 1_000);
        let first_update = db.deliver_one(incident("B").routed(&route), 1_001);
        let second_update = db.deliver_one(incident("C").routed(&route), 1_002);
        assert_ready_is_the_rule(&db);
        let c = lease_due(&db.conn, 10, LEASE, &[], 2_000).unwrap();
        assert_eq!(ids(&c), [created.as_str()]);
        assert!(finish(&db, &c[0], NextStep::Delivered, 2_001));
        assert_ready_is_the_rule(&db);
        let b = lease_due(&db.conn, 10, LEASE, &[], 2_002).unwrap();
        assert_eq!(ids(&b), [first_update.as_str()]);
        // A dead update does not hold its line: the next one may go.
        let dead = NextStep::Dead {
            reason: "HTTP 400".into(),
        };
        assert!(finish(&db, &b[0], dead, 2_003));
        assert_ready_is_the_rule(&db);
        // Replayed before the next one went, the first update is first again.
        assert_eq!(
            replay(&db.conn, &first_update, 2_004).unwrap(),
            ReplayOutcome::Replayed
        );
        assert_ready_is_the_rule(&db);
        let again = lease_due(&db.conn, 10, LEASE, &[], 2_005).unwrap();
        assert_eq!(ids(&again), [first_update.as_str()]);
        assert!(finish(&db, &again[0], NextStep::Delivered, 2_006));
        let last = lease_due(&db.conn, 10, LEASE, &[], 2_007).unwrap();
        assert_eq!(ids(&last), [second_update.as_str()]);
        assert_ready_is_the_rule(&db);
    }

    #[test]
    fn a_busy_connector_and_leases_under_way_are_skipped_and_their_time_is_known() {
        let db = TestDb::new();
        let jira = route("jira", "k", None);
        let held = db.deliver_one(incident("A").routed(&jira), 1_000);
        let chat = db.deliver_one(incident("B").routed(&route_other()), 1_001);
        // Busy: jira's delivery stays; chat's goes.
        let first = lease_due(&db.conn, 10, LEASE, &["jira".into()], 2_000).unwrap();
        assert_eq!(ids(&first), [chat.as_str()]);
        assert_eq!(
            next_due_ms(&db.conn, &["jira".into()]).unwrap(),
            Some(2_000 + LEASE)
        );
        assert_eq!(next_due_ms(&db.conn, &[]).unwrap(), Some(1_000));
        // A lease under way is due again only when it runs out.
        assert!(
            lease_due(&db.conn, 10, LEASE, &[], 2_001)
                .unwrap()
                .iter()
                .all(|d| d.id == held)
        );
        assert!(
            lease_due(&db.conn, 10, LEASE, &[], 2_002)
                .unwrap()
                .is_empty()
        );
        // Both leases run out: each is due again, the earlier lease first.
        let expired = lease_due(&db.conn, 10, LEASE, &[], 2_001 + LEASE).unwrap();
        assert_eq!(ids(&expired), [chat.as_str(), held.as_str()]);
    }

    #[test]
    fn a_file_from_before_the_ready_column_is_brought_up_to_date() {
        let db = TestDb::new();
        let route = route("jira", "k", None);
        let created = db.deliver_one(incident("A").routed(&route), 1_000);
        let update = db.deliver_one(incident("B").routed(&route), 1_001);
        // The file as the previous version wrote it: no queue columns, no queue indexes.
        db.exec(
            "DROP INDEX deliveries_ready; DROP INDEX deliveries_blocking; DROP INDEX deliveries_leased;
             ALTER TABLE deliveries DROP COLUMN ready; ALTER TABLE deliveries DROP COLUMN due_ms;",
        );
        super::super::migrate(&db.conn).unwrap();
        assert_ready_is_the_rule(&db);
        let first = lease_due(&db.conn, 10, LEASE, &[], 2_000).unwrap();
        assert_eq!(ids(&first), [created.as_str()]);
        assert!(finish(&db, &first[0], NextStep::Delivered, 2_001));
        assert_eq!(
            ids(&lease_due(&db.conn, 10, LEASE, &[], 2_002).unwrap()),
            [update.as_str()]
        );
    }

    fn route_other() -> crate::store::Route {
        route("chat", "k", None)
    }

    #[test]
    fn a_retry_holds_its_followers_until_it_is_done() {
        let db = TestDb::new();
        let route = route("jira", "k", None);
        let created = db.deliver_one(incident("A").routed(&route), 1_000);
        db.ingest_one(incident("B").routed(&route), 1_001);
        let first = lease_due(&db.conn, 10, LEASE, &[], 2_000).unwrap();
        assert!(finish(
            &db,
            &first[0],
            NextStep::RetryAt { at_ms: 5_000 },
            2_001
        ));
        assert!(
            lease_due(&db.conn, 10, LEASE, &[], 4_999)
                .unwrap()
                .is_empty()
        );
        assert_eq!(next_due_ms(&db.conn, &[]).unwrap(), Some(5_000));
        let retry = lease_due(&db.conn, 10, LEASE, &[], 5_000).unwrap();
        assert_eq!(ids(&retry), [created.as_str()]);
        assert_eq!(retry[0].attempts, 1);
        // A busy connector's deliveries are left alone.
        assert!(
            lease_due(&db.conn, 10, LEASE, &["jira".into()], 100_000)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_stale_lease_token_cannot_record_extend_or_release() {
        let db = TestDb::new();
        let id = db.deliver_one(incident("A").routed(&route("jira", "k", None)), 1_000);
        let stale = lease_due(&db.conn, 10, LEASE, &[], 2_000)
            .unwrap()
            .remove(0);
        // Held: nobody else takes it until the lease ends.
        assert!(
            lease_due(&db.conn, 10, LEASE, &[], 2_000 + LEASE - 1)
                .unwrap()
                .is_empty()
        );
        // The lease ran out; another worker took the delivery.
        let fresh = lease_due(&db.conn, 10, LEASE, &[], 2_000 + LEASE)
            .unwrap()
            .remove(0);
        assert_eq!(fresh.id, id);
        assert_ne!(fresh.lease_token, stale.lease_token);

        let stale_lease = lease(&id, &stale.lease_token);
        assert!(!extend_lease(&db.conn, &stale_lease, 999_999).unwrap());
        assert!(!finish(&db, &stale, NextStep::Delivered, 40_000));
        assert_eq!(db.status(&id), "pending");
        assert_eq!(db.count("attempts"), 0);

        let fresh_lease = lease(&id, &fresh.lease_token);
        assert!(extend_lease(&db.conn, &fresh_lease, 99_000).unwrap());
        assert!(finish(&db, &fresh, NextStep::Delivered, 40_001));
        assert_eq!(db.status(&id), "delivered");
        assert_eq!(db.count("attempts"), 1);
        // Recorded once: the same token cannot record again.
        assert!(!finish(&db, &fresh, NextStep::Delivered, 40_002));
        assert_eq!(db.count("attempts"), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn through_the_store_a_stale_lease_is_refused_and_release_needs_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("gateway.db")).unwrap();
        store
            .ingest(
                "src".into(),
                None,
                vec![incident("A").routed(&route("jira", "k", None))],
            )
            .await
            .unwrap();
        // A zero-length lease ends at once: the next lease_due takes the delivery again.
        let stale = store.lease_due(10, 0, vec![]).await.unwrap().remove(0);
        let fresh = store.lease_due(10, LEASE, vec![]).await.unwrap().remove(0);
        assert_eq!(stale.id, fresh.id);
        store
            .release(vec![(stale.id.clone(), stale.lease_token.clone())])
            .await
            .unwrap();
        assert!(store.lease_due(10, LEASE, vec![]).await.unwrap().is_empty());
        let recorded = store
            .record_attempt(
                stale.id.clone(),
                stale.lease_token.clone(),
                record(1, AttemptOutcome::Delivered),
                NextStep::Delivered,
                None,
            )
            .await
            .unwrap();
        assert!(!recorded);
        assert!(
            !store
                .extend_lease(stale.id.clone(), stale.lease_token.clone(), LEASE)
                .await
                .unwrap()
        );
        store
            .release(vec![(fresh.id.clone(), fresh.lease_token.clone())])
            .await
            .unwrap();
        let back = store.lease_due(10, LEASE, vec![]).await.unwrap();
        assert_eq!(back.len(), 1);
        let view = store.delivery(fresh.id.clone()).await.unwrap().unwrap();
        assert_eq!(view.status, "pending");
        assert_eq!(view.attempt_count, 0);
    }

    #[test]
    fn recovery_parks_interrupted_created_requests_of_tracked_connectors() {
        let db = TestDb::new();
        let jira = db.deliver_one(incident("A").routed(&route("jira", "k", None)), 1_000);
        let chat = db.deliver_one(incident("B").routed(&route("chat", "k", None)), 1_000);
        assert_eq!(lease_due(&db.conn, 10, LEASE, &[], 2_000).unwrap().len(), 2);
        assert_eq!(recover(&db.conn, &["jira".into()], 3_000).unwrap(), 1);
        assert_eq!(db.status(&jira), "dead");
        assert_eq!(db.status(&chat), "pending");
        let due = lease_due(&db.conn, 10, LEASE, &[], 3_001).unwrap();
        assert_eq!(ids(&due), [chat.as_str()]);
    }

    /// Leasing, the next due time, queueing and moving a line on are index seeks, whatever
    /// the queue holds: no step reads the deliveries table or an index from end to end.
    #[test]
    fn the_queue_answers_by_index_seeks_never_by_scanning_deliveries() {
        let db = TestDb::new();
        for (name, sql, index) in [
            ("due heads", DUE_HEADS, "deliveries_ready"),
            ("next due", NEXT_DUE, "deliveries_ready"),
            ("ready connectors", READY_CONNECTORS, "deliveries_ready"),
            ("promote head", PROMOTE_HEAD, "deliveries_blocking"),
            ("insert", INSERT_DELIVERY, "deliveries_blocking"),
            ("newest of a line", NEWEST_OF_LINE, "deliveries_blocking"),
        ] {
            let plan = plan(&db.conn, sql);
            println!("{name}:\n{plan}\n");
            assert!(
                plan.contains(&format!("USING INDEX {index}"))
                    || plan.contains(&format!("USING COVERING INDEX {index}")),
                "{name}: {plan}"
            );
            for line in plan.lines() {
                assert!(
                    !line.contains("SCAN deliveries") || line.contains("INDEX"),
                    "{name} scans the table: {plan}"
                );
                assert!(
                    !line.contains("SCAN") || !line.contains("INDEX") || line.contains('('),
                    "{name} walks a whole index: {plan}"
                );
            }
        }
    }

    /// What each queue step reads with `backlog` deliveries pending for a hanging connector
    /// and as many delivered: (lease, record, next due, queue one more).
    fn pages_per_step(backlog: usize) -> [i64; 4] {
        let db = TestDb::new();
        db.exec("BEGIN");
        for i in 0..backlog {
            let id = format!("hang-{i}");
            db.deliver_one(incident(&id).routed(&route("hanging", &id, None)), 1_000);
            let done = format!("done-{i}");
            let d = db.deliver_one(incident(&done).routed(&route("fast", &done, None)), 1_000);
            db.exec(&format!(
                "UPDATE deliveries SET status = 'delivered', ready = 0, due_ms = 0
                 WHERE delivery_id = '{d}'"
            ));
        }
        db.exec("COMMIT");
        let wanted = db.deliver_one(incident("next").routed(&route("fast", "next", None)), 2_000);
        pages_read(&db.conn);

        let leased = lease_due(&db.conn, 1, LEASE, &["hanging".into()], 3_000).unwrap();
        let lease_pages = pages_read(&db.conn);
        assert_eq!(ids(&leased), [wanted.as_str()]);
        assert!(finish(
            &db,
            &leased[0],
            NextStep::RetryAt { at_ms: 9_000 },
            3_001
        ));
        let record_pages = pages_read(&db.conn);
        assert_eq!(
            next_due_ms(&db.conn, &["hanging".into()]).unwrap(),
            Some(9_000)
        );
        let next_due_pages = pages_read(&db.conn);
        db.deliver_one(
            incident("more").routed(&route("hanging", "more", None)),
            3_002,
        );
        let queue_pages = pages_read(&db.conn);
        [lease_pages, record_pages, next_due_pages, queue_pages]
    }

    /// The queue's shape, not its speed: a hundred times the backlog (pending and done) and
    /// each step reads about the same number of pages; only the B-trees' depth may add one
    /// page per index visited. A scan of the deliveries or of an index would read hundreds.
    #[test]
    fn the_pages_a_queue_step_reads_stay_flat_as_the_backlog_grows_a_hundredfold() {
        let small = pages_per_step(1_000);
        let large = pages_per_step(100_000);
        println!(
            "pages read (lease, record, next due, queue): 1,000 → {small:?}, 100,000 → {large:?}"
        );
        for (step, (s, l)) in ["lease", "record", "next due", "queue"]
            .iter()
            .zip(small.iter().zip(large.iter()))
        {
            assert!(*s > 0, "{step}: no pages counted");
            assert!(
                *l <= s + s / 2 + 8,
                "{step}: {s} pages with 1,000 pending, {l} with 100,000"
            );
        }
    }

    /// SQLite re-plans a statement whose plan it made from a bound value each time that value
    /// changes; the queue's and the tickets' statements (connector, key and time parameters)
    /// were re-planned on every run, a fifth of the writer's time under load. Plans are made
    /// once (the query planner stability guarantee is on), which also makes the plans the
    /// shape test checks the ones that run.
    #[test]
    fn the_stores_statements_are_planned_once_not_on_every_run() {
        let db = TestDb::new();
        for i in 0..20 {
            let id = format!("i{i}");
            let to = route("c", &id, None);
            db.deliver_one(incident_with(&id, Some(1.0), "a").routed(&to), 1_000 + i);
            // Its update waits behind it, and is promoted once the first is delivered.
            db.deliver_one(incident_with(&id, Some(2.0), "b").routed(&to), 1_000 + i);
        }
        for i in 0..10 {
            let leased = lease_due(&db.conn, 1, LEASE, &[], 5_000 + i).unwrap();
            assert!(finish(&db, &leased[0], NextStep::Delivered, 6_000 + i));
            assert!(next_due_ms(&db.conn, &["other".into()]).unwrap().is_some());
        }
        assert_eq!(reprepared(&db.conn), [], "statements planned again");
    }

    /// A route to `connector` under `key` whose incidents wait `window` ms for others.
    fn collecting(connector: &str, key: &str, window: i64) -> crate::store::Route {
        let mut r = route(connector, key, None);
        r.collect_for_ms = Some(window);
        r
    }

    /// The incident ids (and `v` versions, where a body has one) a leased window carries.
    fn carried(d: &LeasedDelivery) -> (Vec<String>, u32) {
        let c = d.collected.as_ref().expect("a collection");
        let ids = c
            .bodies
            .iter()
            .map(|b| {
                let v: serde_json::Value = serde_json::from_str(b).unwrap();
                match v.get("v").and_then(|v| v.as_str()) {
                    Some(version) => format!("{}/{version}", v["incidentId"].as_str().unwrap()),
                    None => v["incidentId"].as_str().unwrap().to_string(),
                }
            })
            .collect();
        (ids, c.count)
    }

    #[test]
    fn a_window_gathers_its_keys_incidents_into_one_delivery_until_it_is_leased() {
        let db = TestDb::new();
        let k = collecting("jira", "k", 1_000);
        let first = db.ingest_one(incident("A").routed(&k), 10_000);
        let window = first.deliveries[0].id.clone();
        assert_eq!(first.deliveries[0].event, Event::Created);
        // B and C join it: the answer names the window's delivery, and none is added.
        for (id, at) in [("B", 10_200), ("C", 10_999)] {
            let joined = db.ingest_one(incident(id).routed(&k), at);
            assert_eq!(joined.deliveries.len(), 1);
            assert_eq!(joined.deliveries[0].id, window, "{id}");
            assert_eq!(joined.deliveries[0].event, Event::Created);
        }
        // Another key has its own window.
        let other = db.deliver_one(
            incident("X").routed(&collecting("jira", "x", 1_000)),
            10_500,
        );
        assert_eq!(db.count("deliveries"), 2);
        // Due when the window ends, not before.
        assert!(
            lease_due(&db.conn, 10, LEASE, &[], 10_999)
                .unwrap()
                .is_empty()
        );
        assert_eq!(next_due_ms(&db.conn, &[]).unwrap(), Some(11_000));
        let leased = lease_due(&db.conn, 10, LEASE, &[], 11_000).unwrap();
        assert_eq!(ids(&leased), [window.as_str()]);
        assert_eq!(
            carried(&leased[0]),
            (vec!["A".into(), "B".into(), "C".into()], 3)
        );
        // Leased, the window is closed: D starts the ticket's next one (an `updated`, due a
        // window later, behind the leased `created`).
        let d = db.ingest_one(incident("D").routed(&k), 11_100);
        let next = d.deliveries[0].id.clone();
        assert_ne!(next, window);
        assert_eq!(d.deliveries[0].event, Event::Updated);
        assert_ready_is_the_rule(&db);
        assert!(finish(&db, &leased[0], NextStep::Delivered, 11_200));
        let later = lease_due(&db.conn, 10, LEASE, &[], 12_099).unwrap();
        assert_eq!(ids(&later), [other.as_str()]);
        assert_eq!(carried(&later[0]), (vec!["X".into()], 1));
        let last = lease_due(&db.conn, 10, LEASE, &[], 12_100).unwrap();
        assert_eq!(ids(&last), [next.as_str()]);
        assert_eq!(carried(&last[0]), (vec!["D".into()], 1));
        // A route without a window queues at once and carries no collection.
        let plain = db.deliver_one(incident("P").routed(&route("jira", "p", None)), 13_000);
        let now = lease_due(&db.conn, 10, LEASE, &[], 13_000).unwrap();
        assert_eq!(ids(&now), [plain.as_str()]);
        assert!(now[0].collected.is_none());
    }

    #[test]
    fn a_full_window_closes_and_the_next_incident_opens_another() {
        let db = TestDb::new();
        let k = collecting("jira", "k", 1_000);
        let window = db.ingest_one(incident("I0").routed(&k), 10_000).deliveries[0]
            .id
            .clone();
        for i in 1..COLLECTED_SHOWN {
            let joined = db.ingest_one(incident(&format!("I{i}")).routed(&k), 10_001);
            assert_eq!(joined.deliveries[0].id, window, "incident {i}");
        }
        // Every incident a window takes is sent: the 101st goes to the next window.
        let next = db.ingest_one(incident("LAST").routed(&k), 10_002);
        assert_ne!(next.deliveries[0].id, window);
        let leased = lease_due(&db.conn, 10, LEASE, &[], 11_000).unwrap();
        assert_eq!(ids(&leased), [window.as_str()]);
        let (carried_ids, count) = carried(&leased[0]);
        assert_eq!((carried_ids.len(), count), (100, 100));
    }

    #[test]
    fn a_new_version_in_a_window_replaces_its_incident_where_it_stands() {
        let db = TestDb::new();
        let k = collecting("jira", "k", 1_000);
        let window = db.deliver_one(incident_with("A", Some(1.0), "a1").routed(&k), 1_000);
        db.ingest_one(incident_with("B", Some(1.0), "b1").routed(&k), 1_100);
        for (id, body) in [("A", "a2"), ("B", "b2")] {
            let again = db.ingest_one(incident_with(id, Some(2.0), body).routed(&k), 1_200);
            assert_eq!(again.deliveries[0].id, window);
        }
        let leased = lease_due(&db.conn, 10, LEASE, &[], 2_000).unwrap();
        assert_eq!(carried(&leased[0]), (vec!["A/a2".into(), "B/b2".into()], 2));
        // The delivery keeps the version it opened with; `collected` has the latest.
        assert!(
            leased[0].incident_body.contains("a1"),
            "{}",
            leased[0].incident_body
        );
        assert_eq!(db.count("deliveries"), 1);
    }

    #[test]
    fn a_window_ends_when_anything_is_queued_behind_it_and_shows_what_it_holds() {
        let db = TestDb::new();
        let k = collecting("jira", "k", 1_000);
        let window = db.deliver_one(incident("A").routed(&k), 1_000);
        db.ingest_one(incident("B").routed(&k), 1_100);
        // A is completed: B keeps the ticket open, so a note is queued behind the window.
        let request = crate::store::Completing {
            incident_id: "A".into(),
            caller: crate::store::Caller::Source("src".into()),
            reason_code: "other".into(),
            notes: None,
            skipping: vec![],
            upstream: vec![],
            close_policies: Default::default(),
            takes_notes: vec!["jira".into()],
            completes_all: false,
        };
        super::super::tickets::complete(&db.conn, &request, 1_200).unwrap();
        // C arrives after the note: it is not put before it, in a window of its own.
        let c = db.ingest_one(incident("C").routed(&k), 1_300);
        assert_ne!(c.deliveries[0].id, window);
        assert_eq!(db.count("deliveries"), 3);
        let leased = lease_due(&db.conn, 10, LEASE, &[], 2_000).unwrap();
        assert_eq!(carried(&leased[0]), (vec!["A".into(), "B".into()], 2));
        // The admin view of B shows the delivery that carries it.
        let view = super::super::views::incident_view(&db.conn, "B")
            .unwrap()
            .unwrap();
        let shown: Vec<&str> = view.connectors["jira"]
            .deliveries
            .iter()
            .map(|d| d.id.as_str())
            .collect();
        assert_eq!(shown, [window.as_str()]);
    }

    #[test]
    fn a_file_from_before_collection_windows_is_brought_up_to_date() {
        let db = TestDb::new();
        let earlier = db.deliver_one(incident("A").routed(&route("jira", "k", None)), 1_000);
        db.exec(
            "DROP TABLE collected_incidents;
             ALTER TABLE deliveries DROP COLUMN collecting;
             ALTER TABLE deliveries DROP COLUMN collected;",
        );
        super::super::migrate(&db.conn).unwrap();
        let k = collecting("jira", "k", 1_000);
        let window = db.deliver_one(incident("B").routed(&k), 1_100);
        assert_eq!(
            db.ingest_one(incident("C").routed(&k), 1_200).deliveries[0].id,
            window
        );
        let first = lease_due(&db.conn, 10, LEASE, &[], 5_000).unwrap();
        assert_eq!(ids(&first), [earlier.as_str()]);
        assert!(first[0].collected.is_none());
        assert!(finish(&db, &first[0], NextStep::Delivered, 5_001));
        let next = lease_due(&db.conn, 10, LEASE, &[], 5_002).unwrap();
        assert_eq!(carried(&next[0]), (vec!["B".into(), "C".into()], 2));
    }

    #[test]
    fn a_window_delivery_reads_its_incidents_by_index() {
        let db = TestDb::new();
        let plan = plan(&db.conn, COLLECTED_BODIES);
        assert!(
            plan.contains("USING INDEX") || plan.contains("USING PRIMARY KEY"),
            "{plan}"
        );
        assert!(!plan.contains("SCAN"), "{plan}");
    }
}
