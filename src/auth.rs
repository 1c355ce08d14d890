//! Authentication: who is calling, from the request's bearer token. One constant-time token
//! check ([`TokenDigest`]) serves every caller the gateway knows:
//!
//! - [`admin`] — the admin API and the admin reserve of a shared listener (`admin_token`);
//! - [`scoped`] — an admin token scoped to tenants (`[[admin_tokens]]`): it reads, and with
//!   `access = "write"` replays, only its tenants' incidents and deliveries;
//! - [`source`] — a source sending incidents (its `api_key`);
//! - [`callback`] — a source or connector completing an incident (its `callback_token`).
//!
//! Handlers take [`Admin`] and [`Callback`] as extractors, first, so nothing else of a request
//! is looked at before its caller is known. A source is found in two steps (its key from the
//! headers, or its signature once the body is in), so ingress calls [`source`] itself.
//!
//! Tokens are compared as SHA-256 digests, so neither their content nor their length leaks
//! through timing; where several configured tokens could match, every one is compared, so
//! timing does not reveal which one did.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::connector::Connector;
use crate::problem::Problem;
use crate::signature::WebhookSecret;
use crate::store::Caller;

/// What the extractors need of the handlers' shared state (the app implements it, so this
/// module needs nothing above it).
pub trait Callers: Send + Sync {
    fn admin_token(&self) -> Option<&str>;
    /// The scoped admin token in `headers`, by the configuration in force (see [`scoped`]).
    fn scoped_admin(&self, headers: &HeaderMap) -> Option<ScopedAdmin>;
    /// Who holds the callback token in `headers` (see [`callback_caller`]), by the
    /// configuration in force.
    fn callback_caller(&self, headers: &HeaderMap) -> Option<Caller>;
    /// Counts a refused caller (the admin API's refusals are not counted).
    fn refused(&self);
}

/// The caller holds the admin token: the whole admin API (else 401, problem+json; a token
/// scoped to tenants gets 403, as this endpoint is not one of theirs).
pub struct Admin;

impl<S: Callers> FromRequestParts<Arc<S>> for Admin {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<S>) -> Result<Admin, Problem> {
        match admin_scope(state.as_ref(), &parts.headers) {
            Some(AdminScope::All) => Ok(Admin),
            Some(AdminScope::Tenants(token)) => Err(Problem::new(
                axum::http::StatusCode::FORBIDDEN,
                "scoped-token",
                "Token is scoped to tenants",
                format!(
                    "admin token {:?} is scoped to tenants ({}); this endpoint needs the \
                     server's admin_token",
                    token.name,
                    token.tenants.names().join(", ")
                ),
            )),
            None => Err(Problem::unauthorized()),
        }
    }
}

/// The caller holds the admin token or one scoped to tenants: the endpoints that show or
/// replay incidents and deliveries, each narrowed to what the scope admits.
pub struct Viewer(pub AdminScope);

impl<S: Callers> FromRequestParts<Arc<S>> for Viewer {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<S>) -> Result<Viewer, Problem> {
        admin_scope(state.as_ref(), &parts.headers)
            .map(Viewer)
            .ok_or_else(Problem::unauthorized)
    }
}

fn admin_scope<S: Callers>(state: &S, headers: &HeaderMap) -> Option<AdminScope> {
    if admin(state.admin_token(), headers) {
        return Some(AdminScope::All);
    }
    state.scoped_admin(headers).map(AdminScope::Tenants)
}

/// The scope of an admin token typed in rather than sent as a header (the console's
/// sign-in): the server's `admin_token`, or one of `tokens`; each compared in constant time,
/// every one of them.
pub fn admin_scope_of_token(
    admin_token: Option<&str>,
    tokens: &[ScopedAdmin],
    presented: &str,
) -> Option<AdminScope> {
    // Both compared, whichever matches: timing does not tell which kind of token it was.
    let is_admin = admin_token.is_some_and(|t| TokenDigest::new(t).matches(presented));
    let scoped = scoped_token(tokens, presented);
    if is_admin {
        return Some(AdminScope::All);
    }
    scoped.map(AdminScope::Tenants)
}

/// What an admin caller may see and change.
#[derive(Debug, Clone)]
pub enum AdminScope {
    /// The server's `admin_token`: everything.
    All,
    /// A token of `[[admin_tokens]]`: its tenants' incidents and deliveries only.
    Tenants(ScopedAdmin),
}

impl AdminScope {
    /// The accounts a list is narrowed to (`None`: every one, and incidents without one).
    pub fn accounts(&self) -> Option<Vec<i64>> {
        match self {
            AdminScope::All => None,
            AdminScope::Tenants(token) => Some(token.tenants.accounts()),
        }
    }

    /// Whether the caller may see an incident of `account_id`. One it may not see is
    /// answered as missing (404), so a scoped token learns nothing of other tenants' ids.
    pub fn sees(&self, account_id: Option<i64>) -> bool {
        match self {
            AdminScope::All => true,
            AdminScope::Tenants(token) => token.tenants.admits(account_id),
        }
    }

    /// The caller may change what it sees (replay, resolve), else 403.
    pub fn may_write(&self) -> Result<(), Problem> {
        match self {
            AdminScope::All => Ok(()),
            AdminScope::Tenants(token) if token.write => Ok(()),
            AdminScope::Tenants(token) => Err(Problem::new(
                axum::http::StatusCode::FORBIDDEN,
                "read-only-token",
                "Token is read-only",
                format!(
                    "admin token {:?} has access = \"read\"; replaying or resolving needs \
                     access = \"write\"",
                    token.name
                ),
            )),
        }
    }
}

/// `[[admin_tokens]]`: an admin token scoped to tenants (seed 004's customer access). `config`
/// builds it.
#[derive(Clone)]
pub struct ScopedAdmin {
    pub name: String,
    pub token: String,
    pub tenants: TenantBinding,
    /// `access = "write"`: it may replay and resolve its tenants' deliveries too.
    pub write: bool,
}

/// Debug never shows the token.
impl std::fmt::Debug for ScopedAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScopedAdmin")
            .field("name", &self.name)
            .field("token", &"********")
            .field("tenants", &self.tenants.names())
            .field("write", &self.write)
            .finish()
    }
}

/// The scoped admin token that is the request's bearer token. Every token is compared,
/// whichever matches.
pub fn scoped(tokens: &[ScopedAdmin], headers: &HeaderMap) -> Option<ScopedAdmin> {
    scoped_token(tokens, bearer(headers)?)
}

/// The scoped admin token `presented` is (from a header, or typed into the console).
pub fn scoped_token(tokens: &[ScopedAdmin], presented: &str) -> Option<ScopedAdmin> {
    let presented = TokenDigest::new(presented);
    let mut found = None;
    for t in tokens {
        if TokenDigest::new(&t.token).matches_digest(&presented) {
            found = Some(t);
        }
    }
    found.cloned()
}

/// The caller holds a callback token: a connector's (its target) or a source's (else 401,
/// counted as an authentication failure).
pub struct Callback(pub Caller);

impl<S: Callers> FromRequestParts<Arc<S>> for Callback {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<S>) -> Result<Callback, Problem> {
        match state.callback_caller(&parts.headers) {
            Some(caller) => Ok(Callback(caller)),
            None => {
                state.refused();
                Err(Problem::unauthorized())
            }
        }
    }
}

/// The connector (its target) or source whose callback token `headers` carry.
pub fn callback_caller(
    connectors: &[Connector],
    sources: &[SourceConfig],
    headers: &HeaderMap,
) -> Option<Caller> {
    match callback(connectors, sources, headers)? {
        CallbackHolder::Connector(c) => Some(Caller::Connector(c.name.clone())),
        CallbackHolder::Source(s) => Some(Caller::Source(s.name.clone())),
    }
}

/// `[[sources]]`: one caller that sends incidents. `config` builds it.
#[derive(Clone)]
pub struct SourceConfig {
    pub name: String,
    /// Bearer key; a source with a signing secret may do without one.
    pub api_key: Option<String>,
    /// Bearer token for `POST /v1/incidents/{id}/complete` on this source's incidents.
    pub callback_token: Option<String>,
    /// When set, every request must carry a valid Standard Webhooks signature by it.
    pub signing_secret: Option<WebhookSecret>,
    pub rate_limit: Option<RateLimit>,
    /// The accounts it may post for (`tenants`); every account when `None`.
    pub tenants: Option<TenantBinding>,
}

/// The accounts a source may post for, by `accountId`, with their tenants' names (for
/// messages). Built by the config from names it checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantBinding {
    /// Shared: each request that checks it takes a copy to its blocking thread.
    accounts: Arc<HashMap<i64, String>>,
}

impl TenantBinding {
    /// From `accountId` to tenant name, for the tenants a source is bound to.
    pub fn new(accounts: HashMap<i64, String>) -> TenantBinding {
        TenantBinding {
            accounts: Arc::new(accounts),
        }
    }

    /// Whether an incident's `accountId` (`None` when absent or null) is one the source may
    /// post for.
    pub fn admits(&self, account_id: Option<i64>) -> bool {
        account_id.is_some_and(|id| self.accounts.contains_key(&id))
    }

    /// The bound accounts, in ascending order (a list's filter).
    pub fn accounts(&self) -> Vec<i64> {
        let mut accounts: Vec<i64> = self.accounts.keys().copied().collect();
        accounts.sort_unstable();
        accounts
    }

    /// Account → tenant name, for each bound tenant.
    pub fn named_accounts(&self) -> std::collections::BTreeMap<i64, String> {
        self.accounts
            .iter()
            .map(|(id, name)| (*id, name.clone()))
            .collect()
    }

    /// The bound tenants' names, sorted (for an error's detail).
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.accounts.values().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}

/// Debug never shows the source's key, token or secret.
impl std::fmt::Debug for SourceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceConfig")
            .field("name", &self.name)
            .field("api_key", &"********")
            .finish()
    }
}

/// A token bucket: `per_second` on average, bursts of up to `burst`. A source's setting, so
/// it lives beside [`SourceConfig`]; `admission` keeps the buckets (and imports this module).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: u32,
}

/// The SHA-256 digest of a token, compared in constant time.
#[derive(Clone)]
pub struct TokenDigest([u8; 32]);

impl TokenDigest {
    pub fn new(token: &str) -> TokenDigest {
        TokenDigest(Sha256::digest(token.as_bytes()).into())
    }

    /// Whether `presented` is this token.
    pub fn matches(&self, presented: &str) -> bool {
        self.matches_digest(&TokenDigest::new(presented))
    }

    fn matches_digest(&self, presented: &TokenDigest) -> bool {
        bool::from(self.0.ct_eq(&presented.0))
    }
}

/// A digest is derived from a secret: never printed.
impl std::fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenDigest(********)")
    }
}

/// The token of an `Authorization: Bearer <token>` header (the scheme in any case).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Whether the request carries the admin token. Always false without one configured: the
/// admin API is then off.
pub fn admin(admin_token: Option<&str>, headers: &HeaderMap) -> bool {
    match (admin_token, bearer(headers)) {
        (Some(expected), Some(presented)) => TokenDigest::new(expected).matches(presented),
        _ => false,
    }
}

/// The source whose API key is the request's bearer token.
pub fn source<'a>(sources: &'a [SourceConfig], headers: &HeaderMap) -> Option<&'a SourceConfig> {
    let presented = TokenDigest::new(bearer(headers)?);
    let mut found = None;
    // No early exit: every key is compared, whichever matches.
    for source in sources {
        if source
            .api_key
            .as_deref()
            .is_some_and(|key| TokenDigest::new(key).matches_digest(&presented))
        {
            found = Some(source);
        }
    }
    found
}

/// Who holds a callback token.
#[derive(Debug, Clone, Copy)]
pub enum CallbackHolder<'a> {
    Connector(&'a Connector),
    Source(&'a SourceConfig),
}

/// Whose callback token the request's bearer token is: a connector's before a source's.
pub fn callback<'a>(
    connectors: &'a [Connector],
    sources: &'a [SourceConfig],
    headers: &HeaderMap,
) -> Option<CallbackHolder<'a>> {
    let presented = TokenDigest::new(bearer(headers)?);
    let matches = |token: &str| TokenDigest::new(token).matches_digest(&presented);
    let mut found = None;
    // No early exit: every token is compared, whichever matches.
    for c in connectors {
        if c.callback_token.as_deref().is_some_and(matches) {
            found = Some(CallbackHolder::Connector(c));
        }
    }
    for s in sources {
        if s.callback_token.as_deref().is_some_and(matches) {
            found = found.or(Some(CallbackHolder::Source(s)));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(authorization: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(authorization).unwrap(),
        );
        h
    }

    #[test]
    fn a_token_matches_itself_only() {
        let digest = TokenDigest::new("s3cret-token");
        assert!(digest.matches("s3cret-token"));
        assert!(!digest.matches("s3cret-tokem"));
        assert!(!digest.matches("S3CRET-TOKEN"));
    }

    #[test]
    fn tokens_of_other_lengths_do_not_match() {
        let digest = TokenDigest::new("s3cret-token");
        assert!(!digest.matches("s3cret-token-and-more"));
        assert!(!digest.matches("s3cret"));
        assert!(!digest.matches(""));
    }

    #[test]
    fn the_empty_token_matches_only_the_empty_token() {
        let digest = TokenDigest::new("");
        assert!(digest.matches(""));
        assert!(!digest.matches(" "));
        assert!(!digest.matches("x"));
    }

    #[test]
    fn bearer_reads_the_token_of_a_bearer_header() {
        assert_eq!(bearer(&headers("Bearer abc")), Some("abc"));
        assert_eq!(bearer(&headers("Bearer  abc ")), Some("abc"));
        assert_eq!(bearer(&headers("Basic abc")), None);
        assert_eq!(bearer(&headers("Bearerabc")), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }

    #[test]
    fn the_scheme_is_case_insensitive() {
        for scheme in ["bearer", "BEARER", "BeArEr"] {
            assert_eq!(bearer(&headers(&format!("{scheme} abc"))), Some("abc"));
        }
    }

    #[test]
    fn admin_needs_a_configured_token_and_the_header() {
        assert!(admin(Some("adm"), &headers("Bearer adm")));
        assert!(!admin(Some("adm"), &headers("Bearer adn")));
        assert!(!admin(Some("adm"), &HeaderMap::new()));
        // No admin token configured: the admin API is off, even for an empty bearer.
        assert!(!admin(None, &headers("Bearer adm")));
        assert!(!admin(None, &headers("Bearer ")));
    }

    fn source_config(name: &str, api_key: Option<&str>) -> SourceConfig {
        SourceConfig {
            name: name.into(),
            api_key: api_key.map(Into::into),
            callback_token: None,
            signing_secret: None,
            rate_limit: None,
            tenants: None,
        }
    }

    #[test]
    fn a_source_is_found_by_its_key_among_all_sources() {
        let sources = [
            source_config("a", Some("key-a")),
            source_config("signed", None),
            source_config("b", Some("key-b")),
        ];
        let found = |h: &HeaderMap| source(&sources, h).map(|s| s.name.as_str());
        assert_eq!(found(&headers("Bearer key-a")), Some("a"));
        assert_eq!(found(&headers("bearer key-b")), Some("b"));
        assert_eq!(found(&headers("Bearer key-c")), None);
        assert_eq!(found(&headers("Bearer ")), None);
        assert_eq!(found(&HeaderMap::new()), None);
    }

    #[test]
    fn the_debug_form_hides_the_digest() {
        let shown = format!("{:?}", TokenDigest::new("s3cret"));
        assert_eq!(shown, "TokenDigest(********)");
        assert!(!shown.contains("s3cret"));
    }
}
