-- The batched claim-and-delete: 100 rows per transaction, oldest first, skipping rows that
-- other clients hold. The drain's floor (no game, no state write, no match locks).
WITH c AS (
    SELECT id FROM limitq.control ORDER BY id LIMIT 100 FOR UPDATE SKIP LOCKED
)
DELETE FROM limitq.control q USING c WHERE q.id = c.id
RETURNING q.id, q.match_id, q.client_id, q.name, q.data, q.attempts;
