"""Faults on a real Kafka broker: fencing, kill -9 of a writer, aborted transactions,
a broker that is down or restarts. After each: the ledger verifies, every acknowledged
entry is in it exactly once, and no chain forks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from streamledger.backends.base import AppendBatch
from streamledger.backends.kafka import KafkaBackend
from streamledger.core.entry import ZERO_HASH, build_record, decode_record
from streamledger.core.note import SigningKey
from streamledger.errors import BackendUnavailable, WriteConflict
from streamledger.ledger import Ledger

pytestmark = pytest.mark.kafka
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate("kafka-fault-log")


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _committed(bootstrap: str, topic: str, partition: int, isolation="read_committed"):
    """Every record of a partition as (offset, value), independently of the backend."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "fault-test",
            "enable.auto.commit": False,
            "isolation.level": isolation,
            "enable.partition.eof": True,
        }
    )
    consumer.assign([TopicPartition(topic, partition, 0)])
    out = []
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    break
                raise AssertionError(msg.error())
            out.append((msg.offset(), msg.value()))
    finally:
        consumer.close()
    return out


def _assert_one_chain(bootstrap: str, ledger: Ledger, partition: int) -> list[bytes]:
    """The committed records of a partition form exactly one chain: seqs 0..n-1, each once,
    each linked to its predecessor. Returns the payloads."""
    prev, payloads = ZERO_HASH, []
    for seq, (_, value) in enumerate(_committed(bootstrap, ledger.name, partition)):
        entry = decode_record(value)
        assert entry.seq == seq, f"seq {entry.seq} at position {seq}: the chain forked"
        assert entry.header.prev_hash == prev
        prev = entry.leaf_hash
        payloads.append(entry.payload)
    return payloads


def test_second_writer_fences_the_first_and_the_chain_never_forks(kafka_bootstrap, tmp_path, key):
    name = _name("fence")
    a_backend = KafkaBackend(kafka_bootstrap, state_dir=tmp_path / "a", timeout=15)
    b_backend = KafkaBackend(kafka_bootstrap, state_dir=tmp_path / "b", timeout=15)
    a = Ledger.create(a_backend, name, partitions=1, signer=key, producer="a")
    b = Ledger(b_backend, name, signer=key, producer="b")
    a.append_many([b"a0", b"a1"])
    assert b.append(b"b0").seq == 2  # b's init_transactions fences a

    # the fenced writer's stale batch is refused, nothing of it is written
    with pytest.raises(WriteConflict, match="fenced"):
        a_backend.append(name, {0: AppendBatch(2, [b"stale"], [None], [])})
    # through the Ledger, a re-reads the head and continues the one chain
    assert a.append(b"a2").seq == 3
    assert b.append(b"b1").seq == 4

    # both writing at once, in threads: appends may fail, the chain may not fork
    acked: dict[str, list[bytes]] = {"a": [], "b": []}
    stop = time.monotonic() + 3

    def run(ledger: Ledger, who: str) -> None:
        i = 0
        while time.monotonic() < stop:
            payload = f"{who}-{i}".encode()
            i += 1
            try:
                ledger.append_many([payload, payload + b"'"])
            except WriteConflict:
                continue
            acked[who] += [payload, payload + b"'"]

    threads = [threading.Thread(target=run, args=(x, w)) for x, w in ((a, "a"), (b, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert acked["a"] and acked["b"], acked

    payloads = _assert_one_chain(kafka_bootstrap, a, 0)
    assert len(payloads) == len(set(payloads))
    assert set(acked["a"] + acked["b"]) <= set(payloads)
    a.checkpoint()
    report = b.verify()
    assert report.ok, report.findings
    a_backend.close()
    b_backend.close()


_WRITER = textwrap.dedent(
    """
    import sys
    from streamledger.backends.kafka import KafkaBackend
    from streamledger.ledger import Ledger

    bootstrap, name, state_dir = sys.argv[1:4]
    ledger = Ledger(KafkaBackend(bootstrap, state_dir=state_dir, timeout=15), name)
    print("ready", flush=True)
    i = 0
    while True:
        batch = [f"w-{i}-{j}".encode() for j in range(25)]
        receipts = ledger.append_many(batch)
        for r, payload in zip(receipts, batch):
            print("ack", r.partition, r.seq, payload.decode(), flush=True)
        i += 1
    """
)


def test_kill_9_of_a_writer_loses_no_acknowledged_entry(kafka_bootstrap, tmp_path, key):
    name = _name("kill9")
    setup = KafkaBackend(kafka_bootstrap, state_dir=tmp_path / "setup", timeout=15)
    Ledger.create(setup, name, partitions=3, signer=key)
    setup.close()
    state = tmp_path / "writer-state"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, kafka_bootstrap, name, str(state)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    acked: list[tuple[int, int, str]] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        for line in proc.stdout:
            if line.startswith("ack "):
                _, p, seq, payload = line.split()
                acked.append((int(p), int(seq), payload))
            if len(acked) >= 1500 or time.monotonic() > deadline:
                break
        os.kill(proc.pid, signal.SIGKILL)  # in the middle of the stream
    finally:
        proc.kill()
        proc.wait(30)
    assert len(acked) >= 1500

    # restart on the same node cache (it may be behind the topic; it is only a cache)
    backend = KafkaBackend(kafka_bootstrap, state_dir=state, timeout=15)
    ledger = Ledger(backend, name, signer=key)
    after = ledger.append_many([b"after-restart"] * 3)
    ledger.checkpoint()
    report = ledger.verify()
    assert report.ok, report.findings

    stored: dict[str, tuple[int, int]] = {}
    for p in range(3):
        for seq, payload in enumerate(_assert_one_chain(kafka_bootstrap, ledger, p)):
            if payload != b"after-restart":
                assert payload.decode() not in stored, f"{payload!r} stored twice"
                stored[payload.decode()] = (p, seq)
    for p, seq, payload in acked:
        assert stored.get(payload) == (p, seq), f"acknowledged {payload} missing"
    assert all(r.seq >= 0 for r in after)
    backend.close()


def test_aborted_transaction_leaves_nothing_visible(kafka_bootstrap, tmp_path, key, monkeypatch):
    name = _name("abort")
    backend = KafkaBackend(kafka_bootstrap, state_dir=tmp_path, timeout=15)
    ledger = Ledger.create(backend, name, partitions=1, signer=key)
    ledger.append_many([b"e0", b"e1", b"e2"])

    # 1. a transaction of the ledger's writer that fails before commit is aborted
    def broken_commit(producer):
        raise KafkaException(
            KafkaError(KafkaError._TIMED_OUT, "injected failure", txn_requires_abort=True)
        )

    monkeypatch.setattr(backend, "_commit", broken_commit)
    with pytest.raises(BackendUnavailable, match="aborted, nothing was written"):
        ledger.append_many([b"lost-1", b"lost-2"])
    monkeypatch.undo()

    # 2. someone holding the ledger's transactional id produces the next entries, then aborts
    raw = Producer(
        {"bootstrap.servers": kafka_bootstrap, "transactional.id": f"streamledger-{name}"}
    )
    raw.init_transactions(15)
    raw.begin_transaction()
    head = backend.head(name, 0)
    record, _ = build_record(
        name, 0, head.size, 0, "raw", "text/plain", b"", head.last_leaf_hash, b"aborted"
    )
    raw.produce(name, record, partition=0)
    raw.flush(15)
    raw.abort_transaction(15)
    del raw

    assert ledger.append(b"e3").seq == 3
    ledger.checkpoint()
    report = ledger.verify()
    assert report.ok, report.findings
    assert [e.payload for e in ledger.read(0)] == [b"e0", b"e1", b"e2", b"e3"]
    physically = [v for _, v in _committed(kafka_bootstrap, name, 0, "read_uncommitted")]
    # the aborted records are in the log, invisible to readers (those of the failed append
    # only if they were sent before the abort: the commit flushes, so they may never be)
    assert sum(b"aborted" in v for v in physically) == 1
    assert len(physically) in (5, 6, 7)
    backend.close()


def test_unreachable_broker_is_a_clear_error_in_bounded_time(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match=f"127.0.0.1:{port}"):
        KafkaBackend(f"127.0.0.1:{port}", state_dir=tmp_path, timeout=2)
    assert time.monotonic() - started < 8


def test_broker_restart_during_appends(kafka_broker, tmp_path, key):
    name = _name("restart")
    backend = KafkaBackend(kafka_broker.bootstrap, state_dir=tmp_path, timeout=4)
    ledger = Ledger.create(backend, name, partitions=2, signer=key)
    acked = [r.seq for r in ledger.append_many([b"before"] * 10, partition=0)]
    kafka_broker.kill()
    try:
        started = time.monotonic()
        with pytest.raises(BackendUnavailable):
            ledger.append_many([b"while-down"] * 10, partition=0)
        assert time.monotonic() - started < 25
    finally:
        kafka_broker.start_again()
    deadline = time.monotonic() + 60
    while True:
        try:
            acked += [r.seq for r in ledger.append_many([b"after"] * 10, partition=0)]
            break
        except BackendUnavailable:
            assert time.monotonic() < deadline
            time.sleep(1)
    payloads = _assert_one_chain(kafka_broker.bootstrap, ledger, 0)
    assert payloads.count(b"before") == 10 and payloads.count(b"after") == 10
    assert payloads.count(b"while-down") in (0, 10)  # all or nothing
    ledger.checkpoint()
    report = ledger.verify()
    assert report.ok, report.findings
    backend.close()
