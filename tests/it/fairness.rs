//! Fairness across matches: one match's backlog never holds back another match.

use serde_json::{json, Value};

use crate::helpers::{migrated_pool, TestApp, TestDb};
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

/// A worker that has just moved a match's head (rows of it remain) holds that head until
/// it commits; a publisher enqueuing to the same match meanwhile must not wait for it: it
/// holds enqueue locks the worker may need next (a deadlock that PostgreSQL broke after a
/// second by failing one of them, under presence churn).
#[tokio::test]
async fn a_publisher_does_not_wait_for_a_worker_settling_the_same_matchs_head() {
    let (_db, opts) = TestDb::new().await;
    let pool = migrated_pool(&opts, 3).await;
    let (info, _) =
        postgame::matches::match_create(&pool, &postgame::game::tictactoe::TicTacToe, &json!({}))
            .await
            .unwrap();
    let m = info.id;
    let enqueue = "INSERT INTO postgame.control (match_id, client_id, name, data)
                   VALUES ($1, 'c', 'chat', '{}')";
    for _ in 0..2 {
        sqlx::query(enqueue).bind(m).execute(&pool).await.unwrap();
    }

    // The worker: claims the head, consumes the first row, settles (the head moves on).
    let mut worker = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM postgame.control_heads WHERE match_id = $1 FOR UPDATE")
        .bind(m)
        .execute(&mut *worker)
        .await
        .unwrap();
    sqlx::query("DELETE FROM postgame.control WHERE id = (SELECT min(id) FROM postgame.control WHERE match_id = $1)")
        .bind(m)
        .execute(&mut *worker)
        .await
        .unwrap();
    sqlx::query("SELECT postgame.control_heads_settle(ARRAY[$1::uuid])")
        .bind(m)
        .execute(&mut *worker)
        .await
        .unwrap();

    // The publisher, under the match's enqueue lock, before the worker commits.
    let mut publisher = pool.begin().await.unwrap();
    sqlx::query("SET LOCAL lock_timeout = '5s'")
        .execute(&mut *publisher)
        .await
        .unwrap();
    sqlx::query("SELECT postgame.lock_enqueue($1)")
        .bind(m)
        .execute(&mut *publisher)
        .await
        .unwrap();
    let inserted = sqlx::query(enqueue).bind(m).execute(&mut *publisher).await;
    assert!(
        inserted.is_ok(),
        "the publisher waited for the worker: {inserted:?}"
    );
    publisher.commit().await.unwrap();
    worker.commit().await.unwrap();

    // The head is the oldest remaining message; both remaining messages are there.
    let (head, oldest, left): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT head FROM postgame.control_heads WHERE match_id = $1),
                (SELECT min(id) FROM postgame.control WHERE match_id = $1),
                (SELECT count(*) FROM postgame.control WHERE match_id = $1)",
    )
    .bind(m)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((head, left), (oldest, 2));
}
