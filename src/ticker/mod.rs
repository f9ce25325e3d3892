//! Tickers: every match's clock (turn timers, reconnect grace, game loops).
//!
//! A match that needs its clock has a `next_tick_at`; no ticker owns a match. Each
//! [`Ticker::run_once`] is one transaction: claim a batch of due matches (`next_tick_at <=
//! now()`, database time only, earliest first), run each game's tick with the scheduled
//! and the actual time, then save the new states and schedules, append the outgoing
//! messages (and a lobby announcement per status change) and commit.
//!
//! Invariants:
//! - **Exclusion.** A match is ticked only while its transaction holds
//!   `postgame.try_lock_match` (the lock workers take for control messages) and its row
//!   `FOR NO KEY UPDATE`; so no two tickers, and no ticker and worker, change one match at
//!   once. Busy matches are skipped, never waited for.
//! - **Exactly once per due time.** The commit moves `next_tick_at` together with the
//!   state. A ticker killed before its commit changes nothing and its locks die with its
//!   connection: the match is still due and the next claim, by any ticker, takes it at once.
//! - **Lateness is the game's choice.** A tick gets [`Tick`] with `scheduled` and `now`;
//!   the game's `next_tick_at` decides whether a late match catches up (next = scheduled +
//!   period, possibly already due) or skips to now (next = now + period).
//! - **Durability follows the log.** A batch whose ticks append nothing to the message log
//!   (only state, schedules and latest values: a game loop between two points) commits
//!   with `synchronous_commit = off` unless [`TickerConfig::sync_commit`]: it does not wait
//!   for its WAL flush. A crash of Postgres (not of a ticker) may then lose the last few
//!   hundred milliseconds of such ticks (at most 3 × `wal_writer_delay`); their matches
//!   come back at the state before, still due, and are ticked again. Nothing logged is lost:
//!   a batch that logs a message, records a failure or ends a match commits synchronously,
//!   and a synchronous commit flushes every earlier commit's WAL with its own, so no
//!   durable step can depend on a lost one.
//! - **A failing tick never stops the ticker.** An error or a panic changes nothing but
//!   the match's schedule: it is pushed back with a doubling backoff, and after
//!   [`TickerConfig::max_failures`] consecutive failures the match's clock is stopped
//!   (`next_tick_at` NULL, error kept in `matches.last_tick_error`).
//!
//! [`Ticker::run`] is the policy around it: straight on while something was due, otherwise
//! sleep until the earliest `next_tick_at`, a wake-up (a worker moved a tick earlier, in
//! this process or by NOTIFY) or the poll interval, whichever comes first.
//!
//! Tickers run the clock, so they also end the life of ended matches:
//! [`Ticker::run_prune`] (one task per process with the ticker role) deletes, every
//! [`TickerConfig::prune_interval`], the matches whose `ended_at` is older than
//! [`TickerConfig::match_retention`] ([`matches_prune_ended`]); their control rows go with
//! them, their message log is left to its own retention.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgExecutor, PgPool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::broadcast::notify::Notifier;
use crate::claim_loop::{self, Backoff, Step};
use crate::game::limit::run_limited;
use crate::game::{Registry, Tick};
use crate::ids::MatchId;
use crate::matches::{BatchWrites, LoadedMatch};

/// Consecutive failed ticks after which a match's clock is stopped.
pub const DEFAULT_MAX_FAILURES: i32 = 8;
/// Push-back after a match's first failed tick; it doubles with every further failure.
pub const DEFAULT_BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Longest push-back after a failed tick.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Longest run of one tick handler (below the default lease, so the batch's transaction
/// is still alive to record the overrun); the same as the workers'.
pub const DEFAULT_HANDLER_LIMIT: Duration = crate::game::limit::DEFAULT_HANDLER_LIMIT;
/// How long an ended match is kept before it is deleted.
pub const DEFAULT_MATCH_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// How often a process with the ticker role prunes ended matches.
pub const DEFAULT_PRUNE_INTERVAL: Duration = Duration::from_secs(60);
/// Matches deleted per prune statement (short statements, short locks).
const PRUNE_BATCH: i64 = 1000;
/// How often a process with the ticker role samples the `postgame_matches_due` gauge.
pub const GAUGE_INTERVAL: Duration = Duration::from_secs(1);
/// Pause when matches are due but all of them are locked by other tickers or workers
/// (they are being handled; look again shortly rather than spin).
const BUSY_PAUSE: Duration = Duration::from_millis(5);

/// Settings of a ticker.
#[derive(Debug, Clone)]
pub struct TickerConfig {
    /// Due matches claimed per transaction.
    pub batch_size: i64,
    /// Longest sleep without looking at the database (the fallback for a lost NOTIFY).
    pub poll_interval: Duration,
    /// Consecutive failed ticks after which the match's clock is stopped.
    pub max_failures: i32,
    /// Push-back after the first failed tick, doubling per further failure…
    pub backoff_min: Duration,
    /// …up to this.
    pub backoff_max: Duration,
    /// How long a match stays after it ended (`matches.ended_at`) before it is deleted.
    pub match_retention: Duration,
    /// How often [`Ticker::run_prune`] looks for ended matches to delete.
    pub prune_interval: Duration,
    /// Commit every batch synchronously, even those that log nothing (see the module
    /// docs); off by default.
    pub sync_commit: bool,
    /// Longest run of one tick handler; an overrun counts as a failed tick.
    pub handler_limit: Duration,
}

impl TickerConfig {
    /// A configuration with the default failure policy.
    pub fn new(batch_size: i64, poll_interval: Duration) -> Self {
        Self {
            batch_size: batch_size.max(1),
            poll_interval,
            max_failures: DEFAULT_MAX_FAILURES,
            backoff_min: DEFAULT_BACKOFF_MIN,
            backoff_max: DEFAULT_BACKOFF_MAX,
            match_retention: DEFAULT_MATCH_RETENTION,
            prune_interval: DEFAULT_PRUNE_INTERVAL,
            sync_commit: false,
            handler_limit: DEFAULT_HANDLER_LIMIT,
        }
    }

    /// The push-back after the `failures`-th consecutive failure (1-based).
    pub fn backoff(&self, failures: i32) -> Duration {
        let doublings = u32::try_from(failures.saturating_sub(1))
            .unwrap_or(0)
            .min(20);
        self.backoff_min
            .saturating_mul(1 << doublings)
            .min(self.backoff_max)
    }
}

/// What one [`Ticker::run_once`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Due matches claimed.
    pub claimed: usize,
    /// Ticks that went through.
    pub ticked: usize,
    /// Ticks that failed (pushed back or stopped).
    pub failed: usize,
}

/// A ticker; cheap to clone, run as many as you like, in as many processes as you like.
#[derive(Clone)]
pub struct Ticker {
    pool: PgPool,
    games: Registry,
    notifier: Arc<Notifier>,
    config: TickerConfig,
}

/// A claimed due match, with the database's clock at the claim.
#[derive(Debug)]
struct DueMatch {
    id: Uuid,
    game: String,
    status: String,
    config: Value,
    state: Value,
    next_tick_at: DateTime<Utc>,
    tick_failures: i32,
    now: DateTime<Utc>,
}

/// A failed tick to record.
#[derive(Debug)]
struct TickFailure {
    id: Uuid,
    failures: i32,
    error: String,
    /// The pushed-back schedule, or `None` when the clock is stopped.
    next_tick_at: Option<DateTime<Utc>>,
}

/// Claims up to `limit` due matches, earliest first, skipping matches another ticker or a
/// worker holds, and locks them (match lock and row). Every row carries the database's
/// clock, the only "now" a tick sees.
async fn matches_claim_due(conn: &mut PgConnection, limit: i64) -> sqlx::Result<Vec<DueMatch>> {
    // The lock function runs on a bounded window of the earliest due matches (a subquery
    // with a LIMIT is never flattened, and the window comes out of the partial index in
    // next_tick_at order, so it is evaluated lazily, at most `limit` times successfully).
    // The outer `next_tick_at <= now()` is re-checked on the latest row version when the
    // row is locked: a match that another ticker ticked and committed after this
    // statement's snapshot is no longer due and is left alone.
    sqlx::query_as!(
        DueMatch,
        r#"
        SELECT m.id, m.game, m.status, m.config, m.state,
               m.next_tick_at AS "next_tick_at!", m.tick_failures, now() AS "now!"
        FROM postgame.matches m
        WHERE m.id = ANY(ARRAY(
            SELECT w.id FROM (
                SELECT d.id, d.next_tick_at FROM postgame.matches d
                WHERE d.next_tick_at <= now()
                ORDER BY d.next_tick_at
                LIMIT $1::int8 * 4
            ) w
            WHERE postgame.try_lock_match(w.id)
            ORDER BY w.next_tick_at
            LIMIT $1))
          AND m.next_tick_at <= now()
        ORDER BY m.next_tick_at
        FOR NO KEY UPDATE SKIP LOCKED
        "#,
        limit
    )
    .fetch_all(conn)
    .await
}

/// Records failed ticks: the failure count, the error and the pushed-back (or stopped)
/// schedule.
async fn matches_tick_fail(conn: &mut PgConnection, failures: &[TickFailure]) -> sqlx::Result<()> {
    if failures.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = failures.iter().map(|f| f.id).collect();
    let counts: Vec<i32> = failures.iter().map(|f| f.failures).collect();
    let errors: Vec<String> = failures
        .iter()
        .map(|f| f.error.chars().take(2000).collect())
        .collect();
    let ticks: Vec<Option<DateTime<Utc>>> = failures.iter().map(|f| f.next_tick_at).collect();
    sqlx::query!(
        r#"
        UPDATE postgame.matches m
        SET tick_failures = u.failures, last_tick_error = u.error,
            next_tick_at = u.next_tick_at
        FROM unnest($1::uuid[], $2::int4[], $3::text[], $4::timestamptz[])
            AS u(id, failures, error, next_tick_at)
        WHERE m.id = u.id
        "#,
        &ids,
        &counts,
        &errors,
        &ticks as &[Option<DateTime<Utc>>]
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Resets the failure count of matches whose tick went through again.
async fn matches_tick_recover(conn: &mut PgConnection, ids: &[Uuid]) -> sqlx::Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query!(
        "UPDATE postgame.matches SET tick_failures = 0 WHERE id = ANY($1)",
        ids
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// How long until the earliest scheduled tick, by the database's clock (negative when one
/// is already due); `None` when no match is on the clock.
async fn matches_next_tick_in(db: impl PgExecutor<'_>) -> sqlx::Result<Option<f64>> {
    sqlx::query_scalar!(
        r#"
        SELECT extract(epoch FROM min(next_tick_at) - clock_timestamp())::float8
        FROM postgame.matches
        "#
    )
    .fetch_one(db)
    .await
}

/// Matches due now (`next_tick_at <= now()`) and matches on the clock at all, from the
/// partial index on `next_tick_at`.
pub async fn matches_clock_counts(db: impl PgExecutor<'_>) -> sqlx::Result<(i64, i64)> {
    let r = sqlx::query!(
        r#"
        SELECT count(*) FILTER (WHERE next_tick_at <= now()) AS "due!",
               count(*) AS "scheduled!"
        FROM postgame.matches WHERE next_tick_at IS NOT NULL
        "#
    )
    .fetch_one(db)
    .await?;
    Ok((r.due, r.scheduled))
}

/// Deletes up to `limit` matches that ended more than `retention` ago (database time),
/// oldest first, from the partial index on `ended_at`. Matches locked by a worker or a
/// ticker are skipped (the next prune takes them); a match whose `ended_at` a concurrent
/// rematch cleared is re-checked on its latest row version and left alone. Their control
/// rows go with them (ON DELETE CASCADE). Returns how many were deleted.
pub async fn matches_prune_ended(
    db: impl PgExecutor<'_>,
    retention: Duration,
    limit: i64,
) -> sqlx::Result<u64> {
    let done = sqlx::query!(
        r#"
        DELETE FROM postgame.matches
        WHERE id IN (
            SELECT id FROM postgame.matches
            WHERE ended_at < now() - make_interval(secs => $1)
            ORDER BY ended_at
            LIMIT $2
            FOR UPDATE SKIP LOCKED)
        "#,
        retention.as_secs_f64(),
        limit
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}

impl Ticker {
    pub fn new(
        pool: PgPool,
        games: Registry,
        notifier: Arc<Notifier>,
        config: TickerConfig,
    ) -> Self {
        Self {
            pool,
            games,
            notifier,
            config,
        }
    }

    /// The failure record of a match whose tick failed: pushed back with the doubling
    /// backoff from `now`, or its clock stopped after too many failures.
    fn failure(
        &self,
        id: Uuid,
        tick_failures: i32,
        error: String,
        now: DateTime<Utc>,
    ) -> TickFailure {
        let failures_now = tick_failures.saturating_add(1);
        let next_tick_at = if failures_now >= self.config.max_failures {
            tracing::error!(match_id = %id, failures = failures_now, error,
                "tick failed too often; the match's clock is stopped");
            None
        } else {
            let backoff = self.config.backoff(failures_now);
            tracing::warn!(match_id = %id, failures = failures_now, ?backoff, error,
                "tick failed; retrying later");
            // A backoff of at most a few minutes always fits a chrono duration.
            Some(now + chrono::Duration::from_std(backoff).unwrap_or_default())
        };
        TickFailure {
            id,
            failures: failures_now,
            error,
            next_tick_at,
        }
    }

    /// Claims and ticks one batch of due matches in one transaction.
    pub async fn run_once(&self) -> sqlx::Result<Outcome> {
        let mut tx = self.pool.begin().await?;
        let due = matches_claim_due(&mut tx, self.config.batch_size).await?;
        if due.is_empty() {
            tx.commit().await?;
            return Ok(Outcome::default());
        }
        let claimed = due.len();
        let mut writes = BatchWrites::default();
        let mut failures = Vec::new();
        let mut recovered = Vec::new();
        // The handlers run on a thread of their own, one after the other, each within
        // `handler_limit` ([`run_limited`]): a tick that overruns it is recorded as a
        // failure (pushed back, then its clock stopped), the matches after it are left for
        // the next claim (still due; their locks go at this commit), and the stuck thread
        // is abandoned.
        let heads: Vec<(Uuid, i32)> = due.iter().map(|r| (r.id, r.tick_failures)).collect();
        let games = self.games.clone();
        let (ran, overrun) = run_limited(due, self.config.handler_limit, move |row, _| {
            let tick = Tick {
                scheduled: row.next_tick_at,
                now: row.now,
            };
            let failures = row.tick_failures;
            let m = LoadedMatch {
                id: row.id,
                game: row.game,
                status: row.status,
                config: row.config,
                state: row.state,
                next_tick_at: Some(row.next_tick_at),
            };
            let applied = match games.get(&m.game) {
                Some(game) => Ok(game.tick(MatchId(m.id), &m.config, &m.state, tick)),
                None => Err(format!("unknown game {:?}", m.game)),
            };
            (m, tick, failures, applied)
        })
        .await;
        for (m, tick, tick_failures, applied) in ran {
            let lateness = (tick.now - tick.scheduled).to_std().unwrap_or_default();
            metrics::histogram!("postgame_tick_lateness_seconds").record(lateness.as_secs_f64());
            let error = match applied {
                Ok(applied) => match writes.record(&m, applied) {
                    (0, error) => error.unwrap_or_else(|| "the tick applied nothing".into()),
                    _ => {
                        if tick_failures > 0 {
                            recovered.push(m.id);
                        }
                        continue;
                    }
                },
                Err(e) => e,
            };
            failures.push(self.failure(m.id, tick_failures, error, tick.now));
        }
        if let Some(overrun) = overrun {
            let (id, tick_failures) = heads[overrun.job];
            let error = format!(
                "the tick ran longer than the handler time limit ({:?})",
                self.config.handler_limit
            );
            failures.push(self.failure(id, tick_failures, error, chrono::Utc::now()));
        }

        let written = writes.write(&mut tx).await?;
        matches_tick_fail(&mut tx, &failures).await?;
        matches_tick_recover(&mut tx, &recovered).await?;
        let logs_nothing = writes.messages.is_empty()
            && failures.is_empty()
            && writes.updates.iter().all(|u| !u.over);
        if logs_nothing && !self.config.sync_commit {
            sqlx::query!("SET LOCAL synchronous_commit = off")
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;

        self.notifier.written(&written);
        let ticked = writes.updates.len();
        metrics::counter!("postgame_ticks_total").increment(ticked as u64);
        metrics::counter!("postgame_tick_failures_total").increment(failures.len() as u64);
        metrics::histogram!("postgame_tick_batch_size").record(claimed as f64);
        Ok(Outcome {
            claimed,
            ticked,
            failed: failures.len(),
        })
    }

    /// Deletes every match that ended longer than the retention ago, in batches. Returns
    /// how many were deleted.
    pub async fn prune_once(&self) -> sqlx::Result<u64> {
        let mut total = 0;
        loop {
            let n =
                matches_prune_ended(&self.pool, self.config.match_retention, PRUNE_BATCH).await?;
            total += n;
            if n < PRUNE_BATCH as u64 {
                break;
            }
        }
        if total > 0 {
            tracing::info!(deleted = total, "pruned ended matches");
            metrics::counter!("postgame_matches_pruned_total").increment(total);
        }
        Ok(total)
    }

    /// Prunes ended matches every [`TickerConfig::prune_interval`] until `stop`; a failed
    /// prune is logged and tried again at the next interval.
    pub async fn run_prune(self, stop: CancellationToken) {
        let mut every = tokio::time::interval(self.config.prune_interval.max(BUSY_PAUSE));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = stop.cancelled() => return,
            }
            if let Err(e) = self.prune_once().await {
                tracing::warn!(error = %e, "pruning ended matches failed; retrying later");
            }
        }
    }

    /// Sets the `postgame_matches_due` and `postgame_matches_scheduled` gauges every
    /// [`GAUGE_INTERVAL`] until `stop` (one task per process with the ticker role). A
    /// backlog of due matches that keeps growing means the tickers cannot keep up.
    pub async fn run_gauges(self, stop: CancellationToken) {
        claim_loop::every(GAUGE_INTERVAL, &stop, || async {
            match matches_clock_counts(&self.pool).await {
                Ok((due, scheduled)) => {
                    metrics::gauge!("postgame_matches_due").set(due as f64);
                    metrics::gauge!("postgame_matches_scheduled").set(scheduled as f64);
                }
                Err(e) => tracing::debug!(error = %e, "sampling the clock gauges failed"),
            }
        })
        .await;
    }

    /// How long to sleep when nothing was due: until the earliest scheduled tick, at most
    /// the poll interval.
    async fn idle_pause(&self) -> sqlx::Result<Duration> {
        let poll = self.config.poll_interval;
        Ok(match matches_next_tick_in(&self.pool).await? {
            None => poll,
            Some(s) if s <= 0.0 => BUSY_PAUSE.min(poll),
            Some(s) => Duration::try_from_secs_f64(s).map_or(poll, |d| d.min(poll)),
        })
    }

    /// Ticks until `stop`: straight on while matches were due, otherwise sleeping until the
    /// earliest `next_tick_at`, `wake` (a tick scheduled sooner, by NOTIFY or by this
    /// process's workers) or the poll interval; after a database error, backing off 50 ms
    /// doubling to 3.2 s, so a ticker whose connection died is back within a few game
    /// ticks ([`claim_loop`]).
    pub async fn run(self, wake: Arc<Notify>, stop: CancellationToken) {
        let backoff = Backoff {
            first: Duration::from_millis(50),
            max: Duration::from_millis(3200),
        };
        claim_loop::run("ticker", &wake, &stop, backoff, || async {
            Ok(match self.run_once().await? {
                o if o.claimed > 0 => Step::Worked,
                _ => Step::Idle(self.idle_pause().await?),
            })
        })
        .await;
    }
}
