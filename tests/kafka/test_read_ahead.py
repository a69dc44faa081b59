"""The Kafka scan's read-ahead iterator (``_ReadAhead``) without a broker: a stand-in backend
thread hands over batches exactly as ``KafkaBackend._read_ahead`` does."""

from __future__ import annotations

import queue
import threading

import pytest

from streamledger.backends.kafka._backend import _ReadAhead
from streamledger.core.entry import StoredRecord


class _Backend:
    """``_read_ahead`` puts the given items: ``(offsets, values)`` batches, then None or an
    exception, waiting for ``release`` before the end."""

    def __init__(self, items: list[object]) -> None:
        self.items = items
        self.release = threading.Event()

    def _read_ahead(self, ledger, partition, low, lso, out: queue.Queue, stop) -> None:
        for item in self.items:
            if not isinstance(item, tuple):
                self.release.wait(5)
            out.put(item)


def _batches(sizes: list[int]) -> tuple[list[object], list[StoredRecord]]:
    items: list[object] = []
    records: list[StoredRecord] = []
    offset = 10
    for size in sizes:
        offsets = list(range(offset, offset + 2 * size, 2))
        values = [f"v{o}".encode() for o in offsets]
        items.append((offsets, values))
        records += [StoredRecord(o, v) for o, v in zip(offsets, values, strict=True)]
        offset += 2 * size + 5
    return items, records


@pytest.mark.parametrize("seed", range(5))
def test_take_batch_and_next_give_the_records_in_order(seed: int) -> None:
    import random

    rng = random.Random(seed)
    items, records = _batches([rng.randrange(0, 7) for _ in range(rng.randrange(1, 6))])
    backend = _Backend([*items, None])
    backend.release.set()
    reader = _ReadAhead(backend, "l", 0, 0, 0)  # type: ignore[arg-type]
    got: list[StoredRecord] = []
    while True:
        if rng.random() < 0.5:
            record = next(reader, None)
            if record is None:
                break
            got.append(record)
        else:
            offsets, values = reader.take_batch(rng.randrange(1, 9))
            assert len(offsets) == len(values)
            if not values:
                break
            got += [StoredRecord(o, v) for o, v in zip(offsets, values, strict=True)]
    assert got == records
    assert reader.take_batch(5) == ([], []) and next(reader, None) is None


def test_take_batch_adds_batches_already_fetched_up_to_the_limit() -> None:
    items, records = _batches([3, 2, 4])
    backend = _Backend([*items, None])
    reader = _ReadAhead(backend, "l", 0, 0, 0)  # type: ignore[arg-type]
    while reader._queue.qsize() < 3:  # all three batches fetched; the end is held back
        threading.Event().wait(0.01)
    offsets, values = reader.take_batch(6)
    assert offsets == [r.offset for r in records[:6]] and values == [r.value for r in records[:6]]
    offsets, values = reader.take_batch(100)  # does not wait for the end
    assert offsets == [r.offset for r in records[6:]]
    backend.release.set()
    assert reader.take_batch(100) == ([], [])


def test_an_error_of_the_thread_comes_after_the_records_before_it() -> None:
    items, records = _batches([2, 3])
    backend = _Backend([*items, RuntimeError("broker gone")])
    backend.release.set()
    reader = _ReadAhead(backend, "l", 0, 0, 0)  # type: ignore[arg-type]
    while reader._queue.qsize() < 3:
        threading.Event().wait(0.01)
    offsets, _ = reader.take_batch(100)
    assert offsets == [r.offset for r in records]
    with pytest.raises(RuntimeError, match="broker gone"):
        reader.take_batch(100)
    assert next(reader, None) is None


def test_verify_progress_keeps_the_fast_path_and_counts_every_record() -> None:
    """Ledger.verify's progress wrapper passes take_batch through and counts what it takes."""
    from streamledger.ledger import _Counting

    items, records = _batches([9_000, 4_000, 8_000])
    backend = _Backend([*items, None])
    backend.release.set()
    calls: list[tuple[int, int]] = []
    counting = _Counting(
        _ReadAhead(backend, "l", 0, 0, 0),  # type: ignore[arg-type]
        7,
        lambda p, n: calls.append((p, n)),
    )
    assert iter(counting) is counting and callable(counting.take_batch)
    got = [next(counting)]
    while True:
        offsets, values = counting.take_batch(5_000)
        if not values:
            break
        got += [StoredRecord(o, v) for o, v in zip(offsets, values, strict=True)]
    assert got == records
    assert [n // 10_000 for _, n in calls] == [1, 2, 2] and calls[-1] == (7, 21_000)
    assert next(counting, None) is None and calls[-1] == (7, 21_000) and len(calls) == 3
    plain = _Counting(iter(records[:25]), 1, lambda p, n: calls.append((p, n)))
    assert not hasattr(plain, "take_batch")
    assert list(plain) == records[:25] and calls[-1] == (1, 25)
