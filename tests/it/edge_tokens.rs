//! Tokens and close codes (#10.6): `nbf`, the scheme's case, expiry during a session, and
//! the RFC 6455 codes for invalid UTF-8 and protocol errors.

use futures_util::SinkExt;
use postgame::gateway::auth::{Auth, Claims};
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{Closed, TestApp, TestDb, SECRET};

fn token(exp_in: chrono::Duration, nbf_in: Option<chrono::Duration>) -> String {
    let now = chrono::Utc::now();
    Auth::new(SECRET).sign(&Claims {
        sub: "alice".into(),
        exp: (now + exp_in).timestamp(),
        caps: None,
        name: None,
        nbf: nbf_in.map(|d| (now + d).timestamp()),
        admin: false,
    })
}

#[tokio::test]
async fn a_token_not_valid_yet_is_refused() {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn(opts).await;
    let early = token(
        chrono::Duration::hours(1),
        Some(chrono::Duration::minutes(10)),
    );
    let (status, got) = app.get("/v1/matches", &early).await;
    assert_eq!(status, 401, "{got}");
    assert_eq!(got["message"], "the token is not valid yet");
    let mut c = app.ws_raw(&format!("/v1/ws?token={early}")).await;
    let e = c.recv().await;
    assert_eq!(e["code"], "unauthorized", "{e}");
    assert!(matches!(c.closed().await, Closed::Code(4001)));
    // An `nbf` in the past is fine.
    let ok = token(
        chrono::Duration::hours(1),
        Some(chrono::Duration::minutes(-1)),
    );
    assert_eq!(app.get("/v1/matches", &ok).await.0, 200);
    app.shutdown().await;
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn(opts).await;
    let t = app.token("alice");
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let r = app
            .http
            .get(app.url("/v1/matches"))
            .header("authorization", format!("{scheme} {t}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{scheme}");
    }
    let r = app
        .http
        .get(app.url("/v1/matches"))
        .header("authorization", format!("Basic {t}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    app.shutdown().await;
}

#[tokio::test]
async fn a_session_ends_with_4001_when_its_token_expires() {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn(opts).await;
    let short = token(chrono::Duration::seconds(1), None);
    let mut c = app.ws(&short).await;
    c.subscribe("lobby", None).await;
    // Expiry (plus the 5 s leeway of verification) ends the session.
    let closed = c.closed().await;
    assert!(matches!(closed, Closed::Code(4001)), "{closed:?}");
    let e = c.recv().await;
    assert_eq!(e["code"], "unauthorized", "{e}");
    assert_eq!(e["message"], "the token is expired");
    // A long-lived token's session is not affected meanwhile.
    let mut other = app.ws(&app.token("bob")).await;
    other.send(json!({"op": "ping", "id": 1})).await;
    assert_eq!(other.recv().await["op"], "pong");
    app.shutdown().await;
}

#[tokio::test]
async fn invalid_utf8_closes_with_1007_and_protocol_errors_with_1002() {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn(opts).await;
    let mut c = app.ws(&app.token("alice")).await;
    let bad = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    c.ws.send(Message::Frame(bad)).await.unwrap();
    let closed = c.closed().await;
    assert!(matches!(closed, Closed::Code(1007)), "{closed:?}");

    let mut c = app.ws(&app.token("alice")).await;
    // A continuation frame with nothing to continue.
    let bad = Frame::message(b"x".to_vec(), OpCode::Data(Data::Continue), true);
    c.ws.send(Message::Frame(bad)).await.unwrap();
    let closed = c.closed().await;
    assert!(matches!(closed, Closed::Code(1002)), "{closed:?}");
    app.shutdown().await;
}

/// `postgame token` mints what a server with the same secret accepts, with exactly the
/// capabilities asked for, and refuses the development secret and bad capabilities.
#[test]
fn the_token_command_mints_what_the_server_accepts() {
    let secret = "an-operators-secret-of-at-least-32-bytes";
    let mint = |args: &[&str], secret: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_postgame"))
            .arg("token")
            .args(args)
            .env("POSTGAME_SECRET", secret)
            .output()
            .unwrap()
    };
    let out = mint(
        &[
            "--client",
            "bot-7",
            "--name",
            "Bot",
            "--cap",
            "lobby=subscribe",
            "--ttl",
            "600",
        ],
        secret,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let who = Auth::new(secret).verify(token.trim()).unwrap();
    assert_eq!(who.client.as_str(), "bot-7");
    assert_eq!(who.name.as_deref(), Some("Bot"));
    let lobby = postgame::ids::Channel::parse("lobby").unwrap();
    use postgame::gateway::auth::Cap;
    assert!(who.can(Cap::Subscribe, &lobby));
    assert!(!who.can(Cap::Publish, &lobby));
    let left = who.expires_at - chrono::Utc::now();
    assert!((590..=600).contains(&left.num_seconds()), "{left}");
    // Another secret's server refuses it.
    assert!(Auth::new("another-secret-of-at-least-32-bytes!!")
        .verify(token.trim())
        .is_err());

    for (args, secret, says) in [
        (
            &["--client", "bot-7"][..],
            postgame::config::DEV_SECRET,
            "POSTGAME_SECRET",
        ),
        (
            &["--client", "bot-7", "--cap", "lobby=fly"][..],
            secret,
            "not an operation",
        ),
        (
            &["--client", "bot-7", "--cap", "lobby"][..],
            secret,
            "PATTERN=OP",
        ),
    ] {
        let out = mint(args, secret);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(says),
            "{args:?}: {err}"
        );
        assert!(out.stdout.is_empty(), "{args:?} printed a token");
    }
}
