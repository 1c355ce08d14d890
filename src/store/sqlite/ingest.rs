//! Incidents in: the duplicate rule (is this version new?), storing a version, and the
//! webhook-id claim made in the same transaction. Tickets and deliveries for a new version
//! come from [`super::tickets`] and [`super::queue`].

use async_trait::async_trait;
use rusqlite::{Connection, params};

use super::{Sqlite, optional_row, queue, tickets};
use crate::model::{Event, now_ms};
use crate::store::rules::{
    StoredIncident, collection_due, order_key, replay_window_ms, same_account, version_status,
};
use crate::store::{
    DeliveryRef, Ingest, IngestOutcome, IngestStatus, Ingested, NewIncident, StoreError,
};

/// Expired ids deleted per claim: each claim adds one row and may delete this many, so the
/// table stays about the size of one window's traffic at a bounded cost per request.
const PRUNE_PER_CLAIM: i64 = 64;

#[async_trait]
impl Ingest for Sqlite {
    async fn ingest(
        &self,
        source: String,
        webhook_id: Option<String>,
        batch: Vec<NewIncident>,
    ) -> Result<Ingested, StoreError> {
        self.write(move |conn| ingest(conn, &source, webhook_id.as_deref(), batch, now_ms()))
            .await
    }

    async fn webhook_id_seen(
        &self,
        sources: Vec<String>,
        webhook_id: String,
    ) -> Result<bool, StoreError> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let Ok(conn) = reader.try_lock() else {
                return Ok(false);
            };
            webhook_id_seen(&conn, &sources, &webhook_id, now_ms())
        })
        .await?
    }
}

/// [`Ingest::ingest`] at `now`, in the caller's transaction.
pub(super) fn ingest(
    conn: &Connection,
    source: &str,
    webhook_id: Option<&str>,
    batch: Vec<NewIncident>,
    now: i64,
) -> Result<Ingested, StoreError> {
    if let Some(id) = webhook_id
        && !claim_webhook_id(conn, source, id, now)?
    {
        return Ok(Ingested::Replay);
    }
    batch
        .into_iter()
        .enumerate()
        .map(|(index, inc)| ingest_one(conn, source, index, inc, now))
        .collect::<Result<Vec<_>, _>>()
        .map(Ingested::Stored)
}

/// Whether every one of `sources` claimed `webhook_id` within the replay window before `now`.
fn webhook_id_seen(
    conn: &Connection,
    sources: &[String],
    webhook_id: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let since = now.saturating_sub(replay_window_ms());
    let mut stmt = conn.prepare_cached(
        "SELECT 1 FROM seen_webhooks WHERE source = ?1 AND webhook_id = ?2 AND seen_ms >= ?3",
    )?;
    for source in sources {
        if !stmt.exists(params![source, webhook_id, since])? {
            return Ok(false);
        }
    }
    Ok(!sources.is_empty())
}

/// Claims (`source`, `id`): `false` when it is held and not expired. The primary key decides
/// (one statement, inside the writer's transaction), so concurrent copies, restarts and other
/// processes on the same database all see one claim; an expired row is taken over in place.
fn claim_webhook_id(
    conn: &Connection,
    source: &str,
    id: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let expired_before = now.saturating_sub(replay_window_ms());
    // Bounded, and through the index: the cost does not grow with the table.
    conn.prepare_cached(
        "DELETE FROM seen_webhooks WHERE rowid IN
            (SELECT rowid FROM seen_webhooks WHERE seen_ms < ?1 ORDER BY seen_ms LIMIT ?2)",
    )?
    .execute(params![expired_before, PRUNE_PER_CLAIM])?;
    let claimed = conn
        .prepare_cached(
            "INSERT INTO seen_webhooks (source, webhook_id, seen_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (source, webhook_id) DO UPDATE SET seen_ms = excluded.seen_ms
             WHERE seen_webhooks.seen_ms < ?4",
        )?
        .execute(params![source, id, now, expired_before])?;
    Ok(claimed == 1)
}

impl super::FromRow for StoredIncident {
    fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(StoredIncident {
            account_id: r.get("account_id")?,
            update_time: r.get("update_time")?,
            body_hash: r.get("body_hash")?,
            status: r.get("status")?,
        })
    }
}

fn stored_incident(
    conn: &Connection,
    incident_id: &str,
) -> Result<Option<StoredIncident>, StoreError> {
    optional_row(
        conn,
        "SELECT account_id, update_time, body_hash, status FROM incidents WHERE incident_id = ?1",
        [incident_id],
    )
}

/// Whether `inc`'s body is one of its incident's earlier versions.
pub(super) const SEEN_BEFORE: &str =
    "SELECT 1 FROM incident_versions WHERE incident_id = ?1 AND body = ?2";

fn seen_before(conn: &Connection, inc: &NewIncident) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached(SEEN_BEFORE)?
        .exists(params![inc.incident_id, inc.body])?)
}

/// Stores `inc` as its incident's current version (creating the incident if it is new);
/// returns the version's id.
fn store_version(
    conn: &Connection,
    source: &str,
    inc: &NewIncident,
    is_new: bool,
    now: i64,
) -> Result<i64, StoreError> {
    conn.prepare_cached(
        "INSERT INTO incident_versions (incident_id, body, received_ms) VALUES (?1, ?2, ?3)",
    )?
    .execute(params![inc.incident_id, inc.body, now])?;
    let version_id = conn.last_insert_rowid();
    if is_new {
        conn.prepare_cached(
            "INSERT INTO incidents (incident_id, source, update_time, body_hash, version_id, versions,
                                    status, status_change_ms, received_ms, updated_ms, account_id)
             VALUES (?1, ?2, ?3, ?4, ?5, 1, 'open', ?6, ?6, ?6, ?7)",
        )?
        .execute(params![
            inc.incident_id,
            source,
            inc.update_time,
            inc.body_hash,
            version_id,
            now,
            inc.account_id
        ])?;
    } else {
        conn.prepare_cached(
            "UPDATE incidents SET update_time = ?2, body_hash = ?3, version_id = ?4,
                    versions = versions + 1, updated_ms = ?5
             WHERE incident_id = ?1",
        )?
        .execute(params![
            inc.incident_id,
            inc.update_time,
            inc.body_hash,
            version_id,
            now
        ])?;
    }
    Ok(version_id)
}

fn ingest_one(
    conn: &Connection,
    source: &str,
    index: usize,
    inc: NewIncident,
    now: i64,
) -> Result<IngestOutcome, StoreError> {
    let stored = stored_incident(conn, &inc.incident_id)?;
    same_account(stored.as_ref(), &inc, index)?;
    let status = version_status(stored.as_ref(), &inc, || seen_before(conn, &inc))?;
    if status == IngestStatus::Duplicate {
        return Ok(IngestOutcome {
            incident_id: inc.incident_id,
            status,
            deliveries: vec![],
        });
    }
    let version_id = store_version(conn, source, &inc, stored.is_none(), now)?;
    let completed = stored.as_ref().is_some_and(StoredIncident::completed);
    let routes = if completed { Vec::new() } else { inc.routes };
    let mut deliveries = Vec::with_capacity(routes.len());
    for route in routes {
        let attached = tickets::attach_to_ticket(
            conn,
            &inc.incident_id,
            inc.account_id,
            stored.is_none(),
            &route,
            now,
        )?;
        // An open collection window of the ticket takes the incident instead of a delivery of
        // its own, in this transaction: a 202 means it is in the batch.
        if route.collect_for_ms.is_some() {
            let line = order_key(&inc.incident_id, Some(attached.ticket_seq));
            if let Some(window) = queue::open_collection(conn, &route.connector, &line)? {
                queue::collect(conn, &window, &inc.incident_id, version_id, now)?;
                deliveries.push(DeliveryRef {
                    id: window.delivery_id,
                    connector: route.connector,
                    event: Event::parse(&window.event).unwrap_or(attached.event),
                });
                continue;
            }
        }
        if attached.event == Event::Updated && !route.sends_updated {
            continue;
        }
        let id = queue::insert_delivery(
            conn,
            &queue::NewDelivery {
                incident_id: &inc.incident_id,
                version_id,
                connector: &route.connector,
                event: attached.event,
                ticket_seq: Some(attached.ticket_seq),
                purpose: attached.purpose,
                collect_until: route.collect_for_ms.map(|ms| collection_due(now, ms)),
            },
            now,
        )?;
        deliveries.push(DeliveryRef {
            id,
            connector: route.connector,
            event: attached.event,
        });
    }
    Ok(IngestOutcome {
        incident_id: inc.incident_id,
        status,
        deliveries,
    })
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use crate::store::Store;

    fn seen_rows(path: &std::path::Path) -> i64 {
        let conn = Connection::open(path).unwrap();
        conn.query_row("SELECT COUNT(*) FROM seen_webhooks", [], |r| r.get(0))
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_webhook_id_is_claimed_once_in_the_store_and_expired_ids_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.db");
        let store = Store::open_sqlite(&path).unwrap();
        // Concurrent copies straight to the store (no in-memory cache in front): one claim.
        let copies: Vec<_> = (0..8)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .ingest("src".into(), Some("evt".into()), vec![incident("A")])
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut stored = 0;
        for c in copies {
            if matches!(c.await.unwrap(), Ingested::Stored(_)) {
                stored += 1;
            }
        }
        assert_eq!(stored, 1);
        // Ids are per source.
        let other = store
            .ingest("other".into(), Some("evt".into()), vec![incident("B")])
            .await
            .unwrap();
        assert!(matches!(other, Ingested::Stored(_)));
        let seen = |sources: &[&str]| {
            store.webhook_id_seen(
                sources.iter().map(|s| s.to_string()).collect(),
                "evt".into(),
            )
        };
        assert!(seen(&["src"]).await.unwrap());
        assert!(seen(&["src", "other"]).await.unwrap());
        assert!(!seen(&["src", "nobody"]).await.unwrap());
        assert!(!seen(&[]).await.unwrap());
        // A replay stores nothing, a version with a new id does.
        let replay = store
            .ingest("src".into(), Some("evt".into()), vec![incident("C")])
            .await
            .unwrap();
        assert!(matches!(replay, Ingested::Replay));

        // Age every row past the window, and add 100 older ones.
        {
            let conn = Connection::open(&path).unwrap();
            conn.busy_timeout(std::time::Duration::from_secs(5))
                .unwrap();
            conn.execute(
                "UPDATE seen_webhooks SET seen_ms = seen_ms - ?1 - 1000",
                [replay_window_ms()],
            )
            .unwrap();
            for i in 0..100 {
                conn.execute(
                    "INSERT INTO seen_webhooks (source, webhook_id, seen_ms) VALUES ('src', ?1, ?2)",
                    params![format!("old_{i}"), i],
                )
                .unwrap();
            }
        }
        assert!(!seen(&["src"]).await.unwrap(), "an expired id is not seen");
        let again = store
            .ingest("src".into(), Some("evt".into()), vec![incident("C")])
            .await
            .unwrap();
        assert!(
            matches!(again, Ingested::Stored(_)),
            "an expired id is free"
        );
        // One claim pruned the 64 oldest expired rows, no more: 36 old ones, `other`'s
        // expired row and the fresh claim are left.
        assert_eq!(seen_rows(&path), 38);
        let exists: i64 = Connection::open(&path)
            .unwrap()
            .query_row(
                "SELECT COUNT(*) FROM incidents WHERE incident_id = 'C'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(exists, 1);
    }

    #[test]
    fn the_same_version_twice_is_a_duplicate_and_a_changed_one_is_new() {
        let db = TestDb::new();
        let route = route("jira", "k", None);
        let first = db.ingest_one(incident_with("A", None, "v1").routed(&route), 1_000);
        assert_eq!(first.status, IngestStatus::Accepted);
        assert_eq!(first.deliveries.len(), 1);

        // Posted again: a duplicate, nothing queued, no version stored.
        let again = db.ingest_one(incident_with("A", None, "v1").routed(&route), 2_000);
        assert_eq!(again.status, IngestStatus::Duplicate);
        assert!(again.deliveries.is_empty());
        assert_eq!(db.count("incident_versions"), 1);

        // Changed: an update, with its `updated` delivery.
        let changed = db.ingest_one(incident_with("A", None, "v2").routed(&route), 3_000);
        assert_eq!(changed.status, IngestStatus::Updated);
        assert_eq!(changed.deliveries.len(), 1);
        assert_eq!(changed.deliveries[0].event, Event::Updated);
        assert_eq!(db.count("incident_versions"), 2);

        // A late copy of the first version (no updateTime on either side) is seen before.
        let late = db.ingest_one(incident_with("A", None, "v1").routed(&route), 4_000);
        assert_eq!(late.status, IngestStatus::Duplicate);
        assert_eq!(db.count("deliveries"), 2);
    }

    #[test]
    fn with_update_times_only_a_newer_version_is_applied() {
        let db = TestDb::new();
        let route = route("jira", "k", None);
        // (updateTime, body, received at, what it is), in the order posted.
        let posted = [
            (Some(10.0), "v1", 1_000, IngestStatus::Accepted),
            // Same time, other body: not newer, so a duplicate.
            (Some(10.0), "v1b", 2_000, IngestStatus::Duplicate),
            // No time after one with a time: never applied.
            (None, "v0", 3_000, IngestStatus::Duplicate),
            (Some(11.0), "v2", 4_000, IngestStatus::Updated),
            (Some(10.5), "v1c", 5_000, IngestStatus::Duplicate),
        ];
        for (time, body, now, want) in posted {
            let inc = incident_with("A", time, body).routed(&route);
            assert_eq!(db.ingest_one(inc, now).status, want, "version {body}");
        }
        assert_eq!(db.count("incident_versions"), 2);
    }

    #[test]
    fn a_completed_incident_keeps_new_versions_but_queues_nothing() {
        let db = TestDb::new();
        let route = route("jira", "k", None);
        db.ingest_one(incident_with("A", None, "v1").routed(&route), 1_000);
        db.exec("UPDATE incidents SET status = 'completed'");
        let later = db.ingest_one(incident_with("A", None, "v2").routed(&route), 2_000);
        assert_eq!(later.status, IngestStatus::Updated);
        assert!(later.deliveries.is_empty());
        assert_eq!(db.count("incident_versions"), 2);
        assert_eq!(db.count("deliveries"), 1);
    }
}
