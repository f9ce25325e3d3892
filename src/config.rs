//! Configuration: one clap struct per command, each field with an environment fallback and
//! a doc line. This is the only place that reads the environment; everything else gets its
//! settings passed down.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The development secret; `serve` warns loudly when it is in use.
pub const DEV_SECRET: &str = "postgame-development-secret-change-me";

#[derive(Debug, Parser)]
#[command(
    name = "postgame",
    version,
    about = "A realtime backend for multiplayer games on PostgreSQL"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server: gateway, workers and ticker (all by default, or the given roles).
    Serve(ServeConfig),
    /// Apply the database migrations and exit.
    Migrate(DatabaseConfig),
    /// Run a benchmark scenario against a fresh database.
    Bench(BenchArgs),
}

/// `postgame bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub scenario: Scenario,

    /// The server to benchmark on: a fresh database is created beside this one.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@localhost:5432/postgame",
        global = true
    )]
    pub database_url: String,

    /// Use the database of `--database-url` as it is instead of a fresh one.
    #[arg(long, global = true)]
    pub in_place: bool,

    /// Print one JSON object instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// The benchmark scenarios.
#[derive(Debug, Clone, Subcommand)]
pub enum Scenario {
    /// Simulated players over real WebSockets playing Tic Tac Toe: moves per second and
    /// publish-to-`state` latency at the opponent.
    E2e(E2eArgs),
}

#[derive(Debug, Clone, Args)]
pub struct E2eArgs {
    /// Simulated players (two per match).
    #[arg(long, default_value_t = 200)]
    pub players: usize,

    /// Offered load in moves per second over all matches; as fast as possible when absent.
    #[arg(long)]
    pub rate: Option<f64>,

    /// Seconds to run.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,

    /// Worker tasks of the in-process server.
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
}

/// Where the database is.
#[derive(Debug, Clone, Args)]
pub struct DatabaseConfig {
    /// PostgreSQL connection URL; the database is created if it does not exist.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@localhost:5432/postgame"
    )]
    pub database_url: String,
}

/// The roles a process can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum)]
pub enum Role {
    /// HTTP and WebSocket: auth, publishes, subscriptions, fan-out.
    Gateway,
    /// Applies control messages to match state.
    Worker,
    /// Runs match clocks.
    Ticker,
}

#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    #[command(flatten)]
    pub db: DatabaseConfig,

    /// Address the gateway listens on.
    #[arg(long, env = "POSTGAME_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// HS256 secret that signs and checks tokens.
    #[arg(long, env = "POSTGAME_SECRET", default_value = DEV_SECRET, hide_default_value = true)]
    pub secret: String,

    /// Roles this process runs (repeatable); all of them when absent.
    #[arg(long = "role", value_enum)]
    pub roles: Vec<Role>,

    /// Worker tasks in this process.
    #[arg(long, env = "POSTGAME_WORKERS", default_value_t = 4)]
    pub workers: usize,

    /// Control messages one worker claims per transaction.
    #[arg(long, env = "POSTGAME_BATCH_SIZE", default_value_t = 100)]
    pub batch_size: i64,

    /// Attempts of a failing control message before it is dead-lettered.
    #[arg(long, env = "POSTGAME_MAX_ATTEMPTS", default_value_t = 5)]
    pub max_attempts: i32,

    /// Seconds between polls when no notification arrives (the fallback for a lost NOTIFY).
    #[arg(long, env = "POSTGAME_POLL_SECONDS", default_value_t = 2.0)]
    pub poll_seconds: f64,

    /// Hours a broadcast stays in the message log (history and resume).
    #[arg(long, env = "POSTGAME_RETENTION_HOURS", default_value_t = 24.0)]
    pub retention_hours: f64,

    /// Seconds between WebSocket pings; a silent peer is closed after twice this.
    #[arg(long, env = "POSTGAME_HEARTBEAT_SECONDS", default_value_t = 25)]
    pub heartbeat_seconds: u64,

    /// Largest accepted WebSocket frame (and HTTP body), in bytes.
    #[arg(long, env = "POSTGAME_MAX_FRAME_BYTES", default_value_t = 65536)]
    pub max_frame_bytes: usize,

    /// Frames buffered for one connection before it counts as too slow and is closed.
    #[arg(long, env = "POSTGAME_OUTBOX_FRAMES", default_value_t = 1024)]
    pub outbox_frames: usize,

    /// Refuse guest tokens (`POST /v1/tokens`).
    #[arg(long, env = "POSTGAME_NO_GUESTS")]
    pub no_guests: bool,

    /// Hours a guest token stays valid.
    #[arg(long, env = "POSTGAME_GUEST_TOKEN_HOURS", default_value_t = 24)]
    pub guest_token_hours: i64,

    /// Ticker tasks in this process.
    #[arg(long, env = "POSTGAME_TICKERS", default_value_t = 1)]
    pub tickers: usize,

    /// Due matches one ticker claims per transaction.
    #[arg(long, env = "POSTGAME_TICK_BATCH", default_value_t = 100)]
    pub tick_batch: i64,

    /// Most database connections this process opens (besides its one LISTEN connection).
    #[arg(long, env = "POSTGAME_DB_CONNECTIONS", default_value_t = 16)]
    pub db_connections: u32,
}

impl ServeConfig {
    /// A configuration with every default, for tests and embedding.
    pub fn defaults(database_url: &str) -> Self {
        let cli = Cli::parse_from(["postgame", "serve", "--database-url", database_url]);
        match cli.command {
            Command::Serve(c) => c,
            // Cannot happen: the arguments above name `serve`.
            _ => unreachable!("parsed `serve`"),
        }
    }

    pub fn runs(&self, role: Role) -> bool {
        self.roles.is_empty() || self.roles.contains(&role)
    }

    pub fn poll_interval(&self) -> Duration {
        Duration::from_secs_f64(self.poll_seconds.max(0.01))
    }

    pub fn retention(&self) -> Duration {
        Duration::from_secs_f64(self.retention_hours.max(0.0) * 3600.0)
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.heartbeat_seconds.max(1))
    }
}
