//! Both edges: signatures out (checked by the reference implementation) and in, limits,
//! hostile requests, where requests may go, TLS, the admin listener, and secrets in logs.

mod common;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const SECRET_A: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SECRET_B: &str = "whsec_c2Vjb25kLXNlY3JldC1mb3Itcm90YXRpb24tMTIz";
/// A secret the gateway does not hold.
const OTHER_SECRET: &str = "whsec_b3RoZXItc2VjcmV0LW5vdC11c2VkLTEyMzQ1";

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
    let extra = format!(
        "[connectors.signing]\nstandard_webhooks = [\"{SECRET_A}\", \"{SECRET_B}\"]\ngithub_secret = \"github-style-secret-123\"\n"
    );
    let (receiver, _ws, gw, base) = receiver_and_gateway("t", "/t", &extra).await;
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
    let (ok, out) = verify_with_reference(OTHER_SECRET, &got);
    assert!(!ok, "{out}");
    gw.stop().await.unwrap();
}

/// A config with two sources: `signed`, which signs with INBOUND_SECRET, and `keyed`, by key,
/// at one request a second (bursts of 2).
fn signed_source_config(ws: &Workspace) -> PathBuf {
    let config = ws.config("127.0.0.1:0", "");
    let keyed = format!(
        "[[sources]]\nname = \"keyed\"\napi_key = \"{SOURCE_KEY}\"\nrate_limit = {{ per_second = 1, burst = 2 }}\n"
    );
    with_sources(&config, &(signed_source("signed") + &keyed));
    config
}

#[tokio::test]
async fn inbound_signatures_timestamps_replays_and_rate_limits() {
    let ws = Workspace::new();
    let (gw, base) = start_gateway(&signed_source_config(&ws)).await;
    let body = incident("IN-1").to_string();
    let at = now();

    let good = Signed::at("evt_1", &body, at);
    assert_eq!(good.post(&base).await.status(), 202);
    // The same webhook-id again, even correctly signed, is a replay.
    assert_eq!(good.post(&base).await.status(), 401);
    // Wrong secret, tampered body, stale and future timestamps, no signature at all.
    let other = Signed {
        signature: sign(OTHER_SECRET, "evt_2", at, &body),
        ..Signed::at("evt_2", &body, at)
    };
    assert_eq!(other.post(&base).await.status(), 401);
    let tampered = Signed {
        body: body.replace("IN-1", "IN-X"),
        ..Signed::at("evt_3", &body, at)
    };
    assert_eq!(tampered.post(&base).await.status(), 401);
    // The clock is read again: a tick since the start of the test would make `at + 301` land
    // inside the tolerance.
    let fresh = now();
    for ts in [fresh - 301, fresh + 302] {
        let r = Signed::at("evt_4", &body, ts).post(&base).await;
        assert_eq!(r.status(), 401);
        let p: Value = r.json().await.unwrap();
        assert_eq!(
            p["detail"], "a valid credential is required",
            "no hint which part failed"
        );
    }
    let r = post_raw(&base, None, Some(APPLICATION_JSON), body.clone()).await;
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

impl Hostile {
    /// A request with the source's key, as JSON.
    fn keyed(what: String, body: impl Into<Vec<u8>>, expect: u16) -> Hostile {
        Hostile {
            what,
            headers: vec![
                ("authorization".to_string(), format!("Bearer {SOURCE_KEY}")),
                ("content-type".to_string(), "application/json".to_string()),
            ],
            body: body.into(),
            expect,
        }
    }

    /// The sample (with its own `id`) with `value` in `field`: the schema refuses it (422).
    fn wrong_field(id: &str, field: &str, value: Value) -> Hostile {
        let mut inc = incident(id);
        inc[field] = value.clone();
        Hostile::keyed(format!("{field} = {value}"), inc.to_string(), 422)
    }

    /// The same with `headers` instead of the key and content type.
    fn with_headers(self, headers: Vec<(String, String)>) -> Hostile {
        Hostile { headers, ..self }
    }
}

fn hostile_corpus() -> Vec<Hostile> {
    let mut out = Vec::new();
    // Deep nesting, in arrays and objects, at many depths past the limit.
    for depth in [65, 100, 1_000, 10_000, 100_000] {
        let array = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        out.push(Hostile::keyed(format!("array nesting {depth}"), array, 422));
        let mut obj = String::from("{\"incidentId\": \"deep\", \"x\": ");
        obj.push_str(&"{\"a\": ".repeat(depth));
        obj.push('1');
        obj.push_str(&"}".repeat(depth + 1));
        out.push(Hostile::keyed(format!("object nesting {depth}"), obj, 422));
    }
    // Huge strings: over the body limit (413) and under it but over the string limit (422).
    for mib in [2usize, 10] {
        let body = format!(
            "{{\"incidentId\": \"big\", \"x\": \"{}\"}}",
            "A".repeat(mib * 1024 * 1024)
        );
        out.push(Hostile::keyed(format!("{mib} MiB string"), body, 413));
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
        out.push(Hostile::keyed(
            format!("{chars} × {ch:?} string"),
            body,
            422,
        ));
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
        out.push(Hostile::keyed(format!("invalid utf-8 #{i}"), body, 400));
    }
    let nul = b"{\"incidentId\": \"a\0b\"}";
    out.push(Hostile::keyed("raw NUL in a string".into(), nul, 400));
    out.push(Hostile::keyed(
        "NUL bytes body".into(),
        vec![0u8; 1000],
        400,
    ));
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
        out.push(Hostile::wrong_field("TYPED", field, value));
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
        out.push(Hostile::keyed(
            format!("{path} = {value}"),
            inc.to_string(),
            422,
        ));
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
        out.push(Hostile::keyed(
            format!("malformed #{i}: {text:?}"),
            *text,
            400,
        ));
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
        out.push(Hostile::keyed(
            format!("not an incident: {text}"),
            text,
            422,
        ));
    }
    let big_batch: Vec<Value> = (0..101)
        .map(|i| json!({"incidentId": format!("B{i}")}))
        .collect();
    let big_batch = json!(big_batch).to_string();
    out.push(Hostile::keyed("101 incidents".into(), big_batch, 422));
    let huge_array = format!("[{}]", vec!["{\"incidentId\":\"h\"}"; 60_000].join(","));
    let what = "60,000 incidents (over the body limit)";
    out.push(Hostile::keyed(what.into(), huge_array, 413));
    let many = format!("[{}]", vec!["{\"incidentId\":\"h\"}"; 20_000].join(","));
    let what = "20,000 incidents (under the body limit)";
    out.push(Hostile::keyed(what.into(), many, 422));
    let mut mixed = vec![incident("OK-1"); 99];
    mixed.push(json!({"incidentId": 1}));
    let mixed = json!(mixed).to_string();
    out.push(Hostile::keyed("99 valid + 1 invalid".into(), mixed, 422));
    // Wrong or missing credentials, wrong content types.
    let json_only = || vec![("content-type".to_string(), "application/json".to_string())];
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
        let mut h = json_only();
        if !key.is_empty() {
            h.push(("authorization".to_string(), key.to_string()));
        }
        let body = incident("AUTH").to_string();
        out.push(Hostile::keyed(format!("credential #{i}"), body, 401).with_headers(h));
    }
    for ct in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
        "json",
    ] {
        let mut h = Hostile::keyed(
            format!("content-type {ct}"),
            incident("CT").to_string(),
            415,
        );
        h.headers[1].1 = ct.to_string();
        out.push(h);
    }
    // Signed requests gone wrong (the source signing with INBOUND_SECRET).
    let body = incident("SIG").to_string();
    let at = now();
    for i in 0..10 {
        let id = |kind: &str| format!("{kind}{i}");
        let forged = [
            ("stale", Signed::at(&id("s"), &body, at - 400 - i)),
            (
                "wrong",
                Signed {
                    signature: sign(SECRET_A, &id("w"), at, &body),
                    ..Signed::at(&id("w"), &body, at)
                },
            ),
            (
                "garbage",
                Signed {
                    signature: format!("v1,{}", "A".repeat(i as usize * 7)),
                    ..Signed::at(&id("g"), &body, at)
                },
            ),
        ];
        for (what, signed) in forged {
            let mut h = json_only();
            h.extend(signed.headers());
            let what = format!("{what} signature #{i}");
            out.push(Hostile::keyed(what, body.clone(), 401).with_headers(h));
        }
    }
    // Wrong types in every string field.
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
            out.push(Hostile::wrong_field("NESTED", field, value.clone()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corpus_of_hostile_requests_gets_its_4xx_and_leaves_nothing_behind() {
    let ws = Workspace::new();
    let config = signed_source_config(&ws);
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
    let dead = listed_when(&base, "status=dead", Duration::from_secs(10), |list| {
        list.len() == 3
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
    let id = first_delivery(&post_json(&base, &incident("DNS-1")).await);
    let dead = settled(&base, &id, &["dead"], Duration::from_secs(10)).await;
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
    let r = post_incident_via(
        &tls_client,
        &format!("{ingress}/v1/incidents"),
        &incident("TLS-1"),
    )
    .await;
    assert_eq!(r.status(), 202);
    // Plain HTTP to the TLS port gets no HTTP answer.
    let plain = client()
        .get(format!("http://{}/healthz", gw.addr))
        .send()
        .await;
    assert!(plain.is_err() || plain.unwrap().status() != 200);
    // The admin API is on its own address, and only there.
    for path in ["/v1/incidents/TLS-1", "/v1/deliveries"] {
        let r = get_as(&tls_client, &format!("{ingress}{path}"), ADMIN_TOKEN).await;
        assert_eq!(r.unwrap().status(), 404, "not on the ingress listener");
    }
    let admin_view = format!("{admin}/v1/incidents/TLS-1");
    let r = get_as(&admin_client, &admin_view, ADMIN_TOKEN)
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["incidentId"], "TLS-1");
    let plain_view = format!("http://{admin_addr}/v1/incidents/TLS-1");
    let plain = get_as(&client(), &plain_view, ADMIN_TOKEN).await;
    assert!(
        plain.is_err(),
        "plain HTTP on the admin listener: {plain:?}"
    );
    let r = get_as(&admin_client, &admin_view, SOURCE_KEY)
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "a source key never opens the admin API");
    let ingest_url = format!("{admin}/v1/incidents");
    let r = post_incident_via(&admin_client, &ingest_url, &incident("X")).await;
    // The path lists incidents there (GET, admin); it takes none.
    assert_eq!(r.status(), 405, "no ingest on the admin listener");
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
    let wrong = incident("X").to_string();
    post_raw(
        &base,
        Some("wrong-key-0000000000"),
        Some(APPLICATION_JSON),
        wrong,
    )
    .await;
    let deliveries = format!("{base}/v1/deliveries");
    get_as(&client(), &deliveries, "wrong-admin-00000000")
        .await
        .unwrap();
    receiver.wait_for(2, Duration::from_secs(10)).await;
    let done = json!({"reason_code": "other", "notes": "done"}).to_string();
    let r = complete(&base, "SECRET-LOG-1", Some(CALLBACK), &done).await;
    assert_eq!(r.status(), 200);
    // Let the SMTP deliveries fail against the closed port and go dead (the mail `completed`
    // then waits behind its dead `created`).
    let all_settled = listed_when(&base, "status=pending", Duration::from_secs(15), |list| {
        list.iter().all(|d| d["waiting_for"].is_string())
    })
    .await;
    assert!(all_settled.is_some());
    let (_, everything) = admin_get(&base, "/v1/incidents/SECRET-LOG-1").await;
    let render = Command::new(env!("CARGO_BIN_EXE_incident-gateway"))
        .args(["render", "--config"])
        .arg(&config)
        .args(["--connector", "ticketing", "--incident"])
        .arg(sample_file())
        .env("IGW_TEST_TARGET_TOKEN", TARGET_TOKEN)
        .env("IGW_TEST_CALLBACK", CALLBACK)
        .env("IGW_TEST_WHSEC", SECRET_A)
        .output()
        .unwrap();
    assert!(render.status.success());
    child.kill().unwrap();
    child.wait().unwrap();

    let logs = std::fs::read_to_string(&log_path).unwrap();
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
    assert!(
        ws.store_contains("incidentId"),
        "the store check reads what is stored"
    );
    for secret in secrets {
        assert!(!logs.contains(secret), "{secret} in the logs");
        assert!(!ws.store_contains(secret), "{secret} in the store");
        assert!(
            !everything.to_string().contains(secret),
            "{secret} in the admin API"
        );
        assert!(!render_out.contains(secret), "{secret} in render output");
    }
    eprintln!(
        "grepped {} log lines, the store, the admin view and render output for {} secrets: none found",
        logs.lines().count(),
        secrets.len()
    );
}

#[tokio::test]
async fn concurrent_copies_huge_signature_headers_and_absurd_timestamps_are_refused() {
    let ws = Workspace::new();
    let (gw, base) = start_gateway(&signed_source_config(&ws)).await;
    let copy = Signed::new("evt_copy", &incident("COPY-1"));
    // Eight copies of one signed request at once: exactly one gets in.
    let copies: Vec<_> = (0..8)
        .map(|_| {
            let (base, copy) = (base.clone(), copy.clone());
            tokio::spawn(async move { copy.post(&base).await.status().as_u16() })
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
    let many = Signed {
        id: "evt_many".into(),
        signature: vec![copy.signature.as_str(); 2000].join(" "),
        ..copy.clone()
    };
    assert_eq!(many.post(&base).await.status(), 401);
    // A timestamp at the edge of i64 neither panics nor passes.
    let min = Signed {
        id: "evt_min".into(),
        timestamp: i64::MIN,
        ..copy.clone()
    };
    assert_eq!(min.post(&base).await.status(), 401);
    assert_eq!(health(&base).await, 200);
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn a_source_with_a_key_and_a_secret_must_present_both() {
    let ws = Workspace::new();
    let config = ws.config("127.0.0.1:0", "");
    let both = format!(
        "[[sources]]\nname = \"both\"\napi_key = \"{SOURCE_KEY}\"\nsigning_secret = \"{INBOUND_SECRET}\"\n"
    );
    with_sources(&config, &both);
    let (gw, base) = start_gateway(&config).await;
    let signed = Signed::new("evt_both", &incident("BOTH-1"));
    // Signature alone: refused.
    assert_eq!(signed.post(&base).await.status(), 401);
    // Key alone: refused.
    assert_eq!(
        post_incident(&base, &incident("BOTH-1")).await.status(),
        401
    );
    // Both: accepted.
    let r = signed.post_with_key(&base, Some(SOURCE_KEY)).await;
    assert_eq!(r.status(), 202);
    gw.stop().await.unwrap();
}
