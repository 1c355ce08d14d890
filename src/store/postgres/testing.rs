//! Test fixtures for the PostgreSQL backend's unit tests: a database of the test's own on the
//! server `IGW_TEST_POSTGRES_URL` names (by default the one on this machine), with the schema.

use tokio_postgres::NoTls;

/// A database with the gateway's schema, dropped by [`Database::drop`].
pub struct Database {
    server: String,
    pub url: String,
}

impl Database {
    pub async fn create() -> Database {
        let server = std::env::var("IGW_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let url = super::create_database(&server, "igw_unit")
            .await
            .unwrap_or_else(|e| panic!("the PostgreSQL tests need a server at {server}: {e}"));
        let pool = deadpool_postgres::Pool::builder(deadpool_postgres::Manager::new(
            url.parse().unwrap(),
            NoTls,
        ))
        .max_size(1)
        .build()
        .unwrap();
        super::migrate(&pool).await.unwrap();
        Database { server, url }
    }

    /// A connection of its own.
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url, NoTls).await.unwrap();
        tokio::spawn(connection);
        client
    }

    pub async fn drop(self) {
        super::drop_database(&self.server, &self.url).await.unwrap();
    }
}
