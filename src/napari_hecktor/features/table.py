"""One case's full feature row (PET metrics + radiomics + deep features) and the CSV table.

``case_features_iter`` is the one function that the CLI (``hecktor features``), the
widgets and the batch runner call; ``case_features`` runs it to the end. Column order:
``PatientID``, the PET metrics (:mod:`.pet_metrics`), the radiomics
(:mod:`.radiomics`: structure, then modality, then pyradiomics' order), then
``deep_0000 ...`` when a model is given.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Generator, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..errors import HecktorInputError
from ..progress import Progress, run_to_end
from .pet_metrics import pet_metrics
from .radiomics import check_mask, radiomics_iter


def _resolve_model(model: Any, device: Any) -> tuple[Any, Any] | None:
    """None, a model folder / bundled name, or a ``(network, ModelCard)`` pair."""
    if model is None:
        return None
    if isinstance(model, (str, Path)):
        from ..models.card import load_model

        return load_model(model, device=device)
    if isinstance(model, Sequence) and len(model) == 2:
        return model[0], model[1]
    raise HecktorInputError(
        "model must be a model folder, a bundled model name or a (network, card) pair"
    )


def case_features_iter(
    case: Any,
    labels: sitk.Image | np.ndarray | None = None,
    *,
    params: str | Path | Mapping[str, Any] | None = None,
    model: Any = None,
    workers: int | None = None,
    mtv_threshold: float | str | None = None,
    device: Any = "cpu",
) -> Generator[Progress, None, dict[str, Any]]:
    """Every feature of ``case`` as one flat dict, as a progress generator.

    ``labels``: GTVp/GTVn mask on the CT grid (default the case's label). ``params``:
    radiomics parameter file (default the shipped one). ``model``: a model folder,
    bundled model name or ``(network, card)`` pair for deep features (default none).
    ``mtv_threshold``: see :func:`~.pet_metrics.pet_metrics`. Inputs are checked, the
    model loaded, before this returns.
    """
    if labels is None:
        labels = case.label
    label_image = check_mask(labels, case.ct)
    radiomics_job = radiomics_iter(case, label_image, params=params, workers=workers)
    resolved = _resolve_model(model, device)
    if resolved is not None and case.pet is None:
        raise HecktorInputError(f"case {case.case_id} has no PET: deep features need PET and CT")
    return _case_job(case, label_image, radiomics_job, resolved, mtv_threshold, device)


def case_features(case: Any, labels: Any = None, **kwargs: Any) -> dict[str, Any]:
    """:func:`case_features_iter` run to the end."""
    return run_to_end(case_features_iter(case, labels, **kwargs))


def _case_job(
    case: Any,
    labels: sitk.Image,
    radiomics_job: Generator[Progress, None, dict[str, float]],
    model: tuple[Any, Any] | None,
    mtv_threshold: float | str | None,
    device: Any,
) -> Generator[Progress, None, dict[str, Any]]:
    try:
        # cheap: it says how many radiomics steps there are, and starts the worker
        # processes on them, so that the PET metrics below run while they work
        first = next(radiomics_job)
        total = 1 + first.total + (model is not None)
        row: dict[str, Any] = {"PatientID": case.case_id}
        row.update(pet_metrics(
            case.pet_array(), case.ct_array(), sitk.GetArrayViewFromImage(labels),
            case.geometry.spacing[::-1], mtv_threshold=mtv_threshold,
        ))
        yield Progress(1, total, "PET metrics done")
        while True:
            try:
                p = next(radiomics_job)
            except StopIteration as stop:
                row.update(stop.value)
                break
            yield Progress(1 + p.done, total, p.message)
        if model is not None:
            from .deep import deep_features

            network, card = model
            row.update(deep_features(case, network, card, device, labels=labels))
            yield Progress(total, total, "deep features done")
    finally:
        radiomics_job.close()  # on Cancel: stops its worker processes
    return row


def write_features_csv(
    rows: Iterable[Mapping[str, Any]],
    path: str | Path,
    *,
    protected: Iterable[str | Path] = (),
) -> Path:
    """Write feature rows as CSV (one row per case; NaN written as ``NaN``), atomically.

    Columns: the union over rows in order of first appearance, ``PatientID`` first; a
    missing value is NaN. Refuses a path that is one of ``protected`` (the input files)
    or not ``.csv``. Writes a temporary file beside the target, then renames it.
    """
    import pandas as pd

    rows = [dict(r) for r in rows]
    if not rows:
        raise HecktorInputError("no feature rows to write")
    path = Path(path)
    if path.suffix.lower() != ".csv":
        raise HecktorInputError(f"cannot write features to {path.name}: use a .csv file name")
    target = path.resolve()
    for p in protected:
        if p and Path(p).exists() and Path(p).resolve() == target:
            raise HecktorInputError(
                f"refusing to overwrite the input file {path}; choose another file name"
            )
    if target.is_dir():
        raise HecktorInputError(f"{path} is a folder; give a .csv file name")
    table = pd.DataFrame(rows)
    if "PatientID" in table.columns:
        table = table[["PatientID", *[c for c in table.columns if c != "PatientID"]]]
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".hecktor-", suffix=".csv", dir=target.parent)
    os.close(fd)
    try:
        table.to_csv(tmp, index=False, na_rep="NaN")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target
