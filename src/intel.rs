//! Threat-intel enrichment: IOC lists (IPs, CIDR ranges, domains, URLs, file hashes; plain or
//! CSV files; global or a tenant's own) matched at ingest against the incident's attackers,
//! targets and the JSON pointers `[threat_intel] fields` names. What matched becomes the
//! incident's `ti` member (`matched`, `lists`, `matches`), stored with it, so that matchers
//! route on it (`/ti/matched`, `/ti/lists/NAME`) and templates show it.
//!
//! Every lookup is O(log n) (address ranges, merged and sorted) or O(1) (hash sets) per value
//! and list, so a list of a million entries costs ingest little. The lists in force are
//! swapped whole when a file changes ([`ThreatIntel::refresh`]); a file that does not parse
//! replaces nothing and is named with its line.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use serde_json::{Map, Value};

/// At most this many matches are kept on an incident (its body stays bounded).
pub const MAX_MATCHES: usize = 64;

/// A matched value is kept cut to this many characters.
const MAX_VALUE_CHARS: usize = 512;

/// The longest host name (RFC 1035): a longer value is no domain, and is not looked up.
const MAX_HOST_LEN: usize = 253;

/// `s`, at most `max` characters.
fn cut(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// The member of the incident the gateway writes its findings to, and the findings when
/// nothing matched (the render context's `ti` is one or the other).
pub use crate::render::derive::{THREAT_INTEL_MEMBER as MEMBER, no_threat_findings as no_findings};

/// How an IOC file is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    /// One IOC per line; `#` starts a comment; blank lines are skipped.
    Plain,
    /// Comma-separated with a header line; the IOC is in `column`.
    Csv { column: Column },
}

/// Which CSV column holds the IOC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Column {
    /// By header name.
    Named(String),
    /// 1-based.
    Number(usize),
}

/// One list as the config names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListSpec {
    pub name: String,
    pub file: PathBuf,
    pub format: Format,
    /// The accounts whose incidents it applies to; `None`: every incident.
    pub accounts: Option<Vec<i64>>,
}

/// Why a list could not be loaded: the file, and the line where it can be named.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IntelError {
    #[error("{file}: cannot read: {message}")]
    Read { file: PathBuf, message: String },
    #[error("{file}: line {line}: {message}")]
    Line {
        file: PathBuf,
        line: usize,
        message: String,
    },
}

/// One loaded list.
#[derive(Debug, Default)]
pub struct IocList {
    pub name: String,
    accounts: Option<Vec<i64>>,
    /// Inclusive ranges, sorted and merged (a CIDR is one range, an address a range of one).
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
    domains: HashSet<Box<str>>,
    urls: HashSet<Box<str>>,
    md5: HashSet<[u8; 16]>,
    sha1: HashSet<[u8; 20]>,
    sha256: HashSet<[u8; 32]>,
    /// Lines that held an IOC.
    pub entries: usize,
}

/// What one IOC is.
#[derive(Debug, PartialEq)]
enum Ioc {
    V4(u32, u32),
    V6(u128, u128),
    Domain(String),
    Url(String),
    Md5([u8; 16]),
    Sha1([u8; 20]),
    Sha256([u8; 32]),
}

impl IocList {
    /// Parses a list's text. `file` names it in errors.
    pub fn parse(spec: &ListSpec, text: &str) -> Result<IocList, IntelError> {
        let mut list = IocList {
            name: spec.name.clone(),
            accounts: spec.accounts.clone(),
            ..IocList::default()
        };
        let line_error = |line: usize, message: String| IntelError::Line {
            file: spec.file.clone(),
            line,
            message,
        };
        match &spec.format {
            Format::Plain => {
                for (i, line) in text.lines().enumerate() {
                    let content = line.split('#').next().unwrap_or("");
                    let Some(token) = content.split_whitespace().next() else {
                        continue;
                    };
                    let ioc = classify(token).map_err(|m| line_error(i + 1, m))?;
                    list.add(ioc);
                }
            }
            Format::Csv { column } => {
                let mut reader = csv::ReaderBuilder::new()
                    .has_headers(true)
                    .flexible(true)
                    .comment(Some(b'#'))
                    .from_reader(text.as_bytes());
                let index = match column {
                    Column::Number(n) => n.saturating_sub(1),
                    Column::Named(name) => {
                        let headers = reader.headers().map_err(|e| line_error(1, e.to_string()))?;
                        headers
                            .iter()
                            .position(|h| h.trim().eq_ignore_ascii_case(name))
                            .ok_or_else(|| {
                                line_error(
                                    1,
                                    format!(
                                        "no column is named {name:?}; the header has {}",
                                        headers.iter().collect::<Vec<_>>().join(", ")
                                    ),
                                )
                            })?
                    }
                };
                for record in reader.records() {
                    let record = record.map_err(|e| {
                        let line = e.position().map_or(0, |p| p.line() as usize);
                        line_error(line, e.to_string())
                    })?;
                    // The record's position can be that of a comment the reader skipped: the
                    // line is where its value stands.
                    let start = record.position().map_or(0, |p| p.byte() as usize);
                    let token = record.get(index).map(str::trim).unwrap_or("");
                    let line = text
                        .get(start..)
                        .and_then(|rest| rest.find(token))
                        .map_or_else(
                            || line_at(text.as_bytes(), start),
                            |at| line_at(text.as_bytes(), start + at),
                        );
                    if token.is_empty() {
                        if record.iter().all(|f| f.trim().is_empty()) {
                            continue;
                        }
                        return Err(line_error(
                            line,
                            format!("column {} is empty or missing", index + 1),
                        ));
                    }
                    let ioc = classify(token).map_err(|m| line_error(line, m))?;
                    list.add(ioc);
                }
            }
        }
        list.v4 = merge(std::mem::take(&mut list.v4));
        list.v6 = merge(std::mem::take(&mut list.v6));
        list.domains.shrink_to_fit();
        list.urls.shrink_to_fit();
        Ok(list)
    }

    fn add(&mut self, ioc: Ioc) {
        self.entries += 1;
        match ioc {
            Ioc::V4(a, b) => self.v4.push((a, b)),
            Ioc::V6(a, b) => self.v6.push((a, b)),
            Ioc::Domain(d) => {
                self.domains.insert(d.into_boxed_str());
            }
            Ioc::Url(u) => {
                self.urls.insert(u.into_boxed_str());
            }
            Ioc::Md5(h) => {
                self.md5.insert(h);
            }
            Ioc::Sha1(h) => {
                self.sha1.insert(h);
            }
            Ioc::Sha256(h) => {
                self.sha256.insert(h);
            }
        }
    }

    fn applies_to(&self, account: Option<i64>) -> bool {
        match &self.accounts {
            None => true,
            Some(accounts) => account.is_some_and(|a| accounts.contains(&a)),
        }
    }

    /// Whether `value` (an address, host name, URL or hash as an incident writes it) is on
    /// the list.
    pub fn contains(&self, value: &str) -> bool {
        let value = value.trim();
        if let Ok(ip) = value.parse::<IpAddr>() {
            return self.has_ip(ip);
        }
        if let Some(hash) = hex_bytes(value) {
            return match hash.len() {
                16 => hash
                    .try_into()
                    .is_ok_and(|h: [u8; 16]| self.md5.contains(&h)),
                20 => hash
                    .try_into()
                    .is_ok_and(|h: [u8; 20]| self.sha1.contains(&h)),
                32 => hash
                    .try_into()
                    .is_ok_and(|h: [u8; 32]| self.sha256.contains(&h)),
                _ => false,
            };
        }
        if let Some((url, host)) = normalize_url(value) {
            return self.urls.contains(url.as_str()) || self.has_host(&host);
        }
        self.has_host(value)
    }

    fn has_ip(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(v4) => in_ranges(&self.v4, u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => in_ranges(&self.v4, u32::from(v4)),
                None => in_ranges(&self.v6, u128::from(v6)),
            },
        }
    }

    /// A host name is on the list when it or a parent domain is (`a.evil.example` is caught
    /// by `evil.example`); an address written as a host is looked up as one.
    fn has_host(&self, host: &str) -> bool {
        // Each parent is hashed: bounded by a host name's length, not the value's.
        if host.len() > MAX_HOST_LEN + 1 {
            return false;
        }
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse() {
            return self.has_ip(ip);
        }
        if self.domains.is_empty() {
            return false;
        }
        let mut rest = host.as_str();
        loop {
            if self.domains.contains(rest) {
                return true;
            }
            match rest.split_once('.') {
                Some((_, parent)) if !parent.is_empty() => rest = parent,
                _ => return false,
            }
        }
    }

    /// An estimate of the heap the list holds, in bytes (what `check` and the metrics show).
    pub fn heap_bytes(&self) -> usize {
        fn set<T>(s: &HashSet<T>) -> usize {
            // hashbrown: one control byte per bucket beside the value.
            s.capacity() * (std::mem::size_of::<T>() + 1)
        }
        let strings = |s: &HashSet<Box<str>>| -> usize {
            // Each string is its own allocation, rounded up to the allocator's 16 bytes.
            set(s) + s.iter().map(|v| v.len().div_ceil(16) * 16).sum::<usize>()
        };
        self.v4.capacity() * 8
            + self.v6.capacity() * 32
            + strings(&self.domains)
            + strings(&self.urls)
            + set(&self.md5)
            + set(&self.sha1)
            + set(&self.sha256)
    }
}

/// Sorts ranges and merges those that overlap or touch.
fn merge<T: Copy + Ord + num_step::Step>(mut ranges: Vec<(T, T)>) -> Vec<(T, T)> {
    ranges.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match out.last_mut() {
            Some(last) if start <= last.1.next_or_max() => {
                if end > last.1 {
                    last.1 = end;
                }
            }
            _ => out.push((start, end)),
        }
    }
    out.shrink_to_fit();
    out
}

/// One more, saturating: for merging ranges that touch.
mod num_step {
    pub trait Step {
        fn next_or_max(self) -> Self;
    }
    impl Step for u32 {
        fn next_or_max(self) -> u32 {
            self.saturating_add(1)
        }
    }
    impl Step for u128 {
        fn next_or_max(self) -> u128 {
            self.saturating_add(1)
        }
    }
}

fn in_ranges<T: Copy + Ord>(ranges: &[(T, T)], x: T) -> bool {
    // The last range starting at or before x is the only one that can hold it.
    let after = ranges.partition_point(|(start, _)| *start <= x);
    after > 0 && ranges[after - 1].1 >= x
}

/// What an IOC written in a list is, or why it is none.
fn classify(token: &str) -> Result<Ioc, String> {
    if let Some((addr, bits)) = token.split_once('/')
        && !token.contains("://")
    {
        let bits: u32 = bits
            .parse()
            .map_err(|_| format!("{token:?}: the prefix length is not a number"))?;
        return match addr.parse::<IpAddr>() {
            Ok(IpAddr::V4(a)) if bits <= 32 => {
                let mask = if bits == 0 {
                    0
                } else {
                    u32::MAX << (32 - bits)
                };
                let start = u32::from(a) & mask;
                Ok(Ioc::V4(start, start | !mask))
            }
            Ok(IpAddr::V6(a)) if bits <= 128 => {
                let mask = if bits == 0 {
                    0
                } else {
                    u128::MAX << (128 - bits)
                };
                let start = u128::from(a) & mask;
                let end = start | !mask;
                // A range inside ::ffff:0:0/96 is IPv4 written as IPv6: lookups of mapped
                // addresses search the IPv4 ranges.
                const MAPPED_PREFIX: u128 = 0xffff;
                Ok(
                    if start >> 32 == MAPPED_PREFIX && end >> 32 == MAPPED_PREFIX {
                        Ioc::V4(start as u32, end as u32)
                    } else {
                        Ioc::V6(start, end)
                    },
                )
            }
            Ok(_) => Err(format!("{token:?}: the prefix length is too long")),
            Err(_) => Err(format!("{token:?} is not a CIDR range")),
        };
    }
    if let Ok(ip) = token.parse::<IpAddr>() {
        return Ok(match ip {
            IpAddr::V4(a) => Ioc::V4(u32::from(a), u32::from(a)),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => Ioc::V4(u32::from(v4), u32::from(v4)),
                None => Ioc::V6(u128::from(a), u128::from(a)),
            },
        });
    }
    if let Some(bytes) = hex_bytes(token) {
        return match bytes.len() {
            16 => bytes.try_into().map(Ioc::Md5).map_err(|_| String::new()),
            20 => bytes.try_into().map(Ioc::Sha1).map_err(|_| String::new()),
            32 => bytes.try_into().map(Ioc::Sha256).map_err(|_| String::new()),
            n => Err(format!(
                "{token:?} looks like a hash of {} hex digits; MD5 (32), SHA-1 (40) and SHA-256 (64) are known",
                n * 2
            )),
        };
    }
    if token.contains("://") {
        return normalize_url(token)
            .map(|(url, _)| Ioc::Url(url))
            .ok_or_else(|| format!("{token:?} is not a URL with a host"));
    }
    let domain = token
        .strip_prefix("*.")
        .unwrap_or(token)
        .trim_end_matches('.')
        .to_ascii_lowercase();
    if is_domain(&domain) {
        return Ok(Ioc::Domain(domain));
    }
    Err(format!(
        "{token:?} is not an IP address, CIDR range, domain, URL or MD5/SHA-1/SHA-256 hash"
    ))
}

fn is_domain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        // An all-digit name is a mistyped address, not a domain.
        && !s.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

/// Hex of an even length of 32 digits or more, as bytes; `None` for anything else.
fn hex_bytes(s: &str) -> Option<Vec<u8>> {
    if s.len() < 32 || !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// A URL as lists and lookups compare it — scheme and host lower-case, no default port, no
/// fragment, a bare `/` path dropped — and its host.
fn normalize_url(s: &str) -> Option<(String, String)> {
    let (scheme, rest) = s.split_once("://")?;
    if scheme.is_empty()
        || !scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+')
    {
        return None;
    }
    let scheme = scheme.to_ascii_lowercase();
    let rest = rest.split('#').next().unwrap_or("");
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    let authority = authority
        .rsplit('@')
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or("").to_string(),
        None => authority.split(':').next().unwrap_or("").to_string(),
    };
    if host.is_empty() {
        return None;
    }
    let authority = match (scheme.as_str(), authority.rsplit_once(':')) {
        ("http", Some((h, "80"))) | ("https", Some((h, "443"))) => h.to_string(),
        _ => authority,
    };
    let path = if path == "/" { "" } else { path };
    Some((format!("{scheme}://{authority}{path}"), host))
}

/// The lists in force: what ingest matches against.
#[derive(Debug, Default)]
pub struct Intel {
    /// Shared with the next set where a file did not change (or did not parse).
    pub lists: Vec<Arc<IocList>>,
}

/// Reads and parses one list's file, naming the line of a problem (a file that is not
/// UTF-8 included).
fn read_list(spec: &ListSpec) -> Result<IocList, IntelError> {
    let bytes = std::fs::read(&spec.file).map_err(|e| IntelError::Read {
        file: spec.file.clone(),
        message: e.to_string(),
    })?;
    let text = std::str::from_utf8(&bytes).map_err(|e| IntelError::Line {
        file: spec.file.clone(),
        line: line_at(&bytes, e.valid_up_to()),
        message: "not UTF-8 text".into(),
    })?;
    IocList::parse(spec, text)
}

/// The 1-based line of byte `offset`.
fn line_at(bytes: &[u8], offset: usize) -> usize {
    bytes[..offset.min(bytes.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

impl Intel {
    /// Reads and parses every list. A list whose file cannot be read or parsed is held
    /// empty (`previous`: its last good set, where there is one), and its error returned with
    /// its index: a broken feed file must not stop the gateway, which would lose every
    /// incident; `check` refuses it.
    pub fn load(specs: &[ListSpec], previous: Option<&Intel>) -> (Intel, Vec<(usize, IntelError)>) {
        let mut lists = Vec::with_capacity(specs.len());
        let mut problems = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            match read_list(spec) {
                Ok(list) => lists.push(Arc::new(list)),
                Err(e) => {
                    problems.push((i, e));
                    let kept = previous
                        .and_then(|p| p.lists.iter().find(|l| l.name == spec.name))
                        .cloned();
                    lists.push(kept.unwrap_or_else(|| {
                        Arc::new(IocList {
                            name: spec.name.clone(),
                            accounts: spec.accounts.clone(),
                            ..IocList::default()
                        })
                    }));
                }
            }
        }
        (Intel { lists }, problems)
    }

    pub fn entries(&self) -> usize {
        self.lists.iter().map(|l| l.entries).sum()
    }

    pub fn heap_bytes(&self) -> usize {
        self.lists.iter().map(|l| l.heap_bytes()).sum()
    }

    /// The `ti` member for `incident`: every value of its attackers, targets and of
    /// `fields` looked up in every list that applies to its tenant.
    pub fn findings(&self, incident: &Value, fields: &[String]) -> Value {
        let account = crate::route::account_of(incident);
        let lists: Vec<&IocList> = self
            .lists
            .iter()
            .map(Arc::as_ref)
            .filter(|l| l.applies_to(account))
            .collect();
        let mut matches: Vec<Value> = Vec::new();
        // Every list that applies is named, matched or not, so `/ti/lists/NAME` compares
        // "true" or "false".
        let mut hit: BTreeMap<&str, bool> =
            lists.iter().map(|l| (l.name.as_str(), false)).collect();
        let mut looked = HashSet::new();
        let mut look = |field: &str, value: &str| {
            if !looked.insert((field.to_string(), value.to_string())) {
                return;
            }
            for list in &lists {
                if list.contains(value) {
                    hit.insert(list.name.as_str(), true);
                    // The list of matches is bounded (and each value cut), `lists` is not:
                    // a storm of one list's values cannot hide another list's match.
                    if matches.len() < MAX_MATCHES {
                        matches.push(serde_json::json!({
                            "list": list.name,
                            "value": cut(value, MAX_VALUE_CHARS),
                            "field": field,
                        }));
                    }
                }
            }
        };
        if !lists.is_empty() {
            for value in crate::render::derive::attackers(incident) {
                look("attackers", &value);
            }
            for value in crate::render::derive::targets(incident) {
                look("targets", &value);
            }
            for pointer in fields {
                match incident.pointer(pointer) {
                    Some(Value::String(s)) => look(pointer, s),
                    Some(Value::Array(items)) => {
                        for item in items {
                            if let Value::String(s) = item {
                                look(pointer, s);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        let lists: Map<String, Value> = hit
            .into_iter()
            .map(|(name, v)| (name.to_string(), Value::Bool(v)))
            .collect();
        serde_json::json!({
            "matched": !matches.is_empty(),
            "lists": lists,
            "matches": matches,
        })
    }
}

/// `[threat_intel]` as the config gives it: the lists, the extra fields to look up, and how
/// often the files are looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntelSettings {
    pub lists: Vec<ListSpec>,
    /// JSON pointers whose values are looked up beside attackers and targets.
    pub fields: Vec<String>,
    pub refresh: Duration,
}

/// A file's modification time and length, when last looked at.
type Seen = Option<(SystemTime, u64)>;

/// The lists of one configuration, swapped whole when a file changes.
#[derive(Debug)]
pub struct ThreatIntel {
    pub settings: IntelSettings,
    current: ArcSwap<Intel>,
    seen: std::sync::Mutex<Vec<Seen>>,
    /// What could not be loaded with the configuration (see [`ThreatIntel::problems`]).
    problems: Vec<(usize, IntelError)>,
}

impl ThreatIntel {
    /// Loads every list; those that cannot be loaded are held empty and named by
    /// [`ThreatIntel::problems`].
    pub fn load(settings: IntelSettings) -> ThreatIntel {
        let seen = settings.lists.iter().map(|l| seen(&l.file)).collect();
        let (intel, problems) = Intel::load(&settings.lists, None);
        ThreatIntel {
            settings,
            current: ArcSwap::from_pointee(intel),
            seen: std::sync::Mutex::new(seen),
            problems,
        }
    }

    /// Holds, for each list that could not be loaded, `old`'s set of the same name where it
    /// has one (a reload keeps what is in force rather than running without it).
    pub fn inherit(&self, old: &ThreatIntel) {
        if self.problems.is_empty() {
            return;
        }
        let old = old.current();
        let mut lists = self.current().lists.clone();
        for (i, _) in &self.problems {
            if let (Some(slot), Some(spec)) = (lists.get_mut(*i), self.settings.lists.get(*i))
                && let Some(kept) = old.lists.iter().find(|l| l.name == spec.name)
            {
                *slot = kept.clone();
            }
        }
        self.current.store(Arc::new(Intel { lists }));
    }

    /// The lists that could not be loaded when this configuration was, by index in
    /// `settings.lists`: `check` refuses them; the gateway logs them and runs without them.
    pub fn problems(&self) -> &[(usize, IntelError)] {
        &self.problems
    }

    /// No lists: nothing is looked up, and `ti` is never set.
    pub fn none() -> ThreatIntel {
        ThreatIntel {
            settings: IntelSettings {
                lists: Vec::new(),
                fields: Vec::new(),
                refresh: Duration::from_secs(30),
            },
            current: ArcSwap::from_pointee(Intel::default()),
            seen: std::sync::Mutex::new(Vec::new()),
            problems: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.settings.lists.is_empty()
    }

    pub fn current(&self) -> Arc<Intel> {
        self.current.load_full()
    }

    /// Sets the gateway's `ti` member on `incident` (replacing one the sender wrote, which
    /// the gateway alone may set). Without lists, a sent `ti` is removed.
    pub fn enrich(&self, incident: &mut Value) {
        let Value::Object(map) = incident else {
            return;
        };
        if self.is_empty() {
            map.shift_remove(MEMBER);
            return;
        }
        map.shift_remove(MEMBER);
        let findings = self
            .current
            .load()
            .findings(incident, &self.settings.fields);
        if let Value::Object(map) = incident {
            map.insert(MEMBER.into(), findings);
        }
    }

    /// Whether a list file changed since it was loaded.
    pub fn changed(&self) -> bool {
        let Ok(seen_before) = self.seen.lock() else {
            return false;
        };
        self.settings
            .lists
            .iter()
            .zip(seen_before.iter())
            .any(|(l, before)| seen(&l.file) != *before)
    }

    /// Reads the lists again if a file changed; the new set replaces the old whole. A list
    /// whose file does not parse keeps its set in force (the errors say which file and line).
    /// Blocking: run off the async runtime. `Ok(false)`: nothing changed.
    pub fn refresh(&self) -> Result<bool, Vec<IntelError>> {
        if !self.changed() {
            return Ok(false);
        }
        let now: Vec<Seen> = self.settings.lists.iter().map(|l| seen(&l.file)).collect();
        let (intel, problems) = Intel::load(&self.settings.lists, Some(&self.current.load()));
        // A broken file is not read again until it changes once more.
        if let Ok(mut s) = self.seen.lock() {
            *s = now;
        }
        self.current.store(Arc::new(intel));
        match problems.is_empty() {
            true => Ok(true),
            false => Err(problems.into_iter().map(|(_, e)| e).collect()),
        }
    }
}

fn seen(path: &Path) -> Seen {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Why a matcher pointer under `/ti` reads nothing, with the list names it could name.
pub fn pointer_problem(pointer: &str, lists: &[String]) -> Option<String> {
    let rest = pointer.strip_prefix("/ti")?;
    if lists.is_empty() {
        return Some(format!(
            "{pointer:?} reads the threat-intel findings, but no [[threat_intel.lists]] is configured"
        ));
    }
    let ok = match rest {
        "/matched" | "/matches" | "/lists" => true,
        _ => match rest.strip_prefix("/lists/") {
            Some(name) => lists.iter().any(|l| l == name),
            None => rest.starts_with("/matches/"),
        },
    };
    (!ok).then(|| {
        format!(
            "{pointer:?} reads nothing: the findings are /ti/matched, /ti/matches and /ti/lists/NAME for a list named {}",
            lists.join(", ")
        )
    })
}

/// An IPv4 literal as a number (tests).
#[cfg(test)]
fn v4(s: &str) -> u32 {
    use std::net::Ipv4Addr;
    u32::from(s.parse::<Ipv4Addr>().unwrap_or(Ipv4Addr::UNSPECIFIED))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(format: Format) -> ListSpec {
        ListSpec {
            name: "bad".into(),
            file: "bad.txt".into(),
            format,
            accounts: None,
        }
    }

    #[test]
    fn every_kind_is_found_and_nothing_else() {
        let text = "# feed\n10.0.0.0/8\n192.0.2.7   # c2\n\n2001:db8::/32\nEvil.Example.\n\
                    https://phish.example/login\nd41d8cd98f00b204e9800998ecf8427e\n\
                    da39a3ee5e6b4b0d3255bfef95601890afd80709\n\
                    e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n";
        let list = IocList::parse(&spec(Format::Plain), text).expect("parses");
        assert_eq!(list.entries, 8);
        for hit in [
            "10.1.2.3",
            "192.0.2.7",
            "::ffff:10.9.9.9",
            "2001:db8::1",
            "evil.example",
            "www.EVIL.example",
            "https://phish.example/login",
            "HTTPS://phish.example:443/login#x",
            "http://sub.evil.example/anything",
            "D41D8CD98F00B204E9800998ECF8427E",
            "da39a3ee5e6b4b0d3255bfef95601890afd80709",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ] {
            assert!(list.contains(hit), "{hit} should be on the list");
        }
        for miss in [
            "11.0.0.1",
            "192.0.2.8",
            "2001:db9::1",
            "example",
            "notevil.example",
            "https://phish.example/logout",
            "d41d8cd98f00b204e9800998ecf8427f",
            "alice",
        ] {
            assert!(!list.contains(miss), "{miss} should not be on the list");
        }
    }

    #[test]
    fn ranges_merge_and_search() {
        let merged = merge(vec![
            (v4("10.0.0.5"), v4("10.0.0.5")),
            (v4("10.0.0.0"), v4("10.0.0.4")),
            (v4("10.0.1.0"), v4("10.0.1.255")),
            (v4("10.0.0.6"), v4("10.0.0.6")),
        ]);
        assert_eq!(
            merged,
            vec![
                (v4("10.0.0.0"), v4("10.0.0.6")),
                (v4("10.0.1.0"), v4("10.0.1.255"))
            ]
        );
        assert!(in_ranges(&merged, v4("10.0.0.6")));
        assert!(!in_ranges(&merged, v4("10.0.0.7")));
        assert!(in_ranges(&merged, v4("10.0.1.128")));
        assert!(!in_ranges(&[], 1u32));
        assert_eq!(merge(vec![(0u32, u32::MAX), (5, 6)]), vec![(0, u32::MAX)]);
    }

    #[test]
    fn a_bad_line_is_named() {
        let err = IocList::parse(&spec(Format::Plain), "1.2.3.4\n\nno_such!domain # x\n")
            .expect_err("refused");
        assert_eq!(
            err.to_string(),
            "bad.txt: line 3: \"no_such!domain\" is not an IP address, CIDR range, domain, URL or MD5/SHA-1/SHA-256 hash"
        );
        let err = IocList::parse(&spec(Format::Plain), "10.0.0.0/33\n").expect_err("refused");
        assert!(err.to_string().starts_with("bad.txt: line 1: "), "{err}");
        let err = IocList::parse(&spec(Format::Plain), "1.2.3.4\n300.1.1.1\n").expect_err("x");
        assert!(err.to_string().starts_with("bad.txt: line 2: "), "{err}");
    }

    #[test]
    fn csv_by_name_or_number() {
        let text = "first_seen,ioc,comment\n2026-01-01,198.51.100.9,\"c2, botnet\"\n\
                    2026-01-02,bad.example,x\n";
        let named = IocList::parse(
            &spec(Format::Csv {
                column: Column::Named("IOC".into()),
            }),
            text,
        )
        .expect("parses");
        assert_eq!(named.entries, 2);
        assert!(named.contains("198.51.100.9") && named.contains("x.bad.example"));
        let numbered = IocList::parse(
            &spec(Format::Csv {
                column: Column::Number(2),
            }),
            text,
        )
        .expect("parses");
        assert_eq!(numbered.entries, 2);
        let err = IocList::parse(
            &spec(Format::Csv {
                column: Column::Named("indicator".into()),
            }),
            text,
        )
        .expect_err("no such column");
        assert!(err.to_string().contains("line 1: no column"), "{err}");
        let err = IocList::parse(
            &spec(Format::Csv {
                column: Column::Number(2),
            }),
            "a,b\n1,2.3.4.5.6.7..\n",
        )
        .expect_err("bad value");
        assert!(err.to_string().contains("line 2:"), "{err}");
    }

    #[test]
    fn findings_name_list_value_and_field_for_the_tenant() {
        let mut global = IocList::parse(&spec(Format::Plain), "203.0.113.5\n").expect("ok");
        global.name = "global".into();
        let mut own = IocList::parse(&spec(Format::Plain), "files.example\n").expect("ok");
        own.name = "acme".into();
        own.accounts = Some(vec![7]);
        let intel = Intel {
            lists: vec![Arc::new(global), Arc::new(own)],
        };
        let incident = json!({"accountId": 7, "attacker": {"ip": "203.0.113.5"},
            "extra": {"url": "https://files.example/x.exe"}});
        let fields = vec!["/extra/url".to_string()];
        let ti = intel.findings(&incident, &fields);
        assert_eq!(ti["matched"], json!(true));
        assert_eq!(ti["lists"], json!({"acme": true, "global": true}));
        assert_eq!(
            ti["matches"],
            json!([
                {"list": "global", "value": "203.0.113.5", "field": "attackers"},
                {"list": "acme", "value": "https://files.example/x.exe", "field": "/extra/url"}
            ])
        );
        // Another tenant's incident is not looked up in acme's list.
        let other = json!({"accountId": 8, "extra": {"url": "https://files.example/x.exe"}});
        assert_eq!(intel.findings(&other, &fields)["matched"], json!(false));
    }

    #[test]
    fn mapped_ranges_long_hosts_and_csv_comments() {
        let list = IocList::parse(&spec(Format::Plain), "::ffff:10.0.0.0/104\nevil.example\n")
            .expect("parses");
        assert!(list.contains("::ffff:10.1.2.3") && list.contains("10.1.2.3"));
        assert!(!list.contains("11.0.0.1"));
        // A host longer than a domain can be is not looked up (its parents are not hashed).
        let long = format!("{}evil.example", "a.".repeat(200_000));
        assert!(!list.contains(&long));
        let csv = spec(Format::Csv {
            column: Column::Named("ioc".into()),
        });
        let err = IocList::parse(&csv, "ioc\n# a comment\n\n300.1.2.3\n").expect_err("bad");
        assert!(err.to_string().contains("line 4:"), "{err}");
    }

    #[test]
    fn one_lists_flood_of_matches_does_not_hide_another_list() {
        let many: String = (0..100).map(|i| format!("198.51.100.{i}\n")).collect();
        let mut flood = IocList::parse(&spec(Format::Plain), &many).expect("ok");
        flood.name = "flood".into();
        let mut hashes = IocList::parse(
            &spec(Format::Plain),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n",
        )
        .expect("ok");
        hashes.name = "hashes".into();
        let intel = Intel {
            lists: vec![Arc::new(flood), Arc::new(hashes)],
        };
        let attackers: Vec<Value> = (0..100)
            .map(|i| json!({"ip": format!("198.51.100.{i}")}))
            .collect();
        let incident = json!({"attacker_lset": attackers,
            "extra": {"hash": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}});
        let ti = intel.findings(&incident, &["/extra/hash".to_string()]);
        assert_eq!(ti["lists"], json!({"flood": true, "hashes": true}));
        assert_eq!(ti["matches"].as_array().map(Vec::len), Some(MAX_MATCHES));
    }

    #[test]
    fn matcher_pointers_under_ti() {
        let lists = vec!["feodo".to_string()];
        assert_eq!(pointer_problem("/ti/matched", &lists), None);
        assert_eq!(pointer_problem("/ti/lists/feodo", &lists), None);
        assert!(pointer_problem("/ti/lists/fedo", &lists).is_some());
        assert!(pointer_problem("/ti/matched", &[]).is_some());
        assert_eq!(pointer_problem("/incident_class", &lists), None);
    }
}
