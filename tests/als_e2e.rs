//! End to end: the real binary, Envoy's generated client, Parquet read back.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

#[test]
fn http_and_tcp_entries_over_concurrent_streams_land_in_parquet() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Collector::start(dir.path(), &[]);
    let url = c.als_url();
    rt().block_on(async {
        let mut tasks = vec![];
        for s in 0..4u32 {
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                // Identifier on the first message only, as Envoy sends it.
                let mut msgs = vec![];
                for m in 0..3u32 {
                    let ident = (m == 0).then(|| identifier(NODE_ID, LOG_NAME));
                    let base = s * 100 + m * 10;
                    msgs.push(if s % 2 == 0 {
                        http_message(ident, (0..5).map(|i| http_entry(base + i)).collect())
                    } else {
                        tcp_message(ident, (0..5).map(|i| tcp_entry(base + i)).collect())
                    });
                }
                stream(&url, msgs).await
            }));
        }
        for t in tasks {
            t.await.expect("task").expect("stream accepted");
        }
    });
    assert_eq!(c.metric("meshaudit_als_entries_received_total"), 60);
    let (status, output) = c.stop();
    assert!(status.success(), "exit {status}:\n{output}");

    let rows = read_rows(dir.path());
    assert_eq!(rows.len(), 60);
    for f in all_files(dir.path()) {
        let rel = f
            .strip_prefix(dir.path())
            .expect("under data dir")
            .to_string_lossy()
            .into_owned();
        // The durable spool lives under the data dir too; none of its files end in .parquet.
        if rel.starts_with("_spool/") {
            assert!(!rel.ends_with(".parquet"), "{rel}");
            continue;
        }
        assert!(
            rel.starts_with("dt=2026-03-02/hour=10/part-") && rel.ends_with(".parquet"),
            "unexpected file {rel}"
        );
    }

    let http = rows
        .iter()
        .find(|r| r["request_id"] == json!("req-3"))
        .expect("entry 3 of stream 0");
    let want = json!({
        "entry_kind": "http", "protocol": "HTTP/2", "method": "POST", "scheme": "https",
        "authority": "orders.shop.svc.cluster.local:8080", "path": "/orders/3", "route_name": "orders",
        "status_code": 201, "response_flags": [], "response_code_details": "via_upstream",
        "request_bytes": 120, "response_bytes": 2048, "user_agent": "curl/8.5",
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "client_address": "10.1.2.3",
        "upstream_cluster": "outbound|8080||orders.shop.svc.cluster.local", "upstream_host": "10.9.8.7:8080",
        "source_principal": "spiffe://cluster.local/ns/orders/sa/checkout", "source_namespace": "orders",
        "source_workload": "checkout", "destination_principal": "spiffe://cluster.local/ns/shop/sa/orders",
        "destination_namespace": "shop", "destination_service": "orders.shop.svc.cluster.local",
        "node_id": NODE_ID, "log_name": LOG_NAME, "mesh_cluster": "checkout.orders",
        "start_time": START_MICROS, "duration_ms": 23.5,
        "identity_kind": "workload", "identity_source": "mtls", "token_status": "absent",
        "decision": "unevaluated", "decision_engine": "none", "groups": null, "tenant_id": null,
    });
    for (k, v) in want.as_object().expect("object") {
        assert_eq!(&http[k], v, "column {k}");
    }

    let tcp = rows
        .iter()
        .find(|r| r["entry_kind"] == json!("tcp") && r["request_bytes"] == json!(1112))
        .expect("tcp 112");
    for k in [
        "method",
        "path",
        "scheme",
        "authority",
        "status_code",
        "trace_id",
    ] {
        assert_eq!(tcp[k], json!(null), "tcp column {k} must be NULL");
    }
    assert_eq!(tcp["protocol"], json!("tcp"));
    assert_eq!(tcp["response_bytes"], json!(5000));
    assert_eq!(
        tcp["node_id"],
        json!(NODE_ID),
        "identifier from the first message applies to later ones"
    );

    let received = http["received_at"].as_i64().expect("received_at");
    let now = chrono::Utc::now().timestamp_micros();
    assert!(
        received > now - 120_000_000 && received <= now,
        "received_at is the collector's clock"
    );
}

#[test]
fn a_malformed_stream_is_refused_and_counted_while_a_healthy_one_keeps_flowing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Collector::start(dir.path(), &[]);
    let url = c.als_url();
    rt().block_on(async {
        // The healthy stream stays open across the bad one: a channel feeds it.
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let healthy = {
            let url = url.clone();
            tokio::spawn(async move {
                let mut client = envoy_types::pb::envoy::service::accesslog::v3::access_log_service_client::AccessLogServiceClient::connect(url).await.expect("connect");
                client.stream_access_logs(tokio_stream::wrappers::ReceiverStream::new(rx)).await
            })
        };
        tx.send(http_message(Some(identifier(NODE_ID, LOG_NAME)), vec![http_entry(1)])).await.expect("send");

        // Garbage bytes framed as a gRPC message: a length-delimited field whose length runs past the end.
        let garbage = raw_stream(&url, vec![vec![0x0a, 0xff, 0xff, 0xff, 0x0f, 0x01]]).await;
        let err = garbage.expect_err("garbage must be refused");
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains("malformed"), "{err:?}");

        // A stream whose first message has no identifier is refused too.
        let err = stream(&url, vec![http_message(None, vec![http_entry(9)])]).await.expect_err("no identifier");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("identifier"), "{err:?}");

        tx.send(http_message(None, vec![http_entry(2), http_entry(3)])).await.expect("healthy stream still open");
        drop(tx);
        healthy.await.expect("task").expect("healthy stream accepted");
    });
    assert_eq!(
        c.metric("meshaudit_als_messages_rejected_total{reason=\"malformed\"}"),
        1
    );
    assert_eq!(
        c.metric("meshaudit_als_messages_rejected_total{reason=\"no_identifier\"}"),
        1
    );
    let (status, out) = c.stop();
    assert!(status.success(), "{out}");
    let mut ids: Vec<String> = read_rows(dir.path())
        .iter()
        .map(|r| r["request_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    ids.sort();
    assert_eq!(ids, ["req-1", "req-2", "req-3"]);
}

#[test]
fn oversized_messages_are_refused_with_a_clear_status() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Collector::start(dir.path(), &["--max-message-bytes", "65536"]);
    let err = rt().block_on(async {
        let mut e = http_entry(1);
        if let Some(r) = e.request.as_mut() {
            r.path = format!("/big?{}", "x".repeat(100_000));
        }
        stream(
            &c.als_url(),
            vec![http_message(Some(identifier(NODE_ID, LOG_NAME)), vec![e])],
        )
        .await
        .expect_err("too big")
    });
    assert!(
        matches!(
            err.code(),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
        ),
        "{err:?}"
    );
    assert_eq!(
        c.metric("meshaudit_als_messages_rejected_total{reason=\"oversized\"}"),
        1
    );
    let (status, _) = c.stop();
    assert!(status.success());
    assert!(read_rows(dir.path()).is_empty());
}

#[test]
fn secrets_in_query_strings_are_redacted_everywhere() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Collector::start(dir.path(), &[]);
    let secret = "SECRETcode4f9a1b";
    let token = "eyJhbGciOiJSUzI1NiJ9.TOKENsecret77.sig";
    rt().block_on(async {
        let mut e = http_entry(1);
        if let Some(r) = e.request.as_mut() {
            r.path = format!("/callback?code={secret}&state=ok&access_token={token}");
        }
        stream(
            &c.als_url(),
            vec![http_message(Some(identifier(NODE_ID, LOG_NAME)), vec![e])],
        )
        .await
        .expect("accepted")
    });
    let (status, output) = c.stop();
    assert!(status.success());
    let rows = read_rows(dir.path());
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0]["path"],
        json!("/callback?code=REDACTED&state=ok&access_token=REDACTED")
    );
    for needle in [secret, "TOKENsecret77"] {
        assert!(
            !any_value_contains(dir.path(), needle),
            "{needle} stored in a column"
        );
        assert!(
            !any_file_contains(dir.path(), needle.as_bytes()),
            "{needle} in a file"
        );
        assert!(
            !output.contains(needle),
            "{needle} in the collector's output"
        );
    }
}

#[test]
fn record_id_is_stable_for_a_resent_entry_and_distinct_otherwise() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Collector::start(dir.path(), &[]);
    rt().block_on(async {
        let url = c.als_url();
        let msg = |node: &str| {
            http_message(
                Some(identifier(node, LOG_NAME)),
                vec![http_entry(1), http_entry(2)],
            )
        };
        stream(&url, vec![msg(NODE_ID)]).await.expect("first send");
        stream(&url, vec![msg(NODE_ID)]).await.expect("re-send");
        stream(
            &url,
            vec![msg(
                "sidecar~10.1.2.4~other-1.orders~orders.svc.cluster.local",
            )],
        )
        .await
        .expect("other node");
    });
    let (status, _) = c.stop();
    assert!(status.success());
    let rows = read_rows(dir.path());
    assert_eq!(rows.len(), 6);
    let id = |node: &str, req: &str| -> std::collections::BTreeSet<String> {
        rows.iter()
            .filter(|r| r["node_id"] == json!(node) && r["request_id"] == json!(req))
            .map(|r| r["record_id"].as_str().expect("id").to_owned())
            .collect()
    };
    let a = id(NODE_ID, "req-1");
    assert_eq!(a.len(), 1, "the re-sent entry has the same id");
    let a = a.into_iter().next().expect("one id");
    assert_eq!(a.len(), 32);
    assert!(a
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    let b = id(NODE_ID, "req-2").into_iter().next().expect("req-2");
    let other = id(
        "sidecar~10.1.2.4~other-1.orders~orders.svc.cluster.local",
        "req-1",
    )
    .into_iter()
    .next()
    .expect("other");
    assert_ne!(a, b);
    assert_ne!(
        a, other,
        "the same entry from another proxy is another record"
    );
}

#[test]
fn files_roll_by_age_while_running_and_appear_only_when_complete() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Collector::start(dir.path(), &["--parquet-max-file-age-secs", "1"]);
    rt().block_on(async {
        stream(
            &c.als_url(),
            vec![http_message(
                Some(identifier(NODE_ID, LOG_NAME)),
                vec![http_entry(1)],
            )],
        )
        .await
        .expect("sent")
    });
    wait_until("a finished Parquet file", Duration::from_secs(15), || {
        !parquet_files(dir.path()).is_empty()
    });
    // Readable while the collector still runs: complete files only.
    assert_eq!(read_rows(dir.path()).len(), 1);
    assert_eq!(
        c.metric("meshaudit_sink_records_written_total{sink=\"parquet\"}"),
        1
    );
    let (status, _) = c.stop();
    assert!(status.success());
}

/// Sends raw byte strings as gRPC messages on one StreamAccessLogs stream.
async fn raw_stream(url: &str, frames: Vec<Vec<u8>>) -> Result<(), tonic::Status> {
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
    #[derive(Default)]
    struct Raw;
    impl Encoder for Raw {
        type Item = Vec<u8>;
        type Error = tonic::Status;
        fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
            use bytes::BufMut;
            dst.put_slice(&item);
            Ok(())
        }
    }
    impl Decoder for Raw {
        type Item = ();
        type Error = tonic::Status;
        fn decode(&mut self, _: &mut DecodeBuf<'_>) -> Result<Option<()>, tonic::Status> {
            Ok(Some(()))
        }
    }
    impl Codec for Raw {
        type Encode = Vec<u8>;
        type Decode = ();
        type Encoder = Raw;
        type Decoder = Raw;
        fn encoder(&mut self) -> Raw {
            Raw
        }
        fn decoder(&mut self) -> Raw {
            Raw
        }
    }
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
        .map_err(|e| tonic::Status::internal(e.to_string()))?
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = http::uri::PathAndQuery::from_static(
        "/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs",
    );
    grpc.client_streaming(tonic::Request::new(tokio_stream::iter(frames)), path, Raw)
        .await
        .map(|_| ())
}
