//! Connector: what one configured target is — where it sends ([`Target`]: an HTTP API or an
//! SMTP server), which incidents it takes, how its tickets are keyed and tracked, how its
//! requests are signed and retried. `config` builds these once at load; routing, rendering,
//! tickets, callbacks and delivery read them. It imports only the vocabulary below it, so
//! every stage can name a connector without importing the configuration.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::model::{ClosePolicy, Event, ThreatRating};
use crate::route::Matcher;
use crate::signature::Signing;

/// One connector, validated.
#[derive(Clone)]
pub struct Connector {
    pub name: String,
    /// The body template as the connector gives it (for messages); each event's request or
    /// message holds the one it renders.
    pub template: TemplatePath,
    /// How long one send may take (an HTTP request, or an SMTP session).
    pub timeout: Duration,
    /// Sends to this connector at once: its own share of the workers.
    pub concurrency: usize,
    pub retry: RetryPolicy,
    /// When its circuit opens (see `deliver::circuit`).
    pub circuit: CircuitPolicy,
    pub matchers: Vec<Matcher>,
    pub min_threat_rating: Option<ThreatRating>,
    /// `tenants`: the accounts whose incidents it takes (account → tenant name); every
    /// account's when `None`.
    pub tenants: Option<BTreeMap<i64, String>>,
    /// `[connectors.per_tenant.NAME]`: what differs for one tenant's incidents, by account.
    pub per_tenant: BTreeMap<i64, TenantSettings>,
    /// The config's `[[tenants]]` (account → name), shared by every connector: a correlation
    /// key is prefixed with its incident's tenant (see `ticket::route_for`).
    pub key_scopes: std::sync::Arc<BTreeMap<i64, String>>,
    /// The config's assignment rules, shared by every connector: templates read where its
    /// ticket goes as `assignment.group` and `assignment.owner`.
    pub assignment: std::sync::Arc<crate::assign::Rules>,
    /// `[sla]`, when this connector's tickets have SLA clocks (it is in `sla.connectors`).
    pub sla: Option<std::sync::Arc<crate::sla::SlaSettings>>,
    /// Threat rating (`critical` … `info`, or `default`) → the target's priority, for the
    /// `priority` helper.
    pub priorities: BTreeMap<String, serde_json::Value>,
    /// Connector-specific values templates read as `connector.vars.NAME` (a PagerDuty
    /// routing key, a Jira project key). `${ENV}` values are secrets: masked in `render`.
    pub vars: BTreeMap<String, String>,
    /// A JSON Schema of the target's request body; `check` validates every render against it.
    pub target_schema: Option<PathBuf>,
    /// Template of the key that groups incidents into one ticket (default `{{incidentId}}`).
    pub correlation_key: String,
    /// How long a ticket takes further incidents with its key; `None`: until it is completed.
    pub aggregate_for: Option<Duration>,
    /// A collection window: the first incident of a key waits this long, and the incidents of
    /// the key that arrive meanwhile go with it as one delivery (seed 004's collection
    /// interval, Alertmanager's `group_wait`); `None`: each incident is its own delivery.
    pub collect_for: Option<Duration>,
    /// What completing one of a ticket's incidents does to the ticket.
    pub close_ticket: ClosePolicy,
    /// When the target closes a ticket (its callback completes one incident): whether the
    /// ticket's other open incidents are completed with it.
    pub target_close_completes_all: bool,
    /// An incident whose key's ticket closed less than this ago reopens that ticket instead
    /// of opening a new one (Jiralert's `reopen_duration`).
    pub reopen_within: Option<Duration>,
    /// JSON pointers into the `created` response: the ticket's id (and link).
    pub ticket_id: Option<String>,
    pub ticket_url: Option<String>,
    /// The target dedupes `created` by the correlation key itself (PagerDuty `dedup_key`,
    /// Opsgenie `alias`): a `created` whose outcome is unknown is simply sent again.
    pub idempotent_create: bool,
    /// Paused in the config: its deliveries stay queued, none sent.
    pub paused: bool,
    /// JSON pointers into an error response where the target says why (Redmine `/errors`,
    /// Jira `/errorMessages` and `/errors`, …): what is found there is the attempt's error.
    pub error_message: Vec<String>,
    /// Bearer token the target uses to call `POST /v1/incidents/{id}/complete`.
    pub callback_token: Option<String>,
    /// The detection platform's own API: gets only `completed`, for every incident completed
    /// through the gateway.
    pub upstream: bool,
    /// How requests are signed for the receiver.
    pub signing: Signing,
    /// Where and how it sends.
    pub target: Target,
}

/// Debug shows what identifies a connector, never its headers, vars, tokens or secrets.
impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("name", &self.name)
            .field("kind", &self.target.kind())
            .field("template", &self.template.as_written)
            .finish_non_exhaustive()
    }
}

/// Where a connector sends.
#[derive(Debug, Clone)]
pub enum Target {
    /// `kind = "http"`: one HTTP request per event.
    Http(Box<HttpTarget>),
    /// `kind = "smtp"`: one email per event, threaded by ticket.
    Smtp(Box<SmtpTarget>),
}

impl Target {
    /// The `kind` the config names it by.
    pub fn kind(&self) -> &'static str {
        match self {
            Target::Http(_) => "http",
            Target::Smtp(_) => "smtp",
        }
    }
}

/// An HTTP API: the request each event sends, and where requests may go.
#[derive(Clone)]
pub struct HttpTarget {
    /// The connector's own request, the default of every event's.
    pub method: reqwest::Method,
    /// A Handlebars template; interpolated values are percent-encoded.
    pub url: String,
    /// Header name → value template.
    pub headers: BTreeMap<String, String>,
    /// Where requests may go (see [`Egress`]).
    pub egress: Egress,
    /// The request each event sends, `None` where the connector skips that event.
    pub requests: Requests<HttpRequest>,
    /// How to find a ticket a `created` may already have opened.
    pub lookup: Option<Lookup>,
    /// OAuth2 client credentials: every request (the lookup's too) carries a bearer token
    /// fetched from the token endpoint at send time, never rendered.
    pub oauth2: Option<OAuth2>,
}

/// `[connectors.oauth2]`: the client credentials grant (RFC 6749 §4.4). `deliver::oauth`
/// fetches and caches the token; defined here because a connector holds it.
#[derive(Clone)]
pub struct OAuth2 {
    /// Where tokens come from (http or https, checked against the connector's egress).
    pub token_url: String,
    pub client_id: String,
    /// A secret: masked wherever text leaves the process.
    pub client_secret: String,
    /// Sent space-separated as `scope`; none: the parameter is left out.
    pub scopes: Vec<String>,
    /// How the client authenticates to the token endpoint.
    pub auth_style: OAuth2AuthStyle,
    /// Further form parameters some servers need (`audience`, `resource`).
    pub extra: BTreeMap<String, String>,
}

/// Where the client's credentials go in a token request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OAuth2AuthStyle {
    /// HTTP Basic, as RFC 6749 §2.3.1 asks every server to accept.
    Basic,
    /// `client_id` and `client_secret` in the form, for servers that want them there.
    Body,
}

/// Debug shows where tokens come from, never the secret or the extra parameters.
impl std::fmt::Debug for OAuth2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuth2")
            .field("scopes", &self.scopes)
            .field("auth_style", &self.auth_style)
            .finish_non_exhaustive()
    }
}

/// A request that finds the ticket a connector opened for a correlation key, sent before a
/// `created` whose outcome is unknown is sent again (the gateway stopped while it was being
/// sent, it timed out, the connection broke after the request was written): a ticket found
/// is the one the `created` opened.
#[derive(Clone)]
pub struct Lookup {
    pub method: reqwest::Method,
    /// A Handlebars template (the `created` request's context); values are percent-encoded.
    pub url: String,
    /// The connector's headers, then the lookup's own (which win).
    pub headers: BTreeMap<String, String>,
    /// JSON pointer to the found ticket's id in a 2xx answer; nothing there: none found.
    pub found_id: String,
    /// JSON pointer to its link.
    pub found_url: Option<String>,
}

impl std::fmt::Debug for Lookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lookup")
            .field("method", &self.method)
            .field("found_id", &self.found_id)
            .finish_non_exhaustive()
    }
}

/// Debug never shows the URL or headers (either may carry a credential).
impl std::fmt::Debug for HttpTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTarget")
            .field("method", &self.method)
            .field("egress", &self.egress)
            .field("requests", &self.requests)
            .field("lookup", &self.lookup)
            .field("oauth2", &self.oauth2)
            .finish_non_exhaustive()
    }
}

/// A request an HTTP connector sends for one event.
#[derive(Clone)]
pub struct HttpRequest {
    pub method: reqwest::Method,
    /// A Handlebars template; interpolated values are percent-encoded.
    pub url: String,
    pub template: TemplatePath,
    /// The connector's headers, then the request's own (which win).
    pub headers: BTreeMap<String, String>,
    /// The target's schema of this request's body, when it differs from the connector's.
    pub target_schema: Option<PathBuf>,
}

impl std::fmt::Debug for HttpRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpRequest")
            .field("method", &self.method)
            .field("template", &self.template.as_written)
            .finish_non_exhaustive()
    }
}

/// Where an HTTP connector may send, checked after the URL is rendered and again on the
/// addresses actually connected to. Enforced by `deliver::egress`; defined here because a
/// connector holds it and `deliver` imports this module.
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
    /// The client certificate presented to servers that ask for one (mutual TLS).
    pub client_identity: Option<ClientIdentity>,
}

/// A client certificate and its key, read and checked at load: the PEM the connector's
/// client presents (the certificate chain, then the key), rebuilt from what was parsed so
/// the client gets exactly what the check accepted.
#[derive(Clone)]
pub struct ClientIdentity {
    /// The certificate file, for messages.
    pub cert_file: PathBuf,
    pub pem: Vec<u8>,
}

/// Debug names the file, never the key.
impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("cert_file", &self.cert_file)
            .finish_non_exhaustive()
    }
}

/// An SMTP server and whom it writes to: the message each event sends.
#[derive(Clone)]
pub struct SmtpTarget {
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
    /// The message each event sends, `None` where the connector skips that event.
    pub messages: Requests<MailMessage>,
    /// The ticketing system the mail goes into, so its follow-ups thread there.
    pub threading: Option<MailThreading>,
    /// How the gateway learns the number the system gave a mailed ticket.
    pub lookup: Option<Lookup>,
    /// Where that lookup may go (its `allow_hosts`, `allow_private`; no redirects).
    pub lookup_egress: Egress,
    /// The mailbox the ticketing system's acknowledgements arrive in: another way to learn
    /// the numbers.
    pub mailbox: Option<Mailbox>,
}

/// An IMAP mailbox the gateway reads the ticketing system's acknowledgement mails from
/// (Redmine's notifications, Request Tracker's auto-replies, Zammad's): each names the ticket
/// number and carries the ticket's ref. Read by `mailbox`.
#[derive(Clone)]
pub struct Mailbox {
    /// `imaps://` (TLS) or, on a loopback host or when allowed, `imap://`.
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub username: String,
    pub password: String,
    pub folder: String,
    /// How often it is read.
    pub poll: Duration,
}

/// Debug never shows the password.
impl std::fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailbox")
            .field("tls", &self.tls)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("folder", &self.folder)
            .finish_non_exhaustive()
    }
}

/// The ticketing system an SMTP connector files mail into. Such a system threads a mail onto a
/// ticket only by its own marker in the subject, which the gateway cannot know until the
/// system has filed the `created` mail: the connector's lookup learns the number, follow-ups
/// wait for it, then carry the marker (and no In-Reply-To, which these systems do not read).
#[derive(Debug, Clone)]
pub struct MailThreading {
    pub system: MailSystem,
    /// A ticket field the `created` mail sets to `ticket.ref` by a body command (Redmine: a
    /// custom field's name; Request Tracker: a custom field, with RT::Extension::CommandByMail),
    /// so the lookup can find the ticket by it.
    pub correlation_field: Option<String>,
    /// The status the `completed` mail sets by a body command (Redmine "Closed", Request
    /// Tracker "resolved"); `None` where the system closes nothing by mail (Zammad).
    pub close_status: Option<String>,
}

/// The systems whose mail threading the gateway speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MailSystem {
    /// `[#N]` in the subject; `Field: value` lines in the body (with allow_override).
    Redmine,
    /// `[rtname #N]` in the subject; commands at the top of the body with CommandByMail.
    RequestTracker { rt_name: String },
    /// `[Ticket#N]` (the ticket hook) in the subject.
    Zammad { ticket_hook: String },
    /// Jira Service Management's email channel: the issue key (`SEC-123`) anywhere in the
    /// subject.
    Jira { project_key: String },
}

impl MailThreading {
    /// The marker that files a mail onto ticket `number`.
    pub fn marker(&self, number: &str) -> String {
        match &self.system {
            MailSystem::Redmine => format!("[#{number}]"),
            MailSystem::RequestTracker { rt_name } => format!("[{rt_name} #{number}]"),
            MailSystem::Zammad { ticket_hook } => format!("[{ticket_hook}{number}]"),
            // The number is the issue key itself.
            MailSystem::Jira { .. } => format!("[{number}]"),
        }
    }

    /// `text` with every marker of this system that the bracketed-marker rule does not
    /// already catch made inert: Jira's bare issue keys (`SEC-123` becomes `SEC‑123`, with a
    /// non-breaking hyphen that reads the same and matches no key).
    pub fn defang(&self, text: &str) -> String {
        match &self.system {
            MailSystem::Jira { project_key } => {
                let key = format!("{project_key}-");
                let mut out = String::with_capacity(text.len());
                let mut rest = text;
                while let Some(at) = rest.find(&key) {
                    let after = &rest[at + key.len()..];
                    let before_ok = rest[..at]
                        .chars()
                        .next_back()
                        .is_none_or(|c| !c.is_ascii_alphanumeric());
                    out.push_str(&rest[..at]);
                    if before_ok && after.starts_with(|c: char| c.is_ascii_digit()) {
                        out.push_str(project_key);
                        out.push('\u{2011}');
                    } else {
                        out.push_str(&key);
                    }
                    rest = after;
                }
                out.push_str(rest);
                out
            }
            _ => text.to_string(),
        }
    }

    /// The command lines a mail of `event` starts its text with: the `created` one sets the
    /// correlation field to `reference`, the `completed` one the closing status.
    pub fn commands(&self, event: Event, reference: &str) -> Vec<String> {
        let field = |name: &str, value: &str| match self.system {
            MailSystem::RequestTracker { .. } => format!("CF.{{{name}}}: {value}"),
            _ => format!("{name}: {value}"),
        };
        match event {
            Event::Created => self
                .correlation_field
                .iter()
                .map(|f| field(f, reference))
                .collect(),
            Event::Updated => vec![],
            Event::Completed => self
                .close_status
                .iter()
                .map(|s| format!("Status: {s}"))
                .collect(),
        }
    }
}

impl std::fmt::Debug for SmtpTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpTarget")
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

/// How an SMTP connector secures its connection. Used by `deliver::smtp`; defined here
/// because a connector holds it and `deliver` imports this module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpSecurity {
    /// `smtp://`: no TLS (a relay on a trusted network, or tests).
    Plain,
    /// `smtp+starttls://`: STARTTLS required.
    StartTls,
    /// `smtps://`: TLS from the first byte.
    Tls,
}

/// The email an SMTP connector sends for one event.
#[derive(Debug, Clone)]
pub struct MailMessage {
    /// The text body.
    pub template: TemplatePath,
    /// The subject template.
    pub subject: String,
    /// An HTML body beside the text one.
    pub html_template: Option<TemplatePath>,
    /// The target's schema of this message's body, when it differs from the connector's.
    pub target_schema: Option<PathBuf>,
}

/// One request (or message) per event: created, updated, completed; `None` where the
/// connector skips the event.
#[derive(Debug, Clone)]
pub struct Requests<R> {
    pub created: Option<R>,
    pub updated: Option<R>,
    pub completed: Option<R>,
}

impl<R> Default for Requests<R> {
    fn default() -> Self {
        Requests {
            created: None,
            updated: None,
            completed: None,
        }
    }
}

impl<R> Requests<R> {
    /// The same request for every event.
    pub fn every_event(request: R) -> Self
    where
        R: Clone,
    {
        Requests {
            created: Some(request.clone()),
            updated: Some(request.clone()),
            completed: Some(request),
        }
    }

    /// The request for `event`, or `None` when the connector skips it.
    pub fn get(&self, event: Event) -> Option<&R> {
        match event {
            Event::Created => self.created.as_ref(),
            Event::Updated => self.updated.as_ref(),
            Event::Completed => self.completed.as_ref(),
        }
    }

    /// The slot of `event`.
    pub fn slot(&mut self, event: Event) -> &mut Option<R> {
        match event {
            Event::Created => &mut self.created,
            Event::Updated => &mut self.updated,
            Event::Completed => &mut self.completed,
        }
    }

    /// Every request the connector sends, in event order.
    pub fn iter(&self) -> impl Iterator<Item = &R> {
        [&self.created, &self.updated, &self.completed]
            .into_iter()
            .flatten()
    }
}

#[derive(Debug, Clone)]
pub struct TemplatePath {
    pub as_written: String,
    pub resolved: PathBuf,
}

/// `[connectors.per_tenant.NAME]`: one tenant's settings over the connector's own; what it
/// leaves out is the connector's.
#[derive(Debug, Clone)]
pub struct TenantSettings {
    /// The tenant's name (for messages, and the name of its key template).
    pub tenant: String,
    pub matchers: Option<Vec<Matcher>>,
    pub min_threat_rating: Option<ThreatRating>,
    /// Its own correlation key template.
    pub correlation_key: Option<String>,
    pub aggregate_for: Option<Duration>,
    pub collect_for: Option<Duration>,
}

impl crate::route::Routed for Connector {
    fn upstream(&self) -> bool {
        self.upstream
    }
    fn serves(&self, account: Option<i64>) -> bool {
        match &self.tenants {
            None => true,
            Some(accounts) => account.is_some_and(|a| accounts.contains_key(&a)),
        }
    }
    fn tenant_of(&self, account: Option<i64>) -> Option<&str> {
        self.tenant_settings(account).map(|s| s.tenant.as_str())
    }
    fn min_threat_rating(&self, account: Option<i64>) -> Option<ThreatRating> {
        self.tenant_settings(account)
            .and_then(|s| s.min_threat_rating)
            .or(self.min_threat_rating)
    }
    fn matchers(&self, account: Option<i64>) -> &[Matcher] {
        self.tenant_settings(account)
            .and_then(|s| s.matchers.as_deref())
            .unwrap_or(&self.matchers)
    }
}

impl Connector {
    /// The settings of the tenant whose account `account` is, where it has its own.
    pub fn tenant_settings(&self, account: Option<i64>) -> Option<&TenantSettings> {
        self.per_tenant.get(&account?)
    }

    /// How long a ticket of an incident of `account` takes more incidents.
    pub fn aggregate_for(&self, account: Option<i64>) -> Option<Duration> {
        self.tenant_settings(account)
            .and_then(|s| s.aggregate_for)
            .or(self.aggregate_for)
    }

    /// The SLA clocks a ticket this incident opens starts with, if any.
    pub fn sla_start(&self, incident: &serde_json::Value) -> Option<crate::sla::SlaStart> {
        self.sla.as_ref()?.start_for(
            crate::route::account_of(incident),
            ThreatRating::of_incident(incident),
        )
    }

    /// How long an incident of `account` waits for others of its key to go with it.
    pub fn collect_for(&self, account: Option<i64>) -> Option<Duration> {
        self.tenant_settings(account)
            .and_then(|s| s.collect_for)
            .or(self.collect_for)
    }

    /// The lookup the connector declares: an HTTP connector's finds a ticket its `created`
    /// may have opened, an SMTP connector's the number its ticketing system gave a mail.
    pub fn lookup(&self) -> Option<&Lookup> {
        match &self.target {
            Target::Http(http) => http.lookup.as_ref(),
            Target::Smtp(smtp) => smtp.lookup.as_ref(),
        }
    }

    /// How an SMTP connector's mails thread in its ticketing system, if it names one.
    pub fn threading(&self) -> Option<&MailThreading> {
        match &self.target {
            Target::Smtp(smtp) => smtp.threading.as_ref(),
            Target::Http(_) => None,
        }
    }

    /// Whether a `created` whose outcome is unknown can be settled without a person: the
    /// connector looks its ticket up first, or the target dedupes creates by key.
    pub fn settles_unknown_creates(&self) -> bool {
        self.idempotent_create || matches!(&self.target, Target::Http(h) if h.lookup.is_some())
    }

    /// Whether the connector sends anything for `event`.
    pub fn sends(&self, event: Event) -> bool {
        self.template(event).is_some()
    }

    /// The body template `event` renders (an HTTP request's body, an email's text), or
    /// `None` when the connector skips the event.
    pub fn template(&self, event: Event) -> Option<&TemplatePath> {
        match &self.target {
            Target::Http(http) => http.requests.get(event).map(|r| &r.template),
            Target::Smtp(smtp) => smtp.messages.get(event).map(|m| &m.template),
        }
    }

    /// Every target schema the connector names: its own, then its events' own.
    pub fn target_schemas(&self) -> Vec<&Path> {
        let events: Vec<&Path> = match &self.target {
            Target::Http(http) => http
                .requests
                .iter()
                .filter_map(|r| r.target_schema.as_deref())
                .collect(),
            Target::Smtp(smtp) => smtp
                .messages
                .iter()
                .filter_map(|m| m.target_schema.as_deref())
                .collect(),
        };
        self.target_schema
            .as_deref()
            .into_iter()
            .chain(events)
            .collect()
    }
}

/// The connector called `name`.
pub fn find<'a>(connectors: &'a [Connector], name: &str) -> Option<&'a Connector> {
    connectors.iter().find(|c| c.name == name)
}

/// `[connectors.circuit]`: after `failures` target-down attempts in a row nothing is sent for
/// `cool_down`, then one probe; each failed probe doubles the wait, up to `max_cool_down`.
/// `failures = 0`: never opens.
#[derive(Debug, Clone, PartialEq)]
pub struct CircuitPolicy {
    pub failures: u32,
    pub cool_down: Duration,
    pub max_cool_down: Duration,
}

/// When to try a failed delivery again, and when to give up. `deliver::retry` applies it;
/// defined here because a connector holds its policy and `deliver` imports this module.
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

/// A threading of `system` with a correlation field and a close status, for unit tests.
#[cfg(test)]
pub(crate) fn test_threading(system: MailSystem) -> MailThreading {
    MailThreading {
        system,
        correlation_field: Some("Correlation key".into()),
        close_status: Some("resolved".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn threading(system: MailSystem) -> MailThreading {
        test_threading(system)
    }

    #[test]
    fn each_system_gets_its_marker_and_its_commands() {
        let rt = threading(MailSystem::RequestTracker {
            rt_name: "soc.example".into(),
        });
        assert_eq!(rt.marker("12"), "[soc.example #12]");
        assert_eq!(
            rt.commands(Event::Created, "igw-1"),
            ["CF.{Correlation key}: igw-1"]
        );
        assert_eq!(rt.commands(Event::Completed, "igw-1"), ["Status: resolved"]);
        assert!(rt.commands(Event::Updated, "igw-1").is_empty());
        let redmine = threading(MailSystem::Redmine);
        assert_eq!(redmine.marker("7"), "[#7]");
        assert_eq!(
            redmine.commands(Event::Created, "igw-1"),
            ["Correlation key: igw-1"]
        );
        let zammad = threading(MailSystem::Zammad {
            ticket_hook: "Ticket#".into(),
        });
        assert_eq!(zammad.marker("31001"), "[Ticket#31001]");
    }

    #[test]
    fn jira_keys_in_incident_text_thread_nowhere() {
        let jira = threading(MailSystem::Jira {
            project_key: "SEC".into(),
        });
        assert_eq!(
            jira.defang("see SEC-12 and (SEC-3), not XSEC-4, SEC-x, CVE-2024-1"),
            "see SEC\u{2011}12 and (SEC\u{2011}3), not XSEC-4, SEC-x, CVE-2024-1"
        );
        assert_eq!(jira.marker("SEC-9"), "[SEC-9]");
        // Other systems' markers are the bracketed rule's; their text is left as it is.
        assert_eq!(threading(MailSystem::Redmine).defang("SEC-12"), "SEC-12");
    }
}
