"""``streamledger bench --only`` / ``--sizes``: only the chosen sections run (no broker is
started for embedded-only sections), and bad names are refused naming the valid ones."""

import subprocess
import sys

import pytest

from streamledger.bench import QUICK, SECTIONS, format_table, parse_sections, parse_sizes, run_bench
from streamledger.errors import ConfigError


def test_only_embedded_sections_run_without_a_broker(tmp_path):
    results = run_bench(
        True, None, {}, tmp_path / "r.json", timed=lambda _: None, only="sqlite,proofs"
    )
    assert results["sections"] == ["sqlite", "proofs"]
    assert "kafka" not in results and "append_latency" not in results
    assert "encryption" not in results and "verify_memory" not in results
    assert results["sqlite"]["entries"] == QUICK.sqlite_entries
    assert [row["log_size"] for row in results["proofs"]] == list(QUICK.proof_log_sizes)
    table = format_table(results)
    assert "SQLite (" in table and "proofs on" in table and "raw prod/s" not in table


def test_bad_sections_and_sizes_are_refused():
    assert parse_sections(None) == SECTIONS
    assert parse_sections("proofs, kafka") == ("proofs", "kafka")
    with pytest.raises(ConfigError, match="unknown section 'nope'.*choose from kafka"):
        parse_sections("kafka,nope")
    assert parse_sizes("10240", QUICK) == (10240,)
    with pytest.raises(ConfigError, match="--sizes: 7 not measured"):
        parse_sizes("100,7", QUICK)
    with pytest.raises(ConfigError, match="comma-separated byte counts"):
        parse_sizes("big", QUICK)


def test_cli_refuses_an_unknown_section_without_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "streamledger", "bench", "--quick", "--only", "fast"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "unknown section 'fast'" in proc.stderr and "Traceback" not in proc.stderr
