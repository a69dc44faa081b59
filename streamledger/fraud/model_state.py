"""Data-only state of the anomaly model (river ``HalfSpaceTrees``): JSON, never pickle.

The pipeline stores its state in a Kafka topic (``<alerts>.state``). Anything loaded from
there must be *data*: a pickle would let whoever can write that topic run code in the
pipeline. :func:`dump_hst` writes the model's parameters and, per tree, every node's split
(feature, threshold) and masses (``l_mass``, ``r_mass``) in depth-first order;
:func:`load_hst` checks every field and rebuilds an equivalent model, which scores and goes on
learning exactly like the original (same trees, same masses, same window counter).

Format (UTF-8 JSON object, compact)::

    {"format": "streamledger.fraud.hst", "version": 1,
     "params": {"n_trees": 10, "height": 6, "window_size": 250, "seed": 42,
                "limits": {"z": [0.0, 1.0], ...}},
     "counter": 17,              # observations in the current window (0 <= counter < window)
     "first_window": false,      # true until the first window is complete (scores are 0)
     "features": ["new_asset", "price_dev", ...],   # names the splits refer to by index
     "trees": [[[f, threshold, l_mass, r_mass], ..., [l_mass, r_mass], ...], ...]}

``trees`` is empty before the first ``learn_one`` (river builds the trees then, from the
seed). A branch node is ``[feature index, threshold, l_mass, r_mass]``, a leaf ``[l_mass,
r_mass]``; nodes are listed root first, then the left subtree, then the right one, and a tree
of height ``h`` has exactly ``2 ** (h + 1) - 1`` nodes (branches above depth ``h``, leaves at
it). The random generator is not stored: river uses it only to build the trees.

The codec reads river's model structure (attributes ``trees``, ``counter``,
``_first_window``, ``limits``, node classes ``PaddedBranch``/``PaddedLeaf``); pyproject pins
the river versions it was tested with, and the round-trip test fails on a change.
"""

from __future__ import annotations

import json
import math
from typing import Any

from streamledger.errors import FormatError

__all__ = ["FORMAT", "VERSION", "dump_hst", "load_hst"]

FORMAT = "streamledger.fraud.hst"
VERSION = 1
#: Limits that keep a hostile document from making us allocate without bound.
MAX_TREES = 256
MAX_HEIGHT = 16
MAX_FEATURES = 256
MAX_WINDOW = 10_000_000


_CACHE_ATTR = "_streamledger_dump_layout"


def dump_hst(model: Any) -> bytes:
    """The model's state as compact JSON bytes (see the module docstring).

    The trees' shape, features and thresholds never change once river built them (learning
    only moves masses), so their JSON is encoded once and kept on the model; each dump then
    only writes the masses. The bytes are those of a plain encoding of the whole document
    (tested against one in tests/fraud/test_hst_batch.py)."""
    trees = model.trees
    layout = getattr(model, _CACHE_ATTR, None)
    if layout is None or layout[0] is not trees or layout[1] != [id(t) for t in trees]:
        layout = _layout(model)
        setattr(model, _CACHE_ATTR, layout)
    _, _, features, per_tree = layout
    doc = _header(model, features)
    parts = []
    for pieces in per_tree:
        if all(type(n.l_mass) is int and type(n.r_mass) is int for n, _ in pieces):
            # integer masses (always, from river's and BatchedHST's learning): as JSON
            nodes = [f"{pre}{node.l_mass},{node.r_mass}]" for node, pre in pieces]
        else:
            nodes = [pre + _num(n.l_mass) + "," + _num(n.r_mass) + "]" for n, pre in pieces]
        parts.append("[" + ",".join(nodes) + "]")
    text = json.dumps(doc, separators=(",", ":"), allow_nan=False)
    return (text[:-1] + ',"trees":[' + ",".join(parts) + "]}").encode("utf-8")


def _num(value: Any) -> str:
    if type(value) is int:
        return int.__repr__(value)
    return json.dumps(value, allow_nan=False)


def _header(model: Any, features: list[str]) -> dict[str, Any]:
    # Every field of the document but "trees" (which comes last), in the same order.
    return {
        "format": FORMAT,
        "version": VERSION,
        "params": {
            "n_trees": model.n_trees,
            "height": model.height,
            "window_size": model.window_size,
            "seed": model.seed,
            "limits": {str(k): [float(v[0]), float(v[1])] for k, v in model.limits.items()},
        },
        "counter": model.counter,
        "first_window": bool(model._first_window),
        "features": features,
    }


def _layout(model: Any) -> tuple[Any, list[int], list[str], list[list[tuple[Any, str]]]]:
    """Per tree, each node (depth first) with the JSON text before its masses."""
    features: list[str] = []
    index: dict[str, int] = {}
    per_tree = []
    for root in model.trees:
        pieces = []
        for node in root.iter_dfs():
            if hasattr(node, "feature"):
                name = node.feature
                if not isinstance(name, str):
                    raise TypeError(f"feature names must be strings, got {name!r}")
                if name not in index:
                    index[name] = len(features)
                    features.append(name)
                threshold = json.dumps(float(node.threshold), allow_nan=False)
                pieces.append((node, f"[{index[name]},{threshold},"))
            else:
                pieces.append((node, "["))
        per_tree.append(pieces)
    return model.trees, [id(t) for t in model.trees], features, per_tree


def load_hst(data: bytes | bytearray | memoryview) -> Any:
    """Rebuild a model from :func:`dump_hst` bytes. Raises :class:`FormatError` naming the
    problem for anything else (pickles of older versions included); never runs code from
    the data."""
    raw = bytes(data)
    if raw[:1] == b"\x80" or raw[:2] == b"gA":  # a pickle (protocol 2+), or its base64
        raise FormatError(
            "anomaly model state is a pickle (written by an older streamledger); pickles are "
            "not loaded because they can run code: delete the key __model__ from the state "
            "(or use a new group) and the model starts afresh"
        )
    try:
        doc = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise FormatError(f"anomaly model state is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise FormatError(f"anomaly model state must be a JSON object, got {_kind(doc)}")
    if doc.get("format") != FORMAT:
        raise FormatError(
            f"anomaly model state has format {doc.get('format')!r}, expected {FORMAT!r}"
        )
    if doc.get("version") != VERSION:
        raise FormatError(
            f"anomaly model state has version {doc.get('version')!r}; this code reads "
            f"version {VERSION}"
        )
    params = _field(doc, "params", dict)
    n_trees = _int(params, "n_trees", 1, MAX_TREES)
    height = _int(params, "height", 1, MAX_HEIGHT)
    window = _int(params, "window_size", 1, MAX_WINDOW)
    seed = params.get("seed")
    if seed is not None and (type(seed) is not int):
        raise FormatError(
            f"anomaly model state: params.seed must be an integer or null, got {seed!r}"
        )
    limits_doc = _field(params, "limits", dict)
    if len(limits_doc) > MAX_FEATURES:
        raise FormatError(f"anomaly model state: more than {MAX_FEATURES} feature limits")
    limits: dict[str, tuple[float, float]] = {}
    for name, pair in limits_doc.items():
        if not (
            isinstance(pair, list)
            and len(pair) == 2
            and all(_is_number(v) for v in pair)
            and pair[0] < pair[1]
        ):
            raise FormatError(
                f"anomaly model state: limits of feature {name!r} must be [low, high] with "
                f"low < high, got {pair!r}"
            )
        limits[name] = (float(pair[0]), float(pair[1]))
    counter = _int(doc, "counter", 0, window - 1)
    first_window = doc.get("first_window")
    if not isinstance(first_window, bool):
        raise FormatError("anomaly model state: first_window must be true or false")
    features = _field(doc, "features", list)
    if len(features) > MAX_FEATURES or not all(isinstance(f, str) for f in features):
        raise FormatError(
            f"anomaly model state: features must be a list of at most {MAX_FEATURES} strings"
        )
    trees_doc = _field(doc, "trees", list)
    if trees_doc and len(trees_doc) != n_trees:
        raise FormatError(
            f"anomaly model state has {len(trees_doc)} trees, params say n_trees={n_trees}"
        )
    if not trees_doc and not first_window:
        raise FormatError("anomaly model state has no trees but says its first window is over")

    from river.anomaly import HalfSpaceTrees

    model = HalfSpaceTrees(
        n_trees=n_trees, height=height, window_size=window, limits=limits, seed=seed
    )
    if trees_doc:
        model.trees = [
            _build_tree(nodes, i, height, features, window) for i, nodes in enumerate(trees_doc)
        ]
        if hasattr(model, "_tree_nodes"):  # river >= 0.23 keeps a flat node list per tree
            model._tree_nodes = [list(t.iter_dfs()) for t in model.trees]
    model.counter = counter
    model._first_window = first_window
    return model


def _build_tree(nodes: Any, index: int, height: int, features: list[str], window: int) -> Any:
    from river.tree.padded import PaddedBranch, PaddedLeaf

    expected = 2 ** (height + 1) - 1
    if not isinstance(nodes, list) or len(nodes) != expected:
        got = len(nodes) if isinstance(nodes, list) else _kind(nodes)
        raise FormatError(
            f"anomaly model state: tree {index} must list {expected} nodes (height {height}), "
            f"got {got}"
        )
    pos = 0
    # masses never exceed the window (r_mass) or the observations of one window (l_mass)
    top = window

    def mass(value: Any, where: str) -> int:
        if type(value) is not int or not 0 <= value <= top:
            raise FormatError(
                f"anomaly model state: tree {index} node {where}: masses must be integers in "
                f"[0, {top}], got {value!r}"
            )
        return value

    def build(depth: int) -> Any:
        nonlocal pos
        node = nodes[pos]
        where = str(pos)
        pos += 1
        if depth == height:
            if not isinstance(node, list) or len(node) != 2:
                raise FormatError(
                    f"anomaly model state: tree {index} node {where} at depth {depth} must be "
                    f"a leaf [l_mass, r_mass], got {node!r}"
                )
            return PaddedLeaf(l_mass=mass(node[0], where), r_mass=mass(node[1], where))
        if not isinstance(node, list) or len(node) != 4:
            raise FormatError(
                f"anomaly model state: tree {index} node {where} at depth {depth} must be a "
                f"branch [feature, threshold, l_mass, r_mass], got {node!r}"
            )
        f, threshold = node[0], node[1]
        if type(f) is not int or not 0 <= f < len(features):
            raise FormatError(
                f"anomaly model state: tree {index} node {where}: feature index {f!r} is not "
                f"one of the {len(features)} features"
            )
        if not _is_number(threshold):
            raise FormatError(
                f"anomaly model state: tree {index} node {where}: threshold must be a finite "
                f"number, got {threshold!r}"
            )
        l_mass, r_mass = mass(node[2], where), mass(node[3], where)
        left = build(depth + 1)
        right = build(depth + 1)
        return PaddedBranch(
            left=left,
            right=right,
            feature=features[f],
            threshold=float(threshold),
            l_mass=l_mass,
            r_mass=r_mass,
        )

    return build(0)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string"}.get(type(value), repr(value))


def _is_number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _field(doc: dict[str, Any], name: str, kind: type) -> Any:
    value = doc.get(name)
    if not isinstance(value, kind):
        raise FormatError(
            f"anomaly model state: {name} must be {'an object' if kind is dict else 'a list'}, "
            f"got {_kind(value) if value is not None else 'nothing'}"
        )
    return value


def _int(doc: dict[str, Any], name: str, low: int, high: int) -> int:
    value = doc.get(name)
    if type(value) is not int or not low <= value <= high:
        raise FormatError(
            f"anomaly model state: {name} must be an integer in [{low}, {high}], got {value!r}"
        )
    return value
