"""prove inclusion / consistency, and ``proof verify`` offline, including interop vectors."""

from __future__ import annotations

import base64
import json
import re
import shutil

import pytest

from tests.cli.conftest import VECTORS, copy_store, fails, ok

HEX64 = re.compile(r"[0-9a-f]{64}")
INCLUSION_KEYS = [
    "ledger",
    "partition",
    "index",
    "tree_size",
    "leaf_hash",
    "root_hash",
    "proof",
    "entry",
    "checkpoint",
]
CONSISTENCY_KEYS = ["ledger", "partition", "old_size", "new_size", "old_root", "new_root", "proof"]


def _flip_hex(text: str, pos: int) -> str:
    """Change one byte of a hex hash (both nibbles of byte ``pos``), staying lowercase hex."""
    raw = bytearray(bytes.fromhex(text))
    raw[pos % len(raw)] ^= 0x5A
    return raw.hex()


def _flip_checkpoint_root(note: str) -> str:
    lines = note.split("\n")
    root = bytearray(base64.b64decode(lines[2]))
    root[7] ^= 0x01
    lines[2] = base64.b64encode(bytes(root)).decode()
    return "\n".join(lines)


def _flip_entry(entry_b64: str, pos: int) -> str:
    raw = bytearray(base64.b64decode(entry_b64))
    raw[pos % len(raw)] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


def _inclusion_mutants(proof: dict):
    """(what, proof with one byte changed) for hashes, path, entry and the signed root."""
    for pos in (0, 31):
        yield f"leaf_hash[{pos}]", {**proof, "leaf_hash": _flip_hex(proof["leaf_hash"], pos)}
    yield "root_hash[5]", {**proof, "root_hash": _flip_hex(proof["root_hash"], 5)}
    path = proof["proof"]
    for i in sorted({0, 1, len(path) - 1}):
        changed = [_flip_hex(h, 9 + i) if j == i else h for j, h in enumerate(path)]
        yield f"proof[{i}]", {**proof, "proof": changed}
    for pos in (0, 40, -1):
        yield f"entry[{pos}]", {**proof, "entry": _flip_entry(proof["entry"], pos)}
    yield "checkpoint root", {**proof, "checkpoint": _flip_checkpoint_root(proof["checkpoint"])}


def test_inclusion_proof(populated, tmp_path):
    source, vkey = populated
    data = copy_store(source, tmp_path / "data")
    entries = [
        json.loads(x)
        for x in ok("read", "payments", "-p", "1", "--json", data_dir=data).out.splitlines()
    ]
    seq = 13
    out = ok(
        "prove", "inclusion", "payments", "-p", "1", "--seq", str(seq), "--json", data_dir=data
    ).out
    proof = json.loads(out)
    assert list(proof) == INCLUSION_KEYS
    assert (proof["ledger"], proof["partition"], proof["index"]) == ("payments", 1, seq)
    assert proof["tree_size"] == len(entries)
    assert HEX64.fullmatch(proof["leaf_hash"]) and HEX64.fullmatch(proof["root_hash"])
    assert proof["proof"] and all(HEX64.fullmatch(h) for h in proof["proof"])
    assert proof["leaf_hash"] == entries[seq]["leaf_hash"]
    # the leaf is the entry header, which commits to the payload by its SHA-256
    assert bytes.fromhex(entries[seq]["payload_hash"]) in base64.b64decode(proof["entry"])
    assert proof["checkpoint"].startswith("streamledger.local/ledger/payments/partition/1\n")
    root_b64 = proof["checkpoint"].split("\n")[2]
    assert base64.b64decode(root_b64).hex() == proof["root_hash"]

    good = tmp_path / "inclusion.json"
    good.write_text(out)
    verified = ok("proof", "verify", good, "--vkey", vkey)  # offline: no --data-dir at all
    assert "proof OK" in verified.out
    # -o writes the same file
    ok(
        "prove",
        "inclusion",
        "payments",
        "-p",
        "1",
        "--seq",
        str(seq),
        "-o",
        tmp_path / "o.json",
        data_dir=data,
    )
    assert json.loads((tmp_path / "o.json").read_text()) == proof

    # any single changed byte is rejected (exit 1)
    for name, changed in _inclusion_mutants(proof):
        assert changed != proof, name
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(changed, indent=2))
        result = fails(1, "proof", "verify", bad, "--vkey", vkey)
        assert "REJECTED" in result.err, name
        assert "proof OK" not in result.out, name

    # malformed or missing proof files: exit 2
    (tmp_path / "garbage.json").write_bytes(b"\x00\xff not json at all")
    fails(2, "proof", "verify", tmp_path / "garbage.json", "--vkey", vkey)
    (tmp_path / "text.json").write_text("not json\n")
    fails(2, "proof", "verify", tmp_path / "text.json", "--vkey", vkey)
    fails(2, "proof", "verify", tmp_path / "missing.json", "--vkey", vkey)


def test_consistency_proof(populated, tmp_path):
    source, vkey = populated
    data = copy_store(source, tmp_path / "data")
    old_size = int(ok("checkpoint", "payments", data_dir=data).out.split("\n")[1])
    ok(
        "append",
        "payments",
        "--partition",
        "0",
        data_dir=data,
        stdin="".join(f"later {i}\n" for i in range(25)),
    )
    ok("checkpoint", "payments", data_dir=data)
    new_size = old_size + 25

    out = ok(
        "prove",
        "consistency",
        "payments",
        "-p",
        "0",
        "--old-size",
        str(old_size),
        "--json",
        data_dir=data,
    ).out
    proof = json.loads(out)
    assert list(proof)[:7] == CONSISTENCY_KEYS
    assert set(proof) - set(CONSISTENCY_KEYS) <= {"old_checkpoint", "new_checkpoint"}
    assert (proof["old_size"], proof["new_size"]) == (old_size, new_size)
    assert HEX64.fullmatch(proof["old_root"]) and HEX64.fullmatch(proof["new_root"])
    assert proof["proof"] and all(HEX64.fullmatch(h) for h in proof["proof"])
    if "new_checkpoint" in proof:
        assert f"\n{new_size}\n" in proof["new_checkpoint"]

    good = tmp_path / "consistency.json"
    good.write_text(out)
    assert "proof OK" in ok("proof", "verify", good, "--vkey", vkey).out

    mutants = [
        {**proof, "old_root": _flip_hex(proof["old_root"], 3)},
        {**proof, "new_root": _flip_hex(proof["new_root"], 17)},
        {**proof, "proof": [_flip_hex(proof["proof"][0], 0), *proof["proof"][1:]]},
        {**proof, "proof": [*proof["proof"][:-1], _flip_hex(proof["proof"][-1], 31)]},
    ]
    for changed in mutants:
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(changed))
        fails(1, "proof", "verify", bad, "--vkey", vkey)


@pytest.mark.parametrize(
    "name, rc",
    [
        ("inclusion.json", 0),
        ("inclusion-bad-proof.json", 1),
        ("inclusion-bad-root-signed.json", 1),
        ("consistency.json", 0),
    ],
)
def test_interop_vectors(tmp_path, name, rc):
    shutil.copy(VECTORS / name, tmp_path / name)
    result = fails(rc, "proof", "verify", tmp_path / name, "--vkey", VECTORS / "log.vkey")
    assert ("proof OK" in result.out) == (rc == 0)
    assert ("REJECTED" in result.err) == (rc == 1)
