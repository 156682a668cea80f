//! The attribute contract (docs/otlp-attributes.md), in code: one OTLP `LogRecord` becomes the
//! same ALS subset entry (`HttpAccessLogEntry` / `TcpAccessLogEntry` + `Identifier`) that Envoy's
//! gRPC ALS logger would have sent for the request, and from there the ONE join
//! (`join::Joiner`) makes the record. Nothing here fills a record column: a mapping that drifted
//! from the ALS path would show as a field the join reads differently, which the real-Envoy test
//! (tests/python/test_envoy.py, OpenTelemetry logger beside the ALS logger) compares column by
//! column.
//!
//! Values: Envoy's OpenTelemetry logger sends every attribute as a `string_value`, and `-` for a
//! missing value (../docs/otlp-attributes.md); an OpenTelemetry Collector may have turned numbers
//! into `int_value`. Both are read; `-` and empty are absent.

use bytes::Bytes;

use super::subset::any_value::Value;
use super::subset::{AnyValue, KeyValue, LogRecord};
use crate::ingest::wire::{
    self, subject_alt_name::San, AccessLogCommon, Address, AnyEntry, BytesEntry,
    CertificateProperties, ConnectionProperties, HttpAccessLogEntry, HttpRequestProperties,
    HttpResponseProperties, Identifier, Node, ResponseFlags, SocketAddress, SubjectAltName,
    TcpAccessLogEntry, TlsProperties, UInt32Value,
};
use crate::record::id::EntryType;

/// The documented attribute names (docs/otlp-attributes.md). Change them only with that file.
pub mod keys {
    pub const NODE_ID: &str = "envoy.node.id";
    pub const NODE_CLUSTER: &str = "envoy.node.cluster";
    pub const LOG_NAME: &str = "envoy.log_name";
    pub const PROTOCOL: &str = "envoy.protocol";
    pub const METHOD: &str = "http.request.method";
    pub const SCHEME: &str = "url.scheme";
    pub const AUTHORITY: &str = "envoy.request.authority";
    pub const PATH: &str = "envoy.request.path";
    pub const USER_AGENT: &str = "user_agent.original";
    pub const REQUEST_ID: &str = "envoy.request_id";
    pub const BYTES_RECEIVED: &str = "envoy.bytes_received";
    pub const BYTES_SENT: &str = "envoy.bytes_sent";
    pub const STATUS_CODE: &str = "http.response.status_code";
    pub const RESPONSE_CODE_DETAILS: &str = "envoy.response_code_details";
    pub const RESPONSE_FLAGS: &str = "envoy.response_flags";
    pub const TERMINATION_DETAILS: &str = "envoy.connection_termination_details";
    pub const ROUTE_NAME: &str = "envoy.route_name";
    pub const UPSTREAM_CLUSTER: &str = "envoy.upstream.cluster";
    pub const UPSTREAM_HOST: &str = "envoy.upstream.host";
    pub const CLIENT_ADDRESS: &str = "client.address";
    pub const DURATION_NS: &str = "envoy.duration_ns";
    pub const PEER_URI_SAN: &str = "envoy.downstream.peer_uri_san";
    pub const LOCAL_URI_SAN: &str = "envoy.downstream.local_uri_san";
    /// `envoy.dynamic_metadata.<filter name>`: that filter's dynamic metadata as JSON.
    pub const DYNAMIC_METADATA_PREFIX: &str = "envoy.dynamic_metadata.";
    /// `envoy.filter_state.<key>`: a filter state object (Istio's `upstream_peer`,
    /// `downstream_peer`) as JSON.
    pub const FILTER_STATE_PREFIX: &str = "envoy.filter_state.";
    /// `http.request.header.<lower-case name>`: a request header the join reads (traceparent,
    /// the token and payload headers).
    pub const REQUEST_HEADER_PREFIX: &str = "http.request.header.";

    /// Envoy's built-in resource attributes (sent unless `disable_builtin_labels`).
    pub const RESOURCE_NODE_NAME: &str = "node_name";
    pub const RESOURCE_CLUSTER_NAME: &str = "cluster_name";
    pub const RESOURCE_LOG_NAME: &str = "log_name";
}

/// Why a log record was not taken (returned to the sender in `ExportLogsPartialSuccess` and
/// counted by reason).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("not an Envoy access log: none of the attributes of docs/otlp-attributes.md, and the body is not Istio's default access log line")]
    NotAccessLog,
    #[error("attribute {key}: {problem}")]
    BadAttribute { key: String, problem: String },
}

impl Refusal {
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::NotAccessLog => "not_access_log",
            Refusal::BadAttribute { .. } => "bad_attribute",
        }
    }
}

fn bad(key: &str, problem: impl Into<String>) -> Refusal {
    Refusal::BadAttribute {
        key: key.to_owned(),
        problem: problem.into(),
    }
}

/// What the resource (Envoy's built-in labels) says about the proxy; the record's own
/// attributes win.
#[derive(Debug, Default, Clone)]
pub struct ResourceDefaults {
    pub node_id: Bytes,
    pub cluster: Bytes,
    pub log_name: Bytes,
}

impl ResourceDefaults {
    pub fn from_attributes(attrs: &[KeyValue]) -> Self {
        let mut d = ResourceDefaults::default();
        for kv in attrs {
            let slot = match &kv.key[..] {
                k if k == keys::RESOURCE_NODE_NAME.as_bytes() => &mut d.node_id,
                k if k == keys::RESOURCE_CLUSTER_NAME.as_bytes() => &mut d.cluster,
                k if k == keys::RESOURCE_LOG_NAME.as_bytes() => &mut d.log_name,
                _ => continue,
            };
            if let Some(v) = string_value(kv.value.as_ref()) {
                *slot = v;
            }
        }
        d
    }
}

/// One log record as the ALS entry the join reads.
// Both variants are large; a value lives only until it is encoded, and boxing would cost an
// allocation per record on the hot path.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Entry {
    Http(HttpAccessLogEntry),
    Tcp(TcpAccessLogEntry),
}

impl Entry {
    pub fn kind(&self) -> EntryType {
        match self {
            Entry::Http(_) => EntryType::Http,
            Entry::Tcp(_) => EntryType::Tcp,
        }
    }

    /// The encoded entry: what `Joiner::join` decodes and `record_id` hashes.
    pub fn encode(&self) -> Bytes {
        use prost::Message;
        match self {
            Entry::Http(e) => Bytes::from(e.encode_to_vec()),
            Entry::Tcp(e) => Bytes::from(e.encode_to_vec()),
        }
    }
}

/// A mapped record: the entry, its proxy, and which form it came in.
#[derive(Debug)]
pub struct Mapped {
    pub entry: Entry,
    pub identifier: Identifier,
    /// True when only the body (Istio's default text format) was there: no identity, no
    /// policy evidence beyond the line.
    pub text_only: bool,
}

/// A string attribute value (`string_value`, or an `int_value` / `double_value` /
/// `bool_value` a Collector produced), `-` and empty read as absent.
fn string_value(v: Option<&AnyValue>) -> Option<Bytes> {
    let b = match v?.value.as_ref()? {
        Value::StringValue(s) | Value::BytesValue(s) => s.clone(),
        Value::IntValue(i) => Bytes::from(i.to_string()),
        Value::DoubleValue(d) => Bytes::from(d.to_string()),
        Value::BoolValue(b) => Bytes::from(b.to_string()),
    };
    (!b.is_empty() && &b[..] != b"-").then_some(b)
}

fn number(key: &str, v: &Bytes) -> Result<u64, Refusal> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .ok_or_else(|| bad(key, "not a non-negative integer"))
}

/// The attributes of the contract, gathered in one pass over the record's attributes.
#[derive(Default)]
struct Attrs {
    node_id: Option<Bytes>,
    cluster: Option<Bytes>,
    log_name: Option<Bytes>,
    protocol: Option<Bytes>,
    method: Option<Bytes>,
    scheme: Option<Bytes>,
    authority: Option<Bytes>,
    path: Option<Bytes>,
    user_agent: Option<Bytes>,
    request_id: Option<Bytes>,
    bytes_received: Option<Bytes>,
    bytes_sent: Option<Bytes>,
    status_code: Option<Bytes>,
    details: Option<Bytes>,
    flags: Option<Bytes>,
    termination: Option<Bytes>,
    route_name: Option<Bytes>,
    upstream_cluster: Option<Bytes>,
    upstream_host: Option<Bytes>,
    client_address: Option<Bytes>,
    duration_ns: Option<Bytes>,
    peer_uri_san: Option<Bytes>,
    local_uri_san: Option<Bytes>,
    metadata: Vec<(Bytes, Bytes)>,
    filter_state: Vec<(Bytes, Bytes)>,
    headers: Vec<BytesEntry>,
    /// Any attribute of the contract was present (even as `-`).
    recognized: bool,
}

impl Attrs {
    fn gather(attrs: &[KeyValue]) -> Attrs {
        let mut a = Attrs::default();
        for kv in attrs {
            let key = &kv.key[..];
            let slot = match key {
                k if k == keys::NODE_ID.as_bytes() => &mut a.node_id,
                k if k == keys::NODE_CLUSTER.as_bytes() => &mut a.cluster,
                k if k == keys::LOG_NAME.as_bytes() => &mut a.log_name,
                k if k == keys::PROTOCOL.as_bytes() => &mut a.protocol,
                k if k == keys::METHOD.as_bytes() => &mut a.method,
                k if k == keys::SCHEME.as_bytes() => &mut a.scheme,
                k if k == keys::AUTHORITY.as_bytes() => &mut a.authority,
                k if k == keys::PATH.as_bytes() => &mut a.path,
                k if k == keys::USER_AGENT.as_bytes() => &mut a.user_agent,
                k if k == keys::REQUEST_ID.as_bytes() => &mut a.request_id,
                k if k == keys::BYTES_RECEIVED.as_bytes() => &mut a.bytes_received,
                k if k == keys::BYTES_SENT.as_bytes() => &mut a.bytes_sent,
                k if k == keys::STATUS_CODE.as_bytes() => &mut a.status_code,
                k if k == keys::RESPONSE_CODE_DETAILS.as_bytes() => &mut a.details,
                k if k == keys::RESPONSE_FLAGS.as_bytes() => &mut a.flags,
                k if k == keys::TERMINATION_DETAILS.as_bytes() => &mut a.termination,
                k if k == keys::ROUTE_NAME.as_bytes() => &mut a.route_name,
                k if k == keys::UPSTREAM_CLUSTER.as_bytes() => &mut a.upstream_cluster,
                k if k == keys::UPSTREAM_HOST.as_bytes() => &mut a.upstream_host,
                k if k == keys::CLIENT_ADDRESS.as_bytes() => &mut a.client_address,
                k if k == keys::DURATION_NS.as_bytes() => &mut a.duration_ns,
                k if k == keys::PEER_URI_SAN.as_bytes() => &mut a.peer_uri_san,
                k if k == keys::LOCAL_URI_SAN.as_bytes() => &mut a.local_uri_san,
                k => {
                    let v = string_value(kv.value.as_ref());
                    let tail = |prefix: &str| {
                        k.strip_prefix(prefix.as_bytes())
                            .filter(|t| !t.is_empty())
                            .map(|t| kv.key.slice_ref(t))
                    };
                    if let Some(ns) = tail(keys::DYNAMIC_METADATA_PREFIX) {
                        a.recognized = true;
                        if let Some(v) = v {
                            a.metadata.push((ns, v));
                        }
                    } else if let Some(name) = tail(keys::FILTER_STATE_PREFIX) {
                        a.recognized = true;
                        if let Some(v) = v {
                            a.filter_state.push((name, v));
                        }
                    } else if let Some(name) = tail(keys::REQUEST_HEADER_PREFIX) {
                        a.recognized = true;
                        if let Some(v) = v {
                            a.headers.push(BytesEntry {
                                key: name,
                                value: v,
                            });
                        }
                    }
                    continue;
                }
            };
            a.recognized = true;
            *slot = string_value(kv.value.as_ref());
        }
        a
    }
}

/// Maps one log record (see the module docs). `text` parses a body in Istio's default format.
pub fn map(record: &LogRecord, resource: &ResourceDefaults) -> Result<Mapped, Refusal> {
    let a = Attrs::gather(&record.attributes);
    if !a.recognized {
        return match super::text::parse(record, resource)? {
            Some(m) => Ok(m),
            None => Err(Refusal::NotAccessLog),
        };
    }
    let identifier = Identifier {
        node: Some(Node {
            id: a
                .node_id
                .clone()
                .unwrap_or_else(|| resource.node_id.clone()),
            cluster: a
                .cluster
                .clone()
                .unwrap_or_else(|| resource.cluster.clone()),
        }),
        log_name: a
            .log_name
            .clone()
            .unwrap_or_else(|| resource.log_name.clone()),
    };
    let mut common = AccessLogCommon {
        start_time: start_time(record),
        downstream_remote_address: a.client_address.clone().map(|ip| socket(ip, 0)),
        upstream_remote_address: a.upstream_host.as_ref().and_then(host_port),
        upstream_cluster: a.upstream_cluster.clone().unwrap_or_default(),
        response_flags: Some(response_flags(a.flags.as_deref().unwrap_or_default())),
        route_name: a.route_name.clone().unwrap_or_default(),
        connection_termination_details: a.termination.clone().unwrap_or_default(),
        tls_properties: tls(&a),
        metadata: metadata(&a.metadata)?,
        filter_state_objects: filter_state(&a.filter_state)?,
        time_to_last_downstream_tx_byte: None,
    };
    let received = a
        .bytes_received
        .as_ref()
        .map(|v| number(keys::BYTES_RECEIVED, v))
        .transpose()?
        .unwrap_or(0);
    let sent = a
        .bytes_sent
        .as_ref()
        .map(|v| number(keys::BYTES_SENT, v))
        .transpose()?
        .unwrap_or(0);
    let entry = match a.method.clone() {
        // TCP proxies log no method (Envoy writes `-`): a TCP entry.
        None => Entry::Tcp(TcpAccessLogEntry {
            common_properties: Some(common),
            connection_properties: Some(ConnectionProperties {
                received_bytes: received,
                sent_bytes: sent,
            }),
        }),
        Some(method) => {
            common.time_to_last_downstream_tx_byte = a
                .duration_ns
                .as_ref()
                .map(|v| number(keys::DURATION_NS, v))
                .transpose()?
                .map(|ns| wire::Duration {
                    seconds: i64::try_from(ns / 1_000_000_000).unwrap_or(i64::MAX),
                    nanos: i32::try_from(ns % 1_000_000_000).unwrap_or(0),
                });
            let status = a
                .status_code
                .as_ref()
                .map(|v| number(keys::STATUS_CODE, v))
                .transpose()?
                .filter(|c| *c != 0)
                .map(|c| UInt32Value {
                    value: u32::try_from(c).unwrap_or(u32::MAX),
                });
            Entry::Http(HttpAccessLogEntry {
                common_properties: Some(common),
                protocol_version: protocol(a.protocol.as_deref()),
                request: Some(HttpRequestProperties {
                    request_method: method_code(&method),
                    scheme: a.scheme.unwrap_or_default(),
                    authority: a.authority.unwrap_or_default(),
                    path: a.path.unwrap_or_default(),
                    user_agent: a.user_agent.unwrap_or_default(),
                    request_id: a.request_id.unwrap_or_default(),
                    request_body_bytes: received,
                    request_headers: a.headers,
                }),
                response: Some(HttpResponseProperties {
                    response_code: status,
                    response_body_bytes: sent,
                    response_code_details: a.details.unwrap_or_default(),
                }),
            })
        }
    };
    Ok(Mapped {
        entry,
        identifier,
        text_only: false,
    })
}

/// The request's start: Envoy's logger sets `time_unix_nano` to it; a record without one falls
/// back to `observed_time_unix_nano` (a Collector may set only that).
pub(super) fn start_time(record: &LogRecord) -> Option<wire::Timestamp> {
    let ns = if record.time_unix_nano != 0 {
        record.time_unix_nano
    } else {
        record.observed_time_unix_nano
    };
    (ns != 0).then(|| wire::Timestamp {
        seconds: i64::try_from(ns / 1_000_000_000).unwrap_or(i64::MAX),
        nanos: i32::try_from(ns % 1_000_000_000).unwrap_or(0),
    })
}

pub(super) fn socket(ip: Bytes, port: u32) -> Address {
    Address {
        socket_address: Some(SocketAddress {
            address: ip,
            port_value: port,
        }),
    }
}

/// `%UPSTREAM_HOST%`: `ip:port` or `[v6]:port`.
pub(super) fn host_port(v: &Bytes) -> Option<Address> {
    let s = std::str::from_utf8(v).ok()?;
    let (host, port) = s.rsplit_once(':')?;
    let port = port.parse::<u32>().ok()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    Some(socket(v.slice_ref(host.as_bytes()), port))
}

pub(super) fn protocol(v: Option<&[u8]>) -> i32 {
    match v {
        Some(b"HTTP/1.0") => 1,
        Some(b"HTTP/1.1") => 2,
        Some(b"HTTP/2") => 3,
        Some(b"HTTP/3") => 4,
        _ => 0,
    }
}

pub(super) fn method_code(m: &[u8]) -> i32 {
    const NAMES: [&[u8]; 9] = [
        b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH",
    ];
    NAMES
        .iter()
        .position(|n| *n == m)
        .map_or(0, |i| i as i32 + 1)
}

/// `%RESPONSE_FLAGS%` (short codes, comma-separated) into the ALS flags message; the join turns
/// that back into the same codes, in Envoy's order.
pub(super) fn response_flags(v: &[u8]) -> ResponseFlags {
    let mut f = ResponseFlags::default();
    for code in v.split(|b| *b == b',') {
        match code {
            b"LH" => f.failed_local_healthcheck = true,
            b"UH" => f.no_healthy_upstream = true,
            b"UT" => f.upstream_request_timeout = true,
            b"LR" => f.local_reset = true,
            b"UR" => f.upstream_remote_reset = true,
            b"UF" => f.upstream_connection_failure = true,
            b"UC" => f.upstream_connection_termination = true,
            b"UO" => f.upstream_overflow = true,
            b"NR" => f.no_route_found = true,
            b"DI" => f.delay_injected = true,
            b"FI" => f.fault_injected = true,
            b"RL" => f.rate_limited = true,
            b"UAEX" => {
                f.unauthorized_details = Some(wire::Unauthorized { reason: 1 });
            }
            b"RLSE" => f.rate_limit_service_error = true,
            b"DC" => f.downstream_connection_termination = true,
            b"URX" => f.upstream_retry_limit_exceeded = true,
            b"SI" => f.stream_idle_timeout = true,
            b"IH" => f.invalid_envoy_request_headers = true,
            b"DPE" => f.downstream_protocol_error = true,
            b"UMSDR" => f.upstream_max_stream_duration_reached = true,
            b"RFCF" => f.response_from_cache_filter = true,
            b"NFCF" => f.no_filter_config_found = true,
            b"DT" => f.duration_timeout = true,
            b"UPE" => f.upstream_protocol_error = true,
            b"NC" => f.no_cluster_found = true,
            b"OM" => f.overload_manager = true,
            b"DF" => f.dns_resolution_failure = true,
            b"DR" => f.downstream_remote_reset = true,
            // `-` (none) and codes newer than the ALS message's fields.
            _ => {}
        }
    }
    f
}

/// `%DOWNSTREAM_PEER_URI_SAN%` / `%DOWNSTREAM_LOCAL_URI_SAN%` (comma-separated when several).
fn tls(a: &Attrs) -> Option<TlsProperties> {
    let sans = |v: &Option<Bytes>| {
        v.as_ref().map(|v| CertificateProperties {
            subject_alt_name: v
                .split(|b| *b == b',')
                .filter(|s| !s.is_empty())
                .map(|s| SubjectAltName {
                    san: Some(San::Uri(v.slice_ref(s))),
                })
                .collect(),
        })
    };
    let (peer, local) = (sans(&a.peer_uri_san), sans(&a.local_uri_san));
    (peer.is_some() || local.is_some()).then_some(TlsProperties {
        local_certificate_properties: local,
        peer_certificate_properties: peer,
    })
}

fn metadata(entries: &[(Bytes, Bytes)]) -> Result<Option<wire::Metadata>, Refusal> {
    if entries.is_empty() {
        return Ok(None);
    }
    let mut filter_metadata = Vec::with_capacity(entries.len());
    for (ns, json) in entries {
        let key = format!(
            "{}{}",
            keys::DYNAMIC_METADATA_PREFIX,
            String::from_utf8_lossy(ns)
        );
        filter_metadata.push(BytesEntry {
            key: ns.clone(),
            value: super::json::struct_bytes(json).map_err(|e| bad(&key, e))?,
        });
    }
    Ok(Some(wire::Metadata { filter_metadata }))
}

fn filter_state(entries: &[(Bytes, Bytes)]) -> Result<Vec<AnyEntry>, Refusal> {
    let mut out = Vec::with_capacity(entries.len());
    for (name, json) in entries {
        let key = format!(
            "{}{}",
            keys::FILTER_STATE_PREFIX,
            String::from_utf8_lossy(name)
        );
        out.push(AnyEntry {
            key: name.clone(),
            value: Some(wire::Any {
                type_url: Bytes::from_static(b"type.googleapis.com/google.protobuf.Struct"),
                value: super::json::struct_bytes(json).map_err(|e| bad(&key, e))?,
            }),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: Value) -> KeyValue {
        KeyValue {
            key: Bytes::from(key.to_owned()),
            value: Some(AnyValue { value: Some(value) }),
        }
    }

    fn text(key: &str, v: &str) -> KeyValue {
        kv(key, Value::StringValue(Bytes::from(v.to_owned())))
    }

    #[test]
    fn a_collector_s_integers_and_envoy_s_dashes_are_read_as_envoy_means_them() {
        let record = LogRecord {
            time_unix_nano: 1_772_446_504_118_123_456,
            attributes: vec![
                text(keys::METHOD, "GET"),
                kv(keys::STATUS_CODE, Value::IntValue(403)),
                kv(keys::BYTES_SENT, Value::IntValue(19)),
                text(keys::UPSTREAM_HOST, "-"),
                text(keys::RESPONSE_FLAGS, "UAEX,DC"),
                text(keys::PEER_URI_SAN, "spiffe://a/ns/x/sa/y,spiffe://b"),
            ],
            ..Default::default()
        };
        let resource = ResourceDefaults::from_attributes(&[text("node_name", "n1")]);
        let m = map(&record, &resource).unwrap();
        let Entry::Http(e) = m.entry else {
            panic!("HTTP")
        };
        assert_eq!(&m.identifier.node.unwrap().id[..], b"n1");
        let resp = e.response.unwrap();
        assert_eq!(resp.response_code.unwrap().value, 403);
        assert_eq!(resp.response_body_bytes, 19);
        let c = e.common_properties.unwrap();
        assert!(c.upstream_remote_address.is_none());
        let flags = c.response_flags.unwrap();
        assert!(flags.unauthorized_details.is_some() && flags.downstream_connection_termination);
        let start = c.start_time.unwrap();
        assert_eq!((start.seconds, start.nanos), (1_772_446_504, 118_123_456));
        let peer = c
            .tls_properties
            .unwrap()
            .peer_certificate_properties
            .unwrap();
        assert_eq!(peer.subject_alt_name.len(), 2);
    }

    #[test]
    fn no_method_is_a_tcp_entry_and_bad_values_are_refused_by_name() {
        let tcp = LogRecord {
            attributes: vec![text(keys::METHOD, "-"), text(keys::BYTES_RECEIVED, "1000")],
            ..Default::default()
        };
        let m = map(&tcp, &ResourceDefaults::default()).unwrap();
        assert!(matches!(m.entry, Entry::Tcp(_)));
        let bad = LogRecord {
            attributes: vec![
                text(keys::METHOD, "GET"),
                text(keys::BYTES_RECEIVED, "lots"),
            ],
            ..Default::default()
        };
        let err = map(&bad, &ResourceDefaults::default()).unwrap_err();
        assert_eq!(err.reason(), "bad_attribute");
        assert!(err.to_string().contains(keys::BYTES_RECEIVED), "{err}");
        let json = LogRecord {
            attributes: vec![text(
                "envoy.dynamic_metadata.envoy.filters.http.rbac",
                "{\"secret\": ",
            )],
            ..Default::default()
        };
        let err = map(&json, &ResourceDefaults::default()).unwrap_err();
        assert!(!err.to_string().contains("secret"), "no value in {err}");
        let other = LogRecord {
            attributes: vec![text("service.name", "checkout")],
            ..Default::default()
        };
        assert_eq!(
            map(&other, &ResourceDefaults::default()).unwrap_err(),
            Refusal::NotAccessLog
        );
    }
}
