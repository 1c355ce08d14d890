//! Configuration: the TOML file admins write, parsed, expanded and cross-checked once at load.
//!
//! Each section is built by a file of its own (`server.rs`, `storage.rs`, `delivery.rs`,
//! `sources.rs`, `connectors.rs` with `http.rs` and `smtp.rs`, `templates.rs`) into the
//! settings type of the stage that uses it: the listener's
//! [`ServerConfig`](crate::server::ServerConfig), the sources'
//! [`SourceConfig`](crate::auth::SourceConfig), the workers'
//! [`DeliveryConfig`](crate::deliver::DeliveryConfig), the store's
//! [`StorageConfig`](crate::store::StorageConfig), the [`Connector`]s. Everything is checked
//! here (paths resolved, regexes compiled, templates present, names unique), so the rest of the
//! gateway can trust a [`Config`] without re-checking it. `${VAR}` expands from an explicit
//! environment (`env.rs`); messages name the file, the line (`span.rs`) and the field.

mod alerts;
mod assignment;
mod connectors;
pub mod console;
mod delivery;
mod env;
mod http;
pub mod reload;
pub mod retention;
mod server;
mod sla;
mod smtp;
mod sources;
mod span;
mod storage;
mod templates;
pub mod tenants;
mod threat_intel;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::auth::SourceConfig;
use crate::connector::Connector;
use crate::deliver::DeliveryConfig;
use crate::secrets::Secrets;
use crate::server::ServerConfig;
use crate::store::StorageConfig;

pub use env::EnvError;

use span::Document;

/// Why a configuration could not be loaded. Every variant names the file, and where it can,
/// the line or the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Parse { file: PathBuf, message: String },
    #[error("{file}: {}{field}: {message}", at_line(*line))]
    Invalid {
        file: PathBuf,
        /// Where the field is written, when it is written at all.
        line: Option<usize>,
        field: String,
        message: String,
    },
    /// A `${VAR}` in the field could not be expanded.
    #[error("{file}: {}{field}: {reason}", at(*position))]
    Env {
        file: PathBuf,
        /// Line and column of the value, when it is written at all.
        position: Option<(usize, usize)>,
        field: String,
        reason: EnvError,
    },
}

/// Where the fields of a config file are written, for messages about a config loaded from it
/// (`check` names the line of a template written inline, or of a matcher).
pub struct FieldLines<'a>(Document<'a>);

impl<'a> FieldLines<'a> {
    pub fn new(text: &'a str) -> FieldLines<'a> {
        FieldLines(Document::parse(text).0)
    }

    /// The line `field` (`connectors[0].requests.updated.url`) is written on; `None` when it
    /// is not written itself.
    pub fn written(&self, field: &str) -> Option<usize> {
        self.0.value_position(field).map(|(line, _)| line)
    }

    /// The line of `field`, or of the nearest table around it that is written.
    pub fn line_of(&self, field: &str) -> Option<usize> {
        self.0.line_of(field)
    }
}

/// Each part of the document (a section, a source, a connector) read alone: the problems of
/// each, where reading the whole stops at the first.
fn part_errors(doc: &Document) -> Vec<toml::de::Error> {
    doc.parts()
        .into_iter()
        .filter_map(|(key, index, part)| match (key.as_str(), index) {
            ("server", None) => server::RawServer::deserialize(part).err(),
            ("storage", None) => storage::RawStorage::deserialize(part).err(),
            ("delivery", None) => delivery::RawDelivery::deserialize(part).err(),
            ("templates", None) => templates::RawTemplates::deserialize(part).err(),
            ("reload", None) => reload::RawReload::deserialize(part).err(),
            ("alerts", None) => alerts::RawAlerts::deserialize(part).err(),
            ("retention", None) => retention::RawRetention::deserialize(part).err(),
            ("console", None) => console::RawConsole::deserialize(part).err(),
            ("threat_intel", None) => threat_intel::RawThreatIntel::deserialize(part).err(),
            ("sources", Some(_)) => sources::RawSource::deserialize(part).err(),
            ("connectors", Some(_)) => connectors::RawConnector::deserialize(part).err(),
            _ => None,
        })
        .collect()
}

/// The first of a load's problems (a failed load has at least one).
fn first_error(mut errors: Vec<ConfigError>) -> ConfigError {
    if errors.is_empty() {
        return ConfigError::Parse {
            file: PathBuf::new(),
            message: "the configuration was refused without a reason".into(),
        };
    }
    errors.swap_remove(0)
}

fn at_line(line: Option<usize>) -> String {
    line.map(|l| format!("line {l}: ")).unwrap_or_default()
}

fn at(position: Option<(usize, usize)>) -> String {
    position
        .map(|(l, c)| format!("line {l}, column {c}: "))
        .unwrap_or_default()
}

/// The whole gateway configuration, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was loaded from (for messages) and the folder relative paths start in.
    pub file: PathBuf,
    pub base_dir: PathBuf,
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub delivery: DeliveryConfig,
    pub sources: Vec<SourceConfig>,
    /// `[[tenants]]`: the accounts the SOC serves, by name.
    pub tenants: Vec<tenants::Tenant>,
    /// The tenants by account (account → name), as connectors and metrics look them up.
    pub tenant_names: Arc<BTreeMap<i64, String>>,
    /// `[[admin_tokens]]`: admin tokens scoped to tenants.
    pub admin_tokens: Vec<crate::auth::ScopedAdmin>,
    pub connectors: Vec<Connector>,
    /// Folder of partial templates shared by every connector.
    pub partials_dir: Option<PathBuf>,
    /// Every value that came from an environment variable: masked wherever text leaves the
    /// gateway (render output, logs of errors, attempt records).
    pub secrets: Secrets,
    /// `[reload]`: whether the config and template files are watched for changes.
    pub reload: reload::ReloadConfig,
    /// `[alerts]`: when a failing connector raises an alert, and through which connector.
    pub alerts: crate::alert::AlertConfig,
    /// `[retention]`: when delivered (and dead) work is purged.
    pub retention: retention::RetentionConfig,
    /// `[threat_intel]`: the IOC lists in force (swapped whole when a file changes).
    pub threat_intel: Arc<crate::intel::ThreatIntel>,
    /// `[sla]`: the SLA watchdog's settings (`None`: no ticket has SLA clocks).
    pub sla: Option<Arc<crate::sla::SlaSettings>>,
    /// `[console]`: the web console under `/ui/`.
    pub console: console::ConsoleConfig,
}

/// The file as written; each section's own form lives with the file that builds it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: server::RawServer,
    storage: storage::RawStorage,
    #[serde(default)]
    delivery: delivery::RawDelivery,
    #[serde(default)]
    sources: Vec<sources::RawSource>,
    #[serde(default)]
    tenants: Vec<tenants::RawTenant>,
    #[serde(default)]
    admin_tokens: Vec<tenants::RawAdminToken>,
    #[serde(default)]
    assignment: Vec<assignment::RawRule>,
    #[serde(default)]
    connectors: Vec<connectors::RawConnector>,
    #[serde(default)]
    templates: templates::RawTemplates,
    #[serde(default)]
    reload: reload::RawReload,
    #[serde(default)]
    alerts: alerts::RawAlerts,
    #[serde(default)]
    retention: retention::RawRetention,
    #[serde(default)]
    threat_intel: threat_intel::RawThreatIntel,
    #[serde(default)]
    console: console::RawConsole,
    #[serde(default)]
    sla: sla::RawSla,
}

impl Config {
    /// Reads, expands and validates a configuration file.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        Self::load_with_env(file, |name| std::env::var(name).ok())
    }

    /// As [`Config::load`], with an explicit environment (for tests and `check`).
    pub fn load_with_env(
        file: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            file: file.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, file, env)
    }

    /// Parses configuration text as if it had been read from `file`, expanding `${VAR}` from
    /// `env`.
    pub fn from_toml(
        text: &str,
        file: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        Self::from_toml_all(text, file, env).map_err(first_error)
    }

    /// As [`Config::load`], naming every problem, not only the first (for `check`). A file
    /// that is not TOML stops at its first syntax error; a value of the wrong type or an
    /// unknown field stops the checks that need the values, after every such problem is named.
    pub fn load_all(file: &Path) -> Result<Config, Vec<ConfigError>> {
        let text = std::fs::read_to_string(file).map_err(|source| {
            vec![ConfigError::Read {
                file: file.to_path_buf(),
                source,
            }]
        })?;
        Self::from_toml_all(&text, file, |name| std::env::var(name).ok())
    }

    /// As [`Config::from_toml`], with every problem.
    pub fn from_toml_all(
        text: &str,
        file: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, Vec<ConfigError>> {
        let parse_error = |doc: &Document, e: toml::de::Error| ConfigError::Parse {
            file: file.to_path_buf(),
            message: doc.describe(&e),
        };
        let (doc, syntax_error) = Document::parse(text);
        if let Some(e) = syntax_error {
            return Err(vec![parse_error(&doc, e)]);
        }
        let raw = match RawConfig::deserialize(doc.deserializer()) {
            Ok(raw) => raw,
            Err(first) => {
                // The others of its kind, part by part (each section, each connector), in
                // the order they are written.
                let mut found = vec![first];
                for e in part_errors(&doc) {
                    let same = |seen: &toml::de::Error| {
                        seen.message() == e.message() && seen.span() == e.span()
                    };
                    if !found.iter().any(same) {
                        found.push(e);
                    }
                }
                found.sort_by_key(|e| e.span().map_or(0, |s| s.start));
                return Err(found.into_iter().map(|e| parse_error(&doc, e)).collect());
            }
        };
        let base_dir = match file.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Validator {
            file: file.to_path_buf(),
            base_dir,
            doc,
            env: env::Env::new(&env),
            credentials: RefCell::default(),
        }
        .validate(raw)
    }

    pub fn connector(&self, name: &str) -> Option<&Connector> {
        crate::connector::find(&self.connectors, name)
    }
}

/// One load's checks: where the file is (for messages and relative paths), its text's
/// positions, the environment `${VAR}` reads, and the credentials met on the way (masked
/// wherever text leaves the gateway).
struct Validator<'a> {
    file: PathBuf,
    base_dir: PathBuf,
    doc: Document<'a>,
    env: env::Env<'a>,
    credentials: RefCell<Vec<String>>,
}

impl Validator<'_> {
    /// Expands every `${VAR}`, builds every section, then checks what spans sections. Every
    /// section (and every connector and source) is checked even when another fails, so one
    /// load names every problem; a part whose `${VAR}` does not expand is not checked further.
    fn validate(self, mut raw: RawConfig) -> Result<Config, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut keep = |result: Result<(), ConfigError>| match result {
            Ok(()) => true,
            Err(e) => {
                errors.push(e);
                false
            }
        };
        let server_expanded = keep(self.expand_server(&mut raw.server));
        let storage_expanded = keep(self.expand("storage.url", &mut raw.storage.url));
        // Every source is expanded (and its problem named), not only up to the first failure.
        let sources_expanded: Vec<bool> = raw
            .sources
            .iter_mut()
            .enumerate()
            .map(|(i, s)| keep(self.expand_source(&format!("sources[{i}]"), s)))
            .collect();
        let sources_expanded = sources_expanded.into_iter().all(|ok| ok);
        // A connector whose values do not expand is left out of the checks that follow.
        let mut expanded_connectors = Vec::new();
        for (i, mut connector) in raw.connectors.into_iter().enumerate() {
            if keep(self.expand_connector(&format!("connectors[{i}]"), &mut connector)) {
                expanded_connectors.push((i, connector));
            }
        }
        let server = server_expanded
            .then(|| self.server(raw.server))
            .and_then(|r| r.map_err(|e| errors.push(e)).ok());
        let storage = storage_expanded
            .then(|| self.storage(&raw.storage))
            .and_then(|r| r.map_err(|e| errors.push(e)).ok());
        let delivery = self
            .delivery(&raw.delivery)
            .map_err(|e| errors.push(e))
            .ok();
        let tenant_rules: Vec<_> = raw
            .tenants
            .iter_mut()
            .map(tenants::RawTenant::take_assignment)
            .collect();
        let tenants = self.tenants(raw.tenants).map_err(|e| errors.push(e)).ok();
        let sources = match (&server, &tenants, sources_expanded) {
            (Some(server), Some(tenants), true) => self
                .sources(raw.sources, server, tenants)
                .map_err(|e| errors.push(e))
                .ok(),
            _ => None,
        };
        let tenant_names: Arc<BTreeMap<i64, String>> = Arc::new(
            tenants
                .iter()
                .flatten()
                .map(|t| (t.account_id, t.name.clone()))
                .collect(),
        );
        let connectors = self.connectors_indexed(
            expanded_connectors,
            tenants.as_deref().unwrap_or_default(),
            &tenant_names,
            &mut errors,
        );
        let partials_dir = self
            .partials_dir(raw.templates)
            .map_err(|e| errors.push(e))
            .ok();
        let reload = self.reload(&raw.reload).map_err(|e| errors.push(e)).ok();
        let retention = self
            .retention(&raw.retention)
            .map_err(|e| errors.push(e))
            .ok();
        let console = self.console(&raw.console).map_err(|e| errors.push(e)).ok();
        let threat_intel = tenants.as_deref().and_then(|tenants| {
            self.threat_intel(raw.threat_intel, tenants)
                .map_err(|e| errors.push(e))
                .ok()
        });
        let (
            Some(threat_intel),
            Some(server),
            Some(storage),
            Some(delivery),
            Some(sources),
            Some(tenants),
            Some(partials_dir),
            Some(reload),
            Some(retention),
            Some(console),
            true,
        ) = (
            threat_intel,
            server,
            storage,
            delivery,
            sources,
            tenants,
            partials_dir,
            reload,
            retention,
            console,
            errors.is_empty(),
        )
        else {
            return Err(errors);
        };
        self.callback_tokens_stand_alone(&server, &sources, &connectors)
            .map_err(|e| vec![e])?;
        let other_tokens: Vec<&str> = server
            .admin_token
            .as_deref()
            .into_iter()
            .chain(sources.iter().filter_map(|s| s.api_key.as_deref()))
            .chain(sources.iter().filter_map(|s| s.callback_token.as_deref()))
            .chain(
                connectors
                    .iter()
                    .filter_map(|c| c.callback_token.as_deref()),
            )
            .collect();
        let admin_tokens = self
            .admin_tokens(raw.admin_tokens, &tenants, &other_tokens)
            .map_err(|e| vec![e])?;
        let connector_names: Vec<String> = connectors.iter().map(|c| c.name.clone()).collect();
        let assignment = Arc::new(
            self.assignment(raw.assignment, tenant_rules, &tenants, &connector_names)
                .map_err(|e| vec![e])?,
        );
        let mut connectors = connectors;
        let sla = self
            .sla(raw.sla, &connectors, &tenants)
            .map_err(|e| vec![e])?
            .map(Arc::new);
        for c in &mut connectors {
            c.assignment = assignment.clone();
            c.sla = sla
                .as_ref()
                .filter(|s| s.connectors.contains(&c.name))
                .cloned();
        }
        let alerts = self.alerts(&raw.alerts, &connectors).map_err(|e| vec![e])?;
        // Credentials are secrets even when written in the file itself.
        let mut secret_values = self.env.into_expanded();
        secret_values.extend(self.credentials.into_inner());
        secret_values.extend(server.admin_token.iter().cloned());
        secret_values.extend(admin_tokens.iter().map(|t| t.token.clone()));
        secret_values.extend(sources.iter().filter_map(|s| s.api_key.clone()));
        secret_values.extend(sources.iter().filter_map(|s| s.callback_token.clone()));
        secret_values.extend(connectors.iter().filter_map(|c| c.callback_token.clone()));
        Ok(Config {
            file: self.file,
            base_dir: self.base_dir,
            server,
            storage,
            delivery,
            sources,
            tenants,
            tenant_names,
            admin_tokens,
            connectors,
            partials_dir,
            secrets: Secrets::new(secret_values),
            reload,
            alerts,
            retention,
            threat_intel: Arc::new(threat_intel),
            sla,
            console,
        })
    }

    /// A callback token is a credential of its own: it may not open ingest or the admin API.
    fn callback_tokens_stand_alone(
        &self,
        server: &ServerConfig,
        sources: &[SourceConfig],
        connectors: &[Connector],
    ) -> Result<(), ConfigError> {
        let keys_and_admin: Vec<&str> = sources
            .iter()
            .filter_map(|s| s.api_key.as_deref())
            .chain(server.admin_token.as_deref())
            .collect();
        let callback_tokens = sources
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                s.callback_token
                    .as_deref()
                    .map(|t| (format!("sources[{i}].callback_token"), t))
            })
            .chain(connectors.iter().enumerate().filter_map(|(i, c)| {
                c.callback_token
                    .as_deref()
                    .map(|t| (format!("connectors[{i}].callback_token"), t))
            }));
        for (field, token) in callback_tokens {
            if keys_and_admin.contains(&token) {
                return Err(
                    self.invalid(field, "must differ from every api_key and the admin_token")
                );
            }
        }
        Ok(())
    }

    /// Every `${VAR}` the file holds, expanded in place before anything is checked, so an
    /// unset variable is reported whatever else is wrong.
    fn invalid(&self, field: impl Into<String>, message: impl Into<String>) -> ConfigError {
        let field = field.into();
        ConfigError::Invalid {
            line: self.doc.line_of(&field),
            file: self.file.clone(),
            field,
            message: message.into(),
        }
    }

    /// A name that prefixes keys and labels (a connector's, a tenant's, a list's): letters,
    /// digits, `-`, `_` or `.`, so that no separator or space can make one name another's
    /// prefix.
    fn plain_name(&self, field: String, name: &str) -> Result<(), ConfigError> {
        let plain = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
        if name.is_empty() || !name.chars().all(plain) {
            return Err(self.invalid(
                field,
                format!("{name:?}: use letters, digits, '-', '_' or '.'"),
            ));
        }
        Ok(())
    }

    /// Expands the `${VAR}`s of `value`, the value of `field`, in place.
    fn expand(&self, field: &str, value: &mut String) -> Result<(), ConfigError> {
        *value = self
            .env
            .expand(value)
            .map_err(|e| self.env_error(field, e))?;
        Ok(())
    }

    /// As [`Validator::expand`], when `field` is written at all.
    fn expand_option(&self, field: &str, value: &mut Option<String>) -> Result<(), ConfigError> {
        match value {
            Some(v) => self.expand(field, v),
            None => Ok(()),
        }
    }

    /// As [`Validator::expand`], for a value then compiled as a template (URLs, header values,
    /// vars): a value from the environment must not smuggle template code into it.
    fn expand_template(&self, field: &str, value: &mut String) -> Result<(), ConfigError> {
        *value = self
            .env
            .expand_template(value)
            .map_err(|e| self.env_error(field, e))?;
        Ok(())
    }

    fn env_error(&self, field: &str, reason: EnvError) -> ConfigError {
        ConfigError::Env {
            file: self.file.clone(),
            position: self.doc.value_position(field),
            field: field.to_string(),
            reason,
        }
    }

    /// Remembers a credential written in the file, to mask it wherever it could show.
    fn credential(&self, value: &str) {
        self.credentials.borrow_mut().push(value.to_string());
    }

    /// A path the config names: `${VAR}` expanded (a path is not a secret: it is not masked),
    /// then resolved against the config file's folder.
    fn resolve(&self, field: &str, path: &str) -> Result<PathBuf, ConfigError> {
        let expanded = self
            .env
            .expand_path(path)
            .map_err(|e| self.env_error(field, e))?;
        Ok(self.relative_to_config(&expanded))
    }

    /// `path` (already expanded) against the config file's folder, unless absolute.
    fn relative_to_config(&self, path: &str) -> PathBuf {
        let p = Path::new(path);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    /// A path from the config, resolved, that must name a file.
    fn existing_file(&self, field: &str, path: &str) -> Result<PathBuf, ConfigError> {
        let resolved = self.resolve(field, path)?;
        if !resolved.is_file() {
            return Err(self.invalid(field, format!("{} does not exist", resolved.display())));
        }
        Ok(resolved)
    }

    /// A secret kept in a file: its content, without the final line break.
    fn read_secret_file(&self, field: &str, file: &str) -> Result<String, ConfigError> {
        let path = self.resolve(field, file)?;
        let text = std::fs::read_to_string(&path)
            .map_err(|e| self.invalid(field, format!("cannot read {}: {e}", path.display())))?;
        Ok(text.trim_end_matches(['\r', '\n']).to_string())
    }

    fn check_token(&self, field: &str, token: &str) -> Result<(), ConfigError> {
        if token.len() < 16 {
            return Err(self.invalid(field, "must be at least 16 characters"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connector::Target;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn unset_variable_names_line_and_variable() {
        let text = "[server]\nlisten = \"127.0.0.1:1\"\nadmin_token = \"${NOPE_TOKEN}\"\n[storage]\nurl = \"sqlite://x.db\"\n";
        let err = Config::from_toml(text, Path::new("gw.toml"), env(&[])).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("gw.toml"), "{msg}");
        assert!(msg.contains("line 3"), "{msg}");
        assert!(msg.contains("server.admin_token"), "{msg}");
        assert!(msg.contains("NOPE_TOKEN is not set"), "{msg}");
    }

    #[test]
    fn values_from_the_environment_are_secrets() {
        let text = "[server]\nlisten = \"${LISTEN}\"\n[storage]\nurl = \"sqlite://x.db\"\n";
        let config = Config::from_toml(
            text,
            Path::new("gw.toml"),
            env(&[("LISTEN", "127.0.0.1:4321")]),
        )
        .unwrap();
        assert_eq!(config.server.listen, "127.0.0.1:4321");
        assert_eq!(config.secrets.mask("at 127.0.0.1:4321"), "at ********");
    }

    #[test]
    fn storage_urls_choose_the_backend_and_its_settings_are_checked() {
        let load = |storage: &str| {
            let text = format!("[storage]\n{storage}\n");
            Config::from_toml(&text, Path::new("gw.toml"), env(&[("PW", "pg-secret-123")]))
        };
        let pg = load(
            "url = \"postgres://gw:${PW}@db:5432/igw\"\npool_size = 4\nstatement_timeout = \"2s\"",
        )
        .unwrap();
        let StorageConfig::Postgres(settings) = &pg.storage else {
            panic!("not PostgreSQL: {:?}", pg.storage);
        };
        assert_eq!(settings.pool_size, 4);
        assert_eq!(
            settings.statement_timeout,
            std::time::Duration::from_secs(2)
        );
        assert_eq!(settings.connect_timeout, std::time::Duration::from_secs(5));
        // The password came from the environment: masked wherever text leaves the process.
        assert!(!pg.secrets.mask(&settings.url).contains("pg-secret-123"));
        assert!(!format!("{settings:?}").contains("pg-secret-123"));
        for (storage, field) in [
            (
                "url = \"sqlite://x.db\"\npool_size = 4",
                "storage.pool_size",
            ),
            (
                "url = \"postgres://db/igw\"\npool_size = 0",
                "storage.pool_size",
            ),
            (
                "url = \"postgres://db/igw\"\nconnect_timeout = \"0s\"",
                "storage.connect_timeout",
            ),
            ("url = \"postgres://gw:hunter22@db:x/igw\"", "storage.url"),
            ("url = \"mysql://db/igw\"", "storage.url"),
        ] {
            let msg = load(storage).unwrap_err().to_string();
            assert!(msg.contains(field), "{storage}: {msg}");
            assert!(!msg.contains("hunter22"), "{msg}");
        }
    }

    #[test]
    fn type_errors_name_line_column_and_field() {
        let text = "[storage]\nurl = \"sqlite://x.db\"\n[[connectors]]\nname = \"a\"\n[connectors.retry]\nmax_attempts = \"x\"\n";
        let msg = Config::from_toml(text, Path::new("gw.toml"), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with("gw.toml: line 6, column 16: connectors[0].retry.max_attempts: "),
            "{msg}"
        );
    }

    #[test]
    fn an_error_in_a_field_left_out_names_its_table() {
        let text = "[storage]\nurl = \"sqlite://x.db\"\n[[connectors]]\nname = \"a\"\nkind = \"http\"\nurl = \"https://x.example.com/\"\ntemplate = \"t.json.hbs\"\n[[connectors]]\nname = \"a\"\n";
        let msg = Config::from_toml(text, Path::new("gw.toml"), env(&[]))
            .unwrap_err()
            .to_string();
        // `template` is missing from the second connector: its header is named.
        assert!(
            msg.starts_with("gw.toml: line 8, column 1: connectors[1]: "),
            "{msg}"
        );
    }

    #[test]
    fn debug_output_never_shows_credentials() {
        let dir = std::env::temp_dir().join(format!("igw-debug-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("t.json.hbs"), "{}").unwrap();
        let text = "[server]\nadmin_token = \"admin-secret-0123456789\"\n[storage]\nurl = \"sqlite://x.db\"\n[[sources]]\nname = \"s\"\napi_key = \"source-secret-0123456789\"\ncallback_token = \"callback-secret-0123456\"\n[[connectors]]\nname = \"c\"\nkind = \"http\"\nurl = \"https://x.example.com/\"\ntemplate = \"t.json.hbs\"\ncallback_token = \"conn-callback-secret-123\"\nvars = { key = \"var-secret-0123456789\" }\n[connectors.headers]\nAuthorization = \"Bearer header-secret-0123456789\"\n[connectors.signing]\ngithub_secret = \"github-secret-0123456789\"\n";
        let config = Config::from_toml(text, &dir.join("gw.toml"), |_| None).unwrap();
        let shown = format!("{config:?}");
        for secret in [
            "admin-secret",
            "source-secret",
            "callback-secret",
            "conn-callback",
            "var-secret",
            "header-secret",
            "github-secret",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn the_body_budget_defaults_to_64_bodies_and_holds_at_least_one() {
        let load = |server: &str| {
            let text = format!("[server]\n{server}\n[storage]\nurl = \"sqlite://x.db\"\n");
            Config::from_toml(&text, Path::new("gw.toml"), |_| None)
        };
        let config = load("max_body_bytes = 2048").unwrap();
        assert_eq!(config.server.max_body_bytes_in_flight, 64 * 2048);
        let config = load("max_body_bytes = 2048\nmax_body_bytes_in_flight = 4096").unwrap();
        assert_eq!(config.server.max_body_bytes_in_flight, 4096);
        let msg = load("max_body_bytes = 8192\nmax_body_bytes_in_flight = 4096")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("line 3: server.max_body_bytes_in_flight"),
            "{msg}"
        );
    }

    /// A CA-signed client certificate and its key as PEM, and another key.
    fn client_certificate() -> (String, String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["gateway".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let other = rcgen::KeyPair::generate().unwrap();
        (cert.pem(), key.serialize_pem(), other.serialize_pem())
    }

    #[test]
    fn oauth2_and_client_certificates_are_checked_at_load_naming_the_field() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("t.json.hbs"), "{}").unwrap();
        let (cert, key, other_key) = client_certificate();
        for (name, text) in [
            ("client.pem", cert.as_str()),
            ("client.key", key.as_str()),
            ("other.key", other_key.as_str()),
            ("secret", "file-secret-0123456789\n"),
        ] {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let load = |connector: &str| {
            let text = format!(
                "[storage]\nurl = \"sqlite://x.db\"\n[[connectors]]\nname = \"c\"\n{connector}\n"
            );
            Config::from_toml(
                &text,
                &dir.path().join("gw.toml"),
                env(&[("SN_SECRET", "env-secret-0123456789")]),
            )
        };
        let http = "kind = \"http\"\nurl = \"https://t.example.com/\"\ntemplate = \"t.json.hbs\"";
        let oauth = "[connectors.oauth2]\ntoken_url = \"https://t.example.com/oauth_token.do\"\nclient_id = \"gateway\"";
        let config = load(&format!(
            "{http}\ntls_client_cert = \"client.pem\"\ntls_client_key = \"client.key\"\n{oauth}\nclient_secret = \"${{SN_SECRET}}\"\nscopes = [\"useraccount\"]\nauth_style = \"body\"\nextra = {{ resource = \"r\" }}"
        ))
        .unwrap();
        let Target::Http(target) = &config.connectors[0].target else {
            panic!("not http");
        };
        let oauth2 = target.oauth2.as_ref().unwrap();
        assert_eq!(oauth2.client_secret, "env-secret-0123456789");
        assert_eq!(oauth2.auth_style, crate::connector::OAuth2AuthStyle::Body);
        assert!(target.egress.client_identity.is_some());
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("env-secret") && !shown.contains("PRIVATE KEY"),
            "{shown}"
        );
        // A secret written in the file, or read from one, is masked as one from the environment.
        for (secret, value) in [
            (
                "client_secret = \"file-written-0123456789\"",
                "file-written-0123456789",
            ),
            ("client_secret_file = \"secret\"", "file-secret-0123456789"),
        ] {
            let config = load(&format!("{http}\n{oauth}\n{secret}")).unwrap();
            assert!(!config.secrets.mask(&format!("x {value}")).contains(value));
        }
        let smtp = "kind = \"smtp\"\nsmtp_url = \"smtp://127.0.0.1:25\"\nfrom = \"a@example.com\"\nto = [\"b@example.com\"]\nsubject = \"s\"\ntemplate = \"t.json.hbs\"";
        let with_secret = format!("{oauth}\nclient_secret = \"${{SN_SECRET}}\"");
        for (connector, field, says) in [
            (
                format!(
                    "{http}\n[connectors.headers]\nAuthorization = \"Bearer x-0123456789\"\n{with_secret}"
                ),
                "connectors[0].headers.Authorization",
                "keep one of the two credentials",
            ),
            (
                format!(
                    "{http}\n[connectors.requests.updated]\nheaders = {{ authorization = \"Basic eA==\" }}\n{with_secret}"
                ),
                "connectors[0].requests.updated.headers.authorization",
                "keep one of the two credentials",
            ),
            (
                format!(
                    "{http}\n{}",
                    with_secret.replace(
                        "https://t.example.com/oauth_token.do",
                        "ftp://t.example.com/"
                    )
                ),
                "connectors[0].oauth2.token_url",
                "http or https",
            ),
            (
                format!(
                    "{http}\nallow_hosts = [\"t.example.com\"]\n{}",
                    with_secret.replace("t.example.com/oauth", "login.example.com/oauth")
                ),
                "connectors[0].oauth2.token_url",
                "not in allow_hosts",
            ),
            (
                format!("{http}\n{}", with_secret.replace("\"gateway\"", "\" \"")),
                "connectors[0].oauth2.client_id",
                "non-empty",
            ),
            (
                format!("{http}\n{oauth}"),
                "connectors[0].oauth2.client_secret",
                "is required",
            ),
            (
                format!("{http}\n{with_secret}\nclient_secret_file = \"secret\""),
                "connectors[0].oauth2.client_secret_file",
                "not both",
            ),
            (
                format!("{http}\n{oauth}\nclient_secret_file = \"missing\""),
                "connectors[0].oauth2.client_secret_file",
                "cannot read",
            ),
            (
                format!("{http}\n{with_secret}\nscopes = [\"a\", \"b c\"]"),
                "connectors[0].oauth2.scopes[1]",
                "one word",
            ),
            (
                format!("{http}\n{with_secret}\nauth_style = \"digest\""),
                "connectors[0].oauth2.auth_style",
                "\"basic\"",
            ),
            (
                format!("{http}\n{with_secret}\nextra = {{ grant_type = \"password\" }}"),
                "connectors[0].oauth2.extra.grant_type",
                "the token request sets",
            ),
            (
                format!("{smtp}\n{with_secret}"),
                "connectors[0].oauth2",
                "kind = \"http\"",
            ),
            (
                format!(
                    "{smtp}\ntls_client_cert = \"client.pem\"\ntls_client_key = \"client.key\""
                ),
                "connectors[0].tls_client_cert",
                "kind = \"http\"",
            ),
            (
                format!("{http}\ntls_client_cert = \"client.pem\""),
                "connectors[0].tls_client_key",
                "is required with tls_client_cert",
            ),
            (
                format!("{http}\ntls_client_key = \"client.key\""),
                "connectors[0].tls_client_cert",
                "is required with tls_client_key",
            ),
            (
                format!("{http}\ntls_client_cert = \"nope.pem\"\ntls_client_key = \"client.key\""),
                "connectors[0].tls_client_cert",
                "cannot read",
            ),
            (
                format!(
                    "{http}\ntls_client_cert = \"client.key\"\ntls_client_key = \"client.key\""
                ),
                "connectors[0].tls_client_cert",
                "holds no certificate",
            ),
            (
                format!(
                    "{http}\ntls_client_cert = \"client.pem\"\ntls_client_key = \"client.pem\""
                ),
                "connectors[0].tls_client_key",
                "holds no private key",
            ),
            (
                format!("{http}\ntls_client_cert = \"client.pem\"\ntls_client_key = \"other.key\""),
                "connectors[0].tls_client_key",
                "is not the key of the certificate",
            ),
        ] {
            let msg = load(&connector).unwrap_err().to_string();
            assert!(
                msg.contains(field) && msg.contains(says),
                "{connector}\n→ {msg}"
            );
            assert!(!msg.contains("env-secret"), "{msg}");
        }
    }

    #[test]
    fn lookups_and_mail_headers_are_checked_at_load() {
        let dir = std::env::temp_dir().join(format!("igw-lookup-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("t.json.hbs"), "{}").unwrap();
        let load = |connector: &str| {
            let text = format!(
                "[storage]\nurl = \"sqlite://x.db\"\n[[connectors]]\nname = \"c\"\n{connector}\n"
            );
            Config::from_toml(&text, &dir.join("gw.toml"), |_| None)
        };
        let http = "kind = \"http\"\nurl = \"https://t.example.com/\"\ntemplate = \"t.json.hbs\"";
        let lookup = "[connectors.lookup]\nurl = \"https://t.example.com/find?ref={{ticket.ref}}\"\nfound_id = \"/items/0/id\"";
        let config = load(&format!("{http}\nticket_id = \"/id\"\n{lookup}")).unwrap();
        let found = config.connectors[0].lookup().unwrap();
        assert_eq!(found.method, reqwest::Method::GET);
        assert!(config.connectors[0].settles_unknown_creates());
        let smtp = "kind = \"smtp\"\nsmtp_url = \"smtp://127.0.0.1:25\"\nfrom = \"a@example.com\"\nto = [\"b@example.com\"]\nsubject = \"s\"\ntemplate = \"t.json.hbs\"";
        for (connector, field) in [
            (
                format!("{http}\n{lookup}"),
                "connectors[0].lookup: needs ticket_id",
            ),
            (
                format!("{http}\nticket_id = \"/id\"\nidempotent_create = true\n{lookup}"),
                "connectors[0].idempotent_create",
            ),
            (
                format!(
                    "{http}\nticket_id = \"/id\"\n{}",
                    lookup.replace("/items/0/id", "items")
                ),
                "connectors[0].lookup.found_id",
            ),
            (
                format!("{smtp}\n[connectors.headers]\nX-Priority = \"1\""),
                "connectors[0].headers.X-Priority",
            ),
            (
                format!("{smtp}\n[connectors.requests.updated]\nheaders = {{ X-Thread = \"x\" }}"),
                "connectors[0].requests.updated.headers.X-Thread",
            ),
        ] {
            let msg = load(&connector).unwrap_err().to_string();
            assert!(msg.contains(field), "{connector}: {msg}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn retention_has_defaults_and_its_values_are_checked() {
        use std::time::Duration;
        let load = |retention: &str| {
            let text = format!("[storage]\nurl = \"sqlite://x.db\"\n{retention}");
            Config::from_toml_all(&text, Path::new("gw.toml"), env(&[]))
        };
        let defaults = load("").unwrap().retention;
        assert_eq!(
            defaults.delivered_after,
            Duration::from_secs(30 * 24 * 3600)
        );
        assert_eq!(defaults.dead_after, None);
        assert_eq!(defaults.interval, Duration::from_secs(60));
        assert_eq!(defaults.batch, 100);
        let set = load("[retention]\ndelivered_after = \"7d\"\ndead_after = \"90d\"\ninterval = \"5m\"\nbatch = 100\n")
            .unwrap()
            .retention;
        assert_eq!(set.delivered_after, Duration::from_secs(7 * 24 * 3600));
        assert_eq!(set.dead_after, Some(Duration::from_secs(90 * 24 * 3600)));
        assert_eq!(set.interval, Duration::from_secs(300));
        assert_eq!(set.batch, 100);
        let errors = load("[retention]\ndelivered_after = \"0s\"\nbatch = 0\n").unwrap_err();
        let messages: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert!(
            messages
                .iter()
                .any(|m| m.contains("retention.delivered_after") && m.contains("line 4")),
            "{messages:?}"
        );
        let unknown = load("[retention]\nkeep = \"1d\"\n").unwrap_err();
        assert!(unknown[0].to_string().contains("keep"), "{unknown:?}");
    }
}
