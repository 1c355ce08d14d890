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

#[cfg(test)]
mod tests {
    use super::*;

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
