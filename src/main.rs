//! The `postgame` binary: parse flags, set up logging, run until a signal.

use clap::Parser;
use postgame::config::{Cli, Command, Role};
use postgame::game::Registry;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Migrate(db) => {
            postgame::store::database_ensure(&db.database_url).await?;
            let pool =
                postgame::store::pool_connect(&db.database_url, 2, "postgame migrate").await?;
            postgame::store::migrate(&pool).await?;
            tracing::info!("migrations applied");
        }
        Command::Bench(args) => postgame::bench::run(args).await?,
        Command::Serve(config) => {
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
        }
    }
    Ok(())
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
