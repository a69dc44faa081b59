"""``streamledger fraud watch``: a live terminal view of the fraud pipeline (rich).

Follows the input ledger (event rate: entries appended per second) and the alerts ledger
(alerts as they arrive, per-pattern counts). Works on both backends: it reads the ledgers'
sizes and new entries, so it needs no access to the pipeline process. ``--once`` prints one
snapshot and exits; ``--duration S`` stops after S seconds (for scripts and tests).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter, deque
from typing import Any

from streamledger.fraud.events import ALERTS_LEDGER, INPUT_LEDGER, INTEGRITY, PATTERNS

__all__ = ["Watcher", "add_arguments", "main"]


class Watcher:
    """Polls the ledgers and keeps what the view shows."""

    def __init__(self, backend: Any, input_ledger: str, alerts_ledger: str, recent: int = 12):
        from streamledger.ledger import Ledger

        self.backend = backend
        self.input_name = input_ledger
        self.alerts_name = alerts_ledger
        self._ledger = Ledger
        self.inputs: Any = None
        self.alerts: Any = None
        self.positions: dict[int, int] = {}
        self.counts: Counter[str] = Counter()
        self.recent: deque[dict[str, Any]] = deque(maxlen=recent)
        self.input_total = 0
        self._rates: deque[tuple[float, int]] = deque(maxlen=20)

    def _open(self) -> None:
        names = set(self.backend.list_ledgers())
        if self.inputs is None and self.input_name in names:
            self.inputs = self._ledger(self.backend, self.input_name)
        if self.alerts is None and self.alerts_name in names:
            self.alerts = self._ledger(self.backend, self.alerts_name)

    def poll(self) -> None:
        self._open()
        if self.inputs is not None:
            self.inputs.forget_heads()
            self.input_total = sum(self.inputs.size(p) for p in range(self.inputs.partitions))
            self._rates.append((time.monotonic(), self.input_total))
        if self.alerts is not None:
            self.alerts.forget_heads()
            for p in range(self.alerts.partitions):
                start = self.positions.get(p, 0)
                for entry in self.alerts.read(p, start):
                    self.positions[p] = entry.seq + 1
                    try:
                        alert = json.loads(entry.payload)
                    except (TypeError, ValueError):
                        continue
                    self.counts[alert.get("pattern", "?")] += 1
                    self.recent.append(alert)

    @property
    def rate(self) -> float:
        if len(self._rates) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self._rates[0], self._rates[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

    def render(self) -> Any:
        from rich.console import Group
        from rich.table import Table

        head = Table.grid(padding=(0, 2))
        head.add_row(
            f"[bold]input[/] {self.input_name}: {self.input_total:,} events",
            f"[bold]rate[/] {self.rate:,.0f} events/s",
            f"[bold]alerts[/] {sum(self.counts.values()):,}",
        )
        counts = Table(title="alerts per pattern", show_edge=False)
        counts.add_column("pattern")
        counts.add_column("alerts", justify="right")
        for pattern in (*PATTERNS, INTEGRITY):
            counts.add_row(pattern, str(self.counts.get(pattern, 0)))
        recent = Table(title="latest alerts", show_edge=False)
        for col in ("detected_at", "pattern", "severity", "customers", "reason"):
            recent.add_column(col, overflow="fold")
        for a in reversed(self.recent):
            style = "red" if a.get("severity") in ("high", "critical") else None
            recent.add_row(
                str(a.get("detected_at", "")),
                str(a.get("pattern", "")),
                str(a.get("severity", "")),
                ", ".join(a.get("customer_ids", []))[:40],
                str(a.get("reason", ""))[:120],
                style=style,
            )
        return Group(head, counts, recent)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", default=INPUT_LEDGER, help="input ledger (event rate)")
    parser.add_argument("--alerts", default=ALERTS_LEDGER, help="alerts ledger to follow")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    parser.add_argument("--once", action="store_true", help="print one snapshot and exit")
    parser.add_argument("--duration", type=float, default=None, help="stop after S seconds")


def main(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.live import Live

    from streamledger.cli.commands import open_backend

    backend = open_backend(args)
    watcher = Watcher(backend, args.input, args.alerts)
    console = Console()
    try:
        watcher.poll()
        if args.once:
            console.print(watcher.render())
            return 0
        deadline = None if args.duration is None else time.monotonic() + args.duration
        with Live(watcher.render(), console=console, refresh_per_second=4) as live:
            while deadline is None or time.monotonic() < deadline:
                time.sleep(args.interval)
                watcher.poll()
                live.update(watcher.render())
    except KeyboardInterrupt:
        return 130
    finally:
        backend.close()
    return 0
