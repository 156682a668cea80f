//! The Parquet digest chain of one collector instance: one digest file per Parquet file, in
//! `DATA_DIR/_digests/<instance_id>/<seq, 20 digits>.json` (nothing there ends in `.parquet`).
//!
//! Order of a file's close: the Parquet file is fsynced under its temporary name, then its digest
//! is written (temporary name, fsync, rename, directory fsync), then the Parquet file is renamed
//! into place. The digest is the commit record: a crash between the last two steps leaves a
//! digest whose file still has its temporary name, and the next start renames it (roll forward),
//! after checking its SHA-256. A Parquet file is therefore never visible without its digest.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use ring::digest::{Context, SHA256};
use tracing::{error, info, warn};

use super::canonical::{Encoder, Hash, RecordsHasher};
use super::statement::{DigestFile, DigestKind, SinkKind, Statement, TAG_BYTES};
use super::{io_err, DigestError, Signer, DIGESTS_DIR};
use crate::record::AuditRecord;

/// A Parquet file's output stream that hashes what it writes (ArrowWriter only appends).
pub struct HashingFile {
    file: File,
    ctx: Context,
    bytes: u64,
}

impl HashingFile {
    pub fn new(file: File) -> HashingFile {
        HashingFile {
            file,
            ctx: Context::new(&SHA256),
            bytes: 0,
        }
    }

    /// The file, the SHA-256 of everything written, and its length.
    pub fn finish(self) -> (File, Hash, u64) {
        let d = self.ctx.finish();
        let mut h = [0u8; 32];
        h.copy_from_slice(d.as_ref());
        (self.file, h, self.bytes)
    }
}

impl Write for HashingFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.ctx.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// The records of one open Parquet file, hashed in row order as they are encoded.
#[derive(Default)]
pub struct FileRecords {
    records: RecordsHasher,
    tags: Vec<u8>,
}

impl FileRecords {
    pub fn push(&mut self, h: &Hash) {
        self.records.add(h);
        self.tags.extend_from_slice(&h[..TAG_BYTES]);
    }
}

/// How many of the newest digests are checked for an unfinished rename at start-up: only the
/// last one or two can be affected (a crash, or a rename that failed and was not retried).
const ROLL_FORWARD_DEPTH: usize = 8;

pub struct ParquetChain {
    data_dir: PathBuf,
    dir: PathBuf,
    signer: Signer,
    next_seq: u64,
    previous: Option<Hash>,
    /// Parquet files whose digest is written but whose rename failed: retried before the next
    /// digest.
    deferred: Vec<(PathBuf, PathBuf)>,
    enc: Encoder,
}

fn digest_name(seq: u64) -> String {
    format!("{seq:020}.json")
}

/// The seq of a digest file's name (`<seq, 20 digits>.json`).
pub fn seq_of_name(name: &str) -> Option<u64> {
    let n = name.strip_suffix(".json")?;
    if n.len() == 20 && n.bytes().all(|b| b.is_ascii_digit()) {
        n.parse().ok()
    } else {
        None
    }
}

/// Seq numbers of the digest files in `dir`.
pub fn list_seqs(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut seqs = Vec::new();
    for e in fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(seq) = seq_of_name(name) {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

pub fn read_digest(path: &Path) -> Result<DigestFile, String> {
    let text = fs::read_to_string(path).map_err(|e| e.to_string())?;
    serde_json::from_str(&text).map_err(|e| e.to_string())
}

fn sync_dir(dir: &Path) -> Result<(), DigestError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// `.NAME.inprogress` beside `final_path`: the Parquet sink's temporary name.
fn in_progress_of(final_path: &Path) -> Option<PathBuf> {
    let name = final_path.file_name()?.to_str()?;
    Some(final_path.with_file_name(format!(".{name}.inprogress")))
}

fn sha256_file(path: &Path) -> std::io::Result<Hash> {
    let mut ctx = Context::new(&SHA256);
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = std::io::Read::read(&mut f, &mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    let mut h = [0u8; 32];
    h.copy_from_slice(ctx.finish().as_ref());
    Ok(h)
}

impl ParquetChain {
    /// Opens this instance's chain under `data_dir`: finds its head, and completes the rename of
    /// any file whose digest was written just before a crash.
    pub fn open(data_dir: &Path, signer: Signer) -> Result<ParquetChain, DigestError> {
        let dir = data_dir.join(DIGESTS_DIR).join(&signer.instance_id);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        for e in fs::read_dir(&dir).map_err(io_err(&dir))?.flatten() {
            let name = e.file_name();
            if name.to_string_lossy().ends_with(".tmp") {
                let _ = fs::remove_file(e.path());
            }
        }
        let seqs = list_seqs(&dir).map_err(io_err(&dir))?;
        let mut chain = ParquetChain {
            data_dir: data_dir.to_owned(),
            dir,
            signer,
            next_seq: 1,
            previous: None,
            deferred: Vec::new(),
            enc: Encoder::new(),
        };
        if let Some(&last) = seqs.last() {
            chain.next_seq = last + 1;
            let path = chain.dir.join(digest_name(last));
            match read_digest(&path).and_then(|d| d.parse().map(|(st, _, _)| st)) {
                Ok(st) => chain.previous = Some(st.digest_sha256()),
                // Start a new link anyway: `meshaudit verify` reports the break, which is
                // the evidence someone needs; refusing to start would lose records instead.
                Err(e) => {
                    error!(path = %path.display(), error = %e, "the newest digest of this collector's chain is unreadable; the chain continues without a link to it and `meshaudit verify` will report the break")
                }
            }
            chain.roll_forward(&seqs)?;
        }
        info!(
            instance_id = %chain.signer.instance_id,
            next_seq = chain.next_seq,
            dir = %chain.dir.display(),
            "parquet digest chain open"
        );
        Ok(chain)
    }

    /// The newest digests: one whose file has no final name yet but a complete temporary one
    /// (same SHA-256) had its rename cut short by a crash (or failed); finish it.
    fn roll_forward(&mut self, seqs: &[u64]) -> Result<(), DigestError> {
        for &seq in seqs.iter().rev().take(ROLL_FORWARD_DEPTH) {
            let Ok(d) = read_digest(&self.dir.join(digest_name(seq))) else {
                continue;
            };
            let Ok((st, _, _)) = d.parse() else { continue };
            let final_path = self.data_dir.join(&st.object);
            if final_path.exists() {
                continue;
            }
            let Some(tmp) = in_progress_of(&final_path).filter(|t| t.exists()) else {
                continue;
            };
            match sha256_file(&tmp) {
                Ok(h) if Some(h) == st.file_sha256 => {
                    fs::rename(&tmp, &final_path).map_err(io_err(&final_path))?;
                    if let Some(parent) = final_path.parent() {
                        sync_dir(parent)?;
                    }
                    info!(path = %final_path.display(), seq, "completed the rename of a parquet file whose close a crash interrupted");
                }
                _ => {
                    warn!(path = %tmp.display(), seq, "an unfinished parquet file does not match its digest; left as it is");
                }
            }
        }
        Ok(())
    }

    /// Hashes one record into the file it is being written to.
    pub fn add(&mut self, rec: &AuditRecord, file: &mut FileRecords) {
        let h = self.enc.record(rec);
        file.push(&h);
    }

    /// Adds a record whose canonical hash is already known (the spool frame's shared hashes).
    pub fn add_hash(&mut self, h: &Hash, file: &mut FileRecords) {
        file.push(h);
    }

    /// Writes the digest of a closed, fsynced file that is about to be renamed to `final_path`.
    pub fn commit(
        &mut self,
        records: FileRecords,
        file_sha256: Hash,
        file_bytes: u64,
        final_path: &Path,
    ) -> Result<(), DigestError> {
        self.retry_deferred();
        let object = final_path
            .strip_prefix(&self.data_dir)
            .unwrap_or(final_path)
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/");
        let st = Statement {
            sink: SinkKind::Parquet,
            kind: DigestKind::File,
            instance_id: self.signer.instance_id.clone(),
            seq: self.next_seq,
            created_at_us: chrono::Utc::now().timestamp_micros(),
            previous: self.previous,
            object,
            record_count: records.records.count(),
            records_sha256: records.records.finish(),
            index_sha256: super::canonical::sha256(&records.tags),
            file_sha256: Some(file_sha256),
            file_bytes,
            retention_cutoff_day: None,
            public_key: self.signer.key.public(),
        };
        let sig = st.sign(&self.signer.key);
        let doc = DigestFile::new(&st, &records.tags, &sig);
        let json = serde_json::to_vec_pretty(&doc).map_err(|e| DigestError::Io {
            path: self.dir.clone(),
            source: std::io::Error::other(e),
        })?;
        let name = digest_name(st.seq);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let path = self.dir.join(&name);
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&json)?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            fs::rename(&tmp, &path)
        };
        write().map_err(io_err(&path))?;
        sync_dir(&self.dir)?;
        self.previous = Some(st.digest_sha256());
        self.next_seq += 1;
        Ok(())
    }

    /// A Parquet rename that failed after its digest was written: tried again before the next
    /// digest, and at the next start (roll forward).
    pub fn defer_rename(&mut self, tmp: PathBuf, final_path: PathBuf) {
        self.deferred.push((tmp, final_path));
    }

    fn retry_deferred(&mut self) {
        self.deferred.retain(|(tmp, final_path)| {
            match fs::rename(tmp, final_path) {
                Ok(()) => {
                    info!(path = %final_path.display(), "renamed a parquet file whose earlier rename had failed");
                    false
                }
                Err(e) => {
                    warn!(path = %final_path.display(), error = %e, "parquet file still cannot be renamed; its digest exists, so `meshaudit verify` reports it missing until it is");
                    true
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::digest::key::SigningKey;
    use std::sync::Arc;

    fn signer() -> Signer {
        Signer {
            key: Arc::new(SigningKey::generate().expect("key")),
            instance_id: "inst-a".into(),
        }
    }

    fn commit_one(chain: &mut ParquetChain, data: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let final_path = data.join("dt=2026-03-02/hour=10").join(name);
        fs::create_dir_all(final_path.parent().expect("dir")).expect("mkdir");
        let tmp = in_progress_of(&final_path).expect("tmp");
        let mut hf = HashingFile::new(File::create(&tmp).expect("create"));
        hf.write_all(bytes).expect("write");
        let (_, sha, n) = hf.finish();
        let mut recs = FileRecords::default();
        chain.add(
            &AuditRecord {
                record_id: crate::record::text::copy(name),
                ..Default::default()
            },
            &mut recs,
        );
        chain.commit(recs, sha, n, &final_path).expect("commit");
        final_path
    }

    #[test]
    fn chain_links_each_digest_to_the_previous_across_restarts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = signer();
        let mut chain = ParquetChain::open(dir.path(), s.clone()).expect("open");
        let f1 = commit_one(&mut chain, dir.path(), "part-1.parquet", b"one");
        fs::rename(in_progress_of(&f1).expect("tmp"), &f1).expect("rename");
        drop(chain);
        let mut chain = ParquetChain::open(dir.path(), s).expect("reopen");
        let f2 = commit_one(&mut chain, dir.path(), "part-2.parquet", b"two");
        fs::rename(in_progress_of(&f2).expect("tmp"), &f2).expect("rename");
        let ddir = dir.path().join(DIGESTS_DIR).join("inst-a");
        assert_eq!(list_seqs(&ddir).expect("ls"), [1, 2]);
        let (st1, sig1, tags1) = read_digest(&ddir.join(digest_name(1)))
            .expect("read")
            .parse()
            .expect("parse");
        let (st2, _, _) = read_digest(&ddir.join(digest_name(2)))
            .expect("read")
            .parse()
            .expect("parse");
        assert!(st1.signature_valid(&sig1));
        assert_eq!(st1.previous, None);
        assert_eq!(st2.previous, Some(st1.digest_sha256()));
        assert_eq!(st1.object, "dt=2026-03-02/hour=10/part-1.parquet");
        assert_eq!(
            st1.file_sha256,
            Some(super::super::canonical::sha256(b"one"))
        );
        assert_eq!(st1.file_bytes, 3);
        assert_eq!(st1.record_count, 1);
        assert_eq!(tags1.len(), TAG_BYTES);
    }

    #[test]
    fn a_crash_between_digest_and_rename_is_rolled_forward_at_the_next_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = signer();
        let mut chain = ParquetChain::open(dir.path(), s.clone()).expect("open");
        let f1 = commit_one(&mut chain, dir.path(), "part-1.parquet", b"one");
        // "Crash": the digest is written, the rename never happened.
        drop(chain);
        assert!(!f1.exists());
        let _chain = ParquetChain::open(dir.path(), s).expect("reopen");
        assert!(f1.exists(), "rolled forward");
        assert!(!in_progress_of(&f1).expect("tmp").exists());
    }
}
