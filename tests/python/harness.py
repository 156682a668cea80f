"""Runs the real `meshaudit serve` binary and reads back what it wrote.

- `Collector`: starts the binary on free loopback ports with a temporary data dir, waits for
  GET /readyz with a bounded poll, stops it with SIGTERM and reports its exit code and output.
- `Output`: the Parquet files of a stopped collector, read with DuckDB and with pyarrow.
- `contract_columns()`: the column tables of docs/audit-record.md.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import duckdb
import grpc
import pyarrow as pa
import pyarrow.parquet as pq
from envoy.service.accesslog.v3 import als_pb2_grpc

from entries import METHOD_PATH

REPO = Path(__file__).resolve().parents[2]
CONTRACT = REPO / "docs" / "audit-record.md"

READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 20.0
POLL_S = 0.02


def wait_until(cond, timeout: float, what: str):
    """Polls `cond` until it returns a truthy value (which is returned) or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(POLL_S)


def http_call(url: str, method: str = "GET", headers: dict[str, str] | None = None,
              body: bytes | None = None, timeout: float = 2.0) -> tuple[int, str]:
    """(status, body) of one HTTP request; (0, "") when nothing answers."""
    req = urllib.request.Request(url, method=method, headers=headers or {}, data=body)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, ""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def binary() -> Path:
    path = os.environ.get("COLLECTOR_BIN")
    if not path:
        raise RuntimeError(
            "COLLECTOR_BIN is not set: run the suite through scripts/test, or set it to "
            "target/debug/meshaudit after `cargo build`"
        )
    p = Path(path)
    if not p.is_absolute():
        p = REPO / p
    if not os.access(p, os.X_OK):
        raise RuntimeError(f"COLLECTOR_BIN={path}: not an executable file")
    return p


def child_env() -> dict[str, str]:
    # The collector refuses unknown MESHAUDIT_* variables (a typo must not be ignored), and
    # OTEL_* would turn on export to a collector not here.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MESHAUDIT_") and not k.startswith("OTEL_")
    }
    # Debug logs widen what the secret checks look at.
    env["RUST_LOG"] = "debug"
    # The corpus is dated (2026-03), outside the default start-time window of 7 days before
    # receipt: accept start times as sent (10 years back, 7 days ahead).
    env["MESHAUDIT_START_TIME_MAX_PAST_SECS"] = "315360000"
    env["MESHAUDIT_START_TIME_MAX_FUTURE_SECS"] = "604800"
    env.pop("RUST_BACKTRACE", None)
    return env


class Collector:
    """One `meshaudit serve` process."""

    def __init__(self, workdir: Path, *extra_args: str):
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.stdout_path = workdir / "collector.stdout"
        self.stderr_path = workdir / "collector.stderr"
        self.extra_args = extra_args
        self.proc: subprocess.Popen | None = None
        self.returncode: int | None = None
        self._channels: list[grpc.Channel] = []

    # ---- lifecycle ------------------------------------------------------------------------
    def start(self) -> "Collector":
        # Ports found by binding port 0 can be taken by someone else before the collector binds
        # them; that shows as an early exit naming the address, and is retried with new ports.
        for _attempt in range(3):
            self.als_port, self.admin_port = free_port(), free_port()
            self.otlp_port = free_port()
            if len({self.als_port, self.admin_port, self.otlp_port}) < 3:
                continue
            self._spawn()
            if self._wait_ready():
                return self
            exited = self.proc.poll()
            self.kill()
            if exited is None or "cannot listen" not in self.stderr():
                break
        raise AssertionError(
            f"collector did not become ready (timeout {READY_TIMEOUT_S}s; exit code"
            f" {self.proc.returncode if self.proc else None}); stderr:\n{self.stderr()[-4000:]}"
        )

    def _spawn(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [
            str(binary()),
            "serve",
            "--als-addr",
            f"127.0.0.1:{self.als_port}",
            "--admin-addr",
            f"127.0.0.1:{self.admin_port}",
            "--data-dir",
            str(self.data_dir),
            *self.extra_args,
        ]
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            env = child_env()
            # Never the default 4317: tests run side by side. A test's --otlp-addr wins.
            env["MESHAUDIT_OTLP_ADDR"] = f"127.0.0.1:{self.otlp_port}"
            self.proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env
            )

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if self.http_get("/readyz")[0] == 200:
                return True
            time.sleep(POLL_S)
        return False

    def stop(self) -> int:
        """SIGTERM, then waits (bounded) for the exit; returns the exit code. Client channels
        stay open meanwhile, as Envoy's do: the collector must end their streams itself."""
        if self.proc is None:
            raise AssertionError("collector was never started")
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.returncode = self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT_S)
            raise AssertionError(f"collector did not exit within {STOP_TIMEOUT_S}s of SIGTERM")
        finally:
            self._close_channels()
        return self.returncode

    def _close_channels(self) -> None:
        for ch in self._channels:
            ch.close()
        self._channels.clear()

    def kill(self) -> None:
        """Teardown safety net: never leave a process behind, whatever a test did."""
        self._close_channels()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT_S)

    # ---- talking to it --------------------------------------------------------------------
    @property
    def als_target(self) -> str:
        return f"127.0.0.1:{self.als_port}"

    def channel(self) -> grpc.Channel:
        ch = grpc.insecure_channel(self.als_target)
        self._channels.append(ch)
        return ch

    def stub(self, channel: grpc.Channel | None = None):
        return als_pb2_grpc.AccessLogServiceStub(channel or self.channel())

    def raw_stream(self, channel: grpc.Channel | None = None):
        """A StreamAccessLogs call that sends raw bytes as messages (identity serializers)."""
        return (channel or self.channel()).stream_unary(
            METHOD_PATH, request_serializer=None, response_deserializer=None
        )

    def http_get(self, path: str) -> tuple[int, str]:
        return http_call(f"http://127.0.0.1:{self.admin_port}{path}")

    def metrics(self) -> dict[str, float]:
        """`/metrics` as {'name{labels}': value}."""
        status, body = self.http_get("/metrics")
        assert status == 200, f"GET /metrics: {status}"
        out = {}
        for line in body.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def metric(self, name: str) -> float:
        m = self.metrics()
        assert name in m, f"{name} not in /metrics: {sorted(m)}"
        return m[name]

    def wait_metric(self, name: str, at_least: float, timeout: float = 10.0) -> float:
        """Polls /metrics until `name` reaches `at_least`; returns its value."""

        def reached():
            v = self.metric(name)
            return (v,) if v >= at_least else None

        return wait_until(reached, timeout, f"{name} >= {at_least}")[0]

    # ---- what it printed ------------------------------------------------------------------
    def stdout(self) -> str:
        return self.stdout_path.read_bytes().decode(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_bytes().decode(errors="replace")

    def output_bytes(self) -> bytes:
        return self.stdout_path.read_bytes() + self.stderr_path.read_bytes()


# ---- reading the Parquet back ------------------------------------------------------------------
@dataclass
class Output:
    """Everything a stopped collector wrote under its data dir."""

    data_dir: Path

    def files(self) -> list[Path]:
        return sorted(p for p in self.data_dir.rglob("*") if p.is_file())

    def parquet_files(self) -> list[Path]:
        return [p for p in self.files() if p.name.endswith(".parquet")]

    def duckdb(self) -> duckdb.DuckDBPyConnection:
        con = duckdb.connect()
        glob = str(self.data_dir / "**" / "*.parquet").replace("'", "''")
        con.execute(
            f"CREATE VIEW records AS SELECT * FROM read_parquet('{glob}', hive_partitioning=true)"
        )
        return con

    def duckdb_rows(self) -> list[dict]:
        """Rows as dicts, timestamps as integer epoch microseconds (no time-zone conversion)."""
        con = self.duckdb()
        types = con.execute("SELECT column_name, column_type FROM (DESCRIBE records)").fetchall()
        select = ", ".join(
            f'epoch_us("{c}") AS "{c}"' if t.startswith("TIMESTAMP") else f'"{c}"'
            for c, t in types
        )
        cur = con.execute(f"SELECT {select} FROM records")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]

    def arrow_table(self):
        """All files read with pyarrow's dataset reader (hive partitions discovered)."""
        return pq.read_table(self.data_dir, partitioning="hive")

    def arrow_rows(self) -> list[dict]:
        table = self.arrow_table()
        # Timestamps as integer microseconds, as duckdb_rows gives them.
        cols = []
        for f in table.schema:
            col = table.column(f.name)
            if pa.types.is_timestamp(f.type):
                col = col.cast(pa.int64())
            cols.append(col)
        return pa.table(cols, names=table.schema.names).to_pylist()


def contract_columns() -> dict[str, str]:
    """{column: sql type} from the column tables of docs/audit-record.md."""
    cols: dict[str, str] = {}
    in_table = False
    for line in CONTRACT.read_text().splitlines():
        if line.startswith("| column | type |"):
            in_table = True
            continue
        if not line.startswith("|"):
            in_table = False
            continue
        cells = [c.strip() for c in line.split("|")]
        if in_table and len(cells) > 3 and not cells[1].startswith("---"):
            cols[cells[1]] = cells[2]
    assert len(cols) > 50, f"parsed only {len(cols)} columns from {CONTRACT}"
    return cols


PARTITION_DIR = re.compile(r"^dt=(\d{4})-(\d{2})-(\d{2})/hour=(\d{2})/[^/]+\.parquet$")
