//! What only PostgreSQL has: several gateway processes on one database. Migrations when
//! gateways start together, a schema newer than the binary, the leases of a process that died,
//! and (with real gateway processes) work shared and taken over, one ticket per key across
//! instances, and a replay refused by another instance.

mod common;

use std::time::Duration;

use common::pg::PgDb;
use incident_gateway::model::{AttemptOutcome, now_ms};
use incident_gateway::store::{
    AttemptRecord, Ingested, NewIncident, NextStep, PostgresConfig, Route, Store, StoreError,
};

fn pg_config(url: &str) -> PostgresConfig {
    PostgresConfig {
        url: url.into(),
        pool_size: 4,
        connect_timeout: Duration::from_secs(5),
        statement_timeout: Duration::from_secs(10),
    }
}

fn incident(id: &str, connector: &str) -> NewIncident {
    NewIncident {
        incident_id: id.into(),
        update_time: None,
        body: format!(r#"{{"incidentId":"{id}"}}"#),
        body_hash: id.into(),
        routes: vec![Route {
            connector: connector.into(),
            key: format!("key-{id}"),
            aggregate_for_ms: None,
            sends_updated: true,
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_starting_together_migrate_once() {
    let db = PgDb::create();
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let url = db.url.clone();
            tokio::spawn(async move { Store::open_postgres(&pg_config(&url)).await })
        })
        .collect();
    for open in opens {
        open.await.unwrap().unwrap();
    }
    assert_eq!(db.query_i64("SELECT COUNT(*) FROM schema_migrations"), 1);
    assert_eq!(
        db.query_i64("SELECT MAX(version)::bigint FROM schema_migrations"),
        i64::from(incident_gateway::store::postgres::SCHEMA_VERSION)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_newer_than_the_binary_is_refused() {
    let db = PgDb::create();
    drop(Store::open_postgres(&pg_config(&db.url)).await.unwrap());
    db.query_i64(
        "WITH added AS (INSERT INTO schema_migrations (version, name) VALUES (999, 'future')
         RETURNING version) SELECT COUNT(*) FROM added",
    );
    let Err(e) = Store::open_postgres(&pg_config(&db.url)).await else {
        panic!("a newer schema was accepted");
    };
    assert!(
        matches!(e, StoreError::SchemaTooNew { found: 999, .. }),
        "{e}"
    );
    let message = e.to_string();
    assert!(
        message.contains("999") && message.contains("newer"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_url_or_an_absent_server_is_an_error_that_names_no_password() {
    let bad = PostgresConfig {
        url: "postgres://gw:s3cret-pw@127.0.0.1:1/none".into(),
        connect_timeout: Duration::from_millis(500),
        ..pg_config("")
    };
    let Err(e) = Store::open_postgres(&bad).await else {
        panic!("connected to nothing");
    };
    assert!(!e.to_string().contains("s3cret-pw"), "{e}");
}

/// A gateway that dies holding leases: another takes them over at its next look (within
/// seconds, not at the leases' expiry), setting aside a tracked connector's `created`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leases_of_a_process_that_died_are_recovered_at_once() {
    let db = PgDb::create();
    let survivor = Store::open_postgres(&pg_config(&db.url)).await.unwrap();
    survivor.recover(vec!["jira".into()]).await.unwrap();
    {
        let dying = Store::open_postgres(&pg_config(&db.url)).await.unwrap();
        for (id, connector) in [("A", "jira"), ("B", "chat")] {
            let stored = dying
                .ingest("src".into(), None, vec![incident(id, connector)])
                .await
                .unwrap();
            assert!(matches!(stored, Ingested::Stored(_)));
        }
        // Leased for an hour, then the process is gone.
        let held = dying.lease_due(10, 3_600_000, vec![]).await.unwrap();
        assert_eq!(held.len(), 2);
    }
    let taken = common::eventually(Duration::from_secs(20), || async {
        let leased = survivor.lease_due(10, 30_000, vec![]).await.unwrap();
        (!leased.is_empty()).then_some(leased)
    })
    .await
    .expect("the dead process's leases were not recovered");
    // chat's delivery is sent again; jira's created may have opened its ticket: set aside.
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].connector, "chat");
    let dead = survivor
        .deliveries(incident_gateway::store::DeliveryFilter {
            status: Some("dead".into()),
            connector: None,
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0]
            .last_error
            .as_deref()
            .unwrap()
            .starts_with("interrupted")
    );
    assert!(
        survivor
            .record_attempt(
                taken[0].id.clone(),
                taken[0].lease_token.clone(),
                AttemptRecord {
                    attempt: 1,
                    started_at_ms: now_ms(),
                    latency_ms: 1,
                    status_code: Some(200),
                    error: None,
                    response_body: None,
                    outcome: AttemptOutcome::Delivered,
                },
                NextStep::Delivered,
                None,
            )
            .await
            .unwrap()
    );
    assert_eq!(db.query_i64("SELECT COUNT(*) FROM instances"), 1);
}
