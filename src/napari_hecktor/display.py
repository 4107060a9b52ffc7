"""Display defaults clinicians expect, and napari layer data for a case (Qt-free).

Every layer of a case gets the same world frame (physical LPS mm, see
:mod:`napari_hecktor.io.geometry`), so CT, PET and masks overlay exactly and the
status bar reads millimetres. Layers are returned as napari ``LayerDataTuple``s so
that the reader, the sample data and the widgets build them the same way.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import SimpleITK as sitk

from .io.case import Case
from .io.geometry import Geometry

#: CT windows as (width, level) in HU.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "soft tissue": (400.0, 40.0),
    "bone": (1800.0, 400.0),
    "lung": (1500.0, -600.0),
    "brain": (80.0, 40.0),
}
DEFAULT_CT_WINDOW = "soft tissue"

#: PET colour maps offered: napari names.
PET_COLORMAPS = {"hot": "hot", "inverted grey": "gray_r"}
DEFAULT_PET_COLORMAP = "hot"
DEFAULT_SUV_RANGE = (0.0, 10.0)
DEFAULT_PET_OPACITY = 0.5
#: Outline width (screen pixels) of ground-truth contours; 0 fills the mask.
DEFAULT_CONTOUR = 2

LABEL_NAMES = {1: "GTVp", 2: "GTVn"}
#: Fixed label colours (RGBA): GTVp red, GTVn blue; background transparent.
LABEL_COLORS: dict[int | None, tuple[float, float, float, float]] = {
    None: (0.0, 0.0, 0.0, 0.0),
    0: (0.0, 0.0, 0.0, 0.0),
    1: (1.0, 0.0, 0.0, 1.0),
    2: (0.0, 0.4, 1.0, 1.0),
}


def window_limits(name: str) -> tuple[float, float]:
    """Contrast limits (min, max) in HU of a named CT window."""
    width, level = CT_WINDOWS[name]
    return level - width / 2, level + width / 2


def label_colormap() -> Any:
    """A napari ``DirectLabelColormap``: GTVp red, GTVn blue, anything else transparent."""
    from napari.utils.colormaps import DirectLabelColormap

    return DirectLabelColormap(color_dict=dict(LABEL_COLORS))


def hecktor_metadata(case: Case, role: str, **extra: Any) -> dict[str, Any]:
    """Layer metadata: the case, its CT geometry (for writing masks back) and sources.

    ``case`` keeps the loaded :class:`Case` (native PET grid, SUV factors) so that the
    widgets feed the core exactly what the CLI would.
    """
    meta = {
        "case": case,
        "role": role,
        "case_id": case.case_id,
        "geometry": case.geometry.as_dict(),
        "sources": dict(case.sources),
        "layout": case.layout,
    }
    meta.update(extra)
    return {"hecktor": meta}


def ct_layer(case: Case, window: str = DEFAULT_CT_WINDOW) -> tuple:
    """CT in HU, soft-tissue window, grey."""
    kwargs = {
        "name": f"{case.case_id} CT",
        "colormap": "gray",
        "contrast_limits": window_limits(window),
        "metadata": hecktor_metadata(case, "ct", window=window),
        **case.geometry.napari_transform(),
    }
    return case.ct_array(), kwargs, "image"


def pet_layer(case: Case) -> tuple | None:
    """PET in SUV on the CT grid, SUV 0-10, hot colour map, additive fusion over the CT."""
    pet = case.pet_array()
    if pet is None:
        return None
    kwargs = {
        "name": f"{case.case_id} PET (SUV)",
        "colormap": DEFAULT_PET_COLORMAP,
        "contrast_limits": DEFAULT_SUV_RANGE,
        "blending": "additive",
        "opacity": DEFAULT_PET_OPACITY,
        "metadata": hecktor_metadata(
            case, "pet", native_geometry=Geometry.of(case.pet).as_dict(), **case.pet_info
        ),
        **case.geometry.napari_transform(),
    }
    return pet, kwargs, "image"


def labels_layer(
    case: Case,
    data: np.ndarray | None = None,
    *,
    name: str | None = None,
    role: str = "label",
) -> tuple:
    """A GTVp/GTVn Labels layer on the CT grid (uint8, direct colour map, half-transparent).

    napari takes no ``contour`` at construction; the display widget outlines ground truth.
    """
    if data is None:
        data = case.label_array()
    if data is None:
        data = np.zeros(case.geometry.shape, dtype=np.uint8)
    kwargs = {
        "name": name or f"{case.case_id} GTV",
        "colormap": label_colormap(),
        "opacity": 0.6,
        "metadata": hecktor_metadata(case, role, label_names=LABEL_NAMES),
        **case.geometry.napari_transform(),
    }
    return np.asarray(data, dtype=np.uint8), kwargs, "labels"


def case_layers(case: Case) -> list[tuple]:
    """CT, PET (if any) and label layers of a case, bottom to top."""
    layers = [ct_layer(case)]
    pet = pet_layer(case)
    if pet is not None:
        layers.append(pet)
    if case.label is not None:
        layers.append(labels_layer(case))
    return layers


def geometry_from_layer(data_shape: tuple[int, ...], attributes: dict[str, Any]) -> Geometry:
    """The grid of a layer: its stored CT geometry, else rebuilt from scale/translate/affine."""
    meta = (attributes.get("metadata") or {}).get("hecktor", {})
    if "geometry" in meta:
        geometry = Geometry.from_dict(meta["geometry"])
        if geometry.shape == tuple(data_shape):
            return geometry
    scale = np.asarray(attributes.get("scale", (1.0, 1.0, 1.0)), dtype=float)[-3:]
    translate = np.asarray(attributes.get("translate", (0.0, 0.0, 0.0)), dtype=float)[-3:]
    affine = np.asarray(attributes.get("affine", np.eye(4)), dtype=float)[-4:, -4:]
    # world = A (S i + t): columns of the (z, y, x) linear map, back to (x, y, z) order.
    linear = (affine[:3, :3] @ np.diag(scale))[::-1, ::-1]
    spacing = np.linalg.norm(linear, axis=0)
    direction = linear / spacing[None, :]
    origin = (affine[:3, :3] @ translate + affine[:3, 3])[::-1]
    return Geometry(
        size=tuple(int(v) for v in data_shape[::-1]),
        spacing=tuple(float(v) for v in spacing),
        origin=tuple(float(v) for v in origin),
        direction=tuple(float(v) for v in direction.ravel()),
    )


def labels_image(data: np.ndarray, geometry: Geometry) -> sitk.Image:
    """A uint8 mask image on ``geometry`` from a Labels layer array."""
    return geometry.image_from_array(np.asarray(data, dtype=np.uint8))
