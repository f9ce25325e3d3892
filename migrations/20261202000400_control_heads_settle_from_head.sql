-- Settling reads a match's remaining rows from its current head on.
--
-- `min(id) … WHERE match_id = m` walked the (match_id, id) index from the match's first
-- entry, through every entry of the rows already consumed: while a transaction holds the
-- xmin horizon back (a long report, a forgotten BEGIN, a replication slot) those stay in
-- the index, dead, and the walk grows with every message the match ever had. No pending
-- row is older than the head (a match's ids are allocated and committed in order under
-- its enqueue lock), so the search starts there. Same contract as before otherwise (see
-- 20261201000200_control_heads.sql).
CREATE OR REPLACE FUNCTION postgame.control_heads_settle(ids uuid[]) RETURNS void
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    m uuid;
    h bigint;
    since bigint;
BEGIN
    FOR m IN SELECT DISTINCT x FROM unnest(ids) AS t(x) ORDER BY x LOOP
        SELECT coalesce(max(c.head), 0) INTO since
        FROM postgame.control_heads c WHERE c.match_id = m;
        SELECT min(id) INTO h FROM postgame.control WHERE match_id = m AND id >= since;
        IF h IS NULL THEN
            PERFORM postgame.lock_enqueue(m);
            SELECT min(id) INTO h FROM postgame.control WHERE match_id = m AND id >= since;
        END IF;
        IF h IS NULL THEN
            DELETE FROM postgame.control_heads WHERE match_id = m;
        ELSE
            INSERT INTO postgame.control_heads (match_id, head) VALUES (m, h)
            ON CONFLICT (match_id) DO UPDATE SET head = EXCLUDED.head
            WHERE postgame.control_heads.head <> EXCLUDED.head;
        END IF;
    END LOOP;
END
$$;
