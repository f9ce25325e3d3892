//! The matchmaker: tickets paired by the workers into new matches, exactly once, across
//! several gateways and workers; cancel, expiry, disconnect; bad input.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use postgame::config::Role;
use postgame::game::Registry;
use serde_json::{json, Value};

use crate::helpers::{test_config, Client, TestApp, TestDb};

/// A gateway-only server (the workers run elsewhere).
async fn gateway(opts: sqlx::postgres::PgConnectOptions) -> TestApp {
    TestApp::spawn_with(opts, Registry::builtin(), |c| {
        c.roles = vec![Role::Gateway];
        c.db_connections = 3;
    })
    .await
}

/// A client connected to `app`, subscribed to its own `user:` channel.
async fn player(app: &TestApp, name: &str) -> Client {
    let mut c = TestApp::ws_at(app.addr, &app.token(name)).await;
    let r = c.subscribe(&format!("user:{name}"), None).await;
    assert_eq!(r["op"], "subscribed", "{r}");
    c
}

async fn open(app: &TestApp, name: &str, body: Value) -> (u16, Value) {
    app.post("/v1/matchmaker", &app.token(name), &body).await
}

async fn ticket(app: &TestApp, name: &str, id: &str) -> Value {
    let (status, body) = app
        .get(&format!("/v1/matchmaker/{id}"), &app.token(name))
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn cancel(app: &TestApp, name: &str, id: &str) -> (u16, Value) {
    let r = app
        .http
        .delete(app.url(&format!("/v1/matchmaker/{id}")))
        .bearer_auth(app.token(name))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// Waits until ticket `id` of `name` has `status`.
async fn until_status(app: &TestApp, name: &str, id: &str, status: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let t = ticket(app, name, id).await;
        if t["status"] == status {
            return t;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "ticket never became {status}: {t}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `user:<name>` messages named `event` in the log.
async fn logged(app: &TestApp, name: &str, event: &str) -> Vec<Value> {
    sqlx::query_scalar(
        "SELECT data FROM postgame.messages WHERE channel = $1 AND name = $2 ORDER BY seq",
    )
    .bind(format!("user:{name}"))
    .bind(event)
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_hundred_players_on_two_gateways_and_four_workers_end_in_fifty_matches() {
    let (_db, opts) = TestDb::new().await;
    let gateways = [gateway(opts.clone()).await, gateway(opts).await];
    let mut workers = Vec::new();
    for _ in 0..4 {
        let mut config = test_config(&gateways[0].db_url);
        config.roles = vec![Role::Worker];
        config.workers = 1;
        config.db_connections = 2;
        workers.push(
            postgame::start(config, Registry::builtin(), None)
                .await
                .unwrap(),
        );
    }
    let names: Vec<String> = (0..100).map(|i| format!("mm{i:03}")).collect();
    let mut clients = Vec::new();
    for (i, n) in names.iter().enumerate() {
        clients.push(player(&gateways[i % 2], n).await);
    }
    // Everyone asks at once, half on each gateway.
    let asks = names.iter().enumerate().map(|(i, n)| {
        let app = &gateways[i % 2];
        async move { open(app, n, json!({ "game": "tictactoe" })).await }
    });
    let answers = futures_util::future::join_all(asks).await;
    let mut tickets: HashMap<String, String> = HashMap::new();
    for (n, (status, body)) in names.iter().zip(answers) {
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["status"], "waiting", "{body}");
        tickets.insert(n.clone(), body["ticket"].as_str().unwrap().to_owned());
    }

    // Every player hears `matched` once, with its own ticket.
    let mut seats: HashMap<String, Vec<String>> = HashMap::new();
    for (n, c) in names.iter().zip(clients.iter_mut()) {
        let m = c.named(&format!("user:{n}"), "matched").await;
        assert_eq!(m["data"]["ticket"], tickets[n].as_str(), "{m}");
        let match_id = m["data"]["match_id"].as_str().unwrap().to_owned();
        seats.entry(match_id).or_default().push(n.clone());
    }
    assert_eq!(seats.len(), 50, "exactly 50 matches: {seats:?}");
    assert!(seats.values().all(|p| p.len() == 2), "{seats:?}");

    let app = &gateways[0];
    let matches: Vec<(String, String, Value)> =
        sqlx::query_as("SELECT id::text, status, state FROM postgame.matches")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(matches.len(), 50, "no other match was created");
    for (id, status, state) in &matches {
        assert_eq!(status, "playing", "{state}");
        let got: HashSet<&str> = [&state["players"]["X"], &state["players"]["O"]]
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let want: HashSet<&str> = seats[id].iter().map(String::as_str).collect();
        assert_eq!(got, want, "both seats are the ticket owners: {state}");
    }
    for n in &names {
        assert_eq!(
            logged(app, n, "matched").await.len(),
            1,
            "{n}: one `matched`"
        );
        let t = ticket(app, n, &tickets[n]).await;
        assert_eq!(t["status"], "matched", "{t}");
    }
    let waiting: i64 =
        sqlx::query_scalar("SELECT count(*) FROM postgame.mm_tickets WHERE status <> 'matched'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(waiting, 0, "nobody left waiting");

    // A match made by the matchmaker is played like any other.
    let (id, players) = seats.iter().next().unwrap();
    let x = &matches.iter().find(|m| &m.0 == id).unwrap().2["players"]["X"];
    let xi = names.iter().position(|n| n == x.as_str().unwrap()).unwrap();
    let oi = names
        .iter()
        .position(|n| n != x && players.contains(n))
        .unwrap();
    let (lo, hi) = (xi.min(oi), xi.max(oi));
    let (left, right) = clients.split_at_mut(hi);
    let (first, second) = (&mut left[lo], &mut right[0]);
    let (x_client, o_client) = if xi < oi {
        (first, second)
    } else {
        (second, first)
    };
    for c in [&mut *x_client, &mut *o_client] {
        c.subscribe(&format!("match:{id}"), None).await;
    }
    crate::helpers::play(x_client, o_client, id, &[(0, 4)]).await;

    drop(clients);
    for w in workers {
        w.shutdown().await;
    }
    for g in gateways {
        g.shutdown().await;
    }
}

#[tokio::test]
async fn a_cancelled_ticket_is_never_matched_and_one_ticket_per_game_is_open() {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn(opts).await;
    let _ann = player(&app, "ann").await;
    let mut bob = player(&app, "bob").await;
    let mut cid = player(&app, "cid").await;

    let (status, first) = open(&app, "ann", json!({ "game": "tictactoe" })).await;
    assert_eq!(status, 201, "{first}");
    let ann_ticket = first["ticket"].as_str().unwrap().to_owned();
    // Asking again for the same thing returns the open ticket…
    let (status, again) = open(&app, "ann", json!({ "game": "tictactoe", "config": {} })).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["ticket"], first["ticket"]);
    // …asking for something else while it is open is refused, naming it.
    let (status, other) = open(
        &app,
        "ann",
        json!({ "game": "tictactoe", "config": { "turn_seconds": 5 } }),
    )
    .await;
    assert_eq!(status, 400, "{other}");
    assert_eq!(other["code"], "bad_request");
    assert!(
        other["message"].as_str().unwrap().contains(&ann_ticket),
        "{other}"
    );
    // Nobody else can see or cancel it.
    let (status, _) = app
        .get(&format!("/v1/matchmaker/{ann_ticket}"), &app.token("bob"))
        .await;
    assert_eq!(status, 404);
    assert_eq!(cancel(&app, "bob", &ann_ticket).await.0, 404);

    let (status, cancelled) = cancel(&app, "ann", &ann_ticket).await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(
        cancel(&app, "ann", &ann_ticket).await.1["status"],
        "cancelled"
    );

    // Bob waits alone: Ann's cancelled ticket is not a partner.
    let (status, b) = open(&app, "bob", json!({ "game": "tictactoe" })).await;
    assert_eq!(status, 201, "{b}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let bob_ticket = b["ticket"].as_str().unwrap();
    assert_eq!(ticket(&app, "bob", bob_ticket).await["status"], "waiting");
    // Cid arrives: Bob and Cid play.
    let (status, c) = open(
        &app,
        "cid",
        json!({ "game": "tictactoe", "join": { "name": "Cid" } }),
    )
    .await;
    assert_eq!(status, 201, "{c}");
    assert_eq!(c["join"], json!({ "name": "Cid" }));
    let mb = bob.named("user:bob", "matched").await;
    let mc = cid.named("user:cid", "matched").await;
    assert_eq!(mb["data"]["match_id"], mc["data"]["match_id"]);
    assert_eq!(mc["data"]["ticket"], c["ticket"]);
    let t = ticket(&app, "bob", bob_ticket).await;
    assert_eq!(t["status"], "matched");
    assert_eq!(t["match_id"], mb["data"]["match_id"]);
    // Seated by age, each with the data of its ticket's `join`.
    let (_, m) = app
        .get(
            &format!("/v1/matches/{}", t["match_id"].as_str().unwrap()),
            &app.token("bob"),
        )
        .await;
    assert_eq!(
        m["state"]["players"],
        json!({ "X": "bob", "O": "cid" }),
        "{m}"
    );
    assert_eq!(m["state"]["names"], json!({ "X": null, "O": "Cid" }), "{m}");
    // A cancel that comes too late says what became of the ticket.
    let (status, late) = cancel(&app, "bob", bob_ticket).await;
    assert_eq!(status, 200);
    assert_eq!(late["status"], "matched", "{late}");

    assert!(logged(&app, "ann", "matched").await.is_empty());
    assert_eq!(
        ticket(&app, "ann", &ann_ticket).await["status"],
        "cancelled"
    );
    // A new ticket may be opened once the old one ended.
    let (status, _) = open(&app, "ann", json!({ "game": "tictactoe" })).await;
    assert_eq!(status, 201);
    app.shutdown().await;
}

#[tokio::test]
async fn a_ticket_nobody_pairs_expires_and_its_player_is_told() {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn_with(opts, Registry::builtin(), |c| {
        c.matchmaker_ticket_seconds = 1.0;
    })
    .await;
    let mut eve = player(&app, "eve").await;
    let (status, t) = open(&app, "eve", json!({ "game": "tictactoe" })).await;
    assert_eq!(status, 201, "{t}");
    let m = eve.named("user:eve", "matchmaker_expired").await;
    assert_eq!(m["data"]["ticket"], t["ticket"], "{m}");
    assert_eq!(m["data"]["reason"], "expired", "{m}");
    let id = t["ticket"].as_str().unwrap();
    assert_eq!(ticket(&app, "eve", id).await["status"], "expired");
    // An expired ticket is never paired: a newcomer waits.
    let mut fay = player(&app, "fay").await;
    let (_, f) = open(&app, "fay", json!({ "game": "tictactoe" })).await;
    let m = fay.named("user:fay", "matchmaker_expired").await;
    assert_eq!(m["data"]["ticket"], f["ticket"]);
    assert!(logged(&app, "eve", "matched").await.is_empty());
    app.shutdown().await;
}

#[tokio::test]
async fn a_ticket_whose_player_disconnects_is_dropped() {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn(opts).await;
    let gus = player(&app, "gus").await;
    let (status, t) = open(&app, "gus", json!({ "game": "tictactoe" })).await;
    assert_eq!(status, 201, "{t}");
    let gus_ticket = t["ticket"].as_str().unwrap().to_owned();
    drop(gus);
    until_status(&app, "gus", &gus_ticket, "dropped").await;
    let told = logged(&app, "gus", "matchmaker_expired").await;
    assert_eq!(told.len(), 1, "{told:?}");
    assert_eq!(told[0]["reason"], "disconnected");

    // Nobody is paired with the dropped ticket.
    let mut hal = player(&app, "hal").await;
    let (_, h) = open(&app, "hal", json!({ "game": "tictactoe" })).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let hal_ticket = h["ticket"].as_str().unwrap();
    assert_eq!(ticket(&app, "hal", hal_ticket).await["status"], "waiting");
    // A player still connected (on one of several connections) keeps its ticket.
    let mut ivy = player(&app, "ivy").await;
    let ivy2 = player(&app, "ivy").await;
    drop(ivy2);
    let (_, i) = open(&app, "ivy", json!({ "game": "tictactoe" })).await;
    let mh = hal.named("user:hal", "matched").await;
    let mi = ivy.named("user:ivy", "matched").await;
    assert_eq!(mh["data"]["match_id"], mi["data"]["match_id"]);
    assert_eq!(mi["data"]["ticket"], i["ticket"]);
    assert!(logged(&app, "gus", "matched").await.is_empty());
    app.shutdown().await;
}

#[tokio::test]
async fn tickets_pair_only_with_the_same_config_and_query() {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn(opts).await;
    let mut clients = Vec::new();
    let asks = [
        (
            "jo",
            json!({ "game": "tictactoe", "query": { "region": "eu" } }),
        ),
        (
            "ken",
            json!({ "game": "tictactoe", "query": { "region": "us" } }),
        ),
        (
            "lu",
            json!({ "game": "tictactoe", "config": { "turn_seconds": 10 } }),
        ),
        (
            "max",
            json!({ "game": "tictactoe", "query": { "region": "eu" } }),
        ),
        (
            "ned",
            json!({ "game": "tictactoe", "config": { "turn_seconds": 10 } }),
        ),
    ];
    for (n, body) in &asks {
        clients.push(player(&app, n).await);
        let (status, t) = open(&app, n, body.clone()).await;
        assert_eq!(status, 201, "{t}");
    }
    let mut match_of = HashMap::new();
    for (i, (n, _)) in asks.iter().enumerate() {
        if *n == "ken" {
            continue;
        }
        let m = clients[i].named(&format!("user:{n}"), "matched").await;
        match_of.insert(*n, m["data"]["match_id"].clone());
    }
    assert_eq!(match_of["jo"], match_of["max"]);
    assert_eq!(match_of["lu"], match_of["ned"]);
    assert_ne!(match_of["jo"], match_of["lu"]);
    let config: Value =
        sqlx::query_scalar("SELECT config FROM postgame.matches WHERE id = $1::uuid")
            .bind(match_of["lu"].as_str().unwrap())
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        config["turn_seconds"], 10,
        "the match has the tickets' config"
    );
    assert!(logged(&app, "ken", "matched").await.is_empty());
    app.shutdown().await;
}

#[tokio::test]
async fn bad_matchmaker_requests_get_the_contracts_errors() {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn(opts).await;
    let cases = [
        (
            json!({ "game": "chess" }),
            400,
            "bad_request",
            "unknown game",
        ),
        (
            json!({ "game": "tictactoe", "config": { "turn_seconds": 0 } }),
            400,
            "bad_request",
            "bad config",
        ),
        (
            json!({ "game": "tictactoe", "config": { "colour": "red" } }),
            400,
            "bad_request",
            "bad config",
        ),
        (
            json!({ "game": "tictactoe", "query": [1] }),
            400,
            "bad_request",
            "query",
        ),
        (
            json!({ "game": "tictactoe", "query": { "x": "a".repeat(2000) } }),
            400,
            "bad_request",
            "query",
        ),
        (
            json!({ "game": "tictactoe", "join": "Ann" }),
            400,
            "bad_request",
            "join",
        ),
        (
            json!({ "game": "tictactoe", "extra": 1 }),
            400,
            "bad_request",
            "extra",
        ),
        (json!({}), 400, "bad_request", "game"),
        // The benchmark game is the operator's: no tickets for strangers either.
        (json!({ "game": "noop" }), 403, "forbidden", "noop"),
    ];
    for (body, status, code, says) in cases {
        let (got, answer) = open(&app, "oli", body.clone()).await;
        assert_eq!(got, status, "{body} → {answer}");
        assert_eq!(answer["code"], code, "{body} → {answer}");
        assert!(
            answer["message"].as_str().unwrap().contains(says),
            "{body} → {answer}"
        );
    }
    let r = app
        .http
        .post(app.url("/v1/matchmaker"))
        .json(&json!({ "game": "tictactoe" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let (status, body) = app
        .get("/v1/matchmaker/not-a-ticket", &app.token("oli"))
        .await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
    assert_eq!(
        cancel(&app, "oli", &uuid::Uuid::new_v4().to_string())
            .await
            .0,
        404
    );
    let none: i64 = sqlx::query_scalar("SELECT count(*) FROM postgame.mm_tickets")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(none, 0, "no refused request left a ticket");
    app.shutdown().await;
}

/// A three-player test game whose `join` is slow (30 ms), so a pairing transaction lasts
/// long enough to be killed mid-way.
struct Trio;

#[derive(serde::Serialize, serde::Deserialize, Clone, Default)]
struct TrioState {
    players: Vec<String>,
}

impl postgame::game::Game for Trio {
    type Config = Value;
    type State = TrioState;

    fn name(&self) -> &'static str {
        "trio"
    }

    fn config(&self, _raw: &Value) -> Result<Value, String> {
        Ok(json!({}))
    }

    fn create(
        &self,
        _cx: &postgame::game::Cx<'_, Value>,
        _out: &mut Vec<postgame::game::Outgoing>,
    ) -> TrioState {
        TrioState::default()
    }

    fn handle(
        &self,
        _cx: &postgame::game::Cx<'_, Value>,
        state: &mut TrioState,
        input: &postgame::game::Input,
        _out: &mut Vec<postgame::game::Outgoing>,
    ) -> Result<(), postgame::game::GameError> {
        if let postgame::game::Input::Client { client, name, .. } = input {
            if name == "join" && state.players.len() < 3 {
                std::thread::sleep(Duration::from_millis(30));
                state.players.push(client.to_string());
            }
        }
        Ok(())
    }

    fn status(&self, state: &TrioState) -> &'static str {
        if state.players.len() == 3 {
            "playing"
        } else {
            "waiting"
        }
    }

    fn players_per_match(&self) -> usize {
        3
    }
}

#[tokio::test]
async fn a_game_says_how_many_players_and_killed_pairings_leave_no_trace() {
    let (_db, opts) = TestDb::new().await;
    let games = || Registry::builtin().with(Trio);
    let app = TestApp::spawn_with(opts, games(), |c| {
        c.roles = vec![Role::Gateway];
        c.db_connections = 4;
    })
    .await;
    // Thirty players queue up, one after the other, while no worker runs.
    let names: Vec<String> = (0..30).map(|i| format!("trio{i:02}")).collect();
    let mut clients = Vec::new();
    for n in &names {
        clients.push(player(&app, n).await);
        let (status, t) = open(&app, n, json!({ "game": "trio" })).await;
        assert_eq!(status, 201, "{t}");
    }
    // Workers start, and their transactions are killed again and again mid-pairing.
    let mut config = test_config(&app.db_url);
    config.roles = vec![Role::Worker];
    config.workers = 2;
    config.db_connections = 3;
    let workers = postgame::start(config, games(), None).await.unwrap();
    let kills = crate::helpers::kill_backends(app.pool.clone(), "postgame worker").await;
    assert!(kills > 0, "the test killed no worker transaction");

    let mut seats: HashMap<String, Vec<String>> = HashMap::new();
    for (n, c) in names.iter().zip(clients.iter_mut()) {
        let m = c.named(&format!("user:{n}"), "matched").await;
        let id = m["data"]["match_id"].as_str().unwrap().to_owned();
        seats.entry(id).or_default().push(n.clone());
    }
    let matches: Vec<(String, Value)> =
        sqlx::query_as("SELECT id::text, state FROM postgame.matches")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(matches.len(), 10, "a killed pairing left no match behind");
    let mut groups: Vec<Vec<String>> = Vec::new();
    for (id, state) in &matches {
        let players: Vec<String> = serde_json::from_value(state["players"].clone()).unwrap();
        assert_eq!(players, seats[id], "seated in ticket order: {state}");
        groups.push(players);
    }
    // FIFO: the oldest three tickets make a match, then the next three, …
    groups.sort();
    let expected: Vec<Vec<String>> = names.chunks(3).map(<[String]>::to_vec).collect();
    assert_eq!(groups, expected);
    for n in &names {
        assert_eq!(
            logged(&app, n, "matched").await.len(),
            1,
            "{n}: one `matched`"
        );
    }
    drop(clients);
    workers.shutdown().await;
    app.shutdown().await;
}

#[tokio::test]
async fn tickets_are_limited_per_client_and_per_address_like_match_creation() {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn_with(opts, Registry::builtin(), |c| {
        c.matches_per_client_per_minute = 2;
        c.matches_per_ip_per_minute = 4;
    })
    .await;
    let _pat = player(&app, "pat").await;
    let ask = json!({ "game": "tictactoe" });
    for _ in 0..2 {
        let (status, t) = open(&app, "pat", ask.clone()).await;
        assert_eq!(status, 201, "{t}");
        let (status, _) = cancel(&app, "pat", t["ticket"].as_str().unwrap()).await;
        assert_eq!(status, 200);
    }
    let (status, body) = open(&app, "pat", ask.clone()).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["code"], "rate_limited");
    assert!(
        body["message"].as_str().unwrap().contains("per client"),
        "{body}"
    );
    // Another client from the same address gets the fourth of the address's tickets…
    let _quin = player(&app, "quin").await;
    assert_eq!(open(&app, "quin", ask.clone()).await.0, 201);
    // …and the fifth is refused, whoever asks.
    let _rae = player(&app, "rae").await;
    let (status, body) = open(&app, "rae", ask).await;
    assert_eq!(status, 429, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("address"),
        "{body}"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn cancels_racing_the_workers_never_leave_a_ticket_both_cancelled_and_matched() {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn_with(opts, Registry::builtin(), |c| c.workers = 4).await;
    let names: Vec<String> = (0..60).map(|i| format!("race{i:02}")).collect();
    let mut clients = Vec::new();
    for n in &names {
        clients.push(player(&app, n).await);
    }
    // Everyone asks at once; every other player cancels as soon as it has its ticket.
    let runs = names.iter().enumerate().map(|(i, n)| {
        let app = &app;
        async move {
            let (status, t) = open(app, n, json!({ "game": "tictactoe" })).await;
            assert_eq!(status, 201, "{t}");
            let id = t["ticket"].as_str().unwrap().to_owned();
            let answer = if i % 2 == 0 {
                let (status, t) = cancel(app, n, &id).await;
                assert_eq!(status, 200, "{t}");
                Some(t["status"].as_str().unwrap().to_owned())
            } else {
                None
            };
            (n.clone(), id, answer)
        }
    });
    let runs = futures_util::future::join_all(runs).await;
    // Whoever is left unpaired (an odd one out) is cancelled once the workers are done.
    app.wait_until("SELECT count(*) <= 1 FROM postgame.mm_tickets WHERE status = 'waiting'")
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (n, id, _) in &runs {
        cancel(&app, n, id).await;
    }

    let mut players_of: HashMap<String, HashSet<String>> = HashMap::new();
    let (mut cancelled, mut matched) = (0, 0);
    for (n, id, answer) in &runs {
        let t = ticket(&app, n, id).await;
        let told = logged(&app, n, "matched").await;
        match t["status"].as_str().unwrap() {
            "cancelled" => {
                cancelled += 1;
                assert!(told.is_empty(), "{n}: cancelled yet told {told:?}");
            }
            "matched" => {
                matched += 1;
                assert_eq!(told.len(), 1, "{n}: {told:?}");
                assert_eq!(told[0]["ticket"], id.as_str());
                assert_eq!(told[0]["match_id"], t["match_id"]);
                if let Some(a) = answer {
                    assert_eq!(
                        a, "matched",
                        "{n}: the cancel said {a}, the ticket is matched"
                    );
                }
                players_of
                    .entry(t["match_id"].as_str().unwrap().to_owned())
                    .or_default()
                    .insert(n.clone());
            }
            other => panic!("{n}: ticket ended {other}: {t}"),
        }
        if answer.as_deref() == Some("cancelled") {
            assert_eq!(t["status"], "cancelled");
        }
    }
    assert_eq!(cancelled + matched, 60);
    assert!(
        matched >= 30,
        "the players who did not cancel were paired: {matched}"
    );
    let matches: Vec<(String, Value)> =
        sqlx::query_as("SELECT id::text, state FROM postgame.matches")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(matches.len(), players_of.len());
    for (id, state) in &matches {
        let seated: HashSet<String> = ["X", "O"]
            .iter()
            .map(|m| state["players"][m].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(seated, players_of[id], "{state}");
    }
    drop(clients);
    app.shutdown().await;
}

/// A game whose `join` takes longer than the handler time limit (1 s).
struct Stuck;

impl postgame::game::Game for Stuck {
    type Config = Value;
    type State = Value;

    fn name(&self) -> &'static str {
        "stuck"
    }

    fn config(&self, _raw: &Value) -> Result<Value, String> {
        Ok(json!({}))
    }

    fn create(
        &self,
        _cx: &postgame::game::Cx<'_, Value>,
        _out: &mut Vec<postgame::game::Outgoing>,
    ) -> Value {
        json!({})
    }

    fn handle(
        &self,
        _cx: &postgame::game::Cx<'_, Value>,
        _state: &mut Value,
        _input: &postgame::game::Input,
        _out: &mut Vec<postgame::game::Outgoing>,
    ) -> Result<(), postgame::game::GameError> {
        std::thread::sleep(Duration::from_millis(1500));
        Ok(())
    }

    fn status(&self, _state: &Value) -> &'static str {
        "open"
    }
}

#[tokio::test]
async fn a_game_whose_join_overruns_the_handler_limit_fails_its_tickets_once() {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn_with(opts, Registry::builtin().with(Stuck), |_| {}).await;
    let mut sam = player(&app, "sam").await;
    let mut tom = player(&app, "tom").await;
    let (_, s) = open(&app, "sam", json!({ "game": "stuck" })).await;
    let (_, t) = open(&app, "tom", json!({ "game": "stuck" })).await;
    for (c, n, ticket) in [(&mut sam, "sam", &s), (&mut tom, "tom", &t)] {
        let m = c.named(&format!("user:{n}"), "matchmaker_expired").await;
        assert_eq!(m["data"]["reason"], "failed", "{m}");
        assert_eq!(m["data"]["ticket"], ticket["ticket"]);
    }
    let matches: i64 = sqlx::query_scalar("SELECT count(*) FROM postgame.matches")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(matches, 0);
    assert_eq!(
        ticket(&app, "sam", s["ticket"].as_str().unwrap()).await["status"],
        "failed"
    );
    app.shutdown().await;
}
