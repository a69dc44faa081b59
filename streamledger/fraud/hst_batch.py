"""Learning a river ``HalfSpaceTrees`` model in bulk, with exactly river's result.

``HalfSpaceTrees.learn_one`` walks every tree from the root to a leaf and adds one to the
``l_mass`` of each node on the path; every ``window_size`` observations it *pivots*: each
node's ``r_mass`` becomes its ``l_mass`` and ``l_mass`` restarts at 0. Scores read only
``r_mass`` (and ``l_mass`` only for a feature missing from the observation), so between two
pivots the order in which the ``l_mass`` counts are added does not matter.

:class:`BatchedHST` therefore keeps the observations of the current window and adds their
counts with numpy (all trees and observations at once) when it must: before a pivot (the
observation that completes the window is learnt by river itself, which pivots), before the
model is read (:meth:`flush`, e.g. before ``dump_hst``) and before scoring or learning an
observation whose features are not the trees' features (river's fallback path reads
``l_mass``). The model's state after :meth:`flush` is the state river's own ``learn_one``
gives, node for node (the counts are integers; comparisons are the same float comparisons).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["BatchedHST"]


class BatchedHST:
    """``learn_one`` / ``score_one`` of a river ``HalfSpaceTrees`` ``model``, with learning
    deferred and done in bulk (see the module docstring). Call :meth:`flush` before reading
    the model's masses or counter."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self._pending: list[tuple[float, ...]] = []
        self._trees: Any = None  # the model.trees list the arrays below were built from
        self._names: tuple[str, ...] = ()
        self._keys: Any = None
        self._feature: Any = None  # (trees, nodes) column of each branch's feature
        self._threshold: Any = None  # (trees, nodes) threshold of each branch
        self._nodes: list[list[Any]] = []  # per tree, its nodes in breadth-first order

    # -- the model's interface ------------------------------------------------------------
    def score_one(self, x: dict[str, float]) -> float:
        if self._pending and not self._fits(x):
            self.flush()
        return self.model.score_one(x)

    def learn_one(self, x: dict[str, float]) -> None:
        model = self.model
        if not model.trees or not self._fits(x):
            self.flush()
            model.learn_one(x)
            return
        if model.counter + len(self._pending) + 1 >= model.window_size:
            self.flush()
            model.learn_one(x)  # completes the window: river pivots the masses
            return
        self._pending.append(tuple([x[name] for name in self._names]))

    def flush(self) -> None:
        """Add the deferred observations' counts to the trees (and to the counter)."""
        pending = self._pending
        if not pending:
            return
        self._pending = []
        model = self.model
        feature, threshold = self._feature, self._threshold
        n_trees, n_nodes = feature.shape
        values = np.array(pending, dtype=np.float64)  # (observations, features)
        rows = np.arange(len(pending))[None, :]
        tree = np.arange(n_trees)[:, None]
        at = np.zeros((n_trees, len(pending)), dtype=np.int64)
        visits = []
        for _ in range(model.height):
            visits.append(at)
            value = values[rows, feature[tree, at]]
            right = np.logical_not(value < threshold[tree, at])  # river: left when value < t
            at = 2 * at + 1 + right
        visits.append(at)
        flat = (np.stack(visits) + tree[None] * n_nodes).ravel()
        counts = np.bincount(flat, minlength=n_trees * n_nodes).reshape(n_trees, n_nodes)
        for nodes, row in zip(self._nodes, counts, strict=True):
            hit = np.flatnonzero(row)
            for i, n in zip(hit.tolist(), row[hit].tolist(), strict=True):
                nodes[i].l_mass += n
        model.counter += len(pending)

    # -- helpers -------------------------------------------------------------------------
    def _fits(self, x: dict[str, float]) -> bool:
        """True when ``x`` has every feature the trees split on (river's plain path)."""
        if self.model.trees is not self._trees:
            self._build()
        return self._keys <= x.keys()

    def _build(self) -> None:
        model = self.model
        self._pending = []
        self._trees = model.trees
        names: set[str] = set()
        nodes = []
        for root in model.trees:
            level, order = [root], []
            while level:
                order += level
                level = [c for n in level if hasattr(n, "feature") for c in n.children]
            nodes.append(order)
            names.update(n.feature for n in order if hasattr(n, "feature"))
        self._names = tuple(sorted(names))
        self._keys = dict.fromkeys(self._names).keys()
        column = {name: i for i, name in enumerate(self._names)}
        size = max((len(order) for order in nodes), default=0)
        feature = np.zeros((len(nodes), size), dtype=np.int64)
        threshold = np.zeros((len(nodes), size), dtype=np.float64)
        for t, order in enumerate(nodes):
            if len(order) != 2 ** (model.height + 1) - 1:
                raise ValueError("not a complete padded tree of the model's height")
            for i, node in enumerate(order):
                if hasattr(node, "feature"):
                    feature[t, i] = column[node.feature]
                    threshold[t, i] = node.threshold
        self._nodes = nodes
        self._feature, self._threshold = feature, threshold
