//! A small Microsoft Graph v1.0 client for the directory sync: a client-credentials token,
//! GETs that honour throttling (`429`/`503` with `Retry-After`, bounded), and delta rounds that
//! follow `@odata.nextLink` to the final `@odata.deltaLink`.
//!
//! The bearer token is sent only to the configured Graph base URL: a `nextLink`/`deltaLink`
//! pointing elsewhere is refused, not followed.

use std::time::{Duration, Instant};

use serde_json::Value;
use tracing::{debug, info, warn};

use super::auth::{form_encode, Credential, Secret};
use super::SyncError;

/// Largest response body accepted (a Graph page holds at most a few MB).
const MAX_BODY_BYTES: usize = 64 << 20;

/// What the client did, for the sync's summary (and the tests).
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Stats {
    pub token_requests: u64,
    pub graph_requests: u64,
    pub pages: u64,
    pub throttled: u64,
    pub waited_ms: u64,
}

pub struct Settings {
    pub token_url: String,
    pub graph_url: String,
    pub scope: String,
    pub client_id: String,
    pub credential: Credential,
    pub timeout: Duration,
    pub max_retries: u32,
    pub max_retry_after: Duration,
}

#[derive(Clone, Copy)]
enum Kind {
    Token,
    Graph,
}

pub struct Graph {
    http: reqwest::Client,
    s: Settings,
    token: Option<(Secret, Instant)>,
    pub stats: Stats,
}

/// Seconds of a `Retry-After` header (Graph sends delta-seconds).
fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    let v = resp.headers().get(reqwest::header::RETRY_AFTER)?;
    v.to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

async fn body(resp: reqwest::Response, what: &str) -> Result<Vec<u8>, SyncError> {
    let mut resp = resp;
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| SyncError::Http {
        what: what.to_owned(),
        reason: e.without_url().to_string(),
    })? {
        if out.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(SyncError::Http {
                what: what.to_owned(),
                reason: format!("response larger than {MAX_BODY_BYTES} bytes"),
            });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// `error`/`error_description` (token endpoint) or `error.code`/`error.message` (Graph), cut
/// short: enough to act on, never the request.
fn error_text(bytes: &[u8]) -> String {
    let Ok(v) = serde_json::from_slice::<Value>(bytes) else {
        return String::new();
    };
    let (code, msg) = match &v["error"] {
        Value::String(code) => (code.as_str(), v["error_description"].as_str()),
        e => (e["code"].as_str().unwrap_or(""), e["message"].as_str()),
    };
    let msg: String = msg
        .unwrap_or("")
        .lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(300)
        .collect();
    format!("{code}: {msg}")
}

impl Graph {
    pub fn new(s: Settings) -> Result<Graph, SyncError> {
        let fetcher_err = |e: String| SyncError::Http {
            what: "building the HTTP client".into(),
            reason: e,
        };
        use rustls_platform_verifier::BuilderVerifierExt as _;
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_platform_verifier())
            .map_err(|e| fetcher_err(e.to_string()))?
            .with_no_client_auth();
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(s.timeout)
            .timeout(s.timeout)
            // Never carry the bearer token through a redirect.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("meshaudit/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| fetcher_err(e.without_url().to_string()))?;
        Ok(Graph {
            http,
            s,
            token: None,
            stats: Stats::default(),
        })
    }

    /// Waits before retry `attempt` (1-based): the server's `Retry-After` when it gave one,
    /// else 1, 2, 4, ... s. Refuses waits longer than the configured bound.
    async fn back_off(&mut self, attempt: u32, hint: Option<Duration>) -> Result<(), SyncError> {
        let wait = hint.unwrap_or_else(|| Duration::from_secs(1 << (attempt - 1).min(6)));
        if wait > self.s.max_retry_after {
            return Err(SyncError::Throttled {
                retries: attempt - 1,
                wait_secs: wait.as_secs(),
            });
        }
        self.stats.throttled += 1;
        self.stats.waited_ms += wait.as_millis() as u64;
        warn!(
            attempt,
            wait_secs = wait.as_secs_f64(),
            "throttled by the server; waiting"
        );
        tokio::time::sleep(wait).await;
        Ok(())
    }

    fn retryable(status: reqwest::StatusCode) -> bool {
        matches!(status.as_u16(), 429 | 503 | 504)
    }

    /// Sends a request, retrying transport failures and throttling (429/503/504, waiting as
    /// `Retry-After` says) up to `max_retries` times; any other answer is returned.
    async fn send(
        &mut self,
        what: &str,
        kind: Kind,
        request: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, SyncError> {
        let mut attempt = 0;
        loop {
            match kind {
                Kind::Token => self.stats.token_requests += 1,
                Kind::Graph => self.stats.graph_requests += 1,
            }
            let hint = match request(&self.http).send().await {
                Ok(r) if Self::retryable(r.status()) && attempt < self.s.max_retries => {
                    retry_after(&r)
                }
                Ok(r) => return Ok(r),
                Err(e) if attempt < self.s.max_retries => {
                    debug!(what, error = %e.without_url(), "request failed; retrying");
                    None
                }
                Err(e) => {
                    return Err(SyncError::Http {
                        what: what.to_owned(),
                        reason: e.without_url().to_string(),
                    })
                }
            };
            attempt += 1;
            self.back_off(attempt, hint).await?;
        }
    }

    async fn token(&mut self) -> Result<Secret, SyncError> {
        if let Some((t, until)) = &self.token {
            if Instant::now() < *until {
                return Ok(t.clone());
            }
        }
        let auth = self
            .s
            .credential
            .form_fields(&self.s.client_id, &self.s.token_url)?;
        let mut fields: Vec<(&str, &str)> = vec![
            ("client_id", &self.s.client_id),
            ("scope", &self.s.scope),
            ("grant_type", "client_credentials"),
        ];
        fields.extend(auth.iter().map(|(k, v)| (*k, v.expose())));
        let form = Secret::new(form_encode(&fields));
        let what = "the token request";
        let url = self.s.token_url.clone();
        let resp = self
            .send(what, Kind::Token, |http| {
                http.post(&url)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(form.expose().to_owned())
            })
            .await?;
        let status = resp.status();
        let bytes = body(resp, what).await?;
        if !status.is_success() {
            return Err(SyncError::Token {
                status: status.as_u16(),
                detail: error_text(&bytes),
            });
        }
        let v: Value = serde_json::from_slice(&bytes).map_err(|_| SyncError::Token {
            status: status.as_u16(),
            detail: "the answer is not JSON".into(),
        })?;
        let token = v["access_token"].as_str().ok_or_else(|| SyncError::Token {
            status: status.as_u16(),
            detail: "the answer has no access_token".into(),
        })?;
        let expires = v["expires_in"].as_u64().unwrap_or(300);
        // Renewed a minute early, so that no request goes out with a token about to expire.
        let until = Instant::now() + Duration::from_secs(expires.saturating_sub(60));
        let t = Secret::new(token.to_owned());
        self.token = Some((t.clone(), until));
        info!(credential = self.s.credential.kind(), "got a Graph token");
        Ok(t)
    }

    /// The path of a URL, for messages (query strings hold delta tokens: kept out of logs).
    fn path_of(url: &str) -> String {
        url.split('?').next().unwrap_or("").to_owned()
    }

    /// GET one Graph page as JSON, retrying throttling and transient failures (bounded).
    async fn get_json(&mut self, url: &str) -> Result<Value, SyncError> {
        let inside = url
            .strip_prefix(self.s.graph_url.as_str())
            .is_some_and(|rest| rest.starts_with('/'));
        if !inside {
            return Err(SyncError::Graph {
                status: 0,
                path: Self::path_of(url),
                detail: format!(
                    "a paging link leads outside --graph-url {}; not followed",
                    self.s.graph_url
                ),
            });
        }
        let what = format!("GET {}", Self::path_of(url));
        let mut renewed = false;
        loop {
            let token = self.token().await?;
            let resp = self
                .send(&what, Kind::Graph, |http| {
                    http.get(url)
                        .header("authorization", format!("Bearer {}", token.expose()))
                        .header("accept", "application/json")
                })
                .await?;
            let status = resp.status();
            if status.as_u16() == 401 && !renewed {
                // The token may have been revoked or expired early: one fresh one.
                renewed = true;
                self.token = None;
                continue;
            }
            let bytes = body(resp, &what).await?;
            if status.as_u16() == 410 {
                return Err(SyncError::DeltaExpired);
            }
            if !status.is_success() {
                return Err(SyncError::Graph {
                    status: status.as_u16(),
                    path: Self::path_of(url),
                    detail: error_text(&bytes),
                });
            }
            self.stats.pages += 1;
            return serde_json::from_slice(&bytes).map_err(|e| SyncError::Graph {
                status: status.as_u16(),
                path: Self::path_of(url),
                detail: format!("not JSON: {e}"),
            });
        }
    }

    /// One delta round from `url` (a resource's first delta URL, or a stored deltaLink):
    /// every page's `value` items go to `each`; returns the new deltaLink.
    pub async fn delta(
        &mut self,
        url: &str,
        mut each: impl FnMut(&Value),
    ) -> Result<String, SyncError> {
        let mut url = url.to_owned();
        loop {
            let page = self.get_json(&url).await?;
            if let Some(items) = page["value"].as_array() {
                items.iter().for_each(&mut each);
            }
            if let Some(next) = page["@odata.nextLink"].as_str() {
                url = next.to_owned();
                continue;
            }
            if let Some(delta) = page["@odata.deltaLink"].as_str() {
                return Ok(delta.to_owned());
            }
            return Err(SyncError::Graph {
                status: 200,
                path: Self::path_of(&url),
                detail: "a delta page with neither @odata.nextLink nor @odata.deltaLink".into(),
            });
        }
    }

    pub fn graph_url(&self) -> &str {
        &self.s.graph_url
    }
}
