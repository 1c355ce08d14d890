//! Prepare: what one attempt sends, from the incident version it carries — for HTTP
//! render → stamp → sign, for SMTP render → build the threaded MIME message.
//!
//! Synchronous and free of I/O: the workers run it on a render thread, and `render` (the
//! admin's preview) and the fuzz target call the very same steps, so what they show is what
//! a delivery sends.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde_json::Value;

use crate::connector::{Connector, MailThreading, SmtpTarget, Target};
use crate::model::{self, Completion, Event, TicketFacts};
use crate::render::{
    Collected, DeliveryFacts, IncidentContext, RenderError, RenderedEmail, RenderedRequest,
    Renderer, TemplateContext, memo,
};
use crate::signature;

use super::smtp::{self, MessageError};

/// What the gateway knows of one attempt beside the incident: the facts templates see.
#[derive(Debug, Clone)]
pub struct AttemptFacts {
    pub event: Event,
    /// The delivery's id: `webhook-id` on the wire, the same on every retry.
    pub delivery_id: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// When the gateway accepted this version of the incident.
    pub received_at_ms: i64,
    pub ticket: TicketFacts,
    pub completion: Option<Completion>,
    /// The incidents a collection window gathered into the delivery; `None` without one.
    pub collected: Option<Collected>,
}

/// What an attempt sends.
#[derive(Debug)]
pub enum Outgoing {
    /// An HTTP request, stamped and signed.
    Request(RenderedRequest),
    /// A MIME message and its Message-ID (after `created`, the ticket's id).
    Mail {
        message: lettre::Message,
        message_id: String,
    },
}

/// Why an attempt cannot be prepared. Final: the same input fails the same way again.
#[derive(Debug, thiserror::Error)]
pub enum Unprepared {
    #[error("render failed: the stored incident is not JSON: {0}")]
    StoredIncident(#[source] serde_json::Error),
    #[error("render failed: {0}")]
    Render(#[from] RenderError),
    #[error(transparent)]
    Message(#[from] MessageError),
}

/// The template context of an attempt: the incident with the gateway's facts.
pub fn context(connector: &Connector, incident: &Value, facts: &AttemptFacts) -> Value {
    attempt_context(connector, incident, facts).into_value()
}

/// [`context`] as the renderer reads it, built anew.
pub fn attempt_context(
    connector: &Connector,
    incident: &Value,
    facts: &AttemptFacts,
) -> TemplateContext {
    let received_at = model::rfc3339(facts.received_at_ms);
    TemplateContext::new(incident, &delivery_facts(connector, facts, &received_at))
}

/// The contexts of the incident versions prepared last. Each version is delivered to every
/// connector that takes it, for each event, and retried: those attempts reuse its context
/// (and what its renders keep, see [`crate::render::memo`]) and only set their own facts.
static RECENT: Mutex<VecDeque<TemplateContext>> = Mutex::new(VecDeque::new());

/// How many incident versions' contexts are kept (each some times the incident's size).
const RECENT_VERSIONS: usize = 4;

/// [`attempt_context`], reusing the context of this incident version when it was prepared
/// lately. The context goes back to the recent ones when dropped.
pub fn recent_context(
    connector: &Connector,
    incident: &Value,
    facts: &AttemptFacts,
) -> RecentContext {
    let taken = RECENT.lock().ok().and_then(|mut recent| {
        let at = recent.iter().position(|c| {
            c.data()
                .get("payload")
                .is_some_and(|p| memo::same(p, incident))
        })?;
        recent.remove(at)
    });
    let context = match taken {
        Some(mut context) => {
            set_facts(&mut context, connector, facts);
            context
        }
        None => attempt_context(connector, incident, facts),
    };
    RecentContext(context)
}

/// An attempt's context, kept for the next attempt of its incident version when dropped.
pub struct RecentContext(TemplateContext);

impl std::ops::Deref for RecentContext {
    type Target = TemplateContext;

    fn deref(&self) -> &TemplateContext {
        &self.0
    }
}

impl Drop for RecentContext {
    fn drop(&mut self) {
        let context = std::mem::take(&mut self.0);
        if let Ok(mut recent) = RECENT.lock() {
            recent.push_front(context);
            recent.truncate(RECENT_VERSIONS);
        }
    }
}

/// [`context`] from the incident version's part of it, computed once per version: only the
/// attempt's facts are built here.
pub fn template_context(
    connector: &Connector,
    incident: &IncidentContext,
    facts: &AttemptFacts,
) -> TemplateContext {
    let received_at = model::rfc3339(facts.received_at_ms);
    incident.with_facts(&delivery_facts(connector, facts, &received_at))
}

/// Sets `context` (of the same incident version) to this attempt's facts, in place.
pub fn set_facts(context: &mut TemplateContext, connector: &Connector, facts: &AttemptFacts) {
    let received_at = model::rfc3339(facts.received_at_ms);
    context.set_facts(&delivery_facts(connector, facts, &received_at));
}

fn delivery_facts<'a>(
    connector: &'a Connector,
    facts: &'a AttemptFacts,
    received_at: &'a str,
) -> DeliveryFacts<'a> {
    DeliveryFacts {
        event: facts.event,
        delivery_id: &facts.delivery_id,
        attempt: facts.attempt,
        connector,
        received_at,
        ticket: facts.ticket.clone(),
        completion: facts.completion.clone(),
        collected: facts.collected.as_ref(),
    }
}

/// A mail for a ticketing system that threads by its own number: a follow-up's subject
/// carries the ticket's marker, the text starts with the system's commands (the `created` one
/// sets the correlation field to `reference`, the `completed` one the closing status), and no
/// line of the rendered text can be read as a command
/// ([`crate::render::markers::defang_commands`]).
pub fn thread_in(
    threading: &MailThreading,
    mut email: RenderedEmail,
    facts: &AttemptFacts,
    reference: &str,
) -> RenderedEmail {
    // What incident text put there never threads (the bracketed markers are already
    // parenthesised at render).
    email.subject = threading.defang(&email.subject);
    email.text = threading.defang(&email.text);
    email.html = email.html.map(|h| threading.defang(&h));
    if facts.event != Event::Created
        && let Some(number) = &facts.ticket.id
    {
        let marker = threading.marker(number);
        if !email.subject.contains(&marker) {
            email.subject = format!("{marker} {}", email.subject);
        }
    }
    let text = crate::render::markers::defang_commands(&email.text);
    let commands = threading.commands(facts.event, reference);
    email.text = match commands.is_empty() {
        true => text,
        false => format!("{}\n\n{text}", commands.join("\n")),
    };
    email
}

/// The stored incident version, read back for rendering.
pub fn stored_incident(body: &str) -> Result<Value, Unprepared> {
    serde_json::from_str(body).map_err(Unprepared::StoredIncident)
}

/// What a collection window gathered, read back for rendering.
pub fn stored_collection(
    collected: Option<&crate::store::Collected>,
) -> Result<Option<Collected>, Unprepared> {
    let Some(c) = collected else {
        return Ok(None);
    };
    let incidents = c
        .bodies
        .iter()
        .map(|b| stored_incident(b))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(Collected {
        incidents,
        count: c.count,
    }))
}

/// Everything an attempt sends, by the connector's target.
pub fn prepare(
    renderer: &Renderer,
    connector: &Connector,
    incident: &Value,
    facts: &AttemptFacts,
    unix_seconds: i64,
) -> Result<Outgoing, Unprepared> {
    let context = recent_context(connector, incident, facts);
    prepare_with(renderer, connector, &context, facts, unix_seconds)
}

/// [`prepare`], and with `look_first` (a `created` whose outcome is unknown) the lookup the
/// connector sends before it, rendered in the same context; `None` when it declares none.
pub fn prepare_looking_first(
    renderer: &Renderer,
    connector: &Connector,
    incident: &Value,
    facts: &AttemptFacts,
    unix_seconds: i64,
    look_first: bool,
) -> Result<(Outgoing, Option<RenderedRequest>), Unprepared> {
    let context = recent_context(connector, incident, facts);
    let lookup = match look_first {
        true => renderer.render_lookup(connector, &*context).transpose()?,
        false => None,
    };
    let outgoing = prepare_with(renderer, connector, &context, facts, unix_seconds)?;
    Ok((outgoing, lookup))
}

/// [`prepare`] with the attempt's context built (see [`template_context`]).
pub fn prepare_with(
    renderer: &Renderer,
    connector: &Connector,
    context: &TemplateContext,
    facts: &AttemptFacts,
    unix_seconds: i64,
) -> Result<Outgoing, Unprepared> {
    match &connector.target {
        Target::Smtp(settings) => {
            let (message, message_id) = mail(renderer, connector, settings, facts, context)?;
            Ok(Outgoing::Mail {
                message,
                message_id,
            })
        }
        Target::Http(_) => {
            let request = renderer.render(connector, facts.event, context)?;
            let request = stamp(request, &facts.delivery_id, unix_seconds);
            Ok(Outgoing::Request(sign(request, &connector.signing)))
        }
    }
}

/// Stamp: the headers every delivery carries. `webhook-id` is the delivery id, the same on
/// every retry, so a receiver can tell a repeat from a new delivery (Standard Webhooks).
pub fn stamp(
    mut request: RenderedRequest,
    delivery_id: &str,
    unix_seconds: i64,
) -> RenderedRequest {
    request
        .headers
        .insert("webhook-id".into(), delivery_id.to_string());
    request
        .headers
        .insert("webhook-timestamp".into(), unix_seconds.to_string());
    request
}

/// Sign: the signature headers over the stamped request, as the connector's signing says.
pub fn sign(mut request: RenderedRequest, signing: &signature::Signing) -> RenderedRequest {
    signature::sign(&mut request.headers, request.body.as_bytes(), signing);
    request
}

/// Render the email and build it: the `created` mail opens a thread (its Message-ID becomes
/// the ticket's id), later mails reply to that root.
fn mail(
    renderer: &Renderer,
    connector: &Connector,
    settings: &SmtpTarget,
    facts: &AttemptFacts,
    context: &TemplateContext,
) -> Result<(lettre::Message, String), Unprepared> {
    let mut email = renderer.render_email(connector, facts.event, context)?;
    let message_id = smtp::message_id(settings, &facts.delivery_id);
    let root = match (facts.event, &settings.threading) {
        // A system that threads by its own number reads no In-Reply-To (and the ticket's id
        // is that number, not a Message-ID).
        (Event::Created, _) | (_, Some(_)) => None,
        _ => facts.ticket.id.as_deref(),
    };
    if let Some(threading) = &settings.threading {
        let reference = crate::render::ticket_ref(&connector.name, &facts.ticket.key);
        email = thread_in(threading, email, facts, &reference);
    }
    let message = smtp::build_message(settings, &email, &message_id, root)?;
    Ok((message, message_id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn setup(extra: &str) -> (tempfile::TempDir, Config, Renderer) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("body.json.hbs"),
            "{\"id\": \"{{incidentId}}\", \"event\": \"{{event}}\", \"ticket\": \"{{ticket.id}}\"}\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("mail.txt.hbs"),
            "Incident {{incidentId}} ({{event}})\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("batch.json.hbs"),
            "{\"count\": {{json collected_count}}, \"ids\": [{{#each collected}}\"{{incidentId}}\"{{#unless @last}}, {{/unless}}{{/each}}]}\n",
        )
        .unwrap();
        let toml = format!(
            r#"
[server]
listen = "127.0.0.1:0"
admin_token = "an-admin-token-of-32-characters-x"
[storage]
url = "sqlite://gateway.db"
[[sources]]
name = "edr"
api_key = "a-source-key-of-32-characters-xxx"
{extra}
"#
        );
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, &toml).unwrap();
        let config = Config::load(&path).unwrap();
        let renderer = Renderer::new(config.partials_dir.as_deref(), &config.connectors).unwrap();
        (dir, config, renderer)
    }

    fn facts(event: Event, ticket_id: Option<&str>) -> AttemptFacts {
        AttemptFacts {
            event,
            delivery_id: "msg_1".into(),
            attempt: 2,
            received_at_ms: 0,
            ticket: TicketFacts {
                key: "k".into(),
                id: ticket_id.map(str::to_string),
                url: None,
                reopened: false,
            },
            completion: None,
            collected: None,
        }
    }

    #[test]
    fn an_http_attempt_is_rendered_stamped_and_signed() {
        let (_dir, config, renderer) = setup(&format!(
            "[[connectors]]\nname = \"t\"\nkind = \"http\"\nurl = \"https://t.example.com/{{{{incidentId}}}}\"\ntemplate = \"body.json.hbs\"\n[connectors.signing]\nstandard_webhooks = [\"{SECRET}\"]\n"
        ));
        let connector = config.connector("t").unwrap();
        let incident = serde_json::json!({"incidentId": "I-1"});
        let Outgoing::Request(request) = prepare(
            &renderer,
            connector,
            &incident,
            &facts(Event::Updated, Some("T-9")),
            1_700_000_000,
        )
        .unwrap() else {
            panic!("an HTTP connector prepares a request");
        };
        assert_eq!(request.url, "https://t.example.com/I-1");
        let body: Value = serde_json::from_str(&request.body).unwrap();
        assert_eq!(body["ticket"], "T-9");
        assert_eq!(body["event"], "updated");
        assert_eq!(request.headers["webhook-id"], "msg_1");
        assert_eq!(request.headers["webhook-timestamp"], "1700000000");
        let secret = signature::WebhookSecret::parse(SECRET).unwrap();
        assert!(secret.verifies(
            "msg_1",
            "1700000000",
            request.body.as_bytes(),
            &request.headers["webhook-signature"]
        ));
    }

    #[test]
    fn a_mail_after_created_replies_to_the_tickets_root() {
        let (_dir, config, renderer) = setup(
            "[[connectors]]\nname = \"m\"\nkind = \"smtp\"\nsmtp_url = \"smtp://127.0.0.1:2525\"\nfrom = \"Gateway <gw@example.com>\"\nto = [\"desk@example.com\"]\nsubject = \"Incident {{incidentId}}\"\ntemplate = \"mail.txt.hbs\"\n",
        );
        let connector = config.connector("m").unwrap();
        let incident = serde_json::json!({"incidentId": "I-1"});
        let prepared = |event, ticket| match prepare(
            &renderer,
            connector,
            &incident,
            &facts(event, ticket),
            0,
        )
        .unwrap()
        {
            Outgoing::Mail {
                message,
                message_id,
            } => (
                String::from_utf8_lossy(&message.formatted()).into_owned(),
                message_id,
            ),
            Outgoing::Request(_) => panic!("an SMTP connector prepares a mail"),
        };
        let (created, id) = prepared(Event::Created, None);
        assert_eq!(id, "<msg_1@example.com>");
        assert!(!created.contains("In-Reply-To"), "{created}");
        let (updated, _) = prepared(Event::Updated, Some("<root@example.com>"));
        assert!(
            updated.contains("In-Reply-To: <root@example.com>"),
            "{updated}"
        );
    }

    /// Attempts of one incident version share its context and what its renders keep: every
    /// shipped connector sends, for every event in any order, what a context built anew for
    /// that one attempt renders.
    #[test]
    fn attempts_that_reuse_a_version_context_send_what_a_fresh_context_renders() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let config =
            Config::load_with_env(&root.join("examples/connectors.toml"), |name| match name {
                "IGW_ADMIN_TOKEN" => Some("an-admin-token-of-32-characters-x".into()),
                "IGW_SOURCE_KEY" => Some("a-source-key-of-32-characters-xxx".into()),
                _ => None,
            })
            .unwrap();
        let renderer = Renderer::new(config.partials_dir.as_deref(), &config.connectors).unwrap();
        let mut files: Vec<_> = std::fs::read_dir(root.join("examples/incidents"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        let events = [
            Event::Updated,
            Event::Created,
            Event::Completed,
            Event::Updated,
        ];
        for file in files {
            let incident: Value =
                serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
            // HTTP requests (the email connector's shared and own renders are compared in
            // tests/connectors.rs; its replies need a Message-ID thread root, not "T-1").
            let http = config
                .connectors
                .iter()
                .filter(|c| matches!(c.target, crate::connector::Target::Http(_)));
            for connector in http {
                for (i, event) in events.into_iter().enumerate() {
                    let mut facts = facts(event, (event != Event::Created).then_some("T-1"));
                    facts.attempt = i as u32 + 1;
                    facts.completion = (event == Event::Completed).then(|| Completion {
                        reason_code: "other".into(),
                        notes: Some(format!("closed {i}")),
                        status_change_time: "2026-01-02T00:00:00.000Z".into(),
                    });
                    let Ok(Outgoing::Request(reused)) =
                        prepare(&renderer, connector, &incident, &facts, 1_700_000_000)
                    else {
                        panic!("{} renders {}", connector.name, file.display());
                    };
                    let fresh = renderer
                        .render(connector, event, &context(connector, &incident, &facts))
                        .unwrap();
                    let fresh = sign(
                        stamp(fresh, &facts.delivery_id, 1_700_000_000),
                        &connector.signing,
                    );
                    assert_eq!(
                        reused,
                        fresh,
                        "{} {:?} {}",
                        connector.name,
                        event,
                        file.display()
                    );
                }
            }
        }
    }

    /// `collected` is the delivery's, not the incident version's: the same version rendered
    /// for two windows (the reused context of [`recent_context`], and what `memo` keeps)
    /// lists each window's own incidents; without a window it is empty (strict mode).
    #[test]
    fn each_delivery_renders_its_own_collection() {
        let (_dir, config, renderer) = setup(
            "[[connectors]]\nname = \"b\"\nkind = \"http\"\nurl = \"https://b.example.com/\"\ntemplate = \"batch.json.hbs\"\n",
        );
        let connector = config.connector("b").unwrap();
        let incident = serde_json::json!({"incidentId": "I-1"});
        let body = |collected: Option<Vec<&str>>| {
            let mut f = facts(Event::Created, None);
            f.collected = collected.map(|ids| Collected {
                count: ids.len() as u32,
                incidents: ids
                    .iter()
                    .map(|id| serde_json::json!({ "incidentId": id }))
                    .collect(),
            });
            match prepare(&renderer, connector, &incident, &f, 0).unwrap() {
                Outgoing::Request(r) => serde_json::from_str::<Value>(&r.body).unwrap(),
                Outgoing::Mail { .. } => panic!("an HTTP connector prepares a request"),
            }
        };
        assert_eq!(
            body(Some(vec!["I-1", "I-2", "I-3"])),
            serde_json::json!({"count": 3, "ids": ["I-1", "I-2", "I-3"]})
        );
        assert_eq!(
            body(Some(vec!["I-1"])),
            serde_json::json!({"count": 1, "ids": ["I-1"]})
        );
        assert_eq!(body(None), serde_json::json!({"count": 0, "ids": []}));
        let stored = crate::store::Collected {
            bodies: vec!["{\"incidentId\":\"I-9\"}".into()],
            count: 120,
        };
        let read = stored_collection(Some(&stored)).unwrap().unwrap();
        assert_eq!(read.count, 120);
        assert_eq!(read.incidents, [serde_json::json!({"incidentId": "I-9"})]);
        let broken = crate::store::Collected {
            bodies: vec!["{not json".into()],
            count: 1,
        };
        assert!(matches!(
            stored_collection(Some(&broken)),
            Err(Unprepared::StoredIncident(_))
        ));
    }

    #[test]
    fn a_stored_incident_that_is_not_json_is_unprepared() {
        assert!(matches!(
            stored_incident("{not json"),
            Err(Unprepared::StoredIncident(_))
        ));
    }
}
