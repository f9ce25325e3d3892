-- The matchmaker (src/matchmaker.rs): tickets asking for a match, paired by workers into
-- new matches whose seats they take.
--
-- A ticket is the durable request itself: `POST /v1/matchmaker` commits it before it
-- answers, and workers claim waiting tickets from this table (a pool under its advisory
-- lock, its rows `FOR UPDATE SKIP LOCKED`) and, in the transaction that creates the match,
-- mark them `matched`. That row change is the exactly-once point: a ticket leaves
-- `waiting` once, whoever gets there first (pairing, cancel, expiry, disconnect).
CREATE TABLE postgame.mm_tickets (
    id uuid PRIMARY KEY,
    game text NOT NULL,
    -- The game's normalised config (what `POST /v1/matches` would store).
    config jsonb NOT NULL,
    -- An opaque JSON object; tickets pair only when game, config and query are equal.
    query jsonb NOT NULL,
    -- md5 of (game, config, query) as canonical jsonb text: the tickets that may pair.
    pool text NOT NULL,
    -- Players one match of this game takes (`Game::players_per_match`), at creation.
    players integer NOT NULL,
    client_id text NOT NULL,
    status text NOT NULL DEFAULT 'waiting',
    -- The match a `matched` ticket went to. No foreign key: ended matches are pruned,
    -- the ticket may outlive its match for its own retention.
    match_id uuid,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    -- When the ticket left `waiting`; retention counts from here.
    ended_at timestamptz,
    CONSTRAINT mm_tickets_status_known
        CHECK (status IN ('waiting', 'matched', 'cancelled', 'expired', 'dropped', 'failed')),
    CONSTRAINT mm_tickets_ended_iff_not_waiting CHECK ((status = 'waiting') = (ended_at IS NULL)),
    CONSTRAINT mm_tickets_matched_has_match CHECK ((status = 'matched') = (match_id IS NOT NULL)),
    CONSTRAINT mm_tickets_players_positive CHECK (players > 0),
    CONSTRAINT mm_tickets_query_small
        CHECK (jsonb_typeof(query) = 'object' AND octet_length(query::text) <= 1024)
);

-- At most one open ticket per client and game (a second POST returns it).
CREATE UNIQUE INDEX mm_tickets_one_open ON postgame.mm_tickets (client_id, game)
    WHERE status = 'waiting';

-- Pairing: the waiting tickets of a pool, oldest first (FIFO by ticket age).
CREATE INDEX mm_tickets_pool_idx ON postgame.mm_tickets (pool, created_at, id)
    WHERE status = 'waiting';

-- The sweep: waiting tickets past their expiry.
CREATE INDEX mm_tickets_expires_idx ON postgame.mm_tickets (expires_at)
    WHERE status = 'waiting';

-- Tickets per client and minute (the creation limit, counted across gateways).
CREATE INDEX mm_tickets_client_created_idx ON postgame.mm_tickets (client_id, created_at);

-- Retention of ended tickets.
CREATE INDEX mm_tickets_ended_idx ON postgame.mm_tickets (ended_at)
    WHERE ended_at IS NOT NULL;

-- Taken with "try" by the worker that pairs a pool: one pairing per pool at a time, so
-- two workers never split a pool's tickets between them (each left with one player).
CREATE FUNCTION postgame.try_lock_mm_pool(pool text) RETURNS boolean
LANGUAGE sql VOLATILE PARALLEL UNSAFE
AS $$ SELECT pg_try_advisory_xact_lock(7476904, hashtext(pool)) $$;
