"""The witness and audit commands end to end (subprocesses), with their exit codes."""

from __future__ import annotations

import base64
import json
import shutil

from streamledger.core.bundle import canonical_bundle
from tests.cli.conftest import fails, generate_key, ok, streamledger


def _keys(d):
    log = generate_key(d, "operator.example/log")
    wits = []
    for org in ("a", "b", "c"):
        out = ok("keys", "generate", f"org-{org}/w", "--witness", data_dir=d).out.strip()
        wits.append(out)
    return log, wits


def test_witness_verify_and_audit_cli(tmp_path):
    d = tmp_path / "data"
    log, wits = _keys(d)
    ok("init", "pay", "--signing-key", "operator.example/log", data_dir=d)
    ok("append", "pay", data_dir=d, stdin="".join(f"line {i}\n" for i in range(30)))
    ok("checkpoint", "pay", data_dir=d)
    wargs = [a for w in wits for a in ("--witness-vkey", w)]
    # Before the witnesses ran: the policy is not met, and the report says which checkpoint.
    r = fails(1, "verify", "pay", "--vkey", log, *wargs, "--require-witnesses", "2", data_dir=d)
    assert "witness_shortfall" in r.out and "size 30" in r.out
    for org in ("a", "b"):
        r = ok(
            "witness",
            "run",
            "--ledger",
            "pay",
            "--key",
            f"org-{org}/w",
            "--log-vkey",
            log,
            "--state-dir",
            tmp_path / f"state-{org}",
            "--once",
            data_dir=d,
        )
        assert "1 cosigned, 0 refused" in r.err
    ok("verify", "pay", "--vkey", log, *wargs, "--require-witnesses", "2", data_dir=d)
    bundle = tmp_path / "bundle.json"
    ok(
        "audit",
        "export",
        "pay",
        "-p",
        "0",
        "--seq",
        "4",
        "--seq",
        "9",
        "--vkey",
        log,
        *wargs,
        "--require-witnesses",
        "2",
        "-o",
        bundle,
        data_dir=d,
    )
    # The auditor's machine: no store at all.
    auditor = tmp_path / "auditor"
    auditor.mkdir()
    copy = shutil.copy(bundle, auditor / "b.json")
    r = ok("audit", "verify", copy, "--vkey", log, *wargs, "--require-witnesses", "2", cwd=auditor)
    assert "VERIFIED" in r.out and "entry seq 9" in r.out
    fails(1, "audit", "verify", copy, "--vkey", log, *wargs, "--require-witnesses", "3")
    text = bundle.read_text()
    data = json.loads(text)
    data["entries"][0]["payload"] = base64.b64encode(b"line 5").decode()
    (auditor / "bad.json").write_text(canonical_bundle(data))
    r = fails(1, "audit", "verify", auditor / "bad.json", "--vkey", log)
    assert "NOT VERIFIED" in r.out
    (auditor / "junk.json").write_text("{not json")
    fails(2, "audit", "verify", auditor / "junk.json", "--vkey", log)
    fails(2, "audit", "verify", auditor / "missing.json", "--vkey", log)
    r = ok("audit", "verify", copy, "--vkey", log, "--json")
    assert json.loads(r.out)["entries"] == [4, 9]
    ok("witness", "alerts", "pay", data_dir=d)


def test_rewrite_attack_cli(tmp_path):
    d = tmp_path / "data"
    log, wits = _keys(d)
    ok("init", "pay", "--signing-key", "operator.example/log", data_dir=d)
    ok("append", "pay", data_dir=d, stdin="".join(f"honest {i}\n" for i in range(12)))
    ok("checkpoint", "pay", data_dir=d)
    run = ["witness", "run", "--ledger", "pay", "--log-vkey", log, "--once"]
    for org in "abc":
        ok(*run, "--key", f"org-{org}/w", "--state-dir", tmp_path / org, data_dir=d)
    for path in d.glob("ledger.db*"):
        path.unlink()
    ok("init", "pay", "--signing-key", "operator.example/log", data_dir=d)
    ok("append", "pay", data_dir=d, stdin="".join(f"rewritten {i}\n" for i in range(15)))
    ok("checkpoint", "pay", data_dir=d)
    for org in "abc":
        r = fails(1, *run, "--key", f"org-{org}/w", "--state-dir", tmp_path / org, data_dir=d)
        assert "REFUSED" in r.err
    wargs = [a for w in wits for a in ("--witness-vkey", w)]
    r = fails(1, "verify", "pay", "--vkey", log, *wargs, "--require-witnesses", "2", data_dir=d)
    assert "checkpoint_fork" in r.out and "org-a/w" in r.out
    r = fails(1, "witness", "alerts", "pay", "--json", data_dir=d)
    alerts = [json.loads(line) for line in r.out.splitlines()]
    assert len(alerts) == 3 and all(a["reason"] == "inconsistent" for a in alerts)
    ev = tmp_path / "evidence.json"
    ok("audit", "export", "pay", "-p", "0", "--seq", "0", "--vkey", log, "-o", ev, data_dir=d)
    assert len(json.loads(ev.read_text())["alerts"]) == 3
    r = ok("audit", "verify", ev, "--vkey", log)
    assert "refused a checkpoint" in r.out


def test_witness_cli_errors(tmp_path):
    d = tmp_path / "data"
    log, _ = _keys(d)
    ok("init", "pay", "--signing-key", "operator.example/log", data_dir=d)
    fails(
        2,
        "witness",
        "run",
        "--ledger",
        "pay",
        "--key",
        "operator.example/log",
        "--log-vkey",
        log,
        "--once",
        data_dir=d,
    )  # not a cosigning key
    fails(
        2,
        "witness",
        "run",
        "--ledger",
        "nope",
        "--key",
        "org-a/w",
        "--log-vkey",
        log,
        "--once",
        data_dir=d,
    )
    r = streamledger("witness", "run", "--ledger", "pay", "--key", "org-a/w", data_dir=d)
    assert r.rc == 2  # --log-vkey is required
