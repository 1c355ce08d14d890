//! Correlation keys read straight off the incident.
//!
//! Ingest renders one key per connector for every incident. Most keys are text and plain
//! references to the incident's own fields (`{{incidentId}}`, `{{incident_class}}/{{asset_host_name}}`);
//! those need no render context at all (a copy of the incident, twice, with the derived fields),
//! only the fields. Any other key template renders as before.

use handlebars::template::{Parameter, TemplateElement};
use handlebars::{Handlebars, JsonRender, Path, PathSeg};
use serde_json::Value;

use super::helpers::HELPER_NAMES;

/// Names a context gives values the incident's own fields do not have (or overrides).
/// (The gateway's facts, [`super::FACTS`], are checked beside these.)
const NOT_FROM_THE_INCIDENT: &[&str] = &[
    "payload",
    "attackers",
    "targets",
    "threat_level",
    "threat_rating",
    "console_url",
    "unique_hosts",
    "unique_signatures",
    "response_code_tally",
    "summary_breakdown",
];

/// Handlebars' own helpers beyond [`HELPER_NAMES`]: a name-only expression calls them.
const MORE_HELPERS: &[&str] = &[
    "log",
    "raw",
    "lookup",
    "len",
    "helperMissing",
    "blockHelperMissing",
    ">",
];

#[derive(Debug, Clone)]
pub enum Part {
    Text(String),
    /// A field of the incident, by its path.
    Field(Vec<String>),
}

/// How a connector's key is rendered.
#[derive(Debug, Clone)]
pub enum KeyPlan {
    /// Text and plain field references only: read off the incident.
    Fields(Vec<Part>),
    /// Anything else: a render of the template with the whole context.
    Template,
}

impl KeyPlan {
    /// The plan of the key template `name` in the plain-text registry `hb` (no escaping).
    pub fn of(hb: &Handlebars<'static>, name: &str) -> KeyPlan {
        let Some(template) = hb.get_template(name) else {
            return KeyPlan::Template;
        };
        let mut parts = Vec::new();
        for element in &template.elements {
            match element {
                TemplateElement::RawString(text) => parts.push(Part::Text(text.clone())),
                TemplateElement::Comment(_) => {}
                TemplateElement::Expression(h) | TemplateElement::HtmlExpression(h)
                    if h.params.is_empty() && h.hash.is_empty() && h.block_param.is_none() =>
                {
                    match field(&h.name) {
                        Some(path) => parts.push(Part::Field(path)),
                        None => return KeyPlan::Template,
                    }
                }
                _ => return KeyPlan::Template,
            }
        }
        KeyPlan::Fields(parts)
    }

    /// The rendered key (untrimmed), or `None` when the template must render it: not a plain
    /// plan, or a field is missing or not where the path leads (the render says why).
    pub fn render(&self, incident: &Value) -> Option<String> {
        let KeyPlan::Fields(parts) = self else {
            return None;
        };
        let mut out = String::new();
        for part in parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Field(path) => out.push_str(&lookup(incident, path)?.render()),
            }
        }
        Some(out)
    }
}

/// A path of plain names whose first is an incident field the context keeps as it is, and not
/// a helper's name.
fn field(name: &Parameter) -> Option<Vec<String>> {
    let Parameter::Path(Path::Relative((segments, _))) = name else {
        return None;
    };
    let names: Vec<String> = segments
        .iter()
        .map(|s| match s {
            PathSeg::Named(n) => Some(n.clone()),
            _ => None,
        })
        .collect::<Option<_>>()?;
    let first = names.first()?;
    let reserved = super::FACTS.contains(&first.as_str())
        || NOT_FROM_THE_INCIDENT.contains(&first.as_str())
        || (names.len() == 1
            && (HELPER_NAMES.contains(&first.as_str()) || MORE_HELPERS.contains(&first.as_str())));
    (!reserved).then_some(names)
}

/// The value at `path`, as Handlebars finds it; `None` where it would report the variable
/// missing (or the index invalid).
fn lookup<'a>(incident: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut at = incident;
    for segment in path {
        at = match at {
            Value::Object(m) => m.get(segment)?,
            Value::Array(a) => a.get(segment.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn plan(key: &str) -> KeyPlan {
        let mut hb = Handlebars::new();
        hb.set_strict_mode(true);
        hb.register_escape_fn(handlebars::no_escape);
        super::super::helpers::register(&mut hb);
        hb.register_template_string("k", key).unwrap();
        KeyPlan::of(&hb, "k")
    }

    #[test]
    fn plain_keys_are_read_off_the_incident_as_handlebars_renders_them() {
        let incident = json!({"incidentId": "I-1", "a": {"b": [10, {"c": true}]}, "n": null,
            "t": "  text  ", "targets": "own field, overridden in the context"});
        for key in [
            "{{incidentId}}",
            " {{a.b.[1].c}}/{{{incidentId}}}-{{a.b.0}} {{n}}",
            "{{t}}{{a}}{{a.b}}",
            "{{~incidentId~}} x {{!-- comment --}}",
            // At the top, `this` is the context: the same field.
            "{{this.incidentId}}",
        ] {
            let mut hb = Handlebars::new();
            hb.set_strict_mode(true);
            hb.register_escape_fn(handlebars::no_escape);
            hb.register_template_string("k", key).unwrap();
            let plan = KeyPlan::of(&hb, "k");
            assert!(matches!(plan, KeyPlan::Fields(_)), "{key}");
            assert_eq!(
                plan.render(&incident),
                hb.render("k", &incident).ok(),
                "{key}"
            );
        }
        // Missing, a list's named field, or a field of text: the render says why.
        for key in ["{{nope}}", "{{a.b.x}}", "{{incidentId.x}}"] {
            assert!(plan(key).render(&incident).is_none(), "{key}");
        }
        // The context's own names, helpers, `this`, blocks: rendered with the context.
        for key in [
            "{{targets}}",
            "{{ticket.key}}",
            "{{event}}",
            "{{priority}}",
            "{{upper incidentId}}",
            "{{this}}",
            "{{#if a}}x{{/if}}",
            "{{> p}}",
            "{{@root.incidentId}}",
        ] {
            assert!(matches!(plan(key), KeyPlan::Template), "{key}");
        }
    }
}
