//! What a raw bearer token costs the join: the same token on every entry (verification cached:
//! a keyed digest and a lookup) against a fresh token on every entry (an RSA-2048 signature
//! check each). Entries carry no jwt_authn metadata, so the raw token is what identifies them.
//! Run: `cargo bench --bench identity`. `meshaudit_jwt_signature_checks_total` and
//! `meshaudit_jwt_verification_cache_total` show the same split on a running collector.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use envoy_types::pb::envoy::data::accesslog::v3::{
    AccessLogCommon, HttpAccessLogEntry, HttpRequestProperties, HttpResponseProperties,
};
use envoy_types::pb::google::protobuf::{Timestamp, UInt32Value};
use meshaudit::join::identity::{IdentityConfig, IdentityResolver};
use meshaudit::join::{redact::Redactor, Joiner, StreamContext};
use meshaudit::record::id::EntryType;
use meshaudit::telemetry::Metrics;
use prost::Message;
use rsa::pkcs1v15::SigningKey;
use rsa::sha2::Sha256;
use rsa::signature::{SignatureEncoding as _, Signer as _};
use rsa::traits::PublicKeyParts as _;

const TID: &str = "11111111-2222-3333-4444-555555555555";
const API: &str = "7f1b2c3d-0000-4000-8000-00000000a001";
const START: i64 = 1_772_446_504;

fn b64(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// A v2 user token of realistic size (~1.3 KB with ten groups).
fn token(key: &rsa::PrivateKey, i: usize) -> String {
    let groups: Vec<String> = (0..10)
        .map(|g| format!("5c6d7e8f-0000-4000-8000-{g:012}"))
        .collect();
    let claims = serde_json::json!({
        "aud": API, "iss": format!("https://login.microsoftonline.com/{TID}/v2.0"), "ver": "2.0",
        "iat": START - 300, "nbf": START - 300, "exp": START + 3300,
        "azp": "2a3b4c5d-0000-4000-8000-00000000c001", "azpacr": "0", "name": "Ada Example",
        "preferred_username": "ada@contoso.example", "oid": format!("9e8d7c6b-0000-4000-8000-{i:012}"),
        "sub": "Xy3k9Qx7Lm2PpW8rT1vN5bC4dF6gH0jK", "tid": TID, "scp": "Orders.Read Orders.Write",
        "roles": ["Orders.Approver"], "groups": groups, "uti": format!("uti{i:020}"),
        "aio": "E2ZgYJgbS9zV6f7b0ZwXj9a8sK3lM1nO2pQ4rS5tU6vW7xY8zA9bC0dE1fG2hI3jK4lM5nO6pQ7rS8tU9vW0xY1z",
        "rh": "0.AAAA1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6q7r8s9t0u1v2w3x4y5z6", "xms_cc": ["cp1"]
    });
    let signed = format!(
        "{}.{}",
        b64(br#"{"typ":"JWT","alg":"RS256","kid":"k0"}"#),
        b64(claims.to_string().as_bytes())
    );
    let sig = SigningKey::<Sha256>::new(key.clone()).sign(signed.as_bytes());
    format!("{signed}.{}", b64(&sig.to_bytes()))
}

fn entry(i: usize, token: &str) -> Bytes {
    HttpAccessLogEntry {
        common_properties: Some(AccessLogCommon {
            start_time: Some(Timestamp {
                seconds: START,
                nanos: 0,
            }),
            ..Default::default()
        }),
        protocol_version: 3,
        request: Some(HttpRequestProperties {
            request_method: 1,
            path: format!("/orders/{i}"),
            request_id: format!("req-{i}"),
            request_headers: [("authorization".to_owned(), format!("Bearer {token}"))].into(),
            ..Default::default()
        }),
        response: Some(HttpResponseProperties {
            response_code: Some(UInt32Value { value: 200 }),
            response_code_details: "via_upstream".into(),
            ..Default::default()
        }),
    }
    .encode_to_vec()
    .into()
}

fn joiner(jwks: &[u8]) -> Joiner {
    let cfg = IdentityConfig {
        entra_tenants: vec![TID.to_owned()],
        audiences: vec![API.to_owned()],
        ..IdentityConfig::default()
    };
    let resolver = IdentityResolver::new(&cfg, Metrics::new()).expect("resolver");
    resolver.preload_jwks(jwks).expect("keys");
    Joiner::new(Redactor::default()).with_identity(resolver)
}

fn bench(c: &mut Criterion) {
    let key = rsa::PrivateKey::new(&mut getrandom::SysRng, 2048).expect("key");
    let public = key.to_public_key();
    let jwks = serde_json::json!({"keys": [{
        "kty": "RSA", "use": "sig", "kid": "k0",
        "n": b64(&public.n_bytes()), "e": b64(&public.e_bytes())
    }]})
    .to_string();
    let one = token(&key, 0);
    eprintln!("token size: {} bytes", one.len());
    let same: Vec<Bytes> = (0..100).map(|i| entry(i, &one)).collect();
    let fresh: Vec<Bytes> = (0..100).map(|i| entry(i, &token(&key, i + 1))).collect();
    let ctx = StreamContext::default();
    let at = (START + 1) * 1_000_000;

    let mut g = c.benchmark_group("raw_token");
    g.throughput(Throughput::Elements(100));
    let cached = joiner(jwks.as_bytes());
    g.bench_function("join_100_entries_same_token_cached", |b| {
        b.iter(|| {
            for e in &same {
                let r = cached.join(&ctx, EntryType::Http, e, at).expect("joins");
                assert_eq!(r.token_status, "verified");
                black_box(r);
            }
        })
    });
    g.bench_function("join_100_entries_fresh_token_each", |b| {
        // A new joiner (empty cache) per iteration, built outside the timing.
        b.iter_batched(
            || joiner(jwks.as_bytes()),
            |j| {
                for e in &fresh {
                    let r = j.join(&ctx, EntryType::Http, e, at).expect("joins");
                    assert_eq!(r.token_status, "verified");
                    black_box(r);
                }
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
