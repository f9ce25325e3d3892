//! Authentication and capabilities.

use serde_json::{json, Value};

use crate::helpers::{Closed, TestApp, TestDb};

#[tokio::test]
async fn a_bad_token_is_refused_with_unauthorized_and_4001() {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn(opts).await;
    let forged = postgame::gateway::auth::Auth::new("not-the-secret")
        .issue("mallory", None, None, chrono::Duration::hours(1))
        .0;
    let expired = postgame::gateway::auth::Auth::new(crate::helpers::SECRET)
        .issue("late", None, None, chrono::Duration::hours(-1))
        .0;
    for path in [
        "/v1/ws".to_owned(),
        "/v1/ws?token=garbage".to_owned(),
        format!("/v1/ws?token={forged}"),
        format!("/v1/ws?token={expired}"),
    ] {
        let mut c = app.ws_raw(&path).await;
        let e = c.recv().await;
        assert_eq!(e["op"], "error", "{path}: {e}");
        assert_eq!(e["code"], "unauthorized");
        assert!(matches!(c.closed().await, Closed::Code(4001)), "{path}");
    }
    // HTTP too.
    let r = app.http.get(app.url("/v1/matches")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "unauthorized");
    app.shutdown().await;
}

#[tokio::test]
async fn subscribing_to_control_or_someone_elses_user_channel_is_forbidden() {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn(opts).await;
    let id = app
        .create_match(&app.token("alice"), "tictactoe", json!({}))
        .await;
    let mut alice = app.ws(&app.token("alice")).await;
    for channel in [
        format!("control:{id}"),
        "user:bob".to_owned(),
        "secret-room".to_owned(),
    ] {
        let r = alice.subscribe(&channel, None).await;
        assert_eq!(r["op"], "error", "{channel}: {r}");
        assert_eq!(r["code"], "forbidden", "{channel}");
    }
    // Even a token with every capability never reads control or another user's channel.
    let mut admin = app.ws(&app.admin_token()).await;
    assert_eq!(
        admin.subscribe(&format!("control:{id}"), None).await["code"],
        "forbidden"
    );
    assert_eq!(admin.subscribe("user:bob", None).await["code"], "forbidden");
    // The connection is still fine, and the allowed channels work.
    assert_eq!(
        alice.subscribe("user:alice", None).await["op"],
        "subscribed"
    );
    assert_eq!(alice.subscribe("lobby", None).await["op"], "subscribed");
    assert_eq!(
        alice.subscribe(&format!("match:{id}"), None).await["op"],
        "subscribed"
    );
    // Publishing on a match channel needs a capability a default token lacks.
    let r = alice
        .publish(&format!("match:{id}"), "state", json!({}))
        .await;
    assert_eq!(r["code"], "forbidden");
    // History of a control channel is forbidden over HTTP as well.
    assert_eq!(
        app.get(
            &format!("/v1/channels/control:{id}/history"),
            &app.token("alice")
        )
        .await
        .0,
        403
    );
    app.shutdown().await;
}

#[tokio::test]
async fn guests_get_a_fresh_identity_and_can_be_turned_off() {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn(opts).await;
    let r = app
        .http
        .post(app.url("/v1/tokens"))
        .json(&json!({"name": "Ada"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let body: Value = r.json().await.unwrap();
    let token = body["token"].as_str().unwrap();
    let mut c = app.ws(token).await;
    assert_eq!(c.client_id, body["client_id"].as_str().unwrap());
    assert_ne!(c.client_id, "Ada", "a guest never picks its own id");
    assert_eq!(c.subscribe("lobby", None).await["op"], "subscribed");
    app.shutdown().await;
}

#[tokio::test]
async fn guest_tokens_are_refused_when_guests_are_off() {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn_with(opts, postgame::game::Registry::builtin(), |c| {
        c.no_guests = true
    })
    .await;
    let r = app.http.post(app.url("/v1/tokens")).send().await.unwrap();
    assert_eq!(r.status(), 403);
    app.shutdown().await;
}
