"""Three organizations witnessing one ledger on a real Kafka broker."""

from __future__ import annotations

import uuid

import pytest

from streamledger import Ledger
from streamledger.audit import export_bundle
from streamledger.core.bundle import verify_bundle
from tests.witness.helpers import ORGS, consortium, fill, rewritten_checkpoint

pytestmark = pytest.mark.kafka


def test_three_organizations_on_kafka(kafka_bootstrap, tmp_path):
    from streamledger.backends.kafka import KafkaBackend

    c = consortium(tmp_path)
    name = f"wit-{uuid.uuid4().hex[:8]}"
    operator = KafkaBackend(kafka_bootstrap, state_dir=tmp_path / "operator")
    signer = c.keys.load("operator.example/log")
    ledger = Ledger.create(operator, name, partitions=2, signer=signer)
    # Each organization reads the ledger through its own client and cache.
    orgs = {
        org: KafkaBackend(kafka_bootstrap, state_dir=tmp_path / f"cache-{i}")
        for i, org in enumerate(ORGS)
    }
    try:
        fill(ledger, 40)
        ledger.checkpoint()
        for org, backend in orgs.items():
            assert len(c.witness(backend, name, org).run_once().cosigned) == 2
        # A witness restarted mid-stream (new client, state from its file) continues.
        fill(ledger, 20)
        ledger.checkpoint()
        for org in ORGS:
            orgs[org].close()
            orgs[org] = KafkaBackend(kafka_bootstrap, state_dir=tmp_path / f"new-{org[:6]}")
            witness = c.witness(orgs[org], name, org)
            assert witness.state(0)[0] == 20
            assert sorted(witness.run_once().cosigned) == [(0, 30), (1, 30)]
        auditor = KafkaBackend(kafka_bootstrap, state_dir=tmp_path / "auditor")
        try:
            view = Ledger(auditor, name)
            assert view.verify(c.policy(2)).ok
            text = export_bundle(view, 1, [0, 29], trust=c.policy(2))
            assert verify_bundle(text, [c.log_vkey], c.witness_vkeys(), 3).entries == [0, 29]
        finally:
            auditor.close()

        # The operator signs, with the real key, a checkpoint over a rewritten history of
        # partition 0 (shown to some readers; the topic itself cannot be edited in place).
        forged = rewritten_checkpoint(
            ledger, 0, [f"rewritten {i}".encode() for i in range(35)], signer
        )
        operator.add_checkpoint(name, 0, 35, forged)
        fill(ledger, 10, partition=0)  # the real log grows past it
        for org, backend in orgs.items():
            result = c.witness(backend, name, org).run_once()
            assert [a.reason for a in result.refused] == ["inconsistent"]
        auditor = KafkaBackend(kafka_bootstrap, state_dir=tmp_path / "auditor2")
        try:
            view = Ledger(auditor, name)
            assert len(view.alerts(0)) == 3
            report = view.verify(c.policy(2))
            forks = [f for f in report.findings if f.kind == "checkpoint_fork"]
            assert len(forks) == 1 and forks[0].partition == 0 and forks[0].seq == 34
            assert sorted(forks[0].evidence["witnesses"]) == sorted(ORGS)
            assert any(
                f.kind == "witness_shortfall" and f.evidence["tree_size"] == 35
                for f in report.findings
            )
            evidence = export_bundle(view, 0, [3], trust=c.policy(2))
            assert len(verify_bundle(evidence, [c.log_vkey], c.witness_vkeys(), 2).warnings) == 3
        finally:
            auditor.close()
    finally:
        for backend in orgs.values():
            backend.close()
        operator.close()
