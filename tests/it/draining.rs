//! Graceful shutdown as a load balancer sees it: `/readyz` turns `503 draining` at once,
//! while the work already accepted still finishes and is answered before the 1001 close.

use std::time::Duration;

use serde_json::json;
use sqlx::Connection;

use crate::helpers::{Closed, TestApp, TestDb, WAIT};

#[tokio::test]
async fn readyz_answers_503_draining_at_once_while_an_accepted_publish_still_finishes() {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn(opts).await;
    let readyz = app.url("/readyz");
    let http = app.http.clone();
    let r = http.get(&readyz).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.text().await.unwrap(), "ready");

    let token = app.token("xavier");
    let id = app.create_match(&token, "tictactoe", json!({})).await;
    let mut client = app.ws(&token).await;

    // The test holds the match's enqueue lock, so the publish below is accepted by the
    // session but cannot commit: in-flight work the shutdown must wait for.
    let mut blocker = sqlx::PgConnection::connect(&app.db_url).await.unwrap();
    let mut tx = blocker.begin().await.unwrap();
    let match_id: uuid::Uuid = id.parse().unwrap();
    sqlx::query("SELECT postgame.lock_enqueue($1)")
        .bind(match_id)
        .execute(&mut *tx)
        .await
        .unwrap();
    client
        .send(
            json!({"op": "publish", "id": 1, "channel": format!("control:{id}"),
                     "name": "join", "data": {}}),
        )
        .await;
    let db_url = app.db_url.clone();
    app.wait_until(
        "SELECT count(*) > 0 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .await;

    let shutdown = tokio::spawn(app.shutdown());
    // Draining: answered at once, without waiting for the publish (still blocked).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = http
            .get(&readyz)
            .send()
            .await
            .expect("the listener still answers");
        let status = r.status().as_u16();
        let body = r.text().await.unwrap();
        if status == 503 {
            assert_eq!(body, "draining");
            break;
        }
        assert_eq!(status, 200, "{body}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz never said draining"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !shutdown.is_finished(),
        "shutdown did not wait for the accepted publish"
    );
    // Liveness is unaffected.
    let r = http
        .get(readyz.replace("/readyz", "/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    // Releasing the lock lets the publish commit: it is acknowledged, then the session
    // closes with 1001 (not before the ack: the close used to overtake it) and the
    // shutdown completes.
    tx.commit().await.unwrap();
    let ack = client.reply(1).await;
    assert_eq!(ack["op"], "ack", "{ack}");
    let msg_id = ack["msg_id"].as_i64().unwrap();
    match client.try_message("no-such-channel").await {
        Err(Closed::Code(code)) => assert_eq!(code, 1001),
        other => panic!("expected a 1001 close, got {other:?}"),
    }
    tokio::time::timeout(WAIT, shutdown)
        .await
        .expect("shutdown completes")
        .unwrap();
    // The acknowledged message is in the database (pending or applied, never lost).
    let mut conn = sqlx::PgConnection::connect(&db_url).await.unwrap();
    let kept: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM postgame.control WHERE id = $1) \
         OR EXISTS (SELECT 1 FROM postgame.matches WHERE id = $2 AND version > 0)",
    )
    .bind(msg_id)
    .bind(match_id)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert!(kept);
    // And the listener is closed once the drain is over.
    assert!(http.get(&readyz).send().await.is_err());
}
