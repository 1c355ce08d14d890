//! The admin API's lists as SQL both backends run: newest first, filtered, paged by the key of
//! the previous page's last row (never by offset, so a deep page costs what the first does).
//! Only the filters given become conditions, so each query shape has a plan that uses its
//! index; each backend writes its own placeholders (`?n` or `$n`) and binds the values.
//!
//! The indexes that serve them (one per filter, each ending in the order's columns, so a page
//! is a range scan that stops after `limit + 1` rows): `deliveries (created_ms, seq)`,
//! `(status, created_ms, seq)`, `(connector, created_ms, seq)`; `incidents (received_ms,
//! incident_id)`, `(source, …)`, `(status, …)`. The incident filter uses `deliveries
//! (incident_id)`: one incident's deliveries are few, sorted once found. SLA clocks are listed
//! by `clock_id` alone (its primary key, and `sla_clocks (state | breached | account_id,
//! clock_id)`).

use super::{DeliveryListing, IncidentListing, Page, SlaListing};

/// The most rows a page holds, whatever is asked.
pub const MAX_LIMIT: usize = 1000;

/// A value to bind.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    Text(String),
    Int(i64),
}

/// The conditions, order and limit after a `FROM`, and the values they bind in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Clause {
    pub sql: String,
    pub args: Vec<Arg>,
}

struct Builder {
    /// `?` (SQLite) or `$` (PostgreSQL).
    mark: char,
    conditions: Vec<String>,
    args: Vec<Arg>,
}

impl Builder {
    fn new(mark: char) -> Builder {
        Builder {
            mark,
            conditions: Vec::new(),
            args: Vec::new(),
        }
    }

    /// The placeholder of a new value.
    fn bind(&mut self, arg: Arg) -> String {
        self.args.push(arg);
        format!("{}{}", self.mark, self.args.len())
    }

    /// `column <op> value`, when there is a value.
    fn filter(&mut self, column: &str, op: &str, arg: Option<Arg>) {
        if let Some(arg) = arg {
            let p = self.bind(arg);
            self.conditions.push(format!("{column} {op} {p}"));
        }
    }

    /// `<exists>` over `column IN (accounts…)`, when the list is narrowed to accounts: the
    /// rows whose incident is one of theirs. (`exists` wraps the test when the incident's row
    /// is not the listed one.)
    fn accounts(
        &mut self,
        column: &str,
        accounts: Option<&[i64]>,
        wrap: impl FnOnce(String) -> String,
    ) {
        let Some(accounts) = accounts else { return };
        let test = if accounts.is_empty() {
            "1 = 0".to_string()
        } else {
            let marks: Vec<String> = accounts.iter().map(|a| self.bind(Arg::Int(*a))).collect();
            format!("{column} IN ({})", marks.join(", "))
        };
        self.conditions.push(wrap(test));
    }

    /// Rows after `(time, tie)` in the descending order: a row-value comparison, which both
    /// databases answer from an index on `(…, time, tie)`.
    fn after(&mut self, columns: &str, time: i64, tie: Arg) {
        let t = self.bind(Arg::Int(time));
        let k = self.bind(tie);
        self.conditions.push(format!("({columns}) < ({t}, {k})"));
    }

    fn finish(self, order: &str, limit: usize) -> Clause {
        self.fetching(order, fetch_limit(limit))
    }

    /// The conditions, then `order`, and at most `fetch` rows.
    fn fetching(mut self, order: &str, fetch: i64) -> Clause {
        let fetch = self.bind(Arg::Int(fetch));
        let conditions = if self.conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {} ", self.conditions.join(" AND "))
        };
        Clause {
            sql: format!("{conditions}ORDER BY {order} LIMIT {fetch}"),
            args: self.args,
        }
    }
}

/// The page size asked for, within 1 and [`MAX_LIMIT`].
pub fn page_size(limit: usize) -> usize {
    limit.clamp(1, MAX_LIMIT)
}

/// One row more than the page holds: whether it comes back says whether there is a next page.
fn fetch_limit(limit: usize) -> i64 {
    i64::try_from(page_size(limit) + 1).unwrap_or(i64::MAX)
}

/// After `FROM deliveries d`.
pub fn deliveries(listing: &DeliveryListing, mark: char) -> Clause {
    let mut b = Builder::new(mark);
    let text = |v: &Option<String>| v.clone().map(Arg::Text);
    b.accounts("i.account_id", listing.accounts.as_deref(), |test| {
        format!("EXISTS (SELECT 1 FROM incidents i WHERE i.incident_id = d.incident_id AND {test})")
    });
    b.filter("d.incident_id", "=", text(&listing.incident));
    b.filter("d.status", "=", text(&listing.status));
    b.filter("d.connector", "=", text(&listing.connector));
    b.filter("d.created_ms", ">=", listing.since_ms.map(Arg::Int));
    b.filter("d.created_ms", "<", listing.until_ms.map(Arg::Int));
    if let Some(key) = listing.after {
        b.after("d.created_ms, d.seq", key.created_ms, Arg::Int(key.seq));
    }
    b.finish("d.created_ms DESC, d.seq DESC", listing.limit)
}

/// An incident's summary (`/incident/summary`), from its current version
/// (`incident_versions v`), in each backend's JSON function.
pub fn incident_summary(mark: char) -> &'static str {
    if mark == '$' {
        "(v.body::json -> 'incident' ->> 'summary')"
    } else {
        "json_extract(v.body, '$.incident.summary')"
    }
}

/// After `FROM incidents i JOIN incident_versions v ON v.version_id = i.version_id`. (Its
/// `text` is matched by the store handle, on the summaries these rows carry.)
pub fn incidents(listing: &IncidentListing, mark: char) -> Clause {
    let mut b = Builder::new(mark);
    let text = |v: &Option<String>| v.clone().map(Arg::Text);
    b.accounts("i.account_id", listing.accounts.as_deref(), |test| test);
    b.filter("i.source", "=", text(&listing.source));
    b.filter("i.status", "=", text(&listing.status));
    b.filter("i.received_ms", ">=", listing.since_ms.map(Arg::Int));
    b.filter("i.received_ms", "<", listing.until_ms.map(Arg::Int));
    if let Some(connector) = &listing.connector {
        let p = b.bind(Arg::Text(connector.clone()));
        // Each incident's few deliveries, found by `deliveries (incident_id)`. SQLite, without
        // statistics, would search the connector's index instead — every delivery of the
        // connector for each incident (289 ms a page at 100,000): `+` keeps that index out.
        let column = if mark == '?' {
            "+d.connector"
        } else {
            "d.connector"
        };
        b.conditions.push(format!(
            "EXISTS (SELECT 1 FROM deliveries d WHERE d.incident_id = i.incident_id \
             AND {column} = {p})"
        ));
    }
    if let Some(key) = &listing.after {
        b.after(
            "i.received_ms, i.incident_id",
            key.received_ms,
            Arg::Text(key.incident_id.clone()),
        );
    }
    b.finish("i.received_ms DESC, i.incident_id DESC", listing.limit)
}

/// An SLA clock with what the watchdog and the admin API need of its ticket, as
/// [`crate::store::SlaClockRow`] reads it: the columns of `sla_clocks c` joined with
/// `tickets t`. Each backend writes the join (SQLite as a CROSS JOIN, to keep the clocks
/// leading: every question starts from them), then each use its WHERE and ORDER BY. A
/// ticket's close time shows only while it is closed (a reopened ticket keeps its last one).
pub const SLA_CLOCKS_COLUMNS: &str = "SELECT c.clock_id, c.ticket_seq, c.level, c.policy,
        c.clock, c.revision, c.next_check_ms, t.connector, t.correlation_key, t.ticket_id,
        t.ticket_url, c.incident_id, c.account_id, t.opened_ms,
        CASE WHEN t.status = 'completed' THEN t.closed_ms END AS closed_ms, c.created_ok_ms";

/// After [`SLA_CLOCKS_COLUMNS`] and the join: newest clock first, at most `limit` within 1 and
/// one more than [`MAX_LIMIT`] (the caller asks for one row more than its page, to know
/// whether another page follows, and pages on with the last clock's id).
/// `breached` is written out rather than bound: both databases read `TRUE`/`FALSE`, and
/// either way the index on it applies.
pub fn sla_clocks(listing: &SlaListing, mark: char) -> Clause {
    let mut b = Builder::new(mark);
    b.accounts("c.account_id", listing.accounts.as_deref(), |test| test);
    b.filter("t.connector", "=", listing.connector.clone().map(Arg::Text));
    b.filter("c.state", "=", listing.state.clone().map(Arg::Text));
    if let Some(breached) = listing.breached {
        b.conditions.push(
            if breached {
                "c.breached = TRUE"
            } else {
                "c.breached = FALSE"
            }
            .to_string(),
        );
    }
    b.filter("c.clock_id", "<", listing.before_clock_id.map(Arg::Int));
    let fetch = i64::try_from(listing.limit.clamp(1, MAX_LIMIT + 1)).unwrap_or(i64::MAX);
    b.fetching("c.clock_id DESC", fetch)
}

/// The page of `rows` (fetched with one row more than `limit`), and the key of its last row
/// when more follow.
pub fn page<T, K>(mut rows: Vec<(T, K)>, limit: usize) -> Page<T, K> {
    let more = rows.len() > page_size(limit);
    rows.truncate(page_size(limit));
    let mut items = Vec::with_capacity(rows.len());
    let mut last = None;
    for (item, key) in rows {
        items.push(item);
        last = Some(key);
    }
    Page {
        items,
        next: if more { last } else { None },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::DeliveryKey;

    #[test]
    fn only_the_filters_given_become_conditions() {
        let none = deliveries(&DeliveryListing::default(), '?');
        assert_eq!(none.sql, "ORDER BY d.created_ms DESC, d.seq DESC LIMIT ?1");
        assert_eq!(none.args, vec![Arg::Int(2)]);
        let some = deliveries(
            &DeliveryListing {
                status: Some("dead".into()),
                until_ms: Some(5),
                after: Some(DeliveryKey {
                    created_ms: 4,
                    seq: 9,
                }),
                limit: 5000,
                ..Default::default()
            },
            '$',
        );
        assert_eq!(
            some.sql,
            "WHERE d.status = $1 AND d.created_ms < $2 AND (d.created_ms, d.seq) < ($3, $4) \
             ORDER BY d.created_ms DESC, d.seq DESC LIMIT $5"
        );
        assert_eq!(some.args[4], Arg::Int(1001));
    }

    #[test]
    fn a_scoped_list_keeps_its_accounts_rows_only() {
        let scoped = incidents(
            &IncidentListing {
                accounts: Some(vec![7, 9]),
                status: Some("open".into()),
                limit: 10,
                ..Default::default()
            },
            '?',
        );
        assert_eq!(
            scoped.sql,
            "WHERE i.account_id IN (?1, ?2) AND i.status = ?3 \
             ORDER BY i.received_ms DESC, i.incident_id DESC LIMIT ?4"
        );
        assert_eq!(&scoped.args[..2], &[Arg::Int(7), Arg::Int(9)]);
        let deliveries = deliveries(
            &DeliveryListing {
                accounts: Some(vec![7]),
                limit: 10,
                ..Default::default()
            },
            '$',
        );
        assert_eq!(
            deliveries.sql,
            "WHERE EXISTS (SELECT 1 FROM incidents i WHERE i.incident_id = d.incident_id \
             AND i.account_id IN ($1)) ORDER BY d.created_ms DESC, d.seq DESC LIMIT $2"
        );
        // A scope of no account sees nothing (never everything).
        let nothing = incidents(
            &IncidentListing {
                accounts: Some(vec![]),
                ..Default::default()
            },
            '?',
        );
        assert!(nothing.sql.starts_with("WHERE 1 = 0 "), "{}", nothing.sql);
    }

    #[test]
    fn an_sla_list_filters_only_what_is_given_and_fetches_the_page_alone() {
        let none = sla_clocks(&SlaListing::default(), '?');
        assert_eq!(none.sql, "ORDER BY c.clock_id DESC LIMIT ?1");
        assert_eq!(none.args, vec![Arg::Int(1)]);
        let all = sla_clocks(
            &SlaListing {
                accounts: Some(vec![3]),
                connector: Some("jira".into()),
                state: Some("running".into()),
                breached: Some(true),
                before_clock_id: Some(40),
                limit: 20,
            },
            '$',
        );
        assert_eq!(
            all.sql,
            "WHERE c.account_id IN ($1) AND t.connector = $2 AND c.state = $3 \
             AND c.breached = TRUE AND c.clock_id < $4 ORDER BY c.clock_id DESC LIMIT $5"
        );
        assert_eq!(all.args[4], Arg::Int(20));
        let nothing = sla_clocks(
            &SlaListing {
                accounts: Some(vec![]),
                breached: Some(false),
                ..Default::default()
            },
            '?',
        );
        assert!(
            nothing
                .sql
                .starts_with("WHERE 1 = 0 AND c.breached = FALSE "),
            "{}",
            nothing.sql
        );
    }

    #[test]
    fn a_page_names_its_last_key_only_when_more_follow() {
        let rows = |n: i64| (0..n).map(|i| (i, i * 10)).collect::<Vec<_>>();
        let full = page(rows(3), 2);
        assert_eq!(full.items, vec![0, 1]);
        assert_eq!(full.next, Some(10));
        let last = page(rows(2), 2);
        assert_eq!(last.items, vec![0, 1]);
        assert_eq!(last.next, None);
    }
}
