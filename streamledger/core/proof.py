"""Offline proofs: the JSON documents ``prove`` writes and ``proof verify`` checks.

An inclusion proof carries the exact leaf bytes (the entry header), its RFC 6962 audit path
and the signed checkpoint it leads to, so an auditor needs only the file and the log's
verifier key. A consistency proof shows that a newer tree extends an older one; when the two
signed checkpoints are included, it also shows the log signed both.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from streamledger.core.checkpoint import verify_checkpoint
from streamledger.core.entry import decode_record
from streamledger.core.merkle import (
    NodeGetter,
    NodeId,
    consistency_proof,
    inclusion_proof,
    range_nodes,
    root_hash,
    verify_consistency,
    verify_inclusion,
)
from streamledger.core.note import VerifierKey
from streamledger.errors import FormatError, StreamledgerError, VerificationError


def _unhex(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise FormatError(f"proof field {what!r} must be a hex string")
    try:
        data = bytes.fromhex(value)
    except ValueError:
        raise FormatError(f"proof field {what!r} is not valid hex") from None
    if len(data) != 32:
        raise FormatError(f"proof field {what!r} must be 32 bytes, got {len(data)}")
    return data


def _int(data: dict[str, Any], key: str) -> int:
    value = data.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise FormatError(f"proof field {key!r} must be a non-negative integer")
    return value


def _str(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise FormatError(f"proof field {key!r} must be a string")
    return value


def _path(data: dict[str, Any]) -> list[bytes]:
    proof = data.get("proof")
    if not isinstance(proof, list):
        raise FormatError("proof field 'proof' must be a list of hex hashes")
    return [_unhex(h, f"proof[{i}]") for i, h in enumerate(proof)]


# -- the nodes a proof reads, known before reading any ---------------------------------------
# Which subtrees a proof needs depends only on the tree sizes and the leaf index, never on
# the hashes, so a store can be asked for all of them at once (one query instead of one per
# node). The sets are taken from the proof builders of :mod:`~streamledger.core.merkle`
# themselves, run once over placeholder hashes: there is no second copy of the RFC 9162 path
# logic here that could drift from the one that builds the proof.

_PLACEHOLDER = bytes(32)


def _recorded(build: Callable[[NodeGetter], object]) -> list[NodeId]:
    ids: dict[NodeId, None] = {}

    def record(level: int, index: int) -> bytes:
        ids[(level, index)] = None
        return _PLACEHOLDER

    build(record)
    return list(ids)


def root_node_ids(tree_size: int) -> list[NodeId]:
    """The ``(level, index)`` nodes :func:`~streamledger.core.merkle.root_hash` reads."""
    return range_nodes(0, tree_size) if tree_size > 0 else []


def inclusion_node_ids(index: int, tree_size: int) -> list[NodeId]:
    """The distinct nodes :func:`~streamledger.core.merkle.inclusion_proof` reads for leaf
    ``index`` in the tree of ``tree_size`` leaves (ProofError for an index out of range)."""
    return _recorded(lambda get: inclusion_proof(index, tree_size, get))


def consistency_node_ids(old_size: int, new_size: int) -> list[NodeId]:
    """The distinct nodes a full consistency answer reads: both roots and the proof between
    them (ProofError unless ``0 <= old_size <= new_size``)."""

    def build(get: NodeGetter) -> None:
        consistency_proof(old_size, new_size, get)
        root_hash(old_size, get)
        root_hash(new_size, get)

    return _recorded(build)


def node_getter(found: Mapping[NodeId, bytes], fallback: NodeGetter) -> NodeGetter:
    """A getter answering from ``found`` (fetched in one batch), and from ``fallback`` for a
    node the batch did not hold (a store that answered partially, or a caller's mistake)."""

    def get(level: int, index: int) -> bytes:
        h = found.get((level, index))
        return fallback(level, index) if h is None else h

    return get


def _origin_suffix(ledger: str, partition: int) -> str:
    return f"/ledger/{ledger}/partition/{partition}"


@dataclass(frozen=True)
class InclusionProof:
    """Entry ``index`` of ``ledger``/``partition`` is in the tree of ``tree_size`` leaves."""

    ledger: str
    partition: int
    index: int
    tree_size: int
    leaf_hash: bytes
    root_hash: bytes
    proof: list[bytes]
    entry: bytes
    checkpoint: str

    def to_json(self) -> dict[str, Any]:
        return {
            "ledger": self.ledger,
            "partition": self.partition,
            "index": self.index,
            "tree_size": self.tree_size,
            "leaf_hash": self.leaf_hash.hex(),
            "root_hash": self.root_hash.hex(),
            "proof": [h.hex() for h in self.proof],
            "entry": base64.b64encode(self.entry).decode(),
            "checkpoint": self.checkpoint,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> InclusionProof:
        try:
            entry = base64.b64decode(_str(data, "entry"), validate=True)
        except (binascii.Error, ValueError):
            raise FormatError("proof field 'entry' is not valid base64") from None
        return cls(
            ledger=_str(data, "ledger"),
            partition=_int(data, "partition"),
            index=_int(data, "index"),
            tree_size=_int(data, "tree_size"),
            leaf_hash=_unhex(data.get("leaf_hash"), "leaf_hash"),
            root_hash=_unhex(data.get("root_hash"), "root_hash"),
            proof=_path(data),
            entry=entry,
            checkpoint=_str(data, "checkpoint"),
        )

    def verify(
        self,
        log_keys: list[VerifierKey],
        witness_keys: tuple[VerifierKey, ...] = (),
        required_witnesses: int = 0,
    ) -> list[str]:
        """Check everything offline; return human-readable facts established.

        Raises VerificationError naming the first check that failed."""
        facts: list[str] = []
        leaf = hashlib.sha256(b"\x00" + self.entry).digest()
        if leaf != self.leaf_hash:
            raise VerificationError("the entry bytes do not hash to the proof's leaf_hash")
        verified = verify_checkpoint(self.checkpoint, log_keys, witness_keys, required_witnesses)
        cp = verified.checkpoint
        facts.append(
            f"checkpoint signed by {verified.log_key.name}: {cp.origin} size {cp.tree_size}"
        )
        if verified.cosignatures:
            facts.append("cosigned by " + ", ".join(c.name for c in verified.cosignatures))
        if not cp.origin.endswith(_origin_suffix(self.ledger, self.partition)):
            raise VerificationError(
                f"checkpoint origin {cp.origin!r} is not the log of ledger {self.ledger!r} "
                f"partition {self.partition}"
            )
        if cp.tree_size != self.tree_size or cp.root_hash != self.root_hash:
            raise VerificationError(
                "the signed checkpoint's size and root differ from the proof's tree_size "
                "and root_hash"
            )
        verify_inclusion(self.leaf_hash, self.index, self.tree_size, self.proof, self.root_hash)
        facts.append(f"entry {self.index} is included in the tree of {self.tree_size} entries")
        try:
            entry = decode_record(self.entry)
        except StreamledgerError:
            facts.append("entry bytes are not a streamledger v1 header (foreign log format)")
        else:
            header = entry.header
            if (header.ledger, header.partition, header.seq) != (
                self.ledger,
                self.partition,
                self.index,
            ):
                raise VerificationError(
                    f"the entry names ledger {header.ledger!r} partition {header.partition} "
                    f"seq {header.seq}, not the proof's {self.ledger!r}/{self.partition}/"
                    f"{self.index}"
                )
            facts.append(
                f"entry: seq {header.seq}, timestamp_ms {header.timestamp_ms}, producer "
                f"{header.producer!r}, payload sha256 {header.payload_hash.hex()}"
            )
        return facts


@dataclass(frozen=True)
class ConsistencyProof:
    """The tree of ``new_size`` leaves extends the tree of ``old_size`` leaves."""

    ledger: str
    partition: int
    old_size: int
    new_size: int
    old_root: bytes
    new_root: bytes
    proof: list[bytes]
    old_checkpoint: str | None = None
    new_checkpoint: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "ledger": self.ledger,
            "partition": self.partition,
            "old_size": self.old_size,
            "new_size": self.new_size,
            "old_root": self.old_root.hex(),
            "new_root": self.new_root.hex(),
            "proof": [h.hex() for h in self.proof],
        }
        if self.old_checkpoint is not None:
            data["old_checkpoint"] = self.old_checkpoint
        if self.new_checkpoint is not None:
            data["new_checkpoint"] = self.new_checkpoint
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ConsistencyProof:
        old_cp = data.get("old_checkpoint")
        new_cp = data.get("new_checkpoint")
        for name, value in (("old_checkpoint", old_cp), ("new_checkpoint", new_cp)):
            if value is not None and not isinstance(value, str):
                raise FormatError(f"proof field {name!r} must be a signed note text")
        return cls(
            ledger=_str(data, "ledger"),
            partition=_int(data, "partition"),
            old_size=_int(data, "old_size"),
            new_size=_int(data, "new_size"),
            old_root=_unhex(data.get("old_root"), "old_root"),
            new_root=_unhex(data.get("new_root"), "new_root"),
            proof=_path(data),
            old_checkpoint=old_cp,
            new_checkpoint=new_cp,
        )

    def verify(
        self,
        log_keys: list[VerifierKey],
        witness_keys: tuple[VerifierKey, ...] = (),
        required_witnesses: int = 0,
    ) -> list[str]:
        facts: list[str] = []
        verify_consistency(self.old_size, self.new_size, self.old_root, self.new_root, self.proof)
        facts.append(
            f"the tree of {self.new_size} entries extends the tree of {self.old_size} entries"
        )
        for label, note, size, root in (
            ("old", self.old_checkpoint, self.old_size, self.old_root),
            ("new", self.new_checkpoint, self.new_size, self.new_root),
        ):
            if note is None:
                facts.append(f"{label} root is not accompanied by a signed checkpoint")
                continue
            verified = verify_checkpoint(note, log_keys, witness_keys, required_witnesses)
            cp = verified.checkpoint
            if not cp.origin.endswith(_origin_suffix(self.ledger, self.partition)):
                raise VerificationError(f"{label} checkpoint names another log: {cp.origin!r}")
            if cp.tree_size != size or cp.root_hash != root:
                raise VerificationError(
                    f"{label} checkpoint does not match {label}_size/{label}_root"
                )
            facts.append(f"{label} checkpoint (size {size}) signed by {verified.log_key.name}")
        return facts


def load_proof(text: str) -> InclusionProof | ConsistencyProof:
    """Parse a proof file written by ``prove inclusion|consistency --json``."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FormatError(f"proof file is not JSON: {exc.msg} at line {exc.lineno}") from None
    if not isinstance(data, dict):
        raise FormatError("proof file must hold a JSON object")
    if "old_size" in data:
        return ConsistencyProof.from_json(data)
    if "leaf_hash" in data:
        return InclusionProof.from_json(data)
    raise FormatError("proof file is neither an inclusion nor a consistency proof")
