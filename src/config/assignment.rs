//! `[[assignment]]` and `[[tenants.assignment]]`: the rules that say which group and owner a
//! ticket goes to, built into [`crate::assign::Rules`].

use std::collections::BTreeMap;

use serde::Deserialize;

use super::connectors::RawMatcher;
use super::tenants::Tenant;
use super::{ConfigError, Validator};
use crate::assign::{Rule, Rules};

/// One rule as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    #[serde(default)]
    matchers: Vec<RawMatcher>,
    connectors: Option<Vec<String>>,
    group: Option<String>,
    owner: Option<String>,
}

impl Validator<'_> {
    /// The global rules, then each tenant's (`per_tenant[i]`: the rules of `tenants[i]`):
    /// each gives a group or an owner (or both), names only configured connectors, and has
    /// matchers as a connector's are checked.
    pub(super) fn assignment(
        &self,
        global: Vec<RawRule>,
        per_tenant: Vec<Vec<RawRule>>,
        tenants: &[Tenant],
        connectors: &[String],
    ) -> Result<Rules, ConfigError> {
        let mut rules = Rules {
            global: self.rules("assignment", global, connectors)?,
            per_tenant: BTreeMap::new(),
        };
        for (i, (raw, tenant)) in per_tenant.into_iter().zip(tenants).enumerate() {
            if !raw.is_empty() {
                let own = self.rules(&format!("tenants[{i}].assignment"), raw, connectors)?;
                rules.per_tenant.insert(tenant.account_id, own);
            }
        }
        Ok(rules)
    }

    fn rules(
        &self,
        field: &str,
        raw: Vec<RawRule>,
        connectors: &[String],
    ) -> Result<Vec<Rule>, ConfigError> {
        let mut rules = Vec::with_capacity(raw.len());
        for (i, r) in raw.into_iter().enumerate() {
            let at = format!("{field}[{i}]");
            let blank = |v: &Option<String>| v.as_deref().is_none_or(|s| s.trim().is_empty());
            if blank(&r.group) && blank(&r.owner) {
                return Err(self.invalid(
                    format!("{at}.group"),
                    "a rule gives a group, an owner, or both",
                ));
            }
            if let Some(names) = &r.connectors {
                if names.is_empty() {
                    return Err(self.invalid(
                        format!("{at}.connectors"),
                        "names no connector; leave it out for a rule of every connector",
                    ));
                }
                for (j, name) in names.iter().enumerate() {
                    if !connectors.contains(name) {
                        let hint = match crate::fields::best_candidate(name, connectors) {
                            Some(meant) => format!(" (did you mean {meant:?}?)"),
                            None => format!("; the connectors are {}", connectors.join(", ")),
                        };
                        return Err(self.invalid(
                            format!("{at}.connectors[{j}]"),
                            format!("no connector is named {name:?}{hint}"),
                        ));
                    }
                }
            }
            let matchers = r
                .matchers
                .into_iter()
                .enumerate()
                .map(|(j, m)| self.matcher(&format!("{at}.matchers[{j}]"), m))
                .collect::<Result<Vec<_>, _>>()?;
            rules.push(Rule {
                matchers,
                connectors: r.connectors,
                group: r.group,
                owner: r.owner,
            });
        }
        Ok(rules)
    }
}
