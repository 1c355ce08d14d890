//! Send by email: an SMTP connector's rendered email becomes a MIME message with threading
//! headers, sent over a pooled connection (lettre's SMTP client).
//!
//! Every message's Message-ID is made from its delivery id, so a retry sends the same id and a
//! bridge can drop the repeat. The `created` mail of a ticket is the thread root; `updated` and
//! `completed` mails carry `In-Reply-To` and `References` to it.
//!
//! Nothing an incident carries can end DATA early or reach the SMTP dialogue (SMTP smuggling):
//! every body part is normalised (CRLF line ends only, control characters removed) and goes out
//! 7bit only when it is plain short-line ASCII, quoted-printable or base64 otherwise; header
//! text is put on one line without control characters.
//!
//! The connector's `timeout` bounds a whole send (connect, TLS, AUTH, the dialogue and DATA).
//! lettre's own timeout covers only the TCP connect, and its pool would put a connection cut
//! off mid-dialogue back into use, so the pool here is our own: a connection is reused only
//! after a send that finished, and one cut off by the timeout is dropped (closed) at once.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use lettre::message::header::{ContentTransferEncoding, ContentType};
use lettre::message::{Body, Mailbox, Message, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, Certificate, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::response::Response;

use crate::connector::{Connector, SmtpSecurity, SmtpTarget};

use super::SetupFailure;
use crate::render::RenderedEmail;

use super::http::{SendFailure, SendResult, Verdict};

/// How long an idle pooled connection is kept (servers drop idle clients after a few minutes).
const IDLE_FOR: Duration = Duration::from_secs(60);

/// The longest line a part may have and still go out as 7bit. lettre refuses 7bit from 74
/// characters on (RFC 2045 allows 998; short lines also keep every relay happy).
const MAX_7BIT_LINE: usize = 72;

/// One connector's SMTP client: how to connect, and its idle connections (at most
/// `concurrency`), reused across sends.
pub struct Transport {
    host: String,
    port: u16,
    tls: Tls,
    credentials: Option<Credentials>,
    allow_plaintext_auth: bool,
    hello: ClientId,
    /// Bounds each send end to end.
    timeout: Duration,
    max_idle: usize,
    idle: Mutex<Vec<(AsyncSmtpConnection, Instant)>>,
}

/// Why a send failed before the server could answer it.
#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error(transparent)]
    Smtp(#[from] lettre::transport::smtp::Error),
    /// The gateway refused to go on (final: no retry changes it).
    #[error("{0}")]
    Refused(String),
}

/// Why a rendered email cannot become a message. Final: the same render fails the same way.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("{role} {text:?} is not one address")]
    NotOneAddress { role: &'static str, text: String },
    #[error("{role} {text:?} is not an address: {source}")]
    NotAnAddress {
        role: &'static str,
        text: String,
        source: lettre::address::AddressError,
    },
    #[error("the {role} {id:?} is not a Message-ID (<id@domain>)")]
    NotAMessageId { role: &'static str, id: String },
    #[error("no recipient: every `to` rendered empty")]
    NoRecipient,
    #[error("cannot encode the message body")]
    Encode,
    #[error("cannot build the message: {0}")]
    Build(#[from] lettre::error::Error),
}

/// The transport for one connector.
pub fn transport(connector: &Connector, smtp: &SmtpTarget) -> Result<Transport, SetupFailure> {
    let tls = match smtp.security {
        SmtpSecurity::Plain => Tls::None,
        SmtpSecurity::StartTls | SmtpSecurity::Tls => {
            let mut params = TlsParameters::builder(smtp.host.clone());
            if let Some(ca) = &smtp.tls_ca_file {
                let pem = super::read_ca(ca)?;
                let cert = Certificate::from_pem(&pem).map_err(|source| SetupFailure::SmtpCa {
                    path: ca.clone(),
                    source,
                })?;
                params = params.add_root_certificate(cert);
            }
            let params = params.build().map_err(SetupFailure::SmtpTls)?;
            if smtp.security == SmtpSecurity::Tls {
                Tls::Wrapper(params)
            } else {
                Tls::Required(params)
            }
        }
    };
    let credentials = match (&smtp.username, &smtp.password) {
        (Some(user), Some(password)) => Some(Credentials::new(user.clone(), password.clone())),
        _ => None,
    };
    Ok(Transport {
        host: smtp.host.clone(),
        port: smtp.port,
        tls,
        credentials,
        allow_plaintext_auth: smtp.allow_plaintext_auth,
        hello: ClientId::default(),
        timeout: connector.timeout,
        max_idle: connector.concurrency,
        idle: Mutex::new(Vec::new()),
    })
}

impl Transport {
    /// A new connection: TCP (and TLS), EHLO, STARTTLS when required, AUTH when configured.
    async fn connect(&self) -> Result<AsyncSmtpConnection, SendError> {
        let wrapper = match &self.tls {
            Tls::Wrapper(params) => Some(params.clone()),
            _ => None,
        };
        let mut conn = AsyncSmtpConnection::connect_tokio1(
            (self.host.as_str(), self.port),
            Some(self.timeout),
            &self.hello,
            wrapper,
            None,
        )
        .await?;
        if let Tls::Required(params) = &self.tls {
            conn.starttls(params.clone(), &self.hello).await?;
        }
        if let Some(credentials) = &self.credentials {
            // lettre itself would send AUTH PLAIN over a clear connection; config load refuses
            // that unless allowed, and this keeps it so whatever built the transport.
            if !conn.is_encrypted() && !self.allow_plaintext_auth {
                return Err(SendError::Refused(
                    "refusing to send the SMTP password over a connection without TLS \
                     (set allow_plaintext_auth = true to allow it)"
                        .into(),
                ));
            }
            conn.auth(&[Mechanism::Plain, Mechanism::Login], credentials)
                .await?;
        }
        Ok(conn)
    }

    /// An idle connection that still answers, or a new one.
    async fn connection(&self) -> Result<AsyncSmtpConnection, SendError> {
        loop {
            let parked = match self.idle.lock() {
                Ok(mut idle) => idle.pop(),
                Err(_) => None,
            };
            match parked {
                None => return self.connect().await,
                Some((_, since)) if since.elapsed() > IDLE_FOR => continue,
                Some((mut conn, _)) => {
                    if conn.test_connected().await {
                        return Ok(conn);
                    }
                }
            }
        }
    }

    /// Back to the pool after a send that finished; broken ones (lettre marks a connection
    /// broken on any error) and the surplus are dropped.
    fn park(&self, conn: AsyncSmtpConnection) {
        if conn.has_broken() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < self.max_idle
        {
            idle.push((conn, Instant::now()));
        }
    }

    /// One send on one connection. Cancelling this future (the timeout) drops the connection,
    /// which closes it: it is never reused in an unknown state of the dialogue.
    async fn send_once(&self, message: &Message) -> Result<Response, SendError> {
        let mut conn = self.connection().await?;
        let result = conn.send(message.envelope(), &message.formatted()).await;
        self.park(conn);
        Ok(result?)
    }
}

/// The Message-ID of a delivery: the same on every retry.
pub fn message_id(smtp: &SmtpTarget, delivery_id: &str) -> String {
    let domain = smtp
        .from
        .parse::<Mailbox>()
        .map(|m| m.email.domain().to_string())
        .unwrap_or_else(|_| "incident-gateway".to_string());
    format!("<{delivery_id}@{domain}>")
}

/// Header text on one line: every control character (CR, LF, NUL, tab, escape, …) becomes a
/// space, runs of white space one space. lettre encodes CR/LF/NUL (RFC 2047) but passes other
/// controls raw, and a decoded line break still confuses some readers.
fn header_text(text: &str) -> String {
    text.split(|c: char| c.is_control() || c.is_whitespace())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A Message-ID as a header may carry it: `<left@right>`, visible ASCII only.
fn is_msg_id(id: &str) -> bool {
    id.strip_prefix('<')
        .and_then(|rest| rest.strip_suffix('>'))
        .is_some_and(|inner| {
            inner.contains('@')
                && inner
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'<' && b != b'>')
        })
}

/// Body text as it may go on the wire: every line break (CRLF, a bare CR, a bare LF) becomes
/// CRLF, and control characters other than tab are removed — NUL, the rest of C0, DEL and C1
/// have no place in mail text (NUL and bare CR are what SMTP smuggling and broken relays need).
pub fn normalise_body(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 16);
    let mut chars = text.chars().peekable();
    while let Some(ch) = chars.next() {
        match ch {
            '\r' => {
                chars.next_if_eq(&'\n');
                out.push_str("\r\n");
            }
            '\n' => out.push_str("\r\n"),
            '\t' => out.push('\t'),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// The transfer encoding of a normalised part: 7bit only for plain ASCII with short lines;
/// base64 when most of it is not ASCII (smaller), quoted-printable otherwise (readable).
fn transfer_encoding(text: &str) -> ContentTransferEncoding {
    if text.is_ascii() && text.split("\r\n").all(|line| line.len() <= MAX_7BIT_LINE) {
        return ContentTransferEncoding::SevenBit;
    }
    let eight_bit = text.bytes().filter(|b| !b.is_ascii()).count();
    if eight_bit * 3 > text.len() {
        ContentTransferEncoding::Base64
    } else {
        ContentTransferEncoding::QuotedPrintable
    }
}

/// One text part, normalised, with its transfer encoding set explicitly (lettre's default
/// choice sends ASCII with bare CRs and NULs as 7bit, verbatim).
fn text_part(content_type: ContentType, text: &str) -> Result<SinglePart, MessageError> {
    let text = normalise_body(text);
    let encoding = transfer_encoding(&text);
    let body = Body::new_with_encoding(text.clone(), encoding)
        .or_else(|_| Body::new_with_encoding(text, ContentTransferEncoding::QuotedPrintable))
        .map_err(|_| MessageError::Encode)?;
    Ok(SinglePart::builder().header(content_type).body(body))
}

/// Builds the MIME message. Addresses are parsed one mailbox each, so text that renders to a
/// second address or a header line is refused; the subject is put on one line, encoded
/// (RFC 2047) and folded by lettre; every body part is normalised and encoded (see the module).
pub fn build_message(
    smtp: &SmtpTarget,
    email: &RenderedEmail,
    message_id: &str,
    thread_root: Option<&str>,
) -> Result<Message, MessageError> {
    let mailbox = |role: &'static str, text: &str| {
        if text.contains(|c: char| c.is_control())
            || (text.contains([',', ';']) && !text.contains('"'))
        {
            return Err(MessageError::NotOneAddress {
                role,
                text: text.to_string(),
            });
        }
        text.parse::<Mailbox>()
            .map_err(|source| MessageError::NotAnAddress {
                role,
                text: text.to_string(),
                source,
            })
    };
    for (role, id) in [
        ("Message-ID", Some(message_id)),
        ("thread root", thread_root),
    ] {
        if let Some(id) = id.filter(|id| !is_msg_id(id)) {
            return Err(MessageError::NotAMessageId {
                role,
                id: id.to_string(),
            });
        }
    }
    let mut builder = Message::builder()
        .from(mailbox("from", &smtp.from)?)
        .subject(header_text(&email.subject))
        .message_id(Some(message_id.to_string()))
        .user_agent(concat!("incident-gateway/", env!("CARGO_PKG_VERSION")).to_string());
    if email.to.is_empty() {
        return Err(MessageError::NoRecipient);
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
    let plain = text_part(ContentType::TEXT_PLAIN, &email.text)?;
    let message = match &email.html {
        Some(html) => builder.multipart(
            MultiPart::alternative()
                .singlepart(plain)
                .singlepart(text_part(ContentType::TEXT_HTML, html)?),
        ),
        None => builder.singlepart(plain),
    };
    Ok(message?)
}

/// Sends, bounded by the connector's timeout end to end, and says what it means: 2xx
/// delivered; a 5xx reply is final (dead, with the server's words); a 4xx reply, a connection
/// problem or the timeout may pass (retry). A send cut off by the timeout may still have been
/// delivered: the retry carries the same Message-ID (at least once).
pub async fn send(transport: &Transport, message: Message) -> (SendResult, Verdict) {
    let started = Instant::now();
    let outcome = tokio::time::timeout(transport.timeout, transport.send_once(&message)).await;
    let failed = |error: String, status: Option<u16>, verdict: Verdict| {
        (
            SendResult {
                status,
                retry_after: None,
                response_prefix: None,
                failure: Some(SendFailure::Network(error)),
                latency: started.elapsed(),
            },
            verdict,
        )
    };
    match outcome {
        Ok(Ok(response)) => {
            let text = response.message().collect::<Vec<_>>().join(" ");
            let code: u16 = response.code().to_string().parse().unwrap_or(250);
            (
                SendResult {
                    status: Some(code),
                    retry_after: None,
                    response_prefix: Some(text),
                    failure: None,
                    latency: started.elapsed(),
                },
                Verdict::Delivered,
            )
        }
        Ok(Err(SendError::Smtp(e))) => {
            let code = e.status().and_then(|c| c.to_string().parse::<u16>().ok());
            let text = e.to_string();
            let verdict = if e.is_permanent() {
                Verdict::Dead {
                    reason: format!("the SMTP server refused the message: {text}"),
                }
            } else {
                Verdict::Retry { retry_after: None }
            };
            failed(text, code, verdict)
        }
        Ok(Err(SendError::Refused(reason))) => {
            failed(reason.clone(), None, Verdict::Dead { reason })
        }
        Err(_elapsed) => failed(
            format!(
                "the SMTP send took longer than the connector's timeout ({})",
                humantime::format_duration(transport.timeout)
            ),
            None,
            Verdict::Retry { retry_after: None },
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smtp() -> SmtpTarget {
        SmtpTarget {
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
            allow_plaintext_auth: false,
            messages: crate::connector::Requests::default(),
            threading: None,
            lookup: None,
            lookup_egress: crate::connector::Egress {
                allow_hosts: vec![],
                allow_private: true,
                follow_redirects: 0,
                tls_ca_file: None,
                client_identity: None,
            },
            mailbox: None,
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

    /// Checks the bytes lettre hands the SMTP client: line ends are CRLF only, no NUL, no
    /// `\r.\r`, nothing 8-bit; every text part declares an encoding, 7bit only for pure
    /// short-line ASCII; and the hostile text survives decoding.
    fn assert_wire_safe(label: &str, bytes: &[u8]) -> mail_parser::Message<'static> {
        use mail_parser::MimeHeaders;
        let show = |i: usize| {
            String::from_utf8_lossy(&bytes[i.saturating_sub(30)..(i + 30).min(bytes.len())])
                .to_string()
        };
        for (i, &b) in bytes.iter().enumerate() {
            assert!(
                b != 0 && b < 0x80,
                "{label}: byte {b:#x} at {i}: {:?}",
                show(i)
            );
            if b == b'\r' {
                assert_eq!(
                    bytes.get(i + 1),
                    Some(&b'\n'),
                    "{label}: bare CR: {:?}",
                    show(i)
                );
            }
            if b == b'\n' {
                assert_eq!(bytes[i - 1], b'\r', "{label}: bare LF: {:?}", show(i));
            }
        }
        assert!(!bytes.windows(3).any(|w| w == b"\r.\r"), "{label}");
        let parsed = mail_parser::MessageParser::default()
            .parse(bytes)
            .unwrap()
            .into_owned();
        let mut text_parts = 0;
        for part in parsed.parts.iter().filter(|p| p.is_text()) {
            text_parts += 1;
            let encoding = part.content_transfer_encoding().unwrap_or("none");
            let decoded = part.text_contents().unwrap();
            let plain = decoded.is_ascii()
                && decoded.split("\r\n").all(|l| l.len() <= 76)
                && !decoded
                    .chars()
                    .any(|c| c.is_control() && c != '\r' && c != '\n' && c != '\t');
            assert!(
                ["7bit", "quoted-printable", "base64"].contains(&encoding),
                "{label}: {encoding}"
            );
            assert!(
                encoding != "7bit" || plain,
                "{label}: 7bit for text that is not plain short-line ASCII: {decoded:?}"
            );
        }
        assert!(text_parts >= 1, "{label}");
        parsed
    }

    #[test]
    fn hostile_text_is_normalised_and_encoded_on_the_wire() {
        let sequences = [
            "\r.\r\n",
            "\n.\n",
            "\r\n.\r",
            "\n.\r\n",
            "\r\n.\r\n",
            "\r\r\n.\n\r",
            "\r.\r",
        ];
        // Pure ASCII is what lettre would send as 7bit, verbatim; 8-bit text it encodes.
        for (seq, tail) in sequences
            .iter()
            .flat_map(|s| [(s, " end"), (s, " caf\u{e9}\u{85} end")])
        {
            let hostile = format!(
                "before{seq}MAIL FROM:<x@evil>\r\nRCPT TO:<attacker@example.com>\r\nDATA\r\n\
                 after nul\0byte\x0b\x1b[31m{tail}"
            );
            let kept = format!("after nulbyte[31m{}", tail.replace('\u{85}', ""));
            for html in [false, true] {
                let label = format!("{seq:?}{tail:?} html={html}");
                let mut e = email("s", "rt@example.com");
                e.text = hostile.clone();
                e.html = html.then(|| format!("<pre>{hostile}</pre>"));
                let m = build_message(&smtp(), &e, "<x@example.com>", None).unwrap();
                let parsed = assert_wire_safe(&label, &m.formatted());
                let text = parsed.body_text(0).unwrap();
                for needle in [
                    "before",
                    "\r\nMAIL FROM:<x@evil>\r\nRCPT TO:<attacker@example.com>\r\nDATA\r\n",
                    &kept,
                ] {
                    assert!(text.contains(needle), "{label}: {needle:?} in {text:?}");
                }
            }
        }
        // Plain short ASCII stays readable as 7bit; a long ASCII line or any 8-bit text does not.
        for (text, expect) in [
            ("all quiet\nhere".to_string(), "7bit"),
            ("x".repeat(200), "quoted-printable"),
            ("Überprüfung of a host".to_string(), "quoted-printable"),
            ("漢字漢字漢字漢字".to_string(), "base64"),
        ] {
            let mut e = email("s", "rt@example.com");
            e.text = text.clone();
            e.html = None;
            let bytes = build_message(&smtp(), &e, "<x@example.com>", None)
                .unwrap()
                .formatted();
            let raw = String::from_utf8_lossy(&bytes).to_string();
            assert!(
                raw.contains(&format!("Content-Transfer-Encoding: {expect}")),
                "{text:?}: {raw}"
            );
            assert_wire_safe(&text, &bytes);
        }
    }

    #[test]
    fn headers_carry_no_line_break_nul_or_control() {
        let mut e = email("a\r\nBcc: x@evil\0\x1b[0m\r.\r\nb", "rt@example.com");
        e.cc = vec![];
        let m = build_message(&smtp(), &e, "<x@example.com>", Some("<root@example.com>")).unwrap();
        let raw = String::from_utf8(m.formatted()).unwrap();
        let headers = raw.split("\r\n\r\n").next().unwrap();
        assert!(
            headers.contains("Subject: a Bcc: x@evil [0m . b\r\n"),
            "{headers}"
        );
        assert!(!headers.contains(['\0', '\x1b']), "{headers}");
        // A thread root (an admin can set a ticket id by hand) or a rendered address cannot
        // carry a line break into a header either.
        assert!(
            build_message(&smtp(), &e, "<x@example.com>", Some("<r@x>\r\nBcc: y@evil")).is_err()
        );
        for bad in [
            "\"rt\r\nBcc: y@evil\" <rt@example.com>",
            "\"rt\0\" <rt@example.com>",
        ] {
            assert!(
                build_message(&smtp(), &email("s", bad), "<x@y>", None).is_err(),
                "{bad:?}"
            );
        }
    }
}
