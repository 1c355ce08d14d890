//! The real binary's commands as an admin runs them: `check` and `render`, with only the
//! environment given (so `${…:-default}`s are what a fresh machine sees).

use std::path::Path;
use std::process::{Command, Output};

/// The variables the shipped examples require, as an admin sets them.
pub const EXAMPLE_ADMIN_TOKEN: &str = "example-admin-token-123";
pub const EXAMPLE_SOURCE_KEY: &str = "example-source-key-123";
pub const EXAMPLE_ENV: &[(&str, &str)] = &[
    ("IGW_ADMIN_TOKEN", EXAMPLE_ADMIN_TOKEN),
    ("IGW_SOURCE_KEY", EXAMPLE_SOURCE_KEY),
];

/// The value of `name` in `env`, as a config's `${…}` reads it.
pub fn lookup(env: &[(&str, &str)], name: &str) -> Option<String> {
    env.iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// Runs the binary with `args`, at log level error, with only `env` in its environment.
pub fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_incident-gateway"))
        .env_clear()
        .args(args)
        .env("IGW_LOG", "error")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// `check --config <config>`.
pub fn check(config: &Path, env: &[(&str, &str)]) -> Output {
    run(&["check", "--config", config.to_str().unwrap()], env)
}

/// `render --config <config> --connector <connector> --incident <incident>`, and `--event
/// <event>` if given.
pub fn render(
    config: &Path,
    connector: &str,
    incident: &Path,
    event: Option<&str>,
    env: &[(&str, &str)],
) -> Output {
    let mut args = vec![
        "render",
        "--config",
        config.to_str().unwrap(),
        "--connector",
        connector,
        "--incident",
        incident.to_str().unwrap(),
    ];
    args.extend(event.map(|e| ["--event", e]).into_iter().flatten());
    run(&args, env)
}

/// What a command printed: its stdout, then its stderr.
pub fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The number (from 1) of the first line of `file` that starts with `prefix`.
pub fn line_of(file: &Path, prefix: &str) -> usize {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .position(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("{} has no line starting {prefix:?}", file.display()))
        + 1
}
