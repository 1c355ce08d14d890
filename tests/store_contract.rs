//! One contract, two backends: every test here runs against SQLite (a real file) and against
//! PostgreSQL (a real server, a database of the test's own), through the store's interface
//! alone. The races that only several processes can run into (one incident or one key posted
//! to several gateways at once) run on PostgreSQL with several stores, each its own pool,
//! as several gateway processes would hold them.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::contract::attempt;
use common::eventually;
use common::pg::PgDb;
use incident_gateway::model::{AttemptOutcome, ClosePolicy, Event, now_ms};
use incident_gateway::store::{
    Caller, CompleteOutcome, Completing, DeliveryFilter, IngestOutcome, IngestStatus, Ingested,
    LeasedDelivery, NewIncident, NextStep, PurgeRequest, ReplayOutcome, ResolveOutcome, Route,
    Store, TicketUpdate,
};

const LEASE: i64 = 30_000;

/// A store under test and what keeps it alive (its folder or its database).
struct Harness {
    stores: Vec<Store>,
    _dir: tempfile::TempDir,
    pg: Option<PgDb>,
}

#[derive(Clone, Copy, Debug)]
enum Backend {
    Sqlite,
    Postgres,
}

impl Harness {
    /// `instances` handles on one store: on PostgreSQL, that many stores (as that many
    /// gateway processes would open); on SQLite, one store (one process per file) shared.
    async fn open(backend: Backend, instances: usize) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        match backend {
            Backend::Sqlite => {
                let store = Store::open_sqlite(&dir.path().join("gateway.db")).unwrap();
                Harness {
                    stores: vec![store; instances],
                    _dir: dir,
                    pg: None,
                }
            }
            Backend::Postgres => {
                let pg = PgDb::create();
                let mut stores = Vec::new();
                for _ in 0..instances {
                    stores.push(
                        Store::open_postgres(&common::pg::store_config(&pg.url, 8))
                            .await
                            .unwrap(),
                    );
                }
                Harness {
                    stores,
                    _dir: dir,
                    pg: Some(pg),
                }
            }
        }
    }

    fn store(&self) -> &Store {
        &self.stores[0]
    }

    /// Every handle closed and the store opened again on the same file or database, as a
    /// gateway killed and started again would.
    async fn reopen(&mut self) {
        let n = self.stores.len();
        self.stores.clear();
        match &self.pg {
            None => {
                let path = self._dir.path().join("gateway.db");
                // The file's lock goes with the last handle's writer: wait for it, bounded.
                let store = eventually(Duration::from_secs(10), || {
                    let opened = Store::open_sqlite(&path).ok();
                    async move { opened }
                })
                .await
                .expect("the SQLite file opens again");
                self.stores = vec![store; n];
            }
            Some(pg) => {
                for _ in 0..n {
                    self.stores.push(
                        Store::open_postgres(&common::pg::store_config(&pg.url, 8))
                            .await
                            .unwrap(),
                    );
                }
            }
        }
    }
}

/// A route to `connector` under `key` whose incidents wait `window_ms` for others.
fn collecting(connector: &str, key: &str, window_ms: i64) -> Route {
    Route {
        collect_for_ms: Some(window_ms),
        sla: None,
        ..route(connector, key)
    }
}

/// The incident ids a leased window carries, in order, and its count.
fn carried(d: &LeasedDelivery) -> (Vec<String>, u32) {
    let c = d.collected.as_ref().expect("a collection window");
    assert_eq!(c.bodies.len(), c.count.min(100) as usize);
    let ids = c
        .bodies
        .iter()
        .map(|b| {
            let v: serde_json::Value = serde_json::from_str(b).unwrap();
            v["incidentId"].as_str().unwrap().to_string()
        })
        .collect();
    (ids, c.count)
}

/// Leases until `n` deliveries are leased (windows fall due as time passes), bounded.
async fn lease_when_due(s: &Store, n: usize) -> Vec<LeasedDelivery> {
    let mut all = Vec::new();
    let until = std::time::Instant::now() + Duration::from_secs(20);
    while all.len() < n {
        assert!(
            std::time::Instant::now() < until,
            "{} of {n} leased",
            all.len()
        );
        all.extend(s.lease_due(100, LEASE, vec![]).await.unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    all
}

fn route(connector: &str, key: &str) -> Route {
    Route {
        connector: connector.into(),
        key: key.into(),
        aggregate_for_ms: None,
        sends_updated: true,
        reopen_within_ms: None,
        collect_for_ms: None,
        sla: None,
    }
}

/// A completion by `caller` with the default policies (every connector takes notes).
fn completing(id: &str, caller: Caller, skipping: &[&str], upstream: &[&str]) -> Completing {
    Completing {
        incident_id: id.into(),
        caller,
        reason_code: "FALSE_POSITIVE".into(),
        notes: Some("noise".into()),
        skipping: skipping.iter().map(|s| s.to_string()).collect(),
        upstream: upstream.iter().map(|s| s.to_string()).collect(),
        close_policies: Default::default(),
        takes_notes: vec!["jira".into(), "redmine".into()],
        completes_all: false,
    }
}

fn incident(id: &str, update_time: Option<f64>, body: &str, routes: &[Route]) -> NewIncident {
    NewIncident {
        account_id: None,
        incident_id: id.into(),
        update_time,
        body: format!(r#"{{"incidentId":"{id}","v":"{body}"}}"#),
        body_hash: format!("hash-{body}"),
        routes: routes.to_vec(),
    }
}

async fn ingest_one(store: &Store, inc: NewIncident) -> IngestOutcome {
    match store.ingest("src".into(), None, vec![inc]).await.unwrap() {
        Ingested::Stored(mut outcomes) => outcomes.remove(0),
        Ingested::Replay => panic!("no webhook id was given"),
    }
}

fn ids(leased: &[LeasedDelivery]) -> Vec<&str> {
    leased.iter().map(|d| d.id.as_str()).collect()
}

/// Records the next attempt of `d` as ending in `next`; whether the lease was still held.
async fn finish(store: &Store, d: &LeasedDelivery, next: NextStep) -> bool {
    let outcome = match next {
        NextStep::Delivered => AttemptOutcome::Delivered,
        NextStep::RetryAt { .. } => AttemptOutcome::Retry,
        NextStep::Dead { .. } => AttemptOutcome::Dead,
    };
    store
        .record_attempt(
            d.id.clone(),
            d.lease_token.clone(),
            attempt(d.attempts + 1, outcome),
            next,
            None,
        )
        .await
        .unwrap()
}

/// Declares each contract test once per backend.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Postgres).await;
                }
            )*
        }
    };
}

contract!(
    the_same_version_twice_is_a_duplicate_and_a_changed_one_an_update,
    an_update_waits_for_its_created_and_goes_once_it_is_delivered,
    a_lease_fences_its_attempt_and_a_retry_waits_until_it_is_due,
    a_dead_created_holds_its_line_until_replayed_or_resolved,
    completion_closes_tickets_queues_completed_and_happens_once,
    a_webhook_id_is_claimed_once,
    released_and_extended_leases,
    the_admin_views_show_tickets_deliveries_and_attempts,
    the_same_incident_posted_at_once_everywhere_is_stored_once,
    incidents_sharing_keys_posted_at_once_everywhere_open_one_ticket_per_key,
    a_delivery_is_leased_by_one_instance_at_a_time,
    an_update_queued_before_the_completion_does_not_announce_it,
    an_aggregated_ticket_closes_by_its_connectors_policy,
    a_target_closing_its_ticket_completes_all_its_incidents,
    an_incident_within_reopen_within_reopens_the_closed_ticket,
    a_collection_window_gathers_its_keys_incidents_until_it_is_leased,
    a_restart_inside_a_collection_window_neither_loses_nor_doubles_it,
    every_incident_lands_in_one_window_while_leases_race_the_joins,
    a_full_collection_window_closes_so_every_incident_it_takes_is_sent,
);

/// A window holds at most 100 incidents (what a lease carries): the 101st opens the next
/// window, so no incident is counted in a window and never sent.
async fn a_full_collection_window_closes_so_every_incident_it_takes_is_sent(backend: Backend) {
    let h = Harness::open(backend, 1).await;
    let s = h.store();
    let k = collecting("jira", "k", 300);
    let first = ingest_one(s, incident("I0", None, "i0", std::slice::from_ref(&k))).await;
    let window = first.deliveries[0].id.clone();
    for i in 1..100 {
        let id = format!("I{i}");
        let joined = ingest_one(s, incident(&id, None, &id, std::slice::from_ref(&k))).await;
        assert_eq!(joined.deliveries[0].id, window, "{id}");
    }
    let last = ingest_one(s, incident("LAST", None, "last", std::slice::from_ref(&k))).await;
    assert_ne!(last.deliveries[0].id, window);
    let leased = lease_when_due(s, 1).await;
    assert_eq!(ids(&leased), [window.as_str()]);
    let (carried_ids, count) = carried(&leased[0]);
    assert_eq!((carried_ids.len(), count), (100, 100));
    assert!(!carried_ids.contains(&"LAST".to_string()));
}

/// A window of 500 ms: its delivery is due when it ends; the key's incidents join it (each
/// answer names it) until it is leased, another key has its own, and the incident after the
/// lease opens the ticket's next window. A collected incident is kept by retention while its
/// window's delivery is.
async fn a_collection_window_gathers_its_keys_incidents_until_it_is_leased(backend: Backend) {
    let h = Harness::open(backend, 1).await;
    let s = h.store();
    let k = collecting("jira", "k", 500);
    let first = ingest_one(s, incident("A", None, "a", std::slice::from_ref(&k))).await;
    let window = first.deliveries[0].id.clone();
    assert_eq!(first.deliveries[0].event, Event::Created);
    let view = s.delivery(window.clone()).await.unwrap().unwrap();
    let at = |t: &str| chrono::DateTime::parse_from_rfc3339(t).unwrap();
    assert_eq!(
        at(view.next_attempt_at.as_deref().unwrap()) - at(&view.created_at),
        chrono::TimeDelta::milliseconds(500),
        "due when the window ends"
    );
    for id in ["B", "C"] {
        let joined = ingest_one(s, incident(id, None, id, std::slice::from_ref(&k))).await;
        assert_eq!(joined.deliveries[0].id, window, "{id}");
    }
    let other = ingest_one(s, incident("X", None, "x", &[collecting("jira", "x", 500)])).await;
    assert_ne!(other.deliveries[0].id, window);
    // B, completed (no note: the connector takes none), is on an open ticket with nothing
    // of its own queued: only its window's delivery keeps it from retention.
    let mut request = completing("B", Caller::Source("src".into()), &[], &[]);
    request.takes_notes.clear();
    assert!(matches!(
        s.complete(request).await.unwrap(),
        CompleteOutcome::Completed { .. }
    ));
    let far = now_ms() + 3_600_000;
    let purge = PurgeRequest {
        delivered_before_ms: far,
        dead_before_ms: Some(far),
        tickets_closed_before_ms: far,
        batch: 100,
        after: None,
    };
    assert_eq!(s.purge(purge.clone()).await.unwrap().incidents, 0);

    let leased = lease_when_due(s, 2).await;
    let by_first = |id: &str| {
        leased
            .iter()
            .find(|d| carried(d).0[0] == id)
            .unwrap_or_else(|| panic!("no window of {id}"))
    };
    assert_eq!(by_first("A").id, window);
    assert_eq!(
        carried(by_first("A")),
        (vec!["A".into(), "B".into(), "C".into()], 3)
    );
    assert_eq!(carried(by_first("X")), (vec!["X".into()], 1));
    // Leased, it is closed: D opens the ticket's next window, behind it.
    let d = ingest_one(s, incident("D", None, "d", std::slice::from_ref(&k))).await;
    assert_ne!(d.deliveries[0].id, window);
    assert_eq!(d.deliveries[0].event, Event::Updated);
    for l in &leased {
        assert!(finish(s, l, NextStep::Delivered).await);
    }
    let next = lease_when_due(s, 1).await;
    assert_eq!(next[0].id, d.deliveries[0].id);
    assert_eq!(carried(&next[0]), (vec!["D".into()], 1));
    assert!(finish(s, &next[0], NextStep::Delivered).await);
    // Its window delivered, B goes with it (and A, C, X, D stay: their tickets are open).
    let purged = s.purge(purge).await.unwrap();
    assert_eq!(purged.incidents, 1);
    assert!(s.incident("B".into()).await.unwrap().is_none());
}

/// Two incidents in a window, the store closed and opened again (a gateway restarted), a
/// third: one delivery, leased once, with all three.
async fn a_restart_inside_a_collection_window_neither_loses_nor_doubles_it(backend: Backend) {
    let mut h = Harness::open(backend, 1).await;
    let k = collecting("jira", "k", 1_000);
    let first = ingest_one(
        h.store(),
        incident("A", None, "a", std::slice::from_ref(&k)),
    )
    .await;
    let window = first.deliveries[0].id.clone();
    let b = ingest_one(
        h.store(),
        incident("B", None, "b", std::slice::from_ref(&k)),
    )
    .await;
    assert_eq!(b.deliveries[0].id, window);
    h.reopen().await;
    let s = h.store();
    let c = ingest_one(s, incident("C", None, "c", std::slice::from_ref(&k))).await;
    assert_eq!(c.deliveries[0].id, window, "the window survived");
    let leased = lease_when_due(s, 1).await;
    assert_eq!(leased.len(), 1);
    assert_eq!(leased[0].id, window);
    assert_eq!(
        carried(&leased[0]),
        (vec!["A".into(), "B".into(), "C".into()], 3)
    );
    assert!(finish(s, &leased[0], NextStep::Delivered).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(s.lease_due(100, LEASE, vec![]).await.unwrap().is_empty());
    assert_eq!(
        s.deliveries(DeliveryFilter {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .len(),
        1
    );
}

/// Three instances (on PostgreSQL, three stores: three gateways) post 20 incidents each of one
/// key while a fourth task leases and delivers whatever falls due (windows of 20 ms): every
/// incident is in exactly one window, and every window is complete when leased.
async fn every_incident_lands_in_one_window_while_leases_race_the_joins(backend: Backend) {
    let h = Harness::open(backend, 3).await;
    let k = collecting("jira", "k", 20);
    let posting: Vec<_> = h
        .stores
        .iter()
        .enumerate()
        .map(|(n, s)| {
            let (s, k) = (s.clone(), k.clone());
            tokio::spawn(async move {
                for i in 0..20 {
                    let id = format!("I{n}-{i}");
                    ingest_one(&s, incident(&id, None, &id, std::slice::from_ref(&k))).await;
                    if i % 4 == 0 {
                        tokio::time::sleep(Duration::from_millis(7)).await;
                    }
                }
            })
        })
        .collect();
    let posted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let leaser = {
        let (s, posted) = (h.stores[0].clone(), posted.clone());
        tokio::spawn(async move {
            let mut seen: Vec<String> = Vec::new();
            let mut windows = 0;
            let until = std::time::Instant::now() + Duration::from_secs(60);
            loop {
                assert!(std::time::Instant::now() < until, "not all delivered");
                let leased = s.lease_due(10, LEASE, vec![]).await.unwrap();
                for d in &leased {
                    seen.extend(carried(d).0);
                    windows += 1;
                    assert!(finish(&s, d, NextStep::Delivered).await);
                }
                if leased.is_empty() {
                    let done = posted.load(std::sync::atomic::Ordering::SeqCst);
                    if done && s.next_due_ms(vec![]).await.unwrap().is_none() {
                        return (seen, windows);
                    }
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
            }
        })
    };
    for p in posting {
        p.await.unwrap();
    }
    posted.store(true, std::sync::atomic::Ordering::SeqCst);
    let (mut seen, windows) = leaser.await.unwrap();
    assert_eq!(seen.len(), 60, "{windows} windows carried {seen:?}");
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 60, "an incident was carried twice");
    assert!(windows >= 1);
    println!("{backend:?}: 60 incidents in {windows} windows");
}

/// Records the first attempt of a leased `created` as delivered, naming ticket `id`; whether
/// the lease was still held.
async fn opened_as(s: &Store, created: &LeasedDelivery, id: &str) -> bool {
    let opened = TicketUpdate {
        ticket_seq: created.ticket_seq.unwrap(),
        id: id.into(),
        url: None,
    };
    s.record_attempt(
        created.id.clone(),
        created.lease_token.clone(),
        attempt(1, AttemptOutcome::Delivered),
        NextStep::Delivered,
        Some(opened),
    )
    .await
    .unwrap()
}

/// Leases everything due and records each as delivered; what was leased.
async fn deliver_all(s: &Store) -> Vec<LeasedDelivery> {
    let mut all = Vec::new();
    loop {
        let leased = s.lease_due(100, LEASE, vec![]).await.unwrap();
        if leased.is_empty() {
            return all;
        }
        for d in &leased {
            assert!(finish(s, d, NextStep::Delivered).await);
        }
        all.extend(leased);
    }
}

/// Three incidents on one key's ticket. `when_all_complete` (the default): the first two
/// completions are notes that carry their completion, the last closes the ticket.
/// `at_once`: the first closes it. `never`: every completion is a note, the ticket stays open.
async fn an_aggregated_ticket_closes_by_its_connectors_policy(backend: Backend) {
    for (policy, expected) in [
        (
            ClosePolicy::WhenAllComplete,
            [Event::Updated, Event::Updated, Event::Completed],
        ),
        (
            ClosePolicy::Never,
            [Event::Updated, Event::Updated, Event::Updated],
        ),
    ] {
        let h = Harness::open(backend, 1).await;
        let s = h.store();
        for id in ["A", "B", "C"] {
            ingest_one(s, incident(id, None, id, &[route("jira", "k")])).await;
        }
        deliver_all(s).await;
        for (id, event) in ["A", "B", "C"].into_iter().zip(expected) {
            let mut request = completing(id, Caller::Source("src".into()), &[], &[]);
            request.close_policies.insert("jira".into(), policy);
            let CompleteOutcome::Completed { deliveries, .. } = s.complete(request).await.unwrap()
            else {
                panic!("{id} not completed");
            };
            assert_eq!(deliveries.len(), 1, "{policy:?} {id}");
            assert_eq!(deliveries[0].event, event, "{policy:?} {id}");
            let leased = deliver_all(s).await;
            assert_eq!(leased.len(), 1);
            // A note of a completion carries it, as the `completed` does.
            let completion = leased[0].completion.as_ref().expect("the completion");
            assert_eq!(completion.reason_code, "FALSE_POSITIVE");
        }
        // Under `never` the ticket is still open: a new incident of the key joins it.
        let d = ingest_one(s, incident("D", None, "d", &[route("jira", "k")])).await;
        let joined = if policy == ClosePolicy::Never {
            Event::Updated
        } else {
            Event::Created
        };
        assert_eq!(d.deliveries[0].event, joined, "{policy:?}");
    }
    // `at_once`: the first completion closes it; the next incident of the key opens another.
    let h = Harness::open(backend, 1).await;
    let s = h.store();
    for id in ["A", "B"] {
        ingest_one(s, incident(id, None, id, &[route("jira", "k")])).await;
    }
    deliver_all(s).await;
    let mut request = completing("A", Caller::Source("src".into()), &[], &[]);
    request
        .close_policies
        .insert("jira".into(), ClosePolicy::AtOnce);
    let CompleteOutcome::Completed { deliveries, .. } = s.complete(request).await.unwrap() else {
        panic!("not completed");
    };
    assert_eq!(deliveries[0].event, Event::Completed);
    let c = ingest_one(s, incident("C", None, "c", &[route("jira", "k")])).await;
    assert_eq!(c.deliveries[0].event, Event::Created);
}

/// The target closes its ticket of three incidents (its callback names one): with
/// `completes_all` the other two are completed along, and the other connector's tickets hear of
/// all three; the caller hears nothing back.
async fn a_target_closing_its_ticket_completes_all_its_incidents(backend: Backend) {
    let h = Harness::open(backend, 1).await;
    let s = h.store();
    let routes = [route("jira", "k"), route("redmine", "k")];
    for id in ["A", "B", "C"] {
        ingest_one(s, incident(id, None, id, &routes)).await;
    }
    deliver_all(s).await;
    let mut request = completing("B", Caller::Connector("jira".into()), &["jira"], &["up"]);
    request.completes_all = true;
    let CompleteOutcome::Completed {
        deliveries, along, ..
    } = s.complete(request).await.unwrap()
    else {
        panic!("not completed");
    };
    assert_eq!(along, ["A", "C"]);
    let to = |connector: &str| -> Vec<Event> {
        deliveries
            .iter()
            .filter(|d| d.connector == connector)
            .map(|d| d.event)
            .collect()
    };
    assert!(to("jira").is_empty(), "{deliveries:?}");
    // Redmine's ticket (when_all_complete): notes for B and A, then C closes it.
    assert_eq!(
        to("redmine"),
        [Event::Updated, Event::Updated, Event::Completed]
    );
    assert_eq!(to("up").len(), 3);
    let again = s
        .complete(completing("C", Caller::Source("src".into()), &[], &[]))
        .await
        .unwrap();
    assert!(matches!(again, CompleteOutcome::AlreadyCompleted { .. }));
}

/// With `reopen_within`, an incident of a key whose ticket closed within it reopens that
/// ticket (an `updated` whose ticket says `reopened`), not a new one; past it, a new ticket.
async fn an_incident_within_reopen_within_reopens_the_closed_ticket(backend: Backend) {
    let h = Harness::open(backend, 1).await;
    let s = h.store();
    let reopening = |ms| Route {
        reopen_within_ms: Some(ms),
        collect_for_ms: None,
        sla: None,
        ..route("jira", "k")
    };
    ingest_one(s, incident("A", None, "a", &[reopening(60_000)])).await;
    let created = s.lease_due(10, LEASE, vec![]).await.unwrap();
    assert!(opened_as(s, &created[0], "JIRA-1").await);
    s.complete(completing("A", Caller::Source("src".into()), &[], &[]))
        .await
        .unwrap();
    deliver_all(s).await;
    let b = ingest_one(s, incident("B", None, "b", &[reopening(60_000)])).await;
    assert_eq!(b.deliveries[0].event, Event::Updated);
    let leased = deliver_all(s).await;
    assert_eq!(leased[0].ticket.id.as_deref(), Some("JIRA-1"));
    assert!(leased[0].ticket.reopened);
    // Its next version is a plain update of the reopened ticket.
    ingest_one(s, incident("B", None, "b2", &[reopening(60_000)])).await;
    let leased = deliver_all(s).await;
    assert!(!leased[0].ticket.reopened);
    // Closed longer ago than the window: a new ticket.
    s.complete(completing("B", Caller::Source("src".into()), &[], &[]))
        .await
        .unwrap();
    deliver_all(s).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let c = ingest_one(s, incident("C", None, "c", &[reopening(10)])).await;
    assert_eq!(c.deliveries[0].event, Event::Created);
}

/// A delivery carries the state it was queued for: an `updated` still waiting behind its
/// `created` when the incident is completed is leased without the completion; the
/// `completed` carries it.
async fn an_update_queued_before_the_completion_does_not_announce_it(backend: Backend) {
    let h = Harness::open(backend, 1).await;
    let s = h.store();
    let jira = [route("jira", "k")];
    ingest_one(s, incident("A", None, "a", &jira)).await;
    let updated = ingest_one(s, incident("A", None, "a2", &jira)).await;
    assert_eq!(updated.deliveries[0].event, Event::Updated);
    let created = s.lease_due(10, LEASE, vec![]).await.unwrap();
    let completed = s
        .complete(completing("A", Caller::Source("src".into()), &[], &[]))
        .await
        .unwrap();
    assert!(matches!(completed, CompleteOutcome::Completed { .. }));
    assert!(finish(s, &created[0], NextStep::Delivered).await);
    let update = s.lease_due(10, LEASE, vec![]).await.unwrap();
    assert_eq!(update[0].event, Event::Updated);
    assert!(
        update[0].completion.is_none(),
        "the update announced a later completion"
    );
    assert!(finish(s, &update[0], NextStep::Delivered).await);
    let completion = s.lease_due(10, LEASE, vec![]).await.unwrap();
    assert_eq!(completion[0].event, Event::Completed);
    assert_eq!(
        completion[0]
            .completion
            .as_ref()
            .map(|c| c.reason_code.as_str()),
        Some("FALSE_POSITIVE")
    );
}

async fn the_same_version_twice_is_a_duplicate_and_a_changed_one_an_update(backend: Backend) {
    let h = Harness::open(backend, 1).await;
    let s = h.store();
    let jira = [route("jira", "k")];
    let first = ingest_one(s, incident("A", None, "v1", &jira)).await;
    assert_eq!(first.status, IngestStatus::Accepted);
    assert_eq!(first.deliveries.len(), 1);
    assert_eq!(first.deliveries[0].event, Event::Created);
    let again = ingest_one(s, incident("A", None, "v1", &jira)).await;
    assert_eq!(again.status, IngestStatus::Duplicate);
    assert!(again.deliveries.is_empty());
    let changed = ingest_one(s, incident("A", None, "v2", &jira)).await;
    assert_eq!(changed.status, IngestStatus::Updated);
    assert_eq!(changed.deliveries[0].event, Event::Updated);
    // A late copy of the first version is seen before.
    let late = ingest_one(s, incident("A", None, "v1", &jira)).await;
    assert_eq!(late.status, IngestStatus::Duplicate);
    // With times, only a newer one applies.
    let timed = ingest_one(s, incident("B", Some(10.0), "t1", &jira)).await;
    assert_eq!(timed.status, IngestStatus::Accepted);
    let older = ingest_one(s, incident("B", Some(9.0), "t0", &jira)).await;
    assert_eq!(older.status, IngestStatus::Duplicate);
    let newer = ingest_one(s, incident("B", Some(11.0), "t2", &jira)).await;
    assert_eq!(newer.status, IngestStatus::Updated);
    let view = s.incident("A".into()).await.unwrap().unwrap();
    assert_eq!(view.versions, 2);
    assert_eq!(view.incident["v"], "v2");
}

async fn an_update_waits_for_its_created_and_goes_once_it_is_delivered(backend: Backend) {
    let h = Harness::open(backend, 1).await;
    let s = h.store();
    let created = ingest_one(s, incident("A", None, "a", &[route("jira", "k")])).await;
    let updated = ingest_one(s, incident("B", None, "b", &[route("jira", "k")])).await;
    let other = ingest_one(s, incident("C", None, "c", &[route("jira", "other")])).await;
    assert_eq!(updated.deliveries[0].event, Event::Updated);
    let first = s.lease_due(10, LEASE, vec![]).await.unwrap();
    assert_eq!(
        ids(&first),
        [
            created.deliveries[0].id.as_str(),
            other.deliveries[0].id.as_str()
        ]
    );
    // The update waits while its created is pending.
    assert!(s.lease_due(10, LEASE, vec![]).await.unwrap().is_empty());
    let waiting = s
        .delivery(updated.deliveries[0].id.clone())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        waiting.waiting_for.as_deref(),
        Some(created.deliveries[0].id.as_str())
    );
    assert!(finish(s, &first[0], NextStep::Delivered).await);
    let next = s.lease_due(10, LEASE, vec![]).await.unwrap();
    assert_eq!(ids(&next), [updated.deliveries[0].id.as_str()]);
    assert_eq!(next[0].event, Event::Updated);
    assert_eq!(next[0].ticket.key, "k");
    // A busy connector is skipped.
    let d = ingest_one(s, incident("D", None, "d", &[route("chat", "k")])).await;
    assert!(
        s.lease_due(10, LEASE, vec!["chat".into()])
            .await
            .unwrap()
            .is_empty()
    );
    let chat = s.lease_due(10, LEASE, vec![]).await.unwrap();
    assert_eq!(ids(&chat), [d.deliveries[0].id.as_str()]);
}

async fn a_lease_fences_its_attempt_and_a_retry_waits_until_it_is_due(backend: Backend) {
    let h = Harness::open(backend, 1).await;
    let s = h.store();
    ingest_one(s, incident("A", None, "a", &[route("jira", "k")])).await;
    // A lease that has run out (0 ms) is due again, to someone else.
    let first = s.lease_due(1, 0, vec![]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let second = s.lease_due(1, LEASE, vec![]).await.unwrap();
    assert_eq!(ids(&second), ids(&first));
    assert_ne!(first[0].lease_token, second[0].lease_token);
    // The first holder lost it: its attempt is discarded.
    assert!(!finish(s, &first[0], NextStep::Delivered).await);
    let later = now_ms() + 60_000;
    assert!(finish(s, &second[0], NextStep::RetryAt { at_ms: later }).await);
    assert!(s.lease_due(1, LEASE, vec![]).await.unwrap().is_empty());
    assert_eq!(s.next_due_ms(vec![]).await.unwrap(), Some(later));
    assert_eq!(s.next_due_ms(vec!["jira".into()]).await.unwrap(), None);
    let view = s.delivery(second[0].id.clone()).await.unwrap().unwrap();
    assert_eq!(view.status, "pending");
    assert_eq!(view.attempt_count, 1);
    assert_eq!(view.last_error.as_deref(), Some("HTTP 200"));
}

async fn a_dead_created_holds_its_line_until_replayed_or_resolved(backend: Backend) {
    let h = Harness::open(backend, 1).await;
    let s = h.store();
    let a = ingest_one(s, incident("A", None, "a", &[route("jira", "k")])).await;
    let b = ingest_one(s, incident("B", None, "b", &[route("jira", "k")])).await;
    let leased = s.lease_due(10, LEASE, vec![]).await.unwrap();
    assert!(
        finish(
            s,
            &leased[0],
            NextStep::Dead {
                reason: "gone".into()
            }
        )
        .await
    );
    // The dead created still holds the ticket's line.
    assert!(s.lease_due(10, LEASE, vec![]).await.unwrap().is_empty());
    let dead = s
        .deliveries(DeliveryFilter {
            status: Some("dead".into()),
            connector: None,
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].last_error.as_deref(), Some("gone"));
    assert_eq!(s.dead_counts().await.unwrap(), [("jira".to_string(), 1)]);
    let depths = s.queue_depths().await.unwrap();
    assert_eq!(depths.len(), 1);
    assert_eq!(
        (depths[0].connector.as_str(), depths[0].pending),
        ("jira", 1)
    );
    // Replayed, it goes again, first in its line.
    assert_eq!(
        s.replay(a.deliveries[0].id.clone()).await.unwrap(),
        ReplayOutcome::Replayed
    );
    assert!(matches!(
        s.replay(a.deliveries[0].id.clone()).await.unwrap(),
        ReplayOutcome::NotDead(_)
    ));
    assert_eq!(
        s.replay("msg_none".into()).await.unwrap(),
        ReplayOutcome::NotFound
    );
    let again = s.lease_due(10, LEASE, vec![]).await.unwrap();
    assert_eq!(ids(&again), [a.deliveries[0].id.as_str()]);
    assert!(
        finish(
            s,
            &again[0],
            NextStep::Dead {
                reason: "still gone".into()
            }
        )
        .await
    );
    // Resolved with the ticket's id, the line moves on and the update carries the id.
    assert!(matches!(
        s.resolve(b.deliveries[0].id.clone(), "X-1".into(), None)
            .await
            .unwrap(),
        ResolveOutcome::NotApplicable(_)
    ));
    assert_eq!(
        s.resolve(
            a.deliveries[0].id.clone(),
            "X-1".into(),
            Some("https://x/1".into())
        )
        .await
        .unwrap(),
        ResolveOutcome::Resolved
    );
    let update = s.lease_due(10, LEASE, vec![]).await.unwrap();
    assert_eq!(ids(&update), [b.deliveries[0].id.as_str()]);
    assert_eq!(update[0].ticket.id.as_deref(), Some("X-1"));
    assert_eq!(update[0].ticket.url.as_deref(), Some("https://x/1"));
}

async fn completion_closes_tickets_queues_completed_and_happens_once(backend: Backend) {
    let h = Harness::open(backend, 1).await;
    let s = h.store();
    let a = ingest_one(s, incident("A", None, "a", &[route("jira", "k")])).await;
    let leased = s.lease_due(10, LEASE, vec![]).await.unwrap();
    assert!(opened_as(s, &leased[0], "J-7").await);
    // Another source does not have the incident; its connector's target does.
    let by = |caller: Caller| s.complete(completing("A", caller, &[], &["upstream"]));
    assert!(matches!(
        by(Caller::Source("other".into())).await.unwrap(),
        CompleteOutcome::NotFound
    ));
    let CompleteOutcome::Completed {
        new, deliveries, ..
    } = by(Caller::Source("src".into())).await.unwrap()
    else {
        panic!("not completed");
    };
    assert_eq!(new["reason_code"], "FALSE_POSITIVE");
    let to: HashSet<_> = deliveries.iter().map(|d| d.connector.as_str()).collect();
    assert_eq!(to, HashSet::from(["jira", "upstream"]));
    assert!(matches!(
        by(Caller::Connector("jira".into())).await.unwrap(),
        CompleteOutcome::AlreadyCompleted { .. }
    ));
    let completed = s.lease_due(10, LEASE, vec![]).await.unwrap();
    assert_eq!(completed.len(), 2);
    let jira = completed.iter().find(|d| d.connector == "jira").unwrap();
    assert_eq!(jira.event, Event::Completed);
    assert_eq!(jira.ticket.id.as_deref(), Some("J-7"));
    assert_eq!(
        jira.completion.as_ref().map(|c| c.reason_code.as_str()),
        Some("FALSE_POSITIVE")
    );
    // A new incident with the key opens a new ticket; a new version of A queues nothing.
    let c = ingest_one(s, incident("C", None, "c", &[route("jira", "k")])).await;
    assert_eq!(c.deliveries[0].event, Event::Created);
    let a2 = ingest_one(s, incident("A", None, "a2", &[route("jira", "k")])).await;
    assert_eq!(a2.status, IngestStatus::Updated);
    assert!(a2.deliveries.is_empty());
    let view = s.incident("A".into()).await.unwrap().unwrap();
    assert_eq!(view.status, "completed");
    assert_eq!(view.connectors["jira"].tickets[0].status, "completed");
    assert_eq!(a.deliveries.len(), 1);
    // A connector's target completes what it has a ticket for; its ticket closes and it
    // hears nothing back (it closed it), the upstream connector does.
    let CompleteOutcome::Completed { deliveries, .. } = s
        .complete(completing(
            "C",
            Caller::Connector("jira".into()),
            &[],
            &["upstream"],
        ))
        .await
        .unwrap()
    else {
        panic!("the target's completion was refused");
    };
    let to: Vec<_> = deliveries.iter().map(|d| d.connector.as_str()).collect();
    assert_eq!(to, ["upstream"]);
    let view = s.incident("C".into()).await.unwrap().unwrap();
    assert_eq!(view.connectors["jira"].tickets[0].status, "completed");
}

async fn a_webhook_id_is_claimed_once(backend: Backend) {
    let h = Harness::open(backend, 1).await;
    let s = h.store();
    let claim = |source: &str, id: &str| {
        s.ingest(
            source.into(),
            Some("evt_1".into()),
            vec![incident(id, None, id, &[])],
        )
    };
    assert!(matches!(
        claim("src", "A").await.unwrap(),
        Ingested::Stored(_)
    ));
    assert!(matches!(claim("src", "B").await.unwrap(), Ingested::Replay));
    assert!(matches!(
        claim("other", "C").await.unwrap(),
        Ingested::Stored(_)
    ));
    assert!(s.incident("B".into()).await.unwrap().is_none());
    let seen = |sources: &[&str]| {
        s.webhook_id_seen(
            sources.iter().map(|x| x.to_string()).collect(),
            "evt_1".into(),
        )
    };
    assert!(seen(&["src"]).await.unwrap());
    assert!(seen(&["src", "other"]).await.unwrap());
    assert!(!seen(&["src", "nobody"]).await.unwrap());
    assert!(!seen(&[]).await.unwrap());
}

async fn released_and_extended_leases(backend: Backend) {
    let h = Harness::open(backend, 1).await;
    let s = h.store();
    ingest_one(s, incident("A", None, "a", &[route("jira", "k")])).await;
    let held = s.lease_due(1, LEASE, vec![]).await.unwrap();
    assert!(
        s.extend_lease(held[0].id.clone(), held[0].lease_token.clone(), LEASE)
            .await
            .unwrap()
    );
    assert!(
        !s.extend_lease(held[0].id.clone(), "not-the-token".into(), LEASE)
            .await
            .unwrap()
    );
    s.release(vec![(held[0].id.clone(), held[0].lease_token.clone())])
        .await
        .unwrap();
    let back = s.lease_due(1, LEASE, vec![]).await.unwrap();
    assert_eq!(ids(&back), ids(&held));
    assert_eq!(back[0].attempts, 0);
}

async fn the_admin_views_show_tickets_deliveries_and_attempts(backend: Backend) {
    let h = Harness::open(backend, 1).await;
    let s = h.store();
    let mut windowed = route("jira", "host-1");
    windowed.aggregate_for_ms = Some(60_000);
    let a = ingest_one(s, incident("A", None, "a", &[windowed.clone()])).await;
    ingest_one(s, incident("B", None, "b", &[windowed])).await;
    let leased = s.lease_due(1, LEASE, vec![]).await.unwrap();
    assert!(
        finish(
            s,
            &leased[0],
            NextStep::RetryAt {
                at_ms: now_ms() + 60_000
            }
        )
        .await
    );
    let view = s.incident("A".into()).await.unwrap().unwrap();
    assert_eq!(view.source, "src");
    assert_eq!(view.status, "open");
    assert_eq!(view.incident["incidentId"], "A");
    let side = &view.connectors["jira"];
    assert_eq!(side.tickets.len(), 1);
    assert_eq!(side.tickets[0].correlation_key, "host-1");
    assert_eq!(side.tickets[0].incidents, 2);
    assert!(side.tickets[0].aggregates_until.is_some());
    assert_eq!(side.deliveries[0].id, a.deliveries[0].id);
    let attempts = side.deliveries[0].attempts.as_ref().unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].status_code, Some(200));
    assert_eq!(attempts[0].outcome, "retry");
    assert!(s.incident("Z".into()).await.unwrap().is_none());
    assert!(s.delivery("msg_none".into()).await.unwrap().is_none());
    let all = s
        .deliveries(DeliveryFilter {
            status: None,
            connector: Some("jira".into()),
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 2);
    s.ready().await.unwrap();
}

/// Every instance posts the same new incident at once (as a detection platform retrying
/// through a load balancer would): one is accepted, the rest are duplicates, one delivery.
async fn the_same_incident_posted_at_once_everywhere_is_stored_once(backend: Backend) {
    let h = Harness::open(backend, 3).await;
    let mut posts = Vec::new();
    for i in 0..12 {
        let store = h.stores[i % h.stores.len()].clone();
        posts.push(tokio::spawn(async move {
            ingest_one(&store, incident("SAME", None, "v1", &[route("jira", "k")])).await
        }));
    }
    let mut accepted = 0;
    let mut deliveries = 0;
    for p in posts {
        let outcome = p.await.unwrap();
        accepted += usize::from(outcome.status == IngestStatus::Accepted);
        deliveries += outcome.deliveries.len();
    }
    assert_eq!((accepted, deliveries), (1, 1));
    let view = h.store().incident("SAME".into()).await.unwrap().unwrap();
    assert_eq!(view.versions, 1);
    assert_eq!(view.connectors["jira"].deliveries.len(), 1);
}

/// 200 incidents over 10 correlation keys, posted concurrently through three instances:
/// exactly 10 tickets, each with one `created`.
async fn incidents_sharing_keys_posted_at_once_everywhere_open_one_ticket_per_key(
    backend: Backend,
) {
    let h = Harness::open(backend, 3).await;
    let mut posts = Vec::new();
    for i in 0..200 {
        let store = h.stores[i % h.stores.len()].clone();
        posts.push(tokio::spawn(async move {
            let key = format!("key-{}", i % 10);
            ingest_one(
                &store,
                incident(&format!("I-{i}"), None, "x", &[route("jira", &key)]),
            )
            .await
        }));
    }
    let mut created = 0;
    for p in posts {
        let outcome = p.await.unwrap();
        assert_eq!(outcome.status, IngestStatus::Accepted);
        created += outcome
            .deliveries
            .iter()
            .filter(|d| d.event == Event::Created)
            .count();
    }
    assert_eq!(created, 10);
    if let Some(pg) = &h.pg {
        assert_eq!(pg.query_i64("SELECT COUNT(*) FROM tickets"), 10);
        assert_eq!(pg.query_i64("SELECT COUNT(*) FROM ticket_incidents"), 200);
    }
}

/// Instances leasing at the same time never take the same delivery, and never two of one
/// ticket's line.
async fn a_delivery_is_leased_by_one_instance_at_a_time(backend: Backend) {
    let h = Harness::open(backend, 3).await;
    for i in 0..60 {
        let key = format!("key-{}", i % 20);
        ingest_one(
            h.store(),
            incident(&format!("I-{i}"), None, "x", &[route("jira", &key)]),
        )
        .await;
    }
    let mut leases = Vec::new();
    for store in h.stores.clone() {
        leases.push(tokio::spawn(async move {
            store.lease_due(100, LEASE, vec![]).await.unwrap()
        }));
    }
    let mut taken = Vec::new();
    for l in leases {
        taken.extend(l.await.unwrap());
    }
    // Only each line's head (its created) can go: 20, each once.
    let distinct: HashSet<_> = taken.iter().map(|d| d.id.clone()).collect();
    assert_eq!(distinct.len(), taken.len(), "a delivery was leased twice");
    assert_eq!(taken.len(), 20);
    assert!(taken.iter().all(|d| d.event == Event::Created));
}
