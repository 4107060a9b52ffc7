"""Image features of a case: PET metrics, mask-guided radiomics (pyradiomics), deep features.

* :mod:`.pet_metrics`: volume, SUVmax/mean/peak, MTV, TLG, HU mean per structure.
* :mod:`.radiomics`: pyradiomics per structure (GTVp, GTVn, GTVall) x modality (CT, PET
  on the CT grid), parameters from ``radiomics_params.yaml`` or the user's file.
* :mod:`.deep`: the segmentation network's ``features(x)`` on the preprocessed input.
* :mod:`.table`: :func:`case_features_iter` / :func:`case_features`, one flat row per
  case, and :func:`write_features_csv`.

Importing this package is cheap: pyradiomics and torch load when first used.
"""

from __future__ import annotations

from .pet_metrics import pet_metrics
from .radiomics import DEFAULT_PARAMS, load_params, radiomics_features, radiomics_iter
from .table import case_features, case_features_iter, write_features_csv

__all__ = [
    "DEFAULT_PARAMS",
    "case_features",
    "case_features_iter",
    "load_params",
    "pet_metrics",
    "radiomics_features",
    "radiomics_iter",
    "write_features_csv",
]
