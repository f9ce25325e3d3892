//! A WebSocket session: the reader handles requests, a writer task owns the socket's
//! sending half and drains a bounded outbox, batching every queued frame into one flush.
//! The session is generic over `Sink`/`Stream`, so it runs on anything that moves axum
//! `Message`s. Closing always goes through the writer, after the frames queued before it.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message};
use chrono::{SecondsFormat, Utc};
use futures_util::stream::FuturesOrdered;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::auth::{AuthError, Cap, Identity};
use super::error::Code;
use super::frames::{self, Request};
use super::limits::Bucket;
use super::{prepare_publish, AppState};
use crate::broadcast::channel_position;
use crate::broadcast::hub::{Frame, Outbox};
use crate::game::{PRESENCE_CONNECTED, PRESENCE_DISCONNECTED};
use crate::ids::{Channel, ChannelKind};
use crate::matches::match_exists;
use crate::presence::Presence;
use crate::queue::publisher::PublishError;

/// Close codes of the wire contract.
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    /// A WebSocket protocol error (RFC 6455): bad framing, unmasked frames, bad opcodes.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text frame that is not valid UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    pub const TOO_LARGE: u16 = 1009;
    pub const INTERNAL: u16 = 1011;
    pub const PROTOCOL: u16 = 4000;
    pub const UNAUTHORIZED: u16 = 4001;
    pub const FORBIDDEN: u16 = 4003;
    pub const TOO_SLOW: u16 = 4008;
}

/// Publishes awaiting their commit per connection before the session stops reading.
const MAX_IN_FLIGHT: usize = 64;
/// Subscriptions one connection may hold.
const MAX_SUBSCRIPTIONS: usize = 256;
/// Protocol violations tolerated per minute.
const MAX_VIOLATIONS: usize = 10;
/// Publishes refused for the connection's rate tolerated within [`REFUSAL_WINDOW`]; the
/// next one closes the connection with 4008.
const MAX_REFUSALS: usize = 50;
const REFUSAL_WINDOW: Duration = Duration::from_secs(10);

/// The close the writer must perform once it has sent what was queued before.
#[derive(Default)]
struct Closer {
    frame: Mutex<Option<(u16, String)>>,
    notify: Notify,
}

impl Closer {
    fn close(&self, code: u16, reason: &str) {
        let mut slot = self.frame.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some((code, reason.to_owned()));
        }
        drop(slot);
        self.notify.notify_one();
    }

    fn take(&self) -> Option<(u16, String)> {
        self.frame.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Sends `first` and whatever else is queued (up to 256 frames) in one flush.
async fn write_batch<S>(sink: &mut S, rx: &mut mpsc::Receiver<Frame>, first: Frame) -> bool
where
    S: Sink<Message> + Unpin,
{
    // When the live log messages of this batch were logged (at most 257 entries).
    let mut logged = Vec::new();
    logged.extend(first.logged_at);
    if sink.feed(Message::Text(first.text)).await.is_err() {
        return false;
    }
    let mut n = 0;
    while n < 256 {
        match rx.try_recv() {
            Ok(f) => {
                logged.extend(f.logged_at);
                if sink.feed(Message::Text(f.text)).await.is_err() {
                    return false;
                }
                n += 1;
            }
            Err(_) => break,
        }
    }
    if sink.flush().await.is_err() {
        return false;
    }
    if !logged.is_empty() {
        let now = chrono::Utc::now();
        let lag = metrics::histogram!("postgame_fanout_lag_seconds");
        for at in logged {
            // Clocks of the database and this gateway may differ a little: never negative.
            lag.record((now - at).num_microseconds().unwrap_or(0).max(0) as f64 / 1e6);
        }
    }
    true
}

/// Owns the sending half. Every write is bounded by `write_timeout`: a peer that stops
/// reading cannot hold the writer (and through it the socket) forever. When the writer
/// stops, for whatever reason, it cancels `dead` so the reader stops too and the socket is
/// released.
async fn write_loop<S>(
    mut sink: S,
    mut rx: mpsc::Receiver<Frame>,
    closer: Arc<Closer>,
    heartbeat: Duration,
    write_timeout: Duration,
    dead: CancellationToken,
) where
    S: Sink<Message> + Unpin,
{
    let _dead = dead.drop_guard();
    let mut ping = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
    loop {
        tokio::select! {
            biased;
            frame = rx.recv() => {
                let Some(frame) = frame else { break };
                // Everything queued meanwhile goes out in the same flush.
                match tokio::time::timeout(write_timeout, write_batch(&mut sink, &mut rx, frame)).await {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(_) => {
                        metrics::counter!("postgame_write_timeouts_total").increment(1);
                        tracing::debug!("write timed out: dropping a connection that does not read");
                        return;
                    }
                }
            }
            _ = closer.notify.notified() => break,
            _ = ping.tick() => {
                let sent = tokio::time::timeout(write_timeout, sink.send(Message::Ping(Default::default()))).await;
                if !matches!(sent, Ok(Ok(()))) {
                    return;
                }
            }
        }
    }
    // Send what was queued before the close (bounded by the outbox and a deadline).
    let (code, reason) = closer.take().unwrap_or((close::NORMAL, String::new()));
    let drain = async {
        while let Ok(f) = rx.try_recv() {
            sink.feed(Message::Text(f.text)).await.map_err(|_| ())?;
        }
        sink.send(Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })))
        .await
        .map_err(|_| ())
    };
    let bound = write_timeout.min(Duration::from_secs(2));
    let _ = tokio::time::timeout(bound, drain).await;
    let _ = tokio::time::timeout(bound.min(Duration::from_secs(1)), sink.close()).await;
}

type Pending = Pin<Box<dyn Future<Output = String> + Send>>;

struct Session {
    app: Arc<AppState>,
    me: Identity,
    conn: u64,
    outbox: Outbox,
    closer: Arc<Closer>,
    subs: HashSet<String>,
    violations: VecDeque<Instant>,
    pending: FuturesOrdered<Pending>,
    /// This connection's presence changes, applied in order, durably ([`Presence`]):
    /// started by the first match subscription, so a connection that never joins a match
    /// holds no task and no queue for it.
    presence: Option<Presence>,
    connection_id: String,
    /// Keeps this connection in `postgame.sessions` until the session ends.
    _online: crate::presence::OnlineGuard,
    /// The connection's publish bucket (`--conn-publish-burst`/`--conn-publish-rate`).
    publish_bucket: Option<Bucket>,
    refusals: VecDeque<Instant>,
    /// Set by the publisher once a publish of this connection is refused with `internal`:
    /// every later one is refused too, and the connection is closed with 1011 (see
    /// `Publisher::submit_fenced`).
    publish_fence: Arc<std::sync::atomic::AtomicBool>,
}

/// Runs one connection to its end.
pub async fn run<S, R, E>(
    app: Arc<AppState>,
    identity: Result<Identity, AuthError>,
    sink: S,
    mut stream: R,
) where
    S: Sink<Message> + Unpin + Send + 'static,
    R: Stream<Item = Result<Message, E>> + Unpin + Send,
    E: std::fmt::Display,
{
    let conn = app.next_conn.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::channel(app.config.outbox_frames.max(8));
    let overflow = Arc::new(Notify::new());
    let closer = Arc::new(Closer::default());
    let outbox = Outbox::new(conn, tx, Arc::clone(&overflow));
    let writer_dead = CancellationToken::new();
    let writer = tokio::spawn(write_loop(
        sink,
        rx,
        Arc::clone(&closer),
        app.config.heartbeat,
        app.config.write_timeout,
        writer_dead.clone(),
    ));
    // Counted from the upgrade until the writer (and so the socket) is gone.
    metrics::gauge!("postgame_connections").increment(1.0);
    let write_timeout = app.config.write_timeout;
    let writer_end = |writer: tokio::task::JoinHandle<()>| async move {
        let abort = writer.abort_handle();
        if tokio::time::timeout(write_timeout + Duration::from_secs(3), writer)
            .await
            .is_err()
        {
            abort.abort();
        }
        metrics::gauge!("postgame_connections").decrement(1.0);
    };

    let me = match identity {
        Ok(me) => me,
        Err(e) => {
            outbox.push(frames::error(&None, Code::Unauthorized, &e.to_string()).into());
            closer.close(close::UNAUTHORIZED, "unauthorized");
            drop(outbox);
            writer_end(writer).await;
            return;
        }
    };
    // The token's `exp` (plus the verification leeway) ends the session: 4001.
    let expires_in = (me.expires_at - Utc::now() + chrono::Duration::seconds(5))
        .to_std()
        .unwrap_or(Duration::ZERO);
    let expiry = Instant::now() + expires_in;
    let connection_id = format!("{}-{conn}", app.instance);
    outbox.push(
        json!({
            "op": "connected",
            "client_id": me.client,
            "connection_id": connection_id,
            "server_time": Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
            "heartbeat_s": app.config.heartbeat.as_secs(),
            "max_frame_bytes": app.config.max_frame_bytes,
        })
        .to_string()
        .into(),
    );
    let online = app.online.record(connection_id.clone(), me.client.clone());
    let mut s = Session {
        app: Arc::clone(&app),
        me,
        conn,
        presence: None,
        connection_id,
        _online: online,
        outbox,
        closer: Arc::clone(&closer),
        subs: HashSet::new(),
        violations: VecDeque::new(),
        pending: FuturesOrdered::new(),
        publish_fence: Arc::default(),
        publish_bucket: app
            .config
            .conn_publish
            .map(|(rate, burst)| Bucket::new(rate, burst)),
        refusals: VecDeque::new(),
    };
    let idle = app.config.heartbeat * 2;
    let mut deadline = Instant::now() + idle;
    let mut expired = app.expired.subscribe();
    let mut shutting_down = false;
    let mut publish_failed = false;
    loop {
        tokio::select! {
            biased;
            _ = app.stop.cancelled() => {
                // Closed with 1001 once the replies below are queued: closing now would
                // let the writer send the close before them.
                shutting_down = true;
                break;
            }
            Ok(()) = expired.changed() => {
                // Declared dead while late: this connection's matches were told it left.
                s.closer.close(close::INTERNAL, "gateway registration expired; reconnect");
                break;
            }
            _ = overflow.notified() => {
                s.closer.close(close::TOO_SLOW, "too slow to read");
                break;
            }
            _ = writer_dead.cancelled() => break,
            _ = tokio::time::sleep_until(expiry) => {
                s.fail(&None, Code::Unauthorized, "the token is expired");
                s.closer.close(close::UNAUTHORIZED, "token expired");
                break;
            }
            Some(reply) = s.pending.next(), if !s.pending.is_empty() => {
                s.outbox.push(reply.into());
                if s.publish_fence.load(std::sync::atomic::Ordering::SeqCst) {
                    // A publish was refused with `internal`: the later ones are refused
                    // too, so the client must reconnect and resend them, in order.
                    publish_failed = true;
                    break;
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                s.closer.close(close::TOO_SLOW, "no heartbeat");
                break;
            }
            msg = stream.next(), if s.pending.len() < MAX_IN_FLIGHT => {
                deadline = Instant::now() + idle;
                match msg {
                    None => break,
                    Some(Err(e)) => {
                        let text = e.to_string();
                        if text.contains("too long") || text.contains("too big") || text.contains("Space limit") {
                            s.outbox.push(frames::error(&None, Code::TooLarge, "frame too large").into());
                            s.closer.close(close::TOO_LARGE, "frame too large");
                        } else if text.starts_with("UTF-8 encoding error") {
                            s.closer.close(close::INVALID_DATA, "text frame is not valid UTF-8");
                        } else if text.starts_with("WebSocket protocol error") {
                            s.closer.close(close::PROTOCOL_ERROR, "WebSocket protocol error");
                        }
                        break;
                    }
                    Some(Ok(Message::Text(text))) => {
                        // Boxed: handling a request (its database queries) takes far more
                        // room than waiting does, and inline it would size the state every
                        // idle connection keeps.
                        if !Box::pin(s.on_text(text.as_str())).await {
                            break;
                        }
                    }
                    Some(Ok(Message::Binary(b))) => {
                        if b.len() > app.config.max_frame_bytes {
                            s.too_large();
                            break;
                        }
                        if !s.violation(None, "binary frames are not supported; send JSON text") {
                            break;
                        }
                    }
                    Some(Ok(Message::Close(_))) => break,
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                }
            }
        }
    }
    // Answer what was already accepted, then leave every channel.
    while let Ok(Some(reply)) = tokio::time::timeout(Duration::from_secs(5), s.pending.next()).await
    {
        s.outbox.push(reply.into());
    }
    if shutting_down {
        s.closer.close(close::GOING_AWAY, "server shutting down");
    }
    if publish_failed {
        s.closer.close(
            close::INTERNAL,
            "a publish failed; reconnect and resend the unacknowledged ones in order",
        );
    }
    let subs: Vec<String> = s.subs.drain().collect();
    metrics::gauge!("postgame_subscriptions").decrement(subs.len() as f64);
    for channel in subs {
        s.leave(&channel).await;
    }
    s.closer.close(close::NORMAL, "");
    drop(s);
    writer_end(writer).await;
}

impl Session {
    fn reply(&self, frame: String) {
        self.outbox.push(frame.into());
    }

    fn fail(&self, id: &Option<Value>, code: Code, message: &str) {
        self.reply(frames::error(id, code, message));
    }

    fn too_large(&self) {
        self.fail(&None, Code::TooLarge, "frame too large");
        self.closer.close(close::TOO_LARGE, "frame too large");
    }

    /// Answers a protocol violation; false when there were too many and the connection
    /// must close.
    fn violation(&mut self, id: Option<Value>, message: &str) -> bool {
        self.fail(&id, Code::BadRequest, message);
        let now = Instant::now();
        while self
            .violations
            .front()
            .is_some_and(|t| now.duration_since(*t) > Duration::from_secs(60))
        {
            self.violations.pop_front();
        }
        self.violations.push_back(now);
        if self.violations.len() > MAX_VIOLATIONS {
            self.closer
                .close(close::PROTOCOL, "too many protocol violations");
            return false;
        }
        true
    }

    /// Takes a token from the connection's publish bucket.
    fn publish_allowed(&mut self) -> bool {
        match self.publish_bucket.as_mut() {
            Some(b) => b.take().is_ok(),
            None => true,
        }
    }

    /// Counts a refused publish; false (after closing with 4008) when the connection keeps
    /// going after [`MAX_REFUSALS`] refusals within [`REFUSAL_WINDOW`].
    fn refused(&mut self) -> bool {
        metrics::counter!("postgame_rate_limited_total", "limit" => "connection").increment(1);
        let now = Instant::now();
        while self
            .refusals
            .front()
            .is_some_and(|t| now.duration_since(*t) > REFUSAL_WINDOW)
        {
            self.refusals.pop_front();
        }
        self.refusals.push_back(now);
        if self.refusals.len() > MAX_REFUSALS {
            self.closer.close(close::TOO_SLOW, "rate limited");
            return false;
        }
        true
    }

    /// Handles a text frame; false when the connection must close.
    async fn on_text(&mut self, text: &str) -> bool {
        if text.len() > self.app.config.max_frame_bytes {
            self.too_large();
            return false;
        }
        let frame = match frames::parse(text) {
            Ok(f) => f,
            Err(r) => return self.violation(r.id, &r.message),
        };
        let id = frame.id;
        match frame.request {
            Request::Ping => self.reply(frames::pong(&id)),
            Request::Subscribe { channel, since } => self.subscribe(id, &channel, since).await,
            Request::Unsubscribe { channel } => {
                if self.subs.remove(&channel) {
                    metrics::gauge!("postgame_subscriptions").decrement(1.0);
                    self.leave(&channel).await;
                }
                self.reply(frames::unsubscribed(&id, &channel));
            }
            Request::Publish { .. } if !self.publish_allowed() => {
                self.fail(
                    &id,
                    Code::RateLimited,
                    "publishing faster than this connection's limit; slow down",
                );
                return self.refused();
            }
            Request::Publish {
                channel,
                name,
                data,
                key,
            } => match prepare_publish(&self.me, &channel, name, data, key) {
                Err(e) => {
                    let (code, message) = e.public();
                    self.fail(&id, code, &message);
                }
                Ok(req) => {
                    let channel = req.channel.as_str().to_owned();
                    let ack = self
                        .app
                        .publisher
                        .submit_fenced(self.conn, req, Arc::clone(&self.publish_fence))
                        .await;
                    self.pending.push_back(Box::pin(async move {
                        match ack.await {
                            Ok(a) => frames::ack(&id, &channel, a.msg_id, a.duplicate),
                            Err(PublishError::MatchNotFound) => {
                                frames::error(&id, Code::NotFound, "no such match")
                            }
                            Err(PublishError::RateLimited(m)) => {
                                frames::error(&id, Code::RateLimited, &m)
                            }
                            Err(PublishError::Invalid(m)) => {
                                frames::error(&id, Code::BadRequest, &m)
                            }
                            Err(e) => frames::error(&id, Code::Internal, &e.to_string()),
                        }
                    }));
                }
            },
        }
        true
    }

    async fn subscribe(&mut self, id: Option<Value>, name: &str, since: Option<i64>) {
        let channel = match Channel::parse(name) {
            Ok(c) => c,
            Err(e) => return self.fail(&id, Code::BadRequest, &e),
        };
        if !self.me.can(Cap::Subscribe, &channel) {
            return self.fail(
                &id,
                Code::Forbidden,
                "not allowed to subscribe to this channel",
            );
        }
        if self.subs.contains(name) {
            return self.fail(&id, Code::BadRequest, "already subscribed");
        }
        if self.subs.len() >= MAX_SUBSCRIPTIONS {
            return self.fail(&id, Code::BadRequest, "too many subscriptions");
        }
        let pool = &self.app.pool;
        if let ChannelKind::Match(m) = channel.kind() {
            match match_exists(pool, *m).await {
                Ok(true) => {}
                Ok(false) => return self.fail(&id, Code::NotFound, "no such match"),
                Err(e) => return self.internal(&id, e.into()),
            }
        }
        let pos = match channel_position(pool, name).await {
            Ok(p) => p,
            Err(e) => return self.internal(&id, e.into()),
        };
        let (cursor, recovered) = match since {
            None => (pos.head, true),
            Some(s) if s > pos.head => (pos.head, false),
            Some(s) => (s, s >= pos.head || pos.oldest.is_some_and(|o| o <= s + 1)),
        };
        let first = frames::subscribed(&id, name, pos.head, recovered);
        if !self
            .app
            .hub
            .subscribe(name, self.outbox.clone(), cursor, pos.head, first.into())
        {
            return;
        }
        if self.subs.insert(name.to_owned()) {
            metrics::gauge!("postgame_subscriptions").increment(1.0);
        }
        if let ChannelKind::Match(m) = channel.kind() {
            self.presence().send_ordered(*m, PRESENCE_CONNECTED).await;
        }
    }

    /// This connection's presence task, started the first time it is needed.
    fn presence(&mut self) -> &Presence {
        let app = &self.app;
        self.presence.get_or_insert_with(|| {
            Presence::start(
                app.pool.clone(),
                app.publisher.clone(),
                app.instance.clone(),
                self.conn,
                self.connection_id.clone(),
                self.me.client.clone(),
            )
        })
    }

    fn internal(&self, id: &Option<Value>, e: anyhow::Error) {
        let (code, message) = super::error::ApiError::Internal(e).public();
        self.fail(id, code, &message);
    }

    /// Stops delivering `channel` and tells its match, if it is one.
    async fn leave(&mut self, channel: &str) {
        self.app.hub.unsubscribe(channel, self.conn);
        if let Ok(c) = Channel::parse(channel) {
            if let ChannelKind::Match(m) = c.kind() {
                self.presence().send(*m, PRESENCE_DISCONNECTED).await;
            }
        }
    }
}
