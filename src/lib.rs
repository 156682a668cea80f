//! meshaudit: an identity-tagged audit trail for an Istio service mesh.
//!
//! The modules follow the data flow (see ARCHITECTURE.md):
//! [`ingest`] (Envoy ALS over gRPC) → [`join`] (identity and policy onto traffic) →
//! [`store`] (Parquet, Postgres) → use (reports, dashboards).
#![forbid(unsafe_code)]

pub mod admin;
pub mod ceiling;
pub mod config;
pub mod directory_sync;
#[doc(hidden)]
pub mod fuzzing;
pub mod ingest;
pub mod join;
pub mod loadgen;
pub mod record;
pub mod report;
pub mod serve;
pub mod store;
pub mod telemetry;
pub mod verify;
