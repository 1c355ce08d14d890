//! Render: turns an incident into the exact request a connector sends.
//!
//! Templates are Handlebars in strict mode (a missing variable is an error that names the
//! template, line and variable). How interpolated text is escaped follows the template's file
//! name: `*.json.hbs` escapes for a JSON string, `*.html.hbs` for HTML, anything else not at all.
//! URL templates percent-encode what they interpolate, so incident text cannot change the
//! path or query. Handlebars has one escape function per registry, hence one registry per kind.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};

pub mod bounds;
pub mod derive;
pub mod helpers;
mod key;
pub mod markers;
pub mod memo;
mod partial;

use handlebars::{Context, Handlebars, RenderErrorReason};
use serde_json::{Map, Value};

use crate::connector::{Connector, HttpRequest, MailMessage, SmtpTarget, Target, TemplatePath};
use crate::model::{Completion, Event, TicketFacts};
use memo::VersionMemo;

/// A template that does not compile or does not render, located in its file.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{template}{}: {reason}", location(*.line, *.column))]
pub struct RenderError {
    /// The template file as the config names it, or `connector NAME url` / `… header X`.
    pub template: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub reason: String,
}

impl RenderError {
    /// An error of a whole template (or connector setting), with no line to point at.
    pub fn unlocated(template: impl Into<String>, reason: impl Into<String>) -> RenderError {
        RenderError {
            template: template.into(),
            line: None,
            column: None,
            reason: reason.into(),
        }
    }
}

/// A template that does not compile, and the connector it belongs to (none: a partial).
#[derive(Debug, Clone)]
pub struct CompileError {
    pub connector: Option<String>,
    pub error: RenderError,
}

/// A render asked of a connector whose target does not send that kind of thing.
fn wrong_target(connector: &Connector, why: &str) -> RenderError {
    RenderError::unlocated(
        format!("connector {}", connector.name),
        format!("the connector cannot render this: {why}"),
    )
}

fn location(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(":{l}:{c}"),
        (Some(l), None) => format!(":{l}"),
        _ => String::new(),
    }
}

/// How interpolated values are escaped, chosen by the template's file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escape {
    Json,
    Html,
    None,
    Url,
}

impl Escape {
    pub fn for_file(name: &str) -> Escape {
        let name = name.to_ascii_lowercase();
        if name.ends_with(".json.hbs") {
            Escape::Json
        } else if name.ends_with(".html.hbs") {
            Escape::Html
        } else {
            Escape::None
        }
    }

    fn content_type(self) -> Option<&'static str> {
        match self {
            Escape::Json => Some("application/json"),
            Escape::Html => Some("text/html; charset=utf-8"),
            Escape::None | Escape::Url => None,
        }
    }
}

/// Escapes text for the inside of a JSON string literal. Every control character is escaped,
/// so the result is valid JSON whatever the incident carries.
pub fn escape_json_string(text: &str) -> String {
    // Every character to escape is found by its first byte (U+2028 and U+2029 are E2 80 A8/A9
    // in UTF-8), so the text is copied in runs between them, not character by character.
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len() + 8);
    let (mut i, mut run) = (0, 0);
    while i < bytes.len() {
        let (width, escape) = match bytes[i] {
            b'"' => (1, Escaped::Text("\\\"")),
            b'\\' => (1, Escaped::Text("\\\\")),
            b'\n' => (1, Escaped::Text("\\n")),
            b'\r' => (1, Escaped::Text("\\r")),
            b'\t' => (1, Escaped::Text("\\t")),
            b @ (0x00..=0x1f | 0x7f) => (1, Escaped::Unicode(u32::from(b))),
            0xe2 if bytes.get(i + 1) == Some(&0x80)
                && matches!(bytes.get(i + 2), Some(0xa8 | 0xa9)) =>
            {
                let low = u32::from(bytes[i + 2] - 0xa8);
                (3, Escaped::Unicode(0x2028 + low))
            }
            _ => {
                i += 1;
                continue;
            }
        };
        out.push_str(&text[run..i]);
        match escape {
            Escaped::Text(t) => out.push_str(t),
            // One copy of a ready escape: text made of control characters is all escapes.
            Escaped::Unicode(code @ 0..=0x1f) => out.push_str(CONTROL_ESCAPES[code as usize]),
            Escaped::Unicode(code) => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.push_str("\\u");
                for shift in [12, 8, 4, 0] {
                    out.push(char::from(HEX[((code >> shift) & 0xf) as usize]));
                }
            }
        }
        i += width;
        run = i;
    }
    out.push_str(&text[run..]);
    out
}

/// `\\u0000` … `\\u001f`.
const CONTROL_ESCAPES: [&str; 32] = [
    "\\u0000", "\\u0001", "\\u0002", "\\u0003", "\\u0004", "\\u0005", "\\u0006", "\\u0007",
    "\\u0008", "\\u0009", "\\u000a", "\\u000b", "\\u000c", "\\u000d", "\\u000e", "\\u000f",
    "\\u0010", "\\u0011", "\\u0012", "\\u0013", "\\u0014", "\\u0015", "\\u0016", "\\u0017",
    "\\u0018", "\\u0019", "\\u001a", "\\u001b", "\\u001c", "\\u001d", "\\u001e", "\\u001f",
];

enum Escaped {
    Text(&'static str),
    Unicode(u32),
}

fn escape_url_component(text: &str) -> String {
    if text == "." || text == ".." {
        // A URL parser resolves these (encoded or not) as path steps: refused after rendering.
        return DOT_SEGMENT_MARKER.to_string();
    }
    percent_encoding::utf8_percent_encode(text, URL_COMPONENT).to_string()
}

/// Stands in for an interpolated `.` or `..`; a URL containing it is refused.
const DOT_SEGMENT_MARKER: &str = "\u{fffe}dot-segment\u{fffe}";

/// Everything but RFC 3986 unreserved characters is encoded.
const URL_COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn registry(escape: Escape) -> Handlebars<'static> {
    let mut hb = Handlebars::new();
    hb.set_strict_mode(true);
    hb.set_prevent_indent(true);
    match escape {
        Escape::Json => hb.register_escape_fn(escape_json_string),
        Escape::Html => hb.register_escape_fn(handlebars::html_escape),
        Escape::None => hb.register_escape_fn(handlebars::no_escape),
        Escape::Url => hb.register_escape_fn(escape_url_component),
    }
    helpers::register(&mut hb);
    hb
}

/// The request a connector sends for one delivery, before signing.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderedRequest {
    pub method: reqwest::Method,
    pub url: String,
    /// Lower-case names, in a stable order.
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

/// An email an SMTP connector sends for one delivery, before it becomes a MIME message.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderedEmail {
    /// On one line: line breaks and control characters in incident text become spaces.
    pub subject: String,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub text: String,
    pub html: Option<String>,
}

/// Tells renderers apart in what incident versions keep (see [`memo`]).
static NEXT_RENDERER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Compiled templates of every connector.
pub struct Renderer {
    /// Partial name → its file, so an error inside a partial names the file.
    partial_files: BTreeMap<String, String>,
    json: Handlebars<'static>,
    html: Handlebars<'static>,
    plain: Handlebars<'static>,
    url: Handlebars<'static>,
    /// Each connector's correlation key, when it can be read off the incident directly.
    keys: BTreeMap<String, key::KeyPlan>,
}

/// What the gateway adds to the template context beside the incident's own fields.
#[derive(Debug, Clone)]
pub struct DeliveryFacts<'a> {
    pub event: Event,
    pub delivery_id: &'a str,
    pub attempt: u32,
    pub connector: &'a Connector,
    /// RFC 3339 time the gateway accepted this version of the incident.
    pub received_at: &'a str,
    /// The ticket this delivery belongs to, as far as it is known.
    pub ticket: TicketFacts,
    /// How the incident was completed, for `completed` deliveries.
    pub completion: Option<Completion>,
    /// The incidents a collection window gathered into this delivery; `None` without one.
    pub collected: Option<&'a Collected>,
}

/// What a collection window gathered, as templates read it: `collected`, the incidents in the
/// order they arrived (each the incident JSON, at its latest version; at most
/// [`crate::store::rules::COLLECTED_SHOWN`]), and `collected_count`, how many in all.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Collected {
    pub incidents: Vec<Value>,
    pub count: u32,
}

/// The context a template sees: the incident's fields at the top level, then the gateway's
/// own under names the incident schema does not use: `event`, `delivery` (`id`, `attempt`,
/// `connector`), `connector` (`name`, `priorities`, `vars`), `ticket` (`key`, `id`, `url`),
/// `completion` (`reason_code`, `notes`, `status_change_time`, or null), `collected` and
/// `collected_count` (a collection window's incidents and their number; `[]` and 0 without
/// one), `received_at`,
/// `payload` (the incident as received, for templates that forward it whole) and the derived
/// fields of [`derive`].
pub fn context(incident: &Value, facts: &DeliveryFacts) -> Value {
    IncidentContext::new(incident)
        .into_template_context(facts)
        .into_value()
}

/// The names of the gateway's facts in a context, in the order they are added.
pub(crate) const FACTS: [&str; 9] = [
    "event",
    "delivery",
    "connector",
    "received_at",
    "ticket",
    "completion",
    "assignment",
    // Per delivery, not per incident version: named here so that no part of a template that
    // reads them is kept per version (`memo`).
    "collected",
    "collected_count",
];

/// The part of a [`context`] that depends only on the incident version: its fields, the
/// derived fields and `payload`. Computed once per version and shared (it is immutable);
/// each attempt's [`TemplateContext`] starts from it.
#[derive(Debug, Clone)]
pub struct IncidentContext {
    /// The whole context with every fact null, so that setting them keeps the order of keys
    /// a context built in one go has (a key is replaced where it stands).
    base: Map<String, Value>,
    /// What the renders of this version share (partials of the incident alone, conversions).
    memo: Arc<VersionMemo>,
}

impl IncidentContext {
    pub fn new(incident: &Value) -> IncidentContext {
        let mut base = match incident {
            Value::Object(m) => m.clone(),
            _ => Map::new(),
        };
        base.extend(derive::derived(incident));
        for name in FACTS {
            base.insert(name.into(), Value::Null);
        }
        base.insert("payload".into(), incident.clone());
        IncidentContext {
            base,
            memo: Arc::default(),
        }
    }

    /// The context of one delivery: a copy of this one with the delivery's facts.
    pub fn with_facts(&self, facts: &DeliveryFacts) -> TemplateContext {
        self.clone().into_template_context(facts)
    }

    /// The context of one delivery, when this incident version has no other (no copy).
    pub fn into_template_context(self, facts: &DeliveryFacts) -> TemplateContext {
        let mut context = TemplateContext {
            context: Context::from(Value::Object(self.base)),
            memo: Some(self.memo),
        };
        context.set_facts(facts);
        context
    }
}

/// A [`context`] as Handlebars reads it. Every template of a render borrows it, and it can be
/// reused for another delivery of the same incident version by [`TemplateContext::set_facts`]
/// (which is what correlation keys, one per connector, do).
#[derive(Debug, Clone)]
pub struct TemplateContext {
    context: Context,
    /// Shared with the other contexts of the incident version; facts never reach it.
    memo: Option<Arc<VersionMemo>>,
}

impl TemplateContext {
    pub fn new(incident: &Value, facts: &DeliveryFacts) -> TemplateContext {
        IncidentContext::new(incident).into_template_context(facts)
    }

    /// The context as JSON.
    pub fn data(&self) -> &Value {
        self.context.data()
    }

    pub fn into_value(self) -> Value {
        let mut context = self.context;
        std::mem::take(context.data_mut())
    }

    /// Replaces the gateway's facts with those of another delivery, in place: nothing that
    /// depends on the incident alone is built again.
    pub fn set_facts(&mut self, facts: &DeliveryFacts) {
        // Where the ticket goes depends on the incident and the connector: read off the
        // incident this context holds (`payload`).
        let assignment = {
            let incident = self.context.data().get("payload").unwrap_or(&Value::Null);
            let rules = &facts.connector.assignment;
            match rules.is_empty() {
                true => crate::assign::Assignment::default(),
                false => rules.assign(&facts.connector.name, incident),
            }
        };
        // Without a window: an empty list (strict mode refuses `{{#each}}` over null).
        let (collected, collected_count) = match facts.collected {
            Some(c) => (Value::Array(c.incidents.clone()), Value::from(c.count)),
            None => (Value::Array(Vec::new()), Value::from(0)),
        };
        let values: [Value; 9] = [
            Value::String(facts.event.as_str().into()),
            serde_json::json!({
                "id": facts.delivery_id,
                "attempt": facts.attempt,
                "connector": facts.connector.name,
            }),
            serde_json::json!({
                "name": facts.connector.name,
                "priorities": facts.connector.priorities,
                "vars": facts.connector.vars,
            }),
            Value::String(facts.received_at.into()),
            ticket_value(&facts.connector.name, &facts.ticket),
            serde_json::to_value(&facts.completion).unwrap_or(Value::Null),
            serde_json::json!({ "group": assignment.group, "owner": assignment.owner }),
            collected,
            collected_count,
        ];
        let data = self.context.data_mut();
        if !data.is_object() {
            *data = Value::Object(Map::new());
        }
        if let Value::Object(map) = data {
            for (name, value) in FACTS.into_iter().zip(values) {
                match map.get_mut(name) {
                    Some(slot) => *slot = value,
                    None => {
                        map.insert(name.into(), value);
                    }
                }
            }
        }
    }
}

/// `ticket` in a context: `key`, `id`, `url`, and `ref`, the key as a token safe anywhere.
fn ticket_value(connector: &str, ticket: &TicketFacts) -> Value {
    serde_json::json!({
        "key": ticket.key,
        "id": ticket.id,
        "url": ticket.url,
        "ref": ticket_ref(connector, &ticket.key),
        "reopened": ticket.reopened,
    })
}

/// A token that names the connector's ticket for a correlation key: `igw-` and 32 hex digits
/// of SHA-256 over both. The `created` request stores it in the target (a field, a label) and
/// the lookup searches for it: it is the same for every incident of the key, safe inside any
/// query language (JQL, TicketSQL, ServiceNow's encoded queries) and in a Jira label, which
/// the key itself — incident text — is not, and two connectors to one system never find each
/// other's tickets.
pub fn ticket_ref(connector: &str, key: &str) -> String {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    hash.update(connector.as_bytes());
    hash.update([0]);
    hash.update(key.as_bytes());
    let digest = hash.finalize();
    let mut out = String::with_capacity(36);
    out.push_str("igw-");
    for byte in &digest[..16] {
        let _ = std::fmt::Write::write_fmt(&mut out, format_args!("{byte:02x}"));
    }
    out
}

/// An empty context (null): a placeholder.
impl Default for TemplateContext {
    fn default() -> TemplateContext {
        TemplateContext {
            context: Context::null(),
            memo: None,
        }
    }
}

impl From<Value> for TemplateContext {
    fn from(value: Value) -> TemplateContext {
        TemplateContext {
            context: Context::from(value),
            memo: Some(Arc::default()),
        }
    }
}

/// What the render functions accept as the context: a [`TemplateContext`], borrowed, or any
/// JSON value (copied into one).
pub trait AsContext {
    fn as_context(&self) -> Cow<'_, Context>;

    /// What renders of the same incident version share, if this context knows its version.
    fn memo(&self) -> Option<Arc<VersionMemo>> {
        None
    }
}

impl AsContext for TemplateContext {
    fn as_context(&self) -> Cow<'_, Context> {
        Cow::Borrowed(&self.context)
    }

    fn memo(&self) -> Option<Arc<VersionMemo>> {
        self.memo.clone()
    }
}

impl AsContext for Value {
    fn as_context(&self) -> Cow<'_, Context> {
        // What `Context::wraps` made of it, without serializing.
        Cow::Owned(Context::from(self.clone()))
    }
}

/// What a request template belongs to: an event's request, or the connector's lookup.
const LOOKUP: &str = "lookup";

fn url_name(connector: &str, part: &str) -> String {
    format!("connector {connector} {part} url")
}

fn header_name(connector: &str, part: &str, header: &str) -> String {
    format!("connector {connector} {part} header {header}")
}

fn mail_name(connector: &str, event: Event, part: &str) -> String {
    format!("connector {connector} {} {part}", event.as_str())
}

fn key_name(connector: &str) -> String {
    format!("connector {connector} correlation_key")
}

/// A tenant's own key template on a connector (`per_tenant.NAME.correlation_key`).
fn tenant_key_name(connector: &str, tenant: &str) -> String {
    format!("connector {connector} correlation_key tenant {tenant}")
}

/// The key template that applies to an incident of `account` on `connector`.
fn key_name_for(connector: &Connector, account: Option<i64>) -> String {
    match connector.tenant_settings(account) {
        Some(s) if s.correlation_key.is_some() => tenant_key_name(&connector.name, &s.tenant),
        _ => key_name(&connector.name),
    }
}

fn from_template_error(name: &str, e: handlebars::TemplateError) -> RenderError {
    let (line, column) = match e.pos() {
        Some((l, c)) => (Some(l), Some(c)),
        None => (None, None),
    };
    RenderError {
        template: name.to_string(),
        line,
        column,
        reason: e.reason().to_string(),
    }
}

/// A compile error, located: Handlebars reports an unclosed block where the file ends, so
/// name the block's opening line instead.
fn compile_error(name: &str, text: &str, e: handlebars::TemplateError) -> RenderError {
    let mut err = from_template_error(name, e);
    if let Some((block, line, column)) = unclosed_block(text) {
        err.line = Some(line);
        err.column = Some(column);
        err.reason = format!("block `{{{{#{block}}}}}` is never closed ({})", err.reason);
    }
    err
}

fn from_render_error(name: &str, e: handlebars::RenderError) -> RenderError {
    let reason = match e.reason() {
        RenderErrorReason::MissingVariable(Some(path)) if path.starts_with("connector.vars.") => {
            format!(
                "`{path}` is not set: add `{}` to the connector's vars",
                path.trim_start_matches("connector.vars.")
            )
        }
        RenderErrorReason::MissingVariable(Some(path)) => {
            format!("variable `{path}` is not in the incident (strict mode)")
        }
        RenderErrorReason::MissingVariable(None) => {
            "a variable is not in the incident (strict mode)".to_string()
        }
        // A helper's refusal reads as `helper: why`, without Handlebars' wrapper words.
        RenderErrorReason::NestedError(inner) => inner.to_string(),
        other => other.to_string(),
    };
    RenderError {
        template: e.template_name.clone().unwrap_or_else(|| name.to_string()),
        line: e.line_no,
        column: e.column_no,
        reason,
    }
}

/// The innermost block helper (`{{#name …}}`) left open at the end of `text`, with its line
/// and column.
fn unclosed_block(text: &str) -> Option<(String, usize, usize)> {
    // Compiled once: check and the admin API report compile errors of many templates.
    static TAG: OnceLock<Option<regex::Regex>> = OnceLock::new();
    let tag = TAG
        .get_or_init(|| regex::Regex::new(r"\{\{~?\s*([#/])\s*([A-Za-z_][\w-]*)").ok())
        .as_ref()?;
    let mut open: Vec<(String, usize)> = Vec::new();
    for m in tag.captures_iter(text) {
        let (Some(whole), Some(kind), Some(name)) = (m.get(0), m.get(1), m.get(2)) else {
            continue;
        };
        if kind.as_str() == "#" {
            open.push((name.as_str().to_string(), whole.start()));
        } else if let Some(pos) = open.iter().rposition(|(n, _)| n == name.as_str()) {
            open.truncate(pos);
        }
    }
    let (name, offset) = open.pop()?;
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count() + 1)
        .unwrap_or(1);
    Some((name, line, column))
}

struct Partial {
    name: String,
    shown: String,
    text: String,
}

/// Every `*.hbs` in `dir` is a partial named by its file name up to the first dot
/// (`summary.txt.hbs` → `{{> summary}}` and `{{include "summary"}}`), usable from every
/// template. `{{> name}}` takes the escaping of the template that includes it.
fn read_partials(dir: &std::path::Path) -> Result<Vec<Partial>, RenderError> {
    let unreadable = |reason: String| RenderError::unlocated(dir.display().to_string(), reason);
    let entries =
        std::fs::read_dir(dir).map_err(|e| unreadable(format!("cannot list partials: {e}")))?;
    let mut files: Vec<std::path::PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "hbs"))
        .collect();
    files.sort();
    let mut partials = Vec::new();
    for file in files {
        let Some(file_name) = file.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let shown = file.display().to_string();
        let text = std::fs::read_to_string(&file)
            .map_err(|e| unreadable(format!("cannot read {shown}: {e}")))?;
        partials.push(Partial {
            name: file_name.split('.').next().unwrap_or(file_name).to_string(),
            shown,
            text,
        });
    }
    Ok(partials)
}

impl Renderer {
    /// Reads the partials in `partials_dir` and compiles every connector's templates; the
    /// first error is returned.
    pub fn new(
        partials_dir: Option<&Path>,
        connectors: &[Connector],
    ) -> Result<Renderer, RenderError> {
        let (renderer, mut errors) = Renderer::build(partials_dir, connectors);
        match errors.is_empty() {
            true => Ok(renderer),
            false => Err(errors.swap_remove(0).error),
        }
    }

    /// As [`Renderer::new`], compiling everything that compiles and naming every template that
    /// does not (for `check`). A connector with an error in the list is not fit to render.
    pub fn build(
        partials_dir: Option<&Path>,
        connectors: &[Connector],
    ) -> (Renderer, Vec<CompileError>) {
        let mut errors = Vec::new();
        let shared = |error| CompileError {
            connector: None,
            error,
        };
        let read = match partials_dir {
            Some(dir) => read_partials(dir),
            None => Ok(vec![]),
        };
        let mut partials = match read {
            Ok(p) => p,
            Err(e) => {
                errors.push(shared(e));
                vec![]
            }
        };
        // A partial that does not compile is named once, and left out.
        partials.retain(|p| match handlebars::template::Template::compile(&p.text) {
            Ok(_) => true,
            Err(e) => {
                errors.push(shared(compile_error(&p.shown, &p.text, e)));
                false
            }
        });
        // `{{include "name"}}` renders a partial as plain text into a value, which the
        // including template then escapes for its own content type. So a multi-line partial
        // can fill a JSON string, which `{{> name}}` (raw text) cannot.
        let mut text = registry(Escape::None);
        for p in &partials {
            // Each compiled above: these cannot fail.
            let _ = text.register_partial(&p.name, &p.text);
            let _ = text.register_template_string(&p.name, &p.text);
        }
        // Which partials read the incident alone: their text is kept per incident version,
        // under this renderer's id (another renderer may have other partials of those names).
        let id = NEXT_RENDERER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let incident_only = Arc::new(memo::incident_only(&text));
        partial::rewrite(&mut text, "text", id, &incident_only);
        text.register_helper(
            "include",
            Box::new(helpers::Include::within(id, incident_only.clone())),
        );
        // `include` renders a partial as the template a render starts from: its parts that
        // read the incident alone are kept too (`{{> incident_text}}` in `update_note`).
        let names: Vec<String> = text.get_templates().keys().cloned().collect();
        memo::wrap_roots(&mut text, "text", &names, &incident_only, id);
        let text = Arc::new(text);
        let mut r = Renderer {
            partial_files: partials
                .iter()
                .map(|p| (p.name.clone(), p.shown.clone()))
                .collect(),
            json: registry(Escape::Json),
            html: registry(Escape::Html),
            plain: registry(Escape::None),
            url: registry(Escape::Url),
            keys: BTreeMap::new(),
        };
        for hb in [&mut r.json, &mut r.html, &mut r.plain] {
            hb.register_helper(
                "include",
                Box::new(helpers::Include::new(
                    id,
                    text.clone(),
                    incident_only.clone(),
                )),
            );
            for p in &partials {
                let _ = hb.register_partial(&p.name, &p.text);
            }
        }
        for c in connectors {
            let mut found = Vec::new();
            r.add_connector(c, &mut found);
            errors.extend(found.into_iter().map(|error| CompileError {
                connector: Some(c.name.clone()),
                error,
            }));
        }
        for (tag, hb) in [
            ("json", &mut r.json),
            ("html", &mut r.html),
            ("plain", &mut r.plain),
            ("url", &mut r.url),
        ] {
            partial::rewrite(hb, tag, id, &incident_only);
        }
        // The templates a render starts from (not the partials): their parts that read the
        // incident alone are kept per incident version.
        for (tag, hb) in [
            ("json", &mut r.json),
            ("html", &mut r.html),
            ("plain", &mut r.plain),
            ("url", &mut r.url),
        ] {
            let roots: Vec<String> = hb
                .get_templates()
                .keys()
                .filter(|n| !r.partial_files.contains_key(*n))
                .cloned()
                .collect();
            memo::wrap_roots(hb, tag, &roots, &incident_only, id);
        }
        r.keys = connectors
            .iter()
            .flat_map(|c| {
                let tenants = c
                    .per_tenant
                    .values()
                    .filter(|s| s.correlation_key.is_some())
                    .map(|s| tenant_key_name(&c.name, &s.tenant));
                std::iter::once(key_name(&c.name)).chain(tenants)
            })
            .map(|name| {
                let plan = key::KeyPlan::of(&r.plain, &name);
                (name, plan)
            })
            .collect();
        (r, errors)
    }

    /// Compiles every template of `c`; each that does not compile goes to `errors`.
    fn add_connector(&mut self, c: &Connector, errors: &mut Vec<RenderError>) {
        let key = key_name(&c.name);
        if let Err(e) = self
            .plain
            .register_template_string(&key, &c.correlation_key)
        {
            errors.push(from_template_error(&key, e));
        }
        for settings in c.per_tenant.values() {
            if let Some(template) = &settings.correlation_key {
                let key = tenant_key_name(&c.name, &settings.tenant);
                if let Err(e) = self.plain.register_template_string(&key, template) {
                    errors.push(from_template_error(&key, e));
                }
            }
        }
        if let Some(lookup) = c.lookup() {
            self.add_url_and_headers(&c.name, LOOKUP, &lookup.url, &lookup.headers, errors);
        }
        for event in [Event::Created, Event::Updated, Event::Completed] {
            let Some(template) = c.template(event) else {
                continue;
            };
            if let Err(e) = self.add_template_file(template) {
                // Named once, though several events share the file.
                if !errors.iter().any(|seen| seen.to_string() == e.to_string()) {
                    errors.push(e);
                }
            }
            match &c.target {
                Target::Smtp(smtp) => {
                    if let Some(message) = smtp.messages.get(event) {
                        self.add_mail_parts(&c.name, smtp, event, message, errors);
                    }
                }
                Target::Http(http) => {
                    if let Some(request) = http.requests.get(event) {
                        self.add_request_parts(&c.name, event, request, errors);
                    }
                }
            }
        }
    }

    /// An HTTP request's URL and header templates.
    fn add_request_parts(
        &mut self,
        connector: &str,
        event: Event,
        request: &HttpRequest,
        errors: &mut Vec<RenderError>,
    ) {
        self.add_url_and_headers(
            connector,
            event.as_str(),
            &request.url,
            &request.headers,
            errors,
        )
    }

    /// The URL and header templates of an event's request or of the lookup (`part`).
    fn add_url_and_headers(
        &mut self,
        connector: &str,
        part: &str,
        url: &str,
        headers: &BTreeMap<String, String>,
        errors: &mut Vec<RenderError>,
    ) {
        let name = url_name(connector, part);
        if let Err(e) = self.url.register_template_string(&name, url) {
            errors.push(from_template_error(&name, e));
        }
        for (header, value) in headers {
            let hn = header_name(connector, part, header);
            if let Err(e) = self.plain.register_template_string(&hn, value) {
                errors.push(from_template_error(&hn, e));
            }
        }
    }

    fn add_template_file(&mut self, path: &TemplatePath) -> Result<(), RenderError> {
        let name = &path.as_written;
        if self.body_registry(name).has_template(name) {
            return Ok(());
        }
        let text = std::fs::read_to_string(&path.resolved).map_err(|e| {
            RenderError::unlocated(
                name.clone(),
                format!("cannot read {}: {e}", path.resolved.display()),
            )
        })?;
        self.body_registry_mut(name)
            .register_template_string(name, &text)
            .map_err(|e| compile_error(name, &text, e))
    }

    /// The body template `path` (as written in the config) replaced by `text`, as if its
    /// file said that: the console previews an edit before the admin saves it.
    pub fn replace_template(&mut self, path: &TemplatePath, text: &str) -> Result<(), RenderError> {
        let name = &path.as_written;
        self.body_registry_mut(name)
            .register_template_string(name, text)
            .map_err(|e| compile_error(name, text, e))
    }

    /// An email's HTML body, subject, subject tag and recipient templates.
    fn add_mail_parts(
        &mut self,
        connector: &str,
        smtp: &SmtpTarget,
        event: Event,
        message: &MailMessage,
        errors: &mut Vec<RenderError>,
    ) {
        if let Some(html) = &message.html_template
            && let Err(e) = self.add_template_file(html)
            && !errors.iter().any(|seen| seen.to_string() == e.to_string())
        {
            errors.push(e);
        }
        let mut parts: Vec<(String, &str)> =
            vec![(mail_name(connector, event, "subject"), &message.subject)];
        if let Some(tag) = &smtp.subject_tag {
            parts.push((mail_name(connector, event, "subject_tag"), tag));
        }
        for (i, to) in smtp.to.iter().enumerate() {
            parts.push((mail_name(connector, event, &format!("to {i}")), to));
        }
        for (i, cc) in smtp.cc.iter().enumerate() {
            parts.push((mail_name(connector, event, &format!("cc {i}")), cc));
        }
        for (name, text) in parts {
            if let Err(e) = self.plain.register_template_string(&name, text) {
                errors.push(from_template_error(&name, e));
            }
        }
    }

    fn render_plain(&self, name: &str, ctx: &Context) -> Result<String, RenderError> {
        self.plain
            .render_with_context(name, ctx)
            .map_err(|e| self.locate_partial(from_render_error(name, e)))
    }

    /// Renders the email an SMTP `connector` sends for `event`.
    pub fn render_email(
        &self,
        connector: &Connector,
        event: Event,
        context: &(impl AsContext + ?Sized),
    ) -> Result<RenderedEmail, RenderError> {
        let Target::Smtp(smtp) = &connector.target else {
            return Err(wrong_target(connector, "it is not an smtp connector"));
        };
        let Some(request) = smtp.messages.get(event) else {
            return Err(RenderError::unlocated(
                format!("connector {}", connector.name),
                format!("the connector sends no email for `{}`", event.as_str()),
            ));
        };
        let ctx = context.as_context();
        let ctx: &Context = &ctx;
        helpers::render_scope(context.memo(), || {
            self.email_with(connector, smtp, request, event, ctx)
        })
    }

    fn email_with(
        &self,
        connector: &Connector,
        smtp: &SmtpTarget,
        request: &MailMessage,
        event: Event,
        ctx: &Context,
    ) -> Result<RenderedEmail, RenderError> {
        let body = |path: &TemplatePath| {
            self.body_registry(&path.as_written)
                .render_with_context(&path.as_written, ctx)
                .map_err(|e| self.locate_partial(from_render_error(&path.as_written, e)))
        };
        // What the templates render (incident text in it) carries no thread marker; the tag
        // added below is the only one.
        let text = markers::defanged(body(&request.template)?);
        let html = match &request.html_template {
            Some(h) => Some(markers::defanged(body(h)?)),
            None => None,
        };
        let mut subject = markers::defanged(helpers::oneline(
            &self.render_plain(&mail_name(&connector.name, event, "subject"), ctx)?,
        ));
        if smtp.subject_tag.is_some() {
            let tag = helpers::oneline(
                &self.render_plain(&mail_name(&connector.name, event, "subject_tag"), ctx)?,
            );
            if !tag.is_empty() && !subject.contains(&tag) {
                subject = format!("{tag} {subject}");
            }
        }
        let list = |prefix: &str, n: usize| -> Result<Vec<String>, RenderError> {
            (0..n)
                .map(|i| {
                    self.render_plain(
                        &mail_name(&connector.name, event, &format!("{prefix} {i}")),
                        ctx,
                    )
                    .map(|a| a.trim().to_string())
                })
                .filter(|a| !matches!(a, Ok(a) if a.is_empty()))
                .collect()
        };
        Ok(RenderedEmail {
            subject,
            to: list("to", smtp.to.len())?,
            cc: list("cc", smtp.cc.len())?,
            text,
            html,
        })
    }

    /// The connector's correlation key for an incident (see [`context`]). Blank renders fall
    /// back to the incident id, so an odd key never merges unrelated incidents into "".
    pub fn correlation_key(
        &self,
        connector: &Connector,
        account: Option<i64>,
        context: &(impl AsContext + ?Sized),
    ) -> Result<String, RenderError> {
        let name = key_name_for(connector, account);
        let ctx = context.as_context();
        let key = helpers::render_scope(context.memo(), || {
            self.plain.render_with_context(&name, &ctx)
        })
        .map_err(|e| self.locate_partial(from_render_error(&name, e)))?;
        Ok(key.trim().to_string())
    }

    /// The connector's correlation key read off the incident alone, trimmed, when its template
    /// is text and references to the incident's own fields; `None` when it must be rendered
    /// with [`Renderer::correlation_key`] (another template, or a field this incident lacks).
    pub fn plain_correlation_key(&self, connector: &Connector, incident: &Value) -> Option<String> {
        let name = key_name_for(connector, crate::route::account_of(incident));
        let key = self.keys.get(&name)?.render(incident)?;
        Some(key.trim().to_string())
    }

    fn body_registry_mut(&mut self, name: &str) -> &mut Handlebars<'static> {
        match Escape::for_file(name) {
            Escape::Json => &mut self.json,
            Escape::Html => &mut self.html,
            Escape::None | Escape::Url => &mut self.plain,
        }
    }

    fn body_registry(&self, name: &str) -> &Handlebars<'static> {
        match Escape::for_file(name) {
            Escape::Json => &self.json,
            Escape::Html => &self.html,
            Escape::None | Escape::Url => &self.plain,
        }
    }

    /// An error raised inside a partial names the partial's file.
    fn locate_partial(&self, mut e: RenderError) -> RenderError {
        if let Some(file) = self.partial_files.get(&e.template) {
            e.template = file.clone();
        }
        e
    }

    /// Renders a template given as text with every helper and partial (for documentation
    /// examples and experiments), escaped as `escape` says.
    pub fn render_inline(
        &self,
        escape: Escape,
        template: &str,
        context: &(impl AsContext + ?Sized),
    ) -> Result<String, RenderError> {
        let hb = match escape {
            Escape::Json => &self.json,
            Escape::Html => &self.html,
            Escape::None => &self.plain,
            Escape::Url => &self.url,
        };
        let ctx = context.as_context();
        helpers::render_scope(context.memo(), || {
            hb.render_template_with_context(template, &ctx)
        })
        .map_err(|e| self.locate_partial(from_render_error("(inline)", e)))
    }

    /// Renders the request `connector` sends for `context` (see [`context`]).
    pub fn render(
        &self,
        connector: &Connector,
        event: Event,
        context: &(impl AsContext + ?Sized),
    ) -> Result<RenderedRequest, RenderError> {
        let Target::Http(http) = &connector.target else {
            return Err(wrong_target(connector, "it sends email, not HTTP requests"));
        };
        let request = http.requests.get(event).ok_or_else(|| {
            RenderError::unlocated(
                format!("connector {}", connector.name),
                format!("the connector skips `{}`", event.as_str()),
            )
        })?;
        let ctx = context.as_context();
        let ctx: &Context = &ctx;
        helpers::render_scope(context.memo(), || {
            self.request_with(connector, event, request, ctx)
        })
    }

    fn request_with(
        &self,
        connector: &Connector,
        event: Event,
        request: &HttpRequest,
        ctx: &Context,
    ) -> Result<RenderedRequest, RenderError> {
        let body_name = &request.template.as_written;
        let body = self
            .body_registry(body_name)
            .render_with_context(body_name, ctx)
            .map_err(|e| self.locate_partial(from_render_error(body_name, e)))?;
        let (url, mut headers) =
            self.url_and_headers(connector, event.as_str(), request.headers.keys(), ctx)?;
        if let Some(ct) = Escape::for_file(body_name).content_type() {
            headers
                .entry("content-type".to_string())
                .or_insert_with(|| ct.to_string());
        }
        Ok(RenderedRequest {
            method: request.method.clone(),
            url,
            headers,
            body,
        })
    }

    /// Renders the connector's lookup request (no body) for `context`, the context its
    /// `created` renders with; `None` when it declares none.
    pub fn render_lookup(
        &self,
        connector: &Connector,
        context: &(impl AsContext + ?Sized),
    ) -> Option<Result<RenderedRequest, RenderError>> {
        let lookup = connector.lookup()?;
        let ctx = context.as_context();
        let ctx: &Context = &ctx;
        Some(helpers::render_scope(context.memo(), || {
            let (url, headers) =
                self.url_and_headers(connector, LOOKUP, lookup.headers.keys(), ctx)?;
            Ok(RenderedRequest {
                method: lookup.method.clone(),
                url,
                headers,
                body: String::new(),
            })
        }))
    }

    /// The rendered URL (http or https, no path changed by a value) and headers (no line
    /// breaks) of an event's request or of the lookup (`part`).
    fn url_and_headers<'h>(
        &self,
        connector: &Connector,
        part: &str,
        header_names: impl Iterator<Item = &'h String>,
        ctx: &Context,
    ) -> Result<(String, BTreeMap<String, String>), RenderError> {
        let url_template = url_name(&connector.name, part);
        let url = self
            .url
            .render_with_context(&url_template, ctx)
            .map_err(|e| from_render_error(&url_template, e))?;
        if url.contains(DOT_SEGMENT_MARKER) {
            return Err(RenderError {
                template: url_template,
                line: None,
                column: None,
                reason:
                    "an interpolated value is \".\" or \"..\", which would change the URL's path"
                        .into(),
            });
        }
        let parsed = reqwest::Url::parse(url.trim()).map_err(|e| {
            RenderError::unlocated(
                url_template.clone(),
                format!("rendered URL is not valid: {e}"),
            )
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(RenderError::unlocated(
                url_template,
                "rendered URL is not http or https",
            ));
        }
        let mut headers = BTreeMap::new();
        for header in header_names {
            let hn = header_name(&connector.name, part, header);
            let value = self
                .plain
                .render_with_context(&hn, ctx)
                .map_err(|e| self.locate_partial(from_render_error(&hn, e)))?;
            // Incident text must never add a header line, nor carry what HTTP forbids there.
            if reqwest::header::HeaderValue::from_str(&value).is_err() {
                return Err(RenderError {
                    template: hn,
                    line: None,
                    column: None,
                    reason:
                        "rendered header value contains a line break or another control character"
                            .into(),
                });
            }
            headers.insert(header.clone(), value);
        }
        Ok((parsed.to_string(), headers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_escaping_survives_hostile_text() {
        let hostile = "q\"uote \\ back\nnew\r\t\u{1}\u{1f} {{x}} </script> é 漢字 🚨 \u{2028}";
        let escaped = escape_json_string(hostile);
        let doc = format!("{{\"s\": \"{escaped}\"}}");
        let parsed: Value = serde_json::from_str(&doc).unwrap();
        assert_eq!(parsed["s"], hostile);
    }

    /// The escaping before it copied runs of text: one character at a time.
    fn escape_json_string_by_char(text: &str) -> String {
        let mut out = String::new();
        for ch in text.chars() {
            match ch {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if (c as u32) < 0x20 || c == '\u{7f}' || c == '\u{2028}' || c == '\u{2029}' => {
                    out.push_str(&format!("\\u{:04x}", c as u32))
                }
                c => out.push(c),
            }
        }
        out
    }

    #[test]
    fn json_escaping_copies_runs_but_escapes_every_character_as_before() {
        let mut texts: Vec<String> = (0u32..0x3000)
            .filter_map(char::from_u32)
            .map(|c| format!("a{c}b{c}{c}"))
            .collect();
        texts.extend([
            String::new(),
            "plain".into(),
            "\u{2027}\u{2028}\u{2029}\u{202a}\u{e2}\u{80}".into(),
            "€ ✓ \u{2028}\u{2029}🚨".repeat(50),
        ]);
        for t in texts {
            assert_eq!(
                escape_json_string(&t),
                escape_json_string_by_char(&t),
                "{t:?}"
            );
        }
    }

    #[test]
    fn url_escape_keeps_text_inside_one_component() {
        assert_eq!(escape_url_component("a/b?c=d#e f"), "a%2Fb%3Fc%3Dd%23e%20f");
        assert_eq!(escape_url_component("..."), "...");
        assert_eq!(escape_url_component(".."), DOT_SEGMENT_MARKER);
    }

    #[test]
    fn strict_mode_names_missing_variable_and_line() {
        let mut hb = registry(Escape::Json);
        hb.register_template_string("t.json.hbs", "{\n\"a\": \"{{nope.deeper}}\"\n}")
            .unwrap();
        let err = hb.render("t.json.hbs", &json!({"x": 1})).unwrap_err();
        let err = from_render_error("t.json.hbs", err);
        assert_eq!(err.line, Some(2));
        assert!(err.reason.contains("nope.deeper"), "{err}");
    }

    #[test]
    fn if_on_missing_optional_field_is_allowed() {
        let mut hb = registry(Escape::None);
        hb.register_template_string("t", "{{#if incident_type}}T{{else}}none{{/if}}")
            .unwrap();
        assert_eq!(hb.render("t", &json!({})).unwrap(), "none");
    }

    #[test]
    fn json_helper_emits_values_verbatim() {
        let mut hb = registry(Escape::Json);
        hb.register_template_string("t", "{{json this}}").unwrap();
        let v = json!({"a": "x\"y", "n": 1.5, "l": [null, true]});
        let out = hb.render("t", &v).unwrap();
        assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), v);
    }
}
