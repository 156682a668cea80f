"""The shared scenario: what is streamed to one collector run, and what docs/audit-record.md says
must come out of it.

Streams (all open at the same time, over two HTTP/2 connections, from several threads):
- `checkout-http`: the checkout sidecar's HTTP logger, 3 messages (identifier on the first only).
- `checkout-tcp`: the same sidecar's TCP logger.
- `secrets`: HTTP entries whose query strings and logged headers hold credentials.
- `checkout-http-reconnect`: the HTTP logger again after a reconnect, re-sending one entry.
- `checkout-other-log`: the same node under another log name, sending that same entry.
- `gateway-http`: another proxy (node id) sending that same entry.
- `fill-N`: a few streams of many entries each, one node id per stream.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from envoy.config.core.v3 import base_pb2

import entries as E

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

# 09:05:07.123456 and 789 ns: start_time must keep the microseconds and drop the nanoseconds.
T0 = E.utc(2026, 3, 2, 9, 5, 7, 123456)
# One nanosecond short of midnight: rounding instead of truncating would move it to the next day.
T_LATE = E.utc(2026, 3, 2, 23, 59, 59, 999999)
T_NEXT_DAY = E.utc(2026, 3, 3, 0, 0, 0, 1)
T_TCP = E.utc(2026, 3, 2, 9, 59, 58, 500000)

# Credentials that must not land anywhere: not in a file under the data dir, not in the logs.
SECRETS = [
    "SECRET123",
    "SECRETACCESSTOKENeyJhbGciOiJSUzI1NiJ9x",
    "SECRETBEARERtokenQWxhZGRpbjpvcGVu",
    "SECRETCOOKIEsessionid99",
    "SECRETAPIKEY7f3a",
]

# Columns the contract fixes for an entry that carries no token and no authorizer evidence.
NO_TOKEN_NO_POLICY = dict(
    token_status="absent",
    tenant_id=None,
    object_id=None,
    subject=None,
    user_principal=None,
    display_name=None,
    app_id=None,
    app_display_name=None,
    groups=None,
    group_names=None,
    groups_overage=None,
    roles=None,
    scopes=None,
    issuer=None,
    audience=None,
    token_version=None,
    token_id=None,
    token_issued_at=None,
    token_expires_at=None,
    auth_methods=None,
    decision="unevaluated",
    decision_engine="none",
    policy_name=None,
    shadow_policy_name=None,
    shadow_result=None,
)
MTLS_WORKLOAD = dict(identity_kind="workload", identity_source="mtls", **NO_TOKEN_NO_POLICY)
ANONYMOUS = dict(identity_kind="anonymous", identity_source="none", **NO_TOKEN_NO_POLICY)

CHECKOUT = dict(node_id=E.NODE_CHECKOUT, mesh_cluster="checkout.orders")
GATEWAY_CLUSTER = "istio-ingressgateway.istio-system"

FILL_STREAMS = 4
FILL_MESSAGES = 3
FILL_PER_MESSAGE = 25


@dataclass
class Corpus:
    # stream name -> (grpc channel index, messages)
    streams: dict[str, tuple[int, list]] = field(default_factory=dict)
    # key -> expected columns; the key is the request_id (HTTP) or `tcp-<received bytes>` (TCP)
    expected: dict[str, dict] = field(default_factory=dict)
    # request ids of entries sent more than once (key -> number of sends)
    resent: dict[str, int] = field(default_factory=dict)

    def total_entries(self) -> int:
        n = 0
        for _ch, msgs in self.streams.values():
            for m in msgs:
                n += len(m.http_logs.log_entry) + len(m.tcp_logs.log_entry)
        return n


def row_key(row: dict) -> str:
    return row["request_id"] if row["entry_kind"] == "http" else f"tcp-{row['request_bytes']}"


def build() -> Corpus:
    c = Corpus()

    # ---- checkout sidecar, HTTP logger -------------------------------------------------------
    h1 = E.http_entry(
        start=T0,
        start_extra_nanos=789,
        method=base_pb2.GET,
        path="/v1/payments/42?expand=items",
        authority="payments.payments.svc.cluster.local:8080",
        scheme="http",
        status=200,
        protocol="HTTP/2",
        request_id="req-h1",
        user_agent="checkout/1.4 grpc-go/1.60",
        headers={"traceparent": TRACEPARENT},
        request_bytes=321,
        response_bytes=4567,
        code_details="via_upstream",
        last_tx_ms=42.5,
        client=("10.1.2.3", 51234),
        upstream=("10.4.5.6", 8080),
        upstream_cluster="inbound|8080||",
        route_name="default",
        peer_uri=E.PEER_SPIFFE,
        local_uri=E.LOCAL_SPIFFE,
    )
    c.expected["req-h1"] = dict(
        entry_kind="http",
        log_name=E.HTTP_LOG,
        **CHECKOUT,
        start_time=E.epoch_micros(T0),
        duration_ms=42.5,
        protocol="HTTP/2",
        method="GET",
        scheme="http",
        authority="payments.payments.svc.cluster.local:8080",
        path="/v1/payments/42?expand=items",
        route_name="default",
        status_code=200,
        response_flags=[],
        response_code_details="via_upstream",
        request_bytes=321,
        response_bytes=4567,
        request_id="req-h1",
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        user_agent="checkout/1.4 grpc-go/1.60",
        client_address="10.1.2.3",
        upstream_cluster="inbound|8080||",
        upstream_host="10.4.5.6:8080",
        source_principal=E.PEER_SPIFFE,
        source_namespace="orders",
        source_workload="checkout",
        destination_principal=E.LOCAL_SPIFFE,
        destination_namespace="payments",
        destination_service="payments.payments.svc.cluster.local",
        **MTLS_WORKLOAD,
    )

    # Flags set in scrambled order must come out in Envoy's field order; no TLS, no upstream
    # host, no last-byte time, no trace header: those columns are NULL.
    h2 = E.http_entry(
        start=T_LATE,
        start_extra_nanos=999,
        method=base_pb2.POST,
        path="/v1/orders",
        authority="orders.shop.svc.cluster.local",
        status=503,
        protocol="HTTP/1.1",
        request_id="req-h2",
        request_bytes=0,
        code_details="no_healthy_upstream",
        upstream=None,
        upstream_cluster="outbound|8080||orders.shop.svc.cluster.local",
        flag_names=(
            "downstream_connection_termination",
            "rate_limited",
            "no_healthy_upstream",
            "unauthorized_details",
            "upstream_request_timeout",
        ),
    )
    c.expected["req-h2"] = dict(
        entry_kind="http",
        log_name=E.HTTP_LOG,
        **CHECKOUT,
        start_time=E.epoch_micros(T_LATE),
        duration_ms=None,
        protocol="HTTP/1.1",
        method="POST",
        path="/v1/orders",
        status_code=503,
        response_flags=["UH", "UT", "RL", "UAEX", "DC"],
        response_code_details="no_healthy_upstream",
        request_bytes=0,
        trace_id=None,
        user_agent=None,
        client_address="10.1.2.3",
        upstream_host=None,
        source_principal=None,
        source_namespace=None,
        source_workload=None,
        destination_principal=None,
        destination_namespace="shop",
        destination_service="orders.shop.svc.cluster.local",
        **ANONYMOUS,
    )

    h3 = E.http_entry(
        start=T_NEXT_DAY,
        path="/healthz",
        authority="payments:8080",
        protocol="HTTP/3",
        request_id="req-h3",
        client=("2001:db8::7", 443),
        upstream=("2001:db8::9", 8443),
        last_tx_ms=0.001,
    )
    c.expected["req-h3"] = dict(
        log_name=E.HTTP_LOG,
        start_time=E.epoch_micros(T_NEXT_DAY),
        duration_ms=0.001,
        protocol="HTTP/3",
        method="GET",
        client_address="2001:db8::7",
        upstream_host="[2001:db8::9]:8443",
    )

    # Sent three times on three streams (see below); no map fields, so its bytes are identical.
    dup = E.http_entry(start=T0, path="/v1/dup", request_id="req-dup", status=204)

    c.streams["checkout-http"] = (
        0,
        E.stream(E.identifier(E.NODE_CHECKOUT, E.HTTP_LOG), [[h1, h2], [h3], [dup]]),
    )
    c.streams["checkout-http-reconnect"] = (
        1,
        E.stream(E.identifier(E.NODE_CHECKOUT, E.HTTP_LOG), [[dup]]),
    )
    c.streams["checkout-other-log"] = (
        0,
        E.stream(E.identifier(E.NODE_CHECKOUT, "other_accesslog"), [[dup]]),
    )
    c.streams["gateway-http"] = (
        1,
        E.stream(E.identifier(E.NODE_GATEWAY, E.HTTP_LOG, GATEWAY_CLUSTER), [[dup]]),
    )
    c.resent["req-dup"] = 4

    # ---- checkout sidecar, TCP logger --------------------------------------------------------
    t1 = E.tcp_entry(
        start=T_TCP,
        received=1000,
        sent=2000,
        last_tx_ms=1500.25,
        client=("10.1.2.3", 40000),
        upstream=("10.8.0.5", 5432),
        upstream_cluster="outbound|5432||db.data.svc.cluster.local",
        peer_uri=E.PEER_SPIFFE,
        flag_names=("upstream_connection_failure",),
    )
    tcp_nulls = dict(method=None, path=None, scheme=None, authority=None, status_code=None)
    c.expected["tcp-1000"] = dict(
        entry_kind="tcp",
        protocol="tcp",
        log_name=E.TCP_LOG,
        **CHECKOUT,
        **tcp_nulls,
        start_time=E.epoch_micros(T_TCP),
        duration_ms=1500.25,
        request_bytes=1000,
        response_bytes=2000,
        response_flags=["UF"],
        response_code_details=None,
        request_id=None,
        trace_id=None,
        user_agent=None,
        client_address="10.1.2.3",
        upstream_cluster="outbound|5432||db.data.svc.cluster.local",
        upstream_host="10.8.0.5:5432",
        source_principal=E.PEER_SPIFFE,
        source_namespace="orders",
        source_workload="checkout",
        destination_principal=None,
        destination_namespace="data",
        destination_service="db.data.svc.cluster.local",
        **MTLS_WORKLOAD,
    )
    t2 = E.tcp_entry(start=T_TCP, received=1001, sent=0)
    c.expected["tcp-1001"] = dict(
        entry_kind="tcp",
        protocol="tcp",
        **tcp_nulls,
        duration_ms=None,
        request_bytes=1001,
        response_bytes=0,
        response_flags=[],
        **ANONYMOUS,
    )
    c.streams["checkout-tcp"] = (
        1,
        E.stream(E.identifier(E.NODE_CHECKOUT, E.TCP_LOG), [[t1], [t2]]),
    )

    # ---- credentials in query strings and headers -----------------------------------------------
    s1 = E.http_entry(
        start=T0,
        path=f"/oauth/callback?code={SECRETS[0]}&state=ok",
        request_id="req-s1",
        headers={
            "authorization": f"Bearer {SECRETS[2]}",
            "cookie": f"sid={SECRETS[3]}",
            "x-api-key": SECRETS[4],
            "traceparent": TRACEPARENT,
        },
    )
    c.expected["req-s1"] = dict(path="/oauth/callback?code=REDACTED&state=ok")
    s2 = E.http_entry(
        start=T0,
        path=f"/api/orders?page=2&access_token={SECRETS[1]}",
        request_id="req-s2",
    )
    c.expected["req-s2"] = dict(path="/api/orders?page=2&access_token=REDACTED")
    c.streams["secrets"] = (
        0,
        E.stream(E.identifier(E.NODE_CHECKOUT, E.HTTP_LOG), [[s1], [s2]]),
    )

    # ---- volume: several streams, one node id each -------------------------------------------
    for s in range(FILL_STREAMS):
        node = f"sidecar~10.0.0.{s}~fill-{s}.ns{s}~ns{s}.svc.cluster.local"
        batches = []
        for m in range(FILL_MESSAGES):
            batch = []
            for i in range(FILL_PER_MESSAGE):
                rid = f"fill-{s}-{m}-{i}"
                batch.append(
                    E.http_entry(
                        start=T0 + dt.timedelta(milliseconds=s * 100 + m * 10 + i),
                        path=f"/fill/{s}/{m}/{i}",
                        request_id=rid,
                    )
                )
                c.expected[rid] = dict(
                    node_id=node,
                    log_name=E.HTTP_LOG,
                    mesh_cluster=f"fill-{s}.ns{s}",
                    path=f"/fill/{s}/{m}/{i}",
                )
            batches.append(batch)
        ident = E.identifier(node, E.HTTP_LOG, cluster=f"fill-{s}.ns{s}")
        c.streams[f"fill-{s}"] = (s % 2, E.stream(ident, batches))

    return c
