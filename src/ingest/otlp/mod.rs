//! OTLP logs in: `opentelemetry.proto.collector.logs.v1.LogsService/Export` over gRPC, for
//! Envoy's OpenTelemetry access logger (`envoy.access_loggers.open_telemetry`, Istio's
//! `envoyOtelAls` provider) and for OpenTelemetry Collectors forwarding such logs.
//!
//! - `subset`: the zero-copy subset of the OTLP request (proto/meshaudit/v1/otlp_subset.proto).
//! - `codec`: tonic codec (subset in, `opentelemetry-proto`'s response out).
//! - `entry`: the attribute contract (docs/otlp-attributes.md): a LogRecord becomes the ALS
//!   subset entry the ONE join reads (`join::Joiner`), so both paths make the same records.
//! - `text`: Istio's default access log line (a label-less provider sends only that).
//! - `json`: `%DYNAMIC_METADATA(..)%` JSON into `google.protobuf.Struct` bytes.
//!
//! Same guarantees as the ALS service (`ingest::service`), through the same parts: the listener
//! runs `ingest::conn`'s accept loop (connection slots, handshake deadline, TLS of `ingest::tls`),
//! each call is checked by the same `PeerAuth` (SPIFFE allow-list) before anything is read and
//! takes a `StreamLimits` slot; accepted records go to the spool through the same
//! `RecordSender`, and the call waits while the spool is full (back-pressure, never a drop).
//! A log record that cannot be taken is refused through OTLP's `ExportLogsPartialSuccess`
//! (`rejected_log_records` + the reason of the first) and counted by reason; the rest of the
//! request is stored.

pub mod codec;
pub mod entry;
pub mod json;
pub mod text;

/// The wire-compatible OTLP subset, generated from `proto/meshaudit/v1/otlp_subset.proto`.
#[allow(clippy::all, missing_docs)]
pub mod subset {
    include!(concat!(env!("OUT_DIR"), "/meshaudit.otlp.v1.rs"));
}

use std::convert::Infallible;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};

use opentelemetry_proto::tonic::collector::logs::v1::{
    logs_service_server::SERVICE_NAME as OTLP_LOGS_SERVICE, ExportLogsPartialSuccess,
    ExportLogsServiceResponse,
};
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::codegen::{BoxFuture, StdError};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Request, Response, Status};
use tracing::{info_span, warn, Instrument};

use self::codec::OtlpCodec;
use self::entry::{Refusal, ResourceDefaults};
use self::subset::ExportLogsServiceRequest;
use super::limits::StreamLimits;
use super::peer_auth::PeerAuth;
use super::service::{now_micros, RecordSender};
use crate::join::{Joiner, StreamContext};
use crate::telemetry::{Metrics, Rejection};

pub const SERVICE_NAME: &str = OTLP_LOGS_SERVICE;
pub const METHOD_PATH: &str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";

/// Handles Export calls. Shared by every call.
pub struct ExportHandler {
    pub joiner: Arc<Joiner>,
    pub out: RecordSender,
    pub metrics: Arc<Metrics>,
    /// Cancelled on SIGTERM: calls end with UNAVAILABLE so the sender retries elsewhere.
    pub shutdown: CancellationToken,
    pub peers: PeerAuth,
    /// Calls in progress (`als_max_streams`); the time limits do not apply to unary calls.
    pub limits: StreamLimits,
}

/// What happened to a request's records.
#[derive(Debug, Default)]
struct Outcome {
    refused: i64,
    first_refusal: Option<String>,
}

impl ExportHandler {
    async fn export(
        &self,
        req: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        let span = info_span!("otlp_export", peer = ?req.remote_addr());
        match self
            .peers
            .check(req.peer_certs().as_deref().map(Vec::as_slice))
        {
            Ok(_) => {}
            Err(refusal) => {
                self.metrics.rejected(refusal.rejection());
                warn!(parent: &span, reason = refusal.rejection().as_str(), error = %refusal, "refusing OTLP export");
                return Err(refusal.to_status());
            }
        }
        let Some(_slot) = self.limits.admit() else {
            self.metrics.rejected(Rejection::TooManyStreams);
            warn!(parent: &span, reason = Rejection::TooManyStreams.as_str(), "refusing OTLP export: call limit reached");
            return Err(self.limits.over_limit_status());
        };
        if self.shutdown.is_cancelled() {
            return Err(shutting_down());
        }
        let outcome = self.take(req.into_inner()).instrument(span).await?;
        let partial_success = (outcome.refused > 0).then(|| ExportLogsPartialSuccess {
            rejected_log_records: outcome.refused,
            error_message: format!(
                "{} log record(s) refused; first: {}",
                outcome.refused,
                outcome.first_refusal.unwrap_or_default()
            ),
        });
        Ok(Response::new(ExportLogsServiceResponse { partial_success }))
    }

    /// Maps and joins every record, then hands the accepted ones to the spool as one batch.
    async fn take(&self, req: ExportLogsServiceRequest) -> Result<Outcome, Status> {
        let received_at = now_micros();
        let m = &self.metrics.otlp;
        let mut outcome = Outcome::default();
        let mut refuse = |r: &Refusal| {
            let c = match r {
                Refusal::NotAccessLog => &m.refused_not_access_log,
                Refusal::BadAttribute { .. } => &m.refused_bad_attribute,
            };
            c.fetch_add(1, Relaxed);
            outcome.refused += 1;
            if outcome.first_refusal.is_none() {
                outcome.first_refusal = Some(r.to_string());
            }
        };
        let mut batch = Vec::new();
        let mut text_only = 0u64;
        let mut malformed = Vec::new();
        // Every record of one proxy names the same proxy: one StreamContext while it does.
        let mut ctx: Option<(crate::ingest::wire::Identifier, StreamContext)> = None;
        for rl in &req.resource_logs {
            let defaults = rl
                .resource
                .as_ref()
                .map(|r| ResourceDefaults::from_attributes(&r.attributes))
                .unwrap_or_default();
            for record in rl.scope_logs.iter().flat_map(|s| &s.log_records) {
                let mapped = match entry::map(record, &defaults) {
                    Ok(m) => m,
                    Err(r) => {
                        refuse(&r);
                        continue;
                    }
                };
                let c = match &ctx {
                    Some((id, c)) if *id == mapped.identifier => c,
                    _ => {
                        let c = StreamContext::from_identifier(&mapped.identifier);
                        &ctx.insert((mapped.identifier.clone(), c)).1
                    }
                };
                let bytes = mapped.entry.encode();
                match self
                    .joiner
                    .join_waiting_for_keys(c, mapped.entry.kind(), &bytes, received_at)
                    .await
                {
                    Ok(rec) => {
                        text_only += u64::from(mapped.text_only);
                        batch.push(rec);
                    }
                    Err(e) => malformed.push(e.to_string()),
                }
            }
        }
        for e in malformed {
            m.refused_malformed.fetch_add(1, Relaxed);
            outcome.refused += 1;
            outcome.first_refusal.get_or_insert(e);
        }
        if outcome.refused > 0 {
            warn!(
                refused = outcome.refused,
                first = outcome.first_refusal.as_deref().unwrap_or(""),
                "OTLP log records refused (partial success)"
            );
        }
        let n = batch.len() as u64;
        if n > 0 {
            // Waits while the spool is full: the sender's call stays open (back-pressure).
            if self.out.send(batch).await.is_err() {
                return Err(shutting_down());
            }
            self.metrics
                .accept_latency
                .record(now_micros() - received_at, n);
        }
        m.exports.fetch_add(1, Relaxed);
        m.records_accepted.fetch_add(n, Relaxed);
        m.records_text_only.fetch_add(text_only, Relaxed);
        Ok(outcome)
    }
}

fn shutting_down() -> Status {
    Status::unavailable("meshaudit is shutting down; retry against another replica")
}

/// The tower service tonic's router serves on the OTLP listener.
#[derive(Clone)]
pub struct OtlpServer {
    handler: Arc<ExportHandler>,
    max_message_bytes: usize,
}

impl OtlpServer {
    pub fn new(handler: Arc<ExportHandler>, max_message_bytes: usize) -> Self {
        OtlpServer {
            handler,
            max_message_bytes,
        }
    }
}

struct Export(Arc<ExportHandler>);

impl UnaryService<ExportLogsServiceRequest> for Export {
    type Response = ExportLogsServiceResponse;
    type Future = BoxFuture<Response<Self::Response>, Status>;

    fn call(&mut self, request: Request<ExportLogsServiceRequest>) -> Self::Future {
        let handler = Arc::clone(&self.0);
        Box::pin(async move { handler.export(request).await })
    }
}

impl<B> tower_service::Service<http::Request<B>> for OtlpServer
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != METHOD_PATH {
            return Box::pin(async move {
                Ok(Status::unimplemented("only LogsService/Export is served").into_http())
            });
        }
        let handler = Arc::clone(&self.handler);
        let method = Export(Arc::clone(&handler));
        let max = self.max_message_bytes;
        Box::pin(async move {
            let mut grpc = Grpc::new(OtlpCodec).apply_max_message_size_config(Some(max), None);
            let resp = grpc.unary(method, req).await;
            // A request that does not decode, or is over max_message_bytes, is refused by tonic
            // before `export` runs: counted here, with the ALS path's reasons. (`export` itself
            // never answers INVALID_ARGUMENT or OUT_OF_RANGE.)
            if let Some(status) = Status::from_header_map(resp.headers()) {
                let why = match status.code() {
                    tonic::Code::InvalidArgument => Some(Rejection::Malformed),
                    tonic::Code::OutOfRange | tonic::Code::ResourceExhausted => {
                        Some(Rejection::Oversized)
                    }
                    _ => None,
                };
                if let Some(why) = why {
                    handler.metrics.rejected(why);
                    warn!(reason = why.as_str(), error = %status.message(), "refusing OTLP export");
                }
            }
            Ok(resp)
        })
    }
}

impl NamedService for OtlpServer {
    const NAME: &'static str = SERVICE_NAME;
}
