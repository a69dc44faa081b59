"""Payload encryption: AES-256-GCM envelopes bound to their entry, per-ledger data keys in
epochs wrapped for each reader with HPKE (X25519), per-subject keys for crypto-shredding.

Verification never needs any of this: an entry's header commits to the SHA-256 of the stored
ciphertext. See docs/encryption.md.
"""

from streamledger.crypto.envelope import DecryptionError, Envelope, parse_envelope
from streamledger.crypto.keyring import (
    DecryptedEntry,
    EpochManifest,
    Keyring,
    LedgerEncryption,
)
from streamledger.crypto.readers import ReaderKey, ReaderPublicKey
from streamledger.crypto.subjects import (
    KafkaSubjectStore,
    MemorySubjectStore,
    SQLiteSubjectStore,
    SubjectKeyStore,
    subject_store_for,
)

__all__ = [
    "DecryptedEntry",
    "DecryptionError",
    "Envelope",
    "EpochManifest",
    "KafkaSubjectStore",
    "Keyring",
    "LedgerEncryption",
    "MemorySubjectStore",
    "ReaderKey",
    "ReaderPublicKey",
    "SQLiteSubjectStore",
    "SubjectKeyStore",
    "parse_envelope",
    "subject_store_for",
]
