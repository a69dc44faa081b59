"""Shared set-up: a log key, three organizations' witness keys and a ledger."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from streamledger import KeyStore, Ledger, TrustPolicy
from streamledger.core.checkpoint import Checkpoint, sign_checkpoint
from streamledger.core.merkle import root_from_leaf_hashes
from streamledger.services.witness import Witness

ORGS = ("bank-a.example/witness", "bank-b.example/witness", "regulator.example/witness")


@dataclass
class Consortium:
    keys: KeyStore
    state: Path

    @property
    def log_vkey(self):
        return self.keys.vkey("operator.example/log")

    def witness_vkeys(self, names=ORGS):
        return tuple(self.keys.vkey(n) for n in names)

    def policy(self, k: int = 2, names=ORGS) -> TrustPolicy:
        return TrustPolicy((self.log_vkey,), self.witness_vkeys(names), k)

    def witness(self, backend, ledger: str, name: str) -> Witness:
        return Witness(
            backend, ledger, self.keys.load(name), [self.log_vkey], self.state / name.split("/")[0]
        )


def consortium(tmp_path: Path) -> Consortium:
    keys = KeyStore(tmp_path / "keys")
    keys.generate("operator.example/log")
    for name in ORGS:
        keys.generate(name, witness=True)
    keys.generate("stranger.example/witness", witness=True)
    return Consortium(keys, tmp_path / "witness-state")


def fill(ledger: Ledger, count: int, tag: str = "p", partition: int | None = None) -> None:
    ledger.append_many([f'{{"{tag}":{i}}}'.encode() for i in range(count)], partition=partition)


def rewritten_checkpoint(ledger: Ledger, partition: int, payloads: list[bytes], signer) -> str:
    """A checkpoint the operator signs over a different, self-consistent history."""
    from streamledger import MemoryBackend

    shadow = Ledger.create(
        MemoryBackend(),
        ledger.name,
        partitions=ledger.partitions,
        origin=ledger.config.origin,
        signer=signer,
    )
    shadow.append_many(payloads, partition=partition)
    leaves = [e.leaf_hash for e in shadow.read(partition)]
    cp = Checkpoint(
        ledger.config.checkpoint_origin(partition), len(leaves), root_from_leaf_hashes(leaves)
    )
    return sign_checkpoint(cp, signer)
