//! The SQLite backend: one file, owned by one process (a lock file enforces it), opened as
//! owner-only. Writes go through one writer thread that commits them in groups
//! (`writer`); reads use their own connection (WAL lets them run beside the writer). This
//! file opens the store and holds its schema; the uses are beside it: `ingest`, `queue`,
//! `tickets`, `views`, `sla`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::config::DbConfig;
use rusqlite::{Connection, Params, Row};

use crate::model::{Completion, TicketFacts, rfc3339};
use crate::store::{Health, StoreError};

/// Declares a struct and its [`FromRow`]: each field read from the column of its own name, so
/// a struct that is just the columns of a SELECT lists them once. (Structs whose fields are
/// computed from the columns implement [`FromRow`] by hand.)
macro_rules! from_row {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $($(#[$field_meta:meta])* $field_vis:vis $field:ident: $ty:ty),* $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis struct $name {
            $($(#[$field_meta])* $field_vis $field: $ty),*
        }

        impl $crate::store::sqlite::FromRow for $name {
            fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
                Ok($name {
                    $($field: r.get(stringify!($field))?),*
                })
            }
        }
    };
}

mod ingest;
mod operate;
mod queue;
mod sla;
mod tickets;
mod views;
mod writer;

#[cfg(test)]
mod testing;

/// The SQLite store. Cloned only through [`crate::store::Store`].
pub struct Sqlite {
    writer: writer::Writer,
    reader: Arc<Mutex<Connection>>,
    /// The file, for connections of their own (the WAL checkpoint after a purge).
    path: PathBuf,
    /// Held for the store's life: one process per SQLite file.
    _lock: std::fs::File,
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
    updated_ms         INTEGER NOT NULL,
    account_id         INTEGER
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
    ready            INTEGER NOT NULL DEFAULT 0,
    due_ms           INTEGER NOT NULL DEFAULT 0,
    created_ms       INTEGER NOT NULL,
    updated_ms       INTEGER NOT NULL,
    last_error       TEXT,
    outcome_unknown  INTEGER NOT NULL DEFAULT 0,
    purpose          TEXT,
    collecting       INTEGER NOT NULL DEFAULT 0,
    collected        INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS incident_versions_incident ON incident_versions (incident_id);
CREATE INDEX IF NOT EXISTS deliveries_incident ON deliveries (incident_id);
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
    updated_ms       INTEGER NOT NULL,
    closed_ms        INTEGER
);
CREATE INDEX IF NOT EXISTS tickets_key ON tickets (connector, correlation_key, status);
CREATE TABLE IF NOT EXISTS ticket_incidents (
    ticket_seq   INTEGER NOT NULL,
    incident_id  TEXT NOT NULL,
    PRIMARY KEY (ticket_seq, incident_id)
);
CREATE INDEX IF NOT EXISTS ticket_incidents_incident ON ticket_incidents (incident_id);
-- A collection window's incidents (`collect_for`), by the delivery that carries them: each
-- once, in the order they arrived (`position`), at its latest version. The delivery's
-- `collecting` is 1 while the window takes incidents (until it is leased), `collected` how
-- many it holds (0: no window).
CREATE TABLE IF NOT EXISTS collected_incidents (
    delivery_seq  INTEGER NOT NULL,
    position      INTEGER NOT NULL,
    incident_id   TEXT NOT NULL,
    version_id    INTEGER NOT NULL,
    PRIMARY KEY (delivery_seq, position),
    UNIQUE (delivery_seq, incident_id)
);
CREATE INDEX IF NOT EXISTS collected_incidents_incident ON collected_incidents (incident_id);
-- Retention walks incidents oldest change first, from where its last batch stopped.
CREATE INDEX IF NOT EXISTS incidents_updated ON incidents (updated_ms, incident_id);
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
-- Connectors an admin paused through the API (a connector's `paused` in the config is read
-- from the config): their deliveries stay queued, none leased, until resumed.
CREATE TABLE IF NOT EXISTS connector_pauses (
    connector  TEXT PRIMARY KEY,
    since_ms   INTEGER NOT NULL,
    reason     TEXT
);
CREATE TABLE IF NOT EXISTS attempts (
    delivery_id    TEXT NOT NULL,
    attempt        INTEGER NOT NULL,
    started_ms     INTEGER NOT NULL,
    latency_ms     INTEGER NOT NULL,
    status_code    INTEGER,
    error          TEXT,
    response_body  TEXT,
    outcome        TEXT NOT NULL,
    lookup         TEXT,
    PRIMARY KEY (delivery_id, attempt)
);
-- SLA clocks (`crate::sla`): one per ticket and level (`take_over`, `complete`), started in the
-- transaction that opens the ticket. `clock` is the whole clock as JSON, `revision` what a
-- save must name to apply (`store::SlaSave`); `state` and `breached` repeat the clock's, for
-- lists. `incident_id` and `account_id` are those of the incident that opened the ticket
-- (tenant scoping without a join); `created_ok_ms` when its `created` was first delivered.
-- The unique key is also the index of a ticket's clocks; each question has its index:
-- the watchdog's (`next_check_ms`, only of clocks that have one) and each list filter's
-- (SQLite appends the rowid, `clock_id`, so each ends in the newest-first order).
CREATE TABLE IF NOT EXISTS sla_clocks (
    clock_id       INTEGER PRIMARY KEY AUTOINCREMENT,
    ticket_seq     INTEGER NOT NULL,
    level          TEXT NOT NULL,
    policy         TEXT NOT NULL,
    clock          TEXT NOT NULL,
    revision       INTEGER NOT NULL DEFAULT 0,
    next_check_ms  INTEGER,
    state          TEXT NOT NULL,
    breached       INTEGER NOT NULL DEFAULT 0,
    incident_id    TEXT NOT NULL,
    account_id     INTEGER,
    created_ok_ms  INTEGER,
    UNIQUE (ticket_seq, level)
);
CREATE INDEX IF NOT EXISTS sla_clocks_next_check ON sla_clocks (next_check_ms)
    WHERE next_check_ms IS NOT NULL;
CREATE INDEX IF NOT EXISTS sla_clocks_state ON sla_clocks (state);
CREATE INDEX IF NOT EXISTS sla_clocks_breached ON sla_clocks (breached);
CREATE INDEX IF NOT EXISTS sla_clocks_account ON sla_clocks (account_id);
"#;

/// Columns added after the first release, each with what adds it to an older file: whether
/// a `created`'s outcome is unknown, what the lookup before an attempt found, why a delivery
/// was queued beside its event, when a ticket closed (for reopening), an incident's
/// account (its tenant, for scoped admin tokens; an older file's incidents take it from their
/// current version's body), and a delivery's collection window (none, in an older file).
const ADDED_COLUMNS: [(&str, &str, &str); 7] = [
    (
        "deliveries",
        "outcome_unknown",
        "ALTER TABLE deliveries ADD COLUMN outcome_unknown INTEGER NOT NULL DEFAULT 0",
    ),
    (
        "attempts",
        "lookup",
        "ALTER TABLE attempts ADD COLUMN lookup TEXT",
    ),
    (
        "deliveries",
        "purpose",
        "ALTER TABLE deliveries ADD COLUMN purpose TEXT",
    ),
    (
        "tickets",
        "closed_ms",
        "ALTER TABLE tickets ADD COLUMN closed_ms INTEGER",
    ),
    (
        "incidents",
        "account_id",
        "ALTER TABLE incidents ADD COLUMN account_id INTEGER;
         UPDATE incidents SET account_id =
             (SELECT json_extract(v.body, '$.accountId') FROM incident_versions v
               WHERE v.version_id = incidents.version_id
                 AND json_type(v.body, '$.accountId') = 'integer')",
    ),
    (
        "deliveries",
        "collecting",
        "ALTER TABLE deliveries ADD COLUMN collecting INTEGER NOT NULL DEFAULT 0",
    ),
    (
        "deliveries",
        "collected",
        "ALTER TABLE deliveries ADD COLUMN collected INTEGER NOT NULL DEFAULT 0",
    ),
];

/// The queue's indexes, each so that its question costs O(log n) in the deliveries stored
/// (created after [`migrate`] has added their columns to an older file):
/// - `deliveries_ready`: the heads of their lines that may be leased, per connector, by the
///   time they fall due (`ready` = pending and nothing earlier of its ticket blocks it;
///   `due_ms` = when it may next be leased: its next attempt, or its lease's end);
/// - `deliveries_blocking`: per ticket line, the deliveries that hold later ones back (the
///   ordering rule, `waits_behind!`), to find a line's head;
/// - `deliveries_leased`: the leases to clear at start.
const QUEUE_INDEXES: &str = r#"
DROP INDEX IF EXISTS deliveries_due;
DROP INDEX IF EXISTS deliveries_connector;
CREATE INDEX IF NOT EXISTS deliveries_ready ON deliveries (connector, due_ms, seq) WHERE ready = 1;
CREATE INDEX IF NOT EXISTS deliveries_blocking ON deliveries (connector, order_key, seq)
    WHERE status = 'pending' OR (status = 'dead' AND event = 'created');
CREATE INDEX IF NOT EXISTS deliveries_leased ON deliveries (lease_until_ms) WHERE lease_until_ms > 0;
"#;

/// The admin API's lists' indexes (`store::listing`), one per filter, each ending in the
/// newest-first order's columns so that a page is one range scan (SQLite appends the rowid,
/// `seq`, to every index of `deliveries`, so it is the tie-break without being named).
/// `deliveries_incident (incident_id)` already serves the incident filter.
const LIST_INDEXES: &str = r#"
CREATE INDEX IF NOT EXISTS deliveries_created ON deliveries (created_ms);
CREATE INDEX IF NOT EXISTS deliveries_status_created ON deliveries (status, created_ms);
CREATE INDEX IF NOT EXISTS deliveries_connector_created ON deliveries (connector, created_ms);
CREATE INDEX IF NOT EXISTS incidents_received ON incidents (received_ms, incident_id);
CREATE INDEX IF NOT EXISTS incidents_source_received ON incidents (source, received_ms, incident_id);
CREATE INDEX IF NOT EXISTS incidents_status_received ON incidents (status, received_ms, incident_id);
CREATE INDEX IF NOT EXISTS incidents_account_received ON incidents (account_id, received_ms, incident_id);
"#;

/// Creates the schema, bringing a file written by an earlier version up to date: the queue
/// columns `ready` and `due_ms` are added and filled once (a full pass, at the first start
/// after the upgrade only).
pub(super) fn migrate(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(SCHEMA)?;
    let has_ready = conn
        .prepare("SELECT 1 FROM pragma_table_info('deliveries') WHERE name = 'ready'")?
        .exists([])?;
    if !has_ready {
        conn.execute_batch(concat!(
            "ALTER TABLE deliveries ADD COLUMN ready INTEGER NOT NULL DEFAULT 0;
             ALTER TABLE deliveries ADD COLUMN due_ms INTEGER NOT NULL DEFAULT 0;
             UPDATE deliveries SET due_ms = MAX(next_attempt_ms, lease_until_ms) WHERE status = 'pending';
             UPDATE deliveries AS d SET ready = 1
              WHERE d.status = 'pending' AND NOT EXISTS (SELECT 1 FROM deliveries e WHERE ",
            waits_behind!(),
            ");"
        ))?;
    }
    for (table, column, add) in ADDED_COLUMNS {
        let has = conn
            .prepare("SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2")?
            .exists([table, column])?;
        if !has {
            // The column and what fills it, together: a crash between them must not leave
            // the column unfilled for good.
            conn.execute_batch(&format!("BEGIN; {add}; COMMIT;"))?;
        }
    }
    conn.execute_batch(QUEUE_INDEXES)?;
    conn.execute_batch(LIST_INDEXES)?;
    Ok(())
}

/// A row read into a named struct, by column name: the SELECT beside each use names the
/// columns (aliasing computed ones), and this reads them.
trait FromRow: Sized {
    fn from_row(row: &Row<'_>) -> rusqlite::Result<Self>;
}

/// `correlation_key`, `ticket_id`, `ticket_url` of a ticket.
impl FromRow for TicketFacts {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(TicketFacts {
            key: r.get("correlation_key")?,
            id: r.get("ticket_id")?,
            url: r.get("ticket_url")?,
            reopened: false,
        })
    }
}

/// `reason_code`, `notes`, `status_change_ms` of a completed incident.
impl FromRow for Completion {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Completion {
            reason_code: r
                .get::<_, Option<String>>("reason_code")?
                .unwrap_or_default(),
            notes: r.get("notes")?,
            status_change_time: rfc3339(r.get("status_change_ms")?),
        })
    }
}

/// Every row `sql` selects with `params`, each read as a `T` (statements are cached per
/// connection, so a query run in a loop is prepared once).
fn rows<T: FromRow>(
    conn: &Connection,
    sql: &str,
    params: impl Params,
) -> Result<Vec<T>, StoreError> {
    Ok(conn
        .prepare_cached(sql)?
        .query_map(params, T::from_row)?
        .collect::<Result<Vec<_>, _>>()?)
}

/// The row `sql` selects with `params` by a unique key, read as a `T`; `None` when there is
/// none. (Every use selects by a primary or unique key, so there is at most one row.)
fn optional_row<T: FromRow>(
    conn: &Connection,
    sql: &str,
    params: impl Params,
) -> Result<Option<T>, StoreError> {
    Ok(rows(conn, sql, params)?.into_iter().next())
}

/// How an incident was completed, once it is.
fn completion_of(conn: &Connection, incident_id: &str) -> Result<Option<Completion>, StoreError> {
    optional_row(
        conn,
        "SELECT reason_code, notes, status_change_ms FROM incidents
         WHERE incident_id = ?1 AND status = 'completed'",
        [incident_id],
    )
}

/// A JSON array of names, for `IN (SELECT value FROM json_each(?))`.
fn json_list(names: &[String]) -> String {
    serde_json::to_string(names).unwrap_or_else(|_| "[]".into())
}

fn private_options() -> std::fs::OpenOptions {
    let mut options = std::fs::OpenOptions::new();
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates `path` (and tightens it and its -wal/-shm files if they exist) as owner-only.
fn private_file(path: &Path) -> Result<(), StoreError> {
    private_options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io_error(path))?;
    #[cfg(unix)]
    for suffix in ["", "-wal", "-shm", "-journal"] {
        use std::os::unix::fs::PermissionsExt;
        let file = PathBuf::from(format!("{}{suffix}", path.display()));
        match std::fs::metadata(&file) {
            Ok(meta) if meta.permissions().mode() & 0o077 != 0 => {
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                    .map_err(io_error(&file))?;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(&file)(e)),
        }
    }
    Ok(())
}

/// More than the distinct statements of the store (about 60).
const STATEMENT_CACHE: usize = 256;

fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(|source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    // A new file gives the pages retention frees back to the file system (`compact`); it
    // takes effect only before the first table is created, so an older file keeps its mode
    // until a VACUUM. Set before WAL mode, which writes the file's first page.
    conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL;")?;
    // FULL: a commit is on disk before the caller hears of it (power loss included). A 64 MiB
    // page cache (SQLite's default is 2 MiB) keeps the queue's indexes in memory under a
    // large backlog.
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000;
         PRAGMA cache_size = -65536;",
    )?;
    // Every statement the store runs stays prepared: rusqlite keeps 16 by default, fewer than
    // the writer cycles through per group, and re-parsing them was a fifth of its time.
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    // Plans made once per statement, never from bound values: otherwise SQLite plans the
    // queue's statements again every time their connector or time changes.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    Ok(conn)
}

impl Sqlite {
    /// Opens (creating if needed) the SQLite store at `path`, and starts its writer.
    pub fn open(path: &Path) -> Result<Sqlite, StoreError> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(io_error(path))?;
        }
        let lock_path = PathBuf::from(format!("{}.lock", path.display()));
        let lock = private_options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_error(&lock_path))?;
        lock.try_lock().map_err(|source| StoreError::InUse {
            path: path.to_path_buf(),
            source,
        })?;

        // The store holds incidents and response bodies: readable by the owner alone.
        // SQLite gives its -wal and -shm files the database file's mode.
        private_file(path)?;
        let conn = open_connection(path)?;
        migrate(&conn)?;
        let reader = open_connection(path)?;
        let writer = writer::Writer::spawn(conn).map_err(io_error(path))?;
        Ok(Sqlite {
            writer,
            reader: Arc::new(Mutex::new(reader)),
            path: path.to_path_buf(),
            _lock: lock,
        })
    }

    /// Runs `f` in the writer's next transaction; resolves after that transaction commits.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.writer.write(f).await
    }

    /// Runs `f` on the reader connection, off the async threads.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().map_err(|_| StoreError::Closed)?;
            f(&conn)
        })
        .await?
    }
}

#[async_trait::async_trait]
impl Health for Sqlite {
    /// The file answers a read (the writer's health shows in every write's answer).
    async fn ready(&self) -> Result<(), StoreError> {
        self.read(|conn| Ok(conn.query_row("SELECT 1", [], |_| Ok(()))?))
            .await
    }
}

#[cfg(test)]
mod migration_tests {
    use super::*;

    /// A file written before incidents had an account: the column is added, and each incident
    /// takes the `accountId` of its current version (an integer only; none stays NULL).
    #[test]
    fn an_older_file_takes_its_incidents_accounts_from_their_bodies() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE incidents (incident_id TEXT PRIMARY KEY, source TEXT NOT NULL,
                 update_time REAL, body_hash TEXT NOT NULL, version_id INTEGER NOT NULL,
                 versions INTEGER NOT NULL, status TEXT NOT NULL DEFAULT 'open',
                 status_change_ms INTEGER NOT NULL, reason_code TEXT, notes TEXT,
                 received_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL);
             CREATE TABLE incident_versions (version_id INTEGER PRIMARY KEY AUTOINCREMENT,
                 incident_id TEXT NOT NULL, body TEXT NOT NULL, received_ms INTEGER NOT NULL);
             INSERT INTO incident_versions (incident_id, body, received_ms) VALUES
                 ('A', '{\"incidentId\":\"A\",\"accountId\":1}', 1),
                 ('A', '{\"incidentId\":\"A\",\"accountId\":2}', 2),
                 ('B', '{\"incidentId\":\"B\",\"accountId\":\"7\"}', 3),
                 ('C', '{\"incidentId\":\"C\"}', 4);
             INSERT INTO incidents (incident_id, source, body_hash, version_id, versions,
                                    status_change_ms, received_ms, updated_ms) VALUES
                 ('A', 's', 'h', 2, 2, 1, 1, 2), ('B', 's', 'h', 3, 1, 3, 3, 3),
                 ('C', 's', 'h', 4, 1, 4, 4, 4);",
        )
        .unwrap();
        migrate(&conn).unwrap();
        let accounts: Vec<(String, Option<i64>)> = conn
            .prepare("SELECT incident_id, account_id FROM incidents ORDER BY incident_id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            accounts,
            [
                ("A".into(), Some(2)),
                ("B".into(), None),
                ("C".into(), None)
            ]
        );
    }
}
