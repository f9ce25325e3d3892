//! The one integration-test binary: every test gets a fresh database (`helpers::TestDb`),
//! the real server on port 0, and real WebSocket clients.

#![allow(clippy::unwrap_used)]

mod cluster;
mod helpers;
mod ledger;

mod ambiguous;
mod app;
mod bench;
mod bench_ticks;
mod capabilities;
mod chaos;
mod clock;
mod concurrency;
mod dead_letters;
mod deploy;
mod draining;
mod edge_input;
mod edge_limits;
mod edge_safe;
mod edge_sockets;
mod edge_tokens;
mod fairness;
mod fast_apply;
mod first_run;
mod handler_limit;
mod leases;
mod limits;
mod listing;
mod lobby;
mod logs;
mod matchmaker;
mod metrics;
mod openapi;
mod outage;
mod pgbouncer;
mod presence;
mod processes;
mod resilience;
mod resume;
mod robustness;
mod tictactoe;
