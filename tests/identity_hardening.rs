//! Identity claims that are not evidence (issue 15, item 3 and the payload-header point),
//! through the real binary: Istio peer metadata without a certificate is `peer_metadata`, not
//! `mtls`, in records and in the report; a forwarded claims header is `proxy_verified` only when
//! its issuer and audience are the configured ones.

mod common;

use std::process::Command;

use common::jwt::*;
use common::*;
use envoy_types::pb::envoy::data::accesslog::v3::HttpAccessLogEntry;
use envoy_types::pb::google::protobuf::{value::Kind, Any};
use prost::Message as _;
use serde_json::{json, Value};

const TID: &str = "11111111-2222-3333-4444-555555555555";
const OTHER_TID: &str = "99999999-2222-3333-4444-555555555555";
const API: &str = "7f1b2c3d-0000-4000-8000-00000000a001";
const T: i64 = START_SECS;

fn rows_by_request(data: &std::path::Path) -> std::collections::BTreeMap<String, Row> {
    read_rows(data)
        .into_iter()
        .map(|r| (r["request_id"].as_str().expect("request_id").to_owned(), r))
        .collect()
}

fn identity(r: &Row) -> (&str, &str, &str) {
    let s = |k: &str| r[k].as_str().unwrap_or("<null>");
    (s("identity_kind"), s("identity_source"), s("token_status"))
}

#[test]
fn forwarded_claims_must_name_a_configured_issuer_and_audience() {
    let k0 = rsa_key();
    let server = JwksServer::start(jwks(&[("k0", &k0)]));
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let jwks_url = server.url();
    let c = Collector::start(
        &data,
        &[
            "--entra-tenant",
            TID,
            "--audience",
            API,
            "--jwks-url",
            &jwks_url,
            "--payload-header",
            "x-jwt-payload",
        ],
    );
    let claims = |patch: Value| {
        let mut v = json!({
            "aud": API, "iss": format!("https://login.microsoftonline.com/{TID}/v2.0"),
            "ver": "2.0", "iat": T - 300, "nbf": T - 300, "exp": T + 3300, "tid": TID,
            "oid": "oid-ada", "sub": "sub-ada", "preferred_username": "ada@contoso.example"
        });
        if let (Some(o), Some(p)) = (v.as_object_mut(), patch.as_object()) {
            for (k, x) in p {
                o.insert(k.clone(), x.clone());
            }
        }
        b64(v.to_string().as_bytes())
    };
    let cases: Vec<(u32, String, &str)> = vec![
        (1, claims(json!({})), "proxy_verified"),
        (
            2,
            claims(json!({"iss": format!("https://login.microsoftonline.com/{OTHER_TID}/v2.0")})),
            "untrusted_issuer",
        ),
        (
            3,
            // A near-miss spelling of the v1 issuer (no trailing slash).
            claims(json!({"iss": format!("https://sts.windows.net/{TID}")})),
            "untrusted_issuer",
        ),
        (4, claims(json!({"iss": null})), "untrusted_issuer"),
        (
            5,
            claims(json!({"aud": "api://someone-else"})),
            "wrong_audience",
        ),
        (
            6,
            claims(json!({"aud": [API, "api://x"]})),
            "proxy_verified",
        ),
    ];
    let entries: Vec<HttpAccessLogEntry> = cases
        .iter()
        .map(|(i, header, _)| {
            let mut e = http_entry(*i);
            if let Some(req) = e.request.as_mut() {
                req.request_headers
                    .insert("x-jwt-payload".into(), header.clone());
            }
            e
        })
        .collect();
    send(
        &c,
        vec![vec![http_message(
            Some(identifier(NODE_ID, LOG_NAME)),
            entries,
        )]],
    );
    let (status, output) = c.stop();
    assert!(status.success(), "{output}");
    let rows = rows_by_request(&data);
    for (i, _, want) in &cases {
        let r = &rows[&format!("req-{i}")];
        assert_eq!(
            identity(r),
            ("user", "payload_header", *want),
            "req-{i}: {r:?}"
        );
    }
}

#[test]
fn peer_metadata_without_a_certificate_is_not_mtls_in_records_or_reports() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let c = Collector::start(&data, &[]);
    // req-1: the harness's entry, with the peer certificate's SPIFFE ID.
    // req-2: no TLS properties, only Istio's downstream_peer filter state.
    let mut meta_only = http_entry(2);
    if let Some(cp) = meta_only.common_properties.as_mut() {
        cp.tls_properties = None;
        cp.filter_state_objects.insert(
            "downstream_peer".to_owned(),
            Any {
                type_url: "type.googleapis.com/google.protobuf.Struct".to_owned(),
                value: match to_pb(&json!({"namespace": "orders", "workload": "checkout"})).kind {
                    Some(Kind::StructValue(s)) => s.encode_to_vec(),
                    _ => unreachable!("an object converts to a Struct"),
                },
            },
        );
    }
    send(
        &c,
        vec![vec![http_message(
            Some(identifier(NODE_ID, LOG_NAME)),
            vec![http_entry(1), meta_only],
        )]],
    );
    let (status, output) = c.stop();
    assert!(status.success(), "{output}");
    let rows = rows_by_request(&data);
    let cert = &rows["req-1"];
    assert_eq!(identity(cert), ("workload", "mtls", "absent"));
    assert_eq!(
        cert["source_principal"],
        json!("spiffe://cluster.local/ns/orders/sa/checkout")
    );
    let meta = &rows["req-2"];
    assert_eq!(identity(meta), ("workload", "peer_metadata", "absent"));
    assert_eq!(meta["source_principal"], Value::Null);
    assert_eq!(meta["source_workload"], json!("checkout"));

    // The report counts them apart.
    let out_dir = dir.path().join("report");
    let out = Command::new(env!("CARGO_BIN_EXE_meshaudit"))
        .args([
            "report",
            "--from",
            "2026-03-02T00:00:00Z",
            "--to",
            "2026-03-03T00:00:00Z",
        ])
        .arg("--data-dir")
        .arg(&data)
        .arg("--out")
        .arg(&out_dir)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run meshaudit report");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("report.json")).expect("report.json"))
            .expect("JSON");
    let access = doc["sections"]
        .as_array()
        .expect("sections")
        .iter()
        .find(|s| s["id"] == "access_review")
        .expect("access_review");
    assert_eq!(
        access["totals"],
        json!({"requests": 2, "verified": 0, "mtls_workload": 1, "peer_metadata_workload": 1, "unverified": 0, "denied": 0})
    );
}
