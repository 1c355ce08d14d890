//! Query strings: on the endpoints that take one, every parameter known to the endpoint and
//! given once, or a 400 problem naming it (a misspelt filter must not quietly list
//! everything), and the shared kinds of value — RFC 3339 times, page sizes, opaque cursors;
//! on the other `/v1` endpoints, any parameter is a 400 ([`NoQuery`]).

use std::collections::BTreeMap;

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;

use crate::problem::Problem;

/// The page size when none is asked for.
pub const DEFAULT_LIMIT: usize = 100;
/// The largest page size.
pub const MAX_LIMIT: usize = 1000;

/// A query string's parameters, each known and given once.
#[derive(Debug, Default)]
pub struct Params(BTreeMap<String, String>);

/// A 400 about `parameter`, which the problem names (`"parameter": …`).
pub fn bad(parameter: &str, detail: impl Into<String>) -> Problem {
    let mut p = Problem::new(
        StatusCode::BAD_REQUEST,
        "bad-query",
        "Bad query parameter",
        detail,
    );
    p.extra.insert(
        "parameter".into(),
        serde_json::Value::String(parameter.to_string()),
    );
    p
}

impl Params {
    /// Reads `raw` (the part after `?`, percent-decoded here), refusing a parameter not in
    /// `known`, one given twice, and a value holding NUL (no store can match it).
    pub fn parse(raw: Option<&str>, known: &[&str]) -> Result<Params, Problem> {
        let mut params = BTreeMap::new();
        for (name, value) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            if !known.contains(&name.as_ref()) {
                let takes = match known {
                    [] => "no query parameters".to_string(),
                    _ => known.join(", "),
                };
                return Err(bad(
                    &name,
                    format!("unknown query parameter {name:?}; this endpoint takes {takes}"),
                ));
            }
            if value.contains('\0') {
                return Err(bad(&name, format!("{name}: a value may not hold NUL")));
            }
            if params
                .insert(name.to_string(), value.into_owned())
                .is_some()
            {
                return Err(bad(&name, format!("{name} is given more than once")));
            }
        }
        Ok(Params(params))
    }

    /// The value of `name`, if given.
    pub fn text(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }

    /// The value of `name`, which must be one of `allowed`.
    pub fn one_of(&self, name: &str, allowed: &[&str]) -> Result<Option<String>, Problem> {
        match self.0.get(name) {
            Some(v) if !allowed.contains(&v.as_str()) => Err(bad(
                name,
                format!("{name} {v:?}: expected one of {}", allowed.join(", ")),
            )),
            v => Ok(v.cloned()),
        }
    }

    /// An RFC 3339 time, as Unix milliseconds.
    pub fn time_ms(&self, name: &str) -> Result<Option<i64>, Problem> {
        self.0
            .get(name)
            .map(|v| {
                chrono::DateTime::parse_from_rfc3339(v)
                    .map(|t| t.timestamp_millis())
                    .map_err(|e| {
                        bad(
                            name,
                            format!(
                                "{name} {v:?} is not an RFC 3339 time (e.g. 2026-01-31T09:00:00Z): {e}"
                            ),
                        )
                    })
            })
            .transpose()
    }

    /// `limit`: 1 to [`MAX_LIMIT`], [`DEFAULT_LIMIT`] when absent.
    pub fn limit(&self) -> Result<usize, Problem> {
        match self.0.get("limit") {
            None => Ok(DEFAULT_LIMIT),
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| {
                    bad(
                        "limit",
                        format!("limit {v:?}: expected a whole number from 1 to {MAX_LIMIT}"),
                    )
                }),
        }
    }

    /// `cursor`, read by `decode` (each list writes and reads its own).
    pub fn cursor<K>(&self, decode: impl FnOnce(&str) -> Option<K>) -> Result<Option<K>, Problem> {
        let Some(v) = self.0.get("cursor") else {
            return Ok(None);
        };
        decode(v).map(Some).ok_or_else(|| {
            bad(
                "cursor",
                "cursor is not one this endpoint gave: pass next_cursor as it came",
            )
        })
    }
}

/// Taken by the `/v1` endpoints that take no query, after the caller's credential: a
/// parameter is a 400 naming it, as on the lists, so a filter sent to the wrong endpoint is
/// not quietly ignored. (`/healthz`, `/readyz`, `/metrics` and `/openapi.json` ignore a
/// query: probes and scrapers may add one.)
pub struct NoQuery;

impl<S: Send + Sync> FromRequestParts<S> for NoQuery {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<NoQuery, Problem> {
        Params::parse(parts.uri.query(), &[]).map(|_| NoQuery)
    }
}

/// Text as lower-case hex: a cursor part that may hold anything, written so that a cursor
/// needs no escaping in a URL.
pub fn hex(text: &str) -> String {
    hex_bytes(text.as_bytes())
}

/// Bytes as lower-case hex.
pub fn hex_bytes(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// [`hex`] read back (bytes that are not UTF-8 are replaced: such a cursor only positions
/// the page, as any text would).
pub fn unhex(hex: &str) -> Option<String> {
    if !hex.len().is_multiple_of(2) || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KNOWN: &[&str] = &["status", "limit", "since", "cursor"];

    #[test]
    fn an_unknown_parameter_is_named() {
        let p = Params::parse(Some("status=dead&incident=A"), KNOWN).unwrap_err();
        assert_eq!(p.status, 400);
        assert_eq!(p.extra["parameter"], "incident");
        assert!(p.detail.contains("\"incident\""), "{}", p.detail);
    }

    #[test]
    fn an_endpoint_without_parameters_names_the_one_given() {
        let p = Params::parse(Some("verbose=1"), &[]).unwrap_err();
        assert_eq!(p.extra["parameter"], "verbose");
        assert!(
            p.detail.contains("takes no query parameters"),
            "{}",
            p.detail
        );
        // An empty query (`?`, `?&`) holds no parameter.
        assert!(Params::parse(Some(""), &[]).is_ok());
        assert!(Params::parse(Some("&"), &[]).is_ok());
    }

    #[test]
    fn a_parameter_given_twice_or_holding_nul_is_refused() {
        let p = Params::parse(Some("status=dead&status=pending"), KNOWN).unwrap_err();
        assert_eq!(p.extra["parameter"], "status");
        let p = Params::parse(Some("status=a%00b"), KNOWN).unwrap_err();
        assert_eq!(p.extra["parameter"], "status");
    }

    #[test]
    fn values_are_checked_by_kind() {
        let ok = Params::parse(Some("limit=1000&since=2026-01-31T09%3A00%3A00Z"), KNOWN).unwrap();
        assert_eq!(ok.limit().unwrap(), 1000);
        assert_eq!(ok.time_ms("since").unwrap(), Some(1_769_850_000_000));
        assert_eq!(Params::parse(None, KNOWN).unwrap().limit().unwrap(), 100);
        for bad_limit in ["0", "1001", "-1", "ten", ""] {
            let q = format!("limit={bad_limit}");
            let p = Params::parse(Some(&q), KNOWN).unwrap().limit().unwrap_err();
            assert_eq!(p.extra["parameter"], "limit");
        }
        let since = Params::parse(Some("since=yesterday"), KNOWN).unwrap();
        assert_eq!(
            since.time_ms("since").unwrap_err().extra["parameter"],
            "since"
        );
        let status = Params::parse(Some("status=lost"), KNOWN).unwrap();
        assert!(status.one_of("status", &["dead"]).is_err());
    }

    #[test]
    fn a_cursor_is_read_by_its_list_and_a_forged_one_is_refused() {
        let params = Params::parse(Some("cursor=d5.7"), KNOWN).unwrap();
        assert_eq!(
            params
                .cursor(|t| t.strip_prefix('d').map(str::to_string))
                .unwrap(),
            Some("5.7".to_string())
        );
        let forged = Params::parse(Some("cursor=x"), KNOWN).unwrap();
        assert_eq!(
            forged
                .cursor(|t| t.strip_prefix('d').map(str::len))
                .unwrap_err()
                .extra["parameter"],
            "cursor"
        );
        assert_eq!(unhex(&hex("id.with ✓")).as_deref(), Some("id.with ✓"));
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
    }
}
