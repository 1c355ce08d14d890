-- Each incident's account (its tenant), fixed when it is first stored: scoped admin tokens
-- list and read by it. Incidents stored before this version take it from their current
-- version's body (a JSON integer `accountId`, else none).
ALTER TABLE incidents ADD COLUMN account_id BIGINT;
UPDATE incidents AS i SET account_id = (v.body::jsonb ->> 'accountId')::bigint
  FROM incident_versions AS v
 WHERE v.version_id = i.version_id
   AND jsonb_typeof(v.body::jsonb -> 'accountId') = 'number';
-- A scoped token's list of incidents: its accounts', newest received first.
CREATE INDEX incidents_account_received ON incidents (account_id, received_ms, incident_id);
