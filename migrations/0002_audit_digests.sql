-- meshaudit schema 2: tamper evidence (docs/tamper-evidence.md).
--
-- One row per digest: each batch the collector writes to audit_records inserts, in the same
-- transaction, the digest of the rows it inserted (ON CONFLICT DO NOTHING skips rows already
-- present; those belong to the digest of the batch that inserted them). Each collector instance
-- keeps its own chain: `previous_digest_sha256` is the `digest_sha256` of the row with the same
-- instance_id and seq - 1. Retention writes a 'retention' digest in the transaction that drops
-- partitions. `meshaudit verify --database-url URL --public-key FILE` checks the signatures,
-- the chains and every row of audit_records against this table.
--
-- The collector only INSERTs here (and SELECTs its own chain head): grant it no UPDATE or
-- DELETE, on this table or on audit_records.

CREATE TABLE audit_digests (
    instance_id            text        NOT NULL,
    seq                    bigint      NOT NULL CHECK (seq >= 1),
    kind                   text        NOT NULL CHECK (kind IN ('batch', 'retention')),
    created_at             timestamptz NOT NULL,
    record_count           bigint      NOT NULL,
    -- SHA-256 over the record hashes below, in record_id order (see the spec).
    records_sha256         bytea       NOT NULL,
    -- The rows the batch inserted, ascending by record_id (bytewise): ids, start_time in µs
    -- since the Unix epoch (NULL where the record has none), and SHA-256 of each record's
    -- canonical encoding (record_count × 32 bytes).
    record_ids             text[]      NOT NULL,
    record_start_times     bigint[]    NOT NULL,
    record_hashes          bytea       NOT NULL,
    -- 'retention': rows with start_time before this day were dropped.
    retention_cutoff       date,
    previous_digest_sha256 bytea,
    -- SHA-256 of the signed statement (the next digest's previous_digest_sha256).
    digest_sha256          bytea       NOT NULL,
    -- Ed25519 public key (32 bytes) and signature (64 bytes) over the statement.
    public_key             bytea       NOT NULL,
    signature              bytea       NOT NULL,
    PRIMARY KEY (instance_id, seq)
);
