"""C2SP transparency-log checkpoints (https://c2sp.org/tlog-checkpoint) and their
witness cosignatures (https://c2sp.org/tlog-cosignature, Ed25519 cosignature/v1).

A checkpoint is a signed note whose text is::

    <origin>
    <tree size, decimal, no leading zeros>
    <base64 of the 32-byte RFC 6962 root hash>
    [extension lines, each non-empty]

The log signs it with its note key; witnesses append cosignature lines (key type 0x04).
:func:`verify_checkpoint` checks the log signature, counts valid cosignatures by trusted
witnesses and enforces a quorum.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass

from streamledger.core.note import (
    KEY_TYPE_COSIGNATURE,
    SigningKey,
    VerifierKey,
    open_note,
    parse_note,
    sign_note,
    signature_line,
)
from streamledger.errors import ConfigError, FormatError, VerificationError, WitnessShortfall

__all__ = [
    "Checkpoint",
    "Cosignature",
    "VerifiedCheckpoint",
    "cosign_checkpoint",
    "sign_checkpoint",
    "verify_checkpoint",
]

_SIZE = re.compile(r"0|[1-9][0-9]*")
_MAX_SIZE = 2**64 - 1


@dataclass(frozen=True)
class Checkpoint:
    """A log's tree head: origin, tree size, root hash and optional extension lines.

    The constructor raises ``ValueError`` for values that cannot be written as a checkpoint.
    """

    origin: str
    tree_size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.origin or "\n" in self.origin:
            raise ValueError("checkpoint origin must be a non-empty single line")
        if not 0 <= self.tree_size <= _MAX_SIZE:
            raise ValueError(f"checkpoint tree size {self.tree_size} is out of range")
        if len(self.root_hash) != 32:
            raise ValueError(f"checkpoint root hash must be 32 bytes, got {len(self.root_hash)}")
        object.__setattr__(self, "extensions", tuple(self.extensions))
        for ext in self.extensions:
            if not ext or "\n" in ext:
                raise ValueError("checkpoint extension lines must be non-empty single lines")

    def to_text(self) -> str:
        """The checkpoint note text (the body that gets signed), ending in a newline."""
        lines = [
            self.origin,
            str(self.tree_size),
            base64.b64encode(self.root_hash).decode("ascii"),
            *self.extensions,
        ]
        return "\n".join(lines) + "\n"

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """Parse checkpoint note text strictly; :class:`FormatError` says what is wrong."""
        if not text.endswith("\n"):
            raise FormatError("checkpoint text must end with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise FormatError("checkpoint text must have at least 3 lines: origin, size, root")
        origin, size_text, root_text, *extensions = lines
        if not origin:
            raise FormatError("checkpoint origin line is empty")
        if not _SIZE.fullmatch(size_text) or int(size_text) > _MAX_SIZE:
            raise FormatError(
                f"checkpoint for {origin}: tree size {size_text!r} is not a decimal number "
                "without sign or leading zeros"
            )
        try:
            root = base64.b64decode(root_text.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise FormatError(
                f"checkpoint for {origin}: root hash {root_text!r} is not valid base64"
            ) from None
        if len(root) != 32 or base64.b64encode(root).decode("ascii") != root_text:
            raise FormatError(
                f"checkpoint for {origin}: root hash must be the base64 of 32 bytes, "
                f"got {len(root)} bytes"
            )
        if any(not ext for ext in extensions):
            raise FormatError(f"checkpoint for {origin}: empty extension line")
        return cls(origin, int(size_text), root, tuple(extensions))


@dataclass(frozen=True)
class Cosignature:
    """A cosignature that verified: witness name, 4-byte key ID and POSIX timestamp."""

    name: str
    key_hash: bytes
    timestamp: int


@dataclass(frozen=True)
class VerifiedCheckpoint:
    """A checkpoint whose log signature verified, with the cosignatures that verified."""

    checkpoint: Checkpoint
    text: str
    log_key: VerifierKey
    cosignatures: tuple[Cosignature, ...] = ()

    @property
    def cosigners(self) -> tuple[str, ...]:
        """Names of the witnesses whose cosignatures verified."""
        return tuple(c.name for c in self.cosignatures)


def sign_checkpoint(cp: Checkpoint, key: SigningKey) -> str:
    """The signed checkpoint note, signed by the log's ``key``."""
    return sign_note(cp.to_text(), key)


def cosign_checkpoint(
    note_or_body: str | Checkpoint,
    witness_key: SigningKey,
    timestamp: int | None = None,
) -> str:
    """A witness cosignature line (ending in a newline) to append to the checkpoint note.

    ``note_or_body`` is the signed checkpoint note, its text, or a :class:`Checkpoint`. This
    does not check the log's signature or consistency: a witness must do that first.
    ``timestamp`` defaults to now. Raises :class:`ConfigError` if ``witness_key`` is not a
    cosigning key (type 0x04), :class:`FormatError` if the body is not a checkpoint.
    """
    if witness_key.key_type != KEY_TYPE_COSIGNATURE:
        raise ConfigError(
            f"key {witness_key.name!r} is not a cosignature key (type 0x04); "
            "generate it with key_type=KEY_TYPE_COSIGNATURE"
        )
    if isinstance(note_or_body, Checkpoint):
        text = note_or_body.to_text()
    else:
        text = parse_note(note_or_body)[0] if "\n\n" in note_or_body else note_or_body
        Checkpoint.parse(text)
    return signature_line(text, witness_key, timestamp=timestamp) + "\n"


def verify_checkpoint(
    note: str,
    log_key: VerifierKey | Sequence[VerifierKey],
    witness_keys: Sequence[VerifierKey] = (),
    required_witnesses: int = 0,
    *,
    origin: str | None = None,
) -> VerifiedCheckpoint:
    """Verify a checkpoint note and its cosignatures.

    ``log_key`` is the log's key, or a sequence of acceptable log keys (e.g. during key
    rotation): a signature by at least one must verify. ``witness_keys`` must be cosignature
    keys (type 0x04). Signatures by unknown keys are ignored; a bad signature by any known key
    (log or witness) rejects the note. If ``origin`` is given the checkpoint's origin must equal
    it.

    Raises :class:`VerificationError` (no valid log signature, a bad signature by a known key,
    fewer than ``required_witnesses`` valid cosignatures, wrong origin), :class:`FormatError`
    (malformed note or checkpoint text) or :class:`ConfigError` (a witness key that is not a
    cosignature key).
    """
    log_keys = [log_key] if isinstance(log_key, VerifierKey) else list(log_key)
    if not log_keys:
        raise ConfigError("verify_checkpoint needs at least one log key")
    for w in witness_keys:
        if w.key_type != KEY_TYPE_COSIGNATURE:
            raise ConfigError(f"witness key {w.name!r} is not a cosignature key (type 0x04)")
    witnesses = [w for w in dict.fromkeys(witness_keys) if w not in log_keys]
    opened = open_note(note, [*dict.fromkeys(log_keys), *witnesses])
    verified = {(s.name, s.key_hash): s for s in opened.signatures}

    used_log_key = next((k for k in log_keys if (k.name, k.key_hash) in verified), None)
    if used_log_key is None:
        names = ", ".join(k.name for k in log_keys)
        raise VerificationError(f"checkpoint is not signed by the log key ({names})")
    cp = Checkpoint.parse(opened.text)
    if origin is not None and cp.origin != origin:
        raise VerificationError(f"checkpoint origin is {cp.origin!r}, expected {origin!r}")

    cosignatures = tuple(
        Cosignature(w.name, w.key_hash, int.from_bytes(sig.signature[:8], "big"))
        for w in witnesses
        if (sig := verified.get((w.name, w.key_hash))) is not None
    )
    if len(cosignatures) < required_witnesses:
        raise WitnessShortfall(
            f"checkpoint for {cp.origin} size {cp.tree_size} has {len(cosignatures)} valid "
            f"cosignature(s), {required_witnesses} required"
        )
    return VerifiedCheckpoint(
        checkpoint=cp, text=opened.text, log_key=used_log_key, cosignatures=cosignatures
    )
