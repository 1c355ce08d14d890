//! The SLA watchdog: keeps every ticket's SLA clocks ([`crate::sla`]) moving. A background
//! task looks at each clock when it asks to be looked at (its warning, its breach, the end of
//! a wait) or when its ticket changed (its `created` delivered, the ticket closed); a warning,
//! a breach or a recovery becomes the gateway's own incident, queued to the connectors
//! `[sla] notify` names, in the same commit that saves the clock which said it. A save names
//! the revision it read, so two watchdogs (several gateways on one PostgreSQL) or a watchdog
//! and a status report never both say one alert, and a restart neither repeats nor misses one.
//!
//! Status reports (the back channel's and the admin API's `waiting`, `suspended`, `running`,
//! `taken_over`) go through [`report`]; every pass takes `now` as an argument, so tests drive
//! the clock.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::model::{body_hash, now_ms, rfc3339};
use crate::reload::{Generation, Live};
use crate::sla::{Alert, Clock, Level, Pause, Report, SlaSettings, TakeOverOn};
use crate::store::{NewIncident, SlaClockRow, SlaSave, Store, StoreError};

/// Clocks brought up to date per store round trip.
const BATCH: usize = 100;

/// The longest the task sleeps: a new ticket's clocks (due at once) wait at most this long.
const POLL: Duration = Duration::from_secs(5);

/// The longest a clock goes unlooked-at while it runs: a reload that changes its calendar
/// reaches it within this.
const RECHECK_MS: i64 = 3_600_000;

/// Times a report is tried again when a watchdog saved the clock between its read and its
/// save.
const REPORT_TRIES: usize = 5;

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pass {
    pub looked_at: usize,
    /// The warnings, breaches and recoveries said (and queued), as saved.
    pub said: Vec<Alert>,
    /// Clocks another watchdog (or a report) saved first; they are looked at again.
    pub lost: usize,
}

/// Runs the watchdog until `shutdown`: a pass, then a sleep until the next clock is due (at
/// most [`POLL`]). A store error is logged, and the next pass tries again.
pub async fn run(
    live: Arc<Live>,
    store: Store,
    wake: Arc<tokio::sync::Notify>,
    metrics: Arc<crate::metrics::Metrics>,
    shutdown: CancellationToken,
) {
    loop {
        let generation = live.current();
        let pause = if generation.config.sla.is_none() {
            POLL
        } else {
            match check_due(&store, &generation, now_ms()).await {
                Ok(pass) => {
                    if !pass.said.is_empty() {
                        count(&metrics, &pass.said);
                        wake.notify_one();
                    }
                    if pass.looked_at >= BATCH {
                        continue;
                    }
                    match store.sla_next_check().await {
                        Ok(Some(next)) => {
                            let wait = u64::try_from(next - now_ms()).unwrap_or(0);
                            Duration::from_millis(wait).min(POLL)
                        }
                        Ok(None) => POLL,
                        Err(e) => {
                            tracing::warn!(error = %e, "SLA watchdog: cannot read the next check");
                            POLL
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "SLA watchdog: a pass failed; trying again");
                    POLL
                }
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(pause.max(Duration::from_millis(50))) => {}
        }
    }
}

/// One pass at `now`: up to [`BATCH`] clocks that are due, each brought to `now` and saved
/// with what it said.
pub async fn check_due(
    store: &Store,
    generation: &Generation,
    now: i64,
) -> Result<Pass, StoreError> {
    let Some(settings) = generation.config.sla.clone() else {
        return Ok(Pass::default());
    };
    let rows = store.sla_due(now, BATCH).await?;
    if rows.is_empty() {
        return Ok(Pass::default());
    }
    let looked_at = rows.len();
    let tenants = generation.config.tenant_names.clone();
    let renderer = generation.renderer.clone();
    let connectors = generation.connectors.clone();
    // Calendar arithmetic walks days: off the runtime's threads.
    let (rows, saves, said) = tokio::task::spawn_blocking(move || {
        let (saves, said): (Vec<SlaSave>, Vec<Vec<Alert>>) = rows
            .iter()
            .map(|row| {
                let stepped = advance(&settings, row, now);
                let said = stepped.as_ref().map(|s| s.said.clone()).unwrap_or_default();
                let save = save_of(
                    &settings,
                    &tenants,
                    &renderer,
                    &connectors,
                    row,
                    stepped,
                    now,
                );
                (save, said)
            })
            .unzip();
        (rows, saves, said)
    })
    .await?;
    let applied = store.sla_save(saves).await?;
    let said = log_applied(&generation.config.tenant_names, &rows, &applied, said);
    Ok(Pass {
        looked_at,
        said,
        lost: applied.iter().filter(|ok| !**ok).count(),
    })
}

/// Logs the alerts of the saves that applied (after their commit: a save that lost its
/// revision said nothing) and returns them.
fn log_applied(
    tenants: &std::collections::BTreeMap<i64, String>,
    rows: &[SlaClockRow],
    applied: &[bool],
    said: Vec<Vec<Alert>>,
) -> Vec<Alert> {
    let mut all = Vec::new();
    for ((row, ok), said) in rows.iter().zip(applied).zip(said) {
        if !ok {
            continue;
        }
        let tenant = row
            .account_id
            .and_then(|a| tenants.get(&a))
            .map(String::as_str);
        for alert in said {
            log_alert(row, alert, tenant);
            all.push(alert);
        }
    }
    all
}

/// Counts alerts said (after their commit) for `/metrics`.
pub fn count(metrics: &crate::metrics::Metrics, said: &[Alert]) {
    for alert in said {
        let kind = match alert {
            Alert::Warning => 0,
            Alert::Breach => 1,
            Alert::Recovery => 2,
        };
        metrics.sla_alerts[kind].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A clock after a look at `now`: what it said, and the clock to save.
struct Stepped {
    clock: Clock,
    said: Vec<Alert>,
}

/// A row's clock read back; one that does not parse (written by a newer gateway?) is left
/// alone, and said so.
fn clock_of(row: &SlaClockRow) -> Option<Clock> {
    match serde_json::from_str(&row.clock) {
        Ok(clock) => Some(clock),
        Err(e) => {
            tracing::error!(ticket = row.ticket_seq, level = row.level.as_str(), error = %e,
                "SLA watchdog: a stored clock does not read; it is left as it is");
            None
        }
    }
}

/// When what meets a clock happened, as its ticket shows it: a take-over by the ticket's
/// first delivered `created` (where nothing better is known) or its close; a completion by
/// its close.
fn met_at(settings: &SlaSettings, row: &SlaClockRow) -> Option<i64> {
    match row.level {
        Level::TakeOver => match settings.take_over_on {
            TakeOverOn::Created => row.created_ok_ms.into_iter().chain(row.closed_ms).min(),
            TakeOverOn::Status => row.closed_ms,
        },
        Level::Complete => row.closed_ms,
    }
}

fn advance(settings: &SlaSettings, row: &SlaClockRow, now: i64) -> Option<Stepped> {
    let mut clock = clock_of(row)?;
    let said = bring_to(settings, row, &mut clock, now);
    Some(Stepped { clock, said })
}

/// Brings `clock` to `now`: met when its ticket says so (at that time), else stepped.
fn bring_to(settings: &SlaSettings, row: &SlaClockRow, clock: &mut Clock, now: i64) -> Vec<Alert> {
    let calendar = settings.calendar_of(&row.policy);
    match met_at(settings, row) {
        Some(at) if clock.met_ms.is_none() => clock.meet(calendar, at.min(now)),
        _ => clock.step(calendar, now),
    }
}

/// The save for a row after a look: the clock, when to look again, and its alerts as the
/// gateway's own incidents (a clock that did not read is saved as it was, not looked at again
/// until its ticket changes).
fn save_of(
    settings: &SlaSettings,
    tenants: &std::collections::BTreeMap<i64, String>,
    renderer: &crate::render::Renderer,
    connectors: &[crate::connector::Connector],
    row: &SlaClockRow,
    stepped: Option<Stepped>,
    now: i64,
) -> SlaSave {
    let Some(Stepped { clock, said }) = stepped else {
        return SlaSave {
            clock_id: row.clock_id,
            revision: row.revision,
            clock: row.clock.clone(),
            next_check_ms: None,
            state: "running".into(),
            breached: false,
            alerts: Vec::new(),
        };
    };
    let calendar = settings.calendar_of(&row.policy);
    let notify: Vec<&crate::connector::Connector> = settings
        .notify_of(&row.policy)
        .iter()
        .filter_map(|name| crate::connector::find(connectors, name))
        .collect();
    let alerts = said
        .iter()
        .map(|alert| {
            let tenant = row.account_id.and_then(|a| tenants.get(&a).cloned());
            let incident = alert_incident(row, &clock, calendar, *alert, tenant.as_deref(), now);
            let body = incident.to_string();
            let mut routes = crate::ticket::routes_for(renderer, notify.iter().copied(), &incident);
            // An alert is not a ticket held to an SLA: a notify connector that is also an
            // SLA connector would otherwise start clocks that raise alerts of their own.
            for route in &mut routes {
                route.sla = None;
            }
            NewIncident {
                incident_id: alert_id(row, *alert),
                account_id: row.account_id,
                update_time: incident["updateTime"].as_f64(),
                body_hash: body_hash(&body),
                routes,
                body,
            }
        })
        .collect();
    if !said.is_empty() && notify.is_empty() {
        tracing::warn!(ticket = row.ticket_seq, policy = %row.policy,
            "an SLA alert has no connector to go to (its notify connectors are gone, or none is set): it is logged only");
    }
    SlaSave {
        clock_id: row.clock_id,
        revision: row.revision,
        clock: serde_json::to_string(&clock).unwrap_or_else(|_| row.clock.clone()),
        next_check_ms: clock
            .next_check_ms(calendar, now)
            .map(|at| at.min(now.saturating_add(RECHECK_MS))),
        state: clock.state().into(),
        breached: clock.breached,
        alerts,
    }
}

fn alert_name(alert: Alert) -> &'static str {
    match alert {
        Alert::Warning => "warning",
        Alert::Breach => "breach",
        Alert::Recovery => "recovery",
    }
}

/// One incident per ticket, level and alert: a second save of the same alert could only be
/// a duplicate version of it.
fn alert_id(row: &SlaClockRow, alert: Alert) -> String {
    format!(
        "igw-sla-{}-{}-{}",
        row.ticket_seq,
        row.level.as_str(),
        alert_name(alert)
    )
}

fn log_alert(row: &SlaClockRow, alert: Alert, tenant: Option<&str>) {
    let (connector, ticket, level) = (&row.connector, row.ticket_seq, row.level.as_str());
    match alert {
        Alert::Warning => {
            tracing::warn!(%connector, ticket, level, tenant, incident = %row.incident_id,
            "SLA warning: the ticket's deadline is near")
        }
        Alert::Breach => {
            tracing::error!(%connector, ticket, level, tenant, incident = %row.incident_id,
            "SLA BREACH: the ticket's deadline has passed")
        }
        Alert::Recovery => {
            tracing::info!(%connector, ticket, level, tenant, incident = %row.incident_id,
            "SLA recovered: the breached ticket was met")
        }
    }
}

fn level_words(level: Level) -> &'static str {
    match level {
        Level::TakeOver => "take-over",
        Level::Complete => "completion",
    }
}

/// A business duration as people read it (`1h 30m`).
fn duration_text(ms: i64) -> String {
    let seconds = u64::try_from(ms.max(0) / 1000).unwrap_or(0);
    humantime::format_duration(Duration::from_secs(seconds)).to_string()
}

/// The gateway's own incident for an SLA alert, shaped like any incident (the schema's
/// fields), so the notify connectors' templates render it as they render others.
pub fn alert_incident(
    row: &SlaClockRow,
    clock: &Clock,
    calendar: &crate::sla::Calendar,
    alert: Alert,
    tenant: Option<&str>,
    now: i64,
) -> Value {
    let ticket = row
        .ticket_id
        .clone()
        .unwrap_or_else(|| format!("#{}", row.ticket_seq));
    let what = level_words(row.level);
    let summary = match alert {
        Alert::Warning => format!(
            "SLA warning: {what} of ticket {ticket} ({}) for incident {} is due by {}",
            row.connector,
            row.incident_id,
            clock
                .deadline_ms(calendar, now)
                .map_or_else(|| "now".to_string(), rfc3339)
        ),
        Alert::Breach => format!(
            "SLA breach: {what} of ticket {ticket} ({}) for incident {} is overdue ({} allowed)",
            row.connector,
            row.incident_id,
            duration_text(clock.allowed_ms)
        ),
        Alert::Recovery => format!(
            "SLA recovered: {what} of ticket {ticket} ({}) for incident {} is done, after its breach",
            row.connector, row.incident_id
        ),
    };
    let rating = match alert {
        Alert::Breach => "high",
        Alert::Warning => "medium",
        Alert::Recovery => "info",
    };
    let mut incident = json!({
        "incidentId": alert_id(row, alert),
        "humanFriendlyId": format!("igw-sla-{}", row.ticket_seq),
        "incident_type": "gateway_sla",
        "correlation_name": summary,
        "defaultThreatRating": rating,
        "incident_threat_rating": rating,
        "createTime": now as f64 / 1000.0,
        "updateTime": now as f64 / 1000.0,
        "recommendations": format!(
            "Look at ticket {ticket} in {}: GET /v1/incidents/{}/sla shows its SLA clocks.",
            row.connector, row.incident_id
        ),
        "extra": {
            "sla": {
                "alert": alert_name(alert),
                "level": row.level.as_str(),
                "policy": row.policy,
                "tenant": tenant,
                "connector": row.connector,
                "ticket_id": row.ticket_id,
                "ticket_url": row.ticket_url,
                "correlation_key": row.correlation_key,
                "incidentId": row.incident_id,
                "allowed": duration_text(clock.allowed_ms),
                "used": duration_text(clock.used_ms(calendar, now)),
                "started_at": rfc3339(clock.started_ms),
            }
        }
    });
    if let Some(account) = row.account_id {
        incident["accountId"] = json!(account);
    }
    incident
}

/// The alert `check` renders through each notify connector: a breach of the first policy's
/// first clock, on a sample ticket.
pub fn sample_alert(settings: &SlaSettings) -> Value {
    let now = now_ms();
    let start = settings.policies.first().and_then(|p| {
        settings.start_for(
            p.accounts.as_ref().and_then(|a| a.first().copied()),
            p.ratings.as_ref().and_then(|r| r.first().copied()),
        )
    });
    let mut clock = start
        .as_ref()
        .and_then(|s| s.clocks(now - 3_600_000).into_iter().next())
        .unwrap_or_else(|| Clock::start(Level::TakeOver, now - 3_600_000, 1_800_000, 0));
    clock.breached = true;
    let row = SlaClockRow {
        clock_id: 0,
        ticket_seq: 1,
        level: clock.level,
        policy: start.map(|s| s.policy).unwrap_or_default(),
        clock: String::new(),
        revision: 0,
        next_check_ms: None,
        connector: settings.connectors.first().cloned().unwrap_or_default(),
        correlation_key: "sample-key".into(),
        ticket_id: Some("INC0010001".into()),
        ticket_url: None,
        incident_id: "sample-incident".into(),
        account_id: None,
        opened_ms: now - 3_600_000,
        closed_ms: None,
        created_ok_ms: None,
    };
    let calendar = settings.calendar_of(&row.policy);
    alert_incident(&row, &clock, calendar, Alert::Breach, None, now)
}

/// A status report for some of a ticket's clocks, as the back channel and the admin API
/// take it.
#[derive(Debug, Clone, Copy)]
pub struct StatusReport {
    pub report: Report,
    /// For `waiting`: when the wait ends (at most `[sla] waiting_expires` from now).
    pub until_ms: Option<i64>,
}

/// Why a report changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("SLA clocks are not configured ([sla] names no connector)")]
    Off,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the clocks kept changing while the report was applied; try again")]
    Busy,
}

/// Applies `report` at `now` to the clocks `read` returns (read again when a watchdog saved
/// one first), saving each with what it said; returns the clocks as saved, and what they
/// said.
pub async fn report<F, Fut>(
    store: &Store,
    generation: &Generation,
    status: StatusReport,
    now: i64,
    read: F,
) -> Result<(Vec<SlaClockRow>, Vec<Alert>), ReportError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Vec<SlaClockRow>, StoreError>>,
{
    let settings = generation.config.sla.clone().ok_or(ReportError::Off)?;
    let mut said = Vec::new();
    for _ in 0..REPORT_TRIES {
        let rows = read().await?;
        let mut per_row = Vec::with_capacity(rows.len());
        let saves: Vec<SlaSave> = rows
            .iter()
            .map(|row| {
                let stepped = clock_of(row).map(|mut clock| {
                    let alerts = apply(&settings, row, &mut clock, status, now);
                    Stepped {
                        clock,
                        said: alerts,
                    }
                });
                per_row.push(stepped.as_ref().map(|s| s.said.clone()).unwrap_or_default());
                save_of(
                    &settings,
                    &generation.config.tenant_names,
                    &generation.renderer,
                    &generation.connectors,
                    row,
                    stepped,
                    now,
                )
            })
            .collect();
        let applied = store.sla_save(saves).await?;
        // What applied is committed, alerts and all, whether or not the rest must go again.
        said.extend(log_applied(
            &generation.config.tenant_names,
            &rows,
            &applied,
            per_row,
        ));
        if applied.iter().all(|ok| *ok) {
            return Ok((read().await?, said));
        }
    }
    Err(ReportError::Busy)
}

/// What a report does to one clock: taken over meets the take-over clock; waiting, suspended
/// and running pause or resume both. The clock is brought to `now` first.
fn apply(
    settings: &SlaSettings,
    row: &SlaClockRow,
    clock: &mut Clock,
    status: StatusReport,
    now: i64,
) -> Vec<Alert> {
    let mut said = bring_to(settings, row, clock, now);
    let calendar = settings.calendar_of(&row.policy);
    match status.report {
        Report::TakenOver if row.level == Level::TakeOver => {
            said.extend(clock.meet(calendar, now));
        }
        Report::TakenOver => {}
        Report::Waiting => {
            let longest = now.saturating_add(settings.waiting_expires_ms);
            let until = status.until_ms.map_or(longest, |u| u.min(longest));
            clock.wait(calendar, now, until);
        }
        Report::Suspended => clock.suspend(calendar, now),
        Report::Running => clock.resume(calendar, now),
    }
    said
}

/// A clock as the admin API and the info API show it, at `now`.
pub fn clock_view(
    settings: Option<&SlaSettings>,
    tenants: &std::collections::BTreeMap<i64, String>,
    row: &SlaClockRow,
    now: i64,
) -> Value {
    let clock: Option<Clock> = serde_json::from_str(&row.clock).ok();
    let calendar = settings.map(|s| s.calendar_of(&row.policy).clone());
    let (Some(clock), Some(calendar)) = (clock, calendar) else {
        return json!({
            "ticket": row.ticket_seq,
            "connector": row.connector,
            "level": row.level.as_str(),
            "state": "unknown",
        });
    };
    let waiting_until = match clock.pause {
        Pause::Waiting { until_ms, .. } => Some(rfc3339(until_ms)),
        _ => None,
    };
    json!({
        "ticket": row.ticket_seq,
        "connector": row.connector,
        "ticket_id": row.ticket_id,
        "ticket_url": row.ticket_url,
        "correlation_key": row.correlation_key,
        "incidentId": row.incident_id,
        "tenant": row.account_id.and_then(|a| tenants.get(&a)),
        "policy": row.policy,
        "level": row.level.as_str(),
        "state": clock.state(),
        "allowed": duration_text(clock.allowed_ms),
        "used": duration_text(clock.used_ms(&calendar, now)),
        "started_at": rfc3339(clock.started_ms),
        "warning_at": clock.warning_ms(&calendar, now).filter(|_| !clock.warned).map(rfc3339),
        // Once breached, the deadline is behind it: `breached` says so.
        "deadline": clock.deadline_ms(&calendar, now).filter(|_| !clock.breached).map(rfc3339),
        "waiting_until": waiting_until,
        "met_at": clock.met_ms.map(rfc3339),
        "warned": clock.warned,
        "breached": clock.breached,
        "recovered": clock.recovered,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sla::{Calendar, Policy};

    const HOUR: i64 = 3_600_000;

    fn settings(take_over_on: TakeOverOn) -> SlaSettings {
        SlaSettings {
            connectors: vec!["jira".into()],
            calendar: Calendar::always(),
            calendars: Default::default(),
            policies: vec![Policy {
                name: "p".into(),
                accounts: None,
                ratings: None,
                calendar: String::new(),
                take_over_ms: Some(HOUR),
                complete_ms: Some(4 * HOUR),
                warn_before_ms: 0,
                notify: None,
            }],
            notify: vec![],
            take_over_on,
            waiting_expires_ms: HOUR,
            statuses: Default::default(),
        }
    }

    fn row(level: Level, created_ok_ms: Option<i64>, closed_ms: Option<i64>) -> SlaClockRow {
        let allowed = if level == Level::TakeOver {
            HOUR
        } else {
            4 * HOUR
        };
        SlaClockRow {
            clock_id: 1,
            ticket_seq: 7,
            level,
            policy: "p".into(),
            clock: serde_json::to_string(&Clock::start(level, 0, allowed, 0)).unwrap(),
            revision: 0,
            next_check_ms: Some(0),
            connector: "jira".into(),
            correlation_key: "k".into(),
            ticket_id: None,
            ticket_url: None,
            incident_id: "A".into(),
            account_id: None,
            opened_ms: 0,
            closed_ms,
            created_ok_ms,
        }
    }

    #[test]
    fn what_meets_a_clock_follows_take_over_on_and_the_ticket_closing() {
        let created = settings(TakeOverOn::Created);
        let status = settings(TakeOverOn::Status);
        // The first delivered created takes the ticket over, unless only a status may.
        let r = row(Level::TakeOver, Some(10 * 60_000), None);
        let s = advance(&created, &r, 2 * HOUR).unwrap();
        assert_eq!((s.clock.met_ms, s.said), (Some(10 * 60_000), vec![]));
        let s = advance(&status, &r, 2 * HOUR).unwrap();
        assert_eq!((s.clock.met_ms, s.said), (None, vec![Alert::Breach]));
        // A ticket closed before anyone took it: both clocks are met at the close; a
        // take-over already past its allowance then is a breach and its recovery.
        let s = advance(
            &status,
            &row(Level::TakeOver, None, Some(2 * HOUR)),
            3 * HOUR,
        )
        .unwrap();
        assert_eq!(s.said, vec![Alert::Breach, Alert::Recovery]);
        let s = advance(
            &status,
            &row(Level::Complete, None, Some(2 * HOUR)),
            3 * HOUR,
        )
        .unwrap();
        assert_eq!((s.clock.met_ms, s.said), (Some(2 * HOUR), vec![]));
        // A clock that does not read is left alone.
        let mut bad = row(Level::Complete, None, None);
        bad.clock = "{".into();
        assert!(advance(&status, &bad, HOUR).is_none());
    }

    #[test]
    fn a_wait_is_capped_at_waiting_expires_and_taken_over_touches_only_take_over() {
        let s = settings(TakeOverOn::Status);
        let r = row(Level::Complete, None, None);
        let mut clock: Clock = serde_json::from_str(&r.clock).unwrap();
        let wait = StatusReport {
            report: Report::Waiting,
            until_ms: Some(10 * HOUR),
        };
        apply(&s, &r, &mut clock, wait, HOUR);
        assert_eq!(
            clock.pause,
            Pause::Waiting {
                since_ms: HOUR,
                until_ms: 2 * HOUR
            }
        );
        let taken = StatusReport {
            report: Report::TakenOver,
            until_ms: None,
        };
        apply(&s, &r, &mut clock, taken, HOUR);
        assert_eq!(clock.met_ms, None, "the completion clock runs on");
    }

    #[test]
    fn an_alert_incident_names_the_ticket_and_passes_the_incident_schema() {
        let s = settings(TakeOverOn::Created);
        let mut r = row(Level::TakeOver, None, None);
        r.ticket_id = Some("SEC-9".into());
        r.account_id = Some(2);
        let clock: Clock = serde_json::from_str(&r.clock).unwrap();
        let incident = alert_incident(
            &r,
            &clock,
            &s.calendar,
            Alert::Breach,
            Some("acme"),
            2 * HOUR,
        );
        assert_eq!(incident["incidentId"], "igw-sla-7-take_over-breach");
        assert_eq!(incident["accountId"], 2);
        let summary = incident["correlation_name"].as_str().unwrap();
        assert!(
            summary.contains("SEC-9") && summary.contains("1h allowed"),
            "{summary}"
        );
        let schema = crate::schema::IncidentSchema::shipped().unwrap();
        let violations = schema.violations(&incident, "");
        assert!(violations.is_empty(), "{incident}: {violations:?}");
        let sample = sample_alert(&s);
        assert!(schema.violations(&sample, "").is_empty(), "{sample}");
    }
}
