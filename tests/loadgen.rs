//! `meshaudit loadgen` against the real collector: what the generator says it sent is what the
//! collector counted, stored, and judged.

mod common;

use std::process::Command;

use common::{read_rows, Collector};
use serde_json::Value;

/// Runs `meshaudit loadgen` to completion and returns its JSON report.
fn loadgen(c: &Collector, extra: &[&str]) -> Value {
    let target = c.als_addr.to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_meshaudit"))
        .args(["loadgen", "--target", &target, "--streams", "4"])
        .args([
            "--connections",
            "2",
            "--duration-secs",
            "1",
            "--tokens",
            "200",
        ])
        .args(extra)
        .output()
        .expect("run meshaudit loadgen");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "loadgen failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON line on stdout: {stdout}");
    serde_json::from_str(lines[0]).expect("report is JSON")
}

fn count(report: &Value, key: &str) -> u64 {
    report[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} in {report}"))
}

#[test]
fn the_collector_counts_exactly_what_loadgen_sent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Collector::start(dir.path(), &[]);

    let full = loadgen(
        &c,
        &["--seed", "7", "--deny-ratio", "0.1", "--tcp-share", "0.2"],
    );
    assert_eq!(count(&full, "errors"), 0, "{full}");
    let entries = count(&full, "entries");
    assert!(entries > 0, "{full}");
    assert_eq!(
        entries,
        count(&full, "http_entries") + count(&full, "tcp_entries")
    );
    assert!(count(&full, "tcp_entries") > 0, "{full}");
    assert_eq!(c.metric("meshaudit_als_entries_received_total"), entries);
    assert_eq!(
        c.metric("meshaudit_als_messages_received_total"),
        count(&full, "messages")
    );
    assert_eq!(c.metric("meshaudit_als_streams_opened_total"), 4);

    // Paced: never more than the rate allows (plus the last message due on each stream).
    let paced = loadgen(&c, &["--seed", "8", "--rate", "400"]);
    assert_eq!(count(&paced, "errors"), 0, "{paced}");
    let paced_entries = count(&paced, "entries");
    assert!(
        paced_entries > 0 && paced_entries <= 400 + 4 * 64,
        "{paced}"
    );
    let total = entries + paced_entries;
    assert_eq!(c.metric("meshaudit_als_entries_received_total"), total);

    let (status, output) = c.stop();
    assert!(status.success(), "exit {status}:\n{output}");

    // Every entry was stored once, and the policy join saw exactly the denials loadgen made.
    let rows = read_rows(dir.path());
    assert_eq!(rows.len() as u64, total);
    let ids: std::collections::HashSet<&str> = rows
        .iter()
        .filter_map(|r| r["record_id"].as_str())
        .collect();
    assert_eq!(
        ids.len() as u64,
        total,
        "every entry sent is a distinct record"
    );
    let denied = rows.iter().filter(|r| r["decision"] == "deny").count() as u64;
    assert_eq!(
        denied,
        count(&full, "denied_entries") + count(&paced, "denied_entries")
    );
    assert!(rows.iter().any(|r| r["decision"] == "dry_run_deny"));
}
