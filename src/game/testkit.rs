//! Shared helpers of the games' unit tests: those of the public [`crate::testkit`].

pub use crate::testkit::{client as id, t0};
