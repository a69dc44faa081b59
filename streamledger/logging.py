"""A ``logging.Handler`` that appends every log record to a ledger.

Tamper-evident application logs: the Python counterpart of KafkaBlockchain's log4j appender.

>>> import logging
>>> from streamledger.logging import LedgerHandler
>>> handler = LedgerHandler("app-log", data_dir=".streamledger", create=True)  # doctest: +SKIP
>>> logging.getLogger().addHandler(handler)  # doctest: +SKIP

Each record becomes one entry (content type ``application/json``) whose payload is a
canonical JSON object (sorted keys, no spaces, UTF-8)::

    {"exc_info": "Traceback ...",        # only when the record carries an exception
     "extra": {"order_id": 42},          # only JSON-serializable extra= fields
     "func": "pay", "level": "ERROR", "line": 12, "logger": "app.payments",
     "message": "payment 42 failed", "module": "payments", "n": 17,
     "process": 4242, "source": "6f1c0e9a2b4d8e31", "stack_info": "...",
     "thread": "MainThread", "ts": "2025-01-31T12:00:00.123Z"}

``source`` identifies this handler instance (random per instance) and ``n`` numbers its
records 0, 1, 2, ... in emit order: a gap in ``n`` is always explained by a
``streamledger.dropped`` entry. The entry key is the logger name (so one logger's records
stay in order in one partition) unless ``key=`` gives a function of the record.

Delivery policy (see docs/logging.md):

* ``emit`` only formats the record and puts it in a bounded in-memory queue (``capacity``,
  default 10,000). It never waits for the ledger: when the queue is full it waits at most
  ``block_timeout`` seconds (default 0) and then drops the record.
* A background thread appends batches (up to ``batch_size`` records, or whatever arrived
  within ``max_latency`` seconds) with :meth:`Ledger.append_many`, all or nothing.
* A batch stays at the head of the queue until it is appended; failures are retried with
  exponential backoff (``retry_initial`` doubling up to ``retry_max`` seconds), forever,
  in order. A failure may have an unknown outcome (a Kafka commit that timed out can
  still land), so before retrying the handler reads the partitions' new entries and
  removes the records it finds there: no record is appended twice.
* Dropped records are counted; once the queue has room again the handler appends one
  ``streamledger.dropped`` entry saying how many records were lost, when and at which
  levels, and it writes one line to stderr per outage.
* No exception ever reaches the application: emit errors go to :meth:`handleError`.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging as _logging  # the standard library: absolute imports are the default
import os
import secrets
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

from streamledger.backends.base import AppendBatch, Backend
from streamledger.errors import ConfigError, StreamledgerError, WriteConflict
from streamledger.ledger import AppendItem, Ledger

__all__ = ["DROPPED_LOGGER", "HandlerStats", "LedgerHandler", "record_payload"]

CONTENT_TYPE = "application/json"
DROPPED_LOGGER = "streamledger.dropped"
DEFAULT_CAPACITY = 10_000
DEFAULT_MAX_PAYLOAD = 512 * 1024

# Attributes every LogRecord has; anything else in record.__dict__ came from extra=.
_STANDARD_ATTRS = frozenset(
    vars(_logging.LogRecord("x", _logging.INFO, "x", 0, "x", None, None)).keys()
) | {"message", "asctime", "taskName"}

_default_formatter = _logging.Formatter()


_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)
_second_cache: tuple[int, str] = (-1, "")


def _rfc3339(created: float, msecs: float) -> str:
    global _second_cache
    second = int(created)
    cached = _second_cache
    if cached[0] == second:
        base = cached[1]
    else:
        base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second_cache = (second, base)
    return f"{base}.{min(int(msecs), 999):03d}Z"


def _canonical(obj: Any) -> bytes:
    return _ENCODER.encode(obj).encode("utf-8")


def record_payload(
    record: _logging.LogRecord, formatter: _logging.Formatter | None = None
) -> dict[str, Any]:
    """The JSON object (without ``source``/``n``) a log record becomes."""
    fmt = formatter or _default_formatter
    obj: dict[str, Any] = {
        "ts": _rfc3339(record.created, record.msecs),
        "level": record.levelname,
        "logger": record.name,
        "message": record.getMessage(),
        "module": record.module,
        "func": record.funcName,
        "line": record.lineno,
        "process": record.process,
        "thread": record.threadName,
    }
    if record.exc_info:
        obj["exc_info"] = fmt.formatException(record.exc_info)
    elif record.exc_text:
        obj["exc_info"] = record.exc_text
    if record.stack_info:
        obj["stack_info"] = fmt.formatStack(record.stack_info)
    names = record.__dict__.keys() - _STANDARD_ATTRS
    if names:
        extra = {}
        for name in sorted(names):
            if name.startswith("_"):
                continue
            value = record.__dict__[name]
            try:
                _canonical(value)
            except (TypeError, ValueError):
                continue  # not JSON-serializable: left out (documented)
            extra[name] = value
        if extra:
            obj["extra"] = extra
    return obj


@dataclass(frozen=True)
class HandlerStats:
    """A snapshot of a handler's counters.

    ``emitted`` records handed to the handler = ``appended`` + ``dropped`` + ``queued``
    (once the handler is idle). ``drop_entries`` counts the ``streamledger.dropped``
    entries appended; ``retries`` failed append attempts; ``last_error`` the text of the
    latest failure (``None`` after none)."""

    emitted: int
    appended: int
    dropped: int
    queued: int
    retries: int
    drop_entries: int
    batches: int
    last_error: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Item:
    """One queued entry: its payload (the JSON object until the writer thread encodes it,
    which keeps encoding off the application's threads), key, and whether it is a record."""

    __slots__ = ("obj", "payload", "key", "is_record")

    def __init__(
        self, obj: dict[str, Any] | None, payload: bytes | None, key: bytes | None, is_record: bool
    ) -> None:
        self.obj = obj
        self.payload = payload
        self.key = key
        self.is_record = is_record


class _Drops:
    """Records lost in one gap of the stream."""

    def __init__(self) -> None:
        self.count = 0
        self.first_ts: str | None = None
        self.last_ts: str | None = None
        self.levels: collections.Counter[str] = collections.Counter()
        self.loggers: collections.Counter[str] = collections.Counter()

    def add(self, record: _logging.LogRecord | None, reason: str | None = None) -> None:
        self.count += 1
        if record is not None:
            ts = _rfc3339(record.created, record.msecs)
            self.first_ts = self.first_ts or ts
            self.last_ts = ts
            self.levels[record.levelname] += 1
            self.loggers[record.name] += 1


class _HeadMoved(StreamledgerError):
    """A partition is not at the size the handler last checked: re-check before writing."""


class _GuardedBackend:
    """Delegates to the real backend, but refuses to append on a head the handler has not
    checked for its own records (``expected``), and turns ``WriteConflict`` into
    ``_HeadMoved`` so that ``Ledger.append_many`` does not silently rebuild the batch on
    the new head: after an append of unknown outcome that would append it twice."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self.expected: dict[int, int] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def append(self, ledger: str, batches: Mapping[int, AppendBatch]) -> dict[int, list[int]]:
        for partition, batch in batches.items():
            want = self.expected.get(partition)
            if want is None or batch.first_seq != want:
                raise _HeadMoved(
                    f"ledger {ledger!r} partition {partition} moved from {want} to "
                    f"{batch.first_seq} entries"
                )
        try:
            return self._backend.append(ledger, batches)
        except WriteConflict as exc:
            raise _HeadMoved(str(exc)) from None


class LedgerHandler(_logging.Handler):
    """Append log records to ledger ``ledger`` (see the module docstring for the policy).

    Where the ledger lives: pass an open ``backend=``, or ``data_dir=`` (embedded SQLite),
    or ``bootstrap_servers=`` (Kafka; ``kafka_config=`` for librdkafka settings,
    ``state_dir=`` and ``kafka_timeout=`` as for :class:`KafkaBackend`), or a
    :class:`Ledger` as ``ledger``. With ``create=True`` a missing ledger is created with
    ``partitions`` partitions. A backend the handler opened itself is closed by
    :meth:`close`. The backend is opened by the background thread, so an unreachable
    store never delays or breaks the application's start: records wait in the queue.

    All arguments are keywords except ``ledger``, so the class works as is in
    :func:`logging.config.dictConfig`.
    """

    def __init__(
        self,
        ledger: str | Ledger,
        *,
        backend: Backend | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        bootstrap_servers: str | None = None,
        kafka_config: Mapping[str, Any] | None = None,
        state_dir: str | os.PathLike[str] | None = None,
        kafka_timeout: float = 10.0,
        create: bool = False,
        partitions: int = 1,
        key: Callable[[_logging.LogRecord], bytes | str | None] | None = None,
        capacity: int = DEFAULT_CAPACITY,
        batch_size: int = 500,
        max_latency: float = 0.2,
        block_timeout: float = 0.0,
        flush_timeout: float = 5.0,
        close_timeout: float = 5.0,
        retry_initial: float = 0.05,
        retry_max: float = 2.0,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        producer: str | None = None,
        stderr: TextIO | None = None,
        level: int | str = _logging.NOTSET,
    ) -> None:
        super().__init__(level)
        if capacity < 1 or batch_size < 1:
            raise ConfigError("capacity and batch_size must be at least 1")
        if max_latency < 0 or block_timeout < 0 or retry_initial <= 0 or retry_max <= 0:
            raise ConfigError("latencies, timeouts and retry delays must not be negative")
        self._factory: Callable[[], Backend] | None = None
        self._backend: Backend | None = None
        self._owns_backend = False
        if isinstance(ledger, Ledger):
            self.ledger_name = ledger.name
            self._backend = ledger.backend
        else:
            self.ledger_name = str(ledger)
            sources = [x is not None for x in (backend, data_dir, bootstrap_servers)]
            if sum(sources) != 1:
                raise ConfigError(
                    "LedgerHandler needs exactly one of backend=, data_dir= (SQLite) or "
                    "bootstrap_servers= (Kafka)"
                )
            if backend is not None:
                self._backend = backend
            elif data_dir is not None:
                path = Path(data_dir)

                def open_sqlite() -> Backend:
                    from streamledger.backends.sqlite import SQLiteBackend

                    return SQLiteBackend(path)

                self._factory, self._owns_backend = open_sqlite, True
            else:
                conf = dict(kafka_config or {})

                def open_kafka() -> Backend:
                    from streamledger.backends.kafka import KafkaBackend

                    return KafkaBackend(
                        str(bootstrap_servers),
                        config=conf,
                        state_dir=state_dir,
                        timeout=kafka_timeout,
                    )

                self._factory, self._owns_backend = open_kafka, True
        self.create = bool(create)
        self.partitions = int(partitions)
        self.key_func = key
        self.capacity = int(capacity)
        self.batch_size = int(batch_size)
        self.max_latency = float(max_latency)
        self.block_timeout = float(block_timeout)
        self.flush_timeout = float(flush_timeout)
        self.close_timeout = float(close_timeout)
        self.retry_initial = float(retry_initial)
        self.retry_max = float(retry_max)
        self.max_payload = int(max_payload)
        self.producer = producer
        self._stderr = stderr
        self.source = secrets.token_hex(8)

        self._cond = threading.Condition(threading.Lock())
        self._queue: collections.deque[_Item] = collections.deque()
        self._numbers = itertools.count()
        self._drops: _Drops | None = None
        self._closing = False
        self._stop = False
        self._stopped = threading.Event()  # set with _stop: ends a retry backoff at once
        self._flush_requests = 0
        self._oldest_at = 0.0  # monotonic time the oldest queued item arrived
        self._emitted = self._appended = self._dropped = 0
        self._retries = self._drop_entries = self._batches = 0
        self._last_error: str | None = None
        self._outage = False
        self._reported_drop = False
        self._reported_closed = False

        self._guard: _GuardedBackend | None = None
        self._ledger: Ledger | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"streamledger-log-{self.ledger_name}", daemon=True
        )
        self._thread.start()

    def __repr__(self) -> str:
        level = _logging.getLevelName(self.level)
        return f"<LedgerHandler {self.ledger_name!r} ({level})>"

    # -- counters ----------------------------------------------------------------------
    @property
    def stats(self) -> HandlerStats:
        with self._cond:
            return HandlerStats(
                emitted=self._emitted,
                appended=self._appended,
                dropped=self._dropped,
                queued=sum(1 for i in self._queue if i.is_record),
                retries=self._retries,
                drop_entries=self._drop_entries,
                batches=self._batches,
                last_error=self._last_error,
            )

    # -- the application side -----------------------------------------------------------
    def emit(self, record: _logging.LogRecord) -> None:
        try:
            if threading.get_ident() == self._thread.ident:
                # e.g. the Kafka client's warnings while this handler writes: appending
                # them would feed back into the outage they describe. Other handlers
                # still get them.
                return
            if len(self._queue) >= self.capacity and not self.block_timeout:
                with self._cond:  # full: drop without the cost of encoding
                    if len(self._queue) >= self.capacity and not self._closing:
                        self._emitted += 1
                        self._drop(record)
                        return
            obj = record_payload(record, self.formatter)
            key = self._key(record)
            with self._cond:
                self._emitted += 1
                if self._closing:
                    self._drop(record)
                    if not self._reported_closed:
                        self._reported_closed = True
                        self._report(
                            f"handler closed; log records emitted after close() are dropped "
                            f"(first: {record.name} {record.levelname})"
                        )
                    return
                if len(self._queue) >= self.capacity and self.block_timeout > 0:
                    self._cond.wait_for(
                        lambda: len(self._queue) < self.capacity or self._closing,
                        self.block_timeout,
                    )
                if len(self._queue) >= self.capacity or self._closing:
                    self._drop(record)
                    return
                if self._drops is not None:
                    self._push_drops()
                obj["source"], obj["n"] = self.source, next(self._numbers)
                if "extra" in obj:  # user objects: snapshot them now, they may change
                    self._push(_Item(None, self._encode(obj), key, True))
                else:
                    self._push(_Item(obj, None, key, True))
        except RecursionError:
            raise
        except Exception:  # noqa: BLE001 - never into the application
            self.handleError(record)

    def _key(self, record: _logging.LogRecord) -> bytes | None:
        if self.key_func is None:
            return record.name.encode("utf-8")
        key = self.key_func(record)
        if key is None or isinstance(key, bytes):
            return key
        return str(key).encode("utf-8")

    def _encode(self, obj: dict[str, Any]) -> bytes:
        data = _canonical(obj)
        if len(data) <= self.max_payload:
            return data
        # Oversized (a huge message or traceback): keep the head of the text fields so
        # one record can never block the queue behind a store's size limit.
        budget = max(256, self.max_payload // 4)
        for field in ("message", "exc_info", "stack_info"):
            if isinstance(obj.get(field), str) and len(obj[field]) > budget:
                obj[field] = obj[field][:budget]
        obj.pop("extra", None)
        obj["truncated"] = True
        return _canonical(obj)

    def _push(self, item: _Item) -> None:
        queue = self._queue
        if not queue:
            self._oldest_at = time.monotonic()
        queue.append(item)
        if len(queue) == 1 or len(queue) == self.batch_size:
            self._cond.notify_all()  # only when the writer may have something new to do

    def _drop(self, record: _logging.LogRecord | None) -> None:
        # under self._cond
        self._dropped += 1
        if self._drops is None:
            self._drops = _Drops()
        self._drops.add(record)
        if not self._reported_drop and not self._closing:
            self._reported_drop = True
            state = f" (last error: {self._last_error})" if self._outage else ""
            self._report(
                f"queue full ({self.capacity} records), dropping log records{state}; their "
                f"count will be appended as a {DROPPED_LOGGER!r} entry"
            )

    def _push_drops(self) -> None:
        # under self._cond; the summary takes the place of the records it stands for
        drops, self._drops = self._drops, None
        assert drops is not None
        now = time.time()
        levels = ", ".join(f"{n} {lvl}" for lvl, n in sorted(drops.levels.items()))
        obj = {
            "ts": _rfc3339(now, (now % 1) * 1000),
            "level": "WARNING",
            "logger": DROPPED_LOGGER,
            "message": (
                f"{drops.count} log records dropped between {drops.first_ts} and "
                f"{drops.last_ts} ({levels}): the handler's queue was full"
            ),
            "module": __name__,
            "func": "emit",
            "line": 0,
            "process": os.getpid(),
            "thread": threading.current_thread().name,
            "dropped": {
                "count": drops.count,
                "first_ts": drops.first_ts,
                "last_ts": drops.last_ts,
                "levels": dict(drops.levels),
                "loggers": dict(drops.loggers.most_common(20)),
            },
            "source": self.source,
            "n": next(self._numbers),
        }
        self._push(_Item(None, _canonical(obj), DROPPED_LOGGER.encode(), False))

    def _report(self, message: str) -> None:
        """One line on stderr, like Handler.handleError: never raises."""
        try:
            stream = self._stderr or sys.stderr
            if stream is not None:
                stream.write(f"streamledger.logging: ledger {self.ledger_name!r}: {message}\n")
                stream.flush()
        except Exception:  # noqa: BLE001, S110 - nowhere left to report to
            pass

    # -- flush / close --------------------------------------------------------------------
    def _idle(self) -> bool:
        return not self._queue and self._drops is None

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued is appended (at most ``timeout`` seconds, default
        ``flush_timeout``). Returns True if the queue is empty. Never raises."""
        timeout = self.flush_timeout if timeout is None else timeout
        try:
            with self._cond:
                if self._stop or threading.current_thread() is self._thread:
                    return self._idle()
                self._flush_requests += 1
                self._cond.notify_all()
                try:
                    return (
                        self._cond.wait_for(
                            lambda: self._idle() or not self._thread.is_alive(), timeout
                        )
                        and self._idle()
                    )
                finally:
                    self._flush_requests -= 1
        except Exception:  # noqa: BLE001
            return False

    def close(self, timeout: float | None = None) -> None:
        """Flush for at most ``timeout`` seconds (default ``close_timeout``), stop the
        background thread, and close the backend if the handler opened it. Records still
        unwritten after the timeout are counted as dropped and reported on stderr."""
        timeout = self.close_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        try:
            with self._cond:
                already = self._closing
                self._closing = True
                self._cond.notify_all()
            if not already:
                # leave a slice of the time for the thread to stop and count what is lost
                self.flush(max(0.0, deadline - time.monotonic() - min(0.1, timeout / 5)))
                with self._cond:
                    self._stop = True
                    self._stopped.set()
                    self._cond.notify_all()
                self._thread.join(max(0.0, deadline - time.monotonic()))
                if self._thread.is_alive():
                    self._report(
                        f"close() timed out after {timeout:g}s while an append was in "
                        "progress; the background thread ends when that attempt ends "
                        f"(last error: {self._last_error})"
                    )
        except Exception:  # noqa: BLE001
            pass
        finally:
            super().close()

    # -- the background writer ------------------------------------------------------------
    def _run(self) -> None:
        delay = self.retry_initial
        try:
            while True:
                with self._cond:
                    batch = self._next_batch()
                    if batch is None:
                        return
                try:
                    for item in batch:
                        if item.payload is None:
                            assert item.obj is not None
                            item.payload, item.obj = self._encode(item.obj), None
                    done = self._deliver(batch)
                except Exception as exc:  # noqa: BLE001 - reported, then retried
                    with self._cond:
                        self._retries += 1
                        self._last_error = f"{type(exc).__name__}: {exc}"
                        if not self._outage:
                            self._outage = True
                            self._report(
                                f"cannot append ({self._last_error}); buffering up to "
                                f"{self.capacity} records and retrying"
                            )
                    if self._stopped.wait(delay):
                        return
                    delay = min(delay * 2, self.retry_max)
                    continue
                delay = self.retry_initial
                with self._cond:
                    for _ in range(done):
                        item = self._queue.popleft()
                        if item.is_record:
                            self._appended += 1
                        else:
                            self._drop_entries += 1
                    if self._queue:
                        self._oldest_at = time.monotonic()
                    self._batches += 1
                    if self._outage:
                        self._outage = False
                        self._report(f"appending again ({self._stats_text()})")
                    if not self._queue:
                        self._reported_drop = False  # caught up: a new overload is reported
                    self._cond.notify_all()
        finally:
            with self._cond:
                lost = sum(1 for i in self._queue if i.is_record)
                self._dropped += lost
                pending = self._drops.count if self._drops is not None else 0
                if lost or pending:
                    self._report(
                        f"stopped with {lost} log records not appended and {pending} "
                        f"dropped records not recorded in the ledger (last error: "
                        f"{self._last_error})"
                    )
                self._queue.clear()
                self._cond.notify_all()
            self._close_backend()

    def _stats_text(self) -> str:
        return (
            f"{self._appended} appended, {self._dropped} dropped, "
            f"{sum(1 for i in self._queue if i.is_record)} queued, {self._retries} retries"
        )

    def _next_batch(self) -> list[_Item] | None:
        # under self._cond: wait until a batch is due, or return None to stop
        while True:
            if self._stop:
                return None
            if self._drops is not None and len(self._queue) < self.capacity:
                self._push_drops()
            if self._queue:
                if len(self._queue) >= self.batch_size or self._flush_requests or self._closing:
                    break
                wait = self._oldest_at + self.max_latency - time.monotonic()
                if wait <= 0:
                    break
                self._cond.wait(wait)
            else:
                self._cond.wait()
        return list(itertools.islice(self._queue, self.batch_size))

    def _open(self) -> Ledger:
        if self._backend is None:
            assert self._factory is not None
            self._backend = self._factory()
        if self._guard is None:
            guard = _GuardedBackend(self._backend)
            if self.create and self.ledger_name not in self._backend.list_ledgers():
                try:
                    Ledger.create(guard, self.ledger_name, partitions=self.partitions)
                except ConfigError:
                    if self.ledger_name not in self._backend.list_ledgers():
                        raise
            ledger = Ledger(guard, self.ledger_name, producer=self.producer)
            # the sizes from which the handler's own records can appear
            guard.expected = {p: ledger.size(p) for p in range(ledger.partitions)}
            self._guard = guard
        return Ledger(self._guard, self.ledger_name, producer=self.producer)

    def _deliver(self, batch: list[_Item]) -> int:
        """Append ``batch`` (the head of the queue); return how many queue items are done."""
        ledger = self._ledger
        todo = batch
        if ledger is None:
            ledger = self._open()
            # After a failure the previous attempt may have landed (unknown outcome), or
            # another writer moved a head: find our records before writing anything again.
            found = self._reconcile(ledger, batch)
            todo = [item for item in batch if item.payload not in found]
        if todo:
            try:
                receipts = ledger.append_many(
                    [AppendItem(i.payload, i.key, CONTENT_TYPE) for i in todo]
                )
            except BaseException:
                self._ledger = None  # its cached heads are no longer trustworthy
                raise
            guard = self._guard
            assert guard is not None
            for r in receipts:
                guard.expected[r.partition] = max(guard.expected.get(r.partition, 0), r.seq + 1)
        self._ledger = ledger
        return len(batch)

    def _reconcile(self, ledger: Ledger, batch: list[_Item]) -> set[bytes]:
        """Payloads of ``batch`` already in the ledger (looked up in the entries appended
        since the handler last knew each partition's size)."""
        guard = self._guard
        assert guard is not None
        pending = {item.payload for item in batch}
        found: set[bytes] = set()
        for partition in range(ledger.partitions):
            start = guard.expected.get(partition, 0)
            size = ledger.size(partition)
            if size > start:
                for entry in ledger.read(partition, start, size):
                    if entry.payload in pending:
                        found.add(entry.payload)
            guard.expected[partition] = size
        return found

    def _close_backend(self) -> None:
        if self._owns_backend and self._backend is not None:
            try:
                self._backend.close()
            except Exception as exc:  # noqa: BLE001
                self._report(f"closing the backend failed: {exc}")
