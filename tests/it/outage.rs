//! Postgres itself failing, on a private cluster (tests/it/cluster.rs): `/readyz` while it
//! is down, `latest` versions across a crash, and presence across an outage.

use std::sync::Arc;
use std::time::{Duration, Instant};

use postgame::broadcast::{latest_write, NewMessage};
use postgame::config::Role;
use postgame::game::Registry;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;

use crate::cluster::Cluster;
use crate::helpers::{test_config, TestApp, SECRET, WAIT};

/// GET /readyz: the status, or `None` when no answer came within `limit`.
async fn readyz(
    http: &reqwest::Client,
    addr: std::net::SocketAddr,
    limit: Duration,
) -> Option<u16> {
    match http
        .get(format!("http://{addr}/readyz"))
        .timeout(limit)
        .send()
        .await
    {
        Ok(r) => Some(r.status().as_u16()),
        Err(e) if e.is_timeout() => None,
        Err(e) => panic!("/readyz: {e}"),
    }
}

#[tokio::test]
async fn readyz_answers_at_once_while_postgres_is_down_and_recovers() {
    let cluster = Arc::new(tokio::task::spawn_blocking(Cluster::start).await.unwrap());
    let mut config = test_config(&cluster.url("postgres"));
    config.roles = vec![Role::Gateway];
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = postgame::start(config, Registry::builtin(), Some(listener))
        .await
        .expect("server starts on the private cluster");
    let addr = server.addr.unwrap();
    let http = reqwest::Client::new();
    assert_eq!(readyz(&http, addr, WAIT).await, Some(200));

    let c = Arc::clone(&cluster);
    tokio::task::spawn_blocking(move || c.crash())
        .await
        .unwrap();
    // Several times: the first requests find dead pooled connections, the later ones a
    // pool that cannot connect at all; every one is answered, with 503, well before the
    // pool's 10 s acquire timeout (the promise is 1 s; 3 s leaves room for a loaded
    // machine).
    for _ in 0..3 {
        let started = Instant::now();
        let status = readyz(&http, addr, Duration::from_secs(3)).await;
        assert_eq!(status, Some(503), "after {:?}", started.elapsed());
        eprintln!("/readyz with Postgres down: 503 in {:?}", started.elapsed());
    }

    cluster.resume();
    let deadline = Instant::now() + WAIT;
    while readyz(&http, addr, WAIT).await != Some(200) {
        assert!(
            Instant::now() < deadline,
            "/readyz never became ready again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.shutdown().await;
}

#[tokio::test]
async fn latest_versions_never_go_back_after_a_postgres_crash() {
    let cluster = Arc::new(tokio::task::spawn_blocking(Cluster::start).await.unwrap());
    let url = cluster.url("postgres");
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await
        .unwrap();
    postgame::store::migrate(&pool).await.unwrap();

    // A game loop's writes: asynchronously committed latest values (as the ticker's
    // batches that log nothing), as fast as they go, until Postgres crashes under them.
    let write = |pool: sqlx::PgPool, i: i64| async move {
        let mut tx = pool.begin().await?;
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await?;
        let v = latest_write(
            &mut tx,
            vec![NewMessage {
                channel: "match:x".into(),
                name: "state".into(),
                data: json!({ "i": i }),
            }],
        )
        .await?;
        tx.commit().await?;
        Ok::<i64, sqlx::Error>(v[0].1)
    };
    let writer = tokio::spawn({
        let pool = pool.clone();
        async move {
            let mut seen = 0i64;
            for i in 0.. {
                match write(pool.clone(), i).await {
                    Ok(v) => seen = seen.max(v),
                    Err(_) => return seen,
                }
            }
            seen
        }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let c = Arc::clone(&cluster);
    tokio::task::spawn_blocking(move || c.crash())
        .await
        .unwrap();
    let seen = writer.await.unwrap();
    assert!(seen > 0, "nothing was written before the crash");
    cluster.resume();
    pool.close().await;

    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await
        .unwrap();
    let after = write(pool.clone(), -1).await.unwrap();
    assert!(
        after > seen,
        "a version acknowledged before the crash was {seen}, the first after it is {after}"
    );
    eprintln!("latest version: {seen} before the crash, {after} after");
    pool.close().await;
}

/// Polls `sql` (a scalar bool) on `pool` until true, through connection errors (Postgres
/// restarting); panics after `WAIT`.
async fn poll_until(pool: &sqlx::PgPool, sql: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(true) = sqlx::query_scalar::<_, bool>(sql).fetch_one(pool).await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {sql}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_postgres_outage_longer_than_the_presence_timeout_disconnects_no_one() {
    let cluster = Arc::new(tokio::task::spawn_blocking(Cluster::start).await.unwrap());
    let url = cluster.url("postgres");
    let mut config = test_config(&url);
    config.presence_timeout_seconds = 2.0;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = postgame::start(config, Registry::builtin(), Some(listener))
        .await
        .expect("server starts on the private cluster");
    let addr = server.addr.unwrap();
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await
        .unwrap();
    let token = |sub: &str| {
        postgame::gateway::auth::Auth::new(SECRET)
            .issue(sub, None, None, chrono::Duration::hours(1))
            .0
    };
    let created: serde_json::Value = reqwest::Client::new()
        .post(format!("http://{addr}/v1/matches"))
        .bearer_auth(token("xena"))
        .json(&json!({"game": "tictactoe",
            "config": {"reconnect_seconds": 3600, "turn_seconds": 3600}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let mut players = Vec::new();
    for who in ["xena", "otto"] {
        let mut c = TestApp::ws_at(addr, &token(who)).await;
        c.subscribe(&format!("match:{id}"), None).await;
        c.act(&id, "join", json!({})).await;
        players.push(c);
    }
    let both_connected = format!(
        "SELECT status = 'playing' AND view->'connected' = '{{\"X\": true, \"O\": true}}'
           AND (SELECT count(*) = 2 FROM postgame.presence)
         FROM postgame.matches WHERE id = '{id}'"
    );
    poll_until(&pool, &both_connected).await;
    let before: i64 = sqlx::query_scalar(&format!(
        "SELECT max(seq) FROM postgame.messages WHERE channel = 'match:{id}'"
    ))
    .fetch_one(&pool)
    .await
    .unwrap();

    // Down for twice the presence timeout: no gateway heartbeats meanwhile.
    let c = Arc::clone(&cluster);
    tokio::task::spawn_blocking(move || c.crash())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let c = Arc::clone(&cluster);
    tokio::task::spawn_blocking(move || c.resume())
        .await
        .unwrap();
    // Another process sweeping right after the restart, before the gateway's first
    // heartbeat, as one of many processes would: it finds the gateway silent for the whole
    // outage, but the outage does not count (before, it disconnected everyone here).
    let restarted = Instant::now();
    let mut swept = 0;
    while restarted.elapsed() < Duration::from_millis(1500) {
        swept += postgame::presence::presence_sweep(&pool, Duration::from_secs(2))
            .await
            .unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(swept, 0, "connections disconnected after the restart");
    // Past the timeout again, with the server's own sweep every second: still connected.
    tokio::time::sleep(Duration::from_secs(3)).await;
    poll_until(&pool, &both_connected).await;
    for (n, p) in players.iter_mut().enumerate() {
        let ping = 1000 + n as u64;
        p.send(json!({"op": "ping", "id": ping})).await;
        assert_eq!(
            p.reply(ping).await["op"],
            "pong",
            "the connection is still open"
        );
    }
    // Not even for a moment: no state broadcast since shows a player disconnected.
    let dropped: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT seq || ' ' || data::text FROM postgame.messages
          WHERE channel = 'match:{id}' AND name = 'state' AND seq > {before}
            AND 'false' IN (data->'connected'->>'X', data->'connected'->>'O')"
    ))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(
        dropped.is_empty(),
        "a player was shown disconnected: {dropped:#?}"
    );
    drop(players);
    server.shutdown().await;
}
