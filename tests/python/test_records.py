"""Column values: entries streamed with Envoy's official stubs over concurrent streams, read back
with DuckDB and with pyarrow, compared with docs/audit-record.md."""

from __future__ import annotations

import math
import re
from collections import Counter

import pytest

import corpus as C
from entries import HTTP_LOG, NODE_CHECKOUT, NODE_GATEWAY
from harness import contract_columns


def test_collector_exits_0_on_sigterm(ingested):
    assert ingested.returncode == 0, ingested.collector.stderr()[-4000:]


def test_every_entry_becomes_exactly_one_row(ingested, rows):
    counts = Counter(C.row_key(r) for r in rows)
    expected = {k: 1 for k in ingested.corpus.expected}
    expected.update(ingested.corpus.resent)
    missing = sorted(k for k in expected if counts.get(k, 0) == 0)
    assert not missing, f"{len(missing)} entries never landed, e.g. {missing[:5]}"
    wrong = {k: (counts[k], n) for k, n in expected.items() if counts[k] != n}
    assert not wrong, f"(rows, sends) differ: {dict(list(wrong.items())[:5])}"
    assert sum(counts.values()) == ingested.corpus.total_entries()


def _check(row: dict, want: dict) -> list[str]:
    problems = []
    for col, value in want.items():
        assert col in row, f"column {col} missing from the output"
        got = row[col]
        if isinstance(value, float) and isinstance(got, float):
            same = math.isclose(got, value, rel_tol=0, abs_tol=1e-9)
        else:
            same = got == value
        if not same:
            problems.append(f"{col}: expected {value!r}, got {got!r}")
    return problems


@pytest.mark.parametrize(
    "key", ["req-h1", "req-h2", "req-h3", "tcp-1000", "tcp-1001", "req-s1", "req-s2"]
)
def test_column_values(ingested, rows, key):
    [row] = ingested.by_key(rows)[key]
    problems = _check(row, ingested.corpus.expected[key])
    assert not problems, f"{key}:\n  " + "\n  ".join(problems)


def test_identifier_of_the_first_message_labels_every_entry_of_its_stream(ingested, rows):
    """Only each stream's first message carries the Identifier; entries of later messages (and
    of concurrent streams from other nodes) must each carry their own stream's."""
    by_key = ingested.by_key(rows)
    problems = []
    for key, want in ingested.corpus.expected.items():
        if key.startswith("fill-"):
            [row] = by_key[key]
            problems += [f"{key} {p}" for p in _check(row, want)]
    assert not problems, "\n".join(problems[:10])


def test_received_at_is_the_collectors_clock(ingested, rows):
    for r in rows:
        assert ingested.sent_from_us - 1_000_000 <= r["received_at"] <= ingested.stopped_at_us, r


def test_record_id_shape(rows):
    for r in rows:
        assert re.fullmatch(r"[0-9a-f]{32}", r["record_id"]), r["record_id"]


def test_resent_entry_keeps_its_record_id(ingested):
    """The same entry from the same node and log name, on two streams (a reconnect), has one id;
    from another log name or another node id it is another record."""
    con = ingested.output.duckdb()
    rows = con.execute(
        "SELECT node_id, log_name, COUNT(*), COUNT(DISTINCT record_id), MIN(record_id)"
        " FROM records WHERE request_id = 'req-dup' GROUP BY ALL ORDER BY ALL"
    ).fetchall()
    by_origin = {(n, l): (count, distinct, rid) for n, l, count, distinct, rid in rows}
    assert set(by_origin) == {
        (NODE_CHECKOUT, HTTP_LOG),
        (NODE_CHECKOUT, "other_accesslog"),
        (NODE_GATEWAY, HTTP_LOG),
    }
    count, distinct, _ = by_origin[(NODE_CHECKOUT, HTTP_LOG)]
    assert (count, distinct) == (2, 1), "a re-sent entry must keep its record_id"
    ids = [rid for _, _, rid in by_origin.values()]
    assert len(set(ids)) == 3, f"node id and log name must be part of record_id: {by_origin}"
    [[n_distinct]] = con.execute(
        "SELECT COUNT(DISTINCT record_id) FROM records WHERE request_id = 'req-dup'"
    ).fetchall()
    assert n_distinct == 3


def test_different_entries_have_different_record_ids(ingested):
    con = ingested.output.duckdb()
    [[rows, ids, keys]] = con.execute(
        "SELECT COUNT(*), COUNT(DISTINCT record_id),"
        " COUNT(DISTINCT coalesce(request_id, 'tcp-' || request_bytes))"
        " FROM records WHERE request_id IS DISTINCT FROM 'req-dup'"
    ).fetchall()
    assert rows == ids == keys


def test_readers_agree(ingested):
    """DuckDB and pyarrow, reading the same files, see the same rows in every contract column."""
    cols = list(contract_columns())

    def project(rows):
        return sorted((tuple(r[c] for c in cols) for r in rows), key=repr)

    assert len(ingested.duckdb_rows) == len(ingested.arrow_rows) > 0
    assert project(ingested.duckdb_rows) == project(ingested.arrow_rows)
