"""The benchmark's quick mode, once, as a smoke test: it must run end to end on the real
broker and produce complete results. No timing is asserted (timings belong to the benchmark)."""

import json

import pytest

from streamledger.bench import QUICK, format_table, run_bench

pytestmark = pytest.mark.kafka


def test_quick_benchmark_runs_and_reports_every_measurement(kafka_bootstrap, tmp_path):
    output = tmp_path / "bench.json"
    results = run_bench(True, kafka_bootstrap, {}, output, anchor=6_000, timed=lambda _: None)

    saved = json.loads(output.read_text())
    assert saved["mode"] == "quick"
    rows = {row["payload_bytes"]: row for row in saved["kafka"]}
    assert set(rows) == set(QUICK.sizes)
    for size, row in rows.items():
        assert row["entries"] == QUICK.kafka_entries[size]
        for field in (
            "raw_produce_per_s",
            "ledger_append_per_s",
            "raw_consume_per_s",
            "verify_per_s",
        ):
            assert row[field] > 0, (size, field)
        assert row["sequencer_per_s"] > 0
        assert row["append_ratio"] == pytest.approx(
            row["ledger_append_per_s"] / row["raw_produce_per_s"]
        )
    assert saved["anchor"]["entries"] == 6_000
    assert saved["sqlite"]["entries"] == QUICK.sqlite_entries
    assert saved["proofs"][0]["log_size"] == QUICK.proof_log_sizes[0]
    # Memory of verification does not depend on the log size; it is a fixed budget.
    assert all(row["peak_rss_mb"] < 200 for row in saved["verify_memory"])
    table = format_table(results)
    assert "ratio" in table and "KafkaBlockchain-shaped run" in table
