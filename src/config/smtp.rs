//! `kind = "smtp"` connectors: the server, its credentials, the sender and recipients, and
//! the message each event sends, built into an [`SmtpTarget`].

use std::collections::BTreeMap;

use super::connectors::{RawConnector, RawMailbox, RawRequest, RawThreading};
use super::{ConfigError, Validator};
use crate::connector::{
    MailMessage, MailSystem, MailThreading, Mailbox, SmtpSecurity, SmtpTarget, TemplatePath,
};

/// Where the server is, from `smtp_url`.
struct Server {
    security: SmtpSecurity,
    host: String,
    port: u16,
}

impl Validator<'_> {
    /// The target, and the connector's text body template (every event's unless its table
    /// names another).
    pub(super) fn smtp_target(
        &self,
        field: &str,
        c: &RawConnector,
    ) -> Result<(SmtpTarget, TemplatePath), ConfigError> {
        // Written or not, the connector's method and headers must be valid.
        self.method(&format!("{field}.method"), &c.method)?;
        let server = self.smtp_server(field, c)?;
        let (username, password) = self.smtp_login(field, c, server.security)?;
        let from = self.mailboxes(field, c)?;
        let tls_ca_file = match &c.tls_ca_file {
            Some(f) => Some(self.existing_file(&format!("{field}.tls_ca_file"), f)?),
            None => None,
        };
        if c.url.is_some() {
            return Err(self.invalid(
                format!("{field}.url"),
                "an smtp connector takes smtp_url, not url",
            ));
        }
        // Mail carries its credentials in the SMTP dialogue (username, password).
        for (key, set) in [
            ("oauth2", c.oauth2.is_some()),
            ("tls_client_cert", c.tls_client_cert.is_some()),
            ("tls_client_key", c.tls_client_key.is_some()),
        ] {
            if set {
                return Err(self.invalid(
                    format!("{field}.{key}"),
                    "is for kind = \"http\" connectors",
                ));
            }
        }
        let template = self.template_path(&format!("{field}.template"), &c.template)?;
        self.no_mail_headers(&format!("{field}.headers"), &c.headers)?;
        let threading = match &c.threading {
            Some(raw) => Some(self.threading(field, raw)?),
            None => None,
        };
        let mailbox = match &c.mailbox {
            Some(raw) => Some(self.mailbox(field, raw)?),
            None => None,
        };
        let lookup = match (&c.lookup, &threading) {
            (Some(raw), Some(_)) => Some(self.lookup(field, raw, &BTreeMap::new())?),
            (None, _) => None,
            (Some(_), None) => {
                return Err(self.invalid(
                    format!("{field}.lookup"),
                    "on an smtp connector it learns the ticket number its system gave a mail: \
                     it needs [connectors.threading] to say which system",
                ));
            }
        };
        if threading.is_some() && lookup.is_none() && mailbox.is_none() {
            return Err(self.invalid(
                format!("{field}.threading"),
                "needs a way to learn the number the system gives a mailed ticket: a \
                 [connectors.mailbox] its acknowledgements arrive in, or a [connectors.lookup] \
                 that finds the ticket by {{ticket.ref}} (or both)",
            ));
        }
        if mailbox.is_some() && threading.is_none() {
            return Err(self.invalid(
                format!("{field}.mailbox"),
                "reads a ticketing system's acknowledgements: it needs [connectors.threading] \
                 to say which system",
            ));
        }
        if c.ticket_id.is_some() {
            return Err(self.invalid(
                format!("{field}.ticket_id"),
                "is for http connectors: a mailed ticket's number is learned by its lookup",
            ));
        }
        let subject = c.subject.clone().ok_or_else(|| {
            self.invalid(
                format!("{field}.subject"),
                "is required for an smtp connector",
            )
        })?;
        let default = MailMessage {
            template: template.clone(),
            subject,
            html_template: match &c.html_template {
                Some(t) => Some(self.template_path(&format!("{field}.html_template"), t)?),
                None => None,
            },
            target_schema: None,
        };
        let messages = self.requests(field, &c.requests, default.clone(), |at, raw| {
            self.mail_message(at, raw, &default)
        })?;
        self.check_allow_hosts(field, &c.allow_hosts)?;
        let target = SmtpTarget {
            security: server.security,
            host: server.host,
            port: server.port,
            username,
            password,
            from,
            to: c.to.clone(),
            cc: c.cc.clone(),
            subject_tag: c.subject_tag.clone(),
            tls_ca_file,
            allow_plaintext_auth: c.allow_plaintext_auth,
            messages,
            threading,
            lookup,
            lookup_egress: self.egress(field, c)?,
            mailbox,
        };
        Ok((target, template))
    }

    /// `[connectors.threading]`: which system, and what it needs.
    fn threading(&self, field: &str, raw: &RawThreading) -> Result<MailThreading, ConfigError> {
        let at = format!("{field}.threading");
        let text = |key: &str, value: &Option<String>| -> Result<Option<String>, ConfigError> {
            match value {
                Some(v)
                    if v.trim().is_empty() || v.contains(|c: char| c.is_control() || c == ']') =>
                {
                    Err(self.invalid(
                        format!("{at}.{key}"),
                        format!("{v:?}: one line of text, no ']'"),
                    ))
                }
                Some(v) => Ok(Some(v.trim().to_string())),
                None => Ok(None),
            }
        };
        let system = match raw.system.as_str() {
            "redmine" => MailSystem::Redmine,
            "rt" => MailSystem::RequestTracker {
                rt_name: text("rt_name", &raw.rt_name)?.ok_or_else(|| {
                    self.invalid(
                        format!("{at}.rt_name"),
                        "is required for Request Tracker: its $rtname, as in [rtname #N]",
                    )
                })?,
            },
            "jira" => MailSystem::Jira {
                project_key: text("project_key", &raw.project_key)?
                    .filter(|k| k.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
                    .ok_or_else(|| {
                        self.invalid(
                            format!("{at}.project_key"),
                            "is required for Jira: the project's key (SEC), upper-case letters and digits",
                        )
                    })?,
            },
            "zammad" => MailSystem::Zammad {
                ticket_hook: text("ticket_hook", &raw.ticket_hook)?
                    .unwrap_or_else(|| "Ticket#".into()),
            },
            other => {
                return Err(self.invalid(
                    format!("{at}.system"),
                    format!("{other:?}: expected \"redmine\", \"rt\", \"zammad\" or \"jira\""),
                ));
            }
        };
        let close_status = text("close_status", &raw.close_status)?.or(match system {
            MailSystem::Redmine => Some("Closed".into()),
            MailSystem::RequestTracker { .. } => Some("resolved".into()),
            MailSystem::Zammad { .. } | MailSystem::Jira { .. } => None,
        });
        if matches!(system, MailSystem::Zammad { .. } | MailSystem::Jira { .. })
            && raw.close_status.is_some()
        {
            return Err(self.invalid(
                format!("{at}.close_status"),
                "this system closes nothing by mail: close its tickets with an automation rule or in the system",
            ));
        }
        Ok(MailThreading {
            system,
            correlation_field: text("correlation_field", &raw.correlation_field)?,
            close_status,
        })
    }

    /// `[connectors.mailbox]`: an IMAP mailbox, its password never sent in clear to another
    /// host unless the admin says so.
    fn mailbox(&self, field: &str, raw: &RawMailbox) -> Result<Mailbox, ConfigError> {
        let at = format!("{field}.mailbox");
        let url = reqwest::Url::parse(&raw.imap_url)
            .map_err(|e| self.invalid(format!("{at}.imap_url"), e.to_string()))?;
        let (tls, default_port) = match url.scheme() {
            "imaps" => (true, 993),
            "imap" => (false, 143),
            other => {
                return Err(self.invalid(
                    format!("{at}.imap_url"),
                    format!("{other:?}: expected imaps:// (or imap:// on a trusted network)"),
                ));
            }
        };
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| self.invalid(format!("{at}.imap_url"), "names no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !tls && !loopback && !raw.allow_plaintext_auth {
            return Err(self.invalid(
                format!("{at}.imap_url"),
                "imap:// to another host sends the password in clear: use imaps://, or set \
                 allow_plaintext_auth = true for a trusted network",
            ));
        }
        if raw.username.trim().is_empty() {
            return Err(self.invalid(format!("{at}.username"), "must not be empty"));
        }
        if raw.folder.trim().is_empty() || raw.folder.contains(|c: char| c.is_control() || c == '"')
        {
            return Err(self.invalid(format!("{at}.folder"), "one line, no quotes"));
        }
        if raw.poll < std::time::Duration::from_secs(1) {
            return Err(self.invalid(format!("{at}.poll"), "must be at least 1s"));
        }
        Ok(Mailbox {
            tls,
            host,
            port: url.port().unwrap_or(default_port),
            username: raw.username.clone(),
            password: raw.password.clone(),
            folder: raw.folder.clone(),
            poll: raw.poll,
        })
    }

    /// Headers on a mail would be dropped (the message is built from its own fields), so
    /// they are refused rather than accepted and ignored.
    fn no_mail_headers(
        &self,
        field: &str,
        headers: &BTreeMap<String, String>,
    ) -> Result<(), ConfigError> {
        match headers.keys().next() {
            None => Ok(()),
            Some(name) => Err(self.invalid(
                format!("{field}.{name}"),
                "an smtp connector takes no extra headers: its mails carry From, To, Cc, \
                 Subject (with subject_tag), Message-ID, In-Reply-To and References",
            )),
        }
    }

    /// One event's message: what its table gives, the connector's message otherwise.
    fn mail_message(
        &self,
        at: &str,
        raw: &RawRequest,
        default: &MailMessage,
    ) -> Result<MailMessage, ConfigError> {
        self.no_mail_headers(&format!("{at}.headers"), &raw.headers)?;
        if raw.url.is_some() {
            return Err(self.invalid(
                format!("{at}.url"),
                "an smtp connector has no per-event url",
            ));
        }
        if let Some(m) = &raw.method {
            self.method(&format!("{at}.method"), m)?;
        }
        Ok(MailMessage {
            template: match &raw.template {
                Some(t) => self.template_path(&format!("{at}.template"), t)?,
                None => default.template.clone(),
            },
            subject: raw
                .subject
                .clone()
                .unwrap_or_else(|| default.subject.clone()),
            html_template: match &raw.html_template {
                Some(t) => Some(self.template_path(&format!("{at}.html_template"), t)?),
                None => default.html_template.clone(),
            },
            target_schema: match &raw.target_schema {
                Some(p) => Some(self.existing_file(&format!("{at}.target_schema"), p)?),
                None => None,
            },
        })
    }

    /// `smtp_url`: `smtp://`, `smtp+starttls://` or `smtps://`, a host, maybe a port.
    fn smtp_server(&self, field: &str, c: &RawConnector) -> Result<Server, ConfigError> {
        let at = format!("{field}.smtp_url");
        let raw_url = c
            .smtp_url
            .as_ref()
            .ok_or_else(|| self.invalid(&at, "is required for an smtp connector"))?;
        let parsed = reqwest::Url::parse(raw_url).map_err(|e| self.invalid(&at, e.to_string()))?;
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
        Ok(Server {
            security,
            host,
            port: parsed.port().unwrap_or(default_port),
        })
    }

    /// The username and password (written, or read from `password_file`): both or neither,
    /// and never sent in clear unless the admin says so.
    fn smtp_login(
        &self,
        field: &str,
        c: &RawConnector,
        security: SmtpSecurity,
    ) -> Result<(Option<String>, Option<String>), ConfigError> {
        let password = match (&c.password, &c.password_file) {
            (Some(_), Some(_)) => {
                return Err(self.invalid(
                    format!("{field}.password_file"),
                    "give password or password_file, not both",
                ));
            }
            (Some(p), None) => Some(p.clone()),
            (None, Some(file)) => {
                Some(self.read_secret_file(&format!("{field}.password_file"), file)?)
            }
            (None, None) => None,
        };
        if let Some(p) = &password {
            self.credential(p);
        }
        let username = c.username.clone();
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
        Ok((username, password))
    }

    /// `from` is one fixed mailbox; every `to` and `cc` that is not a template is one too.
    /// Returns the sender.
    fn mailboxes(&self, field: &str, c: &RawConnector) -> Result<String, ConfigError> {
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
        Ok(from)
    }
}
