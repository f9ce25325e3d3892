//! Failures: workers killed mid-batch (connections dropped, processes killed), handlers
//! that panic. Nothing acknowledged is lost or applied twice.

use postgame::config::Role;
use serde_json::json;

use crate::concurrency::{check_all, flood};
use crate::helpers::{
    assert_every_match_won_by_x_once, kill_backends, role_process, test_config, x_wins_script,
    TestApp, TestDb,
};
use crate::ledger;

#[tokio::test]
async fn workers_whose_connections_die_mid_batch_lose_and_duplicate_nothing() {
    let (_db, opts) = TestDb::new().await;
    // A gateway without workers takes every publish first…
    let app = TestApp::spawn_with(opts, ledger::games(), |c| c.roles = vec![Role::Gateway]).await;
    let names: Vec<String> = (0..3).map(|i| format!("p{i}")).collect();
    let mut clients = Vec::new();
    for n in &names {
        clients.push(app.ws(&app.token(n)).await);
    }
    let ids = flood(&app, &mut clients).await;
    // …then workers start, and their connections are killed again and again mid-batch.
    let mut config = test_config(&app.db_url);
    config.roles = vec![Role::Worker];
    config.workers = 3;
    config.batch_size = 8;
    let workers = postgame::start(config, ledger::games(), None)
        .await
        .unwrap();
    let killer = tokio::spawn(kill_backends(app.pool.clone(), "postgame worker"));
    let kills = killer.await.unwrap();
    check_all(&app, &ids, &names).await;
    assert!(kills > 0, "the test killed no worker transaction");
    workers.shutdown().await;
    app.shutdown().await;
}

#[tokio::test]
async fn separate_worker_processes_share_the_queue_and_survive_a_kill() {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn_with(opts, postgame::game::Registry::builtin(), |c| {
        c.roles = vec![Role::Gateway]
    })
    .await;
    let mut x = app.ws(&app.token("xavier")).await;
    let mut o = app.ws(&app.token("olga")).await;
    let token = app.token("setup");
    let mut ids = Vec::new();
    for _ in 0..200 {
        ids.push(app.create_match(&token, "tictactoe", json!({})).await);
    }
    // Interleaved across matches: joins, then X 0, O 3, X 1, O 4, X 2 in every match.
    let script = x_wins_script();
    let mut procs = vec![
        role_process(&app.db_url, "worker"),
        role_process(&app.db_url, "worker"),
    ];
    let mut sent = 0u64;
    for (who, name, data) in &script {
        for id in &ids {
            let c = if *who == 0 { &mut x } else { &mut o };
            sent += 1;
            c.send(
                json!({"op": "publish", "id": sent, "channel": format!("control:{id}"),
                          "name": name, "data": data}),
            )
            .await;
        }
        // Acks come after the commit: wait for this round before sending the next, so the
        // moves are in the queue in script order for every match.
        let c = if *who == 0 { &mut x } else { &mut o };
        for _ in 0..ids.len() {
            let ack = c
                .recv_where(|v| v["op"] == "ack" || v["op"] == "error")
                .await;
            assert_eq!(ack["op"], "ack", "{ack}");
        }
    }
    // Kill one worker process (SIGKILL, mid-batch as likely as not) once work is under way.
    app.wait_until("SELECT (SELECT count(*) FROM postgame.control) < 1300")
        .await;
    procs[0].kill().await.unwrap();
    procs.push(role_process(&app.db_url, "worker"));
    app.wait_until("SELECT NOT EXISTS (SELECT 1 FROM postgame.control)")
        .await;
    assert_every_match_won_by_x_once(&app.pool, 200).await;
    for mut p in procs {
        let _ = p.kill().await;
    }
    app.shutdown().await;
}

#[tokio::test]
async fn a_panicking_handler_is_retried_then_dead_lettered_and_the_match_goes_on() {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn_with(opts, ledger::games(), |c| c.max_attempts = 2).await;
    let token = app.token("p0");
    let bad = app.create_match(&token, "ledger", json!({})).await;
    let good = app.create_match(&token, "ledger", json!({})).await;
    let mut p = app.ws(&token).await;
    p.subscribe(&format!("match:{bad}"), None).await;
    p.subscribe(&format!("match:{good}"), None).await;
    p.act(&bad, "boom", json!({})).await;
    p.act(&bad, "n", json!({"n": 1})).await;
    // Another match is not held up by the failing one.
    p.act(&good, "n", json!({"n": 1})).await;
    p.named(&format!("match:{good}"), "n").await;
    // The bad match's next message waits for the failing one, then goes through.
    let m = p.named(&format!("match:{bad}"), "n").await;
    assert_eq!(m["data"]["n"], 1);
    let (attempts, error): (i32, String) =
        sqlx::query_as("SELECT attempts, last_error FROM postgame.control_dead")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(attempts, 2);
    assert!(error.contains("boom on purpose"), "{error}");
    app.shutdown().await;
}
