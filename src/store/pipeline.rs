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
                // The timer must be created inside the runtime, hence the async block.
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
