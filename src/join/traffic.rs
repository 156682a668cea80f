//! Event and Traffic columns from a decoded ALS entry. Pure functions: no I/O, no clock.

use bytes::Bytes;

use crate::ingest::pbstruct::StructError;
use crate::ingest::wire::{
    AccessLogCommon, Address, BytesEntry, CertificateProperties, HttpAccessLogEntry, ResponseFlags,
    TcpAccessLogEntry, Timestamp,
};
use crate::record::text::{self as rtext, copy, copy_opt, fixed};
use crate::record::{values, AuditRecord, StringList};

use super::redact::Redactor;
use super::{peer, spiffe};

/// Copies a wire string into record text (invalid UTF-8 replaced by U+FFFD); empty (proto3's
/// "absent") becomes `None`.
pub(crate) fn text(b: &[u8]) -> Option<Bytes> {
    text_with(b, rtext::copy)
}

/// [`text`] in an allocation of its own ([`rtext::owned`]), for values kept long.
pub(crate) fn text_owned(b: &[u8]) -> Option<Bytes> {
    text_with(b, rtext::owned)
}

fn text_with(b: &[u8], store: fn(&str) -> Bytes) -> Option<Bytes> {
    (!b.is_empty()).then(|| store(&String::from_utf8_lossy(b)))
}

/// Borrows a wire string; empty or invalid UTF-8 becomes `None`.
pub(crate) fn str_of(b: &[u8]) -> Option<&str> {
    if b.is_empty() {
        None
    } else {
        std::str::from_utf8(b).ok()
    }
}

/// Microseconds since the epoch, truncated (not rounded) as the contract asks.
pub fn timestamp_micros(ts: &Timestamp) -> Option<i64> {
    ts.seconds
        .checked_mul(1_000_000)?
        .checked_add(i64::from(ts.nanos) / 1_000)
}

/// The start times accepted, relative to the entry's `received_at` (settings
/// `start_time_max_past_secs` and `start_time_max_future_secs`).
///
/// An entry's `start_time` is whatever its sender wrote: any allowed writer can send a time
/// before 4713 BC, which Postgres cannot store (its day partition fails, and the sink would retry
/// the batch forever), or thousands of distinct days in one message, each making a partition and
/// six indexes. Neither is a plausible request time: Envoy logs a request within seconds of its
/// start (a long-lived TCP connection is logged when it closes, hence the generous default of
/// 7 days back). So every sink gets the same rule, applied once, here: a start time outside the
/// window (or not representable in microseconds) is replaced by `received_at`, and the value
/// the entry reported is kept, as whole seconds (Timestamp.seconds, which every sink can store),
/// in `start_time_reported_secs`. Nothing accepted is dropped, the evidence is kept, and the
/// days a message can touch are bounded by the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartWindow {
    pub max_past: std::time::Duration,
    pub max_future: std::time::Duration,
}

impl Default for StartWindow {
    fn default() -> Self {
        StartWindow {
            max_past: std::time::Duration::from_secs(7 * 86_400),
            max_future: std::time::Duration::from_secs(3600),
        }
    }
}

impl StartWindow {
    /// Checks the `start_time` [`fill_common`] set against `rec.received_at`; `reported` is the
    /// entry's own Timestamp. Returns true when the time was replaced.
    pub fn apply(&self, rec: &mut AuditRecord, reported: Option<&Timestamp>) -> bool {
        let Some(ts) = reported else { return false };
        let us = |d: std::time::Duration| i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
        let earliest = rec.received_at.saturating_sub(us(self.max_past));
        let latest = rec.received_at.saturating_add(us(self.max_future));
        match rec.start_time {
            Some(t) if (earliest..=latest).contains(&t) => false,
            _ => {
                rec.start_time = Some(rec.received_at);
                rec.start_time_reported_secs = Some(ts.seconds);
                true
            }
        }
    }
}

/// Looks up a logged header (keys are lower-case as Envoy logs them).
pub(crate) fn header<'a>(headers: &'a [BytesEntry], name: &str) -> Option<&'a Bytes> {
    headers
        .iter()
        .rev()
        .find(|h| h.key.eq_ignore_ascii_case(name.as_bytes()))
        .map(|h| &h.value)
}

/// Fills the columns every entry kind shares.
pub fn fill_common(rec: &mut AuditRecord, common: &AccessLogCommon) -> Result<(), StructError> {
    rec.start_time = common.start_time.as_ref().and_then(timestamp_micros);
    rec.duration_ms = common
        .time_to_last_downstream_tx_byte
        .as_ref()
        .and_then(|d| {
            let micros = d
                .seconds
                .checked_mul(1_000_000)?
                .checked_add(i64::from(d.nanos) / 1_000)?;
            Some(micros as f64 / 1_000.0)
        });
    rec.route_name = text(&common.route_name);
    rec.upstream_cluster = text(&common.upstream_cluster);
    rec.response_flags = Some(response_flags(common.response_flags.as_ref()));
    rec.client_address = common.downstream_remote_address.as_ref().and_then(ip_of);
    rec.upstream_host = common.upstream_remote_address.as_ref().and_then(host_port);

    let tls = common.tls_properties.as_ref();
    let peer_uri = tls.and_then(|t| spiffe_uri(t.peer_certificate_properties.as_ref()));
    let local_uri = tls.and_then(|t| spiffe_uri(t.local_certificate_properties.as_ref()));
    let downstream =
        peer::find(&common.filter_state_objects, "downstream_peer")?.unwrap_or_default();
    let upstream = peer::find(&common.filter_state_objects, "upstream_peer")?.unwrap_or_default();

    let source_id = peer_uri.and_then(spiffe::parse);
    rec.source_principal = copy_opt(peer_uri);
    rec.source_namespace = source_id
        .and_then(|i| i.namespace)
        .or(downstream.namespace)
        .map(copy);
    rec.source_workload = source_id
        .and_then(|i| i.service_account)
        .or(downstream.workload)
        .map(copy);

    let dest_id = local_uri.and_then(spiffe::parse);
    let outbound_host = outbound_host(&common.upstream_cluster);
    rec.destination_principal = copy_opt(local_uri);
    rec.destination_namespace = dest_id
        .and_then(|i| i.namespace)
        .or(upstream.namespace)
        .or_else(|| outbound_host.and_then(namespace_of_host))
        .map(copy);
    rec.destination_service = upstream
        .service
        .or(upstream.workload)
        .or(outbound_host)
        .map(copy);
    Ok(())
}

/// Fills an HTTP entry's columns (after [`fill_common`]).
pub fn fill_http(rec: &mut AuditRecord, entry: &HttpAccessLogEntry, redactor: &Redactor) {
    rec.entry_kind = fixed(values::ENTRY_HTTP);
    rec.protocol = http_version(entry.protocol_version).map(fixed);
    if let Some(req) = &entry.request {
        rec.method = method(req.request_method).map(fixed);
        rec.scheme = text(&req.scheme);
        rec.authority = text(&req.authority);
        rec.path = (!req.path.is_empty()).then(|| {
            let p = String::from_utf8_lossy(&req.path);
            copy(&redactor.redact_path(&p))
        });
        rec.user_agent = text(&req.user_agent);
        rec.request_id = text(&req.request_id);
        rec.request_bytes = Some(clamp(req.request_body_bytes));
        rec.trace_id = header(&req.request_headers, "traceparent").and_then(|h| trace_id(h));
        if rec.destination_service.is_none() {
            // An inbound sidecar entry names no upstream service: the request's own authority is
            // the destination service host.
            rec.destination_service = str_of(&req.authority)
                .map(strip_port)
                .filter(|a| !a.is_empty())
                .map(copy);
        }
    }
    if let Some(resp) = &entry.response {
        rec.status_code = resp
            .response_code
            .as_ref()
            .and_then(|c| i32::try_from(c.value).ok());
        rec.response_code_details = text(&resp.response_code_details);
        rec.response_bytes = Some(clamp(resp.response_body_bytes));
    }
}

/// Fills a TCP entry's columns (after [`fill_common`]).
pub fn fill_tcp(rec: &mut AuditRecord, entry: &TcpAccessLogEntry) {
    rec.entry_kind = fixed(values::ENTRY_TCP);
    rec.protocol = Some(fixed(values::ENTRY_TCP));
    if let Some(conn) = &entry.connection_properties {
        rec.request_bytes = Some(clamp(conn.received_bytes));
        rec.response_bytes = Some(clamp(conn.sent_bytes));
    }
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn http_version(v: i32) -> Option<&'static str> {
    match v {
        1 => Some("HTTP/1.0"),
        2 => Some("HTTP/1.1"),
        3 => Some("HTTP/2"),
        4 => Some("HTTP/3"),
        _ => None,
    }
}

fn method(m: i32) -> Option<&'static str> {
    const NAMES: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    usize::try_from(m)
        .ok()
        .and_then(|i| i.checked_sub(1))
        .and_then(|i| NAMES.get(i).copied())
}

/// Envoy's short codes, in the proto's field order.
pub fn response_flags(flags: Option<&ResponseFlags>) -> StringList {
    let mut out = StringList::default();
    let Some(f) = flags else { return out };
    let table: [(bool, &str); 28] = [
        (f.failed_local_healthcheck, "LH"),
        (f.no_healthy_upstream, "UH"),
        (f.upstream_request_timeout, "UT"),
        (f.local_reset, "LR"),
        (f.upstream_remote_reset, "UR"),
        (f.upstream_connection_failure, "UF"),
        (f.upstream_connection_termination, "UC"),
        (f.upstream_overflow, "UO"),
        (f.no_route_found, "NR"),
        (f.delay_injected, "DI"),
        (f.fault_injected, "FI"),
        (f.rate_limited, "RL"),
        (f.unauthorized_details.is_some(), "UAEX"),
        (f.rate_limit_service_error, "RLSE"),
        (f.downstream_connection_termination, "DC"),
        (f.upstream_retry_limit_exceeded, "URX"),
        (f.stream_idle_timeout, "SI"),
        (f.invalid_envoy_request_headers, "IH"),
        (f.downstream_protocol_error, "DPE"),
        (f.upstream_max_stream_duration_reached, "UMSDR"),
        (f.response_from_cache_filter, "RFCF"),
        (f.no_filter_config_found, "NFCF"),
        (f.duration_timeout, "DT"),
        (f.upstream_protocol_error, "UPE"),
        (f.no_cluster_found, "NC"),
        (f.overload_manager, "OM"),
        (f.dns_resolution_failure, "DF"),
        (f.downstream_remote_reset, "DR"),
    ];
    out.values = table
        .iter()
        .filter(|(set, _)| *set)
        .map(|(_, code)| fixed(code))
        .collect();
    out
}

fn ip_of(addr: &Address) -> Option<Bytes> {
    addr.socket_address.as_ref().and_then(|s| text(&s.address))
}

fn host_port(addr: &Address) -> Option<Bytes> {
    let s = addr.socket_address.as_ref()?;
    let ip = str_of(&s.address)?;
    // Written straight into the record's text chunk (`format!` would allocate).
    let port = itoa_u32(s.port_value);
    let port = port.as_str();
    Some(if ip.contains(':') {
        rtext::concat(&["[", ip, "]:", port])
    } else {
        rtext::concat(&[ip, ":", port])
    })
}

/// A u32 in decimal, without allocating.
struct Digits {
    buf: [u8; 10],
    start: usize,
}

impl Digits {
    fn as_str(&self) -> &str {
        // Only ASCII digits were written.
        std::str::from_utf8(&self.buf[self.start..]).unwrap_or("0")
    }
}

fn itoa_u32(mut v: u32) -> Digits {
    let mut d = Digits {
        buf: [0; 10],
        start: 10,
    };
    loop {
        d.start -= 1;
        d.buf[d.start] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            return d;
        }
    }
}

fn spiffe_uri(cert: Option<&CertificateProperties>) -> Option<&str> {
    use crate::ingest::wire::subject_alt_name::San;
    cert?
        .subject_alt_name
        .iter()
        .find_map(|san| match &san.san {
            Some(San::Uri(u)) => str_of(u).filter(|u| u.starts_with("spiffe://")),
            _ => None,
        })
}

/// `outbound|8080||orders.shop.svc.cluster.local` → `orders.shop.svc.cluster.local`.
fn outbound_host(cluster: &[u8]) -> Option<&str> {
    let c = str_of(cluster)?;
    let mut parts = c.splitn(4, '|');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("outbound"), Some(_), Some(_), Some(host)) if !host.is_empty() => Some(host),
        _ => None,
    }
}

/// `orders.shop.svc.cluster.local` → `shop`.
fn namespace_of_host(host: &str) -> Option<&str> {
    let mut labels = host.split('.');
    let (_svc, ns, svc_label) = (labels.next()?, labels.next()?, labels.next()?);
    (svc_label == "svc" && !ns.is_empty()).then_some(ns)
}

fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority
            .split_once(']')
            .map_or(authority, |(h, _)| &h[1..]);
    }
    authority
        .rsplit_once(':')
        .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
        .map_or(authority, |(h, _)| h)
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), lowercase; all-zero ids
/// are invalid by the spec and give `None`.
pub fn trace_id(traceparent: &[u8]) -> Option<Bytes> {
    let tp = std::str::from_utf8(traceparent).ok()?.trim();
    let mut parts = tp.split('-');
    let (version, id, parent) = (parts.next()?, parts.next()?, parts.next()?);
    let _flags = parts.next()?;
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex(version, 2) || version.eq_ignore_ascii_case("ff") || !hex(id, 32) || !hex(parent, 16) {
        return None;
    }
    if id.bytes().all(|b| b == b'0') {
        return None;
    }
    let mut lower = [0u8; 32];
    lower.copy_from_slice(id.as_bytes());
    lower.make_ascii_lowercase();
    std::str::from_utf8(&lower).ok().map(copy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::TextExt;

    #[test]
    fn start_times_outside_the_window_become_received_at_and_keep_what_was_reported() {
        let w = StartWindow::default();
        let received = 1_772_446_504_000_000i64;
        let check = |seconds: i64, nanos: i32| {
            let ts = Timestamp { seconds, nanos };
            let mut rec = AuditRecord {
                received_at: received,
                start_time: timestamp_micros(&ts),
                ..Default::default()
            };
            let clamped = w.apply(&mut rec, Some(&ts));
            (clamped, rec.start_time, rec.start_time_reported_secs)
        };
        let now_s = received / 1_000_000;
        // Inside: a second ago, 6 days ago, 59 minutes ahead.
        for s in [now_s - 1, now_s - 6 * 86_400, now_s + 59 * 60] {
            assert_eq!(
                check(s, 5_000),
                (false, Some(s * 1_000_000 + 5), None),
                "{s}"
            );
        }
        // Outside: before 4713 BC, 1980, 8 days ago, 2 hours ahead, year 300000, and a time
        // whose microseconds overflow.
        for s in [
            -300_000_000_000,
            315_532_800,
            now_s - 8 * 86_400,
            now_s + 7200,
            9_400_000_000_000,
            i64::MAX,
        ] {
            assert_eq!(check(s, 0), (true, Some(received), Some(s)), "{s}");
        }
        // No start time in the entry: nothing to judge (the sinks file it by received_at).
        let mut rec = AuditRecord {
            received_at: received,
            ..Default::default()
        };
        assert!(!w.apply(&mut rec, None));
        assert_eq!((rec.start_time, rec.start_time_reported_secs), (None, None));
    }

    #[test]
    fn helpers() {
        assert_eq!(method(1), Some("GET"));
        assert_eq!(method(9), Some("PATCH"));
        assert_eq!(method(0), None);
        assert_eq!(method(10), None);
        assert_eq!(http_version(3), Some("HTTP/2"));
        assert_eq!(http_version(0), None);
        assert_eq!(
            outbound_host(b"outbound|8080||orders.shop.svc.cluster.local"),
            Some("orders.shop.svc.cluster.local")
        );
        assert_eq!(outbound_host(b"inbound|8080||"), None);
        assert_eq!(
            namespace_of_host("orders.shop.svc.cluster.local"),
            Some("shop")
        );
        assert_eq!(namespace_of_host("example.com"), None);
        assert_eq!(strip_port("orders:8080"), "orders");
        assert_eq!(strip_port("[::1]:80"), "::1");
        assert_eq!(strip_port("orders"), "orders");
        for port in [0, 7, 80, 15006, u32::MAX] {
            assert_eq!(itoa_u32(port).as_str(), port.to_string());
        }
        let addr = |ip: &str, port| Address {
            socket_address: Some(crate::ingest::wire::SocketAddress {
                address: Bytes::copy_from_slice(ip.as_bytes()),
                port_value: port,
            }),
        };
        assert_eq!(
            host_port(&addr("10.0.0.1", 8080)).text(),
            Some("10.0.0.1:8080")
        );
        assert_eq!(
            host_port(&addr("fd00::1", 443)).text(),
            Some("[fd00::1]:443")
        );
        assert_eq!(
            trace_id(b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01").text(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(
            trace_id(b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(trace_id(b"garbage"), None);
        assert_eq!(
            timestamp_micros(&Timestamp {
                seconds: 1,
                nanos: 999_999
            }),
            Some(1_000_999)
        );
    }

    #[test]
    fn flags_in_field_order() {
        let f = ResponseFlags {
            downstream_connection_termination: true,
            no_healthy_upstream: true,
            unauthorized_details: Some(Default::default()),
            ..Default::default()
        };
        assert_eq!(response_flags(Some(&f)).values, ["UH", "UAEX", "DC"]);
        assert!(response_flags(None).values.is_empty());
    }
}
