//! The gateway's accept loop, on hyper's HTTP/1.1 server, because `axum::serve` has no
//! knob for what a server on the open internet needs. Every socket is bounded in time and
//! counted:
//!
//! - **Header timeout** (`--http-header-timeout-seconds`): a client has that long to send
//!   a request's headers once its connection opened or its previous response was sent
//!   (slowloris), then the connection is closed.
//! - **Idle timeout** (`--http-idle-timeout-seconds`): a connection whose bytes stop moving
//!   in both directions while a request is under way (a stalled body, an unread response)
//!   is shut down gracefully, then dropped `--write-timeout-seconds` later.
//! - **Write timeout** (`--write-timeout-seconds`): a response write blocked that long (the
//!   peer does not read) drops the connection.
//! - **Connections per source address** (`--max-connections-per-ip`): one more is answered
//!   `429` and closed at once.
//! - **File descriptors**: when `accept` fails for want of descriptors (EMFILE/ENFILE),
//!   a spare descriptor kept for the purpose is released to accept the waiting connection
//!   and close it at once (rather than leave it queued, or spin), old connections keep
//!   being served, and the condition is logged at most once a minute.
//!
//! `postgame_tcp_connections` counts the sockets that are really open (until the last
//! handle on them is dropped, upgraded WebSockets included).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// The time bounds and limits of the accept loop.
#[derive(Debug, Clone)]
pub struct Limits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
    pub max_connections_per_ip: usize,
    /// Peers exempt from the per-address connection limit (reverse proxies: everything they
    /// forward comes from their address).
    pub trusted_proxies: Vec<IpAddr>,
}

/// Open connections per source address.
#[derive(Default)]
struct PerIp {
    open: Mutex<HashMap<IpAddr, usize>>,
}

struct IpSlot {
    table: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    fn acquire(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<IpSlot> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            table: Arc::clone(self),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.table.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Milliseconds since `epoch`, for activity stamps shared between the socket and its
/// watchdog.
fn millis(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// What the watchdog of a connection sees of its socket.
struct Activity {
    epoch: Instant,
    /// When bytes last moved, in ms since `epoch`.
    last: AtomicU64,
    /// Since when a write has been blocked (ms since `epoch`, plus one), or 0.
    blocked_since: AtomicU64,
}

/// A TCP stream that stamps its activity and is counted in `postgame_tcp_connections` (and
/// against its address) until dropped.
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
    _slot: Option<IpSlot>,
}

impl Tracked {
    fn new(inner: TcpStream, slot: Option<IpSlot>) -> Self {
        metrics::gauge!("postgame_tcp_connections").increment(1.0);
        Self {
            inner,
            activity: Arc::new(Activity {
                epoch: Instant::now(),
                last: AtomicU64::new(0),
                blocked_since: AtomicU64::new(0),
            }),
            _slot: slot,
        }
    }

    fn moved(&self) {
        let a = &self.activity;
        a.last.store(millis(a.epoch), Ordering::Relaxed);
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        metrics::gauge!("postgame_tcp_connections").decrement(1.0);
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.moved();
        }
        r
    }
}

impl Tracked {
    fn on_write<T>(&self, r: &Poll<io::Result<T>>) {
        let a = &self.activity;
        match r {
            Poll::Pending => {
                let _ = a.blocked_since.compare_exchange(
                    0,
                    millis(a.epoch) + 1,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            Poll::Ready(_) => {
                a.blocked_since.store(0, Ordering::Relaxed);
                self.moved();
            }
        }
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.on_write(&r);
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.on_write(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Whether an `accept` error means this process (or the system) has no descriptor left.
fn out_of_descriptors(e: &io::Error) -> bool {
    // EMFILE (24) and ENFILE (23) on Linux and the BSDs.
    matches!(e.raw_os_error(), Some(23 | 24))
}

/// A descriptor held in reserve, released to accept (and close) a connection when the
/// process runs out.
fn spare_fd() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

/// Accepts connections until `stop`, serving each with `router` within `limits`.
pub async fn serve(listener: TcpListener, router: Router, limits: Limits, stop: CancellationToken) {
    let limits = Arc::new(limits);
    let per_ip = Arc::new(PerIp::default());
    let mut spare = spare_fd();
    let mut starved = false;
    // Logged at most once a minute, however often it flaps.
    let mut last_logged: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            a = listener.accept() => a,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) if out_of_descriptors(&e) => {
                metrics::counter!("postgame_accept_refused_total", "reason" => "fds").increment(1);
                starved = true;
                if last_logged.map_or(true, |t| t.elapsed() >= Duration::from_secs(60)) {
                    last_logged = Some(Instant::now());
                    tracing::error!(
                        error = %e,
                        "out of file descriptors: new connections are closed at once until \
                         some are released (raise `ulimit -n`); open connections are still served"
                    );
                }
                // Release the spare, take the waiting connection and close it, so it does
                // not sit in the backlog, and the loop does not spin on it.
                drop(spare.take());
                if let Ok(Ok((s, _))) =
                    tokio::time::timeout(Duration::from_millis(10), listener.accept()).await
                {
                    drop(s);
                }
                spare = spare_fd();
                if spare.is_none() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                continue;
            }
            Err(e) => {
                // ECONNABORTED and friends: that one connection is gone, not the listener.
                tracing::debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        if starved {
            starved = false;
            tracing::debug!("file descriptors available again: accepting connections");
        }
        if spare.is_none() {
            spare = spare_fd();
        }
        let slot = if limits.trusted_proxies.contains(&peer.ip()) {
            None
        } else {
            match per_ip.acquire(peer.ip(), limits.max_connections_per_ip) {
                Some(s) => Some(s),
                None => {
                    metrics::counter!("postgame_accept_refused_total", "reason" => "per_ip")
                        .increment(1);
                    tokio::spawn(refuse(tcp));
                    continue;
                }
            }
        };
        if let Err(e) = tcp.set_nodelay(true) {
            // Small frames must leave at once: without TCP_NODELAY, Nagle's algorithm and
            // delayed ACKs add ~40 ms to a reply that follows a write.
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let io = Tracked::new(tcp, slot);
        // The connection logs under the gateway's span (its `role`).
        tokio::spawn(
            connection(io, peer, router.clone(), Arc::clone(&limits), stop.clone())
                .in_current_span(),
        );
    }
}

/// Answers a connection over the per-address limit with a 429 and closes it.
async fn refuse(mut tcp: TcpStream) {
    // Read (a bounded part of) the request first: a response before the request confuses
    // clients, which would report a broken connection rather than the 429.
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        let mut buf = [0u8; 4096];
        let mut seen = Vec::new();
        while seen.len() < 16 * 1024 {
            let n = tcp.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            if seen.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        Ok::<_, io::Error>(())
    })
    .await;
    let body = r#"{"code":"rate_limited","message":"too many connections from this address"}"#;
    let response = format!(
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        tcp.write_all(response.as_bytes()).await?;
        tcp.shutdown().await
    })
    .await;
}

/// Serves one connection, its watchdog enforcing the idle and write timeouts.
async fn connection(
    io: Tracked,
    peer: SocketAddr,
    router: Router,
    limits: Arc<Limits>,
    stop: CancellationToken,
) {
    let activity = Arc::clone(&io.activity);
    let service = TowerToHyperService::new(router);
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        hyper::service::Service::call(&service, req)
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let check = Duration::from_millis(250).min(limits.header_timeout / 2);
    let mut ticker = tokio::time::interval(check);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut closing: Option<Instant> = None;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "HTTP connection ended");
                }
                return;
            }
            _ = stop.cancelled(), if closing.is_none() => {
                conn.as_mut().graceful_shutdown();
                closing = Some(Instant::now() + limits.write_timeout);
            }
            _ = ticker.tick() => {
                let now = millis(activity.epoch);
                let blocked = activity.blocked_since.load(Ordering::Relaxed);
                if blocked > 0 && now.saturating_sub(blocked - 1) >= ms(limits.write_timeout) {
                    metrics::counter!("postgame_write_timeouts_total").increment(1);
                    return;
                }
                if let Some(deadline) = closing {
                    if Instant::now() >= deadline {
                        return;
                    }
                } else if now.saturating_sub(activity.last.load(Ordering::Relaxed))
                    >= ms(limits.idle_timeout)
                {
                    conn.as_mut().graceful_shutdown();
                    closing = Some(Instant::now() + limits.write_timeout);
                }
            }
        }
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
