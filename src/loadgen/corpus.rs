//! The traffic `meshaudit loadgen` sends: realistic Istio-shaped ALS entries, built with Envoy's
//! full generated types and encoded ONCE, then batched into messages the way Envoy's gRPC access
//! logger batches them (flush at ~16 KiB, docs/wire-and-identity.md §1.2).
//!
//! Every entry carries a 12-character placeholder in `common_properties.stream_id`; the sender
//! overwrites it with a per-entry number while copying the message into the gRPC frame, so each
//! entry sent is distinct (distinct `record_id`) without encoding anything again.
//!
//! Shapes, per docs/wire-and-identity.md §2: a jwt_authn `payload` Struct of 16-19 Entra claims
//! (user and app-only tokens, 0-30 groups for a spread of sizes), a logged `authorization` header
//! holding a fake JWT-shaped token from a pool of distinct tokens, RBAC enforced and dry-run
//! metadata, Istio `downstream_peer` / `upstream_peer` filter state, peer and local SPIFFE SANs,
//! and for denied entries the matching `response_code_details` (RBAC, `[none]`, jwt_authn,
//! ext_authz + UAEX) or, for TCP, `connection_termination_details`.

use std::collections::HashMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::data::accesslog::v3 as al;
use envoy_types::pb::envoy::service::accesslog::v3::stream_access_logs_message::{
    HttpAccessLogEntries, Identifier, LogEntries, TcpAccessLogEntries,
};
use envoy_types::pb::envoy::service::accesslog::v3::StreamAccessLogsMessage;
use envoy_types::pb::google::protobuf::{
    value::Kind, Any, Duration, ListValue, Struct, Timestamp, UInt32Value, Value,
};
use prost::Message as _;

use crate::record::id::EntryType;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Overwritten per entry at send time; no generated field contains `#`.
pub const PLACEHOLDER: &[u8; 12] = b"############";
/// Envoy's default `buffer_size_bytes`: a logger flushes once its batch reaches this size.
pub const ENVOY_BUFFER_BYTES: usize = 16 * 1024;
/// Fewest distinct entries of each kind, so that the stream does not repeat a short cycle.
const MIN_ENTRIES: usize = 2048;
/// Most distinct tokens (each needs its own HTTP entry in the corpus, ~3 KB each).
pub const MAX_TOKENS: usize = 20_000;

const STRUCT_TYPE_URL: &str = "type.googleapis.com/google.protobuf.Struct";
const TENANT: &str = "11111111-2222-3333-4444-555555555555";
const AUDIENCE: &str = "7f1b2c3d-0000-4000-8000-00000000a001";

/// What to generate.
#[derive(Debug, Clone, Copy)]
pub struct CorpusSpec {
    pub tokens: usize,
    pub deny_ratio: f64,
    pub seed: u64,
    /// Unix seconds that start times are spread back from.
    pub now_unix: i64,
}

/// One pre-encoded `StreamAccessLogsMessage` (without identifier).
#[derive(Debug)]
pub struct Message {
    pub bytes: Bytes,
    /// Offsets of each entry's [`PLACEHOLDER`], ascending, one per entry.
    pub patches: Vec<usize>,
    pub denied: u32,
}

impl Message {
    pub fn entries(&self) -> u32 {
        // One placeholder per entry; a message holds far fewer than u32::MAX entries.
        self.patches.len() as u32
    }
}

/// One pre-encoded entry as the `log_entry` field of `HTTPAccessLogEntries` /
/// `TCPAccessLogEntries` (tag, length, entry): any run of them, behind the message's
/// `http_logs` / `tcp_logs` tag and length, is a message (what a paced stream sends when its
/// flush interval ends before its buffer is full).
#[derive(Debug)]
pub struct Entry {
    pub bytes: Bytes,
    /// Offset of the entry's [`PLACEHOLDER`] in `bytes`.
    pub patch: usize,
    pub denied: bool,
}

/// The pre-encoded messages: HTTP and TCP kept apart, as Envoy's HTTP and TCP loggers are.
/// `http` / `tcp` are full ~16 KiB batches (what a busy proxy sends); `http_entries` /
/// `tcp_entries` are the same entries one by one, in the same order, for messages of any size.
/// Both are empty for an OTLP corpus.
#[derive(Debug)]
pub struct Corpus {
    pub http: Vec<Message>,
    pub tcp: Vec<Message>,
    pub http_entries: Vec<Entry>,
    pub tcp_entries: Vec<Entry>,
    pub tokens: usize,
}

/// Signs the pool's tokens for real (RS256), for the raw-token run: the entries then carry only
/// the bearer token (no jwt_authn metadata), so the collector verifies each token itself.
pub struct RawTokenSigner {
    key: rsa::pkcs1v15::SigningKey<rsa::sha2::Sha256>,
    /// The JWKS document of the signing key (`kid` = [`RAW_TOKEN_KID`]).
    pub jwks: String,
}

/// The `kid` of the raw-token run's signing key.
pub const RAW_TOKEN_KID: &str = "meshaudit-loadgen-0";

impl RawTokenSigner {
    /// A fresh RSA-2048 key from the system's random source.
    pub fn generate() -> Result<RawTokenSigner, rsa::Error> {
        use rsa::traits::PublicKeyParts as _;
        let key = rsa::PrivateKey::new(&mut getrandom::SysRng, 2048)?;
        let public = key.to_public_key();
        let jwks = serde_json::json!({"keys": [{
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": RAW_TOKEN_KID,
            "n": URL_SAFE_NO_PAD.encode(public.n_bytes()),
            "e": URL_SAFE_NO_PAD.encode(public.e_bytes()),
        }]})
        .to_string();
        Ok(RawTokenSigner {
            key: rsa::pkcs1v15::SigningKey::new(key),
            jwks,
        })
    }

    fn sign(&self, signed_part: &str) -> String {
        use rsa::signature::{SignatureEncoding as _, Signer as _};
        URL_SAFE_NO_PAD.encode(self.key.sign(signed_part.as_bytes()).to_bytes())
    }
}

impl Corpus {
    pub fn generate(spec: &CorpusSpec) -> Corpus {
        Self::generate_with(spec, None)
    }

    /// Every entry of the corpus with its kind (HTTP messages first, then TCP), as the encoded
    /// entry bytes the join takes: what the micro-benchmarks feed each stage.
    pub fn log_entries(&self) -> Vec<(EntryType, Bytes)> {
        use crate::ingest::wire::{
            stream_access_logs_message::LogEntries, StreamAccessLogsMessage,
        };
        let mut out = Vec::new();
        for m in self.http.iter().chain(self.tcp.iter()) {
            // The corpus is generated by this module: it always decodes.
            match StreamAccessLogsMessage::decode(m.bytes.clone()).map(|msg| msg.log_entries) {
                Ok(Some(LogEntries::HttpLogs(h))) => {
                    out.extend(h.log_entry.into_iter().map(|e| (EntryType::Http, e)))
                }
                Ok(Some(LogEntries::TcpLogs(t))) => {
                    out.extend(t.log_entry.into_iter().map(|e| (EntryType::Tcp, e)))
                }
                Ok(None) | Err(_) => {}
            }
        }
        out
    }

    /// Like [`Corpus::generate`]; with `raw`, tokens are really signed and entries carry no
    /// jwt_authn metadata (only the `authorization` header identifies the caller).
    pub fn generate_with(spec: &CorpusSpec, raw: Option<&RawTokenSigner>) -> Corpus {
        let mut g = Gen::new(spec);
        g.raw = raw;
        let tokens: Vec<Token> = (0..spec.tokens.max(1)).map(|i| g.token(i)).collect();
        // One HTTP entry in ten is anonymous; the others use the tokens in turn, so every token
        // appears at least once.
        let http_n = MIN_ENTRIES.max(tokens.len() * 10 / 9 + 10);
        let mut denials = 0;
        let mut next_token = 0;
        let http: Vec<(al::HttpAccessLogEntry, bool)> = (0..http_n)
            .map(|i| {
                let denial = spread(i, spec.deny_ratio).then(|| {
                    denials += 1;
                    denials
                });
                let token = (i % 10 != 9).then(|| {
                    next_token += 1;
                    &tokens[(next_token - 1) % tokens.len()]
                });
                let entry = g.http_entry(i, token, denial);
                (entry, denial.is_some())
            })
            .collect();
        let tcp: Vec<(al::TcpAccessLogEntry, bool)> = (0..MIN_ENTRIES)
            .map(|i| {
                let denied = spread(i, spec.deny_ratio);
                (g.tcp_entry(i, denied), denied)
            })
            .collect();
        let http_entries = singles(&http);
        let tcp_entries = singles(&tcp);
        Corpus {
            http: batch(http, |log_entry| {
                LogEntries::HttpLogs(HttpAccessLogEntries { log_entry })
            }),
            tcp: batch(tcp, |log_entry| {
                LogEntries::TcpLogs(TcpAccessLogEntries { log_entry })
            }),
            http_entries,
            tcp_entries,
            tokens: tokens.len(),
        }
    }
}

/// True for entry `i` when entries `0..=i` should hold `round((i+1)·ratio)` denials: an exact,
/// evenly spread share rather than a random one.
fn spread(i: usize, ratio: f64) -> bool {
    let upto = |n: usize| (n as f64 * ratio).floor() as u64;
    upto(i + 1) > upto(i)
}

/// Each entry encoded on its own as field 1 (`log_entry`) of its entries message.
fn singles<E: prost::Message>(entries: &[(E, bool)]) -> Vec<Entry> {
    entries
        .iter()
        .map(|(entry, denied)| {
            let mut buf = Vec::with_capacity(entry.encoded_len() + 8);
            prost::encoding::message::encode(1, entry, &mut buf);
            let bytes = Bytes::from(buf);
            // Every generated entry carries exactly one placeholder (its stream_id).
            let patch = placeholders(&bytes).first().copied().unwrap_or(0);
            Entry {
                bytes,
                patch,
                denied: *denied,
            }
        })
        .collect()
}

/// Groups entries into messages as Envoy does: append until the batch reaches ~16 KiB.
fn batch<E: prost::Message>(
    entries: Vec<(E, bool)>,
    wrap: impl Fn(Vec<E>) -> LogEntries,
) -> Vec<Message> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut size = 0;
    let mut denied = 0;
    let mut flush = |current: &mut Vec<E>, denied: &mut u32| {
        if current.is_empty() {
            return;
        }
        let msg = StreamAccessLogsMessage {
            identifier: None,
            log_entries: Some(wrap(std::mem::take(current))),
        };
        let bytes = Bytes::from(msg.encode_to_vec());
        let patches = placeholders(&bytes);
        out.push(Message {
            bytes,
            patches,
            denied: std::mem::take(denied),
        });
    };
    for (entry, was_denied) in entries {
        size += entry.encoded_len();
        denied += u32::from(was_denied);
        current.push(entry);
        if size >= ENVOY_BUFFER_BYTES {
            flush(&mut current, &mut denied);
            size = 0;
        }
    }
    flush(&mut current, &mut denied);
    out
}

/// Offsets of every [`PLACEHOLDER`] in `bytes`, ascending.
pub(crate) fn placeholders(bytes: &[u8]) -> Vec<usize> {
    let mut at = Vec::new();
    let mut i = 0;
    while let Some(pos) = bytes[i..]
        .windows(PLACEHOLDER.len())
        .position(|w| w == PLACEHOLDER)
    {
        at.push(i + pos);
        i += pos + PLACEHOLDER.len();
    }
    at
}

/// The identifier a stream's first message carries, encoded as the bare field: protobuf
/// messages concatenate, so this prefix plus any pre-encoded message is a valid first message.
pub fn identifier_prefix(node_id: String, cluster: String, log_name: &str) -> Bytes {
    StreamAccessLogsMessage {
        identifier: Some(Identifier {
            node: Some(core::Node {
                id: node_id,
                cluster,
                ..Default::default()
            }),
            log_name: log_name.to_owned(),
        }),
        log_entries: None,
    }
    .encode_to_vec()
    .into()
}

struct Token {
    /// The whole `authorization` header value, rendered once: the pool is a pool of strings.
    bearer: String,
    claims: serde_json::Value,
}

/// Source workloads calling the `orders` workload: (namespace, service account).
const CALLERS: [(&str, &str); 8] = [
    ("frontend", "web"),
    ("frontend", "bff"),
    ("shop", "cart"),
    ("shop", "checkout"),
    ("payments", "ledger"),
    ("batch", "reconcile"),
    ("istio-system", "istio-ingressgateway-service-account"),
    ("partners", "edi-bridge"),
];

const USER_AGENTS: [&str; 5] = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36",
    "okhttp/4.12.0",
    "python-requests/2.32.3",
    "Go-http-client/2.0",
    "curl/8.7.1",
];

struct Gen<'a> {
    rng: StdRng,
    now: i64,
    raw: Option<&'a RawTokenSigner>,
}

impl Gen<'_> {
    fn new(spec: &CorpusSpec) -> Self {
        Gen {
            rng: StdRng::seed_from_u64(spec.seed),
            now: spec.now_unix,
            raw: None,
        }
    }

    fn hex(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| char::from(b"0123456789abcdef"[self.rng.random_range(0..16)]))
            .collect()
    }

    fn uuid(&mut self) -> String {
        format!(
            "{}-{}-4{}-8{}-{}",
            self.hex(8),
            self.hex(4),
            self.hex(3),
            self.hex(3),
            self.hex(12)
        )
    }

    fn b64(&mut self, n: usize) -> String {
        let bytes: Vec<u8> = (0..n).map(|_| self.rng.random()).collect();
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Token `i`: one of a few hundred identities, each token with its own `uti` and times, so
    /// every token string in the pool is distinct.
    fn token(&mut self, i: usize) -> Token {
        let identity = i % 400;
        let iat = self.now - self.rng.random_range(0..3000);
        let oid = format!("9e8d7c6b-0000-4000-8000-{identity:012x}");
        let azp = format!("2a3b4c5d-0000-4000-8000-{:012x}", identity % 17);
        let mut c = serde_json::Map::new();
        let mut put = |k: &str, v: serde_json::Value| {
            c.insert(k.to_owned(), v);
        };
        put("aud", AUDIENCE.into());
        put(
            "iss",
            format!("https://login.microsoftonline.com/{TENANT}/v2.0").into(),
        );
        put("iat", iat.into());
        put("nbf", iat.into());
        put("exp", (iat + 3600 + self.rng.random_range(0..1800)).into());
        put("aio", self.b64(60).into());
        put("azp", azp.into());
        put("oid", oid.clone().into());
        put("rh", format!("0.{}.", self.b64(40)).into());
        put("tid", TENANT.into());
        put("uti", self.b64(16).into());
        put("ver", "2.0".into());
        if identity.is_multiple_of(5) {
            // App-only (client credentials): roles, no scp, sub = oid.
            put("azpacr", "1".into());
            put("idtyp", "app".into());
            put("sub", oid.into());
            put("roles", serde_json::json!(["Orders.Read.All"]));
        } else {
            put("azpacr", "0".into());
            put("name", format!("User {identity}").into());
            put(
                "preferred_username",
                format!("user{identity}@contoso.example").into(),
            );
            put("sub", self.b64(32).into());
            put("scp", "Orders.Read Orders.Write".into());
            put("roles", serde_json::json!(["Orders.Approver"]));
            let groups: Vec<serde_json::Value> = (0..identity % 31)
                .map(|g| format!("5c6d7e8f-0000-4000-8000-{g:012x}").into())
                .collect();
            put("groups", groups.into());
        }
        let claims = serde_json::Value::Object(c);
        let kid = match self.raw {
            Some(_) => RAW_TOKEN_KID.to_owned(),
            None => self.b64(20),
        };
        let header = format!("{{\"typ\":\"JWT\",\"alg\":\"RS256\",\"kid\":\"{kid}\"}}");
        let signed_part = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims.to_string()),
        );
        // Fake JWT (real-looking header and claims, random signature of RS256 size), or a
        // really signed one for the raw-token run.
        let signature = match self.raw {
            Some(signer) => signer.sign(&signed_part),
            None => self.b64(256),
        };
        let bearer = format!("Bearer {signed_part}.{signature}");
        Token { bearer, claims }
    }

    fn client_ip(&mut self) -> String {
        // Documentation ranges: these are strings in a message, never contacted.
        format!("203.0.113.{}", self.rng.random_range(1..255))
    }

    fn pod_ip(&mut self) -> String {
        format!("198.51.100.{}", self.rng.random_range(1..255))
    }

    fn ms(&mut self, lo: i64, hi: i64) -> Duration {
        let micros = self.rng.random_range(lo * 1000..hi * 1000);
        Duration {
            seconds: micros / 1_000_000,
            nanos: ((micros % 1_000_000) * 1000) as i32,
        }
    }

    fn start_time(&mut self) -> Timestamp {
        Timestamp {
            seconds: self.now - self.rng.random_range(0..60),
            nanos: self.rng.random_range(0..1_000_000_000),
        }
    }

    fn peer(&mut self, ns: &str, workload: &str) -> Any {
        let fields: [(&str, String); 10] = [
            ("type", "deployment".into()),
            ("workload", workload.into()),
            (
                "name",
                format!("{workload}-{}-{}", self.hex(9), self.hex(5)),
            ),
            ("cluster", "Kubernetes".into()),
            ("namespace", ns.into()),
            ("service", workload.into()),
            ("revision", "v1".into()),
            ("app", workload.into()),
            ("version", "v1".into()),
            (
                "identity",
                format!("spiffe://cluster.local/ns/{ns}/sa/{workload}"),
            ),
        ];
        let s = Struct {
            fields: fields
                .into_iter()
                .map(|(k, v)| (k.to_owned(), string_value(v)))
                .collect(),
        };
        Any {
            type_url: STRUCT_TYPE_URL.into(),
            value: s.encode_to_vec(),
        }
    }

    fn tls(&mut self, peer: Option<(&str, &str)>) -> al::TlsProperties {
        let san = |uri: String| al::tls_properties::CertificateProperties {
            subject_alt_name: vec![al::tls_properties::certificate_properties::SubjectAltName {
                san: Some(
                    al::tls_properties::certificate_properties::subject_alt_name::San::Uri(uri),
                ),
            }],
            ..Default::default()
        };
        al::TlsProperties {
            tls_version: al::tls_properties::TlsVersion::TlSv13 as i32,
            tls_cipher_suite: Some(UInt32Value { value: 4865 }),
            tls_sni_hostname: "outbound_.8080_._.orders.shop.svc.cluster.local".into(),
            local_certificate_properties: Some(san(
                "spiffe://cluster.local/ns/shop/sa/orders".into()
            )),
            peer_certificate_properties: peer
                .map(|(ns, sa)| san(format!("spiffe://cluster.local/ns/{ns}/sa/{sa}"))),
            tls_session_id: self.hex(64),
            ja3_fingerprint: String::new(),
        }
    }

    fn common(&mut self, tcp: bool, caller: Option<(&str, &str)>) -> al::AccessLogCommon {
        let mut filter_state = HashMap::new();
        if let Some((ns, sa)) = caller {
            filter_state.insert("downstream_peer".to_owned(), self.peer(ns, sa));
        }
        filter_state.insert("upstream_peer".to_owned(), self.peer("shop", "orders"));
        let (client, port) = match caller {
            Some(_) => (self.pod_ip(), self.rng.random_range(30000..61000)),
            None => (self.client_ip(), self.rng.random_range(1024..65535)),
        };
        let stream_id = format!(
            "{}-{}-4{}-8{}-{}",
            self.hex(8),
            self.hex(4),
            self.hex(3),
            self.hex(3),
            std::str::from_utf8(PLACEHOLDER).unwrap_or_default()
        );
        al::AccessLogCommon {
            downstream_remote_address: Some(addr(client.clone(), port)),
            downstream_direct_remote_address: Some(addr(client, port)),
            downstream_local_address: Some(addr(self.pod_ip(), 8080)),
            tls_properties: caller.map(|c| self.tls(Some(c))),
            start_time: Some(self.start_time()),
            time_to_last_rx_byte: Some(self.ms(0, 2)),
            time_to_first_upstream_tx_byte: Some(self.ms(1, 3)),
            time_to_last_downstream_tx_byte: Some(self.ms(3, 250)),
            duration: Some(self.ms(3, 250)),
            upstream_cluster: if tcp {
                "outbound|5432||postgres.db.svc.cluster.local".into()
            } else {
                "inbound|8080||".into()
            },
            upstream_remote_address: Some(addr(self.pod_ip(), 8080)),
            upstream_local_address: Some(addr("127.0.0.6".into(), 40000)),
            route_name: if tcp { String::new() } else { "default".into() },
            filter_state_objects: filter_state,
            upstream_request_attempt_count: 1,
            stream_id,
            downstream_wire_bytes_sent: self.rng.random_range(200..40_000),
            downstream_wire_bytes_received: self.rng.random_range(200..8_000),
            access_log_type: if tcp {
                al::AccessLogType::TcpConnectionEnd as i32
            } else {
                al::AccessLogType::DownstreamEnd as i32
            },
            ..Default::default()
        }
    }

    fn path(&mut self, i: usize) -> String {
        match i % 7 {
            0 => format!("/orders/{}", self.rng.random_range(1..1_000_000)),
            1 => format!("/api/v1/orders/{}/items", self.uuid()),
            2 => format!("/orders?page={}&size=50", self.rng.random_range(1..40)),
            3 => {
                let len = self.rng.random_range(10..150);
                format!("/search?q={}&lang=en", self.b64(len))
            }
            4 => format!(
                "/oauth/callback?code={}&state={}",
                self.b64(48),
                self.hex(16)
            ),
            5 => "/healthz/ready".into(),
            _ => format!("/api/v1/customers/{}/orders", self.uuid()),
        }
    }

    /// HTTP entry `i`, anonymous without `token`; `denial` is its number among the denied
    /// entries, if it is denied.
    fn http_entry(
        &mut self,
        i: usize,
        token: Option<&Token>,
        denial: Option<usize>,
    ) -> al::HttpAccessLogEntry {
        let caller = (!i.is_multiple_of(5)).then(|| CALLERS[i % CALLERS.len()]);
        let mut common = self.common(false, caller);
        // Which kind of denial, evenly spread: 12/20 RBAC policy, 4/20 RBAC [none],
        // 3/20 jwt_authn, 1/20 ext_authz.
        let denied = denial.is_some();
        let deny_kind = denial.unwrap_or(0) % 20;
        let jwt_denied = denied && token.is_some() && (16..19).contains(&deny_kind);
        let mut metadata = HashMap::new();
        if let Some(token) = token.filter(|_| !jwt_denied && self.raw.is_none()) {
            metadata.insert(
                "envoy.filters.http.jwt_authn".to_owned(),
                Struct {
                    fields: [("payload".to_owned(), json_value(&token.claims))].into(),
                },
            );
        }
        let (code, details, rbac): (u32, String, Vec<(&str, String)>) = if !denied {
            let mut rbac = vec![
                ("enforced_engine_result", "allowed".to_owned()),
                (
                    "enforced_effective_policy_id",
                    format!("ns[shop]-policy[allow-callers]-rule[{}]", i % 3),
                ),
            ];
            match i % 10 {
                0 => rbac.extend([
                    (
                        "istio_dry_run_deny_shadow_engine_result",
                        "denied".to_owned(),
                    ),
                    (
                        "istio_dry_run_deny_shadow_effective_policy_id",
                        "ns[shop]-policy[deny-guests]-rule[0]".to_owned(),
                    ),
                ]),
                1..=3 => rbac.push((
                    "istio_dry_run_deny_shadow_engine_result",
                    "allowed".to_owned(),
                )),
                _ => {}
            }
            let code = [200, 200, 200, 201, 204, 404][i % 6];
            (code, "via_upstream".into(), rbac)
        } else if deny_kind < 12 {
            let id = "ns[shop]-policy[deny-contractors]-rule[0]";
            (
                403,
                format!("rbac_access_denied_matched_policy[{id}]"),
                vec![
                    ("enforced_engine_result", "denied".into()),
                    ("enforced_effective_policy_id", id.into()),
                ],
            )
        } else if jwt_denied {
            (
                401,
                "jwt_authn_access_denied{Jwt_is_expired}".into(),
                vec![],
            )
        } else if deny_kind < 19 {
            // Also the anonymous requests of the jwt_authn share: no token, no principal.
            (
                403,
                "rbac_access_denied_matched_policy[none]".into(),
                vec![("enforced_engine_result", "denied".into())],
            )
        } else {
            common.response_flags = Some(al::ResponseFlags {
                unauthorized_details: Some(al::response_flags::Unauthorized { reason: 1 }),
                ..Default::default()
            });
            (
                403,
                "ext_authz_denied".into(),
                vec![
                    ("istio_ext_authz_shadow_engine_result", "denied".into()),
                    (
                        "istio_ext_authz_shadow_effective_policy_id",
                        "istio-ext-authz-ns[shop]-policy[opa-check]-rule[0]".into(),
                    ),
                ],
            )
        };
        if !rbac.is_empty() {
            metadata.insert("envoy.filters.http.rbac".to_owned(), string_struct(rbac));
        }
        common.metadata = Some(core::Metadata {
            filter_metadata: metadata,
            ..Default::default()
        });
        if denied {
            common.upstream_cluster.clear();
            common.upstream_remote_address = None;
            common.upstream_local_address = None;
            common.upstream_request_attempt_count = 0;
            common.time_to_first_upstream_tx_byte = None;
        }
        let mut headers = HashMap::from([
            (
                "traceparent".to_owned(),
                format!("00-{}-{}-01", self.hex(32), self.hex(16)),
            ),
            ("x-ms-client-request-id".to_owned(), self.uuid()),
        ]);
        if let Some(token) = token {
            let oid = token.claims["oid"].as_str().unwrap_or_default();
            headers.insert("authorization".to_owned(), token.bearer.clone());
            headers.insert("x-entra-oid".to_owned(), oid.to_owned());
        }
        let body = if code == 204 || denied {
            0
        } else {
            self.rng.random_range(0..20_000)
        };
        al::HttpAccessLogEntry {
            common_properties: Some(common),
            protocol_version: if i % 5 == 4 {
                al::http_access_log_entry::HttpVersion::Http11 as i32
            } else {
                al::http_access_log_entry::HttpVersion::Http2 as i32
            },
            request: Some(al::HttpRequestProperties {
                request_method: [1, 1, 1, 3, 4, 5][i % 6],
                scheme: "https".into(),
                authority: "orders.shop.svc.cluster.local:8080".into(),
                path: self.path(i),
                user_agent: USER_AGENTS[i % USER_AGENTS.len()].into(),
                forwarded_for: self.client_ip(),
                request_id: self.uuid(),
                request_headers_bytes: self.rng.random_range(300..3_000),
                request_body_bytes: if i % 6 >= 3 {
                    self.rng.random_range(50..4_000)
                } else {
                    0
                },
                request_headers: headers,
                ..Default::default()
            }),
            response: Some(al::HttpResponseProperties {
                response_code: Some(UInt32Value { value: code }),
                response_headers_bytes: self.rng.random_range(100..600),
                response_body_bytes: if denied { 19 } else { body },
                response_code_details: details,
                ..Default::default()
            }),
        }
    }

    fn tcp_entry(&mut self, i: usize, denied: bool) -> al::TcpAccessLogEntry {
        let caller = CALLERS[i % CALLERS.len()];
        let mut common = self.common(true, Some(caller));
        let rbac = if denied {
            let id = "ns[db]-policy[deny-batch]-rule[0]";
            common.connection_termination_details =
                format!("rbac_access_denied_matched_policy[{id}]");
            common.upstream_cluster.clear();
            common.upstream_remote_address = None;
            vec![
                ("enforced_engine_result", "denied".to_owned()),
                ("enforced_effective_policy_id", id.to_owned()),
            ]
        } else {
            let mut rbac = vec![
                ("enforced_engine_result", "allowed".to_owned()),
                (
                    "enforced_effective_policy_id",
                    "ns[db]-policy[allow-app]-rule[0]".to_owned(),
                ),
            ];
            if i.is_multiple_of(10) {
                rbac.extend([
                    (
                        "istio_dry_run_deny_shadow_engine_result",
                        "denied".to_owned(),
                    ),
                    (
                        "istio_dry_run_deny_shadow_effective_policy_id",
                        "ns[db]-policy[deny-batch]-rule[0]".to_owned(),
                    ),
                ]);
            }
            rbac
        };
        common.metadata = Some(core::Metadata {
            filter_metadata: [("envoy.filters.network.rbac".to_owned(), string_struct(rbac))]
                .into(),
            ..Default::default()
        });
        al::TcpAccessLogEntry {
            common_properties: Some(common),
            connection_properties: Some(al::ConnectionProperties {
                received_bytes: if denied {
                    0
                } else {
                    self.rng.random_range(100..100_000)
                },
                sent_bytes: if denied {
                    0
                } else {
                    self.rng.random_range(100..1_000_000)
                },
            }),
        }
    }
}

fn addr(ip: String, port: u32) -> core::Address {
    core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address: ip,
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

fn string_value(s: String) -> Value {
    Value {
        kind: Some(Kind::StringValue(s)),
    }
}

fn string_struct(fields: Vec<(&str, String)>) -> Struct {
    Struct {
        fields: fields
            .into_iter()
            .map(|(k, v)| (k.to_owned(), string_value(v)))
            .collect(),
    }
}

/// JSON → `google.protobuf.Value`, as Envoy converts a JWT payload into dynamic metadata.
fn json_value(v: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    let kind = match v {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(*b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        J::String(s) => Kind::StringValue(s.clone()),
        J::Array(a) => Kind::ListValue(ListValue {
            values: a.iter().map(json_value).collect(),
        }),
        J::Object(o) => Kind::StructValue(Struct {
            fields: o.iter().map(|(k, v)| (k.clone(), json_value(v))).collect(),
        }),
    };
    Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::ingest::pbstruct::{StructView, Value as SValue};
    use crate::ingest::wire;
    use crate::join::{Joiner, StreamContext};
    use crate::record::id::EntryType;
    use crate::record::values;

    /// Decodes every generated entry through the collector's own join, with placeholders
    /// patched as the sender patches them.
    #[test]
    fn the_corpus_is_istio_shaped_and_joins_cleanly() {
        let spec = CorpusSpec {
            tokens: 50,
            deny_ratio: 0.1,
            seed: 9,
            now_unix: 1_772_446_504,
        };
        let corpus = Corpus::generate(&spec);
        let joiner = Joiner::default();
        let ctx = StreamContext::default();
        let mut record_ids = HashSet::new();
        let mut tokens = HashSet::new();
        let mut sizes = Vec::new();
        let (mut entries, mut denied_want, mut denied_got, mut with_peer) = (0, 0, 0, 0);
        let mut claim_counts = HashSet::new();
        let mut n = 0u64;
        for (kind, pool) in [
            (EntryType::Http, &corpus.http),
            (EntryType::Tcp, &corpus.tcp),
        ] {
            for msg in pool.iter() {
                assert_eq!(msg.entries() as usize, msg.patches.len());
                let mut patched = Vec::new();
                crate::loadgen::write_patched(&msg.bytes, &msg.patches, n, &mut patched);
                n += u64::from(msg.entries());
                let decoded = wire::StreamAccessLogsMessage::decode(Bytes::from(patched))
                    .expect("generated message decodes");
                assert!(decoded.identifier.is_none());
                let raw = match decoded.log_entries {
                    Some(wire::stream_access_logs_message::LogEntries::HttpLogs(h)) => {
                        assert_eq!(kind, EntryType::Http);
                        h.log_entry
                    }
                    Some(wire::stream_access_logs_message::LogEntries::TcpLogs(t)) => {
                        assert_eq!(kind, EntryType::Tcp);
                        t.log_entry
                    }
                    None => panic!("message without entries"),
                };
                assert_eq!(raw.len(), msg.patches.len());
                denied_want += msg.denied;
                for bytes in &raw {
                    entries += 1;
                    sizes.push(bytes.len());
                    let rec = joiner.join(&ctx, kind, bytes, 0).expect("joins");
                    // Patched placeholders make every entry, hence every record id, distinct.
                    assert!(record_ids.insert(rec.record_id.clone()));
                    denied_got += u32::from(rec.decision == values::DECISION_DENY);
                    with_peer += u32::from(rec.source_principal.is_some());
                    if kind == EntryType::Http {
                        let e = wire::HttpAccessLogEntry::decode(bytes.clone()).expect("entry");
                        let common = e.common_properties.expect("common");
                        if let Some(t) = e.request.as_ref().and_then(|r| {
                            crate::join::traffic::header(&r.request_headers, "authorization")
                        }) {
                            tokens.insert(t.clone());
                        }
                        if let Some(n) = claims(&common) {
                            claim_counts.insert(n);
                        }
                    }
                }
            }
        }
        assert_eq!(
            denied_got, denied_want,
            "every denied entry joins as a deny"
        );
        let expected_denied = (corpus.http.iter().map(|m| m.entries()).sum::<u32>() as f64
            * spec.deny_ratio)
            .floor() as u32
            + (MIN_ENTRIES as f64 * spec.deny_ratio).floor() as u32;
        assert_eq!(denied_want, expected_denied, "exact deny share per pool");
        assert_eq!(tokens.len(), spec.tokens, "every token of the pool is used");
        assert!(with_peer * 10 > entries * 7, "most entries are mTLS hops");
        assert!(
            claim_counts.iter().all(|n| (16..=19).contains(n)),
            "{claim_counts:?}"
        );
        let (min, max) = (sizes.iter().min(), sizes.iter().max());
        assert!(
            matches!((min, max), (Some(&lo), Some(&hi)) if hi > 3 * lo),
            "entry sizes spread: {min:?}..{max:?}"
        );
    }

    /// The raw-token corpus: no entry carries jwt_authn claims, and every token in it verifies
    /// against the signer's JWKS, so the collector's own check is what identifies callers.
    #[test]
    fn raw_token_corpus_carries_only_really_signed_tokens() {
        use crate::join::identity::{IdentityConfig, IdentityResolver};
        use crate::telemetry::Metrics;
        let signer = RawTokenSigner::generate().expect("key");
        let spec = CorpusSpec {
            tokens: 3,
            deny_ratio: 0.0,
            seed: 4,
            now_unix: 1_772_446_504,
        };
        let corpus = Corpus::generate_with(&spec, Some(&signer));
        let metrics = Metrics::new();
        let resolver = IdentityResolver::new(
            &IdentityConfig {
                entra_tenants: vec![TENANT.to_owned()],
                audiences: vec![AUDIENCE.to_owned()],
                ..IdentityConfig::default()
            },
            std::sync::Arc::clone(&metrics),
        )
        .expect("resolver");
        assert_eq!(
            resolver.preload_jwks(signer.jwks.as_bytes()).expect("jwks"),
            1
        );
        let joiner = Joiner::default().with_identity(resolver);
        let ctx = StreamContext::default();
        let (mut verified, mut with_token) = (0, 0);
        for msg in &corpus.http {
            let decoded =
                wire::StreamAccessLogsMessage::decode(msg.bytes.clone()).expect("decodes");
            let Some(wire::stream_access_logs_message::LogEntries::HttpLogs(h)) =
                decoded.log_entries
            else {
                panic!("http message");
            };
            for bytes in &h.log_entry {
                let e = wire::HttpAccessLogEntry::decode(bytes.clone()).expect("entry");
                assert_eq!(claims(e.common_properties.as_ref().expect("common")), None);
                let at = e
                    .common_properties
                    .as_ref()
                    .and_then(|c| c.start_time.as_ref())
                    .map_or(0, |t| t.seconds * 1_000_000);
                let rec = joiner
                    .join(&ctx, EntryType::Http, bytes, at)
                    .expect("joins");
                if rec.identity_source == values::SOURCE_JWT_HEADER {
                    with_token += 1;
                    verified += u32::from(rec.token_status == values::TOKEN_VERIFIED);
                }
            }
        }
        assert!(with_token > 1000, "{with_token}");
        assert_eq!(verified, with_token, "every raw token verifies");
        assert_eq!(
            metrics
                .jwt_signature_checks
                .load(std::sync::atomic::Ordering::Relaxed),
            3,
            "one signature check per distinct token"
        );
    }

    /// The number of jwt_authn payload claims, when present.
    fn claims(common: &wire::AccessLogCommon) -> Option<usize> {
        let md = common.metadata.as_ref()?;
        let ns = md
            .filter_metadata
            .iter()
            .find(|e| e.key == "envoy.filters.http.jwt_authn".as_bytes())?;
        match StructView::new(&ns.value).get("payload").ok()?? {
            SValue::Struct(p) => Some(p.entries().count()),
            _ => None,
        }
    }
}
