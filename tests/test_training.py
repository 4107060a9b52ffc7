"""Training scripts: folds, resume, torchrun (2 CPU processes, gloo), model folders (CPU).

A tiny phantom cohort (7 cases, 3 centres) at 8 mm voxels and 16^3 crops keeps the whole
file well under the 3-minute budget on 2 cores.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "training_scripts"
sys.path.insert(0, str(SCRIPTS))

import data as segdata  # noqa: E402
import train_segmentation as ts  # noqa: E402

from napari_hecktor.data.phantom import write_cohort  # noqa: E402
from napari_hecktor.models.card import load_model, read_card  # noqa: E402
from napari_hecktor.progress import run_to_end  # noqa: E402


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cohort") / "train"
    write_cohort(folder, 6, seed=3, centers=3, n_empty=1)
    return folder


def tiny_config(tmp: Path, cohort: Path, **sections) -> dict:
    cfg = {
        "name": "tiny",
        "seed": 5,
        "data": {"dataset": str(cohort), "n_folds": 3, "fold": 0,
                 "cache_dir": str(tmp / "cache")},
        "model": {"architecture": "mmpl", "preset": "tiny"},
        "preprocessing": {"name": "pet_guided_roi", "spacing_mm": 8.0,
                          "roi_mm": [128, 128, 160], "z_offset_mm": -70,
                          "interpolator": "linear"},
        "augment": {"crop_size": [16, 16, 16], "crops_per_case": 2, "flip_axes": [2],
                    "rotate_deg": [15, 0, 0], "rotate_prob": 0.5, "intensity_prob": 0.5},
        "train": {"epochs": 4, "batch_size": 2, "lr": 3e-3, "optimizer": "adamw", "threads": 1,
                  "scheduler": {"name": "cosine_warm_restarts", "T_0": 3}},
        "validate": {"every": 2, "roi_size": [24, 16, 16], "min_component_voxels": 1},
        "inference": {"roi_size": [24, 16, 16], "min_component_voxels": 5},
        "output": {"dir": str(tmp / "run")},
        "card": {"name": "tiny-test"},
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def train(cfg: dict, **kwargs) -> ts.TrainResult:
    config = ts.deep_merge(ts.DEFAULTS, cfg)
    return run_to_end(ts.train_iter(config, log=lambda _m: None, **kwargs))


# --------------------------------------------------------------------------- folds


def test_kfold_files_are_patient_level(cohort, tmp_path):
    out = tmp_path / "folds.json"
    subprocess.run([sys.executable, str(SCRIPTS / "make_folds.py"), str(cohort), "-o", str(out),
                    "--folds", "3", "--seed", "1"], check=True, capture_output=True)
    content = json.loads(out.read_text())
    ids = {r["case_id"] for r in segdata.list_cases(cohort)}
    assert content["kind"] == "kfold" and len(content["folds"]) == 3
    vals = [i for f in content["folds"] for i in f["val"]]
    assert sorted(vals) == sorted(ids)  # each patient validates exactly once
    for fold in content["folds"]:
        assert not set(fold["train"]) & set(fold["val"])
        assert set(fold["train"]) | set(fold["val"]) == ids
    assert content["ids_sha256"] == segdata.ids_hash(ids)
    # fold files are never overwritten
    again = subprocess.run([sys.executable, str(SCRIPTS / "make_folds.py"), str(cohort), "-o",
                            str(out)], capture_output=True)
    assert again.returncode != 0


def test_leave_center_out_holds_whole_centres_out(cohort, tmp_path):
    records = segdata.list_cases(cohort)
    centers = {r["case_id"]: r["center"] for r in records}
    assert set(centers.values()) == {"CHUM", "CHUS", "HGJ"}  # from the ID prefix
    content = segdata.make_folds(records, "leave_center_out")
    assert sorted(f["name"] for f in content["folds"]) == ["CHUM", "CHUS", "HGJ"]
    for fold in content["folds"]:
        held = {centers[i] for i in fold["val"]}
        assert held == set(fold["held_out_centers"])
        assert not held & {centers[i] for i in fold["train"]}  # whole centres out
    assert sorted(i for f in content["folds"] for i in f["val"]) == sorted(centers)
    # grouped into 2 folds; centres from the clinical CSV's CenterID
    grouped = segdata.make_folds(
        [{**r, "center": c} for r, c in zip(records, [
            segdata.center_of(r["case_id"], segdata.read_clinical_centers(
                cohort / "clinical.csv")) for r in records], strict=True)],
        "leave_center_out", n_folds=2)
    assert len(grouped["folds"]) == 2
    assert set(grouped["centers"].values()) == {"0", "1", "2"}
    for fold in grouped["folds"]:
        assert not ({grouped["centers"][i] for i in fold["val"]}
                    & {grouped["centers"][i] for i in fold["train"]})


# --------------------------------------------------------------------------- resume


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(cohort, tmp_path):
    cache = {"cache_dir": str(tmp_path / "cache")}
    full = train(tiny_config(tmp_path, cohort, data=cache, output={"dir": str(tmp_path / "a")}))
    assert full.finished and full.epochs_done == 4
    part = train(tiny_config(tmp_path, cohort, data=cache, output={"dir": str(tmp_path / "b")}),
                 stop_after=2)
    assert not part.finished and part.epochs_done == 2
    assert not (tmp_path / "b" / "model").exists()
    first = torch.load(tmp_path / "b/checkpoints/last.pt", weights_only=True)
    assert first["epoch"] == 2 and first["global_step"] == 4
    rest = train(tiny_config(tmp_path, cohort, data=cache, output={"dir": str(tmp_path / "b")}),
                 resume=True)
    assert rest.finished and rest.epochs_done == 4
    a, b = (torch.load(tmp_path / d / "checkpoints/last.pt", weights_only=True)
            for d in ("a", "b"))
    assert a["global_step"] == b["global_step"] == 8
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    # optimizer state (Adam moments) and scheduler continue identically too
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(),
                      strict=True):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"])
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 4
    # the metrics log continues where it stopped: epochs 1..4 once each
    with open(tmp_path / "b" / "metrics.csv") as fh:
        epochs = [int(r["epoch"]) for r in csv.DictReader(fh)]
    assert epochs == [1, 2, 3, 4]
    assert len(b["commands"]) == 2
    # a different config is refused on resume
    with pytest.raises(SystemExit, match="differs"):
        train(tiny_config(tmp_path, cohort, data=cache, output={"dir": str(tmp_path / "b")},
                          train={"lr": 1e-3}), resume=True)
    # and a fresh run never overwrites a run silently
    with pytest.raises(SystemExit, match="already holds a run"):
        train(tiny_config(tmp_path, cohort, data=cache, output={"dir": str(tmp_path / "a")}))
    # resuming a finished run with validate.tune picks the card's inference settings on
    # the validation fold, without training further
    tune = {"thresholds_gtvp": [0.5, 0.9], "thresholds_gtvn": [0.5], "min_component_ml": [1.0],
            "fp_penalty": 0.1}
    again = train(tiny_config(tmp_path, cohort, data=cache, output={"dir": str(tmp_path / "b")},
                              validate={"every": 2, "roi_size": [24, 16, 16],
                                        "min_component_voxels": 1, "tune": tune}), resume=True)
    assert again.finished and again.epochs_done == 4
    card = read_card(tmp_path / "b" / "model")
    tuned = card.metrics["validation_tuned"]
    assert tuned["thresholds"] in ([0.5, 0.5], [0.9, 0.5]) and tuned["min_component_ml"] == 1.0
    assert card.inference["thresholds"] == tuned["thresholds"]
    assert card.inference["min_component_voxels"] >= 1
    c = torch.load(tmp_path / "b/checkpoints/last.pt", weights_only=True)
    assert c["global_step"] == 8 and torch.equal(c["model"][key], a["model"][key])


# --------------------------------------------------------------------------- torchrun


def test_torchrun_two_processes_writes_a_model_that_hecktor_segment_uses(cohort, tmp_path):
    cfg = tiny_config(tmp_path, cohort, train={"epochs": 2}, validate={"every": 1},
                      model={"architecture": "normresse_unet3p", "preset": "tiny"})
    config = write_config(tmp_path / "tiny.yaml", cfg)
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2",
         str(SCRIPTS / "train_segmentation.py"), "--config", str(config), "--progress", "none"],
        capture_output=True, text=True, env=env, timeout=150)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    run = tmp_path / "run"
    folders = [p.parent for p in run.rglob("model_card.json")]
    assert folders == [run / "model"]  # rank 0 alone writes it
    model, card = load_model(run / "model")
    assert card.architecture == "normresse_unet3p"
    assert card.preprocessing["spacing_mm"] == 8.0 and card.preprocessing["name"] == \
        "pet_guided_roi"
    assert card.inference["roi_size"] == [24, 16, 16]
    assert card.training["world_size"] == 2
    assert card.training["data"]["n_train"] + card.training["data"]["n_val"] == 7
    assert card.training["seed"] == 5 and "torchrun" in card.training["commands"][0]
    assert "napari_hecktor" in card.training["code_version"]
    assert {"dice_gtvp", "dscagg_gtvn", "f1agg_gtvn", "epoch"} <= set(card.metrics["validation"])
    for name in ("last.pt", "best.pt"):
        ckpt = torch.load(run / "checkpoints" / name, map_location="cpu", weights_only=True)
        assert ckpt["epoch"] in (1, 2)
    with open(run / "metrics.csv") as fh:
        assert [int(r["epoch"]) for r in csv.DictReader(fh)] == [1, 2]
    assert any((run / "tensorboard").iterdir())
    # the folder works with the CLI
    pred = tmp_path / "pred"
    seg = subprocess.run(
        [str(Path(sys.executable).parent / "hecktor"), "segment", str(cohort), "-o", str(pred),
         "--model", str(run / "model"), "--device", "cpu"],
        capture_output=True, text=True, timeout=120)
    assert seg.returncode == 0, seg.stderr[-2000:]
    import SimpleITK as sitk

    outputs = sorted(pred.glob("*.nii.gz"))
    assert len(outputs) == 7
    first = sitk.ReadImage(str(outputs[0]))
    ct = sitk.ReadImage(str(cohort / "imagesTr" / outputs[0].name.replace(".nii.gz",
                                                                          "__CT.nii.gz")))
    assert first.GetSize() == ct.GetSize()  # on the CT grid
    assert set(np.unique(sitk.GetArrayFromImage(first))) <= {0, 1, 2}
    assert read_card(run / "model").name == "tiny-test"


def test_hot_spot_crops_centre_on_physiological_uptake_not_lesions():
    """The fourth crop class marks the hottest voxels of each hot non-lesion region."""
    pet = np.zeros((30, 30, 30), np.float32)
    pet[2:6, 2:6, 2:6] = 5.0              # a small hot spot: physiological uptake
    pet[10:28, 10:28, 10:28] = 3.0        # a large hot region (brain-like)
    pet[12, 12, 12] = 4.0                 # its hottest voxel
    pet[20:24, 2:6, 2:6] = 6.0            # a lesion: never a hot-spot centre
    label = np.zeros((1, 30, 30, 30), np.uint8)
    label[0, 20:24, 2:6, 2:6] = 1
    data = {"image": np.stack([pet, np.zeros_like(pet)]), "label": label}
    out = segdata.HotSpotLabeld(pet_z=2.0, per_region=16)(data)
    crop = out["crop_label"][0]
    assert np.array_equal(crop[crop < 3], label[0][crop < 3])  # lesions untouched
    assert (crop[20:24, 2:6, 2:6] == 1).all()
    small, large = crop[2:6, 2:6, 2:6] == 3, crop[10:28, 10:28, 10:28] == 3
    assert small.sum() == 16 and large.sum() == 16   # each region weighs the same
    assert crop[12, 12, 12] == 3                      # the hottest voxels are chosen
    transforms = segdata.train_transforms({"crop_size": [8, 8, 8], "crop_ratios": [0, 0, 0, 1],
                                           "crops_per_case": 4})
    from monai.transforms import Compose

    crops = Compose(transforms).set_random_state(seed=0)(out)
    assert all(float(c["image"][0].max()) >= 3.0 for c in crops)  # centred on uptake
    assert all(float(c["label"].max()) == 0 for c in crops)


@pytest.mark.parametrize("name", ["mmpl_demo", "normresse_demo", "mmpl_demo_hardneg",
                                  "mmpl_paper", "normresse_paper"])
def test_shipped_segmentation_configs_load(name):
    """Every shipped stage-1 config parses against the defaults (unknown keys refused)."""
    cfg = ts.load_config(REPO / "training_scripts" / "configs" / f"{name}.yaml")
    assert cfg["name"] == name
    ratios = cfg["augment"]["crop_ratios"]
    assert len(ratios) in (3, 4)
    if name == "mmpl_demo_hardneg":
        assert len(ratios) == 4 and cfg["data"]["val_dataset"] and cfg["data"]["fold"] is None


def test_tuning_scores_on_the_scoring_box_equal_the_whole_roi():
    """Scoring a case on its box gives the whole-ROI counts, for every tuned setting."""
    from scipy import ndimage

    rng = np.random.default_rng(3)
    shape = (24, 30, 28)
    prob = np.stack([ndimage.gaussian_filter(rng.random(shape), 2.0) for _ in range(2)])
    prob = (prob - prob.min()) / (prob.max() - prob.min())  # smooth blobs, 0..1
    prob[0, 5:12, 6:14, 6:14] = 0.95  # a GTVp with a hole (filled by post-processing)
    prob[0, 8, 10, 10] = 0.0
    prob[1, 0:4, 0:3, 20:28] = 0.85  # a node at the ROI's corner (box clipped there)
    truth = np.zeros(prob.shape, bool)
    truth[0, 6:12, 6:13, 7:14] = True
    truth[1, 0:3, 0:3, 21:28] = True
    truth[1, 18:21, 24:28, 2:5] = True  # a missed node: only the truth reaches here
    box = ts.scoring_box(prob, truth, 0.5)
    for thresholds in ((0.5, 0.5), (0.6, 0.9), (0.9, 0.6)):
        for min_voxels in (1, 5, 40):
            whole = ts.score_case("c", prob, truth, thresholds, min_voxels)
            boxed = ts.score_case("c", prob[(slice(None), *box)],
                                  truth[(slice(None), *box)], thresholds, min_voxels)
            assert boxed == whole, (thresholds, min_voxels)
    one = np.zeros_like(prob)
    one[0, 10:14, 10:13, 9:12] = 0.8  # a single lesion: a box of it plus one voxel
    assert ts.scoring_box(one, one > 1, 0.5) == (slice(9, 15), slice(9, 14), slice(8, 13))
    empty = np.zeros_like(prob)
    assert ts.score_case("c", empty[(slice(None), *ts.scoring_box(empty, empty > 1, 0.5))],
                         np.zeros((2, 1, 1, 1), bool), (0.5, 0.5), 5)["components"] == 0
