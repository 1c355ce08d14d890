//! Hostile variants of the sample incident: text that breaks naive templates, huge and deeply
//! repeated fields, nulls and blanks. Shared by tests/connectors.rs (every shipped connector must
//! render them validly) and benches/render.rs (and as fast as the seed sample).
#![allow(dead_code)]

use serde_json::{Value, json};

/// Text that breaks naive templates: quotes, backslashes, every kind of line break, tabs,
/// control characters, template and shell syntax, HTML and Slack/Markdown markup.
pub const NASTY: &str = "He said \"stop\" \\ C:\\Windows\\ \\\"esc\\\" \\n-literal\nline two\r\nCRLF\rCR\ttab \u{0}\u{1}\u{8}\u{b}\u{c}\u{1b}[31m\u{1f}\u{7f} \u{85}NEL \u{2028}LS \u{2029}PS {{incidentId}} {{{x}}} ${HOME} %s %n </script><script>alert(1)</script> <!channel> <@U123> <https://evil.test|click> & &amp; *bold* _it_ ~st~ `code` [link](https://evil.test) {noformat} {code} | pipe";

/// Scripts the UI may mix: emoji (with ZWJ and flags), CJK, right-to-left, combining marks.
pub const UNICODE: &str = "🚨🔥 👩‍💻 🇧🇷 事件报告 インシデント 사고 حادث أمني خطير ‏(مهاجم)‏ שלום é ñ Z̤ͤ͑̓ \u{200d}\u{feff}\u{202e}reversed\u{202c} 𝔘𝔫𝔦𝔠𝔬𝔡𝔢";

/// About `bytes` bytes of `unit` repeated.
pub fn repeat_to(unit: &str, bytes: usize) -> String {
    unit.repeat(bytes / unit.len() + 1)
}

/// Hostile variants of the sample incident, each a valid incident (checked by a test).
pub fn hostile_variants(sample: &Value) -> Vec<(&'static str, Value)> {
    let mut out: Vec<(&'static str, Value)> = Vec::new();
    let mut with = |name: &'static str, f: &dyn Fn(&mut Value)| {
        let mut v = sample.clone();
        f(&mut v);
        out.push((name, v));
    };
    with("nasty_text", &|v| {
        v["incident"]["summary"] = json!(format!("Brute force {NASTY}"));
        v["incident"]["description"] = json!(format!("**Attack** {NASTY}\n\n- item {NASTY}"));
        v["incident"]["recommendations"] = json!(NASTY);
        v["customer"] = json!(NASTY);
        v["asset_host_name"] = json!(NASTY);
        v["humanFriendlyId"] = json!(NASTY);
        v["incident_class"] = json!(NASTY);
        v["deployment,"] = json!(NASTY);
        v["attacker"]["value"] = json!(NASTY);
    });
    with("html_report", &|v| {
        let html = format!(
            "<p>Report</p></script><script>alert('x')</script><style>p{{}}</style><!-- c --><img src=x onerror=alert(1)><a href=\"javascript:alert(1)\">link</a><table><tr><td>{NASTY}</td></tr></table><pre>{NASTY}</pre><ul><li>one</li></ul>&lt;b&gt; &amp;amp; &#x1F6A8; <b>unclosed"
        );
        v["extra"]["investigation_report"] = json!(html);
        v["extra"]["recommendations"] = json!(html);
        v["recommendations"] = json!(html);
        v["extra"]["incidentUrl"] =
            json!("https://console.example.test/incident?id=1&x=<b>\"q\"|>&y=</script>");
    });
    with("unicode", &|v| {
        v["incident"]["summary"] = json!(UNICODE.repeat(3));
        v["incident"]["description"] = json!(UNICODE.repeat(20));
        v["extra"]["investigation_report"] = json!(format!("<p>{}</p>", UNICODE.repeat(20)));
        v["customer"] = json!(UNICODE);
        v["asset_host_name"] = json!("서버-01.例え.テスト");
    });
    with("huge_description", &|v| {
        let text = repeat_to(&format!("{NASTY} {UNICODE} "), 100 * 1024);
        v["incident"]["description"] = json!(text);
        v["extra"]["investigation_report"] = json!(format!("<p>{text}</p>"));
        v["extra"]["recommendations"] = json!(format!("<p>{text}</p>"));
    });
    with("huge_summary", &|v| {
        v["incident"]["summary"] = json!(repeat_to(&format!("{NASTY} {UNICODE} "), 100 * 1024));
    });
    // The most bytes per character once JSON-escaped: control characters become `\u0001`.
    with("worst_escaping", &|v| {
        let text = "\u{1}".repeat(100 * 1024);
        v["incident"]["summary"] = json!(text);
        v["incident"]["description"] = json!(text);
        v["extra"]["investigation_report"] = json!(text);
        v["extra"]["recommendations"] = json!(text);
        v["incident"]["recommendations"] = json!(text);
        v["customer"] = json!(text);
        v["asset_host_name"] = json!(text);
        v["humanFriendlyId"] = json!(text);
        v["incident_class"] = json!(text);
        v["deployment,"] = json!(text);
        v["extra"]["incidentUrl"] = json!(format!("https://x.test/{text}"));
        v["attacker_lset"] = json!(
            (0..500)
                .map(|i| json!({"value": format!("{i}{}", "\u{1}".repeat(200))}))
                .collect::<Vec<_>>()
        );
    });
    with("long_id", &|v| {
        // The longest id the incident schema allows, in characters that need escaping.
        v["incidentId"] = json!(format!("{}\"\\/\n?#&", "Ä".repeat(249)));
    });
    with("many_parties_and_events", &|v| {
        v["attacker_lset"] = json!(
            (0..1000)
                .map(|i| json!({"ip": format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256)}))
                .collect::<Vec<_>>()
        );
        v["victim_lset"] = json!(
            (0..1000)
                .map(|i| json!({"value": format!("user-{i}-{UNICODE}")}))
                .collect::<Vec<_>>()
        );
        v["events"] = json!(
            (0..500)
                .map(|i| json!({
                    "event_id": i,
                    "host": format!("host-{}.example.net", i % 50),
                    "signature_name": format!("Signature {i} {NASTY}"),
                    "response_code": format!("{}", 200 + i % 7),
                }))
                .collect::<Vec<_>>()
        );
    });
    with("all_null", &|v| {
        let keys: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        for k in keys {
            if k != "incidentId" {
                v[&k] = Value::Null;
            }
        }
    });
    with("empty_strings", &|v| {
        v["incident"]["summary"] = json!("");
        v["incident"]["description"] = json!("");
        v["extra"]["investigation_report"] = json!("");
        v["humanFriendlyId"] = json!("");
        v["customer"] = json!("   ");
        v["asset_host_name"] = json!("\n");
    });
    with("whitespace_summary", &|v| {
        v["incident"]["summary"] = json!(" \r\n\t\u{2028} ");
    });
    with("rated_critical", &|v| {
        v["incident"]["threatRating"] = json!("CRITICAL");
    });
    with("rated_low", &|v| {
        v["incident"]["threatRating"] = json!("low");
    });
    with("rated_info", &|v| {
        v["incident"]["threatRating"] = json!("Info");
    });
    with("rated_high", &|v| {
        v["incident"]["threatRating"] = json!("high");
    });
    with("unrated", &|v| {
        v["incident"]["threatRating"] = Value::Null;
        v["incident_threat_rating"] = Value::Null;
        v["defaultThreatRating"] = Value::Null;
    });
    out
}
