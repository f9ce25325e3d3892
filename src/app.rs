//! [`App`]: the whole postgame server as a library call, for an application's own binary.
//!
//! `postgame`'s own `main` is `App::new().run()`; a game developer's is the same with their
//! games (and browser pages) registered. The binary then has every subcommand, flag,
//! environment variable and exit code of `postgame` (`serve`, `migrate`, `bench`,
//! `doctor`, `cluster`, `chaos`), logs like it (`RUST_LOG`, default `info`, on stderr),
//! and shuts down gracefully on SIGINT or SIGTERM.

use std::ffi::OsString;
use std::future::Future;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser};
use tracing_subscriber::EnvFilter;

use crate::config::{Cli, Command, Role, ServeConfig};
use crate::game::{noop, pong, tictactoe, Game, Registry};
use crate::gateway::web::Pages;
use crate::{setup, Server};

/// A postgame server with the games and pages of an application.
///
/// ```no_run
/// use postgame::App;
/// # use postgame::{Cx, Game, GameError, Input, Outgoing};
/// # struct MyGame;
/// # impl Game for MyGame {
/// #     type Config = ();
/// #     type State = ();
/// #     fn name(&self) -> &'static str { "mygame" }
/// #     fn config(&self, _: &serde_json::Value) -> Result<(), String> { Ok(()) }
/// #     fn create(&self, _: &Cx<'_, ()>, _: &mut Vec<Outgoing>) {}
/// #     fn handle(&self, _: &Cx<'_, ()>, _: &mut (), _: &Input, _: &mut Vec<Outgoing>)
/// #         -> Result<(), GameError> { Ok(()) }
/// #     fn status(&self, _: &()) -> &'static str { "playing" }
/// # }
///
/// fn main() -> std::process::ExitCode {
///     App::new()
///         .game(MyGame)
///         .page("/mygame", "<!doctype html><p>Hello</p>")
///         .run()
/// }
/// ```
#[derive(Clone)]
pub struct App {
    games: Registry,
    pages: Pages,
    /// What `--version` and `--help` call the program, and its version (default:
    /// postgame's own).
    identity: Option<(&'static str, &'static str)>,
}

impl Default for App {
    fn default() -> Self {
        Self::new()
    }
}

impl App {
    /// The built-in games (Tic Tac Toe and Pong, with their pages at `/` and `/pong`), as
    /// the `postgame` binary serves them.
    ///
    /// ```
    /// let app = postgame::App::new();
    /// assert_eq!(app.registry().names(), ["noop", "pong", "tictactoe"]);
    /// ```
    pub fn new() -> Self {
        Self::empty().game(tictactoe::TicTacToe).game(pong::Pong)
    }

    /// No games but yours. (The benchmark game `noop` is always registered, so `bench`
    /// works; only admin tokens may create its matches.) The built-in pages are still
    /// served; replace `/` with [`App::page`] to show your own.
    ///
    /// ```
    /// let app = postgame::App::empty();
    /// assert_eq!(app.registry().names(), ["noop"]);
    /// assert_eq!(
    ///     app.registry().creation("noop"),
    ///     Some(postgame::Creation::Admin),
    /// );
    /// ```
    pub fn empty() -> Self {
        Self {
            games: Registry::new().with(noop::Noop),
            pages: Pages::new(),
            identity: None,
        }
    }

    /// Registers `game` under its [`Game::name`], replacing a game of the same name.
    ///
    /// ```
    /// # use postgame::{Cx, Game, GameError, Input, Outgoing};
    /// struct Solo;
    /// impl Game for Solo {
    ///     type Config = ();
    ///     type State = u32;
    ///     fn name(&self) -> &'static str { "solo" }
    ///     fn config(&self, _raw: &serde_json::Value) -> Result<(), String> { Ok(()) }
    ///     fn create(&self, _cx: &Cx<'_, ()>, _out: &mut Vec<Outgoing>) -> u32 { 0 }
    ///     fn handle(&self, _cx: &Cx<'_, ()>, n: &mut u32, _input: &Input,
    ///               _out: &mut Vec<Outgoing>) -> Result<(), GameError> {
    ///         *n += 1;
    ///         Ok(())
    ///     }
    ///     fn status(&self, _n: &u32) -> &'static str { "playing" }
    /// }
    ///
    /// let app = postgame::App::new().game(Solo);
    /// assert!(app.registry().names().contains(&"solo"));
    /// ```
    pub fn game<G: Game>(mut self, game: G) -> Self {
        self.games = self.games.with(game);
        self
    }

    /// Serves the HTML `html` at `path` (such as `"/connect4"`); see [`Pages`]. A page at
    /// `/` replaces the Tic Tac Toe lobby.
    ///
    /// # Panics
    /// When `path` is not a plain absolute path or is one of the API's ([`Pages::file`]).
    ///
    /// ```
    /// let app = postgame::App::new().page("/hello", "<!doctype html><p>Hello</p>");
    /// ```
    pub fn page(mut self, path: &str, html: impl Into<std::borrow::Cow<'static, str>>) -> Self {
        self.pages = self.pages.page(path, html);
        self
    }

    /// Serves `body` at `path` with `content_type` (a script, a style sheet): see
    /// [`Pages::file`].
    ///
    /// # Panics
    /// As [`Pages::file`].
    ///
    /// ```
    /// let app = postgame::App::new()
    ///     .file("/hello.js", "text/javascript; charset=utf-8", "console.log('hello')");
    /// ```
    pub fn file(
        mut self,
        path: &str,
        content_type: &str,
        body: impl Into<std::borrow::Cow<'static, str>>,
    ) -> Self {
        self.pages = self.pages.file(path, content_type, body);
        self
    }

    /// The name and version the binary reports (`--version`, `--help`) instead of
    /// postgame's: an application's own binary is its own program, usually
    /// `.named(env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"))`.
    ///
    /// ```
    /// let app = postgame::App::new().named("mygame", "1.2.3");
    /// assert_eq!(app.version_line(), "mygame 1.2.3");
    /// ```
    pub fn named(mut self, name: &'static str, version: &'static str) -> Self {
        self.identity = Some((name, version));
        self
    }

    /// What `--version` prints (without the line break): the program's name and version.
    ///
    /// ```
    /// assert_eq!(
    ///     postgame::App::new().version_line(),
    ///     format!("postgame {}", env!("CARGO_PKG_VERSION")),
    /// );
    /// ```
    pub fn version_line(&self) -> String {
        self.clap_command().render_version().trim_end().to_owned()
    }

    /// The clap command of this application: postgame's, under the application's name.
    fn clap_command(&self) -> clap::Command {
        let command = Cli::command();
        match self.identity {
            Some((name, version)) => command.name(name).version(version),
            None => command,
        }
    }

    /// The games this application serves.
    pub fn registry(&self) -> &Registry {
        &self.games
    }

    /// Runs the command line of this process (`std::env::args_os`) to completion: what
    /// `main` calls. Parses the subcommand and flags (printing help, the version, or a
    /// usage error), sets up logging, builds the tokio runtime, runs until done or until
    /// SIGINT/SIGTERM (`serve`), and returns the exit code: success, 1 after an error (printed
    /// as one explanation on stderr, with a backtrace when `RUST_BACKTRACE` asks), 2 for a
    /// usage error, and whatever `doctor` and `chaos` decide.
    pub fn run(self) -> ExitCode {
        self.run_from(std::env::args_os())
    }

    /// [`App::run`] with the given command line (the first item is the program's name).
    ///
    /// # Panics
    /// When called from within a tokio runtime (it builds its own).
    ///
    /// ```
    /// use std::process::ExitCode;
    ///
    /// assert_eq!(postgame::App::new().run_from(["mygame", "--version"]), ExitCode::SUCCESS);
    /// assert_eq!(postgame::App::new().run_from(["mygame", "no-such-command"]), ExitCode::from(2));
    /// ```
    pub fn run_from<I, T>(self, args: I) -> ExitCode
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let parsed = self
            .clap_command()
            .try_get_matches_from(args)
            .and_then(|matches| Cli::from_arg_matches(&matches));
        let cli = match parsed {
            Ok(cli) => cli,
            Err(e) => {
                // --help and --version are "errors" that print to stdout and succeed.
                let _ = e.print();
                return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
            }
        };
        init_logging(cli.log_format);
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: cannot start the tokio runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
        let result = runtime.block_on(self.command(cli.command, shutdown_signal()));
        match result {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                if e.backtrace().status() == std::backtrace::BacktraceStatus::Captured {
                    eprintln!("\n{}", e.backtrace());
                }
                ExitCode::FAILURE
            }
        }
    }

    /// Starts the roles of `<binary> serve <flags>` in the current tokio runtime and
    /// returns the running [`Server`] without waiting for a signal: for tests and for
    /// embedding. `flags` are `serve`'s (without the program or subcommand name); with the
    /// gateway role, `--listen` is bound here, so `127.0.0.1:0` picks a free port
    /// ([`Server::addr`] says which). The database must be reachable (it is created when it
    /// does not exist, and migrated); no private cluster is started.
    ///
    /// ```no_run
    /// # async fn example() -> anyhow::Result<()> {
    /// let server = postgame::App::new()
    ///     .start([
    ///         "--listen", "127.0.0.1:0",
    ///         "--database-url", "postgres://postgres@localhost:5432/mygame_test",
    ///     ])
    ///     .await?;
    /// println!("listening on {:?}", server.addr);
    /// server.shutdown().await;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn start<I, T>(self, flags: I) -> anyhow::Result<Server>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let args = ["postgame".into(), "serve".into()]
            .into_iter()
            .chain(flags.into_iter().map(Into::into))
            .collect::<Vec<OsString>>();
        let mut config = match Cli::try_parse_from(args)
            .context("the `serve` flags do not parse")?
            .command
        {
            Command::Serve(config) => config,
            // The arguments start with `serve`.
            _ => anyhow::bail!("the arguments did not parse as `serve`"),
        };
        // The URL given (flag or DATABASE_URL), else the default; never a private cluster.
        config.db.database_url = config
            .db
            .database_url_set
            .clone()
            .unwrap_or_else(|| config.db.default_database_url.clone());
        let listener = gateway_listener(&config).await?;
        self.serve_config(config, listener).await
    }

    async fn serve_config(
        self,
        config: ServeConfig,
        listener: Option<tokio::net::TcpListener>,
    ) -> anyhow::Result<Server> {
        crate::start_with_pages(config, self.games, self.pages, listener).await
    }

    /// Runs one parsed command; `serve` runs until `shutdown` completes.
    async fn command(
        self,
        command: Command,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<ExitCode> {
        match command {
            Command::Migrate(db) => {
                on_database(db, |url| async move {
                    let pool = crate::store::pool_connect(&url, 2, "postgame migrate").await?;
                    crate::store::migrate(&pool).await
                })
                .await?;
                tracing::info!("migrations applied");
            }
            Command::Bench(args) => {
                unless_interrupted(crate::bench::run(args, &self.games), shutdown).await?
            }
            Command::Doctor(db) => return Ok(crate::doctor::run(db).await),
            Command::Cluster(args) => crate::embedded::command(args).await?,
            Command::Chaos(args) => {
                return unless_interrupted(crate::chaos::run(args), shutdown).await
            }
            Command::Inspect(args) => {
                let what = args.what;
                on_database(args.db, |url| async move {
                    crate::inspect::run(&url, &what).await
                })
                .await?;
            }
            Command::DeadLetters(args) => {
                let action = args.action;
                on_database(args.db, |url| async move {
                    crate::queue::dead::run(&url, &action).await
                })
                .await?;
            }
            Command::Token(args) => {
                println!("{}", token_mint(&args)?);
            }
            Command::Serve(mut config) => {
                // A secret that would be refused is refused (or, on loopback, warned about)
                // before anything starts.
                if config.runs(Role::Gateway) {
                    crate::secret_check(&config.secret, Some(config.listen))?;
                }
                // A private cluster started here is stopped on every way out (`Drop` on
                // errors).
                let cluster = setup::prepare(&mut config.db).await?;
                let listener = gateway_listener(&config).await?;
                let server = self.serve_config(config, listener).await?;
                if let Some(addr) = server.addr {
                    tracing::info!("postgame is listening on http://{addr}/");
                }
                shutdown.await;
                tracing::info!("shutting down");
                server.shutdown().await;
                if let Some(cluster) = cluster {
                    cluster.stop().await;
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Runs `work` unless `shutdown` (SIGINT or SIGTERM) comes first. Then `work` is dropped,
/// and with it everything it started: child processes are killed on drop
/// (`kill_on_drop`), a private cluster is stopped by its `Drop`. Without this, `postgame
/// chaos` or `bench churn` killed by a signal left their role processes and cluster
/// running.
async fn unless_interrupted<T>(
    work: impl Future<Output = anyhow::Result<T>>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<T> {
    tokio::select! {
        r = work => r,
        _ = shutdown => {
            anyhow::bail!("interrupted (SIGINT or SIGTERM): its processes and cluster were stopped")
        }
    }
}

/// The gateway's listener on `--listen`, when this process runs the gateway.
async fn gateway_listener(config: &ServeConfig) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    if !config.runs(Role::Gateway) {
        return Ok(None);
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    Ok(Some(listener))
}

/// Runs `f` with the URL of the database `db` names, as `serve` would find it (a private
/// cluster started for it is stopped afterwards, whatever `f` returned).
async fn on_database<F, Fut>(mut db: crate::config::DatabaseConfig, f: F) -> anyhow::Result<()>
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let cluster = setup::prepare(&mut db).await?;
    let result = f(db.database_url.clone()).await;
    if let Some(cluster) = cluster {
        cluster.stop().await;
    }
    result
}

/// `postgame token`: a token signed with the configured secret (never the development
/// one, nor one shorter than servers accept off loopback).
fn token_mint(args: &crate::config::TokenArgs) -> anyhow::Result<String> {
    use crate::gateway::auth::{cap_parse, Auth, Claims};
    if args.secret == crate::config::DEV_SECRET || args.secret.len() < crate::MIN_SECRET_BYTES {
        anyhow::bail!(
            "set POSTGAME_SECRET (or --secret) to the servers' secret, at least {} bytes: \
             a token signed with the development secret would be accepted by anyone's server",
            crate::MIN_SECRET_BYTES
        );
    }
    if crate::ids::ClientId::parse(&args.client).is_none() {
        anyhow::bail!("`{}` is not a valid client id", args.client);
    }
    let caps = if args.caps.is_empty() {
        None
    } else {
        let mut caps = std::collections::BTreeMap::new();
        for text in &args.caps {
            let (pattern, ops) = cap_parse(text).map_err(anyhow::Error::msg)?;
            caps.entry(pattern).or_insert_with(Vec::new).extend(ops);
        }
        Some(caps)
    };
    let expires_at = chrono::Utc::now() + chrono::Duration::seconds(i64::from(args.ttl));
    let token = Auth::new(&args.secret).sign(&Claims {
        sub: args.client.clone(),
        exp: expires_at.timestamp(),
        caps,
        name: args.name.clone(),
        nbf: None,
        admin: args.admin,
    });
    eprintln!(
        "expires at {}",
        expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    Ok(token)
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`), as text or one JSON object a
/// line (`--log-format`); a second call (a test running two apps) keeps the first
/// subscriber.
fn init_logging(format: crate::config::LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        crate::config::LogFormat::Text => builder.try_init(),
        crate::config::LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .try_init(),
    };
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "no SIGTERM handler; stopping on Ctrl-C only");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
