//! Parquet on object storage (`--parquet-url`, issue 14): Azure Blob / ADLS Gen2 (`az://`,
//! `abfs[s]://`), S3 and S3-compatible stores (`s3://`), Google Cloud Storage (`gs://`), through
//! the Apache Arrow `object_store` crate.
//!
//! The Parquet sink still writes, fsyncs and renames each file in the local data dir (the
//! staging area); [`ObjectTarget::sync`] then uploads every finished data file under the same
//! relative name (same Hive layout, same file names) with one PUT (an object is visible only
//! once complete), deletes the local copy after the store confirmed it, and uploads the digest
//! files (kept locally too: the chain continues from them). The pipeline acknowledges the spool
//! only up to what was durable *before* a sync that uploaded everything, so a store outage keeps
//! records in the spool, and a crash before an upload leaves a local file that the next start
//! uploads (its records are also written again from the spool: at least once, as for Parquet).
//!
//! Credentials come from each cloud's usual environment, through the builders' `from_env`
//! (Azure: `AZURE_STORAGE_ACCOUNT_NAME` + key / SAS / client secret / federated token file
//! (workload identity) / managed identity; AWS: `AWS_*` incl. web identity (IRSA); GCS:
//! `GOOGLE_SERVICE_ACCOUNT` / application credentials). Nothing of them is logged: errors show
//! the URL without its query and userinfo.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, ObjectStoreScheme, PutPayload};
use thiserror::Error;
use tokio::runtime::Handle;
use tracing::{info, warn};

use super::layout;

#[derive(Debug, Error)]
pub enum ObjectError {
    #[error("invalid --parquet-url (MESHAUDIT_PARQUET_URL, parquet_url) {url}: {reason}. Fix: use az://CONTAINER/PREFIX, abfss://CONTAINER@ACCOUNT.dfs.core.windows.net/PREFIX, s3://BUCKET/PREFIX or gs://BUCKET/PREFIX")]
    BadUrl { url: String, reason: String },
    #[error("cannot write to --parquet-url {url}: {reason}. Fix: check the store's credentials in the environment ({creds}) and that they may write (PUT) objects under the prefix")]
    NotWritable {
        url: String,
        creds: &'static str,
        reason: String,
    },
    #[error("uploading {rel} to {url} failed: {reason}")]
    Upload {
        rel: String,
        url: String,
        reason: String,
    },
    #[error("reading {path} for upload: {source}")]
    Local {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where finished Parquet files go.
pub struct ObjectTarget {
    store: Arc<dyn ObjectStore>,
    prefix: ObjPath,
    /// The URL without query or userinfo (a SAS token or key never shows).
    shown: String,
    creds: &'static str,
    /// The local data dir the Parquet sink finishes files in.
    staging: PathBuf,
    /// Digest files uploaded, with the (length, mtime) uploaded.
    digests: HashMap<PathBuf, (u64, Option<SystemTime>)>,
}

/// Error text of the store client without URL queries (a SAS token travels in one).
pub(crate) fn redact(text: &str) -> String {
    text.split(' ')
        .map(|w| match (w.contains("://"), w.find('?')) {
            (true, Some(i)) => format!("{}?[redacted]", &w[..i]),
            _ => w.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The HTTP status of a store error that says "later" (429 or 5xx), from its text.
///
/// object_store does not export its request error (`client::retry::RetryError` is crate
/// private), only its text: "... Server returned non-2xx status code: 503 Service Unavailable:
/// ...". tests/object_store.rs starts a collector behind a proxy answering 429, which fails if
/// that text changes.
fn throttled_status(text: &str) -> Option<u16> {
    let (_, rest) = text.split_once("status code: ")?;
    let status: u16 = rest.get(..3)?.parse().ok()?;
    (status == 429 || (500..600).contains(&status)).then_some(status)
}

/// The URL as it may be shown: scheme, host and path only.
fn shown(url: &url::Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.set_fragment(None);
    u.to_string()
}

impl ObjectTarget {
    /// True for a URL this module handles (a plain path stays local).
    pub fn is_object_url(s: &str) -> bool {
        [
            "az://", "abfs://", "abfss://", "s3://", "s3a://", "gs://", "azure://", "adl://",
        ]
        .iter()
        .any(|p| s.starts_with(p))
    }

    /// Builds the client from the URL and the environment's credentials.
    pub fn from_url(raw: &str, staging: &Path) -> Result<ObjectTarget, ObjectError> {
        let opened = open(raw)?;
        Ok(ObjectTarget {
            store: opened.store,
            prefix: opened.prefix,
            shown: opened.shown,
            creds: opened.creds,
            staging: staging.to_path_buf(),
            digests: HashMap::new(),
        })
    }

    pub fn shown(&self) -> &str {
        &self.shown
    }

    fn location(&self, rel: &str) -> ObjPath {
        rel.split('/')
            .filter(|p| !p.is_empty())
            .fold(self.prefix.clone(), |p, part| p.clone().join(part))
    }

    /// Start-up check: a PUT of a small object under `_meshaudit/`, so wrong credentials or a
    /// missing container fail now, naming the setting (PUT alone: write-only roles pass).
    ///
    /// A store that answers but throttles or fails on its side (429, 5xx, after the client's
    /// retries) is not a configuration error: the collector starts, says so, and its uploads
    /// are retried with back-off while the spool holds the records (a restart in the middle
    /// of a throttling episode would otherwise crash-loop). Any other failure (401/403, a
    /// missing bucket, no connection at all, e.g. a wrong endpoint) stops the start.
    pub async fn check_writable(&self) -> Result<(), ObjectError> {
        let loc = self.location("_meshaudit/write-check");
        let Err(e) = self
            .store
            .put(&loc, PutPayload::from_static(b"meshaudit write check\n"))
            .await
        else {
            return Ok(());
        };
        let reason = redact(&e.to_string());
        if let Some(status) = throttled_status(&reason) {
            warn!(parquet_url = %self.shown, status, error = %reason, "the store refused the start-up write check for now (throttling or a server error); starting anyway: uploads are retried with back-off while the spool holds the records");
            return Ok(());
        }
        Err(ObjectError::NotWritable {
            url: self.shown.clone(),
            creds: self.creds,
            reason,
        })
    }

    /// Uploads every finished data file under `data_dir` (then deletes it locally) and every
    /// new or changed digest file. Returns the number of data files uploaded. An error leaves
    /// what was not uploaded for the next call.
    pub fn sync(&mut self, rt: &Handle) -> Result<usize, ObjectError> {
        let data_dir = self.staging.clone();
        let data_dir = data_dir.as_path();
        let inv = layout::scan(data_dir).map_err(|source| ObjectError::Local {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let mut uploaded = 0;
        for chain in &inv.chains {
            for (_, path) in &chain.digests {
                let meta = std::fs::metadata(path).map_err(|source| ObjectError::Local {
                    path: path.clone(),
                    source,
                })?;
                let stamp = (meta.len(), meta.modified().ok());
                if self.digests.get(path) == Some(&stamp) {
                    continue;
                }
                self.put(data_dir, path, rt)?;
                self.digests.insert(path.clone(), stamp);
            }
        }
        for f in inv.data_files() {
            self.put(data_dir, &f.path, rt)?;
            std::fs::remove_file(&f.path).map_err(|source| ObjectError::Local {
                path: f.path.clone(),
                source,
            })?;
            uploaded += 1;
            info!(object = %format!("{}/{}", self.shown.trim_end_matches('/'), f.rel), "parquet file uploaded");
        }
        Ok(uploaded)
    }

    fn put(&self, data_dir: &Path, path: &Path, rt: &Handle) -> Result<(), ObjectError> {
        let rel = layout::relative(data_dir, path);
        let bytes = std::fs::read(path).map_err(|source| ObjectError::Local {
            path: path.to_path_buf(),
            source,
        })?;
        let loc = self.location(&rel);
        rt.block_on(self.store.put(&loc, PutPayload::from(bytes)))
            .map(|_| ())
            .map_err(|e| ObjectError::Upload {
                rel,
                url: self.shown.clone(),
                reason: redact(&e.to_string()),
            })
    }
}

/// How one request to the store is retried inside the client, before the error reaches the
/// pipeline (which then backs off on its own, up to `pipeline::MAX_BACKOFF`, and tries the
/// whole sync again while the spool holds the records).
///
/// object_store retries 5xx answers (S3 `503 SlowDown`, Azure `503 ServerBusy`), `429 Too Many
/// Requests`, `408`, connection errors and, for idempotent requests such as a PUT that
/// overwrites, timeouts; with exponential back-off and full jitter (each pause random between
/// `init_backoff` and `base` times the previous one, at most `max_backoff`). It does not read
/// `Retry-After`. At most `MAX_RETRIES` retries and no new retry after `RETRY_TIMEOUT`, so one
/// failing upload gives the driver its error within about `RETRY_TIMEOUT` plus one request
/// timeout, instead of object_store's defaults (10 retries, 3 minutes) during which the
/// Parquet driver is blocked and says nothing.
const MAX_RETRIES: usize = 5;
const RETRY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
const INIT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);
const MAX_CLIENT_BACKOFF: std::time::Duration = std::time::Duration::from_secs(5);

fn retry_config() -> object_store::RetryConfig {
    object_store::RetryConfig {
        backoff: object_store::BackoffConfig {
            init_backoff: INIT_BACKOFF,
            max_backoff: MAX_CLIENT_BACKOFF,
            // Worst case 0.1 + 0.3 + 0.9 + 2.7 + 5 s of pauses over five retries.
            base: 3.0,
        },
        max_retries: MAX_RETRIES,
        retry_timeout: RETRY_TIMEOUT,
    }
}

/// Client timeouts, unless the environment sets them (`{AWS,AZURE,GOOGLE}_TIMEOUT`,
/// `..._CONNECT_TIMEOUT`, object_store's own keys, e.g. `AWS_TIMEOUT=300s`): 5 s to connect,
/// 120 s for a whole request (a 128 MiB file, the default `--parquet-max-file-bytes`, in one
/// PUT needs about 1.1 MB/s), so a store that accepts a connection and then stalls fails the
/// attempt instead of holding the Parquet driver forever.
fn client_defaults(prefix: &str) -> Vec<(object_store::ClientConfigKey, &'static str)> {
    use object_store::ClientConfigKey::{ConnectTimeout, Timeout};
    [
        (ConnectTimeout, "CONNECT_TIMEOUT", "5s"),
        (Timeout, "TIMEOUT", "120s"),
    ]
    .into_iter()
    .filter(|(_, name, _)| std::env::var_os(format!("{prefix}{name}")).is_none())
    .map(|(key, _, value)| (key, value))
    .collect()
}

/// A store client opened from a URL (`--parquet-url` of serve, report and verify).
pub struct OpenedStore {
    pub store: Arc<dyn ObjectStore>,
    pub prefix: ObjPath,
    /// The URL without query or userinfo (a SAS token or key never shows).
    pub shown: String,
    /// The credential settings of that cloud, for error messages.
    pub creds: &'static str,
}

/// Builds the client from the URL and the environment's credentials (the builders' `from_env`):
/// the one place `serve`, `report` and `verify` parse an object-store URL.
pub fn open(raw: &str) -> Result<OpenedStore, ObjectError> {
    let bare = raw.split(['?', '#']).next().unwrap_or("").to_owned();
    let bad = |reason: String| ObjectError::BadUrl {
        url: bare.clone(),
        reason: redact(&reason.replace(raw, &bare)),
    };
    // reqwest is built without a TLS provider of its own: the process uses rustls on ring
    // (as for Postgres and the JWKS client). Already installed is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let url = url::Url::parse(raw).map_err(|e| bad(e.to_string()))?;
    let (scheme, path) = ObjectStoreScheme::parse(&url).map_err(|e| bad(e.to_string()))?;
    let prefix = ObjPath::parse(path).map_err(|e| bad(e.to_string()))?;
    let (store, creds): (Arc<dyn ObjectStore>, &'static str) = match scheme {
        ObjectStoreScheme::AmazonS3 => {
            let mut b = object_store::aws::AmazonS3Builder::from_env()
                .with_url(raw)
                .with_retry(retry_config());
            for (key, value) in client_defaults("AWS_") {
                b = b.with_config(object_store::aws::AmazonS3ConfigKey::Client(key), value);
            }
            (
                Arc::new(b.build().map_err(|e| bad(e.to_string()))?),
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_WEB_IDENTITY_TOKEN_FILE (IRSA), AWS_REGION, AWS_ENDPOINT for S3-compatible stores",
            )
        }
        ObjectStoreScheme::MicrosoftAzure => {
            let mut b = object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_url(raw)
                .with_retry(retry_config());
            for (key, value) in client_defaults("AZURE_") {
                b = b.with_config(object_store::azure::AzureConfigKey::Client(key), value);
            }
            (
                Arc::new(b.build().map_err(|e| bad(e.to_string()))?),
                "AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY, AZURE_STORAGE_SAS_KEY, AZURE_CLIENT_ID + AZURE_FEDERATED_TOKEN_FILE (workload identity), or a managed identity",
            )
        }
        ObjectStoreScheme::GoogleCloudStorage => {
            let mut b = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_url(raw)
                .with_retry(retry_config());
            for (key, value) in client_defaults("GOOGLE_") {
                b = b.with_config(object_store::gcp::GoogleConfigKey::Client(key), value);
            }
            (
                Arc::new(b.build().map_err(|e| bad(e.to_string()))?),
                "GOOGLE_SERVICE_ACCOUNT or GOOGLE_APPLICATION_CREDENTIALS",
            )
        }
        other => {
            return Err(bad(format!(
                "{other:?} is not an object store this collector writes to"
            )))
        }
    };
    Ok(OpenedStore {
        store,
        prefix,
        shown: shown(&url),
        creds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_and_server_errors_are_told_apart_from_configuration_errors() {
        let text = |status: &str| {
            format!("Generic S3 error: Error performing PUT http://127.0.0.1:1/lake/audit/_meshaudit/write-check in 9s, after 5 retries, max_retries: 5, retry_timeout: 30s  - Server returned non-2xx status code: {status}: <Error><Code>X</Code></Error>")
        };
        assert_eq!(
            throttled_status(&text("503 Service Unavailable")),
            Some(503)
        );
        assert_eq!(throttled_status(&text("429 Too Many Requests")), Some(429));
        assert_eq!(
            throttled_status(&text("500 Internal Server Error")),
            Some(500)
        );
        assert_eq!(throttled_status(&text("403 Forbidden")), None);
        assert_eq!(throttled_status(&text("404 Not Found")), None);
        assert_eq!(throttled_status(&text("400 Bad Request")), None);
        assert_eq!(
            throttled_status("Generic S3 error: Error performing PUT http://127.0.0.1:1/x in 9s - error sending request: Connection refused"),
            None
        );
    }

    #[test]
    fn urls_and_errors_never_show_a_sas_token_or_key() {
        let u = url::Url::parse("az://c/prefix?sv=2024&sig=SECRETSIG").expect("url");
        assert_eq!(shown(&u), "az://c/prefix");
        let e = redact("Error performing PUT http://127.0.0.1:1/acct/c/x?sv=1&sig=SECRETSIG in 1s");
        assert!(
            !e.contains("SECRETSIG") && e.contains("PUT http://127.0.0.1:1/acct/c/x?[redacted]"),
            "{e}"
        );
        let bad = ObjectTarget::from_url("ftp://host/x?sig=SECRETSIG", Path::new("/tmp"))
            .err()
            .expect("ftp is refused");
        let text = bad.to_string();
        assert!(
            text.contains("--parquet-url") && !text.contains("SECRETSIG"),
            "{text}"
        );
        assert!(ObjectTarget::is_object_url(
            "abfss://c@a.dfs.core.windows.net/p"
        ));
        assert!(!ObjectTarget::is_object_url("/var/lib/meshaudit"));
    }
}
