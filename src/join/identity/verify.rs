//! Checking a raw Entra token the collector sees itself (`identity_source = jwt_header`).
//!
//! Checks, in this order (the first failure names the status):
//! 1. Shape: three base64url parts, a JSON header, a JSON object payload → else `malformed`
//!    (no claims). A `crit` header is refused (`malformed`): no extension is understood.
//! 2. Algorithm: only `RS256`. `none`, `HS*` (the RSA-public-key-as-HMAC-secret confusion) and
//!    every other alg → `bad_signature`: no signature this collector trusts covers the claims.
//! 3. Issuer: exactly one of the configured tenants' v1 (`https://sts.windows.net/{tid}/`) or
//!    v2 (`https://login.microsoftonline.com/{tid}/v2.0`) issuers → else `untrusted_issuer`.
//!    No key is ever fetched for an issuer that is not trusted.
//! 4. Key: the `kid` in the issuer's key set → else `unknown_key` (and the caller may refresh
//!    the set and ask again).
//! 5. Signature → else `bad_signature`.
//! 6. Audience: one of the configured audiences (one trailing `/` ignored) → else
//!    `wrong_audience`.
//! 7. `exp` present → else `malformed` (Entra always sets it; a signed token without an expiry
//!    is not one this collector will call verified).
//! 8. Per record, against the request's `start_time` with the clock-skew allowance: `exp` →
//!    `expired`, `nbf` → `not_yet_valid`; else `verified`.
//!
//! A forwarded claims header (`payload_header`) has no signature to check: the proxy vouches
//! for it. It still gets steps 3 and 6 against the configuration (`untrusted_issuer` when
//! tenants are configured and `iss` is none of theirs, `wrong_audience` when `aud` names no
//! configured audience), so a forged or foreign header is never `proxy_verified`; then step 8.
//!
//! Steps 1–7 do not depend on time, so their outcome is cached by a keyed digest of the token
//! (BLAKE3 keyed with a random per-process key: the digest says nothing about the token outside
//! this process, and cannot be steered to collide). A token seen 100,000 times costs one
//! signature check; step 8 runs per record. Cached outcomes that depend on the keys are
//! re-judged when the keys change: "unknown key" when the key set's generation moves, "signed"
//! when its key was replaced or dropped. The cache is bounded by memory.

use std::fmt;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use quick_cache::sync::Cache;
use quick_cache::Weighter;

use super::claims::{audience_matches, Claims};
use super::jwks::{Key, KeySet};
use super::prepared::Prepared;
use super::token::{b64url, split, Parts, RawToken};
use crate::record::{text, values};
use crate::telemetry::Metrics;

/// A key set the join found lacking: the caller may refresh it and join the entry again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyNeed {
    pub(crate) set: usize,
}

/// What the time-independent checks concluded.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Signature, issuer and audience hold, with this key.
    Signed {
        set: usize,
        kid: String,
        key: Arc<Key>,
    },
    /// The `kid` was not in the set at this generation.
    UnknownKey { set: usize, generation: u64 },
    /// The proxy vouches for these claims (a forwarded claims header): only time is checked.
    ProxyVouched,
    /// Final whatever the time: `bad_signature`, `wrong_audience`, `untrusted_issuer`,
    /// `malformed`, `unknown_key` (no `kid`).
    Failed(&'static str),
}

/// One token's cached outcome: its claims, ready for the record, and the verdict.
#[derive(Debug)]
pub struct Checked {
    /// `None` when the payload could not be read at all.
    pub prepared: Option<Prepared>,
    pub verdict: Verdict,
    weight: u32,
}

impl Checked {
    fn new(prepared: Option<Prepared>, verdict: Verdict) -> Checked {
        let weight = 64 + prepared.as_ref().map_or(0, Prepared::approx_bytes);
        Checked {
            prepared,
            verdict,
            weight: u32::try_from(weight).unwrap_or(u32::MAX),
        }
    }
}

#[derive(Clone)]
struct ByBytes;

impl Weighter<[u8; 32], Arc<Checked>> for ByBytes {
    fn weight(&self, _key: &[u8; 32], val: &Arc<Checked>) -> u64 {
        u64::from(val.weight)
    }
}

/// What the caller writes into the record.
#[derive(Debug)]
pub struct Judged {
    pub checked: Arc<Checked>,
    pub status: &'static str,
    pub need: Option<KeyNeed>,
}

/// A trusted issuer and the key set that signs its tokens.
#[derive(Debug, Clone)]
pub struct TrustedIssuer {
    pub issuer: String,
    pub set: usize,
}

pub struct Verifier {
    issuers: Vec<TrustedIssuer>,
    pub(crate) audiences: Vec<String>,
    pub(crate) sets: Vec<Arc<KeySet>>,
    skew_us: i64,
    digest_key: [u8; 32],
    cache: Cache<[u8; 32], Arc<Checked>, ByBytes>,
    metrics: Arc<Metrics>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the digest key or cache contents.
        f.debug_struct("Verifier")
            .field("issuers", &self.issuers)
            .field("audiences", &self.audiences)
            .field("sets", &self.sets)
            .field("cached", &self.cache.len())
            .finish()
    }
}

/// Cache domains: a raw token and a claims header with equal bytes are different things.
const DOMAIN_TOKEN: u8 = b'T';
const DOMAIN_PAYLOAD: u8 = b'P';

impl Verifier {
    pub fn new(
        issuers: Vec<TrustedIssuer>,
        audiences: Vec<String>,
        sets: Vec<Arc<KeySet>>,
        skew_secs: u64,
        cache_bytes: u64,
        metrics: Arc<Metrics>,
    ) -> Verifier {
        let cache_bytes = cache_bytes.max(1 << 16);
        Verifier {
            issuers,
            audiences,
            sets,
            skew_us: i64::try_from(skew_secs.saturating_mul(1_000_000)).unwrap_or(i64::MAX),
            digest_key: rand::random(),
            // ~2 KiB per cached token is typical for Entra tokens with a few groups.
            cache: Cache::with_weighter(
                (cache_bytes / 2048).max(16) as usize,
                cache_bytes,
                ByBytes,
            ),
            metrics,
        }
    }

    fn digest(&self, domain: u8, bytes: &[u8]) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&self.digest_key);
        h.update(&[domain]);
        h.update(bytes);
        *h.finalize().as_bytes()
    }

    /// Judges a raw token for a request that started at `start_us`.
    pub fn check(&self, token: RawToken<'_>, start_us: i64) -> Judged {
        let digest = self.digest(DOMAIN_TOKEN, token.expose().as_bytes());
        if let Some(cached) = self.cache.get(&digest) {
            self.metrics.jwt_cache_hits.fetch_add(1, Relaxed);
            if let Some(judged) = self.judge(&cached, start_us) {
                return judged;
            }
        } else {
            self.metrics.jwt_cache_misses.fetch_add(1, Relaxed);
        }
        // A fresh outcome is stale only if the keys changed between checking and judging (a
        // refresh landing in between): check once more, then give up on the race.
        let mut last = None;
        for _ in 0..2 {
            let fresh = Arc::new(self.verify(token));
            self.cache.insert(digest, Arc::clone(&fresh));
            if let Some(judged) = self.judge(&fresh, start_us) {
                return judged;
            }
            last = Some(fresh);
        }
        let checked = last.unwrap_or_else(|| Arc::new(self.verify(token)));
        self.stale_fallback(checked)
    }

    /// Judges a forwarded claims header (base64url JSON) for a request at `start_us`.
    pub fn check_payload(&self, value: &[u8], start_us: i64) -> Judged {
        let digest = self.digest(DOMAIN_PAYLOAD, value);
        let checked = match self.cache.get(&digest) {
            Some(c) => c,
            None => {
                let claims = std::str::from_utf8(value)
                    .ok()
                    .and_then(b64url)
                    .and_then(|json| Claims::from_json(&json).ok());
                let checked = Arc::new(match claims {
                    Some(c) => {
                        let verdict = self.payload_verdict(&c);
                        Checked::new(
                            Some(Prepared::new(c, &self.audiences, text::owned)),
                            verdict,
                        )
                    }
                    None => Checked::new(None, Verdict::Failed(values::TOKEN_MALFORMED)),
                });
                self.cache.insert(digest, Arc::clone(&checked));
                checked
            }
        };
        self.judge(&checked, start_us)
            .unwrap_or_else(|| self.stale_fallback(checked))
    }

    /// A forwarded claims header is vouched for by the proxy that wrote it, but only for what
    /// this collector would accept itself: with tenants configured, its `iss` must be one of
    /// their issuers (else `untrusted_issuer`), and with audiences configured (always, with
    /// tenants), its `aud` must name one (else `wrong_audience`). A header forged by a client,
    /// or written for another API, is then never `proxy_verified`.
    fn payload_verdict(&self, claims: &Claims) -> Verdict {
        if !self.issuers.is_empty()
            && !claims
                .iss
                .as_deref()
                .is_some_and(|iss| self.issuers.iter().any(|t| t.issuer == iss))
        {
            return Verdict::Failed(values::TOKEN_UNTRUSTED_ISSUER);
        }
        if !self.audiences.is_empty() && !self.audience_ok(claims) {
            return Verdict::Failed(values::TOKEN_WRONG_AUDIENCE);
        }
        Verdict::ProxyVouched
    }

    /// One of the token's audiences is a configured one.
    fn audience_ok(&self, claims: &Claims) -> bool {
        claims
            .audiences()
            .any(|a| self.audiences.iter().any(|c| audience_matches(a, c)))
    }

    fn stale_fallback(&self, checked: Arc<Checked>) -> Judged {
        Judged {
            checked,
            status: values::TOKEN_UNKNOWN_KEY,
            need: None,
        }
    }

    /// The per-record judgement of a cached outcome, or `None` if the keys it depended on have
    /// changed since (verify again).
    fn judge(&self, checked: &Arc<Checked>, start_us: i64) -> Option<Judged> {
        let done = |status, need| {
            Some(Judged {
                checked: Arc::clone(checked),
                status,
                need,
            })
        };
        match &checked.verdict {
            Verdict::Failed(status) => done(status, None),
            Verdict::UnknownKey { set, generation } => {
                if self.sets[*set].keys().generation != *generation {
                    return None;
                }
                done(values::TOKEN_UNKNOWN_KEY, Some(KeyNeed { set: *set }))
            }
            Verdict::Signed { set, kid, key } => {
                let keys = self.sets[*set].keys();
                let current = keys.get(kid)?;
                if !Arc::ptr_eq(current, key) {
                    return None;
                }
                // A key that left its endpoint verifies only requests made before it left.
                if key
                    .retired_at_us
                    .is_some_and(|at| start_us > at.saturating_add(self.skew_us))
                {
                    return done(values::TOKEN_UNKNOWN_KEY, None);
                }
                let p = checked.prepared.as_ref()?;
                done(self.time_status(p, start_us, values::TOKEN_VERIFIED), None)
            }
            Verdict::ProxyVouched => {
                let p = checked.prepared.as_ref()?;
                done(
                    self.time_status(p, start_us, values::TOKEN_PROXY_VERIFIED),
                    None,
                )
            }
        }
    }

    fn time_status(&self, p: &Prepared, start_us: i64, ok: &'static str) -> &'static str {
        let micros = |s: i64| s.saturating_mul(1_000_000);
        if p.exp
            .is_some_and(|exp| start_us > micros(exp).saturating_add(self.skew_us))
        {
            values::TOKEN_EXPIRED
        } else if p
            .nbf
            .is_some_and(|nbf| start_us < micros(nbf).saturating_sub(self.skew_us))
        {
            values::TOKEN_NOT_YET_VALID
        } else {
            ok
        }
    }

    /// Steps 1–7 of the module docs.
    fn verify(&self, token: RawToken<'_>) -> Checked {
        let malformed = || Checked::new(None, Verdict::Failed(values::TOKEN_MALFORMED));
        let Some(parts) = split(token.expose()) else {
            return malformed();
        };
        let Some(header) = b64url(parts.header).and_then(|h| Header::parse(&h)) else {
            return malformed();
        };
        let Some(claims) = b64url(parts.payload).and_then(|p| Claims::from_json(&p).ok()) else {
            return malformed();
        };
        let verdict = self.verdict(&header, &parts, &claims);
        Checked::new(
            Some(Prepared::new(claims, &self.audiences, text::owned)),
            verdict,
        )
    }

    fn verdict(&self, header: &Header, parts: &Parts<'_>, claims: &Claims) -> Verdict {
        if header.crit {
            return Verdict::Failed(values::TOKEN_MALFORMED);
        }
        if header.alg.as_deref() != Some("RS256") {
            return Verdict::Failed(values::TOKEN_BAD_SIGNATURE);
        }
        let Some(set) = claims
            .iss
            .as_deref()
            .and_then(|iss| self.issuers.iter().find(|t| t.issuer == iss))
            .map(|t| t.set)
        else {
            return Verdict::Failed(values::TOKEN_UNTRUSTED_ISSUER);
        };
        let Some(kid) = header.kid.as_deref() else {
            // Refreshing cannot help a token that names no key.
            return Verdict::Failed(values::TOKEN_UNKNOWN_KEY);
        };
        let keys = self.sets[set].keys();
        let Some(key) = keys.get(kid) else {
            return Verdict::UnknownKey {
                set,
                generation: keys.generation,
            };
        };
        let Some(signature) = b64url(parts.signature) else {
            return Verdict::Failed(values::TOKEN_MALFORMED);
        };
        self.metrics.jwt_signature_checks.fetch_add(1, Relaxed);
        if !key.verify_rs256(parts.signed.as_bytes(), &signature) {
            return Verdict::Failed(values::TOKEN_BAD_SIGNATURE);
        }
        if !self.audience_ok(claims) {
            return Verdict::Failed(values::TOKEN_WRONG_AUDIENCE);
        }
        if claims.exp.is_none() {
            return Verdict::Failed(values::TOKEN_MALFORMED);
        }
        Verdict::Signed {
            set,
            kid: kid.to_owned(),
            key: Arc::clone(key),
        }
    }

    /// Tokens whose outcome is cached now (for tests and the benchmark).
    pub fn cached_tokens(&self) -> usize {
        self.cache.len()
    }
}

/// The JOSE header fields that matter.
struct Header {
    alg: Option<String>,
    kid: Option<String>,
    crit: bool,
}

impl Header {
    fn parse(json: &[u8]) -> Option<Header> {
        let v: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(json).ok()?;
        let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
        Some(Header {
            alg: s("alg"),
            kid: s("kid"),
            crit: v.contains_key("crit"),
        })
    }
}
