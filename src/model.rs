//! The vocabulary every stage speaks: the events a delivery reports, what is known of a
//! ticket and of a completion, threat ratings, the states of a delivery and the outcomes of an
//! attempt, and the clock. It imports nothing from the crate, so any module may use it
//! without tying itself to another stage.

use serde_json::Value;

/// The event a delivery reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Event {
    Created,
    Updated,
    Completed,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Created => "created",
            Event::Updated => "updated",
            Event::Completed => "completed",
        }
    }

    pub fn parse(text: &str) -> Option<Event> {
        match text {
            "created" => Some(Event::Created),
            "updated" => Some(Event::Updated),
            "completed" => Some(Event::Completed),
            _ => None,
        }
    }
}

/// What the gateway knows of a ticket: its correlation key, and once the `created` request
/// succeeded, the id (and link) the target gave it.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TicketFacts {
    pub key: String,
    pub id: Option<String>,
    pub url: Option<String>,
    /// This delivery reopens the ticket (it had closed within the connector's
    /// `reopen_within`): the target is asked to reopen it as it hears of the incident.
    pub reopened: bool,
}

/// What completing one incident of a ticket does to the ticket: a connector's `close_ticket`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClosePolicy {
    /// Close it (send `completed`); its other incidents are left on a closed ticket, and
    /// their next versions open (or reopen) one.
    AtOnce,
    /// Close it when the last of its incidents is completed; until then each completion is a
    /// note on it (an `updated` that carries the completion).
    #[default]
    WhenAllComplete,
    /// Never close it from here: each completion is a note on it.
    Never,
}

impl ClosePolicy {
    pub fn parse(text: &str) -> Option<ClosePolicy> {
        match text {
            "at_once" => Some(ClosePolicy::AtOnce),
            "when_all_complete" => Some(ClosePolicy::WhenAllComplete),
            "never" => Some(ClosePolicy::Never),
            _ => None,
        }
    }
}

/// Why a delivery was queued, beside its event: plainly for its event, as a note that one
/// incident of a ticket left open was completed, or to reopen a ticket closed recently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Purpose {
    #[default]
    Event,
    CompletionNote,
    Reopen,
}

impl Purpose {
    /// As stored (`NULL` for a plain event).
    pub fn as_stored(self) -> Option<&'static str> {
        match self {
            Purpose::Event => None,
            Purpose::CompletionNote => Some("completion_note"),
            Purpose::Reopen => Some("reopen"),
        }
    }

    pub fn from_stored(text: Option<&str>) -> Purpose {
        match text {
            Some("completion_note") => Purpose::CompletionNote,
            Some("reopen") => Purpose::Reopen,
            _ => Purpose::Event,
        }
    }
}

/// The back channel's record of a completion (seed 000's `new` status object).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Completion {
    pub reason_code: String,
    pub notes: Option<String>,
    pub status_change_time: String,
}

/// Threat ratings in order, as the seed lists them (case differs between fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ThreatRating {
    Info = 0,
    Low = 1,
    Medium = 2,
    High = 3,
    Critical = 4,
}

impl ThreatRating {
    pub fn parse(text: &str) -> Option<ThreatRating> {
        match text.trim().to_ascii_lowercase().as_str() {
            "info" => Some(ThreatRating::Info),
            "low" => Some(ThreatRating::Low),
            "medium" => Some(ThreatRating::Medium),
            "high" => Some(ThreatRating::High),
            "critical" => Some(ThreatRating::Critical),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ThreatRating::Info => "info",
            ThreatRating::Low => "low",
            ThreatRating::Medium => "medium",
            ThreatRating::High => "high",
            ThreatRating::Critical => "critical",
        }
    }

    /// The incident's rating after analysis, falling back to the flattened field and then to
    /// the initial rating.
    pub fn of_incident(incident: &Value) -> Option<ThreatRating> {
        [
            "/incident/threatRating",
            "/incident_threat_rating",
            "/defaultThreatRating",
        ]
        .iter()
        .find_map(|p| {
            incident
                .pointer(p)
                .and_then(Value::as_str)
                .and_then(Self::parse)
        })
    }
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Due now or later, or held by a worker's lease.
    Pending,
    Delivered,
    /// Given up on: waits for a replay (or a resolve).
    Dead,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Dead => "dead",
        }
    }

    pub fn parse(text: &str) -> Option<DeliveryStatus> {
        match text {
            "pending" => Some(DeliveryStatus::Pending),
            "delivered" => Some(DeliveryStatus::Delivered),
            "dead" => Some(DeliveryStatus::Dead),
            _ => None,
        }
    }
}

/// What one attempt ended in, as its record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttemptOutcome {
    Delivered,
    /// Failed; another attempt is scheduled.
    Retry,
    Dead,
}

impl AttemptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Delivered => "delivered",
            AttemptOutcome::Retry => "retry",
            AttemptOutcome::Dead => "dead",
        }
    }
}

/// How far a signed request's timestamp may be from now (the Standard Webhooks default).
pub const SIGNATURE_TOLERANCE: std::time::Duration = std::time::Duration::from_secs(300);

/// How long a `webhook-id` stays claimed: twice the tolerance (a timestamp that far ahead of
/// the clock stays acceptable that long), and 2 s more, since timestamps are whole seconds.
pub const REPLAY_WINDOW: std::time::Duration = std::time::Duration::from_secs(2 * 300 + 2);

/// The rest after a piece of background work that started at `started`: `least`, or three
/// times as long as the work took, whichever is longer. Background work paced so holds what it
/// shares (the store's writer) a quarter of the time at most, however slow the disk.
pub fn rest_after(started: std::time::Instant, least: std::time::Duration) -> std::time::Duration {
    least.max(started.elapsed() * 3)
}

/// The clock: milliseconds since the Unix epoch, as the store keeps times (due times,
/// leases, SLA deadlines). It follows the wall clock, except that it never steps back: when
/// the wall clock jumps backwards (an NTP step, an admin's `date`), it runs on at half speed
/// (by the monotonic clock) until the wall clock catches up. A retry due in 2 s is then sent
/// within about 4 s, rather than an hour late after a one-hour step back; times stay in order.
/// A jump forward is followed at once (what was due later is due now: sent early, not lost).
pub fn now_ms() -> i64 {
    let wall_us = chrono::Utc::now().timestamp_micros();
    let mono = std::time::Instant::now();
    let Ok(mut last) = CLOCK.lock() else {
        return wall_us / 1000;
    };
    let us = match *last {
        None => wall_us,
        Some((then, then_us)) => {
            let elapsed = i64::try_from(mono.duration_since(then).as_micros()).unwrap_or(i64::MAX);
            if wall_us >= then_us.saturating_add(elapsed) {
                wall_us
            } else {
                // Behind: the wall clock stepped back. Slew, never below it.
                then_us
                    .saturating_add(elapsed / 2)
                    .max(wall_us)
                    .max(then_us)
            }
        }
    };
    *last = Some((mono, us));
    us / 1000
}

/// The clock's last reading: the monotonic instant and the microseconds it gave then.
static CLOCK: std::sync::Mutex<Option<(std::time::Instant, i64)>> = std::sync::Mutex::new(None);

/// The source the gateway's own incidents (its alerts, SLA alerts) are stored under.
pub const GATEWAY_SOURCE: &str = "incident-gateway";

/// How the gateway's own incidents' ids begin; no source may post one.
pub const GATEWAY_ID_PREFIX: &str = "igw-";

/// A duration in whole milliseconds, as the store counts time (saturating).
pub fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// SHA-256 of an incident's stored text, lower-case hex: tells a repeat from a change.
pub fn body_hash(body: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(body.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for e in [Event::Created, Event::Updated, Event::Completed] {
            assert_eq!(Event::parse(e.as_str()), Some(e));
        }
        for s in [
            DeliveryStatus::Pending,
            DeliveryStatus::Delivered,
            DeliveryStatus::Dead,
        ] {
            assert_eq!(DeliveryStatus::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert_eq!(ThreatRating::parse(" HIGH "), Some(ThreatRating::High));
        assert!(ThreatRating::Critical > ThreatRating::Info);
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert!(REPLAY_WINDOW > SIGNATURE_TOLERANCE * 2);
    }
}
