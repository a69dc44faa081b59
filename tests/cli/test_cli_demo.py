"""``streamledger demo`` end to end, then the commands it tells the user to try."""

from __future__ import annotations

import re
import stat

from tests.cli.conftest import TRANSCRIPT, fails, ok


def test_demo(tmp_path):
    data = tmp_path / "data"
    result = ok("demo", "--entries", "2000", data_dir=data, timeout=120)
    key_files = list((data / "demo" / "keys").glob("*.key"))
    assert len(key_files) == 1
    TRANSCRIPT.add_key_file(key_files[0])  # also re-checks the demo's output for it
    assert stat.S_IMODE(key_files[0].stat().st_mode) == 0o600

    out = result.out
    for step in range(1, 6):
        assert f"[{step}/5]" in out
    assert "appended 2,000 entries" in out
    assert "result: OK, no tampering found" in out
    # the tampered copy's report names the altered payment, and only it
    assert re.search(r"payload_modified: payments/1 seq 42\b", out), out
    assert "TAMPERING FOUND (1 finding(s))" in out
    assert "streamledger.local/ledger/payments/partition/1\n" in out.replace("    ", "")
    # the offline check of the inclusion proof
    assert "✓ entry 42 is included in the tree of" in out
    assert "✓ checkpoint signed by demo.example/payments-log" in out

    # the "try it yourself" commands work as printed
    proof_cmd = re.search(r"streamledger proof verify (\S+) --vkey '([^']+)'", out)
    assert proof_cmd, out
    proof_file, vkey = proof_cmd.groups()
    assert "proof OK" in ok("proof", "verify", proof_file, "--vkey", vkey).out
    store = data / "demo" / "store"
    assert "result: OK" in ok("verify", "payments", "--vkey", vkey, data_dir=store).out
    tampered = data / "demo" / "tampered-copy"
    fails(1, "verify", "payments", "--vkey", vkey, data_dir=tampered)

    # the demo may run again over its own directory, but never over someone else's
    ok("demo", "--entries", "100", data_dir=data, timeout=120)
    for path in (data / "demo" / "keys").glob("*.key"):
        TRANSCRIPT.add_key_file(path)
    other = tmp_path / "other"
    (other / "demo").mkdir(parents=True)
    (other / "demo" / "precious.txt").write_text("mine\n")
    assert "not made by the demo" in fails(2, "demo", "--entries", "100", data_dir=other).err
    assert (other / "demo" / "precious.txt").read_text() == "mine\n"
    fails(2, "demo", "--entries", "5", data_dir=tmp_path / "few")
