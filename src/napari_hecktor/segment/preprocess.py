"""Named preprocessing recipes: the same code prepares training crops and inference inputs.

A recipe is a plain dict recorded in each model card (``{"name": ..., **params}``), so
inference repeats training exactly. Two recipes, after the papers:

* ``pet_guided_roi`` (seed 004, MMPL): isotropic grid over the CT-PET physical
  intersection; in the cranial 25 % of it, PET z-score > 1; the centroid of the largest
  26-connected component is the ROI centre; a 200 x 200 x 310 mm crop at 1 mm. CT clipped
  to [-1024, 1024] HU and scaled to [-1, 1]; PET z-scored over its non-zero voxels.
* ``box144`` (seed 000, NormResSE-UNet3+): a 144 mm cube at 1 mm. HECKTOR 2021 gave the
  box with the data; without one, it is placed from the same PET landmark (the brain),
  ``z_offset_mm`` below its centroid, as the organisers' automatic boxes were.

The ROI is found on the PET's own grid (no need to resample the whole volume for a
centroid) and CT and PET are resampled once, straight onto the ROI grid, by physical
coordinates with SimpleITK. MONAI's array transforms would need the same geometry
bookkeeping through MetaTensor affines; SimpleITK states it directly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..errors import HecktorInputError
from ..io.geometry import Geometry, resample_to

#: Channel order of every network input.
INPUT_CHANNELS = ("PET", "CT")

RECIPES: dict[str, dict[str, Any]] = {
    "pet_guided_roi": {
        "spacing_mm": 1.0,
        "roi_mm": (200.0, 200.0, 310.0),  # x, y, z
        "cranial_fraction": 0.25,
        "pet_z_threshold": 1.0,
        "z_offset_mm": 0.0,
        "ct_clip_hu": (-1024.0, 1024.0),
        "interpolator": "bspline",
    },
    "box144": {
        "spacing_mm": 1.0,
        "roi_mm": (144.0, 144.0, 144.0),
        "cranial_fraction": 0.25,
        "pet_z_threshold": 1.0,
        "z_offset_mm": -90.0,
        "ct_clip_hu": (-1024.0, 1024.0),
        "interpolator": "linear",
    },
}


def make_recipe(name: str, **overrides: Any) -> dict[str, Any]:
    """A recipe dict (for a model card): the named defaults with ``overrides`` applied."""
    if name not in RECIPES:
        raise HecktorInputError(
            f"unknown preprocessing recipe {name!r}; known: {', '.join(sorted(RECIPES))}"
        )
    unknown = set(overrides) - set(RECIPES[name])
    if unknown:
        raise HecktorInputError(
            f"recipe {name!r} has no parameter(s) {', '.join(sorted(unknown))}; "
            f"it has {', '.join(sorted(RECIPES[name]))}"
        )
    # JSON round trip: the canonical form is what a model card stores (lists, not tuples)
    return json.loads(json.dumps({"name": name, **RECIPES[name], **overrides}))


def check_recipe(recipe: dict[str, Any]) -> dict[str, Any]:
    """Validate a recipe read from a model card; return it complete."""
    if not isinstance(recipe, dict) or "name" not in recipe:
        raise HecktorInputError("the model card has no preprocessing recipe ('name' missing)")
    params = {k: v for k, v in recipe.items() if k != "name"}
    return make_recipe(recipe["name"], **params)


@dataclass
class NetworkInput:
    """A preprocessed ROI: ``array`` (2, z, y, x) float32 = (PET, CT) on ``geometry``."""

    array: np.ndarray
    geometry: Geometry
    recipe: dict[str, Any]
    center_mm: tuple[float, float, float]


def intersection_bounds(ct: sitk.Image, pet: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Physical (x, y, z) box covered by both CT and PET."""
    lo_c, hi_c = Geometry.of(ct).bounds()
    lo_p, hi_p = Geometry.of(pet).bounds()
    lo, hi = np.maximum(lo_c, lo_p), np.minimum(hi_c, hi_p)
    if np.any(hi <= lo):
        raise HecktorInputError("CT and PET do not overlap in space")
    return lo, hi


def find_roi_center(ct: sitk.Image, pet: sitk.Image, recipe: dict[str, Any]) -> np.ndarray:
    """ROI centre (x, y, z mm): largest PET-hot component in the cranial slab, plus z offset."""
    lo, hi = intersection_bounds(ct, pet)
    pet_arr = sitk.GetArrayViewFromImage(pet).astype(np.float32)
    geometry = Geometry.of(pet)
    # physical z of every PET voxel centre (general direction: full index -> point map)
    affine = geometry.index_to_world_zyx()
    zz, yy, xx = np.indices(pet_arr.shape, dtype=np.float32)
    world_z = affine[0, 0] * zz + affine[0, 1] * yy + affine[0, 2] * xx + affine[0, 3]
    world_y = affine[1, 0] * zz + affine[1, 1] * yy + affine[1, 2] * xx + affine[1, 3]
    world_x = affine[2, 0] * zz + affine[2, 1] * yy + affine[2, 2] * xx + affine[2, 3]
    inside = (
        (world_x >= lo[0]) & (world_x <= hi[0]) & (world_y >= lo[1]) & (world_y <= hi[1])
    )
    z_cut = hi[2] - recipe["cranial_fraction"] * (hi[2] - lo[2])  # LPS: +z is superior
    slab = inside & (world_z >= z_cut) & (world_z <= hi[2])
    values = pet_arr[slab]
    center = (lo + hi) / 2
    if values.size > 1 and values.std() > 0:
        hot = np.zeros(pet_arr.shape, bool)
        hot[slab] = (values - values.mean()) / values.std() > recipe["pet_z_threshold"]
        components, n = ndimage.label(hot, structure=np.ones((3, 3, 3)))
        if n:
            sizes = np.bincount(components.ravel())[1:]
            largest = components == (1 + int(np.argmax(sizes)))
            center = np.array(
                [world_x[largest].mean(), world_y[largest].mean(), world_z[largest].mean()]
            )
    center = center.astype(float)
    center[2] += recipe["z_offset_mm"]
    return center


def roi_geometry(center_xyz: np.ndarray, recipe: dict[str, Any]) -> Geometry:
    """The isotropic, axis-aligned ROI grid centred on ``center_xyz``."""
    spacing = float(recipe["spacing_mm"])
    size = tuple(int(round(mm / spacing)) for mm in recipe["roi_mm"])
    origin = tuple(float(c - (n - 1) * spacing / 2) for c, n in zip(center_xyz, size, strict=True))
    return Geometry(size, (spacing,) * 3, origin, (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))


def normalise_ct(ct: np.ndarray, clip_hu: tuple[float, float]) -> np.ndarray:
    """Clip to ``clip_hu`` and scale linearly to [-1, 1]."""
    lo, hi = clip_hu
    return (2.0 * (np.clip(ct, lo, hi) - lo) / (hi - lo) - 1.0).astype(np.float32)


def normalise_pet(pet: np.ndarray) -> np.ndarray:
    """Z-score over the non-zero voxels (zeros stay the lowest value)."""
    nonzero = pet[pet != 0]
    if nonzero.size < 2 or nonzero.std() == 0:
        return np.zeros_like(pet, dtype=np.float32)
    return ((pet - nonzero.mean()) / nonzero.std()).astype(np.float32)


def prepare_input(ct: sitk.Image, pet: sitk.Image, recipe: dict[str, Any]) -> NetworkInput:
    """Apply a recipe to a CT (HU) and PET (SUV) pair, each on its own grid."""
    recipe = check_recipe(recipe)
    center = find_roi_center(ct, pet, recipe)
    geometry = roi_geometry(center, recipe)
    interp = recipe["interpolator"]
    ct_roi = resample_to(sitk.Cast(ct, sitk.sitkFloat32), geometry, interpolator=interp,
                         default_value=recipe["ct_clip_hu"][0])
    pet_roi = resample_to(sitk.Cast(pet, sitk.sitkFloat32), geometry, interpolator=interp)
    pet_arr = np.clip(sitk.GetArrayFromImage(pet_roi), 0, None)  # B-spline undershoot
    array = np.stack(
        [normalise_pet(pet_arr),
         normalise_ct(sitk.GetArrayFromImage(ct_roi), tuple(recipe["ct_clip_hu"]))]
    )
    return NetworkInput(array, geometry, recipe, tuple(float(v) for v in center))


def roi_to_ct(array: np.ndarray, roi: Geometry, ct: Geometry) -> np.ndarray:
    """Resample channels (c, z, y, x) from the ROI grid onto the CT grid (linear, 0 outside)."""
    out = np.empty((array.shape[0], *ct.shape), dtype=np.float32)
    for c, channel in enumerate(array):
        image = roi.image_from_array(channel.astype(np.float32))
        out[c] = sitk.GetArrayFromImage(resample_to(image, ct, interpolator="linear"))
    return out


def label_to_roi(label: sitk.Image, roi: Geometry) -> np.ndarray:
    """A GTVp/GTVn mask resampled (nearest neighbour) onto the ROI grid, as uint8 (z, y, x)."""
    resampled = resample_to(sitk.Cast(label, sitk.sitkUInt8), roi, interpolator="nearest")
    return sitk.GetArrayFromImage(resampled)
