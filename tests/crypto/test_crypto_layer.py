"""The crypto layer alone: envelope format, AAD binding, HPKE wrapping, reader keys."""

import pytest

from streamledger import MemoryBackend
from streamledger.core.entry import build_record, decode_record
from streamledger.crypto import (
    DecryptionError,
    Keyring,
    LedgerEncryption,
    ReaderKey,
    ReaderPublicKey,
    parse_envelope,
)
from streamledger.crypto import readers as readers_mod
from streamledger.crypto.envelope import CONTENT_TYPE_PREFIX
from streamledger.errors import ConfigError, FormatError
from streamledger.ledger import Ledger


def _setup(partitions=2):
    backend = MemoryBackend()
    Ledger.create(backend, "led", partitions=partitions)
    admin = ReaderKey.generate("admin")
    Keyring(backend, "led").enable([admin.public])
    return backend, LedgerEncryption(backend, "led", admin)


def _entry_at(partition, seq, payload, content_type, ledger="led"):
    record, _ = build_record(ledger, partition, seq, 0, "p", content_type, b"", bytes(32), payload)
    return decode_record(record)


def test_envelope_layout_and_round_trip():
    _, enc = _setup()
    [(sealed, key, ctype)] = enc.encrypt_batch(1, 7, [(b"hello", b"k", "application/json")])
    assert key == b"k" and ctype == CONTENT_TYPE_PREFIX + "application/json"
    env = parse_envelope(sealed)
    assert sealed[:4] == b"SLEN" and env.epoch == 1 and env.ref == b"" and len(env.nonce) == 12
    assert b"hello" not in sealed
    plain = enc.decrypt(_entry_at(1, 7, sealed, ctype))
    assert plain.payload == b"hello" and plain.content_type == "application/json"


def test_nonces_are_fresh():
    _, enc = _setup()
    out = enc.encrypt_batch(0, 0, [(b"same", b"", "t")] * 50)
    assert len({parse_envelope(p).nonce for p, _, _ in out}) == 50


@pytest.mark.parametrize(
    "where",
    [(1, 8, "led"), (0, 7, "led"), (1, 7, "other")],
    ids=["other-seq", "other-partition", "other-ledger"],
)
def test_aad_binds_ciphertext_to_ledger_partition_and_seq(where):
    _, enc = _setup()
    [(sealed, _, ctype)] = enc.encrypt_batch(1, 7, [(b"hello", b"", "text/plain")])
    partition, seq, ledger = where
    # A header rebuilt around the moved ciphertext: its payload hash matches, the AAD does not.
    moved = _entry_at(partition, seq, sealed, ctype, ledger)
    assert moved.payload_matches()
    with pytest.raises(DecryptionError, match=f"partition {partition} seq {seq}") as info:
        enc.decrypt(moved)
    assert "authentication failed" in str(info.value)


def test_aad_binds_content_type():
    _, enc = _setup()
    [(sealed, _, _)] = enc.encrypt_batch(0, 0, [(b"x", b"", "text/plain")])
    with pytest.raises(DecryptionError, match="authentication failed"):
        enc.decrypt(_entry_at(0, 0, sealed, CONTENT_TYPE_PREFIX + "application/json"))


def test_wrong_key_fails_clearly():
    backend, enc = _setup()
    [(sealed, _, ctype)] = enc.encrypt_batch(0, 0, [(b"x", b"", "t")])
    other = ReaderKey.generate("mallory")
    with pytest.raises(DecryptionError, match="holds no key for epoch 1"):
        LedgerEncryption(backend, "led", other).decrypt(_entry_at(0, 0, sealed, ctype))
    # Same reader name, different key: the wrapped key is not for it.
    impostor = ReaderKey.generate("admin")
    assert LedgerEncryption(backend, "led", impostor).epochs == []


def test_hpke_fallback_interoperates_with_native():
    key = ReaderKey.generate("r")
    info = b"ctx"
    sealed = readers_mod._hpke_seal(key.public._key, b"k" * 32, info)
    assert key.unwrap(sealed, info) == b"k" * 32
    sealed = key.public.wrap(b"j" * 32, info)
    assert readers_mod._hpke_open(key._private, sealed, info) == b"j" * 32
    with pytest.raises(FormatError, match="cannot open"):
        key.unwrap(sealed, b"other ctx")


def test_reader_keys_text_and_repr_never_show_the_private_key():
    key = ReaderKey.generate("acme/ops")
    secret = key.private_text().split("+", 3)[3]
    assert ReaderKey.from_private_text(key.private_text()).public == key.public
    assert ReaderPublicKey.parse(str(key.public)) == key.public
    for text in (repr(key), str(key), repr(key.public), str(key.public)):
        assert secret not in text
    with pytest.raises(TypeError):
        __import__("pickle").dumps(key)
    with pytest.raises(ConfigError, match="PRIVATE"):
        ReaderPublicKey.parse(key.private_text())
    backend, enc = _setup()
    assert "admin" in repr(enc) and secret not in repr(enc)
    for value in enc._keys.values():
        assert value.hex() not in repr(enc) and repr(value) not in repr(enc)
