//! Ingest: Envoy's gRPC Access Log Service in, one batch of records per message out.
//!
//! - `wire`: the zero-copy subset of Envoy's messages (generated from proto/).
//! - `codec`: tonic codec decoding into those types.
//! - `pbstruct`: borrowing reader for `google.protobuf.Struct` metadata.
//! - `service`: the gRPC service and per-stream read loop.
//! - `tls`: TLS on the listener (certificate files, accept loop with counted handshake failures).
//! - `peer_auth`: which TLS peers may write (client certificate, SPIFFE allow-list).
//! - `limits`: streams in total, idle timeout, maximum stream age.
//! - `conn`: connections in total, handshake/preface deadline, the open-files limit.
//! - `otlp`: the OTLP logs receiver (LogsService/Export), same limits and join as ALS.
//! - `stack_refusals`: streams the HTTP/2 layer resets before the service sees them, counted
//!   and logged once with the fix.

pub mod codec;
pub mod conn;
pub mod limits;
pub mod otlp;
pub mod pbstruct;
pub mod peer_auth;
pub mod service;
pub mod stack_refusals;
pub mod tls;
pub mod wire;
