//! Admission: what the HTTP handlers remember between requests — recent `webhook-id`s (a
//! fast path before the store's claim), each source's token bucket, the budget of request
//! body bytes in flight with each client's share of it — and the one bounded body reader
//! every endpoint uses once it has authenticated its caller.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, header};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::auth::SourceConfig;
use crate::model::REPLAY_WINDOW;
use crate::problem::Problem;
use crate::server::ServerConfig;

/// Replay cache size above which expired entries are swept.
const REPLAY_CACHE_SWEEP: usize = 10_000;

/// What the handlers remember between requests: recent `webhook-id`s (a fast path: the store's
/// claim is the truth), each source's token bucket, and the budget of body bytes in flight.
pub struct Guard {
    seen: Mutex<HashMap<(String, String), Instant>>,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
    /// One permit per byte of request body being read or held, across all connections.
    body_budget: Arc<Semaphore>,
    /// Bytes of the budget each client holds, and the most one may hold: a quarter, so one
    /// address cannot take the whole budget with slow bodies.
    body_shares: Arc<Mutex<HashMap<IpAddr, usize>>>,
    body_share_limit: usize,
}

/// A request body's part of the budget (and of its client's share), given back when dropped.
pub struct BodyReservation {
    _permit: OwnedSemaphorePermit,
    _share: Option<ClientShare>,
}

/// Bytes one client holds of the budget, given back when dropped.
struct ClientShare {
    shares: Arc<Mutex<HashMap<IpAddr, usize>>>,
    client: IpAddr,
    bytes: usize,
}

impl Drop for ClientShare {
    fn drop(&mut self) {
        if let Ok(mut shares) = self.shares.lock()
            && let Some(held) = shares.get_mut(&self.client)
        {
            *held = held.saturating_sub(self.bytes);
            if *held == 0 {
                shares.remove(&self.client);
            }
        }
    }
}

impl Guard {
    pub fn new(server: &ServerConfig) -> Guard {
        Guard {
            seen: Mutex::default(),
            buckets: Mutex::default(),
            body_budget: Arc::new(Semaphore::new(
                server.max_body_bytes_in_flight.min(Semaphore::MAX_PERMITS),
            )),
            body_shares: Arc::default(),
            body_share_limit: (server.max_body_bytes_in_flight / 4).max(server.max_body_bytes),
        }
    }

    /// Reserves `bytes` of the body budget until the reservation is dropped (the request
    /// done, or its connection gone); `None` when the budget, or `client`'s share of it,
    /// cannot hold them now.
    pub fn reserve_body(&self, client: Option<IpAddr>, bytes: usize) -> Option<BodyReservation> {
        let permits = u32::try_from(bytes).unwrap_or(u32::MAX);
        let share = match client {
            None => None,
            Some(client) => {
                let mut shares = self.body_shares.lock().ok()?;
                let held = shares.entry(client).or_default();
                if held.saturating_add(bytes) > self.body_share_limit {
                    return None;
                }
                *held += bytes;
                Some(ClientShare {
                    shares: self.body_shares.clone(),
                    client,
                    bytes,
                })
            }
        };
        // When the budget cannot hold the bytes, the share is given back as it drops here.
        let permit = self
            .body_budget
            .clone()
            .try_acquire_many_owned(permits)
            .ok()?;
        Some(BodyReservation {
            _permit: permit,
            _share: share,
        })
    }

    /// Whether `source` claimed `id` within the window (without claiming it).
    pub fn seen(&self, source: &str, id: &str) -> bool {
        let Ok(seen) = self.seen.lock() else {
            return false;
        };
        seen.get(&(source.to_string(), id.to_string()))
            .is_some_and(|at| at.elapsed() < REPLAY_WINDOW)
    }

    /// Claims `id` for `source`: `false` when it was already claimed within the window (a
    /// replay, or a concurrent copy). Check and claim are one step under one lock.
    pub fn claim(&self, source: &str, id: &str) -> bool {
        let Ok(mut seen) = self.seen.lock() else {
            return false;
        };
        let window = REPLAY_WINDOW;
        if seen.len() >= REPLAY_CACHE_SWEEP {
            // Forget what no replay check can match any more (the timestamp check refuses it).
            seen.retain(|_, at| at.elapsed() < window);
        }
        let key = (source.to_string(), id.to_string());
        match seen.get(&key) {
            Some(at) if at.elapsed() < window => false,
            _ => {
                seen.insert(key, Instant::now());
                true
            }
        }
    }

    /// Gives a claim back (the request failed after all, so the sender may retry it).
    pub fn release(&self, source: &str, id: &str) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.remove(&(source.to_string(), id.to_string()));
        }
    }

    /// Takes a token from the source's bucket; `Err(seconds)` says when one will be there.
    pub fn take(&self, source: &SourceConfig) -> Result<(), u64> {
        let Some(limit) = source.rate_limit else {
            return Ok(());
        };
        let Ok(mut buckets) = self.buckets.lock() else {
            return Ok(());
        };
        let now = Instant::now();
        let (tokens, last) = buckets
            .entry(source.name.clone())
            .or_insert((f64::from(limit.burst), now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * limit.per_second)
            .min(f64::from(limit.burst));
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / limit.per_second).ceil().max(1.0) as u64)
        }
    }
}

/// Reads a request body, bounded: at most `max_bytes` (413 beyond, from `Content-Length`
/// before a byte is read), within `server.body_read_timeout` (408), and only while the body
/// budget — and this client's share of it — can hold it (503). Every endpoint that takes a
/// body reads it so, after it has authenticated the caller from the headers. The reservation
/// is held as long as the caller keeps what it read.
pub async fn read_body(
    guard: &Guard,
    limits: &ServerConfig,
    client: Option<IpAddr>,
    headers: &HeaderMap,
    body: Body,
    max_bytes: usize,
) -> Result<(Bytes, BodyReservation), Problem> {
    let too_large = || {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            "Payload too large",
            if max_bytes == limits.max_body_bytes {
                format!("the body exceeds server.max_body_bytes ({max_bytes} bytes)")
            } else {
                format!("the body exceeds {max_bytes} bytes")
            },
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_bytes as u64) {
        return Err(too_large());
    }
    // The body's bytes are reserved before it is read (all that may come without a length)
    // and given back when the reservation is dropped, however the request ends.
    let reserve = declared.map_or(max_bytes, |n| n as usize);
    let budget = guard.reserve_body(client, reserve).ok_or_else(|| {
        Problem::unavailable(format!(
            "too many request bodies are being received at once (server.max_body_bytes_in_flight, {} bytes); try again",
            limits.max_body_bytes_in_flight
        ))
    })?;
    let read = tokio::time::timeout(
        limits.body_read_timeout,
        axum::body::to_bytes(body, max_bytes),
    )
    .await
    .map_err(|_| {
        Problem::new(
            StatusCode::REQUEST_TIMEOUT,
            "body-timeout",
            "Request body too slow",
            format!(
                "the body did not arrive within server.body_read_timeout ({})",
                humantime::format_duration(limits.body_read_timeout)
            ),
        )
    })?;
    let bytes = read.map_err(|e| {
        let over_limit = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if over_limit {
            too_large()
        } else {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "bad-body",
                "Bad request body",
                "the request body could not be read",
            )
        }
    })?;
    Ok((bytes, budget))
}
