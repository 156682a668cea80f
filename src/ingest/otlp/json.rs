//! Envoy's OpenTelemetry logger writes `%DYNAMIC_METADATA(...)%` and `%FILTER_STATE(...)%` as
//! compact JSON; the ALS logger sends the same values as `google.protobuf.Struct`. This turns the
//! JSON object into the Struct's encoding, so the join's Struct reader (`ingest::pbstruct`) reads
//! both paths alike. JSON numbers become doubles, as protobuf's JSON mapping has it; a key that
//! repeats is kept twice, and the reader takes the last, as protobuf's map semantics have it.

use std::fmt;

use bytes::Bytes;
use prost::encoding::encode_varint;
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// The Struct encoding of a JSON object, or why it is not one.
///
/// The JSON is read with serde_json straight into protobuf bytes (no `serde_json::Value` tree,
/// no `prost_types::Struct` maps): this runs for every metadata label of every record, and the
/// tree-building version was a quarter of the OTLP path's CPU (callgrind, issue 12 note).
pub fn struct_bytes(json: &[u8]) -> Result<Bytes, String> {
    let mut de = serde_json::Deserializer::from_slice(json);
    let out = de
        .deserialize_any(StructVisitor)
        .map_err(|e| format!("not a JSON object: {e}"))?;
    de.end().map_err(|e| format!("not a JSON object: {e}"))?;
    Ok(Bytes::from(out))
}

/// Appends a length-delimited field.
fn put_len(out: &mut Vec<u8>, tag: u8, bytes: &[u8]) {
    out.push(tag);
    encode_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// A JSON object → `google.protobuf.Struct` bytes (`fields` entries: key = 1, value = 2).
struct StructVisitor;

impl<'de> Visitor<'de> for StructVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<u8>, A::Error> {
        let mut out = Vec::new();
        let mut entry = Vec::new();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let value = map.next_value_seed(ValueSeed)?;
            entry.clear();
            put_len(&mut entry, 0x0a, key.as_bytes());
            put_len(&mut entry, 0x12, &value);
            put_len(&mut out, 0x0a, &entry);
        }
        Ok(out)
    }
}

/// Any JSON value → `google.protobuf.Value` bytes.
struct ValueSeed;

impl<'de> DeserializeSeed<'de> for ValueSeed {
    type Value = Vec<u8>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Vec<u8>, E> {
        Ok(vec![0x08, 0x00])
    }

    fn visit_bool<E>(self, v: bool) -> Result<Vec<u8>, E> {
        Ok(vec![0x20, u8::from(v)])
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Vec<u8>, E> {
        let mut out = Vec::with_capacity(9);
        out.push(0x11);
        out.extend_from_slice(&v.to_le_bytes());
        Ok(out)
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Vec<u8>, E> {
        self.visit_f64(v as f64)
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Vec<u8>, E> {
        self.visit_f64(v as f64)
    }

    fn visit_str<E>(self, v: &str) -> Result<Vec<u8>, E> {
        let mut out = Vec::with_capacity(v.len() + 3);
        put_len(&mut out, 0x1a, v.as_bytes());
        Ok(out)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Vec<u8>, A::Error> {
        let inner = StructVisitor.visit_map(map)?;
        let mut out = Vec::with_capacity(inner.len() + 4);
        put_len(&mut out, 0x2a, &inner);
        Ok(out)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        let mut list = Vec::new();
        while let Some(v) = seq.next_element_seed(ValueSeed)? {
            put_len(&mut list, 0x0a, &v);
        }
        let mut out = Vec::with_capacity(list.len() + 4);
        put_len(&mut out, 0x32, &list);
        Ok(out)
    }
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
        assert!(
            matches!(payload.get("n").unwrap(), Some(crate::ingest::pbstruct::Value::Number(n)) if n == 3.0)
        );
        // The same bytes prost_types writes for the same Struct (keys in its sorted order),
        // escapes decoded.
        let one = struct_bytes(br#"{"k":"a\u00e9\"b","l":[1.5,"x"],"t":true,"z":null}"#).unwrap();
        let want = {
            use prost::Message;
            use prost_types::{value::Kind, ListValue, Struct, Value};
            let v = |k| Value { kind: Some(k) };
            Struct {
                fields: [
                    (
                        "k".to_owned(),
                        v(Kind::StringValue("a\u{e9}\"b".to_owned())),
                    ),
                    (
                        "l".to_owned(),
                        v(Kind::ListValue(ListValue {
                            values: vec![
                                v(Kind::NumberValue(1.5)),
                                v(Kind::StringValue("x".to_owned())),
                            ],
                        })),
                    ),
                    ("t".to_owned(), v(Kind::BoolValue(true))),
                    ("z".to_owned(), v(Kind::NullValue(0))),
                ]
                .into_iter()
                .collect(),
            }
            .encode_to_vec()
        };
        assert_eq!(&one[..], &want[..]);
        assert!(struct_bytes(b"[1]").is_err());
        assert!(struct_bytes(b"{").is_err());
    }
}
