"""Builders for Envoy access log entries and ALS messages, using Envoy's official generated stubs
(xds-protos), never the project's own proto subset: what these produce is what a real Envoy sends.

Every builder takes plain Python values and returns a protobuf message. Fields next to the ones
the contract names (other addresses, other durations) are filled with decoy values, so that a
collector reading the wrong field is caught.
"""

from __future__ import annotations

import datetime as dt

from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.data.accesslog.v3 import accesslog_pb2 as al
from envoy.service.accesslog.v3 import als_pb2
from google.protobuf import duration_pb2, timestamp_pb2, wrappers_pb2

METHOD_PATH = "/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs"

NODE_CHECKOUT = "sidecar~10.1.2.3~checkout-7d9f.orders~orders.svc.cluster.local"
NODE_GATEWAY = "router~10.244.1.7~istio-ingressgateway-7d9c6b7f5-q8k2m.istio-system~istio-system.svc.cluster.local"
HTTP_LOG = "http_envoy_accesslog"
TCP_LOG = "tcp_envoy_accesslog"

PEER_SPIFFE = "spiffe://cluster.local/ns/orders/sa/checkout"
LOCAL_SPIFFE = "spiffe://cluster.local/ns/payments/sa/payments-api"

HTTP_VERSIONS = {
    "HTTP/1.0": al.HTTPAccessLogEntry.HTTP10,
    "HTTP/1.1": al.HTTPAccessLogEntry.HTTP11,
    "HTTP/2": al.HTTPAccessLogEntry.HTTP2,
    "HTTP/3": al.HTTPAccessLogEntry.HTTP3,
}

# ResponseFlags field name -> Envoy's short code (docs/audit-record.md, `response_flags`).
FLAG_CODES = {
    "failed_local_healthcheck": "LH",
    "no_healthy_upstream": "UH",
    "upstream_request_timeout": "UT",
    "local_reset": "LR",
    "upstream_remote_reset": "UR",
    "upstream_connection_failure": "UF",
    "upstream_connection_termination": "UC",
    "upstream_overflow": "UO",
    "no_route_found": "NR",
    "delay_injected": "DI",
    "fault_injected": "FI",
    "rate_limited": "RL",
    "unauthorized_details": "UAEX",
    "rate_limit_service_error": "RLSE",
    "downstream_connection_termination": "DC",
    "upstream_retry_limit_exceeded": "URX",
    "stream_idle_timeout": "SI",
    "invalid_envoy_request_headers": "IH",
    "downstream_protocol_error": "DPE",
    "upstream_max_stream_duration_reached": "UMSDR",
    "response_from_cache_filter": "RFCF",
    "no_filter_config_found": "NFCF",
    "duration_timeout": "DT",
    "upstream_protocol_error": "UPE",
    "no_cluster_found": "NC",
    "overload_manager": "OM",
    "dns_resolution_failure": "DF",
    "downstream_remote_reset": "DR",
}


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=dt.timezone.utc)


def epoch_micros(t: dt.datetime) -> int:
    """Microseconds since the epoch, computed with integers only (no float rounding)."""
    delta = t - utc(1970, 1, 1)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def timestamp(t: dt.datetime, extra_nanos: int = 0) -> timestamp_pb2.Timestamp:
    """A Timestamp at `t` plus `extra_nanos` (< 1000) below microsecond precision."""
    micros = epoch_micros(t)
    return timestamp_pb2.Timestamp(
        seconds=micros // 1_000_000, nanos=(micros % 1_000_000) * 1_000 + extra_nanos
    )


def millis(ms: float) -> duration_pb2.Duration:
    nanos = round(ms * 1_000_000)
    return duration_pb2.Duration(seconds=nanos // 1_000_000_000, nanos=nanos % 1_000_000_000)


def socket(ip: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address=ip, port_value=port)
    )


def tls(peer_uri: str | None = None, local_uri: str | None = None) -> al.TLSProperties:
    def cert(uri: str) -> al.TLSProperties.CertificateProperties:
        return al.TLSProperties.CertificateProperties(
            subject_alt_name=[al.TLSProperties.CertificateProperties.SubjectAltName(uri=uri)]
        )

    props = al.TLSProperties(tls_version=al.TLSProperties.TLSv1_3, tls_sni_hostname="outbound_.8080_._.payments")
    if peer_uri:
        props.peer_certificate_properties.CopyFrom(cert(peer_uri))
    if local_uri:
        props.local_certificate_properties.CopyFrom(cert(local_uri))
    return props


def flags(*names: str) -> al.ResponseFlags:
    f = al.ResponseFlags()
    for name in names:
        if name == "unauthorized_details":
            f.unauthorized_details.reason = al.ResponseFlags.Unauthorized.EXTERNAL_SERVICE
        else:
            setattr(f, name, True)
    return f


def common(
    *,
    start: dt.datetime,
    start_extra_nanos: int = 0,
    last_tx_ms: float | None = None,
    client: tuple[str, int] = ("10.1.2.3", 51234),
    upstream: tuple[str, int] | None = ("10.4.5.6", 8080),
    upstream_cluster: str = "",
    route_name: str = "",
    peer_uri: str | None = None,
    local_uri: str | None = None,
    flag_names: tuple[str, ...] = (),
) -> al.AccessLogCommon:
    c = al.AccessLogCommon(
        start_time=timestamp(start, start_extra_nanos),
        downstream_remote_address=socket(*client),
        # Decoys (see the module doc).
        downstream_direct_remote_address=socket("192.0.2.99", 40000),
        downstream_local_address=socket("10.7.7.7", 15006),
        time_to_last_rx_byte=millis(1.25),
        time_to_first_downstream_tx_byte=millis(3.5),
        duration=millis(999.0),
        upstream_cluster=upstream_cluster,
        route_name=route_name,
        response_flags=flags(*flag_names),
    )
    if last_tx_ms is not None:
        c.time_to_last_downstream_tx_byte.CopyFrom(millis(last_tx_ms))
    if upstream is not None:
        c.upstream_remote_address.CopyFrom(socket(*upstream))
    if peer_uri or local_uri:
        c.tls_properties.CopyFrom(tls(peer_uri, local_uri))
    return c


def http_entry(
    *,
    start: dt.datetime,
    method: int = base_pb2.GET,
    path: str = "/",
    authority: str = "payments.payments.svc.cluster.local:8080",
    scheme: str = "http",
    status: int | None = 200,
    protocol: str = "HTTP/2",
    request_id: str = "",
    user_agent: str = "",
    headers: dict[str, str] | None = None,
    request_bytes: int = 0,
    response_bytes: int = 0,
    code_details: str = "via_upstream",
    **common_kw,
) -> al.HTTPAccessLogEntry:
    e = al.HTTPAccessLogEntry(
        common_properties=common(start=start, **common_kw),
        protocol_version=HTTP_VERSIONS[protocol],
        request=al.HTTPRequestProperties(
            request_method=method,
            scheme=scheme,
            authority=authority,
            path=path,
            user_agent=user_agent,
            request_id=request_id,
            request_body_bytes=request_bytes,
            request_headers_bytes=512,
        ),
        response=al.HTTPResponseProperties(
            response_body_bytes=response_bytes,
            response_headers_bytes=256,
            response_code_details=code_details,
        ),
    )
    for k, v in (headers or {}).items():
        e.request.request_headers[k] = v
    if status is not None:
        e.response.response_code.CopyFrom(wrappers_pb2.UInt32Value(value=status))
    return e


def tcp_entry(
    *, start: dt.datetime, received: int = 0, sent: int = 0, **common_kw
) -> al.TCPAccessLogEntry:
    return al.TCPAccessLogEntry(
        common_properties=common(start=start, **common_kw),
        connection_properties=al.ConnectionProperties(received_bytes=received, sent_bytes=sent),
    )


def identifier(
    node_id: str, log_name: str, cluster: str = "checkout.orders"
) -> als_pb2.StreamAccessLogsMessage.Identifier:
    return als_pb2.StreamAccessLogsMessage.Identifier(
        node=base_pb2.Node(id=node_id, cluster=cluster), log_name=log_name
    )


def message(entries, ident=None) -> als_pb2.StreamAccessLogsMessage:
    """One ALS message carrying `entries` (all HTTP or all TCP), with `ident` if given."""
    m = als_pb2.StreamAccessLogsMessage()
    if ident is not None:
        m.identifier.CopyFrom(ident)
    entries = list(entries)
    if entries and isinstance(entries[0], al.HTTPAccessLogEntry):
        m.http_logs.log_entry.extend(entries)
    else:
        m.tcp_logs.log_entry.extend(entries)
    return m


def stream(ident, batches) -> list[als_pb2.StreamAccessLogsMessage]:
    """Messages of one stream as Envoy sends them: the identifier on the first message only."""
    return [message(b, ident if i == 0 else None) for i, b in enumerate(batches)]
