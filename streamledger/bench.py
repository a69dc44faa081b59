"""``streamledger bench``: what tamper evidence costs, as ratios against raw confluent-kafka.

Everything compared is measured in the same run, on the same broker, with the same payloads
and the same client settings. Absolute rates are noisy on a shared 2-core machine (raw
baselines move 2-3x between runs), so the Kafka section first warms the broker up (its JVM
compiles its hot paths over tens of seconds of traffic), every comparison then runs a
discarded warm-up round per payload size, then ``repeat`` interleaved rounds (raw and ledger
take turns, the order reversed every other round), each sample seconds long, and reports the
median of each side and the ratio of those medians; the best samples, their ratio and every
sample (warm-up included) are kept in the JSON output. See docs/benchmarks.md for why.

Modes: ``--quick`` (under a minute, one measured round, used by the test suite as a smoke
run) and the default full mode (five rounds, 10M-entry proof logs and the
KafkaBlockchain-shaped run; the figures recorded in docs/benchmarks.md).
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamledger._bench_proofs import proof_latency
from streamledger.backends.sqlite import SQLiteBackend
from streamledger.core import _accel
from streamledger.core.note import SigningKey
from streamledger.core.verify import TrustPolicy
from streamledger.errors import ConfigError
from streamledger.ledger import Ledger

#: KafkaBlockchain (Java) published figures: 10M hash-chained messages.
ANCHOR_PRODUCE_S = 120.0
ANCHOR_VERIFY_S = 300.0
#: Entries per transaction of the KafkaBlockchain-shaped run (a bulk load: large batches).
ANCHOR_BATCH = 20_000


@dataclass(frozen=True)
class BenchPlan:
    name: str
    sizes: tuple[int, ...]
    kafka_entries: dict[int, int]  # payload size -> entries
    batch: int
    sqlite_entries: int
    proof_log_sizes: tuple[int, ...]
    proof_samples: int
    latency_samples: int
    memory_log_sizes: tuple[int, ...]
    anchor_entries: int
    encryption_entries: int = 20_000
    repeat: int = 1  # measured interleaved rounds per throughput comparison (median reported)
    warmup: int = 1  # discarded warm-up rounds before them, per payload size (Kafka)
    broker_warmup_s: float = 0.0  # seconds of traffic before the first Kafka round
    fraud_rate: int = 0  # events/s of the fraud pipeline latency run (0 skips it)
    fraud_seconds: float = 60.0


#: The sections of a run, in the order they run; ``--only`` picks some of them.
SECTIONS = ("kafka", "anchor", "latency", "fraud", "sqlite", "encryption", "proofs", "memory")


def parse_sections(text: str | None) -> tuple[str, ...]:
    """``--only`` as a tuple of section names (all of them for None); unknown names are a
    ConfigError naming the valid ones."""
    if text is None:
        return SECTIONS
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [name for name in names if name not in SECTIONS]
    if unknown or not names:
        raise ConfigError(
            f"--only: unknown section {', '.join(map(repr, unknown)) or '(none given)'}; "
            f"choose from {', '.join(SECTIONS)}"
        )
    return names


def parse_sizes(text: str | None, plan: BenchPlan) -> tuple[int, ...]:
    """``--sizes`` (payload sizes of the Kafka rows, a subset of the plan's) as a tuple."""
    if text is None:
        return plan.sizes
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"--sizes: expected comma-separated byte counts, got {text!r}") from None
    bad = [size for size in sizes if size not in plan.sizes]
    if bad or not sizes:
        raise ConfigError(
            f"--sizes: {', '.join(map(str, bad)) or '(none given)'} not measured; choose from "
            f"{', '.join(map(str, plan.sizes))}"
        )
    return sizes


QUICK = BenchPlan(
    name="quick",
    sizes=(100, 1024, 10240),
    kafka_entries={100: 20_000, 1024: 10_000, 10240: 2_000},
    batch=1000,
    sqlite_entries=20_000,
    proof_log_sizes=(50_000,),
    proof_samples=300,
    latency_samples=100,
    memory_log_sizes=(200_000,),
    anchor_entries=0,
    encryption_entries=20_000,
    repeat=1,
    broker_warmup_s=2.0,
)
FULL = BenchPlan(
    name="full",
    sizes=(100, 1024, 10240),
    # Each sample is seconds long (~2.5 s of raw produce on a warm broker here). Up to
    # 1 KiB raw transactional produce is bound by the round trip of a 1,000-message
    # transaction (~2.2 ms at 100 B, ~4 ms at 1 KiB: 450K/s and 250K/s), so 1,200,000 and
    # 600,000 entries (120 MB / 600 MB); at 10 KiB it is bound by bytes (~800 MB/s), and
    # 100,000 entries (1 GB, 1.2-1.4 s) are enough there: with 10 MB transactions a 20 ms
    # stall weighs little (rounds within 11 %), and 1 GB keeps verification seconds long.
    # The 150,000 x 1 KiB (0.6 s) samples of earlier runs moved by 30 % round to round: one
    # 20 ms stall (librdkafka's fixed backoff on CONCURRENT_TRANSACTIONS) more or less is
    # 3 % of such a sample.
    kafka_entries={100: 1_200_000, 1024: 600_000, 10240: 100_000},
    batch=1000,
    sqlite_entries=300_000,
    proof_log_sizes=(1_000_000, 10_000_000),
    proof_samples=2000,
    latency_samples=1000,
    memory_log_sizes=(1_000_000, 10_000_000),
    anchor_entries=10_000_000,
    encryption_entries=200_000,
    repeat=5,
    # A fresh broker's JVM takes tens of seconds of traffic to compile its hot paths: raw
    # produce of 100 B climbed from 122K/s to 270K/s over four 600,000-entry rounds, the
    # broker's CPU for the same work falling from 5.4 s to 1.6 s (0.8 s once warm).
    broker_warmup_s=30.0,
    fraud_rate=5000,
    fraud_seconds=60.0,
)


def _rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- Kafka measurements ------------------------------------------------------------------
def _producer_config(bootstrap: str, extra: dict[str, str]) -> dict[str, Any]:
    from streamledger.backends.kafka import producer_settings

    return {"bootstrap.servers": bootstrap, **producer_settings(), **extra}


def raw_produce(
    bootstrap: str,
    extra: dict[str, str],
    topic: str,
    payloads: list[bytes],
    batch: int,
    partitions: int,
) -> float:
    """Transactional produce of ``payloads`` in transactions of ``batch``; returns msgs/s."""
    from confluent_kafka import Producer

    conf = _producer_config(bootstrap, extra)
    conf["transactional.id"] = f"bench-raw-{uuid.uuid4()}"
    producer = Producer(conf)
    producer.init_transactions(30)
    # Warm-up transaction, not timed (the ledger run gets one too).
    producer.begin_transaction()
    for i, payload in enumerate(payloads[:batch]):
        producer.produce(topic, payload, partition=i % partitions)
    producer.commit_transaction(60)
    started = time.perf_counter()
    for first in range(0, len(payloads), batch):
        producer.begin_transaction()
        for i, payload in enumerate(payloads[first : first + batch], first):
            while True:
                try:
                    producer.produce(topic, payload, partition=i % partitions)
                    break
                except BufferError:
                    producer.poll(0.01)
        producer.commit_transaction(60)
    seconds = time.perf_counter() - started
    return _rate(len(payloads), seconds)


def record_bytes(ledger: Ledger, payload: bytes) -> int:
    """The length of the Kafka record ``ledger`` writes for ``payload`` (header + payload)."""
    from streamledger.core.entry import ZERO_HASH, build_records
    from streamledger.ledger import DEFAULT_CONTENT_TYPE

    records, _ = build_records(
        ledger.name, 0, 0, 0, ledger.producer, ZERO_HASH, [(payload, b"", DEFAULT_CONTENT_TYPE)]
    )
    return len(records[0])


def ledger_append(ledger: Ledger, payloads: list[bytes], batch: int) -> float:
    """``Ledger.append_stream`` of ``payloads`` in batches of ``batch``; returns entries/s."""
    ledger.append_many(payloads[:batch])  # warm-up, not timed (raw produce gets one too)
    started = time.perf_counter()
    done = sum(1 for _ in ledger.append_stream(payloads, batch_size=batch))
    return _rate(done, time.perf_counter() - started)


def raw_consume(
    bootstrap: str, extra: dict[str, str], topic: str, partitions: int, expected: int
) -> float:
    """read_committed consume of a whole topic; returns msgs/s."""
    from confluent_kafka import Consumer, TopicPartition

    from streamledger.backends.kafka import consumer_settings

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-{uuid.uuid4()}",
            **consumer_settings(),
            **extra,
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    count = 0
    eof: set[int] = set()
    started = time.perf_counter()
    while len(eof) < partitions and count < expected:
        for msg in consumer.consume(10_000, 0.02):
            if msg.error():
                if msg.error().code() == -191:  # _PARTITION_EOF
                    eof.add(msg.partition())
                continue
            value = msg.value()
            if value is not None:
                count += 1
    seconds = time.perf_counter() - started
    consumer.close()
    if count < expected:
        raise RuntimeError(f"raw consume read {count} of {expected} records")
    return _rate(count, seconds)


def sequencer_rate(
    bootstrap: str,
    extra: dict[str, str],
    payloads: list[bytes],
    partitions: int,
    batch: int,
    key: SigningKey,
    state_dir: Path,
    tag: str | None = None,
) -> float:
    """Exactly-once sequencer service: plain submissions already in an intake topic are
    sequenced into a ledger; entries/s from its first transaction to its last (the consumer
    group join before it is not counted)."""
    import io

    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    from streamledger.backends.kafka import KafkaBackend
    from streamledger.services.sequencer import Sequencer

    tag = tag or uuid.uuid4().hex[:8]
    intake, ledger_name = f"intake-{tag}", f"seq-{tag}"
    admin = AdminClient({"bootstrap.servers": bootstrap, **extra})
    admin.create_topics([NewTopic(intake, partitions, 1)])[intake].result(30)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, **extra})
    for i, payload in enumerate(payloads):
        while True:
            try:
                producer.produce(intake, payload, partition=i % partitions)
                break
            except BufferError:
                producer.poll(0.01)
    producer.flush(60)
    backend = KafkaBackend(bootstrap, config=extra, state_dir=state_dir)
    try:
        Ledger.create(backend, ledger_name, partitions=partitions, signer=key)
    finally:
        backend.close()
    marks: dict[str, tuple[float, int]] = {}

    def done(stats: Any) -> bool:
        if stats.entries and "first" not in marks:
            marks["first"] = (time.perf_counter(), stats.entries)
        return stats.entries >= len(payloads)

    sequencer = Sequencer(
        bootstrap,
        ledger_name,
        intake,
        signer=key,
        checkpoint_every=0,
        checkpoint_interval=0,
        batch_size=batch,
        stats_interval=0,
        config=extra,
        state_dir=state_dir,
        out=io.StringIO(),
    )
    stats = sequencer.run(until=done)
    end = time.perf_counter()
    if stats.entries < len(payloads):
        raise RuntimeError(f"sequencer stopped after {stats.entries} of {len(payloads)}")
    started, first_entries = marks["first"]
    return _rate(stats.entries - first_entries, end - started)


def _topics_of(topics: Any, bases: Any) -> list[str]:
    """The topics named ``base`` or ``base.<suffix>`` (a ledger's checkpoints, history,
    documents and rejects topics) for any of ``bases``."""
    bases = set(bases)
    return sorted(t for t in topics if t in bases or t.split(".", 1)[0] in bases)


def _delete_topics(
    bootstrap: str, extra: dict[str, str], tag: str, bases: Any | None = None
) -> None:
    """Delete every topic whose name holds ``tag`` (one payload size's topics), or with
    ``bases`` the topics of those ledgers and topics only (``_topics_of``; one round's), so a
    full run does not keep gigabytes of benchmark data on the broker (a 1 KiB round writes
    about 2.6 GB)."""
    from confluent_kafka.admin import AdminClient

    try:
        admin = AdminClient({"bootstrap.servers": bootstrap, **extra})
        topics = admin.list_topics(timeout=30).topics
        names = [t for t in topics if tag in t] if bases is None else _topics_of(topics, bases)
        for future in (admin.delete_topics(names, operation_timeout=30) if names else {}).values():
            future.result(60)
    except Exception as exc:  # noqa: BLE001 - cleanup only (maybe after another error): go on
        _say(f"  could not delete the benchmark topics of {tag}: {exc}")


def _best(samples: list[float]) -> float:
    return max(samples)


def _median(samples: list[float]) -> float:
    return statistics.median(samples)


#: The Kafka comparisons: (ledger-side sample, baseline sample) of each ratio in a row.
KAFKA_RATIOS = {
    "append": ("ledger_append_per_s", "raw_produce_per_s"),
    "sequencer": ("sequencer_per_s", "raw_produce_per_s"),
    "verify_w1": ("verify_w1_per_s", "raw_consume_per_s"),
    "verify_w2": ("verify_w2_per_s", "raw_consume_per_s"),
    # what the record format alone costs: raw produce of messages as long as the ledger's
    # records, against raw produce of the payloads; and the ledger against that
    "record_format": ("raw_records_per_s", "raw_produce_per_s"),
    "append_vs_records": ("ledger_append_per_s", "raw_records_per_s"),
}
KAFKA_SAMPLES = (
    "raw_produce_per_s",
    "ledger_append_per_s",
    "sequencer_per_s",
    "raw_consume_per_s",
    "verify_w1_per_s",
    "verify_w2_per_s",
    "raw_records_per_s",
)


def _kafka_row(
    size: int,
    count: int,
    samples: dict[str, list[float]],
    warmup: dict[str, list[float]],
) -> dict[str, Any]:
    """One payload size's row from its measured samples (the warm-up round's are kept apart
    and not counted): every figure is the median of its samples, every ratio the ratio of
    two medians; the best sample of each, the ratios of those bests and the per-round ratios
    (both sides of a ratio measured back to back in the same round) are kept beside them."""
    median = {name: _median(values) for name, values in samples.items()}
    best = {name: _best(values) for name, values in samples.items()}
    row: dict[str, Any] = {
        "payload_bytes": size,
        "entries": count,
        "bytes_per_sample": size * count,
        "repeat": len(samples["raw_produce_per_s"]),
        "warmup_rounds": len(warmup.get("raw_produce_per_s", [])),
        "statistic": "median",
    }
    for name in KAFKA_SAMPLES:
        row[name] = median[name]
    for ratio, (side, base) in KAFKA_RATIOS.items():
        row[f"{ratio}_ratio"] = median[side] / median[base]
    # the headline verify figure: the better of the two configurations, and which one it is
    workers = 2 if median["verify_w2_per_s"] > median["verify_w1_per_s"] else 1
    row["verify_workers"] = workers
    row["verify_per_s"] = median[f"verify_w{workers}_per_s"]
    row["verify_ratio"] = row[f"verify_w{workers}_ratio"]
    row["best"] = best
    row["best_ratios"] = {
        ratio: best[side] / best[base] for ratio, (side, base) in KAFKA_RATIOS.items()
    }
    row["round_ratios"] = {
        ratio: [a / b for a, b in zip(samples[side], samples[base], strict=True)]
        for ratio, (side, base) in KAFKA_RATIOS.items()
    }
    row["samples"] = samples
    row["warmup_samples"] = warmup
    return row


def _round_order(steps: list[Any], measured_round: int | None) -> list[Any]:
    """The order of a round's steps: as given in the warm-up round (``None``) and in even
    measured rounds, reversed in odd ones, so that over the measured rounds neither side
    always goes first."""
    return list(steps) if not measured_round or measured_round % 2 == 0 else list(steps)[::-1]


def _warm_broker(
    bootstrap: str,
    extra: dict[str, str],
    seconds: float,
    batch: int,
    key: SigningKey,
    state_dir: Path,
) -> dict[str, Any]:
    """Traffic, not measured, until ``seconds`` have passed: raw produce, ledger append and
    the sequencer take turns on chunks of 100,000 x 100 B (transactions of ``batch``), so the
    broker's JVM has compiled the paths of all three before the first round. The rates of the
    chunks are returned (and kept in the JSON) to show how far the broker warmed up."""
    from streamledger.backends.kafka import KafkaBackend

    tag = f"warmbroker{uuid.uuid4().hex[:8]}"
    base = [os.urandom(100) for _ in range(2000)]
    payloads = [base[i % len(base)] for i in range(100_000)]
    chunks: dict[str, list[float]] = {name: [] for name in KAFKA_SAMPLES[:3]}
    backend = KafkaBackend(bootstrap, config=extra, state_dir=state_dir)
    started = time.perf_counter()
    try:
        for index in itertools.count():
            if time.perf_counter() - started >= seconds:
                break
            raw_topic = f"raw-{tag}-{index}"
            Ledger.create(backend, raw_topic, partitions=3)
            ledger = Ledger.create(backend, f"ledger-{tag}-{index}", partitions=3, signer=key)
            chunks["raw_produce_per_s"].append(
                raw_produce(bootstrap, extra, raw_topic, payloads, batch, 3)
            )
            chunks["ledger_append_per_s"].append(ledger_append(ledger, payloads, batch))
            chunks["sequencer_per_s"].append(
                sequencer_rate(
                    bootstrap, extra, payloads, 3, batch, key, state_dir, tag=f"{tag}-{index}"
                )
            )
    finally:
        backend.close()
        _delete_topics(bootstrap, extra, tag)
    return {"seconds": time.perf_counter() - started, "entries_per_chunk": 100_000, **chunks}


class _CpuMeter:
    """CPU seconds spent during one measurement call (setup included): by the benchmark
    process (its threads and waited-for children), by the broker (when the benchmark
    started it and knows its pid) and by everything else on the machine, so that a sample
    disturbed by other processes shows as such in the JSON."""

    def __init__(self, broker_pid: int | None = None) -> None:
        self.broker_pid = broker_pid
        self._start: tuple[float, float, float | None, float | None] | None = None

    @staticmethod
    def _proc_cpu(pid: int) -> float | None:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return None

    @staticmethod
    def _machine_busy() -> float | None:
        try:
            with open("/proc/stat") as f:
                fields = [int(x) for x in f.readline().split()[1:]]
            # user nice system idle iowait irq softirq steal ...: all but idle and iowait
            return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return None

    def _now(self) -> tuple[float, float, float | None, float | None]:
        t = os.times()
        own = t.user + t.system + t.children_user + t.children_system
        broker = self._proc_cpu(self.broker_pid) if self.broker_pid else None
        return time.perf_counter(), own, broker, self._machine_busy()

    def start(self) -> None:
        self._start = self._now()

    def stop(self) -> dict[str, float | None]:
        assert self._start is not None
        (w0, own0, b0, m0), (w1, own1, b1, m1) = self._start, self._now()
        broker = b1 - b0 if b0 is not None and b1 is not None else None
        machine = m1 - m0 if m0 is not None and m1 is not None else None
        other = None
        if machine is not None and broker is not None:
            other = max(0.0, machine - (own1 - own0) - broker)
        return {
            "wall_s": w1 - w0,
            "bench_cpu_s": own1 - own0,
            "broker_cpu_s": broker,
            "other_cpu_s": other,
        }


def _round_label(size: int, count: int, round_: int | None, repeat: int) -> str:
    which = "warm-up" if round_ is None else f"{round_ + 1}/{repeat}"
    return f"  {size} B x {count:,} [{which}]"


def _kafka_rows(
    bootstrap: str,
    extra: dict[str, str],
    plan: BenchPlan,
    key: SigningKey,
    state_dir: Path,
    repeat: int,
    sizes: tuple[int, ...] | None = None,
    broker_pid: int | None = None,
) -> list[dict[str, Any]]:
    """Per payload size: ``plan.warmup`` discarded warm-up rounds, then ``repeat`` measured
    rounds of raw produce / ledger append / sequencer (each round on fresh topics, the order
    reversed every other measured round so neither side always goes first); then as many
    warm-up and measured rounds of raw consume / verify (1 process) / verify (2 worker
    processes) over the ledger of the first measured round. Every sample is kept; the
    figures are the medians of the measured rounds (see ``_kafka_row``)."""
    import functools

    from streamledger.backends.kafka import KafkaBackend

    rows = []
    partitions = 3
    trust = TrustPolicy((key.verifier,))
    opener = functools.partial(KafkaBackend, bootstrap, config=extra, state_dir=state_dir)
    rounds = [None] * plan.warmup + list(range(repeat))  # None: a warm-up round
    for size in sizes or plan.sizes:
        count = plan.kafka_entries[size]
        payloads = [os.urandom(size) for _ in range(min(count, 2000))]
        payloads = [payloads[i % len(payloads)] for i in range(count)]
        # The benchmark's own data (the payload list of 600,000 entries and more) out of the
        # garbage collector's full collections, for every side alike: the sequencer, which
        # allocates per message, ran 9 full collections per 600,000 x 100 B of ~8 ms each,
        # mostly walking that list, which a sequencer process does not hold (0.4 ms frozen).
        gc.freeze()
        tag = f"bench{size}x{uuid.uuid4().hex[:8]}"
        samples: dict[str, list[float]] = {name: [] for name in KAFKA_SAMPLES}
        warmup: dict[str, list[float]] = {name: [] for name in KAFKA_SAMPLES}
        # CPU spent during each measured sample (same order as ``samples``)
        cpu: dict[str, list[dict[str, float | None]]] = {name: [] for name in KAFKA_SAMPLES}
        meter = _CpuMeter(broker_pid)

        backend = KafkaBackend(bootstrap, config=extra, state_dir=state_dir)
        record_size: int | None = None
        records: list[bytes] = []
        try:
            measured = None
            for index, round_ in enumerate(rounds):
                raw_topic = f"raw-{tag}-{index}"
                records_topic = f"rawrec-{tag}-{index}"
                Ledger.create(backend, raw_topic, partitions=partitions)  # same topic settings
                Ledger.create(backend, records_topic, partitions=partitions)
                ledger = Ledger.create(
                    backend, f"ledger-{tag}-{index}", partitions=partitions, signer=key
                )
                if record_size is None:  # raw messages as long as this ledger's records
                    record_size = record_bytes(ledger, payloads[0])
                    padded = [os.urandom(record_size) for _ in range(min(count, 2000))]
                    records = [padded[i % len(padded)] for i in range(count)]
                if round_ is not None:
                    measured = measured or ledger

                steps: list[tuple[str, str, Callable[[], float]]] = [
                    (
                        "raw_produce_per_s",
                        "raw produce",
                        functools.partial(
                            raw_produce, bootstrap, extra, raw_topic, payloads, plan.batch,
                            partitions,
                        ),
                    ),
                    (
                        "ledger_append_per_s",
                        "ledger append",
                        functools.partial(ledger_append, ledger, payloads, plan.batch),
                    ),
                    (
                        "raw_records_per_s",
                        "raw produce of ledger-sized messages",
                        functools.partial(
                            raw_produce, bootstrap, extra, records_topic, records, plan.batch,
                            partitions,
                        ),
                    ),
                    (
                        "sequencer_per_s",
                        "sequencer",
                        functools.partial(
                            sequencer_rate, bootstrap, extra, payloads, partitions, plan.batch,
                            key, state_dir, tag=f"{tag}-{index}",
                        ),
                    ),
                ]  # fmt: skip
                kept = warmup if round_ is None else samples
                for name, what, measure in _round_order(steps, round_):
                    _say(f"{_round_label(size, count, round_, repeat)}: {what}")
                    meter.start()
                    kept[name].append(measure())
                    if round_ is not None:
                        cpu[name].append(meter.stop())
                # this round's topics, but for the ledger verified below (sequencer_rate's
                # intake and ledger are named after its tag)
                done = [raw_topic, records_topic, f"intake-{tag}-{index}", f"seq-{tag}-{index}"]
                if ledger is not measured:
                    done.append(ledger.name)
                _delete_topics(bootstrap, extra, tag, bases=done)
            assert measured is not None
            measured.checkpoint()
            total = count + plan.batch  # + the warm-up batch
            for round_ in rounds:
                kept = warmup if round_ is None else samples
                _say(
                    f"{_round_label(size, count, round_, repeat)}: raw consume / verify "
                    "(1 process) / verify (2 processes)"
                )
                for workers in _round_order([0, 1, 2], round_):  # 0: raw consume
                    meter.start()
                    if workers == 0:
                        kept["raw_consume_per_s"].append(
                            raw_consume(bootstrap, extra, measured.name, partitions, total)
                        )
                        if round_ is not None:
                            cpu["raw_consume_per_s"].append(meter.stop())
                        continue
                    started = time.perf_counter()
                    report = measured.verify(trust, workers=workers, opener=opener)
                    rate = _rate(report.entries_checked, time.perf_counter() - started)
                    if not report.ok or report.entries_checked != total:
                        raise RuntimeError(
                            f"benchmark ledger did not verify: {report.findings[:3]}"
                        )
                    kept[f"verify_w{workers}_per_s"].append(rate)
                    if round_ is not None:
                        cpu[f"verify_w{workers}_per_s"].append(meter.stop())
        finally:
            backend.close()
            _delete_topics(bootstrap, extra, tag)
            gc.unfreeze()
        rows.append(_kafka_row(size, count, samples, warmup))
        rows[-1]["cpu"] = cpu
        rows[-1]["record_bytes"] = record_size
    return rows


def _append_latency(
    bootstrap: str, extra: dict[str, str], plan: BenchPlan, state_dir: Path
) -> dict[str, float]:
    from streamledger.backends.kafka import KafkaBackend

    backend = KafkaBackend(bootstrap, config=extra, state_dir=state_dir)
    try:
        ledger = Ledger.create(backend, f"bench-latency-{uuid.uuid4().hex[:8]}")
        samples = []
        payload = os.urandom(200)
        for _ in range(plan.latency_samples):
            started = time.perf_counter()
            ledger.append(payload)
            samples.append((time.perf_counter() - started) * 1000)
    finally:
        backend.close()
    return {"p50_ms": _pct(samples, 0.5), "p99_ms": _pct(samples, 0.99)}


def _anchor_run(
    bootstrap: str, extra: dict[str, str], entries: int, key: SigningKey, state_dir: Path
) -> dict[str, Any]:
    """Shaped like the KafkaBlockchain benchmark: N hash-chained entries over 3 partitions,
    produced, then verified (here: full verification with checkpoints, 2 worker processes)."""
    import functools

    from streamledger.backends.kafka import KafkaBackend

    backend = KafkaBackend(bootstrap, config=extra, state_dir=state_dir)
    try:
        ledger = Ledger.create(
            backend, f"bench-anchor-{uuid.uuid4().hex[:8]}", partitions=3, signer=key
        )
        payload = os.urandom(100)
        started = time.perf_counter()
        stream = ledger.append_stream(itertools.repeat(payload, entries), batch_size=ANCHOR_BATCH)
        for done, _ in enumerate(stream, 1):
            if done % 1_000_000 == 0:
                _say(f"    {done:,} appended")
        produce_s = time.perf_counter() - started
        ledger.checkpoint()
        opener = functools.partial(KafkaBackend, bootstrap, config=extra, state_dir=state_dir)
        started = time.perf_counter()
        report = ledger.verify(TrustPolicy((key.verifier,)), workers=2, opener=opener)
        verify_s = time.perf_counter() - started
        if not report.ok or report.entries_checked != entries:
            raise RuntimeError(f"anchor ledger did not verify: {report.findings[:3]}")
    finally:
        backend.close()
    scale = 10_000_000 / entries
    return {
        "entries": entries,
        "produce_s": produce_s,
        "verify_s": verify_s,
        "produce_s_per_10m": produce_s * scale,
        "verify_s_per_10m": verify_s * scale,
        "anchor_produce_s": ANCHOR_PRODUCE_S,
        "anchor_verify_s": ANCHOR_VERIFY_S,
        "produce_speedup": ANCHOR_PRODUCE_S / (produce_s * scale),
        "verify_speedup": ANCHOR_VERIFY_S / (verify_s * scale),
    }


# -- embedded measurements ---------------------------------------------------------------
def _sqlite_rows(plan: BenchPlan, key: SigningKey, workdir: Path, repeat: int) -> dict[str, Any]:
    """Embedded SQLite (durable: an fsync per commit), 100 B entries in batches of
    ``plan.batch``: append, then full verification; best of ``repeat`` rounds, each on a new
    ledger."""
    backend = SQLiteBackend(workdir / "sqlite-bench")
    appends: list[float] = []
    verifies: list[float] = []
    try:
        payloads = [os.urandom(100) for _ in range(plan.batch)]
        for round_ in range(repeat):
            ledger = Ledger.create(backend, f"bench-{round_}", partitions=1, signer=key)
            started = time.perf_counter()
            for _ in range(plan.sqlite_entries // plan.batch):
                ledger.append_many(payloads)
            appends.append(_rate(plan.sqlite_entries, time.perf_counter() - started))
            ledger.checkpoint()
            started = time.perf_counter()
            report = ledger.verify(TrustPolicy((key.verifier,)))
            verifies.append(_rate(report.entries_checked, time.perf_counter() - started))
            if not report.ok or report.entries_checked != plan.sqlite_entries:
                raise RuntimeError(f"SQLite benchmark ledger did not verify: {report.findings[:3]}")
    finally:
        backend.close()
    return {
        "entries": plan.sqlite_entries,
        "repeat": repeat,
        "append_per_s": _best(appends),
        "verify_per_s": _best(verifies),
        "samples": {"append_per_s": appends, "verify_per_s": verifies},
    }


def _encrypted_append(plan: BenchPlan, workdir: Path) -> dict[str, Any]:
    """Embedded backend: append with AES-256-GCM payload encryption vs without, same 100 B
    payloads and batches of ``plan.batch``. The two ledgers take turns batch by batch, so
    load from other processes hits both alike; the cost ratio is total time encrypted over
    total time unencrypted."""
    from streamledger.crypto import Keyring, LedgerEncryption, ReaderKey

    reader = ReaderKey.generate("bench-reader")
    payloads = [os.urandom(100) for _ in range(plan.batch)]
    backends = [SQLiteBackend(workdir / "sqlite-plain"), SQLiteBackend(workdir / "sqlite-enc")]
    try:
        plain = Ledger.create(backends[0], "bench")
        encrypted = Ledger.create(backends[1], "bench")
        Keyring(backends[1], "bench").enable([reader.public])
        encrypted.encryption = LedgerEncryption(backends[1], "bench", reader)
        seconds = [0.0, 0.0]
        for ledger in (plain, encrypted):
            ledger.append_many(payloads)  # warm-up, not timed
        rounds = max(1, plan.encryption_entries // plan.batch)
        for round_ in range(rounds):
            order = (0, 1) if round_ % 2 == 0 else (1, 0)
            for side in order:
                ledger = (plain, encrypted)[side]
                started = time.perf_counter()
                ledger.append_many(payloads)
                seconds[side] += time.perf_counter() - started
        entries = rounds * plan.batch
    finally:
        for backend in backends:
            backend.close()
    return {
        "entries": entries,
        "plain_append_per_s": _rate(entries, seconds[0]),
        "encrypted_append_per_s": _rate(entries, seconds[1]),
        "cost_ratio": seconds[1] / seconds[0],
    }


def _verify_memory(size: int) -> dict[str, Any]:
    """Peak RSS of verifying a ``size``-entry partition, in a fresh child process.

    Records are generated on the fly, so the child's memory is the verifier's alone."""
    code = (
        "import sys\n"
        "from streamledger.core.verify import verify_partition\n"
        "from streamledger.core.entry import StoredRecord, build_record\n"
        "n=int(sys.argv[1])\n"
        "def gen():\n"
        "    prev=bytes(32)\n"
        "    for i in range(n):\n"
        "        rec,prev=build_record('mem',0,i,0,'p','t',b'',prev,b'x'*100)\n"
        "        yield StoredRecord(i,rec)\n"
        "r=verify_partition('mem',0,'o/ledger/mem/partition/0',gen(),[],None)\n"
        "assert r.ok and r.entries_checked==n\n"
        # VmHWM, not ru_maxrss: ru_maxrss survives exec and would report the parent's peak.
        "print(next(int(x.split()[1]) for x in open('/proc/self/status') "
        "if x.startswith('VmHWM')))\n"
    )
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", code, str(size)], check=True, capture_output=True, text=True
    ).stdout
    return {
        "entries": size,
        "peak_rss_mb": int(out.strip()) / 1024,
        "seconds": time.perf_counter() - started,
    }


# -- driver ------------------------------------------------------------------------------
def _start_local_broker(workdir: Path):
    here = Path(__file__).resolve().parent.parent / "tools" / "kafka" / "local_kafka.py"
    if not here.exists():
        raise RuntimeError("no broker given (-b) and tools/kafka/local_kafka.py is not here")
    import importlib.util

    spec = importlib.util.spec_from_file_location("streamledger_local_kafka", here)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    module.ensure_installed(quiet=True)
    # Deleted topics' files go 1 s after the deletion, not Kafka's default 60 s: the
    # benchmark deletes each round's topics (a 1 KiB round writes about 2.6 GB), and with
    # 60 s several rounds' worth would sit on the disk at once.
    return module.start_broker(
        port=None,
        data_dir=workdir / "kafka",
        watchdog_pid=os.getpid(),
        extra_config={"file.delete.delay.ms": "1000"},
    )


def run_bench(
    quick: bool,
    bootstrap: str | None,
    extra: dict[str, str],
    output: Path | None,
    anchor: int | None = None,
    timed: Callable[[str], None] = _say,
    repeat: int | None = None,
    cache_dir: Path | None = None,
    only: str | None = None,
    sizes: str | None = None,
) -> dict[str, Any]:
    """Run every measurement of the plan (``quick`` or full) and return (and with ``output``,
    write as JSON) the results. ``repeat``: rounds of each throughput comparison (default: the
    plan's); ``cache_dir``: where the large proof logs are kept between runs; ``only``: a
    comma-separated subset of SECTIONS; ``sizes``: payload sizes of the Kafka rows."""
    plan = QUICK if quick else FULL
    sections = parse_sections(only)
    kafka_sizes = parse_sizes(sizes, plan)
    anchor_entries = plan.anchor_entries if anchor is None else anchor
    repeat = plan.repeat if repeat is None else repeat
    if repeat < 1:
        raise ConfigError(f"--repeat must be at least 1, got {repeat}")
    if anchor_entries < 0:
        raise ConfigError(f"--anchor-entries must be 0 or more, got {anchor_entries}")
    if cache_dir is not None:
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot use cache directory {cache_dir}: {exc}") from None
    key = SigningKey.generate("bench.example/log")
    results: dict[str, Any] = {
        "mode": plan.name,
        "repeat": repeat,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "native_accelerator": _accel.native is not None,
        },
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "sections": list(sections),
    }
    with tempfile.TemporaryDirectory(prefix="streamledger-bench-") as tmp:
        workdir = Path(tmp)
        state = workdir / "cache"
        broker = None
        on_broker = {"kafka", "latency", "fraud"} | ({"anchor"} if anchor_entries else set())
        if bootstrap is None and on_broker & set(sections):
            timed("starting a local Kafka broker")
            broker = _start_local_broker(workdir)
            bootstrap = broker.bootstrap
        try:
            # -- sections on the broker -------------------------------------------------
            if "kafka" in sections:
                timed(
                    "Kafka: raw produce vs ledger append vs sequencer, raw consume vs verify "
                    f"({plan.warmup} warm-up round(s), then the median of {repeat})"
                )
                if plan.broker_warmup_s:
                    timed(f"  warming the broker up: {plan.broker_warmup_s:g} s of traffic")
                    results["kafka_broker_warmup"] = _warm_broker(
                        bootstrap, extra, plan.broker_warmup_s, plan.batch, key, state
                    )
                results["kafka"] = _kafka_rows(
                    bootstrap,
                    extra,
                    plan,
                    key,
                    state,
                    repeat,
                    kafka_sizes,
                    broker_pid=broker.pid if broker is not None else None,
                )
            if anchor_entries and "anchor" in sections:
                if "kafka" not in sections and broker is not None and plan.broker_warmup_s:
                    # a fresh broker is slow until its JIT has warmed up (~30 s of traffic);
                    # in a full run the Kafka section has done that
                    timed(f"  warming the broker up: {plan.broker_warmup_s:g} s of traffic")
                    results["anchor_broker_warmup"] = _warm_broker(
                        bootstrap, extra, plan.broker_warmup_s, plan.batch, key, state
                    )
                timed(f"KafkaBlockchain-shaped run: {anchor_entries:,} entries, 3 partitions")
                results["anchor"] = _anchor_run(bootstrap, extra, anchor_entries, key, state)
            if "latency" in sections:
                timed("Kafka: end-to-end append latency (acks=all)")
                results["append_latency"] = _append_latency(bootstrap, extra, plan, state)
            if plan.fraud_rate and "fraud" in sections:
                from streamledger.fraud.latency import measure_latency

                timed(
                    f"fraud pipeline: {plan.fraud_rate:,} events/s for "
                    f"{plan.fraud_seconds:g} s, alert latency and consumer lag"
                )
                results["fraud_latency"] = measure_latency(
                    bootstrap,
                    plan.fraud_rate,
                    plan.fraud_seconds,
                    config=extra or None,
                    workdir=workdir / "fraud",
                    say=timed,
                )
            # Further broker sections go here, each one key of ``results`` (and a line in
            # format_table).
        finally:
            if broker is not None:
                broker.stop()
        # -- embedded sections ----------------------------------------------------------
        if "sqlite" in sections:
            timed(f"embedded SQLite append and verify (best of {repeat})")
            results["sqlite"] = _sqlite_rows(plan, key, workdir, repeat)
        if "encryption" in sections:
            timed("embedded SQLite: encrypted vs unencrypted append")
            results["encryption"] = _encrypted_append(plan, workdir)
        if "proofs" in sections:
            timed("proof latency (SQLite logs, public Ledger API)")
            results["proofs"] = [
                proof_latency(size, plan.proof_samples, cache_dir, workdir, timed)
                for size in plan.proof_log_sizes
            ]
        if "memory" in sections:
            timed("verify peak memory")
            results["verify_memory"] = [_verify_memory(n) for n in plan.memory_log_sizes]
    results["peak_rss_mb_bench"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if output is not None:
        try:
            output.write_text(json.dumps(results, indent=2) + "\n")
        except OSError as exc:
            raise ConfigError(f"cannot write results to {output}: {exc}") from None
    return results


def format_table(results: dict[str, Any]) -> str:
    """The results as the human-readable table ``streamledger bench`` prints."""
    repeat = results.get("repeat", 1)
    lines = [
        f"streamledger benchmark ({results['mode']} mode, {results['machine']['cpus']} cpus, "
        f"{repeat} interleaved round{'s' if repeat != 1 else ''} per throughput comparison)"
    ]
    lines.append("")
    if results.get("kafka"):
        warm = results["kafka"][0].get("warmup_rounds", 0)
        lines.append(
            "Kafka, same broker, same payloads, transactions of equal size; figures are the "
            f"median of {repeat} round{'s' if repeat != 1 else ''} (after {warm} discarded "
            "warm-up round), ratios median/median"
        )
        lines.append(
            f"{'payload':>8} {'entries':>8} {'raw prod/s':>11} {'append/s':>10} "
            f"{'ratio':>6} {'sequencer/s':>11} {'ratio':>6} {'raw cons/s':>11} {'verify/s':>10} "
            f"{'ratio':>6} {'verify 2p/s':>11} {'ratio':>6}"
        )
    for row in results.get("kafka", []):
        lines.append(
            f"{row['payload_bytes']:>8} {row['entries']:>8} {row['raw_produce_per_s']:>11,.0f} "
            f"{row['ledger_append_per_s']:>10,.0f} {row['append_ratio']:>6.2f} "
            f"{row['sequencer_per_s']:>11,.0f} {row['sequencer_ratio']:>6.2f} "
            f"{row['raw_consume_per_s']:>11,.0f} {row['verify_w1_per_s']:>10,.0f} "
            f"{row['verify_w1_ratio']:>6.2f} {row['verify_w2_per_s']:>11,.0f} "
            f"{row['verify_w2_ratio']:>6.2f}"
        )
    if results.get("kafka"):
        lines.append(
            "verify/s: Ledger.verify in this process; verify 2p/s: workers=2 (partitions "
            "verified in 2 worker processes, start-up included)"
        )
    if results.get("kafka") and repeat > 1:
        lines.append(
            f"best of {repeat}, ratios best/best: "
            + "; ".join(
                f"{row['payload_bytes']} B append {row['best_ratios']['append']:.2f} "
                f"sequencer {row['best_ratios']['sequencer']:.2f} verify "
                f"{row['best_ratios']['verify_w1']:.2f} / "
                f"{row['best_ratios']['verify_w2']:.2f} (2p)"
                for row in results["kafka"]
            )
        )
    if results.get("kafka") and all(row.get("record_bytes") for row in results["kafka"]):
        lines.append(
            "record format: raw produce of messages as long as the ledger's records / raw "
            "produce of the payloads, and ledger append / the former: "
            + "; ".join(
                f"{row['payload_bytes']} B (records of {row['record_bytes']} B) "
                f"{row['record_format_ratio']:.2f}, append {row['append_vs_records_ratio']:.2f}"
                for row in results["kafka"]
            )
        )
    if results.get("kafka"):
        lines.append(
            "headline verify ratio (better configuration): "
            + ", ".join(
                f"{row['payload_bytes']} B {row['verify_ratio']:.2f} "
                f"({row['verify_workers']} process{'es' if row['verify_workers'] > 1 else ''})"
                for row in results["kafka"]
            )
        )
    if "fraud_latency" in results:
        fr = results["fraud_latency"]
        lat, lag = fr["latency_ms"], fr["lag"]

        def sec(ms: float | None) -> str:
            return "-" if ms is None else f"{ms / 1000:.2f} s"

        lines.append(
            f"fraud pipeline at {fr['rate']:,} events/s for {fr['seconds']:g} s (loaded "
            f"{fr['load'].get('achieved_rate', 0):,.0f}/s): {fr['alerts']:,} alerts, latency "
            f"p50 {sec(lat['p50'])} p99 {sec(lat['p99'])} (target < 2 s); lag start "
            f"{lag.get('start', 0):,} end {lag.get('end', 0):,} slope "
            f"{lag.get('slope_per_s', 0):+,.0f}/s -> "
            f"{'keeps up' if fr['keeps_up'] else 'falls behind'}"
        )
    if "append_latency" in results:
        lat = results["append_latency"]
        lines.append(
            f"single append latency (acks=all): p50 {lat['p50_ms']:.2f} ms, "
            f"p99 {lat['p99_ms']:.2f} ms"
        )
    lines.append("")
    if "sqlite" in results:
        sq = results["sqlite"]
        lines.append(
            f"SQLite ({sq['entries']:,} x 100 B, best of {sq.get('repeat', 1)}): append "
            f"{sq['append_per_s']:,.0f}/s, verify {sq['verify_per_s']:,.0f}/s"
        )
    if "encryption" in results:
        en = results["encryption"]
        lines.append(
            f"SQLite encrypted append (AES-256-GCM): {en['encrypted_append_per_s']:,.0f}/s vs "
            f"{en['plain_append_per_s']:,.0f}/s unencrypted -> cost {en['cost_ratio']:.2f}x "
            "(target <= 1.3x)"
        )
    for row in results.get("proofs", []):
        built = (
            "reused from the cache"
            if row.get("reused")
            else f"built in {row['build_s']:.0f} s"
            if row.get("build_s") is not None
            else ""
        )
        lines.append(
            f"proofs on {row['log_size']:,} entries (SQLite, {built}): inclusion p50 "
            f"{row['inclusion_p50_ms']:.3f} ms p99 {row['inclusion_p99_ms']:.3f} ms; "
            f"consistency p50 {row['consistency_p50_ms']:.3f} ms p99 "
            f"{row['consistency_p99_ms']:.3f} ms (CPU time p99: inclusion "
            f"{row['inclusion_cpu_p99_ms']:.3f} ms, consistency "
            f"{row['consistency_cpu_p99_ms']:.3f} ms)"
        )
    if "anchor" in results:
        a = results["anchor"]
        lines.append(
            f"KafkaBlockchain-shaped run, {a['entries']:,} entries x 3 partitions: produce "
            f"{a['produce_s']:.0f} s, verify {a['verify_s']:.0f} s (per 10M: "
            f"{a['produce_s_per_10m']:.0f} s / {a['verify_s_per_10m']:.0f} s; published Java "
            f"anchor {ANCHOR_PRODUCE_S:.0f} s / {ANCHOR_VERIFY_S:.0f} s -> "
            f"{a['produce_speedup']:.2f}x / {a['verify_speedup']:.2f}x)"
        )
    for row in results.get("verify_memory", []):
        lines.append(f"verify peak RSS at {row['entries']:,} entries: {row['peak_rss_mb']:.1f} MB")
    return "\n".join(lines)
