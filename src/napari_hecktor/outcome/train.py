"""Cohort-level training, evaluation and prediction: the functions the CLI and the panel call.

- :func:`train_outcome` (progress generator :func:`train_outcome_job`): cross-validates
  the survival models and the HPV classifier (patient-level k-fold, repeated, or
  leave-centre-out), compares each model with the clinical-only CoxPH (corrected
  resampled t-test), evaluates on the test rows when the spec names a split, fits the
  final models on all training rows, and writes models + report to ``out_dir``.
- :func:`predict_outcome`: HPV probability and call, risk score, risk group and expected
  RFS for every row of a table, from a saved model folder.
- :func:`predict_case`: the same for one patient (a dict), for the napari results panel.
- :func:`km_training_curves`: the training Kaplan-Meier curves per risk group, stored at
  fit time, for the panel's plot.

Model folder layout::

    outcome_model.json          bundle manifest: spec, models, primary model, label, metrics
    survival_<name>.json/.npz   one survival pipeline each (see persistence)
    hpv.json/.npz               the HPV classifier
    report/                     cv_folds.csv, cv_summary.csv, comparisons.csv,
                                test_summary.csv, report.json, km_<model>.png, roc_hpv.png
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Generator, Iterator, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from napari_hecktor.errors import HecktorInputError
from napari_hecktor.progress import Progress, run_to_end

from . import evaluation as ev
from ._state import plain
from .models import SURVIVAL_MODELS, _opts, hpv_model, input_schema, survival_model
from .persistence import check_table, load_model, save_model
from .spec import (
    OutcomeSpec,
    hpv_target,
    load_spec,
    read_table,
    spec_from_dict,
    split_masks,
    survival_target,
)
from .survival import make_y

BUNDLE = "outcome_model.json"
BUNDLE_FORMAT = "napari-hecktor-outcome-bundle"
NOT_CLINICAL = "research use only - not for clinical use"
SURV_METRICS = ["c_index", "td_auc", "ibs"]
HPV_METRICS = [
    "auc",
    "balanced_accuracy",
    "sensitivity",
    "specificity",
    "accuracy",
    "majority_accuracy",
]


def _check_ids(df: pd.DataFrame, spec: OutcomeSpec) -> None:
    ids = df[spec.id].astype(str)
    dup = ids[ids.duplicated()].unique()
    if len(dup):
        raise HecktorInputError(
            f"Patient {', '.join(repr(d) for d in dup[:3])} appears more than once in the "
            f"table; outcome models need one row per patient."
        )


def _format_table(summary: pd.DataFrame, metrics: list[str]) -> str:
    lines = []
    head = f"{'model':<14}" + "".join(f"{m:>22}" for m in metrics)
    lines.append(head)
    for _, row in summary.iterrows():
        cells = []
        for m in metrics:
            v, sd = row.get(m, float("nan")), row.get(f"{m}_sd", float("nan"))
            if v is None or (isinstance(v, float) and math.isnan(v)):
                cells.append(f"{'-':>22}")
            elif m.startswith("logrank"):
                cells.append(f"{v:>22.2g}")
            elif sd is None or (isinstance(sd, float) and math.isnan(sd)):
                cells.append(f"{v:>22.3f}")
            else:
                cells.append(f"{f'{v:.3f} +- {sd:.3f}':>22}")
        lines.append(f"{row['model']:<14}" + "".join(cells))
    return "\n".join(lines)


def train_outcome_job(
    table_csv: str | Path | pd.DataFrame,
    spec_yaml: str | Path | Mapping | OutcomeSpec | None,
    out_dir: str | Path,
    *,
    cv: str = "kfold",
    models: Sequence[str] = SURVIVAL_MODELS,
    target: str = "both",
    folds: int = 5,
    repeats: int = 1,
    seed: int = 0,
    options: dict[str, Any] | None = None,
    label: str = NOT_CLINICAL,
    command: str | None = None,
) -> Generator[Progress, None, dict[str, Any]]:
    """Progress generator behind :func:`train_outcome` (same arguments, same result)."""
    if target not in ("survival", "hpv", "both"):
        raise HecktorInputError(f"target must be 'survival', 'hpv' or 'both', not {target!r}.")
    unknown = [m for m in models if m not in SURVIVAL_MODELS]
    if unknown:
        raise HecktorInputError(
            f"Unknown survival model {', '.join(map(repr, unknown))} "
            f"(choose from {', '.join(SURVIVAL_MODELS)})."
        )
    _opts(options)
    spec = load_spec(spec_yaml)
    df = read_table(table_csv, spec.id)
    spec = spec.resolve(df)
    _check_ids(df, spec)
    df[spec.id] = df[spec.id].astype(str)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise HecktorInputError(f"{out} is a file, not a folder.")
    if (out / BUNDLE).exists():
        raise HecktorInputError(f"{out} already holds an outcome model; choose a new folder.")
    if cv == "center" and not spec.center:
        raise HecktorInputError("Leave-centre-out CV needs a 'center' column in the spec.")
    if target in ("hpv", "both") and not spec.hpv:
        if target == "hpv":
            raise HecktorInputError("The spec names no HPV column ('hpv'), so no HPV model.")
        target = "survival"
    train_mask, test_mask = split_masks(df, spec)
    event, time = survival_target(df, spec)
    labels = hpv_target(df, spec)
    do_surv = target in ("survival", "both") and len(models) > 0
    do_hpv = target in ("hpv", "both")
    # check what can be checked before the long work starts
    if do_surv:
        from .survival import check_survival_rows

        ok = train_mask & ~np.isnan(time)
        check_survival_rows(event[ok], time[ok])
    if do_hpv:
        known = labels[train_mask & ~np.isnan(labels)]
        n_pos, n_neg = int((known == 1).sum()), int((known == 0).sum())
        need = max(3, folds if cv == "kfold" else 3)
        if min(n_pos, n_neg) < need:
            raise HecktorInputError(
                f"Too few training patients with a known HPV status ({n_pos} positive, "
                f"{n_neg} negative) for the HPV classifier: at least {need} of each are "
                f"needed; use target='survival'."
            )
    report = out / "report"
    report.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"out_dir": str(out), "spec": spec.to_dict(), "files": []}
    summaries, texts, fold_tables, comparisons, tests = [], [], [], [], []
    bundle: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "format_version": 1,
        "label": label,
        "spec": spec.to_dict(),
        "time_unit": spec.time_unit,
        "seed": seed,
        "cv": cv,
        "folds": folds,
        "repeats": repeats,
        "options": plain(_opts(options)),
        "command": command or " ".join(sys.argv),
        "survival_models": {},
        "hpv": None,
    }
    total_steps = 4
    yield Progress(0, total_steps, "reading the table")

    def patient_folds(rows: pd.DataFrame, strata: np.ndarray) -> list:
        """Patient-level cross-validation splits of these rows (stratified; by centre)."""
        return ev.make_folds(len(rows), kind=cv, folds=folds, repeats=repeats, seed=seed,
                             strata=strata, groups=rows[spec.center] if spec.center else None)

    # ------------------------------------------------------------------ survival
    if do_surv:
        rows = train_mask & ~np.isnan(time)
        Xs = df.loc[rows].reset_index(drop=True)
        e_s, t_s = event[rows], time[rows]
        names = list(dict.fromkeys(models))
        factories = {n: (lambda n=n: survival_model(n, spec, seed, options)) for n in names}
        folds_tab, oof = yield from _last_result(
            ev.cross_validate_survival(factories, Xs, e_s, t_s, patient_folds(Xs, e_s)))
        summ = ev.summarise(folds_tab, SURV_METRICS)
        # out-of-fold risk groups (each fold split at its own training median)
        km_oof = {}
        for n in names:
            high = oof[f"{n}:high"]
            ok = ~np.isnan(high)
            if ok.any():
                km_oof[n] = ev.risk_group_curves(t_s[ok], e_s[ok], high[ok], 0.5)
        summ["logrank_p_oof"] = [km_oof.get(n, {}).get("logrank_p", np.nan) for n in summ["model"]]
        ref = "cox_clinical" if "cox_clinical" in names else names[0]
        comp = ev.compare_models(folds_tab, "c_index", ref)
        fold_tables.append(folds_tab)
        summaries.append(summ)
        comparisons.append(comp)
        texts.append(
            "Survival, cross-validated (" + _cv_words(cv, folds, repeats) + f", "
            f"{len(Xs)} patients, {int(e_s.sum())} events):\n"
            + _format_table(summ, SURV_METRICS + ["logrank_p_oof"])
        )
        if not comp.empty:
            texts.append(
                f"Corrected resampled t-test of the C-index against {ref}:\n"
                + "\n".join(
                    f"  {r.model:<12} difference {r.difference:+.3f}  t {r.t:+.2f}  p {r.p:.3g}"
                    for r in comp.itertuples()
                )
            )
        # final fits on all training rows
        y_all = make_y(e_s, t_s)
        for k, n in enumerate(names):
            yield Progress(k, len(names), f"fitting the final {n} model")
            model = survival_model(n, spec, seed, options).fit(Xs, y_all)
            cut = float(np.median(model.train_risk_))
            km = ev.risk_group_curves(t_s, e_s, model.train_risk_, cut)
            row = summ[summ["model"] == n].iloc[0].to_dict()
            extra = {
                "name": n,
                "risk_cut": cut,
                "km_training": km,
                "cv": row,
                "time_unit": spec.time_unit,
                "label": label,
            }
            stem = out / f"survival_{n}"
            save_model(model, stem, schema=input_schema(model), extra=extra)
            bundle["survival_models"][n] = {
                "file": stem.name,
                "risk_cut": cut,
                "cv_c_index": row.get("c_index"),
            }
            result["files"] += [str(stem.with_suffix(".json")), str(stem.with_suffix(".npz"))]
            if n in km_oof:
                png = report / f"km_{n}.png"
                ev.plot_km(km_oof[n], png, f"{n}: out-of-fold risk groups", spec.time_unit)
                result["files"].append(str(png))
            if test_mask.any():
                rt = test_mask & ~np.isnan(time)
                if rt.sum() >= 2:
                    Xt = df.loc[rt].reset_index(drop=True)
                    m, risk = ev.survival_fold_metrics(
                        model, Xt, y_all, make_y(event[rt], time[rt])
                    )
                    m["logrank_p"] = ev.logrank_p(time[rt], event[rt], risk > cut)
                    tests.append(
                        {
                            "model": n,
                            "n_test": int(rt.sum()),
                            "events_test": int(event[rt].sum()),
                            **m,
                        }
                    )
        primary = (
            "cox"
            if "cox" in names
            else max(names, key=lambda n: np.nan_to_num(summ.set_index("model").loc[n, "c_index"]))
        )
        bundle["primary"] = primary

    # ------------------------------------------------------------------ HPV
    if do_hpv:
        rows = train_mask & ~np.isnan(labels)
        Xh = df.loc[rows].reset_index(drop=True)
        yh = labels[rows].astype(int)
        hpv_folds, hpv_oof = yield from _last_result(ev.cross_validate_hpv(
            lambda: hpv_model(spec, seed, options), Xh, yh, patient_folds(Xh, yh)))
        hsum = ev.summarise(hpv_folds, HPV_METRICS)
        fold_tables.append(hpv_folds)
        summaries.append(hsum)
        texts.append(
            f"HPV status, cross-validated ({_cv_words(cv, folds, repeats)}, {len(Xh)} patients, "
            f"{int(yh.sum())} positive):\n" + _format_table(hsum, HPV_METRICS[:5])
        )
        ok = ~np.isnan(hpv_oof)
        png = report / "roc_hpv.png"
        ev.plot_roc(yh[ok], hpv_oof[ok], png)
        result["files"].append(str(png))
        yield Progress(0, 1, "fitting the final HPV model")
        model = hpv_model(spec, seed, options).fit(Xh, yh)
        extra = {
            "name": "hpv_rf",
            "threshold": model.threshold_,
            "cv": hsum.iloc[0].to_dict(),
            "best_params": model.best_params_,
            "label": label,
        }
        stem = out / "hpv"
        save_model(model, stem, schema=input_schema(model), extra=extra)
        bundle["hpv"] = {"file": stem.name, "threshold": model.threshold_}
        result["files"] += [str(stem.with_suffix(".json")), str(stem.with_suffix(".npz"))]
        if test_mask.any():
            rt = test_mask & ~np.isnan(labels)
            if rt.sum() >= 2:
                prob = model.predict_proba(df.loc[rt])[:, 1]
                m = ev.classification_metrics(labels[rt].astype(int), prob, model.threshold_)
                tests.append({"model": "hpv_rf", "n_test": int(rt.sum()), **m})

    # ------------------------------------------------------------------ report
    yield Progress(3, total_steps, "writing the report")
    summary = pd.concat(summaries, ignore_index=True) if summaries else pd.DataFrame()
    folds_all = pd.concat(fold_tables, ignore_index=True) if fold_tables else pd.DataFrame()
    comp_all = pd.concat(comparisons, ignore_index=True) if comparisons else pd.DataFrame()
    test_df = pd.DataFrame(tests) if tests else None
    if test_df is not None:
        texts.append(
            "Test rows (models fitted on all training rows):\n"
            + test_df.round(3).to_string(index=False)
        )
    text = "\n\n".join(texts)
    for name, frame in (
        ("cv_folds", folds_all),
        ("cv_summary", summary),
        ("comparisons", comp_all),
        ("test_summary", test_df),
    ):
        if frame is not None and not frame.empty:
            path = report / f"{name}.csv"
            frame.to_csv(path, index=False)
            result["files"].append(str(path))
    bundle["cv_summary"] = plain(summary.to_dict(orient="records"))
    bundle["test_summary"] = (
        plain(test_df.to_dict(orient="records")) if test_df is not None else None
    )
    (report / "report.json").write_text(
        json.dumps(
            plain(
                {
                    "label": label,
                    "spec": spec.to_dict(),
                    "cv": cv,
                    "folds": folds,
                    "repeats": repeats,
                    "seed": seed,
                    "summary": bundle["cv_summary"],
                    "comparisons": plain(comp_all.to_dict(orient="records")),
                    "test": bundle["test_summary"],
                    "text": text,
                }
            ),
            indent=1,
            allow_nan=False,
        ),
        encoding="utf-8",
    )
    (report / "summary.txt").write_text(text + "\n", encoding="utf-8")
    (out / BUNDLE).write_text(
        json.dumps(plain(bundle), indent=1, allow_nan=False), encoding="utf-8"
    )
    result["files"] += [str(report / "report.json"), str(report / "summary.txt"), str(out / BUNDLE)]
    yield Progress(total_steps, total_steps, "done")
    result.update(
        {
            "summary": summary,
            "text": text,
            "folds": folds_all,
            "comparisons": comp_all,
            "test": test_df,
        }
    )
    return result


def _last_result(job: Iterator[Any]) -> Generator[Progress, None, Any]:
    """Pass a cross-validation job's progress on; return the last item it yields."""
    result = None
    for item in job:
        if isinstance(item, Progress):
            yield Progress(item.done, item.total, item.message)
        else:
            result = item
    return result


def _cv_words(cv: str, folds: int, repeats: int) -> str:
    if cv == "center":
        return "leave-centre-out"
    return f"{folds}-fold" + (f" x {repeats} repeats" if repeats > 1 else "")


def train_outcome(
    table_csv,
    spec_yaml,
    out_dir,
    cv="kfold",
    models=SURVIVAL_MODELS,
    target="both",
    folds=5,
    repeats=1,
    seed=0,
    *,
    options=None,
    label=NOT_CLINICAL,
    command=None,
    progress=None,
) -> dict[str, Any]:
    """Cross-validate, fit and save the outcome models; returns the report.

    The result holds ``summary`` (DataFrame: one row per model, CV mean and SD of each
    metric), ``text`` (the same, printable), ``folds`` (per-fold metrics),
    ``comparisons`` (corrected resampled t-tests against ``cox_clinical``), ``test``
    (test-row metrics when the spec names a split, else None), ``out_dir`` and ``files``.
    ``progress(Progress)`` is called at every step.
    """
    return run_to_end(
        train_outcome_job(
            table_csv,
            spec_yaml,
            out_dir,
            cv=cv,
            models=models,
            target=target,
            folds=folds,
            repeats=repeats,
            seed=seed,
            options=options,
            label=label,
            command=command,
        ),
        progress,
    )


# ----------------------------------------------------------------------------- prediction


class OutcomeBundle:
    """A loaded model folder: the spec, the survival models and the HPV classifier."""

    def __init__(self, model_dir: str | Path):
        self.dir = Path(model_dir)
        path = self.dir / BUNDLE
        if not path.is_file():
            raise HecktorInputError(f"{self.dir} holds no outcome model ({BUNDLE} is missing).")
        try:
            self.manifest = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise HecktorInputError(f"{path} is not valid JSON ({exc}).") from None
        if self.manifest.get("format") != BUNDLE_FORMAT:
            raise HecktorInputError(f"{path} is not a napari-hecktor outcome model bundle.")
        self.spec = spec_from_dict(self.manifest["spec"], source=f"spec stored in {path.name}")
        self.label = self.manifest.get("label", NOT_CLINICAL)
        self.time_unit = self.manifest.get("time_unit", "days")
        self._models: dict[str, tuple[Any, dict]] = {}

    @property
    def survival_names(self) -> list[str]:
        return list(self.manifest.get("survival_models", {}))

    @property
    def primary(self) -> str | None:
        return self.manifest.get("primary")

    def survival(self, name: str | None = None):
        name = name or self.primary
        if name is None:
            raise HecktorInputError(f"{self.dir} holds no survival model.")
        entry = self.manifest["survival_models"].get(name)
        if entry is None:
            raise HecktorInputError(
                f"{self.dir} holds no survival model '{name}' (it has: "
                f"{', '.join(self.survival_names) or 'none'})."
            )
        if name not in self._models:
            self._models[name] = load_model(self.dir / entry["file"])
        return self._models[name]

    def hpv(self):
        entry = self.manifest.get("hpv")
        if entry is None:
            return None
        if "__hpv__" not in self._models:
            self._models["__hpv__"] = load_model(self.dir / entry["file"])
        return self._models["__hpv__"]

    def check(self, table: pd.DataFrame, doc: dict, what: str, strict: bool = True) -> None:
        feats = self.spec.match_features(table.columns, table)
        check_table(
            table,
            doc.get("schema", {}),
            strict_features=strict,
            feature_columns=feats,
            known_features=self.spec.feature_columns,
            what=what,
        )


@lru_cache(maxsize=8)
def _bundle_cached(path: str, mtime: float) -> OutcomeBundle:
    return OutcomeBundle(path)


def load_bundle(model_dir: str | Path) -> OutcomeBundle:
    path = Path(model_dir)
    manifest = path / BUNDLE
    mtime = manifest.stat().st_mtime if manifest.exists() else 0.0
    return _bundle_cached(str(path.resolve()), mtime)


def predict_outcome(
    table_csv: str | Path | pd.DataFrame,
    model_dir: str | Path,
    out_csv: str | Path | None = None,
    *,
    model: str | None = None,
    strict: bool = True,
) -> pd.DataFrame:
    """Predictions for every row of a table (clinical alone, or joined with features).

    Columns: the id, ``hpv_probability``, ``hpv_call`` (positive/negative at the stored
    threshold), ``risk_score`` (higher = earlier relapse), ``risk_group`` (low/high at the
    training median), ``expected_rfs_<unit>`` (restricted mean RFS in the training
    table's time unit). Written to ``out_csv`` when given. A table lacking a column the
    models use is refused; so is (with ``strict``) one with feature columns they were not
    trained with.
    """
    bundle = load_bundle(model_dir)
    spec = bundle.spec
    df = read_table(table_csv, spec.id)
    if spec.id not in df.columns:
        raise HecktorInputError(f"The table has no id column '{spec.id}'.")
    out = pd.DataFrame({spec.id: df[spec.id].astype(str).to_numpy()})
    hpv = bundle.hpv()
    if hpv is not None:
        est, doc = hpv
        bundle.check(df, doc, "HPV model", strict)
        prob = est.predict_proba(df)[:, 1]
        out["hpv_probability"] = prob
        out["hpv_call"] = np.where(prob >= est.threshold_, "positive", "negative")
    if bundle.survival_names:
        name = model or bundle.primary
        est, doc = bundle.survival(name)
        bundle.check(df, doc, f"survival model '{name}'", strict)
        risk = est.predict(df)
        cut = float(doc["extra"]["risk_cut"])
        out["risk_score"] = risk
        out["risk_group"] = np.where(risk > cut, "high", "low")
        out[f"expected_rfs_{bundle.time_unit}"] = est.predict_expected_time(df)
    out.attrs["model"] = model or bundle.primary
    out.attrs["label"] = bundle.label
    if out_csv is not None:
        Path(out_csv).parent.mkdir(parents=True, exist_ok=True)
        out.to_csv(out_csv, index=False)
    return out


def model_inputs(model_dir: str | Path, *, model: str | None = None) -> dict[str, dict]:
    """Input columns of the HPV model and the (primary) survival model.

    ``{column: {"kind": "numeric"|"categorical", "role": "clinical"|"feature",
    "categories": [...]}}``: what a panel should collect for :func:`predict_case`.
    """
    bundle = load_bundle(model_dir)
    out: dict[str, dict] = {}
    docs = []
    if bundle.manifest.get("hpv"):
        docs.append(bundle.hpv()[1])
    if bundle.survival_names:
        docs.append(bundle.survival(model)[1])
    for doc in docs:
        for col, info in doc.get("schema", {}).items():
            out.setdefault(col, info)
    return out


def predict_case(
    row: Mapping[str, Any], model_dir: str | Path, *, model: str | None = None
) -> dict:
    """Predictions for one patient given as ``{column: value}``.

    Columns the models use but ``row`` lacks count as missing values (imputed), and
    other columns (every radiomics value of the panel, say) are ignored, unlike
    :func:`predict_outcome`, which refuses a table without them. Returns ``id``,
    ``hpv_probability``, ``hpv_call``, ``hpv_threshold``, ``risk_score``, ``risk_group``,
    ``risk_cut``, ``expected_rfs_<unit>``, ``time_unit``, ``model`` and ``label``.
    """
    bundle = load_bundle(model_dir)
    data = dict(row)
    data.setdefault(bundle.spec.id, "case")
    for col in model_inputs(model_dir, model=model):
        data.setdefault(col, None)  # a value the panel does not know is missing
    frame = pd.DataFrame([data])
    pred = predict_outcome(frame, model_dir, model=model, strict=False).iloc[0].to_dict()
    name = model or bundle.primary
    result: dict[str, Any] = {
        "id": str(pred.pop(bundle.spec.id)),
        "model": name,
        "time_unit": bundle.time_unit,
        "label": bundle.label,
    }
    for k, v in pred.items():
        result[k] = v.item() if isinstance(v, np.generic) else v
    if bundle.manifest.get("hpv"):
        result["hpv_threshold"] = float(bundle.manifest["hpv"]["threshold"])
    if name:
        result["risk_cut"] = float(bundle.manifest["survival_models"][name]["risk_cut"])
    return result


def km_training_curves(model_dir: str | Path, model: str | None = None) -> dict[str, Any]:
    """Training Kaplan-Meier curves of the low/high risk groups (arrays), stored at fit time.

    Returns ``{"low": {"time", "survival", "at_risk", "n", "events"}, "high": {...},
    "cut", "logrank_p", "time_unit", "model", "label"}``.
    """
    bundle = load_bundle(model_dir)
    name = model or bundle.primary
    _, doc = bundle.survival(name)
    km = doc["extra"]["km_training"]
    p = km.get("logrank_p")
    out: dict[str, Any] = {
        "cut": km["cut"],
        "logrank_p": float("nan") if p is None else float(p),
        "time_unit": bundle.time_unit,
        "model": name,
        "label": bundle.label,
    }
    for g in ("low", "high"):
        if g in km:
            out[g] = {
                k: (np.asarray(v, dtype=np.float64) if isinstance(v, list) else v)
                for k, v in km[g].items()
            }
    return out


def km_training_png(model_dir: str | Path, highlight: str | None = None) -> bytes:
    """:func:`km_training_curves` drawn as a PNG (bytes), the ``highlight`` group in bold.

    Drawn on a plain matplotlib ``Figure``, so a worker thread may call it under a GUI."""
    import io

    curves = km_training_curves(model_dir)
    buffer = io.BytesIO()
    ev.plot_km(curves, buffer, "training cohort", curves.get("time_unit", "days"),
               highlight=highlight, size=(4.0, 2.8), dpi=100)
    return buffer.getvalue()
