"""The simulator: deterministic, every pattern labelled with events that fit it, honest
look-alikes present and unlabelled, and output to a real SQLite ledger that verifies."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from streamledger.fraud import events as ev
from streamledger.fraud.events import Event, Label, parse_event
from streamledger.fraud.simulate import (
    HONEST_TRAVEL_KMH,
    IMPOSSIBLE_TRAVEL_MIN_KM,
    LOW_CAP_ASSETS,
    MAX_JITTER_MS,
    REPORTING_THRESHOLD_USD,
    SimConfig,
    Simulation,
    generate,
)

MINUTE = 60_000
CONFIG = SimConfig(customers=300, duration_s=3 * 3600, rate=3, seed=11, incident_rate=3)


@pytest.fixture(scope="module")
def run() -> tuple[list[Event], list[Label], list[dict]]:
    return generate(CONFIG)


@pytest.fixture(scope="module")
def by_id(run) -> dict[str, Event]:
    return {e.event_id: e for e in run[0]}


@pytest.fixture(scope="module")
def by_customer(run) -> dict[str, list[Event]]:
    out: dict[str, list[Event]] = defaultdict(list)
    for e in sorted(run[0], key=lambda e: e.ts_ms):
        out[e.customer_id].append(e)
    return out


def test_deterministic_for_a_seed() -> None:
    small = SimConfig(customers=80, duration_s=1800, rate=2, seed=5)
    a, la, _ = generate(small)
    b, lb, _ = generate(small)
    assert [e.to_json() for e in a] == [e.to_json() for e in b]
    assert [label.to_json() for label in la] == [label.to_json() for label in lb]
    c, _, _ = generate(SimConfig(customers=80, duration_s=1800, rate=2, seed=6))
    assert [e.to_json() for e in a] != [e.to_json() for e in c]


def test_events_follow_the_contract(run) -> None:
    events = run[0]
    assert len({e.event_id for e in events}) == len(events)
    labelled = {i for label in run[1] for i in label.event_ids}
    for i, e in enumerate(events):
        if i % 4 == 0 or e.event_id in labelled:
            assert parse_event(e.to_json()) == e
    assert set(Counter(e.type for e in events)) == set(ev.EVENT_TYPES)
    # about the asked rate (incidents add a little)
    expected = CONFIG.rate * CONFIG.duration_s
    assert 0.7 * expected < len(events) < 1.4 * expected


def test_arrival_order_with_small_jitter(run) -> None:
    events = run[0]
    latest, late = 0, 0
    for e in events:
        if e.ts_ms < latest:
            late += 1
            assert latest - e.ts_ms <= MAX_JITTER_MS
        latest = max(latest, e.ts_ms)
    assert 0 < late < len(events) * 0.2


def test_every_pattern_is_labelled(run, by_id) -> None:
    labels = run[1]
    assert {label.pattern for label in labels} == set(ev.PATTERNS)
    assert len({label.incident_id for label in labels}) == len(labels)
    all_customers = [c for label in labels for c in label.customer_ids]
    assert len(all_customers) == len(set(all_customers)), "a customer in two incidents"
    for label in labels:
        assert label.event_ids and label.description
        assert Label.from_json(label.to_json()) == label
        events = [by_id[i] for i in label.event_ids]  # every event id exists
        assert {e.customer_id for e in events} <= set(label.customer_ids)
        assert min(e.ts_ms for e in events) == label.start_ts_ms
        assert max(e.ts_ms for e in events) == label.end_ts_ms
        assert "incident" not in events[0].to_json().decode()


def _fits(label: Label, events: list[Event], history: dict[str, list[Event]]) -> None:
    types = Counter(e.type for e in events)
    span = events[-1].ts_ms - events[0].ts_ms
    p = label.pattern
    if p == ev.ACCOUNT_TAKEOVER:
        login = events[0]
        assert login.type == ev.LOGIN
        before = [e for e in history[login.customer_id] if e.ts_ms < login.ts_ms]
        assert before, "the victim has history before the takeover"
        assert login.device_id not in {e.device_id for e in before}
        assert login.country not in {e.country for e in before}
        assert types[ev.PASSWORD_RESET] + types[ev.API_KEY_CREATED] >= 1
        added = [e for e in events if e.type == ev.WITHDRAWAL_ADDRESS_ADDED]
        outs = [e for e in events if e.type == ev.WITHDRAWAL]
        assert len(added) == 1 and outs and all(e.address == added[0].address for e in outs)
        assert all(e.device_id == login.device_id for e in events)
        assert span <= 30 * MINUTE
    elif p == ev.IMPOSSIBLE_TRAVEL:
        assert [e.type for e in events] == [ev.LOGIN, ev.LOGIN]
        a, b = events
        km = ev.country_distance_km(a.country, b.country)
        assert km >= IMPOSSIBLE_TRAVEL_MIN_KM and span <= 45 * MINUTE
    elif p == ev.WITHDRAWAL_VELOCITY:
        assert set(types) == {ev.WITHDRAWAL} and len(events) >= 6 and span <= 15 * MINUTE
    elif p == ev.WASH_TRADING:
        a, b = label.customer_ids
        trades = [e for e in events if e.type == ev.TRADE]
        assert len({e.asset for e in events}) == 1 and len(trades) >= 10
        for t in trades:
            assert {t.customer_id, t.counterparty_id} == {a, b}
        assert {(t.customer_id, t.side) for t in trades} == {
            (a, ev.BUY), (a, ev.SELL), (b, ev.BUY), (b, ev.SELL)
        }  # fmt: skip
    elif p == ev.PUMP_AND_DUMP:
        assert len(label.customer_ids) >= 4 and set(types) == {ev.TRADE}
        (asset,) = {e.asset for e in events}
        assert asset in LOW_CAP_ASSETS
        for c in label.customer_ids:
            mine = [e for e in events if e.customer_id == c]
            buys = [e.ts_ms for e in mine if e.side == ev.BUY]
            sells = [e.ts_ms for e in mine if e.side == ev.SELL]
            assert buys and sells and max(buys) < min(sells)
        first_buy = min(e.price_usd for e in events if e.side == ev.BUY)
        assert max(e.price_usd for e in events) > 1.3 * first_buy
    elif p == ev.STRUCTURING:
        assert set(types) == {ev.DEPOSIT} and len(events) >= 5
        assert all(0.85 * REPORTING_THRESHOLD_USD < e.amount_usd < REPORTING_THRESHOLD_USD
                   for e in events)  # fmt: skip
    elif p == ev.MULE_PASSTHROUGH:
        deposits = [e for e in events if e.type == ev.DEPOSIT]
        outs = [e for e in events if e.type == ev.WITHDRAWAL]
        assert len(deposits) == len(outs) >= 1
        for d, w in zip(deposits, outs, strict=True):
            assert d.asset == w.asset and 0.95 * d.quantity <= w.quantity <= d.quantity
            assert 0 < w.ts_ms - d.ts_ms <= 20 * MINUTE
            added = [e for e in events if e.type == ev.WITHDRAWAL_ADDRESS_ADDED]
            assert w.address in {e.address for e in added}
    elif p == ev.ANOMALY:
        assert set(types) == {ev.ORDER} and len(events) >= 25 and span <= 3 * MINUTE
        assert len({e.asset for e in events}) == 1
    else:  # pragma: no cover
        raise AssertionError(p)


def test_labelled_events_fit_their_pattern(run, by_id, by_customer) -> None:
    for label in run[1]:
        events = sorted((by_id[i] for i in label.event_ids), key=lambda e: e.ts_ms)
        _fits(label, events, by_customer)


def test_honest_lookalikes_exist_and_are_not_labelled(run, by_id, by_customer) -> None:
    events, labels, lookalikes = run
    labelled_ids = {i for label in labels for i in label.event_ids}
    labelled_customers = {c for label in labels for c in label.customer_ids}
    kinds = Counter(item["kind"] for item in lookalikes)
    assert kinds["traveller"] >= 1 and kinds["market_maker"] >= 2
    assert kinds["large_withdrawal"] == 1
    for item in lookalikes:
        assert item["customer_id"] not in labelled_customers
        assert not set(item.get("event_ids", ())) & labelled_ids
        if item["kind"] == "traveller":
            a, b = (by_id[i] for i in item["event_ids"])
            assert a.country != b.country and b.ts_ms - a.ts_ms >= 30 * MINUTE
        elif item["kind"] == "large_withdrawal":
            w = by_id[item["event_ids"][1]]
            assert w.type == ev.WITHDRAWAL and w.amount_usd >= 50_000
    # a market maker's volume dwarfs a customer's
    trades = Counter(e.customer_id for e in events if e.type == ev.TRADE)
    median = statistics.median(n for c, n in trades.items() if not c.startswith("mm-"))
    for item in lookalikes:
        if item["kind"] == "market_maker":
            assert trades[item["customer_id"]] > 50 * median


def test_honest_country_changes_are_plausible(run, by_customer) -> None:
    """Outside impossible-travel incidents, no customer moves faster than a flight."""
    travel_victims = {c for label in run[1] if label.pattern == ev.IMPOSSIBLE_TRAVEL
                      for c in label.customer_ids}  # fmt: skip
    changes = 0
    for customer, events in by_customer.items():
        if customer in travel_victims:
            continue
        located = [e for e in events if e.country]
        for a, b in zip(located, located[1:], strict=False):
            if a.country != b.country:
                changes += 1
                hours = (b.ts_ms - a.ts_ms) / 3_600_000
                km = ev.country_distance_km(a.country, b.country)
                assert km / hours <= HONEST_TRAVEL_KMH * 1.2, (customer, a, b)
    assert changes >= 2


def test_a_short_run_skips_what_does_not_fit() -> None:
    warnings: list[str] = []
    sim = Simulation(SimConfig(customers=60, duration_s=600, rate=2, seed=1), warn=warnings.append)
    list(sim.events())
    assert warnings and all("no room" in w for w in warnings)
    assert {label.pattern for label in sim.labels} < set(ev.PATTERNS)


def test_cli_writes_a_ledger_that_verifies(tmp_path: Path) -> None:
    from streamledger.backends.sqlite import SQLiteBackend
    from streamledger.cli.main import main
    from streamledger.ledger import Ledger

    labels, looks = tmp_path / "labels.jsonl", tmp_path / "look.jsonl"
    args = ["--data-dir", str(tmp_path / "data"), "fraud", "simulate", "--customers", "100",
            "--hours", "1", "--rate", "1.5", "--seed", "2", "--ledger", ev.INPUT_LEDGER,
            "--partitions", "4", "--labels", str(labels), "--lookalikes", str(looks),
            "--quiet"]  # fmt: skip
    assert main(args) == 0
    backend = SQLiteBackend(tmp_path / "data")
    try:
        ledger = Ledger(backend, ev.INPUT_LEDGER)
        assert ledger.verify(None).ok
        entries = [(p, e) for p in range(4) for e in ledger.read(p)]
        assert 0.7 * 1.5 * 3600 < len(entries) < 1.4 * 1.5 * 3600
        for partition, entry in entries:
            event = parse_event(entry.payload)
            assert ledger.choose_partition(event.customer_id.encode()) == partition
        # per customer, entries are in arrival order within its partition
        expected, _, _ = generate(SimConfig(customers=100, duration_s=3600, rate=1.5, seed=2))
        wanted = {e.event_id for e in expected}
        assert {parse_event(e.payload).event_id for _, e in entries} == wanted
    finally:
        backend.close()
    for line in labels.read_text().splitlines():
        Label.from_json(line)
    assert any(json.loads(x)["kind"] == "market_maker" for x in looks.read_text().splitlines())


def test_cli_jsonl_out(tmp_path: Path) -> None:
    out, labels = tmp_path / "events.jsonl", tmp_path / "labels.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "streamledger", "fraud", "simulate", "--customers", "120",
         "--events", "8000", "--rate", "4", "--seed", "3", "--out", str(out),
         "--labels", str(labels)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "incidents" in result.stderr
    lines = out.read_bytes().splitlines()
    assert 5_600 < len(lines) < 11_200
    ids = {parse_event(line).event_id for line in lines}
    parsed = [Label.from_json(x) for x in labels.read_text().splitlines()]
    assert parsed and all(p.pattern in ev.PATTERNS for p in parsed)
    assert all(set(p.event_ids) <= ids for p in parsed)
