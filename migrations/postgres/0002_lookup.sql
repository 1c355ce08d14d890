-- A `created` that may have opened its ticket already (its attempt was cut off mid-send, timed
-- out, or lost its connection after the request was written): the connector looks the ticket
-- up before sending it again.
ALTER TABLE deliveries ADD COLUMN outcome_unknown BOOLEAN NOT NULL DEFAULT FALSE;

-- What the lookup before an attempt found ("found ticket 42", "none found", "failed: …").
ALTER TABLE attempts ADD COLUMN lookup TEXT;

-- Why a delivery was queued beside its event: NULL (plainly), 'completion_note' (an incident of
-- a ticket left open was completed) or 'reopen' (it reopens a ticket that had closed).
ALTER TABLE deliveries ADD COLUMN purpose TEXT;

-- When a ticket closed, so an incident of its key within the connector's reopen_within
-- reopens it.
ALTER TABLE tickets ADD COLUMN closed_ms BIGINT;
