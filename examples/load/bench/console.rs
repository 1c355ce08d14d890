//! `load console`: the web console's pages with `--backlog` incidents stored (default
//! 100,000, each delivered) against the same pages with [`SMALL`] (two pages' worth, so both
//! render full pages), on the same gateway in the same run (issue 18: the pages stay fast, paged on the server). Each page is fetched
//! [`FETCHES`] times, one after another, signed in as the admin; the figure is the median.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::Bench;
use super::gateway;
use super::report::{Row, Target as Goal};

const FETCHES: usize = 21;
/// The store the pages are first measured on.
const SMALL: u64 = 100;

/// The pages measured (name, path; `{id}` and `{mid}` are filled in).
const PAGES: [(&str, &str); 9] = [
    ("overview", "/ui/"),
    ("incidents, first page", "/ui/incidents"),
    (
        "incidents, from the middle (until=)",
        "/ui/incidents?until={mid}",
    ),
    ("incidents, by source", "/ui/incidents?source=load"),
    ("incidents, by connector", "/ui/incidents?connector=hook"),
    ("incidents, summary search (hits)", "/ui/incidents?q=brute"),
    (
        "incidents, summary search (no hit: reads its 2,000)",
        "/ui/incidents?q=no-such-text-zz",
    ),
    ("an incident", "/ui/incidents/{id}"),
    ("dead letters", "/ui/dead"),
];

/// A search that finds nothing reads its whole window: at most this.
const SEARCH_BOUND_MS: f64 = 50.0;

/// Pages that must not grow with the store: a ratio at most this to the one-incident figure.
const FLAT: f64 = 3.0;

impl Bench {
    pub(super) async fn console(&mut self) -> anyhow::Result<()> {
        let n = self.cli.backlog.max(2);
        eprintln!("\nconsole pages with {n} incidents stored vs {SMALL}");
        let dir = self.folder("console")?;
        let setup = gateway::Setup {
            connectors: 1,
            matchers: false,
            receiver: self.receiver.url("/hook"),
            connections: self.cli.connections,
            storage: "sqlite://gateway.db".into(),
            elsewhere: Vec::new(),
            circuit_failures: None,
            tail: String::new(),
        };
        let config = gateway::write_config(&dir, &setup)?;
        let exe = self.gateway.clone();
        let log = dir.join("gateway.log");
        let level = self.cli.gateway_log.clone();
        let mut gw = tokio::task::block_in_place(|| gateway::start(&exe, &config, &log, &level))?;
        let _ = self.receiver.take();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let base = format!("http://{}", gw.addr);
        let cookie = sign_in(&client, &base).await?;

        let first_seq = self.next_seq;
        let small_count = self.fill(gw.addr, SMALL).await?;
        let first = self.payloads.ids.id(first_seq);
        let mid = rfc3339_now();
        wait_delivered(self, small_count).await?;
        let small = measure(&client, &base, &cookie, &first, &mid).await?;

        let started = Instant::now();
        let half = self.fill(gw.addr, n / 2).await?;
        let mid = rfc3339_now();
        let rest = self.fill(gw.addr, n - n / 2).await?;
        let stored = small_count + half + rest;
        wait_delivered(self, stored).await?;
        eprintln!(
            "  {stored} incidents stored and delivered in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let large = measure(&client, &base, &cookie, &first, &mid).await?;
        tokio::task::block_in_place(|| gw.terminate(gateway::STOP_GRACE));

        for ((name, _), (small, large)) in PAGES.iter().zip(small.iter().zip(&large)) {
            let row = Row::new(format!("console {name}, {stored} incidents"), *large, "ms")
                .against(format!("{small_count} incidents"), *small);
            // A search that matches nothing reads its window (2,000 incidents) at 100,000,
            // all 100 at 100: bounded, not flat.
            let row = if name.contains("no hit") {
                row.target(Goal::AtMost(SEARCH_BOUND_MS))
            } else {
                row.target(Goal::RatioAtMost(FLAT))
            };
            self.rows.push(row);
        }
        Ok(())
    }
}

async fn wait_delivered(bench: &Bench, n: u64) -> anyhow::Result<()> {
    if !bench.receiver.wait_for(n, Duration::from_secs(600)).await {
        bail!(
            "console: {} of {n} delivered within 600 s",
            bench.receiver.count()
        );
    }
    Ok(())
}

fn rfc3339_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

async fn sign_in(client: &reqwest::Client, base: &str) -> anyhow::Result<String> {
    let body = format!("token={}", gateway::ADMIN_TOKEN);
    let r = client
        .post(format!("{base}/ui/signin"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await?;
    let cookie = r
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .context("the console's sign-in set no cookie")?;
    Ok(cookie.to_string())
}

/// Each page's median time in ms.
async fn measure(
    client: &reqwest::Client,
    base: &str,
    cookie: &str,
    id: &str,
    mid: &str,
) -> anyhow::Result<Vec<f64>> {
    let mut medians = Vec::new();
    for (name, path) in PAGES {
        let path = path.replace("{id}", id).replace(
            "{mid}",
            &form_urlencoded::byte_serialize(mid.as_bytes()).collect::<String>(),
        );
        let mut times = Vec::with_capacity(FETCHES);
        for _ in 0..FETCHES {
            let started = Instant::now();
            let r = client
                .get(format!("{base}{path}"))
                .header("cookie", cookie)
                .send()
                .await?;
            let status = r.status();
            let body = r.text().await?;
            times.push(started.elapsed().as_secs_f64() * 1000.0);
            if !status.is_success() {
                bail!(
                    "console {name} ({path}): {status}: {}",
                    &body[..body.len().min(300)]
                );
            }
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        eprintln!("  {name}: {median:.1} ms");
        medians.push(median);
    }
    Ok(medians)
}
