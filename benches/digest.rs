//! Cost of tamper evidence per record on the writer side (docs/tamper-evidence.md): the
//! canonical encoding and SHA-256 of one record (what each sink does per record it stores), the
//! Parquet file's per-record bookkeeping, the Postgres batch preparation (dedupe + hash), and the
//! Ed25519 signature made once per file or batch. Records are the load generator's, joined.
//! Run: `cargo bench --bench digest`. Throughput is reported per record.

use std::hint::black_box;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use meshaudit::ingest::wire;
use meshaudit::join::{Joiner, StreamContext};
use meshaudit::loadgen::corpus::{Corpus, CorpusSpec};
use meshaudit::record::AuditRecord;
use meshaudit::store::digest::canonical::{sha256, Encoder};
use meshaudit::store::digest::files::FileRecords;
use meshaudit::store::digest::key::SigningKey;
use meshaudit::store::digest::postgres::PgDigests;
use meshaudit::store::digest::statement::{DigestKind, SinkKind, Statement};
use meshaudit::store::digest::Signer;

const N: usize = 1000;

fn records() -> Vec<AuditRecord> {
    let corpus = Corpus::generate(&CorpusSpec {
        tokens: 100,
        deny_ratio: 0.05,
        seed: 7,
        now_unix: 1_772_446_504,
    });
    let ctx = StreamContext::from_identifier(&wire::Identifier {
        node: Some(wire::Node {
            id: Bytes::from_static(
                b"sidecar~10.1.2.3~checkout-7d9f.orders~orders.svc.cluster.local",
            ),
            cluster: Bytes::from_static(b"checkout.orders"),
        }),
        log_name: Bytes::from_static(b"http_envoy_accesslog"),
    });
    let joiner = Joiner::default();
    let mut out = Vec::new();
    for (kind, e) in corpus.log_entries() {
        out.push(
            joiner
                .join(&ctx, kind, &e, 1_772_446_505_000_000)
                .expect("joins"),
        );
    }
    out.truncate(N);
    out
}

fn bench(c: &mut Criterion) {
    let recs = records();
    let mut enc = Encoder::new();
    let bytes: usize = recs
        .iter()
        .map(|r| {
            enc.record(r);
            enc.bytes().len()
        })
        .sum();
    eprintln!(
        "canonical encoding: {} bytes per record on average",
        bytes / recs.len()
    );
    let key = Arc::new(SigningKey::generate().expect("key"));

    let mut g = c.benchmark_group("digest");
    g.throughput(Throughput::Elements(recs.len() as u64));
    g.bench_function("record_hash_1000", |b| {
        b.iter(|| {
            for r in &recs {
                black_box(enc.record(r));
            }
        })
    });
    g.bench_function("parquet_file_records_1000", |b| {
        b.iter(|| {
            let mut f = FileRecords::default();
            for r in &recs {
                f.push(&enc.record(r));
            }
            black_box(f);
        })
    });
    let mut pg = PgDigests::new(Signer {
        key: Arc::clone(&key),
        instance_id: "bench".into(),
    });
    g.bench_function("postgres_prepare_1000", |b| {
        b.iter(|| black_box(pg.prepare(recs.iter()).rows.len()))
    });
    g.finish();

    let mut g = c.benchmark_group("digest_once_per_file_or_batch");
    let st = Statement {
        sink: SinkKind::Parquet,
        kind: DigestKind::File,
        instance_id: "bench".into(),
        seq: 1,
        created_at_us: 0,
        previous: Some(sha256(b"p")),
        object: "dt=2026-03-02/hour=10/part-20260302T101504-0a1b2c3d-000001.parquet".into(),
        record_count: 1,
        records_sha256: sha256(b"r"),
        index_sha256: sha256(b"i"),
        file_sha256: Some(sha256(b"f")),
        file_bytes: 1,
        retention_cutoff_day: None,
        public_key: key.public(),
    };
    g.bench_function("sign_statement", |b| b.iter(|| black_box(st.sign(&key))));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
