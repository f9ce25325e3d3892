//! The database: connecting (creating the database when it does not exist), the embedded
//! migrations, and the readiness check. All of postgame's objects live in schema
//! `postgame`; the migrations are plain SQL under `migrations/`, applied here at start-up
//! or by `sqlx migrate run` in a user's CI.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::migrate::{MigrateDatabase, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};

/// The migrations under `migrations/`, compiled into the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!();

/// Creates the database named in `url` if it does not exist yet.
pub async fn database_ensure(url: &str) -> anyhow::Result<()> {
    if !Postgres::database_exists(url)
        .await
        .context("cannot reach PostgreSQL")?
    {
        tracing::info!("creating the database");
        if let Err(e) = Postgres::create_database(url).await {
            // Another process may have created it meanwhile.
            if !Postgres::database_exists(url).await.unwrap_or(false) {
                return Err(e).context("cannot create the database");
            }
        }
    }
    Ok(())
}

/// A pool of at most `max` connections, named `app_name` in `pg_stat_activity`.
pub async fn pool_connect(url: &str, max: u32, app_name: &str) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(url).context("DATABASE_URL is not a valid URL")?;
    PgPoolOptions::new()
        .max_connections(max.max(2))
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options.application_name(app_name))
        .await
        .context("cannot connect to PostgreSQL")
}

/// Applies pending migrations.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR
        .run(pool)
        .await
        .context("cannot apply the migrations")
}

/// Whether every embedded migration has been applied.
pub async fn migrations_current(pool: &PgPool) -> sqlx::Result<bool> {
    let latest = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    let applied: Option<i64> =
        sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(pool)
            .await?;
    Ok(applied.unwrap_or(0) >= latest)
}
