//! The PostgreSQL backend: several gateway processes on one database share the work. Each
//! write is one transaction from a pool (PostgreSQL groups concurrent commits itself); what a
//! single SQLite writer got by running alone, this backend gets from locks:
//! - an incident is stored under a transaction-scoped advisory lock on its id, so the same
//!   incident posted to two gateways at once is stored once with one set of deliveries;
//! - a ticket is opened while holding its key's row in `ticket_heads` (one row per connector
//!   and correlation key, its primary key), so one key opens one ticket however many
//!   gateways see it at once;
//! - a delivery line's readiness (the head of a ticket's line) changes under an advisory lock
//!   on the line, so a delivery queued on one gateway and the line's head finishing on
//!   another cannot both miss each other;
//! - due deliveries are leased with `FOR UPDATE SKIP LOCKED`, fenced by a lease token as on
//!   SQLite; the leases of a process that died are recovered as soon as another gateway sees
//!   its liveness lock released (`instance`), and any lease left behind expires by itself.
//!
//! A transaction that loses a deadlock (or a serialization check) is run again from the start.
//! Migrations (`migrations/postgres/`) are applied at start under a session advisory lock, so
//! several gateways starting at once apply each once; a database migrated by a newer gateway
//! is refused.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Transaction};
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

use crate::model::{Completion, TicketFacts, rfc3339};
use crate::store::{Health, StoreError};

/// `[storage]` for PostgreSQL: where, and how long to wait for it.
#[derive(Clone)]
pub struct PostgresConfig {
    /// `postgres://user[:password]@host[:port]/database[?…]`. May hold a password: never
    /// logged, never in an error.
    pub url: String,
    /// Connections each gateway process keeps at most.
    pub pool_size: usize,
    /// How long to wait for a connection (a new one, or a free one from the pool).
    pub connect_timeout: Duration,
    /// The longest a statement may run before PostgreSQL cancels it.
    pub statement_timeout: Duration,
}

impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &"<redacted>")
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .finish()
    }
}

/// The migrations, in order; the schema version is the number of the last one applied.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "initial",
        include_str!("../../../migrations/postgres/0001_initial.sql"),
    ),
    (
        2,
        "lookups, delivery purposes, ticket close times",
        include_str!("../../../migrations/postgres/0002_lookup.sql"),
    ),
    (
        3,
        "indexes of the admin API's lists",
        include_str!("../../../migrations/postgres/0003_list_indexes.sql"),
    ),
    (
        4,
        "connector pauses",
        include_str!("../../../migrations/postgres/0004_pauses.sql"),
    ),
    (
        5,
        "retention: incidents by last change",
        include_str!("../../../migrations/postgres/0005_retention.sql"),
    ),
    (
        6,
        "incidents' accounts, for tenant-scoped admin tokens",
        include_str!("../../../migrations/postgres/0006_accounts.sql"),
    ),
    (
        7,
        "collection windows",
        include_str!("../../../migrations/postgres/0007_collections.sql"),
    ),
    (
        8,
        "SLA clocks",
        include_str!("../../../migrations/postgres/0008_sla.sql"),
    ),
];

/// The newest schema this binary knows: its last migration's.
pub const SCHEMA_VERSION: i32 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// The session advisory lock migrations run under (any fixed number; this is "igw-mig").
const MIGRATION_LOCK: i64 = 0x0069_6777_2d6d_6967;

/// How many times a transaction that lost a deadlock is run again.
const MAX_TRIES: u32 = 5;

/// How often a gateway looks for processes that died (one small query).
const SWEEP_EVERY: Duration = Duration::from_secs(2);

/// The PostgreSQL store. Cloned only through [`crate::store::Store`].
pub struct Postgres {
    pool: Pool,
    /// This process on the database; `keeper` holds its liveness lock.
    instance: instance::Instance,
    keeper: tokio::task::JoinHandle<()>,
    /// Connectors that track ticket ids (from [`crate::store::Queue::recover`]): a dead
    /// process's `created` of theirs is set aside instead of being sent again.
    tracked: Arc<Mutex<Vec<String>>>,
    /// When this process last looked for processes that died.
    last_sweep: Mutex<Option<std::time::Instant>>,
}

impl Drop for Postgres {
    /// The liveness lock goes with the keeper's connection: others recover what is left.
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

/// Runs `$body` (an expression that may `.await` and uses `$tx`) in a transaction, commits,
/// and runs it all again when PostgreSQL aborted it for a deadlock or a serialization failure.
macro_rules! transaction {
    ($pg:expr, |$tx:ident| $body:expr) => {{
        let mut tries = 0u32;
        loop {
            let mut client = $pg.pool.get().await?;
            let $tx = client.transaction().await?;
            let result = async { $body }.await;
            let result = match result {
                Ok(value) => $tx.commit().await.map(|()| value).map_err(StoreError::from),
                Err(e) => Err(e),
            };
            match result {
                Err(e) if tries + 1 < $crate::store::postgres::MAX_TRIES && e.is_retryable() => {
                    tries += 1;
                }
                result => break result,
            }
        }
    }};
}

mod ingest;
mod instance;
mod operate;
mod queue;
mod sla;
mod tickets;
mod views;

#[cfg(test)]
mod testing;

impl Postgres {
    /// Connects, applies the migrations this database lacks, and checks its schema is one
    /// this binary knows.
    pub async fn open(config: &PostgresConfig) -> Result<Postgres, StoreError> {
        let mut pg_config: tokio_postgres::Config =
            config.url.parse().map_err(|_| StoreError::BadUrl)?;
        pg_config.connect_timeout(config.connect_timeout);
        pg_config.application_name("incident-gateway");
        pg_config.options(format!(
            "-c statement_timeout={}",
            config.statement_timeout.as_millis()
        ));
        let keeper_config = pg_config.clone();
        let manager = Manager::from_config(
            pg_config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .wait_timeout(Some(config.connect_timeout))
            .create_timeout(Some(config.connect_timeout))
            .recycle_timeout(Some(config.connect_timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Pool(e.to_string()))?;
        migrate(&pool).await?;
        let instance = instance::Instance::new();
        let keeper = instance::keep(keeper_config, instance.clone()).await?;
        Ok(Postgres {
            pool,
            instance,
            keeper,
            tracked: Arc::default(),
            last_sweep: Mutex::new(None),
        })
    }

    /// Whether it is time to look for processes that died (and notes that it is being done).
    fn sweep_due(&self) -> bool {
        let Ok(mut last) = self.last_sweep.lock() else {
            return true;
        };
        let due = last.is_none_or(|at| at.elapsed() >= SWEEP_EVERY);
        if due {
            *last = Some(std::time::Instant::now());
        }
        due
    }
}

/// Applies the migrations the database lacks, one transaction each, under a session lock so
/// that gateways starting together take turns; refuses a newer schema.
async fn migrate(pool: &Pool) -> Result<(), StoreError> {
    let mut client = pool.get().await?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let result = async {
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (
                     version     INTEGER PRIMARY KEY,
                     name        TEXT NOT NULL,
                     applied_at  TIMESTAMPTZ NOT NULL DEFAULT now())",
            )
            .await?;
        let found: Option<i32> = client
            .query_one("SELECT MAX(version) FROM schema_migrations", &[])
            .await?
            .try_get(0)?;
        let found = found.unwrap_or(0);
        if found > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                found,
                known: SCHEMA_VERSION,
            });
        }
        for (version, name, sql) in MIGRATIONS.iter().filter(|(v, _, _)| *v > found) {
            let tx = client.transaction().await?;
            tx.batch_execute(sql).await?;
            tx.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                &[version, name],
            )
            .await?;
            tx.commit().await?;
            tracing::info!(version, name, "applied a PostgreSQL migration");
        }
        Ok(())
    }
    .await;
    // The lock ends with the session anyway; give it back now so others need not wait
    // for this connection to be closed.
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await?;
    result
}

/// Creates a database of its own, `{prefix}_{uuid}`, on the server `server` names (a URL of any
/// database there), and returns its URL: what each test and each load-tool run keeps its
/// gateways' data in, so runs never collide.
pub async fn create_database(server: &str, prefix: &str) -> Result<String, StoreError> {
    let name = format!("{prefix}_{}", uuid::Uuid::now_v7().simple());
    on_server(server, &format!("CREATE DATABASE {name}")).await?;
    let base = server.rsplit_once('/').map_or(server, |(b, _)| b);
    Ok(format!("{base}/{name}"))
}

/// Drops the database `url` names (made by [`create_database`] on `server`), closing its
/// connections.
pub async fn drop_database(server: &str, url: &str) -> Result<(), StoreError> {
    let name = url.rsplit('/').next().unwrap_or_default();
    on_server(
        server,
        &format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
    )
    .await
}

/// Runs `sql` on a connection of its own to `server`.
async fn on_server(server: &str, sql: &str) -> Result<(), StoreError> {
    let config: tokio_postgres::Config = server.parse().map_err(|_| StoreError::BadUrl)?;
    let (client, connection) = config.connect(NoTls).await?;
    let connection = tokio::spawn(connection);
    client.batch_execute(sql).await?;
    drop(client);
    let _ = connection.await;
    Ok(())
}

#[async_trait]
impl Health for Postgres {
    async fn ready(&self) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client.query_one("SELECT 1", &[]).await?;
        Ok(())
    }
}

/// The rows `sql` selects with `params`, with the statement prepared once per connection.
async fn query(
    tx: &Transaction<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, StoreError> {
    let statement = tx.prepare_cached(sql).await?;
    Ok(tx.query(&statement, params).await?)
}

/// The row `sql` selects with `params` by a unique key, if there is one.
async fn query_opt(
    tx: &Transaction<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Option<Row>, StoreError> {
    let statement = tx.prepare_cached(sql).await?;
    Ok(tx.query_opt(&statement, params).await?)
}

/// Runs `sql` with `params`; how many rows it changed.
async fn execute(
    tx: &Transaction<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, StoreError> {
    let statement = tx.prepare_cached(sql).await?;
    Ok(tx.execute(&statement, params).await?)
}

/// Holds the advisory lock named `name` until the transaction ends.
async fn lock(tx: &Transaction<'_>, name: &str) -> Result<(), StoreError> {
    execute(
        tx,
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
        &[&name],
    )
    .await?;
    Ok(())
}

/// The lock an incident's versions are stored under.
async fn lock_incident(tx: &Transaction<'_>, incident_id: &str) -> Result<(), StoreError> {
    lock(tx, &format!("incident\u{1f}{incident_id}")).await
}

/// The lock a delivery line's readiness changes under.
async fn lock_line(
    tx: &Transaction<'_>,
    connector: &str,
    order_key: &str,
) -> Result<(), StoreError> {
    lock(tx, &format!("line\u{1f}{connector}\u{1f}{order_key}")).await
}

/// A column holding a count (INTEGER), as the store's types carry it.
fn count(row: &Row, column: &str) -> Result<u32, StoreError> {
    Ok(u32::try_from(row.try_get::<_, i32>(column)?).unwrap_or(0))
}

/// A count as PostgreSQL's INTEGER.
fn int(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// `correlation_key`, `ticket_id`, `ticket_url` of a ticket.
fn ticket_facts(row: &Row) -> Result<TicketFacts, StoreError> {
    Ok(TicketFacts {
        key: row.try_get("correlation_key")?,
        id: row.try_get("ticket_id")?,
        url: row.try_get("ticket_url")?,
        reopened: false,
    })
}

/// `reason_code`, `notes`, `status_change_ms` of a completed incident.
fn completion(row: &Row) -> Result<Completion, StoreError> {
    Ok(Completion {
        reason_code: row
            .try_get::<_, Option<String>>("reason_code")?
            .unwrap_or_default(),
        notes: row.try_get("notes")?,
        status_change_time: rfc3339(row.try_get("status_change_ms")?),
    })
}

/// How an incident was completed, once it is.
async fn completion_of(
    tx: &Transaction<'_>,
    incident_id: &str,
) -> Result<Option<Completion>, StoreError> {
    query_opt(
        tx,
        "SELECT reason_code, notes, status_change_ms FROM incidents
         WHERE incident_id = $1 AND status = 'completed'",
        &[&incident_id],
    )
    .await?
    .as_ref()
    .map(completion)
    .transpose()
}
