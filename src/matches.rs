//! The match store: creating matches, reading them for the HTTP API, and loading and saving
//! them inside worker and ticker transactions. It also turns a game's [`Outgoing`]
//! messages into log messages (channel names, lobby announcements of status changes), and
//! [`BatchWrites`] collects what one worker or ticker transaction writes, so both roles
//! turn a game's [`Applied`] into rows the same way.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

use crate::broadcast::{latest_write, log_append, NewMessage};
use crate::game::{Applied, Delivery, DynGame, Outgoing, To};
use crate::ids::{Channel, MatchId, Seq};

/// A match as the HTTP API shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct MatchInfo {
    pub id: Uuid,
    pub game: String,
    pub status: String,
    pub config: Value,
    pub created_at: DateTime<Utc>,
    /// The game's label ([`crate::game::Game::label`]), `{}` when it sets none.
    pub label: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<Value>,
}

/// A match's outgoing messages as channel messages, in order: those for the log and the
/// latest values ([`Delivery::Latest`]).
pub fn outgoing_messages(
    match_id: MatchId,
    out: Vec<Outgoing>,
) -> (Vec<NewMessage>, Vec<NewMessage>) {
    let mut log = Vec::new();
    let mut latest = Vec::new();
    for o in out {
        let m = NewMessage {
            channel: match &o.to {
                To::Match => Channel::of_match(match_id).as_str().to_owned(),
                To::User(c) => Channel::of_user(c).as_str().to_owned(),
                To::Lobby => Channel::lobby().as_str().to_owned(),
            },
            name: o.name,
            data: o.data,
        };
        match o.delivery {
            Delivery::Log => log.push(m),
            Delivery::Latest => latest.push(m),
        }
    }
    (log, latest)
}

/// What a committed transaction must announce: the log heads and the latest versions it
/// reached, per channel.
#[derive(Debug, Default, Clone)]
pub struct Written {
    pub heads: Vec<(String, Seq)>,
    pub latest: Vec<(String, i64)>,
}

/// The `match` announcement on the lobby when a match appears or changes status.
pub fn lobby_announcement(match_id: MatchId, game: &str, status: &str) -> NewMessage {
    NewMessage {
        channel: Channel::lobby().as_str().to_owned(),
        name: "match".into(),
        data: json!({ "id": match_id, "game": game, "status": status }),
    }
}

/// What a step stores in `matches.view` (`None`: keep what is there): the data of the
/// last logged `state` message to the match channel. A game that sends its `state` as a
/// latest value has it in `postgame.latest`, which [`match_get`] prefers; its view is set
/// to JSON `null` rather than a copy, because the view travels in every new version of the
/// match row, and for a 20 Hz game that is written 20 times a second.
pub fn latest_view(out: &[Outgoing]) -> Option<Value> {
    let states = out
        .iter()
        .rev()
        .filter(|o| o.to == To::Match && o.name == "state");
    let mut logged = None;
    for o in states {
        if o.delivery == Delivery::Latest {
            return Some(Value::Null);
        }
        logged = logged.or(Some(&o.data));
    }
    logged.cloned()
}

/// Why a match could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("{0}")]
    BadConfig(String),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    /// The client created its allowance of matches within the last minute; try again after
    /// this many seconds.
    #[error("too many matches created")]
    RateLimited(u64),
}

/// A limit on match creation per client: at most `per_minute` matches created by `client`
/// within the last minute, counted in the database so that it holds across gateways.
#[derive(Debug, Clone, Copy)]
pub struct CreatedBy<'a> {
    pub client: &'a str,
    pub per_minute: u32,
}

/// Creates a match: inserts it and logs its first messages and the lobby announcement, in
/// one transaction. Returns the match and what to announce.
pub async fn match_create(
    pool: &PgPool,
    game: &dyn DynGame,
    raw_config: &Value,
) -> Result<(MatchInfo, Written), CreateError> {
    match_create_by(pool, game, raw_config, None).await
}

/// [`match_create`] on behalf of a client: the match records its creator, and the
/// creator's matches of the last minute are counted first (`per_minute` 0: no limit).
/// Creations by one client are serialised by an advisory lock, so the count holds when
/// they race on several gateways.
pub async fn match_create_by(
    pool: &PgPool,
    game: &dyn DynGame,
    raw_config: &Value,
    by: Option<CreatedBy<'_>>,
) -> Result<(MatchInfo, Written), CreateError> {
    let id = MatchId::new_random();
    let mut tx = pool.begin().await?;
    if let Some(by) = by.filter(|b| b.per_minute > 0) {
        sqlx::query(
            "SELECT pg_advisory_xact_lock(hashtextextended('postgame.created_by:' || $1, 0))",
        )
        .bind(by.client)
        .execute(&mut *tx)
        .await?;
        // Seconds until the oldest of the last minute's creations leaves the window, when
        // the client is at its allowance.
        let wait: Option<f64> = sqlx::query_scalar(
            "SELECT extract(epoch FROM min(created_at) + interval '1 minute' - now())::float8
               FROM (SELECT created_at FROM postgame.matches
                      WHERE created_by = $1 AND created_at > now() - interval '1 minute'
                      ORDER BY created_at DESC LIMIT $2) recent
             HAVING count(*) >= $2",
        )
        .bind(by.client)
        .bind(i64::from(by.per_minute))
        .fetch_optional(&mut *tx)
        .await?
        .flatten();
        if let Some(wait) = wait {
            return Err(CreateError::RateLimited(wait.ceil().max(1.0) as u64));
        }
    }
    let now = sqlx::query_scalar!(r#"SELECT now() AS "now!""#)
        .fetch_one(&mut *tx)
        .await?;
    let created = game
        .create(id, raw_config, now)
        .map_err(CreateError::BadConfig)?;
    let view = latest_view(&created.out);
    let created_at: DateTime<Utc> = sqlx::query_scalar(
        r#"
        INSERT INTO postgame.matches (id, game, status, config, state, view, next_tick_at, label)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
        RETURNING created_at
        "#,
    )
    .bind(id.0)
    .bind(game.name())
    .bind(created.status)
    .bind(&created.config)
    .bind(&created.state)
    .bind(view)
    .bind(created.next_tick_at)
    .bind(&created.label)
    .fetch_one(&mut *tx)
    .await?;
    if let Some(by) = by {
        sqlx::query("UPDATE postgame.matches SET created_by = $2 WHERE id = $1")
            .bind(id.0)
            .bind(by.client)
            .execute(&mut *tx)
            .await?;
    }
    let (mut messages, latest) = outgoing_messages(id, created.out);
    messages.push(lobby_announcement(id, game.name(), created.status));
    let (_, heads) = log_append(&mut tx, &messages).await?;
    let latest = latest_write(&mut tx, latest).await?;
    tx.commit().await?;
    Ok((
        MatchInfo {
            id: id.0,
            game: game.name().to_owned(),
            status: created.status.to_owned(),
            config: created.config,
            created_at,
            label: created.label,
            state: None,
        },
        Written { heads, latest },
    ))
}

/// One match with its latest `state` data: the match channel's latest value of `state`
/// if the game sends one, else the last logged `state`.
pub async fn match_get(db: impl PgExecutor<'_>, id: MatchId) -> sqlx::Result<Option<MatchInfo>> {
    sqlx::query_as(
        r#"
        SELECT m.id, m.game, m.status, m.config, m.created_at, m.label,
               coalesce(l.data, m.view) AS state
        FROM postgame.matches m
        LEFT JOIN postgame.latest l ON l.channel = 'match:' || m.id AND l.name = 'state'
        WHERE m.id = $1
        "#,
    )
    .bind(id.0)
    .fetch_optional(db)
    .await
}

/// Whether a match exists.
pub async fn match_exists(db: impl PgExecutor<'_>, id: MatchId) -> sqlx::Result<bool> {
    let found = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM postgame.matches WHERE id = $1) AS "e!""#,
        id.0
    )
    .fetch_one(db)
    .await?;
    Ok(found)
}

/// Where a listing page starts: after the match with this creation time and id (the
/// last one of the previous page; pages go newest first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

impl Cursor {
    /// The cursor after `m`.
    pub fn after(m: &MatchInfo) -> Self {
        Self {
            created_at: m.created_at,
            id: m.id,
        }
    }

    /// Parses the opaque form [`Cursor::encode`] makes: `<microseconds>.<id hex>`.
    pub fn parse(raw: &str) -> Option<Self> {
        let (micros, id) = raw.split_once('.')?;
        if id.len() != 32 {
            return None;
        }
        Some(Self {
            created_at: DateTime::from_timestamp_micros(micros.parse().ok()?)?,
            id: Uuid::try_parse(id).ok()?,
        })
    }

    /// The opaque text clients pass back as `after`.
    pub fn encode(&self) -> String {
        format!(
            "{}.{}",
            self.created_at.timestamp_micros(),
            self.id.simple()
        )
    }
}

/// What [`match_list`] returns: every condition set here holds for every match listed.
#[derive(Debug, Clone, Default)]
pub struct ListFilter<'a> {
    pub game: Option<&'a str>,
    pub status: Option<&'a str>,
    /// JSON containment on the label (`label @> …`): a JSON object.
    pub label: Option<&'a Value>,
    /// Ids from the first to the second, both included (a lobby code: [`prefix_range`]).
    pub ids: Option<(Uuid, Uuid)>,
    /// Only matches created before (or at the same time with a smaller id than) this.
    pub after: Option<Cursor>,
    /// Only matches whose channel `match:<id>` is `LIKE` one of these patterns (what the
    /// caller's capabilities let them see: [`crate::gateway::auth::Identity::visible_matches`]);
    /// `None`: every match.
    pub visible: Option<&'a [String]>,
}

/// Matches newest first (by creation time, then id, both descending), at most `limit`.
/// The statement only has the conditions that are set, so each filter gets the plan of
/// its own index (game and creation time, the label's GIN index, the primary key).
pub async fn match_list(
    db: impl PgExecutor<'_>,
    filter: &ListFilter<'_>,
    limit: i64,
) -> sqlx::Result<Vec<MatchInfo>> {
    if filter.visible.is_some_and(|v| v.is_empty()) {
        return Ok(Vec::new());
    }
    let mut q = sqlx::QueryBuilder::<sqlx::Postgres>::new(
        "SELECT id, game, status, config, created_at, label, NULL::jsonb AS state \
         FROM postgame.matches WHERE true",
    );
    if let Some(game) = filter.game {
        q.push(" AND game = ").push_bind(game);
    }
    if let Some(status) = filter.status {
        q.push(" AND status = ").push_bind(status);
    }
    if let Some(label) = filter.label {
        q.push(" AND label @> ").push_bind(label);
    }
    if let Some((low, high)) = filter.ids {
        q.push(" AND id BETWEEN ").push_bind(low);
        q.push(" AND ").push_bind(high);
    }
    if let Some(after) = filter.after {
        q.push(" AND (created_at, id) < (")
            .push_bind(after.created_at);
        q.push(", ").push_bind(after.id).push(")");
    }
    if let Some(visible) = filter.visible {
        q.push(" AND ('match:' || id::text) LIKE ANY(")
            .push_bind(visible)
            .push(")");
    }
    q.push(" ORDER BY created_at DESC, id DESC LIMIT ")
        .push_bind(limit);
    q.build_query_as().fetch_all(db).await
}

/// The smallest and largest id starting with the hex digits of `prefix`.
pub fn prefix_range(prefix: &str) -> Option<(Uuid, Uuid)> {
    let hex: String = prefix
        .chars()
        .filter(|c| *c != '-')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if hex.is_empty() || hex.len() > 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let low = format!("{hex:0<32}");
    let high = format!("{hex:f<32}");
    Some((Uuid::parse_str(&low).ok()?, Uuid::parse_str(&high).ok()?))
}

/// A match loaded for change inside a worker or ticker transaction.
#[derive(Debug, Clone)]
pub struct LoadedMatch {
    pub id: Uuid,
    pub game: String,
    pub status: String,
    pub config: Value,
    pub state: Value,
    /// The schedule as stored, to tell whether a change moved the next tick earlier.
    pub next_tick_at: Option<DateTime<Utc>>,
}

/// Loads matches for change. The caller holds their match locks; the row lock is
/// `FOR NO KEY UPDATE` so it never blocks publishers' foreign-key checks.
pub async fn matches_load(conn: &mut PgConnection, ids: &[Uuid]) -> sqlx::Result<Vec<LoadedMatch>> {
    sqlx::query_as!(
        LoadedMatch,
        r#"
        SELECT id, game, status, config, state, next_tick_at
        FROM postgame.matches WHERE id = ANY($1)
        FOR NO KEY UPDATE
        "#,
        ids
    )
    .fetch_all(conn)
    .await
}

/// A match's new state, to be saved.
#[derive(Debug, Clone)]
pub struct MatchUpdate {
    pub id: Uuid,
    pub state: Value,
    pub status: String,
    pub view: Option<Value>,
    pub next_tick_at: Option<DateTime<Utc>>,
    /// How many inputs or ticks this update applied (added to `version`).
    pub steps: i64,
    /// Whether the match is over ([`crate::game::Game::is_over`]): stamps `ended_at` (kept
    /// from an earlier step that already ended it), or clears it when the match is live.
    pub over: bool,
    /// The new label ([`crate::game::Game::label`]); `None` keeps the stored one.
    pub label: Option<Value>,
}

/// Saves several matches in one statement. The states and views are moved out of
/// `updates` (left `null` and `None`): they are large, and this is the hot path.
pub async fn matches_save(
    conn: &mut PgConnection,
    updates: &mut [MatchUpdate],
) -> sqlx::Result<()> {
    if updates.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = updates.iter().map(|u| u.id).collect();
    let states: Vec<Value> = updates.iter_mut().map(|u| u.state.take()).collect();
    let statuses: Vec<String> = updates.iter().map(|u| u.status.clone()).collect();
    let views: Vec<Option<Value>> = updates.iter_mut().map(|u| u.view.take()).collect();
    let ticks: Vec<Option<DateTime<Utc>>> = updates.iter().map(|u| u.next_tick_at).collect();
    let steps: Vec<i64> = updates.iter().map(|u| u.steps).collect();
    let over: Vec<bool> = updates.iter().map(|u| u.over).collect();
    let labels: Vec<Option<Value>> = updates.iter_mut().map(|u| u.label.take()).collect();
    // `greatest(…, created_at)`: this transaction's now() may predate the match's creation.
    sqlx::query(
        r#"
        UPDATE postgame.matches m
        SET state = u.state, status = u.status, view = coalesce(u.view, m.view),
            next_tick_at = u.next_tick_at, version = m.version + u.steps, updated_at = now(),
            ended_at = CASE WHEN u.over
                            THEN coalesce(m.ended_at, greatest(now(), m.created_at)) END,
            label = coalesce(u.label, m.label)
        FROM unnest($1::uuid[], $2::jsonb[], $3::text[], $4::jsonb[], $5::timestamptz[],
                    $6::int8[], $7::bool[], $8::jsonb[])
             AS u(id, state, status, view, next_tick_at, steps, over, label)
        WHERE m.id = u.id
        "#,
    )
    .bind(&ids)
    .bind(&states)
    .bind(&statuses)
    .bind(&views)
    .bind(&ticks)
    .bind(&steps)
    .bind(&over)
    .bind(&labels)
    .execute(conn)
    .await?;
    Ok(())
}

/// What one worker or ticker transaction writes: the matches to save, the messages to
/// append to the log and the latest values to replace, in the order the matches were
/// processed.
#[derive(Debug, Default)]
pub struct BatchWrites {
    pub updates: Vec<MatchUpdate>,
    pub messages: Vec<NewMessage>,
    pub latest: Vec<NewMessage>,
    /// Whether some match's next tick appeared or moved earlier than stored: the tickers
    /// sleeping until the earliest tick they know of must be woken.
    pub tick_sooner: bool,
}

impl BatchWrites {
    /// Records the outcome of running inputs (or a tick) on `m`: its outgoing messages, a
    /// lobby announcement for every status transition, and the update to save, unless
    /// nothing was applied. Returns how many steps were applied and the error that stopped
    /// them, if any.
    pub fn record(&mut self, m: &LoadedMatch, applied: Applied) -> (usize, Option<String>) {
        let Applied {
            next,
            out,
            applied,
            statuses,
            error,
            over,
            label,
        } = applied;
        if let Some((state, status, next_tick_at)) = next {
            let id = MatchId(m.id);
            let view = latest_view(&out);
            let (log, latest) = outgoing_messages(id, out);
            self.messages.extend(log);
            self.latest.extend(latest);
            let mut previous = m.status.as_str();
            for s in &statuses {
                if *s != previous {
                    self.messages.push(lobby_announcement(id, &m.game, s));
                    previous = s;
                }
            }
            if let Some(next) = next_tick_at {
                self.tick_sooner |= m.next_tick_at.map_or(true, |stored| next < stored);
            }
            self.updates.push(MatchUpdate {
                id: m.id,
                state,
                status: status.to_owned(),
                view,
                next_tick_at,
                steps: applied as i64,
                over,
                label,
            });
        }
        (applied, error)
    }

    /// Saves the matches, appends the messages and replaces the latest values, in the
    /// caller's transaction. Returns what to announce after the commit.
    ///
    /// The states and latest values are moved out; what is left (ids, statuses,
    /// schedules, log messages) can still be read.
    pub async fn write(&mut self, conn: &mut PgConnection) -> sqlx::Result<Written> {
        matches_save(&mut *conn, &mut self.updates).await?;
        let (_, heads) = log_append(&mut *conn, &self.messages).await?;
        let latest = latest_write(conn, std::mem::take(&mut self.latest)).await?;
        Ok(Written { heads, latest })
    }
}
