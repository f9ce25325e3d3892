-- A publisher never waits for a worker's transaction while it holds enqueue locks.
--
-- The first trigger inserted a head with `ON CONFLICT DO NOTHING` for every match of the
-- statement. When a worker had just moved that match's head (`control_heads_settle`, in
-- its uncommitted transaction), the unique check of that INSERT waited for the worker to
-- end, while the publisher held the enqueue locks of its matches; a worker settling
-- another of those matches waits for its enqueue lock: a deadlock, broken by PostgreSQL
-- after `deadlock_timeout` (1 s) by failing one of the two transactions (seen with
-- presence churn: `bench churn`).
--
-- A head that is visible (committed) is left alone without touching the index: it is at
-- most the oldest of the rows being inserted (a match's ids grow in commit order under
-- its enqueue lock), and it can only be removed by a worker that holds the enqueue lock
-- this publisher holds now. Only a match without a visible head gets one, and nobody else
-- can be inserting that head concurrently (inserting it needs the same enqueue lock).
CREATE OR REPLACE FUNCTION postgame.control_heads_on_insert() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    INSERT INTO postgame.control_heads (match_id, head)
    SELECT n.match_id, min(n.id) FROM new_rows n
    WHERE NOT EXISTS (SELECT 1 FROM postgame.control_heads h WHERE h.match_id = n.match_id)
    GROUP BY n.match_id ORDER BY n.match_id
    ON CONFLICT (match_id) DO NOTHING;
    RETURN NULL;
END
$$;
