"""Clinical and feature encoding, fitted on training rows only and frozen with the model.

:class:`TablePreprocessor` is the first step of every outcome pipeline. It fits a
scikit-learn ``ColumnTransformer`` (numeric columns: ``SimpleImputer(median)`` or
``IterativeImputer`` then ``StandardScaler``; categorical columns:
``OneHotEncoder(handle_unknown="ignore")``) on the training rows, then freezes what
it learned as arrays (imputer statistics, the imputer's regression sequence, scaler
mean/scale, encoder categories) and transforms from those arrays alone, so that a
model saved as JSON + npz transforms exactly as the live one.

Codings:

- Missing categorical cells become their own category ``"missing"``.
- Each categorical variable drops its most frequent training category (the reference
  level, needed by the Cox model, which has no intercept). A category never seen in
  training (a new centre's treatment name, a typo) therefore encodes like the
  reference level: handled, not fatal.
- Output columns are named ``clin:<column>``, ``clin:<column>=<category>``,
  ``feat:<column>`` (image-derived features) and ``stack:<column>`` (predictions of an
  earlier model, such as the HPV probability); the selection steps use these prefixes.
- Columns constant on the training rows are dropped.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin

from napari_hecktor.errors import HecktorInputError

from ._state import StateMixin, register

MISSING = "missing"


def category_string(value: Any) -> str:
    """Canonical text of a categorical cell: numbers without a trailing ``.0``, NaN -> missing."""
    if value is None or value is pd.NA or value is pd.NaT:
        return MISSING
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return MISSING
        return str(int(value)) if float(value).is_integer() else repr(float(value))
    text = str(value).strip()
    return text if text else MISSING


def numeric_matrix(table: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """Float matrix of ``columns``; text that is not a number is refused by name."""
    out = np.empty((len(table), len(columns)), dtype=np.float64)
    for j, col in enumerate(columns):
        series = table[col]
        if pd.api.types.is_bool_dtype(series):
            series = series.astype(float)
        values = pd.to_numeric(series, errors="coerce")
        bad = values.isna() & series.notna()
        if pd.api.types.is_object_dtype(series) or pd.api.types.is_string_dtype(series):
            bad &= series.astype(str).str.strip().ne("")
        if bad.any():
            example = series[bad].iloc[0]
            raise HecktorInputError(
                f"Column '{col}' should be numeric but holds '{example}' "
                f"(patient row {int(np.flatnonzero(bad.to_numpy())[0]) + 1})."
            )
        out[:, j] = values.to_numpy(dtype=np.float64, na_value=np.nan)
    return out


def require_columns(table: pd.DataFrame, columns, what: str = "model") -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise HecktorInputError(
            f"The table lacks column {', '.join(repr(c) for c in missing)} that the {what} "
            f"was trained with."
        )


@register
class TablePreprocessor(StateMixin, TransformerMixin, BaseEstimator):
    """Impute, z-score and one-hot encode a patient table (DataFrame in, DataFrame out).

    Parameters
    ----------
    numeric, categorical:
        Clinical covariates.
    features:
        Image-derived numeric columns (radiomics, PET metrics, deep scores).
    stack:
        Numeric columns produced by an earlier pipeline step (e.g. ``hpv_prob``).
    imputer:
        ``"median"`` (seed 004) or ``"iterative"`` (seed 000: round-robin regression,
        ten rounds, scikit-learn's ``IterativeImputer``).
    """

    def __init__(self, numeric=(), categorical=(), features=(), stack=(), imputer="median"):
        self.numeric = numeric
        self.categorical = categorical
        self.features = features
        self.stack = stack
        self.imputer = imputer

    # ------------------------------------------------------------------ helpers
    def _num_columns(self) -> list[str]:
        return list(self.numeric) + list(self.features) + list(self.stack)

    def _num_names(self) -> list[str]:
        return (
            [f"clin:{c}" for c in self.numeric]
            + [f"feat:{c}" for c in self.features]
            + [f"stack:{c}" for c in self.stack]
        )

    @property
    def input_columns(self) -> list[str]:
        return self._num_columns() + list(self.categorical)

    # ------------------------------------------------------------------ fit
    def fit(self, X: pd.DataFrame, y=None):
        from sklearn.compose import ColumnTransformer
        from sklearn.experimental import enable_iterative_imputer  # noqa: F401
        from sklearn.impute import IterativeImputer, SimpleImputer
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import OneHotEncoder, StandardScaler

        if self.imputer not in ("median", "iterative"):
            raise HecktorInputError(
                f"imputer must be 'median' or 'iterative', not {self.imputer!r}."
            )
        if not isinstance(X, pd.DataFrame):
            raise TypeError("TablePreprocessor expects a pandas DataFrame")
        require_columns(X, self.input_columns, "outcome spec")
        num_cols = self._num_columns()
        cat_cols = list(self.categorical)
        frame = self._sklearn_frame(X)
        parts = []
        if num_cols:
            if self.imputer == "median":
                imp = SimpleImputer(strategy="median", keep_empty_features=True)
            else:
                imp = IterativeImputer(max_iter=10, random_state=0, keep_empty_features=True)
            parts.append(
                ("num", Pipeline([("impute", imp), ("scale", StandardScaler())]), num_cols)
            )
        if cat_cols:
            parts.append(
                ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), cat_cols)
            )
        ct = ColumnTransformer(parts, remainder="drop", sparse_threshold=0.0)
        ct.fit(frame)
        self.sklearn_transformer_ = ct  # kept for checks; not persisted

        # Freeze what was learned.
        self.num_mean_ = np.zeros(0)
        self.num_scale_ = np.ones(0)
        self.impute_stats_ = np.zeros(0)
        self.iterative_: dict[str, np.ndarray] | None = None
        if num_cols:
            num = ct.named_transformers_["num"]
            imp, scaler = num.named_steps["impute"], num.named_steps["scale"]
            self.num_mean_ = np.asarray(scaler.mean_, dtype=np.float64)
            self.num_scale_ = np.asarray(scaler.scale_, dtype=np.float64)
            if self.imputer == "median":
                self.impute_stats_ = np.asarray(imp.statistics_, dtype=np.float64)
            else:
                self.impute_stats_ = np.asarray(imp.initial_imputer_.statistics_, np.float64)
                self.iterative_ = _freeze_iterative(imp)
        self.categories_: list[list[str]] = []
        self.reference_: list[str] = []
        if cat_cols:
            enc = ct.named_transformers_["cat"]
            for j, cats in enumerate(enc.categories_):
                cats = [str(c) for c in cats]
                counts = frame[cat_cols[j]].value_counts()
                ref = max(cats, key=lambda c: (counts.get(c, 0), -cats.index(c)))
                self.categories_.append(cats)
                self.reference_.append(ref)
        names = self._all_names()
        full = self._transform_array(X)
        sd = full.std(axis=0) if len(full) else np.zeros(full.shape[1])
        self.keep_ = np.asarray(sd > 1e-12, dtype=bool)
        self.feature_names_out_ = [n for n, k in zip(names, self.keep_, strict=True) if k]
        return self

    def _sklearn_frame(self, X: pd.DataFrame) -> pd.DataFrame:
        num_cols = self._num_columns()
        data: dict[str, Any] = {}
        if num_cols:
            mat = numeric_matrix(X, num_cols)
            for j, c in enumerate(num_cols):
                data[c] = mat[:, j]
        for c in self.categorical:
            data[c] = np.array([category_string(v) for v in X[c].tolist()], dtype=object)
        return pd.DataFrame(data, index=X.index)

    def _all_names(self) -> list[str]:
        names = self._num_names()
        for col, cats, ref in zip(self.categorical, self.categories_, self.reference_, strict=True):
            names += [f"clin:{col}={c}" for c in cats if c != ref]
        return names

    # ------------------------------------------------------------------ transform
    def _transform_array(self, X: pd.DataFrame) -> np.ndarray:
        require_columns(X, self.input_columns)
        blocks = []
        num_cols = self._num_columns()
        if num_cols:
            mat = numeric_matrix(X, num_cols)
            miss = np.isnan(mat)
            filled = np.where(miss, self.impute_stats_[None, :], mat)
            if self.iterative_ is not None:
                filled = _replay_iterative(self.iterative_, filled, miss)
            blocks.append((filled - self.num_mean_) / self.num_scale_)
        for col, cats, ref in zip(self.categorical, self.categories_, self.reference_, strict=True):
            values = np.array([category_string(v) for v in X[col].tolist()], dtype=object)
            cols = [values == c for c in cats if c != ref]
            if cols:
                blocks.append(np.column_stack(cols).astype(np.float64))
        if not blocks:
            return np.zeros((len(X), 0))
        return np.hstack(blocks)

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        full = self._transform_array(X)
        return pd.DataFrame(full[:, self.keep_], columns=self.feature_names_out_, index=X.index)

    def get_feature_names_out(self, input_features=None):
        return np.asarray(self.feature_names_out_, dtype=object)

    # ------------------------------------------------------------------ schema / state
    def schema(self) -> dict[str, Any]:
        """Input columns with their kind and the categories seen in training."""
        out: dict[str, Any] = {}
        for c in self.numeric:
            out[c] = {"kind": "numeric", "role": "clinical"}
        for c in self.features:
            out[c] = {"kind": "numeric", "role": "feature"}
        for c in self.stack:
            out[c] = {"kind": "numeric", "role": "stacked"}
        for c, cats, ref in zip(self.categorical, self.categories_, self.reference_, strict=True):
            out[c] = {"kind": "categorical", "categories": cats, "reference": ref}
        return out

    def _get_state(self):
        meta = {
            "categories": self.categories_,
            "reference": self.reference_,
            "feature_names_out": self.feature_names_out_,
            "iterative": self.iterative_ is not None,
        }
        arrays = {
            "num_mean": self.num_mean_,
            "num_scale": self.num_scale_,
            "impute_stats": self.impute_stats_,
            "keep": self.keep_,
        }
        if self.iterative_ is not None:
            arrays.update({f"iter_{k}": v for k, v in self.iterative_.items()})
        return meta, arrays

    def _set_state(self, meta, arrays):
        self.categories_ = [list(c) for c in meta["categories"]]
        self.reference_ = list(meta["reference"])
        self.feature_names_out_ = list(meta["feature_names_out"])
        self.num_mean_ = arrays["num_mean"]
        self.num_scale_ = arrays["num_scale"]
        self.impute_stats_ = arrays["impute_stats"]
        self.keep_ = arrays["keep"].astype(bool)
        self.iterative_ = (
            {k[5:]: v for k, v in arrays.items() if k.startswith("iter_")}
            if meta["iterative"]
            else None
        )


def _freeze_iterative(imp) -> dict[str, np.ndarray]:
    """The regression sequence of a fitted ``IterativeImputer`` as flat arrays."""
    seq = imp.imputation_sequence_ if imp.n_iter_ > 0 else []
    feat = np.array([t.feat_idx for t in seq], dtype=np.int64)
    nb_len = np.array([len(t.neighbor_feat_idx) for t in seq], dtype=np.int64)
    nb = (
        np.concatenate([np.asarray(t.neighbor_feat_idx, np.int64) for t in seq])
        if seq
        else np.zeros(0, np.int64)
    )
    coef = (
        np.concatenate([np.asarray(t.estimator.coef_, np.float64) for t in seq])
        if seq
        else np.zeros(0)
    )
    icpt = np.array([float(t.estimator.intercept_) for t in seq], dtype=np.float64)
    return {
        "feat": feat,
        "nb_len": nb_len,
        "nb": nb,
        "coef": coef,
        "intercept": icpt,
        "min": np.asarray(imp._min_value, dtype=np.float64),
        "max": np.asarray(imp._max_value, dtype=np.float64),
    }


def _replay_iterative(state: dict[str, np.ndarray], filled: np.ndarray, miss: np.ndarray):
    """Apply a frozen ``IterativeImputer`` sequence (``transform`` without sklearn)."""
    out = filled.copy()
    offset = 0
    for k, f in enumerate(state["feat"]):
        n = int(state["nb_len"][k])
        nb = state["nb"][offset : offset + n]
        coef = state["coef"][offset : offset + n]
        offset += n
        rows = miss[:, f]
        if not rows.any():
            continue
        pred = out[rows][:, nb] @ coef + state["intercept"][k]
        out[rows, f] = np.clip(pred, state["min"][f], state["max"][f])
    return out
