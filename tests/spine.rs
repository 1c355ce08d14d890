//! End to end through the real server, a real SQLite file and a real HTTP receiver.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

#[tokio::test]
async fn sample_is_delivered_with_every_field_verbatim() {
    let (receiver, _ws, gw, base) = receiver_and_gateway("ticketing", "/hook", "").await;

    assert_eq!(health(&base).await, 200);

    // The fixture exactly as shipped, posted as its own bytes.
    let bytes = std::fs::read(sample_file()).unwrap();
    let response = post_raw(&base, Some(SOURCE_KEY), Some(APPLICATION_JSON), bytes).await;
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.unwrap();
    assert_eq!(accepted["status"], "accepted");
    assert_eq!(
        accepted["incidentId"],
        "5F04D7E3-000A-8420-0002-757900000000"
    );
    let delivery_id = first_delivery(&accepted);

    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    let req = &got[0];
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/hook");
    assert_eq!(
        req.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(req.header("webhook-id"), Some(delivery_id.clone()));
    let body = req.json();
    assert_eq!(body["event"], "created");
    assert_eq!(body["delivery"]["id"], delivery_id.as_str());
    assert_eq!(body["delivery"]["attempt"], 1);
    assert_eq!(body["incident"], sample(), "every field arrives as sent");
    assert_eq!(
        body["incident"]["createTime"].as_f64(),
        Some(1594153092.2202642),
        "fractional createTime keeps its precision"
    );
    gw.stop().await.unwrap();
}

/// Text that breaks naive JSON templating, carried through a template that interpolates it
/// into JSON strings (not only through `{{json}}`).
#[tokio::test]
async fn hostile_text_arrives_as_valid_json_byte_for_byte() {
    let receiver = Receiver::start().await;
    let ws = Workspace::new();
    let template = r#"{"id": "{{incidentId}}", "summary": "{{incident.summary}}", "description": "{{incident.description}}", "report": "{{extra.investigation_report}}", "whole": {{json incident}}}"#;
    let connector = ws.connector_with_template("t", &receiver.url("/t"), template, "");
    let (gw, base) = start_gateway(&ws.config("127.0.0.1:0", &connector)).await;

    let hostile = [
        "quote \" backslash \\ slash / end",
        "line1\nline2\r\nline3\ttab \u{0001}\u{001f}\u{007f}",
        "{{incidentId}} {{{raw}}} {{#each x}}",
        "</script><script>alert('x')</script> <b>bold</b> &amp; &lt;",
        "Ünïcödé 漢字 عربى 🚨👩‍💻 e\u{301} \u{2028}\u{2029} \u{feff}",
        "\\u0000 not an escape, \\\" neither",
    ];
    for (i, text) in hostile.iter().enumerate() {
        let mut inc = incident(&format!("HOSTILE-{i}"));
        inc["incident"]["summary"] = json!(text);
        inc["incident"]["description"] = json!(format!("{text}\n\n**more** {text}"));
        inc["extra"]["investigation_report"] = json!(format!("<p>{text}</p>"));
        let r = post_incident(&base, &inc).await;
        assert_eq!(r.status(), 202, "{text:?}");
    }
    let got = receiver
        .wait_for(hostile.len(), Duration::from_secs(10))
        .await;
    assert_eq!(got.len(), hostile.len());
    for req in got {
        let body = req.json();
        let id = body["id"].as_str().unwrap();
        let i: usize = id.strip_prefix("HOSTILE-").unwrap().parse().unwrap();
        let text = hostile[i];
        assert_eq!(body["summary"], text);
        assert_eq!(body["description"], format!("{text}\n\n**more** {text}"));
        assert_eq!(body["report"], format!("<p>{text}</p>"));
        assert_eq!(body["whole"]["summary"], text);
    }
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn every_error_class_answers_problem_json_and_stores_nothing() {
    let (receiver, ws, gw, base) = receiver_and_gateway("ticketing", "/hook", "").await;
    // One incident stored first, so "unchanged" is not just "empty".
    assert_eq!(
        post_incident(&base, &incident("BASELINE")).await.status(),
        202
    );
    receiver.wait_for(1, Duration::from_secs(10)).await;
    // The attempt is recorded just after the receiver has it: wait for that, then count.
    eventually(Duration::from_secs(10), || async {
        let (.., attempts) = ws.counts();
        (attempts == 1).then_some(())
    })
    .await
    .expect("the baseline attempt is recorded");
    let before = ws.counts();
    let (key, as_json) = (Some(SOURCE_KEY), Some(APPLICATION_JSON));

    let expect_problem = |status: u16, r: reqwest::Response| async move {
        let p = problem(r, status).await;
        assert_eq!(p["status"], status);
        assert!(p["type"].as_str().unwrap().starts_with("https://"));
        assert!(!p["title"].as_str().unwrap().is_empty());
        p
    };

    // 400 malformed JSON.
    let r = post_raw(&base, key, as_json, "{\"incidentId\": \"x\",").await;
    let p = expect_problem(400, r).await;
    assert!(p["detail"].as_str().unwrap().contains("line 1"), "{p}");

    // 401 missing and wrong key; the admin token is not a source key either.
    for (key, id) in [
        (None, "A1"),
        (Some("wrong-key-0123456789"), "A2"),
        (Some(ADMIN_TOKEN), "A3"),
    ] {
        let r = post_raw(&base, key, as_json, incident(id).to_string()).await;
        expect_problem(401, r).await;
    }

    // 413 over max_body_bytes (default 1 MiB), declared and streamed.
    let mut big = incident("BIG");
    big["incident"]["description"] = json!("x".repeat(1024 * 1024));
    // The 413 comes before the body is read; the server drains the rest (lingering close), so
    // a client still writing reads the answer rather than a reset.
    let r = post_raw(&base, key, as_json, big.to_string()).await;
    expect_problem(413, r).await;
    let chunks =
        futures_util::stream::iter((0..200).map(|_| Ok::<_, std::io::Error>(vec![b' '; 8192])));
    let r = post_raw(&base, key, as_json, reqwest::Body::wrap_stream(chunks)).await;
    expect_problem(413, r).await;

    // 415 not JSON.
    for content_type in [Some("text/plain"), None] {
        let r = post_raw(&base, key, content_type, incident("T").to_string()).await;
        expect_problem(415, r).await;
    }

    // 422: every violation, with its pointer.
    let mut bad = sample();
    bad.as_object_mut().unwrap().remove("incidentId");
    bad["attacker"]["port"] = json!("abc");
    bad["incident_threat_rating"] = json!("Severe");
    let p = expect_problem(422, post_raw(&base, key, as_json, bad.to_string()).await).await;
    let pointers = pluck(&p["errors"], "pointer");
    assert!(pointers.contains(&"#"), "{p}");
    assert!(pointers.contains(&"#/attacker/port"), "{p}");
    assert!(pointers.contains(&"#/incident_threat_rating"), "{p}");

    // 422 in a batch: the index is in the pointer, and the valid ones are not stored either.
    let mut wrong = incident("BATCH-1");
    wrong["sources"] = json!("LOG");
    let batch = json!([incident("BATCH-0"), wrong, incident("BATCH-2")]);
    let p = expect_problem(422, post_raw(&base, key, as_json, batch.to_string()).await).await;
    assert_eq!(p["errors"][0]["pointer"], "#/1/sources", "{p}");

    // A top-level value that is not an incident, an empty batch, an oversized batch.
    let many: Vec<Value> = (0..101)
        .map(|i| json!({"incidentId": format!("M{i}")}))
        .collect();
    for body in [json!("just a string"), json!([]), json!(many)] {
        let r = post_raw(&base, key, as_json, body.to_string()).await;
        expect_problem(422, r).await;
    }

    assert_eq!(ws.counts(), before, "no error stored anything");
    let (status, _) = admin_get(&base, "/v1/incidents/BATCH-0").await;
    assert_eq!(status, 404);
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn repeats_are_duplicates_and_newer_versions_are_updates() {
    let (receiver, _ws, gw, base) = receiver_and_gateway("ticketing", "/hook", "").await;

    let first = incident("IDEM-1");
    let r = post_json(&base, &first).await;
    assert_eq!(r["status"], "accepted");
    assert_eq!(r["deliveries"].as_array().unwrap().len(), 1);

    let r = post_json(&base, &first).await;
    assert_eq!(r["status"], "duplicate");
    assert_eq!(r["deliveries"], json!([]));

    let mut newer = first.clone();
    newer["updateTime"] = json!(1594153999);
    newer["incident"]["summary"] = json!("escalated");
    let r = post_json(&base, &newer).await;
    assert_eq!(r["status"], "updated");
    assert_eq!(r["deliveries"][0]["event"], "updated");

    // An older version after a newer one changes nothing.
    let r = post_json(&base, &first).await;
    assert_eq!(r["status"], "duplicate");

    // In a batch, each incident gets its own answer, in order.
    let batch = json!([incident("IDEM-2"), newer, incident("IDEM-3")]);
    let r = post_json(&base, &batch).await;
    assert_eq!(pluck(&r, "status"), ["accepted", "duplicate", "accepted"]);

    let got = receiver.wait_for(4, Duration::from_secs(10)).await;
    let mut events: Vec<(String, String)> = got
        .iter()
        .map(|r| {
            let b = r.json();
            (
                b["incidentId"].as_str().unwrap().to_string(),
                b["event"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    events.sort();
    assert_eq!(
        events,
        [
            ("IDEM-1".to_string(), "created".to_string()),
            ("IDEM-1".to_string(), "updated".to_string()),
            ("IDEM-2".to_string(), "created".to_string()),
            ("IDEM-3".to_string(), "created".to_string()),
        ]
    );
    let updated = got.iter().find(|r| r.json()["event"] == "updated").unwrap();
    assert_eq!(
        updated.json()["incident"]["incident"]["summary"],
        "escalated"
    );
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn retry_after_is_honoured_then_delivered_and_4xx_dies_until_replayed() {
    // Backoff alone would retry after 25–100 ms: only Retry-After explains a 1 s gap.
    let retry = "[connectors.retry]\ninitial_backoff = \"50ms\"\nmax_backoff = \"100ms\"\n";
    let (receiver, _ws, gw, base) = receiver_and_gateway("ticketing", "/hook", retry).await;
    receiver.script([
        Reply::status(503).header("Retry-After", "1").body("busy"),
        Reply::status(503).header("Retry-After", "1").body("busy"),
        Reply::status(200).body("{\"ticket\": 1}"),
        Reply::status(400).body("{\"error\": \"bad field\"}"),
    ]);

    let r = post_json(&base, &incident("RETRY-1")).await;
    let id = first_delivery(&r);
    let got = receiver.wait_for(3, Duration::from_secs(15)).await;
    assert_eq!(got.len(), 3);
    // Each retry waited for Retry-After (1 s), and kept the same webhook-id.
    assert!(
        got[1].at - got[0].at >= Duration::from_millis(950),
        "{:?}",
        got[1].at - got[0].at
    );
    assert!(got[2].at - got[1].at >= Duration::from_millis(950));
    assert!(
        got.iter()
            .all(|r| r.header("webhook-id") == Some(id.clone()))
    );

    let view = eventually(Duration::from_secs(5), || async {
        let (_, v) = admin_get(&base, "/v1/incidents/RETRY-1").await;
        (v["connectors"]["ticketing"]["deliveries"][0]["status"] == "delivered").then_some(v)
    })
    .await
    .expect("delivered");
    let attempts = view["connectors"]["ticketing"]["deliveries"][0]["attempts"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(attempts.len(), 3);
    assert_eq!(attempts[0]["status_code"], 503);
    assert_eq!(attempts[0]["response_body"], "busy");
    assert_eq!(attempts[0]["outcome"], "retry");
    assert_eq!(attempts[2]["status_code"], 200);
    assert_eq!(attempts[2]["outcome"], "delivered");
    assert!(attempts[0]["latency_ms"].as_i64().is_some());

    // A 400 is dead at once.
    let r = post_json(&base, &incident("DEAD-1")).await;
    let dead_id = first_delivery(&r);
    let dead = listed_when(
        &base,
        "status=dead&connector=ticketing",
        Duration::from_secs(10),
        |list| !list.is_empty(),
    )
    .await
    .expect("dead delivery listed");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["id"], dead_id.as_str());
    assert_eq!(dead[0]["attempt_count"], 1);
    assert!(dead[0]["last_error"].as_str().unwrap().contains("400"));
    assert_eq!(receiver.received().len(), 4);

    // Replay: back in the queue, attempts kept, delivered (the receiver now answers 200).
    let r = admin_post(&base, &format!("/v1/deliveries/{dead_id}/replay")).await;
    assert_eq!(r.status(), 202);
    let delivered = settled(&base, &dead_id, &["delivered"], Duration::from_secs(10)).await;
    assert_eq!(delivered["attempt_count"], 2);
    assert_eq!(delivered["attempts"].as_array().unwrap().len(), 2);
    let last = receiver.received().pop().unwrap();
    assert_eq!(last.header("webhook-id"), Some(dead_id.clone()));
    assert_eq!(last.json()["delivery"]["attempt"], 2);

    // Replaying what is not dead is a conflict; unknown ids are 404; the source key is no admin.
    let r = admin_post(&base, &format!("/v1/deliveries/{dead_id}/replay")).await;
    assert_eq!(r.status(), 409);
    let r = admin_post(&base, "/v1/deliveries/msg_nope/replay").await;
    assert_eq!(r.status(), 404);
    let r = get_as(
        &client(),
        &format!("{base}/v1/incidents/DEAD-1"),
        SOURCE_KEY,
    )
    .await;
    assert_eq!(r.unwrap().status(), 401);
    let r = admin(reqwest::Method::GET, &base, "/v1/deliveries?status=bogus").await;
    assert_eq!(r.status(), 400);
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn network_errors_retry_and_attempts_give_up_as_configured() {
    // Nothing listens on this port: every attempt is a connection error.
    let port = free_port();
    let ws = Workspace::new();
    let retry = r#"
[connectors.retry]
max_attempts = 3
initial_backoff = "50ms"
max_backoff = "100ms"
"#;
    let config = ws.config(
        "127.0.0.1:0",
        &http_connector("down", &format!("http://127.0.0.1:{port}/x"), retry),
    );
    let (gw, base) = start_gateway(&config).await;
    let id = first_delivery(&post_json(&base, &incident("DOWN-1")).await);
    let view = settled(&base, &id, &["dead"], Duration::from_secs(10)).await;
    let attempts = view["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3);
    assert!(attempts.iter().all(|a| a["status_code"].is_null()));
    assert!(
        attempts[0]["error"].as_str().unwrap().contains("connect"),
        "{view}"
    );
    assert!(
        view["last_error"]
            .as_str()
            .unwrap()
            .contains("gave up after 3 attempts")
    );
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn matchers_route_incidents_to_connectors() {
    let receiver = Receiver::start().await;
    let ws = Workspace::new();
    let connectors = [
        http_connector("all", &receiver.url("/all"), ""),
        http_connector(
            "high-auth",
            &receiver.url("/high"),
            r#"
min_threat_rating = "high"
[[connectors.matchers]]
field = "/incident_class"
regex = "authentication:.*"
"#,
        ),
        http_connector(
            "not-aws",
            &receiver.url("/notaws"),
            r#"
[[connectors.matchers]]
field = "/asset_deployment_type"
not_one_of = ["aws", "azure"]
"#,
        ),
    ]
    .concat();
    let config = ws.config("127.0.0.1:0", &connectors);
    let (gw, base) = start_gateway(&config).await;

    // The sample: Medium, authentication, aws → only "all".
    let r = post_json(&base, &incident("ROUTE-MEDIUM")).await;
    assert_eq!(pluck(&r["deliveries"], "connector"), ["all"]);

    let mut high = incident("ROUTE-HIGH");
    high["incident"]["threatRating"] = json!("HIGH");
    high["asset_deployment_type"] = json!("datacenter");
    let r = post_json(&base, &high).await;
    assert_eq!(
        pluck(&r["deliveries"], "connector"),
        ["all", "high-auth", "not-aws"]
    );

    let got = receiver.wait_for(4, Duration::from_secs(10)).await;
    let mut paths: Vec<String> = got.iter().map(|r| r.path.clone()).collect();
    paths.sort();
    assert_eq!(paths, ["/all", "/all", "/high", "/notaws"]);
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn templated_url_and_headers_are_rendered_and_url_values_encoded() {
    let extra = r#"
[connectors.headers]
"X-Incident" = "{{humanFriendlyId}}"
"Authorization" = "Bearer ${IGW_TEST_TARGET_TOKEN:-target-secret-123}"
"#;
    let path = "/api/{{incident_class}}/{{incidentId}}";
    let (receiver, _ws, gw, base) = receiver_and_gateway("t", path, extra).await;
    let mut inc = incident("A/B?C");
    inc["humanFriendlyId"] = json!("ww1k39");
    assert_eq!(post_incident(&base, &inc).await.status(), 202);
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].path, "/api/authentication%3Aactivity/A%2FB%3FC");
    assert_eq!(got[0].header("x-incident").as_deref(), Some("ww1k39"));
    assert_eq!(
        got[0].header("authorization").as_deref(),
        Some("Bearer target-secret-123")
    );
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn an_update_never_overtakes_its_created_delivery() {
    let (receiver, _ws, gw, base) = receiver_and_gateway("t", "/t", fast_retry()).await;
    // The created delivery fails once and must be retried before the update goes.
    receiver.script([Reply::status(503).header("Retry-After", "1")]);
    let first = incident("ORDER-1");
    assert_eq!(post_incident(&base, &first).await.status(), 202);
    let mut newer = first.clone();
    newer["updateTime"] = json!(1594159999);
    assert_eq!(post_incident(&base, &newer).await.status(), 202);
    let got = receiver.wait_for(3, Duration::from_secs(10)).await;
    let events: Vec<String> = got
        .iter()
        .map(|r| r.json()["event"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(events, ["created", "created", "updated"]);
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn unsendable_requests_die_at_once_with_the_reason() {
    let extra = "[connectors.headers]\n\"X-Summary\" = \"{{incident.summary}}\"\n";
    let path = "/api/tickets/{{incidentId}}/comments";
    let (receiver, _ws, gw, base) = receiver_and_gateway("t", path, extra).await;

    // A bell character cannot go in a header; ".." would climb out of the URL's path.
    let mut bell = incident("BELL-1");
    bell["incident"]["summary"] = json!("ring \u{7} ring");
    let dots = incident("..");
    for inc in [&bell, &dots] {
        assert_eq!(post_incident(&base, inc).await.status(), 202);
    }
    let dead = listed_when(&base, "status=dead", Duration::from_secs(10), |list| {
        list.len() == 2
    })
    .await
    .expect("both dead");
    for d in &dead {
        assert_eq!(d["attempt_count"], 1, "{d}");
    }
    let reasons: Vec<&str> = dead
        .iter()
        .map(|d| d["last_error"].as_str().unwrap())
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("header value")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("change the URL's path")),
        "{reasons:?}"
    );
    assert!(receiver.received().is_empty());
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn incidents_travel_with_big_numbers_and_key_order_intact() {
    let (receiver, _ws, gw, base) = receiver_and_gateway("t", "/t", "").await;
    let raw = r#"{"zeta": 1, "incidentId": "BIG-1", "bigId": 123456789012345678901234567, "alpha": 0.1000000000000000055511151231257827, "createTime": 1594153092.2202642}"#;
    let r = post_raw(&base, Some(SOURCE_KEY), Some(APPLICATION_JSON), raw).await;
    assert_eq!(r.status(), 202);
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    let body = String::from_utf8(got[0].body.to_vec()).unwrap();
    let compact: String = raw.split_whitespace().collect::<Vec<_>>().join("");
    assert!(body.contains(&compact), "{body}");
    assert!(
        body.contains("\"bigId\":123456789012345678901234567"),
        "{body}"
    );
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn an_update_without_update_time_never_lets_an_older_version_back_in() {
    let (_receiver, _ws, gw, base) = receiver_and_gateway("t", "/t", "").await;
    let base = &base;
    let status = |v: Value| async move {
        let r = post_json(base, &v).await;
        r["status"].as_str().unwrap().to_string()
    };
    let at = |t: Value, summary: &str| {
        let mut v = incident("TIME-1");
        v["updateTime"] = t;
        v["incident"]["summary"] = json!(summary);
        v
    };
    assert_eq!(status(at(json!(2000), "v2000")).await, "accepted");
    // Without a time it cannot show it is newer: not applied (issue 10, item 3).
    assert_eq!(status(at(Value::Null, "no time")).await, "duplicate");
    assert_eq!(status(at(json!(1000), "v1000")).await, "duplicate");
    let (_, view) = admin_get(base, "/v1/incidents/TIME-1").await;
    assert_eq!(view["incident"]["incident"]["summary"], "v2000");
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn secrets_never_reach_attempt_records_and_api_errors_are_problem_json() {
    const TOKEN: &str = "target-token-that-must-not-leak-123";
    let extra = format!("[connectors.headers]\n\"Authorization\" = \"Bearer {TOKEN}\"\n");
    let (receiver, ws, gw, base) = receiver_and_gateway("t", "/t", &extra).await;
    // The receiver echoes the credential back in its error body.
    receiver.script([Reply::status(400).body(&format!("{{\"error\": \"bad token {TOKEN}\"}}"))]);
    let id = first_delivery(&post_json(&base, &incident("SECRET-1")).await);
    let view = settled(&base, &id, &["dead"], Duration::from_secs(10)).await;
    let text = view.to_string();
    assert!(text.contains("bad token ********"), "{text}");
    assert!(!text.contains(TOKEN), "{text}");
    let received = receiver.received();
    assert_eq!(
        received[0].header("authorization"),
        Some(format!("Bearer {TOKEN}"))
    );

    for (method, path, status) in [
        ("GET", "/v1/deliveries?limit=abc", 400),
        ("PUT", "/v1/incidents", 405),
        ("DELETE", "/v1/deliveries/x", 405),
        ("GET", "/nowhere", 404),
    ] {
        let r = admin(method.parse().unwrap(), &base, path).await;
        assert_eq!(r.status().as_u16(), status, "{method} {path}");
        assert_eq!(
            r.headers()["content-type"],
            "application/problem+json",
            "{method} {path}"
        );
    }
    gw.stop().await.unwrap();
    assert!(
        ws.store_contains("SECRET-1"),
        "the check reads what is stored"
    );
    assert!(!ws.store_contains(TOKEN), "the store holds no secret");
}

/// A target that refuses and says why (Redmine's `{"errors": [...]}`): the delivery's
/// `last_error` and the attempt carry the target's own words, not only the status; a retry
/// keeps them too, and what the target echoes of a secret is masked.
#[tokio::test]
async fn the_targets_own_reason_is_the_last_error() {
    let extra = "error_message = [\"/errors\"]\n[connectors.retry]\ninitial_backoff = \"50ms\"\nmax_backoff = \"100ms\"\n";
    let (receiver, _ws, gw, base) = receiver_and_gateway("redmine", "/issues", extra).await;
    receiver.script([
        Reply::status(503).body(r#"{"errors":["Redmine is down for maintenance"]}"#),
        Reply::status(422).body(&format!(
            r#"{{"errors":["Project cannot be blank","Key {SOURCE_KEY} is not allowed"]}}"#
        )),
    ]);
    let id = first_delivery(&post_json(&base, &incident("REASON-1")).await);
    let view = eventually(Duration::from_secs(10), || async {
        let (_, v) = admin_get(&base, &format!("/v1/deliveries/{id}")).await;
        (v["status"] == "dead").then_some(v)
    })
    .await
    .expect("dead after the 422");
    let last_error = view["last_error"].as_str().unwrap();
    assert!(
        last_error.starts_with("HTTP 422: Project cannot be blank; Key ******** is not allowed"),
        "{last_error}"
    );
    let attempts = view["attempts"].as_array().unwrap();
    assert_eq!(
        attempts[0]["error"],
        "HTTP 503: Redmine is down for maintenance"
    );
    assert_eq!(attempts[0]["outcome"], "retry");
    assert_eq!(attempts[1]["status_code"], 422);
    assert!(!view.to_string().contains(SOURCE_KEY));
    assert_eq!(receiver.received().len(), 2);
    gw.stop().await.unwrap();
}
