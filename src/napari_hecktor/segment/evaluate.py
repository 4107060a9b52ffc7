"""Score a folder of predicted masks against HECKTOR ground truth (read-only on both folders).

Predictions are ``<ID>.nii.gz`` (or ``.nii``) files directly in the prediction folder.
Ground truth is found in any of these layouts under the ground-truth folder:

* HECKTOR 2022: ``labelsTr/<ID>.nii.gz`` and/or ``labelsTs/<ID>.nii.gz``;
* the labels folder itself: ``<ID>.nii.gz`` (``<ID>__CT`` / ``__PT`` images are skipped);
* HECKTOR 2025: one folder per patient, ``<ID>/<ID>.nii.gz``.

Cases are matched by patient ID. A ground-truth case without a prediction is scored as an
empty prediction (it counts as a miss in Dice, DSCagg and F1agg) and listed under
``missing_predictions``; a prediction without ground truth is ignored and listed under
``unmatched_predictions``. Every prediction must lie on its ground-truth grid (size,
spacing, origin within 1e-3 mm, direction) and hold only labels 0, 1, 2; otherwise
:class:`~napari_hecktor.errors.HecktorInputError` names the case. Metric conventions
(empty masks, HD95, lesion matching) are those of :mod:`napari_hecktor.metrics`.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk

from ..errors import HecktorInputError
from ..io.dataset import classify_file
from ..io.geometry import Geometry
from ..io.volumes import read_image
from ..metrics import LABELS, check_label_values, dsc_agg, evaluate_case, f1_agg
from ..progress import Progress, ProgressJob, run_to_end

#: Columns of the per-case table, in order.
COLUMNS = [
    "PatientID",
    "Dice_GTVp",
    "Dice_GTVn",
    "HD95_GTVp",
    "HD95_GTVn",
    "TP_GTVn",
    "FP_GTVn",
    "FN_GTVn",
]

_SUFFIXES = (".nii.gz", ".nii")


def _nifti_id(path: Path) -> str | None:
    """``<ID>`` of a visible ``<ID>.nii.gz`` / ``<ID>.nii`` file, else None."""
    name = path.name
    if name.startswith(".") or not path.is_file():
        return None
    for suffix in _SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return None


def _add(found: dict[str, Path], case_id: str, path: Path, what: str) -> None:
    if case_id in found and found[case_id] != path:
        raise HecktorInputError(
            f"two {what} files for case {case_id}: {found[case_id]} and {path}; keep one"
        )
    found[case_id] = path


def find_predictions(pred_dir: str | Path) -> dict[str, Path]:
    """``{ID: file}`` of the ``<ID>.nii.gz`` / ``<ID>.nii`` files in ``pred_dir``."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise HecktorInputError(f"prediction folder not found: {pred_dir}")
    found: dict[str, Path] = {}
    for path in sorted(pred_dir.iterdir()):
        case_id = _nifti_id(path)
        if case_id:
            _add(found, case_id, path, "prediction")
    return found


def find_ground_truth(gt_dir: str | Path) -> dict[str, Path]:
    """``{ID: label file}`` from a HECKTOR 2022 or 2025 dataset or a plain labels folder."""
    gt_dir = Path(gt_dir)
    if not gt_dir.is_dir():
        raise HecktorInputError(f"ground-truth folder not found: {gt_dir}")
    found: dict[str, Path] = {}
    for entry in sorted(gt_dir.iterdir()):
        if entry.is_dir() and entry.name.lower() in ("labelstr", "labelsts"):
            # HECKTOR 2022: labelsTr/<ID>.nii.gz
            for path in sorted(entry.iterdir()):
                case_id = _nifti_id(path)
                if case_id:
                    _add(found, case_id, path, "ground-truth")
        elif entry.is_dir():
            # HECKTOR 2025: <ID>/<ID>.nii.gz
            for suffix in _SUFFIXES:
                path = entry / f"{entry.name}{suffix}"
                if path.is_file():
                    _add(found, entry.name, path, "ground-truth")
        else:
            # the labels folder itself: <ID>.nii.gz, skipping CT/PET images
            case_id = _nifti_id(entry)
            if not case_id:
                continue
            hit = classify_file(entry)
            if hit is not None and hit[1] in ("ct", "pet"):
                continue
            _add(found, hit[0] if hit else case_id, entry, "ground-truth")
    if not found:
        raise HecktorInputError(
            f"no ground-truth labels found in {gt_dir}: expected labelsTr/<ID>.nii.gz "
            "(HECKTOR 2022), <ID>/<ID>.nii.gz (HECKTOR 2025) or <ID>.nii.gz files"
        )
    return found


def _describe(geometry: Geometry) -> str:
    text = geometry.describe()
    if not geometry.is_axis_aligned:
        text += " direction (" + ", ".join(f"{v:.3f}" for v in geometry.direction) + ")"
    return text


def _label_array(image: sitk.Image, *, what: str, case_id: str, path: Path) -> np.ndarray:
    array = sitk.GetArrayFromImage(image)
    check_label_values(array, source=f"case {case_id}: {what} {path.name}")
    return array.astype(np.uint8, copy=False)


def evaluate_folders_job(
    pred_dir: str | Path, gt_dir: str | Path
) -> ProgressJob[tuple[pd.DataFrame, dict[str, Any]]]:
    """Generator form of :func:`evaluate_folders`: yields one :class:`Progress` per case."""
    predictions = find_predictions(pred_dir)
    truths = find_ground_truth(gt_dir)
    ids = sorted(truths)
    rows: list[dict[str, Any]] = []
    counts: dict[str, list] = {name: [] for name in LABELS.values()}
    lesions = []
    hd95_undefined: dict[str, list[str]] = {name: [] for name in LABELS.values()}
    for done, case_id in enumerate(ids):
        yield Progress(done, len(ids), f"evaluating {case_id}")
        gt_path = truths[case_id]
        gt_image = read_image(gt_path, what="ground truth")
        gt = _label_array(gt_image, what="ground truth", case_id=case_id, path=gt_path)
        gt_geometry = Geometry.of(gt_image)
        pred_path = predictions.get(case_id)
        if pred_path is None:
            pred = np.zeros_like(gt)
        else:
            pred_image = read_image(pred_path, what="prediction")
            pred_geometry = Geometry.of(pred_image)
            if not pred_geometry.matches(gt_geometry, tol_mm=1e-3):
                raise HecktorInputError(
                    f"case {case_id}: prediction {pred_path.name} is not on the ground-truth "
                    f"grid: prediction is {_describe(pred_geometry)}, ground truth is "
                    f"{_describe(gt_geometry)}; resample it onto the CT grid"
                )
            pred = _label_array(pred_image, what="prediction", case_id=case_id, path=pred_path)
        spacing_zyx = gt_geometry.spacing[::-1]
        result = evaluate_case(pred, gt, spacing_zyx)
        rows.append({"PatientID": case_id, **{c: result[c] for c in COLUMNS[1:]}})
        for name in LABELS.values():
            counts[name].append(result[f"counts_{name}"])
            if result[f"status_{name}"] in ("pred_empty", "truth_empty"):
                hd95_undefined[name].append(case_id)
        lesions.append(result["lesions_GTVn"])
    yield Progress(len(ids), len(ids), "done")
    table = pd.DataFrame(rows, columns=COLUMNS)
    for column in ("TP_GTVn", "FP_GTVn", "FN_GTVn"):
        table[column] = table[column].astype(int)
    aggregate: dict[str, Any] = {
        "DSCagg_GTVp": dsc_agg(counts["GTVp"]),
        "DSCagg_GTVn": dsc_agg(counts["GTVn"]),
        "F1agg_GTVn": f1_agg(lesions),
        "n_cases": len(ids),
        "missing_predictions": [i for i in ids if i not in predictions],
        "unmatched_predictions": sorted(i for i in predictions if i not in truths),
        "HD95_undefined_GTVp": hd95_undefined["GTVp"],
        "HD95_undefined_GTVn": hd95_undefined["GTVn"],
    }
    return table, aggregate


def evaluate_folders(
    pred_dir: str | Path, gt_dir: str | Path
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per-case metrics table (:data:`COLUMNS`, sorted by ID) and the aggregate figures.

    The aggregate dict holds ``DSCagg_GTVp``, ``DSCagg_GTVn``, ``F1agg_GTVn`` and ``n_cases``,
    plus lists: ``missing_predictions`` (scored as empty), ``unmatched_predictions``
    (ignored) and ``HD95_undefined_GTVp`` / ``_GTVn`` (one mask empty, HD95 NaN).
    Nothing is written anywhere.
    """
    return run_to_end(evaluate_folders_job(pred_dir, gt_dir))


def _fmt(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.4f}"


def _ids(ids: list[str], limit: int = 10) -> str:
    shown = ", ".join(ids[:limit])
    return shown + (f", ... ({len(ids) - limit} more)" if len(ids) > limit else "")


def format_aggregate(agg: dict[str, Any]) -> str:
    """Human-readable summary of :func:`evaluate_folders`' aggregate dict (several lines)."""
    lines = [
        f"cases evaluated: {agg['n_cases']}",
        f"DSCagg_GTVp: {_fmt(agg['DSCagg_GTVp'])}",
        f"DSCagg_GTVn: {_fmt(agg['DSCagg_GTVn'])}",
        f"F1agg_GTVn:  {_fmt(agg['F1agg_GTVn'])}  (lesion IoU > 0.3, one-to-one)",
    ]
    missing = agg.get("missing_predictions") or []
    if missing:
        lines.append(f"missing predictions, scored as empty ({len(missing)}): {_ids(missing)}")
    unmatched = agg.get("unmatched_predictions") or []
    if unmatched:
        lines.append(
            f"predictions without ground truth, ignored ({len(unmatched)}): {_ids(unmatched)}"
        )
    for name in LABELS.values():
        undefined = agg.get(f"HD95_undefined_{name}") or []
        if undefined:
            lines.append(
                f"HD95 {name} undefined, one mask empty ({len(undefined)}): {_ids(undefined)}"
            )
    return "\n".join(lines)


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
    except ValueError:
        return False
    return True


def evaluate_command(
    pred_dir: str | Path,
    gt_dir: str | Path,
    out_csv: str | Path | None = None,
    *,
    progress: Callable[[Progress], None] | None = None,
) -> dict[str, Any]:
    """Evaluate ``pred_dir`` against ``gt_dir``; write the per-case CSV to ``out_csv`` if given.

    Returns the aggregate dict plus ``table`` (the per-case DataFrame) and ``csv`` (the
    written path or None). Refuses, before any work, to write the CSV inside either input
    folder. ``progress`` is an optional callback taking a :class:`Progress`.
    """
    target: Path | None = None
    if out_csv is not None:
        target = Path(out_csv).resolve()
        for folder in (Path(pred_dir), Path(gt_dir)):
            if folder.exists() and _inside(target, folder.resolve()):
                raise HecktorInputError(
                    f"refusing to write {out_csv} inside the input folder {folder}; "
                    "choose a path outside the prediction and ground-truth folders"
                )
    table, aggregate = run_to_end(evaluate_folders_job(pred_dir, gt_dir), progress)
    result: dict[str, Any] = {**aggregate, "table": table, "csv": None}
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".hecktor-", suffix=".csv", dir=target.parent)
        os.close(fd)
        try:
            table.to_csv(tmp, index=False, na_rep="NaN")
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        result["csv"] = str(target)
    return result
