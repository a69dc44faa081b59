"""Encrypted ledgers on a real Kafka broker: keys in <ledger>.documents, subject keys in the
compacted <ledger>.subject-keys topic, erasure by tombstone."""

import uuid

import pytest

from streamledger import Ledger
from streamledger.backends.kafka import KafkaBackend
from streamledger.crypto import (
    DecryptionError,
    KafkaSubjectStore,
    Keyring,
    LedgerEncryption,
    ReaderKey,
)

pytestmark = pytest.mark.kafka


def test_round_trip_rotation_and_erasure_on_kafka(kafka_bootstrap, tmp_path):
    name = f"enc-{uuid.uuid4().hex[:8]}"
    ops, audit = ReaderKey.generate("ops"), ReaderKey.generate("audit")
    backend = KafkaBackend(kafka_bootstrap, state_dir=tmp_path / "a")
    ledger = Ledger.create(backend, name, partitions=2)
    Keyring(backend, name).enable([ops.public, audit.public])
    store = KafkaSubjectStore(kafka_bootstrap)
    ledger.encryption = LedgerEncryption(backend, name, ops, subjects=store)
    ledger.append_many([b"p%d" % i for i in range(50)], partition=0)
    ledger.append(b"alice's trade", subject="alice", partition=1)
    Keyring(backend, name).revoke("audit")
    ledger.encryption.refresh()
    ledger.append(b"after revoke", partition=1)
    assert ledger.verify().ok
    backend.close()
    store.close()

    # A fresh process: only the broker and the reader's private key.
    fresh = KafkaBackend(kafka_bootstrap, state_dir=tmp_path / "b")
    reader = Ledger(
        fresh,
        name,
        encryption=LedgerEncryption(fresh, name, ops, subjects=KafkaSubjectStore(kafka_bootstrap)),
    )
    assert [d.payload for d in reader.read_decrypted(0)] == [b"p%d" % i for i in range(50)]
    assert [d.payload for d in reader.read_decrypted(1)] == [b"alice's trade", b"after revoke"]
    revoked = LedgerEncryption(fresh, name, audit, subjects=KafkaSubjectStore(kafka_bootstrap))
    entries = list(Ledger(fresh, name).read(1))
    assert revoked.decrypt(entries[0]).payload == b"alice's trade"
    with pytest.raises(DecryptionError, match=f"'{name}' partition 1 seq 1: .*epoch 2"):
        revoked.decrypt(entries[1])

    assert reader.encryption.erase("alice")["keys_deleted"] == 1
    after = LedgerEncryption(fresh, name, ops, subjects=KafkaSubjectStore(kafka_bootstrap))
    with pytest.raises(DecryptionError, match="seq 0: the payload's subject was erased"):
        after.decrypt(entries[0])
    assert after.decrypt(entries[1]).payload == b"after revoke"
    assert Ledger(fresh, name).verify().ok
    fresh.close()
