"""Entry format v1: exact bytes against the vectors, and clean errors for bad bytes."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamledger.core.entry import (
    MAGIC,
    ZERO_HASH,
    build_record,
    decode_record,
    encode_header,
    header_length,
)
from streamledger.errors import FormatError, UnknownVersionError

VECTORS = json.loads(
    (Path(__file__).parent.parent / "vectors" / "entry_v1.json").read_text(encoding="utf-8")
)["vectors"]
DOC = Path(__file__).parent.parent.parent / "docs" / "format.md"


def _fields(vector: dict) -> dict:
    f = vector["fields"]
    return {
        "ledger": f["ledger"],
        "partition": f["partition"],
        "seq": f["seq"],
        "timestamp_ms": f["timestamp_ms"],
        "producer": f["producer"],
        "content_type": f["content_type"],
        "key": bytes.fromhex(f["key_hex"]),
        "prev_hash": bytes.fromhex(f["prev_hash_hex"]),
    }


def _valid_record() -> bytes:
    return bytes.fromhex(VECTORS[1]["record_hex"])


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_encode_matches_vector(vector: dict) -> None:
    payload = bytes.fromhex(vector["fields"]["payload_hex"])
    record, leaf = build_record(**_fields(vector), payload=payload)
    assert record.hex() == vector["record_hex"]
    assert leaf.hex() == vector["leaf_hash_hex"]
    header = encode_header(
        **_fields(vector), payload_hash=hashlib.sha256(payload).digest(), payload_size=len(payload)
    )
    assert header.hex() == vector["header_hex"]
    assert record == header + payload
    assert hashlib.sha256(b"\x00" + header).hexdigest() == vector["leaf_hash_hex"]
    assert hashlib.sha256(payload).hexdigest() == vector["payload_hash_hex"]


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_decode_matches_vector(vector: dict) -> None:
    record = bytes.fromhex(vector["record_hex"])
    entry = decode_record(record)
    h = entry.header
    for name, value in _fields(vector).items():
        assert getattr(h, name) == value, name
    assert h.payload_hash.hex() == vector["payload_hash_hex"]
    assert h.payload_size == vector["payload_size"]
    assert entry.payload == bytes.fromhex(vector["fields"]["payload_hex"])
    assert entry.header_bytes.hex() == vector["header_hex"]
    assert entry.leaf_hash.hex() == vector["leaf_hash_hex"]
    assert entry.payload_matches()
    assert h.encode() == entry.header_bytes
    assert header_length(record) == len(entry.header_bytes)


def test_vectors_chain_and_cover_the_brief() -> None:
    by_name = {v["name"]: v for v in VECTORS}
    assert by_name["worked-example"]["fields"]["prev_hash_hex"] == ZERO_HASH.hex()
    assert (
        by_name["key-present"]["fields"]["prev_hash_hex"]
        == (by_name["worked-example"]["leaf_hash_hex"])
    )
    assert by_name["key-present"]["fields"]["key_hex"]
    assert by_name["empty-payload"]["payload_size"] == 0
    assert not by_name["unicode-producer"]["fields"]["producer"].isascii()
    assert by_name["large-seq"]["fields"]["partition"] == 7
    assert by_name["large-seq"]["fields"]["seq"] == 2**40


def test_docs_show_the_worked_example() -> None:
    """docs/format.md must show the same bytes and leaf hash as the vector."""
    doc = DOC.read_text(encoding="utf-8")
    example = VECTORS[0]
    shown = "".join(re.findall(r"^[0-9a-f ]{8,}$", doc, flags=re.M)).replace(" ", "")
    assert example["record_hex"] in shown
    assert example["leaf_hash_hex"] in doc
    assert "<origin>/ledger/<ledger>/partition/<p>" in doc


def test_header_only_record_has_no_payload() -> None:
    record = _valid_record()
    hlen = header_length(record)
    entry = decode_record(record[:hlen])
    assert entry.payload is None
    assert not entry.payload_matches()
    empty = bytes.fromhex(VECTORS[2]["record_hex"])  # payload_size 0: header-only is complete
    assert decode_record(empty).payload == b""
    assert decode_record(empty).payload_matches()


def test_every_truncation_of_the_header_is_a_format_error() -> None:
    record = _valid_record()
    hlen = header_length(record)
    for length in range(hlen):
        with pytest.raises(FormatError) as info:
            decode_record(record[:length])
        assert type(info.value) is FormatError
        assert "short" in str(info.value) or "truncated" in str(info.value)


def test_truncated_payload_decodes_but_does_not_match() -> None:
    """A cut inside the payload is the verifier's business (payload_modified), not a
    decoding error: the header is intact and still verifiable."""
    record = _valid_record()
    hlen = header_length(record)
    for length in range(hlen + 1, len(record)):
        entry = decode_record(record[:length])
        assert not entry.payload_matches()


def test_bad_magic() -> None:
    record = b"XLDG" + _valid_record()[4:]
    with pytest.raises(FormatError, match="magic"):
        decode_record(record)


@pytest.mark.parametrize("version", [0, 2, 255])
def test_unknown_version(version: int) -> None:
    record = _valid_record()
    record = record[:4] + bytes((version,)) + record[5:]
    with pytest.raises(UnknownVersionError, match=f"version {version}"):
        decode_record(record)


def test_non_utf8_ledger() -> None:
    record = bytearray(_valid_record())
    record[6] = 0xFF  # first byte of the ledger id
    with pytest.raises(FormatError, match="UTF-8"):
        decode_record(bytes(record))


def test_non_utf8_producer_and_content_type() -> None:
    record = _valid_record()
    entry = decode_record(record)
    ledger_len = len(entry.header.ledger.encode())
    producer_at = 6 + ledger_len + 4 + 8 + 8 + 1
    bad = bytearray(record)
    bad[producer_at] = 0xC3  # a lone lead byte
    bad[producer_at + 1] = 0x28
    with pytest.raises(FormatError, match="UTF-8"):
        decode_record(bytes(bad))
    ctype_at = producer_at + len(entry.header.producer.encode()) + 1
    bad = bytearray(record)
    bad[ctype_at] = 0x80
    with pytest.raises(FormatError, match="UTF-8"):
        decode_record(bytes(bad))


def test_empty_ledger_id_is_rejected() -> None:
    record = _valid_record()
    ledger_len = record[5]
    bad = record[:5] + b"\x00" + record[6 + ledger_len :]
    with pytest.raises(FormatError, match="ledger"):
        decode_record(bad)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"ledger": ""}, "ledger id"),
        ({"producer": "p" * 256}, "producer"),
        ({"content_type": "c" * 256}, "content type"),
        ({"key": b"k" * 65536}, "key"),
        ({"prev_hash": b"short"}, "32 bytes"),
        ({"seq": 2**64}, "out of range"),
        ({"partition": -1}, "out of range"),
    ],
)
def test_encode_rejects_out_of_range_fields(overrides: dict, message: str) -> None:
    fields = _fields(VECTORS[0]) | overrides
    with pytest.raises(FormatError, match=message):
        build_record(**fields, payload=b"x")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_garbage_raises_only_format_error(data: bytes) -> None:
    try:
        entry = decode_record(data)
    except FormatError as exc:
        assert str(exc)
    else:  # only possible if the garbage happens to be a well-formed entry
        assert data.startswith(MAGIC)
        assert entry.header.encode() == entry.header_bytes


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_records_raise_only_format_error(data: st.DataObject) -> None:
    record = bytearray(bytes.fromhex(data.draw(st.sampled_from(VECTORS))["record_hex"]))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(record) - 1))
        record[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(record)))
    try:
        entry = decode_record(bytes(record[:cut]))
    except FormatError as exc:
        assert str(exc)
    else:
        assert entry.header.encode() == entry.header_bytes


@settings(max_examples=100, deadline=None)
@given(
    ledger=st.from_regex(r"[A-Za-z0-9._-]{1,40}", fullmatch=True),
    partition=st.integers(0, 2**32 - 1),
    seq=st.integers(0, 2**64 - 1),
    timestamp_ms=st.integers(0, 2**64 - 1),
    producer=st.text(max_size=60),
    content_type=st.text(max_size=60),
    key=st.binary(max_size=100),
    prev_hash=st.binary(min_size=32, max_size=32),
    payload=st.binary(max_size=200),
)
def test_round_trip(**fields) -> None:
    payload = fields.pop("payload")
    record, leaf = build_record(**fields, payload=payload)
    entry = decode_record(record)
    for name, value in fields.items():
        assert getattr(entry.header, name) == value
    assert entry.payload == payload
    assert entry.leaf_hash == leaf
    assert entry.payload_matches()
