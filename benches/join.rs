//! Micro-benchmark of the hot path after gRPC framing: decode one Istio-shaped entry from the
//! subset types and join it into an audit record. Throughput is reported per entry.
//! Run: `cargo bench --bench join`. The end-to-end figures live in scripts/bench.
//!
//! Before measuring time it prints the heap allocations (and bytes) per record of the join,
//! counted by a thread-local counting wrapper around the system allocator (this binary only;
//! tests/join_allocs.rs holds the same figure as a regression bound).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use envoy_types::pb::envoy::data::accesslog::v3::HttpAccessLogEntry;
use meshaudit::ingest::wire;
use meshaudit::join::{Joiner, StreamContext};
use meshaudit::loadgen::corpus::{Corpus, CorpusSpec};
use meshaudit::record::id::EntryType;
use prost::Message;

struct Counting;

thread_local! {
    static ALLOCS: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

fn count(bytes: usize) {
    // `try_with`: the counter may already be gone while a thread exits.
    let _ = ALLOCS.try_with(|c| {
        let (n, b) = c.get();
        c.set((n + 1, b + bytes as u64));
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator; only a counter is bumped.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        count(l.size());
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        count(l.size());
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        count(new);
        unsafe { System.realloc(p, l, new) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> (u64, u64) {
    ALLOCS.with(Cell::get)
}

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

/// The whole corpus (HTTP and TCP, as `bench-ceilings` joins it).
fn mixed_entries() -> Vec<(EntryType, Bytes)> {
    Corpus::generate(&CorpusSpec {
        tokens: 1000,
        deny_ratio: 0.05,
        seed: 11,
        now_unix: 1_772_446_504,
    })
    .log_entries()
}

fn bench(c: &mut Criterion) {
    let entries = corpus_entries(100);
    let mixed = mixed_entries();
    let avg = entries.iter().map(Bytes::len).sum::<usize>() / entries.len();
    eprintln!("entry size: {avg} bytes on average");
    let ident = wire::Identifier {
        node: Some(wire::Node { id: Bytes::from_static(b"router~10.244.1.7~istio-ingressgateway-7d9c6b7f5-q8k2m.istio-system~istio-system.svc.cluster.local"), cluster: Bytes::from_static(b"istio-ingressgateway.istio-system") }),
        log_name: Bytes::from_static(b"http_envoy_accesslog"),
    };
    let ctx = StreamContext::from_identifier(&ident);
    let joiner = Joiner::default();

    // Allocations per record: joined and dropped, as the ingest task does (frame encode aside).
    for (name, set) in [
        (
            "istio_http",
            entries
                .iter()
                .map(|e| (EntryType::Http, e.clone()))
                .collect::<Vec<_>>(),
        ),
        ("mixed_corpus", mixed.clone()),
    ] {
        let (n0, b0) = allocs();
        for (kind, e) in &set {
            drop(black_box(
                joiner
                    .join(&ctx, *kind, e, 1_772_446_505_000_000)
                    .expect("joins"),
            ));
        }
        let (n1, b1) = allocs();
        let recs = set.len() as f64;
        eprintln!(
            "join allocations per record ({name}): {:.1} ({:.0} bytes)",
            (n1 - n0) as f64 / recs,
            (b1 - b0) as f64 / recs
        );
    }

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

    let mut g = c.benchmark_group("join_corpus");
    g.throughput(Throughput::Elements(mixed.len() as u64));
    g.bench_function("join_mixed_corpus", |b| {
        b.iter(|| {
            for (kind, e) in &mixed {
                black_box(
                    joiner
                        .join(&ctx, *kind, e, 1_772_446_505_000_000)
                        .expect("joins"),
                );
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
