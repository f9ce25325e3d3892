-- One row per match: the engine's view of it (typed columns) plus the game's own state
-- (JSONB), so an operator can read every match with SQL.
CREATE TABLE postgame.matches (
    id uuid PRIMARY KEY,
    game text NOT NULL,
    -- Game-defined lifecycle word (tictactoe: waiting, playing, won, draw, abandoned).
    status text NOT NULL,
    config jsonb NOT NULL,
    -- The game's private state, replaced as a whole by every control message and tick.
    state jsonb NOT NULL,
    -- The data of the latest `state` broadcast on match:<id>, served by GET /v1/matches/{id}
    -- even after the message log has been pruned.
    view jsonb,
    -- Bumped by every applied control message or tick: a cheap change counter for
    -- operators and for optimistic checks.
    version bigint NOT NULL DEFAULT 0,
    -- When the match next needs its tick handler (turn timers, game loops); NULL when the
    -- game does not need the clock right now.
    next_tick_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT matches_game_nonempty CHECK (game <> ''),
    CONSTRAINT matches_status_nonempty CHECK (status <> '')
);

-- Tickers claim due matches in next_tick_at order; only matches on the clock are indexed.
CREATE INDEX matches_next_tick_at_idx ON postgame.matches (next_tick_at)
    WHERE next_tick_at IS NOT NULL;

-- GET /v1/matches lists newest first, optionally filtered by game and status.
CREATE INDEX matches_created_at_idx ON postgame.matches (created_at DESC);
