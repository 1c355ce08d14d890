//! incident-gateway: takes incidents from a detection platform and delivers them to the
//! systems where people work them (ticketing, chat, paging).
//!
//! The modules, in the order an incident meets them:
//!
//! 1. [`model`] — the vocabulary every stage speaks (events, ticket facts, completion, threat
//!    ratings, delivery states, the clock); it imports nothing from the crate.
//! 2. [`config`] — the admin's TOML file, expanded and validated once at load, each section
//!    into the settings type of the stage that uses it; [`connector`] — what a connector is:
//!    its target (HTTP or SMTP), routing, ticket, retry and signing settings; [`secrets`]
//!    masks what the config marks secret wherever text leaves the process; [`signature`] signs
//!    and verifies (Standard Webhooks, GitHub style) with the secrets it holds.
//! 3. [`gateway`] — wiring: routers, start and stop, around [`app`], the state handlers
//!    share; [`server`] — the listeners (connection limits, idle shedding, lingering close,
//!    TLS); [`admission`] — replay fast path, rate limits, the body budget and reader;
//!    [`reload`] — the configuration in force, swapped whole on SIGHUP or the admin API.
//! 4. [`ingress`] — `POST /v1/incidents`: authenticate, bound, parse; answers are
//!    [`problem`] details (RFC 9457); [`auth`] — who is calling (admin, source, callback):
//!    the `Admin` and `Callback` extractors on one constant-time token check.
//! 5. [`schema`] — validate each incident against `schemas/incident.schema.json`;
//!    [`fields`] — which paths it declares, that `check` holds templates and matchers to.
//! 6. [`intel`] — threat-intel enrichment: IOC lists matched against the incident's
//!    attackers, targets and chosen fields, the findings stored on it as `ti`;
//!    [`route`] — pick the connectors whose matchers the incident meets (a tenant's own
//!    where it sets them); [`assign`] — the group and owner its ticket goes to.
//! 7. [`ticket`] — correlation keys, collection windows, ticket ids from responses; [`callback`] — the way
//!    back (`POST /v1/incidents/{id}/complete`); [`mailbox`] — ticket numbers learned from a
//!    ticketing system's acknowledgement mails (IMAP); [`sla`] — a ticket's SLA clocks in
//!    business hours (the calendar, the clock, the policies); [`watchdog`] — keeps them
//!    moving, and queues a warning, breach or recovery to the connectors that hear of them;
//!    [`slas`] — the SLA endpoints (status reports through the back channel and the admin
//!    API, the clocks' views).
//! 8. [`store`] — commit the incident and one delivery per connector, then answer 202; one
//!    interface by use (ingest, queue, tickets, views), SQLite behind it; [`retention`] —
//!    a background task purges finished work older than `[retention]` allows; [`backup`] —
//!    a consistent copy of the SQLite store while the gateway runs.
//! 9. [`deliver`] — workers lease due deliveries; one attempt is a chain of small stages:
//!    prepare (render → stamp → sign, or build the mail) → egress check → send → classify →
//!    schedule → record. The CLI preview and the fuzz target run the same `prepare`.
//! 10. [`render`] — Handlebars templates, escaped by content type, strict about variables,
//!     each render bounded in time and by its helpers' input caps.
//! 11. [`admin`] — list and inspect incidents and deliveries, replay dead ones, each list's
//!     [`query`] checked strictly; [`control`] — reload, pause and resume connectors, replay
//!     dead deliveries in bulk; [`alert`] — a failing destination raises an alert (log,
//!     metric, a notification through another connector); [`metrics`] for Prometheus;
//!     [`openapi`] — the API contract (`schemas/openapi.yaml`), served at `GET /openapi.json`.
//!     [`console`] — the web console under `/ui/` (overview, incidents, dead letters,
//!     template preview), signed in with an admin token; [`replays`] — the replays it
//!     started, under way.
//! 12. [`cli`] — `check`, `routes` and `render`, the admin's offline tools; [`operator`] —
//!     the admin API from a terminal (`deliveries`, `incidents`); `main.rs` only parses the
//!     command line.

pub mod model;

pub mod config;
pub mod connector;
pub mod secrets;
pub mod signature;

pub mod app;
pub mod gateway;
pub mod reload;
pub mod server;

pub mod admission;
pub mod auth;
pub mod ingress;
pub mod problem;

pub mod fields;
pub mod schema;

pub mod assign;
pub mod intel;
pub mod route;

pub mod callback;
pub mod mailbox;
pub mod sla;
pub mod slas;
pub mod ticket;
pub mod watchdog;

pub mod backup;
pub mod retention;
pub mod store;

pub mod deliver;

pub mod render;

pub mod admin;
pub mod alert;
pub mod console;
pub mod control;
pub mod metrics;
pub mod openapi;
pub mod query;
pub mod replays;

pub mod cli;
pub mod operator;

pub use app::App;
pub use gateway::{Gateway, admin_router, ingress_router, open_store, router};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("template {0}")]
    Render(#[from] render::RenderError),
    #[error(transparent)]
    Schema(#[from] schema::SchemaError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("server: {0}")]
    Serve(std::io::Error),
    #[error(transparent)]
    Connector(#[from] deliver::SetupError),
    #[error("TLS: {0}")]
    Tls(#[from] server::TlsError),
    #[error(transparent)]
    OpenApi(#[from] openapi::OpenApiError),
}
