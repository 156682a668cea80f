//! The OTLP logs receiver end to end: the real binary, OTLP written with the OpenTelemetry
//! project's own generated client and types (`opentelemetry-proto`), Parquet read back.
//!
//! - The same request sent as an ALS entry and as an OTLP LogRecord carrying the documented
//!   attributes (docs/otlp-attributes.md) makes the same record, column for column, but
//!   record_id, log_name and received_at.
//! - A Collector-style batch mixing sources: records that are not Envoy access logs are refused
//!   through ExportLogsPartialSuccess with a reason and counted; nothing empty is stored.

mod common;

use std::collections::HashMap;

use common::jwt::jwt_authn_payload;
use common::*;
use envoy_types::pb::envoy::config::core::v3::Metadata;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use serde_json::json;

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..Default::default()
    }
}

fn claims() -> serde_json::Value {
    json!({"iss": "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0",
           "tid": "11111111-2222-3333-4444-555555555555", "oid": "oid-otlp", "azp": "app-1",
           "scp": "Orders.Read", "ver": "2.0", "exp": 1_772_450_000, "uti": "uti-otlp"})
}

const RBAC_JSON: &str = r#"{"shadow_engine_result":"allowed","enforced_engine_result":"allowed"}"#;

/// `http_entry(i)` with the proxy-verified claims and an RBAC result, as the ALS logger sends it.
fn als_entry(i: u32) -> envoy_types::pb::envoy::data::accesslog::v3::HttpAccessLogEntry {
    let mut e = http_entry(i);
    if let Some(c) = e.common_properties.as_mut() {
        let rbac: serde_json::Value = serde_json::from_str(RBAC_JSON).expect("json");
        let rbac = match common::jwt::to_pb(&rbac).kind {
            Some(envoy_types::pb::google::protobuf::value::Kind::StructValue(s)) => s,
            _ => unreachable!(),
        };
        c.metadata = Some(Metadata {
            filter_metadata: HashMap::from([
                (
                    "envoy.filters.http.jwt_authn".to_owned(),
                    jwt_authn_payload(&claims()),
                ),
                ("envoy.filters.http.rbac".to_owned(), rbac),
            ]),
            ..Default::default()
        });
    }
    e
}

/// The same request as Envoy's OpenTelemetry logger sends it with the documented labels: every
/// value a string, `-` for a missing one, start time in `time_unix_nano`.
fn otlp_record(i: u32) -> LogRecord {
    let attrs = [
        ("envoy.node.id", NODE_ID.to_owned()),
        ("envoy.node.cluster", "checkout.orders".to_owned()),
        ("envoy.log_name", "otel_envoy_accesslog".to_owned()),
        ("envoy.protocol", "HTTP/2".to_owned()),
        ("http.request.method", "POST".to_owned()),
        ("url.scheme", "https".to_owned()),
        (
            "envoy.request.authority",
            "orders.shop.svc.cluster.local:8080".to_owned(),
        ),
        ("envoy.request.path", format!("/orders/{i}")),
        ("user_agent.original", "curl/8.5".to_owned()),
        ("envoy.request_id", format!("req-{i}")),
        ("envoy.bytes_received", "120".to_owned()),
        ("envoy.bytes_sent", "2048".to_owned()),
        ("http.response.status_code", "201".to_owned()),
        ("envoy.response_code_details", "via_upstream".to_owned()),
        ("envoy.response_flags", "-".to_owned()),
        ("envoy.connection_termination_details", "-".to_owned()),
        ("envoy.route_name", "orders".to_owned()),
        (
            "envoy.upstream.cluster",
            "outbound|8080||orders.shop.svc.cluster.local".to_owned(),
        ),
        ("envoy.upstream.host", "10.9.8.7:8080".to_owned()),
        ("client.address", "10.1.2.3".to_owned()),
        ("envoy.duration_ns", "23500000".to_owned()),
        (
            "envoy.downstream.peer_uri_san",
            "spiffe://cluster.local/ns/orders/sa/checkout".to_owned(),
        ),
        (
            "envoy.downstream.local_uri_san",
            "spiffe://cluster.local/ns/shop/sa/orders".to_owned(),
        ),
        (
            "envoy.dynamic_metadata.envoy.filters.http.jwt_authn",
            json!({ "payload": claims() }).to_string(),
        ),
        (
            "envoy.dynamic_metadata.envoy.filters.http.rbac",
            RBAC_JSON.to_owned(),
        ),
        (
            "envoy.dynamic_metadata.envoy.filters.http.ext_authz",
            "-".to_owned(),
        ),
        (
            "http.request.header.traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
        ),
        ("http.request.header.authorization", "-".to_owned()),
    ];
    LogRecord {
        time_unix_nano: (START_SECS as u64) * 1_000_000_000 + START_NANOS as u64,
        body: Some(AnyValue {
            value: Some(any_value::Value::StringValue(format!(
                "[2026-03-02T10:15:04.118Z] \"POST /orders/{i} HTTP/2\" 201"
            ))),
        }),
        attributes: attrs.iter().map(|(k, v)| kv(k, v)).collect(),
        ..Default::default()
    }
}

fn request(resource_logs: Vec<(Vec<KeyValue>, Vec<LogRecord>)>) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: resource_logs
            .into_iter()
            .map(|(attributes, log_records)| ResourceLogs {
                resource: Some(Resource {
                    attributes,
                    ..Default::default()
                }),
                scope_logs: vec![ScopeLogs {
                    log_records,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    }
}

async fn export(
    c: &Collector,
    req: ExportLogsServiceRequest,
) -> Result<ExportLogsServiceResponse, tonic::Status> {
    let mut client = LogsServiceClient::connect(c.otlp_url())
        .await
        .map_err(|e| tonic::Status::unavailable(format!("connect: {e}")))?;
    client.export(req).await.map(tonic::Response::into_inner)
}

fn strip(mut row: Row) -> Row {
    for k in ["record_id", "log_name", "received_at"] {
        row.remove(k);
    }
    row
}

#[test]
fn the_same_request_makes_the_same_record_from_als_and_otlp() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Collector::start(dir.path(), &[]);
    send(
        &c,
        vec![vec![http_message(
            Some(identifier(NODE_ID, LOG_NAME)),
            vec![als_entry(1)],
        )]],
    );
    let resp = rt()
        .block_on(export(&c, request(vec![(vec![], vec![otlp_record(2)])])))
        .expect("export accepted");
    assert_eq!(resp.partial_success, None, "nothing refused");
    assert_eq!(c.metric("meshaudit_otlp_log_records_accepted_total"), 1);
    let (status, output) = c.stop();
    assert!(status.success(), "exit {status}:\n{output}");

    let rows = read_rows(dir.path());
    assert_eq!(rows.len(), 2, "{rows:#?}");
    let by_id = |id: &str| {
        rows.iter()
            .find(|r| r["request_id"] == json!(id))
            .cloned()
            .unwrap_or_else(|| panic!("no {id}"))
    };
    let (als, otlp) = (by_id("req-1"), by_id("req-2"));
    assert_eq!(otlp["log_name"], json!("otel_envoy_accesslog"));
    assert_eq!(otlp["token_status"], json!("proxy_verified"));
    assert_eq!(otlp["decision"], json!("allow"));
    assert_eq!(otlp["object_id"], json!("oid-otlp"));
    // Only the numbered fields differ between the two requests: align them, then compare all.
    let mut otlp = strip(otlp);
    for (k, v) in [("request_id", json!("req-1")), ("path", json!("/orders/1"))] {
        otlp.insert(k.to_owned(), v);
    }
    assert_eq!(strip(als), otlp);
}

#[test]
fn a_mixed_collector_batch_stores_the_access_logs_and_refuses_the_rest_with_reasons() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Collector::start(dir.path(), &[]);
    let app_log = LogRecord {
        time_unix_nano: 1,
        body: Some(AnyValue {
            value: Some(any_value::Value::StringValue("user logged in".into())),
        }),
        attributes: vec![kv("http.route", "/login")],
        ..Default::default()
    };
    let mut bad_metadata = otlp_record(3);
    bad_metadata.attributes.push(kv(
        "envoy.dynamic_metadata.envoy.filters.http.rbac",
        "{not json",
    ));
    // A label-less envoyOtelAls provider: Istio's default line only, resource attributes of a
    // hand-configured Envoy (built-in labels on).
    let default_line = LogRecord {
        time_unix_nano: (START_SECS as u64) * 1_000_000_000,
        body: Some(AnyValue {
            value: Some(any_value::Value::StringValue(
                "[2026-03-02T10:15:04.000Z] \"GET /orders/9?code=s3cret HTTP/1.1\" 200 - via_upstream - \"-\" 0 512 7 6 \"-\" \"curl/8.5\" \"req-9\" \"orders.example\" \"10.9.8.7:8080\" outbound|8080||orders.shop.svc.cluster.local 10.0.0.5:40000 10.0.0.5:8080 10.1.2.3:51234 - default\n".into(),
            )),
        }),
        ..Default::default()
    };
    let resource = vec![
        kv("log_name", "otel_default"),
        kv("node_name", "gw-node"),
        kv("cluster_name", "gw-cluster"),
    ];
    let req = request(vec![
        (vec![kv("service.name", "login-app")], vec![app_log]),
        (
            resource,
            vec![
                otlp_record(4),
                bad_metadata,
                default_line,
                LogRecord::default(),
            ],
        ),
    ]);
    let resp = rt().block_on(export(&c, req)).expect("export answered");
    let partial = resp.partial_success.expect("partial success");
    assert_eq!(partial.rejected_log_records, 3, "{partial:?}");
    assert!(
        partial.error_message.contains("not an Envoy access log"),
        "{}",
        partial.error_message
    );
    assert_eq!(c.metric("meshaudit_otlp_log_records_accepted_total"), 2);
    assert_eq!(c.metric("meshaudit_otlp_log_records_text_only_total"), 1);
    let refused = c.metrics();
    for (reason, n) in [("not_access_log", 2), ("bad_attribute", 1)] {
        let line = format!("meshaudit_otlp_log_records_refused_total{{reason=\"{reason}\"}} {n}");
        assert!(refused.contains(&line), "{line} in\n{refused}");
    }
    let (status, output) = c.stop();
    assert!(status.success(), "exit {status}:\n{output}");
    assert!(!output.contains("s3cret"), "query secret in the log");

    let rows = read_rows(dir.path());
    assert_eq!(rows.len(), 2, "{rows:#?}");
    let text = rows
        .iter()
        .find(|r| r["request_id"] == json!("req-9"))
        .expect("the default-format record");
    for (k, v) in [
        ("entry_kind", json!("http")),
        ("method", json!("GET")),
        ("path", json!("/orders/9?code=REDACTED")),
        ("status_code", json!(200)),
        ("response_bytes", json!(512)),
        ("client_address", json!("10.1.2.3")),
        ("upstream_host", json!("10.9.8.7:8080")),
        ("node_id", json!("gw-node")),
        ("mesh_cluster", json!("gw-cluster")),
        ("log_name", json!("otel_default")),
        ("token_status", json!("absent")),
        ("decision", json!("unevaluated")),
        ("duration_ms", json!(7.0)),
    ] {
        assert_eq!(text[k], v, "{k}");
    }
    let attrs = rows
        .iter()
        .find(|r| r["request_id"] == json!("req-4"))
        .expect("the attribute record");
    // The record's own labels win over the resource's built-in ones.
    assert_eq!(attrs["node_id"], json!(NODE_ID));
    assert_eq!(attrs["log_name"], json!("otel_envoy_accesslog"));
}

#[test]
fn the_otlp_listener_can_be_turned_off_and_a_bad_address_names_the_setting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Collector::start(dir.path(), &["--otlp-addr", "off"]);
    assert!(
        std::net::TcpStream::connect(c.otlp_addr).is_err(),
        "nothing listens on the OTLP address"
    );
    let (status, output) = c.stop();
    assert!(status.success(), "exit {status}:\n{output}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshaudit"))
        .args(["serve", "--data-dir"])
        .arg(dir.path())
        .env("MESHAUDIT_OTLP_ADDR", "4317")
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    for want in [
        "otlp_addr",
        "--otlp-addr",
        "MESHAUDIT_OTLP_ADDR",
        "Fix:",
        "off",
    ] {
        assert!(err.contains(want), "{want} in {err}");
    }
}

#[test]
fn the_otlp_listener_takes_the_als_tls_and_spiffe_allow_list() {
    use common::tls::{tls_channel, Pki};
    const GATEWAY: &str = "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway";
    const CHECKOUT: &str = "spiffe://cluster.local/ns/orders/sa/checkout";
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(dir.path(), "mesh");
    let mut args = pki.server_args(true);
    args.extend(["--als-allowed-spiffe-id".to_owned(), GATEWAY.to_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let c = Collector::start(&dir.path().join("data"), &args);
    let (addr, ca) = (c.otlp_addr, pki.ca_pem.clone());
    rt().block_on(async {
        let send = |id: Option<tonic::transport::Identity>, i: u32| {
            let ca = ca.clone();
            async move {
                let channel = tls_channel(addr, &ca, id).await?;
                LogsServiceClient::new(channel)
                    .export(request(vec![(vec![], vec![otlp_record(i)])]))
                    .await
            }
        };
        let ok = send(Some(pki.client(&[GATEWAY])), 1)
            .await
            .expect("allowed");
        assert_eq!(ok.into_inner().partial_success, None);
        let err = send(Some(pki.client(&[CHECKOUT])), 2)
            .await
            .expect_err("not on the list");
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
        let err = send(None, 3).await.expect_err("no certificate");
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    });
    assert_eq!(c.metric("meshaudit_otlp_log_records_accepted_total"), 1);
    assert_eq!(
        c.metric("meshaudit_als_messages_rejected_total{reason=\"not_allowed\"}"),
        1
    );
    let (status, output) = c.stop();
    assert!(status.success(), "exit {status}:\n{output}");
    let rows = read_rows(&dir.path().join("data"));
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["request_id"], json!("req-1"));
}

#[test]
fn a_request_that_does_not_decode_is_refused_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Collector::start(dir.path(), &[]);
    let (code, message) = rt().block_on(async {
        let mut client = common::raw::connect(c.otlp_addr).await;
        let req = http::Request::post("/opentelemetry.proto.collector.logs.v1.LogsService/Export")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .expect("request");
        let (resp, mut body) = client.send_request(req, false).expect("send");
        // Field 1 (resource_logs) claiming 100 bytes, 2 present.
        body.send_data(common::raw::frame(&[0x0a, 100, 1, 2]), true)
            .expect("data");
        common::raw::grpc_status(resp).await.expect("status")
    });
    assert_eq!(code, tonic::Code::InvalidArgument as i32, "{message}");
    assert_eq!(
        c.metric("meshaudit_als_messages_rejected_total{reason=\"malformed\"}"),
        1
    );
    let (status, output) = c.stop();
    assert!(status.success(), "exit {status}:\n{output}");
    assert!(read_rows(dir.path()).is_empty());
}
