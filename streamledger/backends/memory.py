"""In-memory backend: a real, cheap implementation for tests (ours and users')."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from streamledger.backends.base import (
    AppendBatch,
    LedgerConfig,
    NodeId,
    PartitionHead,
    check_document_kind,
)
from streamledger.core.entry import StoredRecord
from streamledger.errors import BackendUnavailable, ConfigError, WriteConflict


@dataclass
class _Partition:
    records: list[bytes] = field(default_factory=list)
    nodes: dict[tuple[int, int], bytes] = field(default_factory=dict)
    checkpoints: list[str] = field(default_factory=list)


class MemoryBackend:
    """Keeps everything in Python lists. ``partition_records`` exposes the list for tampering."""

    def __init__(self) -> None:
        self._configs: dict[str, LedgerConfig] = {}
        self._parts: dict[tuple[str, int], _Partition] = {}
        self._lock = threading.Lock()
        self._documents: dict[tuple[str, str], list[tuple[str, bytes]]] = {}

    def _part(self, ledger: str, partition: int) -> _Partition:
        try:
            return self._parts[(ledger, partition)]
        except KeyError:
            self.ledger_config(ledger)
            raise ConfigError(f"ledger {ledger!r} has no partition {partition}") from None

    def partition_records(self, ledger: str, partition: int) -> list[bytes]:
        """The live list of stored records (tests tamper with it directly)."""
        return self._part(ledger, partition).records

    def create_ledger(self, config: LedgerConfig) -> None:
        with self._lock:
            if config.name in self._configs:
                raise ConfigError(f"ledger {config.name!r} already exists")
            self._configs[config.name] = config
            for p in range(config.partitions):
                self._parts[(config.name, p)] = _Partition()

    def ledger_config(self, ledger: str) -> LedgerConfig:
        try:
            return self._configs[ledger]
        except KeyError:
            raise ConfigError(f"no ledger named {ledger!r}") from None

    def list_ledgers(self) -> list[str]:
        return sorted(self._configs)

    def head(self, ledger: str, partition: int) -> PartitionHead:
        part = self._part(ledger, partition)
        size = len(part.records)
        return PartitionHead(size, part.nodes.get((0, size - 1)) if size else None)

    def append(self, ledger: str, batches: Mapping[int, AppendBatch]) -> dict[int, list[int]]:
        with self._lock:
            parts = {p: self._part(ledger, p) for p in batches}
            for p, batch in batches.items():
                if len(parts[p].records) != batch.first_seq:
                    raise WriteConflict(
                        f"ledger {ledger!r} partition {p} has {len(parts[p].records)} entries, "
                        f"but the batch starts at seq {batch.first_seq}"
                    )
            result: dict[int, list[int]] = {}
            for p, batch in batches.items():
                part = parts[p]
                start = len(part.records)
                part.records.extend(batch.records)
                for level, index, node in batch.nodes:
                    part.nodes[(level, index)] = node
                result[p] = list(range(start, len(part.records)))
            return result

    def read(
        self, ledger: str, partition: int, start: int = 0, end: int | None = None
    ) -> Iterator[StoredRecord]:
        records = self._part(ledger, partition).records
        stop = len(records) if end is None else min(end, len(records))
        for pos in range(start, stop):
            yield StoredRecord(pos, records[pos])

    def scan(self, ledger: str, partition: int) -> Iterator[StoredRecord]:
        return self.read(ledger, partition)

    def get_node(self, ledger: str, partition: int, level: int, index: int) -> bytes:
        try:
            return self._part(ledger, partition).nodes[(level, index)]
        except KeyError:
            raise BackendUnavailable(
                f"Merkle node level {level} index {index} missing for {ledger!r}/{partition}"
            ) from None

    def get_nodes(self, ledger: str, partition: int, ids: Iterable[NodeId]) -> dict[NodeId, bytes]:
        nodes = self._part(ledger, partition).nodes
        found: dict[NodeId, bytes] = {}
        for level, index in ids:
            try:
                found[(level, index)] = nodes[(level, index)]
            except KeyError:
                raise BackendUnavailable(
                    f"Merkle node level {level} index {index} missing for {ledger!r}/{partition}"
                ) from None
        return found

    def add_checkpoint(self, ledger: str, partition: int, tree_size: int, note: str) -> None:
        self._part(ledger, partition).checkpoints.append(note)

    def checkpoints(self, ledger: str, partition: int) -> list[str]:
        return list(self._part(ledger, partition).checkpoints)

    def put_document(self, ledger: str, kind: str, key: str, value: bytes) -> None:
        self.ledger_config(ledger)
        check_document_kind(kind)
        with self._lock:
            self._documents.setdefault((ledger, kind), []).append((key, bytes(value)))

    def documents(self, ledger: str, kind: str) -> list[tuple[str, bytes]]:
        self.ledger_config(ledger)
        return list(self._documents.get((ledger, kind), []))

    def close(self) -> None:
        pass
