//! Routing: which connectors an incident goes to.
//!
//! Each connector lists matchers (Alertmanager-style: a field, by JSON pointer, compared by
//! equality, membership or an anchored regex, each with a negated form) and an optional
//! minimum threat rating. An incident goes to every connector whose matchers all hold;
//! a connector without matchers takes every incident.

use serde_json::Value;

use crate::config::ConnectorConfig;

#[derive(Debug, Clone)]
pub struct Matcher {
    /// JSON pointer into the incident.
    pub field: String,
    pub condition: Condition,
}

#[derive(Debug, Clone)]
pub enum Condition {
    Equals(String),
    NotEquals(String),
    OneOf(Vec<String>),
    NotOneOf(Vec<String>),
    /// Anchored at both ends, as Alertmanager does.
    Regex(regex::Regex),
    NotRegex(regex::Regex),
}

impl Matcher {
    /// A missing field (or null) compares as the empty string, as a missing label does in
    /// Alertmanager: `not_equals = "x"` holds for it, `equals = "x"` does not.
    pub fn matches(&self, incident: &Value) -> bool {
        let text = match incident.pointer(&self.field) {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
        };
        match &self.condition {
            Condition::Equals(v) => text == *v,
            Condition::NotEquals(v) => text != *v,
            Condition::OneOf(vs) => vs.contains(&text),
            Condition::NotOneOf(vs) => !vs.contains(&text),
            Condition::Regex(re) => re.is_match(&text),
            Condition::NotRegex(re) => !re.is_match(&text),
        }
    }
}

/// Threat ratings in order, as the seed lists them (case differs between fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ThreatRating {
    Info = 0,
    Low = 1,
    Medium = 2,
    High = 3,
    Critical = 4,
}

impl ThreatRating {
    pub fn parse(text: &str) -> Option<ThreatRating> {
        match text.trim().to_ascii_lowercase().as_str() {
            "info" => Some(ThreatRating::Info),
            "low" => Some(ThreatRating::Low),
            "medium" => Some(ThreatRating::Medium),
            "high" => Some(ThreatRating::High),
            "critical" => Some(ThreatRating::Critical),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ThreatRating::Info => "info",
            ThreatRating::Low => "low",
            ThreatRating::Medium => "medium",
            ThreatRating::High => "high",
            ThreatRating::Critical => "critical",
        }
    }

    /// The incident's rating after analysis, falling back to the flattened field and then to
    /// the initial rating.
    pub fn of_incident(incident: &Value) -> Option<ThreatRating> {
        [
            "/incident/threatRating",
            "/incident_threat_rating",
            "/defaultThreatRating",
        ]
        .iter()
        .find_map(|p| {
            incident
                .pointer(p)
                .and_then(Value::as_str)
                .and_then(Self::parse)
        })
    }
}

/// Whether `connector` takes `incident`. Upstream connectors (the platform's own API) take
/// none: they hear only of completions.
pub fn accepts(connector: &ConnectorConfig, incident: &Value) -> bool {
    if connector.upstream {
        return false;
    }
    if let Some(min) = connector.min_threat_rating {
        match ThreatRating::of_incident(incident) {
            Some(rating) if rating >= min => {}
            _ => return false,
        }
    }
    connector.matchers.iter().all(|m| m.matches(incident))
}

/// The connectors an incident goes to, in configuration order.
pub fn route<'a>(connectors: &'a [ConnectorConfig], incident: &Value) -> Vec<&'a ConnectorConfig> {
    connectors.iter().filter(|c| accepts(c, incident)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn m(field: &str, condition: Condition) -> Matcher {
        Matcher {
            field: field.into(),
            condition,
        }
    }

    #[test]
    fn conditions() {
        let inc = json!({"incident_class": "authentication:activity", "accountId": 2, "x": null});
        assert!(
            m(
                "/incident_class",
                Condition::Equals("authentication:activity".into())
            )
            .matches(&inc)
        );
        assert!(
            !m(
                "/incident_class",
                Condition::NotEquals("authentication:activity".into())
            )
            .matches(&inc)
        );
        assert!(m("/accountId", Condition::OneOf(vec!["1".into(), "2".into()])).matches(&inc));
        assert!(!m("/accountId", Condition::NotOneOf(vec!["2".into()])).matches(&inc));
        let re = regex::Regex::new("^(?:authentication:.*)$").unwrap();
        assert!(m("/incident_class", Condition::Regex(re.clone())).matches(&inc));
        assert!(!m("/incident_class", Condition::NotRegex(re)).matches(&inc));
        // Missing and null compare as "".
        assert!(m("/missing", Condition::NotEquals("a".into())).matches(&inc));
        assert!(m("/x", Condition::Equals(String::new())).matches(&inc));
        assert!(!m("/missing", Condition::Equals("a".into())).matches(&inc));
    }

    #[test]
    fn threat_rating_order_and_fallbacks() {
        assert!(ThreatRating::Critical > ThreatRating::High);
        assert_eq!(
            ThreatRating::of_incident(
                &json!({"incident": {"threatRating": "HIGH"}, "defaultThreatRating": "low"})
            ),
            Some(ThreatRating::High)
        );
        assert_eq!(
            ThreatRating::of_incident(&json!({"defaultThreatRating": "low"})),
            Some(ThreatRating::Low)
        );
        assert_eq!(ThreatRating::of_incident(&json!({})), None);
    }
}
