//! The listener: accepts connections up to a limit and shares them fairly, bounds how long a
//! client may wait or dawdle between requests, closes so that an early answer reaches the
//! client, and on shutdown stops accepting, lets requests under way finish for a bounded time,
//! then closes what is left.
//!
//! **Slots.** `max_connections` slots, of which the last `admin_reserved_connections` serve only
//! the admin API (when it shares this listener). One client address (an IPv6 client by its /64)
//! holds at most `max_connections_per_client`; past that a new connection is closed on accept.
//!
//! **Waiting connections are the first to go.** A connection is *waiting* from accept, or from
//! the end of its last response, until its next request has been read; *busy* while a request
//! is handled and its response written. A waiting connection is closed after `idle_timeout`
//! while the slots are at most half full; past half full that limit shrinks linearly to one
//! second when they are full. Headers must arrive within `header_read_timeout` of their first
//! byte (and within the shrunken limit under pressure). When a connection arrives and no slot
//! is free, the connection that has waited longest is closed to make room, so idle or
//! slow-header connections can never lock other clients out; busy ones are never cut short.
//!
//! **The admin reserve.** A connection that only found a reserved slot is served by the admin
//! routes alone, and each request must carry the admin bearer token: anything else gets 503
//! problem+json and the connection is closed. The check runs before any handler, so no
//! ingest work (body reads, parsing, the store) can run in a reserved slot: a flood of ingest
//! or of unauthenticated requests can fill the general slots, never the reserve.
//!
//! **Lingering close.** An answer sent before the request body was read (413, 401, 415, 429…)
//! leaves the rest of the body in flight; closing at once makes the kernel answer it with a
//! reset, and a client still writing (Python's urllib and requests) sees a broken pipe instead
//! of the answer. So such a connection is half-closed and the rest of the body read and
//! discarded, up to [`linger_bytes`] and [`LINGER_TIME`] (or until the client pauses for
//! [`LINGER_PAUSE`]), before it is closed (nginx's lingering close).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv6Addr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, header};
use axum::response::IntoResponse;
use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{self, TokenDigest};
use crate::problem::Problem;

/// `[server]`: the listeners, their limits and TLS, the admin token. `config` builds it.
#[derive(Clone)]
pub struct ServerConfig {
    pub listen: String,
    pub admin_token: Option<String>,
    pub max_body_bytes: usize,
    /// Request bodies held at once across all connections, in bytes (503 beyond it).
    pub max_body_bytes_in_flight: usize,
    pub max_batch: usize,
    /// How long shutdown waits for in-flight sends before giving up on them (they are retried
    /// after restart: the lease is released).
    pub shutdown_grace: Duration,
    /// Connections held at once; more are closed on accept (after shedding the connection
    /// that has waited longest for a request, if any is waiting).
    pub max_connections: usize,
    /// Connections one client address (an IPv6 client by its /64) may hold at once.
    pub max_connections_per_client: usize,
    /// Slots, out of `max_connections`, kept for the admin API when it shares the listener.
    pub admin_reserved_connections: usize,
    /// How long a keep-alive connection may wait for its next request while the listener is
    /// at most half full (shrinks to 1 s as its slots fill).
    pub idle_timeout: Duration,
    /// How long a client may take to send its request headers.
    pub header_read_timeout: Duration,
    /// How long a client may take to send its request body (408 after).
    pub body_read_timeout: Duration,
    /// Deepest nesting of arrays and objects an incident may have.
    pub max_json_depth: usize,
    /// Longest string (in characters) any field may hold.
    pub max_string_chars: usize,
    /// Serve the admin API here, apart from the ingress (e.g. loopback only).
    pub admin_listen: Option<String>,
    /// TLS for the ingress listener.
    pub tls: Option<TlsFiles>,
    /// TLS for the admin listener (`admin_listen`): its own files, else those of `tls`;
    /// `None` serves it as plain HTTP.
    pub admin_tls: Option<TlsFiles>,
}

/// Debug never shows the admin token.
impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("listen", &self.listen)
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "********"),
            )
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_batch", &self.max_batch)
            .finish_non_exhaustive()
    }
}

/// A certificate chain and its key, PEM files.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// How long a connection may linger after an early answer, reading what the client still
/// sends. Long enough for a client on a slow link to finish writing a few MiB and read the
/// answer; short enough that lingering connections do not pile up.
pub const LINGER_TIME: Duration = Duration::from_secs(5);

/// A lingering client that sends nothing for this long has stopped writing: close.
pub const LINGER_PAUSE: Duration = Duration::from_secs(2);

/// Bytes a connection reads and discards after an early answer, for a body limit of
/// `max_body_bytes`: enough for a client that writes its whole body before reading (urllib,
/// curl) to finish one many times over the limit and still read its 413; the time limits
/// bound what a client that never stops can cost.
pub fn linger_bytes(max_body_bytes: usize) -> usize {
    max_body_bytes.saturating_mul(16).max(32 * 1024 * 1024)
}

/// The shortest wait a connection is allowed when the slots are full.
const IDLE_FLOOR: Duration = Duration::from_secs(1);

/// How often waiting connections are checked against their limits.
const SWEEP_EVERY: Duration = Duration::from_millis(200);

/// Limits on the connections a listener holds.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub max_connections_per_client: usize,
    /// How long a keep-alive connection may wait for its next request (shrinks under pressure).
    pub idle_timeout: Duration,
    pub header_read_timeout: Duration,
    pub shutdown_grace: Duration,
    /// Bytes read and discarded after an early answer before the connection is closed.
    pub linger_bytes: usize,
}

/// The admin reserve on a listener shared with the ingress.
#[derive(Clone)]
pub struct AdminReserve {
    /// Slots, out of `max_connections`, that only admin requests may use.
    pub slots: usize,
    /// The admin routes alone (no ingest).
    pub router: Router,
    pub admin_token: String,
}

/// Serves `router` on `listener` until `shutdown`, then drains within the grace period.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    reserve: Option<AdminReserve>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: CancellationToken,
) {
    let reserved = reserve.as_ref().map_or(0, |r| r.slots);
    let slots = Arc::new(Slots::new(&limits, reserved));
    let reserve = reserve.map(|r| {
        Arc::new(ReserveGate {
            router: r.router,
            admin_token: TokenDigest::new(&r.admin_token),
        })
    });
    let tracker = TaskTracker::new();
    // Cancelled when the grace period runs out: whatever is still open is closed.
    let force = CancellationToken::new();
    // The sweep ends with this function, however it ends.
    let sweeping = CancellationToken::new();
    let _stop_sweep = sweeping.clone().drop_guard();
    tokio::spawn({
        let slots = slots.clone();
        async move {
            let mut every = tokio::time::interval(SWEEP_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = sweeping.cancelled() => break,
                    _ = every.tick() => slots.sweep(Instant::now()),
                }
            }
        }
    });
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(held) = slots.admit(peer.ip(), Instant::now()) else {
            // Over a limit: close at once rather than queue without bound.
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = Gate {
            client: ClientAddr(client_key(peer.ip())),
            router: router.clone(),
            reserve: if held.reserve { reserve.clone() } else { None },
            conn: held.conn.clone(),
        };
        let ctx = ConnContext {
            limits,
            shutdown: shutdown.clone(),
            force: force.clone(),
        };
        let tls = tls.clone();
        let slots = slots.clone();
        tracker.spawn(async move {
            match tls {
                None => run_connection(stream, service, &ctx).await,
                Some(acceptor) => {
                    // The handshake is bounded like the headers, and can be shed like them.
                    let conn = service.conn.clone();
                    tokio::select! {
                        hs = tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream)) => {
                            if let Ok(Ok(stream)) = hs {
                                run_connection(stream, service, &ctx).await;
                            }
                        }
                        _ = conn.close.cancelled() => {}
                        _ = ctx.force.cancelled() => {}
                    }
                }
            }
            slots.release(held.id);
        });
    }
    drop(listener);
    tracker.close();
    tokio::select! {
        _ = tracker.wait() => {}
        _ = tokio::time::sleep(limits.shutdown_grace) => {
            tracing::warn!("shutdown grace ran out with requests under way; closing them");
            force.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(1), tracker.wait()).await;
        }
    }
}

struct ConnContext {
    limits: ConnectionLimits,
    shutdown: CancellationToken,
    force: CancellationToken,
}

/// Serves one connection, then closes it: lingering when the client may still be writing a
/// body that was answered before it was read.
async fn run_connection<IO>(io: IO, service: Gate, ctx: &ConnContext)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = service.conn.clone();
    let builder = {
        let mut b = hyper::server::conn::http1::Builder::new();
        // Waiting and header time are enforced by the slot sweep (they shrink under
        // pressure); hyper's own timer, which runs from the start of each wait, is only a
        // backstop (capped: hyper adds it to an Instant, which must not overflow).
        let backstop = ctx
            .limits
            .idle_timeout
            .saturating_add(ctx.limits.header_read_timeout)
            .min(Duration::from_secs(24 * 3600));
        b.timer(TokioTimer::new())
            .header_read_timeout(backstop)
            .keep_alive(true);
        b
    };
    let tracked = Tracked {
        inner: io,
        conn: conn.clone(),
    };
    let mut http = builder.serve_connection(TokioIo::new(tracked), service);
    let mut draining = false;
    let served = loop {
        tokio::select! {
            done = std::future::poll_fn(|cx| http.poll_without_shutdown(cx)) => break done,
            // Shed while waiting for a request: nothing is under way, so just close.
            _ = conn.close.cancelled() => return,
            _ = ctx.force.cancelled() => return,
            _ = ctx.shutdown.cancelled(), if !draining => {
                draining = true;
                Pin::new(&mut http).graceful_shutdown();
            }
        }
    };
    let linger =
        conn.unread_body.load(Ordering::Acquire) || matches!(&served, Err(e) if e.is_parse());
    let mut io = http.into_parts().io.into_inner();
    if linger {
        conn.lingering(Instant::now());
        tokio::select! {
            _ = linger_close(&mut io, ctx.limits.linger_bytes) => {}
            _ = conn.close.cancelled() => {}
            _ = ctx.force.cancelled() => {}
        }
    } else {
        // A clean end: FIN (and TLS close_notify), bounded in case the peer reads nothing.
        let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
    }
}

/// Half-closes, then reads and discards what the client still sends, until it closes, pauses
/// for [`LINGER_PAUSE`], or `max_bytes` or [`LINGER_TIME`] run out.
async fn linger_close<IO: AsyncRead + AsyncWrite + Unpin>(io: &mut IO, max_bytes: usize) {
    let _ = tokio::time::timeout(LINGER_TIME, async {
        let _ = io.shutdown().await;
        let mut buf = vec![0u8; 16 * 1024];
        let mut discarded = 0usize;
        while discarded < max_bytes {
            match tokio::time::timeout(LINGER_PAUSE, io.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => discarded += n,
                _ => break,
            }
        }
    })
    .await;
}

/// What a connection is doing, for the sweep and for eviction.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Waiting for a request since `since`; `first_byte` once its headers have begun.
    Waiting {
        since: Instant,
        first_byte: Option<Instant>,
    },
    /// Handling `requests` and writing their responses.
    Busy { requests: usize },
    /// Discarding what the client still sends after an early answer.
    Lingering { since: Instant },
    /// Shed: no request may start on it any more.
    Closing,
}

/// One connection's state, shared by its task, its service, its IO and the slot table.
struct Conn {
    phase: Mutex<Phase>,
    /// Cancelled to shed the connection (it was waiting too long, or made room).
    close: CancellationToken,
    /// The last request's body was not read to its end.
    unread_body: AtomicBool,
}

impl Conn {
    fn new(now: Instant) -> Conn {
        Conn {
            phase: Mutex::new(Phase::Waiting {
                since: now,
                first_byte: None,
            }),
            close: CancellationToken::new(),
            unread_body: AtomicBool::new(false),
        }
    }

    fn phase(&self) -> MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn got_bytes(&self) {
        let mut phase = self.phase();
        if let Phase::Waiting {
            first_byte: first @ None,
            ..
        } = &mut *phase
        {
            *first = Some(Instant::now());
        }
    }

    /// Marks a request under way; `None` when the connection was shed first (the request
    /// must not start: the connection is about to be dropped).
    fn begin_request(self: &Arc<Self>) -> Option<RequestGuard> {
        let mut phase = self.phase();
        *phase = match *phase {
            Phase::Closing => return None,
            Phase::Busy { requests } => Phase::Busy {
                requests: requests + 1,
            },
            _ => Phase::Busy { requests: 1 },
        };
        Some(RequestGuard { conn: self.clone() })
    }

    /// Sheds the connection if no request is under way (checked and done under one lock, so
    /// a request cannot start in between and be cut short); `false` when one is.
    fn shed_unless_busy(&self, also_if: impl FnOnce(&Phase) -> bool) -> bool {
        let mut phase = self.phase();
        if matches!(*phase, Phase::Busy { .. }) || !also_if(&phase) {
            return false;
        }
        *phase = Phase::Closing;
        self.close.cancel();
        true
    }

    fn end_request(&self) {
        let mut phase = self.phase();
        if let Phase::Busy { requests } = *phase {
            *phase = if requests > 1 {
                Phase::Busy {
                    requests: requests - 1,
                }
            } else {
                Phase::Waiting {
                    since: Instant::now(),
                    first_byte: None,
                }
            };
        }
    }

    fn lingering(&self, now: Instant) {
        let mut phase = self.phase();
        if !matches!(*phase, Phase::Closing) {
            *phase = Phase::Lingering { since: now };
        }
    }

    /// Since when the connection has been waiting (or lingering), if it is.
    fn waiting_since(&self) -> Option<Instant> {
        match *self.phase() {
            Phase::Waiting { since, .. } | Phase::Lingering { since } => Some(since),
            Phase::Busy { .. } | Phase::Closing => None,
        }
    }

    /// Whether a connection in `phase` has waited past what the current pressure allows.
    fn expired(phase: &Phase, now: Instant, idle_limit: Duration, header_limit: Duration) -> bool {
        match *phase {
            Phase::Waiting {
                since,
                first_byte: None,
            }
            | Phase::Lingering { since } => now.duration_since(since) > idle_limit,
            Phase::Waiting {
                since,
                first_byte: Some(first),
            } => {
                now.duration_since(first) > header_limit.min(idle_limit)
                    || now.duration_since(since) > idle_limit.saturating_add(header_limit)
            }
            Phase::Busy { .. } | Phase::Closing => false,
        }
    }
}

/// Marks the connection busy until the response is written (it rides in the response body).
struct RequestGuard {
    conn: Arc<Conn>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.conn.end_request();
    }
}

/// The client a request came from, as per-client limits count it (see [`client_key`]): set
/// on every request the listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddr(pub IpAddr);

/// A handler's view of [`ClientAddr`]: `None` where no listener of ours set it (a router
/// driven directly, as tests may).
pub struct Client(pub Option<IpAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Client {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Client(parts.extensions.get::<ClientAddr>().map(|c| c.0)))
    }
}

/// The address a per-client limit counts by: IPv4 as is, IPv6 by its /64 (one host usually
/// holds a whole /64, so counting single addresses would limit nothing).
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64))),
        v4 => v4,
    }
}

/// A connection admitted into a slot.
struct Held {
    id: u64,
    reserve: bool,
    conn: Arc<Conn>,
}

struct Entry {
    client: IpAddr,
    reserve: bool,
    conn: Arc<Conn>,
}

#[derive(Default)]
struct Table {
    next_id: u64,
    entries: HashMap<u64, Entry>,
    per_client: HashMap<IpAddr, usize>,
    general_used: usize,
    reserve_used: usize,
}

impl Table {
    fn remove(&mut self, id: u64) -> Option<Entry> {
        let entry = self.entries.remove(&id)?;
        if let Some(n) = self.per_client.get_mut(&entry.client) {
            *n -= 1;
            if *n == 0 {
                self.per_client.remove(&entry.client);
            }
        }
        if entry.reserve {
            self.reserve_used -= 1;
        } else {
            self.general_used -= 1;
        }
        Some(entry)
    }

    /// Closes the connection of `pool` that has waited longest, if one is waiting.
    fn evict_longest_waiting(&mut self, reserve: bool) -> bool {
        let victim = self
            .entries
            .iter()
            .filter(|(_, e)| e.reserve == reserve)
            .filter_map(|(id, e)| e.conn.waiting_since().map(|since| (since, *id)))
            .min();
        let Some((_, id)) = victim else {
            return false;
        };
        // It may have begun a request since it was picked: then it stays.
        if !self
            .entries
            .get(&id)
            .is_some_and(|e| e.conn.shed_unless_busy(|_| true))
        {
            return false;
        }
        if let Some(entry) = self.remove(id) {
            tracing::debug!(client = %entry.client, "slots full: closed the connection that waited longest");
        }
        true
    }
}

/// The slot table of one listener.
struct Slots {
    table: Mutex<Table>,
    general: usize,
    reserved: usize,
    per_client: usize,
    idle_timeout: Duration,
    header_read_timeout: Duration,
}

impl Slots {
    fn new(limits: &ConnectionLimits, reserved: usize) -> Slots {
        let reserved = reserved.min(limits.max_connections.saturating_sub(1));
        Slots {
            table: Mutex::new(Table::default()),
            general: limits.max_connections - reserved,
            reserved,
            per_client: limits.max_connections_per_client.max(1),
            idle_timeout: limits.idle_timeout,
            header_read_timeout: limits.header_read_timeout,
        }
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for a new connection from `peer`, or `None` to close it.
    fn admit(&self, peer: IpAddr, now: Instant) -> Option<Held> {
        let client = client_key(peer);
        let mut table = self.table();
        if table.per_client.get(&client).copied().unwrap_or(0) >= self.per_client {
            tracing::debug!(%client, "connection refused: per-client limit");
            return None;
        }
        let reserve = if table.general_used < self.general || table.evict_longest_waiting(false) {
            false
        } else if table.reserve_used < self.reserved || table.evict_longest_waiting(true) {
            true
        } else {
            tracing::debug!(%client, "connection refused: no free slot");
            return None;
        };
        let id = table.next_id;
        table.next_id += 1;
        let conn = Arc::new(Conn::new(now));
        *table.per_client.entry(client).or_insert(0) += 1;
        if reserve {
            table.reserve_used += 1;
        } else {
            table.general_used += 1;
        }
        table.entries.insert(
            id,
            Entry {
                client,
                reserve,
                conn: conn.clone(),
            },
        );
        Some(Held { id, reserve, conn })
    }

    fn release(&self, id: u64) {
        self.table().remove(id);
    }

    /// Closes the waiting connections that are over the limit the current pressure allows.
    fn sweep(&self, now: Instant) {
        let mut table = self.table();
        let general_limit = idle_limit(self.idle_timeout, table.general_used, self.general);
        let reserve_limit = idle_limit(self.idle_timeout, table.reserve_used, self.reserved);
        let header_limit = self.header_read_timeout;
        let shed: Vec<u64> = table
            .entries
            .iter()
            .filter(|(_, e)| {
                let limit = if e.reserve {
                    reserve_limit
                } else {
                    general_limit
                };
                e.conn
                    .shed_unless_busy(|phase| Conn::expired(phase, now, limit, header_limit))
            })
            .map(|(id, _)| *id)
            .collect();
        for id in shed {
            table.remove(id);
        }
    }
}

/// How long a connection may wait with `used` of `total` slots taken: `idle_timeout` up to
/// half full, then shrinking linearly to [`IDLE_FLOOR`] when full.
pub fn idle_limit(idle_timeout: Duration, used: usize, total: usize) -> Duration {
    let floor = IDLE_FLOOR.min(idle_timeout);
    if total == 0 || used * 2 <= total {
        return idle_timeout;
    }
    let free = total.saturating_sub(used) as f64 / total as f64;
    // free is 0.5 at half full and 0 when full.
    floor + (idle_timeout - floor).mul_f64((free * 2.0).clamp(0.0, 1.0))
}

/// The IO of a connection: notes when a waiting connection's next request begins.
struct Tracked<IO> {
    inner: IO,
    conn: Arc<Conn>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Tracked<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.conn.got_bytes();
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Tracked<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// What a reserved slot admits.
struct ReserveGate {
    router: Router,
    admin_token: TokenDigest,
}

impl ReserveGate {
    /// Whether the request carries the admin bearer token (the same check as the admin API,
    /// with the configured token's digest taken once per listener).
    fn admits<B>(&self, req: &Request<B>) -> bool {
        auth::bearer(req.headers()).is_some_and(|token| self.admin_token.matches(token))
    }
}

/// The per-connection service: marks the connection busy, tracks whether the request body was
/// read to its end, and holds a reserved slot to admin requests.
#[derive(Clone)]
struct Gate {
    client: ClientAddr,
    router: Router,
    reserve: Option<Arc<ReserveGate>>,
    conn: Arc<Conn>,
}

type GateFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for Gate {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = GateFuture;

    fn call(&self, mut req: Request<Incoming>) -> GateFuture {
        req.extensions_mut().insert(self.client);
        let Some(guard) = self.conn.begin_request() else {
            // Shed a moment ago: the connection is being dropped, this request never starts.
            let mut response =
                Problem::unavailable("the connection is closing; send the request again")
                    .into_response();
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return Box::pin(std::future::ready(Ok(response)));
        };
        self.conn
            .unread_body
            .store(!req.body().is_end_stream(), Ordering::Release);
        let router = match &self.reserve {
            None => self.router.clone(),
            Some(gate) if gate.admits(&req) => gate.router.clone(),
            Some(_) => {
                let mut response = Problem::unavailable(
                    "every connection slot is taken; this one is held for the admin API",
                )
                .into_response();
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                return Box::pin(std::future::ready(Ok(guarded(response, guard))));
            }
        };
        let conn = self.conn.clone();
        let req = req.map(|inner| Body::new(TrackBody { inner, conn }));
        Box::pin(async move {
            let response = match tower::ServiceExt::oneshot(router, req).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            Ok(guarded(response, guard))
        })
    }
}

/// The response with the busy mark riding in its body: hyper drops the body once written.
fn guarded(response: Response<Body>, guard: RequestGuard) -> Response<Body> {
    response.map(|inner| {
        Body::new(GuardedBody {
            inner,
            _guard: guard,
        })
    })
}

struct GuardedBody {
    inner: Body,
    _guard: RequestGuard,
}

impl HttpBody for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that notes when it has been read to its end.
struct TrackBody {
    inner: Incoming,
    conn: Arc<Conn>,
}

impl HttpBody for TrackBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let ended = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => self.inner.is_end_stream(),
            _ => false,
        };
        if ended {
            self.conn.unread_body.store(false, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Why the listener's TLS cannot be set up (at start).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Pem {
        path: std::path::PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{0}: no certificate")]
    NoCertificate(std::path::PathBuf),
    #[error("{path}: {source}")]
    Rustls {
        path: std::path::PathBuf,
        source: rustls::Error,
    },
}

/// A TLS acceptor from PEM certificate chain and key files.
pub fn tls_acceptor(files: &TlsFiles) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let pem = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| TlsError::Pem { path, source }
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(pem(&files.cert))?
        .collect::<Result<_, _>>()
        .map_err(pem(&files.cert))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(files.cert.clone()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(pem(&files.key))?;
    let rustls_error = |source| TlsError::Rustls {
        path: files.cert.clone(),
        source,
    };
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(rustls_error)?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(rustls_error)?;
    Ok(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_idle_limit_shrinks_from_half_full_to_one_second_when_full() {
        let t = Duration::from_secs(60);
        assert_eq!(idle_limit(t, 0, 100), t);
        assert_eq!(idle_limit(t, 50, 100), t);
        assert_eq!(idle_limit(t, 75, 100), Duration::from_millis(30_500));
        assert_eq!(idle_limit(t, 100, 100), IDLE_FLOOR);
        assert_eq!(
            idle_limit(Duration::from_millis(300), 100, 100),
            Duration::from_millis(300)
        );
    }

    #[test]
    fn ipv6_clients_count_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(client_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }
}
