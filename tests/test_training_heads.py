"""MMPL stages 2-3 (HPV and survival heads) and the deep-feature export (CPU, tiny).

A tiny untrained stage-1 MMPL on a 7-case phantom cohort at 8 mm voxels (the ROI is then
16 x 16 x 20 voxels), with an outcome table written here so that every label is known.
"""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "training_scripts"
sys.path.insert(0, str(SCRIPTS))

import export_deep_features as edf  # noqa: E402
import train_outcome_heads as toh  # noqa: E402

from napari_hecktor.data.phantom import write_cohort  # noqa: E402
from napari_hecktor.models.card import ModelCard, load_model, read_card, save_model  # noqa: E402
from napari_hecktor.models.registry import TINY_CONFIGS, build_model  # noqa: E402

RECIPE = {"name": "pet_guided_roi", "spacing_mm": 8.0, "roi_mm": [128, 128, 160],
          "z_offset_mm": -70, "interpolator": "linear"}
HEAD_PREFIXES = ("hpv_head.", "survival_head.")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("heads") / "train"
    write_cohort(folder, 6, seed=3, centers=3, n_empty=1)
    return folder


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One ROI cache for the module's runs (as stage 1 and stages 2-3 share one)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def stage1(tmp_path_factory, cohort) -> Path:
    """A tiny untrained MMPL model folder whose card names 3 folds, fold 0 (as stage 1 does)."""
    from napari_hecktor.segment.preprocess import check_recipe, make_recipe

    torch.manual_seed(0)
    net = build_model("mmpl", TINY_CONFIGS["mmpl"])
    recipe = check_recipe(make_recipe("pet_guided_roi", **{k: v for k, v in RECIPE.items()
                                                           if k != "name"}))
    card = ModelCard(
        name="tiny-stage1", architecture="mmpl", config=toh.ts.jsonable(net.config),
        preprocessing=toh.ts.jsonable(recipe),
        inference={"roi_size": [24, 16, 16], "overlap": 0.5, "thresholds": [0.5, 0.5],
                   "min_component_voxels": 5},
        training={"config": {"data": {"split": "kfold", "n_folds": 3, "fold_seed": 0,
                                      "fold": 0}}},
        metrics={"validation": {"dice_gtvp": 0.5}},
    )
    return save_model(tmp_path_factory.mktemp("stage1") / "model", net, card)


def write_outcomes(path: Path, ids: list[str], hpv: list[float], time: list[float],
                   event: list[int]) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["PatientID", "HPV Status", "Relapse", "RFS"])
        for row in zip(ids, hpv, event, time, strict=True):
            w.writerow(["" if isinstance(v, float) and math.isnan(v) else v for v in row])
    return path


def config(tmp: Path, cohort: Path, stage1: Path, cache: Path, **sections) -> dict:
    cfg = toh.ts.deep_merge(toh.DEFAULTS, {
        "model": str(stage1), "seed": 1, "threads": 1,
        "data": {"dataset": str(cohort), "cache_dir": str(cache)},
        "hpv": {"epochs": 3, "batch_size": 4, "lr": 1e-2},
        "survival": {"epochs": 3, "batch_size": 4, "lr": 1e-2},
        "output": {"dir": str(tmp / "run")},
    })
    for key, value in sections.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) else value
    return toh.check_config(cfg)


def case_ids(cohort: Path) -> list[str]:
    return sorted(p.name.removesuffix(".nii.gz").split("__")[0]
                  for p in (cohort / "labelsTr").glob("*.nii.gz"))


# --------------------------------------------------------------------------- losses, metrics


def test_class_balanced_bce_weight_is_n_negative_over_n_positive():
    assert toh.balanced_pos_weight([1, 1, 1, 0]) == pytest.approx(1 / 3)
    assert toh.balanced_pos_weight([0, 0, 1, 0, 0, float("nan"), 1]) == pytest.approx(4 / 2)
    with pytest.raises(ValueError, match="both classes"):
        toh.balanced_pos_weight([1, 1, float("nan")])
    # with that weight the positives and the negatives weigh the same in the BCE
    y = torch.tensor([1.0, 0.0, 0.0, 0.0])
    w = toh.balanced_pos_weight(y.tolist())
    per = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.zeros(4), y, pos_weight=torch.tensor(w), reduction="none")
    assert per[y == 1].sum() == pytest.approx(per[y == 0].sum())


def test_standardised_first_layer_gives_the_same_outputs_and_folds_back():
    torch.manual_seed(0)
    layer = torch.nn.Linear(5, 3)
    x = 1.0 + 0.02 * torch.randn(8, 5)  # pooled features: small spread around the mean
    mean, sd = x.mean(0), x.std(0)
    before = layer(x)
    w, b = layer.weight.detach().clone(), layer.bias.detach().clone()
    toh.standardise_first_layer(layer, mean, sd)
    torch.testing.assert_close(layer((x - mean) / sd), before)
    toh.standardise_first_layer(layer, mean, sd, inverse=True)
    torch.testing.assert_close(layer.weight, w)
    torch.testing.assert_close(layer.bias, b)


def test_metrics_are_auc_and_harrell_c_index():
    m = toh.hpv_metrics([0.9, 0.8, 0.3, 0.1, 0.5], [1, 1, 0, 0, float("nan")])
    assert m["auc"] == 1.0 and m["n"] == 4 and m["n_positive"] == 2
    assert math.isnan(toh.hpv_metrics([0.2, 0.4], [1, 1])["auc"])
    # longer predicted survival for the later events: concordant
    s = toh.survival_metrics([100, 200, 300], [10, 20, 30], [1, 1, 0])
    assert s["c_index"] == 1.0 and s["n"] == 3 and s["n_events"] == 2
    assert toh.survival_metrics([300, 200, 100], [10, 20, 30], [1, 1, 1])["c_index"] == 0.0


# --------------------------------------------------------------------------- stages 2 and 3


def test_stages_2_and_3_train_the_heads_on_a_frozen_backbone(cohort, stage1, cache, tmp_path):
    ids = case_ids(cohort)
    outcomes = write_outcomes(tmp_path / "outcomes.csv", ids,
                              [i % 2 for i in range(len(ids))],
                              [300.0 + 200 * i for i in range(len(ids))],
                              [1, 0] * (len(ids) // 2) + [1] * (len(ids) % 2))
    cfg = config(tmp_path, cohort, stage1, cache, data={"outcomes_csv": str(outcomes)})
    folder = toh.run(cfg, command="python train_outcome_heads.py --config X", log=lambda m: None)
    model, card = load_model(folder)
    before, _ = load_model(stage1)
    old, new = before.state_dict(), model.state_dict()
    for key, value in old.items():
        if key.startswith(HEAD_PREFIXES):
            continue
        assert torch.equal(value, new[key]), key  # weights and batch-norm statistics
    for head in ("hpv_head.", "survival_head."):
        assert any(not torch.equal(old[k], new[k]) for k in old if k.startswith(head)), head
    # the card: stage-1 content kept, head metrics and provenance added
    assert card.preprocessing["spacing_mm"] == 8.0 and card.inference["roi_size"] == [24, 16, 16]
    assert card.metrics["validation"]["dice_gtvp"] == 0.5 and "note" not in card.metrics
    hpv, surv = card.heads["hpv"], card.heads["survival"]
    assert hpv["stage"] == 2 and surv["stage"] == 3
    assert hpv["freeze_backbone"] and surv["freeze_backbone"]
    data = card.training["heads"]["data"]
    assert data["n_train_used"] + data["n_validation_used"] == 6  # the lesion-free case out
    assert hpv["n_train"] == surv["n_train"] == data["n_train_used"]
    assert hpv["metrics"]["validation"]["n"] == data["n_validation_used"]
    assert hpv["pos_weight"] == pytest.approx(
        (hpv["n_train"] - hpv["n_train_positive"]) / hpv["n_train_positive"])
    assert set(hpv["metrics"]) == {"train", "validation"}
    assert {"auc", "n", "n_positive"} <= set(hpv["metrics"]["validation"])
    assert {"c_index", "n", "n_events"} <= set(surv["metrics"]["validation"])
    assert surv["intervals"] == list(model.survival_intervals)
    assert card.training["heads"]["backbone_unchanged"] is True
    assert card.training["heads"]["commands"] == ["python train_outcome_heads.py --config X"]
    assert card.training["heads"]["data"]["inherited_from_stage1"] == [
        "split", "n_folds", "fold_seed", "fold"]
    assert read_card(folder).heads == card.heads
    with open(Path(cfg["output"]["dir"]) / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["stage"], r["epoch"]) for r in rows] == [
        ("2", "1"), ("2", "2"), ("2", "3"), ("3", "1"), ("3", "2"), ("3", "3")]


def test_a_card_without_heads_still_loads(stage1):
    assert read_card(stage1).heads == {}
    import json

    data = json.loads((stage1 / "model_card.json").read_text())
    data.pop("heads")
    assert ModelCard.from_dict(data).heads == {}


def test_fine_tuning_changes_the_backbone_and_says_so(cohort, stage1, cache, tmp_path):
    ids = case_ids(cohort)
    outcomes = write_outcomes(tmp_path / "o.csv", ids, [i % 2 for i in range(len(ids))],
                              [500.0] * len(ids), [1] * len(ids))
    cfg = config(tmp_path, cohort, stage1, cache, data={"outcomes_csv": str(outcomes)},
                 hpv={"epochs": 1, "freeze_backbone": False}, survival={"enabled": False})
    folder = toh.run(cfg, log=lambda m: None)
    card = read_card(folder)
    assert set(card.heads) == {"hpv"} and not card.heads["hpv"]["freeze_backbone"]
    assert card.training["heads"]["backbone_unchanged"] is False and "note" in card.metrics


def test_survival_head_learns_a_risk_order_that_the_features_hold(cohort, stage1, cache, tmp_path):
    """Times ordered by a direction of the deep features: the head recovers the order."""
    net, card = load_model(stage1)
    cfg = config(tmp_path, cohort, stage1, cache)
    records = toh.segdata.list_cases(cohort)
    cases = toh.make_caseset(records, card.preprocessing, Path(cfg["data"]["cache_dir"]), {},
                             True)
    feats = toh._features(net, cases, "card", card.inference["roi_size"], "cpu").numpy()
    centred = feats - feats.mean(0)
    direction = np.linalg.svd(centred, full_matrices=False)[2][0]
    order = np.argsort(np.argsort(centred @ direction))  # rank along the main direction
    times = [200.0 + 250.0 * r for r in order]  # 200 ... 1450 days, all events
    outcomes = write_outcomes(tmp_path / "o.csv", cases.ids, [float("nan")] * len(cases),
                              times, [1] * len(cases))
    cfg = config(tmp_path, cohort, stage1, cache, data={"outcomes_csv": str(outcomes),
                                                 "inherit_split": False, "fold": None},
                 hpv={"enabled": False}, survival={"epochs": 300, "batch_size": 8,
                                                   "lr": 3e-2, "weight_decay": 0.0})
    folder = toh.run(cfg, log=lambda m: None)
    metrics = read_card(folder).heads["survival"]["metrics"]["train"]
    assert metrics["n"] == len(cases) == 6
    assert metrics["c_index"] > 0.8


# --------------------------------------------------------------------------- export


def test_feature_export_writes_one_row_per_case(cohort, stage1, tmp_path):
    out = tmp_path / "features.csv"
    assert edf.main([str(stage1), str(cohort), "-o", str(out)]) == 0
    with open(out) as fh:
        rows = list(csv.DictReader(fh))
    net, _ = load_model(stage1)
    assert [r["PatientID"] for r in rows] == case_ids(cohort)  # 7, the lesion-free one too
    assert list(rows[0]) == ["PatientID", *(f"deep_{i:04d}" for i in range(net.feature_dim))]
    assert all(np.isfinite(float(v)) for r in rows for k, v in r.items() if k != "PatientID")
    # --clinical: the clinical columns first, then the features (what train-outcome reads)
    joined = edf.join_clinical(rows, cohort / "clinical.csv")
    assert list(joined[0])[:2] == ["PatientID", "CenterID"] and "RFS" in joined[0]
    assert len(joined) == 7 and joined[0]["deep_0000"] == rows[0]["deep_0000"]
