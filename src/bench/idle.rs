//! `postgame bench fanout --idle N`: what an idle connection costs a gateway.
//!
//! Opens N WebSocket connections to a gateway child process (`postgame serve --role
//! gateway`), each subscribed to one of `--channels` channels and then silent (it answers
//! the gateway's pings, as any client library does), from `--sources` loopback addresses
//! (127.0.0.1, 127.0.0.2, ...: each client socket is bound to its source address and a
//! port of [`PORTS`] before it connects), so N can exceed the ports of one address. Then one message
//! is published to each channel, through a second gateway (in this process) and
//! NOTIFY/LISTEN, and every connection must receive it.
//!
//! Reported: the gateway process's RSS (`VmRSS`) before the clients connect, once all are
//! subscribed and idle, and after the broadcast; the difference per connection; the connect
//! rate (TCP connect, WebSocket handshake, `connected`, `subscribe`, `subscribed`, with
//! [`CONNECT_CONCURRENCY`] in flight); how many connections received the broadcast, and the
//! time from the publish to each receipt.
//!
//! Each connection is a file descriptor in the gateway and one in this process: both must
//! be allowed N plus [`FD_MARGIN`]. The bench raises its soft `nofile` limit to what it
//! needs (the child inherits it), and the hard limit too where it is allowed to (root with
//! `CAP_SYS_RESOURCE`); if the limit stays below what N needs it says so and stops before
//! connecting anyone.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::fanout::{connect, hello_subscribe, mib, next_text, start_postgame, SECRET};
use super::{histogram, progress_count, rss_bytes, Latency, Report};
use crate::config::FanoutArgs;
use crate::game::Registry;
use crate::gateway::auth::{Auth, Cap};

/// Connections being opened at once.
const CONNECT_CONCURRENCY: usize = 256;
/// The longest one connection (TCP, handshake, subscription) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// The client ports of each source address. The bench picks them itself: `bind` to port
/// 0 makes Linux search the ephemeral range (about 28,000 ports) for a free one, which
/// gets slower as it fills, and would cap an address at that range.
const PORTS: std::ops::RangeInclusive<u16> = 10_000..=65_000;
/// Connections per source address when `--sources` is 0 (some of [`PORTS`] may be taken
/// by other sockets of the machine).
const PER_SOURCE: usize = 40_000;
/// File descriptors each process needs beyond one per connection (database pools, the
/// listener, the runtime, the binary's files).
const FD_MARGIN: u64 = 256;
/// The clients' WebSocket read buffer: they receive three small frames.
const CLIENT_READ_BUFFER: usize = 512;
/// How long receipts of the broadcast may stall before the count is final.
const SETTLE: Duration = Duration::from_secs(5);
/// Time for the gateway's allocator and tasks to settle before its memory is read.
const QUIET: Duration = Duration::from_secs(1);

type IdleWs = tokio_tungstenite::WebSocketStream<TcpStream>;

/// What the clients share.
struct Shared {
    base: Instant,
    ready: Arc<AtomicU64>,
    failed: AtomicU64,
    received: Arc<AtomicU64>,
    first_error: Mutex<Option<String>>,
    gate: Semaphore,
    /// Per source address, the next client port to try.
    next_port: Vec<AtomicU64>,
}

/// How one idle connection ended.
#[derive(Default)]
struct Outcome {
    /// When the broadcast arrived, in µs since `base`.
    received_at: Option<u64>,
    /// The close code if the gateway closed the connection (1006: without a close frame).
    closed: Option<u16>,
    /// The address the connection came from.
    source: Option<IpAddr>,
}

/// The limits on open files: (soft, hard) after raising the soft one (and, where allowed,
/// the hard one) towards `want`.
fn raise_nofile(want: u64) -> std::io::Result<(u64, u64)> {
    use rlimit::Resource;
    let (soft, hard) = Resource::NOFILE.get()?;
    if soft >= want {
        return Ok((soft, hard));
    }
    // Raising the hard limit needs privileges; without them, the soft one goes up to it.
    if hard < want && Resource::NOFILE.set(want, want).is_ok() {
        return Resource::NOFILE.get();
    }
    Resource::NOFILE.set(want.min(hard), hard)?;
    Resource::NOFILE.get()
}

/// A client socket bound to `source`, on the next free port of `ports` (see [`PORTS`]).
fn bind(source: IpAddr, ports: &AtomicU64) -> anyhow::Result<TcpSocket> {
    loop {
        let port = ports.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(port)
            .ok()
            .filter(|p| PORTS.contains(p))
            .with_context(|| format!("no port left on {source}: use more --sources"))?;
        let socket = TcpSocket::new_v4()?;
        match socket.bind(SocketAddr::new(source, port)) {
            Ok(()) => return Ok(socket),
            // Taken by another socket of this machine: try the next one.
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(e) => {
                return Err(e).with_context(|| format!("binding a client socket to {source}"))
            }
        }
    }
}

/// A WebSocket connection from `source` to `target`, subscribed to `channel`.
async fn open(
    source: IpAddr,
    ports: &AtomicU64,
    target: SocketAddr,
    url: &str,
    channel: &str,
) -> anyhow::Result<IdleWs> {
    let socket = bind(source, ports)?;
    let tcp = socket.connect(target).await.context("TCP connect")?;
    tcp.set_nodelay(true)?;
    let config = WebSocketConfig::default()
        .read_buffer_size(CLIENT_READ_BUFFER)
        .write_buffer_size(0);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(config))
        .await
        .context("WebSocket handshake")?;
    hello_subscribe(&mut ws, channel).await?;
    Ok(ws)
}

/// Connects, subscribes, then waits silently for the broadcast (and after it, until
/// `stop`, so a close by the gateway is seen).
async fn idle_client(
    source: usize,
    target: SocketAddr,
    url: String,
    channel: String,
    shared: Arc<Shared>,
    stop: CancellationToken,
) -> Outcome {
    let opened = {
        // Held until subscribed: the gate bounds connections in progress, not open ones.
        let _permit = shared.gate.acquire().await;
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + source as u8));
        let ports = &shared.next_port[source];
        tokio::time::timeout(CONNECT_TIMEOUT, open(ip, ports, target, &url, &channel)).await
    };
    drop(url);
    let mut ws = match opened {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => return failed(&shared, format!("{e:#}")),
        Err(_) => {
            return failed(
                &shared,
                format!("not subscribed within {CONNECT_TIMEOUT:?}"),
            )
        }
    };
    shared.ready.fetch_add(1, Ordering::Relaxed);
    let mut outcome = Outcome {
        source: ws.get_ref().local_addr().ok().map(|a| a.ip()),
        ..Outcome::default()
    };
    loop {
        let msg = tokio::select! {
            m = ws.next() => m,
            _ = stop.cancelled() => break,
        };
        match msg {
            Some(Ok(Message::Text(t))) => {
                if outcome.received_at.is_none() && t.as_str().starts_with(r#"{"op":"message""#) {
                    outcome.received_at = Some(shared.base.elapsed().as_micros() as u64);
                    shared.received.fetch_add(1, Ordering::Relaxed);
                }
            }
            Some(Ok(Message::Close(f))) => {
                outcome.closed = Some(f.map_or(1005, |f| u16::from(f.code)));
                break;
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => {
                outcome.closed = Some(1006);
                break;
            }
        }
    }
    outcome
}

fn failed(shared: &Shared, error: String) -> Outcome {
    shared.failed.fetch_add(1, Ordering::Relaxed);
    let mut first = shared.first_error.lock().unwrap_or_else(|e| e.into_inner());
    first.get_or_insert(error);
    Outcome::default()
}

/// Publishes one message to each of `channels` through the gateway at `url`; returns when
/// every publish was acknowledged, with the instant (µs since `base`) the first was sent.
async fn publish_once(url: &str, channels: usize, base: Instant) -> anyhow::Result<u64> {
    let mut ws = connect(url).await?;
    let hello = next_text(&mut ws).await?;
    if !hello.contains("\"connected\"") {
        bail!("publisher: expected `connected`, got {hello}");
    }
    let sent_at = base.elapsed().as_micros() as u64;
    for k in 0..channels {
        let frame = json!({
            "op": "publish", "id": k + 1, "channel": format!("bench-{k}"),
            "name": "m", "data": {"idle": true},
        });
        ws.send(Message::text(frame.to_string())).await?;
    }
    let mut acked = 0;
    while acked < channels {
        let text = tokio::time::timeout(Duration::from_secs(30), next_text(&mut ws))
            .await
            .context("publisher: no ack within 30 s")??;
        if text.contains(r#""op":"ack""#) {
            acked += 1;
        } else if text.contains(r#""op":"error""#) {
            bail!("publish refused: {text}");
        }
    }
    let _ = ws.close(None).await;
    Ok(sent_at)
}

/// Runs the `--idle n` scenario.
pub(super) async fn run(
    db_url: &str,
    args: &FanoutArgs,
    n: usize,
    show_progress: bool,
    games: &Registry,
) -> anyhow::Result<Report> {
    if n == 0 || args.channels == 0 || args.channels > n {
        bail!("--idle must be at least 1 and at least --channels (at least 1)");
    }
    let sources = if args.sources == 0 {
        n.div_ceil(PER_SOURCE)
    } else {
        args.sources
    };
    if sources > 254 {
        bail!("--sources: at most 254 loopback addresses (127.0.0.1 to 127.0.0.254)");
    }
    let want = n as u64 + FD_MARGIN;
    let (soft, hard) = raise_nofile(want).context("reading the open-files limit")?;
    if soft < want {
        bail!(
            "--idle {n} needs {want} open files in this process and in the gateway, but the \
             limit here is {soft} (hard limit {hard}; only root with CAP_SYS_RESOURCE can \
             raise it, e.g. `prlimit --nofile={want}:{want} --pid $$`): at most --idle {} \
             can be reached",
            soft.saturating_sub(FD_MARGIN)
        );
    }
    // The gateway is always a child process, so its RSS is its own.
    let args = FanoutArgs {
        process: true,
        one_gateway: false,
        baseline: false,
        ..args.clone()
    };
    let setup = start_postgame(db_url, &args, games).await?;
    let result = measure(
        &setup.sub_url,
        &setup.pub_url,
        setup.rss_pid,
        &args,
        n,
        sources,
        show_progress,
    )
    .await;
    setup.servers.shutdown().await;
    let mut report = result?;
    report.params["nofile_limit"] = json!(soft);
    report.params["rss_of"] = json!(setup.rss_of);
    Ok(report)
}

async fn measure(
    sub_url: &str,
    pub_url: &str,
    pid: Option<u32>,
    args: &FanoutArgs,
    n: usize,
    sources: usize,
    show_progress: bool,
) -> anyhow::Result<Report> {
    let target: SocketAddr = sub_url
        .trim_start_matches("ws://")
        .trim_end_matches("/v1/ws")
        .parse()
        .context("the gateway's address")?;
    let shared = Arc::new(Shared {
        base: Instant::now(),
        ready: Arc::new(AtomicU64::new(0)),
        failed: AtomicU64::new(0),
        received: Arc::new(AtomicU64::new(0)),
        first_error: Mutex::new(None),
        gate: Semaphore::new(CONNECT_CONCURRENCY),
        next_port: (0..sources)
            .map(|_| AtomicU64::new(u64::from(*PORTS.start())))
            .collect(),
    });
    let auth = Auth::new(SECRET);
    let caps = std::collections::BTreeMap::from([("bench-*".to_owned(), vec![Cap::Subscribe])]);
    let ttl = chrono::Duration::hours(6);
    tokio::time::sleep(QUIET).await;
    let rss_before = rss_bytes(pid);

    let stop = CancellationToken::new();
    let bar_stop = CancellationToken::new();
    let bar = show_progress.then(|| {
        progress_count(
            "subscribed",
            Arc::clone(&shared.ready),
            n as u64,
            bar_stop.clone(),
        )
    });
    let started = Instant::now();
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        let (token, _) = auth.issue(&format!("bench-idle-{i}"), None, Some(caps.clone()), ttl);
        clients.push(tokio::spawn(idle_client(
            i % sources,
            target,
            format!("{sub_url}?token={token}"),
            format!("bench-{}", i % args.channels),
            Arc::clone(&shared),
            stop.clone(),
        )));
    }
    while shared.ready.load(Ordering::Relaxed) + shared.failed.load(Ordering::Relaxed) < n as u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let connect_s = started.elapsed().as_secs_f64();
    bar_stop.cancel();
    if let Some(bar) = bar {
        let _ = bar.await;
    }
    let connected = shared.ready.load(Ordering::Relaxed);
    let failed = shared.failed.load(Ordering::Relaxed);
    let first_error = shared
        .first_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if connected == 0 {
        stop.cancel();
        bail!(
            "no connection could subscribe: {}",
            first_error.unwrap_or_default()
        );
    }
    tokio::time::sleep(QUIET).await;
    let rss_connected = rss_bytes(pid);

    // One broadcast per channel; every connection must receive its channel's.
    let published = publish_once(
        pub_url_with_token(pub_url, &auth).as_str(),
        args.channels,
        shared.base,
    )
    .await;
    let sent_at = match published {
        Ok(t) => t,
        Err(e) => {
            stop.cancel();
            return Err(e);
        }
    };
    let mut last = (0, Instant::now());
    loop {
        let got = shared.received.load(Ordering::Relaxed);
        if got >= connected {
            break;
        }
        if got != last.0 {
            last = (got, Instant::now());
        } else if last.1.elapsed() > SETTLE {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let delivered_s =
        (shared.base.elapsed().as_micros() as u64).saturating_sub(sent_at) as f64 / 1e6;
    tokio::time::sleep(QUIET).await;
    let rss_delivered = rss_bytes(pid);
    stop.cancel();

    let mut latencies = histogram();
    let mut delivered = 0u64;
    let mut closed = 0u64;
    let mut close_codes = std::collections::BTreeMap::new();
    let mut used = std::collections::BTreeSet::new();
    for c in clients {
        let Ok(o) = c.await else { continue };
        used.extend(o.source);
        if let Some(at) = o.received_at {
            delivered += 1;
            let _ = latencies.record(at.saturating_sub(sent_at).max(1));
        }
        if let Some(code) = o.closed {
            closed += 1;
            *close_codes.entry(code.to_string()).or_insert(0u64) += 1;
        }
    }
    let per_conn = |after: Option<u64>| match (rss_before, after) {
        (Some(b), Some(a)) => {
            json!((a.saturating_sub(b) as f64 / connected as f64 / 1024.0 * 100.0).round() / 100.0)
        }
        _ => serde_json::Value::Null,
    };
    let rate = connected as f64 / connect_s;
    Ok(Report {
        scenario: "fanout",
        throughput_per_s: rate,
        unit: "connections",
        count: connected,
        errors: failed + connected.saturating_sub(delivered),
        elapsed_s: connect_s,
        latency_ms: Latency::of(&latencies),
        latency_of: "publish sent to receipt by each idle connection",
        params: json!({
            "idle": n,
            "sources": sources,
            "sources_used": used.len(),
            "channels": args.channels,
            "connected": connected,
            "failed": failed,
            "first_error": first_error,
            "connect_s": (connect_s * 1000.0).round() / 1000.0,
            "connect_rate_per_s": rate.round(),
            "delivered": delivered,
            "not_delivered": connected.saturating_sub(delivered),
            "closed_by_gateway": closed,
            "close_codes": close_codes,
            "delivery_s": (delivered_s * 1000.0).round() / 1000.0,
            "rss_before_mib": mib(rss_before),
            "rss_connected_mib": mib(rss_connected),
            "rss_delivered_mib": mib(rss_delivered),
            "rss_per_connection_kib": per_conn(rss_connected),
            "rss_per_connection_after_broadcast_kib": per_conn(rss_delivered),
        }),
    })
}

fn pub_url_with_token(pub_url: &str, auth: &Auth) -> String {
    let caps = std::collections::BTreeMap::from([("bench-*".to_owned(), vec![Cap::Publish])]);
    let (token, _) = auth.issue(
        "bench-publisher",
        None,
        Some(caps),
        chrono::Duration::hours(1),
    );
    format!("{pub_url}?token={token}")
}
