//! Operator: the admin API from a terminal — `deliveries list|show|replay` and
//! `incidents list|show`. Each command is one or a few HTTP calls to a running gateway with
//! the admin token; what comes back is printed as a table (or the JSON itself with `--json`).
//! Bulk replay goes in batches with a progress bar and ends with a summary.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{Value, json};

/// Where the admin API is and the token that opens it (never printed).
#[derive(Clone)]
pub struct AdminApi {
    pub url: String,
    pub token: String,
}

/// Why an operator command failed.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("cannot reach the admin API at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error(
        "the admin token was refused (set IGW_ADMIN_TOKEN or --token to the config's server.admin_token)"
    )]
    Unauthorized,
    #[error("{status}: {detail}")]
    Refused { status: u16, detail: String },
    #[error("the admin API answered something that is not JSON: {0}")]
    NotJson(String),
}

impl AdminApi {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Value>,
    ) -> Result<Value, OperatorError> {
        let url = format!("{}{path}", self.url.trim_end_matches('/'));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| OperatorError::Unreachable {
                url: self.url.clone(),
                reason: e.to_string(),
            })?;
        let url = reqwest::Url::parse_with_params(&url, query).map_err(|e| {
            OperatorError::Unreachable {
                url: self.url.clone(),
                reason: format!("not a URL: {e}"),
            }
        })?;
        let mut request = client.request(method, url).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| OperatorError::Unreachable {
                url: self.url.clone(),
                reason: without_url(&e),
            })?;
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .map_err(|e| OperatorError::Unreachable {
                url: self.url.clone(),
                reason: without_url(&e),
            })?;
        if status == 401 {
            return Err(OperatorError::Unauthorized);
        }
        let value: Value = serde_json::from_str(&text)
            .map_err(|_| OperatorError::NotJson(text.chars().take(200).collect()))?;
        if status >= 400 {
            let mut detail = value["detail"].as_str().unwrap_or("").to_string();
            for e in value["errors"].as_array().into_iter().flatten() {
                let _ = write!(
                    detail,
                    "\n  {}: {}",
                    e["pointer"].as_str().unwrap_or(""),
                    e["detail"].as_str().unwrap_or("")
                );
            }
            return Err(OperatorError::Refused { status, detail });
        }
        Ok(value)
    }
}

/// What went wrong with a call, without its URL (the base is in the message already).
fn without_url(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "connection failed".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let _ = write!(text, ": {s}");
        source = s.source();
    }
    text
}

/// Filters of a list, as the API takes them.
#[derive(Debug, Default, Clone)]
pub struct ListFilter {
    pub pairs: Vec<(&'static str, String)>,
    /// At most this many rows (following cursors); `None`: one page of the API's default.
    pub limit: Option<usize>,
}

impl ListFilter {
    pub fn with(mut self, key: &'static str, value: Option<String>) -> Self {
        if let Some(v) = value {
            self.pairs.push((key, v));
        }
        self
    }
}

/// Rows of `GET {path}` under `key`, following `next_cursor` until `limit` rows.
async fn list(
    api: &AdminApi,
    path: &str,
    key: &str,
    filter: &ListFilter,
) -> Result<Vec<Value>, OperatorError> {
    let want = filter.limit.unwrap_or(100);
    let mut rows = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut query: Vec<(&str, String)> = filter.pairs.clone();
        query.push(("limit", (want - rows.len()).min(1000).to_string()));
        if let Some(c) = &cursor {
            query.push(("cursor", c.clone()));
        }
        let page = api.call(reqwest::Method::GET, path, &query, None).await?;
        rows.extend(page[key].as_array().cloned().unwrap_or_default());
        cursor = page["next_cursor"].as_str().map(str::to_string);
        if cursor.is_none() || rows.len() >= want {
            break;
        }
    }
    rows.truncate(want);
    Ok(rows)
}

/// Columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let pad = widths.get(i).copied().unwrap_or(0);
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                let _ = write!(out, "{cell:<pad$}  ");
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out.push_str(&line(row.clone()));
    }
    out
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `deliveries list`.
pub async fn deliveries_list(
    api: &AdminApi,
    filter: &ListFilter,
    as_json: bool,
) -> Result<String, OperatorError> {
    let rows = list(api, "/v1/deliveries", "deliveries", filter).await?;
    if as_json {
        return Ok(pretty(&Value::Array(rows)));
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|d| {
            vec![
                text(&d["id"]),
                text(&d["incidentId"]),
                text(&d["connector"]),
                text(&d["event"]),
                text(&d["status"]),
                text(&d["attempt_count"]),
                text(&d["last_error"]),
            ]
        })
        .collect();
    Ok(table(
        &[
            "ID",
            "INCIDENT",
            "CONNECTOR",
            "EVENT",
            "STATUS",
            "ATTEMPTS",
            "LAST ERROR",
        ],
        &cells,
    ) + &format!("{} deliveries\n", rows.len()))
}

/// `incidents list`.
pub async fn incidents_list(
    api: &AdminApi,
    filter: &ListFilter,
    as_json: bool,
) -> Result<String, OperatorError> {
    let rows = list(api, "/v1/incidents", "incidents", filter).await?;
    if as_json {
        return Ok(pretty(&Value::Array(rows)));
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|i| {
            vec![
                text(&i["incidentId"]),
                text(&i["source"]),
                text(&i["status"]),
                text(&i["versions"]),
                text(&i["received_at"]),
            ]
        })
        .collect();
    Ok(table(
        &["INCIDENT", "SOURCE", "STATUS", "VERSIONS", "RECEIVED"],
        &cells,
    ) + &format!("{} incidents\n", rows.len()))
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default() + "\n"
}

/// `deliveries show ID` / `incidents show ID`: the API's view, as JSON.
pub async fn show(api: &AdminApi, path: &str) -> Result<String, OperatorError> {
    Ok(pretty(
        &api.call(reqwest::Method::GET, path, &[], None).await?,
    ))
}

/// `deliveries replay ID…`: each dead delivery back in the queue; one line each.
pub async fn replay_each(api: &AdminApi, ids: &[String]) -> Result<String, OperatorError> {
    let mut out = String::new();
    let mut failed = 0;
    for id in ids {
        let path = format!("/v1/deliveries/{}/replay", path_segment(id));
        match api.call(reqwest::Method::POST, &path, &[], None).await {
            Ok(_) => {
                let _ = writeln!(out, "{id}: replayed");
            }
            Err(OperatorError::Refused { status, detail }) => {
                failed += 1;
                let _ = writeln!(out, "{id}: not replayed ({status}: {detail})");
            }
            Err(e) => return Err(e),
        }
    }
    let _ = writeln!(out, "{} replayed, {failed} not", ids.len() - failed);
    Ok(out)
}

/// `id` as one path segment (percent-encoded).
pub fn path_segment(id: &str) -> String {
    id.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The filter of a bulk replay.
#[derive(Debug, Default, Clone)]
pub struct DeadFilter {
    pub connector: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub error_class: Option<String>,
}

/// Dead deliveries replayed per call: small enough that each call is quick and the bar moves.
const BATCH: usize = 500;

/// `deliveries replay --dead …`: every dead delivery the filter matches, in batches, with a
/// progress bar on a terminal; the summary says how many. Deliveries that die again while
/// this runs are not replayed a second time: the replay takes only those dead before it
/// started.
pub async fn replay_dead(api: &AdminApi, filter: &DeadFilter) -> Result<String, OperatorError> {
    let started = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    let until = match &filter.until {
        Some(u) if u.as_str() < started.as_str() => u.clone(),
        _ => started,
    };
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {pos} dead deliveries replayed {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    let mut replayed = 0u64;
    loop {
        let mut body = json!({ "until": until, "limit": BATCH });
        for (key, value) in [
            ("connector", &filter.connector),
            ("since", &filter.since),
            ("error_class", &filter.error_class),
        ] {
            if let Some(v) = value {
                body[key] = json!(v);
            }
        }
        let answer = api
            .call(
                reqwest::Method::POST,
                "/v1/deliveries/replay",
                &[],
                Some(body),
            )
            .await?;
        let n = answer["replayed"].as_u64().unwrap_or(0);
        replayed += n;
        bar.inc(n);
        if !answer["more"].as_bool().unwrap_or(false) || n == 0 {
            break;
        }
    }
    bar.finish_and_clear();
    let mut scope = Vec::new();
    for (key, value) in [
        ("connector", &filter.connector),
        ("since", &filter.since),
        ("error_class", &filter.error_class),
    ] {
        if let Some(v) = value {
            scope.push(format!("{key}={v}"));
        }
    }
    scope.push(format!("until={until}"));
    Ok(format!(
        "replayed {replayed} dead deliveries ({})\n",
        scope.join(", ")
    ))
}
