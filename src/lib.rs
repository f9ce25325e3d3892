//! postgame: a realtime backend for multiplayer games that needs nothing but PostgreSQL.
//!
//! You write a game as a [`Game`]: pure functions from (config, state, input, `now`) to a
//! new state and outgoing messages. postgame stores every match's state in PostgreSQL,
//! feeds each match its players' control messages exactly once and in order, runs its
//! clock, and broadcasts what it sends over WebSocket. Your binary is
//! `App::new().game(MyGame).run()`: the whole server (every role, every subcommand and
//! flag of `postgame`) with your game beside the built-in ones. docs/GAMES.md walks from an
//! empty folder to a game in two browser windows; `examples/connect4` is a complete game.
//!
//! # A game
//!
//! Two players take turns adding 1, 2 or 3 to a count; whoever reaches 21 wins, and whoever
//! lets the turn clock run out loses.
//!
//! ```
//! use chrono::{DateTime, Duration, Utc};
//! use postgame::{ClientId, Cx, Game, GameError, Input, Outgoing, Tick, To};
//! use serde::{Deserialize, Serialize};
//! use serde_json::{json, Value};
//!
//! pub struct TwentyOne;
//!
//! /// Stored with the match, validated once at creation.
//! #[derive(Serialize, Deserialize)]
//! pub struct Config {
//!     turn_seconds: i64,
//! }
//!
//! /// Stored as JSON after every step: its serde shape is its stored format.
//! #[derive(Clone, Serialize, Deserialize)]
//! pub struct State {
//!     players: Vec<ClientId>,
//!     count: u32,
//!     turn: usize,
//!     winner: Option<ClientId>,
//!     deadline: Option<DateTime<Utc>>,
//! }
//!
//! fn publish_state(state: &State, out: &mut Vec<Outgoing>) {
//!     out.push(Outgoing::new(To::Match, "state", json!(state)));
//! }
//!
//! impl Game for TwentyOne {
//!     type Config = Config;
//!     type State = State;
//!
//!     fn name(&self) -> &'static str {
//!         "twentyone"
//!     }
//!
//!     fn config(&self, raw: &Value) -> Result<Config, String> {
//!         let turn_seconds = match raw.get("turn_seconds") {
//!             None => 30,
//!             Some(v) => v.as_i64().filter(|s| (1..=600).contains(s))
//!                 .ok_or("turn_seconds is an integer from 1 to 600")?,
//!         };
//!         Ok(Config { turn_seconds })
//!     }
//!
//!     fn create(&self, _cx: &Cx<'_, Config>, out: &mut Vec<Outgoing>) -> State {
//!         let state = State { players: vec![], count: 0, turn: 0, winner: None, deadline: None };
//!         publish_state(&state, out);
//!         state
//!     }
//!
//!     fn handle(
//!         &self,
//!         cx: &Cx<'_, Config>,
//!         state: &mut State,
//!         input: &Input,
//!         out: &mut Vec<Outgoing>,
//!     ) -> Result<(), GameError> {
//!         // Presence inputs (a player's connection came or went) do not matter here.
//!         let Input::Client { msg_id, client, name, data } = input else {
//!             return Ok(());
//!         };
//!         let reject = |out: &mut Vec<Outgoing>, reason: &str| {
//!             let to = To::User(client.clone());
//!             out.push(Outgoing::new(to, "rejected", json!({"reason": reason, "ref": msg_id})));
//!         };
//!         match name.as_str() {
//!             "join" => {
//!                 if state.players.len() == 2 || state.players.contains(client) {
//!                     return Ok(()); // a spectator
//!                 }
//!                 state.players.push(client.clone());
//!                 if state.players.len() == 2 {
//!                     state.deadline = Some(cx.now + Duration::seconds(cx.config.turn_seconds));
//!                 }
//!             }
//!             "add" => {
//!                 let Some(n) = data["n"].as_u64().filter(|n| (1..=3).contains(n)) else {
//!                     reject(out, "bad_request");
//!                     return Ok(());
//!                 };
//!                 if state.winner.is_some()
//!                     || state.players.len() < 2
//!                     || &state.players[state.turn] != client
//!                 {
//!                     reject(out, "not_your_turn");
//!                     return Ok(());
//!                 }
//!                 state.count += n as u32;
//!                 if state.count >= 21 {
//!                     state.winner = Some(client.clone());
//!                     state.deadline = None;
//!                 } else {
//!                     state.turn = 1 - state.turn;
//!                     state.deadline = Some(cx.now + Duration::seconds(cx.config.turn_seconds));
//!                 }
//!             }
//!             _ => {
//!                 reject(out, "unknown_action");
//!                 return Ok(());
//!             }
//!         }
//!         publish_state(state, out);
//!         Ok(())
//!     }
//!
//!     /// Called by a ticker once `next_tick_at` has passed: the player on turn ran out of
//!     /// time, so the other one wins.
//!     fn tick(
//!         &self,
//!         _cx: &Cx<'_, Config>,
//!         state: &mut State,
//!         tick: Tick,
//!         out: &mut Vec<Outgoing>,
//!     ) -> Result<(), GameError> {
//!         // A tick may come late, or again after a failure: check what is due.
//!         let due = state.deadline.is_some_and(|d| d <= tick.now);
//!         if due && state.winner.is_none() && state.players.len() == 2 {
//!             state.winner = Some(state.players[1 - state.turn].clone());
//!             state.deadline = None;
//!             publish_state(state, out);
//!         }
//!         Ok(())
//!     }
//!
//!     fn status(&self, state: &State) -> &'static str {
//!         match (&state.winner, state.players.len()) {
//!             (Some(_), _) => "won",
//!             (None, 2) => "playing",
//!             _ => "waiting",
//!         }
//!     }
//!
//!     fn next_tick_at(&self, state: &State) -> Option<DateTime<Utc>> {
//!         state.deadline
//!     }
//!
//!     fn is_over(&self, state: &State) -> bool {
//!         state.winner.is_some()
//!     }
//! }
//!
//! // A unit test with the test kit: no database, no server.
//! use postgame::testkit::{client, TestMatch};
//!
//! let mut m = TestMatch::new(TwentyOne, json!({"turn_seconds": 10})).unwrap();
//! let (ann, bob) = (client("ann"), client("bob"));
//! m.publish(&ann, "join", json!({})).unwrap();
//! m.publish(&bob, "join", json!({})).unwrap();
//! assert_eq!(m.status(), "playing");
//!
//! let sent = m.publish(&bob, "add", json!({"n": 3})).unwrap();
//! assert_eq!(sent.to_user(&bob, "rejected").unwrap().data["reason"], "not_your_turn");
//!
//! m.publish(&ann, "add", json!({"n": 3})).unwrap();
//! // Bob lets his 10 seconds run out: Ann wins.
//! let sent = m.advance(std::time::Duration::from_secs(10));
//! assert_eq!(sent.to_match("state").unwrap().data["winner"], "ann");
//! assert!(m.is_over());
//!
//! // And the server: `fn main() -> ExitCode { postgame::App::new().game(TwentyOne).run() }`
//! let app = postgame::App::new().game(TwentyOne);
//! assert!(app.registry().names().contains(&"twentyone"));
//! ```
//!
//! # The API
//!
//! - [`App`]: the server with your games and pages; `run()` from `main`, `start(…)` in
//!   tests.
//! - [`Game`] and what its handlers see and send: [`Cx`], [`Input`], [`Tick`],
//!   [`Outgoing`] with its destination [`To`] and [`Delivery`], [`GameError`], and
//!   [`Creation`] (who may create matches).
//! - [`ClientId`], [`MatchId`]: who sent an input, which match it is.
//! - [`testkit`]: drive a match through inputs and ticks in a unit test.
//! - [`Registry`], [`Pages`], [`Server`]: what an [`App`] holds and starts.
//!
//! The other modules are the server's internals: crate-private where nothing outside the
//! crate needs them, otherwise public only so that postgame's own integration tests,
//! benchmarks and fuzzers can reach them, hidden from these docs, and free to change in any
//! release.
//!
//! # Map of the crate (for contributors)
//!
//! - `app`: [`App`], the command line of a binary (what `main.rs` runs).
//! - `config`: the command line and environment, read once.
//! - `setup`: which database (the user's, the default, or a private cluster), and errors
//!   that say what to do.
//! - `embedded`: the private PostgreSQL cluster made from the machine's installation.
//! - `doctor`: `postgame doctor`, the checks of a deployment.
//! - `store`: connecting, creating the database, migrations.
//! - `ids`: identifier newtypes (`MatchId`, `ClientId`, `Channel`).
//! - `game`: the [`Game`] trait, its type-erased form, the [`Registry`], the built-in games.
//! - `matches`: the match store (create, read, load and save in a transaction).
//! - `matchmaker`: tickets paired into new matches by the workers, exactly once.
//! - `queue`: the durable control queue and the gateway's group-committing publisher.
//! - `worker`: applies control messages to match state, exactly once, in order.
//! - `ticker`: runs every match's clock (due `next_tick_at`), shared by any number of
//!   tickers.
//! - `broadcast`: the message log, NOTIFY/LISTEN wake-ups, fan-out, retention.
//! - `gateway`: HTTP and WebSocket (and the browser [`Pages`]).
//! - `bench`: `postgame bench`, the load generators.
//! - `chaos`: `postgame chaos`, the fault injector and guarantee checker.
//! - [`testkit`]: drive a game in a unit test, without a database.
//!
//! `start` runs the roles of one process; [`App`] parses flags and waits for a signal.

#![cfg_attr(test, allow(clippy::unwrap_used))]
#![warn(missing_docs)]

mod app;
#[doc(hidden)]
pub mod bench;
#[doc(hidden)]
pub mod broadcast;
#[doc(hidden)]
pub mod chaos;
pub(crate) mod claim_loop;
#[doc(hidden)]
pub mod config;
pub(crate) mod doctor;
pub(crate) mod embedded;
#[doc(hidden)]
pub mod game;
#[doc(hidden)]
pub mod gateway;
#[doc(hidden)]
pub mod ids;
#[doc(hidden)]
pub mod inspect;
pub(crate) mod lease;
#[doc(hidden)]
pub mod matches;
#[doc(hidden)]
pub mod matchmaker;
#[doc(hidden)]
pub mod presence;
#[doc(hidden)]
pub mod queue;
#[doc(hidden)]
pub mod setup;
#[doc(hidden)]
pub mod store;
pub mod testkit;
#[doc(hidden)]
pub mod ticker;
#[doc(hidden)]
pub mod vacuum;
pub(crate) mod worker;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::broadcast::hub::Hub;
use crate::broadcast::notify::Notifier;
use crate::broadcast::{listen, prune};
use crate::config::{Role, ServeConfig, DEV_SECRET};
use crate::gateway::auth::Auth;
use crate::gateway::{AppState, GatewayConfig};
use crate::queue::fast::FastApply;
use crate::queue::publisher::Publisher;
use crate::worker::{Worker, WorkerConfig};

pub use crate::app::App;
pub use crate::game::{
    Creation, Cx, Delivery, Game, GameError, Input, Outgoing, Registry, Tick, To, MAX_LABEL_BYTES,
    MAX_PLAYERS_PER_MATCH,
};
pub use crate::gateway::web::Pages;
pub use crate::ids::{ClientId, MatchId};

/// Buckets of every `*_seconds` histogram: 1 ms to 10 s, so one dashboard query reads
/// any stage's latency across processes (`histogram_quantile` over summed buckets).
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Buckets of every `*_size` histogram (claim and publish batch sizes).
const SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// The process-wide Prometheus recorder (installed once, shared by every server in the
/// process, e.g. in tests).
fn metrics_handle() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_size".into()), SIZE_BUCKETS)
                })
                .ok()?
                .install_recorder()
                .ok()
        })
        .clone()
}

/// A running server ([`App::start`]): its address (when it runs the gateway) and its
/// stop. Dropping it does not stop it; call [`Server::shutdown`].
pub struct Server {
    /// Where the gateway listens (`None` when this process runs no gateway).
    pub addr: Option<SocketAddr>,
    /// Where `--metrics-listen` serves `/metrics`, when set.
    pub metrics_addr: Option<SocketAddr>,
    /// The server's connection pool (for a test that looks at the tables).
    pub pool: PgPool,
    /// Cancelled first: `/readyz` answers `503 draining`.
    draining: CancellationToken,
    stop: CancellationToken,
    /// Stops the gateway's listener and HTTP connections, once the sessions are gone (until
    /// then probes are still answered, `/readyz` with 503).
    http_stop: CancellationToken,
    publisher_stop: CancellationToken,
    tasks: TaskTracker,
    sessions: TaskTracker,
}

impl Server {
    /// Graceful shutdown: `/readyz` answers `503 draining` at once, sessions close with 1001
    /// after answering what they accepted (the listener keeps answering meanwhile), then
    /// the listener stops, publishers commit what is queued, workers finish their batch.
    pub async fn shutdown(self) {
        self.draining.cancel();
        self.stop.cancel();
        self.sessions.close();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.sessions.wait()).await;
        self.http_stop.cancel();
        self.publisher_stop.cancel();
        self.tasks.close();
        if tokio::time::timeout(Duration::from_secs(10), self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("some tasks did not stop within 10 s");
        }
        self.pool.close().await;
    }
}

#[doc(hidden)]
/// Shortest secret accepted on a non-loopback address, in bytes (HS256 wants 256 bits).
pub const MIN_SECRET_BYTES: usize = 32;

#[doc(hidden)]
/// Refuses to serve beyond loopback with the public development secret or a short one:
/// anyone could forge tokens. On loopback it only warns.
pub fn secret_check(secret: &str, listen: Option<SocketAddr>) -> anyhow::Result<()> {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let problem = if secret == DEV_SECRET {
        Some(
            "POSTGAME_SECRET is not set: tokens would be signed with the public development secret",
        )
    } else if secret.len() < MIN_SECRET_BYTES {
        Some("POSTGAME_SECRET is shorter than 32 bytes")
    } else {
        None
    };
    let Some(problem) = problem else {
        return Ok(());
    };
    match listen {
        Some(at) if !at.ip().is_loopback() => anyhow::bail!(
            "refusing to listen on {at}: {problem}, so anyone could forge tokens. Set \
             POSTGAME_SECRET (or --secret) to at least {MIN_SECRET_BYTES} random bytes, e.g. \
             `openssl rand -hex 32`, or listen on a loopback address (127.0.0.1) for development"
        ),
        // Once per process (`main` checks before the database, `start` again).
        _ if WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) => Ok(()),
        _ => {
            tracing::warn!(
                "!!! {problem}. Anyone can forge tokens. This is only allowed on loopback; \
                 set POSTGAME_SECRET (at least {MIN_SECRET_BYTES} bytes) before exposing \
                 this server. !!!"
            );
            Ok(())
        }
    }
}

#[doc(hidden)]
/// Connects, migrates and starts the configured roles. `listener` is required when the
/// gateway role runs (only `main` and tests bind ports).
pub async fn start(
    config: ServeConfig,
    games: Registry,
    listener: Option<TcpListener>,
) -> anyhow::Result<Server> {
    start_with_pages(config, games, Pages::default(), listener).await
}

#[doc(hidden)]
/// [`start`], with an application's own browser `pages` served by the gateway.
pub async fn start_with_pages(
    config: ServeConfig,
    games: Registry,
    pages: Pages,
    listener: Option<TcpListener>,
) -> anyhow::Result<Server> {
    if config.runs(Role::Gateway) {
        let at = listener.as_ref().and_then(|l| l.local_addr().ok());
        secret_check(&config.secret, at)?;
    }
    // Creating the database (and migrating it, below) takes a direct connection.
    setup::database_ready(config.direct_url()).await?;
    // Installed before any role starts, so what they record from their first moment (a
    // counter set to zero at start) is not lost.
    let metrics = metrics_handle();
    // Workers, publishers, the hub, the notifier and the listener all share this pool.
    let roles: Vec<&str> = [
        (Role::Gateway, "gateway"),
        (Role::Worker, "worker"),
        (Role::Ticker, "ticker"),
    ]
    .into_iter()
    .filter(|(r, _)| config.runs(*r))
    .map(|(_, n)| n)
    .collect();
    let app_name = format!("postgame {}", roles.join("+"));
    let pool = store::pool_connect_role(
        &config.db.database_url,
        config.db_connections,
        &app_name,
        config.leases(),
        config.pooled(),
    )
    .await?;
    // What needs a session of its own (LISTEN, the VACUUM task's session lock,
    // migrations): the pool itself, or a small direct one beside a pooler.
    let direct = if config.pooled() {
        store::pool_connect_role(
            config.direct_url(),
            2,
            &format!("{app_name} direct"),
            config.leases(),
            false,
        )
        .await?
    } else {
        pool.clone()
    };
    store::migrate(&direct).await?;

    let draining = CancellationToken::new();
    let stop = CancellationToken::new();
    let http_stop = CancellationToken::new();
    // This process's gateway id (connection ids and `postgame.gateways`).
    let instance = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let publisher_stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    let sessions = TaskTracker::new();
    let notifier = Arc::new(Notifier::new());
    // Closes this gateway's sessions when its registration is found expired (presence).
    let expired = Arc::new(tokio::sync::watch::Sender::new(0u64));
    tasks.spawn(Arc::clone(&notifier).run(pool.clone(), publisher_stop.clone()));
    let mut routes = listen::Routes::default();
    let mut addr = None;

    let worker_config = WorkerConfig {
        batch_size: config.batch_size.max(1),
        batch_per_match: config.batch_per_match.max(1),
        max_attempts: config.max_attempts.max(1),
        poll_interval: config.poll_interval(),
        handler_limit: crate::game::limit::DEFAULT_HANDLER_LIMIT,
    };
    if config.runs(Role::Worker) {
        let worker = Worker::new(
            pool.clone(),
            games.clone(),
            Arc::clone(&notifier),
            worker_config.clone(),
        );
        for _ in 0..config.workers {
            tasks.spawn(
                worker
                    .clone()
                    .run(Arc::clone(&notifier.control_local), stop.clone())
                    .instrument(tracing::info_span!("worker", role = "worker")),
            );
        }
        routes.control = Some(Arc::clone(&notifier.control_local));
        tasks.spawn(prune::run(
            pool.clone(),
            config.retention(),
            Duration::from_secs(60),
            stop.clone(),
        ));
        if config.vacuum_seconds > 0.0 {
            tasks.spawn(vacuum::run(
                direct.clone(),
                Duration::from_secs_f64(config.vacuum_seconds.max(1.0)),
                stop.clone(),
            ));
        }
        tasks.spawn(queue::run_gauges(pool.clone(), stop.clone()));
        // Expiry, disconnect drops and retention of matchmaker tickets.
        tasks.spawn(matchmaker::run_sweep(
            pool.clone(),
            Arc::clone(&notifier),
            stop.clone(),
        ));
    }

    if config.runs(Role::Ticker) {
        // Match clocks: every ticker task claims whichever matches are due; they wake on
        // `tick_local` (this process's workers, or TOPIC_TICK through the listener).
        let ticker = ticker::Ticker::new(
            pool.clone(),
            games.clone(),
            Arc::clone(&notifier),
            ticker::TickerConfig {
                match_retention: config.match_retention(),
                sync_commit: config.sync_ticks,
                ..ticker::TickerConfig::new(config.tick_batch, config.poll_interval())
            },
        );
        for _ in 0..config.tickers {
            tasks.spawn(
                ticker
                    .clone()
                    .run(Arc::clone(&notifier.tick_local), stop.clone())
                    .instrument(tracing::info_span!("ticker", role = "ticker")),
            );
        }
        // One prune of ended matches per process (`--match-retention-hours`).
        tasks.spawn(ticker.clone().run_prune(stop.clone()));
        tasks.spawn(ticker.clone().run_gauges(stop.clone()));
        routes.tick = Some(Arc::clone(&notifier.tick_local));
    }

    if config.runs(Role::Gateway) {
        let listener = listener.context("the gateway role needs a listener")?;
        let hub = Hub::new(pool.clone());
        notifier.attach_hub(&hub);
        tasks.spawn(Arc::clone(&hub).run(config.poll_interval(), stop.clone()));
        routes.hub = Some(Arc::clone(&hub));
        let publisher = Publisher::start_with(
            pool.clone(),
            Arc::clone(&notifier),
            2,
            config.limits(),
            config
                .fast_apply
                .then(|| FastApply::new(games.clone(), worker_config.clone())),
            &tasks,
            publisher_stop.clone(),
        );
        let app = Arc::new(AppState {
            pool: pool.clone(),
            auth: Auth::new(&config.secret),
            games: games.clone(),
            publisher,
            online: presence::Online::start(
                pool.clone(),
                instance.clone(),
                &tasks,
                publisher_stop.clone(),
            ),
            hub,
            notifier: Arc::clone(&notifier),
            config: GatewayConfig {
                heartbeat: config.heartbeat(),
                max_frame_bytes: config.max_frame_bytes,
                outbox_frames: config.outbox_frames,
                read_buffer_bytes: config.ws_read_buffer_bytes,
                allow_guests: !config.no_guests,
                guest_token_ttl: chrono::Duration::hours(config.guest_token_hours.max(1)),
                write_timeout: config.write_timeout(),
                trusted_proxies: config.trusted_proxies.clone(),
                conn_publish: (config.conn_publish_burst > 0).then_some((
                    config.conn_publish_rate.max(0.0),
                    f64::from(config.conn_publish_burst),
                )),
                matches_per_client_per_minute: config.matches_per_client_per_minute,
                matchmaker_ticket_ttl: config.matchmaker_ticket_ttl(),
            },
            limits: gateway::Limits {
                guest_tokens: gateway::limits::Keyed::per_minute(
                    config.guest_tokens_per_ip_per_minute,
                ),
                matches: gateway::limits::Keyed::per_minute(config.matches_per_ip_per_minute),
                tickets: gateway::limits::Keyed::per_minute(config.matches_per_ip_per_minute),
            },
            instance: instance.clone(),
            next_conn: AtomicU64::new(1),
            stop: stop.clone(),
            draining: draining.clone(),
            sessions: sessions.clone(),
            expired: Arc::clone(&expired),
            metrics: metrics.clone(),
        });
        addr = Some(listener.local_addr()?);
        // Registered before the first connection is accepted: a presence row of a gateway
        // not registered yet would be swept at once.
        presence::gateway_heartbeat(&pool, &instance)
            .await
            .context("cannot register this gateway")?;
        let router = gateway::router(app, &pages);
        let limits = gateway::serve::Limits {
            header_timeout: config.http_header_timeout(),
            idle_timeout: config.http_idle_timeout(),
            write_timeout: config.write_timeout(),
            max_connections_per_ip: match config.max_connections_per_ip {
                0 => usize::MAX,
                n => n,
            },
            trusted_proxies: config.trusted_proxies.clone(),
        };
        tasks.spawn(
            gateway::serve::serve(listener, router, limits, http_stop.clone())
                .instrument(tracing::info_span!("gateway", role = "gateway")),
        );
    }

    let mut metrics_addr = None;
    if let Some(at) = config.metrics_listen {
        let listener = TcpListener::bind(at)
            .await
            .with_context(|| format!("cannot listen on {at} for metrics"))?;
        metrics_addr = Some(listener.local_addr()?);
        let router = gateway::http::metrics_router(metrics.clone());
        let serve_stop = http_stop.clone();
        tasks.spawn(async move {
            let r = axum::serve(listener, router)
                .with_graceful_shutdown(serve_stop.cancelled_owned())
                .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "metrics server failed");
            }
        });
    }

    // Every process sweeps the connections of stopped gateways; a gateway also heartbeats.
    tasks.spawn(presence::run(
        pool.clone(),
        config.runs(Role::Gateway).then(|| presence::Liveness {
            id: instance.clone(),
            expired,
        }),
        config.presence_timeout(),
        stop.clone(),
    ));
    tasks.spawn(listen::run(direct.clone(), routes, stop.clone()));
    Ok(Server {
        addr,
        metrics_addr,
        pool,
        draining,
        stop,
        http_stop,
        publisher_stop,
        tasks,
        sessions,
    })
}
