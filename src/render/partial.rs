//! `{{> name}}` without copying the context.
//!
//! Handlebars expands a partial by cloning the current context into a new object, adding the
//! hash (`value=…`) to it, and then cloning every value a lookup inside the partial finds
//! there. The context holds the whole incident twice (its fields and `payload`), so a template
//! that calls small partials often (`{{> oneline value=…}}`) spent most of its time copying.
//!
//! After every template is compiled, [`rewrite`] replaces each plain partial call (a name, an
//! optional hash, no context parameter, no block) by a call of the [`PartialCall`] helper,
//! which renders the same partial the way Handlebars does, minus the copies: the hash becomes
//! the partial's block parameters (as Handlebars makes it too), and lookups resolve in the
//! caller's scope instead of a merged copy of it. That is the same value for every lookup but
//! those through `this` (`this`, `.`, `this.x`, `..`), which would see the hash keys as
//! properties, or a scope that is not an object; a partial that reads `this` at its top level,
//! or a call from such a scope, takes the copy, exactly as Handlebars does. Registries with
//! inline partials, decorators or partial blocks are left as Handlebars compiled them.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use handlebars::template::{Parameter, Subexpression, Template, TemplateElement};
use handlebars::{
    BlockContext, BlockParamHolder, Context, Handlebars, Helper, HelperDef, HelperResult, Output,
    Path, PathAndJson, RenderContext, RenderErrorReason, Renderable,
};
use serde_json::{Map, Value};

use super::memo::Collect;

/// The helper a rewritten partial call names: no template can write `{{>}}` as a helper call.
const HELPER: &str = ">";

/// Rewrites the partial calls of every template in `hb` (see the module) and registers the
/// helper they call. A partial that reads the incident alone (`kept`), called at the top of
/// the template a render starts from, renders once per incident version and hash: `registry`
/// and `renderer` tell its text apart from other registries' and renderers'.
pub fn rewrite(
    hb: &mut Handlebars<'static>,
    registry: &'static str,
    renderer: u64,
    kept: &Arc<HashSet<String>>,
) {
    let templates = hb.get_templates();
    if templates.values().any(|t| !plain(t)) {
        return;
    }
    let this_free: HashSet<String> = templates
        .iter()
        .filter(|(_, t)| scope_is_this_free(t))
        .map(|(n, _)| n.clone())
        .collect();
    let rewritten: Vec<(String, Template)> = templates
        .iter()
        .map(|(name, t)| {
            let mut t = t.clone();
            rewrite_template(&mut t, true);
            (name.clone(), t)
        })
        .collect();
    for (name, t) in rewritten {
        hb.register_template(&name, t);
    }
    hb.register_helper(
        HELPER,
        Box::new(PartialCall {
            this_free,
            kept: kept.clone(),
            registry,
            renderer,
        }),
    );
}

/// No inline partials, decorators, partial blocks or `@partial-block`: the parts of partials
/// the helper does not reproduce.
fn plain(t: &Template) -> bool {
    t.elements.iter().all(|e| match e {
        TemplateElement::DecoratorExpression(_)
        | TemplateElement::DecoratorBlock(_)
        | TemplateElement::PartialBlock(_) => false,
        TemplateElement::PartialExpression(d) => {
            d.template.is_none() && d.name.as_name() != Some("@partial-block")
        }
        TemplateElement::HelperBlock(h) => {
            h.template.as_ref().is_none_or(plain) && h.inverse.as_ref().is_none_or(plain)
        }
        _ => true,
    })
}

/// `top`: the elements are at the top of the template (not in an `each` or `with` block).
fn rewrite_template(t: &mut Template, top: bool) {
    for e in &mut t.elements {
        match e {
            TemplateElement::PartialExpression(d)
                if d.params.is_empty() && d.template.is_none() =>
            {
                let Some(name) = d.name.as_name() else {
                    continue;
                };
                let call = Subexpression::new(
                    Parameter::Name(HELPER.into()),
                    vec![
                        Parameter::Literal(Value::String(name.into())),
                        Parameter::Literal(Value::Bool(top)),
                    ],
                    d.hash.clone(),
                );
                *e = *call.element;
            }
            TemplateElement::HelperBlock(h) => {
                let inner_top = top && !matches!(h.name.as_name(), Some("each" | "with"));
                if let Some(t) = &mut h.template {
                    rewrite_template(t, inner_top);
                }
                if let Some(t) = &mut h.inverse {
                    rewrite_template(t, top);
                }
            }
            _ => {}
        }
    }
}

/// Whether nothing at the top level of `t` (outside `each` and `with` blocks, which have their
/// own `this`) reads `this`, `.` or `..`.
fn scope_is_this_free(t: &Template) -> bool {
    elements_ok(t, Scope::Top)
}

#[derive(Clone, Copy, PartialEq)]
enum Scope {
    /// The partial's own scope: no `this`, `.` or `..`.
    Top,
    /// Inside `each` / `with`: `this` is the item, but `..` could reach the partial's scope.
    Nested,
}

fn elements_ok(t: &Template, scope: Scope) -> bool {
    t.elements.iter().all(|e| match e {
        TemplateElement::Expression(h) | TemplateElement::HtmlExpression(h) => {
            helper_ok(&h.name, &h.params, &h.hash, scope)
        }
        TemplateElement::HelperBlock(h) => {
            let inner = match h.name.as_name() {
                Some("each" | "with") => Scope::Nested,
                _ => scope,
            };
            helper_ok(&h.name, &h.params, &h.hash, scope)
                && h.template.as_ref().is_none_or(|t| elements_ok(t, inner))
                && h.inverse.as_ref().is_none_or(|t| elements_ok(t, scope))
        }
        TemplateElement::PartialExpression(d) => {
            d.params.iter().all(|p| param_ok(p, scope))
                && d.hash.values().all(|p| param_ok(p, scope))
        }
        TemplateElement::RawString(_) | TemplateElement::Comment(_) => true,
        _ => false,
    })
}

fn helper_ok(
    name: &Parameter,
    params: &[Parameter],
    hash: &std::collections::HashMap<String, Parameter>,
    scope: Scope,
) -> bool {
    param_ok(name, scope)
        && params.iter().all(|p| param_ok(p, scope))
        && hash.values().all(|p| param_ok(p, scope))
}

fn param_ok(p: &Parameter, scope: Scope) -> bool {
    match p {
        Parameter::Path(path) => {
            let raw = match path {
                Path::Relative((_, raw)) | Path::Local((_, _, raw)) => raw.as_str(),
            };
            // `this`, `.`, `./x`, `this.x`, `[this]`: the scope itself. Read conservatively:
            // anything that might be is treated as such.
            let first = raw.split(['.', '/']).next().unwrap_or("");
            let the_scope = first.is_empty() || first == "this" || first.starts_with("[this");
            let leaves_the_incident = raw.contains("..") || (scope == Scope::Top && the_scope);
            !leaves_the_incident
        }
        Parameter::Subexpression(s) => match s.as_element() {
            TemplateElement::Expression(h) => helper_ok(&h.name, &h.params, &h.hash, scope),
            _ => false,
        },
        Parameter::Name(_) | Parameter::Literal(_) => true,
        _ => false,
    }
}

/// Renders a partial as Handlebars' `{{> name hash…}}` does (see the module).
struct PartialCall {
    /// Partials whose top level never reads `this`: they may run in the caller's scope.
    this_free: HashSet<String>,
    /// Partials that read the incident alone ([`super::memo::incident_only`]).
    kept: Arc<HashSet<String>>,
    registry: &'static str,
    renderer: u64,
}

impl HelperDef for PartialCall {
    fn call<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        r: &'reg Handlebars<'reg>,
        ctx: &'rc Context,
        rc: &mut RenderContext<'reg, 'rc>,
        out: &mut dyn Output,
    ) -> HelperResult {
        let name = h
            .param(0)
            .and_then(PathAndJson::try_get_constant_value)
            .and_then(Value::as_str)
            .ok_or(RenderErrorReason::ParamNotFoundForIndex(HELPER, 0))?;
        if rc.is_current_template(name) {
            return Err(RenderErrorReason::CannotIncludeSelf.into());
        }
        let inline = rc.get_partial(name);
        let partial = inline
            .or_else(|| r.get_template(name))
            .ok_or_else(|| RenderErrorReason::PartialNotFound(name.to_owned()))?;
        let current_template_before = rc.get_current_template_name();

        let mut block = BlockContext::new();
        // Local variables (@index, @key…) of the enclosing block stay visible, as in Handlebars.
        if let Some(parent) = rc.block() {
            block
                .local_variables_mut()
                .clone_from(parent.local_variables());
        }
        // `this_free` knows the registered partials, not inline ones of the same name.
        if inline.is_none() && self.in_callers_scope(name, ctx, rc) {
            let base_path = rc
                .block()
                .map(|b| b.base_path().clone())
                .unwrap_or_default();
            let base_value = rc.block().and_then(|b| b.base_value().cloned());
            for (key, value) in h.hash() {
                block.set_block_param(key, hash_param(value, &base_path, base_value.is_some()));
            }
            *block.base_path_mut() = base_path;
            if let Some(v) = base_value {
                block.set_base_value(v);
            }
        } else {
            // Exactly as Handlebars: the current value merged with the hash, copied.
            let current = match rc.context() {
                Some(c) => merge(current_value(c.data(), rc), h.hash()),
                None => merge(current_value(ctx.data(), rc), h.hash()),
            };
            for (key, value) in h.hash() {
                block.set_block_param(key, BlockParamHolder::Value(value.value().clone()));
            }
            block.set_base_value(current);
        }
        // At the top of the template a render starts from (no block, no scope but the
        // context's), a partial that reads the incident alone renders the same text for the
        // same hash in every render of the incident version.
        let top = h
            .param(1)
            .and_then(PathAndJson::try_get_constant_value)
            .is_some_and(|v| v == &Value::Bool(true));
        let keep = top
            && inline.is_none()
            && self.kept.contains(name)
            && rc.get_current_template_name() == rc.get_root_template_name();
        let memo = keep.then(super::helpers::version_memo).flatten();
        let hash: Vec<(&str, &Value)> = match memo {
            Some(_) => h.hash().iter().map(|(k, v)| (*k, v.value())).collect(),
            None => Vec::new(),
        };
        if let Some(text) = memo
            .as_ref()
            .and_then(|m| m.partial(self.renderer, self.registry, name, &hash))
        {
            out.write(&text)?;
            rc.set_current_template_name(current_template_before);
            return Ok(());
        }
        rc.push_block(block);
        let result = match &memo {
            None => partial.render(r, ctx, rc, out),
            Some(m) => {
                let mut collected = Collect(String::new());
                let result = partial.render(r, ctx, rc, &mut collected);
                if result.is_ok() {
                    out.write(&collected.0)?;
                    m.keep_partial(self.renderer, self.registry, name, &hash, &collected.0);
                }
                result
            }
        };
        rc.pop_block();
        rc.set_current_template_name(current_template_before);
        result
    }
}

impl PartialCall {
    /// Whether a lookup in the caller's scope finds what one in Handlebars' merged copy would:
    /// the partial reads no `this`, and the scope is an object (Handlebars turns a string or
    /// list into an object of its items).
    fn in_callers_scope<'rc>(
        &self,
        name: &str,
        ctx: &'rc Context,
        rc: &RenderContext<'_, 'rc>,
    ) -> bool {
        if !self.this_free.contains(name) || rc.context().is_some() {
            return false;
        }
        current_value(ctx.data(), rc).is_some_and(Value::is_object)
    }
}

/// The value of the current scope: the block's own value, or the one at its path.
fn current_value<'a>(root: &'a Value, rc: &'a RenderContext<'_, '_>) -> Option<&'a Value> {
    match rc.block() {
        None => Some(root),
        Some(b) => match b.base_value() {
            Some(v) => Some(v),
            None => b.base_path().iter().try_fold(root, step),
        },
    }
}

fn step<'a>(v: &'a Value, segment: &String) -> Option<&'a Value> {
    match v {
        Value::Object(m) => m.get(segment),
        Value::Array(a) => segment.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    }
}

/// A hash value as a block parameter: a value of the context by its path (no copy) when the
/// path lies under the scope's, else a copy, as Handlebars makes.
fn hash_param(value: &PathAndJson, base_path: &[String], derived_scope: bool) -> BlockParamHolder {
    match value.context_path() {
        Some(path) if !derived_scope && path.starts_with(base_path) => {
            BlockParamHolder::Path(path[base_path.len()..].to_vec())
        }
        _ => BlockParamHolder::Value(value.value().clone()),
    }
}

/// Handlebars' merge of the current value and a partial's hash.
fn merge(base: Option<&Value>, hash: &BTreeMap<&str, PathAndJson>) -> Value {
    let base = base.unwrap_or(&Value::Null);
    if hash.is_empty() {
        return base.clone();
    }
    let mut map = match base {
        Value::Object(m) => m.clone(),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, v)| (i.to_string(), v.clone()))
            .collect(),
        Value::String(s) => s
            .chars()
            .enumerate()
            .map(|(i, c)| (i.to_string(), Value::String(c.to_string())))
            .collect(),
        _ => Map::new(),
    };
    for (k, v) in hash {
        map.insert((*k).to_string(), v.value().clone());
    }
    Value::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Renders `template` with `partials` in two registries, one as Handlebars compiled it and
    /// one rewritten: the same text, or the same error, line and template.
    fn same_both_ways(partials: &[(&str, &str)], template: &str, data: &Value) -> String {
        let build = |rewritten: bool| {
            let mut hb = Handlebars::new();
            hb.set_strict_mode(true);
            hb.set_prevent_indent(true);
            hb.register_escape_fn(handlebars::no_escape);
            crate::render::helpers::register(&mut hb);
            for (name, text) in partials {
                hb.register_partial(name, text).unwrap();
            }
            hb.register_template_string("t", template).unwrap();
            if rewritten {
                rewrite(&mut hb, "test", 0, &Arc::default());
            }
            hb
        };
        let (plain, fast) = (build(false), build(true));
        let show = |r: Result<String, handlebars::RenderError>| match r {
            Ok(text) => text,
            Err(e) => format!(
                "error in {:?} at {:?}:{:?}: {}",
                e.template_name,
                e.line_no,
                e.column_no,
                e.reason()
            ),
        };
        let expected = show(plain.render("t", data));
        assert_eq!(show(fast.render("t", data)), expected, "{template}");
        expected
    }

    #[test]
    fn rewritten_partials_render_as_handlebars_does() {
        let data = json!({
            "a": "A", "n": 2, "s": "str", "list": ["x", "y"], "obj": {"k": "v", "a": "inner"},
            "events": [{"host": "h1"}, {"host": "h2"}], "value": "outer value"
        });
        let partials = [
            ("p", "[{{value}}|{{a}}|{{default max 3}}]"),
            ("uses_this", "<{{json this}}>"),
            ("this_dot", "<{{this.value}}|{{this}}|{{./value}}>"),
            ("nested", "({{> p value=(concat a \"!\")}})"),
            (
                "each",
                "{{#each events}}{{host}}{{@index}}{{#if @first}}F{{/if}},{{/each}}{{value}}",
            ),
            ("up", "{{#each list}}{{../a}}{{this}}{{/each}}"),
            ("missing", "line one\n{{nope}}"),
            ("self", "{{> self}}"),
            ("root", "{{@root.a}}{{lookup obj \"k\"}}"),
            ("local", "{{@index}}:{{this}};"),
        ];
        let cases = [
            "{{> p}}",
            "{{> p value=\"v\" max=9}}",
            "{{> p value=a}}",
            "{{> p value=obj.k}}",
            "{{> p value=(concat s s)}}",
            "{{> uses_this value=1}}",
            "{{> uses_this}}",
            "{{> this_dot value=\"hash\"}}",
            "{{> nested}}",
            "{{> each value=s}}",
            "{{> up}}",
            "{{> missing}}",
            "{{> self}}",
            "{{> absent}}",
            "{{> root}}",
            "{{#each list}}{{> local}}{{/each}}",
            "{{#each list}}{{> p value=this}}{{/each}}",
            "{{#each list}}{{> p value=@root.a}}{{/each}}",
            "{{#each events}}{{> p value=host}}{{/each}}",
            "{{#with obj}}{{> p value=k}}{{/with}}",
            "{{#with obj as |o|}}{{> p value=o.k}}{{/with}}",
            "{{#each (concat s)}}{{> p}}{{/each}}",
            "{{#if a}}\n  {{> p value=n}}\n{{/if}}\nafter",
            "before\n  {{> p}}\nafter",
            "{{> p value=missing.path}}",
        ];
        for case in cases {
            same_both_ways(&partials, case, &data);
        }
        // A partial that names a missing variable says where, inside the partial.
        let err = same_both_ways(&partials, "x\n{{> missing}}", &data);
        assert!(err.contains("Some(\"missing\") at Some(2)"), "{err}");
    }

    #[test]
    fn kept_partials_render_once_per_hash_and_only_at_the_top() {
        let mut hb = Handlebars::new();
        hb.set_strict_mode(true);
        hb.set_prevent_indent(true);
        crate::render::helpers::register(&mut hb);
        hb.register_partial("p", "[{{value}}|{{@root.a}}]").unwrap();
        hb.register_template_string(
            "t",
            "{{> p value=x}}{{#each list}}{{> p value=this}}{{/each}}{{#if a}}{{> p value=a}}{{/if}}",
        )
        .unwrap();
        rewrite(
            &mut hb,
            "test",
            7,
            &Arc::new(HashSet::from(["p".to_string()])),
        );
        let memo = Arc::new(crate::render::memo::VersionMemo::default());
        let render = |data: Value| {
            let ctx = Context::from(data);
            crate::render::helpers::render_scope(Some(memo.clone()), || {
                hb.render_with_context("t", &ctx)
            })
            .unwrap()
        };
        let first = render(json!({"a": "A", "x": "one", "list": ["l1", "l2"]}));
        assert_eq!(first, "[one|A][l1|A][l2|A][A|A]");
        // Another hash renders anew; in the `each`, the partial is not kept at all.
        let second = render(json!({"a": "A", "x": "two", "list": ["l3"]}));
        assert_eq!(second, "[two|A][l3|A][A|A]");
        assert_eq!(
            render(json!({"a": "A", "x": "one", "list": []})),
            "[one|A][A|A]"
        );
    }

    #[test]
    fn registries_with_inline_partials_are_left_as_compiled() {
        let data = json!({"a": "A"});
        let partials = [("p", "[{{a}}]")];
        same_both_ways(
            &partials,
            "{{#*inline \"p\"}}inline {{a}}{{/inline}}{{> p}}",
            &data,
        );
        same_both_ways(&partials, "{{#> p}}block{{/p}}", &data);
    }
}
