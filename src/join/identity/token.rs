//! Finding a raw bearer token in the logged request headers, and splitting a compact JWS.
//!
//! A raw token is a credential: it is borrowed from the entry for as long as it is checked and
//! never copied, stored, logged or put in an error. [`RawToken`]'s `Debug` prints only its
//! length, so a `{:?}` anywhere cannot leak it.

use std::fmt;

use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;

use crate::ingest::wire::BytesEntry;

/// A bearer token borrowed from an entry. Deliberately not `Display`, `Clone` or `Serialize`.
#[derive(Clone, Copy)]
pub struct RawToken<'a>(&'a str);

impl fmt::Debug for RawToken<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RawToken(<redacted, {} bytes>)", self.0.len())
    }
}

impl<'a> RawToken<'a> {
    /// Only for the verifier: the token's bytes, to hash and to split.
    pub(crate) fn expose(&self) -> &'a str {
        self.0
    }
}

/// The first bearer token among `names` (in the configured order). A value with a scheme must
/// use `Bearer` (any case); a value without one is taken whole (custom token headers).
/// `Basic ...` and other schemes are not tokens and are skipped.
pub fn find_bearer<'a>(headers: &'a [BytesEntry], names: &[String]) -> Option<RawToken<'a>> {
    names.iter().find_map(|name| {
        let value = header(headers, name)?;
        let value = std::str::from_utf8(value).ok()?.trim();
        let token = match value.split_once(|c: char| c.is_ascii_whitespace()) {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
            Some(_) => return None,
            // `Bearer` with nothing after it carries no token.
            None if value.eq_ignore_ascii_case("bearer") => return None,
            None => value,
        };
        (!token.is_empty()).then_some(RawToken(token))
    })
}

/// The first non-empty value among `names`.
pub fn find_header<'a>(headers: &'a [BytesEntry], names: &[String]) -> Option<&'a [u8]> {
    names
        .iter()
        .find_map(|n| header(headers, n).filter(|v| !v.is_empty()))
}

fn header<'a>(headers: &'a [BytesEntry], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .rev()
        .find(|h| h.key.eq_ignore_ascii_case(name.as_bytes()))
        .map(|h| h.value.as_ref())
}

/// The three parts of a compact JWS, still encoded.
pub struct Parts<'a> {
    pub header: &'a str,
    pub payload: &'a str,
    pub signature: &'a str,
    /// `header.payload`: the bytes the signature covers.
    pub signed: &'a str,
}

impl fmt::Debug for Parts<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Parts(<redacted>)")
    }
}

/// Splits `header.payload.signature`; anything else (a JWE's five parts, an opaque token) is
/// `None`.
pub fn split(token: &str) -> Option<Parts<'_>> {
    let (signed, signature) = token.rsplit_once('.')?;
    let (header, payload) = signed.split_once('.')?;
    if payload.contains('.') || header.is_empty() || payload.is_empty() {
        return None;
    }
    Some(Parts {
        header,
        payload,
        signature,
        signed,
    })
}

/// base64url, with or without padding (Envoy's `pad_forward_payload_header` adds it).
pub fn b64url(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if s.ends_with('=') {
        URL_SAFE.decode(s).ok()
    } else {
        URL_SAFE_NO_PAD.decode(s).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn h(k: &str, v: &str) -> BytesEntry {
        BytesEntry {
            key: Bytes::copy_from_slice(k.as_bytes()),
            value: Bytes::copy_from_slice(v.as_bytes()),
        }
    }

    #[test]
    fn bearer_extraction() {
        let names = vec!["authorization".to_owned(), "x-token".to_owned()];
        let cases: &[(&[BytesEntry], Option<&str>)] = &[
            (
                &[h("authorization", "Bearer abc.def.ghi")],
                Some("abc.def.ghi"),
            ),
            (&[h("authorization", "bearer   abc")], Some("abc")),
            (&[h("Authorization", "BEARER abc")], Some("abc")),
            (&[h("authorization", "Basic dXNlcjpwdw==")], None),
            (&[h("authorization", "Bearer ")], None),
            (&[h("x-token", "abc.def.ghi")], Some("abc.def.ghi")),
            // configured order: authorization first
            (
                &[h("x-token", "second"), h("authorization", "Bearer first")],
                Some("first"),
            ),
            (&[h("cookie", "Bearer no")], None),
        ];
        for (headers, want) in cases {
            assert_eq!(find_bearer(headers, &names).map(|t| t.expose()), *want);
        }
    }

    #[test]
    fn debug_never_shows_the_token() {
        let t = RawToken("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln");
        let shown = format!("{t:?} {:?}", split(t.expose()));
        assert!(!shown.contains("eyJ") && !shown.contains("c2ln"), "{shown}");
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn splitting() {
        let p = split("a.b.c").expect("three parts");
        assert_eq!(
            (p.header, p.payload, p.signature, p.signed),
            ("a", "b", "c", "a.b")
        );
        assert!(
            split("a.b.").is_some(),
            "alg none tokens have an empty signature"
        );
        assert!(split("a.b").is_none());
        assert!(split("a.b.c.d.e").is_none());
        assert!(split(".b.c").is_none());
        assert_eq!(b64url("eyJhIjoxfQ").as_deref(), Some(&b"{\"a\":1}"[..]));
        assert_eq!(b64url("eyJhIjoxfQ==").as_deref(), Some(&b"{\"a\":1}"[..]));
        assert_eq!(b64url("!!"), None);
    }
}
