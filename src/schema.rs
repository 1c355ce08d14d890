//! Schema: the incident JSON Schema (`schemas/incident.schema.json`), compiled once.
//!
//! The schema ships inside the binary so the gateway validates the same way wherever it runs.

use serde_json::Value;

/// The schema text as shipped.
pub const INCIDENT_SCHEMA: &str = include_str!("../schemas/incident.schema.json");

/// One reason an incident was refused, located by JSON pointer into the request body.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Violation {
    pub pointer: String,
    pub detail: String,
}

#[derive(Debug, thiserror::Error)]
#[error("the incident schema does not compile: {0}")]
pub struct SchemaError(pub(crate) String);

pub struct IncidentSchema {
    validator: jsonschema::Validator,
}

/// Messages quote the offending value; a hostile value can be megabytes long.
const MAX_DETAIL_CHARS: usize = 300;
/// An incident with thousands of errors gets the first ones; the rest are counted.
pub const MAX_VIOLATIONS: usize = 50;

impl IncidentSchema {
    pub fn shipped() -> Result<IncidentSchema, SchemaError> {
        let schema: Value =
            serde_json::from_str(INCIDENT_SCHEMA).map_err(|e| SchemaError(e.to_string()))?;
        let validator =
            jsonschema::draft202012::new(&schema).map_err(|e| SchemaError(e.to_string()))?;
        Ok(IncidentSchema { validator })
    }

    /// Every violation in `incident`, with pointers prefixed by `prefix` (e.g. `/3` for the
    /// fourth incident of a batch). Capped at [`MAX_VIOLATIONS`].
    pub fn violations(&self, incident: &Value, prefix: &str) -> Vec<Violation> {
        self.validator
            .iter_errors(incident)
            .take(MAX_VIOLATIONS)
            .map(|e| {
                let detail = match e.kind() {
                    jsonschema::error::ValidationErrorKind::Pattern { pattern } => {
                        match case_insensitive_choices(pattern) {
                            Some(choices) => format!(
                                "{} is not one of {} (any case)",
                                truncate_chars(&e.instance().to_string(), 80),
                                choices.join(", ")
                            ),
                            None => e.to_string(),
                        }
                    }
                    _ => e.to_string(),
                };
                Violation {
                    pointer: format!("{prefix}{}", e.instance_path().as_str()),
                    detail: truncate_chars(&detail, MAX_DETAIL_CHARS),
                }
            })
            .collect()
    }
}

/// The schema writes case-insensitive enums portably, as `^([Hh][Ii][Gg][Hh]|[Ll][Oo][Ww])$`;
/// this reads such a pattern back as its choices (`high`, `low`) for a message people can read.
fn case_insensitive_choices(pattern: &str) -> Option<Vec<String>> {
    let inner = pattern.strip_prefix("^(")?.strip_suffix(")$")?;
    inner
        .split('|')
        .map(|alt| {
            let mut out = String::new();
            let mut rest = alt;
            while !rest.is_empty() {
                if let Some(r) = rest.strip_prefix('[') {
                    let mut chars = r.chars();
                    let (upper, lower) = (chars.next()?, chars.next()?);
                    if chars.next()? != ']' || upper.to_ascii_lowercase() != lower {
                        return None;
                    }
                    out.push(lower);
                    rest = chars.as_str();
                } else {
                    let ch = rest.chars().next()?;
                    if ch.is_ascii_alphanumeric() || " _-:".contains(ch) {
                        out.push(ch);
                        rest = &rest[ch.len_utf8()..];
                    } else {
                        return None;
                    }
                }
            }
            Some(out)
        })
        .collect()
}

pub fn truncate_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_string(),
        Some((cut, _)) => format!("{}…", &text[..cut]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Value {
        serde_json::from_str(include_str!("../examples/incidents/sample.json")).unwrap()
    }

    #[test]
    fn accepts_the_seed_sample_with_its_quirks() {
        let s = IncidentSchema::shipped().unwrap();
        assert_eq!(s.violations(&sample(), ""), vec![]);
    }

    #[test]
    fn accepts_unknown_fields_and_mixed_case_ratings() {
        let s = IncidentSchema::shipped().unwrap();
        let mut inc = sample();
        inc["brand_new_field"] = json!({"a": [1, 2]});
        inc["incident_threat_rating"] = json!("MEDIUM");
        inc["defaultThreatRating"] = json!("High");
        assert_eq!(s.violations(&inc, ""), vec![]);
    }

    #[test]
    fn reports_each_violation_with_its_pointer() {
        let s = IncidentSchema::shipped().unwrap();
        let mut inc = sample();
        inc.as_object_mut().unwrap().remove("incidentId");
        inc["attacker"]["port"] = json!("abc");
        inc["incident_threat_rating"] = json!("Severe");
        let v = s.violations(&inc, "/2");
        let pointers: Vec<&str> = v.iter().map(|v| v.pointer.as_str()).collect();
        assert!(pointers.contains(&"/2"), "{v:?}");
        assert!(pointers.contains(&"/2/attacker/port"), "{v:?}");
        assert!(pointers.contains(&"/2/incident_threat_rating"), "{v:?}");
    }

    #[test]
    fn case_insensitive_enums_are_explained_by_their_choices() {
        let s = IncidentSchema::shipped().unwrap();
        let v = s.violations(
            &json!({"incidentId": "x", "incident_threat_rating": "Severe"}),
            "",
        );
        assert_eq!(
            v[0].detail,
            "\"Severe\" is not one of critical, high, medium, low, info (any case)"
        );
        assert_eq!(
            case_insensitive_choices("^([Ll][Oo][Gg] [Mm]gmt)$"),
            Some(vec!["log mgmt".into()])
        );
        assert_eq!(case_insensitive_choices("^[a-z]+$"), None);
    }

    #[test]
    fn long_values_are_truncated_in_details() {
        let s = IncidentSchema::shipped().unwrap();
        let v = s.violations(
            &json!({"incidentId": 1, "sources": "x".repeat(100_000)}),
            "",
        );
        assert!(
            v.iter()
                .all(|v| v.detail.chars().count() <= MAX_DETAIL_CHARS + 1)
        );
    }
}
