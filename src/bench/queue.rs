//! `postgame bench queue`: the control queue on its own, through the real code paths.
//!
//! N control messages for M `noop` matches (message `i` to match `i % M`), in four phases:
//!
//! 1. **Bulk enqueue** of N − S messages by [`commit_batch`] (the gateway publisher's group
//!    commit) in sequential batches of [`BULK_BATCH`], no worker running.
//! 2. **One-by-one enqueue** of the other S messages, one [`commit_batch`] per message,
//!    from P concurrent producers, still no worker running.
//! 3. **Drain**: W worker tasks run the real `Worker::run_once` loop (the policy of
//!    `Worker::run`: again at once while there was work, else wait for a wake-up) until
//!    all N are applied. `throughput_per_s` is this drain rate.
//! 4. **Latency**: with the workers running and the queue empty, L more messages one by
//!    one at an offered R per second (P producers), each commit waking the workers
//!    in-process as the gateway's publisher does. `latency_ms` is per message, from its
//!    enqueue commit returning to the commit of the worker transaction that applied it
//!    returning.
//!
//! How a message's processing time is known: the loop calls `Worker::run_once_applied`,
//! which returns the ids of the rows a committed transaction applied, and stamps them with
//! the instant it returned `Ok` (a failed transaction applied nothing: the rows come back).
//!
//! At the end the database is checked: the queue is empty and the matches counted every
//! message exactly once; any difference is reported in `errors`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{histogram, progress_count, Latency, Report};
use crate::broadcast::notify::Notifier;
use crate::config::QueueArgs;
use crate::game::noop::Noop;
use crate::game::Registry;
use crate::ids::{Channel, ClientId, MatchId};
use crate::queue::publisher::{commit_batch, PublishRequest};
use crate::worker::{Worker, WorkerConfig};

/// Messages per bulk transaction: the gateway publisher's largest group commit.
pub const BULK_BATCH: usize = 256;
/// How long an idle worker waits for a wake-up before it claims again anyway.
const IDLE_POLL: Duration = Duration::from_millis(500);
/// A phase that makes no progress for this long has failed.
const STALL: Duration = Duration::from_secs(60);

/// Counters shared by the workers and the phases.
#[derive(Default)]
pub(super) struct Counters {
    pub(super) processed: Arc<AtomicU64>,
    pub(super) errors: AtomicU64,
}

/// A running bench worker: what it applied, and when.
pub(super) type WorkerTask = tokio::task::JoinHandle<Vec<(i64, Instant)>>;

/// How bench workers claim.
#[derive(Debug, Clone, Copy)]
pub(super) struct Claiming {
    pub(super) workers: usize,
    pub(super) batch_size: i64,
    pub(super) batch_per_match: i64,
}

impl From<&QueueArgs> for Claiming {
    fn from(a: &QueueArgs) -> Self {
        Self {
            workers: a.workers,
            batch_size: a.batch_size,
            batch_per_match: a.batch_per_match,
        }
    }
}

/// Starts `args.workers` workers applying `noop` inputs, each counting into
/// `counters`; cancel the token to stop them, then await the handles.
pub(super) fn start_workers(
    pool: &PgPool,
    notifier: &Arc<Notifier>,
    args: Claiming,
    counters: &Arc<Counters>,
) -> (Vec<WorkerTask>, CancellationToken) {
    let worker = Worker::new(
        pool.clone(),
        Registry::new().with(Noop),
        Arc::clone(notifier),
        WorkerConfig {
            batch_size: args.batch_size.max(1),
            batch_per_match: args.batch_per_match.max(1),
            max_attempts: 5,
            poll_interval: IDLE_POLL,
            handler_limit: crate::game::limit::DEFAULT_HANDLER_LIMIT,
        },
    );
    let stop = CancellationToken::new();
    let workers = (0..args.workers)
        .map(|_| {
            tokio::spawn(work(
                worker.clone(),
                Arc::clone(&notifier.control_local),
                Arc::clone(counters),
                stop.clone(),
            ))
        })
        .collect();
    (workers, stop)
}

/// One worker task: the `run_once` loop, stamping what each committed transaction applied.
async fn work(
    worker: Worker,
    wake: Arc<Notify>,
    counters: Arc<Counters>,
    stop: CancellationToken,
) -> Vec<(i64, Instant)> {
    let mut stamps = Vec::new();
    let mut failures = 0u32;
    while !stop.is_cancelled() {
        // Armed before the claim, so a wake-up during an empty claim is not lost.
        let notified = wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        match worker.run_once_applied().await {
            Ok((outcome, ids)) => {
                let at = Instant::now();
                failures = 0;
                counters
                    .processed
                    .fetch_add(ids.len() as u64, Ordering::Relaxed);
                counters
                    .errors
                    .fetch_add(outcome.failed as u64, Ordering::Relaxed);
                stamps.extend(ids.into_iter().map(|id| (id, at)));
                if outcome.claimed > 0 || outcome.matches > 0 {
                    continue;
                }
                tokio::select! {
                    _ = notified => {}
                    _ = tokio::time::sleep(IDLE_POLL) => {}
                    _ = stop.cancelled() => {}
                }
            }
            Err(e) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                failures += 1;
                tracing::warn!(error = %e, "bench worker batch failed; retrying");
                let pause = Duration::from_millis(50 * 2u64.pow(failures.min(6)));
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop.cancelled() => {}
                }
            }
        }
    }
    stamps
}

/// Waits until `count` reaches `target`; fails when it stops moving for [`STALL`].
pub(super) async fn wait_for(count: &AtomicU64, target: u64, what: &str) -> anyhow::Result<()> {
    let mut last = count.load(Ordering::Relaxed);
    let mut moved = Instant::now();
    loop {
        let n = count.load(Ordering::Relaxed);
        if n >= target {
            return Ok(());
        }
        if n != last {
            last = n;
            moved = Instant::now();
        } else if moved.elapsed() > STALL {
            bail!("{what} stalled at {n} of {target}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn request(client: &ClientId, matches: &[Channel], i: u64) -> PublishRequest {
    PublishRequest {
        client: Some(client.clone()),
        channel: matches[(i % matches.len() as u64) as usize].clone(),
        name: "input".into(),
        data: json!({ "i": i }),
        key: None,
    }
}

/// The control ids of a committed batch.
fn acked(done: &crate::queue::publisher::Committed) -> anyhow::Result<Vec<i64>> {
    done.results
        .iter()
        .map(|r| {
            r.as_ref()
                .map(|a| a.msg_id)
                .map_err(|e| anyhow::anyhow!("enqueue: {e}"))
        })
        .collect()
}

/// Creates `n` noop matches (8 at a time) and returns their control channels.
pub(super) async fn matches_create(pool: &PgPool, n: usize) -> anyhow::Result<Vec<Channel>> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8.min(n) {
        let (pool, next) = (pool.clone(), Arc::clone(&next));
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < n as u64 {
                let (info, _) = crate::matches::match_create(&pool, &Noop, &json!({}))
                    .await
                    .map_err(|e| anyhow::anyhow!("creating a match: {e}"))?;
                ids.push(info.id);
            }
            anyhow::Ok(ids)
        }));
    }
    let mut channels = Vec::with_capacity(n);
    for t in tasks {
        for id in t.await.context("match creation task")?? {
            channels.push(
                Channel::parse(&format!("control:{}", MatchId(id))).map_err(anyhow::Error::msg)?,
            );
        }
    }
    Ok(channels)
}

/// Enqueues messages `first..first + count` one per transaction from `producers` tasks,
/// optionally paced at `rate` per second overall and waking the workers after each
/// commit. Returns each message's control id and the instant its commit returned.
#[allow(clippy::too_many_arguments)]
pub(super) async fn enqueue_one_by_one(
    pool: &PgPool,
    client: &ClientId,
    matches: &Arc<Vec<Channel>>,
    first: u64,
    count: u64,
    producers: usize,
    rate: Option<f64>,
    wake: Option<&Arc<Notifier>>,
    done: &Arc<AtomicU64>,
) -> anyhow::Result<Vec<(i64, Instant)>> {
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..producers.min(count as usize).max(1) {
        let (pool, next, done) = (pool.clone(), Arc::clone(&next), Arc::clone(done));
        let (client, matches, wake) = (client.clone(), Arc::clone(matches), wake.cloned());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= count {
                    break;
                }
                if let Some(rate) = rate {
                    tokio::time::sleep_until(start + Duration::from_secs_f64(k as f64 / rate))
                        .await;
                }
                let req = request(&client, &matches, first + k);
                let committed = commit_batch(&pool, &[&req]).await?;
                let at = Instant::now();
                out.extend(acked(&committed)?.into_iter().map(|id| (id, at)));
                done.fetch_add(1, Ordering::Relaxed);
                if let Some(n) = &wake {
                    // What the gateway's publisher does after its commit.
                    n.control_ready();
                }
            }
            anyhow::Ok(out)
        }));
    }
    let mut all = Vec::with_capacity(count as usize);
    for t in tasks {
        all.extend(t.await.context("producer task")??);
    }
    Ok(all)
}

/// Runs the scenario against the database at `db_url`.
pub async fn run(db_url: &str, args: &QueueArgs, show_progress: bool) -> anyhow::Result<Report> {
    run_via(db_url, None, args, show_progress).await
}

/// [`run`], the producers' and workers' pool going through the PgBouncer of `pooled` (the
/// benchmark database through it) when given; migrations and LISTEN use `db_url`.
pub async fn run_via(
    db_url: &str,
    pooled: Option<&str>,
    args: &QueueArgs,
    show_progress: bool,
) -> anyhow::Result<Report> {
    if args.messages == 0 || args.matches == 0 || args.workers == 0 {
        bail!("--messages, --matches and --workers must be at least 1");
    }
    if args.latency_rate.is_nan() || args.latency_rate <= 0.0 {
        bail!("--latency-rate must be positive");
    }
    let one_by_one = args.one_by_one.min(args.messages);
    let bulk = args.messages - one_by_one;
    let producers = args.producers.max(1);
    let connections = (args.workers.max(producers) + 4) as u32;
    let pool = crate::store::pool_connect(db_url, connections, "postgame bench queue").await?;
    crate::store::migrate(&pool).await?;
    let pool = match pooled {
        Some(p) => {
            let leases = crate::lease::Leases::default();
            crate::store::pool_connect_role(p, connections, "postgame bench queue", leases, true)
                .await?
        }
        None => pool,
    };
    let stop = CancellationToken::new();
    let notifier = Arc::new(Notifier::new());
    let notifier_task = tokio::spawn(Arc::clone(&notifier).run(pool.clone(), stop.clone()));
    let result = match args.flood {
        Some(flood) => flood_run(&pool, args, show_progress, &notifier, flood).await,
        None => phases(&pool, args, show_progress, &notifier, bulk, one_by_one).await,
    };
    stop.cancel();
    let _ = notifier_task.await;
    pool.close().await;
    result
}

async fn phases(
    pool: &PgPool,
    args: &QueueArgs,
    show_progress: bool,
    notifier: &Arc<Notifier>,
    bulk: u64,
    one_by_one: u64,
) -> anyhow::Result<Report> {
    let matches = Arc::new(matches_create(pool, args.matches).await?);
    // Any valid client id: noop reads nothing from it.
    let client = ClientId::parse("bench").context("a valid client id")?;
    let producers = args.producers.max(1);

    // 1. Bulk enqueue.
    let bulk_count = Arc::new(AtomicU64::new(0));
    let bar = Bar::new(show_progress, "enqueued (bulk)", &bulk_count, bulk);
    let started = Instant::now();
    let mut i = 0;
    while i < bulk {
        let end = (i + BULK_BATCH as u64).min(bulk);
        let reqs: Vec<PublishRequest> = (i..end).map(|j| request(&client, &matches, j)).collect();
        let refs: Vec<&PublishRequest> = reqs.iter().collect();
        let committed = commit_batch(pool, &refs).await.context("bulk enqueue")?;
        acked(&committed)?;
        bulk_count.store(end, Ordering::Relaxed);
        i = end;
    }
    let bulk_s = started.elapsed().as_secs_f64();
    bar.finish().await;

    // 2. One by one, no worker running.
    let obo_count = Arc::new(AtomicU64::new(0));
    let bar = Bar::new(
        show_progress,
        "enqueued (one by one)",
        &obo_count,
        one_by_one,
    );
    let started = Instant::now();
    enqueue_one_by_one(
        pool, &client, &matches, bulk, one_by_one, producers, None, None, &obo_count,
    )
    .await?;
    let one_s = started.elapsed().as_secs_f64();
    bar.finish().await;

    // 3. Drain with W workers.
    let counters = Arc::new(Counters::default());
    let bar = Bar::new(show_progress, "applied", &counters.processed, args.messages);
    let started = Instant::now();
    let (workers, workers_stop) = start_workers(pool, notifier, args.into(), &counters);
    let drained = wait_for(&counters.processed, args.messages, "the drain").await;
    let drain_s = started.elapsed().as_secs_f64();
    bar.finish().await;

    // 4. Latency, with the workers running.
    let latency_phase = async {
        drained?;
        let done = Arc::new(AtomicU64::new(0));
        let bar = Bar::new(
            show_progress,
            "latency phase",
            &counters.processed,
            args.messages + args.latency_messages,
        );
        let enqueued = enqueue_one_by_one(
            pool,
            &client,
            &matches,
            args.messages,
            args.latency_messages,
            producers,
            Some(args.latency_rate),
            Some(notifier),
            &done,
        )
        .await?;
        let waited = wait_for(
            &counters.processed,
            args.messages + args.latency_messages,
            "the latency phase",
        )
        .await;
        bar.finish().await;
        waited.map(|()| enqueued)
    }
    .await;
    workers_stop.cancel();
    let mut stamps = Vec::new();
    for w in workers {
        stamps.extend(w.await.context("worker task")?);
    }
    let enqueued = latency_phase?;
    let mismatches = database_check(pool, args.messages + args.latency_messages).await?;

    let enqueued: HashMap<i64, Instant> = enqueued.into_iter().collect();
    let mut live = histogram();
    let mut measured = 0u64;
    for (id, done) in &stamps {
        if let Some(at) = enqueued.get(id) {
            let _ = live.record((done.duration_since(*at).as_micros() as u64).max(1));
            measured += 1;
        }
    }
    let applied = stamps.len() as u64;
    let expected = args.messages + args.latency_messages;
    let missing = args.latency_messages.saturating_sub(measured);
    let off = applied.abs_diff(expected);
    let rate = |n: u64, s: f64| {
        if n > 0 {
            json!(n as f64 / s)
        } else {
            Value::Null
        }
    };
    Ok(Report {
        scenario: "queue",
        throughput_per_s: args.messages as f64 / drain_s,
        unit: "messages",
        count: args.messages,
        errors: counters.errors.load(Ordering::Relaxed) + mismatches + missing + off,
        elapsed_s: drain_s,
        latency_ms: Latency::of(&live),
        latency_of: "enqueue commit to worker commit, at --latency-rate with the workers running",
        params: json!({
            "messages": args.messages,
            "matches": args.matches,
            "workers": args.workers,
            "batch_size": args.batch_size,
            "bulk": bulk,
            "bulk_batch": BULK_BATCH,
            "enqueue_bulk_per_s": rate(bulk, bulk_s),
            "one_by_one": one_by_one,
            "producers": producers,
            "enqueue_one_by_one_per_s": rate(one_by_one, one_s),
            "latency_messages": args.latency_messages,
            "latency_rate": args.latency_rate,
        }),
    })
}

/// `--flood N`: fairness. With the workers running, L messages for the other matches at
/// R per second (the baseline), then N messages for one match in bulk and, right behind
/// them, L more for the other matches at R per second (the flood). `latency_ms` is the
/// other matches' latency during the flood; the baseline's is in `params`, with their
/// ratio and how much of the flood was still queued when the last timed message was
/// applied (a positive number: the other matches did not wait for the flood).
async fn flood_run(
    pool: &PgPool,
    args: &QueueArgs,
    show_progress: bool,
    notifier: &Arc<Notifier>,
    flood: u64,
) -> anyhow::Result<Report> {
    let flooded = matches_create(pool, 1).await?;
    let others = Arc::new(matches_create(pool, args.matches).await?);
    let client = ClientId::parse("bench").context("a valid client id")?;
    let producers = args.producers.max(1);
    let counters = Arc::new(Counters::default());
    let (workers, workers_stop) = start_workers(pool, notifier, args.into(), &counters);
    let l = args.latency_messages;
    let phases = async {
        // Baseline: no flood.
        let done = Arc::new(AtomicU64::new(0));
        let bar = Bar::new(show_progress, "baseline", &counters.processed, l);
        let baseline = enqueue_one_by_one(
            pool,
            &client,
            &others,
            0,
            l,
            producers,
            Some(args.latency_rate),
            Some(notifier),
            &done,
        )
        .await?;
        wait_for(&counters.processed, l, "the baseline").await?;
        bar.finish().await;

        // The flood, then the other matches' messages behind it.
        let bar = Bar::new(show_progress, "flood", &counters.processed, l + flood + l);
        let started = Instant::now();
        let mut i = 0;
        while i < flood {
            let end = (i + BULK_BATCH as u64).min(flood);
            let reqs: Vec<PublishRequest> =
                (i..end).map(|j| request(&client, &flooded, j)).collect();
            let refs: Vec<&PublishRequest> = reqs.iter().collect();
            let committed = commit_batch(pool, &refs).await.context("flood enqueue")?;
            acked(&committed)?;
            notifier.control_ready();
            i = end;
        }
        let during = enqueue_one_by_one(
            pool,
            &client,
            &others,
            l,
            l,
            producers,
            Some(args.latency_rate),
            Some(notifier),
            &done,
        )
        .await?;
        let last: Vec<i64> = during.iter().map(|(id, _)| *id).collect();
        // How much of the flood was left when the other matches' last message was applied.
        let mut flood_left = None;
        let deadline_moved = Instant::now();
        loop {
            let pending: i64 =
                sqlx::query_scalar("SELECT count(*) FROM postgame.control WHERE id = ANY($1)")
                    .bind(&last)
                    .fetch_one(pool)
                    .await?;
            if pending == 0 {
                let left: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM postgame.control WHERE match_id = $1")
                        .bind(match flooded[0].kind() {
                            crate::ids::ChannelKind::Control(m) => m.0,
                            _ => bail!("a control channel"),
                        })
                        .fetch_one(pool)
                        .await?;
                flood_left = Some(left);
                break;
            }
            if deadline_moved.elapsed() > STALL {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        wait_for(&counters.processed, l + flood + l, "the flood").await?;
        let flood_s = started.elapsed().as_secs_f64();
        bar.finish().await;
        anyhow::Ok((baseline, during, flood_left, flood_s))
    }
    .await;
    workers_stop.cancel();
    let mut stamps = Vec::new();
    for w in workers {
        stamps.extend(w.await.context("worker task")?);
    }
    let (baseline, during, flood_left, flood_s) = phases?;
    let expected = l + flood + l;
    let mismatches = database_check(pool, expected).await?;
    let stamps: HashMap<i64, Instant> = stamps.into_iter().collect();
    let latencies = |enqueued: &[(i64, Instant)]| {
        let mut h = histogram();
        let mut missing = 0u64;
        for (id, at) in enqueued {
            match stamps.get(id) {
                Some(done) => {
                    let _ = h.record((done.duration_since(*at).as_micros() as u64).max(1));
                }
                None => missing += 1,
            }
        }
        (Latency::of(&h), missing)
    };
    let (base, base_missing) = latencies(&baseline);
    let (flooded_lat, flood_missing) = latencies(&during);
    let off = (stamps.len() as u64).abs_diff(expected);
    Ok(Report {
        scenario: "queue",
        throughput_per_s: (flood + l) as f64 / flood_s,
        unit: "messages",
        count: flood,
        errors: counters.errors.load(Ordering::Relaxed)
            + mismatches
            + base_missing
            + flood_missing
            + off
            + u64::from(flood_left.is_none()),
        elapsed_s: flood_s,
        latency_ms: flooded_lat,
        latency_of: "other matches' messages while one match's flood drains: enqueue commit \
                     to worker commit, at --latency-rate",
        params: json!({
            "flood": flood,
            "matches": args.matches,
            "workers": args.workers,
            "batch_size": args.batch_size,
            "batch_per_match": args.batch_per_match,
            "producers": producers,
            "latency_messages": l,
            "latency_rate": args.latency_rate,
            "baseline_latency_ms": base,
            "p50_ratio_to_baseline": flooded_lat.p50 / base.p50,
            "p99_ratio_to_baseline": flooded_lat.p99 / base.p99,
            "flood_left_when_others_done": flood_left,
        }),
    })
}

/// The progress bar of one phase (nothing when progress is not shown, e.g. with `--json`).
pub(super) struct Bar(Option<(tokio::task::JoinHandle<()>, CancellationToken)>);

impl Bar {
    pub(super) fn new(
        show: bool,
        label: &'static str,
        count: &Arc<AtomicU64>,
        target: u64,
    ) -> Self {
        Self(show.then(|| {
            let stop = CancellationToken::new();
            let task = progress_count(label, Arc::clone(count), target, stop.clone());
            (task, stop)
        }))
    }

    /// Stops the bar and waits for its last line.
    pub(super) async fn finish(self) {
        if let Some((task, stop)) = self.0 {
            stop.cancel();
            let _ = task.await;
        }
    }
}

/// Checks the end state: an empty queue, and every message counted once by its match.
/// Returns how many messages are off.
pub(super) async fn database_check(pool: &PgPool, expected: u64) -> anyhow::Result<u64> {
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM postgame.control")
        .fetch_one(pool)
        .await?;
    let counted: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum((state->>'inputs')::int8), 0)::int8 FROM postgame.matches \
         WHERE game = 'noop'",
    )
    .fetch_one(pool)
    .await?;
    Ok(left.unsigned_abs() + (counted - expected as i64).unsigned_abs())
}
