//! Replays under way: dead deliveries a console user sent back to the queue, replayed in the
//! background one at a time, and how far each got (the console's progress line reads it).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// A finished replay's progress is kept this long.
const KEEP_MS: i64 = 3_600_000;

/// One replay: its deliveries and how far it got.
pub struct Job {
    pub who: String,
    pub ids: Vec<String>,
    pub replayed: AtomicUsize,
    /// Not replayed: no longer dead, gone, or not this token's to change.
    pub skipped: AtomicUsize,
    pub finished: AtomicBool,
    pub started_ms: i64,
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
        jobs.retain(|_, j| !j.finished.load(Ordering::Relaxed) || now - j.started_ms < KEEP_MS);
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
