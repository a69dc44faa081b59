"""Every ledger command of the CLI against the real Kafka broker (``-b``), through the real
program in subprocesses: init, append, read, checkpoint, verify, prove, proof verify, demo."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest
from confluent_kafka import Producer

pytestmark = pytest.mark.kafka


def _run(data_dir, bootstrap, *args, stdin: str | None = None, expect: int = 0):
    proc = subprocess.run(
        [sys.executable, "-m", "streamledger", "--data-dir", str(data_dir), "-b", bootstrap, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == expect, (args, proc.returncode, proc.stdout, proc.stderr)
    return proc


def test_every_ledger_command_works_on_kafka(kafka_bootstrap, tmp_path):
    ledger = f"cli-{uuid.uuid4().hex[:8]}"
    vkey = _run(tmp_path, kafka_bootstrap, "keys", "generate", "cli.example/log").stdout.strip()
    _run(
        tmp_path,
        kafka_bootstrap,
        "init",
        ledger,
        "--partitions",
        "2",
        "--signing-key",
        "cli.example/log",
    )
    lines = [json.dumps({"n": i}) for i in range(50)]
    _run(
        tmp_path,
        kafka_bootstrap,
        "append",
        ledger,
        "--key",
        "acct-7",
        stdin="\n".join(lines) + "\n",
    )
    receipts = [
        json.loads(line)
        for line in _run(
            tmp_path,
            kafka_bootstrap,
            "append",
            ledger,
            "--partition",
            "1",
            "--json",
            stdin="x\ny\n",
        ).stdout.splitlines()
    ]
    assert [(r["partition"], r["offset"] >= 0) for r in receipts] == [(1, True), (1, True)]

    read = []
    for partition in (0, 1):
        out = _run(tmp_path, kafka_bootstrap, "read", ledger, "-p", str(partition), "--json")
        read += [json.loads(line) for line in out.stdout.splitlines()]
    assert sorted(r["payload"] for r in read) == sorted(lines + ["x", "y"])

    notes = _run(tmp_path, kafka_bootstrap, "checkpoint", ledger).stdout
    assert notes.count(f"streamledger.local/ledger/{ledger}/partition/") == 2

    report = json.loads(
        _run(tmp_path, kafka_bootstrap, "verify", ledger, "--vkey", vkey, "--json").stdout
    )
    assert report["ok"] and report["entries_checked"] == 52

    partition = receipts[0]["partition"]
    proof = tmp_path / "proof.json"
    _run(
        tmp_path,
        kafka_bootstrap,
        "prove",
        "inclusion",
        ledger,
        "-p",
        str(partition),
        "--seq",
        str(receipts[0]["seq"]),
        "-o",
        str(proof),
    )
    _run(tmp_path, kafka_bootstrap, "proof", "verify", str(proof), "--vkey", vkey)
    size = report["partitions"][partition]["tree_size"]
    consistency = json.loads(
        _run(
            tmp_path,
            kafka_bootstrap,
            "prove",
            "consistency",
            ledger,
            "-p",
            str(partition),
            "--old-size",
            "1",
            "--json",
        ).stdout
    )
    assert consistency["new_size"] == size

    # A rogue producer writes straight into the ledger topic: verify names it, exit 1.
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(ledger, b"not an entry", partition=partition)
    producer.flush(10)
    tampered = json.loads(
        _run(tmp_path, kafka_bootstrap, "verify", ledger, "--vkey", vkey, "--json", expect=1).stdout
    )
    findings = [f for p in tampered["partitions"] for f in p["findings"]]
    assert [(f["kind"], f["partition"]) for f in findings] == [("malformed", partition)]
    assert findings[0]["offset"] is not None


def test_demo_on_kafka_detects_the_forged_payment(kafka_bootstrap, tmp_path):
    out = _run(tmp_path, kafka_bootstrap, "demo", "--kafka", "--entries", "1000").stdout
    assert "TAMPERING FOUND" in out
    assert "inserted" in out
    assert "entry 42 is included" in out


def test_unreachable_broker_is_a_clear_error(tmp_path):
    proc = _run(
        tmp_path,
        "127.0.0.1:1",
        "-X",
        "socket.connection.setup.timeout.ms=2000",
        "ledgers",
        expect=2,
    )
    assert "127.0.0.1:1" in proc.stderr
