//! Reads the records of a time range back from the Parquet sink's files and feeds them to the
//! [`Evaluator`], with bounded memory:
//!
//! - **Which files.** Exactly the data files of `store::layout::scan`, the listing `meshaudit
//!   verify` checks: regular files in real `dt=YYYY-MM-DD/hour=HH/` directories, no link ever
//!   followed. Anything else is skipped, logged and named in the report (`ScanStats::skipped`).
//! - **Pruning.** Only `dt=YYYY-MM-DD/hour=HH/` directories whose hour overlaps the range are
//!   opened (the sink partitions by `start_time`, so no record of the range lives elsewhere).
//! - **Projection.** Only the columns the sections read (plus `record_id`, `start_time`) are
//!   decoded, chosen by a [`ProjectionMask`].
//! - **Streaming.** Files are read batch by batch; nothing but the aggregates and one hour's
//!   record ids outlives a batch.
//! - **De-duplication.** Parquet delivery is at-least-once, so a record can be in two files;
//!   it is counted once (the contract's `DISTINCT record_id`). Both copies of a record share its
//!   `start_time`, hence its hour directory, so the set of ids seen is kept per hour and then
//!   dropped. (A record without a `start_time` is filed by `received_at`, but no such record is
//!   in any time range: the range is on `start_time`, as in SQL where NULL never compares.)

use std::collections::HashSet;
use std::path::Path;

use arrow_array::cast::AsArray;
use arrow_array::types::TimestampMicrosecondType;
use arrow_array::Array;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;

use tracing::warn;

use super::eval::Evaluator;
use super::time::TimeRange;
use super::ReportError;
use crate::store::layout::{self, DataFile, HourDir};

/// What was read, for the report's account of its evidence.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanStats {
    pub partitions_read: u64,
    pub partitions_skipped: u64,
    pub files_read: u64,
    /// Rows read in the time range, duplicates included.
    pub rows_in_range: u64,
    /// Rows not counted because their record_id was already counted.
    pub duplicate_rows: u64,
    /// Entries under the data dir that are not part of the store (links, devices, `.parquet`
    /// files outside the layout; see `store::layout`): never read, each named here, and each a
    /// `meshaudit verify` finding.
    pub skipped: Vec<String>,
    /// The data files read, relative to the data dir.
    pub read: Vec<String>,
}

fn io_err(path: &Path, e: std::io::Error) -> ReportError {
    ReportError::Io {
        path: path.to_path_buf(),
        source: e,
    }
}

/// A record id as a number (32 hex chars); anything else is kept as text.
#[derive(Default)]
struct Seen {
    ids: HashSet<u128>,
    other: HashSet<String>,
}

impl Seen {
    /// True the first time an id is seen.
    fn first(&mut self, id: &str) -> bool {
        match u128::from_str_radix(id, 16) {
            Ok(n) if id.len() == 32 => self.ids.insert(n),
            _ => self.other.insert(id.to_owned()),
        }
    }
}

/// Streams the records of `range` under `data_dir` into `eval`.
pub fn scan(
    data_dir: &Path,
    range: &TimeRange,
    eval: &mut Evaluator,
    batch_rows: usize,
) -> Result<ScanStats, ReportError> {
    if !data_dir.is_dir() {
        return Err(ReportError::DataDir(data_dir.to_path_buf()));
    }
    let mut wanted: Vec<&str> = vec!["record_id", "start_time"];
    wanted.extend(eval.columns());
    let mut stats = ScanStats::default();
    // The same listing `meshaudit verify` checks: only plain files inside the layout.
    let inventory = layout::scan(data_dir).map_err(|e| io_err(data_dir, e))?;
    for s in &inventory.strays {
        warn!(
            path = %s.rel,
            problem = %s.describe(),
            "not read by this report: not part of the store (run `meshaudit verify`)"
        );
        stats.skipped.push(format!("{}: {}", s.rel, s.describe()));
    }
    for part in &inventory.hours {
        if !range.overlaps(part.start_us, HourDir::MICROS) {
            stats.partitions_skipped += 1;
            continue;
        }
        stats.partitions_read += 1;
        let mut seen = Seen::default();
        for file in &part.files {
            stats.files_read += 1;
            stats.read.push(file.rel.clone());
            scan_file(
                file, &wanted, range, eval, &mut seen, &mut stats, batch_rows,
            )?;
        }
    }
    Ok(stats)
}

fn scan_file(
    data_file: &DataFile,
    wanted: &[&str],
    range: &TimeRange,
    eval: &mut Evaluator,
    seen: &mut Seen,
    stats: &mut ScanStats,
    batch_rows: usize,
) -> Result<(), ReportError> {
    let path = data_file.path.as_path();
    let bad = |what: String| ReportError::ParquetFile {
        path: path.to_path_buf(),
        reason: what,
    };
    let file = data_file.open().map_err(|e| io_err(path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| bad(e.to_string()))?;
    let schema = builder.schema().clone();
    let mut roots = Vec::with_capacity(wanted.len());
    for name in wanted {
        let (i, _) = schema
            .column_with_name(name)
            .ok_or_else(|| bad(format!("it has no column {name}")))?;
        roots.push(i);
    }
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(batch_rows)
        .build()
        .map_err(|e| bad(e.to_string()))?;
    for batch in reader {
        let batch = batch.map_err(|e| bad(e.to_string()))?;
        let ids = batch
            .column_by_name("record_id")
            .and_then(|a| a.as_string_opt::<i32>())
            .ok_or_else(|| bad("record_id is not text".into()))?;
        let starts = batch
            .column_by_name("start_time")
            .and_then(|a| a.as_primitive_opt::<TimestampMicrosecondType>())
            .ok_or_else(|| bad("start_time is not a microsecond timestamp".into()))?;
        let keep: Vec<bool> = (0..batch.num_rows())
            .map(|i| {
                if starts.is_null(i) || !range.contains(starts.value(i)) {
                    return false;
                }
                stats.rows_in_range += 1;
                let first = seen.first(ids.value(i));
                stats.duplicate_rows += u64::from(!first);
                first
            })
            .collect();
        eval.push(&batch, &keep).map_err(|e| bad(e.to_string()))?;
    }
    Ok(())
}
