"""HPV status classifier (seed 004, section 2.4) and its use as a stacked survival input.

:class:`HPVClassifier` is an imbalanced-learn ``Pipeline``: the table preprocessor, SMOTE
and a scikit-learn random forest, so that SMOTE only ever sees training rows (inside
every CV fold, inner and outer). Hyperparameters (tree depth, minimum leaf size) are
chosen by balanced accuracy over a small grid with inner stratified CV; the decision
threshold is the one that maximises balanced accuracy on the out-of-fold
probabilities of the training rows (inner folds), never on the rows being evaluated.
The final forest is refitted on all training rows and frozen to arrays.

:class:`HPVStack` appends the HPV probability to a patient table as ``hpv_prob`` for the
CoxPH integration (out-of-fold on the training rows).
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin, clone

from napari_hecktor.errors import HecktorInputError

from ._state import StateMixin, register
from .encoding import TablePreprocessor

DEFAULT_GRID = {"max_depth": [None, 6], "min_samples_leaf": [1, 5]}


def best_threshold(y: np.ndarray, prob: np.ndarray) -> float:
    """The probability cut that maximises balanced accuracy (ties: the one nearest 0.5)."""
    y = np.asarray(y, dtype=int)
    prob = np.asarray(prob, dtype=float)
    cand = np.unique(prob)
    if cand.size < 2 or y.min() == y.max():
        return 0.5
    cuts = np.concatenate([(cand[:-1] + cand[1:]) / 2.0, [0.5]])
    pos, neg = y == 1, y == 0
    best, best_cut = -1.0, 0.5
    for c in cuts:
        pred = prob >= c
        bacc = 0.5 * (pred[pos].mean() + (~pred[neg]).mean())
        if bacc > best + 1e-12 or (
            abs(bacc - best) <= 1e-12 and abs(c - 0.5) < abs(best_cut - 0.5)
        ):
            best, best_cut = bacc, float(c)
    return best_cut


@register
class HPVClassifier(StateMixin, ClassifierMixin, BaseEstimator):
    """Random forest on clinical + image features with SMOTE inside the training folds.

    ``y``: 1 HPV-positive, 0 negative. ``grid`` maps RandomForestClassifier parameters to
    candidate lists (None: :data:`DEFAULT_GRID`; ``{}``: no search). ``threshold``:
    ``"auto"`` (chosen on inner out-of-fold probabilities) or a fixed number.
    """

    def __init__(
        self,
        numeric=(),
        categorical=(),
        features=(),
        imputer="median",
        n_estimators=200,
        grid=None,
        inner_folds=3,
        smote=True,
        threshold="auto",
        random_state=0,
    ):
        self.numeric = numeric
        self.categorical = categorical
        self.features = features
        self.imputer = imputer
        self.n_estimators = n_estimators
        self.grid = grid
        self.inner_folds = inner_folds
        self.smote = smote
        self.threshold = threshold
        self.random_state = random_state

    def _pipeline(self, k_neighbors: int):
        from imblearn.over_sampling import SMOTE
        from imblearn.pipeline import Pipeline as ImbPipeline
        from sklearn.ensemble import RandomForestClassifier

        steps = [
            (
                "prep",
                TablePreprocessor(
                    self.numeric, self.categorical, self.features, imputer=self.imputer
                ),
            ),
        ]
        if self.smote and k_neighbors >= 1:
            steps.append(("smote", SMOTE(k_neighbors=k_neighbors, random_state=self.random_state)))
        steps.append(
            (
                "rf",
                RandomForestClassifier(
                    n_estimators=self.n_estimators, random_state=self.random_state, n_jobs=1
                ),
            )
        )
        return ImbPipeline(steps)

    def fit(self, X: pd.DataFrame, y):
        from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_predict

        y = np.asarray(y, dtype=int)
        counts = np.bincount(y, minlength=2)
        if counts.min() < 3:
            raise HecktorInputError(
                f"HPV classifier: too few patients of one class ({counts[1]} positive, "
                f"{counts[0]} negative); at least 3 of each are needed."
            )
        folds = int(min(self.inner_folds, counts.min()))
        minority_inner = int(np.floor(counts.min() * (folds - 1) / folds)) if folds >= 2 else 0
        k = int(min(5, minority_inner - 1, counts.min() - 1))
        pipe = self._pipeline(k)
        grid = DEFAULT_GRID if self.grid is None else self.grid
        best: dict = {}
        combos = list(itertools.product(*grid.values())) if grid else [()]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=UserWarning)
            if folds >= 2:
                cv = StratifiedKFold(folds, shuffle=True, random_state=self.random_state)
                if len(combos) > 1:
                    search = GridSearchCV(
                        pipe,
                        {f"rf__{p}": list(v) for p, v in grid.items()},
                        scoring="balanced_accuracy",
                        cv=cv,
                        n_jobs=1,
                        refit=False,
                    )
                    search.fit(X, y)
                    best = {p[4:]: v for p, v in search.best_params_.items()}
                    self.cv_balanced_accuracy_ = float(search.best_score_)
                elif grid:
                    best = {p: v[0] for p, v in grid.items()}
                pipe.set_params(**{f"rf__{p}": v for p, v in best.items()})
                if self.threshold == "auto":
                    oof = cross_val_predict(pipe, X, y, cv=cv, method="predict_proba")[:, 1]
                    self.threshold_ = best_threshold(y, oof)
                    self.oof_prob_ = oof
            if self.threshold != "auto" or folds < 2:
                self.threshold_ = 0.5 if self.threshold == "auto" else float(self.threshold)
            pipe.fit(X, y)
        self.best_params_ = {p: (None if v is None else v) for p, v in best.items()}
        self.prep_ = pipe.named_steps["prep"]
        rf = pipe.named_steps["rf"]
        self.classes_ = np.array([0, 1])
        if list(rf.classes_) != [0, 1]:  # pragma: no cover - guarded by the count check
            raise HecktorInputError("HPV classifier needs both classes in training.")
        from .trees import forest_arrays

        def leaf_value(t):
            v = t.value[:, 0, :].astype(np.float64)
            s = v.sum(axis=1, keepdims=True)
            return v / np.where(s == 0, 1.0, s)

        self.forest_ = forest_arrays(rf.estimators_, leaf_value)
        self.sklearn_pipeline_ = pipe  # for checks; not persisted
        return self

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        from .trees import forest_mean

        Xt = self.prep_.transform(X).to_numpy(dtype=np.float64)
        return forest_mean(self.forest_, Xt)

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return (self.predict_proba(X)[:, 1] >= self.threshold_).astype(int)

    def schema(self):
        return self.prep_.schema()

    def _get_state(self):
        prep_meta, prep_arrays = self.prep_._get_state()
        arrays = {f"prep/{k}": v for k, v in prep_arrays.items()}
        arrays.update({f"forest_{k}": v for k, v in self.forest_.items()})
        meta = {"prep": prep_meta, "threshold": self.threshold_, "best_params": self.best_params_}
        return meta, arrays

    def _set_state(self, meta, arrays):
        self.prep_ = TablePreprocessor(
            self.numeric, self.categorical, self.features, imputer=self.imputer
        )
        self.prep_._set_state(
            meta["prep"], {k[5:]: v for k, v in arrays.items() if k.startswith("prep/")}
        )
        self.forest_ = {k[7:]: v for k, v in arrays.items() if k.startswith("forest_")}
        self.threshold_ = meta["threshold"]
        self.best_params_ = meta["best_params"]
        self.classes_ = np.array([0, 1])


@register
class HPVStack(StateMixin, TransformerMixin, BaseEstimator):
    """Append the predicted HPV probability (``hpv_prob``) to a raw patient table.

    The labels come from ``target`` in the table (``positive``/``negative`` values); rows
    without a label are never used to fit. ``fit_transform`` gives labelled training
    rows out-of-fold probabilities (``cv`` folds), ``transform`` the full model's.
    """

    def __init__(
        self,
        classifier=None,
        target="HPV Status",
        positive=(1,),
        negative=(0,),
        cv=3,
        random_state=0,
    ):
        self.classifier = classifier
        self.target = target
        self.positive = positive
        self.negative = negative
        self.cv = cv
        self.random_state = random_state

    def _labels(self, X: pd.DataFrame) -> np.ndarray:
        from .spec import _matches

        pos = _matches(X[self.target], tuple(self.positive))
        neg = _matches(X[self.target], tuple(self.negative)) & ~pos
        return np.where(pos, 1.0, np.where(neg, 0.0, np.nan))

    def _clf(self):
        if self.classifier is None:
            return HPVClassifier(grid={}, threshold=0.5)
        return clone(self.classifier)

    def fit(self, X, y=None):
        self.fit_transform(X, y)
        return self

    def fit_transform(self, X, y=None, **params):
        from sklearn.model_selection import StratifiedKFold

        if self.target not in X.columns:
            raise HecktorInputError(f"The table has no HPV column '{self.target}'.")
        lab = self._labels(X)
        known = ~np.isnan(lab)
        yk = lab[known].astype(int)
        counts = np.bincount(yk, minlength=2)
        prob = np.full(len(X), np.nan)
        self.constant_ = None
        if counts.min() < 6:
            self.model_ = None
            self.constant_ = float(yk.mean()) if yk.size else 0.5
            return self._append(X, np.full(len(X), self.constant_))
        Xk = X.loc[known]
        folds = int(min(self.cv, counts.min() // 3))
        oof = np.full(len(Xk), np.nan)
        if folds >= 2:
            cv = StratifiedKFold(folds, shuffle=True, random_state=self.random_state)
            for tr, te in cv.split(Xk, yk):
                m = self._clf().fit(Xk.iloc[tr], yk[tr])
                oof[te] = m.predict_proba(Xk.iloc[te])[:, 1]
        self.model_ = self._clf().fit(Xk, yk)
        full = self.model_.predict_proba(X)[:, 1]
        prob[known] = np.where(np.isnan(oof), full[known], oof)
        prob[~known] = full[~known]
        return self._append(X, prob)

    def transform(self, X):
        if self.model_ is None:
            return self._append(X, np.full(len(X), self.constant_))
        return self._append(X, self.model_.predict_proba(X)[:, 1])

    @staticmethod
    def _append(X: pd.DataFrame, prob: np.ndarray) -> pd.DataFrame:
        out = X.copy()
        out["hpv_prob"] = prob
        return out

    def _get_state(self):
        from .persistence import estimator_to_state

        if self.model_ is None:
            return {"model": None, "constant": self.constant_}, {}
        meta, arrays = estimator_to_state(self.model_)
        return {"model": meta, "constant": None}, {f"model/{k}": v for k, v in arrays.items()}

    def _set_state(self, meta, arrays):
        from .persistence import estimator_from_state

        self.constant_ = meta["constant"]
        if meta["model"] is None:
            self.model_ = None
        else:
            sub = {k[6:]: v for k, v in arrays.items() if k.startswith("model/")}
            self.model_ = estimator_from_state(meta["model"], sub)
