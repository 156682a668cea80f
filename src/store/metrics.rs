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
    /// Times ingest had to wait because the spool was full.
    pub spool_full_waits: AtomicU64,
    pub spool_records_appended: AtomicU64,
    pub spool_fsyncs: AtomicU64,
    pub spool_write_errors: AtomicU64,
    /// Frames found damaged below the durable end (not torn tails): disk corruption.
    pub spool_corrupt_frames: AtomicU64,
    /// Bytes cut from a torn tail at start-up.
    pub spool_truncated_bytes: AtomicU64,
    pub postgres_rows_inserted: AtomicU64,
    /// Rows COPYed that were already present (replays, client re-sends).
    pub postgres_rows_duplicate: AtomicU64,
    sinks: [SinkMetrics; 2],
}

impl StoreMetrics {
    pub fn sink(&self, id: SinkId) -> &SinkMetrics {
        &self.sinks[id.index()]
    }

    /// Why the store cannot take records now, if it cannot: what `/readyz` reports. `sinks`
    /// are the sinks configured (a sink that is not configured has no driver).
    pub fn unavailable(&self, sinks: &[SinkId]) -> Option<&'static str> {
        if self.spool_failed.load(Relaxed) != 0 {
            return Some("spool fsync failed; restart the collector");
        }
        if self.spool_full.load(Relaxed) != 0 {
            return Some("spool full; a sink is behind");
        }
        if sinks
            .iter()
            .any(|s| self.sink(*s).driver_exited.load(Relaxed) != 0)
        {
            return Some("a sink driver stopped");
        }
        None
    }

    /// Prometheus text exposition of the store's series.
    pub fn render(&self, out: &mut String) {
        let g = |a: &AtomicU64| a.load(Relaxed);
        let mut gauge = |name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP meshaudit_{name} {help}\n# TYPE meshaudit_{name} gauge\nmeshaudit_{name} {v}"
            );
        };
        gauge(
            "spool_bytes",
            "bytes in spool segments on disk",
            g(&self.spool_bytes),
        );
        gauge(
            "spool_full",
            "1 while the spool is at --spool-max-bytes and ingest is slowed",
            g(&self.spool_full),
        );
        gauge(
            "spool_failed",
            "1 after a failed spool fsync: every batch is refused until a restart",
            g(&self.spool_failed),
        );
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP meshaudit_{name}_total {help}\n# TYPE meshaudit_{name}_total counter\nmeshaudit_{name}_total {v}"
            );
        };
        counter(
            "spool_full_waits",
            "times ingest waited for spool space",
            g(&self.spool_full_waits),
        );
        counter(
            "spool_records_appended",
            "records made durable in the spool",
            g(&self.spool_records_appended),
        );
        counter("spool_fsyncs", "spool fsyncs", g(&self.spool_fsyncs));
        counter(
            "spool_write_errors",
            "failed spool appends",
            g(&self.spool_write_errors),
        );
        counter(
            "spool_corrupt_frames",
            "damaged spool frames skipped (disk corruption)",
            g(&self.spool_corrupt_frames),
        );
        counter(
            "spool_truncated_bytes",
            "bytes of torn tail cut at start-up",
            g(&self.spool_truncated_bytes),
        );
        counter(
            "postgres_rows_inserted",
            "rows inserted into audit_records",
            g(&self.postgres_rows_inserted),
        );
        counter(
            "postgres_rows_duplicate",
            "rows already present in audit_records (replays, re-sends)",
            g(&self.postgres_rows_duplicate),
        );
        type Series<'a> = (&'a str, &'a str, &'a str, fn(&SinkMetrics) -> &AtomicU64);
        let series: [Series; 3] = [
            (
                "sink_driver_exited",
                "gauge",
                "1 once the sink's driver has ended (shutdown, or a panic)",
                |s| &s.driver_exited,
            ),
            (
                "sink_lag_bytes",
                "gauge",
                "spooled bytes the sink has not acknowledged",
                |s| &s.lag_bytes,
            ),
            (
                "sink_retries_total",
                "counter",
                "failed sink writes that are retried",
                |s| &s.retries,
            ),
        ];
        for (name, kind, help, get) in series {
            let _ = writeln!(
                out,
                "# HELP meshaudit_{name} {help}\n# TYPE meshaudit_{name} {kind}"
            );
            for id in SinkId::ALL {
                let _ = writeln!(
                    out,
                    "meshaudit_{name}{{sink=\"{}\"}} {}",
                    id.name(),
                    g(get(self.sink(id)))
                );
            }
        }
    }
}
