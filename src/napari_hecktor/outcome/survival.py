"""Survival models with the scikit-learn estimator API (``fit(X, y)``, ``predict(X)`` = risk).

``y`` is scikit-survival's structured array (fields ``event``, ``time``; see
:func:`make_y`). ``predict`` returns a risk score, higher = earlier event (what
Harrell's C-index and the HECKTOR submissions expect). Every model also gives
``predict_survival_function(X)`` (an array on ``surv_times_``), ``survival_at(X, times)``
and ``predict_expected_time(X)`` (restricted mean survival time up to the last training
time, in the table's time unit).

- :class:`CoxPH`: Cox proportional hazards, Efron ties by default (as R's
  ``survival::coxph`` and lifelines), Newton-Raphson in numpy on standardised
  covariates with an optional ridge penalty; Breslow baseline hazard. Checked against
  R's published coefficients on the Rossi data and against lifelines in the tests;
  written out (rather than calling lifelines) because cross-validation needs hundreds of
  fits and lifelines takes ~0.2 s each on the development machines.
- :class:`CoxSelector`: seed 004's selection inside each training fold: univariate Cox
  screening (likelihood-ratio p < 0.05) of the clinical variables, LASSO (scikit-survival
  ``CoxnetSurvivalAnalysis``, penalty chosen by inner CV C-index) of the image features,
  then seed 000's Spearman |rho| > 0.8 redundancy filter.
- :class:`RandomSurvival`: scikit-survival's ``RandomSurvivalForest``, frozen to arrays.
- :class:`OutcomePipeline`: a scikit-learn ``Pipeline`` that also records the training
  risk scores as seen at fit time (out-of-fold values for stacked steps).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.pipeline import Pipeline

from napari_hecktor.errors import HecktorInputError

from ._state import StateMixin, register
from .encoding import require_columns


def make_y(event, time) -> np.ndarray:
    """scikit-survival's structured survival target from event (bool) and time arrays."""
    y = np.empty(len(time), dtype=[("event", bool), ("time", np.float64)])
    y["event"] = np.asarray(event, dtype=bool)
    y["time"] = np.asarray(time, dtype=np.float64)
    return y


def unpack_y(y) -> tuple[np.ndarray, np.ndarray]:
    """(event, time) from a structured array or an (event, time) pair."""
    if isinstance(y, np.ndarray) and y.dtype.names:
        names = y.dtype.names
        return np.asarray(y[names[0]], dtype=bool), np.asarray(y[names[1]], dtype=np.float64)
    event, time = y
    return np.asarray(event, dtype=bool), np.asarray(time, dtype=np.float64)


def as_matrix(est, X, fit: bool = False) -> np.ndarray:
    """Float matrix of X; DataFrame columns are remembered at fit and reordered at predict."""
    if isinstance(X, pd.DataFrame):
        if fit:
            est.feature_names_in_ = [str(c) for c in X.columns]
        elif getattr(est, "feature_names_in_", None) is not None:
            require_columns(X, est.feature_names_in_)
            X = X[est.feature_names_in_]
        return X.to_numpy(dtype=np.float64)
    if fit:
        est.feature_names_in_ = None
    return np.asarray(X, dtype=np.float64)


# ----------------------------------------------------------------------------- Cox engine


class _CoxData:
    """Sorted data and tie structure for repeated partial-likelihood evaluations."""

    def __init__(self, X: np.ndarray, time: np.ndarray, event: np.ndarray, ties: str):
        order = np.argsort(time, kind="mergesort")
        self.X = X[order]
        t = time[order]
        e = event[order]
        self.ev_times = np.unique(t[e])
        m = self.ev_times.size
        self.start = np.searchsorted(t, self.ev_times, side="left")
        self.ev_idx = np.flatnonzero(e)
        grp = np.searchsorted(self.ev_times, t[self.ev_idx])
        self.d = np.bincount(grp, minlength=m)
        self.gstart = np.concatenate([[0], np.cumsum(self.d)[:-1]]).astype(np.int64)
        self.pair_grp = np.repeat(np.arange(m), self.d)
        within = np.arange(self.ev_idx.size) - np.repeat(self.gstart, self.d)
        if ties == "efron":
            self.frac = within / np.repeat(self.d, self.d)
        elif ties == "breslow":
            self.frac = np.zeros(self.ev_idx.size)
        else:
            raise ValueError(f"ties must be 'efron' or 'breslow', not {ties!r}")
        self.XD = (
            np.add.reduceat(self.X[self.ev_idx], self.gstart, axis=0)
            if m
            else np.zeros((0, X.shape[1]))
        )

    def evaluate(self, beta: np.ndarray, hessian: bool = True):
        X = self.X
        eta = X @ beta
        c = float(eta.max()) if eta.size else 0.0
        w = np.exp(eta - c)
        if self.ev_idx.size == 0:
            p = X.shape[1]
            return 0.0, np.zeros(p), np.zeros((p, p))
        rc0 = np.cumsum(w[::-1])[::-1]
        wx = w[:, None] * X
        rc1 = np.cumsum(wx[::-1], axis=0)[::-1]
        s0r, s1r = rc0[self.start], rc1[self.start]
        ev = self.ev_idx
        s0d = np.add.reduceat(w[ev], self.gstart)
        s1d = np.add.reduceat(wx[ev], self.gstart, axis=0)
        g, f = self.pair_grp, self.frac
        phi = s0r[g] - f * s0d[g]
        m1 = s1r[g] - f[:, None] * s1d[g]
        loglik = float(eta[ev].sum() - np.sum(np.log(phi) + c))
        grad = self.XD.sum(axis=0) - (m1 / phi[:, None]).sum(axis=0)
        if not hessian:
            return loglik, grad, None
        wxx = wx[:, :, None] * X[:, None, :]
        rc2 = np.cumsum(wxx[::-1], axis=0)[::-1]
        s2r = rc2[self.start]
        s2d = np.add.reduceat(wxx[ev], self.gstart, axis=0)
        m2 = s2r[g] - f[:, None, None] * s2d[g]
        info = np.einsum("kij->ij", m2 / phi[:, None, None]) - np.einsum(
            "ki,kj->ij", m1 / phi[:, None], m1 / phi[:, None]
        )
        return loglik, grad, -info


def cox_fit(
    X: np.ndarray,
    time: np.ndarray,
    event: np.ndarray,
    *,
    ties: str = "efron",
    penalizer: float = 0.0,
    max_iter: int = 50,
    tol: float = 1e-10,
) -> dict[str, Any]:
    """Maximise the Cox partial likelihood (Newton-Raphson with step halving).

    Works on z-scored columns; ``penalizer`` adds ``0.5 * penalizer * ||beta_z||^2`` (ridge on
    the standardised scale). Returns coefficients, standard errors (from the observed
    information) on the original scale, the log partial likelihood at the optimum and
    at zero, and whether it converged.
    """
    X = np.asarray(X, dtype=np.float64)
    n, p = X.shape
    mean = X.mean(axis=0) if n else np.zeros(p)
    sd = X.std(axis=0) if n else np.ones(p)
    sd = np.where(sd > 1e-12, sd, 1.0)
    Z = (X - mean) / sd
    data = _CoxData(Z, np.asarray(time, float), np.asarray(event, bool), ties)

    def objective(beta):
        ll, g, h = data.evaluate(beta)
        if penalizer:
            ll -= 0.5 * penalizer * float(beta @ beta)
            g = g - penalizer * beta
            h = h - penalizer * np.eye(p)
        return ll, g, h

    beta = np.zeros(p)
    ll, g, h = objective(beta)
    ll0 = data.evaluate(beta, hessian=False)[0]
    converged = p == 0
    for _ in range(max_iter if p else 0):
        try:
            step = np.linalg.solve(-h, g)
        except np.linalg.LinAlgError:
            step = np.linalg.lstsq(-h, g, rcond=None)[0]
        new = beta + step
        ll_new, g_new, h_new = objective(new)
        halvings = 0
        while (not np.isfinite(ll_new) or ll_new < ll - 1e-12) and halvings < 30:
            step = step / 2.0
            new = beta + step
            ll_new, g_new, h_new = objective(new)
            halvings += 1
        done = abs(ll_new - ll) <= tol * (abs(ll) + 1.0) and np.max(np.abs(step)) < 1e-6
        beta, ll, g, h = new, ll_new, g_new, h_new
        if done:
            converged = True
            break
    try:
        cov_z = np.linalg.inv(-h) if p else np.zeros((0, 0))
    except np.linalg.LinAlgError:
        cov_z = np.linalg.pinv(-h)
    coef = beta / sd
    cov = cov_z / np.outer(sd, sd)
    se = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    loglik_unpen = data.evaluate(beta, hessian=False)[0]
    return {
        "coef": coef,
        "se": se,
        "cov": cov,
        "loglik": loglik_unpen,
        "loglik_null": ll0,
        "converged": converged,
        "mean": mean,
    }


def breslow_baseline(
    risk: np.ndarray, time: np.ndarray, event: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Breslow cumulative baseline hazard at the distinct event times, for ``exp(risk)``."""
    time = np.asarray(time, float)
    event = np.asarray(event, bool)
    ev_times = np.unique(time[event])
    order = np.argsort(time, kind="mergesort")
    t_sorted = time[order]
    w = np.exp(risk[order] - risk.max()) if risk.size else np.zeros(0)
    rc = np.cumsum(w[::-1])[::-1]
    start = np.searchsorted(t_sorted, ev_times, side="left")
    d = np.array([np.sum(event & (time == t)) for t in ev_times], dtype=float)
    denom = rc[start] * np.exp(risk.max()) if risk.size else np.ones(0)
    return ev_times, np.cumsum(d / denom)


# ----------------------------------------------------------------------------- mixins


class SurvivalMixin:
    """Survival curves on the grid ``surv_times_`` (a step function, S = 1 before it)."""

    _estimator_type = "survival"

    def _survival_grid(self, X) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def predict_survival_function(self, X, return_array: bool = False):
        """scikit-survival style: StepFunctions, or an array on ``surv_times_``."""
        arr = self._survival_grid(X)
        if return_array:
            return arr
        from sksurv.functions import StepFunction

        return np.array([StepFunction(self.surv_times_, row) for row in arr])

    def survival_at(self, X, times) -> np.ndarray:
        """S(t | x) at ``times``: ``(n_samples, len(times))``."""
        grid = self._survival_grid(X)
        idx = np.searchsorted(self.surv_times_, np.asarray(times, float), side="right") - 1
        out = np.ones((grid.shape[0], idx.size))
        ok = idx >= 0
        out[:, ok] = grid[:, idx[ok]]
        return out

    def predict_expected_time(self, X) -> np.ndarray:
        """Restricted mean survival time up to ``tau_`` (the last training time)."""
        grid = self._survival_grid(X)
        t = np.asarray(self.surv_times_, float)
        edges = np.concatenate([[0.0], t, [max(self.tau_, t[-1] if t.size else 0.0)]])
        widths = np.diff(edges)
        s = np.hstack([np.ones((grid.shape[0], 1)), grid])
        return s @ widths

    def score(self, X, y) -> float:
        from sksurv.metrics import concordance_index_censored

        event, time = unpack_y(y)
        return float(concordance_index_censored(event, time, self.predict(X))[0])


# ----------------------------------------------------------------------------- Cox model


@register
class CoxPH(SurvivalMixin, StateMixin, BaseEstimator):
    """Cox proportional hazards (Efron ties by default) with an optional ridge penalty."""

    def __init__(self, ties="efron", penalizer=0.0, max_iter=50):
        self.ties = ties
        self.penalizer = penalizer
        self.max_iter = max_iter

    def fit(self, X, y):
        Xf = as_matrix(self, X, fit=True)
        event, time = unpack_y(y)
        res = cox_fit(
            Xf, time, event, ties=self.ties, penalizer=self.penalizer, max_iter=self.max_iter
        )
        self.coef_ = res["coef"]
        self.se_ = res["se"]
        self.mean_ = res["mean"]
        self.loglik_ = res["loglik"]
        self.loglik_null_ = res["loglik_null"]
        self.converged_ = bool(res["converged"])
        risk = (Xf - self.mean_) @ self.coef_
        self.surv_times_, self.cumhaz0_ = breslow_baseline(risk, time, event)
        self.tau_ = float(time.max())
        return self

    @property
    def p_values_(self) -> np.ndarray:
        from scipy.stats import norm

        with np.errstate(divide="ignore", invalid="ignore"):
            z = self.coef_ / self.se_
        return 2.0 * norm.sf(np.abs(z))

    def summary(self) -> pd.DataFrame:
        names = self.feature_names_in_ or [f"x{j}" for j in range(self.coef_.size)]
        return pd.DataFrame(
            {
                "coef": self.coef_,
                "exp(coef)": np.exp(self.coef_),
                "se": self.se_,
                "p": self.p_values_,
            },
            index=names,
        )

    def predict(self, X) -> np.ndarray:
        Xf = as_matrix(self, X)
        return (Xf - self.mean_) @ self.coef_

    def _survival_grid(self, X) -> np.ndarray:
        return np.exp(-np.outer(np.exp(self.predict(X)), self.cumhaz0_))

    def _get_state(self):
        meta = {
            "feature_names_in": self.feature_names_in_,
            "loglik": self.loglik_,
            "loglik_null": self.loglik_null_,
            "converged": self.converged_,
            "tau": self.tau_,
        }
        arrays = {
            "coef": self.coef_,
            "se": self.se_,
            "mean": self.mean_,
            "surv_times": self.surv_times_,
            "cumhaz0": self.cumhaz0_,
        }
        return meta, arrays

    def _set_state(self, meta, arrays):
        self.feature_names_in_ = meta["feature_names_in"]
        self.loglik_ = meta["loglik"]
        self.loglik_null_ = meta["loglik_null"]
        self.converged_ = meta["converged"]
        self.tau_ = meta["tau"]
        self.coef_ = arrays["coef"]
        self.se_ = arrays["se"]
        self.mean_ = arrays["mean"]
        self.surv_times_ = arrays["surv_times"]
        self.cumhaz0_ = arrays["cumhaz0"]


def univariate_cox_p(X: np.ndarray, time, event) -> float:
    """Likelihood-ratio p-value of a Cox model on the columns of X (one variable's dummies)."""
    from scipy.stats import chi2

    res = cox_fit(X, time, event, max_iter=25)
    stat = max(2.0 * (res["loglik"] - res["loglik_null"]), 0.0)
    return float(chi2.sf(stat, df=X.shape[1]))


def _c_index(event, time, risk) -> float:
    from sksurv.metrics import concordance_index_censored

    try:
        return float(concordance_index_censored(event, time, risk)[0])
    except ValueError:  # no comparable pair
        return float("nan")


# ----------------------------------------------------------------------------- selection


@register
class CoxSelector(StateMixin, TransformerMixin, BaseEstimator):
    """Univariate Cox screening + LASSO + Spearman filter, fitted on the training rows.

    Columns named ``clin:...`` are clinical (screened per original variable, all dummies
    of a categorical variable together, likelihood-ratio test p < ``p_threshold``);
    ``feat:...`` columns go through LASSO (``CoxnetSurvivalAnalysis``, l1_ratio 1, the
    penalty maximising the inner ``lasso_folds``-fold C-index); ``stack:...`` columns are
    kept. Then, in order of priority (stacked, clinical by p, features by |LASSO coef|),
    a column is dropped when its Spearman |rho| with a kept one exceeds ``spearman``.
    """

    def __init__(
        self, p_threshold=0.05, lasso=True, spearman=0.8, lasso_folds=3, n_alphas=30, random_state=0
    ):
        self.p_threshold = p_threshold
        self.lasso = lasso
        self.spearman = spearman
        self.lasso_folds = lasso_folds
        self.n_alphas = n_alphas
        self.random_state = random_state

    def fit(self, X: pd.DataFrame, y):
        event, time = unpack_y(y)
        cols = [str(c) for c in X.columns]
        clin = [c for c in cols if c.startswith("clin:")]
        feats = [c for c in cols if c.startswith("feat:")]
        stack = [c for c in cols if c.startswith("stack:")]
        other = [c for c in cols if c not in clin + feats + stack]
        groups: dict[str, list[str]] = {}
        for c in clin:
            groups.setdefault(c[5:].split("=", 1)[0], []).append(c)
        screen: dict[str, float] = {}
        for var, members in groups.items():
            screen[var] = univariate_cox_p(X[members].to_numpy(float), time, event)
        self.screen_p_ = screen
        kept_clin = sorted(
            [(screen[v], m) for v, m in groups.items() if screen[v] < self.p_threshold],
            key=lambda t: t[0],
        )
        clin_order = [c for _, members in kept_clin for c in members]
        self.lasso_alpha_ = None
        if not feats:
            feat_order: list[str] = []
        elif self.lasso:
            lasso = self._lasso(X[feats].to_numpy(float), event, time)
            order = np.argsort(-np.abs(lasso["coef"]), kind="stable")
            feat_order = [feats[j] for j in order if lasso["coef"][j] != 0.0]
            self.lasso_alpha_ = lasso["alpha"]
        else:
            feat_order = list(feats)
        candidates = stack + other + clin_order + feat_order
        self.selected_ = self._spearman_filter(X, candidates)
        return self

    def _lasso(self, F: np.ndarray, event, time) -> dict[str, Any]:
        if not self.lasso:
            return {"coef": np.zeros(F.shape[1]), "alpha": None}
        from sklearn.model_selection import StratifiedKFold
        from sksurv.linear_model import CoxnetSurvivalAnalysis

        y = make_y(event, time)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                path = CoxnetSurvivalAnalysis(
                    l1_ratio=1.0, n_alphas=self.n_alphas, alpha_min_ratio=0.01, max_iter=100000
                ).fit(F, y)
            except (ArithmeticError, ValueError):
                return {"coef": np.zeros(F.shape[1]), "alpha": None}
            alphas = path.alphas_
            n_ev = int(event.sum())
            folds = min(self.lasso_folds, n_ev, int((~event).sum()))
            scores = np.full((max(folds, 1), alphas.size), np.nan)
            if folds >= 2:
                cv = StratifiedKFold(folds, shuffle=True, random_state=self.random_state)
                for k, (tr, te) in enumerate(cv.split(F, event)):
                    try:
                        m = CoxnetSurvivalAnalysis(
                            l1_ratio=1.0, alphas=alphas, max_iter=100000
                        ).fit(F[tr], y[tr])
                    except (ArithmeticError, ValueError):
                        continue
                    coefs = m.coef_
                    for a in range(min(coefs.shape[1], alphas.size)):
                        risk = F[te] @ coefs[:, a]
                        scores[k, a] = (
                            0.5 if not np.any(coefs[:, a]) else _c_index(event[te], time[te], risk)
                        )
            mean = np.nanmean(np.where(np.isnan(scores), 0.5, scores), axis=0)
            best = int(np.argmax(mean))  # first = largest alpha among ties (sparsest)
            coef = path.coef_[:, min(best, path.coef_.shape[1] - 1)]
        return {"coef": np.asarray(coef, float), "alpha": float(alphas[best])}

    def _spearman_filter(self, X: pd.DataFrame, candidates: list[str]) -> list[str]:
        if not candidates or self.spearman is None or self.spearman >= 1.0:
            return list(candidates)
        ranks = X[candidates].rank(method="average").to_numpy(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            rho = np.corrcoef(ranks, rowvar=False)  # Spearman = Pearson of the ranks
        rho = np.nan_to_num(rho)
        kept: list[int] = []
        for j in range(len(candidates)):
            if all(abs(rho[j, k]) <= self.spearman for k in kept):
                kept.append(j)
        return [candidates[j] for j in kept]

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        require_columns(X, self.selected_)
        return X[self.selected_]

    def get_feature_names_out(self, input_features=None):
        return np.asarray(self.selected_, dtype=object)

    def _get_state(self):
        return {
            "selected": self.selected_,
            "screen_p": self.screen_p_,
            "lasso_alpha": self.lasso_alpha_,
        }, {}

    def _set_state(self, meta, arrays):
        self.selected_ = list(meta["selected"])
        self.screen_p_ = dict(meta["screen_p"])
        self.lasso_alpha_ = meta["lasso_alpha"]


# ----------------------------------------------------------------------------- forest


@register
class RandomSurvival(SurvivalMixin, StateMixin, BaseEstimator):
    """scikit-survival's ``RandomSurvivalForest``; predictions from the frozen tree arrays.

    Risk = mean over trees of the summed cumulative hazard at the training event times
    (scikit-survival's ``predict``); survival = mean of the trees' Kaplan-Meier curves.
    """

    def __init__(
        self,
        n_estimators=100,
        min_samples_leaf=10,
        max_features="sqrt",
        max_depth=None,
        random_state=0,
    ):
        self.n_estimators = n_estimators
        self.min_samples_leaf = min_samples_leaf
        self.max_features = max_features
        self.max_depth = max_depth
        self.random_state = random_state

    def fit(self, X, y):
        from sksurv.ensemble import RandomSurvivalForest

        Xf = as_matrix(self, X, fit=True)
        event, time = unpack_y(y)
        rsf = RandomSurvivalForest(
            n_estimators=self.n_estimators,
            min_samples_leaf=self.min_samples_leaf,
            max_features=self.max_features,
            max_depth=self.max_depth,
            random_state=self.random_state,
            n_jobs=1,
        ).fit(Xf, make_y(event, time))
        is_ev = np.asarray(rsf.is_event_time_, dtype=bool)

        def leaf_value(t):
            chf = t.value[:, is_ev, 0]
            return np.hstack([chf.sum(axis=1, keepdims=True), t.value[:, is_ev, 1]])

        from .trees import forest_arrays

        self.forest_ = forest_arrays(rsf.estimators_, leaf_value)
        self.surv_times_ = np.asarray(rsf.unique_times_[is_ev], dtype=np.float64)
        self.tau_ = float(time.max())
        self.n_features_in_ = Xf.shape[1]
        self.sksurv_model_ = rsf  # for checks; not persisted
        return self

    def _forest(self, X) -> np.ndarray:
        from .trees import forest_mean

        return forest_mean(self.forest_, as_matrix(self, X))

    def predict(self, X) -> np.ndarray:
        from .trees import forest_leaves

        leaves = forest_leaves(self.forest_, as_matrix(self, X))
        col = self.forest_["leaf_value"][:, 0]
        total = np.zeros(leaves.shape[0])
        for t in range(leaves.shape[1]):
            total += col[leaves[:, t]]
        return total / leaves.shape[1]

    def _survival_grid(self, X) -> np.ndarray:
        return self._forest(X)[:, 1:]

    def _get_state(self):
        meta = {
            "feature_names_in": self.feature_names_in_,
            "tau": self.tau_,
            "n_features_in": self.n_features_in_,
        }
        arrays = {f"forest_{k}": v for k, v in self.forest_.items()}
        arrays["surv_times"] = self.surv_times_
        return meta, arrays

    def _set_state(self, meta, arrays):
        self.feature_names_in_ = meta["feature_names_in"]
        self.tau_ = meta["tau"]
        self.n_features_in_ = meta["n_features_in"]
        self.forest_ = {k[7:]: v for k, v in arrays.items() if k.startswith("forest_")}
        self.surv_times_ = arrays["surv_times"]


# ----------------------------------------------------------------------------- pipeline


@register
class OutcomePipeline(Pipeline):
    """A scikit-learn ``Pipeline`` for survival models.

    ``fit`` runs ``fit_transform`` step by step (as ``Pipeline`` does) and keeps the final
    model's risk scores on the training rows in ``train_risk_``: with stacked steps these
    are computed from out-of-fold stacked values, i.e. as new patients would look, and
    they set the median that splits low and high risk groups.
    """

    def fit(self, X, y=None, **params):
        Xt = X
        for _, step in self.steps[:-1]:
            Xt = step.fit_transform(Xt, y)
        final = self.steps[-1][1]
        final.fit(Xt, y)
        self.train_risk_ = np.asarray(final.predict(Xt), dtype=np.float64)
        return self

    def transform_to_last(self, X):
        for _, step in self.steps[:-1]:
            X = step.transform(X)
        return X

    def predict(self, X, **params) -> np.ndarray:
        return np.asarray(self.steps[-1][1].predict(self.transform_to_last(X)), np.float64)

    def predict_survival_function(self, X, return_array: bool = False):
        return self.steps[-1][1].predict_survival_function(self.transform_to_last(X), return_array)

    def survival_at(self, X, times) -> np.ndarray:
        return self.steps[-1][1].survival_at(self.transform_to_last(X), times)

    def predict_expected_time(self, X) -> np.ndarray:
        return self.steps[-1][1].predict_expected_time(self.transform_to_last(X))

    def score(self, X, y, **params) -> float:
        event, time = unpack_y(y)
        return _c_index(event, time, self.predict(X))

    @property
    def surv_times_(self) -> np.ndarray:
        return self.steps[-1][1].surv_times_

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "train_risk_")

    def _get_state(self):
        return {}, {"train_risk": self.train_risk_}

    def _set_state(self, meta, arrays):
        self.train_risk_ = arrays["train_risk"]


def check_survival_rows(event: np.ndarray, time: np.ndarray, what: str = "training") -> None:
    if time.size < 10 or int(np.sum(event)) < 3:
        raise HecktorInputError(
            f"Too few {what} patients with a survival time ({time.size}, "
            f"{int(np.sum(event))} events): at least 10 patients and 3 events are needed."
        )
