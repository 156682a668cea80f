//! Istio's default access log line, the only thing a label-less `envoyOtelAls` provider sends
//! (the LogRecord body). Istio's default format (`EnvoyTextLogFormat` in istiod):
//!
//! ```text
//! [%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE%
//! %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS%
//! "%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% %BYTES_SENT% %DURATION%
//! %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%"
//! "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER_RAW%
//! %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS%
//! %REQUESTED_SERVER_NAME% %ROUTE_NAME%
//! ```
//!
//! (one line). The line becomes the same ALS subset entry as the attributes would (traffic
//! columns), with no metadata and no headers: the join then finds no identity (`token_status =
//! absent`) and no authorizer result (`decision = unevaluated`, unless the line's
//! response_code_details names a denial, which is evidence the join reads either way).
//! Differences from the attribute path, by construction of the format: `duration_ms` is
//! `%DURATION%` (whole milliseconds), the path is the original path, no mTLS SANs, no peer
//! metadata, and `upstream_cluster` only when an upstream host was chosen (see below).

use bytes::Bytes;

use super::entry::{self, Entry, Mapped, Refusal, ResourceDefaults};
use super::subset::any_value::Value;
use super::subset::LogRecord;
use crate::ingest::wire::{
    self, AccessLogCommon, ConnectionProperties, HttpAccessLogEntry, HttpRequestProperties,
    HttpResponseProperties, Identifier, Node, TcpAccessLogEntry, UInt32Value,
};

/// Fields of the default format, in order.
const FIELDS: usize = 22;

/// Splits the line into its fields: `[...]`, `"..."` or a bare word; `None` when it is not
/// shaped like the default format.
fn fields(line: &Bytes) -> Option<Vec<Bytes>> {
    let mut out = Vec::with_capacity(FIELDS);
    let b = &line[..];
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b' ' | b'\n' | b'\r' => i += 1,
            open @ (b'[' | b'"') => {
                let close = if open == b'[' { b']' } else { b'"' };
                let end = b[i + 1..].iter().position(|c| *c == close)? + i + 1;
                out.push(line.slice(i + 1..end));
                i = end + 1;
            }
            _ => {
                let end = b[i..]
                    .iter()
                    .position(|c| matches!(c, b' ' | b'\n' | b'\r'))
                    .map_or(b.len(), |p| p + i);
                out.push(line.slice(i..end));
                i = end;
            }
        }
    }
    Some(out)
}

fn opt(v: &Bytes) -> Option<Bytes> {
    (!v.is_empty() && &v[..] != b"-").then(|| v.clone())
}

fn num(v: &Bytes) -> Option<u64> {
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// The entry a default-format body describes, `Ok(None)` when the body is not such a line.
pub fn parse(record: &LogRecord, resource: &ResourceDefaults) -> Result<Option<Mapped>, Refusal> {
    let Some(Value::StringValue(body)) = record.body.as_ref().and_then(|b| b.value.as_ref()) else {
        return Ok(None);
    };
    if !body.starts_with(b"[") {
        return Ok(None);
    }
    let Some(f) = fields(body).filter(|f| f.len() >= FIELDS) else {
        return Ok(None);
    };
    let mut request_line = f[1].splitn(3, |c| *c == b' ');
    let (Some(method), Some(path), Some(proto)) = (
        request_line.next(),
        request_line.next(),
        request_line.next(),
    ) else {
        return Ok(None);
    };
    let (Some(code), Some(received), Some(sent)) = (num(&f[2]), num(&f[7]), num(&f[8])) else {
        return Ok(None);
    };
    let identifier = Identifier {
        node: Some(Node {
            id: resource.node_id.clone(),
            cluster: resource.cluster.clone(),
        }),
        log_name: resource.log_name.clone(),
    };
    let mut common = AccessLogCommon {
        start_time: entry::start_time(record),
        downstream_remote_address: opt(&f[19]).as_ref().and_then(entry::host_port),
        upstream_remote_address: opt(&f[15]).as_ref().and_then(entry::host_port),
        // `%UPSTREAM_CLUSTER_RAW%` names the route's cluster even on a local reply (a 401/403
        // from jwt_authn, RBAC, ext_authz), where the ALS entry has none: kept only when the
        // line names an upstream host, as the ALS entry does.
        upstream_cluster: opt(&f[15]).and(opt(&f[16])).unwrap_or_default(),
        response_flags: Some(entry::response_flags(&f[3])),
        route_name: opt(&f[21]).unwrap_or_default(),
        connection_termination_details: opt(&f[5]).unwrap_or_default(),
        ..Default::default()
    };
    let entry = if method == b"-" {
        Entry::Tcp(TcpAccessLogEntry {
            common_properties: Some(common),
            connection_properties: Some(ConnectionProperties {
                received_bytes: received,
                sent_bytes: sent,
            }),
        })
    } else {
        common.time_to_last_downstream_tx_byte = num(&f[9]).map(|ms| wire::Duration {
            seconds: i64::try_from(ms / 1000).unwrap_or(i64::MAX),
            nanos: i32::try_from((ms % 1000) * 1_000_000).unwrap_or(0),
        });
        let path = body.slice_ref(path);
        Entry::Http(HttpAccessLogEntry {
            common_properties: Some(common),
            protocol_version: entry::protocol(Some(proto)),
            request: Some(HttpRequestProperties {
                request_method: entry::method_code(method),
                scheme: Bytes::new(),
                authority: opt(&f[14]).unwrap_or_default(),
                path: opt(&path).unwrap_or_default(),
                user_agent: opt(&f[12]).unwrap_or_default(),
                request_id: opt(&f[13]).unwrap_or_default(),
                request_body_bytes: received,
                request_headers: Vec::new(),
            }),
            response: Some(HttpResponseProperties {
                response_code: (code != 0).then(|| UInt32Value {
                    value: u32::try_from(code).unwrap_or(u32::MAX),
                }),
                response_body_bytes: sent,
                response_code_details: opt(&f[4]).unwrap_or_default(),
            }),
        })
    };
    Ok(Some(Mapped {
        entry,
        identifier,
        text_only: true,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::otlp::subset::AnyValue;

    fn record(body: &str) -> LogRecord {
        LogRecord {
            time_unix_nano: 1_772_446_504_123_456_000,
            body: Some(AnyValue {
                value: Some(Value::StringValue(Bytes::from(body.to_owned()))),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn istio_default_line_becomes_an_http_entry() {
        let line = r#"[2026-03-02T10:15:04.123Z] "GET /orders?id=1 HTTP/1.1" 403 - rbac_access_denied_matched_policy[none] - "-" 0 19 3 - "10.1.2.3" "curl/8" "rid-1" "orders.example" "10.9.8.7:8080" outbound|8080||orders.shop.svc.cluster.local - 10.0.0.5:8080 10.0.0.9:51234 - default
"#;
        let m = parse(&record(line), &ResourceDefaults::default())
            .unwrap()
            .unwrap();
        assert!(m.text_only);
        let Entry::Http(e) = m.entry else {
            panic!("not HTTP")
        };
        let req = e.request.unwrap();
        assert_eq!(req.request_method, 1);
        assert_eq!(&req.path[..], b"/orders?id=1");
        assert_eq!(&req.request_id[..], b"rid-1");
        assert_eq!(&req.authority[..], b"orders.example");
        let resp = e.response.unwrap();
        assert_eq!(resp.response_code.unwrap().value, 403);
        assert_eq!(resp.response_body_bytes, 19);
        let c = e.common_properties.unwrap();
        assert_eq!(&c.route_name[..], b"default");
        assert_eq!(
            &c.upstream_cluster[..],
            b"outbound|8080||orders.shop.svc.cluster.local"
        );
        let upstream = c.upstream_remote_address.unwrap().socket_address.unwrap();
        assert_eq!(
            (&upstream.address[..], upstream.port_value),
            (&b"10.9.8.7"[..], 8080)
        );
        let client = c.downstream_remote_address.unwrap().socket_address.unwrap();
        assert_eq!(&client.address[..], b"10.0.0.9");
        assert_eq!(c.time_to_last_downstream_tx_byte.unwrap().nanos, 3_000_000);
    }

    #[test]
    fn a_local_reply_names_no_upstream_cluster_as_in_the_als_entry() {
        let line = r#"[2026-03-02T10:15:04.123Z] "GET / HTTP/1.1" 401 - jwt_authn_access_denied{Jwt_is_expired} - "-" 0 14 0 - "-" "curl/8" "rid-2" "orders.example" "-" outbound|8080||orders.shop.svc.cluster.local - 10.0.0.5:8080 10.0.0.9:51234 - default"#;
        let m = parse(&record(line), &ResourceDefaults::default())
            .unwrap()
            .unwrap();
        let Entry::Http(e) = m.entry else {
            panic!("not HTTP")
        };
        let c = e.common_properties.unwrap();
        assert!(c.upstream_cluster.is_empty() && c.upstream_remote_address.is_none());
    }

    #[test]
    fn other_bodies_are_not_access_logs() {
        for body in [
            "user logged in",
            "[x] too short",
            "",
            "[t] \"GET / HTTP/1.1\" abc",
        ] {
            assert!(
                parse(&record(body), &ResourceDefaults::default())
                    .unwrap()
                    .is_none(),
                "{body}"
            );
        }
    }
}
