//! The matchmaker: tickets (`POST /v1/matchmaker`) paired by the workers into new matches
//! whose seats their players already hold.
//!
//! - **A ticket is durable before it is answered.** The gateway commits the row in
//!   `postgame.mm_tickets` ([`ticket_open`]) and then wakes the workers the way a control
//!   message does (`Notifier::control_ready`: this process's workers directly, the others by
//!   NOTIFY); a lost wake-up costs at most a worker's poll interval.
//! - **Pools.** Tickets pair only when game, normalised config and `query` are all equal:
//!   the three hash to the ticket's `pool`. One match takes the game's
//!   [`crate::game::Game::players_per_match`] tickets.
//! - **Exactly once, FIFO.** [`pair_once`] (run by every worker task between its control
//!   batches) takes pools that hold enough waiting tickets under a per-pool advisory lock
//!   (`postgame.try_lock_mm_pool`: one worker pairs a pool at a time, so two workers never
//!   split a pool and strand a player each), locks the pool's oldest waiting tickets
//!   `FOR UPDATE SKIP LOCKED` (a ticket being cancelled is skipped), and in ONE transaction
//!   creates each match (the game's `create`), seats the players by applying their `join`
//!   through the game itself (so the game's rules decide the seats), marks the tickets
//!   `matched` and appends `matched` `{"match_id", "ticket"}` to every player's
//!   `user:<client>` channel. A ticket leaves `waiting` once: pairing, cancel, expiry and
//!   disconnect all change the row only `WHERE status = 'waiting'` under its row lock.
//! - **Expiry, disconnects and retention** are the sweep's ([`sweep_once`], every
//!   [`SWEEP_EVERY`] in every worker process, bounded batches, `SKIP LOCKED`): a ticket past
//!   its `expires_at` becomes `expired`, one whose client has had no WebSocket connection on
//!   any gateway (`postgame.sessions`) since [`DROP_GRACE`] after it was opened becomes
//!   `dropped`, both answered with `matchmaker_expired` `{"ticket", "reason"}` on
//!   `user:<client>`; ended tickets are deleted after [`RETENTION`].

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::{PgConnection, PgExecutor, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::broadcast::notify::Notifier;
use crate::broadcast::{latest_write, log_append, NewMessage};
use crate::game::limit::run_limited;
use crate::game::{Applied, Created, DynGame, Input, Registry};
use crate::ids::{Channel, ClientId, MatchId};
use crate::matches::{latest_view, lobby_announcement, outgoing_messages, Written};

/// How often every worker process sweeps expired, dropped and old tickets.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Most tickets one sweep statement changes or deletes.
pub const SWEEP_BATCH: i64 = 500;
/// A ticket is dropped when its client has no WebSocket connection anywhere, but never in
/// its first seconds (a client may open its ticket just before its socket connects).
pub const DROP_GRACE: Duration = Duration::from_secs(3);
/// How long an ended ticket (matched, cancelled, expired, dropped) stays readable with
/// `GET /v1/matchmaker/{ticket}` before it is deleted.
pub const RETENTION: Duration = Duration::from_secs(3600);
/// Most pools one pairing transaction takes.
pub const POOLS_PER_PAIRING: i64 = 8;
/// Most tickets one pairing transaction takes from one pool.
pub const TICKETS_PER_POOL: usize = 128;
/// Largest `query` object, serialised.
pub const MAX_QUERY_BYTES: usize = 1024;

/// A ticket as the HTTP API shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Ticket {
    #[serde(rename = "ticket")]
    pub id: Uuid,
    pub game: String,
    pub config: Value,
    pub query: Value,
    /// The data of the `join` that seats the player.
    #[serde(rename = "join")]
    pub join_data: Value,
    /// `waiting`, `matched`, `cancelled`, `expired`, `dropped` or `failed`.
    pub status: String,
    pub match_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// A ticket to open.
#[derive(Debug, Clone, Copy)]
pub struct NewTicket<'a> {
    pub client: &'a ClientId,
    pub game: &'a str,
    /// Normalised ([`DynGame::normalize_config`]).
    pub config: &'a Value,
    /// A JSON object of at most [`MAX_QUERY_BYTES`].
    pub query: &'a Value,
    /// The data of the player's `join` (a JSON object of at most [`MAX_QUERY_BYTES`]).
    pub join: &'a Value,
    pub players: usize,
    pub ttl: Duration,
    /// Tickets one client may open per minute (0: no limit).
    pub per_minute: u32,
}

/// What [`ticket_open`] did.
#[derive(Debug)]
pub enum Opened {
    New(Ticket),
    /// The client already waits for this game with the same config and query.
    Existing(Ticket),
}

/// Why a ticket was not opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The client already waits for this game with another config or query.
    #[error("already waiting")]
    Conflict(Box<Ticket>),
    /// The client opened its allowance of tickets within the last minute; try again after
    /// this many seconds.
    #[error("too many tickets")]
    RateLimited(u64),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

const TICKET_COLUMNS: &str =
    "id, game, config, query, join_data, status, match_id, created_at, expires_at";

/// Opens a ticket for `t.client`, or returns the one it already has for this game. The
/// client's openings are serialised by an advisory lock, so the one-open-ticket rule and
/// the per-minute count hold across gateways.
///
/// A waiting ticket of the client for this game that is past its expiry but not swept yet
/// is expired here first (with its `matchmaker_expired`), so it is never handed back.
pub async fn ticket_open(
    pool: &PgPool,
    notifier: &Notifier,
    t: NewTicket<'_>,
) -> Result<Opened, OpenError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('postgame.mm_client:' || $1, 0))")
        .bind(t.client.as_str())
        .execute(&mut *tx)
        .await?;
    let stale: Vec<Uuid> = sqlx::query_scalar(
        r#"
        UPDATE postgame.mm_tickets SET status = 'expired', ended_at = now()
        WHERE id IN (SELECT id FROM postgame.mm_tickets
                      WHERE client_id = $1 AND game = $2 AND status = 'waiting'
                        AND expires_at <= now()
                      FOR UPDATE)
          AND status = 'waiting'
        RETURNING id
        "#,
    )
    .bind(t.client.as_str())
    .bind(t.game)
    .fetch_all(&mut *tx)
    .await?;
    let told: Vec<NewMessage> = stale
        .iter()
        .filter_map(|id| expired_message(t.client.as_str(), *id, "expired"))
        .collect();
    let (_, heads) = log_append(&mut tx, &told).await?;
    let existing: Option<Ticket> = sqlx::query_as(&format!(
        "SELECT {TICKET_COLUMNS} FROM postgame.mm_tickets
          WHERE client_id = $1 AND game = $2 AND status = 'waiting'"
    ))
    .bind(t.client.as_str())
    .bind(t.game)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(existing) = existing {
        tx.commit().await?;
        notifier.heads(&heads);
        return if existing.config == *t.config && existing.query == *t.query {
            Ok(Opened::Existing(existing))
        } else {
            Err(OpenError::Conflict(Box::new(existing)))
        };
    }
    if t.per_minute > 0 {
        let wait: Option<f64> = sqlx::query_scalar(
            "SELECT extract(epoch FROM min(created_at) + interval '1 minute' - now())::float8
               FROM (SELECT created_at FROM postgame.mm_tickets
                      WHERE client_id = $1 AND created_at > now() - interval '1 minute'
                      ORDER BY created_at DESC LIMIT $2) recent
             HAVING count(*) >= $2",
        )
        .bind(t.client.as_str())
        .bind(i64::from(t.per_minute))
        .fetch_optional(&mut *tx)
        .await?
        .flatten();
        if let Some(wait) = wait {
            return Err(OpenError::RateLimited(wait.ceil().max(1.0) as u64));
        }
    }
    let ticket: Ticket = sqlx::query_as(&format!(
        "INSERT INTO postgame.mm_tickets
             (id, game, config, query, pool, players, client_id, expires_at, join_data)
         VALUES ($1, $2, $3, $4, md5(jsonb_build_array($2::text, $3::jsonb, $4::jsonb)::text),
                 $5, $6, now() + $7 * interval '1 second', $8)
         RETURNING {TICKET_COLUMNS}"
    ))
    .bind(Uuid::new_v4())
    .bind(t.game)
    .bind(t.config)
    .bind(t.query)
    .bind(t.players as i32)
    .bind(t.client.as_str())
    .bind(t.ttl.as_secs_f64())
    .bind(t.join)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    notifier.heads(&heads);
    Ok(Opened::New(ticket))
}

/// The client's ticket `id`, in any status (`None`: no such ticket of this client).
pub async fn ticket_get(
    db: impl PgExecutor<'_>,
    id: Uuid,
    client: &ClientId,
) -> sqlx::Result<Option<Ticket>> {
    sqlx::query_as(&format!(
        "SELECT {TICKET_COLUMNS} FROM postgame.mm_tickets WHERE id = $1 AND client_id = $2"
    ))
    .bind(id)
    .bind(client.as_str())
    .fetch_optional(db)
    .await
}

/// Cancels the client's ticket `id` if it is still waiting, and returns the ticket as it
/// is now: `cancelled`, or whatever it had already become (a ticket matched a moment
/// before is `matched`, with its match). A pairing transaction that holds the ticket
/// makes this wait for its commit, so a cancelled ticket is never matched.
pub async fn ticket_cancel(
    pool: &PgPool,
    id: Uuid,
    client: &ClientId,
) -> sqlx::Result<Option<Ticket>> {
    let cancelled: Option<Ticket> = sqlx::query_as(&format!(
        "UPDATE postgame.mm_tickets SET status = 'cancelled', ended_at = now()
          WHERE id = $1 AND client_id = $2 AND status = 'waiting'
          RETURNING {TICKET_COLUMNS}"
    ))
    .bind(id)
    .bind(client.as_str())
    .fetch_optional(pool)
    .await?;
    match cancelled {
        Some(t) => Ok(Some(t)),
        None => ticket_get(pool, id, client).await,
    }
}

/// A waiting ticket locked for pairing.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Waiting {
    id: Uuid,
    client_id: String,
    game: String,
    config: Value,
    join_data: Value,
}

/// One match to make: its id, its game and config, and its tickets in age order.
struct Pairing {
    match_id: MatchId,
    game: Arc<dyn DynGame>,
    config: Value,
    tickets: Vec<Waiting>,
}

/// The `join` a matched player's seat is taken with (`msg_id` 0: no control message).
fn join_of(client: ClientId, data: Value) -> Input {
    Input::Client {
        msg_id: 0,
        client,
        name: "join".into(),
        data,
    }
}

/// Creates the match and applies every player's `join`.
fn make_match(p: &Pairing, now: DateTime<Utc>) -> Result<(Created, Applied), String> {
    let created = p.game.create(p.match_id, &p.config, now)?;
    let joins: Vec<Input> = p
        .tickets
        .iter()
        .map(|t| {
            ClientId::parse(&t.client_id)
                .map(|c| join_of(c, t.join_data.clone()))
                .ok_or_else(|| format!("ticket {} has an invalid client id", t.id))
        })
        .collect::<Result<_, _>>()?;
    let applied = p
        .game
        .apply(p.match_id, &created.config, &created.state, &joins, now);
    if let Some(e) = &applied.error {
        return Err(format!("a matched player's join failed: {e}"));
    }
    if applied.applied != joins.len() || applied.next.is_none() {
        return Err("the players' joins were not applied".into());
    }
    Ok((created, applied))
}

/// `matchmaker_expired` for a ticket that ended without a match.
fn expired_message(client: &str, ticket: Uuid, reason: &str) -> Option<NewMessage> {
    let client = ClientId::parse(client)?;
    Some(NewMessage {
        channel: Channel::of_user(&client).as_str().to_owned(),
        name: "matchmaker_expired".into(),
        data: json!({ "ticket": ticket, "reason": reason }),
    })
}

/// Pairs the waiting tickets of up to [`POOLS_PER_PAIRING`] pools in one transaction (see
/// the module docs). Returns how many matches it created.
pub async fn pair_once(
    pool: &PgPool,
    games: &Registry,
    notifier: &Notifier,
    handler_limit: Duration,
) -> sqlx::Result<usize> {
    let mut tx = pool.begin().await?;
    // Pools with enough tickets for a match, oldest first; the lock is only tried on
    // those (MATERIALIZED keeps the LIMIT before the lock).
    let pools: Vec<(String, DateTime<Utc>)> = sqlx::query_as(
        r#"
        WITH ready AS MATERIALIZED (
            SELECT pool, min(created_at) AS oldest
            FROM postgame.mm_tickets
            WHERE status = 'waiting' AND expires_at > now()
            GROUP BY pool
            HAVING count(*) >= min(players)
            ORDER BY oldest
            LIMIT $1)
        SELECT pool, now() FROM ready WHERE postgame.try_lock_mm_pool(pool) ORDER BY oldest
        "#,
    )
    .bind(POOLS_PER_PAIRING)
    .fetch_all(&mut *tx)
    .await?;
    let Some(now) = pools.first().map(|p| p.1) else {
        tx.commit().await?;
        return Ok(0);
    };
    let mut pairings = Vec::new();
    for (pool_key, _) in &pools {
        let waiting: Vec<Waiting> = sqlx::query_as(
            r#"
            SELECT id, client_id, game, config, join_data FROM postgame.mm_tickets
            WHERE pool = $1 AND status = 'waiting' AND expires_at > now()
            ORDER BY created_at, id
            LIMIT $2
            FOR UPDATE SKIP LOCKED
            "#,
        )
        .bind(pool_key)
        .bind(TICKETS_PER_POOL as i64)
        .fetch_all(&mut *tx)
        .await?;
        let Some(first) = waiting.first() else {
            continue;
        };
        // A game this binary does not serve is left to a worker that does.
        let Some(game) = games.get(&first.game) else {
            continue;
        };
        let n = game.players_per_match();
        let config = first.config.clone();
        let mut rest = waiting.into_iter();
        loop {
            let tickets: Vec<Waiting> = rest.by_ref().take(n).collect();
            if tickets.len() < n {
                break;
            }
            pairings.push(Pairing {
                match_id: MatchId::new_random(),
                game: Arc::clone(game),
                config: config.clone(),
                tickets,
            });
        }
    }
    if pairings.is_empty() {
        tx.commit().await?;
        return Ok(0);
    }
    // The tickets of each pairing, to end them if their game overruns.
    let owners: Vec<Vec<(Uuid, String)>> = pairings
        .iter()
        .map(|p| {
            p.tickets
                .iter()
                .map(|t| (t.id, t.client_id.clone()))
                .collect()
        })
        .collect();
    // The games' handlers run within the handler time limit, as in a worker batch.
    let (made, overrun) = run_limited(pairings, handler_limit, move |p, _| {
        let made = make_match(&p, now);
        (p, made)
    })
    .await;

    let mut matches = MatchRows::default();
    let mut messages: Vec<NewMessage> = Vec::new();
    let mut latest: Vec<NewMessage> = Vec::new();
    let mut matched: (Vec<Uuid>, Vec<Uuid>) = Default::default();
    let mut failed: Vec<Uuid> = Vec::new();
    // A game that overran ends its pairing's tickets `failed` (trying again would hang
    // again, and abandon another thread); the pairings after it wait for the next try.
    if let Some(o) = overrun {
        tracing::warn!(
            pairing = o.job,
            "a game's create or join ran past the handler time limit; its tickets failed"
        );
        for (id, client) in &owners[o.job] {
            failed.push(*id);
            messages.extend(expired_message(client, *id, "failed"));
        }
    }
    let mut tick_sooner = false;
    for (p, made) in made {
        let (created, applied) = match made {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(game = p.game.name(), error = %e, "matchmaking failed");
                for t in &p.tickets {
                    failed.push(t.id);
                    messages.extend(expired_message(&t.client_id, t.id, "failed"));
                }
                continue;
            }
        };
        // `make_match` checked that the joins were applied, so `next` is set.
        let Some((state, status, next_tick_at)) = applied.next else {
            continue;
        };
        let mut out = created.out;
        out.extend(applied.out);
        let view = latest_view(&out);
        let (log, lat) = outgoing_messages(p.match_id, out);
        messages.extend(log);
        latest.extend(lat);
        messages.push(lobby_announcement(p.match_id, p.game.name(), status));
        tick_sooner |= next_tick_at.is_some();
        matches.push(
            p.match_id,
            p.game.name(),
            status,
            created.config,
            state,
            view,
            next_tick_at,
            applied.label.unwrap_or_else(|| json!({})),
            applied.over,
        );
        for t in &p.tickets {
            matched.0.push(t.id);
            matched.1.push(p.match_id.0);
            if let Some(client) = ClientId::parse(&t.client_id) {
                messages.push(NewMessage {
                    channel: Channel::of_user(&client).as_str().to_owned(),
                    name: "matched".into(),
                    data: json!({ "match_id": p.match_id, "ticket": t.id }),
                });
            }
        }
    }
    let created = matches.ids.len();
    matches.insert(&mut tx).await?;
    tickets_matched(&mut tx, &matched.0, &matched.1).await?;
    tickets_end(&mut tx, &failed, "failed").await?;
    let (_, heads) = log_append(&mut tx, &messages).await?;
    let latest = latest_write(&mut tx, latest).await?;
    tx.commit().await?;
    notifier.written(&Written { heads, latest });
    if tick_sooner {
        notifier.tick_scheduled();
    }
    metrics::counter!("postgame_matchmaker_matches_total").increment(created as u64);
    metrics::counter!("postgame_matchmaker_matched_total").increment(matched.0.len() as u64);
    Ok(created)
}

/// New matches, inserted in one statement.
#[derive(Default)]
struct MatchRows {
    ids: Vec<Uuid>,
    games: Vec<String>,
    statuses: Vec<String>,
    configs: Vec<Value>,
    states: Vec<Value>,
    views: Vec<Option<Value>>,
    ticks: Vec<Option<DateTime<Utc>>>,
    labels: Vec<Value>,
    over: Vec<bool>,
}

impl MatchRows {
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        id: MatchId,
        game: &str,
        status: &str,
        config: Value,
        state: Value,
        view: Option<Value>,
        next_tick_at: Option<DateTime<Utc>>,
        label: Value,
        over: bool,
    ) {
        self.ids.push(id.0);
        self.games.push(game.to_owned());
        self.statuses.push(status.to_owned());
        self.configs.push(config);
        self.states.push(state);
        self.views.push(view);
        self.ticks.push(next_tick_at);
        self.labels.push(label);
        self.over.push(over);
    }

    async fn insert(&self, conn: &mut PgConnection) -> sqlx::Result<()> {
        if self.ids.is_empty() {
            return Ok(());
        }
        sqlx::query(
            r#"
            INSERT INTO postgame.matches
                (id, game, status, config, state, view, next_tick_at, label, ended_at)
            SELECT id, game, status, config, state, view, next_tick_at, label,
                   CASE WHEN over THEN now() END
            FROM unnest($1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::jsonb[],
                        $6::jsonb[], $7::timestamptz[], $8::jsonb[], $9::bool[])
                 AS u(id, game, status, config, state, view, next_tick_at, label, over)
            "#,
        )
        .bind(&self.ids)
        .bind(&self.games)
        .bind(&self.statuses)
        .bind(&self.configs)
        .bind(&self.states)
        .bind(&self.views)
        .bind(&self.ticks)
        .bind(&self.labels)
        .bind(&self.over)
        .execute(conn)
        .await?;
        Ok(())
    }
}

/// Marks locked waiting tickets matched into their matches. Every one must still be
/// waiting (the caller holds their row locks): anything else aborts the transaction.
async fn tickets_matched(
    conn: &mut PgConnection,
    ids: &[Uuid],
    matches: &[Uuid],
) -> sqlx::Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let n = sqlx::query(
        r#"
        UPDATE postgame.mm_tickets t
        SET status = 'matched', match_id = u.m, ended_at = now()
        FROM unnest($1::uuid[], $2::uuid[]) AS u(id, m)
        WHERE t.id = u.id AND t.status = 'waiting'
        "#,
    )
    .bind(ids)
    .bind(matches)
    .execute(conn)
    .await?
    .rows_affected();
    if n != ids.len() as u64 {
        // Cannot happen while the row locks hold; refuse to commit a half pairing.
        return Err(sqlx::Error::Protocol(format!(
            "{} of {} matched tickets were no longer waiting",
            ids.len() as u64 - n,
            ids.len()
        )));
    }
    Ok(())
}

/// Ends locked waiting tickets with `status`.
async fn tickets_end(conn: &mut PgConnection, ids: &[Uuid], status: &str) -> sqlx::Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE postgame.mm_tickets SET status = $2, ended_at = now()
          WHERE id = ANY($1) AND status = 'waiting'",
    )
    .bind(ids)
    .bind(status)
    .execute(conn)
    .await?;
    Ok(())
}

/// What one [`sweep_once`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub expired: u64,
    pub dropped: u64,
    pub deleted: u64,
}

/// Expires waiting tickets past their `expires_at`, drops those whose client has had no
/// connection since [`DROP_GRACE`] after opening, each answered on `user:<client>`, and
/// deletes tickets ended longer than [`RETENTION`] ago; at most [`SWEEP_BATCH`] of each.
pub async fn sweep_once(pool: &PgPool, notifier: &Notifier) -> sqlx::Result<Swept> {
    let mut tx = pool.begin().await?;
    let expired: Vec<(Uuid, String)> = sqlx::query_as(
        r#"
        WITH due AS (
            SELECT id FROM postgame.mm_tickets
            WHERE status = 'waiting' AND expires_at <= now()
            ORDER BY expires_at
            LIMIT $1
            FOR UPDATE SKIP LOCKED)
        UPDATE postgame.mm_tickets t SET status = 'expired', ended_at = now()
        FROM due WHERE t.id = due.id
        RETURNING t.id, t.client_id
        "#,
    )
    .bind(SWEEP_BATCH)
    .fetch_all(&mut *tx)
    .await?;
    let dropped: Vec<(Uuid, String)> = sqlx::query_as(
        r#"
        WITH gone AS (
            SELECT id FROM postgame.mm_tickets t
            WHERE status = 'waiting' AND created_at <= now() - $2 * interval '1 second'
              AND NOT EXISTS (SELECT 1 FROM postgame.sessions s WHERE s.client_id = t.client_id)
            ORDER BY created_at
            LIMIT $1
            FOR UPDATE SKIP LOCKED)
        UPDATE postgame.mm_tickets t SET status = 'dropped', ended_at = now()
        FROM gone WHERE t.id = gone.id
        RETURNING t.id, t.client_id
        "#,
    )
    .bind(SWEEP_BATCH)
    .bind(DROP_GRACE.as_secs_f64())
    .fetch_all(&mut *tx)
    .await?;
    let deleted = sqlx::query(
        r#"
        DELETE FROM postgame.mm_tickets WHERE id IN (
            SELECT id FROM postgame.mm_tickets
            WHERE ended_at < now() - $2 * interval '1 second'
            ORDER BY ended_at
            LIMIT $1
            FOR UPDATE SKIP LOCKED)
        "#,
    )
    .bind(SWEEP_BATCH)
    .bind(RETENTION.as_secs_f64())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let mut messages: Vec<NewMessage> = Vec::new();
    for (reason, rows) in [("expired", &expired), ("disconnected", &dropped)] {
        for (id, client) in rows {
            messages.extend(expired_message(client, *id, reason));
        }
    }
    let (_, heads) = log_append(&mut tx, &messages).await?;
    tx.commit().await?;
    notifier.heads(&heads);
    let swept = Swept {
        expired: expired.len() as u64,
        dropped: dropped.len() as u64,
        deleted,
    };
    metrics::counter!("postgame_matchmaker_expired_total").increment(swept.expired);
    metrics::counter!("postgame_matchmaker_dropped_total").increment(swept.dropped);
    Ok(swept)
}

/// Sweeps every [`SWEEP_EVERY`] until `stop` (straight on while a batch came back full).
pub async fn run_sweep(pool: PgPool, notifier: Arc<Notifier>, stop: CancellationToken) {
    let mut every = tokio::time::interval(SWEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.cancelled() => return,
        }
        loop {
            match sweep_once(&pool, &notifier).await {
                Ok(s) => {
                    let full = [s.expired, s.dropped, s.deleted]
                        .iter()
                        .any(|&n| n >= SWEEP_BATCH as u64);
                    if !full || stop.is_cancelled() {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "matchmaker sweep failed; retrying");
                    break;
                }
            }
        }
    }
}
