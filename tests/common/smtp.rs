//! The real SMTP server for tests: Python's aiosmtpd (tests/support/smtp_server.py), or a raw
//! socket sink (tests/support/smtp_sink.py), each storing what it receives in a folder.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::{at_least, repo};

/// The SMTP server process and the folder it stores messages in.
pub struct SmtpServer {
    child: Child,
    dir: PathBuf,
}

impl SmtpServer {
    /// aiosmtpd (tests/support/smtp_server.py), with its `args` (`--reject`, TLS).
    pub fn start(port: u16, dir: &Path, args: &[&str]) -> SmtpServer {
        Self::run("smtp_server.py", port, dir, args)
    }

    /// The raw-socket sink (tests/support/smtp_sink.py): lenient about line ends the way a
    /// smuggling attack needs, and able to stall.
    pub fn sink(port: u16, dir: &Path, args: &[&str]) -> SmtpServer {
        Self::run("smtp_sink.py", port, dir, args)
    }

    fn run(script: &str, port: u16, dir: &Path, args: &[&str]) -> SmtpServer {
        let script = repo().join("tests/support").join(script);
        let mut cmd = Command::new("python3");
        // The servers import tests/support/smtp_common.py: no bytecode cache in the tree.
        cmd.env("PYTHONDONTWRITEBYTECODE", "1")
            .arg(script)
            .args(["--port", &port.to_string(), "--dir"])
            .arg(dir)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("python3 runs");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .unwrap();
        if line.trim() != "ready" {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            panic!(
                "the SMTP server did not start (is aiosmtpd installed? pip install aiosmtpd): {err}"
            );
        }
        SmtpServer {
            child,
            dir: dir.to_path_buf(),
        }
    }

    /// Every stored message, in arrival order: (envelope, raw message).
    pub fn messages(&self) -> Vec<(Value, String)> {
        stored_messages(&self.dir)
    }

    pub fn connections(&self) -> usize {
        std::fs::read_to_string(self.dir.join("connections.log"))
            .map(|t| t.lines().count())
            .unwrap_or(0)
    }

    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<(Value, String)> {
        at_least(n, within, || self.messages()).await
    }

    /// Waits for `n` messages, then a moment more, so that any message beyond them (one sent
    /// twice, or smuggled) shows too; every message then.
    pub async fn wait_then_all(&self, n: usize, within: Duration) -> Vec<(Value, String)> {
        let mails = self.wait_for(n, within).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        if mails.len() == n {
            self.messages()
        } else {
            mails
        }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every message a server stored in `dir`, in arrival order: (envelope, raw message).
pub fn stored_messages(dir: &Path) -> Vec<(Value, String)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|p| {
        p.extension().is_some_and(|x| x == "json")
            && !p.file_name().unwrap().to_string_lossy().starts_with('.')
    });
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let v: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
            let data = v["data"].as_str().unwrap().to_string();
            (v, data)
        })
        .collect()
}
