//! Deliver: workers take due deliveries and move each through small steps —
//! render → stamp → send → classify → schedule → record — each testable alone.
//!
//! Delivery is at least once: a crash between a send and its record sends again, with the
//! same `webhook-id`, so receivers can drop the repeat.

pub mod egress;
pub mod http;
pub mod retry;
pub mod smtp;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::connector::{self, Connector, HttpTarget, SmtpTarget, Target};
use crate::model::{self, AttemptOutcome, Event};
use crate::render::{self, DeliveryFacts, RenderError, RenderedRequest, Renderer};
use crate::secrets::Secrets;
use crate::signature;
use crate::store::{AttemptRecord, LeasedDelivery, NextStep, Store, TicketUpdate};
use crate::ticket;

use self::http::{SendResult, Verdict};

/// The template context of a delivery: the incident version it carries, with its ticket
/// and completion.
pub fn delivery_context(
    connector: &Connector,
    delivery: &LeasedDelivery,
) -> Result<serde_json::Value, RenderError> {
    let incident: serde_json::Value =
        serde_json::from_str(&delivery.incident_body).map_err(|e| RenderError {
            template: connector.template.as_written.clone(),
            line: None,
            column: None,
            reason: format!("stored incident is not JSON: {e}"),
        })?;
    let received_at = model::rfc3339(delivery.received_at_ms);
    let facts = DeliveryFacts {
        event: delivery.event,
        delivery_id: &delivery.id,
        attempt: delivery.attempts + 1,
        connector,
        received_at: &received_at,
        ticket: delivery.ticket.clone(),
        completion: delivery.completion.clone(),
    };
    Ok(render::context(&incident, &facts))
}

/// Render: the request this delivery sends, from the incident version it carries.
pub fn prepare(
    renderer: &Renderer,
    connector: &Connector,
    delivery: &LeasedDelivery,
) -> Result<RenderedRequest, RenderError> {
    let context = delivery_context(connector, delivery)?;
    renderer.render(connector, delivery.event, &context)
}

/// Read the ticket: after a successful `created`, the id the target gave the ticket. A 2xx
/// without it is dead (retrying could open a second ticket).
fn read_ticket(
    connector: &Connector,
    delivery: &LeasedDelivery,
    verdict: Verdict,
    sent: &SendResult,
) -> (Verdict, Option<TicketUpdate>) {
    if verdict != Verdict::Delivered || delivery.event != Event::Created {
        return (verdict, None);
    }
    let (Some(ticket_seq), Some(status)) = (delivery.ticket_seq, sent.status) else {
        return (verdict, None);
    };
    let body = sent.response_prefix.as_deref().unwrap_or("");
    match ticket::ticket_from_response(connector, status, body) {
        Ok(None) => (verdict, None),
        Ok(Some((id, url))) => (
            verdict,
            Some(TicketUpdate {
                ticket_seq,
                id,
                url,
            }),
        ),
        Err(reason) => (Verdict::Dead { reason }, None),
    }
}

/// Stamp: the headers every delivery carries. `webhook-id` is the delivery id, the same on
/// every retry, so a receiver can tell a repeat from a new delivery (Standard Webhooks).
pub fn stamp(
    mut request: RenderedRequest,
    delivery_id: &str,
    unix_seconds: i64,
) -> RenderedRequest {
    request
        .headers
        .insert("webhook-id".into(), delivery_id.to_string());
    request
        .headers
        .insert("webhook-timestamp".into(), unix_seconds.to_string());
    request
}

/// Schedule: the delivery's next step after an attempt that ended in `verdict`.
pub fn schedule(
    connector: &Connector,
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
            match retry::next_attempt_ms(
                &connector.retry,
                attempts_in_budget,
                delivery.budget_since_ms,
                now_ms,
                retry_after,
                random,
            ) {
                Some(at_ms) => NextStep::RetryAt { at_ms },
                None if attempts_in_budget >= connector.retry.max_attempts() => NextStep::Dead {
                    reason: format!(
                        "gave up after {} attempts: the retry schedule is used up",
                        delivery.attempts + 1,
                    ),
                },
                None => NextStep::Dead {
                    reason: format!(
                        "gave up after {} attempts: the next would come after retry.max_age ({}) since the delivery was queued or replayed",
                        delivery.attempts + 1,
                        humantime::format_duration(connector.retry.max_age)
                    ),
                },
            }
        }
    }
}

/// `[delivery]`: how the workers send. `config` builds it.
#[derive(Debug, Clone, Copy)]
pub struct DeliveryConfig {
    /// Deliveries sent at once across all connectors.
    pub concurrency: usize,
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
    /// One HTTP client per HTTP connector: its own resolver (egress checks), redirects, CAs.
    pub clients: Arc<HashMap<String, reqwest::Client>>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Rung by ingress and replay so new work starts without waiting for the next poll.
    pub wake: Arc<Notify>,
    /// One pooled SMTP transport per SMTP connector.
    pub mailers: Arc<HashMap<String, smtp::Transport>>,
    /// Permits for renders on blocking threads: `delivery.render_threads` at once.
    pub renders: Arc<Semaphore>,
}

/// An HTTP client for every HTTP connector.
pub fn clients(connectors: &[Connector]) -> Result<HashMap<String, reqwest::Client>, String> {
    let mut out = HashMap::new();
    for c in connectors {
        if let Target::Http(http) = &c.target {
            let client =
                egress::client(&http.egress).map_err(|e| format!("connector {}: {e}", c.name))?;
            out.insert(c.name.clone(), client);
        }
    }
    Ok(out)
}

/// A pooled transport for every SMTP connector.
pub fn mailers(connectors: &[Connector]) -> Result<HashMap<String, smtp::Transport>, String> {
    let mut out = HashMap::new();
    for c in connectors {
        if let Target::Smtp(s) = &c.target {
            let t = smtp::transport(c, s).map_err(|e| format!("connector {}: {e}", c.name))?;
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
    /// Takes and sends deliveries until `shutdown`, then waits up to the configured grace
    /// for sends under way. At most `delivery.concurrency` sends run at once, and at most each
    /// connector's own `concurrency` for it, so one slow receiver cannot hold every worker.
    pub async fn run(self, shutdown: CancellationToken) {
        let permits = Arc::new(Semaphore::new(self.settings.concurrency));
        let in_flight: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let tracker = TaskTracker::new();
        let lease_ms = self.settings.lease.as_millis().min(i64::MAX as u128) as i64;
        while !shutdown.is_cancelled() {
            let free = permits.available_permits();
            if free == 0 {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    permit = permits.clone().acquire_owned() => drop(permit),
                }
                continue;
            }
            let busy = self.busy_connectors(&in_flight);
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
                let cap = self.connector_cap(&delivery.connector);
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
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                let me = self.clone();
                let in_flight = in_flight.clone();
                tracker.spawn(async move {
                    let connector = delivery.connector.clone();
                    me.deliver(delivery).await;
                    if let Ok(mut counts) = in_flight.lock()
                        && let Some(n) = counts.get_mut(&connector)
                    {
                        *n = n.saturating_sub(1);
                    }
                    drop(permit);
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
                let busy = self.busy_connectors(&in_flight);
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
                "shutdown grace ran out with sends under way; they will be retried after restart"
            );
        }
    }

    /// Runs `render` on a blocking thread of the render pool within `delivery.render_budget`:
    /// template work never holds an async worker thread, and a costly render ends at its
    /// budget, dead with that reason (the same input would cost the same again).
    async fn render_off_runtime<T, F>(
        &self,
        delivery: &LeasedDelivery,
        render: F,
    ) -> Result<T, String>
    where
        T: Send + 'static,
        F: FnOnce(&Renderer, &Connector, &LeasedDelivery) -> Result<T, String> + Send + 'static,
    {
        let budget = self.settings.render_budget;
        let over_budget = || {
            format!(
                "render failed: it took longer than delivery.render_budget ({})",
                humantime::format_duration(budget)
            )
        };
        let Ok(permit) = self.renders.clone().acquire_owned().await else {
            return Err("render failed: the render pool is closed".into());
        };
        let (renderer, connectors, delivery) = (
            self.renderer.clone(),
            self.connectors.clone(),
            delivery.clone(),
        );
        let task = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let connector = connector::find(&connectors, &delivery.connector).ok_or_else(|| {
                format!("connector {:?} is no longer configured", delivery.connector)
            })?;
            render::bounds::with_budget(budget, || render(&renderer, connector, &delivery))
        });
        // Helpers stop at the budget; this bounds whatever runs between helper calls too.
        match tokio::time::timeout(budget.saturating_add(RENDER_BUDGET_GRACE), task).await {
            Err(_) => Err(over_budget()),
            Ok(Err(panicked)) => Err(format!("render failed: {panicked}")),
            Ok(Ok(Err(e))) if e.contains(render::bounds::BUDGET_SPENT) => Err(over_budget()),
            Ok(Ok(result)) => result,
        }
    }

    /// The HTTP path: render → stamp → sign (off the runtime) → egress check → send →
    /// classify → read the ticket id.
    async fn post(
        &self,
        connector: &Connector,
        target: &HttpTarget,
        delivery: &LeasedDelivery,
        started_at_ms: i64,
    ) -> (Verdict, Option<SendResult>, Option<TicketUpdate>) {
        let request = self
            .render_off_runtime(delivery, move |renderer, connector, delivery| {
                let request = prepare(renderer, connector, delivery)
                    .map_err(|e| format!("render failed: {e}"))?;
                let request = stamp(request, &delivery.id, started_at_ms / 1000);
                let mut request = request;
                signature::sign(
                    &mut request.headers,
                    request.body.as_bytes(),
                    &connector.signing,
                );
                Ok(request)
            })
            .await;
        let request = match request {
            Ok(request) => request,
            Err(reason) => return (Verdict::Dead { reason }, None, None),
        };
        // A created response names the ticket: keep enough of it to find the id.
        let keep = if delivery.event == Event::Created && connector.ticket_id.is_some() {
            http::TICKET_RESPONSE_BYTES
        } else {
            http::RESPONSE_PREFIX_BYTES * 2
        };
        let refused = reqwest::Url::parse(&request.url)
            .map_err(|e| egress::Refused(e.to_string()))
            .and_then(|url| egress::check_url(&target.egress, &url));
        let client = self.clients.get(&connector.name);
        let not_sent = |failure| http::SendResult::failed(failure, Duration::ZERO);
        let sent = match (refused, client) {
            (Err(refused), _) => not_sent(http::SendFailure::Refused(refused.0)),
            (Ok(()), None) => not_sent(http::SendFailure::Unsendable(
                "no HTTP client for this connector".into(),
            )),
            (Ok(()), Some(client)) => http::send(client, &request, connector.timeout, keep).await,
        };
        let verdict = http::classify(&sent);
        let (verdict, found) = read_ticket(connector, delivery, verdict, &sent);
        (verdict, Some(sent), found)
    }

    /// The SMTP path: render → build the message, threaded (off the runtime) → send over
    /// the pool.
    async fn mail(
        &self,
        connector: &Connector,
        target: &SmtpTarget,
        delivery: &LeasedDelivery,
    ) -> (Verdict, Option<SendResult>, Option<TicketUpdate>) {
        let dead = |reason: String| (Verdict::Dead { reason }, None, None);
        let Some(transport) = self.mailers.get(&connector.name) else {
            return dead("no SMTP transport for this connector".into());
        };
        let id = smtp::message_id(target, &delivery.id);
        let message = {
            let id = id.clone();
            self.render_off_runtime(delivery, move |renderer, connector, delivery| {
                let Target::Smtp(settings) = &connector.target else {
                    return Err("the connector is no longer an SMTP connector".into());
                };
                let email = delivery_context(connector, delivery)
                    .and_then(|ctx| renderer.render_email(connector, delivery.event, &ctx))
                    .map_err(|e| format!("render failed: {e}"))?;
                let root = match delivery.event {
                    Event::Created => None,
                    _ => delivery.ticket.id.as_deref(),
                };
                smtp::build_message(settings, &email, &id, root)
            })
            .await
        };
        let message = match message {
            Ok(m) => m,
            Err(reason) => return dead(reason),
        };
        let (sent, verdict) = smtp::send(transport, message).await;
        // The created mail is the thread root: its Message-ID is the ticket's id.
        let found = match (&verdict, delivery.event, delivery.ticket_seq) {
            (Verdict::Delivered, Event::Created, Some(ticket_seq)) => Some(TicketUpdate {
                ticket_seq,
                id,
                url: None,
            }),
            _ => None,
        };
        (verdict, Some(sent), found)
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
                    tracing::warn!(delivery = %delivery.id, error = %e, "cannot renew lease")
                }
                Err(_) => tracing::warn!(delivery = %delivery.id, "renewing the lease hung"),
            }
            if tokio::time::Instant::now() + lease / 3 >= held_until {
                return;
            }
        }
    }

    /// One attempt's work, up to what came back: by connector kind.
    async fn attempt(
        &self,
        delivery: &LeasedDelivery,
        started_at_ms: i64,
    ) -> (Verdict, Option<SendResult>, Option<TicketUpdate>) {
        match self.connector(&delivery.connector) {
            None => (
                Verdict::Dead {
                    reason: format!("connector {:?} is no longer configured", delivery.connector),
                },
                None,
                None,
            ),
            Some(connector) => match &connector.target {
                Target::Smtp(smtp) => self.mail(connector, smtp, delivery).await,
                Target::Http(http) => self.post(connector, http, delivery, started_at_ms).await,
            },
        }
    }

    fn connector(&self, name: &str) -> Option<&Connector> {
        connector::find(&self.connectors, name)
    }

    fn connector_cap(&self, name: &str) -> usize {
        self.connector(name).map(|c| c.concurrency).unwrap_or(1)
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
        let outcome = tokio::select! {
            outcome = self.attempt(&delivery, started_at_ms) => Some(outcome),
            () = self.keep_lease(&delivery) => None,
        };
        let Some((verdict, sent, ticket)) = outcome else {
            tracing::warn!(
                delivery = %delivery.id,
                "lease was lost during the attempt; another worker owns the delivery"
            );
            return;
        };
        let now = model::now_ms();
        let next = match self.connector(&delivery.connector) {
            Some(connector) => schedule(connector, &delivery, verdict, now, rand::random::<f64>()),
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
        crate::metrics::Metrics::inc(match &next {
            NextStep::Delivered => &self.metrics.deliveries_delivered,
            NextStep::RetryAt { .. } => &self.metrics.deliveries_retried,
            NextStep::Dead { .. } => &self.metrics.deliveries_dead,
        });
        if sent.as_ref().is_some_and(http::SendResult::was_refused) {
            crate::metrics::Metrics::inc(&self.metrics.egress_refused);
        }
        let record = self.attempt_record(attempt, started_at_ms, now, sent.as_ref(), &next);
        log_attempt(&delivery, &record, &next);
        match self
            .store
            .record_attempt(
                delivery.id.clone(),
                delivery.lease_token.clone(),
                record,
                next,
                ticket,
            )
            .await
        {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                delivery = %delivery.id,
                "lease was lost before the attempt was recorded; another worker owns the delivery"
            ),
            // The lease runs out and the delivery is tried again: at least once.
            Err(e) => tracing::error!(delivery = %delivery.id, error = %e, "cannot record attempt"),
        }
    }

    fn attempt_record(
        &self,
        attempt: u32,
        started_at_ms: i64,
        now_ms: i64,
        sent: Option<&SendResult>,
        next: &NextStep,
    ) -> AttemptRecord {
        let secrets = &self.secrets;
        let (outcome, dead_reason) = match next {
            NextStep::Delivered => (AttemptOutcome::Delivered, None),
            NextStep::RetryAt { .. } => (AttemptOutcome::Retry, None),
            NextStep::Dead { reason } => (AttemptOutcome::Dead, Some(reason.clone())),
        };
        let error = sent
            .and_then(|s| s.failure.as_ref().map(ToString::to_string))
            .or(if sent.is_none() { dead_reason } else { None });
        AttemptRecord {
            attempt,
            started_at_ms,
            latency_ms: sent
                .map(|s| s.latency.as_millis() as i64)
                .unwrap_or(now_ms - started_at_ms),
            status_code: sent.and_then(|s| s.status),
            error: error.map(|e| secrets.mask(&e)),
            response_body: sent
                .and_then(|s| s.response_prefix.as_deref())
                .map(|b| http::utf8_prefix(&secrets.mask(b), http::RESPONSE_PREFIX_BYTES)),
            outcome,
        }
    }
}

fn log_attempt(delivery: &LeasedDelivery, record: &AttemptRecord, next: &NextStep) {
    match next {
        NextStep::Delivered => tracing::info!(
            delivery = %delivery.id, incident = %delivery.incident_id, connector = %delivery.connector,
            attempt = record.attempt, status = ?record.status_code, latency_ms = record.latency_ms,
            "delivered"
        ),
        NextStep::RetryAt { at_ms } => tracing::warn!(
            delivery = %delivery.id, incident = %delivery.incident_id, connector = %delivery.connector,
            attempt = record.attempt, status = ?record.status_code, error = ?record.error,
            retry_at = %model::rfc3339(*at_ms), "attempt failed; will retry"
        ),
        NextStep::Dead { reason } => tracing::error!(
            delivery = %delivery.id, incident = %delivery.incident_id, connector = %delivery.connector,
            attempt = record.attempt, status = ?record.status_code, reason = %reason,
            "delivery is dead"
        ),
    }
}
