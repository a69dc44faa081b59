"""How ``streamledger bench`` turns the Kafka samples into a row: the warm-up round is kept
apart and not counted, every figure is the median of the measured rounds (not the best,
which favours the noisier side), ratios are ratios of medians, and the best samples, their
ratios and the per-round ratios are kept beside them. No broker, no timing."""

import pytest

from streamledger.bench import (
    FULL,
    KAFKA_SAMPLES,
    QUICK,
    _kafka_row,
    _round_order,
    format_table,
)


def _samples(**values):
    return {name: list(values.get(name, [1.0, 1.0, 1.0])) for name in KAFKA_SAMPLES}


def test_figures_are_medians_and_ratios_are_ratios_of_medians():
    samples = _samples(
        raw_produce_per_s=[100.0, 300.0, 200.0],  # one lucky round: best 300, median 200
        ledger_append_per_s=[150.0, 170.0, 160.0],
        sequencer_per_s=[90.0, 110.0, 100.0],
        raw_consume_per_s=[1000.0, 1000.0, 1000.0],
        verify_w1_per_s=[500.0, 700.0, 600.0],
        verify_w2_per_s=[800.0, 100.0, 400.0],
    )
    warmup = _samples(raw_produce_per_s=[10.0], ledger_append_per_s=[9_999.0])
    row = _kafka_row(1024, 5000, samples, warmup)
    assert row["statistic"] == "median"
    assert row["repeat"] == 3 and row["warmup_rounds"] == 1
    assert row["bytes_per_sample"] == 1024 * 5000
    assert row["raw_produce_per_s"] == 200.0
    assert row["ledger_append_per_s"] == 160.0
    assert row["append_ratio"] == pytest.approx(0.8)
    assert row["sequencer_ratio"] == pytest.approx(0.5)
    # the headline verify figure is the configuration with the better median (not the one
    # with the single best sample, 800)
    assert row["verify_workers"] == 1
    assert row["verify_per_s"] == 600.0 and row["verify_ratio"] == pytest.approx(0.6)
    # best samples and their ratios are kept, not reported as the figure
    assert row["best"]["raw_produce_per_s"] == 300.0
    assert row["best"]["verify_w2_per_s"] == 800.0
    assert row["best_ratios"]["append"] == pytest.approx(170 / 300)
    # per-round ratios pair the two sides of the same round
    assert row["round_ratios"]["append"] == pytest.approx([1.5, 170 / 300, 0.8])
    # every sample is kept, and the warm-up round is not counted in any figure
    assert row["samples"] == samples and row["warmup_samples"] == warmup
    assert 10.0 not in row["samples"]["raw_produce_per_s"]


def test_an_even_number_of_rounds_takes_the_middle_two():
    row = _kafka_row(100, 10, _samples(**{n: [1.0, 3.0] for n in KAFKA_SAMPLES}), _samples())
    assert row["raw_produce_per_s"] == 2.0 and row["append_ratio"] == 1.0


def test_round_order_alternates_over_the_measured_rounds():
    steps = ["raw", "append", "sequencer"]
    assert _round_order(steps, None) == steps  # the warm-up round
    assert _round_order(steps, 0) == steps
    assert _round_order(steps, 1) == steps[::-1]
    assert _round_order(steps, 2) == steps
    # over an even number of measured rounds each side goes first equally often
    firsts = [_round_order(steps, i)[0] for i in range(4)]
    assert firsts.count("raw") == firsts.count("sequencer") == 2


def test_plans_warm_up_and_full_samples_are_seconds_long():
    assert QUICK.warmup == FULL.warmup == 1
    assert FULL.repeat >= 3  # a median needs at least three rounds
    # full-mode samples: at least 600,000 entries or 1 GB of payload each
    for size, entries in FULL.kafka_entries.items():
        assert entries >= 600_000 or entries * size >= 10**9, size


def test_table_says_median_and_shows_the_best_ratios_too():
    samples = _samples(
        raw_produce_per_s=[100.0, 300.0, 200.0], ledger_append_per_s=[150.0, 170.0, 160.0]
    )
    warmup = {name: [1.0] for name in KAFKA_SAMPLES}
    results = {
        "mode": "full",
        "repeat": 3,
        "machine": {"cpus": 2},
        "kafka": [_kafka_row(1024, 5000, samples, warmup)],
    }
    table = format_table(results)
    assert "median of 3 rounds" in table and "1 discarded warm-up round" in table
    assert "ratios median/median" in table
    assert "best of 3, ratios best/best: 1024 B append 0.57" in table
    # the row's ratio column is the median one (160 / 200)
    assert "0.80" in table.split("raw prod/s")[1].splitlines()[1]


def test_a_rounds_topics_are_its_ledgers_with_their_suffixed_topics_only():
    from streamledger.bench import _topics_of

    topics = [
        "raw-b1-1",
        "raw-b1-1.checkpoints",
        "raw-b1-10",  # another round's (index 10): not a prefix match
        "ledger-b1-1",
        "ledger-b1-1.history",
        "seq-b1-1",
        "seq-b1-1.rejects",
        "intake-b1-1",
        "ledger-b1-0",  # the ledger kept for verification
        "ledger-b1-0.checkpoints",
        "__consumer_offsets",
    ]
    bases = ["raw-b1-1", "ledger-b1-1", "seq-b1-1", "intake-b1-1"]
    assert _topics_of(topics, bases) == [
        "intake-b1-1",
        "ledger-b1-1",
        "ledger-b1-1.history",
        "raw-b1-1",
        "raw-b1-1.checkpoints",
        "seq-b1-1",
        "seq-b1-1.rejects",
    ]


def test_cpu_meter_accounts_the_benchmark_process_and_the_broker():
    import subprocess
    import sys
    import time

    from streamledger.bench import _CpuMeter

    meter = _CpuMeter()
    meter.start()
    burnt = time.process_time()
    while time.process_time() - burnt < 0.2:  # burn CPU in this process
        pass
    alone = meter.stop()
    assert alone["bench_cpu_s"] >= 0.1 and alone["wall_s"] > 0
    # without a broker pid, neither the broker's nor the others' share is known
    assert alone["broker_cpu_s"] is None and alone["other_cpu_s"] is None

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        meter = _CpuMeter(sleeper.pid)
        meter.start()
        stopped = meter.stop()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert stopped["broker_cpu_s"] is not None and stopped["broker_cpu_s"] >= 0
    assert stopped["other_cpu_s"] is not None and stopped["other_cpu_s"] >= 0


@pytest.mark.parametrize("size", [0, 100, 1024, 10240])
def test_record_bytes_is_the_length_of_what_the_ledger_stores(size) -> None:
    """The bench's raw 'ledger-sized messages' are as long as the records the ledger writes."""
    import os

    from streamledger.backends.memory import MemoryBackend
    from streamledger.bench import record_bytes
    from streamledger.ledger import Ledger

    ledger = Ledger.create(MemoryBackend(), "ledger-bench1024xdeadbeef-3", partitions=3)
    payload = os.urandom(size)
    ledger.append_many([payload], partition=2)
    (stored,) = ledger.backend.partition_records(ledger.name, 2)
    assert record_bytes(ledger, payload) == len(stored) > size
