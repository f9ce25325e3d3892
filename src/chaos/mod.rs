//! `postgame chaos`: the roles as separate processes (2 gateways, 3 workers, 2 tickers) on
//! a private PostgreSQL cluster made for the run, clients driving Tic Tac Toe (with chat)
//! and Pong through both gateways, and faults at random: any process killed (SIGKILL, then
//! restarted) or frozen (SIGSTOP for longer than the lease, then SIGCONT), Postgres
//! restarted (`-m fast`) or crashed (`-m immediate`). Then the run quiesces and every
//! guarantee is checked ([`check`]); the summary gives the faults per kind, how long the
//! worst-hit publish stream and match took to move again after each, and what was checked.
//!
//! The fault schedule (kind, target, hold time, gap) comes from one seeded generator that
//! nothing else draws from: `--seed` replays it. The clients' timing is not replayed (it
//! depends on the machine), so a seed reproduces the faults, not the interleavings.
//!
//! - [`supervisor`]: the role processes and the signals.
//! - [`driver`]: the recording clients.
//! - [`check`]: the guarantees, read from the records and the database.

pub mod check;
pub mod driver;
pub mod supervisor;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::ChaosArgs;
use crate::embedded::Cluster;
use crate::game::Registry;
use crate::gateway::auth::Auth;
use driver::{Client, Kind, Record, Shared};
use supervisor::{Common, Supervisor};

const SECRET: &str = "postgame-chaos-secret-not-for-production";
const GATEWAYS: usize = 2;
const WORKERS: usize = 3;
const TICKERS: usize = 2;
/// How long quiescing may take (every publish acked, the queue drained) before the run
/// counts as stuck.
const QUIESCE_LIMIT: Duration = Duration::from_secs(90);
/// Seconds after a fault in which the streams' stalls are attributed to it.
const RECOVERY_WINDOW: f64 = 30.0;

/// What a fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    /// SIGKILL a role process, then start it again.
    Kill,
    /// SIGSTOP a role process for longer than the lease, then SIGCONT.
    Freeze,
    /// `pg_ctl stop -m fast`, then start.
    PgRestart,
    /// `pg_ctl stop -m immediate` (no checkpoint: crash recovery at the start), then start.
    PgCrash,
}

impl FaultKind {
    const ALL: [FaultKind; 4] = [Self::Kill, Self::Freeze, Self::PgRestart, Self::PgCrash];

    fn name(self) -> &'static str {
        match self {
            Self::Kill => "kill -9 + restart",
            Self::Freeze => "SIGSTOP/SIGCONT",
            Self::PgRestart => "postgres stop -m fast",
            Self::PgCrash => "postgres stop -m immediate",
        }
    }

    pub fn is_postgres(self) -> bool {
        matches!(self, Self::PgRestart | Self::PgCrash)
    }
}

/// One injected fault; times are seconds since the run's start.
#[derive(Debug, Clone)]
pub struct Fault {
    pub kind: FaultKind,
    /// The process, or `postgres`.
    pub target: String,
    pub start: f64,
    /// When it was undone (restarted, woken, Postgres accepting connections again).
    pub end: f64,
}

/// Runs `postgame chaos`; the exit code is non-zero on any violation.
pub async fn run(args: ChaosArgs) -> anyhow::Result<ExitCode> {
    let seed = args.seed.unwrap_or_else(|| rand::thread_rng().gen());
    if args.duration <= 0.0 || args.fault_interval <= 0.0 {
        bail!("--duration and --fault-interval must be positive");
    }
    if args.tictactoe == 0 {
        bail!("--tictactoe must be at least 1 (the probes chat in the first match)");
    }
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("postgame-chaos-{}", std::process::id())),
    };
    if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
        bail!("{} is not empty: choose another --dir", dir.display());
    }
    std::fs::create_dir_all(dir.join("logs"))?;
    println!(
        "postgame chaos: seed {seed}, {} s of faults, folder {}",
        args.duration,
        dir.display()
    );
    let bindir = crate::embedded::find_installation(args.pg_bindir.as_deref())
        .context("no PostgreSQL installation found (set --pg-bindir)")?;
    let cluster = Cluster::start(&dir.join("pgdata"), &bindir, "postgame").await?;
    let result = run_on(&args, seed, &dir, &cluster).await;
    cluster.stop().await;
    let clean = matches!(result, Ok(true));
    if clean && !args.keep {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        println!(
            "the run's folder is kept: {} (process logs in logs/)",
            dir.display()
        );
    }
    match result {
        Ok(true) => Ok(ExitCode::SUCCESS),
        Ok(false) => Ok(ExitCode::FAILURE),
        Err(e) => Err(e),
    }
}

/// The run itself on a started cluster; Ok(true) when no guarantee was violated.
async fn run_on(
    args: &ChaosArgs,
    seed: u64,
    dir: &std::path::Path,
    cluster: &Cluster,
) -> anyhow::Result<bool> {
    let url = cluster.url().to_owned();
    crate::setup::database_ready(&url).await?;
    let pool = crate::store::pool_connect(&url, 4, "postgame chaos").await?;
    crate::store::migrate(&pool).await?;
    let gateways: Vec<SocketAddr> = (0..GATEWAYS)
        .map(|_| free_addr())
        .collect::<anyhow::Result<_>>()?;
    let common = Common {
        exe: std::env::current_exe().context("cannot find this program's path")?,
        database_url: url.clone(),
        secret: SECRET.to_owned(),
        lease_seconds: args.lease_seconds,
        presence_timeout_seconds: args.presence_timeout_seconds,
        log_dir: dir.join("logs"),
    };
    let mut sup = Supervisor::start(&common, &gateways, WORKERS, TICKERS).await?;
    for addr in &gateways {
        wait_listening(*addr).await?;
    }

    // The matches and their clients.
    let games = Registry::builtin();
    let ttt = games
        .get(crate::game::tictactoe::NAME)
        .context("tictactoe is built in")?;
    let started = Instant::now();
    let started_wall = chrono::Utc::now();
    let shared = Arc::new(Shared {
        started,
        gateways: gateways.clone(),
        pool: pool.clone(),
        unacked: AtomicI64::new(0),
        quiesce: CancellationToken::new(),
    });
    let auth = Auth::new(SECRET);
    let mut clients = Vec::new();
    let mut first_match = String::new();
    for m in 0..args.tictactoe {
        let config = json!({"turn_seconds": args.turn_seconds, "reconnect_seconds": 30});
        let (info, _) = crate::matches::match_create(&pool, ttt.as_ref(), &config)
            .await
            .map_err(|e| anyhow::anyhow!("creating a match: {e}"))?;
        let id = info.id.to_string();
        if m == 0 {
            first_match = id.clone();
        }
        for side in ["a", "b"] {
            clients.push((format!("ttt-{m}-{side}"), Kind::TicTacToe, id.clone()));
        }
    }
    for p in 0..args.pong {
        let id = driver::new_pong_match(&shared)
            .await
            .context("creating a Pong match")?;
        clients.push((format!("pong-{p}"), Kind::Pong, id));
    }
    for g in 0..GATEWAYS {
        clients.push((
            format!("probe-{}", g + 1),
            Kind::Probe(g),
            first_match.clone(),
        ));
    }
    let stop = CancellationToken::new();
    let mut handles = Vec::new();
    for (i, (name, kind, match_id)) in clients.into_iter().enumerate() {
        let token = auth.issue(&name, None, None, chrono::Duration::hours(24)).0;
        let leave = CancellationToken::new();
        let client = Client {
            name,
            token,
            kind,
            match_id,
            seed: seed.wrapping_add(1 + i as u64),
            leave: leave.clone(),
            stop: stop.clone(),
        };
        let task = tokio::spawn(driver::run(client, Arc::clone(&shared)));
        handles.push((leave, task));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Faults.
    let faults = inject(args, seed, &mut sup, &common, cluster, &shared).await?;
    println!(
        "faults done at {:.1} s; quiescing",
        shared.started.elapsed().as_secs_f64()
    );

    // Quiesce: no new actions; every publish acknowledged; the queue drained.
    shared.quiesce.cancel();
    let mut stuck = Vec::new();
    let deadline = Instant::now() + QUIESCE_LIMIT;
    while shared.unacked.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if shared.unacked.load(Ordering::Relaxed) > 0 {
        stuck.push(format!(
            "{} publishes still unacknowledged {} s after the faults",
            shared.unacked.load(Ordering::Relaxed),
            QUIESCE_LIMIT.as_secs()
        ));
    }
    wait_drained(&pool, deadline).await;
    // Let the last broadcasts (and turn timers) reach everyone.
    tokio::time::sleep(Duration::from_secs_f64(
        args.lease_seconds + f64::from(args.turn_seconds) + 2.0,
    ))
    .await;
    wait_drained(&pool, Instant::now() + QUIESCE_LIMIT).await;
    let restarted = sup.restart_exited(&common.exe)?;
    if !restarted.is_empty() {
        println!("exited on their own after the faults: {restarted:?}");
    }

    // Presence: every other client leaves; the others stay connected, their connections
    // held open (answering pings) until the checks are done: the presence rows and the
    // players' connected flags must then show exactly those connections.
    let mut records: Vec<Record> = Vec::new();
    let mut remaining = Vec::new();
    for (i, (leave, task)) in handles.into_iter().enumerate() {
        if i % 2 == 1 {
            leave.cancel();
            records.push(task.await.context("a client task panicked")?.0);
        } else {
            remaining.push(task);
        }
    }
    tokio::time::sleep(Duration::from_secs_f64(args.presence_timeout_seconds + 2.0)).await;
    wait_drained(&pool, Instant::now() + QUIESCE_LIMIT).await;
    stop.cancel();
    let close = CancellationToken::new();
    let mut holds = Vec::new();
    for task in remaining {
        let (rec, ws) = task.await.context("a client task panicked")?;
        if let Some(ws) = ws {
            holds.push((
                rec.name.clone(),
                tokio::spawn(driver::hold(ws, close.clone())),
            ));
        }
        records.push(rec);
    }
    let live: Vec<(String, String, String)> = records
        .iter()
        .filter_map(|r| r.live.clone().map(|(c, m)| (c, m, r.name.clone())))
        .collect();
    // The last connections' `$connected` may still be on their way (a session records
    // presence after its `subscribed`): wait for the queue to drain and the rows to match,
    // at most the presence timeout and a few heartbeats.
    let settle = Instant::now();
    let settled = settle_presence(&pool, &live, args.presence_timeout_seconds + 5.0).await;
    let players: BTreeMap<String, String> = records
        .iter()
        .filter(|r| r.kind == Kind::TicTacToe)
        .map(|r| (r.name.clone(), String::new()))
        .collect();
    let bounds = check::Bounds {
        lease_seconds: args.lease_seconds,
        started: started_wall,
    };
    let mut findings = check::run(&pool, &records, &faults, &bounds).await?;
    check::presence(&pool, &live, &players, &mut findings).await?;
    findings.count(
        "presence: ms to settle after the clients stopped",
        settle.elapsed().as_millis() as u64,
    );
    if !settled {
        stuck.push("presence did not settle after the clients stopped".to_owned());
    }
    close.cancel();
    for (name, hold) in holds {
        if !hold.await.context("a holding task panicked")? {
            stuck.push(format!(
                "{name}: its live connection was closed by the gateway while presence was checked"
            ));
        }
    }
    for s in stuck {
        findings.violations.insert(0, s);
    }
    let exits: u32 = sup.procs.iter().map(|p| p.unexpected_exits).sum();
    sup.shutdown().await;
    pool.close().await;

    summary(args, seed, &faults, &records, &findings, exits);
    Ok(findings.violations.is_empty())
}

/// Injects faults for `--duration` seconds; returns them.
async fn inject(
    args: &ChaosArgs,
    seed: u64,
    sup: &mut Supervisor,
    common: &Common,
    cluster: &Cluster,
    shared: &Shared,
) -> anyhow::Result<Vec<Fault>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut faults = Vec::new();
    let end = Instant::now() + Duration::from_secs_f64(args.duration);
    let lease = args.lease_seconds;
    loop {
        // Every draw happens whatever the outcome, so the schedule depends on the seed only.
        let gap = args.fault_interval * rng.gen_range(0.5..1.5);
        let kind = FaultKind::ALL[rng.gen_range(0..FaultKind::ALL.len())];
        let target = rng.gen_range(0..sup.procs.len());
        let hold = match kind {
            FaultKind::Freeze => lease + rng.gen_range(0.5..3.0),
            FaultKind::Kill => rng.gen_range(0.0..1.0),
            FaultKind::PgRestart | FaultKind::PgCrash => rng.gen_range(0.5..3.0),
        };
        let wake = Instant::now() + Duration::from_secs_f64(gap);
        while Instant::now() < wake {
            tokio::time::sleep(Duration::from_millis(200)).await;
            for name in sup.restart_exited(&common.exe)? {
                println!("  {name} exited on its own: restarted");
            }
        }
        if Instant::now() >= end {
            break;
        }
        let start = shared.started.elapsed().as_secs_f64();
        let target_name = if kind.is_postgres() {
            "postgres".to_owned()
        } else {
            sup.procs[target].name.clone()
        };
        match kind {
            FaultKind::Kill => {
                sup.kill_and_restart(target, &common.exe, Duration::from_secs_f64(hold))
                    .await?
            }
            FaultKind::Freeze => {
                sup.signal(target, true).await?;
                tokio::time::sleep(Duration::from_secs_f64(hold)).await;
                sup.signal(target, false).await?;
            }
            FaultKind::PgRestart | FaultKind::PgCrash => {
                if let Err(e) = cluster.stop_server(kind == FaultKind::PgCrash).await {
                    println!("  stopping postgres failed: {e:#}");
                }
                tokio::time::sleep(Duration::from_secs_f64(hold)).await;
                cluster.start_server().await?;
            }
        }
        let fault = Fault {
            kind,
            target: target_name,
            start,
            end: shared.started.elapsed().as_secs_f64(),
        };
        println!(
            "  {:>6.1} s  {:<27} {:<10} held {:.1} s",
            fault.start,
            kind.name(),
            fault.target,
            fault.end - fault.start
        );
        faults.push(fault);
    }
    Ok(faults)
}

/// Waits until the control queue is empty (or `deadline`).
async fn wait_drained(pool: &sqlx::PgPool, deadline: Instant) {
    while Instant::now() < deadline {
        let left: Result<i64, _> = sqlx::query_scalar("SELECT count(*) FROM postgame.control")
            .fetch_one(pool)
            .await;
        if matches!(left, Ok(0)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the control queue is empty and `postgame.presence` holds exactly the `live`
/// connections (for at most `limit` seconds); false when it never did.
async fn settle_presence(
    pool: &sqlx::PgPool,
    live: &[(String, String, String)],
    limit: f64,
) -> bool {
    let expected: std::collections::BTreeSet<(String, String, String)> =
        live.iter().cloned().collect();
    let deadline = Instant::now() + Duration::from_secs_f64(limit);
    loop {
        wait_drained(pool, deadline).await;
        if let Ok(rows) = check::presence_rows(pool).await {
            if rows == expected {
                // A row is written just before its `$connected` is enqueued: give that
                // publish time to commit, then let the workers apply it.
                tokio::time::sleep(Duration::from_secs(2)).await;
                wait_drained(pool, deadline + Duration::from_secs(30)).await;
                return true;
            }
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

async fn wait_listening(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if Instant::now() > deadline {
            bail!("the gateway on {addr} never listened (see its log)");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Event times (seconds since the start) of the streams a fault can stall: acks through
/// each gateway (the probes'), and each match's broadcasts as received.
fn streams(records: &[Record]) -> (Vec<Vec<f64>>, Vec<Vec<f64>>) {
    let mut acks: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    let mut matches: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for r in records {
        if let Kind::Probe(g) = r.kind {
            acks.entry(g).or_default().extend(
                r.publishes
                    .iter()
                    .filter_map(|p| p.ack.as_ref().map(|a| a.at)),
            );
        }
        for (ch, c) in &r.channels {
            let e = matches.entry(ch.clone()).or_default();
            e.extend(c.messages.iter().map(|m| m.3));
            e.extend(c.latest.iter().map(|l| l.recv));
        }
    }
    let sorted = |m: Vec<Vec<f64>>| {
        m.into_iter()
            .map(|mut v| {
                v.sort_by(f64::total_cmp);
                v
            })
            .collect::<Vec<_>>()
    };
    (
        sorted(acks.into_values().collect()),
        sorted(matches.into_values().collect()),
    )
}

/// The longest silence of a stream in `[from, from + window]`: from `from` or an event to
/// the next event.
fn stall(events: &[f64], from: f64, window: f64) -> Option<f64> {
    // Streams that had ended (a finished Pong match) before the fault say nothing.
    if events.last().map_or(true, |l| *l < from) {
        return None;
    }
    let mut worst: f64 = 0.0;
    for w in events.windows(2) {
        let (a, b) = (w[0], w[1]);
        if b >= from && a <= from + window {
            worst = worst.max(b - a.max(from));
        }
    }
    Some(worst)
}

fn summary(
    args: &ChaosArgs,
    seed: u64,
    faults: &[Fault],
    records: &[Record],
    findings: &check::Findings,
    exits: u32,
) {
    let (acks, matches) = streams(records);
    println!();
    println!(
        "postgame chaos --duration {} --seed {seed} --fault-interval {}",
        args.duration, args.fault_interval
    );
    println!(
        "{:<28} {:>6} {:>22} {:>22}",
        "fault", "count", "ack stall p50/max (s)", "match stall p50/max (s)"
    );
    for kind in FaultKind::ALL {
        let of: Vec<&Fault> = faults.iter().filter(|f| f.kind == kind).collect();
        let mut ack_s: Vec<f64> = Vec::new();
        let mut match_s: Vec<f64> = Vec::new();
        for f in &of {
            // Up to the next fault, at most the window.
            let window = faults
                .iter()
                .map(|n| n.start)
                .find(|s| *s > f.start)
                .map_or(RECOVERY_WINDOW, |n| (n - f.start).min(RECOVERY_WINDOW));
            if let Some(s) = acks
                .iter()
                .filter_map(|e| stall(e, f.start, window))
                .reduce(f64::max)
            {
                ack_s.push(s);
            }
            if let Some(s) = matches
                .iter()
                .filter_map(|e| stall(e, f.start, window))
                .reduce(f64::max)
            {
                match_s.push(s);
            }
        }
        println!(
            "{:<28} {:>6} {:>22} {:>22}",
            kind.name(),
            of.len(),
            p50_max(&mut ack_s),
            p50_max(&mut match_s)
        );
    }
    println!("(a stall: the longest time without an ack through a gateway, or without a broadcast of a match, from the fault's start to the next fault)");
    let connections: u32 = records.iter().map(|r| r.connections).sum();
    let resent: u32 = records
        .iter()
        .flat_map(|r| r.publishes.iter())
        .map(|p| p.sends.saturating_sub(1))
        .sum();
    let dup: usize = records
        .iter()
        .flat_map(|r| r.publishes.iter())
        .filter(|p| p.ack.as_ref().is_some_and(|a| a.duplicate))
        .count();
    println!(
        "clients {}, connections {connections}, publishes resent {resent} (acked as duplicates {dup}), processes that exited on their own {exits}",
        records.len()
    );
    let mut dropped: BTreeMap<&str, u32> = BTreeMap::new();
    for r in records {
        for (why, n) in &r.dropped {
            *dropped.entry(why.as_str()).or_default() += n;
        }
    }
    println!("connections given up, by reason: {dropped:?}");
    for (what, n) in &findings.checked {
        println!("  {what}: {n}");
    }
    if findings.violations.is_empty() {
        println!("OK: no violation");
    } else {
        println!("VIOLATIONS: {}", findings.violations.len());
        for v in &findings.violations {
            println!("  - {v}");
        }
        println!("replay the faults with --seed {seed}");
    }
}

fn p50_max(v: &mut [f64]) -> String {
    if v.is_empty() {
        return "-".to_owned();
    }
    v.sort_by(f64::total_cmp);
    format!("{:.2} / {:.2}", v[v.len() / 2], v[v.len() - 1])
}
