//! The broadcast path: the message log (per-channel gap-free `seq`, written in the
//! writer's transaction), the process-wide [`notify::Notifier`] that turns commits into
//! coalesced NOTIFY wake-ups, the one LISTEN connection per process ([`listen`]), the
//! gateway's fan-out [`hub::Hub`], and retention ([`prune`]).
//!
//! Beside the log, the latest-value path ([`latest_write`]): a message a game sends as
//! [`crate::game::Delivery::Latest`] only replaces its (channel, name) row in the unlogged
//! `postgame.latest` table; the hub sends it as a `latest` frame, conflated, with no seq.
//!
//! Invariant: a channel's seqs are allocated under the row lock of its `channels` row, so
//! they are gap-free and in commit order; a reader that has delivered seq `n` and later
//! reads `seq > n` misses nothing. NOTIFY only says "channel X reached seq n": it is a
//! wake-up, never the data, and a lost one costs latency (the hub also polls), never data.

pub mod hub;
pub mod listen;
pub mod notify;
pub mod prune;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgExecutor};

use crate::ids::Seq;

/// One message to append to the log.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub channel: String,
    pub name: String,
    pub data: Value,
}

/// A message read back from the log; `data` stays JSON text so it is never re-parsed on
/// its way to the sockets.
#[derive(Debug, Clone)]
pub struct LoggedMessage {
    pub channel: String,
    pub seq: Seq,
    pub name: String,
    pub data: String,
    pub ts: DateTime<Utc>,
}

/// Appends messages (in order) to their channels' logs inside the caller's transaction and
/// returns each message's seq, index for index, plus each channel's new head.
pub async fn log_append(
    conn: &mut PgConnection,
    messages: &[NewMessage],
) -> sqlx::Result<(Vec<Seq>, Vec<(String, Seq)>)> {
    if messages.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    // Count per channel, sorted by name: the upsert locks channel rows in this order, so
    // two writers touching the same channels can never deadlock.
    let mut counts: std::collections::BTreeMap<&str, i64> = Default::default();
    for m in messages {
        *counts.entry(m.channel.as_str()).or_default() += 1;
    }
    let names: Vec<String> = counts.keys().map(|s| (*s).to_owned()).collect();
    let ns: Vec<i64> = counts.values().copied().collect();
    let heads = channel_bump_heads(&mut *conn, &names, &ns).await?;
    // Hand out seqs: the batch for a channel occupies (head - n, head].
    let mut next: std::collections::HashMap<&str, Seq> = heads
        .iter()
        .map(|(name, head)| (name.as_str(), *head - counts[name.as_str()] + 1))
        .collect();
    let mut seqs = Vec::with_capacity(messages.len());
    for m in messages {
        // Every channel of `messages` is in `counts`, hence in `heads` and `next`.
        let slot = next
            .get_mut(m.channel.as_str())
            .expect("channel was bumped");
        seqs.push(*slot);
        *slot += 1;
    }
    let channels: Vec<String> = messages.iter().map(|m| m.channel.clone()).collect();
    let msg_names: Vec<String> = messages.iter().map(|m| m.name.clone()).collect();
    let datas: Vec<Value> = messages.iter().map(|m| m.data.clone()).collect();
    messages_insert(&mut *conn, &channels, &seqs, &msg_names, &datas).await?;
    Ok((seqs, heads))
}

async fn channel_bump_heads(
    conn: impl PgExecutor<'_>,
    names: &[String],
    counts: &[i64],
) -> sqlx::Result<Vec<(String, Seq)>> {
    let rows = sqlx::query!(
        r#"
        INSERT INTO postgame.channels AS c (name, head)
        SELECT name, n FROM unnest($1::text[], $2::int8[]) AS t(name, n) ORDER BY name
        ON CONFLICT (name) DO UPDATE SET head = c.head + EXCLUDED.head, updated_at = now()
        RETURNING name, head
        "#,
        names,
        counts
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|r| (r.name, r.head)).collect())
}

async fn messages_insert(
    conn: impl PgExecutor<'_>,
    channels: &[String],
    seqs: &[Seq],
    names: &[String],
    datas: &[Value],
) -> sqlx::Result<()> {
    sqlx::query!(
        r#"
        INSERT INTO postgame.messages (channel, seq, name, data)
        SELECT * FROM unnest($1::text[], $2::int8[], $3::text[], $4::jsonb[])
        "#,
        channels,
        seqs,
        names,
        datas
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Retained messages of `channel` with seq > `after`, oldest first, at most `limit`.
pub async fn history_read(
    conn: impl PgExecutor<'_>,
    channel: &str,
    after: Seq,
    limit: i64,
) -> sqlx::Result<Vec<LoggedMessage>> {
    sqlx::query_as!(
        LoggedMessage,
        r#"
        SELECT channel, seq, name, data::text AS "data!", ts
        FROM postgame.messages
        WHERE channel = $1 AND seq > $2
        ORDER BY seq
        LIMIT $3
        "#,
        channel,
        after,
        limit
    )
    .fetch_all(conn)
    .await
}

/// For several channels at once: messages with seq > that channel's `after`, at most
/// `limit` per channel, ordered by channel then seq.
pub async fn history_read_many(
    conn: impl PgExecutor<'_>,
    channels: &[String],
    afters: &[Seq],
    limit: i64,
) -> sqlx::Result<Vec<LoggedMessage>> {
    sqlx::query_as!(
        LoggedMessage,
        r#"
        SELECT m.channel AS "channel!", m.seq AS "seq!", m.name AS "name!",
               m.data AS "data!", m.ts AS "ts!"
        FROM unnest($1::text[], $2::int8[]) AS u(channel, after)
        CROSS JOIN LATERAL (
            SELECT channel, seq, name, data::text AS data, ts FROM postgame.messages
            WHERE channel = u.channel AND seq > u.after
            ORDER BY seq LIMIT $3
        ) m
        ORDER BY m.channel, m.seq
        "#,
        channels,
        afters,
        limit
    )
    .fetch_all(conn)
    .await
}

/// A channel's head (0 when never written) and its oldest retained seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelPosition {
    pub head: Seq,
    pub oldest: Option<Seq>,
}

pub async fn channel_position(
    conn: impl PgExecutor<'_>,
    channel: &str,
) -> sqlx::Result<ChannelPosition> {
    let row = sqlx::query!(
        r#"
        SELECT coalesce((SELECT head FROM postgame.channels WHERE name = $1), 0) AS "head!",
               (SELECT seq FROM postgame.messages WHERE channel = $1 ORDER BY seq LIMIT 1)
                   AS oldest
        "#,
        channel
    )
    .fetch_one(conn)
    .await?;
    Ok(ChannelPosition {
        head: row.head,
        oldest: row.oldest,
    })
}

/// The heads of several channels (absent ones are left out).
pub async fn channel_heads(
    conn: impl PgExecutor<'_>,
    channels: &[String],
) -> sqlx::Result<Vec<(String, Seq)>> {
    let rows = sqlx::query!(
        "SELECT name, head FROM postgame.channels WHERE name = ANY($1)",
        channels
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|r| (r.name, r.head)).collect())
}

/// A channel's latest value of one name, read back from `postgame.latest`.
#[derive(Debug, Clone)]
pub struct LatestValue {
    pub channel: String,
    pub name: String,
    pub version: i64,
    pub data: String,
    pub ts: DateTime<Utc>,
}

/// Writes latest values inside the caller's transaction: each replaces its (channel,
/// name) row. Of several values for one (channel, name) only the last counts. Returns
/// each channel's highest new version, for the wake-ups.
///
/// Versions are the database's clock in microseconds (`clock_timestamp()`), and a row's
/// version never goes down even when two writers of one row allocate theirs in one order
/// and commit in the other (`greatest` with the row's version + 1), so a reader can drop
/// anything not newer than what it has. Why the clock and not a sequence: the ticker
/// commits game-loop batches asynchronously, and a crash of Postgres loses the last few
/// hundred milliseconds of them, the sequence's advance included, while their versions
/// may already have reached clients; a sequence would then hand out versions that clients
/// drop as old until it passes its pre-crash value. The clock keeps moving across the
/// crash (the table is emptied by the crash, so no row's `+ 1` carries an old version
/// over). It assumes the database host's clock does not step back by more than the
/// crash's downtime.
pub async fn latest_write(
    conn: &mut PgConnection,
    values: Vec<NewMessage>,
) -> sqlx::Result<Vec<(String, i64)>> {
    if values.is_empty() {
        return Ok(Vec::new());
    }
    // The last value per (channel, name), sorted: one row is written once per statement
    // (ON CONFLICT cannot touch a row twice), and rows are locked in one global order.
    let mut last: std::collections::BTreeMap<(String, String), Value> = Default::default();
    for v in values {
        last.insert((v.channel, v.name), v.data);
    }
    let mut channels = Vec::with_capacity(last.len());
    let mut names = Vec::with_capacity(last.len());
    let mut datas = Vec::with_capacity(last.len());
    for ((c, n), d) in last {
        channels.push(c);
        names.push(n);
        datas.push(d);
    }
    let rows = sqlx::query!(
        r#"
        INSERT INTO postgame.latest AS l (channel, name, version, data)
        SELECT c, n, (extract(epoch FROM clock_timestamp()) * 1000000)::int8, d
        FROM unnest($1::text[], $2::text[], $3::jsonb[]) AS u(c, n, d)
        ON CONFLICT (channel, name) DO UPDATE
            SET version = greatest(EXCLUDED.version, l.version + 1), data = EXCLUDED.data,
                ts = EXCLUDED.ts
        RETURNING channel, version
        "#,
        &channels,
        &names,
        &datas
    )
    .fetch_all(conn)
    .await?;
    let mut max: std::collections::BTreeMap<String, i64> = Default::default();
    for r in rows {
        let slot = max.entry(r.channel).or_default();
        *slot = (*slot).max(r.version);
    }
    Ok(max.into_iter().collect())
}

/// Every latest value of these channels.
pub async fn latest_read_many(
    conn: impl PgExecutor<'_>,
    channels: &[String],
) -> sqlx::Result<Vec<LatestValue>> {
    sqlx::query_as!(
        LatestValue,
        r#"
        SELECT channel, name, version, data::text AS "data!", ts
        FROM postgame.latest WHERE channel = ANY($1)
        "#,
        channels
    )
    .fetch_all(conn)
    .await
}
