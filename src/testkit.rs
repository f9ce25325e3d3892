//! A test kit for game authors: drive a match through inputs and ticks without a database,
//! and look at what it sent and what state it is in.
//!
//! [`TestMatch`] runs a [`Game`] the way the engine does: through the type-erased
//! [`DynGame`] path, so the config is validated as `POST /v1/matches` validates it, the
//! state makes the same JSON round trip it makes through `matches.state` after every step,
//! a failing or panicking handler leaves the state untouched (in production the input is
//! retried, then dead-lettered), and ticks run when [`Game::next_tick_at`] says they are
//! due, the way a punctual ticker runs them.
//!
//! ```
//! use postgame::game::tictactoe::TicTacToe;
//! use postgame::testkit::{client, TestMatch};
//! use serde_json::json;
//!
//! let mut m = TestMatch::new(TicTacToe, json!({})).expect("a valid config");
//! let (alice, bob) = (client("alice"), client("bob"));
//! m.publish(&alice, "join", json!({})).expect("join applies");
//! m.publish(&bob, "join", json!({})).expect("join applies");
//! assert_eq!(m.status(), "playing");
//! let sent = m.publish(&alice, "move", json!({"cell": 4})).expect("move applies");
//! assert!(sent.to_match("state").is_some(), "a move broadcasts the new state");
//! ```

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde::Deserialize;
use serde_json::Value;

use crate::game::{Applied, DynGame, Game, Input, Outgoing, Tick, To};
use crate::ids::{ClientId, MatchId};

/// The fixed "now" a [`TestMatch`] starts from unless told otherwise (2030-01-02 03:04:05
/// UTC), so tests are reproducible.
pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2030, 1, 2, 3, 4, 5)
        .single()
        .expect("a valid date")
}

/// A client id for a test.
///
/// # Panics
/// When `name` is not a valid client id (see [`ClientId::parse`]).
pub fn client(name: &str) -> ClientId {
    ClientId::parse(name).unwrap_or_else(|| panic!("{name:?} is not a valid client id"))
}

/// The messages one step sent, with finders for the usual assertions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sent(pub Vec<Outgoing>);

impl Sent {
    /// The last message named `name` broadcast on `match:<id>`.
    pub fn to_match(&self, name: &str) -> Option<&Outgoing> {
        self.find(&To::Match, name)
    }

    /// The last message named `name` sent privately to `client` (`user:<client>`).
    pub fn to_user(&self, client: &ClientId, name: &str) -> Option<&Outgoing> {
        self.find(&To::User(client.clone()), name)
    }

    /// The last message named `name` announced on `lobby`.
    pub fn to_lobby(&self, name: &str) -> Option<&Outgoing> {
        self.find(&To::Lobby, name)
    }

    /// Whether nothing was sent.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn find(&self, to: &To, name: &str) -> Option<&Outgoing> {
        self.0.iter().rev().find(|o| &o.to == to && o.name == name)
    }
}

/// One match of game `G`, driven by the test. A clone is an independent copy (to try
/// several continuations of one position).
#[derive(Clone)]
pub struct TestMatch<G: Game> {
    game: G,
    match_id: MatchId,
    config: Value,
    state: Value,
    status: &'static str,
    next_tick_at: Option<DateTime<Utc>>,
    over: bool,
    now: DateTime<Utc>,
    next_msg_id: i64,
    created: Sent,
}

impl<G: Game> TestMatch<G> {
    /// A new match created with `config` (the body's `config` of `POST /v1/matches`) at
    /// [`t0`]; `Err` carries the `bad_request` text a client would get.
    pub fn new(game: G, config: Value) -> Result<Self, String> {
        Self::new_at(game, config, t0())
    }

    /// A new match created at `now`.
    pub fn new_at(game: G, config: Value, now: DateTime<Utc>) -> Result<Self, String> {
        let match_id = MatchId::new_random();
        let created = DynGame::create(&game, match_id, &config, now)?;
        Ok(Self {
            game,
            match_id,
            config: created.config,
            state: created.state,
            status: created.status,
            next_tick_at: created.next_tick_at,
            over: false,
            now,
            next_msg_id: 1,
            created: Sent(created.out),
        })
    }

    /// What [`Game::create`] sent.
    pub fn created(&self) -> &Sent {
        &self.created
    }

    /// `client` publishes a control message `name` with `data` on `control:<match>`.
    /// `Err` is the handler's error (the state is unchanged), not a rejected move: a game
    /// rejects a move by sending a message.
    pub fn publish(&mut self, client: &ClientId, name: &str, data: Value) -> Result<Sent, String> {
        let msg_id = self.next_msg_id;
        self.next_msg_id += 1;
        self.input(Input::Client {
            msg_id,
            client: client.clone(),
            name: name.to_owned(),
            data,
        })
    }

    /// One of `client`'s connections subscribed to `match:<match>` (`$connected`).
    pub fn connect(&mut self, client: &ClientId, connection: &str) -> Result<Sent, String> {
        self.input(Input::Connected {
            client: client.clone(),
            connection: connection.to_owned(),
        })
    }

    /// That connection went away (`$disconnected`).
    pub fn disconnect(&mut self, client: &ClientId, connection: &str) -> Result<Sent, String> {
        self.input(Input::Disconnected {
            client: client.clone(),
            connection: connection.to_owned(),
        })
    }

    /// Applies any input at the current time.
    pub fn input(&mut self, input: Input) -> Result<Sent, String> {
        let applied = self.game.apply(
            self.match_id,
            &self.config,
            &self.state,
            std::slice::from_ref(&input),
            self.now,
        );
        self.take(applied)
    }

    /// Moves the clock forward by `by`, running every tick that falls due on the way at the
    /// time it is scheduled (as a punctual ticker would), and returns what they sent.
    ///
    /// # Panics
    /// When the game schedules more than 1,000,000 ticks in that span, or a tick that fails
    /// (a test wanting to see a failing tick uses [`TestMatch::tick`]).
    pub fn advance(&mut self, by: Duration) -> Sent {
        let until = self.now + chrono::Duration::from_std(by).expect("a duration in range");
        let mut sent = Vec::new();
        for _ in 0..1_000_000 {
            match self.next_tick_at {
                Some(due) if due <= until => {
                    self.now = self.now.max(due);
                    match self.tick() {
                        Some(Ok(mut out)) => sent.append(&mut out.0),
                        Some(Err(e)) => panic!("a tick failed at {}: {e}", self.now),
                        None => unreachable!("a tick was due"),
                    }
                }
                _ => {
                    self.now = until;
                    return Sent(sent);
                }
            }
        }
        panic!("the game scheduled more than 1,000,000 ticks before {until}");
    }

    /// Runs one tick now if one is due (`None` when [`Game::next_tick_at`] is later or
    /// unset).
    pub fn tick(&mut self) -> Option<Result<Sent, String>> {
        let scheduled = self.next_tick_at.filter(|due| *due <= self.now)?;
        let tick = Tick {
            scheduled,
            now: self.now,
        };
        let applied = DynGame::tick(&self.game, self.match_id, &self.config, &self.state, tick);
        Some(self.take(applied))
    }

    /// Sets the clock (it may not go backwards) without running ticks.
    ///
    /// # Panics
    /// When `now` is earlier than the current time.
    pub fn set_now(&mut self, now: DateTime<Utc>) {
        assert!(now >= self.now, "the clock does not go backwards");
        self.now = now;
    }

    /// The state, as the game's type (read back from its stored JSON).
    pub fn state(&self) -> G::State {
        G::State::deserialize(&self.state).expect("the stored state parses")
    }

    /// The state as stored in `matches.state`.
    pub fn state_json(&self) -> &Value {
        &self.state
    }

    /// The config as stored in `matches.config`.
    pub fn config_json(&self) -> &Value {
        &self.config
    }

    /// `matches.status`.
    pub fn status(&self) -> &'static str {
        self.status
    }

    /// `matches.next_tick_at`.
    pub fn next_tick_at(&self) -> Option<DateTime<Utc>> {
        self.next_tick_at
    }

    /// Whether the match has ended ([`Game::is_over`]).
    pub fn is_over(&self) -> bool {
        self.over
    }

    /// The match's clock.
    pub fn now(&self) -> DateTime<Utc> {
        self.now
    }

    /// The match's id (random per match).
    pub fn match_id(&self) -> MatchId {
        self.match_id
    }

    fn take(&mut self, applied: Applied) -> Result<Sent, String> {
        match applied.next {
            Some((state, status, next_tick_at)) => {
                self.state = state;
                self.status = status;
                self.next_tick_at = next_tick_at;
                self.over = applied.over;
                Ok(Sent(applied.out))
            }
            None => Err(applied
                .error
                .unwrap_or_else(|| "nothing was applied".to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::game::noop::Noop;
    use crate::game::tictactoe::TicTacToe;
    use serde_json::json;

    #[test]
    fn a_bad_config_is_refused_with_the_clients_text() {
        let err = TestMatch::new(TicTacToe, json!({"turn_seconds": "soon"}))
            .err()
            .expect("a string is not a number of seconds");
        assert!(!err.is_empty());
    }

    #[test]
    fn advance_runs_due_ticks_at_their_scheduled_time() {
        let mut m = TestMatch::new(Noop, json!({"hz": 10})).expect("noop takes hz");
        let first = m.next_tick_at().expect("noop ticks");
        m.advance(Duration::from_millis(1000));
        let next = m.next_tick_at().expect("still ticking");
        assert!(next > first, "ticks moved the schedule on");
        assert!(next > m.now(), "every due tick ran");
        assert_eq!(m.now(), t0() + chrono::Duration::seconds(1));
    }

    #[test]
    fn a_handler_error_leaves_the_state_untouched() {
        let mut m = TestMatch::new(TicTacToe, json!({})).expect("defaults");
        let before = m.state_json().clone();
        // `$`-names are the engine's; a client cannot publish one, and the game must not
        // crash on one either way: whatever it answers, a failure changes nothing.
        if m.publish(&client("mallory"), "$bogus", json!(null))
            .is_err()
        {
            assert_eq!(m.state_json(), &before);
        }
    }
}
