//! SLA clocks on PostgreSQL: started with their ticket ([`start`], from `tickets`), nudged
//! when the ticket's `created` is delivered or the ticket closes ([`created_ok`], [`nudge`]),
//! deleted with their ticket ([`purge_of`]), read for the watchdog and the admin API, and
//! saved back under their revision with their alerts queued in the same transaction.
//!
//! A nudge bumps the revision as a save does: a watchdog (on any gateway) that read the clock
//! before it then fails its save and looks again, instead of writing over the nudge a next
//! check that may be never. A save's `revision = $n` condition is checked on the row's latest
//! version (PostgreSQL re-reads a row another transaction changed before updating it), so two
//! watchdogs saving one clock apply one save.

use std::error::Error;

use async_trait::async_trait;
use bytes::BytesMut;
use deadpool_postgres::Transaction;
use tokio_postgres::Row;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

use super::{Postgres, execute, ingest, query, query_opt};
use crate::model::now_ms;
use crate::sla::{Clock, Level, SlaStart};
use crate::store::listing::{self, Arg, SLA_CLOCKS_COLUMNS};
use crate::store::{Sla, SlaClockRow, SlaListing, SlaSave, StoreError};

/// The clocks with their tickets; each use adds its WHERE and ORDER BY.
const SLA_CLOCKS_FROM: &str = "FROM sla_clocks c JOIN tickets t ON t.ticket_seq = c.ticket_seq";

/// The clocks `tail` (a WHERE and ORDER BY) selects, with their tickets.
fn select(tail: &str) -> String {
    format!("{SLA_CLOCKS_COLUMNS} {SLA_CLOCKS_FROM} {tail}")
}

fn clock_row(r: &Row) -> Result<SlaClockRow, StoreError> {
    let level: String = r.try_get("level")?;
    Ok(SlaClockRow {
        clock_id: r.try_get("clock_id")?,
        ticket_seq: r.try_get("ticket_seq")?,
        level: Level::parse(&level).ok_or(StoreError::Missing("a known SLA clock level"))?,
        policy: r.try_get("policy")?,
        clock: r.try_get("clock")?,
        revision: r.try_get("revision")?,
        next_check_ms: r.try_get("next_check_ms")?,
        connector: r.try_get("connector")?,
        correlation_key: r.try_get("correlation_key")?,
        ticket_id: r.try_get("ticket_id")?,
        ticket_url: r.try_get("ticket_url")?,
        incident_id: r.try_get("incident_id")?,
        account_id: r.try_get("account_id")?,
        opened_ms: r.try_get("opened_ms")?,
        closed_ms: r.try_get("closed_ms")?,
        created_ok_ms: r.try_get("created_ok_ms")?,
    })
}

/// A clock bound as its JSON text (serializing it cannot fail in practice; if it did, the
/// statement would fail rather than store something else).
#[derive(Debug)]
struct ClockJson<'a>(&'a Clock);

impl ToSql for ClockJson<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        serde_json::to_string(self.0)?.to_sql(ty, out)
    }

    fn accepts(ty: &Type) -> bool {
        <String as ToSql>::accepts(ty)
    }

    to_sql_checked!();
}

/// Clocks due at `$1`, earliest first (the partial `sla_clocks_next_check` index).
const DUE: &str = "WHERE c.next_check_ms <= $1 ORDER BY c.next_check_ms, c.clock_id LIMIT $2";

/// The clocks of the tickets an incident is on, by ticket, take-over first.
const OF_INCIDENT: &str = "WHERE c.ticket_seq IN
         (SELECT ti.ticket_seq FROM ticket_incidents ti WHERE ti.incident_id = $1)
     ORDER BY c.ticket_seq, CASE c.level WHEN 'take_over' THEN 0 ELSE 1 END";

/// One ticket's clocks, take-over first.
const OF_TICKET: &str = "WHERE c.ticket_seq = $1
     ORDER BY CASE c.level WHEN 'take_over' THEN 0 ELSE 1 END";

#[async_trait]
impl Sla for Postgres {
    async fn sla_due(&self, now_ms: i64, limit: usize) -> Result<Vec<SlaClockRow>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let sql = select(DUE);
        transaction!(self, |tx| clocks(&tx, &sql, &[&now_ms, &limit]).await)
    }

    async fn sla_next_check(&self) -> Result<Option<i64>, StoreError> {
        transaction!(self, |tx| {
            Ok(query_opt(
                &tx,
                "SELECT next_check_ms FROM sla_clocks WHERE next_check_ms IS NOT NULL
                 ORDER BY next_check_ms LIMIT 1",
                &[],
            )
            .await?
            .map(|r| r.try_get::<_, i64>(0))
            .transpose()?)
        })
    }

    async fn sla_of_incident(&self, incident_id: String) -> Result<Vec<SlaClockRow>, StoreError> {
        let sql = select(OF_INCIDENT);
        transaction!(self, |tx| clocks(&tx, &sql, &[&incident_id]).await)
    }

    async fn sla_of_ticket(&self, ticket_seq: i64) -> Result<Vec<SlaClockRow>, StoreError> {
        let sql = select(OF_TICKET);
        transaction!(self, |tx| clocks(&tx, &sql, &[&ticket_seq]).await)
    }

    async fn sla_list(&self, listing: SlaListing) -> Result<Vec<SlaClockRow>, StoreError> {
        let clause = listing::sla_clocks(&listing, '$');
        let sql = select(&clause.sql);
        let args: Vec<Box<dyn ToSql + Sync + Send>> = clause
            .args
            .iter()
            .map(|a| -> Box<dyn ToSql + Sync + Send> {
                match a {
                    Arg::Text(s) => Box::new(s.clone()),
                    Arg::Int(n) => Box::new(*n),
                }
            })
            .collect();
        let refs: Vec<&(dyn ToSql + Sync)> = args
            .iter()
            .map(|a| a.as_ref() as &(dyn ToSql + Sync))
            .collect();
        transaction!(self, |tx| clocks(&tx, &sql, &refs).await)
    }

    async fn sla_save(&self, saves: Vec<SlaSave>) -> Result<Vec<bool>, StoreError> {
        transaction!(self, |tx| save(&tx, &saves, now_ms()).await)
    }
}

/// The clocks `sql` selects.
async fn clocks(
    tx: &Transaction<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<SlaClockRow>, StoreError> {
    query(tx, sql, params)
        .await?
        .iter()
        .map(clock_row)
        .collect()
}

/// [`Sla::sla_save`] at `now`: each save whose revision still holds is written, and its alerts
/// are ingested as the gateway's own incidents beside it. Clocks are written in id order (the
/// answer keeps the saves' order), so two gateways saving the same clocks take their rows in
/// one order.
async fn save(tx: &Transaction<'_>, saves: &[SlaSave], now: i64) -> Result<Vec<bool>, StoreError> {
    let mut order: Vec<usize> = (0..saves.len()).collect();
    order.sort_by_key(|&i| saves[i].clock_id);
    let mut applied = vec![false; saves.len()];
    for i in order {
        let s = &saves[i];
        let changed = execute(
            tx,
            "UPDATE sla_clocks SET clock = $3, revision = revision + 1, next_check_ms = $4,
                    state = $5, breached = $6
             WHERE clock_id = $1 AND revision = $2",
            &[
                &s.clock_id,
                &s.revision,
                &s.clock,
                &s.next_check_ms,
                &s.state,
                &s.breached,
            ],
        )
        .await?;
        applied[i] = changed == 1;
        if applied[i] && !s.alerts.is_empty() {
            ingest::ingest(tx, crate::model::GATEWAY_SOURCE, None, &s.alerts, now).await?;
        }
    }
    Ok(applied)
}

/// Starts the clocks `sla` gives a ticket just opened by `incident_id` (of `account_id`):
/// running, due at once (the watchdog works out the real next check).
pub(super) async fn start(
    tx: &Transaction<'_>,
    ticket_seq: i64,
    sla: &SlaStart,
    incident_id: &str,
    account_id: Option<i64>,
    now: i64,
) -> Result<(), StoreError> {
    for clock in sla.clocks(now) {
        execute(
            tx,
            "INSERT INTO sla_clocks (ticket_seq, level, policy, clock, revision, next_check_ms,
                                     state, breached, incident_id, account_id)
             VALUES ($1, $2, $3, $4, 0, $5, 'running', FALSE, $6, $7)",
            &[
                &ticket_seq,
                &clock.level.as_str(),
                &sla.policy,
                &ClockJson(&clock),
                &now,
                &incident_id,
                &account_id,
            ],
        )
        .await?;
    }
    Ok(())
}

/// The ticket's `created` was delivered (or resolved by an admin): the first time only, its
/// clocks learn when, and are due at once.
pub(super) async fn created_ok(
    tx: &Transaction<'_>,
    ticket_seq: i64,
    now: i64,
) -> Result<(), StoreError> {
    execute(
        tx,
        "UPDATE sla_clocks SET created_ok_ms = $2, next_check_ms = $2, revision = revision + 1
         WHERE ticket_seq = $1 AND created_ok_ms IS NULL",
        &[&ticket_seq, &now],
    )
    .await?;
    Ok(())
}

/// Something the clocks depend on changed (the ticket closed): they are due at once.
pub(super) async fn nudge(
    tx: &Transaction<'_>,
    ticket_seq: i64,
    now: i64,
) -> Result<(), StoreError> {
    execute(
        tx,
        "UPDATE sla_clocks SET next_check_ms = $2, revision = revision + 1 WHERE ticket_seq = $1",
        &[&ticket_seq, &now],
    )
    .await?;
    Ok(())
}

/// Deletes the clocks of the tickets retention deleted; how many.
pub(super) async fn purge_of(tx: &Transaction<'_>, tickets: &[i64]) -> Result<u64, StoreError> {
    execute(
        tx,
        "DELETE FROM sla_clocks WHERE ticket_seq = ANY($1)",
        &[&tickets],
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::super::testing::Database;
    use super::*;

    /// Each question is an index scan of the clocks, never a scan of the table or a sort
    /// (with the table made to look large, so the planner does not prefer a scan of a few
    /// pages).
    #[tokio::test]
    async fn sla_questions_are_answered_by_index() {
        let db = Database::create().await;
        let client = db.client().await;
        client
            .batch_execute(
                "INSERT INTO tickets (connector, correlation_key, status, opened_ms, updated_ms)
                 SELECT 'jira', 'k' || g, 'open', g, g FROM generate_series(1, 20000) g;
                 INSERT INTO sla_clocks (ticket_seq, level, policy, clock, next_check_ms, state,
                                         breached, incident_id, account_id)
                 SELECT g, 'complete', 'p', '{}', CASE WHEN g % 100 = 0 THEN g END,
                        CASE WHEN g % 50 = 0 THEN 'running' ELSE 'met' END, g % 70 = 0,
                        'I' || g, g % 1000
                   FROM generate_series(1, 20000) g;
                 ANALYZE tickets; ANALYZE sla_clocks;",
            )
            .await
            .unwrap();
        let plan = |sql: String| {
            let client = &client;
            async move {
                let rows = client.query(&format!("EXPLAIN {sql}"), &[]).await.unwrap();
                rows.iter()
                    .map(|r| r.get::<_, String>(0))
                    .collect::<Vec<_>>()
                    .join("\n")
            }
        };
        let literal = |sql: &str, values: &[&str]| {
            let mut sql = sql.to_string();
            for (i, v) in values.iter().enumerate().rev() {
                sql = sql.replace(&format!("${}", i + 1), v);
            }
            sql
        };
        let due = plan(literal(&select(DUE), &["5000", "10"])).await;
        assert!(
            due.contains("sla_clocks_next_check") && !due.contains("Sort"),
            "{due}"
        );
        let of_ticket = plan(literal(&select(OF_TICKET), &["7"])).await;
        assert!(
            of_ticket.contains("sla_clocks_ticket_seq_level_key"),
            "{of_ticket}"
        );
        for (listing, index) in [
            (
                SlaListing {
                    state: Some("running".into()),
                    limit: 10,
                    ..Default::default()
                },
                "sla_clocks_state",
            ),
            (
                SlaListing {
                    breached: Some(true),
                    limit: 10,
                    ..Default::default()
                },
                "sla_clocks_breached",
            ),
            (
                SlaListing {
                    accounts: Some(vec![4]),
                    limit: 10,
                    ..Default::default()
                },
                "sla_clocks_account",
            ),
        ] {
            let clause = listing::sla_clocks(&listing, '$');
            let values: Vec<String> = clause
                .args
                .iter()
                .map(|a| match a {
                    Arg::Text(s) => format!("'{s}'"),
                    Arg::Int(n) => n.to_string(),
                })
                .collect();
            let values: Vec<&str> = values.iter().map(String::as_str).collect();
            let p = plan(literal(&select(&clause.sql), &values)).await;
            assert!(p.contains(index), "{listing:?}: {p}");
            assert!(!p.contains("Sort"), "{listing:?}: {p}");
        }
        drop(client);
        db.drop().await;
    }
}
