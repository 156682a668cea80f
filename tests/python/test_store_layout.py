"""Reports and `meshaudit verify` read exactly the same files (issue 15, item 1): with write
access to the data dir but not the signing key, forged rows placed behind a symbolic link must
make `verify` fail, naming the link, and must never be counted by a report, whose numbers must
still equal what DuckDB (a tool meshaudit does not use) computes from the report's own SQL."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from entries import http_entry, identifier, stream, utc
from test_report import check_report_against_duckdb, run

NODE = "sidecar~10.1.2.3~checkout-7d9f.orders~orders.svc.cluster.local"


def forge(signed: Path, out: Path) -> None:
    """The signed file's rows with new record ids and decision `allow`: 50 forged requests."""
    t = pq.read_table(signed)
    n = t.num_rows
    for name, values in (
        ("record_id", [f"{0xF0F0 + i:032x}" for i in range(n)]),
        ("decision", ["allow"] * n),
    ):
        i = t.schema.get_field_index(name)
        t = t.set_column(i, t.schema.field(i), pa.array(values, pa.string()))
    pq.write_table(t, out)


def verify(data: Path, key: Path) -> tuple[int, dict]:
    done = run("verify", "--data-dir", str(data), "--public-key", str(key), "--json")
    return done.returncode, json.loads(done.stdout)


def test_forged_rows_behind_a_symlinked_hour_fail_verify_and_are_never_reported(
    start_collector, tmp_path
):
    c = start_collector()
    start = utc(2026, 1, 1, 10, 5)
    entries = [
        http_entry(start=start, path=f"/orders/{i}", request_id=f"req-{i}") for i in range(50)
    ]
    c.stub().StreamAccessLogs(iter(stream(identifier(NODE, "http_log"), [entries])), timeout=30)
    assert c.stop() == 0
    data = c.data_dir
    [signed] = sorted(data.glob("dt=2026-01-01/hour=10/*.parquet"))
    key = tmp_path / "collector.pub"
    assert run("public-key", "--data-dir", str(data), "--out", str(key)).returncode == 0
    code, doc = verify(data, key)
    assert code == 0, doc
    assert doc["parquet"]["records"] == 50

    outside = tmp_path / "outside"
    outside.mkdir()
    forge(signed, outside / "part-forged.parquet")
    (data / "dt=2026-01-01" / "hour=11").symlink_to(outside, target_is_directory=True)

    code, doc = verify(data, key)
    assert code == 1, doc
    assert [(f["kind"], f["file"]) for f in doc["findings"]] == [
        ("not_in_store", "dt=2026-01-01/hour=11")
    ], doc
    assert doc["parquet"]["records"] == 50

    span = ("2026-01-01", "2026-01-02")
    report = check_report_against_duckdb(data, tmp_path / "report", span)
    by_id = {s["id"]: s for s in report["sections"]}
    assert by_id["access_review"]["records"] == 50
    assert report["source"]["files_read"] == 1
    [skipped] = report["source"]["skipped"]
    assert skipped.startswith("dt=2026-01-01/hour=11: a symbolic link"), skipped

    # A glob would read a linked file (DuckDB's ** does) and stop at a .parquet file outside
    # the layout (a hive partition mismatch): the report's SQL then names the files it read,
    # and DuckDB must still agree with it.
    (data / "dt=2026-01-01" / "hour=10" / "part-linked.parquet").symlink_to(
        outside / "part-forged.parquet"
    )
    (data / "extra.parquet").write_bytes((outside / "part-forged.parquet").read_bytes())
    code, doc = verify(data, key)
    assert code == 1, doc
    assert sorted(f["file"] for f in doc["findings"] if f["kind"] == "not_in_store") == [
        "dt=2026-01-01/hour=10/part-linked.parquet",
        "dt=2026-01-01/hour=11",
        "extra.parquet",
    ], doc
    report = check_report_against_duckdb(data, tmp_path / "report-2", span)
    by_id = {s["id"]: s for s in report["sections"]}
    assert by_id["access_review"]["records"] == 50
    assert len(report["source"]["skipped"]) == 3
    [query] = by_id["access_review"]["queries"]
    assert f"read_parquet(['{data.resolve() / signed.relative_to(data)}']" in query["text"]
