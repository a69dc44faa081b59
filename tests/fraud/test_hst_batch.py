from __future__ import annotations

import json
import random

import pytest

pytest.importorskip("river")

from river.anomaly import HalfSpaceTrees  # noqa: E402

from streamledger.fraud.hst_batch import BatchedHST  # noqa: E402
from streamledger.fraud.model_state import dump_hst, load_hst  # noqa: E402


def _stream(n: int, seed: int = 1):
    rng = random.Random(seed)
    for i in range(n):
        x = {
            "z": min(1.0, max(0.0, rng.gauss(0.2, 0.2))),
            "size": rng.random(),
            "price_dev": rng.choice([0.0, rng.random()]),
            "new_asset": float(rng.random() < 0.1),
            "withdrawal": float(rng.random() < 0.2),
        }
        if i % 397 == 5:
            x["price_dev"] = float("nan")  # compares false both ways, like in river
        if i % 499 == 7:
            del x["z"]  # a missing feature: river's fallback reads l_mass
        yield x


def test_batched_learning_is_rivers_learning_exactly() -> None:
    def model() -> HalfSpaceTrees:
        return HalfSpaceTrees(n_trees=10, height=6, window_size=50, seed=42)

    plain, batched = model(), BatchedHST(model())
    for i, x in enumerate(_stream(3_000)):
        if i % 3 == 0:
            assert batched.score_one(x) == plain.score_one(x)
        plain.learn_one(x)
        batched.learn_one(x)
        if i % 177 == 0:
            batched.flush()
            assert dump_hst(batched.model) == dump_hst(plain)
        if i == 1_500:  # a model restored from its state goes on the same way
            batched.flush()
            batched = BatchedHST(load_hst(dump_hst(batched.model)))
    batched.flush()
    assert dump_hst(batched.model) == dump_hst(plain)
    assert batched.model.counter == plain.counter


def _dump_hst_plain(model: HalfSpaceTrees) -> bytes:
    """The whole document encoded directly (no cached layout): the reference dump_hst's
    bytes are tested against."""
    from streamledger.fraud.model_state import _header

    features: list[str] = []
    trees = []
    for root in model.trees:
        nodes = []
        for node in root.iter_dfs():
            if hasattr(node, "feature"):
                if node.feature not in features:
                    features.append(node.feature)
                where = features.index(node.feature)
                nodes.append([where, float(node.threshold), node.l_mass, node.r_mass])
            else:
                nodes.append([node.l_mass, node.r_mass])
        trees.append(nodes)
    doc = {**_header(model, features), "trees": trees}
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode("utf-8")


def test_cached_dump_gives_the_plain_dumps_bytes() -> None:
    model = HalfSpaceTrees(n_trees=4, height=5, window_size=40, seed=3)
    assert dump_hst(model) == _dump_hst_plain(model)  # no trees yet
    for i, x in enumerate(_stream(500, seed=5)):
        model.learn_one(x)
        if i % 37 == 0:  # before and after pivots: masses change, the layout is kept
            assert dump_hst(model) == _dump_hst_plain(model)
        if i == 250:  # a restored model has other node objects: the layout is rebuilt
            model = load_hst(dump_hst(model))
            assert dump_hst(model) == _dump_hst_plain(model)
    model.trees[0].l_mass = 7.5  # a float mass is written as JSON writes it
    assert dump_hst(model) == _dump_hst_plain(model)
