//! The gateway's fan-out: which local connections subscribe to which channel, how far each
//! has been served, and the one task that reads new log rows and hands them out.
//!
//! Each channel entry remembers `head`, the last seq this gateway has read and delivered.
//! A subscriber is either *in sync* (`cursor >= head`: every new row goes straight to its
//! outbox) or *catching up* (a task replays `cursor+1..` from the log, then flips it to in
//! sync under the same lock the live path takes). That single lock is the seam: a row is
//! delivered by exactly one of the two paths, so resume has no gap and no duplicate.
//! Every frame is serialised once per gateway and shared by all its subscribers.
//!
//! Latest values (`latest` frames) take a simpler path beside it: the entry keeps the
//! frame of the newest version of each name it has delivered. A new subscriber gets those
//! frames at once (right after `subscribed`), and every newer version goes to all the
//! channel's subscribers, in sync or catching up, as it is read. A subscriber joins the
//! live set before anything newer can be delivered, so it always ends on the newest value;
//! versions let the client drop the rare older frame.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use chrono::SecondsFormat;
use serde::Serialize;
use serde_json::value::RawValue;
use sqlx::PgPool;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use super::{
    channel_heads, history_read, history_read_many, latest_read_many, LatestValue, LoggedMessage,
};
use crate::ids::Seq;

/// Rows read per channel per query.
const READ_LIMIT: i64 = 500;

/// A frame queued for a connection: its text and, for a log message delivered live, when
/// it was written to the log (the writer records `postgame_fanout_lag_seconds` from it once
/// the frame is on the socket; replies and replayed history carry none).
#[derive(Debug, Clone)]
pub struct Frame {
    pub text: Utf8Bytes,
    pub logged_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl From<Utf8Bytes> for Frame {
    fn from(text: Utf8Bytes) -> Self {
        Self {
            text,
            logged_at: None,
        }
    }
}

impl From<String> for Frame {
    fn from(text: String) -> Self {
        Utf8Bytes::from(text).into()
    }
}

/// The sending side of one connection's bounded outbox.
#[derive(Clone)]
pub struct Outbox {
    pub conn: u64,
    tx: mpsc::Sender<Frame>,
    overflow: Arc<Notify>,
}

impl Outbox {
    pub fn new(conn: u64, tx: mpsc::Sender<Frame>, overflow: Arc<Notify>) -> Self {
        Self { conn, tx, overflow }
    }

    /// Waits for room for `n` frames (at most the outbox's capacity); `None` once the
    /// connection is gone. Replay uses this, so a resuming client is fed at its own pace
    /// instead of being cut off for reading slower than the database.
    pub async fn reserve(&self, n: usize) -> Option<mpsc::PermitIterator<'_, Frame>> {
        self.tx
            .reserve_many(n.min(self.tx.max_capacity()))
            .await
            .ok()
    }

    /// The most frames the outbox holds.
    pub fn capacity(&self) -> usize {
        self.tx.max_capacity()
    }

    /// Queues a frame without waiting. A full outbox means the client reads too slowly:
    /// the frame is not queued and the session is told to close the connection (4008),
    /// after which the client resumes from its last seq.
    pub fn push(&self, frame: Frame) -> bool {
        match self.tx.try_send(frame) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.overflow.notify_one();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

struct Sub {
    outbox: Outbox,
    cursor: Seq,
    catching_up: bool,
}

struct Entry {
    head: Seq,
    subs: HashMap<u64, Sub>,
    /// Per name, the newest latest value delivered: its version and frame.
    latest: HashMap<String, (i64, Utf8Bytes)>,
    /// The highest version in `latest` (0 when none).
    latest_max: i64,
}

impl Entry {
    fn new(head: Seq) -> Self {
        Self {
            head,
            subs: HashMap::new(),
            latest: HashMap::new(),
            latest_max: 0,
        }
    }
}

#[derive(Default)]
struct State {
    channels: HashMap<String, Entry>,
    dirty: HashSet<String>,
    /// Channels that may have newer latest values.
    latest_dirty: HashSet<String>,
    resync: bool,
}

/// See the module docs.
pub struct Hub {
    state: Mutex<State>,
    pool: PgPool,
    wake: Notify,
}

#[derive(Serialize)]
struct MessageFrame<'a> {
    op: &'static str,
    channel: &'a str,
    seq: Seq,
    name: &'a str,
    data: &'a RawValue,
    ts: String,
}

#[derive(Serialize)]
struct LatestFrame<'a> {
    op: &'static str,
    channel: &'a str,
    name: &'a str,
    data: &'a RawValue,
    ts: String,
    version: i64,
}

/// The `latest` frame of a latest value.
pub fn latest_frame(v: &LatestValue) -> Utf8Bytes {
    let data = serde_json::from_str::<&RawValue>(&v.data)
        .unwrap_or_else(|_| serde_json::from_str("null").expect("null is JSON"));
    let frame = LatestFrame {
        op: "latest",
        channel: &v.channel,
        name: &v.name,
        data,
        ts: v.ts.to_rfc3339_opts(SecondsFormat::Micros, true),
        version: v.version,
    };
    Utf8Bytes::from(serde_json::to_string(&frame).expect("frame serialises"))
}

/// The `message` frame of a logged message.
pub fn message_frame(m: &LoggedMessage) -> Utf8Bytes {
    // The log stores jsonb, whose text form is always valid JSON; `null` is a safe stand-in
    // should that ever not hold.
    let data = serde_json::from_str::<&RawValue>(&m.data)
        .unwrap_or_else(|_| serde_json::from_str("null").expect("null is JSON"));
    let frame = MessageFrame {
        op: "message",
        channel: &m.channel,
        seq: m.seq,
        name: &m.name,
        data,
        ts: m.ts.to_rfc3339_opts(SecondsFormat::Micros, true),
    };
    // Serialising strings, integers and raw JSON cannot fail.
    Utf8Bytes::from(serde_json::to_string(&frame).expect("frame serialises"))
}

impl Hub {
    pub fn new(pool: PgPool) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State::default()),
            pool,
            wake: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every critical section leaves the maps consistent between statements.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Channels reached these heads (from NOTIFY or from this process's own commits).
    pub fn on_heads<'a>(&self, heads: impl IntoIterator<Item = (&'a str, Seq)>) {
        self.mark_dirty(heads, false);
    }

    /// Channels have latest values up to these versions (from NOTIFY or from this
    /// process's own commits).
    pub fn on_latest<'a>(&self, versions: impl IntoIterator<Item = (&'a str, i64)>) {
        self.mark_dirty(versions, true);
    }

    /// Marks subscribed channels whose log head (or, with `latest`, latest version) is past
    /// what this hub delivered, and wakes the fetch task if any.
    fn mark_dirty<'a>(&self, items: impl IntoIterator<Item = (&'a str, i64)>, latest: bool) {
        let mut guard = self.lock();
        let state = &mut *guard;
        let mut any = false;
        for (channel, n) in items {
            let Some(entry) = state.channels.get(channel) else {
                continue;
            };
            let (delivered, dirty) = if latest {
                (entry.latest_max, &mut state.latest_dirty)
            } else {
                (entry.head, &mut state.dirty)
            };
            if n > delivered {
                dirty.insert(channel.to_owned());
                any = true;
            }
        }
        drop(guard);
        if any {
            self.wake.notify_one();
        }
    }

    /// Check every channel against the database (after a lost LISTEN connection).
    pub fn resync_all(&self) {
        self.lock().resync = true;
        self.wake.notify_one();
    }

    /// Registers a subscription. `first` (the `subscribed` reply) is queued before any
    /// message; then every message with seq > `cursor` follows in order. `db_head` is the
    /// channel head the caller read before calling.
    pub fn subscribe(
        self: &Arc<Self>,
        channel: &str,
        outbox: Outbox,
        cursor: Seq,
        db_head: Seq,
        first: Utf8Bytes,
    ) -> bool {
        let conn = outbox.conn;
        let mut state = self.lock();
        if !outbox.push(first.into()) {
            return false;
        }
        let new_entry = !state.channels.contains_key(channel);
        let entry = state
            .channels
            .entry(channel.to_owned())
            .or_insert_with(|| Entry::new(db_head));
        // The latest values this gateway knows; newer ones reach the new subscriber live.
        for (_, frame) in entry.latest.values() {
            if !outbox.push(frame.clone().into()) {
                return false;
            }
        }
        let catching_up = cursor < entry.head;
        entry.subs.insert(
            conn,
            Sub {
                outbox,
                cursor,
                catching_up,
            },
        );
        if new_entry {
            // Rows committed between the caller's read of the head and now were not
            // routed here yet, and the latest values were never read: look once.
            state.dirty.insert(channel.to_owned());
            state.latest_dirty.insert(channel.to_owned());
        }
        drop(state);
        if new_entry {
            self.wake.notify_one();
        }
        if catching_up {
            tokio::spawn(Arc::clone(self).catch_up(channel.to_owned(), conn));
        }
        true
    }

    /// Removes a subscription; returns whether it existed.
    pub fn unsubscribe(&self, channel: &str, conn: u64) -> bool {
        let mut state = self.lock();
        let Some(entry) = state.channels.get_mut(channel) else {
            return false;
        };
        let existed = entry.subs.remove(&conn).is_some();
        if entry.subs.is_empty() {
            state.channels.remove(channel);
            state.dirty.remove(channel);
            state.latest_dirty.remove(channel);
        }
        existed
    }

    /// Replays the log to one subscriber until it is in sync with the live stream, at the
    /// pace the client reads (it waits for room in the outbox, outside the hub lock).
    async fn catch_up(self: Arc<Self>, channel: String, conn: u64) {
        let mut empty_reads = 0;
        loop {
            let (cursor, outbox) = {
                let state = self.lock();
                match state.channels.get(&channel).and_then(|e| e.subs.get(&conn)) {
                    Some(sub) => (sub.cursor, sub.outbox.clone()),
                    None => return,
                }
            };
            // Half the outbox at most, so replies and pings always find room beside a replay.
            let chunk = (outbox.capacity() as i64 / 2).clamp(1, READ_LIMIT);
            let rows = match history_read(&self.pool, &channel, cursor, chunk).await {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!(error = %e, %channel, "replay read failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let frames: Vec<(Seq, Utf8Bytes)> =
                rows.iter().map(|r| (r.seq, message_frame(r))).collect();
            let permits = if frames.is_empty() {
                None
            } else {
                match outbox.reserve(frames.len()).await {
                    Some(p) => Some(p),
                    None => return,
                }
            };
            let mut state = self.lock();
            let Some(entry) = state.channels.get_mut(&channel) else {
                return;
            };
            let head = entry.head;
            let Some(sub) = entry.subs.get_mut(&conn) else {
                return;
            };
            if let Some(permits) = permits {
                for (permit, (seq, frame)) in permits.zip(frames) {
                    if seq > sub.cursor {
                        permit.send(frame.into());
                        sub.cursor = seq;
                    }
                }
            }
            if rows.len() as i64 == chunk {
                continue;
            }
            if sub.cursor >= head {
                sub.catching_up = false;
                return;
            }
            // The log ended below the hub's head: either those rows were committed after
            // our read started (read again), or they were pruned (twice empty: skip them).
            empty_reads = if rows.is_empty() { empty_reads + 1 } else { 0 };
            if empty_reads >= 2 {
                sub.cursor = head;
                sub.catching_up = false;
                return;
            }
        }
    }

    /// Delivers rows read from the log (ordered by channel, then seq) to in-sync
    /// subscribers; returns the channels that may have more rows.
    fn deliver(&self, rows: &[LoggedMessage]) -> Vec<String> {
        let mut state = self.lock();
        let mut more = Vec::new();
        let mut i = 0;
        while i < rows.len() {
            let channel = &rows[i].channel;
            let end = rows[i..]
                .iter()
                .position(|r| &r.channel != channel)
                .map_or(rows.len(), |n| i + n);
            if (end - i) as i64 >= READ_LIMIT {
                more.push(channel.clone());
            }
            if let Some(entry) = state.channels.get_mut(channel) {
                let mut dead = Vec::new();
                for row in &rows[i..end] {
                    if row.seq <= entry.head {
                        continue;
                    }
                    entry.head = row.seq;
                    let frame = Frame {
                        text: message_frame(row),
                        logged_at: Some(row.ts),
                    };
                    for (conn, sub) in entry.subs.iter_mut() {
                        if sub.catching_up || row.seq <= sub.cursor {
                            continue;
                        }
                        if sub.outbox.push(frame.clone()) {
                            sub.cursor = row.seq;
                        } else {
                            dead.push(*conn);
                        }
                    }
                }
                for conn in dead {
                    entry.subs.remove(&conn);
                }
            }
            i = end;
        }
        more
    }

    /// Delivers latest values newer than what each channel has delivered, to all its
    /// subscribers.
    fn deliver_latest(&self, values: &[LatestValue]) {
        let mut state = self.lock();
        for v in values {
            let Some(entry) = state.channels.get_mut(&v.channel) else {
                continue;
            };
            if entry
                .latest
                .get(&v.name)
                .is_some_and(|(seen, _)| *seen >= v.version)
            {
                continue;
            }
            let frame = latest_frame(v);
            entry.latest_max = entry.latest_max.max(v.version);
            entry
                .latest
                .insert(v.name.clone(), (v.version, frame.clone()));
            // A full outbox closes the connection (4008), as for log messages; the client
            // resubscribes and gets the newest value again.
            entry
                .subs
                .retain(|_, sub| sub.outbox.push(frame.clone().into()));
        }
    }

    /// Reads new log rows for dirty channels and fans them out, until `stop`. Also polls
    /// every channel's head every `poll`, so a lost NOTIFY costs latency, not messages.
    pub async fn run(self: Arc<Self>, poll: Duration, stop: CancellationToken) {
        let mut ticker = tokio::time::interval(poll);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = ticker.tick() => { self.lock().resync = true; }
                _ = stop.cancelled() => return,
            }
            while let Err(e) = self.fetch_round().await {
                tracing::warn!(error = %e, "fan-out read failed; retrying");
                self.lock().resync = true;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    }

    /// Reads and delivers until no channel is known to have unread rows.
    async fn fetch_round(&self) -> sqlx::Result<()> {
        loop {
            let (resync, dirty, latest_dirty) = {
                let mut state = self.lock();
                let resync = std::mem::take(&mut state.resync);
                let dirty = std::mem::take(&mut state.dirty);
                let mut latest_dirty = std::mem::take(&mut state.latest_dirty);
                if resync {
                    let all: Vec<String> = state.channels.keys().cloned().collect();
                    latest_dirty.extend(all.iter().cloned());
                    (Some(all), dirty, latest_dirty)
                } else {
                    (None, dirty, latest_dirty)
                }
            };
            let latest_dirty: Vec<String> = latest_dirty.into_iter().collect();
            for chunk in latest_dirty.chunks(5000) {
                let values = latest_read_many(&self.pool, chunk).await?;
                self.deliver_latest(&values);
            }
            let mut wanted: HashSet<String> = dirty;
            if let Some(all) = resync {
                for chunk in all.chunks(5000) {
                    let heads = channel_heads(&self.pool, chunk).await?;
                    let state = self.lock();
                    for (name, head) in heads {
                        if state.channels.get(&name).is_some_and(|e| head > e.head) {
                            wanted.insert(name);
                        }
                    }
                }
            }
            if wanted.is_empty() {
                return Ok(());
            }
            let (names, afters): (Vec<String>, Vec<Seq>) = {
                let state = self.lock();
                wanted
                    .into_iter()
                    .filter_map(|c| state.channels.get(&c).map(|e| e.head).map(|h| (c, h)))
                    .unzip()
            };
            if names.is_empty() {
                return Ok(());
            }
            let rows = history_read_many(&self.pool, &names, &afters, READ_LIMIT).await?;
            let more = self.deliver(&rows);
            if !more.is_empty() {
                self.lock().dirty.extend(more);
            }
        }
    }
}
