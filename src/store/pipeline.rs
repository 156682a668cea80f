//! The pipeline: ingest appends to the spool; one driver per sink reads the spool from the
//! sink's cursor, writes, and acknowledges what the sink has made durable.
//!
//! A sink that fails is retried with back-off from its last acknowledged position, without
//! holding up the other sinks: the spool keeps what it has not taken (up to its bound). The
//! Parquet driver is a thread (encoding and file I/O are blocking); the Postgres driver is a
//! task (its I/O is async).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::metrics::SinkId;
use super::object::ObjectTarget;
use super::parquet::{ParquetError, ParquetSink};
use super::postgres::PostgresSink;
use super::spool::{Appender, Next, SinkReader, Spool};
use crate::telemetry::Metrics;

/// How often buffered Parquet rows are encoded and old files closed.
const TICK: Duration = Duration::from_millis(500);
/// First back-off after a failed write or upload; doubles up to MAX_BACKOFF (0.5, 1, 2, ... 30 s,
/// then every 30 s for as long as the sink fails). An object-store upload has already been
/// retried inside the store client by then (`object::retry_config`: at most 5 retries within
/// 30 s), so a throttling or unreachable store is tried again about every minute at worst,
/// while the spool holds the records and `/readyz` follows the spool.
const BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Marks a sink driver as ended when dropped, which also happens when it panics: `/readyz` then
/// reports the collector unready instead of accepting records no sink will take.
struct ExitFlag<'a>(&'a std::sync::atomic::AtomicU64);

impl Drop for ExitFlag<'_> {
    fn drop(&mut self) {
        self.0.store(1, Relaxed);
    }
}

pub struct Pipeline {
    /// Where ingest hands accepted batches.
    pub appender: Appender,
    spool: Spool,
    parquet_done: oneshot::Receiver<()>,
    postgres: Option<tokio::task::JoinHandle<()>>,
    stop: CancellationToken,
}

/// How the drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Every sink took everything before the deadline.
    pub complete: bool,
    /// Spooled bytes the slowest sink has yet to take (delivered at the next start).
    pub behind_bytes: u64,
    /// Records in those bytes (`store::disk::records_behind`); a lower bound when not `exact`.
    pub behind_records: u64,
    pub behind_records_exact: bool,
}

/// Starts one driver per sink. `rt` runs the Parquet thread's waits.
pub fn start(
    spool: Spool,
    appender: Appender,
    (parquet, object): (ParquetSink, Option<ObjectTarget>),
    postgres: Option<(PostgresSink, usize)>,
    row_group_rows: usize,
    metrics: Arc<Metrics>,
    rt: Handle,
) -> std::io::Result<Pipeline> {
    let stop = CancellationToken::new();
    let reader = spool
        .reader(SinkId::Parquet)
        .ok_or_else(|| std::io::Error::other("the spool has no parquet cursor"))?;
    let (done_tx, parquet_done) = oneshot::channel();
    {
        let stop = stop.clone();
        let metrics = Arc::clone(&metrics);
        std::thread::Builder::new()
            .name("meshaudit-parquet".into())
            .spawn(move || {
                let _exited = ExitFlag(&metrics.store.sink(SinkId::Parquet).driver_exited);
                run_parquet(
                    parquet,
                    reader,
                    row_group_rows,
                    &metrics,
                    &stop,
                    &rt,
                    object,
                );
                let _ = done_tx.send(());
            })?;
    }
    let postgres = match postgres {
        Some((sink, batch_rows)) => {
            let reader = spool
                .reader(SinkId::Postgres)
                .ok_or_else(|| std::io::Error::other("the spool has no postgres cursor"))?;
            Some(tokio::spawn(run_postgres(
                sink,
                reader,
                batch_rows,
                metrics,
                stop.clone(),
            )))
        }
        None => None,
    };
    Ok(Pipeline {
        appender,
        spool,
        parquet_done,
        postgres,
        stop,
    })
}

impl Pipeline {
    /// Stops taking batches, lets every sink take what is spooled until `deadline`, then
    /// persists the cursors. What a sink could not take stays spooled for the next start.
    /// Call after ingest has stopped.
    pub async fn drain(self, deadline: tokio::time::Instant) -> Drained {
        let Pipeline {
            appender,
            mut spool,
            parquet_done,
            postgres,
            stop,
        } = self;
        drop(appender);
        let spool = match tokio::task::spawn_blocking(move || {
            spool.close_appends();
            spool
        })
        .await
        {
            Ok(s) => s,
            Err(e) => {
                error!(error = %e, "closing the spool failed");
                return Drained {
                    complete: false,
                    behind_bytes: 0,
                    behind_records: 0,
                    behind_records_exact: false,
                };
            }
        };
        let sinks = async {
            let _ = parquet_done.await;
            if let Some(pg) = postgres {
                let _ = pg.await;
            }
        };
        let complete = tokio::time::timeout_at(deadline, sinks).await.is_ok();
        if !complete {
            warn!("shutdown deadline reached before every sink took everything; stopping them");
        }
        // The drivers stop between writes; nothing is acknowledged that is not durable.
        stop.cancel();
        let (behind_records, behind_records_exact) =
            super::disk::records_behind(&spool, Duration::from_secs(5)).await;
        let behind_bytes = tokio::task::spawn_blocking(move || spool.shutdown())
            .await
            .unwrap_or(0);
        Drained {
            complete: complete && behind_bytes == 0,
            behind_bytes,
            behind_records,
            behind_records_exact,
        }
    }
}

fn run_parquet(
    mut sink: ParquetSink,
    mut reader: SinkReader,
    row_group_rows: usize,
    metrics: &Metrics,
    stop: &CancellationToken,
    rt: &Handle,
    mut object: Option<ObjectTarget>,
) {
    // With object storage: the durable position of the last sync that uploaded everything.
    let mut synced: Option<u64> = None;
    // Nothing pushed yet: durable up to where this sink's cursor already is.
    sink.reset(reader.acked());
    let mut next_tick = Instant::now() + TICK;
    let mut backoff = BACKOFF;
    // Failed object-store syncs in a row (each already retried inside the store client).
    let mut upload_failures: u32 = 0;
    while !stop.is_cancelled() {
        let wait = next_tick.saturating_duration_since(Instant::now());
        let step: Result<bool, ParquetError> =
            match rt.block_on(reader.next(row_group_rows, wait.max(Duration::from_millis(1)))) {
                Next::Batch(b) => b
                    .frames
                    .iter()
                    .try_for_each(|f| sink.push(f))
                    .map(|()| false),
                Next::Idle => Ok(false),
                Next::Closed => sink.finish().map(|()| true),
            };
        let step = step.and_then(|closed| {
            if Instant::now() >= next_tick {
                next_tick = Instant::now() + TICK;
                sink.tick()?;
            }
            Ok(closed)
        });
        // Open files hold the cursor back until they close (by size or age). When that alone
        // would fill half the spool, close them now: smaller files beat slowing ingest.
        let step = step.and_then(|closed| {
            let lag = reader.end().saturating_sub(sink.durable_lsn());
            if !closed && sink.has_pending() && lag > reader.max_bytes() / 2 {
                info!(
                    spool_lag_bytes = lag,
                    "closing parquet files early: they hold half the spool back"
                );
                sink.finish()?;
            }
            Ok(closed)
        });
        match step {
            Ok(closed) => {
                let durable = sink.durable_lsn();
                // Object storage: acknowledge only what the store has confirmed.
                if let Some(o) = object.as_mut().filter(|_| synced != Some(durable)) {
                    if let Err(e) = o.sync(rt) {
                        metrics
                            .store
                            .sink(SinkId::Parquet)
                            .retries
                            .fetch_add(1, Relaxed);
                        upload_failures += 1;
                        let lag = reader.end().saturating_sub(reader.acked());
                        if upload_failures == 1 {
                            error!(error = %e, spool_lag_bytes = lag, retry_in_ms = backoff.as_millis() as u64, "parquet upload failed; the records stay in the spool and finished files wait in the data dir until the store takes them");
                        } else {
                            warn!(error = %e, attempt = upload_failures, spool_lag_bytes = lag, retry_in_ms = backoff.as_millis() as u64, "parquet upload failed again; still retrying");
                        }
                        let pause = backoff;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        rt.block_on(async {
                            tokio::select! {
                                () = stop.cancelled() => {}
                                () = tokio::time::sleep(pause) => {}
                            }
                        });
                        continue;
                    }
                    if upload_failures > 0 {
                        info!(
                            failed_attempts = upload_failures,
                            "parquet uploads recovered; spooled records are being delivered"
                        );
                        upload_failures = 0;
                    }
                    synced = Some(durable);
                }
                reader.ack(durable);
                backoff = BACKOFF;
                if closed {
                    info!("parquet sink drained");
                    return;
                }
            }
            Err(e) => {
                metrics.parquet_write_errors.fetch_add(1, Relaxed);
                metrics
                    .store
                    .sink(SinkId::Parquet)
                    .retries
                    .fetch_add(1, Relaxed);
                error!(error = %e, retry_in_ms = backoff.as_millis() as u64, "parquet write failed; unfinished files are dropped and their records written again from the spool");
                sink.reset(reader.acked());
                reader.rewind();
                let pause = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                rt.block_on(async {
                    tokio::select! {
                        () = stop.cancelled() => {}
                        () = tokio::time::sleep(pause) => {}
                    }
                });
            }
        }
    }
}

async fn run_postgres(
    mut sink: PostgresSink,
    mut reader: SinkReader,
    batch_rows: usize,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let store = Arc::clone(&metrics.store);
    let _exited = ExitFlag(&store.sink(SinkId::Postgres).driver_exited);
    let mut failures: u32 = 0;
    let mut backoff = BACKOFF;
    loop {
        let next = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            n = reader.next(batch_rows, Duration::from_secs(1)) => n,
        };
        let batch = match next {
            Next::Closed => {
                info!("postgres sink drained");
                return;
            }
            Next::Idle => {
                if let Err(e) = sink.maintain_if_due().await {
                    warn!(error = %e, "postgres partition maintenance failed; will retry");
                }
                continue;
            }
            Next::Batch(b) => b,
        };
        // The same batch until it is in: a batch is one transaction, so a failure leaves
        // nothing half-written, and a retry of a batch that did commit inserts nothing twice.
        loop {
            let written = tokio::select! {
                biased;
                () = stop.cancelled() => return,
                w = sink.write_or_reject(&batch.frames) => w,
            };
            match written {
                Ok(_) => {
                    reader.ack(batch.end);
                    if failures > 0 {
                        info!(
                            failed_attempts = failures,
                            "postgres sink recovered; spooled records are being delivered"
                        );
                    }
                    failures = 0;
                    backoff = BACKOFF;
                    if let Err(e) = sink.maintain_if_due().await {
                        warn!(error = %e, "postgres partition maintenance failed; will retry");
                    }
                    break;
                }
                Err(e) => {
                    failures += 1;
                    metrics
                        .store
                        .sink(SinkId::Postgres)
                        .retries
                        .fetch_add(1, Relaxed);
                    let lag = reader.end().saturating_sub(reader.acked());
                    if failures == 1 || e.needs_operator() {
                        error!(error = %e, spool_lag_bytes = lag, retry_in_ms = backoff.as_millis() as u64, "postgres sink cannot write; records stay in the spool and are retried");
                    } else {
                        warn!(error = %e, attempt = failures, spool_lag_bytes = lag, retry_in_ms = backoff.as_millis() as u64, "postgres sink still cannot write");
                    }
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::AuditRecord;
    use crate::store::parquet::ParquetConfig;
    use crate::store::spool::{FsyncMode, SpoolConfig};

    /// The writer and Parquet threads build their timers inside the runtime (a timer built on a
    /// plain thread panics with "no reactor running"): started from outside any runtime, the
    /// pipeline still writes what it is sent and drains.
    #[test]
    fn pipeline_started_from_a_plain_thread_writes_what_it_is_sent() {
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
        let (spool, appender) = Spool::open(
            SpoolConfig {
                dir: dir.path().join("_spool"),
                max_bytes: 1 << 30,
                segment_bytes: 1 << 20,
                fsync: FsyncMode::Interval(Duration::from_millis(100)),
                queue_batches: 4,
                sinks: vec![SinkId::Parquet],
            },
            Arc::clone(&metrics.store),
            rt.handle().clone(),
        )
        .expect("spool");
        let p = start(
            spool,
            appender,
            (sink, None),
            None,
            16,
            Arc::clone(&metrics),
            rt.handle().clone(),
        )
        .expect("start");
        let rec = AuditRecord {
            record_id: "a".into(),
            start_time: Some(1_772_446_504_000_000),
            received_at: 1_772_446_504_000_000,
            ..Default::default()
        };
        rt.block_on(p.appender.send(vec![rec])).expect("accepted");
        let drained = rt.block_on(p.drain(tokio::time::Instant::now() + Duration::from_secs(10)));
        assert!(drained.complete, "{drained:?}");
        assert_eq!(metrics.parquet_records_written.load(Relaxed), 1);
    }
}
