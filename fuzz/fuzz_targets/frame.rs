//! The WebSocket frame parser: any text a client sends is parsed or refused, never a
//! panic, and a refusal's answer is valid JSON that echoes the request's `id`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postgame::gateway::error::Code;
use postgame::gateway::frames;

fuzz_target!(|text: &str| {
    match frames::parse(text) {
        Ok(frame) => {
            if let Some(id) = &frame.id {
                assert!(
                    id.is_number() || id.is_string(),
                    "ids are numbers or strings"
                );
            }
        }
        Err(refusal) => {
            let answer = frames::error(&refusal.id, Code::BadRequest, &refusal.message);
            let value: serde_json::Value = serde_json::from_str(&answer).expect("JSON");
            assert_eq!(value.get("id"), refusal.id.as_ref());
        }
    }
});
