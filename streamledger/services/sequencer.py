"""The sequencer service: plain Kafka submissions in, ledger entries out, exactly once.

Any Kafka producer writes submissions to an *intake* topic (value = payload, Kafka key =
entry key, optional header ``content-type``). The sequencer consumes them in a consumer group
(``isolation.level=read_committed``, no auto commit), validates them, chains them into the
ledger and writes, in ONE Kafka transaction:

* the ledger entries,
* the rejected submissions (to ``<ledger>.rejects``, with the reason in headers),
* the consumer offsets of the intake partitions (``send_offsets_to_transaction`` with the
  consumer's group metadata).

So a submission is in the ledger (or in the rejects topic) exactly once, and a sequencer of
an older group generation (a zombie after a rebalance) cannot commit anything: the group
coordinator refuses its offsets and its transaction is aborted (KIP-447).

**Partition mapping.** Intake partition p feeds ledger partition p, and the two topics must
have the same number of partitions (an intake topic that does not exist is created so). The
owner of intake partition p in the group is therefore the only writer of ledger partition p:
several sequencer processes share the work without ever extending the same chain. Produce
with a key to keep per-key order; the entry keeps the key in its header.

**Taking over a partition.** On assignment the sequencer waits until the previous owner's
last transaction is resolved (the committed group offset is stable and the ledger partition
has no open transaction), then re-reads the partition's head from the topic.

**Pipeline.** Transactions are committed in a second thread, one at a time and in order,
while the main thread consumes, validates and builds the next batch on the heads the
committing batch will leave (``Ledger._stage``, as ``Ledger.append_stream`` does) and queues
it behind it: at most two batches are in flight, one committing and one waiting. A batch is
only written if the one before it was: when a transaction fails, the batch queued behind it
is skipped and the partitions of both are rewound to the group's committed offsets.
Rebalance callbacks, checkpoints and stop first wait until nothing is in flight.

**Signed submissions.** On a ledger created with signed submissions (option
``consortium.membership``), each submission must be an envelope signed by an organization
that may write the ledger under the membership document in force; the sequencer refreshes
the membership ledger before each batch and rejects the others (codes ``unsigned``,
``malformed_submission``, ``submission_mismatch``, ``bad_signature``, ``unknown_org``,
``not_a_writer``, ``revoked``, ``future_membership``, ``no_membership``, ``replayed``).
Entries of a batch get the batch's timestamp, the time they were judged at.

See ``docs/sequencer.md`` and ``docs/consortium.md``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    IsolationLevel,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec

from streamledger.backends.kafka import KafkaBackend
from streamledger.backends.kafka._admin import client_config, describe
from streamledger.consortium.submission import SubmissionGate
from streamledger.core.entry import MAX_CONTENT_TYPE, MAX_KEY
from streamledger.core.note import SigningKey
from streamledger.errors import BackendUnavailable, ConfigError, StreamledgerError
from streamledger.ledger import DEFAULT_CONTENT_TYPE, AppendItem, Ledger

REJECTS_SUFFIX = ".rejects"
#: Reject metadata headers added to the submission's own headers.
H_CODE = "streamledger.reject.code"
H_REASON = "streamledger.reject.reason"
H_SOURCE = "streamledger.reject.source"  # "topic:partition:offset"
H_OMITTED = "streamledger.reject.payload-omitted"  # original payload size, payload dropped

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_QUOTED = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"'
_MEDIA_TYPE = re.compile(rf"{_TOKEN}/{_TOKEN}(?:[ \t]*;[ \t]*{_TOKEN}=(?:{_TOKEN}|{_QUOTED}))*")
_MAX_FAILURES = 10
#: Broker errors worth retrying while waiting for a partition to be free.
_TRANSIENT = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
    }
)
_REJECT_BUDGET = 1_000_000
#: The interpreter's thread switch interval while the sequencer runs (restored after): the
#: committing thread, back from a broker wait, gets the GIL from the main thread's Python
#: loop within 0.5 ms instead of the default 5 ms, several times per transaction.
_SWITCH_INTERVAL = 0.0005
#: While a transaction commits, the next batch is consumed in slices of this many seconds
#: until it is full or the commit is done (then a partial batch goes next).
_PIPELINE_WAIT = 0.01


@dataclass(frozen=True)
class Limits:
    """What a submission must satisfy to be sequenced.

    The defaults keep an entry (header + payload + Kafka key) under the broker's default
    1 MiB message size."""

    max_payload_bytes: int = 900_000
    max_key_bytes: int = MAX_KEY
    allow_empty: bool = False

    def __post_init__(self) -> None:
        if self.max_payload_bytes < 1:
            raise ConfigError("max_payload_bytes must be at least 1")
        if not 0 <= self.max_key_bytes <= MAX_KEY:
            raise ConfigError(f"max_key_bytes must be between 0 and {MAX_KEY}")


def validate_submission(
    value: bytes | None,
    key: bytes | None,
    headers: Sequence[tuple[str, bytes | None]] | None,
    limits: Limits = Limits(),  # noqa: B008 - frozen dataclass
) -> AppendItem | tuple[str, str]:
    """An :class:`AppendItem` for a valid submission, else ``(code, reason)``."""
    content_type = DEFAULT_CONTENT_TYPE
    found = [v for k, v in headers or () if k.lower() == "content-type"]
    if len(found) > 1:
        return "bad_content_type", f"{len(found)} content-type headers, at most one allowed"
    if found:
        raw = found[0]
        if raw is None:
            return "bad_content_type", "content-type header without a value"
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            return "bad_content_type", "content-type header is not ASCII"
        if len(raw) > MAX_CONTENT_TYPE:
            return "bad_content_type", f"content-type is {len(raw)} bytes, at most 255 allowed"
        if not _MEDIA_TYPE.fullmatch(text):
            return "bad_content_type", f"content-type {text[:80]!r} is not a media type"
        content_type = text
    if key is not None and len(key) > limits.max_key_bytes:
        return "key_too_large", f"key is {len(key)} bytes, at most {limits.max_key_bytes} allowed"
    if not value:
        if not limits.allow_empty:
            return "empty", "empty payload (tombstone or zero bytes)"
        value = b""
    if len(value) > limits.max_payload_bytes:
        return (
            "payload_too_large",
            f"payload is {len(value)} bytes, at most {limits.max_payload_bytes} allowed",
        )
    return AppendItem(value, key or None, content_type)


@dataclass
class SequencerStats:
    """Counters of one sequencer run."""

    started: float = field(default_factory=time.monotonic)
    entries: int = 0
    rejects: int = 0
    transactions: int = 0
    aborted: int = 0
    checkpoints: int = 0  # checkpoint rounds
    #: (monotonic time, entries so far, {partition: tree size}) of every checkpoint round
    checkpoint_log: list[tuple[float, int, dict[int, int]]] = field(default_factory=list)
    partitions: list[int] = field(default_factory=list)
    lag: int | None = None

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def summary(self) -> str:
        rate = self.entries / self.elapsed if self.elapsed > 0 else 0.0
        return (
            f"{self.entries} entries, {self.rejects} rejected, {self.transactions} "
            f"transactions ({self.aborted} aborted and retried), {self.checkpoints} checkpoint "
            f"round(s) in {self.elapsed:.1f}s ({rate:.0f} entries/s)"
        )


@dataclass
class _Batch:
    """A consumed batch, validated and built (``Ledger._stage``), not yet written."""

    staged: Any  # streamledger.ledger._Staged
    items: list[AppendItem]
    targets: set[int]  # ledger partitions that get entries
    rejects: int
    partitions: list[int]  # intake partitions consumed
    transaction: dict[str, Any]  # consumer offsets, group metadata, rejects


class _Skipped(StreamledgerError):
    """A batch not written because the transaction of the batch before it failed."""


def _sanitize(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "sequencer"


class Sequencer:
    """Sequence submissions from ``intake`` into ``ledger`` (see the module docstring).

    ``instance_id`` names this process: it becomes the consumer's ``group.instance.id``
    (static membership) and part of its ``transactional.id``, so restarting a crashed
    instance with the same id takes its partitions back at once and aborts its open
    transaction. Without it, each run gets a fresh id and the partitions of a crashed run
    resume after ``session_timeout`` and ``transaction_timeout``.

    Checkpoints of the partitions this process writes are signed with ``signer`` every
    ``checkpoint_every`` entries or ``checkpoint_interval`` seconds, whichever comes first
    (0 disables either; no signer disables both).
    """

    def __init__(
        self,
        bootstrap_servers: str,
        ledger: str,
        intake: str,
        *,
        group_id: str | None = None,
        rejects: str | None = None,
        signer: SigningKey | None = None,
        checkpoint_every: int = 10_000,
        checkpoint_interval: float = 60.0,
        instance_id: str | None = None,
        config: dict[str, Any] | None = None,
        state_dir: str | Path | None = None,
        limits: Limits | None = None,
        batch_size: int = 5_000,
        timeout: float = 15.0,
        transaction_timeout: float = 10.0,
        session_timeout: float = 10.0,
        stats_interval: float = 5.0,
        out: TextIO | None = None,
        membership_refresh: float = 0.0,
    ) -> None:
        if batch_size < 1:
            raise ConfigError("batch_size must be at least 1")
        if checkpoint_every < 0 or checkpoint_interval < 0:
            raise ConfigError("checkpoint_every and checkpoint_interval must not be negative")
        self.bootstrap = bootstrap_servers
        self.ledger_name = ledger
        self.intake = intake
        self.group_id = group_id or f"streamledger-sequencer-{ledger}"
        self.rejects = rejects or ledger + REJECTS_SUFFIX
        if self.intake in (ledger, self.rejects) or self.rejects == ledger:
            raise ConfigError("the intake, ledger and rejects topics must be three topics")
        self.static = instance_id is not None
        self.instance_id = _sanitize(
            instance_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        )
        self.signer = signer
        self.checkpoint_every = checkpoint_every
        self.checkpoint_interval = checkpoint_interval
        self.limits = limits or Limits()
        self.batch_size = batch_size
        self.timeout = timeout
        self.transaction_timeout = transaction_timeout
        self.session_timeout = session_timeout
        self.stats_interval = stats_interval
        self.out = out
        self.stats = SequencerStats()
        self._user = {str(k): str(v) for k, v in (config or {}).items()}
        self._state_dir = state_dir
        self._stop = threading.Event()
        self._assigned: set[int] = set()
        self._expected: dict[int, int | None] = {}
        self._dirty: set[int] = set()
        self._since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        self._failures = 0
        self.backend: KafkaBackend | None = None
        self.ledger: Ledger | None = None
        self._consumer: Consumer | None = None
        self._admin: AdminClient | None = None
        self._last_error = ""
        self._reported = 0
        self._reject_partitions = 1
        # signed submissions (ledger option consortium.membership): the membership gate, and
        # the timestamp of the batch being built, which its entries get and are judged at
        self.membership_refresh = membership_refresh
        self._gate: SubmissionGate | None = None
        self._batch_ms: int | None = None
        # the pipeline: batches handed to the committing thread, oldest first (at most two:
        # one committing, the next queued behind it), and the heads the next batch is built
        # on (the newest in-flight batch's new heads)
        self._pool: ThreadPoolExecutor | None = None
        self._in_flight: deque[tuple[Future[None], _Batch]] = deque()
        self._heads: dict[int, Any] = {}

    # -- public ------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask :meth:`run` to stop after the current transaction (thread- and signal-safe)."""
        self._stop.set()

    def run(
        self,
        *,
        handle_signals: bool = False,
        until: Callable[[SequencerStats], bool] | None = None,
    ) -> SequencerStats:
        """Sequence until :meth:`stop` (or SIGTERM/SIGINT with ``handle_signals``, or
        ``until(stats)`` is true); then sign a last checkpoint, leave the group, return the
        stats."""
        previous: dict[int, Any] = {}
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, lambda *_: self.stop())
        pool = ThreadPoolExecutor(1, thread_name_prefix="streamledger-sequencer")
        self._pool = pool
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(min(switch_interval, _SWITCH_INTERVAL))
        try:
            self._open()
            self._say(
                f"sequencer {self.instance_id}: {self.intake} -> ledger {self.ledger_name} "
                f"(group {self.group_id}, rejects {self.rejects})"
            )
            last_report = time.monotonic()
            while not self._stop.is_set():
                assert self._consumer is not None
                # While batch N commits (in the committing thread), batch N+1 is consumed,
                # validated and built here on N's heads (as Ledger.append_stream does) and
                # queued behind N, so that thread goes on with it as soon as N is committed.
                msgs = self._consume()
                batch = self._prepare(msgs) if msgs else None
                if batch is not None:
                    self._submit(batch)
                if self._checkpoint_due():
                    self._drain()  # checkpoints cover committed entries only
                    self._checkpoint(set(self._dirty))
                elif self._in_flight and (batch is None or len(self._in_flight) > 1):
                    self._finish()  # the oldest: wait until it is committed
                now = time.monotonic()
                if self.stats_interval and now - last_report >= self.stats_interval:
                    self._report(now - last_report)
                    last_report = now
                if until is not None and until(self.stats):
                    break
        finally:
            try:
                with contextlib.suppress(StreamledgerError):
                    self._drain()  # the last transactions: they commit before we leave
            finally:
                pool.shutdown(wait=True)
                self._pool = None
                sys.setswitchinterval(switch_interval)
                self._close()
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
        self._say(f"sequencer {self.instance_id} stopped: {self.stats.summary()}")
        return self.stats

    # -- setup -------------------------------------------------------------------------
    def _say(self, text: str) -> None:
        if self.out is not None:
            print(text, file=self.out, flush=True)

    def _on_error(self, err: KafkaError) -> None:
        self._last_error = f"{err.str()} ({err.name()})"

    def _open(self) -> None:
        template = "streamledger-sequencer-{ledger}-" + self.instance_id
        self.backend = KafkaBackend(
            self.bootstrap,
            config=self._user,
            state_dir=self._state_dir,
            transactional_id=template,
            timeout=self.timeout,
            transaction_timeout=self.transaction_timeout,
        )
        self.ledger = Ledger(
            self.backend,
            self.ledger_name,
            signer=self.signer,
            producer=f"sequencer/{self.instance_id}"[:255],
            clock=self._entry_clock,
        )
        self._gate = SubmissionGate.for_ledger(
            self.ledger, refresh_interval=self.membership_refresh
        )
        if self._gate is not None:
            self._say(
                f"ledger {self.ledger_name!r} takes signed submissions only (membership "
                f"ledger {self._gate.history.ledger!r})"
            )
        if (self.checkpoint_every or self.checkpoint_interval) and self.signer is None:
            raise ConfigError(
                f"ledger {self.ledger_name!r}: checkpoints need a signing key (pass one, or "
                "disable checkpoints with checkpoint_every=0 and checkpoint_interval=0)"
            )
        self._admin = AdminClient(client_config(self.bootstrap, self._user, self._on_error))
        self._ensure_topics()
        conf = client_config(
            self.bootstrap,
            self._user,
            self._on_error,
            **{
                "session.timeout.ms": int(self.session_timeout * 1000),
                "fetch.wait.max.ms": 50,
                "queued.min.messages": 100_000,
                # as the backend's readers: large submissions need more than 1 MiB a fetch
                "max.partition.fetch.bytes": 8 * 1024 * 1024,
                "fetch.max.bytes": 64 * 1024 * 1024,
                # and, as they do, fetch again 10 ms after the prefetch queue went over
                # queued.max.messages.kbytes (64 MB), not librdkafka's default 1 s: with
                # 10 KiB submissions the queue is over that every ~6,500 messages, and the
                # sequencer sat idle for a second each time
                "fetch.queue.backoff.ms": 10,
            },
        )
        conf.update(
            {
                "group.id": self.group_id,
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "enable.partition.eof": False,
            }
        )
        if self.static:
            conf["group.instance.id"] = self.instance_id
        try:
            self._consumer = Consumer(conf)
        except KafkaException as exc:
            raise ConfigError(f"invalid Kafka consumer settings: {describe(exc)}") from None
        self._consumer.subscribe(
            [self.intake],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )

    def _ensure_topics(self) -> None:
        assert self._admin is not None and self.ledger is not None and self.backend is not None
        want = self.ledger.partitions
        md = self._admin.list_topics(timeout=self.timeout)
        missing = []
        for topic in (self.intake, self.rejects):
            tmd = md.topics.get(topic)
            if tmd is None or tmd.error is not None:
                rf = max(1, min(3, self.backend.brokers))
                missing.append(NewTopic(topic, want, rf))
            elif topic == self.intake and len(tmd.partitions) != want:
                raise ConfigError(
                    f"intake topic {topic!r} has {len(tmd.partitions)} partitions but ledger "
                    f"{self.ledger_name!r} has {want}: intake partition p feeds ledger "
                    "partition p, so both need the same number of partitions"
                )
        if missing:
            futures = self._admin.create_topics(missing, request_timeout=self.timeout)
            for name, fut in futures.items():
                try:
                    fut.result(timeout=self.timeout + 1)
                    self._say(f"created topic {name!r} with {want} partition(s)")
                except KafkaException as exc:
                    err = exc.args[0] if exc.args else None
                    if not (
                        isinstance(err, KafkaError)
                        and err.code() == KafkaError.TOPIC_ALREADY_EXISTS
                    ):
                        raise BackendUnavailable(
                            f"Kafka at {self.bootstrap}: creating topic {name} failed: "
                            f"{describe(exc)}"
                        ) from None
        rmd = self._admin.list_topics(topic=self.rejects, timeout=self.timeout).topics.get(
            self.rejects
        )
        self._reject_partitions = len(rmd.partitions) if rmd is not None and rmd.partitions else 1

    # -- rebalancing -------------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Take over partitions: wait for the previous owner's last transaction to resolve,
        then re-read the ledger heads."""
        assert self.ledger is not None
        self._drain()
        parts = [tp.partition for tp in partitions]
        if not parts:
            return
        wait = self.transaction_timeout + 2 * self.timeout
        committed = self._committed(consumer, parts, wait)
        for p in parts:
            self._wait_no_open_transaction(p, time.monotonic() + wait)
            self._expected[p] = committed.get(p)
        self.ledger.forget_heads(parts)
        self._assigned.update(parts)
        self.stats.partitions = sorted(self._assigned)
        self._say(f"sequencer {self.instance_id}: assigned intake partitions {sorted(parts)}")

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        parts = {tp.partition for tp in partitions}
        # callbacks run inside consume: let the transaction in flight (with offsets of this
        # generation) commit first; then nothing is open; sign a checkpoint of what we wrote
        # before handing the partitions over
        self._drain()
        with contextlib.suppress(StreamledgerError):
            self._checkpoint(self._dirty & parts)
        self._release(parts)
        if parts:
            self._say(f"sequencer {self.instance_id}: revoked intake partitions {sorted(parts)}")

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        with contextlib.suppress(StreamledgerError):
            self._drain()  # most likely fenced: then it is aborted and rewound
        parts = {tp.partition for tp in partitions}
        self._release(parts)
        self._say(f"sequencer {self.instance_id}: lost intake partitions {sorted(parts)}")

    def _release(self, parts: set[int]) -> None:
        self._assigned -= parts
        self._dirty -= parts
        for p in parts:
            self._expected.pop(p, None)
        if self.ledger is not None:
            self.ledger.forget_heads(parts)
        self.stats.partitions = sorted(self._assigned)

    def _committed(self, consumer: Consumer, parts: Sequence[int], wait: float) -> dict[int, int]:
        """The group's committed offsets (stable: waits for pending transactional commits)."""
        tps = [TopicPartition(self.intake, p) for p in parts]
        try:
            result = consumer.committed(tps, timeout=wait)
        except KafkaException as exc:
            raise BackendUnavailable(
                f"Kafka at {self.bootstrap}: reading the committed offsets of group "
                f"{self.group_id!r} failed: {describe(exc)}"
            ) from None
        return {tp.partition: tp.offset for tp in result if tp.offset >= 0}

    def _wait_no_open_transaction(self, partition: int, deadline: float) -> None:
        """Until the ledger partition has no open transaction (a previous owner's)."""
        assert self._admin is not None
        tp = TopicPartition(self.ledger_name, partition)
        while True:
            ends = []
            for level in (IsolationLevel.READ_COMMITTED, IsolationLevel.READ_UNCOMMITTED):
                fut = self._admin.list_offsets(
                    {tp: OffsetSpec.latest()}, isolation_level=level, request_timeout=self.timeout
                )
                try:
                    ends.append(fut[tp].result(timeout=self.timeout + 1).offset)
                except (KafkaException, TimeoutError) as exc:
                    err = exc.args[0] if exc.args else None
                    if (
                        isinstance(err, KafkaError)
                        and (err.retriable() or err.code() in _TRANSIENT)
                        and time.monotonic() < deadline
                    ):  # e.g. a leader moving just after the topic was created
                        break
                    raise BackendUnavailable(
                        f"Kafka at {self.bootstrap}: reading the end of "
                        f"{self.ledger_name}[{partition}] failed: {exc}"
                    ) from None
            if len(ends) == 2 and ends[0] >= ends[1]:
                return
            if time.monotonic() > deadline:
                raise BackendUnavailable(
                    f"ledger {self.ledger_name!r} partition {partition} still has an open "
                    f"transaction after {self.transaction_timeout + 2 * self.timeout:g}s: "
                    "is another writer (not a sequencer of this group) appending to it?"
                )
            time.sleep(0.1)

    # -- the work ----------------------------------------------------------------------
    def _entry_clock(self) -> int:
        return self._batch_ms if self._batch_ms is not None else time.time_ns() // 1_000_000

    def _consume(self) -> list[Message]:
        """The next batch: up to ``batch_size`` submissions. While a transaction commits,
        keep filling the batch in short slices until it is full or the commit is done (then
        take what there is); with nothing in flight, wait up to 0.2 s. A rebalance callback
        between two slices is harmless: ``_prepare`` drops what is no longer assigned or
        was already consumed (offsets below the expected one)."""
        assert self._consumer is not None
        consume, size = self._consumer.consume, self.batch_size
        if not self._in_flight:
            return consume(size, 0.2)
        msgs = consume(size, _PIPELINE_WAIT)
        while len(msgs) < size and self._in_flight and not self._in_flight[-1][0].done():
            msgs += consume(size - len(msgs), _PIPELINE_WAIT)
        return msgs

    def _prepare(self, msgs: list[Message]) -> _Batch | None:
        """Validate a consumed batch and build its entries (not written yet): on the heads of
        the transaction in flight if there is one, else on the ledger's committed heads."""
        assert self.ledger is not None and self._consumer is not None
        gate = self._gate
        if gate is not None:
            gate.refresh()
            self._batch_ms = time.time_ns() // 1_000_000
        items: list[AppendItem] = []
        targets: list[int] = []
        rejects: list[tuple[str, int | None, bytes | None, bytes | None, list]] = []
        offsets: dict[int, int] = {}
        assigned, expected_of, limits = self._assigned, self._expected, self.limits
        max_payload, max_key = limits.max_payload_bytes, limits.max_key_bytes
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.fatal():
                    raise BackendUnavailable(f"Kafka consumer failed: {err.str()} ({err.name()})")
                self._say(f"sequencer {self.instance_id}: consumer: {err.str()}")
                continue
            p, offset = m.partition(), m.offset()
            if p not in assigned:
                continue  # fetched before a revoke
            expected = expected_of.get(p)
            if expected is not None and offset < expected:
                continue  # fetched twice around a rebalance
            expected_of[p] = offsets[p] = offset + 1
            value, key, headers = m.value(), m.key(), m.headers()
            verdict: AppendItem | tuple[str, str]
            if (
                headers is None
                and value
                and len(value) <= max_payload
                and (key is None or len(key) <= max_key)
            ):  # the common case, as validate_submission would judge it
                verdict = AppendItem(value, key or None, DEFAULT_CONTENT_TYPE)
            else:
                verdict = validate_submission(value, key, headers, limits)
            if isinstance(verdict, AppendItem) and gate is not None:
                refused = gate.check(verdict, self._entry_clock())
                if refused is not None:
                    verdict = (refused.code, refused.detail)
            if isinstance(verdict, AppendItem):
                items.append(verdict)
                targets.append(p)
            else:
                rejects.append(self._reject_record(m, *verdict))
        if not offsets:
            return None
        if not self._in_flight:
            self._heads = self.ledger._writers_view()
        staged = self.ledger._stage(items, targets, self._heads)  # moves self._heads on
        transaction = {
            "consumer_offsets": [TopicPartition(self.intake, p, o) for p, o in offsets.items()],
            "group_metadata": self._consumer.consumer_group_metadata(),
            "extra_records": rejects,
        }
        return _Batch(staged, items, set(targets), len(rejects), sorted(offsets), transaction)

    def _submit(self, batch: _Batch) -> None:
        """Queue a prepared batch for the committing thread: its entries, rejects and intake
        offsets in one transaction, right after the batch it was built on."""
        assert self._pool is not None
        previous = self._in_flight[-1][0] if self._in_flight else None
        future = self._pool.submit(self._commit, previous, batch)
        self._in_flight.append((future, batch))

    def _commit(self, previous: Future[None] | None, batch: _Batch) -> None:
        """In the committing thread (one, jobs in order): write ``batch`` unless the batch
        before it, whose heads it is built on, failed or was skipped."""
        assert self.ledger is not None
        if previous is not None and previous.exception() is not None:  # done: jobs run in order
            raise _Skipped("the transaction before this batch failed")
        self.ledger._commit(batch.staged, batch.transaction, receipts=False)

    def _finish(self) -> bool:
        """Wait for the oldest batch in flight (if any) and count it. If its transaction
        failed, the batches queued behind it (built on its heads) are not written either:
        the partitions of all of them are rewound to the group's committed offsets, and the
        result is False."""
        if not self._in_flight:
            return True
        future, batch = self._in_flight.popleft()
        try:
            future.result()
        except StreamledgerError as exc:
            dropped = [batch]
            while self._in_flight:  # skipped by the committing thread: wait for that
                later, queued = self._in_flight.popleft()
                with contextlib.suppress(StreamledgerError):
                    later.result()
                dropped.append(queued)
            if self._gate is not None:
                for b in dropped:
                    for item in b.items:  # not sequenced: their ids are not used up
                        self._gate.forget(item)
            self._failed(exc, sorted({p for b in dropped for p in b.partitions}))
            return False
        self._failures = 0
        self.stats.transactions += 1
        self.stats.entries += len(batch.items)
        self.stats.rejects += batch.rejects
        self._since_checkpoint += len(batch.items)
        self._dirty.update(batch.targets)
        return True

    def _drain(self) -> None:
        """Wait until nothing is in flight (rebalance callbacks, checkpoints, stop)."""
        while self._in_flight:
            self._finish()

    def _reject_record(
        self, m: Message, code: str, reason: str
    ) -> tuple[str, int | None, bytes | None, bytes | None, list]:
        value, key = m.value(), m.key()
        headers = [(k, v) for k, v in m.headers() or () if v is not None]
        headers += [
            (H_CODE, code.encode()),
            (H_REASON, reason.encode()),
            (H_SOURCE, f"{m.topic()}:{m.partition()}:{m.offset()}".encode()),
        ]
        size = len(value or b"") + len(key or b"") + sum(len(k) + len(v) for k, v in headers)
        if size > _REJECT_BUDGET:  # keep the reject under the broker's default message size
            headers.append((H_OMITTED, str(len(value or b"")).encode()))
            value = None
        partition = m.partition() if m.partition() < self._reject_partitions else None
        return (self.rejects, partition, key, value, headers)

    def _failed(self, exc: StreamledgerError, parts: list[int]) -> None:
        """The transaction was aborted (or its outcome is unknown): rewind the partitions to
        the group's committed offsets, which say atomically what was written."""
        assert self._consumer is not None and self.ledger is not None
        self.stats.aborted += 1
        self._failures += 1
        self._say(f"sequencer {self.instance_id}: transaction failed, rewinding: {exc}")
        if self._failures >= _MAX_FAILURES:
            raise exc
        self.ledger.forget_heads(parts)
        owned = [p for p in parts if p in self._assigned]
        if not owned:
            return
        committed = self._committed(
            self._consumer, owned, self.transaction_timeout + 2 * self.timeout
        )
        for p in owned:
            offset = committed.get(p)
            with contextlib.suppress(KafkaException):
                self._consumer.seek(
                    TopicPartition(
                        self.intake, p, offset if offset is not None else OFFSET_BEGINNING
                    )
                )
            self._expected[p] = offset
        time.sleep(min(2.0, 0.1 * 2**self._failures))

    # -- checkpoints and progress ------------------------------------------------------
    def _checkpoint_due(self) -> bool:
        """Whether to sign checkpoints now; counts the entries in flight too, which are
        committed before signing."""
        if self.signer is None or not (self._dirty or self._in_flight):
            return False
        if self.checkpoint_every:
            pending = self._since_checkpoint + sum(len(b.items) for _, b in self._in_flight)
            if pending >= self.checkpoint_every:
                return True
        return bool(
            self.checkpoint_interval
            and time.monotonic() - self._last_checkpoint >= self.checkpoint_interval
        )

    def _checkpoint(self, parts: set[int]) -> None:
        if self.signer is None or self.ledger is None or not parts:
            return
        notes = self.ledger.checkpoint(partitions=sorted(parts))
        sizes = {}
        for p, note in zip(sorted(parts), notes, strict=True):
            sizes[p] = int(note.split("\n", 2)[1])
        self._dirty -= parts
        self._since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        self.stats.checkpoints += 1
        self.stats.checkpoint_log.append((self._last_checkpoint, self.stats.entries, sizes))

    def _lag(self) -> int | None:
        if self._consumer is None or not self._assigned:
            return None
        tps = [TopicPartition(self.intake, p) for p in sorted(self._assigned)]
        lag = 0
        try:
            for tp in self._consumer.position(tps):
                _, high = self._consumer.get_watermark_offsets(tp, cached=True)
                if tp.offset >= 0 and high >= 0:
                    lag += max(0, high - tp.offset)
        except KafkaException:
            return None
        return lag

    def _report(self, span: float) -> None:
        entries = self.stats.entries
        rate = (entries - self._reported) / span if span > 0 else 0.0
        self._reported = entries
        self.stats.lag = self._lag()
        self._say(
            f"sequencer {self.instance_id}: {entries} entries ({rate:.0f}/s), "
            f"{self.stats.rejects} rejected, {self.stats.aborted} aborted, lag "
            f"{'?' if self.stats.lag is None else self.stats.lag}, partitions "
            f"{self.stats.partitions}, {self.stats.checkpoints} checkpoint round(s)"
        )

    # -- shutdown ----------------------------------------------------------------------
    def _close(self) -> None:
        try:
            if self._dirty and self.signer is not None:
                with contextlib.suppress(StreamledgerError):
                    self._checkpoint(set(self._dirty))
        finally:
            if self._consumer is not None:
                with contextlib.suppress(KafkaException, RuntimeError):
                    self._consumer.close()  # leaves the group: the others take over at once
                self._consumer = None
            if self.backend is not None:
                self.backend.close()
