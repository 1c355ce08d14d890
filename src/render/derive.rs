//! Derived fields: facts every template wants but the incident spreads over several fields
//! (who attacked, what was hit, how bad), and the per-incident roll-ups of its `events`
//! (seed 003). Computed once per render context.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::model::ThreatRating;

/// The incident's member the gateway writes its threat-intel findings to (see `intel`).
pub const THREAT_INTEL_MEMBER: &str = "ti";

/// `ti` when nothing matched, or no list is configured: what templates read then.
pub fn no_threat_findings() -> Value {
    serde_json::json!({ "matched": false, "lists": {}, "matches": [] })
}

/// The derived fields, by the names templates use.
pub fn derived(incident: &Value) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("attackers".into(), Value::from(attackers(incident)));
    out.insert("targets".into(), Value::from(targets(incident)));
    let rating = ThreatRating::of_incident(incident);
    out.insert(
        "threat_level".into(),
        rating.map(|r| Value::from(r as u8)).unwrap_or(Value::Null),
    );
    out.insert(
        "threat_rating".into(),
        rating.map(|r| Value::from(r.name())).unwrap_or(Value::Null),
    );
    out.insert(
        "console_url".into(),
        incident
            .pointer("/extra/incidentUrl")
            .filter(|v| v.is_string())
            .cloned()
            .unwrap_or(Value::Null),
    );
    // The gateway's threat-intel findings, stored on the incident at ingest.
    out.insert(
        THREAT_INTEL_MEMBER.into(),
        incident
            .get(THREAT_INTEL_MEMBER)
            .filter(|v| v.is_object())
            .cloned()
            .unwrap_or_else(no_threat_findings),
    );
    let events = incident
        .get("events")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let rollups = Rollups::of(events);
    out.insert("unique_hosts".into(), to_object(rollups.unique_hosts));
    out.insert(
        "unique_signatures".into(),
        to_object(rollups.unique_signatures),
    );
    out.insert(
        "response_code_tally".into(),
        to_object(rollups.response_code_tally),
    );
    out.insert(
        "summary_breakdown".into(),
        to_object(rollups.summary_breakdown),
    );
    out
}

/// Unique attacker IPs and user names, in the order the incident gives them.
pub fn attackers(incident: &Value) -> Vec<String> {
    parties(incident, "attacker", "/attacker_lset", "/extra/location_ip").0
}

/// Unique target IPs, user names and hosts.
pub fn targets(incident: &Value) -> Vec<String> {
    let mut found = parties(incident, "victim", "/victim_lset", "/extra/target_host");
    if let Some(host) = incident.get("asset_host_name") {
        found.add_value(host);
    }
    found.0
}

/// One side of an incident: its main party, the party list, then the plain values `extra`
/// adds, each once.
fn parties(incident: &Value, party: &str, party_list: &str, extra: &str) -> Unique {
    let mut found = Unique::default();
    found.add_party(incident.get(party));
    for item in list(incident, party_list) {
        found.add_party(Some(item));
    }
    for value in list(incident, extra) {
        found.add_value(value);
    }
    found
}

fn list<'a>(incident: &'a Value, pointer: &str) -> &'a [Value] {
    incident
        .pointer(pointer)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

#[derive(Default)]
struct Unique(Vec<String>);

impl Unique {
    /// An attacker/victim object: its `ip`, then its `value` (a user name, or several written
    /// as a Python list literal, as the seed's `"['username1', 'username2']"`).
    fn add_party(&mut self, party: Option<&Value>) {
        let Some(party) = party else { return };
        if let Some(ip) = party.get("ip") {
            self.add_value(ip);
        }
        if let Some(value) = party.get("value") {
            self.add_value(value);
        }
    }

    fn add_value(&mut self, v: &Value) {
        match v {
            Value::String(s) => {
                for name in split_list_literal(s) {
                    if !self.0.contains(&name) {
                        self.0.push(name);
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| self.add_value(i)),
            _ => {}
        }
    }
}

/// `"['a', 'b']"` → `a`, `b`; any other text → itself (trimmed), blank → nothing.
fn split_list_literal(s: &str) -> Vec<String> {
    let t = s.trim();
    let inner = t.strip_prefix('[').and_then(|r| r.strip_suffix(']'));
    match inner {
        Some(inner) => inner
            .split(',')
            .map(|part| {
                part.trim()
                    .trim_matches(|c| c == '\'' || c == '"')
                    .trim()
                    .to_string()
            })
            .filter(|p| !p.is_empty())
            .collect(),
        None if t.is_empty() => vec![],
        None => vec![t.to_string()],
    }
}

type Ids = Vec<Value>;
type ByValue = BTreeMap<String, Ids>;

/// Seed 003's roll-ups: each maps a value to the ids of the events that carry it.
#[derive(Default)]
struct Rollups {
    unique_hosts: ByValue,
    unique_signatures: ByValue,
    response_code_tally: ByValue,
    /// signature → host → response code → event ids.
    summary_breakdown: BTreeMap<String, BTreeMap<String, ByValue>>,
}

impl Rollups {
    fn of(events: &[Value]) -> Rollups {
        let mut r = Rollups::default();
        for (index, event) in events.iter().enumerate() {
            let id = event
                .get("event_id")
                .filter(|v| v.is_string() || v.is_number())
                .cloned()
                .unwrap_or_else(|| Value::from(index + 1));
            let field = |names: &[&str]| {
                names
                    .iter()
                    .find_map(|n| {
                        event
                            .get(*n)
                            .filter(|v| !v.is_null())
                            .map(|v| crate::render::helpers::text(v).into_owned())
                    })
                    .filter(|s| !s.is_empty())
            };
            let host = field(&["host", "dest_addr"]);
            let signature = field(&["signature_name"]);
            let code = field(&["response_code"]);
            if let Some(h) = &host {
                r.unique_hosts
                    .entry(h.clone())
                    .or_default()
                    .push(id.clone());
            }
            if let Some(s) = &signature {
                r.unique_signatures
                    .entry(s.clone())
                    .or_default()
                    .push(id.clone());
            }
            if let Some(c) = &code {
                r.response_code_tally
                    .entry(c.clone())
                    .or_default()
                    .push(id.clone());
            }
            r.summary_breakdown
                .entry(signature.unwrap_or_else(|| "(unknown signature)".into()))
                .or_default()
                .entry(host.unwrap_or_else(|| "(unknown host)".into()))
                .or_default()
                .entry(code.unwrap_or_else(|| "(no response)".into()))
                .or_default()
                .push(id);
        }
        r
    }
}

fn to_object<T: serde::Serialize>(map: T) -> Value {
    serde_json::to_value(map).unwrap_or_else(|_| Value::Object(Map::new()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn attackers_and_targets_from_every_field() {
        let sample: Value =
            serde_json::from_str(include_str!("../../examples/incidents/sample.json")).unwrap();
        assert_eq!(
            attackers(&sample),
            ["10.10.10.12", "86.34.222.99", "SomeAttacker"]
        );
        assert_eq!(targets(&sample), ["username1", "username2", "10.1.2.3"]);
        let d = derived(&sample);
        assert_eq!(d["threat_level"], 2);
        assert_eq!(d["threat_rating"], "medium");
        assert_eq!(
            d["console_url"],
            "https://console.alertlogic.com/fake/incident/url"
        );
        assert_eq!(d["unique_hosts"], json!({}));
    }

    #[test]
    fn event_rollups_as_seed_003_describes() {
        let inc = json!({"events": [
            {"event_id": 14608, "host": "example.net", "signature_name": "AL Joomla", "response_code": "200"},
            {"event_id": 14621, "host": "example.net", "signature_name": "AL Joomla", "response_code": 200},
            {"event_id": 15000, "dest_addr": "10.0.0.5", "signature_name": "SQLi", "response_code": "403"},
        ]});
        let d = derived(&inc);
        assert_eq!(
            d["unique_hosts"],
            json!({"example.net": [14608, 14621], "10.0.0.5": [15000]})
        );
        assert_eq!(
            d["unique_signatures"],
            json!({"AL Joomla": [14608, 14621], "SQLi": [15000]})
        );
        assert_eq!(
            d["response_code_tally"],
            json!({"200": [14608, 14621], "403": [15000]})
        );
        assert_eq!(
            d["summary_breakdown"],
            json!({"AL Joomla": {"example.net": {"200": [14608, 14621]}}, "SQLi": {"10.0.0.5": {"403": [15000]}}})
        );
    }

    #[test]
    fn list_literals_split() {
        assert_eq!(split_list_literal("['a', \"b\" ,c]"), ["a", "b", "c"]);
        assert_eq!(split_list_literal(" x "), ["x"]);
        assert!(split_list_literal("[]").is_empty());
    }
}
