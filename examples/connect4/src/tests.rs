//! The rules of Connect Four, driven through postgame's public test kit (no database).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use postgame::testkit::{client, t0, Sent, TestMatch};
use postgame::ClientId;
use serde_json::{json, Value};

use super::*;

/// A match with two seated players: `r` plays R (first to move), `y` plays Y.
fn started(config: Value) -> (TestMatch<Connect4>, ClientId, ClientId) {
    let mut m = TestMatch::new(Connect4, config).expect("a valid config");
    let (r, y) = (client("red"), client("yellow"));
    m.publish(&r, "join", json!({})).unwrap();
    m.publish(&y, "join", json!({})).unwrap();
    assert_eq!(m.status(), "playing");
    (m, r, y)
}

/// Drops in `columns`, alternating R and Y from R; each must be accepted.
fn play(m: &mut TestMatch<Connect4>, r: &ClientId, y: &ClientId, columns: &[usize]) -> Sent {
    let mut last = Sent::default();
    for (i, &column) in columns.iter().enumerate() {
        let who = if i % 2 == 0 { r } else { y };
        last = m.publish(who, "drop", json!({ "column": column })).unwrap();
        assert!(
            last.to_user(who, "rejected").is_none(),
            "drop {i} in column {column} was rejected: {last:?}"
        );
    }
    last
}

fn state_of(sent: &Sent) -> &Value {
    &sent.to_match("state").expect("a state broadcast").data
}

fn rejection(sent: &Sent, who: &ClientId) -> String {
    let r = sent.to_user(who, "rejected").expect("a private rejected");
    assert!(r.data["ref"].is_number(), "{:?}", r.data);
    r.data["reason"].as_str().unwrap().to_owned()
}

#[test]
fn a_new_match_waits_and_the_joiners_take_red_then_yellow() {
    let mut m = TestMatch::new(Connect4, json!({})).unwrap();
    let created = state_of(m.created()).clone();
    assert_eq!(created["status"], "waiting");
    assert_eq!(created["board"].as_array().unwrap().len(), ROWS);
    assert!(created["board"]
        .as_array()
        .unwrap()
        .iter()
        .all(|row| row.as_array().unwrap().len() == COLUMNS
            && row.as_array().unwrap().iter().all(Value::is_null)));
    let (r, y, z) = (client("red"), client("yellow"), client("zed"));
    let s = m.publish(&r, "join", json!({})).unwrap();
    assert_eq!(state_of(&s)["players"], json!({"R": "red", "Y": null}));
    assert_eq!(state_of(&s)["status"], "waiting");
    let s = m.publish(&y, "join", json!({})).unwrap();
    let st = state_of(&s);
    assert_eq!(st["players"], json!({"R": "red", "Y": "yellow"}));
    assert_eq!(st["status"], "playing");
    assert_eq!(st["turn"], "R");
    assert_eq!(st["turn_deadline"], "2030-01-02T03:05:05.000Z");
    // A third joiner spectates: nothing changes, nothing is sent.
    let before = m.state();
    assert!(m.publish(&z, "join", json!({})).unwrap().is_empty());
    assert_eq!(m.state(), before);
}

#[test]
fn a_bad_config_is_refused_and_a_good_one_is_kept() {
    for bad in [
        json!({"turn_seconds": 0}),
        json!({"turn_seconds": 3601}),
        json!({"turn_seconds": "soon"}),
        json!({"turn_seconds": -5}),
        json!({"other": 1}),
        json!([]),
    ] {
        assert!(TestMatch::new(Connect4, bad.clone()).is_err(), "{bad}");
    }
    let m = TestMatch::new(Connect4, json!({"turn_seconds": 5})).unwrap();
    assert_eq!(m.config_json(), &json!({"turn_seconds": 5}));
    let m = TestMatch::new(Connect4, Value::Null).unwrap();
    assert_eq!(m.config_json(), &json!({"turn_seconds": 60}));
}

#[test]
fn four_in_a_row_wins() {
    let (mut m, r, y) = started(json!({}));
    // R: 0 1 2 3 on the bottom row; Y stacks on top of them.
    let s = play(&mut m, &r, &y, &[0, 0, 1, 1, 2, 2, 3]);
    let st = state_of(&s);
    assert_eq!(st["status"], "won");
    assert_eq!(st["winner"], "R");
    assert_eq!(
        st["board"][5],
        json!(["R", "R", "R", "R", null, null, null])
    );
    assert_eq!(
        st["board"][4],
        json!(["Y", "Y", "Y", null, null, null, null])
    );
    assert_eq!(st["turn_deadline"], Value::Null);
    assert!(m.is_over());
    assert_eq!(m.next_tick_at(), None);
}

#[test]
fn four_in_a_column_wins() {
    let (mut m, r, y) = started(json!({}));
    let s = play(&mut m, &r, &y, &[6, 0, 6, 0, 6, 0, 1, 0]);
    let st = state_of(&s);
    assert_eq!(st["status"], "won");
    assert_eq!(st["winner"], "Y");
    for row in 2..6 {
        assert_eq!(st["board"][row][0], "Y");
    }
}

#[test]
fn four_on_a_rising_diagonal_wins() {
    let (mut m, r, y) = started(json!({}));
    // R at (5,0) (4,1) (3,2) (2,3): bottom-left to top-right.
    let s = play(&mut m, &r, &y, &[0, 1, 1, 2, 2, 3, 2, 3, 3, 6, 3]);
    let st = state_of(&s);
    assert_eq!(st["winner"], "R", "{st}");
    assert_eq!(st["board"][2][3], "R");
}

#[test]
fn four_on_a_falling_diagonal_wins() {
    let (mut m, r, y) = started(json!({}));
    // R at (5,6) (4,5) (3,4) (2,3): bottom-right to top-left.
    let s = play(&mut m, &r, &y, &[6, 5, 5, 4, 4, 3, 4, 3, 3, 0, 3]);
    let st = state_of(&s);
    assert_eq!(st["winner"], "R", "{st}");
    assert_eq!(st["board"][2][3], "R");
}

#[test]
fn a_drop_into_a_full_column_is_rejected_and_changes_nothing() {
    let (mut m, r, y) = started(json!({}));
    play(&mut m, &r, &y, &[2, 2, 2, 2, 2, 2]);
    let before = m.state();
    let s = m.publish(&r, "drop", json!({"column": 2})).unwrap();
    assert_eq!(rejection(&s, &r), "column_full");
    assert!(s.to_match("state").is_none());
    assert_eq!(m.state(), before);
}

#[test]
fn a_column_out_of_range_or_missing_is_rejected() {
    let (mut m, r, _y) = started(json!({}));
    let before = m.state();
    for (data, reason) in [
        (json!({"column": 7}), "column_out_of_range"),
        (json!({"column": -1}), "column_out_of_range"),
        (
            json!({"column": 18446744073709551615u64}),
            "column_out_of_range",
        ),
        (json!({"column": "3"}), "bad_request"),
        (json!({}), "bad_request"),
    ] {
        let s = m.publish(&r, "drop", data.clone()).unwrap();
        assert_eq!(rejection(&s, &r), reason, "{data}");
    }
    assert_eq!(m.state(), before);
}

#[test]
fn a_drop_out_of_turn_or_by_a_spectator_is_rejected() {
    let (mut m, r, y) = started(json!({}));
    let before = m.state();
    let s = m.publish(&y, "drop", json!({"column": 3})).unwrap();
    assert_eq!(rejection(&s, &y), "not_your_turn");
    let z = client("zed");
    let s = m.publish(&z, "drop", json!({"column": 3})).unwrap();
    assert_eq!(rejection(&s, &z), "not_a_player");
    let s = m.publish(&r, "dance", json!({})).unwrap();
    assert_eq!(rejection(&s, &r), "unknown_action");
    assert_eq!(m.state(), before);
}

#[test]
fn a_drop_before_the_start_or_after_the_end_is_rejected() {
    let mut m = TestMatch::new(Connect4, json!({})).unwrap();
    let r = client("red");
    m.publish(&r, "join", json!({})).unwrap();
    let s = m.publish(&r, "drop", json!({"column": 0})).unwrap();
    assert_eq!(rejection(&s, &r), "not_started");

    let (mut m, r, y) = started(json!({}));
    play(&mut m, &r, &y, &[0, 0, 1, 1, 2, 2, 3]);
    let s = m.publish(&y, "drop", json!({"column": 4})).unwrap();
    assert_eq!(rejection(&s, &y), "game_over");
}

#[test]
fn a_full_board_without_four_is_drawn() {
    let (mut m, r, y) = started(json!({}));
    // A full board with no four anywhere (found by a search, checked here).
    let columns = [
        5, 4, 5, 0, 6, 2, 4, 5, 5, 0, 4, 1, 1, 0, 4, 5, 6, 5, 3, 1, 1, 2, 2, 6, 2, 6, 6, 3, 6, 2,
        0, 3, 0, 3, 3, 4, 3, 1, 4, 2, 1, 0,
    ];
    let s = play(&mut m, &r, &y, &columns);
    let st = state_of(&s);
    assert_eq!(st["status"], "drawn", "{st}");
    assert_eq!(st["winner"], Value::Null);
    assert_eq!(st["moves"], 42);
    assert!(m.is_over());
}

#[test]
fn the_turn_timer_forfeits_the_player_on_turn() {
    let (mut m, r, y) = started(json!({"turn_seconds": 5}));
    play(&mut m, &r, &y, &[3]);
    // Y is on turn with 5 s; 4.9 s pass without a forfeit.
    assert!(m.advance(Duration::from_millis(4900)).is_empty());
    assert_eq!(m.status(), "playing");
    let s = m.advance(Duration::from_millis(100));
    let st = state_of(&s);
    assert_eq!(st["status"], "won");
    assert_eq!(st["winner"], "R");
    assert!(m.is_over());
}

#[test]
fn each_drop_restarts_the_turn_timer() {
    let (mut m, r, y) = started(json!({"turn_seconds": 5}));
    m.advance(Duration::from_secs(4));
    play(&mut m, &r, &y, &[3]);
    assert_eq!(
        m.next_tick_at(),
        Some(t0() + chrono::Duration::seconds(9)),
        "Y's 5 s start at the drop"
    );
    m.advance(Duration::from_secs(4));
    assert_eq!(m.status(), "playing");
}

#[test]
fn leaving_during_play_forfeits_and_leaving_while_waiting_abandons() {
    let (mut m, r, _y) = started(json!({}));
    let s = m.publish(&r, "leave", json!({})).unwrap();
    assert_eq!(state_of(&s)["status"], "won");
    assert_eq!(state_of(&s)["winner"], "Y");
    // Leaving again after the end changes nothing.
    assert!(m.publish(&r, "leave", json!({})).unwrap().is_empty());

    let mut m = TestMatch::new(Connect4, json!({})).unwrap();
    let r = client("red");
    m.publish(&r, "join", json!({})).unwrap();
    let s = m.publish(&r, "leave", json!({})).unwrap();
    assert_eq!(state_of(&s)["status"], "abandoned");
    assert!(m.is_over());
}

#[test]
fn a_match_nobody_completes_is_abandoned_after_the_waiting_timeout() {
    let mut m = TestMatch::new(Connect4, json!({})).unwrap();
    m.publish(&client("red"), "join", json!({})).unwrap();
    let secs = WAITING_TIMEOUT_SECONDS as u64;
    assert!(m.advance(Duration::from_secs(secs - 1)).is_empty());
    let s = m.advance(Duration::from_secs(1));
    assert_eq!(state_of(&s)["status"], "abandoned");
}

#[test]
fn chat_is_relayed_and_bad_chat_is_rejected() {
    let (mut m, r, _y) = started(json!({}));
    let s = m.publish(&r, "chat", json!({"text": "gl hf"})).unwrap();
    assert_eq!(
        s.to_match("chat").unwrap().data,
        json!({"from": "red", "text": "gl hf"})
    );
    let s = m.publish(&r, "chat", json!({"text": ""})).unwrap();
    assert_eq!(rejection(&s, &r), "bad_request");
    let long = "x".repeat(MAX_CHAT_CHARS + 1);
    let s = m.publish(&r, "chat", json!({ "text": long })).unwrap();
    assert_eq!(rejection(&s, &r), "bad_request");
}

#[test]
fn the_label_counts_open_seats() {
    let mut m = TestMatch::new(Connect4, json!({})).unwrap();
    let label = |m: &TestMatch<Connect4>| Connect4.label(&m.state()).unwrap()["open_seats"].clone();
    assert_eq!(label(&m), 2);
    m.publish(&client("red"), "join", json!({})).unwrap();
    assert_eq!(label(&m), 1);
    m.publish(&client("yellow"), "join", json!({})).unwrap();
    assert_eq!(label(&m), 0);
}

#[test]
fn wins_at_sees_every_direction_and_nothing_shorter() {
    let mut board = [[None; COLUMNS]; ROWS];
    board[5][0] = Some(Disc::R);
    board[5][1] = Some(Disc::R);
    board[5][2] = Some(Disc::R);
    assert!(!wins_at(&board, 5, 2), "three is not four");
    board[5][3] = Some(Disc::Y);
    assert!(!wins_at(&board, 5, 3));
    board[5][3] = Some(Disc::R);
    for c in 0..4 {
        assert!(
            wins_at(&board, 5, c),
            "the middle of a line counts too: {c}"
        );
    }
}
