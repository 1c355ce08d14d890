//! OAuth2 client credentials (RFC 6749 §4.4): the bearer token a connector's requests carry.
//!
//! One [`TokenSource`] per connector with `[connectors.oauth2]` asks the token endpoint for a
//! token with the connector's own HTTP client — so its egress rules, CAs and client
//! certificate apply to the token URL too — within the connector's timeout, caches it, and
//! fetches the next one before it expires. Sends that find no usable token share one fetch,
//! and share its failure: a token endpoint that is down gets one request per wave of sends,
//! not one per send. The token goes into `Authorization` at send time, after rendering, so no
//! template, `render` output or attempt record ever holds it; what a target echoes of it is
//! masked before the attempt is recorded.
//!
//! A 401 from the target drops the token it refused, and the attempt is a retry: the next
//! one fetches a new token. A 401 to a token fetched after such a refusal, before the target
//! accepted it even once, is final (dead, as any 401): the target refuses this client's tokens
//! themselves, and fetching more would loop.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::connector::{Egress, OAuth2, OAuth2AuthStyle};
use crate::secrets::Secrets;

use super::http::{SendFailure, SendResult};

/// The least time before its expiry a token is replaced: a send that takes the token just
/// before this still reaches the target, through retries of the connection, while it is valid.
const MIN_REFRESH_MARGIN: Duration = Duration::from_secs(30);

/// How long a token is used when the token response has no `expires_in`. RFC 6749 §5.1 only
/// recommends the field; five minutes keeps a server that issues short-lived tokens without
/// saying so from having its tokens used long past their end (a 401 then fetches a new one in
/// any case), and spares one that issues long-lived ones a request per send.
const UNSTATED_LIFETIME: Duration = Duration::from_secs(5 * 60);

/// The longest lifetime honoured: a token is fetched anew at least daily, and the arithmetic
/// on instants stays far from overflow whatever the server claims.
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// The most of a token endpoint's answer read (a token response is a few hundred bytes).
const MAX_TOKEN_RESPONSE: usize = 64 * 1024;

/// The longest `error_description` quoted in an attempt's error, in characters.
const DESCRIPTION_CHARS: usize = 200;

/// How long past the connector's timeout a token fetch may run before it is cut off.
const FETCH_TIMEOUT_GRACE: Duration = Duration::from_millis(250);

/// How long before its expiry a token with `lifetime` is replaced: a tenth of the lifetime,
/// at least 30 s — but never more than half of it, so a token that lives a minute or less is
/// still used for its first half instead of being fetched anew for every send.
pub fn refresh_margin(lifetime: Duration) -> Duration {
    (lifetime / 10).max(MIN_REFRESH_MARGIN).min(lifetime / 2)
}

/// A token as the endpoint issued it.
#[derive(Debug, Clone, PartialEq)]
pub struct Issued {
    pub access_token: String,
    /// `expires_in`, or [`UNSTATED_LIFETIME`], at most [`MAX_LIFETIME`].
    pub lifetime: Duration,
}

/// Reads a successful token response (RFC 6749 §5.1). Messages never quote the body: it holds
/// the token.
pub fn parse_token_response(body: &[u8]) -> Result<Issued, String> {
    let doc: serde_json::Value = serde_json::from_slice(body)
        .map_err(|_| "the token endpoint's answer is not JSON".to_string())?;
    let access_token = match doc.get("access_token").and_then(|v| v.as_str()) {
        Some(t) if !t.is_empty() => t.to_string(),
        _ => return Err("the token endpoint's answer has no access_token".into()),
    };
    // The token goes into a header as it is: visible ASCII only (RFC 6750's b64token is a
    // subset), so it can neither break the header nor be refused when the request is built.
    if !access_token.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err("the access_token has characters a header cannot carry".into());
    }
    // RFC 6749 makes token_type required, yet some servers leave it out; their tokens are
    // bearer tokens all the same. Another type (e.g. `mac`) needs a different request.
    if let Some(kind) = doc.get("token_type").and_then(|v| v.as_str())
        && !kind.eq_ignore_ascii_case("bearer")
    {
        return Err(format!(
            "token_type {:?} is not Bearer, the only kind the gateway sends",
            cut(kind, 40)
        ));
    }
    Ok(Issued {
        access_token,
        lifetime: expires_in(doc.get("expires_in")).min(MAX_LIFETIME),
    })
}

/// `expires_in` in seconds: a number, or (as some servers send it) a string of digits;
/// absent or unreadable, the unstated lifetime.
fn expires_in(value: Option<&serde_json::Value>) -> Duration {
    let seconds = match value {
        Some(serde_json::Value::Number(n)) => n.as_f64(),
        Some(serde_json::Value::String(s)) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    match seconds {
        Some(s) if s.is_finite() => Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(MAX_LIFETIME),
        _ => UNSTATED_LIFETIME,
    }
}

/// What a refusing token endpoint said: `HTTP 401: invalid_client (Client authentication
/// failed)` from RFC 6749 §5.2's `error` and `error_description`, or the status alone.
pub fn describe_refusal(status: u16, body: &[u8]) -> String {
    let doc: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let field = |name: &str| {
        doc.as_ref()
            .and_then(|d| d.get(name))
            .and_then(|v| v.as_str())
            .map(|s| cut(s.trim(), DESCRIPTION_CHARS))
            .filter(|s| !s.is_empty())
    };
    match (field("error"), field("error_description")) {
        (Some(error), Some(description)) => format!("HTTP {status}: {error} ({description})"),
        (Some(error), None) => format!("HTTP {status}: {error}"),
        (None, Some(description)) => format!("HTTP {status}: {description}"),
        (None, None) => format!("HTTP {status}"),
    }
}

/// At most `max` characters of `text`, control characters made spaces, `…` where cut.
fn cut(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .take(max)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

/// `application/x-www-form-urlencoded`, as RFC 6749 §2.3.1 and HTML define it: unreserved
/// bytes kept, space as `+`, everything else percent-encoded.
fn form_encode(text: &str) -> String {
    const FORM: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'*')
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b' ');
    percent_encoding::utf8_percent_encode(text, FORM)
        .to_string()
        .replace(' ', "+")
}

/// The token request's body: the grant, the scopes, the client when it authenticates in the
/// body, and the extra parameters.
pub fn token_request_body(settings: &OAuth2) -> String {
    let mut pairs: Vec<(&str, String)> = vec![("grant_type", "client_credentials".into())];
    if !settings.scopes.is_empty() {
        pairs.push(("scope", settings.scopes.join(" ")));
    }
    if settings.auth_style == OAuth2AuthStyle::Body {
        pairs.push(("client_id", settings.client_id.clone()));
        pairs.push(("client_secret", settings.client_secret.clone()));
    }
    for (name, value) in &settings.extra {
        pairs.push((name, value.clone()));
    }
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// `Basic base64(id:secret)`, each part form-encoded first as RFC 6749 §2.3.1 says (a `:` in
/// the id cannot then split it wrongly).
fn basic_credentials(settings: &OAuth2) -> String {
    let pair = format!(
        "{}:{}",
        form_encode(&settings.client_id),
        form_encode(&settings.client_secret)
    );
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// Why no token could be had. Messages name what the endpoint said, never the secret (the
/// attempt record masks the config's secrets besides).
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    /// Egress policy refuses the token URL (or the addresses its name resolves to): no retry
    /// helps, as for any refused request.
    #[error("the OAuth2 token endpoint: {0}")]
    Refused(String),
    /// The endpoint could not be reached, refused the client, or answered no token: the
    /// attempt is retried (credentials get rotated, endpoints come back).
    #[error("OAuth2 token: {0}")]
    Failed(String),
}

impl TokenError {
    /// The attempt's failure: nothing was sent to the target.
    pub fn into_failure(self) -> SendFailure {
        match self {
            refused @ TokenError::Refused(_) => SendFailure::Refused(refused.to_string()),
            failed @ TokenError::Failed(_) => SendFailure::NoCredential(failed.to_string()),
        }
    }
}

/// A token in use.
#[derive(Debug)]
pub struct Token {
    value: String,
    /// When the next send fetches a new one instead.
    refresh_at: Instant,
    /// Fetched because the target refused the token before it with a 401.
    after_refusal: bool,
    /// The target has answered a request carrying it with something other than 401.
    accepted: AtomicBool,
}

impl Token {
    pub fn value(&self) -> &str {
        &self.value
    }
}

/// What a 401 from the target means for the delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unauthorized {
    /// The token may have been revoked or expired early: it is dropped, and the attempt is
    /// retried with a new one.
    Stale,
    /// The target refused even a newly fetched token: final.
    Refused,
}

/// One connector's tokens: fetched, cached, refreshed, shared.
pub struct TokenSource {
    connector: String,
    settings: OAuth2,
    client: reqwest::Client,
    egress: Egress,
    timeout: Duration,
    /// The token sends use while it is fresh.
    current: Mutex<Option<Arc<Token>>>,
    /// Held while a fetch runs, so sends that need a token meanwhile wait for its outcome;
    /// holds the failure of the last fetch, if it failed.
    fetching: tokio::sync::Mutex<Option<TokenError>>,
    /// Fetches finished (however they ended): a send that waited on `fetching` while this
    /// moved on takes that fetch's outcome rather than fetching again.
    fetches: AtomicU64,
    /// The target refused the current token (401): the next one is fetched after a refusal.
    refused: AtomicBool,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("connector", &self.connector)
            .finish_non_exhaustive()
    }
}

impl TokenSource {
    /// The token source of `connector`, fetching with its `client` (built from `egress`)
    /// within its `timeout`.
    pub fn new(
        connector: &str,
        settings: OAuth2,
        client: reqwest::Client,
        egress: Egress,
        timeout: Duration,
    ) -> TokenSource {
        TokenSource {
            connector: connector.to_string(),
            settings,
            client,
            egress,
            timeout,
            current: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(None),
            fetches: AtomicU64::new(0),
            refused: AtomicBool::new(false),
        }
    }

    /// The cached token while it is fresh.
    fn fresh(&self) -> Option<Arc<Token>> {
        let current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        current
            .as_ref()
            .filter(|t| Instant::now() < t.refresh_at)
            .cloned()
    }

    /// A token to send with: the cached one while fresh, else one fetch shared by every send
    /// that needs it meanwhile.
    pub async fn token(&self) -> Result<Arc<Token>, TokenError> {
        if let Some(token) = self.fresh() {
            return Ok(token);
        }
        let seen = self.fetches.load(Ordering::Acquire);
        let mut last_failure = self.fetching.lock().await;
        // Another send fetched while this one waited: take what it got.
        if let Some(token) = self.fresh() {
            return Ok(token);
        }
        if self.fetches.load(Ordering::Acquire) != seen
            && let Some(failure) = last_failure.as_ref()
        {
            return Err(failure.clone());
        }
        let outcome = self.fetch().await;
        let result = match outcome {
            Ok(issued) => {
                tracing::debug!(
                    connector = %self.connector,
                    expires_in_s = issued.lifetime.as_secs(),
                    "fetched an OAuth2 token"
                );
                let now = Instant::now();
                let token = Arc::new(Token {
                    value: issued.access_token,
                    refresh_at: now + issued.lifetime - refresh_margin(issued.lifetime),
                    after_refusal: self.refused.swap(false, Ordering::AcqRel),
                    accepted: AtomicBool::new(false),
                });
                *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(token.clone());
                *last_failure = None;
                Ok(token)
            }
            Err(e) => {
                *last_failure = Some(e.clone());
                Err(e)
            }
        };
        self.fetches.fetch_add(1, Ordering::AcqRel);
        result
    }

    /// What the target's `status` to a request carrying `token` says of it; `Some` for a
    /// 401. A token is taken as accepted by any answer but 401 and 5xx (a proxy in front can
    /// answer 5xx without looking at it).
    pub fn answered(&self, token: &Arc<Token>, status: u16) -> Option<Unauthorized> {
        if status != 401 {
            if status < 500 {
                token.accepted.store(true, Ordering::Release);
            }
            return None;
        }
        if token.after_refusal && !token.accepted.load(Ordering::Acquire) {
            // Kept: dropping it would fetch a token per dead delivery, each refused alike.
            return Some(Unauthorized::Refused);
        }
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        // Only the token refused is dropped; a newer one fetched meanwhile stays.
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, token)) {
            *current = None;
            self.refused.store(true, Ordering::Release);
        }
        Some(Unauthorized::Stale)
    }

    /// One token request, bounded by the connector's timeout.
    async fn fetch(&self) -> Result<Issued, TokenError> {
        let url = reqwest::Url::parse(&self.settings.token_url)
            .map_err(|e| TokenError::Failed(format!("the token URL: {e}")))?;
        super::egress::check_url(&self.egress, &url).map_err(|r| TokenError::Refused(r.0))?;
        let mut request = self
            .client
            .post(url)
            .timeout(self.timeout)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(reqwest::header::ACCEPT, "application/json")
            .body(token_request_body(&self.settings));
        if self.settings.auth_style == OAuth2AuthStyle::Basic {
            let mut value =
                reqwest::header::HeaderValue::from_str(&basic_credentials(&self.settings))
                    .map_err(|_| {
                        TokenError::Failed("the client credentials cannot form a header".into())
                    })?;
            value.set_sensitive(true);
            request = request.header(reqwest::header::AUTHORIZATION, value);
        }
        let exchange = async {
            let mut response =
                request
                    .send()
                    .await
                    .map_err(|e| match super::egress::refusal(&e) {
                        Some(refused) => TokenError::Refused(refused.0.clone()),
                        None => TokenError::Failed(super::http::describe(&e)),
                    })?;
            let status = response.status().as_u16();
            let mut body = Vec::new();
            while body.len() < MAX_TOKEN_RESPONSE {
                match response.chunk().await {
                    Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                    Ok(None) => break,
                    Err(e) => {
                        return Err(TokenError::Failed(format!(
                            "HTTP {status}: reading the answer: {}",
                            super::http::describe(&e)
                        )));
                    }
                }
            }
            if !(200..300).contains(&status) {
                return Err(TokenError::Failed(describe_refusal(status, &body)));
            }
            parse_token_response(&body).map_err(TokenError::Failed)
        };
        match tokio::time::timeout(self.timeout.saturating_add(FETCH_TIMEOUT_GRACE), exchange).await
        {
            Ok(result) => result,
            Err(_) => Err(TokenError::Failed(format!(
                "timed out: the token request took longer than the connector's timeout ({})",
                humantime::format_duration(self.timeout)
            ))),
        }
    }
}

/// `sent` with every echo of `token` masked: a target may quote the credential back, and the
/// attempt record keeps its answer.
pub fn hide_token(mut sent: SendResult, token: &str) -> SendResult {
    let secrets = Secrets::new([token.to_string()]);
    sent.response_prefix = sent.response_prefix.map(|body| secrets.mask(&body));
    sent.failure = sent.failure.map(|f| f.map_text(|text| secrets.mask(&text)));
    sent
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_refreshed_a_tenth_of_its_life_early_at_least_30s_at_most_half() {
        let s = Duration::from_secs;
        // An hour: 6 minutes early.
        assert_eq!(refresh_margin(s(3600)), s(360));
        // Ten minutes: a tenth would be 60 s.
        assert_eq!(refresh_margin(s(600)), s(60));
        // Five minutes: a tenth is 30 s, the floor.
        assert_eq!(refresh_margin(s(300)), s(30));
        // Two minutes: the floor of 30 s.
        assert_eq!(refresh_margin(s(120)), s(30));
        // A minute or less: half its life, so it is still used before it is replaced.
        assert_eq!(refresh_margin(s(60)), s(30));
        assert_eq!(refresh_margin(s(2)), s(1));
        assert_eq!(refresh_margin(Duration::ZERO), Duration::ZERO);
        // Whatever the lifetime, the margin leaves some of it to use, and never exceeds it.
        for secs in [1, 7, 59, 61, 299, 301, 86_400] {
            let lifetime = s(secs);
            assert!(refresh_margin(lifetime) <= lifetime / 2, "{secs}");
        }
    }

    #[test]
    fn token_responses_are_read_leniently_where_servers_differ() {
        let issued = parse_token_response(
            br#"{"access_token":"abc.def-ghi_0~+/=","token_type":"Bearer","expires_in":1799,"scope":"useraccount"}"#,
        )
        .unwrap();
        assert_eq!(issued.access_token, "abc.def-ghi_0~+/=");
        assert_eq!(issued.lifetime, Duration::from_secs(1799));
        // expires_in as a string (older Azure AD), token_type in lower case.
        let issued = parse_token_response(
            br#"{"access_token":"t0k3n","token_type":"bearer","expires_in":"3599"}"#,
        )
        .unwrap();
        assert_eq!(issued.lifetime, Duration::from_secs(3599));
        // No expires_in, no token_type: five minutes, a bearer token all the same.
        let issued = parse_token_response(br#"{"access_token":"t0k3n"}"#).unwrap();
        assert_eq!(issued.lifetime, UNSTATED_LIFETIME);
        // A lifetime past a day is held to a day; a negative one is none.
        let issued =
            parse_token_response(br#"{"access_token":"t","expires_in":99999999999}"#).unwrap();
        assert_eq!(issued.lifetime, MAX_LIFETIME);
        let issued = parse_token_response(br#"{"access_token":"t","expires_in":-5}"#).unwrap();
        assert_eq!(issued.lifetime, Duration::ZERO);
    }

    #[test]
    fn what_is_not_a_usable_token_is_an_error_that_never_quotes_the_body() {
        for (body, expect) in [
            (&b"<html>login</html>"[..], "not JSON"),
            (br#"{"token_type":"Bearer"}"#, "no access_token"),
            (br#"{"access_token":""}"#, "no access_token"),
            (br#"{"access_token":42}"#, "no access_token"),
            (br#"{"access_token":"a b"}"#, "header"),
            (br#"{"access_token":"a\r\nX-Evil: 1"}"#, "header"),
            (
                br#"{"access_token":"secret-tok","token_type":"mac"}"#,
                "\"mac\" is not Bearer",
            ),
        ] {
            let message = parse_token_response(body).unwrap_err();
            assert!(message.contains(expect), "{message}");
            assert!(!message.contains("secret-tok"), "{message}");
        }
    }

    #[test]
    fn a_refusal_says_what_the_endpoint_said() {
        assert_eq!(
            describe_refusal(
                401,
                br#"{"error":"invalid_client","error_description":"Client authentication failed"}"#
            ),
            "HTTP 401: invalid_client (Client authentication failed)"
        );
        assert_eq!(
            describe_refusal(400, br#"{"error":"invalid_scope"}"#),
            "HTTP 400: invalid_scope"
        );
        assert_eq!(describe_refusal(503, b"<html>down</html>"), "HTTP 503");
        let long = format!(
            r#"{{"error":"server_error","error_description":"{}\nmore"}}"#,
            "x".repeat(500)
        );
        let said = describe_refusal(500, long.as_bytes());
        assert!(said.ends_with("…)") && !said.contains('\n'), "{said}");
        assert!(said.chars().count() < 250, "{said}");
    }

    fn settings(style: OAuth2AuthStyle) -> OAuth2 {
        OAuth2 {
            token_url: "https://sn.example.com/oauth_token.do".into(),
            client_id: "gw client:1".into(),
            client_secret: "s3cret&=+/".into(),
            scopes: vec!["useraccount".into(), "api:read".into()],
            auth_style: style,
            extra: [(
                "resource".to_string(),
                "https://api.example.com/".to_string(),
            )]
            .into(),
        }
    }

    #[test]
    fn the_token_request_is_form_encoded_with_the_client_where_its_style_says() {
        let basic = settings(OAuth2AuthStyle::Basic);
        assert_eq!(
            token_request_body(&basic),
            "grant_type=client_credentials&scope=useraccount+api%3Aread&resource=https%3A%2F%2Fapi.example.com%2F"
        );
        // RFC 6749 §2.3.1: id and secret form-encoded, then joined and base64-encoded.
        let header = basic_credentials(&basic);
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(header.strip_prefix("Basic ").unwrap())
            .unwrap();
        assert_eq!(decoded, b"gw+client%3A1:s3cret%26%3D%2B%2F");
        let body = token_request_body(&settings(OAuth2AuthStyle::Body));
        assert!(
            body.contains("&client_id=gw+client%3A1&client_secret=s3cret%26%3D%2B%2F&"),
            "{body}"
        );
        let mut bare = settings(OAuth2AuthStyle::Basic);
        bare.scopes.clear();
        bare.extra.clear();
        assert_eq!(token_request_body(&bare), "grant_type=client_credentials");
    }

    #[test]
    fn an_echoed_token_is_masked_in_what_is_recorded() {
        let sent = SendResult {
            status: Some(201),
            retry_after: None,
            response_prefix: Some(r#"{"auth":"Bearer eyJ0b2tlbi12345"}"#.into()),
            failure: Some(SendFailure::Said("HTTP 201: eyJ0b2tlbi12345".into())),
            latency: Duration::ZERO,
        };
        let hidden = hide_token(sent, "eyJ0b2tlbi12345");
        assert_eq!(
            hidden.response_prefix.as_deref(),
            Some(r#"{"auth":"Bearer ********"}"#)
        );
        assert_eq!(hidden.failure.unwrap().to_string(), "HTTP 201: ********");
    }

    fn token(after_refusal: bool) -> Arc<Token> {
        Arc::new(Token {
            value: "tok".into(),
            refresh_at: Instant::now() + Duration::from_secs(60),
            after_refusal,
            accepted: AtomicBool::new(false),
        })
    }

    fn source() -> TokenSource {
        TokenSource::new(
            "c",
            settings(OAuth2AuthStyle::Basic),
            reqwest::Client::new(),
            Egress {
                allow_hosts: vec![],
                allow_private: true,
                follow_redirects: 0,
                tls_ca_file: None,
                client_identity: None,
            },
            Duration::from_secs(1),
        )
    }

    #[test]
    fn a_401_drops_the_token_once_and_a_second_to_a_new_token_is_final() {
        let source = source();
        let first = token(false);
        *source.current.lock().unwrap() = Some(first.clone());
        assert_eq!(source.answered(&first, 401), Some(Unauthorized::Stale));
        assert!(source.fresh().is_none(), "the refused token is dropped");
        assert!(source.refused.load(Ordering::Acquire));
        // The token fetched next is marked as fetched after a refusal; refused too, final.
        let second = token(source.refused.swap(false, Ordering::AcqRel));
        *source.current.lock().unwrap() = Some(second.clone());
        assert_eq!(source.answered(&second, 401), Some(Unauthorized::Refused));
        assert!(
            source.fresh().is_some(),
            "kept: a new one would be refused alike"
        );
        // Once the target took it, a later 401 is a revocation: stale again.
        assert_eq!(source.answered(&second, 201), None);
        assert_eq!(source.answered(&second, 401), Some(Unauthorized::Stale));
        // A 401 to a token already replaced leaves its successor alone.
        let third = token(false);
        *source.current.lock().unwrap() = Some(third.clone());
        assert_eq!(source.answered(&first, 401), Some(Unauthorized::Stale));
        assert!(source.fresh().is_some_and(|t| Arc::ptr_eq(&t, &third)));
    }
}
