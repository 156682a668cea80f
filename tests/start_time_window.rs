//! Start times a sink cannot store or should not be made to partition by (issue 15, items 4
//! and 5): the real binary, a real PostgreSQL, Parquet read back. A start time outside the
//! window around received_at is stored as received_at, in every sink alike, with the reported
//! seconds kept in `start_time_reported_secs`.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::pg::PgCluster;
use common::*;
use envoy_types::pb::envoy::data::accesslog::v3::HttpAccessLogEntry;
use envoy_types::pb::google::protobuf::Timestamp;
use serde_json::json;

/// The documented defaults, given as flags so the harness's wide fixture window does not apply.
const WINDOW: [&str; 4] = [
    "--start-time-max-past-secs",
    "604800",
    "--start-time-max-future-secs",
    "3600",
];

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// Entry `i` of the harness, started at `seconds`.
fn entry_at(i: u32, seconds: i64) -> HttpAccessLogEntry {
    let mut e = http_entry(i);
    if let Some(c) = e.common_properties.as_mut() {
        c.start_time = Some(Timestamp { seconds, nanos: 0 });
    }
    e
}

#[test]
fn a_bc_dated_entry_between_good_ones_reaches_every_sink_clamped_and_nothing_wedges() {
    let pg = PgCluster::start();
    let url = pg.create_db("bc");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut args = vec!["--database-url", &url, "--migrate-on-start"];
    args.extend(WINDOW);
    let c = Collector::start(dir.path(), &args);
    let now = now_secs();
    const BC: i64 = -300_000_000_000;
    // 10 good, the BC one, 10 good in one message; then 50 good ones in a second message.
    let mut first: Vec<HttpAccessLogEntry> = (0..10).map(|i| entry_at(i, now - 5)).collect();
    first.push(entry_at(10, BC));
    first.extend((11..21).map(|i| entry_at(i, now - 5)));
    let second = (21..71).map(|i| entry_at(i, now - 2)).collect();
    send(
        &c,
        vec![vec![
            http_message(Some(identifier(NODE_ID, LOG_NAME)), first),
            http_message(None, second),
        ]],
    );
    wait_for("all 71 rows in Postgres", Duration::from_secs(30), || {
        pg.count("bc", "SELECT count(*) FROM audit_records") == 71
    });
    assert_eq!(
        http_get(c.admin_addr, "/readyz").map(|r| r.0),
        Some(200),
        "ready: nothing is stuck"
    );
    assert_eq!(c.metric("meshaudit_start_time_clamped_total"), 1);
    assert_eq!(
        pg.count(
            "bc",
            "SELECT count(*) FROM audit_records WHERE start_time_reported_secs = -300000000000 \
             AND start_time = received_at AND request_id = 'req-10'"
        ),
        1,
        "the BC entry is kept, its time clamped, what it reported kept"
    );
    assert_eq!(
        pg.count(
            "bc",
            "SELECT count(*) FROM audit_records WHERE start_time_reported_secs IS NOT NULL"
        ),
        1,
        "only that one is flagged"
    );
    let (status, output) = c.stop();
    assert!(status.success(), "{output}");
    assert_eq!(
        output.matches("outside the accepted window").count(),
        1,
        "logged once per stream:\n{output}"
    );
    assert!(!output.contains("date out of range"), "{output}");

    let rows = read_rows(dir.path());
    let ids: BTreeSet<&str> = rows
        .iter()
        .filter_map(|r| r["request_id"].as_str())
        .collect();
    assert_eq!(ids.len(), 71, "every record in Parquet too");
    let bc: Vec<_> = rows
        .iter()
        .filter(|r| r["request_id"] == json!("req-10"))
        .collect();
    assert!(!bc.is_empty());
    for r in bc {
        assert_eq!(r["start_time_reported_secs"], json!(BC));
        assert_eq!(r["start_time"], r["received_at"]);
    }
    for r in rows.iter().filter(|r| r["request_id"] != json!("req-10")) {
        assert_eq!(r["start_time_reported_secs"], json!(null), "{r:?}");
    }
}

#[test]
fn a_message_spread_over_3000_days_makes_no_more_partitions_than_the_window() {
    let pg = PgCluster::start();
    let url = pg.create_db("days");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut args = vec!["--database-url", &url, "--migrate-on-start"];
    args.extend(WINDOW);
    let c = Collector::start(dir.path(), &args);
    let now = now_secs();
    // 2,990 entries on 2,990 different days from 1980, and 10 inside the window (every 12 h
    // over the last 5 days): one message of 3,000.
    const DAY: i64 = 86_400;
    let mut entries: Vec<HttpAccessLogEntry> = (0..2_990)
        .map(|i| entry_at(i, 315_532_800 + i64::from(i) * DAY))
        .collect();
    entries.extend((0..10).map(|k| entry_at(2_990 + k, now - i64::from(k) * DAY / 2)));
    send(
        &c,
        vec![vec![http_message(
            Some(identifier(NODE_ID, LOG_NAME)),
            entries,
        )]],
    );
    wait_for("3000 rows in Postgres", Duration::from_secs(60), || {
        pg.count("days", "SELECT count(*) FROM audit_records") == 3_000
    });
    assert_eq!(c.metric("meshaudit_start_time_clamped_total"), 2_990);
    // Every partition is within the window (7 days back) or the days the sink keeps ready
    // (PARTITIONS_AHEAD_DAYS = 7 ahead), never a day from 1980-2088.
    let days = pg.psql(
        "days",
        "SELECT string_agg(((now() AT TIME ZONE 'UTC')::date - \
         to_date(substring(c.relname from 'p(\\d{8})$'), 'YYYYMMDD'))::text, ',') \
         FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         WHERE i.inhparent = 'audit_records'::regclass AND c.relname ~ 'p\\d{8}$'",
    );
    let ages: Vec<i64> = days
        .trim()
        .split(',')
        .map(|d| d.trim().parse().expect("a day offset"))
        .collect();
    assert!(
        ages.iter().all(|a| (-8..=8).contains(a)),
        "partitions outside the window: {ages:?}"
    );
    assert!(
        ages.len() <= 17,
        "{} partitions for a 7-day window and 7 days ahead",
        ages.len()
    );
    let (status, output) = c.stop();
    assert!(status.success(), "{output}");
    // Parquet: the same bound on hour directories.
    let dirs: BTreeSet<String> = parquet_files(dir.path())
        .iter()
        .filter_map(|p| p.parent().map(|d| d.display().to_string()))
        .collect();
    assert!(dirs.len() <= 12, "hour directories: {dirs:?}");
    let rows = read_rows(dir.path());
    let ids: BTreeSet<&str> = rows
        .iter()
        .filter_map(|r| r["request_id"].as_str())
        .collect();
    assert_eq!(ids.len(), 3_000);
}
