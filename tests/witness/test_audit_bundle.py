"""Audit bundles: export, offline verification, and rejection of any changed byte."""

from __future__ import annotations

import json

import pytest

from streamledger import Ledger, SQLiteBackend
from streamledger.audit import export_bundle
from streamledger.core.bundle import canonical_bundle, verify_bundle
from streamledger.errors import FormatError, ProofError, VerificationError
from tests.witness.helpers import ORGS, consortium, fill


@pytest.fixture
def cosigned(tmp_path):
    c = consortium(tmp_path)
    backend = SQLiteBackend(tmp_path / "store")
    ledger = Ledger.create(backend, "kyc", signer=c.keys.load("operator.example/log"))
    fill(ledger, 9)
    ledger.checkpoint()
    for name in ORGS[:2]:
        c.witness(backend, "kyc", name).run_once()
    fill(ledger, 3)
    ledger.checkpoint()  # newer, not cosigned yet: the bundle must use the cosigned one
    yield c, ledger
    backend.close()


def _check(c, text, k=2):
    return verify_bundle(text, [c.log_vkey], c.witness_vkeys(), k)


def test_bundle_verifies_offline_against_the_cosigned_checkpoint(cosigned):
    c, ledger = cosigned
    text = export_bundle(ledger, 0, [7, 2], trust=c.policy(2), membership={"orgs": []})
    data = json.loads(text)
    assert data["version"] == 1 and [e["seq"] for e in data["entries"]] == [2, 7]
    assert data["membership"] == {"orgs": []} and data["alerts"] == []
    report = _check(c, text)
    assert report.tree_size == 9 and report.entries == [2, 7]
    assert any("2 of the 3 witnesses" in f for f in report.facts)
    with pytest.raises(VerificationError, match="3 required"):
        _check(c, text, k=3)
    with pytest.raises(VerificationError, match="trusted key"):
        verify_bundle(text, [c.keys.vkey("stranger.example/witness")], (), 0)


def test_no_cosigned_checkpoint_covers_the_entry(cosigned):
    c, ledger = cosigned
    with pytest.raises(ProofError, match="witness"):
        export_bundle(ledger, 0, [10], trust=c.policy(2))


def test_hashes_only_bundle_carries_no_content(cosigned):
    c, ledger = cosigned
    text = export_bundle(ledger, 0, [4], trust=c.policy(2), hashes_only=True)
    entry = json.loads(text)["entries"][0]
    assert set(entry) == {"seq", "leaf_hash", "payload_hash", "proof"}
    assert '"p":4' not in text
    assert _check(c, text).entries == [4]


def test_every_changed_byte_is_rejected(cosigned):
    """'Any byte': the file is exactly the canonical serialization, so a change to any byte
    (values, keys, punctuation, whitespace) is rejected, never accepted."""
    c, ledger = cosigned
    text = export_bundle(ledger, 0, [1, 5], trust=c.policy(2))
    raw = text.encode()
    _check(c, raw)
    for pos in range(len(raw)):
        for mask in (0x01, 0x20) if pos % 7 == 0 else (0x01,):
            changed = bytearray(raw)
            changed[pos] ^= mask
            with pytest.raises((VerificationError, FormatError)):
                _check(c, bytes(changed))


def test_a_recomputed_digest_does_not_help_a_forger(cosigned):
    c, ledger = cosigned
    data = json.loads(export_bundle(ledger, 0, [3], trust=c.policy(2)))
    entry = data["entries"][0]
    entry["payload"] = entry["payload"][:-4] + "AAA="
    with pytest.raises(VerificationError, match="payload"):
        _check(c, canonical_bundle(data))
    data = json.loads(export_bundle(ledger, 0, [3], trust=c.policy(2)))
    data["entries"][0]["seq"] = 4
    with pytest.raises(VerificationError):
        _check(c, canonical_bundle(data))
