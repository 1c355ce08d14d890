//! `[[tenants]]`: the customers a SOC serves. A tenant is the `accountId` of its incidents
//! (seed 001) with a name; a source bound to tenants (`sources[].tenants`) posts only for
//! them; an admin token scoped to tenants (`[[admin_tokens]]`) sees and replays only theirs.

use std::collections::{HashMap, HashSet};

use serde::Deserialize;

use super::{ConfigError, Validator};
use crate::auth::{ScopedAdmin, TenantBinding};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTenant {
    name: String,
    account_id: i64,
    /// The tenant's own assignment rules, tried before the global ones.
    #[serde(default)]
    assignment: Vec<super::assignment::RawRule>,
}

impl RawTenant {
    /// Its assignment rules, taken out to be checked once the connectors are known.
    pub(super) fn take_assignment(&mut self) -> Vec<super::assignment::RawRule> {
        std::mem::take(&mut self.assignment)
    }
}

/// Tenant names the metrics use for incidents of no tenant.
const RESERVED_NAMES: [&str; 2] = ["none", "other"];

/// `[[admin_tokens]]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdminToken {
    name: String,
    token: Option<String>,
    token_file: Option<String>,
    tenants: Vec<String>,
    #[serde(default)]
    access: Access,
}

/// What a scoped admin token may do.
#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Access {
    /// Read its tenants' incidents and deliveries (seed 004's customer read-only access).
    #[default]
    Read,
    /// Read, and replay or resolve its tenants' deliveries.
    Write,
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
            // It prefixes correlation keys (`acme:…`): no `:` or space may make one prefix
            // another's.
            self.plain_name(format!("tenants[{i}].name"), &t.name)?;
            if RESERVED_NAMES.contains(&t.name.as_str()) {
                return Err(self.invalid(
                    format!("tenants[{i}].name"),
                    format!(
                        "{:?} is reserved: the metrics' tenant label says \"none\" for an \
                         incident without an account and \"other\" for an account no tenant has",
                        t.name
                    ),
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

    /// Every scoped admin token: named uniquely, at least 16 characters, unlike every other
    /// token of the config (`others`: the admin token, API keys and callback tokens), bound to
    /// configured tenants.
    pub(super) fn admin_tokens(
        &self,
        raw: Vec<RawAdminToken>,
        tenants: &[Tenant],
        others: &[&str],
    ) -> Result<Vec<ScopedAdmin>, ConfigError> {
        let mut names = HashSet::new();
        let mut seen: HashSet<String> = HashSet::new();
        let mut tokens = Vec::with_capacity(raw.len());
        for (i, t) in raw.into_iter().enumerate() {
            let field = format!("admin_tokens[{i}]");
            if t.name.trim().is_empty() || !names.insert(t.name.clone()) {
                return Err(self.invalid(
                    format!("{field}.name"),
                    format!("{:?} is empty or used twice", t.name),
                ));
            }
            let token = match (t.token, &t.token_file) {
                (Some(_), Some(_)) => {
                    return Err(self.invalid(
                        format!("{field}.token_file"),
                        "give token or token_file, not both",
                    ));
                }
                (Some(mut token), None) => {
                    self.expand(&format!("{field}.token"), &mut token)?;
                    token
                }
                (None, Some(file)) => {
                    self.read_secret_file(&format!("{field}.token_file"), file)?
                }
                (None, None) => {
                    return Err(self.invalid(format!("{field}.token"), "give token or token_file"));
                }
            };
            // As written, to mask it wherever it could show.
            self.credential(&token);
            self.check_token(&format!("{field}.token"), &token)?;
            if others.contains(&token.as_str()) || !seen.insert(token.clone()) {
                return Err(self.invalid(
                    format!("{field}.token"),
                    "must differ from every other token, api_key and the admin_token",
                ));
            }
            let binding = self.binding(&format!("{field}.tenants"), &t.tenants, tenants)?;
            tokens.push(ScopedAdmin {
                name: t.name,
                token,
                tenants: binding,
                write: t.access == Access::Write,
            });
        }
        Ok(tokens)
    }

    /// The configured tenant `name` (`field` names where it is written), or an error with
    /// the name most likely meant.
    pub(super) fn tenant_named<'t>(
        &self,
        field: &str,
        name: &str,
        tenants: &'t [Tenant],
    ) -> Result<&'t Tenant, ConfigError> {
        if let Some(tenant) = tenants.iter().find(|t| t.name == name) {
            return Ok(tenant);
        }
        let known: Vec<String> = tenants.iter().map(|t| t.name.clone()).collect();
        let hint = match crate::fields::best_candidate(name, &known) {
            Some(meant) => format!(" (did you mean {meant:?}?)"),
            None if known.is_empty() => " ([[tenants]] defines none)".to_string(),
            None => format!("; the tenants are {}", known.join(", ")),
        };
        Err(self.invalid(field, format!("no tenant is named {name:?}{hint}")))
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
                "names no tenant (a source that posts for every account leaves it out; a scoped \
                 admin token needs one)",
            ));
        }
        let mut accounts = HashMap::new();
        for (i, name) in names.iter().enumerate() {
            let tenant = self.tenant_named(&format!("{field}[{i}]"), name, tenants)?;
            accounts.insert(tenant.account_id, tenant.name.clone());
        }
        Ok(TenantBinding::new(accounts))
    }
}
