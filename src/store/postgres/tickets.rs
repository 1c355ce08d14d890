//! Tickets on PostgreSQL: which ticket an incident joins (under its key's `ticket_heads` row),
//! completion through the back channel, and an admin's resolve of a dead `created`.

use async_trait::async_trait;
use deadpool_postgres::Transaction;

use super::{Postgres, execute, lock_incident, query, query_opt, queue, sla};
use crate::model::{Event, Purpose, now_ms, rfc3339};
use crate::store::rules::{
    Attached, OpenTicket, RESOLVED_BY_ADMIN, completion_new, completion_news, completion_old,
    reopens_closed_since, resolvable_ticket, window_until,
};
use crate::store::{
    Caller, CompleteOutcome, Completing, DeliveryRef, ResolveOutcome, Route, StoreError, Tickets,
};

#[async_trait]
impl Tickets for Postgres {
    async fn complete(&self, request: Completing) -> Result<CompleteOutcome, StoreError> {
        transaction!(self, |tx| complete(&tx, &request, now_ms()).await)
    }

    async fn resolve(
        &self,
        delivery_id: String,
        ticket_id: String,
        ticket_url: Option<String>,
    ) -> Result<ResolveOutcome, StoreError> {
        transaction!(self, |tx| {
            resolve(
                &tx,
                &delivery_id,
                &ticket_id,
                ticket_url.as_deref(),
                now_ms(),
            )
            .await
        })
    }

    async fn unnumbered_tickets(
        &self,
        connector: String,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT ticket_seq, correlation_key FROM tickets
                 WHERE connector = $1 AND status = 'open' AND ticket_id IS NULL
                 ORDER BY ticket_seq",
                &[&connector],
            )
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    async fn number_ticket(&self, ticket_seq: i64, number: String) -> Result<bool, StoreError> {
        let client = self.pool.get().await?;
        let changed = client
            .execute(
                "UPDATE tickets SET ticket_id = $2, updated_ms = $3
                 WHERE ticket_seq = $1 AND ticket_id IS NULL",
                &[&ticket_seq, &number, &now_ms()],
            )
            .await?;
        Ok(changed == 1)
    }
}

/// The ticket an incident joins for one connector: the one it is already on, else the open
/// one with its key whose aggregation window has not ended, else a new one (which starts the
/// route's SLA clocks, kept with the incident's `account_id`). The ticket found is locked, so
/// a completion running at the same time either closes it first (and this incident opens a
/// new one) or waits for this incident to join it.
pub(super) async fn attach_to_ticket(
    tx: &Transaction<'_>,
    incident_id: &str,
    account_id: Option<i64>,
    is_new: bool,
    route: &Route,
    now: i64,
) -> Result<Attached, StoreError> {
    let own = if is_new {
        None
    } else {
        query_opt(
            tx,
            "SELECT t.ticket_seq FROM ticket_incidents ti
             JOIN tickets t ON t.ticket_seq = ti.ticket_seq
             WHERE ti.incident_id = $1 AND t.connector = $2 AND t.status = 'open'
             ORDER BY t.ticket_seq DESC LIMIT 1 FOR UPDATE OF t",
            &[&incident_id, &route.connector],
        )
        .await?
    };
    let attached = match own {
        Some(row) => Attached {
            ticket_seq: row.try_get("ticket_seq")?,
            event: Event::Updated,
            purpose: Purpose::Event,
        },
        None => join_or_open(tx, incident_id, account_id, route, now).await?,
    };
    execute(
        tx,
        "INSERT INTO ticket_incidents (ticket_seq, incident_id) VALUES ($1, $2)
         ON CONFLICT DO NOTHING",
        &[&attached.ticket_seq, &incident_id],
    )
    .await?;
    Ok(attached)
}

/// The open ticket of the route's key whose window is open, or a new one (opened by
/// `incident_id`, of `account_id`, with the route's SLA clocks). Holding the key's
/// `ticket_heads` row while deciding makes every other gateway with the same key wait, then
/// find the ticket this one opened.
async fn join_or_open(
    tx: &Transaction<'_>,
    incident_id: &str,
    account_id: Option<i64>,
    route: &Route,
    now: i64,
) -> Result<Attached, StoreError> {
    // One statement inserts the head or, when it exists, locks it (a no-op update).
    execute(
        tx,
        "INSERT INTO ticket_heads (connector, correlation_key) VALUES ($1, $2)
         ON CONFLICT (connector, correlation_key)
         DO UPDATE SET ticket_seq = ticket_heads.ticket_seq",
        &[&route.connector, &route.key],
    )
    .await?;
    let open = query_opt(
        tx,
        "SELECT ticket_seq FROM tickets
         WHERE connector = $1 AND correlation_key = $2 AND status = 'open'
           AND (window_until_ms IS NULL OR window_until_ms > $3)
         ORDER BY ticket_seq DESC LIMIT 1 FOR UPDATE",
        &[&route.connector, &route.key, &now],
    )
    .await?;
    if let Some(row) = open {
        return Ok(Attached {
            ticket_seq: row.try_get("ticket_seq")?,
            event: Event::Updated,
            purpose: Purpose::Event,
        });
    }
    // No open ticket: one of the key closed within `reopen_within` opens again.
    if let Some(since) = reopens_closed_since(now, route.reopen_within_ms)
        && let Some(row) = query_opt(
            tx,
            "UPDATE tickets SET status = 'open', closed_ms = NULL, window_until_ms = $4,
                    updated_ms = $5
             WHERE ticket_seq = (SELECT ticket_seq FROM tickets
                                 WHERE connector = $1 AND correlation_key = $2
                                   AND status = 'completed' AND closed_ms >= $3
                                 ORDER BY ticket_seq DESC LIMIT 1)
             RETURNING ticket_seq",
            &[
                &route.connector,
                &route.key,
                &since,
                &window_until(now, route.aggregate_for_ms),
                &now,
            ],
        )
        .await?
    {
        return Ok(Attached {
            ticket_seq: row.try_get("ticket_seq")?,
            event: Event::Updated,
            purpose: Purpose::Reopen,
        });
    }
    let ticket_seq: i64 = query_opt(
        tx,
        "INSERT INTO tickets (connector, correlation_key, status, opened_ms, window_until_ms, updated_ms)
         VALUES ($1, $2, 'open', $3, $4, $3) RETURNING ticket_seq",
        &[
            &route.connector,
            &route.key,
            &now,
            &window_until(now, route.aggregate_for_ms),
        ],
    )
    .await?
    .ok_or(StoreError::Missing("ticket"))?
    .try_get(0)?;
    execute(
        tx,
        "UPDATE ticket_heads SET ticket_seq = $3 WHERE connector = $1 AND correlation_key = $2",
        &[&route.connector, &route.key, &ticket_seq],
    )
    .await?;
    if let Some(start) = &route.sla {
        sla::start(tx, ticket_seq, start, incident_id, account_id, now).await?;
    }
    Ok(Attached {
        ticket_seq,
        event: Event::Created,
        purpose: Purpose::Event,
    })
}

/// A token completes only what its holder has: a source its own incidents, a connector's
/// target those it has a ticket for.
async fn entitled(
    tx: &Transaction<'_>,
    incident_id: &str,
    source: &str,
    caller: &Caller,
) -> Result<bool, StoreError> {
    Ok(match caller {
        Caller::Source(name) => name == source,
        Caller::Connector(name) => query_opt(
            tx,
            "SELECT 1 FROM ticket_incidents ti JOIN tickets t ON t.ticket_seq = ti.ticket_seq
             WHERE ti.incident_id = $1 AND t.connector = $2 LIMIT 1",
            &[&incident_id, name],
        )
        .await?
        .is_some(),
    })
}

/// [`Tickets::complete`] at `now`.
async fn complete(
    tx: &Transaction<'_>,
    request: &Completing,
    now: i64,
) -> Result<CompleteOutcome, StoreError> {
    let incident_id = request.incident_id.as_str();
    lock_incident(tx, incident_id).await?;
    let Some(state) = query_opt(
        tx,
        "SELECT status, status_change_ms, version_id, source FROM incidents
         WHERE incident_id = $1",
        &[&incident_id],
    )
    .await?
    else {
        return Ok(CompleteOutcome::NotFound);
    };
    let status: String = state.try_get("status")?;
    let status_change_ms: i64 = state.try_get("status_change_ms")?;
    let version_id: i64 = state.try_get("version_id")?;
    let source: String = state.try_get("source")?;
    if !entitled(tx, incident_id, &source, &request.caller).await? {
        return Ok(CompleteOutcome::NotFound);
    }
    if status == "completed" {
        return Ok(CompleteOutcome::AlreadyCompleted {
            since: rfc3339(status_change_ms),
        });
    }
    // A target closing its ticket completes the ticket's other open incidents with this one
    // (`on_target_close = "complete_all"`): found before the ticket closes, each locked.
    let mut along: Vec<(String, i64)> = Vec::new();
    if let (true, Caller::Connector(connector)) = (request.completes_all, &request.caller) {
        let others: Vec<String> = query(
            tx,
            "SELECT DISTINCT other.incident_id
             FROM ticket_incidents mine
             JOIN tickets t ON t.ticket_seq = mine.ticket_seq
             JOIN ticket_incidents other ON other.ticket_seq = t.ticket_seq
             JOIN incidents i ON i.incident_id = other.incident_id
             WHERE mine.incident_id = $1 AND t.connector = $2 AND t.status = 'open'
               AND i.status = 'open' AND other.incident_id <> $1
             ORDER BY other.incident_id",
            &[&incident_id, connector],
        )
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
        for other in others {
            lock_incident(tx, &other).await?;
            // Read again under its lock: it may have been completed meanwhile.
            if let Some(row) = query_opt(
                tx,
                "SELECT version_id FROM incidents WHERE incident_id = $1 AND status = 'open'",
                &[&other],
            )
            .await?
            {
                along.push((other, row.try_get("version_id")?));
            }
        }
    }
    let mut deliveries = Vec::new();
    complete_one(tx, incident_id, version_id, request, now, &mut deliveries).await?;
    for (other, version) in &along {
        complete_one(tx, other, *version, request, now, &mut deliveries).await?;
    }
    Ok(CompleteOutcome::Completed {
        old: completion_old(status_change_ms),
        new: completion_new(request, now),
        deliveries,
        along: along.into_iter().map(|(id, _)| id).collect(),
    })
}

/// Completes one open incident (locked by the caller): its open tickets close or take a
/// note, by their connectors' policies, and the deliveries that tell the targets are queued.
async fn complete_one(
    tx: &Transaction<'_>,
    incident_id: &str,
    version_id: i64,
    request: &Completing,
    now: i64,
    deliveries: &mut Vec<DeliveryRef>,
) -> Result<(), StoreError> {
    execute(
        tx,
        "UPDATE incidents SET status = 'completed', reason_code = $2, notes = $3,
                status_change_ms = $4, updated_ms = $4
         WHERE incident_id = $1",
        &[&incident_id, &request.reason_code, &request.notes, &now],
    )
    .await?;
    // Locked in order, so an incident joining one of them waits or finds it closed.
    let tickets = query(
        tx,
        "SELECT t.ticket_seq, t.connector FROM ticket_incidents ti
         JOIN tickets t ON t.ticket_seq = ti.ticket_seq
         WHERE ti.incident_id = $1 AND t.status = 'open' ORDER BY t.ticket_seq FOR UPDATE OF t",
        &[&incident_id],
    )
    .await?
    .iter()
    .map(|r| {
        Ok(OpenTicket {
            ticket_seq: r.try_get("ticket_seq")?,
            connector: r.try_get("connector")?,
        })
    })
    .collect::<Result<Vec<_>, StoreError>>()?;
    let mut others_open = Vec::with_capacity(tickets.len());
    for t in &tickets {
        let row = query_opt(
            tx,
            "SELECT COUNT(*) AS open FROM ticket_incidents ti
             JOIN incidents i ON i.incident_id = ti.incident_id
             WHERE ti.ticket_seq = $1 AND i.status = 'open'",
            &[&t.ticket_seq],
        )
        .await?
        .ok_or(StoreError::Missing("count"))?;
        others_open.push(row.try_get::<_, i64>("open")?);
    }
    let (closing, news) = completion_news(&tickets, &others_open, request);
    // A closed ticket takes no more incidents: the next of its key opens (or reopens) one.
    for ticket_seq in closing {
        execute(
            tx,
            "UPDATE tickets SET status = 'completed', closed_ms = $2, updated_ms = $2
             WHERE ticket_seq = $1",
            &[&ticket_seq, &now],
        )
        .await?;
        // Its clocks are met (or stop) now: the watchdog looks at once.
        sla::nudge(tx, ticket_seq, now).await?;
    }
    for n in news {
        let id = queue::insert_delivery(
            tx,
            &queue::NewDelivery {
                incident_id,
                version_id,
                connector: &n.connector,
                event: n.event,
                ticket_seq: n.ticket_seq,
                purpose: n.purpose,
                collect_until: None,
            },
            now,
        )
        .await?;
        deliveries.push(DeliveryRef {
            id,
            connector: n.connector,
            event: n.event,
        });
    }
    Ok(())
}

/// [`Tickets::resolve`] at `now`. The ticket is written before the delivery's line moves on,
/// the order every other write takes them in (ticket, then line).
async fn resolve(
    tx: &Transaction<'_>,
    delivery_id: &str,
    ticket_id: &str,
    ticket_url: Option<&str>,
    now: i64,
) -> Result<ResolveOutcome, StoreError> {
    let Some(kind) = query_opt(
        tx,
        "SELECT status, event, ticket_seq FROM deliveries WHERE delivery_id = $1",
        &[&delivery_id],
    )
    .await?
    else {
        return Ok(ResolveOutcome::NotFound);
    };
    let status: String = kind.try_get("status")?;
    let event: String = kind.try_get("event")?;
    let Some(ticket_seq) = resolvable_ticket(&status, &event, kind.try_get("ticket_seq")?) else {
        return Ok(ResolveOutcome::NotApplicable(format!(
            "only a dead created delivery can be resolved; this one is a {status} {event}"
        )));
    };
    execute(
        tx,
        "UPDATE tickets SET ticket_id = $2, ticket_url = $3, updated_ms = $4 WHERE ticket_seq = $1",
        &[&ticket_seq, &ticket_id, &ticket_url, &now],
    )
    .await?;
    // The ticket exists in the target after all: as for a delivered `created`.
    sla::created_ok(tx, ticket_seq, now).await?;
    let line = query_opt(
        tx,
        "UPDATE deliveries SET status = 'delivered', ready = FALSE, updated_ms = $2, last_error = $3
         WHERE delivery_id = $1 AND status = 'dead'
         RETURNING connector, order_key",
        &[&delivery_id, &now, &RESOLVED_BY_ADMIN],
    )
    .await?;
    // The created no longer holds its ticket's line: the updates behind it may go.
    if let Some(line) = line {
        queue::promote_head(
            tx,
            &line.try_get::<_, String>("connector")?,
            &line.try_get::<_, String>("order_key")?,
        )
        .await?;
    }
    Ok(ResolveOutcome::Resolved)
}
