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
