//! `[[connectors]]`: built into [`Connector`]s. This file checks what every connector has
//! (name, routing, tickets, retry, signing, the per-event tables); its target — where it
//! sends — is built by [`super::http`] or [`super::smtp`].

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::tenants::Tenant;
use super::{ConfigError, Validator};
use crate::connector::{
    CircuitPolicy, Connector, DEFAULT_RETRY_SCHEDULE, Requests, RetryPolicy, Target, TenantSettings,
};
use crate::model::{ClosePolicy, Event, ThreatRating};
use crate::route::{Condition, Matcher};
use crate::signature::{Signing, WebhookSecret};

/// The most attempts a retry policy may give one delivery.
const MAX_RETRY_ATTEMPTS: u32 = 1000;

/// The longest a collection window may be: the first incident of a key waits this long
/// before anything is sent.
pub const MAX_COLLECT_FOR: Duration = Duration::from_secs(3600);

/// Why `collect_for` needs a correlation key of the config's own.
const NO_KEY_TO_COLLECT_BY: &str = "collects the incidents of one correlation key: set correlation_key too (the default, {{incidentId}}, gives every incident a key of its own, so nothing would be collected)";

/// Sends to one connector at once, unless its config says otherwise.
const DEFAULT_CONNECTOR_CONCURRENCY: usize = 16;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConnector {
    pub(super) name: String,
    pub(super) kind: String,
    pub(super) url: Option<String>,
    #[serde(default = "default_method")]
    pub(super) method: String,
    pub(super) template: String,
    // SMTP
    pub(super) smtp_url: Option<String>,
    pub(super) username: Option<String>,
    pub(super) password: Option<String>,
    pub(super) password_file: Option<String>,
    pub(super) from: Option<String>,
    #[serde(default)]
    pub(super) to: Vec<String>,
    #[serde(default)]
    pub(super) cc: Vec<String>,
    pub(super) subject: Option<String>,
    pub(super) subject_tag: Option<String>,
    pub(super) html_template: Option<String>,
    pub(super) tls_ca_file: Option<String>,
    /// mTLS: the client certificate (PEM, its chain after it) and its key.
    pub(super) tls_client_cert: Option<String>,
    pub(super) tls_client_key: Option<String>,
    /// OAuth2 client credentials (http connectors).
    pub(super) oauth2: Option<RawOAuth2>,
    #[serde(default)]
    pub(super) allow_plaintext_auth: bool,
    #[serde(default)]
    pub(super) headers: BTreeMap<String, String>,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    timeout: Duration,
    concurrency: Option<usize>,
    #[serde(default)]
    retry: RawRetry,
    #[serde(default)]
    circuit: RawCircuit,
    #[serde(default)]
    matchers: Vec<RawMatcher>,
    min_threat_rating: Option<String>,
    /// Only these tenants' incidents.
    tenants: Option<Vec<String>>,
    /// What differs for one tenant's incidents.
    #[serde(default)]
    per_tenant: BTreeMap<String, RawTenantSettings>,
    #[serde(default)]
    priorities: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    vars: BTreeMap<String, String>,
    target_schema: Option<String>,
    #[serde(default)]
    pub(super) requests: BTreeMap<String, RawRequest>,
    correlation_key: Option<String>,
    #[serde(default, with = "humantime_serde")]
    aggregate_for: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    collect_for: Option<Duration>,
    close_ticket: Option<String>,
    on_target_close: Option<String>,
    #[serde(default, with = "humantime_serde")]
    reopen_within: Option<Duration>,
    pub(super) ticket_id: Option<String>,
    ticket_url: Option<String>,
    #[serde(default)]
    error_message: Vec<String>,
    pub(super) lookup: Option<RawLookup>,
    pub(super) threading: Option<RawThreading>,
    pub(super) mailbox: Option<RawMailbox>,
    #[serde(default)]
    idempotent_create: bool,
    /// Deliveries stay queued, none sent, until this is taken out and the config reloaded.
    #[serde(default)]
    paused: bool,
    callback_token: Option<String>,
    #[serde(default)]
    upstream: bool,
    signing: Option<RawSigning>,
    #[serde(default)]
    pub(super) allow_hosts: Vec<String>,
    #[serde(default = "default_true")]
    pub(super) allow_private: bool,
    #[serde(default)]
    pub(super) follow_redirects: usize,
}

fn default_true() -> bool {
    true
}
fn default_method() -> String {
    "POST".into()
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

/// `[connectors.per_tenant.NAME]`: what it leaves out is the connector's.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenantSettings {
    matchers: Option<Vec<RawMatcher>>,
    min_threat_rating: Option<String>,
    correlation_key: Option<String>,
    #[serde(default, with = "humantime_serde")]
    aggregate_for: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    collect_for: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSigning {
    /// Standard Webhooks secrets (`whsec_…`); several sign at once during a rotation.
    #[serde(default)]
    standard_webhooks: Vec<String>,
    /// A GitHub-style `X-Hub-Signature-256` secret.
    github_secret: Option<String>,
}

/// A per-event request; what it leaves out comes from the connector.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRequest {
    pub(super) method: Option<String>,
    pub(super) url: Option<String>,
    pub(super) template: Option<String>,
    pub(super) subject: Option<String>,
    pub(super) html_template: Option<String>,
    pub(super) target_schema: Option<String>,
    #[serde(default)]
    pub(super) headers: BTreeMap<String, String>,
    /// Send nothing for this event.
    #[serde(default)]
    skip: bool,
}

/// `[connectors.lookup]`: how to find the ticket a `created` may already have opened.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLookup {
    #[serde(default = "default_lookup_method")]
    pub(super) method: String,
    pub(super) url: String,
    #[serde(default)]
    pub(super) headers: BTreeMap<String, String>,
    pub(super) found_id: String,
    pub(super) found_url: Option<String>,
}

/// `[connectors.threading]` of an SMTP connector: the ticketing system its mail goes into.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawThreading {
    pub(super) system: String,
    pub(super) rt_name: Option<String>,
    pub(super) ticket_hook: Option<String>,
    pub(super) project_key: Option<String>,
    pub(super) correlation_field: Option<String>,
    pub(super) close_status: Option<String>,
}

/// `[connectors.mailbox]` of an SMTP connector: where its system's acknowledgements arrive.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMailbox {
    pub(super) imap_url: String,
    pub(super) username: String,
    pub(super) password: String,
    #[serde(default = "default_folder")]
    pub(super) folder: String,
    #[serde(default = "default_poll", with = "humantime_serde")]
    pub(super) poll: Duration,
    #[serde(default)]
    pub(super) allow_plaintext_auth: bool,
}

fn default_folder() -> String {
    "INBOX".into()
}

fn default_poll() -> Duration {
    Duration::from_secs(10)
}

/// `[connectors.oauth2]`: the client credentials grant.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOAuth2 {
    pub(super) token_url: String,
    pub(super) client_id: String,
    pub(super) client_secret: Option<String>,
    pub(super) client_secret_file: Option<String>,
    #[serde(default)]
    pub(super) scopes: Vec<String>,
    pub(super) auth_style: Option<String>,
    #[serde(default)]
    pub(super) extra: BTreeMap<String, String>,
}

fn default_lookup_method() -> String {
    "GET".into()
}

/// `[connectors.circuit]`: when the connector's circuit opens, and for how long.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCircuit {
    failures: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    cool_down: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    max_cool_down: Option<Duration>,
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
pub(super) struct RawMatcher {
    /// JSON pointer into the incident, e.g. `/incident/threatRating`.
    field: String,
    equals: Option<String>,
    not_equals: Option<String>,
    one_of: Option<Vec<String>>,
    not_one_of: Option<Vec<String>>,
    regex: Option<String>,
    not_regex: Option<String>,
}

impl Validator<'_> {
    /// Every connector that is valid (each with its place in the file; names unique and usable
    /// in metrics and URLs); each one that is not
    /// adds its problem to `errors`, and the others are still checked.
    pub(super) fn connectors_indexed(
        &self,
        raw: Vec<(usize, RawConnector)>,
        tenants: &[Tenant],
        key_scopes: &Arc<BTreeMap<i64, String>>,
        errors: &mut Vec<ConfigError>,
    ) -> Vec<Connector> {
        let mut names = HashSet::new();
        let mut connectors = Vec::new();
        for (i, c) in raw {
            match self.named_connector(i, c, tenants, key_scopes, &mut names) {
                Ok(connector) => connectors.push(connector),
                Err(e) => errors.push(e),
            }
        }
        connectors
    }

    fn named_connector(
        &self,
        i: usize,
        c: RawConnector,
        tenants: &[Tenant],
        key_scopes: &Arc<BTreeMap<i64, String>>,
        names: &mut HashSet<String>,
    ) -> Result<Connector, ConfigError> {
        let field = format!("connectors[{i}]");
        self.plain_name(format!("{field}.name"), &c.name)?;
        if !names.insert(c.name.clone()) {
            return Err(self.invalid(
                format!("{field}.name"),
                format!("{:?} is used by another connector", c.name),
            ));
        }
        let mut connector = self.connector(&field, c, tenants)?;
        connector.key_scopes = key_scopes.clone();
        if connector.concurrency == 0 {
            return Err(self.invalid(format!("{field}.concurrency"), "must be at least 1"));
        }
        Ok(connector)
    }

    fn connector(
        &self,
        field: &str,
        c: RawConnector,
        tenants: &[Tenant],
    ) -> Result<Connector, ConfigError> {
        let (mut target, template) = match c.kind.as_str() {
            "http" => {
                let (http, template) = self.http_target(field, &c)?;
                (Target::Http(Box::new(http)), template)
            }
            "smtp" => {
                let (smtp, template) = self.smtp_target(field, &c)?;
                (Target::Smtp(Box::new(smtp)), template)
            }
            other => {
                return Err(self.invalid(
                    format!("{field}.kind"),
                    format!("{other:?} is not a connector kind (expected \"http\" or \"smtp\")"),
                ));
            }
        };
        match &mut target {
            Target::Http(http) => self.events_sent(field, c.upstream, &mut http.requests)?,
            Target::Smtp(smtp) => self.events_sent(field, c.upstream, &mut smtp.messages)?,
        }
        self.check_ticket(field, &c)?;
        if let Some(t) = &c.callback_token {
            self.check_token(&format!("{field}.callback_token"), t)?;
        }
        if matches!(c.aggregate_for, Some(d) if d.is_zero()) {
            return Err(self.invalid(format!("{field}.aggregate_for"), "must be more than 0"));
        }
        if let Some(d) = c.collect_for {
            self.collect_window(&format!("{field}.collect_for"), d)?;
            if c.upstream {
                return Err(self.invalid(
                    format!("{field}.collect_for"),
                    "an upstream connector has no tickets, so nothing to collect by",
                ));
            }
            if c.correlation_key.is_none() {
                return Err(self.invalid(format!("{field}.collect_for"), NO_KEY_TO_COLLECT_BY));
            }
        }
        let (close_ticket, target_close_completes_all) = self.ticket_policies(field, &c)?;
        if c.timeout.is_zero() {
            return Err(self.invalid(format!("{field}.timeout"), "must be more than 0"));
        }
        let retry = self.retry(field, c.retry)?;
        let circuit = self.circuit(field, &c.circuit)?;
        let mut matchers = Vec::new();
        for (j, m) in c.matchers.into_iter().enumerate() {
            matchers.push(self.matcher(&format!("{field}.matchers[{j}]"), m)?);
        }
        let min_threat_rating = self.min_threat_rating(field, c.min_threat_rating.as_deref())?;
        let served = match &c.tenants {
            None => None,
            Some(names) => Some(
                self.binding(&format!("{field}.tenants"), names, tenants)?
                    .named_accounts(),
            ),
        };
        let mut per_tenant = BTreeMap::new();
        for (name, raw) in c.per_tenant {
            let at = format!("{field}.per_tenant.{name}");
            let (account, settings) = self.tenant_settings(&at, name, raw, tenants)?;
            if settings.collect_for.is_some()
                && (c.upstream
                    || (settings.correlation_key.is_none() && c.correlation_key.is_none()))
            {
                let why = match c.upstream {
                    true => "an upstream connector has no tickets, so nothing to collect by",
                    false => NO_KEY_TO_COLLECT_BY,
                };
                return Err(self.invalid(format!("{at}.collect_for"), why));
            }
            if let Some(served) = &served
                && !served.contains_key(&account)
            {
                return Err(self.invalid(
                    at,
                    format!(
                        "tenant {:?} is not one this connector serves (its tenants: {})",
                        settings.tenant,
                        served.values().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
            per_tenant.insert(account, settings);
        }
        self.check_priorities(field, &c.priorities)?;
        let target_schema = match &c.target_schema {
            None => None,
            Some(p) => Some(self.existing_file(&format!("{field}.target_schema"), p)?),
        };
        let signing = self.signing(field, c.signing.as_ref())?;
        Ok(Connector {
            name: c.name,
            template,
            timeout: c.timeout,
            concurrency: c.concurrency.unwrap_or(DEFAULT_CONNECTOR_CONCURRENCY),
            retry,
            circuit,
            matchers,
            min_threat_rating,
            tenants: served,
            per_tenant,
            key_scopes: Arc::default(),
            assignment: Arc::default(),
            sla: None,
            priorities: c
                .priorities
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect(),
            vars: c.vars,
            target_schema,
            correlation_key: c
                .correlation_key
                .unwrap_or_else(|| "{{incidentId}}".to_string()),
            aggregate_for: c.aggregate_for,
            collect_for: c.collect_for,
            close_ticket,
            target_close_completes_all,
            reopen_within: c.reopen_within,
            ticket_id: c.ticket_id,
            ticket_url: c.ticket_url,
            idempotent_create: c.idempotent_create,
            paused: c.paused,
            error_message: c.error_message,
            callback_token: c.callback_token,
            upstream: c.upstream,
            signing,
            target,
        })
    }

    /// One tenant's settings on a connector (`at`: `connectors[i].per_tenant.NAME`): the name
    /// a configured tenant's, each setting checked as the connector's own.
    fn tenant_settings(
        &self,
        at: &str,
        name: String,
        raw: RawTenantSettings,
        tenants: &[Tenant],
    ) -> Result<(i64, TenantSettings), ConfigError> {
        let account = self.tenant_named(at, &name, tenants)?.account_id;
        if matches!(raw.aggregate_for, Some(d) if d.is_zero()) {
            return Err(self.invalid(format!("{at}.aggregate_for"), "must be more than 0"));
        }
        if let Some(d) = raw.collect_for {
            self.collect_window(&format!("{at}.collect_for"), d)?;
        }
        let matchers = match raw.matchers {
            None => None,
            Some(list) => Some(
                list.into_iter()
                    .enumerate()
                    .map(|(j, m)| self.matcher(&format!("{at}.matchers[{j}]"), m))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        let settings = TenantSettings {
            tenant: name,
            matchers,
            min_threat_rating: self.min_threat_rating(at, raw.min_threat_rating.as_deref())?,
            correlation_key: raw.correlation_key,
            aggregate_for: raw.aggregate_for,
            collect_for: raw.collect_for,
        };
        Ok((account, settings))
    }

    /// Every `${VAR}` the connector holds, expanded in place.
    pub(super) fn expand_connector(
        &self,
        field: &str,
        c: &mut RawConnector,
    ) -> Result<(), ConfigError> {
        self.expand_option(&format!("{field}.smtp_url"), &mut c.smtp_url)?;
        self.expand_option(&format!("{field}.username"), &mut c.username)?;
        self.expand_option(&format!("{field}.password"), &mut c.password)?;
        self.expand_option(&format!("{field}.callback_token"), &mut c.callback_token)?;
        if let Some(url) = &mut c.url {
            self.expand_template(&format!("{field}.url"), url)?;
        }
        self.expand_templates(&format!("{field}.headers"), &mut c.headers)?;
        self.expand_templates(&format!("{field}.vars"), &mut c.vars)?;
        for (event, request) in &mut c.requests {
            let at = format!("{field}.requests.{event}");
            if let Some(url) = &mut request.url {
                self.expand_template(&format!("{at}.url"), url)?;
            }
            self.expand_templates(&format!("{at}.headers"), &mut request.headers)?;
        }
        if let Some(mailbox) = &mut c.mailbox {
            self.expand(&format!("{field}.mailbox.username"), &mut mailbox.username)?;
            self.expand(&format!("{field}.mailbox.password"), &mut mailbox.password)?;
        }
        if let Some(lookup) = &mut c.lookup {
            self.expand_template(&format!("{field}.lookup.url"), &mut lookup.url)?;
            self.expand_templates(&format!("{field}.lookup.headers"), &mut lookup.headers)?;
        }
        if let Some(oauth2) = &mut c.oauth2 {
            let at = format!("{field}.oauth2");
            self.expand(&format!("{at}.token_url"), &mut oauth2.token_url)?;
            self.expand(&format!("{at}.client_id"), &mut oauth2.client_id)?;
            self.expand_option(&format!("{at}.client_secret"), &mut oauth2.client_secret)?;
            for (i, scope) in oauth2.scopes.iter_mut().enumerate() {
                self.expand(&format!("{at}.scopes[{i}]"), scope)?;
            }
            for (name, value) in oauth2.extra.iter_mut() {
                self.expand(&format!("{at}.extra.{name}"), value)?;
            }
        }
        if let Some(signing) = &mut c.signing {
            for (i, secret) in signing.standard_webhooks.iter_mut().enumerate() {
                self.expand(&format!("{field}.signing.standard_webhooks[{i}]"), secret)?;
            }
            let at = format!("{field}.signing.github_secret");
            self.expand_option(&at, &mut signing.github_secret)?;
        }
        Ok(())
    }

    /// Values compiled as templates (headers, vars), expanded in place.
    fn expand_templates(
        &self,
        field: &str,
        values: &mut BTreeMap<String, String>,
    ) -> Result<(), ConfigError> {
        for (name, value) in values.iter_mut() {
            self.expand_template(&format!("{field}.{name}"), value)?;
        }
        Ok(())
    }

    /// The connector's request (or message) for every event: its own, as the per-event
    /// tables `[connectors.requests.EVENT]` change it (`build` makes one from a table), or
    /// none where a table says `skip = true`.
    pub(super) fn requests<R: Clone>(
        &self,
        field: &str,
        raw: &BTreeMap<String, RawRequest>,
        default: R,
        build: impl Fn(&str, &RawRequest) -> Result<R, ConfigError>,
    ) -> Result<Requests<R>, ConfigError> {
        let mut requests = Requests::every_event(default);
        for (event, raw) in raw {
            let at = format!("{field}.requests.{event}");
            let event = match event.as_str() {
                "created" => Event::Created,
                "updated" => Event::Updated,
                "completed" => Event::Completed,
                other => {
                    return Err(self.invalid(
                        at,
                        format!("{other:?} is not an event (created, updated, completed)"),
                    ));
                }
            };
            *requests.slot(event) = if raw.skip {
                None
            } else {
                Some(build(&at, raw)?)
            };
        }
        Ok(requests)
    }

    /// An upstream connector sends only `completed`; any other sends `created`.
    fn events_sent<R>(
        &self,
        field: &str,
        upstream: bool,
        requests: &mut Requests<R>,
    ) -> Result<(), ConfigError> {
        if upstream {
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
        Ok(())
    }

    /// A collection window: more than 0, and short: incidents wait for it before anything is
    /// sent, so a long one would only delay tickets (`aggregate_for` is what keeps a ticket
    /// taking incidents for hours).
    fn collect_window(&self, field: &str, window: Duration) -> Result<(), ConfigError> {
        if window.is_zero() {
            return Err(self.invalid(
                field,
                "must be more than 0 (leave it out to send each incident at once)",
            ));
        }
        if window > MAX_COLLECT_FOR {
            return Err(self.invalid(
                field,
                format!(
                    "{} is longer than the most a collection may wait, {}: use aggregate_for to keep a ticket taking incidents for longer",
                    humantime::format_duration(window),
                    humantime::format_duration(MAX_COLLECT_FOR)
                ),
            ));
        }
        Ok(())
    }

    /// `close_ticket`, `on_target_close` and `reopen_within`, by name.
    fn ticket_policies(
        &self,
        field: &str,
        c: &RawConnector,
    ) -> Result<(ClosePolicy, bool), ConfigError> {
        let close = match c.close_ticket.as_deref() {
            None => ClosePolicy::default(),
            Some(name) => ClosePolicy::parse(name).ok_or_else(|| {
                self.invalid(
                    format!("{field}.close_ticket"),
                    format!("{name:?}: expected \"when_all_complete\" (the default), \"at_once\" or \"never\""),
                )
            })?,
        };
        let completes_all = match c.on_target_close.as_deref() {
            None | Some("complete_all") => true,
            Some("complete_one") => false,
            Some(name) => {
                return Err(self.invalid(
                    format!("{field}.on_target_close"),
                    format!(
                        "{name:?}: expected \"complete_all\" (the default) or \"complete_one\""
                    ),
                ));
            }
        };
        if matches!(c.reopen_within, Some(d) if d.is_zero()) {
            return Err(self.invalid(
                format!("{field}.reopen_within"),
                "must be more than 0 (leave it out to never reopen)",
            ));
        }
        if c.upstream
            && (c.close_ticket.is_some()
                || c.on_target_close.is_some()
                || c.reopen_within.is_some())
        {
            return Err(self.invalid(
                format!("{field}.upstream"),
                "an upstream connector has no tickets: close_ticket, on_target_close and reopen_within do not apply",
            ));
        }
        Ok((close, completes_all))
    }

    /// `ticket_id` and `ticket_url` are JSON pointers, and a link needs an id.
    fn check_ticket(&self, field: &str, c: &RawConnector) -> Result<(), ConfigError> {
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
        if let Some(lookup) = &c.lookup {
            if c.ticket_id.is_none() && c.kind == "http" {
                return Err(self.invalid(
                    format!("{field}.lookup"),
                    "needs ticket_id: a found ticket stands for the created one, by its id",
                ));
            }
            for (key, pointer) in [
                ("found_id", Some(&lookup.found_id)),
                ("found_url", lookup.found_url.as_ref()),
            ] {
                if let Some(p) = pointer
                    && !p.starts_with('/')
                {
                    return Err(self.invalid(
                        format!("{field}.lookup.{key}"),
                        format!("{p:?} is not a JSON pointer (e.g. \"/result/0/sys_id\")"),
                    ));
                }
            }
        }
        if c.idempotent_create && c.lookup.is_some() {
            return Err(self.invalid(
                format!("{field}.idempotent_create"),
                "a connector whose target dedupes creates needs no lookup; keep one of the two",
            ));
        }
        for (i, p) in c.error_message.iter().enumerate() {
            if !p.starts_with('/') {
                return Err(self.invalid(
                    format!("{field}.error_message[{i}]"),
                    format!("{p:?} is not a JSON pointer (e.g. \"/errors\")"),
                ));
            }
        }
        Ok(())
    }

    fn min_threat_rating(
        &self,
        field: &str,
        raw: Option<&str>,
    ) -> Result<Option<ThreatRating>, ConfigError> {
        let Some(r) = raw else {
            return Ok(None);
        };
        ThreatRating::parse(r).map(Some).ok_or_else(|| {
            self.invalid(
                format!("{field}.min_threat_rating"),
                format!("{r:?}: expected one of info, low, medium, high, critical"),
            )
        })
    }

    fn check_priorities(
        &self,
        field: &str,
        priorities: &BTreeMap<String, serde_json::Value>,
    ) -> Result<(), ConfigError> {
        for (rating, value) in priorities {
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
        Ok(())
    }

    /// How the connector's requests are signed; the secrets are remembered for masking.
    fn signing(&self, field: &str, raw: Option<&RawSigning>) -> Result<Signing, ConfigError> {
        let mut signing = Signing::default();
        let Some(raw) = raw else {
            return Ok(signing);
        };
        for (i, secret) in raw.standard_webhooks.iter().enumerate() {
            self.credential(secret);
            signing
                .standard
                .push(WebhookSecret::parse(secret).map_err(|e| {
                    self.invalid(
                        format!("{field}.signing.standard_webhooks[{i}]"),
                        e.to_string(),
                    )
                })?);
        }
        if let Some(g) = &raw.github_secret {
            self.credential(g);
            if g.len() < 16 {
                return Err(self.invalid(
                    format!("{field}.signing.github_secret"),
                    "must be at least 16 characters",
                ));
            }
            signing.github = Some(g.as_bytes().to_vec());
        }
        Ok(signing)
    }

    /// A connector's circuit breaker: 5 target-down attempts in a row open it for 30 s, each
    /// failed probe doubles that, up to 10 minutes; `failures = 0` turns it off.
    fn circuit(&self, field: &str, raw: &RawCircuit) -> Result<CircuitPolicy, ConfigError> {
        let policy = CircuitPolicy {
            failures: raw.failures.unwrap_or(5),
            cool_down: raw.cool_down.unwrap_or(Duration::from_secs(30)),
            max_cool_down: raw.max_cool_down.unwrap_or(Duration::from_secs(600)),
        };
        if policy.cool_down < Duration::from_secs(1) {
            return Err(self.invalid(format!("{field}.circuit.cool_down"), "must be at least 1s"));
        }
        if policy.max_cool_down < policy.cool_down {
            return Err(self.invalid(
                format!("{field}.circuit.max_cool_down"),
                "is shorter than circuit.cool_down",
            ));
        }
        Ok(policy)
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

    pub(super) fn matcher(&self, field: &str, m: RawMatcher) -> Result<Matcher, ConfigError> {
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

    /// A template file, resolved against the config's folder, that must exist.
    pub(super) fn template_path(
        &self,
        field: &str,
        path: &str,
    ) -> Result<crate::connector::TemplatePath, ConfigError> {
        let resolved = self.resolve(field, path)?;
        if !resolved.is_file() {
            return Err(self.invalid(
                field,
                format!(
                    "template file {} does not exist (paths are relative to the config file's folder)",
                    resolved.display()
                ),
            ));
        }
        Ok(crate::connector::TemplatePath {
            as_written: path.to_string(),
            resolved,
        })
    }

    pub(super) fn method(&self, field: &str, method: &str) -> Result<reqwest::Method, ConfigError> {
        reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
            .map_err(|_| self.invalid(field, format!("{method:?} is not an HTTP method")))
    }

    /// Header name → value template; names lower-cased. Values of headers that carry
    /// credentials are remembered for masking ("Bearer abc": the credential part alone, too).
    pub(super) fn headers(
        &self,
        field: &str,
        raw: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, ConfigError> {
        let mut headers = BTreeMap::new();
        for (name, value) in raw {
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(self.invalid(field, format!("{name:?} is not a valid header name")));
            }
            if crate::secrets::is_credential_header(name) && !value.contains("{{") {
                self.credential(value);
                if let Some((_, token)) = value.split_once(' ') {
                    self.credential(token.trim());
                }
            }
            headers.insert(name.to_ascii_lowercase(), value.clone());
        }
        Ok(headers)
    }
}
