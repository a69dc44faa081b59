"""Witnesses on the embedded backend: honest cosigning, forks, rollbacks, rewrites, restarts,
forged and foreign cosignatures."""

from __future__ import annotations

import json
import sqlite3

import pytest

from streamledger import Ledger, SQLiteBackend
from streamledger.core.bundle import cosignature_document, note_body
from streamledger.core.checkpoint import Checkpoint, cosign_checkpoint, sign_checkpoint
from streamledger.core.merkle import CompactRange, InMemoryTree, leaf_hash
from streamledger.errors import ConfigError
from streamledger.services.witness import extend_with_proof
from tests.witness.helpers import ORGS, consortium, fill, rewritten_checkpoint


@pytest.fixture
def setup(tmp_path):
    c = consortium(tmp_path)
    backend = SQLiteBackend(tmp_path / "store")
    ledger = Ledger.create(
        backend, "payments", partitions=2, signer=c.keys.load("operator.example/log")
    )
    yield c, backend, ledger
    backend.close()


def _run_all(c, backend, names=ORGS):
    return [c.witness(backend, "payments", n).run_once() for n in names]


def test_consistency_proof_from_compact_range_matches_reference():
    leaves = [leaf_hash(bytes([i])) for i in range(70)]
    tree = InMemoryTree(leaves)
    for old in range(0, 40):
        for new in range(old, 70, 3):
            cr = CompactRange()
            for h in leaves[:old]:
                cr.push(h)
            extended, proof = extend_with_proof(cr, iter(leaves[old:new]), new)
            assert extended.root() == tree.root(new)
            assert proof == (tree.consistency_proof(old, new) if old else [])


def test_honest_operation_cosigned_and_verified_with_two_of_three(setup):
    c, backend, ledger = setup
    for _ in range(3):
        fill(ledger, 17)
        ledger.checkpoint()
        results = _run_all(c, backend)
        assert all(len(r.cosigned) == 2 and not r.refused for r in results)
    report = ledger.verify(c.policy(2))
    assert report.ok, report.findings
    assert all(p.checkpoints_verified == 3 for p in report.partitions)
    # Three cosignatures on every note, as C2SP tlog-cosignature lines.
    notes = ledger.checkpoint_notes(0, c.witness_vkeys())
    assert all(note.count("\n\u2014 ") == 4 for note in notes)
    assert ledger.verify(c.policy(3)).ok


def test_witness_shortfall_names_the_checkpoint(setup):
    c, backend, ledger = setup
    fill(ledger, 10)
    ledger.checkpoint()
    _run_all(c, backend, ORGS[:1])  # only one organization cosigned
    report = ledger.verify(c.policy(2))
    shortfalls = [f for f in report.findings if f.kind == "witness_shortfall"]
    assert {(f.partition, f.evidence["tree_size"]) for f in shortfalls} == {(0, 5), (1, 5)}
    assert "size 5" in shortfalls[0].detail and ORGS[0] in shortfalls[0].detail


def test_witness_ignores_the_stores_merkle_nodes(setup, tmp_path):
    c, backend, ledger = setup
    fill(ledger, 30)
    ledger.checkpoint()
    with sqlite3.connect(tmp_path / "store" / "ledger.db") as db:
        db.execute("UPDATE nodes SET hash = randomblob(32) WHERE level > 0")
    results = _run_all(c, backend)
    assert all(len(r.cosigned) == 2 for r in results)


def test_fork_at_equal_size_refused_with_evidence(setup):
    c, backend, ledger = setup
    fill(ledger, 8, partition=0)
    ledger.checkpoint()
    _run_all(c, backend)
    signer = c.keys.load("operator.example/log")
    forged = rewritten_checkpoint(ledger, 0, [b"other"] * 8, signer)
    backend.add_checkpoint("payments", 0, 8, forged)
    results = _run_all(c, backend)
    assert [a.reason for r in results for a in r.refused] == ["fork"] * 3
    alerts = ledger.alerts(0)
    assert len(alerts) == 3 and alerts[0].refused == forged
    assert note_body(alerts[0].cosigned) != note_body(forged)
    report = ledger.verify(c.policy(2))
    forks = [f for f in report.findings if f.kind == "checkpoint_fork"]
    assert forks and all(f.partition == 0 and f.seq == 7 for f in forks)


def test_rollback_refused_but_a_republished_checkpoint_is_not(setup):
    c, backend, ledger = setup
    fill(ledger, 4, partition=0)
    notes = ledger.checkpoint(partitions=[0])
    _run_all(c, backend)
    fill(ledger, 4, partition=0)
    ledger.checkpoint(partitions=[0])
    _run_all(c, backend)
    backend.add_checkpoint("payments", 0, 4, notes[0])  # the same old checkpoint again
    assert not any(r.refused for r in _run_all(c, backend))
    signer = c.keys.load("operator.example/log")
    smaller = sign_checkpoint(Checkpoint(ledger.config.checkpoint_origin(0), 3, bytes(32)), signer)
    backend.add_checkpoint("payments", 0, 3, smaller)
    results = _run_all(c, backend)
    assert [a.reason for r in results for a in r.refused] == ["rollback"] * 3


def test_rewrite_attack_end_to_end(setup, tmp_path):
    c, backend, ledger = setup
    fill(ledger, 20, partition=0)
    ledger.checkpoint()
    _run_all(c, backend)
    assert ledger.verify(c.policy(2)).ok
    backend.close()
    # The operator replaces the store with a fresh, self-consistent history, signed with the
    # real log key.
    for path in (tmp_path / "store").glob("ledger.db*"):
        path.unlink()
    backend = SQLiteBackend(tmp_path / "store")
    signer = c.keys.load("operator.example/log")
    ledger = Ledger.create(backend, "payments", partitions=2, signer=signer)
    fill(ledger, 25, tag="rewritten", partition=0)
    ledger.checkpoint()
    assert ledger.verify(c.policy(0)).ok  # on its own, the rewritten log looks fine
    results = _run_all(c, backend)
    assert all([a.reason for a in r.refused] == ["inconsistent"] for r in results)
    assert all(r.cosigned == [(1, 0)] or not r.cosigned for r in results)
    report = ledger.verify(c.policy(2))
    kinds = {f.kind for f in report.findings}
    assert {"checkpoint_fork", "witness_shortfall", "checkpoint_mismatch"} <= kinds
    fork = next(f for f in report.findings if f.kind == "checkpoint_fork")
    assert fork.partition == 0 and "size 25" in fork.detail and "size 20" in fork.detail
    assert sorted(fork.evidence["witnesses"]) == sorted(ORGS)
    # Even without a witness policy the cosigned evidence exposes the rewrite.
    assert not ledger.verify(c.policy(0)).ok
    backend.close()


def test_witness_restarted_mid_stream_continues(setup, monkeypatch):
    c, backend, ledger = setup
    fill(ledger, 40, partition=0)
    ledger.checkpoint()
    first = c.witness(backend, "payments", ORGS[0])
    assert first.run_once().cosigned == [(0, 40), (1, 0)]
    fill(ledger, 10, partition=0)
    ledger.checkpoint()
    reads = []
    real_read = backend.read

    def spy(ledger_name, partition, start=0, end=None):
        reads.append((partition, start, end))
        return real_read(ledger_name, partition, start, end)

    monkeypatch.setattr(backend, "read", spy)
    again = c.witness(backend, "payments", ORGS[0])  # a new process: state from the file
    assert again.state(0)[0] == 40
    assert again.run_once().cosigned == [(0, 50)]
    assert reads == [(0, 40, 50)]  # only the new entries were read
    assert again.run_once().cosigned == []


def test_damaged_state_file_is_an_error(setup):
    c, backend, ledger = setup
    fill(ledger, 3)
    ledger.checkpoint()
    w = c.witness(backend, "payments", ORGS[0])
    w.run_once()
    data = json.loads(w.state_path.read_text())
    data["partitions"]["0"]["root"] = "00" * 32
    w.state_path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="damaged"):
        c.witness(backend, "payments", ORGS[0])


def test_forged_and_foreign_cosignatures_do_not_count(setup):
    c, backend, ledger = setup
    fill(ledger, 6, partition=0)
    note = ledger.checkpoint(partitions=[0])[0]
    body = note_body(note)
    c.witness(backend, "payments", ORGS[1]).run_once()  # one genuine cosignature
    # A forged cosignature in the name of ORGS[0]: a genuine line with flipped bytes.
    genuine = cosign_checkpoint(body, c.keys.load(ORGS[0]))
    name, b64 = genuine.rstrip("\n").rsplit(" ", 1)
    flipped = b64[:20] + ("A" if b64[20] != "A" else "B") + b64[21:]
    backend.put_document(
        "payments", "cosignatures", "0/6", cosignature_document(body, name + " " + flipped)
    )
    # A valid cosignature by a witness that is not a member.
    stranger = cosign_checkpoint(body, c.keys.load("stranger.example/witness"))
    backend.put_document("payments", "cosignatures", "0/6", cosignature_document(body, stranger))
    report = ledger.verify(c.policy(2), partitions=[0])
    kinds = [f.kind for f in report.findings]
    assert kinds == ["witness_shortfall"], report.findings
    assert report.findings[0].evidence["cosigners"] == [ORGS[1]]
    # Trusting the stranger would count it: membership decides, not the document.
    names = (ORGS[1], "stranger.example/witness")
    assert ledger.verify(c.policy(2, names), partitions=[0]).ok
