//! What operators change while the gateway runs, in SQLite: paused connectors, the dead
//! deliveries a bulk replay takes, and the queue's size per connector.

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension as _, Row, params};

use super::{FromRow, Sqlite, rows};
use crate::model::now_ms;
use crate::store::{DeadDelivery, DeadFilter, Operate, PauseNote, QueueDepth, StoreError};

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
                  ORDER BY d.updated_ms, d.seq
                  LIMIT ?4",
                params![filter.connector, filter.since_ms, filter.until_ms, limit],
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
