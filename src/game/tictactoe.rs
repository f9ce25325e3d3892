//! Tic Tac Toe (game `tictactoe`), the built-in game: its config, its stored state and every
//! rule of the "Tic Tac Toe" section of PROTOCOL.md — seats, moves, wins and draws, `leave`,
//! `rematch`, `chat`, presence, and the three clocks (turn deadline, reconnect grace, idle
//! waiting match).
//!
//! Everything here is a pure function of (state, input, now): the engine hands in the
//! database's clock, and the clock settings are copied into the [`State`] at creation so
//! [`Game::next_tick_at`] needs no config.
//!
//! Invariants kept by every handler (see `settle`):
//! - `turn_deadline` and `disconnected_since` are set only while `playing`;
//! - `waiting_since` is set only while `waiting` and no seated player is connected;
//! - rematch votes exist only after `won` or `draw`;
//! - connections are tracked for every client while `waiting` (a client usually subscribes
//!   to `match:<id>` before it sends `join`, and must then count as connected once seated),
//!   and only for the two seated players afterwards, so spectators never grow the state of a
//!   match in play.
//!
//! A rejected control message changes nothing and sends exactly one private `rejected`
//! message; a handler returns `Err` only for a bug, never for a bad move.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::{Index, IndexMut};

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{Cx, Game, GameError, Input, Outgoing, Tick, To};
use crate::ids::ClientId;

/// The name clients use in `POST /v1/matches`.
pub const NAME: &str = "tictactoe";
/// Default of [`Config::turn_seconds`].
pub const DEFAULT_TURN_SECONDS: u32 = 30;
/// Default of [`Config::reconnect_seconds`].
pub const DEFAULT_RECONNECT_SECONDS: u32 = 30;
/// Smallest accepted value of a config duration, in seconds.
pub const MIN_SECONDS: u32 = 1;
/// Largest accepted value of a config duration, in seconds.
pub const MAX_SECONDS: u32 = 3600;
/// How long a `waiting` match may go without a connected player before it is abandoned.
pub const WAITING_TIMEOUT_SECONDS: i64 = 10 * 60;
/// Longest chat line, in characters (Unicode scalar values, not bytes).
pub const MAX_CHAT_CHARS: usize = 500;
/// Longest display name a `join` may carry, in characters.
pub const MAX_NAME_CHARS: usize = 32;
/// Most clients without a seat whose connections a `waiting` match tracks (so that one
/// who subscribes and then joins counts as connected); connections of further watchers
/// are not recorded, so spectators cannot grow the state without bound.
pub const MAX_WAITING_WATCHERS: usize = 64;
/// Most live connections tracked per client; a client stays connected while any is.
pub const MAX_TRACKED_CONNECTIONS: usize = 8;

/// The 8 lines that win: 3 rows, 3 columns, 2 diagonals, as cell indices (row-major).
pub const LINES: [[usize; 3]; 8] = [
    [0, 1, 2],
    [3, 4, 5],
    [6, 7, 8],
    [0, 3, 6],
    [1, 4, 7],
    [2, 5, 8],
    [0, 4, 8],
    [2, 4, 6],
];

/// The game itself, registered as [`NAME`].
#[derive(Debug, Clone, Copy, Default)]
pub struct TicTacToe;

/// A player's mark, serialised as `"X"` or `"O"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Mark {
    X,
    O,
}

impl Mark {
    /// Both marks, X first.
    pub const BOTH: [Mark; 2] = [Mark::X, Mark::O];

    /// The opponent's mark.
    pub fn other(self) -> Mark {
        match self {
            Mark::X => Mark::O,
            Mark::O => Mark::X,
        }
    }

    /// `"X"` or `"O"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mark::X => "X",
            Mark::O => "O",
        }
    }
}

/// One value per seat, serialised as `{"X": …, "O": …}` and indexed by [`Mark`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seats<T> {
    #[serde(rename = "X")]
    pub x: T,
    #[serde(rename = "O")]
    pub o: T,
}

impl<T> Index<Mark> for Seats<T> {
    type Output = T;

    fn index(&self, mark: Mark) -> &T {
        match mark {
            Mark::X => &self.x,
            Mark::O => &self.o,
        }
    }
}

impl<T> IndexMut<Mark> for Seats<T> {
    fn index_mut(&mut self, mark: Mark) -> &mut T {
        match mark {
            Mark::X => &mut self.x,
            Mark::O => &mut self.o,
        }
    }
}

/// The lifecycle of a match: the word stored in `matches.status` and broadcast in `state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Fewer than two players have joined.
    Waiting,
    /// A game is in progress.
    Playing,
    /// The last game has a winner (by a line, a forfeit or a timeout).
    Won,
    /// The last game filled the board with no line.
    Draw,
    /// Closed without a game: every player left, or nobody was there for 10 minutes.
    Abandoned,
}

impl Status {
    /// The protocol word: `waiting`, `playing`, `won`, `draw` or `abandoned`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Waiting => "waiting",
            Status::Playing => "playing",
            Status::Won => "won",
            Status::Draw => "draw",
            Status::Abandoned => "abandoned",
        }
    }

    /// Whether the match has ended (`won`, `draw` or `abandoned`).
    pub fn is_over(self) -> bool {
        matches!(self, Status::Won | Status::Draw | Status::Abandoned)
    }
}

/// Why a control message was refused: the `reason` of a private `rejected` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The data does not have the shape the action needs (`move` without an integer
    /// `cell`, `chat` without a 1..=500 character `text`).
    BadRequest,
    /// A control message name this game does not know.
    UnknownAction,
    /// The sender holds no seat (or, for `rematch`, has left the match).
    NotAPlayer,
    /// A `move` while the match is still `waiting` for its second player.
    NotStarted,
    /// A `move` after the game ended (`won`, `draw` or `abandoned`).
    GameOver,
    /// A `move` by the player who is not to move.
    NotYourTurn,
    /// A `move` to a cell outside 0..=8.
    CellOutOfRange,
    /// A `move` to a cell that already holds a mark.
    CellTaken,
    /// A `rematch` while the game is still `waiting` or `playing`.
    GameNotOver,
    /// A `rematch` in a match that was `abandoned` (there was no game to replay).
    MatchAbandoned,
    /// A `rematch` whose opponent has sent `leave`.
    OpponentLeft,
}

impl Rejection {
    /// The wire code, such as `"not_your_turn"`.
    pub fn code(self) -> &'static str {
        match self {
            Rejection::BadRequest => "bad_request",
            Rejection::UnknownAction => "unknown_action",
            Rejection::NotAPlayer => "not_a_player",
            Rejection::NotStarted => "not_started",
            Rejection::GameOver => "game_over",
            Rejection::NotYourTurn => "not_your_turn",
            Rejection::CellOutOfRange => "cell_out_of_range",
            Rejection::CellTaken => "cell_taken",
            Rejection::GameNotOver => "game_not_over",
            Rejection::MatchAbandoned => "match_abandoned",
            Rejection::OpponentLeft => "opponent_left",
        }
    }
}

/// The match configuration, validated by [`Config::parse`] and stored with the match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Seconds the player to move has before forfeiting (1..=3600, default 30).
    pub turn_seconds: u32,
    /// Seconds a player may stay disconnected during play before forfeiting (1..=3600,
    /// default 30).
    pub reconnect_seconds: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            turn_seconds: DEFAULT_TURN_SECONDS,
            reconnect_seconds: DEFAULT_RECONNECT_SECONDS,
        }
    }
}

impl Config {
    /// Parses a client-supplied config: `null` or an object whose only fields are
    /// `turn_seconds` and `reconnect_seconds`, each an integer from 1 to 3600 (absent means
    /// the default). The error is a sentence for the client.
    pub fn parse(raw: &Value) -> Result<Self, String> {
        let mut config = Self::default();
        let fields = match raw {
            Value::Null => return Ok(config),
            Value::Object(fields) => fields,
            other => {
                return Err(format!(
                    "the tictactoe config must be a JSON object such as \
                     {{\"turn_seconds\": 30, \"reconnect_seconds\": 30}}, not {other}"
                ))
            }
        };
        for (key, value) in fields {
            let slot = match key.as_str() {
                "turn_seconds" => &mut config.turn_seconds,
                "reconnect_seconds" => &mut config.reconnect_seconds,
                _ => {
                    return Err(format!(
                        "unknown tictactoe config field {key:?}: the fields are \
                         \"turn_seconds\" and \"reconnect_seconds\""
                    ))
                }
            };
            *slot = value
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| (MIN_SECONDS..=MAX_SECONDS).contains(n))
                .ok_or_else(|| {
                    format!(
                        "{key:?} must be an integer from {MIN_SECONDS} to {MAX_SECONDS} \
                         (seconds), not {value}"
                    )
                })?;
        }
        Ok(config)
    }
}

/// The stored state of one match (JSONB). Field names are part of the stored format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Cells 0..=8, row-major.
    pub board: [Option<Mark>; 9],
    /// Who holds each seat.
    pub players: Seats<Option<ClientId>>,
    /// The display name each seated player gave in `join` (absent in states stored before
    /// names existed).
    #[serde(default)]
    pub names: Seats<Option<String>>,
    /// Live connection ids per client subscribed to `match:<id>`: every client while
    /// `waiting`, only the seated players otherwise. A client with none has no entry.
    pub connections: BTreeMap<ClientId, BTreeSet<String>>,
    /// Whose move it is (X while `waiting`; kept as it was when the game ended).
    pub turn: Mark,
    pub status: Status,
    /// The winner of a `won` game.
    pub winner: Option<Mark>,
    /// When the player to move forfeits; only while `playing`.
    pub turn_deadline: Option<DateTime<Utc>>,
    /// Marks placed in the current game.
    pub move_count: u32,
    /// Rematch votes; only after `won` or `draw`.
    pub rematch: Seats<bool>,
    /// When a player's last connection went during play; only while `playing`.
    pub disconnected_since: Seats<Option<DateTime<Utc>>>,
    /// Since when a `waiting` match has had no connected player (from its creation, or
    /// from its seated player's last disconnection); `None` otherwise.
    pub waiting_since: Option<DateTime<Utc>>,
    /// Players who sent `leave` during play or after the end: they cannot rematch.
    pub left: Seats<bool>,
    /// 1 for the first game, +1 per rematch.
    pub game_no: u32,
    /// Copied from [`Config::turn_seconds`] at creation.
    pub turn_seconds: u32,
    /// Copied from [`Config::reconnect_seconds`] at creation.
    pub reconnect_seconds: u32,
}

impl State {
    /// A new match: empty board, `waiting`, X to move, the idle clock running from `now`.
    pub fn new(config: &Config, now: DateTime<Utc>) -> Self {
        Self {
            board: [None; 9],
            players: Seats::default(),
            names: Seats::default(),
            connections: BTreeMap::new(),
            turn: Mark::X,
            status: Status::Waiting,
            winner: None,
            turn_deadline: None,
            move_count: 0,
            rematch: Seats::default(),
            disconnected_since: Seats::default(),
            waiting_since: Some(now),
            left: Seats::default(),
            game_no: 1,
            turn_seconds: config.turn_seconds,
            reconnect_seconds: config.reconnect_seconds,
        }
    }

    /// The seat `client` holds, if any.
    pub fn mark_of(&self, client: &ClientId) -> Option<Mark> {
        Mark::BOTH
            .into_iter()
            .find(|&m| self.players[m].as_ref() == Some(client))
    }

    /// Whether the player in seat `mark` has at least one live connection.
    pub fn is_connected(&self, mark: Mark) -> bool {
        self.players[mark]
            .as_ref()
            .and_then(|c| self.connections.get(c))
            .is_some_and(|set| !set.is_empty())
    }

    /// Checks the rules every reachable state obeys (used by the property tests and the
    /// fuzzers): `Err` names the first one broken.
    pub fn check(&self) -> Result<(), String> {
        let count = |m: Mark| self.board.iter().filter(|c| **c == Some(m)).count();
        let (x, o) = (count(Mark::X), count(Mark::O));
        let line = winner_of(&self.board);
        let full = x + o == 9;
        if x + o != self.move_count as usize {
            return Err(format!(
                "{} marks on the board, move_count {}",
                x + o,
                self.move_count
            ));
        }
        if x.abs_diff(o) > 1 {
            return Err(format!("{x} X against {o} O"));
        }
        if self.turn_deadline.is_some() != (self.status == Status::Playing) {
            return Err(format!(
                "turn_deadline {:?} while {:?}",
                self.turn_deadline, self.status
            ));
        }
        if self.connections.values().any(BTreeSet::is_empty) {
            return Err("a client is listed with no connection".into());
        }
        if !(1..=3600).contains(&self.turn_seconds) || !(1..=3600).contains(&self.reconnect_seconds)
        {
            return Err("a clock setting is out of range".into());
        }
        let ok = match self.status {
            Status::Waiting => self.move_count == 0 && self.winner.is_none(),
            Status::Playing => {
                self.winner.is_none()
                    && line.is_none()
                    && !full
                    && Mark::BOTH.iter().all(|&m| self.players[m].is_some())
            }
            Status::Won => self.winner.is_some() && (line.is_none() || line == self.winner),
            Status::Draw => self.winner.is_none() && full && line.is_none(),
            Status::Abandoned => self.winner.is_none(),
        };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "{:?} with winner {:?}, line {line:?}, {} marks",
                self.status, self.winner, self.move_count
            ))
        }
    }
}

/// The mark that owns a complete line, if any.
pub fn winner_of(board: &[Option<Mark>; 9]) -> Option<Mark> {
    LINES.iter().find_map(|&[a, b, c]| match board[a] {
        Some(m) if board[b] == Some(m) && board[c] == Some(m) => Some(m),
        _ => None,
    })
}

/// The data of the `state` broadcast, exactly the PROTOCOL's shape plus `game_no` and
/// `rematch`.
pub fn public_state(state: &State) -> Value {
    let board: Vec<Value> = state
        .board
        .iter()
        .map(|cell| cell.map_or(Value::Null, |m| json!(m.as_str())))
        .collect();
    json!({
        "board": board,
        "players": {
            "X": state.players.x.as_ref().map(ClientId::as_str),
            "O": state.players.o.as_ref().map(ClientId::as_str),
        },
        "names": { "X": state.names.x, "O": state.names.o },
        "connected": {
            "X": state.is_connected(Mark::X),
            "O": state.is_connected(Mark::O),
        },
        "turn": state.turn.as_str(),
        "status": state.status.as_str(),
        "winner": state.winner.map(Mark::as_str),
        "turn_deadline": state
            .turn_deadline
            .map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
        "move_count": state.move_count,
        "game_no": state.game_no,
        "rematch": { "X": state.rematch.x, "O": state.rematch.o },
    })
}

/// Something the clock will do to a match, with when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    /// The player to move ran out of time.
    TurnTimeout,
    /// The player in this seat stayed disconnected too long.
    Disconnected(Mark),
    /// A `waiting` match had no connected player for 10 minutes.
    WaitingIdle,
}

/// Every clock event of the state, in tie-break order: the turn timeout first, then the
/// disconnections, the player to move first (a tie means both left at the same instant).
fn schedule(state: &State) -> Vec<(DateTime<Utc>, Due)> {
    let mut due = Vec::new();
    match state.status {
        Status::Playing => {
            if let Some(deadline) = state.turn_deadline {
                due.push((deadline, Due::TurnTimeout));
            }
            for mark in [state.turn, state.turn.other()] {
                if let Some(since) = state.disconnected_since[mark] {
                    let grace = Duration::seconds(i64::from(state.reconnect_seconds));
                    due.push((since + grace, Due::Disconnected(mark)));
                }
            }
        }
        Status::Waiting => {
            if let Some(since) = state.waiting_since {
                due.push((
                    since + Duration::seconds(WAITING_TIMEOUT_SECONDS),
                    Due::WaitingIdle,
                ));
            }
        }
        Status::Won | Status::Draw | Status::Abandoned => {}
    }
    due
}

/// Restores the invariants listed in the module doc after a change. Idempotent, so calling
/// it on an unchanged state changes nothing.
fn settle(state: &mut State, now: DateTime<Utc>) {
    if state.status != Status::Playing {
        state.turn_deadline = None;
        state.disconnected_since = Seats::default();
    }
    if !matches!(state.status, Status::Won | Status::Draw) {
        state.rematch = Seats::default();
    }
    if state.status == Status::Waiting {
        if Mark::BOTH.into_iter().any(|m| state.is_connected(m)) {
            state.waiting_since = None;
        } else if state.waiting_since.is_none() {
            state.waiting_since = Some(now);
        }
    } else {
        state.waiting_since = None;
        let players = state.players.clone();
        state
            .connections
            .retain(|c, _| players.x.as_ref() == Some(c) || players.o.as_ref() == Some(c));
    }
}

/// Settles the state and broadcasts it: the end of every handler that changed something
/// public.
fn commit(state: &mut State, now: DateTime<Utc>, out: &mut Vec<Outgoing>) {
    settle(state, now);
    out.push(Outgoing::new(To::Match, "state", public_state(state)));
}

/// Starts a game with the seated players: cleared board, X to move, fresh clocks.
fn start_game(state: &mut State, now: DateTime<Utc>) {
    state.board = [None; 9];
    state.status = Status::Playing;
    state.turn = Mark::X;
    state.winner = None;
    state.move_count = 0;
    state.rematch = Seats::default();
    state.left = Seats::default();
    // A player who is not connected when the game starts is bounded by the turn clock
    // only: the reconnect clock starts when a connection goes during play.
    state.disconnected_since = Seats::default();
    state.turn_deadline = Some(now + Duration::seconds(i64::from(state.turn_seconds)));
}

/// Ends the game with `status` and `winner` (the clocks stop in `settle`).
fn end_game(state: &mut State, status: Status, winner: Option<Mark>) {
    state.status = status;
    state.winner = winner;
}

/// The display `name` of a `join`, made fit to show: control characters dropped, trimmed,
/// cut to [`MAX_NAME_CHARS`]; absent, blank or not a string is no name. (`join` is never
/// rejected, so a name is cleaned rather than refused.)
fn parse_name(data: &Value) -> Option<String> {
    let raw = data.get("name")?.as_str()?;
    let clean: String = raw.chars().filter(|c| !c.is_control()).collect();
    let name: String = clean.trim().chars().take(MAX_NAME_CHARS).collect();
    let name = name.trim_end().to_owned();
    (!name.is_empty()).then_some(name)
}

/// `join`: the first client takes X, the second O and the game starts; an optional `name`
/// is shown to everyone as the seat's display name. Anyone else, or a seated player
/// joining again, is a spectator: nothing changes and nothing is sent.
fn join(
    state: &mut State,
    now: DateTime<Utc>,
    client: &ClientId,
    data: &Value,
    out: &mut Vec<Outgoing>,
) {
    if state.status != Status::Waiting || state.mark_of(client).is_some() {
        return;
    }
    let Some(seat) = Mark::BOTH.into_iter().find(|&m| state.players[m].is_none()) else {
        return;
    };
    let name = parse_name(data);
    state.players[seat] = Some(client.clone());
    state.names[seat] = name;
    if state.players.x.is_some() && state.players.o.is_some() {
        start_game(state, now);
    }
    commit(state, now, out);
}

/// Reads `cell` from a `move`'s data: `Err(BadRequest)` unless it is an integer. An integer
/// too large for `i64` is kept as `i64::MAX`, so it is reported as out of range.
fn parse_cell(data: &Value) -> Result<i64, Rejection> {
    match data.get("cell") {
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_u64().map(|_| i64::MAX))
            .ok_or(Rejection::BadRequest),
        _ => Err(Rejection::BadRequest),
    }
}

/// `move`. The checks run in this order, the first failure deciding the reason:
/// 1. `bad_request`: `cell` missing or not an integer;
/// 2. `not_a_player`: the sender holds no seat;
/// 3. `not_started`: the match is `waiting`;
/// 4. `game_over`: the match is `won`, `draw` or `abandoned`;
/// 5. `not_your_turn`;
/// 6. `cell_out_of_range`: not in 0..=8;
/// 7. `cell_taken`.
///
/// A valid move places the mark, then ends the game on a line (`won`) or a full board
/// (`draw`), or passes the turn with a fresh deadline.
fn play(
    state: &mut State,
    now: DateTime<Utc>,
    client: &ClientId,
    data: &Value,
    out: &mut Vec<Outgoing>,
) -> Result<(), Rejection> {
    let cell = parse_cell(data)?;
    let mark = state.mark_of(client).ok_or(Rejection::NotAPlayer)?;
    match state.status {
        Status::Waiting => return Err(Rejection::NotStarted),
        Status::Won | Status::Draw | Status::Abandoned => return Err(Rejection::GameOver),
        Status::Playing => {}
    }
    if state.turn != mark {
        return Err(Rejection::NotYourTurn);
    }
    let index = usize::try_from(cell)
        .ok()
        .filter(|&i| i < state.board.len())
        .ok_or(Rejection::CellOutOfRange)?;
    if state.board[index].is_some() {
        return Err(Rejection::CellTaken);
    }
    state.board[index] = Some(mark);
    state.move_count += 1;
    if let Some(winner) = winner_of(&state.board) {
        end_game(state, Status::Won, Some(winner));
    } else if state.board.iter().all(Option::is_some) {
        end_game(state, Status::Draw, None);
    } else {
        state.turn = mark.other();
        state.turn_deadline = Some(now + Duration::seconds(i64::from(state.turn_seconds)));
    }
    commit(state, now, out);
    Ok(())
}

/// `leave`: during play the leaver forfeits; while waiting their seat is freed (and the
/// match is abandoned once no player remains); after the end it is recorded so the other
/// player cannot start a rematch, and withdraws the leaver's rematch vote. From a
/// non-player, or a second time, it does nothing.
fn leave(state: &mut State, now: DateTime<Utc>, client: &ClientId, out: &mut Vec<Outgoing>) {
    let Some(mark) = state.mark_of(client) else {
        return;
    };
    match state.status {
        Status::Playing => {
            state.left[mark] = true;
            end_game(state, Status::Won, Some(mark.other()));
            commit(state, now, out);
        }
        Status::Waiting => {
            state.players[mark] = None;
            state.names[mark] = None;
            if state.players.x.is_none() && state.players.o.is_none() {
                end_game(state, Status::Abandoned, None);
            }
            commit(state, now, out);
        }
        Status::Won | Status::Draw | Status::Abandoned => {
            if state.left[mark] {
                return;
            }
            state.left[mark] = true;
            if state.rematch[mark] {
                state.rematch[mark] = false;
                commit(state, now, out);
            } else {
                // Nothing public changed: no broadcast.
                settle(state, now);
            }
        }
    }
}

/// `rematch`. Checks, in order: `not_a_player` (no seat, or the sender has left),
/// `game_not_over` (`waiting` or `playing`), `match_abandoned`, `opponent_left`. A repeated
/// vote changes nothing; the second player's vote starts a new game with X and O swapped.
fn rematch(
    state: &mut State,
    now: DateTime<Utc>,
    client: &ClientId,
    out: &mut Vec<Outgoing>,
) -> Result<(), Rejection> {
    let mark = state
        .mark_of(client)
        .filter(|&m| !state.left[m])
        .ok_or(Rejection::NotAPlayer)?;
    match state.status {
        Status::Waiting | Status::Playing => return Err(Rejection::GameNotOver),
        Status::Abandoned => return Err(Rejection::MatchAbandoned),
        Status::Won | Status::Draw => {}
    }
    if state.left[mark.other()] {
        return Err(Rejection::OpponentLeft);
    }
    if state.rematch[mark] {
        return Ok(());
    }
    state.rematch[mark] = true;
    if state.rematch.x && state.rematch.o {
        state.players = Seats {
            x: state.players.o.take(),
            o: state.players.x.take(),
        };
        state.names = Seats {
            x: state.names.o.take(),
            o: state.names.x.take(),
        };
        state.game_no += 1;
        start_game(state, now);
    }
    commit(state, now, out);
    Ok(())
}

/// `chat`: a `text` of 1..=500 characters, from anyone, relayed as `chat`; the state does
/// not change.
fn chat(client: &ClientId, data: &Value, out: &mut Vec<Outgoing>) -> Result<(), Rejection> {
    let text = data
        .get("text")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty() && t.chars().count() <= MAX_CHAT_CHARS)
        .ok_or(Rejection::BadRequest)?;
    out.push(Outgoing::new(
        To::Match,
        "chat",
        json!({ "from": client.as_str(), "text": text }),
    ));
    Ok(())
}

/// A connection of `client` came (`up`) or went. Tracked for everyone while `waiting`, for
/// seated players only afterwards. When a seated player's `connected` flag flips, the state
/// is broadcast and, during play, the reconnect clock starts or stops. Presence alone never
/// ends a match.
fn presence(
    state: &mut State,
    now: DateTime<Utc>,
    client: &ClientId,
    connection: &str,
    up: bool,
    out: &mut Vec<Outgoing>,
) {
    let mark = state.mark_of(client);
    if mark.is_none() && state.status != Status::Waiting {
        return;
    }
    let before = mark.map(|m| state.is_connected(m));
    if up {
        // Bounded: at most MAX_WAITING_WATCHERS unseated clients, MAX_TRACKED_CONNECTIONS
        // each (a client past the bound is still connected through those tracked).
        let watchers = state
            .connections
            .keys()
            .filter(|c| state.mark_of(c).is_none())
            .count();
        let known = state.connections.contains_key(client);
        if mark.is_some() || known || watchers < MAX_WAITING_WATCHERS {
            let set = state.connections.entry(client.clone()).or_default();
            if set.len() < MAX_TRACKED_CONNECTIONS {
                set.insert(connection.to_owned());
            }
        }
    } else if let Some(set) = state.connections.get_mut(client) {
        set.remove(connection);
        if set.is_empty() {
            state.connections.remove(client);
        }
    }
    let Some(mark) = mark else {
        return;
    };
    let connected = state.is_connected(mark);
    if before == Some(connected) {
        return;
    }
    if state.status == Status::Playing {
        state.disconnected_since[mark] = if connected { None } else { Some(now) };
    }
    commit(state, now, out);
}

/// Dispatches a client's control message.
fn on_client(
    state: &mut State,
    now: DateTime<Utc>,
    client: &ClientId,
    name: &str,
    data: &Value,
    out: &mut Vec<Outgoing>,
) -> Result<(), Rejection> {
    match name {
        "join" => {
            join(state, now, client, data, out);
            Ok(())
        }
        "move" => play(state, now, client, data, out),
        "leave" => {
            leave(state, now, client, out);
            Ok(())
        }
        "rematch" => rematch(state, now, client, out),
        "chat" => chat(client, data, out),
        _ => Err(Rejection::UnknownAction),
    }
}

impl Game for TicTacToe {
    type Config = Config;
    type State = State;

    fn name(&self) -> &'static str {
        NAME
    }

    fn config(&self, raw: &Value) -> Result<Config, String> {
        Config::parse(raw)
    }

    fn create(&self, cx: &Cx<'_, Config>, out: &mut Vec<Outgoing>) -> State {
        let mut state = State::new(cx.config, cx.now);
        commit(&mut state, cx.now, out);
        state
    }

    fn handle(
        &self,
        cx: &Cx<'_, Config>,
        state: &mut State,
        input: &Input,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), GameError> {
        match input {
            Input::Client {
                msg_id,
                client,
                name,
                data,
            } => {
                if let Err(reason) = on_client(state, cx.now, client, name, data, out) {
                    out.push(Outgoing::new(
                        To::User(client.clone()),
                        "rejected",
                        json!({ "reason": reason.code(), "ref": msg_id }),
                    ));
                }
            }
            Input::Connected { client, connection } => {
                presence(state, cx.now, client, connection, true, out);
            }
            Input::Disconnected { client, connection } => {
                presence(state, cx.now, client, connection, false, out);
            }
        }
        Ok(())
    }

    /// Applies the earliest clock event that is due at `tick.now` (a late tick still picks
    /// the one that fell due first): the player to move forfeits on the turn deadline, a
    /// player disconnected past the grace forfeits, an idle `waiting` match is abandoned.
    /// Nothing due, nothing changes.
    fn tick(
        &self,
        _cx: &Cx<'_, Config>,
        state: &mut State,
        tick: Tick,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), GameError> {
        let due = schedule(state)
            .into_iter()
            .filter(|&(at, _)| at <= tick.now)
            .min_by_key(|&(at, _)| at);
        let Some((_, event)) = due else {
            return Ok(());
        };
        match event {
            Due::TurnTimeout => end_game(state, Status::Won, Some(state.turn.other())),
            Due::Disconnected(mark) => end_game(state, Status::Won, Some(mark.other())),
            Due::WaitingIdle => end_game(state, Status::Abandoned, None),
        }
        commit(state, tick.now, out);
        Ok(())
    }

    fn status(&self, state: &State) -> &'static str {
        state.status.as_str()
    }

    fn next_tick_at(&self, state: &State) -> Option<DateTime<Utc>> {
        schedule(state).into_iter().map(|(at, _)| at).min()
    }

    /// `won`, `draw` and `abandoned` are over; a rematch makes the match live again.
    fn is_over(&self, state: &State) -> bool {
        state.status.is_over()
    }

    /// `{"open_seats": n}`: the seats a `join` would still take (0 once the game started).
    fn label(&self, state: &State) -> Option<Value> {
        Some(json!({ "open_seats": open_seats(state) }))
    }
}

/// Seats a `join` would still take: the empty ones while `waiting`, none otherwise.
fn open_seats(state: &State) -> usize {
    match state.status {
        Status::Waiting => Mark::BOTH
            .into_iter()
            .filter(|&m| state.players[m].is_none())
            .count(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::game::testkit::{id, t0};
    use crate::ids::MatchId;
    use crate::testkit::TestMatch;

    fn secs(n: i64) -> Duration {
        Duration::seconds(n)
    }

    /// A match driven by inputs at an injected clock, through the public test kit (the
    /// engine's JSON round trip included); `state` mirrors the match's state after every
    /// step, and `now` is the clock the next step runs at.
    #[derive(Clone)]
    struct Harness {
        m: TestMatch<TicTacToe>,
        state: State,
        now: DateTime<Utc>,
        last_msg_id: i64,
    }

    impl Harness {
        fn new() -> Self {
            Self::with_config(Config::default())
        }

        fn with_config(config: Config) -> Self {
            let raw = serde_json::to_value(config).expect("a config serialises");
            let m = TestMatch::new(TicTacToe, raw).expect("a valid config");
            assert_eq!(m.created().0.len(), 1, "create announces the match once");
            Self {
                state: m.state(),
                now: m.now(),
                m,
                last_msg_id: 0,
            }
        }

        /// A match where alice plays X and bob plays O.
        fn playing() -> Self {
            let mut h = Self::new();
            h.send("alice", "join", json!({}));
            h.send("bob", "join", json!({}));
            assert_eq!(h.state.status, Status::Playing);
            h
        }

        fn input(&mut self, input: Input) -> Vec<Outgoing> {
            self.m.set_now(self.now);
            let sent = self
                .m
                .input(input)
                .expect("handlers never fail on game outcomes");
            self.state = self.m.state();
            sent.0
        }

        /// Runs a sequence of inputs, returning all their messages.
        fn run(&mut self, inputs: Vec<Input>) -> Vec<Outgoing> {
            inputs.into_iter().flat_map(|i| self.input(i)).collect()
        }

        fn msg(&mut self, client: &str, name: &str, data: Value) -> Input {
            self.last_msg_id += 1;
            Input::Client {
                msg_id: self.last_msg_id,
                client: id(client),
                name: name.to_owned(),
                data,
            }
        }

        fn send(&mut self, client: &str, name: &str, data: Value) -> Vec<Outgoing> {
            let input = self.msg(client, name, data);
            self.input(input)
        }

        /// Plays `cells` in order, alternating from whoever is to move.
        fn moves(&mut self, cells: &[i64]) -> Vec<Outgoing> {
            let mut out = Vec::new();
            for &cell in cells {
                let who = self.player(self.state.turn);
                out.extend(self.send(&who, "move", json!({ "cell": cell })));
            }
            out
        }

        fn player(&self, mark: Mark) -> String {
            self.state.players[mark]
                .as_ref()
                .expect("the seat is taken")
                .to_string()
        }

        fn connect(&mut self, client: &str, connection: &str) -> Vec<Outgoing> {
            self.input(Input::Connected {
                client: id(client),
                connection: connection.to_owned(),
            })
        }

        fn disconnect(&mut self, client: &str, connection: &str) -> Vec<Outgoing> {
            self.input(Input::Disconnected {
                client: id(client),
                connection: connection.to_owned(),
            })
        }

        fn advance(&mut self, seconds: i64) {
            self.now += secs(seconds);
        }

        /// Runs the tick due at the current clock, if one is (nothing is sent otherwise).
        fn tick(&mut self) -> Vec<Outgoing> {
            self.m.set_now(self.now);
            let sent = match self.m.tick() {
                None => return Vec::new(),
                Some(result) => result.expect("ticks never fail"),
            };
            self.state = self.m.state();
            sent.0
        }

        fn next_tick_at(&self) -> Option<DateTime<Utc>> {
            self.m.next_tick_at()
        }

        /// Sends a message that must be rejected: checks it changed nothing and sent exactly
        /// one private `rejected` referring to it, and returns the reason.
        fn rejected(&mut self, client: &str, name: &str, data: Value) -> String {
            let before = self.state.clone();
            let out = self.send(client, name, data);
            assert_eq!(self.state, before, "a rejection changes nothing");
            assert_eq!(out.len(), 1, "exactly one message: {out:?}");
            assert_eq!(out[0].to, To::User(id(client)));
            assert_eq!(out[0].name, "rejected");
            assert_eq!(out[0].data["ref"], json!(self.last_msg_id));
            out[0].data["reason"]
                .as_str()
                .expect("a string reason")
                .to_owned()
        }

        /// Sends a message that must change nothing and send nothing.
        fn ignored(&mut self, client: &str, name: &str, data: Value) {
            let before = self.state.clone();
            let out = self.send(client, name, data);
            assert_eq!(self.state, before, "{name} from {client} changes nothing");
            assert!(
                out.is_empty(),
                "{name} from {client} sends nothing: {out:?}"
            );
        }
    }

    /// The data of the only `state` broadcast in `out`.
    fn only_state(out: &[Outgoing]) -> &Value {
        assert_eq!(out.len(), 1, "exactly one message: {out:?}");
        assert_eq!(out[0].to, To::Match);
        assert_eq!(out[0].name, "state");
        &out[0].data
    }

    fn rfc3339(t: DateTime<Utc>) -> Value {
        json!(t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
    }

    // ---- creation and the public shape -------------------------------------------------

    #[test]
    fn the_game_is_named_tictactoe() {
        assert_eq!(Game::name(&TicTacToe), "tictactoe");
    }

    #[test]
    fn a_new_match_is_waiting_with_an_empty_board_and_announces_itself() {
        let config = Config::default();
        let cx = Cx {
            match_id: MatchId::new_random(),
            config: &config,
            now: t0(),
        };
        let mut out = Vec::new();
        let state = TicTacToe.create(&cx, &mut out);
        assert_eq!(TicTacToe.status(&state), "waiting");
        assert_eq!(state.turn, Mark::X);
        assert_eq!(state.game_no, 1);
        assert_eq!(
            only_state(&out),
            &json!({
                "board": [null, null, null, null, null, null, null, null, null],
                "players": {"X": null, "O": null},
                "names": {"X": null, "O": null},
                "connected": {"X": false, "O": false},
                "turn": "X",
                "status": "waiting",
                "winner": null,
                "turn_deadline": null,
                "move_count": 0,
                "game_no": 1,
                "rematch": {"X": false, "O": false},
            })
        );
    }

    #[test]
    fn the_state_broadcast_has_the_protocol_shape_during_play() {
        let mut h = Harness::playing();
        h.connect("alice", "c1");
        h.advance(3);
        let out = h.moves(&[4]);
        assert_eq!(
            only_state(&out),
            &json!({
                "board": [null, null, null, null, "X", null, null, null, null],
                "players": {"X": "alice", "O": "bob"},
                "names": {"X": null, "O": null},
                "connected": {"X": true, "O": false},
                "turn": "O",
                "status": "playing",
                "winner": null,
                "turn_deadline": "2030-01-02T03:04:38Z",
                "move_count": 1,
                "game_no": 1,
                "rematch": {"X": false, "O": false},
            })
        );
    }

    #[test]
    fn subsecond_deadlines_keep_their_precision() {
        let mut h = Harness::new();
        h.now += Duration::microseconds(250_500);
        h.send("alice", "join", json!({}));
        let out = h.send("bob", "join", json!({}));
        assert_eq!(
            only_state(&out)["turn_deadline"],
            json!("2030-01-02T03:04:35.250500Z")
        );
    }

    #[test]
    fn marks_and_statuses_serialise_as_protocol_words() {
        assert_eq!(serde_json::to_value(Mark::X).expect("json"), json!("X"));
        assert_eq!(serde_json::to_value(Mark::O).expect("json"), json!("O"));
        for (status, word) in [
            (Status::Waiting, "waiting"),
            (Status::Playing, "playing"),
            (Status::Won, "won"),
            (Status::Draw, "draw"),
            (Status::Abandoned, "abandoned"),
        ] {
            assert_eq!(status.as_str(), word);
            assert_eq!(serde_json::to_value(status).expect("json"), json!(word));
        }
        assert_eq!(Mark::X.other(), Mark::O);
        assert_eq!(Mark::O.other(), Mark::X);
    }

    #[test]
    fn the_state_round_trips_through_json() {
        let mut h = Harness::playing();
        h.connect("alice", "c1");
        h.connect("bob", "c2");
        h.disconnect("bob", "c2");
        h.moves(&[0, 4]);
        let json = serde_json::to_value(&h.state).expect("serialises");
        let back: State = serde_json::from_value(json.clone()).expect("parses");
        assert_eq!(back, h.state);
        assert_eq!(json["board"][0], json!("X"));
        assert_eq!(json["players"], json!({"X": "alice", "O": "bob"}));
        assert_eq!(json["status"], json!("playing"));
    }

    // ---- joining ---------------------------------------------------------------------------

    #[test]
    fn the_label_counts_the_open_seats_until_the_game_starts() {
        let mut h = Harness::new();
        assert_eq!(TicTacToe.label(&h.state), Some(json!({"open_seats": 2})));
        h.send("alice", "join", json!({}));
        assert_eq!(TicTacToe.label(&h.state), Some(json!({"open_seats": 1})));
        h.send("bob", "join", json!({}));
        assert_eq!(TicTacToe.label(&h.state), Some(json!({"open_seats": 0})));
    }

    #[test]
    fn the_first_joiner_plays_x_and_the_second_o_which_starts_the_game() {
        let mut h = Harness::new();
        let out = h.send("alice", "join", json!({}));
        let data = only_state(&out);
        assert_eq!(data["players"], json!({"X": "alice", "O": null}));
        assert_eq!(data["status"], json!("waiting"));
        assert_eq!(data["turn_deadline"], Value::Null);

        h.advance(7);
        let out = h.send("bob", "join", json!({}));
        let data = only_state(&out);
        assert_eq!(data["players"], json!({"X": "alice", "O": "bob"}));
        assert_eq!(data["status"], json!("playing"));
        assert_eq!(data["turn"], json!("X"));
        assert_eq!(h.state.turn_deadline, Some(t0() + secs(7 + 30)));
        assert_eq!(data["turn_deadline"], rfc3339(t0() + secs(37)));
    }

    #[test]
    fn joining_again_or_joining_a_full_match_changes_nothing_and_sends_nothing() {
        let mut h = Harness::new();
        h.send("alice", "join", json!({}));
        h.ignored("alice", "join", json!({}));
        assert_eq!(h.state.status, Status::Waiting);
        h.send("bob", "join", json!({}));
        h.ignored("alice", "join", json!({}));
        h.ignored("bob", "join", json!({}));
        h.ignored("carol", "join", json!({}));
        assert_eq!(h.state.players.x, Some(id("alice")));
        assert_eq!(h.state.players.o, Some(id("bob")));
    }

    #[test]
    fn display_names_given_in_join_are_shown_and_follow_the_seats() {
        let mut h = Harness::new();
        let out = h.send("alice", "join", json!({ "name": "  Alice  " }));
        assert_eq!(
            only_state(&out)["names"],
            json!({ "X": "Alice", "O": null })
        );
        let out = h.send("bob", "join", json!({ "name": "Bob" }));
        assert_eq!(
            only_state(&out)["names"],
            json!({ "X": "Alice", "O": "Bob" })
        );
        h.moves(&[0, 3, 1, 4, 2]);
        h.send("alice", "rematch", json!({}));
        let out = h.send("bob", "rematch", json!({}));
        let state = only_state(&out);
        assert_eq!(state["players"]["X"], json!("bob"));
        assert_eq!(state["names"], json!({ "X": "Bob", "O": "Alice" }));
    }

    #[test]
    fn display_names_are_cleaned_never_refused_and_go_with_the_seat() {
        let mut h = Harness::new();
        let long = "é".repeat(MAX_NAME_CHARS + 5);
        h.send("alice", "join", json!({ "name": long }));
        assert_eq!(h.state.names.x, Some("é".repeat(MAX_NAME_CHARS)));
        h.send("bob", "join", json!({ "name": " a\nb\u{7} " }));
        assert_eq!(h.state.names.o, Some("ab".into()));
        let mut h = Harness::new();
        h.send("alice", "join", json!({ "name": 7 }));
        h.send("bob", "join", json!({ "name": "   " }));
        assert_eq!(
            h.state.players.x,
            Some(id("alice")),
            "a bad name still seats"
        );
        assert_eq!(h.state.names, Seats::default());
        let mut h = Harness::new();
        h.send("alice", "join", json!({ "name": "Ada" }));
        h.send("alice", "leave", json!({}));
        h.send("carol", "join", json!({}));
        assert_eq!(h.state.names.x, None, "a name goes with its seat");
    }

    #[test]
    fn spectators_of_a_waiting_match_cannot_grow_its_state_without_bound() {
        let mut h = Harness::new();
        h.send("alice", "join", json!({}));
        for i in 0..(MAX_WAITING_WATCHERS + 50) {
            h.connect(&format!("watcher{i}"), "c1");
        }
        for c in 0..(MAX_TRACKED_CONNECTIONS + 10) {
            h.connect("watcher0", &format!("extra{c}"));
            h.connect("alice", &format!("a{c}"));
        }
        assert_eq!(h.state.connections.len(), MAX_WAITING_WATCHERS + 1);
        assert!(h
            .state
            .connections
            .values()
            .all(|set| set.len() <= MAX_TRACKED_CONNECTIONS));
        let bytes = serde_json::to_vec(&h.state).unwrap().len();
        assert!(bytes < 16 * 1024, "the state stays small: {bytes} bytes");
        // A tracked watcher who joins counts as connected at once.
        let out = h.send("watcher1", "join", json!({}));
        assert_eq!(
            only_state(&out)["connected"],
            json!({ "X": true, "O": true })
        );
    }

    #[test]
    fn joining_an_ended_match_changes_nothing() {
        let mut h = Harness::playing();
        h.moves(&[0, 3, 1, 4, 2]);
        assert_eq!(h.state.status, Status::Won);
        h.ignored("carol", "join", json!({}));
        h.ignored("alice", "join", json!({}));

        let mut h = Harness::new();
        h.send("alice", "join", json!({}));
        h.send("alice", "leave", json!({}));
        assert_eq!(h.state.status, Status::Abandoned);
        h.ignored("bob", "join", json!({}));
        h.ignored("alice", "join", json!({}));
    }

    // ---- moves, wins and draws -----------------------------------------------------------

    #[test]
    fn every_cell_accepts_the_first_move() {
        for cell in 0..9 {
            let mut h = Harness::playing();
            h.advance(5);
            let out = h.moves(&[cell]);
            let data = only_state(&out);
            assert_eq!(data["board"][cell as usize], json!("X"));
            assert_eq!(data["turn"], json!("O"));
            assert_eq!(data["move_count"], json!(1));
            assert_eq!(h.state.turn_deadline, Some(t0() + secs(35)));
        }
    }

    /// The first two cells outside `line`, in order.
    fn outside(line: [usize; 3]) -> Vec<i64> {
        (0..9)
            .filter(|c| !line.contains(c))
            .map(|c| c as i64)
            .collect()
    }

    #[test]
    fn every_line_wins_for_x() {
        for line in LINES {
            let mut h = Harness::playing();
            let others = outside(line);
            let cells = [
                line[0] as i64,
                others[0],
                line[1] as i64,
                others[1],
                line[2] as i64,
            ];
            let out = h.moves(&cells);
            let last = out.last().expect("a broadcast");
            assert_eq!(last.data["status"], json!("won"), "line {line:?}");
            assert_eq!(last.data["winner"], json!("X"));
            assert_eq!(last.data["turn_deadline"], Value::Null);
            assert_eq!(last.data["move_count"], json!(5));
            assert_eq!(h.state.winner, Some(Mark::X));
            assert_eq!(h.next_tick_at(), None);
            assert_eq!(TicTacToe.status(&h.state), "won");
        }
    }

    #[test]
    fn every_line_wins_for_o() {
        for line in LINES {
            let others = outside(line);
            // Three cells off the line that do not make a line for X themselves.
            let xs = (0..others.len())
                .flat_map(|a| (a + 1..others.len()).map(move |b| (a, b)))
                .flat_map(|(a, b)| (b + 1..others.len()).map(move |c| [a, b, c]))
                .map(|[a, b, c]| [others[a], others[b], others[c]])
                .find(|xs| {
                    let mut board = [None; 9];
                    for &x in xs {
                        board[x as usize] = Some(Mark::X);
                    }
                    winner_of(&board).is_none()
                })
                .expect("six free cells always hold a non-line triple");
            let mut h = Harness::playing();
            let cells = [
                xs[0],
                line[0] as i64,
                xs[1],
                line[1] as i64,
                xs[2],
                line[2] as i64,
            ];
            let out = h.moves(&cells);
            let last = out.last().expect("a broadcast");
            assert_eq!(out.len(), 6, "every move was accepted");
            assert_eq!(last.data["status"], json!("won"), "line {line:?}");
            assert_eq!(last.data["winner"], json!("O"));
            assert_eq!(last.data["turn_deadline"], Value::Null);
            assert_eq!(h.state.move_count, 6);
        }
    }

    #[test]
    fn a_full_board_without_a_line_is_a_draw() {
        let mut h = Harness::playing();
        let out = h.moves(&[0, 1, 2, 4, 3, 5, 7, 6, 8]);
        assert_eq!(out.len(), 9);
        let data = &out[8].data;
        assert_eq!(data["status"], json!("draw"));
        assert_eq!(data["winner"], Value::Null);
        assert_eq!(data["turn_deadline"], Value::Null);
        assert_eq!(data["move_count"], json!(9));
        assert_eq!(TicTacToe.status(&h.state), "draw");
        assert_eq!(h.next_tick_at(), None);
    }

    #[test]
    fn a_line_made_on_the_last_cell_wins_rather_than_draws() {
        let mut h = Harness::playing();
        h.moves(&[0, 1, 2, 4, 3, 5, 7, 8, 6]);
        assert_eq!(h.state.status, Status::Won);
        assert_eq!(h.state.winner, Some(Mark::X));
        assert_eq!(h.state.move_count, 9);
    }

    // ---- every rejection -------------------------------------------------------------------

    #[test]
    fn a_move_without_an_integer_cell_is_a_bad_request() {
        let mut h = Harness::playing();
        for data in [
            json!({}),
            json!({"cell": "3"}),
            json!({"cell": 1.5}),
            json!({"cell": 3.0}),
            json!({"cell": null}),
            json!({"cell": [3]}),
            json!({"cell": true}),
            json!({"square": 3}),
            json!([3]),
            json!(3),
            Value::Null,
        ] {
            assert_eq!(h.rejected("alice", "move", data), "bad_request");
        }
        // The shape is checked first, even for a spectator or out of turn.
        assert_eq!(h.rejected("carol", "move", json!({})), "bad_request");
        assert_eq!(
            h.rejected("bob", "move", json!({"cell": "x"})),
            "bad_request"
        );
    }

    #[test]
    fn a_move_by_a_spectator_is_not_a_player() {
        let mut h = Harness::new();
        // Who you are is checked before the match's state.
        assert_eq!(
            h.rejected("carol", "move", json!({"cell": 0})),
            "not_a_player"
        );
        h.send("alice", "join", json!({}));
        assert_eq!(
            h.rejected("carol", "move", json!({"cell": 0})),
            "not_a_player"
        );
        h.send("bob", "join", json!({}));
        assert_eq!(
            h.rejected("carol", "move", json!({"cell": 0})),
            "not_a_player"
        );
        assert_eq!(
            h.rejected("carol", "move", json!({"cell": 99})),
            "not_a_player"
        );
        h.moves(&[0, 3, 1, 4, 2]);
        assert_eq!(
            h.rejected("carol", "move", json!({"cell": 5})),
            "not_a_player"
        );
    }

    #[test]
    fn a_move_before_the_second_player_joins_is_not_started() {
        let mut h = Harness::new();
        h.send("alice", "join", json!({}));
        assert_eq!(
            h.rejected("alice", "move", json!({"cell": 4})),
            "not_started"
        );
        assert_eq!(
            h.rejected("alice", "move", json!({"cell": 42})),
            "not_started"
        );
    }

    #[test]
    fn a_move_after_the_end_is_game_over() {
        // Won.
        let mut h = Harness::playing();
        h.moves(&[0, 3, 1, 4, 2]);
        assert_eq!(h.rejected("bob", "move", json!({"cell": 5})), "game_over");
        assert_eq!(h.rejected("alice", "move", json!({"cell": 8})), "game_over");
        // Drawn.
        let mut h = Harness::playing();
        h.moves(&[0, 1, 2, 4, 3, 5, 7, 6, 8]);
        assert_eq!(h.rejected("alice", "move", json!({"cell": 0})), "game_over");
        assert_eq!(h.rejected("bob", "move", json!({"cell": 0})), "game_over");
        // Abandoned while its player was away.
        let mut h = Harness::new();
        h.send("alice", "join", json!({}));
        h.advance(WAITING_TIMEOUT_SECONDS);
        h.tick();
        assert_eq!(h.state.status, Status::Abandoned);
        assert_eq!(h.rejected("alice", "move", json!({"cell": 0})), "game_over");
    }

    #[test]
    fn a_move_out_of_turn_is_not_your_turn() {
        let mut h = Harness::playing();
        assert_eq!(
            h.rejected("bob", "move", json!({"cell": 0})),
            "not_your_turn"
        );
        h.moves(&[0]);
        assert_eq!(
            h.rejected("alice", "move", json!({"cell": 1})),
            "not_your_turn"
        );
        // The turn is checked before the cell.
        assert_eq!(
            h.rejected("alice", "move", json!({"cell": 0})),
            "not_your_turn"
        );
        assert_eq!(
            h.rejected("alice", "move", json!({"cell": 9})),
            "not_your_turn"
        );
    }

    #[test]
    fn a_move_outside_the_board_is_cell_out_of_range() {
        let mut h = Harness::playing();
        for cell in [
            json!(-1),
            json!(9),
            json!(100),
            json!(i64::MIN),
            json!(u64::MAX),
        ] {
            assert_eq!(
                h.rejected("alice", "move", json!({ "cell": cell })),
                "cell_out_of_range"
            );
        }
    }

    #[test]
    fn a_move_to_an_occupied_cell_is_cell_taken() {
        let mut h = Harness::playing();
        h.moves(&[4]);
        assert_eq!(h.rejected("bob", "move", json!({"cell": 4})), "cell_taken");
        h.moves(&[0]);
        assert_eq!(
            h.rejected("alice", "move", json!({"cell": 0})),
            "cell_taken"
        );
        assert_eq!(
            h.rejected("alice", "move", json!({"cell": 4})),
            "cell_taken"
        );
    }

    #[test]
    fn an_unknown_action_is_rejected() {
        let mut h = Harness::playing();
        for name in ["dance", "", "Move", "$connected", "$disconnected"] {
            assert_eq!(h.rejected("alice", name, json!({})), "unknown_action");
            assert_eq!(h.rejected("carol", name, json!({})), "unknown_action");
        }
    }

    #[test]
    fn every_rejection_code_is_distinct_snake_case() {
        let all = [
            Rejection::BadRequest,
            Rejection::UnknownAction,
            Rejection::NotAPlayer,
            Rejection::NotStarted,
            Rejection::GameOver,
            Rejection::NotYourTurn,
            Rejection::CellOutOfRange,
            Rejection::CellTaken,
            Rejection::GameNotOver,
            Rejection::MatchAbandoned,
            Rejection::OpponentLeft,
        ];
        let codes: BTreeSet<_> = all.iter().map(|r| r.code()).collect();
        assert_eq!(codes.len(), all.len());
        assert!(codes
            .iter()
            .all(|c| c.chars().all(|ch| ch.is_ascii_lowercase() || ch == '_')));
    }

    // ---- leave ---------------------------------------------------------------------------

    #[test]
    fn leaving_while_waiting_frees_the_seat_and_abandons_the_empty_match() {
        let mut h = Harness::new();
        h.send("alice", "join", json!({}));
        let out = h.send("alice", "leave", json!({}));
        let data = only_state(&out);
        assert_eq!(data["players"], json!({"X": null, "O": null}));
        assert_eq!(data["status"], json!("abandoned"));
        assert_eq!(h.next_tick_at(), None);
        assert_eq!(TicTacToe.status(&h.state), "abandoned");
    }

    #[test]
    fn leaving_during_play_forfeits_to_the_other_player() {
        for (leaver, winner) in [("alice", "O"), ("bob", "X")] {
            let mut h = Harness::playing();
            h.moves(&[4]);
            let out = h.send(leaver, "leave", json!({}));
            let data = only_state(&out);
            assert_eq!(data["status"], json!("won"));
            assert_eq!(data["winner"], json!(winner));
            assert_eq!(data["turn_deadline"], Value::Null);
            assert_eq!(h.next_tick_at(), None);
        }
    }

    #[test]
    fn leaving_after_the_end_is_recorded_quietly_and_blocks_a_rematch() {
        let mut h = Harness::playing();
        h.moves(&[0, 3, 1, 4, 2]);
        let out = h.send("bob", "leave", json!({}));
        assert!(out.is_empty(), "nothing public changed: {out:?}");
        assert!(h.state.left.o);
        h.ignored("bob", "leave", json!({}));
        assert_eq!(h.rejected("alice", "rematch", json!({})), "opponent_left");
        assert_eq!(h.rejected("bob", "rematch", json!({})), "not_a_player");
    }

    #[test]
    fn leaving_after_voting_withdraws_the_vote() {
        let mut h = Harness::playing();
        h.moves(&[0, 1, 2, 4, 3, 5, 7, 6, 8]);
        h.send("alice", "rematch", json!({}));
        let out = h.send("alice", "leave", json!({}));
        assert_eq!(only_state(&out)["rematch"], json!({"X": false, "O": false}));
        assert_eq!(h.rejected("bob", "rematch", json!({})), "opponent_left");
    }

    #[test]
    fn a_forfeit_by_leaving_also_blocks_a_rematch() {
        let mut h = Harness::playing();
        h.send("alice", "leave", json!({}));
        assert_eq!(h.rejected("bob", "rematch", json!({})), "opponent_left");
    }

    #[test]
    fn leaving_by_a_non_player_does_nothing_in_every_status() {
        let mut h = Harness::new();
        h.ignored("carol", "leave", json!({}));
        h.send("alice", "join", json!({}));
        h.ignored("carol", "leave", json!({}));
        h.send("bob", "join", json!({}));
        h.ignored("carol", "leave", json!({}));
        h.moves(&[0, 3, 1, 4, 2]);
        h.ignored("carol", "leave", json!({}));
        let mut h = Harness::new();
        h.send("alice", "join", json!({}));
        h.send("alice", "leave", json!({}));
        h.ignored("carol", "leave", json!({}));
        h.ignored("alice", "leave", json!({}));
    }

    // ---- rematch -------------------------------------------------------------------------

    #[test]
    fn a_rematch_needs_both_votes_and_swaps_x_and_o() {
        let mut h = Harness::playing();
        h.moves(&[0, 3, 1, 4, 2]);
        h.advance(11);
        let out = h.send("bob", "rematch", json!({}));
        let data = only_state(&out);
        assert_eq!(data["rematch"], json!({"X": false, "O": true}));
        assert_eq!(data["status"], json!("won"));
        h.ignored("bob", "rematch", json!({}));

        let out = h.send("alice", "rematch", json!({}));
        let data = only_state(&out);
        assert_eq!(data["players"], json!({"X": "bob", "O": "alice"}));
        assert_eq!(data["status"], json!("playing"));
        assert_eq!(data["turn"], json!("X"));
        assert_eq!(data["winner"], Value::Null);
        assert_eq!(data["move_count"], json!(0));
        assert_eq!(data["game_no"], json!(2));
        assert_eq!(data["rematch"], json!({"X": false, "O": false}));
        assert_eq!(
            data["board"],
            json!([null, null, null, null, null, null, null, null, null])
        );
        assert_eq!(data["turn_deadline"], rfc3339(t0() + secs(41)));

        // Bob, now X, moves first; a second game can end and be replayed again.
        assert_eq!(
            h.rejected("alice", "move", json!({"cell": 0})),
            "not_your_turn"
        );
        h.moves(&[0, 3, 1, 4, 2]);
        assert_eq!(h.state.winner, Some(Mark::X));
        h.send("alice", "rematch", json!({}));
        h.send("bob", "rematch", json!({}));
        assert_eq!(h.state.players.x, Some(id("alice")));
        assert_eq!(h.state.game_no, 3);
    }

    #[test]
    fn a_match_is_over_when_won_drawn_or_abandoned_and_live_again_after_a_rematch() {
        let mut h = Harness::new();
        assert!(!TicTacToe.is_over(&h.state), "waiting");
        h.send("alice", "join", json!({}));
        h.send("bob", "join", json!({}));
        assert!(!TicTacToe.is_over(&h.state), "playing");
        h.moves(&[0, 3, 1, 4, 2]);
        assert!(TicTacToe.is_over(&h.state), "won");
        h.send("alice", "rematch", json!({}));
        h.send("bob", "rematch", json!({}));
        assert!(!TicTacToe.is_over(&h.state), "rematched");
        h.moves(&[0, 1, 2, 4, 3, 5, 7, 6, 8]);
        assert!(TicTacToe.is_over(&h.state), "draw");
        let mut h = Harness::new();
        h.send("alice", "join", json!({}));
        h.send("alice", "leave", json!({}));
        assert_eq!(h.state.status, Status::Abandoned);
        assert!(TicTacToe.is_over(&h.state), "abandoned");
    }

    #[test]
    fn a_rematch_after_a_draw_works_too() {
        let mut h = Harness::playing();
        h.moves(&[0, 1, 2, 4, 3, 5, 7, 6, 8]);
        h.send("alice", "rematch", json!({}));
        h.send("bob", "rematch", json!({}));
        assert_eq!(h.state.status, Status::Playing);
        assert_eq!(h.state.players.x, Some(id("bob")));
    }

    #[test]
    fn a_rematch_from_a_spectator_is_not_a_player() {
        let mut h = Harness::playing();
        assert_eq!(h.rejected("carol", "rematch", json!({})), "not_a_player");
        h.moves(&[0, 3, 1, 4, 2]);
        assert_eq!(h.rejected("carol", "rematch", json!({})), "not_a_player");
    }

    #[test]
    fn a_rematch_before_the_end_is_game_not_over() {
        let mut h = Harness::new();
        h.send("alice", "join", json!({}));
        assert_eq!(h.rejected("alice", "rematch", json!({})), "game_not_over");
        h.send("bob", "join", json!({}));
        assert_eq!(h.rejected("alice", "rematch", json!({})), "game_not_over");
        assert_eq!(h.rejected("bob", "rematch", json!({})), "game_not_over");
    }

    #[test]
    fn a_rematch_of_an_abandoned_match_is_match_abandoned() {
        let mut h = Harness::new();
        h.send("alice", "join", json!({}));
        h.advance(WAITING_TIMEOUT_SECONDS);
        h.tick();
        assert_eq!(h.rejected("alice", "rematch", json!({})), "match_abandoned");
    }

    // ---- chat ----------------------------------------------------------------------------

    fn chat_of(out: &[Outgoing]) -> &Value {
        assert_eq!(out.len(), 1, "exactly one message: {out:?}");
        assert_eq!(out[0].to, To::Match);
        assert_eq!(out[0].name, "chat");
        &out[0].data
    }

    #[test]
    fn chat_from_anyone_is_relayed_without_touching_the_state() {
        let mut h = Harness::playing();
        for who in ["alice", "carol"] {
            let before = h.state.clone();
            let out = h.send(who, "chat", json!({"text": "gg"}));
            assert_eq!(chat_of(&out), &json!({"from": who, "text": "gg"}));
            assert_eq!(h.state, before);
        }
    }

    #[test]
    fn chat_of_500_characters_passes_even_when_multibyte() {
        let mut h = Harness::new();
        for text in [
            "a".repeat(500),
            "é".repeat(500),
            "🦀".repeat(500),
            "x".into(),
        ] {
            let out = h.send("carol", "chat", json!({ "text": text }));
            assert_eq!(chat_of(&out)["text"], json!(text));
        }
    }

    #[test]
    fn chat_that_is_empty_too_long_or_not_a_string_is_a_bad_request() {
        let mut h = Harness::playing();
        for data in [
            json!({"text": "a".repeat(501)}),
            json!({"text": "é".repeat(501)}),
            json!({"text": ""}),
            json!({"text": 5}),
            json!({"text": null}),
            json!({"text": ["hi"]}),
            json!({}),
            json!("hi"),
        ] {
            assert_eq!(h.rejected("alice", "chat", data), "bad_request");
        }
    }

    // ---- presence ------------------------------------------------------------------------

    #[test]
    fn a_player_stays_connected_while_any_connection_remains() {
        let mut h = Harness::playing();
        let out = h.connect("alice", "c1");
        assert_eq!(
            only_state(&out)["connected"],
            json!({"X": true, "O": false})
        );
        assert!(h.connect("alice", "c2").is_empty(), "no flip, no broadcast");
        assert!(h.connect("alice", "c2").is_empty(), "a repeated connection");
        assert!(h.disconnect("alice", "c1").is_empty(), "c2 is still there");
        assert!(h.state.is_connected(Mark::X));
        assert_eq!(h.state.disconnected_since.x, None);
        assert!(
            h.disconnect("alice", "c9").is_empty(),
            "an unknown connection"
        );
        let out = h.disconnect("alice", "c2");
        assert_eq!(
            only_state(&out)["connected"],
            json!({"X": false, "O": false})
        );
        assert!(h.disconnect("alice", "c2").is_empty());
        assert!(h.state.connections.is_empty());
    }

    #[test]
    fn a_connection_made_before_joining_counts_once_seated() {
        let mut h = Harness::new();
        assert!(
            h.connect("alice", "c1").is_empty(),
            "spectators are not broadcast"
        );
        assert!(h.connect("carol", "c3").is_empty());
        let out = h.send("alice", "join", json!({}));
        assert_eq!(
            only_state(&out)["connected"],
            json!({"X": true, "O": false})
        );
        h.send("bob", "join", json!({}));
        // Once play starts only the players' connections are kept.
        assert_eq!(
            h.state.connections.keys().cloned().collect::<Vec<_>>(),
            vec![id("alice")]
        );
        let before = h.state.clone();
        assert!(h.connect("carol", "c4").is_empty());
        assert!(h.disconnect("carol", "c3").is_empty());
        assert_eq!(h.state, before, "spectators are ignored during play");
    }

    #[test]
    fn presence_never_ends_a_match_by_itself() {
        let mut h = Harness::playing();
        let presence = |client: &str, up: bool| {
            let (client, connection) = (id(client), format!("{client}-1"));
            if up {
                Input::Connected { client, connection }
            } else {
                Input::Disconnected { client, connection }
            }
        };
        let out = h.run(vec![
            presence("alice", true),
            presence("bob", true),
            presence("alice", false),
            presence("bob", false),
        ]);
        assert_eq!(out.len(), 4, "each flip is broadcast");
        assert!(out.iter().all(|o| o.data["status"] == json!("playing")));
        assert_eq!(h.state.status, Status::Playing);
        let mut h = Harness::new();
        h.send("alice", "join", json!({}));
        h.connect("alice", "a");
        h.disconnect("alice", "a");
        assert_eq!(h.state.status, Status::Waiting);
    }

    #[test]
    fn presence_after_the_end_is_broadcast_but_starts_no_clock() {
        let mut h = Harness::playing();
        h.connect("bob", "b");
        h.moves(&[0, 3, 1, 4, 2]);
        let out = h.disconnect("bob", "b");
        assert_eq!(
            only_state(&out)["connected"],
            json!({"X": false, "O": false})
        );
        assert_eq!(h.state.disconnected_since, Seats::default());
        assert_eq!(h.next_tick_at(), None);
    }

    // ---- the clocks ----------------------------------------------------------------------

    #[test]
    fn the_player_to_move_forfeits_when_the_turn_deadline_passes() {
        let mut h = Harness::playing();
        h.advance(10);
        h.moves(&[4]);
        assert_eq!(h.next_tick_at(), Some(t0() + secs(40)));
        h.advance(29);
        assert!(h.tick().is_empty(), "a tick with nothing due does nothing");
        assert_eq!(h.state.status, Status::Playing);
        h.advance(1);
        let out = h.tick();
        let data = only_state(&out);
        assert_eq!(data["status"], json!("won"));
        assert_eq!(data["winner"], json!("X"), "O was to move");
        assert_eq!(data["turn_deadline"], Value::Null);
        assert_eq!(h.next_tick_at(), None);
        assert!(h.tick().is_empty(), "an ended match has no clock");
    }

    #[test]
    fn a_late_tick_still_forfeits_x_on_the_first_turn() {
        let mut h = Harness::playing();
        h.advance(3600);
        h.tick();
        assert_eq!(h.state.winner, Some(Mark::O));
    }

    #[test]
    fn a_player_back_within_the_grace_plays_on() {
        let config = Config {
            turn_seconds: 600,
            reconnect_seconds: 30,
        };
        let mut h = Harness::with_config(config);
        h.send("alice", "join", json!({}));
        h.send("bob", "join", json!({}));
        h.connect("bob", "b1");
        h.advance(5);
        let out = h.disconnect("bob", "b1");
        assert_eq!(only_state(&out)["connected"]["O"], json!(false));
        assert_eq!(h.state.disconnected_since.o, Some(t0() + secs(5)));
        assert_eq!(h.next_tick_at(), Some(t0() + secs(35)));
        h.advance(29);
        assert!(h.tick().is_empty());
        let out = h.connect("bob", "b2");
        assert_eq!(only_state(&out)["connected"]["O"], json!(true));
        assert_eq!(h.state.disconnected_since.o, None);
        assert_eq!(h.next_tick_at(), Some(t0() + secs(600)));
        h.advance(60);
        assert!(h.tick().is_empty());
        assert_eq!(h.state.status, Status::Playing);
    }

    #[test]
    fn a_player_away_past_the_grace_forfeits() {
        let config = Config {
            turn_seconds: 600,
            reconnect_seconds: 30,
        };
        let mut h = Harness::with_config(config);
        h.send("alice", "join", json!({}));
        h.send("bob", "join", json!({}));
        h.connect("bob", "b1");
        h.advance(5);
        h.disconnect("bob", "b1");
        h.advance(30);
        let out = h.tick();
        let data = only_state(&out);
        assert_eq!(data["status"], json!("won"));
        assert_eq!(
            data["winner"],
            json!("X"),
            "O was away, though X was to move"
        );
        assert_eq!(h.state.disconnected_since, Seats::default());
        // Coming back afterwards changes the flag only.
        let out = h.connect("bob", "b2");
        assert_eq!(only_state(&out)["status"], json!("won"));
    }

    #[test]
    fn when_both_are_away_the_first_to_leave_forfeits() {
        let config = Config {
            turn_seconds: 600,
            reconnect_seconds: 30,
        };
        let mut h = Harness::with_config(config);
        h.send("alice", "join", json!({}));
        h.send("bob", "join", json!({}));
        h.connect("alice", "a");
        h.connect("bob", "b");
        h.disconnect("bob", "b");
        h.advance(10);
        h.disconnect("alice", "a");
        assert_eq!(h.next_tick_at(), Some(t0() + secs(30)));
        h.advance(100);
        h.tick();
        assert_eq!(h.state.winner, Some(Mark::X), "bob (O) left first");
    }

    #[test]
    fn a_late_tick_applies_the_event_that_fell_due_first() {
        // X's grace ends at +40 and the turn deadline at +60: a tick at +100 forfeits X
        // for being away, the earlier event.
        let config = Config {
            turn_seconds: 60,
            reconnect_seconds: 30,
        };
        let mut h = Harness::with_config(config);
        h.send("alice", "join", json!({}));
        h.send("bob", "join", json!({}));
        h.connect("alice", "a");
        h.moves(&[0]);
        h.advance(10);
        h.disconnect("alice", "a");
        h.advance(90);
        h.tick();
        assert_eq!(h.state.winner, Some(Mark::O));
    }

    #[test]
    fn simultaneous_events_forfeit_the_player_to_move() {
        let config = Config {
            turn_seconds: 30,
            reconnect_seconds: 30,
        };
        let mut h = Harness::with_config(config);
        h.connect("alice", "a");
        h.connect("bob", "b");
        h.send("alice", "join", json!({}));
        h.send("bob", "join", json!({}));
        // Both gone at the start, together with the turn clock: X is to move.
        h.disconnect("bob", "b");
        h.disconnect("alice", "a");
        h.advance(30);
        h.tick();
        assert_eq!(h.state.winner, Some(Mark::O));
    }

    #[test]
    fn a_waiting_match_with_nobody_is_abandoned_after_ten_minutes() {
        let mut h = Harness::new();
        assert_eq!(h.next_tick_at(), Some(t0() + secs(600)));
        h.advance(599);
        assert!(h.tick().is_empty());
        h.advance(1);
        let out = h.tick();
        assert_eq!(only_state(&out)["status"], json!("abandoned"));
        assert_eq!(h.next_tick_at(), None);
    }

    #[test]
    fn a_waiting_player_who_is_connected_keeps_the_match_open() {
        let mut h = Harness::new();
        h.advance(60);
        h.connect("alice", "a");
        h.send("alice", "join", json!({}));
        assert_eq!(h.next_tick_at(), None, "someone is there");
        h.advance(3600);
        assert!(h.tick().is_empty());
        // Gone: the idle clock starts from the disconnection.
        h.disconnect("alice", "a");
        assert_eq!(h.next_tick_at(), Some(t0() + secs(3660 + 600)));
        h.advance(599);
        assert!(h.tick().is_empty());
        h.advance(1);
        h.tick();
        assert_eq!(h.state.status, Status::Abandoned);
    }

    #[test]
    fn a_seated_but_never_connected_player_does_not_stop_the_idle_clock() {
        let mut h = Harness::new();
        h.advance(100);
        h.send("alice", "join", json!({}));
        assert_eq!(h.next_tick_at(), Some(t0() + secs(600)));
    }

    #[test]
    fn next_tick_at_follows_the_state() {
        let config = Config {
            turn_seconds: 45,
            reconnect_seconds: 20,
        };
        let mut h = Harness::with_config(config);
        assert_eq!(h.next_tick_at(), Some(t0() + secs(600)));
        h.send("alice", "join", json!({}));
        h.advance(2);
        h.send("bob", "join", json!({}));
        assert_eq!(h.next_tick_at(), Some(t0() + secs(47)));
        h.connect("bob", "b");
        h.advance(1);
        h.disconnect("bob", "b");
        assert_eq!(
            h.next_tick_at(),
            Some(t0() + secs(23)),
            "the grace ends first"
        );
        h.connect("bob", "b");
        assert_eq!(h.next_tick_at(), Some(t0() + secs(47)));
        h.advance(10);
        h.moves(&[0]);
        assert_eq!(h.next_tick_at(), Some(t0() + secs(13 + 45)));
        h.moves(&[3, 1, 4, 2]);
        assert_eq!(h.next_tick_at(), None);
    }

    // ---- config --------------------------------------------------------------------------

    #[test]
    fn an_absent_or_empty_config_gives_the_defaults() {
        for raw in [Value::Null, json!({})] {
            assert_eq!(
                TicTacToe.config(&raw),
                Ok(Config {
                    turn_seconds: 30,
                    reconnect_seconds: 30
                })
            );
        }
        assert_eq!(
            TicTacToe.config(&json!({"reconnect_seconds": 5})),
            Ok(Config {
                turn_seconds: 30,
                reconnect_seconds: 5
            })
        );
    }

    #[test]
    fn config_durations_range_from_1_to_3600() {
        for field in ["turn_seconds", "reconnect_seconds"] {
            for ok in [1, 2, 3599, 3600] {
                let config = TicTacToe.config(&json!({ field: ok })).expect("in range");
                let stored = serde_json::to_value(config).expect("json");
                assert_eq!(stored[field], json!(ok));
            }
            for bad in [
                json!(0),
                json!(3601),
                json!(-1),
                json!(u64::MAX),
                json!(1e10),
            ] {
                let err = TicTacToe
                    .config(&json!({ field: bad }))
                    .expect_err("out of range");
                assert!(err.contains(field), "{err}");
                assert!(err.contains("from 1 to 3600"), "{err}");
            }
        }
    }

    #[test]
    fn config_fields_of_the_wrong_type_are_refused() {
        for bad in [
            json!("30"),
            json!(30.5),
            json!(30.0),
            json!(true),
            json!(null),
            json!([30]),
            json!({"s": 30}),
        ] {
            let err = TicTacToe
                .config(&json!({ "turn_seconds": bad }))
                .expect_err("wrong type");
            assert!(err.contains("turn_seconds"), "{err}");
            assert!(err.contains("integer"), "{err}");
        }
    }

    #[test]
    fn a_config_that_is_not_an_object_or_has_unknown_fields_is_refused() {
        for raw in [json!([]), json!("fast"), json!(5), json!(true)] {
            let err = TicTacToe.config(&raw).expect_err("not an object");
            assert!(err.contains("JSON object"), "{err}");
        }
        let err = TicTacToe
            .config(&json!({"turn_seconds": 10, "board_size": 4}))
            .expect_err("unknown field");
        assert!(err.contains("board_size"), "{err}");
    }

    #[test]
    fn the_stored_config_round_trips_and_rejects_strangers() {
        let config = Config {
            turn_seconds: 12,
            reconnect_seconds: 34,
        };
        let json = serde_json::to_value(config).expect("json");
        assert_eq!(json, json!({"turn_seconds": 12, "reconnect_seconds": 34}));
        let back: Config = serde_json::from_value(json).expect("parses");
        assert_eq!(back, config);
        let partial: Config = serde_json::from_value(json!({"turn_seconds": 12})).expect("parses");
        assert_eq!(partial.reconnect_seconds, DEFAULT_RECONNECT_SECONDS);
        assert!(serde_json::from_value::<Config>(json!({"speed": 1})).is_err());
    }

    // ---- the type-erased interface -------------------------------------------------------

    #[test]
    fn the_engine_interface_runs_a_whole_game() {
        use crate::game::DynGame;

        let game: &dyn DynGame = &TicTacToe;
        let match_id = MatchId::new_random();
        let created = game
            .create(match_id, &json!({"turn_seconds": 20}), t0())
            .expect("a valid config");
        assert_eq!(created.status, "waiting");
        assert_eq!(created.next_tick_at, Some(t0() + secs(600)));
        assert_eq!(created.out.len(), 1);
        assert!(game
            .create(match_id, &json!({"turn_seconds": 0}), t0())
            .is_err());

        let msg = |msg_id: i64, who: &str, name: &str, data: Value| Input::Client {
            msg_id,
            client: id(who),
            name: name.into(),
            data,
        };
        let inputs = vec![
            msg(1, "alice", "join", json!({})),
            msg(2, "bob", "join", json!({})),
            msg(3, "alice", "move", json!({"cell": 0})),
            msg(4, "alice", "move", json!({"cell": 1})),
        ];
        let applied = game.apply(match_id, &created.config, &created.state, &inputs, t0());
        assert_eq!(applied.applied, 4);
        assert_eq!(applied.error, None);
        let (state, status, next) = applied.next.expect("a new state");
        assert_eq!(status, "playing");
        assert_eq!(next, Some(t0() + secs(20)));
        assert_eq!(applied.out.len(), 4, "3 broadcasts and 1 rejection");
        assert_eq!(applied.out[3].to, To::User(id("alice")));
        assert_eq!(
            applied.out[3].data,
            json!({"reason": "not_your_turn", "ref": 4})
        );

        let tick = Tick {
            scheduled: t0() + secs(20),
            now: t0() + secs(21),
        };
        let ticked = game.tick(match_id, &created.config, &state, tick);
        let (_, status, next) = ticked.next.expect("a new state");
        assert_eq!(status, "won");
        assert_eq!(next, None);
        assert_eq!(ticked.out[0].data["winner"], json!("X"));
    }

    // ---- properties ----------------------------------------------------------------------

    /// Checks what must hold of any reachable state.
    fn check_invariants(state: &State) {
        let xs = state.board.iter().filter(|c| **c == Some(Mark::X)).count();
        let os = state.board.iter().filter(|c| **c == Some(Mark::O)).count();
        assert!(xs == os || xs == os + 1, "X moves first: {state:?}");
        assert_eq!(xs + os, state.move_count as usize);
        let lines_of = |m: Mark| {
            LINES
                .iter()
                .filter(|l| l.iter().all(|&c| state.board[c] == Some(m)))
                .count()
        };
        match state.status {
            Status::Playing => {
                assert_eq!(winner_of(&state.board), None);
                assert!(xs + os < 9);
                assert_eq!(state.turn, if xs == os { Mark::X } else { Mark::O });
                assert!(state.turn_deadline.is_some());
                assert_eq!(state.winner, None);
            }
            Status::Won => {
                let winner = state.winner.expect("a won game has a winner");
                assert!(lines_of(winner) >= 1);
                assert_eq!(lines_of(winner.other()), 0);
                // The winner moved last.
                let expected = if xs > os { Mark::X } else { Mark::O };
                assert_eq!(winner, expected);
                assert_eq!(state.turn_deadline, None);
            }
            Status::Draw => {
                assert_eq!(xs + os, 9);
                assert_eq!(winner_of(&state.board), None);
                assert_eq!(state.winner, None);
                assert_eq!(state.turn_deadline, None);
            }
            Status::Waiting | Status::Abandoned => unreachable!("not after a join"),
        }
    }

    #[test]
    fn every_five_move_prefix_keeps_the_invariants() {
        let start = Harness::playing();
        let mut played = 0;
        for a in 0..9i64 {
            for b in (0..9).filter(|&b| b != a) {
                for c in (0..9).filter(|&c| c != a && c != b) {
                    for d in (0..9).filter(|&d| ![a, b, c].contains(&d)) {
                        for e in (0..9).filter(|&e| ![a, b, c, d].contains(&e)) {
                            let mut h = start.clone();
                            for cell in [a, b, c, d, e] {
                                let ended = h.state.status.is_over();
                                let out = h.moves(&[cell]);
                                assert_eq!(out.len(), 1);
                                if ended {
                                    assert_eq!(out[0].data["reason"], json!("game_over"));
                                } else {
                                    assert_eq!(out[0].name, "state");
                                }
                                check_invariants(&h.state);
                            }
                            // Five moves can only be won by X, on the fifth.
                            let x_line = winner_of(&h.state.board) == Some(Mark::X);
                            assert_eq!(h.state.status == Status::Won, x_line);
                            played += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(played, 9 * 8 * 7 * 6 * 5);
    }

    #[test]
    fn the_whole_game_tree_has_the_known_outcome_counts() {
        // Known totals: 255 168 games, 131 184 won by X, 77 904 by O, 46 080 drawn.
        fn walk(board: &mut [Option<Mark>; 9], turn: Mark, counts: &mut [u32; 3]) {
            for cell in 0..9 {
                if board[cell].is_some() {
                    continue;
                }
                board[cell] = Some(turn);
                match winner_of(board) {
                    Some(Mark::X) => counts[0] += 1,
                    Some(Mark::O) => counts[1] += 1,
                    None if board.iter().all(Option::is_some) => counts[2] += 1,
                    None => walk(board, turn.other(), counts),
                }
                board[cell] = None;
            }
        }
        let mut counts = [0; 3];
        walk(&mut [None; 9], Mark::X, &mut counts);
        assert_eq!(counts, [131_184, 77_904, 46_080]);
    }
}
