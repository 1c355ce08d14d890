//! Signatures: what a receiver checks to know a request came from this gateway, unchanged,
//! and what the gateway checks of a signed request coming in. It imports nothing from the
//! crate: configuration holds its secrets, delivery signs with them, ingress verifies.
//!
//! Standard Webhooks: `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`,
//! one signature per secret (space-separated) so a receiver can rotate its secret without a
//! gap. GitHub style: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>`.
//! The same code verifies inbound Standard Webhooks signatures at ingress.

use std::collections::BTreeMap;

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// A Standard Webhooks secret: `whsec_` + base64 key.
#[derive(Clone)]
pub struct WebhookSecret {
    key: Vec<u8>,
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(********)")
    }
}

/// Why a Standard Webhooks secret is refused; never quotes the secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadSecret {
    #[error("a Standard Webhooks secret starts with whsec_")]
    NoPrefix,
    #[error("the part after whsec_ is not base64")]
    NotBase64,
    #[error("the secret's key is shorter than 16 bytes")]
    TooShort,
}

impl WebhookSecret {
    /// Parses `whsec_<base64>`; the error never quotes the secret.
    pub fn parse(text: &str) -> Result<WebhookSecret, BadSecret> {
        let encoded = text.strip_prefix("whsec_").ok_or(BadSecret::NoPrefix)?;
        let key = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| BadSecret::NotBase64)?;
        if key.len() < 16 {
            return Err(BadSecret::TooShort);
        }
        Ok(WebhookSecret { key })
    }

    fn mac(&self, id: &str, timestamp: &str, body: &[u8]) -> HmacSha256 {
        let mut mac = hmac(&self.key);
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// `v1,<base64 signature>`.
    pub fn sign(&self, id: &str, timestamp: &str, body: &[u8]) -> String {
        let tag = self.mac(id, timestamp, body).finalize().into_bytes();
        format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(tag)
        )
    }

    /// Whether any `v1,` signature in a `webhook-signature` header is this secret's. The tag
    /// is computed once and each candidate compared in constant time; a header with more
    /// than [`MAX_SIGNATURES`] entries is refused unread, so a hostile header cannot make the
    /// gateway hash the body thousands of times.
    pub fn verifies(&self, id: &str, timestamp: &str, body: &[u8], header: &str) -> bool {
        use subtle::ConstantTimeEq;
        if header.len() > MAX_SIGNATURE_HEADER || header.split_whitespace().count() > MAX_SIGNATURES
        {
            return false;
        }
        let expected = self.mac(id, timestamp, body).finalize().into_bytes();
        let mut found = false;
        for part in header.split_whitespace() {
            let Some(encoded) = part.strip_prefix("v1,") else {
                continue;
            };
            let Ok(signature) = base64::engine::general_purpose::STANDARD.decode(encoded) else {
                continue;
            };
            if signature.len() == expected.len()
                && bool::from(signature.as_slice().ct_eq(expected.as_slice()))
            {
                found = true;
            }
        }
        found
    }
}

/// Signatures one `webhook-signature` header may carry (a rotation needs two or three).
pub const MAX_SIGNATURES: usize = 8;
/// Longest `webhook-signature` header read.
pub const MAX_SIGNATURE_HEADER: usize = 1024;

fn hmac(key: &[u8]) -> HmacSha256 {
    // HMAC hashes long keys and pads short ones: every length is valid, whatever the input.
    <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length")
}

/// A connector's signing: Standard Webhooks secrets and/or a GitHub-style secret.
#[derive(Clone, Default)]
pub struct Signing {
    pub standard: Vec<WebhookSecret>,
    pub github: Option<Vec<u8>>,
}

impl std::fmt::Debug for Signing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signing")
            .field("standard_webhooks", &self.standard.len())
            .field("github", &self.github.is_some())
            .finish()
    }
}

impl Signing {
    pub fn is_empty(&self) -> bool {
        self.standard.is_empty() && self.github.is_none()
    }
}

/// Adds the signature headers of a stamped request with `body` (its `headers` must carry
/// `webhook-id` and `webhook-timestamp`, which the deliverer's stamp sets).
pub fn sign(headers: &mut BTreeMap<String, String>, body: &[u8], signing: &Signing) {
    if !signing.standard.is_empty() {
        let id = headers.get("webhook-id").cloned().unwrap_or_default();
        let timestamp = headers
            .get("webhook-timestamp")
            .cloned()
            .unwrap_or_default();
        let signatures: Vec<String> = signing
            .standard
            .iter()
            .map(|s| s.sign(&id, &timestamp, body))
            .collect();
        headers.insert("webhook-signature".into(), signatures.join(" "));
    }
    if let Some(secret) = &signing.github {
        let mut mac = hmac(secret);
        mac.update(body);
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        headers.insert("x-hub-signature-256".into(), format!("sha256={hex}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The example in the Standard Webhooks specification.
    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TS: &str = "1614265330";
    const SPEC_BODY: &str = r#"{"test": 2432232314}"#;
    const SPEC_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn matches_the_specifications_example() {
        let s = WebhookSecret::parse(SPEC_SECRET).unwrap();
        assert_eq!(
            s.sign(SPEC_ID, SPEC_TS, SPEC_BODY.as_bytes()),
            SPEC_SIGNATURE
        );
        assert!(s.verifies(
            SPEC_ID,
            SPEC_TS,
            SPEC_BODY.as_bytes(),
            &format!("v1,bad {SPEC_SIGNATURE}")
        ));
        assert!(!s.verifies(SPEC_ID, SPEC_TS, b"{}", SPEC_SIGNATURE));
        assert!(!s.verifies(SPEC_ID, "1614265331", SPEC_BODY.as_bytes(), SPEC_SIGNATURE));
    }

    #[test]
    fn bad_secrets_are_refused_without_quoting_them() {
        for bad in [
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_!!!",
            "whsec_YWJj",
        ] {
            let e = WebhookSecret::parse(bad).unwrap_err();
            assert!(!e.to_string().contains("MfKQ"), "{e}");
        }
    }

    #[test]
    fn github_style_signature() {
        // GitHub's documented example: secret "It's a Secret to Everybody", body "Hello, World!".
        let mut headers = BTreeMap::new();
        sign(
            &mut headers,
            b"Hello, World!",
            &Signing {
                standard: vec![],
                github: Some(b"It's a Secret to Everybody".to_vec()),
            },
        );
        assert_eq!(
            headers["x-hub-signature-256"],
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }
}
