"""The SQLite backend stores a batch set-based (packed blobs, a few statements) when it can,
row by row otherwise: both must leave exactly the same rows."""

import os
import random

import pytest

from streamledger.backends import sqlite as sqlite_backend
from streamledger.backends.base import AppendBatch, LedgerConfig
from streamledger.backends.sqlite import SQLiteBackend
from streamledger.core.merkle import NodeRuns


def _rows(backend: SQLiteBackend) -> tuple[list, list]:
    conn = backend._conn
    return (
        conn.execute("SELECT *, typeof(record_key) FROM entries ORDER BY 1, 2, 3").fetchall(),
        conn.execute("SELECT * FROM nodes ORDER BY 1, 2, 3, 4").fetchall(),
    )


@pytest.mark.parametrize("chunk_bytes", [1, 500, sqlite_backend._CHUNK_BYTES])
def test_packed_insert_stores_what_row_by_row_insert_stores(tmp_path, monkeypatch, chunk_bytes):
    monkeypatch.setattr(sqlite_backend, "_CHUNK_BYTES", chunk_bytes)
    rng = random.Random(chunk_bytes)
    packed, rowwise = SQLiteBackend(tmp_path / "packed"), SQLiteBackend(tmp_path / "rows")
    for backend in (packed, rowwise):
        backend.create_ledger(LedgerConfig("l", partitions=2))
    sizes = [0, 0]
    fast = (sqlite_backend._insert_entries, sqlite_backend._insert_nodes)
    for _ in range(40):
        part, count = rng.randrange(2), rng.randrange(50)
        records = [os.urandom(rng.randrange(1, 300)) for _ in range(count)]
        keys = [
            [None] * count,
            [os.urandom(rng.randrange(0, 4)) for _ in range(count)],  # empty keys too
            [rng.choice([None, b"k"]) for _ in range(count)],  # mixed: row by row
        ][rng.randrange(3)]
        nodes = sorted((rng.randrange(3), i, os.urandom(32)) for i in range(rng.randrange(20)))
        if rng.random() < 0.2:
            nodes.append((0, 10_000, os.urandom(32)))  # not consecutive: row by row
        elif rng.random() < 0.3:  # what the ledger hands over: the nodes grouped by level
            nodes = NodeRuns(
                [
                    (level, rng.randrange(100), os.urandom(32 * rng.randrange(1, 6)))
                    for level in range(rng.randrange(4))
                ]
            )
        batch = AppendBatch(sizes[part], records, keys, nodes)
        packed.append("l", {part: batch})
        monkeypatch.setattr(sqlite_backend, "_insert_entries", lambda *a: False)
        monkeypatch.setattr(sqlite_backend, "_insert_nodes", lambda *a: False)
        rowwise.append("l", {part: batch})
        monkeypatch.setattr(sqlite_backend, "_insert_entries", fast[0])
        monkeypatch.setattr(sqlite_backend, "_insert_nodes", fast[1])
        sizes[part] += count
    assert _rows(packed) == _rows(rowwise)
    assert len(_rows(packed)[0]) == sum(sizes)
    for backend in (packed, rowwise):
        backend.close()
