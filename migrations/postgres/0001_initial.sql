-- incident-gateway on PostgreSQL, schema version 1: the SQLite store's tables, shared by every
-- gateway process on the database. Applied once, under the migration lock, in one transaction.

CREATE TABLE incidents (
    incident_id        TEXT PRIMARY KEY,
    source             TEXT NOT NULL,
    update_time        DOUBLE PRECISION,
    body_hash          TEXT NOT NULL,
    version_id         BIGINT NOT NULL,
    versions           INTEGER NOT NULL,
    status             TEXT NOT NULL DEFAULT 'open',
    status_change_ms   BIGINT NOT NULL,
    reason_code        TEXT,
    notes              TEXT,
    received_ms        BIGINT NOT NULL,
    updated_ms         BIGINT NOT NULL
);

CREATE TABLE incident_versions (
    version_id   BIGSERIAL PRIMARY KEY,
    incident_id  TEXT NOT NULL,
    body         TEXT NOT NULL,
    received_ms  BIGINT NOT NULL
);
CREATE INDEX incident_versions_incident ON incident_versions (incident_id);

CREATE TABLE deliveries (
    seq              BIGSERIAL PRIMARY KEY,
    delivery_id      TEXT NOT NULL UNIQUE,
    incident_id      TEXT NOT NULL,
    version_id       BIGINT NOT NULL,
    connector        TEXT NOT NULL,
    event            TEXT NOT NULL,
    status           TEXT NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    budget_attempts  INTEGER NOT NULL DEFAULT 0,
    budget_since_ms  BIGINT NOT NULL,
    next_attempt_ms  BIGINT NOT NULL,
    lease_until_ms   BIGINT NOT NULL DEFAULT 0,
    lease_token      TEXT,
    -- The gateway process holding the lease (`instances`), to recover it when that process dies.
    lease_holder     TEXT,
    order_key        TEXT NOT NULL,
    ticket_seq       BIGINT,
    ready            BOOLEAN NOT NULL DEFAULT FALSE,
    due_ms           BIGINT NOT NULL DEFAULT 0,
    created_ms       BIGINT NOT NULL,
    updated_ms       BIGINT NOT NULL,
    last_error       TEXT
);
CREATE INDEX deliveries_incident ON deliveries (incident_id);
-- The leases a gateway process holds, to give back at once when it dies.
CREATE INDEX deliveries_held ON deliveries (lease_holder) WHERE lease_until_ms > 0;
-- The heads of their lines that may be leased, per connector, by when they fall due.
CREATE INDEX deliveries_ready ON deliveries (connector, due_ms, seq) WHERE ready;
-- Per ticket line, the deliveries that hold later ones back (the ordering rule).
CREATE INDEX deliveries_blocking ON deliveries (connector, order_key, seq)
    WHERE status = 'pending' OR (status = 'dead' AND event = 'created');

CREATE TABLE tickets (
    ticket_seq       BIGSERIAL PRIMARY KEY,
    connector        TEXT NOT NULL,
    correlation_key  TEXT NOT NULL,
    status           TEXT NOT NULL,
    opened_ms        BIGINT NOT NULL,
    window_until_ms  BIGINT,
    ticket_id        TEXT,
    ticket_url       TEXT,
    updated_ms       BIGINT NOT NULL
);
CREATE INDEX tickets_key ON tickets (connector, correlation_key, status);

-- One row per (connector, correlation key): whoever opens a ticket for the key holds this row
-- first, so incidents with one key posted to several gateways at once join one ticket.
CREATE TABLE ticket_heads (
    connector        TEXT NOT NULL,
    correlation_key  TEXT NOT NULL,
    ticket_seq       BIGINT,
    PRIMARY KEY (connector, correlation_key)
);

CREATE TABLE ticket_incidents (
    ticket_seq   BIGINT NOT NULL,
    incident_id  TEXT NOT NULL,
    PRIMARY KEY (ticket_seq, incident_id)
);
CREATE INDEX ticket_incidents_incident ON ticket_incidents (incident_id);

-- Signed requests' webhook-ids: a replay to any gateway on the database is refused.
CREATE TABLE seen_webhooks (
    source      TEXT NOT NULL,
    webhook_id  TEXT NOT NULL,
    seen_ms     BIGINT NOT NULL,
    PRIMARY KEY (source, webhook_id)
);
CREATE INDEX seen_webhooks_seen ON seen_webhooks (seen_ms);

CREATE TABLE attempts (
    delivery_id    TEXT NOT NULL,
    attempt        INTEGER NOT NULL,
    started_ms     BIGINT NOT NULL,
    latency_ms     BIGINT NOT NULL,
    status_code    INTEGER,
    error          TEXT,
    response_body  TEXT,
    outcome        TEXT NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);

-- The gateway processes on this database. Each holds a session advisory lock on its
-- lock_key while it runs: PostgreSQL releases it the moment the process's connection ends
-- (a crash, kill -9), so another gateway that can take the lock knows the process is gone and
-- recovers its leases at once instead of waiting for them to expire.
CREATE TABLE instances (
    instance_id  TEXT PRIMARY KEY,
    lock_key     BIGINT NOT NULL,
    started_ms   BIGINT NOT NULL
);
