"""The small contract every storage backend implements.

A backend stores, per ledger and partition: the entry records in order, the perfect Merkle
subtree hashes of the tree over them (so a proof costs O(log n) reads), and the signed
checkpoints. It knows nothing about hashing or signatures: the ledger layer
(:mod:`streamledger.ledger`) builds records and nodes with the pure core and hands them over;
the verifier reads them back and trusts nothing it reads.

Backends: :mod:`.memory` (tests), :mod:`.sqlite` (embedded default), :mod:`.kafka`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from streamledger.core.entry import StoredRecord
from streamledger.core.merkle import Node, NodeId

#: Document kinds are short names (they become Kafka topic suffixes).
DOCUMENT_KIND_RE = r"^[a-z][a-z0-9-]{0,30}$"

DEFAULT_ORIGIN = "streamledger.local"


def check_document_kind(kind: str) -> str:
    """Return ``kind`` if it is a valid document kind, else raise ConfigError."""
    import re

    from streamledger.errors import ConfigError

    if not re.match(DOCUMENT_KIND_RE, kind):
        raise ConfigError(f"invalid document kind {kind!r}: use 1-31 of a-z 0-9 -")
    return kind


@dataclass(frozen=True)
class LedgerConfig:
    """What ``init`` records about a ledger.

    ``origin`` is the prefix of each partition's checkpoint origin line:
    ``<origin>/ledger/<name>/partition/<p>``. ``log_vkey`` is the verifier key of
    ``signing_key`` as recorded at init (a hint: auditors pass their own ``--vkey``).
    ``options`` carries backend settings (Kafka replication, retention, ...).
    """

    name: str
    partitions: int = 1
    origin: str = DEFAULT_ORIGIN
    signing_key: str | None = None
    log_vkey: str | None = None
    options: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        """The canonical JSON a backend stores for this ledger."""
        return json.dumps(
            {
                "name": self.name,
                "partitions": self.partitions,
                "origin": self.origin,
                "signing_key": self.signing_key,
                "log_vkey": self.log_vkey,
                "options": self.options,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> LedgerConfig:
        """Parse :meth:`to_json` output; ValueError/KeyError/TypeError if it is damaged."""
        data = json.loads(text)
        return cls(
            name=data["name"],
            partitions=int(data["partitions"]),
            origin=data["origin"],
            signing_key=data.get("signing_key"),
            log_vkey=data.get("log_vkey"),
            options=dict(data.get("options") or {}),
        )

    def checkpoint_origin(self, partition: int) -> str:
        return f"{self.origin}/ledger/{self.name}/partition/{partition}"


@dataclass(frozen=True)
class PartitionHead:
    """The state a writer needs to extend a partition's chain and tree."""

    size: int
    last_leaf_hash: bytes | None


@dataclass(frozen=True)
class AppendBatch:
    """An all-or-nothing append to one partition.

    ``first_seq`` must equal the partition's current size (optimistic concurrency: a
    backend refuses a batch built on a stale head). ``records`` are the encoded entries
    for seqs ``first_seq, first_seq+1, ...``; ``keys`` their partition keys (or None);
    ``nodes`` every perfect subtree the batch completes (leaves included), in no particular
    order; the ledger hands a :class:`~streamledger.core.merkle.NodeRuns` (the nodes grouped
    by level), which a store that writes runs can take as they are.
    """

    first_seq: int
    records: Sequence[bytes]
    keys: Sequence[bytes | None]
    nodes: Sequence[Node]


@runtime_checkable
class Backend(Protocol):
    """Storage of many ledgers. All methods raise :class:`~streamledger.errors.StreamledgerError`
    subclasses (``ConfigError`` for unknown ledgers, ``BackendUnavailable`` for I/O)."""

    def create_ledger(self, config: LedgerConfig) -> None: ...

    def ledger_config(self, ledger: str) -> LedgerConfig: ...

    def list_ledgers(self) -> list[str]: ...

    def head(self, ledger: str, partition: int) -> PartitionHead: ...

    def append(self, ledger: str, batches: Mapping[int, AppendBatch]) -> dict[int, list[int]]:
        """Store batches for several partitions all or nothing; return each record's offset.

        Raises :class:`~streamledger.errors.WriteConflict` if a batch's ``first_seq`` is not
        the partition's current size."""
        ...

    def read(
        self, ledger: str, partition: int, start: int = 0, end: int | None = None
    ) -> Iterator[StoredRecord]:
        """Records of seqs ``[start, end)`` as the honest writer stored them."""
        ...

    def scan(self, ledger: str, partition: int) -> Iterator[StoredRecord]:
        """Every record physically present, in storage order (for verification)."""
        ...

    def get_node(self, ledger: str, partition: int, level: int, index: int) -> bytes: ...

    def get_nodes(self, ledger: str, partition: int, ids: Iterable[NodeId]) -> dict[NodeId, bytes]:
        """The hashes of several nodes at once: ``(level, index) -> hash`` for every id.

        A proof needs a few dozen nodes; a backend answers them in one round trip (one
        query) where it can. Raises ``BackendUnavailable`` if one is missing, as
        :meth:`get_node` does. This default asks :meth:`get_node` for each (a backend class
        that subclasses :class:`Backend` inherits it; :func:`get_nodes` serves one that
        does not define the method at all)."""
        return get_nodes_one_by_one(self, ledger, partition, ids)

    def add_checkpoint(self, ledger: str, partition: int, tree_size: int, note: str) -> None: ...

    def checkpoints(self, ledger: str, partition: int) -> list[str]:
        """Every signed checkpoint note stored for the partition, oldest first."""
        ...

    def put_document(self, ledger: str, kind: str, key: str, value: bytes) -> None:
        """Append a side document of ``kind`` (wrapped data keys, witness cosignatures,
        membership changes, ...) beside the ledger. Documents are never hashed into the log;
        whoever reads them verifies them by their own signatures."""
        ...

    def documents(self, ledger: str, kind: str) -> list[tuple[str, bytes]]:
        """Every ``(key, value)`` document of ``kind``, oldest first."""
        ...

    def close(self) -> None: ...


def get_nodes_one_by_one(
    backend: Backend, ledger: str, partition: int, ids: Iterable[NodeId]
) -> dict[NodeId, bytes]:
    """:meth:`Backend.get_nodes` through one :meth:`Backend.get_node` call per distinct id."""
    return {
        (level, index): backend.get_node(ledger, partition, level, index)
        for level, index in dict.fromkeys(ids)
    }


def get_nodes(
    backend: Backend, ledger: str, partition: int, ids: Iterable[NodeId]
) -> dict[NodeId, bytes]:
    """``backend.get_nodes(...)``, or the one-by-one default for a backend written before
    the method existed (the protocol is structural: such a backend need not subclass it)."""
    batch = getattr(backend, "get_nodes", None)
    if batch is None:
        return get_nodes_one_by_one(backend, ledger, partition, ids)
    return batch(ledger, partition, ids)
