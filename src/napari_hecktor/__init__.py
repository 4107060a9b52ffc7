"""napari-hecktor: FDG-PET/CT head-and-neck tumour segmentation and outcome prediction.

The core (everything except ``_widgets``) imports without Qt; heavy libraries
(torch, pyradiomics) are imported where they are used.
"""

from __future__ import annotations

from ._version import __version__
from .errors import HecktorInputError

__all__ = ["HecktorInputError", "__version__"]
