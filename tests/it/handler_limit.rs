//! The handler time limit of workers (#11.1): an input whose handler never returns fails
//! on the limit (retried, then dead-lettered) instead of blocking its worker forever, and
//! the other matches' inputs keep being applied meanwhile.

use postgame::game::{Cx, Game, GameError, Input, Outgoing, Registry};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::helpers::{state_field, TestApp, TestDb};

/// A game that records `data.n` of every input, except `hang`, whose handler never
/// returns.
pub(crate) struct Hanger;

#[derive(Serialize, Deserialize, Clone, Default)]
pub(crate) struct HangerState {
    seen: Vec<i64>,
}

impl Game for Hanger {
    type Config = Value;
    type State = HangerState;

    fn name(&self) -> &'static str {
        "hanger"
    }

    fn config(&self, _raw: &Value) -> Result<Value, String> {
        Ok(json!({}))
    }

    fn create(&self, _cx: &Cx<'_, Value>, _out: &mut Vec<Outgoing>) -> HangerState {
        HangerState::default()
    }

    fn handle(
        &self,
        _cx: &Cx<'_, Value>,
        state: &mut HangerState,
        input: &Input,
        _out: &mut Vec<Outgoing>,
    ) -> Result<(), GameError> {
        if let Input::Client { name, data, .. } = input {
            if name == "hang" {
                loop {
                    std::thread::sleep(std::time::Duration::from_secs(3600));
                }
            }
            state.seen.push(data["n"].as_i64().unwrap_or(-1));
        }
        Ok(())
    }

    fn status(&self, _state: &HangerState) -> &'static str {
        "open"
    }
}

async fn seen(app: &TestApp, id: &str) -> Vec<i64> {
    state_field(app, id, "seen").await
}

#[tokio::test]
async fn a_handler_that_never_returns_fails_on_the_time_limit_and_the_other_matches_go_on() {
    let (_db, opts) = TestDb::new().await;
    // One worker: without the limit, the hanging input would take it for good.
    let app = TestApp::spawn_with(opts, Registry::builtin().with(Hanger), |c| {
        c.workers = 1;
        c.max_attempts = 2;
    })
    .await;
    let token = app.token("p0");
    let stuck = app.create_match(&token, "hanger", json!({})).await;
    let mut others = Vec::new();
    for _ in 0..3 {
        others.push(app.create_match(&token, "hanger", json!({})).await);
    }
    let mut p = app.ws(&token).await;
    p.act(&stuck, "n", json!({"n": 1})).await;
    let hang = p.act(&stuck, "hang", json!({})).await;
    p.act(&stuck, "n", json!({"n": 2})).await;
    for id in &others {
        p.act(id, "n", json!({"n": 1})).await;
    }
    // The hanging input overran once and waits for its retry…
    app.wait_until(&format!(
        "SELECT EXISTS (SELECT 1 FROM postgame.control WHERE id = {hang} AND attempts >= 1)"
    ))
    .await;
    // …and the other matches' inputs, sent before and after, are applied all the same.
    for id in &others {
        p.act(id, "n", json!({"n": 2})).await;
    }
    let list = others
        .iter()
        .map(|id| format!("'{id}'"))
        .collect::<Vec<_>>()
        .join(",");
    app.wait_until(&format!(
        "SELECT bool_and(jsonb_array_length(state->'seen') = 2)
         FROM postgame.matches WHERE id IN ({list})"
    ))
    .await;
    for id in &others {
        assert_eq!(seen(&app, id).await, vec![1, 2], "{id}");
    }
    // After its last attempt the hanging input is dead-lettered, never applied, and the
    // match goes on: the input before it and the one after it are applied once each.
    app.wait_until(&format!(
        "SELECT EXISTS (SELECT 1 FROM postgame.control_dead WHERE id = {hang})"
    ))
    .await;
    let (attempts, error): (i32, String) =
        sqlx::query_as("SELECT attempts, last_error FROM postgame.control_dead WHERE id = $1")
            .bind(hang)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(attempts, 2);
    assert!(error.contains("handler time limit"), "{error}");
    app.wait_until(&format!(
        "SELECT jsonb_array_length(state->'seen') = 2 FROM postgame.matches WHERE id = '{stuck}'"
    ))
    .await;
    assert_eq!(seen(&app, &stuck).await, vec![1, 2]);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM postgame.control")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(left, 0, "every other input was applied");
    app.shutdown().await;
}
