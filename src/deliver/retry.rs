//! When to try again: a pure function of the policy, the attempt count and the clock.

use std::time::Duration;

use crate::config::RetryPolicy;

/// Exponential backoff with "equal jitter": half the delay is fixed, half random, so retries
/// of many deliveries spread out yet none comes back sooner than half its step.
///
/// `attempts_in_budget` counts attempts made since the delivery was queued or last replayed
/// (1 after the first failure). `random` is in `[0, 1)`.
pub fn backoff(policy: &RetryPolicy, attempts_in_budget: u32, random: f64) -> Duration {
    let exponent = attempts_in_budget.saturating_sub(1).min(30);
    let step = policy
        .initial_backoff
        .saturating_mul(1u32 << exponent)
        .min(policy.max_backoff);
    let half = step / 2;
    half + half.mul_f64(random.clamp(0.0, 1.0))
}

/// The time (ms) of the next attempt, or `None` when the delivery has used its budget.
///
/// A `Retry-After` from the receiver replaces the computed delay (it knows when it will be
/// ready; at least `initial_backoff`), but never extends a delivery past its maximum age.
pub fn next_attempt_ms(
    policy: &RetryPolicy,
    attempts_in_budget: u32,
    budget_since_ms: i64,
    now_ms: i64,
    retry_after: Option<Duration>,
    random: f64,
) -> Option<i64> {
    if attempts_in_budget >= policy.max_attempts {
        return None;
    }
    // A Retry-After of 0 would spend every attempt at once: never sooner than the first step.
    let delay = retry_after
        .map(|d| d.max(policy.initial_backoff))
        .unwrap_or_else(|| backoff(policy, attempts_in_budget, random));
    let at = now_ms.saturating_add(delay.as_millis().min(i64::MAX as u128) as i64);
    let deadline =
        budget_since_ms.saturating_add(policy.max_age.as_millis().min(i64::MAX as u128) as i64);
    (at <= deadline).then_some(at)
}

/// Parses `Retry-After`: delay-seconds or an HTTP date. A date in the past means "now".
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(30),
            max_age: Duration::from_secs(3600),
        }
    }

    #[test]
    fn doubles_with_jitter_and_caps() {
        let p = policy();
        assert_eq!(backoff(&p, 1, 0.0), Duration::from_secs(1));
        assert_eq!(backoff(&p, 1, 1.0), Duration::from_secs(2));
        assert_eq!(backoff(&p, 2, 1.0), Duration::from_secs(4));
        assert_eq!(backoff(&p, 3, 0.5), Duration::from_secs(6));
        assert_eq!(backoff(&p, 10, 1.0), Duration::from_secs(30));
        assert_eq!(backoff(&p, 200, 1.0), Duration::from_secs(30));
    }

    #[test]
    fn gives_up_after_max_attempts_or_max_age() {
        let p = policy();
        assert_eq!(next_attempt_ms(&p, 1, 0, 1_000, None, 1.0), Some(3_000));
        assert_eq!(next_attempt_ms(&p, 5, 0, 1_000, None, 1.0), None);
        // Due after the max age (3600 s) → dead.
        assert_eq!(next_attempt_ms(&p, 4, 0, 3_590_000, None, 1.0), None);
        assert_eq!(
            next_attempt_ms(&p, 4, 0, 3_500_000, None, 0.0),
            Some(3_508_000)
        );
    }

    #[test]
    fn retry_after_replaces_backoff() {
        let p = policy();
        assert_eq!(
            next_attempt_ms(&p, 1, 0, 1_000, Some(Duration::from_secs(7)), 1.0),
            Some(8_000)
        );
        assert_eq!(
            next_attempt_ms(&p, 1, 0, 1_000, Some(Duration::from_secs(7200)), 1.0),
            None
        );
        // Retry-After: 0 waits the first backoff step (2 s) rather than none.
        assert_eq!(
            next_attempt_ms(&p, 1, 0, 1_000, Some(Duration::ZERO), 1.0),
            Some(3_000)
        );
    }

    #[test]
    fn parses_both_retry_after_forms() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        let date = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(parse_retry_after(&date, now), Some(Duration::from_secs(30)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
