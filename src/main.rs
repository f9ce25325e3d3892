//! The `postgame` binary: parse flags, set up logging, find the database (see
//! [`postgame::setup`]), run until a signal. Errors are printed as one explanation, with a
//! backtrace only when `RUST_BACKTRACE` asks for one.

use std::process::ExitCode;

use clap::Parser;
use postgame::config::{Cli, Command, Role};
use postgame::game::Registry;
use postgame::setup;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse().command).await {
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

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Migrate(mut db) => {
            let cluster = setup::prepare(&mut db).await?;
            let result = async {
                let pool =
                    postgame::store::pool_connect(&db.database_url, 2, "postgame migrate").await?;
                postgame::store::migrate(&pool).await
            }
            .await;
            if let Some(cluster) = cluster {
                cluster.stop().await;
            }
            result?;
            tracing::info!("migrations applied");
        }
        Command::Bench(args) => postgame::bench::run(args).await?,
        Command::Doctor(db) => return Ok(postgame::doctor::run(db).await),
        Command::Cluster(args) => postgame::embedded::command(args).await?,
        Command::Chaos(args) => return postgame::chaos::run(args).await,
        Command::Serve(mut config) => {
            // A secret that would be refused is refused (or, on loopback, warned about)
            // before anything starts.
            if config.runs(Role::Gateway) {
                postgame::secret_check(&config.secret, Some(config.listen))?;
            }
            // A private cluster started here is stopped on every way out (`Drop` on errors).
            let cluster = setup::prepare(&mut config.db).await?;
            let listener = if config.runs(Role::Gateway) {
                Some(tokio::net::TcpListener::bind(config.listen).await?)
            } else {
                None
            };
            let server = postgame::start(config, Registry::builtin(), listener).await?;
            if let Some(addr) = server.addr {
                tracing::info!("postgame is listening on http://{addr}/");
            }
            shutdown_signal().await;
            tracing::info!("shutting down");
            server.shutdown().await;
            if let Some(cluster) = cluster {
                cluster.stop().await;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler only fails outside a tokio runtime");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
