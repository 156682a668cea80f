//! The Postgres digest chain of one collector instance: one row of `audit_digests` per batch,
//! inserted in the batch's own transaction, so a batch and its digest commit together or not at
//! all.
//!
//! A digest covers the rows its batch INSERTED (`RETURNING record_id`), not the batch as
//! offered: a row already present (a replay, an entry sent twice) belongs to the digest of the
//! batch that first inserted it. Every row is thus covered by exactly one digest, and a re-sent
//! duplicate changes nothing a verifier sees. Within a batch, the first record of each
//! record_id is the one offered (later copies are dropped before the COPY), so what was hashed is
//! what was stored even when two copies of an entry differ (received_at, a key fetched between
//! the two).

use std::collections::HashSet;

use sqlx::PgConnection;

use super::canonical::{records_sha256, sha256, stored_text, Encoder, Hash};
use super::statement::{format_micros, DigestKind, SinkKind, Statement};
use super::Signer;
use crate::record::{AsText, AuditRecord};
use crate::store::postgres::{classify, PgError};

/// The table a batch digest names as its object.
pub const TABLE: &str = "audit_records";

const INSERT_SQL: &str = "INSERT INTO audit_digests (instance_id, seq, kind, created_at, \
     record_count, records_sha256, record_ids, record_start_times, record_hashes, \
     retention_cutoff, previous_digest_sha256, digest_sha256, public_key, signature) \
     VALUES ($1, $2, $3, $4::timestamptz, $5, $6, $7, $8, $9, date '1970-01-01' + $10::int, \
     $11, $12, $13, $14)";

/// One entry of a batch digest's index, in record_id order.
pub struct IndexEntry<'a> {
    pub record_id: &'a str,
    pub start_time: Option<i64>,
    pub hash: &'a Hash,
}

/// The index bytes whose SHA-256 is the statement's `index_sha256`: per entry
/// `u32 len ‖ record_id ‖ (0x00 | 0x01 ‖ i64 start_time) ‖ hash`.
pub fn index_bytes<'a>(entries: impl Iterator<Item = IndexEntry<'a>>) -> Vec<u8> {
    let mut b = Vec::new();
    for e in entries {
        b.extend_from_slice(&(e.record_id.len() as u32).to_be_bytes());
        b.extend_from_slice(e.record_id.as_bytes());
        match e.start_time {
            None => b.push(0),
            Some(t) => {
                b.push(1);
                b.extend_from_slice(&t.to_be_bytes());
            }
        }
        b.extend_from_slice(e.hash);
    }
    b
}

/// A batch's records as they will be offered: first copy of each record_id, with its hash.
pub struct Prepared<'a> {
    pub rows: Vec<(&'a AuditRecord, Hash)>,
}

pub struct PgDigests {
    signer: Signer,
    enc: Encoder,
    /// (next seq, previous digest) of this instance's chain; None: read it in the next
    /// transaction (at start, and after any failure, when a COMMIT may or may not have landed).
    head: Option<(u64, Option<Hash>)>,
}

impl PgDigests {
    pub fn new(signer: Signer) -> PgDigests {
        PgDigests {
            signer,
            enc: Encoder::new(),
            head: None,
        }
    }

    pub fn instance_id(&self) -> &str {
        &self.signer.instance_id
    }

    /// Forget the chain head: the last transaction's outcome is unknown.
    pub fn invalidate(&mut self) {
        self.head = None;
    }

    /// Drops later copies of a record_id and hashes the rest (on the sink's task, per batch).
    pub fn prepare<'a>(&mut self, records: impl Iterator<Item = &'a AuditRecord>) -> Prepared<'a> {
        let mut seen: HashSet<&'a str> = HashSet::new();
        let mut rows = Vec::new();
        for r in records {
            if seen.insert(r.record_id.as_text()) {
                rows.push((r, self.enc.record(r)));
            }
        }
        Prepared { rows }
    }

    /// Like [`PgDigests::prepare`], for records whose canonical hashes are already known (the
    /// spool frame's, shared with the Parquet sink), so nothing is hashed twice.
    pub fn prepare_hashed<'a>(
        records: impl Iterator<Item = (&'a AuditRecord, &'a Hash)>,
    ) -> Prepared<'a> {
        let mut seen: HashSet<&'a str> = HashSet::new();
        let mut rows = Vec::new();
        for (r, h) in records {
            if seen.insert(r.record_id.as_text()) {
                rows.push((r, *h));
            }
        }
        Prepared { rows }
    }

    async fn head(&mut self, conn: &mut PgConnection) -> Result<(u64, Option<Hash>), PgError> {
        if let Some(h) = self.head {
            return Ok(h);
        }
        let row: Option<(i64, Vec<u8>)> = sqlx::query_as(
            "SELECT seq, digest_sha256 FROM audit_digests WHERE instance_id = $1 \
             ORDER BY seq DESC LIMIT 1",
        )
        .bind(&self.signer.instance_id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| classify(e, "reading the digest chain head"))?;
        let head = match row {
            None => (1, None),
            Some((seq, hash)) => (seq as u64 + 1, hash.try_into().ok()),
        };
        self.head = Some(head);
        Ok(head)
    }

    /// Inserts the digest of the rows this batch inserted (`inserted`: their record_ids, or
    /// `None` when every prepared row was inserted), in the caller's open transaction. Nothing
    /// is written when the batch inserted nothing.
    pub async fn append(
        &mut self,
        conn: &mut PgConnection,
        prepared: &Prepared<'_>,
        inserted: Option<Vec<String>>,
    ) -> Result<(), PgError> {
        let all = match &inserted {
            None => !prepared.rows.is_empty(),
            Some(ids) if ids.is_empty() => return Ok(()),
            Some(ids) => ids.len() == prepared.rows.len(),
        };
        if prepared.rows.is_empty() {
            return Ok(());
        }
        let mut entries: Vec<(std::borrow::Cow<'_, str>, Option<i64>, &Hash)> = if all {
            prepared
                .rows
                .iter()
                .map(|(r, h)| (stored_text(r.record_id.as_text()), r.start_time, h))
                .collect()
        } else {
            let set: HashSet<String> = inserted.into_iter().flatten().collect();
            prepared
                .rows
                .iter()
                .map(|(r, h)| (stored_text(r.record_id.as_text()), r.start_time, h))
                .filter(|(id, _, _)| set.contains(id.as_ref()))
                .collect()
        };
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let index = index_bytes(entries.iter().map(|(id, t, h)| IndexEntry {
            record_id: id,
            start_time: *t,
            hash: h,
        }));
        let (seq, previous) = self.head(conn).await?;
        let st = Statement {
            sink: SinkKind::Postgres,
            kind: DigestKind::Batch,
            instance_id: self.signer.instance_id.clone(),
            seq,
            created_at_us: chrono::Utc::now().timestamp_micros(),
            previous,
            object: TABLE.into(),
            record_count: entries.len() as u64,
            records_sha256: records_sha256(entries.iter().map(|e| e.2)),
            index_sha256: sha256(&index),
            file_sha256: None,
            file_bytes: 0,
            retention_cutoff_day: None,
            public_key: self.signer.key.public(),
        };
        let ids: Vec<&str> = entries.iter().map(|e| e.0.as_ref()).collect();
        let starts: Vec<Option<i64>> = entries.iter().map(|e| e.1).collect();
        let mut hashes = Vec::with_capacity(entries.len() * 32);
        entries.iter().for_each(|e| hashes.extend_from_slice(e.2));
        self.insert(conn, &st, ids, starts, hashes).await
    }

    /// Records, in the transaction that dropped them, that day partitions before `cutoff_day`
    /// (days since 1970-01-01) are gone: verify then expects their rows to be missing.
    pub async fn append_retention(
        &mut self,
        conn: &mut PgConnection,
        cutoff_day: i64,
    ) -> Result<(), PgError> {
        let (seq, previous) = self.head(conn).await?;
        let st = Statement {
            sink: SinkKind::Postgres,
            kind: DigestKind::Retention,
            instance_id: self.signer.instance_id.clone(),
            seq,
            created_at_us: chrono::Utc::now().timestamp_micros(),
            previous,
            object: TABLE.into(),
            record_count: 0,
            records_sha256: records_sha256([]),
            index_sha256: sha256(&[]),
            file_sha256: None,
            file_bytes: 0,
            retention_cutoff_day: Some(cutoff_day),
            public_key: self.signer.key.public(),
        };
        self.insert(conn, &st, Vec::new(), Vec::new(), Vec::new())
            .await
    }

    async fn insert(
        &mut self,
        conn: &mut PgConnection,
        st: &Statement,
        ids: Vec<&str>,
        starts: Vec<Option<i64>>,
        hashes: Vec<u8>,
    ) -> Result<(), PgError> {
        let sig = st.sign(&self.signer.key);
        let digest = st.digest_sha256();
        sqlx::query(INSERT_SQL)
            .bind(&st.instance_id)
            .bind(st.seq as i64)
            .bind(st.kind.as_str())
            .bind(format_micros(st.created_at_us))
            .bind(st.record_count as i64)
            .bind(st.records_sha256.as_slice())
            .bind(ids)
            .bind(starts)
            .bind(hashes)
            .bind(st.retention_cutoff_day.map(|d| d as i32))
            .bind(st.previous.as_ref().map(|h| h.as_slice()))
            .bind(digest.as_slice())
            .bind(st.public_key.0.as_slice())
            .bind(sig.as_slice())
            .execute(&mut *conn)
            .await
            .map_err(|e| classify(e, "inserting the batch digest"))?;
        // Valid once the caller commits; any failure before that calls invalidate().
        self.head = Some((st.seq + 1, Some(digest)));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::digest::key::SigningKey;
    use crate::store::spool::Frame;
    use std::sync::Arc;

    fn rec(id: &str, path: &str) -> AuditRecord {
        AuditRecord {
            record_id: crate::record::text::copy(id),
            received_at: 1_772_446_504_000_000,
            path: Some(crate::record::text::copy(path)),
            ..Default::default()
        }
    }

    /// The hashes a spool frame shares between the sinks are the ones each sink would have made
    /// itself, and the Postgres batch built from them (first copy of each id) is the same.
    #[test]
    fn shared_frame_hashes_equal_hashing_per_sink() {
        let frame = Frame::new(0, 10, vec![rec("a", "/x"), rec("b", "/y"), rec("a", "/z")]);
        let mut enc = Encoder::new();
        let own: Vec<Hash> = frame.records.iter().map(|r| enc.record(r)).collect();
        assert_eq!(frame.hashes(), own.as_slice());
        assert_ne!(own[0], own[2], "same id, different row: different hash");

        let mut d = PgDigests::new(Signer {
            key: Arc::new(SigningKey::generate().expect("key")),
            instance_id: "inst-a".into(),
        });
        let hashed_here = d.prepare(frame.records.iter());
        let shared = PgDigests::prepare_hashed(frame.records.iter().zip(frame.hashes()));
        let view = |p: &Prepared<'_>| {
            p.rows
                .iter()
                .map(|(r, h)| (r.record_id.clone(), r.path.clone(), *h))
                .collect::<Vec<_>>()
        };
        assert_eq!(view(&shared), view(&hashed_here));
        assert_eq!(shared.rows.len(), 2, "later copies of an id are dropped");
        assert_eq!(shared.rows[0].1, own[0]);
        assert_eq!(shared.rows[1].1, own[1]);
    }
}
