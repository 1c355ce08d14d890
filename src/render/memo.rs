//! What renders of one incident version can share: the partials `include` rendered that read
//! nothing but the incident (a title, the incident as text), and the text conversions
//! (`html_to_text`, `markdown_to_text`, `strip_html`) of its texts. Each connector and event
//! renders the same incident; only the gateway's facts change between them.
//!
//! A partial reads nothing but the incident when no template it runs (itself, the partials it
//! calls or includes) names a fact (`event`, `delivery`, `connector`, `received_at`, `ticket`,
//! `completion`, `assignment`, `collected`, `collected_count`: [`FACTS`]), reads the whole context (`this` at its top, `@root`, `..`), or calls a
//! helper that reads the context itself (`priority`, `pointer` without a value to read from).
//! Read conservatively: a partial that might is rendered every time.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use handlebars::template::{Parameter, Subexpression, Template, TemplateElement};
use handlebars::{
    Context, Handlebars, Helper, HelperDef, HelperResult, Output, Path, PathAndJson, RenderContext,
    RenderErrorReason, Renderable,
};
use serde_json::Value;

// Facts a context gives beside the incident (see `super::context`).
use super::FACTS;
/// At most this much text is kept per incident version; past it, nothing more is kept.
const MAX_BYTES: usize = 4 * 1024 * 1024;

/// Inputs shorter than this are converted every time: a lookup would cost about as much.
pub const MIN_CONVERT_BYTES: usize = 64;

/// The renders of one incident version's shared results (see the module).
#[derive(Debug, Default)]
pub struct VersionMemo {
    inner: Mutex<Kept>,
}

#[derive(Debug, Default)]
struct Kept {
    /// Renderer → what it rendered: `include` of a partial, by `include\0NAME`; a top-level
    /// part of a template ([`wrap_roots`]), by its registry, template and place.
    texts: HashMap<u64, HashMap<String, Arc<str>>>,
    /// (helper, input) → output.
    converted: HashMap<(&'static str, String), String>,
    /// Partials called at the top of a template, by their hash.
    partials: Vec<KeptPartial>,
    bytes: usize,
}

#[derive(Debug)]
struct KeptPartial {
    renderer: u64,
    registry: &'static str,
    name: String,
    hash: Vec<(String, Value)>,
    text: Arc<str>,
}

/// What a hash is taken to weigh in memory (a string by its length).
fn weight(v: &Value) -> usize {
    match v {
        Value::String(s) => s.len() + 32,
        _ => 64,
    }
}

impl VersionMemo {
    pub fn text(&self, renderer: u64, key: &str) -> Option<Arc<str>> {
        let kept = self.inner.lock().ok()?;
        kept.texts.get(&renderer)?.get(key).cloned()
    }

    pub fn keep_text(&self, renderer: u64, key: &str, text: &str) {
        if let Ok(mut kept) = self.inner.lock()
            && kept.bytes + text.len() <= MAX_BYTES
        {
            kept.bytes += text.len();
            kept.texts
                .entry(renderer)
                .or_default()
                .insert(key.to_string(), Arc::from(text));
        }
    }

    /// The text partial `name` of `registry` rendered with `hash` (see [`super::partial`]).
    pub fn partial(
        &self,
        renderer: u64,
        registry: &str,
        name: &str,
        hash: &[(&str, &Value)],
    ) -> Option<Arc<str>> {
        let kept = self.inner.lock().ok()?;
        kept.partials
            .iter()
            .find(|p| {
                p.renderer == renderer
                    && p.registry == registry
                    && p.name == name
                    && p.hash.len() == hash.len()
                    && p.hash
                        .iter()
                        .zip(hash)
                        .all(|((k, v), (hk, hv))| k == hk && same(v, hv))
            })
            .map(|p| p.text.clone())
    }

    pub fn keep_partial(
        &self,
        renderer: u64,
        registry: &'static str,
        name: &str,
        hash: &[(&str, &Value)],
        text: &str,
    ) {
        let size = text.len() + hash.iter().map(|(_, v)| weight(v)).sum::<usize>();
        if let Ok(mut kept) = self.inner.lock()
            && kept.bytes + size <= MAX_BYTES
        {
            kept.bytes += size;
            kept.partials.push(KeptPartial {
                renderer,
                registry,
                name: name.to_string(),
                hash: hash
                    .iter()
                    .map(|(k, v)| ((*k).to_string(), (*v).clone()))
                    .collect(),
                text: Arc::from(text),
            });
        }
    }

    pub fn converted(&self, helper: &'static str, input: &str) -> Option<String> {
        let kept = self.inner.lock().ok()?;
        // The key is owned; look it up without building one for every call.
        kept.converted
            .iter()
            .find(|((h, i), _)| *h == helper && i == input)
            .map(|(_, out)| out.clone())
    }

    pub fn keep_converted(&self, helper: &'static str, input: &str, output: &str) {
        if let Ok(mut kept) = self.inner.lock()
            && kept.bytes + input.len() + output.len() <= MAX_BYTES
        {
            kept.bytes += input.len() + output.len();
            kept.converted
                .insert((helper, input.to_string()), output.to_string());
        }
    }
}

/// Equal, in the same order (`serde_json`'s equality ignores the order of keys, which a
/// template can see).
pub fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len()
                && a.iter()
                    .zip(b)
                    .all(|((ka, va), (kb, vb))| ka == kb && same(va, vb))
        }
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same(x, y))
        }
        _ => a == b,
    }
}

/// The helper a kept part of a template is wrapped in: no template can call `{{#<kept>}}`.
const KEPT: &str = "<kept>";

/// Wraps each top-level part of the templates `roots` of `hb` (an expression that calls a
/// helper, a block) whose output depends on the incident alone in a block that keeps its
/// output per incident version: later renders of the version (other events, connectors,
/// retries) write it again instead of computing it. `partials`: the partials that read the
/// incident alone ([`incident_only`]).
pub fn wrap_roots(
    hb: &mut Handlebars<'static>,
    registry: &str,
    roots: &[String],
    partials: &HashSet<String>,
    renderer: u64,
) {
    let mut wrapped = Vec::new();
    for name in roots {
        let Some(t) = hb.get_template(name) else {
            continue;
        };
        let mut t = t.clone();
        let mut changed = false;
        for (index, element) in t.elements.iter_mut().enumerate() {
            if !worth_keeping(element, partials) {
                continue;
            }
            let mut inner = Template::new();
            inner.name.clone_from(&t.name);
            inner.elements = vec![element.clone()];
            // Errors inside name the line and column they did unwrapped.
            inner.mapping = t.mapping.get(index).cloned().into_iter().collect();
            let key = format!("{registry}\0{name}\0{index}");
            let call = Subexpression::new(
                Parameter::Name(KEPT.into()),
                vec![Parameter::Literal(Value::String(key))],
                HashMap::new(),
            );
            if let TemplateElement::Expression(mut h) = *call.element {
                h.block = true;
                h.template = Some(inner);
                *element = TemplateElement::HelperBlock(h);
                changed = true;
            }
        }
        if changed {
            wrapped.push((name.clone(), t));
        }
    }
    for (name, t) in wrapped {
        hb.register_template(&name, t);
    }
    hb.register_helper(KEPT, Box::new(KeptPart { renderer }));
}

/// A top-level element whose output depends on the incident alone, and costs more than a
/// lookup: a helper call or a block (a plain `{{field}}` is cheaper written again).
fn worth_keeping(e: &TemplateElement, partials: &HashSet<String>) -> bool {
    let mut calls = Vec::new();
    let ok = match e {
        TemplateElement::Expression(h) | TemplateElement::HtmlExpression(h) => {
            (!h.params.is_empty() || !h.hash.is_empty())
                && helper_ok(&h.name, &h.params, &h.hash, true, &mut calls)
        }
        TemplateElement::HelperBlock(_) => elements_ok(std::slice::from_ref(e), true, &mut calls),
        _ => false,
    };
    ok && calls.iter().all(|c| partials.contains(c))
}

/// Writes a kept part of a template (see [`wrap_roots`]).
struct KeptPart {
    renderer: u64,
}

/// Output collected into a string (Handlebars' own reserves 8 KiB up front).
pub struct Collect(pub String);

impl Output for Collect {
    fn write(&mut self, seg: &str) -> Result<(), std::io::Error> {
        self.0.push_str(seg);
        Ok(())
    }
}

impl HelperDef for KeptPart {
    fn call<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        r: &'reg Handlebars<'reg>,
        ctx: &'rc Context,
        rc: &mut RenderContext<'reg, 'rc>,
        out: &mut dyn Output,
    ) -> HelperResult {
        super::bounds::check_budget()
            .map_err(|e| RenderErrorReason::Other(format!("{KEPT}: {e}")))?;
        let inner = h
            .template()
            .ok_or(RenderErrorReason::BlockContentRequired)?;
        let key = h
            .param(0)
            .and_then(PathAndJson::try_get_constant_value)
            .and_then(Value::as_str)
            .ok_or(RenderErrorReason::ParamNotFoundForIndex(KEPT, 0))?;
        // Only at the top of the template being rendered: as a partial, or inside a block,
        // the same part reads another scope.
        let at_top = rc.get_current_template_name() == rc.get_root_template_name()
            && rc
                .block()
                .is_none_or(|b| b.base_path().is_empty() && b.base_value().is_none());
        let Some(memo) = at_top.then(super::helpers::version_memo).flatten() else {
            return inner.render(r, ctx, rc, out);
        };
        if let Some(text) = memo.text(self.renderer, key) {
            out.write(&text)?;
            return Ok(());
        }
        let mut collected = Collect(String::new());
        inner.render(r, ctx, rc, &mut collected)?;
        out.write(&collected.0)?;
        memo.keep_text(self.renderer, key, &collected.0);
        Ok(())
    }
}

/// The templates of `hb` whose output depends on the incident alone (see the module).
pub fn incident_only(hb: &Handlebars<'static>) -> HashSet<String> {
    let templates = hb.get_templates();
    let mut verdicts: HashMap<String, bool> = HashMap::new();
    for name in templates.keys() {
        judge(name, templates, &mut verdicts);
    }
    verdicts
        .into_iter()
        .filter(|(_, ok)| *ok)
        .map(|(n, _)| n)
        .collect()
}

fn judge(
    name: &str,
    templates: &HashMap<String, Template>,
    verdicts: &mut HashMap<String, bool>,
) -> bool {
    if let Some(v) = verdicts.get(name) {
        return *v;
    }
    // Until decided (a partial that calls itself): no.
    verdicts.insert(name.to_string(), false);
    let Some(t) = templates.get(name) else {
        return false;
    };
    let mut calls = Vec::new();
    let ok = elements_ok(&t.elements, true, &mut calls)
        && calls.iter().all(|c| judge(c, templates, verdicts));
    verdicts.insert(name.to_string(), ok);
    ok
}

/// Whether the elements of `t` read only the incident; the partials they run go to `calls`.
fn elements_ok(elements: &[TemplateElement], top: bool, calls: &mut Vec<String>) -> bool {
    elements.iter().all(|e| match e {
        TemplateElement::RawString(_) | TemplateElement::Comment(_) => true,
        TemplateElement::Expression(h) | TemplateElement::HtmlExpression(h) => {
            helper_ok(&h.name, &h.params, &h.hash, top, calls)
        }
        TemplateElement::HelperBlock(h) => {
            let inner_top = top && !matches!(h.name.as_name(), Some("each" | "with"));
            helper_ok(&h.name, &h.params, &h.hash, top, calls)
                && h.template
                    .as_ref()
                    .is_none_or(|t| elements_ok(&t.elements, inner_top, calls))
                && h.inverse
                    .as_ref()
                    .is_none_or(|t| elements_ok(&t.elements, top, calls))
        }
        TemplateElement::PartialExpression(d) if d.template.is_none() => {
            let Some(name) = d.name.as_name() else {
                return false;
            };
            calls.push(name.to_string());
            d.params.iter().all(|p| param_ok(p, top, calls))
                && d.hash.values().all(|p| param_ok(p, top, calls))
        }
        _ => false,
    })
}

fn helper_ok(
    name: &Parameter,
    params: &[Parameter],
    hash: &HashMap<String, Parameter>,
    top: bool,
    calls: &mut Vec<String>,
) -> bool {
    let helper = match name {
        Parameter::Name(n) => Some(n.as_str()),
        Parameter::Path(p) => Some(raw(p)),
        _ => None,
    };
    let literal = |i: usize| match params.get(i) {
        Some(Parameter::Literal(Value::String(s))) => Some(s.as_str()),
        _ => None,
    };
    let reads_context = match helper {
        Some("priority") => true,
        // `{{pointer "/a/b"}}` reads the context from its root.
        Some("pointer") if params.len() < 2 => {
            literal(0).is_none_or(|p| FACTS.contains(&p.split('/').nth(1).unwrap_or("")))
        }
        // A partial, called by the rewritten `{{> name}}` or by `include`.
        Some(">" | "include") => match literal(0) {
            Some(partial) => {
                calls.push(partial.to_string());
                false
            }
            None => true,
        },
        _ => false,
    };
    !reads_context
        && param_ok(name, top, calls)
        && params.iter().all(|p| param_ok(p, top, calls))
        && hash.values().all(|p| param_ok(p, top, calls))
}

fn raw(p: &Path) -> &str {
    match p {
        Path::Relative((_, raw)) | Path::Local((_, _, raw)) => raw,
    }
}

fn param_ok(p: &Parameter, top: bool, calls: &mut Vec<String>) -> bool {
    match p {
        Parameter::Path(path) => {
            let raw = raw(path);
            let mut segments = raw.split(['.', '/']).map(|s| s.trim_matches(['[', ']']));
            let first = segments.next().unwrap_or("");
            let named = match first {
                "@root" => segments.next().unwrap_or(""),
                _ => first,
            };
            let whole_scope = first.is_empty() || first == "this";
            let leaves_the_incident = raw.contains("..")
                || (first == "@root" && named.is_empty())
                || (top && whole_scope);
            !leaves_the_incident && !FACTS.contains(&named)
        }
        Parameter::Subexpression(s) => match s.as_element() {
            TemplateElement::Expression(h) => helper_ok(&h.name, &h.params, &h.hash, top, calls),
            _ => false,
        },
        Parameter::Name(_) | Parameter::Literal(_) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(partials: &[(&str, &str)]) -> Handlebars<'static> {
        let mut hb = Handlebars::new();
        for (name, text) in partials {
            hb.register_partial(name, text).unwrap();
        }
        hb
    }

    #[test]
    fn partials_that_read_a_fact_or_the_whole_context_are_not_kept() {
        let hb = registry(&[
            (
                "plain",
                "{{incident.summary}} {{#each events}}{{this.host}}{{/each}}",
            ),
            ("calls_plain", "{{> plain}}{{include \"plain\"}}"),
            ("ticket", "{{ticket.key}}"),
            ("calls_ticket", "{{> plain}}{{> ticket}}"),
            ("includes_ticket", "{{include \"ticket\"}}"),
            ("nested_fact", "{{#each events}}{{event}}{{/each}}"),
            ("this", "{{json this}}"),
            ("root", "{{@root.completion}}"),
            ("whole_root", "{{json @root}}"),
            ("up", "{{#each events}}{{../x}}{{/each}}"),
            ("priority", "{{priority}}"),
            ("pointer_fact", "{{pointer \"/connector/vars\"}}"),
            ("pointer_field", "{{pointer \"/deployment,\"}}"),
            ("pointer_value", "{{pointer payload \"/a\"}}"),
            ("dynamic", "{{include name}}"),
            ("hash_fact", "{{> plain value=received_at}}"),
            ("missing_partial", "{{> nowhere}}"),
        ]);
        let kept = incident_only(&hb);
        let mut kept: Vec<&str> = kept.iter().map(String::as_str).collect();
        kept.sort();
        assert_eq!(
            kept,
            ["calls_plain", "plain", "pointer_field", "pointer_value"]
        );
    }

    #[test]
    fn the_shipped_incident_partials_are_kept_and_the_delivery_ones_not() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("templates/partials");
        let mut hb = Handlebars::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let file = path.file_name().unwrap().to_str().unwrap().to_string();
            let name = file.split('.').next().unwrap().to_string();
            hb.register_partial(&name, std::fs::read_to_string(&path).unwrap())
                .unwrap();
        }
        let kept = incident_only(&hb);
        for name in ["title", "incident_text", "facts", "details", "oneline"] {
            assert!(kept.contains(name), "{name} reads the incident alone");
        }
        for name in ["update_note", "completion_note", "reason_label"] {
            assert!(!kept.contains(name), "{name} reads the delivery's facts");
        }
    }
}
