//! Pong (game `pong`): the built-in real-time game, two paddles and a ball simulated at
//! 20 Hz on the tickers. It is the proof that the engine carries game loops, and the
//! workload of `postgame bench ticks`.
//!
//! The wire contract (control messages on `control:<id>`, broadcasts on `match:<id>`):
//! - Config: `{"points_to_win": 1..=21, "bot": false}` (defaults shown). With `"bot": true`
//!   a built-in bot holds the right paddle: the first joiner plays left against it and the
//!   game starts at once. The bot follows the ball while it comes its way, at half a
//!   paddle's speed (it moves every other step), so steep shots beat it.
//! - `join` `{}`: the first joiner plays the left paddle, the second the right one, and the
//!   game starts (the ball is served after [`SERVE_STEPS`] steps, 1 s); later joiners, and a
//!   player joining again, spectate: nothing changes and nothing is sent.
//! - `input` `{"dir": -1|0|1}`: the sender's paddle moves up (-1, towards y = 0), stops (0)
//!   or moves down (1) at every step from the next one on, until the next `input`. An
//!   input is not answered nor broadcast by itself: the next tick's `state` shows it. An
//!   `input` from a client without a paddle, or after the end, is ignored (a spectator's
//!   client may send them at frame rate; a reply to each would only be noise); a player's
//!   `input` without a `dir` of -1, 0 or 1 gets `rejected` `bad_request`.
//! - `leave` `{}`: during play the leaver forfeits (`finished`, the other player wins);
//!   while waiting (one seat taken) the match is `abandoned`; otherwise nothing.
//! - Any other name gets `rejected` `unknown_action` on `user:<client>` (`ref` is the
//!   control `msg_id`, as in Tic Tac Toe). Presence inputs change nothing.
//! - Broadcast on `match:<id>`: `state` after every tick (20 per second during play) and
//!   after every change made by a control message; see [`public_state`]. Every `state` is
//!   sent as the channel's latest value (a `latest` frame, [`Delivery::Latest`]: conflated,
//!   not logged), so the 20 Hz stream never grows the message log; the states that matter
//!   later (the match's creation, a join, a point, the end) are also logged as durable
//!   `message`s, so a resuming client replays every score. A client draws the state with
//!   the highest `tick`, whichever frame brought it. `tick` counts the
//!   simulation steps (game time = `tick` × 50 ms); `at` is when the frame was due (the
//!   tick's scheduled time, or the handler's `now`), so a client (or the benchmark)
//!   compares it with the message's `ts` to see how late the tick ran.
//! - A match still `waiting` [`WAITING_TIMEOUT_SECONDS`] after its creation is abandoned.
//!
//! The field is [`WIDTH`] × [`HEIGHT`] integer units, y growing downwards; the paddles'
//! faces are [`PADDLE_INSET`] units from the goal lines, the ball is a point. Integer
//! physics keeps every step exact, so replays and tests are bit-for-bit reproducible.
//!
//! Each step: the paddles move ([`PADDLE_SPEED`], clamped to the field), then the ball
//! (unless it waits to be served): it bounces off the top and bottom walls, and off a
//! paddle whose face it crosses within [`PADDLE_HALF`] of the paddle's centre, leaving
//! faster (`|vx|` + 1 up to [`MAX_SPEED_X`]) and at an angle set by where it hit (`vy` =
//! offset / 4, never 0, at most [`MAX_SPEED_Y`]). A ball past a goal line scores for the
//! other side; the ball is then served from the centre, towards each side in turn (the
//! first serve goes right). At `points_to_win` the match is `finished` and off the clock.
//!
//! Everything is a pure function of (config, state, input, time): the engine hands in the
//! database's clock, and the tick handler receives the scheduled and the actual time.

use std::ops::{Index, IndexMut};

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

#[cfg(doc)]
use super::Delivery;
use super::{Cx, Game, GameError, Input, Outgoing, Tick, To};
use crate::ids::ClientId;

/// The name clients use in `POST /v1/matches`.
pub const NAME: &str = "pong";
/// Simulation steps per second.
pub const HZ: u32 = 20;
/// The fixed timestep, in microseconds (50 ms).
pub const PERIOD_US: i64 = 1_000_000 / HZ as i64;
/// Default of [`Config::points_to_win`].
pub const DEFAULT_POINTS_TO_WIN: u32 = 5;
/// Smallest accepted `points_to_win`.
pub const MIN_POINTS_TO_WIN: u32 = 1;
/// Largest accepted `points_to_win`.
pub const MAX_POINTS_TO_WIN: u32 = 21;
/// How long a match may stay `waiting` before it is abandoned.
pub const WAITING_TIMEOUT_SECONDS: i64 = 10 * 60;

/// Width of the field: the left goal line is x = 0, the right one x = `WIDTH`.
pub const WIDTH: i32 = 200;
/// Height of the field: the walls are y = 0 and y = `HEIGHT`.
pub const HEIGHT: i32 = 120;
/// Half the height of a paddle: a paddle at `y` covers `y - PADDLE_HALF ..= y + PADDLE_HALF`.
pub const PADDLE_HALF: i32 = 12;
/// Distance from a goal line to its paddle's face.
pub const PADDLE_INSET: i32 = 8;
/// How far a moving paddle goes per step.
pub const PADDLE_SPEED: i32 = 4;
/// `|vx|` of a served ball, per step.
pub const SERVE_SPEED_X: i32 = 3;
/// Largest `|vx|` (a ball speeds up at every paddle hit).
pub const MAX_SPEED_X: i32 = 6;
/// Largest `|vy|`: below the paddle speed, so a paddle can always follow the ball.
pub const MAX_SPEED_Y: i32 = 3;
/// Steps the ball waits in the centre before it is served (1 s).
pub const SERVE_STEPS: u32 = HZ;
/// The paddle the bot holds.
pub const BOT_SIDE: Side = Side::Right;
/// `vy` of successive serves (by points played so far), so rallies differ.
const SERVE_VY: [i32; 4] = [1, -2, 2, -1];

/// The game itself, registered as [`NAME`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Pong;

/// A side of the field, serialised as `"left"` or `"right"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Left,
    Right,
}

impl Side {
    /// Both sides, left first.
    pub const BOTH: [Side; 2] = [Side::Left, Side::Right];

    /// The opponent's side.
    pub fn other(self) -> Side {
        match self {
            Side::Left => Side::Right,
            Side::Right => Side::Left,
        }
    }
}

/// One value per side, serialised as `{"left": …, "right": …}` and indexed by [`Side`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sides<T> {
    pub left: T,
    pub right: T,
}

impl<T> Index<Side> for Sides<T> {
    type Output = T;

    fn index(&self, side: Side) -> &T {
        match side {
            Side::Left => &self.left,
            Side::Right => &self.right,
        }
    }
}

impl<T> IndexMut<Side> for Sides<T> {
    fn index_mut(&mut self, side: Side) -> &mut T {
        match side {
            Side::Left => &mut self.left,
            Side::Right => &mut self.right,
        }
    }
}

/// The lifecycle of a match: the word stored in `matches.status` and broadcast.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Fewer than two players have joined.
    Waiting,
    /// The game loop runs.
    Playing,
    /// A side reached `points_to_win`, or a player left during play.
    Finished,
    /// Closed without a game: every player left while waiting, or nobody came.
    Abandoned,
}

impl Status {
    /// The protocol word.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Waiting => "waiting",
            Status::Playing => "playing",
            Status::Finished => "finished",
            Status::Abandoned => "abandoned",
        }
    }

    /// Whether the match has ended for good (`finished` or `abandoned`).
    pub fn is_over(self) -> bool {
        matches!(self, Status::Finished | Status::Abandoned)
    }
}

/// The match configuration, validated by [`Config::parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Points that win the match (1..=21, default 5).
    pub points_to_win: u32,
    /// Whether a built-in bot holds the right paddle (default false).
    pub bot: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            points_to_win: DEFAULT_POINTS_TO_WIN,
            bot: false,
        }
    }
}

impl Config {
    /// Parses a client-supplied config: `null` or an object whose only field is
    /// `points_to_win`, an integer from 1 to 21 (absent means 5). The error is a sentence
    /// for the client.
    pub fn parse(raw: &Value) -> Result<Self, String> {
        let mut config = Self::default();
        let fields = match raw {
            Value::Null => return Ok(config),
            Value::Object(fields) => fields,
            other => {
                return Err(format!(
                    "the pong config must be a JSON object such as {{\"points_to_win\": 5}}, \
                     not {other}"
                ))
            }
        };
        for (key, value) in fields {
            if key == "bot" {
                config.bot = value
                    .as_bool()
                    .ok_or_else(|| format!("\"bot\" must be true or false, not {value}"))?;
                continue;
            }
            if key != "points_to_win" {
                return Err(format!(
                    "unknown pong config field {key:?}: the fields are \"points_to_win\" and \
                     \"bot\""
                ));
            }
            config.points_to_win = value
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| (MIN_POINTS_TO_WIN..=MAX_POINTS_TO_WIN).contains(n))
                .ok_or_else(|| {
                    format!(
                        "\"points_to_win\" must be an integer from {MIN_POINTS_TO_WIN} to \
                         {MAX_POINTS_TO_WIN}, not {value}"
                    )
                })?;
        }
        Ok(config)
    }
}

/// The ball: a point with a velocity in units per step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ball {
    pub x: i32,
    pub y: i32,
    pub vx: i32,
    pub vy: i32,
}

/// The stored state of one match (JSONB). Field names are part of the stored format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub status: Status,
    /// Who holds each paddle.
    pub players: Sides<Option<ClientId>>,
    /// The centre y of each paddle, within `PADDLE_HALF..=HEIGHT - PADDLE_HALF`.
    pub paddles: Sides<i32>,
    /// Each paddle's direction from its player's latest `input`: -1, 0 or 1.
    pub dirs: Sides<i8>,
    pub ball: Ball,
    /// Steps the ball still waits in the centre before it moves (0 in a rally).
    pub serve_in: u32,
    pub score: Sides<u32>,
    /// Copied from [`Config::points_to_win`] at creation.
    pub points_to_win: u32,
    pub winner: Option<Side>,
    /// Simulation steps so far.
    pub tick: u64,
    /// Steps the lateness policy dropped (see [`plan_tick`]).
    pub dropped: u64,
    /// When the next step is due; only while `playing`.
    pub next_tick: Option<DateTime<Utc>>,
    /// When the match was created (a `waiting` match is abandoned after a timeout).
    pub created_at: DateTime<Utc>,
    /// Whether the built-in bot holds the right paddle ([`Config::bot`]).
    #[serde(default)]
    pub bot: bool,
}

impl State {
    /// A new match: `waiting`, paddles and ball in the centre.
    pub fn new(config: &Config, now: DateTime<Utc>) -> Self {
        Self {
            status: Status::Waiting,
            players: Sides::default(),
            paddles: Sides {
                left: HEIGHT / 2,
                right: HEIGHT / 2,
            },
            dirs: Sides::default(),
            ball: Ball {
                x: WIDTH / 2,
                y: HEIGHT / 2,
                vx: 0,
                vy: 0,
            },
            serve_in: 0,
            score: Sides::default(),
            points_to_win: config.points_to_win,
            winner: None,
            tick: 0,
            dropped: 0,
            next_tick: None,
            created_at: now,
            bot: config.bot,
        }
    }

    /// Whether a paddle is taken (by a player, or by the bot).
    fn seated(&self, side: Side) -> bool {
        self.players[side].is_some() || (self.bot && side == BOT_SIDE)
    }

    /// The paddle `client` holds, if any.
    pub fn side_of(&self, client: &ClientId) -> Option<Side> {
        Side::BOTH
            .into_iter()
            .find(|&s| self.players[s].as_ref() == Some(client))
    }
}

impl State {
    /// Checks the rules every reachable state obeys (used by the property tests and the
    /// fuzzers): `Err` names the first one broken.
    pub fn check(&self) -> Result<(), String> {
        let paddles = PADDLE_HALF..=HEIGHT - PADDLE_HALF;
        for side in Side::BOTH {
            if !paddles.contains(&self.paddles[side]) {
                return Err(format!("{side:?} paddle at {}", self.paddles[side]));
            }
            if !(-1..=1).contains(&self.dirs[side]) {
                return Err(format!("{side:?} direction {}", self.dirs[side]));
            }
            if self.score[side] > self.points_to_win {
                return Err(format!(
                    "{side:?} scored {} of {}",
                    self.score[side], self.points_to_win
                ));
            }
        }
        let b = &self.ball;
        if !(0..=WIDTH).contains(&b.x) || !(0..=HEIGHT).contains(&b.y) {
            return Err(format!("ball at ({}, {})", b.x, b.y));
        }
        if b.vx.abs() > MAX_SPEED_X || b.vy.abs() > MAX_SPEED_Y {
            return Err(format!("ball speed ({}, {})", b.vx, b.vy));
        }
        if self.next_tick.is_some() != (self.status == Status::Playing) {
            return Err(format!(
                "next_tick {:?} while {:?}",
                self.next_tick, self.status
            ));
        }
        if self.winner.is_some() && self.status != Status::Finished {
            return Err(format!("a winner while {:?}", self.status));
        }
        Ok(())
    }
}

/// The data of the `state` broadcast; `at` is when the frame was due.
pub fn public_state(state: &State, at: DateTime<Utc>) -> Value {
    json!({
        "status": state.status.as_str(),
        "players": {
            "left": state.players.left.as_ref().map(ClientId::as_str),
            "right": state.players.right.as_ref().map(ClientId::as_str),
        },
        "paddles": state.paddles,
        "ball": state.ball,
        "serve_in": state.serve_in,
        "score": state.score,
        "points_to_win": state.points_to_win,
        "winner": state.winner,
        "tick": state.tick,
        "at": at.to_rfc3339_opts(SecondsFormat::Micros, true),
        "bot": state.bot.then_some(BOT_SIDE),
    })
}

/// Sends the state as the channel's latest value, and also to the durable log when
/// `logged` (a change worth replaying: a join, a point, the end).
fn broadcast(state: &State, at: DateTime<Utc>, logged: bool, out: &mut Vec<Outgoing>) {
    let data = public_state(state, at);
    if logged {
        out.push(Outgoing::new(To::Match, "state", data.clone()));
    }
    out.push(Outgoing::latest(To::Match, "state", data));
}

/// The bot's direction for the next step: towards the ball while it comes its way (past
/// the centre line), back to the centre otherwise, and only every other step.
fn bot_dir(state: &State) -> i8 {
    if state.tick % 2 == 1 {
        return 0;
    }
    let ball = &state.ball;
    let target = if ball.vx > 0 && ball.x >= WIDTH / 2 && state.serve_in == 0 {
        ball.y
    } else {
        HEIGHT / 2
    };
    let off = target - state.paddles[BOT_SIDE];
    if off.abs() <= PADDLE_SPEED {
        0
    } else {
        off.signum() as i8
    }
}

/// What one run of the tick handler does, by the lateness policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TickPlan {
    /// Steps to simulate now: 1, or 2 when the next slot is already due (one catch-up).
    pub steps: u32,
    /// Slots that are already due too and are dropped.
    pub dropped: u64,
    /// When the next tick is due: the first slot of the match's 50 ms grid after `now`.
    pub next: DateTime<Utc>,
}

/// The lateness policy: **skip to now, with at most one catch-up step.**
///
/// A tick due at `scheduled` and running at `now` simulates the step of its own slot; if
/// the following slot (`scheduled` + 50 ms) is already due as well, it simulates that one
/// too, and every further slot that is already past is dropped. The next tick is due at
/// the first slot of the grid (`scheduled` + k × 50 ms) after `now`, so ticks stay on the
/// match's phase and never come in a burst.
///
/// Why: a real-time game shows the present. Replaying a backlog step by step (catch-up)
/// would fast-forward the ball on the players' screens after a stall, and would ask the
/// tickers for more work exactly when they are already behind, which can keep them behind
/// for good. Dropping all of it, though, would make the game lose time at every small
/// jitter (a tick that slips just past the next slot). One catch-up step absorbs that
/// jitter without a visible jump, bounds a tick's work to two steps, and a long stall just
/// pauses the game (time dilation) instead of replaying it. The dropped slots are counted
/// in [`State::dropped`].
pub fn plan_tick(scheduled: DateTime<Utc>, now: DateTime<Utc>) -> TickPlan {
    let late_us = (now - scheduled)
        .num_microseconds()
        .unwrap_or(i64::MAX)
        .max(0);
    // Slots after `scheduled` that are already due.
    let behind = late_us / PERIOD_US;
    let next = PERIOD_US
        .checked_mul(behind + 1)
        .and_then(|us| scheduled.checked_add_signed(Duration::microseconds(us)))
        .unwrap_or(now + Duration::microseconds(PERIOD_US));
    TickPlan {
        steps: if behind >= 1 { 2 } else { 1 },
        dropped: u64::try_from(behind.saturating_sub(1)).unwrap_or(0),
        next,
    }
}

/// Where the ball crosses a paddle's face, the new `vy`: set by the offset from the
/// paddle's centre (-12..=12 → -3..=3, by quarters), never 0 (a level ball between two idle paddles
/// would rally forever), keeping the old direction when the hit is central.
fn english(offset: i32, vy: i32) -> i32 {
    match (offset / 4).clamp(-MAX_SPEED_Y, MAX_SPEED_Y) {
        0 if vy < 0 => -1,
        0 => 1,
        v => v,
    }
}

/// Puts the ball in the centre, to be served after [`SERVE_STEPS`]: towards the right
/// player first, then to each side in turn (so a match between idle players alternates
/// points and lasts; see [`idle_match_steps`]).
fn serve(state: &mut State) {
    let points = state.score.left + state.score.right;
    let receiver = if points % 2 == 0 {
        Side::Right
    } else {
        Side::Left
    };
    state.ball = Ball {
        x: WIDTH / 2,
        y: HEIGHT / 2,
        vx: match receiver {
            Side::Left => -SERVE_SPEED_X,
            Side::Right => SERVE_SPEED_X,
        },
        vy: SERVE_VY[points as usize % SERVE_VY.len()],
    };
    state.serve_in = SERVE_STEPS;
}

/// Simulates one 50 ms step of a match in play: paddles, then the ball. Returns the side
/// that scored, if the ball went past a goal line (the caller scores it).
pub fn step(state: &mut State) -> Option<Side> {
    if state.bot {
        state.dirs[BOT_SIDE] = bot_dir(state);
    }
    state.tick += 1;
    for side in Side::BOTH {
        let y = state.paddles[side] + i32::from(state.dirs[side]) * PADDLE_SPEED;
        state.paddles[side] = y.clamp(PADDLE_HALF, HEIGHT - PADDLE_HALF);
    }
    if state.serve_in > 0 {
        state.serve_in -= 1;
        return None;
    }
    let ball = &mut state.ball;
    let (old_x, mut x, mut y) = (ball.x, ball.x + ball.vx, ball.y + ball.vy);
    if y < 0 {
        y = -y;
        ball.vy = -ball.vy;
    } else if y > HEIGHT {
        y = 2 * HEIGHT - y;
        ball.vy = -ball.vy;
    }
    let (left_face, right_face) = (PADDLE_INSET, WIDTH - PADDLE_INSET);
    let covers = |paddle: i32| (y - paddle).abs() <= PADDLE_HALF;
    if ball.vx < 0 && old_x >= left_face && x < left_face && covers(state.paddles.left) {
        x = 2 * left_face - x;
        ball.vx = (-ball.vx + 1).min(MAX_SPEED_X);
        ball.vy = english(y - state.paddles.left, ball.vy);
    } else if ball.vx > 0 && old_x <= right_face && x > right_face && covers(state.paddles.right) {
        x = 2 * right_face - x;
        ball.vx = -(ball.vx + 1).min(MAX_SPEED_X);
        ball.vy = english(y - state.paddles.right, ball.vy);
    }
    ball.x = x;
    ball.y = y;
    if x < 0 {
        Some(Side::Right)
    } else if x > WIDTH {
        Some(Side::Left)
    } else {
        None
    }
}

/// Scores a point for `scorer`: the match ends at `points_to_win`, otherwise the ball is
/// served again.
fn score(state: &mut State, scorer: Side) {
    state.score[scorer] += 1;
    if state.score[scorer] >= state.points_to_win {
        end(state, Status::Finished, Some(scorer));
    } else {
        serve(state);
    }
}

/// How many steps a match to `points_to_win` lasts when nobody touches a paddle after the
/// joins (every serve is then missed, and the points alternate). `bench ticks` plays such
/// matches and checks with this that they stay in play for the whole run.
pub fn idle_match_steps(points_to_win: u32) -> u64 {
    let mut state = State::new(
        &Config {
            points_to_win,
            ..Config::default()
        },
        DateTime::<Utc>::UNIX_EPOCH,
    );
    state.players = Sides {
        left: ClientId::parse("idle-left"),
        right: ClientId::parse("idle-right"),
    };
    state.status = Status::Playing;
    serve(&mut state);
    while state.status == Status::Playing {
        if let Some(scorer) = step(&mut state) {
            score(&mut state, scorer);
        }
    }
    state.tick
}

/// Ends the match; it leaves the clock.
fn end(state: &mut State, status: Status, winner: Option<Side>) {
    state.status = status;
    state.winner = winner;
    state.next_tick = None;
    state.dirs = Sides::default();
    // The deciding point leaves the ball past a goal line: put it back on the field, at
    // rest, so the final state draws like any other.
    state.ball = Ball {
        x: WIDTH / 2,
        y: HEIGHT / 2,
        vx: 0,
        vy: 0,
    };
}

/// Why a control message was refused: the `reason` of a private `rejected` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// A player's `input` without a `dir` of -1, 0 or 1.
    BadRequest,
    /// A control message name this game does not know.
    UnknownAction,
}

impl Rejection {
    /// The wire code.
    pub fn code(self) -> &'static str {
        match self {
            Rejection::BadRequest => "bad_request",
            Rejection::UnknownAction => "unknown_action",
        }
    }
}

/// `join`: the first free paddle, left first; the second player starts the game.
fn join(state: &mut State, now: DateTime<Utc>, client: &ClientId, out: &mut Vec<Outgoing>) {
    if state.status != Status::Waiting || state.side_of(client).is_some() {
        return;
    }
    let Some(side) = Side::BOTH.into_iter().find(|&s| !state.seated(s)) else {
        return;
    };
    state.players[side] = Some(client.clone());
    if Side::BOTH.into_iter().all(|s| state.seated(s)) {
        state.status = Status::Playing;
        serve(state);
        state.next_tick = Some(now + Duration::microseconds(PERIOD_US));
    }
    broadcast(state, now, true, out);
}

/// `input`: sets the sender's paddle direction. Ignored from non-players and after the end.
fn input(state: &mut State, client: &ClientId, data: &Value) -> Result<(), Rejection> {
    let Some(side) = state.side_of(client) else {
        return Ok(());
    };
    let dir = data
        .get("dir")
        .and_then(Value::as_i64)
        .filter(|d| (-1..=1).contains(d))
        .ok_or(Rejection::BadRequest)?;
    if !state.status.is_over() {
        // -1..=1 always fits an i8.
        state.dirs[side] = dir as i8;
    }
    Ok(())
}

/// `leave`: a player forfeits during play; the only player leaving a waiting match
/// abandons it.
fn leave(state: &mut State, now: DateTime<Utc>, client: &ClientId, out: &mut Vec<Outgoing>) {
    let Some(side) = state.side_of(client) else {
        return;
    };
    match state.status {
        Status::Playing => end(state, Status::Finished, Some(side.other())),
        Status::Waiting => end(state, Status::Abandoned, None),
        Status::Finished | Status::Abandoned => return,
    }
    broadcast(state, now, true, out);
}

impl Game for Pong {
    type Config = Config;
    type State = State;

    fn name(&self) -> &'static str {
        NAME
    }

    fn config(&self, raw: &Value) -> Result<Config, String> {
        Config::parse(raw)
    }

    fn create(&self, cx: &Cx<'_, Config>, out: &mut Vec<Outgoing>) -> State {
        let state = State::new(cx.config, cx.now);
        broadcast(&state, cx.now, true, out);
        state
    }

    fn handle(
        &self,
        cx: &Cx<'_, Config>,
        state: &mut State,
        input_: &Input,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), GameError> {
        let Input::Client {
            msg_id,
            client,
            name,
            data,
        } = input_
        else {
            // Presence: Pong has no reconnect rules, the game just goes on.
            return Ok(());
        };
        let result = match name.as_str() {
            "join" => {
                join(state, cx.now, client, out);
                Ok(())
            }
            "input" => input(state, client, data),
            "leave" => {
                leave(state, cx.now, client, out);
                Ok(())
            }
            _ => Err(Rejection::UnknownAction),
        };
        if let Err(reason) = result {
            out.push(Outgoing::new(
                To::User(client.clone()),
                "rejected",
                json!({ "reason": reason.code(), "ref": msg_id }),
            ));
        }
        Ok(())
    }

    /// While playing: simulates the step of the scheduled slot (plus at most one catch-up
    /// step, see [`plan_tick`]), reschedules on the 50 ms grid and broadcasts the state.
    /// While waiting: abandons the match once the waiting timeout has passed.
    fn tick(
        &self,
        _cx: &Cx<'_, Config>,
        state: &mut State,
        tick: Tick,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), GameError> {
        match state.status {
            Status::Playing => {}
            Status::Waiting => {
                if tick.now >= waiting_deadline(state) {
                    end(state, Status::Abandoned, None);
                    broadcast(state, tick.now, true, out);
                }
                return Ok(());
            }
            Status::Finished | Status::Abandoned => return Ok(()),
        }
        let plan = plan_tick(tick.scheduled, tick.now);
        let score_before = state.score;
        for _ in 0..plan.steps {
            if let Some(scorer) = step(state) {
                score(state, scorer);
                if state.status.is_over() {
                    break;
                }
            }
        }
        if state.status == Status::Playing {
            state.dropped += plan.dropped;
            state.next_tick = Some(plan.next);
        }
        broadcast(state, tick.scheduled, state.score != score_before, out);
        Ok(())
    }

    fn status(&self, state: &State) -> &'static str {
        state.status.as_str()
    }

    fn is_over(&self, state: &State) -> bool {
        state.status.is_over()
    }

    fn next_tick_at(&self, state: &State) -> Option<DateTime<Utc>> {
        match state.status {
            Status::Playing => state.next_tick,
            Status::Waiting => Some(waiting_deadline(state)),
            Status::Finished | Status::Abandoned => None,
        }
    }
    /// `{"open_seats": n, "bot": bool}`: the paddles a `join` would still take (0 once the
    /// game started) and whether the bot holds one.
    fn label(&self, state: &State) -> Option<Value> {
        let open = match state.status {
            Status::Waiting => Side::BOTH.into_iter().filter(|&s| !state.seated(s)).count(),
            _ => 0,
        };
        Some(json!({ "open_seats": open, "bot": state.bot }))
    }
}

fn waiting_deadline(state: &State) -> DateTime<Utc> {
    state.created_at + Duration::seconds(WAITING_TIMEOUT_SECONDS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::game::testkit::{id, t0};
    use crate::game::{Delivery, Registry};
    use crate::ids::MatchId;

    fn ms(n: i64) -> Duration {
        Duration::milliseconds(n)
    }

    /// Through the public test kit (the engine's JSON round trip, ticks at their scheduled
    /// times): an idle match ends after exactly the steps `idle_match_steps` counts, with a
    /// latest-delivered `state` per tick.
    #[test]
    fn an_idle_match_ends_on_the_test_kit_clock_after_its_counted_steps() {
        use crate::testkit::TestMatch;

        let mut m = TestMatch::new(Pong, json!({"points_to_win": 1})).expect("a valid config");
        m.publish(&id("alice"), "join", json!({}))
            .expect("join applies");
        m.publish(&id("bob"), "join", json!({}))
            .expect("join applies");
        assert_eq!(m.status(), "playing");
        let first = m.next_tick_at().expect("on the clock");
        let steps = idle_match_steps(1);
        let period = std::time::Duration::from_micros(PERIOD_US as u64);
        // Up to just before the last step's tick: still playing.
        let until_last = first + ms(50) * i32::try_from(steps - 1).expect("a short match");
        let sent = m.advance((until_last - m.now()).to_std().expect("ahead") - period / 2);
        assert_eq!(m.status(), "playing");
        assert_eq!(m.state().tick, steps - 1);
        assert!(sent
            .0
            .iter()
            .any(|o| o.name == "state" && o.delivery == Delivery::Latest));
        let sent = m.advance(period);
        assert_eq!(m.status(), "finished");
        assert!(m.is_over());
        assert!(sent.to_match("state").is_some());
        assert_eq!(m.next_tick_at(), None);
    }

    /// A match driven by inputs and ticks at an injected clock.
    struct Harness {
        config: Config,
        state: State,
        now: DateTime<Utc>,
        last_msg_id: i64,
    }

    impl Harness {
        fn new(points_to_win: u32) -> Self {
            let config = Config {
                points_to_win,
                ..Config::default()
            };
            let mut out = Vec::new();
            let state = Pong.create(&cx(&config, t0()), &mut out);
            assert!(logged(&out), "create announces the match, logged");
            Self {
                config,
                state,
                now: t0(),
                last_msg_id: 0,
            }
        }

        /// alice (left) and bob (right) are playing; the ball is still to be served.
        fn playing(points_to_win: u32) -> Self {
            let mut h = Self::new(points_to_win);
            h.send("alice", "join", json!({}));
            h.send("bob", "join", json!({}));
            assert_eq!(h.state.status, Status::Playing);
            h
        }

        /// Playing, with the ball at `ball` and in play (served).
        fn rally(ball: Ball) -> Self {
            let mut h = Self::playing(5);
            h.state.serve_in = 0;
            h.state.ball = ball;
            h
        }

        fn send(&mut self, client: &str, name: &str, data: Value) -> Vec<Outgoing> {
            self.last_msg_id += 1;
            let input = Input::Client {
                msg_id: self.last_msg_id,
                client: id(client),
                name: name.to_owned(),
                data,
            };
            let mut out = Vec::new();
            Pong.handle(
                &cx(&self.config, self.now),
                &mut self.state,
                &input,
                &mut out,
            )
            .expect("handlers never fail on game outcomes");
            out
        }

        /// Runs the tick due now (at `next_tick_at`), `late` after its due time.
        fn tick_late(&mut self, late: Duration) -> Vec<Outgoing> {
            let scheduled = Pong.next_tick_at(&self.state).expect("on the clock");
            self.now = scheduled + late;
            let mut out = Vec::new();
            Pong.tick(
                &cx(&self.config, self.now),
                &mut self.state,
                Tick {
                    scheduled,
                    now: self.now,
                },
                &mut out,
            )
            .expect("ticks never fail");
            out
        }

        fn tick(&mut self) -> Vec<Outgoing> {
            self.tick_late(Duration::zero())
        }
    }

    fn cx(config: &Config, now: DateTime<Utc>) -> Cx<'_, Config> {
        Cx {
            match_id: MatchId::new_random(),
            config,
            now,
        }
    }

    /// The state a step broadcast: exactly one latest `state` to the match channel, and
    /// at most one logged copy of the same data.
    fn only_state(out: &[Outgoing]) -> &Value {
        assert!(!out.is_empty() && out.len() <= 2, "{out:?}");
        for o in out {
            assert_eq!((&o.to, o.name.as_str()), (&To::Match, "state"));
        }
        let latest = out.last().expect("not empty");
        assert_eq!(latest.delivery, Delivery::Latest, "{out:?}");
        if let [logged, _] = out {
            assert_eq!(logged.delivery, Delivery::Log);
            assert_eq!(logged.data, latest.data);
        }
        &latest.data
    }

    /// Whether the step also logged its state.
    fn logged(out: &[Outgoing]) -> bool {
        only_state(out);
        out.len() == 2
    }

    fn rejected(out: &[Outgoing], client: &str) -> String {
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].to, To::User(id(client)));
        assert_eq!(out[0].name, "rejected");
        out[0].data["reason"].as_str().expect("a reason").to_owned()
    }

    #[test]
    fn the_game_is_named_pong_and_ships_with_the_binary() {
        assert_eq!(Game::name(&Pong), "pong");
        assert!(Registry::builtin().get("pong").is_some());
    }

    #[test]
    fn the_config_is_points_to_win_from_1_to_21_defaulting_to_5() {
        for (raw, points) in [
            (Value::Null, 5),
            (json!({}), 5),
            (json!({"points_to_win": 1}), 1),
            (json!({"points_to_win": 21}), 21),
        ] {
            assert_eq!(
                Config::parse(&raw),
                Ok(Config {
                    points_to_win: points,
                    bot: false
                }),
                "{raw}"
            );
        }
        for bad in [
            json!({"points_to_win": 0}),
            json!({"points_to_win": 22}),
            json!({"points_to_win": -1}),
            json!({"points_to_win": 2.5}),
            json!({"points_to_win": "5"}),
            json!({"points_to_win": 4294967301_u64}),
            json!({"speed": 2}),
            json!([5]),
            json!("fast"),
        ] {
            let e = Config::parse(&bad).expect_err("refused");
            assert!(e.contains("points_to_win"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_new_match_waits_for_two_players_and_announces_itself() {
        let h = Harness::new(5);
        assert_eq!(h.state.status, Status::Waiting);
        assert_eq!(Pong.status(&h.state), "waiting");
        assert!(!Pong.is_over(&h.state));
        assert_eq!(
            Pong.next_tick_at(&h.state),
            Some(t0() + Duration::seconds(WAITING_TIMEOUT_SECONDS))
        );
        let mut out = Vec::new();
        Pong.create(&cx(&h.config, t0()), &mut out);
        let data = only_state(&out);
        assert_eq!(data["status"], "waiting");
        assert_eq!(data["players"], json!({"left": null, "right": null}));
        assert_eq!(data["paddles"], json!({"left": 60, "right": 60}));
        assert_eq!(data["ball"], json!({"x": 100, "y": 60, "vx": 0, "vy": 0}));
        assert_eq!(data["score"], json!({"left": 0, "right": 0}));
        assert_eq!(data["points_to_win"], 5);
        assert_eq!(data["winner"], Value::Null);
        assert_eq!(data["tick"], 0);
        assert_eq!(data["at"], "2030-01-02T03:04:05.000000Z");
    }

    #[test]
    fn the_first_joiner_plays_left_and_the_second_right_which_starts_the_game() {
        let mut h = Harness::new(5);
        let data = only_state(&h.send("alice", "join", json!({}))).clone();
        assert_eq!(data["players"], json!({"left": "alice", "right": null}));
        assert_eq!(data["status"], "waiting");
        h.now = t0() + ms(1234);
        let data = only_state(&h.send("bob", "join", json!({}))).clone();
        assert_eq!(data["players"], json!({"left": "alice", "right": "bob"}));
        assert_eq!(data["status"], "playing");
        assert_eq!(data["serve_in"], SERVE_STEPS);
        // Served towards the right player, from the centre.
        assert_eq!(data["ball"], json!({"x": 100, "y": 60, "vx": 3, "vy": 1}));
        assert_eq!(Pong.next_tick_at(&h.state), Some(t0() + ms(1284)));
    }

    #[test]
    fn the_label_counts_open_paddles_until_the_game_starts() {
        let mut h = Harness::new(5);
        assert_eq!(
            Pong.label(&h.state),
            Some(json!({"open_seats": 2, "bot": false}))
        );
        h.send("alice", "join", json!({}));
        assert_eq!(
            Pong.label(&h.state),
            Some(json!({"open_seats": 1, "bot": false}))
        );
        h.send("bob", "join", json!({}));
        assert_eq!(
            Pong.label(&h.state),
            Some(json!({"open_seats": 0, "bot": false}))
        );
    }

    #[test]
    fn joining_again_or_joining_a_full_match_spectates_silently() {
        let mut h = Harness::new(5);
        h.send("alice", "join", json!({}));
        let before = h.state.clone();
        assert!(h.send("alice", "join", json!({})).is_empty());
        assert_eq!(h.state, before);
        h.send("bob", "join", json!({}));
        let before = h.state.clone();
        for who in ["alice", "bob", "carol"] {
            assert!(h.send(who, "join", json!({})).is_empty());
        }
        assert_eq!(h.state, before);
    }

    #[test]
    fn an_input_sets_the_direction_and_the_paddle_moves_from_the_next_step() {
        let mut h = Harness::playing(5);
        assert!(h.send("alice", "input", json!({"dir": 1})).is_empty());
        assert!(h.send("bob", "input", json!({"dir": -1})).is_empty());
        assert_eq!(
            h.state.paddles,
            Sides {
                left: 60,
                right: 60
            }
        );
        let data = only_state(&h.tick()).clone();
        assert_eq!(data["paddles"], json!({"left": 64, "right": 56}));
        h.send("alice", "input", json!({"dir": 0}));
        h.tick();
        assert_eq!(
            h.state.paddles,
            Sides {
                left: 64,
                right: 52
            }
        );
    }

    #[test]
    fn inputs_from_non_players_are_ignored_and_bad_ones_from_players_rejected() {
        let mut h = Harness::playing(5);
        let before = h.state.clone();
        for data in [json!({"dir": 1}), json!({"dir": 7}), json!({})] {
            assert!(h.send("carol", "input", data).is_empty());
        }
        assert_eq!(h.state, before);
        for bad in [
            json!({"dir": 2}),
            json!({"dir": -2}),
            json!({"dir": 0.5}),
            json!({"dir": "up"}),
            json!({}),
            json!(null),
        ] {
            let out = h.send("alice", "input", bad.clone());
            assert_eq!(rejected(&out, "alice"), "bad_request", "{bad}");
            assert_eq!(out[0].data["ref"], h.last_msg_id);
        }
        assert_eq!(h.state, before);
        assert_eq!(
            rejected(&h.send("carol", "serve", json!({})), "carol"),
            "unknown_action"
        );
        assert_eq!(h.state, before);
    }

    #[test]
    fn presence_changes_nothing() {
        let mut h = Harness::playing(5);
        let before = h.state.clone();
        let mut out = Vec::new();
        for input in [
            Input::Connected {
                client: id("alice"),
                connection: "c1".into(),
            },
            Input::Disconnected {
                client: id("alice"),
                connection: "c1".into(),
            },
        ] {
            Pong.handle(&cx(&h.config, h.now), &mut h.state, &input, &mut out)
                .expect("never fails");
        }
        assert!(out.is_empty());
        assert_eq!(h.state, before);
    }

    #[test]
    fn paddles_stop_at_the_top_and_bottom_of_the_field() {
        let mut h = Harness::playing(5);
        h.send("alice", "input", json!({"dir": -1}));
        h.send("bob", "input", json!({"dir": 1}));
        let mut seen = Vec::new();
        for _ in 0..15 {
            h.tick();
            seen.push((h.state.paddles.left, h.state.paddles.right));
        }
        assert_eq!(seen[0], (56, 64));
        // 60 → 12 takes 12 steps of 4; then the paddles stay at the walls.
        assert_eq!(seen[11], (PADDLE_HALF, HEIGHT - PADDLE_HALF));
        assert!(seen[11..]
            .iter()
            .all(|&p| p == (PADDLE_HALF, HEIGHT - PADDLE_HALF)));
        // Not a multiple of the speed away: clamped, not overshooting.
        h.state.paddles.left = 14;
        h.tick();
        assert_eq!(h.state.paddles.left, PADDLE_HALF);
    }

    #[test]
    fn the_ball_bounces_off_the_top_and_bottom_walls() {
        let mut s = Harness::rally(Ball {
            x: 100,
            y: 2,
            vx: 3,
            vy: -3,
        })
        .state;
        assert_eq!(step(&mut s), None);
        assert_eq!(
            s.ball,
            Ball {
                x: 103,
                y: 1,
                vx: 3,
                vy: 3
            }
        );
        let mut s = Harness::rally(Ball {
            x: 100,
            y: 118,
            vx: -3,
            vy: 3,
        })
        .state;
        assert_eq!(step(&mut s), None);
        assert_eq!(
            s.ball,
            Ball {
                x: 97,
                y: 119,
                vx: -3,
                vy: -3
            }
        );
        // Exactly on a wall is still inside.
        let mut s = Harness::rally(Ball {
            x: 100,
            y: 3,
            vx: 3,
            vy: -3,
        })
        .state;
        step(&mut s);
        assert_eq!(
            s.ball,
            Ball {
                x: 103,
                y: 0,
                vx: 3,
                vy: -3
            }
        );
    }

    #[test]
    fn the_ball_bounces_off_a_paddle_faster_and_angled_by_where_it_hit() {
        // Left paddle at 60: the ball crosses its face (x = 8) at y = 70, 10 below the
        // centre: mirrored back into the field, |vx| + 1, vy = 10 / 4 = 2.
        let mut s = Harness::rally(Ball {
            x: 10,
            y: 69,
            vx: -3,
            vy: 1,
        })
        .state;
        assert_eq!(step(&mut s), None);
        assert_eq!(
            s.ball,
            Ball {
                x: 9,
                y: 70,
                vx: 4,
                vy: 2
            }
        );
        // Right paddle, hit near its top edge: the ball leaves upwards at the steepest angle.
        let mut s = Harness::rally(Ball {
            x: 190,
            y: 49,
            vx: 5,
            vy: -1,
        })
        .state;
        assert_eq!(step(&mut s), None);
        assert_eq!(
            s.ball,
            Ball {
                x: 189,
                y: 48,
                vx: -6,
                vy: -3
            }
        );
        // At the top speed, vx stays there.
        let mut s = Harness::rally(Ball {
            x: 12,
            y: 60,
            vx: -6,
            vy: 1,
        })
        .state;
        step(&mut s);
        assert_eq!(s.ball.vx, MAX_SPEED_X);
        // A central hit keeps the ball's vertical direction, never levels it.
        let mut s = Harness::rally(Ball {
            x: 10,
            y: 61,
            vx: -3,
            vy: -1,
        })
        .state;
        step(&mut s);
        assert_eq!(
            s.ball,
            Ball {
                x: 9,
                y: 60,
                vx: 4,
                vy: -1
            }
        );
        let mut s = Harness::rally(Ball {
            x: 10,
            y: 59,
            vx: -3,
            vy: 1,
        })
        .state;
        step(&mut s);
        assert_eq!(s.ball.vy, 1);
        // The paddle's edge still counts; one unit beyond does not.
        let mut s = Harness::rally(Ball {
            x: 10,
            y: 71,
            vx: -3,
            vy: 1,
        })
        .state;
        step(&mut s);
        assert_eq!(s.ball.vx, 4, "y = 72 is the paddle's lower edge");
        let mut s = Harness::rally(Ball {
            x: 10,
            y: 72,
            vx: -3,
            vy: 1,
        })
        .state;
        step(&mut s);
        assert_eq!(
            s.ball,
            Ball {
                x: 7,
                y: 73,
                vx: -3,
                vy: 1
            },
            "missed"
        );
    }

    #[test]
    fn a_ball_already_behind_a_paddle_is_not_bounced_back() {
        // Past the face, moving on to the goal line: no bounce from behind.
        let mut s = Harness::rally(Ball {
            x: 6,
            y: 60,
            vx: -3,
            vy: 1,
        })
        .state;
        assert_eq!(step(&mut s), None);
        assert_eq!(
            s.ball,
            Ball {
                x: 3,
                y: 61,
                vx: -3,
                vy: 1
            }
        );
        assert_eq!(step(&mut s), None, "on the goal line is still in");
        assert_eq!(s.ball.x, 0);
        assert_eq!(step(&mut s), Some(Side::Right));
    }

    #[test]
    fn a_miss_scores_for_the_other_side_and_the_next_serve_alternates() {
        let mut h = Harness::rally(Ball {
            x: 2,
            y: 10,
            vx: -3,
            vy: 1,
        });
        let data = only_state(&h.tick()).clone();
        assert_eq!(data["score"], json!({"left": 0, "right": 1}));
        assert_eq!(data["status"], "playing");
        assert_eq!(data["serve_in"], SERVE_STEPS);
        // Second serve of the match: towards the left, vy from the serve sequence.
        assert_eq!(data["ball"], json!({"x": 100, "y": 60, "vx": -3, "vy": -2}));
        // The third goes right again, whoever scored.
        let mut h = Harness::rally(Ball {
            x: 198,
            y: 110,
            vx: 3,
            vy: -1,
        });
        h.state.score.right = 1;
        h.tick();
        assert_eq!(h.state.score, Sides { left: 1, right: 1 });
        assert_eq!(
            h.state.ball,
            Ball {
                x: 100,
                y: 60,
                vx: 3,
                vy: 2
            }
        );
    }

    #[test]
    fn the_ball_waits_in_the_centre_until_it_is_served() {
        let mut h = Harness::playing(5);
        h.send("alice", "input", json!({"dir": 1}));
        for n in 1..=SERVE_STEPS {
            h.tick();
            assert_eq!((h.state.ball.x, h.state.ball.y), (100, 60), "step {n}");
            assert_eq!(h.state.serve_in, SERVE_STEPS - n);
        }
        assert_eq!(h.state.paddles.left, 108, "the paddles move meanwhile");
        h.tick();
        assert_eq!((h.state.ball.x, h.state.ball.y), (103, 61));
    }

    #[test]
    fn the_match_ends_when_a_side_reaches_points_to_win() {
        let mut h = Harness::playing(2);
        h.state.serve_in = 0;
        h.state.score.left = 1;
        h.state.ball = Ball {
            x: 199,
            y: 60,
            vx: 3,
            vy: 1,
        };
        let data = only_state(&h.tick()).clone();
        assert_eq!(data["status"], "finished");
        assert_eq!(data["winner"], "left");
        assert_eq!(data["score"], json!({"left": 2, "right": 0}));
        assert!(Pong.is_over(&h.state));
        assert_eq!(Pong.status(&h.state), "finished");
        assert_eq!(Pong.next_tick_at(&h.state), None, "off the clock");
        // Nothing moves any more.
        let before = h.state.clone();
        assert!(h.send("alice", "input", json!({"dir": 1})).is_empty());
        assert!(h.send("bob", "leave", json!({})).is_empty());
        assert!(h.send("carol", "join", json!({})).is_empty());
        assert_eq!(h.state, before);
    }

    #[test]
    fn a_catch_up_step_that_ends_the_match_is_the_last() {
        let mut h = Harness::playing(1);
        h.state.serve_in = 0;
        h.state.ball = Ball {
            x: 199,
            y: 60,
            vx: 3,
            vy: 1,
        };
        let tick = h.state.tick;
        h.tick_late(ms(70));
        assert_eq!(h.state.status, Status::Finished);
        assert_eq!(h.state.tick, tick + 1, "no step after the end");
        assert_eq!(h.state.dropped, 0);
    }

    #[test]
    fn leaving_during_play_forfeits_and_leaving_a_waiting_match_abandons_it() {
        let mut h = Harness::playing(5);
        assert!(h.send("carol", "leave", json!({})).is_empty());
        let data = only_state(&h.send("bob", "leave", json!({}))).clone();
        assert_eq!(data["status"], "finished");
        assert_eq!(data["winner"], "left");
        assert_eq!(Pong.next_tick_at(&h.state), None);

        let mut h = Harness::new(5);
        h.send("alice", "join", json!({}));
        assert!(h.send("bob", "leave", json!({})).is_empty(), "not a player");
        assert_eq!(h.state.status, Status::Waiting);
        let data = only_state(&h.send("alice", "leave", json!({}))).clone();
        assert_eq!(data["status"], "abandoned");
        assert!(Pong.is_over(&h.state));
        assert_eq!(Pong.next_tick_at(&h.state), None);
    }

    #[test]
    fn a_match_nobody_completes_is_abandoned_after_the_waiting_timeout() {
        let mut h = Harness::new(5);
        h.send("alice", "join", json!({}));
        let deadline = t0() + Duration::seconds(WAITING_TIMEOUT_SECONDS);
        // An early tick (e.g. a ticker woken by something else) changes nothing.
        let mut out = Vec::new();
        let early = deadline - ms(1);
        Pong.tick(
            &cx(&h.config, early),
            &mut h.state,
            Tick {
                scheduled: early,
                now: early,
            },
            &mut out,
        )
        .expect("never fails");
        assert!(out.is_empty());
        assert_eq!(h.state.status, Status::Waiting);
        let data = only_state(&h.tick_late(ms(300))).clone();
        assert_eq!(data["status"], "abandoned");
        assert_eq!(Pong.next_tick_at(&h.state), None);
    }

    #[test]
    fn every_tick_broadcasts_the_state_stamped_with_its_due_time() {
        let mut h = Harness::playing(5);
        for n in 1..=5u64 {
            let due = Pong.next_tick_at(&h.state).expect("on the clock");
            let out = h.tick_late(ms(3));
            let data = only_state(&out);
            assert_eq!(data["tick"], n);
            assert_eq!(
                data["at"],
                json!(due.to_rfc3339_opts(SecondsFormat::Micros, true))
            );
        }
    }

    #[test]
    fn the_lateness_policy_skips_to_now_with_at_most_one_catch_up_step() {
        let s = t0();
        let p = |n: i64| s + Duration::microseconds(PERIOD_US * n);
        // (lateness, steps, dropped, next)
        for (late, steps, dropped, next) in [
            (ms(0), 1, 0, p(1)),
            (ms(49), 1, 0, p(1)),
            (ms(50), 2, 0, p(2)),
            (ms(99), 2, 0, p(2)),
            (ms(100), 2, 1, p(3)),
            (ms(1_020), 2, 19, p(21)),
            (Duration::days(3650), 2, 6_307_199_999, p(6_307_200_001)),
        ] {
            let plan = plan_tick(s, s + late);
            assert_eq!(
                plan,
                TickPlan {
                    steps,
                    dropped,
                    next
                },
                "{late}"
            );
            assert!(plan.next > s + late, "the next tick is in the future");
        }
        // A clock that went backwards counts as on time.
        assert_eq!(plan_tick(s, s - ms(5)).steps, 1);
        assert_eq!(plan_tick(s, s - ms(5)).next, p(1));
    }

    #[test]
    fn an_on_time_tick_steps_once_and_schedules_the_next_slot() {
        let mut h = Harness::playing(5);
        let first = Pong.next_tick_at(&h.state).expect("on the clock");
        h.tick_late(ms(12));
        assert_eq!(h.state.tick, 1);
        assert_eq!(Pong.next_tick_at(&h.state), Some(first + ms(50)));
    }

    #[test]
    fn late_ticks_catch_up_one_step_drop_the_rest_and_stay_on_the_grid() {
        let mut h = Harness::playing(5);
        let first = Pong.next_tick_at(&h.state).expect("on the clock");
        // 60 ms late: the next slot is due too, so two steps; next on the grid, 40 ms on.
        h.tick_late(ms(60));
        assert_eq!((h.state.tick, h.state.dropped), (2, 0));
        assert_eq!(Pong.next_tick_at(&h.state), Some(first + ms(100)));
        // A 1 s stall: still two steps, 18 slots dropped, back on the grid.
        h.tick_late(ms(1_000));
        assert_eq!((h.state.tick, h.state.dropped), (4, 19));
        assert_eq!(Pong.next_tick_at(&h.state), Some(first + ms(1_150)));
        // On time again: one step per tick.
        h.tick();
        assert_eq!((h.state.tick, h.state.dropped), (5, 19));
        assert_eq!(Pong.next_tick_at(&h.state), Some(first + ms(1_200)));
    }

    #[test]
    fn a_paddle_that_follows_the_ball_never_concedes() {
        // The left player tracks the ball; the right one stands still. Every point goes to
        // the left: the ball's vy is below the paddle speed, and a rally crosses the field
        // in more steps than a paddle needs to cross it.
        let mut h = Harness::playing(MAX_POINTS_TO_WIN);
        for _ in 0..100_000 {
            if h.state.status != Status::Playing {
                break;
            }
            let dir = (h.state.ball.y - h.state.paddles.left).signum();
            h.send("alice", "input", json!({ "dir": dir }));
            h.tick();
        }
        assert_eq!(h.state.status, Status::Finished);
        assert_eq!(h.state.score.right, 0, "{:?}", h.state.score);
        assert_eq!(h.state.winner, Some(Side::Left));
    }

    #[test]
    fn a_match_with_idle_players_alternates_points_and_still_ends() {
        let mut h = Harness::playing(MAX_POINTS_TO_WIN);
        while h.state.status == Status::Playing && h.state.tick < 1_000_000 {
            h.tick();
        }
        assert_eq!(h.state.status, Status::Finished, "{:?}", h.state);
        assert_eq!(
            h.state.score,
            Sides {
                left: 21,
                right: 20
            }
        );
        assert_eq!(h.state.tick, idle_match_steps(MAX_POINTS_TO_WIN));
        // Long enough for a minute of benchmark with its warm-up.
        assert!(
            h.state.tick * PERIOD_US as u64 > 90_000_000,
            "{}",
            h.state.tick
        );
        assert_eq!(idle_match_steps(1), u64::from(SERVE_STEPS) + 34);
    }

    #[test]
    fn the_engine_round_trips_a_match_through_json() {
        let mid = MatchId::new_random();
        let created = crate::game::DynGame::create(&Pong, mid, &json!({"points_to_win": 1}), t0())
            .expect("valid");
        assert_eq!(created.status, "waiting");
        let joins: Vec<Input> = ["alice", "bob"]
            .iter()
            .enumerate()
            .map(|(i, who)| Input::Client {
                msg_id: i as i64 + 1,
                client: id(who),
                name: "join".into(),
                data: json!({}),
            })
            .collect();
        let applied =
            crate::game::DynGame::apply(&Pong, mid, &created.config, &created.state, &joins, t0());
        assert_eq!((applied.applied, applied.error.as_deref()), (2, None));
        assert_eq!(applied.statuses, ["waiting", "playing"]);
        assert!(!applied.over);
        let (state, status, next) = applied.next.expect("applied");
        assert_eq!(status, "playing");
        let scheduled = next.expect("on the clock");
        assert_eq!(scheduled, t0() + ms(50));
        let ticked = crate::game::DynGame::tick(
            &Pong,
            mid,
            &created.config,
            &state,
            Tick {
                scheduled,
                now: scheduled + ms(4),
            },
        );
        let (state, _, next) = ticked.next.expect("ticked");
        assert_eq!(state["tick"], 1);
        assert_eq!(next, Some(scheduled + ms(50)));
        assert_eq!(
            ticked.out.len(),
            1,
            "a tick without a point is only a latest value"
        );
        assert_eq!(ticked.out[0].delivery, Delivery::Latest);
        // A forfeit ends it: the engine learns that the match is over.
        let leave = [Input::Client {
            msg_id: 3,
            client: id("bob"),
            name: "leave".into(),
            data: json!({}),
        }];
        let left = crate::game::DynGame::apply(&Pong, mid, &created.config, &state, &leave, t0());
        assert!(left.over);
        assert_eq!(left.next.expect("applied").1, "finished");
    }

    #[test]
    fn only_joins_points_and_the_end_are_logged_every_tick_is_a_latest_value() {
        let mut h = Harness::new(1);
        assert!(logged(&h.send("alice", "join", json!({}))));
        assert!(logged(&h.send("bob", "join", json!({}))));
        let mut logged_ticks = Vec::new();
        while h.state.status == Status::Playing {
            let out = h.tick();
            if logged(&out) {
                logged_ticks.push(only_state(&out).clone());
            }
        }
        // Idle paddles: the one point is the only logged tick, and it ends the match.
        assert_eq!(logged_ticks.len(), 1, "{logged_ticks:?}");
        assert_eq!(logged_ticks[0]["status"], "finished");
        assert!(h.state.tick > 1);
    }

    #[test]
    fn the_bot_config_seats_a_bot_on_the_right_and_the_first_joiner_starts_the_game() {
        assert_eq!(
            Config::parse(&json!({"bot": true})),
            Ok(Config {
                points_to_win: DEFAULT_POINTS_TO_WIN,
                bot: true
            })
        );
        assert!(Config::parse(&json!({"bot": 1})).is_err());
        let config = Config::parse(&json!({"bot": true, "points_to_win": 3})).expect("valid");
        let mut out = Vec::new();
        let mut h = Harness::new(3);
        h.state = Pong.create(&cx(&config, t0()), &mut out);
        assert_eq!(only_state(&out)["bot"], "right");
        let out = h.send("alice", "join", json!({}));
        assert_eq!(h.state.status, Status::Playing);
        assert_eq!(h.state.side_of(&id("alice")), Some(Side::Left));
        assert_eq!(only_state(&out)["players"]["right"], Value::Null);
        // A second human only spectates, and cannot steer the bot's paddle.
        assert!(h.send("bob", "join", json!({})).is_empty());
        assert_eq!(h.state.side_of(&id("bob")), None);
    }

    #[test]
    fn the_bot_follows_the_ball_at_half_speed_and_can_be_beaten() {
        // The ball comes at the bot, well above its paddle: it moves up every other step.
        let mut h = Harness::rally(Ball {
            x: WIDTH / 2 + 10,
            y: 20,
            vx: 2,
            vy: 0,
        });
        h.state.bot = true;
        let start = h.state.paddles.right;
        for _ in 0..4 {
            h.tick();
        }
        assert_eq!(h.state.paddles.right, start - 2 * PADDLE_SPEED);
        // Going away, it drifts back to the centre.
        h.state.ball = Ball {
            x: WIDTH / 2,
            y: 20,
            vx: -2,
            vy: 0,
        };
        let before = h.state.paddles.right;
        for _ in 0..4 {
            h.tick();
        }
        assert!(h.state.paddles.right > before);
        // A steep ball that starts far from it is out of its reach: the left side scores.
        let mut h = Harness::rally(Ball {
            x: WIDTH / 2 + 20,
            y: 2,
            vx: MAX_SPEED_X,
            vy: 0,
        });
        h.state.bot = true;
        h.state.paddles.right = HEIGHT - PADDLE_HALF;
        while h.state.score == Sides::default() {
            h.tick();
        }
        assert_eq!(h.state.score.left, 1);
    }
}
