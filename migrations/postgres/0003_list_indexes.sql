-- The admin API's lists (GET /v1/deliveries, GET /v1/incidents): newest first, each filter
-- with an index that ends in the order's columns, so a page is one backward range scan that
-- stops after `limit + 1` rows however large the table (store/listing.rs writes the queries).
-- The incident filter keeps `deliveries_incident`: one incident's deliveries are few, sorted
-- once found.
CREATE INDEX deliveries_created ON deliveries (created_ms, seq);
CREATE INDEX deliveries_status_created ON deliveries (status, created_ms, seq);
CREATE INDEX deliveries_connector_created ON deliveries (connector, created_ms, seq);

CREATE INDEX incidents_received ON incidents (received_ms, incident_id);
CREATE INDEX incidents_source_received ON incidents (source, received_ms, incident_id);
CREATE INDEX incidents_status_received ON incidents (status, received_ms, incident_id);
