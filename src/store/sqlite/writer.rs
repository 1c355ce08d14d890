//! Group commit: one thread owns the write connection, gathers whatever writes are waiting and
//! commits them in one transaction, each inside its own savepoint so one failing write does
//! not undo the others. A caller hears back only after the commit.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender};

use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::store::StoreError;

/// Tells a write's caller how it ended, once its group has: `None` when the group committed.
type Finish = Box<dyn FnOnce(Option<StoreError>) + Send>;
/// One write: runs on the connection, says whether to keep its changes, and how to answer.
type Job = Box<dyn FnOnce(&Connection) -> (bool, Finish) + Send>;

/// Writes gathered into one commit at most.
const MAX_GROUP: usize = 512;

/// The handle to the writer thread; the thread ends when the handle is dropped.
pub(super) struct Writer {
    jobs: Sender<Job>,
}

impl Writer {
    pub(super) fn spawn(conn: Connection) -> std::io::Result<Writer> {
        let (jobs, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_loop(conn, rx))?;
        Ok(Writer { jobs })
    }

    /// Runs `f` in the writer's next transaction; resolves after that transaction commits.
    pub(super) async fn write<T: Send + 'static>(
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
}

/// Why a group was not committed; each of its writes hears it as a [`StoreError`].
enum GroupFailure {
    Step {
        step: &'static str,
        source: Arc<rusqlite::Error>,
    },
    RolledBack,
}

impl GroupFailure {
    fn at(step: &'static str, source: rusqlite::Error) -> GroupFailure {
        GroupFailure::Step {
            step,
            source: Arc::new(source),
        }
    }

    fn error(&self) -> StoreError {
        match self {
            GroupFailure::Step { step, source } => StoreError::Aborted {
                step,
                source: source.clone(),
            },
            GroupFailure::RolledBack => StoreError::RolledBack,
        }
    }
}

/// One statement of the group's bookkeeping, prepared once per connection (they run several
/// times per write).
fn run(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

fn writer_loop(conn: Connection, jobs: Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        if let Err(e) = run(&conn, "BEGIN IMMEDIATE") {
            tracing::error!(error = %e, "store: cannot begin a transaction");
            // Dropping the jobs tells their callers the write did not happen.
            continue;
        }
        let mut finishes = Vec::with_capacity(group.len());
        let mut aborted: Option<GroupFailure> = None;
        for job in group {
            if aborted.is_some() {
                // Dropping a job tells its caller the write did not happen.
                continue;
            }
            if let Err(e) = run(&conn, "SAVEPOINT job") {
                tracing::error!(error = %e, "store: cannot open a savepoint");
                aborted = Some(GroupFailure::at("cannot open a savepoint", e));
                continue;
            }
            let (ok, finish) = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                job(&conn)
            })) {
                Ok(done) => done,
                Err(_) => {
                    // The job's caller hears nothing (its channel is gone) and sees the
                    // write fail; the writer lives on for everyone else.
                    tracing::error!("store: a write panicked; it was rolled back");
                    let _ = run(&conn, "ROLLBACK TO job").and_then(|()| run(&conn, "RELEASE job"));
                    continue;
                }
            };
            finishes.push(finish);
            if conn.is_autocommit() {
                // SQLite rolled the whole transaction back (disk full, I/O error): nothing in
                // this group was written, whatever the jobs returned.
                aborted = Some(GroupFailure::RolledBack);
                continue;
            }
            let end = if ok {
                run(&conn, "RELEASE job")
            } else {
                run(&conn, "ROLLBACK TO job").and_then(|()| run(&conn, "RELEASE job"))
            };
            if let Err(e) = end {
                tracing::error!(error = %e, "store: cannot close a savepoint");
                aborted = Some(GroupFailure::at("cannot close a savepoint", e));
            }
        }
        if let Some(failure) = aborted {
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            for f in finishes {
                f(Some(failure.error()));
            }
            continue;
        }
        match run(&conn, "COMMIT") {
            Ok(()) => finishes.into_iter().for_each(|f| f(None)),
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                let failure = GroupFailure::at("commit failed", e);
                for f in finishes {
                    f(Some(failure.error()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(conn: &Connection) -> i64 {
        conn.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .unwrap()
    }

    /// One failing write is rolled back alone: the others of its group commit.
    #[tokio::test]
    async fn a_failing_write_undoes_only_itself() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE t (x INTEGER PRIMARY KEY)")
            .unwrap();
        let writer = Writer::spawn(conn).unwrap();
        let insert = |x: i64, fail: bool| {
            writer.write(move |conn| {
                conn.execute("INSERT INTO t (x) VALUES (?1)", [x])?;
                if fail {
                    return Err(StoreError::Closed);
                }
                Ok(x)
            })
        };
        let (a, b, c) = tokio::join!(insert(1, false), insert(2, true), insert(3, false));
        assert_eq!(a.unwrap(), 1);
        assert!(matches!(b, Err(StoreError::Closed)));
        assert_eq!(c.unwrap(), 3);
        let check = Connection::open(&path).unwrap();
        assert_eq!(count(&check), 2);
        let kept: Vec<i64> = check
            .prepare("SELECT x FROM t ORDER BY x")
            .unwrap()
            .query_map([], |r| r.get("x"))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(kept, [1, 3]);
    }
}
