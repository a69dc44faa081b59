"""``streamledger fraud run``: verified input events -> suspicious-events and fraud-alert-events.

Every input entry is verified before it is scored: on Kafka by the
:class:`~streamledger.consumer.VerifiedConsumer` (quarantine policy), on the embedded backend
by an incremental verifier here (chain, payload hash, signed checkpoint roots). An entry that
fails is never scored: it raises an ``integrity`` alert instead. An entry whose payload is not
a valid event (see :mod:`streamledger.fraud.events`), or that is later than the grace period,
goes to the rejects ledger/topic with the reason, and the pipeline goes on.

**Kafka: exactly once.** Per batch, ONE Kafka transaction (the alerts ledger's transactional
producer, ``transactional.id`` fixed per consumer group so a restarted pipeline fences the
old one) holds: the fraud-alert-events entries, the suspicious-events entries (built on the
suspicious ledger's head and produced inside the same transaction), the rejects, the
detectors' state changelog (compacted topic ``<alerts>.state``) and the input offsets of the
group (``send_offsets_to_transaction``), all through the public
:func:`streamledger.ledger.append_atomically`. After a kill -9 the open transaction is aborted;
the restarted pipeline loads the state from ``<alerts>.state`` and resumes at the committed
offsets, so no alert is lost and none is written twice.

**Embedded (SQLite): in process.** Reads the input ledger from the stored position, writes the
output ledgers, then stores the position, verification heads, output sizes and the state
changelog in a side database (``DATA_DIR/fraud-state/<group>.db``) in one SQLite transaction.
A crash between the two is repaired on restart: the batch is replayed (detection is
deterministic) and what the output ledgers already hold beyond the stored sizes is not
appended again.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import signal
import sqlite3
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamledger.core.entry import ZERO_HASH, decode_record
from streamledger.core.merkle import CompactRange, range_nodes
from streamledger.core.verify import TrustPolicy, check_checkpoint_note
from streamledger.errors import BackendUnavailable, ConfigError, FormatError, StreamledgerError
from streamledger.fraud.detectors import Detection, Detectors, load_thresholds
from streamledger.fraud.events import (
    ALERTS_LEDGER,
    CONTENT_TYPE,
    INPUT_LEDGER,
    INTEGRITY,
    SUSPICIOUS_LEDGER,
    Alert,
    Event,
    Evidence,
    MalformedEvent,
    make_alert_id,
    parse_event,
)
from streamledger.fraud.windows import Late
from streamledger.ledger import AppendItem, Ledger, append_atomically

__all__ = ["Pipeline", "RunStats", "add_arguments", "export_alert_evidence", "main"]

STATE_SUFFIX = ".state"
REJECTS_SUFFIX = ".rejects"


# Entries read from one partition at a time when a step merges the partitions by append time.
_MERGE_RUN = 250


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class RunStats:
    events: int = 0
    rejects: int = 0
    late: int = 0
    suspicious: int = 0
    alerts: int = 0
    integrity: int = 0
    batches: int = 0
    started: float = field(default_factory=time.monotonic)
    #: seconds from an input entry's append (header timestamp) to its alert's commit
    latencies: list[float] = field(default_factory=list)

    def percentile(self, q: float) -> float | None:
        if not self.latencies:
            return None
        values = sorted(self.latencies)
        return values[min(len(values) - 1, int(q * len(values)))]

    def summary(self) -> str:
        took = time.monotonic() - self.started
        rate = self.events / took if took > 0 else 0.0
        p50, p99 = self.percentile(0.5), self.percentile(0.99)
        lat = f", alert latency p50 {p50:.3f}s p99 {p99:.3f}s" if p50 is not None and p99 else ""
        return (
            f"{self.events} events scored ({rate:.0f}/s), {self.rejects} rejected "
            f"({self.late} late beyond grace), {self.suspicious} suspicious events, "
            f"{self.alerts} alerts ({self.integrity} integrity) in {self.batches} batches{lat}"
        )


@dataclass
class Batch:
    """What one batch of input produces."""

    suspicious: list[AppendItem] = field(default_factory=list)
    alerts: list[AppendItem] = field(default_factory=list)
    alert_ids: list[str] = field(default_factory=list)
    suspicious_ids: list[str] = field(default_factory=list)
    rejects: list[AppendItem] = field(default_factory=list)
    appended_ms: list[int] = field(default_factory=list)  # input append times behind alerts


class Pipeline:
    """The backend-independent part: parse, score, build output entries."""

    def __init__(
        self,
        detectors: Detectors,
        *,
        input_ledger: str = INPUT_LEDGER,
        alert_min_score: float = 0.5,
        on_alert: Callable[[Alert], None] | None = None,
    ) -> None:
        self.detectors = detectors
        self.input = input_ledger
        self.alert_min_score = alert_min_score
        self.stats = RunStats()
        self.batch = Batch()
        self.on_alert = on_alert

    def take(self) -> Batch:
        batch, self.batch = self.batch, Batch()
        return batch

    def entry(self, payload: bytes, partition: int, seq: int, appended_ms: int) -> None:
        """Score one verified input entry."""
        self.entries([(payload, partition, seq, appended_ms)])

    def entries(self, items: Iterable[tuple[bytes, int, int, int]]) -> None:
        """Score a batch of verified input entries ``(payload, partition, seq, appended_ms)``
        in event-time order. A batch holds runs of several partitions one after another (as
        they were fetched); rules that look at an asset's latest trade or price top must see
        the events as they happened, so the batch is sorted by event time (then partition and
        seq, so the order is deterministic) before scoring."""
        parsed: list[tuple[int, int, int, Event, Evidence, bytes, int]] = []
        for payload, partition, seq, appended_ms in items:
            where = Evidence(self.input, partition, seq)
            try:
                event = parse_event(payload)
            except MalformedEvent as exc:
                self.reject(payload, where, exc.code, exc.reason)
                continue
            parsed.append((event.ts_ms, partition, seq, event, where, payload, appended_ms))
        parsed.sort(key=lambda t: t[:3])
        for _, _, _, event, where, payload, appended_ms in parsed:
            self._score(event, where, payload, appended_ms)

    def _score(self, event: Event, where: Evidence, payload: bytes, appended_ms: int) -> None:
        out = self.detectors.process(event, where)
        if isinstance(out, Late):
            self.stats.late += 1
            self.reject(payload, where, "late_beyond_grace", out.reason)
            return
        self.stats.events += 1
        for d in out:
            self.detection(d, appended_ms)

    def reject(self, payload: bytes, where: Evidence, code: str, reason: str) -> None:
        self.stats.rejects += 1
        doc: dict[str, Any] = {"code": code, "reason": reason, "source": where.to_dict()}
        try:
            doc["payload"] = payload.decode("utf-8")
        except UnicodeDecodeError:
            doc["payload_hex"] = payload[:4096].hex()
        self.batch.rejects.append(
            AppendItem(json.dumps(doc).encode(), f"{where.partition}".encode(), CONTENT_TYPE)
        )

    def detection(self, d: Detection, appended_ms: int) -> None:
        at = now_ms()
        key = (d.customer_ids[0] if d.customer_ids else "").encode()[:255] or None
        self.batch.suspicious.append(
            AppendItem(json.dumps(d.to_dict(at)).encode(), key, CONTENT_TYPE)
        )
        self.batch.suspicious_ids.append(d.suspicious_id)
        self.stats.suspicious += 1
        if d.score >= self.alert_min_score:
            self.alert(d.to_alert(at), appended_ms)

    def alert(self, alert: Alert, appended_ms: int | None = None) -> None:
        if alert.alert_id in self.batch.alert_ids:
            return
        key = alert.customer_ids[0].encode()[:255]
        self.batch.alerts.append(AppendItem(alert.to_json(), key, CONTENT_TYPE))
        self.batch.alert_ids.append(alert.alert_id)
        if appended_ms is not None:
            self.batch.appended_ms.append(appended_ms)
        self.stats.alerts += 1
        if alert.pattern == INTEGRITY:
            self.stats.integrity += 1
        if self.on_alert is not None:
            self.on_alert(alert)

    def integrity(
        self,
        kind: str,
        ledger: str,
        partition: int,
        seq: int | None,
        detail: str,
        customer: str | None = None,
    ) -> None:
        """An input entry failed verification: an integrity alert, nothing scored."""
        at = now_ms()
        anchor = f"{ledger}/{partition}/{seq}/{kind}"
        evidence = [Evidence(ledger, partition, seq)] if seq is not None else []
        alert = Alert(
            alert_id=make_alert_id(INTEGRITY, [customer or "unknown"], anchor),
            pattern=INTEGRITY,
            customer_ids=(customer or "unknown",),
            first_ts=_fmt(at),
            last_ts=_fmt(at),
            detected_at=_fmt(at),
            severity="critical",
            score=1.0,
            reason=(
                f"input entry {ledger}[{partition}] seq {seq} failed verification ({kind}): "
                f"{detail}; it was not scored"
            ),
            evidence=tuple(evidence),
        )
        self.alert(alert)


def _fmt(ms: int) -> str:
    from streamledger.fraud.events import format_ts

    return format_ts(ms)


# -- embedded backend ----------------------------------------------------------------------
class _Head:
    """Incremental verification head of one input partition (chain + Merkle tree)."""

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        data = data or {}
        self.seq = int(data.get("seq", 0))
        self.prev = bytes.fromhex(data["prev"]) if data.get("prev") else ZERO_HASH
        hashes = [bytes.fromhex(h) for h in data.get("tree", [])]
        by_node = dict(zip(range_nodes(0, self.seq), hashes, strict=True))
        self.tree = CompactRange.from_nodes(self.seq, lambda lv, ix: by_node[(lv, ix)])
        self.checked = int(data.get("checked", -1))
        self.stopped: str | None = data.get("stopped")

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "prev": self.prev.hex(),
            "tree": [h.hex() for h in self.tree.hashes()],
            "checked": self.checked,
            "stopped": self.stopped,
        }


class EmbeddedRunner:
    """Run the pipeline in process on a non-Kafka backend (see the module docstring)."""

    def __init__(
        self,
        backend: Any,
        pipeline: Pipeline,
        *,
        suspicious: str,
        alerts: str,
        rejects: str,
        state_path: Path,
        batch_size: int = 2000,
        trust: TrustPolicy | None = None,
    ) -> None:
        self.backend = backend
        self.p = pipeline
        self.input = Ledger(backend, pipeline.input)
        self.trust = trust if trust is not None else self.input.default_trust()
        self.outputs = {
            name: open_or_create(backend, name) for name in (suspicious, alerts, rejects)
        }
        self.names = {"suspicious": suspicious, "alerts": alerts, "rejects": rejects}
        self.batch_size = batch_size
        state_path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(state_path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v BLOB NOT NULL)")
        self.heads: dict[int, _Head] = {}
        self.sizes: dict[str, list[int]] = {}
        self.skip: dict[str, set[str]] = {}
        self._stop = False
        self._load()
        pipeline.detectors.state.watermark.expect(range(self.input.partitions))

    # -- state ------------------------------------------------------------------------
    def _get(self, key: str) -> Any:
        row = self.db.execute("SELECT v FROM kv WHERE k=?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def _load(self) -> None:
        rows = self.db.execute("SELECT k, v FROM kv WHERE k LIKE 's:%'").fetchall()
        self.p.detectors.apply((k[2:], bytes(v)) for k, v in rows)
        for part in range(self.input.partitions):
            self.heads[part] = _Head(self._get(f"in:{part}"))
        stored = self._get("out") or {}
        for role, name in self.names.items():
            ledger = self.outputs[name]
            have = [ledger.size(p) for p in range(ledger.partitions)]
            was = stored.get(role, [0] * ledger.partitions)
            self.sizes[role] = have
            # Entries appended after the last stored state (a crash in between): the replayed
            # batch will produce them again; remember their ids so they are not re-appended.
            ids: set[str] = set()
            for p, (start, end) in enumerate(zip(was, have, strict=True)):
                for entry in ledger.read(p, start, end):
                    ids.add(_entry_id(entry.payload))
            self.skip[role] = ids

    def _save(self, changes: dict[str, bytes | None]) -> None:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            for p, head in self.heads.items():
                db.execute(
                    "INSERT OR REPLACE INTO kv VALUES (?, ?)",
                    (f"in:{p}", json.dumps(head.to_json())),
                )
            db.execute("INSERT OR REPLACE INTO kv VALUES ('out', ?)", (json.dumps(self.sizes),))
            for k, v in changes.items():
                if v is None:
                    db.execute("DELETE FROM kv WHERE k=?", ("s:" + k,))
                else:
                    db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", ("s:" + k, v))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    # -- the loop -----------------------------------------------------------------------
    def stop(self) -> None:
        self._stop = True

    def run(self, until_idle: float | None = None, poll: float = 0.5) -> RunStats:
        idle_since = time.monotonic()
        while not self._stop:
            got = self.step()
            if got:
                idle_since = time.monotonic()
                continue
            if until_idle is not None and time.monotonic() - idle_since >= until_idle:
                break
            time.sleep(poll)
        self.db.close()
        return self.p.stats

    def step(self) -> int:
        """Read and verify up to ``batch_size`` entries per partition and score them together
        in event-time order; the number of input entries read.

        The partitions are merged by append time, a short run at a time from the partition
        that is furthest behind: equal counts per partition would not cover equal spans of
        time (a busy partition's 2,000 entries are minutes, a quiet one's an hour), and rules
        that look at an asset's latest trade or price top would see events far out of order
        when a stored day is replayed."""
        verified: list[tuple[bytes, int, int, int]] = []
        active = {part: head for part, head in self.heads.items() if not head.stopped}
        upcoming = dict.fromkeys(active, -1)  # append time of the next entry (-1: unknown)
        signed: dict[int, dict[int, bytes]] = {}
        budget = self.batch_size * len(active)
        run = max(1, min(self.batch_size, _MERGE_RUN))
        read = 0
        while active and read < budget:
            part = min(active, key=upcoming.__getitem__)
            head = active[part]
            if part not in signed:
                signed[part] = self._checkpoints(part)
            others = [upcoming[p] for p in active if p != part]
            got, next_ms, more = self._read_partition(
                part, head, verified, min(run, budget - read), signed[part],
                until_ms=min(others) if others else None,
            )  # fmt: skip
            read += got
            if got == 0 or head.stopped or not more:
                del active[part]  # caught up (or stopped) for this step
            else:
                upcoming[part] = next_ms
        self.p.entries(verified)
        if read:
            self._flush()
        return read

    def _checkpoints(self, part: int) -> dict[int, bytes]:
        if self.trust is None:
            return {}
        origin = self.input.config.checkpoint_origin(part)
        out = {}
        for note in self.input.checkpoint_notes(part, self.trust.witness_keys):
            try:
                cp = check_checkpoint_note(note, origin, self.trust)
            except StreamledgerError:
                continue
            out[cp.tree_size] = cp.root_hash
        return out

    def _read_partition(
        self,
        part: int,
        head: _Head,
        verified: list[tuple[bytes, int, int, int]],
        count: int,
        signed: dict[int, bytes],
        until_ms: int | None = None,
    ) -> tuple[int, int, bool]:
        """Verify up to ``count`` next entries of the partition (the first one, then those
        appended at or before ``until_ms``); the good ones go to ``verified``. Returns the
        number read, the append time of the next entry (a lower bound if not seen yet) and
        whether more entries may follow."""
        records = list(self.backend.read(self.p.input, part, head.seq, head.seq + count))
        if not records:
            self.p.detectors.state.watermark.idle(part)  # caught up: do not hold others back
            return 0, -1, False
        last_ms = -1
        taken = 0
        name = self.p.input
        for rec in records:
            try:
                entry = decode_record(rec.value)
            except FormatError as exc:
                return self._fatal(part, head, "malformed", head.seq, str(exc))
            h = entry.header
            if taken and until_ms is not None and h.timestamp_ms > until_ms:
                return taken, h.timestamp_ms, True  # left for a later turn, not read
            taken += 1
            last_ms = h.timestamp_ms
            if h.ledger != name or h.partition != part or h.seq != head.seq:
                return self._fatal(
                    part, head, "foreign_or_moved", head.seq,
                    f"the record holds {h.ledger}[{h.partition}] seq {h.seq}",
                )  # fmt: skip
            if h.prev_hash != head.prev:
                return self._fatal(
                    part, head, "chain_broken", head.seq,
                    "the entry does not link to the previous one (history rewritten, an entry "
                    "inserted or removed, or the previous header altered)",
                )  # fmt: skip
            leaf = entry.leaf_hash
            head.tree.append(leaf)
            head.prev = leaf
            head.seq += 1
            root = signed.get(head.seq)
            if root is not None and head.seq > head.checked:
                if head.tree.root() != root:
                    return self._fatal(
                        part, head, "checkpoint_mismatch", head.seq - 1,
                        f"the tree of the first {head.seq} entries does not match the signed "
                        "checkpoint: history was rewritten",
                    )  # fmt: skip
                head.checked = head.seq
            if entry.payload is None or not entry.payload_matches():
                kind = "payload_missing" if entry.payload is None else "payload_modified"
                self.p.integrity(
                    kind, name, part, h.seq,
                    "its payload does not match the SHA-256 committed in its header",
                    customer=_key_text(h.key),
                )  # fmt: skip
                continue
            verified.append((entry.payload, part, h.seq, h.timestamp_ms))
        return taken, last_ms, len(records) == count

    def _fatal(
        self, part: int, head: _Head, kind: str, seq: int, detail: str
    ) -> tuple[int, int, bool]:
        self.p.integrity(kind, self.p.input, part, seq, detail + "; partition stopped")
        head.stopped = f"{kind} at seq {seq}"
        return 1, -1, False

    def _flush(self) -> None:
        batch = self.p.take()
        self.p.detectors.end_batch()
        for role, items in (
            ("suspicious", batch.suspicious),
            ("alerts", batch.alerts),
            ("rejects", batch.rejects),
        ):
            skip = self.skip.get(role)
            if skip:
                items = [i for i in items if _entry_id(i.payload) not in skip]
            if items:
                ledger = self.outputs[self.names[role]]
                ledger.append_many(items)
                self.sizes[role] = [ledger.size(p) for p in range(ledger.partitions)]
        self._save(self.p.detectors.changes())
        done = time.time()
        self.p.stats.latencies += [done - ms / 1000 for ms in batch.appended_ms]
        self.p.stats.batches += 1


def _entry_id(payload: bytes | None) -> str:
    """Identity of an output entry for the replay check: its alert/suspicious id, or a hash."""
    if payload is None:
        return ""
    try:
        doc = json.loads(payload)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        for k in ("suspicious_id", "alert_id"):
            if isinstance(doc.get(k), str):
                return doc[k]
        source = doc.get("source")
        if isinstance(source, dict):
            return "reject:" + json.dumps(source, sort_keys=True)
    return hashlib.sha256(payload).hexdigest()


def _key_text(key: bytes | None) -> str | None:
    if not key:
        return None
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return None


def open_or_create(backend: Any, name: str, partitions: int = 1) -> Ledger:
    """The ledger ``name``, created with ``partitions`` if it does not exist yet."""
    if name in backend.list_ledgers():
        return Ledger(backend, name)
    try:
        return Ledger.create(backend, name, partitions=partitions)
    except ConfigError:
        return Ledger(backend, name)  # created meanwhile


# -- Kafka --------------------------------------------------------------------------------
class KafkaRunner:
    """Run the pipeline on Kafka, exactly once per batch (see the module docstring)."""

    def __init__(
        self,
        bootstrap: str,
        pipeline: Pipeline,
        *,
        suspicious: str,
        alerts: str,
        rejects: str,
        group: str,
        state_dir: Path,
        config: dict[str, Any] | None = None,
        batch_size: int = 2000,
        timeout: float = 15.0,
        transaction_timeout: float = 10.0,
        linger: float = 0.1,
    ) -> None:
        from streamledger.backends.kafka import KafkaBackend

        self.p = pipeline
        # Once input arrives, wait up to this long for more before scoring the batch: each
        # batch costs a transaction and a changelog of every state key it changed, so at high
        # rates fewer, larger batches cost much less CPU (here and on the broker) per event.
        self.linger = linger
        self.bootstrap = bootstrap
        self.group = group
        self.config = dict(config or {})
        self.batch_size = batch_size
        self.timeout = timeout
        self.state_topic = alerts + STATE_SUFFIX
        self.rejects = rejects
        self.state_dir = state_dir
        self.backend = KafkaBackend(
            bootstrap,
            config=self.config,
            state_dir=state_dir / "kafka-cache",
            # fixed per group: a restarted pipeline fences the previous one and aborts its
            # open transaction before reading any head
            transactional_id=f"streamledger-fraud-{_safe(group)}-{{ledger}}",
            timeout=timeout,
            transaction_timeout=transaction_timeout,
        )
        self.input = Ledger(self.backend, pipeline.input)
        self.suspicious = open_or_create(self.backend, suspicious)
        self.alerts = open_or_create(self.backend, alerts)
        self._ensure_topics()
        # Fence a previous instance now (init_transactions completes or aborts its open
        # transaction), so the state and the suspicious ledger's head read below are final.
        self.backend.fence(alerts)
        self._restore()
        self._findings: list[Any] = []
        self._stop = False
        self._asked: dict[int, float] = {}
        self.consumer: Any = None

    def _ensure_topics(self) -> None:
        from confluent_kafka import KafkaError, KafkaException
        from confluent_kafka.admin import AdminClient, NewTopic

        from streamledger.backends.kafka._admin import client_config

        admin = AdminClient(client_config(self.bootstrap, self.config, _ignore_error))
        existing = admin.list_topics(timeout=self.timeout).topics
        rf = max(1, min(3, self.backend.brokers))
        want = []
        if self.state_topic not in existing:
            want.append(
                NewTopic(
                    self.state_topic,
                    1,
                    rf,
                    config={"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"},
                )
            )
        if self.rejects not in existing:
            want.append(NewTopic(self.rejects, 1, rf, config={"retention.ms": "-1"}))
        if not want:
            return
        for _name, fut in admin.create_topics(want, request_timeout=self.timeout).items():
            try:
                fut.result(timeout=self.timeout + 1)
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                if not (
                    isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS
                ):
                    raise

    def _restore(self) -> None:
        """Load the detectors' state from the compacted state topic (committed records)."""
        from confluent_kafka import Consumer, KafkaError, TopicPartition

        from streamledger.backends.kafka._admin import client_config

        conf = client_config(self.bootstrap, self.config, _ignore_error)
        conf.update(
            {
                "group.id": self.group + ".state-restore",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "enable.partition.eof": True,
                "auto.offset.reset": "earliest",
            }
        )
        c = Consumer(conf)
        try:
            _, high = c.get_watermark_offsets(
                TopicPartition(self.state_topic, 0), timeout=self.timeout, cached=False
            )
            latest: dict[str, bytes | None] = {}
            if high > 0:
                c.assign([TopicPartition(self.state_topic, 0, 0)])
                deadline = time.monotonic() + max(30.0, self.timeout)
                done = False
                while not done and time.monotonic() < deadline:
                    for m in c.consume(5000, 0.5):
                        err = m.error()
                        if err is not None:
                            if err.code() == KafkaError._PARTITION_EOF:
                                done = True
                            continue
                        key = m.key()
                        if key is not None:
                            latest[key.decode()] = m.value()
                        if m.offset() >= high - 1:
                            done = True
                if not done:
                    raise StreamledgerError(
                        f"reading the state topic {self.state_topic} did not finish in time"
                    )
            self.p.detectors.apply(latest.items())
        finally:
            c.close()

    def stop(self) -> None:
        self._stop = True

    def run(self, until_idle: float | None = None) -> RunStats:
        from streamledger.consumer import VerifiedConsumer

        _warm_up()
        self.consumer = VerifiedConsumer(
            self.bootstrap,
            self.p.input,
            trust=self.input.default_trust(),
            group_id=self.group,
            state_dir=self.state_dir / "consumer",
            on_tamper="quarantine",
            on_finding=self._findings.append,
            # a killed member's partitions move on after 10 s, not librdkafka's 45 s
            config={"session.timeout.ms": 10_000, **self.config},
            batch_size=self.batch_size,
            timeout=self.timeout,
            # the head files are a cache here (offsets are committed in our transactions):
            # an fsync per partition per batch is not worth it
            save_interval=5.0,
        )
        ok = False
        try:
            idle_since = time.monotonic()
            nexts: dict[int, int] = {}
            wm = self.p.detectors.state.watermark
            while not self._stop:
                entries = self.consumer.poll(0.5, max_entries=self.batch_size, linger=self.linger)
                assigned = self.consumer.assignment()
                if not assigned:
                    idle_since = time.monotonic()  # idle counts once partitions are ours
                wm.expect(assigned)
                for e in entries:
                    nexts[e.partition] = e.offset + 1
                got = {e.partition for e in entries}
                for p in assigned:
                    if p not in got and self._caught_up(p, nexts.get(p)):
                        wm.idle(p)  # nothing to read: do not hold the others' watermark back
                if entries or self._findings:
                    self._batch(entries)
                    idle_since = time.monotonic()
                elif until_idle is not None and time.monotonic() - idle_since >= until_idle:
                    break
            ok = True
        finally:
            self.consumer.close(acknowledge=ok)
            self.backend.close()
        return self.p.stats

    def _caught_up(self, partition: int, next_offset: int | None) -> bool:
        try:
            # From the last fetch response: no broker round trip per partition and batch.
            low, high = self.consumer.watermarks(partition, cached=True)
            if low < 0 or high < 0:  # not fetched yet: ask the broker, once a second at most
                now = time.monotonic()
                if now < self._asked.get(partition, 0.0) + 1.0:
                    return False
                self._asked[partition] = now
                low, high = self.consumer.watermarks(partition)
        except BackendUnavailable:
            return False
        if next_offset is None:
            return high <= low
        return high - next_offset <= 1  # at most the last transaction's commit marker

    def _batch(self, entries: list[Any]) -> None:
        from confluent_kafka import TopicPartition

        findings, self._findings = self._findings, []
        for f in findings:
            self.p.integrity(f.kind, f.ledger, f.partition, f.seq, f.detail)
        offsets: dict[int, int] = {}
        for e in entries:
            offsets[e.partition] = max(offsets.get(e.partition, 0), e.offset + 1)
        self.p.entries((e.payload, e.partition, e.seq, e.timestamp_ms) for e in entries)
        batch = self.p.take()
        self.p.detectors.end_batch()
        extra: list[tuple[str, int | None, bytes | None, bytes | None, list | None]] = []
        for item in batch.rejects:
            extra.append((self.rejects, 0, item.key, item.payload, None))
        for key, value in self.p.detectors.changes().items():
            extra.append((self.state_topic, 0, key.encode(), value, None))
        transaction = {
            "consumer_offsets": [
                TopicPartition(self.p.input, p, o) for p, o in sorted(offsets.items())
            ],
            "group_metadata": self.consumer.group_metadata(),
            "extra_records": extra,
        }
        # ONE transaction of the alerts ledger's writer: alerts, suspicious events (built on
        # the suspicious ledger's head), rejects, state changelog and the input offsets.
        try:
            append_atomically(
                [(self.alerts, batch.alerts), (self.suspicious, batch.suspicious)],
                transaction=transaction,
            )
        except BaseException:
            self.suspicious.forget_heads()
            raise
        done = time.time()
        self.p.stats.latencies += [done - ms / 1000 for ms in batch.appended_ms]
        self.p.stats.batches += 1


def _warm_up() -> None:
    """Import the anomaly model's library (river, about 3 s) before the first batch, not in
    the middle of it: that time would be added to the first alerts' latency."""
    import importlib

    with contextlib.suppress(ImportError):
        importlib.import_module("river.anomaly")


def _ignore_error(err: Any) -> None:
    """librdkafka error callback: failures surface as exceptions of the calls themselves."""


# -- evidence for auditors ---------------------------------------------------------------
def export_alert_evidence(
    backend: Any, alert: Alert | dict[str, Any], *, trust: TrustPolicy | None = None
) -> dict[tuple[str, int], str]:
    """Audit bundles (``streamledger audit export`` format) of an alert's evidence entries,
    one per (ledger, partition): inclusion proofs against a signed checkpoint, verifiable
    offline with ``streamledger audit verify``. The input ledger needs a signed checkpoint
    covering the evidence (``streamledger checkpoint``)."""
    from streamledger.audit import export_bundle

    if isinstance(alert, dict):
        alert = Alert.from_dict(alert)
    groups: dict[tuple[str, int], list[int]] = {}
    for e in alert.evidence:
        groups.setdefault((e.ledger, e.partition), []).append(e.seq)
    return {
        (name, part): export_bundle(Ledger(backend, name), part, seqs, trust=trust)
        for (name, part), seqs in sorted(groups.items())
    }


# -- CLI -----------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", default=INPUT_LEDGER, help="input ledger of customer events")
    parser.add_argument("--suspicious", default=SUSPICIOUS_LEDGER, help="suspicious-events ledger")
    parser.add_argument("--alerts", default=ALERTS_LEDGER, help="fraud alerts ledger")
    parser.add_argument(
        "--rejects", default=None, help="rejects ledger/topic (default ALERTS.rejects)"
    )
    parser.add_argument("--thresholds", type=Path, default=None, help="TOML override file")
    parser.add_argument(
        "--grace-ms", type=int, default=None, help="out-of-order grace (default from thresholds)"
    )
    parser.add_argument("--group", default="streamledger-fraud", help="consumer group / state id")
    parser.add_argument(
        "--until-idle",
        type=float,
        default=None,
        metavar="S",
        help="stop after S seconds without new input (default: run until stopped)",
    )
    parser.add_argument("--batch-size", type=int, default=2000, help="input entries per batch")
    parser.add_argument(
        "--linger-ms",
        type=int,
        default=100,
        metavar="MS",
        help="Kafka: once input arrives, wait up to MS for more before scoring a batch "
        "(larger batches cost less per event; default 100)",
    )


def main(args: argparse.Namespace) -> int:
    from streamledger.cli.commands import data_dir, kafka_bootstrap, open_backend

    thresholds = load_thresholds(args.thresholds)
    detectors = Detectors(thresholds, ledger=args.input, grace_ms=args.grace_ms)
    pipeline = Pipeline(
        detectors,
        input_ledger=args.input,
        alert_min_score=float(thresholds["pipeline"]["alert_min_score"]),
    )
    rejects = args.rejects or args.alerts + REJECTS_SUFFIX
    if len({args.input, args.suspicious, args.alerts, rejects}) != 4:
        raise ConfigError("the input, suspicious, alerts and rejects ledgers must differ")
    bootstrap = kafka_bootstrap(args)
    if bootstrap:
        runner: Any = KafkaRunner(
            bootstrap,
            pipeline,
            suspicious=args.suspicious,
            alerts=args.alerts,
            rejects=rejects,
            group=args.group,
            state_dir=data_dir(args) / "fraud",
            config=dict(args.kafka_config),
            batch_size=args.batch_size,
            linger=max(0, args.linger_ms) / 1000,
        )
    else:
        backend = open_backend(args)
        runner = EmbeddedRunner(
            backend,
            pipeline,
            suspicious=args.suspicious,
            alerts=args.alerts,
            rejects=rejects,
            state_path=data_dir(args) / "fraud-state" / f"{_safe(args.group)}.db",
            batch_size=args.batch_size,
        )
    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, lambda *_: runner.stop())
    try:
        stats = runner.run(until_idle=args.until_idle)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(f"fraud run: {stats.summary()}", file=sys.stderr)
    return 1 if stats.integrity else 0


def _safe(text: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip(".") or "_"
