//! The API contract: `schemas/openapi.yaml`, shipped inside the binary, parsed once and served
//! as JSON at `GET /openapi.json`, beside the incident schema it refers to
//! (`GET /incident.schema.json`, so its relative `$ref` resolves against a running gateway as
//! it does beside the file). Neither holds a secret: every listener serves both, unauthenticated.

use std::sync::LazyLock;

use axum::body::Bytes;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use crate::problem::Problem;

/// The document as written.
pub const OPENAPI_YAML: &str = include_str!("../schemas/openapi.yaml");

/// The shipped document does not parse (a build with a broken `schemas/openapi.yaml`).
#[derive(Debug, Clone, thiserror::Error)]
#[error("schemas/openapi.yaml: {0}")]
pub struct OpenApiError(String);

/// The document as JSON text, converted once.
static DOCUMENT: LazyLock<Result<Bytes, OpenApiError>> = LazyLock::new(|| {
    let value: serde_json::Value =
        serde_saphyr::from_str(OPENAPI_YAML).map_err(|e| OpenApiError(e.to_string()))?;
    serde_json::to_vec(&value)
        .map(Bytes::from)
        .map_err(|e| OpenApiError(e.to_string()))
});

/// The document as JSON; the gateway checks it at start, so the handler never meets an error.
pub fn document() -> Result<Bytes, OpenApiError> {
    DOCUMENT.clone()
}

/// `GET /openapi.json`.
pub async fn openapi_json() -> Response {
    match document() {
        Ok(json) => json_response(json, "application/json"),
        Err(e) => {
            tracing::error!(error = %e, "the API document does not parse");
            Problem::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "no-api-document",
                "No API document",
                "the API document shipped with this gateway does not parse",
            )
            .into_response()
        }
    }
}

/// `GET /incident.schema.json`: the schema `POST /v1/incidents` validates against.
pub async fn incident_schema() -> Response {
    json_response(
        Bytes::from_static(crate::schema::INCIDENT_SCHEMA.as_bytes()),
        "application/schema+json",
    )
}

fn json_response(body: Bytes, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
