//! `incident-gateway backup`: a consistent copy of the SQLite store, taken while the gateway
//! runs (`VACUUM INTO` reads one snapshot; the gateway's writes go on beside it). The copy is
//! compacted and set to give freed space back (`auto_vacuum = INCREMENTAL`), so restoring it
//! also converts a file created before retention. PostgreSQL is backed up with its own tools.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use crate::config::Config;
use crate::store::StorageConfig;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(
        "backup: the store is PostgreSQL; back it up with pg_dump (for example `pg_dump --format=custom --file=gateway.dump \"$DATABASE_URL\"`), which is safe while gateways run"
    )]
    Postgres,
    #[error("backup: {0} already exists; a backup never overwrites a file: name a new one")]
    Exists(PathBuf),
    #[error("backup: cannot create {path}: {source}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("backup: cannot read the store {path}: {source}")]
    Source {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("backup: cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
}

/// What a backup holds.
#[derive(Debug, Clone, Copy)]
pub struct Backup {
    pub incidents: i64,
    pub bytes: u64,
}

/// Copies the store `config` names to `to` (a new file, owner-only).
pub fn backup(config: &Config, to: &Path) -> Result<Backup, BackupError> {
    let StorageConfig::Sqlite { path } = &config.storage else {
        return Err(BackupError::Postgres);
    };
    backup_sqlite(path, to)
}

fn backup_sqlite(from: &Path, to: &Path) -> Result<Backup, BackupError> {
    let source_error = |source| BackupError::Source {
        path: from.to_path_buf(),
        source,
    };
    let write_error = |source| BackupError::Write {
        path: to.to_path_buf(),
        source,
    };
    // Opened without CREATE: a wrong path is an error, not a new empty store. Read-write,
    // because reading a WAL file needs its shared-memory index.
    let source = Connection::open_with_flags(
        from,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(source_error)?;
    source
        .busy_timeout(std::time::Duration::from_secs(30))
        .map_err(source_error)?;
    // The copy holds incidents: owner-only from the start. VACUUM INTO takes an empty file.
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(to).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            BackupError::Exists(to.to_path_buf())
        } else {
            BackupError::Create {
                path: to.to_path_buf(),
                source,
            }
        }
    })?;
    let copied = source
        .execute("VACUUM INTO ?1", [to.to_string_lossy()])
        .map_err(|e| {
            let _ = std::fs::remove_file(to);
            source_error(e)
        });
    copied?;
    drop(source);
    let copy = Connection::open(to).map_err(write_error)?;
    let auto_vacuum: i64 = copy
        .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
        .map_err(write_error)?;
    // 2: INCREMENTAL. A copy of an older file is converted here (a VACUUM of the copy, not
    // of the live store).
    if auto_vacuum != 2 {
        copy.execute_batch("PRAGMA auto_vacuum = INCREMENTAL; VACUUM;")
            .map_err(write_error)?;
    }
    let incidents = copy
        .query_row("SELECT COUNT(*) FROM incidents", [], |r| r.get(0))
        .map_err(write_error)?;
    drop(copy);
    let bytes = std::fs::metadata(to)
        .map(|m| m.len())
        .map_err(|source| BackupError::Create {
            path: to.to_path_buf(),
            source,
        })?;
    Ok(Backup { incidents, bytes })
}
