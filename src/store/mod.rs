//! Store: accepted records to durable sinks. Only this layer touches the filesystem or a database.
//!
//! - `spool`: the durable log between ingest and the sinks (group commit, per-sink cursors).
//! - `parquet`: the embedded default sink (Hive-partitioned Parquet files).
//! - `postgres`: the Postgres sink (binary COPY, idempotent on record_id) and its schema.
//! - `pipeline`: one driver per sink, reading the spool and acknowledging what is durable.
//! - `metrics`: the store's counters and gauges.
//! - `object`: finished Parquet files uploaded to object storage (`--parquet-url`).
//! - `layout`: which files are in a data dir (the one listing reports and `verify` share).
//! - `disk`: the spool volume's free space at start-up, records left in the spool at shutdown.
//! - `digest`: tamper evidence: signed, chained SHA-256 digests of what each sink stored.

pub mod digest;
pub mod disk;
pub mod layout;
pub mod metrics;
pub mod object;
pub mod parquet;
pub mod pipeline;
pub mod postgres;
pub mod spool;
