-- Per-client publish limits, shared by every gateway (no sticky sessions needed): one token
-- bucket per client, taken from inside the publisher's batch transaction. UNLOGGED: after
-- a crash the buckets start full again, which only forgives a little.
CREATE UNLOGGED TABLE postgame.client_buckets (
    client_id text PRIMARY KEY,
    tokens double precision NOT NULL,
    at timestamptz NOT NULL
);

-- Counting a client's pending control messages in one match (the pending cap).
CREATE INDEX control_match_client_idx ON postgame.control (match_id, client_id);

-- Refills each client's bucket (`rate` tokens per second up to `burst`), takes up to
-- `wants` tokens from it and returns how many were granted. Rows are locked in client
-- order, so concurrent batches never deadlock.
CREATE FUNCTION postgame.client_take(
    clients text[], wants int[], burst double precision, rate double precision)
RETURNS TABLE (client_id text, granted int)
LANGUAGE plpgsql VOLATILE
AS $$
#variable_conflict use_column
DECLARE
    c text;
    w int;
    t double precision;
    g int;
BEGIN
    FOR c, w IN SELECT x.c, x.w FROM unnest(clients, wants) AS x(c, w) ORDER BY x.c LOOP
        INSERT INTO postgame.client_buckets AS b (client_id, tokens, at)
        VALUES (c, burst, clock_timestamp())
        ON CONFLICT ON CONSTRAINT client_buckets_pkey DO UPDATE SET
            tokens = least(burst, b.tokens
                + greatest(extract(epoch FROM clock_timestamp() - b.at), 0) * rate),
            at = clock_timestamp()
        RETURNING b.tokens INTO t;
        g := least(w, floor(t))::int;
        IF g > 0 THEN
            UPDATE postgame.client_buckets b SET tokens = b.tokens - g WHERE b.client_id = c;
        END IF;
        client_id := c;
        granted := g;
        RETURN NEXT;
    END LOOP;
END
$$;

-- Old buckets are full again anyway: delete those unused for an hour.
CREATE FUNCTION postgame.client_buckets_prune() RETURNS bigint
LANGUAGE sql VOLATILE
AS $$
    WITH d AS (DELETE FROM postgame.client_buckets WHERE at < now() - interval '1 hour'
               RETURNING 1)
    SELECT count(*) FROM d
$$;
