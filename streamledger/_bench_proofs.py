"""Proof latency for ``streamledger bench``: inclusion and consistency proofs through the public
:class:`~streamledger.ledger.Ledger` API on logs of 1M and 10M entries in the embedded SQLite
backend.

A log is built once per size through the real append path (``Ledger.append_stream``, native
accelerator, large batches) into a scratch store (``durable=False``: no fsync per commit),
then signed at its full size. With a cache directory, a later run reuses the store after
checking it is complete: the partition holds exactly the expected number of entries and an
inclusion proof of the last entry verifies offline against a signed checkpoint of that size.
"""

from __future__ import annotations

import gc
import os
import random
import resource
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from streamledger.backends.sqlite import SQLiteBackend
from streamledger.core.note import SigningKey, VerifierKey
from streamledger.errors import StreamledgerError
from streamledger.ledger import Ledger

LEDGER = "proofs"
#: Entries per append batch while building (one SQLite transaction each).
BUILD_BATCH = 50_000
#: getrusage of the calling thread only (Linux); the whole process elsewhere.
_RUSAGE_THREAD = getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF)
#: Payload of every entry; its size hardly matters for proofs (they read headers and nodes).
PAYLOAD = b"p" * 32


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _disturbances() -> tuple[int, int, int]:
    """This thread's involuntary and voluntary context switches and the collections the
    garbage collector has run so far."""
    usage = resource.getrusage(_RUSAGE_THREAD)
    return usage.ru_nivcsw, usage.ru_nvcsw, sum(g["collections"] for g in gc.get_stats())


def _since(before: tuple[int, int, int]) -> tuple[int, int, int]:
    return tuple(b - a for a, b in zip(before, _disturbances(), strict=True))  # type: ignore[return-value]


def _tail(samples: list[float], why: list[tuple[int, int, int]]) -> dict[str, Any]:
    """Where the slowest 1% of ``samples`` (ms) went: how many of them were preempted,
    blocked or ran a collection, and the p99 of the proofs that were none of these."""
    cut = _pct(samples, 0.99)
    slow = [w for s, w in zip(samples, why, strict=True) if s >= cut]
    quiet = [s for s, w in zip(samples, why, strict=True) if not any(w)]
    return {
        "slowest": len(slow),
        "preempted": sum(1 for w in slow if w[0]),
        "blocked": sum(1 for w in slow if w[1]),
        "collected": sum(1 for w in slow if w[2]),
        "undisturbed_share": round(len(quiet) / len(samples), 4),
        "undisturbed_p99_ms": _pct(quiet, 0.99) if quiet else None,
    }


def _complete(directory: Path, size: int) -> bool:
    """Whether ``directory`` holds a finished proof log of ``size`` entries."""
    if not (directory / "ledger.db").exists():
        return False
    try:
        backend = SQLiteBackend(directory, create=False)
    except StreamledgerError:
        return False
    try:
        ledger = Ledger(backend, LEDGER)
        if ledger.size(0) != size or not ledger.config.log_vkey:
            return False
        proof = ledger.prove_inclusion(0, size - 1)
        if proof.tree_size != size:
            return False
        proof.verify([VerifierKey.parse(ledger.config.log_vkey)])
        return True
    except Exception:  # noqa: BLE001 - anything wrong with a cached store means: rebuild it
        return False
    finally:
        backend.close()


def build_log(directory: Path, size: int, say: Callable[[str], None]) -> float:
    """Build a ``size``-entry log in a fresh store at ``directory``; returns seconds taken."""
    if directory.exists():
        shutil.rmtree(directory)
    backend = SQLiteBackend(directory, durable=False)
    try:
        ledger = Ledger.create(backend, LEDGER, signer=SigningKey.generate("bench.example/proofs"))
        started = time.perf_counter()
        payloads = (PAYLOAD for _ in range(size))
        step = max(1_000_000, size // 10)
        for done, _ in enumerate(ledger.append_stream(payloads, batch_size=BUILD_BATCH), 1):
            if done % step == 0 and done < size:
                rate = done / (time.perf_counter() - started)
                say(f"    {done:,} of {size:,} entries ({rate:,.0f}/s)")
        ledger.checkpoint()
        return time.perf_counter() - started
    finally:
        backend.close()


def proof_latency(
    size: int,
    samples: int,
    cache_dir: Path | None,
    workdir: Path,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Inclusion and consistency proof latency (ms, p50/p99 over ``samples`` random proofs
    each) on a ``size``-entry SQLite log, built or reused from ``cache_dir``."""
    directory = (cache_dir or workdir) / f"proof-log-{size}"
    build_s: float | None = None
    if cache_dir is not None and _complete(directory, size):
        say(f"  reusing the {size:,}-entry proof log in {directory}")
    else:
        say(f"  building a {size:,}-entry proof log in SQLite ({directory})")
        build_s = build_log(directory, size, say)
        say(f"    built in {build_s:.1f} s ({size / build_s:,.0f} entries/s)")
    store_mb = sum(p.stat().st_size for p in directory.iterdir() if p.is_file()) / 1e6
    backend = SQLiteBackend(directory, create=False)
    try:
        ledger = Ledger(backend, LEDGER)
        vkey = VerifierKey.parse(ledger.config.log_vkey or "")
        rng = random.Random(size)
        inclusion, consistency = [], []
        # CPU time of this thread too: on a shared machine the wall-clock tail is mostly
        # time spent descheduled, the CPU-time tail is what a proof itself costs.
        inclusion_cpu, consistency_cpu = [], []
        # And what happened to the thread during each proof (read outside the timed span):
        # involuntary context switches (preempted: another process had the core), voluntary
        # ones (blocked: a page read from disk, a lock) and garbage collections, so the JSON
        # says where a slow proof's time went.
        inclusion_why: list[tuple[int, int, int]] = []
        consistency_why: list[tuple[int, int, int]] = []
        clock, cpu = time.perf_counter, time.thread_time
        load_before = os.getloadavg()
        for i in range(samples):
            seq = rng.randrange(size)
            before = _disturbances()
            started, cpu_started = clock(), cpu()
            proof = ledger.prove_inclusion(0, seq)
            inclusion.append((clock() - started) * 1000)
            inclusion_cpu.append((cpu() - cpu_started) * 1000)
            inclusion_why.append(_since(before))
            old = rng.randrange(1, size)
            before = _disturbances()
            started, cpu_started = clock(), cpu()
            cproof = ledger.prove_consistency(0, old, size)
            consistency.append((clock() - started) * 1000)
            consistency_cpu.append((cpu() - cpu_started) * 1000)
            consistency_why.append(_since(before))
            if i < 20:  # the proofs are real: a few are checked offline (not timed)
                proof.verify([vkey])
                cproof.verify([vkey])
        load_after = os.getloadavg()
    finally:
        backend.close()
    return {
        "log_size": size,
        "backend": "sqlite",
        "samples": samples,
        "build_s": build_s,
        "reused": build_s is None,
        "store_mb": store_mb,
        "inclusion_p50_ms": _pct(inclusion, 0.5),
        "inclusion_p99_ms": _pct(inclusion, 0.99),
        "consistency_p50_ms": _pct(consistency, 0.5),
        "consistency_p99_ms": _pct(consistency, 0.99),
        "inclusion_cpu_p50_ms": _pct(inclusion_cpu, 0.5),
        "inclusion_cpu_p99_ms": _pct(inclusion_cpu, 0.99),
        "consistency_cpu_p50_ms": _pct(consistency_cpu, 0.5),
        "consistency_cpu_p99_ms": _pct(consistency_cpu, 0.99),
        "load_average_1m": [round(load_before[0], 2), round(load_after[0], 2)],
        "inclusion_tail": _tail(inclusion, inclusion_why),
        "consistency_tail": _tail(consistency, consistency_why),
    }
