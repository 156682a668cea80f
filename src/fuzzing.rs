//! Entry points shared by the fuzz targets (`fuzz/`, cargo-fuzz) and the corpus/regression
//! tests (`tests/fuzz_regressions.rs`), so both run exactly the same code.
//!
//! Each takes arbitrary bytes, runs them through a parser that reads untrusted input, and
//! panics only when an invariant breaks; an `Err` from the code under test is a fine outcome.
//! Inputs that once broke an invariant live in `fuzz/regressions/<target>/` and run in the
//! normal `cargo test`. See fuzz/README.md.

use std::sync::OnceLock;

use bytes::Bytes;
use prost::Message;

use crate::ingest::pbstruct::{StructView, Value};
use crate::ingest::peer_auth::PeerAuth;
use crate::ingest::wire::stream_access_logs_message::LogEntries;
use crate::ingest::wire::{BytesEntry, HttpAccessLogEntry, StreamAccessLogsMessage};
use crate::join::identity::{token, IdentityConfig, IdentityResolver};
use crate::join::redact::Redactor;
use crate::join::{Joiner, StreamContext};
use crate::record::id::EntryType;
use crate::record::values;
use crate::record::AsText;
use crate::telemetry::Metrics;

/// A fuzz target: its name and the function it calls.
pub type Target = (&'static str, fn(&[u8]));

/// The fuzz targets, by name (the file names under `fuzz/fuzz_targets/` and the corpus and
/// regression directories).
pub const TARGETS: &[Target] = &[
    ("als_message", als_message),
    ("claims_struct", claims_struct),
    ("redact_path", redact_path),
    ("peer_cert", peer_cert),
    ("token", token),
];

/// The tenant and audience of the load generator's tokens (`src/loadgen/corpus.rs`), so seeds
/// reach issuer and audience checks.
const TENANT: &str = "11111111-2222-3333-4444-555555555555";
const AUDIENCE: &str = "7f1b2c3d-0000-4000-8000-00000000a001";
/// 2026-03-02T10:15:04Z, when the seeds' requests started.
const START_US: i64 = 1_772_446_504_000_000;

/// An identity resolver as a configured collector has one: a trusted Entra tenant, raw tokens
/// in `authorization`, forwarded claims in `x-jwt-payload`. No keys are ever loaded (no I/O),
/// so raw tokens end at `unknown_key` or earlier; claims parsing and every check before the
/// signature run on fuzzed bytes.
fn identity() -> IdentityResolver {
    let cfg = IdentityConfig {
        entra_tenants: vec![TENANT.to_owned()],
        audiences: vec![AUDIENCE.to_owned()],
        payload_headers: vec!["x-jwt-payload".to_owned()],
        token_cache_bytes: 1 << 20,
        ..IdentityConfig::default()
    };
    IdentityResolver::new(&cfg, Metrics::new()).expect("identity settings without a directory")
}

fn joiner() -> &'static Joiner {
    static J: OnceLock<Joiner> = OnceLock::new();
    J.get_or_init(|| Joiner::default().with_identity(identity()))
}

/// A bearer token worth looking for in outputs: long and JWS-shaped, so finding it cannot be a
/// coincidence with fixed text.
fn token_like(v: &[u8]) -> Option<&str> {
    let v = std::str::from_utf8(v).ok()?.trim();
    let t = v
        .strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))
        .unwrap_or(v)
        .trim();
    (t.len() >= 24 && t.matches('.').count() == 2 && !t.contains(char::is_whitespace)).then_some(t)
}

fn occurrences(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

/// A gRPC message body as the ALS read loop sees it: decoded into the subset types, then every
/// entry joined into a record, as `ingest::service` does. Every record the join accepts must
/// have a well-formed id, a path that redaction leaves unchanged (already redacted), and must
/// encode into an Arrow batch (what the Parquet sink does next).
pub fn als_message(data: &[u8]) {
    als_message_tokens_checked(data);
}

/// [`als_message`], returning how many raw tokens it looked for in records (for a test that
/// the secrets check is live on the seeds).
fn als_message_tokens_checked(data: &[u8]) -> usize {
    let mut checked = 0;
    let Ok(msg) = StreamAccessLogsMessage::decode(Bytes::copy_from_slice(data)) else {
        return checked;
    };
    let ctx = msg
        .identifier
        .as_ref()
        .map(StreamContext::from_identifier)
        .unwrap_or_default();
    let (kind, entries) = match &msg.log_entries {
        Some(LogEntries::HttpLogs(h)) => (EntryType::Http, &h.log_entry),
        Some(LogEntries::TcpLogs(t)) => (EntryType::Tcp, &t.log_entry),
        None => return checked,
    };
    let mut records = Vec::with_capacity(entries.len());
    for entry in entries {
        let Ok(rec) = joiner().join(&ctx, kind, entry, START_US) else {
            continue;
        };
        // Secrets never land: a token that occurs only in the authorization header of the
        // entry must not occur anywhere in its record.
        if kind == EntryType::Http {
            let headers = HttpAccessLogEntry::decode(entry.clone())
                .ok()
                .and_then(|e| e.request)
                .map(|r| r.request_headers)
                .unwrap_or_default();
            for h in headers
                .iter()
                .filter(|h| h.key.eq_ignore_ascii_case(b"authorization"))
            {
                if let Some(t) = token_like(&h.value) {
                    if occurrences(entry, t.as_bytes()) == 1 {
                        checked += 1;
                        assert!(
                            !format!("{rec:?}").contains(t),
                            "a raw token landed in a record"
                        );
                    }
                }
            }
        }
        assert_eq!(rec.record_id.len(), 32, "record_id {:?}", rec.record_id);
        assert!(
            rec.record_id
                .iter()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b)),
            "record_id {:?}",
            rec.record_id
        );
        if let Some(path) = &rec.path {
            let path = path.as_text();
            let again = Redactor::default().redact_path(path).into_owned();
            assert_eq!(again, path, "a stored path still held a secret");
        }
        records.push(rec);
    }
    let batch = crate::record::arrow::to_record_batch(&records)
        .unwrap_or_else(|e| panic!("joined records must encode to Arrow: {e}"));
    assert_eq!(batch.num_rows(), records.len());
    checked
}

/// A `google.protobuf.Struct` (jwt_authn claims, RBAC metadata, peer metadata) walked with the
/// borrowing reader, nested Structs and Lists included. `get`/`get_many` must agree with
/// `entries` (last value wins) and fail exactly when the walk fails.
pub fn claims_struct(data: &[u8]) {
    walk_struct(StructView::new(data), 0);
}

const MAX_DEPTH: usize = 16;

fn walk_struct(view: StructView<'_>, depth: usize) {
    let mut last: Vec<(&[u8], Value<'_>)> = Vec::new();
    let mut failed = false;
    for entry in view.entries() {
        match entry {
            Ok((k, v)) => {
                walk_value(v, depth);
                match last.iter_mut().find(|(key, _)| *key == k) {
                    Some(slot) => slot.1 = v,
                    None => last.push((k, v)),
                }
            }
            Err(_) => failed = true,
        }
    }
    assert_eq!(
        view.get("sub").is_err(),
        failed,
        "get fails iff the walk fails"
    );
    if failed {
        return;
    }
    for (k, v) in last.iter().take(8) {
        let Ok(key) = std::str::from_utf8(k) else {
            continue;
        };
        let got = view.get(key).expect("the walk succeeded");
        assert_eq!(
            format!("{got:?}"),
            format!("{:?}", Some(*v)),
            "get({key:?}) is the last value"
        );
        // get_many fills one slot per key: ask for two different keys.
        let other = if key == "iss" { "sub" } else { "iss" };
        let [a, b] = view.get_many([key, other]).expect("the walk succeeded");
        assert_eq!(format!("{a:?}"), format!("{got:?}"));
        assert_eq!(
            format!("{b:?}"),
            format!("{:?}", view.get(other).expect("the walk succeeded"))
        );
        assert_eq!(
            view.get_str(key).expect("the walk succeeded"),
            v.as_str(),
            "get_str({key:?})"
        );
    }
}

fn walk_value(v: Value<'_>, depth: usize) {
    if depth >= MAX_DEPTH {
        return;
    }
    match v {
        Value::Struct(s) => walk_struct(s, depth + 1),
        Value::List(l) => {
            for item in l.iter().flatten() {
                walk_value(item, depth + 1);
            }
        }
        Value::String(_) => {
            let _ = v.as_str();
        }
        Value::Null | Value::Number(_) | Value::Bool(_) => {}
    }
}

/// A request path (any bytes, as Envoy logs them, read lossily) through query redaction:
/// redacting twice changes nothing, the part before `?` and the number of parameters are kept,
/// and a parameter named like a secret keeps no value but `REDACTED`.
pub fn redact_path(data: &[u8]) {
    let path = String::from_utf8_lossy(data);
    let r = Redactor::default();
    let once = r.redact_path(&path).into_owned();
    let twice = r.redact_path(&once).into_owned();
    assert_eq!(once, twice, "redaction is idempotent");
    match (path.split_once('?'), once.split_once('?')) {
        (None, None) => assert_eq!(once, path),
        (Some((base, q)), Some((base2, q2))) => {
            assert_eq!(base, base2);
            assert_eq!(q.split('&').count(), q2.split('&').count());
            for param in q2.split('&') {
                if let Some(("code" | "access_token" | "client_secret", value)) =
                    param.split_once('=')
                {
                    assert_eq!(value, crate::join::redact::REDACTED, "in {once:?}");
                }
            }
        }
        _ => panic!("redaction added or removed the query: {path:?} → {once:?}"),
    }
}

/// A client certificate (DER) checked against an allow-list, as the ALS listener does at
/// stream start. Only an ID the allow-list names may be admitted.
pub fn peer_cert(data: &[u8]) {
    static POLICY: OnceLock<PeerAuth> = OnceLock::new();
    let policy = POLICY.get_or_init(|| {
        PeerAuth::require_cert(
            &["spiffe://cluster.local/ns/*/sa/meshaudit-writer".to_owned()],
            &["example.org".to_owned()],
        )
        .expect("valid allow-list")
    });
    let cert = tokio_rustls::rustls::pki_types::CertificateDer::from(data);
    if let Ok(Some(id)) = policy.check(Some(&[cert])) {
        let ok = id.starts_with("spiffe://example.org/")
            || (id.starts_with("spiffe://cluster.local/ns/")
                && id.ends_with("/sa/meshaudit-writer")
                && id.matches('/').count() == 6);
        assert!(ok, "admitted {id}");
    }
}

/// A logged `authorization` header value through the identity verifier, as a raw bearer token,
/// and the same bytes as a forwarded claims header (base64url JSON): bearer extraction, compact
/// JWS split, base64url, JOSE header and claims JSON, issuer and audience checks, the cache.
/// Every outcome is one of the contract's token statuses, and the verdict never carries the
/// token itself.
pub fn token(data: &[u8]) {
    let id = identity_for_tokens();
    let headers = [BytesEntry {
        key: Bytes::from_static(b"authorization"),
        value: Bytes::copy_from_slice(data),
    }];
    let names = ["authorization".to_owned()];
    let statuses = [
        values::TOKEN_VERIFIED,
        values::TOKEN_PROXY_VERIFIED,
        values::TOKEN_EXPIRED,
        values::TOKEN_NOT_YET_VALID,
        values::TOKEN_BAD_SIGNATURE,
        values::TOKEN_UNKNOWN_KEY,
        values::TOKEN_WRONG_AUDIENCE,
        values::TOKEN_UNTRUSTED_ISSUER,
        values::TOKEN_MALFORMED,
    ];
    if let Some(raw) = token::find_bearer(&headers, &names) {
        let judged = id.verifier().check(raw, START_US);
        assert!(statuses.contains(&judged.status), "{}", judged.status);
        // Without keys nothing can verify.
        assert_ne!(judged.status, values::TOKEN_VERIFIED);
        if let Some(t) = token_like(data) {
            assert!(
                !format!("{judged:?}").contains(t),
                "the verdict holds the token"
            );
        }
    }
    let judged = id.verifier().check_payload(data, START_US);
    assert!(statuses.contains(&judged.status), "{}", judged.status);
}

fn identity_for_tokens() -> &'static IdentityResolver {
    static I: OnceLock<IdentityResolver> = OnceLock::new();
    I.get_or_init(identity)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_check_runs_on_the_seed_tokens() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/als_message");
        let checked: usize = std::fs::read_dir(dir)
            .expect("seeds")
            .flatten()
            .map(|f| als_message_tokens_checked(&std::fs::read(f.path()).expect("read")))
            .sum();
        assert!(checked >= 3, "only {checked} raw tokens checked");
    }

    #[test]
    fn token_like_wants_a_long_jws() {
        assert_eq!(
            token_like(b"Bearer aaaaaaaaaa.bbbbbbbbbb.cccccccccc"),
            Some("aaaaaaaaaa.bbbbbbbbbb.cccccccccc")
        );
        assert_eq!(token_like(b"Bearer a.b.c"), None);
        assert_eq!(token_like(b"Basic dXNlcjpwdw==dXNlcjpwdw=="), None);
        assert_eq!(occurrences(b"xaxax", b"x"), 3);
    }
}
