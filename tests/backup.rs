//! `incident-gateway backup` against the real binary: a copy taken while the gateway takes
//! incidents opens and holds every incident acknowledged before it started; it never
//! overwrites; on PostgreSQL it points to pg_dump.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::*;

fn backup(config: &std::path::Path, to: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_incident-gateway"))
        .args(["backup", "--config"])
        .arg(config)
        .arg("--to")
        .arg(to)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_while_incidents_arrive_holds_them() {
    let ws = Workspace {
        dir: tempfile::tempdir().unwrap(),
        pg: None,
    };
    let receiver = Receiver::start().await;
    let config = ws.config(
        "127.0.0.1:0",
        &http_connector("notify", &receiver.url("/hook"), ""),
    );
    let (mut child, base) = spawn_binary(&config);
    for i in 0..30 {
        accepted(&base, &incident(&format!("BEFORE-{i}"))).await;
    }
    // Incidents keep arriving while the copy is taken.
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (stop, base) = (stop.clone(), base.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                accepted(&base, &incident(&format!("DURING-{n}"))).await;
                n += 1;
            }
            n
        })
    };
    let to = ws.path().join("copy.db");
    let (config_path, to_path) = (config.clone(), to.clone());
    let out = tokio::task::spawn_blocking(move || backup(&config_path, &to_path))
        .await
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    let during = sender.await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("backed up"), "{stdout}");
    assert!(during > 0, "nothing arrived during the backup");

    let copy = rusqlite::Connection::open(&to).unwrap();
    let check: String = copy
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let before: i64 = copy
        .query_row(
            "SELECT COUNT(*) FROM incidents WHERE incident_id LIKE 'BEFORE-%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(before, 30);
    let versions: i64 = copy
        .query_row("SELECT COUNT(*) FROM incident_versions", [], |r| r.get(0))
        .unwrap();
    let incidents: i64 = copy
        .query_row("SELECT COUNT(*) FROM incidents", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        versions, incidents,
        "one snapshot: each incident with its version"
    );
    let auto_vacuum: i64 = copy
        .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
        .unwrap();
    assert_eq!(auto_vacuum, 2, "the copy gives freed space back");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&to).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
    }
    drop(copy);

    // Never over an existing file.
    let again = backup(&config, &to);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already exists"),
        "{again:?}"
    );
    child.kill().unwrap();
    child.wait().unwrap();

    // The copy is a store the gateway opens.
    let restored = incident_gateway::store::Store::open_sqlite(&to).unwrap();
    assert!(
        restored
            .incident("BEFORE-0".into())
            .await
            .unwrap()
            .is_some()
    );
}

#[test]
fn on_postgresql_it_points_to_pg_dump() {
    let ws = Workspace {
        dir: tempfile::tempdir().unwrap(),
        pg: None,
    };
    let config = ws.config("127.0.0.1:0", "");
    edit(&config, |text| {
        text.replace(
            "sqlite://gateway.db",
            "postgres://postgres@127.0.0.1:5432/nowhere",
        )
    });
    let out = backup(&config, &ws.path().join("copy.db"));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("pg_dump"), "{stderr}");
    assert!(!ws.path().join("copy.db").exists());
}
