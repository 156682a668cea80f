//! Micro-benchmark of the hot path after gRPC framing: decode one Istio-shaped entry from the
//! subset types and join it into an audit record. Throughput is reported per entry.
//! Run: `cargo bench --bench join`. The end-to-end figures live in scripts/bench.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use envoy_types::pb::envoy::config::core::v3::{
    address, socket_address, Address, Metadata, SocketAddress,
};
use envoy_types::pb::envoy::data::accesslog::v3::{
    tls_properties::{
        certificate_properties::subject_alt_name::San, certificate_properties::SubjectAltName,
        CertificateProperties,
    },
    AccessLogCommon, HttpAccessLogEntry, HttpRequestProperties, HttpResponseProperties,
    TlsProperties,
};
use envoy_types::pb::google::protobuf::{
    value::Kind, Any, Duration, ListValue, Struct, Timestamp, UInt32Value, Value,
};
use meshaudit::ingest::wire;
use meshaudit::join::{Joiner, StreamContext};
use meshaudit::record::id::EntryType;
use prost::Message;

fn s(v: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(v.into())),
    }
}
fn n(v: f64) -> Value {
    Value {
        kind: Some(Kind::NumberValue(v)),
    }
}
fn list(v: &[&str]) -> Value {
    Value {
        kind: Some(Kind::ListValue(ListValue {
            values: v.iter().map(|x| s(x)).collect(),
        })),
    }
}
fn st(fields: Vec<(&str, Value)>) -> Struct {
    Struct {
        fields: fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
    }
}
fn addr(ip: &str, port: u32) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.into(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}
fn cert(uri: &str) -> CertificateProperties {
    CertificateProperties {
        subject_alt_name: vec![SubjectAltName {
            san: Some(San::Uri(uri.into())),
        }],
        ..Default::default()
    }
}

/// An entry shaped like decode-costs.md's: 17 Entra claims, RBAC metadata, a downstream_peer
/// Struct, SPIFFE SANs and a ~1.3 KB authorization header.
fn istio_entry(i: u32) -> HttpAccessLogEntry {
    let claims = st(vec![
        ("aud", s("7f1b2c3d-0000-4000-8000-00000000a001")),
        (
            "iss",
            s("https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0"),
        ),
        ("iat", n(1772445600.0)),
        ("nbf", n(1772445600.0)),
        ("exp", n(1772450400.0)),
        ("azp", s("2a3b4c5d-0000-4000-8000-00000000c001")),
        ("azpacr", s("0")),
        ("name", s("Ada Example")),
        ("preferred_username", s("ada@contoso.example")),
        ("oid", s("9e8d7c6b-0000-4000-8000-00000000e001")),
        ("sub", s("Xy3kQ2bdlP0sR7mK9vWz1aB4cD5eF6gH7iJ8kL9mN0o")),
        ("tid", s("11111111-2222-3333-4444-555555555555")),
        ("scp", s("Orders.Read Orders.Write")),
        ("roles", list(&["Orders.Approver"])),
        (
            "groups",
            list(&[
                "5c6d7e8f-0000-4000-8000-00000000b001",
                "5c6d7e8f-0000-4000-8000-00000000b002",
            ]),
        ),
        ("ver", s("2.0")),
        ("uti", s("AbCdEfGhIjKlMnOpQrStUv")),
    ]);
    let jwt = st(vec![(
        "payload",
        Value {
            kind: Some(Kind::StructValue(claims)),
        },
    )]);
    let rbac = st(vec![
        ("enforced_engine_result", s("allowed")),
        (
            "enforced_effective_policy_id",
            s("ns[istio-system]-policy[require-entra-jwt]-rule[0]"),
        ),
        ("istio_dry_run_deny_shadow_engine_result", s("allowed")),
    ]);
    let peer = st(vec![
        ("type", s("deployment")),
        ("workload", s("checkout")),
        ("name", s("checkout-7d9f")),
        ("namespace", s("orders")),
        ("cluster", s("Kubernetes")),
        ("service", s("checkout")),
        ("revision", s("v1")),
        (
            "identity",
            s("spiffe://cluster.local/ns/orders/sa/checkout"),
        ),
    ]);
    let token = format!(
        "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0.{}.{}",
        "A".repeat(900),
        "B".repeat(342)
    );
    HttpAccessLogEntry {
        common_properties: Some(AccessLogCommon {
            downstream_remote_address: Some(addr("10.1.2.3", 40000 + i)),
            upstream_remote_address: Some(addr("10.9.8.7", 8080)),
            start_time: Some(Timestamp {
                seconds: 1_772_446_504,
                nanos: 118_123_456,
            }),
            time_to_last_downstream_tx_byte: Some(Duration {
                seconds: 0,
                nanos: 23_500_000,
            }),
            upstream_cluster: "outbound|8080||orders.shop.svc.cluster.local".into(),
            route_name: "orders".into(),
            tls_properties: Some(TlsProperties {
                peer_certificate_properties: Some(cert(
                    "spiffe://cluster.local/ns/orders/sa/checkout",
                )),
                local_certificate_properties: Some(cert(
                    "spiffe://cluster.local/ns/shop/sa/orders",
                )),
                ..Default::default()
            }),
            metadata: Some(Metadata {
                filter_metadata: [
                    ("envoy.filters.http.jwt_authn".to_owned(), jwt),
                    ("envoy.filters.http.rbac".to_owned(), rbac),
                ]
                .into(),
                ..Default::default()
            }),
            filter_state_objects: [(
                "downstream_peer".to_owned(),
                Any {
                    type_url: "type.googleapis.com/google.protobuf.Struct".into(),
                    value: peer.encode_to_vec(),
                },
            )]
            .into(),
            ..Default::default()
        }),
        protocol_version: 3,
        request: Some(HttpRequestProperties {
            request_method: 3,
            scheme: "https".into(),
            authority: "orders.shop.svc.cluster.local:8080".into(),
            path: format!("/orders/{i}?page=2&code=abc"),
            user_agent: "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36".into(),
            request_id: format!("0b6f1c7e-0000-4000-8000-{i:012}"),
            request_body_bytes: 120,
            request_headers: [
                ("authorization".to_owned(), format!("Bearer {token}")),
                (
                    "traceparent".to_owned(),
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
                ),
            ]
            .into(),
            ..Default::default()
        }),
        response: Some(HttpResponseProperties {
            response_code: Some(UInt32Value { value: 201 }),
            response_body_bytes: 2048,
            response_code_details: "via_upstream".into(),
            ..Default::default()
        }),
    }
}

fn bench(c: &mut Criterion) {
    let entries: Vec<Bytes> = (0..100)
        .map(|i| Bytes::from(istio_entry(i).encode_to_vec()))
        .collect();
    let avg = entries.iter().map(Bytes::len).sum::<usize>() / entries.len();
    eprintln!("entry size: {avg} bytes on average");
    let ident = wire::Identifier {
        node: Some(wire::Node { id: Bytes::from_static(b"router~10.244.1.7~istio-ingressgateway-7d9c6b7f5-q8k2m.istio-system~istio-system.svc.cluster.local"), cluster: Bytes::from_static(b"istio-ingressgateway.istio-system") }),
        log_name: Bytes::from_static(b"http_envoy_accesslog"),
    };
    let ctx = StreamContext::from_identifier(&ident);
    let joiner = Joiner::default();

    let mut g = c.benchmark_group("hot_path");
    g.throughput(Throughput::Elements(entries.len() as u64));
    g.bench_function("join_100_istio_entries", |b| {
        b.iter(|| {
            for e in &entries {
                black_box(
                    joiner
                        .join(&ctx, EntryType::Http, e, 1_772_446_505_000_000)
                        .expect("joins"),
                );
            }
        })
    });
    g.bench_function("full_envoy_types_decode_100_entries", |b| {
        b.iter(|| {
            for e in &entries {
                black_box(HttpAccessLogEntry::decode(e.clone()).expect("decodes"));
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
