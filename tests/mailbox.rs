//! Ticket numbers learned from a ticketing system's acknowledgement mails, over IMAP, from a
//! real IMAP server (Debian's dovecot, started by the test on its own port and folder; the
//! test command installs it). The mail goes to a real SMTP server (aiosmtpd); the system's
//! auto-reply is put in the mailbox as Request Tracker writes it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use common::smtp::SmtpServer;
use common::*;
use mail_parser::MessageParser;
use serde_json::json;

/// A dovecot serving one user's Maildir on a port of its own.
struct Dovecot {
    child: Child,
    maildir: PathBuf,
    port: u16,
}

const USER: &str = "soc";
const PASSWORD: &str = "soc-imap-password-1";

impl Dovecot {
    fn start(dir: &Path) -> Dovecot {
        let port = free_port();
        let maildir = dir.join("Maildir");
        for sub in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(maildir.join(sub)).unwrap();
        }
        // Dovecot will not serve mail as root: as root the mail belongs to nobody.
        let (uid, gid) = match Command::new("id").arg("-u").output() {
            Ok(o) if String::from_utf8_lossy(&o.stdout).trim() == "0" => {
                let status = Command::new("chown")
                    .args(["-R", "65534:65534"])
                    .arg(dir)
                    .status()
                    .unwrap();
                assert!(status.success());
                ("65534".to_string(), "65534".to_string())
            }
            _ => {
                let id = |flag: &str| {
                    let out = Command::new("id").arg(flag).output().unwrap();
                    String::from_utf8_lossy(&out.stdout).trim().to_string()
                };
                (id("-u"), id("-g"))
            }
        };
        std::fs::write(dir.join("users"), format!("{USER}:{{PLAIN}}{PASSWORD}\n")).unwrap();
        let config = dir.join("dovecot.conf");
        std::fs::write(
            &config,
            format!(
                r#"protocols = imap
listen = 127.0.0.1
base_dir = {dir}/run/
instance_name = igw-test-{port}
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:{maildir}
first_valid_uid = 1
log_path = {dir}/dovecot.log
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%n {dir}/users
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={dir}
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
"#,
                dir = dir.display(),
                maildir = maildir.display(),
            ),
        )
        .unwrap();
        let mut child = Command::new("dovecot")
            .arg("-F")
            .arg("-c")
            .arg(&config)
            .spawn()
            .expect("dovecot runs (apt-get install dovecot-imapd; scripts/test installs it)");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Dovecot {
                    child,
                    maildir,
                    port,
                };
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "dovecot did not listen: {}",
            std::fs::read_to_string(dir.join("dovecot.log")).unwrap_or_default()
        );
    }

    /// A mail arriving in the mailbox, as a delivery agent puts it there.
    fn deliver(&self, name: &str, raw: &str) {
        let tmp = self.maildir.join("tmp").join(name);
        std::fs::write(&tmp, raw).unwrap();
        let _ = Command::new("chown")
            .args(["65534:65534"])
            .arg(&tmp)
            .status();
        std::fs::rename(&tmp, self.maildir.join("new").join(name)).unwrap();
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Request Tracker's auto-reply to the mail that opened ticket `number`.
fn rt_autoreply(number: u32, reference: &str) -> String {
    format!(
        "From: RT <rt@soc.example>\r\nTo: gateway@soc.example\r\nSubject: [soc.example #{number}] AutoReply: svc down\r\nMessage-ID: <rt-{number}@soc.example>\r\nContent-Type: text/plain\r\n\r\nGreetings,\r\n\r\nThis message has been automatically generated in response to the\r\ncreation of a trouble ticket regarding \"svc down\".\r\n\r\nCF.{{Correlation key}}: {reference}\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_ups_wait_for_the_number_the_acknowledgement_brings_then_thread_on_it() {
    let ws = Workspace::new();
    let imap_dir = tempfile::tempdir().unwrap();
    let dovecot = Dovecot::start(imap_dir.path());
    let mails = ws.path().join("mails");
    let smtp_port = free_port();
    let smtp = SmtpServer::start(smtp_port, &mails, &[]);
    ws.write("body.txt.hbs", "Incident {{incidentId}} ({{event}})\n");
    let config = ws.config(
        "127.0.0.1:0",
        &format!(
            r#"
[[connectors]]
name = "rt-mail"
kind = "smtp"
smtp_url = "smtp://127.0.0.1:{smtp_port}"
from = "SOC Gateway <gateway@soc.example>"
to = ["rt@soc.example"]
subject = "{{{{incident.summary}}}}"
template = "body.txt.hbs"
[connectors.threading]
system = "rt"
rt_name = "soc.example"
correlation_field = "Correlation key"
[connectors.mailbox]
imap_url = "imap://127.0.0.1:{port}"
username = "{USER}"
password = "{PASSWORD}"
poll = "1s"
[connectors.retry]
max_attempts = 100
initial_backoff = "200ms"
max_backoff = "500ms"
"#,
            port = dovecot.port
        ),
    );
    let (gw, base) = start_gateway(&config).await;
    let mut inc = incident("ACK-1");
    accepted(&base, &inc).await;
    let sent = smtp.wait_for(1, Duration::from_secs(10)).await;
    let created = MessageParser::default()
        .parse(sent[0].1.as_bytes())
        .unwrap();
    let text = created.body_text(0).unwrap().to_string();
    let reference = text
        .lines()
        .find_map(|l| l.strip_prefix("CF.{Correlation key}: "))
        .expect("the created mail sets the correlation field")
        .trim()
        .to_string();

    // The update waits: RT has not acknowledged the ticket yet.
    inc["updateTime"] = json!(1_900_000_000);
    let update = first_delivery(&accepted(&base, &inc).await);
    let waiting = eventually(Duration::from_secs(10), || {
        let (base, update) = (base.clone(), update.clone());
        async move {
            let (_, d) = admin_get(&base, &format!("/v1/deliveries/{update}")).await;
            d["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("waiting for the ticket's number"))
                .then_some(d)
        }
    })
    .await;
    assert!(waiting.is_some(), "the update waits for the number");
    assert_eq!(
        smtp.messages().len(),
        1,
        "nothing threaded before the number is known"
    );

    // Someone else's acknowledgement, then RT's auto-reply for ours.
    dovecot.deliver(
        "1.other",
        &rt_autoreply(41, "igw-ffffffffffffffffffffffffffffffff"),
    );
    dovecot.deliver("2.ours", &rt_autoreply(42, &reference));
    let sent = smtp.wait_for(2, Duration::from_secs(15)).await;
    let follow_up = MessageParser::default()
        .parse(sent[1].1.as_bytes())
        .unwrap();
    let subject = follow_up.subject().unwrap().to_string();
    assert!(subject.starts_with("[soc.example #42] "), "{subject}");
    assert!(
        follow_up.in_reply_to().is_empty(),
        "no In-Reply-To: RT threads by number"
    );
    let (_, v) = admin_get(&base, "/v1/incidents/ACK-1").await;
    assert_eq!(v["connectors"]["rt-mail"]["tickets"][0]["ticket_id"], "42");
    gw.stop().await.unwrap();
}
