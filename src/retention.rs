//! Retention: a background task that purges finished work older than `[retention]` allows,
//! one short transaction per batch with a pause between batches, then gives the freed space
//! back (SQLite). It never runs on the request path; ingest only shares the store with it.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::retention::RetentionConfig;
use crate::model::{millis, now_ms, rest_after};
use crate::store::{PurgeRequest, Purged, Store};

/// Between two batches of a pass, at least (see [`rest_after`]): lets the writes waiting
/// behind a batch go first.
const PAUSE: Duration = Duration::from_millis(50);

/// Purges until `shutdown`: a pass over the old incidents, batch by batch, then `interval`
/// of rest. `reopen_within` is the longest of the connectors': a closed ticket an incident
/// may still reopen keeps its incidents.
pub async fn run(
    store: Store,
    settings: RetentionConfig,
    reopen_within: Option<Duration>,
    shutdown: CancellationToken,
) {
    loop {
        let purged = pass(&store, &settings, reopen_within, &shutdown).await;
        if purged.incidents > 0 {
            // Logged once the space is given back too, so the line marks the pass's end.
            let compacted = store.compact().await;
            tracing::info!(
                incidents = purged.incidents,
                rows = purged.rows,
                "retention: purged finished work older than its cut-off"
            );
            if let Err(e) = compacted {
                tracing::warn!(error = %e, "retention: cannot give the freed space back");
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(settings.interval) => {}
        }
    }
}

/// One pass: every incident old enough looked at once; what was purged.
async fn pass(
    store: &Store,
    settings: &RetentionConfig,
    reopen_within: Option<Duration>,
    shutdown: &CancellationToken,
) -> Purged {
    let now = now_ms();
    let delivered_before_ms = now.saturating_sub(millis(settings.delivered_after));
    let mut request = PurgeRequest {
        delivered_before_ms,
        dead_before_ms: settings.dead_after.map(|d| now.saturating_sub(millis(d))),
        tickets_closed_before_ms: delivered_before_ms
            .min(now.saturating_sub(reopen_within.map_or(0, millis))),
        batch: settings.batch,
        after: None,
    };
    let mut total = Purged::default();
    loop {
        let started = std::time::Instant::now();
        match store.purge(request.clone()).await {
            Ok(batch) => {
                total.incidents += batch.incidents;
                total.rows += batch.rows;
                match batch.next {
                    Some(next) => request.after = Some(next),
                    None => return total,
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "retention: a purge batch failed; trying again next pass");
                return total;
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return total,
            () = tokio::time::sleep(rest_after(started, PAUSE)) => {}
        }
    }
}
