//! The real PostgreSQL of the tests: each test gets a database of its own (created on the
//! server `IGW_TEST_POSTGRES_URL` names, by default the one on this machine), dropped when the
//! test ends, so runs never collide. A server that cannot be reached fails the test with a
//! message saying how to start it: never a silent skip.

use std::time::Duration;

/// Where the test databases are created: any database on the server the tests may use.
pub fn admin_url() -> String {
    std::env::var("IGW_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Runs `f` with a connection to the admin database, on a thread and runtime of its own (so
/// it can be called from sync code, from `Drop`, and from inside a test's runtime).
pub fn with_admin<T: Send + 'static>(
    f: impl AsyncFnOnce(&tokio_postgres::Client) -> T + Send + 'static,
) -> T {
    connected(admin_url(), f)
}

/// Runs `f` with a connection to `url`, on a thread and runtime of its own.
fn connected<T: Send + 'static>(
    url: String,
    f: impl AsyncFnOnce(&tokio_postgres::Client) -> T + Send + 'static,
) -> T {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut config: tokio_postgres::Config = url.parse().expect("a PostgreSQL URL");
            config.connect_timeout(Duration::from_secs(5));
            let (client, conn) = config
                .connect(tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "the PostgreSQL tests need a server at {url} ({e}); start it with \
                     `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`, \
                     or set IGW_TEST_POSTGRES_URL"
                    )
                });
            tokio::spawn(conn);
            f(&client).await
        })
    })
    .join()
    .unwrap()
}

/// A database of the test's own, dropped (with its connections) when this is.
pub struct PgDb {
    pub name: String,
    pub url: String,
}

impl PgDb {
    pub fn create() -> PgDb {
        let name = format!("igw_test_{}", uuid::Uuid::now_v7().simple());
        let create = format!("CREATE DATABASE {name}");
        with_admin(async move |c| c.batch_execute(&create).await.unwrap());
        let admin = admin_url();
        let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
        PgDb {
            url: format!("{base}/{name}"),
            name,
        }
    }

    /// The number a query of one BIGINT (`COUNT(*)`) answers, for checks the store's API
    /// does not answer.
    pub fn query_i64(&self, sql: &str) -> i64 {
        let sql = sql.to_string();
        connected(self.url.clone(), async move |c| {
            c.query_one(&sql, &[]).await.unwrap().get::<_, i64>(0)
        })
    }

    /// The rows of a query of one text column.
    pub fn texts(&self, sql: &str) -> Vec<String> {
        let sql = sql.to_string();
        connected(self.url.clone(), async move |c| {
            let rows = c.query(&sql, &[]).await.unwrap();
            rows.iter().map(|r| r.get::<_, String>(0)).collect()
        })
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        with_admin(async move |c| {
            let _ = c.batch_execute(&drop).await;
        });
    }
}
