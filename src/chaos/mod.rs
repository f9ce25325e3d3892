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
//! - [`fleet`]: the deployment (processes and clients) and its end: quiesce, then check;
//!   shared with `bench e2e --processes` and the N × N × N test.
//! - [`supervisor`]: the role processes and the signals.
//! - [`driver`]: the recording clients.
//! - [`check`]: the guarantees, read from the records and the database.

pub mod check;
pub mod driver;
pub mod fleet;
pub mod supervisor;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use crate::config::ChaosArgs;
use crate::embedded::Cluster;
use driver::{Kind, Record, Shared};
use fleet::{Fleet, FleetConfig, Outcome};
use supervisor::{Common, Supervisor};

const SECRET: &str = "postgame-chaos-secret-not-for-production";
/// Database connections per process (7 processes share the private cluster's 100).
const DB_CONNECTIONS: u32 = 6;
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
    let mut fleet = Fleet::start(FleetConfig {
        exe: std::env::current_exe().context("cannot find this program's path")?,
        database_url: cluster.url().to_owned(),
        log_dir: dir.join("logs"),
        secret: SECRET.to_owned(),
        lease_seconds: args.lease_seconds,
        presence_timeout_seconds: args.presence_timeout_seconds,
        db_connections: DB_CONNECTIONS,
        tictactoe: args.tictactoe,
        turn_seconds: args.turn_seconds,
        pong: args.pong,
        seed,
        // The faults move the clients.
        hop: None,
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let faults = match inject(
        args,
        seed,
        &mut fleet.sup,
        &fleet.common,
        cluster,
        &fleet.shared,
    )
    .await
    {
        Ok(f) => f,
        Err(e) => {
            fleet.abort().await;
            return Err(e);
        }
    };
    println!(
        "faults done at {:.1} s; quiescing",
        fleet.shared.started.elapsed().as_secs_f64()
    );
    let outcome = fleet.finish(&faults).await?;
    summary(args, seed, &faults, &outcome);
    Ok(outcome.findings.violations.is_empty())
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

fn summary(args: &ChaosArgs, seed: u64, faults: &[Fault], outcome: &Outcome) {
    let records = &outcome.records;
    let exits = outcome.exits;
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
    let connections = outcome.connections();
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
    outcome.print_checks();
    if !outcome.findings.violations.is_empty() {
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
