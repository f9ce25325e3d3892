//! The database: connecting (see [`crate::setup`] for creating it), the embedded
//! migrations, and the readiness check. All of postgame's objects live in schema
//! `postgame`; the migrations are plain SQL under `migrations/`, applied here at start-up
//! or by `sqlx migrate run` in a user's CI.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use crate::lease::Leases;

/// The migrations under `migrations/`, compiled into the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!();

/// A pool of at most `max` connections, named `app_name` in `pg_stat_activity`.
pub async fn pool_connect(url: &str, max: u32, app_name: &str) -> anyhow::Result<PgPool> {
    pool_options(max)
        .connect_with(connect_options(url)?.application_name(app_name))
        .await
        .context("cannot connect to PostgreSQL")
}

/// A pool for a serving process's roles: like [`pool_connect`], and every connection runs
/// under `leases` (`Leases::session_sql`: idle-in-transaction and statement timeouts,
/// keepalives), so a process that hangs holds nothing for longer than its lease.
///
/// `pooled`: `url` is PgBouncer in transaction mode (1.18 and later; no protocol-level
/// prepared statements needed). sqlx prepares every statement with a Parse … Sync round
/// trip before its Bind … Sync, and names it (`sqlx_s_N`, counted per connection): outside
/// a transaction PgBouncer may hand the Bind to another server connection, and names
/// collide between clients sharing one. So the statement cache is off and every checkout
/// is one server transaction, opened by `Leases::pooled_begin_sql` (which drops the
/// server connection's prepared statements and sets the lease timeouts locally) and
/// committed when the connection comes back to the pool. A `pool.begin()` inside it runs
/// in that transaction and commits it (sqlx's `BEGIN` only warns), so a commit is durable
/// when `commit()` returns, as on a direct connection; a statement run on the pool itself
/// commits when its connection is released, just after it returns.
pub async fn pool_connect_role(
    url: &str,
    max: u32,
    app_name: &str,
    leases: Leases,
    pooled: bool,
) -> anyhow::Result<PgPool> {
    let options = connect_options(url)?.application_name(app_name);
    if pooled {
        let begin: Arc<str> = leases.pooled_begin_sql().into();
        let again = Arc::clone(&begin);
        return pool_options(max)
            .after_connect(move |conn, _meta| {
                let sql = Arc::clone(&begin);
                Box::pin(async move {
                    sqlx::Executor::execute(conn, &*sql).await?;
                    Ok(())
                })
            })
            .before_acquire(move |conn, _meta| {
                let sql = Arc::clone(&again);
                Box::pin(async move {
                    sqlx::Executor::execute(conn, &*sql).await?;
                    Ok(true)
                })
            })
            .after_release(|conn, _meta| {
                Box::pin(async move {
                    // Commits the checkout's transaction, or warns that there is none
                    // (a `pool.begin()` ended it): silenced, and the setting put back in
                    // the same round trip on the same server connection.
                    sqlx::Executor::execute(
                        conn,
                        "SET client_min_messages = error; COMMIT; RESET client_min_messages",
                    )
                    .await?;
                    Ok(true)
                })
            })
            .connect_with(options.statement_cache_capacity(0))
            .await
            .context("cannot connect to PostgreSQL through the pooler");
    }
    let sql: Arc<str> = leases.session_sql().into();
    pool_options(max)
        .after_connect(move |conn, _meta| {
            let sql = Arc::clone(&sql);
            Box::pin(async move {
                // A query without arguments goes through the simple protocol, which takes
                // several statements at once.
                sqlx::Executor::execute(conn, &*sql).await?;
                Ok(())
            })
        })
        .connect_with(options)
        .await
        .context("cannot connect to PostgreSQL")
}

fn connect_options(url: &str) -> anyhow::Result<PgConnectOptions> {
    PgConnectOptions::from_str(url).context("DATABASE_URL is not a valid URL")
}

fn pool_options(max: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max.max(2))
        .acquire_timeout(Duration::from_secs(10))
}

/// Applies pending migrations, on a connection of its own with no statement or
/// idle-in-transaction limit (a migration may rewrite a large table), which is closed
/// afterwards rather than handed back to the pool.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    let mut conn = pool
        .acquire()
        .await
        .context("cannot connect to PostgreSQL")?
        .detach();
    sqlx::raw_sql(
        "SET statement_timeout = 0; SET idle_in_transaction_session_timeout = 0;
         SET application_name = 'postgame migrate'",
    )
    .execute(&mut conn)
    .await
    .context("cannot prepare the migration connection")?;
    let done = MIGRATOR
        .run(&mut conn)
        .await
        .map_err(|e| crate::setup::explain_migrate(e, &pool.connect_options()));
    let _ = sqlx::Connection::close(conn).await;
    done
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
