//! Presence that survives crashes.
//!
//! A gateway tells a match about its connections with `$connected` / `$disconnected`
//! control messages, which go through the control queue like client publishes (committed,
//! applied exactly once, in order). Three things make that hold when things break:
//!
//! - **Durable and ordered per connection.** A session hands its presence changes to a
//!   task of its own ([`Presence::start`]) that submits them one after the other and
//!   retries a failed commit (100 ms doubling to 5 s, for up to [`RETRY_FOR`]), so a
//!   `$connected` is never lost to a passing database error nor overtaken by its
//!   `$disconnected`.
//! - **Recorded.** While a connection is in a match, it has a row in `postgame.presence`
//!   (written before its `$connected` is enqueued, deleted after its `$disconnected` is).
//! - **Swept.** Each gateway process heartbeats its row in `postgame.gateways` every
//!   [`HEARTBEAT`]. Every postgame process runs [`run`], which every [`HEARTBEAT`] looks for
//!   presence rows whose gateway stopped heartbeating for the presence timeout
//!   (`--presence-timeout-seconds`, 10 s by default) or is gone, and in one transaction
//!   deletes them and enqueues a `$disconnected` for each ([`presence_sweep`]). So the
//!   players of a killed gateway are disconnected within the timeout + one heartbeat
//!   (11 s by default), and the games' reconnect grace runs from there.
//!
//! A gateway registers before it serves, so no connection is recorded under a gateway the
//! sweep does not know. Time Postgres was down does not count towards the timeout (a
//! gateway cannot heartbeat then). A gateway that was only slow (its heartbeat late past
//! the timeout: frozen, cut off) finds its row gone, registers again and closes every
//! session it has (1011, see [`Liveness`]): their connections were disconnected in their
//! matches, and the clients' reconnections record them again. Each session's own leave
//! enqueues a second `$disconnected`, which games ignore.

use std::time::Duration;

use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgExecutor, PgPool};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::game::{PRESENCE_CONNECTED, PRESENCE_DISCONNECTED};
use crate::ids::{Channel, ClientId, MatchId};
use crate::queue::publisher::{PublishError, PublishRequest, Publisher};

/// How often a gateway heartbeats and every process sweeps.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// Default silence after which a gateway counts as dead.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a session's presence task keeps retrying one change.
pub const RETRY_FOR: Duration = Duration::from_secs(120);
/// Presence changes queued per session (a session has at most a few subscriptions).
const QUEUE: usize = 64;

/// Registers (or refreshes) this gateway.
pub async fn gateway_heartbeat(db: impl PgExecutor<'_>, gateway: &str) -> sqlx::Result<bool> {
    let r = sqlx::query!(
        r#"
        INSERT INTO postgame.gateways AS g (id) VALUES ($1)
        ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()
        RETURNING (g.started_at = g.heartbeat_at) AS "fresh!"
        "#,
        gateway
    )
    .fetch_one(db)
    .await?;
    Ok(r.fresh)
}

/// Removes this gateway's registration (at shutdown): any connection still recorded is
/// then disconnected by the next sweep.
pub async fn gateway_deregister(db: impl PgExecutor<'_>, gateway: &str) -> sqlx::Result<()> {
    sqlx::query!("DELETE FROM postgame.gateways WHERE id = $1", gateway)
        .execute(db)
        .await?;
    Ok(())
}

/// Disconnects the connections of gateways silent for `timeout` (and of gateways that are
/// gone; silence counts from the database's start at the earliest, so a Postgres restart
/// does not make every gateway look dead): in one transaction, deletes their presence rows
/// and enqueues a `$disconnected` for each, under the matches' enqueue locks (taken in
/// match order, as publishers do), and deletes the dead gateways' rows. Returns how many
/// connections it disconnected.
pub async fn presence_sweep(pool: &PgPool, timeout: Duration) -> sqlx::Result<u64> {
    let mut tx = pool.begin().await?;
    let gone = sqlx::query!(
        r#"
        WITH dead AS (
            DELETE FROM postgame.gateways
            WHERE id IN (
                SELECT id FROM postgame.gateways
                -- Time the database was down does not count against a gateway: it could
                -- not heartbeat then, and its connections may well have stayed open.
                WHERE greatest(heartbeat_at, pg_postmaster_start_time())
                      < now() - make_interval(secs => $1)
                FOR UPDATE SKIP LOCKED)
            RETURNING id)
        DELETE FROM postgame.presence p
        WHERE p.gateway IN (SELECT id FROM dead)
           OR NOT EXISTS (SELECT 1 FROM postgame.gateways g WHERE g.id = p.gateway)
        RETURNING p.match_id, p.client_id, p.connection
        "#,
        timeout.as_secs_f64()
    )
    .fetch_all(&mut *tx)
    .await?;
    // Every connection of a gateway that is gone is over (the matchmaker's view of who is
    // online: `postgame.sessions`).
    sqlx::query(
        "DELETE FROM postgame.sessions s
          WHERE NOT EXISTS (SELECT 1 FROM postgame.gateways g WHERE g.id = s.gateway)",
    )
    .execute(&mut *tx)
    .await?;
    if gone.is_empty() {
        tx.commit().await?;
        return Ok(0);
    }
    let mut rows: Vec<(Uuid, String, String)> = gone
        .into_iter()
        .map(|r| (r.match_id, r.client_id, r.connection))
        .collect();
    rows.sort();
    let matches: Vec<Uuid> = rows.iter().map(|r| r.0).collect();
    let clients: Vec<String> = rows.iter().map(|r| r.1.clone()).collect();
    let datas: Vec<serde_json::Value> = rows.iter().map(|r| json!({ "connection": r.2 })).collect();
    sqlx::query!(
        r#"
        SELECT count(postgame.lock_enqueue(id)) AS "n!"
        FROM (SELECT DISTINCT id FROM unnest($1::uuid[]) AS t(id) ORDER BY id) a
        "#,
        &matches
    )
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query!(
        r#"
        INSERT INTO postgame.control (match_id, client_id, name, data)
        SELECT m, c, $4, d
        FROM unnest($1::uuid[], $2::text[], $3::jsonb[]) WITH ORDINALITY AS u(m, c, d, o)
        WHERE EXISTS (SELECT 1 FROM postgame.matches x WHERE x.id = u.m)
        ORDER BY o
        "#,
        &matches,
        &clients,
        &datas,
        PRESENCE_DISCONNECTED
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    let n = rows.len() as u64;
    tracing::info!(
        connections = n,
        "disconnected the connections of stopped gateways"
    );
    metrics::counter!("postgame_presence_swept_total").increment(n);
    Ok(n)
}

/// This process's gateway, as its heartbeat sees it.
pub struct Liveness {
    /// Its id in `postgame.gateways` (registered before it serves: see [`gateway_heartbeat`]).
    pub id: String,
    /// Bumped when the heartbeat finds the registration gone: another process declared
    /// this gateway dead and disconnected its connections in their matches, so every
    /// session still open closes (1011) and its client reconnects and resubscribes, which
    /// records it again. Without this, a gateway that was only late (frozen, cut off from
    /// Postgres) kept connections its matches count as gone, and their players forfeited
    /// while connected.
    pub expired: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
}

/// Until `stop`, every [`HEARTBEAT`]: heartbeats `gateway` (when this process runs one,
/// already registered) and sweeps the connections of gateways silent for `timeout`. At
/// `stop`, deregisters the gateway.
pub async fn run(
    pool: PgPool,
    gateway: Option<Liveness>,
    timeout: Duration,
    stop: CancellationToken,
) {
    let mut every = tokio::time::interval(HEARTBEAT);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The heartbeat has a connection of its own: a gateway whose pool is taken by work
    // (publishes, presence changes, a reconnection wave) is alive, and must not look dead
    // for waiting its turn; declared dead, it closes every session, which makes more work.
    let beat = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(HEARTBEAT * 2)
        .connect_lazy_with((*pool.connect_options()).clone());
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.cancelled() => break,
        }
        if let Some(g) = &gateway {
            let beaten = tokio::time::timeout(HEARTBEAT * 2, gateway_heartbeat(&beat, &g.id));
            match beaten.await.unwrap_or(Err(sqlx::Error::PoolTimedOut)) {
                Ok(true) => {
                    tracing::warn!(
                        gateway = g.id,
                        "this gateway's registration had expired (its heartbeat was late): \
                         its connections were disconnected in their matches; closing them"
                    );
                    metrics::counter!("postgame_gateway_expired_total").increment(1);
                    g.expired.send_modify(|n| *n += 1);
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "gateway heartbeat failed"),
            }
        }
        if let Err(e) = presence_sweep(&pool, timeout).await {
            tracing::debug!(error = %e, "presence sweep failed");
        }
    }
    if let Some(g) = &gateway {
        if let Err(e) = gateway_deregister(&beat, &g.id).await {
            tracing::debug!(error = %e, "gateway deregistration failed");
        }
    }
}

/// Most session changes one [`Online`] statement writes.
const ONLINE_BATCH: usize = 1000;

/// A connection came (`Some(client)`) or went (`None`).
type OnlineChange = (String, Option<ClientId>);

/// Who is online on this gateway, kept in `postgame.sessions` by one task per gateway that
/// writes the changes of many connections in one statement (a burst of connections costs
/// a few statements, not one pool connection each). The matchmaker drops the tickets of
/// clients with no row there; rows a stopped gateway leaves behind are deleted by
/// [`presence_sweep`].
#[derive(Clone)]
pub struct Online {
    // Unbounded, but each open connection has at most its two changes queued (one when it
    // came, one when it went), so the queue is bounded by the connections of this gateway
    // (themselves bounded per address and by the file descriptors).
    tx: mpsc::UnboundedSender<OnlineChange>,
}

/// Keeps a connection recorded as online until it is dropped ([`Online::record`]).
pub struct OnlineGuard {
    tx: mpsc::UnboundedSender<OnlineChange>,
    connection: String,
}

impl Drop for OnlineGuard {
    fn drop(&mut self) {
        let _ = self.tx.send((std::mem::take(&mut self.connection), None));
    }
}

impl Online {
    /// Starts the writer of gateway `gateway` on `tasks`; it writes what is queued at
    /// `stop` (briefly) and ends.
    pub fn start(
        pool: PgPool,
        gateway: String,
        tasks: &tokio_util::task::TaskTracker,
        stop: CancellationToken,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tasks.spawn(online_write_loop(pool, gateway, rx, stop));
        Self { tx }
    }

    /// Records `connection` of `client` as online until the guard is dropped.
    pub fn record(&self, connection: String, client: ClientId) -> OnlineGuard {
        let _ = self.tx.send((connection.clone(), Some(client)));
        OnlineGuard {
            tx: self.tx.clone(),
            connection,
        }
    }
}

async fn online_write_loop(
    pool: PgPool,
    gateway: String,
    mut rx: mpsc::UnboundedReceiver<OnlineChange>,
    stop: CancellationToken,
) {
    let mut batch: Vec<OnlineChange> = Vec::new();
    let mut pause = Duration::from_millis(100);
    loop {
        if batch.is_empty() {
            tokio::select! {
                c = rx.recv() => match c {
                    Some(c) => batch.push(c),
                    None => return,
                },
                _ = stop.cancelled() => break,
            }
        }
        while batch.len() < ONLINE_BATCH {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        match online_write(&pool, &gateway, &batch).await {
            Ok(()) => {
                batch.clear();
                pause = Duration::from_millis(100);
            }
            Err(e) => {
                // Kept and retried (with what arrives meanwhile): the changes are idempotent.
                tracing::debug!(error = %e, "recording sessions failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop.cancelled() => break,
                }
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
    // Shutting down: one last write of what is queued (the sweep deletes the rest once
    // this gateway is deregistered).
    while let Ok(c) = rx.try_recv() {
        batch.push(c);
    }
    let last = online_write(&pool, &gateway, &batch);
    let _ = tokio::time::timeout(Duration::from_secs(2), last).await;
}

/// Writes session changes in order: per connection only the last change counts, and a
/// connection that came and went within the batch is not written at all.
async fn online_write(pool: &PgPool, gateway: &str, batch: &[OnlineChange]) -> sqlx::Result<()> {
    let mut last: std::collections::HashMap<&str, (usize, &Option<ClientId>)> =
        std::collections::HashMap::new();
    let mut came_here = std::collections::HashSet::new();
    for (i, (connection, client)) in batch.iter().enumerate() {
        if client.is_some() {
            came_here.insert(connection.as_str());
        }
        last.insert(connection.as_str(), (i, client));
    }
    let (mut up, mut up_clients, mut down) = (Vec::new(), Vec::new(), Vec::new());
    for (connection, (_, client)) in last {
        match client {
            Some(c) => {
                up.push(connection.to_owned());
                up_clients.push(c.as_str().to_owned());
            }
            None if came_here.contains(connection) => {}
            None => down.push(connection.to_owned()),
        }
    }
    if !up.is_empty() {
        sqlx::query(
            "INSERT INTO postgame.sessions (gateway, connection, client_id)
             SELECT $1, c, k FROM unnest($2::text[], $3::text[]) AS u(c, k)
             ON CONFLICT DO NOTHING",
        )
        .bind(gateway)
        .bind(&up)
        .bind(&up_clients)
        .execute(pool)
        .await?;
    }
    if !down.is_empty() {
        sqlx::query("DELETE FROM postgame.sessions WHERE gateway = $1 AND connection = ANY($2)")
            .bind(gateway)
            .bind(&down)
            .execute(pool)
            .await?;
    }
    Ok(())
}

/// A session's presence changes, applied in order by a task of their own.
pub struct Presence {
    tx: mpsc::Sender<Change>,
}

/// One queued change, and who waits for its publish to be submitted.
struct Change {
    m: MatchId,
    name: &'static str,
    /// Told (or dropped) once the change's first attempt has handed its publish to the
    /// publisher, or failed before it could.
    submitted: Option<oneshot::Sender<()>>,
}

impl Presence {
    /// Starts the task of one connection (`conn` picks its publisher shard).
    pub fn start(
        pool: PgPool,
        publisher: Publisher,
        gateway: String,
        conn: u64,
        connection: String,
        client: ClientId,
    ) -> Self {
        let (tx, mut rx) = mpsc::channel::<Change>(QUEUE);
        tokio::spawn(async move {
            while let Some(Change {
                m,
                name,
                mut submitted,
            }) = rx.recv().await
            {
                let started = tokio::time::Instant::now();
                let mut pause = Duration::from_millis(100);
                loop {
                    let result = change(
                        &pool,
                        &publisher,
                        &gateway,
                        conn,
                        &connection,
                        &client,
                        m,
                        name,
                        &mut submitted,
                    )
                    .await;
                    // Only the first attempt keeps the session waiting.
                    submitted = None;
                    match result {
                        Ok(()) => break,
                        Err(Some(e)) if started.elapsed() < RETRY_FOR => {
                            tracing::debug!(error = %e, "presence change failed; retrying");
                            tokio::time::sleep(pause).await;
                            pause = (pause * 2).min(Duration::from_secs(5));
                        }
                        Err(e) => {
                            // Shutting down, or retried too long: the sweep disconnects
                            // whatever is still recorded once this gateway is gone.
                            tracing::warn!(error = ?e, match_id = %m, name, "presence change dropped");
                            break;
                        }
                    }
                }
            }
        });
        Self { tx }
    }

    /// Queues a change (`$connected` / `$disconnected`) for match `m`.
    pub async fn send(&self, m: MatchId, name: &'static str) {
        let _ = self
            .tx
            .send(Change {
                m,
                name,
                submitted: None,
            })
            .await;
    }

    /// Queues a change and waits until its publish has been handed to the publisher (or
    /// its first attempt failed): the connection's publishes submitted after this are
    /// committed after it, so a `join` sent right after a subscription is applied after
    /// that subscription's `$connected`.
    pub async fn send_ordered(&self, m: MatchId, name: &'static str) {
        let (submitted, done) = oneshot::channel();
        let queued = self
            .tx
            .send(Change {
                m,
                name,
                submitted: Some(submitted),
            })
            .await;
        if queued.is_ok() {
            let _ = done.await;
        }
    }
}

/// One presence change: record, enqueue, unrecord. `Err(None)` when the server is
/// shutting down (no retry).
#[allow(clippy::too_many_arguments)]
async fn change(
    pool: &PgPool,
    publisher: &Publisher,
    gateway: &str,
    conn: u64,
    connection: &str,
    client: &ClientId,
    m: MatchId,
    name: &'static str,
    submitted: &mut Option<oneshot::Sender<()>>,
) -> Result<(), Option<String>> {
    let connected = name == PRESENCE_CONNECTED;
    if connected {
        sqlx::query!(
            r#"
            INSERT INTO postgame.presence (gateway, connection, match_id, client_id)
            SELECT $1, $2, $3, $4 WHERE EXISTS (SELECT 1 FROM postgame.matches WHERE id = $3)
            ON CONFLICT DO NOTHING
            "#,
            gateway,
            connection,
            m.0,
            client.to_string()
        )
        .execute(pool)
        .await
        .map_err(|e| Some(e.to_string()))?;
    }
    let req = PublishRequest {
        client: Some(client.clone()),
        channel: Channel::parse(&format!("control:{m}")).expect("a match id makes a channel"),
        name: name.to_owned(),
        data: json!({ "connection": connection }),
        key: None,
    };
    let ack = publisher.submit(conn, req).await;
    if let Some(s) = submitted.take() {
        let _ = s.send(());
    }
    match ack.await {
        Ok(_) | Err(PublishError::MatchNotFound) => {}
        Err(PublishError::ShuttingDown) => return Err(None),
        Err(e) => return Err(Some(e.to_string())),
    }
    if !connected {
        sqlx::query!(
            "DELETE FROM postgame.presence WHERE gateway = $1 AND connection = $2 AND match_id = $3",
            gateway,
            connection,
            m.0
        )
        .execute(pool)
        .await
        .map_err(|e| Some(e.to_string()))?;
    }
    Ok(())
}
