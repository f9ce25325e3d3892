//! The gateway's group commit. Sessions hand publishes to a shard task (a connection always
//! to the same shard, so its publishes keep their order); the task takes everything that
//! queued up while the previous commit ran and writes it in one transaction: control
//! messages into the control queue, other publishes into the message log, idempotency keys
//! beside them. Each publisher gets its `ack` only after that commit.
//!
//! Every string of a publish is checked before it reaches Postgres (a NUL character is
//! refused as [`PublishError::Invalid`]); a batch that still fails on a statement is split
//! in halves and retried, so one bad publish fails alone and never takes its neighbours
//! with it.
//!
//! Per-client limits are enforced inside the batch transaction, in Postgres, so they hold
//! across connections and gateways: a token bucket per client (`postgame.client_buckets`)
//! and a cap on a client's pending control messages per match. Over a limit a publish is
//! refused with [`PublishError::RateLimited`]; nothing acknowledged is ever dropped.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::broadcast::notify::Notifier;
use crate::broadcast::{log_append, NewMessage};
use crate::ids::{Channel, ChannelKind, ClientId, Seq};
use crate::queue::fast::{self, FastApply};

/// Most publishes one transaction takes.
const MAX_BATCH: usize = 256;
/// Publishes queued per shard before submitters wait.
const SHARD_QUEUE: usize = 4096;

/// One publish, already authorised.
#[derive(Debug, Clone)]
pub struct PublishRequest {
    /// The publishing client; `None` for messages the server itself enqueues.
    pub client: Option<ClientId>,
    pub channel: Channel,
    pub name: String,
    pub data: Value,
    /// Idempotency key (only honoured with a client).
    pub key: Option<String>,
}

/// The durable outcome of a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// Control id for `control:*`, the message's seq for other channels.
    pub msg_id: i64,
    /// The key was seen before; this is the first publish's `msg_id`.
    pub duplicate: bool,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    #[error("match not found")]
    MatchNotFound,
    /// Over a per-client limit (the contract's `rate_limited`).
    #[error("{0}")]
    RateLimited(String),
    /// The publish itself is bad (the contract's `bad_request`), e.g. a NUL character.
    #[error("{0}")]
    Invalid(String),
    #[error("the publish could not be committed")]
    Internal,
    #[error("the server is shutting down")]
    ShuttingDown,
}

/// Per-client publish limits; see the module docs. Zero disables a limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Publishes a client may make at once (the bucket's size).
    pub burst: f64,
    /// Publishes per second a client's bucket refills.
    pub rate: f64,
    /// Pending control messages one client may have in one match.
    pub pending_max: i64,
}

impl Limits {
    /// No limit at all (benchmarks, embedding).
    pub const NONE: Limits = Limits {
        burst: 0.0,
        rate: 0.0,
        pending_max: 0,
    };

    fn bucket_on(&self) -> bool {
        self.burst > 0.0 && self.rate > 0.0
    }
}

struct Job {
    req: PublishRequest,
    /// The connection (or client) whose order this publish keeps.
    order_key: u64,
    /// Set once a publish of the job's connection was refused with `internal`: then this
    /// one is refused too (see [`Publisher::submit_fenced`]).
    fence: Option<Arc<AtomicBool>>,
    /// Position among the shard's submissions (see [`Poison`]).
    ticket: u64,
    reply: oneshot::Sender<Result<Ack, PublishError>>,
}

struct Shard {
    tx: mpsc::Sender<Job>,
    tickets: Arc<AtomicU64>,
}

/// Handle to the shard tasks; cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    shards: Arc<Vec<Shard>>,
}

impl Publisher {
    /// Starts `shards` committing tasks on `tracker`; they stop after `stop`, once their
    /// queues are drained.
    pub fn start(
        pool: PgPool,
        notifier: Arc<Notifier>,
        shards: usize,
        limits: Limits,
        tracker: &TaskTracker,
        stop: CancellationToken,
    ) -> Self {
        Self::start_with(pool, notifier, shards, limits, None, tracker, stop)
    }

    /// [`Publisher::start`], applying control messages of free matches in the publishing
    /// transaction when `fast` is given ([`crate::queue::fast`]).
    pub fn start_with(
        pool: PgPool,
        notifier: Arc<Notifier>,
        shards: usize,
        limits: Limits,
        fast: Option<FastApply>,
        tracker: &TaskTracker,
        stop: CancellationToken,
    ) -> Self {
        // At zero from the start, so `rate()` over it is defined before the first error.
        metrics::counter!("postgame_publish_errors_total").increment(0);
        let mut senders = Vec::new();
        for _ in 0..shards.max(1) {
            let (tx, rx) = mpsc::channel(SHARD_QUEUE);
            let tickets = Arc::new(AtomicU64::new(0));
            senders.push(Shard {
                tx,
                tickets: Arc::clone(&tickets),
            });
            tracker.spawn(shard_run(
                Ctx {
                    pool: pool.clone(),
                    notifier: Arc::clone(&notifier),
                    limits,
                    fast: fast.clone(),
                },
                rx,
                tickets,
                stop.clone(),
            ));
        }
        Self {
            shards: Arc::new(senders),
        }
    }

    /// Queues a publish on the shard of `order_key` (one connection, one key) and returns
    /// the future of its ack.
    pub async fn submit(
        &self,
        order_key: u64,
        req: PublishRequest,
    ) -> impl std::future::Future<Output = Result<Ack, PublishError>> + Send + 'static {
        self.submit_job(order_key, req, None).await
    }

    /// [`submit`](Self::submit) for a connection whose publishes must never overtake a
    /// refused one: `fence` is set when a publish of the connection is refused with
    /// `internal`, and from then on every publish carrying it is refused with `internal`
    /// too, however late it arrives (the caller closes the connection).
    pub async fn submit_fenced(
        &self,
        order_key: u64,
        req: PublishRequest,
        fence: Arc<AtomicBool>,
    ) -> impl std::future::Future<Output = Result<Ack, PublishError>> + Send + 'static {
        self.submit_job(order_key, req, Some(fence)).await
    }

    async fn submit_job(
        &self,
        order_key: u64,
        req: PublishRequest,
        fence: Option<Arc<AtomicBool>>,
    ) -> impl std::future::Future<Output = Result<Ack, PublishError>> + Send + 'static {
        let (reply, rx) = oneshot::channel();
        let shard = &self.shards[(order_key % self.shards.len() as u64) as usize];
        let ticket = shard.tickets.fetch_add(1, SeqCst);
        let job = Job {
            req,
            order_key,
            fence,
            ticket,
            reply,
        };
        let sent = shard.tx.send(job).await.is_ok();
        async move {
            if !sent {
                return Err(PublishError::ShuttingDown);
            }
            rx.await.unwrap_or(Err(PublishError::ShuttingDown))
        }
    }

    /// Publishes and waits for the commit.
    pub async fn publish(&self, order_key: u64, req: PublishRequest) -> Result<Ack, PublishError> {
        self.submit(order_key, req).await.await
    }

    /// [`publish`](Self::publish) with a connection's fence ([`submit_fenced`](Self::submit_fenced)).
    pub async fn publish_fenced(
        &self,
        order_key: u64,
        req: PublishRequest,
        fence: Arc<AtomicBool>,
    ) -> Result<Ack, PublishError> {
        self.submit_fenced(order_key, req, fence).await.await
    }
}

/// What a shard task works with.
struct Ctx {
    pool: PgPool,
    notifier: Arc<Notifier>,
    limits: Limits,
    /// The fast apply, when on.
    fast: Option<FastApply>,
}

/// The refusal rule: once a publish of a connection is refused with `internal` (its batch
/// could not be committed), every publish of that connection the shard had already taken
/// in (a smaller ticket) is refused too, so none of them commits ahead of the refused one
/// and a resend restores the connection's order. Entries are dropped once the shard's queue
/// is empty (no ticket below the mark can still arrive). A WebSocket connection's publishes
/// also carry its fence ([`Publisher::submit_fenced`]), which covers the publishes it reads
/// *after* the refusal as well: a client that pipelines does not know yet.
#[derive(Default)]
struct Poison {
    /// order key → every ticket below this one is refused.
    marks: HashMap<u64, u64>,
    /// The shard's ticket counter.
    tickets: Option<Arc<AtomicU64>>,
}

impl Poison {
    fn refuses(&self, job: &Job) -> bool {
        job.fence.as_ref().is_some_and(|f| f.load(SeqCst))
            || self
                .marks
                .get(&job.order_key)
                .is_some_and(|mark| job.ticket < *mark)
    }

    fn refuse(&mut self, order_key: u64, up_to: u64) {
        let mark = self.marks.entry(order_key).or_default();
        *mark = (*mark).max(up_to);
    }
}

async fn shard_run(
    ctx: Ctx,
    mut rx: mpsc::Receiver<Job>,
    tickets: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    let mut poison = Poison::default();
    let mut received = 0u64;
    let mut pruned = std::time::Instant::now();
    loop {
        // Nothing queued and no ticket in transit: no job a mark covers can still come.
        if !poison.marks.is_empty() && rx.is_empty() && tickets.load(SeqCst) == received {
            poison.marks.clear();
        }
        if ctx.limits.bucket_on() && pruned.elapsed() > std::time::Duration::from_secs(60) {
            pruned = std::time::Instant::now();
            if let Err(e) = sqlx::query("SELECT postgame.client_buckets_prune()")
                .execute(&ctx.pool)
                .await
            {
                tracing::warn!(error = %e, "pruning client buckets failed");
            }
        }
        let first = tokio::select! {
            job = rx.recv() => match job { Some(j) => j, None => return },
            _ = stop.cancelled() => {
                // Drain what was already accepted, then stop.
                rx.close();
                match rx.try_recv() { Ok(j) => j, Err(_) => return }
            }
        };
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        received += jobs.len() as u64;
        // The mark of a refusal covers every ticket handed out so far: those jobs were
        // submitted before the refusal, whether or not they are in this batch yet.
        poison.tickets = Some(Arc::clone(&tickets));
        let mut live = Vec::with_capacity(jobs.len());
        for job in jobs {
            if poison.refuses(&job) {
                refuse_internal(job);
            } else {
                live.push(job);
            }
        }
        if !live.is_empty() {
            commit_jobs(&ctx, live, &mut poison, ctx.fast.as_ref()).await;
        }
    }
}

/// Commits `jobs`, splitting the batch in halves after a statement error so that only the
/// culprit fails; a lost connection or an unknown outcome refuses them all (see
/// [`commit_batch_checked`] and [`Poison`]). With `fast`, an error of the fast apply
/// writes the whole batch again without it.
async fn commit_jobs(ctx: &Ctx, jobs: Vec<Job>, poison: &mut Poison, fast: Option<&FastApply>) {
    let jobs: Vec<Job> = jobs
        .into_iter()
        .filter_map(|job| {
            if poison.refuses(&job) {
                refuse_internal(job);
                None
            } else {
                Some(job)
            }
        })
        .collect();
    if jobs.is_empty() {
        return;
    }
    let reqs: Vec<&PublishRequest> = jobs.iter().map(|j| &j.req).collect();
    let started = std::time::Instant::now();
    match commit_batch_fast(&ctx.pool, &reqs, &ctx.limits, fast).await {
        Ok(done) => {
            metrics::histogram!("postgame_publish_commit_seconds")
                .record(started.elapsed().as_secs_f64());
            after_commit(&ctx.notifier, &done);
            for (job, result) in jobs.into_iter().zip(done.results) {
                let _ = job.reply.send(result);
            }
        }
        Err(e @ CommitError::FastApply(_)) => {
            // Nothing was written (the COMMIT was not reached). The fast apply is never a
            // reason to fail a publish: after a lock it waited for too long
            // (`FAST_LOCK_TIMEOUT_MS`) or any other error of it, the batch goes to the
            // queue as it would without it. Errors of the batch's own statements or of its
            // COMMIT take the usual paths below.
            tracing::info!(error = %e, n = jobs.len(), "fast apply failed; queueing the batch");
            metrics::counter!("postgame_fast_apply_fallbacks_total").increment(1);
            Box::pin(commit_jobs(ctx, jobs, poison, None)).await;
        }
        Err(e) if jobs.len() == 1 && is_data_error(&e) => {
            tracing::info!(error = %e, channel = %jobs[0].req.channel, "publish refused");
            for job in jobs {
                let _ = job
                    .reply
                    .send(Err(PublishError::Invalid("the publish is invalid".into())));
            }
        }
        Err(e) if jobs.len() > 1 && is_statement_error(&e) => {
            tracing::warn!(error = %e, n = jobs.len(), "publish batch failed; retrying in halves");
            let mut jobs = jobs;
            let second = jobs.split_off(jobs.len() / 2);
            Box::pin(commit_jobs(ctx, jobs, poison, None)).await;
            Box::pin(commit_jobs(ctx, second, poison, None)).await;
        }
        Err(e) => {
            tracing::error!(error = %e, n = jobs.len(), "publish failed");
            metrics::counter!("postgame_publish_errors_total").increment(jobs.len() as u64);
            for job in jobs {
                let up_to = poison.tickets.as_ref().map_or(u64::MAX, |t| t.load(SeqCst));
                poison.refuse(job.order_key, up_to);
                refuse_internal(job);
            }
        }
    }
}

/// Refuses `job` with `internal`, and with it every later publish of its connection (its
/// fence).
fn refuse_internal(job: Job) {
    if let Some(f) = &job.fence {
        f.store(true, SeqCst);
    }
    let _ = job.reply.send(Err(PublishError::Internal));
}

/// A statement failed (the database answered): another split of the batch may pass.
fn is_statement_error(e: &CommitError) -> bool {
    matches!(e, CommitError::Sql(sqlx::Error::Database(_)))
}

/// The database refused the data itself (SQLSTATE class 22, e.g. an untranslatable
/// character): the sender's problem.
fn is_data_error(e: &CommitError) -> bool {
    match e {
        CommitError::Sql(sqlx::Error::Database(d)) => d.code().is_some_and(|c| c.starts_with("22")),
        _ => false,
    }
}

fn after_commit(notifier: &Notifier, done: &Committed) {
    if done.control_inserted {
        notifier.control_ready();
    }
    done.inline.announce(notifier);
    metrics::counter!("postgame_fast_applied_total").increment(done.inline.processed.len() as u64);
    notifier.heads(&done.heads);
    metrics::counter!("postgame_publishes_total").increment(done.results.len() as u64);
    metrics::histogram!("postgame_publish_batch_size").record(done.results.len() as f64);
}

/// What one committed batch produced.
pub struct Committed {
    pub results: Vec<Result<Ack, PublishError>>,
    pub heads: Vec<(String, Seq)>,
    /// Control rows were left in the queue for the workers.
    pub control_inserted: bool,
    /// What the fast apply did in this transaction (nothing without it).
    pub(crate) inline: crate::worker::Applied,
}

type KeyId = (String, String, String);

/// Writes a batch of publishes in one transaction; see the module docs.
pub async fn commit_batch(
    pool: &PgPool,
    reqs: &[&PublishRequest],
) -> Result<Committed, CommitError> {
    commit_batch_checked(pool, reqs, &Limits::NONE).await
}

/// Why a batch did not commit.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// Nothing of the batch was committed.
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
    /// The COMMIT failed and its outcome could not be learnt: the batch may or may not
    /// have been committed.
    #[error("the outcome of the commit is unknown: {0}")]
    Unknown(sqlx::Error),
    /// The fast apply ([`fast`]) failed before the COMMIT: nothing of the batch was
    /// committed, and the batch can be written again without it.
    #[error("the fast apply failed: {0}")]
    FastApply(sqlx::Error),
}

/// Test hook: the channel whose next successful COMMIT is reported as failed (as when the
/// connection drops after the server committed), to exercise the outcome check.
static TEST_LOSE_COMMIT_REPLY: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Test hook: the next batch with a publish on `channel` commits, and then its COMMIT is
/// reported as failed.
#[doc(hidden)]
pub fn test_lose_commit_reply(channel: &str) {
    *TEST_LOSE_COMMIT_REPLY
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = Some(channel.to_owned());
}

/// Test hook: whether [`test_lose_commit_reply`] is still waiting for its batch.
#[doc(hidden)]
pub fn test_lose_commit_reply_pending() -> bool {
    TEST_LOSE_COMMIT_REPLY
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .is_some()
}

fn test_commit_reply_lost(reqs: &[&PublishRequest]) -> bool {
    let mut hook = TEST_LOSE_COMMIT_REPLY
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let hit = hook
        .as_deref()
        .is_some_and(|c| reqs.iter().any(|r| r.channel.as_str() == c));
    if hit {
        *hook = None;
    }
    hit
}

/// How long [`commit_outcome`] keeps trying to reach PostgreSQL before the outcome of a
/// COMMIT is given up as unknown.
const OUTCOME_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// Writes a batch (see `write_batch`) and commits it. A COMMIT that fails is never
/// taken for a rollback: the batch wrote a row of its own in `postgame.publish_batches`,
/// and `commit_outcome` looks for it on another connection. Committed: the batch's
/// results stand. Not committed: nothing was written. PostgreSQL unreachable for
/// `OUTCOME_PATIENCE`: [`CommitError::Unknown`].
pub async fn commit_batch_checked(
    pool: &PgPool,
    reqs: &[&PublishRequest],
    limits: &Limits,
) -> Result<Committed, CommitError> {
    commit_batch_fast(pool, reqs, limits, None).await
}

/// [`commit_batch_checked`], with the fast apply ([`fast`]) before the COMMIT when given.
pub(crate) async fn commit_batch_fast(
    pool: &PgPool,
    reqs: &[&PublishRequest],
    limits: &Limits,
    fast: Option<&FastApply>,
) -> Result<Committed, CommitError> {
    let batch = Uuid::new_v4();
    let mut tx = pool.begin().await?;
    let mut done = write_batch(&mut tx, batch, reqs, limits).await?;
    if let Some(fast) = fast {
        let inserted = fast::inserted_rows(reqs, &done.results);
        done.inline = fast::fast_apply(&mut tx, &inserted, fast)
            .await
            .map_err(CommitError::FastApply)?;
        done.control_inserted = done.inline.processed.len() < inserted.len();
    }
    let mut result = tx.commit().await;
    if result.is_ok() && test_commit_reply_lost(reqs) {
        result = Err(sqlx::Error::Protocol(
            "test: the COMMIT reply was lost".into(),
        ));
    }
    let Err(e) = result else {
        return Ok(done);
    };
    match commit_outcome(pool, batch).await {
        Some(true) => {
            tracing::warn!(error = %e, %batch, "the COMMIT failed on the wire but had committed");
            Ok(done)
        }
        Some(false) => Err(CommitError::Sql(e)),
        None => Err(CommitError::Unknown(e)),
    }
}

/// Whether the publish batch `batch` committed (`None`: PostgreSQL could not be asked
/// within [`OUTCOME_PATIENCE`]).
///
/// The batch's row in `postgame.publish_batches` is inserted again, then rolled back. If
/// the batch's transaction is still running (its backend has not yet seen the COMMIT or
/// the lost connection), the unique index makes the insert wait for it to end (at most a
/// lease: an idle transaction is ended by `idle_in_transaction_session_timeout`). A
/// conflict means the batch committed; an insert means it did not, and never will.
///
/// Not `txid_status`: after a crash of PostgreSQL, the xid of a transaction whose WAL was
/// lost is handed out again, and `txid_status` reports its new owner's outcome (seen in
/// chaos runs: a batch lost in the crash acknowledged because another transaction with
/// its xid committed after the restart).
async fn commit_outcome(pool: &PgPool, batch: Uuid) -> Option<bool> {
    let started = std::time::Instant::now();
    loop {
        match publish_batch_fence(pool, batch).await {
            Ok(inserted) => return Some(!inserted),
            Err(e) => {
                tracing::warn!(error = %e, %batch, "cannot learn the outcome of a commit");
                if started.elapsed() > OUTCOME_PATIENCE {
                    return None;
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
    }
}

/// Inserts the row of publish batch `batch` in a transaction that is rolled back; true
/// when it could be inserted (the batch did not commit). See [`commit_outcome`].
async fn publish_batch_fence(pool: &PgPool, batch: Uuid) -> sqlx::Result<bool> {
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query!(
        "INSERT INTO postgame.publish_batches (id) VALUES ($1) ON CONFLICT DO NOTHING",
        batch
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    // The answer is already known: a failed rollback ends the transaction all the same.
    let _ = tx.rollback().await;
    Ok(inserted == 1)
}

/// The first string of a publish Postgres could not store (a NUL character), if any.
fn invalid(r: &PublishRequest) -> Option<String> {
    fn has_nul(v: &Value) -> bool {
        match v {
            Value::String(s) => s.contains('\0'),
            Value::Array(a) => a.iter().any(has_nul),
            Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
            _ => false,
        }
    }
    let field = if r.name.contains('\0') {
        "name"
    } else if r.key.as_deref().is_some_and(|k| k.contains('\0')) {
        "key"
    } else if r.client.as_ref().is_some_and(|c| c.as_str().contains('\0')) {
        "client"
    } else if has_nul(&r.data) {
        "data"
    } else {
        return None;
    };
    Some(format!(
        "`{field}` may not contain the NUL character (\\u0000)"
    ))
}

/// Whether a publish counts against its client's limits: a client's own publishes, not
/// the server's presence messages (`$` names).
fn limited(r: &PublishRequest) -> bool {
    r.client.is_some() && !r.name.starts_with('$')
}

/// Writes a batch of publishes in one transaction (not committed), with its row `batch` in
/// `postgame.publish_batches`; returns the results.
async fn write_batch(
    conn: &mut PgConnection,
    batch: Uuid,
    reqs: &[&PublishRequest],
    limits: &Limits,
) -> sqlx::Result<Committed> {
    let bad: Vec<Option<String>> = reqs.iter().map(|r| invalid(r)).collect();

    // 1. Lock every target in one global order (matches, then channels, each sorted).
    let mut match_ids = BTreeSet::new();
    let mut log_channels = BTreeSet::new();
    for (r, _) in reqs.iter().zip(&bad).filter(|(_, b)| b.is_none()) {
        match r.channel.kind() {
            ChannelKind::Control(m) => {
                match_ids.insert(m.0);
            }
            _ => {
                log_channels.insert(r.channel.as_str().to_owned());
            }
        }
    }
    let match_ids: Vec<Uuid> = match_ids.into_iter().collect();
    let log_channels: Vec<String> = log_channels.into_iter().collect();
    let existing = publish_targets_lock(conn, batch, &match_ids, &log_channels).await?;

    // 2. Idempotency: keys seen in earlier transactions, and repeats inside this batch.
    let key_of = |r: &PublishRequest| -> Option<KeyId> {
        Some((
            r.client.as_ref()?.as_str().to_owned(),
            r.channel.as_str().to_owned(),
            r.key.clone()?,
        ))
    };
    let keyed: Vec<KeyId> = reqs
        .iter()
        .zip(&bad)
        .filter(|(_, b)| b.is_none())
        .filter_map(|(r, _)| key_of(r))
        .collect();
    let known: HashMap<KeyId, i64> = if keyed.is_empty() {
        HashMap::new()
    } else {
        publish_keys_find(conn, &keyed).await?
    };

    // 3. Per-client limits, for what would be written (not refused, not a known key).
    let candidates: Vec<usize> = (0..reqs.len())
        .filter(|&i| {
            let r = reqs[i];
            bad[i].is_none()
                && limited(r)
                && match r.channel.kind() {
                    ChannelKind::Control(m) => existing.contains(&m.0),
                    _ => true,
                }
                && !key_of(r).is_some_and(|k| known.contains_key(&k))
        })
        .collect();
    let over = limits_apply(conn, reqs, &candidates, limits).await?;

    enum Plan {
        Done(Result<Ack, PublishError>),
        Control(usize),
        Log(usize),
        SameAs(usize),
    }
    let mut plans = Vec::with_capacity(reqs.len());
    let mut first_of_key: HashMap<KeyId, usize> = HashMap::new();
    let mut control_n = 0;
    let mut log_msgs = Vec::new();
    for (i, r) in reqs.iter().enumerate() {
        if let Some(why) = &bad[i] {
            plans.push(Plan::Done(Err(PublishError::Invalid(why.clone()))));
            continue;
        }
        if let ChannelKind::Control(m) = r.channel.kind() {
            if !existing.contains(&m.0) {
                plans.push(Plan::Done(Err(PublishError::MatchNotFound)));
                continue;
            }
        }
        if let Some(k) = key_of(r) {
            if let Some(msg_id) = known.get(&k) {
                plans.push(Plan::Done(Ok(Ack {
                    msg_id: *msg_id,
                    duplicate: true,
                })));
                continue;
            }
            if let Some(first) = first_of_key.get(&k) {
                plans.push(Plan::SameAs(*first));
                continue;
            }
            if let Some(why) = over.get(&i) {
                plans.push(Plan::Done(Err(PublishError::RateLimited(why.clone()))));
                continue;
            }
            first_of_key.insert(k, i);
        }
        if let Some(why) = over.get(&i) {
            plans.push(Plan::Done(Err(PublishError::RateLimited(why.clone()))));
            continue;
        }
        if matches!(r.channel.kind(), ChannelKind::Control(_)) {
            plans.push(Plan::Control(control_n));
            control_n += 1;
        } else {
            plans.push(Plan::Log(log_msgs.len()));
            log_msgs.push(NewMessage {
                channel: r.channel.as_str().to_owned(),
                name: r.name.clone(),
                data: r.data.clone(),
            });
        }
    }

    // 3. Write: control rows with ids allocated under the locks, log messages, keys.
    let mut control_ids = Vec::new();
    if control_n > 0 {
        let mut matches = Vec::with_capacity(control_n);
        let mut clients = Vec::with_capacity(control_n);
        let mut names = Vec::with_capacity(control_n);
        let mut datas = Vec::with_capacity(control_n);
        for (r, p) in reqs.iter().zip(&plans) {
            if let (Plan::Control(_), ChannelKind::Control(m)) = (p, r.channel.kind()) {
                matches.push(m.0);
                clients.push(r.client.as_ref().map(|c| c.as_str().to_owned()));
                names.push(r.name.clone());
                datas.push(r.data.clone());
            }
        }
        control_ids = control_insert(conn, &matches, &clients, &names, &datas).await?;
    }
    let (seqs, heads) = log_append(conn, &log_msgs).await?;

    let mut results: Vec<Result<Ack, PublishError>> = Vec::with_capacity(reqs.len());
    for p in &plans {
        let result = match p {
            Plan::Done(r) => r.clone(),
            Plan::Control(n) => Ok(Ack {
                msg_id: control_ids[*n],
                duplicate: false,
            }),
            Plan::Log(n) => Ok(Ack {
                msg_id: seqs[*n],
                duplicate: false,
            }),
            Plan::SameAs(first) => results[*first].clone().map(|a| Ack {
                duplicate: true,
                ..a
            }),
        };
        results.push(result);
    }
    let mut new_keys: Vec<(KeyId, i64)> = Vec::new();
    for (i, (r, p)) in reqs.iter().zip(&plans).enumerate() {
        if let (Some(k), Plan::Control(_) | Plan::Log(_)) = (key_of(r), p) {
            if let Ok(ack) = &results[i] {
                new_keys.push((k, ack.msg_id));
            }
        }
    }
    if !new_keys.is_empty() {
        publish_keys_insert(conn, &new_keys).await?;
    }
    Ok(Committed {
        results,
        heads,
        control_inserted: control_n > 0,
        inline: Default::default(),
    })
}

/// Applies the per-client limits to the publishes `candidates` (indexes into `reqs`, in
/// batch order): first the cap on pending control messages per (client, match), then the
/// client's token bucket, both in Postgres under row locks, so every gateway shares them.
/// Returns the refused ones with the reason.
async fn limits_apply(
    conn: &mut PgConnection,
    reqs: &[&PublishRequest],
    candidates: &[usize],
    limits: &Limits,
) -> sqlx::Result<HashMap<usize, String>> {
    let mut over = HashMap::new();
    if candidates.is_empty() {
        return Ok(over);
    }
    let client = |i: usize| {
        reqs[i]
            .client
            .as_ref()
            .map_or("", |c| c.as_str())
            .to_owned()
    };
    let mut passing: Vec<usize> = candidates.to_vec();
    if limits.pending_max > 0 {
        let mut pairs: BTreeSet<(Uuid, String)> = BTreeSet::new();
        for &i in candidates {
            if let ChannelKind::Control(m) = reqs[i].channel.kind() {
                pairs.insert((m.0, client(i)));
            }
        }
        if !pairs.is_empty() {
            let (ms, cs): (Vec<Uuid>, Vec<String>) = pairs.into_iter().unzip();
            let rows = sqlx::query!(
                r#"
                SELECT u.match_id AS "match_id!", u.client_id AS "client_id!",
                       (SELECT count(*) FROM (
                           SELECT 1 FROM postgame.control c
                           WHERE c.match_id = u.match_id AND c.client_id = u.client_id
                           LIMIT $3) p) AS "pending!"
                FROM unnest($1::uuid[], $2::text[]) AS u(match_id, client_id)
                "#,
                &ms,
                &cs,
                limits.pending_max
            )
            .fetch_all(&mut *conn)
            .await?;
            let mut pending: HashMap<(Uuid, String), i64> = rows
                .into_iter()
                .map(|r| ((r.match_id, r.client_id), r.pending))
                .collect();
            passing.retain(|&i| {
                let ChannelKind::Control(m) = reqs[i].channel.kind() else {
                    return true;
                };
                let n = pending.entry((m.0, client(i))).or_default();
                if *n >= limits.pending_max {
                    over.insert(
                        i,
                        format!(
                            "too many pending messages in this match (at most {})",
                            limits.pending_max
                        ),
                    );
                    return false;
                }
                *n += 1;
                true
            });
        }
    }
    if limits.bucket_on() && !passing.is_empty() {
        let mut wants: std::collections::BTreeMap<String, i32> = Default::default();
        for &i in &passing {
            *wants.entry(client(i)).or_default() += 1;
        }
        let (cs, ns): (Vec<String>, Vec<i32>) = wants.into_iter().unzip();
        let rows = sqlx::query!(
            r#"SELECT client_id AS "client_id!", granted AS "granted!"
               FROM postgame.client_take($1, $2, $3, $4)"#,
            &cs,
            &ns,
            limits.burst,
            limits.rate
        )
        .fetch_all(&mut *conn)
        .await?;
        let mut granted: HashMap<String, i32> =
            rows.into_iter().map(|r| (r.client_id, r.granted)).collect();
        for &i in &passing {
            let g = granted.entry(client(i)).or_default();
            if *g > 0 {
                *g -= 1;
            } else {
                over.insert(
                    i,
                    format!(
                        "too many publishes (at most {} at once and {} per second)",
                        limits.burst, limits.rate
                    ),
                );
            }
        }
    }
    Ok(over)
}

/// Records the batch's row (see [`commit_outcome`]), takes the publish locks (matches,
/// then channels, each in sorted order: one global order, so publishers never deadlock)
/// and returns which of the matches exist.
async fn publish_targets_lock(
    conn: &mut PgConnection,
    batch: Uuid,
    match_ids: &[Uuid],
    channels: &[String],
) -> sqlx::Result<HashSet<Uuid>> {
    let row = sqlx::query!(
        r#"
        WITH batch AS (INSERT INTO postgame.publish_batches (id) VALUES ($3))
        SELECT
          (SELECT bool_and(postgame.lock_enqueue(id))
             FROM (SELECT DISTINCT id FROM unnest($1::uuid[]) AS t(id) ORDER BY id) a) AS m,
          (SELECT bool_and(postgame.lock_channel_publish(c))
             FROM (SELECT DISTINCT c FROM unnest($2::text[]) AS t(c) ORDER BY c) b) AS c,
          ARRAY(SELECT id FROM postgame.matches WHERE id = ANY($1)) AS "existing!"
        "#,
        match_ids,
        channels,
        batch
    )
    .fetch_one(conn)
    .await?;
    Ok(row.existing.into_iter().collect())
}

async fn publish_keys_find(
    conn: &mut PgConnection,
    keys: &[KeyId],
) -> sqlx::Result<HashMap<KeyId, i64>> {
    let clients: Vec<String> = keys.iter().map(|k| k.0.clone()).collect();
    let channels: Vec<String> = keys.iter().map(|k| k.1.clone()).collect();
    let ks: Vec<String> = keys.iter().map(|k| k.2.clone()).collect();
    let rows = sqlx::query!(
        r#"
        SELECT k.client_id, k.channel, k.key, k.msg_id
        FROM postgame.publish_keys k
        JOIN unnest($1::text[], $2::text[], $3::text[]) AS u(client_id, channel, key)
          USING (client_id, channel, key)
        "#,
        &clients,
        &channels,
        &ks
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| ((r.client_id, r.channel, r.key), r.msg_id))
        .collect())
}

async fn publish_keys_insert(conn: &mut PgConnection, keys: &[(KeyId, i64)]) -> sqlx::Result<()> {
    let clients: Vec<String> = keys.iter().map(|k| k.0 .0.clone()).collect();
    let channels: Vec<String> = keys.iter().map(|k| k.0 .1.clone()).collect();
    let ks: Vec<String> = keys.iter().map(|k| k.0 .2.clone()).collect();
    let ids: Vec<i64> = keys.iter().map(|k| k.1).collect();
    sqlx::query!(
        r#"
        INSERT INTO postgame.publish_keys (client_id, channel, key, msg_id)
        SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[])
        "#,
        &clients,
        &channels,
        &ks,
        &ids
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Inserts control rows, allocating their ids in input order (the caller holds the
/// enqueue locks of their matches), and returns the ids in input order.
pub(crate) async fn control_insert(
    conn: &mut PgConnection,
    matches: &[Uuid],
    clients: &[Option<String>],
    names: &[String],
    datas: &[Value],
) -> sqlx::Result<Vec<i64>> {
    // nextval runs after the ORDER BY (volatile target-list expressions are evaluated
    // after sorting), so ids increase with input position; sorting the returned ids
    // therefore gives them back in input order.
    let mut ids = sqlx::query_scalar!(
        r#"
        WITH input AS (
            SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::jsonb[])
                WITH ORDINALITY AS t(match_id, client_id, name, data, ord)
        ), ids AS MATERIALIZED (
            SELECT ord, nextval('postgame.control_id_seq') AS id FROM input ORDER BY ord
        )
        INSERT INTO postgame.control (id, match_id, client_id, name, data)
        SELECT ids.id, input.match_id, input.client_id, input.name, input.data
        FROM input JOIN ids USING (ord)
        RETURNING id
        "#,
        matches,
        clients as &[Option<String>],
        names,
        datas
    )
    .fetch_all(conn)
    .await?;
    ids.sort_unstable();
    Ok(ids)
}
