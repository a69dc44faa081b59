"""The fraud pipeline on a real broker: kill -9 mid-stream, restart, no alert lost or doubled."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from streamledger.backends.kafka import KafkaBackend
from streamledger.fraud.detectors import default_thresholds
from streamledger.fraud.events import Event
from streamledger.ledger import AppendItem, Ledger

REPO = Path(__file__).resolve().parents[2]
T0 = 1_714_550_400_000
CUSTOMERS = 400
# Withdrawals per customer burst: above the default velocity threshold, whatever it is tuned to.
VELOCITY_BURST = default_thresholds()["withdrawal_velocity"]["min_count"] + 2


def _events() -> list[tuple[str, bytes]]:
    """CUSTOMERS customers, each with one burst of withdrawals above the default velocity
    threshold (one velocity incident) after an honest login; in event-time order."""
    out = []
    for minute in range(0, CUSTOMERS * 2, 2):
        c = f"c{minute // 2:04d}"
        base = T0 + minute * 60_000
        out.append((base, c, "login", {"ip": "1.2.3.4", "country": "DE", "device_id": c}))
        for i in range(VELOCITY_BURST):
            fields = {"asset": "USDT", "amount_usd": 300.0, "address": f"{c}-w{i}"}
            out.append((base + 1000 + i * 5000, c, "withdrawal", fields))
    out.sort(key=lambda e: e[0])
    items = []
    for n, (ts, c, kind, fields) in enumerate(out):
        ev = Event.make(event_id=f"e{n}", ts_ms=ts, customer_id=c, type=kind, **fields)
        items.append((c, ev.to_json()))
    return items


def _cli(bootstrap: str, data: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "streamledger", "--data-dir", str(data), "-b", bootstrap,
            "fraud", "run", *args]  # fmt: skip


def _start(cmd: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=open(log, "w"),
        env=env,
        cwd=REPO,  # noqa: SIM115
    )


def _payloads(backend: KafkaBackend, name: str) -> list[dict]:
    ledger = Ledger(backend, name)
    return [json.loads(e.payload) for p in range(ledger.partitions) for e in ledger.read(p)]


def test_kill_9_mid_stream_then_restart_loses_and_duplicates_no_alert(kafka_bootstrap, tmp_path):
    tag = uuid.uuid4().hex[:8]
    names = {k: f"fraud-{k}-{tag}" for k in ("input", "suspicious", "alerts")}
    backend = KafkaBackend(kafka_bootstrap, state_dir=tmp_path / "cache")
    try:
        ledger = Ledger.create(backend, names["input"], partitions=2)
        events = _events()
        for start in range(0, len(events), 500):
            chunk = events[start : start + 500]
            ledger.append_many(
                [AppendItem(raw, c.encode(), "application/json") for c, raw in chunk]
            )
        data = tmp_path / "data"
        args = ["--input", names["input"], "--suspicious", names["suspicious"]]
        args += ["--alerts", names["alerts"], "--group", f"g-{tag}", "--batch-size", "40"]
        log1 = tmp_path / "run1.log"
        proc = _start(_cli(kafka_bootstrap, data, *args, "--until-idle", "30"), log1)
        try:
            deadline = time.monotonic() + 90
            while True:
                assert proc.poll() is None, log1.read_text()
                assert time.monotonic() < deadline, "no alert appeared"
                if names["alerts"] in backend.list_ledgers():
                    alerts = Ledger(backend, names["alerts"])
                    alerts.forget_heads()
                    if alerts.size(0) >= 20:
                        break
                time.sleep(0.2)
            os.kill(proc.pid, signal.SIGKILL)  # mid-stream, most likely mid-transaction
            proc.wait(30)
        finally:
            proc.kill()
        seen = _payloads(backend, names["alerts"])
        assert 0 < len(seen) < CUSTOMERS, "the kill should land mid-stream"

        log2 = tmp_path / "run2.log"
        proc = _start(_cli(kafka_bootstrap, data, *args, "--until-idle", "3"), log2)
        try:
            assert proc.wait(120) == 0, log2.read_text()
        finally:
            proc.kill()
        assert "fraud run:" in log2.read_text()

        reader = KafkaBackend(kafka_bootstrap, state_dir=tmp_path / "cache2")
        try:
            alerts = _payloads(reader, names["alerts"])
            ids = [a["alert_id"] for a in alerts]
            assert len(ids) == len(set(ids)), "an alert was written twice"
            velocity = {
                a["customer_ids"][0] for a in alerts if a["pattern"] == "withdrawal_velocity"
            }
            assert velocity == {f"c{i:04d}" for i in range(CUSTOMERS)}, log2.read_text()[-3000:]
            assert len(alerts) == CUSTOMERS
            susp = _payloads(reader, names["suspicious"])
            assert sorted(s["alert_id"] for s in susp) == sorted(ids)
            # both output ledgers are sound chains (the suspicious entries were built on the
            # ledger's head and produced inside the alerts ledger's transactions)
            for name in (names["alerts"], names["suspicious"]):
                report = Ledger(reader, name).verify()
                assert report.ok, report.findings
        finally:
            reader.close()
    finally:
        backend.close()


def test_fraud_bench_measures_alert_latency_and_lag_of_one_run(kafka_bootstrap, tmp_path):
    """A brief, slow run of the latency benchmark: structure, alerts from this run, their
    latencies, lag samples. No timing assertions (the machine may be busy)."""
    from streamledger.fraud.latency import measure_latency, render

    result = measure_latency(
        kafka_bootstrap,
        300,
        8,
        partitions=2,
        customers=200,
        batch_size=500,
        workdir=tmp_path / "bench",
        say=lambda _text: None,
    )
    for key in ("rate", "seconds", "load", "alerts", "latency_ms", "lag", "drain_s", "keeps_up"):
        assert key in result, key
    assert result["load"]["produced"] > 0
    assert result["alerts"] > 0, result["pipeline"]
    lat = result["latency_ms"]
    assert lat["alerts"] > 0 and lat["p50"] is not None and lat["p99"] >= lat["p50"]
    # event time was set to the wall clock of this run: latencies are seconds, not the
    # months since a simulated 2024 start
    assert lat["p50"] >= 0 and lat["max"] < 600_000
    assert result["lag"]["samples"] > 0 and result["lag"]["max"] >= 0
    assert "latency p99" in render(result)
    # the ledgers are this run's own
    backend = KafkaBackend(kafka_bootstrap, state_dir=tmp_path / "cache")
    try:
        alerts = _payloads(backend, result["ledgers"]["alerts"])
        assert len(alerts) == result["alerts"]
        started = result["load"]["started"]
        assert all(a["last_ts"] >= started for a in alerts if a["pattern"] != "integrity")
    finally:
        backend.close()
