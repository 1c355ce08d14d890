//! A server child process (the gateway, or a baseline): started with its log in a file, found
//! by the `listening on http://ADDR` line it prints first, measured through /proc, stopped.

use std::io::BufRead as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};

/// How long a server may take to print where it listens.
const START_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Child {
    pub addr: SocketAddr,
    child: std::process::Child,
}

impl Child {
    pub fn spawn(mut cmd: Command, log: &Path, what: &str) -> anyhow::Result<Child> {
        let log_file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .spawn()
            .with_context(|| format!("starting {what} ({:?})", cmd.get_program()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no stdout from {what}"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        // A thread, so a server that never prints cannot block the tool past the timeout; it
        // keeps reading after the first line so a later print never meets a closed pipe.
        std::thread::spawn(move || {
            let mut reader = std::io::BufReader::new(stdout);
            let mut line = String::new();
            let _ = tx.send(reader.read_line(&mut line).map(|_| line));
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let first = match rx.recv_timeout(START_TIMEOUT) {
            Ok(Ok(line)) => line,
            Ok(Err(e)) => {
                let _ = child.kill();
                bail!("{what}: reading its output: {e}");
            }
            Err(_) => {
                let _ = child.kill();
                bail!(
                    "{what} printed no address within {START_TIMEOUT:?}; its log: {}",
                    log.display()
                );
            }
        };
        let addr = first
            .trim()
            .strip_prefix("listening on http://")
            .and_then(|a| a.parse().ok());
        let Some(addr) = addr else {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{what} did not start (first line {first:?}); {}",
                log_tail(log)
            );
        };
        Ok(Child { addr, child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident memory (VmHWM from /proc/PID/status) in KiB; None off Linux.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM (the gateway's graceful stop), then SIGKILL after `grace`.
    pub fn terminate(&mut self, grace: Duration) {
        if !self.running() {
            return;
        }
        // std has no SIGTERM; kill(1) is on every Linux and macOS.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !self.running() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        // Never leave a server behind, whatever ended the tool.
        self.kill();
    }
}

/// The last lines of a log, for an error message.
pub fn log_tail(log: &Path) -> String {
    match std::fs::read_to_string(log) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(10)..].join("\n");
            format!("the end of its log ({}):\n{tail}", log.display())
        }
        Err(_) => format!("no log at {}", log.display()),
    }
}
