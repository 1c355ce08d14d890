//! Where things are written in the TOML file, for messages that name file, line and field:
//! the toml crate records the byte range of every key, value and table header it parses;
//! this turns a field's name (`connectors[1].matchers[0].regex`) or an error's byte range
//! into a line, and a byte offset back into the field written there. Values are never
//! quoted back, so a secret written in the file does not end up in a message.

use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// A parsed TOML document and its text.
pub struct Document<'a> {
    text: &'a str,
    /// The document's root table, and its range.
    root: DeValue<'a>,
    span: Range<usize>,
}

/// One step of a field's name: a key, or an index into an array.
enum Step<'f> {
    Key(&'f str),
    Index(usize),
}

impl<'a> Document<'a> {
    /// Parses `text`, and the first syntax error in it if any (the document then holds what
    /// could be read around it).
    pub fn parse(text: &'a str) -> (Document<'a>, Option<toml::de::Error>) {
        let (root, errors) = DeTable::parse_recoverable(text);
        let span = root.span();
        let root = DeValue::Table(root.into_inner());
        (Document { text, root, span }, errors.into_iter().next())
    }

    /// A deserializer over the document (for the typed form of the file).
    pub fn deserializer(&self) -> toml::de::Deserializer<'a> {
        let table = match &self.root {
            DeValue::Table(table) => table.clone(),
            _ => DeTable::new(),
        };
        toml::de::Deserializer::from(Spanned::new(self.span.clone(), table))
    }

    /// A deserializer for each part of the document that can be read alone: each top-level
    /// table, and each table of a top-level array of tables (`[[connectors]]`), with its key
    /// and index. After the first problem stops reading the whole, these find the others.
    pub fn parts(&self) -> Vec<(String, Option<usize>, toml::de::Deserializer<'a>)> {
        let DeValue::Table(root) = &self.root else {
            return vec![];
        };
        let alone = |value: &Spanned<DeValue<'a>>| match value.get_ref() {
            DeValue::Table(table) => Some(toml::de::Deserializer::from(Spanned::new(
                value.span(),
                table.clone(),
            ))),
            _ => None,
        };
        let mut parts = Vec::new();
        for (key, value) in root.iter() {
            let key = key.get_ref().to_string();
            match value.get_ref() {
                DeValue::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        parts.extend(alone(item).map(|d| (key.clone(), Some(i), d)));
                    }
                }
                _ => parts.extend(alone(value).map(|d| (key.clone(), None, d))),
            }
        }
        parts
    }

    /// The line (1-based) `offset` is on.
    pub fn line(&self, offset: usize) -> usize {
        let before = self.text.get(..offset).unwrap_or(self.text);
        before.matches('\n').count() + 1
    }

    /// The column (1-based, in characters) `offset` is at.
    pub fn column(&self, offset: usize) -> usize {
        let before = self.text.get(..offset).unwrap_or(self.text);
        before
            .rsplit('\n')
            .next()
            .map_or(1, |l| l.chars().count() + 1)
    }

    /// The line where `field` (e.g. `connectors[1].retry.max_attempts`) is written: its key's
    /// line, or, when it is not written, the line of the nearest table around it that is (a
    /// `[[connectors]]` header); `None` when not even its section is written.
    pub fn line_of(&self, field: &str) -> Option<usize> {
        let mut value = &self.root;
        let mut found: Option<Range<usize>> = None;
        for step in steps(field) {
            // A key is found at the key; an array's element (a `[[table]]`'s header, an
            // inline value) where it starts.
            let next = match (step, value) {
                (Step::Key(key), DeValue::Table(table)) => table
                    .iter()
                    .find(|(k, _)| k.get_ref() == key)
                    .map(|(k, v)| (k.span(), v)),
                (Step::Index(i), DeValue::Array(array)) => array.get(i).map(|v| (v.span(), v)),
                _ => None,
            };
            let Some((span, next)) = next else {
                break;
            };
            found = Some(span);
            value = next.get_ref();
        }
        found.map(|span| self.line(span.start))
    }

    /// Where `field`'s value starts, as a line and a column, when it is written.
    pub fn value_position(&self, field: &str) -> Option<(usize, usize)> {
        let mut value = &self.root;
        let mut span = None;
        for step in steps(field) {
            let next = match (step, value) {
                (Step::Key(key), DeValue::Table(table)) => table
                    .iter()
                    .find(|(k, _)| k.get_ref() == key)
                    .map(|(_, v)| v),
                (Step::Index(i), DeValue::Array(array)) => array.get(i),
                _ => None,
            }?;
            span = Some(next.span());
            value = next.get_ref();
        }
        span.map(|s| (self.line(s.start), self.column(s.start)))
    }

    /// The field written at `span` (an error's): the innermost key or value that holds its
    /// start, named as the validator names fields (`server.max_body_bytes`,
    /// `connectors[0].to[1]`); else the key written there (one the document dropped, such as a
    /// duplicate) in the table whose header comes last before it. `None` for an empty range
    /// (the document as a whole).
    pub fn field_at(&self, span: Range<usize>) -> Option<String> {
        if span.is_empty() {
            return None;
        }
        let name = match path_to(&self.root, span.start) {
            Some(name) => name,
            None => {
                let key = self.text.get(span.clone())?.trim();
                if key.is_empty() || key.contains(char::is_whitespace) {
                    return None;
                }
                let mut tables = vec![(String::new(), 0)];
                headers(self.text, &self.root, String::new(), &mut tables);
                let (table, _) = tables
                    .into_iter()
                    .filter(|(_, start)| *start <= span.start)
                    .max_by_key(|(_, start)| *start)?;
                format!("{table}.{key}")
            }
        };
        let name = name.trim_start_matches('.');
        (!name.is_empty()).then(|| name.to_string())
    }

    /// A TOML error as `line L, column C: field: message`.
    pub fn describe(&self, e: &toml::de::Error) -> String {
        let message = with_suggestion(e.message().trim());
        let Some(span) = e.span() else {
            return message;
        };
        let (line, column) = (self.line(span.start), self.column(span.start));
        match self.field_at(span) {
            Some(field) => format!("line {line}, column {column}: {field}: {message}"),
            None => format!("line {line}, column {column}: {message}"),
        }
    }
}

/// serde's "unknown field `templte`, expected one of `name`, `template`, …" with the field
/// most likely meant first: "(did you mean `template`?)".
fn with_suggestion(message: &str) -> String {
    let Some((name, expected)) = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split_once("`, expected "))
    else {
        return message.to_string();
    };
    // The names are the quoted parts of the list.
    let candidates: Vec<String> = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(String::from)
        .collect();
    match crate::fields::best_candidate(name, &candidates) {
        Some(meant) => {
            format!("unknown field `{name}` (did you mean `{meant}`?), expected {expected}")
        }
        None => message.to_string(),
    }
}

/// The path (`.server.listen`, `.connectors[1].to[0]`) of the innermost key or value under
/// `value` whose range holds `offset`. A table's range is its header only, so every table is
/// searched, not just one whose range holds the offset.
fn path_to(value: &DeValue, offset: usize) -> Option<String> {
    let children: Vec<(String, &Spanned<DeValue>, bool)> = match value {
        DeValue::Table(table) => table
            .iter()
            .map(|(k, v)| (format!(".{}", k.get_ref()), v, k.span().contains(&offset)))
            .collect(),
        DeValue::Array(array) => array
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("[{i}]"), v, false))
            .collect(),
        _ => return None,
    };
    children.into_iter().find_map(
        |(step, child, on_key)| match path_to(child.get_ref(), offset) {
            Some(rest) => Some(step + &rest),
            None => (on_key || child.span().contains(&offset)).then_some(step),
        },
    )
}

/// Every table under `value` opened by a header (`[server]`, `[[connectors]]`), with where its
/// header starts.
fn headers(text: &str, value: &DeValue, path: String, out: &mut Vec<(String, usize)>) {
    let children: Vec<(String, &Spanned<DeValue>)> = match value {
        DeValue::Table(table) => table
            .iter()
            .map(|(k, v)| (format!("{path}.{}", k.get_ref()), v))
            .collect(),
        DeValue::Array(array) => array
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("{path}[{i}]"), v))
            .collect(),
        _ => return,
    };
    for (path, child) in children {
        let written = text.get(child.span()).unwrap_or("");
        if matches!(child.get_ref(), DeValue::Table(_)) && written.starts_with('[') {
            out.push((path.clone(), child.span().start));
        }
        headers(text, child.get_ref(), path, out);
    }
}

/// `connectors[1].matchers[0].regex` → connectors, 1, matchers, 0, regex.
fn steps(field: &str) -> impl Iterator<Item = Step<'_>> {
    field.split('.').flat_map(|part| {
        let mut pieces = part.split('[');
        let key = pieces.next().filter(|k| !k.is_empty()).map(Step::Key);
        let indexes = pieces.filter_map(|i| i.trim_end_matches(']').parse().ok().map(Step::Index));
        key.into_iter().chain(indexes)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "[server]\nlisten = \"x\"\n[[connectors]]\nname = \"a\"\n[[connectors]]\nname = \"b\"\ntemplate = \"t\"\n[connectors.retry]\nmax_attempts = 0\n[[connectors.matchers]]\nfield = \"/x\"\nregex = \"(\"\n";

    #[test]
    fn finds_the_line_a_field_is_written_on() {
        let (doc, error) = Document::parse(TEXT);
        assert!(error.is_none());
        assert_eq!(doc.line_of("server.listen"), Some(2));
        assert_eq!(doc.line_of("connectors[1].template"), Some(7));
        assert_eq!(doc.line_of("connectors[1].retry.max_attempts"), Some(9));
        assert_eq!(doc.line_of("connectors[1].matchers[0].regex"), Some(12));
        // Not written in the first connector: its header.
        assert_eq!(doc.line_of("connectors[0].template"), Some(3));
        assert_eq!(doc.line_of("storage.url"), None);
    }

    #[test]
    fn inline_values_are_found_at_their_key() {
        let text = "[[connectors]]\nname = \"a\"\nto = [\n  \"a@x\",\n  \"b@x\",\n]\nretry = { max_attempts = 0 }\n";
        let (doc, _) = Document::parse(text);
        assert_eq!(doc.line_of("connectors[0].to"), Some(3));
        assert_eq!(doc.line_of("connectors[0].to[1]"), Some(5));
        assert_eq!(doc.line_of("connectors[0].retry.max_attempts"), Some(7));
        assert_eq!(doc.line_of("connectors[0].retry.schedule"), Some(7));
    }

    #[test]
    fn names_the_field_at_an_offset() {
        let (doc, _) = Document::parse(TEXT);
        let at = |needle: &str| {
            let start = TEXT.find(needle).unwrap();
            start..start + needle.len()
        };
        assert_eq!(doc.field_at(at("\"x\"")).as_deref(), Some("server.listen"));
        assert_eq!(
            doc.field_at(at("0\n")).as_deref(),
            Some("connectors[1].retry.max_attempts")
        );
        assert_eq!(
            doc.field_at(at("\"(\"")).as_deref(),
            Some("connectors[1].matchers[0].regex")
        );
        // The document as a whole (a missing section): no field.
        assert_eq!(doc.field_at(0..0), None);
    }

    #[test]
    fn names_a_duplicate_key_by_the_table_it_is_written_in() {
        let text = "[server]\nlisten = \"x\"\n[[connectors]]\nname = \"a\"\nname = \"b\"\n";
        let (doc, error) = Document::parse(text);
        let message = doc.describe(&error.unwrap());
        assert_eq!(
            message,
            "line 5, column 1: connectors[0].name: duplicate key"
        );
    }

    #[test]
    fn an_unknown_field_gets_the_one_most_likely_meant() {
        assert_eq!(
            with_suggestion("unknown field `templte`, expected one of `name`, `template`"),
            "unknown field `templte` (did you mean `template`?), expected one of `name`, `template`"
        );
        assert_eq!(
            with_suggestion("unknown field `zzz`, expected `name`"),
            "unknown field `zzz`, expected `name`"
        );
    }

    #[test]
    fn describes_a_syntax_error_with_line_column_and_field() {
        let text = "[server]\nlisten = \"x\"\nmax_body_bytes = 12abc\n";
        let (doc, error) = Document::parse(text);
        let message = doc.describe(&error.unwrap());
        assert!(
            message.starts_with("line 3, column 18: server.max_body_bytes: "),
            "{message}"
        );
    }
}
