//! A borrowing reader for `google.protobuf.Struct` / `Value` / `ListValue` bytes.
//!
//! Dynamic metadata (jwt_authn claims, RBAC results) and Istio peer metadata arrive as Struct
//! messages. Decoding them into `prost_types::Struct` builds a HashMap of owned strings per level
//! and costs ~6 µs per Istio-shaped entry; walking the bytes and looking only at the keys we need
//! costs a fraction of that and allocates nothing.
//!
//! Map semantics follow protobuf: when a key repeats, the last value wins.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum StructError {
    #[error("truncated protobuf value")]
    Truncated,
    #[error("invalid protobuf varint")]
    BadVarint,
    #[error("unsupported protobuf wire type {0}")]
    BadWireType(u8),
}

/// One raw protobuf field.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    /// Read past; nothing in Struct uses it.
    Fixed32,
}

/// Iterates the top-level fields of an encoded message.
pub(crate) struct Fields<'a> {
    buf: &'a [u8],
}

impl<'a> Fields<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Fields { buf }
    }

    fn varint(&mut self) -> Result<u64, StructError> {
        let mut value = 0u64;
        for i in 0..10 {
            let (&byte, rest) = self.buf.split_first().ok_or(StructError::Truncated)?;
            self.buf = rest;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err(StructError::BadVarint)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], StructError> {
        if self.buf.len() < n {
            return Err(StructError::Truncated);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn next_field(&mut self) -> Result<(u64, Wire<'a>), StructError> {
        let key = self.varint()?;
        let wire = match (key & 7) as u8 {
            0 => Wire::Varint(self.varint()?),
            1 => {
                let b = self.take(8)?;
                Wire::Fixed64(u64::from_le_bytes(
                    b.try_into().map_err(|_| StructError::Truncated)?,
                ))
            }
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| StructError::Truncated)?;
                Wire::Bytes(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                Wire::Fixed32
            }
            other => return Err(StructError::BadWireType(other)),
        };
        Ok((key >> 3, wire))
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u64, Wire<'a>), StructError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() {
            return None;
        }
        let item = self.next_field();
        if item.is_err() {
            self.buf = &[];
        }
        Some(item)
    }
}

/// A `google.protobuf.Value`, borrowing from the buffer.
#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    Null,
    Number(f64),
    /// Raw UTF-8 bytes of a string value.
    String(&'a [u8]),
    Bool(bool),
    Struct(StructView<'a>),
    List(ListView<'a>),
}

impl<'a> Value<'a> {
    fn decode(buf: &'a [u8]) -> Result<Value<'a>, StructError> {
        // A Value with no kind set is treated as null.
        let mut out = Value::Null;
        for field in Fields::new(buf) {
            out = match field? {
                (1, _) => Value::Null,
                (2, Wire::Fixed64(bits)) => Value::Number(f64::from_bits(bits)),
                (3, Wire::Bytes(b)) => Value::String(b),
                (4, Wire::Varint(v)) => Value::Bool(v != 0),
                (5, Wire::Bytes(b)) => Value::Struct(StructView::new(b)),
                (6, Wire::Bytes(b)) => Value::List(ListView { buf: b }),
                _ => out,
            };
        }
        Ok(out)
    }

    /// The string value, if this is a valid UTF-8 string.
    pub fn as_str(&self) -> Option<&'a str> {
        match self {
            Value::String(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }
}

/// An encoded `google.protobuf.Struct`.
#[derive(Debug, Clone, Copy)]
pub struct StructView<'a> {
    buf: &'a [u8],
}

impl<'a> StructView<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        StructView { buf }
    }

    /// Every (key, value) pair in wire order. A repeated key appears more than once.
    pub fn entries(&self) -> impl Iterator<Item = Result<(&'a [u8], Value<'a>), StructError>> + 'a {
        Fields::new(self.buf).filter_map(|field| match field {
            Err(e) => Some(Err(e)),
            Ok((1, Wire::Bytes(entry))) => Some(decode_entry(entry)),
            Ok(_) => None,
        })
    }

    /// The value of `key` (the last one, if the key repeats).
    pub fn get(&self, key: &str) -> Result<Option<Value<'a>>, StructError> {
        let mut found = None;
        for entry in self.entries() {
            let (k, v) = entry?;
            if k == key.as_bytes() {
                found = Some(v);
            }
        }
        Ok(found)
    }

    /// The values of several keys in one pass over the Struct (last value wins per key).
    /// Prefer this to repeated [`get`](Self::get) calls, each of which walks the whole Struct.
    pub fn get_many<const N: usize>(
        &self,
        keys: [&str; N],
    ) -> Result<[Option<Value<'a>>; N], StructError> {
        let mut out = [None; N];
        for entry in self.entries() {
            let (k, v) = entry?;
            if let Some(i) = keys.iter().position(|key| key.as_bytes() == k) {
                out[i] = Some(v);
            }
        }
        Ok(out)
    }

    /// The string value of `key`, if present and a string.
    pub fn get_str(&self, key: &str) -> Result<Option<&'a str>, StructError> {
        Ok(self.get(key)?.and_then(|v| v.as_str()))
    }
}

fn decode_entry(entry: &[u8]) -> Result<(&[u8], Value<'_>), StructError> {
    let mut key: &[u8] = &[];
    let mut value = Value::Null;
    for field in Fields::new(entry) {
        match field? {
            (1, Wire::Bytes(k)) => key = k,
            (2, Wire::Bytes(v)) => value = Value::decode(v)?,
            _ => {}
        }
    }
    Ok((key, value))
}

/// An encoded `google.protobuf.ListValue`.
#[derive(Debug, Clone, Copy)]
pub struct ListView<'a> {
    buf: &'a [u8],
}

impl<'a> ListView<'a> {
    pub fn iter(&self) -> impl Iterator<Item = Result<Value<'a>, StructError>> + 'a {
        Fields::new(self.buf).filter_map(|field| match field {
            Err(e) => Some(Err(e)),
            Ok((1, Wire::Bytes(v))) => Some(Value::decode(v)),
            Ok(_) => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use prost_types::{value::Kind, ListValue, Struct, Value as PValue};

    fn s(v: &str) -> PValue {
        PValue {
            kind: Some(Kind::StringValue(v.into())),
        }
    }

    fn sample() -> Vec<u8> {
        let mut inner = Struct::default();
        inner.fields.insert("groups".into(), s("src1"));
        let mut st = Struct::default();
        st.fields.insert("oid".into(), s("9e8d"));
        st.fields.insert(
            "exp".into(),
            PValue {
                kind: Some(Kind::NumberValue(1772450400.0)),
            },
        );
        st.fields.insert(
            "acct".into(),
            PValue {
                kind: Some(Kind::BoolValue(true)),
            },
        );
        st.fields.insert(
            "nothing".into(),
            PValue {
                kind: Some(Kind::NullValue(0)),
            },
        );
        st.fields.insert(
            "_claim_names".into(),
            PValue {
                kind: Some(Kind::StructValue(inner)),
            },
        );
        st.fields.insert(
            "roles".into(),
            PValue {
                kind: Some(Kind::ListValue(ListValue {
                    values: vec![s("a"), s("b")],
                })),
            },
        );
        st.encode_to_vec()
    }

    #[test]
    fn reads_every_value_kind_like_prost_types() {
        let buf = sample();
        let v = StructView::new(&buf);
        assert_eq!(v.get_str("oid").unwrap(), Some("9e8d"));
        assert!(matches!(v.get("exp").unwrap(), Some(Value::Number(n)) if n == 1772450400.0));
        assert!(matches!(v.get("acct").unwrap(), Some(Value::Bool(true))));
        assert!(matches!(v.get("nothing").unwrap(), Some(Value::Null)));
        assert!(v.get("missing").unwrap().is_none());
        let Some(Value::List(roles)) = v.get("roles").unwrap() else {
            panic!("roles is a list")
        };
        let roles: Vec<_> = roles.iter().map(|r| r.unwrap().as_str().unwrap()).collect();
        assert_eq!(roles, ["a", "b"]);
        let Some(Value::Struct(names)) = v.get("_claim_names").unwrap() else {
            panic!("struct")
        };
        assert_eq!(names.get_str("groups").unwrap(), Some("src1"));
        assert_eq!(v.entries().count(), 6);
    }

    #[test]
    fn truncated_input_is_an_error_not_a_panic() {
        let buf = sample();
        for cut in 1..buf.len() {
            let v = StructView::new(&buf[..cut]);
            // Must never panic; a cut inside a value must surface as an error somewhere.
            let _ = v.get("roles");
            let _ = v.entries().collect::<Vec<_>>();
        }
        assert!(matches!(
            StructView::new(&[0x0a, 0x05, 0x01]).get("x"),
            Err(StructError::Truncated)
        ));
    }

    #[test]
    fn get_many_reads_several_keys_in_one_pass() {
        let buf = sample();
        let [oid, roles, missing] = StructView::new(&buf)
            .get_many(["oid", "roles", "missing"])
            .unwrap();
        assert_eq!(oid.and_then(|v| v.as_str()), Some("9e8d"));
        assert!(matches!(roles, Some(Value::List(_))));
        assert!(missing.is_none());
    }

    #[test]
    fn last_repeated_key_wins() {
        let mut a = Struct::default();
        a.fields.insert("k".into(), s("first"));
        let mut b = Struct::default();
        b.fields.insert("k".into(), s("second"));
        let mut buf = a.encode_to_vec();
        buf.extend(b.encode_to_vec());
        assert_eq!(StructView::new(&buf).get_str("k").unwrap(), Some("second"));
    }
}
