//! Tickets: which ticket an incident joins (the aggregation window), completion through the
//! back channel (close the tickets, queue `completed`), and an admin's resolve of a dead
//! `created`.

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};

use super::{Sqlite, optional_row, queue, rows, sla};
use crate::model::{Event, Purpose, now_ms, rfc3339};
use crate::store::rules::{
    Attached, OpenTicket, RESOLVED_BY_ADMIN, completion_new, completion_news, completion_old,
    reopens_closed_since, resolvable_ticket, window_until,
};
use crate::store::{
    Caller, CompleteOutcome, Completing, DeliveryRef, ResolveOutcome, Route, StoreError, Tickets,
};

#[async_trait]
impl Tickets for Sqlite {
    async fn complete(&self, request: Completing) -> Result<CompleteOutcome, StoreError> {
        self.write(move |conn| complete(conn, &request, now_ms()))
            .await
    }

    async fn resolve(
        &self,
        delivery_id: String,
        ticket_id: String,
        ticket_url: Option<String>,
    ) -> Result<ResolveOutcome, StoreError> {
        self.write(move |conn| {
            resolve(
                conn,
                &delivery_id,
                &ticket_id,
                ticket_url.as_deref(),
                now_ms(),
            )
        })
        .await
    }

    async fn unnumbered_tickets(
        &self,
        connector: String,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(UNNUMBERED_TICKETS)?;
            let rows = stmt
                .query_map([&connector], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn number_ticket(&self, ticket_seq: i64, number: String) -> Result<bool, StoreError> {
        self.write(move |conn| {
            Ok(conn.prepare_cached(NUMBER_TICKET)?.execute(params![
                ticket_seq,
                number,
                now_ms()
            ])? == 1)
        })
        .await
    }
}

/// The open tickets of a connector without a ticket id yet (a mailed ticket before its
/// system's acknowledgement is read).
const UNNUMBERED_TICKETS: &str = "SELECT ticket_seq, correlation_key FROM tickets
     WHERE connector = ?1 AND status = 'open' AND ticket_id IS NULL ORDER BY ticket_seq";

/// Sets a ticket's number, never over one it has.
const NUMBER_TICKET: &str = "UPDATE tickets SET ticket_id = ?2, updated_ms = ?3 WHERE ticket_seq = ?1 AND ticket_id IS NULL";

/// The open ticket of `connector` an incident is on. The incident's own rows of
/// `ticket_incidents` drive the join (CROSS JOIN keeps that order): led by `tickets`, SQLite
/// would walk every ticket of the connector.
pub(super) const OWN_TICKET: &str = "SELECT t.ticket_seq FROM ticket_incidents ti
     CROSS JOIN tickets t ON t.ticket_seq = ti.ticket_seq
     WHERE ti.incident_id = ?1 AND t.connector = ?2 AND t.status = 'open'
     ORDER BY t.ticket_seq DESC LIMIT 1";

/// The newest open ticket of `connector` with correlation key `key` whose window is open.
pub(super) const OPEN_TICKET_BY_KEY: &str = "SELECT ticket_seq FROM tickets
     WHERE connector = ?1 AND correlation_key = ?2 AND status = 'open'
       AND (window_until_ms IS NULL OR window_until_ms > ?3)
     ORDER BY ticket_seq DESC LIMIT 1";

/// The newest ticket of `connector` with key `key` that closed at `?3` or later: the one an
/// incident of the key reopens.
pub(super) const CLOSED_TICKET_BY_KEY: &str = "SELECT ticket_seq FROM tickets
     WHERE connector = ?1 AND correlation_key = ?2 AND status = 'completed' AND closed_ms >= ?3
     ORDER BY ticket_seq DESC LIMIT 1";

/// How many incidents of a ticket are still open: from the ticket's own rows (CROSS JOIN
/// keeps that order; SQLite would otherwise walk every open incident, one completion costing
/// 36 ms at 85,000 open).
const OPEN_INCIDENTS_ON: &str = "SELECT COUNT(*) FROM ticket_incidents ti
     CROSS JOIN incidents i ON i.incident_id = ti.incident_id
     WHERE ti.ticket_seq = ?1 AND i.status = 'open'";

/// A ticket's other open incidents, which a target closing it completes along (from the
/// incident's own rows, then its ticket's, never a walk of the open incidents).
const ALONG_ON_TICKET: &str = "SELECT DISTINCT other.incident_id, i.version_id
     FROM ticket_incidents mine
     CROSS JOIN tickets t ON t.ticket_seq = mine.ticket_seq
     CROSS JOIN ticket_incidents other ON other.ticket_seq = t.ticket_seq
     CROSS JOIN incidents i ON i.incident_id = other.incident_id
     WHERE mine.incident_id = ?1 AND t.connector = ?2 AND t.status = 'open'
       AND i.status = 'open' AND other.incident_id <> ?1
     ORDER BY other.incident_id";

/// Whether connector `?2` has a ticket with the incident on it (any status).
pub(super) const HAS_TICKET_FOR: &str = "SELECT 1 FROM ticket_incidents ti
     CROSS JOIN tickets t ON t.ticket_seq = ti.ticket_seq
     WHERE ti.incident_id = ?1 AND t.connector = ?2 LIMIT 1";

/// The incident's open tickets, oldest first.
pub(super) const OPEN_TICKETS_OF: &str = "SELECT t.ticket_seq, t.connector FROM ticket_incidents ti
     CROSS JOIN tickets t ON t.ticket_seq = ti.ticket_seq
     WHERE ti.incident_id = ?1 AND t.status = 'open' ORDER BY t.ticket_seq";

/// The ticket an incident joins for one connector: the one it is already on, else the open
/// one with its key whose aggregation window has not ended, else a new one — which starts
/// the route's SLA clocks, if it has any. (`is_new`: the incident was stored for the first
/// time just now, so it is on no ticket yet; `account_id`: its account, kept with the clocks
/// of a ticket it opens.)
pub(super) fn attach_to_ticket(
    conn: &Connection,
    incident_id: &str,
    account_id: Option<i64>,
    is_new: bool,
    route: &Route,
    now: i64,
) -> Result<Attached, StoreError> {
    // A new version of an incident stays on the ticket it is already on (whatever its key
    // renders to now, and however long ago the ticket opened); the window only limits other
    // incidents joining.
    let own: Option<i64> = if is_new {
        None
    } else {
        conn.prepare_cached(OWN_TICKET)?
            .query_row(params![incident_id, route.connector], |r| {
                r.get("ticket_seq")
            })
            .optional()?
    };
    let open: Option<i64> = match own {
        Some(seq) => Some(seq),
        None => conn
            .prepare_cached(OPEN_TICKET_BY_KEY)?
            .query_row(params![route.connector, route.key, now], |r| {
                r.get("ticket_seq")
            })
            .optional()?,
    };
    // No open ticket: one of the key closed within `reopen_within` opens again.
    let reopened: Option<i64> = match (open, reopens_closed_since(now, route.reopen_within_ms)) {
        (None, Some(since)) => conn
            .prepare_cached(CLOSED_TICKET_BY_KEY)?
            .query_row(params![route.connector, route.key, since], |r| {
                r.get("ticket_seq")
            })
            .optional()?,
        _ => None,
    };
    if let Some(ticket_seq) = reopened {
        conn.prepare_cached(
            "UPDATE tickets SET status = 'open', closed_ms = NULL, window_until_ms = ?2, updated_ms = ?3
             WHERE ticket_seq = ?1",
        )?
        .execute(params![
            ticket_seq,
            window_until(now, route.aggregate_for_ms),
            now
        ])?;
    }
    let attached = match (open, reopened) {
        (Some(ticket_seq), _) => Attached {
            ticket_seq,
            event: Event::Updated,
            purpose: Purpose::Event,
        },
        (None, Some(ticket_seq)) => Attached {
            ticket_seq,
            event: Event::Updated,
            purpose: Purpose::Reopen,
        },
        (None, None) => {
            conn.prepare_cached(
                "INSERT INTO tickets (connector, correlation_key, status, opened_ms, window_until_ms, updated_ms)
                 VALUES (?1, ?2, 'open', ?3, ?4, ?3)",
            )?
            .execute(params![
                route.connector,
                route.key,
                now,
                window_until(now, route.aggregate_for_ms)
            ])?;
            let ticket_seq = conn.last_insert_rowid();
            if let Some(start) = &route.sla {
                sla::start(conn, ticket_seq, start, incident_id, account_id, now)?;
            }
            Attached {
                ticket_seq,
                event: Event::Created,
                purpose: Purpose::Event,
            }
        }
    };
    conn.prepare_cached(
        "INSERT OR IGNORE INTO ticket_incidents (ticket_seq, incident_id) VALUES (?1, ?2)",
    )?
    .execute(params![attached.ticket_seq, incident_id])?;
    Ok(attached)
}

from_row! {
    /// What completion needs to know of an incident.
    struct IncidentState {
        status: String,
        status_change_ms: i64,
        version_id: i64,
        source: String,
    }
}

impl super::FromRow for OpenTicket {
    fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(OpenTicket {
            ticket_seq: r.get("ticket_seq")?,
            connector: r.get("connector")?,
        })
    }
}

/// A token completes only what its holder has: a source its own incidents, a connector's
/// target those it has a ticket for. An incident the caller does not have is, for it, not
/// there.
fn entitled(
    conn: &Connection,
    incident_id: &str,
    source: &str,
    caller: &Caller,
) -> Result<bool, StoreError> {
    Ok(match caller {
        Caller::Source(name) => name == source,
        Caller::Connector(name) => conn
            .prepare_cached(HAS_TICKET_FOR)?
            .exists(params![incident_id, name])?,
    })
}

/// [`Tickets::complete`] at `now`, in the caller's transaction.
pub(super) fn complete(
    conn: &Connection,
    request: &Completing,
    now: i64,
) -> Result<CompleteOutcome, StoreError> {
    let incident_id = request.incident_id.as_str();
    let state: Option<IncidentState> = optional_row(
        conn,
        "SELECT status, status_change_ms, version_id, source FROM incidents
         WHERE incident_id = ?1",
        [incident_id],
    )?;
    let Some(state) = state else {
        return Ok(CompleteOutcome::NotFound);
    };
    if !entitled(conn, incident_id, &state.source, &request.caller)? {
        return Ok(CompleteOutcome::NotFound);
    }
    if state.status == "completed" {
        return Ok(CompleteOutcome::AlreadyCompleted {
            since: rfc3339(state.status_change_ms),
        });
    }
    // A target closing its ticket completes the ticket's other open incidents with this one
    // (`on_target_close = "complete_all"`): found before the ticket closes.
    let mut along: Vec<(String, i64)> = Vec::new();
    if let (true, Caller::Connector(connector)) = (request.completes_all, &request.caller) {
        let mut stmt = conn.prepare_cached(ALONG_ON_TICKET)?;
        along = stmt
            .query_map(params![incident_id, connector], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<Result<_, _>>()?;
    }
    let mut deliveries = Vec::new();
    complete_one(
        conn,
        incident_id,
        state.version_id,
        request,
        now,
        &mut deliveries,
    )?;
    for (other, version_id) in &along {
        complete_one(conn, other, *version_id, request, now, &mut deliveries)?;
    }
    Ok(CompleteOutcome::Completed {
        old: completion_old(state.status_change_ms),
        new: completion_new(request, now),
        deliveries,
        along: along.into_iter().map(|(id, _)| id).collect(),
    })
}

/// Completes one open incident: its open tickets close or take a note, by their connectors'
/// policies, and the deliveries that tell the targets are queued.
fn complete_one(
    conn: &Connection,
    incident_id: &str,
    version_id: i64,
    request: &Completing,
    now: i64,
    deliveries: &mut Vec<DeliveryRef>,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE incidents SET status = 'completed', reason_code = ?2, notes = ?3,
                status_change_ms = ?4, updated_ms = ?4
         WHERE incident_id = ?1",
    )?
    .execute(params![
        incident_id,
        request.reason_code,
        request.notes,
        now
    ])?;
    let tickets: Vec<OpenTicket> = rows(conn, OPEN_TICKETS_OF, [incident_id])?;
    let mut others_open = Vec::with_capacity(tickets.len());
    for t in &tickets {
        others_open.push(
            conn.prepare_cached(OPEN_INCIDENTS_ON)?
                .query_row([t.ticket_seq], |r| r.get::<_, i64>(0))?,
        );
    }
    let (closing, news) = completion_news(&tickets, &others_open, request);
    // A closed ticket takes no more incidents: the next of its key opens (or reopens) one.
    let mut close = conn.prepare_cached(
        "UPDATE tickets SET status = 'completed', closed_ms = ?2, updated_ms = ?2
         WHERE ticket_seq = ?1",
    )?;
    for ticket_seq in closing {
        close.execute(params![ticket_seq, now])?;
        // Its clocks are met (or stop) now: the watchdog looks at once.
        sla::nudge(conn, ticket_seq, now)?;
    }
    for n in news {
        let id = queue::insert_delivery(
            conn,
            &queue::NewDelivery {
                incident_id,
                version_id,
                connector: &n.connector,
                event: n.event,
                ticket_seq: n.ticket_seq,
                purpose: n.purpose,
                collect_until: None,
            },
            now,
        )?;
        deliveries.push(DeliveryRef {
            id,
            connector: n.connector,
            event: n.event,
        });
    }
    Ok(())
}

from_row! {
    /// What resolve needs to know of a delivery.
    struct DeliveryKind {
        status: String,
        event: String,
        ticket_seq: Option<i64>,
    }
}

/// [`Tickets::resolve`] at `now`, in the caller's transaction.
pub(super) fn resolve(
    conn: &Connection,
    delivery_id: &str,
    ticket_id: &str,
    ticket_url: Option<&str>,
    now: i64,
) -> Result<ResolveOutcome, StoreError> {
    let kind: Option<DeliveryKind> = optional_row(
        conn,
        "SELECT status, event, ticket_seq FROM deliveries WHERE delivery_id = ?1",
        [delivery_id],
    )?;
    let Some(kind) = kind else {
        return Ok(ResolveOutcome::NotFound);
    };
    let Some(ticket_seq) = resolvable_ticket(&kind.status, &kind.event, kind.ticket_seq) else {
        return Ok(ResolveOutcome::NotApplicable(format!(
            "only a dead created delivery can be resolved; this one is a {} {}",
            kind.status, kind.event
        )));
    };
    let line: Option<queue::Line> = optional_row(
        conn,
        "UPDATE deliveries SET status = 'delivered', ready = 0, updated_ms = ?2, last_error = ?3
         WHERE delivery_id = ?1
         RETURNING connector, order_key",
        params![delivery_id, now, RESOLVED_BY_ADMIN],
    )?;
    // The created no longer holds its ticket's line: the updates behind it may go.
    if let Some(line) = line {
        queue::promote_head(conn, &line.connector, &line.order_key)?;
    }
    conn.prepare_cached(
        "UPDATE tickets SET ticket_id = ?2, ticket_url = ?3, updated_ms = ?4 WHERE ticket_seq = ?1",
    )?
    .execute(params![ticket_seq, ticket_id, ticket_url, now])?;
    // The ticket exists in the target after all: as for a delivered `created`.
    sla::created_ok(conn, ticket_seq, now)?;
    Ok(ResolveOutcome::Resolved)
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use crate::store::IngestStatus;

    /// Finding an incident's tickets starts from the incident's own rows, and finding a
    /// ticket by key is one index seek: neither walks the tickets of a connector (which grow
    /// with every incident ever received).
    #[test]
    fn ticket_lookups_seek_by_incident_or_key_never_walk_a_connectors_tickets() {
        let db = TestDb::new();
        for (name, sql) in [
            ("own ticket", OWN_TICKET),
            ("has ticket for", HAS_TICKET_FOR),
            ("open tickets of", OPEN_TICKETS_OF),
        ] {
            let plan = plan(&db.conn, sql);
            let first = plan.lines().next().unwrap_or_default();
            assert!(
                first.starts_with("SEARCH ti USING") && first.contains("(incident_id=?)"),
                "{name}: {plan}"
            );
            assert!(
                plan.contains("SEARCH t USING INTEGER PRIMARY KEY (rowid=?)"),
                "{name}: {plan}"
            );
        }
        let by_key = plan(&db.conn, OPEN_TICKET_BY_KEY);
        assert!(
            by_key.contains("tickets_key (connector=? AND correlation_key=? AND status=?)"),
            "{by_key}"
        );
        let seen = plan(&db.conn, super::super::ingest::SEEN_BEFORE);
        assert!(seen.contains("(incident_id=?)"), "{seen}");
        // Completing: a ticket's open incidents are counted (and found) from its own rows.
        let open_on = plan(&db.conn, OPEN_INCIDENTS_ON);
        assert!(
            open_on
                .lines()
                .next()
                .unwrap_or_default()
                .starts_with("SEARCH ti USING")
                && open_on
                    .contains("SEARCH i USING INDEX sqlite_autoindex_incidents_1 (incident_id=?)"),
            "{open_on}"
        );
        let along = plan(&db.conn, ALONG_ON_TICKET);
        let first = along.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("SEARCH mine USING") && first.contains("(incident_id=?)"),
            "{along}"
        );
        assert!(
            !along.contains("SCAN") && !along.contains("status=?"),
            "{along}"
        );
    }

    /// The ticket (seq, status) a delivery is on.
    fn ticket_of(db: &TestDb, delivery_id: &str) -> (i64, String) {
        db.conn
            .query_row(
                "SELECT t.ticket_seq, t.status FROM deliveries d JOIN tickets t ON t.ticket_seq = d.ticket_seq
                 WHERE d.delivery_id = ?1",
                [delivery_id],
                |r| Ok((r.get("ticket_seq")?, r.get("status")?)),
            )
            .unwrap()
    }

    fn completing(
        incident_id: &str,
        caller: &Caller,
        skipping: &[String],
        upstream: &[String],
    ) -> Completing {
        Completing {
            incident_id: incident_id.into(),
            caller: caller.clone(),
            reason_code: "false_positive".into(),
            notes: Some("checked".into()),
            skipping: skipping.to_vec(),
            upstream: upstream.to_vec(),
            // Closing at once, as these tests check; every policy is in the store contract
            // (tests/store_contract.rs).
            close_policies: [("jira".to_string(), crate::model::ClosePolicy::AtOnce)]
                .into_iter()
                .collect(),
            takes_notes: vec![],
            completes_all: false,
        }
    }

    #[test]
    fn within_the_window_an_incident_joins_the_open_ticket_and_after_it_opens_a_new_one() {
        let db = TestDb::new();
        let jira = route("jira", "host-1", Some(60_000));
        let a = db.ingest_one(incident("A").routed(&jira), 1_000);
        assert_eq!(a.deliveries[0].event, Event::Created);
        let (ticket_a, _) = ticket_of(&db, &a.deliveries[0].id);

        // Same key, 59.999 s later: the same ticket, as an update.
        let b = db.ingest_one(incident("B").routed(&jira), 60_999);
        assert_eq!(b.status, IngestStatus::Accepted);
        assert_eq!(b.deliveries[0].event, Event::Updated);
        assert_eq!(ticket_of(&db, &b.deliveries[0].id).0, ticket_a);

        // Once the window has ended: a new ticket.
        let c = db.ingest_one(incident("C").routed(&jira), 61_000);
        assert_eq!(c.deliveries[0].event, Event::Created);
        let (ticket_c, _) = ticket_of(&db, &c.deliveries[0].id);
        assert_ne!(ticket_c, ticket_a);
        assert_eq!(db.count("tickets"), 2);

        // Another key, or another connector, never joins.
        let d = db.ingest_one(
            incident("D").routed(&route("jira", "host-2", Some(60_000))),
            61_001,
        );
        assert_eq!(d.deliveries[0].event, Event::Created);
        let e = db.ingest_one(
            incident("E").routed(&route("chat", "host-1", Some(60_000))),
            61_002,
        );
        assert_eq!(e.deliveries[0].event, Event::Created);

        // A new version of A stays on A's ticket, window or not.
        let a2 = db.ingest_one(incident_with("A", None, "v2").routed(&jira), 500_000);
        assert_eq!(a2.deliveries[0].event, Event::Updated);
        assert_eq!(ticket_of(&db, &a2.deliveries[0].id).0, ticket_a);
    }

    #[test]
    fn without_a_window_a_ticket_takes_incidents_until_it_is_completed() {
        let db = TestDb::new();
        let route = route("jira", "host-1", None);
        let a = db.ingest_one(incident("A").routed(&route), 1_000);
        let (ticket, _) = ticket_of(&db, &a.deliveries[0].id);
        let b = db.ingest_one(incident("B").routed(&route), 1_000 + 365 * 86_400_000);
        assert_eq!(b.deliveries[0].event, Event::Updated);
        assert_eq!(ticket_of(&db, &b.deliveries[0].id).0, ticket);

        let caller = Caller::Source("src".into());
        complete(&db.conn, &completing("A", &caller, &[], &[]), 2_000).unwrap();
        let c = db.ingest_one(incident("C").routed(&route), 3_000);
        assert_eq!(c.deliveries[0].event, Event::Created);
        assert_ne!(ticket_of(&db, &c.deliveries[0].id).0, ticket);
    }

    #[test]
    fn completion_closes_the_tickets_and_queues_completed_to_their_connectors() {
        let db = TestDb::new();
        let jira = route("jira", "k", None);
        let chat = route("chat", "k", None);
        let mail = route("mail", "k", None);
        let a = db.ingest_one(
            incident("A").routed(&jira).routed(&chat).routed(&mail),
            1_000,
        );
        assert_eq!(a.deliveries.len(), 3);
        db.ingest_one(incident("B").routed(&jira), 1_500);

        let caller = Caller::Source("src".into());
        let skipping = ["mail".to_string()];
        let upstream = ["platform".to_string()];
        let outcome = complete(
            &db.conn,
            &completing("A", &caller, &skipping, &upstream),
            2_000,
        )
        .unwrap();
        let CompleteOutcome::Completed {
            old,
            new,
            deliveries,
            ..
        } = outcome
        else {
            panic!("expected a completion, got {outcome:?}");
        };
        assert_eq!(old["status"], "open");
        assert_eq!(new["status"], "completed");
        assert_eq!(new["reason_code"], "false_positive");
        assert_eq!(new["status_change_time"], rfc3339(2_000));
        let to: Vec<(&str, Event)> = deliveries
            .iter()
            .map(|d| (d.connector.as_str(), d.event))
            .collect();
        assert_eq!(
            to,
            [
                ("jira", Event::Completed),
                ("chat", Event::Completed),
                ("platform", Event::Completed)
            ]
        );
        // Each ticket's `completed` rides on its ticket; the upstream one on the incident.
        assert_eq!(
            ticket_of(&db, &deliveries[0].id),
            ticket_of(&db, &a.deliveries[0].id)
        );
        let upstream_ticket: Option<i64> = db
            .conn
            .query_row(
                "SELECT ticket_seq FROM deliveries WHERE delivery_id = ?1",
                [&deliveries[2].id],
                |r| r.get("ticket_seq"),
            )
            .unwrap();
        assert_eq!(upstream_ticket, None);
        // Every ticket closed, the skipped connector's too.
        assert_eq!(
            db.conn
                .query_row(
                    "SELECT COUNT(*) FROM tickets WHERE status = 'open'",
                    [],
                    |r| r.get::<_, i64>(0)
                )
                .unwrap(),
            0
        );
        let state: (String, Option<String>) = db
            .conn
            .query_row(
                "SELECT status, reason_code FROM incidents WHERE incident_id = 'A'",
                [],
                |r| Ok((r.get("status")?, r.get("reason_code")?)),
            )
            .unwrap();
        assert_eq!(state, ("completed".into(), Some("false_positive".into())));

        // A second completion changes nothing and says since when.
        let again = complete(
            &db.conn,
            &completing("A", &caller, &skipping, &upstream),
            3_000,
        )
        .unwrap();
        let CompleteOutcome::AlreadyCompleted { since } = again else {
            panic!("expected already completed, got {again:?}");
        };
        assert_eq!(since, rfc3339(2_000));
        assert_eq!(db.count("deliveries"), 3 + 1 + 3);
    }

    #[test]
    fn only_the_source_or_a_connector_with_a_ticket_can_complete() {
        let db = TestDb::new();
        db.ingest_one(incident("A").routed(&route("jira", "k", None)), 1_000);
        let none: [String; 0] = [];
        for caller in [
            Caller::Source("other".into()),
            Caller::Connector("chat".into()),
        ] {
            let outcome = complete(&db.conn, &completing("A", &caller, &none, &none), 2_000);
            assert!(matches!(outcome, Ok(CompleteOutcome::NotFound)));
        }
        let missing = complete(
            &db.conn,
            &completing("Z", &Caller::Source("src".into()), &none, &none),
            2_000,
        );
        assert!(matches!(missing, Ok(CompleteOutcome::NotFound)));
        assert_eq!(db.count("deliveries"), 1);

        let jira = Caller::Connector("jira".into());
        let done = complete(&db.conn, &completing("A", &jira, &none, &none), 2_000).unwrap();
        assert!(matches!(done, CompleteOutcome::Completed { .. }));
    }

    #[test]
    fn only_a_dead_created_can_be_resolved() {
        let db = TestDb::new();
        let a = db.ingest_one(incident("A").routed(&route("jira", "k", None)), 1_000);
        let id = &a.deliveries[0].id;
        assert_eq!(
            resolve(&db.conn, id, "JIRA-1", None, 2_000).unwrap(),
            ResolveOutcome::NotApplicable(
                "only a dead created delivery can be resolved; this one is a pending created"
                    .into()
            )
        );
        assert_eq!(
            resolve(&db.conn, "msg_none", "JIRA-1", None, 2_000).unwrap(),
            ResolveOutcome::NotFound
        );
        db.exec("UPDATE deliveries SET status = 'dead'");
        let resolved = resolve(&db.conn, id, "JIRA-1", Some("https://j/1"), 2_000).unwrap();
        assert_eq!(resolved, ResolveOutcome::Resolved);
        assert_eq!(db.status(id), "delivered");
        let ticket_id: Option<String> = db
            .conn
            .query_row("SELECT ticket_id FROM tickets", [], |r| r.get("ticket_id"))
            .unwrap();
        assert_eq!(ticket_id.as_deref(), Some("JIRA-1"));
    }
}
