//! Bad input gets a clear error for that client only; the connection and the server go on.

use serde_json::{json, Value};

use crate::helpers::{Closed, TestApp, TestDb};

#[tokio::test]
async fn malformed_frames_get_errors_and_the_connection_carries_on() {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn(opts).await;
    let id = app
        .create_match(&app.token("alice"), "tictactoe", json!({}))
        .await;
    let mut bystander = app.ws(&app.token("bob")).await;
    bystander.subscribe(&format!("match:{id}"), None).await;
    let mut c = app.ws(&app.token("alice")).await;
    for bad in [
        "not json",
        "[1,2]",
        r#"{"id": 1}"#,
        r#"{"op": "dance", "id": 2}"#,
        r#"{"op": "subscribe", "id": 3, "channel": 42}"#,
        r#"{"op": "publish", "id": 4, "channel": "lobby"}"#,
        r#"{"op": "subscribe", "id": 5, "channel": "match:123"}"#,
    ] {
        c.send_text(bad).await;
        let e = c.recv_where(|v| v["op"] == "error").await;
        assert_eq!(e["code"], "bad_request", "{bad}: {e}");
    }
    // A reserved name, a NUL in data, a match that does not exist.
    let r = c
        .publish(&format!("control:{id}"), "$connected", json!({}))
        .await;
    assert_eq!(r["code"], "bad_request");
    let r = c
        .publish(&format!("control:{id}"), "chat", json!({"text": "a\u{0}b"}))
        .await;
    assert_eq!(r["code"], "bad_request");
    let missing = uuid::Uuid::new_v4();
    let r = c
        .publish(&format!("control:{missing}"), "join", json!({}))
        .await;
    assert_eq!(r["code"], "not_found", "{r}");
    // Still connected and useful.
    c.send(json!({"op": "ping", "id": 99})).await;
    assert_eq!(c.reply(99).await["op"], "pong");
    c.act(&id, "join", json!({})).await;
    let s = bystander
        .state_until(&id, |s| s["players"]["X"] == "alice")
        .await;
    assert_eq!(s["status"], "waiting");
    app.shutdown().await;
}

#[tokio::test]
async fn too_many_violations_close_with_4000() {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn(opts).await;
    let mut c = app.ws(&app.token("alice")).await;
    for _ in 0..11 {
        c.send_text("{").await;
    }
    assert!(matches!(c.closed().await, Closed::Code(4000)));
    let mut other = app.ws(&app.token("bob")).await;
    assert_eq!(other.subscribe("lobby", None).await["op"], "subscribed");
    app.shutdown().await;
}

#[tokio::test]
async fn an_oversized_frame_closes_only_that_connection_with_1009() {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn_with(opts, postgame::game::Registry::builtin(), |c| {
        c.max_frame_bytes = 4096
    })
    .await;
    let mut other = app.ws(&app.token("bob")).await;
    let mut c = app.ws(&app.token("alice")).await;
    for size in [5000, 100_000] {
        let mut c2 = app.ws(&app.token("alice")).await;
        let big =
            json!({"op": "publish", "channel": "lobby", "name": "x", "data": "a".repeat(size)});
        c2.send(big).await;
        assert!(
            matches!(c2.closed().await, Closed::Code(1009) | Closed::Abrupt),
            "size {size}"
        );
    }
    // Just over the limit gets the error frame and a clean 1009.
    c.send(json!({"op": "publish", "channel": "lobby", "name": "x", "data": "a".repeat(5000)}))
        .await;
    let e = c.recv().await;
    assert_eq!(e["code"], "too_large", "{e}");
    assert!(matches!(c.closed().await, Closed::Code(1009)));
    // The server and the other connection carry on.
    other.send(json!({"op": "ping", "id": 1})).await;
    assert_eq!(other.reply(1).await["op"], "pong");
    // An oversized HTTP body is a 413 in the JSON error format.
    let r = app
        .http
        .post(app.url("/v1/matches"))
        .bearer_auth(app.token("alice"))
        .header("content-type", "application/json")
        .body(format!(
            r#"{{"game":"tictactoe","config":{{"pad":"{}"}}}}"#,
            "a".repeat(10_000)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "too_large");
    app.shutdown().await;
}

#[tokio::test]
async fn bad_http_bodies_get_json_errors() {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn(opts).await;
    let token = app.token("alice");
    for (body, status) in [
        (json!({"game": "chess"}), 400),
        (
            json!({"game": "tictactoe", "config": {"turn_seconds": 0}}),
            400,
        ),
        (
            json!({"game": "tictactoe", "config": {"turn_seconds": "ten"}}),
            400,
        ),
        (json!({"game": 5}), 400),
    ] {
        let r = app
            .http
            .post(app.url("/v1/matches"))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{body}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["code"], "bad_request", "{body}: {e}");
        assert!(e["message"].as_str().unwrap().len() > 5);
    }
    assert_eq!(app.get("/v1/matches/not-a-uuid", &token).await.0, 404);
    for (method, path, status) in [
        (reqwest::Method::GET, "/v1/matches?limit=abc", 400),
        (
            reqwest::Method::GET,
            "/v1/channels/lobby/history?since=x",
            400,
        ),
        (reqwest::Method::DELETE, "/v1/matches", 405),
        (reqwest::Method::GET, "/v1/nothing-here", 404),
    ] {
        let r = app
            .http
            .request(method, app.url(path))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{path}");
        let e: Value = r.json().await.expect("errors are JSON");
        assert!(
            e["code"].is_string() && e["message"].is_string(),
            "{path}: {e}"
        );
    }
    let r = app
        .http
        .post(app.url("/v1/matches"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    app.shutdown().await;
}

#[tokio::test]
async fn a_silent_peer_is_closed_with_4008() {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn_with(opts, postgame::game::Registry::builtin(), |c| {
        c.heartbeat_seconds = 1
    })
    .await;
    let mut c = app.ws(&app.token("sleepy")).await;
    // Not reading means not answering pings either: after 2 × heartbeat the server gives up.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert!(matches!(c.closed().await, Closed::Code(4008)));
    app.shutdown().await;
}

#[tokio::test]
async fn a_subscriber_that_falls_behind_is_cut_off_and_resumes_without_loss() {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn_with(opts, postgame::game::Registry::builtin(), |c| {
        c.outbox_frames = 8;
        // The writer is blocked on the full socket until this test reads again, after its
        // 300 POSTs: with the default 10 s, a loaded machine's POSTs outlast it and the
        // connection is dropped without its 4008 (the other way out for a non-reader).
        c.write_timeout_seconds = 120.0;
    })
    .await;
    let admin = app.admin_token();
    let mut slow = app.ws(&admin).await;
    assert_eq!(slow.subscribe("firehose", None).await["op"], "subscribed");
    // Far more than the socket buffers and an 8-frame outbox hold, while it reads nothing.
    let blob = "x".repeat(40_000);
    for i in 1..=300 {
        let (status, _) = app
            .post(
                "/v1/channels/firehose/messages",
                &admin,
                &json!({"name": "n", "data": {"i": i, "blob": blob}}),
            )
            .await;
        assert_eq!(status, 201);
    }
    let mut last = 0;
    let code = loop {
        match slow.try_message("firehose").await {
            Ok(m) => {
                assert_eq!(m["seq"], last + 1, "in order until the cut");
                last = m["seq"].as_i64().unwrap();
            }
            Err(closed) => break closed,
        }
    };
    assert!(matches!(code, Closed::Code(4008)), "{code:?}");
    assert!(last < 300, "the slow reader was cut off before the end");
    let mut back = app.ws(&admin).await;
    let r = back.subscribe("firehose", Some(last)).await;
    assert_eq!(r["recovered"], true);
    for seq in last + 1..=300 {
        let m = back.message("firehose").await;
        assert_eq!(m["seq"], seq);
    }
    app.shutdown().await;
}
