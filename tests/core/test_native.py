"""The native accelerator (``native/``, ``streamledger._native``) gives exactly the results of
the pure-Python reference: records and leaf hashes, compact-range nodes, and whole
verification reports of honest and tampered logs.

The equality tests skip when the extension is not built; CI builds it and sets
``STREAMLEDGER_REQUIRE_NATIVE=1`` so that :func:`test_native_extension_is_built` fails there
if the build silently fell back to pure Python.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamledger.core import _accel
from streamledger.core.entry import (
    ZERO_HASH,
    StoredRecord,
    build_records,
    decode_record,
    header_prefix,
)
from streamledger.core.merkle import CompactRange, InMemoryTree
from streamledger.core.verify import TrustPolicy, verify_partition
from streamledger.errors import StreamledgerError
from streamledger.ledger import Ledger
from streamledger.testing import memory_ledger, records_of, tamper

NATIVE = _accel.native
needs_native = pytest.mark.skipif(NATIVE is None, reason="native extension not built")
EXAMPLES = int(os.environ.get("NATIVE_EXAMPLES", 60))  # more for a long local run
SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def test_native_extension_is_built() -> None:
    """Fails where the native build is required (CI) but missing, stale or switched off."""
    if os.environ.get("STREAMLEDGER_REQUIRE_NATIVE", "") in ("", "0"):
        pytest.skip("STREAMLEDGER_REQUIRE_NATIVE is not set")
    module = importlib.import_module("streamledger._native")  # ImportError: not built
    assert module.ABI == _accel.ABI, "stale native build: reinstall (pip install -e .)"
    assert _accel.native is module, "native code switched off (STREAMLEDGER_PURE_PYTHON?)"


def test_pure_python_switch() -> None:
    saved = os.environ.get("STREAMLEDGER_PURE_PYTHON")
    try:
        os.environ["STREAMLEDGER_PURE_PYTHON"] = "1"
        assert _accel.load() is None
        os.environ["STREAMLEDGER_PURE_PYTHON"] = "0"
        assert _accel.load() is NATIVE
    finally:
        if saved is None:
            os.environ.pop("STREAMLEDGER_PURE_PYTHON", None)
        else:
            os.environ["STREAMLEDGER_PURE_PYTHON"] = saved


def _both(fn):
    """``fn()`` with the native code, then without: ``(native_outcome, pure_outcome)``; an
    outcome is the result or ``(exception type, message)``."""
    outcomes = []
    try:
        for module in (NATIVE, None):
            _accel.native = module
            try:
                outcomes.append(fn())
            except Exception as exc:  # noqa: BLE001 - compared below
                outcomes.append((type(exc), str(exc)))
    finally:
        _accel.native = NATIVE
    return outcomes


# -- build_records ---------------------------------------------------------------------------

_ledger_ids = st.text("abcXYZ019._-", min_size=1, max_size=20).filter(
    lambda s: s not in (".", "..")
)
_items = st.lists(
    st.tuples(
        st.binary(max_size=300),
        st.binary(max_size=40),
        st.sampled_from(["", "application/json", "text/plain; charset=utf-8", "é" * 130]),
    ),
    max_size=30,
)


@needs_native
@SETTINGS
@given(
    ledger=_ledger_ids,
    partition=st.integers(0, 2**32 - 1),
    first_seq=st.one_of(st.integers(0, 1000), st.integers(2**64 - 40, 2**64 - 1)),
    timestamp=st.integers(0, 2**64 - 1),
    producer=st.text(max_size=40),
    prev=st.binary(min_size=32, max_size=32),
    items=_items,
)
def test_build_records_equal(
    ledger, partition, first_seq, timestamp, producer, prev, items
) -> None:
    def run():
        return build_records(ledger, partition, first_seq, timestamp, producer, prev, items)

    native, pure = _both(run)
    assert native == pure
    if isinstance(pure, tuple) and len(pure) == 2 and isinstance(pure[0], list) and items:
        # The native function itself (not a fallback) gives these bytes.
        producer_b = producer.encode()
        middle = timestamp.to_bytes(8, "big") + bytes((len(producer_b),)) + producer_b
        direct = NATIVE.build_records(
            header_prefix(ledger, partition), first_seq, middle, prev, items
        )
        assert direct == pure
        records, leaves = pure
        for i, (record, leaf) in enumerate(zip(records, leaves, strict=True)):
            entry = decode_record(record)
            assert entry.header.seq == first_seq + i
            assert entry.leaf_hash == leaf
            assert entry.payload_matches()


@needs_native
@pytest.mark.parametrize(
    "items",
    [
        [(b"p", b"k" * 65536, "t")],  # key too long
        [(b"p", b"", "x" * 256)],  # content type too long
        [(b"p", b"", "\ud800")],  # not encodable
        [(bytearray(b"p"), b"", "t")],  # not bytes: the reference accepts any buffer
        [(b"p", memoryview(b"key"), "t")],
        [(b"p", b"", "t", "extra")],
    ],
)
def test_build_records_odd_items_equal(items) -> None:
    native, pure = _both(lambda: build_records("l", 0, 0, 0, "p", ZERO_HASH, items))
    assert native == pure


@needs_native
def test_build_records_seq_overflow_equal() -> None:
    items = [(b"a", b"", "t")] * 3
    native, pure = _both(lambda: build_records("l", 0, 2**64 - 2, 0, "p", ZERO_HASH, items))
    assert native == pure and native[0].__name__ == "FormatError"


# -- compact range ---------------------------------------------------------------------------


def _leaves(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(32) for _ in range(n)]


@needs_native
@SETTINGS
@given(before=st.integers(0, 300), added=st.integers(0, 300), seed=st.integers(0, 2**32))
def test_compact_append_runs_equal(before: int, added: int, seed: int) -> None:
    """append_runs (native: compact_append_runs) completes the nodes append() lists, grouped
    by level, and leaves the same range as append_many, native or pure."""
    start = CompactRange()
    for leaf in _leaves(before, seed):
        start.append(leaf)
    new = _leaves(added, seed + 1)
    reference = start.copy()
    ref_nodes = [node for leaf in new for node in reference.append(leaf)]

    def run():
        tree = start.copy()
        runs = tree.append_runs(list(new))
        return runs.runs, sorted(runs), len(runs), tree.size, tree.hashes(), tree.root()

    native, pure = _both(run)
    assert native == pure
    runs, nodes, count, size, hashes, root = native
    assert root == InMemoryTree(_leaves(before, seed) + new).root()
    assert nodes == sorted(ref_nodes) and count == len(ref_nodes)
    assert (size, hashes) == (reference.size, reference.hashes())
    assert [level for level, _, _ in runs] == list(range(len(runs)))  # one run per level
    for level, first, blob in runs:
        assert blob == b"".join(h for lv, i, h in sorted(ref_nodes) if lv == level)
        assert first == min(i for lv, i, _ in ref_nodes if lv == level)


@needs_native
def test_compact_append_runs_bad_leaf_equal() -> None:
    def run():
        return CompactRange().append_runs([bytes(32), b"short"])

    native, pure = _both(run)
    assert native == pure and native[0].__name__ == "FormatError"


# -- verification ----------------------------------------------------------------------------

TAMPERS = [
    "edit_payload",
    "edit_header",
    "delete",
    "duplicate",
    "swap",
    "insert_forged",
    "insert_forged_seq",
    "copy_foreign",
    "replace_foreign",
    "insert_garbage",
    "set_version",
    "truncate",
    "bytearray",
]


def _tamper(records: list, kind: str, i: int, foreign: bytes, rng: random.Random) -> None:
    # An earlier tamper may have left garbage where this one expects an entry.
    with contextlib.suppress(StreamledgerError, IndexError):
        _tamper_once(records, kind, i, foreign, rng)


def _tampered_log(size: int, cadence: int, tampers: list[str], seed: int) -> tuple[Ledger, object]:
    """A log of ``size`` entries in partition 0 (3 in partition 1, for a foreign record),
    with ``tampers`` applied at random positions of partition 0's records."""
    ledger, key = _build([size, 3], cadence)
    foreign = records_of(ledger, 1)[1]
    records = records_of(ledger, 0)
    rng = random.Random(seed)
    for kind in tampers:
        if records:
            _tamper(records, kind, rng.randrange(len(records)), foreign, rng)
    return ledger, key


def _tamper_once(records: list, kind: str, i: int, foreign: bytes, rng: random.Random) -> None:
    n = len(records)
    if kind == "edit_payload":
        tamper.edit_payload(records, i)
    elif kind == "edit_header":
        tamper.edit_header(records, i)
    elif kind == "delete":
        tamper.delete(records, i)
    elif kind == "duplicate":
        tamper.duplicate(records, i)
    elif kind == "swap" and i + 1 < n:
        tamper.swap(records, i)
    elif kind == "insert_forged":
        tamper.insert_forged(records, i)
    elif kind == "insert_forged_seq":
        tamper.insert_forged(records, i, seq=rng.randrange(0, n + 3))
    elif kind == "copy_foreign":
        tamper.copy_foreign(records, i, foreign)
    elif kind == "replace_foreign":
        tamper.copy_foreign(records, i, foreign, replace=True)
    elif kind == "insert_garbage":
        tamper.insert_garbage(records, i, rng.randbytes(rng.randrange(0, 120)))
    elif kind == "set_version":
        tamper.set_version(records, i)
    elif kind == "truncate":
        tamper.truncate(records, i)
    elif kind == "bytearray":
        records[i] = bytearray(records[i])  # a store returning another bytes type


def _build(sizes: list[int], cadence: int) -> tuple[Ledger, object]:
    ledger, key = memory_ledger("nat", partitions=len(sizes))
    for p, size in enumerate(sizes):
        written = 0
        while written < size:
            batch = min(cadence, size - written)
            ledger.append_many([f"e {p}/{written + j}".encode() for j in range(batch)], partition=p)
            written += batch
            ledger.checkpoint(partitions=[p])
    return ledger, key


def _reports(ledger: Ledger, key, partition: int, *, hints: bool, trusted: bool):
    def run():
        records = [StoredRecord(i, v) for i, v in enumerate(records_of(ledger, partition))]
        report = verify_partition(
            ledger.name,
            partition,
            ledger.config.checkpoint_origin(partition),
            iter(records),
            ledger.backend.checkpoints(ledger.name, partition),
            TrustPolicy((key.verifier,)) if trusted else None,
            ledger._get_node(partition) if hints else None,
        )
        return report.to_json()

    return _both(run)


@needs_native
@settings(max_examples=2 * EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    size=st.integers(1, 400),
    cadence=st.integers(1, 150),
    tampers=st.lists(st.sampled_from(TAMPERS), max_size=3),
    seed=st.integers(0, 2**32),
    hints=st.booleans(),
    trusted=st.booleans(),
)
def test_verify_reports_equal(size, cadence, tampers, seed, hints, trusted) -> None:
    ledger, key = _tampered_log(size, cadence, tampers, seed)
    native, pure = _reports(ledger, key, 0, hints=hints, trusted=trusted)
    assert native == pure


@needs_native
@pytest.mark.parametrize("seed", range(6))
def test_verify_long_log_equal(seed: int) -> None:
    """Long enough for the native chunks to grow to their largest, with tampering spread
    over the log (each finding shrinks them again)."""
    rng = random.Random(seed)
    ledger, key = _build([rng.randrange(9_000, 12_000), 2], rng.choice([700, 2500, 5000]))
    foreign = records_of(ledger, 1)[0]
    records = records_of(ledger, 0)
    for _ in range(seed * 2):
        _tamper(records, rng.choice(TAMPERS[:-2]), rng.randrange(len(records) - 1), foreign, rng)
    for hints in (False, True):
        native, pure = _reports(ledger, key, 0, hints=hints, trusted=True)
        assert native == pure
    if seed == 0:
        assert native["ok"] and native["checkpoints_verified"] >= 2


@needs_native
def test_verify_uses_native_runs(monkeypatch) -> None:
    """On an honest log the native code accepts everything but the records that end a
    chunk or precede a checkpoint size; the report is the same as the pure one."""
    ledger, key = _build([5000], 1000)
    accepted = []
    real = NATIVE.verify_run

    def counting(*args):
        out = real(*args)
        accepted.append(out[0])
        return out

    monkeypatch.setattr(NATIVE, "verify_run", counting)
    native, pure = _reports(ledger, key, 0, hints=True, trusted=True)
    assert native == pure and native["ok"] and native["entries_checked"] == 5000
    assert sum(accepted) > 4900


@needs_native
def test_verify_run_direct() -> None:
    """The native rule on its own: stops before a record whose successor does not link."""
    ledger, _ = _build([50], 50)
    values = list(records_of(ledger, 0))
    records = [StoredRecord(i, v) for i, v in enumerate(values)]
    prefix = header_prefix("nat", 0)
    n, expected, prev, hashes, size = NATIVE.verify_run(records, prefix, 0, ZERO_HASH, [], 0, -1)
    assert (n, expected, size) == (49, 49, 49)
    assert prev == decode_record(values[48]).leaf_hash
    tree = CompactRange()
    for v in values[:49]:
        tree.push(decode_record(v).leaf_hash)
    assert hashes == tree.hashes()
    # Stops before the leaf that reaches a checkpoint size.
    assert NATIVE.verify_run(records, prefix, 0, ZERO_HASH, [], 0, 10)[0] == 9
    # A tampered payload stops the run right there.
    records[20] = StoredRecord(20, values[20][:-1] + b"!")
    assert NATIVE.verify_run(records, prefix, 0, ZERO_HASH, [], 0, -1)[0] == 20
    # A value that is not bytes ends what the run can see.
    records[5] = StoredRecord(5, memoryview(values[5]))
    assert NATIVE.verify_run(records, prefix, 0, ZERO_HASH, [], 0, -1)[0] == 4


# -- Kafka read-ahead shapes: bare values, take_batch, unpack_messages ----------------------


class _BatchSource:
    """A record source shaped like Kafka's read-ahead: iterating gives StoredRecords,
    ``take_batch`` the next records of the batch at hand as (offsets, values)."""

    def __init__(self, records: list[StoredRecord], batch: int) -> None:
        self.batches = [records[i : i + batch] for i in range(0, len(records), batch)]
        self.pos = 0
        self.taken = 0

    def __iter__(self):
        return self

    def _more(self) -> bool:
        while self.batches and self.pos >= len(self.batches[0]):
            self.batches.pop(0)
            self.pos = 0
        return bool(self.batches)

    def __next__(self) -> StoredRecord:
        if not self._more():
            raise StopIteration
        self.pos += 1
        return self.batches[0][self.pos - 1]

    def take_batch(self, limit: int) -> tuple[list[int], list[bytes]]:
        if not self._more():
            return [], []
        part = self.batches[0][self.pos : self.pos + limit]
        self.pos += len(part)
        self.taken += len(part)
        return [r.offset for r in part], [r.value for r in part]


def _reports_batched(ledger: Ledger, key, partition: int, batch: int, *, hints: bool = True):
    """Native verification from a take_batch source, and the pure-Python report."""
    sources = []

    def run():
        values = records_of(ledger, partition)
        records = [StoredRecord(1000 + 3 * i, v) for i, v in enumerate(values)]
        source = _BatchSource(records, batch)
        sources.append(source)
        return verify_partition(
            ledger.name,
            partition,
            ledger.config.checkpoint_origin(partition),
            source,
            ledger.backend.checkpoints(ledger.name, partition),
            TrustPolicy((key.verifier,)),
            ledger._get_node(partition) if hints else None,
        ).to_json()

    native, pure = _both(run)
    return native, pure, sources[0].taken


@needs_native
@SETTINGS
@given(
    size=st.integers(1, 300),
    cadence=st.integers(1, 120),
    batch=st.integers(1, 200),
    tampers=st.lists(st.sampled_from(TAMPERS), max_size=3),
    seed=st.integers(0, 2**32),
    hints=st.booleans(),
)
def test_verify_from_take_batch_equal(size, cadence, batch, tampers, seed, hints) -> None:
    """Bare values from take_batch (offsets beside them) give the pure-Python report, with
    every finding's offset, on honest and tampered logs."""
    ledger, key = _tampered_log(size, cadence, tampers, seed)
    native, pure, _ = _reports_batched(ledger, key, 0, batch, hints=hints)
    assert native == pure


@needs_native
def test_verify_from_take_batch_uses_it() -> None:
    ledger, key = _build([3000], 1000)
    native, pure, taken = _reports_batched(ledger, key, 0, 700)
    assert native == pure and native["ok"] and native["entries_checked"] == 3000
    assert taken > 2900


@needs_native
@pytest.mark.parametrize("seed", range(4))
def test_verify_run_parallel_hashing_equal(seed: int) -> None:
    """Chunks over 1 MiB are hashed on several threads: same result as one record at a
    time, wherever a payload or header was altered."""
    rng = random.Random(seed)
    ledger, _ = memory_ledger("par", partitions=1)
    ledger.append_many([rng.randbytes(rng.randrange(1, 9000)) for _ in range(600)])
    values = list(records_of(ledger, 0))
    prefix = header_prefix("par", 0)

    def one_by_one(vals: list[bytes], next_cp: int) -> int:
        # the rule, applied with a chunk of two records at a time (below the threshold)
        expected, prev, hashes, size, n = 0, ZERO_HASH, [], 0, 0
        while n + 1 < len(vals):
            k, expected, prev, hashes, size = NATIVE.verify_run(
                vals[n : n + 2], prefix, expected, prev, hashes, size, next_cp
            )
            if k == 0:
                break
            n += k
        return n

    cases = [(list(values), -1), (list(values), 250)]
    for _ in range(4):
        vals = list(values)
        i = rng.randrange(len(vals))
        v = bytearray(vals[i])
        v[rng.randrange(len(v))] ^= 1 << rng.randrange(8)
        vals[i] = bytes(v)
        cases.append((vals, rng.choice([-1, rng.randrange(1, 600)])))
    for vals, next_cp in cases:
        assert sum(len(v) for v in vals) > 2 << 20
        got = NATIVE.verify_run(vals, prefix, 0, ZERO_HASH, [], 0, next_cp)
        n = got[0]
        assert n == one_by_one(vals, next_cp)
        assert got == NATIVE.verify_run(
            [StoredRecord(i, v) for i, v in enumerate(vals)], prefix, 0, ZERO_HASH, [], 0, next_cp
        )
        tree = CompactRange()
        for v in vals[:n]:
            tree.push(decode_record(v).leaf_hash)
        assert got[3] == tree.hashes() and got[4] == n


class _Message:
    def __init__(self, offset: int, value: object) -> None:
        self._offset, self._value = offset, value

    def offset(self) -> int:
        return self._offset

    def value(self) -> object:
        if isinstance(self._value, Exception):
            raise self._value
        return self._value


@needs_native
def test_unpack_messages() -> None:
    """The read-ahead's loop: offsets and values of messages with a value, in order."""
    msgs = [_Message(5, b"a"), _Message(6, None), _Message(8, b""), _Message(2**40, b"z" * 9)]
    assert NATIVE.unpack_messages(msgs) == ([5, 8, 2**40], [b"a", b"", b"z" * 9])
    assert NATIVE.unpack_messages([]) == ([], [])
    with pytest.raises(KeyError):
        NATIVE.unpack_messages([_Message(1, b"a"), _Message(2, KeyError("x"))])
