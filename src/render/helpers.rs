//! Template helpers. Each returns a value (so it works as `{{helper x}}`, escaped for the
//! template's content type, and as a subexpression `(helper x)`), except `json`, which writes
//! JSON as is.
//!
//! Handlebars' built-ins `eq`, `ne`, `gt`, `gte`, `lt`, `lte`, `and`, `or`, `not`, `if`,
//! `unless`, `each`, `with` and `lookup` are available too.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::Arc;

use handlebars::{
    Context, Handlebars, Helper, HelperDef, HelperResult, Output, PathAndJson, RenderContext,
    RenderError, RenderErrorReason, ScopedJson,
};
use serde_json::Value;

use super::bounds;
use super::memo::{self, VersionMemo};
use crate::model::ThreatRating;

type Compute = fn(&Helper, &Context) -> Result<Value, HelperError>;

/// Why a helper refused its input. Shown to admins (by `check`) and in dead reasons, after
/// the helper's name.
#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    #[error("needs a parameter at position {0}")]
    MissingParameter(usize),
    #[error("variable `{0}` is not in the context (strict mode)")]
    NotInContext(String),
    #[error("a parameter is missing (strict mode)")]
    ParameterMissing,
    #[error("the length must be a whole number")]
    NotALength,
    #[error("{0:?} is not a time zone name (e.g. Europe/Paris)")]
    NotATimeZone(String),
    #[error("{0:?} is not a valid strftime pattern")]
    NotAPattern(String),
    #[error("needs a JSON pointer")]
    NoPointer,
    #[error("{0:?} is not a JSON pointer (it starts with '/')")]
    NotAPointer(String),
    #[error("the connector has no `priorities` map in its config")]
    NoPriorities,
    #[error("no priority for rating {0} and no `default` in the connector's priorities")]
    NoPriority(String),
    #[error("no partial named {0:?} in the partials folder")]
    NoPartial(String),
    #[error(transparent)]
    Exceeded(#[from] bounds::Exceeded),
}

/// A helper's refusal as Handlebars carries it: `name: why`.
#[derive(Debug, thiserror::Error)]
#[error("{helper}: {error}")]
pub struct HelperFailed {
    pub helper: &'static str,
    #[source]
    pub error: HelperError,
}

fn failed(helper: &'static str, error: impl Into<HelperError>) -> RenderError {
    RenderErrorReason::NestedError(Box::new(HelperFailed {
        helper,
        error: error.into(),
    }))
    .into()
}

/// A helper computed from its parameters (and, for some, the root context).
struct ValueHelper {
    name: &'static str,
    compute: Compute,
}

impl HelperDef for ValueHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        ctx: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let fail = |e: HelperError| failed(self.name, e);
        bounds::check_budget().map_err(|e| fail(e.into()))?;
        let value = (self.compute)(h, ctx).map_err(fail)?;
        if let Value::String(s) = &value {
            bounds::check_output(s).map_err(|e| fail(e.into()))?;
        }
        Ok(ScopedJson::Derived(value))
    }
}

/// `{{json value}}`: the value as JSON, unescaped (it is already valid JSON).
fn json_helper(
    h: &Helper,
    _: &Handlebars,
    _: &Context,
    _: &mut RenderContext,
    out: &mut dyn Output,
) -> HelperResult {
    bounds::check_budget().map_err(|e| failed("json", e))?;
    let param = h
        .param(0)
        .ok_or(RenderErrorReason::ParamNotFoundForIndex("json", 0))?;
    if param.is_value_missing() {
        return Err(RenderErrorReason::MissingVariable(param.relative_path().cloned()).into());
    }
    let text = serde_json::to_string(param.value())
        .map_err(|e| RenderErrorReason::Other(e.to_string()))?;
    out.write(&text)?;
    Ok(())
}

/// What the render running on this thread remembers.
struct Scope {
    /// What `include` rendered in this render: (context, partial) → text. A partial rendered
    /// with the same context renders the same text, and templates include the same partial
    /// more than once (a description, then its length).
    included: Vec<(usize, String, String)>,
    /// What renders of this incident version share (see [`memo`]).
    version: Option<Arc<VersionMemo>>,
}

thread_local! {
    static SCOPE: RefCell<Option<Scope>> = const { RefCell::new(None) };
}

/// Runs one render (of any number of templates sharing one context) remembering what
/// `include` rendered in it, and sharing with other renders of the incident version what
/// `version` keeps. Outside such a scope nothing is remembered.
pub fn render_scope<T>(version: Option<Arc<VersionMemo>>, render: impl FnOnce() -> T) -> T {
    struct Restore(Option<Scope>);
    impl Drop for Restore {
        fn drop(&mut self) {
            SCOPE.with(|s| *s.borrow_mut() = self.0.take());
        }
    }
    let scope = Scope {
        included: Vec::new(),
        version,
    };
    let outer = SCOPE.with(|s| s.borrow_mut().replace(scope));
    let _restore = Restore(outer);
    render()
}

pub(super) fn version_memo() -> Option<Arc<VersionMemo>> {
    SCOPE.with(|s| s.borrow().as_ref().and_then(|s| s.version.clone()))
}

fn included(ctx: &Context, name: &str) -> Option<String> {
    let at = ctx as *const Context as usize;
    SCOPE.with(|s| {
        s.borrow().as_ref().and_then(|scope| {
            scope
                .included
                .iter()
                .find(|(c, n, _)| *c == at && n == name)
                .map(|(_, _, text)| text.clone())
        })
    })
}

fn remember_included(ctx: &Context, name: &str, text: &str) {
    let at = ctx as *const Context as usize;
    SCOPE.with(|s| {
        if let Some(scope) = s.borrow_mut().as_mut() {
            scope
                .included
                .push((at, name.to_string(), text.to_string()));
        }
    });
}

/// `{{include "name"}}`: the partial `name` rendered as plain text, returned as a value so the
/// including template escapes it for its content type (a JSON string, HTML).
pub struct Include {
    /// The plain-text registry holding the partials; `None` inside that registry itself.
    text: Option<Arc<Handlebars<'static>>>,
    /// The partials whose text depends on the incident alone ([`memo::incident_only`]).
    incident_only: Arc<HashSet<String>>,
    /// The renderer's id: what incident versions keep of a partial is kept under it.
    renderer: u64,
}

impl Include {
    pub fn new(
        renderer: u64,
        text: Arc<Handlebars<'static>>,
        incident_only: Arc<HashSet<String>>,
    ) -> Include {
        Include {
            text: Some(text),
            incident_only,
            renderer,
        }
    }

    /// For the plain-text registry itself, so a partial can include another.
    pub fn within(renderer: u64, incident_only: Arc<HashSet<String>>) -> Include {
        Include {
            text: None,
            incident_only,
            renderer,
        }
    }
}

impl HelperDef for Include {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        current: &'reg Handlebars<'reg>,
        ctx: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        bounds::check_budget().map_err(|e| failed("include", e))?;
        let registry: &Handlebars = match &self.text {
            Some(text) => text,
            None => current,
        };
        let name = h
            .param(0)
            .map(|p| text(p.value()))
            .ok_or(RenderErrorReason::ParamNotFoundForIndex("include", 0))?;
        if !registry.has_template(&name) {
            return Err(failed("include", HelperError::NoPartial(name.into_owned())));
        }
        if let Some(rendered) = included(ctx, &name) {
            return Ok(ScopedJson::Derived(Value::String(rendered)));
        }
        let version = self
            .incident_only
            .contains(name.as_ref())
            .then(version_memo)
            .flatten();
        let key = format!("include\0{name}");
        if let Some(rendered) = version.as_ref().and_then(|v| v.text(self.renderer, &key)) {
            remember_included(ctx, &name, &rendered);
            return Ok(ScopedJson::Derived(Value::String(rendered.to_string())));
        }
        let mut rendered = registry.render_with_context(&name, ctx)?;
        // Files end with a line break; a value spliced into a string should not.
        if rendered.ends_with('\n') {
            rendered.pop();
            if rendered.ends_with('\r') {
                rendered.pop();
            }
        }
        remember_included(ctx, &name, &rendered);
        if let Some(version) = version {
            version.keep_text(self.renderer, &key, &rendered);
        }
        Ok(ScopedJson::Derived(Value::String(rendered)))
    }
}

/// Every helper a template can call (the gateway's and Handlebars' built-ins), as documented
/// in templates/README.md.
pub const HELPER_NAMES: &[&str] = &[
    "json",
    "default",
    "upper",
    "lower",
    "truncate",
    "truncate_bytes",
    "truncate_utf16",
    "oneline",
    "no_markers",
    "strip_control",
    "slack_escape",
    "join",
    "first",
    "len",
    "replace",
    "date",
    "strip_html",
    "html_to_text",
    "markdown_to_text",
    "contains",
    "pointer",
    "priority",
    "concat",
    "trim",
    "include",
    "eq",
    "ne",
    "gt",
    "gte",
    "lt",
    "lte",
    "and",
    "or",
    "not",
    "if",
    "unless",
    "each",
    "with",
    "lookup",
];

pub fn register(hb: &mut Handlebars) {
    hb.register_helper("json", Box::new(json_helper));
    hb.register_helper("default", Box::new(DefaultHelper));
    let helpers: [(&'static str, Compute); 22] = [
        ("oneline", |h, _| convert(h, oneline)),
        // A ticketing system's thread marker in incident text ([#3], [rtname #3]) made inert,
        // for a subject a system shows in the mails it sends (see render::markers).
        ("no_markers", |h, _| {
            convert(h, |s| super::markers::defang(s).into_owned())
        }),
        ("strip_control", |h, _| convert(h, strip_control)),
        ("slack_escape", |h, _| convert(h, slack_escape)),
        ("truncate_bytes", truncate_bytes),
        ("truncate_utf16", truncate_utf16),
        ("upper", |h, _| convert(h, |s| s.to_uppercase())),
        ("lower", |h, _| convert(h, |s| s.to_lowercase())),
        ("truncate", truncate),
        ("join", join),
        ("first", first),
        ("len", len),
        ("replace", replace),
        ("date", date),
        ("strip_html", |h, _| {
            convert_kept(h, "strip_html", strip_html)
        }),
        ("html_to_text", |h, _| {
            convert_kept(h, "html_to_text", html_to_text)
        }),
        ("markdown_to_text", |h, _| {
            convert_kept(h, "markdown_to_text", markdown_to_text)
        }),
        ("contains", contains),
        ("pointer", pointer),
        ("priority", priority),
        ("concat", |h, _| {
            let mut out = String::new();
            for p in h.params() {
                out.push_str(&text(p.value()));
            }
            Ok(Value::String(out))
        }),
        ("trim", |h, _| convert(h, |s| s.trim().to_string())),
    ];
    for (name, compute) in helpers {
        hb.register_helper(name, Box::new(ValueHelper { name, compute }));
    }
}

/// A helper of one text parameter that returns text.
fn convert(h: &Helper, f: fn(&str) -> String) -> Result<Value, HelperError> {
    Ok(Value::String(f(&text(arg(h, 0)?))))
}

/// [`convert`] for the costly conversions: the renders of one incident version convert each
/// of its texts once.
fn convert_kept(
    h: &Helper,
    helper: &'static str,
    f: fn(&str) -> String,
) -> Result<Value, HelperError> {
    let input = text(arg(h, 0)?);
    if input.len() < memo::MIN_CONVERT_BYTES {
        return Ok(Value::String(f(&input)));
    }
    let version = version_memo();
    if let Some(out) = version.as_ref().and_then(|v| v.converted(helper, &input)) {
        return Ok(Value::String(out));
    }
    let out = f(&input);
    if let Some(v) = version {
        v.keep_converted(helper, &input, &out);
    }
    Ok(Value::String(out))
}

/// A parameter's value. Strict, as the rest of the template is: a parameter naming a
/// variable the context does not have is an error naming it (only `default` forgives).
fn arg<'a>(h: &'a Helper, index: usize) -> Result<&'a Value, HelperError> {
    let p = h
        .param(index)
        .ok_or(HelperError::MissingParameter(index + 1))?;
    if p.is_value_missing() {
        return Err(match p.relative_path() {
            Some(path) => HelperError::NotInContext(path.clone()),
            None => HelperError::ParameterMissing,
        });
    }
    Ok(p.value())
}

/// The parameter at `index` if given (strictly checked), else `None`.
fn opt_arg<'a>(h: &'a Helper, index: usize) -> Result<Option<&'a Value>, HelperError> {
    if h.param(index).is_none() {
        return Ok(None);
    }
    arg(h, index).map(Some)
}

/// A value as text: strings as they are, null and missing as "", the rest as JSON.
pub fn text(v: &Value) -> Cow<'_, str> {
    match v {
        // Borrowed: helpers read their text parameters, most of them without keeping them.
        Value::String(s) => Cow::Borrowed(s),
        Value::Null => Cow::Borrowed(""),
        other => Cow::Owned(other.to_string()),
    }
}

fn is_blank(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.trim().is_empty(),
        _ => false,
    }
}

/// `{{default value "fallback"}}`: the value, or the fallback when it is missing, null or blank.
/// Returns the chosen value itself where it lies in the context or the template, so a long
/// text (`default incident.summary …`) is not copied.
struct DefaultHelper;

impl HelperDef for DefaultHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        ctx: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let fail = |e: HelperError| failed("default", e);
        bounds::check_budget().map_err(|e| fail(e.into()))?;
        arg(h, 1).map_err(fail)?;
        let chosen = match (h.param(0), h.param(1)) {
            (Some(p), _) if !p.is_value_missing() && !is_blank(p.value()) => p,
            (_, Some(fallback)) => fallback,
            (_, None) => return Err(fail(HelperError::MissingParameter(2))),
        };
        if let Value::String(s) = chosen.value() {
            bounds::check_output(s).map_err(|e| fail(e.into()))?;
        }
        Ok(borrowed(chosen, ctx).unwrap_or_else(|| ScopedJson::Derived(chosen.value().clone())))
    }
}

/// A parameter's value as a reference into the context (or the template's literal), when it
/// is one; `None` for values helpers computed.
fn borrowed<'rc>(p: &PathAndJson<'rc>, ctx: &'rc Context) -> Option<ScopedJson<'rc>> {
    if let Some(constant) = p.try_get_constant_value() {
        return Some(ScopedJson::Constant(constant));
    }
    let path = p.context_path()?;
    let found = path.iter().try_fold(ctx.data(), |v, segment| match v {
        Value::Object(m) => m.get(segment),
        Value::Array(a) => segment.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })?;
    // The path is the one the value was found at from the root; checked all the same.
    std::ptr::eq(found, p.value()).then(|| ScopedJson::Context(found, path.clone()))
}

/// `{{truncate text 100}}`: at most 100 characters, the last one `…` when cut. Counts
/// characters, never splitting one. `suffix="..."` changes the marker.
fn truncate(h: &Helper, _: &Context) -> Result<Value, HelperError> {
    let s = text(arg(h, 0)?);
    let max = arg(h, 1)?.as_u64().ok_or(HelperError::NotALength)? as usize;
    let suffix = h
        .hash_get("suffix")
        .map(|v| text(v.value()))
        .unwrap_or(Cow::Borrowed("…"));
    Ok(Value::String(truncate_chars(&s, max, &suffix)))
}

pub fn truncate_chars(s: &str, max: usize, suffix: &str) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let keep = max.saturating_sub(suffix.chars().count());
    let mut out = chars_prefix(s, keep).to_string();
    out.push_str(suffix);
    if out.chars().count() > max {
        // A suffix longer than the limit: cut it too.
        out = chars_prefix(&out, max).to_string();
    }
    out
}

/// The first `n` characters of `s` (all of it when shorter), as a slice: copied at once
/// rather than character by character.
fn chars_prefix(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((end, _)) => &s[..end],
        None => s,
    }
}

/// Text on one line: every run of white space (line breaks, tabs, U+2028/2029 included)
/// becomes one space, other control characters go, the ends are trimmed.
pub fn oneline(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut space = false;
    for ch in s.chars() {
        if ch.is_whitespace() {
            space = true;
        } else if !ch.is_control() {
            if space && !out.is_empty() {
                out.push(' ');
            }
            space = false;
            out.push(ch);
        }
    }
    out
}

/// Control characters removed, except line breaks and tabs (NUL and friends break many
/// ticketing databases).
pub fn strip_control(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control() || matches!(c, '\n' | '\t' | '\r'))
        .collect()
}

/// Slack's mrkdwn escaping: `&`, `<`, `>` as entities, so incident text can neither mention
/// `<!channel>` nor disguise a link.
pub fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// `{{truncate_bytes text 1000}}`: at most 1000 bytes of UTF-8, never splitting a character,
/// `…` (3 bytes) marking a cut; for limits counted in bytes.
fn truncate_bytes(h: &Helper, _: &Context) -> Result<Value, HelperError> {
    let s = text(arg(h, 0)?);
    let max = arg(h, 1)?.as_u64().ok_or(HelperError::NotALength)? as usize;
    if s.len() <= max {
        return Ok(Value::String(s.into_owned()));
    }
    let marker = "…";
    let mut cut = max.saturating_sub(marker.len());
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut out = s[..cut].to_string();
    if max >= marker.len() {
        out.push_str(marker);
    }
    Ok(Value::String(out))
}

/// `{{truncate_utf16 text 255}}`: at most 255 UTF-16 code units (as Jira and JavaScript count
/// length), never splitting a character, `…` marking a cut.
fn truncate_utf16(h: &Helper, _: &Context) -> Result<Value, HelperError> {
    let s = text(arg(h, 0)?);
    let max = arg(h, 1)?.as_u64().ok_or(HelperError::NotALength)? as usize;
    if s.encode_utf16().count() <= max {
        return Ok(Value::String(s.into_owned()));
    }
    let budget = max.saturating_sub(1);
    let mut used = 0;
    let mut out = String::new();
    for ch in s.chars() {
        if used + ch.len_utf16() > budget {
            break;
        }
        used += ch.len_utf16();
        out.push(ch);
    }
    if max >= 1 {
        out.push('…');
    }
    Ok(Value::String(out))
}

/// `{{join list ", "}}`: the items as text, separated.
fn join(h: &Helper, _: &Context) -> Result<Value, HelperError> {
    let sep = h
        .param(1)
        .map(|p| text(p.value()))
        .unwrap_or_else(|| ", ".into());
    Ok(Value::String(match arg(h, 0)? {
        Value::Array(items) => items.iter().map(text).collect::<Vec<_>>().join(&sep),
        other => text(other).into_owned(),
    }))
}

/// `{{first list}}`: the first item, or null.
fn first(h: &Helper, _: &Context) -> Result<Value, HelperError> {
    Ok(match arg(h, 0)? {
        Value::Array(items) => items.first().cloned().unwrap_or(Value::Null),
        other => other.clone(),
    })
}

/// `{{len x}}`: characters of a string, items of a list, keys of an object; 0 for null.
fn len(h: &Helper, _: &Context) -> Result<Value, HelperError> {
    let n = match arg(h, 0)? {
        Value::String(s) => s.chars().count(),
        Value::Array(a) => a.len(),
        Value::Object(o) => o.len(),
        Value::Null => 0,
        other => other.to_string().chars().count(),
    };
    Ok(Value::from(n))
}

/// `{{replace text "from" "to"}}`: every occurrence.
fn replace(h: &Helper, _: &Context) -> Result<Value, HelperError> {
    let s = text(arg(h, 0)?);
    let from = text(arg(h, 1)?);
    let to = text(arg(h, 2)?);
    if from.is_empty() {
        return Ok(Value::String(s.into_owned()));
    }
    // Refuse before building a result that many short matches would blow up.
    if to.len() > from.len() {
        let grows_by = occurrences(&s, &from).count() * (to.len() - from.len());
        if s.len().saturating_add(grows_by) > bounds::MAX_HELPER_OUTPUT_BYTES {
            return Err(bounds::Exceeded::Output.into());
        }
    }
    Ok(Value::String(replace_all(&s, &from, &to)))
}

/// The starts of the occurrences of `from` (not empty) in `s` that `str::replace` replaces:
/// left to right, not overlapping. Found by their first character, which the standard
/// library looks for with memchr; its general substring search was most of a render's time
/// on long texts (templates chain ten `replace` calls over a value).
fn occurrences<'a>(s: &'a str, from: &'a str) -> impl Iterator<Item = usize> + 'a {
    let first = from.chars().next();
    let mut at = 0;
    std::iter::from_fn(move || {
        let first = first?;
        loop {
            let i = at + s.get(at..)?.find(first)?;
            if s[i..].starts_with(from) {
                at = i + from.len();
                return Some(i);
            }
            at = i + first.len_utf8();
        }
    })
}

/// `s.replace(from, to)`, by [`occurrences`].
fn replace_all(s: &str, from: &str, to: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut last = 0;
    for i in occurrences(s, from) {
        out.push_str(&s[last..i]);
        out.push_str(to);
        last = i + from.len();
    }
    out.push_str(&s[last..]);
    out
}

/// `{{date value "%Y-%m-%d %H:%M %Z" "Europe/Paris"}}`: formats epoch seconds (fractional
/// too, number or numeric string) or an ISO 8601 / RFC 3339 time with a strftime pattern
/// (default RFC 3339) in a time zone (default UTC). A value that is no time is passed through
/// as it is, so an odd date never stops a ticket.
fn date(h: &Helper, _: &Context) -> Result<Value, HelperError> {
    let value = arg(h, 0)?.clone();
    let pattern = opt_arg(h, 1)?.map(text);
    let zone = match opt_arg(h, 2)?.map(text) {
        None => chrono_tz::UTC,
        Some(name) => name
            .parse::<chrono_tz::Tz>()
            .map_err(|_| HelperError::NotATimeZone(name.into_owned()))?,
    };
    let Some(instant) = parse_time(&value) else {
        return Ok(Value::String(text(&value).into_owned()));
    };
    let local = instant.with_timezone(&zone);
    Ok(Value::String(match pattern {
        None => local.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        Some(p) => {
            let items: Vec<chrono::format::Item> = chrono::format::StrftimeItems::new(&p).collect();
            if items.contains(&chrono::format::Item::Error) {
                return Err(HelperError::NotAPattern(p.into_owned()));
            }
            local.format_with_items(items.into_iter()).to_string()
        }
    }))
}

pub fn parse_time(v: &Value) -> Option<chrono::DateTime<chrono::Utc>> {
    let from_epoch = |secs: f64| {
        if !secs.is_finite() {
            return None;
        }
        let whole = secs.floor();
        // Microseconds: the precision the platform writes (`createtime_str`); finer digits of
        // an f64 epoch are float noise.
        let micros = ((secs - whole) * 1e6).round().min(999_999.0) as u32;
        let nanos = micros * 1000;
        chrono::DateTime::from_timestamp(whole as i64, nanos)
    };
    match v {
        Value::Number(n) => from_epoch(n.as_f64()?),
        Value::String(s) => {
            let s = s.trim();
            if let Ok(secs) = s.parse::<f64>() {
                return from_epoch(secs);
            }
            if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
                return Some(t.with_timezone(&chrono::Utc));
            }
            for pattern in ["%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%d %H:%M:%S%.f%z"] {
                if let Ok(t) = chrono::DateTime::parse_from_str(s, pattern) {
                    return Some(t.with_timezone(&chrono::Utc));
                }
            }
            // No offset written (the seed's `reactivates_at`): UTC, as the seed's times are.
            for pattern in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
                if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, pattern) {
                    return Some(t.and_utc());
                }
            }
            None
        }
        _ => None,
    }
}

/// The width html2text lays text out in: lines are not wrapped below it. Bounded, because
/// its column arithmetic adds widths (an unbounded one overflowed on a table of four cells).
const TEXT_WIDTH: usize = 1 << 20;

/// Tags removed, entities decoded, white space folded: one line of text. Reads at most
/// [`bounds::MAX_CONVERT_BYTES`] and [`bounds::MAX_HTML_DEPTH`] levels, saying so when it cuts.
pub fn strip_html(html: &str) -> String {
    let input = bounds::bound_html(html);
    let text = html2text::config::with_decorator(html2text::render::TrivialDecorator::new())
        .raw_mode(true)
        .string_from_read(input.text.as_bytes(), TEXT_WIDTH)
        .unwrap_or_else(|_| input.text.to_string());
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match &input.note {
        Some(note) => format!("{line} {note}").trim_start().to_string(),
        None => line,
    }
}

/// HTML as readable text: paragraphs and line breaks kept, lists as bullets, links as
/// footnotes. Bounded as [`strip_html`] is.
pub fn html_to_text(html: &str) -> String {
    let input = bounds::bound_html(html);
    // Tables are read cell by cell (raw mode): laid out in columns, every row is padded to
    // the widest cell, so a table of many rows and one wide cell comes out thousands of times
    // larger than it went in.
    let text = html2text::config::plain_no_decorate()
        .raw_mode(true)
        .string_from_read(input.text.as_bytes(), TEXT_WIDTH)
        .unwrap_or_else(|_| input.text.to_string());
    input.finish(tidy_lines(&text))
}

/// Markdown as plain text: emphasis and headings dropped, paragraphs and list items kept.
/// Reads at most [`bounds::MAX_CONVERT_BYTES`] and [`bounds::MAX_MARKDOWN_DEPTH`] levels.
pub fn markdown_to_text(markdown: &str) -> String {
    use pulldown_cmark::{Event, Parser, Tag, TagEnd};
    let input = bounds::bound_markdown(markdown);
    let mut out = String::new();
    let mut link_targets: Vec<String> = Vec::new();
    for event in Parser::new(&input.text) {
        match event {
            Event::Text(t) | Event::Code(t) | Event::InlineHtml(t) | Event::Html(t) => {
                out.push_str(&t)
            }
            Event::SoftBreak | Event::HardBreak => out.push('\n'),
            Event::Start(Tag::Item) => out.push_str("- "),
            Event::Start(Tag::Link { dest_url, .. }) => link_targets.push(dest_url.to_string()),
            Event::End(TagEnd::Link) => {
                if let Some(url) = link_targets.pop()
                    && !url.is_empty()
                    && !out.ends_with(url.as_str())
                {
                    out.push_str(&format!(" ({url})"));
                }
            }
            Event::End(
                TagEnd::Paragraph | TagEnd::Heading(_) | TagEnd::CodeBlock | TagEnd::BlockQuote(_),
            ) => out.push_str("\n\n"),
            Event::End(TagEnd::Item) | Event::End(TagEnd::List(_)) => out.push('\n'),
            Event::Rule => out.push_str("\n---\n"),
            _ => {}
        }
    }
    input.finish(tidy_lines(&out))
}

/// Trailing spaces dropped, runs of blank lines folded to one, ends trimmed.
fn tidy_lines(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut blank_run = 0;
    for line in text.lines().map(str::trim_end) {
        if line.is_empty() {
            blank_run += 1;
            if blank_run > 1 {
                continue;
            }
        } else {
            blank_run = 0;
        }
        out.push_str(line);
        out.push('\n');
    }
    out.trim().to_string()
}

/// `{{#if (contains haystack needle)}}`: a substring of a string, an item of a list, or a
/// key of an object.
fn contains(h: &Helper, _: &Context) -> Result<Value, HelperError> {
    let needle = arg(h, 1)?;
    let found = match arg(h, 0)? {
        Value::String(s) => s.contains(text(needle).as_ref()),
        Value::Array(items) => items.iter().any(|i| i == needle || text(i) == text(needle)),
        Value::Object(map) => map.contains_key(text(needle).as_ref()),
        _ => false,
    };
    Ok(Value::Bool(found))
}

/// `{{pointer value "/a/0/b"}}`, or `{{pointer "/a/0/b"}}` from the incident: the value at a
/// JSON pointer, or null. Reaches keys no Handlebars path can, such as `"deployment,"`.
fn pointer(h: &Helper, ctx: &Context) -> Result<Value, HelperError> {
    let (base, ptr) = match (opt_arg(h, 0)?, opt_arg(h, 1)?) {
        (Some(v), Some(p)) => (v, text(p)),
        (Some(p), None) => (ctx.data(), text(p)),
        _ => return Err(HelperError::NoPointer),
    };
    if !(ptr.is_empty() || ptr.starts_with('/')) {
        return Err(HelperError::NotAPointer(ptr.into_owned()));
    }
    Ok(base.pointer(&ptr).cloned().unwrap_or(Value::Null))
}

/// `{{priority}}`: the incident's threat rating mapped through the connector's `priorities`
/// (e.g. critical → "1"); `{{priority "high"}}` maps a rating given. A rating the map does not
/// name takes its `default` entry.
fn priority(h: &Helper, ctx: &Context) -> Result<Value, HelperError> {
    let root = ctx.data();
    let rating = match opt_arg(h, 0)? {
        Some(v) => ThreatRating::parse(&text(v)),
        None => ThreatRating::of_incident(root),
    };
    let map = root
        .pointer("/connector/priorities")
        .and_then(Value::as_object)
        .ok_or(HelperError::NoPriorities)?;
    let key = rating.map(ThreatRating::name);
    key.and_then(|k| map.get(k))
        .or_else(|| map.get("default"))
        .cloned()
        .ok_or_else(|| HelperError::NoPriority(key.unwrap_or("(none)").to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(template: &str, data: &Value) -> Result<String, String> {
        let mut hb = Handlebars::new();
        hb.set_strict_mode(true);
        hb.register_escape_fn(handlebars::no_escape);
        register(&mut hb);
        hb.render_template(template, data)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn text_helpers() {
        let d = json!({"s": "Hello Wörld", "n": null, "list": ["a", 1, true], "empty": ""});
        assert_eq!(
            render("{{upper s}}|{{lower s}}", &d).unwrap(),
            "HELLO WÖRLD|hello wörld"
        );
        assert_eq!(
            render(
                "{{default n \"x\"}}|{{default empty \"y\"}}|{{default s \"z\"}}",
                &d
            )
            .unwrap(),
            "x|y|Hello Wörld"
        );
        assert_eq!(render("{{default missing \"m\"}}", &d).unwrap(), "m");
        assert_eq!(
            render(
                "{{join list \" / \"}}|{{first list}}|{{len s}}|{{len list}}|{{len n}}",
                &d
            )
            .unwrap(),
            "a / 1 / true|a|11|3|0"
        );
        assert_eq!(
            render("{{replace s \"o\" \"0\"}}", &d).unwrap(),
            "Hell0 Wörld"
        );
        assert_eq!(
            render("{{trim \"  x \"}}{{concat \"a\" 1 \"b\"}}", &d).unwrap(),
            "xa1b"
        );
    }

    #[test]
    fn replace_finds_what_the_standard_library_finds() {
        let texts = [
            "",
            "a",
            "aaa",
            "aaaa",
            "abab",
            "{noformat}{no{noformat",
            "x\r\n\r\ny\r",
            "é€🚨é€",
            "\u{0}\u{0}a\u{0}",
            "{{{{{",
            "ababab",
        ];
        let patterns = [
            "a",
            "aa",
            "ab",
            "b",
            "{noformat",
            "{",
            "\r\n",
            "\r",
            "€",
            "🚨é",
            "\u{0}",
            "x",
        ];
        for t in texts {
            for p in patterns {
                assert_eq!(replace_all(t, p, "<>"), t.replace(p, "<>"), "{t:?} {p:?}");
                assert_eq!(
                    occurrences(t, p).count(),
                    t.matches(p).count(),
                    "{t:?} {p:?}"
                );
            }
        }
    }

    #[test]
    fn control_and_line_helpers() {
        assert_eq!(oneline("a\u{0}b\r\n\tc\u{2028}d\u{7}  "), "ab c d");
        assert_eq!(strip_control("a\u{0}b\nc\td\u{1b}[0m"), "ab\nc\td[0m");
        assert_eq!(
            slack_escape("<@U1> & <!here>"),
            "&lt;@U1&gt; &amp; &lt;!here&gt;"
        );
        let d = json!({"s": "😀😀😀", "e": "ééé"});
        assert_eq!(render("{{truncate_utf16 s 4}}", &d).unwrap(), "😀…");
        assert_eq!(render("{{truncate_bytes e 5}}", &d).unwrap(), "é…");
    }

    #[test]
    fn helper_parameters_are_strict_too() {
        let d = json!({"incident": {"summary": "x"}});
        let err = render("{{truncate incident.summry 10}}", &d).unwrap_err();
        assert!(err.contains("incident.summry"), "{err}");
        assert_eq!(
            render("{{default incident.summry \"y\"}}", &d).unwrap(),
            "y"
        );
    }

    #[test]
    fn truncate_counts_characters_and_keeps_within_the_limit() {
        assert_eq!(truncate_chars("héllo wörld", 5, "…"), "héll…");
        assert_eq!(truncate_chars("héllo", 5, "…"), "héllo");
        assert_eq!(truncate_chars("🚨🚨🚨🚨", 3, "…"), "🚨🚨…");
        assert_eq!(truncate_chars("abcdef", 2, "[cut]"), "[c");
        let d = json!({"s": "ÄÖÜäöü"});
        assert_eq!(render("{{truncate s 4}}", &d).unwrap(), "ÄÖÜ…");
        assert_eq!(render("{{truncate s 4 suffix=\"\"}}", &d).unwrap(), "ÄÖÜä");
    }

    #[test]
    fn dates_from_epoch_and_iso_in_zones() {
        let d = json!({"e": 1594153092.2202642, "iso": "2020-08-10T11:24:27.765796+00:00", "naive": "2020-08-18 08:00:11.136183", "bad": "15th Mar 2020"});
        for (template, want) in [
            ("{{date e \"%Y-%m-%d %H:%M:%S\"}}", "2020-07-07 20:18:12"),
            ("{{date e \"%H:%M %Z\" \"Europe/Paris\"}}", "22:18 CEST"),
            ("{{date iso \"%d/%m/%Y %H:%M\"}}", "10/08/2020 11:24"),
            ("{{date naive \"%H:%M:%S\"}}", "08:00:11"),
            ("{{date \"1597058547\"}}", "2020-08-10T11:22:27Z"),
        ] {
            assert_eq!(render(template, &d).unwrap(), want, "{template}");
        }
        assert_eq!(render("{{date bad \"%Y\"}}", &d).unwrap(), "15th Mar 2020");
        assert!(
            render("{{date e \"%Y\" \"Mars/Olympus\"}}", &d)
                .unwrap_err()
                .contains("time zone")
        );
    }

    #[test]
    fn html_and_markdown_to_text() {
        let html = "<p><strong>Attack Detail</strong>:<br>Attacker: 1.2.3.4 &amp; friends</p><ul><li>one</li><li>two</li></ul>";
        assert_eq!(
            strip_html(html),
            "Attack Detail: Attacker: 1.2.3.4 & friends one two"
        );
        let text = html_to_text(html);
        assert!(
            text.starts_with("Attack Detail:\nAttacker: 1.2.3.4 & friends"),
            "{text}"
        );
        assert!(text.contains("* one\n* two"), "{text}");
        let md = "**Attack Detail**:  \n**Attacker:** 172.31.37.117 \n\n- a\n- [b](https://x.test/)\n\n# Head";
        assert_eq!(
            markdown_to_text(md),
            "Attack Detail:\nAttacker: 172.31.37.117\n\n- a\n- b (https://x.test/)\n\nHead"
        );
    }

    /// Found by the convert fuzz target: laid out in columns, a table of many rows and one
    /// wide cell came out thousands of times larger than it went in; read cell by cell with
    /// an unbounded width, four cells overflowed html2text's column arithmetic.
    #[test]
    fn tables_come_out_cell_by_cell_and_small() {
        let four = "<table><tr><td>a<td>a<td>a<td>a</table>";
        assert_eq!(
            html_to_text(four).split_whitespace().collect::<Vec<_>>(),
            ["a"; 4]
        );
        assert_eq!(strip_html(four), "a a a a");
        let wide = "x".repeat(3_000);
        let rows = format!(
            "<table>{}</table>",
            format!("<tr><td>{wide}<td>y").repeat(40)
        );
        let out = html_to_text(&rows);
        assert!(
            out.len() < rows.len() * 2,
            "{} bytes out of {}",
            out.len(),
            rows.len()
        );
        let many = format!("<table><tr>{}</table>", "<td>c".repeat(1_000));
        assert_eq!(strip_html(&many).split(' ').count(), 1_000);
    }

    #[test]
    fn logic_pointer_contains() {
        let d = json!({"deployment,": "AWS", "sources": ["LOG"], "s": "brute force", "n": 3});
        assert_eq!(render("{{pointer \"/deployment,\"}}", &d).unwrap(), "AWS");
        assert_eq!(
            render(
                "{{#if (contains sources \"LOG\")}}y{{/if}}{{#if (contains s \"force\")}}z{{/if}}",
                &d
            )
            .unwrap(),
            "yz"
        );
        assert_eq!(
            render("{{#if (and (gt n 2) (not (eq s \"x\")))}}ok{{/if}}", &d).unwrap(),
            "ok"
        );
    }

    #[test]
    fn priority_maps_the_rating() {
        let d = json!({"incident": {"threatRating": "High"}, "connector": {"priorities": {"high": "2", "default": "4"}}});
        assert_eq!(render("{{priority}}", &d).unwrap(), "2");
        assert_eq!(render("{{priority \"info\"}}", &d).unwrap(), "4");
        let none = json!({"connector": {"name": "x"}});
        assert!(
            render("{{priority}}", &none)
                .unwrap_err()
                .contains("priorities")
        );
    }
}
