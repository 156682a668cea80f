//! The writer thread: receives accepted batches from ingest and feeds the sinks.
//!
//! Ingest hands batches over a bounded channel; when it is full, stream reads wait (HTTP/2 flow
//! control reaches Envoy) instead of memory growing. The thread ends when every sender is gone
//! (the server has stopped), after finishing every file.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tracing::error;

use super::parquet::{ParquetError, ParquetSink};
use crate::record::AuditRecord;
use crate::telemetry::Metrics;

/// How often buffered rows are encoded and old files closed.
const TICK: Duration = Duration::from_millis(500);
/// Back-off after a failed write before the same rows are tried again.
const RETRY: Duration = Duration::from_secs(1);

pub struct Pipeline {
    pub sender: mpsc::Sender<Vec<AuditRecord>>,
    pub writer: JoinHandle<Result<(), ParquetError>>,
}

/// Starts the writer thread. `capacity` is in messages (batches), not records.
pub fn start(
    mut sink: ParquetSink,
    capacity: usize,
    metrics: Arc<Metrics>,
    rt: Handle,
) -> std::io::Result<Pipeline> {
    let (sender, mut rx) = mpsc::channel::<Vec<AuditRecord>>(capacity);
    let writer = std::thread::Builder::new()
        .name("meshaudit-parquet".into())
        .spawn(move || {
            let mut next_tick = Instant::now() + TICK;
            loop {
                let wait = next_tick.saturating_duration_since(Instant::now());
                // The timeout is built inside the async block: its timer must be created
                // within the runtime's context, which `block_on` enters; built outside, on this
                // plain thread, it panics ("no reactor running") and kills the writer.
                match rt.block_on(async { tokio::time::timeout(wait, rx.recv()).await }) {
                    Ok(Some(batch)) => {
                        if let Err(e) = sink.push(batch) {
                            failed(&metrics, &e);
                        }
                    }
                    Ok(None) => break,
                    Err(_elapsed) => {}
                }
                if Instant::now() >= next_tick {
                    if let Err(e) = sink.tick() {
                        failed(&metrics, &e);
                        std::thread::sleep(RETRY);
                    }
                    next_tick = Instant::now() + TICK;
                }
            }
            sink.finish()
        })?;
    Ok(Pipeline { sender, writer })
}

fn failed(metrics: &Metrics, e: &ParquetError) {
    metrics.parquet_write_errors.fetch_add(1, Relaxed);
    error!(error = %e, "parquet write failed; will retry");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::parquet::ParquetConfig;

    #[test]
    fn writer_thread_writes_what_it_is_sent() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let metrics = Metrics::new();
        let sink = ParquetSink::new(
            ParquetConfig {
                data_dir: dir.path().to_path_buf(),
                max_file_bytes: 1 << 30,
                max_file_age: Duration::from_secs(3600),
                row_group_rows: 16,
                zstd_level: 1,
            },
            Arc::clone(&metrics),
        )
        .expect("sink");
        let p = start(sink, 4, Arc::clone(&metrics), rt.handle().clone()).expect("start");
        let rec = AuditRecord {
            record_id: "a".into(),
            start_time: Some(1_772_446_504_000_000),
            received_at: 1_772_446_504_000_000,
            ..Default::default()
        };
        rt.block_on(p.sender.send(vec![rec]))
            .expect("writer is alive");
        drop(p.sender);
        p.writer
            .join()
            .expect("writer thread must not panic")
            .expect("writer finishes cleanly");
        assert_eq!(metrics.parquet_records_written.load(Relaxed), 1);
    }
}
