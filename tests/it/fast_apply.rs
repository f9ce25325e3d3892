//! The fast apply (`--fast-apply`, issue 13.1): a control message of a free match is applied
//! in the gateway's publishing transaction, so it is already applied when its ack arrives;
//! a match held by a worker, or with earlier messages still queued or held for a retry,
//! goes through the queue, in order; handler failures there behave as on the worker path.
//!
//! Which path applied a message is observed without timing: most tests run a gateway with
//! no worker at all, where only the fast apply can have applied a message by the time its
//! ack arrives, and a worker-only server is started afterwards to drain what was queued.

use postgame::config::{Role, ServeConfig};
use postgame::game::Registry;
use serde_json::{json, Value};

use crate::concurrency::{check_all, flood};
use crate::handler_limit::Hanger;
use crate::helpers::{state_field, test_config, TestApp, TestDb};
use crate::ledger;

type Seen = Vec<(String, i64, i64)>;

async fn seen(app: &TestApp, id: &str) -> Vec<i64> {
    let seen: Seen = state_field(app, id, "seen").await;
    seen.into_iter().map(|s| s.1).collect()
}

async fn queued(app: &TestApp, id: &str) -> Vec<i64> {
    sqlx::query_scalar("SELECT id FROM postgame.control WHERE match_id = $1::uuid ORDER BY id")
        .bind(id)
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

/// A gateway (with the fast apply as given) and no worker: whatever is applied by the
/// time a publish is acknowledged was applied in the publishing transaction.
async fn gateway_only(
    opts: sqlx::postgres::PgConnectOptions,
    games: Registry,
    fast: bool,
    tweak: impl FnOnce(&mut ServeConfig),
) -> TestApp {
    TestApp::spawn_with(opts, games, |c| {
        c.workers = 0;
        c.fast_apply = fast;
        tweak(c);
    })
    .await
}

/// Starts a worker-only server on the test's database.
async fn worker_server(app: &TestApp, games: Registry) -> postgame::Server {
    let mut config = test_config(&app.db_url);
    config.roles = vec![Role::Worker];
    config.workers = 1;
    postgame::start(config, games, None)
        .await
        .expect("worker starts")
}

#[tokio::test]
async fn a_move_on_a_free_match_is_applied_before_its_ack() {
    let (_db, opts) = TestDb::new().await;
    let app = gateway_only(opts, ledger::games(), true, |_| {}).await;
    let id = app.create_match(&app.token("s"), "ledger", json!({})).await;
    let mut alice = app.ws(&app.token("alice")).await;
    let mut ids = Vec::new();
    for n in 1..=3 {
        ids.push(alice.act(&id, "n", json!({"n": n})).await);
        // No worker runs: the move was applied in the transaction its ack waited for.
        assert_eq!(seen(&app, &id).await, (1..=n).collect::<Vec<_>>());
        assert!(queued(&app, &id).await.is_empty());
    }
    let stored: Seen = state_field(&app, &id, "seen").await;
    let stored_ids: Vec<i64> = stored.iter().map(|s| s.2).collect();
    assert_eq!(
        stored_ids, ids,
        "each applied once, under its acked control id"
    );
    // The broadcasts were appended in the same commit, gap-free.
    let seqs: Vec<i64> = sqlx::query_scalar(
        "SELECT seq FROM postgame.messages WHERE channel = 'match:' || $1 AND name = 'n'
         ORDER BY seq",
    )
    .bind(&id)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(seqs.len(), 3);
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    // No head is left behind for a worker to find.
    let heads: i64 = sqlx::query_scalar("SELECT count(*) FROM postgame.control_heads")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(heads, 0);
    app.shutdown().await;
}

#[tokio::test]
async fn without_the_fast_apply_a_move_waits_in_the_queue() {
    let (_db, opts) = TestDb::new().await;
    let app = gateway_only(opts, ledger::games(), false, |_| {}).await;
    let id = app.create_match(&app.token("s"), "ledger", json!({})).await;
    let mut alice = app.ws(&app.token("alice")).await;
    let msg = alice.act(&id, "n", json!({"n": 1})).await;
    assert_eq!(queued(&app, &id).await, vec![msg]);
    assert!(seen(&app, &id).await.is_empty());
    let worker = worker_server(&app, ledger::games()).await;
    app.wait_until("SELECT NOT EXISTS (SELECT 1 FROM postgame.control)")
        .await;
    assert_eq!(seen(&app, &id).await, vec![1]);
    worker.shutdown().await;
    app.shutdown().await;
}

#[tokio::test]
async fn a_move_never_overtakes_a_held_match_or_an_earlier_queued_move() {
    let (_db, opts) = TestDb::new().await;
    let app = gateway_only(opts, ledger::games(), true, |_| {}).await;
    let id = app.create_match(&app.token("s"), "ledger", json!({})).await;
    let mut alice = app.ws(&app.token("alice")).await;
    // A worker (here: this test) holds the match: the move is queued, not applied.
    let mut holder = app.pool.begin().await.unwrap();
    let locked: bool = sqlx::query_scalar("SELECT postgame.try_lock_match($1::uuid)")
        .bind(&id)
        .fetch_one(&mut *holder)
        .await
        .unwrap();
    assert!(locked);
    let first = alice.act(&id, "n", json!({"n": 1})).await;
    assert_eq!(queued(&app, &id).await, vec![first]);
    holder.rollback().await.unwrap();
    // The match is free now, but its first move is still queued: the second waits behind
    // it instead of overtaking it.
    let second = alice.act(&id, "n", json!({"n": 2})).await;
    assert_eq!(queued(&app, &id).await, vec![first, second]);
    assert!(seen(&app, &id).await.is_empty());
    // A worker drains both, in order; the next move finds the match free again.
    let worker = worker_server(&app, ledger::games()).await;
    app.wait_until("SELECT NOT EXISTS (SELECT 1 FROM postgame.control)")
        .await;
    assert_eq!(seen(&app, &id).await, vec![1, 2]);
    worker.shutdown().await;
    alice.act(&id, "n", json!({"n": 3})).await;
    assert_eq!(seen(&app, &id).await, vec![1, 2, 3]);
    app.shutdown().await;
}

#[tokio::test]
async fn a_failed_move_held_for_its_retry_keeps_the_next_moves_in_the_queue() {
    let (_db, opts) = TestDb::new().await;
    let app = gateway_only(opts, ledger::games(), true, |c| c.max_attempts = 2).await;
    let id = app.create_match(&app.token("s"), "ledger", json!({})).await;
    let mut alice = app.ws(&app.token("alice")).await;
    // The fast apply runs the failing handler once, as a worker would: one attempt
    // recorded, the match held for the retry.
    let fail = alice.act(&id, "fail", json!({})).await;
    let (attempts, error): (i32, String) =
        sqlx::query_as("SELECT attempts, last_error FROM postgame.control WHERE id = $1")
            .bind(fail)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(attempts, 1);
    assert!(error.contains("failing on purpose"), "{error}");
    let held: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM postgame.control_holds WHERE match_id = $1::uuid)",
    )
    .bind(&id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(held);
    let next = alice.act(&id, "n", json!({"n": 1})).await;
    assert_eq!(queued(&app, &id).await, vec![fail, next]);
    // The worker retries it after the hold, dead-letters it, then applies the next move.
    let worker = worker_server(&app, ledger::games()).await;
    app.wait_until("SELECT NOT EXISTS (SELECT 1 FROM postgame.control)")
        .await;
    assert_eq!(seen(&app, &id).await, vec![1]);
    let dead: Vec<i64> = sqlx::query_scalar("SELECT id FROM postgame.control_dead")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(dead, vec![fail]);
    worker.shutdown().await;
    app.shutdown().await;
}

/// The dead letter a `name` input leaves with one attempt allowed, on the fast path (no
/// worker: it is there when the ack arrives) or on the worker path; and the next move is
/// applied after it.
async fn dead_letter_of(games: Registry, game: &str, name: &str, fast: bool) -> (i32, String) {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn_with(opts, games, |c| {
        c.workers = if fast { 0 } else { 1 };
        c.fast_apply = fast;
        c.max_attempts = 1;
    })
    .await;
    let id = app.create_match(&app.token("s"), game, json!({})).await;
    let mut alice = app.ws(&app.token("alice")).await;
    let bad = alice.act(&id, name, json!({})).await;
    if !fast {
        app.wait_until("SELECT EXISTS (SELECT 1 FROM postgame.control_dead)")
            .await;
    }
    let dead: (i32, String) =
        sqlx::query_as("SELECT attempts, last_error FROM postgame.control_dead WHERE id = $1")
            .bind(bad)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(queued(&app, &id).await.is_empty());
    alice.act(&id, "n", json!({"n": 1})).await;
    if !fast {
        app.wait_until("SELECT NOT EXISTS (SELECT 1 FROM postgame.control)")
            .await;
    }
    let seen: Vec<Value> = state_field(&app, &id, "seen").await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    app.shutdown().await;
    dead
}

#[tokio::test]
async fn a_handler_panic_on_the_fast_path_is_dead_lettered_as_on_the_worker_path() {
    let fast = dead_letter_of(ledger::games(), "ledger", "boom", true).await;
    let worker = dead_letter_of(ledger::games(), "ledger", "boom", false).await;
    assert_eq!(fast, worker);
    assert_eq!(fast.0, 1);
    assert!(fast.1.contains("boom on purpose"), "{}", fast.1);
}

#[tokio::test]
async fn a_handler_overrun_on_the_fast_path_is_dead_lettered_as_on_the_worker_path() {
    let games = || Registry::builtin().with(Hanger);
    let fast = dead_letter_of(games(), "hanger", "hang", true).await;
    let worker = dead_letter_of(games(), "hanger", "hang", false).await;
    assert_eq!(fast, worker);
    assert!(fast.1.contains("handler time limit"), "{}", fast.1);
}

#[tokio::test]
async fn fast_apply_and_workers_racing_on_the_same_matches_apply_each_move_once_in_order() {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn_with(opts, ledger::games(), |c| {
        c.workers = 2;
        c.batch_size = 16;
        c.fast_apply = true;
    })
    .await;
    // Something keeps taking match locks, as a busy worker would, so that moves of the
    // same matches go both ways: inline when free, queued when held or behind a queued one.
    let stop = tokio_util::sync::CancellationToken::new();
    let pool = app.pool.clone();
    let holder = {
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let Ok(mut tx) = pool.begin().await else {
                    continue;
                };
                let _ = sqlx::query(
                    "SELECT postgame.try_lock_match(id) FROM postgame.matches
                     ORDER BY random() LIMIT 20",
                )
                .execute(&mut *tx)
                .await;
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                let _ = tx.rollback().await;
            }
        })
    };
    let names: Vec<String> = (0..4).map(|i| format!("p{i}")).collect();
    let mut clients = Vec::new();
    for n in &names {
        clients.push(app.ws(&app.token(n)).await);
    }
    let ids = flood(&app, &mut clients).await;
    stop.cancel();
    holder.await.unwrap();
    check_all(&app, &ids, &names).await;
    app.shutdown().await;
}
