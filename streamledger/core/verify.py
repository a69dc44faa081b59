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
=====================  ================================================================
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from streamledger.core.checkpoint import Checkpoint, verify_checkpoint
from streamledger.core.entry import ZERO_HASH, Entry, StoredRecord, decode_record
from streamledger.core.merkle import CompactRange, inclusion_proof, verify_inclusion
from streamledger.core.note import VerifierKey
from streamledger.errors import (
    FormatError,
    StreamledgerError,
    UnknownVersionError,
    VerificationError,
)

NodeGetter = Callable[[int, int], bytes]

# Kinds that change the rebuilt tree, so later signed roots can no longer be compared.
_DIVERGING = {"header_modified", "missing"}


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


@dataclass(frozen=True)
class _TrustedCheckpoint:
    tree_size: int
    root_hash: bytes
    note: str


class _Item:
    __slots__ = ("offset", "entry", "leaf", "error")

    def __init__(self, record: StoredRecord) -> None:
        self.offset = record.offset
        self.entry: Entry | None = None
        self.leaf = b""
        self.error: FormatError | None = None
        try:
            self.entry = decode_record(record.value)
            self.leaf = hashlib.sha256(b"\x00" + self.entry.header_bytes).digest()
        except FormatError as exc:
            self.error = exc


def check_checkpoint_note(note: str, origin: str, trust: TrustPolicy) -> Checkpoint:
    """Verify a signed checkpoint note against ``trust`` and the expected ``origin``.

    Raises :class:`VerificationError` (signature or witness problems) or
    :class:`FormatError` (unparseable, wrong origin).
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
    return verified.checkpoint


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

    # -- findings --------------------------------------------------------------------
    def _find(
        self, kind: str, seq: int | None, offset: int | None, detail: str, **evidence: Any
    ) -> None:
        self.report.findings.append(
            Finding(kind, self.ledger, self.partition, seq, offset, detail, evidence)
        )
        if kind in _DIVERGING:
            self.diverged = True

    # -- checkpoints -----------------------------------------------------------------
    def load_checkpoints(self, notes: Sequence[str]) -> None:
        if self.trust is None:
            if notes:
                self.report.warnings.append(
                    f"{len(notes)} checkpoint(s) not checked: no trusted log key given"
                )
            return
        by_size: dict[int, _TrustedCheckpoint] = {}
        for number, note in enumerate(notes):
            try:
                cp = check_checkpoint_note(note, self.origin, self.trust)
            except FormatError as exc:
                self._find("bad_checkpoint", None, None, f"checkpoint #{number}: {exc}")
                continue
            except VerificationError as exc:
                kind = "witness_shortfall" if "cosignature" in str(exc) else "untrusted_checkpoint"
                self._find(kind, None, None, f"checkpoint #{number}: {exc}", note=note)
                continue
            seen = by_size.get(cp.tree_size)
            if seen is not None and seen.root_hash != cp.root_hash:
                self._find(
                    "checkpoint_fork",
                    None,
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
            if self.tree.root() == cp.root_hash:
                self.report.checkpoints_verified += 1
                continue
            self._checkpoint_mismatch(cp)

    def _checkpoint_mismatch(self, cp: _TrustedCheckpoint) -> None:
        size = cp.tree_size
        last_seq = size - 1
        # Is only the newest entry different? Ask the store for its proof: the signed root
        # decides; the store's hashes are only a hint of where to look.
        if self.get_node is not None and size > 0:
            try:
                proof = inclusion_proof(last_seq, size, self.get_node)
                stored_leaf = self.get_node(0, last_seq)
                verify_inclusion(stored_leaf, last_seq, size, proof, cp.root_hash)
            except StreamledgerError:
                pass
            else:
                self._find(
                    "header_modified",
                    last_seq,
                    self.prev_offset,
                    f"header of entry seq {last_seq} was altered: its hash is not the one the "
                    f"signed checkpoint of size {size} commits to",
                )
                return
        self._find(
            "checkpoint_mismatch",
            last_seq,
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

    def _accept(self, item: _Item, next_prev: bytes | None = None) -> None:
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
        self.tree.append(item.leaf)
        self.report.entries_checked += 1
        self.expected = header.seq + 1
        self.prev_leaf = item.leaf if next_prev is None else next_prev
        self.prev_offset = item.offset
        if self._cp_index < len(self.checkpoints):
            self._check_checkpoints()

    def _stored_leaf(self, seq: int) -> bytes | None:
        if self.get_node is None:
            return None
        try:
            return self.get_node(0, seq)
        except StreamledgerError:
            return None

    def feed(self, records: Iterable[StoredRecord]) -> None:
        """Verify ``records`` (storage order). May be called once per partition."""
        source: Iterator[StoredRecord] = iter(records)
        buf: deque[_Item] = deque()
        fits = self._fits
        while True:
            while len(buf) < 3:
                record = next(source, None)
                if record is None:
                    break
                buf.append(_Item(record))
            if not buf:
                break
            cur = buf.popleft()
            if fits(cur):
                if not self._conflict(cur, buf):
                    self._accept(cur)
                continue
            self._misfit(cur, buf)

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
        if self._ours(after) and after.entry.header.prev_hash == nxt.leaf:  # type: ignore[union-attr]
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
        if cur.error is not None:
            kind = "unknown_version" if isinstance(cur.error, UnknownVersionError) else "malformed"
            self._find(kind, expected, cur.offset, f"record is not a valid entry: {cur.error}")
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
            return
        seq = header.seq
        if seq == expected - 1 and cur.leaf == self.prev_leaf:
            self._find("duplicate", seq, cur.offset, "the same entry is stored twice")
            return
        nxt = buf[0] if buf else None
        if nxt is not None and self._fits(nxt):
            self._find(
                "inserted",
                expected,
                cur.offset,
                f"an entry (claiming seq {seq}) that does not belong in the chain was inserted",
            )
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
        if seq == expected:
            self._broken_link(cur, nxt)
            return
        if seq > expected:
            count = seq - expected
            self._find(
                "missing",
                expected,
                cur.offset,
                f"{count} entr{'y' if count == 1 else 'ies'} (seq {expected}"
                f"{'' if count == 1 else f'..{seq - 1}'}) deleted before seq {seq}",
            )
            self._accept(cur)
            return
        # seq < expected: a replay of an older entry, or a forgery claiming an old seq.
        stored = self._stored_leaf(seq)
        if stored == cur.leaf:
            self._find("duplicate", seq, cur.offset, f"entry seq {seq} is stored again here")
        else:
            self._find(
                "inserted",
                seq,
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
            culprit_prev = not (stored_prev == self.prev_leaf and stored_cur != cur.leaf)
        if culprit_prev:
            self._find(
                "header_modified",
                expected - 1,
                self.prev_offset,
                f"header of entry seq {expected - 1} was altered: entry seq {expected} "
                "points to a different hash",
            )
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
            next_prev = (
                nxt.entry.header.prev_hash if nxt_links_cur is False and self._ours(nxt) else None
            )  # type: ignore[union-attr]
            self._accept(cur, next_prev=next_prev)

    def finish(self) -> PartitionReport:
        report = self.report
        size = self.tree.size
        report.tree_size = size
        report.root_hash = self.tree.root().hex()
        remaining = self.checkpoints[self._cp_index :]
        if remaining:
            largest = remaining[-1]
            self._find(
                "truncated",
                self.expected,
                None,
                f"a signed checkpoint vouches for {largest.tree_size} entries, the log "
                f"holds {size}: entries after seq {self.expected - 1} were removed",
                checkpoint=largest.note,
            )
        if self._skipped_checkpoints:
            report.warnings.append(
                f"{self._skipped_checkpoints} later checkpoint(s) could not be compared "
                "because of the findings above"
            )
        latest = report.latest_checkpoint_size
        if self.trust is not None and size and latest is None:
            report.warnings.append(
                "no trusted checkpoint: only the hash chain was checked; "
                "run 'streamledger checkpoint' and verify with the log's key"
            )
        elif latest is not None and size > latest:
            report.warnings.append(
                f"{size - latest} entr{'y' if size - latest == 1 else 'ies'} after the latest "
                "checkpoint are protected by the hash chain only"
            )
        return report


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
    verifier.feed(records)
    return verifier.finish()
