//! Leases (#11.1): a worker or ticker frozen (SIGSTOP) in the middle of a transaction
//! loses its session after the lease (`idle_in_transaction_session_timeout`), its matches
//! go on in another process, and when it wakes (SIGCONT) its stale transaction cannot
//! commit: nothing is applied twice.

use std::time::{Duration, Instant};

use postgame::config::Role;
use postgame::game::Registry;
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::{
    assert_every_match_won_by_x_once, role_process_with, x_wins_script, TestApp, TestDb, WAIT,
};

/// The lease the role processes of these tests run with.
const LEASE: &str = "2";

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .expect("kill runs")
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

/// Freezes the process `pid` (SIGSTOP) at a moment when one of its transactions is open
/// with matches locked (its backend, named `app`, is `idle in transaction` and stays so
/// while the process is stopped). Returns that backend's pid.
async fn freeze_mid_transaction(pool: &PgPool, pid: u32, app: &str) -> i32 {
    let deadline = Instant::now() + WAIT * 4;
    loop {
        assert!(
            Instant::now() < deadline,
            "never caught {app} inside a transaction"
        );
        // A transaction that has loaded its matches (locked them), so it holds claimed
        // work: one caught between two statements of its claim may hold nothing yet.
        let open: Option<i32> = sqlx::query_scalar(
            "SELECT a.pid FROM pg_stat_activity a WHERE a.datname = current_database()
               AND a.application_name = $1 AND a.state = 'idle in transaction'
               AND EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid
                           AND l.relation = 'postgame.matches'::regclass)
             LIMIT 1",
        )
        .bind(app)
        .fetch_optional(pool)
        .await
        .unwrap();
        let Some(backend) = open else {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        };
        signal(pid, "STOP");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let frozen: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1
               AND state = 'idle in transaction' AND state_change < now() - interval '250 ms')",
        )
        .bind(backend)
        .fetch_one(pool)
        .await
        .unwrap();
        if frozen {
            return backend;
        }
        signal(pid, "CONT");
    }
}

async fn backend_alive(pool: &PgPool, backend: i32) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)")
        .bind(backend)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_frozen_worker_loses_its_lease_and_its_late_commit_applies_nothing() {
    let (_db, opts) = TestDb::new().await;
    let app =
        TestApp::spawn_with(opts, Registry::builtin(), |c| c.roles = vec![Role::Gateway]).await;
    let mut x = app.ws(&app.token("xavier")).await;
    let mut o = app.ws(&app.token("olga")).await;
    let token = app.token("setup");
    let mut ids = Vec::new();
    for _ in 0..150 {
        ids.push(app.create_match(&token, "tictactoe", json!({})).await);
    }
    // Every match: joins, then X 0, O 3, X 1, O 4, X 2 (X wins), all queued before any
    // worker runs, in script order per match.
    let script = x_wins_script();
    for (who, name, data) in &script {
        let c = if *who == 0 { &mut x } else { &mut o };
        for id in &ids {
            c.act(id, name, data.clone()).await;
        }
    }

    let env = [("POSTGAME_LEASE_SECONDS", LEASE)];
    let mut frozen = role_process_with(&app.db_url, "worker", &env);
    let pid = frozen.id().unwrap();
    let backend = freeze_mid_transaction(&app.pool, pid, "postgame worker").await;
    let frozen_at = Instant::now();
    let mut other = role_process_with(&app.db_url, "worker", &env);
    // The frozen worker's claimed rows are released when its lease ends: the other worker
    // applies everything, including them.
    app.wait_until("SELECT NOT EXISTS (SELECT 1 FROM postgame.control)")
        .await;
    let took = frozen_at.elapsed();
    eprintln!("queue drained {took:?} after the freeze (lease {LEASE} s)");
    assert!(
        !backend_alive(&app.pool, backend).await,
        "Postgres ended the frozen worker's session"
    );
    assert!(
        took >= Duration::from_secs(1),
        "the frozen rows waited for the lease"
    );

    // Wake the frozen worker: its transaction is gone, so it commits nothing; it
    // reconnects and keeps working.
    signal(pid, "CONT");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        frozen.try_wait().unwrap().is_none(),
        "the woken worker lives on"
    );
    assert_every_match_won_by_x_once(&app.pool, ids.len()).await;
    // The woken worker still works: a new match's join is applied.
    let late = app.create_match(&token, "tictactoe", json!({})).await;
    let _ = other.kill().await;
    x.act(&late, "join", json!({})).await;
    app.wait_until("SELECT NOT EXISTS (SELECT 1 FROM postgame.control)")
        .await;
    let _ = frozen.kill().await;
    app.shutdown().await;
}

#[tokio::test]
async fn a_frozen_ticker_loses_its_lease_and_its_matches_keep_ticking() {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn_with(opts, Registry::builtin(), |c| {
        c.roles = vec![Role::Gateway, Role::Worker]
    })
    .await;
    let mut p = app.ws(&app.token("paula")).await;
    let mut ids = Vec::new();
    for _ in 0..20 {
        let id = app
            .create_match(
                &app.token("paula"),
                "pong",
                json!({"bot": true, "points_to_win": 21}),
            )
            .await;
        p.act(&id, "join", json!({})).await;
        ids.push(id);
    }
    app.wait_until("SELECT count(*) = 20 FROM postgame.matches WHERE status = 'playing'")
        .await;

    let env = [("POSTGAME_LEASE_SECONDS", LEASE)];
    let mut frozen = role_process_with(&app.db_url, "ticker", &env);
    let pid = frozen.id().unwrap();
    let backend = freeze_mid_transaction(&app.pool, pid, "postgame ticker").await;
    let frozen_at = Instant::now();
    // The matches the frozen ticker holds are the ones that do not move while nothing
    // else runs.
    let ticks = "SELECT coalesce(array_agg((state->>'tick')::int8 ORDER BY id), '{}')
                 FROM postgame.matches";
    let before: Vec<i64> = sqlx::query_scalar(ticks)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let mut other = role_process_with(&app.db_url, "ticker", &env);
    // Every match, the frozen ticker's included, goes on a second (20 ticks) past where
    // it stood at the freeze.
    let deadline = Instant::now() + WAIT * 2;
    loop {
        let now: Vec<i64> = sqlx::query_scalar(ticks)
            .fetch_one(&app.pool)
            .await
            .unwrap();
        if now.iter().zip(&before).all(|(n, b)| *n >= b + 20) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "matches stalled behind the frozen ticker: {before:?} → {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "every match moved on {:?} after the freeze (lease {LEASE} s)",
        frozen_at.elapsed()
    );
    assert!(
        !backend_alive(&app.pool, backend).await,
        "Postgres ended the frozen ticker's session"
    );

    // Wake it: its stale batch cannot commit (the session is gone); the two tickers share
    // the matches again and each match's version keeps matching its tick count.
    signal(pid, "CONT");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        frozen.try_wait().unwrap().is_none(),
        "the woken ticker lives on"
    );
    let _ = other.kill().await;
    let before: Vec<i64> = sqlx::query_scalar(ticks)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT * 2;
    loop {
        let now: Vec<i64> = sqlx::query_scalar(ticks)
            .fetch_one(&app.pool)
            .await
            .unwrap();
        if now.iter().zip(&before).all(|(n, b)| *n >= b + 20) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the woken ticker does not tick: {before:?} → {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = frozen.kill().await;
    app.shutdown().await;
}

#[tokio::test]
async fn a_tick_that_overruns_the_handler_time_limit_fails_and_the_other_matches_go_on() {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn_with(opts, crate::clock::clockgames::games(), |c| {
        c.tickers = 1;
    })
    .await;
    let token = app.token("setup");
    let stuck = app
        .create_match(&token, "metronome", json!({"hz": 10, "hang": true}))
        .await;
    let mut others = Vec::new();
    for _ in 0..5 {
        others.push(
            app.create_match(&token, "metronome", json!({"hz": 10}))
                .await,
        );
    }
    // The stuck match's ticks fail on the time limit (1 s) and are pushed back; the other
    // matches, in the same batches, keep beating.
    app.wait_until(&format!(
        "SELECT (SELECT tick_failures >= 2 FROM postgame.matches WHERE id = '{stuck}')
            AND (SELECT bool_and(version >= 20) FROM postgame.matches WHERE id <> '{stuck}')"
    ))
    .await;
    let (version, error): (i64, Option<String>) =
        sqlx::query_as("SELECT version, last_tick_error FROM postgame.matches WHERE id = $1::uuid")
            .bind(&stuck)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(version, 0, "an overrunning tick changes nothing");
    let error = error.unwrap_or_default();
    assert!(error.contains("handler time limit"), "{error}");
    app.shutdown().await;
}
