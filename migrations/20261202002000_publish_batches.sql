-- One row per publish batch, written inside the batch's transaction: the proof of its
-- commit that a gateway looks up when the reply to its COMMIT was lost.
--
-- The gateway used to ask `txid_status(txid)`. After a crash of PostgreSQL, a transaction
-- whose WAL had not reached the disk is gone, and its xid is handed out again to a new
-- transaction; `txid_status` then reports the newcomer's outcome. A batch lost in the
-- crash was acknowledged as committed when the xid's new owner committed (an acked
-- publish lost), and the later publishes of its connections were committed after it
-- (their order broken). This row cannot be reused: its id is a random UUID.
--
-- The check inserts the same id (`ON CONFLICT DO NOTHING`) and rolls back: the unique
-- index makes it wait for the batch's transaction if that is still running, then a
-- conflict means committed and an insert means it never will be.
CREATE TABLE postgame.publish_batches (
    id uuid PRIMARY KEY,
    -- why: rows are only needed for the seconds a check can take; the retention task
    -- deletes those older than 10 minutes.
    created_at timestamptz NOT NULL DEFAULT now()
);
