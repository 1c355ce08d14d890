//! Wiring: what the HTTP handlers share ([`App`]), the routers of each listener, and
//! [`Gateway::start`], which opens the store, compiles the templates, binds the listeners and
//! starts the delivery workers.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::config::Config;
use crate::deliver::{self, Deliverer};
use crate::reload::{Generation, GenerationError, Live};
use crate::schema::IncidentSchema;
use crate::store::Store;
use crate::{Error, admin, callback, control, ingress, metrics, openapi, problem, server};

/// A running gateway: its address, and the handle to stop it.
pub struct Gateway {
    pub addr: SocketAddr,
    /// Where the admin API listens when it has its own address.
    pub admin_addr: Option<SocketAddr>,
    admin_server: Option<tokio::task::JoinHandle<()>>,
    pub store: Store,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<()>,
    workers: tokio::task::JoinHandle<()>,
    /// The configuration in force (and the mailbox readers that follow it).
    pub live: Arc<Live>,
}

/// What the detection platform and ticketing systems call: ingest and the back channel.
fn ingress_routes() -> Router<Arc<App>> {
    Router::new()
        .route("/v1/incidents", post(ingress::post_incidents))
        .route(
            "/v1/incidents/{incident_id}/complete",
            post(callback::complete),
        )
        .route("/v1/incidents/{incident_id}/info", get(callback::info))
        .route(
            "/v1/incidents/{incident_id}/sla",
            post(crate::slas::report_for_incident),
        )
}

/// What admins call (Bearer `admin_token`): inspect, replay, resolve, metrics.
fn admin_routes() -> Router<Arc<App>> {
    Router::new()
        .route("/metrics", get(admin::metrics))
        .route("/v1/incidents", get(admin::list_incidents))
        .route("/v1/incidents/{incident_id}", get(admin::get_incident))
        .route(
            "/v1/incidents/{incident_id}/sla",
            get(crate::slas::incident_clocks),
        )
        .route("/v1/sla", get(crate::slas::list))
        .route(
            "/v1/tickets/{ticket}/sla",
            post(crate::slas::report_for_ticket),
        )
        .route("/v1/deliveries", get(admin::list_deliveries))
        .route("/v1/deliveries/{delivery_id}", get(admin::get_delivery))
        .route(
            "/v1/deliveries/{delivery_id}/replay",
            post(admin::replay_delivery),
        )
        .route(
            "/v1/deliveries/{delivery_id}/resolve",
            post(admin::resolve_delivery),
        )
        .route("/v1/deliveries/replay", post(control::bulk_replay))
        .route("/v1/admin/reload", post(control::reload))
        .route("/v1/connectors", get(control::list_connectors))
        .route("/v1/connectors/{connector}/pause", post(control::pause))
        .route("/v1/connectors/{connector}/resume", post(control::resume))
}

/// The ingress listener when the admin API has its own address.
pub fn ingress_router(app: Arc<App>) -> Router {
    finish(ingress_routes(), app)
}

/// The admin listener (`server.admin_listen`), with the console.
pub fn admin_router(app: Arc<App>) -> Router {
    finish(admin_routes().merge(crate::console::routes(&app)), app)
}

/// Both on one listener (when `server.admin_listen` is not set), with the console.
pub fn router(app: Arc<App>) -> Router {
    finish(
        ingress_routes()
            .merge(admin_routes())
            .merge(crate::console::routes(&app)),
        app,
    )
}

/// What a reserved slot of the shared listener serves: the admin routes alone; anything else
/// is 503, as the slot is held for admins (the server checks the admin token first).
fn reserve_router(app: Arc<App>) -> Router {
    let held = || async {
        problem::Problem::unavailable(
            "every connection slot is taken; this one is held for the admin API",
        )
    };
    admin_routes()
        .fallback(held)
        .method_not_allowed_fallback(held)
        .with_state(app)
}

/// Every listener answers `/healthz` (the process runs), `/readyz` (it can store what it
/// takes), the API contract (`/openapi.json`, whole on every listener, as it holds no secret
/// and names which listener serves what) with the incident schema it refers to, and
/// problem+json for unknown paths and methods.
fn finish(router: Router<Arc<App>>, app: Arc<App>) -> Router {
    router
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/incident.schema.json", get(openapi::incident_schema))
        .fallback(|| async { problem::Problem::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async {
            problem::Problem::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
                "this endpoint does not take that method",
            )
        })
        .with_state(app)
}

pub async fn open_store(config: &Config) -> Result<Store, Error> {
    Ok(Store::open(&config.storage).await?)
}

/// How long `/readyz` waits for the store before it calls it down.
const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// 200 while the store answers and a config is in force; 503 problem+json (with Retry-After)
/// otherwise, so a load balancer sends incidents to another gateway until the database is back.
/// "In force" means a generation is loaded and the gateway is not shutting down: start fails
/// without a valid config, and a failed reload keeps the previous one working, so a failed
/// reload leaves the gateway ready (it shows in `igw_config_reloads_total{outcome="failed"}`).
async fn readyz(
    axum::extract::State(app): axum::extract::State<Arc<App>>,
) -> Result<&'static str, problem::Problem> {
    if app.live.stopping() {
        return Err(problem::Problem::unavailable(
            "the gateway is shutting down; send incidents to another one",
        ));
    }
    match tokio::time::timeout(READY_TIMEOUT, app.store.ready()).await {
        Ok(Ok(())) => Ok("ready"),
        Ok(Err(e)) => Err(problem::Problem::store_failed(
            &e,
            "the store does not answer; incidents cannot be accepted",
        )),
        Err(_) => Err(problem::Problem::unavailable(
            "the store did not answer in time; incidents cannot be accepted",
        )),
    }
}

impl Gateway {
    /// Opens the store, compiles templates, binds the listener and starts the workers.
    pub async fn start(config: Config) -> Result<Gateway, Error> {
        let schema = IncidentSchema::shipped()?;
        // The contract is served as shipped: a document that does not parse stops the start.
        openapi::document()?;
        let store = open_store(&config).await?;
        let tracked: Vec<String> = config
            .connectors
            .iter()
            // A connector that looks its tickets up (or whose target dedupes creates) settles
            // an interrupted `created` itself; only the others need a person.
            .filter(|c| c.ticket_id.is_some() && !c.settles_unknown_creates())
            .map(|c| c.name.clone())
            .collect();
        let parked = store.recover(tracked).await?;
        if parked > 0 {
            tracing::warn!(
                parked,
                "created requests cut off when the gateway last stopped (a crash, or a stop past shutdown_grace) were set aside dead: their tickets may exist; see the dead deliveries to resolve or replay them"
            );
        }
        let watch = config.reload.watch;
        let retention = config.retention;
        let reopen_within = config
            .connectors
            .iter()
            .filter_map(|c| c.reopen_within)
            .max();
        let first = Generation::build(config, 1).map_err(|e| match e {
            GenerationError::Config(e) => Error::Config(e),
            GenerationError::Render(e) => Error::Render(e),
            GenerationError::Connector(e) => Error::Connector(e),
            GenerationError::Interrupted(e) => Error::Serve(std::io::Error::other(e)),
        })?;
        let config = first.config.clone();
        crate::reload::log_intel_problems(&config.threat_intel);
        let wake = Arc::new(Notify::new());
        let metrics = Arc::new(metrics::Metrics::default());
        let listener = tokio::net::TcpListener::bind(&config.server.listen)
            .await
            .map_err(|source| Error::Bind {
                addr: config.server.listen.clone(),
                source,
            })?;
        let addr = listener.local_addr().map_err(Error::Serve)?;
        let shutdown = CancellationToken::new();
        let live = Live::new(first, store.clone(), wake.clone(), shutdown.clone());
        if let Some(interval) = watch {
            tokio::spawn(live.clone().watch(interval));
        }
        let current = live.current();
        let circuits = Arc::new(deliver::circuit::Circuits::default());
        let alerts = Arc::new(crate::alert::Alerts::default());
        let deliverer = Deliverer {
            settings: config.delivery,
            shutdown_grace: config.server.shutdown_grace,
            connectors: current.connectors.clone(),
            secrets: current.secrets.clone(),
            renderer: current.renderer.clone(),
            store: store.clone(),
            clients: current.clients.clone(),
            tokens: current.tokens.clone(),
            metrics: metrics.clone(),
            wake: wake.clone(),
            mailers: current.mailers.clone(),
            renders: Arc::new(tokio::sync::Semaphore::new(config.delivery.render_threads)),
            live: live.clone(),
            circuits: circuits.clone(),
            alerts: alerts.clone(),
        };
        let workers = tokio::spawn(deliverer.run(shutdown.clone()));
        tokio::spawn(crate::retention::run(
            store.clone(),
            retention,
            reopen_within,
            shutdown.clone(),
        ));

        let app = Arc::new(App {
            guard: crate::admission::Guard::new(&config.server),
            server: config.server.clone(),
            live,
            circuits,
            alerts,
            metrics,
            schema,
            store: store.clone(),
            wake,
            checks: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            )),
            trend: crate::metrics::Trend::default(),
            replays: crate::replays::Replays::default(),
        });
        tokio::spawn(crate::console::overview::sample(
            app.clone(),
            shutdown.clone(),
        ));
        tokio::spawn(crate::reload::watch_threat_intel(
            app.live.clone(),
            app.metrics.clone(),
            shutdown.clone(),
        ));
        tokio::spawn(crate::watchdog::run(
            app.live.clone(),
            store.clone(),
            app.wake.clone(),
            app.metrics.clone(),
            shutdown.clone(),
        ));
        tokio::spawn(control::read_queue(
            store.clone(),
            app.metrics.clone(),
            shutdown.clone(),
        ));
        let app_live = app.live.clone();
        let limits = server::ConnectionLimits {
            max_connections: app.server.max_connections,
            max_connections_per_client: app.server.max_connections_per_client,
            idle_timeout: app.server.idle_timeout,
            header_read_timeout: app.server.header_read_timeout,
            shutdown_grace: app.server.shutdown_grace,
            linger_bytes: server::linger_bytes(app.server.max_body_bytes),
        };
        let tls = match &app.server.tls {
            Some(files) => Some(server::tls_acceptor(files)?),
            None => None,
        };
        let admin_tls = match &app.server.admin_tls {
            Some(files) => Some(server::tls_acceptor(files)?),
            None => None,
        };
        let (main_router, reserve, admin) = match &app.server.admin_listen {
            Some(admin_addr) => {
                let admin_listener =
                    tokio::net::TcpListener::bind(admin_addr)
                        .await
                        .map_err(|source| Error::Bind {
                            addr: admin_addr.clone(),
                            source,
                        })?;
                let bound = admin_listener.local_addr().map_err(Error::Serve)?;
                let tls_on = admin_tls.is_some();
                let task = tokio::spawn(server::serve(
                    admin_listener,
                    admin_router(app.clone()),
                    limits,
                    None,
                    admin_tls,
                    shutdown.clone(),
                ));
                tracing::info!(addr = %bound, tls = tls_on, "admin API listening");
                (ingress_router(app), None, Some((bound, task)))
            }
            None => {
                // The admin API shares this listener: keep its reserve (when it is on at all).
                let reserve = app.server.admin_token.clone().and_then(|token| {
                    let slots = app.server.admin_reserved_connections;
                    (slots > 0).then(|| server::AdminReserve {
                        slots,
                        router: reserve_router(app.clone()),
                        admin_token: token,
                    })
                });
                (router(app), reserve, None)
            }
        };
        let server = tokio::spawn(server::serve(
            listener,
            main_router,
            limits,
            reserve,
            tls,
            shutdown.clone(),
        ));
        tracing::info!(%addr, "listening");
        let (admin_addr, admin_server) = match admin {
            Some((a, t)) => (Some(a), Some(t)),
            None => (None, None),
        };
        Ok(Gateway {
            admin_addr,
            admin_server,
            addr,
            store,
            shutdown,
            server,
            workers,
            live: app_live,
        })
    }

    /// Stops accepting, lets requests and sends under way finish, each bounded by
    /// `server.shutdown_grace`.
    pub async fn stop(self) -> Result<(), Error> {
        self.shutdown.cancel();
        let served = self.server.await;
        if let Some(admin) = self.admin_server {
            let _ = admin.await;
        }
        let _ = self.workers.await;
        self.live.stop_mailboxes();
        served.map_err(|e| Error::Serve(std::io::Error::other(e.to_string())))
    }
}
