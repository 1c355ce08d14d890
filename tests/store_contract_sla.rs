//! SLA clocks' store contract, on both backends (SQLite in a real file, PostgreSQL in a
//! database of the test's own), through the store's interface alone: a new ticket starts its
//! route's clocks (an incident that joins or reopens a ticket starts none); a delivered or
//! resolved `created` and a closing ticket nudge them; a save applies only at the revision it
//! read, with its alerts queued in the same transaction; the watchdog's and the admin API's
//! reads; and retention deleting a ticket's clocks with it.

mod common;

use common::contract::{Backend, Harness, attempt};
use incident_gateway::model::{AttemptOutcome, ClosePolicy, Event, now_ms};
use incident_gateway::sla::{Clock, Level, SlaStart};
use incident_gateway::store::{
    Caller, CompleteOutcome, Completing, Ingested, LeasedDelivery, NewIncident, NextStep,
    PurgeRequest, ResolveOutcome, Route, SlaClockRow, SlaListing, SlaSave, Store, TicketUpdate,
};

const LEASE: i64 = 30_000;

crate::contract!(
    a_new_ticket_starts_its_routes_clocks_and_a_joining_incident_none,
    a_delivered_created_notes_when_once_and_nudges_the_clocks,
    a_resolved_created_notes_when_and_nudges_the_clocks,
    a_closing_ticket_shows_its_close_and_nudges_its_clocks,
    a_save_applies_at_its_revision_with_its_alerts_and_a_stale_one_not_at_all,
    due_clocks_come_earliest_first_within_the_limit,
    the_list_filters_and_pages_newest_first,
    retention_deletes_a_tickets_clocks_with_it,
);

/// A policy with both clocks (take-over in a minute, completion in ten), or those given.
fn sla(take_over_ms: Option<i64>, complete_ms: Option<i64>) -> SlaStart {
    SlaStart {
        policy: "gold".into(),
        take_over_ms,
        complete_ms,
        warn_before_ms: 10_000,
    }
}

fn route(connector: &str, key: &str, sla: Option<SlaStart>) -> Route {
    Route {
        connector: connector.into(),
        key: key.into(),
        aggregate_for_ms: None,
        sends_updated: true,
        reopen_within_ms: None,
        collect_for_ms: None,
        sla,
    }
}

fn both(connector: &str, key: &str) -> Route {
    route(connector, key, Some(sla(Some(60_000), Some(600_000))))
}

fn incident(id: &str, account_id: Option<i64>, routes: &[Route]) -> NewIncident {
    NewIncident {
        account_id,
        incident_id: id.into(),
        update_time: None,
        body: format!(r#"{{"incidentId":"{id}"}}"#),
        body_hash: format!("hash-{id}"),
        routes: routes.to_vec(),
    }
}

async fn ingest(s: &Store, inc: NewIncident) {
    match s.ingest("src".into(), None, vec![inc]).await.unwrap() {
        Ingested::Stored(_) => {}
        Ingested::Replay => panic!("no webhook id was given"),
    }
}

/// The clocks of the one ticket `incident_id` is on.
async fn clocks_of(s: &Store, incident_id: &str) -> Vec<SlaClockRow> {
    s.sla_of_incident(incident_id.into()).await.unwrap()
}

fn clock(row: &SlaClockRow) -> Clock {
    serde_json::from_str(&row.clock).unwrap()
}

/// A save of `row` as read, moved on by `change`, due at `next_check_ms`, with `alerts`.
fn save_of(
    row: &SlaClockRow,
    next_check_ms: Option<i64>,
    change: impl FnOnce(&mut Clock),
    alerts: Vec<NewIncident>,
) -> SlaSave {
    let mut c = clock(row);
    change(&mut c);
    SlaSave {
        clock_id: row.clock_id,
        revision: row.revision,
        clock: serde_json::to_string(&c).unwrap(),
        next_check_ms,
        state: c.state().into(),
        breached: c.breached,
        alerts,
    }
}

/// Saves every clock of `incident_id`'s ticket unchanged but for its next check (far away),
/// so that a nudge shows.
async fn park(s: &Store, incident_id: &str) {
    let saves = clocks_of(s, incident_id)
        .await
        .iter()
        .map(|r| save_of(r, Some(i64::MAX / 2), |_| {}, vec![]))
        .collect::<Vec<_>>();
    let n = saves.len();
    assert_eq!(s.sla_save(saves).await.unwrap(), vec![true; n]);
}

/// Records the attempt of `d` ending in `next` (a delivered `created` opens ticket "T-1").
async fn record(s: &Store, d: &LeasedDelivery, token: &str, next: NextStep) -> bool {
    let outcome = match next {
        NextStep::Delivered => AttemptOutcome::Delivered,
        NextStep::RetryAt { .. } => AttemptOutcome::Retry,
        NextStep::Dead { .. } => AttemptOutcome::Dead,
    };
    let opened = (d.event == Event::Created && next == NextStep::Delivered).then(|| TicketUpdate {
        ticket_seq: d.ticket_seq.unwrap(),
        id: "T-1".into(),
        url: None,
    });
    let attempt = attempt(d.attempts + 1, outcome);
    s.record_attempt(d.id.clone(), token.into(), attempt, next, opened)
        .await
        .unwrap()
}

/// Leases what is due and delivers it; what was leased.
async fn deliver_due(s: &Store) -> Vec<LeasedDelivery> {
    let leased = s.lease_due(100, LEASE, vec![]).await.unwrap();
    for d in &leased {
        assert!(record(s, d, &d.lease_token, NextStep::Delivered).await);
    }
    leased
}

fn completing(id: &str) -> Completing {
    Completing {
        incident_id: id.into(),
        caller: Caller::Source("src".into()),
        reason_code: "RESOLVED".into(),
        notes: None,
        skipping: vec![],
        upstream: vec![],
        close_policies: [("jira".to_string(), ClosePolicy::AtOnce)]
            .into_iter()
            .collect(),
        takes_notes: vec![],
        completes_all: false,
    }
}

/// Between `from` and now.
fn since(from: i64, at: Option<i64>) -> bool {
    at.is_some_and(|at| at >= from && at <= now_ms())
}

/// A route with an SLA opens a ticket with one clock per allowance, running, due at once,
/// kept with the opening incident and its account; an incident joining the ticket, a ticket
/// reopened, and a route without an SLA start none. A collection window's ticket starts its
/// clocks as any other.
async fn a_new_ticket_starts_its_routes_clocks_and_a_joining_incident_none(backend: Backend) {
    let h = Harness::open(backend).await;
    let s = &h.store;
    let before = now_ms();
    ingest(s, incident("A", Some(7), &[both("jira", "k")])).await;
    let a = clocks_of(s, "A").await;
    let levels: Vec<Level> = a.iter().map(|r| r.level).collect();
    assert_eq!(levels, [Level::TakeOver, Level::Complete]);
    for r in &a {
        assert_eq!(r.ticket_seq, a[0].ticket_seq);
        assert_eq!(
            (r.policy.as_str(), r.revision, r.incident_id.as_str()),
            ("gold", 0, "A")
        );
        assert_eq!(r.account_id, Some(7));
        assert_eq!(
            (r.connector.as_str(), r.correlation_key.as_str()),
            ("jira", "k")
        );
        assert_eq!((r.ticket_id.as_deref(), r.closed_ms), (None, None));
        assert_eq!(r.created_ok_ms, None);
        assert!(since(before, r.next_check_ms), "{r:?}");
        assert!(since(before, Some(r.opened_ms)), "{r:?}");
        let c = clock(r);
        assert_eq!(
            (c.level, c.state(), c.breached),
            (r.level, "running", false)
        );
        assert!(since(before, Some(c.started_ms)));
    }
    assert_eq!(clock(&a[0]).allowed_ms, 60_000);
    assert_eq!(clock(&a[1]).allowed_ms, 600_000);
    // Stored running and not breached, as lists filter them.
    let running = s
        .sla_list(SlaListing {
            state: Some("running".into()),
            breached: Some(false),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(running.len(), 2);

    // B joins A's ticket: it sees the ticket's clocks, and starts none.
    ingest(s, incident("B", Some(7), &[both("jira", "k")])).await;
    assert_eq!(clocks_of(s, "B").await, a);
    assert_eq!(s.sla_of_ticket(a[0].ticket_seq).await.unwrap(), a);

    // One allowance, one clock; no SLA, none.
    ingest(
        s,
        incident(
            "C",
            None,
            &[route("jira", "c", Some(sla(None, Some(1_000))))],
        ),
    )
    .await;
    let c = clocks_of(s, "C").await;
    assert_eq!(c.len(), 1);
    assert_eq!((c[0].level, c[0].account_id), (Level::Complete, None));
    ingest(s, incident("D", None, &[route("jira", "d", None)])).await;
    assert!(clocks_of(s, "D").await.is_empty());

    // A collection window's ticket has its clocks; an incident joining the window, none.
    let collecting = Route {
        collect_for_ms: Some(60_000),
        ..both("redmine", "w")
    };
    ingest(s, incident("W1", None, std::slice::from_ref(&collecting))).await;
    ingest(s, incident("W2", None, std::slice::from_ref(&collecting))).await;
    let w = clocks_of(s, "W1").await;
    assert_eq!(w.len(), 2);
    assert_eq!(clocks_of(s, "W2").await, w);

    // E's ticket closes; F, within reopen_within, reopens it and starts nothing.
    let reopening = Route {
        reopen_within_ms: Some(3_600_000),
        ..both("jira", "e")
    };
    ingest(s, incident("E", None, std::slice::from_ref(&reopening))).await;
    assert!(matches!(
        s.complete(completing("E")).await.unwrap(),
        CompleteOutcome::Completed { .. }
    ));
    ingest(s, incident("F", None, std::slice::from_ref(&reopening))).await;
    let e = clocks_of(s, "E").await;
    assert_eq!(e.len(), 2);
    assert_eq!(clocks_of(s, "F").await, e);
    let all = s
        .sla_list(SlaListing {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 2 + 1 + 2 + 2);
}

/// The ticket's `created` delivered: its clocks learn when (the first time only) and are due
/// at once. A retry, a stale lease's record, and a delivered `updated` change nothing.
async fn a_delivered_created_notes_when_once_and_nudges_the_clocks(backend: Backend) {
    let h = Harness::open(backend).await;
    let s = &h.store;
    ingest(s, incident("A", None, &[both("jira", "k")])).await;
    park(s, "A").await;
    let parked = clocks_of(s, "A").await;

    let leased = s.lease_due(10, LEASE, vec![]).await.unwrap();
    assert_eq!(leased.len(), 1);
    let created = &leased[0];
    assert!(!record(s, created, "not-the-token", NextStep::Delivered).await);
    assert!(
        record(
            s,
            created,
            &created.lease_token,
            NextStep::RetryAt { at_ms: now_ms() }
        )
        .await
    );
    assert_eq!(clocks_of(s, "A").await, parked, "nothing until delivered");

    let again = s.lease_due(10, LEASE, vec![]).await.unwrap();
    assert_eq!(again.len(), 1);
    let before = now_ms();
    assert!(record(s, &again[0], &again[0].lease_token, NextStep::Delivered).await);
    let delivered = clocks_of(s, "A").await;
    for (r, p) in delivered.iter().zip(&parked) {
        assert!(since(before, r.created_ok_ms), "{r:?}");
        assert_eq!(r.next_check_ms, r.created_ok_ms, "due at once");
        assert!(r.revision > p.revision, "a nudge moves the revision on");
        assert_eq!(r.ticket_id.as_deref(), Some("T-1"));
        assert_eq!(r.clock, p.clock);
    }

    // Parked again: a later incident's `updated`, delivered, nudges nothing, and the time
    // the `created` went stays.
    park(s, "A").await;
    let parked = clocks_of(s, "A").await;
    ingest(s, incident("B", None, &[both("jira", "k")])).await;
    let updates = deliver_due(s).await;
    assert_eq!(updates.len(), 1);
    assert_eq!(updates[0].event, Event::Updated);
    assert_eq!(clocks_of(s, "A").await, parked);
}

/// An admin resolving the dead `created` (it did open the ticket) counts as its delivery.
async fn a_resolved_created_notes_when_and_nudges_the_clocks(backend: Backend) {
    let h = Harness::open(backend).await;
    let s = &h.store;
    ingest(s, incident("A", None, &[both("jira", "k")])).await;
    park(s, "A").await;
    let leased = s.lease_due(10, LEASE, vec![]).await.unwrap();
    let dead = NextStep::Dead {
        reason: "timed out".into(),
    };
    assert!(record(s, &leased[0], &leased[0].lease_token, dead).await);
    assert!(
        clocks_of(s, "A")
            .await
            .iter()
            .all(|r| r.created_ok_ms.is_none())
    );
    let before = now_ms();
    assert_eq!(
        s.resolve(leased[0].id.clone(), "T-9".into(), None)
            .await
            .unwrap(),
        ResolveOutcome::Resolved
    );
    for r in clocks_of(s, "A").await {
        assert!(since(before, r.created_ok_ms), "{r:?}");
        assert_eq!(r.next_check_ms, r.created_ok_ms);
        assert_eq!(r.ticket_id.as_deref(), Some("T-9"));
    }
}

/// A completion that closes the ticket: its clocks show the close and are due at once; a
/// ticket left open (another incident still on it) is not nudged. Reopened, the ticket shows
/// no close any more.
async fn a_closing_ticket_shows_its_close_and_nudges_its_clocks(backend: Backend) {
    let h = Harness::open(backend).await;
    let s = &h.store;
    let r = Route {
        reopen_within_ms: Some(3_600_000),
        ..both("redmine", "k")
    };
    ingest(s, incident("A", None, std::slice::from_ref(&r))).await;
    ingest(s, incident("B", None, std::slice::from_ref(&r))).await;
    park(s, "A").await;
    let parked = clocks_of(s, "A").await;
    // redmine closes when all its incidents are complete (the default): A alone leaves it
    // open.
    assert!(matches!(
        s.complete(completing("A")).await.unwrap(),
        CompleteOutcome::Completed { .. }
    ));
    assert_eq!(clocks_of(s, "A").await, parked);

    let before = now_ms();
    assert!(matches!(
        s.complete(completing("B")).await.unwrap(),
        CompleteOutcome::Completed { .. }
    ));
    let closed = clocks_of(s, "A").await;
    for (c, p) in closed.iter().zip(&parked) {
        assert!(since(before, c.closed_ms), "{c:?}");
        assert_eq!(c.next_check_ms, c.closed_ms, "due at once");
        assert!(c.revision > p.revision);
    }

    ingest(s, incident("C", None, std::slice::from_ref(&r))).await;
    let reopened = clocks_of(s, "C").await;
    assert_eq!(reopened.len(), 2);
    assert!(
        reopened.iter().all(|c| c.closed_ms.is_none()),
        "{reopened:?}"
    );
}

/// A save at the revision read applies — the clock, its next check, state and breach — and
/// queues its alert, the gateway's own incident, in the same transaction; a save at an old
/// revision applies nothing, its alert included, while the other saves of its call apply.
async fn a_save_applies_at_its_revision_with_its_alerts_and_a_stale_one_not_at_all(
    backend: Backend,
) {
    let h = Harness::open(backend).await;
    let s = &h.store;
    ingest(s, incident("A", None, &[both("jira", "k")])).await;
    let created = deliver_due(s).await;
    assert_eq!(created.len(), 1);
    let read = clocks_of(s, "A").await;
    let (take_over, complete) = (&read[0], &read[1]);
    let alert = |id: &str| incident(id, None, &[route("chat", id, None)]);

    let breach = save_of(
        take_over,
        None,
        |c| {
            c.warned = true;
            c.breached = true;
        },
        vec![alert("SLA-1")],
    );
    assert_eq!(s.sla_save(vec![breach.clone()]).await.unwrap(), [true]);
    let saved = &clocks_of(s, "A").await[0];
    assert_eq!(saved.revision, take_over.revision + 1);
    assert_eq!(saved.clock, breach.clock);
    assert_eq!(saved.next_check_ms, None);
    let breached = s
        .sla_list(SlaListing {
            breached: Some(true),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        breached.iter().map(|r| r.clock_id).collect::<Vec<_>>(),
        [take_over.clock_id]
    );
    let alerted = s.incident("SLA-1".into()).await.unwrap().expect("stored");
    assert_eq!(alerted.source, incident_gateway::alert::SOURCE);
    let queued = s.lease_due(10, LEASE, vec![]).await.unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(
        (queued[0].incident_id.as_str(), queued[0].connector.as_str()),
        ("SLA-1", "chat")
    );

    // The same revision again (another watchdog read it too): nothing, not even its alert;
    // the fresh save beside it applies.
    let stale = save_of(
        take_over,
        Some(5),
        |c| c.warned = true,
        vec![alert("SLA-2")],
    );
    let met = save_of(complete, None, |c| c.met_ms = Some(now_ms()), vec![]);
    assert_eq!(
        s.sla_save(vec![stale, met.clone()]).await.unwrap(),
        [false, true]
    );
    let after = clocks_of(s, "A").await;
    assert_eq!(&after[0], saved);
    assert_eq!(
        (after[1].revision, &after[1].clock),
        (complete.revision + 1, &met.clock)
    );
    assert!(s.incident("SLA-2".into()).await.unwrap().is_none());
    assert!(s.lease_due(10, LEASE, vec![]).await.unwrap().is_empty());
    let listed = s
        .sla_list(SlaListing {
            state: Some("met".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        listed.iter().map(|r| r.clock_id).collect::<Vec<_>>(),
        [complete.clock_id]
    );
}

/// The watchdog's questions: the clocks due, earliest first, at most as many as asked; and
/// when the next falls due (clocks without a next check never).
async fn due_clocks_come_earliest_first_within_the_limit(backend: Backend) {
    let h = Harness::open(backend).await;
    let s = &h.store;
    assert_eq!(s.sla_next_check().await.unwrap(), None);
    assert!(s.sla_due(i64::MAX, 10).await.unwrap().is_empty());
    let one = route("jira", "", Some(sla(Some(60_000), None)));
    let mut saves = Vec::new();
    for (id, at) in [
        ("A", Some(300)),
        ("B", Some(100)),
        ("C", None),
        ("D", Some(200)),
    ] {
        ingest(
            s,
            incident(
                id,
                None,
                &[Route {
                    key: id.into(),
                    ..one.clone()
                }],
            ),
        )
        .await;
        let row = &clocks_of(s, id).await[0];
        saves.push(save_of(row, at, |_| {}, vec![]));
    }
    assert_eq!(s.sla_save(saves).await.unwrap(), [true; 4]);
    let due = |now, limit| async move {
        s.sla_due(now, limit)
            .await
            .unwrap()
            .iter()
            .map(|r| r.incident_id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(due(250, 10).await, ["B", "D"]);
    assert_eq!(due(300, 10).await, ["B", "D", "A"]);
    assert_eq!(due(i64::MAX, 2).await, ["B", "D"]);
    assert!(due(99, 10).await.is_empty());
    assert_eq!(s.sla_next_check().await.unwrap(), Some(100));
}

/// `GET /v1/sla`: newest clock first; by accounts (none: nothing), connector, state and
/// breach, each alone and together; pages by the last clock's id without a gap or a repeat.
async fn the_list_filters_and_pages_newest_first(backend: Backend) {
    let h = Harness::open(backend).await;
    let s = &h.store;
    // Tickets 1..=6: jira, redmine alternately; accounts 1, 2, none in turn.
    for i in 1..=6 {
        let connector = if i % 2 == 1 { "jira" } else { "redmine" };
        let account = [Some(1), Some(2), None][(i - 1) % 3];
        let id = format!("I{i}");
        ingest(s, incident(&id, account, &[both(connector, &id)])).await;
    }
    let list = |listing: SlaListing| async move {
        s.sla_list(SlaListing {
            limit: if listing.limit == 0 {
                100
            } else {
                listing.limit
            },
            ..listing
        })
        .await
        .unwrap()
    };
    let all = list(SlaListing::default()).await;
    assert_eq!(all.len(), 12);
    let ids: Vec<i64> = all.iter().map(|r| r.clock_id).collect();
    let mut newest_first = ids.clone();
    newest_first.sort_by(|a, b| b.cmp(a));
    assert_eq!(ids, newest_first);
    assert_eq!(all[0].incident_id, "I6");

    // I1's take-over clock met, I4's breached.
    let i1 = clocks_of(s, "I1").await;
    let i4 = clocks_of(s, "I4").await;
    let saves = vec![
        save_of(&i1[0], None, |c| c.met_ms = Some(1), vec![]),
        save_of(&i4[0], None, |c| c.breached = true, vec![]),
    ];
    assert_eq!(s.sla_save(saves).await.unwrap(), [true, true]);

    let incidents = |rows: Vec<SlaClockRow>| {
        let mut ids: Vec<String> = rows.into_iter().map(|r| r.incident_id).collect();
        ids.dedup();
        ids
    };
    let accounts = |a: Vec<i64>| SlaListing {
        accounts: Some(a),
        ..Default::default()
    };
    assert_eq!(incidents(list(accounts(vec![1])).await), ["I4", "I1"]);
    assert_eq!(
        incidents(list(accounts(vec![1, 2])).await),
        ["I5", "I4", "I2", "I1"]
    );
    assert!(list(accounts(vec![])).await.is_empty());
    let jira = SlaListing {
        connector: Some("jira".into()),
        ..Default::default()
    };
    assert_eq!(incidents(list(jira.clone()).await), ["I5", "I3", "I1"]);
    let met = list(SlaListing {
        state: Some("met".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(
        met.iter().map(|r| r.clock_id).collect::<Vec<_>>(),
        [i1[0].clock_id]
    );
    let breached = list(SlaListing {
        breached: Some(true),
        ..Default::default()
    })
    .await;
    assert_eq!(
        breached.iter().map(|r| r.clock_id).collect::<Vec<_>>(),
        [i4[0].clock_id]
    );
    assert_eq!(
        list(SlaListing {
            breached: Some(false),
            ..Default::default()
        })
        .await
        .len(),
        11
    );
    let together = list(SlaListing {
        accounts: Some(vec![1]),
        connector: Some("jira".into()),
        state: Some("running".into()),
        breached: Some(false),
        ..Default::default()
    })
    .await;
    assert_eq!(
        together.iter().map(|r| r.clock_id).collect::<Vec<_>>(),
        [i1[1].clock_id]
    );

    // Pages of 5 by the last id: the whole list, in order, once (in three pages; a key that
    // did not move on would page forever).
    let mut paged = Vec::new();
    let mut before = None;
    for _ in 0..4 {
        let page = list(SlaListing {
            before_clock_id: before,
            limit: 5,
            ..Default::default()
        })
        .await;
        assert!(page.len() <= 5);
        let Some(last) = page.last() else { break };
        before = Some(last.clock_id);
        paged.extend(page.iter().map(|r| r.clock_id));
    }
    assert_eq!(paged, ids);
    // A filtered page starts after its key too.
    let jira_after = list(SlaListing {
        before_clock_id: Some(i1[1].clock_id + 1),
        ..jira
    })
    .await;
    assert_eq!(
        jira_after.iter().map(|r| r.clock_id).collect::<Vec<_>>(),
        [i1[1].clock_id, i1[0].clock_id]
    );
}

/// Retention deleting a closed ticket deletes its clocks (counted in the rows it deleted);
/// an open ticket's clocks stay.
async fn retention_deletes_a_tickets_clocks_with_it(backend: Backend) {
    let h = Harness::open(backend).await;
    let s = &h.store;
    ingest(s, incident("A", None, &[both("jira", "a")])).await;
    ingest(s, incident("B", None, &[both("jira", "b")])).await;
    deliver_due(s).await;
    let a = clocks_of(s, "A").await;
    let b = clocks_of(s, "B").await;
    assert!(matches!(
        s.complete(completing("A")).await.unwrap(),
        CompleteOutcome::Completed { .. }
    ));
    assert_eq!(deliver_due(s).await.len(), 1, "A's completed");
    let far = now_ms() + 3_600_000;
    let purged = s
        .purge(PurgeRequest {
            delivered_before_ms: far,
            dead_before_ms: Some(far),
            tickets_closed_before_ms: far,
            batch: 100,
            after: None,
        })
        .await
        .unwrap();
    assert_eq!(purged.incidents, 1);
    // A, its version, two deliveries and their attempts, its ticket link and ticket, and the
    // ticket's two clocks.
    assert_eq!(purged.rows, 1 + 1 + 2 + 2 + 1 + 1 + 2);
    assert!(s.sla_of_ticket(a[0].ticket_seq).await.unwrap().is_empty());
    assert_eq!(s.sla_of_ticket(b[0].ticket_seq).await.unwrap(), b);
    let left = s
        .sla_list(SlaListing {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(left, b.iter().rev().cloned().collect::<Vec<_>>());
}
