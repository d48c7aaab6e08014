"""One-row predictions of fitted tree ensembles in microseconds.

scikit-learn's ``predict`` is built for matrices: for a single row its input validation and a
Python-level loop over a few hundred trees cost about a millisecond per model, and a single
recommendation asks four models. The operator and the scaler ask one task at a time, so this
module reads the fitted trees (scikit-learn's own node arrays, nothing re-learned) into flat
arrays once and walks all trees of a model together, one numpy step per tree level.

Batches still go through scikit-learn. Every flattened model is checked against
``model.predict`` on sample rows when it is built; if they disagree (a future scikit-learn
changing its node layout), the flat form is discarded and ``predict`` is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["FlatForest", "flatten"]


@dataclass(frozen=True)
class FlatForest:
    """Every node of every tree, concatenated; ``roots`` index each tree's first node."""

    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    missing_left: np.ndarray
    is_leaf: np.ndarray
    value: np.ndarray
    roots: np.ndarray
    depth: int
    base: float
    scale: float

    def predict_one(self, x: np.ndarray) -> float:
        """The prediction for the single row ``x`` (1-D, float64)."""
        node = self.roots
        for _ in range(self.depth):
            v = x[self.feature[node]]
            go_left = np.where(np.isnan(v), self.missing_left[node], v <= self.threshold[node])
            node = np.where(self.is_leaf[node], node, np.where(go_left, self.left[node], self.right[node]))
        return self.base + self.scale * float(self.value[node].sum())


def _from_hist_gradient_boosting(model: Any) -> FlatForest | None:
    loss = getattr(model, "_loss", None)
    if loss is None or type(loss.link).__name__ != "IdentityLink":
        return None
    trees = [predictors[0] for predictors in model._predictors]
    if not trees or any(len(predictors) != 1 for predictors in model._predictors):
        return None
    parts, roots, offset = [], [], 0
    for tree in trees:
        nodes = tree.nodes
        if nodes["is_categorical"].any():
            return None
        parts.append((nodes, offset))
        roots.append(offset)
        offset += len(nodes)

    def cat(name: str, dtype: Any) -> np.ndarray:
        return np.concatenate([n[name].astype(dtype) for n, _ in parts])

    shift = np.concatenate([np.full(len(n), o, dtype=np.int64) for n, o in parts])
    return FlatForest(
        feature=cat("feature_idx", np.int64),
        threshold=cat("num_threshold", np.float64),
        left=cat("left", np.int64) + shift,
        right=cat("right", np.int64) + shift,
        missing_left=cat("missing_go_to_left", bool),
        is_leaf=cat("is_leaf", bool),
        value=cat("value", np.float64),
        roots=np.asarray(roots, dtype=np.int64),
        depth=int(max(int(n["depth"].max()) for n, _ in parts)) + 1,
        base=float(np.ravel(model._baseline_prediction)[0]),
        scale=1.0,
    )


def _from_forest(model: Any) -> FlatForest | None:
    trees = [estimator.tree_ for estimator in model.estimators_]
    if not trees or trees[0].n_outputs != 1:
        return None
    feature, threshold, left, right, missing, leaf, value, roots = [], [], [], [], [], [], [], []
    offset, depth = 0, 0
    for tree in trees:
        is_leaf = tree.children_left < 0
        roots.append(offset)
        feature.append(np.where(is_leaf, 0, tree.feature).astype(np.int64))
        threshold.append(tree.threshold.astype(np.float64))
        left.append(np.where(is_leaf, 0, tree.children_left).astype(np.int64) + offset)
        right.append(np.where(is_leaf, 0, tree.children_right).astype(np.int64) + offset)
        missing.append(np.asarray(tree.missing_go_to_left, dtype=bool))
        leaf.append(is_leaf)
        value.append(tree.value[:, 0, 0].astype(np.float64))
        depth = max(depth, int(tree.max_depth))
        offset += tree.node_count
    return FlatForest(
        feature=np.concatenate(feature),
        threshold=np.concatenate(threshold),
        left=np.concatenate(left),
        right=np.concatenate(right),
        missing_left=np.concatenate(missing),
        is_leaf=np.concatenate(leaf),
        value=np.concatenate(value),
        roots=np.asarray(roots, dtype=np.int64),
        depth=depth + 1,
        base=0.0,
        scale=1.0 / len(trees),
    )


def flatten(model: Any, sample: np.ndarray | None = None) -> FlatForest | None:
    """A :class:`FlatForest` for a fitted HistGradientBoostingRegressor or
    RandomForestRegressor, or None for anything else (or if it would not agree with
    ``model.predict`` on ``sample``)."""
    name = type(model).__name__
    try:
        if name == "HistGradientBoostingRegressor":
            flat = _from_hist_gradient_boosting(model)
        elif name == "RandomForestRegressor":
            flat = _from_forest(model)
        else:
            return None
    except (AttributeError, KeyError, ValueError, TypeError, IndexError):
        return None
    if flat is None or sample is None or not len(sample):
        return flat
    rows = np.asarray(sample, dtype=np.float64)
    expected = model.predict(rows)
    got = np.array([flat.predict_one(row) for row in rows])
    if not np.allclose(got, expected, rtol=1e-9, atol=1e-9):
        return None
    return flat
