//! `GET /v1/matches`: filters, pages, game-defined labels, and what a caller may see.

use std::collections::{BTreeMap, HashSet};

use postgame::gateway::auth::{Auth, Cap};
use serde_json::{json, Value};

use crate::helpers::{TestApp, TestDb, SECRET};

/// The ids of a listing body, in order.
fn ids(body: &Value) -> Vec<String> {
    body["matches"]
        .as_array()
        .unwrap_or_else(|| panic!("a listing: {body}"))
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

/// A token whose only capabilities are `caps`.
fn token_with(sub: &str, caps: &[(&str, Vec<Cap>)]) -> String {
    let caps: BTreeMap<String, Vec<Cap>> = caps
        .iter()
        .map(|(p, c)| ((*p).to_owned(), c.clone()))
        .collect();
    Auth::new(SECRET)
        .issue(sub, None, Some(caps), chrono::Duration::hours(1))
        .0
}

#[tokio::test]
async fn pages_go_newest_first_without_gaps_or_repeats_and_filters_hold() {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn(opts).await;
    let token = app.token("lister");
    let mut ttt = Vec::new();
    for _ in 0..5 {
        ttt.push(app.create_match(&token, "tictactoe", json!({})).await);
    }
    let pong = app.create_match(&token, "pong", json!({})).await;

    let mut seen = Vec::new();
    let mut path = "/v1/matches?game=tictactoe&limit=2".to_owned();
    let mut pages = 0;
    loop {
        let (status, body) = app.get(&path, &token).await;
        assert_eq!(status, 200, "{body}");
        pages += 1;
        let page = ids(&body);
        assert!(page.len() <= 2);
        assert!(body["matches"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["game"] == "tictactoe"));
        seen.extend(page);
        match body["next"].as_str() {
            Some(next) => path = format!("/v1/matches?game=tictactoe&limit=2&after={next}"),
            None => break,
        }
        assert!(pages < 10, "pagination ends");
    }
    assert_eq!(pages, 3, "5 matches in pages of 2");
    let mut newest_first = ttt.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first, "newest first, each once");

    // The default page has everything, pong included, still newest first.
    let (_, body) = app.get("/v1/matches", &token).await;
    assert_eq!(ids(&body)[0], pong);
    assert_eq!(ids(&body).len(), 6);
    assert_eq!(body["next"], Value::Null);

    let (_, body) = app
        .get("/v1/matches?game=pong&status=waiting", &token)
        .await;
    assert_eq!(ids(&body), vec![pong.clone()]);
    let (_, body) = app.get("/v1/matches?status=playing", &token).await;
    assert!(ids(&body).is_empty());

    for bad in [
        "limit=0",
        "limit=1001",
        "after=nope",
        "after=12.zz",
        "label=1",
        "label=%7Bnot-json",
        "label=%5B1%5D",
    ] {
        let (status, body) = app.get(&format!("/v1/matches?{bad}"), &token).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["code"], "bad_request", "{bad}");
    }
    app.shutdown().await;
}

#[tokio::test]
async fn labels_follow_the_state_and_listing_filters_on_them() {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn(opts).await;
    let token = app.token("alice");
    let empty = app.create_match(&token, "tictactoe", json!({})).await;
    let half = app.create_match(&token, "tictactoe", json!({})).await;
    let full = app.create_match(&token, "tictactoe", json!({})).await;
    let bot = app
        .create_match(&token, "pong", json!({ "bot": true }))
        .await;

    let mut alice = app.ws(&token).await;
    let mut bob = app.ws(&app.token("bob")).await;
    alice.act(&half, "join", json!({})).await;
    alice.act(&full, "join", json!({})).await;
    bob.act(&full, "join", json!({})).await;
    app.wait_until(&format!(
        "SELECT count(*) = 0 FROM postgame.control WHERE match_id IN ('{half}', '{full}')"
    ))
    .await;

    let (_, body) = app.get(&format!("/v1/matches/{half}"), &token).await;
    assert_eq!(body["label"], json!({ "open_seats": 1 }), "{body}");

    let one = "/v1/matches?game=tictactoe&label=%7B%22open_seats%22%3A1%7D";
    let (status, body) = app.get(one, &token).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ids(&body), vec![half.clone()]);
    assert_eq!(body["matches"][0]["label"], json!({ "open_seats": 1 }));

    let two = "/v1/matches?game=tictactoe&label=%7B%22open_seats%22%3A2%7D";
    let (_, body) = app.get(two, &token).await;
    assert_eq!(ids(&body), vec![empty.clone()]);

    let none = "/v1/matches?game=tictactoe&status=playing&label=%7B%22open_seats%22%3A0%7D";
    let (_, body) = app.get(none, &token).await;
    assert_eq!(ids(&body), vec![full.clone()]);

    // Containment: a part of the label is enough.
    let (_, body) = app
        .get("/v1/matches?label=%7B%22bot%22%3Atrue%7D", &token)
        .await;
    assert_eq!(ids(&body), vec![bot.clone()]);
    let (_, body) = app.get("/v1/matches?label=%7B%7D", &token).await;
    assert_eq!(ids(&body).len(), 4, "every label contains {{}}");

    let stored: Value = sqlx::query_scalar(&format!(
        "SELECT label FROM postgame.matches WHERE id = '{bot}'"
    ))
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(stored, json!({ "open_seats": 1, "bot": true }));
    app.shutdown().await;
}

#[tokio::test]
async fn a_caller_lists_and_reads_only_the_matches_its_capabilities_show() {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn(opts).await;
    let token = app.token("owner");
    let mine = app.create_match(&token, "tictactoe", json!({})).await;
    let other = app.create_match(&token, "tictactoe", json!({})).await;
    let third = app.create_match(&token, "pong", json!({})).await;

    let one = token_with(
        "viewer",
        &[(&format!("match:{mine}"), vec![Cap::Subscribe])],
    );
    let (status, body) = app.get("/v1/matches", &one).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ids(&body), vec![mine.clone()]);
    let (status, _) = app.get(&format!("/v1/matches/{mine}"), &one).await;
    assert_eq!(status, 200);
    let (status, body) = app.get(&format!("/v1/matches/{other}"), &one).await;
    assert_eq!(
        status, 404,
        "a match it may not see does not exist for it: {body}"
    );
    let prefix = &other[..8];
    let (_, body) = app
        .get(&format!("/v1/matches?id_prefix={prefix}"), &one)
        .await;
    assert!(ids(&body).is_empty(), "not through a lobby code either");

    // A glob shows what it matches; `%` and `_` in it are not wildcards.
    let glob = format!("match:{}*", &third[..6]);
    let by_glob = token_with("viewer", &[(&glob, vec![Cap::History])]);
    let (_, body) = app.get("/v1/matches", &by_glob).await;
    assert!(ids(&body).contains(&third));
    let literal = token_with(
        "viewer",
        &[
            ("match:%", vec![Cap::Subscribe]),
            ("match:_*", vec![Cap::Subscribe]),
        ],
    );
    let (_, body) = app.get("/v1/matches", &literal).await;
    assert!(ids(&body).is_empty(), "{body}");

    // Publishing is not seeing; no match capability at all sees nothing.
    let publisher = token_with(
        "viewer",
        &[
            ("control:*", vec![Cap::Publish]),
            ("lobby", vec![Cap::Subscribe]),
        ],
    );
    let (status, body) = app.get("/v1/matches", &publisher).await;
    assert_eq!(status, 200);
    assert!(ids(&body).is_empty(), "{body}");

    // The default capabilities see every match.
    let (_, body) = app.get("/v1/matches", &app.token("anyone")).await;
    let all: HashSet<String> = ids(&body).into_iter().collect();
    assert_eq!(all, HashSet::from([mine, other, third]));
    app.shutdown().await;
}
