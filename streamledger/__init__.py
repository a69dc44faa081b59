"""streamledger: tamper-evident ledgers on Apache Kafka or an embedded SQLite store.

Public names are re-exported here; import them as ``streamledger.X``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from streamledger.backends.base import Backend, LedgerConfig
from streamledger.backends.memory import MemoryBackend
from streamledger.backends.sqlite import SQLiteBackend
from streamledger.consortium import (
    MembershipDocument,
    Org,
    SubmissionRejected,
    append_signed,
    membership_at,
)
from streamledger.core.checkpoint import Checkpoint, sign_checkpoint, verify_checkpoint
from streamledger.core.entry import Entry, EntryHeader, decode_record
from streamledger.core.note import SigningKey, VerifierKey
from streamledger.core.proof import ConsistencyProof, InclusionProof, load_proof
from streamledger.core.verify import Finding, PartitionReport, TrustPolicy
from streamledger.crypto import (
    DecryptedEntry,
    DecryptionError,
    Keyring,
    LedgerEncryption,
    ReaderKey,
    ReaderPublicKey,
)
from streamledger.errors import (
    BackendUnavailable,
    ConfigError,
    FormatError,
    ProofError,
    StreamledgerError,
    TamperDetected,
    UnknownVersionError,
    VerificationError,
    WitnessShortfall,
    WriteConflict,
)
from streamledger.keys import KeyStore
from streamledger.ledger import AppendItem, Ledger, LedgerReport, Receipt, append_atomically

if TYPE_CHECKING:
    from streamledger.backends.kafka import KafkaBackend
    from streamledger.consumer import VerifiedConsumer, VerifiedEntry
    from streamledger.core.bundle import WitnessAlert
    from streamledger.logging import LedgerHandler
    from streamledger.services.witness import Witness

__version__ = "0.1.0"

__all__ = [
    "AppendItem",
    "Backend",
    "BackendUnavailable",
    "Checkpoint",
    "ConfigError",
    "ConsistencyProof",
    "DecryptedEntry",
    "DecryptionError",
    "Entry",
    "EntryHeader",
    "Finding",
    "FormatError",
    "InclusionProof",
    "KafkaBackend",
    "KeyStore",
    "Keyring",
    "Ledger",
    "LedgerConfig",
    "LedgerEncryption",
    "LedgerHandler",
    "LedgerReport",
    "MembershipDocument",
    "MemoryBackend",
    "Org",
    "PartitionReport",
    "ProofError",
    "ReaderKey",
    "ReaderPublicKey",
    "Receipt",
    "SQLiteBackend",
    "SigningKey",
    "StreamledgerError",
    "SubmissionRejected",
    "TamperDetected",
    "TrustPolicy",
    "UnknownVersionError",
    "VerificationError",
    "VerifiedConsumer",
    "VerifiedEntry",
    "VerifierKey",
    "Witness",
    "WitnessAlert",
    "WitnessShortfall",
    "WriteConflict",
    "append_atomically",
    "append_signed",
    "decode_record",
    "load_proof",
    "membership_at",
    "sign_checkpoint",
    "verify_checkpoint",
]


_LAZY = {
    "KafkaBackend": "streamledger.backends.kafka",
    "LedgerHandler": "streamledger.logging",
    "VerifiedConsumer": "streamledger.consumer",
    "VerifiedEntry": "streamledger.consumer",
    "Witness": "streamledger.services.witness",
    "WitnessAlert": "streamledger.core.bundle",
}


def __getattr__(name: str) -> Any:
    # Kafka-facing parts pull in confluent-kafka; load them only when asked for.
    module = _LAZY.get(name)
    if module is not None:
        import importlib

        return getattr(importlib.import_module(module), name)
    raise AttributeError(f"module 'streamledger' has no attribute {name!r}")
