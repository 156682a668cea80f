//! End to end for the Identity columns: Entra-style tokens (v1 and v2; users, guests, service
//! principals, a managed identity) streamed through the real `meshaudit serve` binary with
//! Envoy's generated client, keys served by a local JWKS endpoint that rotates while the
//! collector runs, Parquet read back. Every output file and every log line is searched for the
//! raw tokens, which must not be there.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::jwt::*;
use common::*;
use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::envoy::data::accesslog::v3::HttpAccessLogEntry;
use serde_json::{json, Value};

const TID: &str = "11111111-2222-3333-4444-555555555555";
const OTHER_TID: &str = "99999999-2222-3333-4444-555555555555";
const API: &str = "7f1b2c3d-0000-4000-8000-00000000a001";
const API_URI: &str = "api://orders-api";
const WEB_APP: &str = "2a3b4c5d-0000-4000-8000-00000000c001";
const MI_OID: &str = "9e8d7c6b-0000-4000-8000-00000000e002";
const GROUP: &str = "5c6d7e8f-0000-4000-8000-00000000b001";

fn v1_iss(tid: &str) -> String {
    format!("https://sts.windows.net/{tid}/")
}
fn v2_iss(tid: &str) -> String {
    format!("https://login.microsoftonline.com/{tid}/v2.0")
}

/// The harness's request time, in the seconds tokens use.
const T: i64 = START_SECS;

fn v2_user(oid: &str, uti: &str) -> Value {
    json!({
        "aud": API, "iss": v2_iss(TID), "ver": "2.0",
        "iat": T - 300, "nbf": T - 300, "exp": T + 3300,
        "azp": WEB_APP, "azpacr": "0", "name": "Ada Example",
        "preferred_username": "ada@contoso.example", "oid": oid, "sub": format!("sub-{oid}"),
        "tid": TID, "scp": "Orders.Read Orders.Write", "roles": ["Orders.Approver"],
        "groups": [GROUP, "5c6d7e8f-0000-4000-8000-00000000b999"], "uti": uti,
        "aio": "opaque", "rh": "opaque"
    })
}

fn v1_user() -> Value {
    json!({
        "aud": API_URI, "iss": v1_iss(TID), "ver": "1.0",
        "iat": T - 300, "nbf": T - 300, "exp": T + 3300,
        "appid": WEB_APP, "appidacr": "0", "upn": "bob@contoso.example",
        "unique_name": "bob@contoso.example", "name": "Bob", "oid": "oid-bob", "sub": "sub-bob",
        "tid": TID, "scp": "Orders.Read", "amr": ["pwd", "mfa"], "acr": "1", "uti": "uti-v1"
    })
}

fn app_only(oid: &str, uti: &str) -> Value {
    json!({
        "aud": API, "iss": v2_iss(TID), "ver": "2.0",
        "iat": T - 60, "nbf": T - 60, "exp": T + 3540,
        "azp": "3c4d5e6f-0000-4000-8000-00000000c002", "azpacr": "2",
        "oid": oid, "sub": oid, "tid": TID, "roles": ["Orders.Read.All"], "idtyp": "app", "uti": uti
    })
}

fn patch(mut v: Value, p: Value) -> Value {
    if let (Some(o), Some(p)) = (v.as_object_mut(), p.as_object()) {
        for (k, x) in p {
            o.insert(k.clone(), x.clone());
        }
    }
    v
}

/// An HTTP entry from the harness carrying `authorization: Bearer <token>`.
fn with_token(i: u32, token: &str) -> HttpAccessLogEntry {
    let mut e = http_entry(i);
    if let Some(req) = e.request.as_mut() {
        req.request_headers
            .insert("authorization".into(), format!("Bearer {token}"));
    }
    e
}

fn row<'a>(rows: &'a [Row], request_id: &str) -> &'a Row {
    let found: Vec<&Row> = rows
        .iter()
        .filter(|r| r["request_id"] == json!(request_id))
        .collect();
    assert_eq!(found.len(), 1, "exactly one row for {request_id}");
    found[0]
}

fn identity(r: &Row) -> (String, String, String) {
    let s = |k: &str| r[k].as_str().unwrap_or("<null>").to_owned();
    (s("identity_kind"), s("identity_source"), s("token_status"))
}

/// Asserts that neither the data dir nor the log holds any token or a telling piece of one.
fn assert_no_token_leaks(tokens: &[String], data_dir: &std::path::Path, log: &str) {
    assert!(!parquet_files(data_dir).is_empty(), "nothing was written");
    for t in tokens {
        let mut needles: Vec<&str> = vec![t.as_str(), &t[..24.min(t.len())]];
        // Each part, and the signed part (header.payload): a truncated or split copy is a leak
        // too. The header alone is shared by many tokens and would say nothing; skip short ones.
        let (signed, sig) = t.rsplit_once('.').unwrap_or((t, ""));
        needles.push(signed);
        if sig.len() >= 16 {
            needles.push(sig);
        }
        if let Some((_, payload)) = signed.split_once('.') {
            needles.push(payload);
        }
        for n in needles {
            assert!(
                !any_file_contains(data_dir, n.as_bytes()),
                "a token piece is in a file under the data dir"
            );
            assert!(
                !any_value_contains(data_dir, n),
                "a token piece is in a stored value"
            );
            assert!(!log.contains(n), "a token piece is in the collector's log");
        }
    }
}

#[test]
fn entra_tokens_through_the_real_collector() {
    let keys: Vec<rsa::PrivateKey> = (0..3).map(|_| rsa_key()).collect();
    let (k0, k1, rogue) = (&keys[0], &keys[1], &keys[2]);
    let server = JwksServer::start(jwks(&[("k0", k0)]));

    let dir = tempfile::tempdir().expect("tempdir");
    let directory = dir.path().join("directory.json");
    std::fs::write(
        &directory,
        json!({
            "groups": { GROUP: "Payments Admins" },
            "applications": { WEB_APP: "orders-web" },
            "managed_identities": [MI_OID],
            "exported_at": "2026-03-01T00:00:00Z"
        })
        .to_string(),
    )
    .expect("write directory");
    let data = dir.path().join("data");
    let jwks_url = server.url();
    let directory_arg = directory.to_string_lossy().into_owned();
    let c = Collector::start_with_env(
        &data,
        &[
            "--entra-tenant",
            TID,
            "--audience",
            API,
            "--audience",
            API_URI,
            "--jwks-url",
            &jwks_url,
            "--directory",
            &directory_arg,
            "--jwks-timeout-ms",
            "3000",
        ],
        // Debug logging: more log lines that a leak could hide in.
        &[("RUST_LOG", "debug")],
    );
    assert_eq!(
        server.requests(),
        1,
        "keys fetched once at start-up, before ready"
    );

    // ---- Message 1: every kind and status, keys {k0} ----
    let user = v2_user("oid-ada", "uti-ada");
    let user_token = mint(&entra_header("k0", false), &user, k0);
    let mut tokens: Vec<(u32, &str, String)> = vec![
        (1, "v2 user", user_token.clone()),
        (
            2,
            "v1 user",
            mint(&entra_header("k0", true), &v1_user(), k0),
        ),
        (
            3,
            "guest",
            mint(
                &entra_header("k0", false),
                &patch(
                    v2_user("oid-carol", "uti-carol"),
                    json!({"idp": v1_iss(OTHER_TID), "preferred_username": "carol@fabrikam.example", "acct": 1}),
                ),
                k0,
            ),
        ),
        (
            4,
            "service principal",
            mint(
                &entra_header("k0", false),
                &app_only("oid-sp", "uti-sp"),
                k0,
            ),
        ),
        (
            5,
            "managed identity",
            mint(&entra_header("k0", false), &app_only(MI_OID, "uti-mi"), k0),
        ),
        (
            6,
            "expired at request time",
            mint(
                &entra_header("k0", false),
                &patch(v2_user("oid-old", "uti-old"), json!({"exp": T - 120})),
                k0,
            ),
        ),
        (
            7,
            "expired only by ingestion time",
            mint(
                &entra_header("k0", false),
                &patch(v2_user("oid-late", "uti-late"), json!({"exp": T + 30})),
                k0,
            ),
        ),
        (
            8,
            "wrong audience",
            mint(
                &entra_header("k0", false),
                &patch(
                    v2_user("oid-graph", "uti-graph"),
                    json!({"aud": "00000003-0000-0000-c000-000000000000"}),
                ),
                k0,
            ),
        ),
        (
            9,
            "untrusted tenant",
            mint(
                &entra_header("k0", false),
                &patch(
                    v2_user("oid-other", "uti-other"),
                    json!({"iss": v2_iss(OTHER_TID), "tid": OTHER_TID}),
                ),
                k0,
            ),
        ),
        (
            10,
            "bad signature",
            mint(
                &entra_header("k0", false),
                &v2_user("oid-forged", "uti-forged"),
                rogue,
            ),
        ),
        (
            11,
            "alg none",
            format!(
                "{}.{}.",
                b64(br#"{"typ":"JWT","alg":"none"}"#),
                b64(v2_user("oid-none", "uti-none").to_string().as_bytes())
            ),
        ),
    ];
    let mut entries: Vec<HttpAccessLogEntry> =
        tokens.iter().map(|(i, _, t)| with_token(*i, t)).collect();
    // The same user token on 40 more requests: one signature check in all.
    for i in 100..140 {
        entries.push(with_token(i, &user_token));
    }
    // Claims the proxy verified (jwt_authn payload metadata), and a token the proxy rejected.
    let mut proxied = http_entry(12);
    if let Some(c) = proxied.common_properties.as_mut() {
        c.metadata = Some(Metadata {
            filter_metadata: HashMap::from([(
                "envoy.filters.http.jwt_authn".to_owned(),
                jwt_authn_payload(&v2_user("oid-proxied", "uti-proxied")),
            )]),
            ..Default::default()
        });
    }
    entries.push(proxied);
    let mut denied = http_entry(13);
    if let Some(r) = denied.response.as_mut() {
        r.response_code = Some(envoy_types::pb::google::protobuf::UInt32Value { value: 401 });
        r.response_code_details = "jwt_authn_access_denied{Jwt_is_expired}".into();
    }
    if let Some(c) = denied.common_properties.as_mut() {
        c.tls_properties = None; // at the gateway: an external client, no peer certificate
    }
    entries.push(denied);

    let url = c.als_url();
    rt().block_on(async {
        stream(
            &url,
            vec![http_message(Some(identifier(NODE_ID, LOG_NAME)), entries)],
        )
        .await
        .expect("message 1 accepted");
    });
    let checks_after_1 = c.metric("meshaudit_jwt_signature_checks_total");
    // Tokens 1-8 and 10 reach the signature check (untrusted tenant and alg none stop before);
    // the 40 repeats of token 1 are served from the cache.
    assert_eq!(checks_after_1, 9, "one RSA check per distinct token");
    assert!(c.metric("meshaudit_jwt_verification_cache_total{result=\"hit\"}") >= 40);

    // ---- The keys rotate while the collector runs: k1 in, k0 out ----
    server.serve(jwks(&[("k1", k1)]));
    let rotated = mint(
        &entra_header("k1", false),
        &v2_user("oid-dan", "uti-dan"),
        k1,
    );
    let old_key = mint(
        &entra_header("k0", false),
        &v2_user("oid-eve", "uti-eve"),
        k0,
    );
    let mut second = vec![with_token(20, &rotated), with_token(21, &old_key)];
    let mut unknown = vec![];
    // A burst of tokens naming keys nobody publishes: one more fetch at most, not one each.
    for i in 0..20u32 {
        let t = mint(
            &entra_header(&format!("k-unknown-{i}"), false),
            &v2_user("oid-x", "uti-x"),
            rogue,
        );
        second.push(with_token(30 + i, &t));
        unknown.push(t);
    }
    rt().block_on(async {
        stream(
            &url,
            vec![http_message(Some(identifier(NODE_ID, LOG_NAME)), second)],
        )
        .await
        .expect("message 2 accepted");
    });
    assert_eq!(
        server.requests(),
        2,
        "start-up, then one refresh for the rotated kid; unknown kids inside 30 s fetch nothing"
    );
    assert_eq!(c.metric("meshaudit_jwks_fetches_total{result=\"ok\"}"), 2);

    let (status, log) = c.stop();
    assert!(status.success(), "exit {status}:\n{log}");
    assert!(
        log.contains("plain http"),
        "a plain-http --jwks-url is warned about at start-up:\n{log}"
    );

    // ---- Read back ----
    let rows = read_rows(&data);
    assert_eq!(rows.len(), 11 + 40 + 2 + 2 + 20);
    let expect = [
        (1, "user", "jwt_header", "verified"),
        (2, "user", "jwt_header", "verified"),
        (3, "guest", "jwt_header", "verified"),
        (4, "service_principal", "jwt_header", "verified"),
        (5, "managed_identity", "jwt_header", "verified"),
        (6, "user", "jwt_header", "expired"),
        (7, "user", "jwt_header", "verified"),
        (8, "user", "jwt_header", "wrong_audience"),
        (9, "user", "jwt_header", "untrusted_issuer"),
        (10, "user", "jwt_header", "bad_signature"),
        (11, "user", "jwt_header", "bad_signature"),
        (12, "user", "jwt_metadata", "proxy_verified"),
        (13, "anonymous", "none", "expired"),
        (20, "user", "jwt_header", "verified"),
        (21, "user", "jwt_header", "verified"),
    ];
    for (i, kind, source, status) in expect {
        let r = row(&rows, &format!("req-{i}"));
        assert_eq!(
            identity(r),
            (kind.to_owned(), source.to_owned(), status.to_owned()),
            "req-{i}"
        );
    }
    for i in 100..140 {
        assert_eq!(identity(row(&rows, &format!("req-{i}"))).2, "verified");
    }
    for i in 30..50 {
        assert_eq!(identity(row(&rows, &format!("req-{i}"))).2, "unknown_key");
    }

    // Column values of the v2 user, with the directory's names.
    let ada = row(&rows, "req-1");
    let want = json!({
        "tenant_id": TID, "object_id": "oid-ada", "subject": "sub-oid-ada",
        "user_principal": "ada@contoso.example", "display_name": "Ada Example",
        "app_id": WEB_APP, "app_display_name": "orders-web",
        "groups": [GROUP, "5c6d7e8f-0000-4000-8000-00000000b999"],
        "group_names": ["Payments Admins", null], "groups_overage": false,
        "roles": ["Orders.Approver"], "scopes": ["Orders.Read", "Orders.Write"],
        "issuer": v2_iss(TID), "audience": API, "token_version": "2.0", "token_id": "uti-ada",
        "token_issued_at": (T - 300) * 1_000_000, "token_expires_at": (T + 3300) * 1_000_000,
        "auth_methods": null,
        // the mTLS peer stays in the traffic columns
        "source_principal": "spiffe://cluster.local/ns/orders/sa/checkout"
    });
    for (k, v) in want.as_object().expect("object") {
        assert_eq!(&ada[k], v, "req-1 column {k}");
    }
    let bob = row(&rows, "req-2");
    assert_eq!(bob["user_principal"], json!("bob@contoso.example"));
    assert_eq!(bob["auth_methods"], json!(["pwd", "mfa"]));
    assert_eq!(bob["audience"], json!(API_URI));
    assert_eq!(bob["token_version"], json!("1.0"));
    assert_eq!(bob["groups"], Value::Null);
    assert_eq!(bob["group_names"], Value::Null);
    let late = row(&rows, "req-7");
    assert!(
        late["received_at"].as_i64() > late["token_expires_at"].as_i64(),
        "req-7 had expired by ingestion, yet was valid when the request was made"
    );
    let denied = row(&rows, "req-13");
    assert_eq!(denied["groups_overage"], Value::Null, "no token examined");
    assert_eq!(denied["tenant_id"], Value::Null);
    let forged = row(&rows, "req-10");
    assert_eq!(
        forged["object_id"],
        json!("oid-forged"),
        "what the caller claimed is kept"
    );
    assert_eq!(row(&rows, "req-12")["object_id"], json!("oid-proxied"));

    tokens.push((20, "rotated", rotated));
    tokens.push((21, "old key", old_key));
    let mut all: Vec<String> = tokens.into_iter().map(|(_, _, t)| t).collect();
    all.extend(unknown);
    assert_no_token_leaks(&all, &data, &log);
}

/// A key endpoint that never answers must not hold records back: the collector starts after a
/// bounded wait, and records are written with `unknown_key` after a bounded wait.
#[test]
fn unreachable_key_endpoint_still_writes_honest_records() {
    let hole = BlackHole::start();
    let key = rsa_key();
    let dir = tempfile::tempdir().expect("tempdir");
    let jwks_url = format!("http://{}/keys", hole.addr);
    let started = Instant::now();
    let c = Collector::start(
        dir.path(),
        &[
            "--entra-tenant",
            TID,
            "--audience",
            API,
            "--jwks-url",
            &jwks_url,
            "--jwks-timeout-ms",
            "500",
        ],
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "start-up waits a bounded time"
    );

    let token = mint(
        &entra_header("k0", false),
        &v2_user("oid-ada", "uti-ada"),
        &key,
    );
    let entries: Vec<_> = (0..10).map(|i| with_token(i, &token)).collect();
    let sent = Instant::now();
    rt().block_on(async {
        stream(
            &c.als_url(),
            vec![http_message(Some(identifier(NODE_ID, LOG_NAME)), entries)],
        )
        .await
        .expect("accepted");
    });
    // At most one bounded wait (500 ms) for the first record; the rest are rate limited.
    assert!(
        sent.elapsed() < Duration::from_secs(10),
        "took {:?}",
        sent.elapsed()
    );
    assert!(c.metric("meshaudit_jwks_fetches_total{result=\"error\"}") >= 1);
    let (status, log) = c.stop();
    assert!(status.success(), "exit {status}:\n{log}");

    let rows = read_rows(dir.path());
    assert_eq!(rows.len(), 10, "every record written");
    for r in &rows {
        assert_eq!(
            identity(r),
            (
                "user".to_owned(),
                "jwt_header".to_owned(),
                "unknown_key".to_owned()
            )
        );
        assert_eq!(r["tenant_id"], json!(TID), "claims kept, not trusted");
    }
    assert_no_token_leaks(&[token], dir.path(), &log);
}
