//! With OTEL_EXPORTER_OTLP_ENDPOINT set, the collector exports its counters over OTLP/gRPC:
//! a real OTLP metrics receiver (opentelemetry-proto's generated server) sees them.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::metrics::v1::{metric::Data, number_data_point::Value};

#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<ExportMetricsServiceRequest>>>);

#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        req: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.0.lock().expect("lock").push(req.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse {
            partial_success: None,
        }))
    }
}

impl Receiver {
    /// The latest exported value of a sum or gauge named `name` (any attributes: summed).
    fn latest(&self, name: &str) -> Option<i64> {
        let got = self.0.lock().expect("lock");
        got.iter().rev().find_map(|req| {
            req.resource_metrics
                .iter()
                .flat_map(|r| &r.scope_metrics)
                .flat_map(|s| &s.metrics)
                .find(|m| m.name == name)
                .map(|m| {
                    let points = match &m.data {
                        Some(Data::Sum(s)) => s.data_points.clone(),
                        Some(Data::Gauge(g)) => g.data_points.clone(),
                        _ => vec![],
                    };
                    points
                        .iter()
                        .map(|p| match p.value {
                            Some(Value::AsInt(v)) => v,
                            Some(Value::AsDouble(v)) => v as i64,
                            None => 0,
                        })
                        .sum()
                })
        })
    }
}

#[test]
fn counters_are_exported_over_otlp_when_an_endpoint_is_set() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let receiver = Receiver::default();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = MetricsServiceServer::new(receiver.clone());
    rt.spawn(async move {
        tonic::transport::Server::builder()
            .add_service(server)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });

    let dir = tempfile::tempdir().expect("tempdir");
    let endpoint = format!("http://{addr}");
    let c = Collector::start_with_env(
        dir.path(),
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_METRIC_EXPORT_INTERVAL", "200"),
        ],
    );
    rt.block_on(stream(
        &c.als_url(),
        vec![http_message(
            Some(identifier(NODE_ID, LOG_NAME)),
            (0..7).map(http_entry).collect(),
        )],
    ))
    .expect("accepted");
    wait_until(
        "7 entries exported over OTLP",
        Duration::from_secs(30),
        || receiver.latest("meshaudit.als.entries.received") == Some(7),
    );
    wait_until(
        "the spool's records exported over OTLP",
        Duration::from_secs(30),
        || receiver.latest("meshaudit.spool.records.appended") == Some(7),
    );
    assert!(
        receiver.latest("meshaudit.sink.lag.bytes").is_some(),
        "per-sink gauges are exported"
    );
    let (status, out) = c.stop();
    assert!(status.success(), "{out}");
    assert!(out.contains("exporting metrics over OTLP"), "{out}");
}
