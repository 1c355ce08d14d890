-- Collection windows (`collect_for`): a delivery that opens one is due when the window ends,
-- and the incidents of its ticket that arrive meanwhile join it instead of being queued each.
-- `collecting`: the window still takes incidents (until the delivery is leased); `collected`:
-- how many it holds (0: no window; every join updates it, which also makes a lease racing
-- the join wait for it).
ALTER TABLE deliveries ADD COLUMN collecting BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE deliveries ADD COLUMN collected INTEGER NOT NULL DEFAULT 0;

-- Each incident a window holds, once, in the order it arrived (`position`), at its latest
-- version.
CREATE TABLE collected_incidents (
    delivery_seq  BIGINT NOT NULL,
    position      INTEGER NOT NULL,
    incident_id   TEXT NOT NULL,
    version_id    BIGINT NOT NULL,
    PRIMARY KEY (delivery_seq, position),
    UNIQUE (delivery_seq, incident_id)
);
CREATE INDEX collected_incidents_incident ON collected_incidents (incident_id);
