"""A real napari viewer (run under Xvfb): reader, sample data, writer and display widget."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import ROTATED_DIRECTION, digest, make_image

from napari_hecktor.display import window_limits
from napari_hecktor.io.geometry import Geometry
from napari_hecktor.io.volumes import read_image

pytestmark = pytest.mark.gui

PET_SPACING = (4.0, 4.0, 3.0)


def _hot_spot_case(tmp_path, direction=None):
    """CT with a bone marker and PET with a hot voxel, both at the same known mm point."""
    kw = {} if direction is None else {"direction": direction}
    ct = np.full((40, 64, 64), 40, np.int16)
    ct_image = make_image(ct, spacing=(0.98, 0.98, 3.0), origin=(-30.0, -28.0, -60.0), **kw)
    pet = np.full((40, 20, 20), 0.8, np.float32)
    pet_image = make_image(pet, spacing=PET_SPACING, origin=(-36.0, -34.0, -61.5), **kw)
    hot_index = (9, 11, 17)  # (x, y, z) in the PET grid
    pet_image[hot_index] = 25.0
    hot_mm = np.array(pet_image.TransformIndexToPhysicalPoint(hot_index))
    marker = ct_image.TransformPhysicalPointToIndex(hot_mm.tolist())
    ct_image[marker] = 1500
    ct_path, pet_path = tmp_path / "HOT-001__CT.nii.gz", tmp_path / "HOT-001__PT.nii.gz"
    sitk.WriteImage(ct_image, str(ct_path))
    sitk.WriteImage(pet_image, str(pet_path))
    return ct_path, hot_mm


def _argmax_world(layer) -> np.ndarray:
    peak = np.unravel_index(int(np.argmax(layer.data)), layer.data.shape)
    return np.asarray(layer.data_to_world(peak))


@pytest.mark.parametrize("direction", [None, ROTATED_DIRECTION], ids=["axis-aligned", "rotated"])
def test_pet_hot_spot_lands_on_its_mm_position(make_napari_viewer, tmp_path, direction):
    ct_path, hot_mm = _hot_spot_case(tmp_path, direction)
    viewer = make_napari_viewer()
    layers = viewer.open(str(ct_path), plugin="napari-hecktor")
    ct_layer, pet_layer = layers
    assert [str(u) for u in pet_layer.units] == ["millimeter"] * 3
    half_pet_voxel = 0.5 * np.linalg.norm(PET_SPACING)
    pet_peak = _argmax_world(pet_layer)[::-1]  # world is (z, y, x); hot_mm is (x, y, z)
    ct_peak = _argmax_world(ct_layer)[::-1]
    assert np.linalg.norm(pet_peak - hot_mm) <= half_pet_voxel
    assert np.linalg.norm(ct_peak - pet_peak) <= half_pet_voxel
    # the cursor readout (world coordinates) maps to the same voxel in both layers
    assert np.array_equal(ct_layer.world_to_data(ct_peak[::-1]).round(),
                          pet_layer.world_to_data(ct_peak[::-1]).round())


def test_sample_case_opens_as_fused_overlay(make_napari_viewer):
    viewer = make_napari_viewer(show=True)  # a hidden canvas renders black
    layers = viewer.open_sample("napari-hecktor", "synthetic_case")
    roles = [layer.metadata["hecktor"]["role"] for layer in layers]
    assert roles == ["ct", "pet", "label"]
    ct, pet, labels = layers
    assert tuple(ct.contrast_limits) == window_limits("soft tissue")
    assert tuple(pet.contrast_limits) == (0.0, 10.0) and pet.colormap.name == "hot"
    assert pet.blending == "additive"
    assert labels.data.dtype == np.uint8
    np.testing.assert_allclose(labels.colormap.map(np.array([1, 2]))[:, :3],
                               [[1.0, 0.0, 0.0], [0.0, 0.4, 1.0]], atol=0.01)
    for layer in layers:
        np.testing.assert_allclose(layer.scale, ct.scale)
        np.testing.assert_allclose(layer.translate, ct.translate)
    tumour_z = np.argwhere(labels.data == 1)[:, 0].mean()
    viewer.dims.set_point(0, labels.data_to_world((tumour_z, 0, 0))[0])
    shot = viewer.screenshot(canvas_only=True)
    red = (shot[..., 0].astype(int) - shot[..., 2].astype(int)) > 80
    assert red.any(), "PET (hot) or GTVp (red) should be visible in the rendered canvas"


def test_writer_saves_edited_mask_on_ct_grid_and_protects_inputs(make_napari_viewer, tmp_path,
                                                                 small_case):
    viewer = make_napari_viewer()
    layers = viewer.open(str(small_case["ct"]), plugin="napari-hecktor")
    labels = layers[-1]
    assert labels.metadata["hecktor"]["role"] == "label"
    labels.data[0, 0, 0] = 2
    out = tmp_path / "out" / "corrected.nii.gz"
    labels.save(str(out), plugin="napari-hecktor")
    saved = read_image(out)
    ct = read_image(small_case["ct"])
    assert Geometry.of(saved).matches(Geometry.of(ct))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(saved), labels.data)
    before = digest(small_case["label"])
    with pytest.raises(Exception, match="refusing to overwrite"):
        labels.save(str(small_case["label"]), plugin="napari-hecktor")
    assert digest(small_case["label"]) == before


def test_display_widget_applies_presets(make_napari_viewer, small_case):
    viewer = make_napari_viewer()
    ct, pet, gt = viewer.open(str(small_case["ct"]), plugin="napari-hecktor")
    _, case_widget = viewer.window.add_plugin_dock_widget("napari-hecktor", "Case")
    widget = case_widget.display
    widget.window.value = "bone"
    assert tuple(ct.contrast_limits) == window_limits("bone")
    widget.pet_colormap.value = "inverted grey"
    widget.suv_max.value = 6.0
    widget.fusion.value = 0.3
    assert pet.colormap.name == "gray_r" and tuple(pet.contrast_limits) == (0.0, 6.0)
    assert pet.opacity == pytest.approx(0.3)
    widget.show_truth.value = False
    assert not gt.visible


def test_dicom_folder_opens_with_suv_and_factor_in_metadata(make_napari_viewer, tmp_path):
    from dicom_factory import write_series

    ct = np.full((6, 16, 16), 40, np.int16)
    activity = np.full((6, 6, 6), 5000.0, np.float32)  # Bq/mL
    activity[3, 3, 3] = 50000.0
    write_series(tmp_path / "study" / "CT", ct, modality="CT", spacing_xyz=(1.0, 1.0, 3.0),
                 origin_xyz=(-8.0, -8.0, -9.0))
    write_series(tmp_path / "study" / "PET", activity, modality="PT",
                 spacing_xyz=(3.0, 3.0, 3.0), origin_xyz=(-9.0, -9.0, -9.0))
    viewer = make_napari_viewer()
    ct_layer, pet_layer = viewer.open(str(tmp_path / "study"), plugin="napari-hecktor")
    suv = pet_layer.metadata["hecktor"]["suv"]
    # SUVbw = activity * weight[g] / (dose * 2^(-decay / half-life)), decay 10:00 -> 11:00
    expected = 75_000.0 / (3.7e8 * 2.0 ** (-3600.0 / 6586.2))
    assert suv["factor"] == pytest.approx(expected, rel=1e-6)
    assert float(pet_layer.data.max()) == pytest.approx(50000.0 * expected, rel=0.05)
    assert ct_layer.metadata["hecktor"]["layout"] == "dicom"
