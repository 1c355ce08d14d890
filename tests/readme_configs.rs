//! Every TOML block in README.md (and templates/README.md) passes `check`, as an admin would
//! paste it. A block is the
//! whole config or a piece of one: a piece is laid over a minimal config (its sections
//! replace or extend the base's, a lone `[connectors.x]` goes on the base's connector). The
//! files a block names are provided as an admin would provide them: the repository's
//! templates and schemas beside the config (blocks are written for a config in `examples/`),
//! certificates made here, secret files written here, every `${VAR}` set.

mod common;

use std::path::Path;

use common::*;
use toml::{Table, Value};

/// Every ```toml block of `text`, with the line it starts on.
fn toml_blocks(text: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (n, line) in text.lines().enumerate() {
        match (&mut current, line.trim_start()) {
            (None, l) if l.starts_with("```toml") => current = Some((n + 1, String::new())),
            (Some(_), l) if l.starts_with("```") => blocks.extend(current.take()),
            (Some((_, body)), _) => {
                body.push_str(line);
                body.push('\n');
            }
            _ => {}
        }
    }
    blocks
}

/// The config a piece is laid over: a listener, a SQLite store, the shipped partials (as the
/// README's full config has them), a source, a connector.
fn base() -> Table {
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_token = "{EXAMPLE_ADMIN_TOKEN}"

[storage]
url = "sqlite://data/gateway.db"

[templates]
partials = "../templates/partials"

[[sources]]
name = "detector"
api_key = "{EXAMPLE_SOURCE_KEY}"

[[connectors]]
name = "hook"
kind = "http"
url = "https://hook.example.com/incidents"
template = "../templates/generic/incident.json.hbs"
"#
    );
    text.parse().unwrap()
}

/// `piece` over `base`: tables merge key by key; a list of tables (`[[connectors]]`) replaces
/// the base's; a table where the base has a list (`[connectors.signing]`) goes on its first item.
fn overlay(base: &mut Table, piece: Table) {
    for (key, value) in piece {
        match (base.get_mut(&key), value) {
            (Some(Value::Table(b)), Value::Table(p)) => overlay(b, p),
            (Some(Value::Array(items)), Value::Table(p)) => {
                if let Some(Value::Table(first)) = items.first_mut() {
                    overlay(first, p);
                }
            }
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Every `${NAME}` in `text`.
fn variables(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else { break };
        let name = after[..end].split(":-").next().unwrap_or_default();
        names.push(name.to_string());
        rest = &after[end..];
    }
    names
}

/// A self-signed certificate and key, as PEM files named `cert` and `key` in `dir`.
fn certificate(dir: &Path, cert: &str, key: &str) {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(dir.join(cert), made.cert.pem()).unwrap();
    std::fs::write(dir.join(key), made.signing_key.serialize_pem()).unwrap();
}

/// The sections a config has; any other key of a piece is a connector's (`priorities = …`
/// in the templates README) and goes on the base's connector.
const SECTIONS: [&str; 15] = [
    "server",
    "storage",
    "delivery",
    "sources",
    "tenants",
    "admin_tokens",
    "assignment",
    "connectors",
    "templates",
    "reload",
    "alerts",
    "retention",
    "threat_intel",
    "sla",
    "console",
];

#[test]
fn every_config_block_in_the_readme_passes_check() {
    let mut blocks = Vec::new();
    for readme in ["README.md", "templates/README.md"] {
        let text = std::fs::read_to_string(repo().join(readme)).unwrap();
        let found = toml_blocks(&text);
        // Every block, however indented (a list item's), is found.
        let fences = text
            .lines()
            .filter(|l| l.trim_start().starts_with("```toml"))
            .count();
        assert_eq!(found.len(), fences, "{readme}: blocks found vs written");
        blocks.extend(
            found
                .into_iter()
                .map(|(line, block)| (format!("{readme} line {line}"), block)),
        );
    }
    assert!(blocks.len() >= 8, "found {} toml blocks", blocks.len());
    let mut failures = Vec::new();
    for (line, block) in &blocks {
        let root = tempfile::tempdir().unwrap();
        let conf = root.path().join("examples");
        std::fs::create_dir_all(&conf).unwrap();
        for shared in ["templates", "schemas"] {
            std::os::unix::fs::symlink(repo().join(shared), root.path().join(shared)).unwrap();
        }
        // `check` renders every connector for the incidents beside the config.
        std::os::unix::fs::symlink(repo().join("examples/incidents"), conf.join("incidents"))
            .unwrap();
        // The example IOC lists the threat-intel blocks name.
        std::os::unix::fs::symlink(repo().join("examples/intel"), conf.join("intel")).unwrap();
        // Absolute secret files become files of this test's own; TLS files are made here.
        let secret = conf.join("secret");
        std::fs::write(&secret, "a-secret-of-enough-length-123").unwrap();
        let text = block.replace("/run/secrets/igw_source_key", &secret.display().to_string());
        for (cert, key) in [
            ("cert.pem", "key.pem"),
            ("admin-cert.pem", "admin-key.pem"),
            ("client-cert.pem", "client-key.pem"),
        ] {
            certificate(&conf, cert, key);
        }
        let mut piece: Table = match text.parse() {
            Ok(t) => t,
            Err(e) => {
                failures.push(format!("{line}: not TOML: {e}"));
                continue;
            }
        };
        let connector_keys: Table = piece
            .iter()
            .filter(|(k, _)| !SECTIONS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !connector_keys.is_empty() {
            piece.retain(|k, _| SECTIONS.contains(&k));
            piece.insert("connectors".into(), Value::Table(connector_keys));
        }
        let mut config = base();
        overlay(&mut config, piece);
        let path = conf.join("gateway.toml");
        std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
        let values: Vec<(String, String)> = variables(&text)
            .into_iter()
            .map(|name| {
                // A signing secret is in Standard Webhooks form (whsec_ + base64).
                let value = if name.contains("WHSEC") {
                    "whsec_cmVhZG1lLWNoZWNrLXNpZ25pbmctc2VjcmV0LTEyMzQ="
                } else {
                    // One value per variable: tokens that must differ do.
                    &format!("value-for-the-readme-check-{name}")
                };
                (name, value.to_string())
            })
            .collect();
        let env: Vec<(&str, &str)> = values
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain(EXAMPLE_ENV.iter().copied())
            .collect();
        let out = check(&path, &env);
        if !out.status.success() {
            failures.push(format!(
                "{line}:\n{}\n{}",
                output_text(&out),
                std::fs::read_to_string(&path).unwrap()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
