//! Both edges: signatures out (checked by the reference implementation) and in, limits,
//! hostile requests, where requests may go, TLS, the admin listener, and secrets in logs.

mod common;

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const SECRET_A: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SECRET_B: &str = "whsec_c2Vjb25kLXNlY3JldC1mb3Itcm90YXRpb24tMTIz";

/// Runs the reference verifier on the received requests; returns its output and success.
fn verify_with_reference(secret: &str, received: &[Received]) -> (bool, String) {
    let requests: Vec<Value> = received
        .iter()
        .map(|r| {
            let headers: serde_json::Map<String, Value> =
                ["webhook-id", "webhook-timestamp", "webhook-signature"]
                    .iter()
                    .map(|h| (h.to_string(), json!(r.header(h).unwrap_or_default())))
                    .collect();
            json!({"headers": headers, "body": String::from_utf8_lossy(&r.body)})
        })
        .collect();
    let mut child = Command::new("python3")
        .arg(repo().join("tests/support/verify_webhook.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            json!({"secret": secret, "requests": requests})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn signatures_verify_with_the_reference_implementation_during_a_rotation() {
    let receiver = Receiver::start().await;
    let ws = Workspace::new();
    let extra = format!(
        "[connectors.signing]\nstandard_webhooks = [\"{SECRET_A}\", \"{SECRET_B}\"]\ngithub_secret = \"github-style-secret-123\"\n"
    );
    let config = ws.config(
        "127.0.0.1:0",
        &http_connector("t", &receiver.url("/t"), &extra),
    );
    let (gw, base) = start_gateway(&config).await;
    let mut hostile = incident("SIGNED-2");
    hostile["incident"]["summary"] = json!("quotes \" and \\ and ünïcødé 🚨 and\nnewlines");
    for inc in [incident("SIGNED-1"), hostile] {
        assert_eq!(post_incident(&base, &inc).await.status(), 202);
    }
    let got = receiver.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 2);
    for r in &got {
        let sig = r.header("webhook-signature").unwrap();
        assert_eq!(sig.split(' ').count(), 2, "one signature per secret: {sig}");
        assert!(
            r.header("x-hub-signature-256")
                .unwrap()
                .starts_with("sha256=")
        );
    }
    // Old secret and new secret both verify, as a receiver mid-rotation needs.
    for secret in [SECRET_A, SECRET_B] {
        let (ok, out) = verify_with_reference(secret, &got);
        assert!(ok, "{secret}: {out}");
        assert_eq!(
            out.lines().filter(|l| l.starts_with("ok ")).count(),
            2,
            "{out}"
        );
    }
    // A secret the gateway does not hold does not verify: the check can fail.
    let (ok, out) = verify_with_reference("whsec_b3RoZXItc2VjcmV0LW5vdC11c2VkLTEyMzQ1", &got);
    assert!(!ok, "{out}");
    gw.stop().await.unwrap();
}

fn signed_source_config(ws: &Workspace, extra_server: &str) -> std::path::PathBuf {
    ws.write(
        "gateway.toml",
        &format!(
            r#"
[server]
listen = "127.0.0.1:0"
admin_token = "{ADMIN_TOKEN}"
{extra_server}
[storage]
url = "sqlite://gateway.db"
[[sources]]
name = "signed"
signing_secret = "{INBOUND_SECRET}"
[[sources]]
name = "keyed"
api_key = "{SOURCE_KEY}"
rate_limit = {{ per_second = 1, burst = 2 }}
"#
        ),
    )
}

async fn post_signed(
    base: &str,
    body: &str,
    id: &str,
    timestamp: i64,
    signature: &str,
) -> reqwest::Response {
    client()
        .post(format!("{base}/v1/incidents"))
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn inbound_signatures_timestamps_replays_and_rate_limits() {
    let ws = Workspace::new();
    let config = signed_source_config(&ws, "");
    let (gw, base) = start_gateway(&config).await;
    let body = incident("IN-1").to_string();
    let now = chrono::Utc::now().timestamp();

    let good = sign(INBOUND_SECRET, "evt_1", now, &body);
    assert_eq!(
        post_signed(&base, &body, "evt_1", now, &good)
            .await
            .status(),
        202
    );
    // The same webhook-id again, even correctly signed, is a replay.
    assert_eq!(
        post_signed(&base, &body, "evt_1", now, &good)
            .await
            .status(),
        401
    );
    // Wrong secret, tampered body, stale and future timestamps, no signature at all.
    let other = sign(
        "whsec_b3RoZXItc2VjcmV0LW5vdC11c2VkLTEyMzQ1",
        "evt_2",
        now,
        &body,
    );
    assert_eq!(
        post_signed(&base, &body, "evt_2", now, &other)
            .await
            .status(),
        401
    );
    let tampered = body.replace("IN-1", "IN-X");
    let sig = sign(INBOUND_SECRET, "evt_3", now, &body);
    assert_eq!(
        post_signed(&base, &tampered, "evt_3", now, &sig)
            .await
            .status(),
        401
    );
    // `now` is read again: a clock tick since the start of the test would make `now + 301`
    // land inside the tolerance.
    let fresh = chrono::Utc::now().timestamp();
    for ts in [fresh - 301, fresh + 302] {
        let sig = sign(INBOUND_SECRET, "evt_4", ts, &body);
        let r = post_signed(&base, &body, "evt_4", ts, &sig).await;
        assert_eq!(r.status(), 401);
        let p: Value = r.json().await.unwrap();
        assert_eq!(
            p["detail"], "a valid credential is required",
            "no hint which part failed"
        );
    }
    let r = client()
        .post(format!("{base}/v1/incidents"))
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Rate limit: a burst of 2, then 429 with Retry-After.
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for i in 0..4 {
        let r = post_incident(&base, &incident(&format!("RL-{i}"))).await;
        if r.status() == 429 {
            retry_after = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
        }
        statuses.push(r.status().as_u16());
    }
    assert_eq!(&statuses[..2], [202, 202]);
    assert!(statuses[2..].contains(&429), "{statuses:?}");
    assert_eq!(retry_after.as_deref(), Some("1"));

    let metrics = admin(reqwest::Method::GET, &base, "/metrics").await;
    let text = metrics.text().await.unwrap();
    assert!(text.contains("igw_auth_failures_total 6"), "{text}");
    assert!(text.contains("igw_rate_limited_total"), "{text}");
    let (incidents, ..) = ws.counts();
    let accepted = statuses.iter().filter(|s| **s == 202).count();
    assert_eq!(
        incidents as usize,
        1 + accepted,
        "only the signed IN-1 and the rate-allowed posts"
    );
    gw.stop().await.unwrap();
}

/// Peak resident memory of a process (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// What a hostile request is, and the status it must get.
struct Hostile {
    what: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    expect: u16,
}

fn hostile_corpus() -> Vec<Hostile> {
    let auth = || {
        vec![
            ("authorization".to_string(), format!("Bearer {SOURCE_KEY}")),
            ("content-type".to_string(), "application/json".to_string()),
        ]
    };
    let mut out = Vec::new();
    let mut add = |what: String, headers: Vec<(String, String)>, body: Vec<u8>, expect: u16| {
        out.push(Hostile {
            what,
            headers,
            body,
            expect,
        })
    };
    // Deep nesting, in arrays and objects, at many depths past the limit.
    for depth in [65, 100, 1_000, 10_000, 100_000] {
        add(
            format!("array nesting {depth}"),
            auth(),
            format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes(),
            422,
        );
        let mut obj = String::from("{\"incidentId\": \"deep\", \"x\": ");
        obj.push_str(&"{\"a\": ".repeat(depth));
        obj.push('1');
        obj.push_str(&"}".repeat(depth + 1));
        add(
            format!("object nesting {depth}"),
            auth(),
            obj.into_bytes(),
            422,
        );
    }
    // Huge strings: over the body limit (413) and under it but over the string limit (422).
    for mib in [2usize, 10] {
        let body = format!(
            "{{\"incidentId\": \"big\", \"x\": \"{}\"}}",
            "A".repeat(mib * 1024 * 1024)
        );
        add(format!("{mib} MiB string"), auth(), body.into_bytes(), 413);
    }
    // Under the 1 MiB body limit, over the 256 Ki-character string limit.
    for (chars, ch) in [
        (300_000usize, "A"),
        (500_000, "A"),
        (900_000, "A"),
        (300_000, "é"),
    ] {
        let body = format!(
            "{{\"incidentId\": \"big\", \"incident\": {{\"summary\": \"{}\"}}}}",
            ch.repeat(chars)
        );
        add(
            format!("{chars} × {ch:?} string"),
            auth(),
            body.into_bytes(),
            422,
        );
    }
    // Invalid UTF-8 and NUL bytes.
    for (i, bad) in [
        &b"\xff\xfe"[..],
        b"\xc3\x28",
        b"\xe2\x82",
        b"\xf0\x28\x8c\xbc",
        b"\xed\xa0\x80",
    ]
    .iter()
    .enumerate()
    {
        let mut body = b"{\"incidentId\": \"".to_vec();
        body.extend_from_slice(bad);
        body.extend_from_slice(b"\"}");
        add(format!("invalid utf-8 #{i}"), auth(), body, 400);
    }
    add(
        "raw NUL in a string".into(),
        auth(),
        b"{\"incidentId\": \"a\0b\"}".to_vec(),
        400,
    );
    add("NUL bytes body".into(), auth(), vec![0u8; 1000], 400);
    // Wrong types for every typed field.
    let typed = [
        ("incidentId", json!(5)),
        ("incidentId", json!(null)),
        ("incidentId", json!("")),
        ("accountId", json!("x")),
        ("accountId", json!(-1)),
        ("createTime", json!("soon")),
        ("updateTime", json!([1])),
        ("sources", json!("LOG")),
        ("attacker", json!("1.2.3.4")),
        ("attacker_lset", json!({"ip": "x"})),
        ("incident", json!([])),
        ("incident_threat_rating", json!("Severe")),
        ("defaultThreatRating", json!(3)),
        ("asset_deployment_type", json!("mainframe")),
        ("extra", json!(7)),
        ("geo_ip_map", json!([1, 2])),
        ("snooze_status", json!(true)),
        ("victim_lset", json!("x")),
        ("customer_status", json!("open")),
        ("detection_source", json!("Carrier pigeon")),
    ];
    for (field, value) in typed {
        let mut inc = incident("TYPED");
        inc[field] = value.clone();
        add(
            format!("{field} = {value}"),
            auth(),
            inc.to_string().into_bytes(),
            422,
        );
    }
    for (path, value) in [
        ("/attacker/port", json!("abc")),
        ("/attacker/port", json!(70000)),
        ("/incident/escalated", json!("maybe")),
        ("/incident/attackClassId", json!(1.5)),
        ("/geo_ip_map/86.34.222.99/latitude", json!(500)),
        ("/extra/tld", json!("fr")),
        ("/extra/is_escalated", json!("yes")),
        ("/snooze_status/snoozed", json!("no")),
        ("/extra/location_ip", json!("1.2.3.4")),
        ("/customer_status/status", json!("closed")),
    ] {
        let mut inc = incident("TYPED");
        let (parent, key) = path.rsplit_once('/').unwrap();
        inc.pointer_mut(parent).unwrap()[key] = value.clone();
        add(
            format!("{path} = {value}"),
            auth(),
            inc.to_string().into_bytes(),
            422,
        );
    }
    // Malformed JSON of many shapes.
    for (i, text) in [
        "",
        "{",
        "}",
        "[",
        "{\"incidentId\": }",
        "{'incidentId': 'x'}",
        "{\"incidentId\": \"x\",}",
        "nul",
        "tru",
        "{\"a\" 1}",
        "[1,]",
        "\"unterminated",
        "{\"incidentId\": \"x\"} trailing",
        "0x10",
        "NaN",
        "{\"incidentId\": \"\\x\"}",
    ]
    .iter()
    .enumerate()
    {
        add(
            format!("malformed #{i}: {text:?}"),
            auth(),
            text.as_bytes().to_vec(),
            400,
        );
    }
    // Not incidents at all, and batches that break the rules.
    for text in [
        "null",
        "42",
        "\"string\"",
        "true",
        "[]",
        "[1]",
        "[null]",
        "[[]]",
        "{}",
    ] {
        add(
            format!("not an incident: {text}"),
            auth(),
            text.as_bytes().to_vec(),
            422,
        );
    }
    let big_batch: Vec<Value> = (0..101)
        .map(|i| json!({"incidentId": format!("B{i}")}))
        .collect();
    add(
        "101 incidents".into(),
        auth(),
        json!(big_batch).to_string().into_bytes(),
        422,
    );
    let huge_array = format!("[{}]", vec!["{\"incidentId\":\"h\"}"; 60_000].join(","));
    add(
        "60,000 incidents (over the body limit)".into(),
        auth(),
        huge_array.into_bytes(),
        413,
    );
    let many = format!("[{}]", vec!["{\"incidentId\":\"h\"}"; 20_000].join(","));
    add(
        "20,000 incidents (under the body limit)".into(),
        auth(),
        many.into_bytes(),
        422,
    );
    let mut mixed = vec![incident("OK-1"); 99];
    mixed.push(json!({"incidentId": 1}));
    add(
        "99 valid + 1 invalid".into(),
        auth(),
        json!(mixed).to_string().into_bytes(),
        422,
    );
    // Wrong or missing credentials, wrong content types.
    for (i, key) in [
        "",
        "Bearer",
        "Bearer ",
        "Bearer wrong-key-0000000000",
        "Basic dXNlcjpwYXNz",
        &format!("Bearer {ADMIN_TOKEN}"),
        &format!("bearer {SOURCE_KEY}x"),
        &format!("Token {SOURCE_KEY}"),
    ]
    .iter()
    .enumerate()
    {
        let mut h = vec![("content-type".to_string(), "application/json".to_string())];
        if !key.is_empty() {
            h.push(("authorization".to_string(), key.to_string()));
        }
        add(
            format!("credential #{i}"),
            h,
            incident("AUTH").to_string().into_bytes(),
            401,
        );
    }
    for ct in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
        "json",
    ] {
        let mut h = auth();
        h[1].1 = ct.to_string();
        add(
            format!("content-type {ct}"),
            h,
            incident("CT").to_string().into_bytes(),
            415,
        );
    }
    // Signed requests gone wrong (the source signing with INBOUND_SECRET).
    let body = incident("SIG").to_string();
    let now = chrono::Utc::now().timestamp();
    let signed = |id: &str, ts: i64, sig: String| {
        vec![
            ("content-type".to_string(), "application/json".to_string()),
            ("webhook-id".to_string(), id.to_string()),
            ("webhook-timestamp".to_string(), ts.to_string()),
            ("webhook-signature".to_string(), sig),
        ]
    };
    for i in 0..10 {
        add(
            format!("stale signature #{i}"),
            signed(
                &format!("s{i}"),
                now - 400 - i,
                sign(INBOUND_SECRET, &format!("s{i}"), now - 400 - i, &body),
            ),
            body.clone().into_bytes(),
            401,
        );
        add(
            format!("wrong signature #{i}"),
            signed(
                &format!("w{i}"),
                now,
                sign(SECRET_A, &format!("w{i}"), now, &body),
            ),
            body.clone().into_bytes(),
            401,
        );
        add(
            format!("garbage signature #{i}"),
            signed(
                &format!("g{i}"),
                now,
                format!("v1,{}", "A".repeat(i as usize * 7)),
            ),
            body.clone().into_bytes(),
            401,
        );
    }
    // Wrong types in every string field.
    add_many_nested(&mut add, &auth);
    out
}

fn add_many_nested(
    add: &mut impl FnMut(String, Vec<(String, String)>, Vec<u8>, u16),
    auth: &dyn Fn() -> Vec<(String, String)>,
) {
    let bad_values = [json!(1), json!(true), json!([]), json!({}), json!(-0.5)];
    let string_fields = [
        "humanFriendlyId",
        "customer",
        "asset_host_name",
        "correlation_name",
        "path",
        "scope_type",
        "stack_region",
        "attacker_country_code",
        "closed_time",
        "createtime_str",
        "updatetime_str",
        "first_closed_time",
        "incident_attack_class",
        "incident_class",
        "deployment_vpc",
        "deployment_subnet",
        "correlation_id",
        "asset_native_account_id",
    ];
    for field in string_fields {
        for value in &bad_values {
            let mut inc = incident("NESTED");
            inc[field] = value.clone();
            add(
                format!("{field} = {value}"),
                auth(),
                inc.to_string().into_bytes(),
                422,
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corpus_of_hostile_requests_gets_its_4xx_and_leaves_nothing_behind() {
    let ws = Workspace::new();
    let config = signed_source_config(&ws, "");
    // A second source, by key, so both ways in are attacked.
    edit(&config, |text| {
        text.replace("rate_limit = { per_second = 1, burst = 2 }\n", "")
    });
    let (mut child, base) = spawn_binary(&config);
    let pid = child.id();
    let corpus = hostile_corpus();
    assert!(corpus.len() >= 200, "{} requests", corpus.len());
    let rss_before = peak_rss_kib(pid);
    let mut wrong = Vec::new();
    for h in &corpus {
        let mut r = client()
            .post(format!("{base}/v1/incidents"))
            .body(h.body.clone());
        for (k, v) in &h.headers {
            r = r.header(k, v);
        }
        let status = match r.send().await {
            Ok(resp) => resp.status().as_u16(),
            Err(e) => {
                wrong.push(format!("{}: no answer ({e})", h.what));
                continue;
            }
        };
        if status != h.expect {
            wrong.push(format!("{}: {status}, expected {}", h.what, h.expect));
        }
    }
    // Slowloris: 20 connections that send headers then trickle nothing; each is cut off.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://").to_string();
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(format!("POST /v1/incidents HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {SOURCE_KEY}\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n{{").as_bytes()).await.unwrap();
        slow.push(s);
    }
    for mut s in slow {
        let mut buf = vec![0u8; 2048];
        let n = tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf))
            .await
            .expect("answered")
            .unwrap_or(0);
        let answer = String::from_utf8_lossy(&buf[..n]);
        if !answer.starts_with("HTTP/1.1 408") {
            wrong.push(format!("slow body: {answer:?}"));
        }
    }
    let rss_after = peak_rss_kib(pid);
    eprintln!(
        "{} hostile requests + 20 slow bodies: peak RSS {rss_before} KiB before, {rss_after} KiB after",
        corpus.len()
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(health(&base).await, 200, "still up");
    // Bounded: the 10 MiB bodies were refused without being held (1 MiB limit), so the peak
    // stays within a few times the body limit above where it started.
    assert!(
        rss_after < rss_before + 64 * 1024,
        "peak RSS grew from {rss_before} to {rss_after} KiB"
    );
    assert_eq!(ws.counts(), (0, 0, 0, 0), "nothing stored");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn requests_to_metadata_addresses_or_hosts_off_the_list_are_refused() {
    let receiver = Receiver::start().await;
    let ws = Workspace::new();
    let port = receiver.addr.port();
    let connectors = [
        // The URL is built from incident text: an attacker-chosen host.
        http_connector("templated", "http://{{customer}}/latest/meta-data/", ""),
        http_connector(
            "listed",
            "http://{{asset_host_name}}:PORT/hook",
            "allow_hosts = [\"tickets.example.com\", \"*.service-now.com\"]\n",
        ),
        http_connector(
            "private-off",
            &receiver.url("/never"),
            "allow_private = false\n",
        ),
        http_connector("private-on", &receiver.url("/ok"), ""),
    ]
    .concat()
    .replace("PORT", &port.to_string());
    let config = ws.config("127.0.0.1:0", &connectors);
    let (gw, base) = start_gateway(&config).await;
    let mut inc = incident("SSRF-1");
    inc["customer"] = json!("169.254.169.254");
    inc["asset_host_name"] = json!("127.0.0.1");
    let r = post_json(&base, &inc).await;
    assert_eq!(r["deliveries"].as_array().unwrap().len(), 4);
    let dead = eventually(Duration::from_secs(10), || async {
        let (_, v) = admin_get(&base, "/v1/deliveries?status=dead").await;
        let list = v["deliveries"].as_array().cloned().unwrap_or_default();
        (list.len() == 3).then_some(list)
    })
    .await
    .expect("three refused");
    let reason = |name: &str| {
        dead.iter()
            .find(|d| d["connector"] == name)
            .map(|d| d["last_error"].as_str().unwrap().to_string())
            .unwrap_or_default()
    };
    assert!(
        reason("templated").contains("169.254.169.254 is a link-local address"),
        "{}",
        reason("templated")
    );
    assert!(
        reason("listed").contains("not in allow_hosts"),
        "{}",
        reason("listed")
    );
    assert!(
        reason("private-off").contains("loopback address (allow_private = false)"),
        "{}",
        reason("private-off")
    );
    assert!(dead.iter().all(|d| d["attempt_count"] == 1));
    // Only the connector allowed to reach loopback did.
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(
        got.iter().map(|r| r.path.as_str()).collect::<Vec<_>>(),
        ["/ok"]
    );
    let metrics = admin(reqwest::Method::GET, &base, "/metrics")
        .await
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("igw_egress_refused_total 3"), "{metrics}");
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn a_name_that_resolves_to_a_forbidden_address_is_refused_at_connect() {
    // "localhost" is a name (the URL check passes), but it resolves to loopback, which this
    // connector may not reach: the resolver refuses it.
    let receiver = Receiver::start().await;
    let ws = Workspace::new();
    let url = format!("http://localhost:{}/hook", receiver.addr.port());
    let config = ws.config(
        "127.0.0.1:0",
        &http_connector("t", &url, "allow_private = false\n"),
    );
    let (gw, base) = start_gateway(&config).await;
    let r = post_json(&base, &incident("DNS-1")).await;
    let id = first_delivery(&r);
    let dead = delivery_when(&base, &id, Duration::from_secs(10), |v| {
        v["status"] == "dead"
    })
    .await
    .expect("refused");
    assert!(
        dead["last_error"]
            .as_str()
            .unwrap()
            .contains("localhost resolves to"),
        "{dead}"
    );
    assert!(receiver.received().is_empty());
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn tls_ingress_and_an_admin_api_on_its_own_address() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let ws = Workspace::new();
    ws.write("cert.pem", &cert.cert.pem());
    ws.write("key.pem", &cert.signing_key.serialize_pem());
    let config = ws.config("127.0.0.1:0", "");
    with_server(
        &config,
        "admin_listen = \"127.0.0.1:0\"\ntls = { cert = \"cert.pem\", key = \"key.pem\" }",
    );
    let gw = start_in_process(&config).await;
    let admin_addr = gw.admin_addr.expect("admin listener");
    // The admin listener uses the ingress certificate too (no admin_tls given).
    let admin = format!("https://localhost:{}", admin_addr.port());
    let ingress = format!("https://localhost:{}", gw.addr.port());
    let tls_client_for = |addr| {
        reqwest::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap(),
            )
            .resolve("localhost", addr)
            .build()
            .unwrap()
    };
    let tls_client = tls_client_for(gw.addr);
    let admin_client = tls_client_for(admin_addr);
    let r = tls_client
        .post(format!("{ingress}/v1/incidents"))
        .bearer_auth(SOURCE_KEY)
        .json(&incident("TLS-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    // Plain HTTP to the TLS port gets no HTTP answer.
    let plain = client()
        .get(format!("http://{}/healthz", gw.addr))
        .send()
        .await;
    assert!(plain.is_err() || plain.unwrap().status() != 200);
    // The admin API is on its own address, and only there.
    let r = tls_client
        .get(format!("{ingress}/v1/incidents/TLS-1"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "not on the ingress listener");
    let r = tls_client
        .get(format!("{ingress}/v1/deliveries"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = admin_client
        .get(format!("{admin}/v1/incidents/TLS-1"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["incidentId"], "TLS-1");
    let plain = client()
        .get(format!("http://{admin_addr}/v1/incidents/TLS-1"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await;
    assert!(
        plain.is_err(),
        "plain HTTP on the admin listener: {plain:?}"
    );
    let r = admin_client
        .get(format!("{admin}/v1/incidents/TLS-1"))
        .bearer_auth(SOURCE_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "a source key never opens the admin API");
    let r = admin_client
        .post(format!("{admin}/v1/incidents"))
        .bearer_auth(SOURCE_KEY)
        .json(&incident("X"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "no ingest on the admin listener");
    gw.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_configured_secret_shows_in_logs_store_attempts_or_render_output() {
    const TARGET_TOKEN: &str = "target-bearer-secret-4444";
    const SMTP_PASSWORD: &str = "smtp-password-secret-5555";
    const CALLBACK: &str = "callback-token-secret-6666";
    const GITHUB: &str = "github-signing-secret-7777";
    let receiver = Receiver::start().await;
    // The receiver echoes a credential back and fails, so secrets pass through every path.
    receiver.script([
        Reply::status(503).body(&format!("upstream said Bearer {TARGET_TOKEN}")),
        Reply::status(200).body(&format!(
            "{{\"id\": \"T-1\", \"echo\": \"{TARGET_TOKEN}\"}}"
        )),
    ]);
    let ws = Workspace::new();
    ws.write("smtp-password", SMTP_PASSWORD);
    ws.write("body.txt.hbs", "Incident {{incidentId}}\n");
    let smtp_port = free_port();
    let connectors = format!(
        r#"
[[connectors]]
name = "ticketing"
kind = "http"
url = "{url}"
template = "TEMPLATES/generic/incident.json.hbs"
callback_token = "${{IGW_TEST_CALLBACK}}"
[connectors.headers]
"Authorization" = "Bearer ${{IGW_TEST_TARGET_TOKEN}}"
[connectors.signing]
standard_webhooks = ["${{IGW_TEST_WHSEC}}"]
github_secret = "{GITHUB}"
[connectors.retry]
initial_backoff = "50ms"
max_backoff = "100ms"

[[connectors]]
name = "mail"
kind = "smtp"
smtp_url = "smtp://127.0.0.1:{smtp_port}"
username = "gateway"
password_file = "smtp-password"
allow_plaintext_auth = true  # the test server has no TLS; the password must still never show
from = "soc@example.com"
to = ["rt@example.com"]
subject = "{{{{incidentId}}}}"
template = "body.txt.hbs"
[connectors.retry]
max_attempts = 2
initial_backoff = "50ms"
max_backoff = "100ms"
"#,
        url = receiver.url("/hook")
    );
    let config = ws.config("127.0.0.1:0", &connectors);
    let log_path = ws.path().join("gateway.log");
    let (mut child, base) = spawn_binary_logged(
        &config,
        "debug",
        &[
            ("IGW_TEST_TARGET_TOKEN", TARGET_TOKEN),
            ("IGW_TEST_CALLBACK", CALLBACK),
            ("IGW_TEST_WHSEC", SECRET_A),
        ],
        &log_path,
    );

    assert_eq!(
        post_incident(&base, &incident("SECRET-LOG-1"))
            .await
            .status(),
        202
    );
    // A wrong key, a wrong admin token, a wrong callback: failures get logged too.
    client()
        .post(format!("{base}/v1/incidents"))
        .bearer_auth("wrong-key-0000000000")
        .json(&incident("X"))
        .send()
        .await
        .unwrap();
    client()
        .get(format!("{base}/v1/deliveries"))
        .bearer_auth("wrong-admin-00000000")
        .send()
        .await
        .unwrap();
    receiver.wait_for(2, Duration::from_secs(10)).await;
    let r = client()
        .post(format!("{base}/v1/incidents/SECRET-LOG-1/complete"))
        .bearer_auth(CALLBACK)
        .json(&json!({"reason_code": "other", "notes": "done"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Let the SMTP deliveries fail against the closed port and go dead (the mail `completed`
    // then waits behind its dead `created`).
    let all_settled = eventually(Duration::from_secs(15), || async {
        let (_, v) = admin_get(&base, "/v1/deliveries?status=pending").await;
        v["deliveries"]
            .as_array()
            .is_some_and(|l| l.iter().all(|d| d["waiting_for"].is_string()))
            .then_some(())
    })
    .await;
    assert!(all_settled.is_some());
    let (_, everything) = admin_get(&base, "/v1/incidents/SECRET-LOG-1").await;
    let render = Command::new(env!("CARGO_BIN_EXE_incident-gateway"))
        .args(["render", "--config"])
        .arg(&config)
        .args(["--connector", "ticketing", "--incident"])
        .arg(repo().join("examples/incidents/sample.json"))
        .env("IGW_TEST_TARGET_TOKEN", TARGET_TOKEN)
        .env("IGW_TEST_CALLBACK", CALLBACK)
        .env("IGW_TEST_WHSEC", SECRET_A)
        .output()
        .unwrap();
    assert!(render.status.success());
    child.kill().unwrap();
    child.wait().unwrap();

    let logs = std::fs::read_to_string(&log_path).unwrap();
    let store = String::from_utf8_lossy(&std::fs::read(ws.db()).unwrap()).into_owned()
        + &String::from_utf8_lossy(
            &std::fs::read(ws.path().join("gateway.db-wal")).unwrap_or_default(),
        );
    let render_out = String::from_utf8_lossy(&render.stdout).into_owned();
    assert!(logs.lines().count() > 5, "the gateway logged: {logs}");
    assert!(
        everything.to_string().contains("********"),
        "the echoed token is masked in attempts"
    );
    let secrets = [
        TARGET_TOKEN,
        SMTP_PASSWORD,
        CALLBACK,
        GITHUB,
        SECRET_A,
        SOURCE_KEY,
        ADMIN_TOKEN,
    ];
    for secret in secrets {
        assert!(!logs.contains(secret), "{secret} in the logs");
        assert!(!store.contains(secret), "{secret} in the store");
        assert!(
            !everything.to_string().contains(secret),
            "{secret} in the admin API"
        );
        assert!(!render_out.contains(secret), "{secret} in render output");
    }
    eprintln!(
        "grepped {} log lines, {} bytes of store, the admin view and render output for {} secrets: none found",
        logs.lines().count(),
        store.len(),
        secrets.len()
    );
}

#[tokio::test]
async fn concurrent_copies_huge_signature_headers_and_absurd_timestamps_are_refused() {
    let ws = Workspace::new();
    let config = signed_source_config(&ws, "");
    let (gw, base) = start_gateway(&config).await;
    let body = incident("COPY-1").to_string();
    let now = chrono::Utc::now().timestamp();
    let sig = sign(INBOUND_SECRET, "evt_copy", now, &body);
    // Eight copies of one signed request at once: exactly one gets in.
    let copies: Vec<_> = (0..8)
        .map(|_| {
            let (base, body, sig) = (base.clone(), body.clone(), sig.clone());
            tokio::spawn(async move {
                post_signed(&base, &body, "evt_copy", now, &sig)
                    .await
                    .status()
                    .as_u16()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for c in copies {
        statuses.push(c.await.unwrap());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 202).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 401).count(),
        7,
        "{statuses:?}"
    );
    // Thousands of signatures in one header: refused unread.
    let many = vec![sig.as_str(); 2000].join(" ");
    let r = post_signed(&base, &body, "evt_many", now, &many).await;
    assert_eq!(r.status(), 401);
    // A timestamp at the edge of i64 neither panics nor passes.
    let r = post_signed(&base, &body, "evt_min", i64::MIN, &sig).await;
    assert_eq!(r.status(), 401);
    assert_eq!(health(&base).await, 200);
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn a_source_with_a_key_and_a_secret_must_present_both() {
    let ws = Workspace::new();
    let config = ws.write(
        "gateway.toml",
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[storage]\nurl = \"sqlite://gateway.db\"\n[[sources]]\nname = \"both\"\napi_key = \"{SOURCE_KEY}\"\nsigning_secret = \"{INBOUND_SECRET}\"\n"
        ),
    );
    let (gw, base) = start_gateway(&config).await;
    let body = incident("BOTH-1").to_string();
    let now = chrono::Utc::now().timestamp();
    let sig = sign(INBOUND_SECRET, "evt_both", now, &body);
    // Signature alone: refused.
    assert_eq!(
        post_signed(&base, &body, "evt_both", now, &sig)
            .await
            .status(),
        401
    );
    // Key alone: refused.
    assert_eq!(
        post_incident(&base, &incident("BOTH-1")).await.status(),
        401
    );
    // Both: accepted.
    let r = client()
        .post(format!("{base}/v1/incidents"))
        .bearer_auth(SOURCE_KEY)
        .header("content-type", "application/json")
        .header("webhook-id", "evt_both")
        .header("webhook-timestamp", now.to_string())
        .header("webhook-signature", sig)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    gw.stop().await.unwrap();
}
