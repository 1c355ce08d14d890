//! Store: incidents, their versions, tickets, deliveries and attempts, kept durably.
//!
//! This module is the interface: the data that goes in and comes out, [`StoreError`], and the
//! store's uses as traits — [`Ingest`] (incidents in, webhook-id claims), [`Queue`] (what
//! delivery workers lease and record), [`Tickets`] (completion and resolve) and [`Views`]
//! (what the admin API shows). A backend implements all four ([`Backend`]); callers hold a
//! [`Store`], one cheap-to-clone handle over whichever backend the configuration chose.
//! [`sqlite`] is the embedded default (one process per file, group commit); [`postgres`] lets
//! several gateway processes share one database. The rules both follow are in [`rules`].
//!
//! Every write resolves only after its commit, which is what lets ingress answer 202 only for
//! what survives `kill -9`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

use std::collections::BTreeMap;

use crate::model::{AttemptOutcome, ClosePolicy, Completion, Event, TicketFacts};

/// The ordering rule, in one place (SQL shared by both backends): delivery `d` waits behind an earlier delivery `e` of the
/// same connector and order key (the ticket) that is pending, or is a dead `created` (its
/// ticket does not exist yet). Used to lease, to find the next due time, and to show
/// `waiting_for`.
macro_rules! waits_behind {
    () => {
        "e.connector = d.connector AND e.order_key = d.order_key AND e.seq < d.seq \
         AND (e.status = 'pending' OR (e.status = 'dead' AND e.event = 'created'))"
    };
}

/// A delivery that holds its line (the unqualified form of the rule above, written as the
/// `deliveries_blocking` index's condition so that SQLite uses the index).
macro_rules! blocking {
    () => {
        "(status = 'pending' OR (status = 'dead' AND event = 'created'))"
    };
}

/// What the admin API shows, as SQL both backends run (each adds its WHERE with its own
/// placeholders): an incident with its current version's body …
macro_rules! incident_view_select {
    () => {
        "SELECT i.incident_id, i.source, i.status, i.status_change_ms, i.received_ms, i.updated_ms,
                i.versions, i.account_id, v.body
         FROM incidents i JOIN incident_versions v ON v.version_id = i.version_id"
    };
}

/// … the tickets an incident is on (`ti`), with how many incidents each holds …
macro_rules! ticket_views_select {
    () => {
        "SELECT t.connector, t.correlation_key, t.ticket_id, t.ticket_url, t.status, t.opened_ms,
                t.window_until_ms,
                (SELECT COUNT(*) FROM ticket_incidents x WHERE x.ticket_seq = t.ticket_seq)
                    AS incidents
         FROM tickets t JOIN ticket_incidents ti ON ti.ticket_seq = t.ticket_seq"
    };
}

/// … and deliveries (`d`), each with the earlier one of its line it waits for.
macro_rules! delivery_views_select {
    () => {
        concat!(
            "SELECT d.delivery_id, d.incident_id, d.connector, d.event, d.status, d.attempts,
                    d.created_ms, d.updated_ms, d.next_attempt_ms, d.last_error,
                    CASE WHEN d.status = 'pending' THEN
                        (SELECT e.delivery_id FROM deliveries e WHERE ",
            waits_behind!(),
            " ORDER BY e.seq LIMIT 1)
                    END AS waiting_for
             FROM deliveries d"
        )
    };
}

pub mod listing;
pub mod postgres;
pub mod rules;
pub mod sqlite;

pub use postgres::PostgresConfig;

/// `[storage]`: where the store keeps its data. `config` builds it.
#[derive(Debug, Clone)]
pub enum StorageConfig {
    Sqlite { path: PathBuf },
    Postgres(PostgresConfig),
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A group commit failed at `step`: every write in it hears why (one cause, many
    /// listeners), and none of them was written.
    #[error("store: transaction aborted: {step}: {source}")]
    Aborted {
        step: &'static str,
        #[source]
        source: Arc<rusqlite::Error>,
    },
    /// SQLite rolled a whole group back (disk full, I/O error): nothing in it was written,
    /// whatever each write returned.
    #[error("store: transaction aborted: the transaction was rolled back by SQLite")]
    RolledBack,
    #[error("store: cannot open {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("store: cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "store: cannot open {path}: another gateway process is using this SQLite file (use PostgreSQL to run several)"
    )]
    InUse {
        path: PathBuf,
        #[source]
        source: std::fs::TryLockError,
    },
    /// A read's blocking task ended without an answer (it panicked, or the runtime is
    /// shutting down).
    #[error("store: a read did not finish: {0}")]
    Read(#[from] tokio::task::JoinError),
    #[error("store: the writer has stopped")]
    Closed,
    #[error("store: PostgreSQL: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// No connection to PostgreSQL (it is down, or every connection is busy past the
    /// connect timeout).
    #[error("store: no PostgreSQL connection: {0}")]
    Pool(String),
    #[error("store: storage.url is not a PostgreSQL connection URL")]
    BadUrl,
    #[error(
        "store: the database's schema is version {found}, newer than this gateway knows ({known}): run a gateway at least as new as the one that migrated it"
    )]
    SchemaTooNew { found: i32, known: i32 },
    /// The batch's incident at `index` is stored for another account: an incident's
    /// `accountId` is fixed when it is first stored (tenants' data stays apart). Nothing of
    /// the batch was written.
    #[error("store: incident {incident_id:?} is stored for another account")]
    ForeignAccount { index: usize, incident_id: String },
    /// A row the store had just written was not there to read back.
    #[error("store: {0} was not returned by the database")]
    Missing(&'static str),
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> StoreError {
        StoreError::Pool(e.to_string())
    }
}

impl StoreError {
    /// Whether running the whole transaction again may succeed: PostgreSQL aborted it to break
    /// a deadlock, or for a serialization failure.
    pub fn is_retryable(&self) -> bool {
        let StoreError::Postgres(e) = self else {
            return false;
        };
        e.code().is_some_and(|code| {
            *code == tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED
                || *code == tokio_postgres::error::SqlState::T_R_SERIALIZATION_FAILURE
        })
    }
}

/// An incident ready to store: validated, serialized, routed.
#[derive(Debug, Clone)]
pub struct NewIncident {
    pub incident_id: String,
    /// The incident's `accountId` (its tenant), fixed when it is first stored.
    pub account_id: Option<i64>,
    pub update_time: Option<f64>,
    /// The incident as JSON text.
    pub body: String,
    /// SHA-256 of `body`, to tell a repeat from a change when `updateTime` is absent.
    pub body_hash: String,
    /// Connectors the incident was routed to, each with the ticket key it falls under.
    pub routes: Vec<Route>,
}

/// One connector an incident goes to.
#[derive(Debug, Clone)]
pub struct Route {
    pub connector: String,
    /// The correlation key: incidents with the same key share a ticket.
    pub key: String,
    /// How long a ticket takes more incidents (ms); `None`: until completed.
    pub aggregate_for_ms: Option<i64>,
    /// Whether the connector sends `updated` (a later incident joins the ticket either way).
    pub sends_updated: bool,
    /// A ticket of the key closed less than this ago (ms) is reopened rather than a new one
    /// opened; `None`: never.
    pub reopen_within_ms: Option<i64>,
    /// The collection window (ms): the incident's delivery waits this long, and later
    /// incidents of its ticket join it until it is leased; `None`: a delivery of its own,
    /// due at once.
    pub collect_for_ms: Option<i64>,
    /// The SLA a ticket this route opens is held to (`None`: no SLA clocks).
    pub sla: Option<crate::sla::SlaStart>,
}

/// One SLA clock as stored, with what the watchdog needs of its ticket.
#[derive(Debug, Clone, PartialEq)]
pub struct SlaClockRow {
    pub clock_id: i64,
    pub ticket_seq: i64,
    pub level: crate::sla::Level,
    /// The `[[sla.policies]]` entry the ticket was held to when it opened, by name.
    pub policy: String,
    /// The clock ([`crate::sla::Clock`]) as JSON.
    pub clock: String,
    /// Bumped by every save: a save names the revision it read ([`SlaSave`]).
    pub revision: i64,
    /// When the watchdog should look at it next (`None`: not until someone acts).
    pub next_check_ms: Option<i64>,
    pub connector: String,
    pub correlation_key: String,
    pub ticket_id: Option<String>,
    pub ticket_url: Option<String>,
    /// The incident that opened the ticket, and its account (tenant).
    pub incident_id: String,
    pub account_id: Option<i64>,
    pub opened_ms: i64,
    /// When the ticket was closed (completed), while it is.
    pub closed_ms: Option<i64>,
    /// When the ticket's `created` was first delivered (or resolved by an admin).
    pub created_ok_ms: Option<i64>,
}

/// A clock written back: only if it is still at `revision` (another watchdog, or a status
/// report, may have moved it meanwhile), and then with its alerts queued as the gateway's own
/// incidents (source [`crate::model::GATEWAY_SOURCE`]) in the same transaction — so an alert is
/// queued exactly when the clock that says it is saved.
#[derive(Debug, Clone)]
pub struct SlaSave {
    pub clock_id: i64,
    pub revision: i64,
    pub clock: String,
    pub next_check_ms: Option<i64>,
    /// `running`, `waiting`, `suspended` or `met`, for lists.
    pub state: String,
    pub breached: bool,
    pub alerts: Vec<NewIncident>,
}

/// `GET /v1/sla`: which clocks, newest ticket first.
#[derive(Debug, Clone, Default)]
pub struct SlaListing {
    /// Only clocks of these accounts' tickets (a scoped admin token's tenants).
    pub accounts: Option<Vec<i64>>,
    pub connector: Option<String>,
    /// `running`, `waiting`, `suspended` or `met`.
    pub state: Option<String>,
    pub breached: Option<bool>,
    /// The page starts after this clock id (clocks are listed by id, newest first).
    pub before_clock_id: Option<i64>,
    pub limit: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IngestStatus {
    Accepted,
    Duplicate,
    Updated,
}

#[derive(Debug, Clone, Serialize)]
pub struct IngestOutcome {
    #[serde(rename = "incidentId")]
    pub incident_id: String,
    pub status: IngestStatus,
    pub deliveries: Vec<DeliveryRef>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeliveryRef {
    pub id: String,
    pub connector: String,
    pub event: Event,
}

/// A delivery a worker holds until its lease ends.
#[derive(Debug, Clone)]
pub struct LeasedDelivery {
    pub id: String,
    /// Proves this worker still holds the lease when it records the attempt.
    pub lease_token: String,
    pub incident_id: String,
    pub connector: String,
    pub event: Event,
    /// Attempts made before this one.
    pub attempts: u32,
    /// Attempts and time counted toward the retry budget start here (queueing or replay).
    pub budget_attempts: u32,
    pub budget_since_ms: i64,
    /// The incident version this delivery carries.
    pub incident_body: String,
    pub received_at_ms: i64,
    /// The ticket it belongs to (none for an upstream completion).
    pub ticket_seq: Option<i64>,
    pub ticket: TicketFacts,
    /// How the incident was completed — for a `completed` delivery only: an `updated` queued
    /// before the completion renders the incident as it was then.
    pub completion: Option<Completion>,
    /// A `created` that may have opened its ticket already (an attempt cut off mid-send,
    /// timed out, or lost its connection after the request was written): its connector
    /// looks the ticket up before sending it again.
    pub outcome_unknown: bool,
    /// The incidents a collection window gathered into this delivery; `None` for a delivery
    /// without one.
    pub collected: Option<Collected>,
}

/// What a collection window gathered, as a lease reads it: the incidents in the order they
/// arrived (each at its latest version), the first [`rules::COLLECTED_SHOWN`] of them, and
/// how many there are in all.
#[derive(Debug, Clone, PartialEq)]
pub struct Collected {
    /// The incidents' stored bodies (JSON text).
    pub bodies: Vec<String>,
    pub count: u32,
}

/// What one attempt did, as recorded.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptRecord {
    pub attempt: u32,
    pub started_at_ms: i64,
    pub latency_ms: i64,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    /// The first 2 KiB of the response body.
    pub response_body: Option<String>,
    pub outcome: AttemptOutcome,
    /// What the lookup before this attempt found ("found ticket 42", "none found", "failed:
    /// …"), when a `created` whose outcome was unknown looked first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lookup: Option<String>,
    /// Whether the `created` may have opened its ticket without the gateway learning it:
    /// kept on the delivery, so the next attempt looks first.
    #[serde(skip)]
    pub outcome_unknown: bool,
}

/// The ticket id and link a `created` response carried.
#[derive(Debug, Clone)]
pub struct TicketUpdate {
    pub ticket_seq: i64,
    pub id: String,
    pub url: Option<String>,
}

/// A held lease: the delivery and the token that proves this worker still holds it.
#[derive(Debug, Clone)]
pub struct Lease {
    pub delivery_id: String,
    pub token: String,
}

/// One attempt to record ([`Queue::record_attempt`]): under which lease, what it did, and
/// where it leaves the delivery (and its ticket). One value, so a backend gets named parts
/// rather than two id strings in a row that could be swapped.
#[derive(Debug, Clone)]
pub struct Attempted {
    pub lease: Lease,
    pub record: AttemptRecord,
    pub next: NextStep,
    /// The ticket a `created` opened, if its response said.
    pub ticket: Option<TicketUpdate>,
}

/// Where a delivery goes after an attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum NextStep {
    Delivered,
    RetryAt { at_ms: i64 },
    Dead { reason: String },
}

#[derive(Debug, Clone, Serialize)]
pub struct DeliveryView {
    pub id: String,
    #[serde(rename = "incidentId")]
    pub incident_id: String,
    pub connector: String,
    pub event: String,
    pub status: String,
    pub attempt_count: u32,
    pub created_at: String,
    pub updated_at: String,
    pub next_attempt_at: Option<String>,
    /// A pending delivery waits for this earlier one of its ticket (pending, or a dead
    /// `created` that needs a replay).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    pub last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<Vec<AttemptView>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AttemptView {
    pub attempt: u32,
    pub started_at: String,
    pub latency_ms: i64,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    pub response_body: Option<String>,
    pub outcome: String,
    /// What the lookup before this attempt found, when it looked first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lookup: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct IncidentView {
    #[serde(rename = "incidentId")]
    pub incident_id: String,
    pub source: String,
    pub status: String,
    pub status_change_time: String,
    pub received_at: String,
    pub updated_at: String,
    pub versions: u32,
    /// Its account (tenant): the incident's own `accountId`, so not shown twice.
    #[serde(skip)]
    pub account_id: Option<i64>,
    /// How the incident was completed (seed 000's `new` object), once it is.
    pub completion: Option<Completion>,
    pub incident: serde_json::Value,
    /// Connector name → its tickets for this incident and its deliveries (oldest first,
    /// each with its attempts).
    pub connectors: std::collections::BTreeMap<String, ConnectorView>,
}

/// One connector's side of an incident, as seed 004's `info` action shows an issue.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConnectorView {
    pub tickets: Vec<TicketView>,
    pub deliveries: Vec<DeliveryView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TicketView {
    pub correlation_key: String,
    /// What the target called the ticket (null until its `created` succeeded).
    pub ticket_id: Option<String>,
    pub ticket_url: Option<String>,
    /// `open`, or `completed`.
    pub status: String,
    pub opened_at: String,
    /// Until when later incidents with the key join this ticket (null: until completed).
    pub aggregates_until: Option<String>,
    /// Incidents on this ticket.
    pub incidents: u32,
}

/// Who calls the back channel: a source (for its own incidents) or a connector's target (for
/// incidents it has a ticket for).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Source(String),
    Connector(String),
}

/// A completion as the back channel asked for it ([`Tickets::complete`]).
#[derive(Debug, Clone)]
pub struct Completing {
    pub incident_id: String,
    pub caller: Caller,
    pub reason_code: String,
    pub notes: Option<String>,
    /// Connectors that get no `completed` (they asked for none, or they are the caller).
    pub skipping: Vec<String>,
    /// Connectors that hear of every completion, ticket or not.
    pub upstream: Vec<String>,
    /// Each ticketing connector's `close_ticket` (absent: the default).
    pub close_policies: BTreeMap<String, ClosePolicy>,
    /// Connectors that send a note (`updated`) when an incident of a ticket left open is
    /// completed; others hear nothing until the ticket closes.
    pub takes_notes: Vec<String>,
    /// The caller is a target closing its ticket, whose connector completes every open
    /// incident of that ticket with the one it names (`on_target_close = "complete_all"`).
    pub completes_all: bool,
}

/// What a completion through the back channel did.
#[derive(Debug, Clone)]
pub enum CompleteOutcome {
    NotFound,
    AlreadyCompleted {
        since: String,
    },
    Completed {
        old: serde_json::Value,
        new: serde_json::Value,
        deliveries: Vec<DeliveryRef>,
        /// The other incidents completed with it (a target closing their shared ticket).
        along: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum ResolveOutcome {
    Resolved,
    NotFound,
    NotApplicable(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum ReplayOutcome {
    Replayed,
    NotFound,
    NotDead(String),
}

#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    pub status: Option<String>,
    pub connector: Option<String>,
    pub limit: usize,
}

/// `GET /v1/deliveries`: which deliveries, newest first (by creation, then by queueing order),
/// after which key. Every filter given must hold.
#[derive(Debug, Clone, Default)]
pub struct DeliveryListing {
    /// Only deliveries of these accounts' incidents (a scoped admin token's tenants).
    pub accounts: Option<Vec<i64>>,
    pub incident: Option<String>,
    pub status: Option<String>,
    pub connector: Option<String>,
    /// Created at or after (ms).
    pub since_ms: Option<i64>,
    /// Created before (ms).
    pub until_ms: Option<i64>,
    /// The page starts after this key (the previous page's last).
    pub after: Option<DeliveryKey>,
    pub limit: usize,
}

/// Where a delivery stands in the newest-first order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryKey {
    pub created_ms: i64,
    pub seq: i64,
}

/// `GET /v1/incidents`: which incidents, newest received first, after which key.
#[derive(Debug, Clone, Default)]
pub struct IncidentListing {
    /// Only these accounts' incidents (a scoped admin token's tenants).
    pub accounts: Option<Vec<i64>>,
    pub source: Option<String>,
    /// `open` or `completed`.
    pub status: Option<String>,
    /// Received at or after (ms).
    pub since_ms: Option<i64>,
    /// Received before (ms).
    pub until_ms: Option<i64>,
    /// Only incidents with a delivery to this connector.
    pub connector: Option<String>,
    /// Only incidents whose current `incident.summary` contains this text (case-insensitive;
    /// matched by [`Store::search_incidents`], not in SQL).
    pub text: Option<String>,
    pub after: Option<IncidentKey>,
    pub limit: usize,
}

/// Where an incident stands in the newest-first order (ties by id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncidentKey {
    pub received_ms: i64,
    pub incident_id: String,
}

/// One page of a list, and the key the next page starts after (`None` on the last).
#[derive(Debug, Clone)]
pub struct Page<T, K> {
    pub items: Vec<T>,
    pub next: Option<K>,
}

/// An incident in a list: its own row, without body, tickets or deliveries.
#[derive(Debug, Clone, Serialize)]
pub struct IncidentSummary {
    #[serde(rename = "incidentId")]
    pub incident_id: String,
    pub source: String,
    pub status: String,
    pub status_change_time: String,
    pub received_at: String,
    pub updated_at: String,
    pub versions: u32,
    /// The current version's `incident.summary`, when it has one.
    pub summary: Option<String>,
}

impl IncidentSummary {
    /// Its place in the newest-first order (`received_at` keeps the milliseconds it was made
    /// from, so this is exact).
    pub fn key(&self) -> Option<IncidentKey> {
        let received = chrono::DateTime::parse_from_rfc3339(&self.received_at).ok()?;
        Some(IncidentKey {
            received_ms: received.timestamp_millis(),
            incident_id: self.incident_id.clone(),
        })
    }
}

/// What [`Ingest::ingest`] did.
#[derive(Debug, Clone)]
pub enum Ingested {
    Stored(Vec<IngestOutcome>),
    /// The request's `webhook-id` was already used by its source: nothing was stored.
    Replay,
}

/// Incidents in: store them with their deliveries, and claim signed requests' webhook-ids.
#[async_trait]
pub trait Ingest: Send + Sync {
    /// Stores a batch of incidents and their deliveries, all or nothing. A signed request's
    /// `webhook_id` is claimed in the same transaction: when `source` already used it within
    /// [`crate::model::REPLAY_WINDOW`], nothing is stored and the answer is
    /// [`Ingested::Replay`].
    ///
    /// Per incident: a version already stored is a duplicate (no deliveries); a newer one
    /// replaces it. Per route, the incident joins the open ticket of its correlation key
    /// (within the route's aggregation window), as `updated`, or opens a ticket, as
    /// `created`. A completed incident keeps later versions but opens and updates nothing.
    async fn ingest(
        &self,
        source: String,
        webhook_id: Option<String>,
        batch: Vec<NewIncident>,
    ) -> Result<Ingested, StoreError>;

    /// Whether every one of `sources` used `webhook_id` within the replay window: such a
    /// request can only be a replay, refused before its body is read. (Advisory: the claim in
    /// [`Ingest::ingest`] is what decides.) Asked before the sender is authenticated, so it
    /// never waits: when the store is busy the answer is `false`.
    async fn webhook_id_seen(
        &self,
        sources: Vec<String>,
        webhook_id: String,
    ) -> Result<bool, StoreError>;
}

/// The delivery queue, as workers use it. A delivery waits while an earlier one of its
/// connector and ticket is pending or is a dead `created`, so a ticket sees its events in
/// order; a lease token fences each attempt.
#[async_trait]
pub trait Queue: Send + Sync {
    /// After a crash: leases belong to processes, and the store has one process, so every
    /// lease left is from one that died. Its deliveries are due again — except a `created` of
    /// a connector that tracks ticket ids (`tracked`): it may have opened the ticket before
    /// the crash, and sending it again could open a second one. Such a delivery goes dead
    /// with that reason; an admin checks the target, then resolves it with the ticket's id or
    /// replays it. Returns how many were set aside so.
    async fn recover(&self, tracked: Vec<String>) -> Result<usize, StoreError>;

    /// Takes up to `limit` due deliveries for `lease_ms`, oldest due first, skipping
    /// connectors in `busy` and deliveries waiting behind an earlier one of their ticket.
    async fn lease_due(
        &self,
        limit: usize,
        lease_ms: i64,
        busy: Vec<String>,
    ) -> Result<Vec<LeasedDelivery>, StoreError>;

    /// Records one attempt and moves the delivery on, in one transaction — if this worker
    /// still holds the lease (`false` when it lost it: another worker owns the delivery now,
    /// and this attempt's outcome is discarded).
    async fn record_attempt(&self, attempt: Attempted) -> Result<bool, StoreError>;

    /// When the next delivery a worker could take falls due (ms): the earliest at the head of
    /// its (connector, ticket) line, outside `busy` connectors, not leased.
    async fn next_due_ms(&self, busy: Vec<String>) -> Result<Option<i64>, StoreError>;

    /// Gives leases (delivery id, lease token) back unused, so the deliveries are due again
    /// at once.
    async fn release(&self, leases: Vec<(String, String)>) -> Result<(), StoreError>;

    /// Pushes a held lease's end to `now + lease_ms` while its attempt runs; `false` when the
    /// lease is no longer this worker's.
    async fn extend_lease(&self, lease: Lease, lease_ms: i64) -> Result<bool, StoreError>;

    /// A dead delivery goes back to the queue, due now, its attempts kept; the retry budget
    /// starts again from here.
    async fn replay(&self, delivery_id: String) -> Result<ReplayOutcome, StoreError>;
}

/// Tickets' ends: completion through the back channel, and an admin's resolve of a dead
/// `created`.
#[async_trait]
pub trait Tickets: Send + Sync {
    /// Completes an incident: records the status, closes its open tickets (a new incident
    /// with their key opens a new ticket), and queues `completed` for each ticket's connector
    /// (but those in `skipping`) and for each `upstream` connector. One transaction. A caller
    /// completes only what it has (its own incidents, or those it has a ticket for); a second
    /// completion changes nothing.
    async fn complete(&self, request: Completing) -> Result<CompleteOutcome, StoreError>;

    /// An admin says a dead `created` did open its ticket (seen in the target): it becomes
    /// delivered with that id, and the ticket's other deliveries go on.
    async fn resolve(
        &self,
        delivery_id: String,
        ticket_id: String,
        ticket_url: Option<String>,
    ) -> Result<ResolveOutcome, StoreError>;

    /// The open tickets of `connector` whose number the target has not been learned yet:
    /// (ticket_seq, correlation key).
    async fn unnumbered_tickets(&self, connector: String)
    -> Result<Vec<(i64, String)>, StoreError>;

    /// The number the target gave a ticket, learned from its acknowledgement mail; `false`
    /// when the ticket already has one (it is never overwritten).
    async fn number_ticket(&self, ticket_seq: i64, number: String) -> Result<bool, StoreError>;
}

/// SLA clocks ([`crate::sla`]): started with their ticket (in [`Ingest::ingest`]), nudged
/// when the ticket's `created` is delivered or the ticket closes (their `next_check_ms`
/// becomes now), and moved on by the watchdog and by status reports through [`Sla::sla_save`].
#[async_trait]
pub trait Sla: Send + Sync {
    /// Up to `limit` clocks whose next check is due at `now_ms`, earliest first.
    async fn sla_due(&self, now_ms: i64, limit: usize) -> Result<Vec<SlaClockRow>, StoreError>;

    /// The earliest next check of any clock.
    async fn sla_next_check(&self) -> Result<Option<i64>, StoreError>;

    /// The clocks of every ticket the incident is on, by ticket then level.
    async fn sla_of_incident(&self, incident_id: String) -> Result<Vec<SlaClockRow>, StoreError>;

    /// The clocks of one ticket.
    async fn sla_of_ticket(&self, ticket_seq: i64) -> Result<Vec<SlaClockRow>, StoreError>;

    /// A page of clocks, newest first.
    async fn sla_list(&self, listing: SlaListing) -> Result<Vec<SlaClockRow>, StoreError>;

    /// Writes clocks back, in one transaction; per save, whether it applied (`false`: its
    /// revision had moved on, and neither it nor its alerts were written).
    async fn sla_save(&self, saves: Vec<SlaSave>) -> Result<Vec<bool>, StoreError>;
}

/// What the admin API shows: incidents with their tickets and deliveries, and deliveries.
#[async_trait]
pub trait Views: Send + Sync {
    async fn incident(&self, incident_id: String) -> Result<Option<IncidentView>, StoreError>;

    async fn deliveries(&self, filter: DeliveryFilter) -> Result<Vec<DeliveryView>, StoreError>;

    async fn delivery(&self, delivery_id: String) -> Result<Option<DeliveryView>, StoreError>;

    /// The account (tenant) of an incident: `None` when there is no such incident,
    /// `Some(None)` when it has no account.
    async fn account_of(&self, incident_id: String) -> Result<Option<Option<i64>>, StoreError>;

    /// A page of deliveries (without attempts), newest first.
    async fn list_deliveries(
        &self,
        listing: DeliveryListing,
    ) -> Result<Page<DeliveryView, DeliveryKey>, StoreError>;

    /// A page of incidents, newest received first.
    async fn list_incidents(
        &self,
        listing: IncidentListing,
    ) -> Result<Page<IncidentSummary, IncidentKey>, StoreError>;
}

/// Whether the store answers (`/readyz`).
#[async_trait]
pub trait Health: Send + Sync {
    async fn ready(&self) -> Result<(), StoreError>;
}

/// A whole store: what a backend implements.
/// What operators change while the gateway runs: paused connectors, bulk replay, and the
/// queue's size per connector.
#[async_trait]
pub trait Operate: Send + Sync {
    /// Pauses `connector` (with `note`) or, with `None`, resumes it; `false` when resuming a
    /// connector that was not paused.
    async fn set_paused(
        &self,
        connector: String,
        note: Option<PauseNote>,
    ) -> Result<bool, StoreError>;

    /// Every connector paused through the admin API (shared by every process on the store).
    async fn paused(&self) -> Result<Vec<PauseNote>, StoreError>;

    /// Dead deliveries `filter` selects, oldest death first, with how their last attempt
    /// ended (for the error class).
    async fn dead(&self, filter: DeadFilter) -> Result<Vec<DeadDelivery>, StoreError>;

    /// Pending deliveries per connector: how many, and when the oldest due one was due.
    async fn queue_depths(&self) -> Result<Vec<QueueDepth>, StoreError>;

    /// Dead deliveries per connector (connectors with none are left out), for `/metrics`.
    async fn dead_counts(&self) -> Result<Vec<(String, i64)>, StoreError>;

    /// One batch of retention, in one transaction: of the next `request.batch` incidents
    /// (oldest change first, after `request.after`), those whose work is finished and old
    /// are deleted with their versions, deliveries, attempts and ticket links, and then
    /// their tickets that hold no incident any more. Finished: every delivery delivered (or,
    /// with a dead cut-off, dead — but never a dead `created` that later deliveries of its
    /// ticket wait behind), and every ticket it is on closed before the ticket cut-off or, for
    /// a completed incident, still open. An open incident on an open ticket stays: its
    /// completion may still come and counts toward closing the ticket. An open ticket's row
    /// always stays: it is what later incidents of its key join.
    async fn purge(&self, request: PurgeRequest) -> Result<Purged, StoreError>;

    /// Gives the space freed by purges back to the file system where the backend holds it
    /// (SQLite: free pages and the WAL); nothing where the database server does that itself.
    async fn compact(&self) -> Result<(), StoreError>;
}

/// One batch of retention: the cut-offs (ms since the epoch) and where the pass stands.
#[derive(Debug, Clone)]
pub struct PurgeRequest {
    /// Delivered deliveries last changed before this, of incidents last changed before it,
    /// may go.
    pub delivered_before_ms: i64,
    /// Dead deliveries last changed before this may go too; `None`: dead ones stay.
    pub dead_before_ms: Option<i64>,
    /// An incident goes only when each ticket it is on is closed, since before this (later,
    /// an incident of its key may still reopen it).
    pub tickets_closed_before_ms: i64,
    /// Incidents looked at in this batch at most.
    pub batch: usize,
    /// The last incident the previous batch of this pass looked at; `None`: a new pass.
    pub after: Option<PurgeCursor>,
}

/// An incident's place in the order a purge pass walks: oldest change first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgeCursor {
    pub updated_ms: i64,
    pub incident_id: String,
}

/// What one purge batch deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Purged {
    pub incidents: u64,
    /// Every row deleted, the incidents' included.
    pub rows: u64,
    /// Where the next batch of this pass starts; `None`: the pass looked at every old incident.
    pub next: Option<PurgeCursor>,
}

/// A connector paused through the admin API.
#[derive(Debug, Clone, Serialize)]
pub struct PauseNote {
    pub connector: String,
    pub since_ms: i64,
    pub reason: Option<String>,
}

/// Which dead deliveries a bulk replay takes.
#[derive(Debug, Clone, Default)]
pub struct DeadFilter {
    /// Only deliveries of these accounts' incidents (a scoped admin token's tenants).
    pub accounts: Option<Vec<i64>>,
    pub connector: Option<String>,
    /// Died at or after (ms since the epoch).
    pub since_ms: Option<i64>,
    /// Died before.
    pub until_ms: Option<i64>,
    pub limit: usize,
}

/// A dead delivery and how its last attempt ended.
#[derive(Debug, Clone)]
pub struct DeadDelivery {
    pub delivery_id: String,
    pub connector: String,
    /// The last attempt's HTTP status, if it got one.
    pub status_code: Option<u16>,
    /// Whether any attempt was recorded (a render failure records none).
    pub attempted: bool,
}

/// One connector's pending deliveries.
#[derive(Debug, Clone, Serialize)]
pub struct QueueDepth {
    pub connector: String,
    pub pending: i64,
    /// The due time of its earliest due delivery (ms), if any is due now.
    pub oldest_due_ms: Option<i64>,
}

pub trait Backend: Ingest + Queue + Tickets + Views + Health + Operate + Sla {}

impl<T: Ingest + Queue + Tickets + Views + Health + Operate + Sla> Backend for T {}

/// The handle callers hold: cheap to clone, whatever the backend.
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
}

impl Store {
    pub fn new(backend: Arc<dyn Backend>) -> Store {
        Store { backend }
    }

    /// Opens (creating if needed) the SQLite store at `path`.
    pub fn open_sqlite(path: &Path) -> Result<Store, StoreError> {
        Ok(Store::new(Arc::new(sqlite::Sqlite::open(path)?)))
    }

    /// Connects to PostgreSQL and brings its schema up to date.
    pub async fn open_postgres(config: &PostgresConfig) -> Result<Store, StoreError> {
        Ok(Store::new(Arc::new(
            postgres::Postgres::open(config).await?,
        )))
    }

    /// Opens the store `config` names.
    pub async fn open(config: &StorageConfig) -> Result<Store, StoreError> {
        match config {
            StorageConfig::Sqlite { path } => Store::open_sqlite(path),
            StorageConfig::Postgres(pg) => Store::open_postgres(pg).await,
        }
    }

    /// See [`Health::ready`].
    pub async fn ready(&self) -> Result<(), StoreError> {
        self.backend.ready().await
    }

    /// See [`Queue::recover`].
    pub async fn recover(&self, tracked: Vec<String>) -> Result<usize, StoreError> {
        self.backend.recover(tracked).await
    }

    /// See [`Tickets::resolve`].
    pub async fn resolve(
        &self,
        delivery_id: String,
        ticket_id: String,
        ticket_url: Option<String>,
    ) -> Result<ResolveOutcome, StoreError> {
        self.backend
            .resolve(delivery_id, ticket_id, ticket_url)
            .await
    }

    /// See [`Tickets::unnumbered_tickets`].
    pub async fn unnumbered_tickets(
        &self,
        connector: String,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        self.backend.unnumbered_tickets(connector).await
    }

    /// See [`Tickets::number_ticket`].
    pub async fn number_ticket(&self, ticket_seq: i64, number: String) -> Result<bool, StoreError> {
        self.backend.number_ticket(ticket_seq, number).await
    }

    /// See [`Ingest::ingest`].
    pub async fn ingest(
        &self,
        source: String,
        webhook_id: Option<String>,
        batch: Vec<NewIncident>,
    ) -> Result<Ingested, StoreError> {
        self.backend.ingest(source, webhook_id, batch).await
    }

    /// See [`Ingest::webhook_id_seen`].
    pub async fn webhook_id_seen(
        &self,
        sources: Vec<String>,
        webhook_id: String,
    ) -> Result<bool, StoreError> {
        self.backend.webhook_id_seen(sources, webhook_id).await
    }

    /// See [`Queue::lease_due`].
    pub async fn lease_due(
        &self,
        limit: usize,
        lease_ms: i64,
        busy: Vec<String>,
    ) -> Result<Vec<LeasedDelivery>, StoreError> {
        self.backend.lease_due(limit, lease_ms, busy).await
    }

    /// See [`Queue::record_attempt`].
    pub async fn record_attempt(
        &self,
        delivery_id: String,
        lease_token: String,
        record: AttemptRecord,
        next: NextStep,
        ticket: Option<TicketUpdate>,
    ) -> Result<bool, StoreError> {
        let lease = Lease {
            delivery_id,
            token: lease_token,
        };
        self.backend
            .record_attempt(Attempted {
                lease,
                record,
                next,
                ticket,
            })
            .await
    }

    /// See [`Queue::next_due_ms`].
    pub async fn next_due_ms(&self, busy: Vec<String>) -> Result<Option<i64>, StoreError> {
        self.backend.next_due_ms(busy).await
    }

    /// See [`Queue::release`].
    pub async fn release(&self, leases: Vec<(String, String)>) -> Result<(), StoreError> {
        self.backend.release(leases).await
    }

    /// See [`Queue::extend_lease`].
    pub async fn extend_lease(
        &self,
        delivery_id: String,
        lease_token: String,
        lease_ms: i64,
    ) -> Result<bool, StoreError> {
        let lease = Lease {
            delivery_id,
            token: lease_token,
        };
        self.backend.extend_lease(lease, lease_ms).await
    }

    /// See [`Queue::replay`].
    pub async fn replay(&self, delivery_id: String) -> Result<ReplayOutcome, StoreError> {
        self.backend.replay(delivery_id).await
    }

    /// See [`Tickets::complete`].
    pub async fn complete(&self, request: Completing) -> Result<CompleteOutcome, StoreError> {
        self.backend.complete(request).await
    }

    /// See [`Views::incident`].
    pub async fn incident(&self, incident_id: String) -> Result<Option<IncidentView>, StoreError> {
        self.backend.incident(incident_id).await
    }

    /// See [`Views::deliveries`].
    pub async fn deliveries(
        &self,
        filter: DeliveryFilter,
    ) -> Result<Vec<DeliveryView>, StoreError> {
        self.backend.deliveries(filter).await
    }

    /// See [`Views::delivery`].
    /// See [`Operate::set_paused`].
    pub async fn set_paused(
        &self,
        connector: String,
        note: Option<PauseNote>,
    ) -> Result<bool, StoreError> {
        self.backend.set_paused(connector, note).await
    }

    /// See [`Operate::paused`].
    pub async fn paused(&self) -> Result<Vec<PauseNote>, StoreError> {
        self.backend.paused().await
    }

    /// See [`Operate::dead`].
    pub async fn dead(&self, filter: DeadFilter) -> Result<Vec<DeadDelivery>, StoreError> {
        self.backend.dead(filter).await
    }

    /// See [`Operate::queue_depths`].
    pub async fn queue_depths(&self) -> Result<Vec<QueueDepth>, StoreError> {
        self.backend.queue_depths().await
    }

    /// See [`Operate::dead_counts`].
    pub async fn dead_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        self.backend.dead_counts().await
    }

    /// See [`Operate::purge`].
    pub async fn purge(&self, request: PurgeRequest) -> Result<Purged, StoreError> {
        self.backend.purge(request).await
    }

    /// See [`Operate::compact`].
    pub async fn compact(&self) -> Result<(), StoreError> {
        self.backend.compact().await
    }

    pub async fn delivery(&self, delivery_id: String) -> Result<Option<DeliveryView>, StoreError> {
        self.backend.delivery(delivery_id).await
    }

    /// See [`Views::account_of`].
    pub async fn account_of(&self, incident_id: String) -> Result<Option<Option<i64>>, StoreError> {
        self.backend.account_of(incident_id).await
    }

    /// See [`Views::list_deliveries`].
    pub async fn list_deliveries(
        &self,
        listing: DeliveryListing,
    ) -> Result<Page<DeliveryView, DeliveryKey>, StoreError> {
        self.backend.list_deliveries(listing).await
    }

    /// See [`Sla::sla_due`].
    pub async fn sla_due(&self, now_ms: i64, limit: usize) -> Result<Vec<SlaClockRow>, StoreError> {
        self.backend.sla_due(now_ms, limit).await
    }

    /// See [`Sla::sla_next_check`].
    pub async fn sla_next_check(&self) -> Result<Option<i64>, StoreError> {
        self.backend.sla_next_check().await
    }

    /// See [`Sla::sla_of_incident`].
    pub async fn sla_of_incident(
        &self,
        incident_id: String,
    ) -> Result<Vec<SlaClockRow>, StoreError> {
        self.backend.sla_of_incident(incident_id).await
    }

    /// See [`Sla::sla_of_ticket`].
    pub async fn sla_of_ticket(&self, ticket_seq: i64) -> Result<Vec<SlaClockRow>, StoreError> {
        self.backend.sla_of_ticket(ticket_seq).await
    }

    /// See [`Sla::sla_list`].
    pub async fn sla_list(&self, listing: SlaListing) -> Result<Vec<SlaClockRow>, StoreError> {
        self.backend.sla_list(listing).await
    }

    /// See [`Sla::sla_save`].
    pub async fn sla_save(&self, saves: Vec<SlaSave>) -> Result<Vec<bool>, StoreError> {
        self.backend.sla_save(saves).await
    }

    /// See [`Views::list_incidents`]; a `text` search reads at most [`SEARCH_WINDOW`]
    /// incidents (see [`Store::search_incidents`]).
    pub async fn list_incidents(
        &self,
        listing: IncidentListing,
    ) -> Result<Page<IncidentSummary, IncidentKey>, StoreError> {
        self.search_incidents(listing, SEARCH_WINDOW).await
    }

    /// The incidents of `listing` whose summary contains its `text` (case-insensitive), read
    /// `window` at most: the rows the other filters give are read a page at a time and their
    /// summaries matched here. No index serves a substring, so a search that finds little
    /// would read the whole table (482 ms at 100,000, holding SQLite's one reader); instead it
    /// stops after `window` rows, its page short, its cursor where the reading stopped.
    pub async fn search_incidents(
        &self,
        listing: IncidentListing,
        window: usize,
    ) -> Result<Page<IncidentSummary, IncidentKey>, StoreError> {
        let Some(wanted) = listing
            .text
            .as_deref()
            .filter(|t| !t.is_empty())
            .map(str::to_lowercase)
        else {
            return self.backend.list_incidents(listing).await;
        };
        let size = listing::page_size(listing.limit);
        let mut found: Vec<IncidentSummary> = Vec::new();
        let mut read = 0;
        let mut after = listing.after.clone();
        // A page's worth first (a common word fills it at once), then more each time.
        let mut chunk = size + 1;
        loop {
            chunk = chunk
                .min(window.saturating_sub(read))
                .clamp(1, listing::MAX_LIMIT);
            let page = self
                .backend
                .list_incidents(IncidentListing {
                    text: None,
                    after: after.clone(),
                    limit: chunk,
                    ..listing.clone()
                })
                .await?;
            read += page.items.len();
            for item in page.items {
                let hit = item
                    .summary
                    .as_deref()
                    .is_some_and(|s| s.to_lowercase().contains(&wanted));
                if !hit {
                    continue;
                }
                found.push(item);
                if found.len() == size {
                    // A full page: it goes on from its last (the next may find none; reading on
                    // only to learn that would cost up to a window).
                    let next = found.last().and_then(IncidentSummary::key);
                    return Ok(Page { items: found, next });
                }
            }
            match page.next {
                None => {
                    return Ok(Page {
                        items: found,
                        next: None,
                    });
                }
                Some(next) if read >= window => {
                    return Ok(Page {
                        items: found,
                        next: Some(next),
                    });
                }
                Some(next) => {
                    after = Some(next);
                    chunk *= 4;
                }
            }
        }
    }
}

/// The most incidents one summary search reads (see [`Store::search_incidents`]).
pub const SEARCH_WINDOW: usize = 2_000;
