//! `[server]`: the listeners, their limits and TLS, and the admin token, built into the
//! listener's own [`ServerConfig`].

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, Validator};
use crate::server::{ServerConfig, TlsFiles};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    #[serde(default = "default_listen")]
    listen: String,
    admin_token: Option<String>,
    #[serde(default = "default_max_body")]
    max_body_bytes: usize,
    /// Default: 64 × `max_body_bytes`.
    max_body_bytes_in_flight: Option<usize>,
    #[serde(default = "default_max_batch")]
    max_batch: usize,
    #[serde(default = "default_grace", with = "humantime_serde")]
    shutdown_grace: Duration,
    #[serde(default = "default_max_connections")]
    max_connections: usize,
    #[serde(default = "default_max_connections_per_client")]
    max_connections_per_client: usize,
    /// Default: 16, or an eighth of `max_connections` when that is less.
    admin_reserved_connections: Option<usize>,
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    idle_timeout: Duration,
    #[serde(default = "default_read_timeout", with = "humantime_serde")]
    header_read_timeout: Duration,
    #[serde(default = "default_read_timeout", with = "humantime_serde")]
    body_read_timeout: Duration,
    #[serde(default = "default_json_depth")]
    max_json_depth: usize,
    #[serde(default = "default_string_chars")]
    max_string_chars: usize,
    admin_listen: Option<String>,
    admin_token_file: Option<String>,
    tls: Option<RawTls>,
    admin_tls: Option<RawAdminTls>,
}

/// `admin_tls = { cert, key }`, or `false` for plain HTTP (`true`: the `tls` files, the
/// default when `tls` is set).
#[derive(Deserialize)]
#[serde(untagged)]
enum RawAdminTls {
    Enabled(bool),
    Files(RawTls),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: String,
    key: String,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: default_listen(),
            admin_token: None,
            max_body_bytes: default_max_body(),
            max_body_bytes_in_flight: None,
            max_batch: default_max_batch(),
            shutdown_grace: default_grace(),
            max_connections: default_max_connections(),
            max_connections_per_client: default_max_connections_per_client(),
            admin_reserved_connections: None,
            idle_timeout: default_idle_timeout(),
            header_read_timeout: default_read_timeout(),
            body_read_timeout: default_read_timeout(),
            max_json_depth: default_json_depth(),
            max_string_chars: default_string_chars(),
            admin_listen: None,
            admin_token_file: None,
            tls: None,
            admin_tls: None,
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_max_body() -> usize {
    1024 * 1024
}
fn default_max_batch() -> usize {
    100
}
fn default_grace() -> Duration {
    Duration::from_secs(10)
}
fn default_max_connections() -> usize {
    1024
}
fn default_max_connections_per_client() -> usize {
    64
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_json_depth() -> usize {
    64
}
fn default_string_chars() -> usize {
    256 * 1024
}

impl Validator<'_> {
    pub(super) fn expand_server(&self, raw: &mut RawServer) -> Result<(), ConfigError> {
        self.expand("server.listen", &mut raw.listen)?;
        self.expand_option("server.admin_token", &mut raw.admin_token)?;
        self.expand_option("server.admin_listen", &mut raw.admin_listen)
    }

    pub(super) fn server(&self, raw: RawServer) -> Result<ServerConfig, ConfigError> {
        let tls = match &raw.tls {
            None => None,
            Some(t) => Some(TlsFiles {
                cert: self.existing_file("server.tls.cert", &t.cert)?,
                key: self.existing_file("server.tls.key", &t.key)?,
            }),
        };
        let admin_tls = self.admin_tls(raw.admin_tls, tls.as_ref(), raw.admin_listen.as_deref())?;
        let admin_reserved_connections = match raw.admin_reserved_connections {
            Some(n) if n >= raw.max_connections => {
                return Err(self.invalid(
                    "server.admin_reserved_connections",
                    "must be less than max_connections",
                ));
            }
            Some(n) => n,
            None => 16.min(raw.max_connections / 8),
        };
        let admin_token = match (&raw.admin_token_file, raw.admin_token) {
            (Some(_), Some(_)) => {
                return Err(self.invalid(
                    "server.admin_token_file",
                    "give admin_token or admin_token_file, not both",
                ));
            }
            (Some(file), None) => Some(self.read_secret_file("server.admin_token_file", file)?),
            (None, token) => token,
        };
        let server = ServerConfig {
            listen: raw.listen,
            admin_token,
            max_body_bytes: raw.max_body_bytes,
            max_body_bytes_in_flight: raw
                .max_body_bytes_in_flight
                .unwrap_or(raw.max_body_bytes.saturating_mul(64)),
            max_batch: raw.max_batch,
            shutdown_grace: raw.shutdown_grace,
            max_connections: raw.max_connections,
            max_connections_per_client: raw.max_connections_per_client,
            admin_reserved_connections,
            idle_timeout: raw.idle_timeout,
            header_read_timeout: raw.header_read_timeout,
            body_read_timeout: raw.body_read_timeout,
            max_json_depth: raw.max_json_depth,
            max_string_chars: raw.max_string_chars,
            admin_listen: raw.admin_listen,
            tls,
            admin_tls,
        };
        self.check(&server)?;
        Ok(server)
    }

    /// The addresses parse, every limit leaves room for the work it bounds, the admin token
    /// is long enough.
    fn check(&self, server: &ServerConfig) -> Result<(), ConfigError> {
        if let Some(a) = &server.admin_listen
            && a.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(self.invalid(
                "server.admin_listen",
                format!("{a:?} is not an address like 127.0.0.1:9091"),
            ));
        }
        if !(4..=128).contains(&server.max_json_depth) {
            // 128 is the JSON parser's own limit.
            return Err(self.invalid("server.max_json_depth", "must be from 4 to 128"));
        }
        if server.max_connections == 0 {
            return Err(self.invalid("server.max_connections", "must be at least 1"));
        }
        if server.max_connections_per_client == 0 {
            return Err(self.invalid("server.max_connections_per_client", "must be at least 1"));
        }
        if server.idle_timeout.is_zero() {
            return Err(self.invalid("server.idle_timeout", "must be more than 0"));
        }
        if server.header_read_timeout.is_zero() || server.body_read_timeout.is_zero() {
            return Err(self.invalid(
                "server.header_read_timeout",
                "read timeouts must be more than 0",
            ));
        }
        if server.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(self.invalid(
                "server.listen",
                format!("{:?} is not an address like 127.0.0.1:8080", server.listen),
            ));
        }
        if matches!(&server.admin_token, Some(t) if t.len() < 16) {
            return Err(self.invalid(
                "server.admin_token",
                "must be at least 16 characters (or left out to disable the admin API)",
            ));
        }
        if server.max_body_bytes < 1024 {
            return Err(self.invalid("server.max_body_bytes", "must be at least 1024"));
        }
        if server.max_body_bytes_in_flight < server.max_body_bytes {
            return Err(self.invalid(
                "server.max_body_bytes_in_flight",
                "must be at least server.max_body_bytes (or no body that size could be read)",
            ));
        }
        if server.max_batch == 0 {
            return Err(self.invalid("server.max_batch", "must be at least 1"));
        }
        Ok(())
    }

    /// The admin listener's TLS: its own files, else those of `[server.tls]`, unless
    /// `admin_tls = false` (plain HTTP, allowed only on a loopback address).
    fn admin_tls(
        &self,
        raw: Option<RawAdminTls>,
        tls: Option<&TlsFiles>,
        admin_listen: Option<&str>,
    ) -> Result<Option<TlsFiles>, ConfigError> {
        const FIELD: &str = "server.admin_tls";
        let Some(listen) = admin_listen else {
            return match raw {
                None => Ok(None),
                Some(_) => Err(self.invalid(
                    FIELD,
                    "needs admin_listen; on the shared listener the admin API uses [server.tls]",
                )),
            };
        };
        match raw {
            None => Ok(tls.cloned()),
            Some(RawAdminTls::Enabled(true)) => match tls {
                Some(files) => Ok(Some(files.clone())),
                None => Err(self.invalid(
                    FIELD,
                    "true reuses [server.tls], which is not set; give { cert, key }",
                )),
            },
            Some(RawAdminTls::Enabled(false)) => {
                // An address that does not parse is reported under admin_listen.
                let loopback = listen
                    .parse::<std::net::SocketAddr>()
                    .ok()
                    .is_none_or(|a| a.ip().is_loopback());
                if loopback {
                    Ok(None)
                } else {
                    Err(self.invalid(
                        FIELD,
                        "false (plain HTTP) is allowed only when admin_listen is a loopback address: the admin token would cross the network in clear",
                    ))
                }
            }
            Some(RawAdminTls::Files(t)) => Ok(Some(TlsFiles {
                cert: self.existing_file("server.admin_tls.cert", &t.cert)?,
                key: self.existing_file("server.admin_tls.key", &t.key)?,
            })),
        }
    }
}
