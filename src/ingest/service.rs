//! The `envoy.service.accesslog.v3.AccessLogService` gRPC service.
//!
//! Envoy opens a client stream per worker thread and logger, sends the Identifier on the first
//! message only, and never reads a response (docs/wire-and-identity.md §1.2). Each stream is read
//! in its own task; its entries are joined into records and handed to the store as one batch per
//! message. When the store is full the read waits, so HTTP/2 flow control pushes back on Envoy
//! rather than this process growing without bound or dropping records.
//!
//! The service is written by hand (rather than generated) so that it can use [`AlsCodec`], which
//! decodes into the zero-copy subset types instead of Envoy's full generated ones.

use std::convert::Infallible;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::codegen::{BoxFuture, StdError};
use tonic::server::{ClientStreamingService, Grpc, NamedService};
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::{field, info_span, warn, Instrument, Span};

use super::codec::{AlsCodec, StreamAccessLogsResponse};
use super::limits::{StreamLimits, Wake};
use super::peer_auth::PeerAuth;
use super::wire::stream_access_logs_message::LogEntries;
use super::wire::StreamAccessLogsMessage;
use crate::join::{Joiner, StreamContext};
use crate::record::id::EntryType;
use crate::store::spool::AppendError;
use crate::telemetry::{Metrics, Rejection};

pub const SERVICE_NAME: &str = "envoy.service.accesslog.v3.AccessLogService";
pub const METHOD_PATH: &str = "/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs";

/// Where accepted records go: one batch per ALS message. `send` returns once the batch is
/// durable in the spool; only then is it accepted.
pub type RecordSender = crate::store::spool::Appender;

/// Reads ALS streams. Shared by every stream.
pub struct StreamHandler {
    pub joiner: Arc<Joiner>,
    pub out: RecordSender,
    pub metrics: Arc<Metrics>,
    /// Cancelled on SIGTERM: every stream ends with UNAVAILABLE so Envoy reconnects elsewhere.
    pub shutdown: CancellationToken,
    /// Which TLS peers may write; checked at stream start (default: everyone).
    pub peers: PeerAuth,
    /// Streams in total, idle timeout, maximum age.
    pub limits: StreamLimits,
}

impl StreamHandler {
    async fn handle(
        &self,
        req: Request<Streaming<StreamAccessLogsMessage>>,
    ) -> Result<Response<StreamAccessLogsResponse>, Status> {
        let span = info_span!(
            "als_stream",
            peer = ?req.remote_addr(),
            peer_id = field::Empty,
            node_id = field::Empty,
            log_name = field::Empty
        );
        self.metrics.streams_opened.fetch_add(1, Relaxed);
        // Who may write is decided before anything is read or any slot is taken.
        match self
            .peers
            .check(req.peer_certs().as_deref().map(Vec::as_slice))
        {
            Ok(Some(id)) => {
                span.record("peer_id", id.as_str());
            }
            Ok(None) => {}
            Err(refusal) => {
                self.metrics.rejected(refusal.rejection());
                warn!(parent: &span, reason = refusal.rejection().as_str(), error = %refusal, "refusing ALS stream");
                return Err(refusal.to_status());
            }
        }
        let Some(_slot) = self.limits.admit() else {
            self.metrics.rejected(Rejection::TooManyStreams);
            warn!(parent: &span, reason = Rejection::TooManyStreams.as_str(), "refusing ALS stream: stream limit reached");
            return Err(self.limits.over_limit_status());
        };
        self.metrics.streams_active.fetch_add(1, Relaxed);
        let result = self
            .read(req.into_inner(), &span)
            .instrument(span.clone())
            .await;
        self.metrics.streams_active.fetch_sub(1, Relaxed);
        result.map(|()| Response::new(StreamAccessLogsResponse))
    }

    async fn read(
        &self,
        mut stream: Streaming<StreamAccessLogsMessage>,
        span: &Span,
    ) -> Result<(), Status> {
        let mut ctx: Option<StreamContext> = None;
        // Idle and age deadlines share one timer, re-armed only when it fires.
        let mut clock = self.limits.clock(tokio::time::Instant::now());
        let timer = tokio::time::sleep_until(clock.first_deadline());
        tokio::pin!(timer);
        loop {
            let next = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => {
                    return Err(Status::unavailable("meshaudit is shutting down; reconnect to another replica"));
                }
                next = stream.message() => next,
                () = &mut timer, if clock.enabled() => match clock.wake(tokio::time::Instant::now()) {
                    Wake::SleepUntil(at) => {
                        timer.as_mut().reset(at);
                        continue;
                    }
                    Wake::End(why) => {
                        tracing::debug!(reason = why.as_str(), "ending ALS stream so Envoy reconnects");
                        return Err(why.finish(&self.metrics));
                    }
                },
            };
            let msg = match next {
                Ok(Some(msg)) => msg,
                Ok(None) => return Ok(()),
                Err(status) => return Err(self.stream_failed(status)),
            };
            let received_at = now_micros();
            if let Some(id) = &msg.identifier {
                let c = StreamContext::from_identifier(id);
                span.record("node_id", c.node_id().unwrap_or(""));
                span.record("log_name", c.log_name().unwrap_or(""));
                ctx = Some(c);
            }
            let Some(ctx) = ctx.as_ref() else {
                return Err(self.reject(
                    Rejection::NoIdentifier,
                    "the first StreamAccessLogsMessage of a stream must carry an identifier".into(),
                ));
            };
            let (kind, entries) = match &msg.log_entries {
                Some(LogEntries::HttpLogs(h)) => (EntryType::Http, &h.log_entry),
                Some(LogEntries::TcpLogs(t)) => (EntryType::Tcp, &t.log_entry),
                None => {
                    return Err(self.reject(
                        Rejection::Malformed,
                        "StreamAccessLogsMessage carries neither http_logs nor tcp_logs".into(),
                    ))
                }
            };
            // All of a message's entries are joined before any is accepted: a message is taken
            // whole or refused whole.
            let mut batch = Vec::with_capacity(entries.len());
            for entry in entries {
                match self
                    .joiner
                    .join_waiting_for_keys(ctx, kind, entry, received_at)
                    .await
                {
                    Ok(rec) => batch.push(rec),
                    Err(e) => return Err(self.reject(Rejection::Malformed, e.to_string())),
                }
            }
            let n = batch.len() as u64;
            if let Err(e) = self.out.send(batch).await {
                return Err(Status::unavailable(match e {
                    AppendError::Closed => {
                        "meshaudit is shutting down; reconnect to another replica".to_owned()
                    }
                    e => {
                        format!("meshaudit cannot store records: {e}; reconnect to another replica")
                    }
                }));
            }
            self.metrics.messages_received.fetch_add(1, Relaxed);
            self.metrics.entries_received.fetch_add(n, Relaxed);
            self.metrics
                .accept_latency
                .record(now_micros() - received_at, n);
            if clock.message(tokio::time::Instant::now()) {
                // Past its maximum age: end now, right after a flush, when nothing is in flight.
                let why = super::limits::StreamEnd::MaxAge;
                tracing::debug!(
                    reason = why.as_str(),
                    "ending ALS stream so Envoy reconnects"
                );
                return Err(why.finish(&self.metrics));
            }
        }
    }

    fn reject(&self, why: Rejection, msg: String) -> Status {
        self.metrics.rejected(why);
        warn!(reason = why.as_str(), error = %msg, "refusing ALS stream");
        Status::invalid_argument(msg)
    }

    /// A status produced while reading: decode failures and oversized frames are the client's
    /// fault and counted as rejections; anything else is a transport error.
    fn stream_failed(&self, status: Status) -> Status {
        match status.code() {
            Code::InvalidArgument => {
                self.metrics.rejected(Rejection::Malformed);
                warn!(reason = "malformed", error = %status.message(), "refusing ALS stream");
            }
            Code::OutOfRange | Code::ResourceExhausted => {
                self.metrics.rejected(Rejection::Oversized);
                warn!(reason = "oversized", error = %status.message(), "refusing ALS stream");
            }
            _ => {
                self.metrics.stream_errors.fetch_add(1, Relaxed);
                tracing::debug!(code = ?status.code(), error = %status.message(), "ALS stream ended with an error");
            }
        }
        status
    }
}

pub fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// The tower service tonic's router serves.
#[derive(Clone)]
pub struct AlsServer {
    handler: Arc<StreamHandler>,
    max_message_bytes: usize,
}

impl AlsServer {
    pub fn new(handler: Arc<StreamHandler>, max_message_bytes: usize) -> Self {
        AlsServer {
            handler,
            max_message_bytes,
        }
    }
}

struct StreamAccessLogs(Arc<StreamHandler>);

impl ClientStreamingService<StreamAccessLogsMessage> for StreamAccessLogs {
    type Response = StreamAccessLogsResponse;
    type Future = BoxFuture<Response<Self::Response>, Status>;

    fn call(&mut self, request: Request<Streaming<StreamAccessLogsMessage>>) -> Self::Future {
        let handler = Arc::clone(&self.0);
        Box::pin(async move { handler.handle(request).await })
    }
}

impl<B> tower_service::Service<http::Request<B>> for AlsServer
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
                Ok(Status::unimplemented("only StreamAccessLogs is served").into_http())
            });
        }
        let method = StreamAccessLogs(Arc::clone(&self.handler));
        let max = self.max_message_bytes;
        Box::pin(async move {
            let mut grpc = Grpc::new(AlsCodec).apply_max_message_size_config(Some(max), None);
            Ok(grpc.client_streaming(method, req).await)
        })
    }
}

impl NamedService for AlsServer {
    const NAME: &'static str = SERVICE_NAME;
}
