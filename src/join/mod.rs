//! Join: one decoded ALS entry in, one audit record out. Who made the request (identity) and what
//! policy decided (policy) are joined onto the traffic columns here.
//!
//! Invariant: the join does no I/O and reads no clock; `received_at` is handed in. Anything that
//! needs the network (JWKS keys) is fetched elsewhere and only read here.

pub mod identity;
pub mod peer;
pub mod policy;
pub mod redact;
pub mod spiffe;
pub mod traffic;

use bytes::Bytes;
use prost::Message;
use thiserror::Error;

use crate::ingest::pbstruct::StructError;
use crate::ingest::wire::{HttpAccessLogEntry, Identifier, TcpAccessLogEntry};
use crate::record::id::{record_id, EntryType};
use crate::record::{AuditRecord, TextExt};
use identity::{IdentityResolver, KeyNeed};

use redact::Redactor;

#[derive(Debug, Error)]
pub enum JoinError {
    #[error("malformed {kind} access log entry: {source}")]
    Decode {
        kind: &'static str,
        source: prost::DecodeError,
    },
    #[error("malformed metadata in access log entry: {0}")]
    Metadata(#[from] StructError),
    #[error(transparent)]
    Policy(#[from] policy::PolicyError),
}

/// What a stream's first message says about its proxy; every record of the stream carries it.
#[derive(Debug, Clone, Default)]
pub struct StreamContext {
    /// Set once a record of this stream had its start_time clamped (logged once per stream).
    start_time_clamped: std::sync::Arc<std::sync::atomic::AtomicBool>,
    node_id_raw: Bytes,
    log_name_raw: Bytes,
    // Record text shared by every record of the stream (clones are reference counts).
    node_id: Option<Bytes>,
    log_name: Option<Bytes>,
    mesh_cluster: Option<Bytes>,
}

impl StreamContext {
    pub fn from_identifier(id: &Identifier) -> Self {
        let node = id.node.clone().unwrap_or_default();
        StreamContext {
            // In allocations of their own: a slice of the record text chunk would pin that
            // chunk for the stream's life.
            node_id: traffic::text_owned(&node.id),
            log_name: traffic::text_owned(&id.log_name),
            mesh_cluster: traffic::text_owned(&node.cluster),
            // Copied, not sliced: a zero-copy `Bytes` would pin the whole first frame's receive
            // buffer (tens of KiB) for the stream's life, which at 4,000 mostly idle streams is
            // most of the collector's memory.
            node_id_raw: Bytes::copy_from_slice(&node.id),
            log_name_raw: Bytes::copy_from_slice(&id.log_name),
            start_time_clamped: Default::default(),
        }
    }

    pub fn node_id(&self) -> Option<&str> {
        self.node_id.text()
    }

    pub fn log_name(&self) -> Option<&str> {
        self.log_name.text()
    }
}

/// Joins entries into records. Shared by every stream (`Arc`), immutable once built.
#[derive(Debug, Default)]
pub struct Joiner {
    redactor: Redactor,
    identity: IdentityResolver,
    start_window: traffic::StartWindow,
    /// Counts clamped start times (`start_time_clamped_total`).
    metrics: Option<std::sync::Arc<crate::telemetry::Metrics>>,
}

impl Joiner {
    pub fn new(redactor: Redactor) -> Self {
        Joiner {
            redactor,
            identity: IdentityResolver::default(),
            start_window: traffic::StartWindow::default(),
            metrics: None,
        }
    }

    /// Uses `window` for start times, counting clamped ones on `metrics`.
    pub fn with_start_window(
        mut self,
        window: traffic::StartWindow,
        metrics: std::sync::Arc<crate::telemetry::Metrics>,
    ) -> Self {
        self.start_window = window;
        self.metrics = Some(metrics);
        self
    }

    /// Applies the start-time window (see [`traffic::StartWindow`]); counts and, once per
    /// stream, logs a clamped time.
    fn check_start(
        &self,
        ctx: &StreamContext,
        rec: &mut AuditRecord,
        reported: Option<&crate::ingest::wire::Timestamp>,
    ) {
        use std::sync::atomic::Ordering::Relaxed;
        if !self.start_window.apply(rec, reported) {
            return;
        }
        if let Some(m) = &self.metrics {
            m.start_time_clamped.fetch_add(1, Relaxed);
        }
        if !ctx.start_time_clamped.swap(true, Relaxed) {
            tracing::warn!(
                node_id = ctx.node_id().unwrap_or(""),
                log_name = ctx.log_name().unwrap_or(""),
                reported_secs = rec.start_time_reported_secs,
                "an entry's start_time is outside the accepted window (start_time_max_past_secs, start_time_max_future_secs): stored with start_time = received_at and start_time_reported_secs; logged once per stream, counted in start_time_clamped_total"
            );
        }
    }

    /// Uses `identity` (tenants, keys, directory) for the Identity columns.
    pub fn with_identity(mut self, identity: IdentityResolver) -> Self {
        self.identity = identity;
        self
    }

    pub fn identity(&self) -> &IdentityResolver {
        &self.identity
    }

    /// Decodes one encoded entry and builds its record. A raw token naming a key not yet
    /// loaded is judged `unknown_key` at once; [`Joiner::join_waiting_for_keys`] refreshes first.
    pub fn join(
        &self,
        ctx: &StreamContext,
        kind: EntryType,
        entry: &Bytes,
        received_at_micros: i64,
    ) -> Result<AuditRecord, JoinError> {
        self.join_once(ctx, kind, entry, received_at_micros)
            .map(|(rec, _)| rec)
    }

    /// Like [`Joiner::join`], but when a raw token names a key its issuer's key set lacks,
    /// waits (bounded, rate limited; see `identity`) for that set to be refreshed and joins the
    /// entry again. The join itself stays free of I/O: only this wrapper awaits.
    pub async fn join_waiting_for_keys(
        &self,
        ctx: &StreamContext,
        kind: EntryType,
        entry: &Bytes,
        received_at_micros: i64,
    ) -> Result<AuditRecord, JoinError> {
        let (rec, need) = self.join_once(ctx, kind, entry, received_at_micros)?;
        match need {
            Some(need) if self.identity.await_keys(need).await => {
                self.join(ctx, kind, entry, received_at_micros)
            }
            _ => Ok(rec),
        }
    }

    fn join_once(
        &self,
        ctx: &StreamContext,
        kind: EntryType,
        entry: &Bytes,
        received_at_micros: i64,
    ) -> Result<(AuditRecord, Option<KeyNeed>), JoinError> {
        let mut rec = AuditRecord {
            record_id: record_id(&ctx.node_id_raw, &ctx.log_name_raw, kind, entry),
            received_at: received_at_micros,
            log_name: ctx.log_name.clone(),
            node_id: ctx.node_id.clone(),
            mesh_cluster: ctx.mesh_cluster.clone(),
            ..Default::default()
        };
        let need = match kind {
            EntryType::Http => {
                let e = HttpAccessLogEntry::decode(entry.clone()).map_err(|source| {
                    JoinError::Decode {
                        kind: "HTTP",
                        source,
                    }
                })?;
                if let Some(common) = &e.common_properties {
                    traffic::fill_common(&mut rec, common)?;
                    self.check_start(ctx, &mut rec, common.start_time.as_ref());
                }
                traffic::fill_http(&mut rec, &e, &self.redactor);
                let need = self.identity.fill(
                    &mut rec,
                    e.common_properties.as_ref(),
                    e.request.as_ref(),
                )?;
                policy::decide(&policy::Evidence::http(&e))?.fill(&mut rec);
                need
            }
            EntryType::Tcp => {
                let e = TcpAccessLogEntry::decode(entry.clone()).map_err(|source| {
                    JoinError::Decode {
                        kind: "TCP",
                        source,
                    }
                })?;
                if let Some(common) = &e.common_properties {
                    traffic::fill_common(&mut rec, common)?;
                    self.check_start(ctx, &mut rec, common.start_time.as_ref());
                }
                traffic::fill_tcp(&mut rec, &e);
                let need = self
                    .identity
                    .fill(&mut rec, e.common_properties.as_ref(), None)?;
                policy::decide(&policy::Evidence::tcp(&e))?.fill(&mut rec);
                need
            }
        };
        Ok((rec, need))
    }
}
