//! What the HTTP handlers share: the configuration, the renderer and schema, the store, the
//! metrics, admission state, and the bell that wakes the delivery workers.

use std::sync::Arc;

use tokio::sync::{Notify, Semaphore};

use crate::admission::Guard;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::render::Renderer;
use crate::schema::IncidentSchema;
use crate::store::Store;

/// What the HTTP handlers share.
pub struct App {
    pub config: Arc<Config>,
    pub renderer: Arc<Renderer>,
    pub metrics: Arc<Metrics>,
    /// Replay fast path, rate limits and body budget of the ingress.
    pub guard: Guard,
    pub schema: IncidentSchema,
    pub store: Store,
    /// Rung when new deliveries are due now.
    pub wake: Arc<Notify>,
    /// Permits for ingest's CPU work (parse, validate, route) on blocking threads, one per
    /// core: a burst of large bodies waits its turn instead of spawning a thread each.
    pub checks: Arc<Semaphore>,
}
