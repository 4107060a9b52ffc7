#!/usr/bin/env python
"""Deep features of every case of a dataset, one CSV row per case, for ``hecktor train-outcome``.

::

    python training_scripts/export_deep_features.py MODEL DATASET -o features.csv \\
        [--masks PRED_DIR] [--clinical DATASET/clinical.csv] [--device cpu]

``MODEL``: a model folder or a bundled model name. Each row is ``PatientID`` followed by
``deep_0000 ...``, computed by :func:`napari_hecktor.features.deep.deep_features` (the
card's preprocessing, the window of its ``roi_size`` centred on the case's lesions, one
pass of the network's ``features``): the pooled 5th encoder level for NormResSE-UNet3+,
the multi-scale decoder pooling (the input of the HPV and survival heads) for MMPL.

The window is centred on the dataset's label when the case has one, on ``--masks``
(``PRED_DIR/<PatientID>.nii.gz``, e.g. ``hecktor segment`` output) when given, else on
the ROI centre. Cases without PET are skipped (listed on stderr). ``--clinical`` joins
the rows to a clinical table (left join on ``PatientID``, clinical columns first), which
``hecktor train-outcome TABLE`` reads directly; without it, join later on ``PatientID``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def export_deep_features(model: str | Path, dataset: str | Path, output: str | Path, *,
                         masks: str | Path | None = None, clinical: str | Path | None = None,
                         device: str = "cpu", log: Callable[[str], None] = print
                         ) -> list[dict[str, Any]]:
    """Write the CSV; return its rows (``PatientID`` + ``deep_*``, clinical columns if joined)."""
    from napari_hecktor.features.deep import deep_features
    from napari_hecktor.features.table import write_features_csv
    from napari_hecktor.io.case import load_case
    from napari_hecktor.io.dataset import discover
    from napari_hecktor.models.card import load_model

    network, card = load_model(model, device=device)
    rows, skipped = [], []
    found = discover(dataset)
    for n, files in enumerate(found, 1):
        if files.pet is None or files.layout == "dicom":
            skipped.append(files.case_id)
            continue
        label, is_gtvt = files.label, files.label_is_gtvt
        if masks is not None:
            pred = Path(masks) / f"{files.case_id}.nii.gz"
            label, is_gtvt = (pred, False) if pred.exists() else (None, False)
        case = load_case(files.ct, files.pet, label, case_id=files.case_id,
                         label_is_gtvt=is_gtvt, layout=files.layout)
        rows.append({"PatientID": files.case_id,
                     **deep_features(case, network, card, device, labels=case.label)})
        log(f"[{n}/{len(found)}] {files.case_id}: {len(rows[-1]) - 1} deep features")
    if skipped:
        print(f"skipped (no PET): {', '.join(skipped)}", file=sys.stderr)
    if clinical is not None:
        rows = join_clinical(rows, clinical)
    write_features_csv(rows, output, protected=[dataset, clinical or ""])
    log(f"{len(rows)} case(s) -> {output} ({card.label})")
    return rows


def join_clinical(rows: Sequence[dict[str, Any]], clinical: str | Path) -> list[dict[str, Any]]:
    """Clinical columns first, then the features (cases missing from the table: NaN)."""
    import pandas as pd

    table = pd.read_csv(clinical, dtype={"PatientID": str})
    if "PatientID" not in table.columns:
        raise SystemExit(f"{clinical} has no PatientID column")
    by_id = {str(r["PatientID"]): r for r in table.to_dict("records")}
    out = []
    for row in rows:
        extra = by_id.get(row["PatientID"], {})
        out.append({**{c: extra.get(c, float("nan")) for c in table.columns}, **row})
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="model folder or bundled model name")
    parser.add_argument("dataset", type=Path, help="HECKTOR-layout folder (or one case)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="features CSV")
    parser.add_argument("--masks", type=Path, help="folder of masks <PatientID>.nii.gz that "
                        "centre the windows (default: the dataset's labels)")
    parser.add_argument("--clinical", type=Path, help="join with this clinical CSV")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    export_deep_features(args.model, args.dataset, args.output, masks=args.masks,
                         clinical=args.clinical, device=args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
