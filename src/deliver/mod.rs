//! Deliver: workers lease due deliveries and move each attempt through small steps, each
//! a unit of its own:
//!
//! 1. [`prepare`] — render → stamp → sign (HTTP) or render → build the threaded message
//!    (SMTP), on a render thread within the render budget;
//! 2. [`egress`] — check where the request may go;
//! 3. [`http`] / [`smtp`] — send, and classify what came back; [`oauth`] — the OAuth2 token
//!    an HTTP connector's requests carry, fetched, cached and refreshed;
//! 4. [`retry`] — schedule: delivered, retry at a time, or dead;
//! 5. [`record`] — the attempt record (secrets masked), the ticket id a `created` response
//!    named, the log line; then the store commits it under the delivery's lease.
//!
//! Delivery is at least once: a crash between a send and its record sends again, with the
//! same `webhook-id`, so receivers can drop the repeat.

pub mod circuit;
pub mod egress;
pub mod http;
pub mod lookup;
pub mod oauth;
pub mod prepare;
pub mod record;
pub mod retry;
pub mod smtp;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::connector::{self, Connector, HttpTarget, Target};
use crate::model::{self, Event};
use crate::render::{self, Renderer};
use crate::secrets::Secrets;
use crate::store::{AttemptRecord, LeasedDelivery, NextStep, Store, TicketUpdate};

use self::http::{SendResult, Verdict};
use self::lookup::Looked;
use self::prepare::{AttemptFacts, Outgoing, Unprepared};

/// What an attempt did, up to what came back.
struct Tried {
    verdict: Verdict,
    /// The answer the record keeps: the `created`'s, or the lookup's when nothing else was
    /// sent.
    sent: SendResult,
    /// The ticket a `created` (or the lookup before it) named.
    ticket: Option<TicketUpdate>,
    /// What the lookup before it found.
    lookup: Option<String>,
    /// Whether a `created` may now have opened its ticket unbeknown to the gateway.
    outcome_unknown: bool,
}

impl AttemptFacts {
    /// The facts of the next attempt of a leased delivery (its collected incidents read
    /// back, which fails only for a stored body that is not JSON).
    pub fn of(delivery: &LeasedDelivery) -> Result<AttemptFacts, Unprepared> {
        Ok(AttemptFacts {
            event: delivery.event,
            delivery_id: delivery.id.clone(),
            attempt: delivery.attempts + 1,
            received_at_ms: delivery.received_at_ms,
            ticket: delivery.ticket.clone(),
            completion: delivery.completion.clone(),
            collected: prepare::stored_collection(delivery.collected.as_ref())?,
        })
    }
}

/// Whether `delivery` is a follow-up mail that must wait for the number its ticketing
/// system gave the ticket (learned by the connector's lookup) before it can thread there.
fn awaits_number(connector: &Connector, delivery: &LeasedDelivery) -> bool {
    connector.threading().is_some()
        && delivery.event != Event::Created
        && delivery.ticket.id.is_none()
}

/// Why an attempt ended before anything was sent. Final: dead with this reason.
#[derive(Debug, thiserror::Error)]
pub enum NotSent {
    #[error(transparent)]
    Unprepared(#[from] Unprepared),
    #[error("render failed: it took longer than delivery.render_budget ({})", humantime::format_duration(*.0))]
    OverBudget(Duration),
    #[error("render failed: the render pool is closed")]
    PoolClosed,
    #[error("render failed: {0}")]
    Panicked(#[source] tokio::task::JoinError),
    #[error("connector {0:?} is no longer configured")]
    ConnectorGone(String),
    #[error("no {0} for this connector")]
    NoTransport(&'static str),
}

/// Why the workers cannot start: a connector's client or transport cannot be built.
#[derive(Debug, thiserror::Error)]
#[error("connector {connector}: {source}")]
pub struct SetupError {
    pub connector: String,
    #[source]
    pub source: SetupFailure,
}

#[derive(Debug, thiserror::Error)]
pub enum SetupFailure {
    #[error("cannot read {path}: {source}")]
    ReadCa {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    HttpCa {
        path: std::path::PathBuf,
        source: reqwest::Error,
    },
    #[error("{path}: client certificate: {source}")]
    Identity {
        path: std::path::PathBuf,
        source: reqwest::Error,
    },
    #[error("HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),
    #[error("{path}: {source}")]
    SmtpCa {
        path: std::path::PathBuf,
        source: lettre::transport::smtp::Error,
    },
    #[error("TLS parameters: {0}")]
    SmtpTls(#[source] lettre::transport::smtp::Error),
}

/// A CA file a connector trusts, read at start.
fn read_ca(path: &std::path::Path) -> Result<Vec<u8>, SetupFailure> {
    std::fs::read(path).map_err(|source| SetupFailure::ReadCa {
        path: path.to_path_buf(),
        source,
    })
}

/// `[delivery]`: how the workers send. `config` builds it.
#[derive(Debug, Clone, Copy)]
pub struct DeliveryConfig {
    /// Deliveries sent at once across all connectors; `None`: the sum of the connectors' own
    /// `concurrency`, so no connector's sends can take another's share.
    pub concurrency: Option<usize>,
    /// How long a worker holds a delivery before another may take it. The worker renews it
    /// every third of this while the attempt runs, so only a dead or stalled process loses it.
    pub lease: Duration,
    /// How long one delivery's render may take (templates and helpers); past it the delivery
    /// is dead with that reason (the same input would cost the same again).
    pub render_budget: Duration,
    /// Renders run on this many blocking threads at most, off the async runtime, so the
    /// listener and `/healthz` keep answering however costly a render is.
    pub render_threads: usize,
}

/// The workers' shared parts.
#[derive(Clone)]
pub struct Deliverer {
    pub settings: DeliveryConfig,
    /// How long shutdown waits for sends under way (`server.shutdown_grace`).
    pub shutdown_grace: Duration,
    /// The connectors deliveries are for.
    pub connectors: Arc<Vec<Connector>>,
    /// Masked in whatever is recorded or logged (dead reasons, errors, response bodies).
    pub secrets: Arc<Secrets>,
    pub renderer: Arc<Renderer>,
    pub store: Store,
    /// One HTTP client per HTTP connector: its own resolver (egress checks), redirects, CAs,
    /// client certificate.
    pub clients: Arc<HashMap<String, reqwest::Client>>,
    /// The OAuth2 token source of each connector with `[connectors.oauth2]`.
    pub tokens: Arc<HashMap<String, oauth::TokenSource>>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Rung by ingress and replay so new work starts without waiting for the next poll.
    pub wake: Arc<Notify>,
    /// One pooled SMTP transport per SMTP connector.
    pub mailers: Arc<HashMap<String, smtp::Transport>>,
    /// Permits for renders on blocking threads: `delivery.render_threads` at once.
    pub renders: Arc<Semaphore>,
    /// The kit in force: each attempt runs on the kit it was leased under (the fields above
    /// are that kit's).
    pub live: Arc<dyn Supply>,
    /// Each connector's circuit breaker (this process's view of its target's health).
    pub circuits: Arc<circuit::Circuits>,
    /// Each connector's alert (a failing destination never fails silently).
    pub alerts: Arc<crate::alert::Alerts>,
}

/// An attempt's error as an operator reads it: the error, else the status.
fn last_error(record: &AttemptRecord) -> String {
    match (&record.error, record.status_code) {
        (Some(e), _) => e.clone(),
        (None, Some(status)) => format!("HTTP {status}"),
        (None, None) => String::new(),
    }
}

/// What the workers send with: the connectors of the config in force and what was built from
/// them. `reload` builds one per loaded config and swaps it whole.
pub struct Kit {
    /// 1 for the config the process started with, one more per reload.
    pub number: u64,
    pub connectors: Arc<Vec<Connector>>,
    pub secrets: Arc<Secrets>,
    pub renderer: Arc<Renderer>,
    pub clients: Arc<HashMap<String, reqwest::Client>>,
    pub tokens: Arc<HashMap<String, oauth::TokenSource>>,
    pub mailers: Arc<HashMap<String, smtp::Transport>>,
    pub alerts: crate::alert::AlertConfig,
}

/// Where the workers find the kit in force, and the connectors held from outside them.
pub trait Supply: Send + Sync {
    fn kit(&self) -> Arc<Kit>;
    /// Connectors paused (in the config or through the admin API).
    fn paused(&self, kit: &Kit) -> Vec<String>;
}

/// An HTTP client for every HTTP connector.
pub fn clients(connectors: &[Connector]) -> Result<HashMap<String, reqwest::Client>, SetupError> {
    let mut out = HashMap::new();
    for c in connectors {
        // An SMTP connector's client sends only its lookup.
        let egress = match &c.target {
            Target::Http(http) => &http.egress,
            Target::Smtp(smtp) if smtp.lookup.is_some() => &smtp.lookup_egress,
            Target::Smtp(_) => continue,
        };
        let client = egress::client(egress).map_err(|source| SetupError {
            connector: c.name.clone(),
            source,
        })?;
        out.insert(c.name.clone(), client);
    }
    Ok(out)
}

/// A token source for every connector with `[connectors.oauth2]`, fetching with the
/// connector's own client (`clients`), so its egress rules apply to the token URL too.
pub fn token_sources(
    connectors: &[Connector],
    clients: &HashMap<String, reqwest::Client>,
) -> HashMap<String, oauth::TokenSource> {
    connectors
        .iter()
        .filter_map(|c| match &c.target {
            Target::Http(http) => {
                let HttpTarget {
                    oauth2: Some(settings),
                    egress,
                    ..
                } = http.as_ref()
                else {
                    return None;
                };
                let client = clients.get(&c.name)?.clone();
                let source = oauth::TokenSource::new(
                    &c.name,
                    settings.clone(),
                    client,
                    egress.clone(),
                    c.timeout,
                );
                Some((c.name.clone(), source))
            }
            _ => None,
        })
        .collect()
}

/// A pooled transport for every SMTP connector.
pub fn mailers(connectors: &[Connector]) -> Result<HashMap<String, smtp::Transport>, SetupError> {
    let mut out = HashMap::new();
    for c in connectors {
        if let Target::Smtp(s) = &c.target {
            let t = smtp::transport(c, s).map_err(|source| SetupError {
                connector: c.name.clone(),
                source,
            })?;
            out.insert(c.name.clone(), t);
        }
    }
    Ok(out)
}

/// How long past its budget a render may run between helper calls before it is abandoned.
const RENDER_BUDGET_GRACE: Duration = Duration::from_secs(1);

/// How long an idle worker sleeps before it looks again (a wake comes sooner).
const IDLE_POLL: Duration = Duration::from_millis(1000);

impl Deliverer {
    /// This deliverer on `generation`: its connectors, templates, clients and transports.
    fn on(&self, kit: &Kit) -> Deliverer {
        Deliverer {
            connectors: kit.connectors.clone(),
            secrets: kit.secrets.clone(),
            renderer: kit.renderer.clone(),
            clients: kit.clients.clone(),
            tokens: kit.tokens.clone(),
            mailers: kit.mailers.clone(),
            ..self.clone()
        }
    }

    /// Takes and sends deliveries until `shutdown`, then waits up to the configured grace
    /// for sends under way. At most each connector's own `concurrency` sends run for it, and
    /// at most `delivery.concurrency` in all — by default the sum of the connectors', so a
    /// receiver that hangs holds only its own connector's sends, never another's.
    pub async fn run(self, shutdown: CancellationToken) {
        let sending = Arc::new(AtomicUsize::new(0));
        let in_flight: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let tracker = TaskTracker::new();
        let lease_ms = self.settings.lease.as_millis().min(i64::MAX as u128) as i64;
        // Connectors some queued deliveries name that the config in force does not: their
        // deliveries stay queued, untouched, until a reload brings the connector back.
        let mut orphans: std::collections::HashSet<String> = Default::default();
        let mut generation = 0;
        while !shutdown.is_cancelled() {
            let current = self.live.kit();
            if current.number != generation {
                generation = current.number;
                orphans.clear();
            }
            let this = self.on(&current);
            let limit = self
                .settings
                .concurrency
                .unwrap_or_else(|| this.connectors.iter().map(|c| c.concurrency).sum());
            let free = limit.saturating_sub(sending.load(Ordering::Acquire));
            if free == 0 {
                // A send ending wakes the loop.
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(IDLE_POLL) => {}
                }
                continue;
            }
            let (busy, probing) = self.held(&this, &current, &in_flight, &orphans);
            let leased = match self.store.lease_due(free, lease_ms, busy.clone()).await {
                Ok(leased) => leased,
                Err(e) => {
                    tracing::error!(error = %e, "cannot lease deliveries");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(IDLE_POLL) => continue,
                    }
                }
            };
            let took = leased.len();
            let mut give_back = Vec::new();
            for delivery in leased {
                if this.connector(&delivery.connector).is_none() {
                    if orphans.insert(delivery.connector.clone()) {
                        tracing::warn!(
                            connector = %delivery.connector,
                            delivery = %delivery.id,
                            incident = %delivery.incident_id,
                            "deliveries for a connector the config no longer has stay queued until it comes back"
                        );
                    }
                    give_back.push((delivery.id, delivery.lease_token));
                    continue;
                }
                let cap = probing
                    .get(&delivery.connector)
                    .copied()
                    .unwrap_or_else(|| this.connector_cap(&delivery.connector));
                {
                    let Ok(mut counts) = in_flight.lock() else {
                        break;
                    };
                    let n = counts.entry(delivery.connector.clone()).or_default();
                    if *n >= cap {
                        give_back.push((delivery.id, delivery.lease_token));
                        continue;
                    }
                    *n += 1;
                }
                // Only this loop adds, and it leased at most `free`: never past the limit.
                sending.fetch_add(1, Ordering::AcqRel);
                self.circuits.started(&delivery.connector);
                let me = this.clone();
                let in_flight = in_flight.clone();
                let sending = sending.clone();
                tracker.spawn(async move {
                    let connector = delivery.connector.clone();
                    me.deliver(delivery).await;
                    if let Ok(mut counts) = in_flight.lock()
                        && let Some(n) = counts.get_mut(&connector)
                    {
                        *n = n.saturating_sub(1);
                    }
                    sending.fetch_sub(1, Ordering::AcqRel);
                    // A retry may now be due soon, or a follower unblocked: look again.
                    me.wake.notify_one();
                });
            }
            if !give_back.is_empty()
                && let Err(e) = self.store.release(give_back).await
            {
                tracing::warn!(error = %e, "cannot give leases back; they expire by themselves");
            }
            if took < free {
                let (busy, _) = self.held(&this, &current, &in_flight, &orphans);
                let wait = match self.store.next_due_ms(busy).await {
                    Ok(Some(due)) => Duration::from_millis(
                        (due - model::now_ms()).clamp(0, IDLE_POLL.as_millis() as i64) as u64,
                    ),
                    _ => IDLE_POLL,
                };
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
        tracker.close();
        if tokio::time::timeout(self.shutdown_grace, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "shutdown grace ran out with sends under way: at the next start each is tried again, except a created of a connector that tracks tickets without a lookup, which is set aside dead (its ticket may exist) for an admin to resolve or replay"
            );
        }
    }

    /// Prepare (render → stamp → sign, or build the mail) on a blocking thread of the render
    /// pool within `delivery.render_budget`: template work never holds an async worker
    /// thread, and a costly render ends at its budget, dead with that reason (the same input
    /// would cost the same again).
    async fn prepare_off_runtime(
        &self,
        delivery: &LeasedDelivery,
        started_at_ms: i64,
    ) -> Result<(Outgoing, Option<render::RenderedRequest>), NotSent> {
        let budget = self.settings.render_budget;
        let Ok(permit) = self.renders.clone().acquire_owned().await else {
            return Err(NotSent::PoolClosed);
        };
        let (renderer, connectors, delivery) = (
            self.renderer.clone(),
            self.connectors.clone(),
            delivery.clone(),
        );
        let task = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let connector = connector::find(&connectors, &delivery.connector)
                .ok_or_else(|| NotSent::ConnectorGone(delivery.connector.clone()))?;
            render::bounds::with_budget(budget, || {
                let incident = prepare::stored_incident(&delivery.incident_body)?;
                let facts = AttemptFacts::of(&delivery)?;
                let look_first = (delivery.event == Event::Created && delivery.outcome_unknown)
                    || awaits_number(connector, &delivery);
                prepare::prepare_looking_first(
                    &renderer,
                    connector,
                    &incident,
                    &facts,
                    started_at_ms / 1000,
                    look_first,
                )
                .map_err(|e| match render::bounds::budget_spent() {
                    // A helper stopped at the budget: say so, not what it was doing.
                    true => NotSent::OverBudget(budget),
                    false => e.into(),
                })
            })
        });
        // Helpers stop at the budget; this bounds whatever runs between helper calls too.
        match tokio::time::timeout(budget.saturating_add(RENDER_BUDGET_GRACE), task).await {
            Err(_) => Err(NotSent::OverBudget(budget)),
            Ok(Err(panicked)) => Err(NotSent::Panicked(panicked)),
            Ok(Ok(result)) => result,
        }
    }

    /// Egress check → send → classify → read the ticket id, for a prepared request.
    async fn post(
        &self,
        connector: &Connector,
        target: &HttpTarget,
        delivery: &LeasedDelivery,
        request: render::RenderedRequest,
    ) -> (Verdict, SendResult, Option<TicketUpdate>) {
        // A created response names the ticket: keep enough of it to find the id.
        let keep = if delivery.event == Event::Created && connector.ticket_id.is_some() {
            http::TICKET_RESPONSE_BYTES
        } else {
            http::RESPONSE_PREFIX_BYTES * 2
        };
        let sent = self
            .send_checked(connector, &target.egress, &request, keep)
            .await;
        let sent = http::with_target_reason(sent, &connector.error_message);
        let verdict = http::classify(&sent);
        let (verdict, found) = record::found_ticket(connector, delivery, verdict, &sent);
        (verdict, sent, found)
    }

    /// Egress check → send, keeping `keep` bytes of the answer.
    async fn send_checked(
        &self,
        connector: &Connector,
        egress: &connector::Egress,
        request: &render::RenderedRequest,
        keep: usize,
    ) -> SendResult {
        let refused = reqwest::Url::parse(&request.url)
            .map_err(|e| egress::Refused(e.to_string()))
            .and_then(|url| egress::check_url(egress, &url));
        let client = self.clients.get(&connector.name);
        let not_sent = |failure| http::SendResult::failed(failure, Duration::ZERO);
        let client = match (refused, client) {
            (Err(refused), _) => return not_sent(http::SendFailure::Refused(refused.0)),
            (Ok(()), None) => {
                return not_sent(http::SendFailure::Unsendable(
                    "no HTTP client for this connector".into(),
                ));
            }
            (Ok(()), Some(client)) => client,
        };
        let Some(tokens) = self.tokens.get(&connector.name) else {
            return http::send(client, request, None, connector.timeout, keep).await;
        };
        let started = std::time::Instant::now();
        let token = match tokens.token().await {
            Ok(token) => token,
            Err(e) => return http::SendResult::failed(e.into_failure(), started.elapsed()),
        };
        let sent = http::send(
            client,
            request,
            Some(token.value()),
            connector.timeout,
            keep,
        )
        .await;
        let mut sent = oauth::hide_token(sent, token.value());
        // The token's fetch is part of the attempt's time.
        sent.latency = started.elapsed();
        if let Some(status) = sent.status
            && tokens.answered(&token, status) == Some(oauth::Unauthorized::Stale)
        {
            sent.failure = Some(http::SendFailure::StaleToken(
                "HTTP 401: the target refused the OAuth2 token; the next attempt fetches a new one"
                    .into(),
            ));
        }
        sent
    }

    /// The lookup before a `created` whose outcome is unknown: what it found, and its answer.
    async fn look_up(
        &self,
        connector: &Connector,
        lookup: &connector::Lookup,
        request: render::RenderedRequest,
    ) -> (Looked, SendResult) {
        let egress = match &connector.target {
            Target::Http(http) => &http.egress,
            Target::Smtp(smtp) => &smtp.lookup_egress,
        };
        let sent = self
            .send_checked(connector, egress, &request, http::TICKET_RESPONSE_BYTES)
            .await;
        let sent = http::with_target_reason(sent, &connector.error_message);
        (lookup::read_answer(lookup, &sent), sent)
    }

    /// Send over the connector's pool; the `created` mail's Message-ID is the ticket's id.
    async fn mail(
        &self,
        connector: &Connector,
        delivery: &LeasedDelivery,
        message: lettre::Message,
        message_id: String,
    ) -> Result<(Verdict, SendResult, Option<TicketUpdate>), NotSent> {
        let transport = self
            .mailers
            .get(&connector.name)
            .ok_or(NotSent::NoTransport("SMTP transport"))?;
        let (sent, verdict) = smtp::send(transport, message).await;
        // A mail into a ticketing system that threads by its own number: the number, learned
        // by the lookup, is the ticket's id, not the Message-ID.
        let threads_by_number = connector.threading().is_some();
        let found = match (&verdict, delivery.event, delivery.ticket_seq) {
            (Verdict::Delivered, Event::Created, Some(ticket_seq)) if !threads_by_number => {
                Some(TicketUpdate {
                    ticket_seq,
                    id: message_id,
                    url: None,
                })
            }
            _ => None,
        };
        Ok((verdict, sent, found))
    }

    /// Renews the delivery's lease every third of its length while its attempt runs, so no
    /// other worker takes it however long the attempt waits for a render thread or a
    /// receiver. Returns when the lease is lost, or may be about to be: when renewals have
    /// failed (or hung) until a third of the lease is left, the attempt is given up before
    /// another worker could take the delivery and send it a second time.
    async fn keep_lease(&self, delivery: &LeasedDelivery) {
        let lease = self.settings.lease;
        let lease_ms = lease.as_millis().min(i64::MAX as u128) as i64;
        let mut held_until = tokio::time::Instant::now() + lease;
        loop {
            tokio::time::sleep(lease / 3).await;
            let renewal = self.store.extend_lease(
                delivery.id.clone(),
                delivery.lease_token.clone(),
                lease_ms,
            );
            let asked_at = tokio::time::Instant::now();
            match tokio::time::timeout(lease / 3, renewal).await {
                Ok(Ok(true)) => held_until = asked_at + lease,
                Ok(Ok(false)) => return,
                Ok(Err(e)) => {
                    tracing::warn!(delivery = %delivery.id, incident = %delivery.incident_id,
                        connector = %delivery.connector, error = %e, "cannot renew lease")
                }
                Err(_) => tracing::warn!(delivery = %delivery.id, incident = %delivery.incident_id,
                    connector = %delivery.connector, "renewing the lease hung"),
            }
            if tokio::time::Instant::now() + lease / 3 >= held_until {
                return;
            }
        }
    }

    /// One attempt's work, up to what came back: prepare, look the ticket up first if a
    /// `created`'s outcome is unknown, then send by what was prepared.
    async fn attempt(
        &self,
        delivery: &LeasedDelivery,
        started_at_ms: i64,
    ) -> Result<Tried, NotSent> {
        let connector = self
            .connector(&delivery.connector)
            .ok_or_else(|| NotSent::ConnectorGone(delivery.connector.clone()))?;
        if awaits_number(connector, delivery) && connector.lookup().is_none() {
            // No lookup to ask: the mailbox will bring the number. Nothing is rendered until
            // it has.
            let waiting = "waiting for the ticket's number: the ticketing system's \
                           acknowledgement of the created mail has not been read yet";
            return Ok(Tried {
                verdict: Verdict::Retry { retry_after: None },
                sent: SendResult::failed(http::SendFailure::Said(waiting.into()), Duration::ZERO),
                ticket: None,
                lookup: None,
                outcome_unknown: false,
            });
        }
        let (outgoing, lookup) = self.prepare_off_runtime(delivery, started_at_ms).await?;
        let mut looked = None;
        if let (Some(request), Some(declared)) = (lookup, connector.lookup()) {
            let (found, sent) = self.look_up(connector, declared, request).await;
            let awaits_number = awaits_number(connector, delivery);
            let looking_for = match awaits_number {
                true => lookup::LookingFor::MailedTicketNumber,
                false => lookup::LookingFor::UnknownCreate,
            };
            let summary = found.summary(&sent, looking_for);
            let settled = |verdict, ticket, outcome_unknown| Tried {
                verdict,
                sent: sent.clone(),
                ticket,
                lookup: Some(summary.clone()),
                outcome_unknown,
            };
            match found {
                Looked::Found { id, url } if awaits_number => {
                    // The system filed the `created` mail as ticket `id`: this follow-up
                    // carries its marker; the number is kept whatever the send does.
                    let mut numbered = delivery.clone();
                    numbered.ticket.id = Some(id.clone());
                    let learned = delivery.ticket_seq.map(|ticket_seq| TicketUpdate {
                        ticket_seq,
                        id,
                        url,
                    });
                    let (outgoing, _) = self.prepare_off_runtime(&numbered, started_at_ms).await?;
                    let Outgoing::Mail {
                        message,
                        message_id,
                    } = outgoing
                    else {
                        return Err(NotSent::NoTransport("SMTP transport"));
                    };
                    let (verdict, sent, _) =
                        self.mail(connector, delivery, message, message_id).await?;
                    return Ok(Tried {
                        verdict,
                        sent,
                        ticket: learned,
                        lookup: Some(summary),
                        outcome_unknown: false,
                    });
                }
                Looked::NoneFound if awaits_number => {
                    let waiting = "the ticketing system has not filed the created mail yet (its \
                                   lookup finds no ticket): this mail waits for the ticket's \
                                   number, so that it threads there";
                    let mut sent = sent.clone();
                    sent.failure = Some(http::SendFailure::Said(waiting.into()));
                    return Ok(Tried {
                        verdict: Verdict::Retry { retry_after: None },
                        sent,
                        ticket: None,
                        lookup: Some(summary),
                        outcome_unknown: false,
                    });
                }
                Looked::Found { id, url } => {
                    let ticket = delivery.ticket_seq.map(|ticket_seq| TicketUpdate {
                        ticket_seq,
                        id,
                        url,
                    });
                    return Ok(settled(Verdict::Delivered, ticket, false));
                }
                Looked::Failed { verdict } => {
                    let verdict = match verdict {
                        Verdict::Dead { reason } => Verdict::Dead {
                            reason: format!(
                                "the lookup before sending created again failed: {reason}"
                            ),
                        },
                        other => other,
                    };
                    return Ok(settled(verdict, None, delivery.event == Event::Created));
                }
                Looked::NoneFound => looked = Some(summary),
            }
        }
        let (verdict, sent, ticket) = match (outgoing, &connector.target) {
            (Outgoing::Request(request), Target::Http(http)) => {
                self.post(connector, http, delivery, request).await
            }
            (
                Outgoing::Mail {
                    message,
                    message_id,
                },
                _,
            ) => self.mail(connector, delivery, message, message_id).await?,
            // Prepared by the same connector, so an HTTP request comes from an HTTP target.
            (Outgoing::Request(_), Target::Smtp(_)) => {
                return Err(NotSent::NoTransport("HTTP client"));
            }
        };
        let outcome_unknown = delivery.event == Event::Created
            && matches!(connector.target, Target::Http(_))
            && sent.may_have_arrived();
        Ok(Tried {
            verdict,
            sent,
            ticket,
            lookup: looked,
            outcome_unknown,
        })
    }

    fn connector(&self, name: &str) -> Option<&Connector> {
        connector::find(&self.connectors, name)
    }

    fn connector_cap(&self, name: &str) -> usize {
        self.connector(name).map(|c| c.concurrency).unwrap_or(1)
    }

    /// The connectors nothing may be leased for now — at their concurrency, orphaned, paused,
    /// their circuit open or its probe out — and the half-open ones' probe caps.
    fn held(
        &self,
        this: &Deliverer,
        current: &Kit,
        in_flight: &Mutex<HashMap<String, usize>>,
        orphans: &std::collections::HashSet<String>,
    ) -> (Vec<String>, HashMap<String, usize>) {
        let mut held = this.busy_connectors(in_flight);
        held.extend(orphans.iter().cloned());
        held.extend(self.live.paused(current));
        let now = std::time::Instant::now();
        let mut probing = HashMap::new();
        for c in this.connectors.iter() {
            match self.circuits.admits(&c.name, c.concurrency, now) {
                None => held.push(c.name.clone()),
                Some(cap) if cap < c.concurrency => {
                    // Only a half-open connector needs its count: no copy of the map.
                    let busy = in_flight
                        .lock()
                        .map(|counts| counts.get(&c.name).copied().unwrap_or(0))
                        .unwrap_or(0);
                    if busy >= cap {
                        held.push(c.name.clone());
                    }
                    probing.insert(c.name.clone(), cap);
                }
                Some(_) => {}
            }
        }
        (held, probing)
    }

    fn busy_connectors(&self, in_flight: &Mutex<HashMap<String, usize>>) -> Vec<String> {
        let Ok(counts) = in_flight.lock() else {
            return vec![];
        };
        counts
            .iter()
            .filter(|(name, n)| **n >= self.connector_cap(name))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// One attempt of one delivery, start to record.
    pub async fn deliver(&self, delivery: LeasedDelivery) {
        let attempt = delivery.attempts + 1;
        let started_at_ms = model::now_ms();
        let started = std::time::Instant::now();
        let outcome = tokio::select! {
            outcome = self.attempt(&delivery, started_at_ms) => Some(outcome),
            () = self.keep_lease(&delivery) => None,
        };
        let Some(outcome) = outcome else {
            tracing::warn!(
                delivery = %delivery.id,
                incident = %delivery.incident_id,
                connector = %delivery.connector,
                "lease was lost during the attempt; another worker owns the delivery"
            );
            return;
        };
        let (verdict, sent, ticket, lookup, outcome_unknown) = match outcome {
            Ok(tried) => (
                tried.verdict,
                Some(tried.sent),
                tried.ticket,
                tried.lookup,
                tried.outcome_unknown,
            ),
            // Nothing sent, nothing learned: an unknown outcome stays unknown.
            Err(not_sent) => (
                Verdict::Dead {
                    reason: not_sent.to_string(),
                },
                None,
                None,
                None,
                delivery.outcome_unknown,
            ),
        };
        let now = model::now_ms();
        let next = match self.connector(&delivery.connector) {
            Some(connector) => retry::schedule(
                &connector.retry,
                &delivery,
                verdict,
                now,
                rand::random::<f64>(),
            ),
            None => match verdict {
                Verdict::Dead { reason } => NextStep::Dead { reason },
                _ => NextStep::Dead {
                    reason: "connector is no longer configured".into(),
                },
            },
        };
        // A dead reason can quote a receiver's or server's words, which can echo a secret.
        let next = match next {
            NextStep::Dead { reason } => NextStep::Dead {
                reason: self.secrets.mask(&reason),
            },
            other => other,
        };
        self.metrics.attempt(
            &delivery.connector,
            match &next {
                NextStep::Delivered => crate::metrics::AttemptOutcome::Delivered,
                NextStep::RetryAt { .. } => crate::metrics::AttemptOutcome::Retry,
                NextStep::Dead { .. } => crate::metrics::AttemptOutcome::Dead,
            },
            started.elapsed(),
        );
        if sent.as_ref().is_some_and(http::SendResult::was_refused) {
            crate::metrics::Metrics::inc(&self.metrics.egress_refused);
        }
        let mut record = record::attempt_record(
            &self.secrets,
            attempt,
            started_at_ms,
            now,
            sent.as_ref(),
            &next,
        );
        record.lookup = lookup.map(|l| self.secrets.mask(&l));
        record.outcome_unknown = outcome_unknown && next != NextStep::Delivered;
        record::log_attempt(&delivery, &record, &next);
        if let Some(connector) = self.connector(&delivery.connector) {
            let up = sent.as_ref().and_then(http::SendResult::target_up);
            let change = self.circuits.ended(
                &connector.name,
                &connector.circuit,
                up,
                std::time::Instant::now(),
            );
            let kit = self.live.kit();
            let opened = matches!(change, Some(circuit::Change::Opened { .. }));
            if let Some(change) = &change {
                self.metrics.set_circuit(
                    &connector.name,
                    matches!(change, circuit::Change::Opened { .. }),
                );
            }
            // The error text is only read when the target failed.
            let error = match up {
                Some(false) => last_error(&record),
                _ => String::new(),
            };
            if let Some(event) = self.alerts.observe(
                &connector.name,
                &kit.alerts,
                up,
                &error,
                opened,
                model::now_ms(),
            ) {
                let notify = kit
                    .alerts
                    .notify
                    .as_deref()
                    .and_then(|name| connector::find(&kit.connectors, name));
                self.alerts
                    .announce(event, notify, &kit.renderer, &self.store, &self.wake)
                    .await;
            }
            match change {
                Some(circuit::Change::Opened { cool_down }) => tracing::error!(
                    connector = %connector.name,
                    delivery = %delivery.id,
                    cool_down = %humantime::format_duration(cool_down),
                    last_error = %last_error(&record),
                    "circuit opened: the target is down; its deliveries wait, queued"
                ),
                Some(circuit::Change::Closed) => tracing::info!(
                    connector = %connector.name,
                    "circuit closed: the target answers again"
                ),
                None => {}
            }
        }
        self.record_until_stored(&delivery, record, next, ticket)
            .await;
    }

    /// Records the attempt, trying again while the store is unreachable: what was sent is
    /// known, and forgetting it would hold the delivery (and every later one on its ticket)
    /// until the lease runs out, then send it a second time. The lease token keeps this safe
    /// however late the record lands: once another worker has taken the delivery, the store
    /// refuses it.
    async fn record_until_stored(
        &self,
        delivery: &LeasedDelivery,
        record: AttemptRecord,
        next: NextStep,
        ticket: Option<TicketUpdate>,
    ) {
        let give_up_at = tokio::time::Instant::now() + self.settings.lease;
        let mut pause = Duration::from_millis(100);
        loop {
            let recorded = self
                .store
                .record_attempt(
                    delivery.id.clone(),
                    delivery.lease_token.clone(),
                    record.clone(),
                    next.clone(),
                    ticket.clone(),
                )
                .await;
            match recorded {
                Ok(true) => return,
                Ok(false) => {
                    tracing::warn!(
                        delivery = %delivery.id,
                        incident = %delivery.incident_id,
                        connector = %delivery.connector,
                        "lease was lost before the attempt was recorded; another worker owns the delivery"
                    );
                    return;
                }
                Err(e) if tokio::time::Instant::now() + pause >= give_up_at => {
                    // The lease runs out and the delivery is tried again: at least once.
                    tracing::error!(delivery = %delivery.id, incident = %delivery.incident_id,
                        connector = %delivery.connector, error = %e, "cannot record attempt; giving up");
                    return;
                }
                Err(e) => {
                    tracing::warn!(delivery = %delivery.id, incident = %delivery.incident_id,
                        connector = %delivery.connector, error = %e, "cannot record attempt yet; trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}
