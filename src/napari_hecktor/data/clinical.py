"""HECKTOR 2025 clinical table: column names and codings.

One row per patient, columns in this order:

- ``PatientID``: case id, e.g. ``CHUM-001`` (same as the image file stem).
- ``CenterID``: integer centre code (in the phantoms: index into
  :data:`napari_hecktor.data.phantom.CENTERS`).
- ``Age``: years at diagnosis.
- ``Gender``: ``"M"`` or ``"F"``.
- ``Tobacco Consumption``, ``Alcohol Consumption``: 0 no / 1 yes.
- ``Performance Status``: ECOG/WHO 0-4.
- ``Treatment``: free-text category (the phantoms use ``"Radiotherapy"``,
  ``"Chemoradiotherapy"``, ``"Surgery+Radiotherapy"``).
- ``M-stage``: ``"M0"``, ``"M1"`` or ``"Mx"``.
- ``HPV Status``: 0 negative / 1 positive (the classification target).
- ``Relapse``: 1 relapse observed (event) / 0 censored.
- ``RFS``: relapse-free survival time in days (to relapse or to censoring).

Missing values are normal (empty cells in CSV, NaN in memory).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import HecktorInputError

HECKTOR2025_COLUMNS: list[str] = [
    "PatientID",
    "CenterID",
    "Age",
    "Gender",
    "Tobacco Consumption",
    "Alcohol Consumption",
    "Performance Status",
    "Treatment",
    "M-stage",
    "HPV Status",
    "Relapse",
    "RFS",
]

#: Columns coded 0/1 (NaN when missing).
BINARY_COLUMNS: tuple[str, ...] = (
    "Tobacco Consumption",
    "Alcohol Consumption",
    "HPV Status",
    "Relapse",
)

#: Survival target: (time in days, event indicator).
TIME_COLUMN = "RFS"
EVENT_COLUMN = "Relapse"
HPV_COLUMN = "HPV Status"
ID_COLUMN = "PatientID"


@lru_cache(maxsize=4)
def _rows_by_patient(path: str, mtime: float) -> dict[str, dict[str, Any]]:
    """Rows of a clinical CSV by PatientID (cached; ``mtime`` invalidates the cache)."""
    import pandas as pd

    try:
        frame = pd.read_csv(path, dtype={ID_COLUMN: str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise HecktorInputError(f"cannot read the clinical table {path}: {exc}") from None
    if ID_COLUMN not in frame.columns:
        raise HecktorInputError(f"the clinical table {path} has no {ID_COLUMN} column")
    return {str(r[ID_COLUMN]): r for r in frame.to_dict(orient="records")}


def clinical_row(table: str | Path, case_id: str) -> dict[str, Any]:
    """One patient's row of a clinical CSV ({} when the table has no such patient)."""
    path = Path(table)
    if not path.is_file():
        raise HecktorInputError(f"clinical table not found: {table}")
    return dict(_rows_by_patient(str(path.resolve()), path.stat().st_mtime).get(case_id, {}))
