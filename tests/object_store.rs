//! Parquet on object storage (issue 14, `--parquet-url`) against real emulators started here on
//! free ports: moto's S3 server (PyPI, pinned in tests/python/requirements.txt) and Azurite
//! (npm, installed by scripts/test into target/azurite). Records land as objects in the same
//! Hive layout with their digests, read back by pyarrow's own filesystems; the store down under
//! load, then back, loses nothing; a bad bucket or a wrong key is a start-up error naming the
//! setting.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::objstore::{Azurite, Moto, AZURITE_KEY};
use common::*;
use serde_json::Value;

fn env(m: &Moto) -> Vec<(&'static str, String)> {
    m.env("test")
}

/// Rows, distinct record_ids, data objects and digest objects under `bucket/audit`.
fn contents(m: &Moto, bucket: &str) -> Value {
    m.py(&format!(
        "keys = [o['Key'] for p in boto.get_paginator('list_objects_v2').paginate(Bucket='{bucket}', Prefix='audit/') for o in p.get('Contents', [])]\n\
         data = [k for k in keys if k.endswith('.parquet')]\n\
         ids = []\n\
         for k in data:\n    ids += pq.read_table('{bucket}/' + k, filesystem=s3).column('record_id').to_pylist()\n\
         print(json.dumps({{'rows': len(ids), 'ids': len(set(ids)), 'data': data, \
         'digests': len([k for k in keys if k.startswith('audit/_digests/')])}}))"
    ))
}

fn local_parquet_files(dir: &Path) -> usize {
    walk(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .count()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// `meshaudit serve` that must fail at start-up: returns its output.
fn serve_fails(data_dir: &Path, url: &str, env: &[(&str, &str)]) -> String {
    let [als, admin] = free_addrs::<2>().map(|a| a.to_string());
    let out = Command::new(env!("CARGO_BIN_EXE_meshaudit"))
        .args([
            "serve",
            "--als-addr",
            &als,
            "--admin-addr",
            &admin,
            "--data-dir",
        ])
        .arg(data_dir)
        .args(["--parquet-url", url])
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run meshaudit");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "serve should have failed:\n{text}");
    text
}

#[test]
fn records_land_in_s3_survive_an_outage_and_a_bad_bucket_fails_at_start_up() {
    let [addr] = free_addrs::<1>();
    let moto = Moto::start_on(addr.port());
    moto.create_bucket("lake");
    let dir = tempfile::tempdir().expect("tempdir");
    let env_owned = env(&moto);
    let env: Vec<(&str, &str)> = env_owned.iter().map(|(k, v)| (*k, v.as_str())).collect();

    // A bucket that does not exist: a start-up error naming the setting.
    let bad = serve_fails(dir.path(), "s3://no-such-bucket/audit", &env);
    assert!(
        bad.contains("cannot write to --parquet-url s3://no-such-bucket/audit")
            && bad.contains("Fix:")
            && !bad.contains("AWS_SECRET_ACCESS_KEY=test"),
        "{bad}"
    );

    let args = [
        "--parquet-url",
        "s3://lake/audit",
        "--parquet-max-file-age-secs",
        "1",
    ];
    let c = Collector::start_with_env(dir.path(), &args, &env);
    send(&c, vec![http_stream(0, 4, 25)]);
    wait_for("100 records in S3", Duration::from_secs(30), || {
        contents(&moto, "lake")["ids"] == 100
    });
    let got = contents(&moto, "lake");
    let data: Vec<&str> = got["data"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        data.iter()
            .all(|k| k.starts_with("audit/dt=") && k.contains("/hour=")),
        "same Hive layout: {data:?}"
    );
    assert!(got["digests"].as_u64().unwrap_or(0) >= 1, "{got}");
    wait_for("local copies gone", Duration::from_secs(10), || {
        local_parquet_files(dir.path()) == 0
    });

    // The store goes away under load: records stay in the spool, retried with back-off.
    drop(moto);
    send(&c, vec![http_stream(1000, 4, 25), http_stream(2000, 4, 25)]);
    wait_for("upload retries", Duration::from_secs(30), || {
        c.metric("meshaudit_sink_retries_total{sink=\"parquet\"}") >= 3
    });
    assert!(c.metric("meshaudit_sink_lag_bytes{sink=\"parquet\"}") > 0);
    assert!(
        c.output().contains("parquet upload failed"),
        "{}",
        c.output()
    );
    // Back (an empty moto: its state is in memory), with the bucket.
    let moto = Moto::start_on(addr.port());
    moto.create_bucket("lake");
    wait_for(
        "the 200 outage records in S3",
        Duration::from_secs(90),
        || contents(&moto, "lake")["ids"] == 200,
    );
    wait_for("parquet lag back to 0", Duration::from_secs(30), || {
        c.metric("meshaudit_sink_lag_bytes{sink=\"parquet\"}") == 0
    });
    let (status, out) = c.stop();
    assert!(status.success(), "exit {status}:\n{out}");
    assert!(out.contains("meshaudit stopped cleanly"), "{out}");
    assert_eq!(local_parquet_files(dir.path()), 0);
    assert!(!out.contains("AWS_SECRET_ACCESS_KEY=test"), "{out}");
}

#[test]
fn records_land_in_azure_blob_and_a_wrong_key_fails_at_start_up_without_showing_it() {
    let az = Azurite::start();
    az.py("az.create_dir('lake')\nprint('null')");
    let dir = tempfile::tempdir().expect("tempdir");

    // A wrong account key (well-formed, not the account's): refused at start-up, named, unshown.
    let wrong = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmcta2V5LXdyb25nLWtleQ==";
    let env_owned = az.env(wrong);
    let env: Vec<(&str, &str)> = env_owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let bad = serve_fails(dir.path(), "az://lake/audit", &env);
    assert!(
        bad.contains("cannot write to --parquet-url az://lake/audit")
            && bad.contains("AZURE_STORAGE_ACCOUNT_KEY")
            && !bad.contains(wrong),
        "{bad}"
    );

    let env_owned = az.env(AZURITE_KEY);
    let env: Vec<(&str, &str)> = env_owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let c = Collector::start_with_env(
        dir.path(),
        &[
            "--parquet-url",
            "az://lake/audit",
            "--parquet-max-file-age-secs",
            "1",
        ],
        &env,
    );
    send(&c, vec![http_stream(0, 4, 25)]);
    let count = "sel = pafs.FileSelector('lake/audit', recursive=True)\n\
                 files = [f.path for f in az.get_file_info(sel) if f.path.endswith('.parquet')]\n\
                 ids = []\n\
                 for f in files:\n    ids += pq.read_table(f, filesystem=az).column('record_id').to_pylist()\n\
                 print(json.dumps({'ids': len(set(ids)), 'files': files}))";
    wait_for("100 records in Azure Blob", Duration::from_secs(30), || {
        az.py(count)["ids"] == 100
    });
    let got = az.py(count);
    assert!(
        got["files"]
            .as_array()
            .expect("list")
            .iter()
            .filter_map(Value::as_str)
            .all(|f| f.starts_with("lake/audit/dt=") && f.contains("/hour=")),
        "{got}"
    );
    let (status, out) = c.stop();
    assert!(status.success(), "exit {status}:\n{out}");
    assert!(!out.contains(AZURITE_KEY), "{out}");
    assert_eq!(local_parquet_files(dir.path()), 0);
}

#[test]
fn kill_9_with_files_waiting_for_the_store_then_restart_uploads_every_record() {
    let [addr] = free_addrs::<1>();
    let moto = Moto::start_on(addr.port());
    moto.create_bucket("lake");
    let dir = tempfile::tempdir().expect("tempdir");
    let env_owned = env(&moto);
    let env: Vec<(&str, &str)> = env_owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let args = [
        "--parquet-url",
        "s3://lake/audit",
        "--parquet-max-file-age-secs",
        "1",
    ];
    let c = Collector::start_with_env(dir.path(), &args, &env);
    // The store goes away; finished files wait in the data dir, their records in the spool.
    drop(moto);
    send(&c, vec![http_stream(0, 4, 25)]);
    wait_for(
        "a finished file waiting locally",
        Duration::from_secs(30),
        || local_parquet_files(dir.path()) >= 1,
    );
    assert!(c.metric("meshaudit_sink_lag_bytes{sink=\"parquet\"}") > 0);
    c.kill9();

    // Back, and a new start: the waiting file is uploaded and the spool replays (at least once).
    let moto = Moto::start_on(addr.port());
    moto.create_bucket("lake");
    let c = Collector::start_with_env(dir.path(), &args, &env);
    wait_for("all 100 records in S3", Duration::from_secs(60), || {
        contents(&moto, "lake")["ids"] == 100
    });
    wait_for("nothing left locally", Duration::from_secs(30), || {
        local_parquet_files(dir.path()) == 0
    });
    let (status, out) = c.stop();
    assert!(status.success(), "exit {status}:\n{out}");
    // Every object is a whole Parquet file (pyarrow read each one above); none is in progress.
    let got = contents(&moto, "lake");
    assert!(got["rows"].as_u64().unwrap_or(0) >= 100, "{got}");
}
