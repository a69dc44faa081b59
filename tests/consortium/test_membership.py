"""Membership documents and the membership ledger: genesis, multi-signed changes, changes
signed by too few admins, forged approvals, and the document in force at a time or seq."""

from __future__ import annotations

import json

import pytest

from streamledger import ConfigError, FormatError, SigningKey
from streamledger.consortium import (
    MembershipDocument,
    MembershipError,
    Org,
    check_change,
    cosign_document,
    load_membership,
    membership_at,
    sign_document,
    submit_change,
    verify_membership_chain,
    verify_membership_evidence,
)
from streamledger.core.note import parse_note


def _add_writer_and_revoke(c):
    """Version 2: bank-c may write payments (a+c sign). Version 3: bank-b may not (a+c)."""
    v2 = c.current.successor(roles={"bank-c": ["admin", "auditor", "writer:payments"]})
    note = cosign_document(v2.note_text(), c.keys["bank-a"])  # bank-a drafts and signs
    note = cosign_document(note, c.keys["bank-c"])  # passes it to bank-c, who signs too
    change2 = submit_change(c.membership, note)
    v3 = v2.successor(roles={"bank-b": ["admin"]})
    change3 = submit_change(c.membership, sign_document(v3, [c.keys["bank-a"], c.keys["bank-c"]]))
    return change2, change3


def test_genesis_is_in_force_and_serializes(consortium):
    c = consortium
    change = membership_at(c.membership)
    assert change.seq == 0 and change.document == c.genesis
    assert change.signers == ("bank-a", "bank-b")
    data = json.loads(json.dumps(change.to_json()))
    assert data["document"]["orgs"][0]["name"] == "bank-a"
    assert MembershipDocument.from_json(data["document"]) == c.genesis
    # the note's text is the type line and the canonical JSON, signed by two admins
    text, sigs = parse_note(change.note)
    assert text == c.genesis.note_text() and len(sigs) == 2
    # the signed-submissions ledger finds its membership ledger through its options
    assert membership_at(c.ledger("payments")).document == c.genesis
    assert c.genesis.may_write("bank-b", "payments")
    assert not c.genesis.may_write("bank-c", "payments")
    assert not c.genesis.may_write("bank-a", "trades")


def test_changes_multisigned_by_current_admins_apply_in_order(consortium):
    c = consortium
    change2, change3 = _add_writer_and_revoke(c)
    assert (change2.seq, change3.seq) == (1, 2)
    assert change2.signers == ("bank-a", "bank-c")
    history = load_membership(c.backend, "acme-membership")
    assert not history.findings
    assert [ch.document.version for ch in history.changes] == [1, 2, 3]
    assert history.changes[2].document.previous == history.changes[1].document.digest
    # who could write payments when
    assert history.at_seq(0).document.may_write("bank-b", "payments")
    assert history.at_seq(1).document.may_write("bank-c", "payments")
    assert not history.at_seq(2).document.may_write("bank-b", "payments")
    assert membership_at(c.membership, time_ms=change2.timestamp_ms - 1).document.version == 1
    assert membership_at(c.membership, time_ms=change2.timestamp_ms).document.version == 2
    assert membership_at(c.membership, seq=2).document.version == 3
    assert membership_at(c.membership, time_ms=0) is None  # before genesis
    assert c.membership.verify().ok


def test_evidence_checks_offline_and_fails_when_altered(consortium):
    c = consortium
    _, change3 = _add_writer_and_revoke(c)
    history = load_membership(c.backend, "acme-membership")
    evidence = json.loads(json.dumps(history.evidence(change3)))
    genesis = history.changes[0].document.digest
    assert verify_membership_evidence(evidence, genesis_digest=genesis).version == 3
    with pytest.raises(MembershipError, match="pinned genesis"):
        verify_membership_evidence(evidence, genesis_digest="0" * 64)
    altered = dict(evidence, chain=list(evidence["chain"]))
    altered["chain"][1] = altered["chain"][1].replace("writer:payments", "writer:*", 1)
    with pytest.raises(MembershipError):
        verify_membership_evidence(altered)
    with pytest.raises(MembershipError):
        verify_membership_chain(evidence["chain"][1:])  # not from genesis


def test_change_signed_by_too_few_admins_is_refused_and_flagged(consortium):
    c = consortium
    v2 = c.current.successor(add=[c.org("mallory", "writer:payments")])
    one = sign_document(v2, c.keys["bank-a"])
    with pytest.raises(ConfigError, match="1 valid admin signature"):
        submit_change(c.membership, one)
    # a non-admin member's or an outsider's signature does not count either
    two = cosign_document(one, c.keys["mallory"])
    with pytest.raises(MembershipError) as err:
        check_change(c.current, two)
    assert err.value.kind == "unauthorized_membership_change"
    # injected directly: verify reports it and it never comes into force
    assert submit_change(c.membership, two, check=False) is None
    report = c.membership.verify()
    [finding] = report.findings
    assert finding.kind == "unauthorized_membership_change"
    assert (finding.ledger, finding.partition, finding.seq) == ("acme-membership", 0, 1)
    assert finding.offset is not None
    assert membership_at(c.membership).document == c.genesis
    # the next valid change builds on the last valid document, not on the bad one
    v2_ok = c.current.successor(roles={"bank-c": ["admin", "writer:payments"]})
    change = submit_change(c.membership, sign_document(v2_ok, [c.keys["bank-b"], c.keys["bank-c"]]))
    assert change.seq == 2 and change.document.version == 2


def test_forged_admin_signature_and_out_of_order_changes_are_bad(consortium):
    c = consortium
    v2 = c.current.successor(admin_threshold=3)
    note = sign_document(v2, [c.keys["bank-a"], c.keys["bank-b"]])
    text, sigs = parse_note(note)
    # an impostor key named like admin bank-b: different key hash, ignored -> too few
    impostor = SigningKey.generate("bank-b")
    forged = sign_document(v2, [c.keys["bank-a"], impostor])
    with pytest.raises(MembershipError) as err:
        check_change(c.current, forged)
    assert err.value.kind == "unauthorized_membership_change"
    # bank-b's real key hash with a broken signature: a forgery, rejected outright
    lines = note.rstrip("\n").split("\n")
    last = lines[-1]
    flipped = last[:-4] + ("AAAA" if not last.endswith("AAAA") else "BBBB")
    broken = "\n".join(lines[:-1] + [flipped]) + "\n"
    with pytest.raises(MembershipError) as err:
        check_change(c.current, broken)
    assert err.value.kind == "bad_membership_change"
    # skipping a version, or re-applying genesis, does not follow the current document
    v3 = v2.successor()
    skipped = sign_document(v3, [c.keys["bank-a"], c.keys["bank-b"]])
    with pytest.raises(MembershipError, match="does not follow"):
        check_change(c.current, skipped)
    submit_change(c.membership, broken, check=False)
    submit_change(c.membership, skipped, check=False)
    kinds = [(f.kind, f.seq) for f in c.membership.verify().findings]
    assert kinds == [("bad_membership_change", 1), ("bad_membership_change", 2)]
    assert len(text) > 0 and len(sigs) == 2


def test_documents_are_validated(consortium):
    c = consortium
    key = c.keys["bank-a"].verifier
    with pytest.raises(ConfigError, match="key name"):
        Org("bank-z", key, ("admin",))
    with pytest.raises(ConfigError, match="unknown role"):
        Org("bank-a", key, ("superuser",))
    with pytest.raises(ConfigError, match="not in the consortium's ledgers"):
        MembershipDocument("acme", 1, (Org("bank-a", key, ("admin", "writer:trades")),))
    with pytest.raises(ConfigError, match="admin_threshold"):
        MembershipDocument("acme", 1, (Org("bank-a", key, ("admin",)),), admin_threshold=2)
    # only the canonical JSON is accepted in a note (no second encoding of one document)
    pretty = c.genesis.note_text().replace('"version":1', '"version": 1')
    with pytest.raises(FormatError, match="canonical"):
        MembershipDocument.from_note_text(pretty)
    with pytest.raises(ConfigError, match="genesis refused.*policy needs 2"):
        from streamledger.consortium import create_membership_ledger

        create_membership_ledger(
            c.backend, "other-membership", sign_document(c.genesis, c.keys["bank-a"])
        )
