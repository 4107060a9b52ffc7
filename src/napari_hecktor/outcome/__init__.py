"""Outcome prediction: clinical encoding, HPV classifier, survival models, persistence.

Light to import: the heavy libraries (scikit-survival, lifelines, imbalanced-learn,
torch) load when a model is fitted or evaluated. The cohort-level entry points:

- :func:`train_outcome` / :func:`train_outcome_job` (progress generator)
- :func:`predict_outcome`, :func:`predict_case`, :func:`km_training_curves`
- :func:`join_tables`, :func:`load_spec`, :func:`default_spec`

See ``docs/outcome.md``.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "train_outcome": "train",
    "train_outcome_job": "train",
    "predict_outcome": "train",
    "predict_case": "train",
    "km_training_curves": "train",
    "load_bundle": "train",
    "model_inputs": "train",
    "join_tables": "spec",
    "load_spec": "spec",
    "default_spec": "spec",
    "OutcomeSpec": "spec",
    "save_model": "persistence",
    "load_model": "persistence",
    "corrected_resampled_ttest": "evaluation",
    "harrell_c": "evaluation",
    "synthetic_outcome_table": "synthetic",
    "DEMO_MODEL_DIR": "demo",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
