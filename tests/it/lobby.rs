//! The demo's lobby over HTTP: a guest keeps its identity when it picks a display name, a
//! lobby code (the first 8 characters of a match id) finds its match, and the name a
//! player joins with is shown to the opponent.

use serde_json::{json, Value};

use crate::helpers::{TestApp, TestDb};

/// POST /v1/tokens with an optional bearer token.
async fn mint(app: &TestApp, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut req = app.http.post(app.url("/v1/tokens")).json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_guest_picks_a_display_name_and_keeps_its_identity() {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn(opts).await;
    let (status, first) = mint(&app, None, json!({})).await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["name"], Value::Null);
    let id = first["client_id"].as_str().unwrap().to_owned();

    let (status, named) = mint(&app, first["token"].as_str(), json!({ "name": "  Ada  " })).await;
    assert_eq!(status, 201, "{named}");
    assert_eq!(named["client_id"], json!(id), "the same identity");
    assert_eq!(named["name"], json!("Ada"));
    // The new token works and names the same client.
    let ws = app.ws(named["token"].as_str().unwrap()).await;
    assert_eq!(ws.client_id, id);

    // Not a guest's token, or not a token: refused, nothing minted.
    let (status, body) = mint(&app, Some(&app.token("app-user-1")), json!({"name": "x"})).await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = mint(&app, Some("not-a-token"), json!({"name": "x"})).await;
    assert_eq!(status, 401, "{body}");
    app.shutdown().await;
}

#[tokio::test]
async fn a_lobby_code_finds_its_match_by_id_prefix() {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn(opts).await;
    let token = app.token("alice");
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(app.create_match(&token, "tictactoe", json!({})).await);
    }
    for id in &ids {
        let code = &id[..8];
        let (status, body) = app
            .get(&format!("/v1/matches?id_prefix={code}&limit=2"), &token)
            .await;
        assert_eq!(status, 200, "{body}");
        let found: Vec<&str> = body["matches"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        assert_eq!(found, vec![id.as_str()]);
        // Upper case and a full id with dashes work too.
        let (_, body) = app
            .get(
                &format!("/v1/matches?id_prefix={}", id.to_uppercase()),
                &token,
            )
            .await;
        assert_eq!(body["matches"][0]["id"], json!(id));
    }
    let (status, body) = app.get("/v1/matches?id_prefix=0000", &token).await;
    assert_eq!(status, 200);
    for m in body["matches"].as_array().unwrap() {
        assert!(m["id"].as_str().unwrap().starts_with("0000"), "{m}");
    }
    for bad in ["ab", "zzzzzzzz", "0123456789abcdef0123456789abcdef0"] {
        let (status, body) = app
            .get(&format!("/v1/matches?id_prefix={bad}"), &token)
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    app.shutdown().await;
}

#[tokio::test]
async fn the_name_a_player_joins_with_is_shown_to_the_opponent() {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn(opts).await;
    let id = app
        .create_match(&app.token("alice"), "tictactoe", json!({}))
        .await;
    let mut alice = app.ws(&app.token("alice")).await;
    let mut bob = app.ws(&app.token("bob")).await;
    alice.subscribe(&format!("match:{id}"), None).await;
    bob.subscribe(&format!("match:{id}"), None).await;
    alice.act(&id, "join", json!({ "name": "Alice" })).await;
    bob.act(&id, "join", json!({ "name": "Bob" })).await;
    let state = alice.state_until(&id, |s| s["status"] == "playing").await;
    assert_eq!(state["names"], json!({ "X": "Alice", "O": "Bob" }));
    app.shutdown().await;
}
