"""Malformed input: a clear one-line error on stderr, exit 2, never a traceback."""

from __future__ import annotations

import os

import pytest

from tests.cli.conftest import LEDGER_DB, fails, make_ledger, ok, streamledger

# (arguments after --data-dir POPULATED, words the one-line message must contain)
ON_POPULATED = [
    (["read", "nope"], ["nope", "payments"]),
    (["append", "nope"], ["nope"]),
    (["verify", "nope"], ["nope"]),
    (["prove", "inclusion", "nope", "-p", "0", "--seq", "0"], ["nope"]),
    (["init", "other", "--signing-key", "no-such-key"], ["no-such-key", "keys generate"]),
    (["checkpoint", "payments", "--signing-key", "no-such-key"], ["no-such-key"]),
    (["init", "zero", "--partitions", "0"], ["partitions", "0"]),
    (["init", "a/b"], ["'a/b'"]),
    (["init", "payments"], ["already exists"]),
    (["read", "payments", "--partition", "9"], ["9", "0..2"]),
    (["read", "payments", "--from", "-1"], ["negative"]),
    (["append", "payments", "--partition", "9"], ["9"]),
    (["append", "payments", "--batch-size", "0"], ["batch-size"]),
    (["append", "payments", "--file", "/nonexistent/in.txt"], ["/nonexistent/in.txt"]),
    (["prove", "inclusion", "payments", "-p", "0", "--seq", "100000"], ["100000"]),
    (["prove", "inclusion", "payments", "-p", "0", "--seq", "-1"], ["-1"]),
    (["prove", "inclusion", "payments", "-p", "5", "--seq", "0"], ["5"]),
    (["prove", "consistency", "payments", "-p", "0", "--old-size", "100000"], ["100000"]),
    (
        ["prove", "consistency", "payments", "-p", "0", "--old-size", "1", "--new-size", "99999"],
        ["99999"],
    ),
    (["verify", "payments", "--require-witnesses", "1"], ["witness"]),
]


@pytest.mark.parametrize("args, words", ON_POPULATED, ids=[" ".join(a) for a, _ in ON_POPULATED])
def test_error_on_populated_store(populated, args, words):
    data, _ = populated
    result = fails(2, *args, data_dir=data, stdin="x\n")
    for word in words:
        assert word in result.err, str(result)


def test_argparse_errors_exit_2(tmp_path):
    for args in (["init"], ["init", "x", "--partitions", "many"], ["frobnicate"]):
        result = streamledger(*args, data_dir=tmp_path)
        assert result.rc == 2 and "usage:" in result.err, str(result)


def test_prove_before_any_checkpoint(tmp_path):
    data = tmp_path / "data"
    make_ledger(data, "fresh", partitions=1)
    ok("append", "fresh", data_dir=data, stdin="one\ntwo\n")
    err = fails(2, "prove", "inclusion", "fresh", "-p", "0", "--seq", "1", data_dir=data).err
    assert "checkpoint" in err
    ok("checkpoint", "fresh", data_dir=data)
    ok("append", "fresh", data_dir=data, stdin="three\n")
    # seq 2 exists but no signed checkpoint covers it yet
    err = fails(2, "prove", "inclusion", "fresh", "-p", "0", "--seq", "2", data_dir=data).err
    assert "checkpoint" in err
    ok("prove", "inclusion", "fresh", "-p", "0", "--seq", "1", data_dir=data)
    # a ledger made without a key cannot checkpoint until given one
    ok("init", "unsigned", data_dir=data)
    assert "--signing-key" in fails(2, "checkpoint", "unsigned", data_dir=data).err


def test_broken_data_dirs(tmp_path):
    # --data-dir is a file
    a_file = tmp_path / "file"
    a_file.write_text("hello\n")
    for args in (["init", "x"], ["read", "x"], ["ledgers"], ["verify", "x"]):
        assert "not a directory" in fails(2, *args, data_dir=a_file).err
    fails(2, "keys", "generate", "K", data_dir=a_file)
    assert a_file.read_text() == "hello\n"

    # no store there yet
    assert "init" in fails(2, "read", "x", data_dir=tmp_path / "empty").err

    # the store is not a database at all
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / LEDGER_DB).write_bytes(os.urandom(8192))
    for args in (["verify", "payments"], ["read", "payments"], ["init", "payments"]):
        assert LEDGER_DB in fails(2, *args, data_dir=garbage).err

    # a database, but not one of ours, truncated mid-page
    good = tmp_path / "good"
    make_ledger(good, "payments", partitions=1)
    ok("append", "payments", data_dir=good, stdin="".join(f"{i}\n" for i in range(200)))
    db = good / LEDGER_DB
    for suffix in ("-wal", "-shm"):
        (good / (LEDGER_DB + suffix)).unlink(missing_ok=True)
    db.write_bytes(db.read_bytes()[:1500])
    result = streamledger("verify", "payments", data_dir=good)
    assert result.rc in (1, 2), str(result)
