"""Entry format v1: the canonical, hashed header of a ledger entry and its stored record.

A *record* is what a backend stores (the value of a Kafka record, a row in SQLite)::

    record = header || payload

The *header* is the Merkle leaf: its RFC 6962 leaf hash ``SHA-256(0x00 || header)`` is the
entry hash that the next entry's ``prev_hash`` points to and that the tree commits to. The
payload is referenced by its SHA-256 only, so it can be encrypted, offloaded or erased while
the log still verifies. All integers are big-endian. See ``docs/format.md`` for the layout
byte by byte with a worked example.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from streamledger.core import _accel
from streamledger.errors import FormatError, UnknownVersionError

MAGIC = b"SLDG"
VERSION = 1
HASH_SIZE = 32
ZERO_HASH = bytes(HASH_SIZE)

#: Ledger ids are legal Kafka topic names, so a ledger maps onto one topic.
LEDGER_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
MAX_PRODUCER = 255
MAX_CONTENT_TYPE = 255
MAX_KEY = 65535

# magic(4) version(1) ledger_len(1)
_PREFIX = struct.Struct(">4sBB")
# partition(4) seq(8) timestamp_ms(8) producer_len(1)
_MIDDLE = struct.Struct(">IQQB")
# prev_hash(32) payload_hash(32) payload_size(8)
_TAIL = struct.Struct(">32s32sQ")


def validate_ledger_id(ledger: str) -> str:
    """Return ``ledger`` if it is a valid ledger id, else raise ConfigError-like FormatError."""
    if not isinstance(ledger, str) or not LEDGER_ID_RE.match(ledger) or ledger in (".", ".."):
        raise FormatError(
            f"invalid ledger id {ledger!r}: use 1-249 characters from A-Z a-z 0-9 . _ -"
        )
    return ledger


class StoredRecord(NamedTuple):
    """One record as a backend returns it, in storage order.

    ``offset`` is where the record sits in its store (the Kafka offset, or the row position
    in SQLite); it is reported with findings so an operator can find the record.
    """

    offset: int
    value: bytes


@dataclass(frozen=True, slots=True)
class EntryHeader:
    """The hashed header of an entry (format v1)."""

    ledger: str
    partition: int
    seq: int
    timestamp_ms: int
    producer: str
    content_type: str
    key: bytes
    prev_hash: bytes
    payload_hash: bytes
    payload_size: int

    def encode(self) -> bytes:
        """The canonical header bytes (the Merkle leaf)."""
        return encode_header(
            self.ledger,
            self.partition,
            self.seq,
            self.timestamp_ms,
            self.producer,
            self.content_type,
            self.key,
            self.prev_hash,
            self.payload_hash,
            self.payload_size,
        )


@dataclass(frozen=True, slots=True)
class Entry:
    """A decoded entry: its header, the exact header bytes, and the payload if present."""

    header: EntryHeader
    header_bytes: bytes
    payload: bytes | None

    @property
    def seq(self) -> int:
        return self.header.seq

    @property
    def leaf_hash(self) -> bytes:
        return hashlib.sha256(b"\x00" + self.header_bytes).digest()

    def payload_matches(self) -> bool:
        """True if the payload is present and hashes to the header's payload hash."""
        return (
            self.payload is not None
            and len(self.payload) == self.header.payload_size
            and hashlib.sha256(self.payload).digest() == self.header.payload_hash
        )


def encode_header(
    ledger: str,
    partition: int,
    seq: int,
    timestamp_ms: int,
    producer: str,
    content_type: str,
    key: bytes,
    prev_hash: bytes,
    payload_hash: bytes,
    payload_size: int,
) -> bytes:
    """Encode a v1 header. Raises FormatError if a field is out of range."""
    ledger_b = ledger.encode("utf-8")
    producer_b = producer.encode("utf-8")
    ctype_b = content_type.encode("utf-8")
    if not 1 <= len(ledger_b) <= 249:
        raise FormatError(f"ledger id must be 1-249 bytes, got {len(ledger_b)}")
    if len(producer_b) > MAX_PRODUCER:
        raise FormatError(f"producer identity is {len(producer_b)} bytes, at most 255 allowed")
    if len(ctype_b) > MAX_CONTENT_TYPE:
        raise FormatError(f"content type is {len(ctype_b)} bytes, at most 255 allowed")
    if len(key) > MAX_KEY:
        raise FormatError(f"key is {len(key)} bytes, at most 65535 allowed")
    if len(prev_hash) != HASH_SIZE or len(payload_hash) != HASH_SIZE:
        raise FormatError("prev_hash and payload_hash must be 32 bytes")
    if not (0 <= partition < 2**32 and 0 <= seq < 2**64 and 0 <= timestamp_ms < 2**64):
        raise FormatError("partition, seq or timestamp out of range")
    return b"".join(
        (
            _PREFIX.pack(MAGIC, VERSION, len(ledger_b)),
            ledger_b,
            _MIDDLE.pack(partition, seq, timestamp_ms, len(producer_b)),
            producer_b,
            bytes((len(ctype_b),)),
            ctype_b,
            len(key).to_bytes(2, "big"),
            key,
            _TAIL.pack(prev_hash, payload_hash, payload_size),
        )
    )


def build_records(
    ledger: str,
    partition: int,
    first_seq: int,
    timestamp_ms: int,
    producer: str,
    prev_hash: bytes,
    items: Sequence[tuple[bytes, bytes, str]],
) -> tuple[list[bytes], list[bytes]]:
    """Build consecutive chained entries from ``(payload, key, content_type)`` items.

    Returns ``(records, leaf_hashes)``. The bytes are exactly those of :func:`encode_header`
    (checked by the format vectors); the fixed parts are encoded once per batch because this
    is the append hot path.
    """
    if not items:
        return [], []
    # Validates every field once, through the one encoder.
    encode_header(
        ledger,
        partition,
        first_seq + len(items) - 1,
        timestamp_ms,
        producer,
        "",
        b"",
        prev_hash,
        ZERO_HASH,
        0,
    )
    producer_b = producer.encode("utf-8")
    fixed = header_prefix(ledger, partition)
    middle = timestamp_ms.to_bytes(8, "big") + bytes((len(producer_b),)) + producer_b
    native = _accel.native
    if native is not None and type(items) is list:
        try:
            return native.build_records(fixed, first_seq, middle, prev_hash, items)
        except (TypeError, ValueError, OverflowError):
            pass  # not plain bytes and str, or out of range: the code below says what is wrong
    content_types: dict[str, bytes] = {}
    sha256 = hashlib.sha256
    records: list[bytes] = []
    leaves: list[bytes] = []
    prev = prev_hash
    seq = first_seq
    for payload, key, content_type in items:
        ctype = content_types.get(content_type)
        if ctype is None:
            ctype_b = content_type.encode("utf-8")
            if len(ctype_b) > MAX_CONTENT_TYPE:
                raise FormatError(f"content type is {len(ctype_b)} bytes, at most 255 allowed")
            ctype = content_types[content_type] = bytes((len(ctype_b),)) + ctype_b
        if len(key) > MAX_KEY:
            raise FormatError(f"key is {len(key)} bytes, at most 65535 allowed")
        header = b"".join(
            (
                fixed,
                seq.to_bytes(8, "big"),
                middle,
                ctype,
                len(key).to_bytes(2, "big"),
                key,
                prev,
                sha256(payload).digest(),
                len(payload).to_bytes(8, "big"),
            )
        )
        prev = sha256(b"\x00" + header).digest()
        records.append(header + payload)
        leaves.append(prev)
        seq += 1
    return records, leaves


def build_record(
    ledger: str,
    partition: int,
    seq: int,
    timestamp_ms: int,
    producer: str,
    content_type: str,
    key: bytes,
    prev_hash: bytes,
    payload: bytes,
) -> tuple[bytes, bytes]:
    """Build one entry. Returns ``(record_bytes, leaf_hash)``."""
    records, leaves = build_records(
        ledger, partition, seq, timestamp_ms, producer, prev_hash, [(payload, key, content_type)]
    )
    return records[0], leaves[0]


def header_length(record: bytes) -> int:
    """Length of the v1 header at the start of ``record``; FormatError if it is not one."""
    size = len(record)
    if size < _PREFIX.size:
        raise FormatError(f"record of {size} bytes is too short to be an entry")
    magic, version, ledger_len = _PREFIX.unpack_from(record, 0)
    if magic != MAGIC:
        raise FormatError("record does not start with the streamledger entry magic 'SLDG'")
    if version != VERSION:
        raise UnknownVersionError(
            f"entry format version {version} is not supported (this streamledger reads v{VERSION})"
        )
    if not 1 <= ledger_len <= 249:
        raise FormatError(f"entry header has a ledger id of {ledger_len} bytes (1-249 allowed)")
    pos = _PREFIX.size + ledger_len
    pos_producer = pos + _MIDDLE.size
    if size < pos_producer:
        raise FormatError("entry header is truncated")
    pos = pos_producer + record[pos_producer - 1]
    if size < pos + 1:
        raise FormatError("entry header is truncated")
    pos += 1 + record[pos]
    if size < pos + 2:
        raise FormatError("entry header is truncated")
    pos += 2 + int.from_bytes(record[pos : pos + 2], "big")
    end = pos + _TAIL.size
    if size < end:
        raise FormatError("entry header is truncated")
    return end


def header_prefix(ledger: str, partition: int) -> bytes:
    """The bytes every v1 header of ``ledger``/``partition`` starts with."""
    ledger_b = ledger.encode("utf-8")
    return _PREFIX.pack(MAGIC, VERSION, len(ledger_b)) + ledger_b + partition.to_bytes(4, "big")


def chain_fields(record: bytes, prefix: bytes) -> tuple[int, bytes, bytes, int, int] | None:
    """The fields a verifier's fast path needs, without building objects.

    Returns ``(seq, prev_hash, payload_hash, payload_size, header_end)`` if ``record`` starts
    with ``prefix`` (see :func:`header_prefix`) and holds a whole header; otherwise None, and
    the caller decodes the record with :func:`decode_record` to learn what is wrong.
    """
    if not record.startswith(prefix):
        return None
    pos = len(prefix)
    try:
        seq = int.from_bytes(record[pos : pos + 8], "big")
        pos += 16  # seq, timestamp
        pos += 1 + record[pos]  # producer
        pos += 1 + record[pos]  # content type
        pos += 2 + ((record[pos] << 8) | record[pos + 1])  # key
    except IndexError:
        return None
    end = pos + 72
    if len(record) < end:
        return None
    return (
        seq,
        record[pos : pos + 32],
        record[pos + 32 : pos + 64],
        int.from_bytes(record[pos + 64 : end], "big"),
        end,
    )


def decode_record(record: bytes) -> Entry:
    """Decode ``header || payload``. Raises FormatError / UnknownVersionError on bad bytes.

    A record that holds only the header (payload detached or erased) decodes with
    ``payload=None``.
    """
    end = header_length(record)
    _, _, ledger_len = _PREFIX.unpack_from(record, 0)
    pos = _PREFIX.size
    try:
        ledger = record[pos : pos + ledger_len].decode("utf-8")
        pos += ledger_len
        partition, seq, timestamp_ms, producer_len = _MIDDLE.unpack_from(record, pos)
        pos += _MIDDLE.size
        producer = record[pos : pos + producer_len].decode("utf-8")
        pos += producer_len
        ctype_len = record[pos]
        content_type = record[pos + 1 : pos + 1 + ctype_len].decode("utf-8")
        pos += 1 + ctype_len
        key_len = int.from_bytes(record[pos : pos + 2], "big")
        key = bytes(record[pos + 2 : pos + 2 + key_len])
        pos += 2 + key_len
    except UnicodeDecodeError as exc:
        raise FormatError(f"entry header holds text that is not UTF-8: {exc.reason}") from None
    prev_hash, payload_hash, payload_size = _TAIL.unpack_from(record, pos)
    header_bytes = bytes(record[:end])
    payload = bytes(record[end:]) if len(record) > end or payload_size == 0 else None
    header = EntryHeader(
        ledger,
        partition,
        seq,
        timestamp_ms,
        producer,
        content_type,
        key,
        prev_hash,
        payload_hash,
        payload_size,
    )
    return Entry(header, header_bytes, payload)
