-- Who created a match through the API, so that match creation can be limited per client
-- across every gateway (`--matches-per-client-per-minute`): the count is of this client's
-- matches created within the last minute, which this index answers.
ALTER TABLE postgame.matches ADD COLUMN created_by text;
CREATE INDEX matches_created_by ON postgame.matches (created_by, created_at)
    WHERE created_by IS NOT NULL;
