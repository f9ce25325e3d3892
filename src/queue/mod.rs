//! The durable control queue: what goes in (the gateway's group-committing
//! [`publisher::Publisher`]) and the statements workers use to take rows out.
//!
//! Ordering invariant: control ids of one match are allocated while the inserting
//! transaction holds that match's enqueue lock (`postgame.lock_enqueue`), so per match id
//! order is commit order. Workers claim a match's rows in id order and only while holding
//! the match lock (`postgame.try_lock_match`), so they never apply a later message before
//! an earlier one and never work on one match in two places.

pub mod publisher;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgConnection;
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
    /// The database's clock at the claim (the same for every row of a batch).
    pub now: DateTime<Utc>,
}

/// Claims up to `limit` pending control messages, oldest first, skipping matches that are
/// locked by another worker or ticker, or held after a failure. Returns the claimed rows
/// and the database's clock.
pub async fn control_claim(
    conn: &mut PgConnection,
    limit: i64,
) -> sqlx::Result<(Vec<ControlRow>, DateTime<Utc>)> {
    // The lock function runs on a bounded window of the oldest rows (a subquery with a
    // LIMIT is never flattened, so the planner cannot evaluate it on the whole queue),
    // lazily, until `limit` rows passed. Then the rows are taken from the same window
    // again, this time every row of the matches we locked, oldest first. Why twice: a
    // try-lock that fails on a match's first row can succeed on its next one (the holder
    // committed meanwhile), and taking only the rows after the flip would apply a later
    // message before an earlier one; rows of the window that the holder applied and
    // deleted in the meantime drop out at the row lock.
    let rows = sqlx::query_as!(
        ControlRow,
        r#"
        SELECT c.id, c.match_id, c.client_id, c.name, c.data, c.attempts, now() AS "now!"
        FROM postgame.control c
        WHERE c.id = ANY(ARRAY(
            SELECT w.id FROM (
                SELECT q.id, q.match_id FROM postgame.control q
                WHERE NOT EXISTS (
                    SELECT 1 FROM postgame.control_holds h
                    WHERE h.match_id = q.match_id AND h.until > now())
                ORDER BY q.id
                LIMIT $1::int8 * 4
            ) w
            WHERE w.match_id = ANY(ARRAY(
                SELECT l.match_id FROM (
                    SELECT q.id, q.match_id FROM postgame.control q
                    WHERE NOT EXISTS (
                        SELECT 1 FROM postgame.control_holds h
                        WHERE h.match_id = q.match_id AND h.until > now())
                    ORDER BY q.id
                    LIMIT $1::int8 * 4
                ) l
                WHERE postgame.try_lock_match(l.match_id)
                ORDER BY l.id
                LIMIT $1))
            ORDER BY w.id
            LIMIT $1))
        ORDER BY c.id
        FOR UPDATE SKIP LOCKED
        "#,
        limit
    )
    .fetch_all(&mut *conn)
    .await?;
    // An empty claim has no clock, and needs none.
    let now = rows.first().map_or_else(Utc::now, |r| r.now);
    Ok((rows, now))
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
