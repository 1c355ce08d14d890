-- Retention walks incidents oldest change first, from where its last batch stopped: this
-- index finds the old ones without reading the table.
CREATE INDEX incidents_updated ON incidents (updated_ms, incident_id);
