"""The Parquet files themselves: physical and logical types exactly as docs/audit-record.md says,
and the dt=YYYY-MM-DD/hour=HH/ layout."""

from __future__ import annotations

import datetime as dt
import json

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from harness import PARTITION_DIR, contract_columns

# Contract type -> (Parquet physical type of the leaf, logical type JSON as pyarrow reports it;
# None where the contract allows only the bare physical type or its plain integer annotation).
LEAF_TYPES = {
    "text": ("BYTE_ARRAY", {"Type": "String"}),
    "int": ("INT32", None),
    "bigint": ("INT64", None),
    "float8": ("DOUBLE", None),
    "bool": ("BOOLEAN", None),
    "timestamptz": (
        "INT64",
        {"Type": "Timestamp", "isAdjustedToUTC": True, "timeUnit": "microseconds"},
    ),
    "text[]": ("BYTE_ARRAY", {"Type": "String"}),
}
PLAIN_INTEGER = {"INT32": (32, True), "INT64": (64, True)}


def logical(col) -> dict:
    return json.loads(col.logical_type.to_json())


def test_there_are_files(ingested):
    assert ingested.output.parquet_files(), "the collector wrote no Parquet file"


def test_leaf_types_follow_the_contract(ingested):
    contract = contract_columns()
    for f in ingested.output.parquet_files():
        schema = pq.ParquetFile(f).schema
        leaves = {}
        for i in range(len(schema)):
            col = schema.column(i)
            leaves.setdefault(col.path.split(".")[0], []).append(col)
        problems = []
        for name, sql_type in contract.items():
            if name not in leaves:
                problems.append(f"{name}: missing")
                continue
            [col] = leaves[name]
            physical, want_logical = LEAF_TYPES[sql_type]
            got = logical(col)
            if col.physical_type != physical:
                problems.append(f"{name} ({sql_type}): physical {col.physical_type}, want {physical}")
            if want_logical is not None:
                if {k: got.get(k) for k in want_logical} != want_logical:
                    problems.append(f"{name} ({sql_type}): logical {got}, want {want_logical}")
            elif got.get("Type") not in ("None", None):
                bits_signed = (got.get("bitWidth"), got.get("isSigned"))
                if got.get("Type") != "Int" or bits_signed != PLAIN_INTEGER.get(physical):
                    problems.append(f"{name} ({sql_type}): unexpected logical type {got}")
            # A list column's leaf is repeated once (LIST<UTF8>); a scalar column's is not.
            want_rep = 1 if sql_type == "text[]" else 0
            if col.max_repetition_level != want_rep:
                problems.append(
                    f"{name} ({sql_type}): repetition level {col.max_repetition_level}, want {want_rep}"
                )
        assert not problems, f"{f.name}:\n  " + "\n  ".join(problems)


def test_list_columns_are_annotated_list(ingested):
    """text[] must be a LIST-annotated group, so that readers without the embedded Arrow schema
    (Spark, Trino, a Postgres FDW) see a list too; read with DuckDB's own Parquet reader."""
    lists = [n for n, t in contract_columns().items() if t == "text[]"]
    con = duckdb.connect()
    for f in ingested.output.parquet_files():
        rows = con.execute(
            "SELECT name, converted_type, logical_type, num_children FROM parquet_schema(?)",
            [str(f)],
        ).fetchall()
        groups = {name: (conv, logic, n) for name, conv, logic, n in rows if n}
        for name in lists:
            conv, logic, n = groups.get(name, (None, None, None))
            assert conv == "LIST" and logic and logic.startswith("ListType"), (f.name, name, conv, logic)
            assert n == 1, (f.name, name, n)


def test_every_parquet_file_is_in_its_partition(ingested):
    """Every file sits under dt=YYYY-MM-DD/hour=HH/ (UTC, zero-padded), and every row in it has
    a start_time in that hour."""
    root = ingested.output.data_dir
    for f in ingested.output.files():
        rel = f.relative_to(root).as_posix()
        if not rel.endswith(".parquet"):
            continue
        m = PARTITION_DIR.match(rel)
        assert m, f"{rel} is not under dt=YYYY-MM-DD/hour=HH/"
        y, mo, d, h = map(int, m.groups())
        start = dt.datetime(y, mo, d, h, tzinfo=dt.timezone.utc)
        table = pq.read_table(f, columns=["start_time"])
        for t in table.column("start_time").to_pylist():
            assert t is not None and start <= t < start + dt.timedelta(hours=1), (rel, t)


def test_partitions_are_the_hours_of_start_time(ingested):
    dirs = {f.parent.relative_to(ingested.output.data_dir).as_posix() for f in ingested.output.parquet_files()}
    # 09:xx and the TCP entry at 09:59:58.5; 23:59:59.999999(999) stays in hour 23 of the 2nd;
    # 00:00:00.000001 on the 3rd.
    assert dirs == {"dt=2026-03-02/hour=09", "dt=2026-03-02/hour=23", "dt=2026-03-03/hour=00"}


def test_nothing_is_left_in_progress_after_sigterm(ingested):
    # The durable spool (docs/storage.md) keeps its segments and cursors under _spool/.
    root = ingested.output.data_dir
    files = [f.relative_to(root).as_posix() for f in ingested.output.files()]
    leftovers = [f for f in files if not f.endswith(".parquet") and not f.startswith("_spool/")]
    assert not leftovers, f"files other than finished .parquet under the data dir: {leftovers}"
    assert not any(f.startswith("_spool/") and f.endswith(".parquet") for f in files)


@pytest.mark.parametrize("column", ["start_time", "received_at"])
def test_timestamps_are_utc_microseconds_for_both_readers(ingested, column):
    """pyarrow sees timestamp[us, tz=UTC]; DuckDB sees TIMESTAMP WITH TIME ZONE."""
    field = ingested.output.arrow_table().schema.field(column)
    assert field.type == pa.timestamp("us", tz="UTC"), field.type
    con = ingested.output.duckdb()
    [[t]] = con.execute(f"SELECT typeof({column}) FROM records LIMIT 1").fetchall()
    assert t == "TIMESTAMP WITH TIME ZONE"
