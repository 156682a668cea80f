//! One micro-benchmark per stage of the sink side of the hot path (issue 11), so that a
//! regression in any one of them shows in review: the spool frame encoding (per ALS message, in
//! the ingest task), the spool frame's shared record hashes (tamper evidence, once per record for
//! both sinks), the Arrow batch, and the Parquet encoding of that batch. The join has its own
//! benchmark (benches/join.rs), raw-token verification too (benches/identity.rs), and the
//! digest's per-sink bookkeeping (benches/digest.rs).
//! Run: `cargo bench --bench stages`. Throughput is reported per record.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use meshaudit::ingest::wire;
use meshaudit::join::{Joiner, StreamContext};
use meshaudit::loadgen::corpus::{Corpus, CorpusSpec};
use meshaudit::record::{arrow as record_arrow, AuditRecord};
use meshaudit::store::spool::{frame, Frame};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

/// Rows per Arrow batch in the Parquet sink (store::parquet::ENCODE_BATCH_ROWS).
const N: usize = 2048;
/// Entries per ALS message in the load generator's corpus (Envoy's 16 KiB buffer).
const PER_MESSAGE: usize = 6;

fn records() -> Vec<AuditRecord> {
    let corpus = Corpus::generate(&CorpusSpec {
        tokens: 1000,
        deny_ratio: 0.05,
        seed: 11,
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
    // HTTP and TCP records interleaved as a collector sees them (about 1 in 10 is TCP).
    let (http, tcp): (Vec<_>, Vec<_>) = out.into_iter().partition(|r| r.entry_kind == "http");
    let mut tcp = tcp.into_iter();
    let mut mixed = Vec::with_capacity(N);
    for (i, r) in http.into_iter().enumerate() {
        mixed.push(r);
        if i % 9 == 8 {
            mixed.extend(tcp.next());
        }
        if mixed.len() >= N {
            break;
        }
    }
    mixed.truncate(N);
    mixed
}

fn bench(c: &mut Criterion) {
    let recs = records();
    let mut g = c.benchmark_group("stages");
    g.throughput(Throughput::Elements(recs.len() as u64));

    g.bench_function("spool_frame_encode_2048", |b| {
        b.iter(|| {
            for chunk in recs.chunks(PER_MESSAGE) {
                black_box(frame::encode(chunk));
            }
        })
    });

    // A fresh frame per iteration: the hashes are computed once per frame, on first use.
    g.bench_function("frame_hashes_2048", |b| {
        b.iter_batched(
            || Frame::new(0, 1, recs.clone()),
            // The frame is returned so that freeing its records is not timed.
            |f| {
                black_box(f.hashes().len());
                f
            },
            BatchSize::LargeInput,
        )
    });

    let refs: Vec<&AuditRecord> = recs.iter().collect();
    g.bench_function("arrow_batch_2048", |b| {
        b.iter(|| black_box(record_arrow::to_record_batch_refs(&refs).expect("batch")))
    });

    let batch = record_arrow::to_record_batch_refs(&refs).expect("batch");
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).expect("level")))
        .build();
    g.bench_function("parquet_encode_2048", |b| {
        b.iter(|| {
            let mut w =
                ArrowWriter::try_new(Vec::new(), record_arrow::schema(), Some(props.clone()))
                    .expect("writer");
            w.write(&batch).expect("write");
            black_box(w.into_inner().expect("bytes").len())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
