//! The bodies the tool posts: each incident file read once, split around its `incidentId`, so
//! a request's body is two copies and a number (the generator must not steal the CPU it
//! measures), and the receiver can tell which request a delivery belongs to.

use std::path::Path;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use serde_json::Value;

/// Digits of the sequence number in an id.
const SEQ_DIGITS: usize = 12;

/// The ids of one tool run: `LOAD-<tag>-<seq>`, the tag telling this run's ids from any other.
#[derive(Clone)]
pub struct Ids {
    marker: Vec<u8>,
}

impl Ids {
    pub fn new() -> Ids {
        // Unique enough per run: only ever compared with ids this run made.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let tag = nanos ^ std::process::id().rotate_left(16);
        Ids {
            marker: format!("LOAD-{tag:08X}-").into_bytes(),
        }
    }

    pub fn id(&self, seq: u64) -> String {
        format!(
            "{}{seq:0width$}",
            String::from_utf8_lossy(&self.marker),
            width = SEQ_DIGITS
        )
    }

    /// The sequence number of the first of this run's ids in `body`, if any.
    pub fn find(&self, body: &[u8]) -> Option<u64> {
        let at = find(body, &self.marker)? + self.marker.len();
        let digits = body.get(at..at + SEQ_DIGITS)?;
        digits.iter().try_fold(0u64, |n, &d| {
            d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0'))
        })
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let first = *needle.first()?;
    let mut from = 0;
    while let Some(i) = hay.get(from..)?.iter().position(|&b| b == first) {
        let at = from + i;
        if hay.get(at..at + needle.len()) == Some(needle) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// One incident file, as written, with the top-level `incidentId` value cut out.
pub struct Payload {
    head: Vec<u8>,
    tail: Vec<u8>,
}

impl Payload {
    pub fn read(path: &Path, ids: &Ids) -> anyhow::Result<Payload> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let value: Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let Some(id) = value.get("incidentId").and_then(Value::as_str) else {
            bail!("{}: no top-level string incidentId", path.display());
        };
        // Splice into the text as written (not re-serialized): the body keeps its size and
        // layout. The key may appear nested too; check the splice hit the top-level one.
        let quoted = serde_json::to_string(id)?;
        let mut from = 0;
        while let Some(i) = text.get(from..).and_then(|t| t.find("\"incidentId\"")) {
            let key_end = from + i + "\"incidentId\"".len();
            let rest = &text[key_end..];
            let after_colon = rest.trim_start().strip_prefix(':').map(str::trim_start);
            if let Some(value_text) = after_colon
                && value_text.starts_with(&quoted)
            {
                let start = text.len() - value_text.len();
                let payload = Payload {
                    head: text.as_bytes()[..start].to_vec(),
                    tail: text.as_bytes()[start + quoted.len()..].to_vec(),
                };
                let probe = ids.id(0);
                let check: Value = serde_json::from_slice(&payload.body(&probe))?;
                if check.get("incidentId").and_then(Value::as_str) == Some(probe.as_str()) {
                    return Ok(payload);
                }
            }
            from = key_end;
        }
        bail!(
            "{}: could not find the top-level incidentId in the text",
            path.display()
        )
    }

    /// The body with `id` (a plain id: letters, digits, `-`) as its incidentId.
    pub fn body(&self, id: &str) -> Bytes {
        let mut b = Vec::with_capacity(self.head.len() + id.len() + 2 + self.tail.len());
        b.extend_from_slice(&self.head);
        b.push(b'"');
        b.extend_from_slice(id.as_bytes());
        b.push(b'"');
        b.extend_from_slice(&self.tail);
        Bytes::from(b)
    }

    pub fn len(&self) -> usize {
        self.head.len() + self.tail.len() + 2 + 5 + 8 + 1 + SEQ_DIGITS
    }
}

/// The incidents a run posts, in turn (request `seq` gets file `seq % n`).
pub struct Payloads {
    pub ids: Ids,
    files: Vec<Payload>,
}

impl Payloads {
    pub fn read(paths: &[std::path::PathBuf], ids: Ids) -> anyhow::Result<Payloads> {
        if paths.is_empty() {
            bail!("no incident files to post");
        }
        let files = paths
            .iter()
            .map(|p| Payload::read(p, &ids))
            .collect::<anyhow::Result<_>>()?;
        Ok(Payloads { ids, files })
    }

    pub fn body(&self, seq: u64) -> Bytes {
        let file = &self.files[(seq % self.files.len() as u64) as usize];
        file.body(&self.ids.id(seq))
    }

    /// A JSON array of `n` incidents, from `seq` on (to fill a backlog quickly).
    pub fn batch(&self, seq: u64, n: u64) -> Bytes {
        let mut b = Vec::with_capacity(n as usize * (self.mean_len() + 2) + 2);
        b.push(b'[');
        for i in 0..n {
            if i > 0 {
                b.push(b',');
            }
            b.extend_from_slice(&self.body(seq + i));
        }
        b.push(b']');
        Bytes::from(b)
    }

    pub fn mean_len(&self) -> usize {
        self.files.iter().map(Payload::len).sum::<usize>() / self.files.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_a_body() {
        let ids = Ids::new();
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/incidents/sample.json");
        let p = Payload::read(&path, &ids).expect("sample splits");
        let body = p.body(&ids.id(42));
        assert_eq!(ids.find(&body), Some(42));
        assert_eq!(body.len(), p.len());
        assert_eq!(Ids::new().find(b"LOAD-00000000-000000000001"), None);
    }
}
