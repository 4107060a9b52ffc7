"""Reading, writing and rejecting volumes: round trips keep every voxel and the geometry."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import ROTATED_DIRECTION, digest, make_image

from napari_hecktor.errors import HecktorInputError
from napari_hecktor.io.case import load_case
from napari_hecktor.io.geometry import Geometry
from napari_hecktor.io.volumes import read_image, write_image


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
@pytest.mark.parametrize("direction", [None, ROTATED_DIRECTION], ids=["axis-aligned", "rotated"])
def test_mask_round_trip_keeps_grid_and_voxels(tmp_path, suffix, direction):
    rng = np.random.default_rng(1)
    mask = rng.integers(0, 3, size=(9, 17, 13)).astype(np.uint8)
    kwargs = {} if direction is None else {"direction": direction}
    image = make_image(mask, spacing=(0.977, 0.977, 3.27), origin=(-249.5, -200.25, -813.0),
                       **kwargs)
    path = write_image(image, tmp_path / f"mask{suffix}")
    back = read_image(path)
    assert Geometry.of(back).matches(Geometry.of(image), tol_mm=1e-4)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), mask)


def test_load_case_resamples_pet_onto_ct_grid(small_case):
    case = load_case(small_case["ct"], small_case["pet"], small_case["label"])
    assert case.case_id == "CASE-001"
    assert Geometry.of(case.pet_on_ct).matches(case.geometry)
    assert Geometry.of(case.pet).spacing == (4.0, 4.0, 3.0)  # native PET kept too
    assert case.label.GetPixelID() == sitk.sitkUInt8
    assert set(np.unique(case.label_array())) == {0, 1, 2}


def test_writing_never_overwrites_an_input(small_case):
    case = load_case(small_case["ct"], small_case["pet"], small_case["label"])
    before = digest(small_case["label"])
    with pytest.raises(HecktorInputError, match="refusing to overwrite"):
        write_image(case.label, small_case["label"], protected=case.sources.values())
    assert digest(small_case["label"]) == before


def _bad_inputs(tmp_path, small_case):
    """(description, callable that must raise, expected message fragment)."""
    ct, pet, label = small_case["ct"], small_case["pet"], small_case["label"]
    truncated = tmp_path / "truncated__CT.nii.gz"
    truncated.write_bytes(ct.read_bytes()[: len(ct.read_bytes()) // 2])
    garbage = tmp_path / "garbage__CT.nii"
    garbage.write_bytes(b"this is not an image" * 50)
    far_pet = tmp_path / "far__PT.nii.gz"
    far = sitk.ReadImage(str(pet))
    far.SetOrigin((900.0, 900.0, 900.0))
    sitk.WriteImage(far, str(far_pet))
    shifted_label = tmp_path / "shifted.nii.gz"
    lab = sitk.ReadImage(str(label))
    lab.SetOrigin((0.0, 0.0, 0.0))
    sitk.WriteImage(lab, str(shifted_label))
    bad_values = tmp_path / "bad_values.nii.gz"
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(label)))
    arr[0, 0, 0] = 7
    sitk.WriteImage(make_image(arr), str(bad_values))
    nan_pet = tmp_path / "nan__PT.nii.gz"
    parr = sitk.GetArrayFromImage(sitk.ReadImage(str(pet)))
    parr[3, 3, 3] = np.nan
    sitk.WriteImage(make_image(parr, spacing=(4.0, 4.0, 3.0), origin=(-42.0, -37.0, -121.0)),
                    str(nan_pet))
    flat = tmp_path / "flat__CT.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((30, 30), np.int16)), str(flat))
    return [
        ("truncated", lambda: load_case(truncated, pet), "corrupt, truncated"),
        ("not an image", lambda: load_case(garbage, pet), "corrupt, truncated"),
        ("no overlap", lambda: load_case(ct, far_pet), "do not overlap in space"),
        ("label off grid", lambda: load_case(ct, pet, shifted_label), "not on the CT grid"),
        ("label values", lambda: load_case(ct, pet, bad_values), "outside 0"),
        ("NaN", lambda: load_case(ct, nan_pet), "NaN"),
        ("missing PET", lambda: load_case(ct, tmp_path / "absent__PT.nii.gz"), "not found"),
        ("2D", lambda: load_case(flat, pet), "not a 3D volume"),
    ]


BAD_INPUTS = ["truncated", "not an image", "no overlap", "label off grid", "label values", "NaN",
              "missing PET", "2D"]


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_bad_input_gets_one_clear_message_and_changes_nothing(tmp_path, small_case, name):
    call, fragment = {n: (c, f) for n, c, f in _bad_inputs(tmp_path, small_case)}[name]
    before = digest(tmp_path)
    with pytest.raises(HecktorInputError) as info:
        call()
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message
    assert digest(tmp_path) == before
