"""``streamledger fraud bench``: alert latency and consumer lag of the pipeline on Kafka.

:func:`measure_latency` runs, on a broker, the pipeline (``fraud run``, its own process) on a
fresh input ledger while ``fraud load`` (another process) appends simulated events to it at a
fixed rate with event time = wall clock. Every second it samples the pipeline's consumer lag:
the input partitions' end offsets minus the offsets the pipeline committed (in its
transactions). When the load ends it waits for the pipeline to drain, stops it and reads the
alerts: latency is ``detected_at - last_ts`` of every alert, as ``fraud evaluate`` computes
it, so it covers producing the event (hashing, its Kafka transaction), consuming and
verifying it, detection and the pipeline's transaction up to the moment the alert is built.

Each run uses new ledgers (``fraud-bench-<tag>-input`` etc.) and a new consumer group; they
are left on the broker.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from streamledger.errors import BackendUnavailable, ConfigError, StreamledgerError

__all__ = ["add_arguments", "lag_summary", "main", "measure_latency", "render"]

#: Lag growing faster than this share of the input rate means the pipeline falls behind.
GROWING_SHARE = 0.02


def _say(text: str) -> None:
    print(f"fraud bench: {text}", file=sys.stderr, flush=True)


def _cli(bootstrap: str, data: Path, config: dict[str, str], *args: str) -> list[str]:
    cmd = [sys.executable, "-m", "streamledger", "--data-dir", str(data), "-b", bootstrap]
    for key, value in config.items():
        cmd += ["-X", f"{key}={value}"]
    return [*cmd, "fraud", *args]


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class _LagSampler(threading.Thread):
    """Every ``interval`` seconds: sum over partitions of end offset - committed offset."""

    def __init__(
        self, bootstrap: str, config: dict[str, str], topic: str, partitions: int, group: str
    ) -> None:
        super().__init__(name="fraud-bench-lag", daemon=True)
        from confluent_kafka import Consumer

        self.topic, self.partitions = topic, partitions
        self.interval = 1.0
        # Same group id to read its committed offsets; never subscribes, never commits.
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                **config,
                "group.id": group,
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            }
        )
        self.samples: list[tuple[float, int]] = []  # (epoch seconds, lag)
        self.errors = 0
        self._halt = threading.Event()

    def sample(self) -> int | None:
        from confluent_kafka import KafkaException, TopicPartition

        tps = [TopicPartition(self.topic, p) for p in range(self.partitions)]
        try:
            committed = {tp.partition: tp.offset for tp in self.consumer.committed(tps, 5.0)}
            lag = 0
            for tp in tps:
                _, high = self.consumer.get_watermark_offsets(tp, timeout=5.0, cached=False)
                done = committed.get(tp.partition, -1)
                lag += high - max(done, 0)
        except KafkaException:
            self.errors += 1
            return None
        return lag

    def run(self) -> None:
        next_at = time.monotonic()
        while not self._halt.is_set():
            lag = self.sample()
            if lag is not None:
                self.samples.append((time.time(), lag))
            next_at += self.interval
            self._halt.wait(max(0.0, next_at - time.monotonic()))

    def stop(self) -> None:
        self._halt.set()
        self.join(10)
        self.consumer.close()


def lag_summary(
    samples: Sequence[tuple[float, int]], rate: float, start: float, end: float
) -> dict[str, Any]:
    """Lag figures over the samples taken between ``start`` and ``end`` (epoch seconds):
    first, last, max, mean, least-squares slope (events/s) and whether it grows (slope above
    ``GROWING_SHARE`` of the rate)."""
    window = [(t, lag) for t, lag in samples if start <= t <= end]
    if not window:
        return {"samples": 0}
    lags = [lag for _, lag in window]
    slope = 0.0
    if len(window) >= 3:
        n = len(window)
        mt = sum(t for t, _ in window) / n
        ml = sum(lags) / n
        den = sum((t - mt) ** 2 for t, _ in window)
        if den > 0:
            slope = sum((t - mt) * (lag - ml) for t, lag in window) / den
    return {
        "samples": len(window),
        "start": lags[0],
        "end": lags[-1],
        "max": max(lags),
        "mean": round(sum(lags) / len(lags), 1),
        "slope_per_s": round(slope, 1),
        "growing": slope > GROWING_SHARE * rate,
    }


def _percentile(values: list[int], q: float) -> float | None:
    from streamledger.fraud.evaluate import percentile

    return percentile(values, q)


def _wait_for_group(
    bootstrap: str, config: dict[str, str], group: str, proc: subprocess.Popen, log: Path
) -> None:
    """Until the pipeline's consumer group is stable with its partitions assigned."""
    from confluent_kafka import ConsumerGroupState, KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 4, **config})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StreamledgerError(f"the pipeline exited with {proc.returncode}:\n{_tail(log)}")
        try:
            desc = admin.describe_consumer_groups([group], request_timeout=5)[group].result(6)
            assigned = sum(len(m.assignment.topic_partitions) for m in desc.members or ())
            if desc.state == ConsumerGroupState.STABLE and assigned:
                return
        except KafkaException:
            pass
        time.sleep(0.5)
    raise BackendUnavailable(f"the pipeline's consumer group {group} did not start in 120 s")


def measure_latency(
    bootstrap: str,
    rate: int | float,
    seconds: float,
    *,
    partitions: int = 8,
    customers: int = 2000,
    seed: int = 1,
    batch_size: int = 2000,
    config: dict[str, str] | None = None,
    workdir: Path | None = None,
    drain_timeout: float = 60.0,
    pregenerate: bool = True,
    say: Callable[[str], None] = _say,
) -> dict[str, Any]:
    """Run the pipeline on ``bootstrap`` under ``rate`` events/s for ``seconds`` and measure
    alert latency (event time to ``detected_at``) and the pipeline's consumer lag.

    Returns a JSON-able dict: ``rate``, ``seconds``, ``load`` (``fraud load``'s summary:
    produced, achieved rate, ...), ``alerts`` (count), ``latency_ms`` (``p50``, ``p99``,
    ``max``, ``alerts``), ``lag`` (:func:`lag_summary` over the load, plus ``samples_all``:
    ``[seconds since the load started, lag]``), ``drain_s`` (time for the lag to fall back
    after the load ended, None if it did not within ``drain_timeout``), ``keeps_up`` (lag not
    growing and drained) and ``pipeline`` (its own summary line). ``pregenerate`` (default)
    makes the load process simulate every event before its clock starts, so that during the
    run it only stamps and appends them and takes less CPU from the pipeline."""
    from streamledger.backends.kafka import KafkaBackend
    from streamledger.fraud.events import INTEGRITY, Alert, MalformedEvent
    from streamledger.ledger import Ledger

    if rate <= 0 or seconds <= 0:
        raise ConfigError("rate and seconds must be positive")
    if not 1 <= partitions <= 1000:
        raise ConfigError("partitions must be between 1 and 1000")
    config = {str(k): str(v) for k, v in (config or {}).items()}
    tag = uuid.uuid4().hex[:8]
    names = {k: f"fraud-bench-{tag}-{k}" for k in ("input", "suspicious", "alerts")}
    group = f"fraud-bench-{tag}"
    with tempfile.TemporaryDirectory(prefix="streamledger-fraud-bench-") as tmp:
        work = Path(workdir) if workdir is not None else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        backend = KafkaBackend(bootstrap, config=config, state_dir=work / "cache")
        procs: list[subprocess.Popen] = []
        sampler: _LagSampler | None = None
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}

        def spawn(
            name: str, command: str, args: list[str], log: Path, stdout: int
        ) -> subprocess.Popen:
            """``streamledger fraud COMMAND ARGS`` in its own data dir, stderr to ``log``."""
            proc = subprocess.Popen(
                _cli(bootstrap, work / name, config, command, *args),
                stdout=stdout,
                stderr=open(log, "w"),  # noqa: SIM115 - closed with the process
                env=env,
            )
            procs.append(proc)
            return proc

        try:
            Ledger.create(backend, names["input"], partitions=partitions)
            run_log = work / "pipeline.log"
            say(f"starting the pipeline (group {group})")
            run_args = ["--input", names["input"], "--suspicious", names["suspicious"]]
            run_args += ["--alerts", names["alerts"], "--group", group]
            run_args += ["--batch-size", str(batch_size)]
            pipeline = spawn("pipeline", "run", run_args, run_log, subprocess.DEVNULL)
            _wait_for_group(bootstrap, config, group, pipeline, run_log)
            sampler = _LagSampler(bootstrap, config, names["input"], partitions, group)
            sampler.start()
            say(f"loading {rate:,.0f} events/s for {seconds:g} s into {names['input']}")
            load_log = work / "load.log"
            load_args = ["--ledger", names["input"], "--rate", str(rate)]
            load_args += ["--seconds", str(seconds), "--customers", str(customers)]
            load_args += ["--seed", str(seed), "--json"]
            if pregenerate:
                load_args.append("--pregenerate")
            loader = spawn("load", "load", load_args, load_log, subprocess.PIPE)
            out, _ = loader.communicate(timeout=seconds + 300)
            if loader.returncode != 0:
                raise StreamledgerError(
                    f"fraud load exited with {loader.returncode}:\n{_tail(load_log)}"
                )
            load = json.loads(out)
            load_end = time.time()
            say("load done; waiting for the pipeline to drain")
            drained_at = None
            idle = partitions  # a caught-up partition still counts its last commit marker
            deadline = time.monotonic() + drain_timeout
            while time.monotonic() < deadline:
                if pipeline.poll() is not None:
                    raise StreamledgerError(
                        f"the pipeline exited with {pipeline.returncode}:\n{_tail(run_log)}"
                    )
                lag = sampler.samples[-1] if sampler.samples else None
                if lag is not None and lag[0] > load_end and lag[1] <= idle:
                    drained_at = lag[0]
                    break
                time.sleep(0.2)
            sampler.stop()
            pipeline.send_signal(signal.SIGTERM)
            try:
                pipeline.wait(60)
            except subprocess.TimeoutExpired:
                pipeline.kill()
                pipeline.wait(10)
            summary = next(
                (
                    line.split("fraud run: ", 1)[1]
                    for line in reversed(run_log.read_text(errors="replace").splitlines())
                    if line.startswith("fraud run: ")
                ),
                None,
            )
            latencies: list[int] = []
            alerts = 0
            if names["alerts"] in backend.list_ledgers():
                ledger = Ledger(backend, names["alerts"])
                for part in range(ledger.partitions):
                    for entry in ledger.read(part):
                        try:
                            alert = Alert.from_json(entry.payload)
                        except MalformedEvent:
                            continue
                        alerts += 1
                        if alert.pattern != INTEGRITY:
                            latencies.append(alert.detected_at_ms - alert.last_ts_ms)
            start = _epoch(load.get("started"))
            end = _epoch(load.get("ended")) or load_end
            lag_stats = lag_summary(sampler.samples, float(rate), start or 0.0, end)
            lag_stats["samples_all"] = [
                [round(t - (start or t), 1), lag] for t, lag in sampler.samples
            ]
            drain = None if drained_at is None else round(max(0.0, drained_at - end), 1)
            return {
                "rate": rate,
                "seconds": seconds,
                "partitions": partitions,
                "bootstrap": bootstrap,
                "ledgers": names,
                "load": load,
                "alerts": alerts,
                "latency_ms": {
                    "p50": _percentile(latencies, 50),
                    "p99": _percentile(latencies, 99),
                    "max": max(latencies) if latencies else None,
                    "alerts": len(latencies),
                },
                "lag": lag_stats,
                "drain_s": drain,
                "keeps_up": bool(lag_stats.get("samples")) and not lag_stats.get("growing")
                and drain is not None,
                "pipeline": summary,
            }  # fmt: skip
        finally:
            if sampler is not None and sampler.is_alive():
                sampler.stop()
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(10)
            backend.close()


def _epoch(text: str | None) -> float | None:
    from streamledger.fraud.events import parse_ts

    return None if not text else parse_ts(text) / 1000


def render(result: dict[str, Any]) -> str:
    """A small table of :func:`measure_latency`'s result."""
    load, lat, lag = result["load"], result["latency_ms"], result["lag"]

    def sec(ms: float | None) -> str:
        return "-" if ms is None else f"{ms / 1000:.3f} s"

    rows = [
        ("load", f"{load['produced']:,} events in {load['elapsed_s']:.1f} s "
                 f"({load['achieved_rate']:,.0f}/s of {result['rate']:,.0f}/s), "
                 f"{result['partitions']} partitions"),
        ("alerts", f"{result['alerts']:,} ({lat['alerts']:,} with a latency)"),
        ("latency p50", sec(lat["p50"])),
        ("latency p99", sec(lat["p99"])),
        ("latency max", sec(lat["max"])),
    ]  # fmt: skip
    if lag.get("samples"):
        rows.append(
            (
                "consumer lag",
                f"start {lag['start']:,}, end {lag['end']:,}, max {lag['max']:,}, "
                f"mean {lag['mean']:,} events; slope {lag['slope_per_s']:+,.1f}/s "
                f"({'growing' if lag['growing'] else 'not growing'})",
            )
        )
    drain = result["drain_s"]
    rows.append(("drained after", "not within the timeout" if drain is None else f"{drain} s"))
    rows.append(("keeps up", "yes" if result["keeps_up"] else "NO"))
    if result.get("pipeline"):
        rows.append(("pipeline", result["pipeline"]))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)


# -- CLI -----------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rate", type=float, default=5000.0, help="input events per second (default 5000)"
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="load duration (default 60)")
    parser.add_argument("--partitions", type=int, default=8, help="input partitions (default 8)")
    parser.add_argument("--customers", type=int, default=2000, help="customers (default 2000)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument(
        "--batch-size", type=int, default=2000, help="the pipeline's batch size (default 2000)"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("-o", "--output", type=Path, help="also write the result as JSON here")


def main(args: argparse.Namespace) -> int:
    from streamledger.bench import _start_local_broker
    from streamledger.cli.commands import kafka_bootstrap
    from streamledger.cli.main import UsageError

    if not args.rate > 0:
        raise UsageError("--rate must be positive")
    if not args.seconds > 0:
        raise UsageError("--seconds must be positive")
    if not 1 <= args.partitions <= 1000:
        raise UsageError("--partitions must be between 1 and 1000")
    if args.customers < 50:
        raise UsageError("--customers must be at least 50")
    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    bootstrap = kafka_bootstrap(args)
    with tempfile.TemporaryDirectory(prefix="streamledger-fraud-bench-") as tmp:
        broker = None
        if not bootstrap:
            _say("starting a local Kafka broker")
            try:
                broker = _start_local_broker(Path(tmp))
            except (RuntimeError, OSError) as exc:
                raise BackendUnavailable(f"cannot start a local Kafka broker: {exc}") from None
            bootstrap = broker.bootstrap
        try:
            result = measure_latency(
                bootstrap,
                args.rate,
                args.seconds,
                partitions=args.partitions,
                customers=args.customers,
                seed=args.seed,
                batch_size=args.batch_size,
                config=dict(args.kafka_config),
                workdir=Path(tmp) / "run",
            )
        finally:
            if broker is not None:
                broker.stop()
    result["machine"] = {"cpus": os.cpu_count(), "load_avg": list(os.getloadavg())}
    if args.output is not None:
        args.output.write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"fraud bench: {args.rate:,.0f} events/s for {args.seconds:g} s on {bootstrap}\n"
            + render(result)
        )
    return 0
