//! Retention through the real binary and a real SQLite file: with a cut-off of a second,
//! finished incidents are purged, unfinished ones kept, the purge is logged, and the file
//! does not keep growing as rounds of incidents come and go.

mod common;

use std::time::Duration;

use common::*;

const SOURCE_CALLBACK: &str = "source-callback-token-0123";

/// A connector that takes incidents whose id starts with `prefix` (a regex).
fn connector(name: &str, url: &str, prefix: &str) -> String {
    format!(
        "{}{}\n[[connectors.matchers]]\nfield = \"/incidentId\"\nregex = \"{prefix}.*\"\n",
        http_connector(name, url, ""),
        fast_retry()
    )
}

async fn completed(base: &str, id: &str) {
    let r = complete(
        base,
        id,
        Some(SOURCE_CALLBACK),
        r#"{"reason_code": "threat_not_valid", "notes": "checked"}"#,
    )
    .await;
    assert_eq!(r.status(), 200, "{id}");
}

async fn stored(base: &str, id: &str) -> bool {
    let (status, _) = admin_get(base, &format!("/v1/incidents/{id}")).await;
    assert!(status == 200 || status == 404, "{id}: {status}");
    status == 200
}

/// The database and its WAL, in bytes.
fn store_size(ws: &Workspace) -> u64 {
    ["gateway.db", "gateway.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(ws.path().join(f)).ok())
        .map(|m| m.len())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_work_is_purged_unfinished_kept_and_the_file_stops_growing() {
    // SQLite whatever the suite's store: the file's size is the point.
    let ws = Workspace {
        dir: tempfile::tempdir().unwrap(),
        pg: None,
    };
    let good = Receiver::start().await;
    let stuck = Receiver::start().await;
    stuck.script((0..10_000).map(|_| Reply::status(503)));
    let refusing = Receiver::start().await;
    refusing.script((0..10_000).map(|_| Reply::status(400)));
    let connectors = [
        connector("notify", &good.url("/hook"), "(DONE|OPEN)-"),
        connector("stuck", &stuck.url("/hook"), "STUCK-"),
        connector("refusing", &refusing.url("/hook"), "DEAD-"),
    ]
    .concat();
    let config = ws.config("127.0.0.1:0", &connectors);
    edit(&config, |text| {
        text.replace(
            &format!("api_key = \"{SOURCE_KEY}\""),
            &format!("api_key = \"{SOURCE_KEY}\"\ncallback_token = \"{SOURCE_CALLBACK}\""),
        )
        .replace(
            "[[sources]]",
            "[retention]\ndelivered_after = \"1s\"\ninterval = \"1s\"\nbatch = 25\n\n[[sources]]",
        )
    });
    let log = ws.path().join("gateway.log");
    let (mut child, base) = spawn_binary_logged(&config, "info", &[], &log);

    // Kept: a completed incident whose delivery is still retrying, one whose created died
    // (its completion waits behind it), and a delivered one whose ticket is still open.
    for id in ["STUCK-1", "DEAD-1", "OPEN-1"] {
        accepted(&base, &incident(id)).await;
    }
    assert!(
        eventually(Duration::from_secs(30), || async {
            let (_, dead) = admin_get(&base, "/v1/deliveries?status=dead").await;
            (dead["deliveries"].as_array().map_or(0, Vec::len) >= 1 && !good.received().is_empty())
                .then_some(())
        })
        .await
        .is_some(),
        "DEAD-1 did not die or OPEN-1 was not delivered: {:?} {} {}",
        admin_get(&base, "/v1/deliveries").await,
        good.received().len(),
        std::fs::read_to_string(&log).unwrap()
    );
    completed(&base, "STUCK-1").await;
    completed(&base, "DEAD-1").await;

    const ROUND: usize = 40;
    let mut sizes = Vec::new();
    for round in 0..4 {
        let ids: Vec<String> = (0..ROUND).map(|i| format!("DONE-{round}-{i}")).collect();
        for id in &ids {
            accepted(&base, &incident(id)).await;
        }
        // Each created delivered, then each completed and its `completed` delivered.
        let sent_before = good.received().len();
        good.wait_for(sent_before + ROUND, Duration::from_secs(30))
            .await;
        for id in &ids {
            completed(&base, id).await;
        }
        let gone = eventually(Duration::from_secs(60), || async {
            for id in &ids {
                if stored(&base, id).await {
                    return None;
                }
            }
            Some(())
        })
        .await;
        assert!(gone.is_some(), "round {round} was not purged");
        // The space goes back after the pass that purged it.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        sizes.push(store_size(&ws));
    }
    for id in ["STUCK-1", "DEAD-1", "OPEN-1"] {
        assert!(stored(&base, id).await, "{id} was purged");
    }
    let (_, pending) = admin_get(&base, "/v1/deliveries?status=pending").await;
    assert!(
        !pending["deliveries"].as_array().unwrap().is_empty(),
        "{pending}"
    );

    child.kill().unwrap();
    child.wait().unwrap();
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("retention: purged"), "{logged}");
    let purged: u64 = logged
        .lines()
        .filter(|l| l.contains("retention: purged"))
        .filter_map(|l| {
            l.split("incidents=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert_eq!(purged, 4 * ROUND as u64, "{logged}");
    // Four rounds of the same work: the file is no bigger after the last than after the
    // first, give or take a few pages. Without retention it grows by each round's rows:
    // 40 incident bodies alone (the sample is several KB) are far more than the slack.
    eprintln!("store size after each round: {sizes:?}");
    let slack = 8 * 4096;
    let round_bodies = ROUND as u64 * std::fs::metadata(sample_file()).unwrap().len();
    assert!(round_bodies > 2 * slack, "the slack would hide a round");
    assert!(sizes[3] <= sizes[0] + slack, "{sizes:?}");
}
