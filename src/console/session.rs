//! Signing in to the console: an admin token (the server's or one scoped to tenants) typed
//! once, then a session cookie (HttpOnly, SameSite=Strict, Secure on TLS) and a CSRF token
//! every action carries.
//!
//! The cookie holds no secret and nothing is kept server-side: it names the token it signed
//! in with, when it expires, and a random nonce, under an HMAC keyed by that token. So a
//! session survives a restart and works on every gateway sharing the store, and changing (or
//! removing) the token ends every session it opened. The CSRF token is an HMAC of the
//! session's nonce under the same key: a page holds it, a cross-site form cannot know it.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::App;
use crate::auth::AdminScope;

pub const COOKIE: &str = "igw_console";
/// The header htmx sends the CSRF token in (forms send it as the field `csrf`).
pub const CSRF_HEADER: &str = "x-csrf-token";

type HmacSha256 = Hmac<Sha256>;

/// Who a signed-in request is: the token's scope, its name, and the page's CSRF token.
#[derive(Clone)]
pub struct Session {
    pub scope: AdminScope,
    /// `admin` (the server's `admin_token`) or the `[[admin_tokens]]` name.
    pub who: String,
    pub csrf: String,
}

impl Session {
    /// Whether `presented` is this session's CSRF token (constant time).
    pub fn csrf_matches(&self, presented: &str) -> bool {
        bool::from(self.csrf.as_bytes().ct_eq(presented.as_bytes()))
    }

    pub fn is_admin(&self) -> bool {
        matches!(self.scope, AdminScope::All)
    }

    pub fn may_write(&self) -> bool {
        self.scope.may_write().is_ok()
    }
}

/// The key a token's sessions are signed with (the token itself never leaves the config).
fn key(token: &str) -> [u8; 32] {
    let mut digest = Sha256::new();
    digest.update(b"incident-gateway console session\0");
    digest.update(token.as_bytes());
    digest.finalize().into()
}

fn mac(key: &[u8; 32], parts: &[&str]) -> String {
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC takes any key");
    for part in parts {
        mac.update(part.as_bytes());
        mac.update(b"\0");
    }
    crate::query::hex_bytes(&mac.finalize().into_bytes())
}

/// The secret of the token named `who`, and its scope, by the configuration in force.
fn token_of(app: &App, who: &str) -> Option<(String, AdminScope)> {
    if who == "admin" {
        return app.server.admin_token.clone().map(|t| (t, AdminScope::All));
    }
    let name = who.strip_prefix("token:")?;
    let generation = app.live.current();
    let found = generation
        .config
        .admin_tokens
        .iter()
        .find(|t| t.name == name)?
        .clone();
    Some((found.token.clone(), AdminScope::Tenants(found)))
}

/// The cookie's value for a new session of `who` (whose token is `token`).
pub fn issue(token: &str, who: &str, now_ms: i64, life_ms: i64) -> String {
    let who_hex = crate::query::hex(who);
    let expires = (now_ms + life_ms).to_string();
    let nonce = crate::query::hex_bytes(&rand::random::<[u8; 16]>());
    let tag = mac(&key(token), &["session", &who_hex, &expires, &nonce]);
    format!("{who_hex}.{expires}.{nonce}.{tag}")
}

/// The session a cookie value stands for, if its MAC holds under its token's current value
/// and it has not expired.
pub fn verify(app: &App, value: &str, now_ms: i64) -> Option<Session> {
    let mut parts = value.split('.');
    let (who_hex, expires, nonce, tag) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || expires.parse::<i64>().ok()? <= now_ms {
        return None;
    }
    let who = crate::query::unhex(who_hex)?;
    let (token, scope) = token_of(app, &who)?;
    let key = key(&token);
    let expected = mac(&key, &["session", who_hex, expires, nonce]);
    if !bool::from(expected.as_bytes().ct_eq(tag.as_bytes())) {
        return None;
    }
    Some(Session {
        scope,
        who,
        csrf: mac(&key, &["csrf", nonce]),
    })
}

/// The `Set-Cookie` of a session (`value`), or of its end (`None`).
pub fn set_cookie(value: Option<&str>, max_age_s: i64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let text = match value {
        Some(v) => format!(
            "{COOKIE}={v}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={max_age_s}{secure}"
        ),
        None => format!("{COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    };
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Whether the listener the console is on speaks TLS (its cookie is then `Secure`).
pub fn secure(app: &App) -> bool {
    let s = &app.server;
    match s.admin_listen {
        // The admin listener's own TLS (the server's applies to it only when copied there).
        Some(_) => s.admin_tls.is_some(),
        None => s.tls.is_some(),
    }
}

fn cookie_value(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

/// Not signed in: a page is sent to the sign-in form; an htmx request is told to go there
/// (`HX-Redirect`), as swapping the form into a fragment would make no sense.
pub struct SignInFirst {
    htmx: bool,
}

impl IntoResponse for SignInFirst {
    fn into_response(self) -> Response {
        if self.htmx {
            let mut r = StatusCode::UNAUTHORIZED.into_response();
            r.headers_mut()
                .insert("hx-redirect", HeaderValue::from_static("/ui/signin"));
            r
        } else {
            Redirect::to("/ui/signin").into_response()
        }
    }
}

impl FromRequestParts<Arc<App>> for Session {
    type Rejection = SignInFirst;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Session, SignInFirst> {
        let htmx = parts.headers.contains_key("hx-request");
        cookie_value(&parts.headers)
            .and_then(|v| verify(app, v, crate::model::now_ms()))
            .ok_or(SignInFirst { htmx })
    }
}

/// A request that changes something (every POST but the sign-in): it must come from this
/// origin (`Sec-Fetch-Site`, `Origin`) and carry the session's CSRF token, in the header
/// htmx sends or the form's `csrf` field; else 403.
pub fn check_action(
    session: &Session,
    headers: &HeaderMap,
    form_csrf: Option<&str>,
) -> Result<(), Refused> {
    same_origin(headers)?;
    let presented = headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .or(form_csrf)
        .unwrap_or_default();
    if session.csrf_matches(presented) {
        Ok(())
    } else {
        Err(Refused(
            "this action's CSRF token is missing or stale: reload the page and try again",
        ))
    }
}

/// A cross-site request is refused before anything else: browsers say where a request came
/// from (`Sec-Fetch-Site`), older ones at least its `Origin`.
pub fn same_origin(headers: &HeaderMap) -> Result<(), Refused> {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    if let Some(site) = text("sec-fetch-site")
        && !matches!(site, "same-origin" | "none")
    {
        return Err(Refused("cross-site requests are refused"));
    }
    if let (Some(origin), Some(host)) = (text("origin"), text("host")) {
        let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
        // `null` is a sandboxed frame or a redirect from elsewhere: not this origin.
        if origin == "null" || origin_host != host {
            return Err(Refused("cross-origin requests are refused"));
        }
    }
    Ok(())
}

/// A request refused before it acts: 403 with the reason, as text the page shows.
#[derive(Debug)]
pub struct Refused(pub &'static str);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        (StatusCode::FORBIDDEN, self.0).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cookie_value_has_four_parts_and_no_token() {
        let value = issue("s3cret-token", "admin", 1_000, 60_000);
        assert_eq!(value.split('.').count(), 4);
        assert!(!value.contains("s3cret"));
        assert!(value.starts_with(&crate::query::hex("admin")));
        // Another nonce each time: two sign-ins are two sessions.
        assert_ne!(value, issue("s3cret-token", "admin", 1_000, 60_000));
    }

    #[test]
    fn cross_site_requests_are_refused() {
        let mut h = HeaderMap::new();
        assert!(same_origin(&h).is_ok());
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(same_origin(&h).is_err());
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("gw:8080"));
        h.insert("origin", HeaderValue::from_static("http://gw:8080"));
        assert!(same_origin(&h).is_ok());
        h.insert("origin", HeaderValue::from_static("http://evil.example"));
        assert!(same_origin(&h).is_err());
        h.insert("origin", HeaderValue::from_static("null"));
        assert!(same_origin(&h).is_err());
    }
}
