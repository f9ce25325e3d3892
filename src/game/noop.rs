//! `noop`, the benchmark game: it does as little as a game can, so a benchmark measures the
//! engine (queue, worker transaction, ticker) and not game logic.
//!
//! - Config: `{}`, or `{"hz": H}` for a match clock at H ticks per second.
//! - Every control input (client messages and presence alike) increments `inputs` and
//!   sends nothing.
//! - With a clock, every tick increments `ticks` and schedules the next one a period after
//!   the *scheduled* time (the catch-up policy of ARCHITECTURE.md: a late match is ticked
//!   once per claim until it has caught up, no tick is dropped).
//!
//! Pure, like every game: the state is a function of (config, inputs, ticks, times given).

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Cx, Game, GameError, Input, Outgoing, Tick};

/// The name clients (and benchmarks) use in `POST /v1/matches`.
pub const NAME: &str = "noop";
/// The fastest accepted clock, in ticks per second.
pub const MAX_HZ: f64 = 1000.0;
/// The status of every noop match.
pub const STATUS: &str = "running";

/// The game itself, registered as [`NAME`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Noop;

/// A noop match's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Ticks per second; no clock when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hz: Option<f64>,
}

impl Config {
    /// Parses `{}` or `{"hz": H}` with 0 < H <= [`MAX_HZ`].
    pub fn parse(raw: &Value) -> Result<Self, String> {
        let raw = if raw.is_null() {
            Value::Object(Default::default())
        } else {
            raw.clone()
        };
        if !raw.is_object() {
            return Err("the noop config is a JSON object: `{}` or `{\"hz\": H}`".into());
        }
        let config: Config =
            serde_json::from_value(raw).map_err(|e| format!("noop config: {e}"))?;
        if let Some(hz) = config.hz {
            if !(hz.is_finite() && hz > 0.0 && hz <= MAX_HZ) {
                return Err(format!("`hz` is a number above 0 and at most {MAX_HZ}"));
            }
        }
        Ok(config)
    }

    /// The time between two ticks, if the match has a clock (at least 1 µs).
    pub fn period(&self) -> Option<Duration> {
        self.hz
            .map(|hz| Duration::microseconds(((1e6 / hz).round() as i64).max(1)))
    }
}

/// A noop match's state.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct State {
    /// Control inputs applied.
    pub inputs: u64,
    /// Ticks run.
    pub ticks: u64,
    /// When the next tick is due (only with a clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_tick_at: Option<DateTime<Utc>>,
}

impl Game for Noop {
    type Config = Config;
    type State = State;

    fn name(&self) -> &'static str {
        NAME
    }

    /// A benchmark game: a stranger with a guest token must not fill the tickers with
    /// 1000 Hz clocks that never end.
    fn creation(&self) -> super::Creation {
        super::Creation::Admin
    }

    fn config(&self, raw: &Value) -> Result<Config, String> {
        Config::parse(raw)
    }

    fn create(&self, cx: &Cx<'_, Config>, _out: &mut Vec<Outgoing>) -> State {
        State {
            next_tick_at: cx.config.period().map(|p| cx.now + p),
            ..State::default()
        }
    }

    fn handle(
        &self,
        _cx: &Cx<'_, Config>,
        state: &mut State,
        _input: &Input,
        _out: &mut Vec<Outgoing>,
    ) -> Result<(), GameError> {
        state.inputs += 1;
        Ok(())
    }

    fn tick(
        &self,
        cx: &Cx<'_, Config>,
        state: &mut State,
        tick: Tick,
        _out: &mut Vec<Outgoing>,
    ) -> Result<(), GameError> {
        state.ticks += 1;
        // Catch-up: from the scheduled time, not from `now`.
        state.next_tick_at = cx.config.period().map(|p| tick.scheduled + p);
        Ok(())
    }

    fn status(&self, _state: &State) -> &'static str {
        STATUS
    }

    fn next_tick_at(&self, state: &State) -> Option<DateTime<Utc>> {
        state.next_tick_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::game::testkit::t0;
    use crate::game::DynGame;
    use crate::ids::{ClientId, MatchId};
    use serde_json::json;

    fn cx(config: &Config, now: DateTime<Utc>) -> Cx<'_, Config> {
        Cx {
            match_id: MatchId::new_random(),
            config,
            now,
        }
    }

    fn input(n: i64) -> Input {
        Input::Client {
            msg_id: n,
            client: ClientId::parse("bench").expect("a valid client id"),
            name: "input".into(),
            data: json!({ "n": n }),
        }
    }

    #[test]
    fn config_is_empty_or_a_clock_rate() {
        assert_eq!(Config::parse(&json!({})), Ok(Config { hz: None }));
        assert_eq!(Config::parse(&Value::Null), Ok(Config { hz: None }));
        assert_eq!(
            Config::parse(&json!({"hz": 20})),
            Ok(Config { hz: Some(20.0) })
        );
        assert_eq!(
            Config::parse(&json!({"hz": 1000})),
            Ok(Config { hz: Some(1000.0) })
        );
        for bad in [
            json!({"hz": 0}),
            json!({"hz": -1}),
            json!({"hz": 1000.5}),
            json!({"hz": "fast"}),
            json!({"speed": 1}),
            json!([]),
        ] {
            assert!(Config::parse(&bad).is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn the_period_is_the_inverse_of_the_rate() {
        assert_eq!(Config { hz: None }.period(), None);
        assert_eq!(
            Config { hz: Some(20.0) }.period(),
            Some(Duration::milliseconds(50))
        );
        assert_eq!(
            Config { hz: Some(3.0) }.period(),
            Some(Duration::microseconds(333_333))
        );
    }

    #[test]
    fn a_match_without_a_clock_is_never_ticked() {
        let config = Config::default();
        let mut out = Vec::new();
        let state = Game::create(&Noop, &cx(&config, t0()), &mut out);
        assert_eq!(state, State::default());
        assert!(out.is_empty());
        assert_eq!(Noop.next_tick_at(&state), None);
        assert_eq!(Noop.status(&state), STATUS);
    }

    #[test]
    fn a_clock_starts_one_period_after_creation() {
        let config = Config { hz: Some(10.0) };
        let state = Game::create(&Noop, &cx(&config, t0()), &mut Vec::new());
        assert_eq!(
            Noop.next_tick_at(&state),
            Some(t0() + Duration::milliseconds(100))
        );
    }

    #[test]
    fn every_input_is_counted_and_sends_nothing() {
        let config = Config { hz: Some(10.0) };
        let c = cx(&config, t0());
        let mut state = Game::create(&Noop, &c, &mut Vec::new());
        let before = state.next_tick_at;
        let client = ClientId::parse("bench").expect("a valid client id");
        let inputs = [
            input(1),
            Input::Connected {
                client: client.clone(),
                connection: "c1".into(),
            },
            input(2),
            Input::Disconnected {
                client,
                connection: "c1".into(),
            },
        ];
        let mut out = Vec::new();
        for (i, input) in inputs.iter().enumerate() {
            Noop.handle(&c, &mut state, input, &mut out).unwrap();
            assert_eq!(state.inputs, i as u64 + 1);
        }
        assert!(out.is_empty());
        assert_eq!(state.ticks, 0);
        assert_eq!(state.next_tick_at, before, "inputs leave the clock alone");
    }

    #[test]
    fn a_tick_counts_and_reschedules_from_the_scheduled_time() {
        let config = Config { hz: Some(20.0) };
        let mut state = Game::create(&Noop, &cx(&config, t0()), &mut Vec::new());
        let period = Duration::milliseconds(50);
        let scheduled = t0() + period;
        // Very late: the next tick is still one period after the scheduled one (catch-up).
        let now = scheduled + Duration::seconds(3);
        let mut out = Vec::new();
        Game::tick(
            &Noop,
            &cx(&config, now),
            &mut state,
            Tick { scheduled, now },
            &mut out,
        )
        .unwrap();
        assert!(out.is_empty());
        assert_eq!(state.ticks, 1);
        assert_eq!(state.next_tick_at, Some(scheduled + period));
    }

    #[test]
    fn the_engine_round_trips_the_state_through_json() {
        let id = MatchId::new_random();
        let created = DynGame::create(&Noop, id, &json!({"hz": 4}), t0()).unwrap();
        assert_eq!(created.status, STATUS);
        assert!(created.out.is_empty());
        let scheduled = t0() + Duration::milliseconds(250);
        assert_eq!(created.next_tick_at, Some(scheduled));

        let inputs: Vec<Input> = (1..=3).map(input).collect();
        let applied = DynGame::apply(&Noop, id, &created.config, &created.state, &inputs, t0());
        assert_eq!(applied.applied, 3);
        assert_eq!(applied.error, None);
        assert!(applied.out.is_empty());
        let (state, status, next) = applied.next.unwrap();
        assert_eq!(state["inputs"], 3);
        assert_eq!(status, STATUS);
        assert_eq!(next, Some(scheduled));

        let now = scheduled + Duration::milliseconds(10);
        let ticked = DynGame::tick(&Noop, id, &created.config, &state, Tick { scheduled, now });
        let (state, _, next) = ticked.next.unwrap();
        assert_eq!(state["ticks"], 1);
        assert_eq!(state["inputs"], 3);
        assert_eq!(next, Some(scheduled + Duration::milliseconds(250)));
    }
}
