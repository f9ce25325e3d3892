//! Bad input is the sender's problem (#10.5, outside the publish path): a NUL or another
//! control character in any HTTP or WebSocket field that would reach Postgres is a
//! `bad_request`, never an `internal`/500.

use postgame::game::{Cx, Game, GameError, Input, Outgoing, Registry};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::helpers::{TestApp, TestDb};

/// A game whose config keeps a string as it is given.
struct Labelled;

#[derive(Serialize, Deserialize)]
struct LabelConfig {
    #[serde(default)]
    label: String,
}

impl Game for Labelled {
    type Config = LabelConfig;
    type State = Value;

    fn name(&self) -> &'static str {
        "labelled"
    }

    fn config(&self, raw: &Value) -> Result<LabelConfig, String> {
        serde_json::from_value(if raw.is_null() {
            json!({})
        } else {
            raw.clone()
        })
        .map_err(|e| e.to_string())
    }

    fn create(&self, _cx: &Cx<'_, LabelConfig>, _out: &mut Vec<Outgoing>) -> Value {
        json!({})
    }

    fn handle(
        &self,
        _cx: &Cx<'_, LabelConfig>,
        _state: &mut Value,
        _input: &Input,
        _out: &mut Vec<Outgoing>,
    ) -> Result<(), GameError> {
        Ok(())
    }

    fn status(&self, _state: &Value) -> &'static str {
        "open"
    }
}

#[tokio::test]
async fn nul_in_any_field_is_a_bad_request_never_a_500() {
    let (_db, opts) = TestDb::new().await;
    let app = TestApp::spawn_with(opts, Registry::builtin().with(Labelled), |_| {}).await;
    let token = app.token("alice");
    let id = app.create_match(&token, "tictactoe", json!({})).await;
    for path in [
        "/v1/matches?game=%00".to_owned(),
        "/v1/matches?status=won%00".to_owned(),
        "/v1/matches?game=tic%01tac".to_owned(),
        "/v1/matches?id_prefix=ab%00cd".to_owned(),
        "/v1/channels/match%00x/history".to_owned(),
        format!("/v1/channels/match:{id}%00/history"),
    ] {
        let (status, body) = app.get(&path, &token).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["code"], "bad_request", "{path}: {body}");
    }
    for (path, body) in [
        (
            "/v1/matches",
            json!({ "game": "labelled", "config": { "label": "a\u{0}b" } }),
        ),
        ("/v1/matches", json!({ "game": "tic\u{0}tactoe" })),
        ("/v1/tokens", json!({ "name": "eve\u{0}" })),
    ] {
        let (status, got) = app.post(path, &token, &body).await;
        assert_eq!(status, 400, "{path} {body}: {got}");
        assert_eq!(got["code"], "bad_request", "{got}");
    }
    // The same game with a clean label is created: the refusal was about the NUL only.
    app.create_match(&token, "labelled", json!({ "label": "ab" }))
        .await;
    // Over the WebSocket: subscribe and unsubscribe with a NUL in the channel.
    let mut c = app.ws(&token).await;
    c.send(json!({"op": "subscribe", "id": 1, "channel": "match:\u{0}"}))
        .await;
    let r = c.recv().await;
    assert_eq!(r["code"], "bad_request", "{r}");
    c.send(json!({"op": "unsubscribe", "id": 2, "channel": "lobby\u{0}"}))
        .await;
    let r = c.recv().await;
    assert_ne!(r["code"], "internal", "{r}");
    // The connection is still fine.
    c.send(json!({"op": "ping", "id": 3})).await;
    assert_eq!(c.recv().await["op"], "pong");
    app.shutdown().await;
}
