//! `postgame bench churn`: the gateway's memory under connect/disconnect churn, for as long
//! as you like (the 30-minute soak of docs/RELIABILITY.md).
//!
//! The gateway runs as its own process (`postgame serve --role gateway`), so its RSS and
//! open files are its own; a worker runs in this process so that presence reaches the
//! matches. `--clients` tasks each repeat a short session until `--duration` is over:
//! connect with a token of one of `--identities` client ids, subscribe to a Tic Tac Toe
//! match channel (spectating: durable presence, `$connected`) and to a `bench-<k>` channel,
//! publish one message there and wait for its ack and its delivery, stay up to `--hold-ms`,
//! then leave in one of three ways, in turn: a close handshake, the TCP connection dropped
//! without one, or a frame that is not JSON (the server closes with 1007).
//!
//! Measured: sessions per second, the session time (connect to own message delivered), the
//! gateway's RSS and open file descriptors sampled every `--sample-every` seconds, the
//! growth of RSS after the warm-up (the first tenth of the run, at least one sample) as an
//! end-minus-warm figure and a least-squares slope in MiB per hour, and, once every client
//! is gone: the gateway's `postgame_connections` gauge and the presence rows left (both
//! must come back to 0).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::SinkExt;
use rand::Rng;
use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::fanout::{connect, mib, next_text, number_after, spawn_server, SECRET};
use super::{histogram, progress, rss_bytes, Latency, Report, ServerThread};
use crate::config::{ChurnArgs, Role, ServeConfig};
use crate::game::tictactoe::TicTacToe;
use crate::game::Registry;
use crate::gateway::auth::{Auth, Cap};

/// How long the gateway may take to notice the last disconnections.
const SETTLE: Duration = Duration::from_secs(30);

/// One RSS and file-descriptor reading of the gateway.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at_s: f64,
    rss: u64,
    fds: Option<u64>,
}

/// Open file descriptors of process `pid`.
fn fd_count(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// Least-squares slope of `(x, y)` in y units per x unit; `None` under two points.
fn slope(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

/// What the client tasks count.
#[derive(Default)]
struct Counts {
    sessions: Arc<AtomicU64>,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Counts {
    fn error(&self, e: &anyhow::Error) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        first.get_or_insert_with(|| format!("{e:#}"));
    }
}

/// One session: connect, subscribe to `match_channel` and `bench_channel`, publish and see
/// the message come back, hold, leave the way `leave` says. Returns its time in µs, up to
/// the delivery.
async fn session(
    url: &str,
    match_channel: &str,
    bench_channel: &str,
    hold: Duration,
    leave: u64,
) -> anyhow::Result<u64> {
    let start = Instant::now();
    let mut ws = connect(url).await?;
    let hello = next_text(&mut ws).await?;
    if !hello.contains("\"connected\"") {
        bail!("expected `connected`, got {hello}");
    }
    for (id, channel) in [(1, match_channel), (2, bench_channel)] {
        let frame = json!({"op": "subscribe", "id": id, "channel": channel});
        ws.send(Message::text(frame.to_string())).await?;
    }
    let marker = uuid::Uuid::new_v4().simple().to_string();
    let publish = json!({"op": "publish", "id": 3, "channel": bench_channel, "name": "m",
        "data": {"marker": marker}});
    ws.send(Message::text(publish.to_string())).await?;
    let (mut subscribed, mut acked, mut delivered) = (0, false, false);
    while subscribed < 2 || !acked || !delivered {
        let text = next_text(&mut ws).await?;
        if text.contains("\"op\":\"error\"") {
            bail!("refused: {text}");
        }
        if text.contains("\"op\":\"subscribed\"") {
            subscribed += 1;
        } else if text.contains("\"op\":\"ack\"") && number_after(&text, "\"id\":") == Some(3) {
            acked = true;
        } else if text.contains("\"op\":\"message\"") && text.contains(&marker) {
            delivered = true;
        }
    }
    let took = start.elapsed().as_micros() as u64;
    tokio::time::sleep(hold).await;
    match leave % 3 {
        0 => {
            ws.close(None).await?;
            // Read until the server's close frame (or the end of the stream).
            let drain = async { while next_text(&mut ws).await.is_ok() {} };
            let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
        }
        1 => drop(ws),
        _ => {
            ws.send(Message::text("not json")).await?;
            let drain = async { while next_text(&mut ws).await.is_ok() {} };
            let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
        }
    }
    Ok(took)
}

/// The gateway's `postgame_connections` gauge, from its `/metrics`.
async fn connections_gauge(addr: std::net::SocketAddr) -> Option<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.ok()?;
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_string(&mut body))
        .await
        .ok()?
        .ok()?;
    body.lines()
        .find(|l| l.starts_with("postgame_connections "))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
}

/// Runs the scenario against the database at `db_url`.
pub async fn run(db_url: &str, args: &ChurnArgs, show_progress: bool) -> anyhow::Result<Report> {
    if args.clients == 0 || args.identities == 0 || args.matches == 0 || args.channels == 0 {
        bail!("--clients, --identities, --matches and --channels must be at least 1");
    }
    if !(args.duration > 0.0 && args.sample_every > 0.0) {
        bail!("--duration and --sample-every must be positive");
    }
    let mut config = ServeConfig::defaults(db_url).without_client_limits();
    config.roles = vec![Role::Worker];
    let worker = ServerThread::start(config, Registry::builtin()).await?;
    let result = async {
        let mut matches = Vec::with_capacity(args.matches);
        for _ in 0..args.matches {
            let (info, _) = crate::matches::match_create(&worker.pool, &TicTacToe, &json!({}))
                .await
                .map_err(|e| anyhow::anyhow!("creating a match: {e}"))?;
            matches.push(format!("match:{}", info.id));
        }
        let serve = ["serve", "--role", "gateway", "--listen", "{addr}"];
        let serve: Vec<String> = serve.iter().map(|a| (*a).to_owned()).collect();
        let (mut child, addr) = spawn_server(&serve, db_url, None).await?;
        let measured = measure(
            &worker.pool,
            addr,
            child.id(),
            &matches,
            args,
            show_progress,
        )
        .await;
        let _ = child.start_kill();
        let _ = child.wait().await;
        measured
    }
    .await;
    worker.stop().await;
    result
}

async fn measure(
    pool: &sqlx::PgPool,
    addr: std::net::SocketAddr,
    pid: Option<u32>,
    matches: &[String],
    args: &ChurnArgs,
    show_progress: bool,
) -> anyhow::Result<Report> {
    let pid = pid.context("the gateway process has no pid")?;
    let auth = Auth::new(SECRET);
    let caps = std::collections::BTreeMap::from([
        ("match:*".to_owned(), vec![Cap::Subscribe]),
        ("bench-*".to_owned(), vec![Cap::Subscribe, Cap::Publish]),
    ]);
    let ttl = chrono::Duration::hours(12);
    let urls: Arc<Vec<String>> = Arc::new(
        (0..args.identities)
            .map(|i| {
                let (token, _) = auth.issue(&format!("churn-{i}"), None, Some(caps.clone()), ttl);
                format!("ws://{addr}/v1/ws?token={token}")
            })
            .collect(),
    );
    let matches = Arc::new(matches.to_vec());
    let counts = Arc::new(Counts::default());
    let latencies = Arc::new(Mutex::new(histogram()));
    let duration = Duration::from_secs_f64(args.duration);
    let start = Instant::now();
    let end = start + duration;
    let stop = CancellationToken::new();
    let bar = show_progress.then(|| {
        progress(
            "sessions",
            Arc::clone(&counts.sessions),
            duration,
            stop.child_token(),
        )
    });

    let mut tasks = Vec::with_capacity(args.clients);
    for c in 0..args.clients {
        let (urls, matches, counts, latencies) = (
            Arc::clone(&urls),
            Arc::clone(&matches),
            Arc::clone(&counts),
            Arc::clone(&latencies),
        );
        let (channels, hold_ms) = (args.channels, args.hold_ms);
        tasks.push(tokio::spawn(async move {
            let mut n = c as u64;
            while Instant::now() < end {
                let (url, m, k, hold) = {
                    let mut rng = rand::thread_rng();
                    (
                        rng.gen_range(0..urls.len()),
                        rng.gen_range(0..matches.len()),
                        rng.gen_range(0..channels),
                        Duration::from_millis(rng.gen_range(0..=hold_ms)),
                    )
                };
                let bench = format!("bench-{k}");
                match session(&urls[url], &matches[m], &bench, hold, n).await {
                    Ok(us) => {
                        counts.sessions.fetch_add(1, Ordering::Relaxed);
                        let mut h = latencies.lock().unwrap_or_else(|p| p.into_inner());
                        let _ = h.record(us.max(1));
                    }
                    Err(e) => {
                        counts.error(&e);
                        // Not a tight loop against a server that refuses.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                n += 1;
            }
        }));
    }

    let sample = || -> Option<Sample> {
        Some(Sample {
            at_s: start.elapsed().as_secs_f64(),
            rss: rss_bytes(Some(pid))?,
            fds: fd_count(pid),
        })
    };
    let mut samples: Vec<Sample> = sample().into_iter().collect();
    let every = Duration::from_secs_f64(args.sample_every);
    while Instant::now() + every <= end {
        tokio::time::sleep(every).await;
        samples.extend(sample());
    }
    for t in tasks {
        t.await.context("a client task")?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    stop.cancel();
    if let Some(bar) = bar {
        let _ = bar.await;
    }

    // Every client is gone: the gateway must say so, and presence must be empty.
    let settle_end = Instant::now() + SETTLE;
    let mut gauge = None;
    let presence = loop {
        gauge = connections_gauge(addr).await.or(gauge);
        let presence: i64 = sqlx::query_scalar("SELECT count(*) FROM postgame.presence")
            .fetch_one(pool)
            .await?;
        if (gauge == Some(0.0) && presence == 0) || Instant::now() > settle_end {
            break presence;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let after_idle = sample();

    let warm_at = (args.duration * 0.1).max(args.sample_every);
    let warm = samples.iter().find(|s| s.at_s >= warm_at).copied();
    let last = samples.last().copied();
    let after_warm: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.at_s >= warm_at)
        .map(|s| (s.at_s / 3600.0, s.rss as f64 / 1048576.0))
        .collect();
    let sessions = counts.sessions.load(Ordering::Relaxed);
    let errors = counts.errors.load(Ordering::Relaxed);
    let latency = Latency::of(&latencies.lock().unwrap_or_else(|p| p.into_inner()));
    let first_error = counts
        .first_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let series: Vec<Value> = samples
        .iter()
        .map(|s| json!([(s.at_s * 10.0).round() / 10.0, mib(Some(s.rss)), s.fds]))
        .collect();
    Ok(Report {
        scenario: "churn",
        throughput_per_s: sessions as f64 / elapsed,
        unit: "sessions",
        count: sessions,
        errors,
        elapsed_s: elapsed,
        latency_ms: latency,
        latency_of: "connect to own message delivered (two subscribes, one publish)",
        params: json!({
            "clients": args.clients,
            "identities": args.identities,
            "matches": args.matches,
            "channels": args.channels,
            "hold_ms": args.hold_ms,
            "duration_s": args.duration,
            "rss_of": "the gateway process",
            "rss_start_mib": mib(samples.first().map(|s| s.rss)),
            "rss_warm_mib": mib(warm.map(|s| s.rss)),
            "rss_end_mib": mib(last.map(|s| s.rss)),
            "rss_max_mib": mib(samples.iter().map(|s| s.rss).max()),
            "rss_idle_after_mib": mib(after_idle.map(|s| s.rss)),
            "rss_growth_after_warm_mib": match (warm, last) {
                (Some(w), Some(l)) => json!(((l.rss as f64 - w.rss as f64) / 1048576.0 * 10.0).round() / 10.0),
                _ => Value::Null,
            },
            "rss_slope_mib_per_hour": slope(&after_warm).map(|s| (s * 10.0).round() / 10.0),
            "fds_warm": warm.and_then(|s| s.fds),
            "fds_end": last.and_then(|s| s.fds),
            "fds_idle_after": after_idle.and_then(|s| s.fds),
            "connections_gauge_after": gauge,
            "presence_rows_after": presence,
            "first_error": first_error,
            "samples": series,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::slope;

    #[test]
    fn the_slope_of_a_line_is_its_gradient() {
        let line: Vec<(f64, f64)> = (0..10)
            .map(|x| (f64::from(x), 3.0 * f64::from(x) + 1.0))
            .collect();
        assert!((slope(&line).unwrap() - 3.0).abs() < 1e-9);
        assert_eq!(slope(&[(1.0, 2.0)]), None);
        assert_eq!(slope(&[(1.0, 2.0), (1.0, 3.0)]), None);
    }
}
