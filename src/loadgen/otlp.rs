//! `meshaudit loadgen --otlp`: the same generated requests as OTLP logs, as Envoy's
//! OpenTelemetry access logger sends them with the documented labels
//! (docs/otlp-attributes.md): every attribute a string, `-` for a missing value, one
//! `ExportLogsServiceRequest` per ALS message of the corpus (the same ~16 KiB batches).
//!
//! Each ALS corpus message is read back (through the collector's own wire subset, which reads
//! Envoy's bytes) and rewritten as LogRecords, so both modes send the same requests. The
//! per-entry placeholder goes at the end of `envoy.request_id`, so every record sent is
//! distinct, and the sender patches it exactly as in ALS mode.

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use prost::Message as _;

use super::corpus::{placeholders, Corpus, Message, PLACEHOLDER};
use crate::ingest::otlp::entry::keys;
use crate::ingest::wire::{
    self, stream_access_logs_message::LogEntries, AccessLogCommon, HttpAccessLogEntry,
    StreamAccessLogsMessage, TcpAccessLogEntry,
};
use crate::record::AsText;

/// The corpus rewritten as OTLP requests; node id and cluster as the documented labels send them.
pub fn convert(corpus: &Corpus, node_id: &str, cluster: &str) -> Corpus {
    let conv = |msgs: &[Message]| -> Vec<Message> {
        msgs.iter()
            .filter_map(|m| convert_message(m, node_id, cluster))
            .collect()
    };
    Corpus {
        http: conv(&corpus.http),
        tcp: conv(&corpus.tcp),
        http_entries: Vec::new(),
        tcp_entries: Vec::new(),
        tokens: corpus.tokens,
    }
}

fn convert_message(m: &Message, node_id: &str, cluster: &str) -> Option<Message> {
    let msg = StreamAccessLogsMessage::decode(m.bytes.clone()).ok()?;
    let mut records = Vec::new();
    match msg.log_entries? {
        LogEntries::HttpLogs(h) => {
            for e in h.log_entry {
                let e = HttpAccessLogEntry::decode(e).ok()?;
                records.push(http_record(&e, node_id, cluster));
            }
        }
        LogEntries::TcpLogs(t) => {
            for e in t.log_entry {
                let e = TcpAccessLogEntry::decode(e).ok()?;
                records.push(tcp_record(&e, node_id, cluster));
            }
        }
    }
    let req = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            scope_logs: vec![ScopeLogs {
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let bytes = Bytes::from(req.encode_to_vec());
    let patches = placeholders(&bytes);
    Some(Message {
        bytes,
        patches,
        denied: m.denied,
    })
}

fn s(b: &[u8]) -> String {
    if b.is_empty() {
        "-".to_owned()
    } else {
        String::from_utf8_lossy(b).into_owned()
    }
}

fn kv(key: impl Into<String>, value: String) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value)),
        }),
        ..Default::default()
    }
}

fn common_attrs(c: &AccessLogCommon, node_id: &str, cluster: &str, out: &mut Vec<KeyValue>) {
    out.push(kv(keys::NODE_ID, node_id.to_owned()));
    out.push(kv(keys::NODE_CLUSTER, cluster.to_owned()));
    out.push(kv(keys::LOG_NAME, "otel_envoy_accesslog".to_owned()));
    let sock = |a: &Option<wire::Address>| a.as_ref().and_then(|a| a.socket_address.clone());
    out.push(kv(
        keys::CLIENT_ADDRESS,
        sock(&c.downstream_remote_address).map_or("-".into(), |a| s(&a.address)),
    ));
    out.push(kv(
        keys::UPSTREAM_HOST,
        sock(&c.upstream_remote_address).map_or("-".into(), |a| {
            format!("{}:{}", String::from_utf8_lossy(&a.address), a.port_value)
        }),
    ));
    out.push(kv(keys::UPSTREAM_CLUSTER, s(&c.upstream_cluster)));
    out.push(kv(keys::ROUTE_NAME, s(&c.route_name)));
    let flags = crate::join::traffic::response_flags(c.response_flags.as_ref()).values;
    out.push(kv(
        keys::RESPONSE_FLAGS,
        if flags.is_empty() {
            "-".to_owned()
        } else {
            flags
                .iter()
                .map(|f| f.as_text())
                .collect::<Vec<_>>()
                .join(",")
        },
    ));
    out.push(kv(
        keys::TERMINATION_DETAILS,
        s(&c.connection_termination_details),
    ));
    let sans = |p: Option<&wire::CertificateProperties>| {
        let uris: Vec<String> = p
            .map(|p| {
                p.subject_alt_name
                    .iter()
                    .filter_map(|san| match &san.san {
                        Some(wire::subject_alt_name::San::Uri(u)) => Some(s(u)),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        if uris.is_empty() {
            "-".to_owned()
        } else {
            uris.join(",")
        }
    };
    let tls = c.tls_properties.as_ref();
    out.push(kv(
        keys::PEER_URI_SAN,
        sans(tls.and_then(|t| t.peer_certificate_properties.as_ref())),
    ));
    out.push(kv(
        keys::LOCAL_URI_SAN,
        sans(tls.and_then(|t| t.local_certificate_properties.as_ref())),
    ));
    for m in c.metadata.iter().flat_map(|m| &m.filter_metadata) {
        out.push(kv(
            format!("{}{}", keys::DYNAMIC_METADATA_PREFIX, s(&m.key)),
            struct_json(&m.value),
        ));
    }
    for f in &c.filter_state_objects {
        if let Some(any) = &f.value {
            out.push(kv(
                format!("{}{}", keys::FILTER_STATE_PREFIX, s(&f.key)),
                struct_json(&any.value),
            ));
        }
    }
}

/// A `google.protobuf.Struct` as the compact JSON Envoy prints for `%DYNAMIC_METADATA(..)%`.
fn struct_json(b: &[u8]) -> String {
    fn value(v: &prost_types::Value) -> serde_json::Value {
        use prost_types::value::Kind;
        match &v.kind {
            Some(Kind::NumberValue(n)) => serde_json::json!(n),
            Some(Kind::StringValue(s)) => serde_json::json!(s),
            Some(Kind::BoolValue(b)) => serde_json::json!(b),
            Some(Kind::StructValue(st)) => object(st),
            Some(Kind::ListValue(l)) => l.values.iter().map(value).collect(),
            Some(Kind::NullValue(_)) | None => serde_json::Value::Null,
        }
    }
    fn object(st: &prost_types::Struct) -> serde_json::Value {
        st.fields
            .iter()
            .map(|(k, v)| (k.clone(), value(v)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
    prost_types::Struct::decode(b).map_or_else(|_| "-".to_owned(), |st| object(&st).to_string())
}

fn record(c: Option<&AccessLogCommon>, attributes: Vec<KeyValue>) -> LogRecord {
    let t = c.and_then(|c| c.start_time.as_ref()).map_or(0, |t| {
        u64::try_from(t.seconds).unwrap_or(0) * 1_000_000_000 + u64::try_from(t.nanos).unwrap_or(0)
    });
    LogRecord {
        time_unix_nano: t,
        attributes,
        ..Default::default()
    }
}

fn http_record(e: &HttpAccessLogEntry, node_id: &str, cluster: &str) -> LogRecord {
    let mut a = Vec::with_capacity(32);
    let c = e.common_properties.as_ref();
    if let Some(c) = c {
        common_attrs(c, node_id, cluster, &mut a);
        if let Some(d) = &c.time_to_last_downstream_tx_byte {
            let ns = i128::from(d.seconds) * 1_000_000_000 + i128::from(d.nanos);
            a.push(kv(keys::DURATION_NS, ns.to_string()));
        }
    }
    const PROTOCOLS: [&str; 5] = ["-", "HTTP/1.0", "HTTP/1.1", "HTTP/2", "HTTP/3"];
    a.push(kv(
        keys::PROTOCOL,
        PROTOCOLS
            .get(usize::try_from(e.protocol_version).unwrap_or(0))
            .copied()
            .unwrap_or("-")
            .to_owned(),
    ));
    const METHODS: [&str; 10] = [
        "-", "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    if let Some(r) = &e.request {
        let method = usize::try_from(r.request_method).unwrap_or(0);
        a.push(kv(
            keys::METHOD,
            METHODS.get(method).copied().unwrap_or("-").to_owned(),
        ));
        a.push(kv(keys::SCHEME, s(&r.scheme)));
        a.push(kv(keys::AUTHORITY, s(&r.authority)));
        a.push(kv(keys::PATH, s(&r.path)));
        a.push(kv(keys::USER_AGENT, s(&r.user_agent)));
        a.push(kv(
            keys::REQUEST_ID,
            format!(
                "{}.{}",
                s(&r.request_id),
                String::from_utf8_lossy(PLACEHOLDER)
            ),
        ));
        a.push(kv(keys::BYTES_RECEIVED, r.request_body_bytes.to_string()));
        for h in &r.request_headers {
            a.push(kv(
                format!("{}{}", keys::REQUEST_HEADER_PREFIX, s(&h.key)),
                s(&h.value),
            ));
        }
    }
    if let Some(r) = &e.response {
        a.push(kv(
            keys::STATUS_CODE,
            r.response_code.as_ref().map_or(0, |c| c.value).to_string(),
        ));
        a.push(kv(keys::BYTES_SENT, r.response_body_bytes.to_string()));
        a.push(kv(keys::RESPONSE_CODE_DETAILS, s(&r.response_code_details)));
    }
    record(c, a)
}

fn tcp_record(e: &TcpAccessLogEntry, node_id: &str, cluster: &str) -> LogRecord {
    let mut a = Vec::with_capacity(24);
    let c = e.common_properties.as_ref();
    if let Some(c) = c {
        common_attrs(c, node_id, cluster, &mut a);
    }
    a.push(kv(keys::METHOD, "-".to_owned()));
    a.push(kv(keys::PROTOCOL, "-".to_owned()));
    // The placeholder makes each connection distinct, as in ALS mode.
    a.push(kv(
        keys::REQUEST_ID,
        String::from_utf8_lossy(PLACEHOLDER).into_owned(),
    ));
    if let Some(p) = &e.connection_properties {
        a.push(kv(keys::BYTES_RECEIVED, p.received_bytes.to_string()));
        a.push(kv(keys::BYTES_SENT, p.sent_bytes.to_string()));
    }
    record(c, a)
}
