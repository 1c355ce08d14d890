//! Send: one HTTP request with a timeout, and what came back, classified.

use std::time::{Duration, Instant};

use crate::render::RenderedRequest;

use super::retry::parse_retry_after;

/// How much of a response body an attempt record keeps.
pub const RESPONSE_PREFIX_BYTES: usize = 2048;

/// How much of a `created` response is read to find the ticket id in it.
pub const TICKET_RESPONSE_BYTES: usize = 1024 * 1024;

/// How long past the connector's timeout an attempt may take before it is cut off whatever
/// it is doing.
const SEND_TIMEOUT_GRACE: Duration = Duration::from_millis(250);

/// What one send produced.
#[derive(Debug, Clone)]
pub struct SendResult {
    pub status: Option<u16>,
    pub retry_after: Option<Duration>,
    pub response_prefix: Option<String>,
    /// What went wrong, if anything, described without the URL.
    pub failure: Option<SendFailure>,
    pub latency: Duration,
}

/// Why a send did not simply succeed.
#[derive(Debug, Clone, PartialEq)]
pub enum SendFailure {
    /// Where it would go is refused (egress policy): not sent, and no retry helps.
    Refused(String),
    /// The request cannot even be built (a header value HTTP forbids): no retry helps.
    Unsendable(String),
    /// A network error or timeout, or an SMTP server's refusal.
    Network(String),
    /// The connection could not be made: the request was never written, so the target
    /// cannot have acted on it.
    Unreached(String),
    /// The status arrived, then reading the body failed: the status stands.
    BodyCut(String),
    /// The target refused and said why, in its own words ([`with_target_reason`]):
    /// "HTTP 422: Project cannot be blank".
    Said(String),
    /// No credential to send with (the connector's OAuth2 token could not be fetched):
    /// nothing was sent to the target; retried.
    NoCredential(String),
    /// The target answered 401 to an OAuth2 token it may no longer take (revoked, expired
    /// early): the token is dropped and the next attempt sends a new one; retried.
    StaleToken(String),
}

impl std::fmt::Display for SendFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendFailure::Refused(why) => write!(f, "refused: {why}"),
            SendFailure::Unsendable(why) => write!(f, "cannot be sent: {why}"),
            SendFailure::Network(why) | SendFailure::Unreached(why) => f.write_str(why),
            SendFailure::BodyCut(why) => write!(f, "reading response body: {why}"),
            SendFailure::Said(why)
            | SendFailure::NoCredential(why)
            | SendFailure::StaleToken(why) => f.write_str(why),
        }
    }
}

impl SendFailure {
    /// The same failure with its text passed through `f` (to mask it).
    pub fn map_text(self, f: impl FnOnce(String) -> String) -> SendFailure {
        match self {
            SendFailure::Refused(t) => SendFailure::Refused(f(t)),
            SendFailure::Unsendable(t) => SendFailure::Unsendable(f(t)),
            SendFailure::Network(t) => SendFailure::Network(f(t)),
            SendFailure::Unreached(t) => SendFailure::Unreached(f(t)),
            SendFailure::BodyCut(t) => SendFailure::BodyCut(f(t)),
            SendFailure::Said(t) => SendFailure::Said(f(t)),
            SendFailure::NoCredential(t) => SendFailure::NoCredential(f(t)),
            SendFailure::StaleToken(t) => SendFailure::StaleToken(f(t)),
        }
    }
}

/// What a send means for the delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Delivered,
    Retry { retry_after: Option<Duration> },
    Dead { reason: String },
}

impl SendResult {
    /// A send that ended in `failure` before any answer came.
    pub fn failed(failure: SendFailure, latency: Duration) -> SendResult {
        SendResult {
            status: None,
            retry_after: None,
            response_prefix: None,
            failure: Some(failure),
            latency,
        }
    }

    /// Whether the target may have acted on the request without the sender learning its
    /// answer: the request may have been written before a timeout or a broken connection,
    /// or the target failed (5xx) perhaps after it stored the request.
    pub fn may_have_arrived(&self) -> bool {
        match self.status {
            Some(status) => (500..600).contains(&status),
            None => matches!(self.failure, Some(SendFailure::Network(_))),
        }
    }

    /// What the attempt says of the target's health, for its circuit: `Some(false)` when it
    /// is down or failing (no answer, 5xx, 429, 408), `Some(true)` when it answered anything
    /// else, `None` when it tells nothing (nothing reached the target).
    pub fn target_up(&self) -> Option<bool> {
        match self.status {
            Some(status) => Some(!((500..600).contains(&status) || status == 429 || status == 408)),
            None => match self.failure {
                Some(SendFailure::Network(_) | SendFailure::Unreached(_)) => Some(false),
                _ => None,
            },
        }
    }

    /// Whether egress policy refused the request.
    pub fn was_refused(&self) -> bool {
        matches!(self.failure, Some(SendFailure::Refused(_)))
    }
}

/// Sends `request` with the connector's client, keeping at most `keep_bytes` of the answer;
/// `bearer`, the connector's OAuth2 token, goes in `Authorization` (marked sensitive).
/// `timeout` bounds the whole attempt — resolve, connect, TLS, request, and the response
/// body as far as it is read — so the attempt always ends well inside its lease.
pub async fn send(
    client: &reqwest::Client,
    request: &RenderedRequest,
    bearer: Option<&str>,
    timeout: Duration,
    keep_bytes: usize,
) -> SendResult {
    let started = Instant::now();
    // reqwest's own timeout covers the same span and keeps a status that arrived before a body
    // cut short; this one is the guarantee, a moment later, whatever happens inside.
    let bound = timeout.saturating_add(SEND_TIMEOUT_GRACE);
    let exchange = async {
        let mut builder = client
            .request(request.method.clone(), &request.url)
            .timeout(timeout)
            .body(request.body.clone());
        for (name, value) in &request.headers {
            builder = builder.header(name, value);
        }
        if let Some(token) = bearer {
            builder = builder.bearer_auth(token);
        }
        match builder.send().await {
            Err(e) => match super::egress::refusal(&e) {
                // The connector's resolver refused every address the name resolved to.
                Some(refused) => {
                    SendResult::failed(SendFailure::Refused(refused.0.clone()), started.elapsed())
                }
                None if e.is_builder() => {
                    SendResult::failed(SendFailure::Unsendable(describe(&e)), started.elapsed())
                }
                None if e.is_connect() => {
                    SendResult::failed(SendFailure::Unreached(describe(&e)), started.elapsed())
                }
                None => SendResult::failed(SendFailure::Network(describe(&e)), started.elapsed()),
            },
            Ok(mut response) => {
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
                let mut prefix = Vec::new();
                let mut failure = None;
                // Read past the recorded 2 KiB so a secret straddling the cut is masked whole first.
                while prefix.len() < keep_bytes {
                    match response.chunk().await {
                        Ok(Some(chunk)) => prefix.extend_from_slice(&chunk),
                        Ok(None) => break,
                        Err(e) => {
                            // The status already arrived; a body cut short does not change it.
                            failure = Some(SendFailure::BodyCut(describe(&e)));
                            break;
                        }
                    }
                }
                SendResult {
                    status: Some(status),
                    retry_after,
                    response_prefix: Some(String::from_utf8_lossy(&prefix).into_owned()),
                    failure,
                    latency: started.elapsed(),
                }
            }
        }
    };
    match tokio::time::timeout(bound, exchange).await {
        Ok(result) => result,
        Err(_) => SendResult::failed(
            SendFailure::Network(format!(
                "timed out: the attempt took longer than the connector's timeout ({})",
                humantime::format_duration(timeout)
            )),
            started.elapsed(),
        ),
    }
}

/// The error and its causes, without the URL (which may carry a token).
pub(super) fn describe(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "connection failed".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}

/// At most `max` bytes of `text`, never splitting a character.
pub fn utf8_prefix(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text[..cut].to_string()
}

/// 2xx delivered; network errors, 408, 425, 429, 5xx and a 401 to a stale OAuth2 token may
/// get better; any other status will not.
pub fn classify(result: &SendResult) -> Verdict {
    match result.status {
        None => match &result.failure {
            Some(refused @ SendFailure::Refused(_)) => Verdict::Dead {
                reason: format!("not sent: {refused}"),
            },
            Some(SendFailure::Unsendable(why)) => Verdict::Dead {
                reason: format!("the request cannot be sent: {why}"),
            },
            _ => Verdict::Retry { retry_after: None },
        },
        Some(s) if (200..300).contains(&s) => Verdict::Delivered,
        // A token the target may no longer take: the next attempt sends a new one.
        Some(_) if matches!(result.failure, Some(SendFailure::StaleToken(_))) => {
            Verdict::Retry { retry_after: None }
        }
        Some(s) if s == 408 || s == 425 || s == 429 || (500..600).contains(&s) => Verdict::Retry {
            retry_after: result.retry_after,
        },
        Some(s) => Verdict::Dead {
            reason: match &result.failure {
                Some(SendFailure::Said(why)) => format!("{why} (it will not succeed on retry)"),
                _ => format!(
                    "HTTP {s}: the receiver refused the request; it will not succeed on retry"
                ),
            },
        },
    }
}

/// The longest target reason kept, in characters.
const TARGET_REASON_CHARS: usize = 300;

/// The largest error body searched for a reason (parsing is on the async runtime's thread).
const TARGET_REASON_BODY_BYTES: usize = 64 * 1024;

/// An error answer with the target's own reason in it (at one of the connector's
/// `error_message` pointers) says so as its failure, so the attempt's error and the
/// delivery's `last_error` read "HTTP 422: Project cannot be blank", not only the status.
pub fn with_target_reason(mut sent: SendResult, pointers: &[String]) -> SendResult {
    let (Some(status), None) = (sent.status, &sent.failure) else {
        return sent;
    };
    if (200..300).contains(&status) || pointers.is_empty() {
        return sent;
    }
    if let Some(reason) = sent
        .response_prefix
        .as_deref()
        .and_then(|body| target_reason(body, pointers))
    {
        sent.failure = Some(SendFailure::Said(format!("HTTP {status}: {reason}")));
    }
    sent
}

/// What the target says at `pointers` in a JSON body: strings as they are, lists and objects
/// flattened ("field: message"), joined with "; ", cut to [`TARGET_REASON_CHARS`].
pub fn target_reason(body: &str, pointers: &[String]) -> Option<String> {
    if body.len() > TARGET_REASON_BODY_BYTES {
        return None;
    }
    let doc: serde_json::Value = serde_json::from_str(body).ok()?;
    let mut parts = Vec::new();
    for pointer in pointers {
        if let Some(found) = doc.pointer(pointer) {
            flatten(found, None, 0, &mut parts);
        }
    }
    let text = parts.join("; ");
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    Some(match text.char_indices().nth(TARGET_REASON_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    })
}

/// The texts in `value` (bounded depth), each after its field name when it has one.
fn flatten(value: &serde_json::Value, field: Option<&str>, depth: usize, out: &mut Vec<String>) {
    use serde_json::Value;
    let named = |text: String| match field {
        Some(f) => format!("{f}: {text}"),
        None => text,
    };
    match value {
        Value::Null => {}
        Value::String(s) if s.trim().is_empty() => {}
        Value::String(s) => out.push(named(s.trim().to_string())),
        Value::Bool(_) | Value::Number(_) => out.push(named(value.to_string())),
        _ if depth >= 3 => {}
        Value::Array(items) => items.iter().for_each(|v| flatten(v, field, depth + 1, out)),
        Value::Object(map) => map
            .iter()
            .for_each(|(k, v)| flatten(v, Some(k), depth + 1, out)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(status: Option<u16>) -> SendResult {
        SendResult {
            status,
            retry_after: Some(Duration::from_secs(3)),
            response_prefix: None,
            failure: None,
            latency: Duration::ZERO,
        }
    }

    #[test]
    fn the_targets_reason_is_read_at_its_pointers() {
        let pointers = |ps: &[&str]| ps.iter().map(|p| p.to_string()).collect::<Vec<_>>();
        // Redmine: a list of messages.
        assert_eq!(
            target_reason(
                r#"{"errors":["Project cannot be blank","Subject cannot be blank"]}"#,
                &pointers(&["/errors"])
            )
            .as_deref(),
            Some("Project cannot be blank; Subject cannot be blank")
        );
        // Jira: messages and field errors.
        assert_eq!(
            target_reason(
                r#"{"errorMessages":[],"errors":{"summary":"Field is required"}}"#,
                &pointers(&["/errorMessages", "/errors"])
            )
            .as_deref(),
            Some("summary: Field is required")
        );
        // ServiceNow: one message.
        assert_eq!(
            target_reason(
                r#"{"error":{"message":"Invalid table","detail":null},"status":"failure"}"#,
                &pointers(&["/error/message", "/error/detail"])
            )
            .as_deref(),
            Some("Invalid table")
        );
        // Nothing there, not JSON, or empty: no reason.
        assert_eq!(
            target_reason(r#"{"ok":false}"#, &pointers(&["/errors"])),
            None
        );
        assert_eq!(
            target_reason("<html>502</html>", &pointers(&["/errors"])),
            None
        );
        assert_eq!(
            target_reason(r#"{"errors":[" "]}"#, &pointers(&["/errors"])),
            None
        );
        // Long reasons are cut.
        let long = format!(r#"{{"errors":["{}"]}}"#, "é".repeat(1000));
        let cut = target_reason(&long, &pointers(&["/errors"])).unwrap();
        assert_eq!(cut.chars().count(), TARGET_REASON_CHARS + 1);
    }

    #[test]
    fn a_refusal_with_a_reason_is_dead_with_the_reason_and_a_retry_keeps_it() {
        let answer = |status: u16, body: &str| SendResult {
            status: Some(status),
            retry_after: None,
            response_prefix: Some(body.into()),
            failure: None,
            latency: Duration::ZERO,
        };
        let pointers = vec!["/errors".to_string()];
        let refused = with_target_reason(
            answer(422, r#"{"errors":["Project cannot be blank"]}"#),
            &pointers,
        );
        assert_eq!(
            classify(&refused),
            Verdict::Dead {
                reason: "HTTP 422: Project cannot be blank (it will not succeed on retry)".into()
            }
        );
        let busy = with_target_reason(answer(503, r#"{"errors":["maintenance"]}"#), &pointers);
        assert_eq!(classify(&busy), Verdict::Retry { retry_after: None });
        assert_eq!(
            busy.failure.map(|f| f.to_string()).as_deref(),
            Some("HTTP 503: maintenance")
        );
        // A success, or no pointers: nothing changes.
        let ok = with_target_reason(answer(201, r#"{"errors":["x"]}"#), &pointers);
        assert!(ok.failure.is_none());
        let none = with_target_reason(answer(422, r#"{"errors":["x"]}"#), &[]);
        assert!(none.failure.is_none());
    }

    #[test]
    fn classification() {
        assert_eq!(classify(&result(Some(200))), Verdict::Delivered);
        assert_eq!(classify(&result(Some(204))), Verdict::Delivered);
        for s in [408, 425, 429, 500, 503, 599] {
            assert_eq!(
                classify(&result(Some(s))),
                Verdict::Retry {
                    retry_after: Some(Duration::from_secs(3))
                },
                "{s}"
            );
        }
        assert_eq!(
            classify(&result(None)),
            Verdict::Retry { retry_after: None }
        );
        for s in [301, 400, 401, 404, 409, 422] {
            assert!(
                matches!(classify(&result(Some(s))), Verdict::Dead { .. }),
                "{s}"
            );
        }
    }

    #[test]
    fn prefix_never_splits_a_character() {
        let text = "é".repeat(2000);
        let p = utf8_prefix(&text, 2047);
        assert_eq!(p.len(), 2046);
        assert!(p.starts_with("éé"));
    }
}
