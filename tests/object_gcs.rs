//! Parquet on Google Cloud Storage (`--parquet-url gs://`, issue 14) against PyPI's
//! gcp-storage-emulator, started here on a free port, with object_store's GCS client pointed at
//! it by a service-account key (`gcs_base_url`, `disable_oauth`). The emulator answers an object
//! PUT without the `ETag` header that GCS's XML API sends and object_store requires, so the
//! collector reaches it through tests/python/fault_proxy.py in mode `gcs-etag`, which adds
//! exactly that header (`"<hex md5 of the body>"`) and nothing else; without it the start-up
//! write check fails. Records land as objects in the Hive layout with their digests and are read
//! back by pyarrow's GcsFileSystem straight from the emulator; throttling (503 from the proxy)
//! holds them in the spool until the store takes requests again. Not covered: multipart uploads
//! (files above 8 MiB; the emulator answers the XML multipart API 501) and report/verify, which
//! list through an API the emulator lacks.

mod common;

use std::time::Duration;

use common::objstore::{parquet_files, serve_fails, FaultProxy, GcsEmulator};
use common::*;
use serde_json::Value;

/// Data objects under `lake/audit/` (pyarrow paths), their rows and distinct record ids, and
/// the number of digest objects.
const CONTENTS: &str =
    "sel = pafs.FileSelector('lake/audit', recursive=True, allow_not_found=True)\n\
    paths = [f.path for f in gcs.get_file_info(sel) if f.type == pafs.FileType.File]\n\
    data = [p for p in paths if p.endswith('.parquet')]\n\
    ids = []\n\
    for p in data:\n    ids += pq.read_table(p, filesystem=gcs).column('record_id').to_pylist()\n\
    print(json.dumps({'data': data, 'rows': len(ids), 'ids': len(set(ids)), \
    'digests': len([p for p in paths if p.startswith('lake/audit/_digests/')])}))";

#[test]
fn records_land_in_gcs_emulator_through_the_etag_shim_and_read_back_with_pyarrow() {
    let gcs = GcsEmulator::start("lake");
    let proxy = FaultProxy::start(gcs.port);
    let dir = tempfile::tempdir().expect("tempdir");
    let env_owned = GcsEmulator::env(&proxy.endpoint());
    let env: Vec<(&str, &str)> = env_owned.iter().map(|(k, v)| (*k, v.as_str())).collect();

    // Without the shim: the emulator stores the write check, but object_store refuses its answer.
    let bare = serve_fails(dir.path(), "gs://lake/audit", &env);
    assert!(
        bare.contains("cannot write to --parquet-url gs://lake/audit")
            && bare.contains("ETag Header missing"),
        "{bare}"
    );

    proxy.set("gcs-etag");
    let c = Collector::start_with_env(
        dir.path(),
        &[
            "--parquet-url",
            "gs://lake/audit",
            "--parquet-max-file-age-secs",
            "1",
        ],
        &env,
    );
    send(&c, vec![http_stream(0, 4, 25)]);
    wait_for("100 records in GCS", Duration::from_secs(60), || {
        gcs.py(CONTENTS)["ids"] == 100
    });

    // The store throttles (503 from the proxy): nothing passes, the records wait in the spool,
    // and they land once it takes requests again.
    proxy.set("503");
    send(&c, vec![http_stream(1000, 4, 25)]);
    wait_for("two failed uploads", Duration::from_secs(60), || {
        c.metric("meshaudit_sink_retries_total{sink=\"parquet\"}") >= 2
    });
    assert_eq!(
        gcs.py(CONTENTS)["ids"],
        100,
        "nothing passes a store that answers 503"
    );
    assert!(c.metric("meshaudit_sink_lag_bytes{sink=\"parquet\"}") > 0);
    proxy.set("gcs-etag");
    wait_for("all 200 records in GCS", Duration::from_secs(60), || {
        gcs.py(CONTENTS)["ids"] == 200
    });
    let (status, out) = c.stop();
    assert!(status.success(), "exit {status}:\n{out}");
    assert!(
        out.contains("meshaudit stopped cleanly") && out.contains("parquet uploads recovered"),
        "{out}"
    );

    let got = gcs.py(CONTENTS);
    let data: Vec<&str> = got["data"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        !data.is_empty()
            && data
                .iter()
                .all(|p| p.starts_with("lake/audit/dt=") && p.contains("/hour=")),
        "same Hive layout: {got}"
    );
    assert!(got["digests"].as_u64().unwrap_or(0) >= 1, "{got}");
    assert!(
        parquet_files(dir.path()).is_empty(),
        "local copies deleted once the store confirmed them"
    );

    // What went over the wire: single PUTs (no multipart), each answered 200 by the emulator,
    // each given its ETag by the shim.
    let log = proxy.log();
    let puts: Vec<_> = log
        .iter()
        .filter(|r| r.method == "PUT" && r.decoded_path().ends_with(".parquet"))
        .collect();
    assert!(
        !puts.is_empty()
            && puts
                .iter()
                .all(|r| r.decoded_path().starts_with("/lake/audit/dt=")),
        "{log:?}"
    );
    assert!(
        puts.iter()
            .all(|r| r.status == 200 && !r.target.contains('?')),
        "{log:?}"
    );
    let passed = log.iter().filter(|r| r.status / 100 == 2).count() as u64;
    assert!(
        proxy.count("etag_added") >= puts.len() as u64,
        "{}",
        proxy.state()
    );
    assert!(proxy.count("etag_added") <= passed, "{}", proxy.state());
}
