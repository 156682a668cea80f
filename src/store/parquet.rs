//! The Parquet sink (the embedded default): files under `DATA_DIR/dt=YYYY-MM-DD/hour=HH/`, by the
//! record's `start_time` (UTC; `received_at` when the entry had none).
//!
//! Invariants:
//! - A file is written under a hidden temporary name (`.part-….parquet.inprogress`) and renamed
//!   to `part-….parquet` only once closed and fsynced: readers never see a partial file, and
//!   nothing else under the data dir ends in `.parquet`.
//! - Memory is bounded: rows are buffered per partition up to [`ENCODE_BATCH_ROWS`], then encoded
//!   into the open file's ArrowWriter, which keeps the row group in columnar form until it holds
//!   `row_group_rows`: a buffered row pins its whole spool frame (decoded records), an encoded
//!   one only its columnar bytes. Files roll at `max_file_bytes` or `max_file_age`.
//! - All work here is blocking; it runs on its own thread, never on the async runtime.
//! - What is durable is what is in closed files: [`ParquetSink::durable_lsn`] is the spool
//!   position below which every record pushed is in a closed, renamed file. On a crash, records
//!   in unfinished files are replayed from the spool (at-least-once, as the contract allows).

use std::collections::HashMap;

/// Rows per partition handed to the ArrowWriter at once: enough to amortize building an Arrow
/// batch, few enough that buffered rows do not pin much of the spool's memory.
pub const ENCODE_BATCH_ROWS: usize = 2048;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Datelike, Timelike};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use thiserror::Error;
use tracing::{info, warn};

use crate::record::{arrow as record_arrow, AuditRecord};
use crate::store::digest::files::{FileRecords, HashingFile, ParquetChain};
use crate::store::spool::Frame;
use crate::telemetry::Metrics;

#[derive(Debug, Error)]
pub enum ParquetError {
    #[error("parquet sink: cannot use data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parquet sink: I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parquet sink: encoding failed: {0}")]
    Encode(#[from] parquet::errors::ParquetError),
    #[error("parquet sink: building the Arrow batch failed: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    #[error("parquet sink: {0}")]
    Digest(#[from] crate::store::digest::DigestError),
}

#[derive(Debug, Clone)]
pub struct ParquetConfig {
    pub data_dir: PathBuf,
    pub max_file_bytes: u64,
    pub max_file_age: Duration,
    pub row_group_rows: usize,
    pub zstd_level: i32,
}

/// Hive partition of a record: (date, hour) in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Partition {
    year: i32,
    month: u32,
    day: u32,
    hour: u32,
}

impl Partition {
    fn of(rec: &AuditRecord) -> Partition {
        let micros = rec.start_time.unwrap_or(rec.received_at);
        let t = DateTime::from_timestamp_micros(micros).unwrap_or_default();
        Partition {
            year: t.year(),
            month: t.month(),
            day: t.day(),
            hour: t.hour(),
        }
    }

    fn dir(&self, root: &Path) -> PathBuf {
        root.join(format!(
            "dt={:04}-{:02}-{:02}",
            self.year, self.month, self.day
        ))
        .join(format!("hour={:02}", self.hour))
    }
}

/// A buffered row: a record inside a spool frame shared with the other sinks.
struct Row {
    frame: Arc<Frame>,
    index: usize,
}

impl Row {
    fn record(&self) -> &AuditRecord {
        &self.frame.records[self.index]
    }
}

struct OpenFile {
    /// The file's bytes are hashed as they are written, for its digest.
    writer: ArrowWriter<HashingFile>,
    /// Its records, hashed in row order (with digests on).
    records: FileRecords,
    tmp_path: PathBuf,
    final_path: PathBuf,
    opened: Instant,
    rows: u64,
}

pub struct ParquetSink {
    cfg: ParquetConfig,
    props: WriterProperties,
    /// Distinguishes this process's files from other replicas' writing to the same storage.
    instance: String,
    seq: u64,
    buffers: HashMap<Partition, Vec<Row>>,
    open: HashMap<Partition, OpenFile>,
    /// Per partition with rows not yet in a closed file: the spool LSN of the oldest such row.
    pending_since: HashMap<Partition, u64>,
    /// End LSN of the last frame pushed.
    pushed_end: u64,
    /// The digest chain (docs/tamper-evidence.md); None only in tests and benchmarks.
    digests: Option<ParquetChain>,
    metrics: Arc<Metrics>,
}

impl ParquetSink {
    pub fn new(cfg: ParquetConfig, metrics: Arc<Metrics>) -> Result<Self, ParquetError> {
        let dir_err = |source| ParquetError::DataDir {
            path: cfg.data_dir.clone(),
            source,
        };
        fs::create_dir_all(&cfg.data_dir).map_err(dir_err)?;
        // Fail at start-up, not on the first batch, when the directory is not writable.
        let probe = cfg.data_dir.join(".meshaudit-write-probe");
        fs::write(&probe, b"").map_err(dir_err)?;
        fs::remove_file(&probe).map_err(dir_err)?;
        let stale = count_in_progress(&cfg.data_dir);
        if stale > 0 {
            warn!(
                files = stale,
                data_dir = %cfg.data_dir.display(),
                "found unfinished .parquet.inprogress files from an earlier run; their records are written again from the spool, so once no other process writes to this data dir they can be deleted"
            );
        }
        let zstd = ZstdLevel::try_new(cfg.zstd_level)?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(zstd))
            .set_max_row_group_row_count(Some(cfg.row_group_rows))
            .set_created_by(format!("meshaudit {}", env!("CARGO_PKG_VERSION")))
            .build();
        let instance = format!("{:08x}", rand::random::<u32>());
        Ok(ParquetSink {
            cfg,
            props,
            instance,
            seq: 0,
            buffers: HashMap::new(),
            open: HashMap::new(),
            pending_since: HashMap::new(),
            pushed_end: 0,
            digests: None,
            metrics,
        })
    }

    /// Every file closed from now on gets a signed digest in the chain, written before the file
    /// is renamed into place.
    pub fn with_digests(mut self, chain: ParquetChain) -> Self {
        self.digests = Some(chain);
        self
    }

    /// Takes a spool frame's records; encodes a row group whenever a partition's buffer is full.
    /// After an error, call [`ParquetSink::reset`] and push again from the durable position.
    pub fn push(&mut self, frame: &Arc<Frame>) -> Result<(), ParquetError> {
        self.pushed_end = frame.end;
        for (index, rec) in frame.records.iter().enumerate() {
            let p = Partition::of(rec);
            self.pending_since.entry(p).or_insert(frame.start);
            let buf = self.buffers.entry(p).or_default();
            buf.push(Row {
                frame: Arc::clone(frame),
                index,
            });
            if buf.len() >= ENCODE_BATCH_ROWS.min(self.cfg.row_group_rows) {
                self.encode(p)?;
            }
        }
        Ok(())
    }

    /// True while some pushed record is not yet in a closed file.
    pub fn has_pending(&self) -> bool {
        !self.pending_since.is_empty()
    }

    /// The spool position below which every pushed record is in a closed file.
    pub fn durable_lsn(&self) -> u64 {
        self.pending_since
            .values()
            .copied()
            .min()
            .unwrap_or(self.pushed_end)
    }

    /// Forgets everything not yet in a closed file (unfinished files are deleted); the caller
    /// pushes again from `rewind_to`, the durable position it had acknowledged.
    pub fn reset(&mut self, rewind_to: u64) {
        self.pushed_end = rewind_to;
        self.buffers.clear();
        self.pending_since.clear();
        for (_, f) in self.open.drain() {
            drop(f.writer);
            if let Err(e) = fs::remove_file(&f.tmp_path) {
                warn!(path = %f.tmp_path.display(), error = %e, "cannot remove an abandoned unfinished parquet file");
            }
        }
    }

    /// Encodes every buffered row and closes files that are old enough. Called on a timer.
    pub fn tick(&mut self) -> Result<(), ParquetError> {
        let parts: Vec<Partition> = self
            .buffers
            .iter()
            .filter(|(_, b)| !b.is_empty())
            .map(|(p, _)| *p)
            .collect();
        for p in parts {
            self.encode(p)?;
        }
        let aged: Vec<Partition> = self
            .open
            .iter()
            .filter(|(_, f)| f.opened.elapsed() >= self.cfg.max_file_age)
            .map(|(p, _)| *p)
            .collect();
        for p in aged {
            self.close(p)?;
        }
        Ok(())
    }

    /// Encodes and closes everything: nothing is left buffered or in progress.
    pub fn finish(&mut self) -> Result<(), ParquetError> {
        let parts: Vec<Partition> = self.buffers.keys().copied().collect();
        for p in parts {
            self.encode(p)?;
        }
        let open: Vec<Partition> = self.open.keys().copied().collect();
        for p in open {
            self.close(p)?;
        }
        Ok(())
    }

    fn encode(&mut self, p: Partition) -> Result<(), ParquetError> {
        let Some(rows) = self
            .buffers
            .get_mut(&p)
            .filter(|b| !b.is_empty())
            .map(std::mem::take)
        else {
            return Ok(());
        };
        let started = Instant::now();
        let refs: Vec<&AuditRecord> = rows.iter().map(Row::record).collect();
        let batch = record_arrow::to_record_batch_refs(&refs)?;
        drop(refs);
        if !self.open.contains_key(&p) {
            let f = self.create(p)?;
            self.open.insert(p, f);
        }
        let Some(file) = self.open.get_mut(&p) else {
            return Ok(());
        };
        // ArrowWriter flushes a row group by itself every `row_group_rows` rows. On failure the
        // caller resets and replays from the spool.
        file.writer.write(&batch)?;
        if let Some(chain) = &mut self.digests {
            // The frame's shared hashes: a Postgres sink reading the same frames reuses them.
            rows.iter()
                .for_each(|r| chain.add_hash(&r.frame.hashes()[r.index], &mut file.records));
        }
        file.rows += rows.len() as u64;
        let size = (file.writer.bytes_written() + file.writer.in_progress_size()) as u64;
        self.metrics.batch_written("parquet", started.elapsed());
        if size >= self.cfg.max_file_bytes {
            self.close(p)?;
        }
        Ok(())
    }

    fn create(&mut self, p: Partition) -> Result<OpenFile, ParquetError> {
        let dir = p.dir(&self.cfg.data_dir);
        fs::create_dir_all(&dir).map_err(|source| ParquetError::Io {
            path: dir.clone(),
            source,
        })?;
        self.seq += 1;
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S");
        let name = format!("part-{stamp}-{}-{:06}.parquet", self.instance, self.seq);
        let tmp_path = dir.join(format!(".{name}.inprogress"));
        let final_path = dir.join(name);
        let file = File::create(&tmp_path).map_err(|source| ParquetError::Io {
            path: tmp_path.clone(),
            source,
        })?;
        let writer = ArrowWriter::try_new(
            HashingFile::new(file),
            record_arrow::schema(),
            Some(self.props.clone()),
        )?;
        Ok(OpenFile {
            writer,
            records: FileRecords::default(),
            tmp_path,
            final_path,
            opened: Instant::now(),
            rows: 0,
        })
    }

    fn close(&mut self, p: Partition) -> Result<(), ParquetError> {
        let Some(f) = self.open.remove(&p) else {
            return Ok(());
        };
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ParquetError::Io { path, source }
        };
        let (file, file_sha256, file_bytes) = f.writer.into_inner()?.finish();
        file.sync_all().map_err(io(&f.tmp_path))?;
        drop(file);
        // The digest first: it is the commit record (store::digest::files).
        if let Some(chain) = &mut self.digests {
            chain.commit(f.records, file_sha256, file_bytes, &f.final_path)?;
        }
        if let Err(e) = fs::rename(&f.tmp_path, &f.final_path) {
            if let Some(chain) = &mut self.digests {
                chain.defer_rename(f.tmp_path.clone(), f.final_path.clone());
            }
            return Err(io(&f.final_path)(e));
        }
        if let Some(dir) = f.final_path.parent() {
            // Make the rename itself durable.
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io(dir))?;
        }
        // Only now are this partition's rows durable; rows buffered since keep it pending.
        if self.buffers.get(&p).is_none_or(Vec::is_empty) {
            self.pending_since.remove(&p);
        }
        self.metrics.parquet_files_written.fetch_add(1, Relaxed);
        self.metrics
            .parquet_records_written
            .fetch_add(f.rows, Relaxed);
        info!(path = %f.final_path.display(), rows = f.rows, "parquet file written");
        Ok(())
    }
}

fn count_in_progress(root: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.to_string_lossy().ends_with(".parquet.inprogress") {
                n += 1;
            }
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, start: i64) -> AuditRecord {
        AuditRecord {
            record_id: crate::record::text::copy(id),
            start_time: Some(start),
            received_at: start,
            ..Default::default()
        }
    }

    fn parquet_files(root: &Path) -> Vec<PathBuf> {
        let mut out = vec![];
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).expect("readable").flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p)
                } else {
                    out.push(p)
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn partitions_by_hour_and_renames_only_when_closed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = ParquetConfig {
            data_dir: dir.path().to_path_buf(),
            max_file_bytes: 1 << 30,
            max_file_age: Duration::from_secs(3600),
            row_group_rows: 2,
            zstd_level: 1,
        };
        let mut sink = ParquetSink::new(cfg, Metrics::new()).expect("sink");
        // 2026-03-02T10:15:04Z and 2026-03-02T11:00:00Z
        let t10 = 1_772_446_504_000_000;
        let t11 = 1_772_449_200_000_000;
        let frame = Arc::new(Frame::new(
            100,
            200,
            vec![rec("a", t10), rec("b", t10), rec("c", t11)],
        ));
        sink.push(&frame).expect("push");
        // Rows sit in an unfinished file and a buffer: nothing is durable past the frame start.
        assert_eq!(sink.durable_lsn(), 100);
        let files = parquet_files(dir.path());
        assert_eq!(files.len(), 1, "{files:?}");
        assert!(files[0].to_string_lossy().ends_with(".parquet.inprogress"));
        assert!(files[0]
            .to_string_lossy()
            .contains("dt=2026-03-02/hour=10/"));
        sink.finish().expect("finish");
        assert_eq!(sink.durable_lsn(), 200);
        let files = parquet_files(dir.path());
        assert_eq!(files.len(), 2, "{files:?}");
        assert!(files
            .iter()
            .all(|f| f.extension().is_some_and(|e| e == "parquet")));
        assert!(files[1]
            .to_string_lossy()
            .contains("dt=2026-03-02/hour=11/part-"));
    }

    #[test]
    fn reset_deletes_unfinished_files_and_rewinds_durability() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = ParquetConfig {
            data_dir: dir.path().to_path_buf(),
            max_file_bytes: 1 << 30,
            max_file_age: Duration::from_secs(3600),
            row_group_rows: 1,
            zstd_level: 1,
        };
        let mut sink = ParquetSink::new(cfg, Metrics::new()).expect("sink");
        let t = 1_772_446_504_000_000;
        let f1 = Arc::new(Frame::new(0, 10, vec![rec("a", t)]));
        sink.push(&f1).expect("push");
        sink.finish().expect("finish");
        assert_eq!(sink.durable_lsn(), 10);
        let f2 = Arc::new(Frame::new(10, 20, vec![rec("b", t)]));
        sink.push(&f2).expect("push");
        assert_eq!(sink.durable_lsn(), 10);
        sink.reset(10);
        assert_eq!(sink.durable_lsn(), 10);
        let files = parquet_files(dir.path());
        assert_eq!(files.len(), 1, "only the closed file is left: {files:?}");
        assert!(files[0].extension().is_some_and(|e| e == "parquet"));
    }
}
