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
import pyarrow as pa
import pyarrow.parquet as pq

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


def test_duckdb_agrees_on_callers_people_apps_and_renames(start_collector, tmp_path):
    """The caller columns (latest name per key, the client apps beside) mean the same in DuckDB
    as in meshaudit's evaluator: people without name claims sharing a client app, one person
    through two apps renamed in the range, a service principal by app id, a workload."""
    c = start_collector()
    sent = run(
        "loadgen", "--target", f"127.0.0.1:{c.als_port}", "--streams", "1",
        "--connections", "1", "--duration-secs", "1", "--rate", "200", "--seed", "3",
    )
    assert sent.returncode == 0, sent.stderr
    c.wait_metric("meshaudit_als_entries_received_total", json.loads(sent.stdout)["entries"])
    assert c.stop() == 0
    # The collector's own schema, so the crafted rows are what the sink would write.
    schema = pq.read_schema(next(iter(sorted(c.data_dir.rglob("*.parquet")))))

    base = dt.datetime(2026, 3, 2, 10, 0, tzinfo=dt.timezone.utc)
    rows = []

    def add(kind, t, **cols):
        r = {f.name: None for f in schema}
        r.update(
            record_id=f"{len(rows):032x}", start_time=base + dt.timedelta(seconds=t),
            received_at=base, entry_kind="http", identity_kind=kind,
            token_status="proxy_verified" if kind != "workload" else "absent",
            destination_namespace="shop", destination_service="orders", response_flags=[],
        )
        r.update(cols)
        for f in schema:  # required columns the scenario does not care about
            if not f.nullable and r[f.name] is None:
                r[f.name] = "none" if pa.types.is_string(f.type) else base
        rows.append({k: v for k, v in r.items() if k in schema.names})

    web = dict(app_id="app-web", app_display_name="orders-web")
    for i in range(3):
        add("user", i, object_id="oid-nn1", **web)
    for i in range(2):
        add("user", 10 + i, object_id="oid-nn2", **web)
    add("user", 20, object_id="oid-dan", user_principal="dan@old.example", **web)
    # Same second, two labels: the greater one (byte order) wins everywhere.
    add("user", 30, object_id="oid-dan", user_principal="dan@new.example", app_id="app-cli")
    add("user", 30, object_id="oid-dan", user_principal="dan@NEW.example", app_id="app-cli")
    add("user", 40, object_id="oid-dan", app_id="app-cli")
    add("service_principal", 5, object_id="oid-sp", app_id="app-sp", app_display_name="old")
    add("service_principal", 50, object_id="oid-sp", app_id="app-sp", app_display_name="agent")
    add("workload", 7, source_principal="spiffe://cluster.local/ns/a/sa/b")
    add("anonymous", 8, token_status="absent")

    data = tmp_path / "crafted"
    part = data / "dt=2026-03-02" / "hour=10"
    part.mkdir(parents=True)
    pq.write_table(
        pa.Table.from_pylist(rows, schema=schema), part / "crafted.parquet", compression="zstd"
    )
    doc = check_report_against_duckdb(
        data, tmp_path / "report", ("2026-03-02T10:00:00Z", "2026-03-02T11:00:00Z")
    )
    review = {r["caller_id"]: r for r in next(
        s for s in doc["sections"] if s["id"] == "access_review")["rows"]}
    assert set(review) == {"oid-nn1", "oid-nn2", "oid-dan", "app-sp",
                           "spiffe://cluster.local/ns/a/sa/b", None}
    assert (review["oid-nn1"]["caller"], review["oid-nn1"]["requests"]) == (None, 3)
    assert (review["oid-nn2"]["caller"], review["oid-nn2"]["requests"]) == (None, 2)
    assert review["oid-nn1"]["client_apps"] == ["orders-web"]
    dan = review["oid-dan"]
    assert (dan["caller"], dan["requests"]) == ("dan@new.example", 4)
    assert dan["client_apps"] == ["app-cli", "orders-web"]
    assert (review["app-sp"]["caller"], review["app-sp"]["client_apps"]) == ("agent", [])
