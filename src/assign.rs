//! Assignment: which group and owner a ticket goes to (seed 004's automatic assignment of
//! issues to groups).
//!
//! Rules come from `[[assignment]]` (every tenant) and `[[tenants.assignment]]` (one tenant's,
//! tried first). The first rule whose matchers all hold for the incident — and that names the
//! connector, where it names any — gives templates `assignment.group` and `assignment.owner`;
//! none gives both null. Rules are read at render time, so a reload that changes them applies
//! to every delivery rendered after it.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::route::Matcher;

/// Every assignment rule of the config, shared by its connectors.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    pub global: Vec<Rule>,
    /// A tenant's own rules, by its account.
    pub per_tenant: BTreeMap<i64, Vec<Rule>>,
}

/// One rule: when its matchers hold, where the ticket goes.
#[derive(Debug, Clone)]
pub struct Rule {
    pub matchers: Vec<Matcher>,
    /// Only for these connectors (ids differ between ticketing systems); every one when `None`.
    pub connectors: Option<Vec<String>>,
    pub group: Option<String>,
    pub owner: Option<String>,
}

/// What templates read as `assignment`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Assignment {
    pub group: Option<String>,
    pub owner: Option<String>,
}

impl Rule {
    fn applies(&self, connector: &str, incident: &Value) -> bool {
        self.connectors
            .as_ref()
            .is_none_or(|names| names.iter().any(|n| n == connector))
            && self.matchers.iter().all(|m| m.matches(incident))
    }
}

impl Rules {
    /// Where `connector`'s ticket for `incident` goes: the incident's tenant's rules first,
    /// then the global ones; the first that applies decides.
    pub fn assign(&self, connector: &str, incident: &Value) -> Assignment {
        let tenant = crate::route::account_of(incident)
            .and_then(|account| self.per_tenant.get(&account))
            .into_iter()
            .flatten();
        tenant
            .chain(&self.global)
            .find(|rule| rule.applies(connector, incident))
            .map(|rule| Assignment {
                group: rule.group.clone(),
                owner: rule.owner.clone(),
            })
            .unwrap_or_default()
    }

    pub fn is_empty(&self) -> bool {
        self.global.is_empty() && self.per_tenant.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::Condition;
    use serde_json::json;

    fn rule(class: &str, connectors: Option<&[&str]>, group: &str) -> Rule {
        Rule {
            matchers: vec![Matcher {
                field: "/incident_class".into(),
                condition: Condition::Equals(class.into()),
            }],
            connectors: connectors.map(|c| c.iter().map(|s| s.to_string()).collect()),
            group: Some(group.into()),
            owner: None,
        }
    }

    #[test]
    fn a_tenants_rule_comes_first_then_the_global_ones_in_order() {
        let rules = Rules {
            global: vec![
                rule("net", Some(&["redmine"]), "NET-redmine"),
                rule("net", None, "Network"),
                rule("auth", None, "Identity"),
            ],
            per_tenant: BTreeMap::from([(2, vec![rule("net", None, "ACME network")])]),
        };
        let group = |connector: &str, incident: Value| rules.assign(connector, &incident).group;
        let net = |account: Value| json!({"incident_class": "net", "accountId": account});
        assert_eq!(
            group("jira", net(json!(2))).as_deref(),
            Some("ACME network")
        );
        assert_eq!(group("jira", net(json!(7))).as_deref(), Some("Network"));
        assert_eq!(
            group("redmine", net(json!(7))).as_deref(),
            Some("NET-redmine")
        );
        assert_eq!(group("jira", net(Value::Null)).as_deref(), Some("Network"));
        // The tenant's rules do not match: the global ones still apply.
        let auth = json!({"incident_class": "auth", "accountId": 2});
        assert_eq!(group("jira", auth).as_deref(), Some("Identity"));
        // No rule: nothing assigned.
        let other = json!({"incident_class": "malware", "accountId": 2});
        assert_eq!(rules.assign("jira", &other), Assignment::default());
    }
}
