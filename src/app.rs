//! What the HTTP handlers share: the configuration, the renderer and schema, the store, the
//! metrics, admission state, and the bell that wakes the delivery workers.

use std::net::IpAddr;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::HeaderMap;
use tokio::sync::{Notify, Semaphore};

use axum::extract::{FromRequestParts, Path};
use axum::http::StatusCode;
use axum::http::request::Parts;

use crate::admission::{BodyReservation, Guard};
use crate::metrics::Metrics;
use crate::problem::Problem;
use crate::reload::Live;
use crate::schema::IncidentSchema;
use crate::server::ServerConfig;
use crate::store::Store;

/// What the HTTP handlers share.
pub struct App {
    /// The listeners' settings, fixed for the life of the process.
    pub server: ServerConfig,
    /// The configuration in force ([`crate::reload`]): sources, connectors, templates.
    pub live: Arc<Live>,
    /// Each connector's circuit breaker, as the delivery workers keep it.
    pub circuits: Arc<crate::deliver::circuit::Circuits>,
    /// Each connector's alert, as the delivery workers raise them.
    pub alerts: Arc<crate::alert::Alerts>,
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
    /// The counters' samples behind the console's rates and chart.
    pub trend: crate::metrics::Trend,
    /// Replays of dead deliveries the console started, and their progress.
    pub replays: crate::replays::Replays,
}

impl App {
    /// Reads a request body as every endpoint does once its caller is known: bounded in size
    /// and time, within the body budget and `client`'s share of it (see
    /// [`crate::admission::read_body`]).
    pub async fn read_body(
        &self,
        client: Option<IpAddr>,
        headers: &HeaderMap,
        body: Body,
        max_bytes: usize,
    ) -> Result<(Bytes, BodyReservation), Problem> {
        crate::admission::read_body(&self.guard, &self.server, client, headers, body, max_bytes)
            .await
    }
}

/// The id in a request's path (`{incident_id}`, `{delivery_id}`); a path that does not decode
/// is a 400, problem+json.
pub struct PathId(pub String);

impl FromRequestParts<Arc<App>> for PathId {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<PathId, Problem> {
        match Path::<String>::from_request_parts(parts, app).await {
            Ok(Path(id)) => Ok(PathId(id)),
            Err(e) => Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "bad-path",
                "Bad path",
                e.body_text(),
            )),
        }
    }
}

/// The extractors of [`crate::auth`] read the callers from the configuration.
impl crate::auth::Callers for App {
    fn admin_token(&self) -> Option<&str> {
        self.server.admin_token.as_deref()
    }

    fn scoped_admin(&self, headers: &HeaderMap) -> Option<crate::auth::ScopedAdmin> {
        crate::auth::scoped(&self.live.current().config.admin_tokens, headers)
    }

    fn callback_caller(&self, headers: &HeaderMap) -> Option<crate::store::Caller> {
        let generation = self.live.current();
        crate::auth::callback_caller(
            &generation.config.connectors,
            &generation.config.sources,
            headers,
        )
    }

    fn refused(&self) {
        Metrics::inc(&self.metrics.auth_failures);
    }
}
