//! Poison rows (issue 14 item 4) against a real PostgreSQL: a record the database refuses for a
//! data reason is kept in `audit_rejects` with the database's error, counted and logged once,
//! shown by `verify` as rejected, and the records around it (and after it) land.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::pg::PgCluster;
use common::*;
use serde_json::Value;

const COUNT: &str = "SELECT count(*) FROM audit_records";
const REJECTS: &str = "SELECT count(*) FROM audit_rejects";

fn meshaudit(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_meshaudit"))
        .args(args)
        .env_remove("DATABASE_URL")
        .stdin(Stdio::null())
        .output()
        .expect("run meshaudit");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn public_key(data_dir: &Path, out_dir: &Path) -> PathBuf {
    let out = out_dir.join("collector.pub");
    let (code, text) = meshaudit(&[
        "public-key",
        "--data-dir",
        data_dir.to_str().expect("utf8"),
        "--out",
        out.to_str().expect("utf8"),
    ]);
    assert_eq!(code, 0, "{text}");
    out
}

/// The record_id Parquet holds for the entry with this path (Parquet takes every record).
fn parquet_id_of(data_dir: &Path, path: &str) -> String {
    let rows = read_rows(data_dir);
    let hits: Vec<_> = rows.iter().filter(|r| r["path"] == path).collect();
    assert_eq!(hits.len(), 1, "one parquet row with path {path}");
    hits[0]["record_id"]
        .as_str()
        .expect("record_id is text")
        .to_owned()
}

#[test]
fn a_poison_row_is_rejected_and_the_rows_around_it_land() {
    let pg = PgCluster::start();
    let url = pg.create_db("poison");
    let (code, out) = meshaudit(&["migrate", "--database-url", &url]);
    assert_eq!(code, 0, "{out}");
    // Postgres refuses two entries for a data reason (check_violation, SQLSTATE 23514).
    pg.psql(
        "poison",
        "ALTER TABLE audit_records ADD CONSTRAINT no_poison \
         CHECK (path IS DISTINCT FROM '/orders/13' AND path IS DISTINCT FROM '/orders/77')",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = tempfile::tempdir().expect("tempdir");
    let c = Collector::start(
        dir.path(),
        &["--database-url", &url, "--parquet-max-file-age-secs", "1"],
    );
    // 100 entries, two of them poison, in 4 messages of one stream.
    send(&c, vec![http_stream(0, 4, 25)]);
    wait_for("98 rows and 2 rejects", Duration::from_secs(30), || {
        pg.count("poison", COUNT) == 98 && pg.count("poison", REJECTS) == 2
    });
    // Nothing is held back: later records land too.
    send(&c, vec![http_stream(1000, 2, 25)]);
    wait_for("148 rows", Duration::from_secs(30), || {
        pg.count("poison", COUNT) == 148
    });
    assert_eq!(c.metric("meshaudit_postgres_rows_rejected_total"), 2);
    wait_for("postgres lag back to 0", Duration::from_secs(10), || {
        c.metric("meshaudit_sink_lag_bytes{sink=\"postgres\"}") == 0
    });
    wait_for("parquet has all 150", Duration::from_secs(30), || {
        read_rows(dir.path()).len() >= 150
    });

    // Each reject names its record, the database's error, and keeps the record whole.
    for path in ["/orders/13", "/orders/77"] {
        let id = parquet_id_of(dir.path(), path);
        let row = pg.psql(
            "poison",
            &format!(
                "SELECT sqlstate || '|' || message || '|' || \
                 (position(convert_to('{path}', 'UTF8') IN record) > 0)::text || '|' || \
                 (start_time_us IS NOT NULL)::text \
                 FROM audit_rejects WHERE record_id = '{id}'"
            ),
        );
        let fields: Vec<&str> = row.split('|').collect();
        assert_eq!(fields.len(), 4, "reject of {path} ({id}): `{row}`");
        assert_eq!(fields[0], "23514", "{row}");
        assert!(fields[1].contains("no_poison"), "{row}");
        assert_eq!(
            fields[2], "true",
            "the record's protobuf holds its path: {row}"
        );
        assert_eq!(fields[3], "true", "{row}");
        assert_eq!(
            pg.count(
                "poison",
                &format!("SELECT count(*) FROM audit_records WHERE record_id = '{id}'")
            ),
            0
        );
    }
    // The neighbours of each poison entry are in.
    for path in ["/orders/12", "/orders/14", "/orders/76", "/orders/78"] {
        assert_eq!(
            pg.count(
                "poison",
                &format!("SELECT count(*) FROM audit_records WHERE path = '{path}'")
            ),
            1,
            "{path}"
        );
    }

    let (status, out) = c.stop();
    assert!(status.success(), "exit {status}:\n{out}");
    // Logged once per kind (one SQLSTATE here), with the record id and SQLSTATE.
    let logged: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("postgres refused a record for a data reason"))
        .collect();
    assert_eq!(logged.len(), 1, "{out}");
    assert!(logged[0].contains("23514"), "{}", logged[0]);
    assert!(
        !out.contains("postgres sink cannot write"),
        "a data error is not an outage:\n{out}"
    );
    // Only ids, SQLSTATE and the message reach the log: no record values, not the DETAIL
    // (Postgres' "Failing row contains (...)" lists every value of the row).
    assert!(
        !out.contains("/orders/13") && !out.contains("/orders/77"),
        "{out}"
    );
    assert!(!out.contains("Failing row"), "{out}");
    assert_eq!(
        pg.count(
            "poison",
            "SELECT count(*) FROM audit_rejects WHERE message LIKE '%Failing row%'"
        ),
        0
    );

    // verify: clean, with the rejects shown as rejected (not missing).
    let key = public_key(dir.path(), keys.path());
    let key = key.to_str().expect("utf8");
    let (code, text) = meshaudit(&["verify", "--database-url", &url, "--public-key", key]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("2 records rejected by the database (kept in audit_rejects, not missing)"),
        "{text}"
    );
    let (code, json) = meshaudit(&[
        "verify",
        "--database-url",
        &url,
        "--public-key",
        key,
        "--json",
    ]);
    assert_eq!(code, 0, "{json}");
    let v: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(v["postgres"]["rejected_records"], 2, "{v}");
    assert_eq!(v["postgres"]["records"], 148, "{v}");

    // A restart replays nothing twice: no second reject, no duplicate count.
    let c = Collector::start(dir.path(), &["--database-url", &url]);
    let (status, out) = c.stop();
    assert!(status.success(), "exit {status}:\n{out}");
    assert_eq!(pg.count("poison", REJECTS), 2);
    assert_eq!(pg.count("poison", COUNT), 148);
}
