"""``append_stream`` of plain payload bytes takes a path without an AppendItem per item: it
must store exactly what the general path stores and give the same receipts."""

from __future__ import annotations

import itertools

import pytest

from streamledger.backends.memory import MemoryBackend
from streamledger.core.note import SigningKey
from streamledger.ledger import AppendItem, Ledger

KEY = SigningKey.generate("fast-path.example/log")


def _ledger(partitions: int) -> tuple[MemoryBackend, Ledger]:
    backend = MemoryBackend()
    clock = itertools.count(1_700_000_000_000)
    ledger = Ledger.create(
        backend,
        "fast",
        partitions=partitions,
        signer=KEY,
        producer="test",
        clock=lambda: next(clock),
    )
    return backend, ledger


@pytest.mark.parametrize("partitions", [1, 3])
@pytest.mark.parametrize("partition", [None, 0])
def test_plain_payloads_store_what_append_items_store(partitions, partition) -> None:
    payloads = [b"payload %d" % i * (i % 7 + 1) for i in range(2_345)]
    plain_backend, plain = _ledger(partitions)
    items_backend, items = _ledger(partitions)
    got = list(plain.append_stream(payloads, batch_size=500, partition=partition))
    want = list(
        items.append_stream([AppendItem(p) for p in payloads], batch_size=500, partition=partition)
    )
    assert got == want
    assert [r.seq for r in got if r.partition == 0][:3] == [0, 1, 2]
    for p in range(partitions):
        assert plain_backend.partition_records("fast", p) == items_backend.partition_records(
            "fast", p
        )
        assert [e.payload for e in plain.read(p)] == [e.payload for e in items.read(p)]
    if partition is None and partitions == 3:  # round-robin, continued across batches
        assert [r.partition for r in got[:7]] == [0, 1, 2, 0, 1, 2, 0]
        assert [plain.size(p) for p in range(3)] == [782, 782, 781]
    plain.checkpoint()
    assert plain.verify().ok
    assert plain.prove_inclusion(got[-1].partition, got[-1].seq).verify([KEY.verifier])


def test_a_batch_with_anything_but_bytes_takes_the_general_path() -> None:
    backend, ledger = _ledger(2)
    mixed = [b"a", AppendItem(b"b", key=b"k1"), bytearray(b"c"), b"d"]
    receipts = list(ledger.append_stream(mixed, batch_size=2))
    assert len(receipts) == 4
    entries = {(p, e.seq): e for p in range(2) for e in ledger.read(p)}
    stored = [entries[(r.partition, r.seq)] for r in receipts]
    assert [e.payload for e in stored] == [b"a", b"b", b"c", b"d"]
    assert stored[1].header.key == b"k1" and stored[0].header.key == b""
    assert ledger.verify().ok
