//! The durable control queue: what goes in (the gateway's group-committing
//! [`publisher::Publisher`]) and the statements workers use to take rows out.
//!
//! Ordering invariant: control ids of one match are allocated while the inserting
//! transaction holds that match's enqueue lock (`postgame.lock_enqueue`), so per match id
//! order is commit order. Workers claim a match's rows in id order and only while holding
//! the match lock (`postgame.try_lock_match`), so they never apply a later message before
//! an earlier one and never work on one match in two places.

pub mod dead;
pub mod fast;
pub mod publisher;

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A claimed control message.
#[derive(Debug, Clone)]
pub struct ControlRow {
    pub id: i64,
    pub match_id: Uuid,
    pub client_id: Option<String>,
    pub name: String,
    pub data: Value,
    pub attempts: i32,
    /// When its publish committed (the database's clock, as `now`).
    pub created_at: DateTime<Utc>,
    /// The database's clock at the claim (the same for every row of a batch).
    pub now: DateTime<Utc>,
}

/// What one claim took: the rows, the matches whose heads it holds (rows or not), and the
/// database's clock.
#[derive(Debug, Default)]
pub struct Claim {
    pub rows: Vec<ControlRow>,
    /// Every match the claim locked; settle them with [`control_heads_settle`] before the
    /// commit (a head whose rows were all consumed meanwhile has none and is removed there).
    pub matches: Vec<Uuid>,
    pub now: DateTime<Utc>,
}

/// Claims pending control messages fairly across matches: the heads (one per match with
/// pending rows, see `postgame.control_heads`) of up to `limit` matches, oldest first,
/// skipping heads locked by another worker (`FOR UPDATE SKIP LOCKED`), matches locked by a
/// ticker and matches held after a failure; then, of those matches, up to `per_match` rows
/// each in id order, at most `limit` rows in all (every claimed match gets its first rows
/// before any match gets more). One match's backlog therefore costs other matches at most
/// one worker and `per_match` rows per transaction, never their turn.
///
/// Each match's rows are read from its head on (`id >= head`: no pending row of a match is
/// older than its head, since a match's ids are allocated and committed in order under its
/// enqueue lock), so the index scan starts past the entries of the rows already consumed,
/// which stay in the index, dead, for as long as a transaction holds the xmin horizon back.
pub async fn control_claim(
    conn: &mut PgConnection,
    limit: i64,
    per_match: i64,
) -> sqlx::Result<Claim> {
    // A bitmap scan of the control table for the per-match prefixes reads every row of a
    // flooded match; the (match_id, id) index scan stops after `per_match`.
    sqlx::query!("SET LOCAL enable_bitmapscan = off")
        .execute(&mut *conn)
        .await?;
    let heads = sqlx::query!(
        r#"
        WITH heads AS MATERIALIZED (
            SELECT h.match_id, h.head FROM postgame.control_heads h
            WHERE NOT EXISTS (
                SELECT 1 FROM postgame.control_holds x
                WHERE x.match_id = h.match_id AND x.until > now())
            ORDER BY h.head
            LIMIT $1
            FOR UPDATE SKIP LOCKED
        )
        SELECT match_id AS "match_id!", head AS "head!", now() AS "now!" FROM heads
        WHERE postgame.try_lock_match(match_id)
        ORDER BY head
        "#,
        limit
    )
    .fetch_all(&mut *conn)
    .await?;
    let heads = heads.into_iter().map(|h| (h.match_id, h.head, h.now));
    control_claim_rows(conn, heads.collect(), limit, per_match).await
}

/// The rows of a claim: of the matches whose heads the caller holds (`(match, head, the
/// database's clock)` in claim order), up to `per_match` rows each in id order, at most
/// `limit` in all, locked (`FOR UPDATE`).
async fn control_claim_rows(
    conn: &mut PgConnection,
    heads: Vec<(Uuid, i64, DateTime<Utc>)>,
    limit: i64,
    per_match: i64,
) -> sqlx::Result<Claim> {
    let Some(now) = heads.first().map(|h| h.2) else {
        return Ok(Claim {
            now: Utc::now(),
            ..Claim::default()
        });
    };
    let (matches, starts): (Vec<Uuid>, Vec<i64>) = heads.into_iter().map(|h| (h.0, h.1)).unzip();
    let rows = sqlx::query_as!(
        ControlRow,
        r#"
        SELECT c.id, c.match_id, c.client_id, c.name, c.data, c.attempts, c.created_at,
               $4::timestamptz AS "now!"
        FROM postgame.control c
        WHERE c.id = ANY(ARRAY(
            SELECT p.id
            FROM unnest($1::uuid[], $5::int8[]) WITH ORDINALITY AS m(match_id, head, pos)
            CROSS JOIN LATERAL (
                SELECT q.id, row_number() OVER (ORDER BY q.id) AS rank
                FROM (
                    SELECT q.id FROM postgame.control q
                    WHERE q.match_id = m.match_id AND q.id >= m.head
                    ORDER BY q.id
                    LIMIT $2
                ) q
            ) p
            ORDER BY p.rank, m.pos
            LIMIT $3))
        ORDER BY c.id
        FOR UPDATE
        "#,
        &matches,
        per_match.max(1),
        limit,
        now,
        &starts
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(Claim { rows, matches, now })
}

/// Longest a publisher's transaction waits for a row lock while it applies its own
/// control messages inline ([`publisher`]'s fast apply): past it the statement fails and
/// the batch is written again without the fast apply, so a publisher holding enqueue locks
/// never waits long for a worker or a ticker (and never takes part in a deadlock long
/// enough for PostgreSQL's detector, which would pick a victim after `deadlock_timeout`).
pub const FAST_LOCK_TIMEOUT_MS: i64 = 200;

/// The claim of the fast apply, in the transaction that has just inserted control rows
/// and still holds their matches' enqueue locks: for each `(match, first id)` (the match's
/// oldest row inserted by this transaction), the match's head is claimed exactly as
/// [`control_claim`] claims it (`FOR UPDATE SKIP LOCKED`, no retry hold, the match lock
/// taken with `try`, never waited for), but only when the head is that first id: the match
/// has no earlier message still in the queue, so applying this transaction's rows now
/// cannot overtake one. Then up to `per_match` of its rows each, at most `limit` in all.
/// A match whose head or lock is held elsewhere, or that has earlier rows or a hold, is
/// left out: its rows stay in the queue for a worker.
///
/// Also sets this transaction's `lock_timeout` to [`FAST_LOCK_TIMEOUT_MS`].
pub async fn control_claim_fresh(
    conn: &mut PgConnection,
    firsts: &[(Uuid, i64)],
    limit: i64,
    per_match: i64,
) -> sqlx::Result<Claim> {
    let (ms, ids): (Vec<Uuid>, Vec<i64>) = firsts.iter().copied().unzip();
    let heads = sqlx::query!(
        r#"
        WITH cfg AS MATERIALIZED (
            SELECT set_config('lock_timeout', $3::int8 || 'ms', true) AS v
        ), heads AS MATERIALIZED (
            SELECT h.match_id, h.head FROM postgame.control_heads h
            JOIN unnest($1::uuid[], $2::int8[]) AS f(match_id, first)
              ON f.match_id = h.match_id AND f.first = h.head
            WHERE NOT EXISTS (
                SELECT 1 FROM postgame.control_holds x
                WHERE x.match_id = h.match_id AND x.until > now())
            ORDER BY h.head
            FOR UPDATE OF h SKIP LOCKED
        )
        SELECT match_id AS "match_id!", head AS "head!", now() AS "now!"
        FROM heads, cfg
        WHERE cfg.v IS NOT NULL AND postgame.try_lock_match(match_id)
        ORDER BY head
        "#,
        &ms,
        &ids,
        FAST_LOCK_TIMEOUT_MS
    )
    .fetch_all(&mut *conn)
    .await?;
    let heads = heads.into_iter().map(|h| (h.match_id, h.head, h.now));
    control_claim_rows(conn, heads.collect(), limit, per_match).await
}

/// Moves the heads of claimed matches to their oldest remaining message, or removes them
/// when none remains (see the migration that made `postgame.control_heads`). Call it last
/// in the worker transaction, after the processed rows are deleted.
pub async fn control_heads_settle(conn: &mut PgConnection, matches: &[Uuid]) -> sqlx::Result<()> {
    if matches.is_empty() {
        return Ok(());
    }
    sqlx::query!("SELECT postgame.control_heads_settle($1)", matches)
        .execute(conn)
        .await?;
    Ok(())
}

/// Removes processed messages (in the transaction that applied them).
pub async fn control_delete(conn: &mut PgConnection, ids: &[i64]) -> sqlx::Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query!("DELETE FROM postgame.control WHERE id = ANY($1)", ids)
        .execute(conn)
        .await?;
    Ok(())
}

/// Lifts the holds of matches whose head-of-line message finally went through.
pub async fn control_holds_clear(conn: &mut PgConnection, matches: &[Uuid]) -> sqlx::Result<()> {
    if matches.is_empty() {
        return Ok(());
    }
    sqlx::query!(
        "DELETE FROM postgame.control_holds WHERE match_id = ANY($1)",
        matches
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// What became of a failed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Retried after the hold expires.
    Retry { attempts: i32 },
    /// Moved to `postgame.control_dead`.
    Dead,
}

/// Records a handler failure: the match is held for a backoff that doubles per attempt
/// (1 s, 2 s, 4 s… at most 60 s), and after `max_attempts` the message is moved to the
/// dead-letter table so the match can go on.
pub async fn control_fail(
    conn: &mut PgConnection,
    row: &ControlRow,
    error: &str,
    max_attempts: i32,
) -> sqlx::Result<Failure> {
    let attempts = row.attempts + 1;
    let error: String = error.chars().take(2000).collect();
    if attempts >= max_attempts {
        sqlx::query!(
            r#"
            WITH moved AS (DELETE FROM postgame.control WHERE id = $1 RETURNING *)
            INSERT INTO postgame.control_dead
                (id, match_id, client_id, name, data, attempts, last_error, created_at)
            SELECT id, match_id, client_id, name, data, $2, $3, created_at FROM moved
            "#,
            row.id,
            attempts,
            error
        )
        .execute(&mut *conn)
        .await?;
        control_holds_clear(conn, &[row.match_id]).await?;
        return Ok(Failure::Dead);
    }
    let backoff_ms = (1000_i64 << (attempts - 1).clamp(0, 6)).min(60_000);
    sqlx::query!(
        "UPDATE postgame.control SET attempts = $2, last_error = $3 WHERE id = $1",
        row.id,
        attempts,
        error
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query!(
        r#"
        INSERT INTO postgame.control_holds (match_id, until)
        VALUES ($1, now() + $2 * interval '1 millisecond')
        ON CONFLICT (match_id) DO UPDATE SET until = EXCLUDED.until
        "#,
        row.match_id,
        backoff_ms as f64
    )
    .execute(conn)
    .await?;
    Ok(Failure::Retry { attempts })
}

/// How often a process with the worker role samples the queue gauges.
pub const GAUGE_INTERVAL: Duration = Duration::from_secs(5);

/// The most rows the depth and dead-letter gauges count: past it they read this value (a
/// count of a huge backlog every few seconds would be a load of its own).
pub const GAUGE_COUNT_CAP: i64 = 100_000;

/// The queue as the gauges show it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueueGauges {
    /// Pending control messages (at most [`GAUGE_COUNT_CAP`]).
    pub depth: i64,
    /// Age of the oldest pending message in seconds (0 when none is pending).
    pub oldest_age_seconds: f64,
    /// Dead letters (at most [`GAUGE_COUNT_CAP`]).
    pub dead_letters: i64,
}

/// Reads the queue gauges in one statement. The oldest pending message is the oldest of
/// the matches' heads (each head is its match's oldest pending row), found through the
/// heads' index rather than by scanning the queue.
pub async fn queue_gauges_read(pool: &PgPool) -> sqlx::Result<QueueGauges> {
    let r = sqlx::query!(
        r#"
        SELECT
          (SELECT count(*) FROM (SELECT 1 FROM postgame.control LIMIT $1) c) AS "depth!",
          coalesce(extract(epoch FROM now() - (
              SELECT c.created_at FROM postgame.control c
              WHERE c.id = (SELECT min(h.head) FROM postgame.control_heads h)))::float8,
            0) AS "oldest!",
          (SELECT count(*) FROM (SELECT 1 FROM postgame.control_dead LIMIT $1) d) AS "dead!"
        "#,
        GAUGE_COUNT_CAP
    )
    .fetch_one(pool)
    .await?;
    Ok(QueueGauges {
        depth: r.depth,
        oldest_age_seconds: r.oldest.max(0.0),
        dead_letters: r.dead,
    })
}

/// Sets `postgame_queue_depth`, `postgame_queue_oldest_age_seconds` and
/// `postgame_dead_letters` every [`GAUGE_INTERVAL`] until `stop` (one task per process
/// with the worker role; every such process reports the same values).
pub async fn run_gauges(pool: PgPool, stop: CancellationToken) {
    crate::claim_loop::every(GAUGE_INTERVAL, &stop, || async {
        match queue_gauges_read(&pool).await {
            Ok(g) => {
                metrics::gauge!("postgame_queue_depth").set(g.depth as f64);
                metrics::gauge!("postgame_queue_oldest_age_seconds").set(g.oldest_age_seconds);
                metrics::gauge!("postgame_dead_letters").set(g.dead_letters as f64);
            }
            Err(e) => tracing::debug!(error = %e, "sampling the queue gauges failed"),
        }
    })
    .await;
}
