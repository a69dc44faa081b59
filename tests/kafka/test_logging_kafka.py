"""LedgerHandler on a real Kafka broker: 2,000 records in, a verified ledger out."""

from __future__ import annotations

import json
import logging
import uuid
from collections import Counter, defaultdict

import pytest

from streamledger.backends.kafka import KafkaBackend
from streamledger.core.note import SigningKey
from streamledger.core.verify import TrustPolicy
from streamledger.ledger import Ledger
from streamledger.logging import LedgerHandler

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]


def test_log_records_to_a_kafka_ledger(kafka_bootstrap, tmp_path):
    name = f"applog-{uuid.uuid4().hex[:10]}"
    handler = LedgerHandler(
        name,
        bootstrap_servers=kafka_bootstrap,
        state_dir=tmp_path / "handler-state",
        kafka_timeout=15,
        create=True,
        partitions=3,
        batch_size=250,
        max_latency=0.05,
    )
    loggers = [logging.getLogger(f"kafka.app.{i}") for i in range(5)]
    for logger in loggers:
        logger.handlers[:] = [handler]
        logger.setLevel(logging.INFO)
        logger.propagate = False
    try:
        for i in range(2_000):
            loggers[i % 5].info("event %d", i, extra={"i": i})
        assert handler.flush(60), handler.stats
    finally:
        handler.close(timeout=30)
        for logger in loggers:
            logger.handlers.clear()
    stats = handler.stats
    assert (stats.emitted, stats.appended, stats.dropped, stats.queued) == (2_000, 2_000, 0, 0)

    backend = KafkaBackend(kafka_bootstrap, state_dir=tmp_path / "reader-state", timeout=15)
    try:
        key = SigningKey.generate("example.com/kafka-app-log")
        ledger = Ledger(backend, name, signer=key)
        ledger.checkpoint()
        report = ledger.verify(TrustPolicy((key.verifier,)))
        assert report.ok, report.findings
        assert report.entries_checked == 2_000

        per_logger: dict[str, list[int]] = defaultdict(list)
        partition_of: dict[str, set[int]] = defaultdict(set)
        count = 0
        for p in range(ledger.partitions):
            for entry in ledger.read(p):
                obj = json.loads(entry.payload)
                assert entry.header.content_type == "application/json"
                per_logger[obj["logger"]].append(obj["extra"]["i"])
                partition_of[obj["logger"]].add(p)
                count += 1
        assert count == 2_000
        assert Counter({k: len(v) for k, v in per_logger.items()}) == Counter(
            {f"kafka.app.{i}": 400 for i in range(5)}
        )
        for i, logger_name in enumerate(sorted(per_logger)):
            assert per_logger[logger_name] == list(range(i, 2_000, 5))  # in order
            assert len(partition_of[logger_name]) == 1
    finally:
        backend.close()
