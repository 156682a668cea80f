//! Envoy's OpenTelemetry logger writes `%DYNAMIC_METADATA(...)%` and `%FILTER_STATE(...)%` as
//! compact JSON; the ALS logger sends the same values as `google.protobuf.Struct`. This turns the
//! JSON object into the Struct's encoding, so the join's Struct reader (`ingest::pbstruct`) reads
//! both paths alike. JSON numbers become doubles, as protobuf's JSON mapping has it.

use bytes::Bytes;
use prost::Message;
use prost_types::{value::Kind, ListValue, Struct, Value};

/// The Struct encoding of a JSON object, or why it is not one.
pub fn struct_bytes(json: &[u8]) -> Result<Bytes, String> {
    let v: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| format!("not JSON: {e}"))?;
    match v {
        serde_json::Value::Object(map) => Ok(Bytes::from(to_struct(map).encode_to_vec())),
        _ => Err("not a JSON object".to_owned()),
    }
}

fn to_struct(map: serde_json::Map<String, serde_json::Value>) -> Struct {
    Struct {
        fields: map.into_iter().map(|(k, v)| (k, to_value(v))).collect(),
    }
}

fn to_value(v: serde_json::Value) -> Value {
    use serde_json::Value as J;
    let kind = match v {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        J::String(s) => Kind::StringValue(s),
        J::Array(a) => Kind::ListValue(ListValue {
            values: a.into_iter().map(to_value).collect(),
        }),
        J::Object(m) => Kind::StructValue(to_struct(m)),
    };
    Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::pbstruct::StructView;

    #[test]
    fn a_json_object_reads_back_through_the_struct_reader() {
        let b = struct_bytes(br#"{"payload":{"oid":"u-1","n":3,"roles":["a","b"]}}"#).unwrap();
        let v = StructView::new(&b).get("payload").unwrap().unwrap();
        let payload = match v {
            crate::ingest::pbstruct::Value::Struct(s) => s,
            other => panic!("{other:?}"),
        };
        assert_eq!(payload.get_str("oid").unwrap(), Some("u-1"));
        assert!(struct_bytes(b"[1]").is_err());
        assert!(struct_bytes(b"{").is_err());
    }
}
