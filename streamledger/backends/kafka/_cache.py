"""The local node cache of a Kafka ledger: derived, rebuildable, never trusted.

Kafka is not a random-access store, so each ledger gets one SQLite file in the backend's
``state_dir`` holding, per partition:

* ``node_runs``: every perfect Merkle subtree hash (level 0 = leaf hashes), stored as runs
  of consecutive indices of one level (an append of k leaves completes one run per level,
  so a batch costs a few rows, not 2k), so a proof costs O(log n) indexed lookups;
* ``segments``: a run-length seq -> Kafka offset index (one row per transaction and
  partition: inside a transaction a writer's records sit at consecutive offsets, the commit
  marker shifts the next run by one), so ``read(seq)`` seeks straight to the record;
* ``frontier``: how far the cache has followed the topic (next offset to scan, tree size,
  last leaf hash and its offset).

Everything here can be thrown away: the backend rebuilds it by scanning the topic. The
verifier only uses it as a hint for *where* a signed root broke, never to decide whether.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sqlite3
import threading
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from streamledger.backends.base import Node, NodeId
from streamledger.core.entry import HASH_SIZE
from streamledger.core.merkle import NodeRuns
from streamledger.errors import BackendUnavailable

log = logging.getLogger(__name__)

SCHEMA_VERSION = "2"
#: Nodes per batched lookup statement (2 bound values each, well under SQLite's limit).
_NODES_PER_QUERY = 200
_CHECKPOINT_BYTES = 4 << 20  # about what SQLite's default autocheckpoint (1,000 pages) holds

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS node_runs (
    partition INTEGER NOT NULL,
    level INTEGER NOT NULL,
    first_idx INTEGER NOT NULL,
    hashes BLOB NOT NULL,
    PRIMARY KEY (partition, level, first_idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS segments (
    partition INTEGER NOT NULL,
    first_seq INTEGER NOT NULL,
    first_offset INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (partition, first_seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS frontier (
    partition INTEGER PRIMARY KEY,
    next_offset INTEGER NOT NULL,
    size INTEGER NOT NULL,
    last_leaf BLOB,
    last_offset INTEGER
);
"""


@dataclass(frozen=True)
class Frontier:
    """How far the cache of one partition has followed the topic."""

    next_offset: int = 0
    size: int = 0
    last_leaf: bytes | None = None
    last_offset: int | None = None


@dataclass
class CacheUpdate:
    """New chain entries of one partition to record in the cache."""

    partition: int
    first_seq: int
    offsets: list[int]
    nodes: Sequence[Node]
    frontier: Frontier


def segments_of(first_seq: int, offsets: list[int]) -> list[tuple[int, int, int]]:
    """Split ``offsets`` (of seqs ``first_seq, ...``) into runs of consecutive offsets:
    ``(first_seq, first_offset, count)``."""
    runs: list[tuple[int, int, int]] = []
    if not offsets:
        return runs
    start = offsets[0]
    if offsets[-1] - start == len(offsets) - 1 and offsets == list(
        range(start, start + len(offsets))
    ):  # the usual case, one run (compared in C, no loop here)
        return [(first_seq, start, len(offsets))]
    run_seq, run_off, count = first_seq, offsets[0], 1
    for i in range(1, len(offsets)):
        if offsets[i] == run_off + count:
            count += 1
        else:
            runs.append((run_seq, run_off, count))
            run_seq, run_off, count = first_seq + i, offsets[i], 1
    runs.append((run_seq, run_off, count))
    return runs


def _runs(nodes: Sequence[Node]) -> list[tuple[int, int, bytes]]:
    """``(level, first_index, hashes)`` of an update's nodes (what the ledger and the cache's
    own rebuild hand over: a NodeRuns; any other sequence is grouped here)."""
    return (nodes if type(nodes) is NodeRuns else NodeRuns.of(nodes)).runs


@functools.lru_cache(maxsize=_NODES_PER_QUERY)
def _select_nodes(count: int) -> str:
    """Lookup of ``count`` nodes (bind ``level, index`` of each, then the partition): the
    latest run of the node's level starting at or before it, sliced to the node's hash (an
    empty or short slice when the run ends before it: not cached)."""
    values = ",".join(["(?,?)"] * count)
    return (
        f"WITH wanted(level, idx) AS (VALUES {values}), p(partition) AS (VALUES (?)) "
        "SELECT w.level, w.idx, (SELECT substr(r.hashes, (w.idx - r.first_idx) * "
        f"{HASH_SIZE} + 1, {HASH_SIZE}) FROM node_runs AS r WHERE r.partition=p.partition "
        "AND r.level=w.level AND r.first_idx<=w.idx ORDER BY r.first_idx DESC LIMIT 1) "
        "FROM wanted AS w CROSS JOIN p"
    )


class NodeCache:
    """One ledger's cache file. Thread-safe (one connection behind a lock)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=30
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")  # a cache: consistent, not durable
            # Checkpoints (copying the WAL into the file, with an fsync) run in a background
            # thread, not in the appending thread's commit (see _checkpointer).
            self._conn.execute("PRAGMA wal_autocheckpoint=0")
            self._conn.executescript(_SCHEMA)
        except (sqlite3.DatabaseError, OSError) as exc:
            raise BackendUnavailable(f"cannot open the Kafka node cache {path}: {exc}") from None
        self._lock = threading.RLock()
        self._unchecked = 0  # bytes written to the WAL since the last checkpoint request
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None
        # apply_later: updates waiting for the applier thread, oldest first
        self._queue: deque[list[CacheUpdate]] = deque()
        self._queued = threading.Condition()
        self._applier: threading.Thread | None = None
        if self.meta("schema") not in (None, SCHEMA_VERSION):
            self.reset()
        self.set_meta("schema", SCHEMA_VERSION)

    def _run(self, sql: str, args: tuple = ()) -> list[tuple]:
        self._settle()
        try:
            with self._lock:
                return self._conn.execute(sql, args).fetchall()
        except sqlite3.DatabaseError as exc:
            raise BackendUnavailable(f"node cache {self.path}: {exc}") from None

    # -- meta --------------------------------------------------------------------------
    def meta(self, key: str) -> str | None:
        rows = self._run("SELECT value FROM meta WHERE key=?", (key,))
        return rows[0][0] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        self._run("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # -- state -------------------------------------------------------------------------
    def frontier(self, partition: int) -> Frontier:
        rows = self._run(
            "SELECT next_offset, size, last_leaf, last_offset FROM frontier WHERE partition=?",
            (partition,),
        )
        if not rows:
            return Frontier()
        nxt, size, leaf, last_off = rows[0]
        return Frontier(nxt, size, bytes(leaf) if leaf is not None else None, last_off)

    def get_node(self, partition: int, level: int, index: int) -> bytes | None:
        rows = self._run(
            "SELECT first_idx, hashes FROM node_runs WHERE partition=? AND level=? "
            "AND first_idx<=? ORDER BY first_idx DESC LIMIT 1",
            (partition, level, index),
        )
        if not rows:
            return None
        first, hashes = rows[0]
        pos = (index - first) * HASH_SIZE
        if pos + HASH_SIZE > len(hashes):
            return None
        return bytes(hashes[pos : pos + HASH_SIZE])

    def get_nodes(self, partition: int, ids: Iterable[NodeId]) -> dict[NodeId, bytes]:
        """The nodes of ``ids`` the cache holds (absent ones are left out), in one statement
        per 200 nodes: for each, the run that starts at or before it is found by the primary
        key and only its 32 bytes are returned (not the whole run)."""
        wanted = list(dict.fromkeys((int(level), int(index)) for level, index in ids))
        found: dict[NodeId, bytes] = {}
        for at in range(0, len(wanted), _NODES_PER_QUERY):
            chunk = wanted[at : at + _NODES_PER_QUERY]
            args = [v for node in chunk for v in node]
            args.append(partition)
            for level, index, digest in self._run(_select_nodes(len(chunk)), tuple(args)):
                if digest is not None and len(digest) == HASH_SIZE:
                    found[(level, index)] = bytes(digest)
        return found

    def offset_of(self, partition: int, seq: int) -> int | None:
        rows = self._run(
            "SELECT first_seq, first_offset, count FROM segments WHERE partition=? "
            "AND first_seq<=? ORDER BY first_seq DESC LIMIT 1",
            (partition, seq),
        )
        if not rows:
            return None
        first_seq, first_offset, count = rows[0]
        if seq >= first_seq + count:
            return None
        return first_offset + (seq - first_seq)

    # -- updates -----------------------------------------------------------------------
    def apply(self, updates: list[CacheUpdate]) -> None:
        """Record new entries (nodes, offsets, frontier) of several partitions at once.

        The cache only grows contiguously: an update that does not start at its
        partition's cached size is left out (the cache is then behind the topic, or
        already past the update, and the backend follows the topic from where it stands)."""
        self._settle()
        self._apply(updates)

    def apply_later(self, updates: list[CacheUpdate]) -> None:
        """:meth:`apply` on the cache's own thread, in order, so the appending thread does
        not wait for SQLite; every other method of the cache first waits until the updates
        queued before it are written. One that fails is logged and lost: the cache is then
        behind the topic, and the backend follows the topic again when it reads."""
        with self._queued:
            self._queue.append(updates)
            if self._applier is None:
                self._applier = threading.Thread(
                    target=self._apply_queued,
                    name=f"node-cache-apply {self.path.name}",
                    daemon=True,
                )
                self._applier.start()
            self._queued.notify_all()

    def _apply_queued(self) -> None:
        while True:
            with self._queued:
                while not self._queue and not self._stop:
                    self._queued.wait()
                if not self._queue:
                    return
                updates = self._queue[0]
            try:
                self._apply(updates)
            except BackendUnavailable as exc:
                log.warning("%s; the node cache follows the topic again when read", exc)
            except BaseException:  # the thread goes on: a lost update only slows reads
                log.exception("node cache %s: an update failed", self.path)
            with self._queued:
                self._queue.popleft()
                self._queued.notify_all()

    def _settle(self) -> None:
        """Wait until the updates queued by :meth:`apply_later` are written."""
        if self._queue and threading.current_thread() is not self._applier:
            with self._queued:
                while self._queue:
                    self._queued.wait()

    def _apply(self, updates: list[CacheUpdate]) -> None:
        try:
            with self._lock:
                conn = self._conn
                conn.execute("BEGIN")
                try:  # four statements for all the partitions of an append
                    sizes = dict(conn.execute("SELECT partition, size FROM frontier").fetchall())
                    updates = [up for up in updates if up.first_seq == sizes.get(up.partition, 0)]
                    conn.executemany(
                        "INSERT OR REPLACE INTO node_runs VALUES (?, ?, ?, ?)",
                        [(up.partition, *run) for up in updates for run in _runs(up.nodes)],
                    )
                    conn.executemany(
                        "INSERT OR REPLACE INTO segments VALUES (?, ?, ?, ?)",
                        [
                            (up.partition, *run)
                            for up in updates
                            for run in segments_of(up.first_seq, up.offsets)
                        ],
                    )
                    conn.executemany(
                        "INSERT OR REPLACE INTO frontier VALUES (?, ?, ?, ?, ?)",
                        [
                            (
                                up.partition,
                                up.frontier.next_offset,
                                up.frontier.size,
                                up.frontier.last_leaf,
                                up.frontier.last_offset,
                            )
                            for up in updates
                        ],
                    )
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
                self._unchecked += sum(len(up.nodes) * (HASH_SIZE + 8) + 64 for up in updates)
                if self._unchecked >= _CHECKPOINT_BYTES:
                    self._unchecked = 0
                    self._request_checkpoint()
        except sqlite3.DatabaseError as exc:
            raise BackendUnavailable(f"node cache {self.path}: {exc}") from None

    def _request_checkpoint(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._checkpointer,
                name=f"node-cache-checkpoint {self.path.name}",
                daemon=True,
            )
            self._thread.start()
        self._wake.set()

    def _checkpointer(self) -> None:
        """Copy the WAL into the database file (PASSIVE: never blocks the writer) in the
        background, so the fsync it needs is off the append path. Crash safety is SQLite's
        WAL guarantee either way: a committed update survives kill -9; an OS crash may lose
        the last updates but leaves the file consistent (then the cache is behind the topic
        and the backend follows the topic again)."""
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.DatabaseError:
            return
        try:
            while True:
                self._wake.wait()
                self._wake.clear()
                if self._stop:
                    return
                with contextlib.suppress(sqlite3.DatabaseError):
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            conn.close()

    def reset(self, partition: int | None = None) -> None:
        """Forget a partition (or everything): it will be rebuilt from the topic."""
        self._settle()  # before taking the lock, which the applier thread needs
        where, args = ("", ()) if partition is None else (" WHERE partition=?", (partition,))
        try:
            with self._lock:
                for table in ("node_runs", "segments", "frontier"):
                    self._conn.execute(f"DELETE FROM {table}{where}", args)
        except sqlite3.DatabaseError as exc:
            raise BackendUnavailable(f"node cache {self.path}: {exc}") from None

    def close(self) -> None:
        self._settle()
        applier = self._applier
        if applier is not None:
            with self._queued:
                self._stop = True
                self._queued.notify_all()
            applier.join(30)
        thread = self._thread
        if thread is not None:
            self._stop = True
            self._wake.set()
            thread.join(30)
        with self._lock:
            self._conn.close()  # the last connection to close checkpoints the WAL
