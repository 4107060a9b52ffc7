"""Deep features: the network's ``features(x)`` on the case's preprocessed PET/CT input.

* NormResSE-UNet3+ (seed 000): global average of the deepest (5th) encoder level.
* MMPL (seed 004): global averages of the decoder levels, concatenated (multi-scale).

Both are the networks' own ``features`` methods; this module only prepares the input as
the model card says and chooses the window:

1. :func:`~napari_hecktor.segment.preprocess.prepare_input` with the card's recipe (the
   PET-guided ROI, resampling, CT clipping and PET z-score, exactly as for segmentation).
2. If the ROI is larger than the card's inference ``roi_size`` (z, y, x voxels) along an
   axis, one window of ``roi_size`` is taken there, centred on the lesions (the centroid,
   in mm, of the mask's non-zero voxels) when the case has a non-empty mask, else on
   the ROI centre, and shifted to lie inside the ROI. If the ROI is smaller, it is
   padded at the far end with each channel's minimum, as sliding-window inference does;
   sizes are then rounded up to the network's ``size_multiple`` the same way.
3. One forward pass of ``model.features`` in eval mode without gradients; the model's
   train/eval mode is restored afterwards. Keys ``deep_0000``, ``deep_0001``, ...
"""

from __future__ import annotations

from typing import Any

import numpy as np
import SimpleITK as sitk

from ..errors import HecktorInputError
from ..io.geometry import Geometry
from ..segment.preprocess import NetworkInput, prepare_input


def lesion_center_xyz(labels: sitk.Image | None) -> np.ndarray | None:
    """Physical (x, y, z) centroid of a mask's non-zero voxels; None when empty or absent."""
    if labels is None:
        return None
    array = sitk.GetArrayViewFromImage(labels)
    idx = np.argwhere(array > 0)
    if idx.size == 0:
        return None
    affine = Geometry.of(labels).index_to_world_zyx()
    world_zyx = affine[:3, :3] @ idx.mean(axis=0) + affine[:3, 3]
    return world_zyx[::-1]


def select_window(
    net_input: NetworkInput,
    roi_size: tuple[int, int, int],
    center_xyz: np.ndarray | None = None,
    size_multiple: int = 1,
) -> np.ndarray:
    """The (2, z, y, x) window fed to ``features`` (see the module docstring, step 2)."""
    array = net_input.array
    shape = np.array(array.shape[1:])
    roi = np.array(roi_size, dtype=int)
    if center_xyz is None:
        center = (shape - 1) / 2.0
    else:  # the ROI grid is axis-aligned: index = (world - origin) / spacing, in (z, y, x)
        g = net_input.geometry
        center = ((np.asarray(center_xyz) - np.asarray(g.origin)) / np.asarray(g.spacing))[::-1]
    # the window's voxel roi // 2 sits on the centre voxel (the nearest, halves rounded up)
    start = np.floor(center + 0.5).astype(int) - roi // 2
    start = np.clip(start, 0, np.maximum(shape - roi, 0))
    stop = np.minimum(start + roi, shape)
    window = array[:, start[0]:stop[0], start[1]:stop[1], start[2]:stop[2]]
    target = np.maximum(roi, window.shape[1:])
    target = -(-target // size_multiple) * size_multiple
    pad = [(0, int(t - s)) for t, s in zip(target, window.shape[1:], strict=True)]
    if any(p[1] for p in pad):
        window = np.stack([np.pad(ch, pad, constant_values=float(ch.min())) for ch in window])
    return np.ascontiguousarray(window, dtype=np.float32)


def deep_features(
    case: Any,
    model: Any,
    card: Any,
    device: Any = "cpu",
    *,
    labels: sitk.Image | np.ndarray | None = None,
) -> dict[str, float]:
    """``deep_0000 ...`` of ``model.features`` on ``case`` (a Case with CT and PET).

    ``card``: the model's :class:`~napari_hecktor.models.card.ModelCard` (recipe and
    ``roi_size``). ``labels``: the mask that centres the window (default the case's).
    """
    import torch

    if case.pet is None:
        raise HecktorInputError(f"case {case.case_id} has no PET: deep features need PET and CT")
    if not hasattr(model, "features"):
        raise HecktorInputError(
            f"the {card.architecture} network has no features(x) method for deep features"
        )
    if labels is None:
        labels = case.label
    elif isinstance(labels, np.ndarray):
        labels = case.geometry.image_from_array(labels.astype(np.uint8))
    net_input = prepare_input(case.ct, case.pet, card.preprocessing)
    roi_size = tuple(int(v) for v in card.inference.get("roi_size", net_input.array.shape[1:]))
    window = select_window(
        net_input, roi_size, lesion_center_xyz(labels), int(getattr(model, "size_multiple", 1))
    )
    device = torch.device(device)
    was_training = model.training
    model.to(device).eval()
    try:
        with torch.inference_mode():
            feats = model.features(torch.from_numpy(window)[None].to(device))
    finally:
        model.train(was_training)
    values = feats[0].detach().to("cpu", torch.float64).numpy()
    return {f"deep_{i:04d}": float(v) for i, v in enumerate(values)}
