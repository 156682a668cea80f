"""`meshaudit report --data-dir`: every section shows a DuckDB query over the Parquet files; run
here in DuckDB (a tool meshaudit does not use), it must give exactly the rows meshaudit computed
itself, before and after every file is written twice (at-least-once delivery)."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
from pathlib import Path

import duckdb

from harness import binary, child_env

# Every loadgen user has Orders.Approver, so a role of the service principals is named instead:
# which users count as privileged then depends on their groups alone.
PRIVILEGED = [
    "--privileged-role",
    "Orders.Read.All",
    "--privileged-group",
    "5c6d7e8f-0000-4000-8000-000000000003",
    "--privileged-group",
    "5c6d7e8f-0000-4000-8000-00000000001d",
]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(binary()), *args], capture_output=True, text=True, env=child_env(), timeout=120
    )


def canonical(rows: list[dict]) -> list[str]:
    return sorted(json.dumps(r, sort_keys=True) for r in rows)


def duckdb_rows(con: duckdb.DuckDBPyConnection, query: dict) -> list[dict]:
    params = [p["value"] for p in query["parameters"]]
    cur = con.execute(query["text"], params)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def check_report_against_duckdb(data_dir: Path, out: Path, span: tuple[str, str]) -> dict:
    done = run(
        "report", "--from", span[0], "--to", span[1], "--data-dir", str(data_dir),
        "--out", str(out), "--format", "json", *PRIVILEGED,
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads((out / "report.json").read_text())
    con = duckdb.connect()
    for s in doc["sections"]:
        [query] = s["queries"]
        assert query["dialect"] == "DuckDB"
        got = duckdb_rows(con, query)
        assert canonical(got) == canonical(s["rows"]), s["id"]
    return doc


def test_duckdb_reruns_every_section_with_the_same_rows(start_collector, tmp_path):
    c = start_collector()
    sent = run(
        "loadgen", "--target", f"127.0.0.1:{c.als_port}", "--streams", "2",
        "--connections", "1", "--duration-secs", "1", "--rate", "2000",
        "--deny-ratio", "0.2", "--seed", "11",
    )
    assert sent.returncode == 0, sent.stderr
    entries = json.loads(sent.stdout)["entries"]
    assert entries > 500
    c.wait_metric("meshaudit_als_entries_received_total", entries)
    assert c.stop() == 0

    today = dt.datetime.now(dt.timezone.utc).date()
    span = (str(today - dt.timedelta(days=1)), str(today + dt.timedelta(days=2)))
    doc = check_report_against_duckdb(c.data_dir, tmp_path / "first", span)
    by_id = {s["id"]: s for s in doc["sections"]}
    assert by_id["access_review"]["records"] == entries
    for sid in ("denied_by_policy", "dry_run_would_deny", "privileged_access", "token_anomalies"):
        assert by_id[sid]["records"] > 0, f"{sid} is empty: the comparison would prove little"

    # Replay: every Parquet file written a second time.
    files = sorted(c.data_dir.rglob("*.parquet"))
    for i, f in enumerate(files):
        shutil.copy(f, f.with_name(f"part-replayed-{i}.parquet"))
    again = check_report_against_duckdb(c.data_dir, tmp_path / "replayed", span)
    assert again["source"]["duplicate_rows_removed"] == entries
    strip = lambda d: [(s["id"], s["rows"]) for s in d["sections"]]  # noqa: E731
    assert strip(again) == strip(doc)
