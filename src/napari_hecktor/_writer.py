"""napari writer: a GTVp/GTVn Labels layer -> NIfTI on the CT's native grid."""

from __future__ import annotations

from typing import Any

import numpy as np

from .display import geometry_from_layer, labels_image
from .errors import HecktorInputError
from .io.volumes import LABEL_VALUES, write_image


def write_labels(path: str, data: Any, attributes: dict) -> list[str]:
    """Write a Labels layer as uint8 NIfTI on the geometry of the CT it was made on.

    Refuses to overwrite the case's input files and labels outside {0, 1, 2}.
    """
    array = np.asarray(data)
    values = np.unique(array)
    extra = [int(v) for v in values if int(v) not in LABEL_VALUES]
    if extra:
        raise HecktorInputError(
            f"the layer has labels {extra} outside 0/1 (GTVp)/2 (GTVn); relabel them before saving"
        )
    geometry = geometry_from_layer(array.shape, attributes)
    sources = (attributes.get("metadata") or {}).get("hecktor", {}).get("sources", {})
    written = write_image(labels_image(array, geometry), path, protected=sources.values())
    return [str(written)]
