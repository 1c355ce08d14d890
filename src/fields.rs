//! Fields: whether a path a template reads (`incident.summary`) or a JSON pointer a matcher
//! compares (`/incident/threatRating`) names something an incident can have, so that `check`
//! catches a typo that would otherwise read nothing at all: a partial's argument is not held
//! to strict mode (`{{> slack_text value=incidentid}}` renders ""), and a matcher on a missing
//! field simply never holds.
//!
//! A path is reachable when the incident schema declares it — each step a property, an index
//! into a list (`items`), an entry of a map (`additionalProperties` with a schema), or any
//! step at all below an object that declares no properties (or `additionalProperties: true`)
//! — or when an example incident has it (fields the platform sends beyond the schema). The
//! schema accepts unknown fields everywhere, so "reachable" cannot mean "valid": it means
//! "declared or seen". Template paths may also name the gateway's own context (`ticket.id`,
//! `connector.vars.x`, `payload.…`, the derived fields).

use serde_json::{Map, Value};

/// The incident schema as a map of the paths it declares.
pub struct IncidentFields {
    schema: Value,
}

/// Why a path is not reachable: the step it could not take, and the names it could have.
#[derive(Debug, Clone, PartialEq)]
struct Miss {
    /// Index of the step not found.
    depth: usize,
    /// The names that would have been found there.
    candidates: Vec<String>,
}

impl IncidentFields {
    pub fn shipped() -> Result<IncidentFields, crate::schema::SchemaError> {
        Self::from_schema_text(crate::schema::INCIDENT_SCHEMA)
    }

    pub fn from_schema_text(text: &str) -> Result<IncidentFields, crate::schema::SchemaError> {
        let schema =
            serde_json::from_str(text).map_err(|e| crate::schema::SchemaError(e.to_string()))?;
        Ok(IncidentFields { schema })
    }

    /// `None` when `pointer` (a JSON pointer into the incident) is reachable (see the module),
    /// else why not, with the nearest field it could mean.
    pub fn pointer_problem(&self, pointer: &str, examples: &[Value]) -> Option<String> {
        if pointer.is_empty() {
            return None;
        }
        let steps: Vec<String> = pointer
            .strip_prefix('/')
            .unwrap_or(pointer)
            .split('/')
            .map(|s| s.replace("~1", "/").replace("~0", "~"))
            .collect();
        let miss = self.incident_miss(&steps, examples)?;
        let mut suggestion = steps.clone();
        let hint = best_candidate(&steps[miss.depth], &miss.candidates).map(|c| {
            suggestion.truncate(miss.depth);
            suggestion.push(c);
            let written: Vec<String> = suggestion
                .iter()
                .map(|s| s.replace('~', "~0").replace('/', "~1"))
                .collect();
            format!(" (did you mean /{}?)", written.join("/"))
        });
        Some(format!(
            "{pointer:?} reads nothing: neither the incident schema nor an example incident has {}, so the matcher compares \"\" for every incident{}",
            shown_step(&steps, miss.depth, "/"),
            hint.unwrap_or_default()
        ))
    }

    /// `None` when the template path `raw` (as written, e.g. `incident.summary`,
    /// `@root.events.[0].host`) read at the top of a render is reachable in the incident, in
    /// `context` (a render context whose incident part is a bare one: the gateway's own
    /// names), or under `payload`; else why not. Paths that leave the top scope (`../x`) or
    /// name a local (`@index`) are not judged.
    pub fn context_path_problem(
        &self,
        raw: &str,
        context: &Value,
        examples: &[Value],
    ) -> Option<String> {
        let steps = template_path_steps(raw)?;
        let first = steps.first()?;
        let declared = self.schema_top_level(first);
        let miss = if first == "payload" && !declared {
            self.incident_miss(&steps[1..], examples).map(|m| Miss {
                depth: m.depth + 1,
                candidates: m.candidates,
            })
        } else {
            let from_incident = self.incident_miss(&steps, examples);
            let from_context = match context.get(first.as_str()) {
                Some(_) if declared => None,
                Some(_) => value_miss(context, &steps, 0).err(),
                None => Some(Miss {
                    depth: 0,
                    candidates: context
                        .as_object()
                        .map(|m| m.keys().cloned().collect())
                        .unwrap_or_default(),
                }),
            };
            merge_misses(from_incident, from_context)
        }?;
        let hint = best_candidate(&steps[miss.depth], &miss.candidates).map(|c| {
            let mut suggestion = steps[..miss.depth].to_vec();
            suggestion.push(c);
            format!(" (did you mean `{}`?)", suggestion.join("."))
        });
        Some(format!(
            "`{raw}` reads nothing: neither the incident schema, an example incident nor the gateway's context has {}{}",
            shown_step(&steps, miss.depth, "."),
            hint.unwrap_or_default()
        ))
    }

    fn schema_top_level(&self, name: &str) -> bool {
        self.schema
            .get("properties")
            .and_then(Value::as_object)
            .is_some_and(|p| p.contains_key(name))
    }

    /// `None` when the schema or any example reaches `steps`, else the deepest miss.
    fn incident_miss(&self, steps: &[String], examples: &[Value]) -> Option<Miss> {
        let mut miss = self.schema_miss(&self.schema, steps, 0, 0).err()?;
        for example in examples {
            match value_miss(example, steps, 0) {
                Ok(()) => return None,
                Err(m) => miss = merge_misses(Some(miss), Some(m))?,
            }
        }
        Some(miss)
    }

    /// Follows `$ref`s within the schema (`#/$defs/x`).
    fn resolve<'s>(&'s self, mut node: &'s Value) -> &'s Value {
        // A cycle of references is not followed forever.
        for _ in 0..32 {
            let Some(target) = node.get("$ref").and_then(Value::as_str) else {
                break;
            };
            match target
                .strip_prefix('#')
                .and_then(|p| self.schema.pointer(p))
            {
                Some(next) => node = next,
                None => break,
            }
        }
        node
    }

    fn schema_miss(
        &self,
        node: &Value,
        steps: &[String],
        depth: usize,
        nesting: usize,
    ) -> Result<(), Miss> {
        let node = self.resolve(node);
        if depth == steps.len() || nesting > 64 {
            return Ok(());
        }
        let mut misses = Vec::new();
        for combinator in ["anyOf", "oneOf", "allOf"] {
            for branch in node
                .get(combinator)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                match self.schema_miss(branch, steps, depth, nesting + 1) {
                    Ok(()) => return Ok(()),
                    Err(m) => misses.push(m),
                }
            }
        }
        let types = schema_types(node);
        let untyped = types.is_empty()
            && ["anyOf", "oneOf", "allOf"]
                .iter()
                .all(|c| node.get(*c).is_none());
        let step = &steps[depth];
        let properties = node.get("properties").and_then(Value::as_object);
        let additional = node.get("additionalProperties");
        let object = types.contains(&"object") || properties.is_some() || additional.is_some();
        if object || untyped {
            if let Some(sub) = properties.and_then(|p| p.get(step)) {
                match self.schema_miss(sub, steps, depth + 1, nesting + 1) {
                    Ok(()) => return Ok(()),
                    Err(m) => misses.push(m),
                }
            } else {
                match additional {
                    Some(Value::Bool(false)) => {}
                    Some(Value::Bool(true)) => return Ok(()),
                    Some(entry) => match self.schema_miss(entry, steps, depth + 1, nesting + 1) {
                        Ok(()) => return Ok(()),
                        Err(m) => misses.push(m),
                    },
                    // An object that names none of its fields holds anything.
                    None if properties.is_none() => return Ok(()),
                    None => {}
                }
                misses.push(Miss {
                    depth,
                    candidates: properties
                        .map(|p| p.keys().cloned().collect())
                        .unwrap_or_default(),
                });
            }
        }
        if types.contains(&"array") || node.get("items").is_some() || untyped {
            if index(step).is_some() {
                match node.get("items") {
                    None => return Ok(()),
                    Some(items) => match self.schema_miss(items, steps, depth + 1, nesting + 1) {
                        Ok(()) => return Ok(()),
                        Err(m) => misses.push(m),
                    },
                }
            } else {
                misses.push(Miss {
                    depth,
                    candidates: vec!["0".into()],
                });
            }
        }
        Err(misses.into_iter().reduce(merge_two).unwrap_or(Miss {
            depth,
            candidates: vec![],
        }))
    }
}

/// The `type` of a schema node, as a list.
fn schema_types(node: &Value) -> Vec<&str> {
    match node.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    }
}

/// A list index as a template writes it (`0`, `[0]`).
fn index(step: &str) -> Option<usize> {
    step.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// Whether `value` has `steps` from `depth`. Null, an empty object or an empty list could
/// hold anything (a fact not known yet, a map of roll-ups): they reach every path.
fn value_miss(value: &Value, steps: &[String], depth: usize) -> Result<(), Miss> {
    let Some(step) = steps.get(depth) else {
        return Ok(());
    };
    match value {
        Value::Null => Ok(()),
        Value::Object(m) if m.is_empty() => Ok(()),
        Value::Object(m) => match m.get(step) {
            Some(v) => value_miss(v, steps, depth + 1),
            None => Err(Miss {
                depth,
                candidates: m.keys().cloned().collect(),
            }),
        },
        Value::Array(items) => match (index(step), items.first()) {
            (_, None) => Ok(()),
            (Some(i), Some(first)) => value_miss(items.get(i).unwrap_or(first), steps, depth + 1),
            (None, Some(_)) => Err(Miss {
                depth,
                candidates: vec!["0".into()],
            }),
        },
        _ => Err(Miss {
            depth,
            candidates: vec![],
        }),
    }
}

/// Either miss is a way the path could not go; none when either reaches it. The deeper one
/// says more; at one depth, every name either could have is a candidate.
fn merge_misses(a: Option<Miss>, b: Option<Miss>) -> Option<Miss> {
    Some(merge_two(a?, b?))
}

fn merge_two(a: Miss, b: Miss) -> Miss {
    match a.depth.cmp(&b.depth) {
        std::cmp::Ordering::Greater => a,
        std::cmp::Ordering::Less => b,
        std::cmp::Ordering::Equal => {
            let mut candidates = a.candidates;
            for c in b.candidates {
                if !candidates.contains(&c) {
                    candidates.push(c);
                }
            }
            Miss {
                depth: a.depth,
                candidates,
            }
        }
    }
}

/// The step that was not found, with the path up to it: "`sumary` under `incident`".
fn shown_step(steps: &[String], depth: usize, separator: &str) -> String {
    if depth == 0 {
        return format!("`{}`", steps[0]);
    }
    let above = steps[..depth].join(separator);
    let above = match separator {
        "/" => format!("/{above}"),
        _ => above,
    };
    format!("`{}` under `{above}`", steps[depth])
}

/// The candidate `step` most likely meant: the same name in another case, else the closest
/// spelling, if close enough to be a typo.
pub fn best_candidate(step: &str, candidates: &[String]) -> Option<String> {
    let lower = step.to_lowercase();
    if let Some(same) = candidates.iter().find(|c| c.to_lowercase() == lower) {
        return Some(same.clone());
    }
    candidates
        .iter()
        .map(|c| {
            let score = strsim::normalized_damerau_levenshtein(&lower, &c.to_lowercase())
                .max(strsim::jaro_winkler(&lower, &c.to_lowercase()) - 0.1);
            (score, c)
        })
        .filter(|(score, _)| *score >= 0.7)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c.clone())
}

/// The steps of a template path as read from the top of the context: `@root.` and `this.`
/// dropped, `[..]` segments unwrapped; `None` for what leaves the top scope or is not a path
/// into the context (`../x`, `@index`, `this`).
pub fn template_path_steps(raw: &str) -> Option<Vec<String>> {
    let mut rest = raw.trim();
    for prefix in ["@root.", "@root/", "this.", "this/", "./"] {
        if let Some(r) = rest.strip_prefix(prefix) {
            rest = r;
            break;
        }
    }
    if rest.is_empty() || rest.starts_with('@') || rest.starts_with("..") || rest == "this" {
        return None;
    }
    let mut steps = Vec::new();
    let mut current = String::new();
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '[' => {
                for inner in chars.by_ref() {
                    if inner == ']' {
                        break;
                    }
                    current.push(inner);
                }
            }
            '.' | '/' => steps.push(std::mem::take(&mut current)),
            other => current.push(other),
        }
    }
    steps.push(current);
    if steps.iter().any(|s| s.is_empty() || s == "..") {
        return None;
    }
    Some(steps)
}

/// A context path given to a partial (`{{> name key=path}}`, `{{> name path}}`): there a path
/// that reads nothing is no error, only an empty value. Where it is written, and to what.
/// (Helpers' arguments are not judged: `{{default connector.vars.x "…"}}` reads what may be
/// missing on purpose, and a partial's optional arguments are missing when not given.)
#[derive(Debug, Clone, PartialEq)]
pub struct ArgumentPath {
    pub line: usize,
    pub column: usize,
    /// What it is given to, as written: `> slack_text`.
    pub call: String,
    /// The hash key it is given as (`value`), if not a positional parameter.
    pub key: Option<String>,
    pub path: String,
}

impl ArgumentPath {
    /// A partial's hash argument: the name the partial reads it by.
    pub fn partial_key(&self) -> Option<&str> {
        self.call.starts_with('>').then_some(self.key.as_deref())?
    }

    /// The call as a person reads it: `{{> oneline value=…}}`.
    pub fn shown(&self) -> String {
        match &self.key {
            Some(key) => format!("`{{{{{} {key}=…}}}}`", self.call),
            None => format!("`{{{{{} …}}}}`", self.call),
        }
    }
}

/// Every path given to a partial at the top scope of `text` (not inside `each`, `with` or
/// another block helper that changes the scope), including those inside subexpressions
/// (`value=(join attackers ", ")`). `locals` are names that are not context paths
/// there (a partial's own arguments, read by the partials it calls). Nothing for a template
/// that does not compile (that is reported on its own).
pub fn argument_paths(text: &str, locals: &[String]) -> Vec<ArgumentPath> {
    use handlebars::template::Template;
    let mut out = Vec::new();
    if let Ok(t) = Template::compile(text) {
        arguments_in(&t, locals, &mut out);
    }
    out
}

fn arguments_in(
    t: &handlebars::template::Template,
    locals: &[String],
    out: &mut Vec<ArgumentPath>,
) {
    use handlebars::template::{Parameter, TemplateElement};
    use std::collections::HashMap;
    for (i, e) in t.elements.iter().enumerate() {
        let (line, column) = t.mapping.get(i).map_or((0, 0), |m| (m.0, m.1));
        let mut given = |call: String, params: &[Parameter], hash: &HashMap<String, Parameter>| {
            let mut keyed: Vec<(Option<&String>, &Parameter)> =
                params.iter().map(|p| (None, p)).collect();
            let mut hash: Vec<(&String, &Parameter)> = hash.iter().collect();
            hash.sort_by(|a, b| a.0.cmp(b.0));
            keyed.extend(hash.into_iter().map(|(k, p)| (Some(k), p)));
            for (key, value) in keyed {
                let mut paths = Vec::new();
                paths_in(value, &mut paths);
                for path in paths {
                    let first = template_path_steps(&path)
                        .and_then(|s| s.into_iter().next())
                        .unwrap_or_default();
                    if !locals.contains(&first) {
                        out.push(ArgumentPath {
                            line,
                            column,
                            call: call.clone(),
                            key: key.cloned(),
                            path,
                        });
                    }
                }
            }
        };
        match e {
            TemplateElement::PartialExpression(d) => {
                if let Some(partial) = d.name.as_name() {
                    given(format!("> {partial}"), &d.params, &d.hash);
                }
            }
            TemplateElement::HelperBlock(h) => {
                // `if` and `unless` keep the scope; `else` always does.
                if matches!(h.name.as_name(), Some("if" | "unless"))
                    && let Some(inner) = &h.template
                {
                    arguments_in(inner, locals, out);
                }
                if let Some(inverse) = &h.inverse {
                    arguments_in(inverse, locals, out);
                }
            }
            _ => {}
        }
    }
}

/// Every partial `text` calls (`{{> name …}}`), and whether the call keeps the caller's top
/// scope: made outside `each`, `with` and other scope-changing blocks, with no context
/// parameter (`{{> name other}}` renders the partial in `other`).
pub fn partial_calls(text: &str) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    if let Ok(t) = handlebars::template::Template::compile(text) {
        calls_in(&t, true, &mut out);
    }
    out
}

fn calls_in(t: &handlebars::template::Template, top: bool, out: &mut Vec<(String, bool)>) {
    use handlebars::template::TemplateElement;
    for e in &t.elements {
        match e {
            TemplateElement::PartialExpression(d) | TemplateElement::PartialBlock(d) => {
                if let Some(name) = d.name.as_name() {
                    out.push((name.to_string(), top && d.params.is_empty()));
                }
                if let Some(inner) = &d.template {
                    calls_in(inner, false, out);
                }
            }
            TemplateElement::HelperBlock(h) => {
                let keeps = matches!(h.name.as_name(), Some("if" | "unless"));
                if let Some(inner) = &h.template {
                    calls_in(inner, top && keeps, out);
                }
                if let Some(inverse) = &h.inverse {
                    calls_in(inverse, top, out);
                }
            }
            _ => {}
        }
    }
}

/// The context paths a parameter reads: itself, or those of a subexpression's parameters.
fn paths_in(p: &handlebars::template::Parameter, out: &mut Vec<String>) {
    use handlebars::template::{Parameter, TemplateElement};
    match p {
        Parameter::Path(path) => {
            let raw = match path {
                handlebars::Path::Relative((_, raw)) | handlebars::Path::Local((_, _, raw)) => raw,
            };
            out.push(raw.clone());
        }
        Parameter::Subexpression(s) => {
            if let TemplateElement::Expression(h) = s.as_element() {
                for param in &h.params {
                    paths_in(param, out);
                }
                for value in h.hash.values() {
                    paths_in(value, out);
                }
            }
        }
        _ => {}
    }
}

/// A render context with an empty incident: the gateway's own names and what they hold.
pub fn facts_of(context: &Value, incident: &Value) -> Value {
    let mut facts = Map::new();
    if let Value::Object(m) = context {
        for (k, v) in m {
            if incident.get(k).is_none() {
                facts.insert(k.clone(), v.clone());
            }
        }
    }
    Value::Object(facts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields() -> IncidentFields {
        IncidentFields::shipped().unwrap()
    }

    #[test]
    fn pointers_the_schema_declares_pass_and_typos_get_a_suggestion() {
        let f = fields();
        for ok in [
            "/incident_class",
            "/incident/threatRating",
            "/attacker/ip",
            "/attacker_lset/0/ip",
            "/events/3/signature_name",
            "/geo_ip_map/10.0.0.1/city",
            "/assets/anything/below",
            "/notes/otherNotes/0/who",
            "/notes/0/who",
            "/deployment,",
            "",
        ] {
            assert_eq!(f.pointer_problem(ok, &[]), None, "{ok}");
        }
        let why = f.pointer_problem("/incident/sumary", &[]).unwrap();
        assert!(why.contains("did you mean /incident/summary?"), "{why}");
        let why = f.pointer_problem("/incident_clas", &[]).unwrap();
        assert!(why.contains("did you mean /incident_class?"), "{why}");
        let why = f.pointer_problem("/attacker/ip/more", &[]).unwrap();
        assert!(why.contains("`more`"), "{why}");
        let why = f.pointer_problem("/events/first/host", &[]).unwrap();
        assert!(why.contains("`first`"), "{why}");
        // A field the schema leaves out but an example incident has is the admin's to read.
        let example = json!({"incidentId": "x", "tenant": {"tier": "gold"}});
        assert_eq!(
            f.pointer_problem("/tenant/tier", std::slice::from_ref(&example)),
            None
        );
        assert!(f.pointer_problem("/tenant/tire", &[example]).is_some());
    }

    #[test]
    fn template_paths_reach_the_incident_the_context_and_payload() {
        let f = fields();
        let context = json!({
            "ticket": {"key": "k", "id": null, "ref": "igw-1"},
            "connector": {"name": "c", "vars": {"project": "SEC"}, "priorities": {}},
            "unique_hosts": {},
            "attackers": [],
            "payload": {"incidentId": "x"}
        });
        for ok in [
            "incidentId",
            "incident.summary",
            "@root.incident.summary",
            "this.incident_class",
            "ticket.key",
            "ticket.id.anything",
            "connector.vars.project",
            "connector.priorities.high",
            "unique_hosts.h1",
            "payload.incident.summary",
            "events.[0].host",
            "events.0.host",
            "../anything",
            "@index",
        ] {
            assert_eq!(f.context_path_problem(ok, &context, &[]), None, "{ok}");
        }
        let why = f.context_path_problem("incidentid", &context, &[]).unwrap();
        assert!(why.contains("did you mean `incidentId`?"), "{why}");
        let why = f
            .context_path_problem("connector.vars.projct", &context, &[])
            .unwrap();
        assert!(
            why.contains("did you mean `connector.vars.project`?"),
            "{why}"
        );
        let why = f
            .context_path_problem("payload.incident.sumary", &context, &[])
            .unwrap();
        assert!(why.contains("`payload.incident.summary`"), "{why}");
        assert!(f.context_path_problem("tiket.key", &context, &[]).is_some());
    }

    #[test]
    fn argument_paths_are_found_at_the_top_scope_with_their_lines() {
        let text = "a\n{{> p value=incidentid max=3}}\n{{#if x}}{{> p value=(join attackers \", \")}}{{/if}}\n{{#each events}}{{> p value=host}}{{/each}}{{> p value=value}}\n{{default incident.sumary incidentId}} {{> q incident}}";
        let found = argument_paths(text, &["value".to_string()]);
        let paths: Vec<(usize, &str, &str)> = found
            .iter()
            .map(|a| (a.line, a.call.as_str(), a.path.as_str()))
            .collect();
        assert_eq!(
            paths,
            vec![
                (2, "> p", "incidentid"),
                (3, "> p", "attackers"),
                (5, "> q", "incident"),
            ]
        );
        assert_eq!(found[0].partial_key(), Some("value"));
        assert_eq!(found[0].shown(), "`{{> p value=…}}`");
        assert_eq!(found[2].partial_key(), None);
        assert_eq!(found[2].shown(), "`{{> q …}}`");
    }

    #[test]
    fn partial_calls_say_whether_they_keep_the_top_scope() {
        let calls = partial_calls(
            "{{> a}}{{#if x}}{{> b value=y}}{{else}}{{> c}}{{/if}}{{#each e}}{{> d}}{{/each}}{{> f other}}",
        );
        assert_eq!(
            calls,
            vec![
                ("a".to_string(), true),
                ("b".to_string(), true),
                ("c".to_string(), true),
                ("d".to_string(), false),
                ("f".to_string(), false),
            ]
        );
    }

    #[test]
    fn template_paths_split_as_handlebars_reads_them() {
        assert_eq!(
            template_path_steps("@root.events.[0].host"),
            Some(vec!["events".into(), "0".into(), "host".into()])
        );
        assert_eq!(
            template_path_steps("[deployment,]"),
            Some(vec!["deployment,".into()])
        );
        assert_eq!(template_path_steps("../x"), None);
        assert_eq!(template_path_steps("this"), None);
    }
}
