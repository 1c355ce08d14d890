//! Reload: the configuration in force is one [`Generation`] — the config, its compiled
//! templates, its connectors' clients and transports — swapped whole on SIGHUP, on
//! `POST /v1/admin/reload`, or (with `[reload] watch`) when the config file or a file it
//! names changes.
//!
//! A new generation is loaded and checked in full (off the async runtime) before it replaces
//! the old; an invalid one replaces nothing, and its error is logged, counted and returned.
//! A send under way finishes on the generation it started with; queued deliveries render with
//! the new one. What the listeners, the store and the worker pool were built from —
//! `[server]`, `[storage]`, `[delivery]` — stays as the process started until a restart
//! (a reload that changes them says so). The threat-intel lists have a watcher of their own
//! ([`watch_threat_intel`]): a changed IOC file replaces the lists alone, not the generation.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};
use crate::connector::{Connector, Target};
use crate::deliver::{self, SetupError, oauth, smtp};
use crate::render::{RenderError, Renderer};
use crate::secrets::Secrets;
use crate::store::{PauseNote, Store};

/// A file, and its modification time and length when last looked at (`None`: absent).
type Seen = (PathBuf, Option<(SystemTime, u64)>);

/// How often the API pauses are read again from the store.
const PAUSES_REREAD: Duration = Duration::from_secs(2);

/// The sections a running process was built from: a reload keeps the running ones.
const RESTART_ONLY: [&str; 3] = ["server", "storage", "delivery"];

/// One loaded configuration and everything built from it.
pub struct Generation {
    /// 1 for the configuration the process started with, one more for each reload.
    pub number: u64,
    pub config: Arc<Config>,
    pub renderer: Arc<Renderer>,
    pub connectors: Arc<Vec<Connector>>,
    /// Masked in whatever is recorded or logged.
    pub secrets: Arc<Secrets>,
    /// One HTTP client per HTTP connector (its resolver, CAs, client certificate).
    pub clients: Arc<HashMap<String, reqwest::Client>>,
    /// The OAuth2 token source of each connector with `[connectors.oauth2]`.
    pub tokens: Arc<HashMap<String, oauth::TokenSource>>,
    /// One pooled SMTP transport per SMTP connector.
    pub mailers: Arc<HashMap<String, smtp::Transport>>,
    /// What the delivery workers send with, built from this config.
    pub kit: Arc<deliver::Kit>,
    /// The restart-only sections as written, to tell when a reload changes them.
    restart_only: toml::Table,
    /// The files this generation was read from, as last seen (for `[reload] watch`).
    files: Vec<Seen>,
}

/// Why a generation could not be built.
#[derive(Debug, thiserror::Error)]
pub enum GenerationError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("template {0}")]
    Render(#[from] RenderError),
    #[error(transparent)]
    Connector(#[from] SetupError),
    #[error("the reload was interrupted: {0}")]
    Interrupted(String),
}

impl Generation {
    /// Compiles the templates and builds each connector's client and transport.
    pub fn build(config: Config, number: u64) -> Result<Generation, GenerationError> {
        let renderer = Renderer::new(config.partials_dir.as_deref(), &config.connectors)?;
        let clients = deliver::clients(&config.connectors)?;
        let tokens = deliver::token_sources(&config.connectors, &clients);
        let mailers = deliver::mailers(&config.connectors)?;
        let restart_only = restart_only_sections(&config.file);
        let files = watched_files(&config);
        let kit = Arc::new(deliver::Kit {
            number,
            renderer: Arc::new(renderer),
            connectors: Arc::new(config.connectors.clone()),
            secrets: Arc::new(config.secrets.clone()),
            clients: Arc::new(clients),
            tokens: Arc::new(tokens),
            mailers: Arc::new(mailers),
            alerts: config.alerts.clone(),
        });
        Ok(Generation {
            number,
            renderer: kit.renderer.clone(),
            connectors: kit.connectors.clone(),
            secrets: kit.secrets.clone(),
            clients: kit.clients.clone(),
            tokens: kit.tokens.clone(),
            mailers: kit.mailers.clone(),
            kit,
            config: Arc::new(config),
            restart_only,
            files,
        })
    }

    /// The connector named `name` in this generation.
    pub fn connector(&self, name: &str) -> Option<&Connector> {
        crate::connector::find(&self.connectors, name)
    }
}

/// `[server]`, `[storage]` and `[delivery]` as written in `file` (empty if it cannot be read:
/// the config itself was just read from it, so that is a race with an edit, and the next
/// reload compares again).
fn restart_only_sections(file: &std::path::Path) -> toml::Table {
    let Ok(text) = std::fs::read_to_string(file) else {
        return toml::Table::new();
    };
    let Ok(table) = text.parse::<toml::Table>() else {
        return toml::Table::new();
    };
    table
        .into_iter()
        .filter(|(k, _)| RESTART_ONLY.contains(&k.as_str()))
        .collect()
}

/// The config file, every template and schema its connectors name, and the partials.
fn watched_files(config: &Config) -> Vec<Seen> {
    let mut paths = vec![config.file.clone()];
    for c in &config.connectors {
        paths.push(c.template.resolved.clone());
        paths.extend(c.target_schema.clone());
        match &c.target {
            Target::Http(http) => {
                for request in http.requests.iter() {
                    paths.push(request.template.resolved.clone());
                    paths.extend(request.target_schema.clone());
                }
            }
            Target::Smtp(smtp) => {
                for message in smtp.messages.iter() {
                    paths.push(message.template.resolved.clone());
                    paths.extend(message.html_template.as_ref().map(|t| t.resolved.clone()));
                    paths.extend(message.target_schema.clone());
                }
            }
        }
    }
    if let Some(dir) = &config.partials_dir {
        paths.push(dir.clone());
        if let Ok(entries) = std::fs::read_dir(dir) {
            paths.extend(entries.flatten().map(|e| e.path()));
        }
    }
    paths.sort();
    paths.dedup();
    paths
        .into_iter()
        .map(|p| {
            let seen = stamp(&p);
            (p, seen)
        })
        .collect()
}

/// A file's modification time and length, or `None` when it is gone.
fn stamp(path: &std::path::Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// How a reload went, as the endpoint answers it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Reloaded {
    /// The generation now in force.
    pub generation: u64,
    /// Restart-only sections the new file changes (they wait for a restart).
    pub restart_needed: Vec<String>,
}

/// The generation in force, and what swaps it.
pub struct Live {
    current: ArcSwap<Generation>,
    /// One reload at a time: two at once would both build from the same file.
    reloading: tokio::sync::Mutex<()>,
    /// Rung on every swap (the workers forget the connectors they found missing).
    pub swapped: Notify,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    /// The last failed reload's error, cleared by a good one.
    pub last_error: Mutex<Option<String>>,
    /// Connectors paused through the admin API, as last read from the store (every process
    /// on a shared database reads them every [`PAUSES_REREAD`]).
    api_paused: ArcSwap<Vec<PauseNote>>,
    /// Mailbox readers follow the connectors: restarted with each generation.
    mailboxes: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    store: Store,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
}

impl Live {
    pub fn new(
        first: Generation,
        store: Store,
        wake: Arc<Notify>,
        shutdown: CancellationToken,
    ) -> Arc<Live> {
        let live = Arc::new(Live {
            current: ArcSwap::from_pointee(first),
            reloading: tokio::sync::Mutex::new(()),
            swapped: Notify::new(),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            last_error: Mutex::new(None),
            mailboxes: Mutex::new(Vec::new()),
            api_paused: ArcSwap::from_pointee(Vec::new()),
            store,
            wake,
            shutdown,
        });
        live.restart_mailboxes();
        tokio::spawn(live.clone().follow_pauses());
        live
    }

    /// Connectors whose deliveries are held: paused in the config or through the API.
    pub fn paused(&self, connectors: &[Connector]) -> Vec<String> {
        let mut names: Vec<String> = connectors
            .iter()
            .filter(|c| c.paused)
            .map(|c| c.name.clone())
            .collect();
        names.extend(self.api_paused.load().iter().map(|p| p.connector.clone()));
        names
    }

    /// The API pause of `connector`, if it has one.
    pub fn api_pause(&self, connector: &str) -> Option<PauseNote> {
        self.api_paused
            .load()
            .iter()
            .find(|p| p.connector == connector)
            .cloned()
    }

    /// Reads the API pauses from the store now (after a pause or resume here).
    pub async fn reread_pauses(&self) -> Result<(), crate::store::StoreError> {
        let paused = self.store.paused().await?;
        self.api_paused.store(Arc::new(paused));
        self.wake.notify_one();
        Ok(())
    }

    /// Keeps the API pauses current: another process on the same database may change them.
    async fn follow_pauses(self: Arc<Self>) {
        loop {
            if let Err(e) = self.reread_pauses().await {
                tracing::warn!(error = %e, "cannot read paused connectors; keeping the last known");
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = tokio::time::sleep(PAUSES_REREAD) => {}
            }
        }
    }

    /// Whether the gateway is shutting down (`/readyz` then answers 503 so balancers drain it).
    pub fn stopping(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// The generation in force: hold it for the whole of one request or one attempt.
    pub fn current(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    /// Loads the config file again and, if it is valid in full, puts it in force.
    pub async fn reload(&self) -> Result<Reloaded, Arc<GenerationError>> {
        let _one_at_a_time = self.reloading.lock().await;
        let old = self.current();
        let file = old.config.file.clone();
        let number = old.number + 1;
        // Reading files and compiling templates is CPU and disk work: off the runtime.
        let built = tokio::task::spawn_blocking(move || {
            Config::load(&file)
                .map_err(GenerationError::from)
                .and_then(|config| Generation::build(config, number))
        })
        .await
        .unwrap_or_else(|e| Err(GenerationError::Interrupted(e.to_string())));
        let mut new = match built {
            Ok(new) => new,
            Err(e) => {
                let e = Arc::new(e);
                self.reloads_failed.fetch_add(1, Ordering::Relaxed);
                let message = old.secrets.mask(&e.to_string());
                tracing::error!(error = %message, "config reload refused; the running config stays in force");
                if let Ok(mut last) = self.last_error.lock() {
                    *last = Some(message);
                }
                return Err(e);
            }
        };
        let restart_needed: Vec<String> = RESTART_ONLY
            .iter()
            .filter(|s| old.restart_only.get(**s) != new.restart_only.get(**s))
            .map(|s| s.to_string())
            .collect();
        // The running listeners, store and workers were built from these: keep them true.
        {
            let config = Arc::make_mut(&mut new.config);
            config.server = old.config.server.clone();
            config.storage = old.config.storage.clone();
            config.delivery = old.config.delivery;
        }
        new.restart_only = old.restart_only.clone();
        if !restart_needed.is_empty() {
            tracing::warn!(
                sections = ?restart_needed,
                "config reloaded, but these sections change only at a restart"
            );
        }
        new.config.threat_intel.inherit(&old.config.threat_intel);
        log_intel_problems(&new.config.threat_intel);
        let generation = new.number;
        self.current.store(Arc::new(new));
        self.reloads_ok.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = self.last_error.lock() {
            *last = None;
        }
        self.restart_mailboxes();
        self.swapped.notify_waiters();
        self.wake.notify_one();
        tracing::info!(generation, "config reloaded");
        Ok(Reloaded {
            generation,
            restart_needed,
        })
    }

    /// Whether a file of the generation in force changed since it was loaded.
    fn files_changed(&self) -> bool {
        self.current()
            .files
            .iter()
            .any(|(path, seen)| stamp(path) != *seen)
    }

    /// Reloads whenever a watched file changes, checking every `interval`. A change that
    /// does not load is reported once, then waits for the next change.
    pub async fn watch(self: Arc<Self>, interval: Duration) {
        let mut refused_at: Option<Vec<Seen>> = None;
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
            let me = self.clone();
            let changed = tokio::task::spawn_blocking(move || me.files_changed())
                .await
                .unwrap_or(false);
            if !changed {
                continue;
            }
            let now: Vec<_> = self
                .current()
                .files
                .iter()
                .map(|(p, _)| (p.clone(), stamp(p)))
                .collect();
            if refused_at.as_ref() == Some(&now) {
                continue;
            }
            // An editor may still be writing: let the change settle first.
            tokio::time::sleep(interval.min(Duration::from_millis(500))).await;
            match self.reload().await {
                Ok(_) => refused_at = None,
                Err(_) => refused_at = Some(now),
            }
        }
    }

    fn restart_mailboxes(&self) {
        let Ok(mut readers) = self.mailboxes.lock() else {
            return;
        };
        for reader in readers.drain(..) {
            // A read under way is dropped: the mails it had not marked seen are read again.
            reader.abort();
        }
        *readers = crate::mailbox::spawn_readers(
            &self.current().connectors,
            self.store.clone(),
            self.wake.clone(),
            self.shutdown.clone(),
        );
    }

    /// Stops the mailbox readers (at shutdown).
    pub fn stop_mailboxes(&self) {
        if let Ok(mut readers) = self.mailboxes.lock() {
            for reader in readers.drain(..) {
                reader.abort();
            }
        }
    }
}

impl deliver::Supply for Live {
    fn kit(&self) -> Arc<deliver::Kit> {
        self.current().kit.clone()
    }

    fn paused(&self, kit: &deliver::Kit) -> Vec<String> {
        Live::paused(self, &kit.connectors)
    }
}
/// Logs each threat-intel list a configuration could not load (it runs without it, or with
/// the set in force before a reload).
pub fn log_intel_problems(intel: &crate::intel::ThreatIntel) {
    for (i, e) in intel.problems() {
        let name = intel.settings.lists.get(*i).map_or("", |l| l.name.as_str());
        tracing::error!(list = name, error = %e, "a threat-intel list does not parse: the gateway runs without its entries until the file is mended");
    }
}

/// Looks at the list files of the configuration in force every `refresh`, and swaps in the
/// lists read again when one changed (the reading runs off the async runtime). A file that
/// does not parse is logged with its line and counted; the lists in force stay.
pub async fn watch_threat_intel(
    live: Arc<Live>,
    metrics: Arc<crate::metrics::Metrics>,
    shutdown: CancellationToken,
) {
    loop {
        let intel = live.current().config.threat_intel.clone();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(intel.settings.refresh) => {}
        }
        if intel.is_empty() {
            continue;
        }
        let refreshed = {
            let intel = intel.clone();
            tokio::task::spawn_blocking(move || intel.refresh()).await
        };
        match refreshed {
            Ok(Ok(false)) => {}
            Ok(Ok(true)) => {
                crate::metrics::Metrics::inc(&metrics.intel_reloaded);
                let now = intel.current();
                tracing::info!(
                    lists = now.lists.len(),
                    entries = now.entries(),
                    bytes = now.heap_bytes(),
                    "threat-intel lists read again after a file changed"
                );
            }
            Ok(Err(errors)) => {
                crate::metrics::Metrics::inc(&metrics.intel_refused);
                for e in errors {
                    tracing::error!(error = %e, "a threat-intel list changed but does not parse: its entries in force stay");
                }
            }
            Err(e) => tracing::error!(error = %e, "reading the threat-intel lists failed"),
        }
    }
}
