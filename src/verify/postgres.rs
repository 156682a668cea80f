//! Verifying a database: the chains in `audit_digests`, then every row of `audit_records`
//! against the digest index that covers it. Rows and index entries are matched by record_id
//! in memory (about 150 bytes per row), so no collation or index order of the server matters.

use futures_util::TryStreamExt;
use sqlx::postgres::PgRow;
use sqlx::{Connection, Row};

use super::chain::{check_chains, trusted, Link};
use super::report::{Finding, FindingKind, Report, SinkSummary};
use super::VerifyError;
use crate::record::{ColumnType, COLUMNS};
use crate::store::digest::canonical::{records_sha256, sha256, Encoder, Hash};
use crate::store::digest::key::PublicKey;
use crate::store::digest::postgres::{index_bytes, IndexEntry, TABLE};
use crate::store::digest::statement::{DigestKind, SinkKind, Statement};
use crate::store::postgres::url::DatabaseUrl;
use crate::store::postgres::{classify, connect, connect_options};

const SINK: &str = "postgres";
const DAY_US: i64 = 86_400_000_000;

const DIGESTS_SQL: &str = "SELECT instance_id, seq, kind, \
     (extract(epoch FROM created_at) * 1000000)::bigint, record_count, records_sha256, \
     record_ids, record_start_times, record_hashes, retention_cutoff - date '1970-01-01', \
     previous_digest_sha256, public_key, signature FROM audit_digests";

/// One row an index says was inserted.
struct Expect {
    record_id: String,
    start_time: Option<i64>,
    hash: Hash,
    /// Index into `digests`.
    digest: usize,
}

struct Found {
    record_id: String,
    start_time: Option<i64>,
    hash: Hash,
}

struct DigestRef {
    instance_id: String,
    seq: u64,
}

pub async fn verify(
    url: &DatabaseUrl,
    keys: &[PublicKey],
    report: &mut Report,
) -> Result<SinkSummary, VerifyError> {
    let opts = connect_options(url)?;
    let mut conn = connect(&opts).await?;
    let has_table: bool = sqlx::query_scalar("SELECT to_regclass('audit_digests') IS NOT NULL")
        .fetch_one(&mut conn)
        .await
        .map_err(|e| classify(e, "looking for audit_digests"))?;
    if !has_table {
        return Err(VerifyError::NoDigestTable);
    }
    let mut summary = SinkSummary {
        expired_records: Some(0),
        ..Default::default()
    };
    let mut digests: Vec<DigestRef> = Vec::new();
    let mut expected: Vec<Expect> = Vec::new();
    let mut links = Vec::new();
    let mut cutoff_day: Option<i64> = None;
    {
        let mut rows = sqlx::query(DIGESTS_SQL).fetch(&mut conn);
        while let Some(row) = rows
            .try_next()
            .await
            .map_err(|e| classify(e, "reading audit_digests"))?
        {
            summary.digests += 1;
            let (st, sig, entries) = match parse_digest(&row) {
                Ok(p) => p,
                Err((instance, seq, e)) => {
                    report.push(
                        Finding::new(FindingKind::DigestUnreadable, SINK, e).digest(&instance, seq),
                    );
                    continue;
                }
            };
            let ok = trusted(&st, &sig, keys, SINK, report);
            if ok && st.kind == DigestKind::Retention {
                cutoff_day = cutoff_day.max(st.retention_cutoff_day);
            }
            links.push(Link {
                instance_id: st.instance_id.clone(),
                seq: st.seq,
                digest_sha256: st.digest_sha256(),
                previous: st.previous,
                created_at_us: st.created_at_us,
            });
            let d = digests.len();
            digests.push(DigestRef {
                instance_id: st.instance_id,
                seq: st.seq,
            });
            expected.extend(
                entries
                    .into_iter()
                    .map(|(record_id, start_time, hash)| Expect {
                        record_id,
                        start_time,
                        hash,
                        digest: d,
                    }),
            );
        }
    }
    let chains = check_chains(SINK, links, report);
    report.chains.extend(chains);

    let mut found = read_rows(&mut conn).await?;
    summary.rejected_records = Some(rejected_count(&mut conn).await?);
    let _ = conn.close().await;
    summary.records = found.len() as u64;
    expected.sort_unstable_by(|a, b| a.record_id.cmp(&b.record_id));
    found.sort_unstable_by(|a, b| a.record_id.cmp(&b.record_id));
    let cutoff_us = cutoff_day.map(|d| d.saturating_mul(DAY_US));
    let expired = compare(&expected, &found, &digests, cutoff_us, report);
    summary.expired_records = Some(expired);
    Ok(summary)
}

type Entries = Vec<(String, Option<i64>, Hash)>;
/// A digest row that cannot be used: its instance, seq, and what is wrong.
type Malformed = (String, u64, String);

/// The statement rebuilt from a row, its signature, and its index entries; Err: the digest
/// (instance, seq) and what is malformed.
fn parse_digest(row: &PgRow) -> Result<(Statement, Vec<u8>, Entries), Malformed> {
    let instance: String = row.try_get(0).unwrap_or_default();
    let seq: i64 = row.try_get(1).unwrap_or_default();
    let bad = |what: &str| (instance.clone(), seq as u64, format!("malformed {what}"));
    let kind: String = row.try_get(2).map_err(|_| bad("kind"))?;
    let created: i64 = row.try_get(3).map_err(|_| bad("created_at"))?;
    let count: i64 = row.try_get(4).map_err(|_| bad("record_count"))?;
    let records: Vec<u8> = row.try_get(5).map_err(|_| bad("records_sha256"))?;
    let ids: Vec<Option<String>> = row.try_get(6).map_err(|_| bad("record_ids"))?;
    let starts: Vec<Option<i64>> = row.try_get(7).map_err(|_| bad("record_start_times"))?;
    let hashes: Vec<u8> = row.try_get(8).map_err(|_| bad("record_hashes"))?;
    let cutoff: Option<i32> = row.try_get(9).map_err(|_| bad("retention_cutoff"))?;
    let previous: Option<Vec<u8>> = row.try_get(10).map_err(|_| bad("previous_digest_sha256"))?;
    let public: Vec<u8> = row.try_get(11).map_err(|_| bad("public_key"))?;
    let sig: Vec<u8> = row.try_get(12).map_err(|_| bad("signature"))?;
    if ids.len() != starts.len() || hashes.len() != ids.len() * 32 {
        return Err(bad(
            "index (record_ids, record_start_times and record_hashes differ in length)",
        ));
    }
    let mut entries = Vec::with_capacity(ids.len());
    for ((id, start), h) in ids.into_iter().zip(starts).zip(hashes.chunks_exact(32)) {
        let id = id.ok_or_else(|| bad("record_ids (a NULL element)"))?;
        let mut hash = [0u8; 32];
        hash.copy_from_slice(h);
        entries.push((id, start, hash));
    }
    let index = index_bytes(entries.iter().map(|(id, t, h)| IndexEntry {
        record_id: id,
        start_time: *t,
        hash: h,
    }));
    let st = Statement {
        sink: SinkKind::Postgres,
        kind: DigestKind::parse(&kind).ok_or_else(|| bad("kind"))?,
        instance_id: instance.clone(),
        seq: seq as u64,
        created_at_us: created,
        previous: match previous {
            None => None,
            Some(p) => Some(p.try_into().map_err(|_| bad("previous_digest_sha256"))?),
        },
        object: TABLE.into(),
        record_count: count as u64,
        records_sha256: records.try_into().map_err(|_| bad("records_sha256"))?,
        index_sha256: sha256(&index),
        file_sha256: None,
        file_bytes: 0,
        retention_cutoff_day: cutoff.map(i64::from),
        public_key: PublicKey(public.try_into().map_err(|_| bad("public_key"))?),
    };
    if records_sha256(entries.iter().map(|e| &e.2)) != st.records_sha256
        || entries.len() as u64 != st.record_count
    {
        return Err(bad(
            "index (it does not add up to records_sha256 and record_count)",
        ));
    }
    Ok((st, sig, entries))
}

async fn read_rows(conn: &mut sqlx::PgConnection) -> Result<Vec<Found>, VerifyError> {
    let select: Vec<String> = COLUMNS
        .iter()
        .map(|c| match c.column_type() {
            ColumnType::Timestamptz => {
                format!("(extract(epoch FROM {0}) * 1000000)::bigint", c.name)
            }
            _ => c.name.to_owned(),
        })
        .collect();
    let sql = format!("SELECT {} FROM audit_records", select.join(", "));
    let start_col = COLUMNS.iter().position(|c| c.name == "start_time");
    let mut enc = Encoder::new();
    let mut out = Vec::new();
    let mut rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch(conn);
    while let Some(row) = rows
        .try_next()
        .await
        .map_err(|e| classify(e, "reading audit_records"))?
    {
        enc.begin();
        for (i, c) in COLUMNS.iter().enumerate() {
            let get = |e: sqlx::Error| classify(e, "decoding a row of audit_records");
            match c.column_type() {
                ColumnType::Text => {
                    enc.text(c.name, row.try_get::<Option<&str>, _>(i).map_err(get)?)
                }
                ColumnType::Int => enc.int(c.name, row.try_get(i).map_err(get)?),
                ColumnType::BigInt => enc.bigint(c.name, row.try_get(i).map_err(get)?),
                ColumnType::Float8 => enc.float8(c.name, row.try_get(i).map_err(get)?),
                ColumnType::Bool => enc.bool(c.name, row.try_get(i).map_err(get)?),
                ColumnType::Timestamptz => enc.timestamp(c.name, row.try_get(i).map_err(get)?),
                ColumnType::TextArray => {
                    let v: Option<Vec<Option<String>>> = row.try_get(i).map_err(get)?;
                    enc.text_list(c.name, v.as_ref().map(|v| v.iter().map(|s| s.as_deref())));
                }
            }
        }
        out.push(Found {
            record_id: row.try_get(0).unwrap_or_default(),
            start_time: start_col
                .and_then(|i| row.try_get::<Option<i64>, _>(i).ok())
                .flatten(),
            hash: enc.finish(),
        });
    }
    Ok(out)
}

/// Merges the sorted index entries with the sorted rows; returns the rows retention dropped.
fn compare(
    expected: &[Expect],
    found: &[Found],
    digests: &[DigestRef],
    cutoff_us: Option<i64>,
    report: &mut Report,
) -> u64 {
    let mut expired = 0;
    let (mut i, mut j) = (0, 0);
    while i < expected.len() || j < found.len() {
        let id = match (expected.get(i), found.get(j)) {
            (Some(e), Some(f)) => e.record_id.as_str().min(f.record_id.as_str()),
            (Some(e), None) => e.record_id.as_str(),
            (None, Some(f)) => f.record_id.as_str(),
            (None, None) => break,
        };
        let i0 = i;
        while i < expected.len() && expected[i].record_id == id {
            i += 1;
        }
        let j0 = j;
        while j < found.len() && found[j].record_id == id {
            j += 1;
        }
        let mut exp: Vec<Option<&Expect>> = expected[i0..i].iter().map(Some).collect();
        let mut unmatched: Vec<&Found> = Vec::new();
        for f in &found[j0..j] {
            match exp.iter_mut().find(|e| e.is_some_and(|e| e.hash == f.hash)) {
                Some(slot) => *slot = None,
                None => unmatched.push(f),
            }
        }
        let mut left = exp.into_iter().flatten();
        for f in unmatched {
            match left.next() {
                Some(e) => {
                    let d = &digests[e.digest];
                    report.push(
                        Finding::new(
                            FindingKind::RecordModified,
                            SINK,
                            "the row's values differ from the signed record",
                        )
                        .record(f.record_id.clone())
                        .digest(&d.instance_id, d.seq),
                    );
                }
                None => report.push(
                    Finding::new(
                        FindingKind::RecordInserted,
                        SINK,
                        format!(
                            "no digest covers this row (start_time {})",
                            f.start_time.map_or("NULL".into(), |t| {
                                crate::store::digest::statement::format_micros(t)
                            })
                        ),
                    )
                    .record(f.record_id.clone()),
                ),
            }
        }
        for e in left {
            if let (Some(t), Some(cut)) = (e.start_time, cutoff_us) {
                if t < cut {
                    expired += 1;
                    continue;
                }
            }
            let d = &digests[e.digest];
            report.push(
                Finding::new(
                    FindingKind::RecordDeleted,
                    SINK,
                    "the signed row is gone from audit_records",
                )
                .record(e.record_id.clone())
                .digest(&d.instance_id, d.seq),
            );
        }
    }
    expired
}

/// Rows the collector kept in `audit_rejects` because Postgres refused them for a data reason
/// (store::postgres::reject): refused, not missing. 0 for a schema older than version 4.
async fn rejected_count(conn: &mut sqlx::PgConnection) -> Result<u64, VerifyError> {
    let n: Option<i64> = sqlx::query_scalar(
        "SELECT CASE WHEN to_regclass('audit_rejects') IS NULL THEN 0 \
         ELSE (SELECT count(*) FROM audit_rejects) END",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(|e| classify(e, "counting audit_rejects"))?;
    Ok(n.unwrap_or(0).max(0) as u64)
}
