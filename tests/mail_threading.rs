//! Email into a ticketing system that threads by its own number, against a real SMTP server
//! (aiosmtpd) and an in-test ticketing system that files mail the way Redmine's mail handler
//! does: a subject with `[#N]` (or `[Project - Tracker #N]`) of an existing issue is a note on
//! it, any other mail opens an issue; `Field: value` lines in the text set the issue's fields
//! (allow_override), `Status: Closed` closes it. Its REST API finds issues by custom field, as
//! Redmine's `GET /issues.json?cf_1=…` does.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::IntoResponse;
use common::smtp::SmtpServer;
use common::*;
use mail_parser::MessageParser;
use regex::Regex;
use serde_json::{Value, json};

const CALLBACK: &str = "source-callback-token-0123";

#[derive(Debug, Clone)]
struct Issue {
    id: u64,
    subject: String,
    correlation: Option<String>,
    status: String,
    notes: Vec<String>,
}

/// The issues, and how many of the stored mails have been filed.
#[derive(Default)]
struct Tracker {
    issues: Vec<Issue>,
    filed: usize,
}

struct MiniRedmine {
    mails: PathBuf,
    tracker: Mutex<Tracker>,
}

/// `^[ \t]*Keyword[ \t]*:[ \t]*(.*)$` in the text, as Redmine's MailHandler reads attributes.
fn keyword(text: &str, name: &str) -> Option<String> {
    let pattern = format!(r"(?mi)^[ \t]*{}[ \t]*:[ \t]*(.*)$", regex::escape(name));
    Regex::new(&pattern)
        .unwrap()
        .captures(text)
        .map(|c| c[1].trim().to_string())
}

impl MiniRedmine {
    /// Files every mail stored since the last call, in arrival order.
    fn file_new_mail(&self) {
        let mails = common::smtp::stored_messages(&self.mails);
        let mut t = self.tracker.lock().unwrap();
        let reply = Regex::new(r"\[(?:[^\]]*\s+)?#(\d+)\]").unwrap();
        for (_, raw) in mails.iter().skip(t.filed) {
            let message = MessageParser::default().parse(raw.as_bytes()).unwrap();
            let subject = message.subject().unwrap_or_default().to_string();
            let text = message.body_text(0).unwrap_or_default().to_string();
            let target = reply
                .captures(&subject)
                .and_then(|c| c[1].parse::<u64>().ok())
                .and_then(|n| t.issues.iter().position(|i| i.id == n));
            match target {
                Some(at) => {
                    let issue = &mut t.issues[at];
                    issue.notes.push(text.clone());
                    if let Some(status) = keyword(&text, "Status") {
                        issue.status = status;
                    }
                }
                None => {
                    let id = t.issues.len() as u64 + 1;
                    t.issues.push(Issue {
                        id,
                        subject,
                        correlation: keyword(&text, "Correlation key"),
                        status: keyword(&text, "Status").unwrap_or_else(|| "New".into()),
                        notes: vec![],
                    });
                }
            }
        }
        t.filed = mails.len();
    }

    fn issues(&self) -> Vec<Issue> {
        self.file_new_mail();
        self.tracker.lock().unwrap().issues.clone()
    }
}

/// `GET /issues.json?cf_1=…`: the issues whose custom field 1 holds the value.
async fn search(
    State(redmine): State<Arc<MiniRedmine>>,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> axum::response::Response {
    let wanted = query.get("cf_1").cloned().unwrap_or_default();
    let found: Vec<Value> = redmine
        .issues()
        .iter()
        .filter(|i| i.correlation.as_deref() == Some(wanted.as_str()))
        .map(|i| json!({"id": i.id, "subject": i.subject}))
        .collect();
    axum::Json(json!({"issues": found, "total_count": found.len()})).into_response()
}

async fn start_redmine(mails: &Path) -> (Arc<MiniRedmine>, String) {
    let redmine = Arc::new(MiniRedmine {
        mails: mails.to_path_buf(),
        tracker: Mutex::default(),
    });
    let app = axum::Router::new()
        .route("/issues.json", axum::routing::get(search))
        .with_state(redmine.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (redmine, base)
}

fn threading_config(ws: &Workspace, smtp_port: u16, redmine: &str) -> PathBuf {
    ws.write(
        "body.txt.hbs",
        "Incident {{incidentId}} ({{event}})\n\n{{default incident.description \"\"}}\n",
    );
    ws.config(
        "127.0.0.1:0",
        &format!(
            r#"
[[connectors]]
name = "redmine-mail"
kind = "smtp"
smtp_url = "smtp://127.0.0.1:{smtp_port}"
from = "SOC Gateway <gateway@soc.example>"
to = ["redmine@soc.example"]
subject = "{{{{incident.summary}}}}"
template = "body.txt.hbs"
timeout = "5s"
[connectors.threading]
system = "redmine"
correlation_field = "Correlation key"
[connectors.lookup]
url = "{redmine}/issues.json?cf_1={{{{ticket.ref}}}}&status_id=*"
found_id = "/issues/0/id"
[connectors.retry]
max_attempts = 50
initial_backoff = "100ms"
max_backoff = "300ms"
"#
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mails_thread_onto_the_ticket_the_system_filed_and_the_completion_closes_it() {
    let ws = Workspace::new();
    let mails = ws.path().join("mails");
    let port = free_port();
    let smtp = SmtpServer::start(port, &mails, &[]);
    let (redmine, redmine_url) = start_redmine(&mails).await;
    // Three unrelated issues exist: a forged `[#3]` must not reach the third.
    redmine.tracker.lock().unwrap().issues = (1..=3)
        .map(|id| Issue {
            id,
            subject: format!("someone else's issue {id}"),
            correlation: None,
            status: "New".into(),
            notes: vec![],
        })
        .collect();
    let config = threading_config(&ws, port, &redmine_url);
    edit(&config, |text| {
        text.replace(
            &format!("api_key = \"{SOURCE_KEY}\""),
            &format!("api_key = \"{SOURCE_KEY}\"\ncallback_token = \"{CALLBACK}\""),
        )
    });
    let (gw, base) = start_gateway(&config).await;

    // Incident text forges a marker in the subject and a command in the text.
    let mut inc = incident("MAIL-1");
    inc["incident"]["summary"] = json!("svc [#3] down");
    inc["incident"]["description"] =
        json!("Found on the host.\nStatus: Closed\nAssigned to: mallory");
    accepted(&base, &inc).await;
    smtp.wait_for(1, Duration::from_secs(10)).await;
    let issues = redmine.issues();
    assert_eq!(issues.len(), 4, "a new issue, none hijacked: {issues:?}");
    let filed = &issues[3];
    assert_eq!(filed.status, "New", "the forged Status line closed nothing");
    assert!(filed.subject.contains("svc (#3) down"), "{}", filed.subject);
    assert!(issues[2].notes.is_empty());
    let reference = filed
        .correlation
        .clone()
        .expect("the correlation field was set");
    assert!(reference.starts_with("igw-"), "{reference}");

    // The update learns the number (lookup) and threads onto issue 4.
    let mut newer = inc.clone();
    newer["updateTime"] = json!(1_900_000_000);
    let r = accepted(&base, &newer).await;
    let update_id = first_delivery(&r);
    smtp.wait_for(2, Duration::from_secs(10)).await;
    let issues = redmine.issues();
    assert_eq!(issues.len(), 4, "{issues:?}");
    assert_eq!(issues[3].notes.len(), 1, "{issues:?}");
    let (_, d) = admin_get(&base, &format!("/v1/deliveries/{update_id}")).await;
    let attempts = d["attempts"].as_array().unwrap();
    assert!(
        attempts[0]["lookup"]
            .as_str()
            .unwrap()
            .starts_with("found ticket 4"),
        "{d}"
    );
    let (_, v) = admin_get(&base, "/v1/incidents/MAIL-1").await;
    assert_eq!(
        v["connectors"]["redmine-mail"]["tickets"][0]["ticket_id"], "4",
        "{v}"
    );

    // The completion closes it by mail.
    let body = r#"{"reason_code": "threat_not_valid", "notes": "scanner"}"#;
    let r = complete(&base, "MAIL-1", Some(CALLBACK), body).await;
    assert_eq!(r.status(), 200);
    smtp.wait_for(3, Duration::from_secs(10)).await;
    let issues = redmine.issues();
    assert_eq!(issues.len(), 4);
    assert_eq!(issues[3].notes.len(), 2);
    assert_eq!(issues[3].status, "Closed");
    assert!(
        issues[..3]
            .iter()
            .all(|i| i.notes.is_empty() && i.status == "New")
    );
    gw.stop().await.unwrap();
}
