"""VerifiedConsumer on a real broker: honest ledgers, resume, forged records, quarantine,
modified payloads and checkpoints that do not match."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from streamledger.backends.kafka import KafkaBackend
from streamledger.consumer import VerifiedConsumer, VerifiedEntry
from streamledger.core.checkpoint import Checkpoint, sign_checkpoint
from streamledger.core.entry import build_record, decode_record
from streamledger.core.note import SigningKey
from streamledger.core.verify import Finding, TrustPolicy
from streamledger.errors import TamperDetected
from streamledger.ledger import AppendItem, Ledger

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate("consumer-test-log")


@pytest.fixture(scope="module")
def trust(key: SigningKey) -> TrustPolicy:
    return TrustPolicy((key.verifier,))


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _ledger(bootstrap: str, tmp: Path, key: SigningKey, partitions: int = 2) -> Ledger:
    backend = KafkaBackend(bootstrap, state_dir=tmp / "backend", timeout=15)
    return Ledger.create(backend, _name("vc"), partitions=partitions, signer=key)


def _consumer(bootstrap: str, ledger: Ledger, trust: TrustPolicy, state: Path, **kw):
    kw.setdefault("group_id", _name("group"))
    kw.setdefault("checkpoint_interval", 0.2)
    return VerifiedConsumer(bootstrap, ledger.name, trust=trust, state_dir=state, **kw)


def _produce_raw(bootstrap: str, topic: str, partition: int, values: list[bytes]) -> list[int]:
    """Produce with a plain, non-transactional producer (what an attacker has); offsets."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": False})
    offsets: list[int] = []
    for value in values:
        producer.produce(
            topic, value, partition=partition, on_delivery=lambda e, m: offsets.append(m.offset())
        )
    assert producer.flush(15) == 0
    return offsets


def _by_partition(entries: list[VerifiedEntry]) -> dict[int, list[VerifiedEntry]]:
    out: dict[int, list[VerifiedEntry]] = {}
    for e in entries:
        out.setdefault(e.partition, []).append(e)
    return out


def test_honest_ledger_yields_every_entry_in_order(kafka_bootstrap, tmp_path, key, trust):
    ledger = _ledger(kafka_bootstrap, tmp_path, key)
    items = [AppendItem(f"pay-{i}".encode(), key=f"k{i % 7}".encode()) for i in range(100)]
    receipts = ledger.append_many(items[:60])
    ledger.checkpoint()
    receipts += ledger.append_many(items[60:])
    ledger.checkpoint()

    with _consumer(kafka_bootstrap, ledger, trust, tmp_path / "c") as c:
        got = list(c.entries(timeout=15, max_entries=100))
        assert c.poll(0.5) == []
        assert c.findings == []
        assert sum(c.checkpoints_verified.values()) == 4  # two per partition
        assert c.checked_sizes == {p: ledger.size(p) for p in range(2)}
    by_part = _by_partition(got)
    for p in range(2):
        expected = [(r.seq, r.offset, r.leaf_hash) for r in receipts if r.partition == p]
        assert [(e.seq, e.offset, e.leaf_hash) for e in by_part[p]] == expected
    payloads = {(r.partition, r.seq): item.payload for r, item in zip(receipts, items, strict=True)}
    assert all(e.payload == payloads[(e.partition, e.seq)] for e in got)
    assert all(e.ledger == ledger.name and e.producer for e in got)


def test_restart_resumes_from_the_stored_head(kafka_bootstrap, tmp_path, key, trust):
    ledger = _ledger(kafka_bootstrap, tmp_path, key)
    ledger.append_many([AppendItem(f"e{i}".encode(), key=f"k{i}".encode()) for i in range(200)])
    ledger.checkpoint()
    group, state = _name("group"), tmp_path / "c"

    with _consumer(kafka_bootstrap, ledger, trust, state, group_id=group) as c1:
        first = list(c1.entries(timeout=15, max_entries=80))
    assert len(first) == 80
    assert sorted(p.name for p in (state / group / ledger.name).iterdir()) == ["0.json", "1.json"]
    # more entries and a checkpoint while the consumer is away
    ledger.append_many([AppendItem(f"f{i}".encode(), key=f"k{i}".encode()) for i in range(30)])
    ledger.checkpoint()

    with _consumer(kafka_bootstrap, ledger, trust, state, group_id=group) as c2:
        rest = list(c2.entries(timeout=15, max_entries=150))
        # nothing was read twice: the first record fetched was the first one not delivered
        assert c2.records_seen == 150
        assert c2.findings == []
        assert sum(c2.checkpoints_verified.values()) >= 2  # the checkpoint of the new entries
    assert len(rest) == 150
    before, after = _by_partition(first), _by_partition(rest)
    for p in range(2):
        seqs = [e.seq for e in before.get(p, [])] + [e.seq for e in after.get(p, [])]
        assert seqs == list(range(ledger.size(p)))
        if before.get(p):
            assert after[p][0].seq == before[p][-1].seq + 1
            assert after[p][0].offset > before[p][-1].offset

    # the group's Kafka offsets follow the stored heads
    plain = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group})
    try:
        committed = plain.committed([TopicPartition(ledger.name, p) for p in range(2)], 10)
    finally:
        plain.close()
    for tp in committed:
        assert tp.offset == after[tp.partition][-1].offset + 1


def _forge_setup(bootstrap: str, tmp: Path, key: SigningKey):
    """p0: 10 honest entries, a forged seq 10, 5 more honest; p1: 10 honest entries, a
    foreign record and a duplicate, 2 more honest."""
    ledger = _ledger(bootstrap, tmp, key)
    ledger.append_many([f"a{i}".encode() for i in range(10)], partition=0)
    ledger.append_many([f"b{i}".encode() for i in range(10)], partition=1)
    forged, _ = build_record(
        ledger.name, 0, 10, 0, "mallory", "text/plain", b"", b"\x11" * 32, b"pay mallory"
    )
    forged_offset = _produce_raw(bootstrap, ledger.name, 0, [forged])[0]
    ledger.append_many([f"a{i}".encode() for i in range(10, 15)], partition=0)
    other = Ledger.create(ledger.backend, _name("other"), partitions=1, signer=key)
    other.append(b"from elsewhere")
    foreign = next(ledger.backend.read(other.name, 0, 0, 1)).value
    dup = next(ledger.backend.read(ledger.name, 1, 4, 5)).value
    bad_offsets = _produce_raw(bootstrap, ledger.name, 1, [foreign, dup])
    ledger.append_many([b"b10", b"b11"], partition=1)
    return ledger, forged, forged_offset, foreign, bad_offsets


def test_forged_record_raises_with_partition_seq_and_offset(kafka_bootstrap, tmp_path, key, trust):
    ledger, _, forged_offset, _, bad_offsets = _forge_setup(kafka_bootstrap, tmp_path, key)
    seen: list[Finding] = []
    raised: list[Finding] = []
    got: list[VerifiedEntry] = []
    with _consumer(kafka_bootstrap, ledger, trust, tmp_path / "c", on_finding=seen.append) as c:
        while len(c.stopped) < 2:  # each partition stops at its first bad record
            with pytest.raises(TamperDetected) as info:
                for entry in c.entries(timeout=15):
                    got.append(entry)
            raised += info.value.findings
        assert c.poll(0.5) == []
    assert seen == raised and all(isinstance(f, Finding) for f in raised)
    by_part = {f.partition: f for f in raised}
    f0, f1 = by_part[0], by_part[1]
    assert (f0.kind, f0.seq, f0.offset) == ("inserted", 10, forged_offset)
    assert (f1.kind, f1.seq, f1.offset) == ("foreign", 10, bad_offsets[0])
    # nothing after the bad record was yielded from its partition
    assert [e.seq for e in got if e.partition == 0] == list(range(10))
    assert [e.seq for e in got if e.partition == 1] == list(range(10))


def test_quarantine_skips_forged_foreign_and_duplicate_records(
    kafka_bootstrap, tmp_path, key, trust
):
    ledger, forged, forged_offset, foreign, bad_offsets = _forge_setup(
        kafka_bootstrap, tmp_path, key
    )
    seen: list[Finding] = []
    with _consumer(
        kafka_bootstrap,
        ledger,
        trust,
        tmp_path / "c",
        on_tamper="quarantine",
        on_finding=seen.append,
    ) as c:
        got = list(c.entries(timeout=15, max_entries=27))
        assert c.poll(0.5) == []
        assert c.stopped == {}
    by_part = _by_partition(got)
    assert [e.payload for e in by_part[0]] == [f"a{i}".encode() for i in range(15)]
    assert [e.payload for e in by_part[1]] == [f"b{i}".encode() for i in range(12)]
    assert sorted((f.partition, f.offset, f.kind, f.seq) for f in seen) == [
        (0, forged_offset, "inserted", 10),
        (1, bad_offsets[0], "foreign", 10),
        (1, bad_offsets[1], "duplicate", 4),
    ]

    # the quarantine topic holds the raw records with their findings
    q = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": _name("q"),
            "auto.offset.reset": "earliest",
        }
    )
    q.assign([TopicPartition(f"{ledger.name}.quarantine", 0, 0)])
    quarantined = []
    try:
        for _ in range(50):
            quarantined += [m for m in q.consume(10, 0.3) if m.error() is None]
            if len(quarantined) >= 3:
                break
    finally:
        q.close()
    values = {m.value(): json.loads(dict(m.headers())["streamledger.finding"]) for m in quarantined}
    assert set(values) == {forged, foreign, next(ledger.backend.read(ledger.name, 1, 4, 5)).value}
    assert values[forged]["kind"] == "inserted" and values[forged]["offset"] == forged_offset
    assert values[foreign]["kind"] == "foreign"


def test_modified_payload_is_caught(kafka_bootstrap, tmp_path, key, trust):
    ledger = _ledger(kafka_bootstrap, tmp_path, key, partitions=1)
    receipts = ledger.append_many([f"entry {i}".encode() for i in range(10)], partition=0)
    # entry 10 as the writer would make it, with its payload swapped in transit
    genuine, _ = build_record(
        ledger.name, 0, 10, 0, "writer", "text/plain", b"", receipts[-1].leaf_hash, b"pay 100"
    )
    header_len = len(decode_record(genuine).header_bytes)
    tampered = genuine[:header_len] + b"pay 999"
    offset = _produce_raw(kafka_bootstrap, ledger.name, 0, [tampered])[0]

    with _consumer(kafka_bootstrap, ledger, trust, tmp_path / "c") as c:
        got = []
        with pytest.raises(TamperDetected) as info:
            got.extend(c.entries(timeout=15))
    finding = info.value.findings[0]
    assert (finding.kind, finding.partition, finding.seq, finding.offset) == (
        "payload_modified",
        0,
        10,
        offset,
    )
    assert [e.seq for e in got] == list(range(10))

    seen: list[Finding] = []
    with _consumer(
        kafka_bootstrap,
        ledger,
        trust,
        tmp_path / "q",
        on_tamper="quarantine",
        on_finding=seen.append,
    ) as c:
        got = list(c.entries(timeout=3))
    assert [e.seq for e in got] == list(range(10))
    assert [(f.kind, f.seq, f.offset) for f in seen] == [("payload_modified", 10, offset)]


def test_checkpoint_that_does_not_match_is_reported(kafka_bootstrap, tmp_path, key, trust):
    ledger = _ledger(kafka_bootstrap, tmp_path, key, partitions=1)
    ledger.append_many([f"e{i}".encode() for i in range(10)], partition=0)
    origin = ledger.config.checkpoint_origin(0)
    state = tmp_path / "c"

    def publish_bad(size: int) -> None:
        note = sign_checkpoint(Checkpoint(origin, size, b"\x42" * 32), key)  # the trusted key
        ledger.backend.add_checkpoint(ledger.name, 0, size, note)

    with _consumer(kafka_bootstrap, ledger, trust, state) as c:
        assert len(list(c.entries(timeout=15, max_entries=10))) == 10
        ledger.checkpoint()  # a genuine checkpoint that arrives after the consumer passed it
        assert c.poll(1.0) == []
        assert c.checkpoints_verified[0] == 1
        ledger.append_many([f"e{i}".encode() for i in range(10, 20)], partition=0)
        assert len(list(c.entries(timeout=15, max_entries=10))) == 10
        publish_bad(15)  # late and wrong: compared by replaying the leaves since size 10
        with pytest.raises(TamperDetected) as info:
            for _ in range(20):
                c.poll(0.3)
    finding = info.value.findings[0]
    assert (finding.kind, finding.partition, finding.seq) == ("checkpoint_mismatch", 0, 14)
    assert finding.offset is not None and "checkpoint" in finding.evidence

    # a fresh consumer knows the bad checkpoint in advance: it stops before entry 14
    with _consumer(kafka_bootstrap, ledger, trust, tmp_path / "fresh") as c:
        got = []
        with pytest.raises(TamperDetected) as info:
            got.extend(c.entries(timeout=15))
    assert info.value.findings[0].kind == "checkpoint_mismatch"
    assert info.value.findings[0].seq == 14
    assert [e.seq for e in got] == list(range(14))


def test_at_least_once_and_lost_state(kafka_bootstrap, tmp_path, key, trust):
    ledger = _ledger(kafka_bootstrap, tmp_path, key, partitions=1)
    ledger.append_many([f"e{i}".encode() for i in range(20)], partition=0)
    group, state = _name("group"), tmp_path / "c"

    # the application fails while handling seq 4: seq 4 is delivered again after a restart
    with (
        pytest.raises(RuntimeError),
        _consumer(kafka_bootstrap, ledger, trust, state, group_id=group) as c,
    ):
        for entry in c.entries(timeout=15):
            if entry.seq == 4:
                raise RuntimeError("application crashed")
    with _consumer(kafka_bootstrap, ledger, trust, state, group_id=group) as c:
        assert [e.seq for e in c.entries(timeout=15, max_entries=6)] == list(range(4, 10))

    # the state directory is lost: the consumer verifies from the start again but yields
    # only what the group has not been given yet
    with _consumer(kafka_bootstrap, ledger, trust, tmp_path / "new", group_id=group) as c:
        assert [e.seq for e in c.entries(timeout=15, max_entries=10)] == list(range(10, 20))
        assert c.records_seen == 20


def test_watermarks_and_group_metadata_for_a_transactional_pipeline(
    kafka_bootstrap, tmp_path, key, trust
):
    ledger = _ledger(kafka_bootstrap, tmp_path, key)
    ledger.append_many([AppendItem(f"w-{i}".encode(), key=f"k{i}".encode()) for i in range(20)])
    with _consumer(kafka_bootstrap, ledger, trust, tmp_path / "c") as c:
        got = list(c.entries(timeout=15, max_entries=20))
        assert len(got) == 20
        for p in c.assignment():
            last = max(e.offset for e in got if e.partition == p)
            low, high = c.watermarks(p)
            assert low == 0 and high - (last + 1) <= 1  # at most the commit marker
            cached_low, cached_high = c.watermarks(p, cached=True)
            assert cached_high in (-1001, high)  # -1001: not known from a fetch response
        assert c.group_metadata() is not None


def test_save_interval_spaces_out_head_files_and_close_still_saves(
    kafka_bootstrap, tmp_path, key, trust
):
    ledger = _ledger(kafka_bootstrap, tmp_path, key, partitions=1)
    ledger.append_many([f"s-{i}".encode() for i in range(10)], partition=0)
    state = tmp_path / "c"
    with _consumer(kafka_bootstrap, ledger, trust, state, save_interval=3600) as c:
        assert len(c.poll(15, max_entries=5)) == 5
        assert len(c.poll(15, max_entries=5)) == 5  # acknowledges the first five
        c.poll(0.5)  # the first save happened before any entry; none since
        heads = list(state.rglob("0.json"))
        saved = json.loads(heads[0].read_text())["seq"] if heads else 0
        assert saved == 0
    heads = list(state.rglob("0.json"))
    assert json.loads(heads[0].read_text())["seq"] == 10  # close() saved


def test_poll_with_linger_collects_entries_that_arrive_after_the_first(
    kafka_bootstrap, tmp_path, key, trust
):
    import threading

    ledger = _ledger(kafka_bootstrap, tmp_path, key, partitions=1)
    ledger.append_many([AppendItem(f"a-{i}".encode()) for i in range(5)])
    with _consumer(kafka_bootstrap, ledger, trust, tmp_path / "c") as c:
        first = c.poll(15)
        assert [e.payload for e in first] == [f"a-{i}".encode() for i in range(5)]
        ledger.append_many([AppendItem(f"b-{i}".encode()) for i in range(3)])
        later = threading.Timer(
            0.5, lambda: ledger.append_many([AppendItem(f"c-{i}".encode()) for i in range(4)])
        )
        # without a linger, poll returns what has arrived: b only
        without = []
        while len(without) < 3:
            without += c.poll(15, linger=0)
        assert [e.payload for e in without] == [f"b-{i}".encode() for i in range(3)]
        ledger.append_many([AppendItem(f"d-{i}".encode()) for i in range(2)])
        later.start()
        # with one, it waits for the entries written half a second after the first arrived
        got = c.poll(15, max_entries=6, linger=30)
        later.join()
        assert [e.payload for e in got] == [
            *(f"d-{i}".encode() for i in range(2)),
            *(f"c-{i}".encode() for i in range(4)),
        ]
        assert [e.seq for e in got] == list(range(8, 14))
        assert c.findings == []


def test_poll_checks_runs_natively_with_the_same_result(
    kafka_bootstrap, tmp_path, key, trust, monkeypatch
):
    """poll() checks runs of records with the native accelerator; around forged, foreign,
    duplicated and modified records and signed checkpoints it delivers and reports exactly
    what the record-by-record path does."""
    from streamledger.core import _accel

    real = _accel.native
    if real is None:
        pytest.skip("the native accelerator is not built")
    ledger, _, _, _, _ = _forge_setup(kafka_bootstrap, tmp_path, key)
    for r in range(3):  # runs between signed checkpoints
        ledger.append_many([f"c{r}-{i}".encode() for i in range(40)], partition=0)
        ledger.checkpoint()
    head = ledger.append_many([b"b12", b"b13"], partition=1)[-1]
    genuine, _ = build_record(
        ledger.name, 1, head.seq + 1, 0, "writer", "text/plain", b"", head.leaf_hash, b"pay 1"
    )
    cut = len(decode_record(genuine).header_bytes)
    _produce_raw(kafka_bootstrap, ledger.name, 1, [genuine[:cut] + b"pay 9"])
    ledger.append_many([f"d{i}".encode() for i in range(30)], partition=1)

    def consume(tag: str):
        seen: list[Finding] = []
        got: list[VerifiedEntry] = []
        with _consumer(
            kafka_bootstrap,
            ledger,
            trust,
            tmp_path / tag,
            on_tamper="quarantine",
            on_finding=seen.append,
            quarantine_topic=f"{ledger.name}.{tag}",
        ) as c:
            empty = 0
            while empty < 5:
                batch = c.poll(1.0, max_entries=50)
                got += batch
                empty = 0 if batch or not got else empty + 1
            # the order within a partition is the log's; across partitions it is the fetches'
            return (
                sorted(
                    ((e.partition, e.seq, e.offset, e.payload, e.leaf_hash, e.header) for e in got),
                    key=lambda t: t[:2],
                ),
                sorted((f.partition, f.offset, f.kind, f.seq) for f in seen),
                dict(c.checkpoints_verified),
                c.checked_sizes,
                c.stopped,
            )

    runs: list[int] = []

    class Spy:
        def __getattr__(self, name: str):
            return getattr(real, name)

        def verify_run(self, records, *args):
            runs.append(len(records))
            return real.verify_run(records, *args)

    monkeypatch.setattr(_accel, "native", Spy())
    fast = consume("fast")
    monkeypatch.setattr(_accel, "native", None)
    slow = consume("slow")
    assert runs and max(runs) > 10  # the runs did go through the native code
    assert fast == slow
    delivered, findings = fast[0], fast[1]
    assert len(delivered) > 140 and {f[2] for f in findings} >= {
        "inserted",
        "foreign",
        "duplicate",
        "payload_modified",
    }
    assert sum(fast[2].values()) >= 3  # signed checkpoints compared along the way
