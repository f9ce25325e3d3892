//! Dead letters (`postgame.control_dead`): control messages whose handler failed
//! `--max-attempts` times, moved aside so their match could go on. `postgame dead-letters`
//! lists them, retries them or drops them.
//!
//! **Retry and order.** A retried message is put back at the **end** of its match's queue:
//! it gets a new control id, allocated under the match's enqueue lock like any publish, so
//! it is applied after every message the match already has (applied or pending), never
//! before. Its old place cannot be given back: the match went on without it and players
//! saw what followed. Several dead letters retried together keep their original relative
//! order. Attempts start again from zero (a retry that fails again goes back to the dead
//! letters after `--max-attempts`). The handler sees the new id as the message's `msg_id`;
//! an idempotency key the client used still names the old one.
//!
//! Every action is one transaction, all or none: an id that is not a dead letter, or a
//! match that no longer exists (its dead letters are kept, without their match, until
//! retention drops them), fails the whole command and changes nothing.

use std::collections::BTreeSet;

use anyhow::Context;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::config::{DeadLetterSelection, DeadLettersAction};

/// Most dead letters `list` prints at once.
pub const MAX_LIST: i64 = 1000;

/// The dead letters of `match_id` (or all), newest first, at most `limit`, and how many
/// there are in all, as one JSON document.
pub async fn dead_list(pool: &PgPool, match_id: Option<Uuid>, limit: i64) -> sqlx::Result<Value> {
    sqlx::query_scalar(
        r#"
        SELECT jsonb_build_object(
            'count', (SELECT count(*) FROM postgame.control_dead d
                      WHERE $1::uuid IS NULL OR d.match_id = $1),
            'dead_letters', (SELECT coalesce(jsonb_agg(to_jsonb(d) ORDER BY d.id DESC), '[]')
                             FROM (SELECT * FROM postgame.control_dead d
                                   WHERE $1::uuid IS NULL OR d.match_id = $1
                                   ORDER BY d.id DESC LIMIT $2) d))
        "#,
    )
    .bind(match_id)
    .bind(limit.clamp(1, MAX_LIST))
    .fetch_one(pool)
    .await
}

/// A dead letter as `retry` needs it.
#[derive(sqlx::FromRow)]
struct Dead {
    id: i64,
    match_id: Uuid,
    client_id: Option<String>,
    name: String,
    data: Value,
}

/// Locks and reads the selected dead letters, in id order; an id given that is not a dead
/// letter is an error, as is a selection that finds none.
async fn dead_select(conn: &mut PgConnection, which: &Selection) -> anyhow::Result<Vec<Dead>> {
    let (ids, match_id) = match which {
        Selection::Ids(ids) => (Some(ids.as_slice()), None),
        Selection::Match(m) => (None, Some(*m)),
    };
    let rows: Vec<Dead> = sqlx::query_as(
        r#"
        SELECT id, match_id, client_id, name, data FROM postgame.control_dead
        WHERE id = ANY($1) OR match_id = $2
        ORDER BY id
        FOR UPDATE
        "#,
    )
    .bind(ids)
    .bind(match_id)
    .fetch_all(&mut *conn)
    .await
    .context("reading the dead letters")?;
    match which {
        Selection::Ids(ids) => {
            let found: BTreeSet<i64> = rows.iter().map(|r| r.id).collect();
            let missing: Vec<String> = ids
                .iter()
                .filter(|id| !found.contains(id))
                .map(i64::to_string)
                .collect();
            if !missing.is_empty() {
                anyhow::bail!(
                    "no dead letter with id {} (`postgame dead-letters list` shows them); \
                     nothing was changed",
                    missing.join(", ")
                );
            }
        }
        Selection::Match(m) if rows.is_empty() => {
            anyhow::bail!("match {m} has no dead letters; nothing was changed")
        }
        Selection::Match(_) => {}
    }
    Ok(rows)
}

/// Which dead letters an action takes.
#[derive(Debug, Clone)]
pub enum Selection {
    /// These ids (each must be a dead letter).
    Ids(Vec<i64>),
    /// Every dead letter of a match (there must be one).
    Match(Uuid),
}

impl Selection {
    fn parse(s: &DeadLetterSelection) -> anyhow::Result<Self> {
        match &s.match_id {
            Some(m) => Uuid::parse_str(m)
                .map(Selection::Match)
                .with_context(|| format!("`{m}` is not a match id")),
            None if s.ids.is_empty() => anyhow::bail!("name dead-letter ids or --match ID"),
            None => Ok(Selection::Ids(s.ids.clone())),
        }
    }
}

/// Puts the selected dead letters back at the end of their matches' queues (module docs),
/// in one transaction; returns (old id, new control id) pairs in the old ids' order.
pub async fn dead_retry(pool: &PgPool, which: &Selection) -> anyhow::Result<Vec<(i64, i64)>> {
    let mut tx = pool.begin().await?;
    let rows = dead_select(&mut tx, which).await?;
    let matches: BTreeSet<Uuid> = rows.iter().map(|r| r.match_id).collect();
    let matches: Vec<Uuid> = matches.into_iter().collect();
    // The publishers' lock order (matches sorted), and which still exist.
    let existing: Vec<Uuid> = sqlx::query_scalar(
        r#"
        SELECT m.id FROM postgame.matches m
        WHERE m.id = ANY($1)
          AND (SELECT bool_and(postgame.lock_enqueue(x))
               FROM (SELECT x FROM unnest($1::uuid[]) AS t(x) ORDER BY x) l)
        "#,
    )
    .bind(&matches)
    .fetch_all(&mut *tx)
    .await
    .context("locking the matches")?;
    let gone: Vec<String> = matches
        .iter()
        .filter(|m| !existing.contains(m))
        .map(Uuid::to_string)
        .collect();
    if !gone.is_empty() {
        anyhow::bail!(
            "match {} no longer exists, so its dead letters cannot be retried (drop them \
             instead); nothing was changed",
            gone.join(", ")
        );
    }
    let ids = super::publisher::control_insert(
        &mut tx,
        &rows.iter().map(|r| r.match_id).collect::<Vec<_>>(),
        &rows.iter().map(|r| r.client_id.clone()).collect::<Vec<_>>(),
        &rows.iter().map(|r| r.name.clone()).collect::<Vec<_>>(),
        &rows.iter().map(|r| r.data.clone()).collect::<Vec<_>>(),
    )
    .await
    .context("queueing the messages again")?;
    let old: Vec<i64> = rows.iter().map(|r| r.id).collect();
    sqlx::query("DELETE FROM postgame.control_dead WHERE id = ANY($1)")
        .bind(&old)
        .execute(&mut *tx)
        .await?;
    // Wakes the workers at the commit (they poll too, so this only saves latency).
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(crate::broadcast::notify::TOPIC_CONTROL)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(old.into_iter().zip(ids).collect())
}

/// Deletes the selected dead letters, in one transaction; returns their ids.
pub async fn dead_drop(pool: &PgPool, which: &Selection) -> anyhow::Result<Vec<i64>> {
    let mut tx = pool.begin().await?;
    let rows = dead_select(&mut tx, which).await?;
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    sqlx::query("DELETE FROM postgame.control_dead WHERE id = ANY($1)")
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(ids)
}

/// Runs `postgame dead-letters` on the database at `database_url` (already prepared):
/// `list` prints JSON on stdout, `retry` and `drop` one line per dead letter.
pub async fn run(database_url: &str, action: &DeadLettersAction) -> anyhow::Result<()> {
    let pool = crate::store::pool_connect(database_url, 1, "postgame dead-letters").await?;
    let result = act(&pool, action).await;
    pool.close().await;
    result
}

async fn act(pool: &PgPool, action: &DeadLettersAction) -> anyhow::Result<()> {
    match action {
        DeadLettersAction::List { match_id, limit } => {
            let match_id = match match_id {
                Some(m) => {
                    Some(Uuid::parse_str(m).with_context(|| format!("`{m}` is not a match id"))?)
                }
                None => None,
            };
            if !(1..=MAX_LIST).contains(limit) {
                anyhow::bail!("--limit is between 1 and {MAX_LIST}");
            }
            let doc = dead_list(pool, match_id, *limit).await?;
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        DeadLettersAction::Retry(s) => {
            for (old, new) in dead_retry(pool, &Selection::parse(s)?).await? {
                println!("retried dead letter {old} as control message {new}");
            }
        }
        DeadLettersAction::Drop(s) => {
            for id in dead_drop(pool, &Selection::parse(s)?).await? {
                println!("dropped dead letter {id}");
            }
        }
    }
    Ok(())
}
