//! SLA clocks (issue 16, item 2; work in progress, not yet wired): a business-hours calendar
//! — active weekdays, a start hour and a number of hours per day, in a time zone, holidays
//! optional — and the arithmetic the watchdog needs on it: how much business time lies
//! between two instants, and when a business duration that starts at an instant ends.
//! Instants are milliseconds since the epoch (the store's unit); the clock is always passed
//! in, never read here, so tests drive it.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{Datelike, Days, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Weekday};
use chrono_tz::Tz;

/// How far ahead a deadline is looked for: a calendar whose business days all fall on
/// holidays for ten years has no deadline.
const MAX_DAYS: u64 = 3660;

/// A business-hours calendar.
#[derive(Debug, Clone, PartialEq)]
pub struct Calendar {
    pub time_zone: Tz,
    /// Monday first.
    pub days: [bool; 7],
    /// When a business day starts, local time.
    pub start: NaiveTime,
    /// How long a business day lasts, in milliseconds (at most 24 h).
    pub day_ms: i64,
    pub holidays: BTreeSet<NaiveDate>,
}

impl Calendar {
    /// Every day, all day, in UTC: business time is wall-clock time.
    pub fn always() -> Calendar {
        Calendar {
            time_zone: Tz::UTC,
            days: [true; 7],
            start: NaiveTime::MIN,
            day_ms: 86_400_000,
            holidays: BTreeSet::new(),
        }
    }

    fn is_business_day(&self, date: NaiveDate) -> bool {
        self.days[date.weekday().num_days_from_monday() as usize] && !self.holidays.contains(&date)
    }

    /// The business hours of local `date` as instants, `None` on a day off. Both ends are
    /// local wall-clock times (09:00 to 17:00; 00:00 to the next 00:00), so a day that
    /// crosses a daylight-saving change lasts an hour more or less, and 24-hour days meet
    /// without overlap or gap. An end that falls in a gap is taken as the first instant after
    /// it.
    fn hours_of(&self, date: NaiveDate) -> Option<(i64, i64)> {
        if !self.is_business_day(date) {
            return None;
        }
        let open = date.and_time(self.start);
        let close = open.checked_add_signed(chrono::TimeDelta::milliseconds(self.day_ms))?;
        let start = local_ms(self.time_zone, open)?;
        let end = local_ms(self.time_zone, close)?;
        Some((start, end.max(start)))
    }

    /// The local date of instant `ms`.
    fn date_of(&self, ms: i64) -> Option<NaiveDate> {
        let utc = chrono::DateTime::from_timestamp_millis(ms)?;
        Some(utc.with_timezone(&self.time_zone).date_naive())
    }

    /// Business time between `from` and `to` (0 when `to` is not after `from`).
    pub fn business_ms_between(&self, from: i64, to: i64) -> i64 {
        if to <= from {
            return 0;
        }
        // A business day may start the day before `from`'s local date and run past
        // midnight (a night shift): begin a day early.
        let Some(mut date) = self
            .date_of(from)
            .and_then(|d| d.checked_sub_days(Days::new(1)))
        else {
            return 0;
        };
        let mut total: i64 = 0;
        for _ in 0..=MAX_DAYS {
            if let Some((open, close)) = self.hours_of(date) {
                if open >= to {
                    break;
                }
                let (a, b) = (open.max(from), close.min(to));
                if b > a {
                    total = total.saturating_add(b - a);
                }
            } else if local_ms(self.time_zone, date.and_time(NaiveTime::MIN))
                .is_some_and(|midnight| midnight >= to)
            {
                break;
            }
            match date.checked_add_days(Days::new(1)) {
                Some(next) => date = next,
                None => break,
            }
        }
        total
    }

    /// The instant at which `business_ms` of business time, counted from `from`, has passed;
    /// `None` when the calendar has no business time within ten years.
    pub fn add_business(&self, from: i64, business_ms: i64) -> Option<i64> {
        let mut left = business_ms.max(0);
        let mut date = self.date_of(from)?.checked_sub_days(Days::new(1))?;
        for _ in 0..=MAX_DAYS {
            if let Some((open, close)) = self.hours_of(date) {
                let a = open.max(from);
                if close > a {
                    let available = close - a;
                    if left <= available {
                        return Some(a + left);
                    }
                    left -= available;
                }
            }
            date = date.checked_add_days(Days::new(1))?;
        }
        None
    }
}

/// Milliseconds since the epoch of a local time in `tz`: the earlier of an ambiguous time
/// (the clocks going back), the first instant after a skipped one (going forward).
fn local_ms(tz: Tz, local: NaiveDateTime) -> Option<i64> {
    if let Some(t) = tz.from_local_datetime(&local).earliest() {
        return Some(t.timestamp_millis());
    }
    // In a gap: the gap ends at most a few hours later; find the first minute that exists.
    (1..=240).find_map(|m| {
        let later = local.checked_add_signed(chrono::TimeDelta::minutes(m))?;
        tz.from_local_datetime(&later)
            .earliest()
            .map(|t| t.timestamp_millis())
    })
}

/// `[sla]`, validated (`config` builds it): which connectors' tickets have clocks, the
/// calendars they count in, the policies that set their allowances per tenant and priority,
/// what the back channel's statuses mean, and who hears a warning, breach or recovery.
#[derive(Debug, Clone)]
pub struct SlaSettings {
    /// The ticketing connectors whose tickets have SLA clocks.
    pub connectors: Vec<String>,
    /// `[sla.calendar]`: what a policy counts in unless it names another.
    pub calendar: Calendar,
    /// `[sla.calendars.NAME]`.
    pub calendars: BTreeMap<String, Calendar>,
    /// First match wins.
    pub policies: Vec<Policy>,
    /// Connectors a warning, breach or recovery goes to (a policy may name its own).
    pub notify: Vec<String>,
    /// What meets a take-over clock.
    pub take_over_on: TakeOverOn,
    /// How long a wait lasts when its report names no end, and the longest one may.
    pub waiting_expires_ms: i64,
    /// A target's own status names (lower case) → what each means for the clocks.
    pub statuses: BTreeMap<String, Report>,
}

/// What meets a ticket's take-over clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TakeOverOn {
    /// Its first `created` delivered (the ticket exists in the target): nothing better is
    /// known.
    Created,
    /// A status reported through the back channel that means taken over.
    Status,
}

/// What a status report asks of a ticket's clocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Report {
    /// Someone took the ticket: the take-over clock is met.
    TakenOver,
    /// Waiting on the customer: the clocks pause until the wait ends.
    Waiting,
    /// Suspended: the clocks pause until resumed.
    Suspended,
    /// Running again (a wait or suspension ends).
    Running,
}

impl Report {
    /// The names every report answers to, whatever `[sla.statuses]` adds.
    pub const NAMES: [&'static str; 4] = ["taken_over", "waiting", "suspended", "running"];

    pub fn parse(name: &str) -> Option<Report> {
        match name {
            "taken_over" => Some(Report::TakenOver),
            "waiting" => Some(Report::Waiting),
            "suspended" => Some(Report::Suspended),
            "running" => Some(Report::Running),
            _ => None,
        }
    }
}

/// One `[[sla.policies]]` entry: which tickets it holds (by tenant and priority) and to what.
#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    /// Accounts (tenants) it applies to; `None`: every one, and incidents of none.
    pub accounts: Option<BTreeSet<i64>>,
    /// Priorities (threat ratings) it applies to; `None`: every one.
    pub ratings: Option<BTreeSet<crate::model::ThreatRating>>,
    /// The calendar it counts in (`""`: `[sla.calendar]`).
    pub calendar: String,
    pub take_over_ms: Option<i64>,
    pub complete_ms: Option<i64>,
    pub warn_before_ms: i64,
    /// Its own connectors to notify, over `[sla] notify`.
    pub notify: Option<Vec<String>>,
}

impl SlaSettings {
    /// The clocks a ticket opened by an incident of `account` rated `rating` starts with.
    pub fn start_for(
        &self,
        account: Option<i64>,
        rating: Option<crate::model::ThreatRating>,
    ) -> Option<SlaStart> {
        let policy = self.policies.iter().find(|p| {
            p.accounts
                .as_ref()
                .is_none_or(|a| account.is_some_and(|account| a.contains(&account)))
                && p.ratings
                    .as_ref()
                    .is_none_or(|r| rating.is_some_and(|rating| r.contains(&rating)))
        })?;
        Some(SlaStart {
            policy: policy.name.clone(),
            take_over_ms: policy.take_over_ms,
            complete_ms: policy.complete_ms,
            warn_before_ms: policy.warn_before_ms,
        })
    }

    pub fn policy(&self, name: &str) -> Option<&Policy> {
        self.policies.iter().find(|p| p.name == name)
    }

    /// The calendar policy `name` counts in (the default one when the policy is gone).
    pub fn calendar_of(&self, policy: &str) -> &Calendar {
        self.policy(policy)
            .and_then(|p| self.calendars.get(&p.calendar))
            .unwrap_or(&self.calendar)
    }

    /// Who hears policy `name`'s alerts.
    pub fn notify_of(&self, policy: &str) -> &[String] {
        self.policy(policy)
            .and_then(|p| p.notify.as_deref())
            .unwrap_or(&self.notify)
    }

    /// What a reported status means: one of [`Report::NAMES`], or a name `[sla.statuses]`
    /// gives (case-insensitive).
    pub fn report(&self, status: &str) -> Option<Report> {
        Report::parse(status).or_else(|| self.statuses.get(&status.to_lowercase()).copied())
    }
}

/// The SLA clocks a new ticket starts with (`store::Route::sla`): one per level with an
/// allowance, started when the ticket opens, in the transaction that opens it.
#[derive(Debug, Clone, PartialEq)]
pub struct SlaStart {
    /// The `[[sla.policies]]` entry that chose them, by name.
    pub policy: String,
    /// Business time until the ticket is taken over; `None`: no take-over clock.
    pub take_over_ms: Option<i64>,
    /// Business time until it is completed; `None`: no completion clock.
    pub complete_ms: Option<i64>,
    pub warn_before_ms: i64,
}

impl SlaStart {
    /// The clocks it starts at `now`, each with its level.
    pub fn clocks(&self, now: i64) -> Vec<Clock> {
        [
            (Level::TakeOver, self.take_over_ms),
            (Level::Complete, self.complete_ms),
        ]
        .into_iter()
        .filter_map(|(level, allowed)| {
            allowed.map(|allowed| Clock::start(level, now, allowed, self.warn_before_ms))
        })
        .collect()
    }
}

/// The two clocks of a ticket: until the ticketing system takes it over, and until it is
/// completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    TakeOver,
    Complete,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::TakeOver => "take_over",
            Level::Complete => "complete",
        }
    }

    pub fn parse(text: &str) -> Option<Level> {
        match text {
            "take_over" => Some(Level::TakeOver),
            "complete" => Some(Level::Complete),
            _ => None,
        }
    }
}

/// What a clock says when it crosses a line, once each per clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Alert {
    /// `warn_before` of business time is left.
    Warning,
    /// The business time allowed has run out.
    Breach,
    /// A breached clock was met after all (taken over, completed).
    Recovery,
}

/// Why a clock is not running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum Pause {
    Running,
    /// Waiting on the customer: paused until `until_ms` (wall clock), then running again.
    Waiting {
        since_ms: i64,
        until_ms: i64,
    },
    /// Paused until resumed.
    Suspended {
        since_ms: i64,
    },
}

/// One SLA clock: what it allows, what it has used, and what it has said. Kept whole in the
/// store (a restart resumes it as it was: no alert is said twice or missed).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Clock {
    pub level: Level,
    pub started_ms: i64,
    /// Business time allowed.
    pub allowed_ms: i64,
    /// Business time before the breach at which the warning is said.
    pub warn_before_ms: i64,
    /// Business time spent paused, in pauses that are over.
    pub paused_ms: i64,
    pub pause: Pause,
    /// When it was met (taken over, completed); it stops then.
    pub met_ms: Option<i64>,
    pub warned: bool,
    pub breached: bool,
    pub recovered: bool,
}

impl Clock {
    pub fn start(level: Level, now: i64, allowed_ms: i64, warn_before_ms: i64) -> Clock {
        Clock {
            level,
            started_ms: now,
            allowed_ms,
            warn_before_ms: warn_before_ms.min(allowed_ms),
            paused_ms: 0,
            pause: Pause::Running,
            met_ms: None,
            warned: false,
            breached: false,
            recovered: false,
        }
    }

    /// Business time counted against the allowance at `now`: from the start to `now` (or to
    /// when it was met), less every pause.
    pub fn used_ms(&self, calendar: &Calendar, now: i64) -> i64 {
        let end = self.met_ms.map_or(now, |m| m.min(now));
        let current_pause = match self.pause {
            Pause::Running => 0,
            Pause::Waiting { since_ms, .. } | Pause::Suspended { since_ms } => {
                calendar.business_ms_between(since_ms, end)
            }
        };
        (calendar.business_ms_between(self.started_ms, end) - self.paused_ms - current_pause).max(0)
    }

    /// When it breaches if it keeps running from `now` (`None`: paused, met, or never).
    pub fn deadline_ms(&self, calendar: &Calendar, now: i64) -> Option<i64> {
        if self.met_ms.is_some() || self.pause != Pause::Running {
            return None;
        }
        let left = self.allowed_ms - self.used_ms(calendar, now);
        calendar.add_business(now, left.max(0))
    }

    /// When the warning is due if it keeps running from `now`.
    pub fn warning_ms(&self, calendar: &Calendar, now: i64) -> Option<i64> {
        if self.met_ms.is_some() || self.pause != Pause::Running {
            return None;
        }
        let left = self.allowed_ms - self.warn_before_ms - self.used_ms(calendar, now);
        calendar.add_business(now, left.max(0))
    }

    /// Ends a pause at `now`: its business time no longer counts.
    fn end_pause(&mut self, calendar: &Calendar, now: i64) {
        if let Pause::Waiting { since_ms, .. } | Pause::Suspended { since_ms } = self.pause {
            self.paused_ms += calendar.business_ms_between(since_ms, now);
            self.pause = Pause::Running;
        }
    }

    /// Waiting from `now` until `until_ms` (a second wait replaces the first's end).
    pub fn wait(&mut self, calendar: &Calendar, now: i64, until_ms: i64) {
        if self.met_ms.is_some() {
            return;
        }
        self.end_pause(calendar, now);
        self.pause = Pause::Waiting {
            since_ms: now,
            until_ms,
        };
    }

    pub fn suspend(&mut self, calendar: &Calendar, now: i64) {
        if self.met_ms.is_some() {
            return;
        }
        self.end_pause(calendar, now);
        self.pause = Pause::Suspended { since_ms: now };
    }

    pub fn resume(&mut self, calendar: &Calendar, now: i64) {
        self.end_pause(calendar, now);
    }

    /// Met at `now` (taken over, completed): the clock stops; a breached one recovers.
    pub fn meet(&mut self, calendar: &Calendar, now: i64) -> Vec<Alert> {
        if self.met_ms.is_some() {
            return Vec::new();
        }
        let mut said = self.step(calendar, now);
        self.end_pause(calendar, now);
        self.met_ms = Some(now);
        if self.breached && !self.recovered {
            self.recovered = true;
            said.push(Alert::Recovery);
        }
        said
    }

    /// Brings the clock to `now`: a wait that has run out ends (at its end, not at `now`),
    /// and the warning and the breach are said once each when their time has come. What is
    /// returned must be stored with the clock in one commit.
    pub fn step(&mut self, calendar: &Calendar, now: i64) -> Vec<Alert> {
        if let Pause::Waiting { until_ms, .. } = self.pause
            && until_ms <= now
        {
            self.end_pause(calendar, until_ms);
        }
        let mut said = Vec::new();
        if self.met_ms.is_some() {
            return said;
        }
        let used = self.used_ms(calendar, now);
        if !self.warned && used >= self.allowed_ms - self.warn_before_ms {
            self.warned = true;
            // A clock that went from "fine" straight past its breach says only the breach.
            if used < self.allowed_ms {
                said.push(Alert::Warning);
            }
        }
        if !self.breached && used >= self.allowed_ms {
            self.breached = true;
            said.push(Alert::Breach);
        }
        said
    }

    /// `running`, `waiting`, `suspended`, or `met`: what lists filter on.
    pub fn state(&self) -> &'static str {
        match (self.met_ms, self.pause) {
            (Some(_), _) => "met",
            (None, Pause::Running) => "running",
            (None, Pause::Waiting { .. }) => "waiting",
            (None, Pause::Suspended { .. }) => "suspended",
        }
    }

    /// When the watchdog should look at it next: the warning, the breach, or the end of a
    /// wait, whichever comes first; `None` when nothing more can happen until someone acts.
    pub fn next_check_ms(&self, calendar: &Calendar, now: i64) -> Option<i64> {
        if self.met_ms.is_some() {
            return None;
        }
        match self.pause {
            Pause::Waiting { until_ms, .. } => Some(until_ms),
            Pause::Suspended { .. } => None,
            Pause::Running if self.breached => None,
            Pause::Running if self.warned => self.deadline_ms(calendar, now),
            Pause::Running => self.warning_ms(calendar, now),
        }
    }
}

/// Weekday names as the config writes them (`mon` … `sun`), Monday first.
pub fn weekday_index(name: &str) -> Option<usize> {
    let day: Weekday = name.parse().ok()?;
    Some(day.num_days_from_monday() as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    /// Monday to Friday, 09:00 for 8 hours, in Rome; Christmas off.
    fn office() -> Calendar {
        Calendar {
            time_zone: "Europe/Rome".parse().expect("a zone"),
            days: [true, true, true, true, true, false, false],
            start: NaiveTime::from_hms_opt(9, 0, 0).expect("a time"),
            day_ms: 8 * HOUR,
            holidays: [NaiveDate::from_ymd_opt(2026, 12, 25).expect("a date")]
                .into_iter()
                .collect(),
        }
    }

    /// Local time in Rome as ms.
    fn rome(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> i64 {
        let tz: Tz = "Europe/Rome".parse().expect("a zone");
        tz.with_ymd_and_hms(y, mo, d, h, mi, 0)
            .earliest()
            .expect("exists")
            .timestamp_millis()
    }

    #[test]
    fn a_business_week() {
        let c = office();
        // Monday 30 November 2026, 10:00 → Friday 4 December, 10:00: 4 days of 8 hours.
        let mon = rome(2026, 11, 30, 10, 0);
        let fri = rome(2026, 12, 4, 10, 0);
        assert_eq!(c.business_ms_between(mon, fri), 32 * HOUR);
        // Friday 16:00 + 2 business hours → Monday 10:00 (the weekend does not count).
        let fri_late = rome(2026, 12, 4, 16, 0);
        assert_eq!(
            c.add_business(fri_late, 2 * HOUR),
            Some(rome(2026, 12, 7, 10, 0))
        );
        assert_eq!(
            c.business_ms_between(fri_late, rome(2026, 12, 7, 10, 0)),
            2 * HOUR
        );
        // Before opening, the clock starts at 09:00; after closing, it waits for tomorrow.
        assert_eq!(
            c.add_business(rome(2026, 12, 1, 7, 0), HOUR),
            Some(rome(2026, 12, 1, 10, 0))
        );
        assert_eq!(
            c.add_business(rome(2026, 12, 1, 20, 0), HOUR),
            Some(rome(2026, 12, 2, 10, 0))
        );
        // Exactly at closing time the deadline is met then, not the next morning.
        assert_eq!(
            c.add_business(rome(2026, 12, 1, 9, 0), 8 * HOUR),
            Some(rome(2026, 12, 1, 17, 0))
        );
    }

    #[test]
    fn holidays_and_daylight_saving() {
        let c = office();
        // Thursday 24 December 16:00 + 2 hours: Christmas (Friday) is off → Monday 28, 10:00.
        assert_eq!(
            c.add_business(rome(2026, 12, 24, 16, 0), 2 * HOUR),
            Some(rome(2026, 12, 28, 10, 0))
        );
        // The clocks go forward on Sunday 29 March 2026: Friday 16:00 to Monday 10:00 is
        // still 2 business hours, and Monday opens at 09:00 local (07:00 UTC).
        let fri = rome(2026, 3, 27, 16, 0);
        let mon = rome(2026, 3, 30, 10, 0);
        assert_eq!(c.business_ms_between(fri, mon), 2 * HOUR);
        assert_eq!(c.add_business(fri, 2 * HOUR), Some(mon));
    }

    #[test]
    fn twenty_four_hour_days_meet_across_daylight_saving() {
        let mut c = office();
        c.days = [true; 7];
        c.start = NaiveTime::MIN;
        c.day_ms = 24 * HOUR;
        // Rome's clocks go forward on 29 March and back on 25 October 2026: those local days
        // last 23 and 25 hours, and business time is wall time throughout.
        let (a, b) = (rome(2026, 3, 28, 12, 0), rome(2026, 3, 30, 12, 0));
        assert_eq!(c.business_ms_between(a, b), b - a);
        assert_eq!(b - a, 47 * HOUR);
        assert_eq!(c.add_business(a, 47 * HOUR), Some(b));
        let (a, b) = (rome(2026, 10, 24, 12, 0), rome(2026, 10, 26, 12, 0));
        assert_eq!(c.business_ms_between(a, b), 49 * HOUR);
        assert_eq!(c.add_business(a, 49 * HOUR), Some(b));
    }

    const MINUTE: i64 = 60_000;

    /// Every alert a clock says from `from` to `to`, looking when it asks to be looked at,
    /// with the time it was said.
    fn run(c: &mut Clock, cal: &Calendar, from: i64, to: i64) -> Vec<(Alert, i64)> {
        let mut out = Vec::new();
        let mut now = from;
        while let Some(next) = c.next_check_ms(cal, now) {
            if next > to {
                break;
            }
            now = next.max(now);
            out.extend(c.step(cal, now).into_iter().map(|a| (a, now)));
        }
        out
    }

    #[test]
    fn warning_then_breach_in_business_hours() {
        let cal = office();
        // Opened Friday 16:00 with 4 business hours, warned 30 minutes before.
        let opened = rome(2026, 12, 4, 16, 0);
        let mut c = Clock::start(Level::Complete, opened, 4 * HOUR, 30 * MINUTE);
        assert_eq!(c.deadline_ms(&cal, opened), Some(rome(2026, 12, 7, 12, 0)));
        let said = run(&mut c, &cal, opened, rome(2026, 12, 8, 0, 0));
        assert_eq!(
            said,
            [
                (Alert::Warning, rome(2026, 12, 7, 11, 30)),
                (Alert::Breach, rome(2026, 12, 7, 12, 0))
            ]
        );
        // Completed later: recovered, once.
        assert_eq!(c.meet(&cal, rome(2026, 12, 7, 15, 0)), [Alert::Recovery]);
        assert_eq!(c.meet(&cal, rome(2026, 12, 7, 16, 0)), []);
        assert_eq!(c.next_check_ms(&cal, rome(2026, 12, 7, 16, 0)), None);
    }

    #[test]
    fn a_wait_pauses_until_it_expires_and_a_suspension_until_resumed() {
        let cal = Calendar::always();
        let mut c = Clock::start(Level::TakeOver, 0, 10 * HOUR, HOUR);
        // Waiting from hour 2 for 3 hours: the clock stands still, then runs again.
        c.wait(&cal, 2 * HOUR, 5 * HOUR);
        assert_eq!(c.next_check_ms(&cal, 2 * HOUR), Some(5 * HOUR));
        assert_eq!(c.used_ms(&cal, 4 * HOUR), 2 * HOUR);
        assert_eq!(c.step(&cal, 6 * HOUR), []);
        assert_eq!(c.pause, Pause::Running);
        assert_eq!(c.used_ms(&cal, 6 * HOUR), 3 * HOUR);
        // Suspended at hour 6: no deadline, nothing to look at, until resumed at hour 20.
        c.suspend(&cal, 6 * HOUR);
        assert_eq!(c.next_check_ms(&cal, 6 * HOUR), None);
        assert_eq!(c.step(&cal, 19 * HOUR), []);
        c.resume(&cal, 20 * HOUR);
        // 3 hours used, 7 left: warning at 26 h, breach at 27 h.
        let said = run(&mut c, &cal, 20 * HOUR, 40 * HOUR);
        assert_eq!(
            said,
            [(Alert::Warning, 26 * HOUR), (Alert::Breach, 27 * HOUR)]
        );
    }

    #[test]
    fn a_restart_between_warning_and_breach_says_each_once() {
        let cal = Calendar::always();
        let mut c = Clock::start(Level::Complete, 0, 2 * HOUR, 30 * MINUTE);
        assert_eq!(
            run(&mut c, &cal, 0, 100 * MINUTE),
            [(Alert::Warning, 90 * MINUTE)]
        );
        // The clock is stored whole and read back by a new process.
        let stored = serde_json::to_string(&c).expect("serializes");
        let mut again: Clock = serde_json::from_str(&stored).expect("reads back");
        assert_eq!(again, c);
        // Looked at late (the gateway was down over the breach): the breach, once, no
        // second warning.
        assert_eq!(again.step(&cal, 3 * HOUR), [Alert::Breach]);
        assert_eq!(again.step(&cal, 4 * HOUR), []);
        // A clock first looked at past its breach says the breach alone.
        let mut late = Clock::start(Level::Complete, 0, 2 * HOUR, 30 * MINUTE);
        assert_eq!(late.step(&cal, 5 * HOUR), [Alert::Breach]);
    }

    #[test]
    fn always_is_wall_clock_and_nothing_is_no_deadline() {
        let c = Calendar::always();
        assert_eq!(c.business_ms_between(1_000, 1_000 + 5 * HOUR), 5 * HOUR);
        assert_eq!(c.add_business(1_000, 30 * HOUR), Some(1_000 + 30 * HOUR));
        let never = Calendar {
            days: [false; 7],
            ..office()
        };
        assert_eq!(never.add_business(0, HOUR), None);
        assert_eq!(never.business_ms_between(0, 10 * HOUR), 0);
        assert_eq!(weekday_index("mon"), Some(0));
        assert_eq!(weekday_index("Sun"), Some(6));
        assert_eq!(weekday_index("xyz"), None);
    }
}
