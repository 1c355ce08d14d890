//! Send by email: an SMTP connector's rendered email becomes a MIME message with threading
//! headers, sent over a pooled connection (lettre).
//!
//! Every message's Message-ID is made from its delivery id, so a retry sends the same id and a
//! bridge can drop the repeat. The `created` mail of a ticket is the thread root; `updated` and
//! `completed` mails carry `In-Reply-To` and `References` to it.

use std::time::{Duration, Instant};

use lettre::message::header::ContentType;
use lettre::message::{Mailbox, Message, MultiPart, SinglePart};
use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use crate::config::{ConnectorConfig, SmtpConfig, SmtpSecurity};
use crate::render::RenderedEmail;

use super::http::{SendResult, Verdict};

pub type Transport = AsyncSmtpTransport<Tokio1Executor>;

/// A pooled transport for one connector: at most `concurrency` connections, reused.
pub fn transport(connector: &ConnectorConfig, smtp: &SmtpConfig) -> Result<Transport, String> {
    let mut builder = match smtp.security {
        SmtpSecurity::Plain => Transport::builder_dangerous(smtp.host.as_str()),
        SmtpSecurity::StartTls | SmtpSecurity::Tls => {
            let mut params = TlsParameters::builder(smtp.host.clone());
            if let Some(ca) = &smtp.tls_ca_file {
                let pem =
                    std::fs::read(ca).map_err(|e| format!("cannot read {}: {e}", ca.display()))?;
                let cert =
                    Certificate::from_pem(&pem).map_err(|e| format!("{}: {e}", ca.display()))?;
                params = params.add_root_certificate(cert);
            }
            let params = params.build().map_err(|e| e.to_string())?;
            let tls = if smtp.security == SmtpSecurity::Tls {
                Tls::Wrapper(params)
            } else {
                Tls::Required(params)
            };
            Transport::builder_dangerous(smtp.host.as_str()).tls(tls)
        }
    };
    builder = builder
        .port(smtp.port)
        .timeout(Some(connector.timeout))
        .pool_config(
            PoolConfig::new()
                .max_size(connector.concurrency as u32)
                .idle_timeout(Duration::from_secs(60)),
        );
    if let (Some(user), Some(password)) = (&smtp.username, &smtp.password) {
        builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
    }
    Ok(builder.build())
}

/// The Message-ID of a delivery: the same on every retry.
pub fn message_id(smtp: &SmtpConfig, delivery_id: &str) -> String {
    let domain = smtp
        .from
        .parse::<Mailbox>()
        .map(|m| m.email.domain().to_string())
        .unwrap_or_else(|_| "incident-gateway".to_string());
    format!("<{delivery_id}@{domain}>")
}

/// Builds the MIME message. Addresses are parsed one mailbox each, so text that renders to a
/// second address or a header line is refused; the subject is encoded (RFC 2047) and folded
/// by lettre.
pub fn build_message(
    smtp: &SmtpConfig,
    email: &RenderedEmail,
    message_id: &str,
    thread_root: Option<&str>,
) -> Result<Message, String> {
    let mailbox = |role: &str, text: &str| {
        if text.contains([',', ';', '\r', '\n']) && !text.contains('"') {
            return Err(format!("{role} {text:?} is not one address"));
        }
        text.parse::<Mailbox>()
            .map_err(|e| format!("{role} {text:?} is not an address: {e}"))
    };
    let mut builder = Message::builder()
        .from(mailbox("from", &smtp.from)?)
        .subject(email.subject.clone())
        .message_id(Some(message_id.to_string()))
        .user_agent(concat!("incident-gateway/", env!("CARGO_PKG_VERSION")).to_string());
    if email.to.is_empty() {
        return Err("no recipient: every `to` rendered empty".into());
    }
    for to in &email.to {
        builder = builder.to(mailbox("to", to)?);
    }
    for cc in &email.cc {
        builder = builder.cc(mailbox("cc", cc)?);
    }
    if let Some(root) = thread_root {
        builder = builder
            .in_reply_to(root.to_string())
            .references(root.to_string());
    }
    let message = match &email.html {
        Some(html) => builder.multipart(MultiPart::alternative_plain_html(
            email.text.clone(),
            html.clone(),
        )),
        None => builder.singlepart(
            SinglePart::builder()
                .header(ContentType::TEXT_PLAIN)
                .body(email.text.clone()),
        ),
    };
    message.map_err(|e| format!("cannot build the message: {e}"))
}

/// Sends, and says what it means: 2xx delivered; a 5xx reply is final (dead, with the
/// server's words); a 4xx reply or a connection problem may pass (retry).
pub async fn send(transport: &Transport, message: Message) -> (SendResult, Verdict) {
    let started = Instant::now();
    match transport.send(message).await {
        Ok(response) => {
            let text = response.message().collect::<Vec<_>>().join(" ");
            let code: u16 = response.code().to_string().parse().unwrap_or(250);
            (
                SendResult {
                    status: Some(code),
                    retry_after: None,
                    response_prefix: Some(text),
                    error: None,
                    unsendable: false,
                    latency: started.elapsed(),
                },
                Verdict::Delivered,
            )
        }
        Err(e) => {
            let code = e.status().and_then(|c| c.to_string().parse::<u16>().ok());
            let text = e.to_string();
            let verdict = if e.is_permanent() {
                Verdict::Dead {
                    reason: format!("the SMTP server refused the message: {text}"),
                }
            } else {
                Verdict::Retry { retry_after: None }
            };
            (
                SendResult {
                    status: code,
                    retry_after: None,
                    response_prefix: None,
                    error: Some(text),
                    unsendable: false,
                    latency: started.elapsed(),
                },
                verdict,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smtp() -> SmtpConfig {
        SmtpConfig {
            security: SmtpSecurity::Plain,
            host: "127.0.0.1".into(),
            port: 25,
            username: None,
            password: None,
            from: "SOC <soc@example.com>".into(),
            to: vec!["rt@example.com".into()],
            cc: vec![],
            subject_tag: None,
            tls_ca_file: None,
        }
    }

    fn email(subject: &str, to: &str) -> RenderedEmail {
        RenderedEmail {
            subject: subject.into(),
            to: vec![to.into()],
            cc: vec![],
            text: "body".into(),
            html: Some("<p>body</p>".into()),
        }
    }

    #[test]
    fn threading_headers_and_ids() {
        let id = message_id(&smtp(), "msg_1");
        assert_eq!(id, "<msg_1@example.com>");
        let m = build_message(
            &smtp(),
            &email("s", "rt@example.com"),
            &id,
            Some("<msg_0@example.com>"),
        )
        .unwrap();
        let text = String::from_utf8(m.formatted()).unwrap();
        assert!(text.contains("Message-ID: <msg_1@example.com>"), "{text}");
        assert!(text.contains("In-Reply-To: <msg_0@example.com>"), "{text}");
        assert!(text.contains("References: <msg_0@example.com>"), "{text}");
        assert!(text.contains("multipart/alternative"), "{text}");
    }

    #[test]
    fn a_rendered_address_cannot_add_a_recipient() {
        for bad in [
            "rt@example.com, attacker@example.com",
            "rt@example.com\r\nBcc: attacker@example.com",
            "rt@example.com;attacker@example.com",
        ] {
            assert!(
                build_message(&smtp(), &email("s", bad), "<x@y>", None).is_err(),
                "{bad:?}"
            );
        }
    }
}
