//! `postgame bench fanout`: S WebSocket subscribers spread over K channels (`bench-0` …),
//! one publisher at R messages per second, payloads of about `--payload` bytes.
//!
//! The path, by default: the publisher's WebSocket `publish` → its gateway's group commit →
//! message log → NOTIFY → the subscribers' gateway (a second gateway, in-process, or a
//! separate `postgame serve --role gateway` process with `--process`) → LISTEN → hub →
//! every socket. `--one-gateway` publishes into the subscribers' own gateway (the hub is
//! then woken in-process, without the round trip through LISTEN). `--baseline` runs the
//! same clients against a bare axum + `tokio::sync::broadcast` server with no database
//! (in-process, or in its own process with `--process`).
//!
//! Measured: deliveries per second (received while the publisher runs, after a warm-up),
//! the latency from the publisher sending a message to a subscriber receiving it (the
//! send instant travels in the payload as microseconds since a base `Instant` shared by
//! the publisher and the subscribers), lost messages (every subscriber must receive every
//! acknowledged message of its channel, in seq order), and the RSS of the subscribers'
//! server before and after the subscribers connect (of this whole process, clients
//! included, unless `--process`: then of the server process alone). 10,000 subscribers
//! need `--process` where a process may open 20,000 files: the clients hold one socket
//! each, and so does the server.
//!
//! `--slow N` makes N more subscribers that stop reading while the publisher runs: what
//! happens to them (cut off with 4008 once their outbox is full, or not) is reported
//! apart, and they count neither in `lost` nor in the latency.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use axum::extract::ws::{CloseFrame, Message as AxMessage, Utf8Bytes, WebSocket};
use axum::extract::{State, WebSocketUpgrade};
use axum::response::Response;
use chrono::SecondsFormat;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc, Semaphore};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::{histogram, progress, progress_count, rss_bytes, Latency, Report};
use crate::config::{FanoutArgs, Role, ServeConfig};
use crate::game::Registry;
use crate::gateway::auth::{Auth, Cap};

pub(super) const SECRET: &str = "postgame-bench-secret";
/// Subscribers connecting at once.
const CONNECT_CONCURRENCY: usize = 64;
/// The longest a connection and its handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// The clients' WebSocket read buffer, as small as the gateway's so the clients add little
/// to an in-process RSS figure.
const CLIENT_READ_BUFFER: usize = 4096;
/// Frames the bare server queues per subscriber, as the gateway's default outbox.
const BARE_QUEUE: usize = 1024;
/// How long deliveries may stall after the publisher stopped before the run ends.
const SETTLE: Duration = Duration::from_secs(3);

pub(super) type ClientWs =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What subscribers and the publisher share.
struct Shared {
    base: Instant,
    /// Publish-time window of the measurement, in µs since `base` (set when publishing
    /// starts; nothing is measured before).
    w0: AtomicU64,
    w1: AtomicU64,
    /// Deliveries to regular subscribers, all of them.
    deliveries: Arc<AtomicU64>,
    /// Deliveries to slow subscribers.
    slow_deliveries: AtomicU64,
    ready: Arc<AtomicU64>,
    failed: AtomicU64,
    /// Frames that were not what a subscriber expected.
    bad_frames: AtomicU64,
    gate: Semaphore,
}

impl Shared {
    fn now_us(&self) -> u64 {
        self.base.elapsed().as_micros() as u64
    }
}

/// How one subscriber ended.
struct SubOutcome {
    channel: usize,
    slow: bool,
    received: u64,
    /// Messages whose seq was not the previous one + 1 (a gap, a repeat or a reordering).
    gaps: u64,
    /// The close code, if the server closed the connection (1006: without a close frame).
    closed: Option<u16>,
    /// Latencies of the messages published inside the window, in µs (merged at the end
    /// rather than shared while running).
    latencies_us: Vec<u32>,
    /// Deliveries received inside the window.
    in_window: u64,
}

/// The number after `key` (e.g. `"seq":`) in a JSON text, spaces allowed.
pub(super) fn number_after(text: &str, key: &str) -> Option<u64> {
    let rest = &text[text.find(key)? + key.len()..];
    let rest = rest.trim_start();
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

pub(super) async fn connect(url: &str) -> anyhow::Result<ClientWs> {
    let config = WebSocketConfig::default().read_buffer_size(CLIENT_READ_BUFFER);
    let connecting = tokio_tungstenite::connect_async_with_config(url, Some(config), true);
    // A server out of file descriptors leaves a connection in its backlog forever.
    let (ws, _) = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| anyhow::anyhow!("no WebSocket handshake within {CONNECT_TIMEOUT:?}"))?
        .context("WebSocket connect")?;
    Ok(ws)
}

/// The next text frame (pings are answered by the library while reading).
pub(super) async fn next_text<S>(ws: &mut S) -> anyhow::Result<String>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_owned()),
            Some(Ok(Message::Close(f))) => bail!("closed: {f:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("connection ended"),
        }
    }
}

/// Reads the `connected` greeting of a new connection, subscribes it to `channel` and
/// reads the `subscribed` reply.
pub(super) async fn hello_subscribe<S>(ws: &mut S, channel: &str) -> anyhow::Result<()>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
        + futures_util::Sink<Message, Error = tokio_tungstenite::tungstenite::Error>
        + Unpin,
{
    let hello = next_text(ws).await?;
    if !hello.contains("\"connected\"") {
        bail!("expected `connected`, got {hello}");
    }
    let frame = json!({"op": "subscribe", "id": 1, "channel": channel});
    ws.send(Message::text(frame.to_string())).await?;
    let reply = next_text(ws).await?;
    if !reply.contains("\"subscribed\"") {
        bail!("expected `subscribed`, got {reply}");
    }
    Ok(())
}

/// Connects, subscribes, then counts and times every message until `stop`.
async fn subscriber(
    url: String,
    channel: usize,
    slow: bool,
    shared: Arc<Shared>,
    publishing_done: CancellationToken,
    stop: CancellationToken,
) -> anyhow::Result<SubOutcome> {
    let subscribed = async {
        let _permit = shared.gate.acquire().await?;
        let mut ws = connect(&url).await?;
        hello_subscribe(&mut ws, &format!("bench-{channel}")).await?;
        anyhow::Ok(ws)
    }
    .await;
    let mut ws = match subscribed {
        Ok(ws) => ws,
        Err(e) => {
            shared.failed.fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
    };
    shared.ready.fetch_add(1, Ordering::Relaxed);
    let mut outcome = SubOutcome {
        channel,
        slow,
        received: 0,
        gaps: 0,
        closed: None,
        latencies_us: Vec::new(),
        in_window: 0,
    };
    if slow {
        // Read nothing while the publisher runs.
        tokio::select! {
            _ = publishing_done.cancelled() => {}
            _ = stop.cancelled() => {}
        }
    }
    let mut last_seq = 0;
    // One waiter for the whole loop: a new `cancelled()` per frame would take the token's
    // lock once per delivery, shared by every subscriber.
    let cancelled = stop.cancelled();
    tokio::pin!(cancelled);
    loop {
        let msg = tokio::select! {
            m = ws.next() => m,
            _ = &mut cancelled => break,
        };
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(f))) => {
                outcome.closed = Some(f.map_or(1005, |f| u16::from(f.code)));
                break;
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => {
                outcome.closed = Some(1006);
                break;
            }
        };
        let now = shared.now_us();
        let s = text.as_str();
        if !s.starts_with(r#"{"op":"message""#) {
            continue;
        }
        let (Some(seq), Some(sent)) = (number_after(s, r#""seq":"#), number_after(s, r#""t":"#))
        else {
            shared.bad_frames.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        if seq != last_seq + 1 {
            outcome.gaps += 1;
        }
        last_seq = last_seq.max(seq);
        outcome.received += 1;
        if slow {
            shared.slow_deliveries.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        shared.deliveries.fetch_add(1, Ordering::Relaxed);
        let (w0, w1) = (
            shared.w0.load(Ordering::Relaxed),
            shared.w1.load(Ordering::Relaxed),
        );
        if (w0..=w1).contains(&sent) {
            let us = now.saturating_sub(sent).clamp(1, u64::from(u32::MAX));
            outcome.latencies_us.push(us as u32);
        }
        if (w0..=w1).contains(&now) {
            outcome.in_window += 1;
        }
    }
    Ok(outcome)
}

/// What the publisher achieved.
struct Published {
    sent: u64,
    /// Acknowledged messages per channel.
    acked: Vec<u64>,
    errors: u64,
}

/// Publishes at `rate` from `start` until `end`, round-robin over `channels`, then waits
/// for the outstanding acks.
async fn publisher(
    url: String,
    args: FanoutArgs,
    shared: Arc<Shared>,
    start: Instant,
    end: Instant,
) -> anyhow::Result<Published> {
    let ws = connect(&url).await?;
    let (mut sink, mut stream) = ws.split();
    let k = args.channels as u64;
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..k).map(|_| AtomicU64::new(0)).collect());
    let answered = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let reader = {
        let (acked, answered, errors) = (
            Arc::clone(&acked),
            Arc::clone(&answered),
            Arc::clone(&errors),
        );
        tokio::spawn(async move {
            while let Some(Ok(m)) = stream.next().await {
                let Message::Text(t) = m else { continue };
                let s = t.as_str();
                // Replies are JSON objects whose keys may come in any order.
                if s.contains(r#""op":"ack""#) {
                    if let Some(id) = number_after(s, r#""id":"#) {
                        acked[((id - 1) % k) as usize].fetch_add(1, Ordering::Relaxed);
                    }
                    answered.fetch_add(1, Ordering::Relaxed);
                } else if s.contains(r#""op":"error""#) {
                    tracing::warn!(frame = s, "publish refused");
                    errors.fetch_add(1, Ordering::Relaxed);
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let pad = "x".repeat(args.payload.saturating_sub(25));
    let mut sent = 0u64;
    loop {
        let slot = start + Duration::from_secs_f64(sent as f64 / args.rate);
        if slot >= end {
            break;
        }
        tokio::time::sleep_until(slot).await;
        let id = sent + 1;
        let channel = sent % k;
        let t = shared.now_us();
        let frame = format!(
            r#"{{"op":"publish","id":{id},"channel":"bench-{channel}","name":"m","data":{{"t":{t},"pad":"{pad}"}}}}"#
        );
        sink.send(Message::text(frame))
            .await
            .context("publisher send")?;
        sent += 1;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while answered.load(Ordering::Relaxed) < sent && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = sink.close().await;
    reader.abort();
    let answered = answered.load(Ordering::Relaxed);
    Ok(Published {
        sent,
        acked: acked.iter().map(|a| a.load(Ordering::Relaxed)).collect(),
        errors: errors.load(Ordering::Relaxed) + sent.saturating_sub(answered),
    })
}

/// The servers of a run: in-process postgame servers, a child process, an in-process bare
/// server.
#[derive(Default)]
pub(super) struct Servers {
    postgame: Vec<crate::Server>,
    child: Option<tokio::process::Child>,
    bare: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
}

impl Servers {
    pub(super) async fn shutdown(self) {
        if let Some(mut child) = self.child {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
        for s in self.postgame {
            s.shutdown().await;
        }
        if let Some((stop, task)) = self.bare {
            stop.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}

/// Starts this binary with `args` as a server listening on a free port (`{addr}` in `args`
/// is replaced by it) and waits until it accepts connections.
pub(super) async fn spawn_server(
    args: &[String],
    db_url: &str,
    exe: Option<&std::path::Path>,
) -> anyhow::Result<(tokio::process::Child, SocketAddr)> {
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?
    };
    let args: Vec<String> = args
        .iter()
        .map(|a| a.replace("{addr}", &addr.to_string()))
        .collect();
    let exe = match exe {
        Some(e) => e.to_owned(),
        None => std::env::current_exe().context("the path of this binary")?,
    };
    let mut child = tokio::process::Command::new(exe)
        .args(&args)
        .env("DATABASE_URL", db_url)
        .env("POSTGAME_SECRET", SECRET)
        // Every subscriber comes from this host: no per-address limit.
        .env("POSTGAME_MAX_CONNECTIONS_PER_IP", "0")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting `postgame {}`", args.join(" ")))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if let Some(status) = child.try_wait()? {
            bail!("`postgame {}` exited: {status}", args.join(" "));
        }
        if Instant::now() > deadline {
            bail!("`postgame {}` did not listen within 30 s", args.join(" "));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((child, addr))
}

/// Where the clients go, and whose memory is measured.
pub(super) struct Setup {
    pub(super) servers: Servers,
    /// Subscribers' and publisher's WebSocket URLs, without the token.
    pub(super) sub_url: String,
    pub(super) pub_url: String,
    pub(super) rss_pid: Option<u32>,
    pub(super) rss_of: &'static str,
    pub(super) path: &'static str,
}

pub(super) async fn start_postgame(
    db_url: &str,
    args: &FanoutArgs,
    games: &Registry,
) -> anyhow::Result<Setup> {
    let mut config = ServeConfig::defaults(db_url).without_client_limits();
    config.secret = SECRET.into();
    config.roles = vec![Role::Gateway];
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let first = crate::start(config.clone(), games.clone(), Some(listener)).await?;
    let first_addr = first.addr.context("the gateway runs")?;
    let mut servers = Servers {
        postgame: vec![first],
        ..Servers::default()
    };
    let (sub_addr, rss_pid, rss_of, path) = if args.one_gateway {
        (
            first_addr,
            None,
            "this process (gateway and clients)",
            "publish -> log -> in-process wake-up -> hub -> sockets",
        )
    } else if args.process {
        let serve = ["serve", "--role", "gateway", "--listen", "{addr}"];
        let serve: Vec<String> = serve.iter().map(|a| (*a).to_owned()).collect();
        let (child, addr) = spawn_server(&serve, db_url, args.server_exe.as_deref()).await?;
        let pid = child.id();
        servers.child = Some(child);
        (
            addr,
            pid,
            "the subscribers' gateway process",
            "publish -> log -> NOTIFY/LISTEN -> other gateway process -> hub -> sockets",
        )
    } else {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let second = crate::start(config, games.clone(), Some(listener)).await?;
        let addr = second.addr.context("the gateway runs")?;
        servers.postgame.push(second);
        (
            addr,
            None,
            "this process (both gateways and clients)",
            "publish -> log -> NOTIFY/LISTEN -> other gateway -> hub -> sockets",
        )
    };
    Ok(Setup {
        servers,
        sub_url: format!("ws://{sub_addr}/v1/ws"),
        pub_url: format!("ws://{first_addr}/v1/ws"),
        rss_pid,
        rss_of,
        path,
    })
}

/// The bare server's state: one broadcast channel per bench channel.
struct Bare {
    channels: HashMap<String, (Mutex<u64>, broadcast::Sender<Utf8Bytes>)>,
    read_buffer: usize,
}

enum BareCmd {
    Reply(Utf8Bytes),
    Subscribe(broadcast::Receiver<Utf8Bytes>),
}

async fn bare_ws(State(bare): State<Arc<Bare>>, ws: WebSocketUpgrade) -> Response {
    ws.read_buffer_size(bare.read_buffer)
        .write_buffer_size(4096)
        .on_upgrade(move |socket| bare_session(bare, socket))
}

async fn recv_feed(
    feed: &mut Option<broadcast::Receiver<Utf8Bytes>>,
) -> Result<Utf8Bytes, broadcast::error::RecvError> {
    match feed {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// One bare connection: a reader handling `subscribe` and `publish`, a writer sending
/// everything queued in one write per wake-up (as the gateway's writer does).
async fn bare_session(bare: Arc<Bare>, socket: WebSocket) {
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::channel::<BareCmd>(64);
    let writer = tokio::spawn(async move {
        let mut feed: Option<broadcast::Receiver<Utf8Bytes>> = None;
        let mut lagged = false;
        loop {
            let first = tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(BareCmd::Reply(f)) => f,
                    Some(BareCmd::Subscribe(r)) => { feed = Some(r); continue; }
                    None => break,
                },
                m = recv_feed(&mut feed) => match m {
                    Ok(f) => f,
                    Err(broadcast::error::RecvError::Lagged(_)) => { lagged = true; break; }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
            };
            if sink.feed(AxMessage::Text(first)).await.is_err() {
                return;
            }
            let mut more = Vec::new();
            if let Some(r) = feed.as_mut() {
                loop {
                    match r.try_recv() {
                        Ok(f) => more.push(f),
                        Err(broadcast::error::TryRecvError::Lagged(_)) => {
                            lagged = true;
                            break;
                        }
                        Err(_) => break,
                    }
                }
            }
            while let Ok(cmd) = rx.try_recv() {
                match cmd {
                    BareCmd::Reply(f) => more.push(f),
                    BareCmd::Subscribe(r) => feed = Some(r),
                }
            }
            for f in more {
                if sink.feed(AxMessage::Text(f)).await.is_err() {
                    return;
                }
            }
            if lagged || sink.flush().await.is_err() {
                break;
            }
        }
        if lagged {
            // Too slow, as the gateway's 4008.
            let _ = sink
                .send(AxMessage::Close(Some(CloseFrame {
                    code: 4008,
                    reason: Utf8Bytes::from_static("too slow"),
                })))
                .await;
        }
    });
    let _ = tx
        .send(BareCmd::Reply(Utf8Bytes::from_static(
            r#"{"op":"connected","client_id":"bench"}"#,
        )))
        .await;
    while let Some(Ok(msg)) = stream.next().await {
        let AxMessage::Text(t) = msg else { continue };
        let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else {
            continue;
        };
        let channel = v["channel"].as_str().unwrap_or_default();
        let Some((seq, chan_tx)) = bare.channels.get(channel) else {
            continue;
        };
        match v["op"].as_str() {
            Some("subscribe") => {
                let reply = json!({"op": "subscribed", "id": v["id"], "channel": channel});
                let _ = tx.send(BareCmd::Reply(reply.to_string().into())).await;
                let _ = tx.send(BareCmd::Subscribe(chan_tx.subscribe())).await;
            }
            Some("publish") => {
                let ts = chrono::Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true);
                let n = {
                    let mut seq = seq.lock().unwrap_or_else(|e| e.into_inner());
                    *seq += 1;
                    let frame = format!(
                        r#"{{"op":"message","channel":"{channel}","seq":{},"name":"m","data":{},"ts":"{ts}"}}"#,
                        *seq, v["data"]
                    );
                    // No receiver yet is not an error for a broadcast.
                    let _ = chan_tx.send(frame.into());
                    *seq
                };
                let ack = json!({"op": "ack", "id": v["id"], "channel": channel, "msg_id": n});
                let _ = tx.send(BareCmd::Reply(ack.to_string().into())).await;
            }
            _ => {}
        }
    }
    drop(tx);
    let _ = writer.await;
}

/// The bare server's routes.
fn bare_router(args: &FanoutArgs) -> axum::Router {
    let channels = (0..args.channels.max(1))
        .map(|k| {
            let (tx, _) = broadcast::channel(BARE_QUEUE);
            (format!("bench-{k}"), (Mutex::new(0), tx))
        })
        .collect();
    let bare = Arc::new(Bare {
        channels,
        read_buffer: args.baseline_read_buffer,
    });
    axum::Router::new()
        .route("/v1/ws", axum::routing::get(bare_ws))
        .with_state(bare)
}

/// Serves the bare server on `listener` until `stop`.
async fn bare_serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    stop: CancellationToken,
) {
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let _ = axum::serve(listener, router)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await;
}

async fn start_baseline(db_url: &str, args: &FanoutArgs) -> anyhow::Result<Setup> {
    let path = "bare axum + tokio::sync::broadcast, no database";
    if args.process {
        let serve = [
            "bench".to_owned(),
            "--in-place".to_owned(),
            "fanout".to_owned(),
            "--serve-baseline".to_owned(),
            "{addr}".to_owned(),
            "--channels".to_owned(),
            args.channels.to_string(),
            "--baseline-read-buffer".to_owned(),
            args.baseline_read_buffer.to_string(),
        ];
        let (child, addr) = spawn_server(&serve, db_url, args.server_exe.as_deref()).await?;
        let pid = child.id();
        return Ok(Setup {
            servers: Servers {
                child: Some(child),
                ..Servers::default()
            },
            sub_url: format!("ws://{addr}/v1/ws"),
            pub_url: format!("ws://{addr}/v1/ws"),
            rss_pid: pid,
            rss_of: "the bare server process",
            path,
        });
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let task = tokio::spawn(bare_serve(listener, bare_router(args), stop.clone()));
    Ok(Setup {
        servers: Servers {
            bare: Some((stop, task)),
            ..Servers::default()
        },
        sub_url: format!("ws://{addr}/v1/ws"),
        pub_url: format!("ws://{addr}/v1/ws"),
        rss_pid: None,
        rss_of: "this process (bare server and clients)",
        path,
    })
}

pub(super) fn mib(bytes: Option<u64>) -> Value {
    bytes.map_or(Value::Null, |b| {
        json!((b as f64 / 1048576.0 * 10.0).round() / 10.0)
    })
}

/// Runs the scenario against the database at `db_url` (unused with `--baseline`), its
/// gateways serving `games`.
pub async fn run(
    db_url: &str,
    args: &FanoutArgs,
    show_progress: bool,
    games: &Registry,
) -> anyhow::Result<Report> {
    if let Some(addr) = args.serve_baseline {
        // The server half of `--baseline --process`: serve until interrupted or killed.
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let stop = CancellationToken::new();
        let server = tokio::spawn(bare_serve(listener, bare_router(args), stop.clone()));
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
        let _ = server.await;
        bail!("the baseline server was stopped");
    }
    if let Some(n) = args.idle {
        return super::idle::run(db_url, args, n, show_progress, games).await;
    }
    if args.subscribers == 0 || args.channels == 0 || args.channels > args.subscribers {
        bail!("--subscribers must be at least 1 and at least --channels (at least 1)");
    }
    if !(args.rate > 0.0 && args.duration > 0.0) {
        bail!("--rate and --duration must be positive");
    }
    let setup = if args.baseline {
        start_baseline(db_url, args).await?
    } else {
        start_postgame(db_url, args, games).await?
    };
    let result = measure(&setup, args, show_progress).await;
    setup.servers.shutdown().await;
    result
}

async fn measure(setup: &Setup, args: &FanoutArgs, show_progress: bool) -> anyhow::Result<Report> {
    let shared = Arc::new(Shared {
        base: Instant::now(),
        w0: AtomicU64::new(u64::MAX),
        w1: AtomicU64::new(u64::MAX),
        deliveries: Arc::new(AtomicU64::new(0)),
        slow_deliveries: AtomicU64::new(0),
        ready: Arc::new(AtomicU64::new(0)),
        failed: AtomicU64::new(0),
        bad_frames: AtomicU64::new(0),
        gate: Semaphore::new(CONNECT_CONCURRENCY),
    });
    let auth = Auth::new(SECRET);
    let sub_caps = std::collections::BTreeMap::from([("bench-*".to_owned(), vec![Cap::Subscribe])]);
    let pub_caps = std::collections::BTreeMap::from([("bench-*".to_owned(), vec![Cap::Publish])]);
    let ttl = chrono::Duration::hours(6);
    let rss_before = rss_bytes(setup.rss_pid);

    // Connect and subscribe everyone: regular subscribers first, then the slow ones.
    let total = args.subscribers + args.slow;
    let stop = CancellationToken::new();
    let publishing_done = CancellationToken::new();
    let bar_stop = CancellationToken::new();
    let bar = show_progress.then(|| {
        progress_count(
            "subscribed",
            Arc::clone(&shared.ready),
            total as u64,
            bar_stop.clone(),
        )
    });
    let mut subs = Vec::with_capacity(total);
    for i in 0..total {
        let (token, _) = auth.issue(&format!("bench-sub-{i}"), None, Some(sub_caps.clone()), ttl);
        subs.push(tokio::spawn(subscriber(
            format!("{}?token={token}", setup.sub_url),
            i % args.channels,
            i >= args.subscribers,
            Arc::clone(&shared),
            publishing_done.clone(),
            stop.clone(),
        )));
    }
    while shared.ready.load(Ordering::Relaxed) + shared.failed.load(Ordering::Relaxed)
        < total as u64
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bar_stop.cancel();
    if let Some(bar) = bar {
        let _ = bar.await;
    }
    let connect_failures = shared.failed.load(Ordering::Relaxed);
    if connect_failures == total as u64 {
        stop.cancel();
        for s in subs {
            if let Ok(Err(e)) = s.await {
                return Err(e.context("no subscriber could connect"));
            }
        }
        bail!("no subscriber could connect");
    }
    // Let the allocator and the server settle before reading the memory.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_connected = rss_bytes(setup.rss_pid);

    // Publish.
    let (pub_token, _) = auth.issue("bench-publisher", None, Some(pub_caps), ttl);
    let duration = Duration::from_secs_f64(args.duration);
    let warmup = Duration::from_secs_f64((args.duration * 0.1).clamp(0.1, 1.0));
    let start = Instant::now() + Duration::from_millis(100);
    let end = start + duration;
    let us = |t: Instant| t.duration_since(shared.base).as_micros() as u64;
    shared.w0.store(us(start + warmup), Ordering::Relaxed);
    shared.w1.store(us(end), Ordering::Relaxed);
    let bar = show_progress.then(|| {
        progress(
            "deliveries",
            Arc::clone(&shared.deliveries),
            duration,
            stop.child_token(),
        )
    });
    let published = publisher(
        format!("{}?token={pub_token}", setup.pub_url),
        args.clone(),
        Arc::clone(&shared),
        start,
        end,
    )
    .await;
    publishing_done.cancel();
    let published = match published {
        Ok(p) => p,
        Err(e) => {
            stop.cancel();
            return Err(e);
        }
    };

    // Wait until every regular subscriber has everything, or deliveries stall.
    let per_channel: Vec<u64> = (0..args.channels)
        .map(|k| {
            (0..args.subscribers)
                .filter(|i| i % args.channels == k)
                .count() as u64
        })
        .collect();
    let expected: u64 = published
        .acked
        .iter()
        .zip(&per_channel)
        .map(|(a, n)| a * n)
        .sum();
    let mut last = (0, Instant::now());
    loop {
        let n = shared.deliveries.load(Ordering::Relaxed)
            + shared.slow_deliveries.load(Ordering::Relaxed);
        if shared.deliveries.load(Ordering::Relaxed) >= expected && args.slow == 0 {
            break;
        }
        if n != last.0 {
            last = (n, Instant::now());
        } else if last.1.elapsed() > SETTLE {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rss_end = rss_bytes(setup.rss_pid);
    stop.cancel();
    if let Some(bar) = bar {
        let _ = bar.await;
    }

    let mut lost = 0;
    let mut gaps = 0;
    let mut closed = 0;
    let mut slow_received = 0;
    let mut slow_closed = HashMap::<u16, u64>::new();
    let mut slow_complete = 0;
    let mut merged = histogram();
    let mut in_window = 0;
    for s in subs {
        let Ok(Ok(o)) = s.await else { continue };
        let want = published.acked[o.channel];
        if o.slow {
            slow_received += o.received;
            if let Some(code) = o.closed {
                *slow_closed.entry(code).or_default() += 1;
            }
            if o.received >= want {
                slow_complete += 1;
            }
            continue;
        }
        for us in &o.latencies_us {
            let _ = merged.record(u64::from(*us));
        }
        in_window += o.in_window;
        lost += want.saturating_sub(o.received);
        gaps += o.gaps;
        if o.closed.is_some() {
            closed += 1;
        }
    }
    let window = (duration - warmup).as_secs_f64();
    let delivered = shared.deliveries.load(Ordering::Relaxed);
    let per_conn = |after: Option<u64>| match (rss_before, after) {
        (Some(b), Some(a)) if total > 0 => {
            json!(((a.saturating_sub(b)) as f64 / total as f64 / 1024.0 * 10.0).round() / 10.0)
        }
        _ => Value::Null,
    };
    let slow_closed: serde_json::Map<String, Value> = slow_closed
        .into_iter()
        .map(|(code, n)| (code.to_string(), json!(n)))
        .collect();
    Ok(Report {
        scenario: "fanout",
        throughput_per_s: in_window as f64 / window,
        unit: "deliveries",
        count: delivered,
        errors: published.errors + connect_failures + shared.bad_frames.load(Ordering::Relaxed),
        elapsed_s: args.duration,
        latency_ms: Latency::of(&merged),
        latency_of: "publisher send to subscriber receive",
        params: json!({
            "subscribers": args.subscribers,
            "channels": args.channels,
            "rate": args.rate,
            "duration_s": args.duration,
            "payload": args.payload,
            "baseline": args.baseline,
            "path": setup.path,
            "published": published.sent,
            "acked": published.acked.iter().sum::<u64>(),
            "expected_deliveries": expected,
            "lost": lost,
            "gaps": gaps,
            "closed": closed,
            "slow": args.slow,
            "slow_received": slow_received,
            "slow_complete": slow_complete,
            "slow_closed": slow_closed,
            "rss_of": setup.rss_of,
            "rss_before_mib": mib(rss_before),
            "rss_connected_mib": mib(rss_connected),
            "rss_end_mib": mib(rss_end),
            "rss_per_connection_kib": per_conn(rss_connected),
            "baseline_read_buffer": args.baseline.then_some(args.baseline_read_buffer),
        }),
    })
}
