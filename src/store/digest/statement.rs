//! The signed statement of one digest, its byte encoding (what is hashed into the chain and what
//! Ed25519 signs), and the JSON digest file written beside Parquet data.

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::canonical::{sha256, Hash};
use super::key::{PublicKey, SigningKey};

/// Prefix of every statement's bytes.
pub const STATEMENT_DOMAIN: &[u8] = b"meshaudit.digest.v1\0";
/// `format` of a digest file.
pub const FILE_FORMAT: &str = "meshaudit-digest-v1";
/// Bytes of each record's hash kept per row in a Parquet digest (its `record_tags`): enough to
/// point at the row that changed; the full-strength check is `records_sha256`.
pub const TAG_BYTES: usize = 4;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SinkKind {
    Parquet,
    Postgres,
}

impl SinkKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SinkKind::Parquet => "parquet",
            SinkKind::Postgres => "postgres",
        }
    }

    pub fn parse(s: &str) -> Option<SinkKind> {
        match s {
            "parquet" => Some(SinkKind::Parquet),
            "postgres" => Some(SinkKind::Postgres),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestKind {
    /// One Parquet file.
    File,
    /// The rows one Postgres transaction inserted.
    Batch,
    /// Day partitions dropped by retention (no records): rows before the cutoff may be gone.
    Retention,
}

impl DigestKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DigestKind::File => "file",
            DigestKind::Batch => "batch",
            DigestKind::Retention => "retention",
        }
    }

    pub fn parse(s: &str) -> Option<DigestKind> {
        match s {
            "file" => Some(DigestKind::File),
            "batch" => Some(DigestKind::Batch),
            "retention" => Some(DigestKind::Retention),
            _ => None,
        }
    }
}

/// What a digest asserts. Every field is signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub sink: SinkKind,
    pub kind: DigestKind,
    /// The collector instance whose chain this is.
    pub instance_id: String,
    /// Position in the chain, from 1.
    pub seq: u64,
    pub created_at_us: i64,
    /// `digest_sha256` of the chain's previous statement; None only for seq 1 (or after a
    /// chain head that could not be read, which verify reports).
    pub previous: Option<Hash>,
    /// Parquet: the file's path relative to the data dir, `/`-separated. Postgres: the table.
    pub object: String,
    pub record_count: u64,
    pub records_sha256: Hash,
    /// SHA-256 of the per-record index (Parquet: the tags; Postgres: ids, start times, hashes).
    pub index_sha256: Hash,
    /// Parquet: SHA-256 of the file's bytes.
    pub file_sha256: Option<Hash>,
    pub file_bytes: u64,
    /// Retention: rows with start_time before this day (days since 1970-01-01, UTC) were dropped.
    pub retention_cutoff_day: Option<i64>,
    pub public_key: PublicKey,
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(&(s.len() as u32).to_be_bytes());
    b.extend_from_slice(s.as_bytes());
}

fn put_opt_hash(b: &mut Vec<u8>, h: &Option<Hash>) {
    match h {
        None => b.push(0),
        Some(h) => {
            b.push(1);
            b.extend_from_slice(h);
        }
    }
}

impl Statement {
    /// The exact bytes that are signed and hashed (docs/tamper-evidence.md).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(256 + self.object.len());
        b.extend_from_slice(STATEMENT_DOMAIN);
        put_str(&mut b, self.sink.as_str());
        put_str(&mut b, self.kind.as_str());
        put_str(&mut b, &self.instance_id);
        b.extend_from_slice(&self.seq.to_be_bytes());
        b.extend_from_slice(&self.created_at_us.to_be_bytes());
        put_opt_hash(&mut b, &self.previous);
        put_str(&mut b, &self.object);
        b.extend_from_slice(&self.record_count.to_be_bytes());
        b.extend_from_slice(&self.records_sha256);
        b.extend_from_slice(&self.index_sha256);
        put_opt_hash(&mut b, &self.file_sha256);
        b.extend_from_slice(&self.file_bytes.to_be_bytes());
        match self.retention_cutoff_day {
            None => b.push(0),
            Some(d) => {
                b.push(1);
                b.extend_from_slice(&d.to_be_bytes());
            }
        }
        b.extend_from_slice(&self.public_key.0);
        b
    }

    /// The chain link: the next statement's `previous`.
    pub fn digest_sha256(&self) -> Hash {
        sha256(&self.to_bytes())
    }

    pub fn sign(&self, key: &SigningKey) -> [u8; 64] {
        key.sign(&self.to_bytes())
    }

    /// True when `sig` is this statement's signature by the key the statement names.
    pub fn signature_valid(&self, sig: &[u8]) -> bool {
        self.public_key.verify(&self.to_bytes(), sig)
    }
}

/// A Parquet digest file, `DATA_DIR/_digests/<instance_id>/<seq, 20 digits>.json`. A stable,
/// documented format: fields are only ever added.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DigestFile {
    pub format: String,
    pub sink: String,
    pub kind: String,
    pub instance_id: String,
    pub seq: u64,
    /// RFC 3339, UTC, microseconds: `2026-03-02T10:15:04.118123Z`.
    pub created_at: String,
    pub previous_digest_sha256: Option<String>,
    pub object: String,
    pub file_sha256: Option<String>,
    pub file_bytes: u64,
    pub record_count: u64,
    pub records_sha256: String,
    /// Base64 of the first TAG_BYTES bytes of each record's hash, in file row order.
    pub record_tags: String,
    /// SHA-256 of the signed statement (informative: verify recomputes it).
    pub digest_sha256: String,
    /// Base64 of the signer's 32-byte Ed25519 public key.
    pub public_key: String,
    /// Base64 of the Ed25519 signature over the statement.
    pub signature: String,
}

pub fn format_micros(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

fn parse_micros(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_micros())
}

fn parse_hash(s: &str) -> Option<Hash> {
    let v = hex::decode(s).ok()?;
    v.try_into().ok()
}

impl DigestFile {
    pub fn new(st: &Statement, tags: &[u8], signature: &[u8; 64]) -> DigestFile {
        DigestFile {
            format: FILE_FORMAT.into(),
            sink: st.sink.as_str().into(),
            kind: st.kind.as_str().into(),
            instance_id: st.instance_id.clone(),
            seq: st.seq,
            created_at: format_micros(st.created_at_us),
            previous_digest_sha256: st.previous.map(hex::encode),
            object: st.object.clone(),
            file_sha256: st.file_sha256.map(hex::encode),
            file_bytes: st.file_bytes,
            record_count: st.record_count,
            records_sha256: hex::encode(st.records_sha256),
            record_tags: B64.encode(tags),
            digest_sha256: hex::encode(st.digest_sha256()),
            public_key: st.public_key.to_base64(),
            signature: B64.encode(signature),
        }
    }

    /// The statement (rebuilt from the fields), the signature and the tags; Err names the
    /// malformed field.
    pub fn parse(&self) -> Result<(Statement, Vec<u8>, Vec<u8>), String> {
        if self.format != FILE_FORMAT {
            return Err(format!("unknown format `{}`", self.format));
        }
        let bad = |f: &str| format!("malformed field `{f}`");
        let tags = B64
            .decode(&self.record_tags)
            .map_err(|_| bad("record_tags"))?;
        let st = Statement {
            sink: SinkKind::parse(&self.sink).ok_or_else(|| bad("sink"))?,
            kind: DigestKind::parse(&self.kind).ok_or_else(|| bad("kind"))?,
            instance_id: self.instance_id.clone(),
            seq: self.seq,
            created_at_us: parse_micros(&self.created_at).ok_or_else(|| bad("created_at"))?,
            previous: match &self.previous_digest_sha256 {
                None => None,
                Some(h) => Some(parse_hash(h).ok_or_else(|| bad("previous_digest_sha256"))?),
            },
            object: self.object.clone(),
            record_count: self.record_count,
            records_sha256: parse_hash(&self.records_sha256)
                .ok_or_else(|| bad("records_sha256"))?,
            index_sha256: sha256(&tags),
            file_sha256: match &self.file_sha256 {
                None => None,
                Some(h) => Some(parse_hash(h).ok_or_else(|| bad("file_sha256"))?),
            },
            file_bytes: self.file_bytes,
            retention_cutoff_day: None,
            public_key: PublicKey::parse(&self.public_key).map_err(|_| bad("public_key"))?,
        };
        let sig = B64.decode(&self.signature).map_err(|_| bad("signature"))?;
        Ok((st, sig, tags))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statement(key: &SigningKey) -> Statement {
        Statement {
            sink: SinkKind::Parquet,
            kind: DigestKind::File,
            instance_id: "inst".into(),
            seq: 3,
            created_at_us: 1_772_446_504_118_123,
            previous: Some(sha256(b"prev")),
            object: "dt=2026-03-02/hour=10/part-x.parquet".into(),
            record_count: 2,
            records_sha256: sha256(b"records"),
            index_sha256: sha256(&[1, 2, 3, 4, 5, 6, 7, 8]),
            file_sha256: Some(sha256(b"file")),
            file_bytes: 1234,
            retention_cutoff_day: None,
            public_key: key.public(),
        }
    }

    #[test]
    fn digest_file_round_trips_and_every_field_is_signed() {
        let key = SigningKey::generate().expect("key");
        let st = statement(&key);
        let tags = [1, 2, 3, 4, 5, 6, 7, 8];
        let sig = st.sign(&key);
        let file = DigestFile::new(&st, &tags, &sig);
        let json = serde_json::to_string(&file).expect("json");
        let back: DigestFile = serde_json::from_str(&json).expect("parse");
        let (st2, sig2, tags2) = back.parse().expect("valid");
        assert_eq!(st2, st);
        assert_eq!(tags2, tags);
        assert!(st2.signature_valid(&sig2));

        // Changing any one field breaks the signature.
        type Change = Box<dyn Fn(&mut Statement)>;
        let variants: Vec<Change> = vec![
            Box::new(|s| s.sink = SinkKind::Postgres),
            Box::new(|s| s.kind = DigestKind::Batch),
            Box::new(|s| s.instance_id.push('x')),
            Box::new(|s| s.seq += 1),
            Box::new(|s| s.created_at_us += 1),
            Box::new(|s| s.previous = None),
            Box::new(|s| s.object.push('x')),
            Box::new(|s| s.record_count += 1),
            Box::new(|s| s.records_sha256[0] ^= 1),
            Box::new(|s| s.index_sha256[31] ^= 1),
            Box::new(|s| s.file_sha256 = None),
            Box::new(|s| s.file_bytes += 1),
            Box::new(|s| s.retention_cutoff_day = Some(0)),
        ];
        for (i, v) in variants.iter().enumerate() {
            let mut changed = st.clone();
            v(&mut changed);
            assert!(
                !changed.signature_valid(&sig),
                "variant {i} kept the signature"
            );
            assert_ne!(changed.digest_sha256(), st.digest_sha256(), "variant {i}");
        }
        let other = SigningKey::generate().expect("key");
        let mut wrong_key = st.clone();
        wrong_key.public_key = other.public();
        assert!(!wrong_key.signature_valid(&sig));
    }

    #[test]
    fn timestamps_keep_microseconds() {
        let us = 1_772_446_504_118_123;
        assert_eq!(format_micros(us), "2026-03-02T10:15:04.118123Z");
        assert_eq!(parse_micros(&format_micros(us)), Some(us));
    }
}
