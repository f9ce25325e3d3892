//! Per-client limits (shared by every connection and gateway of a client) and bad input
//! that stays the sender's problem.

use serde_json::json;

use crate::helpers::{state_field, TestApp, TestDb};
use crate::ledger;

async fn seen(app: &TestApp, id: &str) -> Vec<(String, i64, i64)> {
    state_field(app, id, "seen").await
}

#[tokio::test]
async fn a_clients_publish_burst_is_shared_by_its_connections_on_every_gateway() {
    let (_db, opts) = TestDb::new().await;
    let limited = |c: &mut postgame::config::ServeConfig| {
        c.client_publish_burst = 5.0;
        // Slow enough that nothing refills during the test.
        c.client_publish_rate = 0.001;
    };
    let a = TestApp::spawn_with(opts.clone(), ledger::games(), limited).await;
    let b = TestApp::spawn_with(opts, ledger::games(), limited).await;
    let id = a.create_match(&a.token("setup"), "ledger", json!({})).await;
    let control = format!("control:{id}");
    let mut on_a = a.ws(&a.token("alice")).await;
    let mut on_b = b.ws(&b.token("alice")).await;
    for n in 1..=3 {
        let ack = on_a.publish(&control, "n", json!({"n": n})).await;
        assert_eq!(ack["op"], "ack", "{ack}");
    }
    for n in 4..=5 {
        let ack = on_b.publish(&control, "n", json!({"n": n})).await;
        assert_eq!(ack["op"], "ack", "{ack}");
    }
    let refused = on_b.publish(&control, "n", json!({"n": 6})).await;
    assert_eq!(refused["op"], "error", "{refused}");
    assert_eq!(refused["code"], "rate_limited", "{refused}");
    let refused = on_a.publish(&control, "n", json!({"n": 6})).await;
    assert_eq!(refused["code"], "rate_limited", "{refused}");
    // Over HTTP too, with the contract's status.
    let (status, body) = a
        .post(
            &format!("/v1/channels/{control}/messages"),
            &a.token("alice"),
            &json!({"name": "n", "data": {"n": 6}}),
        )
        .await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["code"], "rate_limited", "{body}");
    // Another client is not affected.
    let mut bob = b.ws(&b.token("bob")).await;
    let ack = bob.publish(&control, "n", json!({"n": 1})).await;
    assert_eq!(ack["op"], "ack", "{ack}");
    // Everything acknowledged is applied, nothing refused is.
    a.wait_until("SELECT NOT EXISTS (SELECT 1 FROM postgame.control)")
        .await;
    let seen = seen(&a, &id).await;
    let alice: Vec<i64> = seen
        .iter()
        .filter(|s| s.0 == "alice")
        .map(|s| s.1)
        .collect();
    assert_eq!(alice, [1, 2, 3, 4, 5]);
    assert_eq!(seen.len(), 6);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_client_may_have_only_so_many_pending_messages_in_a_match() {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn_with(opts, ledger::games(), |c| {
        c.client_pending_max = 3;
        // No worker: what is queued stays pending.
        c.workers = 0;
    })
    .await;
    let first = app.create_match(&app.token("s"), "ledger", json!({})).await;
    let second = app.create_match(&app.token("s"), "ledger", json!({})).await;
    let mut alice = app.ws(&app.token("alice")).await;
    for n in 1..=3 {
        let ack = alice
            .publish(&format!("control:{first}"), "n", json!({"n": n}))
            .await;
        assert_eq!(ack["op"], "ack", "{ack}");
    }
    let refused = alice
        .publish(&format!("control:{first}"), "n", json!({"n": 4}))
        .await;
    assert_eq!(refused["code"], "rate_limited", "{refused}");
    // Another match, another client: their own counts.
    let ack = alice
        .publish(&format!("control:{second}"), "n", json!({"n": 1}))
        .await;
    assert_eq!(ack["op"], "ack", "{ack}");
    let mut bob = app.ws(&app.token("bob")).await;
    let ack = bob
        .publish(&format!("control:{first}"), "n", json!({"n": 1}))
        .await;
    assert_eq!(ack["op"], "ack", "{ack}");
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM postgame.control")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(pending, 5, "exactly the acknowledged messages are queued");
    app.shutdown().await;
}

#[tokio::test]
async fn a_nul_in_a_key_is_a_bad_request_and_its_batch_neighbours_still_commit() {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn_with(opts, ledger::games(), |_| {}).await;
    let id = app.create_match(&app.token("s"), "ledger", json!({})).await;
    let control = format!("control:{id}");
    let mut alice = app.ws(&app.token("alice")).await;
    let mut mallory = app.ws(&app.token("mallory")).await;
    // Alice's publishes are in flight around Mallory's bad one, so they share batches.
    for n in 1..=50 {
        alice
            .send(
                json!({"op": "publish", "id": n, "channel": control, "name": "n",
                         "data": {"n": n}, "key": format!("k{n}")}),
            )
            .await;
        if n == 25 {
            mallory
                .send(
                    json!({"op": "publish", "id": 1, "channel": control, "name": "n",
                             "data": {"n": 1}, "key": "bad\u{0}key"}),
                )
                .await;
        }
    }
    let bad = mallory.reply(1).await;
    assert_eq!(bad["op"], "error", "{bad}");
    assert_eq!(bad["code"], "bad_request", "{bad}");
    for n in 1..=50u64 {
        let ack = alice.reply(n).await;
        assert_eq!(ack["op"], "ack", "{ack}");
    }
    // Over HTTP too.
    let (status, body) = app
        .post(
            &format!("/v1/channels/{control}/messages"),
            &app.token("mallory"),
            &json!({"name": "n", "data": {"n": 2}, "key": "bad\u{0}"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "bad_request", "{body}");
    app.wait_until("SELECT NOT EXISTS (SELECT 1 FROM postgame.control)")
        .await;
    let seen = seen(&app, &id).await;
    assert_eq!(seen.len(), 50);
    assert!(seen.iter().all(|s| s.0 == "alice"));
    app.shutdown().await;
}
