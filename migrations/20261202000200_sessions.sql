-- Every live WebSocket connection, whatever it subscribes to: the matchmaker drops the
-- tickets of a client with none left anywhere. Written by the gateway at the connection's
-- start and deleted at its end; the rows of a gateway that stopped heartbeating (or is
-- gone) are deleted by the presence sweep (src/presence.rs).
CREATE TABLE postgame.sessions (
    gateway text NOT NULL,
    connection text NOT NULL,
    client_id text NOT NULL,
    since timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (gateway, connection)
);

-- "Has this client a connection anywhere?"
CREATE INDEX sessions_client_id_idx ON postgame.sessions (client_id);
