//! `[storage]`: where incidents and deliveries are kept, built into the store's own
//! [`StorageConfig`].

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, Validator};
use crate::store::{PostgresConfig, StorageConfig};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStorage {
    pub(super) url: String,
    /// PostgreSQL only: connections per gateway process.
    #[serde(default)]
    pool_size: Option<usize>,
    /// PostgreSQL only: how long to wait for a connection.
    #[serde(default, with = "humantime_serde")]
    connect_timeout: Option<Duration>,
    /// PostgreSQL only: the longest a statement may run.
    #[serde(default, with = "humantime_serde")]
    statement_timeout: Option<Duration>,
}

/// Enough for the delivery workers' leases and records and ingest at once, well under
/// PostgreSQL's default of 100 connections for a few gateways.
const DEFAULT_POOL_SIZE: usize = 16;
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);

impl Validator<'_> {
    pub(super) fn storage(&self, raw: &RawStorage) -> Result<StorageConfig, ConfigError> {
        let url = &raw.url;
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return self.postgres(raw);
        }
        if let Some(field) = [
            ("storage.pool_size", raw.pool_size.is_some()),
            ("storage.connect_timeout", raw.connect_timeout.is_some()),
            ("storage.statement_timeout", raw.statement_timeout.is_some()),
        ]
        .iter()
        .find_map(|(name, set)| set.then_some(*name))
        {
            return Err(self.invalid(field, "applies to a postgres:// storage.url only"));
        }
        match url.strip_prefix("sqlite://") {
            Some(path) if !path.is_empty() => Ok(StorageConfig::Sqlite {
                // The URL is expanded already.
                path: self.relative_to_config(path),
            }),
            // The URL may hold a password: the message never repeats it.
            _ => Err(self.invalid(
                "storage.url",
                "expected sqlite://PATH (relative to the config file's folder) or postgres://USER@HOST/DATABASE",
            )),
        }
    }

    fn postgres(&self, raw: &RawStorage) -> Result<StorageConfig, ConfigError> {
        if raw.url.parse::<tokio_postgres::Config>().is_err() {
            return Err(self.invalid(
                "storage.url",
                "not a PostgreSQL connection URL (postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE)",
            ));
        }
        let pool_size = raw.pool_size.unwrap_or(DEFAULT_POOL_SIZE);
        if pool_size == 0 {
            return Err(self.invalid("storage.pool_size", "must be at least 1"));
        }
        let positive = |field: &str, value: Option<Duration>, default: Duration| match value {
            Some(d) if d.is_zero() => Err(self.invalid(field, "must be more than 0")),
            Some(d) => Ok(d),
            None => Ok(default),
        };
        Ok(StorageConfig::Postgres(PostgresConfig {
            url: raw.url.clone(),
            pool_size,
            connect_timeout: positive(
                "storage.connect_timeout",
                raw.connect_timeout,
                DEFAULT_CONNECT_TIMEOUT,
            )?,
            statement_timeout: positive(
                "storage.statement_timeout",
                raw.statement_timeout,
                DEFAULT_STATEMENT_TIMEOUT,
            )?,
        }))
    }
}
