//! Test support: a real HTTP receiver, a gateway with its own config and SQLite file (in
//! process or as the real binary), requests at both edges, bounded waits, and small helpers;
//! `cli` runs the binary's `check` and `render`, `smtp` the SMTP servers.
#![allow(dead_code)]

pub mod cli;
pub mod contract;
pub mod pg;
pub mod smtp;

// Not every test runs the binary's commands.
#[allow(unused_imports)]
pub use cli::*;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

pub const SOURCE_KEY: &str = "test-source-key-0123456789";
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
/// The signing secret of the signature-only source in the ingress tests.
pub const INBOUND_SECRET: &str = "whsec_aW5ib3VuZC1zb3VyY2Utc2VjcmV0LTEyMzQ1Njc4";

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The shipped sample incident's file.
pub fn sample_file() -> PathBuf {
    repo().join("examples/incidents/sample.json")
}

pub fn sample() -> Value {
    let text = std::fs::read_to_string(sample_file()).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A sample incident with its own id.
pub fn incident(id: &str) -> Value {
    let mut v = sample();
    v["incidentId"] = Value::String(id.to_string());
    v
}

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("receiver got valid JSON")
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    }
}

/// A scripted answer: status, headers, body.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub delay: Duration,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: vec![],
            body: String::new(),
            delay: Duration::ZERO,
        }
    }
    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }
    pub fn body(mut self, body: &str) -> Reply {
        self.body = body.into();
        self
    }
    /// Answers only after `delay`.
    pub fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
}

#[derive(Default)]
struct ReceiverState {
    received: Mutex<Vec<Received>>,
    script: Mutex<VecDeque<Reply>>,
}

/// A real HTTP server in the test: records every request, answers from a script (then 200).
pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<ReceiverState>,
    task: tokio::task::JoinHandle<()>,
}

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state.received.lock().unwrap().push(Received {
        method: method.to_string(),
        path: uri.path().to_string(),
        headers,
        body,
        at: Instant::now(),
    });
    let reply = state
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or_else(|| Reply::status(200).body("{\"ok\":true}"));
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut response = (StatusCode::from_u16(reply.status).unwrap(), reply.body).into_response();
    for (k, v) in reply.headers {
        response.headers_mut().insert(
            axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    response
}

impl Receiver {
    pub async fn start() -> Receiver {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn start_on(addr: SocketAddr) -> Receiver {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(ReceiverState::default());
        let app = axum::Router::new()
            .fallback(receive)
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver { addr, state, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.script.lock().unwrap().extend(replies);
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests arrived (bounded, so a bug fails instead of hanging).
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Received> {
        at_least(n, within, || self.received()).await
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A free port on loopback (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether the end-to-end suites run on PostgreSQL (`IGW_TEST_STORE=postgres`, as
/// `scripts/test` runs the suites that matter for several gateways) or on SQLite (the default).
pub fn on_postgres() -> bool {
    std::env::var("IGW_TEST_STORE").is_ok_and(|s| s == "postgres")
}

/// A folder with a config file, its store (a SQLite file there, or a PostgreSQL database of
/// its own when [`on_postgres`]), and the repository's templates.
pub struct Workspace {
    pub dir: tempfile::TempDir,
    pub pg: Option<pg::PgDb>,
}

impl Workspace {
    pub fn new() -> Workspace {
        Workspace {
            dir: tempfile::tempdir().unwrap(),
            pg: on_postgres().then(pg::PgDb::create),
        }
    }

    /// The workspace's `storage.url`.
    pub fn storage_url(&self) -> String {
        match &self.pg {
            Some(pg) => pg.url.clone(),
            None => "sqlite://gateway.db".into(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn db(&self) -> PathBuf {
        self.path().join("gateway.db")
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path().join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Writes `gateway.toml`: the given connector blocks after a standard head.
    pub fn config(&self, listen: &str, connectors: &str) -> PathBuf {
        let templates = repo().join("templates");
        let text = format!(
            r#"
[server]
listen = "{listen}"
admin_token = "{ADMIN_TOKEN}"
shutdown_grace = "5s"

[storage]
url = "{storage}"

[[sources]]
name = "detector"
api_key = "{SOURCE_KEY}"

{connectors}
"#,
            storage = self.storage_url()
        )
        .replace("TEMPLATES", &templates.display().to_string());
        self.write("gateway.toml", &text)
    }

    /// The repository's sample incident as `incidents/sample.json`, the example `check` renders.
    pub fn add_sample_incident(&self) {
        self.write(
            "incidents/sample.json",
            &std::fs::read_to_string(sample_file()).unwrap(),
        );
    }

    /// An http connector block whose template `template` is written into the workspace (as
    /// `<name>.json.hbs`).
    pub fn connector_with_template(
        &self,
        name: &str,
        url: &str,
        template: &str,
        extra: &str,
    ) -> String {
        let file = self.write(&format!("{name}.json.hbs"), template);
        templated_connector(name, url, &file.display().to_string(), extra)
    }

    /// The store's files: the database and its companions (WAL, shared memory, lock).
    pub fn store_files(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("gateway.db")
            })
            .collect()
    }

    /// A fresh read-only connection to the SQLite store (tests of the SQLite file itself).
    pub fn store(&self) -> rusqlite::Connection {
        assert!(self.pg.is_none(), "this test reads the SQLite file itself");
        rusqlite::Connection::open_with_flags(self.db(), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap()
    }

    /// Counts rows in the store's tables.
    pub fn counts(&self) -> (i64, i64, i64, i64) {
        if let Some(pg) = &self.pg {
            let count = |t: &str| pg.query_i64(&format!("SELECT COUNT(*) FROM {t}"));
            return (
                count("incidents"),
                count("incident_versions"),
                count("deliveries"),
                count("attempts"),
            );
        }
        let conn = self.store();
        let count = |t: &str| -> i64 {
            conn.query_row(&format!("SELECT COUNT(*) FROM {t}"), [], |r| r.get(0))
                .unwrap()
        };
        (
            count("incidents"),
            count("incident_versions"),
            count("deliveries"),
            count("attempts"),
        )
    }

    /// The rows of a query of one text column.
    pub fn texts(&self, sql: &str) -> Vec<String> {
        if let Some(pg) = &self.pg {
            return pg.texts(sql);
        }
        let conn = self.store();
        let mut stmt = conn.prepare(sql).unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// Whether `needle` is anywhere in the store: the SQLite file's bytes, or every row of
    /// every table on PostgreSQL.
    pub fn store_contains(&self, needle: &str) -> bool {
        if let Some(pg) = &self.pg {
            let tables = [
                "incidents",
                "incident_versions",
                "deliveries",
                "tickets",
                "ticket_incidents",
                "seen_webhooks",
                "attempts",
            ];
            let rows = tables
                .map(|t| format!("SELECT row_to_json(x)::text AS j FROM {t} x"))
                .join(" UNION ALL ");
            let needle = needle.replace('\'', "''");
            return pg.query_i64(&format!(
                "SELECT COUNT(*) FROM ({rows}) r WHERE strpos(r.j, '{needle}') > 0"
            )) > 0;
        }
        self.store_files().iter().any(|f| {
            String::from_utf8_lossy(&std::fs::read(f).unwrap_or_default()).contains(needle)
        })
    }

    /// The status of every delivery, oldest first.
    pub fn statuses(&self) -> Vec<String> {
        self.texts("SELECT status FROM deliveries ORDER BY seq")
    }
}

/// Puts a `[delivery]` section with `delivery` into the config file.
pub fn with_delivery(config: &Path, delivery: &str) {
    edit(config, |text| {
        text.replacen(
            "[storage]",
            &format!("[delivery]\n{delivery}\n\n[storage]"),
            1,
        )
    });
}

/// Adds `lines` to the config file's `[server]` section.
pub fn with_server(config: &Path, lines: &str) {
    edit(config, |text| {
        assert!(text.contains("[server]\n"), "no [server] in {text}");
        text.replacen("[server]\n", &format!("[server]\n{lines}\n"), 1)
    });
}

/// Sets the config file's `shutdown_grace` to `grace`.
pub fn with_shutdown_grace(config: &Path, grace: &str) {
    edit(config, |text| {
        assert!(text.contains("shutdown_grace = \"5s\""), "{text}");
        text.replace(
            "shutdown_grace = \"5s\"",
            &format!("shutdown_grace = \"{grace}\""),
        )
    });
}

/// Replaces the config file's one `[[sources]]` block (the `detector` source, by key) with
/// `sources`.
pub fn with_sources(config: &Path, sources: &str) {
    let detector = format!("[[sources]]\nname = \"detector\"\napi_key = \"{SOURCE_KEY}\"\n");
    edit(config, |text| {
        assert!(text.contains(&detector), "no detector source in {text}");
        text.replace(&detector, sources)
    });
}

/// A source that signs its requests with INBOUND_SECRET instead of presenting a key.
pub fn signed_source(name: &str) -> String {
    format!("[[sources]]\nname = \"{name}\"\nsigning_secret = \"{INBOUND_SECRET}\"\n")
}

/// Rewrites a file through `change`.
pub fn edit(file: &Path, change: impl FnOnce(String) -> String) {
    let text = std::fs::read_to_string(file).unwrap();
    std::fs::write(file, change(text)).unwrap();
}

/// An http connector block posting the generic envelope to `url`.
pub fn http_connector(name: &str, url: &str, extra: &str) -> String {
    templated_connector(name, url, "TEMPLATES/generic/incident.json.hbs", extra)
}

/// An http connector block posting what `template` (a file) renders to `url`.
pub fn templated_connector(name: &str, url: &str, template: &str, extra: &str) -> String {
    format!(
        r#"
[[connectors]]
name = "{name}"
kind = "http"
url = "{url}"
template = "{template}"
timeout = "5s"
{extra}
"#
    )
}

pub fn fast_retry() -> &'static str {
    r#"
[connectors.retry]
max_attempts = 50
initial_backoff = "100ms"
max_backoff = "500ms"
max_age = "1h"
"#
}

/// A Standard Webhooks signature (`v1,<base64 HMAC-SHA256>`) of `id.timestamp.body`.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &str) -> String {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use hmac::{KeyInit, Mac};
    let key = STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// The hub tests' two sources (tenants, info API, SLA), `hub` and `other`, each with an API
/// key and a callback token, as a config block (after the workspace's `detector`).
/// Two tenants by account: `acme` (2) and `globex` (7).
pub const TENANTS: &str = r#"
[[tenants]]
name = "acme"
account_id = 2

[[tenants]]
name = "globex"
account_id = 7
"#;

/// Admin tokens scoped to `acme`: `acme-customer` reads ([`ACME_READ`]), `acme-soc` also
/// replays ([`ACME_WRITE`]).
pub const SCOPED_TOKENS: &str = r#"
[[admin_tokens]]
name = "acme-customer"
token = "acme-read-token-0123456789"
tenants = ["acme"]

[[admin_tokens]]
name = "acme-soc"
token = "acme-write-token-0123456789"
tenants = ["acme"]
access = "write"
"#;
pub const ACME_READ: &str = "acme-read-token-0123456789";
pub const ACME_WRITE: &str = "acme-write-token-0123456789";

pub const HUB_SOURCES: &str = r#"
[[sources]]
name = "hub"
api_key = "hub-source-key-0123456789"
callback_token = "hub-callback-token-0123456789"

[[sources]]
name = "other"
api_key = "other-source-key-0123456789"
callback_token = "other-callback-token-0123456789"
"#;
pub const HUB_KEY: &str = "hub-source-key-0123456789";
pub const HUB_CALLBACK: &str = "hub-callback-token-0123456789";
pub const OTHER_CALLBACK: &str = "other-callback-token-0123456789";

/// The clock as a webhook timestamp: whole seconds since the epoch.
pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A request signed by the signature-only source (with INBOUND_SECRET), as a capturing attacker
/// holds it: replayable byte for byte. Change a field to forge one.
#[derive(Clone, Debug)]
pub struct Signed {
    pub id: String,
    pub timestamp: i64,
    pub signature: String,
    pub body: String,
}

impl Signed {
    /// `body` signed now, as webhook `id`.
    pub fn new(id: &str, body: &Value) -> Signed {
        Signed::at(id, &body.to_string(), now())
    }

    /// `body` signed at `timestamp`, as webhook `id`.
    pub fn at(id: &str, body: &str, timestamp: i64) -> Signed {
        Signed {
            id: id.into(),
            timestamp,
            signature: sign(INBOUND_SECRET, id, timestamp, body),
            body: body.into(),
        }
    }

    /// The Standard Webhooks headers.
    pub fn headers(&self) -> Vec<(String, String)> {
        vec![
            ("webhook-id".into(), self.id.clone()),
            ("webhook-timestamp".into(), self.timestamp.to_string()),
            ("webhook-signature".into(), self.signature.clone()),
        ]
    }

    /// Posts it to the ingest endpoint, as JSON.
    pub async fn post(&self, base: &str) -> reqwest::Response {
        self.post_with_key(base, None).await
    }

    /// Posts it with `key` as bearer token too (if given).
    pub async fn post_with_key(&self, base: &str, key: Option<&str>) -> reqwest::Response {
        let mut request = ingest(base, key, Some(APPLICATION_JSON));
        for (name, value) in self.headers() {
            request = request.header(name, value);
        }
        request.body(self.body.clone()).send().await.unwrap()
    }
}

/// A receiver, and a config (in its workspace) whose one http connector `name` posts the
/// generic envelope to `path` on the receiver; `extra` is added to the connector's block.
pub async fn receiver_and_config(
    name: &str,
    path: &str,
    extra: &str,
) -> (Receiver, Workspace, PathBuf) {
    let receiver = Receiver::start().await;
    let ws = Workspace::new();
    let config = ws.config(
        "127.0.0.1:0",
        &http_connector(name, &receiver.url(path), extra),
    );
    (receiver, ws, config)
}

/// The usual scene: that receiver and config, and the gateway started on it in process (with
/// its base URL).
pub async fn receiver_and_gateway(
    name: &str,
    path: &str,
    extra: &str,
) -> (Receiver, Workspace, incident_gateway::Gateway, String) {
    let (receiver, ws, config) = receiver_and_config(name, path, extra).await;
    let (gw, base) = start_gateway(&config).await;
    (receiver, ws, gw, base)
}

/// The gateway started in this process, on an ephemeral port.
pub async fn start_in_process(config: &Path) -> incident_gateway::Gateway {
    let config = incident_gateway::config::Config::load(config).expect("config loads");
    incident_gateway::Gateway::start(config)
        .await
        .expect("gateway starts")
}

/// The gateway started in this process, and its base URL.
pub async fn start_gateway(config: &Path) -> (incident_gateway::Gateway, String) {
    let gw = start_in_process(config).await;
    let base = format!("http://{}", gw.addr);
    (gw, base)
}

/// The real binary, serving `config`; returns the child and its base URL.
pub fn spawn_binary(config: &Path) -> (Child, String) {
    spawn_binary_with(config, "error", &[], Stdio::inherit())
}

/// The real binary at log level `log`, with extra environment, its log written to `log_file`
/// (so a test can read back what it logged).
pub fn spawn_binary_logged(
    config: &Path,
    log: &str,
    env: &[(&str, &str)],
    log_file: &Path,
) -> (Child, String) {
    let file = std::fs::File::create(log_file).unwrap();
    spawn_binary_with(config, log, env, Stdio::from(file))
}

fn spawn_binary_with(
    config: &Path,
    log: &str,
    env: &[(&str, &str)],
    stderr: Stdio,
) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_incident-gateway"))
        .args(["serve", "--config"])
        .arg(config)
        .env("IGW_LOG", log)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("binary starts");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .to_string();
    (child, url)
}

/// Kills `child` (SIGKILL) and reaps it.
pub fn sigkill(child: &mut Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

pub fn client() -> reqwest::Client {
    reqwest::Client::new()
}

pub const APPLICATION_JSON: &str = "application/json";

/// A POST to the ingest endpoint, with `key` as bearer token and a `content_type`, each if
/// given; to finish with a body.
pub fn ingest(
    base: &str,
    key: Option<&str>,
    content_type: Option<&str>,
) -> reqwest::RequestBuilder {
    let mut request = client().post(format!("{base}/v1/incidents"));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    request
}

/// Posts `body` as it is to the ingest endpoint (see `ingest`).
pub async fn post_raw(
    base: &str,
    key: Option<&str>,
    content_type: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    ingest(base, key, content_type)
        .body(body)
        .send()
        .await
        .unwrap()
}

/// Posts `body` as JSON with the source's key.
pub async fn post_incident(base: &str, body: &Value) -> reqwest::Response {
    post_raw(
        base,
        Some(SOURCE_KEY),
        Some(APPLICATION_JSON),
        body.to_string(),
    )
    .await
}

/// Posts `body` as JSON to the ingest endpoint with `key` (another source's than the usual).
pub async fn post_as(base: &str, key: &str, body: &Value) -> reqwest::Response {
    post_raw(base, Some(key), Some(APPLICATION_JSON), body.to_string()).await
}

/// Posts `body` as JSON to the ingest endpoint at `url` through `client`, with the source's key.
pub async fn post_incident_via(
    client: &reqwest::Client,
    url: &str,
    body: &Value,
) -> reqwest::Response {
    client
        .post(url)
        .bearer_auth(SOURCE_KEY)
        .json(body)
        .send()
        .await
        .unwrap()
}

/// Posts a completion (`body`, JSON) of `incident` to the back channel, with `token` as bearer
/// if given.
pub async fn complete(
    base: &str,
    incident: &str,
    token: Option<&str>,
    body: &str,
) -> reqwest::Response {
    let mut r = client()
        .post(format!("{base}/v1/incidents/{incident}/complete"))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    r.send().await.unwrap()
}

/// Posts an incident and reads the answer as JSON (whatever its status).
pub async fn post_json(base: &str, body: &Value) -> Value {
    post_incident(base, body).await.json().await.unwrap()
}

/// Posts an incident, checks it was accepted (202), and reads the answer.
pub async fn accepted(base: &str, body: &Value) -> Value {
    let r = post_incident(base, body).await;
    assert_eq!(r.status(), 202);
    r.json().await.unwrap()
}

/// Checks `r` is a problem+json answer with `status`, and reads the problem.
pub async fn problem(r: reqwest::Response, status: u16) -> Value {
    assert_eq!(r.status().as_u16(), status);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    r.json().await.unwrap()
}

/// The `key` of each object of the array `list`, as text.
pub fn pluck<'a>(list: &'a Value, key: &str) -> Vec<&'a str> {
    list.as_array()
        .unwrap_or_else(|| panic!("not an array: {list}"))
        .iter()
        .map(|o| o[key].as_str().unwrap())
        .collect()
}

/// The id of the first delivery in an ingest answer.
pub fn first_delivery(accepted: &Value) -> String {
    accepted["deliveries"][0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no delivery in {accepted}"))
        .to_string()
}

/// An admin request (with the admin token) to `path`.
pub async fn admin(method: reqwest::Method, base: &str, path: &str) -> reqwest::Response {
    client()
        .request(method, format!("{base}{path}"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
}

/// `GET /v1/connectors`: the generation in force and every connector's state.
pub async fn connectors(base: &str) -> Value {
    let r = admin(reqwest::Method::GET, base, "/v1/connectors").await;
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// The state of connector `name` in a `GET /v1/connectors` answer.
pub fn connector<'a>(list: &'a Value, name: &str) -> &'a Value {
    list["connectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {list}"))
}

pub async fn admin_post(base: &str, path: &str) -> reqwest::Response {
    admin(reqwest::Method::POST, base, path).await
}

/// The status `/healthz` answers with.
pub async fn health(base: &str) -> u16 {
    client()
        .get(format!("{base}/healthz"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

pub async fn admin_get(base: &str, path: &str) -> (u16, Value) {
    let r = admin(reqwest::Method::GET, base, path).await;
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// `GET url` through `client` with `token` as bearer (an error where no HTTP answer came).
pub async fn get_as(
    client: &reqwest::Client,
    url: &str,
    token: &str,
) -> reqwest::Result<reqwest::Response> {
    client.get(url).bearer_auth(token).send().await
}

/// The delivery's admin view, once `done` holds for it (None after `within`).
pub async fn delivery_when(
    base: &str,
    id: &str,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> Option<Value> {
    eventually(within, || async {
        let (_, v) = admin_get(base, &format!("/v1/deliveries/{id}")).await;
        done(&v).then_some(v)
    })
    .await
}

/// The delivery once its status is one of `states`.
pub async fn settled(base: &str, id: &str, states: &[&str], within: Duration) -> Value {
    delivery_when(base, id, within, |d| {
        states.contains(&d["status"].as_str().unwrap_or(""))
    })
    .await
    .unwrap_or_else(|| panic!("delivery {id} did not reach {states:?} within {within:?}"))
}

/// The delivery once it has at least `n` attempts recorded.
pub async fn attempted(base: &str, id: &str, n: u64, within: Duration) -> Value {
    delivery_when(base, id, within, |d| d["attempt_count"].as_u64() >= Some(n))
        .await
        .unwrap_or_else(|| panic!("delivery {id} did not have {n} attempts within {within:?}"))
}

/// The deliveries `/v1/deliveries?{query}` lists, once `done` holds for the list (None after
/// `within`).
pub async fn listed_when(
    base: &str,
    query: &str,
    within: Duration,
    done: impl Fn(&[Value]) -> bool,
) -> Option<Vec<Value>> {
    eventually(within, || async {
        let (_, v) = admin_get(base, &format!("/v1/deliveries?{query}")).await;
        let list = v["deliveries"].as_array()?;
        done(list).then(|| list.clone())
    })
    .await
}

/// What `read` returns once it holds at least `n` items; after `within`, whatever it holds.
pub async fn at_least<T>(n: usize, within: Duration, read: impl Fn() -> Vec<T>) -> Vec<T> {
    eventually(within, || {
        let got = read();
        async move { (got.len() >= n).then_some(got) }
    })
    .await
    .unwrap_or_else(read)
}

/// Polls `f` until it returns Some, for at most `within`.
pub async fn eventually<T, F, Fut>(within: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
