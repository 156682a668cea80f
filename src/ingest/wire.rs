//! The wire-compatible subset of Envoy's ALS messages, generated from
//! `proto/meshaudit/v1/als_subset.proto` (see that file for why a subset, and its conventions).

#![allow(clippy::all, missing_docs)]
include!(concat!(env!("OUT_DIR"), "/meshaudit.wire.v1.rs"));
