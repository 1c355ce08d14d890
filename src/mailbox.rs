//! Mailbox: reads the acknowledgement mails a ticketing system sends when it files a mail
//! (Redmine's notification "[soc - Bug #12] …", Request Tracker's auto-reply "[rtname #12]
//! AutoReply: …", Zammad's "[Ticket#31001]"), from an IMAP mailbox, and learns from each the
//! number the system gave a mailed ticket: the subject names the number by the system's own
//! marker, the mail carries the ticket's `ref` (the correlation field the `created` mail set,
//! which the notification lists, or the subject tag). Follow-ups waiting for that number then
//! go, carrying the marker. A connector may learn numbers this way, by its lookup, or both.

use std::sync::Arc;

use futures_util::TryStreamExt;
use regex::Regex;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::connector::{Connector, MailSystem, MailThreading, Mailbox};
use crate::render::ticket_ref;
use crate::store::Store;

/// Why reading the mailbox failed this time (it is read again at the next poll).
#[derive(Debug, thiserror::Error)]
pub enum MailboxError {
    #[error("cannot connect to {host}:{port}: {source}")]
    Connect {
        host: String,
        port: u16,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("IMAP: {0}")]
    Imap(#[from] async_imap::error::Error),
    #[error("the IMAP server sent no greeting")]
    NoGreeting,
    #[error("IMAP login refused: {0}")]
    Login(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("the read took longer than {}s", READ_TIMEOUT.as_secs())]
    TimedOut,
}

/// How long one read of a mailbox may take (connect, login, fetch, logout): a server that
/// hangs holds no reader past it.
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// What an acknowledgement says: ticket `number` is the one with `reference`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acknowledgement {
    pub number: String,
    pub reference: String,
}

/// The pattern of the system's marker in a subject, its number captured.
pub fn marker_pattern(threading: &MailThreading) -> Option<Regex> {
    let marker = match &threading.system {
        MailSystem::Redmine => r"\[(?:[^\]]*\s+)?#(\d+)\]".to_string(),
        MailSystem::RequestTracker { rt_name } => {
            format!(r"\[{}\s+#(\d+)\]", regex::escape(rt_name))
        }
        MailSystem::Zammad { ticket_hook } => format!(r"\[{}(\d+)\]", regex::escape(ticket_hook)),
        MailSystem::Jira { project_key } => {
            format!(r"\b({}-\d+)\b", regex::escape(project_key))
        }
    };
    Regex::new(&marker).ok()
}

/// A ticket's ref, as `render::ticket_ref` writes it.
static TICKET_REF: std::sync::LazyLock<Option<Regex>> =
    std::sync::LazyLock::new(|| Regex::new(r"igw-[0-9a-f]{32}").ok());

/// The number the system's `marker` in `subject` names, and the ticket ref `text` (subject
/// and body) carries; `None` unless both are there.
pub fn read_acknowledgement(marker: &Regex, subject: &str, text: &str) -> Option<Acknowledgement> {
    let number = marker.captures(subject).map(|c| c[1].to_string())?;
    let reference = TICKET_REF
        .as_ref()?
        .find(subject)
        .or_else(|| TICKET_REF.as_ref()?.find(text))
        .map(|m| m.as_str().to_string())?;
    Some(Acknowledgement { number, reference })
}

/// Reads every SMTP connector's mailbox every `poll` until `shutdown`.
pub fn spawn_readers(
    connectors: &[Connector],
    store: Store,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    connectors
        .iter()
        .filter_map(|c| {
            let threading = c.threading()?.clone();
            let crate::connector::Target::Smtp(smtp) = &c.target else {
                return None;
            };
            let mailbox = smtp.mailbox.clone()?;
            let (name, store, wake, shutdown) =
                (c.name.clone(), store.clone(), wake.clone(), shutdown.clone());
            Some(tokio::spawn(async move {
                loop {
                    let read = read_once(&name, &threading, &mailbox, &store);
                    match tokio::time::timeout(READ_TIMEOUT, read)
                        .await
                        .unwrap_or(Err(MailboxError::TimedOut))
                    {
                        Ok(0) => {}
                        Ok(learned) => {
                            tracing::info!(connector = %name, learned, "ticket numbers learned from the mailbox");
                            wake.notify_one();
                        }
                        Err(e) => {
                            tracing::warn!(connector = %name, error = %e, "cannot read the mailbox; trying again at the next poll")
                        }
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(mailbox.poll) => {}
                    }
                }
            }))
        })
        .collect()
}

/// One read: the unseen mails, each marked seen; returns how many tickets got their number.
pub async fn read_once(
    connector: &str,
    threading: &MailThreading,
    mailbox: &Mailbox,
    store: &Store,
) -> Result<usize, MailboxError> {
    let tcp = tokio::net::TcpStream::connect((mailbox.host.as_str(), mailbox.port))
        .await
        .map_err(|source| MailboxError::Connect {
            host: mailbox.host.clone(),
            port: mailbox.port,
            source,
        })?;
    let acknowledgements = if mailbox.tls {
        let config = <rustls::ClientConfig as rustls_platform_verifier::ConfigVerifierExt>::with_platform_verifier()
            .map_err(|e: rustls::Error| MailboxError::Tls(e.to_string()))?;
        let name = rustls::pki_types::ServerName::try_from(mailbox.host.clone())
            .map_err(|e| MailboxError::Tls(e.to_string()))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| MailboxError::Tls(e.to_string()))?;
        unseen(tls, threading, mailbox).await?
    } else {
        unseen(tcp, threading, mailbox).await?
    };
    let mut learned = 0;
    if acknowledgements.is_empty() {
        return Ok(0);
    }
    let waiting = store.unnumbered_tickets(connector.to_string()).await?;
    for ack in acknowledgements {
        for (ticket_seq, key) in &waiting {
            if ticket_ref(connector, key) == ack.reference
                && store.number_ticket(*ticket_seq, ack.number.clone()).await?
            {
                learned += 1;
            }
        }
    }
    Ok(learned)
}

/// Logs in, reads the unseen mails of the folder (marking them seen), logs out.
async fn unseen<S>(
    stream: S,
    threading: &MailThreading,
    mailbox: &Mailbox,
) -> Result<Vec<Acknowledgement>, MailboxError>
where
    S: AsyncRead + AsyncWrite + Unpin + std::fmt::Debug + Send,
{
    let mut client = async_imap::Client::new(stream);
    client
        .read_response()
        .await
        .map_err(async_imap::error::Error::from)?
        .ok_or(MailboxError::NoGreeting)?;
    let mut session = client
        .login(&mailbox.username, &mailbox.password)
        .await
        // The server's words, never the password.
        .map_err(|(e, _)| MailboxError::Login(e.to_string()))?;
    session.select(&mailbox.folder).await?;
    let found = session.search("UNSEEN").await?;
    let mut out = Vec::new();
    let marker = marker_pattern(threading);
    if let Some(marker) = marker.as_ref().filter(|_| !found.is_empty()) {
        let mut ids: Vec<u32> = found.into_iter().collect();
        ids.sort_unstable();
        let set = ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
        // Fetching the whole message (not PEEK) marks it seen: it is read once.
        let messages: Vec<_> = session.fetch(&set, "RFC822").await?.try_collect().await?;
        for message in &messages {
            let Some(raw) = message.body() else { continue };
            let Some(parsed) = mail_parser::MessageParser::default().parse(raw) else {
                continue;
            };
            let subject = parsed.subject().unwrap_or_default();
            let text = parsed.body_text(0).unwrap_or_default();
            if let Some(ack) = read_acknowledgement(marker, subject, &text) {
                out.push(ack);
            }
        }
    }
    session.logout().await?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn threading(system: MailSystem) -> Regex {
        marker_pattern(&crate::connector::test_threading(system)).unwrap()
    }

    const REF: &str = "igw-0123456789abcdef0123456789abcdef";

    #[test]
    fn acknowledgements_name_their_number_and_carry_the_ref() {
        let redmine = threading(MailSystem::Redmine);
        let body = format!("Issue #12 has been reported.\n* Correlation key: {REF}\n");
        assert_eq!(
            read_acknowledgement(&redmine, "[soc - Bug #12] (New) svc (#1) down", &body),
            Some(Acknowledgement {
                number: "12".into(),
                reference: REF.into()
            })
        );
        let rt = threading(MailSystem::RequestTracker {
            rt_name: "soc.example".into(),
        });
        let subject = format!("[soc.example #7] AutoReply: [{REF}] svc down");
        assert_eq!(
            read_acknowledgement(&rt, &subject, "").map(|a| a.number),
            Some("7".into())
        );
        // Another system's marker, or no ref: not an acknowledgement of ours.
        assert_eq!(read_acknowledgement(&rt, "[other.example #7] x", REF), None);
        assert_eq!(
            read_acknowledgement(&redmine, "[soc - Bug #12] x", "no ref"),
            None
        );
        let jira = threading(MailSystem::Jira {
            project_key: "SEC".into(),
        });
        assert_eq!(
            read_acknowledgement(&jira, "SEC-44: svc down", REF).map(|a| a.number),
            Some("SEC-44".into())
        );
    }
}
