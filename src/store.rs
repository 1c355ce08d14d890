//! Store: incidents, their versions, deliveries and attempts, durably, in SQLite.
//!
//! All writes go through one writer thread that gathers whatever writes are waiting and
//! commits them in one transaction (group commit), each inside its own savepoint so one
//! failing write does not undo the others. A caller hears back only after the commit, which
//! is what lets ingress answer 202 only for what survives `kill -9`. Reads use their own
//! connection (WAL lets them run beside the writer).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use tokio::sync::oneshot;

use crate::model::{AttemptOutcome, Completion, DeliveryStatus, Event, TicketFacts};
// Until every caller names `model` directly.
pub use crate::model::{now_ms, rfc3339};

/// `[storage]`: where the store keeps its data. `config` builds it.
#[derive(Debug, Clone)]
pub enum StorageConfig {
    Sqlite { path: PathBuf },
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A group commit failed: every job in it hears why (one error, many listeners).
    #[error("store: transaction aborted: {0}")]
    Aborted(String),
    #[error("store: cannot open {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("store: the writer has stopped")]
    Closed,
}

/// An incident ready to store: validated, serialized, routed.
#[derive(Debug, Clone)]
pub struct NewIncident {
    pub incident_id: String,
    pub update_time: Option<f64>,
    /// The incident as JSON text.
    pub body: String,
    /// SHA-256 of `body`, to tell a repeat from a change when `updateTime` is absent.
    pub body_hash: String,
    /// Connectors the incident was routed to, each with the ticket key it falls under.
    pub routes: Vec<Route>,
}

/// One connector an incident goes to.
#[derive(Debug, Clone)]
pub struct Route {
    pub connector: String,
    /// The correlation key: incidents with the same key share a ticket.
    pub key: String,
    /// How long a ticket takes more incidents (ms); `None`: until completed.
    pub aggregate_for_ms: Option<i64>,
    /// Whether the connector sends `updated` (a later incident joins the ticket either way).
    pub sends_updated: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IngestStatus {
    Accepted,
    Duplicate,
    Updated,
}

#[derive(Debug, Clone, Serialize)]
pub struct IngestOutcome {
    #[serde(rename = "incidentId")]
    pub incident_id: String,
    pub status: IngestStatus,
    pub deliveries: Vec<DeliveryRef>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeliveryRef {
    pub id: String,
    pub connector: String,
    pub event: Event,
}

/// A delivery a worker holds until its lease ends.
#[derive(Debug, Clone)]
pub struct LeasedDelivery {
    pub id: String,
    /// Proves this worker still holds the lease when it records the attempt.
    pub lease_token: String,
    pub incident_id: String,
    pub connector: String,
    pub event: Event,
    /// Attempts made before this one.
    pub attempts: u32,
    /// Attempts and time counted toward the retry budget start here (queueing or replay).
    pub budget_attempts: u32,
    pub budget_since_ms: i64,
    /// The incident version this delivery carries.
    pub incident_body: String,
    pub received_at_ms: i64,
    /// The ticket it belongs to (none for an upstream completion).
    pub ticket_seq: Option<i64>,
    pub ticket: TicketFacts,
    pub completion: Option<Completion>,
}

/// What one attempt did, as recorded.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptRecord {
    pub attempt: u32,
    pub started_at_ms: i64,
    pub latency_ms: i64,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    /// The first 2 KiB of the response body.
    pub response_body: Option<String>,
    pub outcome: AttemptOutcome,
}

/// The ticket id and link a `created` response carried.
#[derive(Debug, Clone)]
pub struct TicketUpdate {
    pub ticket_seq: i64,
    pub id: String,
    pub url: Option<String>,
}

/// Where a delivery goes after an attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum NextStep {
    Delivered,
    RetryAt { at_ms: i64 },
    Dead { reason: String },
}

#[derive(Debug, Clone, Serialize)]
pub struct DeliveryView {
    pub id: String,
    #[serde(rename = "incidentId")]
    pub incident_id: String,
    pub connector: String,
    pub event: String,
    pub status: String,
    pub attempt_count: u32,
    pub created_at: String,
    pub updated_at: String,
    pub next_attempt_at: Option<String>,
    /// A pending delivery waits for this earlier one of its ticket (pending, or a dead
    /// `created` that needs a replay).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    pub last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<Vec<AttemptView>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AttemptView {
    pub attempt: u32,
    pub started_at: String,
    pub latency_ms: i64,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    pub response_body: Option<String>,
    pub outcome: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct IncidentView {
    #[serde(rename = "incidentId")]
    pub incident_id: String,
    pub source: String,
    pub status: String,
    pub status_change_time: String,
    pub received_at: String,
    pub updated_at: String,
    pub versions: u32,
    /// How the incident was completed (seed 000's `new` object), once it is.
    pub completion: Option<Completion>,
    pub incident: serde_json::Value,
    /// Connector name → its tickets for this incident and its deliveries (oldest first,
    /// each with its attempts).
    pub connectors: std::collections::BTreeMap<String, ConnectorView>,
}

/// One connector's side of an incident, as seed 004's `info` action shows an issue.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConnectorView {
    pub tickets: Vec<TicketView>,
    pub deliveries: Vec<DeliveryView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TicketView {
    pub correlation_key: String,
    /// What the target called the ticket (null until its `created` succeeded).
    pub ticket_id: Option<String>,
    pub ticket_url: Option<String>,
    /// `open`, or `completed`.
    pub status: String,
    pub opened_at: String,
    /// Until when later incidents with the key join this ticket (null: until completed).
    pub aggregates_until: Option<String>,
    /// Incidents on this ticket.
    pub incidents: u32,
}

/// Who calls the back channel: a source (for its own incidents) or a connector's target (for
/// incidents it has a ticket for).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Source(String),
    Connector(String),
}

/// What a completion through the back channel did.
#[derive(Debug, Clone)]
pub enum CompleteOutcome {
    NotFound,
    AlreadyCompleted {
        since: String,
    },
    Completed {
        old: serde_json::Value,
        new: serde_json::Value,
        deliveries: Vec<DeliveryRef>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum ResolveOutcome {
    Resolved,
    NotFound,
    NotApplicable(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum ReplayOutcome {
    Replayed,
    NotFound,
    NotDead(String),
}

#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    pub status: Option<String>,
    pub connector: Option<String>,
    pub limit: usize,
}

/// The ordering rule, in one place: delivery `d` waits behind an earlier delivery `e` of the
/// same connector and order key (the ticket) that is pending, or is a dead `created` (its
/// ticket does not exist yet). Used to lease, to find the next due time, and to show
/// `waiting_for`.
macro_rules! waits_behind {
    () => {
        "e.connector = d.connector AND e.order_key = d.order_key AND e.seq < d.seq \
         AND (e.status = 'pending' OR (e.status = 'dead' AND e.event = 'created'))"
    };
}

type Finish = Box<dyn FnOnce(Option<StoreError>) + Send>;
type Job = Box<dyn FnOnce(&Connection) -> (bool, Finish) + Send>;

/// Writes gathered into one commit at most.
const MAX_GROUP: usize = 512;

#[derive(Clone)]
pub struct Store {
    jobs: std::sync::mpsc::Sender<Job>,
    reader: Arc<Mutex<Connection>>,
    /// Held for the store's life: one process per SQLite file.
    _lock: Arc<std::fs::File>,
}

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS incidents (
    incident_id        TEXT PRIMARY KEY,
    source             TEXT NOT NULL,
    update_time        REAL,
    body_hash          TEXT NOT NULL,
    version_id         INTEGER NOT NULL,
    versions           INTEGER NOT NULL,
    status             TEXT NOT NULL DEFAULT 'open',
    status_change_ms   INTEGER NOT NULL,
    reason_code        TEXT,
    notes              TEXT,
    received_ms        INTEGER NOT NULL,
    updated_ms         INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS incident_versions (
    version_id   INTEGER PRIMARY KEY AUTOINCREMENT,
    incident_id  TEXT NOT NULL,
    body         TEXT NOT NULL,
    received_ms  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id      TEXT NOT NULL UNIQUE,
    incident_id      TEXT NOT NULL,
    version_id       INTEGER NOT NULL,
    connector        TEXT NOT NULL,
    event            TEXT NOT NULL,
    status           TEXT NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    budget_attempts  INTEGER NOT NULL DEFAULT 0,
    budget_since_ms  INTEGER NOT NULL,
    next_attempt_ms  INTEGER NOT NULL,
    lease_until_ms   INTEGER NOT NULL DEFAULT 0,
    lease_token      TEXT,
    order_key        TEXT NOT NULL,
    ticket_seq       INTEGER,
    created_ms       INTEGER NOT NULL,
    updated_ms       INTEGER NOT NULL,
    last_error       TEXT
);
CREATE INDEX IF NOT EXISTS incident_versions_incident ON incident_versions (incident_id);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (status, next_attempt_ms);
CREATE INDEX IF NOT EXISTS deliveries_incident ON deliveries (incident_id);
CREATE INDEX IF NOT EXISTS deliveries_connector ON deliveries (connector, status);
CREATE INDEX IF NOT EXISTS deliveries_order ON deliveries (connector, order_key, seq);
CREATE TABLE IF NOT EXISTS tickets (
    ticket_seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    connector        TEXT NOT NULL,
    correlation_key  TEXT NOT NULL,
    status           TEXT NOT NULL,
    opened_ms        INTEGER NOT NULL,
    window_until_ms  INTEGER,
    ticket_id        TEXT,
    ticket_url       TEXT,
    updated_ms       INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS tickets_key ON tickets (connector, correlation_key, status);
CREATE TABLE IF NOT EXISTS ticket_incidents (
    ticket_seq   INTEGER NOT NULL,
    incident_id  TEXT NOT NULL,
    PRIMARY KEY (ticket_seq, incident_id)
);
CREATE INDEX IF NOT EXISTS ticket_incidents_incident ON ticket_incidents (incident_id);
-- Signed requests' webhook-ids, written in the transaction that stores their incidents: the
-- uniqueness holds across restarts and for every process on the database (PostgreSQL: the
-- same table, primary key and INSERT … ON CONFLICT). Rows older than the replay window are
-- pruned a few at a time through the seen_ms index.
CREATE TABLE IF NOT EXISTS seen_webhooks (
    source      TEXT NOT NULL,
    webhook_id  TEXT NOT NULL,
    seen_ms     INTEGER NOT NULL,
    PRIMARY KEY (source, webhook_id)
);
CREATE INDEX IF NOT EXISTS seen_webhooks_seen ON seen_webhooks (seen_ms);
CREATE TABLE IF NOT EXISTS attempts (
    delivery_id    TEXT NOT NULL,
    attempt        INTEGER NOT NULL,
    started_ms     INTEGER NOT NULL,
    latency_ms     INTEGER NOT NULL,
    status_code    INTEGER,
    error          TEXT,
    response_body  TEXT,
    outcome        TEXT NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);
"#;

fn private_options() -> std::fs::OpenOptions {
    let mut options = std::fs::OpenOptions::new();
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
}

/// Creates `path` (and tightens it and its -wal/-shm files if they exist) as owner-only.
fn private_file(path: &Path) -> Result<(), StoreError> {
    let failed = |p: &Path, e: std::io::Error| StoreError::Open {
        path: p.to_path_buf(),
        reason: e.to_string(),
    };
    private_options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| failed(path, e))?;
    #[cfg(unix)]
    for suffix in ["", "-wal", "-shm", "-journal"] {
        use std::os::unix::fs::PermissionsExt;
        let file = PathBuf::from(format!("{}{suffix}", path.display()));
        match std::fs::metadata(&file) {
            Ok(meta) if meta.permissions().mode() & 0o077 != 0 => {
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| failed(&file, e))?;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(failed(&file, e)),
        }
    }
    Ok(())
}

fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(|e| StoreError::Open {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    // FULL: a commit is on disk before the caller hears of it (power loss included).
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000;",
    )?;
    Ok(conn)
}

impl Store {
    /// Opens (creating if needed) the SQLite store at `path`.
    pub fn open_sqlite(path: &Path) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        }
        let lock_path = PathBuf::from(format!("{}.lock", path.display()));
        let lock = private_options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| StoreError::Open {
                path: lock_path.clone(),
                reason: e.to_string(),
            })?;
        lock.try_lock().map_err(|_| StoreError::Open {
            path: path.to_path_buf(),
            reason:
                "another gateway process is using this SQLite file (use PostgreSQL to run several)"
                    .into(),
        })?;

        // The store holds incidents and response bodies: readable by the owner alone.
        // SQLite gives its -wal and -shm files the database file's mode.
        private_file(path)?;
        let writer = open_connection(path)?;
        writer.execute_batch(SCHEMA)?;

        let reader = open_connection(path)?;

        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_loop(writer, rx))
            .map_err(|e| StoreError::Open {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        Ok(Store {
            jobs: tx,
            reader: Arc::new(Mutex::new(reader)),
            _lock: Arc::new(lock),
        })
    }

    /// After a crash: leases belong to processes, and holding the lock file this is the only
    /// process, so every lease left is from one that died. Its deliveries are due again —
    /// except a `created` of a connector that tracks ticket ids (`tracked`): it may have opened
    /// the ticket before the crash, and sending it again could open a second one. Such a
    /// delivery goes dead with that reason; an admin checks the target, then resolves it with
    /// the ticket's id or replays it. Returns how many were set aside so.
    pub async fn recover(&self, tracked: Vec<String>) -> Result<usize, StoreError> {
        self.write(move |conn| {
            let tracked = serde_json::to_string(&tracked).unwrap_or_else(|_| "[]".into());
            let parked = conn.execute(
                "UPDATE deliveries SET status = 'dead', lease_until_ms = 0, lease_token = NULL, updated_ms = ?2,
                        last_error = 'interrupted: the gateway stopped while this created request was being sent, so the target may already have opened the ticket. Look there, then POST /v1/deliveries/{id}/resolve with its ticket_id, or replay to send it again'
                 WHERE status = 'pending' AND lease_until_ms > 0 AND event = 'created'
                   AND connector IN (SELECT value FROM json_each(?1))",
                params![tracked, now_ms()],
            )?;
            conn.execute(
                "UPDATE deliveries SET lease_until_ms = 0, lease_token = NULL
                 WHERE status = 'pending' AND lease_until_ms > 0",
                [],
            )?;
            Ok(parked)
        })
        .await
    }

    /// An admin says a dead `created` did open its ticket (seen in the target): it becomes
    /// delivered with that id, and the ticket's other deliveries go on.
    pub async fn resolve(
        &self,
        delivery_id: String,
        ticket_id: String,
        ticket_url: Option<String>,
    ) -> Result<ResolveOutcome, StoreError> {
        self.write(move |conn| {
            let row: Option<(String, String, Option<i64>)> = conn
                .query_row(
                    "SELECT status, event, ticket_seq FROM deliveries WHERE delivery_id = ?1",
                    [&delivery_id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            let Some((status, event, ticket_seq)) = row else {
                return Ok(ResolveOutcome::NotFound);
            };
            let Some(ticket_seq) = ticket_seq.filter(|_| status == "dead" && event == "created") else {
                return Ok(ResolveOutcome::NotApplicable(format!(
                    "only a dead created delivery can be resolved; this one is a {status} {event}"
                )));
            };
            let now = now_ms();
            conn.execute(
                "UPDATE deliveries SET status = 'delivered', updated_ms = ?2,
                        last_error = 'resolved by an admin: the ticket exists in the target'
                 WHERE delivery_id = ?1",
                params![delivery_id, now],
            )?;
            conn.execute(
                "UPDATE tickets SET ticket_id = ?2, ticket_url = ?3, updated_ms = ?4 WHERE ticket_seq = ?1",
                params![ticket_seq, ticket_id, ticket_url, now],
            )?;
            Ok(ResolveOutcome::Resolved)
        })
        .await
    }

    /// Runs `f` in the writer's next transaction; resolves after that transaction commits.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let result = f(conn);
            let ok = result.is_ok();
            let finish: Finish = Box::new(move |commit_error| {
                let _ = tx.send(match commit_error {
                    Some(e) => Err(e),
                    None => result,
                });
            });
            (ok, finish)
        });
        self.jobs.send(job).map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().map_err(|_| StoreError::Closed)?;
            f(&conn)
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }

    /// Stores a batch of incidents and their deliveries, all or nothing. A signed request's
    /// `webhook_id` is claimed in the same transaction: when `source` already used it within
    /// [`REPLAY_WINDOW`], nothing is stored and the answer is [`Ingested::Replay`].
    pub async fn ingest(
        &self,
        source: String,
        webhook_id: Option<String>,
        batch: Vec<NewIncident>,
    ) -> Result<Ingested, StoreError> {
        self.write(move |conn| {
            let now = now_ms();
            if let Some(id) = &webhook_id
                && !claim_webhook_id(conn, &source, id, now)?
            {
                return Ok(Ingested::Replay);
            }
            batch
                .into_iter()
                .map(|inc| ingest_one(conn, &source, inc, now))
                .collect::<Result<Vec<_>, _>>()
                .map(Ingested::Stored)
        })
        .await
    }

    /// Whether every one of `sources` used `webhook_id` within [`REPLAY_WINDOW`]: such a
    /// request can only be a replay, refused before its body is read. (A read: the claim in
    /// [`Store::ingest`] is what decides.) Asked before the sender is authenticated, so it
    /// never waits for the reader: when the reader is busy the answer is `false`.
    pub async fn webhook_id_seen(
        &self,
        sources: Vec<String>,
        webhook_id: String,
    ) -> Result<bool, StoreError> {
        let reader = self.reader.clone();
        let seen = tokio::task::spawn_blocking(move || {
            let Ok(conn) = reader.try_lock() else {
                return Ok(false);
            };
            let conn = &*conn;
            let since = now_ms().saturating_sub(replay_window_ms());
            let mut stmt = conn.prepare_cached(
                "SELECT 1 FROM seen_webhooks WHERE source = ?1 AND webhook_id = ?2 AND seen_ms >= ?3",
            )?;
            for source in &sources {
                if !stmt.exists(params![source, webhook_id, since])? {
                    return Ok(false);
                }
            }
            Ok(!sources.is_empty())
        })
        .await;
        seen.map_err(|_| StoreError::Closed)?
    }

    /// Takes up to `limit` due deliveries for `lease_ms`, oldest due first, skipping
    /// connectors in `busy`. A delivery waits while an earlier one for the same connector and
    /// order key (the incident) is still pending, so a ticket sees its events in order.
    pub async fn lease_due(
        &self,
        limit: usize,
        lease_ms: i64,
        busy: Vec<String>,
    ) -> Result<Vec<LeasedDelivery>, StoreError> {
        self.write(move |conn| {
            let now = now_ms();
            let busy = serde_json::to_string(&busy).unwrap_or_else(|_| "[]".into());
            let candidates = conn
                .prepare_cached(concat!(
                    "SELECT d.seq, d.delivery_id, d.incident_id, d.version_id, d.connector, d.event,
                            d.attempts, d.budget_attempts, d.budget_since_ms, d.ticket_seq
                     FROM deliveries d
                     WHERE d.status = 'pending' AND d.next_attempt_ms <= ?1 AND d.lease_until_ms <= ?1
                       AND d.connector NOT IN (SELECT value FROM json_each(?2))
                       AND NOT EXISTS (SELECT 1 FROM deliveries e WHERE ", waits_behind!(), ")
                     ORDER BY d.next_attempt_ms, d.seq LIMIT ?3"),
                )?
                .query_map(params![now, busy, limit as i64], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, String>(5)?,
                        r.get::<_, u32>(6)?,
                        r.get::<_, u32>(7)?,
                        r.get::<_, i64>(8)?,
                        r.get::<_, Option<i64>>(9)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let mut ticket_of = conn.prepare_cached(
                "SELECT correlation_key, ticket_id, ticket_url FROM tickets WHERE ticket_seq = ?1",
            )?;
            let mut completion_of = conn.prepare_cached(
                "SELECT reason_code, notes, status_change_ms FROM incidents
                 WHERE incident_id = ?1 AND status = 'completed'",
            )?;
            let mut take = conn.prepare_cached(
                "UPDATE deliveries SET lease_until_ms = ?2, lease_token = ?3 WHERE seq = ?1",
            )?;
            let mut version = conn.prepare_cached(
                "SELECT body, received_ms FROM incident_versions WHERE version_id = ?1",
            )?;
            let mut leased = Vec::with_capacity(candidates.len());
            for (seq, id, incident_id, version_id, connector, event, attempts, budget_attempts, budget_since_ms, ticket_seq) in candidates {
                let body = version
                    .query_row([version_id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
                    .optional()?;
                let (Some((incident_body, received_at_ms)), Some(event)) = (body, Event::parse(&event)) else {
                    // A row this version cannot read must not stop every other delivery.
                    conn.execute(
                        "UPDATE deliveries SET status = 'dead', updated_ms = ?2,
                                last_error = 'stored delivery is unreadable (missing incident version or unknown event)'
                         WHERE seq = ?1",
                        params![seq, now],
                    )?;
                    continue;
                };
                let ticket = match ticket_seq {
                    Some(t) => ticket_of
                        .query_row([t], |r| {
                            Ok(TicketFacts {
                                key: r.get(0)?,
                                id: r.get(1)?,
                                url: r.get(2)?,
                            })
                        })
                        .optional()?
                        .unwrap_or_default(),
                    None => TicketFacts::default(),
                };
                let completion = completion_of
                    .query_row([&incident_id], |r| {
                        Ok(Completion {
                            reason_code: r.get::<_, Option<String>>(0)?.unwrap_or_default(),
                            notes: r.get(1)?,
                            status_change_time: rfc3339(r.get(2)?),
                        })
                    })
                    .optional()?;
                let lease_token = uuid::Uuid::now_v7().simple().to_string();
                take.execute(params![seq, now.saturating_add(lease_ms), lease_token])?;
                leased.push(LeasedDelivery {
                    ticket_seq,
                    ticket,
                    completion,
                    id,
                    lease_token,
                    incident_id,
                    connector,
                    event,
                    attempts,
                    budget_attempts,
                    budget_since_ms,
                    incident_body,
                    received_at_ms,
                });
            }
            Ok(leased)
        })
        .await
    }

    /// Records one attempt and moves the delivery on, in one transaction — if this worker
    /// still holds the lease (`false` when it lost it: another worker owns the delivery now,
    /// and this attempt's outcome is discarded).
    pub async fn record_attempt(
        &self,
        delivery_id: String,
        lease_token: String,
        record: AttemptRecord,
        next: NextStep,
        ticket: Option<TicketUpdate>,
    ) -> Result<bool, StoreError> {
        self.write(move |conn| {
            let now = now_ms();
            let (status, next_ms, error) = match &next {
                NextStep::Delivered => (DeliveryStatus::Delivered.as_str(), 0, None),
                NextStep::RetryAt { at_ms } => (
                    DeliveryStatus::Pending.as_str(),
                    *at_ms,
                    record
                        .error
                        .clone()
                        .or_else(|| record.status_code.map(|c| format!("HTTP {c}"))),
                ),
                NextStep::Dead { reason } => (DeliveryStatus::Dead.as_str(), 0, Some(reason.clone())),
            };
            let changed = conn
                .prepare_cached(
                    "UPDATE deliveries SET status = ?3, attempts = ?4, next_attempt_ms = ?5, lease_until_ms = 0,
                            lease_token = NULL, updated_ms = ?6, last_error = ?7
                     WHERE delivery_id = ?1 AND lease_token = ?2 AND status = 'pending'",
                )?
                .execute(params![delivery_id, lease_token, status, record.attempt, next_ms, now, error])?;
            if changed == 0 {
                return Ok(false);
            }
            if let Some(t) = &ticket {
                conn.prepare_cached(
                    "UPDATE tickets SET ticket_id = ?2, ticket_url = ?3, updated_ms = ?4 WHERE ticket_seq = ?1",
                )?
                .execute(params![t.ticket_seq, t.id, t.url, now])?;
            }
            conn.prepare_cached(
                "INSERT INTO attempts (delivery_id, attempt, started_ms, latency_ms, status_code, error, response_body, outcome)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                delivery_id,
                record.attempt,
                record.started_at_ms,
                record.latency_ms,
                record.status_code,
                record.error,
                record.response_body,
                record.outcome.as_str(),
            ])?;
            Ok(true)
        })
        .await
    }

    /// When the next delivery a worker could take falls due (ms): the earliest at the head of
    /// its (connector, order key) line, outside `busy` connectors, not leased.
    pub async fn next_due_ms(&self, busy: Vec<String>) -> Result<Option<i64>, StoreError> {
        self.read(move |conn| {
            let busy = serde_json::to_string(&busy).unwrap_or_else(|_| "[]".into());
            Ok(conn
                .prepare_cached(concat!(
                    "SELECT MIN(MAX(d.next_attempt_ms, d.lease_until_ms)) FROM deliveries d
                     WHERE d.status = 'pending'
                       AND d.connector NOT IN (SELECT value FROM json_each(?1))
                       AND NOT EXISTS (SELECT 1 FROM deliveries e WHERE ",
                    waits_behind!(),
                    ")"
                ))?
                .query_row([busy], |r| r.get::<_, Option<i64>>(0))
                .optional()?
                .flatten())
        })
        .await
    }

    /// Gives leases back unused, so the deliveries are due again at once.
    pub async fn release(&self, leases: Vec<(String, String)>) -> Result<(), StoreError> {
        self.write(move |conn| {
            let mut stmt = conn.prepare_cached(
                "UPDATE deliveries SET lease_until_ms = 0, lease_token = NULL
                 WHERE delivery_id = ?1 AND lease_token = ?2 AND status = 'pending'",
            )?;
            for (id, token) in leases {
                stmt.execute([id, token])?;
            }
            Ok(())
        })
        .await
    }

    /// Pushes a held lease's end to `now + lease_ms` while its attempt runs; `false` when the
    /// lease is no longer this worker's.
    pub async fn extend_lease(
        &self,
        delivery_id: String,
        lease_token: String,
        lease_ms: i64,
    ) -> Result<bool, StoreError> {
        self.write(move |conn| {
            let changed = conn
                .prepare_cached(
                    "UPDATE deliveries SET lease_until_ms = ?3
                     WHERE delivery_id = ?1 AND lease_token = ?2 AND status = 'pending'",
                )?
                .execute(params![
                    delivery_id,
                    lease_token,
                    now_ms().saturating_add(lease_ms)
                ])?;
            Ok(changed == 1)
        })
        .await
    }

    /// A dead delivery goes back to the queue, due now, its attempts kept; the retry budget
    /// starts again from here.
    pub async fn replay(&self, delivery_id: String) -> Result<ReplayOutcome, StoreError> {
        self.write(move |conn| {
            let status: Option<String> = conn
                .query_row(
                    "SELECT status FROM deliveries WHERE delivery_id = ?1",
                    [&delivery_id],
                    |r| r.get(0),
                )
                .optional()?;
            match status.as_deref() {
                None => Ok(ReplayOutcome::NotFound),
                Some("dead") => {
                    let now = now_ms();
                    conn.execute(
                        "UPDATE deliveries SET status = 'pending', next_attempt_ms = ?2, lease_until_ms = 0,
                                budget_attempts = attempts, budget_since_ms = ?2, updated_ms = ?2
                         WHERE delivery_id = ?1",
                        params![delivery_id, now],
                    )?;
                    Ok(ReplayOutcome::Replayed)
                }
                Some(other) => Ok(ReplayOutcome::NotDead(other.to_string())),
            }
        })
        .await
    }

    /// Completes an incident: records the status, closes its open tickets (a new incident
    /// with their key opens a new ticket), and queues `completed` for each ticket's connector
    /// (but those in `skipping`) and for each `upstream` connector. One transaction.
    pub async fn complete(
        &self,
        incident_id: String,
        caller: Caller,
        reason_code: String,
        notes: Option<String>,
        skipping: Vec<String>,
        upstream: Vec<String>,
    ) -> Result<CompleteOutcome, StoreError> {
        self.write(move |conn| {
            let row: Option<(String, i64, i64, String)> = conn
                .query_row(
                    "SELECT status, status_change_ms, version_id, source FROM incidents WHERE incident_id = ?1",
                    [&incident_id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()?;
            let Some((status, changed_ms, version_id, source)) = row else {
                return Ok(CompleteOutcome::NotFound);
            };
            // A token completes only what its holder has: an incident the caller does not know
            // is, for it, not there.
            let entitled = match &caller {
                Caller::Source(name) => *name == source,
                Caller::Connector(name) => conn
                    .query_row(
                        "SELECT 1 FROM tickets t JOIN ticket_incidents ti ON ti.ticket_seq = t.ticket_seq
                         WHERE ti.incident_id = ?1 AND t.connector = ?2 LIMIT 1",
                        params![incident_id, name],
                        |_| Ok(()),
                    )
                    .optional()?
                    .is_some(),
            };
            if !entitled {
                return Ok(CompleteOutcome::NotFound);
            }
            if status == "completed" {
                return Ok(CompleteOutcome::AlreadyCompleted {
                    since: rfc3339(changed_ms),
                });
            }
            let now = now_ms();
            conn.execute(
                "UPDATE incidents SET status = 'completed', reason_code = ?2, notes = ?3,
                        status_change_ms = ?4, updated_ms = ?4
                 WHERE incident_id = ?1",
                params![incident_id, reason_code, notes, now],
            )?;
            let tickets: Vec<(i64, String)> = conn
                .prepare_cached(
                    "SELECT t.ticket_seq, t.connector FROM tickets t
                     JOIN ticket_incidents ti ON ti.ticket_seq = t.ticket_seq
                     WHERE ti.incident_id = ?1 AND t.status = 'open' ORDER BY t.ticket_seq",
                )?
                .query_map([&incident_id], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            let mut deliveries = Vec::new();
            for (ticket_seq, connector) in tickets {
                conn.execute(
                    "UPDATE tickets SET status = 'completed', updated_ms = ?2 WHERE ticket_seq = ?1",
                    params![ticket_seq, now],
                )?;
                if skipping.contains(&connector) {
                    continue;
                }
                let id = insert_delivery(conn, &incident_id, version_id, &connector, Event::Completed, Some(ticket_seq), now)?;
                deliveries.push(DeliveryRef { id, connector, event: Event::Completed });
            }
            for connector in upstream {
                if skipping.contains(&connector) {
                    continue;
                }
                let id = insert_delivery(conn, &incident_id, version_id, &connector, Event::Completed, None, now)?;
                deliveries.push(DeliveryRef { id, connector, event: Event::Completed });
            }
            Ok(CompleteOutcome::Completed {
                old: serde_json::json!({
                    "status": "open",
                    "status_change_time": rfc3339(changed_ms),
                }),
                new: serde_json::json!({
                    "notes": notes,
                    "reason_code": reason_code,
                    "status": "completed",
                    "status_change_time": rfc3339(now),
                }),
                deliveries,
            })
        })
        .await
    }

    pub async fn incident(&self, incident_id: String) -> Result<Option<IncidentView>, StoreError> {
        self.read(move |conn| {
            let row = conn
                .query_row(
                    "SELECT i.incident_id, i.source, i.status, i.status_change_ms, i.received_ms, i.updated_ms,
                            i.versions, v.body
                     FROM incidents i JOIN incident_versions v ON v.version_id = i.version_id
                     WHERE i.incident_id = ?1",
                    [&incident_id],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, i64>(3)?,
                            r.get::<_, i64>(4)?,
                            r.get::<_, i64>(5)?,
                            r.get::<_, u32>(6)?,
                            r.get::<_, String>(7)?,
                        ))
                    },
                )
                .optional()?;
            let Some((id, source, status, changed, received, updated, versions, body)) = row else {
                return Ok(None);
            };
            let deliveries = query_deliveries(
                conn,
                "WHERE incident_id = ?1 ORDER BY seq",
                &[&id as &dyn rusqlite::ToSql],
                true,
            )?;
            let mut connectors = std::collections::BTreeMap::<String, ConnectorView>::new();
            let mut tickets = conn.prepare_cached(
                "SELECT t.connector, t.correlation_key, t.ticket_id, t.ticket_url, t.status, t.opened_ms,
                        t.window_until_ms,
                        (SELECT COUNT(*) FROM ticket_incidents x WHERE x.ticket_seq = t.ticket_seq)
                 FROM tickets t JOIN ticket_incidents ti ON ti.ticket_seq = t.ticket_seq
                 WHERE ti.incident_id = ?1 ORDER BY t.ticket_seq",
            )?;
            let rows = tickets.query_map([&id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    TicketView {
                        correlation_key: r.get(1)?,
                        ticket_id: r.get(2)?,
                        ticket_url: r.get(3)?,
                        status: r.get(4)?,
                        opened_at: rfc3339(r.get(5)?),
                        aggregates_until: r.get::<_, Option<i64>>(6)?.map(rfc3339),
                        incidents: r.get(7)?,
                    },
                ))
            })?;
            for row in rows {
                let (connector, ticket) = row?;
                connectors.entry(connector).or_default().tickets.push(ticket);
            }
            for d in deliveries {
                connectors.entry(d.connector.clone()).or_default().deliveries.push(d);
            }
            let completion = conn
                .query_row(
                    "SELECT reason_code, notes, status_change_ms FROM incidents
                     WHERE incident_id = ?1 AND status = 'completed'",
                    [&id],
                    |r| {
                        Ok(Completion {
                            reason_code: r.get::<_, Option<String>>(0)?.unwrap_or_default(),
                            notes: r.get(1)?,
                            status_change_time: rfc3339(r.get(2)?),
                        })
                    },
                )
                .optional()?;
            Ok(Some(IncidentView {
                incident_id: id,
                source,
                status,
                status_change_time: rfc3339(changed),
                received_at: rfc3339(received),
                updated_at: rfc3339(updated),
                versions,
                completion,
                incident: serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
                connectors,
            }))
        })
        .await
    }

    pub async fn deliveries(
        &self,
        filter: DeliveryFilter,
    ) -> Result<Vec<DeliveryView>, StoreError> {
        self.read(move |conn| {
            let limit = filter.limit.clamp(1, 1000) as i64;
            query_deliveries(
                conn,
                "WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR connector = ?2) ORDER BY seq LIMIT ?3",
                &[&filter.status, &filter.connector, &limit],
                false,
            )
        })
        .await
    }

    pub async fn delivery(&self, delivery_id: String) -> Result<Option<DeliveryView>, StoreError> {
        self.read(move |conn| {
            Ok(
                query_deliveries(conn, "WHERE delivery_id = ?1", &[&delivery_id], true)?
                    .into_iter()
                    .next(),
            )
        })
        .await
    }
}

fn query_deliveries(
    conn: &Connection,
    clause: &str,
    args: &[&dyn rusqlite::ToSql],
    with_attempts: bool,
) -> Result<Vec<DeliveryView>, StoreError> {
    let sql = format!(
        "SELECT d.delivery_id, d.incident_id, d.connector, d.event, d.status, d.attempts, d.created_ms,
                d.updated_ms, d.next_attempt_ms, d.last_error,
                CASE WHEN d.status = 'pending' THEN
                    (SELECT e.delivery_id FROM deliveries e WHERE {waits} ORDER BY e.seq LIMIT 1)
                END
         FROM deliveries d {clause}",
        waits = waits_behind!()
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut out = stmt
        .query_map(args, |r| {
            let status: String = r.get(4)?;
            let next: i64 = r.get(8)?;
            Ok(DeliveryView {
                id: r.get(0)?,
                incident_id: r.get(1)?,
                connector: r.get(2)?,
                event: r.get(3)?,
                next_attempt_at: (status == "pending").then(|| rfc3339(next)),
                status,
                attempt_count: r.get(5)?,
                created_at: rfc3339(r.get(6)?),
                updated_at: rfc3339(r.get(7)?),
                last_error: r.get(9)?,
                waiting_for: r.get(10)?,
                attempts: None,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    if with_attempts {
        let mut stmt = conn.prepare_cached(
            "SELECT attempt, started_ms, latency_ms, status_code, error, response_body, outcome
             FROM attempts WHERE delivery_id = ?1 ORDER BY attempt",
        )?;
        for d in &mut out {
            let attempts = stmt
                .query_map([&d.id], |r| {
                    Ok(AttemptView {
                        attempt: r.get(0)?,
                        started_at: rfc3339(r.get(1)?),
                        latency_ms: r.get(2)?,
                        status_code: r.get(3)?,
                        error: r.get(4)?,
                        response_body: r.get(5)?,
                        outcome: r.get(6)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            d.attempts = Some(attempts);
        }
    }
    Ok(out)
}

pub use crate::model::REPLAY_WINDOW;

/// Expired ids deleted per claim: each claim adds one row and may delete this many, so the
/// table stays about the size of one window's traffic at a bounded cost per request.
const PRUNE_PER_CLAIM: i64 = 64;

fn replay_window_ms() -> i64 {
    i64::try_from(REPLAY_WINDOW.as_millis()).unwrap_or(i64::MAX)
}

/// What [`Store::ingest`] did.
#[derive(Debug, Clone)]
pub enum Ingested {
    Stored(Vec<IngestOutcome>),
    /// The request's `webhook-id` was already used by its source: nothing was stored.
    Replay,
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

/// Whether `inc`'s body is one of its incident's earlier versions.
fn seen_before(conn: &Connection, inc: &NewIncident) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM incident_versions WHERE incident_id = ?1 AND body = ?2")?
        .exists(params![inc.incident_id, inc.body])?)
}

fn ingest_one(
    conn: &Connection,
    source: &str,
    inc: NewIncident,
    now: i64,
) -> Result<IngestOutcome, StoreError> {
    let existing: Option<(Option<f64>, String, String)> = conn
        .prepare_cached(
            "SELECT update_time, body_hash, status FROM incidents WHERE incident_id = ?1",
        )?
        .query_row([&inc.incident_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()?;
    let completed = matches!(&existing, Some((_, _, status)) if status == "completed");
    let status = match &existing {
        None => IngestStatus::Accepted,
        Some((old_time, old_hash, _)) => match (old_time, inc.update_time) {
            // A version replaces the stored one only when it says it is newer.
            (Some(old), Some(new)) if new > *old => IngestStatus::Updated,
            (Some(_), Some(_)) => IngestStatus::Duplicate,
            // Without a time it cannot show it is newer than one with a time: never applied,
            // so a captured or delayed old version cannot roll the incident back.
            (Some(_), None) => IngestStatus::Duplicate,
            // The first time given is newer than none.
            (None, Some(_)) => IngestStatus::Updated,
            // Without updateTime on both sides, arrival order decides: a change is an update,
            // unless it is a version seen before (a late retry of an older one).
            (None, None) if *old_hash == inc.body_hash => IngestStatus::Duplicate,
            (None, None) if seen_before(conn, &inc)? => IngestStatus::Duplicate,
            (None, None) => IngestStatus::Updated,
        },
    };
    if status == IngestStatus::Duplicate {
        return Ok(IngestOutcome {
            incident_id: inc.incident_id,
            status,
            deliveries: vec![],
        });
    }
    conn.prepare_cached(
        "INSERT INTO incident_versions (incident_id, body, received_ms) VALUES (?1, ?2, ?3)",
    )?
    .execute(params![inc.incident_id, inc.body, now])?;
    let version_id = conn.last_insert_rowid();
    if existing.is_none() {
        conn.prepare_cached(
            "INSERT INTO incidents (incident_id, source, update_time, body_hash, version_id, versions,
                                    status, status_change_ms, received_ms, updated_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, 1, 'open', ?6, ?6, ?6)",
        )?
        .execute(params![inc.incident_id, source, inc.update_time, inc.body_hash, version_id, now])?;
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
    let mut deliveries = Vec::with_capacity(inc.routes.len());
    // Completion through the back channel is final: a later version is kept (the admin API
    // shows it) but opens and updates no ticket.
    let routes = if completed { Vec::new() } else { inc.routes };
    for route in routes {
        let (ticket_seq, event) = attach_to_ticket(conn, &inc.incident_id, &route, now)?;
        if event == Event::Updated && !route.sends_updated {
            continue;
        }
        let id = insert_delivery(
            conn,
            &inc.incident_id,
            version_id,
            &route.connector,
            event,
            Some(ticket_seq),
            now,
        )?;
        deliveries.push(DeliveryRef {
            id,
            connector: route.connector,
            event,
        });
    }
    Ok(IngestOutcome {
        incident_id: inc.incident_id,
        status,
        deliveries,
    })
}

/// The ticket an incident joins for one connector: the open one with its key (within its
/// aggregation window), or a new one. The first delivery of a ticket is `created`, every
/// later one `updated`.
fn attach_to_ticket(
    conn: &Connection,
    incident_id: &str,
    route: &Route,
    now: i64,
) -> Result<(i64, Event), StoreError> {
    // A new version of an incident stays on the ticket it is already on (whatever its key
    // renders to now, and however long ago the ticket opened); the window only limits other
    // incidents joining.
    let own: Option<i64> = conn
        .prepare_cached(
            "SELECT t.ticket_seq FROM tickets t JOIN ticket_incidents ti ON ti.ticket_seq = t.ticket_seq
             WHERE ti.incident_id = ?1 AND t.connector = ?2 AND t.status = 'open'
             ORDER BY t.ticket_seq DESC LIMIT 1",
        )?
        .query_row(params![incident_id, route.connector], |r| r.get(0))
        .optional()?;
    let open: Option<i64> = match own {
        Some(seq) => Some(seq),
        None => conn
            .prepare_cached(
                "SELECT ticket_seq FROM tickets
                 WHERE connector = ?1 AND correlation_key = ?2 AND status = 'open'
                   AND (window_until_ms IS NULL OR window_until_ms > ?3)
                 ORDER BY ticket_seq DESC LIMIT 1",
            )?
            .query_row(params![route.connector, route.key, now], |r| r.get(0))
            .optional()?,
    };
    let (ticket_seq, event) = match open {
        Some(seq) => (seq, Event::Updated),
        None => {
            conn.prepare_cached(
                "INSERT INTO tickets (connector, correlation_key, status, opened_ms, window_until_ms, updated_ms)
                 VALUES (?1, ?2, 'open', ?3, ?4, ?3)",
            )?
            .execute(params![
                route.connector,
                route.key,
                now,
                route.aggregate_for_ms.map(|ms| now.saturating_add(ms))
            ])?;
            (conn.last_insert_rowid(), Event::Created)
        }
    };
    conn.prepare_cached(
        "INSERT OR IGNORE INTO ticket_incidents (ticket_seq, incident_id) VALUES (?1, ?2)",
    )?
    .execute(params![ticket_seq, incident_id])?;
    Ok((ticket_seq, event))
}

/// Queues one delivery. Deliveries of one ticket share an order key and go one at a time, in
/// the order they were queued; without a ticket, the incident orders them.
fn insert_delivery(
    conn: &Connection,
    incident_id: &str,
    version_id: i64,
    connector: &str,
    event: Event,
    ticket_seq: Option<i64>,
    now: i64,
) -> Result<String, StoreError> {
    let id = format!("msg_{}", uuid::Uuid::now_v7().simple());
    let order_key = match ticket_seq {
        Some(seq) => format!("ticket:{seq}"),
        None => format!("incident:{incident_id}"),
    };
    conn.prepare_cached(
        "INSERT INTO deliveries (delivery_id, incident_id, version_id, connector, event, status,
                                 order_key, ticket_seq, budget_since_ms, next_attempt_ms, created_ms, updated_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6, ?7, ?8, ?8, ?8, ?8)",
    )?
    .execute(params![id, incident_id, version_id, connector, event.as_str(), order_key, ticket_seq, now])?;
    Ok(id)
}

fn writer_loop(conn: Connection, jobs: std::sync::mpsc::Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            tracing::error!(error = %e, "store: cannot begin a transaction");
            // Dropping the jobs tells their callers the write did not happen.
            continue;
        }
        let mut finishes = Vec::with_capacity(group.len());
        let mut aborted = None;
        for job in group {
            if aborted.is_some() {
                // Dropping a job tells its caller the write did not happen.
                continue;
            }
            if let Err(e) = conn.execute_batch("SAVEPOINT job") {
                tracing::error!(error = %e, "store: cannot open a savepoint");
                aborted = Some(e.to_string());
                continue;
            }
            let (ok, finish) =
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&conn))) {
                    Ok(done) => done,
                    Err(_) => {
                        // The job's caller hears nothing (its channel is gone) and sees the
                        // write fail; the writer lives on for everyone else.
                        tracing::error!("store: a write panicked; it was rolled back");
                        let _ = conn.execute_batch("ROLLBACK TO job; RELEASE job");
                        continue;
                    }
                };
            finishes.push(finish);
            if conn.is_autocommit() {
                // SQLite rolled the whole transaction back (disk full, I/O error): nothing in
                // this group was written, whatever the jobs returned.
                aborted = Some("the transaction was rolled back by SQLite".into());
                continue;
            }
            let end = if ok {
                "RELEASE job"
            } else {
                "ROLLBACK TO job; RELEASE job"
            };
            if let Err(e) = conn.execute_batch(end) {
                tracing::error!(error = %e, "store: cannot close a savepoint");
                aborted = Some(e.to_string());
            }
        }
        if let Some(reason) = aborted {
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            for f in finishes {
                f(Some(StoreError::Aborted(reason.clone())));
            }
            continue;
        }
        match conn.execute_batch("COMMIT") {
            Ok(()) => finishes.into_iter().for_each(|f| f(None)),
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                for f in finishes {
                    f(Some(StoreError::Aborted(format!("commit failed: {e}"))));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incident(id: &str) -> NewIncident {
        NewIncident {
            incident_id: id.into(),
            update_time: None,
            body: format!("{{\"incidentId\":\"{id}\"}}"),
            body_hash: id.into(),
            routes: vec![],
        }
    }

    fn seen_rows(path: &Path) -> i64 {
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
}
