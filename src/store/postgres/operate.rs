//! What operators change while the gateway runs, in PostgreSQL: paused connectors (shared by
//! every process on the database), the dead deliveries a bulk replay takes, the queue's
//! size per connector, and retention (purging finished work; PostgreSQL's autovacuum gives
//! the space back).

use async_trait::async_trait;

use super::{Postgres, execute, lock_incident, query};
use crate::model::now_ms;
use crate::store::{
    DeadDelivery, DeadFilter, Operate, PauseNote, PurgeCursor, PurgeRequest, Purged, QueueDepth,
    StoreError,
};

#[async_trait]
impl Operate for Postgres {
    async fn set_paused(
        &self,
        connector: String,
        note: Option<PauseNote>,
    ) -> Result<bool, StoreError> {
        transaction!(self, |tx| {
            match &note {
                // Pausing a paused connector keeps when it was first paused.
                Some(note) => {
                    execute(
                        &tx,
                        "INSERT INTO connector_pauses (connector, since_ms, reason)
                         VALUES ($1, $2, $3) ON CONFLICT (connector) DO NOTHING",
                        &[&connector, &note.since_ms, &note.reason],
                    )
                    .await?;
                    Ok(true)
                }
                None => Ok(execute(
                    &tx,
                    "DELETE FROM connector_pauses WHERE connector = $1",
                    &[&connector],
                )
                .await?
                    > 0),
            }
        })
    }

    async fn paused(&self) -> Result<Vec<PauseNote>, StoreError> {
        transaction!(self, |tx| {
            let rows = query(
                &tx,
                "SELECT connector, since_ms, reason FROM connector_pauses ORDER BY connector",
                &[],
            )
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(PauseNote {
                        connector: r.try_get("connector")?,
                        since_ms: r.try_get("since_ms")?,
                        reason: r.try_get("reason")?,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()
        })
    }

    async fn dead(&self, filter: DeadFilter) -> Result<Vec<DeadDelivery>, StoreError> {
        let limit = i64::try_from(filter.limit).unwrap_or(i64::MAX);
        transaction!(self, |tx| {
            let rows = query(
                &tx,
                "SELECT d.delivery_id, d.connector,
                        (SELECT a.status_code FROM attempts a WHERE a.delivery_id = d.delivery_id
                          ORDER BY a.attempt DESC LIMIT 1) AS status_code,
                        EXISTS (SELECT 1 FROM attempts a WHERE a.delivery_id = d.delivery_id)
                          AS attempted
                   FROM deliveries d
                  WHERE d.status = 'dead'
                    AND ($1::text IS NULL OR d.connector = $1)
                    AND ($2::bigint IS NULL OR d.updated_ms >= $2)
                    AND ($3::bigint IS NULL OR d.updated_ms < $3)
                    AND ($5::bigint[] IS NULL OR EXISTS (
                         SELECT 1 FROM incidents i WHERE i.incident_id = d.incident_id
                            AND i.account_id = ANY($5)))
                  ORDER BY d.updated_ms, d.seq
                  LIMIT $4",
                &[
                    &filter.connector,
                    &filter.since_ms,
                    &filter.until_ms,
                    &limit,
                    &filter.accounts,
                ],
            )
            .await?;
            rows.iter()
                .map(|r| {
                    let status: Option<i32> = r.try_get("status_code")?;
                    Ok(DeadDelivery {
                        delivery_id: r.try_get("delivery_id")?,
                        connector: r.try_get("connector")?,
                        status_code: status.and_then(|s| u16::try_from(s).ok()),
                        attempted: r.try_get("attempted")?,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()
        })
    }

    async fn queue_depths(&self) -> Result<Vec<QueueDepth>, StoreError> {
        let now = now_ms();
        transaction!(self, |tx| {
            let rows = query(
                &tx,
                "SELECT connector, COUNT(*) AS pending,
                        MIN(CASE WHEN ready AND due_ms <= $1 THEN due_ms END) AS oldest_due_ms
                   FROM deliveries WHERE status = 'pending'
                  GROUP BY connector ORDER BY connector",
                &[&now],
            )
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(QueueDepth {
                        connector: r.try_get("connector")?,
                        pending: r.try_get("pending")?,
                        oldest_due_ms: r.try_get("oldest_due_ms")?,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()
        })
    }

    async fn dead_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        transaction!(self, |tx| {
            let rows = query(
                &tx,
                "SELECT connector, COUNT(*) AS dead FROM deliveries WHERE status = 'dead'
                  GROUP BY connector ORDER BY connector",
                &[],
            )
            .await?;
            rows.iter()
                .map(|r| Ok((r.try_get("connector")?, r.try_get("dead")?)))
                .collect::<Result<Vec<_>, StoreError>>()
        })
    }

    async fn purge(&self, request: PurgeRequest) -> Result<Purged, StoreError> {
        let batch = i64::try_from(request.batch).unwrap_or(i64::MAX);
        let (after_ms, after_id) = request
            .after
            .as_ref()
            .map_or((i64::MIN, String::new()), |c| {
                (c.updated_ms, c.incident_id.clone())
            });
        let dead_before = request.dead_before_ms.unwrap_or(i64::MIN);
        transaction!(self, |tx| {
            let scanned = query(
                &tx,
                PURGE_SCAN,
                &[&request.delivered_before_ms, &after_ms, &after_id, &batch],
            )
            .await?;
            let mut looked_at = Vec::with_capacity(scanned.len());
            let mut next = None;
            for row in &scanned {
                let updated_ms: i64 = row.try_get("updated_ms")?;
                let incident_id: String = row.try_get("incident_id")?;
                next = Some(PurgeCursor {
                    updated_ms,
                    incident_id: incident_id.clone(),
                });
                looked_at.push(incident_id);
            }
            if looked_at.len() < request.batch {
                next = None;
            }
            // What ingest and workers change is held still while it is judged: each incident
            // under the lock its versions are stored under (in one order, so two purges
            // cannot deadlock), its deliveries and tickets by their rows.
            looked_at.sort();
            for incident_id in &looked_at {
                lock_incident(&tx, incident_id).await?;
            }
            query(
                &tx,
                "SELECT 1 FROM deliveries WHERE incident_id = ANY($1) ORDER BY seq FOR UPDATE",
                &[&looked_at],
            )
            .await?;
            query(
                &tx,
                "SELECT 1 FROM tickets WHERE ticket_seq IN
                   (SELECT ticket_seq FROM ticket_incidents WHERE incident_id = ANY($1))
                 ORDER BY ticket_seq FOR UPDATE",
                &[&looked_at],
            )
            .await?;
            let ids: Vec<String> = query(
                &tx,
                PURGEABLE,
                &[
                    &looked_at,
                    &request.delivered_before_ms,
                    &dead_before,
                    &request.tickets_closed_before_ms,
                ],
            )
            .await?
            .iter()
            .map(|r| r.try_get("incident_id"))
            .collect::<Result<_, _>>()?;
            if ids.is_empty() {
                return Ok(Purged {
                    next: next.clone(),
                    ..Purged::default()
                });
            }
            let tickets: Vec<i64> = query(
                &tx,
                "SELECT DISTINCT ticket_seq FROM ticket_incidents WHERE incident_id = ANY($1)",
                &[&ids],
            )
            .await?
            .iter()
            .map(|r| r.try_get("ticket_seq"))
            .collect::<Result<_, _>>()?;
            let mut rows = 0u64;
            let mut incidents = 0u64;
            for sql in PURGE_DELETES {
                let deleted = execute(&tx, sql, &[&ids]).await?;
                rows += deleted;
                // The last statement deletes the incidents themselves.
                incidents = deleted;
            }
            let deleted: Vec<i64> = query(&tx, PURGE_TICKETS, &[&tickets])
                .await?
                .iter()
                .map(|r| r.try_get("ticket_seq"))
                .collect::<Result<_, _>>()?;
            rows += deleted.len() as u64;
            // A deleted ticket's SLA clocks go with it.
            if !deleted.is_empty() {
                rows += super::sla::purge_of(&tx, &deleted).await?;
            }
            Ok(Purged {
                incidents,
                rows,
                next: next.clone(),
            })
        })
    }

    async fn compact(&self) -> Result<(), StoreError> {
        // Autovacuum reuses the space of deleted rows; the file system gets it back only
        // through VACUUM FULL, which locks the tables and is the DBA's call.
        Ok(())
    }
}

/// The next `batch` incidents of the pass, oldest change first (the `incidents_updated`
/// index), that changed before the delivered cut-off.
const PURGE_SCAN: &str = "SELECT updated_ms, incident_id FROM incidents
     WHERE updated_ms < $1 AND (updated_ms, incident_id) > ($2::bigint, $3::text)
     ORDER BY updated_ms, incident_id LIMIT $4";

/// Of the incidents looked at (`$1`), those whose work is finished: every delivery delivered
/// before `$2` or dead before `$3` — a dead `created` only when nothing of its line waits
/// behind it — and every ticket it is on closed before `$4`, or still open with the incident
/// completed; an incident another's delivery collected stays as long as that delivery would.
/// (SQLite: the same rule, and why.)
const PURGEABLE: &str = "SELECT i.incident_id FROM incidents i
     WHERE i.incident_id = ANY($1)
       AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.incident_id = i.incident_id
             AND NOT ((d.status = 'delivered' AND d.updated_ms < $2)
                   OR (d.status = 'dead' AND d.updated_ms < $3
                       AND NOT (d.event = 'created' AND EXISTS (
                           SELECT 1 FROM deliveries e
                            WHERE e.connector = d.connector AND e.order_key = d.order_key
                              AND e.seq > d.seq AND e.status = 'pending')))))
       AND NOT EXISTS (SELECT 1 FROM ticket_incidents ti
             JOIN tickets t ON t.ticket_seq = ti.ticket_seq
             WHERE ti.incident_id = i.incident_id
               AND (CASE WHEN t.status = 'open' THEN i.status <> 'completed'
                     ELSE COALESCE(t.closed_ms, t.updated_ms) >= $4 END))
       AND NOT EXISTS (SELECT 1 FROM collected_incidents c
             JOIN deliveries d ON d.seq = c.delivery_seq
             WHERE c.incident_id = i.incident_id AND d.incident_id <> i.incident_id
               AND NOT ((d.status = 'delivered' AND d.updated_ms < $2)
                     OR (d.status = 'dead' AND d.updated_ms < $3)))";

/// What goes with the incidents (`$1`), children first.
const PURGE_DELETES: [&str; 6] = [
    "DELETE FROM collected_incidents WHERE incident_id = ANY($1)
        OR delivery_seq IN (SELECT seq FROM deliveries WHERE incident_id = ANY($1))",
    "DELETE FROM attempts WHERE delivery_id IN
        (SELECT delivery_id FROM deliveries WHERE incident_id = ANY($1))",
    "DELETE FROM deliveries WHERE incident_id = ANY($1)",
    "DELETE FROM incident_versions WHERE incident_id = ANY($1)",
    "DELETE FROM ticket_incidents WHERE incident_id = ANY($1)",
    "DELETE FROM incidents WHERE incident_id = ANY($1)",
];

/// The purged incidents' tickets (`$1`) that are closed and hold no incident any more (their
/// SLA clocks are deleted after them, by the ids returned).
const PURGE_TICKETS: &str = "DELETE FROM tickets t
     WHERE t.ticket_seq = ANY($1) AND t.status <> 'open'
       AND NOT EXISTS (SELECT 1 FROM ticket_incidents ti WHERE ti.ticket_seq = t.ticket_seq)
     RETURNING t.ticket_seq";
