//! When to try again: a pure function of the policy, the attempt count and the clock.

use std::time::Duration;

use crate::connector::RetryPolicy;
use crate::store::{LeasedDelivery, NextStep};

use super::http::Verdict;

/// The wait after the `attempts_in_budget`-th failed attempt (1 after the first failure), or
/// `None` once the schedule is used up. Each step is shortened by up to a fifth at random
/// ("jitter"), so the retries of many deliveries that failed together spread out, yet none
/// comes back much sooner than its step. `random` is in `[0, 1)`.
pub fn backoff(policy: &RetryPolicy, attempts_in_budget: u32, random: f64) -> Option<Duration> {
    let step = *policy
        .schedule
        .get(attempts_in_budget.checked_sub(1)? as usize)?;
    Some(step.mul_f64(1.0 - 0.2 * random.clamp(0.0, 1.0)))
}

/// The time (ms) of the next attempt, or `None` when the delivery has used its budget.
///
/// A `Retry-After` from the receiver can only lengthen the wait: the schedule still spans
/// its day when a receiver in maintenance asks for a minute each time. Nothing extends a
/// delivery past its maximum age.
pub fn next_attempt_ms(
    policy: &RetryPolicy,
    attempts_in_budget: u32,
    budget_since_ms: i64,
    now_ms: i64,
    retry_after: Option<Duration>,
    random: f64,
) -> Option<i64> {
    let step = backoff(policy, attempts_in_budget, random)?;
    let delay = retry_after.map_or(step, |asked| asked.max(step));
    let at = now_ms.saturating_add(delay.as_millis().min(i64::MAX as u128) as i64);
    let deadline =
        budget_since_ms.saturating_add(policy.max_age.as_millis().min(i64::MAX as u128) as i64);
    (at <= deadline).then_some(at)
}

/// Schedule: the delivery's next step after an attempt that ended in `verdict` — delivered,
/// dead, or a retry at a time within the policy's schedule and maximum age.
pub fn schedule(
    policy: &RetryPolicy,
    delivery: &LeasedDelivery,
    verdict: Verdict,
    now_ms: i64,
    random: f64,
) -> NextStep {
    match verdict {
        Verdict::Delivered => NextStep::Delivered,
        Verdict::Dead { reason } => NextStep::Dead { reason },
        Verdict::Retry { retry_after } => {
            let attempts_in_budget =
                delivery.attempts + 1 - delivery.budget_attempts.min(delivery.attempts);
            match next_attempt_ms(
                policy,
                attempts_in_budget,
                delivery.budget_since_ms,
                now_ms,
                retry_after,
                random,
            ) {
                Some(at_ms) => NextStep::RetryAt { at_ms },
                None if attempts_in_budget >= policy.max_attempts() => NextStep::Dead {
                    reason: format!(
                        "gave up after {} attempts: the retry schedule is used up",
                        delivery.attempts + 1,
                    ),
                },
                None => NextStep::Dead {
                    reason: format!(
                        "gave up after {} attempts: the next would come after retry.max_age ({}) since the delivery was queued or replayed",
                        delivery.attempts + 1,
                        humantime::format_duration(policy.max_age)
                    ),
                },
            }
        }
    }
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
            schedule: RetryPolicy::exponential(Duration::from_secs(2), Duration::from_secs(30), 5),
            max_age: Duration::from_secs(3600),
        }
    }

    #[test]
    fn follows_the_schedule_with_jitter() {
        let p = policy();
        assert_eq!(p.schedule.len(), 4);
        assert_eq!(p.max_attempts(), 5);
        assert_eq!(backoff(&p, 1, 0.0), Some(Duration::from_secs(2)));
        assert_eq!(backoff(&p, 1, 1.0), Some(Duration::from_millis(1600)));
        assert_eq!(backoff(&p, 2, 0.0), Some(Duration::from_secs(4)));
        assert_eq!(backoff(&p, 4, 0.5), Some(Duration::from_millis(14_400)));
        assert_eq!(backoff(&p, 5, 0.0), None);
        assert_eq!(backoff(&p, 0, 0.0), None);
        let capped = RetryPolicy::exponential(Duration::from_secs(1), Duration::from_secs(30), 40);
        assert_eq!(capped.last(), Some(&Duration::from_secs(30)));
    }

    #[test]
    fn gives_up_after_the_schedule_or_max_age() {
        let p = policy();
        assert_eq!(next_attempt_ms(&p, 1, 0, 1_000, None, 0.0), Some(3_000));
        assert_eq!(next_attempt_ms(&p, 5, 0, 1_000, None, 0.0), None);
        // Due after the max age (3600 s) → dead.
        assert_eq!(next_attempt_ms(&p, 4, 0, 3_590_000, None, 0.0), None);
        assert_eq!(
            next_attempt_ms(&p, 4, 0, 3_500_000, None, 0.0),
            Some(3_516_000)
        );
    }

    #[test]
    fn retry_after_only_lengthens_the_step() {
        let p = policy();
        assert_eq!(
            next_attempt_ms(&p, 1, 0, 1_000, Some(Duration::from_secs(7)), 0.0),
            Some(8_000)
        );
        assert_eq!(
            next_attempt_ms(&p, 1, 0, 1_000, Some(Duration::from_secs(7200)), 0.0),
            None
        );
        // Retry-After: 0 waits the step (2 s) rather than none.
        assert_eq!(
            next_attempt_ms(&p, 1, 0, 1_000, Some(Duration::ZERO), 0.0),
            Some(3_000)
        );
        // A receiver in maintenance asking for a minute each time still gets the whole day.
        let day = RetryPolicy::default();
        let (mut now, mut attempts) = (0i64, 0u32);
        while let Some(next) = next_attempt_ms(
            &day,
            attempts + 1,
            0,
            now,
            Some(Duration::from_secs(60)),
            0.0,
        ) {
            attempts += 1;
            now = next;
        }
        assert!(now > 20 * 3600 * 1000, "last attempt at {now} ms");
    }

    /// The default schedule outlasts a maintenance window: with the target down for two
    /// hours, every attempt in the window fails and is scheduled again, and the first one
    /// after it is delivered, well inside `max_age`.
    #[test]
    fn the_default_schedule_outlasts_a_two_hour_outage() {
        let p = RetryPolicy::default();
        let outage_ms = 2 * 3600 * 1000;
        for random in [0.0, 0.5, 0.999] {
            let (mut now, mut attempts) = (0i64, 0u32);
            while now < outage_ms {
                attempts += 1;
                now = next_attempt_ms(&p, attempts, 0, now, None, random)
                    .unwrap_or_else(|| panic!("dead after {attempts} attempts at {now} ms"));
            }
            assert!(attempts < p.max_attempts(), "{attempts}");
        }
        // The last step still falls inside the day.
        let total: Duration = p.schedule.iter().sum();
        assert!(
            total <= p.max_age && total > p.max_age * 9 / 10,
            "{total:?}"
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
