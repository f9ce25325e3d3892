//! A full game of Connect Four through the real server, started from this crate's own
//! [`connect4::app`] on port 0 against a fresh database, with two real WebSocket clients.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sqlx::migrate::MigrateDatabase;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(15);
const SECRET: &str = "connect4-test-secret-of-at-least-32-bytes";

/// A fresh database on the server of `DATABASE_URL` (`.cargo/config.toml` sets it), dropped
/// at the end of the test.
struct TestDb {
    url: String,
}

impl TestDb {
    fn new() -> Self {
        let base = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@localhost:5432/postgame".into());
        let (server, _) = base
            .rsplit_once('/')
            .expect("DATABASE_URL names a database");
        let name = format!("connect4_t{}", uuid::Uuid::new_v4().simple());
        Self {
            url: format!("{server}/{name}"),
        }
    }

    async fn drop(self) {
        let _ = sqlx::Postgres::force_drop_database(&self.url).await;
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A player: a guest token, a WebSocket, and what it has read.
struct Player {
    ws: Socket,
    id: String,
    token: String,
    next: u64,
}

impl Player {
    async fn connect(base: &str, http: &reqwest::Client) -> Self {
        let guest = guest(base, http).await;
        let token = guest["token"].as_str().unwrap();
        let ws_url = format!("{}/v1/ws?token={token}", base.replace("http://", "ws://"));
        let (ws, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
        let mut p = Self {
            ws,
            id: guest["client_id"].as_str().unwrap().to_owned(),
            token: token.to_owned(),
            next: 0,
        };
        let hello = p.recv(|f| f["op"] == "connected").await;
        assert_eq!(hello["client_id"], p.id.as_str());
        p
    }

    async fn send(&mut self, mut frame: Value) -> u64 {
        self.next += 1;
        frame["id"] = json!(self.next);
        self.ws
            .send(Message::text(frame.to_string()))
            .await
            .unwrap();
        self.next
    }

    /// The next frame for which `pred` holds (others are skipped).
    async fn recv(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame in time")
                .expect("the connection is open")
                .unwrap();
            if let Message::Text(t) = msg {
                let frame: Value = serde_json::from_str(t.as_str()).unwrap();
                if pred(&frame) {
                    return frame;
                }
            }
        }
    }

    async fn subscribe(&mut self, channel: &str) {
        let id = self
            .send(json!({"op": "subscribe", "channel": channel}))
            .await;
        let reply = self.recv(|f| f["id"] == id).await;
        assert_eq!(reply["op"], "subscribed", "{reply}");
    }

    /// Publishes a control message and waits for its ack: the `msg_id`.
    async fn control(&mut self, match_id: &str, name: &str, data: Value) -> Value {
        let id = self
            .send(json!({
                "op": "publish",
                "channel": format!("control:{match_id}"),
                "name": name,
                "data": data,
            }))
            .await;
        let ack = self.recv(|f| f["id"] == id).await;
        assert_eq!(ack["op"], "ack", "{ack}");
        ack["msg_id"].clone()
    }

    /// The next `state` broadcast on `match:<id>` whose data satisfies `pred`.
    async fn state_where(&mut self, match_id: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let channel = format!("match:{match_id}");
        self.recv(|f| {
            f["op"] == "message"
                && f["channel"] == channel.as_str()
                && f["name"] == "state"
                && pred(&f["data"])
        })
        .await["data"]
            .clone()
    }
}

/// `connect4::app()` on a free port against `db`.
async fn start(db: &TestDb) -> postgame::Server {
    connect4::app()
        .start([
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &db.url,
            "--secret",
            SECRET,
            "--db-connections",
            "6",
            "--poll-seconds",
            "0.5",
        ])
        .await
        .expect("the connect4 server starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_players_play_connect_four_to_a_win_through_the_real_server() {
    let db = TestDb::new();
    let server = start(&db).await;
    let base = format!("http://{}", server.addr.expect("the gateway runs"));
    let http = reqwest::Client::new();

    // The page is served, and postgame.js beside it.
    let page = http.get(format!("{base}/connect4")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("/postgame.js"));

    let mut red = Player::connect(&base, &http).await;
    let mut yellow = Player::connect(&base, &http).await;

    // A bad config is the contract's 400 bad_request.
    let bad = http
        .post(format!("{base}/v1/matches"))
        .bearer_auth(guest_token(&base, &http).await)
        .json(&json!({"game": "connect4", "config": {"turn_seconds": 0}}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(bad.json::<Value>().await.unwrap()["code"], "bad_request");

    let created: Value = http
        .post(format!("{base}/v1/matches"))
        .bearer_auth(guest_token(&base, &http).await)
        .json(&json!({"game": "connect4", "config": {"turn_seconds": 120}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let match_id = created["id"].as_str().expect("a match id").to_owned();
    assert_eq!(created["status"], "waiting");

    for p in [&mut red, &mut yellow] {
        p.subscribe(&format!("match:{match_id}")).await;
        p.subscribe(&format!("user:{}", p.id)).await;
    }
    red.control(&match_id, "join", json!({})).await;
    yellow.control(&match_id, "join", json!({})).await;
    let playing = red
        .state_where(&match_id, |s| s["status"] == "playing")
        .await;
    assert_eq!(playing["players"]["R"], red.id.as_str());
    assert_eq!(playing["players"]["Y"], yellow.id.as_str());
    assert_eq!(playing["turn"], "R");
    assert!(playing["turn_deadline"].is_string());

    // Yellow out of turn: a private rejection, with the msg_id as ref.
    let msg_id = yellow
        .control(&match_id, "drop", json!({"column": 0}))
        .await;
    let rejected = yellow
        .recv(|f| f["op"] == "message" && f["name"] == "rejected")
        .await;
    assert_eq!(rejected["channel"], format!("user:{}", yellow.id));
    assert_eq!(rejected["data"]["reason"], "not_your_turn");
    assert_eq!(rejected["data"]["ref"], msg_id);

    // Red wins on the bottom row; yellow stacks on top.
    for (i, column) in [0, 0, 1, 1, 2, 2].into_iter().enumerate() {
        let (mover, moves) = if i % 2 == 0 {
            (&mut red, i + 1)
        } else {
            (&mut yellow, i + 1)
        };
        mover
            .control(&match_id, "drop", json!({ "column": column }))
            .await;
        mover.state_where(&match_id, |s| s["moves"] == moves).await;
    }
    red.control(&match_id, "drop", json!({"column": 3})).await;
    for p in [&mut red, &mut yellow] {
        let end = p.state_where(&match_id, |s| s["status"] == "won").await;
        assert_eq!(end["winner"], "R");
        assert_eq!(
            end["board"][5],
            json!(["R", "R", "R", "R", null, null, null])
        );
        assert_eq!(
            end["board"][4],
            json!(["Y", "Y", "Y", null, null, null, null])
        );
        assert_eq!(end["turn_deadline"], Value::Null);
    }

    // The stored match agrees.
    let stored: Value = http
        .get(format!("{base}/v1/matches/{match_id}"))
        .bearer_auth(guest_token(&base, &http).await)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stored["status"], "won");
    assert_eq!(stored["state"]["winner"], "R");

    server.shutdown().await;
    db.drop().await;
}

/// A new guest: `{"token", "client_id", …}` from `POST /v1/tokens`.
async fn guest(base: &str, http: &reqwest::Client) -> Value {
    http.post(format!("{base}/v1/tokens"))
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn guest_token(base: &str, http: &reqwest::Client) -> String {
    guest(base, http).await["token"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_matchmaker_seats_two_players_in_a_connect_four_match() {
    let db = TestDb::new();
    let server = start(&db).await;
    let base = format!("http://{}", server.addr.expect("the gateway runs"));
    let http = reqwest::Client::new();
    let mut first = Player::connect(&base, &http).await;
    let mut second = Player::connect(&base, &http).await;
    for p in [&mut first, &mut second] {
        p.subscribe(&format!("user:{}", p.id)).await;
    }
    let mut tickets = Vec::new();
    for p in [&first, &second] {
        let r = http
            .post(format!("{base}/v1/matchmaker"))
            .bearer_auth(&p.token)
            .json(&json!({"game": "connect4", "config": {"turn_seconds": 30}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let ticket: Value = r.json().await.unwrap();
        tickets.push(ticket["ticket"].clone());
    }
    let mut match_ids = Vec::new();
    for (p, ticket) in [&mut first, &mut second].into_iter().zip(&tickets) {
        let matched = p
            .recv(|f| f["op"] == "message" && f["name"] == "matched")
            .await;
        assert_eq!(&matched["data"]["ticket"], ticket);
        match_ids.push(matched["data"]["match_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(match_ids[0], match_ids[1], "one match for both");
    let stored: Value = http
        .get(format!("{base}/v1/matches/{}", match_ids[0]))
        .bearer_auth(&first.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stored["game"], "connect4");
    assert_eq!(stored["status"], "playing");
    // The older ticket took the first seat, through the game's own join.
    assert_eq!(stored["state"]["players"]["R"], first.id.as_str());
    assert_eq!(stored["state"]["players"]["Y"], second.id.as_str());
    assert_eq!(stored["config"], json!({"turn_seconds": 30}));
    server.shutdown().await;
    db.drop().await;
}
