//! Exactly-once through ambiguous commits: a publish whose COMMIT fails on the wire is
//! never written twice, and a refused publish is never overtaken by the later publishes of
//! its connection that were already in flight.

use serde_json::json;

use crate::helpers::{
    publisher_on, sleeping_commit, slow_commits, state_field, Closed, TestApp, TestDb,
};
use crate::ledger;

async fn seen(app: &TestApp, id: &str) -> Vec<(String, i64, i64)> {
    state_field(app, id, "seen").await
}

#[tokio::test]
async fn a_commit_whose_reply_is_lost_is_acked_once_and_applied_once() {
    reply_lost(false).await;
}

#[tokio::test]
async fn a_commit_whose_reply_is_lost_is_acked_once_and_applied_once_with_the_fast_apply() {
    reply_lost(true).await;
}

async fn reply_lost(fast: bool) {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn_with(opts, ledger::games(), |c| c.fast_apply = fast).await;
    let id = app.create_match(&app.token("s"), "ledger", json!({})).await;
    let control = format!("control:{id}");
    // The server commits, then the reply to COMMIT is lost (as when the connection drops
    // right after the commit record): the publisher must find out that it committed.
    postgame::queue::publisher::test_lose_commit_reply(&control);
    let mut alice = app.ws(&app.token("alice")).await;
    let ack = alice.publish(&control, "n", json!({"n": 1})).await;
    assert_eq!(ack["op"], "ack", "{ack}");
    assert!(
        !postgame::queue::publisher::test_lose_commit_reply_pending(),
        "the hook was not reached"
    );
    let ack2 = alice.publish(&control, "n", json!({"n": 2})).await;
    assert_eq!(ack2["op"], "ack", "{ack2}");
    app.wait_until("SELECT NOT EXISTS (SELECT 1 FROM postgame.control)")
        .await;
    let ns: Vec<i64> = seen(&app, &id).await.iter().map(|s| s.1).collect();
    assert_eq!(ns, [1, 2], "applied once each, in order");
    app.shutdown().await;
}

#[tokio::test]
async fn a_backend_terminated_during_commit_writes_nothing_and_later_publishes_do_not_overtake() {
    terminated_during_commit(false).await;
}

/// The fast apply deletes the row it applied before the COMMIT, but the deferred trigger
/// still fires in that COMMIT; a COMMIT that fails is never written again without it.
#[tokio::test]
async fn a_backend_terminated_during_a_fast_apply_commit_writes_nothing_and_nothing_overtakes() {
    terminated_during_commit(true).await;
}

async fn terminated_during_commit(fast: bool) {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn_with(opts, ledger::games(), |c| c.fast_apply = fast).await;
    let id = app.create_match(&app.token("s"), "ledger", json!({})).await;
    let control = format!("control:{id}");
    // The COMMIT of a message named `slow` sleeps, so the test can terminate the
    // publisher's backend exactly then.
    slow_commits(&app.pool).await;
    let mut alice = app.ws(&app.token("alice")).await;
    alice
        .send(
            json!({"op": "publish", "id": 1, "channel": control, "name": "slow",
                     "data": {"n": 1}}),
        )
        .await;
    // Wait until that COMMIT sleeps, then publish more on the same connection: they are
    // in flight behind the first one.
    let (pid, _) = sleeping_commit(&app.pool).await;
    for n in 2..=3 {
        alice
            .send(
                json!({"op": "publish", "id": n, "channel": control, "name": "n",
                         "data": {"n": n}}),
            )
            .await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(killed);
    for n in 1..=3u64 {
        let r = alice.reply(n).await;
        assert_eq!(r["op"], "error", "publish {n}: {r}");
        assert_eq!(r["code"], "internal", "publish {n}: {r}");
    }
    // The connection refuses every later publish too, so it is closed: the client
    // reconnects and resends.
    assert!(
        matches!(alice.closed().await, Closed::Code(1011)),
        "closed with 1011"
    );
    let mut alice = app.ws(&app.token("alice")).await;
    // Nothing of the refused publishes was written, so resending restores the order.
    let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM postgame.control")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(queued, 0);
    sqlx::query("DROP TRIGGER slow_commit ON postgame.control")
        .execute(&app.pool)
        .await
        .unwrap();
    for n in 1..=3 {
        let ack = alice
            .publish(&control, if n == 1 { "slow" } else { "n" }, json!({"n": n}))
            .await;
        assert_eq!(ack["op"], "ack", "{ack}");
    }
    app.wait_until("SELECT NOT EXISTS (SELECT 1 FROM postgame.control)")
        .await;
    let ns: Vec<i64> = seen(&app, &id).await.iter().map(|s| s.1).collect();
    assert_eq!(
        ns,
        [1, 2, 3],
        "applied once each, in the connection's order"
    );
    app.shutdown().await;
}

/// A publish that reaches the server after an earlier publish of its connection was
/// refused with `internal` (a pipelining client cannot know yet) is refused too: were it
/// committed, the client's resend of the refused one would come after it. Before, only the
/// publishes already taken in by then were refused.
#[tokio::test]
async fn a_publish_arriving_after_its_connections_refusal_is_refused_too() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use postgame::ids::{Channel, ClientId};
    use postgame::queue::publisher::{PublishError, PublishRequest};

    let (_db, opts) = TestDb::new().await;
    let pool = crate::helpers::migrated_pool(&opts, 4).await;
    let games = postgame::game::Registry::builtin();
    let (m, _) = postgame::matches::match_create(
        &pool,
        games.get("tictactoe").unwrap().as_ref(),
        &json!({}),
    )
    .await
    .unwrap();
    let control = format!("control:{}", m.id);
    slow_commits(&pool).await;
    let (publisher, tracker, stop) = publisher_on(&pool);
    let req = |name: &str, n: i64| PublishRequest {
        client: Some(ClientId::parse("alice").unwrap()),
        channel: Channel::parse(&control).unwrap(),
        name: name.to_owned(),
        data: json!({ "n": n }),
        key: None,
    };
    let fence = Arc::new(AtomicBool::new(false));
    let first = publisher
        .submit_fenced(7, req("slow", 1), Arc::clone(&fence))
        .await;
    let (pid, _) = sleeping_commit(&pool).await;
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .execute(&pool)
        .await
        .unwrap();
    assert!(matches!(first.await, Err(PublishError::Internal)));
    assert!(
        fence.load(Ordering::SeqCst),
        "the connection's fence is set"
    );
    // The next publish of the connection, read after the refusal.
    let second = publisher
        .publish_fenced(7, req("chat", 2), Arc::clone(&fence))
        .await;
    assert!(
        matches!(second, Err(PublishError::Internal)),
        "a later publish of the refused connection was answered {second:?}"
    );
    // Another connection publishes as usual.
    let other = publisher.publish(8, req("chat", 3)).await;
    assert!(other.is_ok(), "{other:?}");
    let stored: Vec<i64> =
        sqlx::query_scalar("SELECT (data->>'n')::int8 FROM postgame.control ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(stored, [3]);
    stop.cancel();
    tracker.close();
    tracker.wait().await;
    pool.close().await;
}
