//! Admin HTTP endpoints: `/healthz` (the process is alive), `/readyz` (listeners and sinks are up
//! and the collector is not draining), `/metrics` (Prometheus text).
//!
//! Served by [`serve`], not `axum::serve`, because a probe port must keep answering whatever
//! clients do to it: at most [`MAX_CONNECTIONS`] at once (more are closed on arrival), a request's
//! headers within `admin_header_read_timeout_secs` (hyper's header-read timer also runs while a
//! keep-alive connection waits for its next request, so it is the keep-alive idle limit too),
//! and no connection that moves no bytes for `admin_idle_timeout_secs` (e.g. one that never
//! reads its response). Kubelet probes and Prometheus need a handful of connections.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::ingest::conn::{accept_failed, Guarded, Slot};

use crate::store::metrics::SinkId;
use crate::telemetry::Metrics;

#[derive(Clone)]
pub struct AdminState {
    /// Set once listeners and sinks are up; cleared when draining starts.
    pub ready: Arc<AtomicBool>,
    pub metrics: Arc<Metrics>,
    /// The sinks configured; each must have a running driver for the collector to be ready.
    pub sinks: Vec<SinkId>,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Ready means: new ALS connections should come here. Not ready while starting or draining, or
/// while the store cannot take records (spool full or failed, a sink driver gone), so that a
/// Kubernetes Service sends new streams to other replicas; `/healthz` stays green meanwhile.
async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    if !s.ready.load(Ordering::Acquire) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: starting or draining\n".to_owned(),
        );
    }
    match s.metrics.store.unavailable(&s.sinks) {
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
        None => (StatusCode::OK, "ready\n".to_owned()),
    }
}

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render_prometheus(),
    )
}

/// Admin connections open at once; more are closed on arrival.
pub const MAX_CONNECTIONS: usize = 32;

/// Timeouts of the admin listener.
#[derive(Debug, Clone, Copy)]
pub struct AdminTimeouts {
    pub header_read: Duration,
    pub idle: Duration,
}

/// Serves `router` on `listener` until `stop`, then lets open requests finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    timeouts: AdminTimeouts,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let last_warn = Mutex::new(None);
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let (tcp, peer) = tokio::select! {
            () = stop.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    accept_failed("admin", &e, &metrics, &last_warn);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            debug!(%peer, "admin connection refused: {MAX_CONNECTIONS} already open");
            continue;
        };
        let io = Guarded::new(tcp, Some(Slot::uncounted(permit)), Arc::clone(&metrics))
            .idle_after(timeouts.idle);
        let service = TowerToHyperService::new(router.clone());
        let stop = stop.clone();
        let metrics = Arc::clone(&metrics);
        conns.spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(timeouts.header_read)
                .serve_connection(TokioIo::new(io), service);
            tokio::pin!(conn);
            let done = tokio::select! {
                r = conn.as_mut() => Some(r),
                () = stop.cancelled() => None,
            };
            let r = match done {
                Some(r) => r,
                None => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = r {
                if e.is_timeout() {
                    metrics
                        .admin_closed_header_timeout
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                debug!(%peer, error = %e, "admin connection ended");
            }
        });
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}
