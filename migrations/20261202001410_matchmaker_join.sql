-- The data of the `join` the matchmaker applies for a ticket's player when it seats them
-- (Tic Tac Toe: `{"name": "Ann"}`, the display name). Not part of the pool: tickets pair
-- whatever their join data.
ALTER TABLE postgame.mm_tickets ADD COLUMN join_data jsonb NOT NULL DEFAULT '{}';

ALTER TABLE postgame.mm_tickets ADD CONSTRAINT mm_tickets_join_data_small
    CHECK (jsonb_typeof(join_data) = 'object' AND octet_length(join_data::text) <= 1024);
