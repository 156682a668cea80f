//! Parquet on object storage (issue 14, `--parquet-url`) against real emulators started here on
//! free ports: moto's S3 server (PyPI, pinned in tests/python/requirements.txt) and Azurite
//! (npm, installed by scripts/test into target/azurite). Records land as objects in the same
//! Hive layout with their digests, read back by pyarrow's own filesystems; the store down under
//! load, then back, loses nothing; a bad bucket or a wrong key is a start-up error naming the
//! setting.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::objstore::{parquet_files, serve_fails, Azurite, FaultProxy, Moto, AZURITE_KEY};
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
    parquet_files(dir).len()
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

// ---------------------------------------------------------------------------------------------
// Faults between the collector and the store: common::objstore::FaultProxy
// (tests/python/fault_proxy.py), a reverse proxy in front of moto or Azurite whose mode (pass,
// 503, 429, trickle, cut) the test switches at run time, and which counts what it served.

fn ready(c: &Collector) -> bool {
    http_get(c.admin_addr, "/readyz").map(|r| r.0) == Some(200)
}

#[test]
fn s3_throttling_503_slowdown_for_half_a_minute_under_load_loses_nothing() {
    let moto = Moto::start();
    moto.create_bucket("lake");
    let proxy = FaultProxy::start(moto.port);
    let dir = tempfile::tempdir().expect("tempdir");
    let env_owned = proxy.via(env(&moto));
    let env: Vec<(&str, &str)> = env_owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let c = Collector::start_with_env(
        dir.path(),
        &[
            "--parquet-url",
            "s3://lake/audit",
            "--parquet-max-file-age-secs",
            "1",
        ],
        &env,
    );
    send(&c, vec![http_stream(0, 4, 25)]);
    wait_for(
        "100 records in S3 through the proxy",
        Duration::from_secs(30),
        || contents(&moto, "lake")["ids"] == 100,
    );
    assert!(proxy.count("pass") > 0);

    // The store throttles every request for ~25 s (more than one upload's 5 client retries)
    // while streams keep coming: every stream is accepted, the collector stays ready (the spool
    // has room) and its records wait in the spool.
    proxy.set("503");
    let throttled_at = std::time::Instant::now();
    let mut sent = 100u64;
    let mut round = 0u32;
    while throttled_at.elapsed() < Duration::from_secs(25) {
        round += 1;
        send(
            &c,
            vec![
                http_stream(10_000 * round, 2, 25),
                http_stream(10_000 * round + 5_000, 2, 25),
            ],
        );
        sent += 100;
        assert!(
            ready(&c),
            "unready while the spool has room:\n{}",
            c.output()
        );
        std::thread::sleep(Duration::from_millis(2500));
    }
    assert!(
        c.metric("meshaudit_sink_retries_total{sink=\"parquet\"}") >= 2,
        "{}",
        c.output()
    );
    assert!(c.metric("meshaudit_sink_lag_bytes{sink=\"parquet\"}") > 0);
    // Bounded inside the client: each failed sync is one request tried 1 + 5 times (the
    // RetryConfig of object.rs), then the driver's own back-off; at most one sync in progress.
    let failed_before = c.metric("meshaudit_sink_retries_total{sink=\"parquet\"}");
    let throttled = proxy.count("503");
    let failed_after = c.metric("meshaudit_sink_retries_total{sink=\"parquet\"}");
    assert!(
        failed_before >= 1 && 6 * failed_before <= throttled && throttled <= 6 * (failed_after + 1),
        "503 answers {throttled}, failed syncs {failed_before}..{failed_after}"
    );
    assert_eq!(
        contents(&moto, "lake")["ids"],
        100,
        "nothing may pass a store that answers 503"
    );
    let log = c.output();
    assert!(
        log.contains("parquet upload failed") && log.contains("SlowDown"),
        "{log}"
    );

    // The store takes requests again: every record lands, exactly the ones sent.
    proxy.set("pass");
    wait_for(
        "every record sent during the throttling in S3",
        Duration::from_secs(60),
        || contents(&moto, "lake")["ids"] == sent,
    );
    wait_for("parquet lag back to 0", Duration::from_secs(30), || {
        c.metric("meshaudit_sink_lag_bytes{sink=\"parquet\"}") == 0
    });
    assert!(ready(&c));
    let (status, out) = c.stop();
    assert!(status.success(), "exit {status}:\n{out}");
    assert!(out.contains("parquet uploads recovered"), "{out}");
    assert_eq!(local_parquet_files(dir.path()), 0);
}

#[test]
fn azure_throttling_429_from_start_up_and_under_load_then_back_loses_nothing() {
    let az = Azurite::start();
    az.py("az.create_dir('lake')\nprint('null')");
    let proxy = FaultProxy::start(az.port);
    let dir = tempfile::tempdir().expect("tempdir");
    let env_owned = proxy.via(az.env(AZURITE_KEY));
    let env: Vec<(&str, &str)> = env_owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // Throttling from before the start: the start-up write check is answered 429 after the
    // client's retries; that is no configuration error, so the collector starts (ready) and
    // says so, instead of crash-looping through the episode.
    proxy.set("429");
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
    assert!(
        c.output()
            .contains("refused the start-up write check for now")
            && proxy.count("429") >= 6,
        "{}\n{}",
        c.output(),
        proxy.state()
    );
    let mut sent = 0u64;
    for round in 0..4u32 {
        send(&c, vec![http_stream(10_000 * round, 4, 25)]);
        sent += 100;
        assert!(ready(&c), "{}", c.output());
        std::thread::sleep(Duration::from_secs(3));
    }
    wait_for("two failed uploads", Duration::from_secs(60), || {
        c.metric("meshaudit_sink_retries_total{sink=\"parquet\"}") >= 2
    });
    assert!(proxy.count("429") >= 6, "{}", proxy.state());
    let count = "sel = pafs.FileSelector('lake/audit', recursive=True, allow_not_found=True)\n\
                 files = [f.path for f in az.get_file_info(sel) if f.path.endswith('.parquet')]\n\
                 ids = []\n\
                 for f in files:\n    ids += pq.read_table(f, filesystem=az).column('record_id').to_pylist()\n\
                 print(json.dumps({'ids': len(set(ids))}))";
    assert_eq!(
        az.py(count)["ids"],
        0,
        "nothing may pass a store that answers 429"
    );
    proxy.set("pass");
    wait_for(
        "every record in Azure Blob",
        Duration::from_secs(60),
        || az.py(count)["ids"] == sent,
    );
    let (status, out) = c.stop();
    assert!(status.success(), "exit {status}:\n{out}");
    assert!(out.contains("429"), "{out}");
    assert_eq!(local_parquet_files(dir.path()), 0);
}

#[test]
fn kill_9_during_an_upload_leaves_no_partial_object_and_a_restart_delivers_every_record() {
    let moto = Moto::start();
    moto.create_bucket("lake");
    let proxy = FaultProxy::start(moto.port);
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let env_owned = proxy.via(env(&moto));
    let env: Vec<(&str, &str)> = env_owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let args = [
        "--parquet-url",
        "s3://lake/audit",
        "--parquet-max-file-age-secs",
        "1",
    ];
    let c = Collector::start_with_env(&data, &args, &env);
    // Request bodies now reach the store at 2 KiB/s: the ~43 KB file stays in flight for ~20 s.
    proxy.set("trickle");
    send(&c, (0..10).map(|s| http_stream(s * 1000, 4, 25)).collect());
    wait_for("a Parquet PUT in flight", Duration::from_secs(60), || {
        let s = proxy.state();
        s["inflight"]["path"]
            .as_str()
            // Without the query: a multipart part is `KEY?partNumber=..&uploadId=..`.
            .is_some_and(|p| p.split('?').next().is_some_and(|k| k.ends_with(".parquet")))
            && s["inflight"]["sent"].as_u64().unwrap_or(0) > 0
    });
    let inflight = proxy.state()["inflight"].clone();
    assert!(
        inflight["sent"].as_u64() < inflight["length"].as_u64(),
        "{inflight}"
    );
    let path = inflight["path"].as_str().expect("path").to_owned();
    c.kill9();

    // The collector is gone, the body is still arriving (its kernel delivers what was written):
    // the store shows nothing under the final name. Then the connection is cut, as with a lost
    // node: the store got an incomplete body, and still shows nothing.
    let check = format!(
        "import urllib.parse\n\
         cut = urllib.parse.unquote('{path}'.split('?')[0]).split('/', 2)[2]\n\
         keys = [o['Key'] for p in boto.get_paginator('list_objects_v2').paginate(Bucket='lake', Prefix='audit/') for o in p.get('Contents', [])]\n\
         data = [k for k in keys if k.endswith('.parquet')]\n\
         rows = sum(pq.read_table(io.BytesIO(boto.get_object(Bucket='lake', Key=k)['Body'].read())).num_rows for k in data)\n\
         print(json.dumps({{'cut': cut, 'present': cut in keys, 'data': data, 'rows': rows}}))"
    );
    let seen = moto.py(&check);
    let still = proxy.state()["inflight"].clone();
    assert_eq!(
        still["path"],
        path.as_str(),
        "the upload is still in flight: {still}"
    );
    assert_eq!(
        seen["present"], false,
        "an object before its body was complete: {seen}"
    );
    proxy.set("cut");
    wait_for("the upload cut off", Duration::from_secs(10), || {
        proxy.state()["aborted"]
            .as_array()
            .is_some_and(|a| a.iter().any(|p| p == path.as_str()))
    });
    // What the store shows: not the object that was being written, and every data object there
    // is a whole Parquet file (pyarrow read each one).
    let seen = moto.py(&check);
    assert_eq!(
        seen["present"], false,
        "a partial object under its final name: {seen}"
    );
    assert!(
        seen["cut"]
            .as_str()
            .is_some_and(|k| k.starts_with("audit/dt=")),
        "{seen}"
    );
    assert!(
        local_parquet_files(&data) >= 1,
        "the cut file waits locally"
    );

    // Restart with the store taking requests at full speed: the waiting file is uploaded, the
    // spool replays (at least once), and verify is clean.
    proxy.set("pass");
    let c = Collector::start_with_env(&data, &args, &env);
    wait_for("all 1000 records in S3", Duration::from_secs(60), || {
        contents(&moto, "lake")["ids"] == 1000
    });
    wait_for("nothing left locally", Duration::from_secs(30), || {
        local_parquet_files(&data) == 0
    });
    let (status, out) = c.stop();
    assert!(status.success(), "exit {status}:\n{out}");
    assert_eq!(
        moto.py(&check)["present"],
        true,
        "the cut file, uploaded whole after the restart"
    );

    let key = tmp.path().join("collector.pub");
    let run = |args: &[&str], env: &[(&'static str, String)]| {
        Command::new(env!("CARGO_BIN_EXE_meshaudit"))
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .expect("run meshaudit")
    };
    let o = run(
        &[
            "public-key",
            "--data-dir",
            data.to_str().expect("utf8"),
            "--out",
            key.to_str().expect("utf8"),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(
        &[
            "verify",
            "--parquet-url",
            "s3://lake/audit",
            "--public-key",
            key.to_str().expect("utf8"),
            "--json",
        ],
        &env_owned,
    );
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(o.status.code(), Some(0), "{all}");
    let v: Value = serde_json::from_slice(&o.stdout).expect("verify --json");
    assert!(
        v["parquet"]["records"].as_u64().unwrap_or(0) >= 100,
        "{all}"
    );
}
