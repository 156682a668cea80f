"""Stream-level behaviour, each test against its own collector: malformed input is refused per
stream (INVALID_ARGUMENT, counted in /metrics) without harming healthy streams; a stream must
start with an Identifier; SIGTERM with a stream still open drains and exits 0."""

from __future__ import annotations

import datetime as dt
import threading

import grpc
import pytest

import entries as E
from harness import Output

MALFORMED = 'meshaudit_als_messages_rejected_total{reason="malformed"}'
NO_IDENTIFIER = 'meshaudit_als_messages_rejected_total{reason="no_identifier"}'
ENTRIES_RECEIVED = "meshaudit_als_entries_received_total"
T = E.utc(2026, 3, 2, 10, 0, 0)
WAIT_S = 30.0

# A field key that is an over-long varint: no protobuf decoder can read past it.
GARBAGE = b"\xff" * 11 + b"this is not a StreamAccessLogsMessage"
ENTRY_SECRET = "SECRETinMALFORMEDentry42"


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def length_delimited(field: int, payload: bytes) -> bytes:
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def entries_for(prefix: str, n: int) -> list:
    return [
        E.http_entry(start=T + dt.timedelta(milliseconds=i), path=f"/{prefix}/{i}", request_id=f"{prefix}-{i}")
        for i in range(n)
    ]


def request_ids(c) -> list[str]:
    out = Output(c.data_dir)
    if not out.parquet_files():
        return []
    return [r[0] for r in out.duckdb().execute("SELECT request_id FROM records").fetchall()]


def test_malformed_stream_is_refused_beside_a_healthy_one(start_collector):
    c = start_collector()
    assert c.metric(MALFORMED) == 0
    channel = c.channel()  # both streams share one HTTP/2 connection, as Envoy's do
    healthy = E.stream(
        E.identifier(E.NODE_CHECKOUT, E.HTTP_LOG),
        [entries_for("healthy-a", 10), entries_for("healthy-b", 10), entries_for("healthy-c", 10)],
    )
    bad_refused = threading.Event()

    def healthy_messages():
        yield healthy[0]
        # The rest only once the malformed stream has been refused: the healthy stream is open
        # before, during and after the refusal.
        if bad_refused.wait(timeout=WAIT_S):
            yield from healthy[1:]

    call = c.stub(channel).StreamAccessLogs.future(healthy_messages(), timeout=WAIT_S)
    c.wait_metric(ENTRIES_RECEIVED, 10)

    with pytest.raises(grpc.RpcError) as bad:
        c.raw_stream(channel)(iter([GARBAGE]), timeout=WAIT_S)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad.value
    bad_refused.set()

    call.result(timeout=WAIT_S)  # the healthy stream ends OK
    assert c.metric(MALFORMED) == 1
    assert c.metric(ENTRIES_RECEIVED) == 30
    assert c.stop() == 0
    ids = request_ids(c)
    want = [f"healthy-{p}-{i}" for p in "abc" for i in range(10)]
    assert sorted(ids) == sorted(want)


def test_malformed_entry_in_a_valid_message_is_refused_and_not_echoed(start_collector):
    """The message decodes but one of its entries does not: the stream is refused, earlier
    messages of the stream stay accepted, and the bad entry's contents appear nowhere."""
    c = start_collector()
    good = E.message(entries_for("before-bad", 2), E.identifier(E.NODE_CHECKOUT, E.HTTP_LOG))
    entry = E.http_entry(start=T, path=f"/cb?code={ENTRY_SECRET}", request_id="bad-entry")
    # A valid entry, then field 1 (common_properties) again, with a length of 1 MiB that runs
    # past the end of the entry.
    broken = entry.SerializeToString() + varint(1 << 3 | 2) + varint(1 << 20)
    bad = length_delimited(2, length_delimited(1, broken))  # http_logs { log_entry: broken }

    with pytest.raises(grpc.RpcError) as err:
        c.raw_stream()(iter([good.SerializeToString(), bad]), timeout=WAIT_S)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
    assert ENTRY_SECRET not in (err.value.details() or "")
    assert c.metric(MALFORMED) == 1
    assert c.stop() == 0
    assert sorted(request_ids(c)) == ["before-bad-0", "before-bad-1"]
    assert ENTRY_SECRET.encode() not in c.output_bytes()
    for f in Output(c.data_dir).files():
        assert ENTRY_SECRET.encode() not in f.read_bytes(), f


def test_first_message_without_identifier_is_refused(start_collector):
    c = start_collector()
    with pytest.raises(grpc.RpcError) as err:
        c.stub().StreamAccessLogs(iter([E.message(entries_for("anon", 3))]), timeout=WAIT_S)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
    assert c.metric(NO_IDENTIFIER) == 1
    assert c.metric(MALFORMED) == 0
    assert c.metric(ENTRIES_RECEIVED) == 0
    assert c.stop() == 0
    assert request_ids(c) == []


def test_sigterm_with_a_stream_open_drains_and_exits_0(start_collector):
    """Envoy keeps its streams open for ever: a shutdown always meets open streams. What was
    accepted before SIGTERM is written; the stream is ended so Envoy reconnects elsewhere."""
    c = start_collector()
    release = threading.Event()
    msgs = E.stream(E.identifier(E.NODE_CHECKOUT, E.HTTP_LOG), [entries_for("open", 5)])

    def never_ending():
        yield from msgs
        release.wait(timeout=WAIT_S)

    call = c.stub().StreamAccessLogs.future(never_ending(), timeout=WAIT_S)
    try:
        c.wait_metric(ENTRIES_RECEIVED, 5)
        assert c.stop() == 0
        with pytest.raises(grpc.RpcError) as err:
            call.result(timeout=WAIT_S)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value
    finally:
        release.set()
    assert sorted(request_ids(c)) == [f"open-{i}" for i in range(5)]
