"""Saving and loading fitted outcome models as JSON + npz: no pickle, no code on load.

A model is written as two files next to each other:

- ``<name>.json``: the format tag and version, library versions, the estimator tree
  (class name from a fixed registry, constructor parameters, nested estimators and
  the learned scalars), the input schema (columns, kind, categories) and free
  ``extra`` data (metrics, risk-group cut-off, Kaplan-Meier curves...).
- ``<name>.npz``: every learned array (imputer statistics, scaler mean/scale, Cox
  coefficients and baseline hazard, tree nodes and leaf values, network weights),
  keyed by its path in the estimator tree, read with ``allow_pickle=False``.

Loading builds each estimator from the registry (:mod:`._state`) with its parameters
and restores the arrays; the estimators predict from those arrays only, so loaded
predictions equal the saved model's bit for bit. A file naming a class outside the
registry, a different format, or a newer format version is refused.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from napari_hecktor.errors import HecktorInputError

from ._state import REGISTRY, plain

FORMAT = "napari-hecktor-outcome-model"
FORMAT_VERSION = 1


def _ensure_registry() -> None:
    # importing the modules registers their classes
    from . import deepsurv, encoding, hpv, survival  # noqa: F401


def _is_estimator(value: Any) -> bool:
    return hasattr(value, "get_params") and hasattr(value, "fit")


def estimator_to_state(est, fitted: bool = True) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(meta, arrays) of a fitted estimator tree.

    Pipeline steps are fitted estimators; other estimator-valued parameters (templates
    such as ``HPVStack(classifier=...)``) are saved as parameters only
    (``fitted=False``): their fitted copies belong to the owner's state.
    """
    _ensure_registry()
    cls = type(est).__name__
    if REGISTRY.get(cls) is not type(est):
        raise HecktorInputError(f"{cls} cannot be saved (not an outcome-model class).")
    params = est.get_params(deep=False)
    meta_params: dict[str, Any] = {}
    children: dict[str, Any] = {}
    arrays: dict[str, np.ndarray] = {}
    for key, value in params.items():
        if key == "steps":
            steps = []
            for i, (name, step) in enumerate(value):
                sub_meta, sub_arrays = estimator_to_state(step)
                steps.append({"name": name, "estimator": sub_meta})
                arrays.update({f"steps/{i}/{k}": v for k, v in sub_arrays.items()})
            children["steps"] = steps
        elif _is_estimator(value):
            sub_meta, sub_arrays = estimator_to_state(value, fitted=False)
            children[key] = sub_meta
            arrays.update({f"{key}/{k}": v for k, v in sub_arrays.items()})
        else:
            meta_params[key] = plain(value)
    if not fitted:
        return {"class": cls, "params": meta_params, "children": children, "state": None}, arrays
    state_meta, state_arrays = est._get_state()
    for k, v in state_arrays.items():
        v = np.asarray(v)
        if v.dtype == object:
            raise TypeError(f"{cls} state array {k!r} has object dtype")
        arrays[f"state/{k}"] = v
    meta = {"class": cls, "params": meta_params, "children": children, "state": plain(state_meta)}
    return meta, arrays


def _sub(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    head = prefix + "/"
    return {k[len(head) :]: v for k, v in arrays.items() if k.startswith(head)}


def estimator_from_state(meta: dict[str, Any], arrays: dict[str, np.ndarray]):
    """Rebuild an estimator tree from :func:`estimator_to_state` output."""
    _ensure_registry()
    cls = REGISTRY.get(meta.get("class", ""))
    if cls is None:
        raise HecktorInputError(
            f"The model file names an unknown model class {meta.get('class')!r}; "
            f"it was not written by this version of napari-hecktor."
        )
    params = dict(meta.get("params", {}))
    for key, child in meta.get("children", {}).items():
        if key == "steps":
            params["steps"] = [
                (s["name"], estimator_from_state(s["estimator"], _sub(arrays, f"steps/{i}")))
                for i, s in enumerate(child)
            ]
        else:
            params[key] = estimator_from_state(child, _sub(arrays, key))
    est = cls(**params)
    if meta.get("state") is not None:
        est._set_state(meta["state"], _sub(arrays, "state"))
    return est


def _versions() -> dict[str, str]:
    import sklearn

    from napari_hecktor import __version__

    return {
        "napari_hecktor": __version__,
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
    }


def save_model(est, stem: str | Path, *, schema: dict | None = None, extra: dict | None = None):
    """Write ``<stem>.json`` and ``<stem>.npz``; returns the JSON path."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    meta, arrays = estimator_to_state(est)
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "versions": _versions(),
        "schema": plain(schema or {}),
        "extra": plain(extra or {}),
        "estimator": meta,
        "arrays": sorted(arrays),
    }
    json_path = stem.with_suffix(".json")
    npz_path = stem.with_suffix(".npz")
    np.savez_compressed(npz_path, **arrays)
    json_path.write_text(json.dumps(doc, indent=1, allow_nan=False), encoding="utf-8")
    return json_path


def read_model_json(stem: str | Path) -> dict[str, Any]:
    path = Path(stem).with_suffix(".json")
    if not path.is_file():
        raise HecktorInputError(f"Model file {path} does not exist.")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HecktorInputError(f"Model file {path} is not valid JSON ({exc}).") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise HecktorInputError(f"{path} is not a napari-hecktor outcome model file.")
    if int(doc.get("format_version", 0)) > FORMAT_VERSION:
        raise HecktorInputError(
            f"{path} was written by a newer napari-hecktor (format "
            f"{doc.get('format_version')}); update the plugin to read it."
        )
    return doc


def load_model(stem: str | Path):
    """(estimator, document) from ``<stem>.json`` + ``<stem>.npz``."""
    doc = read_model_json(stem)
    npz_path = Path(stem).with_suffix(".npz")
    if not npz_path.is_file():
        raise HecktorInputError(f"Model arrays {npz_path} are missing next to the JSON file.")
    try:
        with np.load(npz_path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (ValueError, OSError) as exc:
        raise HecktorInputError(f"Cannot read model arrays {npz_path} ({exc}).") from None
    missing = [k for k in doc.get("arrays", []) if k not in arrays]
    if missing:
        raise HecktorInputError(f"{npz_path} lacks {len(missing)} array(s), e.g. {missing[0]!r}.")
    return estimator_from_state(doc["estimator"], arrays), doc


def check_table(
    table,
    schema: dict[str, Any],
    *,
    strict_features: bool = True,
    feature_columns=None,
    known_features=(),
    what: str = "model",
) -> None:
    """Refuse a table that lacks a schema column or carries unknown feature columns.

    ``feature_columns``: the columns of the table that look like features (e.g. by the
    spec's prefix rule); those neither in the schema nor in ``known_features`` (the
    features of the training table) are refused when ``strict_features``. Numeric
    schema columns holding text are refused by name.
    """
    from .encoding import numeric_matrix

    cols = [c for c, s in schema.items() if s.get("role") != "stacked"]
    missing = [c for c in cols if c not in table.columns]
    if missing:
        raise HecktorInputError(
            f"The table lacks column {', '.join(repr(c) for c in missing)} that the {what} "
            f"was trained with."
        )
    if strict_features and feature_columns is not None:
        known = set(schema) | set(known_features)
        extra = [c for c in feature_columns if c not in known]
        if extra:
            raise HecktorInputError(
                f"The table has feature column {', '.join(repr(c) for c in extra[:5])}"
                f"{' and more' if len(extra) > 5 else ''} that the {what} was not trained "
                f"with; use the same feature extraction or drop them."
            )
    numeric = [c for c in cols if schema[c].get("kind") == "numeric"]
    if numeric:
        numeric_matrix(table, numeric)


def finite_or_none(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x
