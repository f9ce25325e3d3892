//! Retention: deletes log messages and latest values older than the retention, idempotency keys older than
//! 48 h (the contract promises at least 24 h), publish batch rows older than 10 minutes
//! (they only prove a commit for the seconds after it), dead letters older than 7 days, and channel
//! rows idle for longer than all of these with nothing left in their log. Deletes go in
//! bounded batches so a large backlog never holds long locks.

use std::time::Duration;

use sqlx::postgres::types::PgInterval;
use sqlx::{PgExecutor, PgPool};
use tokio_util::sync::CancellationToken;

const BATCH: i64 = 5000;

/// What one pass removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub messages: u64,
    pub latest: u64,
    pub keys: u64,
    pub batches: u64,
    pub dead: u64,
    pub channels: u64,
}

fn interval(d: Duration) -> PgInterval {
    PgInterval {
        months: 0,
        days: 0,
        microseconds: d.as_micros().min(i64::MAX as u128) as i64,
    }
}

async fn messages_prune(db: impl PgExecutor<'_>, keep: &PgInterval) -> sqlx::Result<u64> {
    let r = sqlx::query!(
        r#"
        DELETE FROM postgame.messages WHERE ctid = ANY(ARRAY(
            SELECT ctid FROM postgame.messages WHERE ts < now() - $1::interval LIMIT $2))
        "#,
        keep,
        BATCH
    )
    .execute(db)
    .await?;
    Ok(r.rows_affected())
}

async fn latest_prune(db: impl PgExecutor<'_>, keep: &PgInterval) -> sqlx::Result<u64> {
    let r = sqlx::query!(
        r#"
        DELETE FROM postgame.latest WHERE ctid = ANY(ARRAY(
            SELECT ctid FROM postgame.latest WHERE ts < now() - $1::interval LIMIT $2))
        "#,
        keep,
        BATCH
    )
    .execute(db)
    .await?;
    Ok(r.rows_affected())
}

async fn publish_keys_prune(db: impl PgExecutor<'_>) -> sqlx::Result<u64> {
    let r = sqlx::query!(
        r#"
        DELETE FROM postgame.publish_keys WHERE ctid = ANY(ARRAY(
            SELECT ctid FROM postgame.publish_keys
            WHERE created_at < now() - interval '48 hours' LIMIT $1))
        "#,
        BATCH
    )
    .execute(db)
    .await?;
    Ok(r.rows_affected())
}

async fn publish_batches_prune(db: impl PgExecutor<'_>) -> sqlx::Result<u64> {
    let r = sqlx::query!(
        r#"
        DELETE FROM postgame.publish_batches WHERE ctid = ANY(ARRAY(
            SELECT ctid FROM postgame.publish_batches
            WHERE created_at < now() - interval '10 minutes' LIMIT $1))
        "#,
        BATCH
    )
    .execute(db)
    .await?;
    Ok(r.rows_affected())
}

async fn control_dead_prune(db: impl PgExecutor<'_>) -> sqlx::Result<u64> {
    let r = sqlx::query!(
        r#"
        DELETE FROM postgame.control_dead WHERE ctid = ANY(ARRAY(
            SELECT ctid FROM postgame.control_dead
            WHERE failed_at < now() - interval '7 days' LIMIT $1))
        "#,
        BATCH
    )
    .execute(db)
    .await?;
    Ok(r.rows_affected())
}

async fn channels_prune(db: impl PgExecutor<'_>, keep: &PgInterval) -> sqlx::Result<u64> {
    // A channel row is what keeps seqs increasing; drop it only when its log is empty and
    // it has been idle far longer than anything a client could resume from.
    let r = sqlx::query!(
        r#"
        DELETE FROM postgame.channels c WHERE ctid = ANY(ARRAY(
            SELECT ctid FROM postgame.channels c
            WHERE updated_at < now() - greatest($1::interval, interval '7 days') * 4
              AND NOT EXISTS (SELECT 1 FROM postgame.messages m WHERE m.channel = c.name)
            LIMIT $2))
        "#,
        keep,
        BATCH
    )
    .execute(db)
    .await?;
    Ok(r.rows_affected())
}

/// One pass: every table, batch after batch, until nothing is left to delete.
pub async fn run_once(pool: &PgPool, retention: Duration) -> sqlx::Result<Pruned> {
    let keep = interval(retention);
    let mut total = Pruned::default();
    loop {
        let p = Pruned {
            messages: messages_prune(pool, &keep).await?,
            latest: latest_prune(pool, &keep).await?,
            keys: publish_keys_prune(pool).await?,
            batches: publish_batches_prune(pool).await?,
            dead: control_dead_prune(pool).await?,
            channels: channels_prune(pool, &keep).await?,
        };
        total.messages += p.messages;
        total.latest += p.latest;
        total.keys += p.keys;
        total.batches += p.batches;
        total.dead += p.dead;
        total.channels += p.channels;
        if p == Pruned::default() {
            return Ok(total);
        }
    }
}

/// Prunes every `every` until `stop`.
pub async fn run(pool: PgPool, retention: Duration, every: Duration, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.cancelled() => return,
        }
        match run_once(&pool, retention).await {
            Ok(p) if p != Pruned::default() => tracing::info!(?p, "pruned"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "prune failed; will retry"),
        }
    }
}
