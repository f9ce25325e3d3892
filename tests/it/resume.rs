//! Resume by seq, history and idempotent publishes.

use serde_json::{json, Value};

use crate::helpers::{play, TestApp, TestDb};

#[tokio::test]
async fn a_client_that_resumes_with_since_gets_exactly_what_it_missed() {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn(opts).await;
    let admin = app.admin_token();
    let channel = "news";
    let mut publisher = app.ws(&admin).await;
    let mut reader = app.ws(&admin).await;
    assert_eq!(reader.subscribe(channel, None).await["head"], 0);
    for i in 1..=5 {
        publisher.publish(channel, "n", json!(i)).await;
    }
    let mut last = 0;
    for i in 1..=5 {
        let m = reader.message(channel).await;
        assert_eq!(m["data"], json!(i));
        last = m["seq"].as_i64().unwrap();
    }
    drop(reader);
    // Play goes on while the reader is away.
    for i in 6..=40 {
        publisher.publish(channel, "n", json!(i)).await;
    }
    let mut reader = app.ws(&admin).await;
    // And keeps going while it resubscribes, to exercise the replay/live seam.
    let live = tokio::spawn(async move {
        for i in 41..=80 {
            publisher.publish(channel, "n", json!(i)).await;
        }
        publisher
    });
    let r = reader.subscribe(channel, Some(last)).await;
    assert_eq!(r["op"], "subscribed");
    assert_eq!(r["recovered"], true);
    for i in 6..=80 {
        let m = reader.message(channel).await;
        assert_eq!(m["data"], json!(i), "no gap, no duplicate, in order");
        assert_eq!(m["seq"], json!(i));
    }
    live.await.unwrap();
    app.shutdown().await;
}

#[tokio::test]
async fn resuming_a_match_mid_game_replays_the_missed_states() {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn(opts).await;
    let id = app
        .create_match(&app.token("alice"), "tictactoe", json!({}))
        .await;
    let channel = format!("match:{id}");
    let mut x = app.ws(&app.token("alice")).await;
    let mut o = app.ws(&app.token("bob")).await;
    let mut watcher = app.ws(&app.token("carol")).await;
    watcher.subscribe(&channel, Some(0)).await;
    for c in [&mut x, &mut o] {
        c.subscribe(&channel, None).await;
        c.act(&id, "join", json!({})).await;
    }
    let m = watcher
        .recv_where(|v| v["op"] == "message" && v["data"]["status"] == "playing")
        .await;
    let seen = m["seq"].as_i64().unwrap();
    drop(watcher);
    play(&mut x, &mut o, &id, &[(0, 4), (1, 0), (0, 8)]).await;
    let mut watcher = app.ws(&app.token("carol")).await;
    let r = watcher.subscribe(&channel, Some(seen)).await;
    assert_eq!(r["recovered"], true);
    let head = r["head"].as_i64().unwrap();
    let mut replayed = Vec::new();
    while replayed.last().map_or(true, |s| *s < head) {
        let m = watcher.message(&channel).await;
        replayed.push(m["seq"].as_i64().unwrap());
    }
    let expected: Vec<i64> = (seen + 1..=head).collect();
    assert_eq!(replayed, expected);
    app.shutdown().await;
}

#[tokio::test]
async fn history_serves_the_log_oldest_first_with_since_and_limit() {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn(opts).await;
    let admin = app.admin_token();
    for i in 1..=12 {
        let r = app
            .http
            .post(app.url("/v1/channels/news/messages"))
            .bearer_auth(&admin)
            .json(&json!({"name": "n", "data": {"i": i}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let body: Value = app
        .get("/v1/channels/news/history?since=3&limit=5", &admin)
        .await
        .1;
    let seqs: Vec<i64> = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, vec![4, 5, 6, 7, 8]);
    assert_eq!(body["messages"][0]["data"], json!({"i": 4}));
    assert!(body["messages"][0]["ts"].is_string());
    assert_eq!(
        app.get("/v1/channels/news/history?limit=5000", &admin)
            .await
            .0,
        400
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_repeated_key_returns_the_first_msg_id_and_is_not_processed_again() {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn(opts).await;
    let id = app
        .create_match(&app.token("alice"), "tictactoe", json!({}))
        .await;
    let control = format!("control:{id}");
    let mut alice = app.ws(&app.token("alice")).await;
    alice.subscribe(&format!("match:{id}"), None).await;
    let first = alice
        .publish_keyed(&control, "chat", json!({"text": "once"}), "k1")
        .await;
    assert_eq!(first["duplicate"], false);
    let again = alice
        .publish_keyed(&control, "chat", json!({"text": "once"}), "k1")
        .await;
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["msg_id"], first["msg_id"]);
    // Over HTTP the same key is the same publish.
    let r: Value = app
        .http
        .post(app.url(&format!("/v1/channels/{control}/messages")))
        .bearer_auth(app.token("alice"))
        .json(&json!({"name": "chat", "data": {"text": "once"}, "key": "k1"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["duplicate"], true);
    assert_eq!(r["msg_id"], first["msg_id"]);
    // The same key from another client is another publish.
    let mut bob = app.ws(&app.token("bob")).await;
    let other = bob
        .publish_keyed(&control, "chat", json!({"text": "twice"}), "k1")
        .await;
    assert_eq!(other["duplicate"], false);
    // Exactly two chat lines reach the match.
    alice.named(&format!("match:{id}"), "chat").await;
    let second = alice.named(&format!("match:{id}"), "chat").await;
    assert_eq!(second["data"]["text"], "twice");
    let chats: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM postgame.messages WHERE channel = $1 AND name = 'chat'",
    )
    .bind(format!("match:{id}"))
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(chats, 2);
    app.shutdown().await;
}
