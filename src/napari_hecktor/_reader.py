"""napari reader: a case folder, a HECKTOR dataset (or one of its files), DICOM, loose files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .display import case_layers, ct_layer, pet_layer
from .io.case import Case, open_path
from .io.dataset import classify_file
from .io.volumes import read_image, volume_suffix

#: A loose volume whose lowest value is below this (HU) is taken as CT, otherwise as PET.
CT_MIN_HU = -500.0


def get_reader(path: str | list[str]) -> Callable | None:
    """Return :func:`read_case` when ``path`` looks like something we read, else None."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    if p.is_dir() or volume_suffix(p):
        return read_case
    return None


def read_case(path: str | list[str]) -> list[tuple]:
    """Read a case and return its CT, PET and label layers (all in mm, on the CT grid)."""
    if isinstance(path, list):
        path = path[0]
    p = Path(path)
    if p.is_file() and classify_file(p) is None and not p.parent.name.lower().startswith("labels"):
        return _read_loose_file(p)
    case, all_cases = open_path(p)
    layers = case_layers(case)
    if len(all_cases) > 1:
        ids = [c.case_id for c in all_cases]
        for _, kwargs, _ in layers:
            kwargs["metadata"]["hecktor"]["dataset"] = {"root": str(p), "case_ids": ids,
                                                        "cases": list(all_cases)}
    return layers


def _read_loose_file(path: Path) -> list[tuple]:
    """A single volume with no HECKTOR name: CT if it has HU-like negative values, else PET."""
    import numpy as np
    import SimpleITK as sitk

    image = read_image(path)
    lowest = float(np.min(sitk.GetArrayViewFromImage(image)))
    case_id = path.name.split(".")[0]
    if lowest < CT_MIN_HU:
        return [ct_layer(Case(case_id, ct=image, sources={"ct": str(path)}))]
    # A PET alone: shown on its own grid (it is its own reference).
    pet = sitk.Cast(image, sitk.sitkFloat32)
    case = Case(case_id, ct=image, pet=pet, sources={"pet": str(path)})
    return [pet_layer(case)]
