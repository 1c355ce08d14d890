//! `[sla]`: the SLA watchdog's settings — which connectors' tickets have clocks, the
//! business-hours calendars they count in, the policies that set the allowances per tenant
//! and priority, what a ticketing system's statuses mean, and who hears a warning, a breach
//! or a recovery. Built into [`crate::sla::SlaSettings`], shared by every connector it names.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{NaiveDate, NaiveTime};
use serde::Deserialize;

use super::tenants::Tenant;
use super::{ConfigError, Validator};
use crate::connector::Connector;
use crate::model::{ThreatRating, millis};
use crate::sla::{Calendar, Policy, Report, SlaSettings, TakeOverOn};

/// A wait with no end of its own ends after this unless `waiting_expires` says otherwise.
const DEFAULT_WAITING_EXPIRES: Duration = Duration::from_secs(24 * 3600);

/// The warning comes this long before a breach unless a policy says otherwise (at most half
/// the policy's shortest allowance, so a short SLA does not warn at once).
const DEFAULT_WARN_BEFORE: Duration = Duration::from_secs(15 * 60);

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSla {
    #[serde(default)]
    connectors: Vec<String>,
    #[serde(default)]
    notify: Vec<String>,
    #[serde(default)]
    take_over_on: RawTakeOverOn,
    #[serde(default, with = "humantime_serde")]
    waiting_expires: Option<Duration>,
    calendar: Option<RawCalendar>,
    #[serde(default)]
    calendars: BTreeMap<String, RawCalendar>,
    #[serde(default)]
    statuses: BTreeMap<String, Report>,
    #[serde(default)]
    policies: Vec<RawPolicy>,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RawTakeOverOn {
    #[default]
    Created,
    Status,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCalendar {
    time_zone: Option<String>,
    days: Option<Vec<String>>,
    start: Option<String>,
    hours: Option<u32>,
    #[serde(default)]
    holidays: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    name: String,
    tenants: Option<Vec<String>>,
    ratings: Option<Vec<String>>,
    calendar: Option<String>,
    #[serde(default, with = "humantime_serde")]
    take_over: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    complete: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    warn_before: Option<Duration>,
    notify: Option<Vec<String>>,
}

impl Validator<'_> {
    /// `[sla]`, checked whole; `None` when it names no connector (no ticket has clocks).
    pub(super) fn sla(
        &self,
        raw: RawSla,
        connectors: &[Connector],
        tenants: &[Tenant],
    ) -> Result<Option<SlaSettings>, ConfigError> {
        let names: Vec<&str> = connectors.iter().map(|c| c.name.as_str()).collect();
        let known = |field: String, name: &str| {
            if names.contains(&name) {
                Ok(())
            } else {
                Err(self.invalid(
                    field,
                    format!(
                        "{name:?} names no connector (the connectors are: {})",
                        names.join(", ")
                    ),
                ))
            }
        };
        for (i, name) in raw.connectors.iter().enumerate() {
            known(format!("sla.connectors[{i}]"), name)?;
        }
        for (i, name) in raw.notify.iter().enumerate() {
            known(format!("sla.notify[{i}]"), name)?;
        }
        if raw.connectors.is_empty() {
            if !raw.policies.is_empty() {
                return Err(self.invalid(
                    "sla.connectors",
                    "names no connector, so no ticket would be held to the policies: list the \
                     ticketing connectors whose tickets have SLA clocks",
                ));
            }
            return Ok(None);
        }
        if raw.policies.is_empty() {
            return Err(self.invalid(
                "sla.policies",
                "is empty: add at least one [[sla.policies]] with take_over or complete",
            ));
        }
        let calendar = match &raw.calendar {
            Some(c) => self.calendar("sla.calendar", c)?,
            None => Calendar::always(),
        };
        let mut calendars = BTreeMap::new();
        for (name, c) in &raw.calendars {
            self.plain_name(format!("sla.calendars.{name}"), name)?;
            calendars.insert(
                name.clone(),
                self.calendar(&format!("sla.calendars.{name}"), c)?,
            );
        }
        let waiting_expires = raw.waiting_expires.unwrap_or(DEFAULT_WAITING_EXPIRES);
        if waiting_expires.is_zero() {
            return Err(self.invalid("sla.waiting_expires", "must be more than 0"));
        }
        let mut statuses = BTreeMap::new();
        for (status, report) in raw.statuses {
            let key = status.trim().to_lowercase();
            if key.is_empty() || statuses.insert(key, report).is_some() {
                return Err(self.invalid(
                    format!("sla.statuses.{status}"),
                    "is empty, or the same status (ignoring case) is mapped twice",
                ));
            }
        }
        let take_over_on = match raw.take_over_on {
            RawTakeOverOn::Created => TakeOverOn::Created,
            RawTakeOverOn::Status => TakeOverOn::Status,
        };
        let mut policies = Vec::with_capacity(raw.policies.len());
        let mut policy_names = BTreeSet::new();
        for (i, p) in raw.policies.into_iter().enumerate() {
            let field = |f: &str| format!("sla.policies[{i}].{f}");
            self.plain_name(field("name"), &p.name)?;
            if !policy_names.insert(p.name.clone()) {
                return Err(self.invalid(field("name"), format!("{:?} is used twice", p.name)));
            }
            let accounts = match &p.tenants {
                None => None,
                Some(list) => {
                    let mut accounts = BTreeSet::new();
                    for (j, name) in list.iter().enumerate() {
                        let Some(t) = tenants.iter().find(|t| &t.name == name) else {
                            let known: Vec<&str> =
                                tenants.iter().map(|t| t.name.as_str()).collect();
                            return Err(self.invalid(
                                format!("sla.policies[{i}].tenants[{j}]"),
                                format!(
                                    "{name:?} is not a tenant (the tenants are: {})",
                                    known.join(", ")
                                ),
                            ));
                        };
                        accounts.insert(t.account_id);
                    }
                    Some(accounts)
                }
            };
            let ratings = match &p.ratings {
                None => None,
                Some(list) => {
                    let mut ratings = BTreeSet::new();
                    for (j, name) in list.iter().enumerate() {
                        let Some(r) = ThreatRating::parse(name) else {
                            return Err(self.invalid(
                                format!("sla.policies[{i}].ratings[{j}]"),
                                format!(
                                    "{name:?} is not a threat rating (info, low, medium, high, critical)"
                                ),
                            ));
                        };
                        ratings.insert(r);
                    }
                    Some(ratings)
                }
            };
            let calendar = p.calendar.clone().unwrap_or_default();
            if !calendar.is_empty() && !calendars.contains_key(&calendar) {
                let known: Vec<&str> = calendars.keys().map(String::as_str).collect();
                return Err(self.invalid(
                    field("calendar"),
                    format!(
                        "{calendar:?} is not in [sla.calendars] (they are: {})",
                        known.join(", ")
                    ),
                ));
            }
            for (name, allowance) in [("take_over", p.take_over), ("complete", p.complete)] {
                if allowance.is_some_and(|d| d.is_zero()) {
                    return Err(self.invalid(field(name), "must be more than 0"));
                }
            }
            let shortest = match (p.take_over, p.complete) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) | (None, Some(a)) => a,
                (None, None) => {
                    return Err(self.invalid(
                        field("take_over"),
                        "the policy sets neither take_over nor complete: set at least one",
                    ));
                }
            };
            let warn_before = match p.warn_before {
                Some(w) if w >= shortest => {
                    return Err(self.invalid(
                        field("warn_before"),
                        format!(
                            "must be less than the policy's shortest allowance ({})",
                            humantime::format_duration(shortest)
                        ),
                    ));
                }
                Some(w) => w,
                None => DEFAULT_WARN_BEFORE.min(shortest / 2),
            };
            if let Some(notify) = &p.notify {
                for (j, name) in notify.iter().enumerate() {
                    known(format!("sla.policies[{i}].notify[{j}]"), name)?;
                }
            }
            policies.push(Policy {
                name: p.name,
                accounts,
                ratings,
                calendar,
                take_over_ms: p.take_over.map(millis),
                complete_ms: p.complete.map(millis),
                warn_before_ms: millis(warn_before),
                notify: p.notify,
            });
        }
        Ok(Some(SlaSettings {
            connectors: raw.connectors,
            calendar,
            calendars,
            policies,
            notify: raw.notify,
            take_over_on,
            waiting_expires_ms: millis(waiting_expires),
            statuses,
        }))
    }

    /// One calendar: a known time zone, weekday names, `HH:MM`, 1 to 24 hours a day, and
    /// `YYYY-MM-DD` holidays. Unset fields: UTC, Monday to Friday, 09:00, 8 hours.
    fn calendar(&self, at: &str, raw: &RawCalendar) -> Result<Calendar, ConfigError> {
        let time_zone = match &raw.time_zone {
            None => chrono_tz::Tz::UTC,
            Some(name) => name.parse().map_err(|_| {
                self.invalid(
                    format!("{at}.time_zone"),
                    format!("{name:?} is not an IANA time zone (e.g. \"Europe/Rome\")"),
                )
            })?,
        };
        let mut days = [true, true, true, true, true, false, false];
        if let Some(names) = &raw.days {
            days = [false; 7];
            for (i, name) in names.iter().enumerate() {
                let Some(day) = crate::sla::weekday_index(name) else {
                    return Err(self.invalid(
                        format!("{at}.days[{i}]"),
                        format!("{name:?} is not a weekday (mon, tue, wed, thu, fri, sat, sun)"),
                    ));
                };
                days[day] = true;
            }
            if !days.contains(&true) {
                return Err(self.invalid(format!("{at}.days"), "names no day"));
            }
        }
        let start = match &raw.start {
            None => NaiveTime::from_hms_opt(9, 0, 0).unwrap_or(NaiveTime::MIN),
            Some(text) => NaiveTime::parse_from_str(text, "%H:%M").map_err(|_| {
                self.invalid(
                    format!("{at}.start"),
                    format!("{text:?} is not a time of day as HH:MM (e.g. \"08:30\")"),
                )
            })?,
        };
        let hours = raw.hours.unwrap_or(8);
        if !(1..=24).contains(&hours) {
            return Err(self.invalid(format!("{at}.hours"), "must be 1 to 24"));
        }
        let mut holidays = BTreeSet::new();
        for (i, text) in raw.holidays.iter().enumerate() {
            let date = NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| {
                self.invalid(
                    format!("{at}.holidays[{i}]"),
                    format!("{text:?} is not a date as YYYY-MM-DD"),
                )
            })?;
            holidays.insert(date);
        }
        Ok(Calendar {
            time_zone,
            days,
            start,
            day_ms: i64::from(hours) * 3_600_000,
            holidays,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Config;
    use crate::model::ThreatRating;

    /// A config with two connectors, a tenant, and `sla` after them.
    fn load(sla: &str) -> Result<Config, String> {
        let template = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/templates/generic/incident.json.hbs"
        );
        let text = format!(
            "[storage]\nurl = \"sqlite://x.db\"\n\n[[tenants]]\nname = \"acme\"\naccount_id = 2\n\n\
             [[connectors]]\nname = \"jira\"\nkind = \"http\"\nurl = \"http://127.0.0.1:9/\"\ntemplate = \"{template}\"\n\n\
             [[connectors]]\nname = \"pager\"\nkind = \"http\"\nurl = \"http://127.0.0.1:9/\"\ntemplate = \"{template}\"\n\n{sla}"
        );
        Config::from_toml(&text, Path::new("gw.toml"), |_| None).map_err(|e| e.to_string())
    }

    const POLICY: &str = "[[sla.policies]]\nname = \"p\"\ntake_over = \"1h\"\ncomplete = \"8h\"\n";

    #[test]
    fn policies_choose_by_tenant_and_rating_and_only_listed_connectors_have_clocks() {
        let config = load(
            "[sla]\nconnectors = [\"jira\"]\nnotify = [\"pager\"]\n\n\
             [[sla.policies]]\nname = \"acme-high\"\ntenants = [\"acme\"]\nratings = [\"high\", \"critical\"]\ntake_over = \"30m\"\n\n\
             [[sla.policies]]\nname = \"rest\"\ncomplete = \"2d\"\nwarn_before = \"1h\"\n",
        )
        .unwrap();
        let sla = config.sla.as_ref().expect("sla on");
        assert!(config.connector("jira").unwrap().sla.is_some());
        assert!(config.connector("pager").unwrap().sla.is_none());
        let high = sla.start_for(Some(2), Some(ThreatRating::High)).unwrap();
        assert_eq!(
            (high.policy.as_str(), high.take_over_ms, high.complete_ms),
            ("acme-high", Some(1_800_000), None)
        );
        // The default warning is at most half the shortest allowance.
        assert_eq!(high.warn_before_ms, 15 * 60_000);
        for (account, rating) in [
            (Some(2), Some(ThreatRating::Low)),
            (None, Some(ThreatRating::High)),
            (Some(3), None),
        ] {
            let other = sla.start_for(account, rating).unwrap();
            assert_eq!(other.policy, "rest", "{account:?} {rating:?}");
            assert_eq!(other.warn_before_ms, 3_600_000);
        }
        // No [sla] at all: nothing has clocks.
        assert!(load("").unwrap().sla.is_none());
    }

    #[test]
    fn mistakes_are_named_with_their_field() {
        for (sla, field, says) in [
            (
                "[sla]\nconnectors = [\"jra\"]\n",
                "sla.connectors[0]",
                "\"jra\" names no connector",
            ),
            (
                "[sla]\nconnectors = [\"jira\"]\n",
                "sla.policies",
                "is empty",
            ),
            (
                "[sla]\npolicies = [{ name = \"p\", take_over = \"1h\" }]\n",
                "sla.connectors",
                "names no connector",
            ),
            (
                &format!("[sla]\nconnectors = [\"jira\"]\nnotify = [\"pagr\"]\n{POLICY}"),
                "sla.notify[0]",
                "names no connector",
            ),
            (
                &format!(
                    "[sla]\nconnectors = [\"jira\"]\n[sla.calendar]\ntime_zone = \"Mars/Olympus\"\n{POLICY}"
                ),
                "sla.calendar.time_zone",
                "not an IANA time zone",
            ),
            (
                &format!(
                    "[sla]\nconnectors = [\"jira\"]\n[sla.calendar]\ndays = [\"mon\", \"fry\"]\n{POLICY}"
                ),
                "sla.calendar.days[1]",
                "not a weekday",
            ),
            (
                &format!(
                    "[sla]\nconnectors = [\"jira\"]\n[sla.calendar]\nstart = \"9am\"\n{POLICY}"
                ),
                "sla.calendar.start",
                "HH:MM",
            ),
            (
                &format!("[sla]\nconnectors = [\"jira\"]\n[sla.calendar]\nhours = 25\n{POLICY}"),
                "sla.calendar.hours",
                "1 to 24",
            ),
            (
                &format!(
                    "[sla]\nconnectors = [\"jira\"]\n[sla.calendar]\nholidays = [\"25/12/2026\"]\n{POLICY}"
                ),
                "sla.calendar.holidays[0]",
                "YYYY-MM-DD",
            ),
            (
                "[sla]\nconnectors = [\"jira\"]\n[[sla.policies]]\nname = \"p\"\ntake_over = \"1h\"\nwarn_before = \"1h\"\n",
                "sla.policies[0].warn_before",
                "less than the policy's shortest allowance (1h)",
            ),
            (
                "[sla]\nconnectors = [\"jira\"]\n[[sla.policies]]\nname = \"p\"\n",
                "sla.policies[0].take_over",
                "neither take_over nor complete",
            ),
            (
                "[sla]\nconnectors = [\"jira\"]\n[[sla.policies]]\nname = \"p\"\ntake_over = \"1h\"\ncalendar = \"night\"\n",
                "sla.policies[0].calendar",
                "not in [sla.calendars]",
            ),
            (
                "[sla]\nconnectors = [\"jira\"]\n[[sla.policies]]\nname = \"p\"\ntake_over = \"1h\"\nratings = [\"urgent\"]\n",
                "sla.policies[0].ratings[0]",
                "not a threat rating",
            ),
            (
                "[sla]\nconnectors = [\"jira\"]\n[[sla.policies]]\nname = \"p\"\ntake_over = \"1h\"\n[[sla.policies]]\nname = \"p\"\ncomplete = \"1h\"\n",
                "sla.policies[1].name",
                "used twice",
            ),
            (
                &format!(
                    "[sla]\nconnectors = [\"jira\"]\n[sla.statuses]\n\"On hold\" = \"paused\"\n{POLICY}"
                ),
                "sla.statuses",
                "unknown variant",
            ),
        ] {
            let e = load(sla).expect_err(sla);
            assert!(e.contains(field) && e.contains(says), "{sla}\n→ {e}");
        }
    }
}
