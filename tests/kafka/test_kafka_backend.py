"""The Ledger API end to end on a real Kafka broker, and tampering only Kafka allows."""

from __future__ import annotations

import hashlib
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from streamledger.backends.kafka import KafkaBackend, checkpoints_topic, history_topic
from streamledger.core.entry import build_record, decode_record
from streamledger.core.note import SigningKey
from streamledger.core.proof import ConsistencyProof, InclusionProof
from streamledger.errors import BackendUnavailable, ConfigError
from streamledger.ledger import AppendItem, Ledger

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate("kafka-test-log")


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _backend(bootstrap: str, state_dir: Path) -> KafkaBackend:
    return KafkaBackend(bootstrap, state_dir=state_dir, timeout=15)


def _raw_producer(bootstrap: str) -> Producer:
    """A plain, non-transactional, non-idempotent producer: what an attacker or a buggy
    client with write access to the topic has."""
    return Producer({"bootstrap.servers": bootstrap, "enable.idempotence": False, "acks": "all"})


def _produce_raw(bootstrap: str, topic: str, partition: int, values: list[bytes]) -> None:
    producer = _raw_producer(bootstrap)
    for value in values:
        producer.produce(topic, value, partition=partition)
    assert producer.flush(15) == 0


def _wait_size(ledger: Ledger, partition: int, size: int, timeout: float = 10) -> None:
    # commit markers are written just after commit_transaction returns
    deadline = time.monotonic() + timeout
    while ledger.size(partition) < size:
        assert time.monotonic() < deadline, f"partition {partition} never reached {size}"
        time.sleep(0.05)


def test_ledger_end_to_end(kafka_bootstrap, tmp_path, key):
    backend = _backend(kafka_bootstrap, tmp_path / "state")
    name = _name("e2e")
    ledger = Ledger.create(backend, name, partitions=3, signer=key)
    assert name in backend.list_ledgers()
    assert backend.ledger_config(name).partitions == 3
    with pytest.raises(ConfigError, match="already exists"):
        Ledger.create(backend, name, partitions=3, signer=key)

    items = [
        AppendItem(f"payment-{i}".encode() * 5, key=f"cust-{i % 17}".encode()) for i in range(600)
    ]
    receipts = []
    for start in range(0, len(items), 200):
        receipts += ledger.append_many(items[start : start + 200])
    by_part: dict[int, list[bytes]] = {0: [], 1: [], 2: []}
    for item, receipt in zip(items, receipts, strict=True):
        assert receipt.seq == len(by_part[receipt.partition])
        by_part[receipt.partition].append(item.payload)
    assert all(by_part.values()), "keys must spread over all 3 partitions"
    # offsets skip over transaction markers: they are not sequence numbers
    assert any(r.offset != r.seq for r in receipts)

    notes = ledger.checkpoint()
    assert len(notes) == 3
    report = ledger.verify()
    assert report.ok, report.findings
    assert report.entries_checked == 600
    assert all(p.checkpoints_verified == 1 for p in report.partitions)

    # reads: whole partitions and ranges, by sequence number
    for p, payloads in by_part.items():
        assert [e.payload for e in ledger.read(p)] == payloads
        n = len(payloads)
        assert [e.seq for e in ledger.read(p, n // 3, n // 3 + 5)] == list(
            range(n // 3, n // 3 + 5)
        )
        assert [e.payload for e in ledger.read(p, n - 2)] == payloads[-2:]
        assert list(ledger.read(p, n + 5)) == []

    # proofs, verified offline from their JSON form
    old_sizes = {p: len(v) for p, v in by_part.items()}
    vkey = key.verifier
    for p, n in old_sizes.items():
        proof = ledger.prove_inclusion(p, n // 2)
        again = InclusionProof.from_json(proof.to_json())
        assert again.verify([vkey])
    more = ledger.append_many([f"more-{i}".encode() for i in range(30)], partition=1)
    assert [r.seq for r in more] == list(range(old_sizes[1], old_sizes[1] + 30))
    ledger.checkpoint()
    cproof = ledger.prove_consistency(1, old_sizes[1])
    assert cproof.old_checkpoint is not None and cproof.new_checkpoint is not None
    assert ConsistencyProof.from_json(cproof.to_json()).verify([vkey])

    # checkpoints: full history per partition, latest in the compacted topic
    assert len(backend.checkpoints(name, 1)) == 2
    assert backend.latest_checkpoint(name, 1) == backend.checkpoints(name, 1)[-1]
    assert ledger.verify().ok

    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    topics = admin.list_topics(timeout=10).topics
    assert {name, checkpoints_topic(name), history_topic(name)} <= set(topics)
    assert len(topics[name].partitions) == 3
    backend.close()


def test_reopen_with_empty_state_dir_recovers_heads(kafka_bootstrap, tmp_path, key):
    first = _backend(kafka_bootstrap, tmp_path / "a")
    name = _name("reopen")
    ledger = Ledger.create(first, name, partitions=3, signer=key)
    for i in range(4):
        ledger.append_many([f"x{i}-{j}".encode() for j in range(50)], partition=i % 3)
    ledger.checkpoint()
    sizes = [ledger.size(p) for p in range(3)]
    assert sizes == [100, 50, 50]
    first.close()

    second = _backend(kafka_bootstrap, tmp_path / "b")  # no cache: rebuilt from the topic
    again = Ledger(second, name, signer=key)
    assert [again.size(p) for p in range(3)] == sizes
    receipts = again.append_many([b"after-reopen"] * 10, partition=0)
    assert [r.seq for r in receipts] == list(range(100, 110))
    again.checkpoint()
    report = again.verify()
    assert report.ok, report.findings
    assert [e.payload for e in again.read(0, 99, 101)] == [b"x3-49", b"after-reopen"]
    # the rebuilt cache serves proofs
    assert again.prove_inclusion(0, 105).verify([key.verifier])
    second.close()

    # reading without any cache: binary search over offsets
    third = _backend(kafka_bootstrap, tmp_path / "c")
    assert [e.seq for e in Ledger(third, name).read(1, 20, 23)] == [20, 21, 22]
    third.close()


def test_unknown_ledger_and_partition_are_clear_errors(kafka_bootstrap, tmp_path):
    backend = _backend(kafka_bootstrap, tmp_path)
    with pytest.raises(ConfigError, match="no ledger named"):
        Ledger(backend, _name("missing"))
    name = _name("parts")
    ledger = Ledger.create(backend, name, partitions=2)
    with pytest.raises(ConfigError, match="partitions 0..1"):
        ledger.append(b"x", partition=2)
    with pytest.raises(ConfigError, match="companion topic"):
        Ledger.create(backend, name + ".checkpoints")
    backend.close()


def _findings(report, partition):
    return [f for f in report.findings if f.partition == partition]


def test_tampering_only_kafka_allows_is_reported(kafka_bootstrap, tmp_path, key):
    """p0: garbage and a forged entry; p1: a foreign entry; p2: duplicates; p3: DeleteRecords."""
    backend = _backend(kafka_bootstrap, tmp_path / "state")
    name = _name("tamper")
    ledger = Ledger.create(backend, name, partitions=4, signer=key)
    other = Ledger.create(backend, _name("other"), partitions=1, signer=key)
    other_receipt = other.append(b"from another ledger")
    for p in range(4):
        ledger.append_many([f"p{p}-e{i}".encode() for i in range(20)], partition=p)
    ledger.checkpoint()
    assert ledger.verify().ok

    # p0: a record that is not an entry, then a forged entry claiming the next seq
    garbage_offset = ledger.append(b"honest-20", partition=0).offset + 1  # after the marker
    _produce_raw(kafka_bootstrap, name, 0, [b"definitely not an entry"])
    forged, _ = build_record(
        name, 0, 21, 0, "mallory", "application/octet-stream", b"", b"\x11" * 32, b"forged"
    )
    _produce_raw(kafka_bootstrap, name, 0, [forged])
    # the honest writer skips both and keeps its chain
    tail = ledger.append_many([b"honest-21", b"honest-22"], partition=0)
    assert [r.seq for r in tail] == [21, 22]

    # p1: an entry copied from another ledger
    foreign_value = next(backend.read(other.name, 0, 0, 1)).value
    _produce_raw(kafka_bootstrap, name, 1, [foreign_value])
    ledger.append(b"honest-after-foreign", partition=1)

    # p2: a non-idempotent retry re-sends old records (one from the middle, the tail one)
    records = list(backend.read(name, 2))
    _produce_raw(kafka_bootstrap, name, 2, [records[5].value])
    ledger.append(b"honest-after-dup", partition=2)
    last = list(backend.read(name, 2, 20, 21))[0]
    _produce_raw(kafka_bootstrap, name, 2, [last.value])

    # p3: DeleteRecords from the head
    p3 = list(backend.read(name, 3))
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    cut = p3[5].offset
    futures = admin.delete_records([TopicPartition(name, 3, cut)], request_timeout=15)
    for fut in futures.values():
        fut.result(timeout=20)

    _wait_size(ledger, 1, 21)
    report = ledger.verify()
    assert not report.ok
    for finding in report.findings:
        assert finding.ledger == name and finding.seq is not None

    f0 = _findings(report, 0)
    kinds0 = {f.kind for f in f0}
    assert "malformed" in kinds0, f0
    malformed = next(f for f in f0 if f.kind == "malformed")
    assert malformed.offset is not None and malformed.offset >= garbage_offset
    assert malformed.seq == 21
    inserted = [f for f in f0 if f.kind == "inserted"]
    assert inserted and inserted[0].seq == 21 and inserted[0].offset == malformed.offset + 1

    f1 = _findings(report, 1)
    assert [f.kind for f in f1] == ["foreign"], f1
    assert f1[0].seq == 20 and f1[0].offset is not None
    assert other_receipt.ledger in f1[0].detail

    f2 = _findings(report, 2)
    assert [f.kind for f in f2] == ["duplicate", "duplicate"], f2
    assert [f.seq for f in f2] == [5, 20]
    assert all(f.offset is not None and f.offset > records[-1].offset for f in f2)

    f3 = _findings(report, 3)
    assert f3 and f3[0].kind == "missing", f3
    assert f3[0].seq == 0 and f3[0].offset == cut
    assert "deleted" in f3[0].detail and "seq 0..4" in f3[0].detail

    # the writer with its cache keeps working on the truncated partition ...
    assert ledger.append(b"p3-after-delete", partition=3).seq == 20
    # ... but a fresh node cache cannot be rebuilt from a truncated topic: a clear error
    fresh = _backend(kafka_bootstrap, tmp_path / "fresh")
    with pytest.raises(BackendUnavailable, match="deleted"):
        fresh.head(name, 3)
    assert fresh.head(name, 2).size == 21  # the duplicates do not count
    for leaf_record in fresh.read(name, 2, 5, 6):
        entry = decode_record(leaf_record.value)
        assert entry.payload == b"p2-e5"
        assert hashlib.sha256(b"\x00" + entry.header_bytes).digest() == fresh.get_node(
            name, 2, 0, 5
        )
    fresh.close()
    backend.close()


def test_offsets_are_read_back_when_other_records_interleave(kafka_bootstrap, tmp_path):
    """Receipts carry true Kafka offsets even if another producer wrote between our records
    inside the transaction (the backend then reads the offsets back)."""
    from streamledger.backends.base import AppendBatch

    backend = _backend(kafka_bootstrap, tmp_path)
    name = _name("interleave")
    ledger = Ledger.create(backend, name, partitions=1)
    receipts = ledger.append_many([b"a", b"b", b"c"])
    _produce_raw(kafka_bootstrap, name, 0, [b"noise"])
    more = ledger.append_many([b"d", b"e"])
    records = [r.value for r in backend.read(name, 0)]
    batch = AppendBatch(0, records[:3], [None] * 3, [])
    first, last = receipts[0].offset, more[-1].offset
    located = backend._locate(name, 0, first, last, batch)
    assert located == [r.offset for r in receipts]
    stored = {r.offset: r.value for r in backend.scan(name, 0)}
    assert [stored[r.offset] for r in receipts + more] == records
    backend.close()


def test_append_atomically_writes_several_ledgers_in_one_transaction(kafka_bootstrap, tmp_path):
    from confluent_kafka import Consumer
    from confluent_kafka.admin import NewTopic

    from streamledger.ledger import append_atomically

    backend = _backend(kafka_bootstrap, tmp_path / "state")
    main_name, other_name, extra = _name("atom-main"), _name("atom-other"), _name("atom-extra")
    try:
        main = Ledger.create(backend, main_name)
        other = Ledger.create(backend, other_name, partitions=2)
        admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
        admin.create_topics([NewTopic(extra, 1, 1)])[extra].result(15)
        # the fence starts the first ledger's transactional writer before any head is read
        assert backend.fence(main_name) == f"streamledger-{main_name}"
        for round_ in range(3):
            receipts = append_atomically(
                [
                    (main, [AppendItem(f"m{round_}".encode(), b"k")]),
                    (other, [AppendItem(f"o{round_}-{i}".encode(), b"k%d" % i) for i in range(4)]),
                ],
                transaction={"extra_records": [(extra, 0, b"x", f"e{round_}".encode(), None)]},
            )
            assert [len(r) for r in receipts] == [1, 4]
            assert receipts[0][0].seq == round_
        # a second, independent Ledger on another backend moved the other ledger's head:
        # the next atomic append is rebuilt on the new head (WriteConflict, retried)
        side = _backend(kafka_bootstrap, tmp_path / "side")
        try:
            Ledger(side, other_name).append(b"from-elsewhere", partition=0)
        finally:
            side.close()
        backend.forget_heads(other_name)
        append_atomically([(main, [b"m-last"]), (other, [b"o-last"])])
        assert main.size(0) == 4
        assert other.size(0) + other.size(1) == 3 * 4 + 2
        for ledger in (main, other):
            report = Ledger(backend, ledger.name).verify()
            assert report.ok, report.findings
        c = Consumer(
            {
                "bootstrap.servers": kafka_bootstrap,
                "group.id": _name("g"),
                "isolation.level": "read_committed",
            }
        )
        try:
            c.assign([TopicPartition(extra, 0, 0)])
            got: list[bytes] = []
            deadline = time.monotonic() + 15
            while len(got) < 3 and time.monotonic() < deadline:
                got += [m.value() for m in c.consume(10, 0.5) if m.error() is None]
            assert got == [b"e0", b"e1", b"e2"]
        finally:
            c.close()
        with pytest.raises(ConfigError):
            append_atomically([(main, [b"a"]), (main, [b"b"])])
    finally:
        backend.close()
