//! Properties of the built-in games' rules, over arbitrary sequences of inputs and time,
//! driven through the public test kit (no database): no handler ever fails or panics on
//! anything a client can send, every reachable state obeys the game's invariants
//! (`State::check`), and the rules hold (Tic Tac Toe: only the player to move places a
//! mark, on an empty cell; Pong: the score never goes down).

use std::time::Duration;

use postgame::game::pong::Pong;
use postgame::game::tictactoe::{Mark, TicTacToe};
use postgame::testkit::{client, TestMatch};
use proptest::prelude::*;
use serde_json::{json, Value};

const CLIENTS: [&str; 3] = ["alice", "bob", "carol"];

/// One thing that can happen to a match.
#[derive(Debug, Clone)]
enum Op {
    Publish {
        who: usize,
        name: String,
        data: Value,
    },
    Connect {
        who: usize,
        conn: u8,
    },
    Disconnect {
        who: usize,
        conn: u8,
    },
    Advance {
        millis: u32,
    },
}

fn json_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!({})),
        Just(Value::Null),
        (-3i64..12).prop_map(|c| json!({ "cell": c })),
        (-3i64..4).prop_map(|d| json!({ "dir": d })),
        any::<f64>().prop_map(|f| json!({ "cell": f, "dir": f })),
        "[a-z]{0,6}".prop_map(|t| json!({ "text": t, "cell": t, "dir": t })),
        any::<i64>().prop_map(|n| json!(n)),
        Just(json!([1, 2, 3])),
    ]
}

fn op(names: &'static [&'static str]) -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..CLIENTS.len(), prop::sample::select(names), json_value())
            .prop_map(|(who, name, data)| Op::Publish { who, name: name.to_owned(), data }),
        1 => (0..CLIENTS.len(), 0u8..3).prop_map(|(who, conn)| Op::Connect { who, conn }),
        1 => (0..CLIENTS.len(), 0u8..3).prop_map(|(who, conn)| Op::Disconnect { who, conn }),
        2 => (0u32..90_000).prop_map(|millis| Op::Advance { millis }),
    ]
}

/// Runs `ops`, calling `after` with each op and the match after it.
fn run<G: postgame::game::Game>(
    m: &mut TestMatch<G>,
    ops: &[Op],
    mut after: impl FnMut(&Op, &TestMatch<G>),
) -> Result<(), TestCaseError> {
    for op in ops {
        let result = match op {
            Op::Publish { who, name, data } => {
                m.publish(&client(CLIENTS[*who]), name, data.clone())
            }
            Op::Connect { who, conn } => m.connect(&client(CLIENTS[*who]), &format!("c{conn}")),
            Op::Disconnect { who, conn } => {
                m.disconnect(&client(CLIENTS[*who]), &format!("c{conn}"))
            }
            Op::Advance { millis } => Ok(m.advance(Duration::from_millis(u64::from(*millis)))),
        };
        prop_assert!(result.is_ok(), "{op:?} failed: {result:?}");
        after(op, m);
    }
    Ok(())
}

const TICTACTOE_NAMES: &[&str] = &[
    "join", "move", "move", "move", "leave", "rematch", "chat", "fly",
];
const PONG_NAMES: &[&str] = &["join", "input", "input", "leave", "chat"];

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn tictactoe_states_stay_valid(ops in prop::collection::vec(op(TICTACTOE_NAMES), 1..80)) {
        let mut m = TestMatch::new(TicTacToe, json!({})).expect("default config");
        let mut broken = None;
        run(&mut m, &ops, |op, m| {
            if broken.is_none() {
                broken = m.state().check().err().map(|e| format!("after {op:?}: {e}"));
            }
        })?;
        prop_assert!(broken.is_none(), "{}", broken.unwrap_or_default());
    }

    #[test]
    fn tictactoe_only_the_player_to_move_marks_an_empty_cell(
        ops in prop::collection::vec(op(TICTACTOE_NAMES), 1..80),
    ) {
        let mut m = TestMatch::new(TicTacToe, json!({})).expect("default config");
        let mut before = m.state();
        let mut violation = None;
        run(&mut m, &ops, |op, m| {
            let after = m.state();
            let placed: Vec<usize> =
                (0..9).filter(|&i| before.board[i].is_none() && after.board[i].is_some()).collect();
            let new_game = after.game_no != before.game_no;
            if !new_game && violation.is_none() {
                let changed = (0..9).filter(|&i| before.board[i] != after.board[i]).count();
                if changed != placed.len() || placed.len() > 1 {
                    violation = Some(format!("{op:?} changed {changed} cells"));
                } else if let Some(&cell) = placed.first() {
                    let mover = match op {
                        Op::Publish { who, name, .. } if name == "move" => {
                            before.mark_of(&client(CLIENTS[*who]))
                        }
                        _ => None,
                    };
                    if mover != Some(before.turn) || after.board[cell] != Some(before.turn) {
                        violation = Some(format!("{op:?} placed {:?} at {cell} with {:?} to move",
                            after.board[cell], before.turn));
                    }
                }
            }
            before = after;
        })?;
        prop_assert!(violation.is_none(), "{}", violation.unwrap_or_default());
    }

    #[test]
    fn pong_states_stay_valid_and_scores_never_drop(
        ops in prop::collection::vec(op(PONG_NAMES), 1..60),
        points in 1u32..6,
    ) {
        let mut m = TestMatch::new(Pong, json!({ "points_to_win": points })).expect("a valid config");
        let mut last = m.state().score;
        let mut broken = None;
        run(&mut m, &ops, |op, m| {
            let s = m.state();
            if broken.is_none() {
                broken = s.check().err().map(|e| format!("after {op:?}: {e}"));
                if s.score.left < last.left || s.score.right < last.right {
                    broken = Some(format!("{op:?} lowered the score"));
                }
            }
            last = s.score;
        })?;
        prop_assert!(broken.is_none(), "{}", broken.unwrap_or_default());
    }
}

#[test]
fn a_won_game_has_its_line_or_a_forfeit() {
    // A concrete game to anchor the properties: X takes the top row.
    let mut m = TestMatch::new(TicTacToe, json!({})).expect("default config");
    let (x, o) = (client("alice"), client("bob"));
    m.publish(&x, "join", json!({})).expect("join");
    m.publish(&o, "join", json!({})).expect("join");
    for (who, cell) in [(&x, 0), (&o, 3), (&x, 1), (&o, 4), (&x, 2)] {
        m.publish(who, "move", json!({ "cell": cell }))
            .expect("move");
    }
    let s = m.state();
    assert_eq!(m.status(), "won");
    assert_eq!(s.winner, Some(Mark::X));
    s.check().expect("a valid end state");
}
