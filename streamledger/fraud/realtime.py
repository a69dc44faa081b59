"""``streamledger fraud load``: simulated events into a ledger at a fixed rate, in real time.

The simulator (:mod:`streamledger.fraud.simulate`) produces a stream of events in arrival
order; here that stream is paced to ``rate`` events per second of wall-clock time and each
event's ``ts`` is set to the wall clock when its batch is produced, so event time equals
ingest time. ``fraud evaluate``'s latency (``detected_at - last_ts``) is then the time from
an event's production to the alert it triggers, and ``fraud bench`` measures it.

To fit every fraud pattern into a short run, ``sim_hours`` of simulated activity (default 3:
every pattern fits) are compressed into ``seconds`` of wall time: the events keep their order,
only their spacing changes. Honest travellers then look like impossible travel, so precision
figures of such a run mean nothing; it is a load and latency test. Labels, when asked for,
carry the new event times of their events (incidents not fully produced are left out).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from streamledger.fraud import events as ev
from streamledger.fraud.events import Label, format_ts

__all__ = [
    "Encoded",
    "LoadStats",
    "add_arguments",
    "encode",
    "load",
    "main",
    "paced_batches",
    "restamp",
]

#: Simulated hours compressed into a run by default: every pattern fits (docs/fraud.md).
DEFAULT_SIM_HOURS = 3.0
#: Wall-clock period of the pacing loop; a batch holds the events due in it.
TICK_S = 0.02


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def restamp(raw: bytes, old_ts: str, ts_ms: int) -> bytes:
    """The canonical JSON of an event (``Event.to_json()``) with its ``ts`` replaced."""
    return raw.replace(
        b'"ts":"' + old_ts.encode() + b'"', b'"ts":"' + format_ts(ts_ms).encode() + b'"', 1
    )


@dataclass
class LoadStats:
    """What a paced run produced."""

    rate: float
    seconds: float
    produced: int = 0
    batches: int = 0
    elapsed: float = 0.0
    #: the largest number of events that were due but not yet produced (falling behind)
    max_backlog: int = 0
    exhausted: bool = False  # the simulation ran out of events before the time was up
    started_ms: int = 0
    ended_ms: int = 0
    labels: list[Label] = field(default_factory=list)

    @property
    def achieved_rate(self) -> float:
        return self.produced / self.elapsed if self.elapsed > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "rate": self.rate,
            "seconds": self.seconds,
            "produced": self.produced,
            "achieved_rate": round(self.achieved_rate, 1),
            "batches": self.batches,
            "elapsed_s": round(self.elapsed, 3),
            "max_backlog": self.max_backlog,
            "exhausted": self.exhausted,
            "started": format_ts(self.started_ms) if self.started_ms else None,
            "ended": format_ts(self.ended_ms) if self.ended_ms else None,
            "incidents": len(self.labels),
        }


class Encoded(NamedTuple):
    """An event ready to produce: its customer (the entry key), id, ``ts`` text and JSON."""

    customer_id: str
    event_id: str
    ts: str
    raw: bytes


def encode(event: ev.Event) -> Encoded:
    return Encoded(event.customer_id, event.event_id, event.ts, event.to_json())


def paced_batches(
    events: Iterable[ev.Event | Encoded],
    rate: float,
    seconds: float,
    *,
    stats: LoadStats | None = None,
    max_batch: int = 5000,
    stamp: Callable[[str, int], None] | None = None,
) -> Iterator[tuple[int, list[tuple[str, bytes]]]]:
    """Pace ``events`` to ``rate`` per second for ``seconds``: yields ``(ts_ms, batch)``
    every ``TICK_S`` with the events due by then, each as ``(customer_id, json)`` with its
    ``ts`` set to ``ts_ms`` (the wall clock once the batch is taken from ``events``, just
    before it is handed on). A consumer that is slow makes the next batches larger (up to
    ``max_batch``), so the rate holds on average. ``stamp(event_id, ts_ms)`` is called for
    every event produced."""
    stats = stats if stats is not None else LoadStats(rate, seconds)
    source = iter(events)
    start = next_tick = time.monotonic()
    stats.started_ms = now_ms()
    total = int(seconds * rate)
    produced = 0
    while not stats.exhausted:
        elapsed = time.monotonic() - start
        if elapsed >= seconds or produced >= total:
            break
        due = min(int(elapsed * rate) + 1, total) - produced
        if due > 0:
            stats.max_backlog = max(stats.max_backlog, due)
            want = min(due, max_batch)
            chunk = [
                item if type(item) is Encoded else encode(item)  # type: ignore[arg-type]
                for item in itertools.islice(source, want)
            ]
            if len(chunk) < want:
                stats.exhausted = True
            ts = now_ms()
            batch = [(e.customer_id, restamp(e.raw, e.ts, ts)) for e in chunk]
            if stamp is not None:
                for e in chunk:
                    stamp(e.event_id, ts)
            if batch:
                produced += len(batch)
                stats.produced = produced
                stats.batches += 1
                yield ts, batch
        next_tick += TICK_S
        pause = next_tick - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    stats.elapsed = time.monotonic() - start
    stats.ended_ms = now_ms()


def simulation_for(
    rate: float,
    seconds: float,
    *,
    customers: int = 2000,
    seed: int = 1,
    sim_hours: float = DEFAULT_SIM_HOURS,
    incident_rate: float = 4.0,
    warn: Callable[[str], None] | None = None,
) -> Any:
    """A :class:`~streamledger.fraud.simulate.Simulation` with about 25 % more events than
    ``rate * seconds`` over ``sim_hours`` of event time."""
    from streamledger.fraud.simulate import SimConfig, Simulation

    duration = sim_hours * 3600.0
    wanted = rate * seconds * 1.25 + 100
    config = SimConfig(
        customers=customers,
        duration_s=duration,
        rate=wanted / duration,
        seed=seed,
        incident_rate=incident_rate,
        start_ms=now_ms(),
    )
    return Simulation(config, warn=warn)


def load(
    ledger: Any,
    rate: float,
    seconds: float,
    *,
    customers: int = 2000,
    seed: int = 1,
    sim_hours: float = DEFAULT_SIM_HOURS,
    incident_rate: float = 4.0,
    pregenerate: bool = False,
    progress: Callable[[LoadStats, float], None] | None = None,
    warn: Callable[[str], None] | None = None,
) -> LoadStats:
    """Append simulated events to ``ledger`` (a :class:`~streamledger.ledger.Ledger`) at
    ``rate`` events per second for ``seconds``, event time = wall clock; one
    ``append_many`` (one transaction on Kafka) per batch, key = customer id.
    ``pregenerate`` runs the simulation (and JSON encoding) before the clock starts, so
    that only stamping and appending happen during the run (memory: about 400 bytes per
    event). ``progress(stats, elapsed)`` is called about every 2 s. Returns the stats with
    the re-stamped labels of the incidents produced completely."""
    from streamledger.ledger import AppendItem

    if rate <= 0 or seconds <= 0:
        raise ValueError("rate and seconds must be positive")
    sim = simulation_for(
        rate,
        seconds,
        customers=customers,
        seed=seed,
        sim_hours=sim_hours,
        incident_rate=incident_rate,
        warn=warn,
    )
    stats = LoadStats(rate, seconds)
    stamped: dict[str, int] = {}
    events: Iterable[ev.Event | Encoded] = sim.events()
    if pregenerate:
        events = [encode(e) for e in itertools.islice(events, int(rate * seconds))]
    began = last = time.monotonic()
    for _ts, batch in paced_batches(events, rate, seconds, stats=stats, stamp=stamped.__setitem__):
        ledger.append_many(
            [AppendItem(raw, customer.encode(), ev.CONTENT_TYPE) for customer, raw in batch]
        )
        now = time.monotonic()
        if progress is not None and now - last >= 2.0:
            last = now
            progress(stats, now - began)
    stats.labels = _restamped_labels(sim.labels, stamped)
    return stats


def _restamped_labels(labels: list[Label], stamped: dict[str, int]) -> list[Label]:
    out = []
    for label in labels:
        times = [stamped.get(e) for e in label.event_ids]
        if not times or any(t is None for t in times):
            continue  # not produced completely before the run ended
        first, last = min(times), max(times)  # type: ignore[type-var]
        doc = label.to_dict()
        doc["start_ts"], doc["end_ts"] = format_ts(first), format_ts(last)  # type: ignore[arg-type]
        out.append(Label.from_json(json.dumps(doc)))
    return out


# -- CLI -----------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ledger", default=ev.INPUT_LEDGER, help=f"input ledger (default {ev.INPUT_LEDGER})"
    )
    parser.add_argument(
        "--rate", type=float, default=1000.0, help="events per second of wall time (1000)"
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="how long (default 60)")
    parser.add_argument("--customers", type=int, default=2000, help="customers (default 2000)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument(
        "--sim-hours",
        type=float,
        default=DEFAULT_SIM_HOURS,
        help=f"simulated hours compressed into the run (default {DEFAULT_SIM_HOURS:g})",
    )
    parser.add_argument(
        "--incident-rate", type=float, default=4.0, help="incidents per simulated hour (4)"
    )
    parser.add_argument(
        "--partitions", type=int, default=8, help="partitions when the ledger is created (8)"
    )
    parser.add_argument(
        "--pregenerate",
        action="store_true",
        help="simulate all events before the clock starts (only appending during the run)",
    )
    parser.add_argument("--labels", type=Path, help="write the re-stamped incident labels here")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")


def check_args(args: argparse.Namespace) -> None:
    from streamledger.cli.main import UsageError

    if not args.rate > 0:
        raise UsageError("--rate must be positive")
    if not args.seconds > 0:
        raise UsageError("--seconds must be positive")
    if args.customers < 50:
        raise UsageError("--customers must be at least 50")
    if not args.sim_hours > 0:
        raise UsageError("--sim-hours must be positive")
    if args.incident_rate < 0:
        raise UsageError("--incident-rate must be >= 0")
    if not 1 <= args.partitions <= 10_000:
        raise UsageError("--partitions must be between 1 and 10000")


def main(args: argparse.Namespace) -> int:
    from streamledger.cli.commands import open_backend
    from streamledger.fraud.pipeline import open_or_create

    check_args(args)

    def progress(stats: LoadStats, elapsed: float) -> None:
        if not args.quiet:
            print(
                f"load: {stats.produced:,} events in {elapsed:.0f}s "
                f"({stats.produced / max(elapsed, 1e-9):,.0f}/s, target {args.rate:,.0f}/s)",
                file=sys.stderr,
                flush=True,
            )

    def warn(message: str) -> None:
        if not args.quiet:
            print(message, file=sys.stderr)

    backend = open_backend(args, create=True)
    try:
        ledger = open_or_create(backend, args.ledger, args.partitions)
        stats = load(
            ledger,
            args.rate,
            args.seconds,
            customers=args.customers,
            seed=args.seed,
            sim_hours=args.sim_hours,
            incident_rate=args.incident_rate,
            pregenerate=args.pregenerate,
            progress=progress,
            warn=warn,
        )
    finally:
        backend.close()
    if args.labels is not None:
        args.labels.parent.mkdir(parents=True, exist_ok=True)
        with open(args.labels, "w", encoding="utf-8") as out:
            for label in stats.labels:
                out.write(label.to_json().decode() + "\n")
    if args.json:
        print(json.dumps(stats.to_json(), indent=2))
    elif not args.quiet:
        behind = " (the simulation ran out of events)" if stats.exhausted else ""
        print(
            f"load: {stats.produced:,} events to {args.ledger} in {stats.elapsed:.1f}s "
            f"({stats.achieved_rate:,.0f}/s, target {args.rate:,.0f}/s), "
            f"{len(stats.labels)} incidents{behind}",
            file=sys.stderr,
        )
    return 0
