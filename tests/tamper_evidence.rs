//! Tamper evidence end to end (docs/tamper-evidence.md): the real collector writes Parquet and a
//! real PostgreSQL (common/pg.rs), then `meshaudit verify` must pass on untouched data and name
//! every kind of tampering: values edited, rows deleted or inserted, files deleted, re-encoded or
//! reordered, digests deleted or altered, and the wrong public key.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use arrow_array::{Array, ArrayRef, RecordBatch, StringArray};
use common::pg::PgCluster;
use common::*;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use serde_json::Value;

fn meshaudit(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_meshaudit"))
        .args(args)
        .env_remove("DATABASE_URL")
        .stdin(Stdio::null())
        .output()
        .expect("run meshaudit");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Writes the collector's public key (from its data dir) to a file outside the data dir.
fn public_key(data_dir: &Path, out_dir: &Path) -> PathBuf {
    let out = out_dir.join("collector.pub");
    let (code, _, err) = meshaudit(&[
        "public-key",
        "--data-dir",
        data_dir.to_str().expect("utf8"),
        "--out",
        out.to_str().expect("utf8"),
    ]);
    assert_eq!(code, 0, "{err}");
    out
}

/// A public key that is not the collector's.
fn other_key(dir: &Path) -> PathBuf {
    let key = dir.join("other.pem");
    let out = dir.join("other.pub");
    let (code, _, err) = meshaudit(&[
        "public-key",
        "--signing-key",
        key.to_str().expect("utf8"),
        "--generate",
        "--out",
        out.to_str().expect("utf8"),
    ]);
    assert_eq!(code, 0, "{err}");
    out
}

struct Verified {
    code: i32,
    json: Value,
    text: String,
}

impl Verified {
    fn findings(&self) -> &[Value] {
        self.json["findings"].as_array().map_or(&[], Vec::as_slice)
    }

    /// The findings of `kind`.
    fn of(&self, kind: &str) -> Vec<&Value> {
        self.findings()
            .iter()
            .filter(|f| f["kind"] == kind)
            .collect()
    }

    fn kinds(&self) -> Vec<String> {
        let mut k: Vec<String> = self
            .findings()
            .iter()
            .map(|f| f["kind"].as_str().unwrap_or("?").to_owned())
            .collect();
        k.sort();
        k.dedup();
        k
    }
}

impl std::fmt::Debug for Verified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}\n{}", self.code, self.text)
    }
}

/// Runs `meshaudit verify` twice, as text and as JSON; both must exit alike, with 0 or 1.
fn verify(storage: &[&str], key: &Path) -> Verified {
    let v = run_verify(storage, key);
    assert!(
        v.code == 0 || v.code == 1,
        "verify could not run (exit {}):\n{}",
        v.code,
        v.text
    );
    v
}

/// [`verify`], whatever the exit status.
fn run_verify(storage: &[&str], key: &Path) -> Verified {
    let mut args = vec!["verify"];
    args.extend_from_slice(storage);
    args.extend_from_slice(&["--public-key", key.to_str().expect("utf8")]);
    let (code, text, err) = meshaudit(&args);
    args.push("--json");
    let (jcode, json, jerr) = meshaudit(&args);
    assert_eq!(
        code, jcode,
        "text and JSON runs disagree:\n{text}{err}\n{json}{jerr}"
    );
    let json: Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("not JSON ({e}):\n{json}{jerr}"));
    assert_eq!(json["ok"] == true, code == 0, "{json}");
    Verified {
        code,
        json,
        text: format!("{text}{err}"),
    }
}

fn assert_ok(v: &Verified) {
    assert_eq!(v.code, 0, "expected a clean verify: {v:?}");
    assert!(v.findings().is_empty(), "{v:?}");
    assert!(v.text.contains("meshaudit verify: OK"), "{v:?}");
}

/// Verify failed and has a finding of `kind` for which `pred` holds; the text names it too.
fn assert_found(v: &Verified, kind: &str, names: &str, pred: impl Fn(&Value) -> bool) {
    assert_eq!(v.code, 1, "expected findings: {v:?}");
    assert!(
        v.of(kind).iter().any(|f| pred(f)),
        "no {kind} finding as expected among {:?}: {v:?}",
        v.kinds()
    );
    assert!(
        v.text.contains(kind) && v.text.contains(names),
        "the text report does not name {kind} {names}: {v:?}"
    );
    assert!(v.text.contains("meshaudit verify: FAILED"), "{v:?}");
}

// ---------------------------------------------------------------------------------------------

#[test]
fn untouched_data_verifies_in_both_sinks_through_a_crash_a_restart_and_resent_entries() {
    let pg = PgCluster::start();
    let url = pg.create_db("clean");
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = tempfile::tempdir().expect("tempdir");
    let args = [
        "--database-url",
        url.as_str(),
        "--migrate-on-start",
        "--postgres-batch-rows",
        "15",
    ];

    // Run 1: the same messages twice (Parquet keeps both copies, Postgres one), then a crash.
    let c = Collector::start(dir.path(), &args);
    let msgs = http_stream(0, 3, 20);
    send(&c, vec![msgs.clone(), msgs, tcp_stream(100, 10)]);
    wait_for("70 rows in postgres", Duration::from_secs(30), || {
        pg.count("clean", "SELECT count(*) FROM audit_records") == 70
    });
    c.kill9();

    // Run 2: the spool replays what the sinks had not acknowledged; new entries on top.
    let c = Collector::start(dir.path(), &args);
    send(&c, vec![http_stream(1000, 2, 10)]);
    wait_for("90 rows in postgres", Duration::from_secs(30), || {
        pg.count("clean", "SELECT count(*) FROM audit_records") == 90
    });
    let (status, out) = c.stop();
    assert!(status.success(), "exit {status}:\n{out}");
    assert!(out.contains("digest signing key ready"), "{out}");

    // Every row is covered by exactly one Postgres digest.
    assert_eq!(
        pg.count(
            "clean",
            "SELECT sum(record_count) FROM audit_digests WHERE kind = 'batch'"
        ),
        90
    );
    assert_eq!(
        pg.count(
            "clean",
            "SELECT count(DISTINCT u) FROM audit_digests, unnest(record_ids) u"
        ),
        90
    );
    assert!(pg.count("clean", "SELECT count(*) FROM audit_digests") >= 2);

    let key = public_key(dir.path(), keys.path());
    let data = dir.path().to_str().expect("utf8");
    let v = verify(&["--data-dir", data, "--database-url", &url], &key);
    assert_ok(&v);
    let parquet_rows = read_rows(dir.path()).len() as u64;
    assert!(parquet_rows >= 150, "both copies of each re-sent entry");
    assert_eq!(v.json["parquet"]["records"], parquet_rows);
    assert_eq!(
        v.json["parquet"]["files"],
        parquet_files(dir.path()).len() as u64
    );
    assert_eq!(v.json["postgres"]["records"], 90);
    // One chain per sink: the instance id survived the crash and the restart.
    let chains = v.json["chains"].as_array().expect("chains");
    assert_eq!(chains.len(), 2, "{v:?}");
    for c in chains {
        assert_eq!(c["first_seq"], 1, "{v:?}");
        assert_eq!(c["digests"], c["last_seq"], "{v:?}");
    }
    // The sinks verify one at a time too.
    assert_ok(&verify(&["--data-dir", data], &key));
    assert_ok(&verify(&["--database-url", &url], &key));
}

#[test]
fn verify_names_each_kind_of_tampering_in_postgres() {
    let pg = PgCluster::start();
    let url = pg.create_db("pgtamper");
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = tempfile::tempdir().expect("tempdir");
    let c = Collector::start(
        dir.path(),
        &[
            "--database-url",
            &url,
            "--migrate-on-start",
            "--postgres-batch-rows",
            "10",
        ],
    );
    send(&c, vec![http_stream(0, 3, 10)]);
    wait_for("30 rows", Duration::from_secs(30), || {
        pg.count("pgtamper", "SELECT count(*) FROM audit_records") == 30
    });
    let (status, out) = c.stop();
    assert!(status.success(), "exit {status}:\n{out}");
    let key = public_key(dir.path(), keys.path());
    let db = ["--database-url", url.as_str()];
    assert_ok(&verify(&db, &key));
    assert!(pg.count("pgtamper", "SELECT count(*) FROM audit_digests") >= 2);

    let sql = |q: &str| pg.psql("pgtamper", q);
    let victim = sql("SELECT record_id FROM audit_records ORDER BY record_id LIMIT 1");
    let instance = sql("SELECT instance_id FROM audit_digests LIMIT 1");
    let covering = sql(&format!(
        "SELECT seq FROM audit_digests WHERE '{victim}' = ANY(record_ids)"
    ));
    let digest = format!("{instance}/{covering}");
    let is = |id: &str| {
        let id = id.to_owned();
        move |f: &Value| f["record_id"] == id.as_str()
    };

    // One value of one row.
    sql(&format!(
        "UPDATE audit_records SET status_code = 200 WHERE record_id = '{victim}'"
    ));
    let v = verify(&db, &key);
    assert_found(&v, "record_modified", &victim, is(&victim));
    assert_eq!(v.of("record_modified")[0]["digest"], digest.as_str());
    assert_eq!(v.findings().len(), 1, "{v:?}");
    sql(&format!(
        "UPDATE audit_records SET status_code = 201 WHERE record_id = '{victim}'"
    ));
    assert_ok(&verify(&db, &key));

    // One value of an array column: NULL and the empty list are different records.
    sql(&format!(
        "UPDATE audit_records SET groups = '{{}}' WHERE record_id = '{victim}'"
    ));
    assert_found(&verify(&db, &key), "record_modified", &victim, is(&victim));
    sql(&format!(
        "UPDATE audit_records SET groups = NULL WHERE record_id = '{victim}'"
    ));
    assert_ok(&verify(&db, &key));

    // One row deleted.
    sql(&format!(
        "CREATE TABLE saved AS SELECT * FROM audit_records WHERE record_id = '{victim}'; \
         DELETE FROM audit_records WHERE record_id = '{victim}'"
    ));
    let v = verify(&db, &key);
    assert_found(&v, "record_deleted", &victim, is(&victim));
    assert_eq!(v.findings().len(), 1, "{v:?}");
    sql("INSERT INTO audit_records SELECT * FROM saved; DROP TABLE saved");
    assert_ok(&verify(&db, &key));

    // One row inserted (a copy of a real one under another id).
    sql(&format!(
        "INSERT INTO audit_records SELECT (json_populate_record(NULL::audit_records, \
         jsonb_set(to_jsonb(r), '{{record_id}}', '\"forged0000000000000000000000000\"')::json)).* \
         FROM audit_records r WHERE record_id = '{victim}'"
    ));
    let forged = "forged0000000000000000000000000";
    let v = verify(&db, &key);
    assert_found(&v, "record_inserted", forged, is(forged));
    assert_eq!(v.findings().len(), 1, "{v:?}");
    sql(&format!(
        "DELETE FROM audit_records WHERE record_id = '{forged}'"
    ));
    assert_ok(&verify(&db, &key));

    // A digest's signature altered.
    let flip = format!(
        "UPDATE audit_digests SET signature = set_byte(signature, 5, get_byte(signature, 5) # 1) \
         WHERE seq = {covering}"
    );
    sql(&flip);
    let v = verify(&db, &key);
    assert_found(&v, "signature_invalid", &digest, |f| {
        f["digest"] == digest.as_str()
    });
    sql(&flip);
    assert_ok(&verify(&db, &key));

    // A digest's content altered by someone who recomputes every hash the database holds: the
    // signed hash of the victim's record replaced, records_sha256 recomputed to match.
    let saved = "CREATE TABLE saved_d AS SELECT * FROM audit_digests";
    let restore = "DELETE FROM audit_digests; INSERT INTO audit_digests SELECT * FROM saved_d";
    sql(saved);
    sql(&format!(
        "UPDATE audit_digests SET record_hashes = overlay(record_hashes PLACING \
         sha256('forged'::bytea) FROM 32 * (array_position(record_ids, '{victim}') - 1) + 1 FOR 32) \
         WHERE seq = {covering}; \
         UPDATE audit_digests SET records_sha256 = sha256(convert_to('meshaudit.records.v1', 'UTF8') \
         || '\\x00'::bytea || record_hashes || int8send(record_count)) WHERE seq = {covering}"
    ));
    let v = verify(&db, &key);
    assert_found(&v, "signature_invalid", &digest, |f| {
        f["digest"] == digest.as_str()
    });
    assert_eq!(
        v.of("digest_unreadable").len(),
        0,
        "the forgery is consistent: {v:?}"
    );
    assert_found(&v, "record_modified", &victim, is(&victim));
    sql(restore);
    assert_ok(&verify(&db, &key));

    // A digest deleted: its rows are uncovered, and the chain has a gap unless it was the last.
    sql(&format!("DELETE FROM audit_digests WHERE seq = {covering}"));
    let v = verify(&db, &key);
    assert_found(&v, "record_inserted", &victim, is(&victim));
    let last: u64 = sql("SELECT max(seq) FROM audit_digests")
        .parse()
        .expect("seq");
    if covering.parse::<u64>().expect("seq") < last {
        assert_found(&v, "chain_gap", &instance, |f| {
            f["digest"]
                .as_str()
                .is_some_and(|d| d.starts_with(&instance))
        });
    }
    sql(restore);
    assert_ok(&verify(&db, &key));

    // The wrong public key: every digest is reported, and nothing verifies.
    let wrong = other_key(keys.path());
    let v = verify(&db, &wrong);
    assert_found(&v, "unknown_key", &instance, |_| true);

    // An unreadable public key file is an error (exit 2), not a verdict.
    fs::write(keys.path().join("bad.pub"), "nonsense").expect("write");
    let (code, _, err) = meshaudit(&[
        "verify",
        "--database-url",
        &url,
        "--public-key",
        keys.path().join("bad.pub").to_str().expect("utf8"),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("Fix:"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Parquet helpers: read a file whole, write it back with the parquet crate.

fn read_file(path: &Path) -> Vec<RecordBatch> {
    let f = fs::File::open(path).expect("open parquet");
    ParquetRecordBatchReaderBuilder::try_new(f)
        .expect("footer")
        .build()
        .expect("reader")
        .map(|b| b.expect("batch"))
        .collect()
}

fn write_file(path: &Path, batches: &[RecordBatch]) {
    let schema = batches[0].schema();
    let f = fs::File::create(path).expect("create");
    let mut w = ArrowWriter::try_new(f, schema, None).expect("writer");
    for b in batches {
        w.write(b).expect("write");
    }
    w.close().expect("close");
}

/// One batch of a whole (small) file.
fn only_batch(path: &Path) -> RecordBatch {
    let batches = read_file(path);
    assert_eq!(batches.len(), 1, "test files are small");
    batches.into_iter().next().expect("one batch")
}

fn string_at(batch: &RecordBatch, col: &str, row: usize) -> String {
    let a = batch.column_by_name(col).expect("column");
    let s = a.as_any().downcast_ref::<StringArray>().expect("utf8");
    s.value(row).to_owned()
}

/// The batch with one text value replaced.
fn with_value(batch: &RecordBatch, col: &str, row: usize, value: &str) -> RecordBatch {
    let idx = batch.schema().index_of(col).expect("column");
    let cols: Vec<ArrayRef> = batch
        .columns()
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if i != idx {
                return Arc::clone(c);
            }
            let s = c.as_any().downcast_ref::<StringArray>().expect("utf8");
            let v: StringArray = (0..s.len())
                .map(|j| {
                    if j == row {
                        Some(value.to_owned())
                    } else {
                        (!s.is_null(j)).then(|| s.value(j).to_owned())
                    }
                })
                .collect();
            Arc::new(v) as ArrayRef
        })
        .collect();
    RecordBatch::try_new(batch.schema(), cols).expect("batch")
}

fn rel(root: &Path, p: &Path) -> String {
    p.strip_prefix(root)
        .expect("under root")
        .to_str()
        .expect("utf8")
        .to_owned()
}

#[test]
fn verify_names_each_kind_of_tampering_in_parquet() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = tempfile::tempdir().expect("tempdir");
    // Two runs: two files, two links of one chain.
    for base in [0, 100] {
        let c = Collector::start(dir.path(), &[]);
        send(&c, vec![http_stream(base, 1, 10)]);
        let (status, out) = c.stop();
        assert!(status.success(), "exit {status}:\n{out}");
    }
    let files = parquet_files(dir.path());
    assert_eq!(files.len(), 2, "{files:?}");
    let key = public_key(dir.path(), keys.path());
    let data = ["--data-dir", dir.path().to_str().expect("utf8")];
    let v = verify(&data, &key);
    assert_ok(&v);
    let instance = v.json["chains"][0]["instance_id"]
        .as_str()
        .expect("instance")
        .to_owned();
    let digests_dir = dir.path().join("_digests").join(&instance);
    let digest1 = digests_dir.join(format!("{:020}.json", 1));
    let (file_a, file_b) = (&files[0], &files[1]);
    let a = rel(dir.path(), file_a);
    let original = fs::read(file_a).expect("read");
    let restore = || fs::write(file_a, &original).expect("restore");
    // Which digest covers file A (the chain's order is the order files closed).
    let digest_a = {
        let d: Value =
            serde_json::from_str(&fs::read_to_string(&digest1).expect("digest")).expect("json");
        if d["object"] == a.as_str() {
            format!("{instance}/1")
        } else {
            format!("{instance}/2")
        }
    };
    let in_a = |f: &Value| f["file"] == a.as_str() && f["digest"] == digest_a.as_str();

    // A file deleted.
    let moved = dir.path().join("moved-away.bin");
    fs::rename(file_a, &moved).expect("move");
    let v = verify(&data, &key);
    assert_found(&v, "file_missing", &a, in_a);
    assert_eq!(v.findings().len(), 1, "{v:?}");
    fs::rename(&moved, file_a).expect("move back");
    assert_ok(&verify(&data, &key));

    // A file replaced by a re-encoded copy with one value changed.
    let batch = only_batch(file_a);
    let victim = string_at(&batch, "record_id", 3);
    write_file(file_a, &[with_value(&batch, "path", 3, "/orders/forged")]);
    let v = verify(&data, &key);
    assert_found(&v, "file_modified", &a, in_a);
    assert_found(&v, "record_modified", &victim, |f| {
        in_a(f) && f["row"] == 3 && f["record_id"] == victim.as_str()
    });
    assert_eq!(v.of("record_modified").len(), 1, "{v:?}");
    restore();
    assert_ok(&verify(&data, &key));

    // Re-encoded with no value changed: the records are intact, the file is not the signed one.
    write_file(file_a, std::slice::from_ref(&batch));
    let v = verify(&data, &key);
    assert_found(&v, "file_rewritten", &a, in_a);
    assert_eq!(v.kinds(), ["file_rewritten"], "{v:?}");
    restore();

    // A row deleted, a row inserted, two rows swapped.
    let n = batch.num_rows();
    write_file(file_a, &[batch.slice(0, 5), batch.slice(6, n - 6)]);
    let v = verify(&data, &key);
    assert_found(&v, "record_deleted", "row=5", |f| in_a(f) && f["row"] == 5);
    assert_eq!(v.of("record_deleted").len(), 1, "{v:?}");
    assert!(v.of("records_reordered").is_empty(), "{v:?}");
    let extra = with_value(&batch.slice(2, 1), "record_id", 0, "inserted-row");
    write_file(file_a, &[batch.slice(0, 7), extra, batch.slice(7, n - 7)]);
    let v = verify(&data, &key);
    assert_found(&v, "record_inserted", "inserted-row", |f| {
        in_a(f) && f["row"] == 7 && f["record_id"] == "inserted-row"
    });
    assert_eq!(v.of("record_inserted").len(), 1, "{v:?}");
    write_file(
        file_a,
        &[batch.slice(1, 1), batch.slice(0, 1), batch.slice(2, n - 2)],
    );
    let v = verify(&data, &key);
    assert_found(&v, "records_reordered", &a, in_a);
    assert_eq!(v.kinds(), ["file_modified", "records_reordered"], "{v:?}");
    restore();
    assert_ok(&verify(&data, &key));

    // A file no digest covers.
    let forged = file_b.with_file_name("part-forged.parquet");
    fs::copy(file_b, &forged).expect("copy");
    let v = verify(&data, &key);
    assert_found(&v, "file_unsigned", "part-forged.parquet", |f| {
        f["file"] == rel(dir.path(), &forged).as_str()
    });
    fs::remove_file(&forged).expect("remove");

    // A digest file deleted: the chain has a gap (it was the first) and its file is unsigned.
    let saved = fs::read(&digest1).expect("digest");
    fs::remove_file(&digest1).expect("remove");
    let v = verify(&data, &key);
    assert_found(&v, "chain_gap", &instance, |f| {
        f["digest"] == format!("{instance}/2").as_str()
    });
    assert_eq!(v.of("file_unsigned").len(), 1, "{v:?}");
    fs::write(&digest1, &saved).expect("restore");
    assert_ok(&verify(&data, &key));

    // A digest's signature altered, then its records hash (signature kept).
    let text = String::from_utf8(saved.clone()).expect("utf8");
    let doc: Value = serde_json::from_str(&text).expect("json");
    let sig = doc["signature"].as_str().expect("signature");
    let flipped = if sig.starts_with('A') { "B" } else { "A" };
    fs::write(
        &digest1,
        text.replacen(sig, &format!("{flipped}{}", &sig[1..]), 1),
    )
    .expect("write");
    let v = verify(&data, &key);
    assert_found(&v, "signature_invalid", &format!("{instance}/1"), |f| {
        f["digest"] == format!("{instance}/1").as_str()
    });
    let records = doc["records_sha256"].as_str().expect("hash");
    let other = format!(
        "{}{}",
        if records.starts_with('0') { "1" } else { "0" },
        &records[1..]
    );
    fs::write(&digest1, text.replacen(records, &other, 1)).expect("write");
    let v = verify(&data, &key);
    assert_found(&v, "signature_invalid", &format!("{instance}/1"), |f| {
        f["digest"] == format!("{instance}/1").as_str()
    });
    // The next digest's link still names the original: the chain shows it too.
    assert!(!v.of("chain_broken").is_empty(), "{v:?}");
    fs::write(&digest1, &saved).expect("restore");
    assert_ok(&verify(&data, &key));

    // The wrong public key.
    let wrong = other_key(keys.path());
    let v = verify(&data, &wrong);
    assert_found(&v, "unknown_key", &instance, |_| true);
    assert_eq!(v.of("unknown_key").len(), 2, "{v:?}");
}

#[test]
fn rows_dropped_by_retention_are_expected_and_rows_dropped_by_hand_are_not() {
    let pg = PgCluster::start();
    let url = pg.create_db("retain");
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = tempfile::tempdir().expect("tempdir");
    let c = Collector::start(dir.path(), &["--database-url", &url, "--migrate-on-start"]);
    // Entries start on 2026-03-02 (common::START_SECS), long before today.
    send(&c, vec![http_stream(0, 2, 10)]);
    wait_for("20 rows", Duration::from_secs(30), || {
        pg.count("retain", "SELECT count(*) FROM audit_records") == 20
    });
    let (status, out) = c.stop();
    assert!(status.success(), "exit {status}:\n{out}");
    let key = public_key(dir.path(), keys.path());
    let db = ["--database-url", url.as_str()];
    assert_ok(&verify(&db, &key));

    // The collector applies retention: partitions older than a day go, and a signed retention
    // digest says so in the same transaction.
    let c = Collector::start(
        dir.path(),
        &["--database-url", &url, "--retention-days", "1"],
    );
    let (status, out) = c.stop();
    assert!(status.success(), "exit {status}:\n{out}");
    assert_eq!(pg.count("retain", "SELECT count(*) FROM audit_records"), 0);
    assert_eq!(
        pg.count(
            "retain",
            "SELECT count(*) FROM audit_digests WHERE kind = 'retention'"
        ),
        1
    );
    let v = verify(&db, &key);
    assert_ok(&v);
    assert_eq!(v.json["postgres"]["expired_records"], 20, "{v:?}");

    // Without that digest, the same missing rows are deletions.
    pg.psql(
        "retain",
        "DELETE FROM audit_digests WHERE kind = 'retention'",
    );
    let v = verify(&db, &key);
    assert_eq!(v.code, 1, "{v:?}");
    assert_eq!(v.of("record_deleted").len(), 20, "{v:?}");
}

#[test]
fn a_bad_signing_key_stops_the_collector_at_start_up_with_a_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("key.pem");
    fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .expect("write");
    let als = free_addr().to_string();
    let admin = free_addr().to_string();
    let (code, out, err) = meshaudit(&[
        "serve",
        "--als-addr",
        &als,
        "--admin-addr",
        &admin,
        "--data-dir",
        dir.path().join("data").to_str().expect("utf8"),
        "--signing-key",
        key.to_str().expect("utf8"),
    ]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        err.contains("key.pem") && err.contains("Fix:") && err.contains("openssl genpkey"),
        "{err}"
    );
}

#[test]
fn replicas_sharing_a_database_and_a_data_dir_keep_one_chain_each() {
    let pg = PgCluster::start();
    let url = pg.create_db("replicas");
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = tempfile::tempdir().expect("tempdir");
    let spool_b = dir.path().join("_spool_b");
    let a = Collector::start(dir.path(), &["--database-url", &url, "--migrate-on-start"]);
    let b = Collector::start(
        dir.path(),
        &[
            "--database-url",
            &url,
            "--spool-dir",
            spool_b.to_str().expect("utf8"),
        ],
    );
    // The same entries reach both replicas (a proxy reconnecting to the other one re-sends),
    // and each gets entries of its own; both at once.
    let shared = http_stream(0, 2, 10);
    let (ua, ub) = (a.als_url(), b.als_url());
    rt().block_on(async {
        let ma = [shared.clone(), http_stream(100, 1, 10)].concat();
        let mb = [shared, http_stream(200, 1, 10)].concat();
        let sa = tokio::spawn(async move { stream(&ua, ma).await });
        let sb = tokio::spawn(async move { stream(&ub, mb).await });
        sa.await.expect("task").expect("stream a");
        sb.await.expect("task").expect("stream b");
    });
    wait_for("40 distinct rows", Duration::from_secs(30), || {
        pg.count("replicas", "SELECT count(*) FROM audit_records") == 40
    });
    for c in [a, b] {
        let (status, out) = c.stop();
        assert!(status.success(), "exit {status}:\n{out}");
    }
    let key = public_key(dir.path(), keys.path());
    let v = verify(
        &[
            "--data-dir",
            dir.path().to_str().expect("utf8"),
            "--database-url",
            &url,
        ],
        &key,
    );
    assert_ok(&v);
    let chains = v.json["chains"].as_array().expect("chains");
    let of = |sink: &str| chains.iter().filter(|c| c["sink"] == sink).count();
    assert_eq!(of("parquet"), 2, "{v:?}");
    assert_eq!(of("postgres"), 2, "{v:?}");
    assert_eq!(
        v.json["parquet"]["records"], 60,
        "both replicas keep the shared entries"
    );
    assert_eq!(
        v.json["postgres"]["records"], 40,
        "each shared entry is stored once"
    );
}

// ---------------------------------------------------------------------------------------------
// Reports and verify read the same files (issue 15): links, devices and files outside the
// layout are findings, and never counted by a report.

/// `meshaudit report` over the Parquet files of 2026-03-02: (records in access_review, the
/// report's warnings, report.json's `source.skipped`).
fn report_counts(data_dir: &Path, out: &Path) -> (u64, Vec<String>, Vec<String>) {
    let (code, stdout, err) = meshaudit(&[
        "report",
        "--from",
        "2026-03-02",
        "--to",
        "2026-03-04",
        "--data-dir",
        data_dir.to_str().expect("utf8"),
        "--out",
        out.to_str().expect("utf8"),
        "--format",
        "json",
    ]);
    assert_eq!(code, 0, "{stdout}{err}");
    let summary: Value = serde_json::from_str(&stdout).expect("summary JSON");
    let records = summary["sections"]
        .as_array()
        .expect("sections")
        .iter()
        .find(|s| s["id"] == "access_review")
        .and_then(|s| s["records"].as_u64())
        .expect("access_review records");
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let doc: Value =
        serde_json::from_str(&fs::read_to_string(out.join("report.json")).expect("report.json"))
            .expect("report JSON");
    (
        records,
        strings(&summary["warnings"]),
        strings(&doc["source"]["skipped"]),
    )
}

/// The signed file's rows with new record ids and decision `allow`, written to `out`.
fn forge(signed: &Path, out: &Path) {
    let batch = only_batch(signed);
    let mut forged = batch.clone();
    for row in 0..batch.num_rows() {
        forged = with_value(&forged, "record_id", row, &format!("{:032x}", 0xF0F0 + row));
        forged = with_value(&forged, "decision", row, "allow");
    }
    write_file(out, &[forged]);
}

/// Makes one entry of a test case at the given path.
type Make<'a> = dyn Fn(&Path) + 'a;

#[test]
fn links_devices_and_files_outside_the_layout_fail_verify_and_are_never_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = tempfile::tempdir().expect("tempdir");
    let outside = tempfile::tempdir().expect("tempdir");
    let c = Collector::start(dir.path(), &[]);
    send(&c, vec![http_stream(0, 1, 50)]);
    let (status, out) = c.stop();
    assert!(status.success(), "exit {status}:\n{out}");
    let files = parquet_files(dir.path());
    assert_eq!(files.len(), 1, "{files:?}");
    let signed = &files[0];
    assert!(rel(dir.path(), signed).starts_with("dt=2026-03-02/hour=10/"));
    let key = public_key(dir.path(), keys.path());
    let data = ["--data-dir", dir.path().to_str().expect("utf8")];
    let v = verify(&data, &key);
    assert_ok(&v);
    let reports = tempfile::tempdir().expect("tempdir");
    let (n, warnings, skipped) = report_counts(dir.path(), &reports.path().join("clean"));
    assert_eq!((n, warnings.len(), skipped.len()), (50, 0, 0));

    // 50 forged rows outside the data dir, and a day dir of them.
    let forged = outside.path().join("part-forged.parquet");
    forge(signed, &forged);
    let day = outside.path().join("day");
    fs::create_dir_all(day.join("hour=10")).expect("mkdir");
    fs::copy(&forged, day.join("hour=10/part-forged.parquet")).expect("copy");

    let day_dir = dir.path().join("dt=2026-03-02");
    let cases: Vec<(&str, PathBuf, Box<Make<'_>>)> = vec![
        (
            "a symbolic link to the forged dir as an hour dir",
            day_dir.join("hour=11"),
            Box::new(|p: &Path| std::os::unix::fs::symlink(outside.path(), p).expect("link")),
        ),
        (
            "a symbolic link to a forged day dir",
            dir.path().join("dt=2026-03-03"),
            Box::new(|p: &Path| std::os::unix::fs::symlink(&day, p).expect("link")),
        ),
        (
            "a linked file in a real hour dir",
            day_dir.join("hour=10/part-linked.parquet"),
            Box::new(|p: &Path| std::os::unix::fs::symlink(&forged, p).expect("link")),
        ),
        (
            "a .parquet file in a day dir, outside any hour dir",
            day_dir.join("part-loose.parquet"),
            Box::new(|p: &Path| {
                fs::copy(&forged, p).expect("copy");
            }),
        ),
        (
            "a .parquet file at the top of the data dir",
            dir.path().join("part-top.parquet"),
            Box::new(|p: &Path| {
                fs::copy(&forged, p).expect("copy");
            }),
        ),
        (
            "a FIFO named like a data file",
            day_dir.join("hour=10/part-fifo.parquet"),
            Box::new(|p: &Path| {
                let ok = Command::new("mkfifo").arg(p).status().expect("mkfifo");
                assert!(ok.success());
            }),
        ),
    ];
    for (i, (what, path, make)) in cases.iter().enumerate() {
        make(path);
        let name = rel(dir.path(), path);
        let v = verify(&data, &key);
        assert_found(&v, "not_in_store", &name, |f| f["file"] == name.as_str());
        assert_eq!(v.kinds(), ["not_in_store"], "{what}: {v:?}");
        assert_eq!(v.json["parquet"]["records"], 50, "{what}: {v:?}");
        let (n, warnings, skipped) = report_counts(dir.path(), &reports.path().join(i.to_string()));
        assert_eq!(n, 50, "{what}: the report counted forged rows");
        assert_eq!(warnings.len(), 1, "{what}: {warnings:?}");
        assert!(warnings[0].contains(&name), "{what}: {warnings:?}");
        assert_eq!(skipped.len(), 1, "{what}: {skipped:?}");
        assert!(
            skipped[0].starts_with(&format!("{name}: ")),
            "{what}: {skipped:?}"
        );
        fs::remove_file(path).expect("remove");
        assert_ok(&verify(&data, &key));
    }
}

// ---------------------------------------------------------------------------------------------
// Nothing to verify (issue 15): records without a single digest exit 2; an empty store is a
// clean exit 0 that says it is empty; every chain's head is printed.

#[test]
fn an_empty_store_is_clean_and_records_without_digests_are_nothing_to_verify() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = tempfile::tempdir().expect("tempdir");
    let key = other_key(keys.path());
    let data = ["--data-dir", dir.path().to_str().expect("utf8")];

    let v = run_verify(&data, &key);
    assert_eq!(v.code, 0, "{v:?}");
    assert_eq!(v.json["verdict"], "empty", "{v:?}");
    assert!(
        v.text.contains("meshaudit verify: OK: the store is empty"),
        "{v:?}"
    );

    // Two runs: a chain of two digests; its head is printed in text and JSON.
    for base in [0, 100] {
        let c = Collector::start(dir.path(), &[]);
        send(&c, vec![http_stream(base, 1, 10)]);
        let (status, out) = c.stop();
        assert!(status.success(), "exit {status}:\n{out}");
    }
    let key = public_key(dir.path(), keys.path());
    let v = verify(&data, &key);
    assert_ok(&v);
    assert_eq!(v.json["verdict"], "ok");
    let chains = v.json["chains"].as_array().expect("chains");
    assert_eq!(chains.len(), 1, "{v:?}");
    let head = &chains[0]["head"];
    let instance = head["instance_id"].as_str().expect("instance");
    assert_eq!(head["seq"], 2, "{v:?}");
    let digest2: Value = serde_json::from_str(
        &fs::read_to_string(
            dir.path()
                .join("_digests")
                .join(instance)
                .join(format!("{:020}.json", 2)),
        )
        .expect("digest 2"),
    )
    .expect("json");
    assert_eq!(head["created_at"], digest2["created_at"], "{v:?}");
    let created = head["created_at"].as_str().expect("created_at");
    let sha = head["digest_sha256"].as_str().expect("sha");
    assert_eq!(sha.len(), 64);
    assert!(
        v.text.contains(&format!(
            "head: instance {instance} seq 2 at {created} sha256 {sha}"
        )),
        "{v:?}"
    );

    // Every digest gone: the records are there, nothing can be checked.
    fs::remove_dir_all(dir.path().join("_digests")).expect("remove digests");
    let v = run_verify(&data, &key);
    assert_eq!(v.code, 2, "{v:?}");
    assert_eq!(v.json["verdict"], "nothing_to_verify", "{v:?}");
    assert_eq!(v.json["ok"], false);
    assert!(
        v.text.contains("meshaudit verify: NOTHING TO VERIFY")
            && v.text.contains("2 Parquet files"),
        "{v:?}"
    );
    assert_eq!(v.of("file_unsigned").len(), 2, "{v:?}");
}

#[test]
fn rows_in_postgres_without_a_digest_are_nothing_to_verify() {
    let pg = PgCluster::start();
    let url = pg.create_db("nodigest");
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = tempfile::tempdir().expect("tempdir");
    let c = Collector::start(
        dir.path(),
        &["--database-url", url.as_str(), "--migrate-on-start"],
    );
    send(&c, vec![http_stream(0, 2, 5)]);
    wait_for("10 rows in postgres", Duration::from_secs(30), || {
        pg.count("nodigest", "SELECT count(*) FROM audit_records") == 10
    });
    let (status, out) = c.stop();
    assert!(status.success(), "exit {status}:\n{out}");
    let key = public_key(dir.path(), keys.path());
    let db = ["--database-url", url.as_str()];
    let v = verify(&db, &key);
    assert_ok(&v);
    let heads: Vec<&Value> = v.json["chains"]
        .as_array()
        .expect("chains")
        .iter()
        .map(|c| &c["head"])
        .collect();
    assert!(
        !heads.is_empty() && heads.iter().all(|h| h["seq"].as_u64() >= Some(1)),
        "{v:?}"
    );

    pg.psql("nodigest", "DELETE FROM audit_digests");
    let v = run_verify(&db, &key);
    assert_eq!(v.code, 2, "{v:?}");
    assert_eq!(v.json["verdict"], "nothing_to_verify", "{v:?}");
    assert!(
        v.text.contains("NOTHING TO VERIFY") && v.text.contains("audit_records has 10 rows"),
        "{v:?}"
    );
}
