//! `[[tenants]]`: the customers a SOC serves. A tenant is the `accountId` of its incidents
//! (seed 001) with a name; a source bound to tenants (`sources[].tenants`) posts only for
//! them.

use std::collections::{HashMap, HashSet};

use serde::Deserialize;

use super::{ConfigError, Validator};
use crate::auth::TenantBinding;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTenant {
    name: String,
    account_id: i64,
}

/// One tenant: the name admins use, and the `accountId` its incidents carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub name: String,
    pub account_id: i64,
}

impl Validator<'_> {
    /// Every tenant: names non-empty and unique, account ids unique.
    pub(super) fn tenants(&self, raw: Vec<RawTenant>) -> Result<Vec<Tenant>, ConfigError> {
        let mut names = HashSet::new();
        let mut accounts = HashMap::new();
        let mut tenants = Vec::with_capacity(raw.len());
        for (i, t) in raw.into_iter().enumerate() {
            if t.name.trim().is_empty() || !names.insert(t.name.clone()) {
                return Err(self.invalid(
                    format!("tenants[{i}].name"),
                    format!("{:?} is empty or used twice", t.name),
                ));
            }
            if let Some(other) = accounts.insert(t.account_id, t.name.clone()) {
                return Err(self.invalid(
                    format!("tenants[{i}].account_id"),
                    format!("{} is already tenant {other:?}'s", t.account_id),
                ));
            }
            tenants.push(Tenant {
                name: t.name,
                account_id: t.account_id,
            });
        }
        Ok(tenants)
    }

    /// A source's `tenants`: each a configured tenant's name (with the name most likely
    /// meant when it is not), at least one.
    pub(super) fn binding(
        &self,
        field: &str,
        names: &[String],
        tenants: &[Tenant],
    ) -> Result<TenantBinding, ConfigError> {
        if names.is_empty() {
            return Err(self.invalid(
                field,
                "names no tenant; leave it out for a source that posts for every account",
            ));
        }
        let mut accounts = HashMap::new();
        for (i, name) in names.iter().enumerate() {
            let Some(tenant) = tenants.iter().find(|t| &t.name == name) else {
                let known: Vec<String> = tenants.iter().map(|t| t.name.clone()).collect();
                let hint = match crate::fields::best_candidate(name, &known) {
                    Some(meant) => format!(" (did you mean {meant:?}?)"),
                    None if known.is_empty() => " ([[tenants]] defines none)".to_string(),
                    None => format!("; the tenants are {}", known.join(", ")),
                };
                return Err(self.invalid(
                    format!("{field}[{i}]"),
                    format!("no tenant is named {name:?}{hint}"),
                ));
            };
            accounts.insert(tenant.account_id, tenant.name.clone());
        }
        Ok(TenantBinding::new(accounts))
    }
}
