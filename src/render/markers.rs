//! Thread markers: ticketing systems file a mail onto an existing ticket by a marker in its
//! subject or body — Redmine `[#N]` or `[Project - Tracker #N]`, Request Tracker
//! `[rtname #N]`, Zammad `[Ticket#N]`. Incident text is written by whoever caused the
//! incident, so a summary like `svc [#3]` would file the mail on unrelated ticket 3. Every
//! bracketed marker in what a mail's templates render becomes parenthesised (`svc (#3)`,
//! still readable, matched by none of those systems); only the tag the gateway adds after
//! rendering (`subject_tag`) may carry a marker.

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::Regex;

/// `[` … `#` digits `]`, with anything but brackets before the `#`: the shape of every
/// bracketed marker above.
static BRACKETED_MARKER: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"\[([^\[\]\r\n]{0,200}?#\s*[0-9]+)\]").ok());

/// `text` with every bracketed thread marker parenthesised.
pub fn defang(text: &str) -> Cow<'_, str> {
    match BRACKETED_MARKER.as_ref() {
        Some(marker) => marker.replace_all(text, "($1)"),
        // The pattern is a constant that compiles; if it ever did not, a marker is
        // neutralised the blunt way rather than passed through.
        None => Cow::Owned(text.replace('[', "(").replace(']', ")")),
    }
}

/// As [`defang`], keeping `text` itself when it holds no marker (a mail body is not copied).
pub fn defanged(text: String) -> String {
    let changed = match defang(&text) {
        Cow::Owned(safe) => Some(safe),
        Cow::Borrowed(_) => None,
    };
    changed.unwrap_or(text)
}

/// A line that starts like `Key: value`, which a ticketing system's mail handler may read as
/// a command: Redmine sets attributes from such lines anywhere in the text (`Status: Closed`,
/// `Assigned to: …`, any custom field's name), Request Tracker's CommandByMail from the lines
/// a body starts with.
static COMMAND_LINE: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"(?m)^([ \t]*)([^\s:][^:\r\n]{0,100}:)").ok());

/// `text` with every line that could be read as a mail command made inert: a zero-width space
/// goes before its first character, so no handler's `^\s*Key\s*:` pattern matches it, and
/// the line reads the same. Only the gateway's own commands, added after, are commands.
pub fn defang_commands(text: &str) -> String {
    match COMMAND_LINE.as_ref() {
        Some(line) => line.replace_all(text, "$1\u{200B}$2").into_owned(),
        // The pattern is a constant that compiles; if it ever did not, every colon is made
        // inert rather than a command passed through.
        None => text.replace(':', "\u{2236}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_line_of_incident_text_reads_as_a_mail_command() {
        let text = "Status: Closed\n  Assigned to: mallory\nCF.{Correlation key}: x\nplain line\nurl http://a:b\n";
        let safe = defang_commands(text);
        assert_eq!(
            safe,
            "\u{200B}Status: Closed\n  \u{200B}Assigned to: mallory\n\u{200B}CF.{Correlation key}: x\nplain line\n\u{200B}url http://a:b\n"
        );
        // A line with any colon is made inert (a field's name may hold spaces): harmless, as
        // the space is invisible. Redmine's keyword pattern (^[ \t]*Keyword[ \t]*:) finds nothing any more.
        let redmine = Regex::new(r"(?mi)^[ \t]*(Status|Assigned to)[ \t]*:").unwrap();
        assert!(redmine.is_match(text) && !redmine.is_match(&safe));
    }

    #[test]
    fn no_bracketed_marker_survives() {
        for (forged, safe) in [
            ("svc [#3] down", "svc (#3) down"),
            ("[Security - Bug #42] x", "(Security - Bug #42) x"),
            ("re: [rt.example.com #12]", "re: (rt.example.com #12)"),
            ("[Ticket#99] please", "(Ticket#99) please"),
            ("[# 7]", "(# 7)"),
            ("a [#1] b [x #2]", "a (#1) b (x #2)"),
        ] {
            assert_eq!(defang(forged), safe);
        }
        // What is not a marker is left alone (and not copied).
        for text in [
            "[ww1k39] Brute force",
            "issue #3",
            "[#] x",
            "[abc]",
            "C# [net]",
        ] {
            assert!(
                matches!(defang(text), Cow::Borrowed(t) if t == text),
                "{text}"
            );
        }
    }
}
