-- Fair claims: one row per match with pending control messages, so a worker finds the
-- matches that have work instead of scanning the oldest rows of the whole queue (where one
-- match's backlog would hide every other match's messages behind it).
--
-- `head` is the id of the match's oldest pending message when the row was last settled;
-- workers claim heads oldest first (`FOR UPDATE SKIP LOCKED`), then a bounded prefix of
-- each claimed match's rows in id order.
--
-- Maintenance:
-- - a statement trigger on `control` inserts the head of a match that had none (the
--   inserting transaction holds the match's enqueue lock, `postgame.lock_enqueue`);
-- - the worker that consumed rows settles the heads it claimed
--   (`postgame.control_heads_settle`): it moves `head` to the oldest remaining row, or
--   deletes the head when none remains, and only while holding the enqueue lock, so a
--   publisher's uncommitted insert can never be left without a head;
-- - deleting a match deletes its head (ON DELETE CASCADE).
CREATE TABLE postgame.control_heads (
    match_id uuid PRIMARY KEY REFERENCES postgame.matches (id) ON DELETE CASCADE,
    head bigint NOT NULL
);

CREATE INDEX control_heads_head_idx ON postgame.control_heads (head);

-- A match's rows in order: the claim's per-match prefix, settling, and ON DELETE CASCADE.
CREATE INDEX control_match_id_idx ON postgame.control (match_id, id);

CREATE FUNCTION postgame.control_heads_on_insert() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    INSERT INTO postgame.control_heads (match_id, head)
    SELECT match_id, min(id) FROM new_rows GROUP BY match_id ORDER BY match_id
    ON CONFLICT (match_id) DO NOTHING;
    RETURN NULL;
END
$$;

CREATE TRIGGER control_heads_insert
AFTER INSERT ON postgame.control
REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION postgame.control_heads_on_insert();

-- Called by a worker, in the transaction that consumed rows of `ids` (whose heads it
-- holds): each head moves to the match's oldest remaining row; a match with none left
-- loses its head, decided under the enqueue lock (in match order, as publishers take it)
-- so that a concurrent publisher has either committed its rows (and they are seen here)
-- or not inserted them yet (and its trigger will insert a new head).
CREATE FUNCTION postgame.control_heads_settle(ids uuid[]) RETURNS void
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    m uuid;
    h bigint;
BEGIN
    FOR m IN SELECT DISTINCT x FROM unnest(ids) AS t(x) ORDER BY x LOOP
        SELECT min(id) INTO h FROM postgame.control WHERE match_id = m;
        IF h IS NULL THEN
            PERFORM postgame.lock_enqueue(m);
            SELECT min(id) INTO h FROM postgame.control WHERE match_id = m;
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

-- Heads of the messages already queued.
INSERT INTO postgame.control_heads (match_id, head)
SELECT match_id, min(id) FROM postgame.control GROUP BY match_id;
