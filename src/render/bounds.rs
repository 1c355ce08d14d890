//! Bounds on what one render may cost: input caps for the text-conversion helpers, so each
//! runs in time linear in a capped input, and a time budget every helper call checks.
//!
//! HTML parsers and renderers do work that grows with the square of the nesting depth (an
//! open-element stack scanned per tag, an indent stack per line), so a document nested 50,000
//! deep costs seconds. The helpers cut their input before it reaches the parser: at
//! [`MAX_CONVERT_BYTES`], and at the first tag nested deeper than [`MAX_HTML_DEPTH`] (or
//! Markdown container deeper than [`MAX_MARKDOWN_DEPTH`]), and say so in their output.

use std::borrow::Cow;
use std::cell::Cell;
use std::time::{Duration, Instant};

/// The most of its input a text-conversion helper reads.
pub const MAX_CONVERT_BYTES: usize = 256 * 1024;
/// The deepest HTML element nesting a conversion keeps; what is inside deeper is cut.
pub const MAX_HTML_DEPTH: usize = 64;
/// The most start tags (`<` and a letter, wherever it stands) a conversion reads. The parser's
/// cost grows with tags × depth, and depth can never exceed the tags, so this bounds it
/// whatever the nesting scan below makes of odd markup.
pub const MAX_HTML_TAGS: usize = 8192;
/// The deepest Markdown container nesting (block quotes, list items) a conversion keeps.
pub const MAX_MARKDOWN_DEPTH: usize = 32;
/// The most text one helper call may produce (`replace` can multiply its input).
pub const MAX_HELPER_OUTPUT_BYTES: usize = 4 * 1024 * 1024;

/// Input cut to what a conversion may read, and the note that says what was cut.
pub struct Bounded<'a> {
    pub text: Cow<'a, str>,
    pub note: Option<String>,
}

impl Bounded<'_> {
    /// The converted text with the note, if any, on a line of its own at the end.
    pub fn finish(&self, converted: String) -> String {
        match &self.note {
            None => converted,
            Some(note) if converted.is_empty() => note.clone(),
            Some(note) => format!("{converted}\n{note}"),
        }
    }
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
fn prefix(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn size_note() -> String {
    format!(
        "[… truncated: the input is longer than {} KiB]",
        MAX_CONVERT_BYTES / 1024
    )
}

/// Elements that never hold content.
const VOID: &[&str] = &[
    "area", "base", "br", "col", "embed", "hr", "img", "input", "keygen", "link", "meta", "param",
    "source", "track", "wbr", "frame", "basefont", "bgsound", "image",
];
/// Elements a sibling of their kind closes (`<li><li>`): they do not deepen the tree by
/// repeating, and their containers (`ul`, `table`, `dl`, `select`) are counted.
const SELF_CLOSING_SIBLINGS: &[&str] = &[
    "p", "li", "dt", "dd", "tr", "td", "th", "option", "optgroup", "thead", "tbody", "tfoot",
    "colgroup", "rb", "rt", "rp", "rtc",
];
/// Elements whose content html2text indents line by line (a list marker, `> `, a definition
/// indent): each line inside carries one prefix per such element around it.
const INDENTING: &[&str] = &["ul", "ol", "blockquote", "dl", "dd", "menu", "dir"];
/// What one indenting element may add to a line: list markers reach 21 columns
/// (`<ol start=1000000000000000000>`), plus the space after.
const INDENT_BYTES: usize = 24;

/// Elements whose content is text up to their end tag.
const RAW_TEXT: &[&str] = &[
    "script", "style", "textarea", "title", "xmp", "iframe", "noembed", "noframes", "noscript",
];

fn find_ignore_case(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    (from..=haystack.len() - needle.len())
        .find(|&i| haystack[i..i + needle.len()].eq_ignore_ascii_case(needle))
}

/// The end of a tag that starts at `start` (just past its `>`), skipping quoted attribute
/// values; the end of the text when it never closes.
fn tag_end(bytes: &[u8], start: usize) -> usize {
    let mut quote = None;
    let mut i = start;
    while i < bytes.len() {
        let b = bytes[i];
        match quote {
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None if b == b'"' || b == b'\'' => quote = Some(b),
            None if b == b'>' => return i + 1,
            None => {}
        }
        i += 1;
    }
    bytes.len()
}

fn tag_name(bytes: &[u8], from: usize) -> (String, usize) {
    let mut end = from;
    while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'-') {
        end += 1;
    }
    (
        String::from_utf8_lossy(&bytes[from..end]).to_ascii_lowercase(),
        end,
    )
}

/// Cuts HTML at [`MAX_CONVERT_BYTES`], before the first element that would open deeper than
/// [`MAX_HTML_DEPTH`], and where the text it converts to would pass
/// [`MAX_HELPER_OUTPUT_BYTES`]: every line of output carries a prefix per indenting element
/// around it, so many short lines deep in lists would otherwise come out hundreds of times
/// larger than they went in. One linear pass over a stack of open elements that over-counts
/// rather than under-counts what a browser would nest (end tags close only what they name),
/// so the parser behind it never sees a deeper tree.
pub fn bound_html(html: &str) -> Bounded<'_> {
    let mut capped = prefix(html, MAX_CONVERT_BYTES);
    let mut note = (capped.len() < html.len()).then(size_note);
    // Counted on the raw bytes, so no reading of comments, quotes or raw text can hide a tag.
    if let Some((at, _)) = capped
        .as_bytes()
        .windows(2)
        .enumerate()
        .filter(|(_, w)| w[0] == b'<' && w[1].is_ascii_alphabetic())
        .nth(MAX_HTML_TAGS)
    {
        capped = &capped[..at];
        note = Some(format!(
            "[… truncated: the HTML has more than {MAX_HTML_TAGS} tags]"
        ));
    }
    let bytes = capped.as_bytes();
    let mut open: Vec<String> = Vec::new();
    let mut foreign = 0usize; // open <svg>/<math>: inside them every element nests.
    let mut indent = 0usize; // bytes of prefix each output line gets here
    let mut estimate = 0usize; // output bytes so far, over-estimated
    let mut i = 0;
    while i < bytes.len() {
        // A line break (kept inside <pre>) or a tag (which may start a line) may cost a line.
        if bytes[i] == b'\n' || bytes[i] == b'<' {
            estimate += indent + 1;
        }
        if estimate > MAX_HELPER_OUTPUT_BYTES {
            return Bounded {
                text: Cow::Borrowed(&capped[..i]),
                note: Some(format!(
                    "[… truncated: the text would be longer than {} MiB]",
                    MAX_HELPER_OUTPUT_BYTES / (1024 * 1024)
                )),
            };
        }
        if bytes[i] != b'<' {
            estimate += 1;
            i += 1;
            continue;
        }
        let start = i;
        let rest = &bytes[i..];
        if rest.starts_with(b"<!--") {
            i = find_ignore_case(bytes, b"-->", i + 4).map_or(bytes.len(), |e| e + 3);
            continue;
        }
        if rest.len() > 2 && rest[1] == b'/' && rest[2].is_ascii_alphabetic() {
            let (name, after) = tag_name(bytes, i + 2);
            if let Some(at) = open.iter().rposition(|n| *n == name) {
                for closed in open.drain(at..) {
                    if closed == "svg" || closed == "math" {
                        foreign = foreign.saturating_sub(1);
                    }
                    if INDENTING.contains(&closed.as_str()) {
                        indent = indent.saturating_sub(INDENT_BYTES);
                    }
                }
            }
            i = tag_end(bytes, after);
            continue;
        }
        if rest.len() > 1 && rest[1].is_ascii_alphabetic() {
            let (name, after) = tag_name(bytes, i + 1);
            let end = tag_end(bytes, after);
            let self_closed = end >= 2 && bytes[end - 2] == b'/' && bytes[end - 1] == b'>';
            i = end;
            if RAW_TEXT.contains(&name.as_str()) && !self_closed {
                let close = format!("</{name}");
                i = find_ignore_case(bytes, close.as_bytes(), end).unwrap_or(bytes.len());
                continue;
            }
            let nests = !self_closed
                && !VOID.contains(&name.as_str())
                && (foreign > 0 || !SELF_CLOSING_SIBLINGS.contains(&name.as_str()));
            if !nests {
                continue;
            }
            if open.len() >= MAX_HTML_DEPTH {
                note = Some(format!(
                    "[… truncated: the HTML nests deeper than {MAX_HTML_DEPTH} levels]"
                ));
                return Bounded {
                    text: Cow::Borrowed(&capped[..start]),
                    note,
                };
            }
            if name == "svg" || name == "math" {
                foreign += 1;
            }
            if INDENTING.contains(&name.as_str()) {
                indent += INDENT_BYTES;
            }
            open.push(name);
            continue;
        }
        i += 1;
    }
    Bounded {
        text: Cow::Borrowed(capped),
        note,
    }
}

/// How many containers (block quotes, list items) a Markdown line opens before its text. A
/// list marker indented by N spaces sits about N/2 lists deep (a sublist is indented past its
/// parent's marker), so it counts that too; indentation before plain text does not.
fn markdown_line_depth(line: &str) -> usize {
    let bytes = line.as_bytes();
    let (mut depth, mut i) = (0, 0);
    loop {
        let spaces = bytes[i..]
            .iter()
            .take_while(|b| **b == b' ' || **b == b'\t')
            .count();
        i += spaces;
        let marker = match bytes.get(i) {
            Some(b'>') => Some((1, 0)),
            Some(b'-' | b'*' | b'+') if bytes.get(i + 1) == Some(&b' ') => Some((2, spaces / 2)),
            Some(b'0'..=b'9') => {
                let digits = bytes[i..].iter().take_while(|b| b.is_ascii_digit()).count();
                let delimited = matches!(bytes.get(i + digits), Some(b'.' | b')'))
                    && bytes.get(i + digits + 1) == Some(&b' ');
                delimited.then_some((digits + 2, spaces / 2))
            }
            _ => None,
        };
        let Some((width, indent_levels)) = marker else {
            return depth;
        };
        depth += 1 + indent_levels;
        i += width;
    }
}

/// Cuts Markdown at [`MAX_CONVERT_BYTES`] and before the first line that opens containers
/// deeper than [`MAX_MARKDOWN_DEPTH`]; bracket and emphasis runs are capped by the size alone
/// (the parser handles those in linear time).
pub fn bound_markdown(markdown: &str) -> Bounded<'_> {
    let capped = prefix(markdown, MAX_CONVERT_BYTES);
    let note = (capped.len() < markdown.len()).then(size_note);
    let mut offset = 0;
    for line in capped.split_inclusive('\n') {
        if markdown_line_depth(line) > MAX_MARKDOWN_DEPTH {
            return Bounded {
                text: Cow::Borrowed(&capped[..offset]),
                note: Some(format!(
                    "[… truncated: the Markdown nests deeper than {MAX_MARKDOWN_DEPTH} levels]"
                )),
            };
        }
        offset += line.len();
    }
    Bounded {
        text: Cow::Borrowed(capped),
        note,
    }
}

thread_local! {
    /// When the render running on this thread must stop. Set around a delivery's render on
    /// its blocking thread; helpers check it, so a template that loops over costly helpers
    /// ends at the budget instead of holding the thread.
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Runs `render` with a time budget that every helper call checks.
pub fn with_budget<T>(budget: Duration, render: impl FnOnce() -> T) -> T {
    struct Reset(Option<Instant>);
    impl Drop for Reset {
        fn drop(&mut self) {
            DEADLINE.with(|d| d.set(self.0));
        }
    }
    let previous = DEADLINE.with(|d| d.replace(Instant::now().checked_add(budget)));
    let _reset = Reset(previous);
    render()
}

/// Why a helper stopped: a bound every render shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Exceeded {
    /// The running render's time budget is spent.
    #[error("the render time budget is spent")]
    Budget,
    /// The helper's result would be larger than any request may be.
    #[error("the result would be larger than {} MiB", MAX_HELPER_OUTPUT_BYTES / (1024 * 1024))]
    Output,
}

/// `Err` once the running render's budget is spent.
pub fn check_budget() -> Result<(), Exceeded> {
    if budget_spent() {
        return Err(Exceeded::Budget);
    }
    Ok(())
}

/// Whether the render running on this thread has used up its budget (false outside one).
pub fn budget_spent() -> bool {
    DEADLINE
        .with(Cell::get)
        .is_some_and(|deadline| Instant::now() >= deadline)
}

/// `Err` when a helper's output is larger than any request may be.
pub fn check_output(text: &str) -> Result<(), Exceeded> {
    if text.len() > MAX_HELPER_OUTPUT_BYTES {
        return Err(Exceeded::Output);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_cut_before_the_first_element_too_deep() {
        let deep = "<div>".repeat(10_000) + "x";
        let b = bound_html(&deep);
        assert_eq!(b.text.len(), MAX_HTML_DEPTH * 5);
        assert!(b.note.as_deref().is_some_and(|n| n.contains("64 levels")));
        // Closed siblings never deepen it.
        let flat = "<div>a</div>".repeat(8_000);
        let b = bound_html(&flat);
        assert_eq!(b.text.len(), flat.len());
        assert!(b.note.is_none());
        // Unclosed list items and paragraphs close each other; their lists count.
        let items = "<ul>".to_string() + &"<li>x".repeat(5_000) + "</ul>";
        assert!(bound_html(&items).note.is_none());
        let lists = "<ul><li>".repeat(100);
        assert!(bound_html(&lists).note.is_some());
        // Inside SVG everything nests.
        let svg = "<svg>".to_string() + &"<td>".repeat(100);
        assert!(bound_html(&svg).note.is_some());
        // Tags in comments, attributes and scripts do not count.
        let hidden = format!(
            "<!--{}--><a title='{}'>x</a><script>{}</script>",
            "<div>".repeat(100),
            "<div>".repeat(100),
            "<div>".repeat(100)
        );
        assert!(bound_html(&hidden).note.is_none());
        // A mismatched end tag closes nothing.
        let mismatched = "<b a=1></i>".repeat(100);
        assert!(bound_html(&mismatched).note.is_some());
    }

    /// Markup the nesting scan reads differently from a browser: the tag cap bounds it all.
    #[test]
    fn odd_markup_cannot_slip_a_deep_tree_past_the_caps() {
        let hostile = [
            "<rt>".repeat(60_000),
            "<optgroup>".repeat(25_000),
            "<p_>".repeat(60_000),
            "<i x'>".to_string() + &"<div>".repeat(50_000),
            "<!-->".to_string() + &"<div>".repeat(50_000),
            "<svg><title>".to_string() + &"<g>".repeat(60_000),
            ("<b>".to_string() + &"<div>".repeat(60) + "</b>").repeat(800),
        ];
        for doc in hostile {
            let b = bound_html(&doc);
            let tags = b
                .text
                .as_bytes()
                .windows(2)
                .filter(|w| w[0] == b'<' && w[1].is_ascii_alphabetic())
                .count();
            assert!(
                tags <= MAX_HTML_TAGS + 1,
                "{tags} tags kept of {}",
                &doc[..12]
            );
            assert!(b.note.is_some(), "{}", &doc[..12]);
        }
    }

    #[test]
    fn html_is_cut_where_its_text_would_pass_the_output_cap() {
        // Line breaks deep inside lists: each output line carries every level's prefix.
        let deep = "<ol start=1000000000000000000><li>".repeat(60);
        let doc = format!("{deep}<pre>{}</pre>", "\n".repeat(200_000));
        let b = bound_html(&doc);
        assert!(b.text.len() < doc.len());
        assert!(
            b.note.as_deref().is_some_and(|n| n.contains("4 MiB")),
            "{:?}",
            b.note
        );
        // The same lines without the lists are kept whole.
        let flat = format!("<pre>{}</pre>", "\n".repeat(200_000));
        assert!(bound_html(&flat).note.is_none());
    }

    #[test]
    fn html_and_markdown_are_cut_at_the_size_cap_on_a_char_boundary() {
        let big = "é".repeat(MAX_CONVERT_BYTES);
        let b = bound_html(&big);
        assert!(b.text.len() <= MAX_CONVERT_BYTES && b.text.len() >= MAX_CONVERT_BYTES - 1);
        assert!(b.note.as_deref().is_some_and(|n| n.contains("256 KiB")));
        let b = bound_markdown(&big);
        assert!(b.text.len() <= MAX_CONVERT_BYTES);
        assert!(b.finish("out".into()).ends_with("256 KiB]"));
    }

    #[test]
    fn markdown_is_cut_before_the_first_line_too_deep() {
        let text = "ok\n".to_string() + &">".repeat(1000) + " deep\nafter\n";
        let b = bound_markdown(&text);
        assert_eq!(b.text, "ok\n");
        assert!(b.note.is_some());
        let nested_list: String = (0..100)
            .map(|i| format!("{}- x\n", "  ".repeat(i)))
            .collect();
        assert!(bound_markdown(&nested_list).note.is_some());
        let list = "- a\n- b\n  - c\n> quote\n";
        assert!(bound_markdown(list).note.is_none());
    }

    #[test]
    fn the_budget_is_checked_on_this_thread_only() {
        assert!(check_budget().is_ok());
        with_budget(Duration::ZERO, || {
            assert_eq!(check_budget(), Err(Exceeded::Budget));
            assert!(budget_spent());
        });
        assert!(check_budget().is_ok());
        with_budget(Duration::from_secs(60), || assert!(check_budget().is_ok()));
    }
}
