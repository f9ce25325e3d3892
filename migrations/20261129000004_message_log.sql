-- Every channel that has ever been written, with its latest seq. Writers bump `head` in
-- their transaction: the row lock serialises writers of one channel, so seqs are gap-free
-- and in commit order per channel, which is what makes resume-by-seq exact.
CREATE TABLE postgame.channels (
    name text PRIMARY KEY,
    head bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT channels_head_positive CHECK (head > 0)
);

-- The message log: every broadcast, replayed to resuming subscribers and served as history.
CREATE TABLE postgame.messages (
    channel text NOT NULL,
    seq bigint NOT NULL,
    name text NOT NULL,
    data jsonb NOT NULL,
    ts timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel, seq)
);

-- Retention deletes by age.
CREATE INDEX messages_ts_idx ON postgame.messages (ts);
