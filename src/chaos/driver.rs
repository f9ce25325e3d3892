//! The clients of a chaos run: each one a WebSocket client that behaves as
//! docs/protocol.md tells a client to (reconnect to either gateway on any failure or
//! silence, resubscribe with `since` the last seq it processed, resend every unacknowledged
//! publish in order with its key), and records everything it sends and receives for the
//! checker: each publish with its ack, each `message` with its seq, each `latest` frame.
//!
//! Kinds: Tic Tac Toe players (join, moves, sometimes a stall that the turn timer must end,
//! rematches, chat lines with unique texts), Pong players (against the bot, paddle inputs,
//! a new match when one ends) and probes (pinned to one gateway, chatting as spectators:
//! their acks time each gateway's recovery).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::game::Registry;

/// A connection that brings no frame (not even the server's ping, every second here) for
/// this long is given up and replaced, as a frozen gateway's would be.
const SILENCE: Duration = Duration::from_millis(2500);
/// Reconnection backoff: the first pause, doubled after each failed attempt up to the last.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Publishes a client keeps unacknowledged at once.
const WINDOW: usize = 4;
/// How often a client considers its next action.
const ACTION_EVERY: Duration = Duration::from_millis(250);
/// Probability that a Tic Tac Toe player stalls on a turn (the turn timer then ends it).
const STALL_PROBABILITY: f64 = 0.15;
/// Why a connection was given up when its client moved to the other gateway on purpose.
pub const HOPPED: &str = "moved to the other gateway";
/// Pong matches played by the chaos clients: long enough to last, one player and the bot.
pub const PONG_CONFIG: &str = r#"{"points_to_win": 21, "bot": true}"#;

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    TicTacToe,
    Pong,
    /// Pinned to one gateway; chats into a Tic Tac Toe match as a spectator.
    Probe(usize),
}

/// What every client shares.
pub struct Shared {
    pub started: Instant,
    pub gateways: Vec<SocketAddr>,
    pub pool: sqlx::PgPool,
    /// Publishes created and not yet acknowledged, over every client.
    pub unacked: AtomicI64,
    /// Stop making new actions (resends and reads go on).
    pub quiesce: CancellationToken,
}

impl Shared {
    fn now(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

/// One publish and what became of it.
#[derive(Debug, Clone)]
pub struct PubRec {
    pub channel: String,
    pub key: String,
    pub name: String,
    pub data: Value,
    pub sent_at: f64,
    pub sends: u32,
    pub ack: Option<Ack>,
    /// A final refusal (an error other than `internal`).
    pub refused: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Ack {
    pub msg_id: Value,
    pub duplicate: bool,
    pub at: f64,
    pub gateway: usize,
}

/// A `latest` frame as received.
#[derive(Debug, Clone)]
pub struct LatestRec {
    pub version: i64,
    pub tick: i64,
    pub at: String,
    pub status: String,
    pub recv: f64,
    /// The first frame of its subscription.
    pub first: bool,
}

/// What one client saw of one channel, in order of receipt.
#[derive(Debug, Clone, Default)]
pub struct ChanRec {
    /// `message` frames: seq, name, data, receipt time.
    pub messages: Vec<(i64, String, Value, f64)>,
    pub latest: Vec<LatestRec>,
    pub subscribes: u32,
}

/// Everything a client did and saw.
#[derive(Debug)]
pub struct Record {
    pub name: String,
    pub kind: Kind,
    pub publishes: Vec<PubRec>,
    pub channels: BTreeMap<String, ChanRec>,
    /// Things the protocol forbids, seen as they happened (an unexpected error code, a
    /// resume that was not recovered).
    pub violations: Vec<String>,
    pub connections: u32,
    /// Why connections were given up (or never made), by reason: churn shows here.
    pub dropped: BTreeMap<String, u32>,
    /// The live connection at the end: its `connection_id` and match.
    pub live: Option<(String, String)>,
}

/// One client's settings.
pub struct Client {
    pub name: String,
    pub token: String,
    pub kind: Kind,
    pub match_id: String,
    pub seed: u64,
    /// Mean time between moves to the other gateway (close, reconnect there, resubscribe
    /// from the last seq, resend what is unacknowledged); `None`: only after a failure.
    /// Probes stay on their gateway; nobody moves once the run quiesces.
    pub hop: Option<Duration>,
    /// Leave (close the connection normally) when cancelled: the presence check.
    pub leave: CancellationToken,
    /// End and hand in the record when cancelled.
    pub stop: CancellationToken,
}

/// The game as a client sees it, from its `state` messages.
#[derive(Default)]
struct View {
    state: Value,
    /// Set once a move was sent for (game_no, move_count), or a stall decided.
    handled_turn: Option<(i64, i64)>,
    rematch_sent: Option<i64>,
    /// The Pong match ended: a new one is needed.
    over: bool,
}

struct Conn {
    ws: Ws,
    gateway: usize,
    connection_id: String,
    /// Request id → publish index.
    in_flight: BTreeMap<u64, usize>,
    subscribe_id: u64,
    /// A `latest` frame arrived on this connection already.
    latest_seen: bool,
    /// Its subscription was answered: the gateway and Postgres worked.
    subscribed: bool,
}

/// Runs one client until `stop` (or `leave`); returns its record and, when stopped, its
/// live connection, still open: the caller keeps it open (see [`hold`]) while presence is
/// checked, since closing it would rightly make the gateway disconnect it.
pub async fn run(client: Client, shared: Arc<Shared>) -> (Record, Option<Ws>) {
    let mut rec = Record {
        name: client.name.clone(),
        kind: client.kind,
        publishes: Vec::new(),
        channels: BTreeMap::new(),
        violations: Vec::new(),
        connections: 0,
        dropped: BTreeMap::new(),
        live: None,
    };
    let mut rng = StdRng::seed_from_u64(client.seed);
    let mut match_id = client.match_id.clone();
    let mut last_seq: BTreeMap<String, i64> = BTreeMap::new();
    let mut view = View::default();
    let mut next_req: u64 = 0;
    let mut counter: u64 = 0;
    let mut gateway = match client.kind {
        Kind::Probe(g) => g,
        _ => rng.gen_range(0..shared.gateways.len()),
    };
    if !matches!(client.kind, Kind::Probe(_)) {
        publish(
            &mut rec,
            &shared,
            &match_id,
            "join",
            json!({}),
            &mut counter,
        );
    }
    let mut backoff = FIRST_BACKOFF;
    loop {
        if client.stop.is_cancelled() || client.leave.is_cancelled() {
            return (rec, None);
        }
        let channel = format!("match:{match_id}");
        let conn = connect(
            &shared,
            &client,
            gateway,
            &channel,
            &last_seq,
            &mut next_req,
            &mut rec,
        )
        .await;
        let mut conn = match conn {
            Ok(c) => c,
            Err(_) => {
                *rec.dropped.entry("connect failed".to_owned()).or_default() += 1;
                if !matches!(client.kind, Kind::Probe(_)) {
                    gateway = (gateway + 1) % shared.gateways.len();
                }
                if !pause(&client, &mut backoff).await {
                    return (rec, None);
                }
                continue;
            }
        };
        rec.connections += 1;
        // Resend every unacknowledged publish, in order, with its key.
        let pending: Vec<usize> = (0..rec.publishes.len())
            .filter(|&i| rec.publishes[i].ack.is_none() && rec.publishes[i].refused.is_none())
            .collect();
        let mut why = None;
        for i in pending {
            if send_publish(&mut conn, &mut rec, i, &mut next_req, &shared)
                .await
                .is_err()
            {
                why = Some("send failed".to_owned());
                break;
            }
        }
        let mut actions = tokio::time::interval(ACTION_EVERY);
        // The last time anything came from the gateway: SILENCE after it, the connection
        // is given up (one deadline for the connection, not a timeout per wait, which
        // every action would restart).
        let mut heard = Instant::now();
        while why.is_none() {
            let frame = tokio::select! {
                f = conn.ws.next() => f,
                _ = tokio::time::sleep_until(heard + SILENCE) => {
                    why = Some("silent gateway".to_owned());
                    break;
                }
                _ = actions.tick() => {
                    if shared.quiesce.is_cancelled() {
                        continue;
                    }
                    if let (Some(hop), false) = (client.hop, matches!(client.kind, Kind::Probe(_))) {
                        let p = ACTION_EVERY.as_secs_f64() / hop.as_secs_f64().max(1e-3);
                        if rng.gen_bool(p.min(1.0)) {
                            why = Some(HOPPED.to_owned());
                            continue;
                        }
                    }
                    if client.kind == Kind::Pong && view.over {
                        // A new match against the bot, on a new connection that subscribes
                        // to its channel from 0 (kept on this one until it can be created).
                        if let Some(id) = new_pong_match(&shared).await {
                            match_id = id;
                            view = View::default();
                            publish(&mut rec, &shared, &match_id, "join", json!({}), &mut counter);
                            why = Some("new pong match".to_owned());
                        }
                        continue;
                    }
                    let unacked = rec.publishes.iter().filter(|p| p.ack.is_none() && p.refused.is_none()).count();
                    if unacked >= WINDOW {
                        continue;
                    }
                    let before = rec.publishes.len();
                    act(&client, &mut rng, &mut view, &mut rec, &shared, &match_id, &mut counter);
                    for i in before..rec.publishes.len() {
                        if send_publish(&mut conn, &mut rec, i, &mut next_req, &shared).await.is_err() {
                            why = Some("send failed".to_owned());
                            break;
                        }
                    }
                    continue;
                }
                _ = client.stop.cancelled() => {
                    rec.live = Some((conn.connection_id.clone(), match_id.clone()));
                    return (rec, Some(conn.ws));
                }
                _ = client.leave.cancelled() => {
                    let _ = conn.ws.close(None).await;
                    return (rec, None);
                }
            };
            heard = Instant::now();
            let text = match frame {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Close(c))) => {
                    why = Some(format!(
                        "closed by the gateway ({})",
                        c.map_or(1005, |c| u16::from(c.code))
                    ));
                    break;
                }
                Some(Err(_)) | None => {
                    why = Some("connection lost".to_owned());
                    break;
                }
                Some(Ok(_)) => continue,
            };
            let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else {
                rec.violations
                    .push(format!("{}: a frame that is not JSON", client.name));
                continue;
            };
            why = receive(
                &client,
                &shared,
                &mut rec,
                &mut conn,
                &mut view,
                &mut last_seq,
                &match_id,
                &v,
            );
        }
        *rec.dropped
            .entry(why.unwrap_or_else(|| "?".to_owned()))
            .or_default() += 1;
        // Give up this connection; a probe stays on its gateway, the others switch.
        let _ = tokio::time::timeout(Duration::from_millis(200), conn.ws.close(None)).await;
        if !matches!(client.kind, Kind::Probe(_)) {
            gateway = (gateway + 1) % shared.gateways.len();
        }
        // Reconnect at once after a connection that worked; with backoff after one that
        // never got its subscription answered (Postgres down), as clients are told to:
        // without it every client reconnected in a tight loop through each outage.
        if conn.subscribed {
            backoff = FIRST_BACKOFF;
        } else if !pause(&client, &mut backoff).await {
            return (rec, None);
        }
    }
}

/// Sleeps `backoff` and doubles it (up to [`MAX_BACKOFF`]); false when the client was
/// stopped or left meanwhile.
async fn pause(client: &Client, backoff: &mut Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(*backoff) => {}
        _ = client.stop.cancelled() => return false,
        _ = client.leave.cancelled() => return false,
    }
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
    true
}

/// Reads a stopped client's connection (answering the gateway's pings) until `close`;
/// false when the gateway closed it first: it did not stay live until the end.
pub async fn hold(mut ws: Ws, close: CancellationToken) -> bool {
    loop {
        tokio::select! {
            f = ws.next() => match f {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return false,
                Some(Ok(_)) => {}
            },
            _ = close.cancelled() => {
                let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
                return true;
            }
        }
    }
}

/// Records one frame from the gateway; `Some(reason)` when the connection must be given up.
#[allow(clippy::too_many_arguments)]
fn receive(
    client: &Client,
    shared: &Shared,
    rec: &mut Record,
    conn: &mut Conn,
    view: &mut View,
    last_seq: &mut BTreeMap<String, i64>,
    match_id: &str,
    v: &Value,
) -> Option<String> {
    let now = shared.now();
    match v["op"].as_str().unwrap_or("") {
        "message" => {
            let ch = v["channel"].as_str().unwrap_or("").to_owned();
            let seq = v["seq"].as_i64().unwrap_or(-1);
            let name = v["name"].as_str().unwrap_or("").to_owned();
            let last = last_seq.entry(ch.clone()).or_insert(0);
            *last = (*last).max(seq);
            if ch == format!("match:{match_id}") && name == "state" {
                view.state = v["data"].clone();
                let status = view.state["status"].as_str().unwrap_or("");
                if client.kind == Kind::Pong && (status == "finished" || status == "abandoned") {
                    view.over = true;
                }
            }
            rec.channels
                .entry(ch)
                .or_default()
                .messages
                .push((seq, name, v["data"].clone(), now));
        }
        "latest" => {
            let ch = v["channel"].as_str().unwrap_or("").to_owned();
            let first = !conn.latest_seen;
            conn.latest_seen = true;
            rec.channels.entry(ch).or_default().latest.push(LatestRec {
                version: v["version"].as_i64().unwrap_or(-1),
                tick: v["data"]["tick"].as_i64().unwrap_or(-1),
                at: v["data"]["at"].as_str().unwrap_or("").to_owned(),
                status: v["data"]["status"].as_str().unwrap_or("").to_owned(),
                recv: now,
                first,
            });
        }
        "ack" => {
            let id = v["id"].as_u64().unwrap_or(u64::MAX);
            if let Some(i) = conn.in_flight.remove(&id) {
                let p = &mut rec.publishes[i];
                if p.ack.is_none() {
                    p.ack = Some(Ack {
                        msg_id: v["msg_id"].clone(),
                        duplicate: v["duplicate"].as_bool().unwrap_or(false),
                        at: now,
                        gateway: conn.gateway,
                    });
                    shared.unacked.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
        "subscribed" => {
            conn.subscribed = true;
            if v["recovered"] == json!(false) {
                rec.violations.push(format!(
                    "{}: resubscribing to {} was not recovered",
                    client.name, v["channel"]
                ));
            }
        }
        "error" => {
            let code = v["code"].as_str().unwrap_or("").to_owned();
            let id = v["id"].as_u64();
            if id == Some(conn.subscribe_id) {
                // The subscription failed (Postgres down): start over.
                return Some(format!("subscribe refused ({code})"));
            }
            if let Some(i) = id.and_then(|id| conn.in_flight.remove(&id)) {
                if code == "internal" {
                    // Not committed: resent in order with what follows it, on a fresh
                    // connection (the later in-flight ones are refused too).
                    return Some("publish failed (internal)".to_owned());
                }
                let p = &mut rec.publishes[i];
                p.refused = Some(format!("{code}: {}", v["message"]));
                shared.unacked.fetch_sub(1, Ordering::Relaxed);
                rec.violations.push(format!(
                    "{}: publish {} refused with {code}: {}",
                    client.name, p.key, v["message"]
                ));
            } else if code != "internal" {
                rec.violations
                    .push(format!("{}: error frame {v}", client.name));
            }
        }
        _ => {}
    }
    None
}

/// Connects to `gateway`, waits for `connected`, subscribes to `channel` (from its last
/// seq, or from 0 the first time).
async fn connect(
    shared: &Shared,
    client: &Client,
    gateway: usize,
    channel: &str,
    last_seq: &BTreeMap<String, i64>,
    next_req: &mut u64,
    rec: &mut Record,
) -> anyhow::Result<Conn> {
    let url = format!(
        "ws://{}/v1/ws?token={}",
        shared.gateways[gateway], client.token
    );
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(2),
        tokio_tungstenite::connect_async_with_config(url, None, true),
    )
    .await??;
    let connection_id = loop {
        let f = tokio::time::timeout(Duration::from_secs(2), ws.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("closed before connected"))??;
        if let Message::Text(t) = f {
            let v: Value = serde_json::from_str(t.as_str())?;
            if v["op"] == "connected" {
                break v["connection_id"].as_str().unwrap_or("").to_owned();
            }
            anyhow::bail!("first frame {v}");
        }
    };
    *next_req += 1;
    let since = last_seq.get(channel).copied().unwrap_or(0);
    ws.send(Message::text(
        json!({"op": "subscribe", "id": *next_req, "channel": channel, "since": since}).to_string(),
    ))
    .await?;
    rec.channels
        .entry(channel.to_owned())
        .or_default()
        .subscribes += 1;
    Ok(Conn {
        ws,
        gateway,
        connection_id,
        in_flight: BTreeMap::new(),
        subscribe_id: *next_req,
        latest_seen: false,
        subscribed: false,
    })
}

/// Records a new publish (sent by the caller).
fn publish(
    rec: &mut Record,
    shared: &Shared,
    match_id: &str,
    name: &str,
    data: Value,
    counter: &mut u64,
) {
    *counter += 1;
    rec.publishes.push(PubRec {
        channel: format!("control:{match_id}"),
        key: format!("{}-{}", rec.name, counter),
        name: name.to_owned(),
        data,
        sent_at: shared.now(),
        sends: 0,
        ack: None,
        refused: None,
    });
    shared.unacked.fetch_add(1, Ordering::Relaxed);
}

async fn send_publish(
    conn: &mut Conn,
    rec: &mut Record,
    i: usize,
    next_req: &mut u64,
    shared: &Shared,
) -> anyhow::Result<()> {
    *next_req += 1;
    let p = &mut rec.publishes[i];
    p.sends += 1;
    if p.sends == 1 {
        p.sent_at = shared.now();
    }
    let frame = json!({"op": "publish", "id": *next_req, "channel": p.channel, "name": p.name,
        "data": p.data, "key": p.key});
    conn.in_flight.insert(*next_req, i);
    conn.ws.send(Message::text(frame.to_string())).await?;
    Ok(())
}

/// The client's next action, recorded as new publishes.
fn act(
    client: &Client,
    rng: &mut StdRng,
    view: &mut View,
    rec: &mut Record,
    shared: &Shared,
    match_id: &str,
    counter: &mut u64,
) {
    match client.kind {
        Kind::Probe(_) => chat(client, rec, shared, match_id, counter),
        Kind::Pong => {
            if rng.gen_bool(0.4) {
                let dir: i64 = rng.gen_range(-1..=1);
                publish(
                    rec,
                    shared,
                    match_id,
                    "input",
                    json!({ "dir": dir }),
                    counter,
                );
            }
        }
        Kind::TicTacToe => {
            let s = &view.state;
            let status = s["status"].as_str().unwrap_or("");
            let game_no = s["game_no"].as_i64().unwrap_or(0);
            let move_count = s["move_count"].as_i64().unwrap_or(0);
            let me = client.name.as_str();
            let my_mark = ["X", "O"]
                .into_iter()
                .find(|m| s["players"][*m].as_str() == Some(me));
            if status == "playing"
                && my_mark.is_some()
                && s["turn"].as_str() == my_mark
                && view.handled_turn != Some((game_no, move_count))
            {
                view.handled_turn = Some((game_no, move_count));
                if !rng.gen_bool(STALL_PROBABILITY) {
                    let free: Vec<usize> = s["board"]
                        .as_array()
                        .map(|b| {
                            b.iter()
                                .enumerate()
                                .filter(|(_, c)| c.is_null())
                                .map(|(i, _)| i)
                                .collect()
                        })
                        .unwrap_or_default();
                    if !free.is_empty() {
                        let cell = free[rng.gen_range(0..free.len())];
                        publish(
                            rec,
                            shared,
                            match_id,
                            "move",
                            json!({ "cell": cell }),
                            counter,
                        );
                    }
                }
            }
            if (status == "won" || status == "draw")
                && my_mark.is_some()
                && view.rematch_sent != Some(game_no)
            {
                view.rematch_sent = Some(game_no);
                publish(rec, shared, match_id, "rematch", json!({}), counter);
            }
            if rng.gen_bool(0.3) {
                chat(client, rec, shared, match_id, counter);
            }
        }
    }
}

/// Records a chat line whose text is unique in the run (the client's name and the
/// publish's number), so the checker can find it in the log.
fn chat(client: &Client, rec: &mut Record, shared: &Shared, match_id: &str, counter: &mut u64) {
    let text = format!("{}#{}", client.name, *counter + 1);
    publish(
        rec,
        shared,
        match_id,
        "chat",
        json!({ "text": text }),
        counter,
    );
}

/// Creates a Pong match against the bot (None while Postgres is unreachable).
pub async fn new_pong_match(shared: &Shared) -> Option<String> {
    let games = Registry::builtin();
    let game = games.get(crate::game::pong::NAME)?;
    let config: Value = serde_json::from_str(PONG_CONFIG).ok()?;
    crate::matches::match_create(&shared.pool, game.as_ref(), &config)
        .await
        .ok()
        .map(|(info, _)| info.id.to_string())
}
