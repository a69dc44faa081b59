"""The consortium commands end to end: org identities, a multi-signed genesis and change,
a ledger with signed submissions, append --sign-as, verify and membership show."""

from __future__ import annotations

import json

from tests.cli.conftest import TRANSCRIPT, fails, generate_key, ok


def test_consortium_cli_round_trip(tmp_path):
    d = tmp_path / "data"
    for org in ("bank-a", "bank-b", "bank-c", "mallory"):
        out = ok("org", "create", org, data_dir=d).out
        assert out.startswith(f"{org}+")
    for path in (d / "keys").glob("*.key"):
        TRANSCRIPT.add_key_file(path)
    generate_key(d, "acme-log")

    genesis = tmp_path / "genesis.note"
    ok(
        "membership", "draft", "acme",
        "--org", "bank-a=admin,operator,writer:payments",
        "--org", "bank-b=admin,writer:payments",
        "--org", "bank-c=admin,auditor",
        "--ledger", "payments", "--admin-threshold", "2", "-o", genesis,
        data_dir=d,
    )  # fmt: skip
    ok("membership", "sign", genesis, "--as", "bank-a", data_dir=d)
    err = fails(2, "membership", "create", "acme-membership", genesis, data_dir=d).err
    assert "policy needs 2" in err
    ok("membership", "sign", genesis, "--as", "bank-b", data_dir=d)
    out = ok(
        "membership", "create", "acme-membership", genesis, "--signing-key", "acme-log",
        data_dir=d,
    ).out  # fmt: skip
    assert "version 1" in out and "approved by: bank-a, bank-b" in out

    ok(
        "init", "payments", "--signed-submissions", "--membership", "acme-membership",
        "--signing-key", "acme-log", data_dir=d,
    )  # fmt: skip
    ok("append", "payments", "--sign-as", "bank-b", stdin='{"n":1}\n{"n":2}\n', data_dir=d)
    assert "--sign-as" in fails(2, "append", "payments", stdin="x\n", data_dir=d).err
    err = fails(2, "append", "payments", "--sign-as", "mallory", stdin="x\n", data_dir=d).err
    assert "unknown_org" in err

    change = tmp_path / "v2.note"
    ok("membership", "propose", "acme-membership", "--roles", "bank-b=admin", "-o", change,
       data_dir=d)  # fmt: skip
    ok("membership", "sign", change, "--as", "bank-a", data_dir=d)
    assert "policy needs 2" in fails(2, "membership", "apply", "acme-membership", change,
                                     data_dir=d).err  # fmt: skip
    ok("membership", "sign", change, "--as", "bank-c", data_dir=d)
    assert "version 2" in ok("membership", "apply", "acme-membership", change, data_dir=d).out

    err = fails(2, "append", "payments", "--sign-as", "bank-b", stdin="x\n", data_dir=d).err
    assert "revoked" in err
    ok("append", "payments", "--sign-as", "bank-a", stdin='{"n":3}\n', data_dir=d)
    ok("checkpoint", "payments", data_dir=d)
    ok("checkpoint", "acme-membership", data_dir=d)
    report = json.loads(ok("verify", "payments", "--json", data_dir=d).out)
    assert report["ok"] and report["entries_checked"] == 3
    ok("verify", "acme-membership", data_dir=d)

    shown = json.loads(ok("membership", "show", "payments", "--json", "--evidence",
                          data_dir=d).out)  # fmt: skip
    assert shown["document"]["version"] == 2 and len(shown["chain"]) == 2
    assert "version 1" in ok("membership", "show", "acme-membership", "--seq", "0",
                             data_dir=d).out  # fmt: skip
