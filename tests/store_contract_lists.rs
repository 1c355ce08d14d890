//! The admin API's lists, one contract on both backends (SQLite, a real file; PostgreSQL, a
//! database of the test's own): newest first, every filter, and pages that follow each other
//! by key without a gap or a repeat; a tenant's lists hold its accounts' rows only, and an
//! incident's account is fixed when it is first stored.

mod common;

use std::time::Duration;

use common::contract::{Backend, Harness};
use incident_gateway::model::now_ms;
use incident_gateway::store::{
    Caller, Completing, DeliveryKey, DeliveryListing, DeliveryView, IncidentKey, IncidentListing,
    IncidentSummary, Ingested, NewIncident, NextStep, Page, Route, Store, StoreError,
};

crate::contract!(
    deliveries_are_listed_newest_first_filtered_and_paged,
    incidents_are_listed_newest_first_filtered_and_paged,
    an_incidents_account_is_fixed_and_scopes_the_lists,
);

fn route(connector: &str) -> Route {
    Route {
        connector: connector.into(),
        key: "k".into(),
        aggregate_for_ms: None,
        sends_updated: true,
        reopen_within_ms: None,
        collect_for_ms: None,
        sla: None,
    }
}

/// Stores incident `id` from `source`, routed to `connectors`; the ids of its deliveries.
async fn ingest(s: &Store, source: &str, id: &str, connectors: &[&str]) -> Vec<String> {
    let incident = NewIncident {
        account_id: None,
        incident_id: id.into(),
        update_time: None,
        body: format!(
            r#"{{"incidentId":"{id}","incident":{{"summary":"Summary of {id}: 50%_off"}}}}"#
        ),
        body_hash: format!("hash-{id}"),
        routes: connectors.iter().map(|c| route(c)).collect(),
    };
    // Each incident in a millisecond of its own, so that "newest first" has one answer.
    let before = now_ms();
    while now_ms() == before {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    match s.ingest(source.into(), None, vec![incident]).await.unwrap() {
        Ingested::Stored(outcomes) => outcomes[0]
            .deliveries
            .iter()
            .map(|d| d.id.clone())
            .collect(),
        Ingested::Replay => panic!("no webhook id was given"),
    }
}

/// Every page of `listing`, `limit` at a time: the ids in order, and each page's size.
async fn all_deliveries(s: &Store, listing: DeliveryListing) -> (Vec<String>, Vec<usize>) {
    let mut listing = listing;
    let (mut ids, mut sizes) = (Vec::new(), Vec::new());
    loop {
        let page: Page<DeliveryView, DeliveryKey> =
            s.list_deliveries(listing.clone()).await.unwrap();
        sizes.push(page.items.len());
        ids.extend(page.items.into_iter().map(|d| d.id));
        match page.next {
            Some(key) => listing.after = Some(key),
            None => return (ids, sizes),
        }
    }
}

async fn all_incidents(s: &Store, listing: IncidentListing) -> (Vec<String>, Vec<usize>) {
    let mut listing = listing;
    let (mut ids, mut sizes) = (Vec::new(), Vec::new());
    loop {
        let page: Page<IncidentSummary, IncidentKey> =
            s.list_incidents(listing.clone()).await.unwrap();
        sizes.push(page.items.len());
        ids.extend(page.items.into_iter().map(|i| i.incident_id));
        match page.next {
            Some(key) => listing.after = Some(key),
            None => return (ids, sizes),
        }
    }
}

async fn deliveries_are_listed_newest_first_filtered_and_paged(backend: Backend) {
    let h = Harness::open(backend).await;
    let s = &h.store;
    let a = ingest(s, "src", "A", &["jira"]).await;
    let b = ingest(s, "src", "B", &["jira", "slack"]).await;
    let c_from = now_ms() + 1;
    let c = ingest(s, "src", "C", &["jira"]).await;
    let d = ingest(s, "src", "D", &["jira", "slack"]).await;
    let e = ingest(s, "src", "E", &["jira"]).await;
    // Queued together, an incident's deliveries keep their queueing order, newest first too.
    let newest_first: Vec<String> = [&a, &b, &c, &d, &e]
        .iter()
        .flat_map(|ids| ids.iter().cloned())
        .rev()
        .collect();

    let every = |limit| DeliveryListing {
        limit,
        ..Default::default()
    };
    let (ids, sizes) = all_deliveries(s, every(2)).await;
    assert_eq!(ids, newest_first);
    assert_eq!(sizes, [2, 2, 2, 1]);
    let (ids, sizes) = all_deliveries(s, every(7)).await;
    assert_eq!(ids, newest_first);
    assert_eq!(sizes, [7], "a page that holds the rest is the last");

    let slack = DeliveryListing {
        connector: Some("slack".into()),
        limit: 1,
        ..Default::default()
    };
    assert_eq!(
        all_deliveries(s, slack).await.0,
        [d[1].clone(), b[1].clone()]
    );
    let of_b = DeliveryListing {
        incident: Some("B".into()),
        ..every(100)
    };
    assert_eq!(
        all_deliveries(s, of_b).await.0,
        [b[1].clone(), b[0].clone()]
    );
    let since_c = DeliveryListing {
        since_ms: Some(c_from),
        ..every(100)
    };
    assert_eq!(
        all_deliveries(s, since_c).await.0,
        newest_first[..4].to_vec()
    );
    let until_c = DeliveryListing {
        until_ms: Some(c_from),
        ..every(100)
    };
    assert_eq!(
        all_deliveries(s, until_c).await.0,
        newest_first[4..].to_vec()
    );

    // One goes dead: the status filter finds it alone, and together with another filter.
    let leased = s.lease_due(1, 30_000, vec![]).await.unwrap();
    assert!(
        s.record_attempt(
            leased[0].id.clone(),
            leased[0].lease_token.clone(),
            attempt(),
            NextStep::Dead {
                reason: "gone".into()
            },
            None,
        )
        .await
        .unwrap()
    );
    let dead = DeliveryListing {
        status: Some("dead".into()),
        ..every(100)
    };
    assert_eq!(
        all_deliveries(s, dead.clone()).await.0,
        [leased[0].id.clone()]
    );
    let dead_on_slack = DeliveryListing {
        connector: Some("slack".into()),
        ..dead
    };
    assert!(all_deliveries(s, dead_on_slack).await.0.is_empty());
    let pending = DeliveryListing {
        status: Some("pending".into()),
        ..every(100)
    };
    assert_eq!(all_deliveries(s, pending).await.0.len(), 6);
    let nobody = DeliveryListing {
        incident: Some("Z".into()),
        ..every(100)
    };
    let page = s.list_deliveries(nobody).await.unwrap();
    assert!(page.items.is_empty() && page.next.is_none());
}

fn attempt() -> incident_gateway::store::AttemptRecord {
    incident_gateway::store::AttemptRecord {
        attempt: 1,
        started_at_ms: now_ms(),
        latency_ms: 1,
        status_code: Some(400),
        error: None,
        response_body: None,
        outcome: incident_gateway::model::AttemptOutcome::Dead,
        lookup: None,
        outcome_unknown: false,
    }
}

async fn incidents_are_listed_newest_first_filtered_and_paged(backend: Backend) {
    let h = Harness::open(backend).await;
    let s = &h.store;
    ingest(s, "src", "A", &["jira"]).await;
    ingest(s, "other", "B", &[]).await;
    let c_from = now_ms() + 1;
    ingest(s, "src", "C.with dots", &["jira"]).await;
    ingest(s, "src", "D", &[]).await;
    // A new version of A is not a new incident: A keeps its place.
    let changed = NewIncident {
        account_id: None,
        incident_id: "A".into(),
        update_time: None,
        body: r#"{"incidentId":"A","v":2}"#.into(),
        body_hash: "hash-A2".into(),
        routes: vec![],
    };
    s.ingest("src".into(), None, vec![changed]).await.unwrap();

    let every = |limit| IncidentListing {
        limit,
        ..Default::default()
    };
    let (ids, sizes) = all_incidents(s, every(3)).await;
    assert_eq!(ids, ["D", "C.with dots", "B", "A"]);
    assert_eq!(sizes, [3, 1]);
    let (ids, _) = all_incidents(s, every(1)).await;
    assert_eq!(ids, ["D", "C.with dots", "B", "A"]);
    let first = s.list_incidents(every(1)).await.unwrap();
    assert_eq!(first.items[0].source, "src");
    assert_eq!(first.items[0].status, "open");
    assert_eq!(first.items[0].versions, 1);

    let from_other = IncidentListing {
        source: Some("other".into()),
        ..every(100)
    };
    assert_eq!(all_incidents(s, from_other).await.0, ["B"]);
    let since_c = IncidentListing {
        since_ms: Some(c_from),
        ..every(100)
    };
    assert_eq!(all_incidents(s, since_c).await.0, ["D", "C.with dots"]);
    let until_c = IncidentListing {
        until_ms: Some(c_from),
        source: Some("src".into()),
        ..every(100)
    };
    assert_eq!(all_incidents(s, until_c).await.0, ["A"]);

    s.complete(Completing {
        incident_id: "C.with dots".into(),
        caller: Caller::Source("src".into()),
        reason_code: "other".into(),
        notes: None,
        skipping: vec![],
        upstream: vec![],
        close_policies: Default::default(),
        takes_notes: vec![],
        completes_all: false,
    })
    .await
    .unwrap();
    let completed = IncidentListing {
        status: Some("completed".into()),
        ..every(100)
    };
    assert_eq!(all_incidents(s, completed).await.0, ["C.with dots"]);
    let open = IncidentListing {
        status: Some("open".into()),
        ..every(100)
    };
    assert_eq!(all_incidents(s, open).await.0, ["D", "B", "A"]);

    // By connector: the incidents with a delivery to it.
    let to_jira = IncidentListing {
        connector: Some("jira".into()),
        ..every(100)
    };
    assert_eq!(all_incidents(s, to_jira).await.0, ["C.with dots", "A"]);
    // The summary shown and searched is the current version's (A's second has none).
    let listed = s.list_incidents(every(100)).await.unwrap().items;
    let summaries: Vec<Option<&str>> = listed.iter().map(|i| i.summary.as_deref()).collect();
    assert_eq!(
        summaries,
        [
            Some("Summary of D: 50%_off"),
            Some("Summary of C.with dots: 50%_off"),
            Some("Summary of B: 50%_off"),
            None
        ]
    );
    let text = |t: &str| IncidentListing {
        text: Some(t.into()),
        ..every(100)
    };
    assert_eq!(
        all_incidents(s, text("SUMMARY OF")).await.0,
        ["D", "C.with dots", "B"]
    );
    assert_eq!(all_incidents(s, text("of d")).await.0, ["D"]);
    // `%` and `_` are the text's own, not wildcards.
    assert_eq!(all_incidents(s, text("0%_o")).await.0.len(), 3);
    assert!(all_incidents(s, text("0%o")).await.0.is_empty());
    assert!(all_incidents(s, text("of_B")).await.0.is_empty());

    // A search reads a window at most: a short page, its cursor where the reading stopped.
    let first = s.search_incidents(text("of b"), 2).await.unwrap();
    assert!(first.items.is_empty(), "D and C read, neither matches");
    let next = first.next.expect("the search goes on past the window");
    assert_eq!(next.incident_id, "C.with dots");
    let rest = s
        .search_incidents(
            IncidentListing {
                after: Some(next),
                ..text("of b")
            },
            2,
        )
        .await
        .unwrap();
    let found: Vec<&str> = rest.items.iter().map(|i| i.incident_id.as_str()).collect();
    assert_eq!(found, ["B"]);
    assert!(rest.next.is_none(), "A was the last to read");
}

/// The SQL of a list with its values written in (for EXPLAIN, which the test runs without
/// parameters).
fn with_literals(clause: incident_gateway::store::listing::Clause) -> String {
    use incident_gateway::store::listing::Arg;
    let mut sql = clause.sql;
    // Highest first, so `$1` does not eat the start of `$10`.
    for (i, arg) in clause.args.iter().enumerate().rev() {
        let literal = match arg {
            Arg::Text(t) => format!("'{}'", t.replace('\'', "''")),
            Arg::Int(n) => n.to_string(),
        };
        sql = sql.replace(&format!("${}", i + 1), &literal);
    }
    sql
}

/// On a table of 50,000 deliveries and 50,000 incidents, PostgreSQL answers each list shape
/// with an index scan in the list's order that stops at the page (no sequential scan of the
/// table, no sort of all that matches; but one incident's few deliveries, sorted once found).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_answers_every_list_from_an_index_in_order() {
    use incident_gateway::store::listing;
    let h = Harness::open(Backend::Postgres).await;
    let db = h.pg.as_ref().unwrap();
    let filled = db.query_i64(
        "WITH ins AS (
             INSERT INTO deliveries (delivery_id, incident_id, version_id, connector, event, status,
                                     budget_since_ms, next_attempt_ms, order_key, created_ms,
                                     updated_ms)
             SELECT 'msg_' || n, 'I-' || (n / 2), 1, 'c' || (n % 10), 'created',
                    CASE WHEN n % 1000 = 0 THEN 'dead' ELSE 'delivered' END,
                    n, n, 'k' || n, 1000000 + n, 1000000 + n
             FROM generate_series(1, 50000) AS n
             RETURNING 1)
         SELECT COUNT(*) FROM ins",
    );
    assert_eq!(filled, 50_000);
    db.query_i64(
        "WITH ins AS (
             INSERT INTO incidents (incident_id, source, body_hash, version_id, versions, status,
                                    status_change_ms, received_ms, updated_ms)
             SELECT 'I-' || n, 's' || (n % 10), 'h', 1, 1,
                    CASE WHEN n % 1000 = 0 THEN 'completed' ELSE 'open' END,
                    n, 1000000 + n, 1000000 + n
             FROM generate_series(1, 50000) AS n
             RETURNING 1)
         SELECT COUNT(*) FROM ins",
    );
    db.texts("ANALYZE deliveries");
    db.texts("ANALYZE incidents");
    let text = |s: &str| Some(s.to_string());
    let key = Some(DeliveryKey {
        created_ms: 1_040_000,
        seq: 40_000,
    });
    let mut shapes = Vec::new();
    for l in [
        DeliveryListing::default(),
        DeliveryListing {
            status: text("dead"),
            after: key,
            ..Default::default()
        },
        DeliveryListing {
            connector: text("c3"),
            since_ms: Some(1_010_000),
            ..Default::default()
        },
        DeliveryListing {
            incident: text("I-77"),
            after: key,
            ..Default::default()
        },
    ] {
        shapes.push(format!(
            "SELECT d.delivery_id FROM deliveries d {}",
            with_literals(listing::deliveries(&l, '$'))
        ));
    }
    for l in [
        IncidentListing::default(),
        IncidentListing {
            source: text("s4"),
            after: Some(IncidentKey {
                received_ms: 1_030_000,
                incident_id: "I-30000".into(),
            }),
            ..Default::default()
        },
        IncidentListing {
            status: text("completed"),
            until_ms: Some(1_040_000),
            ..Default::default()
        },
        IncidentListing {
            connector: text("c3"),
            ..Default::default()
        },
    ] {
        shapes.push(format!(
            "SELECT i.incident_id FROM incidents i {}",
            with_literals(listing::incidents(&l, '$'))
        ));
    }
    for sql in shapes {
        let plan = db.texts(&format!("EXPLAIN {sql}")).join("\n");
        assert!(plan.contains("Index"), "{sql}\n{plan}");
        assert!(!plan.contains("Seq Scan"), "{sql}\n{plan}");
        // One incident's deliveries are few: sorted once its index finds them.
        let of_one_incident = sql.contains("d.incident_id = ");
        assert!(of_one_incident || !plan.contains("Sort"), "{sql}\n{plan}");
    }
}

fn for_account(id: &str, account: Option<i64>, version: u32) -> NewIncident {
    NewIncident {
        account_id: account,
        incident_id: id.into(),
        update_time: Some(f64::from(version)),
        body: format!(r#"{{"incidentId":"{id}","v":{version}}}"#),
        body_hash: format!("hash-{id}-{version}"),
        routes: vec![route("jira")],
    }
}

async fn an_incidents_account_is_fixed_and_scopes_the_lists(backend: Backend) {
    let h = Harness::open(backend).await;
    let s = &h.store;
    for inc in [
        for_account("A", Some(2), 1),
        for_account("B", Some(7), 1),
        for_account("C", None, 1),
    ] {
        s.ingest("src".into(), None, vec![inc]).await.unwrap();
    }
    assert_eq!(s.account_of("A".into()).await.unwrap(), Some(Some(2)));
    assert_eq!(s.account_of("C".into()).await.unwrap(), Some(None));
    assert_eq!(s.account_of("nope".into()).await.unwrap(), None);

    let incidents = |accounts: Option<Vec<i64>>| IncidentListing {
        accounts,
        limit: 10,
        ..Default::default()
    };
    let (ids, _) = all_incidents(s, incidents(Some(vec![2]))).await;
    assert_eq!(ids, ["A"]);
    let (mut ids, _) = all_incidents(s, incidents(Some(vec![7, 2]))).await;
    ids.sort();
    assert_eq!(ids, ["A", "B"]);
    let (ids, _) = all_incidents(s, incidents(None)).await;
    assert_eq!(ids.len(), 3);
    let (deliveries, _) = all_deliveries(
        s,
        DeliveryListing {
            accounts: Some(vec![7]),
            limit: 10,
            ..Default::default()
        },
    )
    .await;
    let b = s.incident("B".into()).await.unwrap().unwrap();
    assert_eq!(b.account_id, Some(7));
    let b_deliveries: Vec<String> = b.connectors["jira"]
        .deliveries
        .iter()
        .map(|d| d.id.clone())
        .collect();
    assert_eq!(deliveries, b_deliveries);

    // A later version for another account, or for none, is refused with the batch's index;
    // nothing of the batch is kept.
    for moved in [for_account("A", Some(7), 2), for_account("A", None, 2)] {
        let refused = s
            .ingest(
                "src".into(),
                None,
                vec![for_account("D", Some(2), 1), moved],
            )
            .await;
        assert!(
            matches!(&refused, Err(StoreError::ForeignAccount { index: 1, incident_id }) if incident_id == "A"),
            "{refused:?}"
        );
        assert_eq!(s.account_of("D".into()).await.unwrap(), None, "D was kept");
    }
    let a = s.incident("A".into()).await.unwrap().unwrap();
    assert_eq!((a.versions, a.account_id), (1, Some(2)));
    // The same account: a new version, as ever.
    s.ingest("src".into(), None, vec![for_account("A", Some(2), 2)])
        .await
        .unwrap();
    assert_eq!(s.incident("A".into()).await.unwrap().unwrap().versions, 2);
}
