-- Each incident's account (its tenant), fixed when it is first stored: scoped admin tokens
-- list and read by it. Incidents stored before this version take it from their current
-- version's body (a JSON integer `accountId`, else none).
ALTER TABLE incidents ADD COLUMN account_id BIGINT;
-- (json, not jsonb: a body with \u0000 still reads; only an integer as ingest reads one.)
UPDATE incidents AS i SET account_id = (v.body::json ->> 'accountId')::bigint
  FROM incident_versions AS v
 WHERE v.version_id = i.version_id
   AND json_typeof(v.body::json -> 'accountId') = 'number'
   AND (v.body::json ->> 'accountId') ~ '^-?[0-9]{1,18}$';
-- A scoped token's list of incidents: its accounts', newest received first.
CREATE INDEX incidents_account_received ON incidents (account_id, received_ms, incident_id);
