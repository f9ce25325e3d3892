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
use crate::helpers::{
    publisher_on, sleeping_commit, slow_commits, test_config, TestApp, SECRET, WAIT,
};

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
    // Timeouts of a few seconds, not less: after the restart the gateway must reconnect
    // and heartbeat within one, on a machine that may be loaded.
    config.presence_timeout_seconds = 5.0;
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
    tokio::time::sleep(Duration::from_secs(10)).await;
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
        swept += postgame::presence::presence_sweep(&pool, Duration::from_secs(5))
            .await
            .unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(swept, 0, "connections disconnected after the restart");
    // Past the timeout again, with the server's own sweep every second: still connected.
    tokio::time::sleep(Duration::from_secs(6)).await;
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

/// A publish batch whose COMMIT is cut by a crash of Postgres, before its WAL reached the
/// disk: it is lost, and after the restart its xid is handed out again. The publisher
/// must not take the xid's new owner's commit for its own (it used to ask `txid_status`:
/// the lost publish was acknowledged, and the later publishes of its connection were
/// committed ahead of it, as chaos runs found).
#[tokio::test]
async fn a_publish_lost_in_a_crash_during_its_commit_is_refused_and_not_overtaken() {
    use postgame::ids::{Channel, ClientId};
    use postgame::queue::publisher::{PublishError, PublishRequest};

    let cluster = Arc::new(tokio::task::spawn_blocking(Cluster::start).await.unwrap());
    let url = cluster.url("postgres");
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await
        .unwrap();
    postgame::store::migrate(&pool).await.unwrap();
    // No standby snapshots: the background writer's running-xacts record, every 15 s,
    // gets the WAL written out (and the batch's xid kept) if it falls in the window.
    for sql in [
        "ALTER SYSTEM SET wal_level = minimal",
        "ALTER SYSTEM SET max_wal_senders = 0",
    ] {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    let c = Arc::clone(&cluster);
    tokio::task::spawn_blocking(move || {
        c.crash();
        c.resume();
    })
    .await
    .unwrap();
    let games = Registry::builtin();
    let (m, _) = postgame::matches::match_create(
        &pool,
        games.get("tictactoe").unwrap().as_ref(),
        &json!({}),
    )
    .await
    .unwrap();
    let control = format!("control:{}", m.id);
    // The COMMIT of a `slow` message sleeps after its rows were written (in WAL buffers
    // only), so the crash can cut it there.
    slow_commits(&pool).await;
    let (publisher, tracker, stop) = publisher_on(&pool);
    let req = |name: &str, n: i64| PublishRequest {
        client: Some(ClientId::parse("alice").unwrap()),
        channel: Channel::parse(&control).unwrap(),
        name: name.to_owned(),
        data: json!({ "n": n }),
        key: Some(format!("k{n}")),
    };
    // A first batch, committed: the pages the next one writes are then dirty already, so
    // its WAL carries no full-page image that would fill (and get written out) a page.
    assert!(publisher.publish(7, req("chat", 0)).await.is_ok());
    // The next batch's WAL starts a fresh page, which nothing writes out before the crash.
    sqlx::query("SELECT pg_switch_wal()")
        .execute(&pool)
        .await
        .unwrap();
    let first = publisher.submit(7, req("slow", 1)).await;
    let (_, xid) = sleeping_commit(&pool).await;
    // The connection's later publishes, in flight behind the first one.
    let later = [
        publisher.submit(7, req("chat", 2)).await,
        publisher.submit(7, req("chat", 3)).await,
    ];

    let c = Arc::clone(&cluster);
    tokio::task::spawn_blocking(move || c.crash())
        .await
        .unwrap();
    let c = Arc::clone(&cluster);
    tokio::task::spawn_blocking(move || c.resume())
        .await
        .unwrap();
    // The scenario itself: the batch's WAL never reached the disk, so recovery ended with
    // its xid not yet handed out (the end-of-recovery checkpoint records the next one).
    let next: i64 = sqlx::query_scalar(
        "SELECT split_part(next_xid, ':', 2)::int8 FROM pg_control_checkpoint()",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        next <= xid,
        "the batch's xid {xid} survived the crash (next xid {next}): nothing to test"
    );
    // Other transactions take xids until the lost batch's is handed out again (and
    // committed), as a busy server's would.
    while sqlx::query_scalar::<_, i64>("SELECT txid_current()")
        .fetch_one(&pool)
        .await
        .unwrap()
        <= xid
    {}

    let first = first.await;
    let mut results = vec![first];
    for r in later {
        results.push(r.await);
    }
    let stored: Vec<i64> = sqlx::query_scalar(
        "SELECT (data->>'n')::int8 FROM postgame.control WHERE name <> 'chat' OR (data->>'n')::int8 > 0 ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let acked: Vec<i64> = (1..=3)
        .filter(|n| results[(*n - 1) as usize].is_ok())
        .collect();
    assert!(
        matches!(results[0], Err(PublishError::Internal)),
        "the publish lost in the crash was answered {:?} (stored: {stored:?})",
        results[0]
    );
    assert_eq!(
        acked, stored,
        "every acknowledged publish is stored, and only those: {results:?}"
    );
    assert!(
        stored.is_empty(),
        "a later publish of the connection was committed ahead of the refused one: {stored:?}"
    );
    stop.cancel();
    tracker.close();
    tracker.wait().await;
    pool.close().await;
}
