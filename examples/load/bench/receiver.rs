//! The counting receiver: the destination of every connector and relay. It notes which request
//! each delivery carries and when it arrived, and answers 200 — or, hanging, accepts the
//! request and never answers (a destination that is down without refusing connections).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::watch;

use super::payload::Ids;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    Answer,
    Hang,
}

struct State {
    epoch: Instant,
    ids: Ids,
    mode: watch::Sender<Mode>,
    /// Each delivery, repeats included.
    records: Mutex<Vec<Receipt>>,
    count: AtomicU64,
}

/// One delivery: the request it carries, the destination it came to, when it arrived.
#[derive(Clone, Copy, Debug)]
pub struct Receipt {
    pub seq: u64,
    /// The number ending the path (`/hook/3` → 3): which connector sent it.
    pub lane: u16,
    /// Nanoseconds since the epoch.
    pub at: u64,
}

pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub async fn start(epoch: Instant, ids: Ids) -> anyhow::Result<Receiver> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            epoch,
            ids,
            mode: watch::channel(Mode::Answer).0,
            records: Mutex::new(Vec::new()),
            count: AtomicU64::new(0),
        });
        let s = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    // Out of descriptors, say: keep serving the connections there are.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let s = s.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| receive(s.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Ok(Receiver { addr, state, task })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn set_mode(&self, mode: Mode) {
        self.state.mode.send_replace(mode);
    }

    /// Deliveries so far (repeats included).
    pub fn count(&self) -> u64 {
        self.state.count.load(Ordering::Relaxed)
    }

    /// What arrived since the last call, and starts afresh.
    pub fn take(&self) -> Vec<Receipt> {
        self.state.count.store(0, Ordering::Relaxed);
        std::mem::take(&mut *lock(&self.state.records))
    }

    /// Waits (at most `within`) until at least `n` deliveries have arrived.
    pub async fn wait_for(&self, n: u64, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while self.count() < n {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        true
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere while holding it leaves the records as they were: still usable.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn receive(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut mode = state.mode.subscribe();
    if *mode.borrow_and_update() == Mode::Hang {
        // Never answer while hanging; once the destination is "back" this request's sender
        // is long gone, so a 503 is as good as anything.
        let _ = mode.wait_for(|m| *m != Mode::Hang).await;
        return Ok(status(StatusCode::SERVICE_UNAVAILABLE));
    }
    let lane = req
        .uri()
        .path()
        .rsplit('/')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let Ok(body) = req.into_body().collect().await else {
        return Ok(status(StatusCode::BAD_REQUEST));
    };
    let at = state.epoch.elapsed().as_nanos() as u64;
    // A body without one of this run's ids counts, but has no request to belong to.
    if let Some(seq) = state.ids.find(&body.to_bytes()) {
        lock(&state.records).push(Receipt { seq, lane, at });
    }
    state.count.fetch_add(1, Ordering::Relaxed);
    let mut r = Response::new(Full::new(Bytes::from_static(b"{\"ok\":true}")));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(r)
}

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = code;
    r
}
