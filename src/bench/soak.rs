//! `postgame bench soak`: the control queue under a steady offered load for a long time,
//! with one transaction holding the xmin horizon back for a middle stretch of the run.
//!
//! A `DELETE`-based `SKIP LOCKED` queue depends on vacuum: while any transaction's snapshot
//! is older than the deleted rows, they stay as dead tuples that every index scan of the
//! queue walks, and published runs of such queues lose a third of their throughput and
//! grow dead rows without bound. This scenario measures ours that way:
//!
//! - P producers enqueue `--rate` messages per second, one per transaction (the real
//!   [`commit_batch`](crate::queue::publisher::commit_batch)), spread over M `noop`
//!   matches, for `--duration` seconds; W workers run the real worker loop (as in
//!   `bench queue`), and the VACUUM task a worker process runs every `--vacuum-seconds`.
//! - From `--hold-from` for `--hold-for` seconds, a separate session sits in a
//!   `REPEATABLE READ` transaction that has an xid, so vacuum can remove nothing newer.
//! - Every `--sample-every` seconds it samples the dead and live rows and the size of the
//!   queue tables (`pg_stat_user_tables`) and the age of the oldest snapshot.
//!
//! Reported per phase (before, during and after the hold): messages applied per second,
//! and the latency from each message's enqueue commit to the commit of the worker
//! transaction that applied it, by the phase its enqueue fell in. `throughput_per_s` and
//! `latency_ms` are the held phase's; `params.clean` holds the phases without the hold
//! together, and `params.held_vs_clean` the ratios the targets are about.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Serialize;
use serde_json::json;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::time::Instant;

use super::queue::{
    database_check, enqueue_one_by_one, matches_create, start_workers, wait_for, Bar, Claiming,
    Counters,
};
use super::{histogram, Latency, Report};
use crate::broadcast::notify::Notifier;
use crate::config::SoakArgs;
use crate::ids::ClientId;

/// One sample of the queue tables.
#[derive(Debug, Clone, Serialize)]
struct Sample {
    /// Seconds since the start.
    t: f64,
    /// Whether the xmin hold was on.
    held: bool,
    /// Messages applied per second since the previous sample.
    applied_per_s: f64,
    /// Age in transactions of the oldest snapshot among the database's sessions.
    xmin_age: Option<i32>,
    /// `relname` → (dead rows, live rows, total bytes with indexes).
    tables: HashMap<String, (i64, i64, i64)>,
}

/// One phase's figures.
#[derive(Debug, Clone, Serialize)]
struct Phase {
    seconds: f64,
    enqueued: u64,
    applied_per_s: f64,
    latency_ms: Option<Latency>,
    max_dead_rows: i64,
}

/// Runs the scenario against the database at `db_url`.
pub async fn run(db_url: &str, args: &SoakArgs, show_progress: bool) -> anyhow::Result<Report> {
    if !(args.duration > 0.0 && args.rate > 0.0 && args.sample_every > 0.0) {
        bail!("--duration, --rate and --sample-every must be positive");
    }
    if args.matches == 0 || args.workers == 0 || args.producers == 0 {
        bail!("--matches, --workers and --producers must be at least 1");
    }
    let hold_from = args.hold_from.unwrap_or(args.duration / 6.0).max(0.0);
    let hold_for = args
        .hold_for
        .unwrap_or(args.duration * 2.0 / 3.0)
        .clamp(0.0, (args.duration - hold_from).max(0.0));
    let total = (args.rate * args.duration).round() as u64;
    let connections = (args.workers + args.producers + 4) as u32;
    let pool = crate::store::pool_connect(db_url, connections, "postgame bench soak").await?;
    crate::store::migrate(&pool).await?;
    let stop = tokio_util::sync::CancellationToken::new();
    let notifier = Arc::new(Notifier::new());
    let notifier_task = tokio::spawn(Arc::clone(&notifier).run(pool.clone(), stop.clone()));
    let result = soak(
        &pool,
        db_url,
        args,
        show_progress,
        &notifier,
        (hold_from, hold_for),
        total,
    )
    .await;
    stop.cancel();
    let _ = notifier_task.await;
    pool.close().await;
    result
}

async fn soak(
    pool: &PgPool,
    db_url: &str,
    args: &SoakArgs,
    show_progress: bool,
    notifier: &Arc<Notifier>,
    (hold_from, hold_for): (f64, f64),
    total: u64,
) -> anyhow::Result<Report> {
    let matches = Arc::new(matches_create(pool, args.matches).await?);
    let client = ClientId::parse("soak").context("a valid client id")?;
    let counters = Arc::new(Counters::default());
    let claiming = Claiming {
        workers: args.workers,
        batch_size: args.batch_size,
        batch_per_match: args.batch_per_match,
    };
    let (workers, workers_stop) = start_workers(pool, notifier, claiming, &counters);
    let start = Instant::now();
    let sampling = tokio_util::sync::CancellationToken::new();
    let sampler = tokio::spawn(sample_loop(
        pool.clone(),
        Arc::clone(&counters.processed),
        start,
        Duration::from_secs_f64(args.sample_every),
        (hold_from, hold_for),
        sampling.clone(),
    ));
    let holder = tokio::spawn(hold(db_url.to_owned(), start, hold_from, hold_for));
    // What a serving worker process does beside its workers (`serve --vacuum-seconds`).
    let vacuum = (args.vacuum_seconds > 0.0).then(|| {
        tokio::spawn(crate::vacuum::run(
            pool.clone(),
            Duration::from_secs_f64(args.vacuum_seconds.max(1.0)),
            sampling.clone(),
        ))
    });
    let run = async {
        let enqueued = Arc::new(AtomicU64::new(0));
        let bar = Bar::new(show_progress, "applied", &counters.processed, total);
        let sent = enqueue_one_by_one(
            pool,
            &client,
            &matches,
            0,
            total,
            args.producers,
            Some(args.rate),
            Some(notifier),
            &enqueued,
        )
        .await?;
        wait_for(&counters.processed, total, "the soak").await?;
        bar.finish().await;
        anyhow::Ok(sent)
    }
    .await;
    let elapsed = start.elapsed().as_secs_f64();
    workers_stop.cancel();
    sampling.cancel();
    let mut stamps = Vec::new();
    for w in workers {
        stamps.extend(w.await.context("worker task")?);
    }
    let samples = sampler.await.context("sampler task")??;
    if let Some(vacuum) = vacuum {
        vacuum.await.context("vacuum task")?;
    }
    let held = holder.await.context("holder task")??;
    let sent = run?;
    let mismatches = database_check(pool, total).await?;

    let applied: HashMap<i64, Instant> = stamps.iter().copied().collect();
    let in_hold = |t: f64| hold_for > 0.0 && t >= hold_from && t < hold_from + hold_for;
    let phase = |pick: &dyn Fn(f64) -> bool, seconds: f64| {
        let mut h = histogram();
        let mut enqueued = 0;
        for (id, at) in &sent {
            if !pick(at.duration_since(start).as_secs_f64()) {
                continue;
            }
            enqueued += 1;
            if let Some(done) = applied.get(id) {
                let _ = h.record((done.duration_since(*at).as_micros() as u64).max(1));
            }
        }
        let applied_in = stamps
            .iter()
            .filter(|(_, at)| pick(at.duration_since(start).as_secs_f64()))
            .count();
        let max_dead_rows = samples
            .iter()
            .filter(|s| pick(s.t))
            .map(|s| s.tables.values().map(|(dead, _, _)| *dead).sum::<i64>())
            .max()
            .unwrap_or(0);
        Phase {
            seconds,
            enqueued,
            applied_per_s: applied_in as f64 / seconds.max(f64::EPSILON),
            latency_ms: (!h.is_empty()).then(|| Latency::of(&h)),
            max_dead_rows,
        }
    };
    let end = elapsed.max(args.duration);
    let before = phase(&|t| t < hold_from, hold_from);
    let during = phase(&in_hold, hold_for);
    let after = phase(&|t| t >= hold_from + hold_for, end - hold_from - hold_for);
    let clean = phase(&|t| !in_hold(t), end - hold_for);
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let p99 = |p: &Phase| p.latency_ms.map(|l| l.p99);
    let headline = if hold_for > 0.0 { &during } else { &clean };
    let missing = (sent.len() as u64).saturating_sub(applied.len() as u64);
    Ok(Report {
        scenario: "soak",
        throughput_per_s: headline.applied_per_s,
        unit: "messages",
        count: total,
        errors: counters.errors.load(Ordering::Relaxed) + mismatches + missing,
        elapsed_s: elapsed,
        latency_ms: headline.latency_ms.unwrap_or(Latency::of(&histogram())),
        latency_of: "messages enqueued while the xmin hold was on (all messages without a \
                     hold): enqueue commit to worker commit, at --rate",
        params: json!({
            "duration": args.duration,
            "rate": args.rate,
            "matches": args.matches,
            "workers": args.workers,
            "producers": args.producers,
            "batch_size": args.batch_size,
            "batch_per_match": args.batch_per_match,
            "vacuum_seconds": args.vacuum_seconds,
            "hold_from": hold_from,
            "hold_for": hold_for,
            "hold_xid": held,
            "before": before,
            "held": during,
            "after": after,
            "clean": clean,
            "held_vs_clean": {
                "throughput": ratio(Some(during.applied_per_s), Some(clean.applied_per_s)),
                "p99": ratio(p99(&during), p99(&clean)),
            },
            "samples": samples,
        }),
    })
}

/// Holds the xmin horizon back from `start + from` for `seconds`: a session in a
/// `REPEATABLE READ` transaction with an xid. Returns the xid (none without a hold).
async fn hold(url: String, start: Instant, from: f64, seconds: f64) -> anyhow::Result<Option<i64>> {
    if seconds <= 0.0 {
        return Ok(None);
    }
    tokio::time::sleep_until(start + Duration::from_secs_f64(from)).await;
    let mut conn = PgConnection::connect(&url)
        .await
        .context("the xmin-holding session")?;
    // What a forgotten session does: no timeout ends it (the roles' connections have one).
    sqlx::query("SET idle_in_transaction_session_timeout = 0")
        .execute(&mut conn)
        .await?;
    sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut conn)
        .await?;
    let xid: i64 = sqlx::query_scalar("SELECT txid_current()")
        .fetch_one(&mut conn)
        .await?;
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    sqlx::query("ROLLBACK").execute(&mut conn).await?;
    conn.close().await?;
    Ok(Some(xid))
}

/// Samples the queue tables every `every` until `stop`.
async fn sample_loop(
    pool: PgPool,
    processed: Arc<AtomicU64>,
    start: Instant,
    every: Duration,
    (hold_from, hold_for): (f64, f64),
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<Vec<Sample>> {
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = (start, 0u64);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => break,
        }
        let now = Instant::now();
        let n = processed.load(Ordering::Relaxed);
        let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(
            "SELECT relname::text, n_dead_tup, n_live_tup, \
                    pg_total_relation_size(relid) \
             FROM pg_stat_user_tables \
             WHERE schemaname = 'postgame' AND relname LIKE 'control%'",
        )
        .fetch_all(&pool)
        .await?;
        let xmin_age: Option<i32> = sqlx::query_scalar(
            "SELECT max(age(backend_xmin)) FROM pg_stat_activity WHERE datname = current_database()",
        )
        .fetch_one(&pool)
        .await?;
        let t = now.duration_since(start).as_secs_f64();
        samples.push(Sample {
            t,
            held: hold_for > 0.0 && t >= hold_from && t < hold_from + hold_for,
            applied_per_s: (n - last.1) as f64 / now.duration_since(last.0).as_secs_f64(),
            xmin_age,
            tables: rows
                .into_iter()
                .map(|(name, dead, live, bytes)| (name, (dead, live, bytes)))
                .collect(),
        });
        last = (now, n);
    }
    Ok(samples)
}
