//! Tic Tac Toe end to end, over real sockets.

use serde_json::{json, Value};
use sqlx::postgres::PgConnectOptions;

use crate::helpers::{play, Client, TestApp, TestDb};

pub struct Table {
    pub app: TestApp,
    pub id: String,
    pub x: Client,
    pub o: Client,
    pub spectator: Client,
}

/// A match with X, O and a spectator subscribed; both players joined and playing.
async fn table(opts: PgConnectOptions) -> Table {
    table_on(TestApp::spawn(opts).await).await
}

/// [`table`] on a server already running (tests/it/pgbouncer.rs: one behind PgBouncer).
pub async fn table_on(app: TestApp) -> Table {
    let id = app
        .create_match(&app.token("alice"), "tictactoe", json!({}))
        .await;
    let channel = format!("match:{id}");
    let mut x = app.ws(&app.token("alice")).await;
    let mut o = app.ws(&app.token("bob")).await;
    let mut spectator = app.ws(&app.token("carol")).await;
    for c in [&mut x, &mut o, &mut spectator] {
        let r = c.subscribe(&channel, Some(0)).await;
        assert_eq!(r["op"], "subscribed", "{r}");
        assert_eq!(r["recovered"], true);
    }
    x.act(&id, "join", json!({})).await;
    x.state_until(&id, |s| s["players"]["X"] == "alice").await;
    o.act(&id, "join", json!({})).await;
    let s = o.state_until(&id, |s| s["status"] == "playing").await;
    assert_eq!(s["players"], json!({"X": "alice", "O": "bob"}));
    assert_eq!(s["turn"], "X");
    assert!(s["turn_deadline"].is_string());
    Table {
        app,
        id,
        x,
        o,
        spectator,
    }
}

/// Every message the spectator got on the match channel, until `last` holds.
async fn spectator_log(c: &mut Client, id: &str, last: impl Fn(&Value) -> bool) -> Vec<Value> {
    let channel = format!("match:{id}");
    let mut seen = Vec::new();
    loop {
        let m = c.message(&channel).await;
        let done = m["name"] == "state" && last(&m["data"]);
        seen.push(m);
        if done {
            return seen;
        }
    }
}

fn assert_consecutive(messages: &[Value]) {
    let seqs: Vec<i64> = messages
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect();
    for w in seqs.windows(2) {
        assert_eq!(w[1], w[0] + 1, "seqs {seqs:?} must be consecutive");
    }
}

#[tokio::test]
async fn a_full_game_ends_in_a_win_and_the_spectator_sees_every_state_in_order() {
    let (_db, opts) = TestDb::new().await;
    let Table {
        app,
        id,
        mut x,
        mut o,
        mut spectator,
    } = table(opts).await;
    // X takes the top row: 0, 1, 2 while O plays 3, 4.
    play(
        &mut x,
        &mut o,
        &id,
        &[(0, 0), (1, 3), (0, 1), (1, 4), (0, 2)],
    )
    .await;
    let log = spectator_log(&mut spectator, &id, |s| s["status"] == "won").await;
    assert_consecutive(&log);
    let states: Vec<&Value> = log
        .iter()
        .filter(|m| m["name"] == "state")
        .map(|m| &m["data"])
        .collect();
    // The spectator saw each move's state, in move order.
    let counts: Vec<i64> = states
        .iter()
        .map(|s| s["move_count"].as_i64().unwrap())
        .collect();
    let tail: Vec<i64> = counts.iter().copied().skip_while(|c| *c == 0).collect();
    assert_eq!(tail, vec![1, 2, 3, 4, 5]);
    let last = states.last().unwrap();
    assert_eq!(last["winner"], "X");
    assert_eq!(
        last["board"],
        json!(["X", "X", "X", "O", "O", null, null, null, null])
    );

    // HTTP shows the same final state, and the lobby/status columns agree.
    let m: Value = app
        .get(&format!("/v1/matches/{id}"), &app.token("carol"))
        .await
        .1;
    assert_eq!(m["status"], "won");
    assert_eq!(m["state"]["winner"], "X");
    app.shutdown().await;
}

#[tokio::test]
async fn a_full_game_can_end_in_a_draw() {
    let (_db, opts) = TestDb::new().await;
    let Table {
        app,
        id,
        mut x,
        mut o,
        mut spectator,
    } = table(opts).await;
    // X O X / X O O / O X X: no line.
    play(
        &mut x,
        &mut o,
        &id,
        &[
            (0, 0),
            (1, 1),
            (0, 2),
            (1, 4),
            (0, 3),
            (1, 5),
            (0, 7),
            (1, 6),
            (0, 8),
        ],
    )
    .await;
    let log = spectator_log(&mut spectator, &id, |s| {
        s["status"] != "playing" && s["status"] != "waiting"
    })
    .await;
    assert_consecutive(&log);
    let last = &log.last().unwrap()["data"];
    assert_eq!(last["status"], "draw");
    assert_eq!(last["winner"], Value::Null);
    assert_eq!(last["move_count"], 9);
    app.shutdown().await;
}

async fn rejection(c: &mut Client, id: &str, name: &str, data: Value) -> Value {
    let msg_id = c.act(id, name, data).await;
    let r = c.named(&format!("user:{}", c.client_id), "rejected").await;
    assert_eq!(r["data"]["ref"], msg_id, "{r}");
    r["data"]["reason"].clone()
}

#[tokio::test]
async fn every_invalid_move_is_rejected_privately_and_changes_nothing() {
    let (_db, opts) = TestDb::new().await;
    let Table {
        app,
        id,
        mut x,
        mut o,
        mut spectator,
    } = table(opts).await;
    for c in [&mut x, &mut o, &mut spectator] {
        let channel = format!("user:{}", c.client_id);
        assert_eq!(c.subscribe(&channel, None).await["op"], "subscribed");
    }
    assert_eq!(
        rejection(&mut o, &id, "move", json!({"cell": 0})).await,
        "not_your_turn"
    );
    assert_eq!(
        rejection(&mut x, &id, "move", json!({"cell": 9})).await,
        "cell_out_of_range"
    );
    assert_eq!(
        rejection(&mut x, &id, "move", json!({"cell": -1})).await,
        "cell_out_of_range"
    );
    assert_eq!(
        rejection(&mut spectator, &id, "move", json!({"cell": 0})).await,
        "not_a_player"
    );
    x.act(&id, "move", json!({"cell": 4})).await;
    o.state_until(&id, |s| s["board"][4] == "X").await;
    assert_eq!(
        rejection(&mut o, &id, "move", json!({"cell": 4})).await,
        "cell_taken"
    );
    // Nobody else heard of the rejections: the match channel carried only states, and
    // none changed before the valid move.
    let log = spectator_log(&mut spectator, &id, |s| s["board"][4] == "X").await;
    assert!(log.iter().all(|m| m["name"] == "state"), "{log:?}");
    let changed: Vec<&Value> = log
        .iter()
        .filter(|m| m["data"]["move_count"] != 0)
        .collect();
    assert_eq!(
        changed.len(),
        1,
        "only the valid move changed the board: {log:?}"
    );
    // O leaves: X wins by forfeit; then any move is too late.
    o.act(&id, "leave", json!({})).await;
    let s = x.state_until(&id, |s| s["status"] == "won").await;
    assert_eq!(s["winner"], "X");
    assert_eq!(
        rejection(&mut x, &id, "move", json!({"cell": 0})).await,
        "game_over"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn chat_reaches_everyone_in_the_match() {
    let (_db, opts) = TestDb::new().await;
    let Table {
        app,
        id,
        mut x,
        mut o,
        mut spectator,
    } = table(opts).await;
    spectator
        .act(&id, "chat", json!({"text": "good luck!"}))
        .await;
    let channel = format!("match:{id}");
    for c in [&mut x, &mut o, &mut spectator] {
        let m = c.named(&channel, "chat").await;
        assert_eq!(m["data"], json!({"from": "carol", "text": "good luck!"}));
    }
    app.shutdown().await;
}

#[tokio::test]
async fn players_connection_state_follows_their_subscriptions() {
    let (_db, opts) = TestDb::new().await;
    let Table {
        app,
        id,
        mut x,
        o,
        spectator: _s,
    } = table(opts).await;
    x.state_until(&id, |s| s["connected"] == json!({"X": true, "O": true}))
        .await;
    drop(o);
    x.state_until(&id, |s| s["connected"] == json!({"X": true, "O": false}))
        .await;
    let mut o = app.ws(&app.token("bob")).await;
    o.subscribe(&format!("match:{id}"), None).await;
    let s = x
        .state_until(&id, |s| s["connected"] == json!({"X": true, "O": true}))
        .await;
    assert_eq!(
        s["status"], "playing",
        "disconnection alone never ends a match"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn both_players_asking_for_a_rematch_swap_sides() {
    let (_db, opts) = TestDb::new().await;
    let Table {
        app,
        id,
        mut x,
        mut o,
        spectator: _s,
    } = table(opts).await;
    o.act(&id, "leave", json!({})).await;
    // O left for good, so only a match that ended otherwise can be replayed: play a new one.
    x.state_until(&id, |s| s["status"] == "won").await;
    let id2 = app
        .create_match(&app.token("alice"), "tictactoe", json!({}))
        .await;
    for c in [&mut x, &mut o] {
        c.subscribe(&format!("match:{id2}"), None).await;
        c.act(&id2, "join", json!({})).await;
    }
    x.state_until(&id2, |s| s["status"] == "playing").await;
    play(
        &mut x,
        &mut o,
        &id2,
        &[(0, 0), (1, 3), (0, 1), (1, 4), (0, 2)],
    )
    .await;
    x.act(&id2, "rematch", json!({})).await;
    o.act(&id2, "rematch", json!({})).await;
    let s = x
        .state_until(&id2, |s| s["status"] == "playing" && s["move_count"] == 0)
        .await;
    assert_eq!(s["players"], json!({"X": "bob", "O": "alice"}));
    app.shutdown().await;
}

#[tokio::test]
async fn the_lobby_hears_of_every_match_status() {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn(opts).await;
    let mut watcher = app.ws(&app.token("lurker")).await;
    assert_eq!(watcher.subscribe("lobby", None).await["op"], "subscribed");
    let id = app
        .create_match(&app.token("alice"), "tictactoe", json!({}))
        .await;
    let mut x = app.ws(&app.token("alice")).await;
    let mut o = app.ws(&app.token("bob")).await;
    x.act(&id, "join", json!({})).await;
    o.act(&id, "join", json!({})).await;
    o.act(&id, "leave", json!({})).await;
    let mut statuses = Vec::new();
    while statuses.last().map_or(true, |s| s != "won") {
        let m = watcher.named("lobby", "match").await;
        assert_eq!(m["data"]["id"], id.as_str());
        assert_eq!(m["data"]["game"], "tictactoe");
        statuses.push(m["data"]["status"].as_str().unwrap().to_owned());
    }
    assert_eq!(statuses, vec!["waiting", "playing", "won"]);
    // And the list endpoint shows it, filtered by status.
    let list: Value = app
        .get(
            "/v1/matches?game=tictactoe&status=won",
            &app.token("lurker"),
        )
        .await
        .1;
    assert_eq!(list["matches"][0]["id"], id.as_str());
    assert_eq!(list["matches"].as_array().unwrap().len(), 1);
    app.shutdown().await;
}
