"""Tamper-evidence digests are reproducible from the stored rows alone: this is a second,
independent implementation of docs/tamper-evidence.md (the canonical record encoding,
records_sha256, the record tags, the statement bytes and the chain links) with pyarrow and
hashlib, and it must agree with every digest the collector wrote. (The Ed25519 signatures are
checked by `meshaudit verify` in tests/tamper_evidence.rs; the standard library has no Ed25519.)"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import struct
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from harness import contract_columns

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def text(s: str) -> bytes:
    b = s.replace("\x00", "\ufffd").encode()
    return struct.pack(">I", len(b)) + b


def record_hash(row: dict, columns: list[tuple[str, str]]) -> bytes:
    out = bytearray(b"meshaudit.record.v1\x00")
    for name, sql_type in columns:
        v = row.get(name)
        if v is None:
            continue
        out += bytes([len(name)]) + name.encode()
        if sql_type == "text":
            out += text(v)
        elif sql_type == "int":
            out += struct.pack(">i", v)
        elif sql_type in ("bigint", "timestamptz"):
            out += struct.pack(">q", v)
        elif sql_type == "float8":
            out += bytes.fromhex("7ff8000000000000") if v != v else struct.pack(">d", v)
        elif sql_type == "bool":
            out += b"\x01" if v else b"\x00"
        elif sql_type == "text[]":
            out += struct.pack(">I", len(v))
            for x in v:
                out += b"\x00" if x is None else b"\x01" + text(x)
        else:
            raise AssertionError(f"unknown contract type {sql_type}")
    return hashlib.sha256(out).digest()


def file_rows(path: Path) -> list[dict]:
    table = pq.read_table(path)
    cols = []
    for name in table.schema.names:
        col = table.column(name)
        if pa.types.is_timestamp(col.type):
            assert col.type.unit == "us", (name, col.type)
            col = col.cast(pa.int64())
        cols.append(col)
    return pa.table(cols, names=table.schema.names).to_pylist()


def micros(rfc3339: str) -> int:
    t = dt.datetime.fromisoformat(rfc3339.replace("Z", "+00:00"))
    return (t - EPOCH) // dt.timedelta(microseconds=1)


def statement(d: dict, tags: bytes) -> bytes:
    def s(x: str) -> bytes:
        b = x.encode()
        return struct.pack(">I", len(b)) + b

    def opt(h: str | None) -> bytes:
        return b"\x00" if h is None else b"\x01" + bytes.fromhex(h)

    return (
        b"meshaudit.digest.v1\x00"
        + s(d["sink"])
        + s(d["kind"])
        + s(d["instance_id"])
        + struct.pack(">Q", d["seq"])
        + struct.pack(">q", micros(d["created_at"]))
        + opt(d["previous_digest_sha256"])
        + s(d["object"])
        + struct.pack(">Q", d["record_count"])
        + bytes.fromhex(d["records_sha256"])
        + hashlib.sha256(tags).digest()
        + opt(d["file_sha256"])
        + struct.pack(">Q", d["file_bytes"])
        + b"\x00"
        + base64.b64decode(d["public_key"])
    )


def digests(data_dir: Path) -> dict[str, list[dict]]:
    chains: dict[str, list[dict]] = {}
    for f in sorted((data_dir / "_digests").glob("*/*.json")):
        chains.setdefault(f.parent.name, []).append(json.loads(f.read_text()))
    return chains


def test_every_file_has_one_digest_that_the_stored_rows_reproduce(ingested):
    root = ingested.output.data_dir
    columns = list(contract_columns().items())
    chains = digests(root)
    assert len(chains) == 1, f"one collector, one chain: {list(chains)}"
    signed = {d["object"]: d for chain in chains.values() for d in chain}
    files = {f.relative_to(root).as_posix(): f for f in ingested.output.parquet_files()}
    assert set(signed) == set(files)
    for name, path in files.items():
        d = signed[name]
        raw = path.read_bytes()
        assert d["file_sha256"] == hashlib.sha256(raw).hexdigest(), name
        assert d["file_bytes"] == len(raw), name
        hashes = [record_hash(r, columns) for r in file_rows(path)]
        assert d["record_count"] == len(hashes), name
        h = hashlib.sha256(b"meshaudit.records.v1\x00")
        for x in hashes:
            h.update(x)
        h.update(struct.pack(">Q", len(hashes)))
        assert d["records_sha256"] == h.hexdigest(), name
        assert base64.b64decode(d["record_tags"]) == b"".join(x[:4] for x in hashes), name


def test_each_digest_hashes_its_statement_and_links_to_the_previous(ingested):
    for instance, chain in digests(ingested.output.data_dir).items():
        previous = None
        for seq, d in enumerate(sorted(chain, key=lambda d: d["seq"]), start=1):
            assert (d["format"], d["sink"], d["kind"]) == ("meshaudit-digest-v1", "parquet", "file")
            assert (d["instance_id"], d["seq"]) == (instance, seq)
            assert d["previous_digest_sha256"] == previous, (instance, seq)
            tags = base64.b64decode(d["record_tags"])
            digest = hashlib.sha256(statement(d, tags)).hexdigest()
            assert d["digest_sha256"] == digest, (instance, seq)
            assert len(base64.b64decode(d["signature"])) == 64
            previous = digest
