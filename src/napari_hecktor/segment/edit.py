"""Mask edits for hand correction, as (indices, values) changes (Qt-free).

Each function returns the voxels to change as a ``(indices, values)`` pair instead of
changing the array, so the caller decides how to apply it: the napari widgets pass it
to ``Labels.data_setitem`` (one undo step per edit), scripts assign it directly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from ..metrics import evaluate_case
from .components import CONNECTIVITY_26

Change = tuple[tuple[np.ndarray, np.ndarray, np.ndarray], np.ndarray]

#: Values of the comparison overlay (prediction vs ground truth).
TP, FP, FN = 1, 2, 3


def apply(labels: np.ndarray, change: Change) -> None:
    """Apply a change in place (for scripts and tests; napari uses ``data_setitem``)."""
    indices, values = change
    labels[indices] = values


def _change(mask: np.ndarray, value: int | np.ndarray) -> Change:
    indices = np.nonzero(mask)
    values = np.broadcast_to(np.asarray(value, dtype=np.uint8), indices[0].shape).copy()
    return indices, values


def component_at(labels: np.ndarray, index_zyx: Sequence[int]) -> np.ndarray:
    """Boolean mask of the 26-connected component (same label) containing ``index_zyx``."""
    value = labels[tuple(index_zyx)]
    if value == 0:
        return np.zeros(labels.shape, bool)
    components, _ = ndimage.label(labels == value, structure=CONNECTIVITY_26)
    return components == components[tuple(index_zyx)]


def delete_component(labels: np.ndarray, index_zyx: Sequence[int]) -> Change:
    """Erase the lesion containing ``index_zyx`` (e.g. a false positive)."""
    return _change(component_at(labels, index_zyx), 0)


def relabel_component(labels: np.ndarray, index_zyx: Sequence[int], new_label: int) -> Change:
    """Give the lesion containing ``index_zyx`` another label (GTVp <-> GTVn)."""
    return _change(component_at(labels, index_zyx), new_label)


def fill_holes(labels: np.ndarray) -> Change:
    """Fill enclosed background inside each label in 3D (GTVp first)."""
    out = labels.copy()
    for value in (1, 2):
        mask = out == value
        if mask.any():
            out[ndimage.binary_fill_holes(mask) & (out == 0)] = value
    changed = out != labels
    return np.nonzero(changed), out[changed]


def sphere(
    shape: Sequence[int],
    center_zyx: Sequence[float],
    radius_mm: float,
    spacing_zyx: Sequence[float],
) -> np.ndarray:
    """Boolean ball of ``radius_mm`` (physical, anisotropic spacing) around a voxel."""
    center = np.asarray(center_zyx, float)
    spacing = np.asarray(spacing_zyx, float)
    reach = np.ceil(radius_mm / spacing).astype(int)
    lo = np.maximum(np.floor(center).astype(int) - reach, 0)
    hi = np.minimum(np.ceil(center).astype(int) + reach + 1, shape)
    grids = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
    dist2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, center, spacing, strict=True))
    mask = np.zeros(shape, bool)
    mask[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = dist2 <= radius_mm**2
    return mask


def paint_sphere(
    labels: np.ndarray,
    center_zyx: Sequence[float],
    radius_mm: float,
    spacing_zyx: Sequence[float],
    value: int,
    *,
    preserve_other: bool = True,
) -> Change:
    """Paint (``value`` 1/2) or erase (0) a 3D ball of ``radius_mm`` around a voxel.

    With ``preserve_other`` the brush does not overwrite the other lesion label.
    """
    mask = sphere(labels.shape, center_zyx, radius_mm, spacing_zyx)
    if preserve_other and value != 0:
        mask &= (labels == 0) | (labels == value)
    mask &= labels != value
    return _change(mask, value)


def brush_size_pixels(radius_mm: float, spacing_zyx: Sequence[float]) -> int:
    """napari's 2D brush diameter (in-plane pixels) for a brush of ``radius_mm``."""
    in_plane = float(min(spacing_zyx[1], spacing_zyx[2]))
    return max(1, int(round(2 * radius_mm / in_plane)))


def comparison_overlay(prediction: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """uint8 overlay: 1 true positive, 2 false positive, 3 false negative (any lesion label)."""
    pred, gt = prediction > 0, truth > 0
    overlay = np.zeros(prediction.shape, np.uint8)
    overlay[pred & gt] = TP
    overlay[pred & ~gt] = FP
    overlay[~pred & gt] = FN
    return overlay


def live_metrics(
    prediction: np.ndarray, truth: np.ndarray, spacing_zyx: Sequence[float]
) -> dict[str, float]:
    """Dice and HD95 per label and GTVn lesion F1 of a prediction against ground truth."""
    case = evaluate_case(prediction, truth, tuple(spacing_zyx))
    tp, fp, fn = case["TP_GTVn"], case["FP_GTVn"], case["FN_GTVn"]
    denom = 2 * tp + fp + fn
    return {
        "Dice_GTVp": case["Dice_GTVp"],
        "Dice_GTVn": case["Dice_GTVn"],
        "HD95_GTVp": case["HD95_GTVp"],
        "HD95_GTVn": case["HD95_GTVn"],
        "F1_GTVn": (2 * tp / denom) if denom else float("nan"),
        "TP_GTVn": tp,
        "FP_GTVn": fp,
        "FN_GTVn": fn,
    }
