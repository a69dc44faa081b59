"""``streamledger keys``: key files, verifier keys, and that secrets are never printed."""

from __future__ import annotations

import stat

from tests.cli.conftest import TRANSCRIPT, fails, generate_key, ok, streamledger


def test_generate_show_and_refuse_overwrite(tmp_path):
    data = tmp_path / "data"
    result = ok("keys", "generate", "example.com/payments-log", data_dir=data)
    key_files = list((data / "keys").glob("*.key"))
    assert len(key_files) == 1
    key_file = key_files[0]
    TRANSCRIPT.add_key_file(key_file)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    secret = key_file.read_text().strip()
    assert secret.startswith("PRIVATE+KEY+example.com/payments-log+")

    # stdout is exactly the verifier key line: name+hash+base64
    vkey = result.out.strip()
    assert result.out == vkey + "\n"
    name, key_hash, b64 = vkey.split("+", 2)
    assert name == "example.com/payments-log"
    assert len(key_hash) == 8 and int(key_hash, 16) >= 0
    assert b64 and "PRIVATE" not in result.out + result.err
    assert str(key_file) in result.err  # tells the user where the secret lives

    shown = ok("keys", "show", "example.com/payments-log", "--vkey", data_dir=data)
    assert shown.out == vkey + "\n"
    details = ok("keys", "show", "example.com/payments-log", data_dir=data)
    assert vkey in details.out and key_hash in details.out
    listed = ok("keys", "list", data_dir=data)
    assert listed.out.split() == ["example.com/payments-log"]

    again = fails(2, "keys", "generate", "example.com/payments-log", data_dir=data)
    assert "already exists" in again.err
    assert key_file.read_text().strip() == secret  # not overwritten
    assert again.out == ""


def test_witness_key_and_two_keys_differ(tmp_path):
    data = tmp_path / "data"
    v1 = generate_key(data, "log-a")
    v2 = generate_key(data, "log-b")
    assert v1.split("+")[2] != v2.split("+")[2]
    result = ok("keys", "generate", "witness.example", "--witness", data_dir=data)
    for path in (data / "keys").glob("*.key"):
        TRANSCRIPT.add_key_file(path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert result.out.startswith("witness.example+")


def test_key_errors(tmp_path):
    data = tmp_path / "data"
    generate_key(data, "K")
    keys = data / "keys"
    # missing key name (argparse) and an unknown key
    missing = streamledger("keys", "generate", data_dir=data)
    assert missing.rc == 2 and "usage:" in missing.err
    err = fails(2, "keys", "show", "nope", "--vkey", data_dir=data).err
    assert "nope" in err
    fails(2, "keys", "generate", "", data_dir=data)
    fails(2, "keys", "generate", "bad name with spaces", data_dir=data)

    # a key file of garbage (text and binary): named, never quoted
    (keys / "garbage.key").write_text("this is not a key\n")
    (keys / "garbage.key").chmod(0o600)
    err = fails(2, "init", "l1", "--signing-key", "garbage", data_dir=data).err
    assert "garbage.key" in err and "this is not a key" not in err
    (keys / "binary.key").write_bytes(bytes(range(256)))
    (keys / "binary.key").chmod(0o600)
    assert "binary.key" in fails(2, "init", "l2", "--signing-key", "binary", data_dir=data).err

    # a good key file that others can read: refused, with the fix
    good = (keys / "K.key").read_text()
    (keys / "open.key").write_text(good.replace("PRIVATE+KEY+K+", "PRIVATE+KEY+open+"))
    (keys / "open.key").chmod(0o644)
    err = fails(2, "init", "l3", "--signing-key", "open", data_dir=data).err
    assert "644" in err and "chmod 600" in err

    # a key file holding another key's name
    (keys / "other.key").write_text(good)
    (keys / "other.key").chmod(0o600)
    assert "'K'" in fails(2, "init", "l4", "--signing-key", "other", data_dir=data).err

    # the private key given where a verifier key belongs: refused without echoing it
    ok("init", "ledger", "--signing-key", "K", data_dir=data)
    fails(2, "verify", "ledger", "--vkey", str(keys / "K.key"), data_dir=data)
    fails(2, "verify", "ledger", "--vkey", good.strip(), data_dir=data)
    fails(2, "verify", "ledger", "--vkey", str(keys / "binary.key"), data_dir=data)
    fails(2, "verify", "ledger", "--vkey", "not-a-key", data_dir=data)
    fails(2, "verify", "ledger", "--vkey", "K+12345678+AAAA", data_dir=data)
    # none of the above created a ledger
    assert ok("ledgers", data_dir=data).out.split()[0] == "ledger"
    assert len(ok("ledgers", data_dir=data).out.splitlines()) == 1
