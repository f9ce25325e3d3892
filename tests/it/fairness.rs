//! Fairness across matches: one match's backlog never holds back another match.

use serde_json::{json, Value};

use crate::helpers::{TestApp, TestDb};
use crate::ledger;

/// Messages queued for the flooded match.
const FLOOD: i64 = 3000;

#[tokio::test]
async fn a_flooded_match_does_not_delay_another_matchs_move() {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn_with(opts, ledger::games(), |_| {}).await;
    let flooded = app
        .create_match(&app.token("setup"), "ledger", json!({}))
        .await;
    let other = app
        .create_match(&app.token("setup"), "ledger", json!({}))
        .await;
    let mut bob = app.ws(&app.token("bob")).await;

    // What a client flooding a match leaves in the queue, all there at once: thousands of
    // acknowledged messages, older than anything another match publishes next.
    sqlx::query(
        "INSERT INTO postgame.control (match_id, client_id, name, data)
         SELECT $1::uuid, 'flooder', 'n', jsonb_build_object('n', n)
         FROM generate_series(1, $2::int8) AS n ORDER BY n",
    )
    .bind(&flooded)
    .bind(FLOOD)
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query("SELECT pg_notify('postgame_control', '')")
        .execute(&app.pool)
        .await
        .unwrap();

    // Another match's move, published behind the whole flood.
    let ack = bob
        .publish(&format!("control:{other}"), "n", json!({"n": 1}))
        .await;
    assert_eq!(ack["op"], "ack", "{ack}");
    app.wait_until(&format!(
        "SELECT jsonb_array_length(state->'seen') = 1 FROM postgame.matches WHERE id = '{other}'"
    ))
    .await;
    // It was applied while the flood was still being drained, not after it.
    let left: i64 =
        sqlx::query_scalar("SELECT count(*) FROM postgame.control WHERE match_id = $1::uuid")
            .bind(&flooded)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(left > 0, "the other match waited for the whole flood");

    // The flood itself is applied in order, exactly once.
    app.wait_until("SELECT NOT EXISTS (SELECT 1 FROM postgame.control)")
        .await;
    let state: Value = sqlx::query_scalar("SELECT state FROM postgame.matches WHERE id = $1::uuid")
        .bind(&flooded)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    ledger::check(&state, &["flooder".to_owned()], FLOOD);
    let heads: i64 = sqlx::query_scalar("SELECT count(*) FROM postgame.control_heads")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(heads, 0, "a head outlived its match's messages");
    app.shutdown().await;
}
