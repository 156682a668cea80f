//! Admin HTTP endpoints: `/healthz` (the process is alive), `/readyz` (listeners and sinks are up
//! and the collector is not draining), `/metrics` (Prometheus text).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

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
