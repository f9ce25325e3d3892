//! `postgame doctor`: checks what a deployment needs and prints what is wrong — the
//! database URL, the server's version, the migrations applied against those this binary
//! embeds, the roles connected (from `pg_stat_activity`) and whether their work moves
//! (control messages waiting, clocks overdue). Exits non-zero when something is wrong.
//!
//! It starts nothing: with the default URL and nothing answering, it looks at the private
//! cluster of `--data-dir` if that runs, and otherwise says what `serve` would do.

use std::collections::BTreeSet;
use std::process::ExitCode;

use sqlx::postgres::PgConnection;
use sqlx::{Connection, Row};

use crate::config::DatabaseConfig;
use crate::embedded::{self, Cluster};
use crate::setup::{self, SetupError};

/// Control messages older than this mean no worker is claiming them.
const CONTROL_STALE_SECONDS: f64 = 60.0;
/// Match clocks this late mean no ticker is running them.
const TICK_STALE_SECONDS: f64 = 60.0;
/// Share of `max_connections` in use above which the server is close to refusing.
const CONNECTIONS_WARN_SHARE: f64 = 0.9;

/// What the checks found.
#[derive(Default)]
struct Report {
    problems: Vec<String>,
}

impl Report {
    fn ok(&self, what: &str) {
        println!("ok       {what}");
    }

    fn info(&self, what: &str) {
        println!("         {what}");
    }

    fn problem(&mut self, what: String) {
        println!("PROBLEM  {what}");
        self.problems.push(what);
    }
}

/// Runs every check, prints them, and returns the exit code (1 when something is wrong).
pub async fn run(db: DatabaseConfig) -> ExitCode {
    let mut report = Report::default();
    println!("postgame {} doctor", env!("CARGO_PKG_VERSION"));
    let url = match pick_url(&db, &mut report).await {
        Some(u) => u,
        None => return finish(&report),
    };
    let opts = match setup::parse_url(&url) {
        Ok(o) => o,
        Err(e) => {
            report.problem(e.to_string());
            return finish(&report);
        }
    };
    let mut conn = match PgConnection::connect_with(&opts).await {
        Ok(c) => c,
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("3D000") => {
            report.problem(format!(
                "the database {:?} does not exist yet: `postgame migrate` or `postgame serve` \
                 creates it",
                opts.get_database().unwrap_or_default()
            ));
            return finish(&report);
        }
        Err(e) => {
            report.problem(setup::explain(&e, &opts, "connect").to_string());
            return finish(&report);
        }
    };
    report.ok(&format!(
        "connected to database {:?} at {}",
        opts.get_database().unwrap_or_default(),
        setup::describe(&opts)
    ));
    check_version(&mut conn, &opts, &mut report).await;
    if check_migrations(&mut conn, &mut report).await {
        check_roles(&mut conn, &mut report).await;
        check_progress(&mut conn, &mut report).await;
    }
    let _ = conn.close().await;
    finish(&report)
}

fn finish(report: &Report) -> ExitCode {
    if report.problems.is_empty() {
        println!("\nno problems found");
        ExitCode::SUCCESS
    } else {
        println!("\n{} problem(s) found", report.problems.len());
        ExitCode::FAILURE
    }
}

/// The URL to check: the user's; or the default when something answers there; or the
/// running private cluster.
async fn pick_url(db: &DatabaseConfig, report: &mut Report) -> Option<String> {
    if let Some(u) = db.user_url() {
        report.ok(&format!("database URL {} (from DATABASE_URL)", redact(u)));
        return Some(u.to_owned());
    }
    let default = db.default_database_url.clone();
    if !db.embedded {
        report.ok(&format!(
            "database URL {} (the default: DATABASE_URL is not set, or equals it)",
            redact(&default)
        ));
        let opts = match setup::parse_url(&default) {
            Ok(o) => o,
            Err(e) => {
                report.problem(e.to_string());
                return None;
            }
        };
        match PgConnection::connect_with(&opts).await {
            Ok(c) => {
                let _ = c.close().await;
                return Some(default);
            }
            Err(e) => {
                let explained = setup::explain(&e, &opts, "connect");
                if !matches!(explained, SetupError::Unreachable { .. }) {
                    // Something answers and refuses: that is the problem to report.
                    return Some(default);
                }
                report.info(&format!(
                    "nothing answers at {}; looking for the private cluster",
                    setup::describe(&opts)
                ));
            }
        }
    }
    let Some(bindir) = embedded::find_installation(db.pg_bindir.as_deref()) else {
        report.problem(format!(
            "nothing answers at the default URL and no PostgreSQL installation was found for \
             a private cluster: start PostgreSQL, or set DATABASE_URL, or run `docker \
             compose up` ({})",
            redact(&default)
        ));
        return None;
    };
    if !db.data_dir.join("PG_VERSION").exists() {
        report.ok(&format!(
            "no private cluster in {} yet: `postgame serve` creates one from {}",
            db.data_dir.display(),
            bindir.display()
        ));
        return None;
    }
    let database = setup::parse_url(&default)
        .ok()
        .and_then(|o| o.get_database().map(str::to_owned))
        .unwrap_or_else(|| "postgame".into());
    let cluster = match Cluster::open(&db.data_dir, &bindir, &database).await {
        Ok(c) => c,
        Err(e) => {
            report.problem(format!("the private cluster cannot be used: {e:#}"));
            return None;
        }
    };
    match cluster.status().await {
        Ok(true) => {
            report.ok(&format!(
                "private cluster in {} is running",
                cluster.data_dir().display()
            ));
            Some(cluster.url().to_owned())
        }
        Ok(false) => {
            report.ok(&format!(
                "private cluster in {} is stopped: `postgame serve` starts it \
                 (`postgame cluster start` to look inside)",
                cluster.data_dir().display()
            ));
            None
        }
        Err(e) => {
            report.problem(format!(
                "cannot ask pg_ctl about the private cluster: {e:#}"
            ));
            None
        }
    }
}

/// The URL with its password replaced by `***`.
fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => match rest[..at].find(':') {
            Some(colon) => format!(
                "{}{}:***{}",
                &url[..scheme_end],
                &rest[..colon],
                &rest[at..]
            ),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

async fn check_version(
    conn: &mut PgConnection,
    opts: &sqlx::postgres::PgConnectOptions,
    report: &mut Report,
) {
    let row: Result<(String, String), _> = sqlx::query_as(
        "SELECT current_setting('server_version_num'), current_setting('server_version')",
    )
    .fetch_one(&mut *conn)
    .await;
    match row {
        Ok((num, text)) => {
            match setup::version_accept(num.parse().unwrap_or(0), &text, &setup::describe(opts)) {
                Ok(()) => report.ok(&format!(
                    "PostgreSQL {text} (postgame needs {} or later)",
                    setup::MIN_SERVER_MAJOR
                )),
                Err(e) => report.problem(e.to_string()),
            }
        }
        Err(e) => report.problem(format!("cannot read the server version: {e}")),
    }
}

/// Compares the applied migrations with the embedded ones; true when the schema is there.
async fn check_migrations(conn: &mut PgConnection, report: &mut Report) -> bool {
    let embedded: BTreeSet<i64> = crate::store::MIGRATOR.iter().map(|m| m.version).collect();
    let rows = sqlx::query("SELECT version, success FROM _sqlx_migrations ORDER BY version")
        .fetch_all(&mut *conn)
        .await;
    let rows = match rows {
        Ok(r) => r,
        // undefined_table: nothing was ever applied here.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => {
            report.problem(format!(
                "no migrations applied (of {} this binary has): run `postgame migrate`, or \
                 `postgame serve` applies them",
                embedded.len()
            ));
            return false;
        }
        Err(e) => {
            report.problem(format!("cannot read _sqlx_migrations: {e}"));
            return false;
        }
    };
    let applied: BTreeSet<i64> = rows
        .iter()
        .filter(|r| r.get::<bool, _>("success"))
        .map(|r| r.get::<i64, _>("version"))
        .collect();
    let failed: Vec<i64> = rows
        .iter()
        .filter(|r| !r.get::<bool, _>("success"))
        .map(|r| r.get::<i64, _>("version"))
        .collect();
    let pending: Vec<&i64> = embedded.difference(&applied).collect();
    let unknown: Vec<&i64> = applied.difference(&embedded).collect();
    if pending.is_empty() && failed.is_empty() {
        report.ok(&format!(
            "migrations: {} applied, all {} of this binary",
            applied.len(),
            embedded.len()
        ));
    }
    if !pending.is_empty() {
        report.problem(format!(
            "{} of this binary's {} migrations are not applied ({:?}): run `postgame migrate`",
            pending.len(),
            embedded.len(),
            pending
        ));
    }
    if !failed.is_empty() {
        report.problem(format!(
            "migrations that failed half-way: {failed:?} (see _sqlx_migrations)"
        ));
    }
    if !unknown.is_empty() {
        report.problem(format!(
            "the database has migrations this binary does not know ({unknown:?}): a newer \
             postgame migrated it; run that version"
        ));
    }
    !applied.is_empty()
}

/// The postgame processes connected, per role set (`application_name`), and the server's
/// connection headroom.
async fn check_roles(conn: &mut PgConnection, report: &mut Report) {
    let rows = sqlx::query(
        "SELECT application_name, count(*) AS connections, \
                count(*) FILTER (WHERE state = 'active') AS active, \
                extract(epoch FROM now() - min(backend_start))::float8 AS oldest \
         FROM pg_stat_activity \
         WHERE datname = current_database() AND starts_with(application_name, 'postgame') \
         GROUP BY application_name ORDER BY application_name",
    )
    .fetch_all(&mut *conn)
    .await;
    match rows {
        Ok(rows) if rows.is_empty() => {
            report.info("no postgame process is connected to this database right now")
        }
        Ok(rows) => {
            for r in rows {
                report.ok(&format!(
                    "{:?}: {} connection(s), {} active, the oldest for {:.0} s",
                    r.get::<String, _>("application_name"),
                    r.get::<i64, _>("connections"),
                    r.get::<i64, _>("active"),
                    r.get::<f64, _>("oldest"),
                ));
            }
        }
        Err(e) => report.problem(format!("cannot read pg_stat_activity: {e}")),
    }
    let headroom: Result<(i64, i32), _> = sqlx::query_as(
        "SELECT (SELECT count(*) FROM pg_stat_activity), current_setting('max_connections')::int",
    )
    .fetch_one(&mut *conn)
    .await;
    if let Ok((used, max)) = headroom {
        let line = format!("{used} of the server's {max} connections in use");
        if used as f64 >= max as f64 * CONNECTIONS_WARN_SHARE {
            report.problem(format!(
                "{line}: new processes will be refused; lower --db-connections or raise \
                 max_connections"
            ));
        } else {
            report.ok(&line);
        }
    }
}

/// Whether the work moves: control messages nobody claims mean no worker runs; overdue
/// clocks mean no ticker runs.
async fn check_progress(conn: &mut PgConnection, report: &mut Report) {
    let control: Result<(i64, Option<f64>), _> = sqlx::query_as(
        "SELECT count(*), extract(epoch FROM now() - min(created_at))::float8 \
         FROM postgame.control",
    )
    .fetch_one(&mut *conn)
    .await;
    match control {
        Ok((n, Some(age))) if age > CONTROL_STALE_SECONDS => report.problem(format!(
            "{n} control message(s) waiting, the oldest for {age:.0} s: is a worker running \
             (`postgame serve --role worker`)?"
        )),
        Ok((n, _)) => report.ok(&format!("{n} control message(s) waiting")),
        Err(e) => report.info(&format!("could not read the control queue: {e}")),
    }
    let ticks: Result<(i64, Option<f64>), _> = sqlx::query_as(
        "SELECT count(*), extract(epoch FROM now() - min(next_tick_at))::float8 \
         FROM postgame.matches WHERE next_tick_at < now()",
    )
    .fetch_one(&mut *conn)
    .await;
    match ticks {
        Ok((n, Some(late))) if late > TICK_STALE_SECONDS => report.problem(format!(
            "{n} match clock(s) overdue, the latest by {late:.0} s: is a ticker running \
             (`postgame serve --role ticker`)?"
        )),
        Ok(_) => report.ok("match clocks are on time"),
        Err(e) => report.info(&format!("could not read the match clocks: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_not_printed() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("postgres://h/db?x=a:b@c"), "postgres://h/db?x=a:b@c");
    }
}
