//! Postgres itself failing, on a private cluster (tests/it/cluster.rs): `/readyz` while it
//! is down, and `latest` versions across a crash.

use std::sync::Arc;
use std::time::{Duration, Instant};

use postgame::broadcast::{latest_write, NewMessage};
use postgame::config::Role;
use postgame::game::Registry;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;

use crate::cluster::Cluster;
use crate::helpers::{test_config, WAIT};

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
