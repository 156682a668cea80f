//! Micro-benchmark of the hot path after gRPC framing: decode one Istio-shaped entry from the
//! subset types and join it into an audit record. Throughput is reported per entry.
//! Run: `cargo bench --bench join`. The end-to-end figures live in scripts/bench.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use envoy_types::pb::envoy::data::accesslog::v3::HttpAccessLogEntry;
use meshaudit::ingest::wire;
use meshaudit::join::{Joiner, StreamContext};
use meshaudit::loadgen::corpus::{Corpus, CorpusSpec};
use meshaudit::record::id::EntryType;
use prost::Message;

/// The load generator's Istio-shaped HTTP entries (Entra claims, RBAC metadata, peer metadata,
/// SPIFFE SANs, a logged authorization header), as encoded entry bytes.
fn corpus_entries(tokens: usize) -> Vec<Bytes> {
    let corpus = Corpus::generate(&CorpusSpec {
        tokens,
        deny_ratio: 0.05,
        seed: 7,
        now_unix: 1_772_446_504,
    });
    corpus
        .log_entries()
        .into_iter()
        .filter(|(kind, _)| *kind == EntryType::Http)
        .map(|(_, e)| e)
        .take(100)
        .collect()
}

fn bench(c: &mut Criterion) {
    let entries = corpus_entries(100);
    let avg = entries.iter().map(Bytes::len).sum::<usize>() / entries.len();
    eprintln!("entry size: {avg} bytes on average");
    let ident = wire::Identifier {
        node: Some(wire::Node { id: Bytes::from_static(b"router~10.244.1.7~istio-ingressgateway-7d9c6b7f5-q8k2m.istio-system~istio-system.svc.cluster.local"), cluster: Bytes::from_static(b"istio-ingressgateway.istio-system") }),
        log_name: Bytes::from_static(b"http_envoy_accesslog"),
    };
    let ctx = StreamContext::from_identifier(&ident);
    let joiner = Joiner::default();

    let mut g = c.benchmark_group("hot_path");
    g.throughput(Throughput::Elements(entries.len() as u64));
    g.bench_function("join_100_istio_entries", |b| {
        b.iter(|| {
            for e in &entries {
                black_box(
                    joiner
                        .join(&ctx, EntryType::Http, e, 1_772_446_505_000_000)
                        .expect("joins"),
                );
            }
        })
    });
    g.bench_function("subset_decode_100_entries", |b| {
        b.iter(|| {
            for e in &entries {
                black_box(wire::HttpAccessLogEntry::decode(e.clone()).expect("decodes"));
            }
        })
    });
    g.bench_function("record_id_100_entries", |b| {
        b.iter(|| {
            for e in &entries {
                black_box(meshaudit::record::id::record_id(
                    b"node",
                    b"log",
                    EntryType::Http,
                    e,
                ));
            }
        })
    });
    g.bench_function("full_envoy_types_decode_100_entries", |b| {
        b.iter(|| {
            for e in &entries {
                black_box(HttpAccessLogEntry::decode(e.clone()).expect("decodes"));
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
