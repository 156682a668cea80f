//! Self-telemetry: every outcome is counted once, here.
//!
//! Counters are plain atomics (an uncontended `fetch_add` per message on the hot path). They are
//! exported two ways: as OpenTelemetry observable instruments over OTLP when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, and as Prometheus text on the admin `/metrics` endpoint,
//! which is also what the tests read. Logs are structured `tracing` events.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::metrics::{Histogram, MeterProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};

/// Why a message, stream or connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Bytes that do not decode as a StreamAccessLogsMessage or one of its entries.
    Malformed,
    /// Larger than the configured maximum message size.
    Oversized,
    /// A stream whose first message carries no Identifier.
    NoIdentifier,
    /// A stream from a TLS peer without a client certificate where one is required.
    Unauthenticated,
    /// A stream whose client certificate is not allowed to write (no SPIFFE ID, or one outside
    /// the allow-list).
    NotAllowed,
    /// A connection whose TLS handshake failed or timed out (untrusted certificate, not TLS,
    /// closed early).
    TlsHandshake,
    /// A stream refused because the replica already serves `als_max_streams` streams.
    TooManyStreams,
}

impl Rejection {
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Malformed => "malformed",
            Rejection::Oversized => "oversized",
            Rejection::NoIdentifier => "no_identifier",
            Rejection::Unauthenticated => "unauthenticated",
            Rejection::NotAllowed => "not_allowed",
            Rejection::TlsHandshake => "tls_handshake",
            Rejection::TooManyStreams => "too_many_streams",
        }
    }
}

/// One counter value: name (without `meshaudit_` and `_total`), help, labels, value.
type Counter = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
    u64,
);

/// Receive-to-accepted latency of records: from the moment their message is read to the moment
/// the spool has taken the batch, which is durable (fsynced) with `--spool-fsync always` and
/// written, fsynced within the interval, otherwise. Fixed logarithmic buckets of atomics
/// (10 µs × 1.1^i): recording is one relaxed add; a quantile is read as its bucket's upper
/// bound, so it reads at most 10 % high.
#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; LATENCY_BUCKETS],
}

const LATENCY_BUCKETS: usize = 160;
const LATENCY_BASE_MICROS: f64 = 10.0;
const LATENCY_FACTOR: f64 = 1.1;

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl LatencyHistogram {
    /// Records `count` records that took `micros`.
    pub fn record(&self, micros: i64, count: u64) {
        let m = micros.max(0) as f64;
        let i = if m <= LATENCY_BASE_MICROS {
            0
        } else {
            ((m / LATENCY_BASE_MICROS).ln() / LATENCY_FACTOR.ln()).ceil() as usize
        };
        self.buckets[i.min(LATENCY_BUCKETS - 1)].fetch_add(count, Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }

    /// The `q` quantile in seconds (its bucket's upper bound); `None` when nothing was recorded.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = (q * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(LATENCY_BASE_MICROS * LATENCY_FACTOR.powi(i as i32) / 1e6);
            }
        }
        None
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    /// Receive-to-accepted latency per record (see [`LatencyHistogram`]).
    pub accept_latency: LatencyHistogram,
    pub streams_opened: AtomicU64,
    pub streams_active: AtomicU64,
    pub stream_errors: AtomicU64,
    pub messages_received: AtomicU64,
    pub entries_received: AtomicU64,
    pub rejected_malformed: AtomicU64,
    pub rejected_oversized: AtomicU64,
    pub rejected_no_identifier: AtomicU64,
    pub rejected_unauthenticated: AtomicU64,
    pub rejected_not_allowed: AtomicU64,
    pub rejected_tls_handshake: AtomicU64,
    pub rejected_too_many_streams: AtomicU64,
    /// Streams the collector ended because no message came for `als_stream_idle_timeout_secs`.
    pub streams_ended_idle: AtomicU64,
    /// Streams the collector ended at `als_max_stream_age_secs` (± jitter) so Envoy reconnects.
    pub streams_ended_max_age: AtomicU64,
    pub parquet_records_written: AtomicU64,
    pub parquet_files_written: AtomicU64,
    pub parquet_write_errors: AtomicU64,
    pub batch_write_seconds_sum_micros: AtomicU64,
    pub batch_write_count: AtomicU64,
    /// RSA signature checks of raw tokens: with the verification cache, one per distinct token.
    pub jwt_signature_checks: AtomicU64,
    pub jwt_cache_hits: AtomicU64,
    pub jwt_cache_misses: AtomicU64,
    pub jwks_fetches: AtomicU64,
    pub jwks_fetch_errors: AtomicU64,
    /// Records that waited for a key refresh (an unknown `kid`).
    pub jwks_key_waits: AtomicU64,
    pub directory_reloads: AtomicU64,
    pub directory_reload_errors: AtomicU64,
    /// The spool's and the sinks' series.
    pub store: Arc<crate::store::metrics::StoreMetrics>,
    batch_write_histogram: std::sync::OnceLock<Histogram<f64>>,
    // Connections (ingest::conn, admin).
    /// ALS connections closed at once because `als_max_connections` were open.
    pub als_connections_refused: AtomicU64,
    /// `accept` failures for lack of file descriptors (EMFILE/ENFILE), any listener.
    pub accept_out_of_files: AtomicU64,
    /// ALS connections closed without a complete HTTP/2 preface by the handshake deadline.
    pub als_closed_preface_timeout: AtomicU64,
    /// ALS TLS connections without a required client certificate, closed at the deadline.
    pub als_closed_no_client_cert: AtomicU64,
    /// Admin connections closed after moving no bytes for `admin_idle_timeout_secs`.
    pub admin_closed_idle: AtomicU64,
    /// Admin connections closed for not sending a request's headers in time (or idling between
    /// keep-alive requests longer than that).
    pub admin_closed_header_timeout: AtomicU64,
    /// Gauges: ALS connections open now, and the effective bound (after the open-files cap).
    pub als_connections_open: AtomicU64,
    pub als_connections_limit: AtomicU64,
    /// The soft RLIMIT_NOFILE in force (0 = unlimited or unknown).
    pub open_files_limit: AtomicU64,
    // The start-time window (join::traffic).
    /// Records whose start_time was outside the window and was clamped to received_at.
    pub start_time_clamped: AtomicU64,
    // The OTLP logs receiver (ingest::otlp).
    pub otlp: OtlpMetrics,
}

/// The OTLP logs receiver's counters (`meshaudit_otlp_*`).
#[derive(Debug, Default)]
pub struct OtlpMetrics {
    /// Export calls whose accepted records are in the spool.
    pub exports: AtomicU64,
    pub records_accepted: AtomicU64,
    /// Of those, records that carried only Istio's default text line (no identity labels).
    pub records_text_only: AtomicU64,
    pub refused_not_access_log: AtomicU64,
    pub refused_bad_attribute: AtomicU64,
    /// Records the join refused (malformed metadata).
    pub refused_malformed: AtomicU64,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        Arc::new(Metrics::default())
    }

    pub fn rejected(&self, why: Rejection) {
        let c = match why {
            Rejection::Malformed => &self.rejected_malformed,
            Rejection::Oversized => &self.rejected_oversized,
            Rejection::NoIdentifier => &self.rejected_no_identifier,
            Rejection::Unauthenticated => &self.rejected_unauthenticated,
            Rejection::NotAllowed => &self.rejected_not_allowed,
            Rejection::TlsHandshake => &self.rejected_tls_handshake,
            Rejection::TooManyStreams => &self.rejected_too_many_streams,
        };
        c.fetch_add(1, Relaxed);
    }

    /// Records how long a sink took to write one batch.
    pub fn batch_written(&self, sink: &'static str, took: Duration) {
        self.batch_write_count.fetch_add(1, Relaxed);
        self.batch_write_seconds_sum_micros
            .fetch_add(took.as_micros() as u64, Relaxed);
        if let Some(h) = self.batch_write_histogram.get() {
            h.record(took.as_secs_f64(), &[KeyValue::new("sink", sink)]);
        }
    }

    fn counters(&self) -> [Counter; 38] {
        let g = |a: &AtomicU64| a.load(Relaxed);
        [
            (
                "als_streams_opened",
                "ALS streams opened",
                &[],
                g(&self.streams_opened),
            ),
            (
                "als_stream_errors",
                "ALS streams that ended with a transport error",
                &[],
                g(&self.stream_errors),
            ),
            (
                "als_messages_received",
                "StreamAccessLogsMessages accepted",
                &[],
                g(&self.messages_received),
            ),
            (
                "als_entries_received",
                "access log entries accepted",
                &[],
                g(&self.entries_received),
            ),
            (
                "als_messages_rejected",
                "messages, streams or connections refused, by reason",
                &[("reason", "malformed")],
                g(&self.rejected_malformed),
            ),
            (
                "als_messages_rejected",
                "messages, streams or connections refused, by reason",
                &[("reason", "oversized")],
                g(&self.rejected_oversized),
            ),
            (
                "als_messages_rejected",
                "messages, streams or connections refused, by reason",
                &[("reason", "no_identifier")],
                g(&self.rejected_no_identifier),
            ),
            (
                "als_messages_rejected",
                "messages, streams or connections refused, by reason",
                &[("reason", "unauthenticated")],
                g(&self.rejected_unauthenticated),
            ),
            (
                "als_messages_rejected",
                "messages, streams or connections refused, by reason",
                &[("reason", "not_allowed")],
                g(&self.rejected_not_allowed),
            ),
            (
                "als_messages_rejected",
                "messages, streams or connections refused, by reason",
                &[("reason", "tls_handshake")],
                g(&self.rejected_tls_handshake),
            ),
            (
                "als_messages_rejected",
                "messages, streams or connections refused, by reason",
                &[("reason", "too_many_streams")],
                g(&self.rejected_too_many_streams),
            ),
            (
                "als_streams_ended",
                "ALS streams the collector ended so Envoy reconnects",
                &[("reason", "idle_timeout")],
                g(&self.streams_ended_idle),
            ),
            (
                "als_streams_ended",
                "ALS streams the collector ended so Envoy reconnects",
                &[("reason", "max_age")],
                g(&self.streams_ended_max_age),
            ),
            (
                "sink_records_written",
                "records durably written",
                &[("sink", "parquet")],
                g(&self.parquet_records_written),
            ),
            (
                "sink_files_written",
                "files completed",
                &[("sink", "parquet")],
                g(&self.parquet_files_written),
            ),
            (
                "sink_write_errors",
                "failed sink writes",
                &[("sink", "parquet")],
                g(&self.parquet_write_errors),
            ),
            (
                "sink_batch_writes",
                "sink batch writes",
                &[],
                g(&self.batch_write_count),
            ),
            (
                "jwt_signature_checks",
                "RSA signature checks of raw tokens (one per distinct token while cached)",
                &[],
                g(&self.jwt_signature_checks),
            ),
            (
                "jwt_verification_cache",
                "raw-token verification cache lookups",
                &[("result", "hit")],
                g(&self.jwt_cache_hits),
            ),
            (
                "jwt_verification_cache",
                "raw-token verification cache lookups",
                &[("result", "miss")],
                g(&self.jwt_cache_misses),
            ),
            (
                "jwks_fetches",
                "signing key set fetches",
                &[("result", "ok")],
                g(&self.jwks_fetches),
            ),
            (
                "jwks_fetches",
                "signing key set fetches",
                &[("result", "error")],
                g(&self.jwks_fetch_errors),
            ),
            (
                "jwks_key_waits",
                "records that waited for a key refresh after naming an unknown kid",
                &[],
                g(&self.jwks_key_waits),
            ),
            (
                "directory_reloads",
                "directory snapshot reloads",
                &[("result", "ok")],
                g(&self.directory_reloads),
            ),
            (
                "directory_reloads",
                "directory snapshot reloads",
                &[("result", "error")],
                g(&self.directory_reload_errors),
            ),
            (
                "als_connections_refused",
                "ALS connections closed on arrival because als_max_connections (capped by the open-files limit) were open",
                &[("reason", "connection_limit")],
                g(&self.als_connections_refused),
            ),
            (
                "accept_errors",
                "failed accepts on the ALS and admin listeners because the process was out of file descriptors",
                &[("reason", "open_files")],
                g(&self.accept_out_of_files),
            ),
            (
                "connections_closed",
                "connections the collector closed at a deadline, by listener and reason",
                &[("listener", "als"), ("reason", "preface_timeout")],
                g(&self.als_closed_preface_timeout),
            ),
            (
                "connections_closed",
                "connections the collector closed at a deadline, by listener and reason",
                &[("listener", "als"), ("reason", "no_client_certificate")],
                g(&self.als_closed_no_client_cert),
            ),
            (
                "connections_closed",
                "connections the collector closed at a deadline, by listener and reason",
                &[("listener", "admin"), ("reason", "idle_timeout")],
                g(&self.admin_closed_idle),
            ),
            (
                "connections_closed",
                "connections the collector closed at a deadline, by listener and reason",
                &[("listener", "admin"), ("reason", "header_read_timeout")],
                g(&self.admin_closed_header_timeout),
            ),
            (
                "start_time_clamped",
                "records whose start_time was outside the accepted window around received_at, stored with start_time = received_at and the reported seconds in start_time_reported_secs",
                &[],
                g(&self.start_time_clamped),
            ),
            (
                "otlp_exports",
                "OTLP logs Export calls whose accepted records are in the spool",
                &[],
                g(&self.otlp.exports),
            ),
            (
                "otlp_log_records_accepted",
                "OTLP log records stored as audit records",
                &[],
                g(&self.otlp.records_accepted),
            ),
            (
                "otlp_log_records_text_only",
                "OTLP log records stored from Istio's default text line alone (no documented attributes: identity absent, decision from the line only); configure the provider's labels (docs/otlp-attributes.md)",
                &[],
                g(&self.otlp.records_text_only),
            ),
            (
                "otlp_log_records_refused",
                "OTLP log records refused through partial success, by reason",
                &[("reason", "not_access_log")],
                g(&self.otlp.refused_not_access_log),
            ),
            (
                "otlp_log_records_refused",
                "OTLP log records refused through partial success, by reason",
                &[("reason", "bad_attribute")],
                g(&self.otlp.refused_bad_attribute),
            ),
            (
                "otlp_log_records_refused",
                "OTLP log records refused through partial success, by reason",
                &[("reason", "malformed")],
                g(&self.otlp.refused_malformed),
            ),
        ]
    }

    /// Prometheus text exposition (counters are `_total`).
    pub fn render_prometheus(&self) -> String {
        let mut out = String::new();
        let mut last = "";
        for (name, help, labels, value) in self.counters() {
            if name != last {
                let _ = writeln!(
                    out,
                    "# HELP meshaudit_{name}_total {help}\n# TYPE meshaudit_{name}_total counter"
                );
                last = name;
            }
            let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            let labels = if labels.is_empty() {
                String::new()
            } else {
                format!("{{{}}}", labels.join(","))
            };
            let _ = writeln!(out, "meshaudit_{name}_total{labels} {value}");
        }
        let _ = writeln!(
            out,
            "# TYPE meshaudit_als_streams_active gauge\nmeshaudit_als_streams_active {}",
            self.streams_active.load(Relaxed)
        );
        for (name, help, v) in [
            (
                "als_connections_open",
                "ALS connections open",
                &self.als_connections_open,
            ),
            (
                "als_connections_limit",
                "ALS connections allowed at once (als_max_connections capped by the open-files limit)",
                &self.als_connections_limit,
            ),
            (
                "open_files_limit",
                "the soft RLIMIT_NOFILE in force (0: unlimited)",
                &self.open_files_limit,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP meshaudit_{name} {help}\n# TYPE meshaudit_{name} gauge\nmeshaudit_{name} {}",
                v.load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# TYPE meshaudit_sink_batch_write_seconds_sum counter\nmeshaudit_sink_batch_write_seconds_sum {:.6}",
            self.batch_write_seconds_sum_micros.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "# HELP meshaudit_accept_latency_seconds receive-to-accepted latency of records (in the spool; fsynced with --spool-fsync always)\n# TYPE meshaudit_accept_latency_seconds summary"
        );
        for q in ["0.5", "0.9", "0.99", "0.999"] {
            if let Some(v) = q.parse().ok().and_then(|q| self.accept_latency.quantile(q)) {
                let _ = writeln!(
                    out,
                    "meshaudit_accept_latency_seconds{{quantile=\"{q}\"}} {v:.6}"
                );
            }
        }
        let _ = writeln!(
            out,
            "meshaudit_accept_latency_seconds_count {}",
            self.accept_latency.count()
        );
        self.store.render(&mut out);
        crate::ingest::stack_refusals::render(&mut out);
        out
    }
}

/// Keeps the OTLP pipeline alive; flushes it on drop.
pub struct OtelGuard {
    provider: Option<SdkMeterProvider>,
}

impl OtelGuard {
    pub fn shutdown(mut self) {
        if let Some(p) = self.provider.take() {
            if let Err(e) = p.shutdown() {
                tracing::warn!(error = %e, "OpenTelemetry metrics shutdown failed");
            }
        }
    }
}

/// Starts OTLP metric export when `OTEL_EXPORTER_OTLP_ENDPOINT` is set; silent otherwise.
/// Must run inside the tokio runtime (the tonic exporter needs it).
pub fn init_otel(
    metrics: &Arc<Metrics>,
) -> Result<OtelGuard, opentelemetry_otlp::ExporterBuildError> {
    if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_none() {
        return Ok(OtelGuard { provider: None });
    }
    let exporter = opentelemetry_otlp::MetricExporter::builder()
        .with_tonic()
        .build()?;
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter).build())
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name("meshaudit")
                .build(),
        )
        .build();
    let meter = provider.meter("meshaudit");
    // One observable counter per name; its callback reports every label set of that name.
    let mut names: Vec<(&'static str, &'static str)> = Vec::new();
    for (name, help, _, _) in metrics.counters() {
        if !names.iter().any(|(n, _)| *n == name) {
            names.push((name, help));
        }
    }
    for (name, help) in names {
        let m = Arc::clone(metrics);
        meter
            .u64_observable_counter(format!("meshaudit.{}", name.replace('_', ".")))
            .with_description(help)
            .with_callback(move |obs| {
                for (n, _, labels, value) in m.counters() {
                    if n == name {
                        let attrs: Vec<KeyValue> =
                            labels.iter().map(|(k, v)| KeyValue::new(*k, *v)).collect();
                        obs.observe(value, &attrs);
                    }
                }
            })
            .build();
    }
    // The store's series (spool, sink lag, retries, Postgres rows), from the same list that
    // /metrics renders.
    let mut store_names: Vec<(&'static str, crate::store::metrics::Kind, &'static str)> =
        Vec::new();
    for s in metrics.store.series() {
        if !store_names.iter().any(|(n, _, _)| *n == s.name) {
            store_names.push((s.name, s.kind, s.help));
        }
    }
    for (name, kind, help) in store_names {
        let m = Arc::clone(metrics);
        let observe = move |obs: &dyn opentelemetry::metrics::AsyncInstrument<u64>| {
            for s in m.store.series().into_iter().filter(|s| s.name == name) {
                let attrs: Vec<KeyValue> = s
                    .sink
                    .map(|k| KeyValue::new("sink", k))
                    .into_iter()
                    .collect();
                obs.observe(s.value, &attrs);
            }
        };
        let otel_name = format!("meshaudit.{}", name.replace('_', "."));
        match kind {
            crate::store::metrics::Kind::Gauge => {
                meter
                    .u64_observable_gauge(otel_name)
                    .with_description(help)
                    .with_callback(move |o| observe(o))
                    .build();
            }
            crate::store::metrics::Kind::Counter => {
                meter
                    .u64_observable_counter(otel_name)
                    .with_description(help)
                    .with_callback(move |o| observe(o))
                    .build();
            }
        }
    }
    let _ = metrics.batch_write_histogram.set(
        meter
            .f64_histogram("meshaudit.sink.batch.write.duration")
            .with_unit("s")
            .with_description("time to write one batch to a sink")
            .build(),
    );
    tracing::info!("exporting metrics over OTLP");
    Ok(OtelGuard {
        provider: Some(provider),
    })
}

/// Structured logs to stderr; `RUST_LOG` filters (default `info`); `json` for machines. A second
/// layer counts the streams h2 resets before the service sees them, whatever `RUST_LOG` says
/// (`ingest::stack_refusals`).
pub fn init_logging(json: bool) {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::{fmt, EnvFilter, Layer as _};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt_layer = fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let fmt_layer = if json {
        fmt_layer
            .json()
            .flatten_event(true)
            .with_filter(filter)
            .boxed()
    } else {
        fmt_layer.with_filter(filter).boxed()
    };
    tracing_subscriber::registry()
        .with(fmt_layer)
        .with(crate::ingest::stack_refusals::layer())
        .init();
}

#[cfg(test)]
mod latency_tests {
    use super::*;

    #[test]
    fn quantiles_come_from_the_buckets_within_ten_percent() {
        let h = LatencyHistogram::default();
        assert_eq!(h.quantile(0.5), None);
        h.record(1_000, 98); // 1 ms
        h.record(200_000, 2); // 200 ms
        let p50 = h.quantile(0.5).expect("recorded");
        assert!((0.001..=0.0011).contains(&p50), "{p50}");
        let p99 = h.quantile(0.99).expect("recorded");
        assert!((0.2..=0.22).contains(&p99), "{p99}");
        h.record(-5, 1);
        h.record(i64::MAX, 1);
        assert_eq!(h.count(), 102);
    }
}
