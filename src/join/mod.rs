//! Join: one decoded ALS entry in, one audit record out. Who made the request (identity) and what
//! policy decided (policy) are joined onto the traffic columns here.
//!
//! Invariant: the join does no I/O and reads no clock; `received_at` is handed in. Anything that
//! needs the network (JWKS keys) is fetched elsewhere and only read here.

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
use crate::record::{values, AuditRecord};

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
    node_id_raw: Bytes,
    log_name_raw: Bytes,
    node_id: Option<String>,
    log_name: Option<String>,
    mesh_cluster: Option<String>,
}

impl StreamContext {
    pub fn from_identifier(id: &Identifier) -> Self {
        let node = id.node.clone().unwrap_or_default();
        StreamContext {
            node_id: traffic::text(&node.id),
            log_name: traffic::text(&id.log_name),
            mesh_cluster: traffic::text(&node.cluster),
            node_id_raw: node.id,
            log_name_raw: id.log_name.clone(),
        }
    }

    pub fn node_id(&self) -> Option<&str> {
        self.node_id.as_deref()
    }

    pub fn log_name(&self) -> Option<&str> {
        self.log_name.as_deref()
    }
}

/// Joins entries into records. Shared by every stream (`Arc`), immutable once built.
#[derive(Debug, Default)]
pub struct Joiner {
    redactor: Redactor,
}

impl Joiner {
    pub fn new(redactor: Redactor) -> Self {
        Joiner { redactor }
    }

    /// Decodes one encoded entry and builds its record.
    pub fn join(
        &self,
        ctx: &StreamContext,
        kind: EntryType,
        entry: &Bytes,
        received_at_micros: i64,
    ) -> Result<AuditRecord, JoinError> {
        let mut rec = AuditRecord {
            record_id: record_id(&ctx.node_id_raw, &ctx.log_name_raw, kind, entry),
            received_at: received_at_micros,
            log_name: ctx.log_name.clone(),
            node_id: ctx.node_id.clone(),
            mesh_cluster: ctx.mesh_cluster.clone(),
            ..Default::default()
        };
        match kind {
            EntryType::Http => {
                let e = HttpAccessLogEntry::decode(entry.clone()).map_err(|source| {
                    JoinError::Decode {
                        kind: "HTTP",
                        source,
                    }
                })?;
                if let Some(common) = &e.common_properties {
                    traffic::fill_common(&mut rec, common)?;
                }
                traffic::fill_http(&mut rec, &e, &self.redactor);
                fill_unjoined_identity_and_policy(&mut rec, &policy::Evidence::http(&e))?;
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
                }
                traffic::fill_tcp(&mut rec, &e);
                fill_unjoined_identity_and_policy(&mut rec, &policy::Evidence::tcp(&e))?;
            }
        }
        Ok(rec)
    }
}

/// Identity before any evidence is read: an mTLS peer is a workload, else anonymous; no token.
/// Policy from the authorizers' evidence in the entry (see [`policy`]).
fn fill_unjoined_identity_and_policy(
    rec: &mut AuditRecord,
    evidence: &policy::Evidence<'_>,
) -> Result<(), JoinError> {
    let (kind, source) = if rec.source_principal.is_some() {
        (values::KIND_WORKLOAD, values::SOURCE_MTLS)
    } else {
        (values::KIND_ANONYMOUS, values::SOURCE_NONE)
    };
    rec.identity_kind = kind.to_owned();
    rec.identity_source = source.to_owned();
    rec.token_status = values::TOKEN_ABSENT.to_owned();
    policy::decide(evidence)?.fill(rec);
    Ok(())
}
