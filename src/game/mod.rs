//! Game logic: the [`Game`] trait a user implements, its type-erased form the engine runs
//! ([`DynGame`]), the [`Registry`] of games a binary ships, and the built-in games.
//!
//! Handlers are pure functions of (config, state, input, now): no I/O, no clock, no
//! randomness they do not get from their input. The engine (workers and tickers) loads the
//! state, runs the handler, and commits the new state together with the outgoing messages
//! in one transaction; a handler that errors or panics changes nothing and its input is
//! retried.

#[doc(hidden)]
pub mod limit;
#[doc(hidden)]
pub mod noop;
#[doc(hidden)]
pub mod pong;
#[cfg(test)]
mod testkit;
#[doc(hidden)]
pub mod tictactoe;

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::{ClientId, MatchId};

/// What a handler sees besides its state and input.
#[derive(Debug, Clone, Copy)]
pub struct Cx<'a, C> {
    /// The match being run.
    pub match_id: MatchId,
    /// Its configuration, as [`Game::config`] parsed it at creation.
    pub config: &'a C,
    /// The database's clock when the batch was claimed: the only "now" a handler has.
    pub now: DateTime<Utc>,
}

/// An input to a match, taken from its control queue.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A control message a client published on `control:<match>`.
    Client {
        /// The message's `msg_id` (as acked to the client), for `rejected.ref`.
        msg_id: i64,
        /// Who published it (the token's `sub`).
        client: ClientId,
        /// The message's `name` (never starting with `$`).
        name: String,
        /// The message's `data`, any JSON, as the client sent it: parse it, never trust it.
        data: Value,
    },
    /// One of `client`'s connections subscribed to `match:<match>`.
    Connected {
        /// Whose connection.
        client: ClientId,
        /// The connection's id (a client may have several).
        connection: String,
    },
    /// That connection unsubscribed or went away.
    Disconnected {
        /// Whose connection.
        client: ClientId,
        /// The connection's id, as in [`Input::Connected`].
        connection: String,
    },
}

#[doc(hidden)]
/// Name under which the gateway enqueues a `Connected` input (clients cannot publish names
/// starting with `$`).
pub const PRESENCE_CONNECTED: &str = "$connected";
#[doc(hidden)]
/// Name under which the gateway enqueues a `Disconnected` input.
pub const PRESENCE_DISCONNECTED: &str = "$disconnected";

/// When a tick was due and when it runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tick {
    /// The [`Game::next_tick_at`] this tick runs for.
    pub scheduled: DateTime<Utc>,
    /// The database's clock now (at or after `scheduled`; later when the tickers are
    /// behind): the same as [`Cx::now`].
    pub now: DateTime<Utc>,
}

/// Where an outgoing message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum To {
    /// `match:<this match>`.
    Match,
    /// `user:<client>`: a private reply.
    User(ClientId),
    /// `lobby`.
    Lobby,
}

/// How an outgoing message travels; the game chooses per message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Delivery {
    /// Appended to the durable message log: a gap-free `seq`, replayed on resume, served as
    /// history, kept for the retention. Every turn-based move, every result.
    #[default]
    Log,
    /// Only the newest value per (channel, name) is kept (an unlogged table, no history):
    /// subscribers get the current value when they subscribe and newer ones live, as
    /// `latest` frames, possibly skipping versions. For high-rate state that the next
    /// message supersedes anyway, such as a 20 Hz game's per-tick state.
    Latest,
}

/// A message a handler sends; it is written in the handler's transaction (to the message
/// log, or as the channel's latest value) and broadcast after commit.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// Its channel.
    pub to: To,
    /// The message's `name` (such as `state`, `chat`, `rejected`).
    pub name: String,
    /// The message's `data`.
    pub data: Value,
    /// Logged or latest-only.
    pub delivery: Delivery,
}

impl Outgoing {
    /// A message for the durable log ([`Delivery::Log`]).
    pub fn new(to: To, name: &str, data: Value) -> Self {
        Self {
            to,
            name: name.to_owned(),
            data,
            delivery: Delivery::Log,
        }
    }

    /// A latest value ([`Delivery::Latest`]): superseded by the next one of the same name on
    /// the same channel.
    pub fn latest(to: To, name: &str, data: Value) -> Self {
        Self {
            delivery: Delivery::Latest,
            ..Self::new(to, name, data)
        }
    }
}

/// The error of a handler that could not process its input (a bug or an impossible state,
/// not a rejected move: a rejection is an ordinary outgoing message). The input is retried
/// with backoff and then dead-lettered with this text.
pub type GameError = anyhow::Error;

/// A game, in the spirit of Nakama's match handler: what you implement (see the crate's
/// guide for a complete one, and [`crate::testkit`] to test it).
///
/// # Purity and time
///
/// Handlers are pure functions of (config, state, input, [`Cx::now`]): no I/O, no system
/// clock, no thread, no randomness they do not derive from their input. The engine loads
/// the state, runs the handler on a copy, and commits the new state, the status, the
/// schedule and the outgoing messages in one transaction; so a handler that returns `Err`
/// or panics changes nothing (its input is retried with backoff, then dead-lettered), and
/// an input is applied exactly once even when a worker dies mid-way. `now` is the
/// database's clock when the batch was claimed, the same for every input of the batch.
///
/// # Budget
///
/// A step (one input, or one tick) must finish within the handler time limit, **1 s**: a
/// step that overruns fails like a panic (retried, then dead-lettered; a tick is recorded as
/// failed and retried 1 s later). Aim far lower: a worker applies a batch of inputs one
/// after the other, so every millisecond of a handler is a millisecond of latency for the
/// inputs queued behind it, and the state is deserialised and serialised as JSON around
/// every batch, so keep it small (kilobytes, not megabytes).
///
/// # The state's stored shape
///
/// [`Game::State`] is stored as JSONB and read back with serde at the next input, possibly
/// by a newer build of your game after a deploy. Keep old states loadable: give new fields
/// `#[serde(default)]`, never rename or retype a field in place, and for a larger change
/// store a version number and convert old shapes in a `#[serde(from = "…")]` type
/// (docs/GAMES.md shows both). A state that no longer parses fails every input of its
/// match.
pub trait Game: Send + Sync + 'static {
    /// The match configuration, validated at creation and stored with the match.
    type Config: Serialize + DeserializeOwned + Send + Sync;
    /// The match state, stored as JSONB.
    type State: Serialize + DeserializeOwned + Clone + Send;

    /// The name clients use in `POST /v1/matches`.
    fn name(&self) -> &'static str;

    /// Who may create matches of this game over the HTTP API ([`Creation::Anyone`] by
    /// default). A game that could hurt the server in a stranger's hands (the benchmark
    /// game `noop` and its 1000 Hz clocks) declares [`Creation::Admin`].
    fn creation(&self) -> Creation {
        Creation::Anyone
    }

    /// Parses and validates a client-supplied config (`{}` when absent); the error is shown
    /// to the client as a `bad_request`.
    fn config(&self, raw: &Value) -> Result<Self::Config, String>;

    /// The state of a new match, and the messages announcing it.
    fn create(&self, cx: &Cx<'_, Self::Config>, out: &mut Vec<Outgoing>) -> Self::State;

    /// Applies one control input: a client's control message (reject a bad one by sending
    /// a message such as a private `rejected`, not with `Err`), or a change in who is
    /// connected to the match.
    fn handle(
        &self,
        cx: &Cx<'_, Self::Config>,
        state: &mut Self::State,
        input: &Input,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), GameError>;

    /// Advances the match's clock: called by a ticker at or after [`Game::next_tick_at`]
    /// (possibly late, possibly more than once for the same time after a failure, so check
    /// what is due against `tick.now`). Does nothing by default.
    fn tick(
        &self,
        _cx: &Cx<'_, Self::Config>,
        _state: &mut Self::State,
        _tick: Tick,
        _out: &mut Vec<Outgoing>,
    ) -> Result<(), GameError> {
        Ok(())
    }

    /// The lifecycle word stored in `matches.status` and shown in the lobby.
    fn status(&self, state: &Self::State) -> &'static str;

    /// When the match next needs [`Game::tick`], if ever. A pure function of the state, so
    /// every handler keeps the schedule right without thinking about it.
    fn next_tick_at(&self, _state: &Self::State) -> Option<DateTime<Utc>> {
        None
    }

    /// Whether the match has ended for good (Tic Tac Toe: `won`, `draw`, `abandoned`). The
    /// engine stamps `matches.ended_at` when a step makes this true, clears it when a step
    /// makes it false again (a rematch), and the tickers delete matches ended longer than
    /// the retention ago. Never, by default.
    fn is_over(&self, _state: &Self::State) -> bool {
        false
    }

    /// The match's label: a small JSON object derived from the state (open seats, a mode,
    /// a map) that `GET /v1/matches?label=…` filters on, stored in `matches.label` in the
    /// same statement as the state. At most [`MAX_LABEL_BYTES`] serialised; a larger one,
    /// or one that is not an object, is stored as `{}` (and logged). None (`{}`) by
    /// default.
    fn label(&self, _state: &Self::State) -> Option<Value> {
        None
    }

    /// How many players the matchmaker (`POST /v1/matchmaker`) puts in one match of this
    /// game: that many tickets are paired into a new match, and each player's `join` is
    /// applied to it, in ticket order, before anyone hears of it. Two by default; clamped
    /// to 1..=[`MAX_PLAYERS_PER_MATCH`].
    fn players_per_match(&self) -> usize {
        2
    }
}

/// Most players the matchmaker puts in one match ([`Game::players_per_match`]).
pub const MAX_PLAYERS_PER_MATCH: usize = 64;

/// Largest label a match may carry, serialised ([`Game::label`]).
pub const MAX_LABEL_BYTES: usize = 1024;

/// A game's label made fit to store: an object of at most [`MAX_LABEL_BYTES`], else `{}`.
fn bounded_label(game: &str, label: Option<Value>) -> Value {
    match label {
        None => Value::Object(Default::default()),
        Some(v @ Value::Object(_)) if v.to_string().len() <= MAX_LABEL_BYTES => v,
        Some(v) => {
            tracing::warn!(
                game,
                bytes = v.to_string().len(),
                "a label must be a JSON object of at most {MAX_LABEL_BYTES} bytes; storing {{}}"
            );
            Value::Object(Default::default())
        }
    }
}

/// Who may create a game's matches through `POST /v1/matches` (matches created in-process
/// with [`crate::matches::match_create`], as benchmarks do, are not checked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Creation {
    /// Any valid token, guests included.
    Anyone,
    /// Only tokens with the `"admin": true` claim (signed by the operator, never a guest's).
    Admin,
    /// Nobody: the game only runs matches created some other way.
    Nobody,
}

#[doc(hidden)]
/// A new match, ready to be inserted.
#[derive(Debug, Clone)]
pub struct Created {
    pub config: Value,
    pub state: Value,
    pub status: &'static str,
    pub next_tick_at: Option<DateTime<Utc>>,
    /// [`Game::label`], bounded.
    pub label: Value,
    pub out: Vec<Outgoing>,
}

#[doc(hidden)]
/// The outcome of running a sequence of inputs (or a tick) on one match.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The new state, status and schedule; `None` when nothing was applied.
    pub next: Option<(Value, &'static str, Option<DateTime<Utc>>)>,
    pub out: Vec<Outgoing>,
    /// How many leading inputs were applied.
    pub applied: usize,
    /// The status after each applied input, so every transition can be announced.
    pub statuses: Vec<&'static str>,
    /// The error of the input right after the applied ones, if processing stopped there.
    pub error: Option<String>,
    /// Whether the new state is over ([`Game::is_over`]); false when nothing was applied.
    pub over: bool,
    /// The new state's label ([`Game::label`], bounded); `None` when nothing was applied.
    pub label: Option<Value>,
}

#[doc(hidden)]
/// The type-erased game the engine runs: JSON in, JSON out, panics caught.
pub trait DynGame: Send + Sync {
    fn name(&self) -> &'static str;
    fn creation(&self) -> Creation;
    /// [`Game::players_per_match`], clamped to 1..=[`MAX_PLAYERS_PER_MATCH`].
    fn players_per_match(&self) -> usize;
    /// Parses and validates a client-supplied config ([`Game::config`]) and returns it in
    /// the stored form, without creating a match (the matchmaker stores it with a ticket).
    fn normalize_config(&self, raw_config: &Value) -> Result<Value, String>;
    fn create(
        &self,
        match_id: MatchId,
        raw_config: &Value,
        now: DateTime<Utc>,
    ) -> Result<Created, String>;
    /// Applies `inputs` in order, stopping at the first that fails.
    fn apply(
        &self,
        match_id: MatchId,
        config: &Value,
        state: &Value,
        inputs: &[Input],
        now: DateTime<Utc>,
    ) -> Applied {
        self.apply_reporting(match_id, config, state, inputs, now, &|_| {})
    }
    /// [`DynGame::apply`], calling `started(i)` before the handler runs input `i` (so a
    /// handler time limit can tell which input overran: [`limit::run_limited`]).
    fn apply_reporting(
        &self,
        match_id: MatchId,
        config: &Value,
        state: &Value,
        inputs: &[Input],
        now: DateTime<Utc>,
        started: &dyn Fn(usize),
    ) -> Applied;
    fn tick(&self, match_id: MatchId, config: &Value, state: &Value, tick: Tick) -> Applied;
}

impl<G: Game> DynGame for G {
    fn name(&self) -> &'static str {
        Game::name(self)
    }

    fn creation(&self) -> Creation {
        Game::creation(self)
    }

    fn players_per_match(&self) -> usize {
        Game::players_per_match(self).clamp(1, MAX_PLAYERS_PER_MATCH)
    }

    fn normalize_config(&self, raw_config: &Value) -> Result<Value, String> {
        let config = catch_unwind(AssertUnwindSafe(|| self.config(raw_config)))
            .map_err(|p| format!("the game panicked reading the config: {}", panic_text(&p)))??;
        to_json(&config)
    }

    fn create(
        &self,
        match_id: MatchId,
        raw_config: &Value,
        now: DateTime<Utc>,
    ) -> Result<Created, String> {
        let config = self.config(raw_config)?;
        let cx = Cx {
            match_id,
            config: &config,
            now,
        };
        let mut out = Vec::new();
        let state = catch_unwind(AssertUnwindSafe(|| Game::create(self, &cx, &mut out)))
            .map_err(|p| format!("the game panicked creating the match: {}", panic_text(&p)))?;
        Ok(Created {
            config: to_json(&config)?,
            state: to_json(&state)?,
            status: self.status(&state),
            next_tick_at: self.next_tick_at(&state),
            label: bounded_label(Game::name(self), self.label(&state)),
            out,
        })
    }

    fn apply_reporting(
        &self,
        match_id: MatchId,
        config: &Value,
        state: &Value,
        inputs: &[Input],
        now: DateTime<Utc>,
        started: &dyn Fn(usize),
    ) -> Applied {
        run_steps(
            self,
            match_id,
            config,
            state,
            inputs.len(),
            now,
            |cx, s, i, out| {
                started(i);
                self.handle(cx, s, &inputs[i], out)
            },
        )
    }

    fn tick(&self, match_id: MatchId, config: &Value, state: &Value, tick: Tick) -> Applied {
        run_steps(
            self,
            match_id,
            config,
            state,
            1,
            tick.now,
            |cx, s, _, out| Game::tick(self, cx, s, tick, out),
        )
    }
}

/// Deserialises once, runs `n` steps (each on a copy, so a failing step leaves no trace),
/// serialises once.
fn run_steps<G: Game>(
    game: &G,
    match_id: MatchId,
    config: &Value,
    state: &Value,
    n: usize,
    now: DateTime<Utc>,
    step: impl Fn(&Cx<'_, G::Config>, &mut G::State, usize, &mut Vec<Outgoing>) -> Result<(), GameError>,
) -> Applied {
    let failed = |error: String| Applied {
        next: None,
        out: Vec::new(),
        applied: 0,
        statuses: Vec::new(),
        error: Some(error),
        over: false,
        label: None,
    };
    // Deserialised from the borrowed JSON trees: no copy of them on the hot path.
    let config = match G::Config::deserialize(config) {
        Ok(c) => c,
        Err(e) => return failed(format!("stored config does not parse: {e}")),
    };
    let mut current = match G::State::deserialize(state) {
        Ok(s) => s,
        Err(e) => return failed(format!("stored state does not parse: {e}")),
    };
    let cx = Cx {
        match_id,
        config: &config,
        now,
    };
    let mut out = Vec::new();
    let mut applied = 0;
    let mut statuses = Vec::new();
    let mut error = None;
    for i in 0..n {
        let mut next = current.clone();
        let mut step_out = Vec::new();
        let result = catch_unwind(AssertUnwindSafe(|| step(&cx, &mut next, i, &mut step_out)));
        match result {
            Ok(Ok(())) => {
                current = next;
                out.append(&mut step_out);
                applied += 1;
                statuses.push(game.status(&current));
            }
            Ok(Err(e)) => {
                error = Some(format!("{e:#}"));
                break;
            }
            Err(panic) => {
                error = Some(format!("handler panicked: {}", panic_text(&panic)));
                break;
            }
        }
    }
    if applied == 0 {
        return Applied {
            next: None,
            out,
            applied,
            statuses,
            error,
            over: false,
            label: None,
        };
    }
    match to_json(&current) {
        Ok(json) => Applied {
            next: Some((json, game.status(&current), game.next_tick_at(&current))),
            out,
            applied,
            statuses,
            error,
            over: game.is_over(&current),
            label: Some(bounded_label(Game::name(game), game.label(&current))),
        },
        Err(e) => failed(e),
    }
}

fn to_json<T: Serialize>(value: &T) -> Result<Value, String> {
    serde_json::to_value(value).map_err(|e| format!("state does not serialise: {e}"))
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_owned()
    }
}

/// The games a binary serves, by name (an [`App`](crate::App) holds one).
///
/// ```
/// use postgame::{Creation, Registry};
///
/// let games = Registry::builtin();
/// assert_eq!(games.names(), ["noop", "pong", "tictactoe"]);
/// // The benchmark game is there for `bench`, but guests cannot create its matches.
/// assert_eq!(games.creation("noop"), Some(Creation::Admin));
/// assert_eq!(games.creation("tictactoe"), Some(Creation::Anyone));
/// ```
#[derive(Clone, Default)]
pub struct Registry {
    games: HashMap<&'static str, Arc<dyn DynGame>>,
    /// Who may create what, where it differs from what the game declares.
    creation: HashMap<&'static str, Creation>,
}

impl Registry {
    /// An empty registry; see [`Registry::builtin`] for the stock games.
    pub fn new() -> Self {
        Self::default()
    }

    /// The games the stock binary ships: Tic Tac Toe, Pong, and the benchmark game `noop`
    /// (only admins may create its matches).
    pub fn builtin() -> Self {
        Self::new()
            .with(tictactoe::TicTacToe)
            .with(noop::Noop)
            .with(pong::Pong)
    }

    /// Adds (or replaces) a game.
    pub fn with<G: Game>(mut self, game: G) -> Self {
        self.games.insert(Game::name(&game), Arc::new(game));
        self
    }

    /// Overrides who may create `name`'s matches (e.g. a benchmark server that lets its
    /// clients create `noop` matches: `.creatable(noop::NAME, Creation::Anyone)`).
    pub fn creatable(mut self, name: &'static str, who: Creation) -> Self {
        self.creation.insert(name, who);
        self
    }

    /// Who may create `name`'s matches on this server.
    pub fn creation(&self, name: &str) -> Option<Creation> {
        let game = self.games.get(name)?;
        Some(self.creation.get(name).copied().unwrap_or(game.creation()))
    }

    #[doc(hidden)]
    pub fn get(&self, name: &str) -> Option<&Arc<dyn DynGame>> {
        self.games.get(name)
    }

    /// The names of the games, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = self.games.keys().copied().collect();
        names.sort_unstable();
        names
    }
}
