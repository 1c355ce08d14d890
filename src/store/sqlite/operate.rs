//! What operators change while the gateway runs, in SQLite: paused connectors, the dead
//! deliveries a bulk replay takes, the queue's size per connector, and retention (purging
//! finished work, then giving the space back).

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension as _, Row, params};

use super::{FromRow, Sqlite, json_list, rows};
use crate::model::now_ms;
use crate::store::{
    DeadDelivery, DeadFilter, Operate, PauseNote, PurgeCursor, PurgeRequest, Purged, QueueDepth,
    StoreError,
};

impl FromRow for PauseNote {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(PauseNote {
            connector: r.get("connector")?,
            since_ms: r.get("since_ms")?,
            reason: r.get("reason")?,
        })
    }
}

impl FromRow for DeadDelivery {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(DeadDelivery {
            delivery_id: r.get("delivery_id")?,
            connector: r.get("connector")?,
            status_code: r.get("status_code")?,
            attempted: r.get("attempted")?,
        })
    }
}

impl FromRow for QueueDepth {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(QueueDepth {
            connector: r.get("connector")?,
            pending: r.get("pending")?,
            oldest_due_ms: r.get("oldest_due_ms")?,
        })
    }
}

#[async_trait]
impl Operate for Sqlite {
    async fn set_paused(
        &self,
        connector: String,
        note: Option<PauseNote>,
    ) -> Result<bool, StoreError> {
        self.write(move |conn| set_paused(conn, &connector, note.as_ref()))
            .await
    }

    async fn paused(&self) -> Result<Vec<PauseNote>, StoreError> {
        self.read(|conn| {
            rows(
                conn,
                "SELECT connector, since_ms, reason FROM connector_pauses ORDER BY connector",
                [],
            )
        })
        .await
    }

    async fn dead(&self, filter: DeadFilter) -> Result<Vec<DeadDelivery>, StoreError> {
        self.read(move |conn| {
            let limit = i64::try_from(filter.limit).unwrap_or(i64::MAX);
            rows(
                conn,
                "SELECT d.delivery_id, d.connector,
                        (SELECT a.status_code FROM attempts a WHERE a.delivery_id = d.delivery_id
                          ORDER BY a.attempt DESC LIMIT 1) AS status_code,
                        EXISTS (SELECT 1 FROM attempts a WHERE a.delivery_id = d.delivery_id)
                          AS attempted
                   FROM deliveries d
                  WHERE d.status = 'dead'
                    AND (?1 IS NULL OR d.connector = ?1)
                    AND (?2 IS NULL OR d.updated_ms >= ?2)
                    AND (?3 IS NULL OR d.updated_ms < ?3)
                    AND (?5 IS NULL OR EXISTS (
                         SELECT 1 FROM incidents i WHERE i.incident_id = d.incident_id
                            AND i.account_id IN (SELECT value FROM json_each(?5))))
                  ORDER BY d.updated_ms, d.seq
                  LIMIT ?4",
                params![
                    filter.connector,
                    filter.since_ms,
                    filter.until_ms,
                    limit,
                    filter
                        .accounts
                        .as_ref()
                        .map(|a| serde_json::Value::from(a.clone()).to_string())
                ],
            )
        })
        .await
    }

    async fn queue_depths(&self) -> Result<Vec<QueueDepth>, StoreError> {
        self.read(|conn| {
            rows(
                conn,
                "SELECT connector, COUNT(*) AS pending,
                        MIN(CASE WHEN ready = 1 AND due_ms <= ?1 THEN due_ms END) AS oldest_due_ms
                   FROM deliveries WHERE status = 'pending'
                  GROUP BY connector ORDER BY connector",
                [now_ms()],
            )
        })
        .await
    }

    async fn dead_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT connector, COUNT(*) FROM deliveries WHERE status = 'dead'
                  GROUP BY connector ORDER BY connector",
            )?;
            let counts = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(counts)
        })
        .await
    }

    async fn purge(&self, request: PurgeRequest) -> Result<Purged, StoreError> {
        self.write(move |conn| purge(conn, &request)).await
    }

    async fn compact(&self) -> Result<(), StoreError> {
        // Free pages go back to the file system (a file created with auto_vacuum =
        // INCREMENTAL; a no-op otherwise), a few MB per write transaction: one vacuum of
        // everything a large pass freed would hold ingest's writes back for seconds …
        loop {
            let started = std::time::Instant::now();
            let left = self
                .write(|conn| {
                    let mode: i64 = conn.query_row("PRAGMA auto_vacuum", [], |r| r.get(0))?;
                    if mode != INCREMENTAL {
                        return Ok(0);
                    }
                    // The pragma frees one page per step (a row each): run it to the end,
                    // as `execute_batch` would step it only once.
                    conn.prepare_cached(VACUUM_CHUNK)?
                        .query([])?
                        .mapped(|_| Ok(()))
                        .collect::<rusqlite::Result<()>>()?;
                    Ok(conn.query_row("PRAGMA freelist_count", [], |r| r.get::<_, i64>(0))?)
                })
                .await?;
            if left == 0 {
                break;
            }
            tokio::time::sleep(crate::model::rest_after(started, VACUUM_PAUSE)).await;
        }
        // … and the WAL is emptied, from a connection of its own: the writer's runs in
        // transactions, and the reader's would hold admin reads back meanwhile.
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let conn = super::open_connection(&path)?;
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
            Ok(())
        })
        .await?
    }
}

/// `auto_vacuum = INCREMENTAL`, as `PRAGMA auto_vacuum` reports it.
const INCREMENTAL: i64 = 2;
/// 256 pages (1 MiB at the default page size) per transaction of `compact`.
const VACUUM_CHUNK: &str = "PRAGMA incremental_vacuum(256)";
/// Between two chunks, at least (see [`crate::model::rest_after`]): lets the writes waiting
/// behind one go first.
const VACUUM_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);

/// The next `batch` incidents of the pass, oldest change first (the `incidents_updated`
/// index), that changed before the delivered cut-off.
const PURGE_SCAN: &str = "SELECT updated_ms, incident_id FROM incidents
     WHERE updated_ms < ?1 AND (updated_ms, incident_id) > (?2, ?3)
     ORDER BY updated_ms, incident_id LIMIT ?4";

/// Of the incidents looked at (`?1`, a JSON list), those whose work is finished: every
/// delivery delivered before `?2` or dead before `?3` — a dead `created` only when nothing
/// of its line waits behind it — and every ticket it is on closed before `?4`, or still open
/// with the incident completed. (An open incident on an open ticket stays: its completion
/// may still come, and counts toward closing the ticket.) An incident another's delivery
/// collected stays as long as that delivery would.
const PURGEABLE: &str = "SELECT i.incident_id FROM incidents i
     WHERE i.incident_id IN (SELECT value FROM json_each(?1))
       AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.incident_id = i.incident_id
             AND NOT ((d.status = 'delivered' AND d.updated_ms < ?2)
                   OR (d.status = 'dead' AND d.updated_ms < ?3
                       AND NOT (d.event = 'created' AND EXISTS (
                           SELECT 1 FROM deliveries e
                            WHERE e.connector = d.connector AND e.order_key = d.order_key
                              AND e.seq > d.seq AND e.status = 'pending')))))
       AND NOT EXISTS (SELECT 1 FROM ticket_incidents ti
             CROSS JOIN tickets t ON t.ticket_seq = ti.ticket_seq
             WHERE ti.incident_id = i.incident_id
               AND (CASE WHEN t.status = 'open' THEN i.status <> 'completed'
                     ELSE COALESCE(t.closed_ms, t.updated_ms) >= ?4 END))
       AND NOT EXISTS (SELECT 1 FROM collected_incidents c
             CROSS JOIN deliveries d ON d.seq = c.delivery_seq
             WHERE c.incident_id = i.incident_id AND d.incident_id <> i.incident_id
               AND NOT ((d.status = 'delivered' AND d.updated_ms < ?2)
                     OR (d.status = 'dead' AND d.updated_ms < ?3)))";

/// What goes with the incidents (`?1`, a JSON list), children first; then their tickets
/// that are closed and hold no incident any more (and those tickets' SLA clocks).
const PURGE_DELETES: [&str; 6] = [
    "DELETE FROM collected_incidents WHERE incident_id IN (SELECT value FROM json_each(?1))
        OR delivery_seq IN (SELECT seq FROM deliveries
                             WHERE incident_id IN (SELECT value FROM json_each(?1)))",
    "DELETE FROM attempts WHERE delivery_id IN
        (SELECT delivery_id FROM deliveries WHERE incident_id IN (SELECT value FROM json_each(?1)))",
    "DELETE FROM deliveries WHERE incident_id IN (SELECT value FROM json_each(?1))",
    "DELETE FROM incident_versions WHERE incident_id IN (SELECT value FROM json_each(?1))",
    "DELETE FROM ticket_incidents WHERE incident_id IN (SELECT value FROM json_each(?1))",
    "DELETE FROM incidents WHERE incident_id IN (SELECT value FROM json_each(?1))",
];

const PURGE_TICKETS: &str = "DELETE FROM tickets
     WHERE ticket_seq IN (SELECT value FROM json_each(?1)) AND status <> 'open'
       AND NOT EXISTS (SELECT 1 FROM ticket_incidents ti WHERE ti.ticket_seq = tickets.ticket_seq)
     RETURNING ticket_seq";

/// [`Operate::purge`], in the writer's transaction.
fn purge(conn: &Connection, request: &PurgeRequest) -> Result<Purged, StoreError> {
    let batch = i64::try_from(request.batch).unwrap_or(i64::MAX);
    let (after_ms, after_id) = request
        .after
        .as_ref()
        .map_or((i64::MIN, ""), |c| (c.updated_ms, c.incident_id.as_str()));
    let scanned: Vec<(i64, String)> = conn
        .prepare_cached(PURGE_SCAN)?
        .query_map(
            params![request.delivered_before_ms, after_ms, after_id, batch],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?
        .collect::<Result<_, _>>()?;
    let next = match scanned.last() {
        Some((updated_ms, incident_id)) if scanned.len() == request.batch => Some(PurgeCursor {
            updated_ms: *updated_ms,
            incident_id: incident_id.clone(),
        }),
        _ => None,
    };
    let scanned: Vec<String> = scanned.into_iter().map(|(_, id)| id).collect();
    let ids: Vec<String> = conn
        .prepare_cached(PURGEABLE)?
        .query_map(
            params![
                json_list(&scanned),
                request.delivered_before_ms,
                request.dead_before_ms.unwrap_or(i64::MIN),
                request.tickets_closed_before_ms
            ],
            |r| r.get(0),
        )?
        .collect::<Result<_, _>>()?;
    if ids.is_empty() {
        return Ok(Purged {
            next,
            ..Purged::default()
        });
    }
    let ids = json_list(&ids);
    let tickets: Vec<i64> = conn
        .prepare_cached(
            "SELECT DISTINCT ticket_seq FROM ticket_incidents
              WHERE incident_id IN (SELECT value FROM json_each(?1))",
        )?
        .query_map([&ids], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut rows = 0u64;
    let mut incidents = 0u64;
    for sql in PURGE_DELETES {
        let deleted = conn.prepare_cached(sql)?.execute([&ids])? as u64;
        rows += deleted;
        // The last statement deletes the incidents themselves.
        incidents = deleted;
    }
    let tickets = serde_json::to_string(&tickets).unwrap_or_else(|_| "[]".into());
    let deleted: Vec<i64> = conn
        .prepare_cached(PURGE_TICKETS)?
        .query_map([&tickets], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    rows += deleted.len() as u64;
    // A deleted ticket's SLA clocks go with it.
    if !deleted.is_empty() {
        let deleted = serde_json::to_string(&deleted).unwrap_or_else(|_| "[]".into());
        rows += super::sla::purge_of(conn, &deleted)?;
    }
    Ok(Purged {
        incidents,
        rows,
        next,
    })
}

fn set_paused(
    conn: &Connection,
    connector: &str,
    note: Option<&PauseNote>,
) -> Result<bool, StoreError> {
    match note {
        Some(note) => {
            // Pausing a paused connector keeps when it was first paused.
            let existing: Option<i64> = conn
                .query_row(
                    "SELECT since_ms FROM connector_pauses WHERE connector = ?1",
                    [connector],
                    |r| r.get(0),
                )
                .optional()?;
            if existing.is_none() {
                conn.execute(
                    "INSERT INTO connector_pauses (connector, since_ms, reason) VALUES (?1, ?2, ?3)",
                    params![connector, note.since_ms, note.reason],
                )?;
            }
            Ok(true)
        }
        None => Ok(conn.execute(
            "DELETE FROM connector_pauses WHERE connector = ?1",
            [connector],
        )? > 0),
    }
}
