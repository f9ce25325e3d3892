//! What the game targets share: an arbitrary history of a match (publishes of any name and
//! JSON, presence, time passing), run through the public test kit.

use std::time::Duration;

use arbitrary::Arbitrary;
use postgame::game::Game;
use postgame::testkit::{client, TestMatch};
use serde_json::{json, Value};

const CLIENTS: [&str; 3] = ["alice", "bob", "carol"];

/// JSON a client could send, biased towards the fields the games read.
#[derive(Arbitrary, Debug)]
pub enum Data<'a> {
    Empty,
    Int { field: u8, n: i64 },
    Float { field: u8, f: f64 },
    Text { field: u8, s: &'a str },
    Raw(&'a [u8]),
}

impl Data<'_> {
    fn json(&self) -> Value {
        let key = |f: &u8| ["cell", "dir", "text", "column"][usize::from(*f) % 4];
        match self {
            Data::Empty => json!({}),
            Data::Int { field, n } => json!({ key(field): n }),
            Data::Float { field, f } => json!({ key(field): f }),
            Data::Text { field, s } => json!({ key(field): s }),
            Data::Raw(bytes) => serde_json::from_slice(bytes).unwrap_or(Value::Null),
        }
    }
}

#[derive(Arbitrary, Debug)]
pub enum Op<'a> {
    Publish { who: u8, name: u8, data: Data<'a> },
    Connect { who: u8, conn: u8 },
    Disconnect { who: u8, conn: u8 },
    Advance { millis: u16 },
}

/// Runs `ops` on a match created with `config` (skipped when the game refuses it): no
/// handler may fail, and `check` must accept every state reached.
pub fn run<G: Game>(
    game: G,
    config: Value,
    names: &[&str],
    ops: &[Op<'_>],
    check: impl Fn(&G::State) -> Result<(), String>,
) {
    let Ok(mut m) = TestMatch::new(game, config) else {
        return;
    };
    check(&m.state()).expect("a new match is valid");
    for op in ops.iter().take(200) {
        let who = |w: &u8| client(CLIENTS[usize::from(*w) % CLIENTS.len()]);
        let result = match op {
            Op::Publish { who: w, name, data } => {
                let name = names[usize::from(*name) % names.len()];
                m.publish(&who(w), name, data.json())
            }
            Op::Connect { who: w, conn } => m.connect(&who(w), &format!("c{}", conn % 4)),
            Op::Disconnect { who: w, conn } => m.disconnect(&who(w), &format!("c{}", conn % 4)),
            Op::Advance { millis } => Ok(m.advance(Duration::from_millis(u64::from(*millis) * 4))),
        };
        if let Err(e) = result {
            panic!("{op:?} failed: {e}");
        }
        if let Err(e) = check(&m.state()) {
            panic!("after {op:?}: {e}");
        }
    }
}
