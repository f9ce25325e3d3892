//! Workers: apply control messages to match state.
//!
//! [`Worker::run_once`] is one transaction: claim a batch (`FOR UPDATE SKIP LOCKED`, match
//! locks taken in the claim), run each match's messages through its game in id order,
//! then save the new states, append the outgoing messages to the log and delete the
//! processed rows, and commit. That commit is the exactly-once point: a worker killed
//! before it leaves the rows in the queue for the next claim, with no effect anywhere.
//! [`Worker::run`] is the policy around it: loop while there is work, sleep until a
//! NOTIFY (or a slow poll) when there is none, back off on database errors. Between
//! batches it also pairs matchmaker tickets ([`crate::matchmaker::pair_once`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::broadcast::notify::Notifier;
use crate::claim_loop::{self, Backoff, Step};
use crate::game::limit::run_limited;
use crate::game::{Input, Registry, PRESENCE_CONNECTED, PRESENCE_DISCONNECTED};
use crate::ids::{ClientId, MatchId};
use crate::matches::{matches_load, BatchWrites, Written};
use crate::queue::{
    control_claim, control_delete, control_fail, control_heads_settle, control_holds_clear, Claim,
    ControlRow, Failure,
};

/// Longest a busy worker goes without trying to pair matchmaker tickets
/// ([`crate::matchmaker::pair_once`]); an idle one tries at every wake-up and poll.
pub const MATCHMAKER_EVERY: Duration = Duration::from_millis(50);

/// Settings of a worker.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub batch_size: i64,
    /// Most rows of one match in one batch (fairness: see [`control_claim`]).
    pub batch_per_match: i64,
    pub max_attempts: i32,
    pub poll_interval: Duration,
    /// Longest run of one input's handler; an overrun fails that input.
    pub handler_limit: Duration,
}

/// What one [`Worker::run_once`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Matches whose heads the claim took (with or without rows).
    pub matches: usize,
    pub claimed: usize,
    pub applied: usize,
    pub failed: usize,
}

/// A worker; cheap to clone, run as many as you like, in as many processes as you like.
#[derive(Clone)]
pub struct Worker {
    pool: PgPool,
    games: Registry,
    notifier: Arc<Notifier>,
    config: WorkerConfig,
}

/// Turns a queue row into a game input.
fn input_of(row: &ControlRow) -> Result<Input, String> {
    let client = row
        .client_id
        .as_deref()
        .and_then(ClientId::parse)
        .ok_or_else(|| "control message without a valid client".to_owned())?;
    let connection = || {
        row.data
            .get("connection")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| "presence message without a connection".to_owned())
    };
    Ok(match row.name.as_str() {
        PRESENCE_CONNECTED => Input::Connected {
            client,
            connection: connection()?,
        },
        PRESENCE_DISCONNECTED => Input::Disconnected {
            client,
            connection: connection()?,
        },
        _ => Input::Client {
            msg_id: row.id,
            client,
            name: row.name.clone(),
            data: row.data.clone(),
        },
    })
}

impl Worker {
    pub fn new(
        pool: PgPool,
        games: Registry,
        notifier: Arc<Notifier>,
        config: WorkerConfig,
    ) -> Self {
        Self {
            pool,
            games,
            notifier,
            config,
        }
    }

    /// Claims and applies one batch in one transaction.
    pub async fn run_once(&self) -> sqlx::Result<Outcome> {
        Ok(self.run_once_applied().await?.0)
    }

    /// [`Worker::run_once`], also returning the ids of the rows it applied (committed).
    pub async fn run_once_applied(&self) -> sqlx::Result<(Outcome, Vec<i64>)> {
        let started = std::time::Instant::now();
        let mut tx = self.pool.begin().await?;
        let claim =
            control_claim(&mut tx, self.config.batch_size, self.config.batch_per_match).await?;
        let applied = claim_apply(&mut tx, claim, &self.games, &self.config).await?;
        tx.commit().await?;
        applied.announce(&self.notifier);
        if applied.outcome.claimed > 0 {
            metrics::histogram!("postgame_apply_seconds").record(started.elapsed().as_secs_f64());
        }
        Ok((applied.outcome, applied.processed))
    }

    /// Runs batches until `stop`: straight on while there is work, otherwise sleeping until
    /// `wake` (NOTIFY or this process's own publishers) or the poll interval; after a
    /// database error, backing off 200 ms doubling to 6.4 s ([`claim_loop`]).
    pub async fn run(self, wake: Arc<Notify>, stop: CancellationToken) {
        let backoff = Backoff {
            first: Duration::from_millis(200),
            max: Duration::from_millis(6400),
        };
        // Matchmaking shares the loop: tried after every batch, at most every
        // MATCHMAKER_EVERY while the queue keeps the worker busy.
        let last_pairing = std::sync::Mutex::new(None::<tokio::time::Instant>);
        claim_loop::run("worker batch", &wake, &stop, backoff, || async {
            let o = self.run_once().await?;
            let busy = o.claimed > 0 || o.matches > 0;
            let due = {
                let mut last = last_pairing.lock().unwrap_or_else(|e| e.into_inner());
                let due = !busy || last.map_or(true, |t| t.elapsed() >= MATCHMAKER_EVERY);
                if due {
                    *last = Some(tokio::time::Instant::now());
                }
                due
            };
            let paired = if due {
                crate::matchmaker::pair_once(
                    &self.pool,
                    &self.games,
                    &self.notifier,
                    self.config.handler_limit,
                )
                .await?
            } else {
                0
            };
            Ok(if busy || paired > 0 {
                Step::Worked
            } else {
                Step::Idle(self.config.poll_interval)
            })
        })
        .await;
    }
}

/// What [`claim_apply`] did in its (uncommitted) transaction.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    pub outcome: Outcome,
    /// The ids of the rows applied (deleted).
    pub processed: Vec<i64>,
    /// What to announce once committed.
    pub written: Written,
    /// A tick appeared or moved earlier.
    pub tick_sooner: bool,
    /// Inputs dead-lettered.
    pub dead: u64,
}

impl Applied {
    /// After the commit: wakes the fan-out (and the tickers when a tick came sooner) and
    /// counts the work.
    pub fn announce(&self, notifier: &Notifier) {
        if self.outcome.claimed == 0 {
            return;
        }
        notifier.written(&self.written);
        // Only a tick that appeared or moved earlier can be missed by a sleeping ticker.
        if self.tick_sooner {
            notifier.tick_scheduled();
        }
        metrics::counter!("postgame_control_applied_total").increment(self.processed.len() as u64);
        metrics::counter!("postgame_control_failed_total").increment(self.outcome.failed as u64);
        metrics::counter!("postgame_control_dead_total").increment(self.dead);
        metrics::histogram!("postgame_worker_batch_size").record(self.outcome.claimed as f64);
    }
}

/// Applies what `claim` took, in the claiming transaction `tx` (not committed here): runs
/// each match's messages through its game in id order (each input within the handler time
/// limit), saves the new states, appends the outgoing messages to the log, deletes the
/// processed rows, records failures (retry hold or dead letter) and settles the claimed
/// heads. Shared by workers and by the publisher's fast apply
/// ([`crate::queue::publisher`]), so a message has the same effect whichever path applies
/// it.
pub(crate) async fn claim_apply(
    tx: &mut PgConnection,
    claim: Claim,
    games: &Registry,
    config: &WorkerConfig,
) -> sqlx::Result<Applied> {
    let (rows, now) = (claim.rows, claim.now);
    if rows.is_empty() {
        // Heads whose rows were consumed meanwhile (or stale ones) are removed here.
        control_heads_settle(tx, &claim.matches).await?;
        return Ok(Applied {
            outcome: Outcome {
                matches: claim.matches.len(),
                ..Outcome::default()
            },
            ..Applied::default()
        });
    }
    // Commit to claim (zero on the fast apply, which claims in the inserting transaction).
    let wait = metrics::histogram!("postgame_queue_wait_seconds");
    for row in &rows {
        let waited = (row.now - row.created_at).num_microseconds().unwrap_or(0);
        wait.record(waited.max(0) as f64 / 1e6);
    }
    // Group by match, keeping id order inside each group.
    let mut order: Vec<Uuid> = Vec::new();
    let mut groups: HashMap<Uuid, Vec<ControlRow>> = HashMap::new();
    for row in rows.iter() {
        groups
            .entry(row.match_id)
            .or_insert_with(|| {
                order.push(row.match_id);
                Vec::new()
            })
            .push(row.clone());
    }
    let mut loaded: HashMap<Uuid, _> = matches_load(tx, &order)
        .await?
        .into_iter()
        .map(|m| (m.id, m))
        .collect();

    let mut writes = BatchWrites::default();
    let mut processed: Vec<i64> = Vec::new();
    let mut unheld: Vec<Uuid> = Vec::new();
    let mut failures: Vec<(ControlRow, String)> = Vec::new();
    // One job per match: its stored match, game and readable inputs; beside it, the
    // match's error of its first unreadable input, if any.
    let mut jobs = Vec::with_capacity(order.len());
    let mut bad_inputs = Vec::with_capacity(order.len());
    for match_id in &order {
        let group = &groups[match_id];
        // Rows of a deleted match are deleted with it (ON DELETE CASCADE).
        let Some(m) = loaded.remove(match_id) else {
            continue;
        };
        let Some(game) = games.get(&m.game) else {
            failures.push((group[0].clone(), format!("unknown game {:?}", m.game)));
            continue;
        };
        // Inputs up to the first one that cannot even be read.
        let mut inputs = Vec::with_capacity(group.len());
        let mut bad_input = None;
        for row in group {
            match input_of(row) {
                Ok(i) => inputs.push(i),
                Err(e) => {
                    bad_input = Some(e);
                    break;
                }
            }
        }
        jobs.push((m, Arc::clone(game), inputs));
        bad_inputs.push(bad_input);
    }
    // The handlers run on a thread of their own, each input within `handler_limit`
    // ([`run_limited`]): an input that overruns it fails (retried after a hold, then
    // dead-lettered), the inputs before it in its match are retried with it, the
    // matches after it in the batch are left for the next claim (their rows stay; their
    // locks go at this commit), and the stuck thread is abandoned.
    let ids: Vec<Uuid> = jobs.iter().map(|(m, _, _)| m.id).collect();
    let (ran, overrun) = run_limited(
        jobs,
        config.handler_limit,
        move |(m, game, inputs), started| {
            let applied =
                game.apply_reporting(MatchId(m.id), &m.config, &m.state, &inputs, now, started);
            (m, inputs.len(), applied)
        },
    )
    .await;
    for ((m, inputs, applied), bad_input) in ran.into_iter().zip(bad_inputs) {
        let group = &groups[&m.id];
        let (n, error) = writes.record(&m, applied);
        if n > 0 {
            processed.extend(group[..n].iter().map(|r| r.id));
            if group[0].attempts > 0 {
                unheld.push(m.id);
            }
        }
        let error = error.or(if n == inputs { bad_input } else { None });
        if let Some(error) = error {
            failures.push((group[n].clone(), error));
        }
    }
    if let Some(overrun) = overrun {
        let row = &groups[&ids[overrun.job]][overrun.step];
        let error = format!(
            "the handler ran longer than the handler time limit ({:?})",
            config.handler_limit
        );
        failures.push((row.clone(), error));
    }

    control_delete(tx, &processed).await?;
    control_holds_clear(tx, &unheld).await?;
    let mut dead = 0;
    for (row, error) in &failures {
        let f = control_fail(tx, row, error, config.max_attempts).await?;
        tracing::warn!(id = row.id, match_id = %row.match_id, ?f, error, "control message failed");
        if f == Failure::Dead {
            dead += 1;
        }
    }
    // Settled before the writes: settling may take enqueue locks (a match left without
    // rows), and taking them before any channel row keeps one lock order with publishers,
    // which take enqueue locks first and, with the fast apply, channel rows after them.
    control_heads_settle(tx, &claim.matches).await?;
    let written = writes.write(tx).await?;
    Ok(Applied {
        outcome: Outcome {
            matches: claim.matches.len(),
            claimed: rows.len(),
            applied: processed.len(),
            failed: failures.len(),
        },
        processed,
        written,
        tick_sooner: writes.tick_sooner,
        dead,
    })
}
