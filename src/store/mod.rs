//! Store: accepted records to durable sinks. Only this layer touches the filesystem or a database.
//!
//! - `parquet`: the embedded default sink (Hive-partitioned Parquet files).
//! - `pipeline`: the writer thread between ingest and the sinks.

pub mod parquet;
pub mod pipeline;
