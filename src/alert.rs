//! Alerts: a failing destination never fails silently. A connector whose circuit opens, or
//! whose target has been down for longer than `[alerts] failing_for`, raises an alert — an
//! error log line naming it and its last error, `igw_connector_alerting{connector} 1`, and,
//! with `[alerts] notify`, an incident of the gateway's own sent through that connector (a
//! chat channel, a pager) by the ordinary queue, so it is stored, retried and inspectable
//! like any other. When the target answers again the alert recovers: a log line, the gauge
//! back to 0, and an update of that incident.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};

use crate::connector::Connector;
use crate::render::Renderer;
use crate::store::{NewIncident, Store};

/// `[alerts]`, validated (`config` builds it).
#[derive(Debug, Clone)]
pub struct AlertConfig {
    /// A connector whose target has been down this long (every attempt since failing) raises
    /// an alert, as one whose circuit opens does at once.
    pub failing_for: std::time::Duration,
    /// The connector the alert (and its recovery) is sent through, e.g. a chat channel.
    pub notify: Option<String>,
}

impl Default for AlertConfig {
    fn default() -> Self {
        AlertConfig {
            failing_for: std::time::Duration::from_secs(600),
            notify: None,
        }
    }
}

/// The source the gateway's own incidents are stored under.
pub const SOURCE: &str = crate::model::GATEWAY_SOURCE;

/// What an attempt's outcome did to its connector's alert.
#[derive(Debug, Clone, PartialEq)]
pub enum AlertEvent {
    Raised {
        connector: String,
        /// Why: "its circuit opened", "failing for 10m".
        why: String,
        last_error: String,
        failing_since_ms: i64,
        raised_ms: i64,
    },
    Recovered {
        connector: String,
        failing_since_ms: i64,
        raised_ms: i64,
        recovered_ms: i64,
    },
}

#[derive(Debug, Default, Clone)]
struct Watch {
    failing_since_ms: Option<i64>,
    last_error: String,
    /// When the alert now raised was raised.
    raised_ms: Option<i64>,
}

/// Every connector's alert in this process.
#[derive(Debug, Default)]
pub struct Alerts {
    watches: Mutex<HashMap<String, Watch>>,
    pub raised_total: Mutex<HashMap<String, u64>>,
    pub notifications_failed: AtomicU64,
}

impl Alerts {
    /// Takes one attempt's outcome for `connector`: `up` as the circuit reads it, the
    /// attempt's error, and whether it opened the connector's circuit.
    pub fn observe(
        &self,
        connector: &str,
        config: &AlertConfig,
        up: Option<bool>,
        last_error: &str,
        circuit_opened: bool,
        now_ms: i64,
    ) -> Option<AlertEvent> {
        let up = up?;
        let mut watches = self.watches.lock().ok()?;
        // A connector that has not failed since its last alert needs no entry.
        if up && !watches.contains_key(connector) {
            return None;
        }
        let watch = match watches.get_mut(connector) {
            Some(watch) => watch,
            None => watches.entry(connector.to_string()).or_default(),
        };
        let event = match up {
            false => {
                let since = *watch.failing_since_ms.get_or_insert(now_ms);
                watch.last_error = last_error.to_string();
                let failing_for = config.failing_for.as_millis() as i64;
                let why = match circuit_opened {
                    true => Some("its circuit opened".to_string()),
                    false if now_ms - since >= failing_for => Some(format!(
                        "failing for {}",
                        humantime::format_duration(config.failing_for)
                    )),
                    _ => None,
                };
                match (watch.raised_ms, why) {
                    (None, Some(why)) => {
                        watch.raised_ms = Some(now_ms);
                        Some(AlertEvent::Raised {
                            connector: connector.to_string(),
                            why,
                            last_error: watch.last_error.clone(),
                            failing_since_ms: since,
                            raised_ms: now_ms,
                        })
                    }
                    _ => None,
                }
            }
            true => {
                let since = watch.failing_since_ms.take();
                match (watch.raised_ms.take(), since) {
                    (Some(raised_ms), Some(failing_since_ms)) => Some(AlertEvent::Recovered {
                        connector: connector.to_string(),
                        failing_since_ms,
                        raised_ms,
                        recovered_ms: now_ms,
                    }),
                    _ => None,
                }
            }
        };
        if let (Some(AlertEvent::Raised { .. }), Ok(mut totals)) =
            (&event, self.raised_total.lock())
        {
            *totals.entry(connector.to_string()).or_default() += 1;
        }
        event
    }

    /// The connectors alerting now.
    pub fn alerting(&self) -> Vec<String> {
        self.watches
            .lock()
            .map(|w| {
                w.iter()
                    .filter(|(_, w)| w.raised_ms.is_some())
                    .map(|(name, _)| name.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Logs `event` and, with `notify` (`[alerts] notify`), queues it as the gateway's own
    /// incident to that connector (never to the failing connector itself).
    pub async fn announce(
        &self,
        event: AlertEvent,
        notify: Option<&Connector>,
        renderer: &Renderer,
        store: &Store,
        wake: &tokio::sync::Notify,
    ) {
        match &event {
            AlertEvent::Raised {
                connector,
                why,
                last_error,
                ..
            } => tracing::error!(
                connector = %connector,
                last_error = %last_error,
                "ALERT: deliveries to this connector are failing ({why})"
            ),
            AlertEvent::Recovered { connector, .. } => tracing::warn!(
                connector = %connector,
                "alert recovered: the connector's target answers again"
            ),
        }
        let Some(target) = notify else {
            return;
        };
        let (AlertEvent::Raised { connector, .. } | AlertEvent::Recovered { connector, .. }) =
            &event;
        if &target.name == connector {
            return;
        }
        let notify = &target.name;
        let incident = alert_incident(&event);
        let body = incident.to_string();
        let batch = vec![NewIncident {
            account_id: None,
            incident_id: incident["incidentId"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            update_time: incident["updateTime"].as_f64(),
            body_hash: crate::model::body_hash(&body),
            body,
            routes: crate::ticket::routes_for(renderer, [target], &incident),
        }];
        match store.ingest(SOURCE.to_string(), None, batch).await {
            Ok(_) => wake.notify_one(),
            Err(e) => {
                self.notifications_failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(connector = %connector, notify = %notify, error = %e, "cannot queue the alert's notification");
            }
        }
    }
}

/// The gateway's own incident for an alert: one per raised alert (its id names the connector
/// and when it was raised); its recovery is a newer version of the same incident.
pub fn alert_incident(event: &AlertEvent) -> Value {
    let seconds = |ms: i64| ms as f64 / 1000.0;
    let (connector, raised_ms, failing_since_ms, state, summary, error, updated_ms) = match event {
        AlertEvent::Raised {
            connector,
            why,
            last_error,
            failing_since_ms,
            raised_ms,
        } => (
            connector,
            *raised_ms,
            *failing_since_ms,
            "failing",
            format!(
                "incident-gateway: deliveries to {connector} are failing ({why}): {last_error}"
            ),
            Some(last_error.clone()),
            *raised_ms,
        ),
        AlertEvent::Recovered {
            connector,
            failing_since_ms,
            raised_ms,
            recovered_ms,
        } => (
            connector,
            *raised_ms,
            *failing_since_ms,
            "recovered",
            format!("incident-gateway: deliveries to {connector} go through again"),
            None,
            *recovered_ms,
        ),
    };
    json!({
        "incidentId": format!("igw-alert-{connector}-{raised_ms}"),
        "humanFriendlyId": format!("igw-{connector}"),
        // The schema's detection sources are the platform's; this type names the gateway's
        // own, for a connector's matchers.
        "incident_type": "gateway_alert",
        "correlation_name": summary,
        "defaultThreatRating": "high",
        "incident_threat_rating": if state == "failing" { "high" } else { "info" },
        "createTime": seconds(raised_ms),
        "updateTime": seconds(updated_ms),
        "recommendations": format!(
            "Check the target of connector {connector}; its deliveries wait queued. \
             GET /v1/connectors shows its queue; dead ones can be replayed with \
             POST /v1/deliveries/replay."
        ),
        "extra": {
            "gateway_alert": {
                "connector": connector,
                "state": state,
                "failing_since": crate::model::rfc3339(failing_since_ms),
                "last_error": error,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn config() -> AlertConfig {
        AlertConfig {
            failing_for: Duration::from_secs(60),
            notify: Some("chat".into()),
        }
    }

    #[test]
    fn raised_once_after_failing_for_long_enough_then_recovered_once() {
        let alerts = Alerts::default();
        let c = config();
        assert_eq!(
            alerts.observe("jira", &c, Some(false), "HTTP 503", false, 0),
            None
        );
        assert_eq!(alerts.observe("jira", &c, None, "", false, 30_000), None);
        assert_eq!(
            alerts.observe("jira", &c, Some(false), "HTTP 503", false, 59_999),
            None
        );
        let raised = alerts.observe("jira", &c, Some(false), "timed out", false, 60_000);
        assert_eq!(
            raised,
            Some(AlertEvent::Raised {
                connector: "jira".into(),
                why: "failing for 1m".into(),
                last_error: "timed out".into(),
                failing_since_ms: 0,
                raised_ms: 60_000,
            })
        );
        assert_eq!(alerts.alerting(), ["jira"]);
        assert_eq!(
            alerts.observe("jira", &c, Some(false), "x", false, 90_000),
            None,
            "once"
        );
        assert_eq!(
            alerts.observe("jira", &c, Some(true), "", false, 120_000),
            Some(AlertEvent::Recovered {
                connector: "jira".into(),
                failing_since_ms: 0,
                raised_ms: 60_000,
                recovered_ms: 120_000,
            })
        );
        assert!(alerts.alerting().is_empty());
        assert_eq!(
            alerts.observe("jira", &c, Some(true), "", false, 130_000),
            None
        );
    }

    #[test]
    fn an_opened_circuit_raises_at_once_and_a_success_before_the_time_raises_nothing() {
        let alerts = Alerts::default();
        let c = config();
        assert_eq!(alerts.observe("a", &c, Some(false), "e", false, 0), None);
        assert_eq!(
            alerts.observe("a", &c, Some(true), "", false, 10),
            None,
            "no alert, no recovery"
        );
        assert_eq!(
            alerts.observe("a", &c, Some(false), "e", false, 59_000),
            None
        );
        let raised = alerts.observe("a", &c, Some(false), "refused", true, 60_000);
        assert!(matches!(
            raised,
            Some(AlertEvent::Raised { ref why, failing_since_ms: 59_000, .. }) if why == "its circuit opened"
        ));
    }

    #[test]
    fn the_alert_incident_passes_the_incident_schema() {
        let schema = crate::schema::IncidentSchema::shipped().unwrap();
        for event in [
            AlertEvent::Raised {
                connector: "jira".into(),
                why: "its circuit opened".into(),
                last_error: "HTTP 503".into(),
                failing_since_ms: 1_700_000_000_000,
                raised_ms: 1_700_000_060_000,
            },
            AlertEvent::Recovered {
                connector: "jira".into(),
                failing_since_ms: 1_700_000_000_000,
                raised_ms: 1_700_000_060_000,
                recovered_ms: 1_700_000_120_000,
            },
        ] {
            let incident = alert_incident(&event);
            let violations = schema.violations(&incident, "");
            assert!(violations.is_empty(), "{incident}: {violations:?}");
        }
    }
}
