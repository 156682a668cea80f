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
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use object_store::path::Path as ObjPath;
use object_store::{
    MultipartUpload, ObjectStore, ObjectStoreExt, ObjectStoreScheme, PutPayload, WriteMultipart,
};
use thiserror::Error;
use tokio::runtime::Handle;
use tracing::{debug, info, info_span, warn, Instrument};

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

    /// Uploads one finished local file under its relative name: streamed from disk (see
    /// [`upload_file`]), so the memory it takes is bounded by a few parts, not the file's size.
    fn put(&self, data_dir: &Path, path: &Path, rt: &Handle) -> Result<(), ObjectError> {
        let rel = layout::relative(data_dir, path);
        let loc = self.location(&rel);
        let span = info_span!("object_upload", object = %rel);
        rt.block_on(upload_file(self.store.as_ref(), &loc, path, PART_BYTES).instrument(span))
            .map(|_| ())
            .map_err(|e| match e {
                UploadError::Local(source) => ObjectError::Local {
                    path: path.to_path_buf(),
                    source,
                },
                UploadError::Store(e) => ObjectError::Upload {
                    rel,
                    url: self.shown.clone(),
                    reason: redact(&e.to_string()),
                },
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
/// 120 s for a whole request (one request carries at most one `PART_BYTES` part, so that
/// allows a link as slow as ~70 KB/s), so a store that accepts a connection and then stalls fails the
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

/// Part size of a multipart upload. A file up to this size is one PUT; a larger one is streamed
/// from disk in parts of this size (S3 and GCS want at least 5 MiB for every part but the last).
pub(crate) const PART_BYTES: u64 = 8 << 20;

/// Parts of one upload in flight at once. With the part being read that bounds the memory of an
/// upload to `PARTS_IN_FLIGHT` parts (16 MiB), whatever `--parquet-max-file-bytes` is.
const PARTS_IN_FLIGHT: usize = 2;

/// S3's (and GCS's) limit of parts per upload: a file above `MAX_PARTS * PART_BYTES` (80 GiB)
/// gets bigger parts rather than a failing upload.
const MAX_PARTS: u64 = 10_000;

/// Why [`upload_file`] failed: reading the local file, or the store.
#[derive(Debug, Error)]
pub(crate) enum UploadError {
    #[error("reading the local file: {0}")]
    Local(std::io::Error),
    #[error("{0}")]
    Store(object_store::Error),
}

/// How a file went up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Uploaded {
    /// One PUT (the file was at most one part).
    Single,
    /// A completed multipart upload of this many parts.
    Multipart { parts: u64 },
}

/// Part size for a file of `len` bytes: `part_bytes`, or more when the file would need more than
/// [`MAX_PARTS`] parts (rounded up to a whole MiB).
fn part_size(len: u64, part_bytes: u64) -> u64 {
    if len.div_ceil(part_bytes) <= MAX_PARTS {
        part_bytes
    } else {
        len.div_ceil(MAX_PARTS).next_multiple_of(1 << 20)
    }
}

/// Uploads the file at `path` to `loc`. Up to `part_bytes` it is read and PUT at once; a larger
/// file is a multipart upload fed from disk one part at a time, at most [`PARTS_IN_FLIGHT`]
/// parts in flight (the store client retries each part on its own). The object becomes visible
/// only when the upload completes; any failure (a part refused, the local read failing, the
/// completion refused) aborts the upload, so neither a partial object nor orphan parts remain
/// (Azure cannot delete uncommitted blocks: they are never visible and expire after 7 days).
pub(crate) async fn upload_file(
    store: &dyn ObjectStore,
    loc: &ObjPath,
    path: &Path,
    part_bytes: u64,
) -> Result<Uploaded, UploadError> {
    let mut file = std::fs::File::open(path).map_err(UploadError::Local)?;
    let len = file.metadata().map_err(UploadError::Local)?.len();
    if len <= part_bytes {
        let mut bytes = Vec::with_capacity(len as usize);
        file.read_to_end(&mut bytes).map_err(UploadError::Local)?;
        store
            .put_opts(loc, PutPayload::from(bytes), Default::default())
            .await
            .map_err(UploadError::Store)?;
        return Ok(Uploaded::Single);
    }
    let part = part_size(len, part_bytes);
    let upload = store
        .put_multipart_opts(loc, Default::default())
        .await
        .map_err(UploadError::Store)?;
    let parts = stream_parts(upload, &mut file, len, part).await?;
    debug!(bytes = len, parts, "multipart upload completed");
    Ok(Uploaded::Multipart { parts })
}

/// Feeds `len` bytes of `file` into `upload` in parts of `part` bytes and completes it; aborts it
/// on any failure. Returns the number of parts.
async fn stream_parts(
    upload: Box<dyn MultipartUpload>,
    file: &mut std::fs::File,
    len: u64,
    part: u64,
) -> Result<u64, UploadError> {
    let mut writer = WriteMultipart::new_with_chunk_size(upload, part as usize);
    let mut left = len;
    let mut parts = 0;
    while left > 0 {
        // Each read is exactly one part: WriteMultipart sends it as is, without copying.
        let n = left.min(part);
        // Back-pressure first, so no more than PARTS_IN_FLIGHT parts are held at once.
        let step = match writer.wait_for_capacity(PARTS_IN_FLIGHT).await {
            Err(e) => Err(UploadError::Store(e)),
            Ok(()) => {
                let mut buf = vec![0; n as usize];
                file.read_exact(&mut buf)
                    .map(|()| buf)
                    .map_err(UploadError::Local)
            }
        };
        match step {
            Ok(buf) => {
                writer.put(Bytes::from(buf));
                left -= n;
                parts += 1;
            }
            Err(e) => {
                abort(writer).await;
                return Err(e);
            }
        }
    }
    // Sends nothing more (every read was a whole part), waits for the parts, completes; on a
    // failure it aborts the upload itself (and returns the abort's error if that fails too).
    writer.finish().await.map_err(UploadError::Store)?;
    Ok(parts)
}

/// Aborts a failed multipart upload; a failure to abort is logged (the store's lifecycle rule
/// for incomplete uploads is the backstop), the upload's own error is what the caller returns.
async fn abort(writer: WriteMultipart) {
    if let Err(e) = writer.abort().await {
        warn!(error = %redact(&e.to_string()), "aborting a failed multipart upload failed; its parts stay until the store's lifecycle rule for incomplete uploads removes them");
    }
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
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};

    use object_store::memory::InMemory;
    use object_store::PutResult;

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

    /// A multipart upload into an in-memory store that counts the parts in flight, can refuse
    /// one part, and records an abort.
    #[derive(Debug)]
    struct Probe {
        inner: Box<dyn MultipartUpload>,
        sent: usize,
        refuse_part: Option<usize>,
        in_flight: Arc<AtomicUsize>,
        max_in_flight: Arc<AtomicUsize>,
        aborted: Arc<AtomicBool>,
    }

    impl MultipartUpload for Probe {
        fn put_part(&mut self, data: PutPayload) -> object_store::UploadPart {
            self.sent += 1;
            if self.refuse_part == Some(self.sent) {
                return Box::pin(async {
                    Err(object_store::Error::Generic {
                        store: "probe",
                        source: "part refused".into(),
                    })
                });
            }
            let now = self.in_flight.fetch_add(1, SeqCst) + 1;
            self.max_in_flight.fetch_max(now, SeqCst);
            let in_flight = Arc::clone(&self.in_flight);
            let part = self.inner.put_part(data);
            Box::pin(async move {
                // A store takes its time: parts overlap as much as the writer lets them.
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                let r = part.await;
                in_flight.fetch_sub(1, SeqCst);
                r
            })
        }

        // What #[async_trait] expands to (the crate is not a dependency of this one).
        fn complete<'life0, 'async_trait>(
            &'life0 mut self,
        ) -> Pin<Box<dyn Future<Output = object_store::Result<PutResult>> + Send + 'async_trait>>
        where
            'life0: 'async_trait,
            Self: 'async_trait,
        {
            self.inner.complete()
        }

        fn abort<'life0, 'async_trait>(
            &'life0 mut self,
        ) -> Pin<Box<dyn Future<Output = object_store::Result<()>> + Send + 'async_trait>>
        where
            'life0: 'async_trait,
            Self: 'async_trait,
        {
            self.aborted.store(true, SeqCst);
            self.inner.abort()
        }
    }

    struct Run {
        result: Result<u64, UploadError>,
        stored: Option<Vec<u8>>,
        max_in_flight: usize,
        aborted: bool,
    }

    /// Streams `file` (claimed to be `len` bytes) in parts of `part` bytes into an in-memory
    /// store through a [`Probe`]; returns what the store holds afterwards.
    fn run(file: &Path, len: u64, part: u64, refuse_part: Option<usize>) -> Run {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let store = InMemory::new();
        let loc = ObjPath::from("dt=2026-03-02/hour=10/f.parquet");
        let (max_in_flight, aborted) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        rt.block_on(async {
            let inner = store.put_multipart(&loc).await.expect("begin");
            let probe = Probe {
                inner,
                sent: 0,
                refuse_part,
                in_flight: Arc::new(AtomicUsize::new(0)),
                max_in_flight: Arc::clone(&max_in_flight),
                aborted: Arc::clone(&aborted),
            };
            let mut f = std::fs::File::open(file).expect("open");
            let result = stream_parts(Box::new(probe), &mut f, len, part).await;
            let stored = match store.get(&loc).await {
                Ok(got) => Some(got.bytes().await.expect("bytes").to_vec()),
                Err(object_store::Error::NotFound { .. }) => None,
                Err(e) => panic!("{e}"),
            };
            Run {
                result,
                stored,
                max_in_flight: max_in_flight.load(SeqCst),
                aborted: aborted.load(SeqCst),
            }
        })
    }

    fn file_of(len: usize) -> (tempfile::TempDir, PathBuf, Vec<u8>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f.parquet");
        let bytes: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &bytes).expect("write");
        (dir, path, bytes)
    }

    #[test]
    fn a_file_streams_in_parts_with_at_most_two_in_flight_and_lands_whole() {
        let (_dir, path, bytes) = file_of(10 * 1000 + 123);
        let r = run(&path, bytes.len() as u64, 1000, None);
        assert_eq!(r.result.expect("uploaded"), 11);
        assert_eq!(
            r.stored.as_deref(),
            Some(&bytes[..]),
            "the object is the file"
        );
        assert_eq!(r.max_in_flight, PARTS_IN_FLIGHT, "parts overlap, bounded");
        assert!(!r.aborted);
    }

    #[test]
    fn a_refused_part_aborts_the_upload_and_leaves_no_object() {
        let (_dir, path, bytes) = file_of(10 * 1000);
        let r = run(&path, bytes.len() as u64, 1000, Some(3));
        assert!(
            matches!(r.result, Err(UploadError::Store(_))),
            "{:?}",
            r.result.err()
        );
        assert!(r.aborted, "the upload is aborted");
        assert_eq!(r.stored, None, "nothing under the final name");
    }

    #[test]
    fn a_local_read_failing_midway_aborts_the_upload_and_leaves_no_object() {
        // The file ends 500 bytes before the length the upload was planned for.
        let (_dir, path, bytes) = file_of(5 * 1000);
        let r = run(&path, bytes.len() as u64 + 500, 1000, None);
        assert!(
            matches!(r.result, Err(UploadError::Local(_))),
            "{:?}",
            r.result.err()
        );
        assert!(r.aborted, "the upload is aborted");
        assert_eq!(r.stored, None, "nothing under the final name");
    }

    #[test]
    fn small_files_are_one_put_and_huge_ones_get_bigger_parts_not_too_many() {
        let (_dir, path, bytes) = file_of(3000);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let store = InMemory::new();
        let loc = ObjPath::from("a/b.parquet");
        let how = rt
            .block_on(upload_file(&store, &loc, &path, 3000))
            .expect("put");
        assert_eq!(how, Uploaded::Single);
        let how = rt
            .block_on(upload_file(
                &store,
                &ObjPath::from("a/c.parquet"),
                &path,
                1000,
            ))
            .expect("multipart");
        assert_eq!(how, Uploaded::Multipart { parts: 3 });
        for name in ["a/b.parquet", "a/c.parquet"] {
            let got = rt
                .block_on(async { store.get(&ObjPath::from(name)).await?.bytes().await })
                .expect("get");
            assert_eq!(&got[..], &bytes[..], "{name}");
        }
        assert_eq!(part_size(128 << 20, PART_BYTES), PART_BYTES);
        let huge = 100 << 30; // 100 GiB: 8 MiB parts would be 12,800 of them
        let p = part_size(huge, PART_BYTES);
        assert!(
            p > PART_BYTES && huge.div_ceil(p) <= MAX_PARTS && p.is_multiple_of(1 << 20),
            "{p}"
        );
    }
}
