"""Verification of one partition's log from what a store returns, trusting none of it.

The verifier reads records in storage order, re-hashes every header and payload, follows
the hash chain, rebuilds the RFC 6962 tree in O(log n) memory and compares it with every
signed checkpoint. It never opens a store itself: callers pass an iterable of records, the
checkpoint notes, and optionally a ``get_node`` function whose (untrusted) answers are only
used to say *where* a signed root was broken, never to decide *whether* it was.

Finding kinds (``Finding.kind``):

=====================  ================================================================
malformed              bytes that are not an entry (garbage, truncated header)
unknown_version        an entry of a format version this code does not read
foreign                an entry of another ledger or partition (copied in)
payload_modified       payload does not hash to the payload hash in its header
payload_missing        header present, payload bytes absent
header_modified        a header was altered (its successor or a checkpoint no longer matches)
missing                sequence numbers skipped: entries deleted
duplicate              an entry stored again (same sequence number and bytes)
reordered              two entries stored out of order
inserted               an entry that does not belong in the chain (forged or injected)
truncated              the log ends before the size a signed checkpoint vouches for
checkpoint_mismatch    the rebuilt tree differs from a signed root: history was rewritten
checkpoint_fork        two trusted checkpoints that cannot both describe this log
untrusted_checkpoint   a checkpoint not validly signed by a trusted key
bad_checkpoint         a checkpoint note that does not parse or names another log
witness_shortfall      a checkpoint without the required number of witness cosignatures
no_trusted_checkpoint  (when the trust policy requires one) entries no trusted checkpoint covers
=====================  ================================================================

Each act of tampering gives one finding, at the sequence number where it applies (for
inserted, malformed, unknown-version and foreign records: the seq the chain expected there;
for checkpoint findings: the last seq the checkpoint covers) and the record's storage offset.
The verifier repairs its view after a finding when the log itself says what the genuine
hash was (a successor's ``prev_hash``), so later signed roots are still compared; when it
cannot, later checkpoints are skipped with a warning instead of producing follow-on findings.

Inherent limits: without a checkpoint covering it, a change to the newest entry's header, the
deletion of the newest entries, or a well-formed entry appended after the last one cannot be
told from an honest log (the chain has no successor to vouch for it); sign checkpoints often.
A rewrite of history is caught only by signed checkpoints. Telling *which* of two conflicting
records is genuine at the tail uses the store's Merkle nodes as a hint only.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import itertools
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, overload

from streamledger.core import _accel
from streamledger.core.checkpoint import Checkpoint, VerifiedCheckpoint, verify_checkpoint
from streamledger.core.entry import (
    ZERO_HASH,
    Entry,
    StoredRecord,
    chain_fields,
    decode_record,
    header_prefix,
)
from streamledger.core.merkle import CompactRange
from streamledger.core.note import VerifierKey
from streamledger.errors import (
    FormatError,
    StreamledgerError,
    UnknownVersionError,
    VerificationError,
)

NodeGetter = Callable[[int, int], bytes]


@dataclass(frozen=True)
class Finding:
    """One problem found, with where it is."""

    kind: str
    ledger: str
    partition: int
    seq: int | None
    offset: int | None
    detail: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        if not self.evidence:
            data.pop("evidence")
        return data

    def __str__(self) -> str:
        where = f"{self.ledger}/{self.partition}"
        if self.seq is not None:
            where += f" seq {self.seq}"
        if self.offset is not None:
            where += f" (offset {self.offset})"
        return f"{self.kind}: {where}: {self.detail}"


@dataclass
class PartitionReport:
    """What verifying one partition found."""

    ledger: str
    partition: int
    entries_checked: int = 0
    tree_size: int = 0
    root_hash: str = ""
    checkpoints_verified: int = 0
    latest_checkpoint_size: int | None = None
    findings: list[Finding] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings

    def to_json(self) -> dict[str, Any]:
        return {
            "partition": self.partition,
            "ok": self.ok,
            "entries_checked": self.entries_checked,
            "tree_size": self.tree_size,
            "root_hash": self.root_hash,
            "checkpoints_verified": self.checkpoints_verified,
            "latest_checkpoint_size": self.latest_checkpoint_size,
            "findings": [f.to_json() for f in self.findings],
            "warnings": list(self.warnings),
        }


@dataclass(frozen=True)
class TrustPolicy:
    """Which keys a verifier trusts: the log's keys, witness keys, and how many witnesses."""

    log_keys: tuple[VerifierKey, ...]
    witness_keys: tuple[VerifierKey, ...] = ()
    required_witnesses: int = 0
    #: A partition with entries but no checkpoint signed by these keys is a finding, not a
    #: warning: an auditor who names the key must not pass a log that key never signed (a
    #: topic copied with a recomputed chain, or a log whose checkpoints were removed).
    require_checkpoint: bool = False


@dataclass(frozen=True)
class _TrustedCheckpoint:
    tree_size: int
    root_hash: bytes
    note: str


class _Item:
    __slots__ = ("record", "offset", "entry", "leaf", "error")

    def __init__(self, record: StoredRecord) -> None:
        self.record = record
        self.offset = record.offset
        self.entry: Entry | None = None
        self.leaf = b""
        self.error: FormatError | None = None
        try:
            self.entry = decode_record(record.value)
            self.leaf = hashlib.sha256(b"\x00" + self.entry.header_bytes).digest()
        except FormatError as exc:
            self.error = exc


@overload
def check_checkpoint_note(
    note: str, origin: str, trust: TrustPolicy, full: Literal[False] = False
) -> Checkpoint: ...


@overload
def check_checkpoint_note(
    note: str, origin: str, trust: TrustPolicy, full: Literal[True]
) -> VerifiedCheckpoint: ...


def check_checkpoint_note(
    note: str, origin: str, trust: TrustPolicy, full: bool = False
) -> Checkpoint | VerifiedCheckpoint:
    """Verify a signed checkpoint note against ``trust`` and the expected ``origin``.

    Returns the checkpoint (with ``full``: the :class:`VerifiedCheckpoint`, which names the
    witnesses whose cosignatures verified). Raises :class:`VerificationError` (signature or
    witness problems) or :class:`FormatError` (unparseable, wrong origin).
    """
    if not trust.log_keys:
        raise VerificationError("no trusted log key was given")
    verified = verify_checkpoint(
        note, list(trust.log_keys), trust.witness_keys, trust.required_witnesses
    )
    if verified.checkpoint.origin != origin:
        raise FormatError(
            f"checkpoint origin {verified.checkpoint.origin!r} is not this log's origin {origin!r}"
        )
    return verified if full else verified.checkpoint


class _Records:
    """The records still to verify: those pushed back (``back``, last one next) before the
    rest of the store's iterator ``it``. Pushing back never nests iterators.

    ``take_batch`` is the iterator's own ``take_batch(limit) -> (offsets, values)`` if it
    has one (Kafka's read-ahead): the next records as two lists, without a StoredRecord
    each, for the native fast path."""

    __slots__ = ("it", "back", "take_batch")

    def __init__(self, records: Iterable[StoredRecord]) -> None:
        self.it: Iterator[StoredRecord] = iter(records)
        self.back: list[StoredRecord] = []
        self.take_batch: Callable[[int], tuple[list[int], list[bytes]]] | None = getattr(
            self.it, "take_batch", None
        )

    def __iter__(self) -> _Records:
        return self

    def __next__(self) -> StoredRecord:
        return self.back.pop() if self.back else next(self.it)

    def push_front(self, records: Sequence[StoredRecord]) -> None:
        """Make ``records`` (in order) the next ones."""
        self.back.extend(reversed(records))


#: Records per native verification call: starts small after a finding, doubles while honest.
_CHUNK_MIN = 64
_CHUNK_MAX = 4096
#: ... from a source with take_batch: its batches bound the bytes, fewer calls mean fewer
#: waits for the GIL (the read-ahead thread holds it while it unpacks a batch)
_CHUNK_MAX_BATCHED = 65536
_U64_END = 1 << 64


class PartitionVerifier:
    """Streaming verifier of one partition. Use :func:`verify_partition`."""

    def __init__(
        self,
        ledger: str,
        partition: int,
        origin: str,
        trust: TrustPolicy | None,
        get_node: NodeGetter | None = None,
    ) -> None:
        self.ledger = ledger
        self.partition = partition
        self.origin = origin
        self.trust = trust
        self.get_node = get_node
        self.report = PartitionReport(ledger, partition)
        self.tree = CompactRange()
        self.expected = 0
        self.prev_leaf = ZERO_HASH
        self.prev_offset: int | None = None
        self.diverged = False
        self.checkpoints: list[_TrustedCheckpoint] = []
        self._cp_index = 0
        self._skipped_checkpoints = 0
        # Other roots of forked sizes (already reported as checkpoint_fork): the log may match
        # either side of a fork without a second finding.
        self._fork_roots: dict[int, set[bytes]] = {}
        # The tree before the last append (O(log n)): lets a finding put the genuine hash of
        # the newest entry back, so later signed roots can still be compared.
        self._prefix: CompactRange | None = None
        # (checkpoint, signed tree, signed leaf, offset) when only the newest entry
        # differs from a checkpoint: resolved by the next record (see _checkpoint_mismatch).
        self._pending: tuple[_TrustedCheckpoint, CompactRange, bytes, int | None] | None = None

    # -- findings --------------------------------------------------------------------
    def _find(
        self, kind: str, seq: int | None, offset: int | None, detail: str, **evidence: Any
    ) -> None:
        self.report.findings.append(
            Finding(kind, self.ledger, self.partition, seq, offset, detail, evidence)
        )

    # -- checkpoints -----------------------------------------------------------------
    def load_checkpoints(self, notes: Sequence[str]) -> None:
        if self.trust is None:
            if notes:
                self.report.warnings.append(
                    f"{len(notes)} checkpoint(s) not checked: no trusted log key given"
                )
            return
        by_size: dict[int, _TrustedCheckpoint] = {}
        trust = self.trust
        for number, note in enumerate(notes):
            try:
                # Log signature first (quorum 0), then the witness quorum, so a shortfall is
                # reported as such, naming the checkpoint and who did cosign it.
                verified = check_checkpoint_note(
                    note, self.origin, TrustPolicy(trust.log_keys, trust.witness_keys, 0), True
                )
            except FormatError as exc:
                self._find("bad_checkpoint", None, None, f"checkpoint #{number}: {exc}")
                continue
            except VerificationError as exc:
                seq = _claimed_last_seq(note)
                self._find(
                    "untrusted_checkpoint", seq, None, f"checkpoint #{number}: {exc}", note=note
                )
                continue
            cp = verified.checkpoint
            cosigners = sorted(verified.cosigners)
            if len(cosigners) < trust.required_witnesses:
                got = len(cosigners)
                self._find(
                    "witness_shortfall",
                    cp.tree_size - 1 if cp.tree_size else None,
                    None,
                    f"checkpoint of size {cp.tree_size} (checkpoint #{number}) has {got} valid "
                    f"witness cosignature{'' if got == 1 else 's'}"
                    + (f" (by {', '.join(cosigners)})" if cosigners else "")
                    + f", {trust.required_witnesses} required: not accepted",
                    note=note,
                    tree_size=cp.tree_size,
                    cosigners=cosigners,
                )
                continue
            seen = by_size.get(cp.tree_size)
            if seen is not None and seen.root_hash != cp.root_hash:
                if cp.root_hash not in self._fork_roots.setdefault(cp.tree_size, set()):
                    self._fork_roots[cp.tree_size].add(cp.root_hash)
                    self._find(
                        "checkpoint_fork",
                        cp.tree_size - 1 if cp.tree_size else None,
                        None,
                        f"two trusted checkpoints of size {cp.tree_size} with different roots",
                        first=seen.note,
                        second=note,
                    )
                continue
            by_size[cp.tree_size] = _TrustedCheckpoint(cp.tree_size, cp.root_hash, note)
        self.checkpoints = [by_size[s] for s in sorted(by_size)]
        self.report.checkpoints_verified = 0
        if self.checkpoints:
            self.report.latest_checkpoint_size = self.checkpoints[-1].tree_size
        self._check_checkpoints()  # a size-0 checkpoint

    def _check_checkpoints(self) -> None:
        size = self.tree.size
        cps = self.checkpoints
        while self._cp_index < len(cps) and cps[self._cp_index].tree_size <= size:
            cp = cps[self._cp_index]
            self._cp_index += 1
            if self.diverged:
                self._skipped_checkpoints += 1
                continue
            if cp.tree_size < size:  # cannot happen while not diverged; kept for safety
                continue
            root = self.tree.root()
            if root == cp.root_hash or root in self._fork_roots.get(cp.tree_size, ()):
                self.report.checkpoints_verified += 1
                continue
            self._checkpoint_mismatch(cp)

    def _checkpoint_mismatch(self, cp: _TrustedCheckpoint) -> None:
        size = cp.tree_size
        last_seq = size - 1
        # Is only the newest entry different? Our own rebuilt prefix plus the leaf the store
        # says it holds must give the signed root: the signed root decides; the store's
        # hash is only a hint of where to look.
        prefix = self._prefix
        stored_leaf = self._stored_leaf(last_seq) if size > 0 else None
        if prefix is not None and prefix.size == last_seq and stored_leaf is not None:
            probe = prefix.copy()
            probe.append(stored_leaf)
            if probe.root() == cp.root_hash:
                # Only the newest entry differs. If its successor links to the signed
                # version, that entry's header was altered; if the successor links to the
                # altered one, history was rewritten from there on. Decide on the next record.
                self._pending = (cp, probe, stored_leaf, self.prev_offset)
                return
        self._mismatch(cp)

    def _resolve_pending(self, nxt: _Item | None) -> None:
        assert self._pending is not None
        cp, probe, signed_leaf, offset = self._pending
        self._pending = None
        if self._ours(nxt) and nxt.entry.header.prev_hash == self.prev_leaf:  # type: ignore[union-attr]
            self._mismatch(cp)  # the chain goes on from the altered entry: a rewrite
            return
        last_seq = cp.tree_size - 1
        self._find(
            "header_modified",
            last_seq,
            offset,
            f"header of entry seq {last_seq} was altered: its hash is not the one the "
            f"signed checkpoint of size {cp.tree_size} commits to",
        )
        self.tree = probe  # continue with the signed history
        self.prev_leaf = signed_leaf  # the successor links to the genuine entry

    def _mismatch(self, cp: _TrustedCheckpoint) -> None:
        size = cp.tree_size
        self._find(
            "checkpoint_mismatch",
            size - 1,
            None,
            f"the tree rebuilt from the first {size} entries does not match the signed "
            f"checkpoint of size {size}: history was rewritten",
            checkpoint=cp.note,
            rebuilt_root=self.tree.root().hex(),
        )
        self.diverged = True

    # -- entries ---------------------------------------------------------------------
    def _fits(self, item: _Item) -> bool:
        entry = item.entry
        return (
            entry is not None
            and entry.header.seq == self.expected
            and entry.header.prev_hash == self.prev_leaf
            and entry.header.ledger == self.ledger
            and entry.header.partition == self.partition
        )

    def _ours(self, item: _Item | None) -> bool:
        return (
            item is not None
            and item.entry is not None
            and item.entry.header.ledger == self.ledger
            and item.entry.header.partition == self.partition
        )

    def _accept(self, item: _Item, leaf: bytes | None = None) -> None:
        """Take ``item`` as entry ``item.seq``. ``leaf`` overrides its hash in the tree and
        chain: the genuine hash of an entry whose header was altered, as its successor
        vouches for it."""
        if self._pending is not None:  # two entries accepted for one record (reordered)
            self._resolve_pending(item)
        entry = item.entry
        assert entry is not None
        header = entry.header
        if entry.payload is None:
            self._find(
                "payload_missing",
                header.seq,
                item.offset,
                f"payload of {header.payload_size} bytes is not stored",
            )
        elif not entry.payload_matches():
            self._find(
                "payload_modified",
                header.seq,
                item.offset,
                "payload does not match the SHA-256 committed in its header",
            )
        leaf = item.leaf if leaf is None else leaf
        self._append_leaf(leaf)
        self.report.entries_checked += 1
        self.expected = header.seq + 1
        self.prev_leaf = leaf
        self.prev_offset = item.offset
        if self._cp_index < len(self.checkpoints):
            self._check_checkpoints()

    def _append_leaf(self, leaf: bytes) -> None:
        self._prefix = self.tree.copy()
        self.tree.append(leaf)

    def _replace_last_leaf(self, leaf: bytes) -> None:
        """Put the genuine hash of the newest entry back into the tree (see ``_prefix``)."""
        prefix = self._prefix
        if prefix is None or prefix.size != self.tree.size - 1:
            self.diverged = True
            return
        self.tree = prefix.copy()
        self.tree.append(leaf)

    def _take_slot(self, item: _Item, nxt: _Item | None) -> None:
        """A bad record (malformed, unknown version, foreign) took the place of entry
        ``expected``: skip that sequence number so the rest of the log is checked normally.
        The replaced entry's hash is known from its successor's ``prev_hash`` (or, at the end
        of the log, from the store's hint); without it the tree can no longer be compared."""
        seq = self.expected
        leaf = nxt.entry.header.prev_hash if nxt is not None else self._stored_leaf(seq)  # type: ignore[union-attr]
        self.expected = seq + 1
        self.prev_offset = item.offset
        if leaf is None:
            self.diverged = True
            return
        self.prev_leaf = leaf
        self._append_leaf(leaf)
        if self._cp_index < len(self.checkpoints):
            self._check_checkpoints()

    def _replaces_slot(self, nxt: _Item | None) -> bool:
        """Does the record after a bad one continue the log one seq later?"""
        if nxt is None:
            # End of the log: the bad record replaced an entry if a signed checkpoint says
            # the log had one there.
            return any(cp.tree_size > self.expected for cp in self.checkpoints[self._cp_index :])
        return self._ours(nxt) and nxt.entry.header.seq == self.expected + 1  # type: ignore[union-attr]

    def _stored_leaf(self, seq: int) -> bytes | None:
        if self.get_node is None:
            return None
        try:
            return self.get_node(0, seq)
        except StreamledgerError:
            return None

    def feed(self, records: Iterable[StoredRecord]) -> None:
        """Verify ``records`` (storage order). May be called once per partition.

        Honest stretches of the log go through :meth:`_fast_run`, which checks each record
        against the raw bytes without building objects; any record that does not plainly
        continue the chain, and its neighbours, go through the careful path that decides
        what kind of tampering it is."""
        source = _Records(records)
        buf: deque[_Item] = deque()
        fits = self._fits
        while True:
            if not buf and self._pending is None:
                handover = self._fast_run(source)
                if not handover:
                    break
                buf.extend(_Item(record) for record in handover)
            while len(buf) < 3:
                record = next(source, None)
                if record is None:
                    break
                buf.append(_Item(record))
            if self._pending is not None:
                self._resolve_pending(buf[0] if buf else None)
            if not buf:
                break
            cur = buf.popleft()
            if fits(cur):
                if not self._conflict(cur, buf):
                    self._accept(cur)
            else:
                self._misfit(cur, buf)
            if self._pending is None and buf:
                # Back to the fast path with whatever the careful path has not used.
                rest = [item.record for item in buf]
                buf.clear()
                source.push_front(rest)

    def _fast_run(self, source: _Records) -> list[StoredRecord]:
        """Accept records while each one continues the chain, carries its payload intact,
        and is followed by a record that links to it. Returns the records the careful path
        must look at (the first one not accepted, and its successor); [] at the end.

        With the native accelerator, runs of records go through ``native.verify_run`` (the
        same rule, in chunks pulled from ``source``; unused records are pushed back) and
        stop before every checkpoint size; the record it stops at goes through the loop
        below as before, so both give the same result."""
        sha256 = hashlib.sha256
        prefix = header_prefix(self.ledger, self.partition)
        tree = self.tree
        push = tree.push
        cps = self.checkpoints
        next_cp = cps[self._cp_index].tree_size if self._cp_index < len(cps) else -1
        size = tree.size
        expected, prev = self.expected, self.prev_leaf
        accepted = 0
        last_offset = self.prev_offset
        back, it, take_batch = source.back, source.it, source.take_batch
        native = _accel.native
        # a take_batch source hands over what it has fetched: no need to start small
        chunk_max = _CHUNK_MAX if take_batch is None else _CHUNK_MAX_BATCHED
        chunk_size = _CHUNK_MIN if take_batch is None else chunk_max
        cur = back.pop() if back else next(it, None)
        handover: list[StoredRecord] = []
        if cur is None:
            return handover
        try:
            while True:
                if native is not None and size + 1 != next_cp and expected < _U64_END:
                    # chunk: StoredRecords (cur, then any pushed back), then, from a source
                    # with take_batch, bare values whose offsets are in `offsets`
                    chunk: list[Any] = [cur]
                    if back:
                        take = min(len(back), chunk_size - 1)
                        chunk.extend(reversed(back[-take:]))
                        del back[-take:]
                    head = len(chunk)
                    offsets: list[int] = []
                    if head < chunk_size:
                        if take_batch is not None:
                            offsets, values = take_batch(chunk_size - head)
                            chunk.extend(values)
                        else:
                            chunk.extend(itertools.islice(it, chunk_size - head))
                    try:
                        n, expected, prev, hashes, size = native.verify_run(
                            chunk, prefix, expected, prev, tree._hashes, size, next_cp
                        )
                    except (TypeError, ValueError, OverflowError):
                        native = None  # state the native code cannot take: Python goes on
                        n = 0
                    if offsets:  # the records the Python code below may look at
                        chunk[n:] = [
                            chunk[i] if i < head else StoredRecord(offsets[i - head], chunk[i])
                            for i in range(n, len(chunk))
                        ]
                    if n:
                        tree = self.tree = CompactRange._of(size, hashes)
                        push = tree.push
                        accepted += n
                        i = n - 1
                        last_offset = (
                            chunk[i].offset if i < head or not offsets else offsets[i - head]
                        )
                    last = len(chunk) - 1
                    chunk_size = min(2 * chunk_size, chunk_max) if n == last else _CHUNK_MIN
                    cur = chunk[n]
                    if n < last:
                        back.extend(reversed(chunk[n + 1 :]))
                    elif n:
                        # All but the last record went through: it only lacked a successor,
                        # so it leads the next chunk (rather than the Python checks below,
                        # once per chunk; the end of the log comes back here with n == 0).
                        continue
                fields = chain_fields(cur.value, prefix)
                value = cur.value
                if (
                    fields is None
                    or fields[0] != expected
                    or fields[1] != prev
                    or len(value) - fields[4] != fields[3]
                    or sha256(value[fields[4] :]).digest() != fields[2]
                ):
                    handover = [cur]
                    return handover
                nxt = back.pop() if back else next(it, None)
                if nxt is None:
                    handover = [cur]  # the last record: let the careful path finish
                    return handover
                leaf = sha256(b"\x00" + value[: fields[4]]).digest()
                nxt_fields = chain_fields(nxt.value, prefix)
                if nxt_fields is None or nxt_fields[0] != expected + 1 or nxt_fields[1] != leaf:
                    handover = [cur, nxt]
                    return handover
                if size + 1 == next_cp:
                    self._prefix = tree.copy()
                push(leaf)
                size += 1
                accepted += 1
                expected += 1
                prev = leaf
                last_offset = cur.offset
                if size == next_cp:
                    self.expected, self.prev_leaf, self.prev_offset = expected, prev, last_offset
                    self._check_checkpoints()
                    next_cp = cps[self._cp_index].tree_size if self._cp_index < len(cps) else -1
                    if self._pending is not None:
                        handover = [nxt]
                        return handover
                cur = nxt
        finally:
            self.report.entries_checked += accepted
            if accepted:
                self.expected, self.prev_leaf, self.prev_offset = expected, prev, last_offset

    def _conflict(self, cur: _Item, buf: deque[_Item]) -> bool:
        """``cur`` fits, but does the next record claim the same seq with a better claim?"""
        if not buf:
            return False
        nxt = buf[0]
        if not self._ours(nxt) or nxt.entry.header.seq != cur.entry.header.seq:  # type: ignore[union-attr]
            return False
        if nxt.leaf == cur.leaf:
            return False  # a plain duplicate: the next record will be reported
        after = buf[1] if len(buf) > 1 else None
        seq = cur.entry.header.seq  # type: ignore[union-attr]
        vouched = self._ours(after) and after.entry.header.prev_hash == nxt.leaf  # type: ignore[union-attr]
        if not vouched and not self._ours(after):
            # nxt is the last entry: nobody vouches for either; the store's hint says which.
            stored = self._stored_leaf(seq)
            vouched = stored is not None and stored == nxt.leaf and stored != cur.leaf
        if vouched:
            self._find(
                "inserted",
                cur.entry.header.seq,  # type: ignore[union-attr]
                cur.offset,
                "an entry claiming this sequence number was inserted before the genuine one",
            )
            return True
        return False

    def _misfit(self, cur: _Item, buf: deque[_Item]) -> None:
        expected = self.expected
        nxt = buf[0] if buf else None
        if cur.error is not None:
            kind = "unknown_version" if isinstance(cur.error, UnknownVersionError) else "malformed"
            self._find(kind, expected, cur.offset, f"record is not a valid entry: {cur.error}")
            if self._replaces_slot(nxt):
                self._take_slot(cur, nxt)
            return
        entry = cur.entry
        assert entry is not None
        header = entry.header
        if header.ledger != self.ledger or header.partition != self.partition:
            self._find(
                "foreign",
                expected,
                cur.offset,
                f"entry of ledger {header.ledger!r} partition {header.partition} seq "
                f"{header.seq} found in this log",
            )
            if self._replaces_slot(nxt):
                self._take_slot(cur, nxt)
            return
        seq = header.seq
        if seq == expected - 1 and cur.leaf == self.prev_leaf:
            self._find("duplicate", seq, cur.offset, "the same entry is stored twice")
            return
        if (
            seq == expected + 1
            and self._ours(nxt)
            and nxt.entry.header.seq == expected  # type: ignore[union-attr]
            and nxt.entry.header.prev_hash == self.prev_leaf  # type: ignore[union-attr]
            and header.prev_hash == nxt.leaf  # type: ignore[union-attr]
        ):
            self._find(
                "reordered",
                expected,
                cur.offset,
                f"entries seq {expected} and {seq} are stored in the wrong order",
            )
            buf.popleft()
            self._accept(nxt)  # type: ignore[arg-type]
            self._accept(cur)
            return
        if seq < expected and self._stored_leaf(seq) == cur.leaf:
            self._find("duplicate", seq, cur.offset, f"entry seq {seq} is stored again here")
            return
        if nxt is not None and self._fits(nxt):
            self._find(
                "inserted",
                expected,
                cur.offset,
                f"an entry (claiming seq {seq}) that does not belong in the chain was inserted",
            )
            return
        if seq == expected:
            self._broken_link(cur, nxt)
            return
        if seq > expected:
            vouched = self._ours(nxt) and nxt.entry.header.prev_hash == cur.leaf  # type: ignore[union-attr]
            if not vouched and expected > 0 and self._stored_leaf(expected - 1) == self.prev_leaf:
                stored = self._stored_leaf(seq)
                if stored != cur.leaf:
                    # The store never held this entry at that seq: a forgery, not a gap.
                    self._find(
                        "inserted",
                        expected,
                        cur.offset,
                        f"an entry claiming seq {seq} that the log never held was inserted "
                        f"after seq {expected - 1}",
                    )
                    return
            count = seq - expected
            self._find(
                "missing",
                expected,
                cur.offset,
                f"{count} entr{'y' if count == 1 else 'ies'} (seq {expected}"
                f"{'' if count == 1 else f'..{seq - 1}'}) deleted before seq {seq}",
            )
            if count == 1:
                # cur's prev_hash is the deleted entry's hash: the tree stays comparable.
                self._append_leaf(header.prev_hash)
                if self._cp_index < len(self.checkpoints):
                    self._check_checkpoints()
            else:
                self.diverged = True
            self._accept(cur)
            return
        # seq < expected: a replay of an older entry, or a forgery claiming an old seq.
        stored = self._stored_leaf(seq)
        if stored == cur.leaf:
            self._find("duplicate", seq, cur.offset, f"entry seq {seq} is stored again here")
        else:
            self._find(
                "inserted",
                expected,
                cur.offset,
                f"an entry claiming old seq {seq} was inserted after seq {expected - 1}",
            )

    def _broken_link(self, cur: _Item, nxt: _Item | None) -> None:
        """``cur`` has the expected seq but does not link to the previous entry."""
        expected = self.expected
        nxt_links_cur = self._ours(nxt) and nxt.entry.header.prev_hash == cur.leaf  # type: ignore[union-attr]
        if expected == 0:
            culprit_prev = False
        elif nxt_links_cur:
            culprit_prev = True  # the successor vouches for cur: the previous entry changed
        elif self._ours(nxt) and nxt.entry.header.seq == expected + 1:  # type: ignore[union-attr]
            culprit_prev = False  # nobody vouches for cur: cur itself changed
        else:
            # cur is the last entry: ask the store's hashes which one differs.
            stored_prev = self._stored_leaf(expected - 1)
            stored_cur = self._stored_leaf(expected)
            if stored_cur is None and stored_prev is not None and stored_prev == self.prev_leaf:
                # The writer's own tree ends before this seq and agrees with the chain so
                # far: this record was added after the log's end by someone else.
                self._find(
                    "inserted",
                    expected,
                    cur.offset,
                    f"an entry claiming seq {expected} that does not link to entry seq "
                    f"{expected - 1} was appended after the end of the log",
                )
                return
            culprit_prev = not (stored_prev == self.prev_leaf and stored_cur != cur.leaf)
        if culprit_prev:
            self._find(
                "header_modified",
                expected - 1,
                self.prev_offset,
                f"header of entry seq {expected - 1} was altered: entry seq {expected} "
                "points to a different hash",
            )
            self._replace_last_leaf(cur.entry.header.prev_hash)  # type: ignore[union-attr]
            self.prev_leaf = cur.entry.header.prev_hash  # type: ignore[union-attr]
            self._accept(cur)
        else:
            self._find(
                "header_modified",
                expected,
                cur.offset,
                f"header of entry seq {expected} was altered: it no longer links to entry "
                f"seq {expected - 1}"
                if expected
                else "header of entry seq 0 was altered",
            )
            genuine = None
            if self._ours(nxt) and nxt.entry.header.seq == expected + 1:  # type: ignore[union-attr]
                genuine = nxt.entry.header.prev_hash  # type: ignore[union-attr]
            else:
                genuine = self._stored_leaf(expected)
            if genuine is None:
                self.diverged = True  # the genuine hash is unknown: later roots differ
            self._accept(cur, leaf=genuine)

    def finish(self) -> PartitionReport:
        if self._pending is not None:
            self._resolve_pending(None)
        report = self.report
        size = self.tree.size
        report.tree_size = size
        report.root_hash = self.tree.root().hex()
        remaining = self.checkpoints[self._cp_index :]
        # Checkpoints the log reaches but that could not be compared (diverged tree).
        reached = [cp for cp in remaining if cp.tree_size <= self.expected]
        self._skipped_checkpoints += len(reached)
        remaining = remaining[len(reached) :]
        if remaining:
            largest = remaining[-1]
            self._find(
                "truncated",
                self.expected,
                None,
                f"a signed checkpoint vouches for {largest.tree_size} entries, the log "
                f"holds {self.expected}: entries from seq {self.expected} on were removed",
                checkpoint=largest.note,
            )
        if self._skipped_checkpoints:
            report.warnings.append(
                f"{self._skipped_checkpoints} later checkpoint(s) could not be compared "
                "because of the findings above"
            )
        latest = report.latest_checkpoint_size
        if self.trust is not None and size and latest is None:
            explained = any(
                f.kind in ("untrusted_checkpoint", "bad_checkpoint", "witness_shortfall")
                for f in report.findings
            )
            if self.trust.require_checkpoint and not explained:
                self._find(
                    "no_trusted_checkpoint",
                    None,
                    None,
                    f"{size} entries, but no checkpoint signed by a trusted key vouches for any "
                    "of them",
                )
            else:
                report.warnings.append(
                    "no trusted checkpoint: only the hash chain was checked; "
                    "run 'streamledger checkpoint' and verify with the log's key"
                )
        elif latest is not None and size > latest:
            report.warnings.append(
                f"{size - latest} entr{'y' if size - latest == 1 else 'ies'} after the latest "
                f"checkpoint {'is' if size - latest == 1 else 'are'} protected by the hash "
                "chain only"
            )
        return report


def _claimed_last_seq(note: str) -> int | None:
    """The last seq an (unverified) checkpoint note claims to cover, for reporting only."""
    try:
        size = Checkpoint.parse(note.split("\n\n", 1)[0] + "\n").tree_size
    except (FormatError, ValueError, IndexError):
        return None
    return size - 1 if size else None


_gc_lock = threading.Lock()
_gc_pauses = 0  # verifications running with the cyclic GC paused
_gc_resume = False  # whether the GC was enabled when the first of them paused it


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off while records stream through the verifier.

    Verifying builds no reference cycles, but the Kafka client allocates a message object
    per record (in the read-ahead thread), and each few hundred of them set off a young
    collection that also walks the verifier's batch lists: about 0.1 us per record, 10 % of
    the CPU of a verify at 100 B. Nested and concurrent verifications share one pause; the
    collector is re-enabled (if it was on) when the last one ends."""
    global _gc_pauses, _gc_resume
    with _gc_lock:
        if _gc_pauses == 0:
            _gc_resume = gc.isenabled()
            gc.disable()
        _gc_pauses += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pauses -= 1
            if _gc_pauses == 0 and _gc_resume:
                gc.enable()


def verify_partition(
    ledger: str,
    partition: int,
    origin: str,
    records: Iterable[StoredRecord],
    checkpoint_notes: Sequence[str],
    trust: TrustPolicy | None,
    get_node: NodeGetter | None = None,
) -> PartitionReport:
    """Verify one partition. ``trust=None`` checks only the chain and tree, not signatures."""
    verifier = PartitionVerifier(ledger, partition, origin, trust, get_node)
    verifier.load_checkpoints(checkpoint_notes)
    with _gc_paused():
        verifier.feed(records)
    return verifier.finish()
