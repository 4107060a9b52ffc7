"""Decision forests as plain arrays, and prediction by walking those arrays.

scikit-learn and scikit-survival trees keep their structure in ``tree_``
(``children_left``, ``children_right``, ``feature``, ``threshold``, ``value``). We copy
those arrays out of a fitted forest, concatenate the trees, keep the values of the
leaves only, and predict by descending all trees at once with numpy. Like
scikit-learn we compare ``float32(x) <= threshold``; the inputs never hold NaN (the
preprocessor imputes first).
"""

from __future__ import annotations

import numpy as np

from napari_hecktor.errors import HecktorInputError


def forest_arrays(estimators, leaf_value) -> dict[str, np.ndarray]:
    """Concatenate fitted trees into flat arrays.

    ``leaf_value(tree_)`` returns the per-node value matrix ``(n_nodes, k)`` of one tree;
    only the rows of leaves are kept (``leaf_row`` maps a node to its row, -1 inside).
    """
    lefts, rights, feats, thrs, roots, leaf_rows, values = [], [], [], [], [], [], []
    offset = 0
    n_leaves = 0
    for est in estimators:
        t = est.tree_
        left = t.children_left.astype(np.int64)
        right = t.children_right.astype(np.int64)
        is_leaf = left == -1
        lefts.append(np.where(is_leaf, -1, left + offset))
        rights.append(np.where(is_leaf, -1, right + offset))
        feats.append(np.where(is_leaf, 0, t.feature).astype(np.int64))
        thrs.append(np.asarray(t.threshold, dtype=np.float64))
        rows = np.full(t.node_count, -1, dtype=np.int64)
        rows[is_leaf] = np.arange(int(is_leaf.sum())) + n_leaves
        leaf_rows.append(rows)
        values.append(np.asarray(leaf_value(t), dtype=np.float64)[is_leaf])
        roots.append(offset)
        offset += t.node_count
        n_leaves += int(is_leaf.sum())
    return {
        "left": np.concatenate(lefts),
        "right": np.concatenate(rights),
        "feature": np.concatenate(feats),
        "threshold": np.concatenate(thrs),
        "root": np.asarray(roots, dtype=np.int64),
        "leaf_row": np.concatenate(leaf_rows),
        "leaf_value": np.concatenate(values, axis=0),
    }


def forest_leaves(arrays: dict[str, np.ndarray], X: np.ndarray) -> np.ndarray:
    """Leaf-value row reached in every tree: ``(n_samples, n_trees)`` int array."""
    X = np.asarray(X, dtype=np.float64)
    if np.isnan(X).any():
        raise HecktorInputError("The forest was given missing values; impute them first.")
    x32 = X.astype(np.float32).astype(np.float64)
    n = X.shape[0]
    nodes = np.broadcast_to(arrays["root"][None, :], (n, arrays["root"].size)).copy()
    rows = np.arange(n)[:, None]
    left, right = arrays["left"], arrays["right"]
    feature, threshold = arrays["feature"], arrays["threshold"]
    for _ in range(10_000):
        inner = left[nodes] != -1
        if not inner.any():
            break
        go_left = x32[rows, feature[nodes]] <= threshold[nodes]
        nodes = np.where(inner, np.where(go_left, left[nodes], right[nodes]), nodes)
    return arrays["leaf_row"][nodes]


def forest_mean(arrays: dict[str, np.ndarray], X: np.ndarray) -> np.ndarray:
    """Mean over trees of the leaf values: ``(n_samples, k)``."""
    leaves = forest_leaves(arrays, X)
    vals = arrays["leaf_value"]
    total = np.zeros((leaves.shape[0], vals.shape[1]))
    for t in range(leaves.shape[1]):  # tree by tree, in order, as scikit-learn sums
        total += vals[leaves[:, t]]
    return total / leaves.shape[1]
