"""The ciphertext envelope stored as an encrypted entry's payload (format v1).

All integers big-endian::

    magic      4  b"SLEN"
    version    1  1
    alg        1  1 = AES-256-GCM
    epoch      4  number of the data key epoch
    ref_len    1  0, or 24 for a per-subject key
    ref        ref_len  subject reference (16-byte HMAC of the subject id) || key id (8)
    nonce      12 random
    ciphertext    AES-256-GCM ciphertext || 16-byte tag

The associated data binds the ciphertext to where it is stored and to what it says it is::

    aad = b"streamledger/enc/v1\\0" || len(ledger) (1) || ledger || partition (4) || seq (8)
          || len(content_type) (1) || content_type || envelope[:nonce]

so a ciphertext copied into another ledger, partition or seq, or under another epoch, subject
or content type, fails to decrypt. The entry's content type is
``application/vnd.streamledger.enc+<original content type>``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from streamledger.errors import FormatError, StreamledgerError

MAGIC = b"SLEN"
VERSION = 1
ALG_AES_256_GCM = 1
NONCE_SIZE = 12
TAG_SIZE = 16
REF_SIZE = 24
CONTENT_TYPE_PREFIX = "application/vnd.streamledger.enc+"
AAD_LABEL = b"streamledger/enc/v1\x00"

_FIXED = struct.Struct(">4sBBIB")  # magic, version, alg, epoch, ref_len


class DecryptionError(StreamledgerError):
    """An encrypted payload cannot be decrypted with the keys at hand: wrong or missing key,
    an erased subject, or a ciphertext that was altered or moved. The message names the
    entry (ledger, partition, seq) and never contains key material."""


@dataclass(frozen=True, slots=True)
class Envelope:
    epoch: int
    ref: bytes  # b"" or subject reference (16) || key id (8)
    nonce: bytes
    ciphertext: bytes
    prefix: bytes  # the encoded bytes before the nonce (part of the AAD)

    @property
    def subject_ref(self) -> bytes:
        return self.ref[:16]

    @property
    def key_id(self) -> bytes:
        return self.ref[16:]


def envelope_prefix(epoch: int, ref: bytes = b"") -> bytes:
    if len(ref) not in (0, REF_SIZE):
        raise FormatError(f"subject reference must be 0 or {REF_SIZE} bytes")
    return _FIXED.pack(MAGIC, VERSION, ALG_AES_256_GCM, epoch, len(ref)) + ref


def is_encrypted_type(content_type: str) -> bool:
    return content_type.startswith(CONTENT_TYPE_PREFIX)


def encrypted_type(content_type: str) -> str:
    return CONTENT_TYPE_PREFIX + content_type


def original_type(content_type: str) -> str:
    return content_type[len(CONTENT_TYPE_PREFIX) :]


def aad_prefix(ledger: str, partition: int) -> bytes:
    ledger_b = ledger.encode("utf-8")
    return AAD_LABEL + bytes((len(ledger_b),)) + ledger_b + partition.to_bytes(4, "big")


def aad_tail(content_type: str, prefix: bytes) -> bytes:
    ctype = content_type.encode("utf-8")
    return bytes((len(ctype),)) + ctype + prefix


def associated_data(
    ledger: str, partition: int, seq: int, content_type: str, prefix: bytes
) -> bytes:
    """The AAD of an envelope stored at ledger/partition/seq (see the module docs)."""
    return aad_prefix(ledger, partition) + seq.to_bytes(8, "big") + aad_tail(content_type, prefix)


def parse_envelope(payload: bytes) -> Envelope:
    """Split an envelope; FormatError if it is not one (never guesses)."""
    if len(payload) < _FIXED.size:
        raise FormatError("payload is too short to be an encrypted envelope")
    magic, version, alg, epoch, ref_len = _FIXED.unpack_from(payload, 0)
    if magic != MAGIC:
        raise FormatError("payload does not start with the envelope magic 'SLEN'")
    if version != VERSION or alg != ALG_AES_256_GCM:
        raise FormatError(f"envelope version {version} / algorithm {alg} is not supported")
    if ref_len not in (0, REF_SIZE):
        raise FormatError(f"envelope has a subject reference of {ref_len} bytes")
    start = _FIXED.size + ref_len
    if len(payload) < start + NONCE_SIZE + TAG_SIZE:
        raise FormatError("encrypted envelope is truncated")
    return Envelope(
        epoch,
        bytes(payload[_FIXED.size : start]),
        bytes(payload[start : start + NONCE_SIZE]),
        bytes(payload[start + NONCE_SIZE :]),
        bytes(payload[:start]),
    )
