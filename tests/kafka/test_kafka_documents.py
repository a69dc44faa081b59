"""Side documents on Kafka live in the ledger's ``<ledger>.documents`` topic."""

import uuid

import pytest

from streamledger import Ledger
from streamledger.backends.kafka import KafkaBackend, documents_topic

pytestmark = pytest.mark.kafka


def test_documents_round_trip_and_survive_a_new_backend(kafka_bootstrap, tmp_path):
    name = f"docs-{uuid.uuid4().hex[:8]}"
    backend = KafkaBackend(kafka_bootstrap, state_dir=tmp_path / "a")
    Ledger.create(backend, name)
    backend.put_document(name, "keys", "epoch-1/alice", b"wrapped")
    backend.put_document(name, "cosignatures", "0/1", b"cosig")
    backend.put_document(name, "keys", "epoch-2/alice", b"wrapped-2")
    assert backend.documents(name, "keys") == [
        ("epoch-1/alice", b"wrapped"),
        ("epoch-2/alice", b"wrapped-2"),
    ]
    backend.close()
    fresh = KafkaBackend(kafka_bootstrap, state_dir=tmp_path / "b")
    assert fresh.documents(name, "cosignatures") == [("0/1", b"cosig")]
    assert fresh._topic_exists(documents_topic(name))
    fresh.close()
