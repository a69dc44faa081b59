"""The Python API: open a ledger on a backend, append, read, checkpoint, verify, prove.

>>> from streamledger import Ledger, MemoryBackend
>>> ledger = Ledger.create(MemoryBackend(), "payments", partitions=2)
>>> receipt = ledger.append(b'{"amount": 10}', key=b"customer-1")
>>> [e.payload for e in ledger.read(receipt.partition)]
[b'{"amount": 10}']

The ledger is the sequencer of its partitions in this process: it assigns sequence
numbers, chains entries and extends each partition's Merkle tree, then hands the finished
records to the backend in one all-or-nothing append. If another writer extended a
partition meanwhile, the backend refuses (``WriteConflict``) and the ledger rebuilds the
batch on the new head and retries.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import operator
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from streamledger._iterate import drain
from streamledger.backends.base import AppendBatch, Backend, LedgerConfig, get_nodes
from streamledger.core.bundle import WitnessAlert, cosignature_index, merge_cosignatures
from streamledger.core.checkpoint import Checkpoint, sign_checkpoint, verify_checkpoint
from streamledger.core.entry import (
    ZERO_HASH,
    Entry,
    build_records,
    decode_record,
    validate_ledger_id,
)
from streamledger.core.merkle import (
    CompactRange,
    NodeGetter,
    consistency_proof,
    inclusion_proof,
    root_hash,
)
from streamledger.core.note import NoteSignature, SigningKey, VerifierKey
from streamledger.core.partitioner import partition_for_key
from streamledger.core.proof import (
    ConsistencyProof,
    InclusionProof,
    consistency_node_ids,
    inclusion_node_ids,
    node_getter,
)
from streamledger.core.verify import (
    Finding,
    PartitionReport,
    TrustPolicy,
    check_checkpoint_note,
    verify_partition,
)
from streamledger.errors import (
    ConfigError,
    FormatError,
    ProofError,
    StreamledgerError,
    WriteConflict,
)

if TYPE_CHECKING:
    from streamledger.crypto.keyring import DecryptedEntry, LedgerEncryption

DEFAULT_CONTENT_TYPE = "application/octet-stream"
_MAX_RETRIES = 5
#: Verified checkpoint notes a Ledger remembers (see Ledger._checked_note).
_VERIFIED_NOTES = 64


class AppendItem(NamedTuple):
    """One entry to append: payload bytes, an optional key (chooses the partition and is
    recorded in the header) and content type. ``subject`` (encrypted ledgers only) encrypts
    the payload under that subject's own key, which ``erase`` can destroy."""

    payload: bytes
    key: bytes | None = None
    content_type: str | None = None
    subject: str | None = None


@dataclass(frozen=True, slots=True)
class Receipt:
    """Where an appended entry landed."""

    ledger: str
    partition: int
    seq: int
    leaf_hash: bytes
    offset: int


@dataclass
class LedgerReport:
    """Verification result of a whole ledger."""

    ledger: str
    partitions: list[PartitionReport]

    @property
    def ok(self) -> bool:
        return all(p.ok for p in self.partitions)

    @property
    def findings(self) -> list[Finding]:
        return [f for p in self.partitions for f in p.findings]

    @property
    def entries_checked(self) -> int:
        return sum(p.entries_checked for p in self.partitions)

    def to_json(self) -> dict[str, Any]:
        return {
            "ledger": self.ledger,
            "ok": self.ok,
            "entries_checked": self.entries_checked,
            "partitions": [p.to_json() for p in self.partitions],
        }


class _PartitionWriter:
    """The chain head and Merkle right edge of one partition, O(log n) memory."""

    def __init__(self, backend: Backend, ledger: str, partition: int) -> None:
        head = backend.head(ledger, partition)
        self.size = head.size
        self.prev_leaf = head.last_leaf_hash or ZERO_HASH

        def get_node(level: int, index: int) -> bytes:
            return backend.get_node(ledger, partition, level, index)

        self.tree = CompactRange.from_nodes(head.size, get_node)


class Ledger:
    """A named ledger on a backend. Thread-safe for appends within one process."""

    def __init__(
        self,
        backend: Backend,
        name: str,
        *,
        signer: SigningKey | None = None,
        producer: str | None = None,
        clock: Callable[[], int] | None = None,
        encryption: LedgerEncryption | None = None,
    ) -> None:
        self.backend = backend
        #: Encrypts payloads while a batch is built (seq known), before hashing; see
        #: :class:`streamledger.crypto.LedgerEncryption`. None: payloads stored as given.
        self.encryption = encryption
        self.config: LedgerConfig = backend.ledger_config(name)
        self.name = name
        self.signer = signer
        self.producer = producer if producer is not None else f"streamledger@{socket.gethostname()}"
        self._clock = clock or (lambda: time.time_ns() // 1_000_000)
        self._writers: dict[int, _PartitionWriter] = {}
        self._lock = threading.RLock()
        self._round_robin = itertools.count()
        self._default_trust: TrustPolicy | None = None
        #: (note, origin, trust) -> checkpoint, for notes that verified (see _checked_note).
        self._verified_notes: dict[tuple[str, str, TrustPolicy], Checkpoint] = {}
        self._verified_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Ledger({self.name!r}, partitions={self.partitions})"

    # -- creation ----------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        backend: Backend,
        name: str,
        *,
        partitions: int = 1,
        origin: str | None = None,
        signer: SigningKey | None = None,
        options: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> Ledger:
        """Create ledger ``name`` with ``partitions`` logs and open it."""
        try:
            validate_ledger_id(name)
        except FormatError as exc:
            raise ConfigError(str(exc)) from None
        if not 1 <= partitions <= 10_000:
            raise ConfigError(f"partitions must be between 1 and 10000, got {partitions}")
        config = LedgerConfig(
            name=name,
            partitions=partitions,
            origin=origin or LedgerConfig.origin,
            signing_key=signer.name if signer else None,
            log_vkey=str(signer.verifier) if signer else None,
            options=dict(options or {}),
        )
        backend.create_ledger(config)
        return cls(backend, name, signer=signer, **kwargs)

    @property
    def partitions(self) -> int:
        return self.config.partitions

    def _check_partition(self, partition: int) -> None:
        if not 0 <= partition < self.partitions:
            raise ConfigError(
                f"ledger {self.name!r} has partitions 0..{self.partitions - 1}, not {partition}"
            )

    # -- appending ---------------------------------------------------------------------
    def _targets(self, items: Sequence[AppendItem], partition: int | None) -> list[int]:
        """The partition of every item: the given one, or chosen by each item's key."""
        if partition is not None:
            return [partition] * len(items)
        count = self.partitions
        if count == 1:
            return [0] * len(items)
        rr = self._round_robin
        return [
            next(rr) % count if item.key is None else partition_for_key(item.key, count)
            for item in items
        ]

    def _plain_targets(self, count: int, partition: int | None) -> list[int]:
        """:meth:`_targets` of ``count`` items without keys (round-robin unless given)."""
        if partition is not None:
            return [partition] * count
        partitions = self.partitions
        if partitions == 1:
            return [0] * count
        if count < 1:
            return []
        # the next ``count`` numbers of the counter, mod ``partitions``, with C-level loops
        start = next(self._round_robin)
        drain(itertools.islice(self._round_robin, count - 1))
        return list(map(operator.mod, range(start, start + count), itertools.repeat(partitions)))

    def choose_partition(self, key: bytes | None) -> int:
        """Kafka's default partitioner for keyed entries; round-robin without a key."""
        if key is None:
            return next(self._round_robin) % self.partitions
        return partition_for_key(key, self.partitions)

    def append(
        self,
        payload: bytes,
        *,
        key: bytes | None = None,
        content_type: str | None = None,
        partition: int | None = None,
        subject: str | None = None,
    ) -> Receipt:
        """Append one entry and return its receipt."""
        return self.append_many(
            [AppendItem(payload, key, content_type, subject)], partition=partition
        )[0]

    def append_many(
        self,
        items: Iterable[bytes | AppendItem],
        *,
        partition: int | None = None,
        partitions: Sequence[int] | None = None,
        transaction: dict[str, Any] | None = None,
    ) -> list[Receipt]:
        """Append entries all or nothing (one backend transaction); receipts in input order.

        Without ``partition``, each item's key chooses its partition; ``partitions`` gives
        one partition per item instead. ``transaction`` is passed to the backend's
        ``append`` as keyword arguments (Kafka: ``consumer_offsets``, ``group_metadata``,
        ``extra_records`` written in the same transaction)."""
        normalized = [_normalize(item) for item in items]
        if partition is not None:
            self._check_partition(partition)
        if partitions is not None:
            if partition is not None or len(partitions) != len(normalized):
                raise ConfigError("partitions= needs one partition per item, without partition=")
            for p in set(partitions):
                self._check_partition(p)
        with self._lock:
            targets = (
                list(partitions) if partitions is not None else self._targets(normalized, partition)
            )
            for attempt in range(_MAX_RETRIES):
                try:
                    return self._append_once(normalized, targets, transaction)
                except WriteConflict:
                    self._writers.clear()  # another writer moved the heads: reload them
                    if attempt == _MAX_RETRIES - 1:
                        raise
        raise AssertionError("unreachable")

    def _writer(self, partition: int) -> _PartitionWriter:
        writer = self._writers.get(partition)
        if writer is None:
            writer = self._writers[partition] = _PartitionWriter(self.backend, self.name, partition)
        return writer

    def _append_once(
        self,
        items: Sequence[AppendItem],
        targets: Sequence[int],
        transaction: dict[str, Any] | None = None,
    ) -> list[Receipt]:
        staged = self._stage(items, targets, self._writers_view())
        return self._commit(staged, transaction)

    def forget_heads(self, partitions: Iterable[int] | None = None) -> None:
        """Re-read these partitions' heads (default all) from the backend before the next
        append: another writer may have extended them (a sequencer taking over partitions)."""
        with self._lock:
            parts = list(self._writers) if partitions is None else list(partitions)
            for p in parts:
                self._writers.pop(p, None)
            forget = getattr(self.backend, "forget_heads", None)
            if forget is not None:
                forget(self.name, parts)

    def _writers_view(self) -> dict[int, tuple[int, bytes, CompactRange]]:
        """Heads to build the next batch on: partition -> (size, prev leaf, tree)."""
        return {p: (w.size, w.prev_leaf, w.tree) for p, w in self._writers.items()}

    def _stage(
        self,
        items: Sequence[AppendItem] | Sequence[bytes],
        targets: Sequence[int],
        heads: dict[int, tuple[int, bytes, CompactRange]],
        *,
        plain: bool = False,
    ) -> _Staged:
        """Build the records and Merkle nodes of a batch on ``heads`` (updated in place).

        ``plain``: ``items`` are payload bytes (no key, default content type, no subject):
        the hot path of ``append_stream`` and ``append_many``, with no AppendItem per item."""
        timestamp = self._clock()
        first_target = targets[0] if targets else 0
        by_partition: dict[int, Sequence[int]]
        if targets.count(first_target) == len(targets):  # one partition: no grouping
            by_partition = {first_target: range(len(targets))} if targets else {}
        else:
            by_partition = _round_robin_groups(targets) or _groups(targets)
        batches: dict[int, AppendBatch] = {}
        leaves_of: dict[int, list[bytes]] = {}
        for part, indexes in by_partition.items():
            head = heads.get(part)
            if head is None:
                writer = self._writer(part)
                head = (writer.size, writer.prev_leaf, writer.tree)
            first, prev, tree = head
            tree = tree.copy()
            keys: list[bytes | None]
            if plain:
                if indexes == range(len(items)):
                    payloads = items
                elif isinstance(indexes, range):  # every step-th item (round-robin)
                    payloads = list(items[indexes.start : indexes.stop : indexes.step])
                else:
                    payloads = [items[i] for i in indexes]
                fields = [(payload, b"", DEFAULT_CONTENT_TYPE) for payload in payloads]
                keys = [None] * len(fields)
                subjects: list[str | None] = [None] * len(fields)
            else:
                appends: Sequence[AppendItem] = items  # type: ignore[assignment]
                fields = [
                    (
                        appends[i].payload,
                        appends[i].key or b"",
                        appends[i].content_type or DEFAULT_CONTENT_TYPE,
                    )
                    for i in indexes
                ]
                keys = [appends[i].key for i in indexes]
                subjects = [appends[i].subject for i in indexes]
            if self.encryption is not None:
                fields = self.encryption.encrypt_batch(part, first, fields, subjects)
            elif not plain and any(subject is not None for subject in subjects):
                raise ConfigError(
                    f"ledger {self.name!r} is opened without encryption: a subject needs it"
                )
            records, leaves = build_records(
                self.name, part, first, timestamp, self.producer, prev, fields
            )
            nodes = tree.append_runs(leaves)
            batches[part] = AppendBatch(first, records, keys, nodes)
            leaves_of[part] = leaves
            heads[part] = (first + len(records), leaves[-1], tree)
        return _Staged(batches, by_partition, leaves_of, {p: heads[p] for p in batches})

    def _commit(
        self,
        staged: _Staged,
        transaction: dict[str, Any] | None = None,
        *,
        receipts: bool = True,
    ) -> list[Receipt]:
        """Hand a staged batch to the backend; on success, move the writers' heads.
        ``receipts=False``: return none (a caller that does not use them, the sequencer)."""
        offsets = self.backend.append(self.name, staged.batches, **(transaction or {}))
        return self._advance(staged, offsets, receipts=receipts)

    def _advance(
        self, staged: _Staged, offsets: Mapping[int, list[int]], *, receipts: bool = True
    ) -> list[Receipt]:
        """A staged batch was stored at ``offsets``: move the writers' heads, give receipts."""
        for part, (size, prev, tree) in staged.heads.items():
            writer = self._writer(part)
            writer.size, writer.prev_leaf, writer.tree = size, prev, tree
        if not receipts:
            return []
        return list(itertools.chain.from_iterable(self._receipt_chunks(staged, offsets)))

    def _receipt_chunks(
        self, staged: _Staged, offsets: Mapping[int, Sequence[int]]
    ) -> Iterator[list[Receipt]]:
        """The receipts of a stored batch in input order, in lists of at most about
        ``_RECEIPT_CHUNK`` when the batch went to one partition in order or round-robin (the
        plain appends), else in one list. :meth:`append_stream` hands them out a chunk at a
        time: a caller that drops each receipt then never holds a whole batch of them, so
        they die young instead of surviving into the garbage collector's oldest generation,
        whose full collections (each scanning every object) cost more than building them."""
        order, n, name = staged.order, staged.count, self.name
        step = len(order)
        if step and all(
            isinstance(indexes, range) and indexes.step == step and indexes.start < step
            for indexes in order.values()
        ):
            # output position j*step + r is entry j of the partition whose indexes start at r
            heads = {
                indexes.start: (
                    part,
                    staged.batches[part].first_seq,
                    staged.leaves[part],
                    offsets[part],
                )
                for part, indexes in order.items()
            }
            rows = max(1, _RECEIPT_CHUNK // step)
            for j in range(0, -(-n // step), rows):
                chunk: list[Receipt] = [None] * min(rows * step, n - j * step)  # type: ignore[list-item]
                for r, (part, first, leaves, offs) in heads.items():
                    chunk[r::step] = _receipts(
                        name, part, first + j, leaves[j : j + rows], offs[j : j + rows]
                    )
                yield chunk
            return
        out: list[Receipt] = [None] * n  # type: ignore[list-item]
        for part, indexes in order.items():  # keyed targets: any order
            first = staged.batches[part].first_seq
            built = _receipts(name, part, first, staged.leaves[part], offsets[part])
            drain(map(out.__setitem__, indexes, built))
        yield out

    def append_stream(
        self,
        items: Iterable[bytes | AppendItem],
        *,
        batch_size: int = 1000,
        partition: int | None = None,
    ) -> Iterator[Receipt]:
        """Append a long stream in batches of ``batch_size``, each batch atomic.

        While the backend writes one batch (a Kafka transaction commits, SQLite syncs), the
        next one waits right behind it and the one after is built, so hashing overlaps I/O
        and the backend never waits for this thread. Receipts come in input order once
        their batch is stored. If a batch fails, the error is raised and nothing after it
        is written; the batches before it stay written (their receipts were yielded). A
        caller that stops early gets no receipts for the batch being written then, which
        may still land; none after it is written."""
        if batch_size < 1:
            raise ConfigError("batch_size must be at least 1")
        if partition is not None:
            self._check_partition(partition)
        halt = threading.Event()  # set: batches not started yet are not stored

        def store(batches: dict[int, AppendBatch]) -> Mapping[int, list[int]]:
            if halt.is_set():
                raise _NotStored
            try:
                return self.backend.append(self.name, batches)
            except BaseException:
                halt.set()  # the batch queued behind this one was built on its heads
                raise

        with self._lock, ThreadPoolExecutor(1, thread_name_prefix="streamledger-append") as pool:
            heads = self._writers_view()
            # Two batches in the pool at most: the one being stored and the next, queued
            # behind it; this thread gives the first one's receipts (and moves the heads),
            # then builds the batch after the next.
            in_flight: deque[tuple[_Staged, Future[Mapping[int, list[int]]]]] = deque()
            try:
                for chunk in _chunks(items, batch_size):
                    if set(map(type, chunk)) == {bytes}:  # plain payloads (exactly bytes)
                        targets = self._plain_targets(len(chunk), partition)
                        staged = self._stage(chunk, targets, heads, plain=True)
                    else:
                        normalized = [_normalize(item) for item in chunk]
                        targets = self._targets(normalized, partition)
                        staged = self._stage(normalized, targets, heads)
                    in_flight.append((staged, pool.submit(store, staged.batches)))
                    if len(in_flight) == 2:
                        yield from self._streamed(*in_flight.popleft())
                while in_flight:
                    yield from self._streamed(*in_flight.popleft())
            finally:
                halt.set()  # an error, or the caller stopped: store nothing more

    def _streamed(
        self, staged: _Staged, stored: Future[Mapping[int, list[int]]]
    ) -> Iterator[Receipt]:
        """:meth:`_advance` for :meth:`append_stream`: the same receipts, built a chunk at a
        time as the caller takes them (see :meth:`_receipt_chunks`)."""
        offsets = stored.result()
        self._advance(staged, offsets, receipts=False)
        for chunk in self._receipt_chunks(staged, offsets):
            yield from chunk

    # -- reading -----------------------------------------------------------------------
    def size(self, partition: int) -> int:
        self._check_partition(partition)
        return self.backend.head(self.name, partition).size

    def read(self, partition: int = 0, start: int = 0, end: int | None = None) -> Iterator[Entry]:
        """Decoded entries of seqs ``[start, end)``. Reading does not verify: use verify()."""
        self._check_partition(partition)
        for record in self.backend.read(self.name, partition, start, end):
            yield decode_record(record.value)

    def read_decrypted(
        self, partition: int = 0, start: int = 0, end: int | None = None
    ) -> Iterator[DecryptedEntry]:
        """Like :meth:`read`, with each payload decrypted by the ``encryption`` keys.

        Raises :class:`~streamledger.crypto.DecryptionError` naming the entry when one cannot
        be decrypted (wrong key, altered or moved ciphertext, erased subject)."""
        if self.encryption is None:
            raise ConfigError(f"ledger {self.name!r} is opened without encryption keys")
        for entry in self.read(partition, start, end):
            yield self.encryption.decrypt(entry)

    # -- checkpoints -------------------------------------------------------------------
    def _get_node(self, partition: int) -> Callable[[int, int], bytes]:
        def get_node(level: int, index: int) -> bytes:
            return self.backend.get_node(self.name, partition, level, index)

        return get_node

    def checkpoint(
        self, signer: SigningKey | None = None, *, partitions: Iterable[int] | None = None
    ) -> list[str]:
        """Sign a checkpoint for every partition (or those of ``partitions``) that grew since
        its last one.

        Returns the latest signed note of every such partition (new or existing)."""
        signer = signer or self.signer
        if signer is None:
            raise ConfigError(
                f"ledger {self.name!r} has no signing key: pass one (--signing-key NAME)"
            )
        notes = []
        for partition in range(self.partitions) if partitions is None else partitions:
            self._check_partition(partition)
            size = self.backend.head(self.name, partition).size
            existing = self.backend.checkpoints(self.name, partition)
            if existing:
                latest = Checkpoint.parse(existing[-1].split("\n\n", 1)[0] + "\n")
                if latest.tree_size == size:
                    notes.append(existing[-1])
                    continue
            cp = Checkpoint(
                self.config.checkpoint_origin(partition),
                size,
                root_hash(size, self._get_node(partition)),
            )
            note = sign_checkpoint(cp, signer)
            self.backend.add_checkpoint(self.name, partition, size, note)
            notes.append(note)
        return notes

    def default_trust(self) -> TrustPolicy | None:
        """Trust the verifier key recorded at ``init`` (a convenience, not an audit)."""
        if not self.config.log_vkey:
            return None
        if self._default_trust is None:  # self.config is fixed for this object
            self._default_trust = TrustPolicy((VerifierKey.parse(self.config.log_vkey),))
        return self._default_trust

    def _latest_trusted_checkpoint(
        self, partition: int, trust: TrustPolicy | None, min_size: int
    ) -> tuple[str, Checkpoint]:
        """The latest checkpoint note that verifies under ``trust`` (default: the key recorded
        at init) and the checkpoint it signs, if it covers ``min_size`` entries."""
        trust = trust or self.default_trust()
        origin = self.config.checkpoint_origin(partition)
        notes = self.checkpoint_notes(partition, trust.witness_keys if trust else None)
        for note in reversed(notes):
            try:
                cp = (
                    self._checked_note(note, origin, trust)
                    if trust
                    else Checkpoint.parse(note.split("\n\n", 1)[0] + "\n")
                )
            except Exception:  # noqa: BLE001 - an unusable note is simply not a candidate
                continue
            if cp.tree_size >= min_size:
                return note, cp
            break
        raise ProofError(
            f"no signed checkpoint of {self.name!r} partition {partition} covers "
            f"{min_size} entries yet: run 'streamledger checkpoint {self.name}' first"
        )

    def _checked_note(self, note: str, origin: str, trust: TrustPolicy) -> Checkpoint:
        """``check_checkpoint_note(note, origin, trust)``, remembered for notes that passed.

        The outcome is a pure function of the note's exact text, the origin and the trust
        policy (keys compare by name, type and key bytes), so a note already verified under
        the same policy is not verified again: each proof would otherwise re-check the same
        Ed25519 signature. Only successes are kept, a bounded number of them; a note that
        failed is checked again every time."""
        key = (note, origin, trust)
        cp = self._verified_notes.get(key)
        if cp is None:
            cp = check_checkpoint_note(note, origin, trust)
            with self._verified_lock:
                if len(self._verified_notes) >= _VERIFIED_NOTES:
                    self._verified_notes.pop(next(iter(self._verified_notes)))
                self._verified_notes[key] = cp
        return cp

    # -- witnesses ---------------------------------------------------------------------
    def _documents(self, kind: str) -> list[tuple[str, bytes]]:
        documents = getattr(self.backend, "documents", None)
        if documents is None:
            return []
        return documents(self.name, kind)

    def alerts(self, partition: int | None = None) -> list[WitnessAlert]:
        """Witness alerts (refused checkpoints with their evidence), oldest first.
        Documents that are not well-formed alerts of this ledger are skipped."""
        found = []
        for _, value in self._documents("alerts"):
            try:
                alert = WitnessAlert.from_bytes(value)
            except FormatError:
                continue
            if alert.ledger == self.name and partition in (None, alert.partition):
                found.append(alert)
        return found

    def _cosignature_index(
        self, alerts: Sequence[WitnessAlert] = ()
    ) -> dict[str, list[NoteSignature]]:
        docs: list[bytes | str] = [value for _, value in self._documents("cosignatures")]
        docs.extend(a.cosigned for a in alerts if a.cosigned)
        return cosignature_index(docs)

    def checkpoint_notes(
        self,
        partition: int,
        witness_keys: Sequence[VerifierKey] | None = None,
        *,
        index: dict[str, list[NoteSignature]] | None = None,
    ) -> list[str]:
        """The partition's signed checkpoint notes, oldest first, each with the published
        witness cosignatures of the same checkpoint body appended.

        With ``witness_keys`` only cosignatures by those keys that verify are added (forged
        ones are dropped); without, every published cosignature line is added."""
        self._check_partition(partition)
        if index is None:
            index = self._cosignature_index()
        notes = self.backend.checkpoints(self.name, partition)
        if not index:
            return notes
        return [merge_cosignatures(note, index, witness_keys) for note in notes]

    def _alert_findings(
        self, report: PartitionReport, alerts: Sequence[WitnessAlert], trust: TrustPolicy
    ) -> None:
        """Turn witness alerts into ``checkpoint_fork`` findings when the log key signed both
        checkpoints and the verification corroborates the conflict."""
        origin = self.config.checkpoint_origin(report.partition)

        def body(note: str) -> str:
            return note.split("\n\n", 1)[0]

        implicated = {
            body(note)
            for f in report.findings
            for key in ("note", "checkpoint")
            if isinstance(note := f.evidence.get(key), str)
        }
        forks: dict[tuple[str, str], tuple[WitnessAlert, int, int, list[str]]] = {}
        for alert in alerts:
            if not alert.cosigned:
                continue
            try:
                old = verify_checkpoint(alert.cosigned, list(trust.log_keys), origin=origin)
                new = verify_checkpoint(alert.refused, list(trust.log_keys), origin=origin)
            except StreamledgerError:
                report.warnings.append(
                    f"a witness alert by {alert.witness_name} is not backed by two checkpoints "
                    "signed by the trusted log key; ignored"
                )
                continue
            a, b = old.checkpoint, new.checkpoint
            same_size = a.tree_size == b.tree_size and a.root_hash != b.root_hash
            if not same_size and not ({body(alert.cosigned), body(alert.refused)} & implicated):
                report.warnings.append(
                    f"witness {alert.witness_name} refused the checkpoint of size {b.tree_size} "
                    f"({alert.reason}), but this ledger's data agrees with both checkpoints"
                )
                continue
            pair = (body(alert.cosigned), body(alert.refused))
            if pair in forks:
                forks[pair][3].append(alert.witness_name)
            else:
                forks[pair] = (alert, a.tree_size, b.tree_size, [alert.witness_name])
        # One finding per conflicting pair of checkpoints, naming every witness that refused.
        for alert, old_size, new_size, witnesses in forks.values():
            report.findings.append(
                Finding(
                    "checkpoint_fork",
                    self.name,
                    report.partition,
                    new_size - 1 if new_size else None,
                    None,
                    f"the log key signed a checkpoint of size {new_size} that does not extend "
                    f"the checkpoint of size {old_size} the witnesses cosigned "
                    f"({alert.reason}; refused by {', '.join(witnesses)})",
                    {
                        "witnesses": witnesses,
                        "cosigned": alert.cosigned,
                        "refused": alert.refused,
                    },
                )
            )

    # -- proofs ------------------------------------------------------------------------
    def _proof_nodes(self, partition: int, ids: list[tuple[int, int]]) -> NodeGetter:
        """Every node of ``ids`` fetched from the backend in one batch (one query on SQLite
        and the Kafka node cache), as a getter for the proof builders."""
        found = get_nodes(self.backend, self.name, partition, ids)
        return node_getter(found, self._get_node(partition))

    def _entry_record(self, partition: int, seq: int) -> bytes | None:
        with contextlib.closing(iter(self.backend.read(self.name, partition, seq, seq + 1))) as it:
            record = next(it, None)
        return None if record is None else record.value

    def prove_inclusion(
        self, partition: int, seq: int, *, trust: TrustPolicy | None = None
    ) -> InclusionProof:
        """Inclusion proof of entry ``seq`` against the latest signed checkpoint covering it."""
        self._check_partition(partition)
        note, cp = self._latest_trusted_checkpoint(partition, trust, seq + 1)
        record = self._entry_record(partition, seq)
        if record is None:
            raise ProofError(f"{self.name!r} partition {partition} has no entry seq {seq}")
        entry = decode_record(record)
        get_node = self._proof_nodes(partition, inclusion_node_ids(seq, cp.tree_size))
        return InclusionProof(
            ledger=self.name,
            partition=partition,
            index=seq,
            tree_size=cp.tree_size,
            leaf_hash=entry.leaf_hash,
            root_hash=cp.root_hash,
            proof=inclusion_proof(seq, cp.tree_size, get_node),
            entry=entry.header_bytes,
            checkpoint=note,
        )

    def prove_consistency(
        self, partition: int, old_size: int, new_size: int | None = None
    ) -> ConsistencyProof:
        """Consistency proof between two tree sizes (default new size: the current size)."""
        self._check_partition(partition)
        current = self.backend.head(self.name, partition).size
        new = current if new_size is None else new_size
        if new > current:
            raise ProofError(
                f"{self.name!r} partition {partition} has {current} entries, cannot prove "
                f"size {new}"
            )
        if old_size > new:
            raise ProofError(f"old size {old_size} is larger than new size {new}")
        get_node = self._proof_nodes(partition, consistency_node_ids(old_size, new))
        # Only notes whose text holds the size as a line can be checkpoints of that size (the
        # size is the second line of the body): parse those, not every note of the partition.
        wanted = {old_size: f"\n{old_size}\n", new: f"\n{new}\n"}
        by_size = {}
        for note in self.backend.checkpoints(self.name, partition):
            if not any(line in note for line in wanted.values()):
                continue
            try:
                by_size[Checkpoint.parse(note.split("\n\n", 1)[0] + "\n").tree_size] = note
            except FormatError:
                continue
        return ConsistencyProof(
            ledger=self.name,
            partition=partition,
            old_size=old_size,
            new_size=new,
            old_root=root_hash(old_size, get_node),
            new_root=root_hash(new, get_node),
            proof=consistency_proof(old_size, new, get_node),
            old_checkpoint=by_size.get(old_size),
            new_checkpoint=by_size.get(new),
        )

    # -- verification ------------------------------------------------------------------
    def verify(
        self,
        trust: TrustPolicy | None = None,
        *,
        partitions: Iterable[int] | None = None,
        progress: Callable[[int, int], None] | None = None,
        workers: int = 1,
        opener: Callable[[], Backend] | None = None,
    ) -> LedgerReport:
        """Verify partitions (all by default) against ``trust`` (default: the init key).

        ``progress(partition, entries_read)`` is called every 10,000 records. With
        ``workers > 1`` and an ``opener`` (a picklable function returning a new backend on the
        same store, e.g. ``functools.partial(SQLiteBackend, path)``), partitions are verified
        in parallel processes; progress is then reported once per finished partition."""
        trust = trust or self.default_trust()
        wanted = list(partitions) if partitions is not None else list(range(self.partitions))
        for partition in wanted:
            self._check_partition(partition)
        if workers > 1 and opener is not None and len(wanted) > 1:
            return self._verify_parallel(trust, wanted, progress, workers, opener)
        reports = []
        alerts = self.alerts() if trust is not None else []
        index = self._cosignature_index(alerts)
        opened: dict[int, Iterable[Any]] = {}
        for i, partition in enumerate(wanted):
            if partition in opened:
                records = opened.pop(partition)
            else:
                records = self.backend.scan(self.name, partition)
            if i + 1 < len(wanted) and wanted[i + 1] not in opened:
                # open the next partition's scan now: a backend that reads ahead (Kafka)
                # fetches it while this one is verified
                opened[wanted[i + 1]] = self.backend.scan(self.name, wanted[i + 1])
            if progress is not None:
                records = _Counting(records, partition, progress)
            notes = self.checkpoint_notes(
                partition, trust.witness_keys if trust else None, index=index
            )
            mine = [a for a in alerts if a.partition == partition]
            # Checkpoints a witness holds as evidence take part in the comparison too: a
            # rewritten log no longer matches the one the witnesses cosigned.
            known = {n.split("\n\n", 1)[0] for n in notes}
            for alert in mine:
                for note in (alert.cosigned, alert.refused):
                    if note and note.split("\n\n", 1)[0] not in known:
                        known.add(note.split("\n\n", 1)[0])
                        merged = merge_cosignatures(
                            note, index, trust.witness_keys if trust else None
                        )
                        notes.append(merged)
            report = verify_partition(
                self.name,
                partition,
                self.config.checkpoint_origin(partition),
                records,
                notes,
                trust,
                self._get_node(partition),
            )
            if trust is not None and mine:
                self._alert_findings(report, mine, trust)
            reports.append(report)
        if any(k.startswith("consortium.") for k in self.config.options):
            from streamledger.consortium.verify import check_ledger  # signers, membership

            check_ledger(self, reports)
        return LedgerReport(self.name, reports)

    def _verify_parallel(
        self,
        trust: TrustPolicy | None,
        wanted: list[int],
        progress: Callable[[int, int], None] | None,
        workers: int,
        opener: Callable[[], Backend],
    ) -> LedgerReport:
        # spawn, not fork: a forked child would inherit librdkafka's threads half-copied.
        context = multiprocessing.get_context("spawn")
        by_partition: dict[int, PartitionReport] = {}
        with ProcessPoolExecutor(min(workers, len(wanted)), mp_context=context) as pool:
            futures = {
                pool.submit(_verify_in_worker, opener, self.name, partition, trust): partition
                for partition in wanted
            }
            for future in as_completed(futures):
                report = future.result()
                by_partition[report.partition] = report
                if progress is not None:
                    progress(report.partition, report.entries_checked)
        return LedgerReport(self.name, [by_partition[p] for p in wanted])


def _verify_in_worker(
    opener: Callable[[], Backend], ledger: str, partition: int, trust: TrustPolicy | None
) -> PartitionReport:
    backend = opener()
    try:
        return Ledger(backend, ledger).verify(trust, partitions=[partition]).partitions[0]
    finally:
        backend.close()


def append_atomically(
    appends: Sequence[tuple[Ledger, Iterable[bytes | AppendItem]]],
    *,
    transaction: Mapping[str, Any] | None = None,
) -> list[list[Receipt]]:
    """Append to several ledgers all or nothing, in ONE backend transaction.

    ``appends`` is a list of ``(ledger, items)``; every ledger is opened on the same backend
    object, each at most once, and each item's key chooses its partition as in
    :meth:`Ledger.append_many`. Returns one list of receipts per ledger, in input order.
    ``transaction`` goes to the backend like ``append_many``'s (Kafka: ``consumer_offsets``,
    ``group_metadata``, ``extra_records``), so a consumer-to-ledgers pipeline can write all
    its outputs and commit its input offsets exactly once.

    Needs a backend that can write several ledgers in one transaction
    (:meth:`KafkaBackend.append_ledgers <streamledger.backends.kafka.KafkaBackend.append_ledgers>`):
    the transaction is the first ledger's, and this process must be the only writer of the
    other ledgers. With a single ledger it is ``append_many``. On ``WriteConflict`` the heads
    of every ledger are re-read and the whole batch is built again (up to 5 times)."""
    if not appends:
        return []
    ledgers = [ledger for ledger, _ in appends]
    backend = ledgers[0].backend
    if len({id(ledger) for ledger in ledgers}) != len(ledgers) or len(
        {ledger.name for ledger in ledgers}
    ) != len(ledgers):
        raise ConfigError("append_atomically: each ledger may appear only once")
    if any(ledger.backend is not backend for ledger in ledgers):
        raise ConfigError("append_atomically: all ledgers must be opened on the same backend")
    normalized = [[_normalize(item) for item in items] for _, items in appends]
    if len(appends) == 1:
        return [ledgers[0].append_many(normalized[0], transaction=dict(transaction or {}))]
    multi = getattr(backend, "append_ledgers", None)
    if multi is None:
        raise ConfigError(
            f"{type(backend).__name__} cannot append to several ledgers in one transaction"
        )
    with contextlib.ExitStack() as stack:
        for ledger in sorted(ledgers, key=lambda led: led.name):  # one lock order
            stack.enter_context(ledger._lock)
        targets = [
            led._targets(items, None) for led, items in zip(ledgers, normalized, strict=True)
        ]
        for attempt in range(_MAX_RETRIES):
            staged = [
                led._stage(items, parts, led._writers_view())
                for led, items, parts in zip(ledgers, normalized, targets, strict=True)
            ]
            try:
                offsets = multi(
                    {led.name: st.batches for led, st in zip(ledgers, staged, strict=True)},
                    **dict(transaction or {}),
                )
            except WriteConflict:
                for led in ledgers:  # someone moved a head: reload them all
                    led._writers.clear()
                if attempt == _MAX_RETRIES - 1:
                    raise
                continue
            return [
                led._advance(st, offsets.get(led.name, {}))
                for led, st in zip(ledgers, staged, strict=True)
            ]
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class _Staged:
    """A built batch: per-partition backend batches, which input items went to each
    partition (in order: the k-th of them got seq ``first_seq + k``) and their leaf hashes,
    and the new heads."""

    batches: dict[int, AppendBatch]
    order: dict[int, Sequence[int]]
    leaves: dict[int, list[bytes]]
    heads: dict[int, tuple[int, bytes, CompactRange]]

    @property
    def count(self) -> int:
        return sum(len(indexes) for indexes in self.order.values())


def _groups(targets: Sequence[int]) -> dict[int, Sequence[int]]:
    """partition -> the indexes of ``targets`` naming it, in order (partitions in order of
    first appearance)."""
    groups: dict[int, list[int]] = {}
    for index, part in enumerate(targets):
        groups.setdefault(part, []).append(index)
    return dict(groups)


def _round_robin_groups(targets: Sequence[int]) -> dict[int, Sequence[int]] | None:
    """:func:`_groups` as ranges when ``targets`` repeats its first ``period`` (distinct)
    partitions (round-robin), checked with C-level compares; None otherwise."""
    n = len(targets)
    period = len(set(targets))
    head = list(targets[:period])
    if len(set(head)) != period or list(targets) != (head * (n // period + 1))[:n]:
        return None
    return {part: range(j, n, period) for j, part in enumerate(head)}


#: Receipts per chunk of :meth:`Ledger.append_stream` (under the garbage collector's
#: youngest-generation threshold, 700 allocations).
_RECEIPT_CHUNK = 510


def _receipts(
    ledger: str, partition: int, first_seq: int, leaves: Sequence[bytes], offsets: Sequence[int]
) -> list[Receipt]:
    """The receipts of seqs ``first_seq, first_seq+1, ...`` of one partition, equal to
    ``[Receipt(ledger, partition, first_seq + k, leaves[k], offsets[k]) ...]`` but built
    field by field with C-level loops (the slots' setters; the dataclass ``__init__`` of a
    frozen class costs about 0.4 us more per receipt)."""
    n = len(leaves)
    if len(offsets) != n:
        raise ValueError(f"{n} leaves but {len(offsets)} offsets")
    out: list[Receipt] = list(map(object.__new__, itertools.repeat(Receipt, n)))
    drain(map(_SET_LEDGER, out, itertools.repeat(ledger, n)))
    drain(map(_SET_PARTITION, out, itertools.repeat(partition, n)))
    drain(map(_SET_SEQ, out, range(first_seq, first_seq + n)))
    drain(map(_SET_LEAF, out, leaves))
    drain(map(_SET_OFFSET, out, offsets))
    return out


_SET_LEDGER = Receipt.ledger.__set__  # type: ignore[attr-defined]
_SET_PARTITION = Receipt.partition.__set__  # type: ignore[attr-defined]
_SET_SEQ = Receipt.seq.__set__  # type: ignore[attr-defined]
_SET_LEAF = Receipt.leaf_hash.__set__  # type: ignore[attr-defined]
_SET_OFFSET = Receipt.offset.__set__  # type: ignore[attr-defined]


def _normalize(item: bytes | AppendItem) -> AppendItem:
    kind = type(item)
    if kind is bytes:  # the hot path: plain payloads
        return AppendItem(item)  # type: ignore[arg-type]
    if kind is AppendItem:
        return item  # type: ignore[return-value]
    if isinstance(item, AppendItem):
        return item
    if isinstance(item, bytes | bytearray | memoryview):
        return AppendItem(bytes(item))
    raise TypeError(f"payloads must be bytes or AppendItem, not {type(item).__name__}")


class _NotStored(Exception):
    """A batch of :meth:`Ledger.append_stream` skipped after an earlier one failed."""


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


class _Counting:
    """The records of a scan, calling ``progress(partition, count)`` each time the count
    passes a multiple of 10,000, and once at the end. A scan's ``take_batch`` (Kafka's
    read-ahead: the verifier's fast path) is passed through, counted the same way."""

    def __init__(
        self, records: Iterable[Any], partition: int, progress: Callable[[int, int], None]
    ) -> None:
        self._it = iter(records)
        self._partition = partition
        self._progress = progress
        self._count = 0
        self._ended = False
        self._take = getattr(self._it, "take_batch", None)
        if self._take is not None:
            self.take_batch = self._take_batch

    def __iter__(self) -> _Counting:
        return self

    def __next__(self) -> Any:
        try:
            record = next(self._it)
        except StopIteration:
            self._end()
            raise
        self._add(1)
        return record

    def _take_batch(self, limit: int) -> tuple[list[int], list[bytes]]:
        assert self._take is not None
        offsets, values = self._take(limit)
        if values:
            self._add(len(values))
        else:
            self._end()
        return offsets, values

    def _add(self, n: int) -> None:
        before = self._count
        self._count += n
        if self._count // 10_000 > before // 10_000:
            self._progress(self._partition, self._count)

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self._progress(self._partition, self._count)
