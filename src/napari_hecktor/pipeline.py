"""Case -> results: the one path that the CLI, the widgets and the batch runner call.

Each step is a progress generator (see :mod:`napari_hecktor.progress`) with a plain
twin that runs it to the end. Defaults live here once, so a widget button, a CLI verb
and the batch runner give the same answer.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from .errors import HecktorInputError
from .io.case import Case
from .io.volumes import volume_suffix, write_image
from .progress import Progress

#: The model used when none is named (bundled, trained on synthetic data).
DEFAULT_MODEL = "mmpl_demo"


def load_models(names: Sequence[str | Path] | None = None, device: str = "cpu") -> list[tuple]:
    """Load one model or an ensemble (names of bundled models or model folders).

    Loaded models are kept (keyed by folder, file times and device), so a second run in
    the same process, or in a widget, does not read and build them again.
    """
    from .models.card import CARD_NAME, WEIGHTS_NAME, bundled_models, resolve_model_path

    if not names:
        if DEFAULT_MODEL not in bundled_models():
            raise HecktorInputError(
                "no model given and the default demo model is not installed; pass --model FOLDER"
            )
        names = [DEFAULT_MODEL]
    models = []
    for name in names:
        folder = resolve_model_path(name)
        stamps = tuple(_mtime(folder / f) for f in (CARD_NAME, WEIGHTS_NAME))
        models.append(_load_model_cached(str(folder), stamps, str(device)))
    return models


def _mtime(path: Path) -> float:
    return path.stat().st_mtime if path.exists() else -1.0


@lru_cache(maxsize=8)
def _load_model_cached(folder: str, stamps: tuple[float, ...], device: str) -> tuple:
    from .models.card import load_model

    return load_model(folder, device=device)


def warm_up(names: Sequence[str | Path] | None = None, device: str = "cpu") -> None:
    """Load the models and run one tiny forward pass (first-call set-up of torch), so that
    the first real job does not pay for it. Errors are left for the real job to report."""
    import torch

    try:
        for model, card in load_models(names, device=device):
            size = [int(getattr(model, "size_multiple", 16))] * 3
            with torch.no_grad():
                model(torch.zeros(1, len(card.input_channels), *size, device=device))
    except Exception:
        return


def segment_case_iter(
    case: Case,
    models: Sequence[tuple] | Sequence[str | Path] | None = None,
    **settings: Any,
) -> Generator[Progress, None, Any]:
    """Segment a case (GTVp/GTVn on the CT grid, probabilities, uncertainty, lesion scores)."""
    from .segment.inference import resolve_device, segment_iter

    if not models or not isinstance(models[0], tuple):
        device = str(resolve_device(settings.get("device", "auto")))
        models = load_models(models, device=device)
    return (yield from segment_iter(case, models, **settings))


def refine_case_iter(
    case: Case,
    probabilities: np.ndarray,
    labels: np.ndarray | None = None,
    params: Any = None,
) -> Generator[Progress, None, Any]:
    """Dense-CRF refinement of (GTVp, GTVn) probabilities on the CT grid, lesion boxes only."""
    from .segment.crf import CRFParams, refine_iter

    if case.pet is None:
        raise HecktorInputError(f"case {case.case_id} has no PET: the CRF needs PET and CT")
    spacing_zyx = tuple(case.geometry.spacing[::-1])
    return (
        yield from refine_iter(
            probabilities,
            case.pet_array(),
            case.ct_array().astype(np.float32),
            spacing_zyx,
            params or CRFParams(),
            labels=labels,
        )
    )


def check_output_paths(paths: Sequence[str | Path | None], case: Case) -> None:
    """Before any work: outputs must be volume files and never one of the case's inputs."""
    inputs = {Path(p).resolve() for p in case.sources.values()}
    for p in paths:
        if p is None:
            continue
        if volume_suffix(p) is None:
            raise HecktorInputError(f"output {p} must end in .nii.gz, .nii, .nrrd or .mha")
        if Path(p).resolve() in inputs:
            raise HecktorInputError(f"refusing to overwrite the input file {p}")


def save_segmentation(
    segmentation: Any,
    case: Case,
    mask: str | Path,
    *,
    probabilities: str | Path | None = None,
    uncertainty: str | Path | None = None,
    labels: np.ndarray | None = None,
) -> list[Path]:
    """Write the mask (and optionally probability/uncertainty maps) on the CT grid."""
    check_output_paths([mask, probabilities, uncertainty], case)
    protected = list(case.sources.values())
    geometry = case.geometry
    data = segmentation.labels if labels is None else labels
    written = [write_image(geometry.image_from_array(data.astype(np.uint8)), mask,
                           protected=protected)]
    if probabilities is not None:
        written.append(write_image(segmentation.probability_image(), probabilities,
                                   protected=protected))
    if uncertainty is not None:
        written.append(write_image(segmentation.uncertainty_image(), uncertainty,
                                   protected=protected))
    return written
