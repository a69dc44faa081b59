"""Three organizations sharing a ledger, on the embedded store, with one shared clock."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from streamledger import Ledger, SigningKey, SQLiteBackend
from streamledger.consortium import (
    MembershipDocument,
    Org,
    create_membership_ledger,
    create_signed_ledger,
    sign_document,
)


class Clock:
    """Milliseconds that move only when told (every call returns a later time)."""

    def __init__(self) -> None:
        self.now = 1_700_000_000_000

    def __call__(self) -> int:
        self.now += 1
        return self.now


@dataclass
class Consortium:
    backend: SQLiteBackend
    clock: Clock
    keys: dict[str, SigningKey]
    log_key: SigningKey
    membership: Ledger
    genesis: MembershipDocument
    extra: dict = field(default_factory=dict)

    def org(self, name: str, *roles: str) -> Org:
        return Org(name, self.keys[name].verifier, roles)

    def ledger(self, name: str) -> Ledger:
        return Ledger(self.backend, name, signer=self.log_key, clock=self.clock)

    @property
    def current(self) -> MembershipDocument:
        from streamledger.consortium import load_membership

        return load_membership(self.backend, self.membership.name).current.document


@pytest.fixture
def consortium(tmp_path) -> Consortium:
    """bank-a (admin, operator, writer), bank-b (admin, writer), bank-c (admin, auditor);
    changes need 2 admins. Ledgers: membership ledger acme-membership, payments (signed)."""
    backend = SQLiteBackend(tmp_path / "store")
    clock = Clock()
    keys = {n: SigningKey.generate(n) for n in ("bank-a", "bank-b", "bank-c", "mallory")}
    log_key = SigningKey.generate("acme.example/log")
    genesis = MembershipDocument(
        consortium="acme",
        version=1,
        ledgers=("payments",),
        admin_threshold=2,
        orgs=(
            Org("bank-a", keys["bank-a"].verifier, ("admin", "operator", "writer:payments")),
            Org("bank-b", keys["bank-b"].verifier, ("admin", "writer:payments")),
            Org("bank-c", keys["bank-c"].verifier, ("admin", "auditor")),
        ),
    )
    note = sign_document(genesis, [keys["bank-a"], keys["bank-b"]])
    membership = create_membership_ledger(
        backend, "acme-membership", note, signer=log_key, clock=clock
    )
    create_signed_ledger(
        backend, "payments", membership_ledger="acme-membership", partitions=2, signer=log_key
    )
    yield Consortium(backend, clock, keys, log_key, membership, genesis)
    backend.close()
