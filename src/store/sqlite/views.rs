//! What the admin API shows, read on the reader connection: an incident with its tickets and
//! deliveries per connector, and deliveries (with what each waits for, and its attempts).

use std::collections::BTreeMap;

use async_trait::async_trait;
use rusqlite::{Connection, Row, ToSql};

use super::{FromRow, Sqlite, completion_of, optional_row, rows};
use crate::model::rfc3339;
use crate::store::listing::{self, Arg};
use crate::store::{
    AttemptView, ConnectorView, DeliveryFilter, DeliveryKey, DeliveryListing, DeliveryView,
    IncidentKey, IncidentListing, IncidentSummary, IncidentView, Page, StoreError, TicketView,
    Views,
};

#[async_trait]
impl Views for Sqlite {
    async fn incident(&self, incident_id: String) -> Result<Option<IncidentView>, StoreError> {
        self.read(move |conn| incident_view(conn, &incident_id))
            .await
    }

    async fn deliveries(&self, filter: DeliveryFilter) -> Result<Vec<DeliveryView>, StoreError> {
        self.read(move |conn| {
            let limit = filter.limit.clamp(1, 1000) as i64;
            query_deliveries(
                conn,
                "WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR connector = ?2) ORDER BY seq LIMIT ?3",
                &[&filter.status, &filter.connector, &limit],
                false,
            )
        })
        .await
    }

    async fn delivery(&self, delivery_id: String) -> Result<Option<DeliveryView>, StoreError> {
        self.read(move |conn| {
            Ok(
                query_deliveries(conn, "WHERE delivery_id = ?1", &[&delivery_id], true)?
                    .into_iter()
                    .next(),
            )
        })
        .await
    }

    async fn account_of(&self, incident_id: String) -> Result<Option<Option<i64>>, StoreError> {
        self.read(move |conn| {
            let mut stmt =
                conn.prepare_cached("SELECT account_id FROM incidents WHERE incident_id = ?1")?;
            let mut found = stmt.query_map([&incident_id], |r| r.get::<_, Option<i64>>(0))?;
            Ok(found.next().transpose()?)
        })
        .await
    }

    async fn list_deliveries(
        &self,
        listing: DeliveryListing,
    ) -> Result<Page<DeliveryView, DeliveryKey>, StoreError> {
        self.read(move |conn| list_deliveries(conn, &listing)).await
    }

    async fn list_incidents(
        &self,
        listing: IncidentListing,
    ) -> Result<Page<IncidentSummary, IncidentKey>, StoreError> {
        self.read(move |conn| list_incidents(conn, &listing)).await
    }
}

impl ToSql for Arg {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        match self {
            Arg::Text(s) => s.to_sql(),
            Arg::Int(n) => n.to_sql(),
        }
    }
}

/// [`Views::list_deliveries`].
fn list_deliveries(
    conn: &Connection,
    listing: &DeliveryListing,
) -> Result<Page<DeliveryView, DeliveryKey>, StoreError> {
    let clause = listing::deliveries(listing, '?');
    let args: Vec<&dyn ToSql> = clause.args.iter().map(|a| a as &dyn ToSql).collect();
    let mut items = query_deliveries(conn, &clause.sql, &args, false)?;
    let size = listing::page_size(listing.limit);
    let more = items.len() > size;
    items.truncate(size);
    let next = match items.last() {
        Some(last) if more => Some(conn.query_row(
            "SELECT created_ms, seq FROM deliveries WHERE delivery_id = ?1",
            [&last.id],
            |r| {
                Ok(DeliveryKey {
                    created_ms: r.get(0)?,
                    seq: r.get(1)?,
                })
            },
        )?),
        _ => None,
    };
    Ok(Page { items, next })
}

from_row! {
    /// An incident's own row, as a list shows it.
    struct IncidentListRow {
        incident_id: String,
        source: String,
        status: String,
        status_change_ms: i64,
        received_ms: i64,
        updated_ms: i64,
        versions: u32,
        summary: Option<String>,
    }
}

/// [`Views::list_incidents`].
fn list_incidents(
    conn: &Connection,
    listing: &IncidentListing,
) -> Result<Page<IncidentSummary, IncidentKey>, StoreError> {
    let clause = listing::incidents(listing, '?');
    let sql = format!(
        "SELECT i.incident_id, i.source, i.status, i.status_change_ms, i.received_ms,
                i.updated_ms, i.versions, {} AS summary
         FROM incidents i JOIN incident_versions v ON v.version_id = i.version_id {}",
        listing::incident_summary('?'),
        clause.sql
    );
    let args: Vec<&dyn ToSql> = clause.args.iter().map(|a| a as &dyn ToSql).collect();
    let found: Vec<IncidentListRow> = rows(conn, &sql, args.as_slice())?;
    let keyed = found
        .into_iter()
        .map(|r| {
            let key = IncidentKey {
                received_ms: r.received_ms,
                incident_id: r.incident_id.clone(),
            };
            let summary = IncidentSummary {
                incident_id: r.incident_id,
                source: r.source,
                status: r.status,
                status_change_time: rfc3339(r.status_change_ms),
                received_at: rfc3339(r.received_ms),
                updated_at: rfc3339(r.updated_ms),
                versions: r.versions,
                summary: r.summary,
            };
            (summary, key)
        })
        .collect();
    Ok(listing::page(keyed, listing.limit))
}

from_row! {
    /// An incident's own row, with its current version's body.
    struct IncidentRow {
        incident_id: String,
        source: String,
        status: String,
        status_change_ms: i64,
        received_ms: i64,
        updated_ms: i64,
        versions: u32,
        account_id: Option<i64>,
        body: String,
    }
}

/// A ticket an incident is on, and the connector it is of.
struct ConnectorTicket {
    connector: String,
    ticket: TicketView,
}

impl FromRow for ConnectorTicket {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(ConnectorTicket {
            connector: r.get("connector")?,
            ticket: TicketView {
                correlation_key: r.get("correlation_key")?,
                ticket_id: r.get("ticket_id")?,
                ticket_url: r.get("ticket_url")?,
                status: r.get("status")?,
                opened_at: rfc3339(r.get("opened_ms")?),
                aggregates_until: r.get::<_, Option<i64>>("window_until_ms")?.map(rfc3339),
                incidents: r.get("incidents")?,
            },
        })
    }
}

impl FromRow for DeliveryView {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        let status: String = r.get("status")?;
        let next: i64 = r.get("next_attempt_ms")?;
        Ok(DeliveryView {
            id: r.get("delivery_id")?,
            incident_id: r.get("incident_id")?,
            connector: r.get("connector")?,
            event: r.get("event")?,
            next_attempt_at: (status == "pending").then(|| rfc3339(next)),
            status,
            attempt_count: r.get("attempts")?,
            created_at: rfc3339(r.get("created_ms")?),
            updated_at: rfc3339(r.get("updated_ms")?),
            last_error: r.get("last_error")?,
            waiting_for: r.get("waiting_for")?,
            attempts: None,
        })
    }
}

impl FromRow for AttemptView {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(AttemptView {
            attempt: r.get("attempt")?,
            started_at: rfc3339(r.get("started_ms")?),
            latency_ms: r.get("latency_ms")?,
            status_code: r.get("status_code")?,
            error: r.get("error")?,
            response_body: r.get("response_body")?,
            outcome: r.get("outcome")?,
            lookup: r.get("lookup")?,
        })
    }
}

/// [`Views::incident`].
pub(super) fn incident_view(
    conn: &Connection,
    incident_id: &str,
) -> Result<Option<IncidentView>, StoreError> {
    let row: Option<IncidentRow> = optional_row(
        conn,
        concat!(incident_view_select!(), " WHERE i.incident_id = ?1"),
        [incident_id],
    )?;
    let Some(row) = row else {
        return Ok(None);
    };
    // Its own deliveries, and those of others' that carry it (a collection window's).
    let deliveries = query_deliveries(
        conn,
        "WHERE incident_id = ?1
            OR seq IN (SELECT delivery_seq FROM collected_incidents WHERE incident_id = ?1)
         ORDER BY seq",
        &[&row.incident_id],
        true,
    )?;
    let mut connectors = BTreeMap::<String, ConnectorView>::new();
    let tickets: Vec<ConnectorTicket> = rows(
        conn,
        concat!(
            ticket_views_select!(),
            " WHERE ti.incident_id = ?1 ORDER BY t.ticket_seq"
        ),
        [&row.incident_id],
    )?;
    for t in tickets {
        connectors
            .entry(t.connector)
            .or_default()
            .tickets
            .push(t.ticket);
    }
    for d in deliveries {
        connectors
            .entry(d.connector.clone())
            .or_default()
            .deliveries
            .push(d);
    }
    let completion = completion_of(conn, &row.incident_id)?;
    Ok(Some(IncidentView {
        status_change_time: rfc3339(row.status_change_ms),
        received_at: rfc3339(row.received_ms),
        updated_at: rfc3339(row.updated_ms),
        incident: serde_json::from_str(&row.body).unwrap_or(serde_json::Value::Null),
        incident_id: row.incident_id,
        source: row.source,
        status: row.status,
        versions: row.versions,
        account_id: row.account_id,
        completion,
        connectors,
    }))
}

/// Deliveries matching `clause` (which may bind `args`), each with what it waits for (the
/// ordering rule, `waits_behind!`) and, if asked, its attempts.
fn query_deliveries(
    conn: &Connection,
    clause: &str,
    args: &[&dyn ToSql],
    with_attempts: bool,
) -> Result<Vec<DeliveryView>, StoreError> {
    let sql = format!("{} {clause}", delivery_views_select!());
    let mut out: Vec<DeliveryView> = rows(conn, &sql, args)?;
    if with_attempts {
        for d in &mut out {
            d.attempts = Some(rows(
                conn,
                "SELECT attempt, started_ms, latency_ms, status_code, error, response_body, outcome,
                        lookup
                 FROM attempts WHERE delivery_id = ?1 ORDER BY attempt",
                [&d.id],
            )?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn an_incident_shows_its_tickets_and_deliveries_per_connector() {
        let db = TestDb::new();
        let jira = route("jira", "host-1", Some(60_000));
        let a = db.ingest_one(incident("A").routed(&jira), 1_000);
        let b = db.ingest_one(incident("B").routed(&jira), 2_000);
        let view = incident_view(&db.conn, "A").unwrap().unwrap();
        assert_eq!(view.incident_id, "A");
        assert_eq!(view.source, "src");
        assert_eq!(view.status, "open");
        assert_eq!(view.versions, 1);
        assert_eq!(view.received_at, rfc3339(1_000));
        assert_eq!(view.incident["incidentId"], "A");
        assert!(view.completion.is_none());
        let side = &view.connectors["jira"];
        assert_eq!(side.tickets.len(), 1);
        assert_eq!(side.tickets[0].correlation_key, "host-1");
        assert_eq!(side.tickets[0].incidents, 2);
        assert_eq!(side.tickets[0].aggregates_until, Some(rfc3339(61_000)));
        assert_eq!(side.deliveries.len(), 1);
        assert_eq!(side.deliveries[0].id, a.deliveries[0].id);
        assert_eq!(
            side.deliveries[0].attempts.as_deref().map(<[_]>::len),
            Some(0)
        );

        // B's update waits for A's created.
        let waiting = query_deliveries(
            &db.conn,
            "WHERE delivery_id = ?1",
            &[&b.deliveries[0].id],
            false,
        )
        .unwrap();
        assert_eq!(
            waiting[0].waiting_for.as_deref(),
            Some(a.deliveries[0].id.as_str())
        );
        assert_eq!(waiting[0].event, "updated");
        assert_eq!(waiting[0].next_attempt_at, Some(rfc3339(2_000)));
        assert!(incident_view(&db.conn, "Z").unwrap().is_none());
    }

    /// Each list's query shape is answered from an index, in the index's order: a range
    /// scan that stops after a page, however many rows the table holds (no full scan, no
    /// sort of all the matches).
    #[test]
    fn every_list_query_reads_an_index_in_order() {
        let db = TestDb::new();
        let text = |s: &str| Some(s.to_string());
        let key = Some(DeliveryKey {
            created_ms: 5,
            seq: 3,
        });
        let deliveries = [
            DeliveryListing::default(),
            DeliveryListing {
                status: text("dead"),
                after: key,
                ..Default::default()
            },
            DeliveryListing {
                connector: text("jira"),
                since_ms: Some(1),
                ..Default::default()
            },
            DeliveryListing {
                incident: text("A"),
                until_ms: Some(9),
                after: key,
                ..Default::default()
            },
        ];
        let mut plans = Vec::new();
        for listing in &deliveries {
            let clause = listing::deliveries(listing, '?');
            plans.push((
                format!("{} {}", delivery_views_select!(), clause.sql),
                clause.args,
            ));
        }
        let incidents = [
            IncidentListing::default(),
            IncidentListing {
                source: text("src"),
                after: Some(IncidentKey {
                    received_ms: 5,
                    incident_id: "B".into(),
                }),
                ..Default::default()
            },
            IncidentListing {
                status: text("open"),
                since_ms: Some(1),
                until_ms: Some(9),
                ..Default::default()
            },
            IncidentListing {
                connector: text("jira"),
                ..Default::default()
            },
        ];
        for listing in &incidents {
            let clause = listing::incidents(listing, '?');
            plans.push((
                format!("SELECT i.incident_id FROM incidents i {}", clause.sql),
                clause.args,
            ));
        }
        for (sql, args) in plans {
            let args: Vec<&dyn ToSql> = args.iter().map(|a| a as &dyn ToSql).collect();
            let mut statement = db
                .conn
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .unwrap();
            let steps: Vec<(i64, String)> = statement
                .query_map(args.as_slice(), |r| Ok((r.get(1)?, r.get(3)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            // The outer query's steps (parent 0); the waiting-for subquery has its own.
            let outer: Vec<&str> = steps
                .iter()
                .filter(|(parent, _)| *parent == 0)
                .map(|(_, d)| d.as_str())
                .collect();
            assert!(
                outer
                    .iter()
                    .any(|d| d.contains("USING") && d.contains("INDEX")),
                "{sql}: {outer:?}"
            );
            // The connector filter looks up each incident's deliveries by incident, never
            // every delivery of the connector for each incident.
            if sql.contains("EXISTS (SELECT 1 FROM deliveries d") {
                assert!(
                    steps.iter().any(|(_, d)| d.contains("deliveries_incident")),
                    "{sql}: {steps:?}"
                );
            }
            // One incident's deliveries are few: they are sorted once its index finds them.
            let of_one_incident = sql.contains("d.incident_id = ?");
            assert!(
                of_one_incident || !outer.iter().any(|d| d.contains("TEMP B-TREE")),
                "{sql}: {outer:?}"
            );
        }
    }
}
