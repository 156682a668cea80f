//! The durable spool between ingest and the sinks: nothing accepted is ever lost.
//!
//! ```text
//! ingest streams ──Appender::send──▶ writer thread ──▶ segment files (group commit)
//!                                          │
//!                                          ├──▶ tail cache (recent frames, in memory)
//!                                          ▼
//!                      SinkReader (parquet)      SinkReader (postgres)
//!                      own cursor, acks          own cursor, acks
//! ```
//!
//! - A batch counts as accepted only once [`Appender::send`] returns: its frame is written (and,
//!   in [`FsyncMode::Always`], fsynced). Many streams' batches share one write and one fsync.
//! - Positions are LSNs: byte offsets in one endless log, cut into segment files named by the LSN
//!   they start at (`seg-00000000000000001234.log`). A frame never spans segments.
//! - Each sink reads from its own cursor and acknowledges what it has made durable; its cursor
//!   is persisted (fsynced) before any segment it allows to go is deleted. On restart every sink
//!   is handed again whatever it had not acknowledged.
//! - Sinks read recent frames from an in-memory tail cache (no decode), older ones from disk.
//! - When the segments on disk reach `max_bytes`, the writer stops taking batches: ingest waits
//!   (HTTP/2 flow control reaches Envoy), and the collector says so in logs and metrics.
//! - A torn tail (a frame cut short by a crash) is found by its checksum and truncated at
//!   start-up, never misread.
//!
//! Invariant: only the writer thread appends; readers only read below the published durable end.

mod damage;
mod files;
pub use damage::DAMAGED_DIR;
pub use files::read_spooled;
pub mod frame;
mod reader;
mod writer;

use std::collections::VecDeque;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use thiserror::Error;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tracing::{info, warn};

pub use reader::{Batch, Next, SinkReader};

use super::digest::canonical::{Encoder, Hash};
use super::metrics::{SinkId, StoreMetrics};
use crate::record::AuditRecord;

#[derive(Debug, Error)]
pub enum SpoolError {
    #[error("spool: cannot use directory {path}: {source}. Fix: point --spool-dir at a writable local directory")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("spool: {path} is locked by another meshaudit process. Fix: give each collector its own --spool-dir (or --data-dir)")]
    Locked { path: PathBuf },
    #[error("spool: I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("spool: {path} is not a meshaudit spool segment (bad header). Fix: move it out of the spool directory")]
    Foreign { path: PathBuf },
    #[error("spool: cannot start the writer thread: {0}")]
    Thread(std::io::Error),
}

impl SpoolError {
    fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> SpoolError {
        let path = path.into();
        move |source| SpoolError::Io { path, source }
    }
}

/// Why a batch was not accepted.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum AppendError {
    #[error("the spool is closed (shutting down)")]
    Closed,
    #[error("the spool cannot write to disk; see the collector's error log")]
    Failed,
    /// An append failed (a full disk, any I/O error); later batches are tried again.
    #[error("the spool cannot append to disk: {0}")]
    Disk(String),
}

/// When an accepted batch is on stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncMode {
    /// A batch is accepted after its group commit's fsync: nothing accepted is lost, even on
    /// power loss.
    Always,
    /// A batch is accepted once written to the OS; the spool fsyncs at least this often.
    /// A killed process loses nothing accepted (the kernel has the bytes); a power loss or
    /// kernel crash can lose what was accepted in the last interval.
    Interval(Duration),
}

#[derive(Debug, Clone)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    /// Bound on segment bytes on disk; past it ingest waits.
    pub max_bytes: u64,
    pub segment_bytes: u64,
    pub fsync: FsyncMode,
    /// Batches queued for the writer before senders wait.
    pub queue_batches: usize,
    /// The sinks that read this spool. Segments go once all of them have acknowledged.
    pub sinks: Vec<SinkId>,
}

/// One accepted batch as the sinks see it: records with their place in the log.
#[derive(Debug)]
pub struct Frame {
    /// LSN of the frame's first byte.
    pub start: u64,
    /// LSN just past the frame.
    pub end: u64,
    pub records: Vec<AuditRecord>,
    /// Each record's canonical hash (store::digest::canonical), made once by whichever sink
    /// needs them first and shared by the others: the encoding is the same for every sink.
    hashes: OnceLock<Vec<Hash>>,
}

impl Frame {
    pub fn new(start: u64, end: u64, records: Vec<AuditRecord>) -> Frame {
        Frame {
            start,
            end,
            records,
            hashes: OnceLock::new(),
        }
    }

    /// The canonical hash of every record, in order (computed on first use, then shared).
    pub fn hashes(&self) -> &[Hash] {
        self.hashes.get_or_init(|| {
            thread_local! {
                static ENCODER: std::cell::RefCell<Encoder> = std::cell::RefCell::new(Encoder::new());
            }
            ENCODER.with_borrow_mut(|e| self.records.iter().map(|r| e.record(r)).collect())
        })
    }
}

/// A durable-end announcement: everything below `end` can be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Published {
    end: u64,
    /// No more appends will come.
    closed: bool,
}

struct Request {
    frame: Vec<u8>,
    records: Vec<AuditRecord>,
    done: oneshot::Sender<Result<(), AppendError>>,
}

/// Encoded bytes of recent frames kept decoded in memory for sinks that keep up. Decoded
/// records took about 3-4 times their encoded size while their text was a `String` per
/// column (~50-60 MiB); with `record::text`'s shared chunks, peak RSS at max rate fell by a
/// further 10-16 MiB. A sink further behind reads from disk.
const TAIL_CACHE_BYTES: u64 = 16 << 20;

struct Cursor {
    sink: SinkId,
    /// What the sink has acknowledged as durable.
    acked: AtomicU64,
    path: PathBuf,
}

/// State shared by the writer, the readers and the shutdown path.
struct Shared {
    cfg: SpoolConfig,
    published: watch::Sender<Published>,
    /// Start LSNs of the segment files, oldest first; the last one is being appended to.
    segments: Mutex<Vec<u64>>,
    cache: Mutex<TailCache>,
    cursors: Vec<Cursor>,
    /// Signalled when segments are deleted (room for the writer).
    space: Notify,
    /// Serializes cursor persistence and segment deletion.
    maintenance: Mutex<Maintenance>,
    metrics: Arc<StoreMetrics>,
}

#[derive(Default)]
struct TailCache {
    frames: VecDeque<Arc<Frame>>,
    bytes: u64,
}

struct Maintenance {
    /// Cursor values last written to disk, per `Shared::cursors` index.
    persisted: Vec<u64>,
    /// Held for the life of the spool: a second process cannot open the same directory.
    _lock: File,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves plain data (no invariant half-updated that a
    // reader could misuse), so the poison flag is ignored.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Hands accepted batches to the spool. Cheap to clone; one per ingest stream is fine.
#[derive(Clone)]
pub struct Appender {
    tx: mpsc::Sender<Request>,
}

impl Appender {
    /// Returns once `batch` is durable (see [`FsyncMode`]); only then does it count as accepted.
    /// The batch is encoded here, in the caller's task, so the single writer only copies bytes.
    pub async fn send(&self, batch: Vec<AuditRecord>) -> Result<(), AppendError> {
        if batch.is_empty() {
            return Ok(());
        }
        let frame = frame::encode(&batch);
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Request {
                frame,
                records: batch,
                done,
            })
            .await
            .map_err(|_| AppendError::Closed)?;
        wait.await.map_err(|_| AppendError::Closed)?
    }
}

/// The open spool.
pub struct Spool {
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
    close: Arc<Notify>,
}

impl Spool {
    /// Opens (or creates) the spool, repairs a torn tail, loads every sink's cursor and starts
    /// the writer thread. `rt` runs the channel waits of the writer thread.
    pub fn open(
        cfg: SpoolConfig,
        metrics: Arc<StoreMetrics>,
        rt: tokio::runtime::Handle,
    ) -> Result<(Spool, Appender), SpoolError> {
        let recovered = files::recover(&cfg, &metrics)?;
        let cursors = cfg
            .sinks
            .iter()
            .zip(&recovered.cursors)
            .map(|(sink, &at)| Cursor {
                sink: *sink,
                acked: AtomicU64::new(at),
                path: files::cursor_path(&cfg.dir, *sink),
            })
            .collect::<Vec<_>>();
        info!(
            dir = %cfg.dir.display(),
            end = recovered.end,
            segments = recovered.segments.len(),
            backlog_bytes = recovered.end - recovered.segments.first().copied().unwrap_or(recovered.end),
            "spool opened"
        );
        for c in &cursors {
            let behind = recovered.end - c.acked.load(Relaxed);
            if behind > 0 {
                info!(
                    sink = c.sink.name(),
                    bytes = behind,
                    "replaying spooled records the sink had not acknowledged"
                );
            }
        }
        let (published, _) = watch::channel(Published {
            end: recovered.end,
            closed: false,
        });
        let persisted = recovered.cursors.clone();
        let shared = Arc::new(Shared {
            published,
            segments: Mutex::new(recovered.segments),
            cache: Mutex::new(TailCache::default()),
            cursors,
            space: Notify::new(),
            maintenance: Mutex::new(Maintenance {
                persisted,
                _lock: recovered.lock,
            }),
            metrics,
            cfg,
        });
        let (tx, rx) = mpsc::channel(shared.cfg.queue_batches.max(1));
        let close = Arc::new(Notify::new());
        let writer = writer::start(
            Arc::clone(&shared),
            recovered.active,
            recovered.end,
            rx,
            Arc::clone(&close),
            rt,
        )
        .map_err(SpoolError::Thread)?;
        Ok((
            Spool {
                shared,
                writer: Some(writer),
                close,
            },
            Appender { tx },
        ))
    }

    /// The reader for `sink`, starting at its acknowledged cursor.
    pub fn reader(&self, sink: SinkId) -> Option<SinkReader> {
        let idx = self.shared.cursors.iter().position(|c| c.sink == sink)?;
        Some(SinkReader::new(Arc::clone(&self.shared), idx))
    }

    /// Stops taking batches: queued ones are still written and acknowledged, then the writer
    /// fsyncs and ends. Readers see `closed` once they reach the final end.
    pub fn close_appends(&mut self) {
        self.close.notify_one();
        if let Some(w) = self.writer.take() {
            if w.join().is_err() {
                warn!("the spool writer thread panicked");
            }
        }
    }

    /// Persists every cursor and deletes what all sinks have. Call after the sinks stopped.
    pub fn shutdown(mut self) -> u64 {
        self.close_appends();
        let end = self.shared.end();
        let all_taken = self
            .shared
            .cursors
            .iter()
            .all(|c| c.acked.load(Relaxed) == end);
        let last = lock(&self.shared.segments).last().copied();
        if all_taken && last.is_some_and(|l| l < end) {
            // Every sink has everything: start the next run on an empty segment so the full one
            // can go now rather than linger until it would have rolled.
            match files::create_segment(&self.shared.cfg.dir, end) {
                Ok(_) => lock(&self.shared.segments).push(end),
                Err(e) => warn!(error = %e, "cannot start a fresh spool segment at shutdown"),
            }
        }
        self.shared.maintain();
        let mut behind = 0;
        for c in &self.shared.cursors {
            let lag = end - c.acked.load(Relaxed);
            if lag > 0 {
                warn!(
                    sink = c.sink.name(),
                    bytes = lag,
                    "sink did not take everything before shutdown; the rest stays in the spool and is delivered at the next start"
                );
            }
            behind = behind.max(lag);
        }
        behind
    }
}

impl Shared {
    fn end(&self) -> u64 {
        self.published.borrow().end
    }

    /// Bytes of segments on disk.
    fn disk_bytes(&self) -> u64 {
        let first = lock(&self.segments).first().copied();
        first.map_or(0, |f| self.end().saturating_sub(f))
    }

    fn update_gauges(&self) {
        let end = self.end();
        self.metrics.spool_bytes.store(self.disk_bytes(), Relaxed);
        for c in &self.cursors {
            self.metrics
                .sink(c.sink)
                .lag_bytes
                .store(end.saturating_sub(c.acked.load(Relaxed)), Relaxed);
        }
    }

    /// Persists changed cursors (fsynced), then deletes segments every sink is past. Cursors go
    /// first: a segment is gone only once no cursor on disk can point into it.
    fn maintain(&self) {
        let mut m = lock(&self.maintenance);
        for (i, c) in self.cursors.iter().enumerate() {
            let at = c.acked.load(Relaxed);
            if at != m.persisted[i] {
                match files::write_cursor(&c.path, at) {
                    Ok(()) => m.persisted[i] = at,
                    Err(e) => {
                        warn!(sink = c.sink.name(), error = %e, "cannot persist spool cursor; will retry")
                    }
                }
            }
        }
        let safe = m
            .persisted
            .iter()
            .copied()
            .min()
            .unwrap_or_else(|| self.end());
        // Never the last segment: it is the one being appended to.
        let doomed: Vec<u64> = {
            let segs = lock(&self.segments);
            segs.windows(2)
                .take_while(|w| w[1] <= safe)
                .map(|w| w[0])
                .collect()
        };
        if doomed.is_empty() {
            self.update_gauges();
            return;
        }
        let mut deleted = 0;
        for start in &doomed {
            let path = files::segment_path(&self.cfg.dir, *start);
            match std::fs::remove_file(&path) {
                Ok(()) => deleted += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => deleted += 1,
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "cannot delete spool segment; will retry");
                    break;
                }
            }
        }
        lock(&self.segments).drain(..deleted);
        self.update_gauges();
        self.space.notify_waiters();
    }
}

#[cfg(test)]
mod tests;
