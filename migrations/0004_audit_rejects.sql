-- meshaudit schema 4: audit_rejects, the records Postgres refused for a data reason
-- (docs/storage.md, "Poison rows").
--
-- A batch that fails with SQLSTATE class 22 (data exception), 23 (integrity constraint) or
-- 54000 (a value too large for an index) is split until the rows at fault are found; each of
-- them is kept here, with the database's error, and every other row of the batch goes on into
-- audit_records. The record is kept whole as its protobuf (proto/meshaudit/v1/audit_record.proto)
-- so that no column type can refuse it a second time; start_time is plain microseconds for the
-- same reason. One row per record_id: a batch replayed after a crash rejects nothing twice.

CREATE TABLE audit_rejects (
    record_id     text        NOT NULL PRIMARY KEY,
    start_time_us bigint,
    sqlstate      text        NOT NULL,
    message       text        NOT NULL,
    record        bytea       NOT NULL,
    rejected_at   timestamptz NOT NULL DEFAULT now()
);
