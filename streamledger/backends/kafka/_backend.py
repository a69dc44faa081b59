"""Ledgers on Apache Kafka: one topic per ledger, one chain and Merkle tree per partition.

Topic layout (``L`` = ledger name):

=============================  =============================================================
``L``                          the entries; partition p is log p; retention forever
``L.checkpoints``              compacted, key = partition number: the latest signed checkpoint
``L.checkpoint-history``       every signed checkpoint of partition p, in partition p, forever
``__streamledger_ledgers``     compacted, key = ledger name, value = the ledger's JSON config
=============================  =============================================================

Writing: one transactional producer per ledger (``transactional.id`` defaults to
``streamledger-<ledger>``). ``init_transactions`` fences every older producer with the same
id and completes or aborts its open transaction; only then does the backend read each
partition's head from the committed tail of the topic, so two writers can never both extend
one chain. An append is one Kafka transaction over all its partitions.

Sequence numbers live in the entries: Kafka offsets skip (transaction markers, aborted
records), and nothing here assumes ``offset == seq``.

Reading: read_committed consumers. Merkle nodes and a seq -> offset index live in a local
SQLite cache per ledger (:mod:`._cache`), rebuilt from the topic when missing or behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import operator
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streamledger._iterate import drain
from streamledger.backends.base import (
    AppendBatch,
    LedgerConfig,
    NodeId,
    PartitionHead,
    check_document_kind,
)
from streamledger.backends.kafka._admin import (
    DEFAULT_TRANSACTIONAL_ID,
    FENCED_CODES,
    REGISTRY_TOPIC,
    check_ledger_name,
    checkpoints_topic,
    client_config,
    consumer_settings,
    describe,
    documents_topic,
    history_topic,
    kafka_error,
    log,
    producer_settings,
    safe_dirname,
    topic_settings,
    transactional_id_for,
    unavailable,
)
from streamledger.backends.kafka._cache import CacheUpdate, Frontier, NodeCache
from streamledger.core import _accel
from streamledger.core.entry import ZERO_HASH, Entry, StoredRecord, decode_record, header_length
from streamledger.core.merkle import CompactRange
from streamledger.errors import (
    BackendUnavailable,
    ConfigError,
    FormatError,
    StreamledgerError,
    WriteConflict,
)

_FETCH_BATCH = 10_000  # records per consume() call at most
_FETCH_MIN = 100
_BATCH_BYTES = 4 << 20  # ... and about this many bytes
# A scan's read-ahead thread asks for smaller batches: consume() and unpacking hold the GIL
# for a whole batch, and the verifier (the scan's usual caller) waits for it in between its
# hashing. At 1 KiB records, 4 MB batches (3,400 records) left ~0.5 of the 2 cores idle
# during a verify; 256 KB ones let it use them (and cost less CPU per record: the batch's
# records are freed, and their memory reused, sooner).
_SCAN_BATCH_BYTES = 256 << 10
_SCAN_FETCH_MIN = 8  # (so that large records do not make the batches, x16, large)
_READ_AHEAD = 16  # batches a scan's reader thread may hold ahead of the caller (~4 MB)
_CACHE_FLUSH = 50_000
_READER_GROUP = "streamledger-reader"  # assign() only: never joins, never commits
# send_offsets_to_transaction refused: the consumer's group generation is stale (KIP-447)
_GROUP_FENCED_CODES = frozenset(
    {
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError.FENCED_INSTANCE_ID,
        KafkaError.REBALANCE_IN_PROGRESS,
    }
)
#: (topic, partition or None, key, value, headers) produced in an append's transaction
ExtraRecord = tuple[
    str, "int | None", "bytes | None", "bytes | None", "list[tuple[str, bytes]] | None"
]


def _produce_all(
    produce: Callable[..., None],
    poll: Callable[[float], Any],
    topic: str,
    partition: int,
    records: Sequence[bytes],
    keys: Sequence[bytes | None],
    start: int,
    end: int,
) -> None:
    """``produce(topic, records[i], keys[i], partition)`` for ``i`` in ``start..end-1``, in
    order, without delivery reports; on a full queue (BufferError), poll and go on from the
    record that did not fit."""
    while start < end:
        values = iter(records[start:end])
        try:
            drain(map(produce, repeat(topic), values, keys[start:end], repeat(partition)))
            return
        except BufferError:
            # map took the failed record from ``values`` before calling produce with it
            start = end - operator.length_hint(values) - 1
            poll(0.05)


def _leaf_of(record: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + record[: header_length(record)]).digest()


_TRANSIENT_CODES = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError._UNKNOWN_PARTITION,
    }
)


@dataclass
class _Writer:
    producer: Producer
    transactional_id: str
    synced: set[int] = field(default_factory=set)
    # partitions of other ledgers this writer's transactions extend (append_ledgers)
    synced_other: set[tuple[str, int]] = field(default_factory=set)


class _CommitUnknown(Exception):
    pass


class KafkaBackend:
    """Ledgers stored in a Kafka cluster (see the module docstring for the layout).

    ``config`` is passed through to every librdkafka client (``security.protocol``,
    ``sasl.*``, ``ssl.*``, ...). ``state_dir`` holds the node cache (default
    ``~/.cache/streamledger/kafka/<cluster id>/``). ``transactional_id`` is a template with
    the placeholders ``{ledger}`` and ``{host}`` (default ``streamledger-{ledger}``: every
    writer of a ledger fences the previous one, wherever it runs). ``timeout`` bounds every
    broker round trip: an unreachable cluster raises ``BackendUnavailable`` instead of hanging.
    ``transaction_timeout`` (seconds, default ``max(60, 3 * timeout)``) is the writer's
    ``transaction.timeout.ms``: how long a crashed writer's open transaction can block readers.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        config: Mapping[str, Any] | None = None,
        state_dir: str | Path | None = None,
        transactional_id: str | None = None,
        timeout: float = 10.0,
        transaction_timeout: float | None = None,
    ) -> None:
        if not bootstrap_servers or not isinstance(bootstrap_servers, str):
            raise ConfigError(
                "no Kafka bootstrap servers given: pass --bootstrap-servers HOST:PORT or set "
                "STREAMLEDGER_KAFKA"
            )
        user = {str(k): v if callable(v) else str(v) for k, v in (config or {}).items()}
        if "transactional.id" in user:
            raise ConfigError("set the transactional id with transactional_id=, not in config")
        self.bootstrap = bootstrap_servers
        self.timeout = float(timeout)
        self._user = user
        self._tid_template = transactional_id or DEFAULT_TRANSACTIONAL_ID
        self._tx_timeout = transaction_timeout
        self._last_error = ""
        self._lock = threading.RLock()
        self._writers: dict[str, _Writer] = {}
        # Read-your-writes: the end offset of our last committed transaction per partition.
        # Commit markers reach partitions asynchronously, so a read right after a commit
        # waits (bounded) until the last stable offset has passed our records.
        self._written_end: dict[tuple[str, int], int] = {}
        # The size of each partition as this backend last knew it from its node cache: set
        # by every _sync and every commit, the only ways the cache moves here, so a writer
        # checks a batch's first seq without a cache query per partition and transaction.
        self._sizes: dict[tuple[str, int], int] = {}
        self._doc_cache: dict[str, tuple[int, list[tuple[str, bytes]]]] = {}
        self._doc_topics: set[str] = set()
        self._caches: dict[str, NodeCache] = {}
        self._validated: set[tuple[str, int]] = set()
        self._topic_ids: dict[str, str] = {}
        self._registry: dict[str, LedgerConfig] = {}
        self._registry_next = 0
        self._cp_cache: dict[tuple[str, int], tuple[int, list[str]]] = {}
        self._plain: Producer | None = None
        self._reader_consumer: Consumer | None = None
        self._closed = False
        ms = str(int(self.timeout * 1000))
        try:
            self._admin = AdminClient(
                client_config(
                    self.bootstrap,
                    user,
                    self._on_error,
                    **{"socket.connection.setup.timeout.ms": ms},
                )
            )
        except KafkaException as exc:
            raise ConfigError(f"invalid Kafka client settings: {describe(exc)}") from None
        info = self._wait("connect", self._admin.describe_cluster(request_timeout=self.timeout))
        self.cluster_id: str = info.cluster_id or safe_dirname(self.bootstrap)
        self.brokers = max(1, len(info.nodes or ()))
        if state_dir is None:
            state_dir = (
                Path.home() / ".cache" / "streamledger" / "kafka" / safe_dirname(self.cluster_id)
            )
        self.state_dir = Path(state_dir)

    def __repr__(self) -> str:
        return f"KafkaBackend({self.bootstrap!r}, cluster={self.cluster_id!r})"

    def __enter__(self) -> KafkaBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ----------------------------------------------------------------------
    def _on_error(self, err: KafkaError) -> None:
        self._last_error = f"{err.str()} ({err.name()})"
        log.debug("kafka client error: %s", self._last_error)

    def _fail(self, what: str, exc: BaseException | str) -> Exception:
        return unavailable(self.bootstrap, what, exc, self._last_error)

    def _wait(self, what: str, future: Any) -> Any:
        try:
            return future.result(timeout=self.timeout + 1)
        except KafkaException as exc:
            raise self._fail(what, exc) from None
        except TimeoutError:
            raise self._fail(what, f"no answer within {self.timeout:g}s") from None

    def _consumer(self) -> Consumer:
        conf = client_config(
            self.bootstrap,
            self._user,
            self._on_error,
            **{"group.id": _READER_GROUP, **consumer_settings(self.timeout)},
        )
        # Our reading semantics are not the user's to change.
        for key in ("enable.auto.commit", "isolation.level", "enable.partition.eof"):
            conf[key] = consumer_settings()[key]
        try:
            return Consumer(conf)
        except KafkaException as exc:
            raise ConfigError(f"invalid Kafka client settings: {describe(exc)}") from None

    def _reader(self) -> Consumer:
        if self._reader_consumer is None:
            self._reader_consumer = self._consumer()
        return self._reader_consumer

    def _watermarks(self, topic: str, partition: int) -> tuple[int, int]:
        """(low watermark, last stable offset) of a partition, asked from the broker.

        Never earlier than the end of this backend's own last committed write."""
        written = self._written_end.get((topic, partition), 0)
        deadline = time.monotonic() + self.timeout
        while True:
            with self._lock:
                try:
                    low, high = self._reader().get_watermark_offsets(
                        TopicPartition(topic, partition), timeout=self.timeout, cached=False
                    )
                except KafkaException as exc:
                    # Leadership moves after a topic is created or a broker restarts.
                    err = kafka_error(exc)
                    if (
                        err is not None
                        and err.code() in _TRANSIENT_CODES
                        and time.monotonic() < deadline
                    ):
                        time.sleep(0.05)
                        continue
                    raise self._fail(f"reading the end of {topic}[{partition}]", exc) from None
            if high >= written or time.monotonic() > deadline:
                return low, high
            time.sleep(0.005)

    def _fetch(
        self,
        consumer: Consumer,
        topic: str,
        partition: int,
        start: int,
        stop: int,
        batch_bytes: int = _BATCH_BYTES,
        min_records: int = _FETCH_MIN,
    ) -> Iterator[list[Message]]:
        """Batches of committed messages with ``start <= offset < stop``, in order, of about
        ``batch_bytes`` each (at least ``min_records`` records)."""
        if start >= stop:
            return
        consumer.assign([TopicPartition(topic, partition, start)])
        try:
            yield from self._fetch_assigned(
                consumer, topic, partition, start, stop, batch_bytes, min_records
            )
        finally:
            # an idle assignment keeps a long-poll Fetch in flight, which would delay
            # every later request (watermarks) on the same broker connection
            with contextlib.suppress(KafkaException, RuntimeError):
                consumer.unassign()

    def _fetch_assigned(
        self,
        consumer: Consumer,
        topic: str,
        partition: int,
        start: int,
        stop: int,
        batch_bytes: int = _BATCH_BYTES,
        min_records: int = _FETCH_MIN,
    ) -> Iterator[list[Message]]:
        deadline = time.monotonic() + self.timeout
        position = start
        # The record size is unknown until the first batch: ask for few records first (the
        # broker's first answer may hold fewer than _FETCH_BATCH large records, and consume()
        # would then wait its whole timeout for the rest).
        count = min_records
        while True:
            # consume() waits its whole timeout unless `count` records are queued: ask for
            # about batch_bytes worth, so large records come back as soon as they are here
            # ... and no more than the offsets left: a short read (a checkpoint, the last
            # record) then returns as soon as its records are here
            msgs = consumer.consume(max(1, min(count, stop - position)), 0.02)
            if not msgs:
                if time.monotonic() > deadline:
                    raise self._fail(
                        f"reading {topic}[{partition}] offsets {position}..{stop - 1}",
                        f"no progress for {self.timeout:g}s",
                    )
                continue
            size = (len(msgs[0]) + len(msgs[-1])) // 2 + 64
            count = max(min_records, min(_FETCH_BATCH, batch_bytes // size))
            out = msgs
            done = False
            last = msgs[-1]
            if last.error() is not None or last.offset() >= stop - 1:
                out = []
                for m in msgs:
                    err = m.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            done = True
                            break
                        raise self._fail(f"reading {topic}[{partition}]", KafkaException(err))
                    if m.offset() >= stop:
                        done = True
                        break
                    out.append(m)
                    if m.offset() == stop - 1:
                        done = True
                        break
            if out:
                position = out[-1].offset() + 1
                yield out
            if done:
                return
            deadline = time.monotonic() + self.timeout  # (the caller may have taken long)

    # -- ledgers -----------------------------------------------------------------------
    def _topic_exists(self, topic: str) -> bool:
        try:
            md = self._admin.list_topics(topic=topic, timeout=self.timeout)
        except KafkaException as exc:
            raise self._fail(f"looking up topic {topic}", exc) from None
        tmd = md.topics.get(topic)
        return tmd is not None and tmd.error is None

    def _load_registry(self) -> dict[str, LedgerConfig]:
        with self._lock:
            if self._registry_next == 0 and not self._topic_exists(REGISTRY_TOPIC):
                return self._registry
            _, end = self._watermarks(REGISTRY_TOPIC, 0)
            for batch in self._fetch(self._reader(), REGISTRY_TOPIC, 0, self._registry_next, end):
                for m in batch:
                    key = m.key()
                    if key is None:
                        continue
                    name = key.decode("utf-8", "replace")
                    value = m.value()
                    if value is None:
                        self._registry.pop(name, None)
                        continue
                    try:
                        self._registry[name] = LedgerConfig.from_json(value)
                    except (ValueError, KeyError, TypeError) as exc:
                        log.warning("ignoring damaged config of ledger %r: %s", name, exc)
            self._registry_next = max(self._registry_next, end)
            return self._registry

    def list_ledgers(self) -> list[str]:
        return sorted(self._load_registry())

    def ledger_config(self, ledger: str) -> LedgerConfig:
        config = self._registry.get(ledger)
        if config is None:
            config = self._load_registry().get(ledger)
        if config is None:
            known = ", ".join(sorted(self._registry)) or "none"
            raise ConfigError(
                f"no ledger named {ledger!r} in Kafka cluster {self.bootstrap} (ledgers: {known})"
            )
        return config

    def create_ledger(self, config: LedgerConfig) -> None:
        check_ledger_name(config.name)
        if config.name in self._load_registry():
            raise ConfigError(f"ledger {config.name!r} already exists in {self.bootstrap}")
        rf, topic_conf = topic_settings(config.options, self.brokers)
        compacted = {
            "cleanup.policy": "compact",
            "min.insync.replicas": topic_conf["min.insync.replicas"],
        }
        history = {**topic_conf, "retention.ms": "-1", "retention.bytes": "-1"}
        registry_rf = max(1, min(3, self.brokers))
        self._create_topics(
            [NewTopic(REGISTRY_TOPIC, 1, registry_rf, config=dict(compacted))], exist_ok=True
        )
        self._create_topics(
            [
                NewTopic(config.name, config.partitions, rf, config=topic_conf),
                NewTopic(checkpoints_topic(config.name), config.partitions, rf, config=compacted),
                NewTopic(history_topic(config.name), config.partitions, rf, config=history),
                NewTopic(documents_topic(config.name), 1, rf, config=history),
            ],
            exist_ok=False,
        )
        value = config.to_json().encode()
        self._produce_sync("registering the ledger", [(REGISTRY_TOPIC, 0, config.name, value)])
        self._registry[config.name] = config

    def _create_topics(self, topics: list[NewTopic], *, exist_ok: bool) -> None:
        futures = self._admin.create_topics(
            topics, operation_timeout=self.timeout, request_timeout=self.timeout
        )
        for topic in topics:
            name = topic.topic
            try:
                futures[name].result(timeout=self.timeout + 1)
            except KafkaException as exc:
                err = kafka_error(exc)
                if err is not None and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    if exist_ok or self._adoptable(name, topic.num_partitions):
                        continue
                    raise ConfigError(
                        f"topic {name!r} already exists in {self.bootstrap} and is not an "
                        "empty streamledger topic: choose another ledger name"
                    ) from None
                if err is not None and err.code() in (
                    KafkaError.INVALID_REPLICATION_FACTOR,
                    KafkaError.INVALID_CONFIG,
                    KafkaError.POLICY_VIOLATION,
                ):
                    raise ConfigError(f"cannot create topic {name!r}: {describe(exc)}") from None
                raise self._fail(f"creating topic {name}", exc) from None
            except TimeoutError:
                raise self._fail(f"creating topic {name}", "no answer") from None

    def _adoptable(self, topic: str, partitions: int) -> bool:
        """An existing topic is ours to reuse if a create was interrupted: same partition
        count, no ledger registered under that name, and nothing in it."""
        md = self._admin.list_topics(topic=topic, timeout=self.timeout).topics.get(topic)
        if md is None or md.error is not None or len(md.partitions) != partitions:
            return False
        return all(self._watermarks(topic, p)[1] == 0 for p in range(partitions))

    def _check_partition(self, ledger: str, partition: int) -> LedgerConfig:
        config = self.ledger_config(ledger)
        if not 0 <= partition < config.partitions:
            raise ConfigError(
                f"ledger {ledger!r} has partitions 0..{config.partitions - 1}, not {partition}"
            )
        return config

    # -- cache -------------------------------------------------------------------------
    def _topic_id(self, topic: str) -> str:
        tid = self._topic_ids.get(topic)
        if tid is None:
            from confluent_kafka import TopicCollection

            # A topic just created may take a moment to appear in every broker's metadata.
            deadline = time.monotonic() + self.timeout
            while True:
                futures = self._admin.describe_topics(
                    TopicCollection([topic]), request_timeout=self.timeout
                )
                try:
                    desc = futures[topic].result(timeout=self.timeout + 1)
                    break
                except KafkaException as exc:
                    err = kafka_error(exc)
                    unknown = err is not None and err.code() in (
                        KafkaError.UNKNOWN_TOPIC_OR_PART,
                        KafkaError._UNKNOWN_TOPIC,
                    )
                    if not unknown or time.monotonic() > deadline:
                        raise self._fail(f"describing topic {topic}", exc) from None
                    time.sleep(0.05)
                except TimeoutError:
                    raise self._fail(f"describing topic {topic}", "no answer") from None
            tid = self._topic_ids[topic] = str(desc.topic_id)
        return tid

    def _cache(self, ledger: str) -> NodeCache:
        cache = self._caches.get(ledger)
        if cache is None:
            with self._lock:
                cache = self._caches.get(ledger)
                if cache is not None:
                    return cache
                self.ledger_config(ledger)
                cache = NodeCache(self.state_dir / f"{ledger}.sqlite")
                topic_id = self._topic_id(ledger)
                if cache.meta("topic_id") != topic_id:
                    # a fresh cache, or the topic was deleted and created again
                    cache.reset()
                    cache.set_meta("topic_id", topic_id)
                    cache.set_meta("bootstrap", self.bootstrap)
                self._caches[ledger] = cache
        return cache

    def _validate(self, ledger: str, partition: int, front: Frontier, low: int, lso: int):
        """Is the cached frontier still what the topic holds? Else forget it."""
        cache = self._cache(ledger)
        ok = front.next_offset <= lso
        if ok and front.size:
            ok = False
            last = front.last_offset
            if last is not None and last >= low:
                for batch in self._fetch(self._reader(), ledger, partition, last, last + 1):
                    m = batch[0]
                    try:
                        ok = m.offset() == last and _leaf_of(m.value() or b"") == front.last_leaf
                    except FormatError:
                        ok = False
                    break
        if not ok:
            log.warning(
                "node cache of %s[%d] in %s does not match the topic: rebuilding it",
                ledger,
                partition,
                cache.path,
            )
            cache.reset(partition)
            return Frontier()
        return front

    def _sync(self, ledger: str, partition: int) -> Frontier:
        """Bring the cache of one partition up to the topic's committed end."""
        with self._lock:
            front = self._synced_front(ledger, partition)
            self._sizes[(ledger, partition)] = front.size
            return front

    def _synced_front(self, ledger: str, partition: int) -> Frontier:
        with self._lock:
            cache = self._cache(ledger)
            low, lso = self._watermarks(ledger, partition)
            front = cache.frontier(partition)
            if (ledger, partition) not in self._validated:
                front = self._validate(ledger, partition, front, low, lso)
                self._validated.add((ledger, partition))
            if front.next_offset >= lso:
                return front
            try:
                return self._follow(ledger, partition, cache, front, low, lso)
            except _CacheGap:
                cache.reset(partition)
                return self._follow(ledger, partition, cache, Frontier(), low, lso)

    def _follow(
        self, ledger: str, partition: int, cache: NodeCache, front: Frontier, low: int, lso: int
    ) -> Frontier:
        def cached(level: int, index: int) -> bytes:
            h = cache.get_node(partition, level, index)
            if h is None:
                raise _CacheGap
            return h

        tree = CompactRange.from_nodes(front.size, cached)
        start = max(front.next_offset, low)
        expected, prev = front.size, front.last_leaf or ZERO_HASH
        last_offset = front.last_offset
        first_seq, offsets, leaves = expected, [], []
        for batch in self._own_entries(self._reader(), ledger, partition, start, lso):
            for m, entry in batch:
                h = entry.header
                if h.seq != expected or h.prev_hash != prev:
                    if expected == 0 and h.seq > 0 and low > 0 and start == low:
                        raise BackendUnavailable(
                            f"ledger {ledger!r} partition {partition}: the topic now starts at "
                            f"offset {low} with entry seq {h.seq}; the entries before it were "
                            "deleted (DeleteRecords or retention), so the Merkle tree cannot be "
                            "rebuilt from Kafka. Run 'streamledger verify' to see the damage, "
                            "or use the state_dir that still holds this ledger's node cache."
                        )
                    continue
                leaf = hashlib.sha256(b"\x00" + entry.header_bytes).digest()
                leaves.append(leaf)
                last_offset = m.offset()
                offsets.append(last_offset)
                expected += 1
                prev = leaf
            if len(offsets) >= _CACHE_FLUSH:
                front = Frontier(last_offset + 1, expected, prev, last_offset)  # type: ignore[operator]
                nodes = tree.append_runs(leaves)
                cache.apply([CacheUpdate(partition, first_seq, offsets, nodes, front)])
                first_seq, offsets, leaves = expected, [], []
        front = Frontier(lso, expected, prev if expected else None, last_offset)
        nodes = tree.append_runs(leaves)
        cache.apply([CacheUpdate(partition, first_seq, offsets, nodes, front)])
        return front

    # -- partitions --------------------------------------------------------------------
    def head(self, ledger: str, partition: int) -> PartitionHead:
        self._check_partition(ledger, partition)
        front = self._sync(ledger, partition)
        return PartitionHead(front.size, front.last_leaf if front.size else None)

    def _writer(self, ledger: str) -> _Writer:
        writer = self._writers.get(ledger)
        if writer is not None:
            return writer
        tid = transactional_id_for(self._tid_template, ledger)
        for other, w in self._writers.items():
            if w.transactional_id == tid:
                raise ConfigError(
                    f"transactional id {tid!r} is already used for ledger {other!r}: "
                    "use a template with {ledger} to write several ledgers"
                )
        conf = client_config(
            self.bootstrap, self._user, self._on_error, **producer_settings(self.timeout)
        )
        if self._tx_timeout is not None:
            tx_ms = int(self._tx_timeout * 1000)
            conf.update({"transaction.timeout.ms": tx_ms, "message.timeout.ms": tx_ms})
        conf.update({"transactional.id": tid, "enable.idempotence": True, "acks": "all"})
        try:
            producer = Producer(conf)
        except KafkaException as exc:
            raise ConfigError(f"invalid Kafka producer settings: {describe(exc)}") from None
        try:
            # Fences every older producer with this id; completes or aborts its open
            # transaction before returning, so the heads read after this are final.
            producer.init_transactions(self.timeout)
        except KafkaException as exc:
            raise self._fail(f"starting the transactional writer {tid!r}", exc) from None
        writer = self._writers[ledger] = _Writer(producer, tid)
        # A writer's ledger gets checkpoints: create their producer now, so that it connects
        # and gets its producer id in the background instead of in the first checkpoint.
        with contextlib.suppress(KafkaException):
            self._plain_producer()
        return writer

    def _drop_writer(self, ledger: str) -> None:
        writer = self._writers.pop(ledger, None)
        if writer is not None:
            with contextlib.suppress(KafkaException, RuntimeError):
                writer.producer.purge()

    def forget_heads(self, ledger: str, partitions: Iterable[int] | None = None) -> None:
        """Re-read the heads of these partitions (default all) from the topic before the next
        append, e.g. after another writer (a sequencer of another group member) wrote them."""
        with self._lock:
            writer = self._writers.get(ledger)
            if writer is not None:
                if partitions is None:
                    writer.synced.clear()
                else:
                    writer.synced.difference_update(partitions)
            for w in self._writers.values():
                w.synced_other = {
                    (name, p)
                    for name, p in w.synced_other
                    if name != ledger or (partitions is not None and p not in partitions)
                }

    def fence(self, ledger: str) -> str:
        """Start the transactional writer of ``ledger`` now and return its transactional id.

        ``init_transactions`` fences every older producer with the same id and completes or
        aborts its open transaction before this returns. Appends do this on first use; call
        it first when you are about to read something a previous instance of your process
        may have left in an open transaction (its state, the heads of the other ledgers it
        wrote with :meth:`append_ledgers`)."""
        self.ledger_config(ledger)
        with self._lock:
            return self._writer(ledger).transactional_id

    def append(
        self,
        ledger: str,
        batches: Mapping[int, AppendBatch],
        *,
        consumer_offsets: Sequence[TopicPartition] | None = None,
        group_metadata: Any = None,
        extra_records: Sequence[ExtraRecord] | None = None,
    ) -> dict[int, list[int]]:
        """Append batches in one Kafka transaction (see :class:`Backend`).

        Kafka-only additions to the same transaction: ``extra_records`` are produced to other
        topics, and ``consumer_offsets`` (positions to commit, i.e. last offset + 1) are
        committed for the consumer group of ``group_metadata``
        (``Consumer.consumer_group_metadata()``) with ``send_offsets_to_transaction``: a
        consumer-to-ledger pipeline is then exactly once, and a consumer of an older group
        generation (a zombie) is fenced (KIP-447): its transaction is aborted, nothing of it
        is written, and the append raises ``WriteConflict``."""
        return self.append_ledgers(
            {ledger: batches},
            consumer_offsets=consumer_offsets,
            group_metadata=group_metadata,
            extra_records=extra_records,
        ).get(ledger, {})

    def append_ledgers(
        self,
        batches: Mapping[str, Mapping[int, AppendBatch]],
        *,
        consumer_offsets: Sequence[TopicPartition] | None = None,
        group_metadata: Any = None,
        extra_records: Sequence[ExtraRecord] | None = None,
    ) -> dict[str, dict[int, list[int]]]:
        """Append batches to several ledgers in ONE Kafka transaction: ledger -> partition
        -> offsets of its records.

        The transaction is the first ledger's: it runs on that ledger's transactional
        producer (its ``transactional.id`` fences older writers), and the other ledgers'
        records are produced inside it. Every batch must start at its partition's head, as
        with :meth:`append` (else ``WriteConflict``). Use it when one process is the only
        writer of all these ledgers (a pipeline writing its outputs), and give the other
        ledgers no writer of their own meanwhile: their heads are checked against the topic
        when first used and then followed from this backend's own commits.
        ``consumer_offsets``, ``group_metadata`` and ``extra_records`` as in :meth:`append`.
        :func:`streamledger.ledger.append_atomically` builds the batches."""
        if not batches:
            raise ConfigError("append_ledgers needs at least one ledger")
        if consumer_offsets and group_metadata is None:
            raise ConfigError("consumer_offsets need the consumer's group_metadata")
        via = next(iter(batches))
        todo: dict[str, dict[int, AppendBatch]] = {}
        for ledger, parts in batches.items():
            config = self.ledger_config(ledger)
            for partition in parts:
                if not 0 <= partition < config.partitions:
                    raise ConfigError(
                        f"ledger {ledger!r} has partitions 0..{config.partitions - 1}, "
                        f"not {partition}"
                    )
            kept = {p: b for p, b in parts.items() if b.records}
            if kept:
                todo[ledger] = kept
        extras = (list(extra_records or ()), list(consumer_offsets or ()), group_metadata)
        if not todo and not extras[0] and not extras[1]:
            return {}
        with self._lock:
            writer = self._writer(via)
            for ledger, parts in todo.items():
                cache = self._cache(ledger)
                for partition, batch in parts.items():
                    if ledger == via:
                        synced = partition in writer.synced
                    else:
                        synced = (ledger, partition) in writer.synced_other
                    if not synced:
                        size = self._sync(ledger, partition).size
                        if ledger == via:
                            writer.synced.add(partition)
                        else:
                            writer.synced_other.add((ledger, partition))
                    else:
                        known = self._sizes.get((ledger, partition))
                        size = cache.frontier(partition).size if known is None else known
                    if size != batch.first_seq:
                        raise WriteConflict(
                            f"ledger {ledger!r} partition {partition} has {size} entries, "
                            f"but the batch starts at seq {batch.first_seq}: another writer "
                            "appended meanwhile"
                        )
            try:
                offsets = self._transact(via, writer, todo, extras)
            except BaseException:
                # the other ledgers' heads are read from the topic again next time
                writer.synced_other.clear()
                raise
            for ledger, parts in todo.items():
                updates = []
                for partition, batch in parts.items():
                    offs = offsets[ledger][partition]
                    size = batch.first_seq + len(batch.records)
                    front = Frontier(offs[-1] + 1, size, _leaf_of(batch.records[-1]), offs[-1])
                    self._written_end[(ledger, partition)] = offs[-1] + 1
                    self._sizes[(ledger, partition)] = size
                    updates.append(
                        CacheUpdate(partition, batch.first_seq, offs, batch.nodes, front)
                    )
                # written by the cache's own thread while the next transaction runs
                self._cache(ledger).apply_later(updates)
            return offsets

    def _transact(
        self,
        ledger: str,
        writer: _Writer,
        batches: Mapping[str, Mapping[int, AppendBatch]],
        extras: tuple[list[ExtraRecord], list[TopicPartition], Any] = ([], [], None),
    ) -> dict[str, dict[int, list[int]]]:
        """One transaction of ``ledger``'s writer holding ``batches`` (ledger -> partition
        -> batch, possibly of several ledgers) and the extras."""
        # Delivery reports only for the first and last record of each partition: inside a
        # transaction our records of a partition almost always sit at consecutive offsets
        # (then the two reports give every offset); if another producer slipped records in
        # between, _locate reads the offsets back. A failed record in the middle makes the
        # commit fail, so no report is needed to notice it.
        producer = writer.producer
        reports: dict[tuple[str, int, int], tuple[int, KafkaError | None]] = {}

        def reporter(topic: str, partition: int, position: int):
            def on_delivery(err: KafkaError | None, msg: Message) -> None:
                reports[(topic, partition, position)] = (msg.offset(), err)

            return on_delivery

        produce, poll = producer.produce, producer.poll
        try:
            producer.begin_transaction()
            for topic, parts in batches.items():
                for partition, batch in parts.items():
                    records, keys = batch.records, batch.keys
                    last = len(records) - 1
                    if len(keys) != len(records):
                        raise ValueError("an AppendBatch needs one key (or None) per record")
                    # the first and last record with a report, the middle with one C-level
                    # loop (map) calling produce, as a plain produce loop would
                    for i in (0, last) if last else (0,):
                        cb = reporter(topic, partition, i)
                        while True:
                            try:
                                produce(topic, records[i], keys[i], partition, on_delivery=cb)
                                break
                            except BufferError:
                                poll(0.05)
                        if i == 0 and last > 1:
                            _produce_all(produce, poll, topic, partition, records, keys, 1, last)
            extra_records, consumer_offsets, group_metadata = extras
            for topic, partition, key, value, headers in extra_records:
                while True:
                    try:
                        produce(
                            topic,
                            value,
                            key,
                            -1 if partition is None else partition,
                            headers=headers,
                        )
                        break
                    except BufferError:
                        poll(0.05)
            # No separate flush: the offsets' two round trips (AddOffsetsToTxn, TxnOffsetCommit)
            # overlap the records' acks, and commit_transaction flushes every outstanding
            # record before it commits (a record that failed makes the commit fail, and the
            # transaction is aborted). The order inside a transaction does not matter: the
            # offsets and the records become visible together or not at all.
            if consumer_offsets:
                producer.send_offsets_to_transaction(consumer_offsets, group_metadata, self.timeout)
            self._commit(producer)
            producer.poll(0)  # serve any delivery report the commit's flush left queued
        except _CommitUnknown as exc:
            self._drop_writer(ledger)
            raise self._fail(
                f"committing an append to ledger {ledger!r}",
                f"{exc}; the outcome is unknown: the next append re-reads the heads from Kafka",
            ) from None
        except KafkaException as exc:
            self._transaction_failed(ledger, writer, exc)
        offsets: dict[str, dict[int, list[int]]] = {}
        for topic, parts in batches.items():
            mine = offsets[topic] = {}
            for partition, batch in parts.items():
                n = len(batch.records)
                first = reports.get((topic, partition, 0))
                last = reports.get((topic, partition, n - 1))
                if first is None or last is None:
                    self._drop_writer(ledger)
                    raise BackendUnavailable(
                        f"ledger {topic!r} partition {partition}: the broker committed the "
                        "append but sent no delivery report; the next append re-reads the heads"
                    )
                if last[0] - first[0] == n - 1:
                    mine[partition] = list(range(first[0], last[0] + 1))
                else:
                    mine[partition] = self._locate(topic, partition, first[0], last[0], batch)
        return offsets

    def _locate(
        self, ledger: str, partition: int, first: int, last: int, batch: AppendBatch
    ) -> list[int]:
        """Offsets of our just-committed records when other records were interleaved."""
        records, offsets, i = batch.records, [], 0
        with self._lock:
            for msgs in self._fetch(self._reader(), ledger, partition, first, last + 1):
                for m in msgs:
                    if i < len(records) and m.value() == records[i]:
                        offsets.append(m.offset())
                        i += 1
        if i != len(records):
            raise BackendUnavailable(
                f"ledger {ledger!r} partition {partition}: found only {i} of the "
                f"{len(records)} records just committed at offsets {first}..{last}"
            )
        return offsets

    def _commit(self, producer: Producer) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                producer.commit_transaction(max(0.1, deadline - time.monotonic()))
                return
            except KafkaException as exc:
                err = kafka_error(exc)
                if err is None or err.fatal() or err.txn_requires_abort():
                    raise
                if err.retriable() and time.monotonic() < deadline:
                    continue
                raise _CommitUnknown(describe(exc)) from None

    def _transaction_failed(self, ledger: str, writer: _Writer, exc: KafkaException):
        err = kafka_error(exc)
        tid = writer.transactional_id
        text = describe(exc)
        if err is not None and (
            err.code() in FENCED_CODES or err.fatal() or err.code() == KafkaError._FATAL
        ):
            self._drop_writer(ledger)
            if err.code() in FENCED_CODES or "fenced" in text.lower():
                message = (
                    f"ledger {ledger!r}: another writer took over (transactional.id {tid!r}) "
                    f"and fenced this one; nothing of this append was written ({text}). "
                    "The next append re-reads the heads from Kafka and takes over again."
                )
                raise WriteConflict(message) from None
            raise self._fail(f"appending to ledger {ledger!r} (fatal producer error)", exc)
        try:
            writer.producer.abort_transaction(self.timeout)
        except KafkaException as exc2:
            self._drop_writer(ledger)
            err2 = kafka_error(exc2)
            if err2 is not None and (err2.code() in FENCED_CODES or "fenced" in describe(exc2)):
                message = (
                    f"ledger {ledger!r}: another writer took over (transactional.id {tid!r}) "
                    "and fenced this one; nothing of this append was written."
                )
                raise WriteConflict(message) from None
        if err is not None and err.code() in _GROUP_FENCED_CODES:
            raise WriteConflict(
                f"ledger {ledger!r}: the consumer group moved on ({text}): this consumer no "
                "longer owns its partitions; the transaction was aborted, nothing was written"
            ) from None
        raise self._fail(
            f"appending to ledger {ledger!r} (transaction aborted, nothing was written)", exc
        ) from None

    # -- reading -----------------------------------------------------------------------
    def scan(self, ledger: str, partition: int) -> Iterator[StoredRecord]:
        self._check_partition(ledger, partition)
        low, lso = self._watermarks(ledger, partition)
        return self._scan(ledger, partition, low, lso)

    def _scan(self, ledger: str, partition: int, low: int, lso: int) -> Iterator[StoredRecord]:
        """The records of ``low <= offset < lso``, read ahead by a background thread.

        The thread starts at once (so a caller can open the next partition's scan while it
        still works on this one) and stays at most ``_READ_AHEAD`` batches of about
        ``_SCAN_BATCH_BYTES`` each ahead of the caller; librdkafka's own fetch queue
        (``queued.max.messages.kbytes``) comes on top. While the caller hashes a batch (the
        native verifier releases the GIL), the thread fetches and unpacks the next ones."""
        return _ReadAhead(self, ledger, partition, low, lso)

    def _read_ahead(
        self,
        ledger: str,
        partition: int,
        low: int,
        lso: int,
        out: queue.Queue,
        stop: threading.Event,
    ) -> None:
        def offer(item: object) -> bool:
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        consumer = None
        try:
            consumer = self._consumer()
            batches = self._fetch(
                consumer, ledger, partition, low, lso, _SCAN_BATCH_BYTES, _SCAN_FETCH_MIN
            )
            for batch in batches:
                native = _accel.native
                if native is not None:
                    unpacked = native.unpack_messages(batch)
                else:
                    offsets, values = [], []
                    for m in batch:
                        value = m.value()
                        if value is not None:
                            offsets.append(m.offset())
                            values.append(value)
                    unpacked = (offsets, values)
                if not offer(unpacked):
                    return
            offer(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the reading thread
            offer(exc)
        finally:
            if consumer is not None:
                with contextlib.suppress(KafkaException, RuntimeError):
                    consumer.close()

    def read(
        self, ledger: str, partition: int, start: int = 0, end: int | None = None
    ) -> Iterator[StoredRecord]:
        self._check_partition(ledger, partition)
        start = max(0, start)
        if end is not None and end <= start:
            return iter(())
        cache = self._cache(ledger)
        with self._lock:
            low, lso = self._watermarks(ledger, partition)
            offset = cache.offset_of(partition, start)
            if offset is None or offset < low or offset >= lso:
                offset = self._search(ledger, partition, start, low, lso)
        return self._read(ledger, partition, start, end, offset, lso, cache)

    def _read(
        self,
        ledger: str,
        partition: int,
        start: int,
        end: int | None,
        offset: int,
        lso: int,
        cache: NodeCache,
    ) -> Iterator[StoredRecord]:
        expected = start
        prev: bytes | None = None
        consumer = self._consumer()
        try:
            for batch in self._own_entries(consumer, ledger, partition, offset, lso):
                for m, entry in batch:
                    h = entry.header
                    if h.seq != expected:
                        continue
                    leaf = hashlib.sha256(b"\x00" + entry.header_bytes).digest()
                    if prev is None:
                        known = cache.get_node(partition, 0, expected)
                        if known is not None and known != leaf:
                            continue  # not the record the writer stored for this seq
                    elif h.prev_hash != prev:
                        continue
                    yield StoredRecord(m.offset(), m.value())
                    prev = leaf
                    expected += 1
                    if end is not None and expected >= end:
                        return
        finally:
            consumer.close()

    def _own_entries(
        self, consumer: Consumer, ledger: str, partition: int, start: int, stop: int
    ) -> Iterator[list[tuple[Message, Entry]]]:
        """Fetched batches, keeping only records that decode as entries of this ledger and
        partition (the writer's view: foreign and garbage records are not its log)."""
        for batch in self._fetch(consumer, ledger, partition, start, stop):
            own = []
            for m in batch:
                value = m.value()
                if value is None:
                    continue
                try:
                    entry = decode_record(value)
                except FormatError:
                    continue
                if entry.header.ledger == ledger and entry.header.partition == partition:
                    own.append((m, entry))
            yield own

    def _search(self, ledger: str, partition: int, seq: int, low: int, lso: int) -> int:
        """Smallest offset from which the first entry of this log has ``seq >= target``
        (binary search over offsets, for when the offset index does not cover ``seq``)."""

        def seq_at(offset: int) -> tuple[int, int] | None:
            for batch in self._fetch(self._reader(), ledger, partition, offset, lso):
                for m in batch:
                    try:
                        h = decode_record(m.value() or b"").header
                    except FormatError:
                        continue
                    if h.ledger == ledger and h.partition == partition:
                        return m.offset(), h.seq
            return None

        lo, hi = low, lso
        while lo < hi:
            mid = (lo + hi) // 2
            found = seq_at(mid)
            if found is None or found[1] >= seq:
                hi = mid
            else:
                lo = found[0] + 1
        return lo

    def get_node(self, ledger: str, partition: int, level: int, index: int) -> bytes:
        cache = self._cache(ledger)
        h = cache.get_node(partition, level, index)
        if h is not None:
            return h
        self._check_partition(ledger, partition)
        front = self._sync(ledger, partition)
        h = cache.get_node(partition, level, index)
        if h is None:
            raise BackendUnavailable(
                f"ledger {ledger!r} partition {partition}: Merkle node level {level} index "
                f"{index} is not in the node cache {cache.path} (log size {front.size})"
            )
        return h

    def get_nodes(self, ledger: str, partition: int, ids: Iterable[NodeId]) -> dict[NodeId, bytes]:
        """Several nodes from the node cache in one query; if some are not there yet, the
        cache follows the topic once and the rest are looked up again (as get_node does)."""
        wanted = list(dict.fromkeys(ids))
        cache = self._cache(ledger)
        found = cache.get_nodes(partition, wanted)
        if len(found) < len(wanted):
            self._check_partition(ledger, partition)
            front = self._sync(ledger, partition)
            found.update(cache.get_nodes(partition, [n for n in wanted if n not in found]))
            for level, index in wanted:
                if (level, index) not in found:
                    raise BackendUnavailable(
                        f"ledger {ledger!r} partition {partition}: Merkle node level {level} "
                        f"index {index} is not in the node cache {cache.path} (log size "
                        f"{front.size})"
                    )
        return found

    # -- checkpoints -------------------------------------------------------------------
    def add_checkpoint(self, ledger: str, partition: int, tree_size: int, note: str) -> None:
        self._check_partition(ledger, partition)
        value = note.encode("utf-8")
        key = str(partition)
        self._produce_sync(
            f"storing a checkpoint of {ledger}[{partition}]",
            [
                (history_topic(ledger), partition, key, value),
                (checkpoints_topic(ledger), partition, key, value),
            ],
            headers=[("tree_size", str(tree_size).encode())],
        )

    def checkpoints(self, ledger: str, partition: int) -> list[str]:
        self._check_partition(ledger, partition)
        topic = history_topic(ledger)
        with self._lock:
            start, notes = self._cp_cache.get((ledger, partition), (0, []))
            _, end = self._watermarks(topic, partition)
            for batch in self._fetch(self._reader(), topic, partition, start, end):
                for m in batch:
                    value = m.value()
                    if value is not None:
                        notes.append(value.decode("utf-8", "replace"))
            self._cp_cache[(ledger, partition)] = (max(start, end), notes)
            return list(notes)

    def put_document(self, ledger: str, kind: str, key: str, value: bytes) -> None:
        config = self.ledger_config(ledger)
        check_document_kind(kind)
        if ledger not in self._doc_topics:
            # Ledgers created before documents existed get their topic on first use.
            rf, topic_conf = topic_settings(config.options, self.brokers)
            history = {**topic_conf, "retention.ms": "-1", "retention.bytes": "-1"}
            self._create_topics(
                [NewTopic(documents_topic(ledger), 1, rf, config=history)], exist_ok=True
            )
            self._doc_topics.add(ledger)
        self._produce_sync(
            f"storing a {kind} document of {ledger}",
            [(documents_topic(ledger), 0, f"{kind}/{key}", bytes(value))],
            headers=[("kind", kind.encode())],
        )

    def documents(self, ledger: str, kind: str) -> list[tuple[str, bytes]]:
        self.ledger_config(ledger)
        topic = documents_topic(ledger)
        if not self._topic_exists(topic):
            return []
        prefix = kind + "/"
        with self._lock:
            start, docs = self._doc_cache.get(ledger, (0, []))
            _, end = self._watermarks(topic, 0)
            for batch in self._fetch(self._reader(), topic, 0, start, end):
                for m in batch:
                    raw_key, value = m.key(), m.value()
                    if raw_key is not None and value is not None:
                        docs.append((raw_key.decode("utf-8", "replace"), value))
            self._doc_cache[ledger] = (max(start, end), docs)
        return [(k[len(prefix) :], v) for k, v in docs if k.startswith(prefix)]

    def latest_checkpoint(self, ledger: str, partition: int) -> str | None:
        """The newest checkpoint note of a partition from the compacted topic (or None)."""
        self._check_partition(ledger, partition)
        topic = checkpoints_topic(ledger)
        with self._lock:
            _, end = self._watermarks(topic, partition)
            latest = None
            for batch in self._fetch(self._reader(), topic, partition, 0, end):
                for m in batch:
                    if m.value() is not None:
                        latest = m.value().decode("utf-8", "replace")
            return latest

    def _plain_producer(self) -> Producer:
        """The idempotent, non-transactional producer of checkpoints, documents and the
        registry (created on first use, or early by the writer: see :meth:`_writer`)."""
        with self._lock:
            if self._plain is None:
                conf = client_config(
                    self.bootstrap,
                    self._user,
                    self._on_error,
                    **{"linger.ms": 0, "message.timeout.ms": int(self.timeout * 1000)},
                )
                conf.update({"enable.idempotence": True, "acks": "all"})
                self._plain = Producer(conf)
            return self._plain

    def _produce_sync(
        self,
        what: str,
        items: list[tuple[str, int, str, bytes]],
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        with self._lock:
            producer = self._plain_producer()
            errors: list[KafkaError] = []

            def done(err: KafkaError | None, msg: Message) -> None:
                if err is not None:
                    errors.append(err)

            for topic, partition, key, value in items:
                producer.produce(
                    topic, value, key.encode(), partition, on_delivery=done, headers=headers
                )
            remaining = producer.flush(self.timeout)
            if remaining:
                producer.purge()
                producer.flush(0)
                raise self._fail(what, f"not acknowledged within {self.timeout:g}s")
            if errors:
                raise self._fail(what, KafkaException(errors[0]))

    # -- lifecycle ---------------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._plain is not None:
                self._plain.flush(self.timeout)
                self._plain = None
            self._writers.clear()
            if self._reader_consumer is not None:
                with contextlib.suppress(KafkaException, RuntimeError):
                    self._reader_consumer.close()
                self._reader_consumer = None
            for cache in self._caches.values():
                cache.close()
            self._caches.clear()


class _CacheGap(StreamledgerError):
    """The node cache lacks a node it should have: rebuild the partition."""


class _ReadAhead:
    """Iterator over one partition's records, fetched by a background thread
    (:meth:`KafkaBackend._scan`). Closing it, or dropping it, stops the thread.

    The thread hands over batches as two lists, offsets and values (no object per record);
    iterating builds each :class:`StoredRecord` on demand, and :meth:`take_batch` gives the
    next records as slices of those lists (the verifier's fast path)."""

    def __init__(self, backend: KafkaBackend, ledger: str, partition: int, low: int, lso: int):
        self._queue: queue.Queue = queue.Queue(maxsize=_READ_AHEAD)
        self._stop = threading.Event()
        self._offsets: list[int] = []
        self._values: list[bytes] = []
        self._pos = 0
        self._done = False
        self._error: BaseException | None = None  # the thread's, raised after its records
        self._thread = threading.Thread(
            target=backend._read_ahead,
            args=(ledger, partition, low, lso, self._queue, self._stop),
            name=f"scan {ledger}[{partition}]",
            daemon=True,
        )
        self._thread.start()

    def __iter__(self) -> _ReadAhead:
        return self

    def _more(self, wait: bool = True) -> bool:
        """Make a batch with records left current; False at the end (or, unless ``wait``,
        when no batch is ready yet). The thread's exception is raised by a waiting call."""
        while self._pos >= len(self._values):
            if self._done:
                if self._error is not None and wait:
                    error, self._error = self._error, None
                    raise error
                return False
            try:
                item = self._queue.get(block=wait)
            except queue.Empty:
                return False
            if item is None or isinstance(item, BaseException):
                self._done = True
                self._thread.join()
                self._error = item
                continue
            (self._offsets, self._values), self._pos = item, 0
        return True

    def __next__(self) -> StoredRecord:
        if not self._more():
            raise StopIteration
        pos = self._pos
        self._pos = pos + 1
        return StoredRecord(self._offsets[pos], self._values[pos])

    def take_batch(self, limit: int) -> tuple[list[int], list[bytes]]:
        """``(offsets, values)`` of the next records, at most ``limit`` (>= 1) of them, the
        same ones iterating would give next: the rest of the batch at hand and the batches
        already fetched (waits for one only when none is ready), so the caller works while
        the thread fetches. Empty lists at the end."""
        parts: list[tuple[list[int], list[bytes]]] = []
        count = 0
        while count < limit and self._more(wait=not parts):
            pos, offsets, values = self._pos, self._offsets, self._values
            end = min(len(values), pos + limit - count)
            self._pos = end
            if pos == 0 and end == len(values):
                parts.append((offsets, values))
            else:
                parts.append((offsets[pos:end], values[pos:end]))
            count += end - pos
        if len(parts) == 1:
            return parts[0]
        all_offsets: list[int] = []
        all_values: list[bytes] = []
        for offsets, values in parts:
            all_offsets += offsets
            all_values += values
        return all_offsets, all_values

    def close(self) -> None:
        self._done = True
        self._offsets, self._values = [], []
        self._stop.set()

    def __del__(self) -> None:
        self._stop.set()
