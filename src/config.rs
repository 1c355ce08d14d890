//! Configuration: the TOML file admins write, `${VAR}` expansion, and validation at load.
//!
//! Everything is checked once here (paths resolved, regexes compiled, templates present,
//! names unique) so the rest of the gateway can trust a [`Config`] without re-checking it.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::model::{Event, ThreatRating};
use crate::route::Matcher;

/// Why a configuration could not be loaded. Every variant names the file, and where it can,
/// the line or the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Parse { file: PathBuf, message: String },
    #[error("{file}: {}{field}: {message}", line.map(|l| format!("line {l}: ")).unwrap_or_default())]
    Invalid {
        file: PathBuf,
        /// Where the field is written, when it is written at all.
        line: Option<usize>,
        field: String,
        message: String,
    },
}

/// The whole gateway configuration, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was loaded from (for messages) and the folder relative paths start in.
    pub file: PathBuf,
    pub base_dir: PathBuf,
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub delivery: DeliveryConfig,
    pub sources: Vec<SourceConfig>,
    pub connectors: Vec<ConnectorConfig>,
    /// Folder of partial templates shared by every connector.
    pub partials_dir: Option<PathBuf>,
    /// Every value that came from an environment variable: masked wherever text leaves the
    /// gateway (render output, logs of errors, attempt records).
    pub secrets: Secrets,
}

#[derive(Clone)]
pub struct ServerConfig {
    pub listen: String,
    pub admin_token: Option<String>,
    pub max_body_bytes: usize,
    /// Request bodies held at once across all connections, in bytes (503 beyond it).
    pub max_body_bytes_in_flight: usize,
    pub max_batch: usize,
    /// How long shutdown waits for in-flight sends before giving up on them (they are retried
    /// after restart: the lease is released).
    pub shutdown_grace: Duration,
    /// Connections held at once; more are closed on accept (after shedding the connection
    /// that has waited longest for a request, if any is waiting).
    pub max_connections: usize,
    /// Connections one client address (an IPv6 client by its /64) may hold at once.
    pub max_connections_per_client: usize,
    /// Slots, out of `max_connections`, kept for the admin API when it shares the listener.
    pub admin_reserved_connections: usize,
    /// How long a keep-alive connection may wait for its next request while the listener is
    /// at most half full (shrinks to 1 s as its slots fill).
    pub idle_timeout: Duration,
    /// How long a client may take to send its request headers.
    pub header_read_timeout: Duration,
    /// How long a client may take to send its request body (408 after).
    pub body_read_timeout: Duration,
    /// Deepest nesting of arrays and objects an incident may have.
    pub max_json_depth: usize,
    /// Longest string (in characters) any field may hold.
    pub max_string_chars: usize,
    /// Serve the admin API here, apart from the ingress (e.g. loopback only).
    pub admin_listen: Option<String>,
    /// TLS for the ingress listener.
    pub tls: Option<TlsFiles>,
    /// TLS for the admin listener (`admin_listen`): its own files, else those of `tls`;
    /// `None` serves it as plain HTTP.
    pub admin_tls: Option<TlsFiles>,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("listen", &self.listen)
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "********"),
            )
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_batch", &self.max_batch)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub enum StorageConfig {
    Sqlite { path: PathBuf },
}

#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Deliveries sent at once across all connectors.
    pub concurrency: usize,
    /// How long a worker holds a delivery before another may take it. The worker renews it
    /// every third of this while the attempt runs, so only a dead or stalled process loses it.
    pub lease: Duration,
    /// How long one delivery's render may take (templates and helpers); past it the delivery
    /// is dead with that reason (the same input would cost the same again).
    pub render_budget: Duration,
    /// Renders run on this many blocking threads at most, off the async runtime, so the
    /// listener and `/healthz` keep answering however costly a render is.
    pub render_threads: usize,
}

#[derive(Clone)]
pub struct SourceConfig {
    pub name: String,
    /// Bearer key; a source with a signing secret may do without one.
    pub api_key: Option<String>,
    /// Bearer token for `POST /v1/incidents/{id}/complete` on this source's incidents.
    pub callback_token: Option<String>,
    /// When set, every request must carry a valid Standard Webhooks signature by it.
    pub signing_secret: Option<crate::signature::WebhookSecret>,
    pub rate_limit: Option<RateLimit>,
}

/// A token bucket: `per_second` on average, bursts of up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: u32,
}

impl std::fmt::Debug for SourceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceConfig")
            .field("name", &self.name)
            .field("api_key", &"********")
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectorKind {
    Http,
    Smtp,
}

/// Debug shows what identifies a connector, never its headers, vars, tokens or secrets.
impl std::fmt::Debug for ConnectorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectorConfig")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("template", &self.template.as_written)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
pub struct ConnectorConfig {
    pub name: String,
    pub kind: ConnectorKind,
    pub method: reqwest::Method,
    /// A Handlebars template; interpolated values are percent-encoded.
    pub url: String,
    /// Body template, as given (for messages) and resolved against the config folder.
    pub template: TemplatePath,
    /// Header name → value template.
    pub headers: BTreeMap<String, String>,
    pub timeout: Duration,
    /// Sends to this connector at once (at most `delivery.concurrency`).
    pub concurrency: usize,
    pub retry: RetryPolicy,
    pub matchers: Vec<Matcher>,
    pub min_threat_rating: Option<ThreatRating>,
    /// Threat rating (`critical` … `info`, or `default`) → the target's priority, for the
    /// `priority` helper.
    pub priorities: BTreeMap<String, serde_json::Value>,
    /// Connector-specific values templates read as `connector.vars.NAME` (a PagerDuty
    /// routing key, a Jira project key). `${ENV}` values are secrets: masked in `render`.
    pub vars: BTreeMap<String, String>,
    /// A JSON Schema of the target's request body; `check` validates every render against it.
    pub target_schema: Option<PathBuf>,
    /// The request each event sends, `None` where the connector skips that event. The
    /// connector's own `method`/`url`/`template`/`headers` above are the default request.
    pub requests: EventRequests,
    /// Template of the key that groups incidents into one ticket (default `{{incidentId}}`).
    pub correlation_key: String,
    /// How long a ticket takes further incidents with its key; `None`: until it is completed.
    pub aggregate_for: Option<Duration>,
    /// JSON pointers into the `created` response: the ticket's id (and link).
    pub ticket_id: Option<String>,
    pub ticket_url: Option<String>,
    /// Bearer token the target uses to call `POST /v1/incidents/{id}/complete`.
    pub callback_token: Option<String>,
    /// The detection platform's own API: gets only `completed`, for every incident completed
    /// through the gateway.
    pub upstream: bool,
    /// Set for `kind = "smtp"`.
    pub smtp: Option<SmtpConfig>,
    /// How requests are signed for the receiver.
    pub signing: crate::signature::Signing,
    /// Where requests may go (see [`Egress`]).
    pub egress: Egress,
}

/// Where an HTTP connector may send, checked after the URL is rendered and again on the
/// addresses actually connected to.
#[derive(Debug, Clone)]
pub struct Egress {
    /// Host names (exact, or `*.example.com` for subdomains); empty = any.
    pub allow_hosts: Vec<String>,
    /// Loopback and private ranges (ticketing systems often live there). Link-local and cloud
    /// metadata addresses are refused whatever this says.
    pub allow_private: bool,
    /// Redirects followed (0: none).
    pub follow_redirects: usize,
    /// Extra CA certificate (PEM) to trust.
    pub tls_ca_file: Option<PathBuf>,
}

/// How an SMTP connector reaches its server and whom it writes to.
#[derive(Clone)]
pub struct SmtpConfig {
    pub security: SmtpSecurity,
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    /// The sender, a mailbox (`Name <addr>`); its domain names Message-IDs.
    pub from: String,
    /// Recipient templates (each renders to one mailbox).
    pub to: Vec<String>,
    pub cc: Vec<String>,
    /// Template of a tag every subject keeps (e.g. `[{{humanFriendlyId}}]`), so bridges that
    /// thread by subject find the ticket.
    pub subject_tag: Option<String>,
    /// Extra CA certificate (PEM) to trust for TLS.
    pub tls_ca_file: Option<PathBuf>,
    /// `smtp://` (no TLS) with a username sends the password in clear: refused at load
    /// unless this is set.
    pub allow_plaintext_auth: bool,
}

impl std::fmt::Debug for SmtpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpConfig")
            .field("security", &self.security)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "********"))
            .field("from", &self.from)
            .field("to", &self.to)
            .field("allow_plaintext_auth", &self.allow_plaintext_auth)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpSecurity {
    /// `smtp://`: no TLS (a relay on a trusted network, or tests).
    Plain,
    /// `smtp+starttls://`: STARTTLS required.
    StartTls,
    /// `smtps://`: TLS from the first byte.
    Tls,
}

/// One request per event: created, updated, completed.
#[derive(Debug, Clone)]
pub struct EventRequests {
    pub created: Option<RequestConfig>,
    pub updated: Option<RequestConfig>,
    pub completed: Option<RequestConfig>,
}

impl std::fmt::Debug for RequestConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestConfig")
            .field("method", &self.method)
            .field("template", &self.template.as_written)
            .finish_non_exhaustive()
    }
}

/// A request a connector sends for one event.
#[derive(Clone)]
pub struct RequestConfig {
    pub method: reqwest::Method,
    /// A Handlebars template; interpolated values are percent-encoded.
    pub url: String,
    pub template: TemplatePath,
    /// The connector's headers, then the request's own (which win).
    pub headers: BTreeMap<String, String>,
    /// SMTP: the subject template, and an optional HTML body beside `template` (the text).
    pub subject: String,
    pub html_template: Option<TemplatePath>,
    /// The target's schema of this request's body, when it differs from the connector's.
    pub target_schema: Option<PathBuf>,
}

impl crate::route::Routed for ConnectorConfig {
    fn upstream(&self) -> bool {
        self.upstream
    }
    fn min_threat_rating(&self) -> Option<ThreatRating> {
        self.min_threat_rating
    }
    fn matchers(&self) -> &[Matcher] {
        &self.matchers
    }
}

impl ConnectorConfig {
    /// The request this connector sends for `event`, or `None` when it skips the event.
    pub fn request(&self, event: Event) -> Option<&RequestConfig> {
        match event {
            Event::Created => self.requests.created.as_ref(),
            Event::Updated => self.requests.updated.as_ref(),
            Event::Completed => self.requests.completed.as_ref(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct TemplatePath {
    pub as_written: String,
    pub resolved: PathBuf,
}

/// When to try a failed delivery again, and when to give up.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// The wait after each failed attempt: `schedule[0]` after the first, and so on. A delivery
    /// is tried at most `schedule.len() + 1` times.
    pub schedule: Vec<Duration>,
    /// A delivery older than this (since it was queued or last replayed) goes dead.
    pub max_age: Duration,
}

/// The default retry schedule: it spans a day, so a target down for a maintenance window (or
/// a night) gets its deliveries when it is back, as Svix's schedule does. README.md shows it
/// as a table (a test compares the two).
pub const DEFAULT_RETRY_SCHEDULE: [Duration; 12] = [
    Duration::from_secs(5),
    Duration::from_secs(30),
    Duration::from_secs(2 * 60),
    Duration::from_secs(5 * 60),
    Duration::from_secs(15 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(3600),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(3 * 3600),
    Duration::from_secs(4 * 3600),
    Duration::from_secs(6 * 3600),
    Duration::from_secs(7 * 3600),
];

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            schedule: DEFAULT_RETRY_SCHEDULE.to_vec(),
            max_age: Duration::from_secs(24 * 3600),
        }
    }
}

impl RetryPolicy {
    /// The most attempts a delivery gets.
    pub fn max_attempts(&self) -> u32 {
        u32::try_from(self.schedule.len())
            .unwrap_or(u32::MAX)
            .saturating_add(1)
    }

    /// `initial` doubling up to `max`, for `max_attempts` attempts in all.
    pub fn exponential(initial: Duration, max: Duration, max_attempts: u32) -> Vec<Duration> {
        (0..max_attempts.saturating_sub(1))
            .map(|n| initial.saturating_mul(1u32 << n.min(30)).min(max))
            .collect()
    }
}

pub use crate::secrets::Secrets;

/// Header names that carry credentials: their values are masked wherever they are shown.
pub fn is_credential_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n == "authorization"
        || n == "proxy-authorization"
        || n == "cookie"
        || n.contains("token")
        || n.contains("secret")
        || n.contains("api-key")
        || n.contains("apikey")
        || n.contains("password")
}

// ---------------------------------------------------------------------------------------------
// The file as written. Strings that may hold `${VAR}` are `EnvString`s: they expand while the
// file is parsed, so an unset variable is reported with the line it is on.

/// Looks a variable up in the environment of the current load.
type EnvLookup = Box<dyn Fn(&str) -> Option<String>>;

thread_local! {
    /// Values expanded from the environment during the current load (collected as secrets).
    static EXPANDED: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    /// The environment lookup for the current load (tests pass their own).
    static ENV_LOOKUP: RefCell<Option<EnvLookup>> = const { RefCell::new(None) };
}

#[derive(Clone)]
struct EnvString(String);

impl std::fmt::Debug for EnvString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EnvString(********)")
    }
}

impl<'de> Deserialize<'de> for EnvString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        expand_env(&raw)
            .map(EnvString)
            .map_err(serde::de::Error::custom)
    }
}

/// A string that is then compiled as a template (URLs, header values, vars): a value from the
/// environment must not smuggle template code into it.
#[derive(Clone)]
struct EnvTemplate(String);

impl std::fmt::Debug for EnvTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EnvTemplate(********)")
    }
}

impl<'de> Deserialize<'de> for EnvTemplate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        let expanded = expand_env(&raw).map_err(serde::de::Error::custom)?;
        if expanded.matches("{{").count() > raw.matches("{{").count() {
            return Err(serde::de::Error::custom(
                "a value from the environment contains `{{`, which would be read as template code",
            ));
        }
        Ok(EnvTemplate(expanded))
    }
}

/// Expands `${VAR}` and `${VAR:-default}`; `$$` is a literal `$`.
fn expand_env(raw: &str) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| format!("unclosed `${{` in {raw:?}"))?;
            let spec = &body[..end];
            if let Some(path) = spec.strip_prefix("file:") {
                // A secret kept in a file (Docker/Kubernetes secrets): its content, without the
                // final line break.
                let text = std::fs::read_to_string(path.trim()).map_err(|e| {
                    format!("cannot read the file named by `${{file:{path}}}`: {e}")
                })?;
                let value = text.trim_end_matches(['\r', '\n']).to_string();
                EXPANDED.with(|e| e.borrow_mut().push(value.clone()));
                out.push_str(&value);
                rest = &body[end + 1..];
                continue;
            }
            let (name, default) = match spec.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (spec, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("`${{{spec}}}` is not a valid variable name"));
            }
            let value = ENV_LOOKUP.with(|lookup| match &*lookup.borrow() {
                Some(f) => f(name),
                None => std::env::var(name).ok(),
            });
            let value = match (value, default) {
                (Some(v), _) if !v.is_empty() => {
                    // Values from the environment are secrets; defaults written in the file
                    // are not (they are on view in the file anyway).
                    EXPANDED.with(|e| e.borrow_mut().push(v.clone()));
                    v
                }
                (_, Some(d)) => d.to_string(),
                (Some(v), None) => v,
                (None, None) => {
                    return Err(format!("environment variable {name} is not set"));
                }
            };
            out.push_str(&value);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    storage: RawStorage,
    #[serde(default)]
    delivery: RawDelivery,
    #[serde(default)]
    sources: Vec<RawSource>,
    #[serde(default)]
    connectors: Vec<RawConnector>,
    #[serde(default)]
    templates: RawTemplates,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTemplates {
    /// Partials folder; default `templates/partials` beside the config file, when it exists.
    partials: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    #[serde(default = "default_listen")]
    listen: EnvString,
    admin_token: Option<EnvString>,
    #[serde(default = "default_max_body")]
    max_body_bytes: usize,
    /// Default: 64 × `max_body_bytes`.
    max_body_bytes_in_flight: Option<usize>,
    #[serde(default = "default_max_batch")]
    max_batch: usize,
    #[serde(default = "default_grace", with = "humantime_serde")]
    shutdown_grace: Duration,
    #[serde(default = "default_max_connections")]
    max_connections: usize,
    #[serde(default = "default_max_connections_per_client")]
    max_connections_per_client: usize,
    /// Default: 16, or an eighth of `max_connections` when that is less.
    admin_reserved_connections: Option<usize>,
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    idle_timeout: Duration,
    #[serde(default = "default_read_timeout", with = "humantime_serde")]
    header_read_timeout: Duration,
    #[serde(default = "default_read_timeout", with = "humantime_serde")]
    body_read_timeout: Duration,
    #[serde(default = "default_json_depth")]
    max_json_depth: usize,
    #[serde(default = "default_string_chars")]
    max_string_chars: usize,
    admin_listen: Option<EnvString>,
    admin_token_file: Option<String>,
    tls: Option<RawTls>,
    admin_tls: Option<RawAdminTls>,
}

/// `admin_tls = { cert, key }`, or `false` for plain HTTP (`true`: the `tls` files, the
/// default when `tls` is set).
#[derive(Deserialize)]
#[serde(untagged)]
enum RawAdminTls {
    Enabled(bool),
    Files(RawTls),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: String,
    key: String,
}

fn default_json_depth() -> usize {
    64
}
fn default_string_chars() -> usize {
    256 * 1024
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: default_listen(),
            admin_token: None,
            max_body_bytes: default_max_body(),
            max_body_bytes_in_flight: None,
            max_batch: default_max_batch(),
            shutdown_grace: default_grace(),
            max_connections: default_max_connections(),
            max_connections_per_client: default_max_connections_per_client(),
            admin_reserved_connections: None,
            idle_timeout: default_idle_timeout(),
            header_read_timeout: default_read_timeout(),
            body_read_timeout: default_read_timeout(),
            max_json_depth: default_json_depth(),
            max_string_chars: default_string_chars(),
            admin_listen: None,
            admin_token_file: None,
            tls: None,
            admin_tls: None,
        }
    }
}

fn default_max_connections() -> usize {
    1024
}
fn default_max_connections_per_client() -> usize {
    64
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_read_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_listen() -> EnvString {
    EnvString("127.0.0.1:8080".into())
}
fn default_max_body() -> usize {
    1024 * 1024
}
fn default_max_batch() -> usize {
    100
}
fn default_grace() -> Duration {
    Duration::from_secs(10)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    url: EnvString,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDelivery {
    #[serde(default = "default_concurrency")]
    concurrency: usize,
    #[serde(default = "default_lease", with = "humantime_serde")]
    lease: Duration,
    #[serde(default = "default_render_budget", with = "humantime_serde")]
    render_budget: Duration,
    render_threads: Option<usize>,
}

impl Default for RawDelivery {
    fn default() -> Self {
        RawDelivery {
            concurrency: default_concurrency(),
            lease: default_lease(),
            render_budget: default_render_budget(),
            render_threads: None,
        }
    }
}

fn default_render_budget() -> Duration {
    Duration::from_secs(5)
}

/// Half the cores (at least one): renders never take every core from the listener.
fn default_render_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

fn default_concurrency() -> usize {
    32
}
fn default_lease() -> Duration {
    Duration::from_secs(120)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    name: String,
    api_key: Option<EnvString>,
    api_key_file: Option<String>,
    callback_token: Option<EnvString>,
    /// Standard Webhooks secret (`whsec_…`): requests must carry a valid signature.
    signing_secret: Option<EnvString>,
    rate_limit: Option<RawRateLimit>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    per_second: f64,
    burst: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConnector {
    name: String,
    kind: String,
    url: Option<EnvTemplate>,
    #[serde(default = "default_method")]
    method: String,
    template: String,
    // SMTP
    smtp_url: Option<EnvString>,
    username: Option<EnvString>,
    password: Option<EnvString>,
    password_file: Option<String>,
    from: Option<String>,
    #[serde(default)]
    to: Vec<String>,
    #[serde(default)]
    cc: Vec<String>,
    subject: Option<String>,
    subject_tag: Option<String>,
    html_template: Option<String>,
    tls_ca_file: Option<String>,
    #[serde(default)]
    allow_plaintext_auth: bool,
    #[serde(default)]
    headers: BTreeMap<String, EnvTemplate>,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    timeout: Duration,
    concurrency: Option<usize>,
    #[serde(default)]
    retry: RawRetry,
    #[serde(default)]
    matchers: Vec<RawMatcher>,
    min_threat_rating: Option<String>,
    #[serde(default)]
    priorities: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    vars: BTreeMap<String, EnvTemplate>,
    target_schema: Option<String>,
    #[serde(default)]
    requests: BTreeMap<String, RawRequest>,
    correlation_key: Option<String>,
    #[serde(default, with = "humantime_serde")]
    aggregate_for: Option<Duration>,
    ticket_id: Option<String>,
    ticket_url: Option<String>,
    callback_token: Option<EnvString>,
    #[serde(default)]
    upstream: bool,
    signing: Option<RawSigning>,
    #[serde(default)]
    allow_hosts: Vec<String>,
    #[serde(default = "default_true")]
    allow_private: bool,
    #[serde(default)]
    follow_redirects: usize,
}

fn default_true() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSigning {
    /// Standard Webhooks secrets (`whsec_…`); several sign at once during a rotation.
    #[serde(default)]
    standard_webhooks: Vec<EnvString>,
    /// A GitHub-style `X-Hub-Signature-256` secret.
    github_secret: Option<EnvString>,
}

/// A per-event request; what it leaves out comes from the connector.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequest {
    method: Option<String>,
    url: Option<EnvTemplate>,
    template: Option<String>,
    subject: Option<String>,
    html_template: Option<String>,
    target_schema: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, EnvTemplate>,
    /// Send nothing for this event.
    #[serde(default)]
    skip: bool,
}

/// The shortest lease: renewed every third of it, a renewal must have time to commit.
const MIN_LEASE: Duration = Duration::from_secs(3);

/// The most attempts a retry policy may give one delivery.
const MAX_RETRY_ATTEMPTS: u32 = 1000;

/// Sends to one connector at once, unless its config says otherwise.
const DEFAULT_CONNECTOR_CONCURRENCY: usize = 16;

fn default_method() -> String {
    "POST".into()
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    /// Durations as written ("5s", "2h"): the wait after each failed attempt.
    #[serde(default)]
    schedule: Option<Vec<humantime_serde::Serde<Duration>>>,
    max_attempts: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    initial_backoff: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    max_backoff: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    max_age: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatcher {
    /// JSON pointer into the incident, e.g. `/incident/threatRating`.
    field: String,
    equals: Option<String>,
    not_equals: Option<String>,
    one_of: Option<Vec<String>>,
    not_one_of: Option<Vec<String>>,
    regex: Option<String>,
    not_regex: Option<String>,
}

// ---------------------------------------------------------------------------------------------

impl Config {
    /// Reads, expands and validates a configuration file.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        Self::load_with_env(file, |name| std::env::var(name).ok())
    }

    /// As [`Config::load`], with an explicit environment (for tests and `check`).
    pub fn load_with_env(
        file: &Path,
        env: impl Fn(&str) -> Option<String> + 'static,
    ) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            file: file.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, file, env)
    }

    /// Parses configuration text as if it had been read from `file`.
    pub fn from_toml(
        text: &str,
        file: &Path,
        env: impl Fn(&str) -> Option<String> + 'static,
    ) -> Result<Config, ConfigError> {
        ENV_LOOKUP.with(|l| *l.borrow_mut() = Some(Box::new(env)));
        EXPANDED.with(|e| e.borrow_mut().clear());
        let parsed: Result<RawConfig, toml::de::Error> = toml::from_str(text);
        ENV_LOOKUP.with(|l| *l.borrow_mut() = None);
        let expanded = EXPANDED.with(|e| std::mem::take(&mut *e.borrow_mut()));
        let raw = parsed.map_err(|e| ConfigError::Parse {
            file: file.to_path_buf(),
            message: describe_toml_error(&e, text),
        })?;
        let base_dir = file
            .parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    p.to_path_buf()
                }
            })
            .unwrap_or_else(|| PathBuf::from("."));
        Validator {
            file: file.to_path_buf(),
            base_dir,
            text: text.to_string(),
        }
        .validate(raw, expanded)
    }

    pub fn connector(&self, name: &str) -> Option<&ConnectorConfig> {
        self.connectors.iter().find(|c| c.name == name)
    }
}

fn describe_toml_error(e: &toml::de::Error, text: &str) -> String {
    let message = e.message().trim().to_string();
    let Some(span) = e.span() else {
        return message;
    };
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count() + 1)
        .unwrap_or(1);
    match field_at(text, line) {
        Some(field) => format!("line {line}, column {column}: {field}: {message}"),
        None => format!("line {line}, column {column}: {message}"),
    }
}

/// The dotted name of the key written on `line` (1-based), from the table header above it
/// and the key before `=`: `server.max_body_bytes`. Values are never quoted back, so a
/// secret written in the file does not end up in the message.
fn field_at(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let current = lines.get(line.checked_sub(1)?)?;
    let key = current
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"'))?;
    let table = lines[..line - 1].iter().rev().find_map(|l| {
        let l = l.trim();
        l.starts_with('[').then(|| {
            l.trim_start_matches('[')
                .trim_end_matches(']')
                .trim()
                .to_string()
        })
    });
    Some(match table {
        Some(t) => format!("{t}.{key}"),
        None => key.to_string(),
    })
}

struct Validator {
    file: PathBuf,
    base_dir: PathBuf,
    text: String,
}

/// The line (1-based) where a field such as `connectors[1].matchers[0].regex` is written:
/// the key's line inside the right `[[table]]`, or the table's header when the key is not
/// written there (a default, or an inline value).
fn locate(text: &str, field: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let mut parts: Vec<&str> = field.split('.').collect();
    let key = parts.pop()?;
    let (mut from, mut to) = (0usize, lines.len());
    let mut table = String::new();
    let mut found_table = false;
    for part in parts.iter().chain(std::iter::once(&key)) {
        let (name, index) = match part.split_once('[') {
            Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (*part, None),
        };
        let path = if table.is_empty() {
            name.to_string()
        } else {
            format!("{table}.{name}")
        };
        let header_line = |l: &str| {
            let t = l.trim();
            match index {
                Some(_) => {
                    t.starts_with("[[")
                        && t.trim_start_matches("[[").trim_end_matches("]]").trim() == path
                }
                None => {
                    !t.starts_with("[[")
                        && t.starts_with('[')
                        && t.trim_start_matches('[').trim_end_matches(']').trim() == path
                }
            }
        };
        let headers: Vec<usize> = (from..to).filter(|&i| header_line(lines[i])).collect();
        let chosen = match index {
            Some(i) => headers.get(i).copied(),
            None => headers.first().copied(),
        };
        match chosen {
            Some(h) => {
                from = h;
                // The table runs until the next header that is not one of its sub-tables.
                to = (h + 1..to)
                    .find(|&i| {
                        let t = lines[i].trim();
                        t.starts_with('[')
                            && !t.trim_start_matches('[').starts_with(&format!("{path}."))
                    })
                    .unwrap_or(to);
                table = path;
                found_table = true;
            }
            None if std::ptr::eq(part, &key) || *part == key => {
                // The last part is a key, not a table: find `key =` in the current table.
                let own =
                    (from..to).take_while(|&i| i == from || !lines[i].trim().starts_with('['));
                for i in own {
                    let t = lines[i].trim();
                    let k = t.split('=').next().unwrap_or("").trim().trim_matches('"');
                    if t.contains('=') && k == name {
                        return Some(i + 1);
                    }
                }
                return found_table.then_some(from + 1);
            }
            None => return found_table.then_some(from + 1),
        }
    }
    found_table.then_some(from + 1)
}

impl Validator {
    fn invalid(&self, field: impl Into<String>, message: impl Into<String>) -> ConfigError {
        let field = field.into();
        ConfigError::Invalid {
            line: locate(&self.text, &field),
            file: self.file.clone(),
            field,
            message: message.into(),
        }
    }

    /// The admin listener's TLS: its own files, else those of `[server.tls]`, unless
    /// `admin_tls = false` (plain HTTP, allowed only on a loopback address).
    fn admin_tls(
        &self,
        raw: Option<RawAdminTls>,
        tls: Option<&TlsFiles>,
        admin_listen: Option<&str>,
    ) -> Result<Option<TlsFiles>, ConfigError> {
        const FIELD: &str = "server.admin_tls";
        let Some(listen) = admin_listen else {
            return match raw {
                None => Ok(None),
                Some(_) => Err(self.invalid(
                    FIELD,
                    "needs admin_listen; on the shared listener the admin API uses [server.tls]",
                )),
            };
        };
        match raw {
            None => Ok(tls.cloned()),
            Some(RawAdminTls::Enabled(true)) => match tls {
                Some(files) => Ok(Some(files.clone())),
                None => Err(self.invalid(
                    FIELD,
                    "true reuses [server.tls], which is not set; give { cert, key }",
                )),
            },
            Some(RawAdminTls::Enabled(false)) => {
                // An address that does not parse is reported under admin_listen.
                let loopback = listen
                    .parse::<std::net::SocketAddr>()
                    .ok()
                    .is_none_or(|a| a.ip().is_loopback());
                if loopback {
                    Ok(None)
                } else {
                    Err(self.invalid(
                        FIELD,
                        "false (plain HTTP) is allowed only when admin_listen is a loopback address: the admin token would cross the network in clear",
                    ))
                }
            }
            Some(RawAdminTls::Files(t)) => {
                let cert = self.existing_file("server.admin_tls.cert", &t.cert)?;
                let key = self.existing_file("server.admin_tls.key", &t.key)?;
                Ok(Some(TlsFiles { cert, key }))
            }
        }
    }

    fn resolve(&self, path: &str) -> PathBuf {
        let p = Path::new(path);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    fn validate(&self, raw: RawConfig, expanded: Vec<String>) -> Result<Config, ConfigError> {
        let tls = match raw.server.tls {
            None => None,
            Some(t) => {
                let cert = self.existing_file("server.tls.cert", &t.cert)?;
                let key = self.existing_file("server.tls.key", &t.key)?;
                Some(TlsFiles { cert, key })
            }
        };
        let admin_tls = self.admin_tls(
            raw.server.admin_tls,
            tls.as_ref(),
            raw.server.admin_listen.as_ref().map(|a| a.0.as_str()),
        )?;
        let max_connections = raw.server.max_connections;
        let admin_reserved_connections = match raw.server.admin_reserved_connections {
            Some(n) if n >= max_connections => {
                return Err(self.invalid(
                    "server.admin_reserved_connections",
                    "must be less than max_connections",
                ));
            }
            Some(n) => n,
            None => 16.min(max_connections / 8),
        };
        let server = ServerConfig {
            listen: raw.server.listen.0,
            admin_token: raw.server.admin_token.map(|t| t.0),
            max_body_bytes: raw.server.max_body_bytes,
            max_body_bytes_in_flight: raw
                .server
                .max_body_bytes_in_flight
                .unwrap_or(raw.server.max_body_bytes.saturating_mul(64)),
            max_batch: raw.server.max_batch,
            shutdown_grace: raw.server.shutdown_grace,
            max_connections,
            max_connections_per_client: raw.server.max_connections_per_client,
            admin_reserved_connections,
            idle_timeout: raw.server.idle_timeout,
            header_read_timeout: raw.server.header_read_timeout,
            body_read_timeout: raw.server.body_read_timeout,
            max_json_depth: raw.server.max_json_depth,
            max_string_chars: raw.server.max_string_chars,
            admin_listen: raw.server.admin_listen.map(|a| a.0),
            tls,
            admin_tls,
        };
        let mut server = server;
        if let Some(file) = &raw.server.admin_token_file {
            if server.admin_token.is_some() {
                return Err(self.invalid(
                    "server.admin_token_file",
                    "give admin_token or admin_token_file, not both",
                ));
            }
            server.admin_token = Some(self.read_secret_file("server.admin_token_file", file)?);
        }
        if let Some(a) = &server.admin_listen
            && a.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(self.invalid(
                "server.admin_listen",
                format!("{a:?} is not an address like 127.0.0.1:9091"),
            ));
        }
        if !(4..=128).contains(&server.max_json_depth) {
            // 128 is the JSON parser's own limit.
            return Err(self.invalid("server.max_json_depth", "must be from 4 to 128"));
        }
        if server.max_connections == 0 {
            return Err(self.invalid("server.max_connections", "must be at least 1"));
        }
        if server.max_connections_per_client == 0 {
            return Err(self.invalid("server.max_connections_per_client", "must be at least 1"));
        }
        if server.idle_timeout.is_zero() {
            return Err(self.invalid("server.idle_timeout", "must be more than 0"));
        }
        if server.header_read_timeout.is_zero() || server.body_read_timeout.is_zero() {
            return Err(self.invalid(
                "server.header_read_timeout",
                "read timeouts must be more than 0",
            ));
        }
        if server.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(self.invalid(
                "server.listen",
                format!("{:?} is not an address like 127.0.0.1:8080", server.listen),
            ));
        }
        if matches!(&server.admin_token, Some(t) if t.len() < 16) {
            return Err(self.invalid(
                "server.admin_token",
                "must be at least 16 characters (or left out to disable the admin API)",
            ));
        }
        if server.max_body_bytes < 1024 {
            return Err(self.invalid("server.max_body_bytes", "must be at least 1024"));
        }
        if server.max_body_bytes_in_flight < server.max_body_bytes {
            return Err(self.invalid(
                "server.max_body_bytes_in_flight",
                "must be at least server.max_body_bytes (or no body that size could be read)",
            ));
        }
        if server.max_batch == 0 {
            return Err(self.invalid("server.max_batch", "must be at least 1"));
        }

        let storage = self.storage(&raw.storage.url.0)?;

        if raw.delivery.concurrency == 0 {
            return Err(self.invalid("delivery.concurrency", "must be at least 1"));
        }
        if raw.delivery.lease < MIN_LEASE {
            return Err(self.invalid(
                "delivery.lease",
                format!("must be at least {}", humantime::format_duration(MIN_LEASE)),
            ));
        }
        if raw.delivery.render_budget.is_zero() {
            return Err(self.invalid("delivery.render_budget", "must be more than 0"));
        }
        if raw.delivery.render_threads == Some(0) {
            return Err(self.invalid("delivery.render_threads", "must be at least 1"));
        }
        let delivery = DeliveryConfig {
            concurrency: raw.delivery.concurrency,
            lease: raw.delivery.lease,
            render_budget: raw.delivery.render_budget,
            render_threads: raw
                .delivery
                .render_threads
                .unwrap_or_else(default_render_threads),
        };

        let mut names = HashSet::new();
        let mut keys = HashSet::new();
        // Signing secrets as written, to mask them wherever they could show.
        let raw_signing_secrets: Vec<String> = raw
            .sources
            .iter()
            .filter_map(|s| s.signing_secret.as_ref().map(|x| x.0.clone()))
            .chain(raw.connectors.iter().flat_map(|c| {
                c.signing
                    .iter()
                    .flat_map(|g| {
                        g.standard_webhooks
                            .iter()
                            .map(|x| x.0.clone())
                            .chain(g.github_secret.iter().map(|x| x.0.clone()))
                    })
                    .collect::<Vec<_>>()
            }))
            .collect();
        let mut sources = Vec::new();
        for (i, s) in raw.sources.into_iter().enumerate() {
            let field = format!("sources[{i}]");
            if s.name.trim().is_empty() || !names.insert(s.name.clone()) {
                return Err(self.invalid(
                    format!("{field}.name"),
                    format!("{:?} is empty or used twice", s.name),
                ));
            }
            let api_key = match (s.api_key, &s.api_key_file) {
                (Some(_), Some(_)) => {
                    return Err(self.invalid(
                        format!("{field}.api_key_file"),
                        "give api_key or api_key_file, not both",
                    ));
                }
                (Some(k), None) => Some(k.0),
                (None, Some(file)) => {
                    Some(self.read_secret_file(&format!("{field}.api_key_file"), file)?)
                }
                (None, None) => None,
            };
            let signing_secret = match &s.signing_secret {
                Some(secret) => Some(
                    crate::signature::WebhookSecret::parse(&secret.0).map_err(|e| {
                        self.invalid(format!("{field}.signing_secret"), e.to_string())
                    })?,
                ),
                None => None,
            };
            if api_key.is_none() && signing_secret.is_none() {
                return Err(self.invalid(
                    format!("{field}.api_key"),
                    "a source needs an api_key, a signing_secret, or both",
                ));
            }
            if let Some(key) = &api_key {
                if key.len() < 16 {
                    return Err(
                        self.invalid(format!("{field}.api_key"), "must be at least 16 characters")
                    );
                }
                if !keys.insert(key.clone()) {
                    return Err(self.invalid(
                        format!("{field}.api_key"),
                        "is the same as another source's key",
                    ));
                }
                if server.admin_token.as_deref() == Some(key.as_str()) {
                    return Err(self.invalid(
                        format!("{field}.api_key"),
                        "must differ from server.admin_token",
                    ));
                }
            }
            let rate_limit = match &s.rate_limit {
                None => None,
                Some(r) if r.per_second > 0.0 && r.per_second.is_finite() => Some(RateLimit {
                    per_second: r.per_second,
                    burst: r
                        .burst
                        .unwrap_or_else(|| (r.per_second.ceil() as u32).max(1)),
                }),
                Some(_) => {
                    return Err(self.invalid(
                        format!("{field}.rate_limit.per_second"),
                        "must be more than 0",
                    ));
                }
            };
            let callback_token = s.callback_token.map(|t| t.0);
            if let Some(t) = &callback_token {
                self.check_token(&format!("{field}.callback_token"), t)?;
            }
            sources.push(SourceConfig {
                name: s.name,
                api_key,
                callback_token,
                signing_secret,
                rate_limit,
            });
        }

        let mut connector_names = HashSet::new();
        let mut connectors = Vec::new();
        for (i, c) in raw.connectors.into_iter().enumerate() {
            let field = format!("connectors[{i}]");
            if c.name.trim().is_empty()
                || !c
                    .name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
            {
                return Err(self.invalid(
                    format!("{field}.name"),
                    format!("{:?}: use letters, digits, '-', '_' or '.'", c.name),
                ));
            }
            if !connector_names.insert(c.name.clone()) {
                return Err(self.invalid(
                    format!("{field}.name"),
                    format!("{:?} is used by another connector", c.name),
                ));
            }
            let connector = self.connector(&field, c)?;
            if connector.concurrency == 0 {
                return Err(self.invalid(format!("{field}.concurrency"), "must be at least 1"));
            }
            connectors.push(connector);
        }

        let partials_dir = match raw.templates.partials {
            Some(dir) => {
                let resolved = self.resolve(&dir);
                if !resolved.is_dir() {
                    return Err(self.invalid(
                        "templates.partials",
                        format!("{} is not a folder", resolved.display()),
                    ));
                }
                Some(resolved)
            }
            None => Some(self.resolve("templates/partials")).filter(|d| d.is_dir()),
        };

        // A callback token is a credential of its own: it may not open ingest or the admin API.
        let keys_and_admin: Vec<&str> = sources
            .iter()
            .filter_map(|s| s.api_key.as_deref())
            .chain(server.admin_token.as_deref())
            .collect();
        let callback_tokens = sources
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                s.callback_token
                    .as_deref()
                    .map(|t| (format!("sources[{i}].callback_token"), t))
            })
            .chain(connectors.iter().enumerate().filter_map(|(i, c)| {
                c.callback_token
                    .as_deref()
                    .map(|t| (format!("connectors[{i}].callback_token"), t))
            }));
        for (field, token) in callback_tokens {
            if keys_and_admin.contains(&token) {
                return Err(
                    self.invalid(field, "must differ from every api_key and the admin_token")
                );
            }
        }
        // Credentials are secrets even when written in the file itself.
        let mut secret_values = expanded;
        secret_values.extend(server.admin_token.iter().cloned());
        secret_values.extend(sources.iter().filter_map(|s| s.api_key.clone()));
        for s in &raw_signing_secrets {
            secret_values.push(s.clone());
        }
        secret_values.extend(sources.iter().filter_map(|s| s.callback_token.clone()));
        secret_values.extend(connectors.iter().filter_map(|c| c.callback_token.clone()));
        secret_values.extend(
            connectors
                .iter()
                .filter_map(|c| c.smtp.as_ref().and_then(|s| s.password.clone())),
        );
        for c in &connectors {
            let request_headers = [
                &c.requests.created,
                &c.requests.updated,
                &c.requests.completed,
            ]
            .into_iter()
            .flatten()
            .flat_map(|r| r.headers.iter());
            for (name, value) in c.headers.iter().chain(request_headers) {
                if is_credential_header(name) && !value.contains("{{") {
                    secret_values.push(value.clone());
                    // "Bearer abc": the credential part alone, too.
                    if let Some((_, token)) = value.split_once(' ') {
                        secret_values.push(token.trim().to_string());
                    }
                }
            }
        }
        let secrets = Secrets::new(secret_values);

        Ok(Config {
            file: self.file.clone(),
            partials_dir,
            base_dir: self.base_dir.clone(),
            server,
            storage,
            delivery,
            sources,
            connectors,
            secrets,
        })
    }

    fn storage(&self, url: &str) -> Result<StorageConfig, ConfigError> {
        match url.strip_prefix("sqlite://") {
            Some(path) if !path.is_empty() => Ok(StorageConfig::Sqlite {
                path: self.resolve(path),
            }),
            _ => Err(self.invalid(
                "storage.url",
                format!("{url:?}: expected sqlite://PATH (relative to the config file's folder)"),
            )),
        }
    }

    fn connector(&self, field: &str, c: RawConnector) -> Result<ConnectorConfig, ConfigError> {
        let kind = match c.kind.as_str() {
            "http" => ConnectorKind::Http,
            "smtp" => ConnectorKind::Smtp,
            other => {
                return Err(self.invalid(
                    format!("{field}.kind"),
                    format!("{other:?} is not a connector kind (expected \"http\" or \"smtp\")"),
                ));
            }
        };
        let method = self.method(&format!("{field}.method"), &c.method)?;
        let smtp = match kind {
            ConnectorKind::Http => {
                for (key, set) in [
                    ("smtp_url", c.smtp_url.is_some()),
                    ("from", c.from.is_some()),
                    ("to", !c.to.is_empty()),
                    ("subject", c.subject.is_some()),
                    ("html_template", c.html_template.is_some()),
                    ("allow_plaintext_auth", c.allow_plaintext_auth),
                ] {
                    if set {
                        return Err(self.invalid(
                            format!("{field}.{key}"),
                            "is for kind = \"smtp\" connectors",
                        ));
                    }
                }
                None
            }
            ConnectorKind::Smtp => Some(self.smtp(field, &c)?),
        };
        let url = match (&c.url, &smtp) {
            (Some(u), None) => {
                self.check_url(&format!("{field}.url"), &u.0)?;
                u.0.clone()
            }
            (None, None) => {
                return Err(
                    self.invalid(format!("{field}.url"), "is required for an http connector")
                );
            }
            (Some(_), Some(_)) => {
                return Err(self.invalid(
                    format!("{field}.url"),
                    "an smtp connector takes smtp_url, not url",
                ));
            }
            (None, Some(_)) => c.smtp_url.as_ref().map(|u| u.0.clone()).unwrap_or_default(),
        };
        let template = self.template_path(&format!("{field}.template"), &c.template)?;
        let headers = self.headers(&format!("{field}.headers"), c.headers.clone())?;
        let subject = match (&smtp, &c.subject) {
            (Some(_), Some(s)) => s.clone(),
            (Some(_), None) => {
                return Err(self.invalid(
                    format!("{field}.subject"),
                    "is required for an smtp connector",
                ));
            }
            (None, _) => String::new(),
        };
        let html_template = match &c.html_template {
            Some(t) => Some(self.template_path(&format!("{field}.html_template"), t)?),
            None => None,
        };
        let default_request = RequestConfig {
            method: method.clone(),
            url: url.clone(),
            template: template.clone(),
            headers: headers.clone(),
            subject: subject.clone(),
            html_template: html_template.clone(),
            target_schema: None,
        };
        let mut requests = EventRequests {
            created: Some(default_request.clone()),
            updated: Some(default_request.clone()),
            completed: Some(default_request),
        };
        for (event, raw) in c.requests {
            let at = format!("{field}.requests.{event}");
            let slot = match event.as_str() {
                "created" => &mut requests.created,
                "updated" => &mut requests.updated,
                "completed" => &mut requests.completed,
                other => {
                    return Err(self.invalid(
                        at,
                        format!("{other:?} is not an event (created, updated, completed)"),
                    ));
                }
            };
            if raw.skip {
                *slot = None;
                continue;
            }
            let mut merged = headers.clone();
            merged.extend(self.headers(&format!("{at}.headers"), raw.headers)?);
            let url = match raw.url {
                Some(_) if smtp.is_some() => {
                    return Err(self.invalid(
                        format!("{at}.url"),
                        "an smtp connector has no per-event url",
                    ));
                }
                Some(u) => {
                    self.check_url(&format!("{at}.url"), &u.0)?;
                    u.0
                }
                None => url.clone(),
            };
            if smtp.is_none() && (raw.subject.is_some() || raw.html_template.is_some()) {
                return Err(self.invalid(at, "subject and html_template are for smtp connectors"));
            }
            *slot = Some(RequestConfig {
                method: match raw.method {
                    Some(m) => self.method(&format!("{at}.method"), &m)?,
                    None => method.clone(),
                },
                url,
                template: match raw.template {
                    Some(t) => self.template_path(&format!("{at}.template"), &t)?,
                    None => template.clone(),
                },
                headers: merged,
                subject: raw.subject.unwrap_or_else(|| subject.clone()),
                html_template: match raw.html_template {
                    Some(t) => Some(self.template_path(&format!("{at}.html_template"), &t)?),
                    None => html_template.clone(),
                },
                target_schema: match raw.target_schema {
                    Some(p) => Some(self.existing_file(&format!("{at}.target_schema"), &p)?),
                    None => None,
                },
            });
        }
        if c.upstream {
            // The platform's own API hears only of completions.
            requests.created = None;
            requests.updated = None;
            if requests.completed.is_none() {
                return Err(self.invalid(
                    format!("{field}.requests.completed"),
                    "an upstream connector exists to send `completed`; it cannot skip it",
                ));
            }
        } else if requests.created.is_none() {
            return Err(self.invalid(
                format!("{field}.requests.created"),
                "cannot be skipped: updates and completions follow the ticket it opens",
            ));
        }
        for (key, pointer) in [("ticket_id", &c.ticket_id), ("ticket_url", &c.ticket_url)] {
            if let Some(p) = pointer
                && !p.starts_with('/')
            {
                return Err(self.invalid(
                    format!("{field}.{key}"),
                    format!("{p:?} is not a JSON pointer (e.g. \"/result/sys_id\")"),
                ));
            }
        }
        if c.ticket_url.is_some() && c.ticket_id.is_none() {
            return Err(self.invalid(format!("{field}.ticket_url"), "needs ticket_id too"));
        }
        let callback_token = c.callback_token.map(|t| t.0);
        if let Some(t) = &callback_token {
            self.check_token(&format!("{field}.callback_token"), t)?;
        }
        if matches!(c.aggregate_for, Some(d) if d.is_zero()) {
            return Err(self.invalid(format!("{field}.aggregate_for"), "must be more than 0"));
        }
        if c.timeout.is_zero() {
            return Err(self.invalid(format!("{field}.timeout"), "must be more than 0"));
        }
        let retry = self.retry(field, c.retry)?;
        let mut matchers = Vec::new();
        for (j, m) in c.matchers.into_iter().enumerate() {
            matchers.push(self.matcher(&format!("{field}.matchers[{j}]"), m)?);
        }
        let min_threat_rating = match c.min_threat_rating {
            None => None,
            Some(r) => Some(ThreatRating::parse(&r).ok_or_else(|| {
                self.invalid(
                    format!("{field}.min_threat_rating"),
                    format!("{r:?}: expected one of info, low, medium, high, critical"),
                )
            })?),
        };
        for (rating, value) in &c.priorities {
            if rating != "default" && ThreatRating::parse(rating).is_none() {
                return Err(self.invalid(
                    format!("{field}.priorities"),
                    format!("{rating:?}: keys are info, low, medium, high, critical or default"),
                ));
            }
            if !(value.is_string() || value.is_number()) {
                return Err(self.invalid(
                    format!("{field}.priorities.{rating}"),
                    "must be a string or a number",
                ));
            }
        }
        let target_schema = match c.target_schema {
            None => None,
            Some(p) => Some(self.existing_file(&format!("{field}.target_schema"), &p)?),
        };
        let mut signing = crate::signature::Signing::default();
        if let Some(raw) = &c.signing {
            for (i, secret) in raw.standard_webhooks.iter().enumerate() {
                signing
                    .standard
                    .push(
                        crate::signature::WebhookSecret::parse(&secret.0).map_err(|e| {
                            self.invalid(
                                format!("{field}.signing.standard_webhooks[{i}]"),
                                e.to_string(),
                            )
                        })?,
                    );
            }
            if let Some(g) = &raw.github_secret {
                if g.0.len() < 16 {
                    return Err(self.invalid(
                        format!("{field}.signing.github_secret"),
                        "must be at least 16 characters",
                    ));
                }
                signing.github = Some(g.0.as_bytes().to_vec());
            }
        }
        for (i, host) in c.allow_hosts.iter().enumerate() {
            let bare = host.strip_prefix("*.").unwrap_or(host);
            if bare.is_empty() || bare.contains(['/', ':', '*', ' ']) {
                return Err(self.invalid(
                    format!("{field}.allow_hosts[{i}]"),
                    format!("{host:?}: write a host name, or *.domain for its subdomains"),
                ));
            }
        }
        let egress = Egress {
            allow_hosts: c
                .allow_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            allow_private: c.allow_private,
            follow_redirects: c.follow_redirects,
            tls_ca_file: match (&c.tls_ca_file, &smtp) {
                (Some(f), None) => Some(self.existing_file(&format!("{field}.tls_ca_file"), f)?),
                _ => None,
            },
        };
        Ok(ConnectorConfig {
            signing,
            egress,
            target_schema,
            vars: c.vars.into_iter().map(|(k, v)| (k, v.0)).collect(),
            priorities: c
                .priorities
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect(),
            name: c.name,
            kind,
            method,
            url,
            template,
            headers,
            requests,
            smtp,
            correlation_key: c
                .correlation_key
                .unwrap_or_else(|| "{{incidentId}}".to_string()),
            aggregate_for: c.aggregate_for,
            ticket_id: c.ticket_id,
            ticket_url: c.ticket_url,
            callback_token,
            upstream: c.upstream,
            timeout: c.timeout,
            concurrency: c.concurrency.unwrap_or(DEFAULT_CONNECTOR_CONCURRENCY),
            retry,
            matchers,
            min_threat_rating,
        })
    }

    fn smtp(&self, field: &str, c: &RawConnector) -> Result<SmtpConfig, ConfigError> {
        let at = format!("{field}.smtp_url");
        let raw_url = c
            .smtp_url
            .as_ref()
            .ok_or_else(|| self.invalid(&at, "is required for an smtp connector"))?;
        let parsed =
            reqwest::Url::parse(&raw_url.0).map_err(|e| self.invalid(&at, e.to_string()))?;
        let (security, default_port) = match parsed.scheme() {
            "smtp" => (SmtpSecurity::Plain, 25),
            "smtp+starttls" => (SmtpSecurity::StartTls, 587),
            "smtps" => (SmtpSecurity::Tls, 465),
            other => {
                return Err(self.invalid(
                    &at,
                    format!("{other:?}: expected smtp://, smtp+starttls:// or smtps://"),
                ));
            }
        };
        let host = parsed
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| self.invalid(&at, "names no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let password = match (&c.password, &c.password_file) {
            (Some(_), Some(_)) => {
                return Err(self.invalid(
                    format!("{field}.password_file"),
                    "give password or password_file, not both",
                ));
            }
            (Some(p), None) => Some(p.0.clone()),
            (None, Some(file)) => {
                let path = self.resolve(file);
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    self.invalid(
                        format!("{field}.password_file"),
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                Some(text.trim_end_matches(['\r', '\n']).to_string())
            }
            (None, None) => None,
        };
        let username = c.username.as_ref().map(|u| u.0.clone());
        if password.is_some() != username.is_some() {
            return Err(self.invalid(
                format!("{field}.username"),
                "username and password go together",
            ));
        }
        // lettre sends AUTH PLAIN over any connection that offers it: without TLS the password
        // crosses the network in clear (base64 is no protection).
        if username.is_some() && security == SmtpSecurity::Plain && !c.allow_plaintext_auth {
            return Err(self.invalid(
                format!("{field}.username"),
                "smtp:// has no TLS, so the password would be sent in clear: use \
                 smtp+starttls:// or smtps://, or set allow_plaintext_auth = true (a relay on a \
                 trusted network)",
            ));
        }
        let from = c.from.clone().ok_or_else(|| {
            self.invalid(format!("{field}.from"), "is required for an smtp connector")
        })?;
        let mailbox = |key: String, value: &str| -> Result<(), ConfigError> {
            if value.contains("{{") {
                return Ok(());
            }
            value
                .parse::<lettre::message::Mailbox>()
                .map(|_| ())
                .map_err(|e| self.invalid(key, format!("{value:?} is not an address: {e}")))
        };
        mailbox(format!("{field}.from"), &from)?;
        if from.contains("{{") {
            return Err(self.invalid(
                format!("{field}.from"),
                "must be a fixed address, not a template",
            ));
        }
        if c.to.is_empty() {
            return Err(self.invalid(format!("{field}.to"), "needs at least one recipient"));
        }
        for (i, to) in c.to.iter().enumerate() {
            mailbox(format!("{field}.to[{i}]"), to)?;
        }
        for (i, cc) in c.cc.iter().enumerate() {
            mailbox(format!("{field}.cc[{i}]"), cc)?;
        }
        let tls_ca_file = match &c.tls_ca_file {
            Some(f) => Some(self.existing_file(&format!("{field}.tls_ca_file"), f)?),
            None => None,
        };
        Ok(SmtpConfig {
            security,
            host,
            port: parsed.port().unwrap_or(default_port),
            username,
            password,
            from,
            to: c.to.clone(),
            cc: c.cc.clone(),
            subject_tag: c.subject_tag.clone(),
            tls_ca_file,
            allow_plaintext_auth: c.allow_plaintext_auth,
        })
    }

    /// A path from the config, resolved, that must name a file.
    fn existing_file(&self, field: &str, path: &str) -> Result<PathBuf, ConfigError> {
        let resolved = self.resolve(path);
        if !resolved.is_file() {
            return Err(self.invalid(field, format!("{} does not exist", resolved.display())));
        }
        Ok(resolved)
    }

    fn read_secret_file(&self, field: &str, file: &str) -> Result<String, ConfigError> {
        let path = self.resolve(file);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| self.invalid(field, format!("cannot read {}: {e}", path.display())))?;
        Ok(text.trim_end_matches(['\r', '\n']).to_string())
    }

    fn method(&self, field: &str, method: &str) -> Result<reqwest::Method, ConfigError> {
        reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
            .map_err(|_| self.invalid(field, format!("{method:?} is not an HTTP method")))
    }

    fn check_url(&self, field: &str, url: &str) -> Result<(), ConfigError> {
        if url.trim().is_empty() {
            return Err(self.invalid(field, "is empty"));
        }
        // A URL without template markup must parse now; a templated one is checked when rendered.
        if !url.contains("{{") {
            let parsed =
                reqwest::Url::parse(url).map_err(|e| self.invalid(field, e.to_string()))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(self.invalid(field, "scheme must be http or https"));
            }
        }
        Ok(())
    }

    fn template_path(&self, field: &str, path: &str) -> Result<TemplatePath, ConfigError> {
        let resolved = self.resolve(path);
        if !resolved.is_file() {
            return Err(self.invalid(
                field,
                format!(
                    "template file {} does not exist (paths are relative to the config file's folder)",
                    resolved.display()
                ),
            ));
        }
        Ok(TemplatePath {
            as_written: path.to_string(),
            resolved,
        })
    }

    fn headers(
        &self,
        field: &str,
        raw: BTreeMap<String, EnvTemplate>,
    ) -> Result<BTreeMap<String, String>, ConfigError> {
        let mut headers = BTreeMap::new();
        for (name, value) in raw {
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(self.invalid(field, format!("{name:?} is not a valid header name")));
            }
            headers.insert(name.to_ascii_lowercase(), value.0);
        }
        Ok(headers)
    }

    fn check_token(&self, field: &str, token: &str) -> Result<(), ConfigError> {
        if token.len() < 16 {
            return Err(self.invalid(field, "must be at least 16 characters"));
        }
        Ok(())
    }

    /// A connector's retry policy: its own `schedule`, or the exponential form
    /// (`initial_backoff` doubling to `max_backoff`), or the default schedule; `max_attempts`
    /// cuts a schedule short or repeats its last step.
    fn retry(&self, field: &str, raw: RawRetry) -> Result<RetryPolicy, ConfigError> {
        let defaults = RetryPolicy::default();
        let exponential = raw.initial_backoff.is_some() || raw.max_backoff.is_some();
        let mut schedule = match raw.schedule {
            Some(_) if exponential => {
                return Err(self.invalid(
                    format!("{field}.retry.schedule"),
                    "give either a schedule or initial_backoff/max_backoff, not both",
                ));
            }
            Some(steps) => steps.into_iter().map(|d| *d).collect(),
            None if exponential => {
                let initial = raw.initial_backoff.unwrap_or(Duration::from_secs(1));
                let max = raw.max_backoff.unwrap_or(Duration::from_secs(300));
                if initial > max {
                    return Err(self.invalid(
                        format!("{field}.retry.initial_backoff"),
                        "is longer than retry.max_backoff",
                    ));
                }
                RetryPolicy::exponential(initial, max, raw.max_attempts.unwrap_or(10))
            }
            None => defaults.schedule,
        };
        if schedule.iter().any(Duration::is_zero) {
            return Err(self.invalid(
                format!("{field}.retry.schedule"),
                "every step must be longer than 0",
            ));
        }
        if let Some(max_attempts) = raw.max_attempts {
            if max_attempts == 0 || max_attempts > MAX_RETRY_ATTEMPTS {
                return Err(self.invalid(
                    format!("{field}.retry.max_attempts"),
                    format!("must be 1 to {MAX_RETRY_ATTEMPTS}"),
                ));
            }
            let retries = max_attempts as usize - 1;
            let last = schedule
                .last()
                .copied()
                .unwrap_or(DEFAULT_RETRY_SCHEDULE[0]);
            schedule.resize(retries, last);
        }
        Ok(RetryPolicy {
            schedule,
            max_age: raw.max_age.unwrap_or(defaults.max_age),
        })
    }

    fn matcher(&self, field: &str, m: RawMatcher) -> Result<Matcher, ConfigError> {
        use crate::route::Condition;
        if !(m.field.is_empty() || m.field.starts_with('/')) {
            return Err(self.invalid(
                format!("{field}.field"),
                format!("{:?} is not a JSON pointer (it starts with '/')", m.field),
            ));
        }
        let compile = |re: &str, key: &str| {
            regex::Regex::new(&format!("^(?:{re})$"))
                .map_err(|e| self.invalid(format!("{field}.{key}"), e.to_string()))
        };
        let mut conditions = Vec::new();
        if let Some(v) = m.equals {
            conditions.push(Condition::Equals(v));
        }
        if let Some(v) = m.not_equals {
            conditions.push(Condition::NotEquals(v));
        }
        if let Some(v) = m.one_of {
            conditions.push(Condition::OneOf(v));
        }
        if let Some(v) = m.not_one_of {
            conditions.push(Condition::NotOneOf(v));
        }
        if let Some(v) = m.regex {
            conditions.push(Condition::Regex(compile(&v, "regex")?));
        }
        if let Some(v) = m.not_regex {
            conditions.push(Condition::NotRegex(compile(&v, "not_regex")?));
        }
        match conditions.len() {
            1 => Ok(Matcher {
                field: m.field,
                condition: conditions.remove(0),
            }),
            0 => Err(self.invalid(
                field,
                "needs one of equals, not_equals, one_of, not_one_of, regex, not_regex",
            )),
            _ => Err(self.invalid(
                field,
                "has more than one condition; write one matcher per condition",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn expands_variables_and_defaults() {
        ENV_LOOKUP.with(|l| *l.borrow_mut() = Some(Box::new(env(&[("A", "alpha")]))));
        assert_eq!(expand_env("x-${A}-y").as_deref(), Ok("x-alpha-y"));
        assert_eq!(expand_env("${B:-dflt}").as_deref(), Ok("dflt"));
        assert_eq!(expand_env("$$A $5").as_deref(), Ok("$A $5"));
        assert!(expand_env("${B}").unwrap_err().contains("B is not set"));
        assert!(expand_env("${A").is_err());
        ENV_LOOKUP.with(|l| *l.borrow_mut() = None);
    }

    #[test]
    fn unset_variable_names_line_and_variable() {
        let text = "[server]\nlisten = \"127.0.0.1:1\"\nadmin_token = \"${NOPE_TOKEN}\"\n[storage]\nurl = \"sqlite://x.db\"\n";
        let err = Config::from_toml(text, Path::new("gw.toml"), env(&[])).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("gw.toml"), "{msg}");
        assert!(msg.contains("line 3"), "{msg}");
        assert!(msg.contains("NOPE_TOKEN is not set"), "{msg}");
    }

    #[test]
    fn locates_fields_in_the_text() {
        let text = "[server]\nlisten = \"x\"\n[[connectors]]\nname = \"a\"\n[[connectors]]\nname = \"b\"\ntemplate = \"t\"\n[connectors.retry]\nmax_attempts = 0\n[[connectors.matchers]]\nfield = \"/x\"\nregex = \"(\"\n";
        assert_eq!(locate(text, "server.listen"), Some(2));
        assert_eq!(locate(text, "connectors[1].template"), Some(7));
        assert_eq!(locate(text, "connectors[1].retry.max_attempts"), Some(9));
        assert_eq!(locate(text, "connectors[1].matchers[0].regex"), Some(12));
        // Not written in the first connector: its header.
        assert_eq!(locate(text, "connectors[0].template"), Some(3));
        assert_eq!(locate(text, "storage.url"), None);
    }

    #[test]
    fn debug_output_never_shows_credentials() {
        let dir = std::env::temp_dir().join(format!("igw-debug-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("t.json.hbs"), "{}").unwrap();
        let text = "[server]\nadmin_token = \"admin-secret-0123456789\"\n[storage]\nurl = \"sqlite://x.db\"\n[[sources]]\nname = \"s\"\napi_key = \"source-secret-0123456789\"\ncallback_token = \"callback-secret-0123456\"\n[[connectors]]\nname = \"c\"\nkind = \"http\"\nurl = \"https://x.example.com/\"\ntemplate = \"t.json.hbs\"\ncallback_token = \"conn-callback-secret-123\"\nvars = { key = \"var-secret-0123456789\" }\n[connectors.headers]\nAuthorization = \"Bearer header-secret-0123456789\"\n[connectors.signing]\ngithub_secret = \"github-secret-0123456789\"\n";
        let config = Config::from_toml(text, &dir.join("gw.toml"), |_| None).unwrap();
        let shown = format!("{config:?}");
        for secret in [
            "admin-secret",
            "source-secret",
            "callback-secret",
            "conn-callback",
            "var-secret",
            "header-secret",
            "github-secret",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn the_body_budget_defaults_to_64_bodies_and_holds_at_least_one() {
        let load = |server: &str| {
            let text = format!("[server]\n{server}\n[storage]\nurl = \"sqlite://x.db\"\n");
            Config::from_toml(&text, Path::new("gw.toml"), |_| None)
        };
        let config = load("max_body_bytes = 2048").unwrap();
        assert_eq!(config.server.max_body_bytes_in_flight, 64 * 2048);
        let config = load("max_body_bytes = 2048\nmax_body_bytes_in_flight = 4096").unwrap();
        assert_eq!(config.server.max_body_bytes_in_flight, 4096);
        let msg = load("max_body_bytes = 8192\nmax_body_bytes_in_flight = 4096")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("line 3: server.max_body_bytes_in_flight"),
            "{msg}"
        );
    }
}
