//! Connect Four (game `connect4`) on postgame, written only against postgame's public API:
//! the example of docs/GAMES.md.
//!
//! The contract clients rely on:
//! - config `{"turn_seconds": 1..=3600}` (optional, default 60);
//! - control messages on `control:<id>`: `join` `{}` (the first joiner plays `R`, the
//!   second `Y` and the game starts with `R` to move; later ones spectate), `drop`
//!   `{"column": 0..=6}`, `leave` `{}`, `chat` `{"text"}` (1 to 500 characters);
//! - `state` on `match:<id>` after every change: `board` (6 rows, top to bottom, of 7
//!   cells each `null`, `"R"` or `"Y"`), `turn` (`"R"`/`"Y"`), `status` (`waiting`,
//!   `playing`, `won`, `drawn`, `abandoned`), `winner` (`"R"`, `"Y"` or null), `players`
//!   `{"R", "Y"}` (client ids or null), `turn_deadline` (RFC 3339 or null), and `moves`;
//! - an invalid control message (a full column, a column out of range, not your turn, …)
//!   changes nothing and gets a private `rejected` `{"reason", "ref"}` on `user:<client>`;
//! - when `turn_deadline` passes, the player to move forfeits (`won` for the other); a
//!   player who sends `leave` during play forfeits; a `waiting` match whose players all
//!   left, or that waited [`WAITING_TIMEOUT_SECONDS`] for a second player, is `abandoned`.
//!
//! Every handler is a pure function of (state, input, `now`).

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use postgame::{App, ClientId, Cx, Game, GameError, Input, Outgoing, Tick, To};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The game's name in `POST /v1/matches`.
pub const NAME: &str = "connect4";
/// Rows of the board.
pub const ROWS: usize = 6;
/// Columns of the board.
pub const COLUMNS: usize = 7;
/// Default of [`Config::turn_seconds`].
pub const DEFAULT_TURN_SECONDS: u32 = 60;
/// Largest accepted [`Config::turn_seconds`] (the smallest is 1).
pub const MAX_TURN_SECONDS: u32 = 3600;
/// How long a match may wait for its second player before it is abandoned.
pub const WAITING_TIMEOUT_SECONDS: i64 = 30 * 60;
/// Longest chat line, in characters.
pub const MAX_CHAT_CHARS: usize = 500;

/// The browser page, served at `/connect4`.
pub const PAGE: &str = include_str!("../web/connect4.html");

/// The `connect4` server: the built-in games, Connect Four and its page.
pub fn app() -> App {
    App::new()
        .named(env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"))
        .game(Connect4)
        .page("/connect4", PAGE)
}

/// The game, registered as [`NAME`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Connect4;

/// A player's colour, serialised as `"R"` or `"Y"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Disc {
    R,
    Y,
}

impl Disc {
    /// The opponent's colour.
    pub fn other(self) -> Disc {
        match self {
            Disc::R => Disc::Y,
            Disc::Y => Disc::R,
        }
    }
}

/// The lifecycle of a match, as stored in `matches.status` and broadcast.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Waiting,
    Playing,
    Won,
    Drawn,
    Abandoned,
}

impl Status {
    /// The protocol word.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Waiting => "waiting",
            Status::Playing => "playing",
            Status::Won => "won",
            Status::Drawn => "drawn",
            Status::Abandoned => "abandoned",
        }
    }
}

/// The match configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Seconds the player to move has before forfeiting (1..=3600, default 60).
    pub turn_seconds: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            turn_seconds: DEFAULT_TURN_SECONDS,
        }
    }
}

/// The two seats, serialised as `{"R": …, "Y": …}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Players {
    #[serde(rename = "R")]
    pub r: Option<ClientId>,
    #[serde(rename = "Y")]
    pub y: Option<ClientId>,
}

impl Players {
    fn seat(&mut self, disc: Disc) -> &mut Option<ClientId> {
        match disc {
            Disc::R => &mut self.r,
            Disc::Y => &mut self.y,
        }
    }

    /// The colour `client` plays, if seated.
    pub fn disc_of(&self, client: &ClientId) -> Option<Disc> {
        if self.r.as_ref() == Some(client) {
            Some(Disc::R)
        } else if self.y.as_ref() == Some(client) {
            Some(Disc::Y)
        } else {
            None
        }
    }
}

/// The stored state of a match (JSONB). Its field names are its stored format: a new field
/// gets `#[serde(default)]` so matches stored before it still load (docs/GAMES.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// `board[row][column]`, row 0 at the top.
    pub board: [[Option<Disc>; COLUMNS]; ROWS],
    pub players: Players,
    /// Whose drop it is (`R` while waiting).
    pub turn: Disc,
    pub status: Status,
    pub winner: Option<Disc>,
    /// When the player to move forfeits; only while `playing`.
    pub turn_deadline: Option<DateTime<Utc>>,
    /// Since when the match has waited for players; only while `waiting`.
    pub waiting_since: Option<DateTime<Utc>>,
    /// Discs dropped.
    pub moves: u32,
    /// Copied from the config at creation, so the clock needs no config.
    pub turn_seconds: u32,
}

/// Why a control message was refused: the `reason` of `rejected`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The data lacks what the action needs (an integer `column`, a 1..=500 character
    /// `text`).
    BadRequest,
    /// A control message this game does not know.
    UnknownAction,
    /// A `drop` from someone without a seat.
    NotAPlayer,
    /// A `drop` while `waiting`.
    NotStarted,
    /// A `drop` after the end.
    GameOver,
    /// A `drop` by the player not on turn.
    NotYourTurn,
    /// A `column` outside 0..=6.
    ColumnOutOfRange,
    /// A `column` with no free cell.
    ColumnFull,
}

impl Rejection {
    /// The wire code.
    pub fn code(self) -> &'static str {
        match self {
            Rejection::BadRequest => "bad_request",
            Rejection::UnknownAction => "unknown_action",
            Rejection::NotAPlayer => "not_a_player",
            Rejection::NotStarted => "not_started",
            Rejection::GameOver => "game_over",
            Rejection::NotYourTurn => "not_your_turn",
            Rejection::ColumnOutOfRange => "column_out_of_range",
            Rejection::ColumnFull => "column_full",
        }
    }
}

/// The 4-in-a-row through (`row`, `column`) of `disc`'s colour, if any.
pub fn wins_at(board: &[[Option<Disc>; COLUMNS]; ROWS], row: usize, column: usize) -> bool {
    let Some(disc) = board[row][column] else {
        return false;
    };
    let same = |r: i64, c: i64| {
        (0..ROWS as i64).contains(&r)
            && (0..COLUMNS as i64).contains(&c)
            && board[r as usize][c as usize] == Some(disc)
    };
    // Horizontal, vertical, and both diagonals: count along each direction and back.
    [(0, 1), (1, 0), (1, 1), (1, -1)].iter().any(|&(dr, dc)| {
        let run = |sign: i64| {
            (1..4)
                .take_while(|&k| same(row as i64 + sign * k * dr, column as i64 + sign * k * dc))
                .count()
        };
        1 + run(1) + run(-1) >= 4
    })
}

/// The data of the `state` broadcast.
pub fn public_state(state: &State) -> Value {
    json!({
        "board": state.board,
        "turn": state.turn,
        "status": state.status,
        "winner": state.winner,
        "players": state.players,
        "turn_deadline": state
            .turn_deadline
            .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true)),
        "moves": state.moves,
    })
}

fn broadcast(state: &State, out: &mut Vec<Outgoing>) {
    out.push(Outgoing::new(To::Match, "state", public_state(state)));
}

fn end(state: &mut State, status: Status, winner: Option<Disc>) {
    state.status = status;
    state.winner = winner;
    state.turn_deadline = None;
    state.waiting_since = None;
}

fn join(state: &mut State, now: DateTime<Utc>, client: &ClientId, out: &mut Vec<Outgoing>) {
    if state.status != Status::Waiting || state.players.disc_of(client).is_some() {
        return; // a spectator, or a repeated join: nothing changes
    }
    let seat = if state.players.r.is_none() {
        Disc::R
    } else {
        Disc::Y
    };
    *state.players.seat(seat) = Some(client.clone());
    if state.players.r.is_some() && state.players.y.is_some() {
        state.status = Status::Playing;
        state.turn = Disc::R;
        state.waiting_since = None;
        state.turn_deadline = Some(now + Duration::seconds(i64::from(state.turn_seconds)));
    }
    broadcast(state, out);
}

/// `drop`. The checks run in this order: `bad_request`, `not_a_player`, `not_started`,
/// `game_over`, `not_your_turn`, `column_out_of_range`, `column_full`.
fn drop_disc(
    state: &mut State,
    now: DateTime<Utc>,
    client: &ClientId,
    data: &Value,
    out: &mut Vec<Outgoing>,
) -> Result<(), Rejection> {
    let column = match data.get("column") {
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_u64().map(|_| i64::MAX))
            .ok_or(Rejection::BadRequest)?,
        _ => return Err(Rejection::BadRequest),
    };
    let disc = state.players.disc_of(client).ok_or(Rejection::NotAPlayer)?;
    match state.status {
        Status::Waiting => return Err(Rejection::NotStarted),
        Status::Won | Status::Drawn | Status::Abandoned => return Err(Rejection::GameOver),
        Status::Playing => {}
    }
    if state.turn != disc {
        return Err(Rejection::NotYourTurn);
    }
    let column = usize::try_from(column)
        .ok()
        .filter(|&c| c < COLUMNS)
        .ok_or(Rejection::ColumnOutOfRange)?;
    let row = (0..ROWS)
        .rev()
        .find(|&r| state.board[r][column].is_none())
        .ok_or(Rejection::ColumnFull)?;
    state.board[row][column] = Some(disc);
    state.moves += 1;
    if wins_at(&state.board, row, column) {
        end(state, Status::Won, Some(disc));
    } else if state.moves as usize == ROWS * COLUMNS {
        end(state, Status::Drawn, None);
    } else {
        state.turn = disc.other();
        state.turn_deadline = Some(now + Duration::seconds(i64::from(state.turn_seconds)));
    }
    broadcast(state, out);
    Ok(())
}

/// `leave`: during play the leaver forfeits; while waiting the seat is freed, and the match
/// is abandoned once no player is left; after the end, or from a spectator, nothing.
fn leave(state: &mut State, client: &ClientId, out: &mut Vec<Outgoing>) {
    let Some(disc) = state.players.disc_of(client) else {
        return;
    };
    match state.status {
        Status::Playing => end(state, Status::Won, Some(disc.other())),
        Status::Waiting => {
            *state.players.seat(disc) = None;
            if state.players.r.is_none() && state.players.y.is_none() {
                end(state, Status::Abandoned, None);
            }
        }
        Status::Won | Status::Drawn | Status::Abandoned => return,
    }
    broadcast(state, out);
}

fn chat(client: &ClientId, data: &Value, out: &mut Vec<Outgoing>) -> Result<(), Rejection> {
    let text = data
        .get("text")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty() && t.chars().count() <= MAX_CHAT_CHARS)
        .ok_or(Rejection::BadRequest)?;
    out.push(Outgoing::new(
        To::Match,
        "chat",
        json!({ "from": client, "text": text }),
    ));
    Ok(())
}

impl Game for Connect4 {
    type Config = Config;
    type State = State;

    fn name(&self) -> &'static str {
        NAME
    }

    fn config(&self, raw: &Value) -> Result<Config, String> {
        let config = match raw {
            Value::Null => Config::default(),
            // Only an object: serde would also read a struct from an array.
            Value::Object(_) => Config::deserialize(raw).map_err(|e| {
                format!("the connect4 config is {{\"turn_seconds\": 1..{MAX_TURN_SECONDS}}}: {e}")
            })?,
            other => {
                return Err(format!(
                    "the connect4 config is a JSON object such as {{\"turn_seconds\": 60}}, not {other}"
                ))
            }
        };
        if !(1..=MAX_TURN_SECONDS).contains(&config.turn_seconds) {
            return Err(format!(
                "\"turn_seconds\" must be from 1 to {MAX_TURN_SECONDS}, not {}",
                config.turn_seconds
            ));
        }
        Ok(config)
    }

    fn create(&self, cx: &Cx<'_, Config>, out: &mut Vec<Outgoing>) -> State {
        let state = State {
            board: [[None; COLUMNS]; ROWS],
            players: Players::default(),
            turn: Disc::R,
            status: Status::Waiting,
            winner: None,
            turn_deadline: None,
            waiting_since: Some(cx.now),
            moves: 0,
            turn_seconds: cx.config.turn_seconds,
        };
        broadcast(&state, out);
        state
    }

    fn handle(
        &self,
        cx: &Cx<'_, Config>,
        state: &mut State,
        input: &Input,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), GameError> {
        // Presence ($connected, $disconnected) does not matter to this game: the turn timer
        // bounds a player who went away.
        let Input::Client {
            msg_id,
            client,
            name,
            data,
        } = input
        else {
            return Ok(());
        };
        let result = match name.as_str() {
            "join" => {
                join(state, cx.now, client, out);
                Ok(())
            }
            "drop" => drop_disc(state, cx.now, client, data, out),
            "leave" => {
                leave(state, client, out);
                Ok(())
            }
            "chat" => chat(client, data, out),
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

    /// The player on turn forfeits when the deadline has passed; a match that waited too
    /// long for its second player is abandoned.
    fn tick(
        &self,
        _cx: &Cx<'_, Config>,
        state: &mut State,
        tick: Tick,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), GameError> {
        match self.next_tick_at(state) {
            Some(due) if due <= tick.now => {}
            _ => return Ok(()), // nothing due (a late or repeated tick)
        }
        match state.status {
            Status::Playing => end(state, Status::Won, Some(state.turn.other())),
            Status::Waiting => end(state, Status::Abandoned, None),
            _ => return Ok(()),
        }
        broadcast(state, out);
        Ok(())
    }

    fn status(&self, state: &State) -> &'static str {
        state.status.as_str()
    }

    fn next_tick_at(&self, state: &State) -> Option<DateTime<Utc>> {
        match state.status {
            Status::Playing => state.turn_deadline,
            Status::Waiting => state
                .waiting_since
                .map(|t| t + Duration::seconds(WAITING_TIMEOUT_SECONDS)),
            _ => None,
        }
    }

    fn is_over(&self, state: &State) -> bool {
        matches!(
            state.status,
            Status::Won | Status::Drawn | Status::Abandoned
        )
    }

    /// `{"open_seats": n}`, so a lobby can list the matches one can still join.
    fn label(&self, state: &State) -> Option<Value> {
        let open = match state.status {
            Status::Waiting => {
                usize::from(state.players.r.is_none()) + usize::from(state.players.y.is_none())
            }
            _ => 0,
        };
        Some(json!({ "open_seats": open }))
    }
}

#[cfg(test)]
mod tests;
