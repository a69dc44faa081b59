"""Smoke tests of the real local Kafka broker (tests/kafka_broker.py): transactions work."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

pytestmark = pytest.mark.kafka

N_MESSAGES = 1000
PARTITIONS = 3


def _txn_producer(bootstrap: str) -> Producer:
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "transactional.id": f"test-txn-{uuid.uuid4().hex[:8]}",
            "enable.idempotence": True,
            "linger.ms": 5,
        }
    )
    producer.init_transactions(30)
    return producer


def _consume_all(
    bootstrap: str, topic: str, isolation: str, expect: int, timeout: float = 30.0
) -> list[tuple[int, bytes, bytes]]:
    """Read ``topic`` from the beginning; return (partition, key, value) in arrival order."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "isolation.level": isolation,
            "enable.partition.eof": True,
        }
    )
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    out: list[tuple[int, bytes, bytes]] = []
    at_eof: set[int] = set()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    at_eof.add(msg.partition())
                    if len(at_eof) == PARTITIONS and len(out) >= expect:
                        break
                    continue
                raise AssertionError(f"consumer error: {msg.error()}")
            at_eof.discard(msg.partition())
            out.append((msg.partition(), msg.key(), msg.value()))
    finally:
        consumer.close()
    return out


def _payload(i: int) -> bytes:
    return f"message-{i:05d}-".encode() + bytes([i % 251]) * 16


def test_transactional_produce_and_read_committed(kafka_bootstrap, kafka_new_topic):
    topic = kafka_new_topic(partitions=PARTITIONS)
    producer = _txn_producer(kafka_bootstrap)
    producer.begin_transaction()
    for i in range(N_MESSAGES):
        producer.produce(topic, key=str(i).encode(), value=_payload(i), partition=i % PARTITIONS)
        if i % 100 == 0:
            producer.poll(0)
    producer.commit_transaction(30)

    got = _consume_all(kafka_bootstrap, topic, "read_committed", N_MESSAGES)
    assert len(got) == N_MESSAGES
    assert sorted(v for _, _, v in got) == sorted(_payload(i) for i in range(N_MESSAGES))
    for part, key, value in got:
        i = int(key)
        assert value == _payload(i)
        assert part == i % PARTITIONS
    # per-partition order is production order
    for p in range(PARTITIONS):
        keys = [int(k) for part, k, _ in got if part == p]
        assert keys == list(range(p, N_MESSAGES, PARTITIONS))


def test_aborted_transaction_invisible_to_read_committed(kafka_bootstrap, kafka_new_topic):
    topic = kafka_new_topic(partitions=PARTITIONS)
    producer = _txn_producer(kafka_bootstrap)

    producer.begin_transaction()
    for i in range(30):
        producer.produce(topic, value=b"committed-1-%d" % i, partition=i % PARTITIONS)
    producer.commit_transaction(30)

    producer.begin_transaction()
    for i in range(60):
        producer.produce(topic, value=b"aborted-%d" % i, partition=i % PARTITIONS)
    producer.flush(30)  # make sure the aborted records really reached the log
    producer.abort_transaction(30)

    producer.begin_transaction()
    for i in range(30):
        producer.produce(topic, value=b"committed-2-%d" % i, partition=i % PARTITIONS)
    producer.commit_transaction(30)

    committed = _consume_all(kafka_bootstrap, topic, "read_committed", 60)
    values = sorted(v for _, _, v in committed)
    expected = sorted(
        [b"committed-1-%d" % i for i in range(30)] + [b"committed-2-%d" % i for i in range(30)]
    )
    assert values == expected

    # sanity: the aborted records are in the log, visible to read_uncommitted
    everything = _consume_all(kafka_bootstrap, topic, "read_uncommitted", 120)
    aborted = sorted(v for _, _, v in everything if v.startswith(b"aborted-"))
    assert aborted == sorted(b"aborted-%d" % i for i in range(60))


def test_committed_data_survives_broker_crash(kafka_broker, kafka_new_topic):
    topic = kafka_new_topic(partitions=PARTITIONS)
    producer = _txn_producer(kafka_broker.bootstrap)
    producer.begin_transaction()
    for i in range(90):
        producer.produce(topic, value=b"durable-%d" % i, partition=i % PARTITIONS)
    producer.commit_transaction(30)
    del producer

    kafka_broker.kill()  # SIGKILL: no clean shutdown
    try:
        assert not kafka_broker.is_running()
    finally:
        kafka_broker.start_again()
    got = _consume_all(kafka_broker.bootstrap, topic, "read_committed", 90, timeout=60)
    assert sorted(v for _, _, v in got) == sorted(b"durable-%d" % i for i in range(90))
