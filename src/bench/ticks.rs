//! `postgame bench ticks`: M matches on the clock at H ticks per second, driven by T ticker
//! tasks of an in-process server that runs only the ticker role (or, with `--processes`,
//! T `postgame serve --role ticker` processes of this binary). Measured over a window that
//! starts after a warm-up: achieved ticks per second (the matches' `version`s, which every
//! tick bumps, read from the database) against requested (M × H), and tick lateness: the
//! tick's start (the database's `now()` in the ticker transaction) minus its scheduled
//! time.
//!
//! - `--game pong` (the default): two-player Pong matches (20 Hz only), both seats taken
//!   and the ball in play, nobody steering: a match to 21 between idle paddles lasts about
//!   109 s of game time ([`pong::idle_match_steps`]), so a run whose warm-up and duration
//!   do not fit is refused. Every tick sends the state as the match channel's latest value
//!   (the unlogged `postgame.latest`, not the log), stamped with its due time (`at`); every
//!   250 ms the bench reads each match's latest value and records each new one's lateness
//!   once (`ts − at`): lateness is **sampled**, one tick in five per match at 20 Hz (reading
//!   more often costs the database as much as a good part of the workload itself).
//! - `--game noop`: the built-in `noop` game at any H; it broadcasts nothing, so lateness is
//!   **sampled**: every 250 ms the bench reads each match's latest tick (its `updated_at`
//!   is the tick's `now()`, and `next_tick_at − period` its schedule, since noop catches
//!   up) and records it once.
//!
//! The matches are inserted directly (state from the game's own `create` and `join`
//! handlers), their first ticks spread evenly over one period, as independent matches'
//! would be.
//!
//! Then the baseline, in the same run: the tickers are stopped and T tasks run a plain
//! batched `UPDATE … WHERE id IN (SELECT … WHERE next_tick_at <= now() ORDER BY
//! next_tick_at LIMIT n FOR UPDATE SKIP LOCKED) RETURNING …` on the same table for the same
//! duration, as fast as they can (each row is due again at once). That is the ceiling of
//! claiming and rescheduling rows with no game, no log and no state; the report gives it
//! as `baseline_updates_per_s` and `ratio_to_baseline` = achieved ticks/s ÷ that.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{histogram, progress, Latency, Report};
use crate::config::{Role, ServeConfig, TicksArgs};
use crate::game::{noop, pong, Input, Registry};
use crate::ids::{ClientId, MatchId};
use crate::matches::latest_view;

/// Time between the matches' creation and their first ticks, for the tickers to start.
const LEAD: Duration = Duration::from_secs(1);
/// How often progress (and noop's lateness samples) are read from the database.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// The workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    Pong,
    Noop,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Pong => pong::NAME,
            Workload::Noop => noop::NAME,
        }
    }

    fn lateness_of(self) -> &'static str {
        match self {
            Workload::Pong => {
                "tick lateness (tick's database now() − its scheduled time), each match's \
                 latest state sampled every 250 ms"
            }
            Workload::Noop => {
                "tick lateness (tick's database now() − its scheduled time), each match's \
                 latest tick sampled every 250 ms"
            }
        }
    }
}

/// The tickers under test: tasks of an in-process server, or child processes.
enum Tickers {
    InProcess(crate::Server),
    Processes(Vec<tokio::process::Child>),
}

impl Tickers {
    async fn start(db_url: &str, args: &TicksArgs, games: &Registry) -> anyhow::Result<Self> {
        if args.processes {
            let exe = std::env::current_exe().context("cannot find this executable")?;
            let mut children = Vec::with_capacity(args.tickers);
            for _ in 0..args.tickers {
                let child = tokio::process::Command::new(&exe)
                    .args(["serve", "--role", "ticker", "--database-url", db_url])
                    .env("POSTGAME_TICKERS", "1")
                    .env("POSTGAME_TICK_BATCH", args.tick_batch.to_string())
                    .args(args.sync_ticks.then_some("--sync-ticks"))
                    .env("POSTGAME_DB_CONNECTIONS", "3")
                    .env("RUST_LOG", "warn")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .kill_on_drop(true)
                    .spawn()
                    .with_context(|| format!("cannot start {}", exe.display()))?;
                children.push(child);
            }
            return Ok(Tickers::Processes(children));
        }
        let mut config = ServeConfig::defaults(db_url);
        config.roles = vec![Role::Ticker];
        config.tickers = args.tickers;
        config.tick_batch = args.tick_batch;
        config.sync_ticks = args.sync_ticks;
        // One connection per ticker task, plus the notifier's and the prune's.
        config.db_connections = u32::try_from(args.tickers + 3).unwrap_or(u32::MAX);
        let server = crate::start(config, games.clone(), None).await?;
        Ok(Tickers::InProcess(server))
    }

    async fn stop(self) {
        match self {
            Tickers::InProcess(server) => server.shutdown().await,
            Tickers::Processes(children) => {
                for mut child in children {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                }
            }
        }
    }
}

/// A match row to insert.
struct NewMatch {
    id: Uuid,
    status: &'static str,
    config: Value,
    state: Value,
    view: Option<Value>,
    next_tick_at: Option<DateTime<Utc>>,
}

/// Builds match `i` of `n` with the game's own handlers: created (and for Pong, joined by
/// two players) at `base` + i/n of a period, so first ticks spread over one period.
fn new_match(
    games: &Registry,
    workload: Workload,
    hz: f64,
    base: DateTime<Utc>,
    (i, n): (usize, usize),
) -> anyhow::Result<NewMatch> {
    let game = games
        .get(workload.name())
        .with_context(|| format!("{} is built in", workload.name()))?;
    let id = MatchId::new_random();
    let offset_us = (1e6 / hz * i as f64 / n as f64) as i64;
    let at = base + chrono::Duration::microseconds(offset_us);
    let config = match workload {
        Workload::Pong => json!({ "points_to_win": pong::MAX_POINTS_TO_WIN }),
        Workload::Noop => json!({ "hz": hz }),
    };
    let created = game
        .create(id, &config, at)
        .map_err(|e| anyhow::anyhow!("creating a {} match: {e}", workload.name()))?;
    if workload == Workload::Noop {
        return Ok(NewMatch {
            id: id.0,
            status: created.status,
            config: created.config,
            state: created.state,
            view: latest_view(&created.out),
            next_tick_at: created.next_tick_at,
        });
    }
    let joins: Vec<Input> = ["l", "r"]
        .iter()
        .zip(1..)
        .map(|(side, msg_id)| -> anyhow::Result<Input> {
            Ok(Input::Client {
                msg_id,
                client: ClientId::parse(&format!("bench-{i}-{side}"))
                    .context("a valid client id")?,
                name: "join".into(),
                data: json!({}),
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let applied = game.apply(id, &created.config, &created.state, &joins, at);
    let Some((state, status, next_tick_at)) = applied.next else {
        bail!("joining a pong match failed: {:?}", applied.error);
    };
    Ok(NewMatch {
        id: id.0,
        status,
        config: created.config,
        state,
        view: latest_view(&applied.out),
        next_tick_at,
    })
}

/// Inserts the matches in one statement.
async fn matches_insert(pool: &PgPool, game: &str, rows: &[NewMatch]) -> sqlx::Result<()> {
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let statuses: Vec<String> = rows.iter().map(|r| r.status.to_owned()).collect();
    let configs: Vec<Value> = rows.iter().map(|r| r.config.clone()).collect();
    let states: Vec<Value> = rows.iter().map(|r| r.state.clone()).collect();
    let views: Vec<Option<Value>> = rows.iter().map(|r| r.view.clone()).collect();
    let ticks: Vec<Option<DateTime<Utc>>> = rows.iter().map(|r| r.next_tick_at).collect();
    sqlx::query!(
        r#"
        INSERT INTO postgame.matches (id, game, status, config, state, view, next_tick_at)
        SELECT u.id, $2, u.status, u.config, u.state, u.view, u.next_tick_at
        FROM unnest($1::uuid[], $3::text[], $4::jsonb[], $5::jsonb[], $6::jsonb[],
                    $7::timestamptz[]) AS u(id, status, config, state, view, next_tick_at)
        "#,
        &ids,
        game,
        &statuses,
        &configs,
        &states,
        &views as &[Option<Value>],
        &ticks as &[Option<DateTime<Utc>>]
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// The database's clock.
async fn db_now(pool: &PgPool) -> sqlx::Result<DateTime<Utc>> {
    sqlx::query_scalar!(r#"SELECT clock_timestamp() AS "now!""#)
        .fetch_one(pool)
        .await
}

/// Ticks run so far over all matches (every tick adds 1 to its match's `version`).
async fn matches_ticks(pool: &PgPool) -> sqlx::Result<i64> {
    sqlx::query_scalar!(r#"SELECT coalesce(sum(version), 0)::int8 AS "n!" FROM postgame.matches"#)
        .fetch_one(pool)
        .await
}

/// Each match's latest tick: `(id, version, lateness in µs)`, for a game that reschedules
/// one `period` after the scheduled time (noop).
async fn matches_latest_ticks(
    pool: &PgPool,
    period: Duration,
) -> sqlx::Result<Vec<(String, i64, i64)>> {
    let rows = sqlx::query!(
        r#"
        SELECT id, version,
               (extract(epoch FROM updated_at - (next_tick_at - make_interval(secs => $1)))
                * 1e6)::int8 AS "late_us!"
        FROM postgame.matches
        WHERE version > 0 AND next_tick_at IS NOT NULL
        "#,
        period.as_secs_f64()
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.id.to_string(), r.version, r.late_us))
        .collect())
}

/// Each match's latest `state` value: `(channel, version, lateness in µs)` (`ts` is the
/// ticker transaction's `now()`, `at` the tick's scheduled time), for Pong.
async fn latest_tick_lateness(pool: &PgPool) -> sqlx::Result<Vec<(String, i64, i64)>> {
    let rows = sqlx::query!(
        r#"
        SELECT channel, version,
               (extract(epoch FROM ts - (data->>'at')::timestamptz) * 1e6)::int8 AS "late_us!"
        FROM postgame.latest
        WHERE name = 'state' AND data ? 'at' AND data->>'status' = 'playing'
        "#
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.channel, r.version, r.late_us))
        .collect())
}

/// What the run left behind: matches that ended (off the clock), matches whose last tick
/// failed, and the slots Pong's lateness policy dropped.
async fn matches_outcome(pool: &PgPool) -> sqlx::Result<(i64, i64, i64)> {
    let r = sqlx::query!(
        r#"
        SELECT count(*) FILTER (WHERE next_tick_at IS NULL) AS "ended!",
               count(*) FILTER (WHERE last_tick_error IS NOT NULL) AS "failing!",
               coalesce(sum((state->>'dropped')::int8), 0)::int8 AS "dropped!"
        FROM postgame.matches
        "#
    )
    .fetch_one(pool)
    .await?;
    Ok((r.ended, r.failing, r.dropped))
}

/// Makes every match due now, for the baseline.
async fn matches_all_due(pool: &PgPool) -> sqlx::Result<()> {
    sqlx::query!("UPDATE postgame.matches SET next_tick_at = now()")
        .execute(pool)
        .await?;
    Ok(())
}

/// The baseline's statement: claims up to `limit` due matches and reschedules them at
/// once (due again immediately), bumping `version`. Returns how many it updated.
async fn matches_baseline_update(pool: &PgPool, limit: i64) -> sqlx::Result<usize> {
    let rows = sqlx::query!(
        r#"
        UPDATE postgame.matches
        SET next_tick_at = now(), version = version + 1, updated_at = now()
        WHERE id IN (
            SELECT id FROM postgame.matches
            WHERE next_tick_at <= now()
            ORDER BY next_tick_at
            LIMIT $1
            FOR UPDATE SKIP LOCKED)
        RETURNING id, version
        "#,
        limit
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.len())
}

/// Runs the baseline loop with `tasks` concurrent connections for `duration`: rows updated
/// and seconds elapsed. Its commits wait for the WAL flush only when `sync` (as the
/// tickers' do).
async fn baseline(
    db_url: &str,
    tasks: usize,
    limit: i64,
    duration: Duration,
    sync: bool,
) -> anyhow::Result<(u64, f64)> {
    let mut options = <sqlx::postgres::PgConnectOptions as std::str::FromStr>::from_str(db_url)
        .context("DATABASE_URL is not a valid URL")?
        .application_name("postgame bench baseline");
    if !sync {
        options = options.options([("synchronous_commit", "off")]);
    }
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(u32::try_from(tasks).unwrap_or(u32::MAX).max(2))
        .connect_with(options)
        .await
        .context("cannot connect to PostgreSQL")?;
    matches_all_due(&pool).await?;
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let mut handles = Vec::with_capacity(tasks);
    for _ in 0..tasks {
        let (pool, done) = (pool.clone(), Arc::clone(&done));
        handles.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let n = matches_baseline_update(&pool, limit).await?;
                done.fetch_add(n as u64, Ordering::Relaxed);
            }
            Ok::<(), sqlx::Error>(())
        }));
    }
    for h in handles {
        h.await.context("a baseline task panicked")??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    pool.close().await;
    Ok((done.load(Ordering::Relaxed), elapsed))
}

/// Reads progress (ticks since `from`) into `count` and samples each match's latest tick
/// into `hist`, until `stop`.
#[allow(clippy::too_many_arguments)]
async fn sample(
    pool: PgPool,
    workload: Workload,
    period: Duration,
    from: i64,
    count: Arc<AtomicU64>,
    hist: Arc<Mutex<Histogram<u64>>>,
    stop: CancellationToken,
) -> sqlx::Result<()> {
    let mut seen: HashMap<String, i64> = HashMap::new();
    let mut every = tokio::time::interval(SAMPLE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_progress = Instant::now();
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.cancelled() => return Ok(()),
        }
        if last_progress.elapsed() >= Duration::from_millis(250) {
            last_progress = Instant::now();
            let n = matches_ticks(&pool).await?;
            count.store(u64::try_from(n - from).unwrap_or(0), Ordering::Relaxed);
        }
        let rows = match workload {
            Workload::Noop => matches_latest_ticks(&pool, period).await?,
            Workload::Pong => latest_tick_lateness(&pool).await?,
        };
        let Ok(mut h) = hist.lock() else {
            return Ok(());
        };
        for (id, version, late_us) in rows {
            if seen.insert(id, version) != Some(version) {
                let _ = h.record(u64::try_from(late_us).unwrap_or(0).max(1));
            }
        }
    }
}

/// Runs the scenario against the (fresh, empty) database at `db_url`, with the handlers of
/// `games` (which must hold the `--game`).
pub async fn run(
    db_url: &str,
    args: &TicksArgs,
    show_progress: bool,
    games: &Registry,
) -> anyhow::Result<Report> {
    let workload = match args.game.as_str() {
        pong::NAME => Workload::Pong,
        noop::NAME => Workload::Noop,
        other => bail!("--game must be pong or noop, not {other:?}"),
    };
    if args.matches == 0 || args.tickers == 0 || args.tick_batch < 1 {
        bail!("--matches, --tickers and --tick-batch must be at least 1");
    }
    if !(args.duration > 0.0 && args.duration.is_finite()) {
        bail!("--duration must be a positive number of seconds");
    }
    if workload == Workload::Pong && (args.hz - f64::from(pong::HZ)).abs() > 1e-9 {
        bail!(
            "pong ticks at {} Hz; use --game noop for another rate",
            pong::HZ
        );
    }
    if !(args.hz > 0.0 && args.hz <= noop::MAX_HZ) {
        bail!("--hz must be above 0 and at most {}", noop::MAX_HZ);
    }
    let period = Duration::from_secs_f64(1.0 / args.hz);
    let total = Duration::from_secs_f64(args.duration);
    let warmup = LEAD + Duration::from_secs_f64((args.duration * 0.1).clamp(1.0, 5.0));
    if workload == Workload::Pong {
        // Late ticks only slow game time down, so this is a lower bound in wall time.
        let steps = pong::idle_match_steps(pong::MAX_POINTS_TO_WIN);
        let lasts = Duration::from_micros(steps * pong::PERIOD_US as u64);
        if warmup + total >= lasts {
            bail!(
                "a pong match between idle paddles lasts {:.0} s, less than the warm-up \
                 ({:.0} s) plus --duration; use --game noop for longer runs",
                lasts.as_secs_f64(),
                warmup.as_secs_f64()
            );
        }
    }

    crate::setup::database_ready(db_url).await?;
    let pool = crate::store::pool_connect(db_url, 4, "postgame bench").await?;
    crate::store::migrate(&pool).await?;

    // The matches, first ticks spread over one period starting LEAD from now.
    let base = db_now(&pool).await? + chrono::Duration::from_std(LEAD)?;
    let rows = (0..args.matches)
        .map(|i| new_match(games, workload, args.hz, base, (i, args.matches)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for chunk in rows.chunks(5000) {
        matches_insert(&pool, workload.name(), chunk).await?;
    }
    drop(rows);

    let tickers = Tickers::start(db_url, args, games).await?;
    if show_progress {
        eprintln!(
            "{} {} matches at {} Hz, {} ticker {}; warming up {:.1} s",
            args.matches,
            workload.name(),
            args.hz,
            args.tickers,
            if args.processes { "processes" } else { "tasks" },
            warmup.as_secs_f64()
        );
    }
    tokio::time::sleep(warmup).await;

    // The measured window.
    let from_ticks = matches_ticks(&pool).await?;
    let from = db_now(&pool).await?;
    let started = Instant::now();
    let count = Arc::new(AtomicU64::new(0));
    let hist = Arc::new(Mutex::new(histogram()));
    let stop = CancellationToken::new();
    let sampler = tokio::spawn(sample(
        pool.clone(),
        workload,
        period,
        from_ticks,
        Arc::clone(&count),
        Arc::clone(&hist),
        stop.clone(),
    ));
    let bar = show_progress.then(|| progress("ticks", Arc::clone(&count), total, stop.clone()));
    tokio::time::sleep(total).await;
    let to = db_now(&pool).await?;
    let to_ticks = matches_ticks(&pool).await?;
    let elapsed = started.elapsed().as_secs_f64();
    stop.cancel();
    sampler.await.context("the sampler panicked")??;
    if let Some(bar) = bar {
        let _ = bar.await;
    }
    tickers.stop().await;
    let (ended, failing, dropped) = matches_outcome(&pool).await?;

    let hist = hist
        .lock()
        .map_err(|_| anyhow::anyhow!("histogram lock poisoned"))?
        .clone();

    if show_progress {
        eprintln!(
            "baseline: {} tasks of batched UPDATE … RETURNING for {:.0} s",
            args.tickers, args.duration
        );
    }
    let (baseline_updates, baseline_elapsed) = baseline(
        db_url,
        args.tickers,
        args.tick_batch,
        total,
        args.sync_ticks,
    )
    .await?;
    pool.close().await;

    let ticks = u64::try_from(to_ticks - from_ticks).unwrap_or(0);
    let window = (to - from)
        .to_std()
        .map_or(elapsed, |d| d.as_secs_f64())
        .max(1e-3);
    let achieved = ticks as f64 / window;
    let baseline_per_s = baseline_updates as f64 / baseline_elapsed.max(1e-3);
    let requested = args.matches as f64 * args.hz;
    Ok(Report {
        scenario: "ticks",
        throughput_per_s: achieved,
        unit: "ticks",
        count: ticks,
        errors: u64::try_from(failing).unwrap_or(0),
        elapsed_s: window,
        latency_ms: Latency::of(&hist),
        latency_of: workload.lateness_of(),
        params: json!({
            "game": workload.name(),
            "matches": args.matches,
            "hz": args.hz,
            "tickers": args.tickers,
            "processes": args.processes,
            "tick_batch": args.tick_batch,
            "commit": if args.sync_ticks { "sync" } else { "async when nothing is logged" },
            "duration_s": args.duration,
            "requested_ticks_per_s": requested,
            "achieved_ratio": achieved / requested,
            "lateness_samples": hist.len(),
            "matches_ended": ended,
            "pong_dropped_steps": dropped,
            "baseline_updates_per_s": baseline_per_s,
            "ratio_to_baseline": achieved / baseline_per_s.max(1e-9),
        }),
    })
}
