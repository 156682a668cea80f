//! Store metrics: the spool and each sink. Plain atomics, rendered beside the other counters on
//! `/metrics` (see `telemetry::Metrics::render_prometheus`).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The sinks the spool feeds. Each has its own cursor and its own metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SinkId {
    Parquet,
    Postgres,
}

impl SinkId {
    pub const ALL: [SinkId; 2] = [SinkId::Parquet, SinkId::Postgres];

    pub fn name(self) -> &'static str {
        match self {
            SinkId::Parquet => "parquet",
            SinkId::Postgres => "postgres",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Whether a series only grows or goes up and down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    Counter,
}

/// One value of one series, as exported.
#[derive(Debug, Clone, Copy)]
pub struct Series {
    /// Without the `meshaudit_` prefix and the `_total` suffix.
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
    /// The `sink` label, for per-sink series.
    pub sink: Option<&'static str>,
    pub value: u64,
}

#[derive(Debug, Default)]
pub struct SinkMetrics {
    /// Spooled bytes this sink has not yet acknowledged as durable.
    pub lag_bytes: AtomicU64,
    /// Failed writes that will be retried.
    pub retries: AtomicU64,
    /// 1 once the sink's driver has ended (at shutdown, or because it panicked).
    pub driver_exited: AtomicU64,
}

#[derive(Debug, Default)]
pub struct StoreMetrics {
    /// Bytes in spool segments on disk.
    pub spool_bytes: AtomicU64,
    /// 1 while the spool is at its bound and ingest waits.
    pub spool_full: AtomicU64,
    /// 1 once an fsync failed: the spool refuses every batch until a restart.
    pub spool_failed: AtomicU64,
    /// 1 while spool appends fail (a full disk, any I/O error): batches are refused and
    /// `/readyz` says why, until an append (or the writer's probe) succeeds again.
    pub spool_append_failing: AtomicU64,
    /// The error of the last failed append, while `spool_append_failing` is 1.
    pub spool_append_error: std::sync::Mutex<Option<String>>,
    /// Times ingest had to wait because the spool was full.
    pub spool_full_waits: AtomicU64,
    pub spool_records_appended: AtomicU64,
    pub spool_fsyncs: AtomicU64,
    pub spool_write_errors: AtomicU64,
    /// Damaged spool ranges found (each a run of bytes holding no valid frame; reported once,
    /// with its LSN range, and copied to the spool's `damaged/` dir).
    pub spool_corrupt_frames: AtomicU64,
    /// Bytes in those ranges.
    pub spool_damaged_bytes: AtomicU64,
    /// Bytes cut from a torn tail at start-up.
    pub spool_truncated_bytes: AtomicU64,
    pub postgres_rows_inserted: AtomicU64,
    /// Rows COPYed that were already present (replays, client re-sends).
    pub postgres_rows_duplicate: AtomicU64,
    /// Rows Postgres refused for a data reason, kept in `audit_rejects` (postgres/reject.rs).
    pub postgres_rows_rejected: AtomicU64,
    /// Batches whose direct COPY was refused and that went through staging + ON CONFLICT.
    pub postgres_batches_staged: AtomicU64,
    sinks: [SinkMetrics; 2],
}

impl StoreMetrics {
    pub fn sink(&self, id: SinkId) -> &SinkMetrics {
        &self.sinks[id.index()]
    }

    /// Why the store cannot take records now, if it cannot: what `/readyz` reports. `sinks`
    /// are the sinks configured (a sink that is not configured has no driver).
    pub fn unavailable(&self, sinks: &[SinkId]) -> Option<String> {
        if self.spool_failed.load(Relaxed) != 0 {
            return Some("spool fsync failed; restart the collector".into());
        }
        if self.spool_append_failing.load(Relaxed) != 0 {
            let why = self
                .spool_append_error
                .lock()
                .ok()
                .and_then(|e| e.clone())
                .unwrap_or_else(|| "I/O error".into());
            return Some(format!(
                "spool cannot append: {why}; batches are refused until the disk takes writes again"
            ));
        }
        if self.spool_full.load(Relaxed) != 0 {
            return Some("spool full; a sink is behind".into());
        }
        if sinks
            .iter()
            .any(|s| self.sink(*s).driver_exited.load(Relaxed) != 0)
        {
            return Some("a sink driver stopped".into());
        }
        None
    }

    /// A spool append failed with `error`: refuse and report until [`Self::append_ok`].
    /// Returns true when this starts a failing period (log it then, not on every batch).
    pub fn append_failed(&self, error: &std::io::Error) -> bool {
        if let Ok(mut e) = self.spool_append_error.lock() {
            *e = Some(error.to_string());
        }
        self.spool_append_failing.swap(1, Relaxed) == 0
    }

    /// Appends work again. Returns true when this ends a failing period.
    pub fn append_ok(&self) -> bool {
        self.spool_append_failing.load(Relaxed) != 0
            && self.spool_append_failing.swap(0, Relaxed) != 0
    }

    /// Every series of the store, once: `/metrics` and OTLP export both read this list.
    pub fn series(&self) -> Vec<Series> {
        let g = |a: &AtomicU64| a.load(Relaxed);
        let one = |name, kind, help, value| Series {
            name,
            kind,
            help,
            sink: None,
            value,
        };
        let mut out = vec![
            one(
                "spool_bytes",
                Kind::Gauge,
                "bytes in spool segments on disk",
                g(&self.spool_bytes),
            ),
            one(
                "spool_full",
                Kind::Gauge,
                "1 while the spool is at --spool-max-bytes and ingest is slowed",
                g(&self.spool_full),
            ),
            one(
                "spool_failed",
                Kind::Gauge,
                "1 after a failed spool fsync: every batch is refused until a restart",
                g(&self.spool_failed),
            ),
            one(
                "spool_append_failing",
                Kind::Gauge,
                "1 while spool appends fail (disk full, I/O error) and batches are refused",
                g(&self.spool_append_failing),
            ),
            one(
                "spool_full_waits",
                Kind::Counter,
                "times ingest waited for spool space",
                g(&self.spool_full_waits),
            ),
            one(
                "spool_records_appended",
                Kind::Counter,
                "records made durable in the spool",
                g(&self.spool_records_appended),
            ),
            one(
                "spool_fsyncs",
                Kind::Counter,
                "spool fsyncs",
                g(&self.spool_fsyncs),
            ),
            one(
                "spool_write_errors",
                Kind::Counter,
                "failed spool appends",
                g(&self.spool_write_errors),
            ),
            one(
                "spool_corrupt_frames",
                Kind::Counter,
                "damaged spool ranges found (disk corruption or a torn tail), each logged once with its LSN range",
                g(&self.spool_corrupt_frames),
            ),
            one(
                "spool_damaged_bytes",
                Kind::Counter,
                "bytes in damaged spool ranges (their records are lost)",
                g(&self.spool_damaged_bytes),
            ),
            one(
                "spool_truncated_bytes",
                Kind::Counter,
                "bytes of torn tail cut at start-up",
                g(&self.spool_truncated_bytes),
            ),
            one(
                "postgres_rows_inserted",
                Kind::Counter,
                "rows inserted into audit_records",
                g(&self.postgres_rows_inserted),
            ),
            one(
                "postgres_rows_duplicate",
                Kind::Counter,
                "rows already present in audit_records (replays, re-sends)",
                g(&self.postgres_rows_duplicate),
            ),
            one(
                "postgres_rows_rejected",
                Kind::Counter,
                "rows postgres refused for a data reason, kept in audit_rejects",
                g(&self.postgres_rows_rejected),
            ),
            one(
                "postgres_batches_staged",
                Kind::Counter,
                "batches whose direct COPY postgres refused (a replay or re-send, or another refusal logged at warn), written through staging + ON CONFLICT DO NOTHING",
                g(&self.postgres_batches_staged),
            ),
        ];
        type PerSink = (
            &'static str,
            Kind,
            &'static str,
            fn(&SinkMetrics) -> &AtomicU64,
        );
        let per_sink: [PerSink; 3] = [
            (
                "sink_driver_exited",
                Kind::Gauge,
                "1 once the sink's driver has ended (shutdown, or a panic)",
                |s| &s.driver_exited,
            ),
            (
                "sink_lag_bytes",
                Kind::Gauge,
                "spooled bytes the sink has not acknowledged",
                |s| &s.lag_bytes,
            ),
            (
                "sink_retries",
                Kind::Counter,
                "failed sink writes that are retried",
                |s| &s.retries,
            ),
        ];
        for (name, kind, help, get) in per_sink {
            for id in SinkId::ALL {
                out.push(Series {
                    name,
                    kind,
                    help,
                    sink: Some(id.name()),
                    value: g(get(self.sink(id))),
                });
            }
        }
        out
    }

    /// Prometheus text exposition of the store's series (counters end in `_total`).
    pub fn render(&self, out: &mut String) {
        let mut last = "";
        for s in self.series() {
            let name = match s.kind {
                Kind::Gauge => format!("meshaudit_{}", s.name),
                Kind::Counter => format!("meshaudit_{}_total", s.name),
            };
            if s.name != last {
                let kind = match s.kind {
                    Kind::Gauge => "gauge",
                    Kind::Counter => "counter",
                };
                let _ = writeln!(out, "# HELP {name} {}\n# TYPE {name} {kind}", s.help);
                last = s.name;
            }
            match s.sink {
                Some(sink) => {
                    let _ = writeln!(out, "{name}{{sink=\"{sink}\"}} {}", s.value);
                }
                None => {
                    let _ = writeln!(out, "{name} {}", s.value);
                }
            }
        }
    }
}
