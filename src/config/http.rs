//! `kind = "http"` connectors: the request each event sends and where requests may go,
//! built into an [`HttpTarget`].

use std::collections::BTreeMap;

use base64::Engine as _;

use super::connectors::{RawConnector, RawLookup, RawOAuth2, RawRequest};
use super::{ConfigError, Validator};
use crate::connector::{
    ClientIdentity, Egress, HttpRequest, HttpTarget, Lookup, OAuth2, OAuth2AuthStyle, TemplatePath,
};

/// Form parameters the token request sets itself: `extra` may not change them.
const OAUTH2_RESERVED: [&str; 4] = ["grant_type", "scope", "client_id", "client_secret"];

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
        let egress = self.egress(field, c)?;
        let oauth2 = match &c.oauth2 {
            Some(raw) => {
                self.one_credential(field, c)?;
                Some(self.oauth2(&format!("{field}.oauth2"), raw, &egress)?)
            }
            None => None,
        };
        let target = HttpTarget {
            method,
            url,
            headers,
            egress,
            requests,
            lookup,
            oauth2,
        };
        Ok((target, template))
    }

    /// A connector with `[connectors.oauth2]` sends its token as `Authorization`; a header of
    /// that name too would be a second credential, one of which the gateway would drop.
    fn one_credential(&self, field: &str, c: &RawConnector) -> Result<(), ConfigError> {
        let tables = std::iter::once((format!("{field}.headers"), &c.headers))
            .chain(
                c.requests
                    .iter()
                    .map(|(event, r)| (format!("{field}.requests.{event}.headers"), &r.headers)),
            )
            .chain(
                c.lookup
                    .iter()
                    .map(|l| (format!("{field}.lookup.headers"), &l.headers)),
            );
        for (at, headers) in tables {
            if let Some(name) = headers
                .keys()
                .find(|n| n.eq_ignore_ascii_case("authorization"))
            {
                return Err(self.invalid(
                    format!("{at}.{name}"),
                    "the connector has [connectors.oauth2], whose token is its Authorization: \
                     keep one of the two credentials",
                ));
            }
        }
        Ok(())
    }

    /// `[connectors.oauth2]`, checked whole: the token URL (and that the connector's egress
    /// lets it go there), the client, the secret (remembered for masking), scopes, style and
    /// extra parameters.
    fn oauth2(&self, at: &str, raw: &RawOAuth2, egress: &Egress) -> Result<OAuth2, ConfigError> {
        let url_field = format!("{at}.token_url");
        let url = reqwest::Url::parse(raw.token_url.trim())
            .map_err(|e| self.invalid(&url_field, format!("{:?}: {e}", raw.token_url)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(self.invalid(&url_field, "scheme must be http or https"));
        }
        crate::deliver::egress::check_url(egress, &url).map_err(|refused| {
            self.invalid(
                &url_field,
                format!("the connector's egress refuses it: {}", refused.0),
            )
        })?;
        if raw.client_id.trim().is_empty() || raw.client_id.contains(char::is_control) {
            return Err(self.invalid(
                format!("{at}.client_id"),
                "must be a non-empty line of text",
            ));
        }
        let client_secret = match (&raw.client_secret, &raw.client_secret_file) {
            (Some(secret), None) => secret.clone(),
            (None, Some(file)) => {
                self.read_secret_file(&format!("{at}.client_secret_file"), file)?
            }
            (Some(_), Some(_)) => {
                return Err(self.invalid(
                    format!("{at}.client_secret_file"),
                    "give client_secret or client_secret_file, not both",
                ));
            }
            (None, None) => {
                return Err(self.invalid(
                    format!("{at}.client_secret"),
                    "is required (or client_secret_file)",
                ));
            }
        };
        self.credential(&client_secret);
        if client_secret.is_empty() {
            return Err(self.invalid(format!("{at}.client_secret"), "is empty"));
        }
        for (i, scope) in raw.scopes.iter().enumerate() {
            // RFC 6749 §3.3: scope tokens are printable ASCII without space, `"` or `\`
            // (the space separates them).
            let valid =
                |b: u8| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b);
            if scope.is_empty() || !scope.bytes().all(valid) {
                return Err(self.invalid(
                    format!("{at}.scopes[{i}]"),
                    format!("{scope:?}: a scope is one word of printable ASCII without \" or \\; list several as several items"),
                ));
            }
        }
        let auth_style = match raw.auth_style.as_deref() {
            None | Some("basic") => OAuth2AuthStyle::Basic,
            Some("body") => OAuth2AuthStyle::Body,
            Some(other) => {
                return Err(self.invalid(
                    format!("{at}.auth_style"),
                    format!("{other:?}: expected \"basic\" (the default) or \"body\""),
                ));
            }
        };
        for name in raw.extra.keys() {
            if name.trim().is_empty() || OAUTH2_RESERVED.contains(&name.as_str()) {
                return Err(self.invalid(
                    format!("{at}.extra.{name}"),
                    format!(
                        "{name:?}: extra parameters may not be empty or one the token request sets ({})",
                        OAUTH2_RESERVED.join(", ")
                    ),
                ));
            }
        }
        Ok(OAuth2 {
            token_url: url.to_string(),
            client_id: raw.client_id.clone(),
            client_secret,
            scopes: raw.scopes.clone(),
            auth_style,
            extra: raw.extra.clone(),
        })
    }

    /// `tls_client_cert` and `tls_client_key`, both or neither: read now, each checked to
    /// hold what its name says, and the key checked to belong to the certificate, so a wrong
    /// file fails the load rather than every handshake.
    fn client_identity(
        &self,
        field: &str,
        c: &RawConnector,
    ) -> Result<Option<ClientIdentity>, ConfigError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let (cert_field, key_field) = (
            format!("{field}.tls_client_cert"),
            format!("{field}.tls_client_key"),
        );
        let (cert, key) = match (&c.tls_client_cert, &c.tls_client_key) {
            (None, None) => return Ok(None),
            (Some(cert), Some(key)) => (cert, key),
            (Some(_), None) => {
                return Err(self.invalid(key_field, "is required with tls_client_cert"));
            }
            (None, Some(_)) => {
                return Err(self.invalid(cert_field, "is required with tls_client_key"));
            }
        };
        let read = |at: &str, file: &str| {
            let path = self.resolve(at, file)?;
            std::fs::read(&path)
                .map(|bytes| (path.clone(), bytes))
                .map_err(|e| self.invalid(at, format!("cannot read {}: {e}", path.display())))
        };
        let (cert_path, cert_pem) = read(&cert_field, cert)?;
        let (key_path, key_pem) = read(&key_field, key)?;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| {
                self.invalid(
                    &cert_field,
                    format!("{} is not PEM: {e}", cert_path.display()),
                )
            })?;
        if certs.is_empty() {
            return Err(self.invalid(
                &cert_field,
                format!(
                    "{} holds no certificate (PEM \"-----BEGIN CERTIFICATE-----\")",
                    cert_path.display()
                ),
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            let why = match e {
                rustls::pki_types::pem::Error::NoItemsFound => String::new(),
                other => format!(": {other}"),
            };
            self.invalid(
                &key_field,
                format!(
                    "{} holds no private key (PEM \"-----BEGIN PRIVATE KEY-----\", RSA or EC){why}",
                    key_path.display()
                ),
            )
        })?;
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        rustls::sign::CertifiedKey::from_der(certs.clone(), key.clone_key(), &provider).map_err(
            |e| {
                let why = match e {
                    rustls::Error::InconsistentKeys(_) => format!(
                        "{} is not the key of the certificate in {}",
                        key_path.display(),
                        cert_path.display()
                    ),
                    other => format!("{}: {other}", key_path.display()),
                };
                self.invalid(&key_field, why)
            },
        )?;
        let key_label = match &key {
            PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
            PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
            PrivateKeyDer::Pkcs8(_) => "PRIVATE KEY",
            _ => {
                return Err(self.invalid(
                    &key_field,
                    format!("{}: a key format the client cannot use", key_path.display()),
                ));
            }
        };
        let mut pem = String::new();
        for cert in &certs {
            pem.push_str(&pem_section("CERTIFICATE", cert.as_ref()));
        }
        pem.push_str(&pem_section(key_label, key.secret_der()));
        // The client's own parser must take it too (it knows fewer section kinds).
        reqwest::Identity::from_pem(pem.as_bytes())
            .map_err(|e| self.invalid(&key_field, format!("{}: {e}", key_path.display())))?;
        Ok(Some(ClientIdentity {
            cert_file: cert_path,
            pem: pem.into_bytes(),
        }))
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
            client_identity: self.client_identity(field, c)?,
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

/// One PEM section: `label`, then `der` in base64 lines of 64 characters.
fn pem_section(label: &str, der: &[u8]) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    // Base64 is ASCII, so every 64-byte chunk is valid UTF-8.
    for line in encoded.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
