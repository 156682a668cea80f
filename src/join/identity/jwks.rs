//! Signing keys: fetched from JWKS endpoints off the join, cached, refreshed.
//!
//! One [`KeySet`] per endpoint URL. The join only reads a set's current [`KeyMap`] (an
//! `ArcSwap` load: no lock, no I/O). Fetching happens in tasks spawned here:
//!
//! - **Periodically** (`jwks_refresh_secs`, default 1 h, as Microsoft advises), and sooner after
//!   a failure (from `jwks_min_refresh_secs` doubling up to the period).
//! - **On an unknown `kid`**: at most one fetch per set in flight (single flight: every waiter
//!   subscribes to the fetch already running) and at most one started for unknown `kid`s per
//!   `jwks_min_refresh_secs` (default 30 s) per set, so a flood of tokens naming unknown keys
//!   costs one request per interval, never one per record. Start-up and scheduled fetches do
//!   not count against that limit: a key rotated in just after start-up is fetched at once.
//! - **Rollover**: a key that disappears from the endpoint is kept, marked retired at the moment
//!   the collector noticed, for [`RETIRED_KEY_RETENTION`]. It still verifies tokens of requests
//!   made *before* that moment (late entries, buffered streams) but not of requests made after
//!   it, so an emergency rotation (a leaked key) stops verifying new forgeries. A key that
//!   reappears is live again.
//! - **Failure**: a failed fetch (unreachable, non-200, unparsable, no usable RSA key) keeps the
//!   last good keys. A set that never loaded has no keys: its tokens are judged `unknown_key`.
//!
//! Only RSA keys usable for RS256 signatures are kept (`kty` = `RSA`, `use` absent or `sig`,
//! `alg` absent or `RS256`). The keys' optional `issuer` property is ignored (the token's issuer
//! is checked against the configured tenants instead).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::sha2::Sha256;
use rsa::signature::Verifier as _;
use rsa::BoxedUint;
use thiserror::Error;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::token::b64url;
use crate::telemetry::Metrics;

/// How long a key that left its endpoint is kept for requests made before it left. Entra
/// access tokens live 60–90 minutes, so two hours covers any token signed just before a roll.
pub const RETIRED_KEY_RETENTION: Duration = Duration::from_secs(2 * 3600);

/// Largest JWKS document accepted (Entra's is a few KiB).
const MAX_JWKS_BYTES: usize = 1 << 20;

/// One RS256 verification key.
#[derive(Clone)]
pub struct Key {
    verifying: VerifyingKey<Sha256>,
    n: Box<[u8]>,
    e: Box<[u8]>,
    /// When the collector noticed the key had left its endpoint (µs since the epoch).
    pub retired_at_us: Option<i64>,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("bits", &(self.n.len() * 8))
            .field("retired_at_us", &self.retired_at_us)
            .finish()
    }
}

impl Key {
    /// From a JWK's base64url `n` and `e`.
    pub fn from_components(n: &[u8], e: &[u8]) -> Option<Key> {
        let public = rsa::PublicKey::new(
            BoxedUint::from_be_slice_vartime(n),
            BoxedUint::from_be_slice_vartime(e),
        )
        .ok()?;
        Some(Key {
            verifying: VerifyingKey::new(public),
            n: n.into(),
            e: e.into(),
            retired_at_us: None,
        })
    }

    /// RSASSA-PKCS1-v1_5 with SHA-256 over `signed`.
    pub fn verify_rs256(&self, signed: &[u8], signature: &[u8]) -> bool {
        match Signature::try_from(signature) {
            Ok(sig) => self.verifying.verify(signed, &sig).is_ok(),
            Err(_) => false,
        }
    }

    fn same_material(&self, n: &[u8], e: &[u8]) -> bool {
        *self.n == *n && *self.e == *e
    }

    fn retired(&self, at_us: i64) -> Key {
        Key {
            verifying: self.verifying.clone(),
            n: self.n.clone(),
            e: self.e.clone(),
            retired_at_us: Some(at_us),
        }
    }
}

/// The keys of one endpoint at one moment. Replaced whole, never mutated.
#[derive(Debug, Default)]
pub struct KeyMap {
    /// Bumped whenever the keys change, so that a cached "unknown key" verdict is re-judged.
    pub generation: u64,
    keys: HashMap<String, Arc<Key>>,
}

impl KeyMap {
    pub fn get(&self, kid: &str) -> Option<&Arc<Key>> {
        self.keys.get(kid)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The map after a successful fetch of `fresh` at `now_us`, or `None` if nothing changed.
    /// Unchanged keys keep their `Arc`, so verdicts cached against them stay valid.
    fn merged(&self, fresh: Vec<(String, Key)>, now_us: i64) -> Option<KeyMap> {
        let mut changed = false;
        let mut keys = HashMap::with_capacity(fresh.len() + self.keys.len());
        for (kid, key) in fresh {
            match self.keys.get(&kid) {
                Some(old) if old.retired_at_us.is_none() && old.same_material(&key.n, &key.e) => {
                    keys.insert(kid, Arc::clone(old));
                }
                _ => {
                    changed = true;
                    keys.insert(kid, Arc::new(key));
                }
            }
        }
        let retention_us = RETIRED_KEY_RETENTION.as_micros() as i64;
        for (kid, old) in &self.keys {
            if keys.contains_key(kid) {
                continue;
            }
            match old.retired_at_us {
                None => {
                    changed = true;
                    keys.insert(kid.clone(), Arc::new(old.retired(now_us)));
                }
                Some(at) if now_us.saturating_sub(at) < retention_us => {
                    keys.insert(kid.clone(), Arc::clone(old));
                }
                Some(_) => changed = true,
            }
        }
        changed.then(|| KeyMap {
            generation: self.generation + 1,
            keys,
        })
    }
}

#[derive(Debug, Error)]
pub enum FetchError {
    #[error("request failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the key set is larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    #[error("not a JWKS document: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the key set has no usable RS256 key")]
    NoKeys,
}

/// Fetches JWKS documents over HTTP(S).
pub struct Fetcher {
    client: reqwest::Client,
    timeout: Duration,
}

impl fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fetcher")
            .field("timeout", &self.timeout)
            .finish()
    }
}

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("cannot set up TLS for signing key fetches: {0}. Fix: install the system CA certificates (e.g. the ca-certificates package) so the collector can check login.microsoftonline.com's certificate")]
    Tls(#[from] rustls::Error),
    #[error("cannot build the HTTP client for signing key fetches: {0}")]
    Client(#[from] reqwest::Error),
}

impl Fetcher {
    /// An HTTP client on rustls with the ring provider (the only TLS backend built in) and the
    /// platform's trust store, so a corporate TLS-inspecting proxy's CA works as it does for
    /// every other program on the host. `HTTPS_PROXY`/`NO_PROXY` are honoured. With
    /// `https_needed` false (every key URL is a plain-http mirror) no trust store is loaded, so
    /// an image without CA certificates still starts.
    pub fn new(timeout: Duration, https_needed: bool) -> Result<Fetcher, ClientError> {
        use rustls_platform_verifier::BuilderVerifierExt as _;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?;
        let tls = if https_needed {
            builder.with_platform_verifier()?.with_no_client_auth()
        } else {
            builder
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        };
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(timeout)
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::limited(3))
            .user_agent(concat!("meshaudit/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Fetcher { client, timeout })
    }

    pub async fn fetch(&self, url: &str) -> Result<Vec<(String, Key)>, FetchError> {
        let body = tokio::time::timeout(self.timeout, self.get(url))
            .await
            .map_err(|_| FetchError::Timeout(self.timeout))??;
        parse_jwks(&body)
    }

    async fn get(&self, url: &str) -> Result<Vec<u8>, FetchError> {
        let mut resp = self.client.get(url).send().await?.error_for_status()?;
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(FetchError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// The usable RS256 keys of a JWKS document, by `kid`.
pub fn parse_jwks(body: &[u8]) -> Result<Vec<(String, Key)>, FetchError> {
    #[derive(serde::Deserialize)]
    struct Jwks {
        keys: Vec<serde_json::Value>,
    }
    let doc: Jwks = serde_json::from_slice(body)?;
    let mut out = Vec::new();
    for k in &doc.keys {
        let field = |name: &str| k.get(name).and_then(serde_json::Value::as_str);
        let usable = field("kty") == Some("RSA")
            && field("use").is_none_or(|u| u == "sig")
            && field("alg").is_none_or(|a| a == "RS256");
        let (Some(kid), Some(n), Some(e)) = (field("kid"), field("n"), field("e")) else {
            continue;
        };
        if !usable {
            continue;
        }
        match (b64url(n), b64url(e)) {
            (Some(n), Some(e)) => match Key::from_components(&n, &e) {
                Some(key) => out.push((kid.to_owned(), key)),
                None => debug!(
                    kid,
                    "skipping a JWKS key that is not a valid RSA public key"
                ),
            },
            _ => debug!(kid, "skipping a JWKS key with bad base64url"),
        }
    }
    if out.is_empty() {
        return Err(FetchError::NoKeys);
    }
    Ok(out)
}

#[derive(Debug, Default)]
struct RefreshCtl {
    in_flight: bool,
    /// When the last fetch asked for by an unknown `kid` started: the rate limit applies to
    /// those only, so the start-up and scheduled fetches never delay a rotated key.
    last_on_demand: Option<Instant>,
    /// Consecutive failed fetches (0 after a success).
    failures: u32,
}

/// Why a fetch is wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// Start-up or the schedule.
    Scheduled,
    /// A token named a `kid` the set lacks; at most one such fetch per this interval.
    UnknownKid { min_interval: Duration },
}

/// The keys of one JWKS endpoint.
pub struct KeySet {
    pub url: String,
    keys: ArcSwap<KeyMap>,
    ctl: Mutex<RefreshCtl>,
    /// Sent (generation of fetch attempts) whenever a fetch ends, success or not.
    done: watch::Sender<u64>,
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySet")
            .field("url", &self.url)
            .field("keys", &self.keys.load().len())
            .finish()
    }
}

impl KeySet {
    pub fn new(url: String) -> Arc<KeySet> {
        Arc::new(KeySet {
            url,
            keys: ArcSwap::from_pointee(KeyMap::default()),
            ctl: Mutex::new(RefreshCtl::default()),
            done: watch::Sender::new(0),
        })
    }

    /// The keys in use now. Cheap; safe on the join's hot path.
    pub fn keys(&self) -> arc_swap::Guard<Arc<KeyMap>> {
        self.keys.load()
    }

    fn ctl(&self) -> std::sync::MutexGuard<'_, RefreshCtl> {
        self.ctl.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a fetch unless one is running, or (for an unknown `kid`) one was asked for by an
    /// unknown `kid` less than `min_interval` ago. Returns a receiver that changes when the
    /// running (or just started) fetch ends, or `None` when no fetch runs and none may start yet
    /// (nothing to wait for). Needs a tokio runtime.
    pub fn refresh(
        self: &Arc<Self>,
        fetcher: &Arc<Fetcher>,
        trigger: Trigger,
        metrics: &Arc<Metrics>,
    ) -> Option<watch::Receiver<u64>> {
        let mut ctl = self.ctl();
        if ctl.in_flight {
            return Some(self.done.subscribe());
        }
        if let Trigger::UnknownKid { min_interval } = trigger {
            if ctl
                .last_on_demand
                .is_some_and(|t| t.elapsed() < min_interval)
            {
                return None;
            }
            ctl.last_on_demand = Some(Instant::now());
        }
        ctl.in_flight = true;
        // Subscribed under the lock that the fetch takes to report its end: it cannot be missed.
        let rx = self.done.subscribe();
        drop(ctl);
        let (set, fetcher, metrics) = (Arc::clone(self), Arc::clone(fetcher), Arc::clone(metrics));
        tokio::spawn(async move {
            let result = fetcher.fetch(&set.url).await;
            set.finish(result, &metrics);
        });
        Some(rx)
    }

    fn finish(&self, result: Result<Vec<(String, Key)>, FetchError>, metrics: &Metrics) {
        let ok = match result {
            Ok(fresh) => {
                metrics.jwks_fetches.fetch_add(1, Relaxed);
                let now_us = chrono::Utc::now().timestamp_micros();
                let current = self.keys.load();
                if let Some(next) = current.merged(fresh, now_us) {
                    info!(url = %self.url, keys = next.len(), generation = next.generation, "signing keys updated");
                    self.keys.store(Arc::new(next));
                }
                true
            }
            Err(e) => {
                metrics.jwks_fetch_errors.fetch_add(1, Relaxed);
                warn!(url = %self.url, error = %e, keys_kept = self.keys.load().len(), "cannot fetch signing keys; keeping the last good set");
                false
            }
        };
        let mut ctl = self.ctl();
        ctl.in_flight = false;
        ctl.failures = if ok {
            0
        } else {
            ctl.failures.saturating_add(1)
        };
        self.done.send_modify(|n| *n += 1);
    }

    /// How long until the next scheduled fetch: the period after a success, a doubling back-off
    /// from `min_interval` after failures.
    fn next_delay(&self, period: Duration, min_interval: Duration) -> Duration {
        match self.ctl().failures {
            0 => period,
            n => min_interval
                .saturating_mul(1u32 << (n - 1).min(16))
                .min(period),
        }
    }

    /// Keeps the set fresh until `stop`.
    pub async fn keep_fresh(
        self: Arc<Self>,
        fetcher: Arc<Fetcher>,
        period: Duration,
        min_interval: Duration,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) {
        loop {
            let delay = self.next_delay(period, min_interval);
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
            if let Some(mut done) = self.refresh(&fetcher, Trigger::Scheduled, &metrics) {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = done.changed() => {}
                }
            }
        }
    }

    /// Merges `fresh` keys in as if fetched at `now_us`.
    pub(crate) fn install(&self, fresh: Vec<(String, Key)>, now_us: i64) {
        if let Some(next) = self.keys.load().merged(fresh, now_us) {
            self.keys.store(Arc::new(next));
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small valid RSA public key for map tests (no signing needed): n = a 1024-bit odd
    /// number is enough for `PublicKey::new`'s checks.
    pub(crate) fn dummy_key(seed: u8) -> Key {
        let mut n = vec![0xC5u8; 128];
        n[127] = seed | 1;
        Key::from_components(&n, &[1, 0, 1]).expect("valid test key")
    }

    #[test]
    fn parse_keeps_only_rs256_signing_keys() {
        let n = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            [0xC5u8; 128],
        );
        let doc = format!(
            r#"{{"keys":[
              {{"kty":"RSA","kid":"a","n":"{n}","e":"AQAB","use":"sig","x5t":"a","issuer":"https://login.microsoftonline.com/{{tenantid}}/v2.0"}},
              {{"kty":"RSA","kid":"b","n":"{n}","e":"AQAB","alg":"RS256"}},
              {{"kty":"RSA","kid":"enc","n":"{n}","e":"AQAB","use":"enc"}},
              {{"kty":"RSA","kid":"ps","n":"{n}","e":"AQAB","alg":"PS256"}},
              {{"kty":"EC","kid":"ec","crv":"P-256","x":"AA","y":"AA"}},
              {{"kty":"RSA","n":"{n}","e":"AQAB"}},
              {{"kty":"RSA","kid":"bad","n":"!!","e":"AQAB"}},
              {{"kty":"oct","kid":"hmac","k":"c2VjcmV0"}}
            ]}}"#
        );
        let keys = parse_jwks(doc.as_bytes()).expect("valid");
        let kids: Vec<&str> = keys.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(kids, ["a", "b"]);
        assert!(matches!(
            parse_jwks(br#"{"keys":[]}"#),
            Err(FetchError::NoKeys)
        ));
        assert!(matches!(parse_jwks(b"<html>"), Err(FetchError::Json(_))));
    }

    #[test]
    fn rollover_retires_then_drops_and_keeps_unchanged_arcs() {
        let hour_us = 3_600_000_000i64;
        let m0 = KeyMap::default();
        let m1 = m0
            .merged(
                vec![("k1".into(), dummy_key(1)), ("k2".into(), dummy_key(2))],
                0,
            )
            .expect("changed");
        assert_eq!(m1.generation, 1);
        // The same keys again: nothing changes, no new generation.
        assert!(m1
            .merged(
                vec![("k1".into(), dummy_key(1)), ("k2".into(), dummy_key(2))],
                1
            )
            .is_none());
        // k1 leaves, k3 arrives: k1 is retired, k2 keeps its Arc.
        let m2 = m1
            .merged(
                vec![("k2".into(), dummy_key(2)), ("k3".into(), dummy_key(3))],
                hour_us,
            )
            .expect("changed");
        assert_eq!(m2.get("k1").and_then(|k| k.retired_at_us), Some(hour_us));
        assert!(Arc::ptr_eq(
            m2.get("k2").expect("k2"),
            m1.get("k2").expect("k2")
        ));
        assert!(m2.get("k3").is_some_and(|k| k.retired_at_us.is_none()));
        // Within retention the retired key stays; past it, it is dropped.
        let fresh = || vec![("k2".into(), dummy_key(2)), ("k3".into(), dummy_key(3))];
        assert!(m2.merged(fresh(), 2 * hour_us).is_none());
        let m3 = m2.merged(fresh(), 4 * hour_us).expect("k1 dropped");
        assert!(m3.get("k1").is_none());
        // A retired key that comes back is live again.
        let m4 = m2
            .merged(vec![("k1".into(), dummy_key(1))], 2 * hour_us)
            .expect("changed");
        assert!(m4.get("k1").is_some_and(|k| k.retired_at_us.is_none()));
        // New material under an old kid replaces the key.
        let m5 = m3
            .merged(
                vec![("k2".into(), dummy_key(9)), ("k3".into(), dummy_key(3))],
                4 * hour_us,
            )
            .expect("changed");
        assert!(!Arc::ptr_eq(
            m5.get("k2").expect("k2"),
            m3.get("k2").expect("k2")
        ));
    }
}
