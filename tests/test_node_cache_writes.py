"""The Kafka backend's node cache (a local SQLite file) is written by its own thread
(``apply_later``) while the next transaction runs: every read must see the updates queued
before it, the cache must only grow contiguously, and a lost update must leave it behind
the topic (which the backend follows again), never with a hole."""

from __future__ import annotations

import logging
import os
import threading

import pytest

from streamledger.backends.kafka._cache import CacheUpdate, Frontier, NodeCache
from streamledger.core.merkle import CompactRange


def _updates(tree: CompactRange, partition: int, first_seq: int, count: int, offset: int):
    leaves = [os.urandom(32) for _ in range(count)]
    nodes = tree.append_runs(leaves)
    offsets = list(range(offset, offset + count))
    front = Frontier(offset + count, first_seq + count, leaves[-1], offset + count - 1)
    return CacheUpdate(partition, first_seq, offsets, nodes, front), leaves


def test_reads_see_every_update_queued_before_them(tmp_path) -> None:
    cache = NodeCache(tmp_path / "c.sqlite")
    trees = {0: CompactRange(), 1: CompactRange()}
    leaves: dict[int, list[bytes]] = {0: [], 1: []}
    gate = threading.Event()
    slow_apply = cache._apply

    def held(updates):  # the first background write waits until the reads are queued
        assert gate.wait(10)
        slow_apply(updates)

    cache._apply = held  # type: ignore[method-assign]
    for batch in range(5):
        ups = []
        for p in (0, 1):
            up, new = _updates(trees[p], p, 100 * batch, 100, 1000 * p + 101 * batch)
            ups.append(up)
            leaves[p] += new
        cache.apply_later(ups)
    gate.set()
    assert cache.frontier(0).size == 500 and cache.frontier(1).size == 500
    for p in (0, 1):
        got = cache.get_nodes(p, [(0, i) for i in range(500)])
        assert [got[(0, i)] for i in range(500)] == leaves[p]
        assert cache.get_node(p, 8, 0) is not None  # a level-8 node over leaves 0..255
        assert cache.offset_of(p, 250) == 1000 * p + 101 * 2 + 50
    cache.close()
    reopened = NodeCache(tmp_path / "c.sqlite")  # written to the file, not only queued
    assert reopened.frontier(1).size == 500
    reopened.close()


def test_the_cache_only_grows_contiguously(tmp_path) -> None:
    cache = NodeCache(tmp_path / "c.sqlite")
    tree = CompactRange()
    first, _ = _updates(tree, 0, 0, 10, 0)
    gap, _ = _updates(CompactRange(), 0, 20, 5, 30)  # seqs 20.. while the cache has 10
    cache.apply([first])
    cache.apply_later([gap])
    assert cache.frontier(0).size == 10  # left out: the backend follows the topic instead
    assert cache.get_node(0, 0, 20) is None
    again, _ = _updates(CompactRange(), 0, 0, 10, 0)  # already there (another writer)
    cache.apply([again])
    assert cache.frontier(0).size == 10
    cache.close()


def test_a_failed_background_write_is_logged_and_leaves_the_cache_behind(tmp_path, caplog) -> None:
    cache = NodeCache(tmp_path / "c.sqlite")
    tree = CompactRange()
    ok, _ = _updates(tree, 0, 0, 10, 0)
    lost, _ = _updates(tree, 0, 10, 10, 11)
    after, _ = _updates(tree, 0, 20, 10, 22)
    real = cache._apply
    calls = []

    def failing(updates):
        calls.append(updates)
        if len(calls) == 2:
            from streamledger.errors import BackendUnavailable

            raise BackendUnavailable(f"node cache {cache.path}: disk I/O error (injected)")
        real(updates)

    cache._apply = failing  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="streamledger.backends.kafka._cache"):
        for up in (ok, lost, after):
            cache.apply_later([up])
        front = cache.frontier(0)  # does not hang, does not raise
    assert front.size == 10  # behind the topic, no hole: 'after' was not written either
    assert cache.get_node(0, 0, 25) is None
    assert "disk I/O error (injected)" in caplog.text
    cache.close()


def test_close_writes_what_is_queued(tmp_path) -> None:
    cache = NodeCache(tmp_path / "c.sqlite")
    tree = CompactRange()
    for k in range(20):
        up, _ = _updates(tree, 3, 50 * k, 50, 60 * k)
        cache.apply_later([up])
    cache.close()
    reopened = NodeCache(tmp_path / "c.sqlite")
    assert reopened.frontier(3).size == 1000
    reopened.close()


@pytest.mark.parametrize("count", [1, 2, 1000])
def test_apply_later_from_many_threads_keeps_each_partition_whole(tmp_path, count) -> None:
    cache = NodeCache(tmp_path / "c.sqlite")

    def writer(p: int) -> None:
        tree = CompactRange()
        for k in range(10):
            up, _ = _updates(tree, p, count * k, count, count * k)
            cache.apply_later([up])

    threads = [threading.Thread(target=writer, args=(p,)) for p in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [cache.frontier(p).size for p in range(4)] == [10 * count] * 4
    cache.close()


def test_reset_waits_for_queued_writes_without_deadlock(tmp_path) -> None:
    """reset() holds the cache's lock while it deletes; it must first let the applier thread
    (which needs that lock) write what is queued, then forget the partition."""
    cache = NodeCache(tmp_path / "c.sqlite")
    tree = CompactRange()
    gate = threading.Event()
    real = cache._apply

    def held(updates):
        assert gate.wait(10)
        real(updates)

    cache._apply = held  # type: ignore[method-assign]
    up, _ = _updates(tree, 0, 0, 10, 0)
    cache.apply_later([up])
    done = threading.Event()

    def reset() -> None:
        cache.reset(0)
        done.set()

    threading.Thread(target=reset, daemon=True).start()
    gate.set()
    assert done.wait(10), "reset() deadlocked with a queued write"
    assert cache.frontier(0) == Frontier()  # the queued write landed first, then was forgotten
    cache.close()
