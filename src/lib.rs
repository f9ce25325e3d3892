//! postgame: a realtime backend for multiplayer games that needs nothing but PostgreSQL.
//!
//! Map of the crate:
//! - [`config`]: the command line and environment, read once.
//! - [`setup`]: which database (the user's, the default, or a private cluster), and
//!   errors that say what to do.
//! - [`embedded`]: the private PostgreSQL cluster made from the machine's installation.
//! - [`doctor`]: `postgame doctor`, the checks of a deployment.
//! - [`store`]: connecting, creating the database, migrations.
//! - [`ids`]: identifier newtypes (`MatchId`, `ClientId`, `Channel`).
//! - [`game`]: the [`game::Game`] trait and the built-in games.
//! - [`matches`]: the match store (create, read, load and save in a transaction).
//! - [`queue`]: the durable control queue and the gateway's group-committing publisher.
//! - [`worker`]: applies control messages to match state, exactly once, in order.
//! - [`ticker`]: runs every match's clock (due `next_tick_at`), shared by any number of tickers.
//! - [`broadcast`]: the message log, NOTIFY/LISTEN wake-ups, fan-out, retention.
//! - [`gateway`]: HTTP and WebSocket.
//! - [`bench`]: `postgame bench`, the load generators.
//! - [`chaos`]: `postgame chaos`, the fault injector and guarantee checker.
//! - [`testkit`]: drive a game in a unit test, without a database.
//!
//! [`start`] runs the roles of one process; `main.rs` only parses flags and waits for a
//! signal.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod bench;
pub mod broadcast;
pub mod chaos;
pub mod claim_loop;
pub mod config;
pub mod doctor;
pub mod embedded;
pub mod game;
pub mod gateway;
pub mod ids;
pub mod lease;
pub mod matches;
pub mod presence;
pub mod queue;
pub mod setup;
pub mod store;
pub mod testkit;
pub mod ticker;
pub mod worker;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broadcast::hub::Hub;
use crate::broadcast::notify::Notifier;
use crate::broadcast::{listen, prune};
use crate::config::{Role, ServeConfig, DEV_SECRET};
use crate::game::Registry;
use crate::gateway::auth::Auth;
use crate::gateway::{AppState, GatewayConfig};
use crate::queue::publisher::Publisher;
use crate::worker::{Worker, WorkerConfig};

/// The process-wide Prometheus recorder (installed once, shared by every server in the
/// process, e.g. in tests).
fn metrics_handle() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| PrometheusBuilder::new().install_recorder().ok())
        .clone()
}

/// A running server: its address (when it runs the gateway) and its stop.
pub struct Server {
    pub addr: Option<SocketAddr>,
    /// Where `--metrics-listen` serves `/metrics`, when set.
    pub metrics_addr: Option<SocketAddr>,
    pub pool: PgPool,
    stop: CancellationToken,
    publisher_stop: CancellationToken,
    tasks: TaskTracker,
    sessions: TaskTracker,
}

impl Server {
    /// Graceful shutdown: sessions close with 1001 after answering what they accepted,
    /// publishers commit what is queued, workers finish their batch.
    pub async fn shutdown(self) {
        self.stop.cancel();
        self.sessions.close();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.sessions.wait()).await;
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

/// Shortest secret accepted on a non-loopback address, in bytes (HS256 wants 256 bits).
pub const MIN_SECRET_BYTES: usize = 32;

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

/// Connects, migrates and starts the configured roles. `listener` is required when the
/// gateway role runs (only `main` and tests bind ports).
pub async fn start(
    config: ServeConfig,
    games: Registry,
    listener: Option<TcpListener>,
) -> anyhow::Result<Server> {
    if config.runs(Role::Gateway) {
        let at = listener.as_ref().and_then(|l| l.local_addr().ok());
        secret_check(&config.secret, at)?;
    }
    setup::database_ready(&config.db.database_url).await?;
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
    )
    .await?;
    store::migrate(&pool).await?;

    let stop = CancellationToken::new();
    // This process's gateway id (connection ids and `postgame.gateways`).
    let instance = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let publisher_stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    let sessions = TaskTracker::new();
    let notifier = Arc::new(Notifier::new());
    tasks.spawn(Arc::clone(&notifier).run(pool.clone(), publisher_stop.clone()));
    let mut routes = listen::Routes::default();
    let mut addr = None;

    if config.runs(Role::Worker) {
        let worker = Worker::new(
            pool.clone(),
            games.clone(),
            Arc::clone(&notifier),
            WorkerConfig {
                batch_size: config.batch_size.max(1),
                batch_per_match: config.batch_per_match.max(1),
                max_attempts: config.max_attempts.max(1),
                poll_interval: config.poll_interval(),
                handler_limit: crate::game::limit::DEFAULT_HANDLER_LIMIT,
            },
        );
        for _ in 0..config.workers {
            tasks.spawn(
                worker
                    .clone()
                    .run(Arc::clone(&notifier.control_local), stop.clone()),
            );
        }
        routes.control = Some(Arc::clone(&notifier.control_local));
        tasks.spawn(prune::run(
            pool.clone(),
            config.retention(),
            Duration::from_secs(60),
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
                    .run(Arc::clone(&notifier.tick_local), stop.clone()),
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
        let publisher = Publisher::start(
            pool.clone(),
            Arc::clone(&notifier),
            2,
            config.limits(),
            &tasks,
            publisher_stop.clone(),
        );
        let app = Arc::new(AppState {
            pool: pool.clone(),
            auth: Auth::new(&config.secret),
            games: games.clone(),
            publisher,
            hub,
            notifier: Arc::clone(&notifier),
            config: GatewayConfig {
                heartbeat: config.heartbeat(),
                max_frame_bytes: config.max_frame_bytes,
                outbox_frames: config.outbox_frames,
                allow_guests: !config.no_guests,
                guest_token_ttl: chrono::Duration::hours(config.guest_token_hours.max(1)),
                write_timeout: config.write_timeout(),
                trusted_proxies: config.trusted_proxies.clone(),
                conn_publish: (config.conn_publish_burst > 0).then_some((
                    config.conn_publish_rate.max(0.0),
                    f64::from(config.conn_publish_burst),
                )),
                matches_per_client_per_minute: config.matches_per_client_per_minute,
            },
            limits: gateway::Limits {
                guest_tokens: gateway::limits::Keyed::per_minute(
                    config.guest_tokens_per_ip_per_minute,
                ),
                matches: gateway::limits::Keyed::per_minute(config.matches_per_ip_per_minute),
            },
            instance: instance.clone(),
            next_conn: AtomicU64::new(1),
            stop: stop.clone(),
            sessions: sessions.clone(),
            metrics: metrics_handle(),
        });
        addr = Some(listener.local_addr()?);
        let router = gateway::router(app);
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
        tasks.spawn(gateway::serve::serve(
            listener,
            router,
            limits,
            stop.clone(),
        ));
    }

    let mut metrics_addr = None;
    if let Some(at) = config.metrics_listen {
        let listener = TcpListener::bind(at)
            .await
            .with_context(|| format!("cannot listen on {at} for metrics"))?;
        metrics_addr = Some(listener.local_addr()?);
        let router = gateway::http::metrics_router(metrics_handle());
        let serve_stop = stop.clone();
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
        config.runs(Role::Gateway).then(|| instance.clone()),
        config.presence_timeout(),
        stop.clone(),
    ));
    tasks.spawn(listen::run(pool.clone(), routes, stop.clone()));
    Ok(Server {
        addr,
        metrics_addr,
        pool,
        stop,
        publisher_stop,
        tasks,
        sessions,
    })
}
