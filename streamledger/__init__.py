"""streamledger: tamper-evident ledgers on Apache Kafka or an embedded SQLite store.

Public names are re-exported here; import them as ``streamledger.X``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from streamledger.backends.base import Backend, LedgerConfig
from streamledger.backends.memory import MemoryBackend
from streamledger.backends.sqlite import SQLiteBackend
from streamledger.core.checkpoint import Checkpoint, sign_checkpoint, verify_checkpoint
from streamledger.core.entry import Entry, EntryHeader, decode_record
from streamledger.core.note import SigningKey, VerifierKey
from streamledger.core.proof import ConsistencyProof, InclusionProof, load_proof
from streamledger.core.verify import Finding, PartitionReport, TrustPolicy
from streamledger.errors import (
    BackendUnavailable,
    ConfigError,
    FormatError,
    ProofError,
    StreamledgerError,
    TamperDetected,
    UnknownVersionError,
    VerificationError,
    WriteConflict,
)
from streamledger.keys import KeyStore
from streamledger.ledger import AppendItem, Ledger, LedgerReport, Receipt

if TYPE_CHECKING:
    from streamledger.backends.kafka import KafkaBackend

__version__ = "0.1.0"

__all__ = [
    "AppendItem",
    "Backend",
    "BackendUnavailable",
    "Checkpoint",
    "ConfigError",
    "ConsistencyProof",
    "Entry",
    "EntryHeader",
    "Finding",
    "FormatError",
    "InclusionProof",
    "KafkaBackend",
    "KeyStore",
    "Ledger",
    "LedgerConfig",
    "LedgerReport",
    "MemoryBackend",
    "PartitionReport",
    "ProofError",
    "Receipt",
    "SQLiteBackend",
    "SigningKey",
    "StreamledgerError",
    "TamperDetected",
    "TrustPolicy",
    "UnknownVersionError",
    "VerificationError",
    "VerifierKey",
    "WriteConflict",
    "decode_record",
    "load_proof",
    "sign_checkpoint",
    "verify_checkpoint",
]


def __getattr__(name: str) -> Any:
    # The Kafka backend pulls in confluent-kafka; load it only when asked for.
    if name == "KafkaBackend":
        from streamledger.backends.kafka import KafkaBackend

        return KafkaBackend
    raise AttributeError(f"module 'streamledger' has no attribute {name!r}")
