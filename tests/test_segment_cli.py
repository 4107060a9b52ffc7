"""`hecktor segment`, `crf` and `evaluate` end to end on files, and their bad-input exits."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import digest

from napari_hecktor.io.geometry import Geometry
from napari_hecktor.models.card import ModelCard, save_model
from napari_hecktor.models.registry import TINY_CONFIGS, build_model
from napari_hecktor.segment.preprocess import make_recipe

HECKTOR = [sys.executable, "-m", "napari_hecktor.cli"]


def run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([*HECKTOR, *map(str, args)], capture_output=True, text=True,
                          check=False)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    torch.manual_seed(0)
    card = ModelCard(
        name="tiny-test",
        architecture="normresse_unet3p",
        config=TINY_CONFIGS["normresse_unet3p"],
        preprocessing=make_recipe("pet_guided_roi", spacing_mm=4.0, roi_mm=[128, 128, 128],
                                  interpolator="linear"),
        inference={"roi_size": [32, 32, 32], "overlap": 0.25, "thresholds": [0.5, 0.5],
                   "min_component_voxels": 1},
    )
    folder = tmp_path_factory.mktemp("model") / "tiny"
    return save_model(folder, build_model(card.architecture, card.config).eval(), card)


def test_segment_writes_mask_probabilities_and_uncertainty_on_the_ct_grid(
    tmp_path, small_case, tiny_model
):
    out = tmp_path / "out"
    result = run("segment", "--ct", small_case["ct"], "--pet", small_case["pet"],
                 "-o", out / "mask.nii.gz", "--model", tiny_model,
                 "--prob", out / "prob.nii.gz", "--uncertainty", out / "unc.nii.gz")
    assert result.returncode == 0, result.stderr
    assert "device: cpu" in result.stdout
    ct = Geometry.of(sitk.ReadImage(str(small_case["ct"])))
    for name in ("mask.nii.gz", "prob.nii.gz", "unc.nii.gz"):
        assert Geometry.of(sitk.ReadImage(str(out / name))).matches(ct), name
    prob = sitk.ReadImage(str(out / "prob.nii.gz"))
    assert prob.GetNumberOfComponentsPerPixel() == 2
    crf = run("crf", "--ct", small_case["ct"], "--pet", small_case["pet"],
              "--prob", out / "prob.nii.gz", "-o", out / "crf.nii.gz")
    assert crf.returncode == 0, crf.stderr
    crf_mask = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "crf.nii.gz")))
    assert set(np.unique(crf_mask)) <= {0, 1, 2}


def test_segment_a_dataset_then_evaluate(tmp_path, small_case, tiny_model):
    ds = tmp_path / "ds"
    (ds / "imagesTr").mkdir(parents=True)
    (ds / "labelsTr").mkdir()
    for i in ("CHUM-001", "CHUS-002"):
        shutil.copy(small_case["ct"], ds / "imagesTr" / f"{i}__CT.nii.gz")
        shutil.copy(small_case["pet"], ds / "imagesTr" / f"{i}__PT.nii.gz")
        shutil.copy(small_case["label"], ds / "labelsTr" / f"{i}.nii.gz")
    before = digest(ds)
    seg = run("segment", ds, "-o", tmp_path / "pred", "--model", tiny_model)
    assert seg.returncode == 0, seg.stderr
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == ["CHUM-001.nii.gz",
                                                                   "CHUS-002.nii.gz"]
    ev = run("evaluate", tmp_path / "pred", ds, "-o", tmp_path / "metrics.csv")
    assert ev.returncode == 0, ev.stderr
    assert "DSCagg_GTVp" in ev.stdout
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0]
    assert header == "PatientID,Dice_GTVp,Dice_GTVn,HD95_GTVp,HD95_GTVn,TP_GTVn,FP_GTVn,FN_GTVn"
    assert digest(ds) == before


def _bad(tmp_path, small_case, tiny_model):
    corrupt = tmp_path / "corrupt__CT.nii.gz"
    corrupt.write_bytes(small_case["ct"].read_bytes()[:200])
    far = sitk.ReadImage(str(small_case["pet"]))
    far.SetOrigin((800.0, 800.0, 800.0))
    far_pet = tmp_path / "far__PT.nii.gz"
    sitk.WriteImage(far, str(far_pet))
    wrong_model = tmp_path / "wrong_model"
    shutil.copytree(tiny_model, wrong_model)
    (wrong_model / "model.safetensors").write_bytes(b"not weights at all")
    return {
        "corrupt CT": (corrupt, small_case["pet"], tiny_model, "corrupt"),
        "no overlap": (small_case["ct"], far_pet, tiny_model, "do not overlap"),
        "wrong model file": (small_case["ct"], small_case["pet"], wrong_model, "weights"),
    }


@pytest.mark.parametrize("name", ["corrupt CT", "no overlap", "wrong model file"])
def test_bad_input_exits_with_one_line_and_writes_nothing(tmp_path, small_case, tiny_model, name):
    ct, pet, model, fragment = _bad(tmp_path, small_case, tiny_model)[name]
    out = tmp_path / "out"
    result = run("segment", "--ct", ct, "--pet", pet, "-o", out / "mask.nii.gz",
                 "--model", model)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hecktor: error:") and fragment in lines[0]
    assert not out.exists()
