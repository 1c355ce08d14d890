//! The real binary's log lines: human text without colour codes when they go to a file, or one
//! JSON object per line with the event's ids at the top level (`--log-format json`).

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// Runs the binary with `format`, delivers one incident, stops it with SIGTERM (so every line
/// is flushed) and returns what it logged.
async fn log_of_one_delivery(format: &str) -> String {
    let (receiver, ws, config) = receiver_and_config("hook", "/hook", "").await;
    let log_path = ws.path().join("gateway.log");
    let (mut child, base) =
        spawn_binary_logged(&config, "info", &[("IGW_LOG_FORMAT", format)], &log_path);
    accepted(&base, &incident("LOG-1")).await;
    receiver.wait_for(1, Duration::from_secs(10)).await;
    // The delivered line is written after the receiver answers: give it a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    std::fs::read_to_string(log_path).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_to_a_file_carry_no_colour_codes() {
    let log = log_of_one_delivery("text").await;
    assert!(log.contains("delivered"), "{log}");
    assert!(!log.contains('\u{1b}'), "colour codes in a file: {log:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line_with_the_ids_on_top() {
    let log = log_of_one_delivery("json").await;
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(!lines.is_empty());
    let delivered = lines
        .iter()
        .find(|l| l["message"] == "delivered")
        .unwrap_or_else(|| panic!("no delivered line: {log}"));
    assert_eq!(delivered["incident"], "LOG-1", "{delivered}");
    assert_eq!(delivered["connector"], "hook");
    assert!(
        delivered["delivery"]
            .as_str()
            .is_some_and(|d| d.starts_with("msg_"))
    );
    assert_eq!(delivered["level"], "INFO");
    // The id as the incident's own string, not its debug quoting (`"\"LOG-1\""`).
    let received = lines
        .iter()
        .find(|l| l["message"] == "incident received")
        .unwrap_or_else(|| panic!("no incident received line: {log}"));
    assert_eq!(received["incident"], "LOG-1", "{received}");
    assert_eq!(received["source"], "detector", "{received}");
}
