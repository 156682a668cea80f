//! What `meshaudit verify` found: findings, per-sink counts and chain heads, as text or JSON.
//! The JSON shape is documented in docs/tamper-evidence.md (fields are only ever added).

use std::fmt::Write as _;

use serde::Serialize;

/// One discrepancy between stored data and the signed digests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// A digest file or row that cannot be parsed.
    DigestUnreadable,
    /// The signature does not match the digest's content (the digest was edited).
    SignatureInvalid,
    /// Correctly signed, by a key that is not one of --public-key.
    UnknownKey,
    /// A digest's previous_digest_sha256 is not the hash of the chain's previous digest.
    ChainBroken,
    /// Digests missing from a chain (a gap in seq, or a chain not starting at 1).
    ChainGap,
    /// A digest stored where its content says it does not belong (another instance's
    /// directory, a file name that is not its seq, the other sink).
    DigestMisplaced,
    /// A digest names a Parquet file that is not there.
    FileMissing,
    /// A Parquet file no digest covers.
    FileUnsigned,
    /// A Parquet file whose records differ from its digest (the records found say how).
    FileModified,
    /// A Parquet file whose bytes differ from its digest while its records are the same
    /// (re-encoded).
    FileRewritten,
    /// A Parquet file that cannot be read.
    FileUnreadable,
    RecordModified,
    RecordDeleted,
    /// A record no digest covers.
    RecordInserted,
    /// The right records in another order.
    RecordsReordered,
    /// An entry under the data dir that is not part of the store (store::layout): a symbolic
    /// link, a device, FIFO or socket, or a `.parquet` file outside `dt=…/hour=…/`. Reports never
    /// read it.
    NotInStore,
}

impl FindingKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::DigestUnreadable => "digest_unreadable",
            FindingKind::SignatureInvalid => "signature_invalid",
            FindingKind::UnknownKey => "unknown_key",
            FindingKind::ChainBroken => "chain_broken",
            FindingKind::ChainGap => "chain_gap",
            FindingKind::DigestMisplaced => "digest_misplaced",
            FindingKind::FileMissing => "file_missing",
            FindingKind::FileUnsigned => "file_unsigned",
            FindingKind::FileModified => "file_modified",
            FindingKind::FileRewritten => "file_rewritten",
            FindingKind::FileUnreadable => "file_unreadable",
            FindingKind::RecordModified => "record_modified",
            FindingKind::RecordDeleted => "record_deleted",
            FindingKind::RecordInserted => "record_inserted",
            FindingKind::RecordsReordered => "records_reordered",
            FindingKind::NotInStore => "not_in_store",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub kind: FindingKind,
    /// `parquet` or `postgres`.
    pub sink: &'static str,
    /// Parquet: the file, relative to the data dir.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Parquet: the row (from 0) in the file as found, or as signed for a deleted row.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub row: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record_id: Option<String>,
    /// The digest concerned: `INSTANCE_ID/SEQ`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    pub detail: String,
}

impl Finding {
    pub fn new(kind: FindingKind, sink: &'static str, detail: impl Into<String>) -> Finding {
        Finding {
            kind,
            sink,
            file: None,
            row: None,
            record_id: None,
            digest: None,
            detail: detail.into(),
        }
    }

    pub fn file(mut self, f: impl Into<String>) -> Self {
        self.file = Some(f.into());
        self
    }

    pub fn row(mut self, r: u64) -> Self {
        self.row = Some(r);
        self
    }

    pub fn record(mut self, id: impl Into<String>) -> Self {
        self.record_id = Some(id.into());
        self
    }

    pub fn digest(mut self, instance: &str, seq: u64) -> Self {
        self.digest = Some(format!("{instance}/{seq}"));
        self
    }
}

/// One chain as found: its extent and its head (compare the head with one recorded elsewhere
/// to detect a chain cut short at its end, which no stored data can show).
#[derive(Debug, Clone, Serialize)]
pub struct ChainSummary {
    pub sink: &'static str,
    pub instance_id: String,
    pub digests: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub head_digest_sha256: String,
    pub head_created_at: String,
    /// The head as one object: what to record elsewhere and compare with next time.
    pub head: ChainHead,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainHead {
    pub instance_id: String,
    pub seq: u64,
    pub created_at: String,
    pub digest_sha256: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SinkSummary {
    pub digests: u64,
    /// Parquet files checked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<u64>,
    /// Records (Parquet rows, Postgres rows) checked.
    pub records: u64,
    /// Parquet: data files in the store (store::layout), whether or not a digest covers them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_files: Option<u64>,
    /// Postgres: rows a signed retention digest says were dropped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expired_records: Option<u64>,
    /// Postgres: records the database refused for a data reason, kept in `audit_rejects`
    /// (rejected, not missing; docs/storage.md "Poison rows").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected_records: Option<u64>,
}

/// The outcome, and `meshaudit verify`'s exit status (docs/tamper-evidence.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every record and file matches its signed digest (exit 0).
    #[default]
    Ok,
    /// Nothing stored and no digest: an empty store (exit 0).
    Empty,
    /// Something was found (exit 1).
    Failed,
    /// Records are stored but a sink has no digest at all, so nothing could be checked
    /// (exit 2): the collector ran without signing, or every digest was deleted.
    NothingToVerify,
}

impl Verdict {
    pub fn exit_code(self) -> i32 {
        match self {
            Verdict::Ok | Verdict::Empty => 0,
            Verdict::Failed => 1,
            Verdict::NothingToVerify => 2,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub ok: bool,
    pub verdict: Verdict,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parquet: Option<SinkSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postgres: Option<SinkSummary>,
    pub chains: Vec<ChainSummary>,
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn push(&mut self, f: Finding) {
        self.findings.push(f);
    }

    /// Sinks that hold records but not one digest, as "SINK has".
    fn unsigned_sinks(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(p) = self.parquet.as_ref().filter(|p| p.digests == 0) {
            if p.data_files.unwrap_or(0) > 0 || p.records > 0 {
                out.push(format!(
                    "the data dir has {} Parquet files and",
                    p.data_files.unwrap_or(0)
                ));
            }
        }
        if let Some(p) = self.postgres.as_ref().filter(|p| p.digests == 0) {
            if p.records > 0 {
                out.push(format!("audit_records has {} rows and", p.records));
            }
        }
        out
    }

    /// Decides the verdict once every sink has been checked.
    pub fn conclude(&mut self) {
        let stored = |s: &Option<SinkSummary>| {
            s.as_ref()
                .is_some_and(|s| s.records > 0 || s.data_files.unwrap_or(0) > 0 || s.digests > 0)
        };
        self.verdict = if !self.unsigned_sinks().is_empty() {
            Verdict::NothingToVerify
        } else if !self.findings.is_empty() {
            Verdict::Failed
        } else if !stored(&self.parquet) && !stored(&self.postgres) {
            Verdict::Empty
        } else {
            Verdict::Ok
        };
        self.ok = self.verdict.exit_code() == 0;
    }

    /// Text for people: one line per finding, then the chains, then a summary line.
    pub fn human(&self) -> String {
        let mut out = String::new();
        for f in &self.findings {
            let _ = write!(out, "FAIL {:<8} {:<18}", f.sink, f.kind.as_str());
            if let Some(file) = &f.file {
                let _ = write!(out, " file={file}");
            }
            if let Some(row) = f.row {
                let _ = write!(out, " row={row}");
            }
            if let Some(id) = &f.record_id {
                let _ = write!(out, " record_id={id}");
            }
            if let Some(d) = &f.digest {
                let _ = write!(out, " digest={d}");
            }
            let _ = writeln!(out, ": {}", f.detail);
        }
        for c in &self.chains {
            let _ = writeln!(
                out,
                "chain {} {}: {} digests, seq {}..{}; head: instance {} seq {} at {} sha256 {}",
                c.sink,
                c.instance_id,
                c.digests,
                c.first_seq,
                c.last_seq,
                c.head.instance_id,
                c.head.seq,
                c.head.created_at,
                c.head.digest_sha256
            );
        }
        let mut parts = Vec::new();
        if let Some(p) = &self.parquet {
            parts.push(format!(
                "parquet: {} files, {} records, {} digests",
                p.files.unwrap_or(0),
                p.records,
                p.digests
            ));
        }
        if let Some(p) = &self.postgres {
            let mut s = format!("postgres: {} rows, {} digests", p.records, p.digests);
            if let Some(n) = p.expired_records.filter(|n| *n > 0) {
                let _ = write!(s, ", {n} rows dropped by retention");
            }
            if let Some(n) = p.rejected_records.filter(|n| *n > 0) {
                let _ = write!(
                    s,
                    ", {n} records rejected by the database (kept in audit_rejects, not missing)"
                );
            }
            parts.push(s);
        }
        let verdict = match self.verdict {
            Verdict::Ok => "OK: every record and file matches its signed digest".to_owned(),
            Verdict::Empty => "OK: the store is empty (no records, no digests)".to_owned(),
            Verdict::Failed => format!("FAILED: {} findings", self.findings.len()),
            Verdict::NothingToVerify => format!(
                "NOTHING TO VERIFY: records are stored but {} no digest at all (the collector ran without signing, or every digest was deleted){}",
                self.unsigned_sinks().join(" and "),
                if self.findings.is_empty() {
                    String::new()
                } else {
                    format!("; {} findings", self.findings.len())
                }
            ),
        };
        let _ = writeln!(out, "meshaudit verify: {verdict} ({})", parts.join("; "));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(digests: u64, records: u64, data_files: Option<u64>) -> Option<SinkSummary> {
        Some(SinkSummary {
            digests,
            records,
            data_files,
            ..Default::default()
        })
    }

    #[test]
    fn the_verdict_and_its_exit_status() {
        let finding = || Finding::new(FindingKind::FileUnsigned, "parquet", "x");
        // (parquet, postgres, findings) → verdict
        let cases = [
            (sink(0, 0, Some(0)), None, false, Verdict::Empty),
            (None, sink(0, 0, None), false, Verdict::Empty),
            (sink(0, 0, Some(0)), sink(0, 0, None), false, Verdict::Empty),
            (sink(2, 10, Some(2)), None, false, Verdict::Ok),
            (sink(2, 10, Some(2)), None, true, Verdict::Failed),
            // Digests but no records left: the findings say what is missing.
            (sink(2, 0, Some(0)), None, true, Verdict::Failed),
            // Records, no digest at all: nothing could be checked, findings or not.
            (sink(0, 0, Some(3)), None, true, Verdict::NothingToVerify),
            (None, sink(0, 10, None), true, Verdict::NothingToVerify),
            (
                sink(2, 10, Some(2)),
                sink(0, 10, None),
                true,
                Verdict::NothingToVerify,
            ),
            // Only strays (findings), nothing stored: a failure, not an empty store.
            (sink(0, 0, Some(0)), None, true, Verdict::Failed),
        ];
        for (i, (parquet, postgres, found, want)) in cases.into_iter().enumerate() {
            let mut r = Report {
                parquet,
                postgres,
                ..Default::default()
            };
            if found {
                r.push(finding());
            }
            r.conclude();
            assert_eq!(r.verdict, want, "case {i}");
            assert_eq!(r.ok, want.exit_code() == 0, "case {i}");
            let text = r.human();
            let line = text.lines().last().unwrap_or("");
            let expect = match want {
                Verdict::Ok => "meshaudit verify: OK: every record",
                Verdict::Empty => "meshaudit verify: OK: the store is empty",
                Verdict::Failed => "meshaudit verify: FAILED",
                Verdict::NothingToVerify => "meshaudit verify: NOTHING TO VERIFY",
            };
            assert!(line.starts_with(expect), "case {i}: {line}");
        }
        assert_eq!(
            [
                Verdict::Ok,
                Verdict::Empty,
                Verdict::Failed,
                Verdict::NothingToVerify
            ]
            .map(Verdict::exit_code),
            [0, 0, 1, 2]
        );
    }
}
