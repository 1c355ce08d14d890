//! How long `GET /metrics` takes, and how long the background queue read behind it takes,
//! with 100,000 and then 1,000,000 pending deliveries (BENCHMARKS.md, "Metrics scrape").
//!
//! `cargo run --release --example metrics_scrape` (or `-- 10000 50000` for other sizes).
//! The gateway runs in this process on an ephemeral port with a SQLite file in a temporary
//! folder; the pending deliveries are written straight into its table for four paused
//! connectors (so nothing sends them), as the gateway would have queued them.

use std::time::{Duration, Instant};

const ADMIN_TOKEN: &str = "bench-admin-token-0123456789abcdef";
const CONNECTORS: [&str; 4] = ["alpha", "bravo", "charlie", "delta"];

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let sizes: Vec<u64> = match std::env::args().skip(1).map(|a| a.parse()).collect() {
        Ok(v) if !Vec::<u64>::is_empty(&v) => v,
        Ok(_) => vec![100_000, 1_000_000],
        Err(e) => return Err(format!("sizes must be whole numbers: {e}").into()),
    };
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("gateway.db");
    let template = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/templates/generic/incident.json.hbs"
    );
    let connectors: String = CONNECTORS
        .iter()
        .map(|name| {
            format!(
                "[[connectors]]\nname = \"{name}\"\nkind = \"http\"\nurl = \"http://127.0.0.1:9/\"\n\
                 template = \"{template}\"\npaused = true\n"
            )
        })
        .collect();
    let config_file = dir.path().join("gateway.toml");
    std::fs::write(
        &config_file,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_token = \"{ADMIN_TOKEN}\"\n\n\
             [storage]\nurl = \"sqlite://{}\"\n\n\
             [[sources]]\nname = \"bench\"\napi_key = \"bench-source-key-0123456789abcdef\"\n\n{connectors}",
            db.display()
        ),
    )?;
    let config = incident_gateway::config::Config::load(&config_file)?;
    let gateway = incident_gateway::Gateway::start(config).await?;
    let base = format!("http://{}", gateway.addr);
    let client = reqwest::Client::new();

    println!(
        "| pending | background queue read (median of 3) | scrape (median of 50) | scrape (slowest of 50) | body |"
    );
    println!("|---:|---:|---:|---:|---:|");
    let mut filled = 0;
    for size in sizes {
        if size > filled {
            fill(&db, filled, size)?;
            filled = size;
        }
        // Wait for the gateway's background read to see them all, then for 3 more reads.
        let deadline = Instant::now() + Duration::from_secs(900);
        let mut reads = Vec::new();
        let mut last_read_at = String::new();
        loop {
            let text = scrape(&client, &base).await?;
            if pending_in(&text) == filled {
                let read = value_of(&text, "igw_queue_read_duration_seconds ");
                // A new read is one whose snapshot age went down.
                let age = value_of(&text, "igw_queue_snapshot_age_seconds ");
                if age < last_read_at.parse().unwrap_or(f64::MAX) {
                    reads.push(Duration::from_secs_f64(read));
                }
                last_read_at = age.to_string();
                if reads.len() > 3 {
                    break;
                }
            }
            if Instant::now() > deadline {
                return Err("the queue snapshot never caught up".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut scrapes = Vec::new();
        let mut body = 0;
        for _ in 0..50 {
            let t = Instant::now();
            body = scrape(&client, &base).await?.len();
            scrapes.push(t.elapsed());
        }
        // The first read seen may have begun before the fill ended.
        reads.remove(0);
        reads.sort();
        scrapes.sort();
        println!(
            "| {filled} | {:.1} ms | {:.2} ms | {:.2} ms | {body} B |",
            ms(reads[reads.len() / 2]),
            ms(scrapes[scrapes.len() / 2]),
            ms(scrapes[scrapes.len() - 1]),
        );
    }
    gateway.stop().await?;
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn scrape(client: &reqwest::Client, base: &str) -> Result<String, reqwest::Error> {
    client
        .get(format!("{base}/metrics"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await
}

fn value_of(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix)?.parse().ok())
        .unwrap_or(f64::NAN)
}

fn pending_in(text: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with("igw_connector_pending_deliveries{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Pending, due deliveries `from..to`, spread over the connectors, in one transaction.
fn fill(db: &std::path::Path, from: u64, to: u64) -> rusqlite::Result<()> {
    let mut conn = rusqlite::Connection::open(db)?;
    conn.busy_timeout(Duration::from_secs(30))?;
    let tx = conn.transaction()?;
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(i64::MAX);
    tx.execute(
        "WITH RECURSIVE n(i) AS (SELECT ?1 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?2)
         INSERT INTO deliveries (delivery_id, incident_id, version_id, connector, event, status,
                                 budget_since_ms, next_attempt_ms, order_key, ready, due_ms,
                                 created_ms, updated_ms)
         SELECT 'bench-' || i, 'BENCH-' || i, 1,
                CASE i % 4 WHEN 0 THEN 'alpha' WHEN 1 THEN 'bravo' WHEN 2 THEN 'charlie'
                           ELSE 'delta' END,
                'created', 'pending', ?3, ?3, 'BENCH-' || i, 1, ?3 - (?2 - i), ?3, ?3
           FROM n",
        rusqlite::params![from.cast_signed(), to.cast_signed(), now],
    )?;
    tx.commit()
}
