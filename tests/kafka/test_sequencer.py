"""The sequencer service on a real broker: plain submissions in, ledger entries out, exactly
once, through rejects, kill -9, a second process in the group and aborted transactions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streamledger.backends.kafka import KafkaBackend
from streamledger.core.entry import ZERO_HASH, decode_record
from streamledger.core.note import SigningKey
from streamledger.keys import KeyStore
from streamledger.ledger import Ledger
from streamledger.services.sequencer import H_CODE, H_REASON, H_SOURCE, Limits, Sequencer

pytestmark = pytest.mark.kafka
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate("sequencer-test-log")


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _setup(bootstrap: str, tmp_path: Path, key: SigningKey, partitions: int) -> tuple[str, str]:
    name = _name("seq")
    backend = KafkaBackend(bootstrap, state_dir=tmp_path / "setup", timeout=15)
    Ledger.create(backend, name, partitions=partitions, signer=key)
    backend.close()
    intake = name + "-intake"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(intake, partitions, 1)])[intake].result(timeout=30)
    return name, intake


def _produce(bootstrap: str, topic: str, items, *, pace: float = 0.0, chunk: int = 1000):
    """A plain producer, as any application would use (no streamledger involved)."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i, (key, value, headers) in enumerate(items):
        while True:
            try:
                producer.produce(topic, value, key, headers=headers)
                break
            except BufferError:
                producer.poll(0.05)
        if pace and i % chunk == chunk - 1:
            producer.flush(30)
            time.sleep(pace)
    assert producer.flush(30) == 0


def _read_all(bootstrap: str, topic: str, partition: int, isolation="read_committed"):
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "sequencer-test-reader",
            "enable.auto.commit": False,
            "isolation.level": isolation,
            "enable.partition.eof": True,
        }
    )
    consumer.assign([TopicPartition(topic, partition, 0)])
    out = []
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            msgs = consumer.consume(10_000, 0.5)
            done = False
            for msg in msgs:
                if msg.error():
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        done = True
                        break
                    raise AssertionError(msg.error())
                out.append(msg)
            if done:
                break
    finally:
        consumer.close()
    return out


def _entries(bootstrap: str, ledger: str, partitions: int):
    """Every committed entry, checking each partition is one unbroken chain 0..n-1."""
    entries = []
    for p in range(partitions):
        prev = ZERO_HASH
        for seq, msg in enumerate(_read_all(bootstrap, ledger, p)):
            entry = decode_record(msg.value())
            assert (entry.header.partition, entry.seq) == (p, seq), "the chain forked"
            assert entry.header.prev_hash == prev
            prev = entry.leaf_hash
            entries.append(entry)
    return entries


def _committed_count(bootstrap: str, ledger: str, partitions: int) -> int:
    return sum(len(_read_all(bootstrap, ledger, p)) for p in range(partitions))


def _end_offsets(bootstrap: str, topic: str, partitions: int) -> int:
    """Cheap progress probe: the sum of the partitions' end offsets."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "sequencer-test-probe"})
    try:
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(partitions)
        )
    finally:
        consumer.close()


def _assert_exactly_once(entries, expected: set[bytes]) -> None:
    payloads = [e.payload for e in entries]
    assert len(payloads) == len(set(payloads)), "a submission was sequenced twice"
    assert set(payloads) == expected


def _verify(bootstrap: str, tmp_path: Path, name: str, key: SigningKey) -> None:
    backend = KafkaBackend(bootstrap, state_dir=tmp_path / "verify", timeout=15)
    try:
        report = Ledger(backend, name, signer=key).verify()
        assert report.ok, report.findings
    finally:
        backend.close()


def _sizes(entries, partitions: int) -> list[int]:
    return [sum(1 for e in entries if e.header.partition == p) for p in range(partitions)]


def _latest_checkpoint_sizes(bootstrap: str, tmp_path: Path, name: str, partitions: int):
    backend = KafkaBackend(bootstrap, state_dir=tmp_path / "cps", timeout=15)
    try:
        notes = [backend.checkpoints(name, p) for p in range(partitions)]
    finally:
        backend.close()
    return [int(n[-1].split("\n")[1]) if n else 0 for n in notes]


def _submissions(n: int, prefix: str = "s"):
    return [
        (
            f"acct-{i % 37}".encode(),
            json.dumps({"id": f"{prefix}-{i}", "amount": i}).encode(),
            [("content-type", b"application/json")],
        )
        for i in range(n)
    ]


def test_submissions_are_sequenced_exactly_once_with_checkpoints(kafka_bootstrap, tmp_path, key):
    name, intake = _setup(kafka_bootstrap, tmp_path, key, partitions=3)
    subs = _submissions(3000)
    _produce(kafka_bootstrap, intake, subs)
    seq = Sequencer(
        kafka_bootstrap,
        name,
        intake,
        signer=key,
        checkpoint_every=500,
        checkpoint_interval=0,
        state_dir=tmp_path / "seq",
        batch_size=200,
        stats_interval=0,
    )
    stats = seq.run(until=lambda s: s.entries >= 3000)
    assert (stats.entries, stats.rejects, stats.aborted) == (3000, 0, 0)

    entries = _entries(kafka_bootstrap, name, 3)
    _assert_exactly_once(entries, {v for _, v, _ in subs})
    assert {e.header.content_type for e in entries} == {"application/json"}
    where = {}  # every key in one partition (the intake partition the producer chose)
    for e in entries:
        assert where.setdefault(e.header.key, e.header.partition) == e.header.partition
    # checkpoints at the cadence: every 500 entries (+ at most one batch), and a last one
    counts = [n for _, n, _ in stats.checkpoint_log]
    steps = [b - a for a, b in zip([0, *counts], counts, strict=False)]
    assert len(counts) >= 5 and counts[-1] == 3000, counts
    assert all(s <= 700 for s in steps) and all(s >= 500 for s in steps[:-1]), counts
    _verify(kafka_bootstrap, tmp_path, name, key)
    assert _latest_checkpoint_sizes(kafka_bootstrap, tmp_path, name, 3) == _sizes(entries, 3)


def test_checkpoints_every_interval(kafka_bootstrap, tmp_path, key):
    name, intake = _setup(kafka_bootstrap, tmp_path, key, partitions=1)
    stop = threading.Event()

    def trickle():
        i = 0
        while not stop.is_set():
            _produce(kafka_bootstrap, intake, _submissions(5, f"t{i}"))
            i += 1
            time.sleep(0.2)

    producer = threading.Thread(target=trickle)
    producer.start()
    started = time.monotonic()
    seq = Sequencer(
        kafka_bootstrap,
        name,
        intake,
        signer=key,
        checkpoint_every=0,
        checkpoint_interval=1.0,
        state_dir=tmp_path / "seq",
        stats_interval=0,
    )
    try:
        stats = seq.run(until=lambda s: time.monotonic() - started > 4.5)
    finally:
        stop.set()
        producer.join()
    times = [t for t, _, _ in stats.checkpoint_log]
    assert len(times) >= 3, times
    assert all(b - a >= 1.0 for a, b in zip(times, times[1:-1], strict=False)), times
    _verify(kafka_bootstrap, tmp_path, name, key)


def test_invalid_submissions_go_to_rejects_with_the_reason(kafka_bootstrap, tmp_path, key):
    name, intake = _setup(kafka_bootstrap, tmp_path, key, partitions=2)
    ok = [
        (b"k", f"ok-{i}".encode(), [("content-type", b"text/plain; charset=utf-8")])
        for i in range(20)
    ]
    ok.append((None, b"keyless, default content type", None))
    bad = {
        "empty": (b"k", b"", None),
        "tombstone": (b"k", None, None),
        "not-a-media-type": (b"k", b"x", [("content-type", b"not a media type")]),
        "two-content-types": (b"k", b"x", [("content-type", b"a/b"), ("Content-Type", b"c/d")]),
        "non-ascii-content-type": (b"k", b"x", [("content-type", "text/plain; x=é".encode())]),
        "huge-key": (b"K" * 70_000, b"x", None),
        "big-payload": (b"k", b"P" * 2_000, None),
    }
    expected_code = {
        "empty": "empty",
        "tombstone": "empty",
        "not-a-media-type": "bad_content_type",
        "two-content-types": "bad_content_type",
        "non-ascii-content-type": "bad_content_type",
        "huge-key": "key_too_large",
        "big-payload": "payload_too_large",
    }
    items = list(ok)
    for label, (k, v, h) in bad.items():
        items.append((k, v, [*(h or []), ("submission", label.encode())]))
    _produce(kafka_bootstrap, intake, items)
    seq = Sequencer(
        kafka_bootstrap,
        name,
        intake,
        signer=key,
        limits=Limits(max_payload_bytes=1000),
        state_dir=tmp_path / "seq",
        stats_interval=0,
    )
    stats = seq.run(until=lambda s: s.entries + s.rejects >= len(items))
    assert (stats.entries, stats.rejects) == (len(ok), len(bad))

    entries = _entries(kafka_bootstrap, name, 2)
    _assert_exactly_once(entries, {v for _, v, _ in ok})
    keyless = [e for e in entries if e.payload.startswith(b"keyless")]
    assert keyless[0].header.content_type == "application/octet-stream"
    assert keyless[0].header.key == b""

    rejected = {}
    for p in range(2):
        for msg in _read_all(kafka_bootstrap, name + ".rejects", p):
            headers = dict(msg.headers())
            label = headers["submission"].decode()
            assert label not in rejected, "rejected twice"
            rejected[label] = (msg, headers)
    assert set(rejected) == set(bad)
    for label, (msg, headers) in rejected.items():
        assert headers[H_CODE].decode() == expected_code[label], label
        assert headers[H_REASON], label
        topic, partition, offset = headers[H_SOURCE].decode().rsplit(":", 2)
        assert topic == intake and msg.partition() == int(partition) and int(offset) >= 0
        assert msg.value() == bad[label][1]  # the payload as submitted, to fix and resubmit
    assert b"2000 bytes" in rejected["big-payload"][1][H_REASON]
    _verify(kafka_bootstrap, tmp_path, name, key)


def _cli(bootstrap: str, data_dir: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "streamledger",
        "--data-dir",
        str(data_dir),
        "-b",
        bootstrap,
        "sequencer",
        "run",
        *args,
    ]


def _start(cmd: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=open(log, "w"),
        env=env,
        cwd=REPO,  # noqa: SIM115
    )


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def _stop(proc: subprocess.Popen, log: Path) -> str:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0, log.read_text()
    text = log.read_text()
    assert "stopped:" in text, text
    return text


def _cli_setup(bootstrap: str, tmp_path: Path, partitions: int):
    data = tmp_path / "data"
    store = KeyStore(data / "keys")
    store.generate("seq-key")
    key = store.load("seq-key")
    name, intake = _setup(bootstrap, tmp_path, key, partitions)
    return data, key, name, intake


def test_kill_9_of_a_sequencer_then_restart_is_exactly_once(kafka_bootstrap, tmp_path):
    data, key, name, intake = _cli_setup(kafka_bootstrap, tmp_path, 3)
    subs = _submissions(20_000)
    producer = threading.Thread(
        target=_produce, args=(kafka_bootstrap, intake, subs), kwargs={"pace": 0.2, "chunk": 500}
    )
    producer.start()
    args = ["--intake", intake, "--ledger", name, "--checkpoint-every", "3000"]
    args += ["--batch-size", "500", "--stats-interval", "1", "--instance-id", "seq-a"]
    log1 = tmp_path / "seq1.log"
    proc = _start(_cli(kafka_bootstrap, data, *args), log1)
    try:
        _wait_for(lambda: _end_offsets(kafka_bootstrap, name, 3) >= 4000, 60, "entries")
        os.kill(proc.pid, signal.SIGKILL)  # in the middle of the stream and of a transaction
        proc.wait(30)
    finally:
        proc.kill()
    assert _committed_count(kafka_bootstrap, name, 3) < 20_000
    log2 = tmp_path / "seq2.log"
    proc = _start(_cli(kafka_bootstrap, data, *args), log2)  # same instance: takes over at once
    try:
        producer.join(120)
        _wait_for(
            lambda: _committed_count(kafka_bootstrap, name, 3) >= 20_000, 90, "all submissions"
        )
        text = _stop(proc, log2)
    finally:
        proc.kill()
    assert "entries/s" in text
    entries = _entries(kafka_bootstrap, name, 3)
    _assert_exactly_once(entries, {v for _, v, _ in subs})
    _verify(kafka_bootstrap, tmp_path, name, key)


def test_two_sequencers_share_partitions_exactly_once(kafka_bootstrap, tmp_path):
    data, key, name, intake = _cli_setup(kafka_bootstrap, tmp_path, 4)
    subs = _submissions(16_000)
    producer = threading.Thread(
        target=_produce, args=(kafka_bootstrap, intake, subs), kwargs={"pace": 0.2, "chunk": 400}
    )
    producer.start()
    args = ["--intake", intake, "--ledger", name, "--checkpoint-every", "2000"]
    args += ["--batch-size", "300", "--stats-interval", "1"]
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [_start(_cli(kafka_bootstrap, data, *args, "--instance-id", "a"), logs[0])]
    try:
        _wait_for(lambda: _end_offsets(kafka_bootstrap, name, 4) >= 2000, 60, "entries")
        procs.append(_start(_cli(kafka_bootstrap, data, *args, "--instance-id", "b"), logs[1]))
        producer.join(120)
        _wait_for(
            lambda: _committed_count(kafka_bootstrap, name, 4) >= 16_000, 90, "all submissions"
        )
        for proc, log in zip(procs, logs, strict=True):
            _stop(proc, log)
    finally:
        for proc in procs:
            proc.kill()
    entries = _entries(kafka_bootstrap, name, 4)
    _assert_exactly_once(entries, {v for _, v, _ in subs})
    writers = {e.header.producer for e in entries}
    assert writers == {"sequencer/a", "sequencer/b"}, writers
    assert "assigned intake partitions" in logs[1].read_text()
    _verify(kafka_bootstrap, tmp_path, name, key)


def test_an_aborted_transaction_leaves_nothing(kafka_bootstrap, tmp_path, key, monkeypatch):
    name, intake = _setup(kafka_bootstrap, tmp_path, key, partitions=2)
    subs = _submissions(1000)
    subs.append((b"k", b"", [("submission", b"bad")]))  # rejects are transactional too
    _produce(kafka_bootstrap, intake, subs)
    original = KafkaBackend._commit
    calls = {"n": 0}

    def commit_failing_once(self, producer):
        calls["n"] += 1
        if calls["n"] == 2:
            from confluent_kafka import KafkaException

            # The records reach the broker first (then the abort leaves them in the log,
            # invisible); unflushed ones would just be purged by the abort.
            assert producer.flush(30) == 0

            raise KafkaException(
                KafkaError(KafkaError._TIMED_OUT, "injected failure", txn_requires_abort=True)
            )
        return original(self, producer)

    monkeypatch.setattr(KafkaBackend, "_commit", commit_failing_once)
    seq = Sequencer(
        kafka_bootstrap,
        name,
        intake,
        signer=key,
        state_dir=tmp_path / "seq",
        batch_size=100,
        stats_interval=0,
    )
    stats = seq.run(until=lambda s: s.entries + s.rejects >= len(subs))
    monkeypatch.undo()
    assert stats.aborted == 1 and stats.entries == 1000 and stats.rejects == 1
    entries = _entries(kafka_bootstrap, name, 2)
    _assert_exactly_once(entries, {v for _, v, _ in subs if v})
    physical = sum(len(_read_all(kafka_bootstrap, name, p, "read_uncommitted")) for p in range(2))
    assert physical > len(entries)  # the aborted records are in the log, invisible
    rejects = [m for p in range(2) for m in _read_all(kafka_bootstrap, name + ".rejects", p)]
    assert len(rejects) == 1
    _verify(kafka_bootstrap, tmp_path, name, key)


def test_a_failed_transaction_drops_the_batch_queued_behind_it(
    kafka_bootstrap, tmp_path, key, monkeypatch
):
    """The next batch is built on the heads of the one committing and queued behind it; when
    that transaction fails, the queued batch is not written either (its chain would hang on
    entries that do not exist): both are rewound and sequenced again, exactly once."""
    from confluent_kafka import KafkaException

    from streamledger.services import sequencer as sequencer_module

    name, intake = _setup(kafka_bootstrap, tmp_path, key, partitions=2)
    subs = _submissions(2000)
    _produce(kafka_bootstrap, intake, subs)
    original_commit = KafkaBackend._commit
    original_job = Sequencer._commit
    original_prepare = Sequencer._prepare
    calls = {"commits": 0, "skipped": 0, "built_while_committing": 0}

    def slow_commit(self, producer):
        calls["commits"] += 1
        time.sleep(0.5 if calls["commits"] == 3 else 0.1)  # the next batch gets queued
        if calls["commits"] == 3:
            raise KafkaException(
                KafkaError(KafkaError._TIMED_OUT, "injected failure", txn_requires_abort=True)
            )
        return original_commit(self, producer)

    def job(self, previous, batch):
        try:
            return original_job(self, previous, batch)
        except sequencer_module._Skipped:
            calls["skipped"] += 1
            raise

    def prepare(self, msgs):
        in_flight = any(not future.done() for future, _ in self._in_flight)
        batch = original_prepare(self, msgs)
        if batch is not None and in_flight:
            calls["built_while_committing"] += 1
        return batch

    monkeypatch.setattr(KafkaBackend, "_commit", slow_commit)
    monkeypatch.setattr(Sequencer, "_commit", job)
    monkeypatch.setattr(Sequencer, "_prepare", prepare)
    seq = Sequencer(
        kafka_bootstrap,
        name,
        intake,
        signer=key,
        checkpoint_every=700,
        state_dir=tmp_path / "seq",
        batch_size=200,
        stats_interval=0,
    )
    stats = seq.run(until=lambda s: s.entries >= len(subs))
    monkeypatch.undo()
    assert calls["built_while_committing"] > 0, calls
    assert calls["skipped"] >= 1, calls
    assert stats.aborted == 1 and stats.entries == len(subs), stats
    entries = _entries(kafka_bootstrap, name, 2)
    _assert_exactly_once(entries, {v for _, v, _ in subs})
    _verify(kafka_bootstrap, tmp_path, name, key)
    assert _latest_checkpoint_sizes(kafka_bootstrap, tmp_path, name, 2) == _sizes(entries, 2)
