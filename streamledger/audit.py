"""Audit bundles: export chosen entries of a ledger with everything needed to check them offline.

The format and the offline check are pure (:mod:`streamledger.core.bundle`); this module reads
the ledger to build a bundle. See ``docs/audit.md``.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Sequence
from typing import Any

from streamledger.core.bundle import (
    BUNDLE_FORMAT,
    BUNDLE_VERSION,
    BundleReport,
    canonical_bundle,
    verify_bundle,
)
from streamledger.core.checkpoint import verify_checkpoint
from streamledger.core.entry import decode_record
from streamledger.core.merkle import inclusion_proof
from streamledger.core.verify import TrustPolicy
from streamledger.errors import ConfigError, ProofError, StreamledgerError, VerificationError
from streamledger.ledger import Ledger

__all__ = ["BundleReport", "export_bundle", "verify_bundle"]


def _cosigned_checkpoint(ledger: Ledger, partition: int, min_size: int, trust: TrustPolicy) -> str:
    """The latest checkpoint covering ``min_size`` entries with the log signature and the
    required cosignatures (published cosignatures merged in)."""
    origin = ledger.config.checkpoint_origin(partition)
    notes = ledger.checkpoint_notes(partition, trust.witness_keys)
    for note in reversed(notes):
        try:
            verified = verify_checkpoint(
                note,
                list(trust.log_keys),
                trust.witness_keys,
                trust.required_witnesses,
                origin=origin,
            )
        except StreamledgerError:
            continue
        if verified.checkpoint.tree_size >= min_size:
            return note
    need = (
        f" with {trust.required_witnesses} witness cosignature(s)"
        if trust.required_witnesses
        else ""
    )
    raise ProofError(
        f"no signed checkpoint of {ledger.name!r} partition {partition}{need} covers "
        f"{min_size} entries yet: run 'streamledger checkpoint' and the witnesses "
        "('streamledger witness run'), then export again"
    )


def export_bundle(
    ledger: Ledger,
    partition: int,
    seqs: Sequence[int],
    *,
    trust: TrustPolicy | None = None,
    hashes_only: bool = False,
    membership: Any = None,
    created_ms: int | None = None,
) -> str:
    """The canonical text of an audit bundle for entries ``seqs`` of ``partition``.

    ``trust`` chooses the checkpoint: the latest one signed by its log key with its quorum of
    witness cosignatures (default: the key recorded at init, no witnesses). The bundle is
    checked with the same keys before it is returned, so a store whose data does not back
    its own checkpoint cannot produce one. ``membership`` is an optional JSON-compatible
    membership document in force (carried, not interpreted, by this version).
    """
    if not seqs:
        raise ConfigError("choose at least one entry (--seq N)")
    trust = trust or ledger.default_trust()
    if trust is None:
        raise ConfigError(
            f"ledger {ledger.name!r} records no log key: pass the log's verifier key (--vkey)"
        )
    ledger._check_partition(partition)
    wanted = sorted(set(seqs))
    if wanted[0] < 0:
        raise ConfigError("sequence numbers cannot be negative")
    size = ledger.size(partition)
    if wanted[-1] >= size:
        raise ProofError(
            f"{ledger.name!r} partition {partition} has no entry seq {wanted[-1]} "
            f"(it holds {size} entries)"
        )
    note = _cosigned_checkpoint(ledger, partition, wanted[-1] + 1, trust)
    cp = verify_checkpoint(note, list(trust.log_keys)).checkpoint
    get_node = ledger._get_node(partition)
    entries = []
    for seq in wanted:
        records = list(ledger.backend.read(ledger.name, partition, seq, seq + 1))
        if not records:
            raise ProofError(f"{ledger.name!r} partition {partition} has no entry seq {seq}")
        entry = decode_record(records[0].value)
        if entry.header.seq != seq:
            raise ProofError(f"the store returned entry seq {entry.header.seq} for seq {seq}")
        item: dict[str, Any] = {
            "seq": seq,
            "leaf_hash": entry.leaf_hash.hex(),
            "payload_hash": entry.header.payload_hash.hex(),
            "proof": [h.hex() for h in inclusion_proof(seq, cp.tree_size, get_node)],
        }
        if not hashes_only:
            item["header"] = base64.b64encode(entry.header_bytes).decode()
            item["payload"] = (
                base64.b64encode(entry.payload).decode() if entry.payload is not None else None
            )
        entries.append(item)
    alerts = [a.to_json() for a in ledger.alerts(partition)]
    bundle = {
        "format": BUNDLE_FORMAT,
        "version": BUNDLE_VERSION,
        "ledger": ledger.name,
        "partition": partition,
        "created_ms": int(time.time() * 1000) if created_ms is None else created_ms,
        "hashes_only": hashes_only,
        "checkpoint": note,
        "log_vkey": str(trust.log_keys[0]),
        "witness_vkeys": [str(k) for k in trust.witness_keys],
        "required_witnesses": trust.required_witnesses,
        "entries": entries,
        "membership": membership,
        "alerts": alerts,
    }
    text = canonical_bundle(bundle)
    try:
        verify_bundle(text, trust.log_keys, trust.witness_keys, trust.required_witnesses)
    except VerificationError as exc:
        if alerts and "forked" in str(exc):
            return text  # the evidence of a fork is what this bundle is for
        raise VerificationError(
            f"the ledger's own data does not check out, no bundle written: {exc}"
        ) from None
    return text
