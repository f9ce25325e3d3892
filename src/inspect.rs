//! `postgame inspect match ID`: everything the database knows about one match, as one JSON
//! document an operator can read or pipe to `jq`: the match row (status, state, label,
//! clock), its pending control messages, a hold after failures, its dead letters, who is
//! present, and its latest broadcasts. It reads only, in one snapshot. When the match has
//! dead letters, a line on stderr names `postgame dead-letters` (crate::queue::dead).

use anyhow::Context;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

/// The document for match `id`, or `None` when there is no such match.
pub async fn match_report(pool: &PgPool, id: Uuid, last: i64) -> anyhow::Result<Option<Value>> {
    let report: Option<Value> = sqlx::query_scalar(
        r#"
        SELECT jsonb_build_object(
            'match', to_jsonb(m),
            'pending', jsonb_build_object(
                'count', (SELECT count(*) FROM postgame.control c WHERE c.match_id = m.id),
                'oldest', (SELECT coalesce(jsonb_agg(to_jsonb(c) ORDER BY c.id), '[]')
                           FROM (SELECT * FROM postgame.control c WHERE c.match_id = m.id
                                 ORDER BY c.id LIMIT $2) c)),
            'hold', (SELECT to_jsonb(h) FROM postgame.control_holds h WHERE h.match_id = m.id),
            'dead_letters', (SELECT coalesce(jsonb_agg(to_jsonb(d) ORDER BY d.id DESC), '[]')
                             FROM (SELECT * FROM postgame.control_dead d WHERE d.match_id = m.id
                                   ORDER BY d.id DESC LIMIT $2) d),
            'presence', (SELECT coalesce(jsonb_agg(to_jsonb(p) ORDER BY p.since), '[]')
                         FROM postgame.presence p WHERE p.match_id = m.id),
            'broadcasts', (SELECT coalesce(jsonb_agg(to_jsonb(b) ORDER BY b.seq DESC), '[]')
                           FROM (SELECT * FROM postgame.messages b
                                 WHERE b.channel = 'match:' || m.id::text
                                 ORDER BY b.seq DESC LIMIT $2) b))
        FROM postgame.matches m WHERE m.id = $1
        "#,
    )
    .bind(id)
    .bind(last.clamp(0, 1000))
    .fetch_optional(pool)
    .await
    .context("reading the match")?;
    Ok(report)
}

/// Runs `postgame inspect` on the database of `db` (already prepared).
pub async fn run(database_url: &str, args: &crate::config::InspectWhat) -> anyhow::Result<()> {
    let crate::config::InspectWhat::Match { id, last } = args;
    let id = Uuid::parse_str(id).with_context(|| format!("`{id}` is not a match id"))?;
    let pool = crate::store::pool_connect(database_url, 1, "postgame inspect").await?;
    let report = match_report(&pool, id, *last).await;
    pool.close().await;
    match report? {
        Some(doc) => {
            println!("{}", serde_json::to_string_pretty(&doc)?);
            // On stderr, so stdout stays one JSON document for `jq`.
            if doc["dead_letters"]
                .as_array()
                .is_some_and(|d| !d.is_empty())
            {
                eprintln!(
                    "this match has dead letters: `postgame dead-letters retry --match {id}` \
                     puts them back at the end of its queue, `… drop --match {id}` deletes them"
                );
            }
            Ok(())
        }
        None => anyhow::bail!("no match {id} in this database"),
    }
}
