"""The outcome models, one pipeline each, built from a resolved :class:`OutcomeSpec`.

Survival (``predict`` = risk score):

- ``cox_clinical``: clinical covariates -> univariate Cox screening -> CoxPH (Efron).
  The reference the other models are compared with.
- ``cox``: seed 004's CoxPH integration: HPV probability (random forest, out-of-fold on
  the training rows) + clinical + image features -> encoding -> predicted survival time
  of the discrete-time model (out-of-fold) -> screening / LASSO / Spearman -> CoxPH.
- ``rsf``: encoding -> random survival forest.
- ``deepsurv``: encoding -> DeepSurv.
- ``discrete``: encoding -> discrete-time neural survival model.

HPV: ``hpv_rf``: encoding -> SMOTE -> random forest (imbalanced-learn pipeline, grid and
threshold chosen on inner folds).

Every model is a single estimator cloned and fitted inside each CV fold, so every
imputation, encoding, selection, resampling and stacking step sees training rows only.
``options`` tunes sizes (tests and quick runs use small ones):
``rsf_trees``, ``rsf_min_leaf``, ``hpv_trees``, ``hpv_grid``, ``epochs``, ``cox_penalizer``,
``stack_cv``, ``n_intervals``.
"""

from __future__ import annotations

from typing import Any

from .deepsurv import DeepSurv, DiscreteTimeSurvival, TimeStack
from .encoding import TablePreprocessor
from .hpv import HPVClassifier, HPVStack
from .spec import OutcomeSpec
from .survival import CoxPH, CoxSelector, OutcomePipeline, RandomSurvival

SURVIVAL_MODELS = ("cox_clinical", "cox", "rsf", "deepsurv", "discrete")

DEFAULT_OPTIONS: dict[str, Any] = {
    "rsf_trees": 100,
    "rsf_min_leaf": 10,
    "hpv_trees": 200,
    "hpv_grid": None,  # None: hpv.DEFAULT_GRID
    "stack_hpv_trees": 100,
    "epochs": 300,
    "cox_penalizer": 0.01,
    "stack_cv": 3,
    "n_intervals": 10,
}


def _opts(options: dict[str, Any] | None) -> dict[str, Any]:
    out = dict(DEFAULT_OPTIONS)
    if options:
        unknown = [k for k in options if k not in DEFAULT_OPTIONS]
        if unknown:
            raise ValueError(f"unknown model option(s): {unknown}")
        out.update(options)
    return out


def _prep(spec: OutcomeSpec, *, features: bool = True, stack=()) -> TablePreprocessor:
    return TablePreprocessor(
        numeric=list(spec.numeric),
        categorical=list(spec.categorical),
        features=list(spec.feature_columns) if features else [],
        stack=list(stack),
        imputer=spec.imputer,
    )


def hpv_model(spec: OutcomeSpec, seed: int = 0, options=None, *, stacked: bool = False):
    o = _opts(options)
    return HPVClassifier(
        numeric=list(spec.numeric),
        categorical=list(spec.categorical),
        features=list(spec.feature_columns),
        imputer=spec.imputer,
        n_estimators=o["stack_hpv_trees"] if stacked else o["hpv_trees"],
        grid={} if stacked else o["hpv_grid"],
        threshold=0.5 if stacked else "auto",
        random_state=seed,
    )


def survival_model(name: str, spec: OutcomeSpec, seed: int = 0, options=None) -> OutcomePipeline:
    o = _opts(options)
    if name == "cox_clinical":
        return OutcomePipeline(
            [
                ("prep", _prep(spec, features=False)),
                ("select", CoxSelector(lasso=False, random_state=seed)),
                ("cox", CoxPH(penalizer=o["cox_penalizer"])),
            ]
        )
    if name == "cox":
        steps: list = []
        stack = []
        if spec.hpv:
            steps.append(
                (
                    "hpv",
                    HPVStack(
                        hpv_model(spec, seed, options, stacked=True),
                        target=spec.hpv,
                        positive=list(spec.hpv_positive),
                        negative=list(spec.hpv_negative),
                        cv=o["stack_cv"],
                        random_state=seed,
                    ),
                )
            )
            stack = ["hpv_prob"]
        steps += [
            ("prep", _prep(spec, stack=stack)),
            (
                "time",
                TimeStack(
                    DiscreteTimeSurvival(
                        n_intervals=o["n_intervals"], epochs=o["epochs"], random_state=seed
                    ),
                    cv=o["stack_cv"],
                    random_state=seed,
                ),
            ),
            ("select", CoxSelector(random_state=seed)),
            ("cox", CoxPH(penalizer=o["cox_penalizer"])),
        ]
        return OutcomePipeline(steps)
    if name == "rsf":
        return OutcomePipeline(
            [
                ("prep", _prep(spec)),
                (
                    "rsf",
                    RandomSurvival(
                        n_estimators=o["rsf_trees"],
                        min_samples_leaf=o["rsf_min_leaf"],
                        random_state=seed,
                    ),
                ),
            ]
        )
    if name == "deepsurv":
        return OutcomePipeline(
            [
                ("prep", _prep(spec)),
                ("deepsurv", DeepSurv(epochs=o["epochs"], random_state=seed)),
            ]
        )
    if name == "discrete":
        return OutcomePipeline(
            [
                ("prep", _prep(spec)),
                (
                    "discrete",
                    DiscreteTimeSurvival(
                        n_intervals=o["n_intervals"], epochs=o["epochs"], random_state=seed
                    ),
                ),
            ]
        )
    raise ValueError(f"unknown survival model {name!r} (known: {', '.join(SURVIVAL_MODELS)})")


def input_schema(model) -> dict[str, Any]:
    """Input columns (kind, categories) of every preprocessor inside ``model``."""
    schema: dict[str, Any] = {}

    def visit(est):
        if isinstance(est, TablePreprocessor):
            for k, v in est.schema().items():
                if v.get("role") != "stacked":
                    schema.setdefault(k, v)
        elif isinstance(est, HPVClassifier):
            visit(est.prep_)
        elif isinstance(est, HPVStack):
            if est.model_ is not None:
                visit(est.model_)
        elif isinstance(est, TimeStack):
            visit(est.model_)
        elif hasattr(est, "steps"):
            for _, s in est.steps:
                visit(s)

    visit(model)
    return schema
