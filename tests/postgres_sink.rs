//! The Postgres sink and the durable spool against a real PostgreSQL (see common/pg.rs): the same
//! rows as Parquet, exactly once through outages, crashes and re-sends; the schema as the
//! contract says; clear errors at start-up.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::pg::{PgCluster, PASSWORD, PASSWORD_USER};
use common::*;
use meshaudit::record::{ColumnType, COLUMNS};
use serde_json::Value;

const COUNT: &str = "SELECT count(*) FROM audit_records";
const DISTINCT: &str = "SELECT count(DISTINCT record_id) FROM audit_records";

/// Every row of audit_records as column → JSON value, in the shape of `common::read_rows`
/// (timestamps as µs integers, lists as arrays), ordered by record_id.
fn pg_rows(pg: &PgCluster, db: &str) -> Vec<Row> {
    let select: Vec<String> = COLUMNS
        .iter()
        .map(|c| match c.column_type() {
            ColumnType::Timestamptz => {
                format!("(extract(epoch FROM {0}) * 1000000)::bigint AS {0}", c.name)
            }
            _ => c.name.to_owned(),
        })
        .collect();
    let sql = format!(
        "SELECT coalesce(json_agg(t ORDER BY t.record_id), '[]') FROM (SELECT {} FROM audit_records) t",
        select.join(", ")
    );
    let json: Value = serde_json::from_str(&pg.psql(db, &sql)).expect("json");
    json.as_array()
        .expect("array")
        .iter()
        .map(|v| normalize(v.as_object().expect("object").clone()))
        .collect()
}

/// float8 columns compared as numbers (Postgres prints 23.0 as 23).
fn normalize(mut row: Row) -> Row {
    for c in COLUMNS {
        if c.column_type() == ColumnType::Float8 {
            if let Some(v) = row.get_mut(c.name) {
                if let Some(f) = v.as_f64() {
                    *v = Value::from(f);
                }
            }
        }
    }
    row
}

fn ids_of(rows: &[Row]) -> Vec<String> {
    rows.iter()
        .map(|r| r["record_id"].as_str().expect("record_id").to_owned())
        .collect()
}

fn spooled_ids(data_dir: &Path) -> BTreeSet<String> {
    meshaudit::store::spool::read_spooled(&data_dir.join("_spool"))
        .expect("read spool")
        .into_iter()
        .map(|r| String::from_utf8_lossy(&r.record_id).into_owned())
        .collect()
}

#[test]
fn postgres_rows_equal_parquet_rows_for_the_same_input() {
    let pg = PgCluster::start();
    let url = pg.create_db("equal");
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Collector::start(dir.path(), &["--database-url", &url, "--migrate-on-start"]);
    send(&c, vec![http_stream(0, 4, 25), tcp_stream(500, 30)]);
    wait_for("130 rows in postgres", Duration::from_secs(30), || {
        pg.count("equal", COUNT) == 130
    });
    // New records take the direct COPY; none needed the staging fallback.
    assert_eq!(c.metric("meshaudit_postgres_batches_staged_total"), 0);
    let (status, out) = c.stop();
    assert!(status.success(), "exit {status}:\n{out}");

    let mut parquet: Vec<Row> = read_rows(dir.path()).into_iter().map(normalize).collect();
    parquet.sort_by(|a, b| a["record_id"].as_str().cmp(&b["record_id"].as_str()));
    let postgres = pg_rows(&pg, "equal");
    assert_eq!(parquet.len(), 130);
    assert_eq!(postgres.len(), 130);
    for (p, q) in parquet.iter().zip(&postgres) {
        assert_eq!(p, q, "row {} differs", p["record_id"]);
    }
    // Rows land in their day's partition, not the default one.
    assert_eq!(
        pg.count("equal", "SELECT count(*) FROM audit_records_default"),
        0
    );
    assert_eq!(
        pg.count("equal", "SELECT count(*) FROM audit_records_p20260302"),
        130
    );
}

#[test]
fn postgres_down_mid_stream_then_back_every_record_exactly_once() {
    let pg = PgCluster::start();
    let url = pg.create_db("outage");
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Collector::start(
        dir.path(),
        &[
            "--database-url",
            &url,
            "--migrate-on-start",
            "--parquet-max-file-age-secs",
            "1",
        ],
    );
    send(&c, vec![http_stream(0, 4, 25)]);
    wait_for("first 100 rows", Duration::from_secs(30), || {
        pg.count("outage", COUNT) == 100
    });

    pg.stop_server();
    let down_at = Instant::now();
    // Still accepted: the spool takes them.
    send(&c, vec![http_stream(1000, 4, 25), tcp_stream(5000, 50)]);
    // Parquet keeps going while Postgres is down.
    wait_for("parquet has all 250", Duration::from_secs(30), || {
        let rows = read_rows(dir.path());
        ids_of(&rows).into_iter().collect::<BTreeSet<_>>().len() == 250
    });
    // Several seconds of failed attempts: the 4th comes 0.5 + 1 + 2 s after the 1st.
    wait_for("postgres retries", Duration::from_secs(30), || {
        c.metric("meshaudit_sink_retries_total{sink=\"postgres\"}") >= 4
    });
    assert!(c.metric("meshaudit_sink_lag_bytes{sink=\"postgres\"}") > 0);
    assert!(down_at.elapsed() >= Duration::from_secs(3));
    assert!(
        c.output().contains("postgres sink cannot write"),
        "{}",
        c.output()
    );

    pg.start_server();
    send(&c, vec![http_stream(2000, 2, 25)]);
    wait_for("all 300 rows", Duration::from_secs(60), || {
        pg.count("outage", COUNT) >= 300
    });
    assert_eq!(pg.count("outage", COUNT), 300);
    assert_eq!(pg.count("outage", DISTINCT), 300);
    wait_for("postgres lag back to 0", Duration::from_secs(10), || {
        c.metric("meshaudit_sink_lag_bytes{sink=\"postgres\"}") == 0
    });
    let (status, out) = c.stop();
    assert!(status.success(), "exit {status}:\n{out}");
    assert_eq!(
        pg.count("outage", COUNT),
        300,
        "nothing more after the drain"
    );
}

#[test]
fn sigkill_mid_stream_then_restart_every_spooled_record_once_in_postgres() {
    let pg = PgCluster::start();
    let url = pg.create_db("crash");
    let dir = tempfile::tempdir().expect("tempdir");
    let args = ["--database-url", url.as_str(), "--migrate-on-start"];
    let c = Collector::start(dir.path(), &args);

    // A first stream completes: its records were all accepted before the crash.
    send(&c, vec![http_stream(0, 2, 25)]);
    let accepted: BTreeSet<String> = spooled_ids(dir.path());
    assert_eq!(accepted.len(), 50);

    // Four streams in flight; the collector dies half-way.
    let url_als = c.als_url();
    let runtime = rt();
    let inflight: Vec<_> = (0..4u32)
        .map(|s| {
            let url = url_als.clone();
            runtime.spawn(async move {
                let msgs = http_stream(10_000 + s * 10_000, 40, 25);
                // Paced, so the kill lands mid-stream.
                let paced = async_stream(msgs);
                let mut client = envoy_types::pb::envoy::service::accesslog::v3::access_log_service_client::AccessLogServiceClient::connect(url).await?;
                client.stream_access_logs(paced).await?;
                Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
            })
        })
        .collect();
    wait_for(
        "half of the in-flight records spooled",
        Duration::from_secs(60),
        || c.metric("meshaudit_spool_records_appended_total") >= 50 + 2000,
    );
    let out = c.kill9();
    let mut completed = 0;
    for t in inflight {
        if matches!(runtime.block_on(t), Ok(Ok(()))) {
            completed += 1;
        }
    }
    assert!(completed < 4, "the kill must land mid-stream:\n{out}");

    let spooled = spooled_ids(dir.path());
    assert!(spooled.is_superset(&accepted));
    assert!(spooled.len() >= 2050, "spooled {}", spooled.len());

    let c = Collector::start(dir.path(), &args);
    wait_for(
        "every spooled record in postgres",
        Duration::from_secs(60),
        || pg.count("crash", COUNT) >= spooled.len() as i64,
    );
    let (status, out) = c.stop();
    assert!(status.success(), "exit {status}:\n{out}");
    let in_pg: BTreeSet<String> = ids_of(&pg_rows(&pg, "crash")).into_iter().collect();
    assert_eq!(
        pg.count("crash", COUNT),
        spooled.len() as i64,
        "exactly once"
    );
    assert_eq!(in_pg, spooled);
    // Parquet: at least once.
    let in_parquet: BTreeSet<String> = ids_of(&read_rows(dir.path())).into_iter().collect();
    assert!(
        in_parquet.is_superset(&spooled),
        "missing in parquet: {}",
        spooled.difference(&in_parquet).count()
    );
}

/// Sends `msgs` one by one with a short pause, as a proxy flushing its buffer would.
fn async_stream(
    msgs: Vec<envoy_types::pb::envoy::service::accesslog::v3::StreamAccessLogsMessage>,
) -> impl tokio_stream::Stream<
    Item = envoy_types::pb::envoy::service::accesslog::v3::StreamAccessLogsMessage,
> {
    futures_util::stream::unfold(msgs.into_iter(), |mut it| async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        it.next().map(|m| (m, it))
    })
}

#[test]
fn the_same_messages_sent_twice_are_stored_once() {
    let pg = PgCluster::start();
    let url = pg.create_db("resend");
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Collector::start(dir.path(), &["--database-url", &url, "--migrate-on-start"]);
    let msgs = http_stream(0, 3, 20);
    send(
        &c,
        vec![msgs.clone(), msgs, tcp_stream(100, 10), tcp_stream(100, 10)],
    );
    wait_for("duplicates counted", Duration::from_secs(30), || {
        c.metric("meshaudit_postgres_rows_duplicate_total") == 70
    });
    assert_eq!(c.metric("meshaudit_postgres_rows_inserted_total"), 70);
    // The re-sent copies were refused by the direct COPY and went through staging.
    assert!(c.metric("meshaudit_postgres_batches_staged_total") >= 1);
    let (status, out) = c.stop();
    assert!(status.success(), "exit {status}:\n{out}");
    assert_eq!(pg.count("resend", COUNT), 70);
    assert_eq!(pg.count("resend", DISTINCT), 70);
    let parquet = ids_of(&read_rows(dir.path()));
    assert_eq!(parquet.len(), 140, "Parquet is at-least-once: both copies");
    assert_eq!(parquet.into_iter().collect::<BTreeSet<_>>().len(), 70);
}

fn meshaudit(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_meshaudit"))
        .args(args)
        .env_remove("DATABASE_URL")
        .stdin(Stdio::null())
        .output()
        .expect("run meshaudit");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `meshaudit serve` that must fail at start-up: returns its output.
fn serve_fails(data_dir: &Path, url: &str) -> String {
    let [als, admin] = free_addrs::<2>().map(|a| a.to_string());
    let (ok, out) = meshaudit(&[
        "serve",
        "--als-addr",
        &als,
        "--admin-addr",
        &admin,
        "--data-dir",
        data_dir.to_str().expect("utf8 path"),
        "--database-url",
        url,
    ]);
    assert!(!ok, "serve should have failed:\n{out}");
    out
}

#[test]
fn schema_matches_the_contract_and_partitions_are_managed() {
    let pg = PgCluster::start();
    let url = pg.create_db("schema");
    let (ok, out) = meshaudit(&["migrate", "--database-url", &url]);
    assert!(ok && out.contains("schema created (version 4)"), "{out}");
    let (ok, out) = meshaudit(&["migrate", "--database-url", &url]);
    assert!(ok && out.contains("up to date"), "{out}");

    let got = pg.psql(
        "schema",
        "SELECT column_name || '|' || data_type || '|' || udt_name || '|' || is_nullable \
         FROM information_schema.columns \
         WHERE table_schema = 'public' AND table_name = 'audit_records' ORDER BY ordinal_position",
    );
    let want: Vec<String> = COLUMNS
        .iter()
        .map(|c| {
            let (data_type, udt) = match c.column_type() {
                ColumnType::Text => ("text", "text"),
                ColumnType::Int => ("integer", "int4"),
                ColumnType::BigInt => ("bigint", "int8"),
                ColumnType::Float8 => ("double precision", "float8"),
                ColumnType::Bool => ("boolean", "bool"),
                ColumnType::Timestamptz => ("timestamp with time zone", "timestamptz"),
                ColumnType::TextArray => ("ARRAY", "_text"),
            };
            let nullable = if c.nullable { "YES" } else { "NO" };
            format!("{}|{data_type}|{udt}|{nullable}", c.name)
        })
        .collect();
    assert_eq!(got.lines().collect::<Vec<_>>(), want);

    let indexes = pg.psql(
        "schema",
        "SELECT string_agg(indexdef, E'\\n') FROM pg_indexes WHERE tablename = 'audit_records'",
    );
    for cols in [
        "(record_id, start_time) NULLS NOT DISTINCT",
        "(object_id, start_time)",
        "(user_principal, start_time)",
        "(source_principal, start_time)",
        "(decision, start_time)",
        "(destination_namespace, destination_service, start_time)",
    ] {
        assert!(indexes.contains(cols), "no index on {cols}:\n{indexes}");
    }

    // An old partition from earlier days, then a collector with 7 days of retention.
    pg.psql(
        "schema",
        "SELECT meshaudit_ensure_partition((now() AT TIME ZONE 'UTC')::date - 30)",
    );
    let old = pg.psql(
        "schema",
        "SELECT 'audit_records_p' || to_char((now() AT TIME ZONE 'UTC')::date - 30, 'YYYYMMDD')",
    );
    let exists = |name: &str| {
        pg.count(
            "schema",
            &format!("SELECT count(*) FROM pg_class WHERE relname = '{name}'"),
        ) == 1
    };
    assert!(exists(&old));
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Collector::start(
        dir.path(),
        &["--database-url", &url, "--retention-days", "7"],
    );
    assert!(!exists(&old), "retention dropped the 30-day-old partition");
    let ahead = pg.count(
        "schema",
        "SELECT count(*) FROM generate_series(0, 7) d \
         WHERE to_regclass('audit_records_p' || to_char((now() AT TIME ZONE 'UTC')::date + d, 'YYYYMMDD')) IS NOT NULL",
    );
    assert_eq!(ahead, 8, "partitions for today and 7 days ahead");
    assert!(c
        .output()
        .contains("dropped audit_records partition past retention"));
    let (status, out) = c.stop();
    assert!(status.success(), "exit {status}:\n{out}");
}

#[test]
fn start_up_errors_say_what_to_fix_and_never_show_the_password() {
    let pg = PgCluster::start();
    let dir = tempfile::tempdir().expect("tempdir");

    let out = serve_fails(dir.path(), "postgres://audit:sekrit-pw@db:notaport/x");
    assert!(
        out.contains("database_url") && out.contains("Fix:"),
        "{out}"
    );
    assert!(!out.contains("sekrit-pw"), "{out}");

    let wrong = format!(
        "postgres://{PASSWORD_USER}:wrong-pw-123@127.0.0.1:{}/postgres",
        pg.port
    );
    let out = serve_fails(dir.path(), &wrong);
    assert!(
        out.contains("refused the login") && out.contains(PASSWORD_USER),
        "{out}"
    );
    assert!(!out.contains("wrong-pw-123"), "{out}");

    let nobody = format!(
        "postgres://postgres:pw@127.0.0.1:{}/postgres",
        free_addr().port()
    );
    let out = serve_fails(dir.path(), &nobody);
    assert!(out.contains("cannot reach Postgres"), "{out}");

    let url = pg.create_db("errs");
    let out = serve_fails(dir.path(), &url);
    assert!(
        out.contains("meshaudit migrate") && out.contains("--migrate-on-start"),
        "{out}"
    );

    let (ok, out) = meshaudit(&["migrate", "--database-url", &url]);
    assert!(ok, "{out}");
    pg.psql("errs", "CREATE ROLE writer LOGIN");
    let writer = pg.url("writer", "errs");
    let out = serve_fails(dir.path(), &writer);
    assert!(
        out.contains("GRANT SELECT ON _sqlx_migrations TO writer"),
        "{out}"
    );
    pg.psql("errs", "GRANT SELECT ON _sqlx_migrations TO writer");
    let out = serve_fails(dir.path(), &writer);
    assert!(
        out.contains("GRANT INSERT ON audit_records TO writer"),
        "{out}"
    );
    pg.psql("errs", "GRANT INSERT ON audit_records TO writer");
    let out = serve_fails(dir.path(), &writer);
    assert!(
        out.contains("GRANT INSERT, SELECT ON audit_digests TO writer"),
        "{out}"
    );
    pg.psql("errs", "GRANT INSERT, SELECT ON audit_digests TO writer");
    let out = serve_fails(dir.path(), &writer);
    assert!(
        out.contains("GRANT INSERT ON audit_rejects TO writer"),
        "{out}"
    );
    pg.psql("errs", "GRANT INSERT ON audit_rejects TO writer");
    // With these grants, the writer role can run the collector (and create partitions).
    let c = Collector::start(dir.path(), &["--database-url", &writer]);
    let (status, out) = c.stop();
    assert!(status.success(), "exit {status}:\n{out}");

    // A database migrated by a newer release.
    pg.psql(
        "errs",
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (999, 'from the future', true, '\\x00', 0)",
    );
    let out = serve_fails(dir.path(), &url);
    assert!(
        out.contains("schema version 999") && out.contains("knows only up to 4"),
        "{out}"
    );
    let (ok, out) = meshaudit(&["migrate", "--database-url", &url]);
    assert!(!ok && out.contains("schema version 999"), "{out}");

    // The right password gets past the login (and on to the next problem: no grants).
    let right = format!(
        "postgres://{PASSWORD_USER}:{PASSWORD}@127.0.0.1:{}/errs",
        pg.port
    );
    let out = serve_fails(dir.path(), &right);
    assert!(
        !out.contains("refused the login") && out.contains("GRANT"),
        "{out}"
    );
}

#[test]
fn sigterm_with_postgres_down_exits_zero_and_delivers_at_the_next_start() {
    let pg = PgCluster::start();
    let url = pg.create_db("drain");
    let dir = tempfile::tempdir().expect("tempdir");
    let args = [
        "--database-url",
        url.as_str(),
        "--migrate-on-start",
        "--shutdown-timeout-secs",
        "3",
    ];
    let c = Collector::start(dir.path(), &args);
    send(&c, vec![http_stream(0, 2, 25)]);
    wait_for("first 50 rows", Duration::from_secs(30), || {
        pg.count("drain", COUNT) == 50
    });
    pg.stop_server();
    send(&c, vec![http_stream(1000, 2, 25)]);
    let (status, out) = c.stop();
    assert!(status.success(), "exit {status}:\n{out}");
    assert!(out.contains("delivered at the next start"), "{out}");
    // The last line says how many records wait in the spool, not "stopped cleanly".
    assert!(
        out.contains("meshaudit stopped with 50 records in the spool that a sink has not taken; they will be delivered at the next start"),
        "{out}"
    );
    assert!(!out.contains("stopped cleanly"), "{out}");
    // Parquet drained everything.
    assert_eq!(ids_of(&read_rows(dir.path())).len(), 100);

    pg.start_server();
    let c = Collector::start(dir.path(), &args);
    wait_for("the other 50 rows", Duration::from_secs(30), || {
        pg.count("drain", COUNT) == 100
    });
    let (status, out) = c.stop();
    assert!(status.success(), "exit {status}:\n{out}");
    assert_eq!(pg.count("drain", DISTINCT), 100);
    // Replay went to Postgres only: Parquet had acknowledged everything before.
    assert_eq!(ids_of(&read_rows(dir.path())).len(), 100);
}

#[test]
fn a_long_outage_fills_the_spool_to_its_bound_and_slows_ingest_loudly() {
    let pg = PgCluster::start();
    let url = pg.create_db("spoolfull");
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Collector::start(
        dir.path(),
        &[
            "--database-url",
            &url,
            "--migrate-on-start",
            "--spool-segment-bytes",
            "65536",
            "--spool-max-bytes",
            "262144",
            "--parquet-max-file-age-secs",
            "1",
        ],
    );
    pg.stop_server();
    // About 1 MB of records: four times the bound.
    let url_als = c.als_url();
    let runtime = rt();
    let sender = runtime.spawn(async move { stream(&url_als, http_stream(0, 60, 25)).await });
    wait_for("the spool to report full", Duration::from_secs(30), || {
        c.metric("meshaudit_spool_full") == 1
    });
    assert!(
        !sender.is_finished(),
        "ingest must wait while the spool is full"
    );
    assert!(c.output().contains("SPOOL FULL"), "{}", c.output());
    assert!(c.metric("meshaudit_spool_bytes") >= 262_144);
    assert!(c.metric("meshaudit_spool_full_waits_total") >= 1);
    // Unready while full, so a Service sends new streams to other replicas; still alive.
    let readyz = http_get(c.admin_addr, "/readyz").expect("admin answers");
    assert_eq!(readyz.0, 503, "{readyz:?}");
    assert!(readyz.1.contains("spool full"), "{readyz:?}");
    assert_eq!(http_get(c.admin_addr, "/healthz").map(|r| r.0), Some(200));

    pg.start_server();
    runtime
        .block_on(sender)
        .expect("task")
        .expect("stream accepted once postgres is back");
    wait_for("all 1500 rows", Duration::from_secs(60), || {
        pg.count("spoolfull", COUNT) == 1500
    });
    wait_for("the spool to have room", Duration::from_secs(10), || {
        c.metric("meshaudit_spool_full") == 0
    });
    assert_eq!(http_get(c.admin_addr, "/readyz").map(|r| r.0), Some(200));
    let (status, out) = c.stop();
    assert!(status.success(), "exit {status}:\n{out}");
    assert_eq!(pg.count("spoolfull", DISTINCT), 1500);
    let parquet: BTreeSet<String> = ids_of(&read_rows(dir.path())).into_iter().collect();
    assert_eq!(parquet.len(), 1500);
}

#[test]
fn the_benchmark_hook_reports_both_rates_and_leaves_nothing_behind() {
    let pg = PgCluster::start();
    let url = pg.create_db("bench");
    let (ok, out) = meshaudit(&[
        "bench-postgres",
        "--database-url",
        &url,
        "--rows",
        "3000",
        "--batch-rows",
        "1000",
    ]);
    assert!(ok, "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with('{'))
        .expect("a JSON line");
    let report: Value = serde_json::from_str(line).expect("json");
    assert_eq!(report["rows"], 3000);
    for key in [
        "sink_rows_per_sec",
        "raw_copy_rows_per_sec",
        "sink_to_raw_ratio",
        "signed_sink_rows_per_sec",
        "signed_to_sink_ratio",
        "replay_rows_per_sec",
        "replay_to_raw_ratio",
    ] {
        assert!(
            report[key].as_f64().is_some_and(|v| v > 0.0),
            "{key}: {report}"
        );
    }
    assert_eq!(
        pg.count(
            "bench",
            "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'meshaudit_bench_%'"
        ),
        0,
        "the throwaway schema is dropped"
    );
}

#[test]
fn records_reach_a_postgres_that_accepts_tls_only() {
    let pg = PgCluster::start();
    let url = pg.create_db("tlsonly");
    let ca = pg.enable_tls();
    let dir = tempfile::tempdir().expect("tempdir");
    // Plaintext is refused by the server: the collector must say so at start-up.
    let (ok, out) = meshaudit(&[
        "migrate",
        "--database-url",
        &format!("{url}?sslmode=disable"),
    ]);
    assert!(!ok, "a plaintext connection must be refused:\n{out}");
    let tls_url = format!("{url}?sslmode=verify-full&sslrootcert={}", ca.display());
    let c = Collector::start(
        dir.path(),
        &["--database-url", &tls_url, "--migrate-on-start"],
    );
    rt().block_on(async {
        stream(
            &c.als_url(),
            vec![http_message(
                Some(identifier(NODE_ID, LOG_NAME)),
                (0..10).map(http_entry).collect(),
            )],
        )
        .await
        .expect("accepted")
    });
    wait_for("10 rows over TLS", Duration::from_secs(30), || {
        pg.count("tlsonly", COUNT) == 10
    });
    let (status, out) = c.stop();
    assert!(status.success(), "exit {status}:\n{out}");
}

/// The optimistic direct COPY is refused by a batch that repeats stored rows at its end (so the
/// COPY gets far before the refusal) or an entry within itself; the staging path must then
/// insert exactly the new rows once, and the batch digest must cover exactly those, in both
/// the signed sink (rows de-duplicated before the COPY) and the unsigned one (an in-batch
/// duplicate reaches the direct COPY and must send the batch to the fallback).
#[test]
fn a_partly_replayed_batch_inserts_and_digests_only_its_new_rows() {
    use std::sync::Arc;

    use meshaudit::record::AuditRecord;
    use meshaudit::store::digest::key::SigningKey;
    use meshaudit::store::digest::Signer;
    use meshaudit::store::metrics::StoreMetrics;
    use meshaudit::store::postgres::bench::synthetic_records;
    use meshaudit::store::postgres::url::DatabaseUrl;
    use meshaudit::store::postgres::{PostgresConfig, PostgresSink, Written};

    let pg = PgCluster::start();
    let url = pg.create_db("partly");
    let cfg = PostgresConfig {
        url: DatabaseUrl::new(url),
        migrate_on_start: true,
        retention_days: None,
    };
    let records = synthetic_records(40, 11);
    let r: Vec<&AuditRecord> = records.iter().collect();
    rt().block_on(async {
        let signer = Signer {
            key: Arc::new(SigningKey::generate().expect("key")),
            instance_id: "partly".into(),
        };
        let mut sink = PostgresSink::start_signed(&cfg, Arc::new(StoreMetrics::default()), signer)
            .await
            .expect("signed sink");
        let w = sink
            .write(r[..10].iter().copied())
            .await
            .expect("new batch");
        assert_eq!(
            w,
            Written {
                inserted: 10,
                duplicates: 0
            }
        );
        // Ten new rows, then one of them again and two rows stored by the first batch.
        let batch: Vec<&AuditRecord> = r[10..20]
            .iter()
            .copied()
            .chain([r[12], r[3], r[9]])
            .collect();
        let w = sink
            .write(batch.iter().copied())
            .await
            .expect("partly replayed");
        assert_eq!(
            w,
            Written {
                inserted: 10,
                duplicates: 3
            }
        );
        let w = sink.write(r[..20].iter().copied()).await.expect("replayed");
        assert_eq!(
            w,
            Written {
                inserted: 0,
                duplicates: 20
            }
        );
    });
    assert_eq!(pg.count("partly", COUNT), 20);
    assert_eq!(pg.count("partly", DISTINCT), 20);
    assert_eq!(
        pg.psql(
            "partly",
            "SELECT string_agg(record_count::text, ',' ORDER BY seq) FROM audit_digests \
             WHERE kind = 'batch'"
        ),
        "10,10",
        "one digest per batch that inserted rows, covering only those"
    );
    assert_eq!(
        pg.count(
            "partly",
            "SELECT count(DISTINCT u) FROM audit_digests, unnest(record_ids) u"
        ),
        20
    );

    rt().block_on(async {
        let mut sink = PostgresSink::start(&cfg, Arc::new(StoreMetrics::default()))
            .await
            .expect("unsigned sink");
        let batch = [r[20], r[21], r[20], r[22]];
        let w = sink
            .write(batch.iter().copied())
            .await
            .expect("in-batch dup");
        assert_eq!(
            w,
            Written {
                inserted: 3,
                duplicates: 1
            }
        );
        let batch = [r[23], r[24], r[5]];
        let w = sink
            .write(batch.iter().copied())
            .await
            .expect("stored at the end");
        assert_eq!(
            w,
            Written {
                inserted: 2,
                duplicates: 1
            }
        );
    });
    assert_eq!(pg.count("partly", COUNT), 25);
    assert_eq!(pg.count("partly", DISTINCT), 25);
}
