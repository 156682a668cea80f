//! Istio peer metadata from `filter_state_objects` (`downstream_peer`, `upstream_peer`): an
//! `Any` holding a `google.protobuf.Struct` with keys such as `namespace`, `workload`,
//! `service`, `identity` (docs/wire-and-identity.md §2.7).

use crate::ingest::pbstruct::{StructError, StructView, Value};
use crate::ingest::wire::AnyEntry;

const STRUCT_TYPE_URL: &[u8] = b"type.googleapis.com/google.protobuf.Struct";

/// The fields of a peer that the record uses.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Peer<'a> {
    pub namespace: Option<&'a str>,
    pub workload: Option<&'a str>,
    pub service: Option<&'a str>,
    pub identity: Option<&'a str>,
}

/// Reads the peer stored under `key`, if present and in the Struct form.
pub fn find<'a>(objects: &'a [AnyEntry], key: &str) -> Result<Option<Peer<'a>>, StructError> {
    let Some(any) = objects
        .iter()
        .rev()
        .find(|e| e.key == key.as_bytes())
        .and_then(|e| e.value.as_ref())
    else {
        return Ok(None);
    };
    if any.type_url != STRUCT_TYPE_URL {
        // Legacy (`wasm.*` FlatBuffers) or unknown encodings are not read.
        return Ok(None);
    }
    let [namespace, workload, service, identity] =
        StructView::new(&any.value).get_many(["namespace", "workload", "service", "identity"])?;
    let text = |v: Option<Value<'a>>| v.and_then(|v| v.as_str()).filter(|s| !s.is_empty());
    Ok(Some(Peer {
        namespace: text(namespace),
        workload: text(workload),
        service: text(service),
        identity: text(identity),
    }))
}
