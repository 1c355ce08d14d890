//! The load generator: N keep-alive HTTP/1.1 connections (hyper's client connection, no pool
//! in between), each sending one request at a time — flat out (closed loop), or at a fixed
//! rate across all of them (open loop, latency counted from when each request was due, so a
//! stall is not hidden by requests that were never sent).

use anyhow::Context;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;

use super::payload::Payloads;

#[derive(Clone, Copy, Debug)]
pub enum Pace {
    /// Each connection sends its next request as soon as the last one is answered.
    Flat,
    /// Requests per second, over all connections.
    Rate(f64),
}

/// Where and how to send.
#[derive(Clone)]
pub struct Target {
    /// Where the load goes: connection `k` to `addrs[k % len]` (several gateways share it).
    pub addrs: Vec<SocketAddr>,
    pub path: &'static str,
    pub bearer: Option<String>,
}

impl Target {
    /// The headers every request to it carries, made once.
    pub fn headers(&self) -> anyhow::Result<Headers> {
        let first = self
            .addrs
            .first()
            .context("no address to send the load to")?;
        let host = HeaderValue::from_str(&first.to_string())?;
        let auth = match &self.bearer {
            Some(key) => Some(HeaderValue::from_str(&format!("Bearer {key}"))?),
            None => None,
        };
        Ok(Headers {
            path: self.path,
            host,
            auth,
        })
    }
}

#[derive(Clone)]
pub struct Headers {
    path: &'static str,
    host: HeaderValue,
    auth: Option<HeaderValue>,
}

impl Headers {
    pub fn request(&self, body: Bytes) -> Result<Request<Full<Bytes>>, hyper::http::Error> {
        let mut req = Request::post(self.path)
            .header(HOST, self.host.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(a) = &self.auth {
            req = req.header(AUTHORIZATION, a.clone());
        }
        req.body(Full::new(body))
    }
}

/// One request: its sequence number, when it started and ended (ns since the epoch), and the
/// status (0: no answer, the connection failed).
#[derive(Clone, Copy)]
pub struct Sent {
    pub seq: u64,
    pub start: u64,
    pub end: u64,
    pub status: u16,
}

pub struct Outcome {
    pub sent: Vec<Sent>,
    /// Failures that are not an answer: connect, reset…, by kind.
    pub failures: BTreeMap<String, u64>,
    /// When the load started (ns since the epoch).
    pub started: u64,
}

/// Sends requests `seq0, seq0+1, …` until `until` (measured from the start), paced by `pace`.
pub async fn drive(
    target: &Target,
    payloads: Arc<Payloads>,
    epoch: Instant,
    seq0: u64,
    connections: usize,
    pace: Pace,
    until: Duration,
) -> anyhow::Result<Outcome> {
    let headers = target.headers()?;
    let start = Instant::now();
    let end = start + until;
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for k in 0..connections.max(1) {
        let (next, payloads, headers) = (next.clone(), payloads.clone(), headers.clone());
        let addr = target.addrs[k % target.addrs.len()];
        tasks.push(tokio::spawn(async move {
            let mut sent = Vec::new();
            let mut failures = BTreeMap::new();
            let mut conn: Option<SendRequest<Full<Bytes>>> = None;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let began = match pace {
                    Pace::Flat => {
                        let now = Instant::now();
                        if now >= end {
                            break;
                        }
                        now
                    }
                    Pace::Rate(r) => {
                        let due = start + Duration::from_secs_f64(i as f64 / r);
                        if due >= end {
                            break;
                        }
                        if Instant::now() < due {
                            tokio::time::sleep_until(due.into()).await;
                            // The timer's own lateness is not the server's: count from waking.
                            Instant::now()
                        } else {
                            // Behind schedule (this connection was busy): the wait counts.
                            due
                        }
                    }
                };
                let seq = seq0 + i;
                let sender = match conn.as_mut() {
                    Some(s) => s,
                    None => match connect(addr).await {
                        Ok(s) => conn.insert(s),
                        Err(e) => {
                            *failures.entry(format!("connect: {e}")).or_insert(0) += 1;
                            record(&mut sent, epoch, seq, began, 0);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    },
                };
                let req = match headers.request(payloads.body(seq)) {
                    Ok(r) => r,
                    Err(e) => {
                        *failures.entry(format!("request: {e}")).or_insert(0) += 1;
                        break;
                    }
                };
                match send(sender, req).await {
                    Ok(status) => record(&mut sent, epoch, seq, began, status.as_u16()),
                    Err(e) => {
                        *failures.entry(e).or_insert(0) += 1;
                        record(&mut sent, epoch, seq, began, 0);
                        conn = None;
                    }
                }
            }
            (sent, failures)
        }));
    }
    let mut outcome = Outcome {
        sent: Vec::new(),
        failures: BTreeMap::new(),
        started: (start - epoch).as_nanos() as u64,
    };
    for t in tasks {
        let (sent, failures) = t.await?;
        outcome.sent.extend(sent);
        for (k, n) in failures {
            *outcome.failures.entry(k).or_insert(0) += n;
        }
    }
    Ok(outcome)
}

fn record(sent: &mut Vec<Sent>, epoch: Instant, seq: u64, began: Instant, status: u16) {
    sent.push(Sent {
        seq,
        start: began.saturating_duration_since(epoch).as_nanos() as u64,
        end: epoch.elapsed().as_nanos() as u64,
        status,
    });
}

pub async fn connect(addr: SocketAddr) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(async move {
        // Ends when the server closes the connection or the sender is dropped.
        let _ = conn.await;
    });
    Ok(sender)
}

/// Sends one request and reads the whole answer; an error is the kind of failure.
pub async fn send(
    sender: &mut SendRequest<Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> Result<StatusCode, String> {
    sender
        .ready()
        .await
        .map_err(|e| format!("connection closed: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("no answer: {e}"))?;
    let status = resp.status();
    resp.into_body()
        .collect()
        .await
        .map_err(|e| format!("answer cut short: {e}"))?;
    Ok(status)
}
