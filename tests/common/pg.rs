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

/// Why the tests cannot go on without the server at `url`, and how to start it.
fn unreachable(url: &str, e: &dyn std::fmt::Display) -> String {
    format!(
        "the PostgreSQL tests need a server at {url} ({e}); start it with \
         `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`, \
         or set IGW_TEST_POSTGRES_URL"
    )
}

/// Runs `f` on a thread and runtime of its own (so it can be called from sync code, from
/// `Drop`, and from inside a test's runtime).
fn on_a_runtime<T: Send + 'static, F: Future<Output = T>>(
    make: impl FnOnce() -> F + Send + 'static,
) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(make())
    })
    .join()
    .unwrap()
}

/// Runs `f` with a connection to `url`, on a runtime of its own.
fn connected<T: Send + 'static>(
    url: String,
    f: impl AsyncFnOnce(&tokio_postgres::Client) -> T + Send + 'static,
) -> T {
    on_a_runtime(move || async move {
        let mut config: tokio_postgres::Config = url.parse().expect("a PostgreSQL URL");
        config.connect_timeout(Duration::from_secs(5));
        let (client, conn) = config
            .connect(tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("{}", unreachable(&url, &e)));
        tokio::spawn(conn);
        f(&client).await
    })
}

/// How a test opens a store on `url`, as a gateway with `pool_size` connections would.
pub fn store_config(url: &str, pool_size: usize) -> incident_gateway::store::PostgresConfig {
    incident_gateway::store::PostgresConfig {
        url: url.into(),
        pool_size,
        connect_timeout: Duration::from_secs(5),
        statement_timeout: Duration::from_secs(10),
    }
}

/// A database of the test's own, dropped (with its connections) when this is.
pub struct PgDb {
    pub name: String,
    pub url: String,
}

impl PgDb {
    pub fn create() -> PgDb {
        let url = on_a_runtime(|| async {
            let server = admin_url();
            incident_gateway::store::postgres::create_database(&server, "igw_test")
                .await
                .unwrap_or_else(|e| panic!("{}", unreachable(&server, &e)))
        });
        let name = url.rsplit('/').next().unwrap_or_default().to_string();
        PgDb { name, url }
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
        let url = self.url.clone();
        on_a_runtime(move || async move {
            let _ = incident_gateway::store::postgres::drop_database(&admin_url(), &url).await;
        });
    }
}
