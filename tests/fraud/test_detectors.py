"""Each rule on hand-built event sequences; honest look-alikes do not alert."""

from __future__ import annotations

import itertools

import pytest

from streamledger.errors import ConfigError
from streamledger.fraud.detectors import Detectors, load_thresholds
from streamledger.fraud.events import Event, Evidence
from streamledger.fraud.windows import Late

T0 = 1_714_550_400_000  # 2024-05-01T08:00:00Z
MIN = 60_000
HOUR = 3_600_000


class Stream:
    """Feeds events to a Detectors instance, numbering input entries like a ledger."""

    def __init__(self, **kwargs) -> None:
        self.det = Detectors(**kwargs)
        self.seq = itertools.count()
        self.ids = itertools.count()
        self.found = []

    def __call__(self, minute: float, customer: str, type: str, partition: int = 0, **fields):
        seq = next(self.seq)
        event = Event.make(
            event_id=f"e{next(self.ids)}",
            ts_ms=int(T0 + minute * MIN),
            customer_id=customer,
            type=type,
            **fields,
        )
        out = self.det.process(event, Evidence("logs-customer-trading", partition, seq))
        if not isinstance(out, Late):
            self.found += out
        return out

    def login(self, minute, customer, country="DE", device="d1"):
        return self(minute, customer, "login", ip="10.0.0.1", country=country, device_id=device)

    def patterns(self):
        return [d.pattern for d in self.found]


def warm(s: Stream, customer: str, n: int = 3, country="DE", device="d1") -> None:
    for i in range(n):
        s.login(i - 600, customer, country, device)


def test_account_takeover():
    s = Stream()
    warm(s, "c1")
    s(-500, "c1", "withdrawal", asset="BTC", amount_usd=100, address="own-wallet")
    s.login(0, "c1", country="NG", device="evil")
    s(5, "c1", "password_reset")
    s(7, "c1", "withdrawal_address_added", address="thief")
    s(9, "c1", "withdrawal", asset="BTC", amount_usd=20_000, address="thief")
    s(11, "c1", "withdrawal", asset="ETH", amount_usd=5_000, address="thief")
    assert s.patterns() == ["account_takeover"]
    d = s.found[0]
    assert d.customer_ids == ["c1"] and d.score >= 0.8
    # the new-device login and the two changes: detected before any money left
    assert [e.seq for e in d.evidence] == [4, 5, 6]
    alert = d.to_alert(T0 + 10 * MIN)
    assert alert.pattern == "account_takeover" and "new device" in alert.reason


def test_new_phone_at_home_with_a_usual_withdrawal_is_not_takeover():
    s = Stream()
    warm(s, "c1")
    s(-500, "c1", "withdrawal", asset="BTC", amount_usd=100, address="own-wallet")
    s.login(0, "c1", device="new-phone")
    s(5, "c1", "withdrawal", asset="BTC", amount_usd=200, address="own-wallet")
    assert s.found == []


def test_impossible_travel_and_a_traveller_with_a_long_gap():
    s = Stream()
    s.login(0, "c1", country="DE")
    s.login(30, "c1", country="JP")  # 8,900 km in 30 minutes
    assert s.patterns() == ["impossible_travel"]
    assert [e.seq for e in s.found[0].evidence] == [0, 1]

    honest = Stream()
    honest.login(0, "t1", country="DE")
    honest.login(14 * 60, "t1", country="JP")  # 14 hours later: a flight
    honest.login(30 * 60, "t1", country="US")
    assert honest.found == []


def test_out_of_order_login_within_grace_is_compared_with_its_neighbours():
    s = Stream(grace_ms=2 * HOUR)
    s.login(0, "c1", country="DE")
    s.login(60, "c1", country="DE")
    s.login(30, "c1", country="BR")  # arrives after the 60th minute's login, within grace
    assert s.patterns() == ["impossible_travel"]


def test_withdrawal_velocity_and_one_large_honest_withdrawal():
    s = Stream()
    s.login(-1, "c1")
    for i in range(8):
        s(i * 1.5, "c1", "withdrawal", asset="USDT", amount_usd=900, address=f"a{i}")
    assert s.patterns() == ["withdrawal_velocity"]  # one incident, one detection
    assert len(s.found[0].evidence) == 6

    # a very active honest customer: many short sessions of one or two withdrawals each
    busy = Stream()
    for i in range(6):
        busy.login(i * 2.5, "b1")
        busy(i * 2.5 + 0.5, "b1", "withdrawal", asset="USDT", amount_usd=900, address="own")
        busy(i * 2.5 + 1, "b1", "withdrawal", asset="BTC", amount_usd=700, address="own")
    assert busy.found == []

    honest = Stream()
    for i in range(10):
        honest(-2000 + i * 100, "rich", "deposit", asset="BTC", amount_usd=1_000, address="x")
    honest(0, "rich", "withdrawal", asset="BTC", amount_usd=250_000, address="cold-wallet")
    assert honest.found == []


def test_wash_trading_and_a_market_makers_volume():
    s = Stream()
    for i in range(6):
        side = "buy" if i % 2 == 0 else "sell"
        s(i, "w1", "trade", asset="DOGE", side=side, quantity=1000, price_usd=0.1,
          counterparty_id="w2")  # fmt: skip
    assert s.patterns() == ["wash_trading"]
    assert s.found[0].customer_ids == ["w1", "w2"]

    mm = Stream()
    for i in range(200):
        side = "buy" if i % 2 == 0 else "sell"
        mm(i * 0.2, "mm", "trade", asset="BTC", side=side, quantity=0.5, price_usd=60_000,
           counterparty_id=f"c{i}")  # fmt: skip
    assert mm.found == []


def test_pump_and_dump():
    s = Stream()
    ring = ("p1", "p2", "p3", "p4")
    for i, c in enumerate(ring):  # they buy into the rise ...
        s(i * 2, c, "trade", asset="XYZ", side="buy", quantity=1000, price_usd=1.0 + 0.2 * i,
          counterparty_id="mm")  # fmt: skip
    s(9, "x", "trade", asset="XYZ", side="buy", quantity=10, price_usd=1.9)  # the top
    for i, c in enumerate(ring):  # ... and sell after the top
        s(15 + i * 2, c, "trade", asset="XYZ", side="sell", quantity=1000,
          price_usd=1.6 - 0.1 * i)  # fmt: skip
    assert s.patterns() == ["pump_and_dump"]  # one incident, one detection
    assert s.found[0].customer_ids == ["p1", "p2", "p3"]

    honest = Stream()  # one lucky trader is not a pump
    honest(0, "h", "trade", asset="XYZ", side="buy", quantity=10, price_usd=1.0)
    honest(30, "h", "trade", asset="XYZ", side="sell", quantity=10, price_usd=1.5)
    assert honest.found == []

    late = Stream()  # buying after the top and selling lower is not taking part in a pump
    late(0, "x", "trade", asset="XYZ", side="buy", quantity=10, price_usd=1.0)
    late(5, "x", "trade", asset="XYZ", side="buy", quantity=10, price_usd=2.0)
    for i, c in enumerate(("a", "b", "c")):
        late(10 + i, c, "trade", asset="XYZ", side="buy", quantity=10, price_usd=1.5)
        late(20 + i, c, "trade", asset="XYZ", side="sell", quantity=10, price_usd=1.2)
    assert late.found == []


def test_structuring():
    s = Stream()
    for i, amount in enumerate((9_500, 9_800, 9_200, 9_900, 9_400, 9_700)):
        s(i * 5, "s1", "deposit", asset="USDT", amount_usd=amount, address="src")
    assert s.patterns() == ["structuring"]  # one incident, one detection
    assert len(s.found[0].evidence) == 5

    honest = Stream()
    for i, amount in enumerate((9_500, 15_000, 3_000)):
        honest(i * 120, "h", "deposit", asset="USDT", amount_usd=amount, address="src")
    assert honest.found == []

    # an honest customer whose deposits are often near the threshold also goes over it
    near = Stream()
    for i, amount in enumerate((9_100, 12_000, 9_600, 14_000, 9_300, 9_900, 11_000, 9_200)):
        near(i * 6, "n", "deposit", asset="USD", amount_usd=amount)
    assert near.found == []


def test_mule_passthrough_and_shared_address():
    s = Stream()
    s(0, "m1", "deposit", asset="USDT", amount_usd=5_000, address="victim")
    s(3, "m1", "withdrawal_address_added", address="boss")
    s(10, "m1", "withdrawal", asset="USDT", amount_usd=4_900, address="boss")
    assert s.patterns() == ["mule_passthrough"]

    ring = Stream()
    for i in range(3):
        ring(i * 10, f"r{i}", "withdrawal", asset="BTC", amount_usd=500, address="collector")
    assert ring.patterns() == ["mule_passthrough"]
    assert ring.found[0].customer_ids == ["r0", "r1", "r2"]

    trader = Stream()  # deposits, trades a lot, withdraws to the same own wallet
    trader(0, "t", "deposit", asset="USDT", amount_usd=5_000, address="own")
    for i in range(5):
        trader(1 + i, "t", "trade", asset="BTC", side="buy", quantity=0.01, price_usd=60_000)
    trader(30, "t", "withdrawal_address_added", address="elsewhere")
    trader(40, "t", "withdrawal", asset="USDT", amount_usd=4_900, address="elsewhere")
    assert trader.found == []


def test_anomaly_model_flags_an_order_far_off_the_market():
    s = Stream()
    for i in range(400):  # the model learns from everyone's habits (its first window)
        s(i * 0.1, f"c{i % 10}", "order", asset="XYZ", side="buy", quantity=10,
          price_usd=100 + i % 3, amount_usd=1_000)  # fmt: skip
    assert s.found == []
    s(100, "c1", "order", asset="XYZ", side="sell", quantity=500, price_usd=55,
      amount_usd=27_500)  # fmt: skip
    assert s.patterns() == ["anomaly"]
    assert s.found[-1].detector.startswith("anomaly") and "off the market" in s.found[-1].reason


def test_late_events_beyond_grace_are_not_scored():
    s = Stream(grace_ms=10 * MIN)
    s.login(100, "c1")
    out = s.login(50, "c1", country="JP")
    assert isinstance(out, Late) and s.det.counts["late"] == 1


def test_state_restored_from_the_changelog_detects_the_same():
    a = Stream()
    a.login(0, "c1", country="DE")
    log = list(a.det.changes().items())
    b = Stream()
    b.det.apply(log)
    b.seq = itertools.count(1)
    b.login(30, "c1", country="JP")
    assert b.patterns() == ["impossible_travel"]


def test_thresholds_override_and_typos(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text("[withdrawal_velocity]\nmin_count = 2\n")
    t = load_thresholds(path)
    assert t["withdrawal_velocity"]["min_count"] == 2
    assert t["withdrawal_velocity"]["window_ms"] == 900_000
    path.write_text("[withdrawal_velocity]\nmin_cont = 2\n")
    with pytest.raises(ConfigError, match="unknown key"):
        load_thresholds(path)
    path.write_text("[nope]\n")
    with pytest.raises(ConfigError, match="unknown section"):
        load_thresholds(path)


# -- the anomaly model's state: data only, exact round trip -------------------------------
def _points(rng, n):
    return [
        {"z": rng.random(), "size": rng.random(), "price_dev": rng.random() ** 3,
         "new_asset": float(rng.random() < 0.1), "withdrawal": float(rng.random() < 0.2)}
        for _ in range(n)
    ]  # fmt: skip


@pytest.mark.parametrize("trained", [0, 7, 250, 1_234])
def test_model_state_round_trip_scores_and_learns_exactly_like_the_original(trained):
    import random

    from river.anomaly import HalfSpaceTrees

    from streamledger.fraud.model_state import dump_hst, load_hst

    rng = random.Random(trained)
    model = HalfSpaceTrees(n_trees=10, height=6, window_size=250, seed=42)
    for x in _points(rng, trained):
        model.learn_one(x)
    data = dump_hst(model)
    assert b"\x80" not in data and data.startswith(b'{"format":"streamledger.fraud.hst"')
    copy = load_hst(data)
    probe = _points(rng, 200)
    assert [copy.score_one(x) for x in probe] == [model.score_one(x) for x in probe]
    for x in _points(rng, 400):  # both go on learning (across a window pivot)
        model.learn_one(x)
        copy.learn_one(x)
    assert [copy.score_one(x) for x in probe] == [model.score_one(x) for x in probe]
    assert dump_hst(copy) == dump_hst(model)


def test_detectors_state_restores_the_model_through_json():
    a = Stream()
    for i in range(300):
        a(i * 0.1, f"c{i % 10}", "order", asset="XYZ", side="buy", quantity=10,
          price_usd=100 + i % 3, amount_usd=1_000)  # fmt: skip
    items = a.det.items()
    model = dict(items)["__model__"]
    assert model.startswith(b"{")  # JSON, not a pickle
    b = Stream()
    b.det.apply(items)
    x = {"z": 0.9, "size": 0.8, "price_dev": 0.7, "new_asset": 1.0, "withdrawal": 0.0}
    assert b.det._model.score_one(x) == a.det._model.score_one(x)


class _Boom:
    def __reduce__(self):
        return (exec, ("raise SystemExit('pickle executed')",))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x80\x04K\x01.", "pickle"),
        (__import__("base64").b64encode(__import__("pickle").dumps(_Boom())), "pickle"),
        (b"not json", "not JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"format": "other", "version": 1}', "format 'other'"),
        (b'{"format": "streamledger.fraud.hst", "version": 9}', "version 9"),
        (
            b'{"format": "streamledger.fraud.hst", "version": 1, "params": {"n_trees": 1e9}}',
            "n_trees",
        ),
        (
            b'{"format":"streamledger.fraud.hst","version":1,"params":{"n_trees":1,"height":1,'
            b'"window_size":4,"seed":1,"limits":{}},"counter":0,"first_window":false,'
            b'"features":["a"],"trees":[[[0,0.5,0,0],[0,0]]]}',
            "must list 3 nodes",
        ),
        (
            b'{"format":"streamledger.fraud.hst","version":1,"params":{"n_trees":1,"height":1,'
            b'"window_size":4,"seed":1,"limits":{}},"counter":0,"first_window":false,'
            b'"features":["a"],"trees":[[[3,0.5,0,0],[0,0],[0,0]]]}',
            "feature index 3",
        ),
        (
            b'{"format":"streamledger.fraud.hst","version":1,"params":{"n_trees":1,"height":1,'
            b'"window_size":4,"seed":1,"limits":{}},"counter":0,"first_window":false,'
            b'"features":["a"],"trees":[[[0,NaN,0,0],[0,0],[0,0]]]}',
            "not JSON",
        ),
        (
            b'{"format":"streamledger.fraud.hst","version":1,"params":{"n_trees":1,"height":1,'
            b'"window_size":4,"seed":1,"limits":{}},"counter":0,"first_window":false,'
            b'"features":["a"],"trees":[[[0,0.5,-1,0],[0,0],[0,0]]]}',
            "masses",
        ),
    ],
)
def test_malformed_or_foreign_model_state_is_refused(data, message):
    from streamledger.errors import FormatError

    s = Stream()
    with pytest.raises(FormatError, match=message):
        s.det.apply([("__model__", data)])


def test_orders_near_the_latest_trade_during_a_pump_are_not_anomalies():
    s = Stream()
    for i in range(400):  # the model's first window
        s(i * 0.1, f"c{i % 10}", "order", asset="XYZ", side="buy", quantity=10,
          price_usd=100 + i % 3, amount_usd=1_000)  # fmt: skip
    for i in range(10):  # the price doubles in ten minutes: trades define the market
        s(50 + i, "mm", "trade", asset="XYZ", side="sell", quantity=10, price_usd=100 + 10 * i,
          counterparty_id=f"c{i}")  # fmt: skip
    s(60, "c3", "order", asset="XYZ", side="buy", quantity=200, price_usd=192,
      amount_usd=38_400)  # fmt: skip
    # the price steps back down: an honest order of the usual size in an asset the customer
    # trades, at the new price, is off the last trade but not anomalous
    s(61, "c4", "order", asset="XYZ", side="sell", quantity=7, price_usd=150, amount_usd=1_050)
    assert s.found == []


def test_a_small_simulated_stream_every_pattern_detected_no_lookalike_alerted():
    from streamledger.fraud.evaluate import evaluate
    from streamledger.fraud.simulate import SimConfig, generate

    events, labels, lookalikes = generate(
        SimConfig(customers=400, duration_s=3 * 3600, rate=4, seed=5, incident_rate=4)
    )
    det = Detectors()
    det.state.watermark.expect([0])
    alerts = []
    for seq, event in enumerate(events):
        out = det.process(event, Evidence("logs-customer-trading", 0, seq))
        assert not isinstance(out, Late)
        alerts += [d.to_alert(d.last_ts) for d in out if d.score >= 0.5]
        if seq % 500 == 499:
            det.end_batch()
    report = evaluate(alerts, labels)
    for pattern, score in report.per_pattern.items():
        assert score.incidents >= 1, pattern
        assert score.detected == score.incidents, (pattern, score.to_json())
        assert score.false_positives == 0, (pattern, score.to_json())
    honest = {x["customer_id"] for x in lookalikes}
    labelled = {c for label in labels for c in label.customer_ids}
    assert not [a for a in alerts if set(a.customer_ids) & (honest - labelled)]


# A stored day replayed through Kafka is scored one partition's run after another: events of
# different partitions come minutes out of event-time order (all within the watermark, which
# follows the slowest partition). The rules that look at an asset's price history must use
# the history up to each event's own time, not what was scored before it.


def _partition_runs(events, runs):
    """``events`` (minute, partition, customer, type, fields) scored one partition's run
    after another, in the order of ``runs`` (partition, until minute)."""
    s = Stream()
    s.det.state.watermark.expect({p for _, p, *_ in events})
    done = set()
    for part, until in runs:
        for i, (minute, p, customer, type_, fields) in enumerate(events):
            if p == part and minute <= until and i not in done:
                done.add(i)
                assert not isinstance(s(minute, customer, type_, partition=p, **fields), Late)
    assert len(done) == len(events)
    return s


def test_pump_and_dump_scored_behind_a_partition_that_is_ahead():
    ring = ("p1", "p2", "p3", "p4")
    events = []
    for i, c in enumerate(ring):  # partition 0: the ring buys into the rise, sells after it
        events.append((i * 2, 0, c, "trade", dict(asset="XYZ", side="buy", quantity=1000,
                       price_usd=1.0 + 0.2 * i, counterparty_id="mm")))  # fmt: skip
        events.append((15 + i * 2, 0, c, "trade", dict(asset="XYZ", side="sell", quantity=1000,
                       price_usd=1.6 - 0.1 * i)))  # fmt: skip
    # partition 1: the top, and half an hour later a higher price (a new run-up)
    events.append((9, 1, "x", "trade", dict(asset="XYZ", side="buy", quantity=10, price_usd=1.9)))
    events.append((40, 1, "y", "trade", dict(asset="XYZ", side="buy", quantity=10, price_usd=2.6)))
    events.sort(key=lambda e: e[0])
    in_order = _partition_runs(events, [(p, m) for m, p, *_ in events])
    assert in_order.patterns() == ["pump_and_dump"]
    # partition 1 read up to minute 40 first, then partition 0
    behind = _partition_runs(events, [(0, 0), (1, 40), (0, 40)])
    assert behind.patterns() == ["pump_and_dump"]
    assert behind.found[0].customer_ids == in_order.found[0].customer_ids == ["p1", "p2", "p3"]


def test_an_order_is_compared_with_the_latest_trade_at_its_time_not_a_later_one():
    events = []
    for i in range(400):  # partition 0: the model's first window
        events.append((i * 0.1, 0, f"c{i % 10}", "order", dict(asset="XYZ", side="buy",
                       quantity=10, price_usd=100 + i % 3, amount_usd=1_000)))  # fmt: skip
    for i in range(10):  # partition 1: the price doubles in ten minutes ...
        events.append((50 + i, 1, "mm", "trade", dict(asset="XYZ", side="sell", quantity=10,
                       price_usd=100 + 10 * i, counterparty_id=f"c{i}")))  # fmt: skip
    # ... and falls back two minutes after an order at the top (partition 0)
    events.append((62, 1, "mm", "trade", dict(asset="XYZ", side="sell", quantity=10,
                   price_usd=100, counterparty_id="c9")))  # fmt: skip
    events.append((60, 0, "c3", "order", dict(asset="XYZ", side="buy", quantity=200,
                   price_usd=192, amount_usd=38_400)))  # fmt: skip
    events.sort(key=lambda e: e[0])
    in_order = _partition_runs(events, [(p, m) for m, p, *_ in events])
    assert in_order.found == []
    behind = _partition_runs(events, [(0, 40), (1, 62), (0, 60)])
    assert behind.found == []
