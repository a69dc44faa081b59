"""Evaluation: precision, recall, F1 and latency on hand-made alerts and labels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streamledger.fraud import events as ev
from streamledger.fraud.evaluate import evaluate, matches, percentile
from streamledger.fraud.events import Alert, Label, format_ts

MIN = 60_000


def label(iid: str, pattern: str, customers: list[str], start: int, end: int) -> Label:
    return Label(iid, pattern, tuple(sorted(customers)), format_ts(start), format_ts(end), ("e",))


def alert(pattern: str, customers: list[str], first: int, last: int, latency: int = 1_000,
          anchor: str | None = None) -> Alert:  # fmt: skip
    return Alert.build(
        pattern=pattern,
        customer_ids=customers,
        anchor=anchor or f"{first}",
        first_ts_ms=first,
        last_ts_ms=last,
        detected_at_ms=last + latency,
        severity=ev.HIGH,
        score=0.9,
        reason="test",
    )


LABELS = [
    label("i1", ev.STRUCTURING, ["a"], 10 * MIN, 40 * MIN),
    label("i2", ev.WASH_TRADING, ["b", "c"], 10 * MIN, 30 * MIN),
    label("i3", ev.ACCOUNT_TAKEOVER, ["d"], 50 * MIN, 60 * MIN),
]


def test_perfect() -> None:
    alerts = [
        alert(ev.STRUCTURING, ["a"], 10 * MIN, 40 * MIN, 500),
        alert(ev.WASH_TRADING, ["c", "b"], 12 * MIN, 20 * MIN, 1500),
        alert(ev.ACCOUNT_TAKEOVER, ["d"], 55 * MIN, 59 * MIN, 2500),
    ]
    report = evaluate(alerts, LABELS)
    assert (report.overall.precision, report.overall.recall, report.overall.f1) == (1, 1, 1)
    for pattern in (ev.STRUCTURING, ev.WASH_TRADING, ev.ACCOUNT_TAKEOVER):
        assert report.per_pattern[pattern].f1 == 1.0
    assert report.per_pattern[ev.ANOMALY].f1 is None  # neither alerts nor incidents
    assert report.latency_p50_ms == 1500 and report.latency_p99_ms == 2500
    assert not report.missed and not report.false_positives
    assert "overall" in report.render() and json.dumps(report.to_json())


def test_missed_incident() -> None:
    report = evaluate([alert(ev.STRUCTURING, ["a"], 10 * MIN, 40 * MIN)], LABELS)
    assert report.overall.precision == 1.0
    assert report.overall.recall == pytest.approx(1 / 3)
    assert report.overall.f1 == pytest.approx(0.5)
    assert report.missed == ["i2", "i3"]
    assert report.per_pattern[ev.WASH_TRADING].recall == 0.0
    assert report.per_pattern[ev.WASH_TRADING].precision is None


def test_false_positive_other_customer() -> None:
    alerts = [
        alert(ev.STRUCTURING, ["a"], 10 * MIN, 40 * MIN),
        alert(ev.STRUCTURING, ["zz"], 10 * MIN, 40 * MIN),
    ]
    report = evaluate(alerts, LABELS[:1])
    score = report.per_pattern[ev.STRUCTURING]
    assert (score.precision, score.recall) == (0.5, 1.0)
    assert score.f1 == pytest.approx(2 / 3)
    assert len(report.false_positives) == 1


def test_wrong_pattern_is_a_false_positive_and_a_miss() -> None:
    report = evaluate([alert(ev.IMPOSSIBLE_TRAVEL, ["d"], 50 * MIN, 51 * MIN)], LABELS[2:])
    assert report.per_pattern[ev.IMPOSSIBLE_TRAVEL].precision == 0.0
    assert report.per_pattern[ev.ACCOUNT_TAKEOVER].recall == 0.0
    assert report.overall.f1 == 0.0 and report.missed == ["i3"]


def test_time_must_overlap_within_tolerance() -> None:
    lbl = LABELS[0]  # 10..40 min
    assert matches(alert(ev.STRUCTURING, ["a"], 41 * MIN, 45 * MIN), lbl)  # 1 min late: ok
    assert not matches(alert(ev.STRUCTURING, ["a"], 43 * MIN, 45 * MIN), lbl)  # 3 min late
    assert not matches(alert(ev.STRUCTURING, ["a"], 1 * MIN, 7 * MIN), lbl)  # 3 min early
    assert matches(alert(ev.STRUCTURING, ["a"], 43 * MIN, 45 * MIN), lbl, tolerance_ms=5 * MIN)
    report = evaluate([alert(ev.STRUCTURING, ["a"], 90 * MIN, 95 * MIN)], [lbl])
    assert report.overall.precision == 0.0 and report.overall.recall == 0.0


def test_duplicates_repeats_and_integrity() -> None:
    first = alert(ev.STRUCTURING, ["a"], 10 * MIN, 20 * MIN, anchor="x")
    again = alert(ev.STRUCTURING, ["a"], 10 * MIN, 20 * MIN, latency=9_000, anchor="x")
    other = alert(ev.STRUCTURING, ["a"], 25 * MIN, 40 * MIN, anchor="y")
    integrity = alert(ev.INTEGRITY, ["a"], 10 * MIN, 10 * MIN)
    report = evaluate([first, again, other, integrity], LABELS[:1])
    score = report.per_pattern[ev.STRUCTURING]
    assert score.alerts == 2 and score.true_positives == 2 and score.duplicates == 1
    assert score.detected == 1 and score.recall == 1.0
    assert report.repeated_ids == 1 and report.integrity_alerts == 1


def test_shared_customer_is_enough() -> None:
    # a pump-and-dump alert naming only some of the ring, plus an honest buyer
    lbl = label("p", ev.PUMP_AND_DUMP, ["r1", "r2", "r3", "r4"], 0, 20 * MIN)
    report = evaluate([alert(ev.PUMP_AND_DUMP, ["r2", "honest"], 5 * MIN, 19 * MIN)], [lbl])
    assert report.overall.f1 == 1.0


def test_percentile() -> None:
    assert percentile([], 50) is None
    assert percentile(list(range(1, 101)), 50) == 50
    assert percentile(list(range(1, 101)), 99) == 99
    assert percentile([7], 99) == 7


def test_cli_with_files(tmp_path: Path, capsys) -> None:
    from streamledger.cli.main import main

    labels, alerts = tmp_path / "labels.jsonl", tmp_path / "alerts.jsonl"
    labels.write_text("".join(lb.to_json().decode() + "\n" for lb in LABELS))
    alerts.write_text(alert(ev.STRUCTURING, ["a"], 10 * MIN, 40 * MIN).to_json().decode() + "\n")
    assert main(["fraud", "evaluate", "--labels", str(labels), "--alerts", str(alerts),
                 "--json"]) == 0  # fmt: skip
    obj = json.loads(capsys.readouterr().out)
    assert obj["overall"]["precision"] == 1.0 and obj["overall"]["recall"] == pytest.approx(0.3333)
    assert main(["fraud", "evaluate", "--labels", str(labels), "--alerts", str(alerts)]) == 0
    assert "structuring" in capsys.readouterr().out


def test_cli_with_a_ledger(tmp_path: Path, capsys) -> None:
    from streamledger.backends.sqlite import SQLiteBackend
    from streamledger.cli.main import main
    from streamledger.ledger import AppendItem, Ledger

    backend = SQLiteBackend(tmp_path / "data", create=True)
    ledger = Ledger.create(backend, ev.ALERTS_LEDGER, partitions=2)
    good = alert(ev.ACCOUNT_TAKEOVER, ["d"], 55 * MIN, 59 * MIN)
    ledger.append_many([AppendItem(good.to_json(), b"d", ev.CONTENT_TYPE),
                        AppendItem(b"not an alert", b"x", ev.CONTENT_TYPE)])  # fmt: skip
    backend.close()
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(lb.to_json().decode() + "\n" for lb in LABELS))
    argv = ["--data-dir", str(tmp_path / "data"), "fraud", "evaluate", "--labels", str(labels),
            "--ledger", ev.ALERTS_LEDGER, "--json"]  # fmt: skip
    assert main(argv) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["per_pattern"]["account_takeover"]["f1"] == 1.0 and obj["malformed_alerts"] == 1
