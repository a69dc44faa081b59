"""Encrypted ledgers through the API on the real SQLite backend (and memory)."""

import sqlite3
import stat

import pytest

from streamledger import KeyStore, Ledger, MemoryBackend, SQLiteBackend
from streamledger.core.entry import header_length
from streamledger.crypto import DecryptionError, Keyring, LedgerEncryption, ReaderKey
from streamledger.errors import ConfigError


@pytest.fixture(params=["sqlite", "memory"])
def backend(request, tmp_path):
    store = SQLiteBackend(tmp_path / "data") if request.param == "sqlite" else MemoryBackend()
    yield store
    store.close()


def _ledger(backend, readers, partitions=2):
    ledger = Ledger.create(backend, "pay", partitions=partitions)
    Keyring(backend, "pay").enable([r.public for r in readers])
    ledger.encryption = LedgerEncryption(backend, "pay", readers[0])
    return ledger


def _plain(ledger, partition):
    return [d.payload for d in ledger.read_decrypted(partition)]


def test_round_trip_verify_without_keys(backend):
    ops, audit = ReaderKey.generate("ops"), ReaderKey.generate("audit")
    ledger = _ledger(backend, [ops, audit])
    receipts = ledger.append_many([b'{"amount": %d}' % i for i in range(20)], partition=1)
    stream = list(ledger.append_stream((b"s%d" % i for i in range(2500)), batch_size=1000))
    assert len(stream) == 2500
    assert _plain(ledger, 1)[:20] == [b'{"amount": %d}' % i for i in range(20)]
    stored = [e.payload for e in ledger.read(1)]
    assert all(b"amount" not in p for p in stored)
    reader = Ledger(backend, "pay", encryption=LedgerEncryption(backend, "pay", audit))
    assert _plain(reader, 1)[:20] == _plain(ledger, 1)[:20]
    # Verification needs no key at all.
    assert Ledger(backend, "pay").verify().ok
    assert receipts[0].seq == 0


def test_subject_without_encryption_is_refused(backend):
    ledger = Ledger.create(backend, "plain")
    with pytest.raises(ConfigError, match="subject"):
        ledger.append(b"x", subject="alice")


def _tamper_sqlite(path, partition, position, record):
    conn = sqlite3.connect(path / "ledger.db")
    conn.execute(
        "UPDATE entries SET record=? WHERE partition=? AND position=?",
        (record, partition, position),
    )
    conn.commit()
    conn.close()


def _record(backend, partition, seq):
    return next(iter(backend.read("pay", partition, seq, seq + 1))).value


def test_tampered_ciphertext(tmp_path):
    backend = SQLiteBackend(tmp_path / "data")
    ledger = _ledger(backend, [ReaderKey.generate("ops")], partitions=1)
    ledger.append_many([b"alpha", b"beta", b"gamma"])
    record = bytearray(_record(backend, 0, 1))
    record[-3] ^= 0x01  # flip a bit of the GCM tag
    backend.close()
    _tamper_sqlite(tmp_path / "data", 0, 1, bytes(record))
    backend = SQLiteBackend(tmp_path / "data")
    report = Ledger(backend, "pay").verify()
    assert [(f.kind, f.seq) for f in report.findings] == [("payload_modified", 1)]
    ledger = Ledger(
        backend, "pay", encryption=LedgerEncryption(backend, "pay", ledger.encryption.reader)
    )
    with pytest.raises(DecryptionError, match="'pay' partition 0 seq 1: .*payload modified"):
        list(ledger.read_decrypted(0))
    assert [d.payload for d in ledger.read_decrypted(0, 2)] == [b"gamma"]
    backend.close()


def test_moved_ciphertext(tmp_path):
    backend = SQLiteBackend(tmp_path / "data")
    ledger = _ledger(backend, [ReaderKey.generate("ops")], partitions=1)
    ledger.append_many([b"pay alice 10", b"pay bob 99999"])
    first, second = _record(backend, 0, 0), _record(backend, 0, 1)
    # Copy entry 1's ciphertext into entry 0, recompute nothing.
    moved = first[: header_length(first)] + second[header_length(second) :]
    backend.close()
    _tamper_sqlite(tmp_path / "data", 0, 0, moved)
    backend = SQLiteBackend(tmp_path / "data")
    report = Ledger(backend, "pay").verify()
    assert ("payload_modified", 0) in [(f.kind, f.seq) for f in report.findings]
    reader = ledger.encryption.reader
    ledger = Ledger(backend, "pay", encryption=LedgerEncryption(backend, "pay", reader))
    with pytest.raises(DecryptionError, match="seq 0"):
        next(ledger.read_decrypted(0))
    backend.close()


def test_rotation_and_revocation(backend):
    ops, audit = ReaderKey.generate("ops"), ReaderKey.generate("audit")
    ledger = _ledger(backend, [ops, audit], partitions=1)
    ledger.append(b"epoch-1")
    keyring = Keyring(backend, "pay")
    assert keyring.rotate() == 2
    ledger.encryption.refresh()
    ledger.append(b"epoch-2")
    assert keyring.revoke("audit") == 3
    ledger.encryption.refresh()
    ledger.append(b"epoch-3")
    assert _plain(ledger, 0) == [b"epoch-1", b"epoch-2", b"epoch-3"]
    revoked = LedgerEncryption(backend, "pay", audit)
    assert revoked.epochs == [1, 2]
    entries = list(Ledger(backend, "pay").read(0))
    assert [revoked.decrypt(e).payload for e in entries[:2]] == [b"epoch-1", b"epoch-2"]
    with pytest.raises(DecryptionError, match="seq 2: reader 'audit' holds no key for epoch 3"):
        revoked.decrypt(entries[2])
    with pytest.raises(ConfigError, match="current epoch 3"):
        Ledger(backend, "pay", encryption=revoked).append(b"sneaky")
    # Granting again (history included) restores access.
    assert keyring.grant(ops, audit.public) == [1, 2, 3]
    assert LedgerEncryption(backend, "pay", audit).decrypt(entries[2]).payload == b"epoch-3"
    with pytest.raises(ConfigError, match="not a reader"):
        keyring.revoke("nobody")


def test_erasure_keeps_verify_green_and_payload_unreadable(backend):
    ops, audit = ReaderKey.generate("ops"), ReaderKey.generate("audit")
    ledger = _ledger(backend, [ops, audit], partitions=1)
    ledger.append(b"alice: card 4111", subject="alice")
    ledger.append(b"bob: card 5500", subject="bob")
    Keyring(backend, "pay").rotate()
    ledger.encryption.refresh()
    ledger.append(b"alice again", subject="alice")
    ledger.append(b"no subject")
    assert _plain(ledger, 0) == [
        b"alice: card 4111",
        b"bob: card 5500",
        b"alice again",
        b"no subject",
    ]
    stored = b"".join(e.payload for e in ledger.read(0))
    assert b"alice" not in stored  # the subject id never reaches the log
    record = ledger.encryption.erase("alice")
    assert record["keys_deleted"] == 2 and "alice" not in repr(record)
    assert Ledger(backend, "pay").verify().ok
    for holder in (ops, audit):
        fresh = LedgerEncryption(backend, "pay", holder)
        entries = list(Ledger(backend, "pay").read(0))
        for seq in (0, 2):
            with pytest.raises(
                DecryptionError, match=f"seq {seq}: the payload's subject was erased"
            ):
                fresh.decrypt(entries[seq])
        assert fresh.decrypt(entries[1]).payload == b"bob: card 5500"
        assert fresh.decrypt(entries[3]).payload == b"no subject"
    assert not any(n for n in ledger.encryption.subjects.names("pay") if "alice" in n)


def test_erased_key_bytes_are_gone_from_the_sqlite_file(tmp_path):
    backend = SQLiteBackend(tmp_path / "data")
    ledger = _ledger(backend, [ReaderKey.generate("ops")], partitions=1)
    ledger.append(b"x", subject="alice")
    store = ledger.encryption.subjects
    [name] = store.names("pay")
    wrapped = store.get("pay", name)
    path = tmp_path / "data" / "subject-keys.db"
    assert wrapped in path.read_bytes()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    ledger.encryption.erase("alice")
    assert wrapped not in path.read_bytes()
    journal = path.with_name(path.name + "-journal")
    assert not journal.exists() or wrapped not in journal.read_bytes()
    backend.close()


def test_reader_key_files_are_0600_and_errors_name_no_secret(tmp_path):
    keys = KeyStore(tmp_path / "keys")
    public = keys.generate_reader("acme")
    private = keys.reader_path("acme")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    secret = private.read_text().strip().split("+", 3)[3]
    assert keys.reader_public("acme") == public
    assert keys.load_reader("acme").public == public
    with pytest.raises(ConfigError, match="already exists"):
        keys.generate_reader("acme")
    private.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by other users") as info:
        keys.load_reader("acme")
    assert secret not in str(info.value)
    private.chmod(0o600)
    private.write_text(private.read_text().replace("X25519", "X25518"))
    with pytest.raises(ConfigError, match="not a valid reader private key") as info:
        keys.load_reader("acme")
    assert secret not in str(info.value)


def test_unsigned_documents_are_ignored_on_a_signed_ledger(tmp_path):
    from streamledger.core.note import SigningKey

    signer = SigningKey.generate("example.com/log")
    backend = SQLiteBackend(tmp_path / "data")
    ops, mallory = ReaderKey.generate("ops"), ReaderKey.generate("mallory")
    Ledger.create(backend, "pay", signer=signer)
    Keyring(backend, "pay").enable([ops.public], signer=signer)
    # Someone with write access to the documents forges an unsigned epoch 2.
    Keyring(backend, "pay", trust=()).rotate()
    forged = Keyring(backend, "pay", trust=())
    forged.grant(ops, mallory.public)
    keyring = Keyring(backend, "pay")
    assert list(keyring.manifests()) == [1] and all(m.signed for m in keyring.manifests().values())
    assert LedgerEncryption(backend, "pay", mallory).epochs == []
    with pytest.raises(ConfigError, match="signing key"):
        keyring.rotate()
    assert keyring.rotate(signer=signer) == 2
    backend.close()
