//! Getting to a database before anything else runs: which one (the URL the user set, the
//! default, or a private cluster when nothing answers at the default), creating it when
//! it is missing, checking the server's version, and errors that say what to do.
//!
//! Invariants: a URL the user set is used as it is and never falls back to a private
//! cluster; every failure to reach or use the server becomes a [`SetupError`], whose text
//! names the address and the ways out (`main` prints it without a backtrace).

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::Connection;

use crate::config::DatabaseConfig;
use crate::embedded::{self, Cluster};

/// The oldest PostgreSQL major version postgame supports (`DROP DATABASE … WITH (FORCE)`,
/// `gen_random_uuid()` in core and the planner features the claims rely on are 13+).
pub const MIN_SERVER_MAJOR: u32 = 13;

/// How long a first connection may take before the server counts as unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why postgame cannot use the database; the text says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(
        "cannot reach PostgreSQL at {addr} ({cause}).\n\
         Either start PostgreSQL there, or set DATABASE_URL to a server that runs \
         (postgres://USER:PASSWORD@HOST:PORT/DATABASE);\n\
         or run postgame with its own PostgreSQL in Docker: docker compose up{extra}"
    )]
    Unreachable {
        addr: String,
        cause: String,
        /// A further hint (why no private cluster was started), empty or starting with a
        /// newline.
        extra: String,
    },
    #[error(
        "PostgreSQL at {addr} refused user {user:?}: {cause}.\n\
         Put the right user and password in DATABASE_URL \
         (postgres://USER:PASSWORD@HOST:PORT/DATABASE), or allow this client in the \
         server's pg_hba.conf."
    )]
    Login {
        addr: String,
        user: String,
        cause: String,
    },
    #[error(
        "user {user:?} may not {what} on PostgreSQL at {addr}: {cause}.\n\
         Create the database for it as a superuser (createdb -O {user} {database}) or grant \
         what is missing (ALTER ROLE {user} CREATEDB; GRANT CREATE ON DATABASE {database} \
         TO {user}), or use another user in DATABASE_URL."
    )]
    Permission {
        addr: String,
        user: String,
        database: String,
        what: String,
        cause: String,
    },
    #[error(
        "PostgreSQL at {addr} is version {found}; postgame needs PostgreSQL {MIN_SERVER_MAJOR} \
         or later.\nUpgrade that server, or set DATABASE_URL to a newer one."
    )]
    TooOld { addr: String, found: String },
    #[error(
        "DATABASE_URL is not a valid PostgreSQL URL ({cause}); expected \
         postgres://USER:PASSWORD@HOST:PORT/DATABASE"
    )]
    BadUrl { cause: String },
    #[error("PostgreSQL at {addr} failed while postgame {what}: {cause}")]
    Other {
        addr: String,
        what: String,
        cause: String,
    },
}

/// Where a URL points, for messages: `host:port`, or the socket file.
pub fn describe(opts: &PgConnectOptions) -> String {
    match opts.get_socket() {
        Some(dir) => format!(
            "the Unix socket {}",
            dir.join(format!(".s.PGSQL.{}", opts.get_port())).display()
        ),
        None if opts.get_host().starts_with('/') => format!(
            "the Unix socket {}/.s.PGSQL.{}",
            opts.get_host(),
            opts.get_port()
        ),
        None => format!("{}:{}", opts.get_host(), opts.get_port()),
    }
}

/// Parses a URL into connect options, or says what is wrong with it.
pub fn parse_url(url: &str) -> Result<PgConnectOptions, SetupError> {
    PgConnectOptions::from_str(url).map_err(|e| SetupError::BadUrl {
        cause: e.to_string(),
    })
}

/// Turns a database error into the [`SetupError`] that says what to do; `what` is what
/// postgame was doing ("connect", "create the database", "apply its migrations").
pub fn explain(e: &sqlx::Error, opts: &PgConnectOptions, what: &str) -> SetupError {
    let addr = describe(opts);
    let user = opts.get_username().to_owned();
    let database = opts.get_database().unwrap_or(&user).to_owned();
    match e {
        sqlx::Error::Io(io) => SetupError::Unreachable {
            addr,
            cause: io.to_string(),
            extra: String::new(),
        },
        sqlx::Error::Database(db) => {
            let cause = db.message().to_owned();
            match db.code().as_deref() {
                // invalid_password, invalid_authorization_specification (pg_hba refusal).
                Some("28P01" | "28000") => SetupError::Login { addr, user, cause },
                // insufficient_privilege.
                Some("42501") => SetupError::Permission {
                    addr,
                    user,
                    database,
                    what: what.to_owned(),
                    cause,
                },
                _ => SetupError::Other {
                    addr,
                    what: format!("tried to {what}"),
                    cause,
                },
            }
        }
        e => SetupError::Other {
            addr,
            what: format!("tried to {what}"),
            cause: e.to_string(),
        },
    }
}

/// A failed migration, explained (a missing permission says which).
pub fn explain_migrate(e: sqlx::migrate::MigrateError, opts: &PgConnectOptions) -> anyhow::Error {
    match &e {
        sqlx::migrate::MigrateError::Execute(inner) => explain(
            inner,
            opts,
            "create postgame's schema and tables (the migrations)",
        )
        .into(),
        _ => anyhow::Error::new(e).context("cannot apply the migrations"),
    }
}

/// Whether an error means that nothing answered (as opposed to a server that refused).
fn is_unreachable(e: &SetupError) -> bool {
    matches!(e, SetupError::Unreachable { .. })
}

/// One connection with [`CONNECT_TIMEOUT`].
async fn connect(opts: &PgConnectOptions) -> Result<PgConnection, sqlx::Error> {
    match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(opts)).await {
        Ok(r) => r,
        Err(_) => Err(sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
        ))),
    }
}

/// The server's version as (`server_version_num`, `server_version`).
async fn server_version(conn: &mut PgConnection) -> Result<(u32, String), sqlx::Error> {
    let (num, text): (String, String) = sqlx::query_as(
        "SELECT current_setting('server_version_num'), current_setting('server_version')",
    )
    .fetch_one(conn)
    .await?;
    Ok((num.parse().unwrap_or(0), text))
}

/// Refuses a server older than [`MIN_SERVER_MAJOR`].
async fn version_check(
    conn: &mut PgConnection,
    opts: &PgConnectOptions,
) -> Result<String, SetupError> {
    let (num, text) = server_version(conn)
        .await
        .map_err(|e| explain(&e, opts, "read the server version"))?;
    version_accept(num, &text, &describe(opts))?;
    Ok(text)
}

/// The version rule on its own: `server_version_num` must be at least
/// [`MIN_SERVER_MAJOR`]`* 10000`.
pub fn version_accept(num: u32, text: &str, addr: &str) -> Result<(), SetupError> {
    if num < MIN_SERVER_MAJOR * 10_000 {
        return Err(SetupError::TooOld {
            addr: addr.to_owned(),
            found: text.to_owned(),
        });
    }
    Ok(())
}

/// Connects to the database of `url`, creating it when it does not exist, and checks the
/// server's version. Returns the server's version string.
pub async fn database_ready(url: &str) -> Result<String, SetupError> {
    let opts = parse_url(url)?;
    match connect(&opts).await {
        Ok(mut conn) => {
            let version = version_check(&mut conn, &opts).await;
            let _ = conn.close().await;
            return version;
        }
        // invalid_catalog_name: the database does not exist yet.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("3D000") => {}
        Err(e) => return Err(explain(&e, &opts, "connect")),
    }
    let database = opts.get_database().unwrap_or_default().to_owned();
    let mut maint = match connect(&opts.clone().database("postgres")).await {
        Ok(c) => c,
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("3D000") => {
            connect(&opts.clone().database("template1"))
                .await
                .map_err(|e| explain(&e, &opts, "connect"))?
        }
        Err(e) => return Err(explain(&e, &opts, "connect")),
    };
    let version = version_check(&mut maint, &opts).await?;
    tracing::info!(database = %database, "creating the database");
    let created = sqlx::query(&format!(
        "CREATE DATABASE \"{}\"",
        database.replace('"', "\"\"")
    ))
    .execute(&mut maint)
    .await;
    let _ = maint.close().await;
    match created {
        Ok(_) => Ok(version),
        // Another process created it meanwhile (duplicate_database, or the catalog's
        // unique index when both commit at once).
        Err(sqlx::Error::Database(e)) if matches!(e.code().as_deref(), Some("42P04" | "23505")) => {
            Ok(version)
        }
        Err(e) => Err(explain(
            &e,
            &opts,
            &format!("create the database {database:?}"),
        )),
    }
}

/// `url` with its database replaced by `database` (query parameters such as a socket
/// `host` are kept).
pub fn url_with_database(url: &str, database: &str) -> Result<String, SetupError> {
    let bad = || SetupError::BadUrl {
        cause: "it names no database".into(),
    };
    let (head, query) = match url.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (url, None),
    };
    let scheme_end = head.find("://").ok_or_else(bad)? + 3;
    let slash = head[scheme_end..].find('/').map(|i| i + scheme_end);
    let server = match slash {
        Some(i) => &head[..i],
        None => head,
    };
    Ok(match query {
        Some(q) => format!("{server}/{database}?{q}"),
        None => format!("{server}/{database}"),
    })
}

/// The database of [`DatabaseConfig`] made usable: the URL the user set, or the default,
/// or a private cluster when nothing answers at the default (or `--embedded`). Sets
/// `db.database_url`, logs one line naming the database in use, and returns the private
/// cluster when one runs for this process (stop it on the way out).
pub async fn prepare(db: &mut DatabaseConfig) -> anyhow::Result<Option<Cluster>> {
    if db.embedded {
        let cluster = start_private(db).await?;
        return Ok(Some(cluster));
    }
    let (url, source) = match db.user_url() {
        Some(u) => (u.to_owned(), "DATABASE_URL"),
        None => (db.default_database_url.clone(), "the default URL"),
    };
    let opts = parse_url(&url)?;
    match database_ready(&url).await {
        Ok(version) => {
            tracing::info!(
                "using database {:?} at {} (PostgreSQL {version}, from {source})",
                opts.get_database().unwrap_or_default(),
                describe(&opts),
            );
            db.database_url = url;
            Ok(None)
        }
        Err(e) if is_unreachable(&e) && db.user_url().is_none() => {
            match embedded::find_installation(db.pg_bindir.as_deref()) {
                Some(bindir) => {
                    tracing::info!(
                        "nothing answers at {} (the default database URL): using a private \
                         PostgreSQL cluster from {}",
                        describe(&opts),
                        bindir.display()
                    );
                    Ok(Some(start_private(db).await?))
                }
                None => Err(match e {
                    SetupError::Unreachable { addr, cause, .. } => SetupError::Unreachable {
                        addr,
                        cause,
                        extra: "\n(No PostgreSQL installation was found to start a private \
                                cluster from: install PostgreSQL, e.g. `apt install \
                                postgresql` or `brew install postgresql`, and run this again.)"
                            .into(),
                    },
                    e => e,
                }
                .into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Starts (or reuses) the private cluster of `db.data_dir` and points `db` at it.
async fn start_private(db: &mut DatabaseConfig) -> anyhow::Result<Cluster> {
    let database = parse_url(&db.default_database_url)?
        .get_database()
        .unwrap_or("postgame")
        .to_owned();
    let bindir = embedded::find_installation(db.pg_bindir.as_deref()).ok_or_else(|| {
        anyhow::anyhow!(
            "no PostgreSQL installation found for the private cluster (looked at \
             --pg-bindir, `pg_config --bindir`, /usr/lib/postgresql/*/bin, Homebrew and \
             PATH).\nInstall PostgreSQL (e.g. `apt install postgresql` or `brew install \
             postgresql`), or set DATABASE_URL to a server that runs, or run: docker compose up"
        )
    })?;
    let cluster = Cluster::start(&db.data_dir, &bindir, &database).await?;
    let version = database_ready(cluster.url()).await?;
    tracing::info!(
        "using database {database:?} in the private PostgreSQL {version} cluster in {} \
         (Unix socket only; {}; delete the folder to start afresh)",
        cluster.data_dir().display(),
        if cluster.started_here() {
            "started by this process"
        } else {
            "it was already running"
        }
    );
    db.database_url = cluster.url().to_owned();
    Ok(cluster)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_is_replaced_and_the_query_kept() {
        assert_eq!(
            url_with_database("postgres://u@h:1/a", "b").unwrap(),
            "postgres://u@h:1/b"
        );
        assert_eq!(
            url_with_database("postgres://u@h/a?host=%2Ftmp%2Fx", "b").unwrap(),
            "postgres://u@h/b?host=%2Ftmp%2Fx"
        );
        assert_eq!(
            url_with_database("postgres://u@h:1", "b").unwrap(),
            "postgres://u@h:1/b"
        );
    }

    #[test]
    fn servers_older_than_the_minimum_are_refused_by_name() {
        let e = version_accept(120_017, "12.17", "db:5432").unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("12.17") && text.contains("13 or later"),
            "{text}"
        );
        assert!(version_accept(130_000, "13.0", "db:5432").is_ok());
    }

    #[test]
    fn an_unreachable_server_is_named_with_the_ways_out() {
        let opts = parse_url("postgres://postgres@127.0.0.1:1/x").unwrap();
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let text = explain(&sqlx::Error::Io(io), &opts, "connect").to_string();
        assert!(text.contains("127.0.0.1:1"), "{text}");
        assert!(
            text.contains("DATABASE_URL") && text.contains("docker compose up"),
            "{text}"
        );
    }
}
