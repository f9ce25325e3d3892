//! Leases: how long a role process may hold anything in Postgres (match locks, claimed
//! rows) without talking to it.
//!
//! Every connection of a serving process's pool starts with [`Leases::session_sql`]:
//! - `idle_in_transaction_session_timeout` = the lease: a process that stops talking
//!   mid-transaction (SIGSTOP, a VM pause, a long GC-like stall, a partition) has its
//!   session ended by Postgres after the lease. Its locks and claimed rows are released, so
//!   any other worker or ticker takes its matches over; and because its session is gone,
//!   the frozen process cannot commit what it was doing when it wakes (its next statement,
//!   COMMIT included, fails on a closed connection). That is the fencing: no token is
//!   needed, the transaction itself is the lease.
//! - `statement_timeout`: no single statement of a role runs longer.
//! - TCP keepalives and `tcp_user_timeout` (server side): a peer host that vanished, with
//!   or without unacknowledged data in flight, is noticed within about a lease.
//! - `client_connection_check_interval` (PostgreSQL 14+): a running query notices a
//!   client that went away.
//!
//! Migrations run on their own connection without these limits (see
//! [`crate::store::migrate`]).
//!
//! Through PgBouncer in transaction mode (`--direct-database-url` set), a session setting
//! would stay on whichever server connection ran it, for the next client of PgBouncer:
//! instead, every checkout of the pool opens a transaction with
//! [`Leases::pooled_begin_sql`], which sets the two timeouts with `SET LOCAL`; the TCP
//! settings are then PgBouncer's own (`tcp_keepalive`, `server_lifetime`…).

use std::time::Duration;

/// Default lease: `idle_in_transaction_session_timeout` of role connections.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(5);
/// Default `statement_timeout` of role connections.
pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// The session limits of a role process's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leases {
    /// Longest silence inside a transaction before Postgres ends the session.
    pub lease: Duration,
    /// Longest statement.
    pub statement_timeout: Duration,
}

impl Default for Leases {
    fn default() -> Self {
        Self {
            lease: DEFAULT_LEASE,
            statement_timeout: DEFAULT_STATEMENT_TIMEOUT,
        }
    }
}

/// Milliseconds for a Postgres setting, at least 1 (0 would turn a limit off).
fn ms(d: Duration) -> u128 {
    d.as_millis().max(1)
}

impl Leases {
    /// What opens every checkout of a pool that goes through PgBouncer in transaction mode
    /// (see [`crate::store::pool_connect_role`]): one server transaction per checkout, the
    /// server connection's prepared statements dropped (left by whichever client had it
    /// before: sqlx names its statements per connection, so names collide), the lease
    /// timeouts for this transaction only, and warnings silenced for it (sqlx's own
    /// `BEGIN` inside it warns that a transaction is already in progress).
    pub fn pooled_begin_sql(&self) -> String {
        format!(
            "BEGIN; SET LOCAL client_min_messages = error; DEALLOCATE ALL;
             SET LOCAL idle_in_transaction_session_timeout = {};
             SET LOCAL statement_timeout = {};",
            ms(self.lease),
            ms(self.statement_timeout)
        )
    }

    /// The statements every role connection runs once, right after connecting.
    pub fn session_sql(&self) -> String {
        let lease_ms = ms(self.lease);
        // Keepalive probes start after half a lease of silence, then one per second, and
        // the connection is dropped after three unanswered ones.
        let idle_s = (self.lease.as_secs() / 2).max(1);
        format!(
            "SET idle_in_transaction_session_timeout = {lease_ms};
             SET statement_timeout = {stmt_ms};
             SET tcp_keepalives_idle = {idle_s};
             SET tcp_keepalives_interval = 1;
             SET tcp_keepalives_count = 3;
             SELECT set_config('tcp_user_timeout', '{lease_ms}', false),
                    set_config('client_connection_check_interval', '1000', false)
             WHERE current_setting('server_version_num')::int >= 140000;",
            stmt_ms = ms(self.statement_timeout),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_sql_carries_the_lease_in_milliseconds() {
        let sql = Leases {
            lease: Duration::from_millis(2500),
            statement_timeout: Duration::from_secs(30),
        }
        .session_sql();
        assert!(
            sql.contains("idle_in_transaction_session_timeout = 2500;"),
            "{sql}"
        );
        assert!(sql.contains("statement_timeout = 30000;"), "{sql}");
        assert!(sql.contains("tcp_keepalives_idle = 1;"), "{sql}");
    }

    #[test]
    fn a_zero_lease_never_turns_the_limit_off() {
        let sql = Leases {
            lease: Duration::ZERO,
            statement_timeout: Duration::ZERO,
        }
        .session_sql();
        assert!(
            sql.contains("idle_in_transaction_session_timeout = 1;"),
            "{sql}"
        );
        assert!(sql.contains("SET statement_timeout = 1;"), "{sql}");
    }
}
