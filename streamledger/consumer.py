"""A Kafka consumer that yields only ledger entries that verify.

:class:`VerifiedConsumer` wraps a confluent-kafka ``Consumer`` subscribed to a ledger topic
(``read_committed``) and checks every record strictly, one partition at a time, as it
streams by, before the application sees it:

* it decodes as an entry of format v1 and names this ledger and this partition;
* its ``seq`` is the next one expected and its ``prev_hash`` is the previous entry's leaf hash;
* its payload hashes to the payload hash in its header;
* the consumer extends the partition's RFC 6962 tree (a :class:`CompactRange`, O(log n)) and
  compares its root with every signed checkpoint of the partition (read from the ledger's
  checkpoint-history topic, verified with the caller's :class:`TrustPolicy`) whose size it
  reaches; a checkpoint that arrives late is compared by replaying the leaves kept since the
  last checked checkpoint (at most ``max_unchecked_leaves`` of them).

A record that fails gives a :class:`~streamledger.core.verify.Finding` (same kinds as the
offline verifier). ``on_tamper="raise"`` raises :class:`TamperDetected` with it and stops
yielding from that partition; ``on_tamper="quarantine"`` copies the record and the finding to
a quarantine topic and goes on (see ``docs/consumer.md``).

The verification head of each partition (next offset, next seq, previous leaf hash, the
compact range, the checkpoint-history position) is stored atomically in ``state_dir`` after
each batch the application has consumed, and the group's Kafka offset is committed with it.
After a restart or a rebalance the consumer seeks to the stored offset and goes on verifying
from the stored head, without re-reading the topic. Delivery is at least once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from streamledger._files import write_atomic
from streamledger.backends.base import LedgerConfig
from streamledger.backends.kafka import HISTORY_SUFFIX as _HISTORY_SUFFIX
from streamledger.core import _accel
from streamledger.core.entry import ZERO_HASH, EntryHeader, decode_record, header_prefix
from streamledger.core.merkle import CompactRange, range_nodes
from streamledger.core.verify import Finding, TrustPolicy, check_checkpoint_note
from streamledger.errors import (
    BackendUnavailable,
    ConfigError,
    FormatError,
    TamperDetected,
    UnknownVersionError,
    VerificationError,
    WitnessShortfall,
)

__all__ = ["QUARANTINE_SUFFIX", "VerifiedConsumer", "VerifiedEntry"]

log = logging.getLogger("streamledger.consumer")
log.addHandler(logging.NullHandler())

QUARANTINE_SUFFIX = ".quarantine"
STATE_FORMAT = "streamledger-consumer-head/1"
_RECENT = 1024  # leaf hashes of the newest entries kept to tell duplicates from forgeries
_RUN_MIN = 3  # buffered records of one partition worth checking together natively
_SECURITY_PREFIXES = ("security.", "sasl.", "ssl.", "oauthbearer", "client.", "socket.")


@dataclass(frozen=True, slots=True)
class VerifiedEntry:
    """An entry that verified: where it is, its header, its payload and its leaf hash."""

    ledger: str
    partition: int
    seq: int
    offset: int
    header: EntryHeader
    payload: bytes
    leaf_hash: bytes

    @property
    def timestamp_ms(self) -> int:
        return self.header.timestamp_ms

    @property
    def producer(self) -> str:
        return self.header.producer

    @property
    def content_type(self) -> str:
        return self.header.content_type

    @property
    def key(self) -> bytes:
        return self.header.key

    @property
    def prev_hash(self) -> bytes:
        return self.header.prev_hash

    @property
    def payload_hash(self) -> bytes:
        return self.header.payload_hash


@dataclass(frozen=True, slots=True)
class _Saved:
    """The durable part of a partition's head (what the state file holds)."""

    next_offset: int
    seq: int
    prev_leaf: bytes
    tree: CompactRange
    last_offset: int | None
    history_offset: int
    checked_size: int


@dataclass(frozen=True, slots=True)
class _Suspect:
    seq: int
    offset: int
    leaf: bytes


@dataclass
class _Partition:
    """The verification head of one assigned partition."""

    partition: int
    next_offset: int = 0
    seq: int = 0
    prev_leaf: bytes = ZERO_HASH
    tree: CompactRange = field(default_factory=CompactRange)
    last_offset: int | None = None
    history_offset: int = 0
    checked_size: int = -1  # largest signed checkpoint compared so far
    restored: bool = False
    skip_below: int = -1  # verify but do not yield below this offset (group already had them)
    stopped: Finding | None = None
    dirty: bool = False
    suspect: _Suspect | None = None
    recent: OrderedDict[int, bytes] = field(default_factory=OrderedDict)
    # Signed checkpoints not reached yet: size -> (root, note).
    pending: dict[int, tuple[bytes, str]] = field(default_factory=dict)
    # Replay window for checkpoints that arrive after the consumer passed their size.
    base: CompactRange = field(default_factory=CompactRange)
    leaves: list[bytes] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)

    def saved(self) -> _Saved:
        return _Saved(
            self.next_offset,
            self.seq,
            self.prev_leaf,
            self.tree.copy(),
            self.last_offset,
            self.history_offset,
            self.checked_size,
        )

    def restore(self, s: _Saved) -> None:
        self.next_offset, self.seq, self.prev_leaf = s.next_offset, s.seq, s.prev_leaf
        self.tree, self.last_offset = s.tree.copy(), s.last_offset
        self.history_offset, self.checked_size = s.history_offset, s.checked_size
        self.base, self.leaves, self.offsets = self.tree.copy(), [], []
        self.suspect = None
        self.recent.clear()


def _range_hashes(tree: CompactRange) -> list[bytes]:
    # The perfect subtrees of range_nodes(0, size), largest first (CompactRange's own state).
    return tree.hashes()


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip(".") or "_"


class VerifiedConsumer:
    """Consume a ledger topic and yield only entries that verify, in order per partition.

    ``bootstrap`` is ``host:port[,...]`` (or put ``bootstrap.servers`` into ``config``).
    ``config`` is passed to the confluent-kafka ``Consumer`` (security settings, ``group.id``,
    ``partition.assignment.strategy``, ...); the consumer overrides ``enable.auto.commit``,
    ``enable.auto.offset.store`` (off) and ``isolation.level`` (``read_committed``).
    ``trust`` is the :class:`TrustPolicy` signed checkpoints must satisfy (``None``: chain
    checks only, checkpoints are ignored). ``origin`` pins the checkpoint origin prefix; by
    default it is read from the ledger registry. ``state_dir`` holds one head file per
    (group, ledger, partition). ``on_tamper`` is ``"raise"`` or ``"quarantine"``;
    ``on_finding(finding)`` is called for every finding under both policies.
    ``save_interval`` (seconds, default 0: after every batch) spaces out the head files
    and offset commits between batches; a restart then re-verifies (without delivering
    again) what the group committed since. Revokes and ``close`` always save.
    """

    def __init__(
        self,
        bootstrap: str | None,
        ledger: str,
        *,
        trust: TrustPolicy | None,
        group_id: str | None = None,
        state_dir: str | Path,
        on_tamper: Literal["raise", "quarantine"] = "raise",
        on_finding: Callable[[Finding], None] | None = None,
        config: Mapping[str, Any] | None = None,
        origin: str | None = None,
        quarantine_topic: str | None = None,
        max_unchecked_leaves: int = 100_000,
        checkpoint_interval: float = 1.0,
        batch_size: int = 1000,
        timeout: float = 10.0,
        save_interval: float = 0.0,
    ) -> None:
        if on_tamper not in ("raise", "quarantine"):
            raise ConfigError(f"on_tamper must be 'raise' or 'quarantine', not {on_tamper!r}")
        user = dict(config or {})
        if bootstrap:
            user["bootstrap.servers"] = bootstrap
        if not user.get("bootstrap.servers"):
            raise ConfigError("no Kafka bootstrap servers given (bootstrap= or bootstrap.servers)")
        if group_id:
            user["group.id"] = group_id
        if not user.get("group.id"):
            raise ConfigError("a VerifiedConsumer needs a consumer group: pass group_id=")
        if str(user.get("isolation.level", "read_committed")) != "read_committed":
            raise ConfigError("a VerifiedConsumer reads with isolation.level=read_committed only")
        self.ledger = ledger
        self.group_id = str(user["group.id"])
        self.bootstrap = str(user["bootstrap.servers"])
        self.trust = trust
        self.on_tamper = on_tamper
        self.on_finding = on_finding
        self.quarantine_topic = quarantine_topic or ledger + QUARANTINE_SUFFIX
        self.history_topic = ledger + _HISTORY_SUFFIX
        self.state_dir = Path(state_dir) / _safe(self.group_id) / _safe(ledger)
        self.max_unchecked_leaves = max_unchecked_leaves
        self.checkpoint_interval = checkpoint_interval
        self.batch_size = batch_size
        self.save_interval = save_interval
        self.timeout = timeout
        #: Every finding so far, in the order found.
        self.findings: list[Finding] = []
        #: Raw ledger records this consumer took from Kafka (verified or not).
        self.records_seen = 0
        #: Signed checkpoints whose root matched, per partition.
        self.checkpoints_verified: dict[int, int] = {}
        self._parts: dict[int, _Partition] = {}
        self._buffer: deque[Message] = deque()
        self._undo: dict[int, _Saved] = {}  # heads before the entries not yet acknowledged
        self._next_refresh = 0.0
        self._next_save = 0.0
        self._closed = False
        self._deferred: TamperDetected | None = None
        self._producer: Producer | None = None
        self._quarantine_ready = False
        self._security = {
            k: v for k, v in user.items() if k.startswith(_SECURITY_PREFIXES) and k != "client.id"
        }
        strategy = str(user.get("partition.assignment.strategy", ""))
        self._cooperative = "cooperative" in strategy or user.get("group.protocol") == "consumer"
        self._origin_prefix = origin
        if trust is not None and origin is None:
            self._origin_prefix = self._registry_origin()

        conf = {
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 50,
            **user,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": False,
        }
        side = {
            "bootstrap.servers": self.bootstrap,
            **self._security,
            "group.id": self.group_id + ".streamledger-checkpoints",  # assign() only
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 10,
        }
        try:
            self._consumer = Consumer(conf)
            self._side = Consumer(side) if trust is not None else None
        except KafkaException as exc:
            raise ConfigError(f"invalid Kafka consumer settings: {exc}") from None
        self._consumer.subscribe(
            [ledger], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )

    def __repr__(self) -> str:
        return f"VerifiedConsumer({self.ledger!r}, group={self.group_id!r})"

    def __enter__(self) -> VerifiedConsumer:
        return self

    def __exit__(self, exc_type: Any, *exc: object) -> None:
        self.close(acknowledge=exc_type is None)

    # -- public API --------------------------------------------------------------------
    def entries(
        self, timeout: float | None = None, max_entries: int | None = None
    ) -> Iterator[VerifiedEntry]:
        """Yield verified entries, in order per partition.

        Ends after ``max_entries`` entries, or when no record arrived for ``timeout`` seconds
        (``None``: never). An entry counts as processed when the loop asks for the next one;
        heads and offsets are saved after every batch of processed entries.
        """
        self._ack()
        yielded = 0
        idle_since = time.monotonic()
        while max_entries is None or yielded < max_entries:
            if not self._buffer:
                wait = 1.0
                if timeout is not None:
                    left = timeout - (time.monotonic() - idle_since)
                    if left <= 0:
                        return
                    wait = min(wait, left)
                if not self._fill(wait):
                    continue
                idle_since = time.monotonic()
            entry = self._process(self._buffer.popleft())
            if entry is None:
                continue
            yield entry
            self._ack()
            yielded += 1

    def poll(
        self, timeout: float = 1.0, max_entries: int | None = None, linger: float = 0.0
    ) -> list[VerifiedEntry]:
        """The verified entries available within ``timeout`` seconds (possibly none).

        With ``linger`` (seconds), once a first entry is here, go on collecting entries for up
        to that long (or until ``max_entries``) before returning: fewer, larger batches for an
        application whose cost per batch is high.

        Calling ``poll`` again acknowledges the entries it returned before."""
        self._ack()
        out: list[VerifiedEntry] = []
        limit = max_entries or self.batch_size
        deadline = time.monotonic() + timeout
        until = 0.0  # end of the linger, from the first entry
        while len(out) < limit:
            if not self._buffer:
                left = (until if out else deadline) - time.monotonic()
                if left <= 0:
                    break
                self._fill(left)
                continue
            if len(self._buffer) >= _RUN_MIN and _accel.native is not None:
                n = len(out)
                if self._run(out, limit - n) and not n:
                    until = time.monotonic() + linger
                if len(out) > n or not self._buffer:
                    continue
                if len(out) >= limit:
                    break
            entry = self._process(self._buffer.popleft())
            if entry is not None:
                if not out:
                    until = time.monotonic() + linger
                out.append(entry)
        return out

    def commit(self) -> None:
        """Acknowledge everything delivered so far and store heads and offsets now."""
        self._ack()
        self._save(synchronous=True)

    @property
    def stopped(self) -> dict[int, Finding]:
        """Partitions this consumer stopped yielding from, with the finding that stopped them."""
        return {p: st.stopped for p, st in self._parts.items() if st.stopped is not None}

    @property
    def checked_sizes(self) -> dict[int, int]:
        """Per assigned partition, the largest tree size a signed checkpoint vouched for
        (-1: none yet). Entries with ``seq`` below it are covered by a signed root."""
        return {p: st.checked_size for p, st in self._parts.items()}

    def assignment(self) -> list[int]:
        """The partitions assigned to this consumer now, sorted."""
        return sorted(self._parts)

    def watermarks(self, partition: int, *, cached: bool = False) -> tuple[int, int]:
        """``(low, high)`` offsets of a partition of the ledger topic (``read_committed``:
        high is the last stable offset). ``high`` minus the offset after the last entry
        delivered is at most the commit marker when caught up.

        By default the broker is asked now (a round trip). With ``cached=True`` the values
        come from the last fetch response of an assigned partition, at no cost; an offset
        not known yet is negative. Raises ``BackendUnavailable`` if the broker does not
        answer within ``timeout``."""
        try:
            if cached:
                low, high = self._consumer.get_watermark_offsets(
                    TopicPartition(self.ledger, partition), cached=True
                )
            else:
                low, high = self._consumer.get_watermark_offsets(
                    TopicPartition(self.ledger, partition), timeout=self.timeout, cached=False
                )
        except KafkaException as exc:
            raise BackendUnavailable(
                f"reading the offsets of {self.ledger}[{partition}] failed: {exc}"
            ) from None
        return int(low), int(high)

    def group_metadata(self) -> Any:
        """The consumer group's metadata (``Consumer.consumer_group_metadata()``) for a
        transactional producer's ``send_offsets_to_transaction``, e.g. as
        ``group_metadata`` of :func:`streamledger.ledger.append_atomically`'s transaction:
        the entries' offsets are then committed in the same transaction as the output."""
        return self._consumer.consumer_group_metadata()

    def close(self, acknowledge: bool = True) -> None:
        """Store heads and offsets and leave the group.

        With ``acknowledge=False`` (the ``with`` block ended by an exception) the entries
        delivered since the last acknowledgement are not stored: they will be delivered again.
        """
        if self._closed:
            return
        try:
            if acknowledge:
                self._ack()
            self._save(synchronous=True)
            self._buffer.clear()
            self._undo.clear()
            self._parts.clear()  # the revoke that closing triggers must not save again
        finally:
            self._closed = True
            with contextlib.suppress(KafkaException, RuntimeError):
                self._consumer.close()
            if self._side is not None:
                with contextlib.suppress(KafkaException, RuntimeError):
                    self._side.close()
            if self._producer is not None:
                self._producer.flush(self.timeout)

    # -- acknowledgement and state -----------------------------------------------------
    def _ack(self) -> None:
        self._undo.clear()

    def _state_path(self, partition: int) -> Path:
        return self.state_dir / f"{partition}.json"

    def _save(self, synchronous: bool = False, only: set[int] | None = None) -> None:
        offsets = []
        for p, st in self._parts.items():
            if only is not None and p not in only:
                continue
            s = self._undo.get(p)
            if s is None:
                if not st.dirty:
                    continue
                s = st.saved()
            self._write_state(p, s)
            offsets.append(TopicPartition(self.ledger, p, s.next_offset))
            st.dirty = p in self._undo
        if offsets:
            try:
                self._consumer.commit(offsets=offsets, asynchronous=not synchronous)
            except KafkaException as exc:
                # The state file is what resuming relies on; the group offset follows it.
                log.warning("committing offsets of %s failed: %s", self.ledger, exc)

    def _write_state(self, partition: int, s: _Saved) -> None:
        data = {
            "format": STATE_FORMAT,
            "ledger": self.ledger,
            "partition": partition,
            "group": self.group_id,
            "next_offset": s.next_offset,
            "seq": s.seq,
            "prev_leaf": s.prev_leaf.hex(),
            "tree_size": s.tree.size,
            "tree": [h.hex() for h in _range_hashes(s.tree)],
            "last_offset": s.last_offset,
            "history_offset": s.history_offset,
            "checked_size": s.checked_size,
        }
        write_atomic(self._state_path(partition), json.dumps(data, indent=1).encode())

    def _load_state(self, partition: int) -> _Saved | None:
        path = self._state_path(partition)
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"consumer state file {path} is unreadable: {exc}") from None
        try:
            if data["format"] != STATE_FORMAT:
                raise ValueError(f"unknown format {data['format']!r}")
            if data["ledger"] != self.ledger or data["partition"] != partition:
                raise ValueError("it belongs to another ledger or partition")
            size = int(data["tree_size"])
            hashes = [bytes.fromhex(h) for h in data["tree"]]
            nodes = range_nodes(0, size)
            if size != int(data["seq"]) or len(nodes) != len(hashes):
                raise ValueError("tree size and hashes do not agree")
            by_node = dict(zip(nodes, hashes, strict=True))
            tree = CompactRange.from_nodes(size, lambda level, index: by_node[(level, index)])
            prev = bytes.fromhex(data["prev_leaf"])
            if len(prev) != 32 or any(len(h) != 32 for h in hashes):
                raise ValueError("hashes must be 32 bytes")
            return _Saved(
                int(data["next_offset"]),
                size,
                prev,
                tree,
                data.get("last_offset"),
                int(data.get("history_offset", 0)),
                int(data.get("checked_size", -1)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"consumer state file {path} is damaged: {exc}") from None

    # -- rebalancing -------------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        committed: dict[int, int] = {}
        try:
            for tp in consumer.committed(
                [TopicPartition(self.ledger, tp.partition) for tp in partitions],
                timeout=self.timeout,
            ):
                committed[tp.partition] = tp.offset
        except KafkaException as exc:
            log.warning("reading committed offsets of %s failed: %s", self.ledger, exc)
        assign = []
        for tp in partitions:
            p = tp.partition
            st = _Partition(p)
            saved = self._load_state(p)
            if saved is not None:
                st.restore(saved)
                st.restored = True
                start = saved.next_offset
            else:
                start = OFFSET_BEGINNING
            # The group may have delivered further than this machine's state file knows (it
            # was consumed elsewhere): verify from the stored head, yield only what is new.
            st.skip_below = committed.get(p, -1)
            self._parts[p] = st
            self.checkpoints_verified.setdefault(p, 0)
            assign.append(TopicPartition(self.ledger, p, start))
            log.info("%s[%d]: resuming at offset %s, seq %d", self.ledger, p, start, st.seq)
        if self._cooperative:
            consumer.incremental_assign(assign)
        else:
            consumer.assign(assign)
        try:
            self._refresh_checkpoints([tp.partition for tp in partitions])
        except TamperDetected as exc:
            self._deferred = exc  # raised from the next entries()/poll()

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        gone = {tp.partition for tp in partitions}
        self._save(synchronous=True, only=gone)
        self._drop(gone)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        gone = {tp.partition for tp in partitions}
        for p in gone:  # another member owns them now: keep our head locally, commit nothing
            st = self._parts.get(p)
            if st is not None and (st.dirty or p in self._undo):
                self._write_state(p, self._undo.get(p) or st.saved())
        self._drop(gone)

    def _drop(self, gone: set[int]) -> None:
        for p in gone:
            self._parts.pop(p, None)
            self._undo.pop(p, None)
        if gone and self._buffer:
            self._buffer = deque(m for m in self._buffer if m.partition() not in gone)

    # -- fetching ----------------------------------------------------------------------
    def _fill(self, timeout: float) -> bool:
        """Save acknowledged heads, then fetch the next batch. True if records arrived."""
        self._raise_deferred()
        if self.save_interval <= 0 or time.monotonic() >= self._next_save:
            self._next_save = time.monotonic() + self.save_interval
            self._save()
        if time.monotonic() >= self._next_refresh:
            self._refresh_checkpoints(list(self._parts))
        try:
            # What is fetched already, at once; else wait for the first record only (consume
            # with a timeout would wait for a whole batch_size or the full timeout).
            msgs = self._consumer.consume(self.batch_size, 0)
            if not msgs:
                if self._side is not None:  # wake up for the next checkpoint refresh
                    timeout = min(timeout, max(0.05, self._next_refresh - time.monotonic()))
                first = self._consumer.poll(timeout)
                if first is not None:
                    msgs = [first, *self._consumer.consume(self.batch_size - 1, 0)]
        except KafkaException as exc:
            raise BackendUnavailable(f"consuming {self.ledger} failed: {exc}") from None
        self._raise_deferred()
        got = False
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                if err.fatal():
                    raise BackendUnavailable(f"consuming {self.ledger} failed: {err.str()}")
                log.warning("consumer error on %s: %s", self.ledger, err.str())
                continue
            self._buffer.append(m)
            self.records_seen += 1
            got = True
        return got

    def _raise_deferred(self) -> None:
        exc, self._deferred = self._deferred, None
        if exc is not None:
            raise exc

    # -- checkpoints -------------------------------------------------------------------
    def _refresh_checkpoints(self, partitions: list[int]) -> None:
        """Read new signed checkpoints of ``partitions`` from the checkpoint-history topic."""
        self._next_refresh = time.monotonic() + self.checkpoint_interval
        side = self._side
        if side is None:
            return
        todo: dict[int, int] = {}
        for p in partitions:
            st = self._parts.get(p)
            if st is None or st.stopped is not None:
                continue
            try:
                _, high = side.get_watermark_offsets(
                    TopicPartition(self.history_topic, p), timeout=self.timeout, cached=False
                )
            except KafkaException as exc:
                log.warning("reading checkpoints of %s[%d] failed: %s", self.ledger, p, exc)
                continue
            if high > st.history_offset:
                todo[p] = high
        if not todo:
            return
        side.assign(
            [TopicPartition(self.history_topic, p, self._parts[p].history_offset) for p in todo]
        )
        notes: dict[int, list[tuple[int, str, bytes | None]]] = {p: [] for p in todo}
        left = set(todo)
        deadline = time.monotonic() + self.timeout
        try:
            while left and time.monotonic() < deadline:
                for m in side.consume(1000, 0.2):
                    p = m.partition()
                    err = m.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            left.discard(p)
                        continue
                    if p in todo and m.offset() < todo[p]:
                        value = m.value()
                        text = value.decode("utf-8", "replace") if value is not None else ""
                        notes[p].append((m.offset(), text, value))
                        if m.offset() >= todo[p] - 1:
                            left.discard(p)
        finally:
            side.unassign()
        for p, items in notes.items():
            st = self._parts.get(p)
            if st is None:
                continue
            for offset, text, raw in items:
                if st.stopped is not None:
                    break
                self._checkpoint(st, offset, text, raw)
                st.history_offset = max(st.history_offset, offset + 1)
                st.dirty = True

    def _checkpoint(self, st: _Partition, offset: int, note: str, raw: bytes | None) -> None:
        assert self.trust is not None and self._origin_prefix is not None
        origin = LedgerConfig(self.ledger, 1, self._origin_prefix).checkpoint_origin(st.partition)
        where = f"checkpoint at offset {offset} of {self.history_topic}"
        try:
            cp = check_checkpoint_note(note, origin, self.trust)
        except FormatError as exc:
            self._found(st, "bad_checkpoint", None, None, f"{where}: {exc}", raw, False, note)
            return
        except VerificationError as exc:
            kind = (
                "witness_shortfall" if isinstance(exc, WitnessShortfall) else "untrusted_checkpoint"
            )
            self._found(st, kind, None, None, f"{where}: {exc}", raw, False, note)
            return
        size, root = cp.tree_size, cp.root_hash
        if size <= st.checked_size:
            return  # compared before (a re-published checkpoint)
        if size > st.tree.size:
            known = st.pending.get(size)
            if known is not None and known[0] != root:
                self._found(
                    st,
                    "checkpoint_fork",
                    size - 1,
                    None,
                    f"two trusted checkpoints of size {size} with different roots",
                    raw,
                    True,
                    note,
                )
                return
            st.pending[size] = (root, note)
            return
        if size == st.tree.size:
            self._compare(st, size, st.tree.root(), root, note, raw, st.last_offset)
            if st.stopped is None:
                st.base, st.leaves, st.offsets = st.tree.copy(), [], []
            return
        # The consumer has passed this size: replay the leaves kept since the window base.
        base = st.base.size
        if size < base:
            log.warning(
                "%s[%d]: signed checkpoint of size %d arrived after the consumer passed it "
                "and left its replay window (from size %d): not compared",
                self.ledger,
                st.partition,
                size,
                base,
            )
            return
        probe = st.base.copy()
        for leaf in st.leaves[: size - base]:
            probe.append(leaf)
        where_offset = st.offsets[size - base - 1] if size > base else None
        self._compare(st, size, probe.root(), root, note, raw, where_offset)
        if st.stopped is None:
            st.base = probe
            del st.leaves[: size - base], st.offsets[: size - base]

    def _compare(
        self,
        st: _Partition,
        size: int,
        ours: bytes,
        signed: bytes,
        note: str,
        raw: bytes | None,
        offset: int | None,
    ) -> None:
        if ours == signed:
            st.checked_size = max(st.checked_size, size)
            st.dirty = True
            self.checkpoints_verified[st.partition] = (
                self.checkpoints_verified.get(st.partition, 0) + 1
            )
            return
        self._found(
            st,
            "checkpoint_mismatch",
            size - 1 if size else None,
            offset,
            f"the tree of the first {size} entries does not match the signed checkpoint of "
            f"size {size}: history was rewritten",
            raw,
            True,
            note,
            rebuilt_root=ours.hex(),
        )

    # -- verifying records -------------------------------------------------------------
    def _process(self, m: Message) -> VerifiedEntry | None:
        p = m.partition()
        st = self._parts.get(p)
        if st is None or st.stopped is not None:
            return None
        offset = m.offset()
        if offset < st.next_offset:
            return None  # already verified (a re-fetch after a seek)
        value = m.value()
        expected = st.seq
        try:
            if value is None:
                raise FormatError("an empty record (tombstone) is not an entry")
            entry = decode_record(value)
        except UnknownVersionError as exc:
            return self._skip(st, m, "unknown_version", expected, str(exc))
        except FormatError as exc:
            return self._skip(st, m, "malformed", expected, str(exc))
        h = entry.header
        if h.ledger != self.ledger or h.partition != p:
            return self._skip(
                st,
                m,
                "foreign",
                expected,
                f"an entry of ledger {h.ledger!r} partition {h.partition} (seq {h.seq}) was "
                "copied into this partition",
            )
        leaf = hashlib.sha256(b"\x00" + entry.header_bytes).digest()
        if h.seq == expected and h.prev_hash == st.prev_leaf:
            st.suspect = None
            if entry.payload is None or not entry.payload_matches():
                kind = "payload_missing" if entry.payload is None else "payload_modified"
                detail = (
                    f"payload of {h.payload_size} bytes is not stored"
                    if entry.payload is None
                    else "payload does not match the SHA-256 committed in its header"
                )
                self._found(st, kind, h.seq, offset, detail, value, False)
                # The header links into the chain: keep it, deliver nothing.
                self._accept(st, leaf, offset)
                return None
            if not self._accept(st, leaf, offset) or offset < st.skip_below:
                return None
            return VerifiedEntry(self.ledger, p, h.seq, offset, entry.header, entry.payload, leaf)
        if h.seq < expected:
            if st.recent.get(h.seq) == leaf:
                return self._skip(st, m, "duplicate", h.seq, f"entry seq {h.seq} was stored again")
            return self._skip(
                st,
                m,
                "inserted",
                h.seq,
                f"a different entry for seq {h.seq}, which the chain already holds",
            )
        sus = st.suspect
        if sus is not None and h.seq == sus.seq + 1 and h.prev_hash == sus.leaf:
            # The chain goes on through the record skipped before: it was not injected.
            if sus.seq > expected:
                kind, seq, where = "missing", expected, sus.offset
                detail = f"entries seq {expected}..{sus.seq - 1} are missing from the log"
            else:
                kind, seq, where = "header_modified", expected - 1, st.last_offset
                detail = (
                    f"the log goes on from a different entry seq {expected - 1} than the one "
                    f"verified at offset {st.last_offset}: its header was altered or history "
                    "was rewritten from there"
                )
            self._found(st, kind, seq, where, detail, value, True)
            return None
        if h.seq > expected:
            kind, detail = (
                "missing",
                f"the record holds seq {h.seq}, the chain expects {expected}: entries "
                f"{expected}..{h.seq - 1} were deleted (or this record is forged)",
            )
        else:
            kind, detail = (
                "inserted",
                f"entry seq {h.seq} does not link to the previous entry: a forged or "
                "injected record (or the previous entry's header was altered)",
            )
        if self.on_tamper == "quarantine":
            kind = "inserted"  # provisional: if the chain goes on through it, see above
            st.suspect = _Suspect(h.seq, offset, leaf)
        return self._skip(st, m, kind, min(h.seq, expected), detail)

    def _run(self, out: list[VerifiedEntry], limit: int) -> bool:
        """Verify a run of buffered records of one partition at once with the native
        accelerator, under exactly :meth:`_process`'s rules for records that pass: each one
        decodes, names this ledger and partition, has the next seq, links to the previous
        leaf, carries its payload of the committed size and SHA-256, and is followed by a
        record that links to it. The run stops before anything else (a record that fails, the
        last buffered record, a signed checkpoint's size, a replay window that would fill up);
        what it did not accept stays in the buffer for :meth:`_process`. Appends the entries
        to deliver to ``out``; True if any."""
        native = _accel.native
        buf = self._buffer
        first = buf[0]
        p = first.partition()
        st = self._parts.get(p)
        if (
            native is None
            or st is None
            or st.stopped is not None
            or st.suspect is not None
            or first.offset() < st.next_offset
        ):
            return False
        msgs: list[Message] = []
        entries = []
        last = st.next_offset - 1
        for m in buf:
            if len(msgs) > limit or m.partition() != p:
                break
            value = m.value()
            offset = m.offset()
            if value is None or offset <= last:
                break
            try:
                entry = decode_record(value)
            except FormatError:
                break
            if not msgs and (
                entry.header.seq != st.seq
                or entry.header.prev_hash != st.prev_leaf
                or entry.payload is None
                or not entry.payload_matches()
            ):
                return False  # the first record needs the careful path: decode no further
            msgs.append(m)
            entries.append(entry)
            last = offset
        if len(msgs) < 2:
            return False
        if self.trust is not None and len(st.leaves) + len(msgs) > self.max_unchecked_leaves:
            return False  # the replay window restarts inside this run: one at a time
        size = st.tree.size
        next_cp = min((n for n in st.pending if n > size), default=-1)
        try:
            n, seq, prev, hashes, new_size = native.verify_run(
                [m.value() for m in msgs],
                header_prefix(self.ledger, p),
                st.seq,
                st.prev_leaf,
                st.tree.hashes(),
                size,
                next_cp,
            )
        except (TypeError, ValueError, OverflowError):
            return False
        if not n:
            return False
        self._mark(st)
        st.tree = CompactRange._of(new_size, hashes)
        # the leaf of each accepted entry is the prev_hash of the one after it (checked)
        leaves = [e.header.prev_hash for e in entries[1 : n + 1]]
        offsets = [m.offset() for m in msgs[:n]]
        first_seq = st.seq
        st.seq, st.prev_leaf = seq, prev
        st.last_offset = offsets[-1]
        st.next_offset = offsets[-1] + 1
        st.dirty = True
        recent = st.recent
        for i in range(max(0, n - _RECENT), n):
            recent[first_seq + i] = leaves[i]
        while len(recent) > _RECENT:
            recent.popitem(last=False)
        if self.trust is not None:
            st.leaves += leaves
            st.offsets += offsets
        for _ in range(n):
            buf.popleft()
        skip = st.skip_below
        ledger = self.ledger
        before = len(out)
        for i in range(n):
            if offsets[i] >= skip:
                e = entries[i]
                out.append(
                    VerifiedEntry(
                        ledger, p, first_seq + i, offsets[i], e.header, e.payload, leaves[i]
                    )
                )
        return len(out) > before

    def _skip(self, st: _Partition, m: Message, kind: str, seq: int | None, detail: str) -> None:
        self._found(st, kind, seq, m.offset(), detail, m.value(), False)
        self._mark(st)
        st.next_offset = m.offset() + 1
        st.dirty = True
        return None

    def _mark(self, st: _Partition) -> None:
        if st.partition not in self._undo:
            self._undo[st.partition] = st.saved()

    def _accept(self, st: _Partition, leaf: bytes, offset: int) -> bool:
        new_size = st.tree.size + 1
        cp = st.pending.pop(new_size, None) if st.pending else None
        if cp is not None:
            probe = st.tree.copy()
            probe.append(leaf)
            self._compare(st, new_size, probe.root(), cp[0], cp[1], None, offset)
            if st.stopped is not None:
                return False
        self._mark(st)
        st.tree.append(leaf)
        st.seq += 1
        st.prev_leaf = leaf
        st.last_offset = offset
        st.next_offset = offset + 1
        st.dirty = True
        st.recent[new_size - 1] = leaf
        if len(st.recent) > _RECENT:
            st.recent.popitem(last=False)
        if cp is not None:
            st.base, st.leaves, st.offsets = st.tree.copy(), [], []
        elif self.trust is not None:
            st.leaves.append(leaf)
            st.offsets.append(offset)
            if len(st.leaves) > self.max_unchecked_leaves:
                st.base, st.leaves, st.offsets = st.tree.copy(), [], []
        return True

    # -- findings ----------------------------------------------------------------------
    def _found(
        self,
        st: _Partition,
        kind: str,
        seq: int | None,
        offset: int | None,
        detail: str,
        raw: bytes | None,
        fatal: bool,
        note: str | None = None,
        **evidence: Any,
    ) -> None:
        """Report a finding; raise (raise policy), or quarantine it and stop the partition
        if ``fatal`` (the chain cannot be repaired)."""
        if note is not None:
            evidence["checkpoint"] = note
        finding = Finding(kind, self.ledger, st.partition, seq, offset, detail, evidence)
        self.findings.append(finding)
        log.warning("%s", finding)
        if self.on_finding is not None:
            self.on_finding(finding)
        if self.on_tamper == "raise" or fatal:
            st.stopped = finding
            self._stop(st.partition)
        if self.on_tamper == "raise":
            raise TamperDetected(f"{self.ledger}: {finding}", [finding])
        self._quarantine(finding, raw, note is not None)

    def _stop(self, partition: int) -> None:
        with contextlib.suppress(KafkaException, RuntimeError):
            self._consumer.pause([TopicPartition(self.ledger, partition)])
        self._buffer = deque(m for m in self._buffer if m.partition() != partition)

    def _quarantine(self, finding: Finding, raw: bytes | None, from_history: bool) -> None:
        if self._producer is None:
            self._ensure_quarantine_topic()
            self._producer = Producer(
                {
                    "bootstrap.servers": self.bootstrap,
                    **self._security,
                    "enable.idempotence": True,
                    "acks": "all",
                    "linger.ms": 0,
                }
            )
        source = self.history_topic if from_history else self.ledger
        errors: list[KafkaError] = []

        def done(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                errors.append(err)

        self._producer.produce(
            self.quarantine_topic,
            raw,
            key=f"{self.ledger}/{finding.partition}".encode(),
            headers=[
                ("streamledger.finding", json.dumps(finding.to_json()).encode()),
                ("streamledger.source", f"{source}/{finding.partition}".encode()),
            ],
            on_delivery=done,
        )
        # Durable before the head moves past the record.
        if self._producer.flush(self.timeout) or errors:
            what = errors[0].str() if errors else f"no acknowledgement in {self.timeout:g}s"
            raise BackendUnavailable(
                f"quarantining a record of {self.ledger} to {self.quarantine_topic} failed: {what}"
            )

    def _ensure_quarantine_topic(self) -> None:
        if self._quarantine_ready:
            return
        admin = AdminClient({"bootstrap.servers": self.bootstrap, **self._security})
        topics = admin.list_topics(timeout=self.timeout).topics
        if self.quarantine_topic not in topics:
            fut = admin.create_topics(
                [
                    NewTopic(
                        self.quarantine_topic,
                        1,
                        -1,
                        config={"retention.ms": "-1", "retention.bytes": "-1"},
                    )
                ],
                request_timeout=self.timeout,
            )[self.quarantine_topic]
            try:
                fut.result(timeout=self.timeout + 1)
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                exists = (
                    isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS
                )
                if not exists:
                    raise BackendUnavailable(
                        f"creating the quarantine topic {self.quarantine_topic} failed: {exc}"
                    ) from None
        self._quarantine_ready = True

    # -- the ledger's registry ---------------------------------------------------------
    def _registry_origin(self) -> str:
        from streamledger.backends.kafka import KafkaBackend

        backend = KafkaBackend(self.bootstrap, config=self._security, timeout=self.timeout)
        try:
            return backend.ledger_config(self.ledger).origin
        finally:
            backend.close()
