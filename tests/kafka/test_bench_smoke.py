"""The benchmark's quick mode, once, as a smoke test: it must run end to end on the real
broker and produce complete results. No timing is asserted (timings belong to the benchmark);
the structure is: every measurement present, every sample kept, and every ratio computed from
the same run's figures."""

import json
import statistics

import pytest

from streamledger.bench import QUICK, format_table, run_bench

pytestmark = pytest.mark.kafka

KAFKA_SAMPLES = (
    "raw_produce_per_s",
    "ledger_append_per_s",
    "sequencer_per_s",
    "raw_consume_per_s",
    "verify_w1_per_s",
    "verify_w2_per_s",
    "raw_records_per_s",
)


def test_quick_benchmark_runs_and_reports_every_measurement(kafka_bootstrap, tmp_path):
    output = tmp_path / "bench.json"
    cache = tmp_path / "cache"
    results = run_bench(
        True,
        kafka_bootstrap,
        {},
        output,
        anchor=6_000,
        timed=lambda _: None,
        repeat=2,
        cache_dir=cache,
    )

    saved = json.loads(output.read_text())
    assert saved["mode"] == "quick" and saved["repeat"] == 2
    # the broker was warmed up first: at least one chunk of each side, kept in the JSON
    warm = saved["kafka_broker_warmup"]
    assert warm["seconds"] >= QUICK.broker_warmup_s
    for name in KAFKA_SAMPLES[:3]:
        assert len(warm[name]) >= 1 and all(value > 0 for value in warm[name]), name
    rows = {row["payload_bytes"]: row for row in saved["kafka"]}
    assert set(rows) == set(QUICK.sizes)
    for size, row in rows.items():
        assert row["entries"] == QUICK.kafka_entries[size]
        assert row["repeat"] == 2 and row["warmup_rounds"] == QUICK.warmup == 1
        samples = row["samples"]
        assert set(samples) == set(KAFKA_SAMPLES) == set(row["warmup_samples"])
        for name in KAFKA_SAMPLES:
            # every measured round's sample is kept, and the figure is their median; the
            # warm-up round's sample is kept apart; the best is kept too
            assert len(samples[name]) == 2, (size, name)
            assert len(row["warmup_samples"][name]) == 1, (size, name)
            assert all(value > 0 for value in samples[name]), (size, name)
            assert row[name] == pytest.approx(statistics.median(samples[name])), (size, name)
            assert row["best"][name] == max(samples[name]), (size, name)
        # ratios are ratios of this run's medians
        assert row["append_ratio"] == pytest.approx(
            row["ledger_append_per_s"] / row["raw_produce_per_s"]
        )
        assert row["sequencer_ratio"] == pytest.approx(
            row["sequencer_per_s"] / row["raw_produce_per_s"]
        )
        # the record format's own cost: raw produce of messages as long as the ledger's
        # records (a header of ledger name, seq, hashes... on top of the payload)
        assert row["record_bytes"] > size + 64
        assert row["record_format_ratio"] == pytest.approx(
            row["raw_records_per_s"] / row["raw_produce_per_s"]
        )
        assert row["append_vs_records_ratio"] == pytest.approx(
            row["ledger_append_per_s"] / row["raw_records_per_s"]
        )
        for workers in (1, 2):
            assert row[f"verify_w{workers}_ratio"] == pytest.approx(
                row[f"verify_w{workers}_per_s"] / row["raw_consume_per_s"]
            )
        # the headline verify figure is the better configuration, and says which
        assert row["verify_workers"] in (1, 2)
        assert row["verify_per_s"] == row[f"verify_w{row['verify_workers']}_per_s"]
        assert row["verify_per_s"] == max(row["verify_w1_per_s"], row["verify_w2_per_s"])
        assert len(row["round_ratios"]["append"]) == 2
        # the CPU spent during each measured sample (the broker's: not known, given with -b)
        for name in KAFKA_SAMPLES:
            assert len(row["cpu"][name]) == 2, (size, name)
            assert all(c["bench_cpu_s"] >= 0 and c["wall_s"] > 0 for c in row["cpu"][name])
        assert row["verify_ratio"] == pytest.approx(row["verify_per_s"] / row["raw_consume_per_s"])
    assert saved["anchor"]["entries"] == 6_000
    assert saved["anchor"]["produce_s"] > 0 and saved["anchor"]["verify_s"] > 0
    assert saved["append_latency"]["p99_ms"] >= saved["append_latency"]["p50_ms"] > 0
    sqlite = saved["sqlite"]
    assert sqlite["entries"] == QUICK.sqlite_entries
    assert len(sqlite["samples"]["append_per_s"]) == len(sqlite["samples"]["verify_per_s"]) == 2
    assert sqlite["append_per_s"] == max(sqlite["samples"]["append_per_s"])
    assert saved["encryption"]["cost_ratio"] > 0
    proofs = saved["proofs"]
    assert [row["log_size"] for row in proofs] == list(QUICK.proof_log_sizes)
    for row in proofs:
        assert row["backend"] == "sqlite" and not row["reused"] and row["build_s"] > 0
        for kind in ("inclusion", "consistency"):
            assert row[f"{kind}_p99_ms"] >= row[f"{kind}_p50_ms"] > 0
    # Memory of verification does not depend on the log size; it is a fixed budget.
    assert [row["entries"] for row in saved["verify_memory"]] == list(QUICK.memory_log_sizes)
    assert all(row["peak_rss_mb"] < 200 for row in saved["verify_memory"])
    table = format_table(results)
    assert "median of 2 rounds" in table and "best of 2" in table and "ratio" in table
    assert "KafkaBlockchain-shaped run" in table
    assert "record format" in table and f"(records of {rows[100]['record_bytes']} B)" in table
    assert "2 worker processes" in table or "workers=2" in table
    for row in proofs:
        assert f"proofs on {row['log_size']:,} entries" in table


def test_proof_log_is_reused_from_the_cache_once_complete(tmp_path):
    """--cache-dir: a complete log is reused; a damaged or partial one is rebuilt."""
    from streamledger._bench_proofs import proof_latency

    cache = tmp_path / "cache"
    first = proof_latency(3_000, 20, cache, tmp_path, lambda _: None)
    again = proof_latency(3_000, 20, cache, tmp_path, lambda _: None)
    assert not first["reused"] and again["reused"] and again["build_s"] is None
    (cache / "proof-log-3000" / "ledger.db").write_bytes(b"not a database")
    rebuilt = proof_latency(3_000, 20, cache, tmp_path, lambda _: None)
    assert not rebuilt["reused"] and rebuilt["build_s"] > 0
