//! `meshaudit verify`: checks stored records against their signed digests
//! (docs/tamper-evidence.md) and reports every record or file modified, deleted, inserted or
//! reordered, every broken or missing chain link and every bad signature.
//!
//! Reads storage only; never the live pipeline. Exit status (main.rs, [`report::Verdict`]): 0
//! when everything checks out or the store is empty, 1 when anything was found, 2 when
//! verification itself could not run or there was nothing to verify (records but no digests).

pub mod chain;
pub mod parquet;
pub mod postgres;
pub mod report;

use std::path::PathBuf;

use thiserror::Error;

use crate::store::digest::key::PublicKey;
use crate::store::digest::DigestError;
use crate::store::postgres::url::DatabaseUrl;
use crate::store::postgres::PgError;

pub use report::{Finding, FindingKind, Report, Verdict};

#[derive(Debug, Clone, clap::Args)]
#[command(group = clap::ArgGroup::new("storage").required(true).multiple(true))]
pub struct VerifyOptions {
    /// Data dir of Parquet files and their `_digests/` (a copy of it is fine).
    #[arg(long, value_name = "DIR", group = "storage")]
    pub data_dir: Option<PathBuf>,
    /// Parquet files and their `_digests/` on object storage, the URL the collector writes to
    /// (`az://CONTAINER/PREFIX`, `abfss://...`, `s3://BUCKET/PREFIX`, `gs://BUCKET/PREFIX`);
    /// credentials from the environment as for `serve` (read and list rights are enough).
    #[arg(
        long,
        value_name = "URL",
        group = "storage",
        conflicts_with = "data_dir"
    )]
    pub parquet_url: Option<String>,
    /// Postgres holding audit_records and audit_digests (a read-only role is enough).
    #[arg(long, value_name = "URL", group = "storage", hide_env_values = true)]
    pub database_url: Option<DatabaseUrl>,
    /// The collector's public key: PEM (`meshaudit public-key` writes it) or the base64 it logs
    /// at start-up. Repeat for keys used before a rotation.
    #[arg(long, value_name = "FILE", required = true)]
    pub public_key: Vec<PathBuf>,
    /// Print the report as one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Error)]
pub enum VerifyError {
    #[error(transparent)]
    Key(#[from] DigestError),
    #[error(transparent)]
    Postgres(#[from] PgError),
    #[error("the database has no audit_digests table, so nothing there can be verified. Fix: run `meshaudit migrate` (schema 2) and let the collector sign new batches; if the table existed, someone dropped it")]
    NoDigestTable,
    #[error("the data dir {0} does not exist")]
    NoDataDir(PathBuf),
    #[error(transparent)]
    Store(#[from] crate::store::layout::MirrorError),
    #[error("verification failed: {0}")]
    Internal(String),
}

pub async fn run(opts: &VerifyOptions) -> Result<Report, VerifyError> {
    let keys = opts
        .public_key
        .iter()
        .map(|p| PublicKey::read(p))
        .collect::<Result<Vec<_>, _>>()?;
    let mut report = Report::default();
    // An object store is verified from a local copy of it (layout::Mirror), dropped at the end.
    let mirror = match &opts.parquet_url {
        Some(url) => Some(crate::store::layout::Mirror::fetch(url).await?),
        None => None,
    };
    let dir = match &mirror {
        Some(m) => Some(m.dir().to_path_buf()),
        None => opts.data_dir.clone(),
    };
    if let Some(dir) = dir {
        if !dir.is_dir() {
            return Err(VerifyError::NoDataDir(dir));
        }
        let keys = keys.clone();
        // File reads and hashing are blocking work.
        let (summary, r) = tokio::task::spawn_blocking(move || {
            let mut r = Report::default();
            let s = parquet::verify(&dir, &keys, &mut r);
            (s, r)
        })
        .await
        .map_err(|e| VerifyError::Internal(e.to_string()))?;
        report.parquet = Some(summary);
        report.chains.extend(r.chains);
        report.findings.extend(r.findings);
    }
    if let Some(url) = &opts.database_url {
        let summary = postgres::verify(url, &keys, &mut report).await?;
        report.postgres = Some(summary);
    }
    report.conclude();
    Ok(report)
}
