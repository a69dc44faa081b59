"""Signed submissions through the sequencer on a real broker: authorized submissions are
sequenced, unsigned / forged / non-member / revoked-writer submissions go to the rejects topic
with the reason, the ledger verifies, and a revoked writer's entry injected directly is
flagged while its earlier entry still verifies."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from streamledger import Ledger, SigningKey
from streamledger.backends.kafka import KafkaBackend
from streamledger.consortium import (
    MembershipDocument,
    Org,
    create_membership_ledger,
    create_signed_ledger,
    load_membership,
    sign_document,
    sign_submission,
    signed_item,
    submit_change,
)
from streamledger.services.sequencer import H_CODE, H_REASON, Sequencer
from tests.kafka.test_sequencer import _entries, _produce, _read_all

pytestmark = pytest.mark.kafka


def _run(bootstrap, tmp_path, name, intake, log_key, total):
    seq = Sequencer(
        bootstrap,
        name,
        intake,
        signer=log_key,
        checkpoint_every=0,
        checkpoint_interval=0,
        state_dir=tmp_path / "seq",
        stats_interval=0,
        instance_id="consortium-seq",
    )
    return seq.run(until=lambda s: s.entries + s.rejects >= total)


def test_sequencer_rejects_unauthorized_submissions(kafka_bootstrap, tmp_path):
    suffix = uuid.uuid4().hex[:8]
    name, membership, intake = f"pay-{suffix}", f"acme-{suffix}-membership", f"pay-{suffix}-in"
    keys = {n: SigningKey.generate(n) for n in ("bank-a", "bank-b", "bank-c", "mallory")}
    log_key = SigningKey.generate("acme.example/log")
    backend = KafkaBackend(kafka_bootstrap, state_dir=tmp_path / "setup", timeout=15)
    try:
        genesis = MembershipDocument(
            "acme",
            1,
            (
                Org("bank-a", keys["bank-a"].verifier, ("admin", "operator", f"writer:{name}")),
                Org("bank-b", keys["bank-b"].verifier, ("admin", f"writer:{name}")),
                Org("bank-c", keys["bank-c"].verifier, ("admin", "auditor")),
            ),
            ledgers=(name,),
            admin_threshold=2,
        )
        mledger = create_membership_ledger(
            backend,
            membership,
            sign_document(genesis, [keys["bank-a"], keys["bank-c"]]),
            signer=log_key,
        )
        create_signed_ledger(backend, name, membership_ledger=membership, signer=log_key)
        admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
        admin.create_topics([NewTopic(intake, 1, 1)])[intake].result(timeout=30)

        def sub(org, payload, seq=0, signer=None):
            envelope = sign_submission(
                signer or keys[org],
                name,
                payload,
                membership_seq=seq,
                content_type="application/json",
                key=b"acct-1",
            )
            return (b"acct-1", envelope, [("content-type", b"application/json")])

        early = [sub("bank-b", b'{"n": 1}'), sub("bank-a", b'{"n": 2}')]
        _produce(kafka_bootstrap, intake, early)
        stats = _run(kafka_bootstrap, tmp_path, name, intake, log_key, len(early))
        assert (stats.entries, stats.rejects) == (2, 0)

        revoke = genesis.successor(roles={"bank-b": ["admin"]})
        submit_change(mledger, sign_document(revoke, [keys["bank-a"], keys["bank-c"]]))

        forger = SigningKey.generate("bank-a")
        late = {
            "unsigned": (b"acct-1", b'{"n": 3}', [("content-type", b"application/json")]),
            "bad_signature": sub("bank-a", b'{"n": 4}', signer=forger),
            "unknown_org": sub("mallory", b'{"n": 5}'),
            "revoked": sub("bank-b", b'{"n": 6}', seq=1),
        }
        good = sub("bank-a", b'{"n": 7}', seq=1)
        _produce(kafka_bootstrap, intake, [*late.values(), good])
        stats = _run(kafka_bootstrap, tmp_path, name, intake, log_key, len(late) + 1)
        assert (stats.entries, stats.rejects) == (1, len(late))

        rejects = _read_all(kafka_bootstrap, name + ".rejects", 0)
        codes = {}
        for msg in rejects:
            headers = dict(msg.headers())
            codes[headers[H_CODE].decode()] = headers[H_REASON].decode()
            assert msg.value() in {v for _, v, _ in late.values()}
        assert set(codes) == set(late)
        assert "lost write permission" in codes["revoked"]
        assert "mallory" in codes["unknown_org"]

        entries = _entries(kafka_bootstrap, name, 1)
        inner = [e.payload[-8:] for e in entries]
        assert inner == [b'{"n": 1}', b'{"n": 2}', b'{"n": 7}']
        ledger = Ledger(backend, name, signer=log_key)
        ledger.checkpoint()
        report = ledger.verify()
        assert report.ok, report.findings

        # written past the sequencer: verify names it; bank-b's early entry stays valid
        history = load_membership(backend, membership)
        assert history.current.document.version == 2
        injected = ledger.append_many(
            [signed_item(keys["bank-b"], name, b'{"n": 8}', membership_seq=1)], partition=0
        )[0]
        [finding] = ledger.verify().findings
        assert (finding.kind, finding.partition, finding.seq, finding.offset) == (
            "unauthorized_writer",
            0,
            injected.seq,
            injected.offset,
        )
    finally:
        backend.close()
