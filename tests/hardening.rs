//! Hardening (issue 10): no render stalls the gateway, renders have a budget, the default
//! retry schedule outlasts a maintenance window, a send's timeout bounds the attempt and no
//! lease runs out under a running attempt, the store is private, and secrets stay masked in
//! every encoding a receiver may echo them in.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn timed<T>(f: impl std::future::Future<Output = T>) -> (T, Duration) {
    let started = Instant::now();
    let out = f.await;
    (out, started.elapsed())
}

/// Documents built to cost each text-conversion helper the most: nesting that made
/// `html_to_text` quadratic, mismatched end tags, foreign content, Markdown containers, and
/// the longest flat list the ingress accepts.
fn hostile_documents() -> Vec<(&'static str, String, String)> {
    let nested_md: String = (0..400)
        .map(|i| format!("{}- x\n", "  ".repeat(i)))
        .collect();
    vec![
        ("nested divs", "<div>".repeat(50_000), ">".repeat(250_000)),
        ("nested lists", "<ul><li>".repeat(30_000), nested_md),
        (
            "mismatched ends",
            "<b a=1></i>".repeat(23_000),
            "[".repeat(250_000),
        ),
        (
            "svg cells",
            format!("<svg>{}", "<td>".repeat(60_000)),
            "*a_".repeat(80_000),
        ),
        (
            "flat list",
            // Under the ingress's 256 Ki characters, over the helpers' 256 KiB.
            format!("<ul>{}</ul>", "<li>é".repeat(50_000)),
            "- é\n".repeat(60_000),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_documents_never_stall_the_gateway() {
    let receiver = Receiver::start().await;
    let ws = Workspace::new();
    let template = r#"{"id": "{{incidentId}}", "html": "{{html_to_text extra.investigation_report}}", "line": "{{strip_html extra.investigation_report}}", "md": "{{markdown_to_text extra.recommendations}}"}"#;
    let connectors = ws.connector_with_template("convert", &receiver.url("/convert"), template, "");
    let config = ws.config("127.0.0.1:0", &connectors);
    // Generous, so every hostile render finishes here however slow a debug build is; the
    // budget has its own test.
    with_delivery(&config, "render_budget = \"120s\"");
    let (gateway, base) = start_gateway(&config).await;

    let docs = hostile_documents();
    for (i, (what, html, md)) in docs.iter().enumerate() {
        let mut incident = incident(&format!("hostile-{i}"));
        incident["extra"]["investigation_report"] = json!(html);
        incident["extra"]["recommendations"] = json!(md);
        let r = post_incident(&base, &incident).await;
        assert_eq!(r.status(), 202, "{what}: {}", r.text().await.unwrap());
    }
    // While those render, the listener answers and ingest takes new incidents.
    let (mut worst_health, mut worst_ingest) = (Duration::ZERO, Duration::ZERO);
    for i in 0..20 {
        let (health, took) = timed(client().get(format!("{base}/healthz")).send()).await;
        assert_eq!(health.unwrap().status(), 200);
        worst_health = worst_health.max(took);
        let (r, took) = timed(post_incident(&base, &incident(&format!("calm-{i}")))).await;
        assert_eq!(r.status(), 202);
        worst_ingest = worst_ingest.max(took);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("worst /healthz {worst_health:?}, worst ingest {worst_ingest:?}");
    // Before the fix a render held an async worker for tens of seconds.
    assert!(worst_health < Duration::from_secs(2), "{worst_health:?}");
    assert!(worst_ingest < Duration::from_secs(3), "{worst_ingest:?}");

    let got = receiver
        .wait_for(docs.len() + 20, Duration::from_secs(180))
        .await;
    assert_eq!(got.len(), docs.len() + 20);
    for (i, (what, _, _)) in docs.iter().enumerate() {
        let body = got
            .iter()
            .map(|r| r.json())
            .find(|b| b["id"] == format!("hostile-{i}"))
            .unwrap_or_else(|| panic!("{what}: not delivered"));
        let all = format!("{}{}{}", body["html"], body["line"], body["md"]);
        assert!(all.contains("[… truncated"), "{what}: no truncation note");
        assert!(all.len() < 2 * 1024 * 1024, "{what}: {} bytes", all.len());
    }
    gateway.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_render_over_its_budget_is_dead_with_the_reason() {
    let receiver = Receiver::start().await;
    let ws = Workspace::new();
    // A template that loops a costly helper: each call is bounded, the loop is not.
    let template =
        r#"{"x": "{{#each extra.items}}{{html_to_text ../extra.investigation_report}}{{/each}}"}"#;
    let connectors = ws.connector_with_template("slow", &receiver.url("/slow"), template, "");
    let config = ws.config("127.0.0.1:0", &connectors);
    with_delivery(&config, "render_budget = \"300ms\"");
    let (gateway, base) = start_gateway(&config).await;

    let mut incident = incident("over-budget");
    incident["extra"]["items"] = json!(vec![1; 2_000]);
    incident["extra"]["investigation_report"] = json!("<p>words and more words</p>".repeat(4_000));
    let id = first_delivery(&accepted(&base, &incident).await);
    let started = Instant::now();
    let d = settled(&base, &id, &["dead", "delivered"], Duration::from_secs(30)).await;
    println!("dead after {:?}: {}", started.elapsed(), d["last_error"]);
    assert_eq!(d["status"], "dead", "{d}");
    assert_eq!(d["attempt_count"], 1, "{d}");
    let reason = d["last_error"].as_str().unwrap();
    assert!(
        reason.contains("delivery.render_budget (300ms)"),
        "{reason}"
    );
    assert!(receiver.received().is_empty());
    assert_eq!(health(&base).await, 200);
    gateway.stop().await.unwrap();
}

/// README.md's table of the default retry schedule is the schedule the code uses.
#[test]
fn the_readme_retry_table_is_the_default_schedule() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let section = readme
        .split("### Default retry schedule")
        .nth(1)
        .expect("README has a 'Default retry schedule' section");
    let mut waits = Vec::new();
    let mut at = Duration::ZERO;
    for line in section.lines().skip_while(|l| !l.starts_with('|')) {
        if !line.starts_with('|') {
            break;
        }
        let cells: Vec<&str> = line
            .split('|')
            .map(|c| c.trim().trim_matches('`'))
            .collect();
        let Ok(attempt) = cells[1].parse::<usize>() else {
            continue;
        };
        if attempt == 1 {
            continue;
        }
        let wait = humantime::parse_duration(cells[2]).unwrap_or_else(|e| panic!("{line}: {e}"));
        at += wait;
        let shown = humantime::parse_duration(&cells[3].replace(' ', ""))
            .unwrap_or_else(|e| panic!("{line}: {e}"));
        assert_eq!(shown, at, "{line}: the running total");
        assert_eq!(attempt, waits.len() + 2, "{line}");
        waits.push(wait);
    }
    assert_eq!(
        waits,
        incident_gateway::connector::DEFAULT_RETRY_SCHEDULE.to_vec(),
        "README table vs DEFAULT_RETRY_SCHEDULE"
    );
    let policy = incident_gateway::connector::RetryPolicy::default();
    let shown = section
        .split("`max_age` (default ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .expect("the section names max_age's default");
    assert_eq!(humantime::parse_duration(shown).unwrap(), policy.max_age);
}

/// The default schedule's shape at 1/1800 scale (5 s → 2.8 ms, 2 h → 4 s, 24 h → 48 s):
/// a receiver down for "two hours" gets the delivery when it is back, and nothing is dead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_for_two_hours_of_schedule_loses_nothing() {
    let scale = 1800;
    let steps: Vec<String> = incident_gateway::connector::DEFAULT_RETRY_SCHEDULE
        .iter()
        .map(|d| format!("\"{}ms\"", d.as_millis() / scale))
        .collect();
    // The schedule's shape is what is measured: the circuit breaker, which would hold the
    // deliveries untried while the receiver is down, is off (tests/circuit.rs has it on).
    let retry = format!(
        "[connectors.retry]\nschedule = [{}]\nmax_age = \"{}ms\"\n[connectors.circuit]\nfailures = 0\n",
        steps.join(", "),
        24 * 3600 * 1000 / scale
    );
    let port = free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let ws = Workspace::new();
    let mut connectors = http_connector("down", &format!("http://{addr}/hook"), &retry);
    connectors = connectors.replace("timeout = \"5s\"", "timeout = \"1s\"");
    let config = ws.config("127.0.0.1:0", &connectors);
    let (gateway, base) = start_gateway(&config).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(first_delivery(
            &accepted(&base, &incident(&format!("outage-{i}"))).await,
        ));
    }
    let outage = Duration::from_secs(2 * 3600) / scale as u32;
    tokio::time::sleep(outage).await;
    for id in &ids {
        let (_, d) = admin_get(&base, &format!("/v1/deliveries/{id}")).await;
        assert_eq!(d["status"], "pending", "during the outage: {d}");
    }
    let receiver = Receiver::start_on(addr).await;
    for id in &ids {
        let d = settled(&base, id, &["delivered", "dead"], Duration::from_secs(30)).await;
        assert_eq!(d["status"], "delivered", "{d}");
        let attempts = d["attempt_count"].as_u64().unwrap();
        assert!(attempts >= 7, "{attempts} attempts: {d}");
        println!("{id}: delivered on attempt {attempts}");
    }
    assert_eq!(receiver.received().len(), ids.len());
    gateway.stop().await.unwrap();
}

/// A receiver that accepts, reads the request, then `behave`s.
async fn misbehaving_receiver(behave: &'static str) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let _ = stream.read(&mut buf).await;
                match behave {
                    "hold" => tokio::time::sleep(Duration::from_secs(60)).await,
                    _ => {
                        let head = "HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n";
                        let _ = stream.write_all(head.as_bytes()).await;
                        for _ in 0..600 {
                            if stream.write_all(b"x").await.is_err() {
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_attempt_ends_at_the_connectors_timeout() {
    let hold = misbehaving_receiver("hold").await;
    let trickle = misbehaving_receiver("trickle").await;
    let ws = Workspace::new();
    let connectors = [
        http_connector("hold", &format!("http://{hold}/x"), ""),
        http_connector("trickle", &format!("http://{trickle}/x"), ""),
    ]
    .concat()
    .replace("timeout = \"5s\"", "timeout = \"1s\"");
    let config = ws.config("127.0.0.1:0", &connectors);
    let (gateway, base) = start_gateway(&config).await;
    let r = post_incident(&base, &incident("slow-receivers")).await;
    assert_eq!(r.status(), 202);
    let accepted: Value = r.json().await.unwrap();
    for d in accepted["deliveries"].as_array().unwrap() {
        let id = d["id"].as_str().unwrap();
        // An attempt is recorded within 10 s.
        let seen = attempted(&base, id, 1, Duration::from_secs(10)).await;
        let attempt = &seen["attempts"][0];
        let latency = attempt["latency_ms"].as_i64().unwrap();
        println!("{}: {latency} ms, {}", d["connector"], attempt["error"]);
        assert!((900..2_500).contains(&latency), "{seen}");
        // A status that arrived before the body was cut short stands; no status is a retry.
        let expected = if d["connector"] == "hold" {
            "pending"
        } else {
            "delivered"
        };
        assert_eq!(seen["status"], expected, "{seen}");
        assert!(
            attempt["error"]
                .as_str()
                .unwrap_or("")
                .contains("timed out"),
            "{seen}"
        );
    }
    gateway.stop().await.unwrap();
}

/// An attempt that runs longer than the lease keeps it: nobody else sends the delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_lease_runs_out_under_a_running_attempt() {
    let (receiver, _ws, config) = receiver_and_config("slow", "/slow", "").await;
    receiver.script([Reply::status(200).after(Duration::from_secs(7))]);
    edit(&config, |text| {
        text.replace("timeout = \"5s\"", "timeout = \"15s\"")
    });
    with_delivery(&config, "lease = \"3s\"");
    let (gateway, base) = start_gateway(&config).await;
    let id = first_delivery(&post_json(&base, &incident("long-attempt")).await);
    let d = settled(&base, &id, &["delivered", "dead"], Duration::from_secs(20)).await;
    assert_eq!(d["status"], "delivered", "{d}");
    assert_eq!(d["attempt_count"], 1, "{d}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        receiver.received().len(),
        1,
        "sent again while the first send ran"
    );
    gateway.stop().await.unwrap();
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let ws = Workspace::new();
    let config = ws.config("127.0.0.1:0", "");
    // A file left world-readable by an older version is tightened too.
    std::fs::write(ws.db(), b"").unwrap();
    std::fs::set_permissions(ws.db(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let (gateway, base) = start_gateway(&config).await;
    assert_eq!(
        post_incident(&base, &incident("private")).await.status(),
        202
    );
    let mut checked = 0;
    for path in ws.store_files() {
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}: {mode:o}", path.display());
        checked += 1;
    }
    // The database, its WAL, its shared memory and the lock file.
    assert!(checked >= 4, "{checked} files");
    gateway.stop().await.unwrap();
}

/// Every form of `secret` a receiver or a template may turn it into.
fn encodings(secret: &str) -> Vec<(&'static str, String)> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    vec![
        ("plain", secret.to_string()),
        ("upper", secret.to_uppercase()),
        ("lower", secret.to_lowercase()),
        ("json \\/", secret.replace('/', "\\/")),
        (
            "url",
            secret
                .replace('%', "%25")
                .replace('/', "%2F")
                .replace('+', "%2B")
                .replace('=', "%3D"),
        ),
        ("basic", b64.encode(format!("user:{secret}"))),
        ("auth plain", b64.encode(format!("\0user\0{secret}"))),
    ]
}

/// A receiver that echoes the request's credentials back in every encoding, with a 400.
async fn echoing_receiver() -> std::net::SocketAddr {
    use axum::http::HeaderMap;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(|headers: HeaderMap, body: String| async move {
        let token = headers
            .get("x-api-token")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let echoed: Vec<String> = encodings(&token).into_iter().map(|(_, e)| e).collect();
        let text = format!("{{\"echo\": {:?}, \"body\": {body:?}}}", echoed.join(" "));
        (axum::http::StatusCode::BAD_REQUEST, text)
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_echoed_in_any_encoding_stay_masked() {
    let token = "Tok/en+Secret=9f8e7d6c5b";
    let var = "Var/Secret+abc123XYZ";
    let echo = echoing_receiver().await;
    let ws = Workspace::new();
    // The template puts a secret var through helpers into the body, which is echoed.
    let template = r#"{"id": "{{incidentId}}", "k": "{{upper connector.vars.key}}", "l": "{{lower connector.vars.key}}"}"#;
    let connectors = ws.connector_with_template(
        "echo",
        &format!("http://{echo}/echo"),
        template,
        "vars = { key = \"${ECHO_VAR}\" }\n[connectors.headers]\n\"X-Api-Token\" = \"${ECHO_TOKEN}\"\n",
    );
    let config = ws.config("127.0.0.1:0", &connectors);
    let log_path = ws.path().join("gateway.log");
    let (mut child, base) = spawn_binary_logged(
        &config,
        "debug",
        &[("ECHO_TOKEN", token), ("ECHO_VAR", var)],
        &log_path,
    );

    let id = first_delivery(&accepted(&base, &incident("echo-1")).await);
    let d = settled(&base, &id, &["dead"], Duration::from_secs(20)).await;
    let admin = admin(reqwest::Method::GET, &base, &format!("/v1/deliveries/{id}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        admin.contains("********"),
        "the echo was recorded, masked: {d}"
    );
    sigkill(&mut child);

    let mut places = vec![("admin API", admin.into_bytes())];
    places.push(("log", std::fs::read(&log_path).unwrap()));
    for path in ws.store_files() {
        places.push(("store", std::fs::read(&path).unwrap()));
    }
    let log = String::from_utf8_lossy(&places[1].1).to_string();
    assert!(log.contains("DEBUG"), "the log ran at debug");
    for secret in [token, var] {
        for (form, text) in encodings(secret) {
            for (place, bytes) in &places {
                let found = bytes.windows(text.len()).any(|w| w == text.as_bytes());
                assert!(!found, "{form} form of a secret in the {place}");
            }
        }
    }
}

/// Sends headers declaring `declared` bytes and 1 KiB of body, then waits for the status.
async fn early_status(
    addr: std::net::SocketAddr,
    path: &str,
    auth: &str,
    declared: usize,
) -> Option<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {declared}\r\n{auth}\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&[b' '; 1024]).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    text.lines().next().map(str::to_string)
}

/// The back channel and the admin resolve read a body only after the caller is known, and
/// only as much as the endpoint needs: a caller without credentials, or a body too large,
/// is answered from the headers instead of holding a connection and memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_of_every_endpoint_are_read_only_after_authentication() {
    let receiver = Receiver::start().await;
    let ws = Workspace::new();
    let config = ws.config(
        "127.0.0.1:0",
        &http_connector(
            "t",
            &receiver.url("/t"),
            "callback_token = \"connector-callback-token-1\"",
        ),
    );
    let (gw, _base) = start_gateway(&config).await;
    let no_auth = "";
    let callback = "authorization: Bearer connector-callback-token-1\r\n";
    let admin = format!("authorization: Bearer {ADMIN_TOKEN}\r\n");
    let cases = [
        ("/v1/incidents/x/complete", no_auth, 2_000_000, "401"),
        ("/v1/deliveries/x/resolve", no_auth, 2_000_000, "401"),
        ("/v1/incidents/x/complete", callback, 2_000_000, "413"),
        ("/v1/deliveries/x/resolve", admin.as_str(), 2_000_000, "413"),
    ];
    for (path, auth, declared, expected) in cases {
        let status = early_status(gw.addr, path, auth, declared).await;
        let status = status.unwrap_or_else(|| panic!("{path}: no answer while the body is unsent"));
        assert!(status.contains(expected), "{path}: {status}");
    }
    gw.stop().await.unwrap();
}
