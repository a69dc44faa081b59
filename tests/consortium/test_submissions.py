"""Signed submissions on the embedded store: authorized writers verify; unsigned, forged,
non-member and revoked-writer submissions are refused at append and flagged by verify when
written into the ledger directly; a revoked writer's earlier entries still verify."""

from __future__ import annotations

import pytest

from streamledger import AppendItem, SigningKey
from streamledger.consortium import (
    Submission,
    SubmissionRejected,
    append_signed,
    check_submission,
    load_membership,
    membership_at,
    sign_document,
    signed_item,
    submit,
    submit_change,
)


def _revoke_b(c):
    v2 = c.current.successor(roles={"bank-b": ["admin"]})
    return submit_change(c.membership, sign_document(v2, [c.keys["bank-a"], c.keys["bank-c"]]))


def test_member_with_write_permission_appends_and_verifies(consortium):
    c = consortium
    payments = c.ledger("payments")
    receipt = append_signed(
        payments,
        b'{"amount": 10}',
        sign_as=c.keys["bank-a"],
        key=b"acct-1",
        content_type="application/json",
    )
    entry = next(payments.read(receipt.partition, receipt.seq))
    assert entry.header.content_type == "application/json" and entry.header.key == b"acct-1"
    sub = Submission.parse(entry.payload)
    assert (sub.org, sub.ledger, sub.membership_seq) == ("bank-a", "payments", 0)
    assert sub.payload == b'{"amount": 10}'
    append_signed(payments, b'{"amount": 20}', sign_as=c.keys["bank-b"])
    payments.checkpoint()
    report = payments.verify()
    assert report.ok, report.findings
    assert report.entries_checked == 2
    # who was allowed to write when this entry was sequenced
    doc = membership_at(payments, time_ms=entry.header.timestamp_ms).document
    assert doc.may_write("bank-a", "payments")


def _refusals(c):
    """(name, item, code, kind) of each kind of bad submission after bank-b was revoked."""
    mallory, forger = c.keys["mallory"], SigningKey.generate("bank-a")  # same name, not a's key
    return [
        (
            "unsigned",
            AppendItem(b'{"amount": 1}', None, "application/json"),
            "unsigned",
            "bad_submission_signature",
        ),
        (
            "forged",
            signed_item(forger, "payments", b'{"amount": 2}', membership_seq=0),
            "bad_signature",
            "bad_submission_signature",
        ),
        (
            "non-member",
            signed_item(mallory, "payments", b'{"amount": 3}', membership_seq=0),
            "unknown_org",
            "unauthorized_writer",
        ),
        (
            "revoked",
            signed_item(c.keys["bank-b"], "payments", b'{"amount": 4}', membership_seq=1),
            "revoked",
            "unauthorized_writer",
        ),
        (
            "no writer role",
            signed_item(c.keys["bank-c"], "payments", b"{}", membership_seq=1),
            "not_a_writer",
            "unauthorized_writer",
        ),
        (
            "other ledger",
            signed_item(c.keys["bank-a"], "trades", b"{}", membership_seq=1),
            "submission_mismatch",
            "bad_submission_signature",
        ),
    ]


def test_bad_submissions_are_refused_and_flagged_when_injected(consortium):
    c = consortium
    payments = c.ledger("payments")
    early = append_signed(payments, b'{"amount": 100}', sign_as=c.keys["bank-b"], partition=0)
    _revoke_b(c)
    ok = append_signed(payments, b'{"amount": 200}', sign_as=c.keys["bank-a"], partition=0)
    cases = _refusals(c)
    for name, item, code, _ in cases:
        with pytest.raises(SubmissionRejected) as err:
            submit(payments, [item], partition=0)
        assert err.value.code == code, name
    assert payments.size(0) == 2  # nothing refused was written
    # a writer with a compromised sequencer, or direct access to the store, writes them anyway
    injected = payments.append_many([item for _, item, _, _ in cases], partition=0)
    payments.checkpoint()
    report = payments.verify()
    found = {(f.seq, f.kind) for f in report.findings}
    expected = {(r.seq, kind) for r, (_, _, _, kind) in zip(injected, cases, strict=True)}
    assert found == expected
    for finding, receipt in zip(report.findings, injected, strict=True):
        assert (finding.ledger, finding.partition, finding.offset) == (
            "payments",
            0,
            receipt.offset,
        )
    # bank-b's entry from before its revocation, and bank-a's, are not findings
    assert early.seq not in {f.seq for f in report.findings}
    assert ok.seq not in {f.seq for f in report.findings}
    revoked = next(f for f in report.findings if f.seq == injected[3].seq)
    assert "lost write permission" in revoked.detail


def test_signature_binds_ledger_key_content_type_and_payload(consortium):
    c = consortium
    history = load_membership(c.backend, "acme-membership")
    now = c.clock()
    item = signed_item(
        c.keys["bank-a"],
        "payments",
        b"data",
        membership_seq=0,
        key=b"k1",
        content_type="text/plain",
    )

    def verdict(**changes):
        args = {"content_type": "text/plain", "key": b"k1", "time_ms": now} | changes
        payload = args.pop("payload", item.payload)
        return check_submission(history, "payments", payload, **args)[1]

    assert verdict() is None
    assert verdict(content_type="application/json").code == "submission_mismatch"
    assert verdict(key=b"k2").code == "submission_mismatch"
    assert verdict(key=None).code == "submission_mismatch"
    assert verdict(payload=item.payload[:-1] + b"D").code == "submission_mismatch"
    assert verdict(payload=item.payload.replace(b"org bank-a", b"org bank-b")).code in (
        "submission_mismatch",
        "bad_signature",
    )
    assert verdict(time_ms=0).code == "no_membership"
    future = signed_item(c.keys["bank-a"], "payments", b"x", membership_seq=5)
    assert (
        check_submission(
            history,
            "payments",
            future.payload,
            content_type=future.content_type,
            key=None,
            time_ms=now,
        )[1].code
        == "future_membership"
    )


def test_replayed_submission_is_refused_and_flagged(consortium):
    c = consortium
    payments = c.ledger("payments")
    item = signed_item(c.keys["bank-a"], "payments", b"pay once", membership_seq=0)
    submit(payments, [item], partition=1)
    with pytest.raises(SubmissionRejected) as err:
        submit(payments, [item], partition=1)
    assert err.value.code == "replayed"
    replay = payments.append_many([item], partition=1)[0]
    [finding] = payments.verify().findings
    assert (finding.kind, finding.partition, finding.seq) == ("replayed_submission", 1, replay.seq)


def test_altered_signed_payload_is_reported_once_by_the_main_verifier(consortium, tmp_path):
    import sqlite3
    from contextlib import closing

    from tests.cli.conftest import LEDGER_DB

    c = consortium
    payments = c.ledger("payments")
    append_signed(payments, b"12345", sign_as=c.keys["bank-a"], partition=0)
    append_signed(payments, b"67890", sign_as=c.keys["bank-a"], partition=0)
    payments.checkpoint()
    with closing(sqlite3.connect(tmp_path / "store" / LEDGER_DB)) as conn, conn:
        (lid,) = conn.execute("SELECT id FROM ledgers WHERE name='payments'").fetchone()
        (record,) = conn.execute(
            "SELECT record FROM entries WHERE ledger_id=? AND partition=0 AND position=0", (lid,)
        ).fetchone()
        conn.execute(
            "UPDATE entries SET record=? WHERE ledger_id=? AND partition=0 AND position=0",
            (record[:-1] + b"6", lid),
        )
    [finding] = payments.verify().findings
    assert (finding.kind, finding.seq) == ("payload_modified", 0)
