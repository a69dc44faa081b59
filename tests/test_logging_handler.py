"""streamledger.logging.LedgerHandler on the real SQLite backend.

Faults are injected by ``Flaky``, a thin wrapper around a real SQLiteBackend that raises
BackendUnavailable while it is "down" (optionally after really writing, to simulate an
append whose outcome is unknown, like a Kafka commit that timed out), or hangs.
"""

from __future__ import annotations

import io
import json
import logging
import logging.config
import threading
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from streamledger.backends.sqlite import SQLiteBackend
from streamledger.core.note import SigningKey
from streamledger.core.verify import TrustPolicy
from streamledger.errors import BackendUnavailable
from streamledger.ledger import Ledger
from streamledger.logging import DROPPED_LOGGER, LedgerHandler

pytestmark = pytest.mark.timeout(60)

RECORD_FIELDS = {
    "ts",
    "level",
    "logger",
    "message",
    "module",
    "func",
    "line",
    "process",
    "thread",
    "source",
    "n",
}


class Flaky:
    """A real SQLiteBackend whose appends fail on demand."""

    def __init__(self, backend: SQLiteBackend) -> None:
        self._backend = backend
        self.down = False
        self.fail_every = 0  # > 0: every k-th append fails
        self.land_then_fail = False  # the failing append is written first: unknown outcome
        self.hang: threading.Event | None = None
        self.appends = 0
        self.failures = 0

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def append(self, ledger, batches):
        if self.hang is not None:
            self.hang.wait(10)
        self.appends += 1
        failing = self.down or (self.fail_every and self.appends % self.fail_every == 0)
        if failing:
            self.failures += 1
            if self.land_then_fail:
                self._backend.append(ledger, batches)
                raise BackendUnavailable("commit outcome unknown (injected)")
            raise BackendUnavailable("broker unreachable (injected)")
        return self._backend.append(ledger, batches)


def _name() -> str:
    return f"applog-{uuid.uuid4().hex[:8]}"


def _logger(handler: logging.Handler, name: str | None = None) -> logging.Logger:
    logger = logging.getLogger(name or f"test.{uuid.uuid4().hex[:8]}")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    return logger


def _entries(backend, name: str) -> list[tuple[int, object, dict]]:
    ledger = Ledger(backend, name)
    out = []
    for p in range(ledger.partitions):
        for entry in ledger.read(p):
            out.append((p, entry, json.loads(entry.payload)))
    return out


def _flaky_handler(tmp_path: Path, **kwargs) -> tuple[LedgerHandler, Flaky, str]:
    sqlite = SQLiteBackend(tmp_path / "store")
    name = _name()
    Ledger.create(sqlite, name, partitions=kwargs.pop("partitions", 1))
    flaky = Flaky(sqlite)
    kwargs.setdefault("stderr", io.StringIO())
    handler = LedgerHandler(name, backend=flaky, **kwargs)
    return handler, flaky, name


def test_records_become_entries_with_exact_fields(tmp_path):
    name = _name()
    handler = LedgerHandler(name, data_dir=tmp_path, create=True, partitions=3)
    a, b = _logger(handler, "app.alpha"), _logger(handler, "app.beta")
    for i in range(50):
        a.info("alpha %d", i)
        b.warning("beta %d", i, extra={"order_id": i, "tags": ["x"], "obj": object()})
    assert handler.flush(10)
    handler.close()
    assert handler.stats.appended == 100 and handler.stats.dropped == 0

    backend = SQLiteBackend(tmp_path)
    entries = _entries(backend, name)
    assert len(entries) == 100
    by_logger: dict[str, list[dict]] = defaultdict(list)
    partitions = defaultdict(set)
    for p, entry, obj in entries:
        assert entry.header.content_type == "application/json"
        assert entry.header.key == obj["logger"].encode()
        # canonical JSON: exactly what a sorted, compact dump gives
        assert entry.payload == json.dumps(
            obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode("utf-8")
        by_logger[obj["logger"]].append(obj)
        partitions[obj["logger"]].add(p)
    assert all(len(ps) == 1 for ps in partitions.values())  # one logger, one partition

    alpha = by_logger["app.alpha"]
    assert [o["message"] for o in alpha] == [f"alpha {i}" for i in range(50)]
    assert set(alpha[0]) == RECORD_FIELDS
    first = alpha[0]
    assert first["level"] == "INFO" and first["logger"] == "app.alpha"
    assert first["module"] == "test_logging_handler"
    assert first["func"] == "test_records_become_entries_with_exact_fields"
    assert isinstance(first["line"], int) and first["line"] > 0
    assert first["thread"] == threading.current_thread().name
    assert first["process"] > 0
    assert len(first["ts"]) == 24 and first["ts"].endswith("Z") and first["ts"][10] == "T"

    beta = by_logger["app.beta"]
    assert [o["message"] for o in beta] == [f"beta {i}" for i in range(50)]
    assert set(beta[7]) == RECORD_FIELDS | {"extra"}
    assert beta[7]["extra"] == {"order_id": 7, "tags": ["x"]}  # object() is not JSON
    assert beta[7]["level"] == "WARNING"
    # one handler numbers its records in emit order
    ns = sorted(o["n"] for _, _, o in entries)
    assert ns == list(range(100))

    key = SigningKey.generate("example.com/app-log")
    ledger = Ledger(backend, name, signer=key)
    ledger.checkpoint()
    report = ledger.verify(TrustPolicy((key.verifier,)))
    assert report.ok, report.findings
    assert report.entries_checked == 100


def test_exceptions_and_stack_are_formatted(tmp_path):
    name = _name()
    handler = LedgerHandler(name, data_dir=tmp_path, create=True)
    log = _logger(handler)
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        log.exception("division failed for %s", "x")
    log.info("with stack", stack_info=True)
    handler.close()
    objs = [o for _, _, o in _entries(SQLiteBackend(tmp_path), name)]
    assert objs[0]["message"] == "division failed for x"
    assert objs[0]["level"] == "ERROR"
    assert objs[0]["exc_info"].startswith("Traceback (most recent call last):")
    assert "ZeroDivisionError: division by zero" in objs[0]["exc_info"]
    assert "1 / 0" in objs[0]["exc_info"]
    assert "exc_info" not in objs[1]
    assert objs[1]["stack_info"].startswith("Stack (most recent call last):")


def test_dictconfig(tmp_path):
    name = _name()
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "handlers": {
                "ledger": {
                    "class": "streamledger.logging.LedgerHandler",
                    "level": "INFO",
                    "ledger": name,
                    "data_dir": str(tmp_path),
                    "create": True,
                    "partitions": 2,
                    "max_latency": 0.05,
                }
            },
            "loggers": {"dictcfg": {"handlers": ["ledger"], "level": "DEBUG", "propagate": False}},
        }
    )
    log = logging.getLogger("dictcfg")
    handler = log.handlers[0]
    try:
        assert isinstance(handler, LedgerHandler)
        log.debug("filtered out by the handler level")
        log.info("configured by dictConfig")
        assert handler.flush(10)
    finally:
        handler.close()
        log.handlers.clear()
    objs = [o for _, _, o in _entries(SQLiteBackend(tmp_path), name)]
    assert [o["message"] for o in objs] == ["configured by dictConfig"]
    assert Ledger(SQLiteBackend(tmp_path), name).partitions == 2


def test_emit_never_blocks_on_a_dead_backend(tmp_path):
    handler, flaky, _ = _flaky_handler(tmp_path)
    flaky.down = True
    log = _logger(handler)
    started = time.perf_counter()
    for i in range(10_000):
        log.info("record %d", i)
    elapsed = time.perf_counter() - started
    assert elapsed < 1.0, f"10,000 emits took {elapsed:.2f}s with the backend down"
    stats = handler.stats
    assert stats.emitted == 10_000 and stats.appended == 0
    assert stats.queued + stats.dropped == 10_000
    started = time.perf_counter()
    handler.close(timeout=0.3)
    assert time.perf_counter() - started < 1.5
    stats = handler.stats
    assert stats.dropped == 10_000  # lost at close, and counted
    assert stats.retries >= 1 and "broker unreachable" in stats.last_error


def test_block_timeout_bounds_emit(tmp_path):
    handler, flaky, _ = _flaky_handler(tmp_path, capacity=2, block_timeout=0.1)
    flaky.down = True
    log = _logger(handler)
    log.info("a")
    log.info("b")
    started = time.perf_counter()
    log.info("c: waits at most block_timeout, then is dropped")
    elapsed = time.perf_counter() - started
    assert 0.09 <= elapsed < 0.6
    assert handler.stats.dropped == 1
    handler.close(timeout=0.2)


def test_overflow_is_recorded_once_the_backend_recovers(tmp_path):
    err = io.StringIO()
    handler, flaky, name = _flaky_handler(
        tmp_path, capacity=50, batch_size=20, max_latency=0.01, stderr=err
    )
    flaky.down = True
    log = _logger(handler, "app.overflow")
    levels = ["INFO", "WARNING", "ERROR"]
    for i in range(200):
        log.log(getattr(logging, levels[i % 3]), "r%d", i)
    assert handler.stats.dropped == 150
    assert not handler.flush(0.2)  # still down: flush gives up within its bound
    flaky.down = False
    assert handler.flush(10)
    log.info("after recovery")
    handler.close()

    stats = handler.stats
    assert (stats.emitted, stats.appended, stats.dropped) == (201, 51, 150)
    assert stats.drop_entries == 1
    objs = [o for _, _, o in _entries(flaky, name)]
    assert len(objs) == 52
    assert [o["message"] for o in objs[:50]] == [f"r{i}" for i in range(50)]
    drop = objs[50]
    assert drop["logger"] == DROPPED_LOGGER and drop["level"] == "WARNING"
    assert drop["dropped"]["count"] == 150
    expected_levels = Counter(levels[i % 3] for i in range(50, 200))
    assert drop["dropped"]["levels"] == dict(expected_levels)
    assert drop["dropped"]["loggers"] == {"app.overflow": 150}
    assert drop["dropped"]["first_ts"] <= drop["dropped"]["last_ts"]
    assert "150 log records dropped" in drop["message"]
    assert objs[51]["message"] == "after recovery"
    # the numbering shows where the gap is and the dropped entry accounts for it
    assert [o["n"] for o in objs] == list(range(52))
    # reported on stderr, once per outage, not once per record
    text = err.getvalue()
    assert text.count("cannot append") == 1
    assert text.count("dropping log records") == 1
    assert "appending again" in text


@pytest.mark.parametrize("land_then_fail", [False, True], ids=["nothing-written", "unknown"])
def test_retries_keep_order_and_never_duplicate(tmp_path, land_then_fail):
    handler, flaky, name = _flaky_handler(
        tmp_path, partitions=3, batch_size=7, max_latency=0.001, retry_initial=0.001
    )
    flaky.fail_every = 3
    flaky.land_then_fail = land_then_fail
    loggers = [_logger(handler, f"app.l{i}") for i in range(4)]
    for i in range(600):
        loggers[i % 4].info("m %d", i)
        if i % 50 == 0:
            time.sleep(0.005)  # let batches form and fail in between
    assert handler.flush(20)
    handler.close()
    assert flaky.failures > 5
    stats = handler.stats
    assert stats.appended == 600 and stats.dropped == 0 and stats.retries >= flaky.failures

    entries = _entries(flaky, name)
    payloads = [e.payload for _, e, _ in entries]
    assert len(payloads) == len(set(payloads)) == 600  # no duplicates, none missing
    per_partition: dict[int, list[int]] = defaultdict(list)
    for p, _, obj in entries:
        per_partition[p].append(obj["n"])
    for ns in per_partition.values():
        assert ns == sorted(ns)  # every partition in emit order
    for i in range(4):
        msgs = [o["message"] for _, _, o in entries if o["logger"] == f"app.l{i}"]
        assert msgs == [f"m {k}" for k in range(i, 600, 4)]
    key = SigningKey.generate("example.com/app-log")
    ledger = Ledger(flaky, name, signer=key)
    ledger.checkpoint()
    assert ledger.verify(TrustPolicy((key.verifier,))).ok


def test_close_with_a_dead_backend_returns_within_its_timeout(tmp_path):
    handler, flaky, _ = _flaky_handler(tmp_path)
    flaky.down = True
    log = _logger(handler)
    for i in range(100):
        log.info("r %d", i)
    started = time.perf_counter()
    handler.close(timeout=0.5)
    assert time.perf_counter() - started < 1.0
    assert handler.stats.dropped == 100
    log.info("after close: dropped, counted, no exception")
    assert handler.stats.dropped == 101


def test_close_with_a_hanging_backend_returns_within_its_timeout(tmp_path):
    err = io.StringIO()
    handler, flaky, _ = _flaky_handler(tmp_path, stderr=err)
    flaky.hang = threading.Event()
    log = _logger(handler)
    log.info("stuck")
    time.sleep(0.3)  # the writer is now inside append
    started = time.perf_counter()
    handler.close(timeout=0.5)
    assert time.perf_counter() - started < 1.0
    assert "timed out" in err.getvalue()
    flaky.hang.set()


def test_no_exception_reaches_the_application(tmp_path, monkeypatch):
    def bad_key(record):
        raise RuntimeError("key function bug")

    handler, _, _ = _flaky_handler(tmp_path, key=bad_key)
    errors = []
    monkeypatch.setattr(handler, "handleError", lambda record: errors.append(record))
    log = _logger(handler)
    log.info("goes to handleError")
    assert len(errors) == 1
    handler.close(timeout=1)

    # a ledger that does not exist (and create=False): records wait, nothing raises
    err = io.StringIO()
    handler = LedgerHandler("missing", data_dir=tmp_path / "other", stderr=err)
    log = _logger(handler)
    log.error("kept in the queue")
    assert not handler.flush(0.2)
    handler.close(timeout=0.2)
    assert "no ledger named 'missing'" in err.getvalue()
    assert handler.stats.dropped == 1


def test_custom_key_function(tmp_path):
    name = _name()
    handler = LedgerHandler(
        name, data_dir=tmp_path, create=True, key=lambda r: getattr(r, "account", "none")
    )
    log = _logger(handler)
    log.info("one", extra={"account": "acct-1"})
    log.info("two")
    handler.close()
    entries = _entries(SQLiteBackend(tmp_path), name)
    assert [e.header.key for _, e, _ in entries] == [b"acct-1", b"none"]


def test_module_uses_the_standard_logging():
    import streamledger.logging as ledger_logging

    assert ledger_logging._logging is logging  # absolute import: not shadowed by itself
    assert issubclass(LedgerHandler, logging.Handler)
