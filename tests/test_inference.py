"""Preprocessing recipes, model folders, sliding-window ensembles and post-processing (CPU)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import make_image

from napari_hecktor.errors import HecktorInputError
from napari_hecktor.io.case import Case
from napari_hecktor.io.geometry import Geometry
from napari_hecktor.models.card import ModelCard, load_model, read_card, save_model
from napari_hecktor.models.registry import TINY_CONFIGS, build_model
from napari_hecktor.progress import Cancelled, run_to_end
from napari_hecktor.segment.components import (
    CONNECTIVITY_26,
    fill_and_clean,
    postprocess,
    score_components,
)
from napari_hecktor.segment.inference import (
    auto_batch_size,
    resolve_device,
    segment,
    segment_iter,
    sliding_window_iter,
)
from napari_hecktor.segment.preprocess import find_roi_center, make_recipe, prepare_input

torch.set_num_threads(2)
SMALL_RECIPE = make_recipe("pet_guided_roi", spacing_mm=4.0, roi_mm=(128.0, 128.0, 128.0),
                           interpolator="linear")
BRAIN_XYZ = np.array([2.0, 10.0, 40.0])


def _head_case() -> Case:
    """CT (1x1x3 mm) and PET (4x4x3 mm, other origin) with a hot 'brain' high up in z."""
    ct = np.full((60, 96, 96), -1000, np.int16)
    zz, yy, xx = np.indices(ct.shape)
    ct[((xx - 48) ** 2 + (yy - 48) ** 2) < 40**2] = 40
    ct_image = make_image(ct, spacing=(1.0, 1.0, 3.0), origin=(-48.0, -38.0, -120.0))
    pet_image = make_image(np.full((62, 26, 26), 0.7, np.float32), spacing=(4.0, 4.0, 3.0),
                           origin=(-50.0, -40.0, -122.0))
    pet = sitk.GetArrayFromImage(pet_image)
    idx = np.indices(pet.shape).reshape(3, -1).T
    phys = np.array([pet_image.TransformIndexToPhysicalPoint(tuple(int(v) for v in i[::-1]))
                     for i in idx])
    brain = np.linalg.norm(phys - BRAIN_XYZ, axis=1) < 15
    tumour = np.linalg.norm(phys - np.array([0.0, 0.0, -40.0]), axis=1) < 10
    flat = pet.reshape(-1)
    flat[brain] = 8.0
    flat[tumour] = 12.0
    pet_out = make_image(flat.reshape(pet.shape), spacing=(4.0, 4.0, 3.0),
                         origin=(-50.0, -40.0, -122.0))
    return Case("HEAD-001", ct=ct_image, pet=pet_out)


def _card(arch: str = "normresse_unet3p", **inference) -> ModelCard:
    return ModelCard(
        name=f"test-{arch}",
        architecture=arch,
        config=TINY_CONFIGS[arch],
        preprocessing=SMALL_RECIPE,
        inference={"roi_size": [32, 32, 32], "overlap": 0.5, "thresholds": [0.5, 0.5],
                   "min_component_voxels": 5, **inference},
    )


def test_roi_centre_is_the_largest_hot_component_in_the_cranial_quarter():
    case = _head_case()
    center = find_roi_center(case.ct, case.pet, SMALL_RECIPE)
    np.testing.assert_allclose(center, BRAIN_XYZ, atol=4.0)  # one PET voxel


def test_network_input_is_normalised_on_an_isotropic_roi():
    net_input = prepare_input(_head_case().ct, _head_case().pet, SMALL_RECIPE)
    assert net_input.array.shape == (2, 32, 32, 32)
    assert net_input.geometry.spacing == (4.0, 4.0, 4.0)
    pet, ct = net_input.array
    assert ct.min() >= -1.0 and ct.max() <= 1.0
    nonzero_raw = pet != pet.min()
    assert abs(float(pet[nonzero_raw].mean())) < 0.5


@pytest.mark.parametrize("arch", ["normresse_unet3p", "mmpl"])
def test_single_window_equals_whole_volume_forward(arch):
    torch.manual_seed(0)
    model = build_model(arch, TINY_CONFIGS[arch]).eval()
    x = torch.randn(1, 2, 32, 32, 32)
    prob = run_to_end(sliding_window_iter(model, x, (32, 32, 32), overlap=0.5))
    with torch.no_grad():
        whole = torch.sigmoid(model(x))[0]
    torch.testing.assert_close(prob, whole, atol=1e-5, rtol=1e-5)


def test_cpu_batches_small_windows_with_the_same_probabilities():
    cpu = torch.device("cpu")
    assert auto_batch_size(cpu, (40, 40, 40)) == 4
    assert auto_batch_size(cpu, (96, 96, 80)) == 1  # a whole-ROI window runs alone
    torch.manual_seed(0)
    model = build_model("normresse_unet3p", TINY_CONFIGS["normresse_unet3p"]).eval()
    x = torch.randn(1, 2, 40, 48, 56)
    windows = len(list(sliding_window_iter(model, x, (16, 16, 16), overlap=0.25)))
    assert windows > 8
    batches = list(sliding_window_iter(model, x, (16, 16, 16), overlap=0.25, batch_size=4))
    assert len(batches) == -(-windows // 4)
    one = run_to_end(sliding_window_iter(model, x, (16, 16, 16), overlap=0.25, batch_size=1))
    four = run_to_end(sliding_window_iter(model, x, (16, 16, 16), overlap=0.25, batch_size=4))
    torch.testing.assert_close(four, one, atol=1e-5, rtol=1e-5)


def test_model_folder_round_trip_and_clear_errors(tmp_path):
    torch.manual_seed(0)
    card = _card()
    model = build_model(card.architecture, card.config).eval()
    folder = save_model(tmp_path / "m", model, card)
    loaded, card2 = load_model(folder)
    x = torch.randn(1, 2, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    assert card2.preprocessing == card.preprocessing
    # wrong architecture name
    bad = json.loads((folder / "model_card.json").read_text())
    bad["architecture"] = "resnet9000"
    (tmp_path / "bad1").mkdir()
    (tmp_path / "bad1" / "model_card.json").write_text(json.dumps(bad))
    with pytest.raises(HecktorInputError, match="resnet9000"):
        read_card(tmp_path / "bad1")
    # weights that do not fit the card (a wider config)
    other = json.loads((folder / "model_card.json").read_text())
    other["config"] = {**other["config"], "filters": [8, 16, 32, 64]}
    (tmp_path / "bad2").mkdir()
    (tmp_path / "bad2" / "model_card.json").write_text(json.dumps(other))
    weights = (folder / "model.safetensors").read_bytes()
    (tmp_path / "bad2" / "model.safetensors").write_bytes(weights)
    with pytest.raises(HecktorInputError, match="do not fit"):
        load_model(tmp_path / "bad2")
    # a corrupt weights file
    (tmp_path / "bad3").mkdir()
    (tmp_path / "bad3" / "model_card.json").write_text((folder / "model_card.json").read_text())
    (tmp_path / "bad3" / "model.safetensors").write_bytes(b"\x80\x04not safetensors")
    with pytest.raises(HecktorInputError, match="cannot read weights"):
        load_model(tmp_path / "bad3")
    with pytest.raises(HecktorInputError, match="not a model folder"):
        load_model(tmp_path)


def test_segmentation_lands_on_the_ct_grid_and_identical_members_agree():
    torch.manual_seed(0)
    case = _head_case()
    card = _card()
    model = build_model(card.architecture, card.config).eval()
    seg = segment(case, [(model, card), (model, card)], device="cpu")
    assert seg.labels.shape == case.geometry.shape and seg.labels.dtype == np.uint8
    assert Geometry.of(seg.label_image()).matches(case.geometry)
    assert Geometry.of(seg.probability_image()).matches(case.geometry)
    assert seg.probabilities.shape == (2, *case.geometry.shape)
    assert float(seg.uncertainty.max()) < 1e-5  # identical members never disagree
    assert seg.device == "cpu"
    tta = segment(case, [(model, card)], device="cpu", tta=True)
    assert float(tta.uncertainty.max()) > 0  # flips of an untrained net do disagree


def test_cancel_stops_between_window_batches():
    card = _card()
    model = build_model(card.architecture, card.config).eval()
    job = segment_iter(_head_case(), [(model, card)], device="cpu")
    with pytest.raises(Cancelled):
        run_to_end(job, should_stop=lambda: True)


def test_device_auto_is_cpu_here_and_cuda_is_refused_without_gpu():
    if torch.cuda.is_available():
        assert resolve_device("auto").type == "cuda"
    else:
        assert resolve_device("auto").type in ("cpu", "mps")
        with pytest.raises(HecktorInputError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_postprocess_tumour_first_fills_holes_and_drops_small_islands():
    prob = np.zeros((2, 12, 20, 20), np.float32)
    prob[0, 2:9, 2:9, 2:9] = 0.9
    prob[0, 5, 5, 5] = 0.1  # a hole inside the tumour
    prob[1, 2:9, 6:14, 6:14] = 0.8  # overlaps the tumour: tumour wins there
    prob[1, 10, 17, 17] = 0.9  # a 1-voxel island
    labels = postprocess(prob, (0.5, 0.5), min_voxels=5)
    assert labels[5, 5, 5] == 1
    assert labels[4, 7, 7] == 1 and labels[4, 12, 12] == 2
    assert labels[10, 17, 17] == 0


def _fill_and_clean_whole_array(labels: np.ndarray, min_voxels: int) -> np.ndarray:
    """The reference: the same steps over the whole array, no bounding box."""
    from scipy import ndimage

    out = labels.copy()
    for value in (1, 2):
        filled = ndimage.binary_fill_holes(out == value)
        out[filled & (out == 0)] = value
        components, n = ndimage.label(out == value, structure=CONNECTIVITY_26)
        sizes = np.bincount(components.ravel(), minlength=n + 1)
        small = sizes < min_voxels
        small[0] = False
        out[small[components]] = 0
    return out


def test_fill_and_clean_in_the_lesion_box_equals_the_whole_array():
    rng = np.random.default_rng(0)
    for trial in range(20):
        labels = np.zeros((30, 40, 40), np.uint8)
        # blobs with holes, some touching the array's faces, small islands, label 2 in holes
        for _ in range(4):
            z, y, x = rng.integers(0, 30), rng.integers(0, 40), rng.integers(0, 40)
            r = int(rng.integers(2, 7))
            value = int(rng.integers(1, 3))
            labels[max(0, z - r):z + r, max(0, y - r):y + r, max(0, x - r):x + r] = value
            labels[z, y, x] = 0 if trial % 2 else 3 - value  # a hole, or the other label
        labels[rng.random(labels.shape) < 0.01] = 2
        expected = _fill_and_clean_whole_array(labels, min_voxels=5)
        np.testing.assert_array_equal(fill_and_clean(labels, min_voxels=5), expected)
    # a hollow shell whose cavity touches the box's edge is filled, one open to the outside not
    shell = np.zeros((9, 9, 9), np.uint8)
    shell[1:8, 1:8, 1:8] = 1
    shell[2:7, 2:7, 2:7] = 0
    assert fill_and_clean(shell, min_voxels=1)[4, 4, 4] == 1
    shell[4, 4, 1] = 0  # a tunnel to the outside
    assert fill_and_clean(shell, min_voxels=1)[4, 4, 4] == 0


def test_components_are_scored_and_weak_islands_flagged():
    geometry = Geometry((20, 20, 12), (1.0, 1.0, 3.0), (0.0, 0.0, 0.0),
                        (1, 0, 0, 0, 1, 0, 0, 0, 1))
    labels = np.zeros(geometry.shape, np.uint8)
    labels[2:8, 2:8, 2:8] = 1
    labels[9:11, 15:17, 15:17] = 2
    pet = np.full(geometry.shape, 1.0, np.float32)
    pet[2:8, 2:8, 2:8] = 9.0
    prob = np.zeros((2, *geometry.shape), np.float32)
    prob[0][labels == 1] = 0.95
    prob[1][labels == 2] = 0.55
    comps = score_components(labels, geometry, pet=pet, prob=prob,
                             uncertainty=np.zeros(geometry.shape, np.float32))
    tumour, node = comps
    assert tumour.label == 1 and tumour.volume_ml == pytest.approx(216 * 3 / 1000)
    assert tumour.suv_max == 9.0 and not tumour.likely_false_positive
    assert node.likely_false_positive
    assert any("low model confidence" in r for r in node.reasons)
    assert any("not FDG-avid" in r for r in node.reasons)
    np.testing.assert_allclose(tumour.centroid_mm, (4.5, 4.5, 13.5))


@pytest.mark.parametrize("name", ["mmpl_demo", "normresse_demo"])
def test_bundled_demo_models_load_are_labelled_and_find_the_sample_tumour(name):
    """Each shipped model loads without pickle, says it is a synthetic demo and finds GTVp."""
    from napari_hecktor._sample_data import make_sample_case
    from napari_hecktor.metrics import dice
    from napari_hecktor.models.card import DEMO_WARNING, bundled_models, resolve_model_path

    assert name in bundled_models()
    folder = resolve_model_path(name)
    assert (folder / "model.safetensors").stat().st_mode & 0o044 == 0o044  # readable by all
    model, card = load_model(name)
    assert card.demo and DEMO_WARNING in card.warning and DEMO_WARNING in card.label
    assert card.metrics["synthetic_test"]["n_cases"] == 25  # measured figures are in the card
    case = make_sample_case()
    result = segment(case, [(model, card)])
    truth = sitk.GetArrayFromImage(case.label)
    assert dice(result.labels == 1, truth == 1) > 0.6
