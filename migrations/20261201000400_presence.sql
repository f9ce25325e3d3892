-- Presence that survives the crash of a gateway.
--
-- Every gateway process registers itself and refreshes `heartbeat_at` every second. Every
-- connection subscribed to a match channel has a row in `presence` for as long as its
-- `$connected` has not been followed by a `$disconnected`. When a gateway stops
-- heartbeating for the presence timeout (or its row is gone: it shut down), any postgame
-- process deletes its presence rows and enqueues a `$disconnected` control message for
-- each, in the same transaction (see src/presence.rs).
CREATE TABLE postgame.gateways (
    id text PRIMARY KEY,
    started_at timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE postgame.presence (
    gateway text NOT NULL,
    connection text NOT NULL,
    match_id uuid NOT NULL REFERENCES postgame.matches (id) ON DELETE CASCADE,
    client_id text NOT NULL,
    since timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (gateway, connection, match_id)
);

CREATE INDEX presence_match_id_idx ON postgame.presence (match_id);
