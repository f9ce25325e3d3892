//! Configuration: one clap struct per command, each field with an environment fallback and
//! a doc line. This is the only place that reads the environment; everything else gets its
//! settings passed down.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The development secret; `serve` warns loudly when it is in use.
pub const DEV_SECRET: &str = "postgame-development-secret-change-me";

/// The database URL used when none is set (also what `.cargo/config.toml` sets for cargo,
/// which therefore counts as "not set by the user").
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@localhost:5432/postgame";

/// Where a private cluster keeps its data when `--data-dir` is absent.
pub const DEFAULT_DATA_DIR: &str = ".postgame/pgdata";

#[derive(Debug, Parser)]
#[command(
    name = "postgame",
    version,
    about = "A realtime backend for multiplayer games on PostgreSQL"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log lines as text for people (`text`) or one JSON object a line for a log pipeline
    /// (`json`: time, level, message, the event's fields such as `match_id`, and the
    /// `role` of the task that logged it). The level filter is `RUST_LOG` (default `info`).
    #[arg(long, global = true, env = "POSTGAME_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

// Parsed once per process: the size of the `serve` variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server: gateway, workers and ticker (all by default, or the given roles).
    Serve(ServeConfig),
    /// Apply the database migrations and exit.
    Migrate(DatabaseConfig),
    /// Run a benchmark scenario against a fresh database.
    Bench(BenchArgs),
    /// Check the database, its migrations and the running roles; print what is wrong.
    Doctor(DatabaseConfig),
    /// Start or stop the private PostgreSQL cluster of `--data-dir` (for scripts).
    Cluster(ClusterArgs),
    /// Run 2 gateways, 3 workers and 2 tickers as processes on a private PostgreSQL
    /// cluster, drive games through them while killing, freezing and restarting things at
    /// random, then check every guarantee; exits non-zero on any violation.
    Chaos(ChaosArgs),
    /// Print a token signed with the configured secret, for your own backend, bots and
    /// tests (the token goes to stdout, its expiry to stderr).
    Token(TokenArgs),
    /// Print what the database knows about one match, as JSON: the match row, pending
    /// control messages, a hold after failures, dead letters, presence, latest broadcasts.
    Inspect(InspectArgs),
    /// List, retry or drop dead letters: control messages whose handler kept failing
    /// (`postgame.control_dead`). `retry` puts them back at the end of their match's queue.
    #[command(name = "dead-letters")]
    DeadLetters(DeadLettersArgs),
}

/// `postgame dead-letters`.
#[derive(Debug, Clone, Args)]
pub struct DeadLettersArgs {
    #[command(subcommand)]
    pub action: DeadLettersAction,

    #[command(flatten)]
    pub db: DatabaseConfig,
}

/// Which dead letters an action takes: by id, or every one of a match (not both).
#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = false)]
pub struct DeadLetterSelection {
    /// Dead-letter ids (their control message ids, as `list` shows them).
    #[arg(value_name = "ID")]
    pub ids: Vec<i64>,

    /// Every dead letter of this match.
    #[arg(long = "match", value_name = "MATCH_ID")]
    pub match_id: Option<String>,
}

/// What `postgame dead-letters` does.
#[derive(Debug, Clone, Subcommand)]
pub enum DeadLettersAction {
    /// Print dead letters as JSON, newest first, with the total count.
    List {
        /// Only this match's.
        #[arg(long = "match", value_name = "MATCH_ID")]
        match_id: Option<String>,

        /// At most this many (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Put dead letters back in the control queue, at the end of their match's queue (new
    /// ids, attempts reset), all or none; they are then applied like fresh messages.
    Retry(DeadLetterSelection),
    /// Delete dead letters for good, all or none.
    Drop(DeadLetterSelection),
}

/// `postgame inspect`.
#[derive(Debug, Clone, Args)]
pub struct InspectArgs {
    #[command(subcommand)]
    pub what: InspectWhat,

    #[command(flatten)]
    pub db: DatabaseConfig,
}

/// What `postgame inspect` looks at.
#[derive(Debug, Clone, Subcommand)]
pub enum InspectWhat {
    /// One match, by id.
    Match {
        /// The match id.
        id: String,

        /// How many pending messages, dead letters and broadcasts to show (newest
        /// broadcasts and dead letters, oldest pending messages).
        #[arg(long, default_value_t = 20)]
        last: i64,
    },
}

/// `postgame token`.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The client id the token names (`sub`).
    #[arg(long)]
    pub client: String,

    /// A display name.
    #[arg(long)]
    pub name: Option<String>,

    /// A capability, `PATTERN=OP[,OP…]` (ops: publish, subscribe, history, presence;
    /// patterns as in the wire contract, e.g. `match:*`); repeat for several patterns.
    /// Without any, the contract's defaults apply.
    #[arg(long = "cap", value_name = "PATTERN=OPS")]
    pub caps: Vec<String>,

    /// Seconds the token is valid for.
    #[arg(long, default_value_t = 3600)]
    pub ttl: u32,

    /// An operator's token: may create the games only operators may create.
    #[arg(long)]
    pub admin: bool,

    /// HS256 secret, the same as the servers' (the development secret is refused).
    #[arg(long, env = "POSTGAME_SECRET", default_value = DEV_SECRET, hide_default_value = true, hide_env_values = true)]
    pub secret: String,
}

/// `postgame chaos`.
#[derive(Debug, Clone, Args)]
pub struct ChaosArgs {
    /// Seconds of faults (setup, quiescing and checking come on top).
    #[arg(long, default_value_t = 60.0)]
    pub duration: f64,

    /// Seed of the fault schedule (kinds, targets, hold times, gaps): the same seed injects
    /// the same faults in the same order. Random (and printed) when absent.
    #[arg(long)]
    pub seed: Option<u64>,

    /// Mean seconds between one fault's end and the next one's start.
    #[arg(long, default_value_t = 4.0)]
    pub fault_interval: f64,

    /// Tic Tac Toe matches (two players each, with chat).
    #[arg(long, default_value_t = 6)]
    pub tictactoe: usize,

    /// Pong matches (one player against the bot each; a finished one is replaced).
    #[arg(long, default_value_t = 2)]
    pub pong: usize,

    /// Tic Tac Toe `turn_seconds`: players sometimes stall, and the turn timer must fire.
    #[arg(long, default_value_t = 3)]
    pub turn_seconds: u32,

    /// The processes' `--lease-seconds`.
    #[arg(long, default_value_t = 2.0)]
    pub lease_seconds: f64,

    /// The processes' `--presence-timeout-seconds`.
    #[arg(long, default_value_t = 3.0)]
    pub presence_timeout_seconds: f64,

    /// Folder for the run (cluster and process logs); a fresh folder under the system's
    /// temporary folder when absent. Deleted after a clean run unless `--keep`.
    #[arg(long)]
    pub dir: Option<PathBuf>,

    /// Keep the run's folder (cluster data and process logs) even after a clean run.
    #[arg(long)]
    pub keep: bool,

    /// Folder holding PostgreSQL's `initdb`, `pg_ctl` and `postgres`; searched when absent.
    #[arg(long, env = "POSTGAME_PG_BINDIR")]
    pub pg_bindir: Option<PathBuf>,
}

/// `postgame cluster`.
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    pub action: ClusterAction,

    #[command(flatten)]
    pub db: DatabaseConfig,
}

/// What `postgame cluster` does.
#[derive(Debug, Clone, Copy, Subcommand)]
pub enum ClusterAction {
    /// Create (first time) and start the private cluster, print its URL and leave it
    /// running.
    Start {
        /// Only when `serve` would: print the URL in use (the one set, or the default
        /// when something answers there) and start nothing otherwise.
        #[arg(long)]
        if_needed: bool,
    },
    /// Stop the private cluster if it runs.
    Stop,
    /// Print whether it runs, and its URL.
    Status,
}

/// `postgame bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub scenario: Scenario,

    /// The server to benchmark on: a fresh database is created beside this one.
    #[command(flatten)]
    pub db: DatabaseConfig,

    /// Use the database of `--database-url` as it is instead of a fresh one.
    #[arg(long, global = true)]
    pub in_place: bool,

    /// Print one JSON object instead of a table.
    #[arg(long, global = true)]
    pub json: bool,

    /// Run `e2e` and `queue` through this PgBouncer (transaction mode) in front of the same
    /// server: the roles' pool connects here (the benchmark database's name replaces the
    /// URL's), migrations and LISTEN go straight to the server, as
    /// `serve --direct-database-url` does.
    #[arg(long, global = true)]
    pub pooler_url: Option<String>,
}

/// The benchmark scenarios.
#[derive(Debug, Clone, Subcommand)]
pub enum Scenario {
    /// Simulated players over real WebSockets playing Tic Tac Toe: moves per second and
    /// publish-to-`state` latency at the opponent.
    E2e(E2eArgs),
    /// Enqueue control messages (in bulk and one by one), then drain them with workers
    /// running a no-op game: drain rate and enqueue-to-processed latency.
    Queue(QueueArgs),
    /// WebSocket subscribers on one channel (or several) and a publisher at a fixed rate:
    /// deliveries per second and publish-to-delivery latency.
    Fanout(FanoutArgs),
    /// Tickers driving many matches at a fixed rate: achieved ticks per second against
    /// requested, and tick lateness.
    Ticks(TicksArgs),
    /// The control queue at a steady offered load for a long time, with a transaction
    /// holding the xmin horizon back in the middle (what a long report query, a forgotten
    /// `BEGIN` or a logical replication slot does): throughput, latency and dead rows with
    /// and without the hold.
    Soak(SoakArgs),
    /// WebSocket clients connecting, spectating a match, publishing and leaving (cleanly,
    /// abruptly or on a protocol error) over and over: the gateway process's memory and
    /// open files over time, and that nothing of a gone client stays behind.
    Churn(ChurnArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ChurnArgs {
    /// Seconds to run.
    #[arg(long, default_value_t = 1800.0)]
    pub duration: f64,

    /// Concurrent clients, each repeating a session until the end.
    #[arg(long, default_value_t = 200)]
    pub clients: usize,

    /// Distinct client ids the sessions use (tokens made once, picked at random).
    #[arg(long, default_value_t = 2000)]
    pub identities: usize,

    /// Tic Tac Toe matches the sessions spectate.
    #[arg(long, default_value_t = 50)]
    pub matches: usize,

    /// `bench-<k>` channels the sessions publish on.
    #[arg(long, default_value_t = 20)]
    pub channels: usize,

    /// Longest a session stays connected after its message came back, in ms (uniform).
    #[arg(long, default_value_t = 500)]
    pub hold_ms: u64,

    /// Seconds between samples of the gateway's RSS and open files.
    #[arg(long, default_value_t = 10.0)]
    pub sample_every: f64,
}

#[derive(Debug, Clone, Args)]
pub struct SoakArgs {
    /// Seconds to run in all.
    #[arg(long, default_value_t = 1800.0)]
    pub duration: f64,

    /// Offered load, in control messages per second (one per transaction).
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,

    /// When the xmin-holding transaction starts, in seconds from the start (default: a
    /// sixth of `--duration`).
    #[arg(long)]
    pub hold_from: Option<f64>,

    /// How long it holds, in seconds (default: two thirds of `--duration`); 0 for a clean
    /// run.
    #[arg(long)]
    pub hold_for: Option<f64>,

    /// Matches the messages are spread over.
    #[arg(long, default_value_t = 100)]
    pub matches: usize,

    /// Worker tasks.
    #[arg(long, default_value_t = 8)]
    pub workers: usize,

    /// Concurrent producers.
    #[arg(long, default_value_t = 16)]
    pub producers: usize,

    /// Control messages per worker transaction.
    #[arg(long, default_value_t = 100)]
    pub batch_size: i64,

    /// Most control messages of one match per worker transaction.
    #[arg(long, default_value_t = 20)]
    pub batch_per_match: i64,

    /// Seconds between samples of the queue tables' dead and live rows.
    #[arg(long, default_value_t = 10.0)]
    pub sample_every: f64,

    /// Seconds between the workers' own `VACUUM` of the hot tables, as `serve
    /// --vacuum-seconds` runs it (default the same, 60); 0 measures the queue with
    /// autovacuum alone.
    #[arg(long, default_value_t = 60.0)]
    pub vacuum_seconds: f64,
}

#[derive(Debug, Clone, Args)]
pub struct QueueArgs {
    /// Control messages to enqueue.
    #[arg(long, default_value_t = 50_000)]
    pub messages: u64,

    /// Matches the messages are spread over.
    #[arg(long, default_value_t = 1000)]
    pub matches: usize,

    /// Worker tasks draining the queue.
    #[arg(long, default_value_t = 16)]
    pub workers: usize,

    /// Control messages per worker transaction.
    #[arg(long, default_value_t = 100)]
    pub batch_size: i64,

    /// Most control messages of one match per worker transaction (`serve --batch-per-match`).
    #[arg(long, default_value_t = 20)]
    pub batch_per_match: i64,

    /// Fairness run instead of the four phases: queue this many messages for one match,
    /// then time messages of other matches (at `--latency-rate`, `--latency-messages`)
    /// while the workers drain the flood.
    #[arg(long)]
    pub flood: Option<u64>,

    /// Of the `--messages`, how many are enqueued one per transaction (the rest in bulk).
    #[arg(long, default_value_t = 5000)]
    pub one_by_one: u64,

    /// Concurrent producers of the one-by-one enqueues.
    #[arg(long, default_value_t = 16)]
    pub producers: usize,

    /// Messages of the latency phase: enqueued one by one at `--latency-rate` while the
    /// workers run, each timed from its enqueue commit to the commit that applied it.
    #[arg(long, default_value_t = 2000)]
    pub latency_messages: u64,

    /// Offered load of the latency phase, in messages per second.
    #[arg(long, default_value_t = 1000.0)]
    pub latency_rate: f64,
}

#[derive(Debug, Clone, Args)]
pub struct FanoutArgs {
    /// WebSocket subscribers.
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,

    /// Messages per second the publisher sends.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,

    /// Seconds to run.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,

    /// Channels the subscribers are spread over.
    #[arg(long, default_value_t = 1)]
    pub channels: usize,

    /// Bytes of payload per message.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,

    /// Measure a bare tokio broadcast server with no database instead (the baseline).
    #[arg(long)]
    pub baseline: bool,

    /// The bare server's WebSocket read buffer, in bytes (axum's default is 131072).
    #[arg(long, default_value_t = 4096)]
    pub baseline_read_buffer: usize,

    /// Publish into the subscribers' own gateway (woken in-process) instead of a second
    /// gateway that reaches them through NOTIFY/LISTEN.
    #[arg(long)]
    pub one_gateway: bool,

    /// Run the subscribers' server in a separate process (`postgame serve --role gateway`,
    /// or the bare server with `--baseline`), so its RSS is measured alone.
    #[arg(long)]
    pub process: bool,

    /// Extra subscribers that read nothing while the publisher runs (reported apart).
    #[arg(long, default_value_t = 0)]
    pub slow: usize,

    /// Only serve the bare baseline server on this address, until interrupted (the server
    /// process of `--baseline --process`).
    #[arg(long, hide = true)]
    pub serve_baseline: Option<std::net::SocketAddr>,

    /// Instead of the publishing run: open this many idle, subscribed connections to a
    /// gateway child process, report its RSS per connection and the connect rate, then
    /// publish one message per channel and count the connections that receive it.
    #[arg(long, value_name = "N")]
    pub idle: Option<usize>,

    /// Loopback source addresses the `--idle` connections come from (127.0.0.1,
    /// 127.0.0.2, ...), each good for about 55,000 connections (the bench picks client
    /// ports 10000 to 65000 itself); 0 picks one per 40,000 connections.
    #[arg(long, default_value_t = 0)]
    pub sources: usize,

    /// The postgame binary to start the gateway child process from (this binary when not
    /// given; tests, whose binary is not postgame, point it at the built one).
    #[arg(long, hide = true, env = "POSTGAME_BENCH_SERVER_EXE")]
    pub server_exe: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct TicksArgs {
    /// Matches to tick.
    #[arg(long, default_value_t = 1000)]
    pub matches: usize,

    /// Ticks per second per match.
    #[arg(long, default_value_t = 20.0)]
    pub hz: f64,

    /// Ticker tasks (or processes with --processes).
    #[arg(long, default_value_t = 2)]
    pub tickers: usize,

    /// Seconds to run.
    #[arg(long, default_value_t = 60.0)]
    pub duration: f64,

    /// The game to tick: `pong` (the 20 Hz game) or `noop`.
    #[arg(long, default_value = "pong")]
    pub game: String,

    /// Run the tickers as separate `postgame serve --role ticker` processes.
    #[arg(long)]
    pub processes: bool,

    /// Due matches one ticker claims per transaction (also the baseline's batch).
    #[arg(long, default_value_t = 500)]
    pub tick_batch: i64,

    /// Commit every ticker batch synchronously (`serve --sync-ticks`); the baseline then
    /// commits synchronously too. By default both skip the WAL flush wait.
    #[arg(long)]
    pub sync_ticks: bool,
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

    /// Run the roles as separate processes of this binary instead of in-process: 2
    /// gateways, 3 workers (2 tasks each) and 2 tickers on the benchmark's database. The
    /// two players of a match use different gateways; beside them, recording clients play
    /// Tic Tac Toe (chat, stalls ended by the turn timer), Pong and hop between the
    /// gateways; at the end every guarantee is checked and each violation counts as an
    /// error (`--workers` does not apply).
    #[arg(long)]
    pub processes: bool,

    /// The `postgame` binary the processes run (hidden: tests, whose own program is not
    /// postgame, name it); this program when absent.
    #[arg(long, hide = true)]
    pub exe: Option<PathBuf>,

    /// The in-process server's `--fast-apply` (`true` or `false`); its default when absent.
    #[arg(long, action = clap::ArgAction::Set)]
    pub fast_apply: Option<bool>,
}

/// Where the database is: a URL the user set, or the default, or (when nothing answers at
/// the default) a private cluster started from the machine's PostgreSQL installation.
/// [`crate::setup::prepare`] turns this into [`DatabaseConfig::database_url`].
#[derive(Debug, Clone, Args)]
pub struct DatabaseConfig {
    /// PostgreSQL connection URL; the database is created if it does not exist. When it is
    /// not set (or equals the default), postgame uses the default and, if nothing answers
    /// there, starts a private cluster (see `--embedded`).
    #[arg(long = "database-url", env = "DATABASE_URL", global = true)]
    pub database_url_set: Option<String>,

    /// The URL used when none is set (hidden: tests point it at a free port).
    #[arg(
        long,
        env = "POSTGAME_DEFAULT_DATABASE_URL",
        default_value = DEFAULT_DATABASE_URL,
        hide = true,
        global = true
    )]
    pub default_database_url: String,

    /// Always use the private PostgreSQL cluster in `--data-dir` (created on first use from
    /// the machine's PostgreSQL installation, listening only on a Unix socket in that
    /// folder, stopped when postgame exits), whatever answers elsewhere.
    #[arg(long, env = "POSTGAME_EMBEDDED", global = true)]
    pub embedded: bool,

    /// Folder of the private cluster's data (delete it to start afresh).
    #[arg(long, env = "POSTGAME_DATA_DIR", default_value = DEFAULT_DATA_DIR, global = true)]
    pub data_dir: PathBuf,

    /// Folder holding PostgreSQL's `initdb`, `pg_ctl` and `postgres` for the private
    /// cluster; searched when absent (`pg_config --bindir`, /usr/lib/postgresql/*/bin,
    /// Homebrew, PATH).
    #[arg(long, env = "POSTGAME_PG_BINDIR", global = true)]
    pub pg_bindir: Option<PathBuf>,

    /// The URL in use, once resolved (set by [`crate::setup::prepare`], or by
    /// [`ServeConfig::defaults`]).
    #[arg(skip)]
    pub database_url: String,
}

impl DatabaseConfig {
    /// The URL the user set, if any. `DATABASE_URL` equal to the default (as
    /// `.cargo/config.toml` sets it for every cargo command) counts as not set.
    pub fn user_url(&self) -> Option<&str> {
        self.database_url_set
            .as_deref()
            .filter(|u| *u != DEFAULT_DATABASE_URL && *u != self.default_database_url)
    }
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

    /// Also serve `GET /metrics` (Prometheus) on this address, e.g. for a process that runs
    /// only workers or tickers (the gateway serves it on `--listen` anyway).
    #[arg(long, env = "POSTGAME_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

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

    /// Most control messages of one match in one worker transaction: a match's backlog
    /// never takes a whole batch from the others.
    #[arg(long, env = "POSTGAME_BATCH_PER_MATCH", default_value_t = 20)]
    pub batch_per_match: i64,

    /// Publishes one client may make at once, across all its connections and every gateway
    /// (its token bucket's size); 0 disables the publish rate limit.
    #[arg(long, env = "POSTGAME_CLIENT_PUBLISH_BURST", default_value_t = 60.0)]
    pub client_publish_burst: f64,

    /// Publishes per second one client's bucket refills; 0 disables the publish rate limit.
    #[arg(long, env = "POSTGAME_CLIENT_PUBLISH_RATE", default_value_t = 40.0)]
    pub client_publish_rate: f64,

    /// Pending control messages one client may have in one match; 0 disables the cap.
    #[arg(long, env = "POSTGAME_CLIENT_PENDING_MAX", default_value_t = 100)]
    pub client_pending_max: i64,

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

    /// Bytes a WebSocket connection reads from its socket at a time: its read buffer,
    /// resident for as long as the connection is open, idle or not. Client frames are
    /// small control messages, so the default is small; a frame larger than this is read
    /// in several system calls (into a buffer grown to the frame).
    #[arg(long, env = "POSTGAME_WS_READ_BUFFER_BYTES", default_value_t = 512)]
    pub ws_read_buffer_bytes: usize,

    /// Seconds a write to a client may take (a WebSocket flush, an HTTP response) before
    /// the connection is dropped and its socket released: a client that stops reading.
    #[arg(long, env = "POSTGAME_WRITE_TIMEOUT_SECONDS", default_value_t = 10.0)]
    pub write_timeout_seconds: f64,

    /// Seconds a client has to send a request's headers once its connection opened (or its
    /// previous response was sent: this also bounds an idle keep-alive connection); a
    /// slower one is disconnected (slowloris).
    #[arg(
        long,
        env = "POSTGAME_HTTP_HEADER_TIMEOUT_SECONDS",
        default_value_t = 10.0
    )]
    pub http_header_timeout_seconds: f64,

    /// Seconds an HTTP connection may go with no byte moving either way while a request is
    /// under way (a stalled body, an unread response) before it is closed.
    #[arg(
        long,
        env = "POSTGAME_HTTP_IDLE_TIMEOUT_SECONDS",
        default_value_t = 60.0
    )]
    pub http_idle_timeout_seconds: f64,

    /// Most simultaneous connections from one source address (0: no limit); one more is
    /// answered 429 and closed. Addresses in `--trusted-proxies` are exempt.
    #[arg(long, env = "POSTGAME_MAX_CONNECTIONS_PER_IP", default_value_t = 256)]
    pub max_connections_per_ip: usize,

    /// Publishes one WebSocket connection may send at once before the rate applies (0: no
    /// limit).
    #[arg(long, env = "POSTGAME_CONN_PUBLISH_BURST", default_value_t = 60)]
    pub conn_publish_burst: u32,

    /// Publishes per second one WebSocket connection may sustain; beyond, `rate_limited`
    /// (and 4008 for a connection that keeps going).
    #[arg(long, env = "POSTGAME_CONN_PUBLISH_RATE", default_value_t = 40.0)]
    pub conn_publish_rate: f64,

    /// Guest tokens one source address may get per minute (0: no limit).
    #[arg(
        long,
        env = "POSTGAME_GUEST_TOKENS_PER_IP_PER_MINUTE",
        default_value_t = 30
    )]
    pub guest_tokens_per_ip_per_minute: u32,

    /// Matches one source address may create per minute (0: no limit).
    #[arg(long, env = "POSTGAME_MATCHES_PER_IP_PER_MINUTE", default_value_t = 60)]
    pub matches_per_ip_per_minute: u32,

    /// Matches one client may create per minute, counted in Postgres across every gateway
    /// (0: no limit).
    #[arg(
        long,
        env = "POSTGAME_MATCHES_PER_CLIENT_PER_MINUTE",
        default_value_t = 20
    )]
    pub matches_per_client_per_minute: u32,

    /// Seconds a matchmaker ticket waits for a match before it expires (answered with
    /// `matchmaker_expired` on `user:<client>`).
    #[arg(
        long,
        env = "POSTGAME_MATCHMAKER_TICKET_SECONDS",
        default_value_t = 60.0
    )]
    pub matchmaker_ticket_seconds: f64,

    /// Reverse proxies (comma-separated IP addresses) whose `X-Forwarded-For` is believed:
    /// requests through them are limited per the forwarded client address.
    #[arg(long, env = "POSTGAME_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<std::net::IpAddr>,

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
    #[arg(long, env = "POSTGAME_TICK_BATCH", default_value_t = 500)]
    pub tick_batch: i64,

    /// Commit every ticker batch synchronously. By default a batch that logs nothing (only
    /// state and latest values) does not wait for its WAL flush: a crash of Postgres may
    /// replay the last few hundred milliseconds of such ticks, never anything logged.
    #[arg(long, env = "POSTGAME_SYNC_TICKS")]
    pub sync_ticks: bool,

    /// Hours an ended match (won, drawn, abandoned) is kept before it is deleted.
    #[arg(long, env = "POSTGAME_MATCH_RETENTION_HOURS", default_value_t = 24.0)]
    pub match_retention_hours: f64,

    /// Most database connections this process opens (besides its one LISTEN connection).
    #[arg(long, env = "POSTGAME_DB_CONNECTIONS", default_value_t = 16)]
    pub db_connections: u32,

    /// A direct connection to PostgreSQL (not through a connection pooler) for what needs a
    /// session of its own: the LISTEN connection, the VACUUM task's session advisory lock,
    /// migrations and creating the database. Default: the database URL. When it differs
    /// from the database URL, that one is taken to be PgBouncer in transaction mode (or a
    /// pooler like it): every checkout of the pool becomes one server transaction with
    /// PostgreSQL's prepared statements dropped at its start and the statement cache off
    /// (docs/OPERATIONS.md, "PgBouncer in transaction mode").
    #[arg(long, env = "POSTGAME_DIRECT_DATABASE_URL")]
    pub direct_database_url: Option<String>,

    /// The lease, in seconds: a process silent this long inside a transaction (frozen,
    /// paused, partitioned) has its session ended by Postgres
    /// (`idle_in_transaction_session_timeout`), so its matches move on without it and it
    /// cannot commit stale work when it wakes.
    #[arg(long, env = "POSTGAME_LEASE_SECONDS", default_value_t = 5.0)]
    pub lease_seconds: f64,

    /// Seconds a gateway may miss its heartbeat before any other postgame process
    /// disconnects its connections (`$disconnected` into their matches).
    #[arg(
        long,
        env = "POSTGAME_PRESENCE_TIMEOUT_SECONDS",
        default_value_t = 10.0
    )]
    pub presence_timeout_seconds: f64,

    /// Longest statement of this process's connections (`statement_timeout`), in seconds.
    #[arg(
        long,
        env = "POSTGAME_STATEMENT_TIMEOUT_SECONDS",
        default_value_t = 30.0
    )]
    pub statement_timeout_seconds: f64,

    /// Seconds between postgame's own `VACUUM` of its hot tables (the control queue and its
    /// heads and holds, matches, presence, sessions, matchmaker tickets), run by one worker
    /// process at a time; 0 leaves it to autovacuum alone. It keeps dead rows bounded on a
    /// server whose autovacuum is off or lags behind the queue's churn.
    #[arg(long, env = "POSTGAME_VACUUM_SECONDS", default_value_t = 60.0)]
    pub vacuum_seconds: f64,

    /// Apply a control message in the gateway's publishing transaction when its match is
    /// free (no worker holds it, nothing of it is queued before it): one commit per move
    /// instead of two. Busy matches, backlogs and retries still go through the queue and
    /// the workers. `--fast-apply false` turns it off.
    #[arg(long, env = "POSTGAME_FAST_APPLY", default_value_t = false, action = clap::ArgAction::Set)]
    pub fast_apply: bool,
}

impl ServeConfig {
    /// A configuration with every default, for tests and embedding.
    pub fn defaults(database_url: &str) -> Self {
        let cli = Cli::parse_from(["postgame", "serve", "--database-url", database_url]);
        match cli.command {
            Command::Serve(mut c) => {
                c.db.database_url = database_url.to_owned();
                c
            }
            // Cannot happen: the arguments above name `serve`.
            _ => unreachable!("parsed `serve`"),
        }
    }

    /// Switches off the limits per connection, per source address and per client, for
    /// benchmarks and tests that run every client from one address on purpose (the time
    /// bounds on sockets stay).
    pub fn without_client_limits(mut self) -> Self {
        self.max_connections_per_ip = 0;
        self.conn_publish_burst = 0;
        self.guest_tokens_per_ip_per_minute = 0;
        self.matches_per_ip_per_minute = 0;
        self.matches_per_client_per_minute = 0;
        self
    }

    pub fn runs(&self, role: Role) -> bool {
        self.roles.is_empty() || self.roles.contains(&role)
    }

    /// The per-client publish limits.
    pub fn limits(&self) -> crate::queue::publisher::Limits {
        crate::queue::publisher::Limits {
            burst: self.client_publish_burst.max(0.0),
            rate: self.client_publish_rate.max(0.0),
            pending_max: self.client_pending_max.max(0),
        }
    }

    pub fn poll_interval(&self) -> Duration {
        Duration::from_secs_f64(self.poll_seconds.max(0.01))
    }

    pub fn retention(&self) -> Duration {
        Duration::from_secs_f64(self.retention_hours.max(0.0) * 3600.0)
    }

    pub fn match_retention(&self) -> Duration {
        Duration::from_secs_f64(self.match_retention_hours.max(0.0) * 3600.0)
    }

    pub fn write_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.write_timeout_seconds.clamp(0.05, 86_400.0))
    }

    /// How long a matchmaker ticket waits before it expires (0.1 s to a day).
    pub fn matchmaker_ticket_ttl(&self) -> Duration {
        Duration::from_secs_f64(self.matchmaker_ticket_seconds.clamp(0.1, 86_400.0))
    }

    pub fn presence_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.presence_timeout_seconds.clamp(1.0, 86_400.0))
    }

    /// The session limits of this process's connections.
    /// The URL of the direct connection: `--direct-database-url`, else the database URL.
    pub fn direct_url(&self) -> &str {
        self.direct_database_url
            .as_deref()
            .unwrap_or(&self.db.database_url)
    }

    /// Whether the database URL is a pooler in transaction mode (a different direct URL
    /// was given).
    pub fn pooled(&self) -> bool {
        self.direct_url() != self.db.database_url
    }

    pub fn leases(&self) -> crate::lease::Leases {
        let secs = |s: f64| Duration::from_secs_f64(s.clamp(0.001, 86_400.0));
        crate::lease::Leases {
            lease: secs(self.lease_seconds),
            statement_timeout: secs(self.statement_timeout_seconds),
        }
    }

    pub fn http_header_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.http_header_timeout_seconds.clamp(0.05, 86_400.0))
    }

    pub fn http_idle_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.http_idle_timeout_seconds.clamp(0.05, 86_400.0))
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.heartbeat_seconds.max(1))
    }
}
