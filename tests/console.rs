//! The web console (issue 18) over real HTTP against the real server and store: signing in
//! (a wrong token gets no cookie; the cookie is HttpOnly, SameSite=Strict and holds no
//! token), CSRF and cross-site refusals, a tenant-scoped token seeing only its tenants, the
//! incident list's filters, a dead delivery replayed from the console until its progress says
//! delivered, the preview naming a broken template's line, and `[console] enabled = false`.
//! What a browser does with the pages (htmx, the keyboard) is tested in headless Chromium by
//! `scripts/browser-test`.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

/// A client that keeps no cookies and follows no redirects: each step is seen as sent.
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// A form as a browser posts it (urlencoded).
fn encoded(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// Signs in with `token`: the session cookie (`name=value`).
/// The sign-in form posted with `token`, as the gateway answers it.
async fn post_sign_in(base: &str, token: &str) -> reqwest::Response {
    browser()
        .post(format!("{base}/ui/signin"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(encoded(&[("token", token)]))
        .send()
        .await
        .unwrap()
}

async fn sign_in(base: &str, token: &str) -> String {
    let r = post_sign_in(base, token).await;
    assert_eq!(r.status(), 303, "sign-in with a good token");
    assert_eq!(r.headers()["location"], "/ui/");
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    assert!(!set.contains(token), "the cookie holds no token: {set}");
    set.split(';').next().unwrap().to_string()
}

async fn page(base: &str, cookie: &str, path: &str) -> (u16, String) {
    let r = browser()
        .get(format!("{base}{path}"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// What pausing `hook` from the console answers, with `csrf` as the action's token.
async fn pause_status(base: &str, cookie: &str, csrf: Option<&str>) -> u16 {
    action(base, cookie, csrf, "/ui/connectors/hook/pause", &[])
        .await
        .0
}

/// The replay a progress answer names, and its progress once it says "Done".
async fn settled(base: &str, cookie: &str, progress: &str) -> (Option<String>, String) {
    let job = progress
        .split("/ui/dead/progress/")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .map(str::to_string);
    let done = eventually(Duration::from_secs(10), || async {
        let text = match &job {
            Some(job) => {
                page(base, cookie, &format!("/ui/dead/progress/{job}"))
                    .await
                    .1
            }
            None => progress.to_string(),
        };
        text.contains("Done").then_some(text)
    })
    .await
    .expect("the replay settles");
    (job, done)
}

/// The CSRF token a signed-in page carries.
fn csrf_of(html: &str) -> String {
    let at = html
        .find("name=\"csrf\" value=\"")
        .expect("a page with a CSRF field")
        + 19;
    html[at..at + 64].to_string()
}

async fn action(
    base: &str,
    cookie: &str,
    csrf: Option<&str>,
    path: &str,
    form: &[(&str, &str)],
) -> (u16, String) {
    let mut r = browser()
        .post(format!("{base}{path}"))
        .header("cookie", cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(encoded(form));
    if let Some(csrf) = csrf {
        r = r.header("x-csrf-token", csrf);
    }
    let r = r.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_in_sets_a_cookie_that_opens_the_pages_and_a_wrong_token_gets_none() {
    let (_receiver, _ws, config) = receiver_and_config("hook", "/hook", "").await;
    let (_gw, base) = start_gateway(&config).await;

    let r = browser().get(format!("{base}/ui/")).send().await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/ui/signin");
    let csp = r.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));

    let wrong = post_sign_in(&base, SOURCE_KEY).await;
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers().get("set-cookie").is_none());
    assert!(wrong.text().await.unwrap().contains("role=\"alert\""));

    // A forged or altered cookie opens nothing.
    let cookie = sign_in(&base, ADMIN_TOKEN).await;
    let mut forged = cookie.clone();
    forged.pop();
    forged.push(if cookie.ends_with('0') { '1' } else { '0' });
    assert_eq!(page(&base, &forged, "/ui/incidents").await.0, 303);

    for (path, heading) in [
        ("/ui/", "<h1>Overview</h1>"),
        ("/ui/incidents", "<h1>Incidents</h1>"),
        ("/ui/dead", "<h1>Dead letters</h1>"),
        ("/ui/preview", "<h1>Template preview</h1>"),
    ] {
        let (status, html) = page(&base, &cookie, path).await;
        assert_eq!(status, 200, "{path}");
        assert!(html.contains(heading), "{path}: {html}");
        assert!(html.contains("aria-current=\"page\""), "{path}");
    }
    // The assets are the binary's own.
    let (status, htmx) = page(&base, &cookie, "/ui/assets/htmx.min.js").await;
    assert_eq!(status, 200);
    assert!(htmx.contains("htmx"), "{}", &htmx[..80]);

    // Signing out drops the cookie.
    let (_, overview) = page(&base, &cookie, "/ui/").await;
    let (status, _) = action(
        &base,
        &cookie,
        None,
        "/ui/signout",
        &[("csrf", &csrf_of(&overview))],
    )
    .await;
    assert_eq!(status, 303);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_need_the_sessions_csrf_token_and_the_same_origin() {
    let (_receiver, _ws, config) = receiver_and_config("hook", "/hook", "").await;
    let (_gw, base) = start_gateway(&config).await;
    let cookie = sign_in(&base, ADMIN_TOKEN).await;
    let (_, html) = page(&base, &cookie, "/ui/").await;
    let csrf = csrf_of(&html);

    let (status, body) = action(&base, &cookie, None, "/ui/connectors/hook/pause", &[]).await;
    assert_eq!(status, 403, "{body}");
    let status = pause_status(&base, &cookie, Some("0".repeat(64).as_str())).await;
    assert_eq!(status, 403);
    // Another session's token is not this one's.
    let other = sign_in(&base, ADMIN_TOKEN).await;
    let (_, other_html) = page(&base, &other, "/ui/").await;
    assert_ne!(csrf_of(&other_html), csrf);
    let status = pause_status(&base, &cookie, Some(&csrf_of(&other_html))).await;
    assert_eq!(status, 403);
    // A cross-site request is refused even with the token.
    let r = browser()
        .post(format!("{base}/ui/connectors/hook/pause"))
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let (_, connectors) = admin_get(&base, "/v1/connectors").await;
    assert_eq!(connectors["connectors"][0]["paused"], false);

    // With it, the pause happens, and shows; then the resume.
    for (step, said, paused) in [
        ("pause", "hook paused", true),
        ("resume", "hook resumed", false),
    ] {
        let path = format!("/ui/connectors/hook/{step}");
        let (status, body) = action(&base, &cookie, Some(&csrf), &path, &[]).await;
        assert_eq!(status, 200);
        assert!(body.contains(said), "{body}");
        let (_, connectors) = admin_get(&base, "/v1/connectors").await;
        assert_eq!(connectors["connectors"][0]["paused"], paused);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scoped_token_sees_only_its_tenants_and_cannot_pause() {
    let (_receiver, _ws, config) = receiver_and_config("hook", "/hook", "").await;
    with_sources(&config, &format!("{TENANTS}{SCOPED_TOKENS}{HUB_SOURCES}"));
    let (_gw, base) = start_gateway(&config).await;
    for (id, account) in [("ACME-1", 2), ("GLOBEX-1", 7)] {
        let mut body = incident(id);
        body["accountId"] = json!(account);
        assert_eq!(post_as(&base, HUB_KEY, &body).await.status(), 202);
    }
    let cookie = sign_in(&base, ACME_READ).await;
    let (_, list) = page(&base, &cookie, "/ui/incidents").await;
    assert!(list.contains("ACME-1"), "{list}");
    assert!(!list.contains("GLOBEX-1"), "{list}");
    assert_eq!(page(&base, &cookie, "/ui/incidents/ACME-1").await.0, 200);
    assert_eq!(page(&base, &cookie, "/ui/incidents/GLOBEX-1").await.0, 404);
    let (_, overview) = page(&base, &cookie, "/ui/").await;
    assert!(overview.contains("Signed in as <strong>token:acme-customer</strong>"));
    let status = pause_status(&base, &cookie, Some(&csrf_of(&overview))).await;
    assert_eq!(status, 403);
    // A read-only token replays nothing.
    let (_, body) = action(
        &base,
        &cookie,
        Some(&csrf_of(&overview)),
        "/ui/dead/replay",
        &[("mode", "matching")],
    )
    .await;
    assert!(body.contains("access = &quot;read&quot;"), "{body}");
    // The preview is the server admin's (it shows every connector's settings).
    let (_, preview) = page(&base, &cookie, "/ui/preview").await;
    assert!(
        preview.contains("needs the server&#39;s admin token")
            || preview.contains("needs the server's admin token"),
        "{preview}"
    );
    assert!(!preview.contains("Rendered request"), "{preview}");
    let (status, _) = action(
        &base,
        &cookie,
        Some(&csrf_of(&overview)),
        "/ui/preview/render",
        &[
            ("connector", "hook"),
            ("event", "created"),
            ("incident", "{}"),
        ],
    )
    .await;
    assert_eq!(status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scoped_write_token_replays_only_its_tenants_and_learns_nothing_of_others() {
    let (receiver, _ws, config) = receiver_and_config("hook", "/hook", "").await;
    with_sources(&config, &format!("{TENANTS}{SCOPED_TOKENS}{HUB_SOURCES}"));
    receiver.script([Reply::status(400), Reply::status(400)]);
    let (_gw, base) = start_gateway(&config).await;
    for (id, account) in [("ACME-1", 2), ("GLOBEX-1", 7)] {
        let mut body = incident(id);
        body["accountId"] = json!(account);
        assert_eq!(post_as(&base, HUB_KEY, &body).await.status(), 202);
    }
    let dead = eventually(Duration::from_secs(10), || async {
        let (_, list) = admin_get(&base, "/v1/deliveries?status=dead").await;
        let rows = list["deliveries"].as_array().cloned().unwrap_or_default();
        (rows.len() == 2).then_some(rows)
    })
    .await
    .expect("both deliveries die on their 400s");
    let id_of = |incident: &str| {
        dead.iter()
            .find(|d| d["incidentId"] == incident)
            .and_then(|d| d["id"].as_str())
            .unwrap()
            .to_string()
    };
    let (acme, globex) = (id_of("ACME-1"), id_of("GLOBEX-1"));
    let cookie = sign_in(&base, ACME_WRITE).await;
    let (_, list) = page(&base, &cookie, "/ui/dead").await;
    assert!(list.contains(&acme) && !list.contains(&globex), "{list}");
    // A form naming the other tenant's delivery too: only its own is replayed, and the
    // progress counts only that one.
    let (status, progress) = action(
        &base,
        &cookie,
        Some(&csrf_of(&list)),
        "/ui/dead/replay",
        &[("mode", "selected"), ("id", &globex), ("id", &acme)],
    )
    .await;
    assert_eq!(status, 200, "{progress}");
    let (job, done) = settled(&base, &cookie, &progress).await;
    assert!(
        done.contains("Replayed 1 of 2 · delivered 1 · pending 0 · dead 0")
            && done.contains("1 not replayed"),
        "{done}"
    );
    let (_, other) = admin_get(&base, &format!("/v1/deliveries/{globex}")).await;
    assert_eq!(
        other["status"], "dead",
        "the other tenant's delivery is untouched"
    );
    // Another session (the server admin's) cannot read this one's progress.
    if let Some(job) = &job {
        let admin = sign_in(&base, ADMIN_TOKEN).await;
        let (_, theirs) = page(&base, &admin, &format!("/ui/dead/progress/{job}")).await;
        assert!(theirs.contains("no such replay"), "{theirs}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_incident_list_filters_by_connector_and_summary_text() {
    let (_receiver, ws, config) = receiver_and_config("hook", "/hook", "").await;
    // A second connector that takes only critical incidents.
    edit(&config, |t| {
        t + &http_connector(
            "pager",
            "http://127.0.0.1:9/pager",
            "min_threat_rating = \"critical\"",
        )
        .replace("TEMPLATES", &repo().join("templates").display().to_string())
    });
    let _ = ws;
    let (_gw, base) = start_gateway(&config).await;
    let mut low = incident("LOW-1");
    low["incident"]["summary"] = json!("Port scan from 10.0.0.1");
    low["incident"]["threatRating"] = json!("Low");
    let mut critical = incident("CRIT-1");
    critical["incident"]["summary"] = json!("Ransomware beacon on host-7");
    critical["incident"]["threatRating"] = json!("Critical");
    for body in [&low, &critical] {
        assert_eq!(post_incident(&base, body).await.status(), 202);
    }
    let cookie = sign_in(&base, ADMIN_TOKEN).await;
    let ids = |html: &str| {
        ["LOW-1", "CRIT-1"]
            .into_iter()
            .filter(|id| html.contains(&format!(">{id}</a>")))
            .collect::<Vec<_>>()
    };
    let (_, all) = page(&base, &cookie, "/ui/incidents").await;
    assert_eq!(ids(&all), ["LOW-1", "CRIT-1"]);
    assert!(all.contains("Ransomware beacon on host-7"));
    let (_, paged) = page(&base, &cookie, "/ui/incidents?connector=pager").await;
    assert_eq!(ids(&paged), ["CRIT-1"]);
    let (_, found) = page(&base, &cookie, "/ui/incidents?q=RANSOMWARE").await;
    assert_eq!(ids(&found), ["CRIT-1"]);
    let (_, none) = page(
        &base,
        &cookie,
        "/ui/incidents?q=ransomware&status=completed",
    )
    .await;
    assert!(none.contains("No incident matches"), "{none}");
    let (_, bad) = page(&base, &cookie, "/ui/incidents?since=yesterday").await;
    assert!(
        bad.contains("role=\"alert\"") && bad.contains("yesterday"),
        "{bad}"
    );
    // The API lists the same.
    let (_, api) = admin_get(&base, "/v1/incidents?q=ransomware&connector=pager").await;
    assert_eq!(api["incidents"][0]["incidentId"], "CRIT-1");
    assert_eq!(
        api["incidents"][0]["summary"],
        "Ransomware beacon on host-7"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_delivery_replayed_from_the_console_is_delivered_and_the_progress_says_so() {
    let (receiver, _ws, config) = receiver_and_config("hook", "/hook", "").await;
    receiver.script([Reply::status(400)]);
    let (_gw, base) = start_gateway(&config).await;
    assert_eq!(
        post_incident(&base, &incident("DEAD-1")).await.status(),
        202
    );
    let dead = eventually(Duration::from_secs(10), || async {
        let (_, list) = admin_get(&base, "/v1/deliveries?status=dead").await;
        list["deliveries"][0]["id"].as_str().map(str::to_string)
    })
    .await
    .expect("the delivery dies on its 400");
    let cookie = sign_in(&base, ADMIN_TOKEN).await;
    let (_, html) = page(&base, &cookie, "/ui/dead").await;
    assert!(
        html.contains(&format!("aria-label=\"Replay {dead}\"")),
        "{html}"
    );
    let reason = html
        .split("<td class=\"reason\">")
        .nth(1)
        .and_then(|rest| rest.split("</td>").next())
        .unwrap_or_default();
    assert!(reason.contains("400"), "the reason shows: {reason:?}");
    let (status, progress) = action(
        &base,
        &cookie,
        Some(&csrf_of(&html)),
        "/ui/dead/replay",
        &[("mode", "one"), ("id", &dead)],
    )
    .await;
    assert_eq!(status, 200);
    assert!(progress.contains("role=\"status\""), "{progress}");
    let (_, done) = settled(&base, &cookie, &progress).await;
    assert!(
        done.contains("Replayed 1 of 1 · delivered 1 · pending 0 · dead 0"),
        "{done}"
    );
    assert_eq!(receiver.received().len(), 2);
    // The incident's page shows both attempts: the 400 and the delivery.
    let (_, incident_page) = page(&base, &cookie, "/ui/incidents/DEAD-1").await;
    assert!(
        incident_page.contains("<h2 id=\"c-hook\">Connector hook</h2>"),
        "{incident_page}"
    );
    assert!(incident_page.contains("HTTP 400") && incident_page.contains("HTTP 200"));
    assert!(incident_page.contains("class=\"status delivered\">delivered<"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_preview_renders_the_request_and_names_a_broken_templates_line() {
    let (_receiver, _ws, config) = receiver_and_config("hook", "/hook", "").await;
    let (_gw, base) = start_gateway(&config).await;
    let cookie = sign_in(&base, ADMIN_TOKEN).await;
    let (_, html) = page(&base, &cookie, "/ui/preview?connector=hook&event=created").await;
    assert!(html.contains("aria-label=\"Rendered request\""));
    assert!(
        html.contains("POST http://127.0.0.1:"),
        "the request is rendered on the page"
    );
    let csrf = csrf_of(&html);
    let incident = serde_json::to_string(&sample()).unwrap();
    // The form as the page posts it: this incident, and a template when one is typed.
    let render = |incident: String, template: Option<&'static str>| {
        let (base, cookie, csrf) = (base.clone(), cookie.clone(), csrf.clone());
        async move {
            let mut form = vec![
                ("connector", "hook"),
                ("event", "created"),
                ("incident", incident.as_str()),
            ];
            form.extend(template.map(|t| ("template", t)));
            action(&base, &cookie, Some(&csrf), "/ui/preview/render", &form).await
        }
    };
    let (status, ok) = render(incident.clone(), Some("{\"id\": {{json incidentId}}}")).await;
    assert_eq!(status, 200);
    assert!(ok.contains("&quot;id&quot;: &quot;5F04D7E3"), "{ok}");
    let (_, unclosed) = render(
        incident.clone(),
        Some("{\n  \"a\": 1,\n  {{#if incident.summary}}\n}"),
    )
    .await;
    assert!(
        unclosed.contains("role=\"alert\"") && unclosed.contains("line 3"),
        "{unclosed}"
    );
    let (_, missing) = render(incident, Some("{\n  \"a\": {{json incident.nope}}\n}")).await;
    assert!(
        missing.contains("line 2") && missing.contains("incident.nope"),
        "{missing}"
    );
    let (_, not_json) = render("{\n\"a\": }".to_string(), None).await;
    assert!(not_json.contains("Incident JSON, line 2"), "{not_json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_switched_off_is_not_there() {
    let (_receiver, _ws, config) = receiver_and_config("hook", "/hook", "").await;
    edit(&config, |t| t + "\n[console]\nenabled = false\n");
    let (_gw, base) = start_gateway(&config).await;
    for path in ["/ui/", "/ui/signin", "/ui/assets/htmx.min.js"] {
        let r = browser().get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
    assert_eq!(post_sign_in(&base, ADMIN_TOKEN).await.status(), 404);
}
