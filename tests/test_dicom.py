"""DICOM CT/PET series reading and SUVbw conversion (napari_hecktor.io.dicom)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_factory import write_series

from napari_hecktor.errors import HecktorInputError
from napari_hecktor.io.dicom import (
    DicomSeries,
    find_series,
    read_dicom_study,
    read_pet_suv,
    read_series,
    suv_factor,
)

CT_SPACING = (0.9765625, 0.9765625, 2.5)
CT_ORIGIN = (-125.0, -240.5, -310.0)
PT_SPACING = (4.0, 4.0, 3.27)
PT_ORIGIN = (-128.0, -250.0, -320.0)

# Independent hand computation of the SUVbw factor for the factory's default header:
# weight 75 kg, 370 MBq injected at 10:00:00, half-life 6586.2 s, series start 11:00:00.
WEIGHT_KG = 75.0
DOSE_BQ = 370e6
HALF_LIFE_S = 6586.2
DECAY_S = 3600.0  # 11:00:00 - 10:00:00
EXPECTED_FACTOR = WEIGHT_KG * 1000.0 / (DOSE_BQ * 2.0 ** (-DECAY_S / HALF_LIFE_S))


def _ct_array(shape: tuple[int, int, int] = (6, 8, 10)) -> np.ndarray:
    rng = np.random.default_rng(1)
    array = rng.integers(-1024, 3000, size=shape).astype(np.int16)
    array[:, 0, 0] = np.arange(shape[0]) * 100  # a z ramp makes the slice order visible
    return array


def _pet_activity(nz: int = 5, ny: int = 6, nx: int = 7) -> tuple[np.ndarray, list[float]]:
    """Activity (Bq/mL) exactly representable as int16 * per-slice slope, and the slopes.

    The first slope is 1 (an integer) and the others differ widely: a reader that takes
    the pixel type or the slope of the first slice gets the other slices wrong.
    """
    rng = np.random.default_rng(2)
    raw = rng.integers(0, 30000, size=(nz, ny, nx)).astype(np.float64)
    slopes = [1.0, 0.5, 3.75, 100.0, 0.0125][:nz]
    return raw * np.asarray(slopes)[:, None, None], slopes


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p): (p.read_bytes(), os.stat(p).st_mtime_ns) for p in folder.rglob("*") if p.is_file()
    }


def _only(folder: Path) -> DicomSeries:
    (series,) = find_series(folder)
    return series


# --------------------------------------------------------------------------- CT


def test_ct_round_trip_shuffled_files(tmp_path: Path) -> None:
    ct = _ct_array()
    write_series(
        tmp_path, ct, modality="CT", spacing_xyz=CT_SPACING, origin_xyz=CT_ORIGIN, shuffle_seed=7
    )
    series = _only(tmp_path)
    assert series.modality == "CT"
    assert len(series.files) == ct.shape[0]
    image = read_series(series)
    assert image.GetPixelID() == sitk.sitkInt16
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), ct)
    assert image.GetSize() == (ct.shape[2], ct.shape[1], ct.shape[0])
    np.testing.assert_allclose(image.GetSpacing(), CT_SPACING, atol=1e-6)
    np.testing.assert_allclose(image.GetOrigin(), CT_ORIGIN, atol=1e-6)
    np.testing.assert_allclose(image.GetDirection(), np.eye(3).ravel(), atol=1e-9)


def test_reading_leaves_the_files_unchanged(tmp_path: Path) -> None:
    ct, pet = tmp_path / "ct", tmp_path / "pt"
    write_series(ct, _ct_array(), modality="CT", spacing_xyz=CT_SPACING, origin_xyz=CT_ORIGIN)
    activity, slopes = _pet_activity()
    write_series(
        pet,
        activity,
        modality="PT",
        spacing_xyz=PT_SPACING,
        origin_xyz=PT_ORIGIN,
        rescale_slopes=slopes,
    )
    before = _snapshot(tmp_path)
    read_dicom_study(tmp_path)
    assert _snapshot(tmp_path) == before


# --------------------------------------------------------------------------- PET / SUV


def test_pet_per_slice_rescale_slopes_are_honoured(tmp_path: Path) -> None:
    activity, slopes = _pet_activity()
    write_series(
        tmp_path,
        activity,
        modality="PT",
        spacing_xyz=PT_SPACING,
        origin_xyz=PT_ORIGIN,
        rescale_slopes=slopes,
        shuffle_seed=3,
    )
    image = read_series(_only(tmp_path))
    assert image.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_allclose(sitk.GetArrayFromImage(image), activity, rtol=1e-6)


def test_pet_suv_matches_hand_computation(tmp_path: Path) -> None:
    activity, slopes = _pet_activity()
    write_series(
        tmp_path,
        activity,
        modality="PT",
        spacing_xyz=PT_SPACING,
        origin_xyz=PT_ORIGIN,
        rescale_slopes=slopes,
    )
    suv, factor = read_pet_suv(_only(tmp_path))
    assert factor.factor == pytest.approx(EXPECTED_FACTOR, rel=1e-6)
    assert factor.decay_s == pytest.approx(DECAY_S)
    assert factor.patient_weight_kg == WEIGHT_KG
    assert factor.injected_dose_bq == DOSE_BQ
    assert factor.half_life_s == HALF_LIFE_S
    assert factor.decayed_dose_bq == pytest.approx(DOSE_BQ * 2.0 ** (-DECAY_S / HALF_LIFE_S))
    assert factor.injection_time == "2024-01-02T10:00:00"
    assert factor.reference_time == "2024-01-02T11:00:00"
    assert (factor.units, factor.decay_correction) == ("BQML", "START")
    assert suv.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_allclose(
        sitk.GetArrayFromImage(suv), activity * EXPECTED_FACTOR, rtol=1e-4, atol=1e-9
    )
    np.testing.assert_allclose(suv.GetSpacing(), PT_SPACING, atol=1e-6)
    np.testing.assert_allclose(suv.GetOrigin(), PT_ORIGIN, atol=1e-6)
    json.dumps(factor.as_dict())  # serialisable for layer metadata


def test_pet_automatic_slopes_keep_precision(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    activity = rng.uniform(0, 5e4, size=(4, 5, 6)) * np.array([1, 10, 0.1, 3])[:, None, None]
    write_series(tmp_path, activity, modality="PT", spacing_xyz=PT_SPACING, origin_xyz=PT_ORIGIN)
    array = sitk.GetArrayFromImage(read_series(_only(tmp_path)))
    peak = np.abs(activity).max(axis=(1, 2))[:, None, None]
    assert np.all(np.abs(array - activity) <= 1e-4 * peak)


def _pet_header(tmp_path: Path, **kwargs: object) -> pydicom.Dataset:
    activity, _ = _pet_activity(nz=2)
    paths = write_series(
        tmp_path, activity, modality="PT", spacing_xyz=PT_SPACING, origin_xyz=PT_ORIGIN, **kwargs
    )
    return pydicom.dcmread(paths[0], stop_before_pixels=True)


def test_admin_decay_correction_means_no_decay(tmp_path: Path) -> None:
    factor = suv_factor(_pet_header(tmp_path, decay_correction="ADMIN"))
    assert factor.decay_s == 0.0
    assert factor.factor == pytest.approx(WEIGHT_KG * 1000.0 / DOSE_BQ, rel=1e-9)


def test_gml_units_give_factor_one(tmp_path: Path) -> None:
    factor = suv_factor(_pet_header(tmp_path, units="GML"))
    assert factor.factor == 1.0
    assert factor.units == "GML"


def test_earliest_acquisition_time_when_series_time_is_later(tmp_path: Path) -> None:
    # QIBA: SeriesTime after an AcquisitionTime -> decay to the earliest AcquisitionTime.
    activity, slopes = _pet_activity(nz=3)
    write_series(
        tmp_path,
        activity,
        modality="PT",
        spacing_xyz=PT_SPACING,
        origin_xyz=PT_ORIGIN,
        rescale_slopes=slopes,
        series_time="113000",
        acquisition_times=["110500", "110000", "110300"],
    )
    _, factor = read_pet_suv(_only(tmp_path))
    assert factor.decay_s == pytest.approx(3600.0)


def test_injection_before_midnight(tmp_path: Path) -> None:
    factor = suv_factor(_pet_header(tmp_path, injection_time="233000", series_time="003000"))
    assert factor.decay_s == pytest.approx(3600.0)


def test_injection_datetime_is_preferred(tmp_path: Path) -> None:
    header = _pet_header(
        tmp_path, injection_time="", injection_datetime="20240102093000.000000+0100"
    )
    assert suv_factor(header).decay_s == pytest.approx(5400.0)


def test_overrides_replace_header_values(tmp_path: Path) -> None:
    header = _pet_header(tmp_path)
    factor = suv_factor(
        header,
        overrides={
            "PatientWeight": 60.0,
            "RadionuclideTotalDose": 2e8,
            "RadionuclideHalfLife": 6000,
        },
    )
    assert factor.factor == pytest.approx(60.0 * 1000.0 / (2e8 * 2.0 ** (-DECAY_S / 6000.0)))
    assert suv_factor(header, overrides={"decay_s": 0.0}).factor == pytest.approx(
        WEIGHT_KG * 1000.0 / DOSE_BQ
    )
    assert suv_factor(header, overrides={"factor": 1.5e-4}).factor == 1.5e-4
    assert suv_factor(header, overrides={"PatientWeight": None}).factor == pytest.approx(
        EXPECTED_FACTOR, rel=1e-6
    )
    with pytest.raises(HecktorInputError, match="PatientWeight"):
        suv_factor(header, overrides={"PatientWeight": -3})
    with pytest.raises(HecktorInputError, match="unknown SUV override"):
        suv_factor(header, overrides={"weight": 70})


@pytest.mark.parametrize(
    ("omit", "keyword"),
    [
        ("PatientWeight", "PatientWeight"),
        ("RadionuclideTotalDose", "RadionuclideTotalDose"),
        ("RadionuclideHalfLife", "RadionuclideHalfLife"),
        ("RadiopharmaceuticalStartTime", "RadiopharmaceuticalStartTime"),
        ("Units", "Units"),
        ("DecayCorrection", "DecayCorrection"),
    ],
)
def test_missing_tag_is_named(tmp_path: Path, omit: str, keyword: str) -> None:
    activity, slopes = _pet_activity(nz=2)
    write_series(
        tmp_path,
        activity,
        modality="PT",
        spacing_xyz=PT_SPACING,
        origin_xyz=PT_ORIGIN,
        rescale_slopes=slopes,
        omit=[omit],
    )
    with pytest.raises(HecktorInputError, match=keyword) as info:
        read_pet_suv(_only(tmp_path))
    assert "\n" not in str(info.value)


def test_zero_weight_is_named(tmp_path: Path) -> None:
    with pytest.raises(HecktorInputError, match=r"PatientWeight \(0010,1030\)"):
        suv_factor(_pet_header(tmp_path, patient_weight=0.0))


def test_counts_units_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(HecktorInputError, match="Units.*CNTS"):
        suv_factor(_pet_header(tmp_path, units="CNTS"))


def test_decay_correction_none_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(HecktorInputError, match="DecayCorrection.*NONE"):
        suv_factor(_pet_header(tmp_path, decay_correction="NONE"))


def test_override_fixes_missing_weight(tmp_path: Path) -> None:
    activity, slopes = _pet_activity(nz=2)
    write_series(
        tmp_path,
        activity,
        modality="PT",
        spacing_xyz=PT_SPACING,
        origin_xyz=PT_ORIGIN,
        rescale_slopes=slopes,
        omit=["PatientWeight"],
    )
    suv, factor = read_pet_suv(_only(tmp_path), overrides={"PatientWeight": WEIGHT_KG})
    assert factor.factor == pytest.approx(EXPECTED_FACTOR, rel=1e-6)
    np.testing.assert_allclose(sitk.GetArrayFromImage(suv), activity * EXPECTED_FACTOR, rtol=1e-4)


def test_as_dict_turns_unknown_into_none(tmp_path: Path) -> None:
    header = _pet_header(tmp_path, omit=["PatientWeight"])
    info = suv_factor(header, overrides={"factor": 2e-4}).as_dict()
    assert info["factor"] == 2e-4
    assert info["patient_weight_kg"] is None
    assert math.isclose(info["injected_dose_bq"], DOSE_BQ)
    json.dumps(info, allow_nan=False)


# --------------------------------------------------------------------------- bad input


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(HecktorInputError, match="no DICOM files in"):
        find_series(tmp_path)
    with pytest.raises(HecktorInputError, match="no DICOM files in"):
        read_dicom_study(tmp_path)


def test_folder_of_non_dicom_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a DICOM file\n")
    (tmp_path / "random.dcm").write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp_path / "empty.dcm").write_bytes(b"")
    (tmp_path / "looks_like_group_8.bin").write_bytes(b"\x08\x00\x05\x00garbage")
    before = _snapshot(tmp_path)
    with pytest.raises(HecktorInputError, match="no DICOM files in"):
        read_dicom_study(tmp_path)
    assert _snapshot(tmp_path) == before


def test_single_slice_series(tmp_path: Path) -> None:
    write_series(
        tmp_path, _ct_array((1, 8, 10)), modality="CT", spacing_xyz=CT_SPACING, origin_xyz=CT_ORIGIN
    )
    with pytest.raises(HecktorInputError, match="single slice"):
        read_series(_only(tmp_path))


def test_non_uniform_spacing(tmp_path: Path) -> None:
    write_series(
        tmp_path,
        _ct_array((4, 8, 10)),
        modality="CT",
        spacing_xyz=CT_SPACING,
        origin_xyz=CT_ORIGIN,
        slice_positions_z=[0.0, 2.5, 5.0, 10.0],
    )
    with pytest.raises(HecktorInputError, match="not uniform"):
        read_series(_only(tmp_path))


def test_duplicate_positions(tmp_path: Path) -> None:
    write_series(
        tmp_path,
        _ct_array((3, 8, 10)),
        modality="CT",
        spacing_xyz=CT_SPACING,
        origin_xyz=CT_ORIGIN,
        slice_positions_z=[0.0, 2.5, 2.5],
    )
    with pytest.raises(HecktorInputError, match="same position"):
        read_series(_only(tmp_path))


def test_study_without_ct(tmp_path: Path) -> None:
    activity, slopes = _pet_activity(nz=2)
    write_series(tmp_path, activity, modality="PT", spacing_xyz=PT_SPACING, origin_xyz=PT_ORIGIN)
    with pytest.raises(HecktorInputError, match="no CT series"):
        read_dicom_study(tmp_path)


# --------------------------------------------------------------------------- study


def test_read_dicom_study_ct_and_pet(tmp_path: Path) -> None:
    ct = _ct_array((8, 12, 14))
    activity, slopes = _pet_activity(nz=5, ny=4, nx=5)
    study = pydicom.uid.generate_uid()
    write_series(
        tmp_path / "CT",
        ct,
        modality="CT",
        spacing_xyz=CT_SPACING,
        origin_xyz=CT_ORIGIN,
        study_uid=study,
        shuffle_seed=11,
    )
    write_series(
        tmp_path / "PET",
        activity,
        modality="PT",
        spacing_xyz=PT_SPACING,
        origin_xyz=PT_ORIGIN,
        study_uid=study,
        rescale_slopes=slopes,
    )
    # a shorter CT (scout-like) series must not be chosen
    write_series(
        tmp_path / "CT2", ct[:2], modality="CT", spacing_xyz=CT_SPACING, origin_xyz=(0, 0, 0)
    )
    ct_image, pet_image, factor = read_dicom_study(tmp_path)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ct_image), ct)
    np.testing.assert_allclose(ct_image.GetSpacing(), CT_SPACING, atol=1e-6)
    np.testing.assert_allclose(ct_image.GetOrigin(), CT_ORIGIN, atol=1e-6)
    assert pet_image is not None and factor is not None
    assert pet_image.GetSize() == (5, 4, 5)
    np.testing.assert_allclose(pet_image.GetSpacing(), PT_SPACING, atol=1e-6)
    np.testing.assert_allclose(pet_image.GetOrigin(), PT_ORIGIN, atol=1e-6)
    assert factor.factor == pytest.approx(EXPECTED_FACTOR, rel=1e-6)
    np.testing.assert_allclose(
        sitk.GetArrayFromImage(pet_image), activity * EXPECTED_FACTOR, rtol=1e-4
    )


def test_read_dicom_study_without_pet(tmp_path: Path) -> None:
    write_series(tmp_path, _ct_array(), modality="CT", spacing_xyz=CT_SPACING, origin_xyz=CT_ORIGIN)
    ct_image, pet_image, factor = read_dicom_study(tmp_path)
    assert ct_image.GetSize() == (10, 8, 6)
    assert pet_image is None and factor is None
