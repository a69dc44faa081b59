"""A whole ledger topic copied into a new topic: verbatim (entries name the original ledger)
or with a recomputed chain (a self-consistent fake). An auditor with the real log key must
see both, with partition, sequence number and offset where they apply."""

import uuid

import pytest
from confluent_kafka import Producer

from streamledger import KafkaBackend, Ledger, SigningKey, TrustPolicy

pytestmark = pytest.mark.kafka


def test_copied_topics_are_caught(kafka_bootstrap, tmp_path):
    key = SigningKey.generate("bank.example/log")
    backend = KafkaBackend(kafka_bootstrap, state_dir=tmp_path / "cache")
    tag = uuid.uuid4().hex[:8]
    original = Ledger.create(backend, f"orig-{tag}", partitions=2, signer=key)
    original.append_many([b"payment %d" % i for i in range(40)])
    original.checkpoint()
    audit = TrustPolicy((key.verifier,), require_checkpoint=True)
    assert original.verify(audit).ok

    # 1. Verbatim copy: every record is foreign to the new ledger.
    verbatim = Ledger.create(backend, f"copy-{tag}", partitions=2)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for partition in range(2):
        for record in backend.scan(original.name, partition):
            producer.produce(verbatim.name, record.value, partition=partition)
    producer.flush(10)
    report = verbatim.verify(audit)
    kinds = {f.kind for f in report.findings}
    assert kinds == {"foreign"}
    first = next(f for f in report.findings if f.partition == 0)
    assert (first.seq, first.offset) == (0, 0)

    # 2. Recomputed chain under the new name, with the original's signed checkpoints copied
    #    beside it: the chain is perfect, but no checkpoint signed by the real key is for it.
    fake = Ledger.create(backend, f"fake-{tag}", partitions=2)
    for partition in range(2):
        payloads = [e.payload for e in original.read(partition)]
        fake.append_many(payloads, partition=partition)
        for note in backend.checkpoints(original.name, partition):
            backend.add_checkpoint(fake.name, partition, 0, note)
    assert fake.verify().ok  # no key named: only the chain, which is self-consistent
    report = fake.verify(audit)
    by_partition = {(f.partition, f.kind) for f in report.findings}
    assert by_partition == {(0, "bad_checkpoint"), (1, "bad_checkpoint")}
    # and with the checkpoints stripped instead, the audit still fails
    bare = Ledger.create(backend, f"bare-{tag}", partitions=1)
    bare.append_many([e.payload for e in original.read(0)])
    assert [f.kind for f in bare.verify(audit).findings] == ["no_trusted_checkpoint"]
    backend.close()
