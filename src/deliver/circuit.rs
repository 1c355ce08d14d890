//! Circuit breaker per connector: after `failures` attempts in a row find the target down
//! (no answer, 5xx, 429, 408) its circuit opens — nothing is sent, its deliveries stay queued
//! and their retry schedules are not spent — until a cool-down has passed; then one delivery
//! goes as a probe (half open). A probe that gets through closes the circuit; one that fails
//! opens it again for twice the cool-down (up to `max_cool_down`).
//!
//! The state is each process's own: gateways sharing a database each find out for
//! themselves. Every decision is a pure function of the recorded outcomes and the time given,
//! so the state machine is tested without waiting.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::connector::CircuitPolicy;

/// Where one connector's circuit stands.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    Closed,
    /// Nothing is sent until `until`.
    Open {
        until: Instant,
    },
    /// One probe may go; `probing` while it is out.
    HalfOpen {
        probing: bool,
    },
}

/// What an outcome did to a circuit, when it changed it.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Opened (or opened again after a failed probe) for `cool_down`.
    Opened {
        cool_down: Duration,
    },
    Closed,
}

#[derive(Debug, Clone)]
struct Circuit {
    state: State,
    /// Target-down outcomes in a row.
    failures: u32,
    cool_down: Duration,
}

impl Circuit {
    fn new(policy: &CircuitPolicy) -> Circuit {
        Circuit {
            state: State::Closed,
            failures: 0,
            cool_down: policy.cool_down,
        }
    }

    /// Whether a delivery may be leased for this connector at `now`, and how many at once
    /// (`Some(1)`: the probe). Moves an open circuit whose cool-down has passed to half open.
    fn admits(&mut self, now: Instant) -> Option<usize> {
        match self.state {
            State::Closed => Some(usize::MAX),
            State::Open { until } if now >= until => {
                self.state = State::HalfOpen { probing: false };
                Some(1)
            }
            State::Open { .. } => None,
            State::HalfOpen { probing: false } => Some(1),
            State::HalfOpen { probing: true } => None,
        }
    }

    /// An attempt is starting (the probe, if half open).
    fn started(&mut self) {
        if let State::HalfOpen { probing } = &mut self.state {
            *probing = true;
        }
    }

    /// An attempt ended: `up` whether the target answered (`None`: it told nothing, as when
    /// nothing was sent).
    fn ended(&mut self, policy: &CircuitPolicy, up: Option<bool>, now: Instant) -> Option<Change> {
        match (up, &self.state) {
            (None, State::HalfOpen { .. }) => {
                // The probe told nothing: let another go.
                self.state = State::HalfOpen { probing: false };
                None
            }
            (None, _) => None,
            (Some(true), State::Closed) => {
                self.failures = 0;
                None
            }
            (Some(true), _) => {
                self.failures = 0;
                self.cool_down = policy.cool_down;
                self.state = State::Closed;
                Some(Change::Closed)
            }
            (Some(false), State::Closed) => {
                self.failures = self.failures.saturating_add(1);
                if policy.failures > 0 && self.failures >= policy.failures {
                    self.state = State::Open {
                        until: now + self.cool_down,
                    };
                    Some(Change::Opened {
                        cool_down: self.cool_down,
                    })
                } else {
                    None
                }
            }
            (Some(false), State::HalfOpen { .. }) => {
                self.cool_down = (self.cool_down * 2).min(policy.max_cool_down);
                self.state = State::Open {
                    until: now + self.cool_down,
                };
                Some(Change::Opened {
                    cool_down: self.cool_down,
                })
            }
            // An attempt that started before the circuit opened: it is open already.
            (Some(false), State::Open { .. }) => None,
        }
    }
}

/// Every connector's circuit in this process.
#[derive(Debug, Default)]
pub struct Circuits {
    circuits: Mutex<HashMap<String, Circuit>>,
}

impl Circuits {
    /// How many deliveries `connector` may have leased at `now`: `None` while its circuit is
    /// open (or its probe is out), `Some(1)` for the probe, else its own cap.
    pub fn admits(&self, connector: &str, cap: usize, now: Instant) -> Option<usize> {
        // A connector with no entry has never failed: closed, nothing to keep.
        let Ok(mut circuits) = self.circuits.lock() else {
            return Some(cap);
        };
        match circuits.get_mut(connector) {
            Some(circuit) => circuit.admits(now).map(|n| n.min(cap)),
            None => Some(cap),
        }
    }

    pub fn started(&self, connector: &str) {
        if let Ok(mut circuits) = self.circuits.lock()
            && let Some(circuit) = circuits.get_mut(connector)
        {
            circuit.started();
        }
    }

    pub fn ended(
        &self,
        connector: &str,
        policy: &CircuitPolicy,
        up: Option<bool>,
        now: Instant,
    ) -> Option<Change> {
        let mut circuits = self.circuits.lock().ok()?;
        match circuits.get_mut(connector) {
            Some(circuit) => circuit.ended(policy, up, now),
            // Only a failure starts keeping state: a connector that answers allocates nothing.
            None if up == Some(false) => circuits
                .entry(connector.to_string())
                .or_insert_with(|| Circuit::new(policy))
                .ended(policy, up, now),
            None => None,
        }
    }

    /// Whether `connector`'s circuit is open or half open (for metrics and the admin API).
    pub fn is_open(&self, connector: &str) -> bool {
        self.circuits.lock().is_ok_and(|c| {
            c.get(connector)
                .is_some_and(|c| !matches!(c.state, State::Closed))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> CircuitPolicy {
        CircuitPolicy {
            failures: 3,
            cool_down: Duration::from_secs(10),
            max_cool_down: Duration::from_secs(25),
        }
    }

    #[test]
    fn opens_after_failures_in_a_row_and_a_success_between_resets_the_count() {
        let (p, c, t) = (policy(), Circuits::default(), Instant::now());
        assert_eq!(c.ended("a", &p, Some(false), t), None);
        assert_eq!(c.ended("a", &p, Some(false), t), None);
        assert_eq!(c.ended("a", &p, Some(true), t), None);
        assert_eq!(c.ended("a", &p, Some(false), t), None);
        assert_eq!(c.ended("a", &p, Some(false), t), None);
        assert_eq!(
            c.ended("a", &p, None, t),
            None,
            "nothing sent tells nothing"
        );
        assert_eq!(
            c.ended("a", &p, Some(false), t),
            Some(Change::Opened {
                cool_down: Duration::from_secs(10)
            })
        );
        assert_eq!(c.admits("a", 8, t), None, "open: nothing leased");
        assert_eq!(
            c.admits("b", 8, t),
            Some(8),
            "another connector is not held"
        );
        assert!(c.is_open("a"));
    }

    #[test]
    fn after_the_cool_down_one_probe_goes_and_its_outcome_decides() {
        let (p, c, t) = (policy(), Circuits::default(), Instant::now());
        for _ in 0..3 {
            c.ended("a", &p, Some(false), t);
        }
        let later = t + Duration::from_secs(10);
        assert_eq!(c.admits("a", 8, later), Some(1), "the probe");
        c.started("a");
        assert_eq!(c.admits("a", 8, later), None, "one probe at a time");
        // The probe fails: open again for twice as long, then capped.
        assert_eq!(
            c.ended("a", &p, Some(false), later),
            Some(Change::Opened {
                cool_down: Duration::from_secs(20)
            })
        );
        assert_eq!(c.admits("a", 8, later + Duration::from_secs(19)), None);
        let probe_at = later + Duration::from_secs(20);
        assert_eq!(c.admits("a", 8, probe_at), Some(1));
        c.started("a");
        assert_eq!(
            c.ended("a", &p, Some(false), probe_at),
            Some(Change::Opened {
                cool_down: Duration::from_secs(25)
            })
        );
        let probe_at = probe_at + Duration::from_secs(25);
        assert_eq!(c.admits("a", 8, probe_at), Some(1));
        c.started("a");
        assert_eq!(c.ended("a", &p, Some(true), probe_at), Some(Change::Closed));
        assert_eq!(c.admits("a", 8, probe_at), Some(8));
        assert!(!c.is_open("a"));
        // Closed again, the cool-down starts over.
        for _ in 0..3 {
            c.ended("a", &p, Some(false), probe_at);
        }
        assert_eq!(
            c.admits("a", 8, probe_at + Duration::from_secs(10)),
            Some(1)
        );
    }

    #[test]
    fn a_probe_that_tells_nothing_lets_another_go_and_zero_failures_never_opens() {
        let (p, c, t) = (policy(), Circuits::default(), Instant::now());
        for _ in 0..3 {
            c.ended("a", &p, Some(false), t);
        }
        let later = t + Duration::from_secs(10);
        assert_eq!(c.admits("a", 8, later), Some(1));
        c.started("a");
        assert_eq!(c.ended("a", &p, None, later), None);
        assert_eq!(c.admits("a", 8, later), Some(1));

        let off = CircuitPolicy {
            failures: 0,
            ..policy()
        };
        for _ in 0..100 {
            assert_eq!(c.ended("b", &off, Some(false), t), None);
        }
        assert_eq!(c.admits("b", 8, t), Some(8));
    }
}
