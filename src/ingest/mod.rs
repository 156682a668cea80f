//! Ingest: Envoy's gRPC Access Log Service in, one batch of records per message out.
//!
//! - `wire`: the zero-copy subset of Envoy's messages (generated from proto/).
//! - `codec`: tonic codec decoding into those types.
//! - `pbstruct`: borrowing reader for `google.protobuf.Struct` metadata.
//! - `service`: the gRPC service and per-stream read loop.

pub mod codec;
pub mod pbstruct;
pub mod service;
pub mod wire;
