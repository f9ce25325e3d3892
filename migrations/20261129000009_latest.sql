-- The latest-value path: for high-rate state (a 20 Hz game's per-tick state) a game may
-- send a message as "latest" instead of logging it. Only the newest value per
-- (channel, name) is kept, in an UNLOGGED table: no WAL, no history, no resume, no
-- retention growth. Subscribers get the current value when they subscribe and every newer
-- one live (conflated: a slow reader may skip versions), as `latest` frames.
--
-- Trade-off, by design: after a crash of Postgres an UNLOGGED table is emptied; the next
-- tick writes it again. Durable, resumable messages (every turn-based move, a score, the
-- end of a match) keep going through postgame.messages.
CREATE UNLOGGED TABLE postgame.latest (
    channel text NOT NULL,
    name text NOT NULL,
    -- From one sequence for all rows, so it increases per (channel, name) across writes,
    -- and across a crash that empties the table (the sequence is logged).
    version bigint NOT NULL,
    data jsonb NOT NULL,
    -- The writing transaction's now().
    ts timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel, name)
) WITH (fillfactor = 50); -- room on the page for HOT updates (the key never changes)

CREATE SEQUENCE postgame.latest_version AS bigint CACHE 1;
