//! The API contract through the real server: the document it serves is `schemas/openapi.yaml`,
//! every operation it documents is routed, queries are strict, and the lists filter and page
//! as documented.

mod common;

use common::*;
use serde_json::Value;

/// The document as the repository holds it, parsed here independently of the gateway.
fn the_file() -> Value {
    let text = std::fs::read_to_string(repo().join("schemas/openapi.yaml")).unwrap();
    serde_saphyr::from_str(&text).unwrap()
}

async fn get(url: &str) -> reqwest::Response {
    client().get(url).send().await.unwrap()
}

#[tokio::test]
async fn every_listener_serves_the_document_as_the_file_holds_it() {
    let ws = Workspace::new();
    let config = ws.config("127.0.0.1:0", "");
    with_server(&config, "admin_listen = \"127.0.0.1:0\"");
    let gw = start_in_process(&config).await;
    let admin = format!("http://{}", gw.admin_addr.expect("admin listener"));
    let ingress = format!("http://{}", gw.addr);
    let file = the_file();
    assert_eq!(file["openapi"], "3.1.0");
    assert_eq!(file["info"]["version"], env!("CARGO_PKG_VERSION"));
    for base in [&ingress, &admin] {
        let r = get(&format!("{base}/openapi.json")).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/json");
        let served: Value = r.json().await.unwrap();
        assert_eq!(served, file, "{base}");
        // The incident schema it refers to, relative to itself, is served beside it.
        let r = get(&format!("{base}/incident.schema.json")).await;
        assert_eq!(r.headers()["content-type"], "application/schema+json");
        let schema: Value = r.json().await.unwrap();
        let shipped: Value = serde_json::from_str(
            &std::fs::read_to_string(repo().join("schemas/incident.schema.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(schema, shipped);
    }
    let body = &file["paths"]["/v1/incidents"]["post"]["requestBody"]["content"]["application/json"]
        ["schema"]["oneOf"][0]["$ref"];
    assert_eq!(body, "incident.schema.json");
    gw.stop().await.unwrap();
}

/// Each documented operation reaches a handler (with its path parameters filled in): nothing
/// the document promises falls through to "no such endpoint" or "method not allowed".
#[tokio::test]
async fn every_documented_operation_is_served() {
    let (_receiver, _ws, gw, base) = receiver_and_gateway("ticketing", "/t", "").await;
    let file = the_file();
    let paths = file["paths"].as_object().unwrap();
    assert!(paths.len() >= 12, "{:?}", paths.keys());
    for (path, operations) in paths {
        let concrete = path
            .replace("{incident_id}", "NO-SUCH-INCIDENT")
            .replace("{delivery_id}", "msg_none");
        for method in operations.as_object().unwrap().keys() {
            let r = admin(method.to_uppercase().parse().unwrap(), &base, &concrete).await;
            let status = r.status().as_u16();
            let problem: Value = r.json().await.unwrap_or(Value::Null);
            assert_ne!(status, 405, "{method} {path}: {problem}");
            assert_ne!(
                problem["detail"], "no such endpoint",
                "{method} {path} is documented but not routed"
            );
        }
    }
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn an_unknown_or_bad_query_parameter_is_a_400_naming_it() {
    let (_receiver, _ws, gw, base) = receiver_and_gateway("ticketing", "/t", "").await;
    post_json(&base, &incident("Q-1")).await;
    for (path, parameter) in [
        // A misspelt filter used to list everything.
        ("/v1/deliveries?incidnet=Q-1", "incidnet"),
        ("/v1/deliveries?severity=high", "severity"),
        ("/v1/incidents?incident=Q-1", "incident"),
        ("/v1/deliveries?status=dead&status=pending", "status"),
        ("/v1/deliveries?status=lost", "status"),
        ("/v1/incidents?status=dead", "status"),
        ("/v1/deliveries?limit=0", "limit"),
        ("/v1/deliveries?limit=1001", "limit"),
        ("/v1/incidents?limit=ten", "limit"),
        ("/v1/deliveries?since=yesterday", "since"),
        ("/v1/incidents?until=2026-13-01T00:00:00Z", "until"),
        ("/v1/deliveries?cursor=i1.41", "cursor"),
        ("/v1/incidents?cursor=d1.1", "cursor"),
        ("/v1/incidents?cursor=i1.4", "cursor"),
    ] {
        let r = admin(reqwest::Method::GET, &base, path).await;
        assert_eq!(r.status(), 400, "{path}");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        let problem: Value = r.json().await.unwrap();
        assert_eq!(problem["parameter"], parameter, "{path}: {problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains(parameter),
            "{problem}"
        );
    }
    // The caller is known before the query is read.
    let r = client()
        .get(format!("{base}/v1/deliveries?incidnet=Q-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    gw.stop().await.unwrap();
}

/// An endpoint that takes no query refuses one (it used to ignore it), after the caller's
/// credential; the probes, the scrape and the document ignore one.
#[tokio::test]
async fn an_endpoint_without_parameters_refuses_a_query() {
    use reqwest::Method;
    let (_receiver, _ws, gw, base) = receiver_and_gateway("ticketing", "/t", "").await;
    let delivery = first_delivery(&accepted(&base, &incident("Q-2")).await);
    let cases = [
        (
            Method::GET,
            "/v1/incidents/Q-2?verbose=1".to_string(),
            "verbose",
        ),
        (
            Method::GET,
            format!("/v1/deliveries/{delivery}?attempts=all"),
            "attempts",
        ),
        (
            Method::POST,
            format!("/v1/deliveries/{delivery}/replay?force=1"),
            "force",
        ),
        (
            Method::POST,
            format!("/v1/deliveries/{delivery}/resolve?id=7"),
            "id",
        ),
        (
            Method::POST,
            "/v1/deliveries/replay?connector=ticketing".to_string(),
            "connector",
        ),
        (
            Method::POST,
            "/v1/admin/reload?dry_run=true".to_string(),
            "dry_run",
        ),
        (
            Method::GET,
            "/v1/connectors?name=ticketing".to_string(),
            "name",
        ),
        (
            Method::POST,
            "/v1/connectors/ticketing/pause?reason=x".to_string(),
            "reason",
        ),
        (
            Method::POST,
            "/v1/connectors/ticketing/resume?now=1".to_string(),
            "now",
        ),
    ];
    for (method, path, parameter) in cases {
        let p = problem(admin(method, &base, &path).await, 400).await;
        assert_eq!(p["parameter"], parameter, "{path}: {p}");
        assert!(
            p["detail"]
                .as_str()
                .unwrap()
                .contains("takes no query parameters"),
            "{p}"
        );
        // Without the token: 401, the query unread.
        let r = client().get(format!("{base}{path}")).send().await.unwrap();
        assert!(
            [401, 405].contains(&r.status().as_u16()),
            "{path}: {}",
            r.status()
        );
    }
    // Ingest: the incident is not taken.
    let r = client()
        .post(format!("{base}/v1/incidents?tenant=a"))
        .bearer_auth(SOURCE_KEY)
        .header("content-type", "application/json")
        .body(incident("Q-3").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(problem(r, 400).await["parameter"], "tenant");
    let (status, _) = admin_get(&base, "/v1/incidents/Q-3").await;
    assert_eq!(
        status, 404,
        "an incident posted with a refused query was stored"
    );
    // Probes, the scrape and the document take a query and ignore it.
    for path in ["/healthz?x=1", "/readyz?x=1", "/openapi.json?x=1"] {
        assert_eq!(get(&format!("{base}{path}")).await.status(), 200, "{path}");
    }
    assert_eq!(
        admin(Method::GET, &base, "/metrics?x=1").await.status(),
        200
    );
    gw.stop().await.unwrap();
}

/// All pages of `path` (a list endpoint with its query), following `next_cursor`.
async fn pages(base: &str, path: &str, key: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut url = path.to_string();
    loop {
        let (status, v) = admin_get(base, &url).await;
        assert_eq!(status, 200, "{url}: {v}");
        let id = if key == "deliveries" {
            "id"
        } else {
            "incidentId"
        };
        out.push(
            v[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x[id].as_str().unwrap().to_string())
                .collect(),
        );
        match v["next_cursor"].as_str() {
            Some(cursor) => {
                let sep = if path.contains('?') { '&' } else { '?' };
                url = format!("{path}{sep}cursor={cursor}");
            }
            None => {
                assert!(v["next_cursor"].is_null(), "{v}");
                return out;
            }
        }
    }
}

#[tokio::test]
async fn the_lists_filter_and_page_newest_first() {
    let (_receiver, _ws, gw, base) = receiver_and_gateway("ticketing", "/t", "").await;
    let mut accepted = Vec::new();
    let mut boundary = String::new();
    for i in 0..5 {
        if i == 3 {
            tokio::time::sleep(std::time::Duration::from_millis(3)).await;
            boundary = chrono::Utc::now()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                .replace('+', "%2B");
        }
        // Each in a millisecond of its own (the time filters compare milliseconds).
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
        let id = format!("LIST-{i}");
        let r = post_json(&base, &incident(&id)).await;
        accepted.push((id, first_delivery(&r)));
    }
    let newest_first: Vec<String> = accepted.iter().rev().map(|(_, d)| d.clone()).collect();

    // Today's answer shape stays: `deliveries`, now with `next_cursor` beside it.
    let (_, v) = admin_get(&base, "/v1/deliveries").await;
    assert_eq!(v["deliveries"].as_array().unwrap().len(), 5);
    assert!(v["next_cursor"].is_null());
    assert_eq!(
        pages(&base, "/v1/deliveries?limit=2", "deliveries").await,
        [
            newest_first[0..2].to_vec(),
            newest_first[2..4].to_vec(),
            newest_first[4..].to_vec()
        ]
    );
    let of_one = pages(&base, "/v1/deliveries?incident=LIST-2", "deliveries").await;
    assert_eq!(of_one, [vec![accepted[2].1.clone()]]);
    let connector = pages(
        &base,
        "/v1/deliveries?connector=ticketing&limit=4",
        "deliveries",
    )
    .await;
    assert_eq!(connector.concat().len(), 5);
    let none = pages(&base, "/v1/deliveries?connector=elsewhere", "deliveries").await;
    assert_eq!(none, [Vec::<String>::new()]);
    let since = pages(
        &base,
        &format!("/v1/deliveries?since={boundary}"),
        "deliveries",
    )
    .await;
    assert_eq!(since.concat(), newest_first[..2].to_vec());
    let until = pages(
        &base,
        &format!("/v1/deliveries?until={boundary}&limit=1"),
        "deliveries",
    )
    .await;
    assert_eq!(until.concat(), newest_first[2..].to_vec());

    let incidents = pages(&base, "/v1/incidents?limit=3", "incidents").await;
    assert_eq!(
        incidents,
        [vec!["LIST-4", "LIST-3", "LIST-2"], vec!["LIST-1", "LIST-0"]]
    );
    let (_, v) = admin_get(&base, "/v1/incidents?source=detector&status=open&limit=1").await;
    assert_eq!(v["incidents"][0]["incidentId"], "LIST-4");
    assert_eq!(v["incidents"][0]["source"], "detector");
    assert_eq!(v["incidents"][0]["versions"], 1);
    assert!(
        v["incidents"][0].get("incident").is_none(),
        "no bodies in a list"
    );
    let since = pages(
        &base,
        &format!("/v1/incidents?since={boundary}&status=open"),
        "incidents",
    )
    .await;
    assert_eq!(since, [vec!["LIST-4", "LIST-3"]]);
    let (_, v) = admin_get(&base, "/v1/incidents?status=completed").await;
    assert_eq!(v["incidents"], serde_json::json!([]));
    gw.stop().await.unwrap();
}

/// What the document says of the bodies the fuzzing found wanting, held: a resolve checks
/// both its fields (a blank id, a URL that is not a string), and the most a valid body can be
/// — every character a `\u`-escaped surrogate pair, as JSON encoders may write — is read, not
/// refused as too large.
#[tokio::test]
async fn the_largest_valid_bodies_are_read_and_bad_resolves_are_422() {
    const CALLBACK: &str = "api-test-callback-token-0123456789";
    let ws = Workspace::new();
    let config = ws.config("127.0.0.1:0", "");
    with_sources(
        &config,
        &format!(
            "[[sources]]\nname = \"detector\"\napi_key = \"{SOURCE_KEY}\"\ncallback_token = \"{CALLBACK}\"\n"
        ),
    );
    let (gw, base) = start_gateway(&config).await;
    let resolve = |body: String| {
        let base = base.clone();
        async move {
            let r = client()
                .post(format!("{base}/v1/deliveries/msg_none/resolve"))
                .bearer_auth(ADMIN_TOKEN)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    for (body, pointer) in [
        (r#"{"ticket_id": " \t "}"#, "#/ticket_id"),
        (r#"{"ticket_url": "https://x/1"}"#, "#/ticket_id"),
        (r#"{"ticket_id": "X-1", "ticket_url": 5}"#, "#/ticket_url"),
    ] {
        let (status, problem) = resolve(body.to_string()).await;
        assert_eq!(status, 422, "{body}: {problem}");
        assert_eq!(problem["errors"][0]["pointer"], pointer, "{body}");
    }
    // 😀 is written "\ud83d\ude00": 12 bytes a character.
    let escaped = |n: usize| "\\ud83d\\ude00".repeat(n);
    let (status, problem) = resolve(format!(
        r#"{{"ticket_id": "{}", "ticket_url": "{}"}}"#,
        escaped(1024),
        escaped(2048)
    ))
    .await;
    assert_eq!(status, 404, "read, and no such delivery: {problem}");
    let (status, problem) = resolve(format!(r#"{{"ticket_id": "{}"}}"#, escaped(1025))).await;
    assert_eq!(status, 422, "{problem}");

    post_json(&base, &incident("BIG-NOTES")).await;
    let r = client()
        .post(format!("{base}/v1/incidents/BIG-NOTES/complete"))
        .bearer_auth(CALLBACK)
        .header("content-type", "application/json")
        .body(format!(
            r#"{{"reason_code": "other", "notes": "{}"}}"#,
            escaped(10_000)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["new"]["notes"].as_str().unwrap().chars().count(), 10_000);
    gw.stop().await.unwrap();
}
