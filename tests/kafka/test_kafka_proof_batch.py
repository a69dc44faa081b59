"""Batched node reads (``get_nodes``) on the Kafka backend: the proofs equal the
node-by-node ones, verify offline, and a cache that has not followed the topic yet (a new
state directory) is brought up to date by the batch, as ``get_node`` does."""

from __future__ import annotations

import uuid

import pytest

from streamledger.backends.base import get_nodes_one_by_one
from streamledger.backends.kafka import KafkaBackend
from streamledger.core.merkle import consistency_proof, inclusion_proof, root_hash
from streamledger.core.note import SigningKey
from streamledger.errors import BackendUnavailable
from streamledger.ledger import Ledger

pytestmark = pytest.mark.kafka


def test_kafka_batched_proofs_equal_node_by_node_proofs(kafka_bootstrap, tmp_path):
    key = SigningKey.generate("kafka-batch-log")
    name = f"batch-{uuid.uuid4().hex[:10]}"
    backend = KafkaBackend(kafka_bootstrap, state_dir=tmp_path / "a", timeout=15)
    ledger = Ledger.create(backend, name, partitions=2, signer=key)
    for n in (1, 6, 57, 100, 36):  # 200 entries in partition 0, nodes across transactions
        ledger.append_many([b"e%d" % i for i in range(n)], partition=0)
        ledger.checkpoint()
    ledger.append_many([b"other"] * 3, partition=1)
    size = ledger.size(0)
    assert size == 200
    get = ledger._get_node(0)
    for seq in (0, 1, 6, 63, 64, 100, 163, 199):
        proof = ledger.prove_inclusion(0, seq)
        assert proof.proof == inclusion_proof(seq, size, get)
        assert proof.verify([key.verifier])
    for old in (1, 7, 50, 64, 164, 200):
        cproof = ledger.prove_consistency(0, old)
        assert cproof.proof == consistency_proof(old, size, get)
        assert (cproof.old_root, cproof.new_root) == (root_hash(old, get), root_hash(size, get))
        assert cproof.verify([key.verifier])
    ids = [(level, index) for level in range(8) for index in range(size >> level)]
    assert backend.get_nodes(name, 0, ids) == get_nodes_one_by_one(backend, name, 0, ids)
    with pytest.raises(BackendUnavailable, match="level 0 index 200"):
        backend.get_nodes(name, 0, [(0, 3), (0, 200)])
    expected = ledger.prove_inclusion(0, 150)
    backend.close()

    # A fresh state directory: the node cache is empty until the batch makes it follow.
    fresh = KafkaBackend(kafka_bootstrap, state_dir=tmp_path / "b", timeout=15)
    try:
        batch = fresh.get_nodes(name, 0, ids[:40])
        assert batch == get_nodes_one_by_one(fresh, name, 0, ids[:40])
        assert Ledger(fresh, name).prove_inclusion(0, 150) == expected
    finally:
        fresh.close()
