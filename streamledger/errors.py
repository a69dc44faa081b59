"""The one exception hierarchy of streamledger.

    StreamledgerError               root: catch this to catch everything we raise
    ├── ConfigError                 bad option, unknown ledger, missing or unreadable key file
    ├── FormatError                 bytes that are not what they claim (entry, note, vkey, proof)
    │   └── UnknownVersionError     a well-formed entry of a version this code does not know
    ├── VerificationError           a proof, signature or checkpoint does not verify
    │   ├── TamperDetected          a ledger's stored history was altered (carries findings)
    │   └── WitnessShortfall        a checkpoint has fewer valid witness cosignatures than required
    ├── ProofError                  a proof cannot be produced (index or size out of range)
    ├── WriteConflict               another writer extended the partition first (or fenced us)
    └── BackendUnavailable          the store or broker cannot be reached or used

Every message names the thing that is wrong so a user can act on it. No message ever
contains private key material.
"""

from __future__ import annotations

from typing import Any


class StreamledgerError(Exception):
    """Root of every error streamledger raises on purpose."""


class ConfigError(StreamledgerError):
    """A setting, ledger name, key name or key file is missing or invalid."""


class FormatError(StreamledgerError):
    """Bytes or text do not parse as the format they are supposed to be in."""


class UnknownVersionError(FormatError):
    """An entry or document announces a version this code does not understand."""


class VerificationError(StreamledgerError):
    """A proof, a signature or a checkpoint failed to verify."""


class TamperDetected(VerificationError):
    """Verification of a stored ledger found tampering; ``findings`` holds the evidence."""

    def __init__(self, message: str, findings: list[Any] | None = None) -> None:
        super().__init__(message)
        self.findings = list(findings or [])


class ProofError(StreamledgerError):
    """A proof was asked for an index or size the log cannot prove."""


class WitnessShortfall(VerificationError):
    """A validly signed checkpoint lacks the required number of witness cosignatures."""


class WriteConflict(StreamledgerError):
    """Another writer extended the partition since we read its head, or fenced this writer."""


class BackendUnavailable(StreamledgerError):
    """The storage backend (SQLite file, Kafka broker) cannot be reached or used."""
