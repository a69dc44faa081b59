"""Proofs read their Merkle nodes in one batch (``get_nodes``): the proofs are exactly those
of the node-by-node path, verify offline, and every backend answers the batch."""

from __future__ import annotations

import itertools
import random
import threading
from pathlib import Path

import pytest

from streamledger.backends.base import get_nodes, get_nodes_one_by_one
from streamledger.backends.memory import MemoryBackend
from streamledger.backends.sqlite import SQLiteBackend
from streamledger.core.checkpoint import Checkpoint, sign_checkpoint
from streamledger.core.merkle import (
    InMemoryTree,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root_from_leaf_hashes,
    root_hash,
    verify_consistency,
    verify_inclusion,
)
from streamledger.core.note import SigningKey
from streamledger.core.proof import (
    consistency_node_ids,
    inclusion_node_ids,
    root_node_ids,
)
from streamledger.core.verify import TrustPolicy
from streamledger.errors import BackendUnavailable, ProofError
from streamledger.ledger import Ledger

KEY = SigningKey.generate("proof-batch.example/log")


def _only(allowed: list[tuple[int, int]], tree: InMemoryTree):
    """A getter that refuses any node outside ``allowed``."""
    allowed_set = set(allowed)

    def get(level: int, index: int) -> bytes:
        assert (level, index) in allowed_set, f"node {(level, index)} was not announced"
        return tree.get_node(level, index)

    return get


def test_node_ids_announce_every_node_a_proof_reads() -> None:
    leaves = [leaf_hash(b"%d" % i) for i in range(70)]
    roots = [root_from_leaf_hashes(leaves[:n]) for n in range(71)]  # independent of the paths
    for size in range(1, 71):
        tree = InMemoryTree(leaves[:size])
        for index in range(size):
            ids = inclusion_node_ids(index, size)
            assert len(ids) == len(set(ids))
            got = inclusion_proof(index, size, _only(ids, tree))
            verify_inclusion(leaves[index], index, size, got, roots[size])
        for old in range(size + 1):
            ids = consistency_node_ids(old, size)
            get = _only(ids, tree)
            assert root_hash(old, get) == roots[old]
            assert root_hash(size, get) == roots[size]
            proof = consistency_proof(old, size, get)
            verify_consistency(old, size, roots[old], roots[size], proof)
        assert root_hash(size, _only(root_node_ids(size), tree)) == roots[size]


def test_node_ids_refuse_what_the_proofs_refuse() -> None:
    with pytest.raises(ProofError):
        inclusion_node_ids(5, 5)
    with pytest.raises(ProofError):
        inclusion_node_ids(-1, 5)
    with pytest.raises(ProofError):
        consistency_node_ids(6, 5)
    assert root_node_ids(0) == [] and consistency_node_ids(0, 0) == []


def _sqlite(tmp_path: Path) -> SQLiteBackend:
    return SQLiteBackend(tmp_path / "store")


BACKENDS = {"memory": lambda tmp_path: MemoryBackend(), "sqlite": _sqlite}


def _filled(backend, size: int = 300) -> Ledger:
    ledger = Ledger.create(backend, "batch", partitions=2, signer=KEY)
    sizes = [1, 2, 7, 64, 100, 126]  # several appends: nodes completed across batches
    assert sum(sizes) == size
    for n in sizes:
        ledger.append_many([b"entry %d" % i for i in range(n)], partition=0)
        ledger.checkpoint()
    ledger.append_many([b"other"] * 5, partition=1)
    ledger.checkpoint()
    return ledger


class _NoBatch:
    """A backend written before ``get_nodes``: everything but that method."""

    def __init__(self, inner) -> None:
        self._inner = inner

    def __getattr__(self, name: str):
        if name == "get_nodes":
            raise AttributeError(name)
        return getattr(self._inner, name)


def _old_inclusion(ledger: Ledger, seq: int, size: int) -> list[bytes]:
    return inclusion_proof(seq, size, ledger._get_node(0))


@pytest.mark.parametrize("kind", sorted(BACKENDS))
def test_batched_proofs_equal_node_by_node_proofs(kind: str, tmp_path: Path) -> None:
    backend = BACKENDS[kind](tmp_path)
    ledger = _filled(backend)
    size = ledger.size(0)
    rng = random.Random(3)
    for seq in [0, 1, 63, 64, 127, 128, size - 1, *rng.sample(range(size), 40)]:
        proof = ledger.prove_inclusion(0, seq)
        assert proof.tree_size == size
        assert proof.proof == _old_inclusion(ledger, seq, size)
        assert proof.verify([KEY.verifier])
    olds = [0, 1, 2, 3, 10, 64, 73, 74, 174, 299, 300, *rng.sample(range(1, size), 30)]
    for old, new in itertools.product(olds, [size, 174, 300]):
        if old > new:
            continue
        cproof = ledger.prove_consistency(0, old, new)
        get = ledger._get_node(0)
        assert cproof.proof == consistency_proof(old, new, get)
        assert cproof.old_root == root_hash(old, get)
        assert cproof.new_root == root_hash(new, get)
        facts = cproof.verify([KEY.verifier])
        # checkpoints were signed at these sizes: both come with the proof
        if old in (1, 3, 10, 74, 174, 300) and new in (174, 300):
            assert cproof.old_checkpoint is not None and cproof.new_checkpoint is not None
            assert any("signed by" in f for f in facts)
    # the same proofs through the one-by-one default (a backend without get_nodes)
    plain = Ledger(_NoBatch(backend), "batch")
    for seq in (0, 150, size - 1):
        assert plain.prove_inclusion(0, seq) == ledger.prove_inclusion(0, seq)
    assert plain.prove_consistency(0, 77) == ledger.prove_consistency(0, 77)
    backend.close()


@pytest.mark.parametrize("kind", sorted(BACKENDS))
def test_get_nodes_answers_like_get_node(kind: str, tmp_path: Path) -> None:
    backend = BACKENDS[kind](tmp_path)
    _filled(backend)
    ids = [(level, index) for level in range(9) for index in range(300 >> level)]
    ids += ids[:5]  # duplicates are answered once
    many = backend.get_nodes("batch", 0, ids)
    assert many == {i: backend.get_node("batch", 0, *i) for i in ids}
    assert many == get_nodes_one_by_one(backend, "batch", 0, ids)
    assert get_nodes(backend, "batch", 1, [(0, 4), (2, 0)]) == {
        (0, 4): backend.get_node("batch", 1, 0, 4),
        (2, 0): backend.get_node("batch", 1, 2, 0),
    }
    assert backend.get_nodes("batch", 0, []) == {}
    with pytest.raises(BackendUnavailable, match="level 0 index 300"):
        backend.get_nodes("batch", 0, [(0, 1), (0, 300)])
    with pytest.raises(BackendUnavailable, match="level 3 index 5"):
        backend.get_nodes("batch", 1, [(3, 5)])
    # more nodes than one statement holds
    big = [(0, i) for i in range(300)] + [(1, i) for i in range(150)]
    assert backend.get_nodes("batch", 0, big) == {i: backend.get_node("batch", 0, *i) for i in big}
    backend.close()


def test_sqlite_proofs_do_not_wait_for_the_writing_connection(tmp_path: Path) -> None:
    """A proof reads nodes on a connection of its own: an append holding the writing
    connection (here: its lock, held by this thread) does not hold the proof up."""
    backend = _sqlite(tmp_path)
    ledger = _filled(backend)
    done: list[object] = []
    with backend._lock:
        worker = threading.Thread(target=lambda: done.append(ledger.prove_consistency(0, 10)))
        worker.start()
        worker.join(20)
        finished = bool(done)
    worker.join()
    assert finished, "the proof waited for the writing connection's lock"
    assert done[0] == ledger.prove_consistency(0, 10)
    backend.close()


def test_sqlite_reader_sees_nodes_committed_after_it_opened(tmp_path: Path) -> None:
    backend = _sqlite(tmp_path)
    ledger = _filled(backend)
    ledger.prove_inclusion(0, 5)  # the node-reading connection is open now
    ledger.append_many([b"late %d" % i for i in range(40)], partition=0)
    ledger.checkpoint()
    proof = ledger.prove_inclusion(0, 330)
    assert proof.tree_size == 340 and proof.verify([KEY.verifier])
    assert ledger.prove_consistency(0, 300).verify([KEY.verifier])
    backend.close()
    with pytest.raises(Exception):  # noqa: B017 - closed means closed, both connections
        backend.get_nodes("batch", 0, [(0, 1)])


def test_a_verified_checkpoint_is_remembered_only_for_the_same_note_and_trust() -> None:
    backend = MemoryBackend()
    ledger = _filled(backend)
    good = ledger.prove_inclusion(0, 10)
    assert good.verify([KEY.verifier])
    # Another key's trust: the note verified above must not count as verified for it.
    other = SigningKey.generate("proof-batch.example/other")
    with pytest.raises(ProofError, match="no signed checkpoint"):
        ledger.prove_inclusion(0, 10, trust=TrustPolicy((other.verifier,)))
    # A later note whose body was changed under the log key's signature line: it must be
    # checked (and refused) on its own, whatever was remembered about the note before it.
    latest = backend.checkpoints("batch", 0)[-1]
    forged_cp = Checkpoint(ledger.config.checkpoint_origin(0), 301, bytes(32))
    body = sign_checkpoint(forged_cp, other).split("\n\n", 1)[0]
    forged = body + "\n\n" + latest.split("\n\n", 1)[1]
    backend.add_checkpoint("batch", 0, 301, forged)
    proof = ledger.prove_inclusion(0, 10)
    assert proof.checkpoint == latest and proof.tree_size == 300
    with pytest.raises(ProofError):
        ledger.prove_inclusion(0, 300)  # only the forged note would cover it
    # A note with a stale signature is refused again on every call, not remembered.
    for _ in range(2):
        with pytest.raises(ProofError):
            ledger.prove_inclusion(0, 300)
    assert all(key[0] != forged for key in ledger._verified_notes)
