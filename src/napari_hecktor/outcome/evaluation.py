"""Outcome metrics, patient-level and leave-centre-out CV, model comparison, risk groups.

Metrics (library implementations):

- Harrell's C-index on risk scores (higher = earlier event; ties in risk count 0.5):
  scikit-survival ``concordance_index_censored``.
- Time-dependent cumulative/dynamic AUC: scikit-survival ``cumulative_dynamic_auc``
  (censoring weights from the training rows), mean over the evaluation times.
- Integrated Brier score: scikit-survival ``integrated_brier_score`` on the predicted
  survival functions.
- HPV: ROC AUC (scikit-learn), balanced accuracy, sensitivity, specificity at a threshold.
- Kaplan-Meier curves (lifelines ``KaplanMeierFitter``) and log-rank p (lifelines
  ``logrank_test``) for the low/high risk groups split at the training median.
- Corrected resampled t-test (Nadeau & Bengio 2003) for two models scored on the same
  folds: ``t = mean(d) / sqrt((1/J + n_test/n_train) * var(d))``, ``J - 1`` degrees of
  freedom.

Cross-validation (:func:`make_folds`) is patient-level stratified k-fold (repeated) or
leave-centre-out; every fitting and selection step happens inside :func:`cross_validate`
on the training rows of each fold, because each model is one pipeline that is cloned
and fitted there.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone

from napari_hecktor.errors import HecktorInputError
from napari_hecktor.progress import Progress

from .survival import make_y

# ----------------------------------------------------------------------------- metrics


def harrell_c(event, time, risk) -> float:
    """Harrell's C-index of risk scores (scikit-survival); NaN when no pair is comparable."""
    from sksurv.metrics import concordance_index_censored

    try:
        return float(
            concordance_index_censored(
                np.asarray(event, bool), np.asarray(time, float), np.asarray(risk, float)
            )[0]
        )
    except ValueError:
        return float("nan")


def evaluation_times(train_time, train_event, test_time, n: int = 4) -> np.ndarray:
    """Times inside the test follow-up and the training range: event-time quantiles."""
    train_time = np.asarray(train_time, float)
    test_time = np.asarray(test_time, float)
    ev = train_time[np.asarray(train_event, bool)]
    if ev.size == 0:
        return np.zeros(0)
    qs = np.quantile(ev, np.linspace(0.2, 0.8, n))
    lo = test_time.min()
    hi = min(test_time.max(), train_time.max())
    return np.unique(qs[(qs > lo) & (qs < hi)])


def time_dependent_auc(y_train, y_test, risk, times) -> float:
    """Mean cumulative/dynamic AUC over ``times`` (NaN when undefined)."""
    from sksurv.metrics import cumulative_dynamic_auc

    if len(times) == 0:
        return float("nan")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, mean_auc = cumulative_dynamic_auc(y_train, y_test, np.asarray(risk, float), times)
        return float(mean_auc)
    except (ValueError, ZeroDivisionError):
        return float("nan")


def integrated_brier(y_train, y_test, surv_at_times: np.ndarray, times) -> float:
    """Integrated Brier score of survival probabilities at ``times`` (NaN when undefined)."""
    from sksurv.metrics import integrated_brier_score

    if len(times) < 2:
        return float("nan")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(integrated_brier_score(y_train, y_test, surv_at_times, times))
    except (ValueError, ZeroDivisionError):
        return float("nan")


def classification_metrics(y, prob, threshold: float) -> dict[str, float]:
    """AUC, balanced accuracy, sensitivity, specificity (and accuracy) at ``threshold``."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y, dtype=int)
    prob = np.asarray(prob, dtype=float)
    pred = prob >= threshold
    pos, neg = y == 1, y == 0
    sens = float(pred[pos].mean()) if pos.any() else float("nan")
    spec = float((~pred[neg]).mean()) if neg.any() else float("nan")
    auc = float(roc_auc_score(y, prob)) if pos.any() and neg.any() else float("nan")
    return {
        "auc": auc,
        "balanced_accuracy": 0.5 * (sens + spec),
        "sensitivity": sens,
        "specificity": spec,
        "accuracy": float((pred == pos).mean()),
        "majority_accuracy": float(max(pos.mean(), neg.mean())),
    }


def corrected_resampled_ttest(scores_a, scores_b, n_train: float, n_test: float):
    """Nadeau & Bengio's corrected resampled t-test of paired per-fold scores.

    Returns ``(mean difference a - b, t, two-sided p)``.
    """
    from scipy.stats import t as t_dist

    d = np.asarray(scores_a, float) - np.asarray(scores_b, float)
    d = d[~np.isnan(d)]
    J = d.size
    if J < 2:
        return float("nan"), float("nan"), float("nan")
    mean = float(d.mean())
    var = float(d.var(ddof=1))
    denom = math.sqrt((1.0 / J + n_test / n_train) * var)
    if denom == 0.0:
        return mean, float("inf") if mean else float("nan"), 0.0 if mean else 1.0
    t = mean / denom
    p = float(2.0 * t_dist.sf(abs(t), J - 1))
    return mean, float(t), p


# ----------------------------------------------------------------------------- risk groups


def km_curve(time, event) -> dict[str, np.ndarray]:
    """Kaplan-Meier estimate (lifelines) as arrays: time, survival, at_risk."""
    from lifelines import KaplanMeierFitter

    km = KaplanMeierFitter().fit(np.asarray(time, float), np.asarray(event, bool))
    sf = km.survival_function_
    return {
        "time": sf.index.to_numpy(dtype=np.float64),
        "survival": sf.iloc[:, 0].to_numpy(dtype=np.float64),
        "at_risk": km.event_table["at_risk"].to_numpy(dtype=np.float64),
    }


def logrank_p(time, event, high: np.ndarray) -> float:
    from lifelines.statistics import logrank_test

    high = np.asarray(high, bool)
    if high.all() or (~high).all():
        return float("nan")
    time = np.asarray(time, float)
    event = np.asarray(event, bool)
    res = logrank_test(time[high], time[~high], event[high], event[~high])
    return float(res.p_value)


def risk_group_curves(time, event, risk, cut: float) -> dict:
    """KM curves of the low (risk <= cut) and high groups, with the log-rank p."""
    risk = np.asarray(risk, float)
    high = risk > cut
    out: dict = {"cut": float(cut), "logrank_p": logrank_p(time, event, high)}
    for name, mask in (("low", ~high), ("high", high)):
        if mask.any():
            curve = km_curve(np.asarray(time)[mask], np.asarray(event)[mask])
            curve["n"] = int(mask.sum())
            curve["events"] = int(np.asarray(event, bool)[mask].sum())
            out[name] = curve
    return out


# ----------------------------------------------------------------------------- folds


@dataclass(frozen=True)
class Fold:
    repeat: int
    fold: int
    train: np.ndarray
    test: np.ndarray
    label: str = ""


def make_folds(
    n: int,
    *,
    kind: str = "kfold",
    folds: int = 5,
    repeats: int = 1,
    seed: int = 0,
    strata=None,
    groups=None,
) -> list[Fold]:
    """Patient-level stratified k-fold (``repeats`` times) or leave-centre-out folds.

    ``kind="center"``: one fold per centre when there are at most ``folds`` centres
    (leave-one-centre-out), otherwise the centres are grouped into ``folds`` folds of
    similar size (scikit-learn ``GroupKFold``); ``repeats`` is ignored.
    """
    from sklearn.model_selection import GroupKFold, LeaveOneGroupOut, StratifiedKFold

    idx = np.arange(n)
    out: list[Fold] = []
    if kind == "center":
        if groups is None:
            raise HecktorInputError(
                "Leave-centre-out CV needs a centre column (spec key 'center')."
            )
        groups = np.asarray([str(g) for g in groups])
        names = np.unique(groups)
        if names.size < 2:
            raise HecktorInputError("Leave-centre-out CV needs at least two centres.")
        splitter = LeaveOneGroupOut() if names.size <= folds else GroupKFold(folds)
        for k, (tr, te) in enumerate(splitter.split(idx, groups=groups)):
            label = "+".join(sorted(set(groups[te])))
            out.append(Fold(0, k, tr, te, f"centre {label}"))
        return out
    if kind != "kfold":
        raise HecktorInputError(f"cv must be 'kfold' or 'center', not {kind!r}.")
    strata = np.zeros(n, int) if strata is None else np.asarray(strata)
    min_class = int(np.bincount(pd.factorize(strata)[0]).min())
    if folds < 2 or min_class < folds:
        raise HecktorInputError(
            f"{folds}-fold CV needs at least {folds} patients in each outcome class "
            f"(the smallest has {min_class}); use fewer folds."
        )
    for r in range(repeats):
        cv = StratifiedKFold(folds, shuffle=True, random_state=seed + r)
        for k, (tr, te) in enumerate(cv.split(idx, strata)):
            out.append(Fold(r, k, tr, te, f"repeat {r + 1} fold {k + 1}"))
    return out


# ----------------------------------------------------------------------------- CV


def survival_fold_metrics(model, X_test, y_train, y_test) -> tuple[dict, np.ndarray]:
    risk = np.asarray(model.predict(X_test), float)
    ev_tr, t_tr = y_train["event"], y_train["time"]
    times = evaluation_times(t_tr, ev_tr, y_test["time"])
    metrics = {
        "c_index": harrell_c(y_test["event"], y_test["time"], risk),
        "td_auc": time_dependent_auc(y_train, y_test, risk, times),
    }
    ibs_times = evaluation_times(t_tr, ev_tr, y_test["time"], n=12)
    try:
        surv = model.survival_at(X_test, ibs_times)
        metrics["ibs"] = integrated_brier(y_train, y_test, surv, ibs_times)
    except (AttributeError, NotImplementedError):
        metrics["ibs"] = float("nan")
    return metrics, risk


def cross_validate_survival(
    factories: dict[str, Callable[[], object]],
    X: pd.DataFrame,
    event: np.ndarray,
    time: np.ndarray,
    folds: list[Fold],
) -> Iterator[Progress | tuple[pd.DataFrame, dict[str, np.ndarray]]]:
    """Generator: yields Progress, then finally ``(per-fold table, out-of-fold risks)``.

    Out-of-fold risks also carry the high/low group (risk above the fold's training
    median) as ``<model>:high``.
    """
    rows = []
    oof: dict[str, np.ndarray] = {}
    y = make_y(event, time)
    total = len(folds) * len(factories)
    done = 0
    for f in folds:
        Xtr, Xte = X.iloc[f.train], X.iloc[f.test]
        for name, factory in factories.items():
            yield Progress(done, total, f"survival CV {f.label}: {name}")
            model = clone(factory())
            model.fit(Xtr, y[f.train])
            metrics, risk = survival_fold_metrics(model, Xte, y[f.train], y[f.test])
            cut = float(np.median(model.train_risk_))
            if f.repeat == 0:
                oof.setdefault(name, np.full(len(X), np.nan))[f.test] = risk
                oof.setdefault(f"{name}:high", np.full(len(X), np.nan))[f.test] = risk > cut
            rows.append(
                {
                    "model": name,
                    "repeat": f.repeat,
                    "fold": f.fold,
                    "split": f.label,
                    "n_train": len(f.train),
                    "n_test": len(f.test),
                    "events_test": int(event[f.test].sum()),
                    **metrics,
                }
            )
            done += 1
    yield Progress(total, total, "survival CV done")
    yield pd.DataFrame(rows), oof


def cross_validate_hpv(
    factory: Callable[[], object], X: pd.DataFrame, y: np.ndarray, folds: list[Fold]
) -> Iterator[Progress | tuple[pd.DataFrame, np.ndarray]]:
    """Generator: yields Progress, then ``(per-fold table, out-of-fold probabilities)``."""
    rows = []
    oof = np.full(len(X), np.nan)
    for k, f in enumerate(folds):
        yield Progress(k, len(folds), f"HPV CV {f.label}")
        model = clone(factory())
        model.fit(X.iloc[f.train], y[f.train])
        prob = model.predict_proba(X.iloc[f.test])[:, 1]
        if f.repeat == 0:
            oof[f.test] = prob
        m = classification_metrics(y[f.test], prob, model.threshold_)
        rows.append(
            {
                "model": "hpv_rf",
                "repeat": f.repeat,
                "fold": f.fold,
                "split": f.label,
                "n_train": len(f.train),
                "n_test": len(f.test),
                "threshold": model.threshold_,
                **m,
            }
        )
    yield Progress(len(folds), len(folds), "HPV CV done")
    yield pd.DataFrame(rows), oof


def summarise(folds_table: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Mean and SD over folds (and repeats) per model."""
    out = []
    for name, grp in folds_table.groupby("model", sort=False):
        row = {"model": name, "folds": len(grp)}
        for m in metrics:
            if m in grp:
                row[m] = float(np.nanmean(grp[m])) if grp[m].notna().any() else float("nan")
                row[f"{m}_sd"] = (
                    float(np.nanstd(grp[m], ddof=1)) if grp[m].notna().sum() > 1 else float("nan")
                )
        out.append(row)
    return pd.DataFrame(out)


def compare_models(folds_table: pd.DataFrame, metric: str, reference: str) -> pd.DataFrame:
    """Corrected resampled t-test of every model against ``reference`` on ``metric``."""
    rows = []
    ref = folds_table[folds_table["model"] == reference].set_index(["repeat", "fold"])
    if ref.empty:
        return pd.DataFrame(columns=["model", "reference", "metric", "difference", "t", "p"])
    for name, grp in folds_table.groupby("model", sort=False):
        if name == reference:
            continue
        g = grp.set_index(["repeat", "fold"]).reindex(ref.index)
        diff, t, p = corrected_resampled_ttest(
            g[metric].to_numpy(),
            ref[metric].to_numpy(),
            float(ref["n_train"].mean()),
            float(ref["n_test"].mean()),
        )
        rows.append(
            {
                "model": name,
                "reference": reference,
                "metric": metric,
                "difference": diff,
                "t": t,
                "p": p,
            }
        )
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- plots


def plot_km(groups: dict, path: Any, title: str, unit: str = "days",
            highlight: str | None = None, size: tuple[float, float] = (5.5, 4.0),
            dpi: int = 110) -> None:
    """PNG (file path or binary file object) of the low/high risk-group Kaplan-Meier curves.

    ``highlight``: the group drawn bold and marked "this patient". Drawn on a plain
    ``Figure`` (no pyplot state), so a worker thread may call it while a GUI runs.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=dpi)
    ax = fig.add_subplot()
    for name, color in (("low", "tab:blue"), ("high", "tab:red")):
        if name in groups:
            g = groups[name]
            t = np.concatenate([[0.0], g["time"]])
            s = np.concatenate([[1.0], g["survival"]])
            label = f"{name} risk (n={g.get('n', '?')}, events={g.get('events', '?')})"
            ax.step(t, s, where="post", color=color, linewidth=3 if name == highlight else 1.2,
                    label=label + (" - this patient" if name == highlight else ""))
    p = groups.get("logrank_p")
    ax.set_title(f"{title}\nlog-rank p = {p:.3g}" if p is not None and not math.isnan(p)
                 else title, fontsize=9)
    ax.set_xlabel(f"time ({unit})")
    ax.set_ylabel("relapse-free survival")
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, format="png")


def plot_roc(y, prob, path, title: str = "HPV classifier (out-of-fold)") -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    y = np.asarray(y, int)
    prob = np.asarray(prob, float)
    fpr, tpr, _ = roc_curve(y, prob)
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=110)
    ax.plot(fpr, tpr, color="tab:purple", label=f"AUC = {roc_auc_score(y, prob):.3f}")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
