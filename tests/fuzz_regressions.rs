//! The fuzz targets' inputs in the normal `cargo test`: every seed (fuzz/seeds/<target>/) and
//! every input that once broke a target (fuzz/regressions/<target>/) runs through the same
//! function the target calls, `meshaudit::fuzzing::<target>`. Fuzzing itself is `scripts/fuzz`.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use meshaudit::fuzzing::TARGETS;
use meshaudit::ingest::wire::stream_access_logs_message::LogEntries;
use meshaudit::ingest::wire::StreamAccessLogsMessage;
use meshaudit::join::{Joiner, StreamContext};
use meshaudit::record::id::EntryType;
use prost::Message;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                // `.gitkeep` holds an empty directory in git; it is not an input.
                .filter(|p| {
                    let hidden = p
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'));
                    p.is_file() && !hidden
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[test]
fn every_fuzz_target_is_listed_and_has_seeds() {
    let mut on_disk: Vec<String> = files(&fuzz_dir().join("fuzz_targets"))
        .iter()
        .filter_map(|p| Some(p.file_stem()?.to_str()?.to_owned()))
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = TARGETS.iter().map(|(n, _)| (*n).to_owned()).collect();
    listed.sort();
    assert_eq!(
        on_disk, listed,
        "fuzz/fuzz_targets/ and meshaudit::fuzzing::TARGETS"
    );
    for name in listed {
        let seeds = files(&fuzz_dir().join("seeds").join(&name));
        assert!(seeds.len() >= 4, "{name}: only {} seeds", seeds.len());
    }
}

#[test]
fn seeds_and_regressions_pass_every_fuzz_target() {
    let mut failed = vec![];
    let mut ran = 0;
    for (name, target) in TARGETS {
        let dir = fuzz_dir();
        let inputs = files(&dir.join("seeds").join(name))
            .into_iter()
            .chain(files(&dir.join("regressions").join(name)));
        for input in inputs {
            let data = std::fs::read(&input).expect("read fuzz input");
            ran += 1;
            if std::panic::catch_unwind(|| target(&data)).is_err() {
                failed.push(input.display().to_string());
            }
        }
    }
    assert!(ran > 20, "only {ran} inputs");
    assert!(failed.is_empty(), "fuzz inputs that fail: {failed:#?}");
}

/// The ALS seeds are real Istio-shaped messages (from the load generator's corpus): they
/// decode and every entry joins, so the fuzzer starts from inputs that reach deep into the join.
#[test]
fn als_seeds_reach_the_join() {
    let joiner = Joiner::default();
    let mut joined = 0;
    for input in files(&fuzz_dir().join("seeds").join("als_message")) {
        let data = std::fs::read(&input).expect("read");
        if data.is_empty() {
            continue;
        }
        let msg = StreamAccessLogsMessage::decode(Bytes::from(data)).expect("seed decodes");
        let ctx = msg
            .identifier
            .as_ref()
            .map(StreamContext::from_identifier)
            .unwrap_or_default();
        let (kind, entries) = match &msg.log_entries {
            Some(LogEntries::HttpLogs(h)) => (EntryType::Http, &h.log_entry),
            Some(LogEntries::TcpLogs(t)) => (EntryType::Tcp, &t.log_entry),
            None => panic!("{}: no entries", input.display()),
        };
        for e in entries {
            let rec = joiner
                .join(&ctx, kind, e, 0)
                .unwrap_or_else(|err| panic!("{}: {err}", input.display()));
            assert!(rec.start_time.is_some(), "{}", input.display());
            joined += 1;
        }
    }
    assert!(joined >= 10, "{joined}");
}
