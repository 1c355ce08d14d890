//! What the single-store contract suites share (`store_contract_lists`, `_retention`, `_sla`):
//! a store on either backend — SQLite in a real file, PostgreSQL in a database of the test's
//! own — and `contract!`, which declares each contract once per backend.

use super::pg::PgDb;
use incident_gateway::model::{AttemptOutcome, now_ms};
use incident_gateway::store::{AttemptRecord, Store};

pub struct Harness {
    pub store: Store,
    pub dir: tempfile::TempDir,
    pub pg: Option<PgDb>,
}

#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Harness {
    pub async fn open(backend: Backend) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        match backend {
            Backend::Sqlite => Harness {
                store: Store::open_sqlite(&dir.path().join("gateway.db")).unwrap(),
                dir,
                pg: None,
            },
            Backend::Postgres => {
                let pg = PgDb::create();
                let store = Store::open_postgres(&super::pg::store_config(&pg.url, 4))
                    .await
                    .unwrap();
                Harness {
                    store,
                    dir,
                    pg: Some(pg),
                }
            }
        }
    }
}

/// Declares each contract test (an `async fn name(backend: Backend)` beside the call) once
/// per backend, as `sqlite::name` and `postgres::name`.
#[macro_export]
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::contract::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::contract::Backend::Postgres).await;
                }
            )*
        }
    };
}

/// Attempt `n` as recorded: a 200 that ended in `outcome`, 3 ms, now.
pub fn attempt(n: u32, outcome: AttemptOutcome) -> AttemptRecord {
    AttemptRecord {
        attempt: n,
        started_at_ms: now_ms(),
        latency_ms: 3,
        status_code: Some(200),
        error: None,
        response_body: None,
        outcome,
        lookup: None,
        outcome_unknown: false,
    }
}
