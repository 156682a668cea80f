//! Table-driven tests of the identity join: an ALS entry in, the record's Identity columns out,
//! for every identity kind and every token status.

use crate::record::{AsText, TextExt};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use prost::Message;
use rsa::pkcs1v15::SigningKey;
use rsa::sha2::Sha256;
use rsa::signature::{SignatureEncoding as _, Signer as _};
use rsa::traits::PublicKeyParts as _;

use super::jwks::Key;
use super::*;
use crate::ingest::wire::{
    subject_alt_name::San, AccessLogCommon, BytesEntry, CertificateProperties, HttpAccessLogEntry,
    HttpRequestProperties, HttpResponseProperties, Metadata, SubjectAltName, Timestamp,
    TlsProperties,
};
use crate::join::redact::Redactor;
use crate::join::{Joiner, StreamContext};
use crate::record::id::EntryType;
use crate::record::AuditRecord;

const TID: &str = "11111111-2222-3333-4444-555555555555";
const OTHER_TID: &str = "99999999-2222-3333-4444-555555555555";
const API: &str = "7f1b2c3d-0000-4000-8000-00000000a001";
const API_URI: &str = "api://orders-api";
/// 2026-03-02T10:00:00Z: when the requests in these tests were made.
const NOW: i64 = 1_772_445_600;
const SPIFFE: &str =
    "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account";

fn v2_iss() -> String {
    format!("https://login.microsoftonline.com/{TID}/v2.0")
}
fn v1_iss() -> String {
    format!("https://sts.windows.net/{TID}/")
}

/// RSA keys are slow to make in a debug build: two, once per test binary.
fn keys() -> &'static [rsa::PrivateKey; 2] {
    static KEYS: OnceLock<[rsa::PrivateKey; 2]> = OnceLock::new();
    KEYS.get_or_init(|| {
        let make =
            || rsa::PrivateKey::new(&mut getrandom::SysRng, 2048).expect("RSA key generation");
        [make(), make()]
    })
}

fn public(i: usize) -> Key {
    let p = keys()[i].to_public_key();
    Key::from_components(&p.n_bytes(), &p.e_bytes()).expect("valid public key")
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A token signed the way Entra signs: RS256, `kid` (and for v1 `x5t`) in the header.
fn mint(header: serde_json::Value, claims: &serde_json::Value, key: usize) -> String {
    let signed = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sig = SigningKey::<Sha256>::new(keys()[key].clone()).sign(signed.as_bytes());
    format!("{signed}.{}", b64(&sig.to_bytes()))
}

fn rs256(kid: &str) -> serde_json::Value {
    serde_json::json!({"typ": "JWT", "alg": "RS256", "kid": kid})
}

/// A v2 delegated (user) token's claims, as in docs/wire-and-identity.md §2.2.
fn user_v2() -> serde_json::Value {
    serde_json::json!({
        "aud": API, "iss": v2_iss(), "ver": "2.0",
        "iat": NOW - 600, "nbf": NOW - 600, "exp": NOW + 3000,
        "azp": "2a3b4c5d-0000-4000-8000-00000000c001", "azpacr": "0",
        "name": "Ada Example", "preferred_username": "ada@contoso.example",
        "oid": "9e8d7c6b-0000-4000-8000-00000000e001", "sub": "Xy3kQ",
        "tid": TID, "scp": "Orders.Read Orders.Write", "roles": ["Orders.Approver"],
        "groups": ["5c6d7e8f-0000-4000-8000-00000000b001", "5c6d7e8f-0000-4000-8000-00000000b999"],
        "uti": "AbCdEf123", "rh": "opaque"
    })
}

fn with(mut base: serde_json::Value, patch: serde_json::Value) -> serde_json::Value {
    if let (Some(b), Some(p)) = (base.as_object_mut(), patch.as_object()) {
        for (k, v) in p {
            if v.is_null() {
                b.remove(k);
            } else {
                b.insert(k.clone(), v.clone());
            }
        }
    }
    base
}

fn json_to_struct(v: &serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.iter().map(json_to_struct).collect(),
        }),
        serde_json::Value::Object(o) => Kind::StructValue(prost_types::Struct {
            fields: o
                .iter()
                .map(|(k, v)| (k.clone(), json_to_struct(v)))
                .collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

/// The `envoy.filters.http.jwt_authn` namespace Struct holding `claims` under `key`.
fn jwt_metadata(key: &str, claims: &serde_json::Value) -> BytesEntry {
    let ns = serde_json::json!({ key: claims });
    let Some(prost_types::value::Kind::StructValue(s)) = json_to_struct(&ns).kind else {
        unreachable!("an object converts to a Struct")
    };
    BytesEntry {
        key: Bytes::from_static(b"envoy.filters.http.jwt_authn"),
        value: s.encode_to_vec().into(),
    }
}

#[derive(Default, Clone)]
struct Entry {
    metadata: Option<BytesEntry>,
    headers: Vec<(&'static str, String)>,
    details: Option<&'static str>,
    peer: bool,
    /// Istio `downstream_peer` filter state (namespace, workload), without a certificate.
    peer_metadata: bool,
    start: Option<i64>,
}

impl Entry {
    fn encode(&self) -> Bytes {
        let common = AccessLogCommon {
            start_time: self.start.map(|seconds| Timestamp { seconds, nanos: 0 }),
            metadata: self.metadata.clone().map(|m| Metadata {
                filter_metadata: vec![m],
            }),
            tls_properties: self.peer.then(|| TlsProperties {
                peer_certificate_properties: Some(CertificateProperties {
                    subject_alt_name: vec![SubjectAltName {
                        san: Some(San::Uri(Bytes::from_static(SPIFFE.as_bytes()))),
                    }],
                }),
                ..Default::default()
            }),
            filter_state_objects: if self.peer_metadata {
                let Some(prost_types::value::Kind::StructValue(s)) = json_to_struct(
                    &serde_json::json!({"namespace": "orders", "workload": "checkout"}),
                )
                .kind
                else {
                    unreachable!("an object converts to a Struct")
                };
                vec![crate::ingest::wire::AnyEntry {
                    key: Bytes::from_static(b"downstream_peer"),
                    value: Some(crate::ingest::wire::Any {
                        type_url: Bytes::from_static(b"type.googleapis.com/google.protobuf.Struct"),
                        value: s.encode_to_vec().into(),
                    }),
                }]
            } else {
                Vec::new()
            },
            ..Default::default()
        };
        HttpAccessLogEntry {
            common_properties: Some(common),
            protocol_version: 3,
            request: Some(HttpRequestProperties {
                request_method: 1,
                path: Bytes::from_static(b"/orders"),
                request_headers: self
                    .headers
                    .iter()
                    .map(|(k, v)| BytesEntry {
                        key: Bytes::from_static(k.as_bytes()),
                        value: Bytes::copy_from_slice(v.as_bytes()),
                    })
                    .collect(),
                ..Default::default()
            }),
            response: Some(HttpResponseProperties {
                response_code: Some(crate::ingest::wire::UInt32Value {
                    value: if self.details.is_some() { 401 } else { 200 },
                }),
                response_code_details: Bytes::from_static(
                    self.details.unwrap_or("via_upstream").as_bytes(),
                ),
                ..Default::default()
            }),
        }
        .encode_to_vec()
        .into()
    }
}

fn bearer(token: String) -> Entry {
    Entry {
        headers: vec![("authorization", format!("Bearer {token}"))],
        start: Some(NOW),
        ..Default::default()
    }
}

const DIRECTORY: &str = r#"{
    "groups": { "5c6d7e8f-0000-4000-8000-00000000b001": "Payments Admins" },
    "applications": { "2a3b4c5d-0000-4000-8000-00000000c001": "orders-web" },
    "managed_identities": [ "9e8d7c6b-0000-4000-8000-00000000e002" ],
    "generated_by": "a tool that adds keys"
}"#;

struct Fixture {
    joiner: Joiner,
    metrics: Arc<Metrics>,
    _dir: tempfile::TempDir,
}

/// A joiner trusting `TID` (v1 and v2) for `API`/`API_URI`, with key 0 as `k0` in both key
/// sets, and the directory above.
fn fixture(payload_header: bool) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("directory.json");
    std::fs::write(&path, DIRECTORY).expect("write directory");
    let cfg = IdentityConfig {
        entra_tenants: vec![TID.to_owned()],
        audiences: vec![API.to_owned(), API_URI.to_owned()],
        payload_headers: if payload_header {
            vec!["x-jwt-payload".to_owned()]
        } else {
            Vec::new()
        },
        directory: Some(path),
        ..IdentityConfig::default()
    };
    let metrics = Metrics::new();
    let resolver = IdentityResolver::new(&cfg, Arc::clone(&metrics)).expect("resolver");
    for set in &resolver.verifier.sets {
        set.install(vec![("k0".to_owned(), public(0))], 0);
    }
    Fixture {
        joiner: Joiner::new(Redactor::default()).with_identity(resolver),
        metrics,
        _dir: dir,
    }
}

fn ctx() -> StreamContext {
    StreamContext::default()
}

/// Joins `e` as received a second after its request started (the start-time window is
/// relative to the receive time; a request logged an hour after receipt would be clamped).
fn join(f: &Fixture, e: &Entry) -> AuditRecord {
    let received = e.start.unwrap_or(NOW) + 1;
    f.joiner
        .join(&ctx(), EntryType::Http, &e.encode(), received * 1_000_000)
        .expect("entry joins")
}

fn list(v: &Option<crate::record::StringList>) -> Option<Vec<&str>> {
    v.as_ref()
        .map(|l| l.values.iter().map(|v| v.as_text()).collect())
}

struct Case {
    name: &'static str,
    entry: Entry,
    /// (identity_kind, identity_source, token_status)
    want: (&'static str, &'static str, &'static str),
    check: fn(&AuditRecord),
}

fn no_claims(r: &AuditRecord) {
    assert_eq!(r.object_id, None);
    assert_eq!(r.groups, None);
    assert_eq!(r.groups_overage, None, "no token examined: NULL");
    assert_eq!(r.group_names, None);
}

fn user_claims(r: &AuditRecord) {
    assert_eq!(r.tenant_id.text(), Some(TID));
    assert_eq!(
        r.object_id.text(),
        Some("9e8d7c6b-0000-4000-8000-00000000e001")
    );
    assert_eq!(r.subject.text(), Some("Xy3kQ"));
    assert_eq!(r.user_principal.text(), Some("ada@contoso.example"));
    assert_eq!(r.display_name.text(), Some("Ada Example"));
    assert_eq!(
        r.app_id.text(),
        Some("2a3b4c5d-0000-4000-8000-00000000c001")
    );
    assert_eq!(r.app_display_name.text(), Some("orders-web"));
    assert_eq!(list(&r.scopes), Some(vec!["Orders.Read", "Orders.Write"]));
    assert_eq!(list(&r.roles), Some(vec!["Orders.Approver"]));
    let names: Vec<Option<&str>> = r
        .group_names
        .as_ref()
        .expect("group names with a directory")
        .values
        .iter()
        .map(|n| n.value.text())
        .collect();
    assert_eq!(
        names,
        [Some("Payments Admins"), None],
        "same order, NULL where unknown"
    );
    assert_eq!(r.groups_overage, Some(false));
    assert_eq!(r.issuer.text(), Some(v2_iss().as_str()));
    assert_eq!(r.audience.text(), Some(API));
    assert_eq!(r.token_version.text(), Some("2.0"));
    assert_eq!(r.token_id.text(), Some("AbCdEf123"));
    assert_eq!(r.token_issued_at, Some((NOW - 600) * 1_000_000));
    assert_eq!(r.token_expires_at, Some((NOW + 3000) * 1_000_000));
    assert_eq!(r.auth_methods, None, "v2 tokens carry no amr: NULL");
}

fn cases() -> Vec<Case> {
    let user = user_v2();
    let app_only = serde_json::json!({
        "aud": API, "iss": v2_iss(), "ver": "2.0", "iat": NOW - 60, "nbf": NOW - 60,
        "exp": NOW + 3540, "azp": "3c4d5e6f-0000-4000-8000-00000000c002", "azpacr": "1",
        "oid": "9e8d7c6b-0000-4000-8000-00000000e003", "sub": "9e8d7c6b-0000-4000-8000-00000000e003",
        "tid": TID, "roles": ["Orders.Read.All"], "idtyp": "app", "uti": "app-uti"
    });
    let v1_user = serde_json::json!({
        "aud": format!("{API_URI}/"), "iss": v1_iss(), "ver": "1.0",
        "iat": NOW - 60, "nbf": NOW - 60, "exp": NOW + 3540,
        "appid": "2a3b4c5d-0000-4000-8000-00000000c001", "appidacr": "0",
        "upn": "bob@contoso.example", "unique_name": "bob@contoso.example",
        "name": "Bob", "oid": "o-bob", "sub": "s-bob", "tid": TID,
        "scp": "Orders.Read", "amr": ["pwd", "mfa"], "uti": "bob-uti",
        "_claim_names": {"groups": "src1"},
        "_claim_sources": {"src1": {"endpoint": "https://graph.windows.net/x/users/o-bob/getMemberObjects"}}
    });
    let guest = with(
        user_v2(),
        serde_json::json!({
            "idp": format!("https://sts.windows.net/{OTHER_TID}/"),
            "preferred_username": "carol@fabrikam.example", "groups": null
        }),
    );
    let mi = with(
        app_only.clone(),
        serde_json::json!({"oid": "9e8d7c6b-0000-4000-8000-00000000e002",
                           "sub": "9e8d7c6b-0000-4000-8000-00000000e002"}),
    );
    let payload_value = b64(user.to_string().as_bytes());
    let foreign_issuer_payload = b64(with(
        user.clone(),
        serde_json::json!({"iss": format!("https://login.microsoftonline.com/{OTHER_TID}/v2.0")}),
    )
    .to_string()
    .as_bytes());
    let no_issuer_payload = b64(with(user.clone(), serde_json::json!({"iss": null}))
        .to_string()
        .as_bytes());
    let foreign_audience_payload = b64(with(
        user.clone(),
        serde_json::json!({"aud": "api://someone-else"}),
    )
    .to_string()
    .as_bytes());
    let expired_payload = b64(with(user.clone(), serde_json::json!({"exp": NOW - 3600}))
        .to_string()
        .as_bytes());
    let alg_none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(user.to_string().as_bytes())
    );
    // The RSA public key used as an HMAC secret: the classic algorithm confusion.
    let hs256 = {
        let signed = format!(
            "{}.{}",
            b64(br#"{"alg":"HS256","kid":"k0"}"#),
            b64(user.to_string().as_bytes())
        );
        format!(
            "{signed}.{}",
            b64(blake3::hash(signed.as_bytes()).as_bytes())
        )
    };
    let tampered = {
        let good = mint(rs256("k0"), &user, 0);
        let (head, _) = good.split_once('.').expect("three parts");
        let sig = good.rsplit('.').next().expect("signature");
        let forged = with(user.clone(), serde_json::json!({"roles": ["Orders.Admin"]}));
        format!("{head}.{}.{sig}", b64(forged.to_string().as_bytes()))
    };

    vec![
        Case {
            name: "proxy-verified v2 user from jwt_authn payload metadata",
            entry: Entry {
                metadata: Some(jwt_metadata("payload", &user)),
                start: Some(NOW),
                ..Default::default()
            },
            want: (
                values::KIND_USER,
                values::SOURCE_JWT_METADATA,
                values::TOKEN_PROXY_VERIFIED,
            ),
            check: user_claims,
        },
        Case {
            name: "older Istio: payload keyed by its issuer",
            entry: Entry {
                metadata: Some(jwt_metadata(&v2_iss(), &user)),
                start: Some(NOW),
                ..Default::default()
            },
            want: (
                values::KIND_USER,
                values::SOURCE_JWT_METADATA,
                values::TOKEN_PROXY_VERIFIED,
            ),
            check: user_claims,
        },
        Case {
            name: "proxy-verified guest",
            entry: Entry {
                metadata: Some(jwt_metadata("payload", &guest)),
                ..Default::default()
            },
            want: (
                values::KIND_GUEST,
                values::SOURCE_JWT_METADATA,
                values::TOKEN_PROXY_VERIFIED,
            ),
            check: |r| {
                assert_eq!(r.user_principal.text(), Some("carol@fabrikam.example"));
                assert_eq!(r.groups, None);
                assert_eq!(r.group_names, None, "no groups claim: NULL names");
            },
        },
        Case {
            name: "metadata wins over a raw token",
            entry: Entry {
                metadata: Some(jwt_metadata("payload", &user)),
                headers: vec![("authorization", "Bearer not-even-a-jwt".into())],
                ..Default::default()
            },
            want: (
                values::KIND_USER,
                values::SOURCE_JWT_METADATA,
                values::TOKEN_PROXY_VERIFIED,
            ),
            check: |_| {},
        },
        Case {
            name: "raw v2 user token, verified",
            entry: bearer(mint(rs256("k0"), &user, 0)),
            want: (
                values::KIND_USER,
                values::SOURCE_JWT_HEADER,
                values::TOKEN_VERIFIED,
            ),
            check: user_claims,
        },
        Case {
            name: "raw v1 user token (App ID URI audience, trailing slash), overage",
            entry: bearer(mint(
                serde_json::json!({"typ":"JWT","alg":"RS256","kid":"k0","x5t":"k0"}),
                &v1_user,
                0,
            )),
            want: (
                values::KIND_USER,
                values::SOURCE_JWT_HEADER,
                values::TOKEN_VERIFIED,
            ),
            check: |r| {
                assert_eq!(r.user_principal.text(), Some("bob@contoso.example"));
                assert_eq!(
                    r.app_id.text(),
                    Some("2a3b4c5d-0000-4000-8000-00000000c001")
                );
                assert_eq!(list(&r.auth_methods), Some(vec!["pwd", "mfa"]));
                assert_eq!(r.groups_overage, Some(true));
                assert_eq!(r.groups, None);
                assert_eq!(r.token_version.text(), Some("1.0"));
                assert_eq!(r.audience.text(), Some("api://orders-api/"));
            },
        },
        Case {
            name: "app-only token: service principal",
            entry: bearer(mint(rs256("k0"), &app_only, 0)),
            want: (
                values::KIND_SERVICE_PRINCIPAL,
                values::SOURCE_JWT_HEADER,
                values::TOKEN_VERIFIED,
            ),
            check: |r| {
                assert_eq!(r.scopes, None);
                assert_eq!(list(&r.roles), Some(vec!["Orders.Read.All"]));
                assert_eq!(r.user_principal, None);
                assert_eq!(r.app_display_name, None, "not in the directory");
            },
        },
        Case {
            name: "app-only token of a listed managed identity",
            entry: bearer(mint(rs256("k0"), &mi, 0)),
            want: (
                values::KIND_MANAGED_IDENTITY,
                values::SOURCE_JWT_HEADER,
                values::TOKEN_VERIFIED,
            ),
            check: |_| {},
        },
        Case {
            name: "expired at request time",
            entry: bearer(mint(
                rs256("k0"),
                &with(user.clone(), serde_json::json!({"exp": NOW - 61})),
                0,
            )),
            want: (
                values::KIND_USER,
                values::SOURCE_JWT_HEADER,
                values::TOKEN_EXPIRED,
            ),
            check: |r| {
                assert_eq!(
                    r.object_id.text(),
                    Some("9e8d7c6b-0000-4000-8000-00000000e001"),
                    "claims kept"
                )
            },
        },
        Case {
            name: "expired 59 s before the request: inside the skew",
            entry: bearer(mint(
                rs256("k0"),
                &with(user.clone(), serde_json::json!({"exp": NOW - 59})),
                0,
            )),
            want: (
                values::KIND_USER,
                values::SOURCE_JWT_HEADER,
                values::TOKEN_VERIFIED,
            ),
            check: |_| {},
        },
        Case {
            name: "not yet valid",
            entry: bearer(mint(
                rs256("k0"),
                &with(user.clone(), serde_json::json!({"nbf": NOW + 600})),
                0,
            )),
            want: (
                values::KIND_USER,
                values::SOURCE_JWT_HEADER,
                values::TOKEN_NOT_YET_VALID,
            ),
            check: |_| {},
        },
        Case {
            name: "wrong audience (a Graph token)",
            entry: bearer(mint(
                rs256("k0"),
                &with(
                    user.clone(),
                    serde_json::json!({"aud": "https://graph.microsoft.com"}),
                ),
                0,
            )),
            want: (
                values::KIND_USER,
                values::SOURCE_JWT_HEADER,
                values::TOKEN_WRONG_AUDIENCE,
            ),
            check: |r| assert_eq!(r.audience.text(), Some("https://graph.microsoft.com")),
        },
        Case {
            name: "untrusted tenant",
            entry: bearer(mint(
                rs256("k0"),
                &with(
                    user.clone(),
                    serde_json::json!({
                "iss": format!("https://login.microsoftonline.com/{OTHER_TID}/v2.0"), "tid": OTHER_TID}),
                ),
                0,
            )),
            want: (
                values::KIND_USER,
                values::SOURCE_JWT_HEADER,
                values::TOKEN_UNTRUSTED_ISSUER,
            ),
            check: |r| assert_eq!(r.tenant_id.text(), Some(OTHER_TID)),
        },
        Case {
            name: "signed by another key under our kid",
            entry: bearer(mint(rs256("k0"), &user, 1)),
            want: (
                values::KIND_USER,
                values::SOURCE_JWT_HEADER,
                values::TOKEN_BAD_SIGNATURE,
            ),
            check: |_| {},
        },
        Case {
            name: "claims changed after signing",
            entry: bearer(tampered),
            want: (
                values::KIND_USER,
                values::SOURCE_JWT_HEADER,
                values::TOKEN_BAD_SIGNATURE,
            ),
            check: |_| {},
        },
        Case {
            name: "alg none",
            entry: bearer(alg_none),
            want: (
                values::KIND_USER,
                values::SOURCE_JWT_HEADER,
                values::TOKEN_BAD_SIGNATURE,
            ),
            check: |_| {},
        },
        Case {
            name: "HS256 with the public key as secret",
            entry: bearer(hs256),
            want: (
                values::KIND_USER,
                values::SOURCE_JWT_HEADER,
                values::TOKEN_BAD_SIGNATURE,
            ),
            check: |_| {},
        },
        Case {
            name: "unknown kid",
            entry: bearer(mint(rs256("k-next"), &user, 1)),
            want: (
                values::KIND_USER,
                values::SOURCE_JWT_HEADER,
                values::TOKEN_UNKNOWN_KEY,
            ),
            check: |_| {},
        },
        Case {
            name: "not a JWT",
            entry: bearer("opaque-reference-token".into()),
            want: (
                values::KIND_ANONYMOUS,
                values::SOURCE_JWT_HEADER,
                values::TOKEN_MALFORMED,
            ),
            check: no_claims,
        },
        Case {
            name: "not a JWT, from an mTLS peer",
            entry: Entry {
                peer: true,
                ..bearer("a.b.c".into())
            },
            want: (
                values::KIND_WORKLOAD,
                values::SOURCE_JWT_HEADER,
                values::TOKEN_MALFORMED,
            ),
            check: no_claims,
        },
        Case {
            name: "signed token without exp",
            entry: bearer(mint(
                rs256("k0"),
                &with(user.clone(), serde_json::json!({"exp": null})),
                0,
            )),
            want: (
                values::KIND_USER,
                values::SOURCE_JWT_HEADER,
                values::TOKEN_MALFORMED,
            ),
            check: |_| {},
        },
        Case {
            name: "Basic credentials are not a token",
            entry: Entry {
                headers: vec![("authorization", "Basic dXNlcjpwYXNz".into())],
                ..Default::default()
            },
            want: (
                values::KIND_ANONYMOUS,
                values::SOURCE_NONE,
                values::TOKEN_ABSENT,
            ),
            check: no_claims,
        },
        Case {
            name: "proxy denied: expired",
            entry: Entry {
                details: Some("jwt_authn_access_denied{Jwt_is_expired}"),
                ..Default::default()
            },
            want: (
                values::KIND_ANONYMOUS,
                values::SOURCE_NONE,
                values::TOKEN_EXPIRED,
            ),
            check: no_claims,
        },
        Case {
            name: "proxy denied: not yet valid",
            entry: Entry {
                details: Some("jwt_authn_access_denied{Jwt_not_yet_valid}"),
                ..Default::default()
            },
            want: (
                values::KIND_ANONYMOUS,
                values::SOURCE_NONE,
                values::TOKEN_NOT_YET_VALID,
            ),
            check: no_claims,
        },
        Case {
            name: "proxy denied: issuer not configured",
            entry: Entry {
                details: Some("jwt_authn_access_denied{Jwt_issuer_is_not_configured}"),
                ..Default::default()
            },
            want: (
                values::KIND_ANONYMOUS,
                values::SOURCE_NONE,
                values::TOKEN_UNTRUSTED_ISSUER,
            ),
            check: no_claims,
        },
        Case {
            name: "proxy denied: no key",
            entry: Entry {
                details: Some(
                    "jwt_authn_access_denied{Jwks_doesn't_have_key_to_match_kid_or_alg_from_Jwt}",
                ),
                ..Default::default()
            },
            want: (
                values::KIND_ANONYMOUS,
                values::SOURCE_NONE,
                values::TOKEN_UNKNOWN_KEY,
            ),
            check: no_claims,
        },
        Case {
            name: "proxy denied: verification fails",
            entry: Entry {
                details: Some("jwt_authn_access_denied{Jwt_verification_fails}"),
                ..Default::default()
            },
            want: (
                values::KIND_ANONYMOUS,
                values::SOURCE_NONE,
                values::TOKEN_BAD_SIGNATURE,
            ),
            check: no_claims,
        },
        Case {
            name: "proxy denied: audience",
            entry: Entry {
                details: Some("jwt_authn_access_denied{Audiences_in_Jwt_are_not_allowed}"),
                ..Default::default()
            },
            want: (
                values::KIND_ANONYMOUS,
                values::SOURCE_NONE,
                values::TOKEN_WRONG_AUDIENCE,
            ),
            check: no_claims,
        },
        Case {
            name: "proxy denied: bad format",
            entry: Entry {
                details: Some("jwt_authn_access_denied{Jwt_header_is_an_invalid_JSON}"),
                ..Default::default()
            },
            want: (
                values::KIND_ANONYMOUS,
                values::SOURCE_NONE,
                values::TOKEN_MALFORMED,
            ),
            check: no_claims,
        },
        Case {
            name: "proxy denied a workload's token: the certificate still names the caller",
            entry: Entry {
                details: Some("jwt_authn_access_denied{Jwt_is_expired}"),
                peer: true,
                ..Default::default()
            },
            want: (
                values::KIND_WORKLOAD,
                values::SOURCE_MTLS,
                values::TOKEN_EXPIRED,
            ),
            check: no_claims,
        },
        Case {
            name: "forwarded claims header",
            entry: Entry {
                headers: vec![("x-jwt-payload", payload_value)],
                start: Some(NOW),
                ..Default::default()
            },
            want: (
                values::KIND_USER,
                values::SOURCE_PAYLOAD_HEADER,
                values::TOKEN_PROXY_VERIFIED,
            ),
            check: user_claims,
        },
        Case {
            name: "forwarded claims contradicted by the request time",
            entry: Entry {
                headers: vec![("x-jwt-payload", expired_payload)],
                start: Some(NOW),
                ..Default::default()
            },
            want: (
                values::KIND_USER,
                values::SOURCE_PAYLOAD_HEADER,
                values::TOKEN_EXPIRED,
            ),
            check: |_| {},
        },
        Case {
            name: "forwarded claims header from another tenant's issuer",
            entry: Entry {
                headers: vec![("x-jwt-payload", foreign_issuer_payload)],
                start: Some(NOW),
                ..Default::default()
            },
            want: (
                values::KIND_USER,
                values::SOURCE_PAYLOAD_HEADER,
                values::TOKEN_UNTRUSTED_ISSUER,
            ),
            check: |_| {},
        },
        Case {
            name: "forwarded claims header without an issuer",
            entry: Entry {
                headers: vec![("x-jwt-payload", no_issuer_payload)],
                start: Some(NOW),
                ..Default::default()
            },
            want: (
                values::KIND_USER,
                values::SOURCE_PAYLOAD_HEADER,
                values::TOKEN_UNTRUSTED_ISSUER,
            ),
            check: |_| {},
        },
        Case {
            name: "forwarded claims header for another audience",
            entry: Entry {
                headers: vec![("x-jwt-payload", foreign_audience_payload)],
                start: Some(NOW),
                ..Default::default()
            },
            want: (
                values::KIND_USER,
                values::SOURCE_PAYLOAD_HEADER,
                values::TOKEN_WRONG_AUDIENCE,
            ),
            check: |_| {},
        },
        Case {
            name: "forwarded claims header that is not base64 JSON",
            entry: Entry {
                headers: vec![("x-jwt-payload", "%%%".into())],
                ..Default::default()
            },
            want: (
                values::KIND_ANONYMOUS,
                values::SOURCE_PAYLOAD_HEADER,
                values::TOKEN_MALFORMED,
            ),
            check: no_claims,
        },
        Case {
            name: "mTLS peer, no token",
            entry: Entry {
                peer: true,
                ..Default::default()
            },
            want: (
                values::KIND_WORKLOAD,
                values::SOURCE_MTLS,
                values::TOKEN_ABSENT,
            ),
            check: no_claims,
        },
        Case {
            name: "Istio peer metadata, no certificate: a claim, not mTLS",
            entry: Entry {
                peer_metadata: true,
                ..Default::default()
            },
            want: (
                values::KIND_WORKLOAD,
                values::SOURCE_PEER_METADATA,
                values::TOKEN_ABSENT,
            ),
            check: |r| {
                assert_eq!(r.source_principal, None);
                assert_eq!(r.source_workload.text(), Some("checkout"));
            },
        },
        Case {
            name: "a certificate and peer metadata: the certificate makes it mTLS",
            entry: Entry {
                peer: true,
                peer_metadata: true,
                ..Default::default()
            },
            want: (
                values::KIND_WORKLOAD,
                values::SOURCE_MTLS,
                values::TOKEN_ABSENT,
            ),
            check: no_claims,
        },
        Case {
            name: "proxy denied a token, peer metadata only: still not mTLS",
            entry: Entry {
                details: Some("jwt_authn_access_denied{Jwt_is_expired}"),
                peer_metadata: true,
                ..Default::default()
            },
            want: (
                values::KIND_WORKLOAD,
                values::SOURCE_PEER_METADATA,
                values::TOKEN_EXPIRED,
            ),
            check: |_| {},
        },
        Case {
            name: "nobody",
            entry: Entry::default(),
            want: (
                values::KIND_ANONYMOUS,
                values::SOURCE_NONE,
                values::TOKEN_ABSENT,
            ),
            check: no_claims,
        },
    ]
}

#[test]
fn every_kind_and_status() {
    let f = fixture(true);
    let mut kinds = std::collections::BTreeSet::new();
    let mut statuses = std::collections::BTreeSet::new();
    for case in cases() {
        let r = join(&f, &case.entry);
        let got = (
            r.identity_kind.as_text(),
            r.identity_source.as_text(),
            r.token_status.as_text(),
        );
        assert_eq!(got, case.want, "{}", case.name);
        (case.check)(&r);
        kinds.insert(case.want.0);
        statuses.insert(case.want.2);
    }
    // The table covers every value of the closed sets.
    assert_eq!(kinds.len(), 6, "{kinds:?}");
    assert_eq!(statuses.len(), 10, "{statuses:?}");
}

#[test]
fn payload_header_is_off_unless_named() {
    let f = fixture(false);
    let e = Entry {
        headers: vec![("x-jwt-payload", b64(user_v2().to_string().as_bytes()))],
        ..Default::default()
    };
    let r = join(&f, &e);
    assert_eq!(r.identity_source, values::SOURCE_NONE);
    assert_eq!(r.token_status, values::TOKEN_ABSENT);
}

/// Time is judged against the request, never against ingestion.
#[test]
fn time_is_the_request_time() {
    let f = fixture(false);
    let token = mint(
        rs256("k0"),
        &with(user_v2(), serde_json::json!({"exp": NOW + 30})),
        0,
    );
    let e = bearer(token);
    let days_later = (NOW + 3 * 86_400) * 1_000_000;
    let r = f
        .joiner
        .join(&ctx(), EntryType::Http, &e.encode(), days_later)
        .expect("joins");
    assert_eq!(
        r.token_status,
        values::TOKEN_VERIFIED,
        "valid when the request was made"
    );
    // The same token on a request made after it expired.
    let late = Entry {
        start: Some(NOW + 3600),
        ..e
    };
    assert_eq!(join(&f, &late).token_status, values::TOKEN_EXPIRED);
}

/// A token seen many times costs one signature check; its time is still judged per record.
#[test]
fn cached_verification_costs_one_signature_check() {
    let f = fixture(false);
    let token = mint(rs256("k0"), &user_v2(), 0);
    let before = f.metrics.jwt_signature_checks.load(Relaxed);
    for i in 0..1000 {
        let r = join(
            &f,
            &Entry {
                start: Some(NOW + i),
                ..bearer(token.clone())
            },
        );
        assert_eq!(r.token_status, values::TOKEN_VERIFIED);
    }
    let late = join(
        &f,
        &Entry {
            start: Some(NOW + 4000),
            ..bearer(token.clone())
        },
    );
    assert_eq!(
        late.token_status,
        values::TOKEN_EXPIRED,
        "cached verdicts still check time"
    );
    assert_eq!(f.metrics.jwt_signature_checks.load(Relaxed) - before, 1);
    assert_eq!(f.metrics.jwt_cache_hits.load(Relaxed), 1000);
    assert_eq!(f.joiner.identity().verifier().cached_tokens(), 1);
}

/// An unknown kid asks for keys; once they arrive the same token verifies (the cached
/// "unknown key" is re-judged), and a key that leaves is kept for earlier requests only.
#[test]
fn unknown_kid_then_rotation_then_retirement() {
    let f = fixture(false);
    let resolver = f.joiner.identity();
    let token = mint(rs256("k1"), &user_v2(), 1);
    let entry = bearer(token.clone()).encode();
    let mut rec = AuditRecord {
        start_time: Some(NOW * 1_000_000),
        ..Default::default()
    };
    let e = HttpAccessLogEntry::decode(entry.clone()).expect("decodes");
    let need = resolver
        .fill(&mut rec, e.common_properties.as_ref(), e.request.as_ref())
        .expect("fills");
    assert_eq!(rec.token_status, values::TOKEN_UNKNOWN_KEY);
    assert!(
        need.is_some(),
        "the join asks for the key set to be refreshed"
    );

    // The keys rotate: k1 arrives, k0 leaves (noticed at NOW + 100 s).
    let rotated_at = (NOW + 100) * 1_000_000;
    for set in &resolver.verifier.sets {
        set.install(vec![("k1".to_owned(), public(1))], rotated_at);
    }
    let r = join(&f, &bearer(token));
    assert_eq!(r.token_status, values::TOKEN_VERIFIED);

    let old = mint(rs256("k0"), &user_v2(), 0);
    let before = join(
        &f,
        &Entry {
            start: Some(NOW),
            ..bearer(old.clone())
        },
    );
    assert_eq!(
        before.token_status,
        values::TOKEN_VERIFIED,
        "made before k0 left"
    );
    let after = join(
        &f,
        &Entry {
            start: Some(NOW + 1000),
            ..bearer(old)
        },
    );
    assert_eq!(
        after.token_status,
        values::TOKEN_UNKNOWN_KEY,
        "made after k0 left"
    );
}

/// No column of any record holds a raw token or a piece of one.
#[test]
fn raw_tokens_never_reach_a_record() {
    let f = fixture(true);
    for case in cases() {
        let r = join(&f, &case.entry);
        let shown = format!("{r:?} {:?}", f.joiner);
        for (_, value) in &case.entry.headers {
            let token = value.trim_start_matches("Bearer ");
            for piece in token.split('.').filter(|p| p.len() > 8) {
                if value.starts_with("Bearer ") {
                    assert!(!shown.contains(piece), "{}: a token part leaked", case.name);
                }
            }
        }
    }
}
