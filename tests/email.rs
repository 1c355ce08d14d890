//! Email-to-ticket bridges: SMTP connectors against a real SMTP server (Python's aiosmtpd,
//! installed by .ci/run), reading the stored messages back.

mod common;

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::smtp::SmtpServer;
use common::*;
use mail_parser::{HeaderValue, MessageParser};
use serde_json::{Value, json};

fn mail_config(ws: &Workspace, port: u16, extra: &str) -> PathBuf {
    ws.write(
        "body.txt.hbs",
        "Incident {{incidentId}} ({{event}})\n\n{{markdown_to_text (default incident.description \"\")}}\n",
    );
    ws.write(
        "body.html.hbs",
        "<h1>{{incident.summary}}</h1><p>Incident {{incidentId}}</p>",
    );
    ws.config(
        "127.0.0.1:0",
        &format!(
            r#"
[[connectors]]
name = "rt"
kind = "smtp"
smtp_url = "smtp://127.0.0.1:{port}"
from = "SOC Gateway <soc@example.com>"
to = ["rt@example.com"]
cc = ["audit@example.com"]
subject = "{{{{incident.summary}}}}"
subject_tag = "[{{{{humanFriendlyId}}}}]"
template = "body.txt.hbs"
html_template = "body.html.hbs"
timeout = "5s"
concurrency = 4
{extra}
[connectors.retry]
max_attempts = 100
initial_backoff = "100ms"
max_backoff = "300ms"
"#
        ),
    )
}

fn header_text(message: &mail_parser::Message, name: &str) -> Option<String> {
    message.header(name).map(|h| match h {
        HeaderValue::Text(t) => t.to_string(),
        HeaderValue::TextList(l) => l.join(" "),
        other => format!("{other:?}"),
    })
}

#[tokio::test]
async fn mails_carry_both_parts_a_tagged_encoded_subject_and_thread_on_the_ticket() {
    let port = free_port();
    let ws = Workspace::new();
    let server = SmtpServer::start(port, &ws.path().join("mails"), None);
    let config = mail_config(&ws, port, "correlation_key = \"{{incident_class}}\"");
    let (gw, base) = start_gateway(&config).await;

    let mut first = incident("MAIL-1");
    first["incident"]["summary"] = json!("Brute force — Überprüfung 漢字 🚨");
    let r = post_json(&base, &first).await;
    let first_id = first_delivery(&r);
    server.wait_for(1, Duration::from_secs(10)).await;
    let r = post_json(&base, &incident("MAIL-2")).await;
    assert_eq!(r["deliveries"][0]["event"], "updated");
    let second_id = first_delivery(&r);
    let mails = server.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(mails.len(), 2);

    let (envelope, raw) = &mails[0];
    assert_eq!(envelope["mail_from"], "soc@example.com");
    assert_eq!(
        envelope["rcpt_tos"],
        json!(["rt@example.com", "audit@example.com"])
    );
    assert!(
        raw.contains("Subject: [ww1k39] Brute force =?utf-8?b?"),
        "non-ASCII subject is RFC 2047 encoded:\n{raw}"
    );
    let parsed = MessageParser::default().parse(raw.as_bytes()).unwrap();
    assert_eq!(
        parsed.subject(),
        Some("[ww1k39] Brute force — Überprüfung 漢字 🚨")
    );
    assert_eq!(
        parsed.message_id(),
        Some(format!("{first_id}@example.com").as_str())
    );
    assert!(raw.contains("Content-Type: multipart/alternative"), "{raw}");
    assert!(
        parsed
            .body_text(0)
            .unwrap()
            .contains("Incident MAIL-1 (created)")
    );
    assert!(
        parsed.body_text(0).unwrap().contains("Attack Detail:"),
        "markdown rendered as text"
    );
    assert!(
        parsed
            .body_html(0)
            .unwrap()
            .contains("<h1>Brute force — Überprüfung 漢字 🚨</h1>")
    );

    let reply = MessageParser::default()
        .parse(mails[1].1.as_bytes())
        .unwrap();
    let root = format!("<{first_id}@example.com>");
    assert_eq!(
        reply.message_id(),
        Some(format!("{second_id}@example.com").as_str())
    );
    assert_eq!(
        header_text(&reply, "In-Reply-To").map(|v| format!("<{v}>")),
        Some(root.clone())
    );
    assert!(
        mails[1].1.contains(&format!("References: {root}")),
        "{}",
        mails[1].1
    );
    assert!(reply.subject().unwrap().starts_with("[ww1k39] "));
    assert!(
        reply
            .body_text(0)
            .unwrap()
            .contains("Incident MAIL-2 (updated)")
    );

    // The admin view shows the thread root as the ticket id.
    let (_, view) = admin_get(&base, "/v1/incidents/MAIL-2").await;
    assert_eq!(
        view["connectors"]["rt"]["tickets"][0]["ticket_id"],
        root.as_str()
    );
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn a_subject_cannot_inject_a_header_or_a_recipient() {
    let port = free_port();
    let ws = Workspace::new();
    let server = SmtpServer::start(port, &ws.path().join("mails"), None);
    let config = mail_config(&ws, port, "");
    let (gw, base) = start_gateway(&config).await;
    let mut evil = incident("EVIL-1");
    evil["incident"]["summary"] = json!("x\r\nBcc: attacker@example.com");
    evil["humanFriendlyId"] = json!("id\r\nCc: attacker2@example.com");
    assert_eq!(post_incident(&base, &evil).await.status(), 202);
    let mails = server.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(mails.len(), 1);
    let (envelope, raw) = &mails[0];
    assert_eq!(
        envelope["rcpt_tos"],
        json!(["rt@example.com", "audit@example.com"])
    );
    let headers = raw.split("\r\n\r\n").next().unwrap();
    assert!(
        !headers.to_ascii_lowercase().contains("\nbcc:"),
        "{headers}"
    );
    assert!(
        !headers
            .to_ascii_lowercase()
            .contains("attacker2@example.com\r\n"),
        "{headers}"
    );
    let parsed = MessageParser::default().parse(raw.as_bytes()).unwrap();
    assert_eq!(
        parsed.subject(),
        Some("[id Cc: attacker2@example.com] x Bcc: attacker@example.com")
    );
    assert_eq!(parsed.bcc(), None);
    assert_eq!(
        parsed.cc().unwrap().first().unwrap().address(),
        Some("audit@example.com")
    );
    gw.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mails_queue_while_the_server_is_down_and_each_arrives_once() {
    const N: usize = 20;
    let port = free_port();
    let ws = Workspace::new();
    let config = mail_config(&ws, port, "");
    let (gw, base) = start_gateway(&config).await;
    let mut ids = HashSet::new();
    for i in 0..N {
        let r = post_json(&base, &incident(&format!("DOWN-{i}"))).await;
        ids.insert(format!(
            "{}@example.com",
            r["deliveries"][0]["id"].as_str().unwrap()
        ));
    }
    // Wait until every mail has failed at least once against the closed port.
    let retried = eventually(Duration::from_secs(20), || async {
        let (_, v) = admin_get(&base, "/v1/deliveries?status=pending&limit=100").await;
        let list = v["deliveries"].as_array().cloned().unwrap_or_default();
        (list.len() == N && list.iter().all(|d| d["attempt_count"].as_u64() >= Some(1)))
            .then_some(list)
    })
    .await
    .expect("all queued and retrying");
    assert!(retried[0]["last_error"].as_str().unwrap().len() > 3);

    let server = SmtpServer::start(port, &ws.path().join("mails"), None);
    let mails = server.wait_for(N, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mails = if mails.len() == N {
        server.messages()
    } else {
        mails
    };
    let got: Vec<String> = mails
        .iter()
        .map(|(_, raw)| {
            MessageParser::default()
                .parse(raw.as_bytes())
                .unwrap()
                .message_id()
                .unwrap()
                .to_string()
        })
        .collect();
    let unique: HashSet<String> = got.iter().cloned().collect();
    assert_eq!(got.len(), N, "each delivery arrived exactly once");
    assert_eq!(unique, ids, "under the Message-ID of its delivery");
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn a_5xx_reply_is_final_and_recorded_with_the_servers_words() {
    let port = free_port();
    let ws = Workspace::new();
    let _server = SmtpServer::start(
        port,
        &ws.path().join("mails"),
        Some("554 5.7.1 Rejected by policy"),
    );
    let config = mail_config(&ws, port, "");
    let (gw, base) = start_gateway(&config).await;
    let r = post_json(&base, &incident("REJECT-1")).await;
    let id = first_delivery(&r);
    let dead = delivery_when(&base, &id, Duration::from_secs(10), |v| {
        v["status"] == "dead"
    })
    .await
    .expect("dead at once");
    assert_eq!(dead["attempt_count"], 1);
    let attempt = &dead["attempts"][0];
    assert_eq!(attempt["status_code"], 554);
    assert!(
        attempt["error"]
            .as_str()
            .unwrap()
            .contains("Rejected by policy"),
        "{attempt}"
    );
    gw.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_a_thousand_mails_reuses_a_few_connections() {
    const N: usize = 1000;
    let port = free_port();
    let ws = Workspace::new();
    let server = SmtpServer::start(port, &ws.path().join("mails"), None);
    let config = mail_config(&ws, port, "");
    let (gw, base) = start_gateway(&config).await;
    for chunk in 0..N / 100 {
        let batch: Vec<Value> = (0..100)
            .map(|i| incident(&format!("POOL-{chunk}-{i}")))
            .collect();
        assert_eq!(post_incident(&base, &json!(batch)).await.status(), 202);
    }
    let mails = server.wait_for(N, Duration::from_secs(120)).await;
    assert_eq!(mails.len(), N);
    let connections = server.connections();
    eprintln!("{N} mails over {connections} SMTP connections (connector concurrency 4)");
    assert!(connections <= 8, "{connections} connections for {N} mails");
    gw.stop().await.unwrap();
}

#[test]
fn render_shows_the_whole_message_and_check_parses_addresses() {
    let ws = Workspace::new();
    let config = mail_config(&ws, 2525, "");
    ws.write(
        "incidents/sample.json",
        &std::fs::read_to_string(repo().join("examples/incidents/sample.json")).unwrap(),
    );
    let bin = env!("CARGO_BIN_EXE_incident-gateway");
    let out = Command::new(bin)
        .args(["render", "--config"])
        .arg(&config)
        .args(["--connector", "rt", "--event", "updated", "--incident"])
        .arg(repo().join("examples/incidents/sample.json"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("SMTP 127.0.0.1:2525"), "{text}");
    for needle in [
        "From: \"SOC Gateway\" <soc@example.com>",
        "To: rt@example.com",
        "Subject: [ww1k39] Brute force attempt from 1.2.3.4",
        "Message-ID: <msg_preview@example.com>",
        "In-Reply-To: <msg_preview_root@example.com>",
        "Content-Type: multipart/alternative",
        "Content-Type: text/plain",
        "Content-Type: text/html",
    ] {
        assert!(text.contains(needle), "{needle} in:\n{text}");
    }
    let out = Command::new(bin)
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A bad address is caught at load, with its field.
    edit(&config, |text| {
        text.replace("rt@example.com", "not an address")
    });
    let out = Command::new(bin)
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("connectors[0].to[0]") && err.contains("not an address"),
        "{err}"
    );
}

#[tokio::test]
async fn starttls_and_implicit_tls_with_a_private_ca() {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    for (scheme, extra) in [("smtp+starttls", vec![]), ("smtps", vec!["--implicit-tls"])] {
        let port = free_port();
        let ws = Workspace::new();
        let cert_file = ws.write("cert.pem", &cert.cert.pem());
        let key_file = ws.write("key.pem", &cert.signing_key.serialize_pem());
        let mut args = vec![
            "--tls-cert",
            cert_file.to_str().unwrap(),
            "--tls-key",
            key_file.to_str().unwrap(),
        ];
        args.extend(extra);
        let server = SmtpServer::start_with(port, &ws.path().join("mails"), &args);
        let config = mail_config(&ws, port, "tls_ca_file = \"cert.pem\"");
        edit(&config, |text| {
            text.replace(
                &format!("smtp://127.0.0.1:{port}"),
                &format!("{scheme}://127.0.0.1:{port}"),
            )
        });
        let (gw, base) = start_gateway(&config).await;
        assert_eq!(
            post_incident(&base, &incident(&format!("TLS-{scheme}")))
                .await
                .status(),
            202
        );
        let mails = server.wait_for(1, Duration::from_secs(15)).await;
        assert_eq!(mails.len(), 1, "{scheme}: delivered over TLS");
        gw.stop().await.unwrap();
    }
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused() {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let port = free_port();
    let ws = Workspace::new();
    let cert_file = ws.write("cert.pem", &cert.cert.pem());
    let key_file = ws.write("key.pem", &cert.signing_key.serialize_pem());
    let server = SmtpServer::start_with(
        port,
        &ws.path().join("mails"),
        &[
            "--tls-cert",
            cert_file.to_str().unwrap(),
            "--tls-key",
            key_file.to_str().unwrap(),
        ],
    );
    // No tls_ca_file: the self-signed certificate is not trusted.
    let config = mail_config(&ws, port, "");
    edit(&config, |text| {
        text.replace(
            &format!("smtp://127.0.0.1:{port}"),
            &format!("smtp+starttls://127.0.0.1:{port}"),
        )
    });
    let (gw, base) = start_gateway(&config).await;
    let r = post_json(&base, &incident("UNTRUSTED")).await;
    let id = first_delivery(&r);
    let failed = delivery_when(&base, &id, Duration::from_secs(10), |v| {
        v["attempt_count"].as_u64() >= Some(1)
    })
    .await
    .expect("an attempt was made");
    assert_ne!(failed["status"], "delivered");
    let error = failed["attempts"][0]["error"]
        .as_str()
        .unwrap_or_default()
        .to_lowercase();
    assert!(
        error.contains("certificate") || error.contains("tls"),
        "{error}"
    );
    assert!(server.messages().is_empty());
    gw.stop().await.unwrap();
}

/// The sequences that end DATA early on one MTA or another (SMTP smuggling), each followed by
/// the commands an attacker would have the server read in the gateway's session.
const SMUGGLING: [(&str, &str); 5] = [
    ("CR.CRLF", "\r.\r\n"),
    ("LF.LF", "\n.\n"),
    ("CRLF.CR", "\r\n.\r"),
    ("LF.CRLF", "\n.\r\n"),
    ("CRLF.CRLF", "\r\n.\r\n"),
];

/// A connector whose text and HTML parts carry `incident.description` as it came (a text
/// template escapes nothing), so every byte an incident sends reaches the MIME layer.
fn raw_text_config(ws: &Workspace, port: u16) -> PathBuf {
    ws.write(
        "raw.txt.hbs",
        "Incident {{incidentId}}\n{{incident.description}}\n",
    );
    ws.write("raw.html.hbs", "<pre>{{incident.description}}</pre>");
    ws.config(
        "127.0.0.1:0",
        &format!(
            r#"
[[connectors]]
name = "rt"
kind = "smtp"
smtp_url = "smtp://127.0.0.1:{port}"
from = "SOC Gateway <soc@example.com>"
to = ["rt@example.com"]
subject = "{{{{incident.summary}}}}"
template = "raw.txt.hbs"
html_template = "raw.html.hbs"
timeout = "5s"
[connectors.retry]
max_attempts = 100
initial_backoff = "100ms"
max_backoff = "300ms"
"#
        ),
    )
}

/// Posts one incident per smuggling sequence and returns the ids of the deliveries, by label.
async fn post_smuggling_incidents(base: &str) -> Vec<(String, String)> {
    let mut ids = Vec::new();
    for (i, (label, seq)) in SMUGGLING.iter().enumerate() {
        let mut evil = incident(&format!("SMUGGLE-{i}"));
        evil["incident"]["summary"] = json!(format!("smuggle {label}{seq}RCPT TO:<a@evil>"));
        evil["incident"]["description"] = json!(format!(
            "before-{label}{seq}MAIL FROM:<x@evil>\r\nRCPT TO:<attacker@example.com>\r\nDATA\r\n\
             after-{label} smuggled\r\nnul\u{0}byte\r\n"
        ));
        let r = post_incident(base, &evil).await;
        assert_eq!(r.status(), 202, "{label}");
        let r: Value = r.json().await.unwrap();
        ids.push((label.to_string(), first_delivery(&r)));
    }
    ids
}

/// Each delivery arrived as exactly one message, to the configured recipient only, with the
/// text after the sequence inside its decoded body (not read as commands).
async fn assert_whole_and_alone(server: &SmtpServer, ids: &[(String, String)]) {
    let mails = server.wait_for(ids.len(), Duration::from_secs(15)).await;
    // Anything smuggled would arrive as a further message: give it a moment to show.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mails = if mails.len() == ids.len() {
        server.messages()
    } else {
        mails
    };
    let summary: Vec<String> = mails
        .iter()
        .map(|(envelope, raw)| {
            format!(
                "{} -> {}: {:.300?}",
                envelope["mail_from"], envelope["rcpt_tos"], raw
            )
        })
        .collect();
    assert_eq!(
        mails.len(),
        ids.len(),
        "one message per delivery:\n{summary:#?}"
    );
    for (label, id) in ids {
        let found: Vec<_> = mails
            .iter()
            .filter(|(_, raw)| raw.contains(&format!("Message-ID: <{id}@example.com>")))
            .collect();
        assert_eq!(found.len(), 1, "{label}: one message:\n{summary:#?}");
        let (envelope, raw) = found[0];
        assert_eq!(envelope["mail_from"], "soc@example.com", "{label}");
        assert_eq!(envelope["rcpt_tos"], json!(["rt@example.com"]), "{label}");
        let parsed = MessageParser::default().parse(raw.as_bytes()).unwrap();
        let text = parsed.body_text(0).unwrap();
        // The HTML part escapes < and >: read it back as text.
        let html = parsed
            .body_html(0)
            .unwrap()
            .replace("&lt;", "<")
            .replace("&gt;", ">");
        for body in [text.to_string(), html] {
            for needle in [
                format!("before-{label}"),
                "MAIL FROM:<x@evil>".to_string(),
                "RCPT TO:<attacker@example.com>".to_string(),
                format!("after-{label} smuggled"),
                "nulbyte".to_string(),
            ] {
                assert!(
                    body.contains(&needle),
                    "{label}: {needle:?} in the body:\n{body:?}"
                );
            }
        }
        assert!(
            parsed
                .subject()
                .unwrap()
                .starts_with(&format!("smuggle {label}")),
            "{label}: {:?}",
            parsed.subject()
        );
    }
}

#[tokio::test]
async fn smuggling_sequences_arrive_whole_and_alone_at_a_strict_server() {
    let port = free_port();
    let ws = Workspace::new();
    let server = SmtpServer::start(port, &ws.path().join("mails"), None);
    let gw = start_in_process(&raw_text_config(&ws, port)).await;
    let ids = post_smuggling_incidents(&format!("http://{}", gw.addr)).await;
    assert_whole_and_alone(&server, &ids).await;
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn smuggling_sequences_arrive_whole_and_alone_at_a_lenient_server() {
    let port = free_port();
    let ws = Workspace::new();
    let server = SmtpServer::sink(port, &ws.path().join("mails"), &[]);
    let gw = start_in_process(&raw_text_config(&ws, port)).await;
    let ids = post_smuggling_incidents(&format!("http://{}", gw.addr)).await;
    assert_whole_and_alone(&server, &ids).await;
    // What went on the wire: no line end but CRLF, no NUL, nothing 8-bit.
    for entry in std::fs::read_dir(ws.path().join("mails")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|x| x == "raw") {
            let bytes = std::fs::read(&path).unwrap();
            for (i, &b) in bytes.iter().enumerate() {
                let at = || {
                    String::from_utf8_lossy(&bytes[i.saturating_sub(40)..(i + 40).min(bytes.len())])
                        .to_string()
                };
                assert!(
                    b != 0 && b < 0x80,
                    "{}: byte {b:#x} at {i}: {:?}",
                    path.display(),
                    at()
                );
                if b == b'\r' {
                    assert_eq!(bytes.get(i + 1), Some(&b'\n'), "bare CR at {i}: {:?}", at());
                }
                if b == b'\n' {
                    assert_eq!(bytes[i - 1], b'\r', "bare LF at {i}: {:?}", at());
                }
            }
        }
    }
    gw.stop().await.unwrap();
}

/// Item 9: the connector's `timeout` bounds the whole SMTP send. The server takes the message
/// and then holds its reply far beyond the timeout and the lease; each attempt must end at
/// the timeout as a retry with the reason, the connection closed, so no two sends of the
/// message overlap.
#[tokio::test]
async fn a_stalled_reply_ends_the_attempt_at_the_connectors_timeout() {
    let port = free_port();
    let ws = Workspace::new();
    let server = SmtpServer::sink(port, &ws.path().join("mails"), &["--stall-data", "60"]);
    let config = mail_config(&ws, port, "");
    edit(&config, |text| {
        text.replace("timeout = \"5s\"", "timeout = \"1s\"")
    });
    with_delivery(&config, "lease = \"31s\"");
    let (gw, base) = start_gateway(&config).await;
    let started = std::time::Instant::now();
    let r = post_json(&base, &incident("STALL-1")).await;
    let id = first_delivery(&r);
    // The server held the reply for 60 s; the bug let the attempt wait all of it.
    let view = delivery_when(&base, &id, Duration::from_secs(10), |v| {
        v["attempt_count"].as_u64() >= Some(2)
    })
    .await
    .expect("two attempts recorded well inside the 60 s the server held its reply");
    let took = started.elapsed();
    eprintln!("two attempts recorded {took:?} after the post (timeout 1s, reply held 60s)");
    assert_eq!(view["status"], "pending", "a timeout is retried: {view}");
    for attempt in view["attempts"].as_array().unwrap().iter().take(2) {
        let error = attempt["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("the SMTP send took longer than the connector's timeout (1s)"),
            "{attempt}"
        );
        let latency = attempt["latency_ms"].as_i64().unwrap();
        eprintln!("attempt {} took {latency} ms: {error}", attempt["attempt"]);
        assert!(
            (900..4000).contains(&latency),
            "ended at the timeout: {attempt}"
        );
    }
    // The message reached the server on each attempt (at least once), but the sessions that
    // carried it never overlapped: each was closed before the next began.
    let events: Vec<Value> = std::fs::read_to_string(ws.path().join("mails/events.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut spans: Vec<(f64, f64)> = Vec::new();
    for e in events.iter().filter(|e| e["event"] == "data") {
        let session = &e["session"];
        let start = e["t"].as_f64().unwrap();
        let end = events
            .iter()
            .find(|c| c["event"] == "close" && &c["session"] == session)
            .and_then(|c| c["t"].as_f64())
            .unwrap_or(f64::INFINITY);
        spans.push((start, end));
    }
    assert!(spans.len() >= 2, "{events:?}");
    spans.sort_by(|a, b| a.0.total_cmp(&b.0));
    for pair in spans.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "two sends overlapped: {spans:?}");
    }
    assert!(server.messages().len() >= 2);
    gw.stop().await.unwrap();
}

#[test]
fn smtp_auth_in_clear_is_refused_at_load_unless_allowed() {
    let ws = Workspace::new();
    let config = mail_config(
        &ws,
        2525,
        "username = \"gateway\"\npassword = \"s3cret-pw\"",
    );
    ws.write(
        "incidents/sample.json",
        &std::fs::read_to_string(repo().join("examples/incidents/sample.json")).unwrap(),
    );
    let bin = env!("CARGO_BIN_EXE_incident-gateway");
    let check = || {
        Command::new(bin)
            .args(["check", "--config"])
            .arg(&config)
            .output()
            .unwrap()
    };
    let out = check();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "smtp:// with a username passed check"
    );
    let line = std::fs::read_to_string(&config)
        .unwrap()
        .lines()
        .position(|l| l.starts_with("username"))
        .unwrap()
        + 1;
    assert!(
        err.contains(&format!(
            "gateway.toml: line {line}: connectors[0].username"
        )) && err.contains("allow_plaintext_auth"),
        "{err}"
    );
    assert!(!err.contains("s3cret-pw"), "{err}");

    // The same over TLS needs no flag.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("smtp://", "smtp+starttls://")).unwrap();
    let out = check();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // And in clear with the flag.
    std::fs::write(
        &config,
        text.replace("username =", "allow_plaintext_auth = true\nusername ="),
    )
    .unwrap();
    let out = check();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// With the flag, AUTH does go out in clear (lettre itself has no rule against it: the
/// config check is the only guard).
#[tokio::test]
async fn allowed_plaintext_auth_authenticates() {
    let port = free_port();
    let ws = Workspace::new();
    let server = SmtpServer::sink(port, &ws.path().join("mails"), &["--auth"]);
    let config = mail_config(
        &ws,
        port,
        "allow_plaintext_auth = true\nusername = \"gateway\"\npassword = \"s3cret-pw\"",
    );
    let (gw, base) = start_gateway(&config).await;
    assert_eq!(
        post_incident(&base, &incident("AUTH-1")).await.status(),
        202
    );
    assert_eq!(server.wait_for(1, Duration::from_secs(10)).await.len(), 1);
    let auth = std::fs::read_to_string(ws.path().join("mails/auth.log")).unwrap();
    assert!(auth.starts_with("AUTH PLAIN "), "{auth}");
    gw.stop().await.unwrap();
}
