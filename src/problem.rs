//! Problem details (RFC 9457): every API error is `application/problem+json`, and a
//! validation error lists each violation with a JSON pointer into the request body.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::schema::Violation;

/// What a URI fragment cannot hold as is (RFC 3986 §3.5), so a JSON pointer to a key such as
/// `"deployment,"` or `"a b"` is written as RFC 6901 §6 says.
const FRAGMENT: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    #[serde(serialize_with = "type_uri")]
    pub slug: &'static str,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<PointedError>,
    #[serde(skip)]
    pub retry_after: Option<u64>,
    /// Extension members (RFC 9457 §3.2), e.g. `status_change_time` on a 409.
    #[serde(flatten, skip_serializing_if = "no_extra")]
    pub extra: Box<serde_json::Map<String, serde_json::Value>>,
}

/// One violation, located as RFC 9457's example does: a JSON pointer as a URI fragment.
#[derive(Debug, Clone, Serialize)]
pub struct PointedError {
    pub pointer: String,
    pub detail: String,
}

/// The problem type: a URI naming the kind of problem (RFC 9457 §3.1.1).
fn type_uri<S: serde::Serializer>(slug: &&'static str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("https://incident-gateway.dev/problems/{slug}"))
}

fn no_extra(extra: &serde_json::Map<String, serde_json::Value>) -> bool {
    extra.is_empty()
}

impl Problem {
    pub fn new(
        status: StatusCode,
        slug: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Problem {
        Problem {
            slug,
            title,
            status: status.as_u16(),
            detail: detail.into(),
            errors: vec![],
            retry_after: None,
            extra: Box::default(),
        }
    }

    pub fn with_violations(mut self, violations: Vec<Violation>) -> Problem {
        self.errors = violations
            .into_iter()
            .map(|v| PointedError {
                pointer: format!(
                    "#{}",
                    percent_encoding::utf8_percent_encode(&v.pointer, FRAGMENT)
                ),
                detail: v.detail,
            })
            .collect();
        self
    }

    /// A body that is not JSON: 400, saying where the parser stopped.
    pub fn malformed_json(e: serde_json::Error) -> Problem {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "malformed-json",
            "Malformed JSON",
            format!("the body is not valid JSON: {e}"),
        )
    }

    pub fn unauthorized() -> Problem {
        Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unauthorized",
            "a valid credential is required",
        )
    }

    pub fn not_found(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }

    /// The store failed: the cause is logged (never shown to the caller), the answer says
    /// what did not happen.
    pub fn store_failed(error: &dyn std::fmt::Display, detail: &'static str) -> Problem {
        tracing::error!(%error, detail, "store error");
        Problem::unavailable(detail)
    }

    pub fn unavailable(detail: impl Into<String>) -> Problem {
        let mut p = Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Service unavailable",
            detail,
        );
        p.retry_after = Some(1);
        p
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if self.status == 401 {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            headers.insert(header::RETRY_AFTER, v);
        }
        response
    }
}
