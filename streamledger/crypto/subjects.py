"""Where per-subject keys live: a store that can really delete (never the immutable log).

A subject key is a random AES-256 key for one (ledger, epoch, subject), stored *wrapped under
the epoch data key* under the name ``<epoch>/<subject ref hex>/<key id hex>``. Erasing a
subject deletes every such record; once gone, the subject's payloads cannot be decrypted by
anyone, whatever epoch keys they hold. Stores:

- :class:`MemorySubjectStore` (tests, the memory backend),
- :class:`SQLiteSubjectStore`: ``<data_dir>/subject-keys.db``, a file of its own with
  ``secure_delete`` (deleted rows are overwritten with zeros) and no WAL (no stale copies in a
  write-ahead log),
- :class:`KafkaSubjectStore`: the compacted topic ``<ledger>.subject-keys``; erasure writes a
  tombstone for every record, and log compaction removes the earlier values from the brokers.

:func:`subject_store_for` picks the one that matches a ledger backend.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import uuid
from pathlib import Path
from typing import Any, Protocol

from streamledger.errors import BackendUnavailable

SUBJECT_TOPIC_SUFFIX = ".subject-keys"


class SubjectKeyStore(Protocol):
    def get(self, ledger: str, name: str) -> bytes | None: ...

    def put(self, ledger: str, name: str, value: bytes) -> None: ...

    def names(self, ledger: str, prefix: str = "") -> list[str]: ...

    def delete(self, ledger: str, names: list[str]) -> int: ...

    def close(self) -> None: ...


class MemorySubjectStore:
    def __init__(self) -> None:
        self._data: dict[tuple[str, str], bytes] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MemorySubjectStore({len(self._data)} keys)"

    def get(self, ledger: str, name: str) -> bytes | None:
        return self._data.get((ledger, name))

    def put(self, ledger: str, name: str, value: bytes) -> None:
        with self._lock:
            self._data[(ledger, name)] = bytes(value)

    def names(self, ledger: str, prefix: str = "") -> list[str]:
        return sorted(n for lg, n in self._data if lg == ledger and n.startswith(prefix))

    def delete(self, ledger: str, names: list[str]) -> int:
        with self._lock:
            return sum(self._data.pop((ledger, n), None) is not None for n in names)

    def close(self) -> None:
        pass


class SQLiteSubjectStore:
    FILE = "subject-keys.db"

    def __init__(self, data_dir: str | Path) -> None:
        self.path = Path(data_dir) / self.FILE
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._conn.execute("PRAGMA secure_delete=ON")
            self._conn.execute("PRAGMA journal_mode=TRUNCATE")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS subject_keys (ledger TEXT NOT NULL, "
                "name TEXT NOT NULL, value BLOB NOT NULL, PRIMARY KEY (ledger, name))"
            )
        except sqlite3.Error as exc:
            raise BackendUnavailable(f"subject key store {self.path}: {exc}") from None
        with contextlib.suppress(OSError):
            self.path.chmod(0o600)

    def __repr__(self) -> str:
        return f"SQLiteSubjectStore({str(self.path)!r})"

    def _run(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise BackendUnavailable(f"subject key store {self.path}: {exc}") from None

    def get(self, ledger: str, name: str) -> bytes | None:
        rows = self._run("SELECT value FROM subject_keys WHERE ledger=? AND name=?", (ledger, name))
        return bytes(rows[0][0]) if rows else None

    def put(self, ledger: str, name: str, value: bytes) -> None:
        self._run(
            "INSERT OR REPLACE INTO subject_keys VALUES (?, ?, ?)", (ledger, name, bytes(value))
        )

    def names(self, ledger: str, prefix: str = "") -> list[str]:
        rows = self._run("SELECT name FROM subject_keys WHERE ledger=? ORDER BY name", (ledger,))
        return [r[0] for r in rows if r[0].startswith(prefix)]

    def delete(self, ledger: str, names: list[str]) -> int:
        deleted = 0
        for name in names:
            with self._lock:
                try:
                    cur = self._conn.execute(
                        "DELETE FROM subject_keys WHERE ledger=? AND name=?", (ledger, name)
                    )
                except sqlite3.Error as exc:
                    raise BackendUnavailable(f"subject key store {self.path}: {exc}") from None
                deleted += cur.rowcount
        self._run("VACUUM")  # rewrite the file: no free page keeps old bytes
        return deleted

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class KafkaSubjectStore:
    """Subject keys in the compacted topic ``<ledger>.subject-keys`` (one partition)."""

    def __init__(self, bootstrap: str, config: dict[str, Any] | None = None, timeout: float = 30):
        self.bootstrap = bootstrap
        self._config = {str(k): v for k, v in (config or {}).items()}
        self.timeout = timeout
        self._cache: dict[str, tuple[int, dict[str, bytes]]] = {}
        self._producer: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"KafkaSubjectStore({self.bootstrap!r})"

    def _conf(self, **extra: Any) -> dict[str, Any]:
        return {"bootstrap.servers": self.bootstrap, **extra, **self._config}

    def _topic(self, ledger: str) -> str:
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient, NewTopic

        topic = ledger + SUBJECT_TOPIC_SUFFIX
        admin = AdminClient(self._conf())
        try:
            meta = admin.list_topics(timeout=self.timeout)
            if topic in meta.topics:
                return topic
            rf = max(1, min(3, len(meta.brokers)))
            compacted = {
                "cleanup.policy": "compact",
                "min.cleanable.dirty.ratio": "0.01",
                "segment.ms": "600000",  # roll segments so compaction can reach old values
                "delete.retention.ms": "600000",  # tombstones kept 10 minutes, then removed
                "min.insync.replicas": str(max(1, rf - 1)),
            }
            futures = admin.create_topics([NewTopic(topic, 1, rf, config=compacted)])
            try:
                futures[topic].result(timeout=self.timeout)
            except KafkaException as exc:
                if "already exists" not in str(exc).lower() and "TOPIC_ALREADY_EXISTS" not in str(
                    exc
                ):
                    raise
        except KafkaException as exc:
            raise BackendUnavailable(f"Kafka subject key topic {topic}: {exc}") from None
        return topic

    def _load(self, ledger: str) -> dict[str, bytes]:
        from confluent_kafka import Consumer, KafkaException, TopicPartition

        topic = self._topic(ledger)
        start, data = self._cache.get(ledger, (0, {}))
        consumer = Consumer(
            self._conf(
                **{
                    "group.id": f"streamledger-subjects-{uuid.uuid4().hex}",
                    "enable.auto.commit": False,
                    "auto.offset.reset": "earliest",
                    "enable.partition.eof": True,
                }
            )
        )
        try:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, 0), timeout=self.timeout
            )
            position = max(start, low)
            if position < high:
                consumer.assign([TopicPartition(topic, 0, position)])
                while position < high:
                    msgs = consumer.consume(1000, self.timeout)
                    if not msgs:
                        raise BackendUnavailable(f"timed out reading Kafka topic {topic}")
                    for msg in msgs:
                        if msg.error():
                            continue
                        name = msg.key().decode("utf-8")
                        if msg.value() is None:
                            data.pop(name, None)
                        else:
                            data[name] = msg.value()
                        position = msg.offset() + 1
        except KafkaException as exc:
            raise BackendUnavailable(f"reading Kafka topic {topic}: {exc}") from None
        finally:
            consumer.close()
        self._cache[ledger] = (position, data)
        return data

    def _send(self, ledger: str, records: list[tuple[str, bytes | None]]) -> None:
        from confluent_kafka import KafkaException, Producer

        topic = self._topic(ledger)
        with self._lock:
            if self._producer is None:
                self._producer = Producer(self._conf(**{"enable.idempotence": True, "acks": "all"}))
            errors: list[str] = []

            def report(err: Any, _msg: Any) -> None:
                if err is not None:
                    errors.append(str(err))

            try:
                for name, value in records:
                    self._producer.produce(topic, value, name.encode(), 0, on_delivery=report)
                if self._producer.flush(self.timeout) or errors:
                    raise BackendUnavailable(
                        f"writing Kafka topic {topic} failed: {errors[:1] or 'timeout'}"
                    )
            except KafkaException as exc:
                raise BackendUnavailable(f"writing Kafka topic {topic}: {exc}") from None

    def get(self, ledger: str, name: str) -> bytes | None:
        cached = self._cache.get(ledger)
        if cached is not None and name in cached[1]:
            return cached[1][name]
        return self._load(ledger).get(name)

    def put(self, ledger: str, name: str, value: bytes) -> None:
        self._send(ledger, [(name, bytes(value))])

    def names(self, ledger: str, prefix: str = "") -> list[str]:
        return sorted(n for n in self._load(ledger) if n.startswith(prefix))

    def delete(self, ledger: str, names: list[str]) -> int:
        present = [n for n in names if n in self._load(ledger)]
        if present:
            self._send(ledger, [(n, None) for n in present])  # tombstones
            self._load(ledger)
        return len(present)

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(self.timeout)
            self._producer = None


def subject_store_for(backend: Any, kafka_config: dict[str, Any] | None = None) -> SubjectKeyStore:
    """The subject key store that goes with a ledger backend."""
    from streamledger.backends.memory import MemoryBackend
    from streamledger.backends.sqlite import SQLiteBackend

    if isinstance(backend, SQLiteBackend):
        return SQLiteSubjectStore(backend.data_dir)
    if isinstance(backend, MemoryBackend):
        store = getattr(backend, "_streamledger_subject_store", None)
        if store is None:
            store = MemorySubjectStore()
            backend._streamledger_subject_store = store  # type: ignore[attr-defined]
        return store
    bootstrap = getattr(backend, "bootstrap", None)
    if bootstrap:
        config = kafka_config if kafka_config is not None else getattr(backend, "_user", {})
        return KafkaSubjectStore(bootstrap, config)
    raise TypeError(f"no subject key store for {type(backend).__name__}")
