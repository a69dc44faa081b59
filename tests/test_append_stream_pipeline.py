"""``Ledger.append_stream`` keeps the next batch queued behind the one being stored. A failed
batch must still leave nothing after it written, and a caller that stops early must leave
at most the batch being stored then."""

from __future__ import annotations

import pytest

from streamledger.backends.memory import MemoryBackend
from streamledger.errors import BackendUnavailable
from streamledger.ledger import Ledger


class _Flaky(MemoryBackend):
    """Fails its ``fail_on``-th append."""

    def __init__(self, fail_on: int | None = None) -> None:
        super().__init__()
        self.fail_on = fail_on
        self.calls = 0

    def append(self, ledger, batches):  # type: ignore[override]
        self.calls += 1
        if self.calls == self.fail_on:
            raise BackendUnavailable("injected: the broker went away")
        return super().append(ledger, batches)


def _sizes(ledger: Ledger) -> list[int]:
    return [ledger.size(p) for p in range(ledger.partitions)]


@pytest.mark.parametrize("fail_on", [1, 2, 3, 5])
def test_a_failed_batch_leaves_nothing_after_it(fail_on) -> None:
    backend = _Flaky()
    ledger = Ledger.create(backend, "pipe", partitions=3)
    backend.calls, backend.fail_on = 0, fail_on  # Ledger.create stored nothing through append
    payloads = [b"p%d" % i for i in range(10 * 7)]
    got = []
    with pytest.raises(BackendUnavailable, match="injected"):
        for receipt in ledger.append_stream(payloads, batch_size=7):
            got.append(receipt)
    assert len(got) == 7 * (fail_on - 1)  # every batch before the failed one, and no other
    assert sum(_sizes(ledger)) == len(got)
    assert backend.calls == fail_on  # the batch queued behind the failed one was not stored
    stored = sorted(e.payload for p in range(3) for e in ledger.read(p))
    assert stored == sorted(payloads[: len(got)])
    assert ledger.verify().ok
    # the ledger goes on from where the stored batches end
    more = list(ledger.append_stream([b"after"] * 4, batch_size=2))
    assert sum(_sizes(ledger)) == len(got) + 4 and len(more) == 4


def test_a_caller_that_stops_leaves_at_most_the_batch_being_stored() -> None:
    backend = _Flaky()
    ledger = Ledger.create(backend, "stop", partitions=2)
    stream = ledger.append_stream((b"x%d" % i for i in range(100)), batch_size=10)
    first = next(stream)  # batch 1 stored; batch 2 queued or being stored
    assert first.seq == 0
    stream.close()
    assert sum(_sizes(ledger)) in (10, 20)  # never batch 3
    assert backend.calls <= 2
    assert ledger.verify().ok
