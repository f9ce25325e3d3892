//! Operator tools: `--log-format json` (one JSON object a line, with the event's fields and
//! the role of the task that logged it), `postgame inspect match` and postgame's own VACUUM.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::helpers::{database_url, migrated_pool, TestDb};

#[tokio::test]
async fn json_logs_are_one_object_a_line_with_the_role_that_logged() {
    let (_db, opts) = TestDb::new().await;
    let pool = migrated_pool(&opts, 1).await;
    // A worker whose claims fail: it logs a warning and retries.
    sqlx::query("ALTER TABLE postgame.control_heads RENAME TO control_heads_away")
        .execute(&pool)
        .await
        .unwrap();
    let mut worker = tokio::process::Command::new(env!("CARGO_BIN_EXE_postgame"))
        .args(["serve", "--role", "worker", "--log-format", "json"])
        .args(["--database-url", &database_url(&opts)])
        .env("POSTGAME_WORKERS", "1")
        .env("POSTGAME_DB_CONNECTIONS", "2")
        .env("POSTGAME_POLL_SECONDS", "0.5")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(worker.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let warning = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let event: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("not one JSON object: {line} ({e})"));
            for field in ["timestamp", "level", "message", "target"] {
                assert!(event.get(field).is_some(), "{field} missing: {line}");
            }
            seen.push(line);
            if event["message"]
                .as_str()
                .is_some_and(|m| m.contains("failed; retrying"))
            {
                return event;
            }
        }
        panic!("the worker stopped before it logged the failure: {seen:#?}");
    })
    .await
    .expect("no failure logged within 60 s");
    assert_eq!(warning["level"], "WARN", "{warning}");
    assert!(
        warning["error"]
            .as_str()
            .is_some_and(|e| e.contains("control_heads")),
        "{warning}"
    );
    let spans = warning["spans"].as_array().cloned().unwrap_or_default();
    assert!(
        spans.iter().any(|s| s["role"] == "worker"),
        "no role in {warning}"
    );
    let _ = worker.kill().await;
}

/// `postgame inspect match ID` shows the match, its queue, its hold and its broadcasts, as
/// the database has them; an unknown id is an error.
#[tokio::test]
async fn inspect_shows_a_matchs_row_queue_hold_and_broadcasts() {
    let (_db, opts) = TestDb::new().await;
    let pool = migrated_pool(&opts, 1).await;
    let (info, _) = postgame::matches::match_create(
        &pool,
        &postgame::game::tictactoe::TicTacToe,
        &serde_json::json!({}),
    )
    .await
    .unwrap();
    for name in ["join", "chat"] {
        sqlx::query(
            "INSERT INTO postgame.control (match_id, client_id, name, data) VALUES ($1, 'ann', $2, '{}')",
        )
        .bind(info.id)
        .bind(name)
        .execute(&pool)
        .await
        .unwrap();
    }
    sqlx::query("INSERT INTO postgame.control_holds VALUES ($1, now() + interval '1 minute')")
        .bind(info.id)
        .execute(&pool)
        .await
        .unwrap();
    let inspect = |id: String| {
        std::process::Command::new(env!("CARGO_BIN_EXE_postgame"))
            .args(["inspect", "match", &id, "--last", "1"])
            .args(["--database-url", &database_url(&opts)])
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    let out = inspect(info.id.to_string());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["match"]["id"], info.id.to_string(), "{doc}");
    assert_eq!(doc["match"]["game"], "tictactoe", "{doc}");
    assert_eq!(doc["pending"]["count"], 2, "{doc}");
    let oldest = doc["pending"]["oldest"].as_array().unwrap();
    assert_eq!(oldest.len(), 1, "--last 1: {doc}");
    assert_eq!(oldest[0]["name"], "join", "{doc}");
    assert!(doc["hold"]["until"].is_string(), "{doc}");
    assert_eq!(doc["dead_letters"], serde_json::json!([]), "{doc}");
    assert!(
        doc["broadcasts"].as_array().is_some_and(|b| b.len() == 1),
        "{doc}"
    );

    let out = inspect(uuid::Uuid::new_v4().to_string());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no match"));
    let out = inspect("not-an-id".to_owned());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a match id"));
}

/// How many times `postgame.control` was vacuumed by hand (not by autovacuum).
async fn control_vacuums(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT vacuum_count FROM pg_stat_user_tables
         WHERE schemaname = 'postgame' AND relname = 'control'",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// postgame vacuums its hot tables itself (this CI server runs with autovacuum off), one
/// process at a time, and a worker process does it on its own every `--vacuum-seconds`.
#[tokio::test]
async fn workers_vacuum_the_hot_tables_one_process_at_a_time() {
    let (_db, opts) = TestDb::new().await;
    let pool = migrated_pool(&opts, 2).await;
    assert!(postgame::vacuum::vacuum_once(&pool).await.unwrap());
    assert_eq!(control_vacuums(&pool).await, 1);

    // Another process at it: this one skips its round.
    let mut other = pool.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock(7476904, 1)")
        .execute(&mut *other)
        .await
        .unwrap();
    assert!(!postgame::vacuum::vacuum_once(&pool).await.unwrap());
    sqlx::query("SELECT pg_advisory_unlock(7476904, 1)")
        .execute(&mut *other)
        .await
        .unwrap();
    drop(other);
    assert_eq!(control_vacuums(&pool).await, 1);

    // A worker process vacuums by itself.
    let mut worker = tokio::process::Command::new(env!("CARGO_BIN_EXE_postgame"))
        .args(["serve", "--role", "worker", "--vacuum-seconds", "1"])
        .args(["--database-url", &database_url(&opts)])
        .env("POSTGAME_DB_CONNECTIONS", "2")
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while control_vacuums(&pool).await < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker did not vacuum twice within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = worker.kill().await;
}
