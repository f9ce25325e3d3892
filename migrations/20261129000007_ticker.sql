-- The ticker's bookkeeping of failing clocks. A tick that errors or panics (a bug in the
-- game, not a late or unusual tick) changes nothing; the ticker pushes the match's
-- next_tick_at back with a doubling backoff and counts the failure here. After a bounded
-- number of consecutive failures it stops the match's clock (next_tick_at NULL) so a
-- broken match cannot cost the tickers forever; the error stays here for an operator.
ALTER TABLE postgame.matches
    -- Consecutive failed ticks; reset to 0 by the next tick that goes through.
    ADD COLUMN tick_failures integer NOT NULL DEFAULT 0,
    -- The error of the latest failed tick (kept after a recovery, for the record).
    ADD COLUMN last_tick_error text,
    ADD CONSTRAINT matches_tick_failures_nonnegative CHECK (tick_failures >= 0);
