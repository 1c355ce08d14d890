//! `[[sources]]`: who may send incidents — keys, signing secrets, callback tokens, rate
//! limits — built into the callers' own [`SourceConfig`]s.

use std::collections::HashSet;

use serde::Deserialize;

use super::tenants::Tenant;
use super::{ConfigError, Validator};
use crate::auth::{RateLimit, SourceConfig};
use crate::server::ServerConfig;
use crate::signature::WebhookSecret;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSource {
    name: String,
    api_key: Option<String>,
    api_key_file: Option<String>,
    callback_token: Option<String>,
    /// Standard Webhooks secret (`whsec_…`): requests must carry a valid signature.
    signing_secret: Option<String>,
    rate_limit: Option<RawRateLimit>,
    /// The tenants (by name) this source may post for; every account when absent.
    tenants: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    per_second: f64,
    burst: Option<u32>,
}

impl Validator<'_> {
    pub(super) fn expand_source(&self, field: &str, s: &mut RawSource) -> Result<(), ConfigError> {
        self.expand_option(&format!("{field}.api_key"), &mut s.api_key)?;
        self.expand_option(&format!("{field}.callback_token"), &mut s.callback_token)?;
        self.expand_option(&format!("{field}.signing_secret"), &mut s.signing_secret)
    }

    /// Every source: names and keys unique, no key the admin token.
    pub(super) fn sources(
        &self,
        raw: Vec<RawSource>,
        server: &ServerConfig,
        tenants: &[Tenant],
    ) -> Result<Vec<SourceConfig>, ConfigError> {
        let mut names = HashSet::new();
        let mut keys = HashSet::new();
        let mut sources = Vec::new();
        for (i, s) in raw.into_iter().enumerate() {
            let field = format!("sources[{i}]");
            if s.name.trim().is_empty() || !names.insert(s.name.clone()) {
                return Err(self.invalid(
                    format!("{field}.name"),
                    format!("{:?} is empty or used twice", s.name),
                ));
            }
            let source =
                self.source(&field, s, &mut keys, server.admin_token.as_deref(), tenants)?;
            sources.push(source);
        }
        Ok(sources)
    }

    /// One source; `keys` are the other sources' keys so far.
    fn source(
        &self,
        field: &str,
        s: RawSource,
        keys: &mut HashSet<String>,
        admin_token: Option<&str>,
        tenants: &[Tenant],
    ) -> Result<SourceConfig, ConfigError> {
        let api_key = self.api_key(field, &s)?;
        let callback_token = s.callback_token;
        let signing_secret =
            match &s.signing_secret {
                Some(secret) => {
                    // As written, to mask it wherever it could show.
                    self.credential(secret);
                    Some(WebhookSecret::parse(secret).map_err(|e| {
                        self.invalid(format!("{field}.signing_secret"), e.to_string())
                    })?)
                }
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
            if admin_token == Some(key.as_str()) {
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
        if let Some(t) = &callback_token {
            self.check_token(&format!("{field}.callback_token"), t)?;
        }
        let tenants = match &s.tenants {
            Some(names) => Some(self.binding(&format!("{field}.tenants"), names, tenants)?),
            None => None,
        };
        Ok(SourceConfig {
            name: s.name,
            api_key,
            callback_token,
            signing_secret,
            rate_limit,
            tenants,
        })
    }

    /// The source's key: written in the file, or read from the file it names.
    fn api_key(&self, field: &str, s: &RawSource) -> Result<Option<String>, ConfigError> {
        match (s.api_key.clone(), &s.api_key_file) {
            (Some(_), Some(_)) => Err(self.invalid(
                format!("{field}.api_key_file"),
                "give api_key or api_key_file, not both",
            )),
            (Some(k), None) => Ok(Some(k)),
            (None, Some(file)) => Ok(Some(
                self.read_secret_file(&format!("{field}.api_key_file"), file)?,
            )),
            (None, None) => Ok(None),
        }
    }
}
