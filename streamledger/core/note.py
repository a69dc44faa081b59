"""C2SP signed notes (https://c2sp.org/signed-note) with Ed25519 keys.

A signed note is a text ending in a newline, a blank line, then one or more signature lines::

    <text, ending in "\\n">
    <blank line>
    — <key name> base64(4-byte key ID || signature)

Two signature types are supported, both over Ed25519 (RFC 8032, via ``cryptography``):

* ``KEY_TYPE_ED25519`` (0x01): plain note signatures, the signature is over the note text.
* ``KEY_TYPE_COSIGNATURE`` (0x04): timestamped witness cosignatures
  (https://c2sp.org/tlog-cosignature, v1). The signature bytes are
  ``timestamp (uint64 big-endian) || Ed25519 signature`` and the signed message is
  ``"cosignature/v1\\ntime <timestamp>\\n" + note text``.

Key texts follow golang.org/x/mod/sumdb/note:

* verifier key (vkey): ``<name>+<key ID, 8 hex digits>+base64(type || 32-byte public key)``
* private key: ``PRIVATE+KEY+<name>+<key ID>+base64(type || 32-byte Ed25519 seed)``

with key ID = SHA-256(name || "\\n" || type || public key)[:4].

Opening a note (:func:`open_note`) follows the spec: signatures by unknown keys are ignored,
a signature by a known key (same name *and* key ID) that fails to verify rejects the whole
note, and at least one signature by a known key must verify. Unlike Go's ``note.Open``, which
verifies only the first of several lines by the same key, every line by a known key is checked.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from streamledger.errors import ConfigError, FormatError, VerificationError

__all__ = [
    "KEY_TYPE_COSIGNATURE",
    "KEY_TYPE_ED25519",
    "MAX_SIGNATURES",
    "NoteSignature",
    "OpenedNote",
    "SigningKey",
    "VerifierKey",
    "add_signature",
    "cosignature_message",
    "key_hash",
    "open_note",
    "parse_note",
    "sign_note",
    "signature_line",
    "validate_key_name",
]

KEY_TYPE_ED25519 = 0x01
"""Signature type of plain Ed25519 note signatures (c2sp.org/signed-note)."""

KEY_TYPE_COSIGNATURE = 0x04
"""Signature type of timestamped Ed25519 cosignatures (c2sp.org/tlog-cosignature v1)."""

MAX_SIGNATURES = 100
"""A note with more signature lines than this is rejected (same cap as Go's note.Open)."""

_KEY_TYPES = {KEY_TYPE_ED25519: "Ed25519", KEY_TYPE_COSIGNATURE: "Ed25519 cosignature/v1"}
_SIG_PREFIX = "\u2014 "  # em dash, space
_HEX8 = re.compile(r"[0-9a-fA-F]{8}")
_MAX_TIMESTAMP = 2**63 - 1
_ED25519_SIG_LEN = 64
_TIMESTAMP_LEN = 8


def validate_key_name(name: str) -> None:
    """Raise ``ValueError`` unless ``name`` is a valid key name.

    Key names must be non-empty and contain no Unicode space, no '+' and (stricter than the
    spec, which forbids them in notes anyway) no control character.
    """
    if not name:
        raise ValueError("key name is empty")
    if "+" in name:
        raise ValueError(f"key name {name!r} contains '+'")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in name):
        raise ValueError(f"key name {name!r} contains a space or control character")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"key name {name!r} is not valid Unicode") from None


def _is_valid_name(name: str) -> bool:
    try:
        validate_key_name(name)
    except ValueError:
        return False
    return True


def key_hash(name: str, key_type: int, public_key: bytes) -> bytes:
    """The 4-byte key ID: SHA-256(name || "\\n" || key_type || public_key)[:4]."""
    data = name.encode("utf-8") + b"\n" + bytes([key_type]) + public_key
    return hashlib.sha256(data).digest()[:4]


def cosignature_message(text: bytes, timestamp: int) -> bytes:
    """The message a tlog-cosignature/v1 signs: header and time lines, then the note text."""
    return f"cosignature/v1\ntime {timestamp}\n".encode() + text


def _b64decode(value: str) -> bytes:
    """Strict standard base64 (RFC 4648 section 4, padded); ``ValueError`` otherwise."""
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError("not valid base64") from None


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _check_timestamp(timestamp: int) -> None:
    if not 0 <= timestamp <= _MAX_TIMESTAMP:
        raise ValueError(f"cosignature timestamp {timestamp} is outside 0..2^63-1")


class VerifierKey:
    """A public key that verifies note signatures of one key type, known by name and key ID."""

    __slots__ = ("_name", "_key_type", "_public", "_key_hash", "_key")

    def __init__(self, name: str, key_type: int, public_bytes: bytes) -> None:
        """Build a verifier from its parts; ``ValueError`` if any part is invalid."""
        validate_key_name(name)
        if key_type not in _KEY_TYPES:
            raise ValueError(f"unknown key type 0x{key_type:02x}")
        if len(public_bytes) != 32:
            raise ValueError(f"Ed25519 public key must be 32 bytes, got {len(public_bytes)}")
        self._name = name
        self._key_type = key_type
        self._public = bytes(public_bytes)
        self._key_hash = key_hash(name, key_type, self._public)
        self._key = Ed25519PublicKey.from_public_bytes(self._public)

    @classmethod
    def parse(cls, vkey_text: str) -> VerifierKey:
        """Parse ``name+hash+base64(type||pubkey)``; surrounding whitespace is ignored.

        Raises :class:`FormatError` naming what is wrong (key name, key hash, base64, key type,
        key length).
        """
        text = vkey_text.strip()
        parts = text.split("+", 2)
        if len(parts) != 3:
            raise FormatError("verifier key must have the form <name>+<hash>+<base64 key>")
        name, hash_hex, key_b64 = parts
        if not _is_valid_name(name):
            raise FormatError(f"verifier key has an invalid key name {name!r}")
        if not _HEX8.fullmatch(hash_hex):
            raise FormatError(
                f"verifier key {name!r}: key hash {hash_hex!r} is not 8 hexadecimal digits"
            )
        try:
            raw = _b64decode(key_b64)
        except ValueError:
            raise FormatError(f"verifier key {name!r}: key is not valid base64") from None
        if not raw:
            raise FormatError(f"verifier key {name!r}: key is empty")
        key_type, public = raw[0], raw[1:]
        if key_type not in _KEY_TYPES:
            raise FormatError(f"verifier key {name!r}: unknown key type 0x{key_type:02x}")
        if len(public) != 32:
            raise FormatError(
                f"verifier key {name!r}: wrong key length {len(public)}, "
                "an Ed25519 public key is 32 bytes"
            )
        try:
            key = cls(name, key_type, public)
        except ValueError as exc:
            raise FormatError(f"verifier key {name!r}: {exc}") from None
        if key.key_hash != bytes.fromhex(hash_hex):
            raise FormatError(
                f"verifier key {name!r}: bad key hash {hash_hex.lower()}, "
                f"the key's hash is {key.key_hash.hex()}"
            )
        return key

    @property
    def name(self) -> str:
        """The key name (for a log, usually its origin)."""
        return self._name

    @property
    def key_hash(self) -> bytes:
        """The 4-byte key ID."""
        return self._key_hash

    @property
    def key_type(self) -> int:
        """``KEY_TYPE_ED25519`` (0x01) or ``KEY_TYPE_COSIGNATURE`` (0x04)."""
        return self._key_type

    @property
    def public_bytes(self) -> bytes:
        """The raw 32-byte Ed25519 public key."""
        return self._public

    def verify(self, message: bytes, signature: bytes) -> bool:
        """Whether ``signature`` (as found in a signature line, after the key ID) is valid.

        ``message`` is the note text. For a cosignature key ``signature`` is
        ``timestamp || Ed25519 signature`` and the timestamped message is what is checked.
        """
        if self._key_type == KEY_TYPE_COSIGNATURE:
            if len(signature) != _TIMESTAMP_LEN + _ED25519_SIG_LEN:
                return False
            timestamp = int.from_bytes(signature[:_TIMESTAMP_LEN], "big")
            if timestamp > _MAX_TIMESTAMP:
                return False
            message = cosignature_message(message, timestamp)
            signature = signature[_TIMESTAMP_LEN:]
        if len(signature) != _ED25519_SIG_LEN:
            return False
        try:
            self._key.verify(signature, message)
        except InvalidSignature:
            return False
        return True

    def matches(self, name: str, key_id: bytes) -> bool:
        """Whether a signature line's name and key ID designate this key."""
        return name == self._name and key_id == self._key_hash

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        # Public keys travel to verification worker processes as their vkey text.
        return (VerifierKey.parse, (str(self),))

    def __str__(self) -> str:
        key = _b64encode(bytes([self._key_type]) + self._public)
        return f"{self._name}+{self._key_hash.hex()}+{key}"

    def __repr__(self) -> str:
        return f"VerifierKey({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, VerifierKey):
            return NotImplemented
        return (self._name, self._key_type, self._public) == (
            other._name,
            other._key_type,
            other._public,
        )

    def __hash__(self) -> int:
        return hash((self._name, self._key_type, self._public))


class SigningKey:
    """A private Ed25519 signing key with a name: a note key (0x01) or a cosigning key (0x04).

    The secret never shows in ``repr``/``str``; :meth:`private_text` is the only way out.
    """

    __slots__ = ("_private", "_verifier")

    def __init__(self, name: str, private_key: Ed25519PrivateKey, key_type: int) -> None:
        """Wrap an existing key; ``ValueError`` on a bad name or key type."""
        public = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self._verifier = VerifierKey(name, key_type, public)
        self._private = private_key

    @classmethod
    def generate(cls, name: str, key_type: int = KEY_TYPE_ED25519) -> SigningKey:
        """A fresh random key. Use ``key_type=KEY_TYPE_COSIGNATURE`` for a witness key.

        Raises :class:`ConfigError` for an invalid name or key type.
        """
        try:
            return cls(name, Ed25519PrivateKey.generate(), key_type)
        except ValueError as exc:
            raise ConfigError(f"cannot generate signing key: {exc}") from None

    @classmethod
    def from_private_text(cls, text: str) -> SigningKey:
        """Parse ``PRIVATE+KEY+name+hash+base64(type||seed)``; surrounding whitespace ignored.

        Raises :class:`ConfigError`; the message never contains the key text.
        """
        parts = text.strip().split("+", 4)
        if len(parts) != 5 or parts[0] != "PRIVATE" or parts[1] != "KEY":
            raise ConfigError(
                "private key text is malformed: expected PRIVATE+KEY+<name>+<hash>+<base64 key>"
            )
        _, _, name, hash_hex, key_b64 = parts
        if not _is_valid_name(name):
            raise ConfigError("private key text has an invalid key name")
        if not _HEX8.fullmatch(hash_hex):
            raise ConfigError("private key text: key hash is not 8 hexadecimal digits")
        try:
            raw = _b64decode(key_b64)
        except ValueError:
            raise ConfigError("private key text: key is not valid base64") from None
        if not raw or raw[0] not in _KEY_TYPES:
            raise ConfigError("private key text: unknown or missing key type")
        if len(raw) != 33:
            raise ConfigError("private key text: wrong key length, an Ed25519 seed is 32 bytes")
        key = cls(name, Ed25519PrivateKey.from_private_bytes(raw[1:]), raw[0])
        if key.key_hash != bytes.fromhex(hash_hex):
            raise ConfigError(f"private key text for {name!r}: key hash does not match the key")
        return key

    def private_text(self) -> str:
        """The private key text (secret!) in the PRIVATE+KEY+... format."""
        seed = self._private.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        v = self._verifier
        return f"PRIVATE+KEY+{v.name}+{v.key_hash.hex()}+{_b64encode(bytes([v.key_type]) + seed)}"

    @property
    def name(self) -> str:
        """The key name."""
        return self._verifier.name

    @property
    def key_hash(self) -> bytes:
        """The 4-byte key ID."""
        return self._verifier.key_hash

    @property
    def key_type(self) -> int:
        """``KEY_TYPE_ED25519`` (0x01) or ``KEY_TYPE_COSIGNATURE`` (0x04)."""
        return self._verifier.key_type

    @property
    def verifier(self) -> VerifierKey:
        """The matching public verifier key."""
        return self._verifier

    def sign(self, message: bytes, *, timestamp: int | None = None) -> bytes:
        """Signature bytes for a signature line (without the key ID) over note text ``message``.

        For a cosigning key the result is ``timestamp || Ed25519 signature`` over the
        cosignature/v1 message; ``timestamp`` defaults to now (POSIX seconds). ``timestamp``
        must not be given for a plain note key.
        """
        if self.key_type != KEY_TYPE_COSIGNATURE:
            if timestamp is not None:
                raise ValueError("a timestamp only applies to cosigning keys")
            return self._private.sign(message)
        if timestamp is None:
            timestamp = int(time.time())
        _check_timestamp(timestamp)
        signed = cosignature_message(message, timestamp)
        return timestamp.to_bytes(_TIMESTAMP_LEN, "big") + self._private.sign(signed)

    def __repr__(self) -> str:
        return (
            f"SigningKey(name={self.name!r}, key_hash={self.key_hash.hex()}, "
            f"key_type=0x{self.key_type:02x})"
        )

    __str__ = __repr__

    def __reduce__(self) -> object:
        raise TypeError("SigningKey cannot be pickled; use private_text() explicitly")


@dataclass(frozen=True)
class NoteSignature:
    """One parsed signature line: key name, 4-byte key ID and the signature bytes after it."""

    name: str
    key_hash: bytes
    signature: bytes

    def to_line(self) -> str:
        """The signature line, without its newline."""
        return f"{_SIG_PREFIX}{self.name} {_b64encode(self.key_hash + self.signature)}"


@dataclass(frozen=True)
class OpenedNote:
    """A note whose signatures were checked: the text, and who signed it.

    ``signatures`` are the verified signatures (one per key, in note order), ``signers`` their
    key names, ``unverified`` the signatures by keys the caller did not trust.
    """

    text: str
    signatures: tuple[NoteSignature, ...]
    unverified: tuple[NoteSignature, ...] = ()

    @property
    def signers(self) -> tuple[str, ...]:
        """Names of the keys whose signatures verified."""
        return tuple(s.name for s in self.signatures)


def _check_note_chars(note: str) -> None:
    for ch in note:
        if ch != "\n" and (ord(ch) < 0x20 or 0xD800 <= ord(ch) <= 0xDFFF):
            raise FormatError(
                f"malformed note: contains control or invalid character U+{ord(ch):04X}"
            )


def _check_text(text: str) -> None:
    if not text.endswith("\n"):
        raise FormatError("note text must end with a newline")
    _check_note_chars(text)


def _parse_signature_line(line: str) -> NoteSignature:
    if not line.startswith(_SIG_PREFIX):
        raise FormatError(f"malformed note: signature line {line!r} does not start with '— '")
    name, sep, b64 = line[len(_SIG_PREFIX) :].partition(" ")
    if not sep or not _is_valid_name(name):
        raise FormatError(f"malformed note: signature line {line!r} has no valid key name")
    try:
        raw = _b64decode(b64)
    except ValueError:
        raise FormatError(f"malformed note: signature by {name!r} is not valid base64") from None
    if len(raw) < 5:
        raise FormatError(f"malformed note: signature by {name!r} is too short")
    return NoteSignature(name=name, key_hash=raw[:4], signature=raw[4:])


def signature_line(text: str, signer: SigningKey, *, timestamp: int | None = None) -> str:
    """Sign note ``text`` and return the signature line, without its newline."""
    _check_text(text)
    sig = signer.sign(text.encode("utf-8"), timestamp=timestamp)
    return NoteSignature(signer.name, signer.key_hash, sig).to_line()


def sign_note(text: str, signers: SigningKey | Sequence[SigningKey]) -> str:
    """Return the signed note: ``text`` + blank line + one signature line per signer.

    ``text`` must end with a newline and contain no control characters but newlines.
    Cosigning keys sign with the current time.
    """
    if isinstance(signers, SigningKey):
        signers = [signers]
    if not signers:
        raise ValueError("sign_note needs at least one signer")
    lines = [signature_line(text, s) + "\n" for s in signers]
    return text + "\n" + "".join(lines)


def parse_note(note: str) -> tuple[str, list[NoteSignature]]:
    """Split a signed note into its text and signature lines, without verifying anything.

    Raises :class:`FormatError` if ``note`` is not a well-formed signed note.
    """
    _check_note_chars(note)
    split = note.rfind("\n\n")
    if split < 0:
        raise FormatError("malformed note: no blank line before the signatures")
    text, block = note[: split + 1], note[split + 2 :]
    if not block or not block.endswith("\n"):
        raise FormatError("malformed note: signature block is empty or lacks a final newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise FormatError(f"malformed note: more than {MAX_SIGNATURES} signatures")
    return text, [_parse_signature_line(line) for line in lines]


def add_signature(note: str, line: str) -> str:
    """Append signature ``line`` (with or without its newline) to signed ``note``."""
    parse_note(note)
    if line.endswith("\n"):
        line = line[:-1]
    if "\n" in line:
        raise FormatError("a signature line cannot contain a newline")
    _check_note_chars(line)
    _parse_signature_line(line)
    return note + line + "\n"


def open_note(note: str, verifiers: Sequence[VerifierKey]) -> OpenedNote:
    """Parse ``note`` and verify its signatures against the trusted ``verifiers``.

    Signatures whose (name, key ID) match no verifier are ignored (kept in ``unverified``).
    A signature by a trusted key that does not verify raises :class:`VerificationError`, as
    does a note with no verified signature at all. Malformed notes raise
    :class:`FormatError`. Two trusted keys with the same name and key ID are a
    :class:`ConfigError`.
    """
    by_id: dict[tuple[str, bytes], VerifierKey] = {}
    for v in verifiers:
        known = by_id.setdefault((v.name, v.key_hash), v)
        if known != v:
            raise ConfigError(f"two trusted keys share the name {v.name!r} and key hash")
    text, sigs = parse_note(note)
    message = text.encode("utf-8")
    verified: dict[tuple[str, bytes], NoteSignature] = {}
    unverified: list[NoteSignature] = []
    for sig in sigs:
        v = by_id.get((sig.name, sig.key_hash))
        if v is None:
            if sig not in unverified:
                unverified.append(sig)
            continue
        if not v.verify(message, sig.signature):
            raise VerificationError(
                f"invalid signature by trusted key {v.name!r} ({v.key_hash.hex()})"
            )
        verified.setdefault((sig.name, sig.key_hash), sig)
    if not verified:
        names = ", ".join(sorted({v.name for v in by_id.values()})) or "none"
        raise VerificationError(f"note has no verified signature by a trusted key ({names})")
    return OpenedNote(text=text, signatures=tuple(verified.values()), unverified=tuple(unverified))
