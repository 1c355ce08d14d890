//! `[threat_intel]`: the IOC lists incidents are matched against at ingest (global, or a
//! tenant's own), the incident fields looked up beside attackers and targets, and how often
//! the list files are looked at for changes. Every list is read and parsed here, so a bad
//! file is refused at load with its line.

use std::collections::HashSet;
use std::time::Duration;

use serde::Deserialize;

use super::tenants::Tenant;
use super::{ConfigError, Validator};
use crate::intel::{Column, Format, IntelSettings, ListSpec, ThreatIntel};

/// The list files are looked at this often unless `refresh` says otherwise.
const DEFAULT_REFRESH: Duration = Duration::from_secs(30);

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawThreatIntel {
    /// JSON pointers looked up beside the attackers and targets.
    #[serde(default)]
    fields: Vec<String>,
    #[serde(default, with = "humantime_serde")]
    refresh: Option<Duration>,
    #[serde(default)]
    lists: Vec<RawList>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawList {
    name: String,
    file: String,
    #[serde(default)]
    format: RawFormat,
    column: Option<RawColumn>,
    tenants: Option<Vec<String>>,
}

#[derive(Deserialize, Default, PartialEq)]
#[serde(rename_all = "lowercase")]
enum RawFormat {
    #[default]
    Plain,
    Csv,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawColumn {
    Number(usize),
    Name(String),
}

impl Validator<'_> {
    /// Every list named uniquely (the name is a matcher's `/ti/lists/NAME`), its file read
    /// and parsed, its tenants configured; every field a JSON pointer.
    pub(super) fn threat_intel(
        &self,
        raw: RawThreatIntel,
        tenants: &[Tenant],
    ) -> Result<ThreatIntel, ConfigError> {
        for (i, pointer) in raw.fields.iter().enumerate() {
            if !pointer.starts_with('/') {
                return Err(self.invalid(
                    format!("threat_intel.fields[{i}]"),
                    format!("{pointer:?} is not a JSON pointer (e.g. \"/extra/url\")"),
                ));
            }
        }
        let refresh = raw.refresh.unwrap_or(DEFAULT_REFRESH);
        if refresh < Duration::from_secs(1) {
            return Err(self.invalid("threat_intel.refresh", "must be at least 1s"));
        }
        let mut names = HashSet::new();
        let mut lists = Vec::with_capacity(raw.lists.len());
        for (i, l) in raw.lists.into_iter().enumerate() {
            let at = format!("threat_intel.lists[{i}]");
            self.plain_name(format!("{at}.name"), &l.name)?;
            if !names.insert(l.name.clone()) {
                return Err(
                    self.invalid(format!("{at}.name"), format!("{:?} is used twice", l.name))
                );
            }
            let file = self.existing_file(&format!("{at}.file"), &l.file)?;
            let format = match (l.format, l.column) {
                (RawFormat::Plain, None) => Format::Plain,
                (RawFormat::Plain, Some(_)) => {
                    return Err(
                        self.invalid(format!("{at}.column"), "a column is for format = \"csv\"")
                    );
                }
                (RawFormat::Csv, None) => {
                    return Err(self.invalid(
                        format!("{at}.column"),
                        "a CSV list names the column of its IOCs (a header name, or a number from 1)",
                    ));
                }
                (RawFormat::Csv, Some(RawColumn::Number(0))) => {
                    return Err(self.invalid(format!("{at}.column"), "columns count from 1"));
                }
                (RawFormat::Csv, Some(RawColumn::Number(n))) => Format::Csv {
                    column: Column::Number(n),
                },
                (RawFormat::Csv, Some(RawColumn::Name(name))) => Format::Csv {
                    column: Column::Named(name),
                },
            };
            let accounts = match l.tenants {
                None => None,
                Some(names) if names.is_empty() => {
                    return Err(self.invalid(
                        format!("{at}.tenants"),
                        "names no tenant; leave it out for a list of every tenant",
                    ));
                }
                Some(names) => {
                    let mut accounts = Vec::with_capacity(names.len());
                    for (j, name) in names.iter().enumerate() {
                        let tenant = tenants.iter().find(|t| &t.name == name).ok_or_else(|| {
                            let known: Vec<&str> =
                                tenants.iter().map(|t| t.name.as_str()).collect();
                            self.invalid(
                                format!("{at}.tenants[{j}]"),
                                format!(
                                    "no tenant is named {name:?} (the tenants: {})",
                                    known.join(", ")
                                ),
                            )
                        })?;
                        accounts.push(tenant.account_id);
                    }
                    Some(accounts)
                }
            };
            lists.push(ListSpec {
                name: l.name,
                file,
                format,
                accounts,
            });
        }
        if lists.is_empty() && !raw.fields.is_empty() {
            return Err(self.invalid(
                "threat_intel.fields",
                "no [[threat_intel.lists]] is configured to look them up in",
            ));
        }
        // A list file that does not parse is not the config's fault at run time (a feed
        // is rewritten behind the gateway's back): it is held empty and named, `check`
        // refuses it, the gateway logs it.
        Ok(ThreatIntel::load(IntelSettings {
            lists,
            fields: raw.fields,
            refresh,
        }))
    }
}
