//! A test game that records every input it applies, so tests can check order and
//! exactly-once: `n` appends `(client, data.n, msg_id)`; `boom` panics.

use postgame::game::{Cx, Game, GameError, Input, Outgoing, Registry, To};
use serde::{Deserialize, Serialize};
use serde_json::json;

pub struct Ledger;

#[derive(Serialize, Deserialize, Default)]
pub struct Config {}

#[derive(Serialize, Deserialize, Clone, Default)]
pub struct State {
    pub seen: Vec<(String, i64, i64)>,
}

impl Game for Ledger {
    type Config = Config;
    type State = State;

    fn name(&self) -> &'static str {
        "ledger"
    }

    fn config(&self, _raw: &serde_json::Value) -> Result<Config, String> {
        Ok(Config {})
    }

    fn create(&self, _cx: &Cx<'_, Config>, _out: &mut Vec<Outgoing>) -> State {
        State::default()
    }

    fn handle(
        &self,
        _cx: &Cx<'_, Config>,
        state: &mut State,
        input: &Input,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), GameError> {
        if let Input::Client {
            msg_id,
            client,
            name,
            data,
        } = input
        {
            match name.as_str() {
                "boom" => panic!("boom on purpose"),
                "fail" => anyhow::bail!("failing on purpose"),
                _ => {
                    let n = data["n"].as_i64().unwrap_or(-1);
                    state.seen.push((client.to_string(), n, *msg_id));
                    out.push(Outgoing::new(
                        To::Match,
                        "n",
                        json!({ "client": client, "n": n }),
                    ));
                }
            }
        }
        Ok(())
    }

    fn status(&self, _state: &State) -> &'static str {
        "open"
    }
}

pub fn games() -> Registry {
    Registry::builtin().with(Ledger)
}

/// Checks one match's ledger: every client's `n`s are exactly 1..=k in order, and msg_ids
/// strictly increase (applied in commit order).
pub fn check(state: &serde_json::Value, clients: &[String], k: i64) {
    let seen: Vec<(String, i64, i64)> = serde_json::from_value(state["seen"].clone()).unwrap();
    for w in seen.windows(2) {
        assert!(w[0].2 < w[1].2, "applied out of id order: {seen:?}");
    }
    for c in clients {
        let ns: Vec<i64> = seen.iter().filter(|s| &s.0 == c).map(|s| s.1).collect();
        assert_eq!(ns, (1..=k).collect::<Vec<_>>(), "client {c}: {seen:?}");
    }
    assert_eq!(seen.len() as i64, clients.len() as i64 * k);
}
