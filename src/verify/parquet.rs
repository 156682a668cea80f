//! Verifying a data dir: the digest chains under `_digests/`, every file they name, and every
//! data file of the store. Which files those are is decided in one place, `store::layout`, the
//! listing reports read too: a data file no digest covers is `file_unsigned`, and anything that
//! is not part of the store (a link, a device, a `.parquet` file outside the layout) is
//! `not_in_store`.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::Path;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int32Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, TimeUnit};
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::chain::{check_chains, trusted, Link};
use super::report::{Finding, FindingKind, Report, SinkSummary};
use crate::record::{ColumnType, COLUMNS};
use crate::store::digest::canonical::{sha256, Encoder, Hash, RecordsHasher};
use crate::store::digest::files::read_digest;
use crate::store::digest::key::PublicKey;
use crate::store::digest::statement::{DigestKind, SinkKind, Statement, TAG_BYTES};
use crate::store::layout::{self, relative, DataFile};

const SINK: &str = "parquet";

/// A record as read from a file: its id and hash.
pub struct FileRow {
    pub record_id: Option<String>,
    pub hash: Hash,
}

/// Hashes every row of a batch with the canonical encoding; columns are found by name, so the
/// physical column order does not matter. Err names a column whose type is not the contract's.
pub fn hash_batch(batch: &RecordBatch, enc: &mut Encoder) -> Result<Vec<FileRow>, String> {
    let schema = batch.schema();
    let mut cols: Vec<Option<&ArrayRef>> = Vec::with_capacity(COLUMNS.len());
    for c in COLUMNS {
        let col = schema.index_of(c.name).ok().map(|i| batch.column(i));
        if let Some(a) = col {
            let ok = match (c.column_type(), a.data_type()) {
                (ColumnType::Text, DataType::Utf8) => true,
                (ColumnType::Int, DataType::Int32) => true,
                (ColumnType::BigInt, DataType::Int64) => true,
                (ColumnType::Float8, DataType::Float64) => true,
                (ColumnType::Bool, DataType::Boolean) => true,
                (ColumnType::Timestamptz, DataType::Timestamp(TimeUnit::Microsecond, _)) => true,
                (ColumnType::TextArray, DataType::List(f)) => f.data_type() == &DataType::Utf8,
                _ => false,
            };
            if !ok {
                return Err(format!(
                    "column {} has type {}, not the contract's {}",
                    c.name,
                    a.data_type(),
                    c.column_type().sql()
                ));
            }
        }
        cols.push(col);
    }
    let id_col = cols[0].filter(|_| COLUMNS[0].name == "record_id");
    let mut out = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        enc.begin();
        for (c, col) in COLUMNS.iter().zip(&cols) {
            let Some(a) = col else { continue };
            if a.is_null(i) {
                continue;
            }
            match c.column_type() {
                ColumnType::Text => enc.text(c.name, Some(a.as_string::<i32>().value(i))),
                ColumnType::Int => enc.int(c.name, Some(a.as_primitive::<Int32Type>().value(i))),
                ColumnType::BigInt => {
                    enc.bigint(c.name, Some(a.as_primitive::<Int64Type>().value(i)))
                }
                ColumnType::Float8 => {
                    enc.float8(c.name, Some(a.as_primitive::<Float64Type>().value(i)))
                }
                ColumnType::Bool => enc.bool(c.name, Some(a.as_boolean().value(i))),
                ColumnType::Timestamptz => enc.timestamp(
                    c.name,
                    Some(a.as_primitive::<TimestampMicrosecondType>().value(i)),
                ),
                ColumnType::TextArray => {
                    let items = a.as_list::<i32>().value(i);
                    let s = items.as_string::<i32>();
                    enc.text_list(
                        c.name,
                        Some((0..s.len()).map(|j| (!s.is_null(j)).then(|| s.value(j)))),
                    )
                }
            }
        }
        let record_id = id_col
            .filter(|a| !a.is_null(i))
            .map(|a| a.as_string::<i32>().value(i).to_owned());
        out.push(FileRow {
            record_id,
            hash: enc.finish(),
        });
    }
    Ok(out)
}

struct FileDigest {
    st: Statement,
    tags: Vec<u8>,
    trusted: bool,
}

pub fn verify(data_dir: &Path, keys: &[PublicKey], report: &mut Report) -> SinkSummary {
    let mut summary = SinkSummary {
        files: Some(0),
        ..Default::default()
    };
    let mut links = Vec::new();
    let mut digests: Vec<FileDigest> = Vec::new();
    // The same listing reports read (store::layout): no link is followed, and every entry
    // that is not part of the store is a finding.
    let inventory = match layout::scan(data_dir) {
        Ok(inv) => inv,
        Err(e) => {
            report.push(Finding::new(
                FindingKind::FileUnreadable,
                SINK,
                format!("cannot list the data dir {}: {e}", data_dir.display()),
            ));
            return summary;
        }
    };
    for s in &inventory.strays {
        report.push(Finding::new(FindingKind::NotInStore, SINK, s.describe()).file(s.rel.clone()));
    }
    summary.data_files = Some(inventory.data_files().count() as u64);
    for chain in &inventory.chains {
        let dir_name = &chain.instance;
        for (seq, path) in &chain.digests {
            let seq = *seq;
            let file = relative(data_dir, path);
            let parsed = read_digest(path).and_then(|d| d.parse());
            let (st, sig, tags) = match parsed {
                Ok(p) => p,
                Err(e) => {
                    report.push(
                        Finding::new(FindingKind::DigestUnreadable, SINK, e)
                            .file(file)
                            .digest(dir_name, seq),
                    );
                    continue;
                }
            };
            summary.digests += 1;
            let ok = trusted(&st, &sig, keys, SINK, report);
            if st.instance_id != *dir_name
                || st.seq != seq
                || st.sink != SinkKind::Parquet
                || st.kind != DigestKind::File
            {
                report.push(
                    Finding::new(
                        FindingKind::DigestMisplaced,
                        SINK,
                        format!(
                            "the digest says {} {} of instance {} seq {}, but is stored as {file}",
                            st.sink.as_str(),
                            st.kind.as_str(),
                            st.instance_id,
                            st.seq
                        ),
                    )
                    .file(file.clone())
                    .digest(&st.instance_id, st.seq),
                );
            }
            links.push(Link {
                instance_id: st.instance_id.clone(),
                seq: st.seq,
                digest_sha256: st.digest_sha256(),
                previous: st.previous,
                created_at_us: st.created_at_us,
            });
            digests.push(FileDigest {
                st,
                tags,
                trusted: ok,
            });
        }
    }
    let chains = check_chains(SINK, links, report);
    report.chains.extend(chains);

    let mut by_object: HashMap<&str, usize> = HashMap::new();
    for (i, d) in digests.iter().enumerate() {
        if let Some(prev) = by_object.insert(d.st.object.as_str(), i) {
            let p = &digests[prev].st;
            report.push(
                Finding::new(
                    FindingKind::DigestMisplaced,
                    SINK,
                    format!(
                        "a second digest for this file (the other is {}/{})",
                        p.instance_id, p.seq
                    ),
                )
                .file(d.st.object.clone())
                .digest(&d.st.instance_id, d.st.seq),
            );
        }
    }
    let present: HashMap<&str, &DataFile> = inventory
        .data_files()
        .map(|f| (f.rel.as_str(), f))
        .collect();
    let mut enc = Encoder::new();
    for d in &digests {
        // Only files found under the data dir are read: a digest cannot point verify elsewhere.
        let Some(file) = present.get(d.st.object.as_str()) else {
            report.push(
                Finding::new(
                    FindingKind::FileMissing,
                    SINK,
                    format!(
                        "the file is gone ({} records signed{})",
                        d.st.record_count,
                        if d.trusted {
                            ""
                        } else {
                            " by an untrusted digest"
                        }
                    ),
                )
                .file(d.st.object.clone())
                .digest(&d.st.instance_id, d.st.seq),
            );
            continue;
        };
        summary.files = summary.files.map(|n| n + 1);
        summary.records += check_file(file, d, &mut enc, report);
    }
    for f in inventory.data_files().map(|f| &f.rel) {
        if !by_object.contains_key(f.as_str()) {
            report.push(
                Finding::new(
                    FindingKind::FileUnsigned,
                    SINK,
                    "no digest covers this file: it was not written by a collector with this chain, or its digest was deleted",
                )
                .file(f.clone()),
            );
        }
    }
    summary
}

/// Checks one file against its digest; returns the rows read.
fn check_file(file: &DataFile, d: &FileDigest, enc: &mut Encoder, report: &mut Report) -> u64 {
    let st = &d.st;
    let finding = |kind, detail: String| {
        Finding::new(kind, SINK, detail)
            .file(st.object.clone())
            .digest(&st.instance_id, st.seq)
    };
    let mut buf = Vec::new();
    let read = file.open().and_then(|mut f| f.read_to_end(&mut buf));
    let bytes = match read {
        Ok(_) => Bytes::from(buf),
        Err(e) => {
            report.push(finding(FindingKind::FileUnreadable, e.to_string()));
            return 0;
        }
    };
    let file_sha = sha256(&bytes);
    let file_len = bytes.len() as u64;
    let rows = match read_rows(bytes, enc) {
        Ok(r) => r,
        Err(e) => {
            let kind = if Some(file_sha) == st.file_sha256 {
                FindingKind::FileUnreadable
            } else {
                FindingKind::FileModified
            };
            report.push(finding(kind, format!("cannot read the records: {e}")));
            return 0;
        }
    };
    let mut h = RecordsHasher::default();
    rows.iter().for_each(|r| h.add(&r.hash));
    let records_ok = h.finish() == st.records_sha256;
    let bytes_ok = Some(file_sha) == st.file_sha256 && file_len == st.file_bytes;
    if records_ok && !bytes_ok {
        report.push(finding(
            FindingKind::FileRewritten,
            format!(
                "the file's bytes differ from the signed ones ({} bytes, SHA-256 {}; signed {} bytes) but its {} records are the signed ones: it was re-encoded",
                file_len,
                hex::encode(file_sha),
                st.file_bytes,
                rows.len()
            ),
        ));
    }
    if !records_ok {
        report.push(finding(
            FindingKind::FileModified,
            format!(
                "{} records found, {} signed: the records differ from the digest",
                rows.len(),
                st.record_count
            ),
        ));
        locate(&rows, &d.tags, st, report);
    }
    rows.len() as u64
}

fn read_rows(bytes: Bytes, enc: &mut Encoder) -> Result<Vec<FileRow>, String> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| b.build())
        .map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| e.to_string())?;
        rows.extend(hash_batch(&batch, enc)?);
    }
    Ok(rows)
}

/// Points at the rows that differ, from the per-row tags the digest signed: rows modified,
/// deleted (named by their signed position), inserted, or moved.
fn locate(rows: &[FileRow], tags: &[u8], st: &Statement, report: &mut Report) {
    let signed: Vec<&[u8]> = tags.chunks(TAG_BYTES).collect();
    let found: Vec<&[u8]> = rows.iter().map(|r| &r.hash[..TAG_BYTES]).collect();
    let id = |i: usize| rows[i].record_id.clone().unwrap_or_else(|| "(none)".into());
    let finding = |kind, row: usize, detail: String| {
        Finding::new(kind, SINK, detail)
            .file(st.object.clone())
            .row(row as u64)
            .digest(&st.instance_id, st.seq)
    };
    // Rows equal at the start and at the end are untouched; look between.
    let (n, m) = (signed.len(), found.len());
    let mut p = 0;
    while p < n.min(m) && signed[p] == found[p] {
        p += 1;
    }
    let mut s = 0;
    while s < n.min(m) - p && signed[n - 1 - s] == found[m - 1 - s] {
        s += 1;
    }
    let (sig_mid, found_mid) = (p..n - s, p..m - s);
    // Match the middle by tag: matched rows moved; the rest changed, went or came.
    let mut pool: BTreeMap<&[u8], Vec<usize>> = BTreeMap::new();
    for j in sig_mid.clone().rev() {
        pool.entry(signed[j]).or_default().push(j);
    }
    // A matched row is out of order when its signed position is before an earlier match's.
    let mut moved = 0usize;
    let mut last_signed = None;
    let mut unmatched_found = Vec::new();
    for i in found_mid.clone() {
        match pool.get_mut(found[i]).and_then(Vec::pop) {
            Some(j) => {
                if last_signed.is_some_and(|l| j < l) {
                    moved += 1;
                }
                last_signed = last_signed.max(Some(j));
            }
            None => unmatched_found.push(i),
        }
    }
    let mut unmatched_signed: Vec<usize> = pool.into_values().flatten().collect();
    unmatched_signed.sort_unstable();
    let pairs = unmatched_found.len().min(unmatched_signed.len());
    for &i in &unmatched_found[..pairs] {
        report.push(
            finding(
                FindingKind::RecordModified,
                i,
                "this row's values differ from the signed record".into(),
            )
            .record(id(i)),
        );
    }
    for &i in &unmatched_found[pairs..] {
        report.push(
            finding(
                FindingKind::RecordInserted,
                i,
                "this row is not among the signed records".into(),
            )
            .record(id(i)),
        );
    }
    for &j in &unmatched_signed[pairs..] {
        report.push(finding(
            FindingKind::RecordDeleted,
            j,
            format!(
                "signed row {j} (record hash {}…) is missing from the file",
                hex::encode(signed[j])
            ),
        ));
    }
    if moved > 0 {
        report.push(
            Finding::new(
                FindingKind::RecordsReordered,
                SINK,
                format!(
                    "signed records are out of their signed order between rows {} and {}",
                    p,
                    (m - s).saturating_sub(1)
                ),
            )
            .file(st.object.clone())
            .digest(&st.instance_id, st.seq),
        );
    }
    if unmatched_found.is_empty() && unmatched_signed.is_empty() && moved == 0 {
        report.push(
            Finding::new(
                FindingKind::RecordModified,
                SINK,
                "the records differ from the signed ones, but no single row could be pointed at",
            )
            .file(st.object.clone())
            .digest(&st.instance_id, st.seq),
        );
    }
}
