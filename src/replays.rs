//! Replays under way: dead deliveries a console user sent back to the queue, replayed in the
//! background one at a time, and how far each got (the console's progress line reads it).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// A finished replay's progress is kept this long.
const KEEP_MS: i64 = 3_600_000;

/// One replay: the deliveries asked for and how far it got.
pub struct Job {
    pub who: String,
    /// As asked (a form may name any id: only [`Job::replayed`] ones are ever looked at).
    pub ids: Vec<String>,
    /// The ids replayed: the caller could change them, so it may see how they went.
    replayed: Mutex<Vec<String>>,
    /// Not replayed: no longer dead, gone, or not this token's to change.
    pub skipped: AtomicUsize,
    /// When the last was replayed (0: still going).
    finished_ms: AtomicI64,
}

impl Job {
    pub fn new(who: String, ids: Vec<String>) -> Job {
        Job {
            who,
            ids,
            replayed: Mutex::new(Vec::new()),
            skipped: AtomicUsize::new(0),
            finished_ms: AtomicI64::new(0),
        }
    }

    pub fn record(&self, id: &str, replayed: bool) {
        if replayed {
            match self.replayed.lock() {
                Ok(mut r) => r.push(id.to_string()),
                Err(poisoned) => poisoned.into_inner().push(id.to_string()),
            }
        } else {
            self.skipped.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn finish(&self) {
        self.finished_ms
            .store(crate::model::now_ms().max(1), Ordering::Relaxed);
    }

    /// When it finished, once it has.
    pub fn finished_ms(&self) -> Option<i64> {
        Some(self.finished_ms.load(Ordering::Relaxed)).filter(|ms| *ms > 0)
    }

    /// How many were replayed, and the first `at_most` of them.
    pub fn replayed(&self, at_most: usize) -> (usize, Vec<String>) {
        let r = match self.replayed.lock() {
            Ok(r) => r,
            Err(poisoned) => poisoned.into_inner(),
        };
        (r.len(), r.iter().take(at_most).cloned().collect())
    }
}

/// The replays under way (and finished within the hour), by number.
#[derive(Default)]
pub struct Replays {
    next: AtomicU64,
    jobs: Mutex<HashMap<u64, Arc<Job>>>,
}

impl Replays {
    pub fn add(&self, job: Job) -> (u64, Arc<Job>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let job = Arc::new(job);
        let mut jobs = match self.jobs.lock() {
            Ok(j) => j,
            Err(poisoned) => poisoned.into_inner(),
        };
        let now = crate::model::now_ms();
        jobs.retain(|_, j| j.finished_ms().is_none_or(|at| now - at < KEEP_MS));
        jobs.insert(id, job.clone());
        (id, job)
    }

    pub fn get(&self, id: u64) -> Option<Arc<Job>> {
        let jobs = match self.jobs.lock() {
            Ok(j) => j,
            Err(poisoned) => poisoned.into_inner(),
        };
        jobs.get(&id).cloned()
    }
}
