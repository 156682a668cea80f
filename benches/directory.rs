//! The directory snapshot at tenant scale (issue 13): loading 200,000 users, 50,000 groups and
//! 5,000 applications, and what a loaded directory adds to the join of Istio-shaped entries
//! (group and application names looked up per record). Prints the snapshot's size and the
//! heap the loaded directory takes.
//! Run: `cargo bench --bench directory`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeSet;
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use meshaudit::ingest::wire;
use meshaudit::join::identity::directory::Directory;
use meshaudit::join::identity::{IdentityConfig, IdentityResolver};
use meshaudit::join::{redact::Redactor, Joiner, StreamContext};
use meshaudit::loadgen::corpus::{Corpus, CorpusSpec};
use meshaudit::record::id::EntryType;
use meshaudit::telemetry::Metrics;

const USERS: usize = 200_000;
const GROUPS: usize = 50_000;
const APPS: usize = 5_000;
const RECEIVED: i64 = 1_772_446_505_000_000;

fn corpus_entries() -> Vec<Bytes> {
    let corpus = Corpus::generate(&CorpusSpec {
        tokens: 100,
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

fn guid(kind: u32, i: usize) -> String {
    format!("{kind:08x}-0000-4000-8000-{i:012x}")
}

/// A snapshot as `meshaudit directory sync` writes it, holding every group and application
/// the corpus names (so the join's lookups hit) among the filler.
fn snapshot(groups_used: &BTreeSet<String>, apps_used: &BTreeSet<String>) -> Vec<u8> {
    let mut users = serde_json::Map::new();
    for i in 0..USERS {
        users.insert(
            guid(0xa0a0_a0a0, i),
            serde_json::json!({"upn": format!("user{i}@contoso.example"),
                               "display_name": format!("User Number {i}"), "user_type": "Member"}),
        );
    }
    let mut groups = serde_json::Map::new();
    for g in groups_used {
        groups.insert(g.clone(), format!("Group {g}").into());
    }
    for i in groups.len()..GROUPS {
        groups.insert(guid(0xb0b0_b0b0, i), format!("Department group {i}").into());
    }
    let mut apps = serde_json::Map::new();
    for a in apps_used {
        apps.insert(a.clone(), format!("App {a}").into());
    }
    for i in apps.len()..APPS {
        apps.insert(guid(0xc0c0_c0c0, i), format!("application-{i}").into());
    }
    serde_json::to_vec(&serde_json::json!({
        "synced_at": "2026-03-02T10:00:00.000000Z",
        "users": users, "groups": groups, "applications": apps,
        "managed_identities": (0..500).map(|i| guid(0xd0d0_d0d0, i)).collect::<Vec<_>>(),
    }))
    .expect("json")
}

/// Counts live heap bytes, so the directory's memory is measured exactly (resident set size
/// would hide it in memory the allocator kept from building the JSON).
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new, Relaxed);
        LIVE.fetch_sub(l.size(), Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn bench(c: &mut Criterion) {
    let entries = corpus_entries();
    let ident = wire::Identifier {
        node: Some(wire::Node {
            id: Bytes::from_static(b"sidecar~10.1.2.3~orders-1.shop~shop.svc.cluster.local"),
            cluster: Bytes::from_static(b"orders.shop"),
        }),
        log_name: Bytes::from_static(b"http_envoy_accesslog"),
    };
    let ctx = StreamContext::from_identifier(&ident);
    let plain = Joiner::default();
    let (mut groups, mut apps) = (BTreeSet::new(), BTreeSet::new());
    for e in &entries {
        let r = plain
            .join(&ctx, EntryType::Http, e, RECEIVED)
            .expect("joins");
        groups.extend(
            r.groups
                .into_iter()
                .flat_map(|l| l.values)
                .map(|v| String::from_utf8_lossy(&v).into_owned()),
        );
        apps.extend(r.app_id.map(|v| String::from_utf8_lossy(&v).into_owned()));
    }
    let bytes = snapshot(&groups, &apps);
    eprintln!(
        "snapshot: {USERS} users, {GROUPS} groups, {APPS} applications, {} MB of JSON; the corpus names {} groups and {} applications",
        bytes.len() >> 20,
        groups.len(),
        apps.len()
    );
    let before = LIVE.load(Relaxed);
    let loaded = Directory::from_json(&bytes).expect("loads");
    let after = LIVE.load(Relaxed);
    eprintln!(
        "heap of the loaded directory: {:.1} MB ({} entries, {:.0} bytes per user)",
        after.saturating_sub(before) as f64 / (1 << 20) as f64,
        loaded.len(),
        after.saturating_sub(before) as f64 / USERS as f64
    );
    drop(loaded);

    let mut g = c.benchmark_group("directory");
    g.sample_size(10);
    g.bench_function("load_200k_users_50k_groups", |b| {
        b.iter(|| black_box(Directory::from_json(black_box(&bytes)).expect("loads")))
    });
    g.finish();

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("directory.json");
    std::fs::write(&path, &bytes).expect("write");
    let resolver = IdentityResolver::new(
        &IdentityConfig {
            directory: Some(path),
            ..IdentityConfig::default()
        },
        Metrics::new(),
    )
    .expect("resolver");
    let with_dir = Joiner::new(Redactor::default()).with_identity(resolver);
    let sample = with_dir
        .join(&ctx, EntryType::Http, &entries[1], RECEIVED)
        .expect("joins");
    assert!(
        entries.iter().any(|e| with_dir
            .join(&ctx, EntryType::Http, e, RECEIVED)
            .expect("joins")
            .group_names
            .is_some_and(|n| n.values.iter().any(|x| x.value.is_some()))),
        "the directory names the corpus's groups: {sample:?}"
    );

    // The lookups alone: every group id and app id of the 100 records, against the loaded
    // 200,000-user directory (what the directory's size could make slow), without building
    // the record's group_names strings (what the contract column costs whatever the size).
    let ids: Vec<(Vec<bytes::Bytes>, Option<bytes::Bytes>)> = entries
        .iter()
        .map(|e| {
            let r = plain
                .join(&ctx, EntryType::Http, e, RECEIVED)
                .expect("joins");
            (r.groups.map(|l| l.values).unwrap_or_default(), r.app_id)
        })
        .collect();
    let per_record = ids.iter().map(|(g, _)| g.len()).sum::<usize>() as f64 / ids.len() as f64;
    eprintln!("{per_record:.1} group ids per record on average");
    let loaded = Directory::from_json(&bytes).expect("loads");
    let mut g = c.benchmark_group("directory_lookups_100_records");
    g.throughput(Throughput::Elements(ids.len() as u64));
    g.bench_function("groups_and_app", |b| {
        b.iter(|| {
            let mut found = 0usize;
            for (groups, app) in &ids {
                for id in groups {
                    found += usize::from(
                        loaded
                            .group_name(black_box(meshaudit::record::text::as_str(id)))
                            .is_some(),
                    );
                }
                if let Some(a) = app {
                    found += usize::from(
                        loaded
                            .app_name(black_box(meshaudit::record::text::as_str(a)))
                            .is_some(),
                    );
                }
            }
            black_box(found)
        })
    });
    g.finish();

    let mut g = c.benchmark_group("join_100_istio_entries");
    g.throughput(Throughput::Elements(entries.len() as u64));
    for (name, joiner) in [("without_directory", &plain), ("with_directory", &with_dir)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                for e in &entries {
                    black_box(
                        joiner
                            .join(&ctx, EntryType::Http, e, RECEIVED)
                            .expect("joins"),
                    );
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
