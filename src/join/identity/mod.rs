//! Identity: who made the request. Fills the Identity columns of docs/audit-record.md.
//!
//! # Where an identity comes from (first match wins)
//!
//! 1. **Proxy-verified claims** (`jwt_metadata`, `proxy_verified`): the jwt_authn dynamic
//!    metadata, `filter_metadata["envoy.filters.http.jwt_authn"]` → `payload` (Istio ≥ 1.21), or
//!    the older form keyed by the issuer (an entry whose key equals its Struct's `iss`). The
//!    proxy verified them for this very request, so time is not re-checked.
//! 2. **A raw bearer token** in a logged request header (`token_header`, default
//!    `authorization`; `Bearer ` prefix in any case) that the collector verifies itself
//!    (`jwt_header`; see [`verify`] for the checks and their order). A token that fails keeps
//!    its claims and the kind they describe; `token_status` says why it must not be trusted.
//! 3. **A proxy denial**: `jwt_authn_access_denied{...}` in `response_code_details` (see
//!    [`denial`]). The proxy left no claims: `token_status` comes from the reason. The caller is
//!    `workload`/`mtls` if an mTLS peer certificate identifies it (`workload`/`peer_metadata`
//!    if only Istio peer metadata does) — a certificate
//!    proves who connected even though the token failed — else `anonymous`/`none`. The contract
//!    describes the common gateway case (no peer certificate) as `none`/`anonymous`; calling an
//!    mTLS-authenticated caller anonymous would undercount workloads, so the peer wins.
//!    A raw token (2) wins over the denial: it gives the caller's claims and our own verdict.
//! 4. **A forwarded claims header** (`payload_header`, off by default): Istio's
//!    `outputPayloadToHeader`, base64url JSON, `identity_source = payload_header`. Its
//!    `token_status` is `proxy_verified` (the proxy that verified the token wrote it), but
//!    `untrusted_issuer` when tenants are configured and its `iss` is none of their issuers,
//!    `wrong_audience` when its `aud` names no configured audience, and
//!    `expired`/`not_yet_valid` when its `exp`/`nbf` contradict the request time: that header
//!    was then replayed, forged, or written for another API. Envoy does not promise to strip a client-supplied copy when a
//!    request carries no token, so name the header only where a proxy on the path always sets
//!    or removes it (e.g. a sidecar behind a gateway that runs jwt_authn for every route).
//! 5. **An mTLS peer** (`source_principal`, the peer certificate's URI SAN) → `workload`,
//!    `mtls`, `absent`; **Istio peer metadata alone** (`downstream_peer`'s workload, no
//!    certificate in the entry) → `workload`, `peer_metadata`, `absent`: the other proxy's
//!    claim, not a certificate. 6. Otherwise `anonymous`, `none`, `absent`.
//!
//! `groups_overage` is `false`/`true` whenever claims were read and NULL otherwise; every
//! claim-derived column is NULL when its claim is absent.
//!
//! # Keys, waiting, and what happens when the key endpoint is down
//!
//! The join never does I/O. When a raw token names a `kid` its issuer's key set lacks, the join
//! reports a [`KeyNeed`]; the stream task then calls [`IdentityResolver::await_keys`], which
//! starts (or joins) a single-flight refresh of that set — at most one per
//! `jwks_min_refresh_secs` (default 30 s) per set — and waits for it at most
//! `jwks_timeout_ms` (default 5 s); the entry is then joined again, and a `kid` still unknown is
//! `unknown_key`. While the endpoint is unreachable, the first such record waits at most that
//! timeout, later ones (inside the refresh interval) do not wait at all: every record is
//! written, with `unknown_key` for tokens no cached key can check, and never held back without
//! end. Cached keys survive failed fetches. See [`jwks`] for refresh and rollover.
//!
//! # Secrets
//!
//! Raw tokens are borrowed from the entry while checked and never stored, logged, or put in an
//! error; the verification cache is keyed by a keyed digest of the token. `token_id` (`uti`,
//! else `jti`) is the correlation handle.

pub mod claims;
pub mod classify;
pub mod denial;
pub mod directory;
pub mod jwks;
pub mod prepared;
pub mod token;
pub mod verify;

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::ingest::pbstruct::{StructError, StructView, Value};
use crate::ingest::wire::{AccessLogCommon, BytesEntry, HttpRequestProperties};
use crate::record::{text, values, AuditRecord, TextExt};
use crate::telemetry::Metrics;

use claims::Claims;
use directory::{Directory, DirectoryError, DirectoryWatch};
use jwks::{ClientError, FetchError, Fetcher, KeySet, Trigger};
use prepared::{write_directory_columns, Prepared};
use verify::{TrustedIssuer, Verifier};

pub use verify::KeyNeed;

pub const DEFAULT_TOKEN_HEADER: &str = "authorization";
pub const DEFAULT_CLOCK_SKEW_SECS: u64 = 60;
pub const DEFAULT_JWKS_REFRESH_SECS: u64 = 3600;
pub const DEFAULT_JWKS_MIN_REFRESH_SECS: u64 = 30;
pub const DEFAULT_JWKS_TIMEOUT_MS: u64 = 5000;
pub const DEFAULT_TOKEN_CACHE_MIB: u64 = 64;
/// How often the directory file is checked for changes.
pub const DIRECTORY_POLL: Duration = Duration::from_secs(5);

const JWT_AUTHN_NAMESPACE: &[u8] = b"envoy.filters.http.jwt_authn";

/// Validated identity settings (see `config.rs` for the flags).
#[derive(Debug, Clone, PartialEq)]
pub struct IdentityConfig {
    /// Entra tenant ids (lower-case GUIDs) whose v1 and v2 issuers are trusted.
    pub entra_tenants: Vec<String>,
    pub audiences: Vec<String>,
    /// Replaces every tenant's Entra keys endpoint.
    pub jwks_url: Option<String>,
    /// Lower-case header names that may carry a raw bearer token, in order.
    pub token_headers: Vec<String>,
    /// Lower-case header names that may carry forwarded claims (base64url JSON).
    pub payload_headers: Vec<String>,
    pub clock_skew: Duration,
    pub jwks_refresh: Duration,
    pub jwks_min_refresh: Duration,
    pub jwks_timeout: Duration,
    pub directory: Option<PathBuf>,
    pub token_cache_bytes: u64,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            entra_tenants: Vec::new(),
            audiences: Vec::new(),
            jwks_url: None,
            token_headers: vec![DEFAULT_TOKEN_HEADER.to_owned()],
            payload_headers: Vec::new(),
            clock_skew: Duration::from_secs(DEFAULT_CLOCK_SKEW_SECS),
            jwks_refresh: Duration::from_secs(DEFAULT_JWKS_REFRESH_SECS),
            jwks_min_refresh: Duration::from_secs(DEFAULT_JWKS_MIN_REFRESH_SECS),
            jwks_timeout: Duration::from_millis(DEFAULT_JWKS_TIMEOUT_MS),
            directory: None,
            token_cache_bytes: DEFAULT_TOKEN_CACHE_MIB << 20,
        }
    }
}

impl IdentityConfig {
    /// The trusted issuers and the key endpoint of each, one key set per distinct URL.
    fn issuers(&self) -> (Vec<TrustedIssuer>, Vec<Arc<KeySet>>) {
        let mut sets: Vec<Arc<KeySet>> = Vec::new();
        let mut issuers = Vec::new();
        for tid in &self.entra_tenants {
            let pairs = [
                (
                    format!("https://sts.windows.net/{tid}/"),
                    format!("https://login.microsoftonline.com/{tid}/discovery/keys"),
                ),
                (
                    format!("https://login.microsoftonline.com/{tid}/v2.0"),
                    format!("https://login.microsoftonline.com/{tid}/discovery/v2.0/keys"),
                ),
            ];
            for (issuer, entra_url) in pairs {
                let url = self.jwks_url.clone().unwrap_or(entra_url);
                let set = match sets.iter().position(|s| s.url == url) {
                    Some(i) => i,
                    None => {
                        sets.push(KeySet::new(url));
                        sets.len() - 1
                    }
                };
                issuers.push(TrustedIssuer { issuer, set });
            }
        }
        (issuers, sets)
    }
}

#[derive(Debug, Error)]
pub enum IdentityError {
    #[error("{0}. Fix: point --directory (MESHAUDIT_DIRECTORY) at a readable JSON snapshot (format in docs/audit-record.md)")]
    Directory(#[from] DirectoryError),
    #[error("{0}")]
    Client(#[from] ClientError),
}

/// Fills the Identity columns of records. Shared by every stream; cheap to call per record.
pub struct IdentityResolver {
    token_headers: Vec<String>,
    payload_headers: Vec<String>,
    verifier: Verifier,
    /// `None` when no tenant is configured: nothing to fetch.
    fetcher: Option<Arc<Fetcher>>,
    directory: Option<Arc<DirectoryWatch>>,
    jwks_url: Option<String>,
    refresh: Duration,
    min_refresh: Duration,
    key_wait: Duration,
    metrics: Arc<Metrics>,
}

impl fmt::Debug for IdentityResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityResolver")
            .field("token_headers", &self.token_headers)
            .field("payload_headers", &self.payload_headers)
            .field("verifier", &self.verifier)
            .field("directory", &self.directory)
            .finish_non_exhaustive()
    }
}

impl Default for IdentityResolver {
    /// No tenant, no directory: raw tokens are read but none is trusted.
    fn default() -> Self {
        Self::build(&IdentityConfig::default(), Metrics::new(), None, None)
    }
}

impl IdentityResolver {
    /// Builds the resolver: reads the directory snapshot and prepares the key fetcher. Does no
    /// network I/O; call [`IdentityResolver::start`] inside the runtime to load keys.
    pub fn new(cfg: &IdentityConfig, metrics: Arc<Metrics>) -> Result<Self, IdentityError> {
        let directory = match &cfg.directory {
            Some(path) => Some(Arc::new(DirectoryWatch::load(path)?)),
            None => None,
        };
        let fetcher = if cfg.entra_tenants.is_empty() {
            None
        } else {
            let https = cfg
                .jwks_url
                .as_deref()
                .is_none_or(|u| !u.starts_with("http://"));
            Some(Arc::new(Fetcher::new(cfg.jwks_timeout, https)?))
        };
        Ok(Self::build(cfg, metrics, fetcher, directory))
    }

    fn build(
        cfg: &IdentityConfig,
        metrics: Arc<Metrics>,
        fetcher: Option<Arc<Fetcher>>,
        directory: Option<Arc<DirectoryWatch>>,
    ) -> Self {
        let (issuers, sets) = cfg.issuers();
        IdentityResolver {
            token_headers: cfg.token_headers.clone(),
            payload_headers: cfg.payload_headers.clone(),
            verifier: Verifier::new(
                issuers,
                cfg.audiences.clone(),
                sets,
                cfg.clock_skew.as_secs(),
                cfg.token_cache_bytes,
                Arc::clone(&metrics),
            ),
            fetcher,
            directory,
            jwks_url: cfg.jwks_url.clone(),
            refresh: cfg.jwks_refresh,
            min_refresh: cfg.jwks_min_refresh,
            key_wait: cfg.jwks_timeout,
            metrics,
        }
    }

    /// Loads every key set (waiting at most the key timeout; a failure is logged and the
    /// collector starts anyway), then keeps keys fresh and the directory reloaded until `stop`.
    pub async fn start(&self, stop: &CancellationToken) {
        if let Some(url) = &self.jwks_url {
            if url.starts_with("http://") {
                warn!(jwks_url = %url, "signing keys are fetched over plain http: anyone on the path can substitute keys; use only for a local mirror");
            }
        }
        if let Some(fetcher) = &self.fetcher {
            let waits: Vec<_> = self
                .verifier
                .sets
                .iter()
                .filter_map(|s| s.refresh(fetcher, Trigger::Scheduled, &self.metrics))
                .collect();
            let all = futures_util::future::join_all(waits.into_iter().map(|mut rx| async move {
                let _ = rx.changed().await;
            }));
            if tokio::time::timeout(self.key_wait, all).await.is_err() {
                warn!(timeout = ?self.key_wait, "signing keys not loaded yet at start-up; tokens are judged unknown_key until they are");
            }
            for set in &self.verifier.sets {
                info!(url = %set.url, keys = set.keys().len(), "signing key set");
                tokio::spawn(Arc::clone(set).keep_fresh(
                    Arc::clone(fetcher),
                    self.refresh,
                    self.min_refresh,
                    Arc::clone(&self.metrics),
                    stop.clone(),
                ));
            }
        }
        if let Some(dir) = &self.directory {
            tokio::spawn(Arc::clone(dir).watch(
                DIRECTORY_POLL,
                Arc::clone(&self.metrics),
                stop.clone(),
            ));
        }
    }

    /// Refreshes the key set a join found lacking (single flight, rate limited) and waits for
    /// it at most the key timeout. `true` when a refresh finished in time: join the entry again.
    pub async fn await_keys(&self, need: KeyNeed) -> bool {
        let (Some(fetcher), Some(set)) = (&self.fetcher, self.verifier.sets.get(need.set)) else {
            return false;
        };
        let trigger = Trigger::UnknownKid {
            min_interval: self.min_refresh,
        };
        let Some(mut done) = set.refresh(fetcher, trigger, &self.metrics) else {
            return false;
        };
        self.metrics.jwks_key_waits.fetch_add(1, Relaxed);
        matches!(
            tokio::time::timeout(self.key_wait, done.changed()).await,
            Ok(Ok(()))
        )
    }

    /// Installs the keys of a JWKS document into every key set, as if just fetched. For
    /// benchmarks and tests; scheduled refreshes still replace them with the live keys.
    pub fn preload_jwks(&self, doc: &[u8]) -> Result<usize, FetchError> {
        let keys = jwks::parse_jwks(doc)?;
        let now_us = chrono::Utc::now().timestamp_micros();
        for set in &self.verifier.sets {
            set.install(keys.clone(), now_us);
        }
        Ok(keys.len())
    }

    /// The verifier, for tests and the benchmark (e.g. how many tokens are cached).
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// Fills the Identity columns of `rec`, whose Traffic columns are already filled. Reads
    /// no clock: time checks use `rec.start_time` (or, if the entry had none, `received_at`).
    pub fn fill(
        &self,
        rec: &mut AuditRecord,
        common: Option<&AccessLogCommon>,
        request: Option<&HttpRequestProperties>,
    ) -> Result<Option<KeyNeed>, StructError> {
        let dir_guard = self.directory.as_ref().map(|d| d.snapshot());
        let dir: Option<&Directory> = dir_guard.as_deref().map(|d| &**d);

        // 1. Claims the proxy verified.
        let metadata = common.and_then(|c| c.metadata.as_ref());
        if let Some(claims) = metadata
            .map(|m| jwt_metadata(&m.filter_metadata))
            .transpose()?
            .flatten()
        {
            let p = Prepared::new(claims, &self.verifier.audiences, text::copy);
            let (base, xms_mirid) = (p.base, p.xms_mirid);
            p.cols.write(rec);
            write_directory_columns(rec, base, xms_mirid, dir);
            set_source(
                rec,
                values::SOURCE_JWT_METADATA,
                values::TOKEN_PROXY_VERIFIED,
            );
            return Ok(None);
        }

        let headers: &[BytesEntry] = request.map_or(&[], |r| &r.request_headers);
        // Never the moment of ingestion, unless the entry has no time at all.
        let at = rec.start_time.unwrap_or(rec.received_at);

        // 2. A raw token the collector checks itself.
        if let Some(token) = token::find_bearer(headers, &self.token_headers) {
            let judged = self.verifier.check(token, at);
            self.write_judged(rec, &judged, dir, values::SOURCE_JWT_HEADER);
            return Ok(judged.need);
        }

        // 3. A token the proxy rejected.
        if let Some(status) = rec
            .response_code_details
            .text()
            .and_then(denial::token_status)
        {
            write_without_claims(rec, status);
            return Ok(None);
        }

        // 4. Claims a proxy forwarded in a header.
        if let Some(value) = token::find_header(headers, &self.payload_headers) {
            let judged = self.verifier.check_payload(value, at);
            self.write_judged(rec, &judged, dir, values::SOURCE_PAYLOAD_HEADER);
            return Ok(None);
        }

        // 5./6. An mTLS peer, or nobody.
        write_without_claims(rec, values::TOKEN_ABSENT);
        Ok(None)
    }

    fn write_judged(
        &self,
        rec: &mut AuditRecord,
        judged: &verify::Judged,
        dir: Option<&Directory>,
        source: &'static str,
    ) {
        match &judged.checked.prepared {
            Some(p) => {
                p.cols.write_cloned(rec);
                write_directory_columns(rec, p.base, p.xms_mirid, dir);
                set_source(rec, source, judged.status);
            }
            None => {
                // Nothing readable: the caller is whoever the connection says.
                rec.identity_kind = text::fixed(peer_kind(rec).0);
                set_source(rec, source, judged.status);
            }
        }
    }
}

fn set_source(rec: &mut AuditRecord, source: &'static str, status: &'static str) {
    rec.identity_source = text::fixed(source);
    rec.token_status = text::fixed(status);
}

/// No claims: a workload if the connection identifies one, else anonymous. Only a peer
/// certificate's URI SAN in the entry (`source_principal`) is `mtls`; Istio peer metadata
/// alone (`source_workload` from `downstream_peer`) is `peer_metadata`, a claim the other proxy
/// made, which reports and dashboards keep apart from certificate-backed identities.
fn write_without_claims(rec: &mut AuditRecord, status: &'static str) {
    let (kind, source) = peer_kind(rec);
    rec.identity_kind = text::fixed(kind);
    set_source(rec, source, status);
}

/// `identity_kind` and `identity_source` of a record without claims (see above).
fn peer_kind(rec: &AuditRecord) -> (&'static str, &'static str) {
    if rec.source_principal.is_some() {
        (values::KIND_WORKLOAD, values::SOURCE_MTLS)
    } else if rec.source_workload.is_some() {
        (values::KIND_WORKLOAD, values::SOURCE_PEER_METADATA)
    } else {
        (values::KIND_ANONYMOUS, values::SOURCE_NONE)
    }
}

/// The jwt_authn claims Struct: `payload`, or the older issuer-keyed entry.
fn jwt_metadata(filter_metadata: &[BytesEntry]) -> Result<Option<Claims<'_>>, StructError> {
    let Some(ns) = filter_metadata
        .iter()
        .rev()
        .find(|e| e.key == JWT_AUTHN_NAMESPACE)
    else {
        return Ok(None);
    };
    let s = StructView::new(&ns.value);
    if let Some(Value::Struct(payload)) = s.get("payload")? {
        return Claims::from_struct(payload).map(Some);
    }
    // Istio < 1.21 keyed the payload by the issuer; the proxy checked that the token's `iss`
    // equals the provider's issuer, so the key and the payload's `iss` agree.
    for entry in s.entries() {
        let (key, value) = entry?;
        if let Value::Struct(payload) = value {
            if payload.get_str("iss")?.map(str::as_bytes) == Some(key) {
                return Claims::from_struct(payload).map(Some);
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests;
