"""Segmentation metrics as the HECKTOR organisers compute them (pure numpy/scipy).

Masks are boolean (z, y, x) arrays; label maps use 0 background, 1 GTVp, 2 GTVn.
Spacings are given in (z, y, x) order, in mm (SimpleITK's ``GetSpacing()[::-1]``).

Conventions, one place for all of them:

* **Dice** per case: ``2|P & G| / (|P| + |G|)``. Both masks empty: NaN, meaning "not
  applicable" (nothing to find and nothing found); NaNs are left out of means
  (``np.nanmean``). One mask empty: 0.0.
* **DSCagg** (HECKTOR 2022): ``2 sum_i |P_i & G_i| / sum_i (|P_i| + |G_i|)`` over all cases;
  accumulate :class:`DiceCounts` and call :func:`dsc_agg`. Empty cases count in the
  denominator through the other mask, so a false-positive-only case lowers it. NaN only if
  every mask of every case is empty.
* **HD95** in mm with anisotropic spacing: surface voxels of each mask are the mask minus
  its binary erosion by the 6-connected 3D structuring element (a voxel is on the surface
  when one of its 6 face neighbours, or the image border, is background). For each surface
  voxel of one mask the Euclidean distance (mm) to the nearest surface voxel of the other
  comes from ``scipy.ndimage.distance_transform_edt(~surface_other, sampling=spacing)``;
  the 95th percentile (``np.percentile``, linear interpolation) is taken in each
  direction and HD95 is the larger of the two. Both masks empty: NaN ("not applicable").
  Exactly one mask empty: NaN as well (the distance is undefined); :func:`mask_status`
  tells these cases apart (``"pred_empty"`` / ``"truth_empty"``), :func:`evaluate_case`
  reports it and the folder evaluation lists such cases, so they are excluded from HD95
  summaries *visibly* rather than given an arbitrary large value. (Missed or spurious
  structures are already penalised by Dice, DSCagg and F1agg.)
* **GTVn detection** (HECKTOR 2025): lesions are the 26-connected components of the
  predicted and of the true GTVn. Predicted and true lesions are matched one-to-one: among
  all pairs with IoU strictly greater than the threshold (0.3), the Hungarian algorithm
  (``scipy.optimize.linear_sum_assignment``) picks the set of disjoint pairs with the
  largest total IoU. Matched predicted lesions are true positives, unmatched predicted
  lesions false positives, unmatched true lesions false negatives (so one large prediction
  that covers two true nodes gives at most 1 TP and 1 FN). An IoU of exactly 0.3 is not a
  match. ``F1agg = 2 TP / (2 TP + FP + FN)`` with TP, FP and FN summed over all cases
  (:func:`f1_agg`; NaN when there is no lesion at all in the whole set).

Outcome metrics (C-index, AUC, balanced accuracy) will live in this module too.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from .errors import HecktorInputError

#: Label values of a HECKTOR mask, and their names.
LABELS: dict[int, str] = {1: "GTVp", 2: "GTVn"}

#: IoU a predicted lesion must exceed to count as a detection (HECKTOR 2025).
LESION_IOU_THRESHOLD = 0.3


# --------------------------------------------------------------------------- overlap


def _as_masks(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred).astype(bool, copy=False)
    truth = np.asarray(truth).astype(bool, copy=False)
    if pred.shape != truth.shape:
        raise HecktorInputError(
            f"prediction and ground truth differ in shape: {pred.shape} vs {truth.shape}"
        )
    return pred, truth


@dataclass(frozen=True)
class DiceCounts:
    """Voxel counts of one case and one label: the terms of Dice and DSCagg."""

    tp: int
    n_pred: int
    n_truth: int

    @classmethod
    def from_masks(cls, pred: np.ndarray, truth: np.ndarray) -> DiceCounts:
        """Counts from two boolean masks of the same shape."""
        pred, truth = _as_masks(pred, truth)
        return cls(
            tp=int(np.count_nonzero(pred & truth)),
            n_pred=int(np.count_nonzero(pred)),
            n_truth=int(np.count_nonzero(truth)),
        )

    @property
    def dice(self) -> float:
        """Dice of this case: NaN when both masks are empty, 0.0 when one is."""
        denominator = self.n_pred + self.n_truth
        return 2.0 * self.tp / denominator if denominator else float("nan")


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice similarity coefficient of two boolean masks.

    Both empty: NaN ("not applicable", excluded from means); exactly one empty: 0.0.
    """
    return DiceCounts.from_masks(pred, truth).dice


def dsc_agg(counts: Iterable[DiceCounts]) -> float:
    """HECKTOR 2022 aggregated Dice: ``2 sum TP / sum (|P| + |G|)`` over cases (NaN if 0/0)."""
    tp = denominator = 0
    for c in counts:
        tp += c.tp
        denominator += c.n_pred + c.n_truth
    return 2.0 * tp / denominator if denominator else float("nan")


def aggregate_dice(cases: Iterable[tuple[np.ndarray, np.ndarray]]) -> float:
    """DSCagg of ``(pred, truth)`` boolean mask pairs; see :func:`dsc_agg`."""
    return dsc_agg(DiceCounts.from_masks(p, t) for p, t in cases)


# --------------------------------------------------------------------------- distances


def mask_status(pred: np.ndarray, truth: np.ndarray) -> str:
    """``"ok"``, ``"both_empty"``, ``"pred_empty"`` or ``"truth_empty"``: why HD95 may be NaN."""
    has_pred, has_truth = bool(np.any(pred)), bool(np.any(truth))
    if has_pred and has_truth:
        return "ok"
    if not has_pred and not has_truth:
        return "both_empty"
    return "pred_empty" if not has_pred else "truth_empty"


def _check_spacing(spacing_zyx: Sequence[float], ndim: int) -> np.ndarray:
    spacing = np.asarray(spacing_zyx, dtype=float).reshape(-1)
    if spacing.size != ndim or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise HecktorInputError(
            f"voxel spacing must be {ndim} positive numbers (z, y, x) in mm, got {spacing_zyx}"
        )
    return spacing


def _bounding_box(mask: np.ndarray, pad: int = 0) -> tuple[slice, ...]:
    """Slices of the smallest box holding ``mask`` (non-empty), grown by ``pad`` within the grid."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        box.append(slice(max(idx[0] - pad, 0), min(idx[-1] + 1 + pad, mask.shape[axis])))
    return tuple(box)


def surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels: ``mask`` minus its erosion by the 6-connected structuring element.

    Voxels on the image border count as surface (the outside is background).
    """
    mask = np.asarray(mask, dtype=bool)
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def surface_distances(
    pred: np.ndarray, truth: np.ndarray, spacing_zyx: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each surface voxel of ``pred`` to the surface of ``truth``, and back.

    Both masks must be non-empty. The work is done on the bounding box of the two masks
    (plus one background voxel where the image allows), which gives the same distances as
    the full grid since every surface voxel lies inside it.
    """
    pred, truth = _as_masks(pred, truth)
    spacing = _check_spacing(spacing_zyx, pred.ndim)
    if not pred.any() or not truth.any():
        raise HecktorInputError("surface distances need two non-empty masks")
    box_t = _bounding_box(pred | truth, pad=1)
    surf_pred, surf_truth = surface(pred[box_t]), surface(truth[box_t])
    to_truth = ndimage.distance_transform_edt(~surf_truth, sampling=spacing)
    to_pred = ndimage.distance_transform_edt(~surf_pred, sampling=spacing)
    return to_truth[surf_pred], to_pred[surf_truth]


def hd95(pred: np.ndarray, truth: np.ndarray, spacing_zyx: Sequence[float]) -> float:
    """95th-percentile Hausdorff distance in mm (max of the two directions).

    Both masks empty, or exactly one empty: NaN (use :func:`mask_status` to tell which).
    """
    if mask_status(pred, truth) != "ok":
        _as_masks(pred, truth)  # still reject a shape mismatch
        _check_spacing(spacing_zyx, np.ndim(pred))
        return float("nan")
    d_pred, d_truth = surface_distances(pred, truth, spacing_zyx)
    return float(max(np.percentile(d_pred, 95), np.percentile(d_truth, 95)))


# --------------------------------------------------------------------------- lesions


@dataclass(frozen=True)
class LesionMatch:
    """Lesion detection of one case: counts and the matched ``(pred id, truth id, IoU)``.

    Ids are the component labels of ``scipy.ndimage.label`` (26-connectivity), from 1.
    """

    tp: int
    fp: int
    fn: int
    pairs: tuple[tuple[int, int, float], ...] = ()

    @property
    def f1(self) -> float:
        """F1 of this case alone (NaN when it has no lesion at all)."""
        return f1_agg([self])


def iou_matrix(
    pred_components: np.ndarray, n_pred: int, truth_components: np.ndarray, n_truth: int
) -> np.ndarray:
    """IoU of every (predicted, true) component pair, shape ``(n_pred, n_truth)``."""
    p = pred_components.ravel()
    t = truth_components.ravel()
    size_p = np.bincount(p, minlength=n_pred + 1)[1:]
    size_t = np.bincount(t, minlength=n_truth + 1)[1:]
    both = (p > 0) & (t > 0)
    pair = (p[both].astype(np.int64) - 1) * n_truth + (t[both].astype(np.int64) - 1)
    inter = np.bincount(pair, minlength=n_pred * n_truth).reshape(n_pred, n_truth)
    union = size_p[:, None] + size_t[None, :] - inter
    return inter / np.maximum(union, 1)


def match_lesions(
    pred: np.ndarray, truth: np.ndarray, iou_threshold: float = LESION_IOU_THRESHOLD
) -> LesionMatch:
    """One-to-one matching of 26-connected lesions of two boolean masks.

    A pair is eligible when its IoU is strictly above ``iou_threshold``; among eligible
    pairs the Hungarian algorithm picks disjoint pairs of maximum total IoU. Matched
    predictions are TP, other predictions FP, other true lesions FN.
    """
    pred, truth = _as_masks(pred, truth)
    if not pred.any() and not truth.any():
        return LesionMatch(tp=0, fp=0, fn=0)
    box = _bounding_box(pred | truth)  # components never cross it: same result, faster
    pred, truth = pred[box], truth[box]
    structure = ndimage.generate_binary_structure(pred.ndim, pred.ndim)
    pred_cc, n_pred = ndimage.label(pred, structure=structure)
    truth_cc, n_truth = ndimage.label(truth, structure=structure)
    if n_pred == 0 or n_truth == 0:
        return LesionMatch(tp=0, fp=n_pred, fn=n_truth)
    iou = iou_matrix(pred_cc, n_pred, truth_cc, n_truth)
    weight = np.where(iou > iou_threshold, iou, 0.0)
    rows, cols = linear_sum_assignment(weight, maximize=True)
    pairs = tuple(
        (int(r) + 1, int(c) + 1, float(iou[r, c]))
        for r, c in zip(rows, cols, strict=True)
        if iou[r, c] > iou_threshold
    )
    tp = len(pairs)
    return LesionMatch(tp=tp, fp=n_pred - tp, fn=n_truth - tp, pairs=pairs)


def f1_agg(matches: Iterable[LesionMatch]) -> float:
    """HECKTOR 2025 aggregated F1: ``2TP / (2TP + FP + FN)`` summed over cases (NaN if 0/0)."""
    tp = fp = fn = 0
    for m in matches:
        tp, fp, fn = tp + m.tp, fp + m.fp, fn + m.fn
    denominator = 2 * tp + fp + fn
    return 2.0 * tp / denominator if denominator else float("nan")


# --------------------------------------------------------------------------- one case


def check_label_values(labels: np.ndarray, *, source: str = "label map") -> None:
    """Raise :class:`HecktorInputError` when ``labels`` holds values other than 0, 1, 2."""
    labels = np.asarray(labels)
    if labels.dtype.kind == "u":
        bad = labels > 2
    elif labels.dtype.kind in "ib":
        bad = (labels < 0) | (labels > 2)
    else:
        bad = ~np.isin(labels, (0, 1, 2))
    if bad.any():
        shown = ", ".join(f"{v:g}" for v in np.unique(labels[bad])[:5].tolist())
        raise HecktorInputError(
            f"{source} has values outside 0 (background), 1 (GTVp), 2 (GTVn): {shown}"
        )


def evaluate_case(
    pred_labels: np.ndarray, truth_labels: np.ndarray, spacing_zyx: Sequence[float]
) -> dict[str, Any]:
    """All HECKTOR segmentation metrics of one case (label maps 0/1/2 on the same grid).

    Keys: ``Dice_GTVp``, ``Dice_GTVn``, ``HD95_GTVp``, ``HD95_GTVn`` (mm), ``TP_GTVn``,
    ``FP_GTVn``, ``FN_GTVn``; for aggregation ``counts_GTVp`` / ``counts_GTVn``
    (:class:`DiceCounts`) and ``lesions_GTVn`` (:class:`LesionMatch`); and
    ``status_GTVp`` / ``status_GTVn`` (:func:`mask_status`, why a Dice/HD95 is NaN).
    """
    pred_labels = np.asarray(pred_labels)
    truth_labels = np.asarray(truth_labels)
    if pred_labels.shape != truth_labels.shape:
        raise HecktorInputError(
            f"prediction and ground truth differ in shape: "
            f"{pred_labels.shape} vs {truth_labels.shape}"
        )
    check_label_values(pred_labels, source="prediction")
    check_label_values(truth_labels, source="ground truth")
    _check_spacing(spacing_zyx, truth_labels.ndim)
    result: dict[str, Any] = {}
    for value, name in LABELS.items():
        pred, truth = pred_labels == value, truth_labels == value
        counts = DiceCounts.from_masks(pred, truth)
        result[f"Dice_{name}"] = counts.dice
        result[f"HD95_{name}"] = hd95(pred, truth, spacing_zyx)
        result[f"counts_{name}"] = counts
        result[f"status_{name}"] = mask_status(pred, truth)
        if name == "GTVn":
            lesions = match_lesions(pred, truth)
            result["TP_GTVn"], result["FP_GTVn"], result["FN_GTVn"] = (
                lesions.tp,
                lesions.fp,
                lesions.fn,
            )
            result["lesions_GTVn"] = lesions
    return result
