-- A game-defined label per match: a small JSON object the game derives from its state
-- (Tic Tac Toe: `{"open_seats": 1}`), written by workers and tickers in the same statement
-- as the state, so it never disagrees with the state it was derived from. Listing filters
-- on it with JSON containment (`GET /v1/matches?label={"open_seats":1}` is
-- `label @> '{"open_seats":1}'`).
ALTER TABLE postgame.matches ADD COLUMN label jsonb NOT NULL DEFAULT '{}';

-- Bounded: a label is a filter key, not a second state. The engine refuses (stores `{}`)
-- a label larger than this, so the constraint is a last line of defence.
ALTER TABLE postgame.matches ADD CONSTRAINT matches_label_small
    CHECK (jsonb_typeof(label) = 'object' AND octet_length(label::text) <= 1024);

-- `label @> …` filters: jsonb_path_ops answers containment only, and is a third of the
-- size of the default operator class.
CREATE INDEX matches_label_idx ON postgame.matches USING gin (label jsonb_path_ops);

-- Listing pages newest first by (created_at, id), the cursor being the last row's pair;
-- per game (the usual filter) this index returns a page without sorting.
CREATE INDEX matches_game_created_idx ON postgame.matches (game, created_at DESC, id DESC);
