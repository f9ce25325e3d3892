//! postgame's own `VACUUM` of its hot tables (`serve --vacuum-seconds`).
//!
//! The control queue deletes every row it consumes and rewrites a head per batch; matches,
//! presence and sessions are updated all the time. Autovacuum reclaims those dead rows
//! when it runs, but it can be switched off (as on some CI servers) or lag behind a busy
//! queue, and then claims walk ever more dead index entries. So one worker process at a
//! time (a session advisory lock, tried, never waited for) vacuums these tables every
//! `--vacuum-seconds`. `SKIP_LOCKED` skips a table autovacuum is already working on. It
//! cannot help while a transaction holds the xmin horizon back: nothing can be reclaimed
//! then (docs/RELIABILITY.md, the held-xmin soak).

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// The tables vacuumed, hottest first.
pub const TABLES: &str = "postgame.control, postgame.control_heads, postgame.control_holds, \
     postgame.publish_batches, postgame.presence, postgame.sessions, postgame.mm_tickets, postgame.matches";

/// The advisory lock held (at session level, on one connection) while vacuuming.
const LOCK: (i32, i32) = (7476904, 1);

/// One round: vacuums [`TABLES`] unless another process is at it. Returns whether this
/// process vacuumed.
pub async fn vacuum_once(pool: &PgPool) -> sqlx::Result<bool> {
    let mut conn = pool.acquire().await?;
    // The lock is a session's, outside any transaction, so the lease does not end it: a
    // process frozen while holding it loses its session (and the lock) once idle this
    // long, instead of keeping every other process from vacuuming.
    let locked: bool = sqlx::query_scalar(
        "SELECT pg_try_advisory_lock($1, $2)
         FROM (SELECT set_config('idle_session_timeout', '30s', false)) AS s",
    )
    .bind(LOCK.0)
    .bind(LOCK.1)
    .fetch_one(&mut *conn)
    .await?;
    if !locked {
        sqlx::query("RESET idle_session_timeout")
            .execute(&mut *conn)
            .await?;
        return Ok(false);
    }
    // A large table may take longer than the statement timeout of the pool's sessions.
    let result = async {
        sqlx::query("SET statement_timeout = 0")
            .execute(&mut *conn)
            .await?;
        sqlx::query(&format!("VACUUM (SKIP_LOCKED) {TABLES}"))
            .execute(&mut *conn)
            .await?;
        sqlx::query("RESET statement_timeout")
            .execute(&mut *conn)
            .await?;
        sqlx::query("RESET idle_session_timeout")
            .execute(&mut *conn)
            .await
    }
    .await;
    let unlocked = sqlx::query("SELECT pg_advisory_unlock($1, $2)")
        .bind(LOCK.0)
        .bind(LOCK.1)
        .execute(&mut *conn)
        .await;
    if result.is_err() || unlocked.is_err() {
        // Never hand a connection holding the lock (or a changed timeout) back to the pool.
        conn.detach();
    }
    result?;
    Ok(true)
}

/// Vacuums every `every` until `stop`; failures are logged and retried next round.
pub async fn run(pool: PgPool, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        match vacuum_once(&pool).await {
            Ok(true) => metrics::counter!("postgame_vacuum_runs_total").increment(1),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "vacuuming postgame's tables failed; retrying later")
            }
        }
    }
}
