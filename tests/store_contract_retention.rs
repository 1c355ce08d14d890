//! Retention's contract, on both backends (SQLite in a real file, PostgreSQL in a database of
//! the test's own): what a purge deletes, what it keeps, and that correlation still works
//! after it. Cut-offs in the future stand for "long ago", so nothing here waits.

mod common;

use common::contract::{Backend, Harness};
use incident_gateway::model::{AttemptOutcome, ClosePolicy, Event, now_ms};
use incident_gateway::store::{
    AttemptRecord, Caller, CompleteOutcome, Completing, DeliveryFilter, IngestOutcome, Ingested,
    LeasedDelivery, NewIncident, NextStep, PurgeRequest, Purged, Route, Store, TicketUpdate,
};

const LEASE: i64 = 30_000;

fn route(key: &str) -> Route {
    Route {
        connector: "jira".into(),
        key: key.into(),
        aggregate_for_ms: None,
        sends_updated: true,
        reopen_within_ms: None,
        collect_for_ms: None,
        sla: None,
    }
}

async fn ingest_one(store: &Store, id: &str, key: &str) -> IngestOutcome {
    ingest_body(store, id, key, format!(r#"{{"incidentId":"{id}"}}"#)).await
}

async fn ingest_body(store: &Store, id: &str, key: &str, body: String) -> IngestOutcome {
    let inc = NewIncident {
        account_id: None,
        incident_id: id.into(),
        update_time: None,
        body,
        body_hash: format!("hash-{id}"),
        routes: vec![route(key)],
    };
    match store.ingest("src".into(), None, vec![inc]).await.unwrap() {
        Ingested::Stored(mut outcomes) => outcomes.remove(0),
        Ingested::Replay => panic!("no webhook id was given"),
    }
}

/// Leases what is due and ends each attempt as `next` says (a `created` opens ticket
/// "T-<incident>"); what was leased.
async fn work(s: &Store, next: impl Fn(&LeasedDelivery) -> NextStep) -> Vec<LeasedDelivery> {
    let leased = s.lease_due(100, LEASE, vec![]).await.unwrap();
    for d in &leased {
        let step = next(d);
        let outcome = match step {
            NextStep::Delivered => AttemptOutcome::Delivered,
            NextStep::RetryAt { .. } => AttemptOutcome::Retry,
            NextStep::Dead { .. } => AttemptOutcome::Dead,
        };
        let opened =
            (d.event == Event::Created && matches!(step, NextStep::Delivered)).then(|| {
                TicketUpdate {
                    ticket_seq: d.ticket_seq.unwrap(),
                    id: format!("T-{}", d.incident_id),
                    url: None,
                }
            });
        let record = AttemptRecord {
            attempt: d.attempts + 1,
            started_at_ms: now_ms(),
            latency_ms: 3,
            status_code: Some(200),
            error: None,
            response_body: Some("ok".into()),
            outcome,
            lookup: None,
            outcome_unknown: false,
        };
        assert!(
            s.record_attempt(d.id.clone(), d.lease_token.clone(), record, step, opened)
                .await
                .unwrap()
        );
    }
    leased
}

fn delivered(_: &LeasedDelivery) -> NextStep {
    NextStep::Delivered
}

async fn complete(s: &Store, id: &str) {
    complete_with(s, id, ClosePolicy::WhenAllComplete).await;
}

async fn complete_with(s: &Store, id: &str, policy: ClosePolicy) {
    let outcome = s
        .complete(Completing {
            incident_id: id.into(),
            caller: Caller::Source("src".into()),
            reason_code: "FALSE_POSITIVE".into(),
            notes: None,
            skipping: vec![],
            upstream: vec![],
            close_policies: [("jira".to_string(), policy)].into(),
            takes_notes: vec![],
            completes_all: false,
        })
        .await
        .unwrap();
    assert!(matches!(outcome, CompleteOutcome::Completed { .. }), "{id}");
}

/// Everything older than a minute from now (so: everything) counts as old.
fn old(dead: bool, batch: usize) -> PurgeRequest {
    let later = now_ms() + 60_000;
    PurgeRequest {
        delivered_before_ms: later,
        dead_before_ms: dead.then_some(later),
        tickets_closed_before_ms: later,
        batch,
        after: None,
    }
}

/// Runs batches until the pass ends; the sum of what they purged.
async fn purge_pass(s: &Store, request: PurgeRequest) -> Purged {
    let mut total = Purged::default();
    let mut request = request;
    loop {
        let batch = s.purge(request.clone()).await.unwrap();
        total.incidents += batch.incidents;
        total.rows += batch.rows;
        match batch.next {
            Some(next) => request.after = Some(next),
            None => return total,
        }
    }
}

/// The incident of every delivery stored, sorted.
async fn all_deliveries(s: &Store) -> Vec<String> {
    let mut of: Vec<String> = s
        .deliveries(DeliveryFilter {
            status: None,
            connector: None,
            limit: 1000,
        })
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.incident_id)
        .collect();
    of.sort();
    of
}

async fn exists(s: &Store, id: &str) -> bool {
    s.incident(id.into()).await.unwrap().is_some()
}

crate::contract!(
    finished_old_work_is_purged_and_the_rest_kept,
    dead_work_goes_only_with_a_dead_cut_off,
    a_pass_walks_every_old_incident_in_batches,
);

async fn finished_old_work_is_purged_and_the_rest_kept(backend: Backend) {
    let h = Harness::open(backend).await;
    let s = &h.store;
    // Done: delivered, completed, its ticket closed and the completion delivered.
    ingest_one(s, "done", "k-done").await;
    // Open: its ticket is open (a later incident of its key joins it).
    ingest_one(s, "open", "k-open").await;
    // Noted: completed, on a ticket its connector never closes.
    ingest_one(s, "noted", "k-noted").await;
    work(s, delivered).await;
    complete(s, "done").await;
    complete_with(s, "noted", ClosePolicy::Never).await;
    work(s, delivered).await;
    // Pending: queued, never sent.
    ingest_one(s, "pending", "k-pending").await;

    // Nothing is older than a cut-off in the past.
    let mut past = old(true, 100);
    past.delivered_before_ms = now_ms() - 60_000;
    past.dead_before_ms = Some(past.delivered_before_ms);
    past.tickets_closed_before_ms = past.delivered_before_ms;
    assert_eq!(purge_pass(s, past).await, Purged::default());
    let finished = all_deliveries(s)
        .await
        .into_iter()
        .filter(|d| d == "done" || d == "noted")
        .count() as u64;
    // A ticket closed after the ticket cut-off (it may still be reopened) holds its incident;
    // a completed incident on a ticket left open goes.
    let mut reopenable = old(false, 100);
    reopenable.tickets_closed_before_ms = now_ms() - 60_000;
    let first = purge_pass(s, reopenable).await;
    assert_eq!(first.incidents, 1);
    assert!(exists(s, "done").await);
    assert!(!exists(s, "noted").await);

    let then = purge_pass(s, old(false, 100)).await;
    assert_eq!(then.incidents, 1);
    assert_eq!(then.next, None);
    let purged = Purged {
        incidents: first.incidents + then.incidents,
        rows: first.rows + then.rows,
        next: None,
    };
    assert!(!exists(s, "done").await);
    assert!(!exists(s, "noted").await);
    assert!(exists(s, "open").await);
    assert!(exists(s, "pending").await);
    assert_eq!(all_deliveries(s).await, ["open", "pending"]);
    // Again: nothing more to purge.
    assert_eq!(purge_pass(s, old(true, 100)).await.incidents, 0);

    // Each purged incident took its version, its deliveries with an attempt each, and its
    // ticket link; the closed ticket went with "done", the open one stays.
    assert_eq!(purged.rows, 2 * 3 + 2 * finished + 1);
    // Correlation goes on: an open ticket's key joins it, the purged one's opens anew.
    let joined = ingest_one(s, "open-2", "k-open").await;
    assert_eq!(joined.deliveries[0].event, Event::Updated);
    let noted_again = ingest_one(s, "noted-2", "k-noted").await;
    assert_eq!(noted_again.deliveries[0].event, Event::Updated);
    let again = ingest_one(s, "done-2", "k-done").await;
    assert_eq!(again.deliveries[0].event, Event::Created);
    let sent = work(s, delivered).await;
    let updated = sent.iter().find(|d| d.incident_id == "open-2").unwrap();
    assert_eq!(updated.ticket.id.as_deref(), Some("T-open"));
    let noted = sent.iter().find(|d| d.incident_id == "noted-2").unwrap();
    assert_eq!(noted.ticket.id.as_deref(), Some("T-noted"));
    // A purged incident sent again is a new incident.
    let resent = ingest_one(s, "done", "k-done").await;
    assert_eq!(
        resent.status,
        incident_gateway::store::IngestStatus::Accepted
    );
}

async fn dead_work_goes_only_with_a_dead_cut_off(backend: Backend) {
    let h = Harness::open(backend).await;
    let s = &h.store;
    ingest_one(s, "dies", "k-dies").await;
    work(s, delivered).await;
    complete(s, "dies").await;
    let dead = |_: &LeasedDelivery| NextStep::Dead {
        reason: "gave up".into(),
    };
    assert_eq!(work(s, dead).await.len(), 1);
    // A created that died holds its (open) ticket's line: kept, dead cut-off or not.
    ingest_one(s, "never-opened", "k-never").await;
    assert_eq!(work(s, dead).await.len(), 1);

    assert_eq!(purge_pass(s, old(false, 100)).await.incidents, 0);
    assert!(exists(s, "dies").await);
    let purged = purge_pass(s, old(true, 100)).await;
    assert_eq!(purged.incidents, 1);
    assert!(!exists(s, "dies").await);
    assert!(exists(s, "never-opened").await);
}

async fn a_pass_walks_every_old_incident_in_batches(backend: Backend) {
    let h = Harness::open(backend).await;
    let s = &h.store;
    for i in 0..7 {
        ingest_one(s, &format!("i{i}"), &format!("k{i}")).await;
    }
    // i3's ticket stays open: the pass steps over it and goes on.
    work(s, delivered).await;
    for i in (0..7).filter(|i| *i != 3) {
        complete(s, &format!("i{i}")).await;
    }
    work(s, delivered).await;
    let first = s.purge(old(false, 2)).await.unwrap();
    assert!(first.incidents >= 1, "{first:?}");
    assert!(first.next.is_some());
    let rest = purge_pass(
        s,
        PurgeRequest {
            after: first.next,
            ..old(false, 2)
        },
    )
    .await;
    assert_eq!(first.incidents + rest.incidents, 6);
    for i in 0..7 {
        assert_eq!(exists(s, &format!("i{i}")).await, i == 3, "i{i}");
    }
}

/// SQLite gives the pages a purge freed back to the file system: the file shrinks by about
/// what was purged, and no free page is left in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_gives_purged_space_back_to_the_file_system() {
    let h = Harness::open(Backend::Sqlite).await;
    let s = &h.store;
    let path = h.dir.path().join("gateway.db");
    let size = || {
        ["gateway.db", "gateway.db-wal"]
            .iter()
            .filter_map(|f| std::fs::metadata(h.dir.path().join(f)).ok())
            .map(|m| m.len())
            .sum::<u64>()
    };
    // 400 incidents of 20 KB: 8 MB of bodies, more than one chunk of the vacuum.
    const N: usize = 400;
    let pad = "x".repeat(20_000);
    for i in 0..N {
        let id = format!("big-{i}");
        let body = format!(r#"{{"incidentId":"{id}","pad":"{pad}"}}"#);
        ingest_body(s, &id, &format!("k-{i}"), body).await;
    }
    while !work(s, delivered).await.is_empty() {}
    for i in 0..N {
        complete(s, &format!("big-{i}")).await;
    }
    while !work(s, delivered).await.is_empty() {}
    // The WAL emptied into the file first, so "before" is the data, not its journal.
    s.compact().await.unwrap();
    let before = size();
    assert!(before > (N * pad.len()) as u64, "{before}");

    assert_eq!(purge_pass(s, old(false, 100)).await.incidents, N as u64);
    s.compact().await.unwrap();
    let after = size();
    eprintln!("file with WAL: {before} bytes before the purge, {after} after");
    assert!(after < before / 4, "{before} -> {after}");
    let conn = rusqlite::Connection::open(&path).unwrap();
    let free: i64 = conn
        .query_row("PRAGMA freelist_count", [], |r| r.get(0))
        .unwrap();
    assert_eq!(free, 0);
}
