//! Incidents as ingest parsed them, handed to their deliveries' first attempts: a delivery
//! leased soon after its incident was accepted (the common case when receivers keep up)
//! renders from the parsed document instead of parsing the stored body again. Bounded: what
//! is not taken in time is dropped, and that attempt parses the stored body as retries do.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde_json::Value;

/// Deliveries whose incident is kept at most (each a parsed incident, shared by the
/// deliveries of one version): a fraction of a second of ingest at full rate.
pub const FRESH_DELIVERIES: usize = 512;

/// Parsed incidents by the delivery ids they were queued under.
#[derive(Default)]
pub struct Fresh {
    kept: Mutex<Kept>,
}

#[derive(Default)]
struct Kept {
    by_delivery: HashMap<String, Arc<Value>>,
    /// Oldest first, to drop beyond [`FRESH_DELIVERIES`].
    order: VecDeque<String>,
}

impl Fresh {
    /// Keeps `incident` (the document its version's stored body was written from) for each
    /// of `deliveries`.
    pub fn offer(&self, deliveries: impl IntoIterator<Item = String>, incident: Arc<Value>) {
        let Ok(mut kept) = self.kept.lock() else {
            return;
        };
        for id in deliveries {
            kept.order.push_back(id.clone());
            kept.by_delivery.insert(id, incident.clone());
        }
        while kept.order.len() > FRESH_DELIVERIES {
            if let Some(oldest) = kept.order.pop_front() {
                kept.by_delivery.remove(&oldest);
            }
        }
    }

    /// The parsed incident of `delivery_id`, once: later attempts read the store.
    pub fn take(&self, delivery_id: &str) -> Option<Arc<Value>> {
        // The id stays in `order` until it is pushed out; removing it there would cost a scan.
        self.kept.lock().ok()?.by_delivery.remove(delivery_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_delivery_takes_its_incident_once_and_the_oldest_are_dropped() {
        let fresh = Fresh::default();
        let incident = Arc::new(serde_json::json!({"incidentId": "A"}));
        fresh.offer(["d1".to_string(), "d2".to_string()], incident.clone());
        assert_eq!(fresh.take("d1"), Some(incident.clone()));
        assert_eq!(fresh.take("d1"), None);
        for i in 0..FRESH_DELIVERIES {
            fresh.offer([format!("later-{i}")], Arc::new(Value::Null));
        }
        assert_eq!(fresh.take("d2"), None, "pushed out by newer ones");
        assert!(fresh.take("later-0").is_some());
        let kept = fresh.kept.lock().unwrap();
        assert!(kept.order.len() <= FRESH_DELIVERIES);
        assert!(kept.by_delivery.len() < FRESH_DELIVERIES);
    }

    /// What ingest hands over is what the stored body (the document written back out) reads
    /// as, numbers and key order included: an attempt renders the same from either.
    #[test]
    fn the_parsed_document_equals_its_stored_body_read_back() {
        let sample = include_str!("../../examples/incidents/sample.json");
        let odd = r#"{"incidentId":"n","a":1e308,"b":-0.0,"c":0.1,"d":18446744073709551615,
            "e":-9223372036854775808,"f":123456789012345678901234567890,"g":"\u00e9\ud83d\ude00",
            "z":1,"y":{"b":2,"a":1},"dup":1,"dup":2}"#;
        for body in [sample, odd] {
            let parsed: Value = serde_json::from_str(body).unwrap();
            let stored = parsed.to_string();
            let read_back: Value = serde_json::from_str(&stored).unwrap();
            assert_eq!(read_back, parsed);
            assert_eq!(read_back.to_string(), stored, "same text, same key order");
        }
    }
}
