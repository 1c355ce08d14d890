//! The web console under `/ui/`: what happened to an incident, which connector is failing,
//! what a template will send. Served by the gateway itself, on the admin listener when there
//! is one, behind the admin credentials ([`session`]); `[console] enabled = false` turns it
//! off (every `/ui/` path is then 404).
//!
//! Pages are HTML rendered here (maud: escaped by default, checked when the gateway is
//! built) and enhanced by htmx, which the binary carries (`assets/console/`): no build step,
//! nothing loaded from elsewhere, and every page still works as plain links and forms. Each
//! page reads the store through the same calls as the admin API, narrowed to the session's
//! tenants, a page at a time (keyset paging), so a store of 100,000 incidents pages as fast
//! as an empty one.
//!
//! - [`overview`] — rates, queues, dead letters, circuits, pauses, SLA breaches; refreshes.
//! - [`incidents`] — the list with filters; an incident's deliveries and attempts.
//! - [`dead`] — dead letters per connector; replay one, a selection, or all matching.
//! - [`preview`] — a connector's request for an example or pasted incident, as you type.

pub mod dead;
pub mod incidents;
pub mod overview;
pub mod preview;
pub mod session;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{DOCTYPE, Markup, html};

use crate::App;
use session::Session;

/// The console's routes, each behind [`guard`].
pub fn routes(app: &Arc<App>) -> Router<Arc<App>> {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(overview::page))
        .route("/ui/overview/live", get(overview::live))
        .route("/ui/signin", get(sign_in_form).post(sign_in))
        .route("/ui/signout", post(sign_out))
        .route("/ui/assets/{name}", get(asset))
        .route("/ui/connectors/{name}/pause", post(overview::pause))
        .route("/ui/connectors/{name}/resume", post(overview::resume))
        .route("/ui/incidents", get(incidents::list))
        .route("/ui/incidents/{id}", get(incidents::show))
        .route("/ui/dead", get(dead::list))
        .route("/ui/dead/replay", post(dead::replay))
        .route("/ui/dead/progress/{job}", get(dead::progress))
        .route("/ui/preview", get(preview::page))
        .route("/ui/preview/render", post(preview::render))
        .layer(axum::middleware::from_fn_with_state(app.clone(), guard))
}

/// Every console response: 404 when the console is off; else the page's own answer with
/// headers that keep it to itself — no framing, no inline script, no referrer elsewhere, no caching.
async fn guard(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    if !app.live.current().config.console.enabled {
        return crate::problem::Problem::not_found("the console is off ([console] enabled)")
            .into_response();
    }
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // same-origin, not no-referrer: under no-referrer a browser sends `Origin: null` with
    // the pages' own form posts, which the same-origin check refuses.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// The files the pages load, built into the binary: htmx 2.0.11 (npm `htmx.org`, 0BSD;
/// `scripts/console-assets` fetches and checks it), and our stylesheet and script.
const ASSETS: [(&str, &str, &str); 3] = [
    (
        "htmx.min.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/console/htmx.min.js"),
    ),
    (
        "console.css",
        "text/css; charset=utf-8",
        include_str!("../../assets/console/console.css"),
    ),
    (
        "console.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/console/console.js"),
    ),
];

async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, kind, body)) => (
            [
                (header::CONTENT_TYPE, *kind),
                (header::CACHE_CONTROL, "max-age=3600"),
            ],
            *body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}

/// The pages a signed-in admin moves between (path, name).
const NAV: [(&str, &str); 4] = [
    ("/ui/", "Overview"),
    ("/ui/incidents", "Incidents"),
    ("/ui/dead", "Dead letters"),
    ("/ui/preview", "Template preview"),
];

/// The page around `content`: head, skip link, navigation (with `current` marked), the
/// signed-in token and sign-out. htmx sends the CSRF token with every request it makes.
pub fn page(session: &Session, current: &str, title: &str, content: Markup) -> Markup {
    let csrf_headers = serde_json::json!({ "X-CSRF-Token": session.csrf }).to_string();
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body hx-headers=(csrf_headers) {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    span.brand { "incident-gateway" }
                    nav aria-label="Console" {
                        ul {
                            @for (path, name) in NAV {
                                li {
                                    @if path == current {
                                        a href=(path) aria-current="page" { (name) }
                                    } @else {
                                        a href=(path) { (name) }
                                    }
                                }
                            }
                        }
                    }
                    form.signout method="post" action="/ui/signout" {
                        span.who { "Signed in as " strong { (session.who) } }
                        input type="hidden" name="csrf" value=(session.csrf);
                        button type="submit" { "Sign out" }
                    }
                }
                main #main tabindex="-1" { (content) }
            }
        }
    }
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            // No eval, no inline scripts or styles: the CSP forbids them, htmx is told so.
            meta name="htmx-config"
                content=r#"{"includeIndicatorStyles":false,"allowEval":false,"allowScriptTags":false,"historyCacheSize":0}"#;
            title { (title) " · incident-gateway" }
            link rel="stylesheet" href="/ui/assets/console.css";
            // No favicon to fetch (a 404 in every log otherwise).
            link rel="icon" href="data:,";
            script src="/ui/assets/htmx.min.js" defer {}
            script src="/ui/assets/console.js" defer {}
        }
    }
}

/// `GET /ui/signin`.
async fn sign_in_form(State(app): State<Arc<App>>) -> Markup {
    sign_in_page(&app, None)
}

fn sign_in_page(app: &App, error: Option<&str>) -> Markup {
    let open =
        app.server.admin_token.is_some() || !app.live.current().config.admin_tokens.is_empty();
    html! {
        (DOCTYPE)
        html lang="en" {
            (head("Sign in"))
            body.signin {
                main #main {
                    h1 { "Sign in" }
                    p { "incident-gateway console. Sign in with the server's admin token or an admin token scoped to tenants." }
                    @if !open {
                        p role="alert" { "No admin token is configured (server.admin_token or [[admin_tokens]]): the console cannot be signed in to." }
                    }
                    @if let Some(error) = error {
                        p.error role="alert" { (error) }
                    }
                    form method="post" action="/ui/signin" {
                        label for="token" { "Admin token" }
                        input #token type="password" name="token" autocomplete="current-password" required autofocus;
                        button type="submit" { "Sign in" }
                    }
                }
            }
        }
    }
}

/// The most a console form may send (the preview's incident and template are bigger, and
/// read under the server's body limit).
pub const FORM_LIMIT: usize = 64 * 1024;

/// A urlencoded body read within `limit` (and the ingress's body budget), as pairs.
pub async fn read_form(
    app: &App,
    headers: &HeaderMap,
    body: axum::body::Body,
    limit: usize,
) -> Result<Vec<(String, String)>, crate::problem::Problem> {
    let (bytes, _reservation) = app.read_body(None, headers, body, limit).await?;
    Ok(form_urlencoded::parse(&bytes).into_owned().collect())
}

/// A query string's pairs (a page's filters), decoded.
pub fn query_pairs(raw: Option<String>) -> Vec<(String, String)> {
    form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

/// The form of an action (every POST but the sign-in), read within `limit`, once its CSRF
/// token and origin are checked ([`session::check_action`]); else the answer to send.
pub async fn action_form(
    app: &App,
    session: &Session,
    headers: &HeaderMap,
    body: axum::body::Body,
    limit: usize,
) -> Result<Vec<(String, String)>, Response> {
    let form = read_form(app, headers, body, limit)
        .await
        .map_err(IntoResponse::into_response)?;
    session::check_action(session, headers, field(&form, "csrf"))
        .map_err(IntoResponse::into_response)?;
    Ok(form)
}

/// What a path segment or query value escapes: all but the unreserved characters (RFC 3986),
/// so ids with `-`, `.`, `_` and `~` read in a copied URL as they are.
const ESCAPED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A path segment or query value, percent-encoded.
pub fn enc(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, ESCAPED).to_string()
}

/// An incident's page.
pub fn incident_href(id: &str) -> String {
    format!("/ui/incidents/{}", enc(id))
}

/// The first value of `name` in a form.
pub fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// `POST /ui/signin`: a right token sets the session cookie and goes to the overview; a
/// wrong one shows the form again (401), counted as a refused caller.
async fn sign_in(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    if let Err(refused) = session::same_origin(&headers) {
        return refused.into_response();
    }
    let form = match read_form(&app, &headers, body, FORM_LIMIT).await {
        Ok(form) => form,
        Err(r) => return r.into_response(),
    };
    let token = field(&form, "token").unwrap_or_default().trim();
    let generation = app.live.current();
    let scope = crate::auth::admin_scope_of_token(
        app.server.admin_token.as_deref(),
        &generation.config.admin_tokens,
        token,
    );
    let Some(scope) = scope else {
        crate::metrics::Metrics::inc(&app.metrics.auth_failures);
        tracing::info!("console sign-in refused: not an admin token");
        return (
            StatusCode::UNAUTHORIZED,
            sign_in_page(&app, Some("That is not an admin token of this gateway.")),
        )
            .into_response();
    };
    let who = match &scope {
        crate::auth::AdminScope::All => "admin".to_string(),
        crate::auth::AdminScope::Tenants(t) => format!("token:{}", t.name),
    };
    let life = generation.config.console.session;
    let life_ms = i64::try_from(life.as_millis()).unwrap_or(i64::MAX);
    let value = session::issue(token, &who, crate::model::now_ms(), life_ms);
    tracing::info!(who = %who, "console sign-in");
    let mut response = Redirect::to("/ui/").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        session::set_cookie(Some(&value), life_ms / 1000, session::secure(&app)),
    );
    response
}

/// `POST /ui/signout`: the cookie is dropped (the session itself ends when it expires or
/// its token changes; the cookie is all a browser held of it).
async fn sign_out(
    State(app): State<Arc<App>>,
    session: Session,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    if let Err(refused) = action_form(&app, &session, &headers, body, FORM_LIMIT).await {
        return refused;
    }
    let mut response = Redirect::to("/ui/signin").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        session::set_cookie(None, 0, session::secure(&app)),
    );
    response
}

/// A time as the pages show it: UTC, to the second, without the `T`.
pub fn when(rfc3339: &str) -> String {
    rfc3339
        .replace('T', " ")
        .chars()
        .take(19)
        .collect::<String>()
        + " UTC"
}

/// A time in ms as the pages show it.
pub fn when_ms(ms: i64) -> String {
    when(&crate::model::rfc3339(ms))
}

/// Seconds as a short duration (`42 s`, `3 min`, `2 h 5 min`).
pub fn ago(seconds: i64) -> String {
    match seconds {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

/// A message an action answers with, for the status region (`role="status"`).
pub fn notice(text: &str) -> Markup {
    html! { p.notice role="status" { (text) } }
}

/// An error shown where the page's content would be.
pub fn failure(text: &str) -> Markup {
    html! { p.error role="alert" { (text) } }
}
