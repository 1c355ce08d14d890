//! Lookup: before a `created` whose outcome is unknown is sent again (its attempt was cut off
//! mid-send, timed out, or lost its connection after the request was written), ask the target
//! whether it already holds the ticket — by `ticket.ref`, which the `created` request stored
//! there. A ticket found is the one that `created` opened: the delivery is done without a
//! second send. None found: the `created` is sent. The lookup failed: try again later, still
//! unsure.

use crate::connector::Lookup;
use crate::ticket;

use super::http::{SendResult, Verdict, classify};

/// What a lookup answered.
#[derive(Debug, Clone, PartialEq)]
pub enum Looked {
    /// The target holds the ticket: its id (and link).
    Found { id: String, url: Option<String> },
    /// It holds none for the key: the `created` may be sent.
    NoneFound,
    /// No answer that settles it; the verdict says whether to try again.
    Failed { verdict: Verdict },
}

/// What a lookup was asked for: whether a `created` whose outcome is unknown opened its
/// ticket, or the number a ticketing system gave a mailed ticket (a follow-up waits for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookingFor {
    UnknownCreate,
    MailedTicketNumber,
}

impl Looked {
    /// The line the attempt record keeps (the `lookup` of an attempt).
    pub fn summary(&self, sent: &SendResult, looking_for: LookingFor) -> String {
        let status = sent
            .status
            .map(|s| format!("HTTP {s}"))
            .unwrap_or_else(|| "no answer".into());
        let (found, none) = match looking_for {
            LookingFor::UnknownCreate => (
                "the created request is not sent again",
                "the created request is sent",
            ),
            LookingFor::MailedTicketNumber => (
                "this mail carries its number",
                "waiting for the ticket's number",
            ),
        };
        match self {
            Looked::Found { id, .. } => format!("found ticket {id} ({status}); {found}"),
            Looked::NoneFound => format!("no ticket found ({status}); {none}"),
            Looked::Failed { .. } => match &sent.failure {
                Some(failure) => format!("failed ({status}): {failure}"),
                None => format!("failed ({status})"),
            },
        }
    }
}

/// Reads what the lookup's answer says: a 2xx with an id at `found_id` found the ticket; a
/// 2xx without one found none; anything else settles nothing.
pub fn read_answer(lookup: &Lookup, sent: &SendResult) -> Looked {
    let verdict = classify(sent);
    if verdict != Verdict::Delivered {
        return Looked::Failed { verdict };
    }
    let body = sent.response_prefix.as_deref().unwrap_or("");
    let Ok(doc) = serde_json::from_str::<serde_json::Value>(body) else {
        // A search that answers 2xx with something unreadable may have found the ticket:
        // never treat that as "none" (a second ticket), try again.
        return Looked::Failed {
            verdict: Verdict::Retry { retry_after: None },
        };
    };
    match ticket::text_at(&doc, &lookup.found_id) {
        Some(id) => Looked::Found {
            id,
            url: lookup
                .found_url
                .as_deref()
                .and_then(|p| ticket::text_at(&doc, p)),
        },
        None => Looked::NoneFound,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;
    use crate::deliver::http::SendFailure;

    fn lookup() -> Lookup {
        Lookup {
            method: reqwest::Method::GET,
            url: "http://x/".into(),
            headers: BTreeMap::new(),
            found_id: "/items/0/id".into(),
            found_url: Some("/items/0/_url".into()),
        }
    }

    fn answer(status: Option<u16>, body: &str) -> SendResult {
        SendResult {
            status,
            retry_after: None,
            response_prefix: Some(body.into()),
            failure: status
                .is_none()
                .then(|| SendFailure::Network("timed out".into())),
            latency: Duration::ZERO,
        }
    }

    #[test]
    fn an_id_at_the_pointer_is_the_ticket_found() {
        let body = r#"{"count":1,"items":[{"id":"7","_url":"http://rt/ticket/7"}]}"#;
        assert_eq!(
            read_answer(&lookup(), &answer(Some(200), body)),
            Looked::Found {
                id: "7".into(),
                url: Some("http://rt/ticket/7".into())
            }
        );
        // Numbers are ids too (Redmine's issue ids).
        let numeric = r#"{"items":[{"id":42}]}"#;
        assert!(matches!(
            read_answer(&lookup(), &answer(Some(200), numeric)),
            Looked::Found { id, url: None } if id == "42"
        ));
    }

    #[test]
    fn an_empty_search_finds_none_and_anything_unsure_settles_nothing() {
        assert_eq!(
            read_answer(&lookup(), &answer(Some(200), r#"{"count":0,"items":[]}"#)),
            Looked::NoneFound
        );
        // A failed search is not an empty one: it is tried again, never read as "none".
        for unsure in [
            answer(Some(503), "{}"),
            answer(None, ""),
            answer(Some(200), "<html>login</html>"),
        ] {
            assert!(
                matches!(
                    read_answer(&lookup(), &unsure),
                    Looked::Failed {
                        verdict: Verdict::Retry { .. }
                    }
                ),
                "{unsure:?}"
            );
        }
        // A refusal (bad credentials, a wrong URL) will not change by itself.
        assert!(matches!(
            read_answer(&lookup(), &answer(Some(401), "{}")),
            Looked::Failed {
                verdict: Verdict::Dead { .. }
            }
        ));
    }
}
