"""Learned state as plain data: the contract between the estimators and persistence.

Every estimator of :mod:`napari_hecktor.outcome` keeps what it learned in plain numbers
(numpy arrays and JSON scalars) and predicts from those alone. ``_get_state()`` returns
``(meta, arrays)``: ``meta`` a JSON-able dict, ``arrays`` a dict of numpy arrays (numeric,
never object dtype); ``_set_state(meta, arrays)`` restores a fitted estimator from them.
Because the live estimator predicts from exactly the arrays it saves, a model loaded
from disk predicts bit for bit what it predicted before saving.

Classes register under a stable name; loading looks names up in this registry only,
so a model file can never make Python import or run anything else.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

REGISTRY: dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: make ``cls`` loadable under its class name."""
    REGISTRY[cls.__name__] = cls
    return cls


def sub_state(prefix: str, meta: dict, arrays: dict) -> tuple[dict, dict]:
    """Namespace a nested state under ``prefix`` (for composition)."""
    return {prefix: meta}, {f"{prefix}/{k}": v for k, v in arrays.items()}


def take_sub(prefix: str, meta: dict, arrays: dict) -> tuple[dict, dict]:
    """Inverse of :func:`sub_state`."""
    head = prefix + "/"
    return meta[prefix], {k[len(head) :]: v for k, v in arrays.items() if k.startswith(head)}


def plain(value: Any) -> Any:
    """A JSON-able copy of a value: tuples become lists, numpy scalars numbers, NaN None."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    return value


class StateMixin:
    """Default persistence hooks; estimators override ``_get_state``/``_set_state``."""

    def _get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:  # pragma: no cover
        raise NotImplementedError

    def _set_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        raise NotImplementedError  # pragma: no cover
