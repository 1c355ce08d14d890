//! Routing: which connectors an incident goes to.
//!
//! Each connector lists matchers (Alertmanager-style: a field, by JSON pointer, compared by
//! equality, membership or an anchored regex, each with a negated form) and an optional
//! minimum threat rating. An incident goes to every connector whose matchers all hold;
//! a connector without matchers takes every incident.

use serde_json::Value;

// Until every caller names `model` directly.
use crate::model::ThreatRating;

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

/// What routing reads of a connector. The configuration implements it, so routing needs
/// nothing else of the configuration.
pub trait Routed {
    /// An upstream connector (the platform's own API) hears only of completions.
    fn upstream(&self) -> bool;
    fn min_threat_rating(&self) -> Option<ThreatRating>;
    fn matchers(&self) -> &[Matcher];
}

/// Whether `connector` takes `incident`. Upstream connectors take none: they hear only of
/// completions.
pub fn accepts(connector: &impl Routed, incident: &Value) -> bool {
    if connector.upstream() {
        return false;
    }
    if let Some(min) = connector.min_threat_rating() {
        match ThreatRating::of_incident(incident) {
            Some(rating) if rating >= min => {}
            _ => return false,
        }
    }
    connector.matchers().iter().all(|m| m.matches(incident))
}

/// The connectors an incident goes to, in configuration order.
pub fn route<'a, C: Routed>(connectors: &'a [C], incident: &Value) -> Vec<&'a C> {
    connectors
        .iter()
        .filter(|c| accepts(*c, incident))
        .collect()
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
