-- Connectors an admin paused through the API (a connector's `paused` in the config is read
-- from the config): their deliveries stay queued, none leased, until resumed.
CREATE TABLE connector_pauses (
    connector  TEXT PRIMARY KEY,
    since_ms   BIGINT NOT NULL,
    reason     TEXT
);
