"""Receipts built in bulk (``_receipts``: the slots' setters, no ``__init__`` per receipt)
and the Kafka backend's produce loop over a batch's middle records (``_produce_all``) must
give exactly what the plain per-item code gave."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import pickle

import pytest

from streamledger.backends.kafka._backend import _produce_all
from streamledger.backends.kafka._cache import segments_of
from streamledger.backends.memory import MemoryBackend
from streamledger.ledger import (
    AppendItem,
    Ledger,
    Receipt,
    _groups,
    _receipts,
    _round_robin_groups,
)


def test_bulk_receipts_equal_constructed_ones() -> None:
    leaves = [bytes([i]) * 32 for i in range(50)]
    offsets = [1000 + 3 * i for i in range(50)]
    got = _receipts("led", 2, 17, leaves, offsets)
    want = [Receipt("led", 2, 17 + k, leaves[k], offsets[k]) for k in range(50)]
    assert got == want
    assert [type(r) for r in got] == [Receipt] * 50
    assert [hash(r) for r in got] == [hash(r) for r in want]
    assert [repr(r) for r in got] == [repr(r) for r in want]
    r = got[3]
    assert (r.ledger, r.partition, r.seq, r.leaf_hash, r.offset) == ("led", 2, 20, leaves[3], 1009)
    assert dataclasses.asdict(r) == dataclasses.asdict(want[3])
    assert dataclasses.replace(r, offset=5) == Receipt("led", 2, 20, leaves[3], 5)
    assert pickle.loads(pickle.dumps(r)) == r and copy.copy(r) == r
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.seq = 1  # type: ignore[misc]
    assert _receipts("led", 0, 0, [], []) == []
    with pytest.raises(ValueError):
        _receipts("led", 0, 0, leaves, offsets[:-1])


@pytest.mark.parametrize("keyed", [False, True])
def test_advance_gives_the_per_item_receipts(keyed) -> None:
    clock = itertools.count(1_700_000_000_000)
    ledger = Ledger.create(
        MemoryBackend(), "bulk", partitions=3, producer="t", clock=lambda: next(clock)
    )
    items = [AppendItem(b"p%d" % i, key=b"k%d" % (i % 5) if keyed else None) for i in range(40)]
    targets = ledger._targets(items, None)
    staged = ledger._stage(items, targets, ledger._writers_view())
    offsets = {p: [7 * p + 2 * k for k in range(len(i))] for p, i in staged.order.items()}
    want: list[Receipt | None] = [None] * len(items)  # the former per-item loop
    for part, indexes in staged.order.items():
        first = staged.batches[part].first_seq
        for k, (i, leaf, off) in enumerate(
            zip(indexes, staged.leaves[part], offsets[part], strict=True)
        ):
            want[i] = Receipt("bulk", part, first + k, leaf, off)
    assert ledger._advance(staged, offsets) == want
    one = ledger._stage([b"x", b"y"], [1, 1], ledger._writers_view(), plain=True)
    assert ledger._advance(one, {1: [50, 51]}) == [
        Receipt("bulk", 1, one.batches[1].first_seq + k, one.leaves[1][k], 50 + k) for k in range(2)
    ]


class _FullQueue:
    """A producer whose queue is full on given calls (BufferError, nothing queued)."""

    def __init__(self, full_on: set[int]) -> None:
        self.calls = 0
        self.full_on = full_on
        self.queued: list[tuple] = []
        self.polls = 0

    def produce(self, *args) -> None:
        self.calls += 1
        if self.calls in self.full_on:
            raise BufferError("queue full")
        self.queued.append(args)

    def poll(self, timeout: float) -> int:
        self.polls += 1
        return 0


@pytest.mark.parametrize("full_on", [set(), {1}, {4, 5, 9}, {10}, {10, 11}])
def test_produce_all_retries_the_record_that_did_not_fit(full_on) -> None:
    records = [b"r%d" % i for i in range(12)]
    keys = [None if i % 3 else b"k%d" % i for i in range(12)]
    fake = _FullQueue(full_on)
    _produce_all(fake.produce, fake.poll, "topic", 2, records, keys, 1, 11)
    assert fake.queued == [("topic", records[i], keys[i], 2) for i in range(1, 11)]
    assert fake.polls == len([c for c in full_on if c <= fake.calls])


@pytest.mark.parametrize(
    "targets",
    [
        [0, 1, 2] * 5 + [0],
        [2, 0, 1] * 4 + [2, 0],
        [1, 0] * 3,
        [4],
        [0, 1, 2, 0, 2, 1],
        [0, 1, 0, 1, 2],
        [0, 0, 1, 1],
        [1, 2, 3, 1, 2],
    ],
)
def test_round_robin_groups_are_the_general_grouping(targets) -> None:
    fast = _round_robin_groups(targets)
    if fast is not None:
        assert list(fast) == list(_groups(targets))
        assert {p: list(i) for p, i in fast.items()} == _groups(targets)
    period = len(set(targets))
    assert (fast is not None) == all(t == targets[i % period] for i, t in enumerate(targets))


@pytest.mark.parametrize("partitions", [1, 2, 3, 5])
def test_plain_targets_continue_the_round_robin(partitions) -> None:
    ledger = Ledger.create(MemoryBackend(), "rr", partitions=partitions)
    got = [ledger._plain_targets(n, None) for n in (0, 1, 7, 1000, 2)]
    want, counter = [], itertools.count()
    for n in (0, 1, 7, 1000, 2):
        want.append([0] * n if partitions == 1 else [next(counter) % partitions for _ in range(n)])
    assert got == want
    assert ledger._plain_targets(4, 0) == [0] * 4


def test_segments_of_consecutive_and_not() -> None:
    assert segments_of(10, list(range(500, 900))) == [(10, 500, 400)]
    assert segments_of(3, [5, 6, 8, 9]) == [(3, 5, 2), (5, 8, 2)]
    assert segments_of(0, [7, 5, 6]) == [(0, 7, 1), (1, 5, 2)]
    assert segments_of(0, [1]) == [(0, 1, 1)] and segments_of(0, []) == []


@pytest.mark.parametrize("partitions", [1, 3, 4, 520])
@pytest.mark.parametrize("partition", [None, 0])
@pytest.mark.parametrize("batch", [1, 127, 170, 509, 510, 511, 1531])
def test_append_stream_receipts_in_chunks_equal_the_bulk_ones(partitions, partition, batch) -> None:
    """append_stream builds its receipts a chunk at a time (``_streamed``); they must equal
    the receipts ``append_many`` gives for the same batches (one bulk list per batch)."""
    if partition is not None and partitions == 1:
        partition = None
    payloads = [b"e%d" % i for i in range(2 * batch + 513)]
    clock = itertools.count(1_700_000_000_000)
    streamed = Ledger.create(
        MemoryBackend(), "chunks", partitions=partitions, producer="t", clock=lambda: next(clock)
    )
    clock2 = itertools.count(1_700_000_000_000)
    bulk = Ledger.create(
        MemoryBackend(), "chunks", partitions=partitions, producer="t", clock=lambda: next(clock2)
    )
    got = list(streamed.append_stream(payloads, batch_size=batch, partition=partition))
    want: list[Receipt] = []
    for start in range(0, len(payloads), batch):
        want += bulk.append_many(payloads[start : start + batch], partition=partition)
    assert got == want
    assert len(got) == len(payloads)
    assert len({(r.partition, r.seq) for r in got}) == len(payloads)
    assert [streamed.size(p) for p in range(partitions)] == [
        bulk.size(p) for p in range(partitions)
    ]
    for r in got[:: max(1, len(got) // 7)]:
        (entry,) = streamed.read(r.partition, r.seq, r.seq + 1)
        assert entry.payload == payloads[got.index(r)]
