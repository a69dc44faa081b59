"""Tests for streamledger.core.checkpoint (C2SP tlog-checkpoint and tlog-cosignature)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from streamledger.core.checkpoint import (
    Checkpoint,
    cosign_checkpoint,
    sign_checkpoint,
    verify_checkpoint,
)
from streamledger.core.note import (
    KEY_TYPE_COSIGNATURE,
    SigningKey,
    VerifierKey,
    add_signature,
)
from streamledger.errors import ConfigError, FormatError, VerificationError

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "tlog"
ORIGIN = "example.com/ledger/payments/partition/0"
ROOT_37 = bytes.fromhex("17e451a402d872c70d4562966b39978c2cf1c5237d9bc3b67c202551056894be")


def vkey(name: str) -> VerifierKey:
    return VerifierKey.parse((VECTORS / f"{name}.vkey").read_text())


WITNESSES = ("w1", "w2", "w3")


# --- checkpoint text --------------------------------------------------------------------


def test_checkpoint_text_round_trip() -> None:
    cp = Checkpoint("example.com/log", 37, ROOT_37, ("ext one",))
    text = cp.to_text()
    assert text == ("example.com/log\n37\n" + base64.b64encode(ROOT_37).decode() + "\next one\n")
    assert Checkpoint.parse(text) == cp
    empty = Checkpoint("o", 0, bytes(32))
    assert Checkpoint.parse(empty.to_text()) == empty


@pytest.mark.parametrize(
    "text",
    [
        "o\n1\n" + base64.b64encode(bytes(32)).decode(),  # no final newline
        "o\n1\n",
        "\n1\n" + base64.b64encode(bytes(32)).decode() + "\n",
        "o\n01\n" + base64.b64encode(bytes(32)).decode() + "\n",
        "o\n+1\n" + base64.b64encode(bytes(32)).decode() + "\n",
        "o\n-1\n" + base64.b64encode(bytes(32)).decode() + "\n",
        "o\n1_0\n" + base64.b64encode(bytes(32)).decode() + "\n",
        "o\n\u0661\n" + base64.b64encode(bytes(32)).decode() + "\n",  # Arabic-Indic one
        "o\n 1\n" + base64.b64encode(bytes(32)).decode() + "\n",
        "o\n1\n" + base64.b64encode(bytes(31)).decode() + "\n",
        "o\n1\n" + base64.b64encode(bytes(33)).decode() + "\n",
        "o\n1\n" + base64.b64encode(bytes(32)).decode().rstrip("=") + "\n",
        "o\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB=\n",  # non-canonical
        "o\n1\n" + base64.b64encode(bytes(32)).decode() + "\n\n",  # empty extension
        "o\n" + str(2**64) + "\n" + base64.b64encode(bytes(32)).decode() + "\n",
    ],
)
def test_checkpoint_parse_strict(text: str) -> None:
    with pytest.raises(FormatError):
        Checkpoint.parse(text)


def test_checkpoint_constructor_validates() -> None:
    with pytest.raises(ValueError):
        Checkpoint("o", -1, bytes(32))
    with pytest.raises(ValueError):
        Checkpoint("o", 1, bytes(31))
    with pytest.raises(ValueError):
        Checkpoint("", 1, bytes(32))


# --- sign, cosign, verify ----------------------------------------------------------------


@pytest.fixture()
def keys() -> tuple[SigningKey, list[SigningKey]]:
    log = SigningKey.generate("example.com/log")
    witnesses = [SigningKey.generate(f"w{i}.example", KEY_TYPE_COSIGNATURE) for i in (1, 2, 3)]
    return log, witnesses


def test_sign_cosign_verify_round_trip(keys: tuple[SigningKey, list[SigningKey]]) -> None:
    log, ws = keys
    cp = Checkpoint("example.com/log", 5, bytes(range(32)))
    note = sign_checkpoint(cp, log)
    note += cosign_checkpoint(note, ws[0], timestamp=1700000000)
    note = add_signature(note, cosign_checkpoint(cp, ws[1], timestamp=1700000001))
    note += cosign_checkpoint(cp.to_text(), ws[2])

    result = verify_checkpoint(note, log.verifier, [w.verifier for w in ws], 3)
    assert result.checkpoint == cp
    assert result.text == cp.to_text()
    assert result.log_key == log.verifier
    assert result.cosigners == ("w1.example", "w2.example", "w3.example")
    assert [c.timestamp for c in result.cosignatures[:2]] == [1700000000, 1700000001]
    assert result.cosignatures[2].timestamp > 1700000001

    assert verify_checkpoint(note, log.verifier).cosignatures == ()
    assert verify_checkpoint(note, log.verifier, origin="example.com/log").checkpoint == cp
    with pytest.raises(VerificationError, match="origin"):
        verify_checkpoint(note, log.verifier, origin="example.com/other")


def test_quorum_message(keys: tuple[SigningKey, list[SigningKey]]) -> None:
    log, ws = keys
    cp = Checkpoint("example.com/log", 5, bytes(32))
    note = sign_checkpoint(cp, log) + cosign_checkpoint(cp, ws[0])
    with pytest.raises(VerificationError) as info:
        verify_checkpoint(note, log.verifier, [w.verifier for w in ws], 2)
    assert str(info.value) == (
        "checkpoint for example.com/log size 5 has 1 valid cosignature(s), 2 required"
    )


@pytest.mark.parametrize(
    "tamper",
    [
        lambda n: n.replace("example.com/log\n", "example.com/lag\n", 1),
        lambda n: n.replace("\n5\n", "\n6\n", 1),
        lambda n: n.replace(base64.b64encode(bytes(32)).decode(), "A" * 42 + "E=", 1),
    ],
    ids=["origin", "size", "root"],
)
def test_tampered_body_rejected(keys: tuple[SigningKey, list[SigningKey]], tamper) -> None:
    log, ws = keys
    cp = Checkpoint("example.com/log", 5, bytes(32))
    note = sign_checkpoint(cp, log)
    tampered = tamper(note)
    assert tampered != note
    with pytest.raises(VerificationError):
        verify_checkpoint(tampered, log.verifier)


def test_wrong_log_key_rejected(keys: tuple[SigningKey, list[SigningKey]]) -> None:
    log, ws = keys
    note = sign_checkpoint(Checkpoint("example.com/log", 1, bytes(32)), log)
    other = SigningKey.generate("example.com/log")
    with pytest.raises(VerificationError):
        verify_checkpoint(note, other.verifier)
    # only witnesses verify: the log signature is still required
    note += cosign_checkpoint(note, ws[0])
    with pytest.raises(VerificationError, match="not signed by the log key"):
        verify_checkpoint(note, other.verifier, [ws[0].verifier])
    # with several acceptable log keys, one suffices
    assert verify_checkpoint(note, [other.verifier, log.verifier]).log_key == log.verifier


def test_bad_cosignature_by_known_witness_rejects(
    keys: tuple[SigningKey, list[SigningKey]],
) -> None:
    log, ws = keys
    cp = Checkpoint("example.com/log", 5, bytes(32))
    other = Checkpoint("example.com/log", 6, bytes(32))
    note = sign_checkpoint(cp, log) + cosign_checkpoint(other, ws[0])  # cosigned other body
    with pytest.raises(VerificationError, match="w1.example"):
        verify_checkpoint(note, log.verifier, [ws[0].verifier])
    assert verify_checkpoint(note, log.verifier, [ws[1].verifier]).cosignatures == ()


def test_key_type_checks(keys: tuple[SigningKey, list[SigningKey]]) -> None:
    log, ws = keys
    cp = Checkpoint("example.com/log", 5, bytes(32))
    with pytest.raises(ConfigError):
        cosign_checkpoint(cp, log)
    with pytest.raises(ConfigError):
        verify_checkpoint(sign_checkpoint(cp, log), log.verifier, [log.verifier])
    with pytest.raises(FormatError):
        cosign_checkpoint("not a checkpoint\n", ws[0])


# --- interop vectors (tests/vectors/tlog/README.md) -------------------------------------


def test_vector_checkpoint_verifies() -> None:
    note = (VECTORS / "checkpoint.note").read_text()
    result = verify_checkpoint(note, vkey("log"), [vkey(w) for w in WITNESSES], 2)
    assert result.checkpoint == Checkpoint(ORIGIN, 37, ROOT_37)
    assert result.cosigners == ("w1.example", "w2.example")
    assert all(c.timestamp > 0 for c in result.cosignatures)
    with pytest.raises(VerificationError, match=f"{ORIGIN} size 37 has 2 valid"):
        verify_checkpoint(note, vkey("log"), [vkey(w) for w in WITNESSES], 3)
    assert verify_checkpoint(note, vkey("log")).checkpoint.tree_size == 37


def test_vector_bad_cosig_rejected() -> None:
    note = (VECTORS / "checkpoint-bad-cosig.note").read_text()
    with pytest.raises(VerificationError):
        verify_checkpoint(note, vkey("log"), [vkey(w) for w in WITNESSES])
    with pytest.raises(VerificationError):
        verify_checkpoint(note, vkey("log"), [vkey(w) for w in WITNESSES], 0)


def test_vector_bad_root_checkpoint_is_validly_signed() -> None:
    data = json.loads((VECTORS / "inclusion-bad-root-signed.json").read_text())
    result = verify_checkpoint(data["checkpoint"], vkey("log"))
    assert result.checkpoint.origin == ORIGIN
    assert result.checkpoint.tree_size == data["tree_size"] == 37
    assert result.checkpoint.root_hash.hex() == data["root_hash"]
    assert result.checkpoint.root_hash != ROOT_37


def test_vector_inclusion_checkpoint_is_validly_signed() -> None:
    data = json.loads((VECTORS / "inclusion.json").read_text())
    if "checkpoint" not in data:
        pytest.skip("inclusion.json carries no checkpoint")
    result = verify_checkpoint(data["checkpoint"], vkey("log"))
    assert result.checkpoint.root_hash == ROOT_37
