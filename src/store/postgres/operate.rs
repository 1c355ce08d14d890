//! What operators change while the gateway runs, in PostgreSQL: paused connectors (shared by
//! every process on the database), the dead deliveries a bulk replay takes, and the queue's
//! size per connector.

use async_trait::async_trait;

use super::{Postgres, execute, query};
use crate::model::now_ms;
use crate::store::{DeadDelivery, DeadFilter, Operate, PauseNote, QueueDepth, StoreError};

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
                  ORDER BY d.updated_ms, d.seq
                  LIMIT $4",
                &[
                    &filter.connector,
                    &filter.since_ms,
                    &filter.until_ms,
                    &limit,
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
}
