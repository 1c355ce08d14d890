//! Email-to-ticket bridges: SMTP connectors against a real SMTP server (Python's aiosmtpd,
//! installed by .ci/run), reading the stored messages back.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::smtp::SmtpServer;
use common::*;
use mail_parser::{HeaderValue, MessageParser};
use serde_json::{Value, json};

/// A config whose one connector, `rt`, mails as soc@example.com to rt@example.com through
/// `smtp_url`, with `text` and `html` as the templates of its two parts; `lines` are added to
/// its block.
fn smtp_config(ws: &Workspace, smtp_url: &str, text: &str, html: &str, lines: &str) -> PathBuf {
    ws.write("body.txt.hbs", text);
    ws.write("body.html.hbs", html);
    ws.config(
        "127.0.0.1:0",
        &format!(
            r#"
[[connectors]]
name = "rt"
kind = "smtp"
smtp_url = "{smtp_url}"
from = "SOC Gateway <soc@example.com>"
to = ["rt@example.com"]
subject = "{{{{incident.summary}}}}"
template = "body.txt.hbs"
html_template = "body.html.hbs"
timeout = "5s"
{lines}
[connectors.retry]
max_attempts = 100
initial_backoff = "100ms"
max_backoff = "300ms"
"#
        ),
    )
}

/// The usual mail connector: a copy to audit@example.com, the subject tagged with the
/// incident's short id, up to 4 connections; `extra` added to its block.
fn mail_config(ws: &Workspace, smtp_url: &str, extra: &str) -> PathBuf {
    smtp_config(
        ws,
        smtp_url,
        "Incident {{incidentId}} ({{event}})\n\n{{markdown_to_text (default incident.description \"\")}}\n",
        "<h1>{{incident.summary}}</h1><p>Incident {{incidentId}}</p>",
        &format!(
            "cc = [\"audit@example.com\"]\nsubject_tag = \"[{{{{humanFriendlyId}}}}]\"\nconcurrency = 4\n{extra}"
        ),
    )
}

/// A mail scene: a free port for the SMTP server, and the workspace of the gateway that mails
/// to it (the server stores what it receives in `mails/` there).
struct Mail {
    port: u16,
    ws: Workspace,
}

impl Mail {
    fn new() -> Mail {
        Mail {
            port: free_port(),
            ws: Workspace::new(),
        }
    }

    fn mails(&self) -> PathBuf {
        self.ws.path().join("mails")
    }

    /// aiosmtpd on the port, with `args`.
    fn server(&self, args: &[&str]) -> SmtpServer {
        SmtpServer::start(self.port, &self.mails(), args)
    }

    /// The lenient raw-socket sink on the port, with `args`.
    fn sink(&self, args: &[&str]) -> SmtpServer {
        SmtpServer::sink(self.port, &self.mails(), args)
    }

    /// aiosmtpd on the port over TLS, with `args` added, its self-signed certificate for
    /// 127.0.0.1 in the workspace's cert.pem.
    fn tls_server(&self, args: &[&str]) -> SmtpServer {
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        let cert_file = self.ws.write("cert.pem", &cert.cert.pem());
        let key_file = self.ws.write("key.pem", &cert.signing_key.serialize_pem());
        let mut tls = vec![
            "--tls-cert",
            cert_file.to_str().unwrap(),
            "--tls-key",
            key_file.to_str().unwrap(),
        ];
        tls.extend(args);
        self.server(&tls)
    }

    /// The usual mail connector, to the server over `scheme`, with `extra` in its block.
    fn config_over(&self, scheme: &str, extra: &str) -> PathBuf {
        mail_config(
            &self.ws,
            &format!("{scheme}://127.0.0.1:{}", self.port),
            extra,
        )
    }

    /// The usual mail connector, to the server over plain SMTP, with `extra` in its block.
    fn config(&self, extra: &str) -> PathBuf {
        self.config_over("smtp", extra)
    }

    /// A connector whose text and HTML parts carry `incident.description` as it came (a text
    /// template escapes nothing), so every byte an incident sends reaches the MIME layer.
    fn raw_text_config(&self) -> PathBuf {
        smtp_config(
            &self.ws,
            &format!("smtp://127.0.0.1:{}", self.port),
            "Incident {{incidentId}}\n{{incident.description}}\n",
            "<pre>{{incident.description}}</pre>",
            "",
        )
    }
}

/// The usual mail scene: aiosmtpd, and a gateway in process whose usual mail connector (with
/// `extra` in its block) mails to it.
async fn mail_and_gateway(extra: &str) -> (Mail, SmtpServer, incident_gateway::Gateway, String) {
    let mail = Mail::new();
    let server = mail.server(&[]);
    let (gw, base) = start_gateway(&mail.config(extra)).await;
    (mail, server, gw, base)
}

fn header_text(message: &mail_parser::Message, name: &str) -> Option<String> {
    message.header(name).map(|h| match h {
        HeaderValue::Text(t) => t.to_string(),
        HeaderValue::TextList(l) => l.join(" "),
        other => format!("{other:?}"),
    })
}

/// `check` passes on `config`.
fn check_passes(config: &Path) {
    let out = check(config, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn mails_carry_both_parts_a_tagged_encoded_subject_and_thread_on_the_ticket() {
    let (_mail, server, gw, base) =
        mail_and_gateway("correlation_key = \"{{incident_class}}\"").await;

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
    let (_mail, server, gw, base) = mail_and_gateway("").await;
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
    let mail = Mail::new();
    // The server's being down opens the connector's circuit after a few failed attempts: the
    // rest wait untried (their retry budgets unspent), and a probe a second later finds the
    // server back.
    let (gw, base) = start_gateway(&mail.config(
        "[connectors.circuit]\nfailures = 3\ncool_down = \"1s\"\nmax_cool_down = \"1s\"\n",
    ))
    .await;
    let mut ids = HashSet::new();
    for i in 0..N {
        let r = post_json(&base, &incident(&format!("DOWN-{i}"))).await;
        ids.insert(format!("{}@example.com", first_delivery(&r)));
    }
    // Wait until the mails have failed against the closed port, enough to open the circuit.
    let retried = listed_when(
        &base,
        "status=pending&limit=100",
        Duration::from_secs(20),
        |list| {
            list.len() == N
                && list
                    .iter()
                    .filter_map(|d| d["attempt_count"].as_u64())
                    .sum::<u64>()
                    >= 3
        },
    )
    .await
    .expect("all queued, and failing");
    let tried: u64 = retried
        .iter()
        .filter_map(|d| d["attempt_count"].as_u64())
        .sum();
    assert!(
        tried < N as u64,
        "the open circuit keeps the rest untried: {tried} attempts for {N} mails"
    );
    assert!(
        retried
            .iter()
            .any(|d| d["last_error"].as_str().is_some_and(|e| e.len() > 3))
    );

    let server = mail.server(&[]);
    let mails = server.wait_then_all(N, Duration::from_secs(30)).await;
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
    let mail = Mail::new();
    let _server = mail.server(&["--reject", "554 5.7.1 Rejected by policy"]);
    let (gw, base) = start_gateway(&mail.config("")).await;
    let id = first_delivery(&post_json(&base, &incident("REJECT-1")).await);
    let dead = settled(&base, &id, &["dead"], Duration::from_secs(10)).await;
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
    let (_mail, server, gw, base) = mail_and_gateway("").await;
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
    let config = mail_config(&ws, "smtp://127.0.0.1:2525", "");
    ws.add_sample_incident();
    let out = render(&config, "rt", &sample_file(), Some("updated"), &[]);
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
    check_passes(&config);

    // A bad address is caught at load, with its field.
    edit(&config, |text| {
        text.replace("rt@example.com", "not an address")
    });
    let out = check(&config, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("connectors[0].to[0]") && err.contains("not an address"),
        "{err}"
    );
}

#[tokio::test]
async fn starttls_and_implicit_tls_with_a_private_ca() {
    for (scheme, extra) in [("smtp+starttls", vec![]), ("smtps", vec!["--implicit-tls"])] {
        let mail = Mail::new();
        let server = mail.tls_server(&extra);
        let config = mail.config_over(scheme, "tls_ca_file = \"cert.pem\"");
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
    let mail = Mail::new();
    let server = mail.tls_server(&[]);
    // No tls_ca_file: the self-signed certificate is not trusted.
    let (gw, base) = start_gateway(&mail.config_over("smtp+starttls", "")).await;
    let id = first_delivery(&post_json(&base, &incident("UNTRUSTED")).await);
    let failed = attempted(&base, &id, 1, Duration::from_secs(10)).await;
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
    // Anything smuggled would arrive as a further message: wait_then_all gives it a moment.
    let mails = server
        .wait_then_all(ids.len(), Duration::from_secs(15))
        .await;
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

/// A gateway with the raw-text connector mails one incident per smuggling sequence to
/// `server`; each arrives whole and alone. The gateway, still running.
async fn smuggle_to(mail: &Mail, server: &SmtpServer) -> incident_gateway::Gateway {
    let (gw, base) = start_gateway(&mail.raw_text_config()).await;
    let ids = post_smuggling_incidents(&base).await;
    assert_whole_and_alone(server, &ids).await;
    gw
}

#[tokio::test]
async fn smuggling_sequences_arrive_whole_and_alone_at_a_strict_server() {
    let mail = Mail::new();
    let server = mail.server(&[]);
    let gw = smuggle_to(&mail, &server).await;
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn smuggling_sequences_arrive_whole_and_alone_at_a_lenient_server() {
    let mail = Mail::new();
    let server = mail.sink(&[]);
    let gw = smuggle_to(&mail, &server).await;
    // What went on the wire: no line end but CRLF, no NUL, nothing 8-bit.
    for entry in std::fs::read_dir(mail.mails()).unwrap() {
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
    let mail = Mail::new();
    let server = mail.sink(&["--stall-data", "60"]);
    let config = mail.config("");
    edit(&config, |text| {
        text.replace("timeout = \"5s\"", "timeout = \"1s\"")
    });
    with_delivery(&config, "lease = \"31s\"");
    let (gw, base) = start_gateway(&config).await;
    let started = std::time::Instant::now();
    let id = first_delivery(&post_json(&base, &incident("STALL-1")).await);
    // The server held the reply for 60 s; the bug let the attempt wait all of it: two
    // attempts are recorded well inside that.
    let view = attempted(&base, &id, 2, Duration::from_secs(10)).await;
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
    let events: Vec<Value> = std::fs::read_to_string(mail.mails().join("events.jsonl"))
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
        "smtp://127.0.0.1:2525",
        "username = \"gateway\"\npassword = \"s3cret-pw\"",
    );
    ws.add_sample_incident();
    let out = check(&config, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "smtp:// with a username passed check"
    );
    let line = line_of(&config, "username");
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
    check_passes(&config);

    // And in clear with the flag.
    std::fs::write(
        &config,
        text.replace("username =", "allow_plaintext_auth = true\nusername ="),
    )
    .unwrap();
    check_passes(&config);
}

/// With the flag, AUTH does go out in clear (lettre itself has no rule against it: the
/// config check is the only guard).
#[tokio::test]
async fn allowed_plaintext_auth_authenticates() {
    let mail = Mail::new();
    let server = mail.sink(&["--auth"]);
    let config = mail
        .config("allow_plaintext_auth = true\nusername = \"gateway\"\npassword = \"s3cret-pw\"");
    let (gw, base) = start_gateway(&config).await;
    assert_eq!(
        post_incident(&base, &incident("AUTH-1")).await.status(),
        202
    );
    assert_eq!(server.wait_for(1, Duration::from_secs(10)).await.len(), 1);
    let auth = std::fs::read_to_string(mail.mails().join("auth.log")).unwrap();
    assert!(auth.starts_with("AUTH PLAIN "), "{auth}");
    gw.stop().await.unwrap();
}

/// Incident text with the thread markers of Redmine, Request Tracker and Zammad cannot file
/// the mail on another ticket: the subject and both parts arrive with every forged marker
/// parenthesised; the gateway's own tag, added after, is untouched.
#[tokio::test]
async fn forged_thread_markers_in_incident_text_reach_no_ticket() {
    let (_mail, server, gw, base) = mail_and_gateway("").await;
    let forged = "svc [#3] [Security - Bug #4] [rt.example.com #12] [Ticket#99]";
    let mut inc = incident("FORGED-1");
    inc["incident"]["summary"] = json!(forged);
    inc["incident"]["description"] = json!(format!("see {forged}"));
    post_json(&base, &inc).await;
    let mails = server.wait_for(1, Duration::from_secs(10)).await;
    let parsed = MessageParser::default()
        .parse(mails[0].1.as_bytes())
        .unwrap();
    let subject = parsed.subject().unwrap().to_string();
    let safe = "svc (#3) (Security - Bug #4) (rt.example.com #12) (Ticket#99)";
    assert_eq!(subject, format!("[ww1k39] {safe}"));
    let text = parsed.body_text(0).unwrap().to_string();
    let html = parsed.body_html(0).unwrap().to_string();
    for part in [&text, &html] {
        for marker in ["[#3]", "#4]", "#12]", "[Ticket#99]"] {
            assert!(!part.contains(marker), "{marker} in {part}");
        }
    }
    assert!(html.contains(safe), "{html}");
    gw.stop().await.unwrap();
}
