"""Embedded backend: one SQLite database (WAL mode) under a data directory.

Each append is one SQLite transaction holding the entries and the Merkle nodes they
complete, so a batch is all or nothing and a killed process never leaves half an entry.
The head of a partition is derived from what is stored (``max(position) + 1``), never kept
in a second place that could disagree.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from streamledger.backends.base import (
    AppendBatch,
    LedgerConfig,
    NodeId,
    PartitionHead,
    check_document_kind,
)
from streamledger.core.entry import StoredRecord
from streamledger.core.merkle import NodeRuns
from streamledger.errors import BackendUnavailable, ConfigError, FormatError, WriteConflict

DB_NAME = "ledger.db"
SCHEMA_VERSION = 1
#: Page cache of the reading connection (KiB; SQLite's default is 2 MiB): keeps the interior
#: pages of the node and entry indexes of a large log resident between proofs.
_READ_CACHE_KIB = 32 * 1024
#: Nodes per batched lookup statement (2 bound values each, well under SQLite's limit).
_NODES_PER_QUERY = 200

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS ledgers (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    config TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS entries (
    ledger_id INTEGER NOT NULL,
    partition INTEGER NOT NULL,
    position INTEGER NOT NULL,
    record_key BLOB,
    record BLOB NOT NULL,
    PRIMARY KEY (ledger_id, partition, position)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS nodes (
    ledger_id INTEGER NOT NULL,
    partition INTEGER NOT NULL,
    level INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    hash BLOB NOT NULL,
    PRIMARY KEY (ledger_id, partition, level, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS documents (
    ledger_id INTEGER NOT NULL,
    kind TEXT NOT NULL,
    id INTEGER NOT NULL,
    doc_key TEXT NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (ledger_id, kind, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (
    ledger_id INTEGER NOT NULL,
    partition INTEGER NOT NULL,
    id INTEGER NOT NULL,
    tree_size INTEGER NOT NULL,
    note TEXT NOT NULL,
    PRIMARY KEY (ledger_id, partition, id)
) WITHOUT ROWID;
"""


class SQLiteBackend:
    """Ledgers in ``<data_dir>/ledger.db``. Safe to share between threads of one process."""

    def __init__(self, data_dir: str | Path, *, create: bool = True, durable: bool = True) -> None:
        """``durable=False`` skips the fsync at each commit (``PRAGMA synchronous=OFF``): a
        power loss may then lose the last appends. For scratch stores only (benchmark logs)."""
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / DB_NAME
        if not self.path.exists() and not create:
            raise ConfigError(
                f"no streamledger store at {self.path}: run 'streamledger init' first "
                "or pass --data-dir"
            )
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'OFF'}")
            self._conn.executescript(_SCHEMA)
            self._check_schema()
        except sqlite3.DatabaseError as exc:
            raise BackendUnavailable(f"cannot open SQLite store {self.path}: {exc}") from None
        except OSError as exc:
            raise BackendUnavailable(
                f"cannot create data directory {self.data_dir}: {exc}"
            ) from None
        self._lock = threading.RLock()
        self._ids: dict[str, int] = {}
        # Reads go through a connection of their own (see _query), with a larger page cache.
        self._reader: sqlite3.Connection | None = None
        self._reader_lock = threading.Lock()
        self._closed = False

    def _check_schema(self) -> None:
        row = self._conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if row is None:
            self._conn.execute(
                "INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),)
            )
        elif row[0] != str(SCHEMA_VERSION):
            raise BackendUnavailable(
                f"store {self.path} has schema version {row[0]}, this streamledger "
                f"reads version {SCHEMA_VERSION}"
            )

    def _query(self, sql: str, args: Sequence[object] = ()) -> list[tuple]:
        """A read, on the reading connection (opened on first use): it sees every committed
        append and never waits for the writing connection (WAL readers do not block on the
        writer), so a proof or a read is not held up by an append in progress."""
        try:
            with self._reader_lock:
                conn = self._reader
                if conn is None:
                    if self._closed:
                        raise BackendUnavailable(f"SQLite store {self.path} is closed")
                    conn = sqlite3.connect(
                        self.path, isolation_level=None, check_same_thread=False, timeout=30
                    )
                    conn.execute("PRAGMA query_only=1")
                    conn.execute(f"PRAGMA cache_size=-{_READ_CACHE_KIB}")
                    self._reader = conn
                return conn.execute(sql, args).fetchall()
        except sqlite3.DatabaseError as exc:
            raise BackendUnavailable(f"SQLite store {self.path}: {exc}") from None

    def _ledger_id(self, ledger: str) -> int:
        lid = self._ids.get(ledger)
        if lid is None:
            rows = self._query("SELECT id FROM ledgers WHERE name=?", (ledger,))
            if not rows:
                raise ConfigError(f"no ledger named {ledger!r} in {self.path}")
            lid = self._ids[ledger] = rows[0][0]
        return lid

    # -- ledgers ---------------------------------------------------------------------
    def create_ledger(self, config: LedgerConfig) -> None:
        data = config.to_json()
        try:
            with self._lock:
                self._conn.execute(
                    "INSERT INTO ledgers (name, config) VALUES (?, ?)", (config.name, data)
                )
        except sqlite3.IntegrityError:
            raise ConfigError(f"ledger {config.name!r} already exists in {self.path}") from None
        except sqlite3.DatabaseError as exc:
            raise BackendUnavailable(f"SQLite store {self.path}: {exc}") from None

    def ledger_config(self, ledger: str) -> LedgerConfig:
        rows = self._query("SELECT config FROM ledgers WHERE name=?", (ledger,))
        if not rows:
            known = ", ".join(self.list_ledgers()) or "none"
            raise ConfigError(f"no ledger named {ledger!r} in {self.path} (ledgers: {known})")
        try:
            return LedgerConfig.from_json(rows[0][0])
        except (ValueError, KeyError, TypeError) as exc:
            raise BackendUnavailable(
                f"configuration of ledger {ledger!r} in {self.path} is damaged: {exc}"
            ) from None

    def list_ledgers(self) -> list[str]:
        return [r[0] for r in self._query("SELECT name FROM ledgers ORDER BY name")]

    # -- partitions ------------------------------------------------------------------
    def head(self, ledger: str, partition: int) -> PartitionHead:
        lid = self._ledger_id(ledger)
        # The last position and its leaf hash in one statement (one read, one snapshot).
        rows = self._query(
            "SELECT e.last, n.hash FROM (SELECT MAX(position) AS last FROM entries "
            "WHERE ledger_id=?1 AND partition=?2) AS e LEFT JOIN nodes AS n "
            "ON n.ledger_id=?1 AND n.partition=?2 AND n.level=0 AND n.idx=e.last",
            (lid, partition),
        )
        last, leaf = rows[0]
        if last is None:
            return PartitionHead(0, None)
        if leaf is None:
            raise BackendUnavailable(
                f"ledger {ledger!r} partition {partition}: Merkle node level 0 "
                f"index {last} is missing from {self.path}"
            )
        return PartitionHead(last + 1, bytes(leaf))

    def append(self, ledger: str, batches: Mapping[int, AppendBatch]) -> dict[int, list[int]]:
        lid = self._ledger_id(ledger)
        result: dict[int, list[int]] = {}
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    for partition, batch in batches.items():
                        result[partition] = self._append_one(lid, ledger, partition, batch)
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                raise BackendUnavailable(f"append to {self.path} failed: {exc}") from None
        return result

    def _append_one(self, lid: int, ledger: str, partition: int, batch: AppendBatch) -> list[int]:
        conn = self._conn
        first = batch.first_seq
        row = conn.execute(
            "SELECT MAX(position) FROM entries WHERE ledger_id=? AND partition=?",
            (lid, partition),
        ).fetchone()
        size = 0 if row[0] is None else row[0] + 1
        if size != first:
            raise WriteConflict(
                f"ledger {ledger!r} partition {partition} has {size} entries, but the batch "
                f"starts at seq {first}: another writer appended meanwhile"
            )
        records = batch.records
        positions = list(range(first, first + len(records)))
        if not _insert_entries(conn, lid, partition, first, records, batch.keys):
            conn.executemany(
                "INSERT INTO entries VALUES (?, ?, ?, ?, ?)",
                [
                    (lid, partition, pos, key, rec)
                    for pos, key, rec in zip(positions, batch.keys, records, strict=True)
                ],
            )
        if not _insert_nodes(conn, lid, partition, batch.nodes):
            conn.executemany(
                "INSERT OR REPLACE INTO nodes VALUES (?, ?, ?, ?, ?)",
                [(lid, partition, lvl, idx, h) for lvl, idx, h in batch.nodes],
            )
        return positions

    def _iter(self, sql: str, args: tuple) -> Iterator[StoredRecord]:
        # Page through the table so memory stays flat for long partitions.
        last = -1
        while True:
            rows = self._query(sql, (*args, last))
            if not rows:
                return
            for pos, rec in rows:
                yield StoredRecord(pos, bytes(rec))
            last = rows[-1][0]

    def read(
        self, ledger: str, partition: int, start: int = 0, end: int | None = None
    ) -> Iterator[StoredRecord]:
        lid = self._ledger_id(ledger)
        stop = 2**63 - 1 if end is None else end
        return self._iter(
            "SELECT position, record FROM entries WHERE ledger_id=? AND partition=? "
            "AND position>=? AND position<? AND position>? ORDER BY position LIMIT 5000",
            (lid, partition, start, stop),
        )

    def scan(self, ledger: str, partition: int) -> Iterator[StoredRecord]:
        return self.read(ledger, partition)

    def get_node(self, ledger: str, partition: int, level: int, index: int) -> bytes:
        return self.get_nodes(ledger, partition, ((level, index),))[(level, index)]

    def get_nodes(self, ledger: str, partition: int, ids: Iterable[NodeId]) -> dict[NodeId, bytes]:
        """Several nodes in one indexed lookup per node inside ONE statement (a proof's 30-50
        nodes cost one query instead of 30-50)."""
        lid = self._ledger_id(ledger)
        wanted = list(dict.fromkeys((int(level), int(index)) for level, index in ids))
        found: dict[NodeId, bytes] = {}
        for at in range(0, len(wanted), _NODES_PER_QUERY):
            chunk = wanted[at : at + _NODES_PER_QUERY]
            args: list[int] = [v for node in chunk for v in node]
            args += (lid, partition)
            for level, index, digest in self._query(_select_nodes(len(chunk)), args):
                found[(level, index)] = bytes(digest)
        if len(found) != len(wanted):
            level, index = next(node for node in wanted if node not in found)
            raise BackendUnavailable(
                f"ledger {ledger!r} partition {partition}: Merkle node level {level} "
                f"index {index} is missing from {self.path}"
            )
        return found

    def add_checkpoint(self, ledger: str, partition: int, tree_size: int, note: str) -> None:
        lid = self._ledger_id(ledger)
        with self._lock:
            try:
                self._conn.execute(
                    "INSERT INTO checkpoints SELECT ?, ?, COALESCE(MAX(id), -1) + 1, ?, ? "
                    "FROM checkpoints WHERE ledger_id=? AND partition=?",
                    (lid, partition, tree_size, note, lid, partition),
                )
            except sqlite3.DatabaseError as exc:
                raise BackendUnavailable(f"SQLite store {self.path}: {exc}") from None

    def checkpoints(self, ledger: str, partition: int) -> list[str]:
        lid = self._ledger_id(ledger)
        rows = self._query(
            "SELECT note FROM checkpoints WHERE ledger_id=? AND partition=? ORDER BY id",
            (lid, partition),
        )
        return [r[0] for r in rows]

    def put_document(self, ledger: str, kind: str, key: str, value: bytes) -> None:
        lid = self._ledger_id(ledger)
        check_document_kind(kind)
        with self._lock:
            try:
                self._conn.execute(
                    "INSERT INTO documents SELECT ?, ?, COALESCE(MAX(id), -1) + 1, ?, ? "
                    "FROM documents WHERE ledger_id=? AND kind=?",
                    (lid, kind, key, bytes(value), lid, kind),
                )
            except sqlite3.DatabaseError as exc:
                raise BackendUnavailable(f"SQLite store {self.path}: {exc}") from None

    def documents(self, ledger: str, kind: str) -> list[tuple[str, bytes]]:
        lid = self._ledger_id(ledger)
        rows = self._query(
            "SELECT doc_key, value FROM documents WHERE ledger_id=? AND kind=? ORDER BY id",
            (lid, kind),
        )
        return [(k, bytes(v)) for k, v in rows]

    def close(self) -> None:
        with self._reader_lock:
            self._closed = True
            if self._reader is not None:
                self._reader.close()
                self._reader = None
        with self._lock:
            self._conn.close()


@functools.lru_cache(maxsize=_NODES_PER_QUERY)
def _select_nodes(count: int) -> str:
    """The lookup of ``count`` nodes: bind ``level, index`` of each, then ledger id and
    partition. CROSS JOIN keeps the wanted list as the outer loop, so each node is one
    primary-key search (a row-value ``IN`` list would scan the partition instead)."""
    values = ",".join(["(?,?)"] * count)
    return (
        f"WITH wanted(level, idx) AS (VALUES {values}) "
        "SELECT w.level, w.idx, n.hash FROM wanted AS w CROSS JOIN nodes AS n "
        "ON n.ledger_id=? AND n.partition=? AND n.level=w.level AND n.idx=w.idx"
    )


# -- set-based inserts -------------------------------------------------------------------
# A batch goes into SQLite as a few statements over packed blobs instead of one bound row per
# entry and node: Python's executemany costs several microseconds per row, the packed form
# about half of that. Anything the packed form cannot express falls back to executemany.

#: Bytes of packed data per statement (well under SQLite's default 1 GB value limit).
_CHUNK_BYTES = 32 << 20
_DIGITS = 13  # fixed-width decimal offsets into a packed blob
_ROWS = "WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i < :last) "


def _slice(blob: str, offsets: str) -> str:
    """SQL for the value of row ``:row0 + i`` in ``blob`` (which starts at ``:base`` of the
    packed values) by its fixed-width ``offsets``."""
    at = f"CAST(substr({offsets}, (:row0 + i) * {_DIGITS} + 1, {_DIGITS}) AS INTEGER)"
    end = f"CAST(substr({offsets}, (:row0 + i) * {_DIGITS} + {_DIGITS + 1}, {_DIGITS}) AS INTEGER)"
    return f"substr({blob}, {at} - {{base}} + 1, {end} - {at})"


_INSERT_ENTRIES = (
    _ROWS
    + "INSERT INTO entries SELECT :lid, :part, :first + :row0 + i, {key}, "
    + _slice(":records", ":offsets").format(base=":base")
    + " FROM s"
)
_INSERT_ENTRIES_NO_KEYS = _INSERT_ENTRIES.format(key="NULL")
_INSERT_ENTRIES_KEYS = _INSERT_ENTRIES.format(
    key=_slice(":keys", ":key_offsets").format(base=":key_base")
)
_INSERT_NODES = (
    _ROWS + "INSERT OR REPLACE INTO nodes SELECT :lid, :part, :level, :first + i, "
    "substr(:hashes, i * 32 + 1, 32) FROM s"
)


def _ends(values: Sequence[bytes]) -> tuple[int, ...]:
    """Where each value starts in ``b"".join(values)``, and where the last one ends."""
    return tuple(itertools.accumulate(map(len, values), initial=0))


def _digits(ends: tuple[int, ...]) -> bytes:
    """``ends`` as fixed-width decimal digits (what the statements read back)."""
    return (b"%0" + str(_DIGITS).encode() + b"d") * len(ends) % ends


def _insert_entries(
    conn: sqlite3.Connection,
    lid: int,
    partition: int,
    first: int,
    records: Sequence[bytes],
    keys: Sequence[bytes | None],
) -> bool:
    """Insert the batch's entries set-based; False (nothing inserted) if it cannot: keys
    given for some entries but not others, or values that are not plain bytes."""
    count = len(records)
    if len(keys) != count or any(type(r) is not bytes for r in records):
        return False
    keyed = sum(key is not None for key in keys)
    if keyed not in (0, count) or any(type(k) is not bytes for k in keys if keyed):
        return False
    ends = _ends(records)
    key_ends = _ends(keys) if keyed else (0,) * (count + 1)  # type: ignore[arg-type]
    args: dict[str, object] = {
        "lid": lid,
        "part": partition,
        "first": first,
        "offsets": _digits(ends),
    }
    if keyed:
        args["key_offsets"] = _digits(key_ends)
    start = 0
    while start < count:
        # Rows start..stop-1 in one statement, at most _CHUNK_BYTES of records and of keys.
        stop = min(
            bisect.bisect_right(ends, ends[start] + _CHUNK_BYTES, start) - 1,
            bisect.bisect_right(key_ends, key_ends[start] + _CHUNK_BYTES, start) - 1,
        )
        stop = min(count, max(stop, start + 1))
        args.update(
            last=stop - start - 1,
            row0=start,
            base=ends[start],
            records=b"".join(records[start:stop]),
        )
        if keyed:
            # One byte ahead of the keys: SQLite binds an empty blob as NULL.
            packed_keys = b"".join([b"-", *keys[start:stop]])  # type: ignore[list-item]
            args.update(key_base=key_ends[start] - 1, keys=packed_keys)
            conn.execute(_INSERT_ENTRIES_KEYS, args)
        else:
            conn.execute(_INSERT_ENTRIES_NO_KEYS, args)
        start = stop
    return True


def _insert_nodes(
    conn: sqlite3.Connection, lid: int, partition: int, nodes: Sequence[tuple[int, int, bytes]]
) -> bool:
    """Insert the batch's Merkle nodes set-based, one statement per level; False (nothing
    inserted) unless each level's indexes are consecutive and every hash is 32 bytes (what
    an append produces; the ledger hands them over grouped, as a NodeRuns)."""
    if type(nodes) is not NodeRuns:
        try:
            nodes = NodeRuns.of(nodes)
        except (FormatError, TypeError):
            return False
    step = max(1, _CHUNK_BYTES // 32)
    for level, start, blob in nodes.runs:
        total = len(blob) // 32
        for at in range(0, total, step):
            count = min(step, total - at)
            conn.execute(
                _INSERT_NODES,
                {
                    "last": count - 1,
                    "lid": lid,
                    "part": partition,
                    "level": level,
                    "first": start + at,
                    "hashes": blob[at * 32 : (at + count) * 32],
                },
            )
    return True
