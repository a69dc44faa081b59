"""Larger appends, and ``kill -9`` of an appending process: the store stays whole."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing, suppress

from tests.cli.conftest import ENV, LEDGER_DB, make_ledger, ok


def _line(i: int) -> str:
    return json.dumps({"i": i, "pad": "x" * (i % 97), "end": i})


def test_append_5000_then_verify(tmp_path):
    data = tmp_path / "data"
    vkey = make_ledger(data, "big", partitions=4)
    lines = "".join(_line(i) + "\n" for i in range(5000))
    assert "appended 5000 entries" in ok("append", "big", data_dir=data, stdin=lines).err
    ok("checkpoint", "big", data_dir=data)
    report = json.loads(ok("verify", "big", "--vkey", vkey, "--json", data_dir=data).out)
    assert report["ok"] is True and report["entries_checked"] == 5000
    assert sum(p["entries_checked"] for p in report["partitions"]) == 5000
    assert all(p["entries_checked"] > 0 for p in report["partitions"])


def _stored(db) -> int:
    try:
        with closing(sqlite3.connect(db, timeout=5)) as conn:
            return conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_kill_9_mid_append_leaves_a_whole_store(tmp_path):
    data = tmp_path / "data"
    vkey = make_ledger(data, "crash", partitions=1)
    ok("append", "crash", data_dir=data, stdin="before the crash\n")
    ok("checkpoint", "crash", data_dir=data)
    batch = 40
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamledger",
            "--data-dir",
            str(data),
            "append",
            "crash",
            "--batch-size",
            str(batch),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=ENV,
    )
    stop = threading.Event()

    def feed() -> None:
        # slowly: a few lines at a time, so the kill lands while input is still arriving
        i = 0
        try:
            while not stop.is_set():
                chunk = "".join(_line(n) + "\n" for n in range(i, i + 7))
                proc.stdin.write(chunk.encode())
                proc.stdin.flush()
                i += 7
                time.sleep(0.0005)
        except (BrokenPipeError, OSError, ValueError):
            pass

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    db = data / LEDGER_DB
    deadline = time.monotonic() + 20
    while _stored(db) < 1 + 5 * batch and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read().decode()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    stop.set()
    feeder.join(timeout=5)
    assert proc.returncode == -signal.SIGKILL
    proc.stderr.close()
    with suppress(BrokenPipeError):
        proc.stdin.close()

    # the store verifies; every stored entry is whole and in order; batches are atomic
    report = json.loads(ok("verify", "crash", "--vkey", vkey, "--json", data_dir=data).out)
    assert report["ok"] is True, report
    rows = [json.loads(x) for x in ok("read", "crash", "--json", data_dir=data).out.splitlines()]
    assert report["entries_checked"] == len(rows) > 1 + 5 * batch - 1
    assert rows[0]["payload"] == "before the crash"
    appended = [r["payload"] for r in rows[1:]]
    assert appended == [_line(i) for i in range(len(appended))]
    assert len(appended) % batch == 0, len(appended)
    # and it still takes appends and checkpoints afterwards
    ok("append", "crash", data_dir=data, stdin="after the crash\n")
    ok("checkpoint", "crash", data_dir=data)
    assert json.loads(ok("verify", "crash", "--vkey", vkey, "--json", data_dir=data).out)["ok"]
