"""Helpers for testing code that uses streamledger, and for testing streamledger itself.

Build a real ledger in memory, signed by a fresh key::

    from streamledger.testing import memory_ledger, records_of, tamper

    ledger, key = memory_ledger("payments", partitions=2, entries=10, checkpoint=True)
    assert ledger.verify().ok

Then tamper with what the store holds and check that verification catches it::

    recs = records_of(ledger, 0)          # the live list of stored record bytes
    tamper.edit_payload(recs, 3)
    report = ledger.verify()
    assert [(f.kind, f.seq) for f in report.findings] == [("payload_modified", 3)]

Every ``tamper`` function changes a list of record bytes **in place** (the list returned
by :func:`records_of`, or any list you verify yourself with
:func:`streamledger.core.verify.verify_partition`) and returns it. Positions are list
indexes; in an honest partition, list index ``i`` holds the entry with sequence number ``i``.
The Merkle nodes and checkpoints kept by the backend are left alone: that is what an
attacker who can only rewrite the stored records looks like.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import MutableSequence

from streamledger.backends.memory import MemoryBackend
from streamledger.core.entry import ZERO_HASH, build_record, decode_record
from streamledger.core.note import SigningKey
from streamledger.ledger import Ledger

__all__ = ["memory_ledger", "records_of", "fixed_clock", "tamper"]

#: Timestamp (ms since the epoch) of the first entry written by :func:`memory_ledger`.
EPOCH_MS = 1_700_000_000_000


def fixed_clock(start_ms: int = EPOCH_MS, step_ms: int = 1):
    """A deterministic clock for :class:`~streamledger.ledger.Ledger` (``clock=``): it
    returns ``start_ms``, ``start_ms + step_ms``, ... on successive calls."""
    counter = itertools.count()
    return lambda: start_ms + step_ms * next(counter)


def memory_ledger(
    name: str = "test",
    partitions: int = 1,
    entries: int = 0,
    *,
    checkpoint: bool = False,
    backend: MemoryBackend | None = None,
    signer: SigningKey | None = None,
    producer: str = "streamledger-test",
) -> tuple[Ledger, SigningKey]:
    """A real ledger on a :class:`MemoryBackend`, and the key that signs its checkpoints.

    ``entries`` entries are appended to *each* partition (payload ``b"entry <p>/<seq>"``);
    with ``checkpoint=True`` a checkpoint is signed afterwards. Timestamps come from
    :func:`fixed_clock`, so two calls with the same arguments build identical records
    except for the key. ``ledger.verify()`` trusts ``key`` by default.
    """
    backend = backend if backend is not None else MemoryBackend()
    key = signer or SigningKey.generate(f"{name}-log-key")
    ledger = Ledger.create(
        backend, name, partitions=partitions, signer=key, producer=producer, clock=fixed_clock()
    )
    for p in range(partitions):
        if entries:
            ledger.append_many([f"entry {p}/{seq}".encode() for seq in range(entries)], partition=p)
    if checkpoint:
        ledger.checkpoint()
    return ledger, key


def records_of(ledger: Ledger, partition: int = 0) -> list[bytes]:
    """The live list of record bytes of a ledger on a :class:`MemoryBackend`."""
    backend = ledger.backend
    if not isinstance(backend, MemoryBackend):
        raise TypeError("records_of() needs a ledger on a MemoryBackend")
    return backend.partition_records(ledger.name, partition)


def _leaf(record: bytes) -> bytes:
    return decode_record(record).leaf_hash


def _flip(data: bytes, index: int, mask: int = 0x01) -> bytes:
    return data[:index] + bytes((data[index] ^ mask,)) + data[index + 1 :]


class _Tamper:
    """The tampering toolkit (use the module-level instance :data:`tamper`)."""

    @staticmethod
    def edit_payload(records: MutableSequence[bytes], i: int) -> MutableSequence[bytes]:
        """Change the payload of record ``i`` (flip its last byte; an empty payload gets one
        byte added). The header is untouched, so only the payload hash disagrees."""
        rec = records[i]
        header_len = len(decode_record(rec).header_bytes)
        records[i] = _flip(rec, len(rec) - 1) if len(rec) > header_len else rec + b"X"
        return records

    @staticmethod
    def edit_header(records: MutableSequence[bytes], i: int) -> MutableSequence[bytes]:
        """Change the header of record ``i``: flip the lowest bit of its timestamp. The
        record still decodes; only its hash changes."""
        rec = records[i]
        ledger_len = rec[5]
        ts_last_byte = 4 + 1 + 1 + ledger_len + 4 + 8 + 7  # magic ver len ledger part seq ts
        records[i] = _flip(rec, ts_last_byte)
        return records

    @staticmethod
    def delete(records: MutableSequence[bytes], i: int) -> MutableSequence[bytes]:
        """Remove record ``i``."""
        del records[i]
        return records

    @staticmethod
    def duplicate(records: MutableSequence[bytes], i: int) -> MutableSequence[bytes]:
        """Store record ``i`` a second time, right after itself."""
        records.insert(i + 1, records[i])
        return records

    @staticmethod
    def swap(records: MutableSequence[bytes], i: int) -> MutableSequence[bytes]:
        """Exchange records ``i`` and ``i + 1``."""
        records[i], records[i + 1] = records[i + 1], records[i]
        return records

    @staticmethod
    def forge(
        template: bytes,
        seq: int,
        prev_hash: bytes,
        payload: bytes = b"forged",
        timestamp_ms: int | None = None,
    ) -> bytes:
        """A well-formed record with the ledger, partition, producer and content type of
        ``template`` but the given ``seq``, ``prev_hash`` and ``payload``."""
        h = decode_record(template).header
        record, _ = build_record(
            h.ledger,
            h.partition,
            seq,
            h.timestamp_ms if timestamp_ms is None else timestamp_ms,
            h.producer,
            h.content_type,
            h.key,
            prev_hash,
            payload,
        )
        return record

    @classmethod
    def insert_forged(
        cls,
        records: MutableSequence[bytes],
        i: int,
        *,
        seq: int | None = None,
        prev_hash: bytes | None = None,
        payload: bytes = b"forged",
    ) -> MutableSequence[bytes]:
        """Insert a forged, well-formed entry at position ``i``.

        By default it is a clever forgery: it claims seq ``i`` and links to the hash of
        entry ``i - 1`` (or the zero hash at ``i == 0``), exactly like the genuine entry ``i``
        that now follows it. With ``seq=`` it claims an arbitrary sequence number instead
        (and, unless ``prev_hash=`` is given, links to the record before it if any).
        """
        if prev_hash is None:
            prev_hash = _leaf(records[i - 1]) if i > 0 else ZERO_HASH
        template = records[i] if i < len(records) else records[i - 1]
        forged = cls.forge(template, i if seq is None else seq, prev_hash, payload)
        records.insert(i, forged)
        return records

    @staticmethod
    def copy_foreign(
        records: MutableSequence[bytes], i: int, foreign_record: bytes, *, replace: bool = False
    ) -> MutableSequence[bytes]:
        """Put ``foreign_record`` (a record of another ledger or partition) at position
        ``i``: inserted before record ``i``, or replacing it with ``replace=True``."""
        if replace:
            records[i] = foreign_record
        else:
            records.insert(i, foreign_record)
        return records

    @staticmethod
    def insert_garbage(
        records: MutableSequence[bytes], i: int, garbage: bytes | None = None
    ) -> MutableSequence[bytes]:
        """Insert bytes that are not an entry at position ``i``."""
        records.insert(i, garbage if garbage is not None else hashlib.sha256(b"x").digest())
        return records

    @staticmethod
    def set_version(
        records: MutableSequence[bytes], i: int, version: int = 2
    ) -> MutableSequence[bytes]:
        """Rewrite the format version byte of record ``i`` (an entry of an unknown version)."""
        rec = records[i]
        records[i] = rec[:4] + bytes((version,)) + rec[5:]
        return records

    @staticmethod
    def truncate(records: MutableSequence[bytes], n: int) -> MutableSequence[bytes]:
        """Keep only the first ``n`` records."""
        del records[n:]
        return records


#: The tampering toolkit: ``tamper.edit_payload(records, i)`` etc.
tamper = _Tamper()
