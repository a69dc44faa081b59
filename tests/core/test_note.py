"""Tests for streamledger.core.note (C2SP signed notes)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from streamledger.core.note import (
    KEY_TYPE_COSIGNATURE,
    KEY_TYPE_ED25519,
    NoteSignature,
    SigningKey,
    VerifierKey,
    add_signature,
    key_hash,
    open_note,
    parse_note,
    sign_note,
    signature_line,
)
from streamledger.errors import ConfigError, FormatError, VerificationError

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "tlog"


def vkey(name: str) -> VerifierKey:
    return VerifierKey.parse((VECTORS / f"{name}.vkey").read_text())


# --- keys -------------------------------------------------------------------------------


@pytest.mark.parametrize("key_type", [KEY_TYPE_ED25519, KEY_TYPE_COSIGNATURE])
def test_generated_key_vkey_round_trip(key_type: int) -> None:
    key = SigningKey.generate("example.com/log", key_type)
    text = str(key.verifier)
    parsed = VerifierKey.parse(text)
    assert parsed == key.verifier
    assert parsed.key_type == key_type
    assert parsed.key_hash == key.key_hash == key_hash(key.name, key_type, parsed.public_bytes)
    name, hash_hex, b64 = text.split("+", 2)
    assert (name, hash_hex) == ("example.com/log", key.key_hash.hex())
    assert base64.b64decode(b64)[0] == key_type


@pytest.mark.parametrize("key_type", [KEY_TYPE_ED25519, KEY_TYPE_COSIGNATURE])
def test_private_text_round_trip(key_type: int) -> None:
    key = SigningKey.generate("w.example", key_type)
    text = key.private_text()
    assert text.startswith(f"PRIVATE+KEY+w.example+{key.key_hash.hex()}+")
    again = SigningKey.from_private_text(text + "\n")
    assert again.verifier == key.verifier
    assert again.key_type == key_type
    msg = b"hello\n"
    assert key.verifier.verify(msg, again.sign(msg))


def test_repr_and_str_hide_secret() -> None:
    key = SigningKey.generate("example.com/log")
    secret_b64 = key.private_text().split("+", 4)[4]
    seed = base64.b64decode(secret_b64)[1:]
    for shown in (repr(key), str(key), f"{key}", repr([key])):
        assert secret_b64 not in shown
        assert "PRIVATE" not in shown
        assert seed.hex() not in shown
        assert base64.b64encode(seed).decode() not in shown
    assert "example.com/log" in repr(key)


@pytest.mark.parametrize(
    "name", ["", "has space", "tab\there", "plus+sign", "nb\u00a0sp", "a\u2003b"]
)
def test_bad_key_names_rejected(name: str) -> None:
    with pytest.raises(ConfigError):
        SigningKey.generate(name)


def test_from_private_text_garbage_does_not_echo() -> None:
    key = SigningKey.generate("example.com/log")
    good = key.private_text()
    secret = good.split("+", 4)[4]
    bad_inputs = [
        "garbage",
        "",
        good.replace("PRIVATE", "PUBLIC"),
        good[:-4] + "!!!!",  # bad base64
        good.replace(key.key_hash.hex(), "00000000"),  # hash mismatch
        good.replace(key.key_hash.hex(), "xyz"),  # hash not hex
        good.replace("example.com/log", "bad name"),
        "PRIVATE+KEY+n+00000000+" + base64.b64encode(b"\x01" + b"\x00" * 31).decode(),
        "PRIVATE+KEY+n+00000000+" + base64.b64encode(b"\x09" + b"\x00" * 32).decode(),
    ]
    for text in bad_inputs:
        with pytest.raises(ConfigError) as info:
            SigningKey.from_private_text(text)
        message = str(info.value)
        assert secret not in message
        assert secret[:16] not in message
        assert text not in message or text == ""


def test_parse_vector_keys() -> None:
    log = vkey("log")
    assert log.name == "example.com/ledger/payments/partition/0"
    assert log.key_type == KEY_TYPE_ED25519
    assert log.key_hash.hex() == "d47ec47f"
    assert len(log.public_bytes) == 32
    assert str(log) == (VECTORS / "log.vkey").read_text().strip()
    for w in ("w1", "w2", "w3"):
        assert vkey(w).key_type == KEY_TYPE_COSIGNATURE


def _vkey_text(name: str, hash_hex: str, raw: bytes) -> str:
    return f"{name}+{hash_hex}+{base64.b64encode(raw).decode()}"


@pytest.mark.parametrize(
    ("text", "what"),
    [
        ("no-plus-signs", "form"),
        ("name+d47ec47f", "form"),
        (_vkey_text("n", "d47ec47", b"\x01" + b"\x00" * 32), "8 hexadecimal"),
        (_vkey_text("n", "0x47ec47", b"\x01" + b"\x00" * 32), "8 hexadecimal"),
        ("n+d47ec47f+AX/OcXQQaSzklG60hptR*gLp82xUs+ytmYE9+MBkLAZl", "base64"),
        ("n+d47ec47f+AX/OcXQQaSzklG60hptR/gLp82xUs+ytmYE9+MBkLAZ", "base64"),
        (_vkey_text("n", "00000000", b"\x02" + b"\x00" * 32), "unknown key type 0x02"),
        (_vkey_text("n", "00000000", b"\x01" + b"\x00" * 31), "wrong key length"),
        (_vkey_text("n", "00000000", b""), "empty"),
        (_vkey_text("bad name", "00000000", b"\x01" + b"\x00" * 32), "key name"),
    ],
)
def test_vkey_parse_errors(text: str, what: str) -> None:
    with pytest.raises(FormatError, match=what):
        VerifierKey.parse(text)


def test_vkey_bad_hash() -> None:
    good = (VECTORS / "log.vkey").read_text().strip()
    with pytest.raises(FormatError, match="bad key hash"):
        VerifierKey.parse(good.replace("d47ec47f", "d47ec480"))
    # uppercase hex is accepted, as by Go's ParseUint
    assert VerifierKey.parse(good.replace("d47ec47f", "D47EC47F")) == vkey("log")


# --- notes ------------------------------------------------------------------------------


def test_sign_and_open_round_trip() -> None:
    key = SigningKey.generate("example.com/a")
    other = SigningKey.generate("example.com/b")
    text = "hello\n\nworld\n"
    note = sign_note(text, [key, other])
    assert note.startswith(text + "\n\u2014 example.com/a ")
    parsed_text, sigs = parse_note(note)
    assert parsed_text == text
    assert [s.name for s in sigs] == ["example.com/a", "example.com/b"]
    assert sigs[0].key_hash == key.key_hash and len(sigs[0].signature) == 64

    opened = open_note(note, [key.verifier])
    assert opened.text == text
    assert opened.signers == ("example.com/a",)
    assert [s.name for s in opened.unverified] == ["example.com/b"]
    assert open_note(note, [key.verifier, other.verifier]).signers == (
        "example.com/a",
        "example.com/b",
    )


def test_sign_note_requires_final_newline_and_no_controls() -> None:
    key = SigningKey.generate("example.com/a")
    with pytest.raises(FormatError):
        sign_note("no newline", key)
    with pytest.raises(FormatError):
        sign_note("tab\there\n", key)


def test_open_rejects_tampered_text() -> None:
    key = SigningKey.generate("example.com/a")
    note = sign_note("hello\n", key)
    with pytest.raises(VerificationError, match="invalid signature"):
        open_note(note.replace("hello", "hellO"), [key.verifier])


def test_open_wrong_key_rejects() -> None:
    key = SigningKey.generate("example.com/a")
    note = sign_note("hello\n", key)
    # different key, different name: signature is unknown, so no verified signature
    with pytest.raises(VerificationError, match="no verified signature"):
        open_note(note, [SigningKey.generate("example.com/z").verifier])
    # same name, different key (so a different key ID): still ignored, still rejected
    with pytest.raises(VerificationError, match="no verified signature"):
        open_note(note, [SigningKey.generate("example.com/a").verifier])
    with pytest.raises(VerificationError):
        open_note(note, [])


def test_open_same_name_and_id_but_wrong_key_rejects() -> None:
    key = SigningKey.generate("example.com/a")
    impostor = SigningKey.generate("example.com/a")
    note = sign_note("hello\n", impostor)
    _, sigs = parse_note(note)
    forged = NoteSignature(key.name, key.key_hash, sigs[0].signature).to_line()
    bad = "hello\n\n" + forged + "\n"
    with pytest.raises(VerificationError, match="invalid signature"):
        open_note(bad, [key.verifier])


@pytest.mark.parametrize(
    "note",
    [
        "hello\n",
        "hello\n\n",
        "hello\n\n\u2014 a AAAAAAA=",  # no final newline
        "hello\n\n- a QUJDREVGR0g=\n",  # hyphen, not em dash
        "hello\n\n\u2014 a\n",
        "hello\n\n\u2014 a not*base64\n",
        "hello\n\n\u2014 a AAAA\n",  # too short
        "hel\x01lo\n\n\u2014 a QUJDREVGR0g=\n",
    ],
)
def test_parse_note_malformed(note: str) -> None:
    with pytest.raises(FormatError):
        parse_note(note)


def test_add_signature() -> None:
    a = SigningKey.generate("example.com/a")
    b = SigningKey.generate("example.com/b")
    note = sign_note("hello\n", a)
    line = signature_line("hello\n", b)
    both = add_signature(note, line)
    assert add_signature(note, line + "\n") == both
    assert open_note(both, [a.verifier, b.verifier]).signers == ("example.com/a", "example.com/b")
    with pytest.raises(FormatError):
        add_signature(note, "not a signature line")
    with pytest.raises(FormatError):
        add_signature("not a note", line)


def test_vector_checkpoint_note_opens() -> None:
    note = (VECTORS / "checkpoint.note").read_text()
    keys = [vkey(n) for n in ("log", "w1", "w2", "w3")]
    opened = open_note(note, keys)
    assert opened.signers == ("example.com/ledger/payments/partition/0", "w1.example", "w2.example")
    assert [s.name for s in opened.unverified] == ["stranger.example"]
    assert open_note(note, [vkey("log")]).signers == ("example.com/ledger/payments/partition/0",)


def test_vector_bad_cosig_rejected_only_when_trusted() -> None:
    note = (VECTORS / "checkpoint-bad-cosig.note").read_text()
    with pytest.raises(VerificationError, match="w1.example"):
        open_note(note, [vkey(n) for n in ("log", "w1", "w2", "w3")])
    # the broken cosignature is by a key this verifier does not know: ignored
    assert open_note(note, [vkey("log"), vkey("w2")]).signers[-1] == "w2.example"


def test_cosignature_key_signs_timestamped_message() -> None:
    w = SigningKey.generate("w.example", KEY_TYPE_COSIGNATURE)
    sig = w.sign(b"body\n", timestamp=1234)
    assert len(sig) == 72 and int.from_bytes(sig[:8], "big") == 1234
    assert w.verifier.verify(b"body\n", sig)
    assert not w.verifier.verify(b"body!\n", sig)
    changed_time = (1235).to_bytes(8, "big") + sig[8:]
    assert not w.verifier.verify(b"body\n", changed_time)
    with pytest.raises(ValueError):
        SigningKey.generate("n").sign(b"x", timestamp=1)
