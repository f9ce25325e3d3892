//! Tic Tac Toe's handlers and clock under arbitrary inputs and time: no failure, no panic,
//! every state valid (`State::check`).
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use postgame::game::tictactoe::TicTacToe;

const NAMES: &[&str] = &[
    "join",
    "move",
    "leave",
    "rematch",
    "chat",
    "$connected",
    "x",
];

fuzz_target!(|input: (u16, Vec<common::Op<'_>>)| {
    let (turn_seconds, ops) = input;
    let config = serde_json::json!({ "turn_seconds": turn_seconds % 4000 });
    common::run(TicTacToe, config, NAMES, &ops, |s| s.check());
});
