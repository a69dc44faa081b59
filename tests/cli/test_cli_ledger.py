"""init, append (stdin, --file, --key), read, checkpoint and verify of an honest ledger."""

from __future__ import annotations

import base64
import json
import re

from tests.cli.conftest import make_ledger, ok

B64 = r"[A-Za-z0-9+/]+=*"


def _read_json(data_dir, ledger, partition, *extra):
    out = ok("read", ledger, "--partition", str(partition), "--json", *extra, data_dir=data_dir)
    return [json.loads(line) for line in out.out.splitlines()]


def test_append_read_checkpoint_verify(tmp_path):
    data = tmp_path / "data"
    vkey = make_ledger(data, "payments", partitions=3, key="K")

    # stdin: one entry per line, blank lines (and CRLF endings) skipped
    payloads = [f'{{"n":{i},"text":"pay ✓ {i}"}}' for i in range(30)]
    stdin = "\n".join(payloads[:10]) + "\n\n\r\n" + "\r\n".join(payloads[10:20]) + "\n\n"
    result = ok("append", "payments", data_dir=data, stdin=stdin)
    assert "appended 20 entries" in result.err

    # --file, with --key: every entry in one partition, with its receipt
    (tmp_path / "in.txt").write_text("\n".join(payloads[20:]) + "\n")
    receipts = ok(
        "append",
        "payments",
        "--file",
        tmp_path / "in.txt",
        "--key",
        "acct-7",
        "--json",
        data_dir=data,
    ).out.splitlines()
    receipts = [json.loads(r) for r in receipts]
    assert len(receipts) == 10
    keyed = {r["partition"] for r in receipts}
    assert len(keyed) == 1
    (keyed_partition,) = keyed
    seqs = [r["seq"] for r in receipts]
    assert seqs == list(range(seqs[0], seqs[0] + 10))

    # read --json round-trips every payload exactly once, in order per partition
    entries = {p: _read_json(data, "payments", p) for p in range(3)}
    got = [e["payload"] for p in range(3) for e in entries[p]]
    assert sorted(got) == sorted(payloads)
    for p, rows in entries.items():
        assert [e["seq"] for e in rows] == list(range(len(rows)))
        assert all(e["partition"] == p and e["ledger"] == "payments" for e in rows)
        for e in rows:
            assert re.fullmatch(r"[0-9a-f]{64}", e["leaf_hash"])
            assert re.fullmatch(r"[0-9a-f]{64}", e["payload_hash"])
    keyed_rows = [e for e in entries[keyed_partition] if e["key"] == "acct-7"]
    assert [e["payload"] for e in keyed_rows] == payloads[20:]
    assert [e["seq"] for e in keyed_rows] == seqs
    assert [e["leaf_hash"] for e in keyed_rows] == [r["leaf_hash"] for r in receipts]

    # read --from/--to (text and JSON)
    size = len(entries[keyed_partition])
    window = _read_json(data, "payments", keyed_partition, "--from", "2", "--to", "5")
    assert [e["seq"] for e in window] == [2, 3, 4]
    assert window == entries[keyed_partition][2:5]
    text = ok(
        "read", "payments", "-p", str(keyed_partition), "--from", str(size - 1), data_dir=data
    ).out
    last = entries[keyed_partition][-1]
    assert text == f"{keyed_partition}:{size - 1}\t{last['payload']}\n"

    # checkpoint: one C2SP signed note per partition
    notes = ok("checkpoint", "payments", data_dir=data).out
    note_re = re.compile(
        r"streamledger\.local/ledger/payments/partition/(\d)\n(\d+)\n(" + B64 + r")\n\n"
        r"— K (" + B64 + r")\n"
    )
    found = note_re.findall(notes)
    assert [int(p) for p, *_ in found] == [0, 1, 2], notes
    for partition, size_text, root_b64, sig_b64 in found:
        assert int(size_text) == len(entries[int(partition)])
        assert len(base64.b64decode(root_b64)) == 32
        # Ed25519 signed-note signature: 4-byte key hash + 64-byte signature
        assert len(base64.b64decode(sig_b64)) == 68
        assert base64.b64decode(sig_b64)[:4].hex() == vkey.split("+")[1]

    # verify: clean, with --vkey as text and as a file, human and JSON
    human = ok("verify", "payments", "--vkey", vkey, data_dir=data)
    assert "result: OK" in human.out and "30 entries checked" in human.out
    (tmp_path / "K.vkey").write_text(vkey + "\n")
    report = json.loads(
        ok("verify", "payments", "--vkey", tmp_path / "K.vkey", "--json", data_dir=data).out
    )
    assert report["ledger"] == "payments" and report["ok"] is True
    assert report["entries_checked"] == 30
    assert [p["partition"] for p in report["partitions"]] == [0, 1, 2]
    for part in report["partitions"]:
        assert part["entries_checked"] == len(entries[part["partition"]])
        assert part["findings"] == []
        assert part["checkpoints_verified"] == 1
    # the default: the vkey recorded at init
    assert "recorded at init" in ok("verify", "payments", data_dir=data).err
