"""Apache Kafka backend: a ledger is a topic, each partition one verifiable log.

See :mod:`streamledger.backends.kafka._backend` and ``docs/kafka.md``.
"""

from streamledger.backends.kafka._admin import (
    CHECKPOINTS_SUFFIX,
    DEFAULT_TRANSACTIONAL_ID,
    HISTORY_SUFFIX,
    REGISTRY_TOPIC,
    checkpoints_topic,
    consumer_settings,
    documents_topic,
    history_topic,
    producer_settings,
)
from streamledger.backends.kafka._backend import KafkaBackend

__all__ = [
    "CHECKPOINTS_SUFFIX",
    "DEFAULT_TRANSACTIONAL_ID",
    "HISTORY_SUFFIX",
    "KafkaBackend",
    "REGISTRY_TOPIC",
    "checkpoints_topic",
    "consumer_settings",
    "documents_topic",
    "history_topic",
    "producer_settings",
]
