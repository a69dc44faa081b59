"""The witness service: an independent organization's check that a ledger's history only grows.

A witness follows the signed checkpoints of every partition of a ledger. For each new one it

1. verifies the log's signature with the log key it was given (never the one the store names);
2. checks that the new checkpoint extends the last one it cosigned, from the ledger data it
   reads itself: it keeps the compact range (O(log n) hashes) of the tree it last cosigned,
   reads the entries after it, checks that they continue the hash chain, and recomputes the
   new root and an RFC 9162 consistency proof from them. The store's Merkle node hashes are
   never used;
3. cosigns it (C2SP ``tlog-cosignature`` v1) and publishes the cosignature as a document of
   kind ``cosignatures`` (key ``<partition>/<size>``), or refuses it and publishes a
   :class:`~streamledger.core.bundle.WitnessAlert` (kind ``alerts``) holding both conflicting
   signed checkpoints: a **rollback** (smaller than what it cosigned), a **fork** (same size,
   different root) or an **inconsistent** checkpoint (larger, but not an extension of the
   cosigned tree by the entries the ledger holds).

Its state (per partition: the last cosigned checkpoint, its compact range, the last leaf hash
and how far it read the checkpoint history) is one JSON file written atomically; the state is
saved *before* a cosignature is published, so a crash can never make the witness cosign two
conflicting checkpoints. Documents not yet published when it stopped are published at the
next start.
"""

from __future__ import annotations

import hashlib
import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

from streamledger._files import write_atomic
from streamledger.backends.base import Backend
from streamledger.core.bundle import WitnessAlert, cosignature_document
from streamledger.core.checkpoint import cosign_checkpoint, verify_checkpoint
from streamledger.core.entry import ZERO_HASH, decode_record
from streamledger.core.merkle import (
    EMPTY_ROOT,
    CompactRange,
    consistency_proof,
    range_nodes,
    verify_consistency,
)
from streamledger.core.note import KEY_TYPE_COSIGNATURE, SigningKey, VerifierKey
from streamledger.errors import ConfigError, FormatError, StreamledgerError, VerificationError

__all__ = ["Witness", "WitnessResult", "extend_with_proof"]

STATE_VERSION = 1
_RECENT = 64  # cosigned (size, root) pairs remembered, so a re-published one is no rollback


class _Refused(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class _Pending(Exception):
    """The ledger does not hold the entries the checkpoint covers yet: try again later."""


@dataclass
class _PartitionState:
    origin: str
    size: int = 0
    root: bytes = EMPTY_ROOT
    hashes: list[bytes] = field(default_factory=list)
    last_leaf: bytes = ZERO_HASH
    note: str | None = None  # the last cosigned checkpoint, with our cosignature
    processed: int = 0  # checkpoint notes of the history handled
    fingerprint: str | None = None  # sha256 of the last handled note
    recent: list[tuple[int, str]] = field(default_factory=list)

    def compact_range(self) -> CompactRange:
        nodes = dict(zip(range_nodes(0, self.size), self.hashes, strict=True))
        return CompactRange.from_nodes(self.size, lambda level, index: nodes[(level, index)])

    def to_json(self) -> dict[str, Any]:
        return {
            "origin": self.origin,
            "size": self.size,
            "root": self.root.hex(),
            "compact_range": [h.hex() for h in self.hashes],
            "last_leaf": self.last_leaf.hex(),
            "note": self.note,
            "processed": self.processed,
            "fingerprint": self.fingerprint,
            "recent": [list(r) for r in self.recent],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> _PartitionState:
        st = cls(
            origin=data["origin"],
            size=int(data["size"]),
            root=bytes.fromhex(data["root"]),
            hashes=[bytes.fromhex(h) for h in data["compact_range"]],
            last_leaf=bytes.fromhex(data["last_leaf"]),
            note=data.get("note"),
            processed=int(data.get("processed", 0)),
            fingerprint=data.get("fingerprint"),
            recent=[(int(s), str(r)) for s, r in data.get("recent", [])],
        )
        if len(st.hashes) != st.size.bit_count() or st.compact_range().root() != st.root:
            raise FormatError("the compact range does not give the recorded root")
        return st


@dataclass
class WitnessResult:
    """What one pass over the ledger did."""

    cosigned: list[tuple[int, int]] = field(default_factory=list)  # (partition, size)
    refused: list[WitnessAlert] = field(default_factory=list)
    pending: list[tuple[int, int]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def extend_with_proof(
    old: CompactRange, leaves: Iterator[bytes], new_size: int
) -> tuple[CompactRange, list[bytes]]:
    """Extend ``old`` with the leaves up to ``new_size``; return the new range and the RFC 9162
    consistency proof from ``old.size`` to ``new_size``, in O(log n) memory.

    The proof needs only the perfect subtrees of ``[0, old)`` (the compact range) and those of
    the canonical decomposition of ``[old, new)``, which the leaves give one block at a time.
    Raises :class:`_Pending` if ``leaves`` ends early.
    """
    n = old.size
    nodes: dict[tuple[int, int], bytes] = dict(zip(range_nodes(0, n), old.hashes(), strict=True))
    new = old.copy()
    for level, index in range_nodes(n, new_size):
        block = CompactRange()
        for _ in range(1 << level):
            leaf = next(leaves, None)
            if leaf is None:
                raise _Pending()
            block.push(leaf)
            new.push(leaf)
        nodes[(level, index)] = block.root()

    def get_node(level: int, index: int) -> bytes:
        return nodes[(level, index)]

    proof = consistency_proof(n, new_size, get_node) if n else []
    return new, proof


def _fingerprint(note: str) -> str:
    return hashlib.sha256(note.encode("utf-8")).hexdigest()


class Witness:
    """A witness of one ledger: verify, check consistency, cosign or refuse, publish.

    ``backend`` is any backend (SQLite, Kafka). ``key`` is the witness's cosigning key (type
    0x04). ``log_keys`` are the log's verifier keys the witness trusts. ``state_dir`` holds
    ``<key name>/<ledger>.json``.
    """

    def __init__(
        self,
        backend: Backend,
        ledger: str,
        key: SigningKey,
        log_keys: Sequence[VerifierKey],
        state_dir: str | Path,
        *,
        clock: Callable[[], float] = time.time,
        out: TextIO | None = None,
    ) -> None:
        if key.key_type != KEY_TYPE_COSIGNATURE:
            raise ConfigError(
                f"key {key.name!r} is not a witness cosigning key: create one with "
                "'streamledger keys generate NAME --witness'"
            )
        if not log_keys:
            raise ConfigError("the witness needs the log's verifier key (--log-vkey)")
        self.backend = backend
        self.ledger = ledger
        self.key = key
        self.log_keys = list(log_keys)
        self.config = backend.ledger_config(ledger)
        self.clock = clock
        self.out = out
        self.state_path = Path(state_dir) / quote(key.name, safe="") / f"{ledger}.json"
        self._partitions: dict[int, _PartitionState] = {}
        self._outbox: list[tuple[str, str, bytes]] = []
        self._stop = threading.Event()
        self._load()

    # -- state -------------------------------------------------------------------------
    def _load(self) -> None:
        if not self.state_path.exists():
            return
        try:
            data = json.loads(self.state_path.read_text())
            if data.get("version") != STATE_VERSION or data.get("ledger") != self.ledger:
                raise FormatError("wrong version or ledger")
            self._partitions = {
                int(p): _PartitionState.from_json(v) for p, v in data["partitions"].items()
            }
            self._outbox = [(k, key, v.encode()) for k, key, v in data.get("outbox", [])]
        except (OSError, ValueError, KeyError, TypeError, FormatError) as exc:
            raise ConfigError(
                f"witness state file {self.state_path} is damaged ({exc}); a witness must not "
                "guess what it cosigned: restore it from a backup"
            ) from None

    def _save(self) -> None:
        data = {
            "version": STATE_VERSION,
            "ledger": self.ledger,
            "witness": str(self.key.verifier),
            "partitions": {str(p): st.to_json() for p, st in sorted(self._partitions.items())},
            "outbox": [[k, key, v.decode()] for k, key, v in self._outbox],
        }
        write_atomic(self.state_path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())

    def _flush(self) -> None:
        while self._outbox:
            kind, key, value = self._outbox[0]
            self.backend.put_document(self.ledger, kind, key, value)
            self._outbox.pop(0)
            self._save()

    def state(self, partition: int) -> tuple[int, bytes] | None:
        """(size, root) of the last checkpoint cosigned for ``partition``, if any."""
        st = self._partitions.get(partition)
        return (st.size, st.root) if st and st.note else None

    def _say(self, text: str) -> None:
        if self.out is not None:
            print(text, file=self.out, flush=True)

    # -- one pass ----------------------------------------------------------------------
    def run_once(self) -> WitnessResult:
        """Handle every checkpoint published since the last pass, in every partition."""
        result = WitnessResult()
        self._flush()
        for partition in range(self.config.partitions):
            self._partition(partition, result)
        self._flush()
        return result

    def run(self, interval: float = 5.0, *, handle_signals: bool = False) -> None:
        """Poll every ``interval`` seconds until :meth:`stop` (or SIGINT/SIGTERM)."""
        if handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: self._stop.set())
        while not self._stop.is_set():
            self.run_once()
            self._stop.wait(interval)

    def stop(self) -> None:
        self._stop.set()

    def _partition(self, partition: int, result: WitnessResult) -> None:
        origin = self.config.checkpoint_origin(partition)
        st = self._partitions.get(partition)
        if st is None:
            st = self._partitions[partition] = _PartitionState(origin)
        if st.origin != origin:
            raise ConfigError(
                f"witness state for {self.ledger!r} partition {partition} is for origin "
                f"{st.origin!r}, the ledger now says {origin!r}"
            )
        notes = self.backend.checkpoints(self.ledger, partition)
        if st.processed > len(notes) or (
            st.processed and _fingerprint(notes[st.processed - 1]) != st.fingerprint
        ):
            # The checkpoint history changed under us (rewritten, recreated topic): look at
            # all of it again; what we cosigned stays what we compare with.
            self._say(
                f"witness: {self.ledger}/{partition}: the checkpoint history was replaced; "
                "examining all of it again"
            )
            st.processed = 0
        before = (st.processed, st.fingerprint)
        for number in range(st.processed, len(notes)):
            note = notes[number]
            try:
                outcome = self._handle(partition, st, note, result)
            except _Pending:
                result.pending.append((partition, number))
                self._say(
                    f"witness: {self.ledger}/{partition}: checkpoint #{number} covers entries "
                    "the ledger does not hold yet; will retry"
                )
                return
            st.processed = number + 1
            st.fingerprint = _fingerprint(note)
            if outcome:
                self._save()  # before publishing: never cosign two conflicting trees
                self._flush()
        if (st.processed, st.fingerprint) != before:
            self._save()

    def _handle(
        self, partition: int, st: _PartitionState, note: str, result: WitnessResult
    ) -> bool:
        """Handle one note; True if a document was queued."""
        try:
            verified = verify_checkpoint(note, self.log_keys, origin=st.origin)
        except (VerificationError, FormatError) as exc:
            result.ignored.append(f"{self.ledger}/{partition}: {exc}")
            self._say(f"witness: {self.ledger}/{partition}: ignored a checkpoint: {exc}")
            return False
        cp = verified.checkpoint
        body = verified.text
        try:
            new = self._check(partition, st, cp.tree_size, cp.root_hash, body)
        except _Refused as refusal:
            alert = WitnessAlert(
                ledger=self.ledger,
                partition=partition,
                reason=refusal.reason,
                detail=refusal.detail,
                witness=str(self.key.verifier),
                cosigned=st.note,
                refused=note,
                time_ms=int(self.clock() * 1000),
            )
            self._outbox.append(
                ("alerts", f"{partition}/{cp.tree_size}/{self.key.name}", alert.to_bytes())
            )
            result.refused.append(alert)
            self._say(
                f"witness: {self.ledger}/{partition}: REFUSED the checkpoint of size "
                f"{cp.tree_size} ({refusal.reason}): {refusal.detail}; alert published"
            )
            return True
        if new is None:
            return False  # already cosigned
        cr, last_leaf = new
        line = cosign_checkpoint(body, self.key, timestamp=int(self.clock()))
        st.size, st.root, st.hashes, st.last_leaf = (
            cp.tree_size,
            cp.root_hash,
            cr.hashes(),
            last_leaf,
        )
        st.note = note.split("\n\n", 1)[0] + "\n\n" + _log_lines(note, verified.log_key) + line
        st.recent = [*st.recent, (cp.tree_size, cp.root_hash.hex())][-_RECENT:]
        self._outbox.append(
            ("cosignatures", f"{partition}/{cp.tree_size}", cosignature_document(body, line))
        )
        result.cosigned.append((partition, cp.tree_size))
        self._say(f"witness: {self.ledger}/{partition}: cosigned size {cp.tree_size}")
        return True

    def _check(
        self, partition: int, st: _PartitionState, size: int, root: bytes, body: str
    ) -> tuple[CompactRange, bytes] | None:
        """The new compact range and last leaf if the checkpoint extends what we cosigned;
        None if it is what we cosigned; raises _Refused or _Pending."""
        if size < st.size:
            if (size, root.hex()) in st.recent:
                return None  # one we cosigned before, published again
            raise _Refused(
                "rollback",
                f"the log signed a checkpoint of {size} entries after the witness cosigned "
                f"{st.size}",
            )
        if size == st.size:
            if root != st.root:
                raise _Refused(
                    "fork",
                    f"the log signed two different trees of {size} entries",
                )
            if st.note is not None and st.note.split("\n\n", 1)[0] + "\n" == body:
                return None
            if size == 0 or st.note is not None:
                return st.compact_range(), st.last_leaf
        state = {"last": st.last_leaf}
        leaves = self._leaves(partition, st.size, size, state)
        new, proof = extend_with_proof(st.compact_range(), leaves, size)
        if new.root() != root:
            raise _Refused(
                "inconsistent",
                f"the ledger's entries {st.size}..{size - 1} after the {st.size} entries the "
                f"witness cosigned give root {new.root().hex()[:16]}..., not the signed root "
                f"{root.hex()[:16]}...: the log's history was rewritten",
            )
        if st.size:
            try:
                verify_consistency(st.size, size, st.root, root, proof)
            except VerificationError as exc:  # cannot happen when the roots matched
                raise _Refused("inconsistent", f"consistency proof failed: {exc}") from None
        return new, state["last"]

    def _leaves(
        self, partition: int, start: int, end: int, state: dict[str, bytes]
    ) -> Iterator[bytes]:
        """Leaf hashes of seqs [start, end) read from the ledger, each checked to continue the
        chain from ``state['last']``; raises _Refused on a record that does not."""
        expected = start
        try:
            records = self.backend.read(self.ledger, partition, start, end)
            for record in records:
                try:
                    entry = decode_record(record.value)
                except StreamledgerError as exc:
                    raise _Refused(
                        "inconsistent", f"the record at seq {expected} is not an entry: {exc}"
                    ) from None
                h = entry.header
                if h.ledger != self.ledger or h.partition != partition:
                    raise _Refused(
                        "inconsistent", f"the record at seq {expected} belongs to another log"
                    )
                if h.seq < expected:
                    continue  # a duplicate delivery; the chain decides what counts
                if h.seq != expected or h.prev_hash != state["last"]:
                    raise _Refused(
                        "inconsistent",
                        f"entry seq {h.seq} does not continue the chain the witness cosigned "
                        f"(expected seq {expected} linking to "
                        f"{state['last'].hex()[:16]}...): the log's history was rewritten",
                    )
                state["last"] = entry.leaf_hash
                expected += 1
                yield entry.leaf_hash
                if expected == end:
                    return
        except StreamledgerError as exc:
            if isinstance(exc, VerificationError):
                raise
            raise _Pending() from exc


def _log_lines(note: str, log_key: VerifierKey) -> str:
    """The log's own signature line(s) of ``note`` (dropping any cosignatures on it)."""
    block = note.split("\n\n", 1)[1] if "\n\n" in note else ""
    lines = [
        line + "\n"
        for line in block.splitlines()
        if line.startswith("\u2014 " + log_key.name + " ")
    ]
    return "".join(lines)


def main_loop(witness: Witness, once: bool, interval: float, out: TextIO = sys.stderr) -> int:
    """CLI helper: one pass or forever; returns the number of refusals in the last pass."""
    if once:
        result = witness.run_once()
        print(
            f"witness {witness.key.name}: {len(result.cosigned)} cosigned, "
            f"{len(result.refused)} refused, {len(result.pending)} pending, "
            f"{len(result.ignored)} ignored",
            file=out,
        )
        return len(result.refused)
    witness.run(interval, handle_signals=True)
    return 0
