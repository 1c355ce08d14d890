-- SLA clocks (`crate::sla`): one per ticket and level (`take_over`, `complete`), started in the
-- transaction that opens the ticket. `clock` is the whole clock as JSON, `revision` what a
-- save must name to apply (a watchdog on another gateway, or a status report, may have moved
-- it meanwhile); `state` and `breached` repeat the clock's, for lists. `incident_id` and
-- `account_id` are those of the incident that opened the ticket (tenant scoping without a
-- join); `created_ok_ms` when its `created` was first delivered (or resolved by an admin).
CREATE TABLE sla_clocks (
    clock_id       BIGSERIAL PRIMARY KEY,
    ticket_seq     BIGINT NOT NULL,
    level          TEXT NOT NULL,
    policy         TEXT NOT NULL,
    clock          TEXT NOT NULL,
    revision       BIGINT NOT NULL DEFAULT 0,
    next_check_ms  BIGINT,
    state          TEXT NOT NULL,
    breached       BOOLEAN NOT NULL DEFAULT FALSE,
    incident_id    TEXT NOT NULL,
    account_id     BIGINT,
    created_ok_ms  BIGINT,
    -- Also the index of a ticket's clocks (nudges, retention, one ticket's or incident's).
    UNIQUE (ticket_seq, level)
);
-- The watchdog's question, what is due earliest first: only clocks that have a next check.
CREATE INDEX sla_clocks_next_check ON sla_clocks (next_check_ms, clock_id)
    WHERE next_check_ms IS NOT NULL;
-- GET /v1/sla, newest first: each filter's index ends in the order's column, so a page is one
-- backward range scan (unfiltered, the primary key's).
CREATE INDEX sla_clocks_state ON sla_clocks (state, clock_id);
CREATE INDEX sla_clocks_breached ON sla_clocks (breached, clock_id);
CREATE INDEX sla_clocks_account ON sla_clocks (account_id, clock_id);
