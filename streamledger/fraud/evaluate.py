"""``streamledger fraud evaluate``: alerts against the simulator's incident labels.

An alert matches a labelled incident when it names the same pattern, shares at least one
customer, and the event times it covers (``first_ts``..``last_ts``) overlap the incident's
(``start_ts``..``end_ts``) within a tolerance. Then, per pattern and overall (micro):

- precision = alerts that match some incident / alerts,
- recall = incidents matched by some alert / incidents,
- F1 = their harmonic mean;

and alert latency, event time to detection (``detected_at - last_ts``), p50 and p99 over
all alerts. Alerts with the same ``alert_id`` count once (the later copies are reported as
``repeated_ids``); a second, different alert for an already matched incident counts as a
true positive but is reported in ``duplicates``. ``integrity`` alerts are not fraud
patterns: they are counted apart and not scored.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamledger.fraud import events as ev
from streamledger.fraud.events import Alert, Label, MalformedEvent

DEFAULT_TOLERANCE_MS = 120_000


@dataclass
class PatternScore:
    pattern: str
    alerts: int = 0
    incidents: int = 0
    true_positives: int = 0  # alerts matching an incident
    detected: int = 0  # incidents matched by an alert
    duplicates: int = 0  # matching alerts beyond the first per incident

    @property
    def false_positives(self) -> int:
        return self.alerts - self.true_positives

    @property
    def missed(self) -> int:
        return self.incidents - self.detected

    @property
    def precision(self) -> float | None:
        return self.true_positives / self.alerts if self.alerts else None

    @property
    def recall(self) -> float | None:
        return self.detected / self.incidents if self.incidents else None

    @property
    def f1(self) -> float | None:
        p, r = self.precision, self.recall
        if p is None and r is None:
            return None
        p, r = p or 0.0, r or 0.0
        return 2 * p * r / (p + r) if p + r else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "pattern": self.pattern,
            "alerts": self.alerts,
            "incidents": self.incidents,
            "true_positives": self.true_positives,
            "false_positives": self.false_positives,
            "detected": self.detected,
            "missed": self.missed,
            "duplicates": self.duplicates,
            "precision": _round(self.precision),
            "recall": _round(self.recall),
            "f1": _round(self.f1),
        }


@dataclass
class Report:
    per_pattern: dict[str, PatternScore]
    overall: PatternScore
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    latency_count: int
    tolerance_ms: int
    matches: dict[str, list[str]] = field(default_factory=dict)  # alert_id -> incident ids
    false_positives: list[str] = field(default_factory=list)  # alert ids
    missed: list[str] = field(default_factory=list)  # incident ids
    repeated_ids: int = 0
    integrity_alerts: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "overall": self.overall.to_json(),
            "per_pattern": {p: s.to_json() for p, s in self.per_pattern.items()},
            "latency_ms": {
                "p50": self.latency_p50_ms,
                "p99": self.latency_p99_ms,
                "alerts": self.latency_count,
            },
            "tolerance_ms": self.tolerance_ms,
            "false_positives": self.false_positives,
            "missed": self.missed,
            "matches": self.matches,
            "repeated_ids": self.repeated_ids,
            "integrity_alerts": self.integrity_alerts,
        }

    def render(self) -> str:
        head = (
            f"{'pattern':<20} {'alerts':>6} {'incid.':>6} {'TP':>5} {'FP':>5} {'missed':>6} "
            f"{'precision':>9} {'recall':>7} {'F1':>6}"
        )
        lines = [head, "-" * len(head)]
        for score in [*self.per_pattern.values(), self.overall]:
            if score is self.overall:
                lines.append("-" * len(head))
            lines.append(
                f"{score.pattern:<20} {score.alerts:>6} {score.incidents:>6} "
                f"{score.true_positives:>5} {score.false_positives:>5} {score.missed:>6} "
                f"{_fmt(score.precision):>9} {_fmt(score.recall):>7} {_fmt(score.f1):>6}"
            )
        if self.latency_count:
            lines.append(
                f"latency (event time to detected_at) over {self.latency_count} alerts: "
                f"p50 {self.latency_p50_ms / 1000:.3f} s, p99 {self.latency_p99_ms / 1000:.3f} s"
            )
            if self.latency_p50_ms > 86_400_000:
                lines.append(
                    "  (event times are days before detection: measure latency on a "
                    "'fraud simulate --realtime' run)"
                )
        else:
            lines.append("latency: no alerts")
        extras = []
        if self.overall.duplicates:
            extras.append(f"{self.overall.duplicates} duplicate alerts for matched incidents")
        if self.repeated_ids:
            extras.append(f"{self.repeated_ids} repeated alert ids counted once")
        if self.integrity_alerts:
            extras.append(f"{self.integrity_alerts} integrity alerts (not scored)")
        if extras:
            lines.append("; ".join(extras))
        return "\n".join(lines)


def matches(alert: Alert, label: Label, tolerance_ms: int = DEFAULT_TOLERANCE_MS) -> bool:
    """Same pattern, a shared customer, overlapping event time (within the tolerance)."""
    if alert.pattern != label.pattern:
        return False
    if not set(alert.customer_ids) & set(label.customer_ids):
        return False
    return (
        alert.first_ts_ms - tolerance_ms <= label.end_ts_ms
        and label.start_ts_ms <= alert.last_ts_ms + tolerance_ms
    )


def evaluate(
    alerts: Iterable[Alert],
    labels: Iterable[Label],
    *,
    tolerance_ms: int = DEFAULT_TOLERANCE_MS,
) -> Report:
    """Score ``alerts`` against ``labels`` (see the module docstring)."""
    unique: dict[str, Alert] = {}
    repeated = integrity = 0
    for alert in alerts:
        if alert.pattern == ev.INTEGRITY:
            integrity += 1
        elif alert.alert_id in unique:
            repeated += 1
        else:
            unique[alert.alert_id] = alert
    ordered = sorted(unique.values(), key=lambda a: (a.detected_at_ms, a.alert_id))
    incidents = [label for label in labels if label.pattern in ev.PATTERNS]
    scores = {p: PatternScore(p) for p in ev.PATTERNS}
    for label in incidents:
        scores[label.pattern].incidents += 1
    by_customer: dict[str, list[Label]] = {}
    for label in incidents:
        for customer in label.customer_ids:
            by_customer.setdefault(customer, []).append(label)
    report_matches: dict[str, list[str]] = {}
    false_positives: list[str] = []
    matched: set[str] = set()
    latencies: list[int] = []
    for alert in ordered:
        score = scores[alert.pattern]
        score.alerts += 1
        latencies.append(alert.detected_at_ms - alert.last_ts_ms)
        candidates = {
            label.incident_id: label
            for customer in alert.customer_ids
            for label in by_customer.get(customer, ())
        }
        hits = [label for label in candidates.values() if matches(alert, label, tolerance_ms)]
        if not hits:
            false_positives.append(alert.alert_id)
            continue
        score.true_positives += 1
        report_matches[alert.alert_id] = sorted(h.incident_id for h in hits)
        new = [h for h in hits if h.incident_id not in matched]
        if not new:
            score.duplicates += 1
        for h in new:
            matched.add(h.incident_id)
            scores[h.pattern].detected += 1
    overall = PatternScore("overall")
    for s in scores.values():
        overall.alerts += s.alerts
        overall.incidents += s.incidents
        overall.true_positives += s.true_positives
        overall.detected += s.detected
        overall.duplicates += s.duplicates
    return Report(
        per_pattern=scores,
        overall=overall,
        latency_p50_ms=percentile(latencies, 50),
        latency_p99_ms=percentile(latencies, 99),
        latency_count=len(latencies),
        tolerance_ms=tolerance_ms,
        matches=report_matches,
        false_positives=false_positives,
        missed=sorted(lb.incident_id for lb in incidents if lb.incident_id not in matched),
        repeated_ids=repeated,
        integrity_alerts=integrity,
    )


def percentile(values: list[int] | list[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return float(ordered[rank - 1])


def read_labels(path: Path) -> list[Label]:
    out = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    out.append(Label.from_json(line))
                except MalformedEvent as exc:
                    raise MalformedEvent(exc.code, f"{path}:{n}: {exc}", exc.field) from None
    return out


def read_alerts_file(path: Path) -> list[Alert]:
    out = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    out.append(Alert.from_json(line))
                except MalformedEvent as exc:
                    raise MalformedEvent(exc.code, f"{path}:{n}: {exc}", exc.field) from None
    return out


def read_alerts_ledger(args: argparse.Namespace) -> tuple[list[Alert], int]:
    """Every alert of the ledger ``args.ledger`` (all partitions); malformed entries are
    counted and skipped."""
    from streamledger.cli.commands import open_backend
    from streamledger.ledger import Ledger

    backend = open_backend(args)
    alerts: list[Alert] = []
    bad = 0
    try:
        ledger = Ledger(backend, args.ledger)
        for partition in range(ledger.partitions):
            for entry in ledger.read(partition):
                try:
                    alerts.append(Alert.from_json(entry.payload))
                except MalformedEvent:
                    bad += 1
    finally:
        backend.close()
    return alerts, bad


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--labels", type=Path, required=True, help="labels from fraud simulate")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--alerts", type=Path, help="alerts as JSON lines")
    source.add_argument("--ledger", help=f"read alerts from this ledger (e.g. {ev.ALERTS_LEDGER})")
    parser.add_argument(
        "--tolerance-s",
        type=float,
        default=DEFAULT_TOLERANCE_MS / 1000,
        help=f"time overlap tolerance in seconds (default {DEFAULT_TOLERANCE_MS // 1000})",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def main(args: argparse.Namespace) -> int:
    from streamledger.cli.main import UsageError

    if args.tolerance_s < 0:
        raise UsageError("--tolerance-s must be >= 0")
    labels = read_labels(args.labels)
    bad = 0
    if args.alerts is not None:
        alerts = read_alerts_file(args.alerts)
    else:
        alerts, bad = read_alerts_ledger(args)
    report = evaluate(alerts, labels, tolerance_ms=int(args.tolerance_s * 1000))
    if args.json:
        obj = report.to_json()
        obj["malformed_alerts"] = bad
        print(json.dumps(obj, indent=2))
    else:
        print(report.render())
        if bad:
            print(f"{bad} malformed alert entries skipped", file=sys.stderr)
    return 0


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"
