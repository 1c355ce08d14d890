//! SLA clocks in SQLite: started with their ticket ([`start`], from `tickets`), nudged when
//! the ticket's `created` is delivered or the ticket closes ([`created_ok`], [`nudge`]),
//! deleted with their ticket ([`purge_of`]), read for the watchdog and the admin API, and
//! saved back under their revision with their alerts queued in the same transaction.
//!
//! A nudge bumps the revision as a save does: a watchdog that read the clock before it (and
//! decided without the delivery or the close) then fails its save and looks again, instead of
//! writing over the nudge a next check that may be never.

use async_trait::async_trait;
use rusqlite::types::ToSqlOutput;
use rusqlite::{Connection, Row, ToSql, params};

use super::{FromRow, Sqlite, ingest, rows};
use crate::model::now_ms;
use crate::sla::{Clock, Level, SlaStart};
use crate::store::listing::{self, SLA_CLOCKS_COLUMNS};
use crate::store::{Sla, SlaClockRow, SlaListing, SlaSave, StoreError};

/// The clocks with their tickets; each use adds its WHERE and ORDER BY. Led by the clocks
/// (CROSS JOIN keeps that order): every question starts from them.
const SLA_CLOCKS_FROM: &str =
    "FROM sla_clocks c CROSS JOIN tickets t ON t.ticket_seq = c.ticket_seq";

/// The clocks `tail` (a WHERE and ORDER BY) selects, with their tickets.
fn select(tail: &str) -> String {
    format!("{SLA_CLOCKS_COLUMNS} {SLA_CLOCKS_FROM} {tail}")
}

impl FromRow for SlaClockRow {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        let level: String = r.get("level")?;
        let level = Level::parse(&level).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                2,
                rusqlite::types::Type::Text,
                format!("unknown SLA clock level {level:?}").into(),
            )
        })?;
        Ok(SlaClockRow {
            clock_id: r.get("clock_id")?,
            ticket_seq: r.get("ticket_seq")?,
            level,
            policy: r.get("policy")?,
            clock: r.get("clock")?,
            revision: r.get("revision")?,
            next_check_ms: r.get("next_check_ms")?,
            connector: r.get("connector")?,
            correlation_key: r.get("correlation_key")?,
            ticket_id: r.get("ticket_id")?,
            ticket_url: r.get("ticket_url")?,
            incident_id: r.get("incident_id")?,
            account_id: r.get("account_id")?,
            opened_ms: r.get("opened_ms")?,
            closed_ms: r.get("closed_ms")?,
            created_ok_ms: r.get("created_ok_ms")?,
        })
    }
}

/// A clock bound as its JSON text (serializing it cannot fail in practice; if it did, the
/// statement would fail rather than store something else).
struct ClockJson<'a>(&'a Clock);

impl ToSql for ClockJson<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        serde_json::to_string(self.0)
            .map(ToSqlOutput::from)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
    }
}

/// Clocks due at `?1`, earliest first (the partial `sla_clocks_next_check` index).
const DUE: &str = "WHERE c.next_check_ms <= ?1 ORDER BY c.next_check_ms, c.clock_id LIMIT ?2";

/// The earliest next check: the first entry of the same index.
const NEXT_CHECK: &str = "SELECT next_check_ms FROM sla_clocks
     WHERE next_check_ms IS NOT NULL ORDER BY next_check_ms LIMIT 1";

/// The clocks of the tickets an incident is on (from its own `ticket_incidents` rows), by
/// ticket, take-over first.
const OF_INCIDENT: &str = "WHERE c.ticket_seq IN
         (SELECT ti.ticket_seq FROM ticket_incidents ti WHERE ti.incident_id = ?1)
     ORDER BY c.ticket_seq, CASE c.level WHEN 'take_over' THEN 0 ELSE 1 END";

/// One ticket's clocks, take-over first.
const OF_TICKET: &str = "WHERE c.ticket_seq = ?1
     ORDER BY CASE c.level WHEN 'take_over' THEN 0 ELSE 1 END";

/// A save, only at the revision it read.
const SAVE: &str = "UPDATE sla_clocks SET clock = ?3, revision = revision + 1, next_check_ms = ?4,
            state = ?5, breached = ?6
     WHERE clock_id = ?1 AND revision = ?2";

#[async_trait]
impl Sla for Sqlite {
    async fn sla_due(&self, now_ms: i64, limit: usize) -> Result<Vec<SlaClockRow>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |conn| rows(conn, &select(DUE), params![now_ms, limit]))
            .await
    }

    async fn sla_next_check(&self) -> Result<Option<i64>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(NEXT_CHECK)?;
            let mut found = stmt.query_map([], |r| r.get::<_, i64>(0))?;
            Ok(found.next().transpose()?)
        })
        .await
    }

    async fn sla_of_incident(&self, incident_id: String) -> Result<Vec<SlaClockRow>, StoreError> {
        self.read(move |conn| rows(conn, &select(OF_INCIDENT), [&incident_id]))
            .await
    }

    async fn sla_of_ticket(&self, ticket_seq: i64) -> Result<Vec<SlaClockRow>, StoreError> {
        self.read(move |conn| rows(conn, &select(OF_TICKET), [ticket_seq]))
            .await
    }

    async fn sla_list(&self, listing: SlaListing) -> Result<Vec<SlaClockRow>, StoreError> {
        self.read(move |conn| {
            let clause = listing::sla_clocks(&listing, '?');
            let args: Vec<&dyn ToSql> = clause.args.iter().map(|a| a as &dyn ToSql).collect();
            rows(conn, &select(&clause.sql), args.as_slice())
        })
        .await
    }

    async fn sla_save(&self, saves: Vec<SlaSave>) -> Result<Vec<bool>, StoreError> {
        self.write(move |conn| save(conn, saves, now_ms())).await
    }
}

/// [`Sla::sla_save`] at `now`, in the writer's transaction: each save whose revision still
/// holds is written, and its alerts are ingested as the gateway's own incidents beside it.
pub(super) fn save(
    conn: &Connection,
    saves: Vec<SlaSave>,
    now: i64,
) -> Result<Vec<bool>, StoreError> {
    let mut applied = Vec::with_capacity(saves.len());
    for s in saves {
        let changed = conn.prepare_cached(SAVE)?.execute(params![
            s.clock_id,
            s.revision,
            s.clock,
            s.next_check_ms,
            s.state,
            s.breached
        ])?;
        let done = changed == 1;
        if done && !s.alerts.is_empty() {
            ingest::ingest(conn, crate::model::GATEWAY_SOURCE, None, s.alerts, now)?;
        }
        applied.push(done);
    }
    Ok(applied)
}

/// Starts the clocks `sla` gives a ticket just opened by `incident_id` (of `account_id`):
/// running, due at once (the watchdog works out the real next check).
pub(super) fn start(
    conn: &Connection,
    ticket_seq: i64,
    sla: &SlaStart,
    incident_id: &str,
    account_id: Option<i64>,
    now: i64,
) -> Result<(), StoreError> {
    let mut insert = conn.prepare_cached(
        "INSERT INTO sla_clocks (ticket_seq, level, policy, clock, revision, next_check_ms, state,
                                 breached, incident_id, account_id)
         VALUES (?1, ?2, ?3, ?4, 0, ?5, 'running', 0, ?6, ?7)",
    )?;
    for clock in sla.clocks(now) {
        insert.execute(params![
            ticket_seq,
            clock.level.as_str(),
            sla.policy,
            ClockJson(&clock),
            now,
            incident_id,
            account_id
        ])?;
    }
    Ok(())
}

/// The ticket's `created` was delivered (or resolved by an admin): the first time only, its
/// clocks learn when, and are due at once.
pub(super) fn created_ok(conn: &Connection, ticket_seq: i64, now: i64) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE sla_clocks SET created_ok_ms = ?2, next_check_ms = ?2, revision = revision + 1
         WHERE ticket_seq = ?1 AND created_ok_ms IS NULL",
    )?
    .execute(params![ticket_seq, now])?;
    Ok(())
}

/// Something the clocks depend on changed (the ticket closed): they are due at once.
pub(super) fn nudge(conn: &Connection, ticket_seq: i64, now: i64) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE sla_clocks SET next_check_ms = ?2, revision = revision + 1 WHERE ticket_seq = ?1",
    )?
    .execute(params![ticket_seq, now])?;
    Ok(())
}

/// Deletes the clocks of the tickets `tickets` (a JSON list) that retention deleted; how
/// many.
pub(super) fn purge_of(conn: &Connection, tickets: &str) -> Result<u64, StoreError> {
    Ok(conn
        .prepare_cached(
            "DELETE FROM sla_clocks WHERE ticket_seq IN (SELECT value FROM json_each(?1))",
        )?
        .execute([tickets])? as u64)
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    fn sla_route() -> crate::store::Route {
        crate::store::Route {
            sla: Some(SlaStart {
                policy: "gold".into(),
                take_over_ms: Some(60_000),
                complete_ms: Some(600_000),
                warn_before_ms: 10_000,
            }),
            ..route("jira", "k", None)
        }
    }

    /// Every question the watchdog and the lists ask is an index seek or an index walk in
    /// the order asked for: none scans the clocks or sorts them.
    #[test]
    fn sla_questions_are_answered_by_index() {
        let db = TestDb::new();
        let due = plan(&db.conn, &select(DUE));
        assert!(
            due.contains("SEARCH c USING INDEX sla_clocks_next_check (next_check_ms<?)"),
            "{due}"
        );
        let next = plan(&db.conn, NEXT_CHECK);
        assert!(next.contains("sla_clocks_next_check"), "{next}");
        for (name, sql) in [("of incident", OF_INCIDENT), ("of ticket", OF_TICKET)] {
            let p = plan(&db.conn, &select(sql));
            assert!(
                p.contains("SEARCH c USING INDEX sqlite_autoindex_sla_clocks_1 (ticket_seq=?)"),
                "{name}: {p}"
            );
            assert!(!p.contains("SCAN"), "{name}: {p}");
        }
        for (listing, index) in [
            (
                SlaListing {
                    state: Some("running".into()),
                    ..Default::default()
                },
                "sla_clocks_state (state=?",
            ),
            (
                SlaListing {
                    breached: Some(true),
                    ..Default::default()
                },
                "sla_clocks_breached (breached=?",
            ),
            (
                SlaListing {
                    accounts: Some(vec![4]),
                    ..Default::default()
                },
                "sla_clocks_account (account_id=?",
            ),
        ] {
            let clause = listing::sla_clocks(&listing, '?');
            let p = plan(&db.conn, &select(&clause.sql));
            assert!(p.contains(index), "{listing:?}: {p}");
            assert!(!p.contains("TEMP B-TREE"), "{listing:?}: {p}");
        }
        let newest = plan(
            &db.conn,
            &select(&listing::sla_clocks(&SlaListing::default(), '?').sql),
        );
        assert!(newest.contains("SCAN c"), "{newest}");
        assert!(!newest.contains("TEMP B-TREE"), "{newest}");
    }

    /// A nudge moves the revision on, so a save decided before it applies nothing.
    #[test]
    fn a_nudge_makes_a_save_read_before_it_stale() {
        let db = TestDb::new();
        db.ingest_one(incident("A").routed(&sla_route()), 1_000);
        let (clock_id, revision): (i64, i64) = db
            .conn
            .query_row(
                "SELECT clock_id, revision FROM sla_clocks WHERE level = 'take_over'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        let ticket_seq: i64 = db
            .conn
            .query_row("SELECT ticket_seq FROM tickets", [], |r| r.get(0))
            .unwrap();
        created_ok(&db.conn, ticket_seq, 2_000).unwrap();
        let stale = SlaSave {
            clock_id,
            revision,
            clock: "{}".into(),
            next_check_ms: None,
            state: "running".into(),
            breached: true,
            alerts: vec![],
        };
        assert_eq!(save(&db.conn, vec![stale], 3_000).unwrap(), [false]);
        let next: Option<i64> = db
            .conn
            .query_row(
                "SELECT next_check_ms FROM sla_clocks WHERE clock_id = ?1",
                [clock_id],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(next, Some(2_000));
    }
}
