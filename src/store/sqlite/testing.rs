//! Test fixtures for the SQLite backend's unit tests: a real database file in a temporary
//! directory, incidents and routes, and a clock the test sets; and what a connection did
//! (its plans, the pages it read, the statements it planned again).

use rusqlite::Connection;

use super::{migrate, open_connection};
use crate::store::{IngestOutcome, Ingested, NewIncident, Route};

/// A store file with the schema, and a connection to it; the rules run on it directly, each
/// call with the time the test gives.
pub struct TestDb {
    pub conn: Connection,
    _dir: tempfile::TempDir,
}

impl TestDb {
    pub fn new() -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_connection(&dir.path().join("gateway.db")).unwrap();
        migrate(&conn).unwrap();
        TestDb { conn, _dir: dir }
    }

    /// Ingests one incident from source `src` at `now`.
    pub fn ingest_one(&self, inc: NewIncident, now: i64) -> IngestOutcome {
        match super::ingest::ingest(&self.conn, "src", None, vec![inc], now).unwrap() {
            Ingested::Stored(mut outcomes) => outcomes.remove(0),
            Ingested::Replay => panic!("no webhook id was given"),
        }
    }

    /// Ingests one incident routed to one connector at `now`; returns the id of the delivery
    /// it queued.
    pub fn deliver_one(&self, inc: NewIncident, now: i64) -> String {
        self.ingest_one(inc, now).deliveries.remove(0).id
    }

    pub fn count(&self, table: &str) -> i64 {
        self.conn
            .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    }

    pub fn exec(&self, sql: &str) {
        self.conn.execute_batch(sql).unwrap();
    }

    /// The status of a delivery.
    pub fn status(&self, delivery_id: &str) -> String {
        self.conn
            .query_row(
                "SELECT status FROM deliveries WHERE delivery_id = ?1",
                [delivery_id],
                |r| r.get("status"),
            )
            .unwrap()
    }
}

pub fn incident(id: &str) -> NewIncident {
    NewIncident {
        account_id: None,
        incident_id: id.into(),
        update_time: None,
        body: format!("{{\"incidentId\":\"{id}\"}}"),
        body_hash: id.into(),
        routes: vec![],
    }
}

/// Incident `id` with `updateTime` `time`, whose body (and hash) is told by `version`.
pub fn incident_with(id: &str, time: Option<f64>, version: &str) -> NewIncident {
    NewIncident {
        account_id: None,
        incident_id: id.into(),
        update_time: time,
        body: format!("{{\"incidentId\":\"{id}\",\"v\":\"{version}\"}}"),
        body_hash: format!("{id}/{version}"),
        routes: vec![],
    }
}

/// A route to `connector` under correlation key `key`, sending `updated`.
pub fn route(connector: &str, key: &str, aggregate_for_ms: Option<i64>) -> Route {
    Route {
        connector: connector.into(),
        key: key.into(),
        aggregate_for_ms,
        sends_updated: true,
        reopen_within_ms: None,
        collect_for_ms: None,
        sla: None,
    }
}

pub trait Routed {
    fn routed(self, route: &Route) -> Self;
}

impl Routed for NewIncident {
    fn routed(mut self, route: &Route) -> NewIncident {
        self.routes.push(route.clone());
        self
    }
}

/// SQLite's plan for `sql` (parameters bound to NULL), one line per step.
pub fn plan(conn: &Connection, sql: &str) -> String {
    let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
    let nulls = vec![rusqlite::types::Null; stmt.parameter_count()];
    stmt.query_map(rusqlite::params_from_iter(nulls), |r| {
        r.get::<_, String>("detail")
    })
    .unwrap()
    .collect::<Result<Vec<_>, _>>()
    .unwrap()
    .join("\n")
}

/// Pages of the database (cache hits and misses) the connection has read since the last
/// call: the work a statement did, whatever plan it ran.
pub fn pages_read(conn: &Connection) -> i64 {
    let (mut hits, mut misses, mut high) = (0, 0, 0);
    // SAFETY: the handle is the live connection's, used on this thread only; db_status
    // reads counters into the given integers.
    unsafe {
        let db = conn.handle();
        rusqlite::ffi::sqlite3_db_status(
            db,
            rusqlite::ffi::SQLITE_DBSTATUS_CACHE_HIT,
            &mut hits,
            &mut high,
            1,
        );
        rusqlite::ffi::sqlite3_db_status(
            db,
            rusqlite::ffi::SQLITE_DBSTATUS_CACHE_MISS,
            &mut misses,
            &mut high,
            1,
        );
    }
    i64::from(hits) + i64::from(misses)
}

/// The statements of the connection SQLite prepared again after their first run, with
/// how often.
pub fn reprepared(conn: &Connection) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    // SAFETY: walks the live connection's own statements on this thread; the SQL text
    // is copied out before the next statement is visited.
    unsafe {
        let db = conn.handle();
        let mut stmt = rusqlite::ffi::sqlite3_next_stmt(db, std::ptr::null_mut());
        while !stmt.is_null() {
            let times = rusqlite::ffi::sqlite3_stmt_status(
                stmt,
                rusqlite::ffi::SQLITE_STMTSTATUS_REPREPARE,
                0,
            );
            if times > 0 {
                let sql = std::ffi::CStr::from_ptr(rusqlite::ffi::sqlite3_sql(stmt));
                found.push((times, sql.to_string_lossy().into_owned()));
            }
            stmt = rusqlite::ffi::sqlite3_next_stmt(db, stmt);
        }
    }
    found
}
