//! The subset in proto/meshaudit/v1/als_subset.proto must read the bytes Envoy's full generated
//! types write, field for field, while skipping every field it does not declare.

mod common;

use std::collections::HashMap;

use bytes::Bytes;
use envoy_types::pb::envoy::data::accesslog::v3 as full;
use envoy_types::pb::google::protobuf::{value::Kind, Any, Struct, Value};
use meshaudit::ingest::wire;
use prost::Message;

fn s(v: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(v.into())),
    }
}

#[test]
fn subset_decodes_what_envoy_encodes() {
    let mut e = common::http_entry(7);
    let c = e.common_properties.as_mut().expect("common");
    // Fields the subset skips, set so that skipping is exercised.
    c.sample_rate = 0.5;
    c.downstream_local_address = Some(common::socket("10.0.0.1", 15006));
    c.stream_id = "stream-7".into();
    c.access_log_type = 6;
    c.custom_tags = HashMap::from([("k".into(), "v".into())]);
    c.connection_termination_details = "rbac_access_denied_matched_policy[none]".into();
    c.response_flags = Some(full::ResponseFlags {
        no_healthy_upstream: true,
        downstream_remote_reset: true,
        unauthorized_details: Some(full::response_flags::Unauthorized { reason: 1 }),
        ..Default::default()
    });
    let claims = Struct {
        fields: [("oid".to_owned(), s("9e8d"))].into(),
    };
    let payload = Struct {
        fields: [(
            "payload".to_owned(),
            Value {
                kind: Some(Kind::StructValue(claims)),
            },
        )]
        .into(),
    };
    c.metadata = Some(envoy_types::pb::envoy::config::core::v3::Metadata {
        filter_metadata: [("envoy.filters.http.jwt_authn".to_owned(), payload.clone())].into(),
        ..Default::default()
    });
    let peer = Struct {
        fields: [("namespace".to_owned(), s("orders"))].into(),
    };
    c.filter_state_objects = [(
        "downstream_peer".to_owned(),
        Any {
            type_url: "type.googleapis.com/google.protobuf.Struct".into(),
            value: peer.encode_to_vec(),
        },
    )]
    .into();
    if let Some(r) = e.request.as_mut() {
        r.referer = "https://example.com/".into();
        r.request_headers
            .insert("authorization".into(), "Bearer x".into());
    }
    let bytes = Bytes::from(e.encode_to_vec());

    let sub = wire::HttpAccessLogEntry::decode(bytes).expect("subset decodes Envoy's bytes");
    let sc = sub.common_properties.as_ref().expect("common");
    let fc = e.common_properties.as_ref().expect("common");
    assert_eq!(sub.protocol_version, e.protocol_version);
    let ts = sc.start_time.as_ref().expect("start");
    let fts = fc.start_time.as_ref().expect("start");
    assert_eq!((ts.seconds, ts.nanos), (fts.seconds, fts.nanos));
    assert_eq!(&sc.upstream_cluster[..], fc.upstream_cluster.as_bytes());
    assert_eq!(&sc.route_name[..], fc.route_name.as_bytes());
    assert_eq!(
        &sc.connection_termination_details[..],
        fc.connection_termination_details.as_bytes()
    );
    let flags = sc.response_flags.as_ref().expect("flags");
    assert!(flags.no_healthy_upstream && flags.downstream_remote_reset);
    assert_eq!(
        flags.unauthorized_details.as_ref().map(|u| u.reason),
        Some(1)
    );
    let addr = sc
        .downstream_remote_address
        .as_ref()
        .and_then(|a| a.socket_address.as_ref())
        .expect("addr");
    assert_eq!(
        (&addr.address[..], addr.port_value),
        (&b"10.1.2.3"[..], 40007)
    );
    let md = sc.metadata.as_ref().expect("metadata");
    assert_eq!(md.filter_metadata.len(), 1);
    assert_eq!(
        &md.filter_metadata[0].key[..],
        b"envoy.filters.http.jwt_authn"
    );
    assert_eq!(
        Struct::decode(&md.filter_metadata[0].value[..]).expect("struct"),
        payload
    );
    assert_eq!(sc.filter_state_objects.len(), 1);
    let peer_any = sc.filter_state_objects[0].value.as_ref().expect("any");
    assert_eq!(Struct::decode(&peer_any.value[..]).expect("peer"), peer);
    let uri = |p: &Option<wire::CertificateProperties>| match p
        .as_ref()
        .and_then(|c| c.subject_alt_name.first())
        .and_then(|s| s.san.clone())
    {
        Some(wire::subject_alt_name::San::Uri(u)) => String::from_utf8(u.to_vec()).expect("utf8"),
        other => panic!("no uri SAN: {other:?}"),
    };
    let tls = sc.tls_properties.as_ref().expect("tls");
    assert_eq!(
        uri(&tls.peer_certificate_properties),
        "spiffe://cluster.local/ns/orders/sa/checkout"
    );
    assert_eq!(
        uri(&tls.local_certificate_properties),
        "spiffe://cluster.local/ns/shop/sa/orders"
    );
    let req = sub.request.as_ref().expect("request");
    let freq = e.request.as_ref().expect("request");
    assert_eq!(req.request_method, freq.request_method);
    assert_eq!(&req.path[..], freq.path.as_bytes());
    assert_eq!(&req.request_id[..], freq.request_id.as_bytes());
    assert_eq!(req.request_body_bytes, freq.request_body_bytes);
    let mut headers: Vec<(String, String)> = req
        .request_headers
        .iter()
        .map(|h| {
            (
                String::from_utf8_lossy(&h.key).into_owned(),
                String::from_utf8_lossy(&h.value).into_owned(),
            )
        })
        .collect();
    headers.sort();
    let mut fheaders: Vec<(String, String)> = freq.request_headers.clone().into_iter().collect();
    fheaders.sort();
    assert_eq!(headers, fheaders);
    let resp = sub.response.as_ref().expect("response");
    assert_eq!(resp.response_code.as_ref().map(|c| c.value), Some(201));
    assert_eq!(&resp.response_code_details[..], b"via_upstream");
}

#[test]
fn identifier_and_entries_survive_the_stream_message() {
    let msg = common::http_message(
        Some(common::identifier(common::NODE_ID, common::LOG_NAME)),
        vec![common::http_entry(1), common::http_entry(2)],
    );
    let sub =
        wire::StreamAccessLogsMessage::decode(Bytes::from(msg.encode_to_vec())).expect("decodes");
    let id = sub.identifier.as_ref().expect("identifier");
    assert_eq!(&id.log_name[..], common::LOG_NAME.as_bytes());
    assert_eq!(
        &id.node.as_ref().expect("node").id[..],
        common::NODE_ID.as_bytes()
    );
    let Some(wire::stream_access_logs_message::LogEntries::HttpLogs(h)) = sub.log_entries else {
        panic!("http logs")
    };
    assert_eq!(h.log_entry.len(), 2);
    // Each kept entry is exactly the bytes Envoy encoded for it.
    assert_eq!(
        &h.log_entry[1][..],
        &common::http_entry(2).encode_to_vec()[..]
    );
}
