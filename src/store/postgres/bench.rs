//! The benchmark hook (issue #6): rows/s of the sink's write path (binary COPY into staging +
//! `INSERT ... ON CONFLICT DO NOTHING`, one transaction per batch) against a raw binary COPY of
//! the same rows straight into `audit_records`. Run by the hidden `meshaudit bench-postgres`.
//!
//! Everything happens in a private schema (`meshaudit_bench_<random>`) that is dropped at the
//! end, so it is safe on any database the role may create schemas in.

use std::sync::Arc;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use serde::Serialize;
use sqlx::{AssertSqlSafe, Connection};

use super::url::DatabaseUrl;
use super::{
    classify, connect, connect_options, raw_copy, schema, PgError, PostgresConfig, PostgresSink,
};
use crate::record::{string_list, values, AuditRecord};
use crate::store::digest::key::SigningKey;
use crate::store::digest::{DigestError, Signer};
use crate::store::metrics::StoreMetrics;

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub rows: usize,
    pub batch_rows: usize,
    pub sink_seconds: f64,
    pub sink_rows_per_sec: f64,
    pub raw_copy_seconds: f64,
    pub raw_copy_rows_per_sec: f64,
    /// sink / raw: the price of idempotence (and of one transaction per batch).
    pub sink_to_raw_ratio: f64,
    /// The sink's write path with tamper-evidence digests, as the collector runs it (hashing,
    /// INSERT ... RETURNING, the digest row; store::digest::postgres).
    pub signed_sink_rows_per_sec: f64,
    /// signed / unsigned sink: the price of the digests.
    pub signed_to_sink_ratio: f64,
    /// The same batches written again (a replay after a crash or an outage: every row already
    /// stored, so each batch's direct COPY is refused and it goes through staging + ON CONFLICT).
    pub replay_rows_per_sec: f64,
    /// replay / raw COPY: what the rare replayed batch costs.
    pub replay_to_raw_ratio: f64,
}

/// Records shaped like real traffic: a few hundred identities and destinations, realistic
/// string lengths, start times spread over two days (two partitions).
/// `format!` into record text.
macro_rules! text_format {
    ($($t:tt)*) => {
        bytes::Bytes::from(format!($($t)*))
    };
}

pub fn synthetic_records(n: usize, seed: u64) -> Vec<AuditRecord> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let base = 1_772_446_504_000_000i64;
    (0..n)
        .map(|i| {
            let user = rng.random_range(0..300u32);
            let ns = rng.random_range(0..20u32);
            let deny = rng.random_range(0..50u32) == 0;
            AuditRecord {
                record_id: text_format!("{:016x}{:016x}", seed, i as u64),
                start_time: Some(base + rng.random_range(0..172_800_000_000i64)),
                received_at: base + 172_800_000_000,
                duration_ms: Some(f64::from(rng.random_range(1..5000u32)) / 10.0),
                entry_kind: values::ENTRY_HTTP.into(),
                log_name: Some("http_envoy_accesslog".into()),
                node_id: Some(text_format!(
                    "sidecar~10.1.{ns}.{user}~app-{ns}.ns{ns}~ns{ns}.svc.cluster.local"
                )),
                mesh_cluster: Some("cluster.local".into()),
                protocol: Some("HTTP/2".into()),
                method: Some("POST".into()),
                scheme: Some("https".into()),
                authority: Some(text_format!("svc{ns}.ns{ns}.svc.cluster.local:8080")),
                path: Some(text_format!(
                    "/api/v1/orders/{}?code=REDACTED",
                    rng.random::<u32>()
                )),
                route_name: Some("default".into()),
                status_code: Some(if deny { 403 } else { 200 }),
                response_flags: Some(string_list(Vec::<String>::new())),
                response_code_details: Some("via_upstream".into()),
                request_bytes: Some(rng.random_range(0..4096)),
                response_bytes: Some(rng.random_range(0..65536)),
                request_id: Some(text_format!("{:032x}", rng.random::<u128>())),
                trace_id: Some(text_format!("{:032x}", rng.random::<u128>())),
                user_agent: Some("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36".into()),
                client_address: Some(text_format!("10.2.{ns}.{user}")),
                upstream_cluster: Some(text_format!(
                    "outbound|8080||svc{ns}.ns{ns}.svc.cluster.local"
                )),
                upstream_host: Some(text_format!("10.3.{ns}.7:8080")),
                source_principal: Some(text_format!("spiffe://cluster.local/ns/ns{ns}/sa/caller")),
                source_namespace: Some(text_format!("ns{ns}")),
                source_workload: Some("caller".into()),
                destination_principal: Some(text_format!(
                    "spiffe://cluster.local/ns/ns{ns}/sa/svc"
                )),
                destination_namespace: Some(text_format!("ns{ns}")),
                destination_service: Some(text_format!("svc{ns}.ns{ns}.svc.cluster.local")),
                identity_kind: values::KIND_USER.into(),
                identity_source: values::SOURCE_JWT_METADATA.into(),
                token_status: values::TOKEN_PROXY_VERIFIED.into(),
                tenant_id: Some("72f988bf-86f1-41af-91ab-2d7cd011db47".into()),
                object_id: Some(text_format!("00000000-0000-4000-8000-{user:012}")),
                user_principal: Some(text_format!("user{user}@contoso.com")),
                groups: Some(string_list([
                    "5c6d7e8f-0000-4000-8000-00000000b001",
                    "5c6d7e8f-0000-4000-8000-00000000b002",
                ])),
                scopes: Some(string_list(["orders.read", "orders.write"])),
                decision: if deny {
                    values::DECISION_DENY
                } else {
                    values::DECISION_ALLOW
                }
                .into(),
                decision_engine: values::ENGINE_RBAC.into(),
                policy_name: Some(text_format!("ns{ns}/allow-callers/0")),
                ..Default::default()
            }
        })
        .collect()
}

/// Runs both write paths over the same `rows` synthetic records in a throwaway schema.
pub async fn run(
    url: &DatabaseUrl,
    rows: usize,
    batch_rows: usize,
) -> Result<BenchReport, PgError> {
    let records = synthetic_records(rows, 7);
    let schema_name = format!("meshaudit_bench_{:08x}", rand::random::<u32>());
    let admin_opts = connect_options(url)?;
    let mut admin = connect(&admin_opts).await?;
    sqlx::query(AssertSqlSafe(format!("CREATE SCHEMA {schema_name}")))
        .execute(&mut admin)
        .await
        .map_err(|e| classify(e, "creating the bench schema"))?;
    let result = bench_in_schema(url, &schema_name, &records, batch_rows).await;
    let dropped = sqlx::query(AssertSqlSafe(format!("DROP SCHEMA {schema_name} CASCADE")))
        .execute(&mut admin)
        .await
        .map_err(|e| classify(e, "dropping the bench schema"));
    let _ = admin.close().await;
    let report = result?;
    dropped?;
    Ok(report)
}

async fn bench_in_schema(
    url: &DatabaseUrl,
    schema_name: &str,
    records: &[AuditRecord],
    batch_rows: usize,
) -> Result<BenchReport, PgError> {
    // Every connection of the run resolves unqualified names in the bench schema.
    let with_path = |u: &DatabaseUrl| {
        let sep = if u.expose().contains('?') { '&' } else { '?' };
        DatabaseUrl::new(format!(
            "{}{sep}options=-csearch_path%3D{schema_name}",
            u.expose()
        ))
    };
    let url = with_path(url);
    let mut conn = connect(&connect_options(&url)?).await?;
    schema::migrate(&mut conn).await?;
    let days = records
        .iter()
        .filter_map(|r| r.start_time)
        .map(|us| us.div_euclid(86_400_000_000));
    let mut seen = Vec::new();
    for d in days {
        if !seen.contains(&d) {
            schema::ensure_partition(&mut conn, d).await?;
            seen.push(d);
        }
    }

    let started = Instant::now();
    for chunk in records.chunks(batch_rows.max(1)) {
        raw_copy(&mut conn, "audit_records", chunk).await?;
    }
    let raw = started.elapsed().as_secs_f64();
    sqlx::query("TRUNCATE audit_records")
        .execute(&mut conn)
        .await
        .map_err(|e| classify(e, "truncating between runs"))?;

    let cfg = PostgresConfig {
        url,
        migrate_on_start: false,
        retention_days: None,
    };
    let mut sink = PostgresSink::start(&cfg, Arc::new(StoreMetrics::default())).await?;
    let started = Instant::now();
    for chunk in records.chunks(batch_rows.max(1)) {
        sink.write(chunk.iter()).await?;
    }
    let sink_secs = started.elapsed().as_secs_f64();
    drop(sink);
    sqlx::query("TRUNCATE audit_records")
        .execute(&mut conn)
        .await
        .map_err(|e| classify(e, "truncating between runs"))?;

    let key = SigningKey::generate().map_err(|e: DigestError| PgError::Query {
        context: "generating a benchmark key",
        reason: e.to_string(),
    })?;
    let signer = Signer {
        key: Arc::new(key),
        instance_id: "bench".into(),
    };
    let mut sink =
        PostgresSink::start_signed(&cfg, Arc::new(StoreMetrics::default()), signer).await?;
    let started = Instant::now();
    for chunk in records.chunks(batch_rows.max(1)) {
        sink.write(chunk.iter()).await?;
    }
    let signed_secs = started.elapsed().as_secs_f64();
    drop(sink);

    // Replay: every row is already stored; nothing may be inserted twice.
    let mut sink = PostgresSink::start(&cfg, Arc::new(StoreMetrics::default())).await?;
    let started = Instant::now();
    let mut inserted = 0;
    for chunk in records.chunks(batch_rows.max(1)) {
        inserted += sink.write(chunk.iter()).await?.inserted;
    }
    let replay_secs = started.elapsed().as_secs_f64();
    if inserted != 0 {
        return Err(PgError::Query {
            context: "replaying the benchmark batches",
            reason: format!("{inserted} rows inserted twice"),
        });
    }
    let _ = conn.close().await;
    let n = records.len() as f64;
    Ok(BenchReport {
        rows: records.len(),
        batch_rows,
        sink_seconds: sink_secs,
        sink_rows_per_sec: n / sink_secs,
        raw_copy_seconds: raw,
        raw_copy_rows_per_sec: n / raw,
        sink_to_raw_ratio: raw / sink_secs,
        signed_sink_rows_per_sec: n / signed_secs,
        signed_to_sink_ratio: sink_secs / signed_secs,
        replay_rows_per_sec: n / replay_secs,
        replay_to_raw_ratio: raw / replay_secs,
    })
}
