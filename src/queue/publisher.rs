//! The gateway's group commit. Sessions hand publishes to a shard task (a connection always
//! to the same shard, so its publishes keep their order); the task takes everything that
//! queued up while the previous commit ran and writes it in one transaction: control
//! messages into the control queue, other publishes into the message log, idempotency keys
//! beside them. Each publisher gets its `ack` only after that commit.
//!
//! A batch that fails is retried one publish per transaction, so one bad publish fails
//! alone and never takes its neighbours with it.

use std::collections::{BTreeSet, HashMap, HashSet};
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
    #[error("the publish could not be committed")]
    Internal,
    #[error("the server is shutting down")]
    ShuttingDown,
}

struct Job {
    req: PublishRequest,
    reply: oneshot::Sender<Result<Ack, PublishError>>,
}

/// Handle to the shard tasks; cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    shards: Arc<Vec<mpsc::Sender<Job>>>,
}

impl Publisher {
    /// Starts `shards` committing tasks on `tracker`; they stop after `stop`, once their
    /// queues are drained.
    pub fn start(
        pool: PgPool,
        notifier: Arc<Notifier>,
        shards: usize,
        tracker: &TaskTracker,
        stop: CancellationToken,
    ) -> Self {
        let mut senders = Vec::new();
        for _ in 0..shards.max(1) {
            let (tx, rx) = mpsc::channel(SHARD_QUEUE);
            senders.push(tx);
            tracker.spawn(shard_run(
                pool.clone(),
                Arc::clone(&notifier),
                rx,
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
        let (reply, rx) = oneshot::channel();
        let shard = &self.shards[(order_key % self.shards.len() as u64) as usize];
        let sent = shard.send(Job { req, reply }).await.is_ok();
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
}

async fn shard_run(
    pool: PgPool,
    notifier: Arc<Notifier>,
    mut rx: mpsc::Receiver<Job>,
    stop: CancellationToken,
) {
    loop {
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
        commit_jobs(&pool, &notifier, jobs).await;
    }
}

async fn commit_jobs(pool: &PgPool, notifier: &Notifier, jobs: Vec<Job>) {
    let reqs: Vec<&PublishRequest> = jobs.iter().map(|j| &j.req).collect();
    match commit_batch(pool, &reqs).await {
        Ok(done) => {
            after_commit(notifier, &done);
            for (job, result) in jobs.into_iter().zip(done.results) {
                let _ = job.reply.send(result);
            }
        }
        Err(e) if jobs.len() == 1 => {
            tracing::error!(error = %e, channel = %jobs[0].req.channel, "publish failed");
            metrics::counter!("postgame_publish_errors_total").increment(1);
            for job in jobs {
                let _ = job.reply.send(Err(PublishError::Internal));
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, n = jobs.len(), "publish batch failed; retrying one by one");
            for job in jobs {
                Box::pin(commit_jobs(pool, notifier, vec![job])).await;
            }
        }
    }
}

fn after_commit(notifier: &Notifier, done: &Committed) {
    if done.control_inserted {
        notifier.control_ready();
    }
    notifier.heads(&done.heads);
    metrics::counter!("postgame_publishes_total").increment(done.results.len() as u64);
    metrics::histogram!("postgame_publish_batch_size").record(done.results.len() as f64);
}

/// What one committed batch produced.
pub struct Committed {
    pub results: Vec<Result<Ack, PublishError>>,
    pub heads: Vec<(String, Seq)>,
    pub control_inserted: bool,
}

type KeyId = (String, String, String);

/// Writes a batch of publishes in one transaction; see the module docs.
pub async fn commit_batch(pool: &PgPool, reqs: &[&PublishRequest]) -> sqlx::Result<Committed> {
    let mut tx = pool.begin().await?;
    let conn: &mut PgConnection = &mut tx;

    // 1. Lock every target in one global order (matches, then channels, each sorted).
    let mut match_ids = BTreeSet::new();
    let mut log_channels = BTreeSet::new();
    for r in reqs {
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
    let existing = publish_targets_lock(conn, &match_ids, &log_channels).await?;

    // 2. Idempotency: keys seen in earlier transactions, and repeats inside this batch.
    let key_of = |r: &PublishRequest| -> Option<KeyId> {
        Some((
            r.client.as_ref()?.as_str().to_owned(),
            r.channel.as_str().to_owned(),
            r.key.clone()?,
        ))
    };
    let keyed: Vec<KeyId> = reqs.iter().filter_map(|r| key_of(r)).collect();
    let known: HashMap<KeyId, i64> = if keyed.is_empty() {
        HashMap::new()
    } else {
        publish_keys_find(conn, &keyed).await?
    };

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
            first_of_key.insert(k, i);
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
    tx.commit().await?;
    Ok(Committed {
        results,
        heads,
        control_inserted: control_n > 0,
    })
}

/// Takes the publish locks (matches, then channels, each in sorted order: one global
/// order, so publishers never deadlock) and returns which of the matches exist.
async fn publish_targets_lock(
    conn: &mut PgConnection,
    match_ids: &[Uuid],
    channels: &[String],
) -> sqlx::Result<HashSet<Uuid>> {
    let row = sqlx::query!(
        r#"
        SELECT
          (SELECT bool_and(postgame.lock_enqueue(id))
             FROM (SELECT DISTINCT id FROM unnest($1::uuid[]) AS t(id) ORDER BY id) a) AS m,
          (SELECT bool_and(postgame.lock_channel_publish(c))
             FROM (SELECT DISTINCT c FROM unnest($2::text[]) AS t(c) ORDER BY c) b) AS c,
          ARRAY(SELECT id FROM postgame.matches WHERE id = ANY($1)) AS "existing!"
        "#,
        match_ids,
        channels
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
async fn control_insert(
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
