//! `kind = "http"` connectors: the request each event sends and where requests may go,
//! built into an [`HttpTarget`].

use std::collections::BTreeMap;

use super::connectors::{RawConnector, RawLookup, RawRequest};
use super::{ConfigError, Validator};
use crate::connector::{Egress, HttpRequest, HttpTarget, Lookup, TemplatePath};

impl Validator<'_> {
    /// The target, and the connector's body template (every event's unless its table names
    /// another).
    pub(super) fn http_target(
        &self,
        field: &str,
        c: &RawConnector,
    ) -> Result<(HttpTarget, TemplatePath), ConfigError> {
        let method = self.method(&format!("{field}.method"), &c.method)?;
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
        let url = c.url.clone().ok_or_else(|| {
            self.invalid(format!("{field}.url"), "is required for an http connector")
        })?;
        self.check_url(&format!("{field}.url"), &url)?;
        let template = self.template_path(&format!("{field}.template"), &c.template)?;
        let headers = self.headers(&format!("{field}.headers"), &c.headers)?;
        let default = HttpRequest {
            method: method.clone(),
            url: url.clone(),
            template: template.clone(),
            headers: headers.clone(),
            target_schema: None,
        };
        let requests = self.requests(field, &c.requests, default.clone(), |at, raw| {
            self.http_request(at, raw, &default)
        })?;
        let lookup = match &c.lookup {
            None => None,
            Some(raw) => Some(self.lookup(field, raw, &headers)?),
        };
        let target = HttpTarget {
            method,
            url,
            headers,
            egress: self.egress(field, c)?,
            requests,
            lookup,
        };
        Ok((target, template))
    }

    /// `[connectors.lookup]`, its headers after `base` (the connector's).
    pub(super) fn lookup(
        &self,
        field: &str,
        raw: &RawLookup,
        base: &BTreeMap<String, String>,
    ) -> Result<Lookup, ConfigError> {
        let at = format!("{field}.lookup");
        self.check_url(&format!("{at}.url"), &raw.url)?;
        let mut headers = base.clone();
        headers.extend(self.headers(&format!("{at}.headers"), &raw.headers)?);
        Ok(Lookup {
            method: self.method(&format!("{at}.method"), &raw.method)?,
            url: raw.url.clone(),
            headers,
            found_id: raw.found_id.clone(),
            found_url: raw.found_url.clone(),
        })
    }

    /// One event's request: what its table gives, the connector's request otherwise.
    fn http_request(
        &self,
        at: &str,
        raw: &RawRequest,
        default: &HttpRequest,
    ) -> Result<HttpRequest, ConfigError> {
        let mut headers = default.headers.clone();
        headers.extend(self.headers(&format!("{at}.headers"), &raw.headers)?);
        let url = match &raw.url {
            Some(u) => {
                self.check_url(&format!("{at}.url"), u)?;
                u.clone()
            }
            None => default.url.clone(),
        };
        if raw.subject.is_some() || raw.html_template.is_some() {
            return Err(self.invalid(at, "subject and html_template are for smtp connectors"));
        }
        Ok(HttpRequest {
            method: match &raw.method {
                Some(m) => self.method(&format!("{at}.method"), m)?,
                None => default.method.clone(),
            },
            url,
            template: match &raw.template {
                Some(t) => self.template_path(&format!("{at}.template"), t)?,
                None => default.template.clone(),
            },
            headers,
            target_schema: match &raw.target_schema {
                Some(p) => Some(self.existing_file(&format!("{at}.target_schema"), p)?),
                None => None,
            },
        })
    }

    /// Where the connector may send: allowed hosts, private ranges, redirects, extra CA.
    pub(super) fn egress(&self, field: &str, c: &RawConnector) -> Result<Egress, ConfigError> {
        self.check_allow_hosts(field, &c.allow_hosts)?;
        Ok(Egress {
            allow_hosts: c
                .allow_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            allow_private: c.allow_private,
            follow_redirects: c.follow_redirects,
            tls_ca_file: match &c.tls_ca_file {
                Some(f) => Some(self.existing_file(&format!("{field}.tls_ca_file"), f)?),
                None => None,
            },
        })
    }

    /// Each allowed host is a host name, or `*.domain` for its subdomains.
    pub(super) fn check_allow_hosts(
        &self,
        field: &str,
        hosts: &[String],
    ) -> Result<(), ConfigError> {
        for (i, host) in hosts.iter().enumerate() {
            let bare = host.strip_prefix("*.").unwrap_or(host);
            if bare.is_empty() || bare.contains(['/', ':', '*', ' ']) {
                return Err(self.invalid(
                    format!("{field}.allow_hosts[{i}]"),
                    format!("{host:?}: write a host name, or *.domain for its subdomains"),
                ));
            }
        }
        Ok(())
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
}
