"""Post-processing of probability maps and per-lesion scores (to flag likely false positives).

Both work on the CT grid: labels are composed tumour-first from per-class thresholds,
holes are filled in 3D and components under ``min_voxels`` are removed, per class.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from ..io.geometry import Geometry

CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)

#: Rules of the "likely false positive" flag; each is (name, reason template).
FP_RULES = {
    "low_probability": 0.6,  # mean probability of the component below this
    "high_uncertainty": 0.35,  # mean uncertainty above this (0..1)
    "small_volume_ml": 0.3,  # smaller than this (a very small island)
    "low_suv_max": 2.5,  # SUVmax below this: not FDG-avid
}


def compose_labels(prob: np.ndarray, thresholds: tuple[float, float] = (0.5, 0.5)) -> np.ndarray:
    """Tumour-first labelling of (GTVp, GTVn) probabilities: 1 wins over 2."""
    labels = np.zeros(prob.shape[1:], dtype=np.uint8)
    labels[prob[1] > thresholds[1]] = 2
    labels[prob[0] > thresholds[0]] = 1
    return labels


def lesion_box(mask: np.ndarray, pad: int = 1) -> tuple[slice, ...]:
    """The bounding box of ``mask``'s voxels, ``pad`` voxels wider (clipped to the array)."""
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    return tuple(slice(max(0, s.start - pad), min(n, s.stop + pad))
                 for s, n in zip(box, mask.shape, strict=True))


def fill_and_clean(labels: np.ndarray, min_voxels: int = 50, fill_holes: bool = True) -> np.ndarray:
    """Fill 3D holes and drop components smaller than ``min_voxels``, per label (1 then 2).

    Both work in the label's bounding box plus one voxel: outside it all is background,
    connected to the image border, so holes and components are the same as over the
    whole array (a test compares the two), at a fraction of the cost on a CT grid.
    """
    out = labels.copy()
    for value in (1, 2):
        mask = out == value
        if not mask.any():
            continue
        box = lesion_box(mask)
        view = out[box]  # a view: writes land in ``out``
        mask = mask[box]
        if fill_holes:
            filled = ndimage.binary_fill_holes(mask)
            view[filled & (view == 0)] = value
            mask = view == value
        if min_voxels > 1:
            components, n = ndimage.label(mask, structure=CONNECTIVITY_26)
            sizes = np.bincount(components.ravel(), minlength=n + 1)
            small = sizes < min_voxels
            small[0] = False
            view[small[components]] = 0
    return out


def postprocess(
    prob: np.ndarray,
    thresholds: tuple[float, float] = (0.5, 0.5),
    min_voxels: int = 50,
    fill_holes: bool = True,
) -> np.ndarray:
    """Probabilities (2, z, y, x) on the CT grid -> uint8 GTVp/GTVn mask."""
    return fill_and_clean(compose_labels(prob, thresholds), min_voxels, fill_holes)


@dataclass
class Component:
    """One connected lesion of a mask, with the figures a reviewer needs."""

    index: int
    label: int
    voxels: int
    volume_ml: float
    centroid_mm: tuple[float, float, float]  # physical LPS (x, y, z)
    centroid_index: tuple[int, int, int]  # (z, y, x) voxel nearest the centroid
    suv_max: float
    suv_mean: float
    mean_probability: float
    mean_uncertainty: float
    likely_false_positive: bool
    reasons: list[str]

    def as_dict(self) -> dict:
        return asdict(self)


def score_components(
    labels: np.ndarray,
    geometry: Geometry,
    *,
    pet: np.ndarray | None = None,
    prob: np.ndarray | None = None,
    uncertainty: np.ndarray | None = None,
) -> list[Component]:
    """Score every 26-connected component of each label; flag likely false positives."""
    affine = geometry.index_to_world_zyx()
    voxel_ml = geometry.voxel_volume_ml
    result: list[Component] = []
    for value in (1, 2):
        components, n = ndimage.label(labels == value, structure=CONNECTIVITY_26)
        if n == 0:
            continue
        objects = ndimage.find_objects(components)
        for i, box in enumerate(objects, start=1):
            mask = components[box] == i
            idx = np.argwhere(mask) + [s.start for s in box]
            centroid = idx.mean(axis=0)
            world_zyx = affine[:3, :3] @ centroid + affine[:3, 3]
            nearest = idx[np.argmin(((idx - centroid) ** 2).sum(axis=1))]
            suv = pet[box][mask] if pet is not None else np.array([np.nan])
            p = prob[value - 1][box][mask] if prob is not None else np.array([np.nan])
            u = uncertainty[box][mask] if uncertainty is not None else np.array([np.nan])
            volume = float(mask.sum() * voxel_ml)
            reasons = _fp_reasons(float(p.mean()), float(u.mean()), volume, float(suv.max()))
            result.append(
                Component(
                    index=len(result) + 1,
                    label=value,
                    voxels=int(mask.sum()),
                    volume_ml=volume,
                    centroid_mm=tuple(float(v) for v in world_zyx[::-1]),
                    centroid_index=tuple(int(v) for v in nearest),
                    suv_max=float(suv.max()),
                    suv_mean=float(suv.mean()),
                    mean_probability=float(p.mean()),
                    mean_uncertainty=float(u.mean()),
                    likely_false_positive=bool(reasons),
                    reasons=reasons,
                )
            )
    return result


def _fp_reasons(mean_prob: float, mean_unc: float, volume_ml: float, suv_max: float) -> list[str]:
    reasons = []
    if mean_prob < FP_RULES["low_probability"]:
        reasons.append(f"low model confidence (mean p {mean_prob:.2f})")
    if mean_unc > FP_RULES["high_uncertainty"]:
        reasons.append(f"models disagree (uncertainty {mean_unc:.2f})")
    if volume_ml < FP_RULES["small_volume_ml"]:
        reasons.append(f"very small ({volume_ml:.2f} mL)")
    if suv_max < FP_RULES["low_suv_max"]:
        reasons.append(f"not FDG-avid (SUVmax {suv_max:.1f})")
    return reasons
