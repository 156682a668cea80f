-- meshaudit schema 3: start_time_reported_secs (docs/audit-record.md, "Ingest checks").
--
-- An entry whose start_time lies outside the accepted window around received_at (default 7 days
-- back, 1 hour ahead) is stored with start_time = received_at, and the seconds it reported are
-- kept here. NULL on every other row, and on every row written before this migration. Adding a
-- nullable column without a default is a catalog change only: no table rewrite.

ALTER TABLE audit_records ADD COLUMN start_time_reported_secs bigint;
