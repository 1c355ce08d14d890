//! The gateway under test: the release binary, built (or found), and a config of the tool's
//! own in a fresh folder for each run, its connectors pointing at the counting receiver.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail};

use super::child::Child;

/// The source key of the tool's config.
pub const SOURCE_KEY: &str = "load-tool-source-key-0123456789";
/// The source's callback token (the retention scenario completes what it filled).
pub const CALLBACK_TOKEN: &str = "load-tool-callback-token-0123456789";
/// The admin token of the tool's config (the console scenario signs in with it).
pub const ADMIN_TOKEN: &str = "load-tool-admin-token-0123456789";
/// How long a SIGTERM may take: the config's `shutdown_grace` and some.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// The gateway binary: `--gateway PATH` as given, or built with cargo in the tool's own
/// profile (a no-op when fresh, so a stale binary is never measured).
pub fn binary(given: Option<&Path>, build: bool) -> anyhow::Result<PathBuf> {
    if let Some(path) = given {
        if !path.is_file() {
            bail!("--gateway {}: no such file", path.display());
        }
        return Ok(path.to_path_buf());
    }
    let release = !cfg!(debug_assertions);
    // The tool is `<target>/<profile>/examples/load`; the gateway `<target>/<profile>/…`.
    let exe = std::env::current_exe().context("finding the tool's own path")?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("the tool is not in a cargo target folder; pass --gateway PATH")?;
    let gateway = profile_dir.join(format!("incident-gateway{}", std::env::consts::EXE_SUFFIX));
    if build {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["build", "--bin", "incident-gateway"]);
        if release {
            cmd.arg("--release");
        }
        eprintln!(
            "building the gateway: cargo build{} --bin incident-gateway",
            if release { " --release" } else { "" }
        );
        let status = cmd.status().context("running cargo")?;
        if !status.success() {
            bail!("cargo build of the gateway failed ({status})");
        }
    }
    if !gateway.is_file() {
        bail!(
            "no gateway binary at {}: run `cargo build --release` first, or pass --gateway PATH",
            gateway.display()
        );
    }
    Ok(gateway)
}

/// What the config says beyond the fixed head.
pub struct Setup {
    /// Connectors posting the generic envelope to the receiver.
    pub connectors: usize,
    /// Matchers on every connector (that every incident the tool sends passes).
    pub matchers: bool,
    /// The receiver's URL; connector `i` posts to `{receiver}/{i}`, so the receiver can tell
    /// one connector's delivery of an incident from another's.
    pub receiver: String,
    /// Load connections: the per-client connection limit must let them all in.
    pub connections: usize,
    /// `storage.url`.
    pub storage: String,
    /// Connectors sent elsewhere than the receiver (`(index, url)`): a refused port or a
    /// destination that never answers, for the isolation scenario.
    pub elsewhere: Vec<(usize, String)>,
    /// `[connectors.circuit] failures`: `None` keeps the default breaker, `Some(0)` turns it off.
    pub circuit_failures: Option<u32>,
    /// TOML appended after the connectors (`[retention]`, for the retention scenario).
    pub tail: String,
}

/// Writes `gateway.toml` into `dir` (its database beside it) and returns its path.
pub fn write_config(dir: &Path, setup: &Setup) -> anyhow::Result<PathBuf> {
    let template =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("templates/generic/incident.json.hbs");
    // All load comes from one address: the per-client limit (default 64) must not cut it.
    let slots = (setup.connections * 2).max(1024);
    let mut text = format!(
        r#"# Written by the load tool (examples/load). No rate_limit on the source and the
# connection limits above the load: the gateway must not throttle what it is measured on.
[server]
listen = "127.0.0.1:0"
admin_token = "{ADMIN_TOKEN}"
shutdown_grace = "2s"
max_connections = {slots}
max_connections_per_client = {slots}

[storage]
url = {storage}

[[sources]]
name = "load"
api_key = "{SOURCE_KEY}"
callback_token = "{CALLBACK_TOKEN}"
"#,
        storage = toml_string(&setup.storage),
    );
    for i in 0..setup.connectors {
        let name = if setup.connectors == 1 {
            "hook".to_string()
        } else {
            format!("hook-{i}")
        };
        text.push_str(&format!(
            r#"
[[connectors]]
name = "{name}"
kind = "http"
url = {url}
template = {template}
timeout = "10s"
# As many sends at once as the relay baselines make (the default is 16 per connector).
concurrency = {forwards}
"#,
            url = toml_string(
                &setup
                    .elsewhere
                    .iter()
                    .find(|(n, _)| *n == i)
                    .map_or_else(|| format!("{}/{i}", setup.receiver), |(_, url)| url.clone())
            ),
            template = toml_string(&template.display().to_string()),
            forwards = super::baseline::FORWARDS,
        ));
        if let Some(failures) = setup.circuit_failures {
            text.push_str(&format!("[connectors.circuit]\nfailures = {failures}\n"));
        }
        if setup.matchers {
            // A matcher every incident the tool sends passes (its ids all start so), so
            // routing does its work and every connector matches.
            text.push_str(
                "[[connectors.matchers]]\nfield = \"/incidentId\"\nregex = \"LOAD-.*\"\n",
            );
        }
    }
    text.push_str(&setup.tail);
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// A TOML string holding `s` as is (`$` doubled: the config expands `${VAR}`).
fn toml_string(s: &str) -> String {
    toml::Value::String(s.replace('$', "$$")).to_string()
}

/// Starts the gateway on `config`, its log (`IGW_LOG=log_level`) in `log`.
pub fn start(exe: &Path, config: &Path, log: &Path, log_level: &str) -> anyhow::Result<Child> {
    let mut cmd = Command::new(exe);
    cmd.arg("serve")
        .arg("--config")
        .arg(config)
        .env("IGW_LOG", log_level)
        // Plain text in the log file (and no time spent on colour codes).
        .env("NO_COLOR", "1");
    Child::spawn(cmd, log, "the gateway")
}

/// Creates a database of its own for a gateway run on the PostgreSQL server `server` names;
/// returns its URL.
pub async fn fresh_database(server: &str) -> anyhow::Result<String> {
    incident_gateway::store::postgres::create_database(server, "igw_load")
        .await
        .with_context(|| format!("creating a database on the PostgreSQL at {server}"))
}

/// Drops the database `url` names (on the server `server` names).
pub async fn drop_database(server: &str, url: &str) -> anyhow::Result<()> {
    Ok(incident_gateway::store::postgres::drop_database(server, url).await?)
}
