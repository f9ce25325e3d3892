//! Limits per connection, per source address and per client (#10.2): hit, they answer
//! with the contract's `rate_limited` (429 and `Retry-After` over HTTP, 4008 for a
//! connection that keeps going), and what was acked stays acked.

use serde_json::{json, Value};

use crate::helpers::{Closed, TestApp, TestDb};

#[tokio::test]
async fn a_connection_publishing_too_fast_is_refused_then_closed_with_4008() {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn_with(opts, postgame::game::Registry::builtin(), |c| {
        c.conn_publish_burst = 5;
        c.conn_publish_rate = 0.5;
    })
    .await;
    let token = app.token("alice");
    let id = app.create_match(&token, "tictactoe", json!({})).await;
    let channel = format!("control:{id}");
    let mut c = app.ws(&token).await;
    for i in 0..8 {
        c.send(
            json!({"op": "publish", "id": i, "channel": channel, "name": "chat",
                      "data": {"text": format!("hi {i}")}, "key": format!("k{i}")}),
        )
        .await;
    }
    let mut acked = Vec::new();
    let mut limited = 0;
    for _ in 0..8 {
        let r = c.recv().await;
        match r["op"].as_str() {
            Some("ack") => acked.push(r["msg_id"].as_i64().unwrap()),
            Some("error") => {
                assert_eq!(r["code"], "rate_limited", "{r}");
                limited += 1;
            }
            _ => panic!("unexpected {r}"),
        }
    }
    assert_eq!((acked.len(), limited), (5, 3));
    // What was acked is applied: five chats reach the match channel, none is dropped.
    let mut chats = 0;
    for _ in 0..100 {
        let (_, h) = app
            .get(&format!("/v1/channels/match:{id}/history"), &token)
            .await;
        chats = h["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["name"] == "chat")
            .count();
        if chats >= 5 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(chats, 5);
    // A connection that keeps going is closed with 4008.
    for i in 8..80 {
        c.send(json!({"op": "publish", "id": i, "channel": channel, "name": "chat", "data": {}}))
            .await;
    }
    let closed = c.closed().await;
    assert!(matches!(closed, Closed::Code(4008)), "{closed:?}");
    // Another connection of the same client is not affected by this one's bucket.
    let mut d = app.ws(&token).await;
    let ack = d.publish(&channel, "chat", json!({})).await;
    assert_eq!(ack["op"], "ack", "{ack}");
    app.shutdown().await;
}

async fn post_raw(
    app: &TestApp,
    path: &str,
    token: Option<&str>,
    body: &Value,
    xff: Option<&str>,
) -> reqwest::Response {
    let mut r = app.http.post(app.url(path)).json(body);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if let Some(x) = xff {
        r = r.header("x-forwarded-for", x);
    }
    r.send().await.unwrap()
}

async fn assert_limited(r: reqwest::Response) {
    assert_eq!(r.status().as_u16(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "rate_limited", "{body}");
}

#[tokio::test]
async fn guest_tokens_are_limited_per_source_address() {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn_with(opts, postgame::game::Registry::builtin(), |c| {
        c.guest_tokens_per_ip_per_minute = 3;
    })
    .await;
    for _ in 0..3 {
        let r = post_raw(&app, "/v1/tokens", None, &json!({}), None).await;
        assert_eq!(r.status().as_u16(), 201);
    }
    assert_limited(post_raw(&app, "/v1/tokens", None, &json!({}), None).await).await;
    // X-Forwarded-For from an untrusted peer changes nothing.
    let r = post_raw(&app, "/v1/tokens", None, &json!({}), Some("203.0.113.9")).await;
    assert_eq!(r.status().as_u16(), 429);
    app.shutdown().await;
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_address_is_limited() {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn_with(opts, postgame::game::Registry::builtin(), |c| {
        c.guest_tokens_per_ip_per_minute = 2;
        c.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    })
    .await;
    for who in ["203.0.113.1", "203.0.113.2"] {
        for _ in 0..2 {
            let r = post_raw(&app, "/v1/tokens", None, &json!({}), Some(who)).await;
            assert_eq!(r.status().as_u16(), 201, "{who}");
        }
        assert_limited(post_raw(&app, "/v1/tokens", None, &json!({}), Some(who)).await).await;
    }
    app.shutdown().await;
}

#[tokio::test]
async fn match_creation_is_limited_per_address_and_per_client_across_gateways() {
    let (_db, opts) = TestDb::new().await;
    let per_client = |c: &mut postgame::config::ServeConfig| {
        c.matches_per_client_per_minute = 2;
    };
    let a = TestApp::spawn_with(
        opts.clone(),
        postgame::game::Registry::builtin(),
        per_client,
    )
    .await;
    let b = TestApp::spawn_with(
        opts.clone(),
        postgame::game::Registry::builtin(),
        per_client,
    )
    .await;
    let alice = a.token("alice");
    let body = json!({ "game": "tictactoe" });
    a.create_match(&alice, "tictactoe", json!({})).await;
    b.create_match(&alice, "tictactoe", json!({})).await;
    // The third, on either gateway, is over alice's allowance.
    assert_limited(post_raw(&a, "/v1/matches", Some(&alice), &body, None).await).await;
    assert_limited(post_raw(&b, "/v1/matches", Some(&alice), &body, None).await).await;
    let created: Vec<String> =
        sqlx::query_scalar("SELECT created_by FROM postgame.matches WHERE created_by IS NOT NULL")
            .fetch_all(&a.pool)
            .await
            .unwrap();
    assert_eq!(created, vec!["alice", "alice"]);
    // Bob is not affected.
    a.create_match(&a.token("bob"), "tictactoe", json!({}))
        .await;
    a.shutdown().await;
    b.shutdown().await;

    let (_db, opts) = TestDb::new().await;
    let c = TestApp::spawn_with(opts, postgame::game::Registry::builtin(), |c| {
        c.matches_per_ip_per_minute = 2;
    })
    .await;
    c.create_match(&c.token("carol"), "tictactoe", json!({}))
        .await;
    c.create_match(&c.token("dave"), "tictactoe", json!({}))
        .await;
    let r = post_raw(&c, "/v1/matches", Some(&c.token("erin")), &body, None).await;
    assert_limited(r).await;
    c.shutdown().await;
}

#[tokio::test]
async fn connections_are_limited_per_source_address() {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn_with(opts, postgame::game::Registry::builtin(), |c| {
        c.max_connections_per_ip = 3;
    })
    .await;
    let token = app.token("alice");
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(app.ws(&token).await);
    }
    // A fresh client (no pooled connection) is refused while three are open.
    let fresh = reqwest::Client::new();
    let r = fresh.get(app.url("/healthz")).send().await.unwrap();
    assert_limited(r).await;
    drop(open);
    // Once they are gone, it gets in.
    let mut ok = false;
    for _ in 0..100 {
        let r = reqwest::Client::new().get(app.url("/healthz")).send().await;
        if matches!(r, Ok(r) if r.status().is_success()) {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ok);
    app.shutdown().await;
}
