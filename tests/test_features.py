"""Image features: radiomics (== pyradiomics), PET metrics by hand, deep features, the table."""

from __future__ import annotations

import glob
import math
import multiprocessing
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import yaml

from napari_hecktor.errors import HecktorInputError
from napari_hecktor.features import (
    DEFAULT_PARAMS,
    case_features,
    load_params,
    pet_metrics,
    radiomics_features,
    radiomics_iter,
    write_features_csv,
)
from napari_hecktor.features.deep import deep_features, select_window
from napari_hecktor.features.pet_metrics import sphere_kernel
from napari_hecktor.features.radiomics import feature_names, pyradiomics_params, shutdown_pool
from napari_hecktor.io.case import Case
from napari_hecktor.io.geometry import Geometry
from napari_hecktor.progress import Cancelled, run_to_end
from napari_hecktor.segment.preprocess import NetworkInput, make_recipe

# pykwalify (pyradiomics' parameter validation) loads its schema extension the old way
pytestmark = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")

SPACING_XYZ = (1.0, 1.0, 3.0)
ORIGIN = (-24.0, -24.0, -30.0)
#: Small but complete: shape/first order/GLCM on original, one LoG and the wavelets.
FAST_PARAMS = {
    "setting": {"resampledPixelSpacing": [2.0, 2.0, 2.0], "interpolator": "sitkLinear",
                "additionalInfo": False, "label": 1},
    "imageType": {"Original": {}, "LoG": {"sigma": [2.0]}, "Wavelet": {}},
    "featureClass": {"shape": None, "firstorder": None, "glcm": None},
    "modalities": {"CT": {"binWidth": 25}, "PET": {"binWidth": 0.25}},
}


def _image(array: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING_XYZ)
    image.SetOrigin(ORIGIN)
    return image


def _synthetic_case(gtvn: bool = True) -> Case:
    """CT/PET (20, 48, 48) at 3 x 1 x 1 mm (z, y, x): a GTVp ball (r 10 mm), a GTVn (r 6 mm)."""
    rng = np.random.default_rng(7)
    shape = (20, 48, 48)
    zz, yy, xx = np.indices(shape)
    z, y, x = zz * 3.0, yy * 1.0, xx * 1.0
    primary = (z - 30) ** 2 + (y - 20) ** 2 + (x - 18) ** 2 <= 10**2
    node = (z - 27) ** 2 + (y - 34) ** 2 + (x - 34) ** 2 <= 6**2
    ct = rng.normal(0, 30, shape)
    ct[primary] += 60
    ct[node] += 40
    pet = 1.0 + rng.gamma(2.0, 0.25, shape)
    pet[primary] += 6.0 + rng.normal(0, 1.0, int(primary.sum()))
    pet[node] += 3.0
    labels = np.zeros(shape, np.uint8)
    labels[primary] = 1
    if gtvn:
        labels[node] = 2
    return Case("SYN-001", ct=_image(ct.astype(np.int16)), pet=_image(pet.astype(np.float32)),
                label=_image(labels))


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


@pytest.fixture(scope="module")
def params_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("params") / "fast.yaml"
    path.write_text(yaml.safe_dump(FAST_PARAMS, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def serial(params_file) -> dict[str, float]:
    return radiomics_features(_synthetic_case(), params=params_file, workers=1)


# ----------------------------------------------------------------------------- radiomics
def test_radiomics_equal_pyradiomics_called_directly(serial):
    from radiomics import featureextractor

    case = _synthetic_case()
    plain = {k: v for k, v in FAST_PARAMS.items() if k != "modalities"}
    checks = [  # (structure, modality, image, mask, label, binWidth)
        ("GTVp", "PET", case.pet, case.label, 1, 0.25),
        ("GTVn", "CT", case.ct, case.label, 2, 25),
        ("GTVall", "CT", case.ct, sitk.Cast(case.label > 0, sitk.sitkUInt8), 1, 25),
    ]
    for structure, modality, image, mask, label, bin_width in checks:
        params = {**plain, "setting": {**plain["setting"], "binWidth": bin_width}}
        direct = featureextractor.RadiomicsFeatureExtractor(params).execute(image, mask,
                                                                            label=label)
        direct = {k: float(v) for k, v in direct.items() if not k.startswith("diagnostics_")}
        prefix = f"{structure}_{modality}_"
        ours = {k[len(prefix):]: v for k, v in serial.items() if k.startswith(prefix)}
        assert list(ours) == list(direct)
        assert all(_same(ours[k], direct[k]) for k in direct), structure + modality
    assert "GTVp_PET_log-sigma-2-0-mm-3D_firstorder_Mean" in serial
    assert "GTVp_PET_wavelet-LLH_glcm_Contrast" in serial
    assert serial["GTVp_PET_original_firstorder_Maximum"] == pytest.approx(
        float(sitk.GetArrayViewFromImage(case.pet)[sitk.GetArrayViewFromImage(case.label) == 1]
              .max()), rel=0.3)  # resampled to 2 mm: close to, not equal to, the raw max
    assert not any(k.startswith("diagnostics") or "_diagnostics_" in k for k in serial)


def test_pyradiomics_params_merge_the_modality_settings(params_file):
    config = load_params(params_file)
    assert pyradiomics_params(config, "PET")["setting"]["binWidth"] == 0.25
    assert pyradiomics_params(config, "CT")["setting"]["binWidth"] == 25
    assert "modalities" not in pyradiomics_params(config, "CT")
    shipped = load_params(None)
    assert pyradiomics_params(shipped, "PET")["setting"]["binWidth"] == 0.25
    assert set(shipped["featureClass"]) == {"shape", "firstorder", "glcm", "glrlm", "glszm",
                                            "gldm", "ngtdm"}
    assert DEFAULT_PARAMS.name == "radiomics_params.yaml"


def test_parameter_files_checked_from_several_threads_at_once(params_file, tmp_path):
    """A widget's warm-up thread and its first job may check parameters together:
    pykwalify's YAML parser is not thread-safe, so the checks must not overlap."""
    from concurrent.futures import ThreadPoolExecutor

    copies = []
    for i in range(6):  # distinct, unchecked files: every thread runs pykwalify
        copies.append(tmp_path / f"params_{i}.yaml")
        copies[-1].write_text(params_file.read_text())
    with ThreadPoolExecutor(6) as pool:
        configs = list(pool.map(load_params, copies))
    assert all(c == configs[0] for c in configs)
    assert configs[0] == load_params(params_file)


def test_empty_structure_gives_nan_with_the_same_columns(params_file, serial):
    row = radiomics_features(_synthetic_case(gtvn=False), params=params_file, workers=1)
    assert list(row) == list(serial)
    gtvn = {k: v for k, v in row.items() if k.startswith("GTVn_")}
    assert gtvn and all(math.isnan(v) for v in gtvn.values())
    suffixes = {k.split("_", 1)[1] for k in row if k.startswith("GTVp_")}
    assert suffixes == {k.split("_", 1)[1] for k in gtvn}
    assert not math.isnan(row["GTVp_CT_original_firstorder_Mean"])
    # a one-voxel GTVn: pyradiomics refuses it (ValueError); its columns are NaN too
    case = _synthetic_case(gtvn=False)
    labels = sitk.GetArrayFromImage(case.label)
    labels[10, 40, 40] = 2
    one = radiomics_features(case, labels, params=params_file, workers=1)
    assert list(one) == list(serial)
    assert all(math.isnan(v) for k, v in one.items() if k.startswith("GTVn_"))
    assert not math.isnan(one["GTVall_CT_original_firstorder_Mean"])


def test_no_pet_gives_nan_pet_columns(params_file, serial):
    case = _synthetic_case()
    case.pet = None
    row = radiomics_features(case, params=params_file, workers=1)
    assert list(row) == list(serial)
    assert all(math.isnan(v) for k, v in row.items() if "_PET_" in k)
    assert row["GTVp_CT_original_firstorder_Mean"] == serial["GTVp_CT_original_firstorder_Mean"]


def test_parallel_equals_serial(params_file, serial):
    # the pool splits each structure x modality by image type (and LoG sigma), computes
    # shape on CT only, and takes the column names from the results: all to the bit
    parallel = radiomics_features(_synthetic_case(), params=params_file, workers=2)
    assert list(parallel) == list(serial)
    assert all(_same(parallel[k], serial[k]) for k in serial)
    config = load_params(params_file)
    for modality in ("CT", "PET"):
        prefix = f"GTVp_{modality}_"
        assert [k[len(prefix):] for k in serial if k.startswith(prefix)] == feature_names(
            pyradiomics_params(config, modality))
    # the pool is kept for the next call, and ended on request (and at exit)
    children = {p.pid for p in multiprocessing.active_children()}
    assert len(children) == 2
    again = radiomics_features(_synthetic_case(), params=params_file, workers=2)
    assert {p.pid for p in multiprocessing.active_children()} == children
    assert all(_same(again[k], serial[k]) for k in serial)
    shutdown_pool()
    assert not multiprocessing.active_children()


def test_parallel_from_a_thread_equals_serial(params_file, serial):
    # from a thread (the GUI's case) the workers come from a forkserver, not a fork
    import threading

    out = {}
    thread = threading.Thread(target=lambda: out.update(row=radiomics_features(
        _synthetic_case(), params=params_file, workers=2)))
    thread.start()
    thread.join()
    assert list(out["row"]) == list(serial)
    assert all(_same(out["row"][k], serial[k]) for k in serial)
    shutdown_pool()
    assert not multiprocessing.active_children()


def _leftover_folders() -> set[str]:
    return set(glob.glob(str(Path(tempfile.gettempdir()) / "hecktor-radiomics-*")))


def test_cancel_stops_the_workers(params_file):
    before = _leftover_folders()
    with pytest.raises(Cancelled):
        run_to_end(radiomics_iter(_synthetic_case(), params=params_file, workers=2),
                   should_stop=lambda: True)
    # cancel while jobs run: after the first finished job, the other worker is busy
    seen = []
    with pytest.raises(Cancelled):
        run_to_end(radiomics_iter(_synthetic_case(), params=params_file, workers=2),
                   callback=seen.append, should_stop=lambda: seen[-1].done >= 1)
    assert seen[-1].done < seen[-1].total
    assert not multiprocessing.active_children()
    assert _leftover_folders() <= before


def test_bad_params_and_masks_are_refused(tmp_path):
    case = _synthetic_case()
    with pytest.raises(HecktorInputError, match="does not exist"):
        radiomics_iter(case, params=tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("setting: [binWidth: 25\n")
    with pytest.raises(HecktorInputError, match=r"bad\.yaml is not valid YAML"):
        radiomics_iter(case, params=bad)
    bad.write_text("settings:\n  binWidth: 25\n")
    with pytest.raises(HecktorInputError, match="unknown top-level key.*'settings'"):
        radiomics_iter(case, params=bad)
    bad.write_text("modalities:\n  MR:\n    binWidth: 5\n")
    with pytest.raises(HecktorInputError, match="unknown modality 'MR'"):
        radiomics_iter(case, params=bad)
    bad.write_text("setting:\n  binWidht: 25\n")
    with pytest.raises(HecktorInputError, match="not valid pyradiomics parameters"):
        radiomics_iter(case, params=bad)
    bad.write_text("")
    with pytest.raises(HecktorInputError, match="empty"):
        radiomics_iter(case, params=bad)
    # masks off the CT grid
    moved = sitk.Image(case.label)
    moved.SetOrigin((0.0, 0.0, 0.0))
    with pytest.raises(HecktorInputError, match="not on the CT grid"):
        radiomics_iter(case, moved)
    with pytest.raises(HecktorInputError, match="not on the CT grid"):
        radiomics_iter(case, np.zeros((20, 48, 47), np.uint8))
    with pytest.raises(HecktorInputError, match="values outside"):
        radiomics_iter(case, np.full((20, 48, 48), 3, np.uint8))


# ----------------------------------------------------------------------------- PET metrics
def test_pet_metrics_on_a_cube_by_hand():
    spacing = (3.0, 1.0, 1.0)  # z, y, x
    pet = np.ones((10, 20, 20), np.float32)
    ct = np.full(pet.shape, -50.0, np.float32)
    labels = np.zeros(pet.shape, np.uint8)
    cube = (slice(3, 7), slice(5, 9), slice(5, 9))  # 4 x 4 x 4 voxels
    labels[cube] = 1
    values = np.arange(64, dtype=np.float32).reshape(4, 4, 4) / 8.0 + 1.0  # 1 .. 8.875
    pet[cube] = values
    ct[cube] = 30.0
    m = pet_metrics(pet, ct, labels, spacing)
    volume = 64 * 3.0 / 1000.0
    assert m["GTVp_volume_ml"] == pytest.approx(volume)
    assert m["GTVp_SUVmax"] == pytest.approx(8.875)
    assert m["GTVp_SUVmean"] == pytest.approx(values.mean())
    assert m["GTVp_MTV_ml"] == pytest.approx(volume)
    assert m["GTVp_TLG"] == pytest.approx(volume * values.mean())
    assert m["GTVp_HUmean"] == pytest.approx(30.0)
    assert m["GTVall_SUVmean"] == m["GTVp_SUVmean"]
    # GTVn is empty: no volume, no intensities
    assert m["GTVn_volume_ml"] == 0.0 and m["GTVn_MTV_ml"] == 0.0 and m["GTVn_TLG"] == 0.0
    for key in ("SUVmax", "SUVmean", "SUVpeak", "HUmean"):
        assert math.isnan(m[f"GTVn_{key}"])
    # thresholds: absolute SUV and % of SUVmax
    hot = values[values >= 5.0]
    m5 = pet_metrics(pet, ct, labels, spacing, mtv_threshold=5.0)
    assert m5["GTVp_MTV_ml"] == pytest.approx(hot.size * 3.0 / 1000.0)
    assert m5["GTVp_TLG"] == pytest.approx(hot.size * 3.0 / 1000.0 * hot.mean())
    assert m5["GTVp_volume_ml"] == pytest.approx(volume)
    rel = values[values >= 0.41 * 8.875]
    m41 = pet_metrics(pet, ct, labels, spacing, mtv_threshold="41%")
    assert m41["GTVp_MTV_ml"] == pytest.approx(rel.size * 3.0 / 1000.0)
    with pytest.raises(HecktorInputError, match="MTV threshold"):
        pet_metrics(pet, ct, labels, spacing, mtv_threshold="lots")
    with pytest.raises(HecktorInputError, match="not on the PET"):
        pet_metrics(pet[:-1], ct, labels, spacing)
    no_pet = pet_metrics(None, ct, labels, spacing)
    assert no_pet["GTVp_volume_ml"] == pytest.approx(volume) and math.isnan(no_pet["GTVp_TLG"])


def test_suv_peak_of_a_uniform_sphere_is_its_value():
    spacing = (3.0, 1.0, 1.0)
    shape = (24, 60, 60)
    z, y, x = (np.indices(shape).T * np.array(spacing)).T
    ball = (z - 36) ** 2 + (y - 30) ** 2 + (x - 30) ** 2 <= 15.0**2
    pet = np.where(ball, 10.0, 1.0).astype(np.float32)
    m = pet_metrics(pet, None, ball.astype(np.uint8), spacing)
    assert m["GTVp_SUVpeak"] == pytest.approx(10.0, abs=1e-12)
    assert m["GTVp_SUVmax"] == 10.0


def test_suv_peak_of_one_hot_voxel_counts_the_sphere_voxels():
    spacing = (3.0, 0.98, 0.98)
    background, hot = 1.0, 50.0
    pet = np.full((15, 31, 31), background, np.float32)
    pet[7, 15, 15] = hot
    labels = np.zeros(pet.shape, np.uint8)
    labels[6:9, 14:17, 14:17] = 1
    # voxels whose centres lie within 6.2 mm of a voxel centre, counted by hand
    count = sum(
        1
        for dz in range(-5, 6) for dy in range(-10, 11) for dx in range(-10, 11)
        if (dz * 3.0) ** 2 + (dy * 0.98) ** 2 + (dx * 0.98) ** 2 <= 6.2**2
    )
    assert count == int(sphere_kernel(spacing).sum())
    assert count * 3.0 * 0.98 * 0.98 == pytest.approx(1000.0, rel=0.15)  # about 1 mL
    m = pet_metrics(pet, None, labels, spacing)
    assert m["GTVp_SUVpeak"] == pytest.approx(background + (hot - background) / count, rel=1e-12)
    # at the image border the sphere is cut: the mean is over the voxels inside the image
    flat = np.full((6, 8, 8), 4.0, np.float32)
    corner = np.zeros(flat.shape, np.uint8)
    corner[0, 0, 0] = 2
    assert pet_metrics(flat, None, corner, spacing)["GTVn_SUVpeak"] == pytest.approx(4.0)


# ----------------------------------------------------------------------------- deep features
def _tiny_mmpl():
    import torch

    from napari_hecktor.models.card import ModelCard
    from napari_hecktor.models.registry import TINY_CONFIGS, build_model

    torch.manual_seed(0)
    model = build_model("mmpl", TINY_CONFIGS["mmpl"]).eval()
    recipe = make_recipe("pet_guided_roi", spacing_mm=4.0, roi_mm=(128.0, 128.0, 128.0),
                         interpolator="linear")
    card = ModelCard(name="tiny", architecture="mmpl", config=TINY_CONFIGS["mmpl"],
                     preprocessing=recipe,
                     inference={"roi_size": [16, 16, 16], "overlap": 0.5,
                                "thresholds": [0.5, 0.5], "min_component_voxels": 5})
    return model, card


def test_deep_features_shape_keys_and_determinism():
    import torch

    torch.set_num_threads(1)
    model, card = _tiny_mmpl()
    case = _synthetic_case()
    first = deep_features(case, model, card)
    second = deep_features(case, model, card)
    with torch.no_grad():
        dim = model.features(torch.zeros(1, 2, 16, 16, 16)).shape[1]
    assert list(first) == [f"deep_{i:04d}" for i in range(dim)]
    assert first == second
    assert all(math.isfinite(v) for v in first.values())
    assert not model.training


def test_window_is_centred_on_the_lesion_and_stays_inside():
    geometry = Geometry((32, 32, 32), (4.0, 4.0, 4.0), (0.0, 0.0, 0.0),
                        (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    array = np.arange(2 * 32**3, dtype=np.float32).reshape(2, 32, 32, 32)
    net_input = NetworkInput(array, geometry, {}, (0.0, 0.0, 0.0))
    # lesion at x=40, y=60, z=80 mm -> index (z, y, x) = (20, 15, 10)
    window = select_window(net_input, (16, 16, 16), np.array([40.0, 60.0, 80.0]))
    np.testing.assert_array_equal(window, array[:, 12:28, 7:23, 2:18])
    corner = select_window(net_input, (16, 16, 16), np.array([0.0, 0.0, 124.0]))
    np.testing.assert_array_equal(corner, array[:, 16:32, 0:16, 0:16])
    centred = select_window(net_input, (16, 16, 16))
    np.testing.assert_array_equal(centred, array[:, 8:24, 8:24, 8:24])
    padded = select_window(net_input, (40, 32, 32), size_multiple=8)
    assert padded.shape == (2, 40, 32, 32)
    assert padded[0, 32:].max() == array[0].min()


# ----------------------------------------------------------------------------- table
def test_case_row_and_csv(params_file, serial, tmp_path):
    case = _synthetic_case()
    model, card = _tiny_mmpl()
    row = case_features(case, params=params_file, workers=1, model=(model, card))
    assert row["deep_0000"] == deep_features(case, model, card)["deep_0000"]
    keys = list(row)
    assert keys[0] == "PatientID" and row["PatientID"] == "SYN-001"
    assert keys[1:22] == [f"{s}_{m}" for s in ("GTVp", "GTVn", "GTVall") for m in
                          ("volume_ml", "SUVmax", "SUVmean", "SUVpeak", "MTV_ml", "TLG",
                           "HUmean")]
    assert {k: row[k] for k in serial} == pytest.approx(serial, nan_ok=True)
    other = {**row, "PatientID": "SYN-002", "GTVn_SUVmax": math.nan}
    out = write_features_csv([row, other], tmp_path / "features.csv")
    back = pd.read_csv(out, float_precision="round_trip")
    assert list(back.columns) == keys
    assert back["PatientID"].tolist() == ["SYN-001", "SYN-002"]
    for k in keys[1:]:
        assert _same(float(back[k][0]), row[k]), k
    assert math.isnan(back["GTVn_SUVmax"][1])
    ct_file = tmp_path / "ct.csv"
    ct_file.write_text("not really a CT")
    with pytest.raises(HecktorInputError, match="refusing to overwrite"):
        write_features_csv([row], ct_file, protected=[ct_file])
    assert ct_file.read_text() == "not really a CT"
    with pytest.raises(HecktorInputError, match=r"\.csv"):
        write_features_csv([row], tmp_path / "features.nii.gz")
    assert not list(tmp_path.glob(".hecktor-*"))


def test_extractor_bins_each_derived_image_once(monkeypatch):
    """pyradiomics bins an image once per feature class; ours once per image, same values."""
    from radiomics import featureextractor, imageoperations

    from napari_hecktor.features.radiomics import _extractor

    calls = []
    original = imageoperations.binImage

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(imageoperations, "binImage", counting)
    case = _synthetic_case()
    plain = {k: v for k, v in FAST_PARAMS.items() if k != "modalities"}
    params = {**plain, "setting": {**plain["setting"], "binWidth": 25}}
    direct = featureextractor.RadiomicsFeatureExtractor(params).execute(case.ct, case.label)
    direct_calls, calls[:] = len(calls), []
    ours = _extractor(params).execute(case.ct, case.label)
    derived = {k.split("_")[0] for k in direct
               if not k.startswith(("diagnostics", "original_shape"))}
    images = len(derived)
    assert direct_calls > images and len(calls) == images
    assert list(ours) == list(direct)
    assert all(_same(float(ours[k]), float(direct[k])) for k in direct
               if not k.startswith("diagnostics"))


def test_a_checked_parameter_file_is_checked_again_once_it_changes(params_file, tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(params_file.read_text())
    first = load_params(path)
    first["setting"]["binWidth"] = -1  # the caller's copy: the cache is not touched
    assert load_params(path) == load_params(params_file)
    path.write_text(params_file.read_text().replace("featureClass:", "featureClas:"))
    with pytest.raises(HecktorInputError, match="featureClas"):
        load_params(path)
