//! Record: what an attempt leaves behind — the ticket id a `created` response named, the
//! attempt record (secrets masked, response cut to a prefix) and the log line. The store
//! commits the record under the delivery's lease.

use crate::connector::Connector;
use crate::model::{self, AttemptOutcome, Event};
use crate::secrets::Secrets;
use crate::store::{AttemptRecord, LeasedDelivery, NextStep, TicketUpdate};
use crate::ticket;

use super::http::{self, SendResult, Verdict};

/// After a successful `created`, the id the target gave the ticket. A 2xx without it is
/// dead (retrying could open a second ticket).
pub fn found_ticket(
    connector: &Connector,
    delivery: &LeasedDelivery,
    verdict: Verdict,
    sent: &SendResult,
) -> (Verdict, Option<TicketUpdate>) {
    if verdict != Verdict::Delivered || delivery.event != Event::Created {
        return (verdict, None);
    }
    let (Some(ticket_seq), Some(status)) = (delivery.ticket_seq, sent.status) else {
        return (verdict, None);
    };
    let body = sent.response_prefix.as_deref().unwrap_or("");
    match ticket::ticket_from_response(connector, status, body) {
        Ok(None) => (verdict, None),
        Ok(Some((id, url))) => (
            verdict,
            Some(TicketUpdate {
                ticket_seq,
                id,
                url,
            }),
        ),
        Err(missing) => (
            Verdict::Dead {
                reason: missing.to_string(),
            },
            None,
        ),
    }
}

/// The attempt as the store keeps it. Every text that can quote a receiver (errors, the
/// response prefix) is masked: a receiver may echo a secret back.
pub fn attempt_record(
    secrets: &Secrets,
    attempt: u32,
    started_at_ms: i64,
    now_ms: i64,
    sent: Option<&SendResult>,
    next: &NextStep,
) -> AttemptRecord {
    let (outcome, dead_reason) = match next {
        NextStep::Delivered => (AttemptOutcome::Delivered, None),
        NextStep::RetryAt { .. } => (AttemptOutcome::Retry, None),
        NextStep::Dead { reason } => (AttemptOutcome::Dead, Some(reason.clone())),
    };
    // Nothing sent: the reason it was not is the attempt's error.
    let error = match sent {
        Some(s) => s.failure.as_ref().map(ToString::to_string),
        None => dead_reason,
    };
    AttemptRecord {
        attempt,
        started_at_ms,
        latency_ms: sent
            .map(|s| s.latency.as_millis() as i64)
            .unwrap_or(now_ms - started_at_ms),
        status_code: sent.and_then(|s| s.status),
        error: error.map(|e| secrets.mask(&e)),
        response_body: sent
            .and_then(|s| s.response_prefix.as_deref())
            .map(|b| http::utf8_prefix(&secrets.mask(b), http::RESPONSE_PREFIX_BYTES)),
        outcome,
        lookup: None,
        outcome_unknown: false,
    }
}

/// One line per attempt: info when delivered, warn on a retry, error when dead.
pub fn log_attempt(delivery: &LeasedDelivery, record: &AttemptRecord, next: &NextStep) {
    match next {
        NextStep::Delivered => tracing::info!(
            delivery = %delivery.id, incident = %delivery.incident_id, connector = %delivery.connector,
            attempt = record.attempt, status = ?record.status_code, latency_ms = record.latency_ms,
            "delivered"
        ),
        NextStep::RetryAt { at_ms } => tracing::warn!(
            delivery = %delivery.id, incident = %delivery.incident_id, connector = %delivery.connector,
            attempt = record.attempt, status = ?record.status_code, error = ?record.error,
            retry_at = %model::rfc3339(*at_ms), "attempt failed; will retry"
        ),
        NextStep::Dead { reason } => tracing::error!(
            delivery = %delivery.id, incident = %delivery.incident_id, connector = %delivery.connector,
            attempt = record.attempt, status = ?record.status_code, reason = %reason,
            "delivery is dead"
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::deliver::http::SendFailure;

    const SECRET: &str = "hunter2-is-not-a-good-secret";

    fn sent(status: Option<u16>, failure: Option<SendFailure>, body: Option<&str>) -> SendResult {
        SendResult {
            status,
            retry_after: None,
            response_prefix: body.map(str::to_string),
            failure,
            latency: Duration::from_millis(42),
        }
    }

    #[test]
    fn a_record_masks_what_the_receiver_echoed_and_keeps_a_prefix() {
        let secrets = Secrets::new([SECRET.to_string()]);
        let long = format!("echo {SECRET} {}", "x".repeat(10_000));
        let s = sent(
            Some(503),
            Some(SendFailure::Network(format!("reset after {SECRET}"))),
            Some(&long),
        );
        let next = NextStep::RetryAt { at_ms: 5 };
        let r = attempt_record(&secrets, 3, 1_000, 2_000, Some(&s), &next);
        assert_eq!(r.attempt, 3);
        assert_eq!(r.latency_ms, 42);
        assert_eq!(r.status_code, Some(503));
        assert_eq!(r.outcome, AttemptOutcome::Retry);
        let error = r.error.unwrap();
        assert!(
            !error.contains(SECRET) && error.starts_with("reset after"),
            "{error}"
        );
        let body = r.response_body.unwrap();
        assert!(!body.contains(SECRET), "{body}");
        assert!(body.len() <= http::RESPONSE_PREFIX_BYTES);
    }

    #[test]
    fn an_attempt_that_sent_nothing_records_why_and_the_time_it_took() {
        let secrets = Secrets::new([SECRET.to_string()]);
        let next = NextStep::Dead {
            reason: format!("render failed: {SECRET}"),
        };
        let r = attempt_record(&secrets, 1, 1_000, 1_250, None, &next);
        assert_eq!(r.outcome, AttemptOutcome::Dead);
        assert_eq!(r.latency_ms, 250);
        assert_eq!(r.status_code, None);
        let error = r.error.unwrap();
        assert!(error.starts_with("render failed: ") && !error.contains(SECRET));
    }
}
