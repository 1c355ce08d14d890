//! The store's rules, whatever the backend: the duplicate rule, a delivery's line, where an
//! attempt leaves a delivery, the aggregation window, who hears of a completion, what can be
//! resolved, and the reasons the store writes on a delivery. Pure functions, so SQLite and
//! PostgreSQL decide alike and each rule is tested once.

use crate::model::{ClosePolicy, DeliveryStatus, Event, Purpose, REPLAY_WINDOW, rfc3339};
use crate::store::{AttemptRecord, Completing, IngestStatus, NewIncident, NextStep, StoreError};

/// Why a delivery went dead at a lease: its row cannot be read by this version.
pub const UNREADABLE_DELIVERY: &str =
    "stored delivery is unreadable (missing incident version or unknown event)";

/// Why a tracked connector's `created` went dead after its sender stopped mid-attempt.
pub const INTERRUPTED_CREATED: &str = "interrupted: the gateway stopped while this created request was being sent, so the target may already have opened the ticket. Look there, then POST /v1/deliveries/{id}/resolve with its ticket_id, or replay to send it again (a connector with a [connectors.lookup] settles this itself)";

/// What a resolved `created` shows as its last error.
pub const RESOLVED_BY_ADMIN: &str = "resolved by an admin: the ticket exists in the target";

/// The replay window, in ms.
pub fn replay_window_ms() -> i64 {
    i64::try_from(REPLAY_WINDOW.as_millis()).unwrap_or(i64::MAX)
}

/// What the store holds of an incident, to judge a new version by.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredIncident {
    pub account_id: Option<i64>,
    pub update_time: Option<f64>,
    pub body_hash: String,
    pub status: String,
}

impl StoredIncident {
    /// Completion through the back channel is final: a later version is kept (the admin API
    /// shows it) but opens and updates no ticket.
    pub fn completed(&self) -> bool {
        self.status == "completed"
    }
}

/// An incident's account is fixed when it is first stored: a version for another account
/// (or with none, for one that had one) is refused, so no source — bound to a tenant or not —
/// can move an incident into or out of a tenant's view.
pub fn same_account(
    stored: Option<&StoredIncident>,
    inc: &NewIncident,
    index: usize,
) -> Result<(), StoreError> {
    match stored {
        Some(s) if s.account_id != inc.account_id => Err(StoreError::ForeignAccount {
            index,
            incident_id: inc.incident_id.clone(),
        }),
        _ => Ok(()),
    }
}

/// The duplicate rule: whether `inc` is a new incident, a newer version of `stored`, or
/// nothing new. `seen_before` is asked only when arrival order must decide (no `updateTime`
/// on either side, and a body other than the stored one); it is a flag the caller looked up
/// or a closure, so an async backend can ask it lazily too ([`needs_history`]).
pub fn version_status(
    stored: Option<&StoredIncident>,
    inc: &NewIncident,
    seen_before: impl FnOnce() -> Result<bool, StoreError>,
) -> Result<IngestStatus, StoreError> {
    let Some(stored) = stored else {
        return Ok(IngestStatus::Accepted);
    };
    Ok(match (stored.update_time, inc.update_time) {
        // A version replaces the stored one only when it says it is newer.
        (Some(old), Some(new)) if new > old => IngestStatus::Updated,
        (Some(_), Some(_)) => IngestStatus::Duplicate,
        // Without a time it cannot show it is newer than one with a time: never applied, so a
        // captured or delayed old version cannot roll the incident back.
        (Some(_), None) => IngestStatus::Duplicate,
        // The first time given is newer than none.
        (None, Some(_)) => IngestStatus::Updated,
        // Without updateTime on both sides, arrival order decides: a change is an update,
        // unless it is a version seen before (a late retry of an older one).
        (None, None) if stored.body_hash == inc.body_hash => IngestStatus::Duplicate,
        (None, None) if seen_before()? => IngestStatus::Duplicate,
        (None, None) => IngestStatus::Updated,
    })
}

/// Whether [`version_status`] will ask for the incident's history.
pub fn needs_history(stored: Option<&StoredIncident>, inc: &NewIncident) -> bool {
    stored.is_some_and(|s| {
        s.update_time.is_none() && inc.update_time.is_none() && s.body_hash != inc.body_hash
    })
}

/// The line a delivery waits in: deliveries of one ticket share an order key and go one at a
/// time, in the order they were queued; without a ticket, the incident orders them.
pub fn order_key(incident_id: &str, ticket_seq: Option<i64>) -> String {
    match ticket_seq {
        Some(seq) => format!("ticket:{seq}"),
        None => format!("incident:{incident_id}"),
    }
}

/// Where an attempt leaves its delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub status: DeliveryStatus,
    /// When it is due again (0 once it is no longer pending).
    pub next_attempt_ms: i64,
    /// What the admin sees as the delivery's last error.
    pub last_error: Option<String>,
}

/// The delivery's state after an attempt that ended in `next`: a retry keeps the attempt's
/// error (or its HTTP status), a dead delivery the reason it was given up on.
pub fn transition(record: &AttemptRecord, next: &NextStep) -> Transition {
    match next {
        NextStep::Delivered => Transition {
            status: DeliveryStatus::Delivered,
            next_attempt_ms: 0,
            last_error: None,
        },
        NextStep::RetryAt { at_ms } => Transition {
            status: DeliveryStatus::Pending,
            next_attempt_ms: *at_ms,
            last_error: record
                .error
                .clone()
                .or_else(|| record.status_code.map(|c| format!("HTTP {c}"))),
        },
        NextStep::Dead { reason } => Transition {
            status: DeliveryStatus::Dead,
            next_attempt_ms: 0,
            last_error: Some(reason.clone()),
        },
    }
}

/// Until when a ticket opened at `now` takes more incidents: `None` (no aggregation window)
/// means until it is completed.
pub fn window_until(now: i64, aggregate_for_ms: Option<i64>) -> Option<i64> {
    aggregate_for_ms.map(|ms| now.saturating_add(ms))
}

/// The most incidents of a collection a delivery carries to its templates (`collected`);
/// `collected_count` says how many there were in all. Bounds what one render holds, however
/// long a window stays open (a paused connector's stays open until it is leased).
pub const COLLECTED_SHOWN: i64 = 100;

/// When the delivery that opens a collection window at `now` falls due.
pub fn collection_due(now: i64, collect_for_ms: i64) -> i64 {
    now.saturating_add(collect_for_ms.max(0))
}

/// The ticket an incident joined for one connector, and the event that tells its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attached {
    pub ticket_seq: i64,
    /// `created` for a ticket's first delivery, `updated` for every later one.
    pub event: Event,
    /// Why: plainly, or to reopen a ticket that had closed.
    pub purpose: Purpose,
}

/// The earliest close a ticket may have to be reopened at `now`, by the route's
/// `reopen_within`; `None`: the route never reopens.
pub fn reopens_closed_since(now: i64, reopen_within_ms: Option<i64>) -> Option<i64> {
    reopen_within_ms.map(|ms| now.saturating_sub(ms))
}

/// Whether completing one incident of a ticket closes it, by its connector's policy and how
/// many of its other incidents are still open.
pub fn closes_ticket(policy: ClosePolicy, others_open: i64) -> bool {
    match policy {
        ClosePolicy::AtOnce => true,
        ClosePolicy::WhenAllComplete => others_open == 0,
        ClosePolicy::Never => false,
    }
}

/// An open ticket an incident is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenTicket {
    pub ticket_seq: i64,
    pub connector: String,
}

/// A delivery one completion queues: to a connector, on the ticket it concerns (none for an
/// upstream connector, which hears of the incident itself), for an event and a purpose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletionNews {
    pub connector: String,
    pub ticket_seq: Option<i64>,
    pub event: Event,
    pub purpose: Purpose,
}

/// What one incident's completion does to each of its open tickets (`others_open`: how many
/// other incidents each still has open), and who hears of it. Returns the tickets that close
/// and the deliveries to queue:
/// - the caller's own tickets close (its target closed them) and it hears nothing back;
/// - a ticket its connector's `close_ticket` closes gets `completed`, unless the connector
///   sends no `completed`;
/// - a ticket left open gets a note (`updated`, carrying the completion) from a connector that
///   sends `updated`;
/// - every upstream connector (not skipped) hears of the incident.
pub fn completion_news(
    tickets: &[OpenTicket],
    others_open: &[i64],
    request: &Completing,
) -> (Vec<i64>, Vec<CompletionNews>) {
    let caller = match &request.caller {
        crate::store::Caller::Connector(name) => Some(name.as_str()),
        crate::store::Caller::Source(_) => None,
    };
    let mut closing = Vec::new();
    let mut news = Vec::new();
    for (t, others) in tickets.iter().zip(others_open) {
        let policy = request
            .close_policies
            .get(&t.connector)
            .copied()
            .unwrap_or_default();
        if caller == Some(t.connector.as_str()) {
            closing.push(t.ticket_seq);
        } else if closes_ticket(policy, *others) {
            closing.push(t.ticket_seq);
            if !request.skipping.contains(&t.connector) {
                news.push(CompletionNews {
                    connector: t.connector.clone(),
                    ticket_seq: Some(t.ticket_seq),
                    event: Event::Completed,
                    purpose: Purpose::Event,
                });
            }
        } else if request.takes_notes.contains(&t.connector) {
            news.push(CompletionNews {
                connector: t.connector.clone(),
                ticket_seq: Some(t.ticket_seq),
                event: Event::Updated,
                purpose: Purpose::CompletionNote,
            });
        }
    }
    for u in &request.upstream {
        if !request.skipping.contains(u) {
            news.push(CompletionNews {
                connector: u.clone(),
                ticket_seq: None,
                event: Event::Completed,
                purpose: Purpose::Event,
            });
        }
    }
    (closing, news)
}

/// A completion's `old` (seed 000): the incident as it was.
pub fn completion_old(status_change_ms: i64) -> serde_json::Value {
    serde_json::json!({
        "status": "open",
        "status_change_time": rfc3339(status_change_ms),
    })
}

/// A completion's `new` (seed 000): the incident as `request` left it at `now`.
pub fn completion_new(request: &Completing, now: i64) -> serde_json::Value {
    serde_json::json!({
        "notes": request.notes,
        "reason_code": request.reason_code,
        "status": "completed",
        "status_change_time": rfc3339(now),
    })
}

/// The ticket a resolve names the id of: only a dead `created` can be resolved (it is the one
/// whose ticket may exist in the target without the gateway knowing its id).
pub fn resolvable_ticket(status: &str, event: &str, ticket_seq: Option<i64>) -> Option<i64> {
    ticket_seq.filter(|_| status == "dead" && event == "created")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::AttemptOutcome;

    fn incident(update_time: Option<f64>, hash: &str) -> NewIncident {
        NewIncident {
            account_id: None,
            incident_id: "A".into(),
            update_time,
            body: "{}".into(),
            body_hash: hash.into(),
            routes: vec![],
        }
    }

    #[test]
    fn the_duplicate_rule_asks_history_only_when_arrival_order_decides() {
        let stored = |t: Option<f64>| StoredIncident {
            account_id: None,
            update_time: t,
            body_hash: "h1".into(),
            status: "open".into(),
        };
        let never = || -> Result<bool, StoreError> { panic!("history asked") };
        let status = |s: Option<&StoredIncident>, n: &NewIncident, seen: bool| {
            version_status(s, n, || Ok(seen)).unwrap()
        };
        let new = incident;
        assert_eq!(
            version_status(None, &new(None, "h1"), never).unwrap(),
            IngestStatus::Accepted
        );
        assert_eq!(
            version_status(Some(&stored(None)), &new(None, "h1"), never).unwrap(),
            IngestStatus::Duplicate
        );
        assert_eq!(
            status(Some(&stored(None)), &new(None, "h2"), true),
            IngestStatus::Duplicate
        );
        assert_eq!(
            status(Some(&stored(None)), &new(None, "h2"), false),
            IngestStatus::Updated
        );
        assert_eq!(
            version_status(Some(&stored(None)), &new(Some(1.0), "h1"), never).unwrap(),
            IngestStatus::Updated
        );
        assert_eq!(
            version_status(Some(&stored(Some(2.0))), &new(Some(1.0), "h2"), never).unwrap(),
            IngestStatus::Duplicate
        );
        // needs_history says exactly when the rule asks.
        for (s, n) in [
            (None, new(None, "h2")),
            (Some(stored(None)), new(None, "h1")),
            (Some(stored(None)), new(None, "h2")),
            (Some(stored(None)), new(Some(1.0), "h2")),
            (Some(stored(Some(1.0))), new(None, "h2")),
        ] {
            let mut asked = false;
            version_status(s.as_ref(), &n, || {
                asked = true;
                Ok(false)
            })
            .unwrap();
            assert_eq!(needs_history(s.as_ref(), &n), asked, "{s:?} {n:?}");
        }
    }

    #[test]
    fn order_keys_are_per_ticket_else_per_incident() {
        assert_eq!(order_key("A", Some(7)), "ticket:7");
        assert_eq!(order_key("A", None), "incident:A");
    }

    #[test]
    fn an_attempt_moves_its_delivery_as_its_next_step_says() {
        let mut r = AttemptRecord {
            attempt: 1,
            started_at_ms: 0,
            latency_ms: 5,
            status_code: Some(500),
            error: None,
            response_body: None,
            outcome: AttemptOutcome::Retry,
            lookup: None,
            outcome_unknown: false,
        };
        assert_eq!(
            transition(&r, &NextStep::RetryAt { at_ms: 7 }),
            Transition {
                status: DeliveryStatus::Pending,
                next_attempt_ms: 7,
                last_error: Some("HTTP 500".into())
            }
        );
        r.error = Some("connection refused".into());
        assert_eq!(
            transition(&r, &NextStep::RetryAt { at_ms: 7 })
                .last_error
                .as_deref(),
            Some("connection refused")
        );
        assert_eq!(
            transition(
                &r,
                &NextStep::Dead {
                    reason: "gone".into()
                }
            ),
            Transition {
                status: DeliveryStatus::Dead,
                next_attempt_ms: 0,
                last_error: Some("gone".into())
            }
        );
        assert_eq!(
            transition(&r, &NextStep::Delivered).status,
            DeliveryStatus::Delivered
        );
    }

    #[test]
    fn the_window_is_counted_from_the_ticket_opening() {
        assert_eq!(window_until(1_000, Some(500)), Some(1_500));
        assert_eq!(window_until(1_000, None), None);
        assert_eq!(window_until(i64::MAX - 1, Some(10)), Some(i64::MAX));
    }

    #[test]
    fn each_ticket_hears_of_a_completion_by_its_connectors_policy() {
        let ticket = |seq, connector: &str| OpenTicket {
            ticket_seq: seq,
            connector: connector.into(),
        };
        let tickets = [
            ticket(1, "jira"),
            ticket(2, "chat"),
            ticket(3, "redmine"),
            ticket(4, "snow"),
            ticket(5, "rt"),
        ];
        let request = Completing {
            incident_id: "A".into(),
            caller: crate::store::Caller::Connector("rt".into()),
            reason_code: "other".into(),
            notes: None,
            skipping: vec!["chat".into(), "rt".into()],
            upstream: vec!["up".into()],
            close_policies: [
                ("redmine".to_string(), ClosePolicy::Never),
                ("snow".to_string(), ClosePolicy::AtOnce),
            ]
            .into_iter()
            .collect(),
            takes_notes: vec!["redmine".into(), "jira".into()],
            completes_all: false,
        };
        let news = |connector: &str, seq: Option<i64>, event, purpose| CompletionNews {
            connector: connector.into(),
            ticket_seq: seq,
            event,
            purpose,
        };
        // jira (when_all_complete) has 2 other open incidents: a note; chat closes silently
        // (it sends no `completed`); redmine never closes: a note; snow closes at once; rt
        // called: its ticket closes, nothing goes back to it.
        let (closing, queued) = completion_news(&tickets, &[2, 0, 0, 4, 1], &request);
        assert_eq!(closing, [2, 4, 5]);
        assert_eq!(
            queued,
            [
                news("jira", Some(1), Event::Updated, Purpose::CompletionNote),
                news("redmine", Some(3), Event::Updated, Purpose::CompletionNote),
                news("snow", Some(4), Event::Completed, Purpose::Event),
                news("up", None, Event::Completed, Purpose::Event),
            ]
        );
        // The last open incident of jira's ticket closes it.
        let (closing, queued) = completion_news(&tickets[..1], &[0], &request);
        assert_eq!(closing, [1]);
        assert_eq!(
            queued[0],
            news("jira", Some(1), Event::Completed, Purpose::Event)
        );
    }

    #[test]
    fn a_ticket_reopens_only_within_its_window() {
        assert_eq!(reopens_closed_since(10_000, Some(3_000)), Some(7_000));
        assert_eq!(reopens_closed_since(10_000, None), None);
    }

    #[test]
    fn only_a_dead_created_names_a_ticket_to_resolve() {
        assert_eq!(resolvable_ticket("dead", "created", Some(3)), Some(3));
        assert_eq!(resolvable_ticket("pending", "created", Some(3)), None);
        assert_eq!(resolvable_ticket("dead", "updated", Some(3)), None);
        assert_eq!(resolvable_ticket("dead", "created", None), None);
    }
}
