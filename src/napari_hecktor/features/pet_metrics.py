"""Conventional PET metrics per structure: volume, SUVmax/mean/peak, MTV, TLG, HU mean.

All arrays live on the CT grid (PET in SUVbw resampled there, see
:attr:`~napari_hecktor.io.case.Case.pet_on_ct`), indexed (z, y, x), with
``spacing_zyx`` in mm. Structures: GTVp (label 1), GTVn (label 2), GTVall (1 or 2).

Definitions (``S`` = the voxels of the structure, ``v`` = one voxel's volume in mL)
    * ``volume_ml`` = ``|S| * v``.
    * ``SUVmax``, ``SUVmean``: max and mean SUV over ``S``; ``HUmean``: mean CT HU over ``S``.
    * ``SUVpeak`` (PERCIST-like): the highest mean SUV in a sphere of radius
      ``peak_radius_mm`` (6.2 mm: 1 mL) whose centre is a voxel of ``S``. The sphere is the
      set of voxels whose centres lie within the radius of the centre voxel's centre,
      measured in mm with the anisotropic spacing; it averages *all* those voxels, inside
      or outside ``S``, that lie inside the image (at the image border the sphere is cut
      and the mean is over the voxels that remain). Computed as a correlation of the PET
      with that spherical kernel (``scipy.ndimage.correlate``) on the structure's box.
    * ``MTV_ml``: ``|M| * v`` where ``M`` = voxels of ``S`` with SUV >= the threshold;
      ``mtv_threshold=None`` (default): no threshold, ``M = S`` (the contour is the
      metabolic volume); a number: absolute SUV (e.g. 2.5); a string ``"41%"``: that
      fraction of the structure's SUVmax.
    * ``TLG`` = ``MTV_ml * mean SUV over M`` (SUV x mL).

Empty structures: volume_ml, MTV_ml and TLG are 0 (an absent structure has no volume:
a node-negative patient has a GTVn volume of 0 mL, not an unknown one); SUVmax,
SUVmean, SUVpeak and HUmean are NaN. Without PET, all PET-derived values are NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import signal

from ..errors import HecktorInputError

#: Radius (mm) of the 1 mL sphere of SUVpeak: (3 / (4 pi))^(1/3) cm = 6.2 mm.
PEAK_RADIUS_MM = 6.2
#: Structures: name -> label values.
STRUCTURE_LABELS: dict[str, tuple[int, ...]] = {"GTVp": (1,), "GTVn": (2,), "GTVall": (1, 2)}
#: Metric suffixes, in column order.
METRICS = ("volume_ml", "SUVmax", "SUVmean", "SUVpeak", "MTV_ml", "TLG", "HUmean")


def sphere_kernel(spacing_zyx: Sequence[float], radius_mm: float = PEAK_RADIUS_MM) -> np.ndarray:
    """Boolean (z, y, x) kernel: voxels whose centres lie within ``radius_mm`` of the centre."""
    spacing = np.asarray(spacing_zyx, dtype=float)
    half = np.floor(radius_mm / spacing + 1e-9).astype(int)
    axes = [np.arange(-h, h + 1) * s for h, s in zip(half, spacing, strict=True)]
    dz, dy, dx = np.meshgrid(*axes, indexing="ij")
    return dz**2 + dy**2 + dx**2 <= radius_mm**2 * (1 + 1e-12)


def suv_peak(
    pet_suv: np.ndarray,
    mask: np.ndarray,
    spacing_zyx: Sequence[float],
    radius_mm: float = PEAK_RADIUS_MM,
) -> float:
    """SUVpeak of ``mask`` (see the module docstring); NaN for an empty mask."""
    if not mask.any():
        return math.nan
    kernel = sphere_kernel(spacing_zyx, radius_mm)
    half = np.array(kernel.shape) // 2
    idx = np.nonzero(mask)
    lo = np.maximum(np.array([i.min() for i in idx]) - half, 0)
    hi = np.minimum(np.array([i.max() for i in idx]) + half + 1, mask.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    pet = np.asarray(pet_suv[box], dtype=np.float64)
    weights = kernel.astype(np.float64)
    # the box reaches `half` beyond the structure unless the image ends first, so the zero
    # padding outside the box only ever stands for voxels outside the image: not counted
    # FFT convolution (the ball is symmetric: convolution = correlation). scipy.fft releases
    # the GIL, ndimage.correlate does not: this keeps the viewer responsive meanwhile.
    sums = signal.fftconvolve(pet, weights, mode="same")
    counts = signal.fftconvolve(np.ones_like(pet), weights, mode="same")
    inside = mask[box]
    return float(np.max(sums[inside] / counts[inside]))


def _threshold(value: float | str | None, suv_max: float) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        try:
            if text.endswith("%"):
                return float(text[:-1]) / 100.0 * suv_max
            return float(text)
        except ValueError:
            raise HecktorInputError(
                f"MTV threshold {value!r} is neither an SUV (2.5) nor a percentage of SUVmax "
                "('41%')"
            ) from None
    return float(value)


def pet_metrics(
    pet_suv: np.ndarray | None,
    ct_hu: np.ndarray | None,
    labels: np.ndarray,
    spacing_zyx: Sequence[float],
    *,
    mtv_threshold: float | str | None = None,
    peak_radius_mm: float = PEAK_RADIUS_MM,
    structures: Sequence[str] = tuple(STRUCTURE_LABELS),
) -> dict[str, float]:
    """``{structure}_{metric}`` for every structure (see the module docstring)."""
    labels = np.asarray(labels)
    for name, arr in (("PET", pet_suv), ("CT", ct_hu)):
        if arr is not None and np.shape(arr) != labels.shape:
            raise HecktorInputError(
                f"the mask is not on the {name} array's grid: mask shape {labels.shape}, "
                f"{name} shape {np.shape(arr)} (PET metrics need all arrays on the CT grid)"
            )
    if len(spacing_zyx) != 3 or min(float(s) for s in spacing_zyx) <= 0:
        raise HecktorInputError(f"spacing must be three positive mm values, got {spacing_zyx}")
    voxel_ml = float(np.prod([float(s) for s in spacing_zyx])) / 1000.0
    # check a bad threshold string at once, not only for a non-empty structure
    _threshold(mtv_threshold, 1.0)
    out: dict[str, float] = {}
    for name in structures:
        if name not in STRUCTURE_LABELS:
            raise HecktorInputError(
                f"unknown structure {name!r}; known: {', '.join(STRUCTURE_LABELS)}"
            )
        mask = np.isin(labels, STRUCTURE_LABELS[name])
        n = int(np.count_nonzero(mask))
        m = dict.fromkeys(METRICS, math.nan)
        m["volume_ml"] = n * voxel_ml
        if ct_hu is not None and n:
            m["HUmean"] = float(np.mean(ct_hu[mask], dtype=np.float64))
        if pet_suv is not None:
            if n:
                suv = np.asarray(pet_suv[mask], dtype=np.float64)
                m["SUVmax"] = float(suv.max())
                m["SUVmean"] = float(suv.mean())
                m["SUVpeak"] = suv_peak(pet_suv, mask, spacing_zyx, peak_radius_mm)
                threshold = _threshold(mtv_threshold, m["SUVmax"])
                active = suv if threshold is None else suv[suv >= threshold]
                m["MTV_ml"] = active.size * voxel_ml
                m["TLG"] = m["MTV_ml"] * float(active.mean()) if active.size else 0.0
            else:
                m["MTV_ml"] = 0.0
                m["TLG"] = 0.0
        for key in METRICS:
            out[f"{name}_{key}"] = m[key]
    return out
