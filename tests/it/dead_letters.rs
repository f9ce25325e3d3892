//! `postgame dead-letters list|retry|drop` on the real server: a message whose handler kept
//! failing is listed, retried at the end of its match's queue (applied once, after what
//! the match already had) or dropped; bad selections change nothing.

use serde_json::{json, Value};

use crate::helpers::{TestApp, TestDb};
use crate::ledger;

/// Runs `postgame dead-letters ARGS` on `db_url`: (success, stdout, stderr).
fn dead_letters(db_url: &str, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_postgame"))
        .arg("dead-letters")
        .args(args)
        .args(["--database-url", db_url])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn dead_count(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM postgame.control_dead")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

/// The ledger's `seen` entries of a match: (client, n, msg_id).
async fn seen(app: &TestApp, id: &str) -> Vec<(String, i64, i64)> {
    let state: Value = sqlx::query_scalar("SELECT state FROM postgame.matches WHERE id = $1::uuid")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    serde_json::from_value(state["seen"].clone()).unwrap()
}

#[tokio::test]
async fn dead_letters_are_listed_retried_at_the_end_of_their_match_and_dropped() {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn_with(opts, ledger::games(), |c| c.max_attempts = 1).await;
    let token = app.token("ann");
    let id = app.create_match(&token, "ledger", json!({})).await;
    let mut ann = app.ws(&token).await;
    let channel = format!("match:{id}");
    let _ = ann.subscribe(&channel, None).await;

    // A handler failure with --max-attempts 1: a real dead letter.
    let failed = ann.act(&id, "fail", json!({})).await;
    app.wait_until("SELECT count(*) = 1 FROM postgame.control_dead")
        .await;
    // A message that died of a failure since fixed (as the worker would have moved it),
    // then the match goes on without it.
    let lost: i64 = sqlx::query_scalar(
        "INSERT INTO postgame.control_dead \
         (id, match_id, client_id, name, data, attempts, last_error, created_at) \
         VALUES (nextval('postgame.control_id_seq'), $1::uuid, 'ann', 'n', '{\"n\": 1}', 5, \
                 'a bug since fixed', now()) RETURNING id",
    )
    .bind(&id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let later = ann.act(&id, "n", json!({"n": 2})).await;
    assert_eq!(ann.message(&channel).await["data"]["n"], 2);
    assert_eq!(seen(&app, &id).await.len(), 1);

    // list: both, newest first, with the count; --match filters.
    let (ok, out, err) = dead_letters(&app.db_url, &["list"]);
    assert!(ok, "{err}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["count"], 2, "{doc}");
    let listed: Vec<i64> = doc["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_i64().unwrap())
        .collect();
    assert_eq!(listed, [lost, failed]);
    assert_eq!(
        doc["dead_letters"][1]["last_error"], "failing on purpose",
        "{doc}"
    );
    let other = uuid::Uuid::new_v4().to_string();
    let (ok, out, _) = dead_letters(&app.db_url, &["list", "--match", &other]);
    assert!(ok);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["count"], 0);

    // `inspect` shows them and names the command.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_postgame"))
        .args(["inspect", "match", &id, "--database-url", &app.db_url])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        doc["dead_letters"].as_array().map(Vec::len),
        Some(2),
        "{doc}"
    );
    let hint = String::from_utf8_lossy(&out.stderr);
    assert!(hint.contains("dead-letters retry --match"), "{hint}");

    // Bad selections are clear errors and change nothing (all or none).
    let (ok, _, err) = dead_letters(&app.db_url, &["retry", &lost.to_string(), "999999999"]);
    assert!(!ok);
    assert!(err.contains("no dead letter with id 999999999"), "{err}");
    let (ok, _, err) = dead_letters(&app.db_url, &["drop", "--match", "not-a-uuid"]);
    assert!(!ok);
    assert!(err.contains("is not a match id"), "{err}");
    let (ok, _, err) = dead_letters(&app.db_url, &["drop", "--match", &other]);
    assert!(!ok);
    assert!(err.contains("has no dead letters"), "{err}");
    let (ok, _, err) = dead_letters(&app.db_url, &["retry"]);
    assert!(!ok, "retry without a selection");
    assert!(err.contains("--match"), "{err}");
    assert_eq!(dead_count(&app).await, 2);

    // retry: applied once, after the message the match already had.
    let (ok, out, err) = dead_letters(&app.db_url, &["retry", &lost.to_string()]);
    assert!(ok, "{err}");
    let new_id: i64 = out
        .trim()
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no new id in {out:?}"));
    assert!(
        new_id > later,
        "retried before a later message: {new_id} <= {later}"
    );
    let msg = ann.message(&channel).await;
    assert_eq!(msg["data"]["n"], 1, "{msg}");
    let applied = seen(&app, &id).await;
    assert_eq!(
        applied,
        [("ann".to_owned(), 2, later), ("ann".to_owned(), 1, new_id)]
    );
    assert_eq!(dead_count(&app).await, 1);
    let (ok, _, err) = dead_letters(&app.db_url, &["retry", &lost.to_string()]);
    assert!(!ok, "retried twice");
    assert!(err.contains("no dead letter"), "{err}");

    // A dead letter whose match is gone cannot be retried, only dropped.
    let orphan: i64 = sqlx::query_scalar(
        "INSERT INTO postgame.control_dead \
         (id, match_id, name, data, attempts, last_error, created_at) \
         VALUES (nextval('postgame.control_id_seq'), $1::uuid, 'n', '{}', 5, 'x', now()) \
         RETURNING id",
    )
    .bind(&other)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let (ok, _, err) = dead_letters(&app.db_url, &["retry", "--match", &other]);
    assert!(!ok);
    assert!(err.contains("no longer exists"), "{err}");
    let (ok, out, err) = dead_letters(&app.db_url, &["drop", &orphan.to_string()]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), format!("dropped dead letter {orphan}"));

    // drop --match: the failed one goes, for good; the queue is untouched.
    let (ok, out, err) = dead_letters(&app.db_url, &["drop", "--match", &id]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), format!("dropped dead letter {failed}"));
    assert_eq!(dead_count(&app).await, 0);
    assert_eq!(seen(&app, &id).await.len(), 2);
    app.shutdown().await;
}
