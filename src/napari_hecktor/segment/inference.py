"""Sliding-window inference of model ensembles, with flip TTA, on the GPU or the CPU.

The window loop uses MONAI's own pieces (``dense_patch_slices`` for the window grid,
``compute_importance_map`` for the Gaussian blending weights, as
``sliding_window_inference(mode="gaussian")`` does) but is written out so that it can
``yield`` progress between window batches: the GUI's Cancel then acts within one batch.
"""

from __future__ import annotations

import json
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..errors import HecktorInputError
from ..io.case import Case
from ..io.geometry import Geometry
from ..progress import Progress, run_to_end
from .components import Component, postprocess, score_components
from .preprocess import prepare_input, roi_to_ct

#: Flip axes of the test-time augmentation (tensor dims of (B, C, D, H, W)); () = no flip.
TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (2,), (3,), (4,))


def resolve_device(name: str = "auto") -> Any:
    """``auto`` picks cuda, then mps, then cpu. Returns a ``torch.device``."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise HecktorInputError("device 'cuda' was asked for but no CUDA GPU is available")
    if name not in ("cpu", "mps") and not name.startswith("cuda"):
        raise HecktorInputError(f"unknown device {name!r}: use auto, cpu, cuda or mps")
    return torch.device(name)


#: On the CPU, windows are batched up to this many voxels per forward pass.
CPU_BATCH_VOXELS = 256_000
#: ... and at most this many windows.
CPU_MAX_BATCH = 4


def auto_batch_size(device: Any, roi_size: Sequence[int], channels: int = 64) -> int:
    """Windows per forward pass.

    On the CPU: small windows go in batches of up to ``CPU_MAX_BATCH`` (at most
    ``CPU_BATCH_VOXELS`` voxels per pass). torch's CPU 3D convolutions are several times
    slower per window at batch 1 than at batch 3-4 for small windows (measured with the
    demo NormResSE-UNet3+, 27 windows of 40^3 on 2 cores: 4.8-7.0 s at batch 1, 1.8-1.9 s at
    batch 3-4); a window as large as the whole ROI runs alone. On a GPU: what a quarter of
    free memory holds (``channels`` float16 maps at full window size, times 8 for the
    decoder and skips: deliberately rough and conservative).
    """
    import torch

    voxels = int(np.prod(roi_size))
    if device.type != "cuda":
        return int(max(1, min(CPU_MAX_BATCH, CPU_BATCH_VOXELS // voxels)))
    free, _ = torch.cuda.mem_get_info(device)
    per_window = 8 * channels * voxels * 2
    return int(max(1, min(16, (free // 4) // per_window)))


def sliding_window_iter(
    model: Any,
    image: Any,
    roi_size: Sequence[int],
    *,
    overlap: float = 0.5,
    batch_size: int = 1,
    flips: tuple[int, ...] = (),
) -> Generator[Progress, None, Any]:
    """Gaussian-blended sliding-window sigmoid probabilities of ``model`` on ``image``.

    ``image``: (1, C, D, H, W) tensor on the model's device, each spatial size >= roi_size.
    Returns (out_channels, D, H, W) float32 probabilities on that device.
    """
    import torch
    from monai.data.utils import compute_importance_map, dense_patch_slices

    device = image.device
    spatial = tuple(image.shape[2:])
    roi = tuple(int(r) for r in roi_size)
    interval = tuple(max(1, int(r * (1 - overlap))) for r in roi)
    slices = dense_patch_slices(spatial, roi, interval)
    weight_map = compute_importance_map(roi, mode="gaussian", sigma_scale=0.125, device=device)
    weight_map = weight_map.float().clamp_min(1e-6)
    out = None
    norm = torch.zeros(spatial, device=device)
    amp = device.type == "cuda"
    n_batches = (len(slices) + batch_size - 1) // batch_size
    for b in range(n_batches):
        batch = slices[b * batch_size : (b + 1) * batch_size]
        windows = torch.cat([image[(slice(None), slice(None), *s)] for s in batch])
        if flips:
            windows = torch.flip(windows, flips)
        with torch.inference_mode(), torch.autocast(device.type, enabled=amp):
            logits = model(windows)
        probs = torch.sigmoid(logits.float())
        if flips:
            probs = torch.flip(probs, flips)
        if out is None:
            out = torch.zeros((probs.shape[1], *spatial), device=device)
        for s, p in zip(batch, probs, strict=True):
            out[(slice(None), *s)] += p * weight_map
            norm[s] += weight_map
        yield Progress(b + 1, n_batches, "sliding window")
    return out / norm


@dataclass
class Segmentation:
    """A model's answer for one case, on the CT grid."""

    labels: np.ndarray  # uint8 (z, y, x)
    probabilities: np.ndarray  # float32 (2, z, y, x): GTVp, GTVn
    uncertainty: np.ndarray  # float32 (z, y, x), 0 (sure) .. 1
    geometry: Geometry
    components: list[Component]
    device: str
    models: list[str]
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)

    def label_image(self) -> sitk.Image:
        return self.geometry.image_from_array(self.labels)

    def probability_image(self) -> sitk.Image:
        """GTVp and GTVn probabilities as a 2-component image on the CT grid."""
        return sitk.Compose([self.geometry.image_from_array(p) for p in self.probabilities])

    def uncertainty_image(self) -> sitk.Image:
        return self.geometry.image_from_array(self.uncertainty)


def _uncertainty(members: list[np.ndarray], mean: np.ndarray) -> np.ndarray:
    """Ensemble/TTA disagreement (2 x std, in 0..1) or, for one member, binary entropy (bits)."""
    if len(members) > 1:
        return (2.0 * np.stack(members).std(axis=0)).max(axis=0).astype(np.float32)
    p = np.clip(mean, 1e-6, 1 - 1e-6)
    entropy = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    return entropy.max(axis=0).astype(np.float32)


def segment_iter(
    case: Case,
    models: Sequence[tuple[Any, Any]],
    *,
    device: str = "auto",
    tta: bool = False,
    thresholds: Sequence[float] | None = None,
    min_component_voxels: int | None = None,
    overlap: float | None = None,
    batch_size: int | None = None,
) -> Generator[Progress, None, Segmentation]:
    """Segment ``case`` with an ensemble of ``(network, card)``; yields progress.

    Every member must share the preprocessing recipe (an ensemble of fold models does).
    Settings left as None come from the first model card's ``inference`` defaults.
    """
    import torch

    if case.pet is None:
        raise HecktorInputError(f"case {case.case_id} has no PET: the models need PET and CT")
    if not models:
        raise HecktorInputError("no model given")
    cards = [card for _, card in models]
    recipes = {json.dumps(c.preprocessing, sort_keys=True) for c in cards}
    if len(recipes) > 1:
        raise HecktorInputError("ensemble members use different preprocessing; run them apart")
    defaults = cards[0].inference
    thresholds = tuple(thresholds or defaults.get("thresholds", (0.5, 0.5)))
    min_voxels = int(
        defaults.get("min_component_voxels", 50)
        if min_component_voxels is None
        else min_component_voxels
    )
    overlap = float(defaults.get("overlap", 0.5) if overlap is None else overlap)
    roi_size = tuple(int(v) for v in defaults.get("roi_size", (128, 128, 128)))
    start = time.perf_counter()
    dev = resolve_device(device)
    yield Progress(0, 1, f"preprocessing ({cards[0].preprocessing['name']})")
    net_input = prepare_input(case.ct, case.pet, cards[0].preprocessing)
    array = net_input.array
    pad = [(0, max(0, r - s)) for r, s in zip(roi_size, array.shape[1:], strict=True)]
    padded = np.stack([np.pad(ch, pad, constant_values=float(ch.min())) for ch in array])
    image = torch.from_numpy(padded)[None].to(dev)
    batch = batch_size or auto_batch_size(dev, roi_size)
    flips = TTA_FLIPS if tta else ((),)
    members: list[np.ndarray] = []
    n_members = len(models) * len(flips)
    for m, (model, card) in enumerate(models):
        model.to(dev).eval()
        for f, flip in enumerate(flips):
            k = m * len(flips) + f
            job = sliding_window_iter(
                model, image, roi_size, overlap=overlap, batch_size=batch, flips=flip
            )
            while True:
                try:
                    p = next(job)
                except StopIteration as stop:
                    prob = stop.value
                    break
                message = f"{card.name}: member {k + 1}/{n_members}"
                yield Progress(k * p.total + p.done, n_members * p.total, message)
            crop = tuple(slice(0, s) for s in array.shape[1:])
            members.append(prob[(slice(None), *crop)].cpu().numpy())
    mean = np.mean(members, axis=0).astype(np.float32)
    uncertainty = _uncertainty(members, mean)
    yield Progress(n_members, n_members, "back to the CT grid")
    geometry = case.geometry
    prob_ct = roi_to_ct(mean, net_input.geometry, geometry)
    unc_ct = roi_to_ct(uncertainty[None], net_input.geometry, geometry)[0]
    labels = postprocess(prob_ct, thresholds, min_voxels)
    components = score_components(
        labels, geometry, pet=case.pet_array(), prob=prob_ct, uncertainty=unc_ct
    )
    return Segmentation(
        labels=labels,
        probabilities=prob_ct,
        uncertainty=unc_ct,
        geometry=geometry,
        components=components,
        device=str(dev),
        models=[card.label for card in cards],
        seconds=time.perf_counter() - start,
        settings={
            "tta": tta,
            "thresholds": list(thresholds),
            "min_component_voxels": min_voxels,
            "overlap": overlap,
            "roi_size": list(roi_size),
            "batch_size": batch,
            "recipe": cards[0].preprocessing,
        },
    )


def segment(case: Case, models: Sequence[tuple[Any, Any]], **kwargs: Any) -> Segmentation:
    """:func:`segment_iter` run to the end (no progress shown)."""
    return run_to_end(segment_iter(case, models, **kwargs))
