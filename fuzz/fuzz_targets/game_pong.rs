//! Pong's handlers and 20 Hz loop under arbitrary inputs and time: no failure, no panic,
//! every state valid (`State::check`).
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use postgame::game::pong::Pong;

const NAMES: &[&str] = &["join", "input", "leave", "chat", "x"];

fuzz_target!(|input: (u8, bool, Vec<common::Op<'_>>)| {
    let (points, bot, ops) = input;
    let config = serde_json::json!({ "points_to_win": points % 24, "bot": bot });
    common::run(Pong, config, NAMES, &ops, |s| s.check());
});
