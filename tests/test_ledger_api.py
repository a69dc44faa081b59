"""The Ledger API on every embedded backend: appending, reading, proofs, checkpoints,
concurrency and verification memory."""

from __future__ import annotations

import dataclasses
import hashlib
import tracemalloc
from collections.abc import Callable, Iterator

import pytest

from streamledger.backends.memory import MemoryBackend
from streamledger.backends.sqlite import SQLiteBackend
from streamledger.core.checkpoint import Checkpoint, sign_checkpoint
from streamledger.core.entry import ZERO_HASH, StoredRecord, build_record, decode_record
from streamledger.core.merkle import CompactRange
from streamledger.core.note import SigningKey
from streamledger.core.partitioner import partition_for_key
from streamledger.core.verify import TrustPolicy, verify_partition
from streamledger.errors import (
    ConfigError,
    FormatError,
    ProofError,
    StreamledgerError,
    VerificationError,
)
from streamledger.ledger import AppendItem, Ledger
from streamledger.testing import fixed_clock

BackendFactory = Callable[[], object]


@pytest.fixture(params=["memory", "sqlite"])
def make_backend(request, tmp_path) -> BackendFactory:
    """A factory: each call opens the same store again (a second client of it)."""
    if request.param == "memory":
        backend = MemoryBackend()
        return lambda: backend
    return lambda: SQLiteBackend(tmp_path / "store")


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate("api-log-key")


@pytest.fixture
def ledger(make_backend, key) -> Ledger:
    return Ledger.create(make_backend(), "api", partitions=3, signer=key, clock=fixed_clock())


def test_append_read_round_trip(ledger: Ledger) -> None:
    payloads = [b"", b"one", bytes(range(256)) * 10, "héllo".encode()]
    receipts = ledger.append_many(payloads, partition=1)
    entries = list(ledger.read(1))
    assert [e.payload for e in entries] == payloads
    assert [e.seq for e in entries] == [0, 1, 2, 3]
    assert all(e.payload_matches() for e in entries)
    assert entries[0].header.prev_hash == ZERO_HASH
    for prev, cur in zip(entries, entries[1:], strict=False):
        assert cur.header.prev_hash == prev.leaf_hash
    assert [r.leaf_hash for r in receipts] == [e.leaf_hash for e in entries]
    assert [e.payload for e in ledger.read(1, 1, 3)] == payloads[1:3]
    assert ledger.size(1) == 4 and ledger.size(0) == 0
    assert ledger.verify().ok


def test_receipts(ledger: Ledger) -> None:
    first = ledger.append(b"a", partition=2)
    second = ledger.append(b"b", partition=2, content_type="text/plain")
    assert (first.ledger, first.partition, first.seq) == ("api", 2, 0)
    assert (second.partition, second.seq) == (2, 1)
    assert second.offset > first.offset
    entry = next(ledger.read(2, 1, 2))
    assert entry.leaf_hash == second.leaf_hash
    assert entry.header.content_type == "text/plain"
    assert entry.header.ledger == "api"


def test_keyed_partition_choice_is_stable(ledger: Ledger, make_backend) -> None:
    keys = [f"customer-{i}".encode() for i in range(20)]
    first = [ledger.append(b"x", key=k).partition for k in keys]
    again = [ledger.append(b"y", key=k).partition for k in keys]
    assert first == again
    assert first == [partition_for_key(k, 3) for k in keys]
    assert len(set(first)) > 1  # keys actually spread
    reopened = Ledger(make_backend(), "api")
    assert [reopened.choose_partition(k) for k in keys] == first
    for k, p in zip(keys, first, strict=True):
        assert any(e.header.key == k for e in ledger.read(p))


def test_batch_is_all_or_nothing(ledger: Ledger) -> None:
    ledger.append_many([b"before"] * 2, partition=0)
    batch = [AppendItem(b"ok", key=b"a"), AppendItem(b"bad", key=b"k" * 70_000), b"ok too"]
    with pytest.raises(FormatError, match="key"):
        ledger.append_many(batch)
    assert [ledger.size(p) for p in range(3)] == [2, 0, 0]
    ledger.append(b"after", partition=0)  # the ledger is still usable
    assert ledger.size(0) == 3
    assert ledger.verify().ok


def test_multi_partition_batch(ledger: Ledger) -> None:
    items = [AppendItem(f"{i}".encode(), key=f"k{i}".encode()) for i in range(30)]
    receipts = ledger.append_many(items)
    assert sum(ledger.size(p) for p in range(3)) == 30
    for item, r in zip(items, receipts, strict=True):
        assert next(ledger.read(r.partition, r.seq, r.seq + 1)).payload == item.payload
    assert ledger.verify().ok


def test_bad_arguments_are_clear_errors(ledger: Ledger, make_backend) -> None:
    with pytest.raises(ConfigError, match="partitions 0..2"):
        ledger.append(b"x", partition=3)
    with pytest.raises(TypeError):
        ledger.append_many(["not bytes"])  # type: ignore[list-item]
    with pytest.raises(ConfigError):
        Ledger.create(make_backend(), "api")  # exists
    with pytest.raises(ConfigError):
        Ledger.create(make_backend(), "bad name!")


def test_two_writers_alternating(make_backend, key) -> None:
    a = Ledger.create(make_backend(), "shared", partitions=2, signer=key, producer="a")
    b = Ledger(make_backend(), "shared", signer=key, producer="b")
    for i in range(10):
        a.append(f"a{i}".encode(), partition=i % 2)
        b.append(f"b{i}".encode(), partition=i % 2)
        b.append_many([f"b{i}x".encode(), f"b{i}y".encode()], partition=0)
    assert a.size(0) == 5 + 5 + 20 and a.size(1) == 10
    producers = [e.header.producer for e in a.read(0)]
    assert producers.count("a") == 5 and producers.count("b") == 25
    a.checkpoint()
    assert a.verify().ok
    assert b.verify().ok


def test_inclusion_proof_verifies_and_fails_when_tampered(ledger: Ledger, key) -> None:
    ledger.append_many([f"e{i}".encode() for i in range(13)], partition=0)
    with pytest.raises(ProofError, match="checkpoint"):
        ledger.prove_inclusion(0, 3)
    ledger.checkpoint()
    keys = [key.verifier]
    for seq in (0, 6, 12):
        proof = ledger.prove_inclusion(0, seq)
        assert any("included" in fact for fact in proof.verify(keys))
        again = type(proof).from_json(proof.to_json())
        again.verify(keys)
    proof = ledger.prove_inclusion(0, 6)
    bad_entry = bytearray(proof.entry)
    bad_entry[30] ^= 1
    tampered = [
        dataclasses.replace(proof, entry=bytes(bad_entry)),
        dataclasses.replace(proof, index=7),
        dataclasses.replace(proof, proof=[hashlib.sha256(b"x").digest(), *proof.proof[1:]]),
        dataclasses.replace(proof, root_hash=bytes(32)),
        dataclasses.replace(proof, partition=1),
    ]
    for bad in tampered:
        with pytest.raises(StreamledgerError):
            bad.verify(keys)
    with pytest.raises(VerificationError):
        proof.verify([SigningKey.generate("api-log-key").verifier])
    with pytest.raises(ProofError):
        ledger.prove_inclusion(0, 13)


def test_consistency_proof_verifies_and_fails_when_tampered(ledger: Ledger, key) -> None:
    ledger.append_many([b"x"] * 5, partition=1)
    ledger.checkpoint()
    ledger.append_many([b"y"] * 8, partition=1)
    ledger.checkpoint()
    keys = [key.verifier]
    proof = ledger.prove_consistency(1, 5)
    assert proof.new_size == 13
    facts = proof.verify(keys)
    assert any("extends" in f for f in facts)
    assert sum("signed by" in f for f in facts) == 2
    for bad in (
        dataclasses.replace(proof, old_root=bytes(32)),
        dataclasses.replace(proof, new_root=bytes(32)),
        dataclasses.replace(proof, proof=list(reversed(proof.proof))),
        dataclasses.replace(proof, old_size=4),
    ):
        with pytest.raises(StreamledgerError):
            bad.verify(keys)
    with pytest.raises(ProofError):
        ledger.prove_consistency(1, 5, 14)
    with pytest.raises(ProofError):
        ledger.prove_consistency(1, 9, 6)


def test_checkpoint_is_idempotent(ledger: Ledger, make_backend) -> None:
    backend = ledger.backend
    ledger.append_many([b"a"] * 3, partition=0)
    first = ledger.checkpoint()
    counts = [len(backend.checkpoints("api", p)) for p in range(3)]
    assert counts == [1, 1, 1]
    assert ledger.checkpoint() == first
    assert [len(backend.checkpoints("api", p)) for p in range(3)] == counts
    ledger.append(b"b", partition=2)
    second = ledger.checkpoint()
    assert second[0] == first[0] and second[1] == first[1] and second[2] != first[2]
    assert [len(backend.checkpoints("api", p)) for p in range(3)] == [1, 1, 2]
    reopened = Ledger(make_backend(), "api", signer=ledger.signer)
    assert reopened.checkpoint() == second
    report = ledger.verify()
    assert report.ok and [p.checkpoints_verified for p in report.partitions] == [1, 1, 2]


def test_checkpoint_without_key_is_a_clear_error(make_backend) -> None:
    ledger = Ledger.create(make_backend(), "nokey")
    with pytest.raises(ConfigError, match="signing key"):
        ledger.checkpoint()


def test_verify_with_explicit_trust_and_wrong_key(ledger: Ledger, key) -> None:
    ledger.append_many([b"a"] * 4, partition=0)
    ledger.checkpoint()
    assert ledger.verify(TrustPolicy((key.verifier,))).ok
    other = SigningKey.generate("someone-else")
    report = ledger.verify(TrustPolicy((other.verifier,)))
    assert not report.ok
    assert {f.kind for f in report.findings} == {"untrusted_checkpoint"}


def _synthetic(n: int) -> Iterator[StoredRecord]:
    """An honest partition of ``n`` entries, generated on the fly (nothing is kept)."""
    first, _ = build_record(
        "big", 0, 0, 0, "gen", "application/octet-stream", b"", ZERO_HASH, bytes(8)
    )
    header = decode_record(first).header_bytes
    seq_at = 6 + 3 + 4  # magic, version, ledger_len, "big", partition
    prev_at = len(header) - 72
    head, mid, tail = header[:seq_at], header[seq_at + 16 : prev_at], header[prev_at + 32 :]
    payload, prev, sha256 = bytes(8), ZERO_HASH, hashlib.sha256
    for seq in range(n):
        number = seq.to_bytes(8, "big")  # the seq, and the timestamp in ms
        header = b"".join((head, number, number, mid, prev, tail))
        prev = sha256(b"\x00" + header).digest()
        yield StoredRecord(seq, header + payload)


def test_synthetic_log_is_honest() -> None:
    records = list(_synthetic(50))
    assert [decode_record(r.value).seq for r in records] == list(range(50))
    report = verify_partition("big", 0, "o", records, [], None)
    assert report.ok and report.entries_checked == 50


def test_verify_memory_does_not_grow_with_the_log() -> None:
    """Verification streams: its peak memory is O(log n), not O(n). (100k entries: a kept
    copy of the records alone would be > 20 MB; tracemalloc makes larger runs slow.)"""
    n = 100_000
    key = SigningKey.generate("big-log-key")
    tree = CompactRange()  # the signed checkpoint of the synthetic log, in O(log n) too
    for rec in _synthetic(n):
        tree.append(hashlib.sha256(b"\x00" + rec.value[:-8]).digest())
    origin = "streamledger.local/ledger/big/partition/0"
    note = sign_checkpoint(Checkpoint(origin, n, tree.root()), key)
    tracemalloc.start()
    try:
        report = verify_partition(
            "big", 0, origin, _synthetic(n), [note], TrustPolicy((key.verifier,))
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.ok, report.findings[:3]
    assert report.entries_checked == n and report.checkpoints_verified == 1
    assert peak < 20 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"
    assert peak < 2 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB: something is kept per entry"


def test_append_atomically_on_one_ledger_is_append_many_and_refuses_what_it_cannot_do():
    from streamledger.ledger import append_atomically

    backend = MemoryBackend()
    a = Ledger.create(backend, "atom-a", partitions=2)
    b = Ledger.create(backend, "atom-b")
    (receipts,) = append_atomically([(a, [AppendItem(b"x", b"k1"), b"y"])])
    assert [r.seq for r in receipts] in ([0, 0], [0, 1])
    assert sum(a.size(p) for p in range(2)) == 2
    assert append_atomically([]) == []
    # several ledgers in one transaction need a backend that can (Kafka)
    with pytest.raises(ConfigError, match="several ledgers"):
        append_atomically([(a, [b"1"]), (b, [b"2"])])
    with pytest.raises(ConfigError, match="only once"):
        append_atomically([(a, [b"1"]), (a, [b"2"])])
    with pytest.raises(ConfigError, match="same backend"):
        append_atomically([(a, [b"1"]), (Ledger.create(MemoryBackend(), "atom-c"), [b"2"])])
    assert b.size(0) == 0
