"""RFC 6962 / RFC 9162 Merkle tree: hashes, roots, inclusion and consistency proofs.

Pure functions, no I/O. Interoperates bit for bit with ``transparency-dev/merkle`` (Go).

Definitions (RFC 9162 section 2.1), with ``D[n]`` a list of ``n`` leaves:

* leaf hash      ``SHA-256(0x00 || data)``
* node hash      ``SHA-256(0x01 || left || right)``
* ``MTH({})``    ``SHA-256("")`` (:data:`EMPTY_ROOT`)
* ``MTH(D[n])``  ``node_hash(MTH(D[0:k]), MTH(D[k:n]))`` with ``k`` the largest power of two
  smaller than ``n``.

Storage model
-------------
A store keeps *perfect* subtrees only. A node is addressed by ``(level, index)``: it covers the
leaves ``[index << level, (index + 1) << level)``; level 0 holds the leaf hashes. A
:data:`NodeGetter` returns the hash of such a node and is only ever asked for nodes that lie
fully inside the tree. The hash of an incomplete node on the right edge of a tree (an
"ephemeral" node) is computed here from the at most ``log2(n)`` perfect subtrees that
decompose its range, so every proof function calls the getter ``O(log n)`` times.

Proofs are lists of 32-byte hashes in the order of RFC 9162 (and transparency-dev/merkle):
from the leaf (or the old tree's subtree) up to the root.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterator, Sequence

from streamledger.core import _accel
from streamledger.errors import FormatError, ProofError, VerificationError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "CompactRange",
    "InMemoryTree",
    "Node",
    "NodeGetter",
    "NodeRuns",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "range_nodes",
    "root_from_leaf_hashes",
    "root_hash",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
"""Size in bytes of every hash in the tree (SHA-256)."""

EMPTY_ROOT: bytes = hashlib.sha256(b"").digest()
"""Root hash of the empty tree, ``SHA-256("")``."""

NodeGetter = Callable[[int, int], bytes]
"""``get_node(level, index)``: hash of the perfect subtree over
``[index << level, (index + 1) << level)``; level 0 are leaf hashes."""

#: (level, index) of a perfect subtree, level 0 = leaf hashes: what a NodeGetter is asked.
NodeId = tuple[int, int]

#: (level, index, hash) of a perfect subtree: what an append completes and a store keeps.
Node = tuple[int, int, bytes]

_sha256 = hashlib.sha256
_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"


def leaf_hash(data: bytes) -> bytes:
    """Hash of a leaf: ``SHA-256(0x00 || data)``."""
    return _sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Hash of an interior node: ``SHA-256(0x01 || left || right)``."""
    return _sha256(_NODE_PREFIX + left + right).digest()


def root_from_leaf_hashes(leaf_hashes: Sequence[bytes]) -> bytes:
    """RFC 6962 root of a whole list of leaf hashes (``O(n)`` memory; simple reference helper).

    Hashes level by level; an unpaired last node is promoted unchanged to the next level,
    which yields exactly ``MTH`` of RFC 9162.
    """
    level = list(leaf_hashes)
    if not level:
        return EMPTY_ROOT
    while len(level) > 1:
        nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) & 1:
            nxt.append(level[-1])
        level = nxt
    return level[0]


# --------------------------------------------------------------------------------------------
# Range decomposition
# --------------------------------------------------------------------------------------------


def range_nodes(begin: int, end: int) -> list[tuple[int, int]]:
    """The ``(level, index)`` perfect subtrees that exactly cover ``[begin, end)``, left to right.

    This is the canonical (minimal) decomposition: at each step the largest perfect subtree
    that starts at ``begin`` and does not pass ``end``. ``range_nodes(0, n)`` gives one node per
    set bit of ``n``, largest first. An empty range gives ``[]``.
    """
    if begin < 0 or end < begin:
        raise ProofError(f"invalid leaf range [{begin}, {end})")
    nodes: list[tuple[int, int]] = []
    while begin < end:
        level = (end - begin).bit_length() - 1
        if begin:
            level = min(level, (begin & -begin).bit_length() - 1)
        nodes.append((level, begin >> level))
        begin += 1 << level
    return nodes


def _range_hash(begin: int, end: int, get_node: NodeGetter) -> bytes:
    """``MTH(D[begin:end])`` for a non-empty range whose ``begin`` is aligned to a power of two
    at least ``end - begin`` (true of every right-edge node and of ``[0, n)``).

    For such a range the canonical decomposition has strictly decreasing sizes and the RFC tree
    over it is their right fold.
    """
    nodes = range_nodes(begin, end)
    level, index = nodes[-1]
    h = get_node(level, index)
    for level, index in reversed(nodes[:-1]):
        h = node_hash(get_node(level, index), h)
    return h


def root_hash(tree_size: int, get_node: NodeGetter) -> bytes:
    """RFC 6962 root of the first ``tree_size`` leaves (:data:`EMPTY_ROOT` for 0).

    Calls ``get_node`` once per set bit of ``tree_size``.
    """
    if tree_size < 0:
        raise ProofError(f"tree size {tree_size} is negative")
    if tree_size == 0:
        return EMPTY_ROOT
    return _range_hash(0, tree_size, get_node)


# --------------------------------------------------------------------------------------------
# Proof generation
# --------------------------------------------------------------------------------------------


def _path(level: int, index: int, tree_size: int, get_node: NodeGetter) -> list[bytes]:
    """Audit path of the perfect node ``(level, index)`` in a tree of ``tree_size`` leaves.

    In the perfect binary tree over ``2**k >= tree_size`` leaves, the RFC tree's path is the
    list of siblings of the node's ancestors, where a sibling that lies wholly past the end is
    skipped and one that straddles the end is replaced by the hash of its non-empty part.
    With ``last`` the node at ``level`` that holds the last leaf and ``inner`` the bit length of
    ``index ^ last``: below level ``level + inner - 1`` all siblings are complete, at that level
    the (right) sibling may straddle the end, and above it only left siblings exist.
    """
    last = (tree_size - 1) >> level
    inner = (index ^ last).bit_length()
    proof: list[bytes] = []
    for j in range(inner - 1):
        proof.append(get_node(level + j, (index >> j) ^ 1))
    if inner:
        lvl = level + inner - 1
        sib = (index >> (inner - 1)) ^ 1
        begin = sib << lvl
        end = begin + (1 << lvl)
        if end <= tree_size:
            proof.append(get_node(lvl, sib))
        else:
            proof.append(_range_hash(begin, tree_size, get_node))
    node = index >> inner
    lvl = level + inner
    while node:
        if node & 1:
            proof.append(get_node(lvl, node ^ 1))
        node >>= 1
        lvl += 1
    return proof


def inclusion_proof(index: int, tree_size: int, get_node: NodeGetter) -> list[bytes]:
    """RFC 9162 inclusion proof (``PATH``) of leaf ``index`` in the tree of ``tree_size`` leaves.

    Raises :class:`ProofError` unless ``0 <= index < tree_size``.
    """
    if index < 0:
        raise ProofError(f"leaf index {index} is negative")
    if index >= tree_size:
        raise ProofError(f"leaf index {index} is not below tree size {tree_size}")
    return _path(0, index, tree_size, get_node)


def consistency_proof(old_size: int, new_size: int, get_node: NodeGetter) -> list[bytes]:
    """RFC 9162 consistency proof (``PROOF``) from the tree of ``old_size`` to ``new_size``.

    Empty when ``old_size`` is 0 or equals ``new_size``. Otherwise: the largest perfect subtree
    ending at ``old_size`` (omitted when ``old_size`` is a power of two, since the verifier
    already has it as the old root) followed by that subtree's audit path in the new tree.
    Raises :class:`ProofError` unless ``0 <= old_size <= new_size``.
    """
    if old_size < 0:
        raise ProofError(f"old tree size {old_size} is negative")
    if old_size > new_size:
        raise ProofError(f"old tree size {old_size} is larger than new tree size {new_size}")
    if old_size == 0 or old_size == new_size:
        return []
    level = (old_size & -old_size).bit_length() - 1
    index = (old_size - 1) >> level
    proof = _path(level, index, new_size, get_node)
    if index:
        proof.insert(0, get_node(level, index))
    return proof


# --------------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------------


def _check_hash(what: str, value: object) -> None:
    if not isinstance(value, bytes | bytearray | memoryview) or len(value) != HASH_SIZE:
        size = len(value) if isinstance(value, bytes | bytearray | memoryview) else None
        got = f"{size} bytes" if size is not None else type(value).__name__
        raise VerificationError(f"{what} must be a {HASH_SIZE}-byte hash, got {got}")


def _check_proof(proof: Sequence[bytes], want: int) -> None:
    if len(proof) != want:
        raise VerificationError(f"wrong proof length: got {len(proof)} hashes, want {want}")
    for i, h in enumerate(proof):
        _check_hash(f"proof element {i}", h)


def _match(what: str, computed: bytes, expected: bytes) -> None:
    if not hmac.compare_digest(bytes(computed), bytes(expected)):
        raise VerificationError(
            f"{what} mismatch: proof yields {bytes(computed).hex()}, "
            f"expected {bytes(expected).hex()}"
        )


def _inclusion_shape(index: int, tree_size: int) -> tuple[int, int]:
    """``(inner, border)``: number of path nodes below/above the fork with the right edge."""
    inner = (index ^ (tree_size - 1)).bit_length()
    return inner, (index >> inner).bit_count()


def verify_inclusion(
    leaf_hash: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree of ``tree_size`` with ``root``.

    Returns ``None`` on success; raises :class:`VerificationError` saying what is wrong.
    """
    if index < 0 or index >= tree_size:
        raise VerificationError(f"leaf index {index} is not below tree size {tree_size}")
    _check_hash("leaf hash", leaf_hash)
    _check_hash("root hash", root)
    inner, border = _inclusion_shape(index, tree_size)
    _check_proof(proof, inner + border)
    h = bytes(leaf_hash)
    for i in range(inner):
        h = node_hash(proof[i], h) if (index >> i) & 1 else node_hash(h, proof[i])
    for i in range(inner, inner + border):
        h = node_hash(proof[i], h)
    _match(f"root hash for leaf {index} in tree of size {tree_size}", h, root)


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree of ``new_size`` with ``new_root`` extends the one of ``old_size``.

    ``old_size == new_size`` needs an empty proof and equal roots; ``old_size == 0`` needs an
    empty proof and ``old_root == EMPTY_ROOT`` (any new tree extends the empty one).
    Returns ``None`` on success; raises :class:`VerificationError` saying what is wrong.
    """
    if old_size < 0:
        raise VerificationError(f"old tree size {old_size} is negative")
    if old_size > new_size:
        raise VerificationError(f"old tree size {old_size} is larger than new tree size {new_size}")
    _check_hash("old root hash", old_root)
    _check_hash("new root hash", new_root)
    if old_size == new_size:
        if len(proof):
            raise VerificationError(
                f"consistency proof between equal sizes {old_size} must be empty, "
                f"got {len(proof)} hashes"
            )
        _match(f"root hash of tree size {old_size}", new_root, old_root)
        return
    if old_size == 0:
        if len(proof):
            raise VerificationError(
                f"consistency proof from size 0 must be empty, got {len(proof)} hashes"
            )
        _match("old root hash of the empty tree", old_root, EMPTY_ROOT)
        return

    # The proof is the audit path of the largest perfect subtree ending at old_size (node
    # (shift, mask)) in the new tree, preceded by that subtree's hash unless it is the whole
    # old tree.
    shift = (old_size & -old_size).bit_length() - 1
    inner, border = _inclusion_shape(old_size - 1, new_size)
    inner -= shift
    mask = (old_size - 1) >> shift
    start = 0 if mask == 0 else 1
    _check_proof(proof, start + inner + border)
    seed = bytes(old_root) if start == 0 else bytes(proof[0])
    path = proof[start:]

    h1 = seed  # rebuilds the old root: only left siblings count
    h2 = seed  # rebuilds the new root
    for i in range(inner):
        if (mask >> i) & 1:
            h1 = node_hash(path[i], h1)
            h2 = node_hash(path[i], h2)
        else:
            h2 = node_hash(h2, path[i])
    for i in range(inner, inner + border):
        h1 = node_hash(path[i], h1)
        h2 = node_hash(path[i], h2)
    _match(f"old root hash of tree size {old_size}", h1, old_root)
    _match(f"new root hash of tree size {new_size}", h2, new_root)


# --------------------------------------------------------------------------------------------
# Incremental building
# --------------------------------------------------------------------------------------------


class NodeRuns(Sequence[Node]):
    """The perfect nodes an append completes, grouped by level.

    ``runs`` holds one ``(level, first_index, hashes)`` per level, levels ascending,
    ``hashes`` the 32-byte hashes of indexes ``first_index, first_index + 1, ...`` back to
    back: consecutive leaves complete consecutive nodes on every level. As a sequence it is
    the ``(level, index, hash)`` nodes, level by level, each built only when asked for (an
    append of k leaves completes about 2k nodes; stores that write runs take ``runs`` as
    they are)."""

    __slots__ = ("runs", "_len")

    def __init__(self, runs: list[tuple[int, int, bytes]]) -> None:
        for _, _, hashes in runs:
            if len(hashes) % HASH_SIZE:
                raise FormatError(f"a node run must hold 32-byte hashes, got {len(hashes)} bytes")
        self.runs = runs
        self._len = sum(len(hashes) for _, _, hashes in runs) // HASH_SIZE

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[Node]:
        for level, first, hashes in self.runs:
            for k in range(len(hashes) // HASH_SIZE):
                yield level, first + k, hashes[k * HASH_SIZE : (k + 1) * HASH_SIZE]

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return list(self)[i]
        if i < 0:
            i += self._len
        if not 0 <= i < self._len:
            raise IndexError("node index out of range")
        for level, first, hashes in self.runs:
            count = len(hashes) // HASH_SIZE
            if i < count:
                return level, first + i, hashes[i * HASH_SIZE : (i + 1) * HASH_SIZE]
            i -= count
        raise AssertionError("unreachable")

    def __eq__(self, other: object) -> bool:
        if isinstance(other, NodeRuns):
            return self.runs == other.runs
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"NodeRuns({self._len} nodes on {len(self.runs)} levels)"

    @classmethod
    def of(cls, nodes: Sequence[Node]) -> NodeRuns:
        """Group ``nodes`` (of one append: each level's indexes consecutive, in order) into
        runs; raises :class:`FormatError` if they are not."""
        runs: dict[int, tuple[int, list[bytes]]] = {}
        for level, index, h in nodes:
            run = runs.get(level)
            if run is None:
                runs[level] = run = (index, [])
            elif index != run[0] + len(run[1]):
                raise FormatError(f"nodes of level {level} are not consecutive at index {index}")
            if len(h) != HASH_SIZE:
                raise FormatError(f"node hash must be {HASH_SIZE} bytes, got {len(h)}")
            run[1].append(h)
        return cls([(level, first, b"".join(hs)) for level, (first, hs) in sorted(runs.items())])


class CompactRange:
    """Right edge of a tree of ``size`` leaves, ``O(log n)`` memory. Incremental root.

    Holds one hash per set bit of ``size``: the perfect subtrees of
    ``range_nodes(0, size)``, largest (leftmost) first.
    """

    __slots__ = ("_size", "_hashes")

    def __init__(self) -> None:
        self._size = 0
        self._hashes: list[bytes] = []

    @classmethod
    def from_nodes(cls, size: int, get_node: NodeGetter) -> CompactRange:
        """Restore the range of a tree of ``size`` leaves from its stored perfect subtrees
        (those of ``range_nodes(0, size)``)."""
        if size < 0:
            raise ProofError(f"tree size {size} is negative")
        cr = cls()
        cr._hashes = [bytes(get_node(level, index)) for level, index in range_nodes(0, size)]
        cr._size = size
        return cr

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    def append(self, leaf_hash: bytes) -> list[tuple[int, int, bytes]]:
        """Add the next leaf; return the perfect nodes ``(level, index, hash)`` it completes.

        The list starts with the leaf itself ``(0, old_size, leaf_hash)`` and climbs, so a store
        that persists every returned node holds every perfect subtree of the tree.
        Raises :class:`FormatError` if ``leaf_hash`` is not 32 bytes.
        """
        if len(leaf_hash) != HASH_SIZE:
            raise FormatError(f"leaf hash must be {HASH_SIZE} bytes, got {len(leaf_hash)}")
        h = leaf_hash if type(leaf_hash) is bytes else bytes(leaf_hash)
        index = self._size
        self._size = index + 1
        completed = [(0, index, h)]
        hashes = self._hashes
        if index & 1:  # merge with the left siblings on the right edge (hot path: inlined)
            pop = hashes.pop
            level = 0
            while index & 1:
                h = _sha256(_NODE_PREFIX + pop() + h).digest()
                index >>= 1
                level += 1
                completed.append((level, index, h))
        hashes.append(h)
        return completed

    def append_many(self, leaf_hashes: Sequence[bytes]) -> list[tuple[int, int, bytes]]:
        """Add leaves in order; return the perfect nodes they complete, exactly the lists
        :meth:`append` returns for each, one after another (:meth:`append_runs` is the fast
        way, without a tuple per node). Raises :class:`FormatError` if a leaf hash is not 32
        bytes."""
        completed: list[tuple[int, int, bytes]] = []
        for leaf in leaf_hashes:
            completed.extend(self.append(leaf))
        return completed

    def append_runs(self, leaf_hashes: Sequence[bytes]) -> NodeRuns:
        """:meth:`append_many` with the completed nodes grouped by level (the append hot
        path: no tuple per node; native code when available)."""
        native = _accel.native
        if native is not None and type(leaf_hashes) is list:
            try:
                hashes, runs = native.compact_append_runs(self._hashes, self._size, leaf_hashes)
            except (TypeError, ValueError, OverflowError):
                pass  # not plain 32-byte hashes: append() (through append_many) says what is wrong
            else:
                self._hashes = hashes
                self._size += len(leaf_hashes)
                return NodeRuns(runs)
        return NodeRuns.of(self.append_many(leaf_hashes))

    @classmethod
    def _of(cls, size: int, hashes: list[bytes]) -> CompactRange:
        """The range of ``size`` leaves whose perfect subtree hashes are ``hashes`` (largest
        first; trusted: for callers that keep the state elsewhere, like the native code)."""
        cr = cls()
        cr._size = size
        cr._hashes = hashes
        return cr

    def hashes(self) -> list[bytes]:
        """The stored perfect subtree hashes, largest first (those of ``range_nodes(0,
        size)``): with ``size`` they are the whole state, e.g. to persist and
        :meth:`from_nodes` it back."""
        return list(self._hashes)

    def push(self, leaf_hash: bytes) -> None:
        """Add the next leaf without reporting completed nodes (for verifiers, which only
        need the root). ``leaf_hash`` must be 32 bytes; it is not checked here."""
        index = self._size
        self._size = index + 1
        hashes = self._hashes
        h = leaf_hash
        while index & 1:
            h = _sha256(_NODE_PREFIX + hashes.pop() + h).digest()
            index >>= 1
        hashes.append(h)

    def root(self) -> bytes:
        """RFC 6962 root of the current size (:data:`EMPTY_ROOT` when empty)."""
        hashes = self._hashes
        if not hashes:
            return EMPTY_ROOT
        h = hashes[-1]
        for left in reversed(hashes[:-1]):
            h = node_hash(left, h)
        return h

    def copy(self) -> CompactRange:
        """An independent copy."""
        cr = CompactRange()
        cr._size = self._size
        cr._hashes = list(self._hashes)
        return cr

    def __repr__(self) -> str:
        return f"CompactRange(size={self._size})"


class InMemoryTree:
    """All perfect nodes of a tree, kept in memory: ``levels[level][index]``.

    Built with :meth:`CompactRange.append`; serves as a :data:`NodeGetter` for proofs over any
    size up to the current one.
    """

    __slots__ = ("_levels", "_range")

    def __init__(self, leaf_hashes: Sequence[bytes] = ()) -> None:
        self._levels: list[list[bytes]] = []
        self._range = CompactRange()
        if leaf_hashes:
            self.extend(leaf_hashes)

    @property
    def size(self) -> int:
        """Number of leaves."""
        return self._range.size

    def append(self, leaf_hash: bytes) -> int:
        """Add a leaf hash; return its index."""
        index = self._range.size
        levels = self._levels
        for level, _, h in self._range.append(leaf_hash):
            if level == len(levels):
                levels.append([h])
            else:
                levels[level].append(h)
        return index

    def extend(self, leaf_hashes: Sequence[bytes]) -> None:
        """Append many leaf hashes at once; same result as :meth:`append` in a loop, faster.

        Raises :class:`FormatError` (appending nothing) if any leaf hash is not 32 bytes.
        """
        new = [h if type(h) is bytes else bytes(h) for h in leaf_hashes]
        for i, h in enumerate(new):
            if len(h) != HASH_SIZE:
                raise FormatError(f"leaf hash {i} must be {HASH_SIZE} bytes, got {len(h)}")
        if not new:
            return
        levels = self._levels
        if not levels:
            levels.append([])
        levels[0].extend(new)
        sha, prefix = _sha256, _NODE_PREFIX
        level = 0
        while len(levels[level]) > 1:
            below = levels[level]
            if level + 1 == len(levels):
                levels.append([])
            above = levels[level + 1]
            above.extend(
                sha(prefix + below[i] + below[i + 1]).digest()
                for i in range(2 * len(above), len(below) - 1, 2)
            )
            level += 1
        self._range = CompactRange.from_nodes(len(levels[0]), self.get_node)

    def get_node(self, level: int, index: int) -> bytes:
        """Hash of the perfect node ``(level, index)``; :class:`ProofError` if not complete."""
        if (
            level < 0
            or index < 0
            or level >= len(self._levels)
            or index >= len(self._levels[level])
        ):
            raise ProofError(
                f"node (level {level}, index {index}) is not a complete subtree "
                f"of the tree of size {self.size}"
            )
        return self._levels[level][index]

    def _size_arg(self, size: int | None) -> int:
        if size is None:
            return self.size
        if size > self.size:
            raise ProofError(f"tree size {size} is larger than the current size {self.size}")
        return size

    def root(self, size: int | None = None) -> bytes:
        """Root of the current tree, or of its first ``size`` leaves."""
        if size is None:
            return self._range.root()
        return root_hash(self._size_arg(size), self.get_node)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """Inclusion proof of leaf ``index`` in the tree of ``size`` (default: current)."""
        return inclusion_proof(index, self._size_arg(size), self.get_node)

    def consistency_proof(self, old: int, new: int | None = None) -> list[bytes]:
        """Consistency proof from size ``old`` to ``new`` (default: current)."""
        return consistency_proof(old, self._size_arg(new), self.get_node)

    def __repr__(self) -> str:
        return f"InMemoryTree(size={self.size})"
