//! Secrets: API keys, signing secrets, tokens and passwords never leave the process in clear.
//! Text bound for a log line, an attempt record, an error or the admin API is masked first.
//!
//! A receiver that echoes a credential rarely echoes it byte for byte: PHP escapes `/` as
//! `\/` in JSON, a query string percent-encodes it, Basic auth and SMTP `AUTH PLAIN` carry it
//! in base64 beside a user name, a template may upper-case it. So each secret is masked in
//! every such form: its JSON, HTML and URL encodings, in any ASCII letter case, and inside any
//! base64 token whose decoded bytes contain it.

use base64::Engine as _;

const MASK: &str = "********";

/// The shortest secret masked: shorter values would mask ordinary words.
const MIN_SECRET_LEN: usize = 4;

/// The shortest base64 token decoded in search of a secret (`user:pass` of 4-char parts).
const MIN_BASE64_TOKEN: usize = 8;

/// Header names that carry credentials: their values are masked wherever they are shown.
pub fn is_credential_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n == "authorization"
        || n == "proxy-authorization"
        || n == "cookie"
        || n.contains("token")
        || n.contains("secret")
        || n.contains("api-key")
        || n.contains("apikey")
        || n.contains("password")
}

/// Strings that must never leave the process in clear, with the forms they travel in.
#[derive(Clone, Default)]
pub struct Secrets {
    /// Each secret as written, longest first, so one containing another is masked whole.
    values: Vec<String>,
    /// Every form of every secret (the plain one included), longest first.
    forms: Vec<String>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secrets({} masked)", self.values.len())
    }
}

/// Percent-encoding as `encodeURIComponent` does it (unreserved characters kept).
const URI_COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// The forms one secret may be echoed in.
fn forms(secret: &str) -> Vec<String> {
    let json = serde_json::to_string(secret).unwrap_or_default();
    let json = json.trim_matches('"').to_string();
    let json_ascii: String = json
        .chars()
        .flat_map(|c| {
            if c.is_ascii() {
                vec![c.to_string()]
            } else {
                let mut units = [0u16; 2];
                c.encode_utf16(&mut units)
                    .iter()
                    .map(|u| format!("\\u{u:04x}"))
                    .collect()
            }
        })
        .collect();
    let html = secret
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;");
    let uri = percent_encoding::utf8_percent_encode(secret, URI_COMPONENT).to_string();
    let all = percent_encoding::utf8_percent_encode(secret, percent_encoding::NON_ALPHANUMERIC)
        .to_string();
    let mut out = vec![
        secret.to_string(),
        // Letters beyond ASCII change case by Unicode's rules, which byte matching misses.
        secret.to_uppercase(),
        secret.to_lowercase(),
        json.replace('/', "\\/"),
        json_ascii.replace('/', "\\/"),
        json_ascii,
        json,
        html,
        uri.replace("%20", "+"),
        uri,
        all,
    ];
    out.sort();
    out.dedup();
    out
}

/// `text` with every occurrence of `needle` in any ASCII letter case replaced by the mask.
fn mask_ignoring_ascii_case(text: &str, needle: &str) -> Option<String> {
    let (hay, pat) = (text.as_bytes(), needle.as_bytes());
    if pat.is_empty() || hay.len() < pat.len() {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    let (mut copied, mut i, mut found) = (0, 0, false);
    while i + pat.len() <= hay.len() {
        // A match of ASCII bytes starts and ends on character boundaries.
        if hay[i].eq_ignore_ascii_case(&pat[0]) && hay[i..i + pat.len()].eq_ignore_ascii_case(pat) {
            out.push_str(&text[copied..i]);
            out.push_str(MASK);
            i += pat.len();
            copied = i;
            found = true;
        } else {
            i += 1;
        }
    }
    if !found {
        return None;
    }
    out.push_str(&text[copied..]);
    Some(out)
}

fn is_base64_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_' | b'=')
}

/// The bytes a base64 token stands for, in the standard or URL-safe alphabet, padded or not.
fn decode_base64(token: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let bare = token.trim_end_matches('=');
    STANDARD_NO_PAD
        .decode(bare)
        .or_else(|_| URL_SAFE_NO_PAD.decode(bare))
        .ok()
}

impl Secrets {
    pub fn new(values: impl IntoIterator<Item = String>) -> Self {
        let mut values: Vec<String> = values
            .into_iter()
            .filter(|v| v.len() >= MIN_SECRET_LEN)
            .collect();
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        values.dedup();
        let mut forms: Vec<String> = values.iter().flat_map(|v| forms(v)).collect();
        forms.sort_by_key(|v| std::cmp::Reverse(v.len()));
        forms.dedup();
        Secrets { values, forms }
    }

    /// Replaces every known secret in `text`, in each form it may take, with `********`.
    pub fn mask(&self, text: &str) -> String {
        if self.values.is_empty() {
            return text.to_string();
        }
        let mut out = self.mask_base64(text);
        for form in &self.forms {
            if let Some(masked) = mask_ignoring_ascii_case(&out, form) {
                out = masked;
            }
        }
        out
    }

    /// Base64 tokens whose decoded bytes hold a secret (`Basic dXNlcjpzZWNyZXQ=`, `AUTH PLAIN`)
    /// become the mask.
    fn mask_base64(&self, text: &str) -> String {
        let bytes = text.as_bytes();
        let mut out = String::with_capacity(text.len());
        let (mut copied, mut i) = (0, 0);
        while i < bytes.len() {
            if !is_base64_byte(bytes[i]) {
                i += 1;
                continue;
            }
            let start = i;
            while i < bytes.len() && is_base64_byte(bytes[i]) {
                i += 1;
            }
            // Base64 bytes are ASCII: `start..i` lies on character boundaries.
            let token = &text[start..i];
            if token.len() >= MIN_BASE64_TOKEN && self.hides_a_secret(token) {
                out.push_str(&text[copied..start]);
                out.push_str(MASK);
                copied = i;
            }
        }
        out.push_str(&text[copied..]);
        out
    }

    fn hides_a_secret(&self, token: &str) -> bool {
        let Some(decoded) = decode_base64(token) else {
            return false;
        };
        self.values.iter().any(|secret| {
            let secret = secret.as_bytes();
            decoded
                .windows(secret.len())
                .any(|w| w.eq_ignore_ascii_case(secret))
        })
    }

    /// Whether `text` shows any secret in any form masking would catch.
    pub fn contains_any(&self, text: &str) -> bool {
        self.mask(text) != text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;

    #[test]
    fn masks_secrets_longest_first() {
        let s = Secrets::new(["abcd".to_string(), "abcdefgh".to_string(), "x".to_string()]);
        assert_eq!(s.mask("k=abcdefgh, j=abcd, x"), "k=********, j=********, x");
    }

    #[test]
    fn masks_every_encoding_a_receiver_may_echo() {
        let secret = "s3cr3t/t0ken+k=ü \"q\"";
        let s = Secrets::new([secret.to_string()]);
        let echoes = [
            secret.to_string(),
            secret.to_uppercase(),
            secret.to_ascii_lowercase(),
            serde_json::to_string(secret).unwrap(),
            serde_json::to_string(secret).unwrap().replace('/', "\\/"),
            "s3cr3t\\/t0ken+k=\\u00fc \\\"q\\\"".to_string(),
            percent_encoding::utf8_percent_encode(secret, URI_COMPONENT).to_string(),
            percent_encoding::utf8_percent_encode(secret, percent_encoding::NON_ALPHANUMERIC)
                .to_string()
                .to_lowercase(),
            format!("Basic {}", STANDARD.encode(format!("user:{secret}"))),
            STANDARD.encode(format!("\0user\0{secret}")),
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("u:{secret}")),
            "s3cr3t/t0ken+k=ü &quot;q&quot;".to_string(),
        ];
        for echo in echoes {
            let text = format!("echo: [{echo}] end");
            let masked = s.mask(&text);
            assert!(masked.contains("********"), "{echo:?} -> {masked:?}");
            assert!(
                !masked.contains("s3cr3t") && !masked.contains("S3CR3T"),
                "{masked}"
            );
            assert!(
                masked.starts_with("echo: [") && masked.ends_with("] end"),
                "{masked}"
            );
            assert!(s.contains_any(&text));
        }
        assert_eq!(
            s.mask("nothing here, ZGF0YQ== 12345678"),
            "nothing here, ZGF0YQ== 12345678"
        );
    }
}
