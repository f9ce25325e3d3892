//! Many workers over many matches: per-match order, no loss, no duplicate.

use serde_json::{json, Value};

use crate::helpers::{Client, TestApp, TestDb};
use crate::ledger;

pub const MATCHES: usize = 200;
pub const PER_CLIENT: i64 = 3;

/// Creates `MATCHES` ledger matches and floods them (see [`publish_interleaved`]).
pub async fn flood(app: &TestApp, clients: &mut [Client]) -> Vec<String> {
    let token = app.token("setup");
    let mut ids = Vec::new();
    for _ in 0..MATCHES {
        ids.push(app.create_match(&token, "ledger", json!({})).await);
    }
    publish_interleaved(clients, &ids, PER_CLIENT).await;
    ids
}

/// Has every client publish `n` = 1..=per_client to every match, interleaved across
/// matches and clients, pipelined (acks collected after), and checks every ack.
pub async fn publish_interleaved(clients: &mut [Client], ids: &[String], per_client: i64) {
    let mut sent = 0u64;
    for n in 1..=per_client {
        for id in ids {
            for c in clients.iter_mut() {
                sent += 1;
                c.send(
                    json!({"op": "publish", "id": sent, "channel": format!("control:{id}"),
                              "name": "n", "data": {"n": n}}),
                )
                .await;
            }
        }
    }
    for c in clients.iter_mut() {
        for _ in 0..(ids.len() as i64 * per_client) {
            let ack = c
                .recv_where(|v| v["op"] == "ack" || v["op"] == "error")
                .await;
            assert_eq!(ack["op"], "ack", "{ack}");
        }
    }
}

pub async fn check_all(app: &TestApp, ids: &[String], clients: &[String]) {
    app.wait_until("SELECT NOT EXISTS (SELECT 1 FROM postgame.control)")
        .await;
    for id in ids {
        let state: Value =
            sqlx::query_scalar("SELECT state FROM postgame.matches WHERE id = $1::uuid")
                .bind(id)
                .fetch_one(&app.pool)
                .await
                .unwrap();
        ledger::check(&state, clients, PER_CLIENT);
    }
    let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM postgame.control_dead")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(dead, 0);
}

#[tokio::test]
async fn several_workers_apply_every_match_in_order_exactly_once() {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn_with(opts, ledger::games(), |c| {
        c.workers = 4;
        c.batch_size = 16;
    })
    .await;
    let names: Vec<String> = (0..4).map(|i| format!("p{i}")).collect();
    let mut clients = Vec::new();
    for n in &names {
        clients.push(app.ws(&app.token(n)).await);
    }
    let ids = flood(&app, &mut clients).await;
    check_all(&app, &ids, &names).await;
    app.shutdown().await;
}

#[tokio::test]
async fn broadcasts_reach_subscribers_in_seq_order_under_load() {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn_with(opts, ledger::games(), |c| c.workers = 3).await;
    let token = app.token("p0");
    let id = app.create_match(&token, "ledger", json!({})).await;
    let channel = format!("match:{id}");
    let mut watcher = app.ws(&app.token("w")).await;
    watcher.subscribe(&channel, None).await;
    let mut p = app.ws(&token).await;
    for n in 1..=300 {
        p.send(
            json!({"op": "publish", "id": n, "channel": format!("control:{id}"),
                      "name": "n", "data": {"n": n}}),
        )
        .await;
    }
    for n in 1..=300 {
        let m = watcher.named(&channel, "n").await;
        assert_eq!(m["data"]["n"], n, "{m}");
    }
    app.shutdown().await;
}
