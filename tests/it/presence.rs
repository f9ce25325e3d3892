//! Presence that survives the crash of a gateway (#11.2): a gateway process killed with
//! SIGKILL never sends its players' `$disconnected`; another process's sweep does, within
//! the presence timeout, and a Tic Tac Toe player who never returns forfeits.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::{TestApp, TestDb, SECRET, WAIT};

#[tokio::test]
async fn a_killed_gateways_players_are_disconnected_and_one_who_never_returns_forfeits() {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn_with(opts, postgame::game::Registry::builtin(), |c| {
        c.presence_timeout_seconds = 2.0
    })
    .await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut gateway = tokio::process::Command::new(env!("CARGO_BIN_EXE_postgame"))
        .args(["serve", "--role", "gateway", "--listen", &addr.to_string()])
        .args(["--database-url", &app.db_url])
        .env("POSTGAME_SECRET", SECRET)
        .env("POSTGAME_PRESENCE_TIMEOUT_SECONDS", "2")
        .env("POSTGAME_DB_CONNECTIONS", "4")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the postgame binary starts");
    let deadline = Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the gateway process never listened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (tx, to) = (app.token("xena"), app.token("otto"));
    let id = app
        .create_match(
            &tx,
            "tictactoe",
            json!({"reconnect_seconds": 1, "turn_seconds": 3600}),
        )
        .await;
    let channel = format!("match:{id}");
    let mut x = app.ws(&tx).await;
    x.subscribe(&channel, None).await;
    x.act(&id, "join", json!({})).await;
    // Otto plays through the gateway process.
    let mut o = TestApp::ws_at(addr, &to).await;
    o.subscribe(&channel, None).await;
    o.act(&id, "join", json!({})).await;
    app.wait_until(&format!(
        "SELECT status = 'playing' AND (SELECT count(*) = 2 FROM postgame.presence)
         FROM postgame.matches WHERE id = '{id}'"
    ))
    .await;

    gateway.kill().await.unwrap();
    let killed = Instant::now();
    // Otto's connection is recorded for the dead gateway until another process's sweep
    // turns it into `$disconnected`; after the 1 s reconnect grace he forfeits.
    app.wait_until(&format!(
        "SELECT status = 'won' AND state->>'winner' = 'X' FROM postgame.matches WHERE id = '{id}'"
    ))
    .await;
    eprintln!(
        "the killed gateway's player forfeited {:?} after the kill (presence timeout 2 s, \
         reconnect grace 1 s)",
        killed.elapsed()
    );
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM postgame.presence")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(left, 1, "only Xena's connection is still recorded");
    let gateways: i64 = sqlx::query_scalar("SELECT count(*) FROM postgame.gateways")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        gateways, 1,
        "the dead gateway was removed, the live one stays"
    );
    drop(x);
    app.shutdown().await;
}
