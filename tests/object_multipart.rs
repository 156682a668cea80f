//! Multipart uploads of Parquet files to object storage (issue 14): a file larger than one part
//! (8 MiB) is streamed from disk as a multipart upload instead of being read whole into memory,
//! against real emulators on free ports: moto's S3 server and Azurite, each behind the fault proxy
//! (common::objstore::FaultProxy, tests/python/fault_proxy.py), which logs every request with the
//! status answered and, in mode `refuse-after-part`, refuses everything after the first part but
//! the abort. Proven from outside the
//! collector: the S3 object's ETag carries the multipart `-N` suffix, Azurite received several
//! Put Block requests and one Put Block List, pyarrow reads every record back; a part refused
//! in the middle of an upload leaves no object under the final name and no multipart upload in
//! progress (boto3 `list_multipart_uploads`) after the abort, and the retry lands everything.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::objstore::{parquet_files, Azurite, FaultProxy, Moto, AZURITE_KEY};
use common::*;
use envoy_types::pb::envoy::service::accesslog::v3::stream_access_logs_message::LogEntries;
use envoy_types::pb::envoy::service::accesslog::v3::StreamAccessLogsMessage;
use serde_json::Value;

/// Bytes of noise in each record's user agent: zstd leaves ~3 KiB of each, so 6,000 records
/// are ~18 MiB of Parquet.
const NOISE: usize = 4096;
/// Files close at this size (of compressed pages, as the writer counts), not by age: 12 MiB
/// is two 8 MiB parts.
const FILE_BYTES: &str = "12582912";

/// `messages` messages of 100 HTTP entries numbered from `base`, each with [`NOISE`] bytes of
/// incompressible user agent.
fn big_stream(base: u32, messages: u32) -> Vec<StreamAccessLogsMessage> {
    let mut msgs = http_stream(base, messages, 100);
    for m in &mut msgs {
        if let Some(LogEntries::HttpLogs(h)) = &mut m.log_entries {
            for e in &mut h.log_entry {
                let req = e.request.as_mut().expect("request");
                req.user_agent = noise(&req.request_id);
            }
        }
    }
    msgs
}

/// [`NOISE`] pseudo-random alphanumeric characters seeded by `seed` (xorshift64*).
fn noise(seed: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut x = seed.bytes().fold(0x9E37_79B9_7F4A_7C15_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3)
    }) | 1;
    (0..NOISE)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            let r = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
            char::from(ALPHABET[(r >> 58) as usize % ALPHABET.len()])
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------

/// Waits up to 120 s for `cond`; on a timeout panics with what `show` says.
fn wait_or_show(what: &str, mut cond: impl FnMut() -> bool, show: impl Fn() -> String) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after 120 s waiting for {what}:\n{}",
            show()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The local files with sizes, the proxy's log and the collector's output.
fn diagnose(c: &Collector, proxy: &FaultProxy, dir: &Path) -> String {
    let files: Vec<String> = all_files(dir)
        .iter()
        .map(|p| {
            format!(
                "{} {}",
                p.display(),
                p.metadata().map(|m| m.len()).unwrap_or(0)
            )
        })
        .collect();
    let seen: Vec<String> = proxy
        .log()
        .iter()
        .map(|s| format!("{} {} {}", s.method, s.target, s.status))
        .collect();
    format!(
        "local files:\n{}\nproxy:\n{}\ncollector:\n{}",
        files.join("\n"),
        seen.join("\n"),
        c.output()
    )
}

/// Every data object under `lake/audit/`: key, ETag, rows, distinct record ids; and the
/// multipart uploads in progress in the bucket.
fn s3_state(m: &Moto) -> Value {
    m.py(
        "keys = [o['Key'] for p in boto.get_paginator('list_objects_v2').paginate(Bucket='lake', Prefix='audit/') for o in p.get('Contents', []) if o['Key'].endswith('.parquet')]\n\
         objs = {}\n\
         ids = set()\n\
         rows = 0\n\
         for k in keys:\n    \
             col = pq.read_table('lake/' + k, filesystem=s3).column('record_id').to_pylist()\n    \
             rows += len(col)\n    \
             ids.update(col)\n    \
             objs[k] = boto.head_object(Bucket='lake', Key=k)['ETag'].strip('\"')\n\
         uploads = boto.list_multipart_uploads(Bucket='lake').get('Uploads', [])\n\
         print(json.dumps({'objects': objs, 'rows': rows, 'ids': len(ids), \
         'uploads': [u['Key'] + ' ' + u['UploadId'] for u in uploads]}))",
    )
}

/// The number of parts in a multipart ETag (`md5-N`); 0 for a single PUT's.
fn etag_parts(etag: &str) -> u64 {
    etag.rsplit_once('-')
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn s3_multipart_upload_lands_whole_and_a_part_refused_midway_leaves_nothing_until_the_retry() {
    let moto = Moto::start();
    moto.create_bucket("lake");
    let proxy = FaultProxy::start(moto.port);
    let dir = tempfile::tempdir().expect("tempdir");
    let env_owned = proxy.via(moto.env("test"));
    let env: Vec<(&str, &str)> = env_owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let c = Collector::start_with_env(
        dir.path(),
        &[
            "--parquet-url",
            "s3://lake/audit",
            "--parquet-max-file-bytes",
            FILE_BYTES,
            "--parquet-max-file-age-secs",
            "600",
        ],
        &env,
    );

    // 6,000 records (~18 MiB): one file closes at 12 MiB and goes up in parts.
    send(&c, vec![big_stream(0, 60)]);
    wait_or_show(
        "a data object in S3",
        || {
            !s3_state(&moto)["objects"]
                .as_object()
                .expect("objects")
                .is_empty()
        },
        || diagnose(&c, &proxy, dir.path()),
    );
    let first = s3_state(&moto);
    let objects = first["objects"].as_object().expect("objects").clone();
    assert_eq!(objects.len(), 1, "{first}");
    let (key, etag) = objects.iter().next().expect("one object");
    assert!(
        etag_parts(etag.as_str().unwrap_or("")) >= 2,
        "{key} must be a multipart upload of 2+ parts (ETag md5-N): {first}"
    );
    let seen = proxy.log();
    assert!(
        seen.iter()
            .any(|s| s.method == "POST" && s.target.contains("uploads") && s.status == 200),
        "CreateMultipartUpload: {seen:?}"
    );
    assert!(first["rows"].as_u64().unwrap_or(0) >= 4000, "{first}");
    assert_eq!(first["uploads"], serde_json::json!([]), "{first}");

    // The store refuses everything after the first part of the next upload (the abort
    // excepted): the upload fails in the middle and is aborted.
    let retries_before = c.metric("meshaudit_sink_retries_total{sink=\"parquet\"}");
    proxy.set("refuse-after-part");
    send(&c, vec![big_stream(100_000, 60)]);
    wait_for(
        "a part refused and the upload aborted",
        Duration::from_secs(120),
        || {
            let seen = proxy.log();
            seen.iter().any(|r| {
                r.is_part()
                    && r.status == 403
                    && seen.iter().any(|d| {
                        d.method == "DELETE"
                            && d.status / 100 == 2
                            && d.upload_id().is_some()
                            && d.upload_id() == r.upload_id()
                    })
            })
        },
    );
    let seen = proxy.log();
    let refused = seen
        .iter()
        .find(|r| r.is_part() && r.status == 403)
        .expect("a refused part");
    let id = refused.upload_id().expect("the part's uploadId");
    assert!(
        seen.iter()
            .any(|r| r.is_part() && r.status == 200 && r.upload_id() == Some(id)),
        "a part of that upload went up before the refusal (a failure in the middle): {seen:?}"
    );
    wait_for("the sink retrying", Duration::from_secs(30), || {
        c.metric("meshaudit_sink_retries_total{sink=\"parquet\"}") > retries_before
    });
    // The file waits in the data dir; nothing of it is in the bucket, no upload in progress.
    let waiting: Vec<String> = parquet_files(dir.path())
        .iter()
        .map(|p| {
            p.strip_prefix(dir.path())
                .expect("under data dir")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert!(!waiting.is_empty(), "a finished file waits for the store");
    let during = s3_state(&moto);
    assert_eq!(
        during["objects"].as_object().expect("objects").len(),
        1,
        "no new object while the store refuses: {during}"
    );
    for rel in &waiting {
        assert!(
            during["objects"].get(format!("audit/{rel}")).is_none(),
            "{rel} must not be visible before its upload completes: {during}"
        );
    }
    assert_eq!(
        during["uploads"],
        serde_json::json!([]),
        "the failed upload was aborted: no parts left behind"
    );
    assert!(
        c.output().contains("parquet upload failed"),
        "{}",
        c.output()
    );

    // The store takes requests again: the retry lands the waiting file, in parts.
    proxy.set("pass");
    wait_for("the waiting files in S3", Duration::from_secs(120), || {
        let s = s3_state(&moto);
        waiting
            .iter()
            .all(|rel| s["objects"].get(format!("audit/{rel}")).is_some())
    });
    let (status, out) = c.stop();
    assert!(status.success(), "exit {status}:\n{out}");
    let last = s3_state(&moto);
    assert_eq!(
        last["ids"], 12_000,
        "every record, read back by pyarrow: {last}"
    );
    assert_eq!(last["uploads"], serde_json::json!([]), "{last}");
    for rel in &waiting {
        let etag = last["objects"][format!("audit/{rel}")]
            .as_str()
            .unwrap_or("");
        assert!(etag_parts(etag) >= 2, "{rel}: {etag}");
    }
    assert!(parquet_files(dir.path()).is_empty(), "nothing left locally");
}

#[test]
fn azure_multipart_upload_is_put_block_then_put_block_list_and_reads_back_whole() {
    let az = Azurite::start();
    az.py("az.create_dir('lake')\nprint('null')");
    let proxy = FaultProxy::start(az.port);
    let dir = tempfile::tempdir().expect("tempdir");
    let env_owned = proxy.via(az.env(AZURITE_KEY));
    let env: Vec<(&str, &str)> = env_owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let c = Collector::start_with_env(
        dir.path(),
        &[
            "--parquet-url",
            "az://lake/audit",
            "--parquet-max-file-bytes",
            FILE_BYTES,
            "--parquet-max-file-age-secs",
            "600",
        ],
        &env,
    );
    send(&c, vec![big_stream(0, 60)]);
    // Shutdown closes the open file and uploads everything before the exit.
    let (status, out) = c.stop();
    assert!(status.success(), "exit {status}:\n{out}");
    assert!(!out.contains(AZURITE_KEY), "{out}");
    assert!(parquet_files(dir.path()).is_empty(), "nothing left locally");

    // Per blob: Put Block requests, and whether a Put Block List committed them.
    let seen = proxy.log();
    let multipart: BTreeSet<String> = seen
        .iter()
        .filter(|r| r.method == "PUT" && r.target.contains("comp=blocklist") && r.status == 201)
        .map(|r| r.path().to_owned())
        .filter(|b| {
            seen.iter()
                .filter(|r| r.is_part() && r.status == 201 && r.path() == b)
                .count()
                >= 2
        })
        .collect();
    assert!(
        multipart.iter().any(|b| b.ends_with(".parquet")),
        "a data file committed from 2+ blocks: {seen:?}"
    );
    let got = az.py(
        "sel = pafs.FileSelector('lake/audit', recursive=True)\n\
         files = [f.path for f in az.get_file_info(sel) if f.path.endswith('.parquet')]\n\
         ids = set()\n\
         for f in files:\n    ids.update(pq.read_table(f, filesystem=az).column('record_id').to_pylist())\n\
         print(json.dumps({'ids': len(ids), 'files': files}))",
    );
    assert_eq!(
        got["ids"], 6000,
        "every record, read back by pyarrow: {got}"
    );
    for b in &multipart {
        assert!(
            got["files"]
                .as_array()
                .expect("files")
                .iter()
                .filter_map(Value::as_str)
                .any(|f| b.ends_with(f)),
            "{b} is readable: {got}"
        );
    }
}
