//! Routing: which connectors an incident goes to.
//!
//! Each connector lists matchers (Alertmanager-style: a field, by JSON pointer, compared by
//! equality, membership or an anchored regex, each with a negated form) and an optional
//! minimum threat rating. An incident goes to every connector whose matchers all hold;
//! a connector without matchers takes every incident. A connector may serve some tenants only
//! (`tenants`), and a tenant may have matchers and a minimum rating of its own on a connector
//! (`per_tenant`): the incident's `accountId` picks them.

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
        self.holds_for(&self.compared(incident))
    }

    /// The text the matcher compares: the field's, "" when it is missing or null.
    pub fn compared(&self, incident: &Value) -> String {
        match incident.pointer(&self.field) {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
        }
    }

    fn holds_for(&self, text: &str) -> bool {
        let text = text.to_string();
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

impl std::fmt::Display for Condition {
    /// As the config writes it: `regex = "authentication:.*"`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A regex is shown without the anchors the config adds.
        let unanchored = |re: &regex::Regex| {
            let s = re.as_str();
            s.strip_prefix("^(?:")
                .and_then(|s| s.strip_suffix(")$"))
                .unwrap_or(s)
                .to_string()
        };
        match self {
            Condition::Equals(v) => write!(f, "equals = {v:?}"),
            Condition::NotEquals(v) => write!(f, "not_equals = {v:?}"),
            Condition::OneOf(vs) => write!(f, "one_of = {vs:?}"),
            Condition::NotOneOf(vs) => write!(f, "not_one_of = {vs:?}"),
            Condition::Regex(re) => write!(f, "regex = {:?}", unanchored(re)),
            Condition::NotRegex(re) => write!(f, "not_regex = {:?}", unanchored(re)),
        }
    }
}

/// Why a connector takes an incident or not, step by step (for `incident-gateway routes`).
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    pub accepted: bool,
    /// An upstream connector takes no incident at all.
    pub upstream: bool,
    /// Whether the connector serves the incident's account (its `tenants`).
    pub serves: bool,
    /// The tenant whose own settings on the connector apply, if any.
    pub tenant: Option<String>,
    /// The minimum rating, the incident's rating (if it has one) and whether it is enough.
    pub min_threat_rating: Option<(ThreatRating, Option<ThreatRating>, bool)>,
    pub matchers: Vec<MatcherOutcome>,
}

/// One matcher against one incident.
#[derive(Debug, Clone, PartialEq)]
pub struct MatcherOutcome {
    pub field: String,
    /// The condition as the config writes it.
    pub condition: String,
    /// The field's value, `None` when the incident lacks it (or it is null: compared as "").
    pub actual: Option<Value>,
    pub met: bool,
}

/// [`accepts`], with each reason: every step is evaluated, even after one fails.
pub fn explain(connector: &impl Routed, incident: &Value) -> Explanation {
    let account = account_of(incident);
    let min_threat_rating = connector.min_threat_rating(account).map(|min| {
        let rating = ThreatRating::of_incident(incident);
        (min, rating, rating.is_some_and(|r| r >= min))
    });
    let matchers: Vec<MatcherOutcome> = connector
        .matchers(account)
        .iter()
        .map(|m| MatcherOutcome {
            field: m.field.clone(),
            condition: m.condition.to_string(),
            actual: incident.pointer(&m.field).filter(|v| !v.is_null()).cloned(),
            met: m.matches(incident),
        })
        .collect();
    Explanation {
        accepted: accepts(connector, incident),
        upstream: connector.upstream(),
        serves: connector.serves(account),
        tenant: connector.tenant_of(account).map(str::to_string),
        min_threat_rating,
        matchers,
    }
}

/// What routing reads of a connector. The configuration implements it, so routing needs
/// nothing else of the configuration.
pub trait Routed {
    /// An upstream connector (the platform's own API) hears only of completions.
    fn upstream(&self) -> bool;
    /// Whether it takes incidents of `account` at all (its `tenants`).
    fn serves(&self, account: Option<i64>) -> bool;
    /// The tenant of `account` where it has settings of its own on this connector.
    fn tenant_of(&self, account: Option<i64>) -> Option<&str>;
    /// For an incident of `account`: the tenant's own where it has one, else the connector's.
    fn min_threat_rating(&self, account: Option<i64>) -> Option<ThreatRating>;
    fn matchers(&self, account: Option<i64>) -> &[Matcher];
}

/// An incident's `accountId`: its tenant.
pub fn account_of(incident: &Value) -> Option<i64> {
    incident.get("accountId").and_then(Value::as_i64)
}

/// Whether `connector` takes `incident`. Upstream connectors take none: they hear only of
/// completions.
pub fn accepts(connector: &impl Routed, incident: &Value) -> bool {
    let account = account_of(incident);
    if connector.upstream() || !connector.serves(account) {
        return false;
    }
    if let Some(min) = connector.min_threat_rating(account) {
        match ThreatRating::of_incident(incident) {
            Some(rating) if rating >= min => {}
            _ => return false,
        }
    }
    connector
        .matchers(account)
        .iter()
        .all(|m| m.matches(incident))
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

    struct Routes {
        min: Option<ThreatRating>,
        matchers: Vec<Matcher>,
    }

    impl Routed for Routes {
        fn upstream(&self) -> bool {
            false
        }
        fn serves(&self, _: Option<i64>) -> bool {
            true
        }
        fn tenant_of(&self, _: Option<i64>) -> Option<&str> {
            None
        }
        fn min_threat_rating(&self, _: Option<i64>) -> Option<ThreatRating> {
            self.min
        }
        fn matchers(&self, _: Option<i64>) -> &[Matcher] {
            &self.matchers
        }
    }

    #[test]
    fn explain_gives_every_step_and_agrees_with_accepts() {
        let re = regex::Regex::new("^(?:authentication:.*)$").unwrap();
        let routes = Routes {
            min: Some(ThreatRating::Medium),
            matchers: vec![
                m("/incident_class", Condition::Regex(re)),
                m("/missing", Condition::Equals("x".into())),
            ],
        };
        let inc =
            json!({"incident_class": "authentication:activity", "incident_threat_rating": "High"});
        let e = explain(&routes, &inc);
        assert!(!e.accepted);
        assert_eq!(e.accepted, accepts(&routes, &inc));
        assert_eq!(
            e.min_threat_rating,
            Some((ThreatRating::Medium, Some(ThreatRating::High), true))
        );
        assert_eq!(e.matchers[0].condition, "regex = \"authentication:.*\"");
        assert!(e.matchers[0].met);
        assert_eq!(e.matchers[1].actual, None);
        assert!(!e.matchers[1].met);
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
