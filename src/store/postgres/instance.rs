//! This gateway process on the database, and the processes that died. Each process registers
//! in `instances` and holds a session advisory lock on its own key, on a connection of its own,
//! for as long as it runs. When a process dies its connection closes and PostgreSQL releases
//! the lock: any other gateway that can then take the lock knows the process is gone, and
//! recovers its leases as SQLite's start-up recovery does (a tracked connector's `created` is
//! set aside, everything else is due again at once), instead of waiting for them to expire.

use std::time::Duration;

use deadpool_postgres::Transaction;
use tokio_postgres::NoTls;

use super::{execute, query, queue};
use crate::model::now_ms;
use crate::store::StoreError;
use crate::store::rules::INTERRUPTED_CREATED;

/// How long the keeper waits before connecting again after losing its connection.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// This process's identity on the database.
#[derive(Debug, Clone)]
pub(super) struct Instance {
    pub id: String,
    pub lock_key: i64,
}

impl Instance {
    pub(super) fn new() -> Instance {
        Instance {
            id: format!("gw_{}", uuid::Uuid::now_v7().simple()),
            lock_key: rand::random::<i64>(),
        }
    }
}

/// Holds the instance's lock (and its row) on a connection of its own; after the first
/// time, keeps doing so across lost connections. Aborting the returned task closes the
/// connection, which releases the lock.
pub(super) async fn keep(
    config: tokio_postgres::Config,
    instance: Instance,
) -> Result<tokio::task::JoinHandle<()>, StoreError> {
    let first = hold(&config, &instance, now_ms()).await?;
    Ok(tokio::spawn(async move {
        let mut held = Some(first);
        loop {
            if let Some(mut lock) = held.take() {
                // Runs until the connection ends (the database went away).
                let _ = (&mut lock.connection.0).await;
                tracing::warn!(
                    "lost the PostgreSQL connection that marks this gateway alive; reconnecting"
                );
            }
            tokio::time::sleep(RECONNECT_AFTER).await;
            match hold(&config, &instance, now_ms()).await {
                Ok(lock) => held = Some(lock),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot mark this gateway alive on PostgreSQL yet")
                }
            }
        }
    }))
}

/// A task that is aborted when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The liveness lock, held while both of these live.
struct HeldLock {
    _client: tokio_postgres::Client,
    connection: AbortOnDrop,
}

/// Connects, takes the instance's lock and registers it.
async fn hold(
    config: &tokio_postgres::Config,
    instance: &Instance,
    now: i64,
) -> Result<HeldLock, StoreError> {
    let (client, connection) = config.connect(NoTls).await?;
    let connection = AbortOnDrop(tokio::spawn(async move {
        let _ = connection.await;
    }));
    client
        .execute("SELECT pg_advisory_lock($1)", &[&instance.lock_key])
        .await?;
    client
        .execute(
            "INSERT INTO instances (instance_id, lock_key, started_ms) VALUES ($1, $2, $3)
             ON CONFLICT (instance_id) DO NOTHING",
            &[&instance.id, &instance.lock_key, &now],
        )
        .await?;
    Ok(HeldLock {
        _client: client,
        connection,
    })
}

/// Recovers the leases of every process that died (its lock can be taken): a `created` of a
/// `tracked` connector is set aside as interrupted, every other delivery is due again. Returns
/// how many were set aside.
pub(super) async fn recover_dead(
    tx: &Transaction<'_>,
    me: &Instance,
    tracked: &[String],
    now: i64,
) -> Result<usize, StoreError> {
    let dead: Vec<String> = query(
        tx,
        "SELECT instance_id FROM instances
         WHERE instance_id <> $1 AND pg_try_advisory_xact_lock(lock_key)",
        &[&me.id],
    )
    .await?
    .iter()
    .map(|r| r.try_get(0))
    .collect::<Result<_, _>>()?;
    if dead.is_empty() {
        return Ok(0);
    }
    let parked = query(
        tx,
        "UPDATE deliveries SET status = 'dead', ready = FALSE, lease_until_ms = 0,
                lease_token = NULL, updated_ms = $3, last_error = $4
         WHERE lease_holder = ANY($1) AND lease_until_ms > 0 AND status = 'pending'
           AND event = 'created' AND connector = ANY($2)
         RETURNING connector, order_key",
        &[&dead, &tracked, &now, &INTERRUPTED_CREATED],
    )
    .await?;
    for line in &parked {
        let connector: String = line.try_get("connector")?;
        let order_key: String = line.try_get("order_key")?;
        queue::promote_head(tx, &connector, &order_key).await?;
    }
    execute(
        tx,
        "UPDATE deliveries SET lease_until_ms = 0, lease_token = NULL, due_ms = next_attempt_ms,
                outcome_unknown = outcome_unknown OR event = 'created'
         WHERE lease_holder = ANY($1) AND lease_until_ms > 0 AND status = 'pending'",
        &[&dead],
    )
    .await?;
    execute(
        tx,
        "DELETE FROM instances WHERE instance_id = ANY($1)",
        &[&dead],
    )
    .await?;
    tracing::warn!(
        processes = dead.len(),
        set_aside = parked.len(),
        "recovered the leases of gateway processes that stopped"
    );
    Ok(parked.len())
}
