//! The fast apply (`--fast-apply`): a publisher's batch transaction applies the control
//! messages it has just inserted, when their match is free, so a move costs one commit
//! (one WAL flush) instead of two in a row (the publisher's, then a worker's).
//!
//! The shape is unchanged: every control message is inserted into `postgame.control` and
//! consumed by the claim workers use (`queue::control_claim_fresh`: the match's
//! head `FOR UPDATE SKIP LOCKED`, the match lock with `try`, the rows `FOR UPDATE`), then
//! applied by the same code as a worker batch (`worker::claim_apply`: the game
//! within the handler time limit, the state saved, the broadcasts appended, the rows
//! deleted or failed into a retry hold or the dead letters, the heads settled), all in the
//! publishing transaction, before its one COMMIT; the ack still follows that COMMIT.
//!
//! A match takes the fast apply only when, in that transaction:
//! - its oldest pending message is the first one this transaction inserted (no earlier
//!   message of the match is still queued, so nothing is overtaken), and
//! - no worker or ticker holds it (its head row and its match lock are free at once), and
//! - it has no retry hold.
//!
//! Everything else (busy matches, backlogs, retries) stays in the queue for the workers,
//! exactly as without the fast apply. See docs/ARCHITECTURE.md ("The fast apply") for the
//! interaction with group commit, the enqueue locks and the per-client limits.

use std::collections::BTreeMap;

use sqlx::PgConnection;
use uuid::Uuid;

use crate::game::Registry;
use crate::queue::control_claim_fresh;
use crate::worker::{claim_apply, Applied, WorkerConfig};

/// What a publisher needs to apply control messages itself: the games and the workers'
/// settings (batch bounds, attempts before a dead letter, handler time limit).
#[derive(Clone)]
pub struct FastApply {
    games: Registry,
    config: WorkerConfig,
}

impl FastApply {
    /// The fast apply with the games and settings of this process's workers.
    pub(crate) fn new(games: Registry, config: WorkerConfig) -> Self {
        Self { games, config }
    }
}

/// Claims and applies, in the publisher's uncommitted transaction `conn` (which holds the
/// enqueue locks of the matches it inserted into), the control rows `inserted`
/// (`(match, id)` of every row this transaction inserted) whose matches are free; see the
/// module docs. At most `batch_per_match` rows of a match and `batch_size` in all are
/// applied; the others stay queued.
pub(crate) async fn fast_apply(
    conn: &mut PgConnection,
    inserted: &[(Uuid, i64)],
    fast: &FastApply,
) -> sqlx::Result<Applied> {
    // The first id this transaction inserted, per match.
    let mut firsts: BTreeMap<Uuid, i64> = BTreeMap::new();
    for &(m, id) in inserted {
        let first = firsts.entry(m).or_insert(id);
        *first = (*first).min(id);
    }
    if firsts.is_empty() {
        return Ok(Applied::default());
    }
    let firsts: Vec<(Uuid, i64)> = firsts.into_iter().collect();
    let claim = control_claim_fresh(
        conn,
        &firsts,
        fast.config.batch_size,
        fast.config.batch_per_match,
    )
    .await?;
    if claim.matches.is_empty() {
        return Ok(Applied::default());
    }
    claim_apply(conn, claim, &fast.games, &fast.config).await
}

/// The `(match, id)` of every control row a batch inserted: its control publishes that
/// were acknowledged as new (not refused, not a repeated idempotency key).
pub(crate) fn inserted_rows(
    reqs: &[&super::publisher::PublishRequest],
    results: &[Result<super::publisher::Ack, super::publisher::PublishError>],
) -> Vec<(Uuid, i64)> {
    reqs.iter()
        .zip(results)
        .filter_map(|(r, result)| match (r.channel.kind(), result) {
            (crate::ids::ChannelKind::Control(m), Ok(ack)) if !ack.duplicate => {
                Some((m.0, ack.msg_id))
            }
            _ => None,
        })
        .collect()
}
