//! `postgame::App`, the entry point of an application's own binary: its registry, its
//! pages, its command line (`run_from`) and its in-process start.

use std::process::ExitCode;

use postgame::App;
use serde_json::json;

use crate::helpers::{database_url, guest, TestDb, SECRET};

/// Runs `app.run_from(args)` on a thread of its own (it builds its own runtime).
async fn run_from(app: App, args: Vec<String>) -> ExitCode {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(app.run_from(args));
    });
    rx.await.expect("run_from returns")
}

#[tokio::test]
async fn run_from_migrates_a_database_and_answers_usage_errors_with_2() {
    let (_db, opts) = TestDb::new().await;
    let url = database_url(&opts);
    let code = run_from(
        App::new(),
        vec![
            "mygame".into(),
            "migrate".into(),
            "--database-url".into(),
            url.clone(),
        ],
    )
    .await;
    assert_eq!(code, ExitCode::SUCCESS);
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'postgame'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(tables > 0, "migrate created the schema");
    pool.close().await;

    let code = run_from(
        App::new(),
        vec!["mygame".into(), "serve".into(), "--no-such-flag".into()],
    )
    .await;
    assert_eq!(code, ExitCode::from(2));
}

#[tokio::test]
async fn an_app_serves_its_pages_and_only_its_games() {
    let (_db, opts) = TestDb::new().await;
    let url = database_url(&opts);
    let server = App::empty()
        .page("/", "<!doctype html><p>my lobby</p>")
        .page("/hello", "<!doctype html><p>hello</p>")
        .file(
            "/hello.js",
            "text/javascript; charset=utf-8",
            "export const hi = 1;",
        )
        .start([
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &url,
            "--secret",
            SECRET,
            "--db-connections",
            "4",
        ])
        .await
        .expect("the app starts");
    let base = format!("http://{}", server.addr.expect("the gateway runs"));
    let http = reqwest::Client::new();

    let get = |path: &str| http.get(format!("{base}{path}")).send();
    let r = get("/hello").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(r.headers()["cache-control"], "no-cache");
    assert_eq!(r.text().await.unwrap(), "<!doctype html><p>hello</p>");
    let r = get("/hello.js").await.unwrap();
    assert_eq!(
        r.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    // A page at `/` replaces the built-in lobby; the other built-in files stay.
    assert_eq!(
        get("/").await.unwrap().text().await.unwrap(),
        "<!doctype html><p>my lobby</p>"
    );
    assert_eq!(get("/postgame.js").await.unwrap().status(), 200);
    assert_eq!(get("/nothing-here").await.unwrap().status(), 404);

    // App::empty serves no built-in game.
    let token: serde_json::Value = guest(&http, &base).await;
    let r = http
        .post(format!("{base}/v1/matches"))
        .bearer_auth(token["token"].as_str().unwrap())
        .json(&json!({"game": "tictactoe"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("tictactoe"));
    server.shutdown().await;
}

#[test]
#[should_panic(expected = "API paths")]
fn a_page_cannot_take_an_api_path() {
    let _ = App::new().page("/v1/matches", "no");
}
