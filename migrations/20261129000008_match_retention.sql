-- Ended matches are pruned after a retention (PROTOCOL.md: "Ended matches are pruned after
-- a configurable retention"). A game says when a match is over (`Game::is_over`: Tic Tac
-- Toe's won/draw/abandoned, Pong's finished/abandoned); the worker or ticker transaction
-- that makes it so stamps ended_at, and one that makes it live again (a rematch) clears
-- it. The tickers delete matches whose ended_at is older than the retention; their control
-- rows go with them (ON DELETE CASCADE); their message log is left to its own retention.
ALTER TABLE postgame.matches
    -- When the match last became over (database time); NULL while it is live.
    ADD COLUMN ended_at timestamptz,
    -- Stamped as greatest(now(), created_at), so a transaction that began before the
    -- match's creation committed cannot date its end before its start.
    ADD CONSTRAINT matches_ended_after_created CHECK (ended_at >= created_at);

-- The prune takes the oldest ended matches first; only ended matches are indexed, so the
-- index stays as small as what is waiting to be pruned.
CREATE INDEX matches_ended_at_idx ON postgame.matches (ended_at)
    WHERE ended_at IS NOT NULL;

-- Matches that ended before this migration: the one built-in game that could end then is
-- Tic Tac Toe; date their end at their last change.
UPDATE postgame.matches
SET ended_at = greatest(updated_at, created_at)
WHERE game = 'tictactoe' AND status IN ('won', 'draw', 'abandoned');
