"""Outcome engine: Cox against R, C-index against scikit-survival, leakage guards,
persistence round trips, table/spec validation, and cross-validated figures on a
synthetic cohort that follows the phantom's generative model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from napari_hecktor.errors import HecktorInputError
from napari_hecktor.outcome import evaluation as ev
from napari_hecktor.outcome.encoding import TablePreprocessor
from napari_hecktor.outcome.hpv import HPVClassifier
from napari_hecktor.outcome.models import hpv_model, survival_model
from napari_hecktor.outcome.persistence import load_model, save_model
from napari_hecktor.outcome.spec import (
    default_spec,
    hpv_target,
    join_tables,
    load_spec,
    spec_from_dict,
    survival_target,
)
from napari_hecktor.outcome.survival import CoxPH, make_y
from napari_hecktor.outcome.synthetic import PET_COLUMNS, synthetic_outcome_table
from napari_hecktor.outcome.train import (
    km_training_curves,
    km_training_png,
    model_inputs,
    predict_case,
    predict_outcome,
    train_outcome,
)

FAST = {
    "rsf_trees": 30,
    "epochs": 120,
    "hpv_trees": 60,
    "stack_hpv_trees": 40,
    "hpv_grid": {},
    "stack_cv": 3,
}

# R survival::coxph(Surv(week, arrest) ~ fin + age + race + wexp + mar + paro + prio, rossi)
R_ROSSI_EFRON = {
    "fin": -0.379422,
    "age": -0.057438,
    "race": 0.313900,
    "wexp": -0.149796,
    "mar": -0.433704,
    "paro": -0.084871,
    "prio": 0.091497,
}


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cohort() -> pd.DataFrame:
    return synthetic_outcome_table(240, seed=1)


@pytest.fixture(scope="module")
def spec(cohort):
    return default_spec().resolve(cohort)


@pytest.fixture(scope="module")
def trained(cohort, tmp_path_factory) -> dict:
    """One cross-validated training run (clinical vs integrated Cox, HPV) saved to disk."""
    out = tmp_path_factory.mktemp("outcome") / "model"
    res = train_outcome(
        cohort,
        None,
        out,
        cv="kfold",
        models=("cox_clinical", "cox"),
        target="both",
        folds=5,
        seed=0,
        options=FAST,
    )
    return res


@pytest.fixture(scope="module")
def fitted(cohort, spec) -> dict:
    """Every persistable model fitted once on the synthetic cohort."""
    event, time = survival_target(cohort, spec)
    y = make_y(event, time)
    models = {
        n: survival_model(n, spec, 0, FAST).fit(cohort, y)
        for n in ("cox_clinical", "cox", "rsf", "deepsurv", "discrete")
    }
    lab = hpv_target(cohort, spec)
    known = ~np.isnan(lab)
    models["hpv"] = hpv_model(spec, 0, FAST).fit(cohort[known], lab[known].astype(int))
    return models


# ----------------------------------------------------------------------------- Cox and C-index


def test_cox_efron_matches_r_on_rossi():
    from lifelines import CoxPHFitter
    from lifelines.datasets import load_rossi

    rossi = load_rossi()
    X = rossi.drop(columns=["week", "arrest"])
    model = CoxPH().fit(X, make_y(rossi["arrest"], rossi["week"]))
    for name, coef in zip(X.columns, model.coef_, strict=True):
        assert coef == pytest.approx(R_ROSSI_EFRON[name], abs=1e-4), name
    # lifelines (Efron as well) agrees on the likelihood and the standard errors
    lf = CoxPHFitter().fit(rossi, "week", "arrest")
    assert model.loglik_ == pytest.approx(lf.log_likelihood_, abs=1e-6)
    np.testing.assert_allclose(model.se_, lf.standard_errors_[X.columns].to_numpy(), rtol=1e-5)
    assert model.converged_


def test_cox_breslow_matches_scikit_survival():
    from lifelines.datasets import load_rossi
    from sksurv.linear_model import CoxPHSurvivalAnalysis

    rossi = load_rossi()
    X = rossi.drop(columns=["week", "arrest"]).astype(float)
    y = make_y(rossi["arrest"], rossi["week"])
    ours = CoxPH(ties="breslow").fit(X, y)
    ref = CoxPHSurvivalAnalysis().fit(X, y)  # Breslow is its default
    np.testing.assert_allclose(ours.coef_, ref.coef_, atol=1e-6)


def test_c_index_equals_scikit_survival_on_whas500():
    from lifelines.utils import concordance_index
    from sksurv.datasets import load_whas500
    from sksurv.metrics import concordance_index_censored

    X, y = load_whas500()
    X = X[["age", "bmi", "hr", "sysbp", "diasbp"]].astype(float)
    event, time = y["fstat"], y["lenfol"]
    model = CoxPH().fit(X, make_y(event, time))
    risk = model.predict(X)
    ours = ev.harrell_c(event, time, risk)
    assert ours == concordance_index_censored(event, time, risk)[0]
    # lifelines takes "higher = longer survival": the same number with the sign flipped
    assert ours == pytest.approx(concordance_index(time, -risk, event), abs=1e-12)
    assert ours > 0.6


# ----------------------------------------------------------------------------- leakage


def _noise_table(n: int, p: int, seed: int):
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.normal(size=(n, p)), columns=[f"f{j}" for j in range(p)])
    y = (rng.uniform(size=n) < 0.2).astype(int)  # 1 in 5 positive
    return X, y


def test_smote_before_cv_inflates_auc_but_our_pipeline_does_not():
    from imblearn.over_sampling import SMOTE
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    X, y = _noise_table(200, 10, seed=3)
    # the mistake: oversample the whole table, then cross-validate
    Xr, yr = SMOTE(random_state=0).fit_resample(X, y)
    leaky = cross_val_predict(
        RandomForestClassifier(100, random_state=0),
        Xr,
        yr,
        cv=StratifiedKFold(5, shuffle=True, random_state=0),
        method="predict_proba",
    )[:, 1]
    assert roc_auc_score(yr, leaky) > 0.8
    # ours: SMOTE inside the imbalanced-learn pipeline, inside every fold
    folds = ev.make_folds(len(X), folds=5, strata=y, seed=0)

    def factory():
        return HPVClassifier(features=list(X.columns), n_estimators=60, grid={})

    *_, (_, oof) = ev.cross_validate_hpv(factory, X, y, folds)
    auc = roc_auc_score(y, oof)  # pooled out-of-fold probabilities
    assert 0.35 < auc < 0.65, auc


def test_fold_index_feature_gives_no_gain():
    """The outcome depends on fold membership only; the fold index is a feature.

    Fitted on all rows, the fold index looks strongly prognostic; under our CV it is
    constant within each test fold, so any gain there would mean that test rows or fold
    structure leaked into fitting (overlapping train/test rows, fitting before splitting).
    """
    n = 200
    rng = np.random.default_rng(5)
    strata = rng.uniform(size=n) < 0.5
    folds = ev.make_folds(n, folds=5, strata=strata, seed=0)
    fold_of = np.empty(n, int)
    for f in folds:
        fold_of[f.test] = f.fold
        assert np.intersect1d(f.train, f.test).size == 0
        assert f.train.size + f.test.size == n
    effect = np.array([-1.5, 1.0, -0.5, 1.5, 0.0])[fold_of]
    time = rng.exponential(500.0 * np.exp(-effect))
    event = rng.uniform(size=n) < 0.8
    hpv = (rng.uniform(size=n) < 1.0 / (1.0 + np.exp(-2.0 * effect))).astype(int)
    table = pd.DataFrame(
        {
            "id": [f"P{i}" for i in range(n)],
            "t": time,
            "e": event.astype(int),
            "hpv": hpv,
            "fold_index": fold_of.astype(float),
            "noise": rng.normal(size=n),
        }
    )
    spec = spec_from_dict(
        {
            "id": "id",
            "time": "t",
            "event": "e",
            "numeric": ["noise"],
            "hpv": {"column": "hpv"},
            "features": ["fold_"],
        }
    ).resolve(table)
    # fitted on everything, the fold index is "informative"
    y = make_y(event, time)
    apparent = survival_model(
        "cox_clinical",
        spec_from_dict({"id": "id", "time": "t", "event": "e", "numeric": ["fold_index", "noise"]}),
        0,
        FAST,
    ).fit(table, y)
    assert ev.harrell_c(event, time, apparent.predict(table)) > 0.6
    # cross-validated, it is worth nothing
    factories = {m: (lambda m=m: survival_model(m, spec, 0, FAST)) for m in ("cox", "rsf")}
    *_, (cv_table, _) = ev.cross_validate_survival(factories, table, event, time, folds)
    for model, grp in cv_table.groupby("model"):
        assert 0.4 < grp["c_index"].mean() < 0.6, (model, grp["c_index"].tolist())
    *_, (hpv_table, _) = ev.cross_validate_hpv(
        lambda: hpv_model(spec, 0, FAST),
        table,
        hpv,
        ev.make_folds(n, folds=5, strata=strata, seed=0),
    )
    assert 0.35 < hpv_table["auc"].mean() < 0.65


def test_leave_center_out_folds_keep_centres_apart(cohort):
    folds = ev.make_folds(len(cohort), kind="center", groups=cohort["CenterID"], folds=5)
    assert len(folds) == cohort["CenterID"].nunique() == 3
    for f in folds:
        train_c = set(cohort["CenterID"].iloc[f.train])
        test_c = set(cohort["CenterID"].iloc[f.test])
        assert not train_c & test_c and len(test_c) == 1


# ----------------------------------------------------------------------------- encoding


@pytest.mark.parametrize("imputer", ["median", "iterative"])
def test_frozen_preprocessor_equals_scikit_learn(cohort, imputer):
    prep = TablePreprocessor(
        ["Age", "Performance Status", "Tobacco Consumption"],
        ["Gender", "Treatment"],
        ["GTVp_SUVmax"],
        imputer=imputer,
    )
    train, new = cohort.iloc[:150], cohort.iloc[150:].copy()
    new.loc[new.index[:3], "Treatment"] = "Proton therapy"  # unknown category
    new.loc[new.index[3:6], "Age"] = np.nan
    prep.fit(train)
    ours = prep.transform(new)
    ct = prep.sklearn_transformer_.transform(prep._sklearn_frame(new))
    # scikit-learn keeps every category; ours drops the reference level of each variable
    sk_names = list(prep._num_names())
    for col, cats in zip(prep.categorical, prep.categories_, strict=True):
        sk_names += [f"clin:{col}={c}" for c in cats]
    sk = pd.DataFrame(ct, columns=sk_names, index=new.index)
    np.testing.assert_allclose(ours.to_numpy(), sk[list(ours.columns)].to_numpy(), atol=1e-12)
    unknown = ours.iloc[:3][[c for c in ours.columns if c.startswith("clin:Treatment=")]]
    assert (unknown.to_numpy() == 0).all()  # encoded as the reference (most frequent) level


def test_preprocessor_refuses_text_in_a_numeric_column(cohort):
    prep = TablePreprocessor(["Age"], ["Gender"]).fit(cohort)
    bad = cohort.head(3).copy()
    bad["Age"] = ["61", "sixty", None]
    with pytest.raises(HecktorInputError, match="'Age'.*'sixty'"):
        prep.transform(bad)


# ----------------------------------------------------------------------------- persistence


def test_frozen_forests_match_the_libraries(fitted, cohort):
    rsf = fitted["rsf"]
    Xt = rsf.transform_to_last(cohort)
    est = rsf.steps[-1][1]
    np.testing.assert_allclose(
        est.predict(Xt), est.sksurv_model_.predict(Xt.to_numpy()), rtol=1e-10
    )
    sk_surv = est.sksurv_model_.predict_survival_function(Xt.to_numpy(), return_array=True)
    is_ev = est.sksurv_model_.is_event_time_
    np.testing.assert_allclose(
        est.predict_survival_function(Xt, return_array=True), sk_surv[:, is_ev], atol=1e-12
    )
    hpv = fitted["hpv"]
    np.testing.assert_allclose(
        hpv.predict_proba(cohort), hpv.sklearn_pipeline_.predict_proba(cohort), atol=1e-12
    )


def test_every_model_round_trips_to_identical_predictions(fitted, cohort, tmp_path):
    new = cohort.sample(60, random_state=2).copy()
    new.loc[new.index[:5], "Treatment"] = "Proton therapy"
    new.loc[new.index[5:10], "Performance Status"] = np.nan
    times = np.array([100.0, 365.0, 730.0, 1500.0])
    for name, model in fitted.items():
        save_model(model, tmp_path / name, extra={"name": name})
        loaded, doc = load_model(tmp_path / name)
        assert doc["extra"]["name"] == name
        if name == "hpv":
            assert np.array_equal(loaded.predict_proba(new), model.predict_proba(new))
            assert loaded.threshold_ == model.threshold_
            continue
        assert np.array_equal(loaded.predict(new), model.predict(new)), name
        assert np.array_equal(loaded.survival_at(new, times), model.survival_at(new, times))
        assert np.array_equal(loaded.predict_expected_time(new), model.predict_expected_time(new))
        assert np.array_equal(loaded.train_risk_, model.train_risk_)
    # no pickle anywhere: the arrays load with allow_pickle=False and the JSON is plain
    with np.load(tmp_path / "cox.npz", allow_pickle=False) as data:
        assert all(data[k].dtype != object for k in data.files)
    doc = json.loads((tmp_path / "cox.json").read_text())
    assert doc["estimator"]["class"] == "OutcomePipeline"


def test_integrated_cox_on_a_clinical_table_alone(cohort):
    clinical = cohort.drop(columns=list(PET_COLUMNS))
    spec = default_spec().resolve(clinical)
    assert spec.feature_columns == ()
    event, time = survival_target(clinical, spec)
    model = survival_model("cox", spec, 0, FAST).fit(clinical, make_y(event, time))
    assert np.isfinite(model.predict(clinical.head(10))).all()
    assert "stack:hpv_prob" in model.named_steps["prep"].feature_names_out_


def test_loading_refuses_a_foreign_class(fitted, tmp_path):
    save_model(fitted["cox_clinical"], tmp_path / "m")
    doc = json.loads((tmp_path / "m.json").read_text())
    doc["estimator"]["children"]["steps"][0]["estimator"]["class"] = "os.system"
    (tmp_path / "m.json").write_text(json.dumps(doc))
    with pytest.raises(HecktorInputError, match="unknown model class"):
        load_model(tmp_path / "m")


# ----------------------------------------------------------------------------- cohort functions


def test_integrated_cox_beats_clinical_and_hpv_beats_majority(trained):
    summary = trained["summary"].set_index("model")
    c_clin = summary.loc["cox_clinical", "c_index"]
    c_int = summary.loc["cox", "c_index"]
    assert c_int > c_clin + 0.03, (c_int, c_clin)
    hpv = summary.loc["hpv_rf"]
    assert hpv["balanced_accuracy"] > 0.6  # majority class: 0.5
    assert hpv["accuracy"] > hpv["majority_accuracy"]
    assert hpv["auc"] > 0.75
    assert "cox_clinical" in trained["text"] and "hpv_rf" in trained["text"]
    comp = trained["comparisons"].set_index("model")
    assert comp.loc["cox", "difference"] == pytest.approx(c_int - c_clin, abs=1e-9)
    out = Path(trained["out_dir"])
    for name in ("cv_folds.csv", "cv_summary.csv", "report.json", "km_cox.png", "roc_hpv.png"):
        assert (out / "report" / name).is_file(), name


def test_predict_outcome_case_and_km_curves(trained, cohort, tmp_path):
    model_dir = trained["out_dir"]
    pred = predict_outcome(cohort.head(20), model_dir, tmp_path / "pred.csv")
    assert list(pred.columns) == [
        "PatientID",
        "hpv_probability",
        "hpv_call",
        "risk_score",
        "risk_group",
        "expected_rfs_days",
    ]
    assert set(pred["risk_group"]) <= {"low", "high"}
    assert set(pred["hpv_call"]) <= {"positive", "negative"}
    assert (tmp_path / "pred.csv").is_file()
    # a clinical table without outcome columns works; an unknown category too
    new = cohort.head(3).drop(columns=["Relapse", "RFS", "HPV Status", "CenterID"]).copy()
    new["Treatment"] = "Proton therapy"
    assert len(predict_outcome(new, model_dir)) == 3
    row = cohort.iloc[0].to_dict()
    case = predict_case(row, model_dir)
    assert case["risk_score"] == pytest.approx(pred["risk_score"].iloc[0], abs=1e-12)
    assert case["risk_group"] in ("low", "high") and case["time_unit"] == "days"
    # the panel may know only part of the clinical data: the rest counts as missing
    partial = predict_case({"Age": 71, "Gender": "M", "GTVall_volume_ml": 60.0}, model_dir)
    assert np.isfinite(partial["risk_score"]) and 0.0 <= partial["hpv_probability"] <= 1.0
    assert set(model_inputs(model_dir)) >= {"Age", "Gender", "GTVp_SUVmax"}
    km = km_training_curves(model_dir)
    for g in ("low", "high"):
        s = km[g]["survival"]
        assert s.ndim == 1 and np.all(np.diff(s) <= 0) and s[0] <= 1.0
    assert km["logrank_p"] < 0.05


def test_prediction_refuses_missing_and_extra_columns(trained, cohort):
    model_dir = trained["out_dir"]
    with pytest.raises(HecktorInputError, match="'Age'"):
        predict_outcome(cohort.head(5).drop(columns=["Age"]), model_dir)
    with pytest.raises(HecktorInputError, match="'GTVp_SUVmax'"):
        predict_outcome(cohort.head(5).drop(columns=["GTVp_SUVmax"]), model_dir)
    extra = cohort.head(5).copy()
    extra["GTVall_TLG"] = 1.0
    with pytest.raises(HecktorInputError, match="'GTVall_TLG'.*not trained"):
        predict_outcome(extra, model_dir)


# ----------------------------------------------------------------------------- specs and tables


def test_spec_naming_a_missing_column_fails_clearly(cohort, tmp_path):
    spec = {
        "id": "PatientID",
        "time": "RFS",
        "event": {"column": "Relapse", "value": 1},
        "numeric": ["Age", "Weight"],
    }
    with pytest.raises(HecktorInputError, match="no column 'Weight'"):
        train_outcome(cohort, spec, tmp_path / "m")
    few = cohort.copy()
    few["HPV Status"] = [0, 0] + [1] * (len(few) - 2)
    with pytest.raises(HecktorInputError, match="2 negative"):
        train_outcome(few, None, tmp_path / "m2", target="hpv")
    with pytest.raises(HecktorInputError, match="Unknown key 'numerics'"):
        spec_from_dict({"id": "a", "time": "b", "event": "c", "numerics": []})


def test_bundled_default_spec_yaml_equals_the_default():
    path = (
        Path(__file__).resolve().parents[1]
        / "src"
        / "napari_hecktor"
        / "outcome"
        / "resources"
        / "hecktor2025.yaml"
    )
    assert load_spec(path) == default_spec()


def test_yaml_spec_with_split_and_units(cohort, tmp_path):
    table = cohort.copy()
    table["Set"] = np.where(np.arange(len(table)) < 180, "dev", "holdout")
    table["RFS_months"] = table["RFS"] / 30.44
    (tmp_path / "spec.yaml").write_text(
        "id: PatientID\ntime: {column: RFS_months, unit: months}\n"
        "event: {column: Relapse, value: 1}\nnumeric: [Age, Performance Status]\n"
        "categorical: [Gender]\nsplit: {column: Set, train: dev, test: holdout}\n"
        "features: [GTV]\n"
    )
    table.to_csv(tmp_path / "table.csv", index=False)
    res = train_outcome(
        tmp_path / "table.csv",
        tmp_path / "spec.yaml",
        tmp_path / "m",
        models=("cox_clinical",),
        target="survival",
        folds=3,
        options=FAST,
    )
    assert res["test"] is not None and res["test"]["n_test"].iloc[0] == 60
    pred = predict_outcome(tmp_path / "table.csv", tmp_path / "m")
    assert "expected_rfs_months" in pred.columns and "hpv_probability" not in pred.columns


def test_join_tables(tmp_path):
    clin = pd.DataFrame({"PatientID": ["A", "B", "C"], "Age": [50, 60, 70]})
    feats = pd.DataFrame({"PatientID": ["A", "C"], "rad_x": [1.0, 2.0]})
    joined = join_tables(clin, feats, "PatientID")
    assert list(joined.columns) == ["PatientID", "Age", "rad_x"]
    assert math.isnan(joined.loc[1, "rad_x"])
    with pytest.raises(HecktorInputError, match="more than once"):
        join_tables(clin, pd.concat([feats, feats]), "PatientID")


# ----------------------------------------------------------------------------- statistics


def test_corrected_resampled_ttest_formula():
    a = np.array([0.70, 0.72, 0.68, 0.75, 0.71])
    b = np.array([0.65, 0.70, 0.66, 0.69, 0.70])
    diff, t, p = ev.corrected_resampled_ttest(a, b, n_train=160, n_test=40)
    d = a - b
    t_ref = d.mean() / math.sqrt((1 / 5 + 40 / 160) * d.var(ddof=1))
    assert diff == pytest.approx(d.mean()) and t == pytest.approx(t_ref)
    from scipy.stats import t as t_dist

    assert p == pytest.approx(2 * t_dist.sf(abs(t_ref), 4))
    # the correction makes it more conservative than the naive paired t-test
    from scipy.stats import ttest_rel

    assert p > ttest_rel(a, b).pvalue


def test_discrete_expected_time_is_sum_of_survival_times_width(fitted, cohort):
    est = fitted["discrete"].steps[-1][1]
    Xt = fitted["discrete"].transform_to_last(cohort.head(5))
    s = est.predict_survival_function(Xt, return_array=True)
    assert np.all(np.diff(s, axis=1) <= 0)
    np.testing.assert_allclose(est.predict_expected_time(Xt), s @ np.diff(est.breaks_))
    np.testing.assert_allclose(est.predict(Xt), -est.predict_expected_time(Xt))


def test_bundled_demo_models_load_and_predict():
    from napari_hecktor.outcome.demo import DEMO_LABEL, DEMO_MODEL_DIR

    assert (DEMO_MODEL_DIR / "outcome_model.json").exists(), "bundled demo outcome models missing"
    table = pd.read_csv(DEMO_MODEL_DIR / "demo_table.csv", dtype={"PatientID": str})
    pred = predict_outcome(table.head(10), DEMO_MODEL_DIR)
    assert pred.attrs["label"] == DEMO_LABEL
    assert pred["risk_score"].notna().all() and pred["hpv_probability"].between(0, 1).all()
    km = km_training_curves(DEMO_MODEL_DIR)
    assert km["label"] == DEMO_LABEL and "low" in km and "high" in km
    # the Results widget's plot, drawn off the GUI thread: a PNG, the patient's group bold
    plain, high = km_training_png(DEMO_MODEL_DIR), km_training_png(DEMO_MODEL_DIR, "high")
    assert plain.startswith(b"\x89PNG") and high.startswith(b"\x89PNG") and plain != high
