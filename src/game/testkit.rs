//! Shared helpers of the games' unit tests: a fixed clock and client ids.

use chrono::{DateTime, TimeZone, Utc};

use crate::ids::ClientId;

/// The fixed "now" every game test starts from.
pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2030, 1, 2, 3, 4, 5)
        .single()
        .expect("a valid date")
}

/// A client id for a test.
pub fn id(name: &str) -> ClientId {
    ClientId::parse(name).expect("a valid client id")
}
