"""The pipeline end to end on the embedded backend (a real SQLite store)."""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import closing

from streamledger.backends.sqlite import DB_NAME, SQLiteBackend
from streamledger.core.bundle import verify_bundle
from streamledger.core.entry import decode_record
from streamledger.core.note import SigningKey
from streamledger.fraud.detectors import Detectors
from streamledger.fraud.events import Alert, Event
from streamledger.fraud.pipeline import EmbeddedRunner, Pipeline, export_alert_evidence
from streamledger.ledger import AppendItem, Ledger

T0 = 1_714_550_400_000
MIN = 60_000
IN = "logs-customer-trading"


def ev(i: int, minute: float, customer: str, type: str, **fields) -> bytes:
    return Event.make(
        event_id=f"e{i}", ts_ms=int(T0 + minute * MIN), customer_id=customer, type=type, **fields
    ).to_json()


def stream() -> list[bytes]:
    out = [
        ev(0, 0, "alice", "login", ip="1.1.1.1", country="DE", device_id="a1"),
        ev(1, 1, "bob", "login", ip="2.2.2.2", country="FR", device_id="b1"),
        ev(2, 20, "alice", "login", ip="3.3.3.3", country="JP", device_id="a9"),  # travel
        b'{"event_id": "bad1", "ts": "yesterday", "customer_id": "x", "type": "login"}',
        b"\xff\xfe not json",
        ev(3, 30, "carol", "deposit", asset="USDT", amount_usd=9_500, address="s"),
        ev(4, 40, "carol", "deposit", asset="USDT", amount_usd=9_700, address="s"),
        ev(5, 50, "carol", "deposit", asset="USDT", amount_usd=9_100, address="s"),
        ev(8, 60, "carol", "deposit", asset="USDT", amount_usd=9_300, address="s"),
        ev(9, 70, "carol", "deposit", asset="USDT", amount_usd=9_600, address="s"),  # struct.
        ev(6, 160, "bob", "login", ip="2.2.2.2", country="FR", device_id="b1"),
        ev(7, 170, "bob", "login", ip="9.9.9.9", country="BE", device_id="b1"),  # tampered
    ]
    return out


def setup(tmp_path, events=None):
    backend = SQLiteBackend(tmp_path / "data")
    signer = SigningKey.generate("example.com/fraud-input")
    ledger = Ledger.create(backend, IN, partitions=2, signer=signer)
    items = []
    for raw in events or stream():
        try:
            key = json.loads(raw)["customer_id"].encode()
        except (ValueError, KeyError):
            key = b"junk"
        items.append(AppendItem(raw, key, "application/json"))
    receipts = ledger.append_many(items)
    ledger.checkpoint()
    return backend, ledger, receipts


def run(tmp_path, backend, detectors=None, batch_size=3):
    if detectors is None:
        detectors = Detectors(ledger=IN)
    pipeline = Pipeline(detectors, input_ledger=IN)
    runner = EmbeddedRunner(
        backend,
        pipeline,
        suspicious="suspicious-events",
        alerts="fraud-alert-events",
        rejects="fraud-alert-events.rejects",
        state_path=tmp_path / "data" / "fraud-state" / "g.db",
        batch_size=batch_size,
    )
    stats = runner.run(until_idle=0, poll=0)
    return stats


def alerts_of(backend, name="fraud-alert-events"):
    led = Ledger(backend, name)
    return [json.loads(e.payload) for p in range(led.partitions) for e in led.read(p)]


def test_events_in_alerts_out_with_evidence_and_an_exportable_bundle(tmp_path):
    backend, ledger, receipts = setup(tmp_path)
    stats = run(tmp_path, backend)
    alerts = {a["pattern"]: a for a in alerts_of(backend)}
    assert set(alerts) == {"impossible_travel", "structuring"}
    where = {(r.partition, r.seq) for r in receipts}
    travel = alerts["impossible_travel"]
    assert travel["customer_ids"] == ["alice"]
    evidence = [(e["partition"], e["seq"]) for e in travel["evidence"]]
    assert evidence == sorted([(receipts[0].partition, receipts[0].seq),
                               (receipts[2].partition, receipts[2].seq)])  # fmt: skip
    assert set(evidence) <= where
    struct = alerts["structuring"]
    assert {(e["partition"], e["seq"]) for e in struct["evidence"]} == {
        (r.partition, r.seq) for r in receipts[5:10]
    }
    # suspicious events point at the same alerts
    susp = alerts_of(backend, "suspicious-events")
    assert {s["alert_id"] for s in susp} == {a["alert_id"] for a in alerts.values()}
    # malformed events went to the rejects ledger with a reason; nothing stopped
    rejects = alerts_of(backend, "fraud-alert-events.rejects")
    assert sorted(r["code"] for r in rejects) == ["bad_ts", "not_utf8"]
    assert all(r["reason"] and "source" in r for r in rejects)
    assert stats.events == 10 and stats.rejects == 2

    # the travel alert's evidence as audit bundles, verified offline with the log key only
    bundles = export_alert_evidence(backend, Alert.from_dict(travel))
    assert bundles
    for (name, part), text in bundles.items():
        report = verify_bundle(text, [ledger.signer.verifier])
        assert name == IN and report.partition == part
        entries = json.loads(text)["entries"]
        assert {(part, e["seq"]) for e in entries} <= set(evidence)

    # a second run over the same input: nothing new, nothing duplicated
    run(tmp_path, backend)
    assert len(alerts_of(backend)) == 2


def _tamper_payload(tmp_path, ledger_name, partition, seq):
    with closing(sqlite3.connect(tmp_path / "data" / DB_NAME)) as conn, conn:
        (lid,) = conn.execute("SELECT id FROM ledgers WHERE name=?", (ledger_name,)).fetchone()
        (record,) = conn.execute(
            "SELECT record FROM entries WHERE ledger_id=? AND partition=? AND position=?",
            (lid, partition, seq),
        ).fetchone()
        header = len(decode_record(bytes(record)).header_bytes)
        # bob's login from BE becomes one from JP... by editing bytes after the header
        changed = bytes(record)[:header] + bytes(record)[header:].replace(b'"BE"', b'"JP"')
        assert changed != bytes(record)
        conn.execute(
            "UPDATE entries SET record=? WHERE ledger_id=? AND partition=? AND position=?",
            (changed, lid, partition, seq),
        )


def test_a_tampered_input_entry_raises_an_integrity_alert_and_is_not_scored(tmp_path):
    backend, ledger, receipts = setup(tmp_path)
    tampered = receipts[11]
    _tamper_payload(tmp_path, IN, tampered.partition, tampered.seq)
    stats = run(tmp_path, backend)
    alerts = alerts_of(backend)
    integrity = [a for a in alerts if a["pattern"] == "integrity"]
    assert len(integrity) == 1 and stats.integrity == 1
    assert integrity[0]["evidence"] == [
        {"ledger": IN, "partition": tampered.partition, "seq": tampered.seq}
    ]
    assert "payload_modified" in integrity[0]["reason"]
    # bob's forged login (FR -> JP in 10 minutes) was not scored: no travel alert for bob
    assert not any(
        a["pattern"] == "impossible_travel" and "bob" in a["customer_ids"] for a in alerts
    )
    assert stats.events == 9


def test_crash_between_outputs_and_state_is_repaired_without_duplicates(tmp_path):
    backend, ledger, receipts = setup(tmp_path)
    run(tmp_path, backend)
    before = alerts_of(backend)
    # forget the stored state as if the process died right after appending its outputs
    state = tmp_path / "data" / "fraud-state" / "g.db"
    with closing(sqlite3.connect(state)) as conn, conn:
        conn.execute("DELETE FROM kv")
    run(tmp_path, backend)
    assert alerts_of(backend) == before


def test_a_simulated_stream_through_the_pipeline_is_detected(tmp_path):
    from streamledger.fraud.evaluate import evaluate
    from streamledger.fraud.simulate import SimConfig, generate

    events, labels, _ = generate(
        SimConfig(customers=300, duration_s=2 * 3600, rate=3, seed=11, incident_rate=8)
    )
    backend = SQLiteBackend(tmp_path / "data")
    ledger = Ledger.create(backend, IN, partitions=4)
    ledger.append_many(
        [AppendItem(e.to_json(), e.customer_id.encode(), "application/json") for e in events]
    )
    stats = run(tmp_path, backend)
    assert stats.rejects == 0 and stats.events == len(events)
    alerts = [Alert.from_dict(a) for a in alerts_of(backend)]
    report = evaluate(alerts, labels)
    scored = {p: s for p, s in report.per_pattern.items() if s.incidents}
    assert len(scored) >= 6, scored
    for pattern, score in scored.items():
        if pattern == "anomaly":
            # the model needs a dense market for its reference prices: a floor of one here
            assert score.detected >= 1, score.to_json()
            continue
        assert score.recall >= 0.7, (pattern, score.to_json())
        assert score.precision >= 0.7, (pattern, score.to_json())
    assert report.repeated_ids == 0


def test_realtime_load_paces_events_and_stamps_them_with_the_wall_clock():
    import time

    from streamledger.backends.memory import MemoryBackend
    from streamledger.fraud.events import parse_event
    from streamledger.fraud.realtime import load

    ledger = Ledger.create(MemoryBackend(), "rt-input", partitions=3)
    before = time.time_ns() // 1_000_000
    stats = load(ledger, 400, 2.0, customers=100, sim_hours=3)
    after = time.time_ns() // 1_000_000
    assert 0 < stats.produced <= 800 and stats.batches > 1
    events = [parse_event(e.payload) for p in range(3) for e in ledger.read(p)]
    assert len(events) == stats.produced
    assert all(before <= e.ts_ms <= after for e in events)
    assert len({e.event_id for e in events}) == len(events)
    for label in stats.labels:  # incidents produced completely, in this run's time
        assert before <= label.start_ts_ms <= label.end_ts_ms <= after
    assert stats.to_json()["produced"] == stats.produced


class _Recording(Detectors):
    """Real detectors that also note the event times in the order they are scored."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.seen: list[int] = []

    def process(self, event, where):
        self.seen.append(event.ts_ms)
        return super().process(event, where)


def test_each_step_scores_every_partitions_run_in_event_time_order(tmp_path):
    # Customers hash to both partitions; a partition's run is read whole before the next
    # partition's, so without ordering partition 1's early events would be scored after
    # partition 0's late ones (and "the latest trade" of an asset would be wrong).
    events = [
        ev(i, minute=i, customer=f"c{i % 7}", type="login", ip="1.1.1.1", country="DE",
           device_id=f"d{i % 7}")
        for i in range(40)
    ]  # fmt: skip
    backend, ledger, receipts = setup(tmp_path, events)
    assert {r.partition for r in receipts} == {0, 1}
    detectors = _Recording(ledger=IN)
    run(tmp_path, backend, detectors, batch_size=100)
    assert len(detectors.seen) == 40
    assert detectors.seen == sorted(detectors.seen)


def test_steps_follow_append_time_when_one_partition_is_much_busier(tmp_path):
    # A busy partition's batch_size entries span a short time, a quiet one's a long time;
    # reading equal counts per step would score the quiet partition's later events before
    # the busy partition's earlier ones. Steps merge the partitions by append time instead.
    from streamledger.core.partitioner import partition_for_key

    names = [f"c{i}" for i in range(20)]
    busy = next(n for n in names if partition_for_key(n.encode(), 2) == 0)
    quiet = [n for n in names if partition_for_key(n.encode(), 2) == 1][:3]
    backend = SQLiteBackend(tmp_path / "data")
    ledger = Ledger.create(backend, IN, partitions=2)
    i = 0
    for block in range(12):  # appended in 12 calls, each with its own append time
        items = []
        for k in range(5):
            who = quiet[block % 3] if k == 0 else busy
            raw = ev(i, minute=i, customer=who, type="login", ip="1.1.1.1", country="DE",
                     device_id=who)  # fmt: skip
            items.append(AppendItem(raw, who.encode(), "application/json"))
            i += 1
        ledger.append_many(items)
        time.sleep(0.003)
    detectors = _Recording(ledger=IN)
    run(tmp_path, backend, detectors, batch_size=4)
    assert len(detectors.seen) == 60
    # out of order by at most one append call's span (5 events, 5 minutes here)
    late = max(max(detectors.seen[:k]) - t for k, t in enumerate(detectors.seen) if k > 0)
    assert late <= 5 * MIN, late / MIN
