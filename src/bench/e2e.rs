//! `postgame bench e2e`: C simulated players over real WebSockets in C/2 Tic Tac Toe
//! matches on an in-process server with every role. The player to move publishes its move
//! as soon as the previous `state` arrives (or at its slot of a fixed offered load with
//! `--rate`); finished games are rematched. Measured: moves per second, and the latency
//! from sending the `publish` to the opponent receiving the `state` that shows the move:
//! the whole loop (gateway commit, worker transaction, NOTIFY, log read, fan-out).
//!
//! `--processes` runs the roles as separate processes instead (the N × N × N deployment of
//! [`crate::chaos::fleet`]: 2 gateways, 3 workers, 2 tickers): each match's players use
//! different gateways, so every move crosses from one gateway through Postgres to the
//! other; the fleet's recording clients (Tic Tac Toe with chat and turn timers, Pong,
//! hopping between the gateways) play beside them, and at the end every guarantee is
//! checked: each violation is an error of the report.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::{histogram, progress, Latency, Report};
use crate::config::{E2eArgs, ServeConfig};
use crate::game::Registry;
use crate::gateway::auth::Auth;

const SECRET: &str = "postgame-bench-secret";

type Sink = futures_util::stream::SplitSink<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    Message,
>;

/// One player's socket: frames go out through `sink`; a reader task forwards its
/// frames, tagged with the side, to the pair's channel.
async fn connect(
    addr: std::net::SocketAddr,
    token: &str,
    side: usize,
    to_pair: mpsc::Sender<(usize, Value, Instant)>,
) -> anyhow::Result<Sink> {
    let (ws, _) = tokio_tungstenite::connect_async_with_config(
        format!("ws://{addr}/v1/ws?token={token}"),
        None,
        true,
    )
    .await
    .context("WebSocket connect")?;
    let (sink, mut stream) = ws.split();
    tokio::spawn(async move {
        while let Some(Ok(m)) = stream.next().await {
            if let Message::Text(t) = m {
                let at = Instant::now();
                if let Ok(v) = serde_json::from_str::<Value>(t.as_str()) {
                    if to_pair.send((side, v, at)).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    Ok(sink)
}

async fn send(sink: &mut Sink, v: Value) -> anyhow::Result<()> {
    sink.send(Message::text(v.to_string()))
        .await
        .context("WebSocket send")
}

struct Shared {
    hist: Mutex<hdrhistogram::Histogram<u64>>,
    /// Publish to `ack` at the mover: the gateway's share of the loop.
    ack_hist: Mutex<hdrhistogram::Histogram<u64>>,
    moves: Arc<AtomicU64>,
    errors: AtomicU64,
}

/// Plays one match until `stop`; side `i` connects to `addrs[i]`.
async fn play_pair(
    addrs: [std::net::SocketAddr; 2],
    match_id: String,
    names: [String; 2],
    pace: Option<Duration>,
    shared: Arc<Shared>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let auth = Auth::new(SECRET);
    let (tx, mut rx) = mpsc::channel(1024);
    let mut sinks = Vec::new();
    for (side, name) in names.iter().enumerate() {
        let token = auth.issue(name, None, None, chrono::Duration::hours(2)).0;
        sinks.push(connect(addrs[side], &token, side, tx.clone()).await?);
    }
    drop(tx);
    let channel = format!("match:{match_id}");
    let control = format!("control:{match_id}");
    for sink in sinks.iter_mut() {
        send(sink, json!({"op": "subscribe", "channel": channel})).await?;
        send(
            sink,
            json!({"op": "publish", "channel": control, "name": "join", "data": {}}),
        )
        .await?;
    }
    // The newest state seen by side 0 (both sides see the same sequence).
    let mut state = Value::Null;
    let mut next_slot = Instant::now();
    let mut seq = 0u64;
    loop {
        // Wait until the match is playing (start, or after a rematch).
        while state["status"] != "playing" {
            if state["status"] == "won" || state["status"] == "draw" {
                for sink in sinks.iter_mut() {
                    send(
                        sink,
                        json!({"op": "publish", "channel": control, "name": "rematch", "data": {}}),
                    )
                    .await?;
                }
            }
            let want_game = state["game_no"].as_i64().unwrap_or(0);
            loop {
                let (side, frame, _) = tokio::select! {
                    f = rx.recv() => f.context("connection closed")?,
                    _ = stop.cancelled() => return Ok(()),
                };
                if side == 0 && frame["name"] == "state" {
                    let s = &frame["data"];
                    if s["status"] == "playing"
                        || s["game_no"].as_i64() != Some(want_game)
                        || state.is_null()
                    {
                        state = s.clone();
                        break;
                    }
                }
            }
        }
        if stop.is_cancelled() {
            return Ok(());
        }
        let turn = state["turn"].as_str().unwrap_or("X");
        let mover_id = state["players"][turn].as_str().unwrap_or_default();
        let Some(mover) = names.iter().position(|n| n == mover_id) else {
            bail!("unexpected players {}", state["players"]);
        };
        let Some(cell) = state["board"]
            .as_array()
            .and_then(|b| b.iter().position(Value::is_null))
        else {
            bail!("a playing board with no free cell");
        };
        if let Some(p) = pace {
            next_slot += p;
            tokio::select! {
                _ = tokio::time::sleep_until(next_slot) => {}
                _ = stop.cancelled() => return Ok(()),
            }
        }
        let moves_before = state["move_count"].as_i64().unwrap_or(0);
        let game_no = state["game_no"].clone();
        seq += 1;
        let sent = Instant::now();
        send(
            &mut sinks[mover],
            json!({"op": "publish", "id": seq, "channel": control, "name": "move", "data": {"cell": cell}}),
        )
        .await?;
        let opponent = 1 - mover;
        loop {
            let (side, frame, at) = tokio::select! {
                f = rx.recv() => f.context("connection closed")?,
                _ = stop.cancelled() => return Ok(()),
            };
            if frame["op"] == "error" {
                shared.errors.fetch_add(1, Ordering::Relaxed);
            }
            if side == mover && frame["op"] == "ack" && frame["id"] == json!(seq) {
                let us = at.duration_since(sent).as_micros() as u64;
                if let Ok(mut h) = shared.ack_hist.lock() {
                    let _ = h.record(us.max(1));
                }
            }
            if side == opponent
                && frame["name"] == "state"
                && frame["data"]["game_no"] == game_no
                && frame["data"]["move_count"].as_i64() == Some(moves_before + 1)
            {
                let us = at.duration_since(sent).as_micros() as u64;
                if let Ok(mut h) = shared.hist.lock() {
                    let _ = h.record(us.max(1));
                }
                shared.moves.fetch_add(1, Ordering::Relaxed);
                state = frame["data"].clone();
                break;
            }
        }
    }
}

/// Runs the scenario against the database at `db_url`, serving `games` (which must hold
/// `tictactoe`: the players play it) in-process, or as separate processes of the stock
/// binary with `--processes`.
pub async fn run(
    db_url: &str,
    args: &E2eArgs,
    show_progress: bool,
    games: &Registry,
) -> anyhow::Result<Report> {
    run_via(db_url, None, args, show_progress, games).await
}

/// [`run`], the in-process server's pool going through the PgBouncer of `pooled` (the
/// benchmark database through it) when given, `db_url` then being the direct connection.
pub async fn run_via(
    db_url: &str,
    pooled: Option<&str>,
    args: &E2eArgs,
    show_progress: bool,
    games: &Registry,
) -> anyhow::Result<Report> {
    if args.processes && pooled.is_some() {
        bail!("--pooler-url does not apply to --processes yet");
    }
    if args.players < 2 || args.players % 2 != 0 {
        bail!("--players must be an even number of at least 2");
    }
    if args.processes {
        return run_processes(db_url, args, show_progress).await;
    }
    let mut config = ServeConfig::defaults(db_url).without_client_limits();
    config.secret = SECRET.into();
    config.workers = args.workers.max(1);
    if let Some(fast) = args.fast_apply {
        config.fast_apply = fast;
    }
    let config_fast = config.fast_apply;
    if let Some(p) = pooled {
        config.db.database_url = p.to_owned();
        config.direct_database_url = Some(db_url.to_owned());
    }
    let server = super::ServerThread::start(config, games.clone()).await?;
    let addr = server.addr.context("the gateway runs")?;
    let played = play(&server.pool, [addr, addr], args, show_progress, games).await;
    server.stop().await;
    let played = played?;
    let mut params = played.params(args);
    params["workers"] = json!(args.workers);
    params["fast_apply"] = json!(config_fast);
    params["through_pgbouncer"] = json!(pooled.is_some());
    Ok(played.report(params))
}

/// The N × N × N run: the fleet, this scenario's players across its gateways, then the
/// fleet's checks.
async fn run_processes(
    db_url: &str,
    args: &E2eArgs,
    show_progress: bool,
) -> anyhow::Result<Report> {
    use crate::chaos::fleet::{self, Fleet, FleetConfig};
    let dir = std::env::temp_dir().join(format!("postgame-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let exe = match &args.exe {
        Some(e) => e.clone(),
        None => std::env::current_exe().context("cannot find this program's path")?,
    };
    let fleet = Fleet::start(FleetConfig {
        exe,
        database_url: db_url.to_owned(),
        log_dir: dir.clone(),
        secret: SECRET.to_owned(),
        lease_seconds: FLEET_LEASE_SECONDS,
        presence_timeout_seconds: 3.0,
        db_connections: FLEET_DB_CONNECTIONS,
        tictactoe: FLEET_TICTACTOE,
        turn_seconds: 2,
        pong: FLEET_PONG,
        seed: 0x5eed,
        hop: Some(FLEET_HOP),
    })
    .await?;
    let gateways = fleet.gateways();
    let played = play(
        &fleet.pool,
        [gateways[0], gateways[1]],
        args,
        show_progress,
        &Registry::builtin(),
    )
    .await;
    let played = match played {
        Ok(p) => p,
        Err(e) => {
            fleet.abort().await;
            return Err(e);
        }
    };
    if show_progress {
        eprintln!("quiescing the fleet and checking every guarantee…");
    }
    let outcome = fleet.finish(&[]).await?;
    if show_progress {
        outcome.print_checks();
    }
    let violations = &outcome.findings.violations;
    if violations.is_empty() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("the processes' logs are kept in {}", dir.display());
    }
    let mut acks_by_gateway = [0u64; fleet::GATEWAYS];
    for p in outcome.records.iter().flat_map(|r| r.publishes.iter()) {
        if let Some(a) = &p.ack {
            acks_by_gateway[a.gateway] += 1;
        }
    }
    let hops: u32 = outcome
        .records
        .iter()
        .filter_map(|r| r.dropped.get(crate::chaos::driver::HOPPED))
        .sum();
    let mut params = played.params(args);
    params["processes"] = json!({
        "gateways": fleet::GATEWAYS,
        "workers": fleet::WORKERS,
        "tickers": fleet::TICKERS,
        "db_connections_each": FLEET_DB_CONNECTIONS,
    });
    params["checked"] = json!({
        "clients": outcome.records.len(),
        "connections": outcome.connections(),
        "moves_between_gateways": hops,
        "acks_by_gateway": acks_by_gateway,
        "counts": outcome.findings.checked,
        "violations": violations,
    });
    let mut report = played.report(params);
    report.errors += violations.len() as u64 + u64::from(outcome.exits);
    Ok(report)
}

/// The fleet's `--lease-seconds` under `--processes` (bounds the turn timers' lateness).
const FLEET_LEASE_SECONDS: f64 = 2.0;
/// `--db-connections` of each fleet process: 7 processes (each also with its LISTEN
/// connection) stay near 40 connections of the server's.
const FLEET_DB_CONNECTIONS: u32 = 4;
/// The fleet's own recording Tic Tac Toe and Pong matches.
const FLEET_TICTACTOE: usize = 4;
const FLEET_PONG: usize = 2;
/// Mean time between a fleet client's moves to the other gateway.
const FLEET_HOP: Duration = Duration::from_secs(3);

/// What the players measured.
struct Played {
    count: u64,
    errors: u64,
    elapsed: f64,
    latency: Latency,
    ack: Latency,
}

impl Played {
    fn params(&self, args: &E2eArgs) -> Value {
        json!({
            "players": args.players,
            "matches": args.players / 2,
            "rate": args.rate,
            "duration_s": args.duration,
            "ack_latency_ms": self.ack,
        })
    }

    fn report(&self, params: Value) -> Report {
        Report {
            scenario: "e2e",
            throughput_per_s: self.count as f64 / self.elapsed,
            unit: "moves",
            count: self.count,
            errors: self.errors,
            elapsed_s: self.elapsed,
            latency_ms: self.latency,
            latency_of: "publish to the opponent receiving the state with the move",
            params,
        }
    }
}

/// Creates the matches, plays them through `addrs` (side 0 through the first, side 1
/// through the second) for `--duration` after a warm-up, and measures.
async fn play(
    pool: &sqlx::PgPool,
    addrs: [std::net::SocketAddr; 2],
    args: &E2eArgs,
    show_progress: bool,
    games: &Registry,
) -> anyhow::Result<Played> {
    let game = games
        .get("tictactoe")
        .context("bench e2e plays tictactoe, which this binary does not serve")?;
    let pairs = args.players / 2;
    let mut ids = Vec::with_capacity(pairs);
    for _ in 0..pairs {
        let (info, _) = crate::matches::match_create(
            pool,
            game.as_ref(),
            &json!({"turn_seconds": 3600, "reconnect_seconds": 3600}),
        )
        .await
        .map_err(|e| anyhow::anyhow!("creating a match: {e}"))?;
        ids.push(info.id.to_string());
    }
    let shared = Arc::new(Shared {
        hist: Mutex::new(histogram()),
        ack_hist: Mutex::new(histogram()),
        moves: Arc::new(AtomicU64::new(0)),
        errors: AtomicU64::new(0),
    });
    let pace = args
        .rate
        .filter(|r| *r > 0.0)
        .map(|r| Duration::from_secs_f64(pairs as f64 / r));
    let stop = CancellationToken::new();
    let total = Duration::from_secs_f64(args.duration.max(0.1));
    let bar =
        show_progress.then(|| progress("moves", Arc::clone(&shared.moves), total, stop.clone()));
    let mut tasks = Vec::new();
    for (i, id) in ids.into_iter().enumerate() {
        let names = [format!("bench-{i}-a"), format!("bench-{i}-b")];
        tasks.push(tokio::spawn(play_pair(
            addrs,
            id,
            names,
            pace,
            Arc::clone(&shared),
            stop.clone(),
        )));
    }
    // Measure only once every pair is connected and playing: reset after a warm-up.
    let warmup = Duration::from_secs_f64((args.duration * 0.1).clamp(0.2, 2.0));
    tokio::time::sleep(warmup).await;
    let start_count = shared.moves.load(Ordering::Relaxed);
    for h in [&shared.hist, &shared.ack_hist] {
        if let Ok(mut h) = h.lock() {
            h.reset();
        }
    }
    let started = Instant::now();
    tokio::time::sleep(total).await;
    let elapsed = started.elapsed().as_secs_f64();
    let count = shared.moves.load(Ordering::Relaxed) - start_count;
    stop.cancel();
    let mut failures = 0;
    for t in tasks {
        if let Ok(Err(e)) = t.await {
            failures += 1;
            tracing::warn!(error = %e, "a bench pair failed");
        }
    }
    if let Some(bar) = bar {
        let _ = bar.await;
    }
    let latency = shared
        .hist
        .lock()
        .map(|h| Latency::of(&h))
        .map_err(|_| anyhow::anyhow!("histogram lock poisoned"))?;
    let ack = shared
        .ack_hist
        .lock()
        .map(|h| Latency::of(&h))
        .map_err(|_| anyhow::anyhow!("histogram lock poisoned"))?;
    Ok(Played {
        count,
        errors: shared.errors.load(Ordering::Relaxed) + failures,
        elapsed,
        latency,
        ack,
    })
}
