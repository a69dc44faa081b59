"""verify after the SQLite file itself was changed behind the ledger's back."""

from __future__ import annotations

import json
import os
import sqlite3
from contextlib import closing

import pytest

from tests.cli.conftest import LEDGER_DB, copy_store, fails, generate_key, ok

FINDING_KEYS = {"kind", "partition", "seq", "offset", "detail"}


def _tamper(data_dir, change):
    """Run ``change(conn, ledger_id)`` on the store's database, committed."""
    with closing(sqlite3.connect(data_dir / LEDGER_DB)) as conn, conn:
        (lid,) = conn.execute("SELECT id FROM ledgers WHERE name='payments'").fetchone()
        change(conn, lid)


def _set_record(conn, lid, partition, seq, record):
    cur = conn.execute(
        "UPDATE entries SET record=? WHERE ledger_id=? AND partition=? AND position=?",
        (record, lid, partition, seq),
    )
    assert cur.rowcount == 1


def _flip_payload_byte(conn, lid):
    (record,) = conn.execute(
        "SELECT record FROM entries WHERE ledger_id=? AND partition=1 AND position=17", (lid,)
    ).fetchone()
    record = bytearray(record)
    record[-3] ^= 0x01  # a payload byte: the payload ends the record
    _set_record(conn, lid, 1, 17, bytes(record))


def _delete_row(conn, lid):
    cur = conn.execute(
        "DELETE FROM entries WHERE ledger_id=? AND partition=2 AND position=9", (lid,)
    )
    assert cur.rowcount == 1


def _garbage_record(conn, lid):
    _set_record(conn, lid, 0, 30, os.urandom(120))


def _check_report(report):
    assert set(report) >= {"ledger", "ok", "entries_checked", "partitions"}
    assert report["ledger"] == "payments"
    assert isinstance(report["entries_checked"], int)
    for part in report["partitions"]:
        assert {"partition", "entries_checked", "findings"} <= set(part)
        for finding in part["findings"]:
            assert set(finding) >= FINDING_KEYS, finding
            assert finding["partition"] == part["partition"]
    return [f for p in report["partitions"] for f in p["findings"]]


@pytest.mark.parametrize(
    "tamper, kind, partition, seq",
    [
        (_flip_payload_byte, "payload_modified", 1, 17),
        (_delete_row, "missing", 2, 9),
        (_garbage_record, "malformed", 0, 30),
    ],
    ids=["payload-byte", "deleted-row", "garbage-record"],
)
def test_tampered_store_is_reported(populated, tmp_path, tamper, kind, partition, seq):
    source, vkey = populated
    data = copy_store(source, tmp_path / "copy")
    _tamper(data, tamper)
    result = fails(1, "verify", "payments", "--vkey", vkey, "--json", data_dir=data)
    report = json.loads(result.out)
    assert report["ok"] is False
    findings = _check_report(report)
    first = findings[0]
    assert (first["kind"], first["partition"], first["seq"]) == (kind, partition, seq), findings
    others = [p for p in report["partitions"] if p["partition"] != partition]
    assert all(p["findings"] == [] for p in others)
    # the human report names it too
    human = fails(1, "verify", "payments", "--vkey", vkey, data_dir=data).out
    assert f"{kind}: payments/{partition} seq {seq}" in human
    assert "TAMPERING FOUND" in human
    if kind == "malformed":
        # reading or proving the damaged entry: a one-line error that says where, exit 2
        err = fails(2, "read", "payments", "-p", "0", "--from", "28", data_dir=data).err
        assert "position 30" in err and "verify" in err
        err = fails(2, "prove", "inclusion", "payments", "-p", "0", "--seq", "30", data_dir=data)
        assert "seq 30" in err.err


def test_wrong_vkey_is_untrusted(populated, tmp_path):
    source, vkey = populated
    other = generate_key(tmp_path / "elsewhere", "K")  # same name, different key
    assert other != vkey
    report = json.loads(
        fails(1, "verify", "payments", "--vkey", other, "--json", data_dir=source).out
    )
    findings = _check_report(report)
    assert findings and {f["kind"] for f in findings} == {"untrusted_checkpoint"}
    assert {f["partition"] for f in findings} == {0, 1, 2}
    # and the honest store verifies with the right key
    clean = json.loads(ok("verify", "payments", "--vkey", vkey, "--json", data_dir=source).out)
    assert clean["ok"] is True and _check_report(clean) == []
    assert clean["entries_checked"] == 300
