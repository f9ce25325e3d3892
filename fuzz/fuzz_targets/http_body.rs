//! The HTTP body parsers, and the games' config parsers behind `POST /v1/matches`: any
//! bytes are parsed or refused with a `bad_request`, never a panic; a config a game
//! accepts always creates a valid match.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postgame::game::Registry;
use postgame::gateway::http::{Body, CreateMatchBody, PublishBody, TokenBody};
use postgame::ids::MatchId;

fuzz_target!(|bytes: &[u8]| {
    let _ = Body::<TokenBody>::parse(bytes);
    let _ = Body::<PublishBody>::parse(bytes);
    let _ = Body::<CreateMatchBody>::parse(bytes);
    // The config part goes to every game's own parser.
    if let Ok(config) = serde_json::from_slice::<serde_json::Value>(bytes) {
        let games = Registry::builtin();
        let now = chrono::DateTime::UNIX_EPOCH;
        for name in games.names() {
            let game = games.get(name).expect("listed");
            if let Ok(created) = game.create(MatchId::new_random(), &config, now) {
                assert!(!created.status.is_empty());
            }
        }
    }
});
