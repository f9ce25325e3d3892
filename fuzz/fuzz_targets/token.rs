//! Token verification: any string is verified or refused, never a panic, and so is any
//! JSON payload signed with the server's secret (claims of every shape and type).
#![no_main]

use arbitrary::Arbitrary;
use jsonwebtoken::{encode, EncodingKey, Header};
use libfuzzer_sys::fuzz_target;
use postgame::gateway::auth::Auth;

const SECRET: &str = "a-fuzzing-secret-of-at-least-32-bytes!";

#[derive(Arbitrary, Debug)]
enum Input<'a> {
    Raw(&'a str),
    Signed(&'a [u8]),
}

fuzz_target!(|input: Input<'_>| {
    let auth = Auth::new(SECRET);
    let token = match input {
        Input::Raw(text) => text.to_owned(),
        Input::Signed(bytes) => {
            let Ok(claims) = serde_json::from_slice::<serde_json::Value>(bytes) else {
                return;
            };
            let key = EncodingKey::from_secret(SECRET.as_bytes());
            encode(&Header::default(), &claims, &key).expect("any JSON signs")
        }
    };
    if let Ok(identity) = auth.verify(&token) {
        assert!(
            !identity.client.as_str().is_empty(),
            "a verified token names a client"
        );
    }
});
