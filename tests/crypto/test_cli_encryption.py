"""The encryption commands end to end (real subprocesses, checked for tracebacks and for
private key material in any output: signing keys and reader keys alike)."""

import base64
import stat

from tests.cli.conftest import TRANSCRIPT, fails, make_ledger, ok


def _reader(data_dir, name):
    public = ok("keys", "generate", name, "--reader", data_dir=data_dir).out.strip()
    path = data_dir / "keys" / f"{name}.reader"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    b64 = path.read_text().strip().split("+", 3)[3]
    secrets = {b64, base64.b64decode(b64).hex(), path.read_text().strip()}
    for command, out in TRANSCRIPT.outputs:
        TRANSCRIPT.check(command, out, secrets)
    TRANSCRIPT.secrets |= secrets
    return public


def test_encrypted_ledger_commands(tmp_path):
    data = tmp_path / "data"
    make_ledger(data, "pay", partitions=1)  # plain ledger with signing key K
    ops = _reader(data, "ops")
    audit = _reader(data, "audit")
    assert ok("keys", "show", "ops", "--reader", data_dir=data).out.strip() == ops
    assert "audit\t(reader)" in ok("keys", "list", data_dir=data).out
    ok("init", "enc", "--signing-key", "K", "--encrypt", "--reader", "ops", data_dir=data)
    ok("append", "enc", data_dir=data, stdin="one\ntwo\n")
    ok("append", "enc", "--subject", "cust-42", data_dir=data, stdin="private\n")
    assert ok("read", "enc", data_dir=data).out.splitlines() == [
        "0:0\tone",
        "0:1\ttwo",
        "0:2\tprivate",
    ]
    # audit was not granted yet: clear error naming the entry, exit 2.
    result = fails(2, "read", "enc", "--reader", "audit", data_dir=data)
    assert "'enc' partition 0 seq 0" in result.err and "epoch 1" in result.err
    ok("keys", "grant", "enc", "--reader", "audit", "--reader-pub", audit, data_dir=data)
    assert "0:1\ttwo" in ok("read", "enc", "--reader", "audit", data_dir=data).out
    ok("keys", "revoke", "enc", "--reader", "audit", data_dir=data)
    ok("append", "enc", data_dir=data, stdin="after revoke\n")
    result = fails(2, "read", "enc", "--reader", "audit", "--from", "3", data_dir=data)
    assert "seq 3" in result.err and "epoch 2" in result.err
    assert "0:2\tprivate" in ok("read", "enc", "--reader", "audit", "--to", "3", data_dir=data).out
    ok("keys", "rotate", "enc", data_dir=data)
    epochs = ok("keys", "epochs", "enc", data_dir=data).out
    assert "epoch 3" in epochs and "(unsigned)" not in epochs
    # erasure: verify still passes, the payload is gone
    assert "1 key(s) destroyed" in ok("erase", "enc", "--subject", "cust-42", data_dir=data).out
    assert ok("verify", "enc", data_dir=data).rc == 0
    result = fails(2, "read", "enc", data_dir=data)
    assert "seq 2: the payload's subject was erased" in result.err
    out = ok("read", "enc", "--skip-unreadable", data_dir=data).out
    assert "0:2\t<cannot be decrypted>" in out and "0:3\tafter revoke" in out
    # without any reader key held, read shows that entries are encrypted
    (data / "keys" / "ops.reader").rename(tmp_path / "ops.reader")
    assert "0:0\t<encrypted; pass --reader NAME>" in ok("read", "enc", data_dir=data).out
    result = fails(2, "append", "enc", data_dir=data, stdin="x\n")
    assert "--reader" in result.err
    # usage errors
    fails(2, "append", "pay", "--subject", "x", data_dir=data, stdin="x\n")
    fails(2, "init", "other", "--encrypt", data_dir=data)
    fails(2, "keys", "revoke", "pay", "--reader", "ops", data_dir=data)


def test_tampered_ciphertext_cli(tmp_path):
    import sqlite3

    data = tmp_path / "data"
    _reader(data, "ops")
    ok("init", "enc", "--encrypt", "--reader", "ops", data_dir=data)
    ok("append", "enc", data_dir=data, stdin="a\nb\n")
    conn = sqlite3.connect(data / "ledger.db")
    [(record,)] = conn.execute("SELECT record FROM entries WHERE position=1").fetchall()
    record = bytearray(record)
    record[-1] ^= 1
    conn.execute("UPDATE entries SET record=? WHERE position=1", (bytes(record),))
    conn.commit()
    conn.close()
    assert "payload_modified" in fails(1, "verify", "enc", data_dir=data).out
    result = fails(2, "read", "enc", data_dir=data)
    assert "'enc' partition 0 seq 1" in result.err and "payload modified" in result.err
