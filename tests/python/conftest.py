"""Fixtures: `start_collector` (a fresh `meshaudit serve` per test) and `ingested` (one collector
run over the shared corpus, stopped with SIGTERM, its output read back; shared by the tests that
only read it).

Run through scripts/test. To rerun only this suite after `cargo build`:
    COLLECTOR_BIN=target/debug/meshaudit target/pyenv/bin/python -m pytest tests/python -k NAME
"""

from __future__ import annotations

import datetime as dt
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

import corpus as C
from entries import epoch_micros
from harness import Collector, Output

STREAM_TIMEOUT_S = 30.0


@pytest.fixture
def start_collector(tmp_path: Path):
    """Factory: `start_collector(*extra_args)` starts a collector; all are killed at teardown."""
    started: list[Collector] = []

    def start(*extra_args: str) -> Collector:
        c = Collector(tmp_path / f"collector-{len(started)}", *extra_args)
        started.append(c)
        return c.start()

    yield start
    for c in started:
        c.kill()


def gated(messages, barrier: threading.Barrier):
    """Yields a stream's first message, waits until every stream has sent its first, then the
    rest: the streams are open at the same time, whatever the thread scheduling."""
    yield messages[0]
    barrier.wait(timeout=STREAM_TIMEOUT_S)
    yield from messages[1:]


@dataclass
class Ingested:
    corpus: C.Corpus
    collector: Collector
    output: Output
    returncode: int
    sent_from_us: int
    stopped_at_us: int
    duckdb_rows: list[dict]
    arrow_rows: list[dict]

    def by_key(self, rows: list[dict]) -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = {}
        for r in rows:
            out.setdefault(C.row_key(r), []).append(r)
        return out


def now_us() -> int:
    return epoch_micros(dt.datetime.now(dt.timezone.utc))


@pytest.fixture(scope="session")
def ingested(tmp_path_factory) -> Ingested:
    corpus = C.build()
    collector = Collector(tmp_path_factory.mktemp("ingested"))
    try:
        collector.start()
        channels = [collector.channel(), collector.channel()]
        barrier = threading.Barrier(len(corpus.streams))
        sent_from = now_us()
        with ThreadPoolExecutor(max_workers=len(corpus.streams)) as pool:
            calls = {
                name: pool.submit(
                    collector.stub(channels[ch]).StreamAccessLogs,
                    gated(msgs, barrier),
                    timeout=STREAM_TIMEOUT_S,
                )
                for name, (ch, msgs) in corpus.streams.items()
            }
            for name, call in calls.items():
                # Raises the stream's gRPC error, if any, naming nothing secret.
                call.result(timeout=STREAM_TIMEOUT_S + 5)
        # Every entry has been handed to the collector; SIGTERM must still write them all.
        collector.wait_metric("meshaudit_als_entries_received_total", corpus.total_entries())
        returncode = collector.stop()
        stopped_at = now_us()
    finally:
        collector.kill()
    output = Output(collector.data_dir)
    return Ingested(
        corpus=corpus,
        collector=collector,
        output=output,
        returncode=returncode,
        sent_from_us=sent_from,
        stopped_at_us=stopped_at,
        duckdb_rows=output.duckdb_rows() if output.parquet_files() else [],
        arrow_rows=output.arrow_rows() if output.parquet_files() else [],
    )


@pytest.fixture(params=["duckdb", "pyarrow"])
def rows(request, ingested: Ingested) -> list[dict]:
    """The ingested rows as one of the two independent readers gives them."""
    return ingested.duckdb_rows if request.param == "duckdb" else ingested.arrow_rows
