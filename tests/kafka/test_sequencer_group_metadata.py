"""The sequencer asks librdkafka for the consumer's group metadata once per group generation
(every rebalance callback drops it), not once per transaction; the transactions still carry
it, and what they commit is exactly once."""

from __future__ import annotations

import io
import uuid

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from streamledger.backends.kafka import KafkaBackend
from streamledger.core.note import SigningKey
from streamledger.ledger import Ledger
from streamledger.services.sequencer import Sequencer

pytestmark = pytest.mark.kafka


class _Counting:
    """A consumer that counts consumer_group_metadata calls (everything else passes on)."""

    def __init__(self, consumer):
        self._consumer = consumer
        self.metadata_calls = 0

    def consumer_group_metadata(self):
        self.metadata_calls += 1
        return self._consumer.consumer_group_metadata()

    def __getattr__(self, name):
        return getattr(self._consumer, name)


def test_group_metadata_is_asked_once_per_generation(kafka_bootstrap, tmp_path, monkeypatch):
    name = f"seqmeta-{uuid.uuid4().hex[:10]}"
    intake = name + "-intake"
    key = SigningKey.generate("sequencer-metadata-test")
    backend = KafkaBackend(kafka_bootstrap, state_dir=tmp_path / "setup", timeout=15)
    Ledger.create(backend, name, partitions=2, signer=key)
    backend.close()
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(intake, 2, 1)])[intake].result(timeout=30)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 5})
    for i in range(3000):
        producer.produce(intake, f"payment-{i}".encode(), partition=i % 2)
    assert producer.flush(30) == 0

    counting: list[_Counting] = []
    opened = Sequencer._open

    def open_counting(self):
        opened(self)
        counting.append(_Counting(self._consumer))
        self._consumer = counting[-1]

    monkeypatch.setattr(Sequencer, "_open", open_counting)
    assigns = []
    assign = Sequencer._on_assign

    def on_assign(self, consumer, partitions):
        assigns.append(len(partitions))
        assign(self, consumer, partitions)

    monkeypatch.setattr(Sequencer, "_on_assign", on_assign)
    sequencer = Sequencer(
        kafka_bootstrap,
        name,
        intake,
        signer=key,
        checkpoint_every=0,
        checkpoint_interval=0,
        batch_size=250,
        state_dir=tmp_path / "seq",
        stats_interval=0,
        out=io.StringIO(),
    )
    stats = sequencer.run(until=lambda s: s.entries >= 3000)
    assert stats.entries == 3000 and stats.aborted == 0
    assert stats.transactions >= 6
    # once per generation (one assignment here), not once per transaction
    assert len(counting) == 1 and assigns
    assert 1 <= counting[0].metadata_calls <= len(assigns) < stats.transactions

    backend = KafkaBackend(kafka_bootstrap, state_dir=tmp_path / "verify", timeout=15)
    try:
        ledger = Ledger(backend, name, signer=key)
        assert sum(ledger.size(p) for p in range(2)) == 3000
        assert ledger.verify().ok
    finally:
        backend.close()
