"""Synthetic multi-centre PET/CT phantoms: geometry, lesions, uptake, determinism, cohort I/O."""

from __future__ import annotations

import csv
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from napari_hecktor.data.clinical import HECKTOR2025_COLUMNS
from napari_hecktor.data.phantom import CENTERS, Lesion, PhantomCase, make_case, write_cohort
from napari_hecktor.errors import HecktorInputError

# (seed, centre): spread over scanners with different CT and PET grids
CASES = [(1, 0), (2, 1), (3, 3), (4, 6), (11, 2)]


@pytest.fixture(scope="module")
def cases() -> list[PhantomCase]:
    return [make_case(seed, center=center) for seed, center in CASES]


@pytest.fixture(scope="module")
def empty_case() -> PhantomCase:
    return make_case(7, center=4, empty=True)


def _arr(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image)


def _pet_on_ct(case: PhantomCase) -> np.ndarray:
    return _arr(sitk.Resample(case.pet, case.ct, sitk.Transform(), sitk.sitkLinear, 0.0))


def _neck_soft_tissue_median(case: PhantomCase, pet_on_ct: np.ndarray) -> float:
    """Median PET of the soft tissue (0-100 HU, no lesion) in the caudal 40 % of the slices."""
    ct, label = _arr(case.ct), _arr(case.label)
    soft = (ct > 0) & (ct < 100) & (label == 0) & (pet_on_ct > 0)
    soft[int(0.4 * ct.shape[0]) :] = False
    return float(np.median(pet_on_ct[soft]))


def _same_clinical(a: dict, b: dict) -> bool:
    for key in HECKTOR2025_COLUMNS:
        va, vb = a[key], b[key]
        both_nan = isinstance(va, float) and isinstance(vb, float) and math.isnan(va)
        if not (va == vb or (both_nan and math.isnan(vb))):
            return False
    return True


def test_geometry(cases: list[PhantomCase]) -> None:
    for case in cases:
        ct, pet, label = case.ct, case.pet, case.label
        sx, sy, sz = ct.GetSpacing()
        assert sx == sy and 0.95 <= sx <= 1.2 and 2.9 <= sz <= 3.3
        px, py, pz = pet.GetSpacing()
        assert px == py and 3.5 <= px <= 5.5 and 2.9 <= pz <= 3.3
        assert ct.GetPixelID() == sitk.sitkInt16
        assert pet.GetPixelID() == sitk.sitkFloat32
        assert label.GetPixelID() == sitk.sitkUInt8
        # PET on its own grid, offset from the CT's by a few mm
        offset = np.subtract(pet.GetOrigin(), ct.GetOrigin())
        assert np.all(np.abs(offset) > 0.5) and np.all(np.abs(offset) < 15.0)
        assert pet.GetSize() != ct.GetSize()
        # label exactly on the CT grid
        assert label.GetSize() == ct.GetSize()
        assert label.GetSpacing() == ct.GetSpacing()
        assert label.GetOrigin() == ct.GetOrigin()
        assert label.GetDirection() == ct.GetDirection()
        assert set(np.unique(_arr(label))) <= {0, 1, 2}
        # the PET field of view covers most of the CT's
        ct_ext = np.multiply(ct.GetSize(), ct.GetSpacing())
        pet_ext = np.multiply(pet.GetSize(), pet.GetSpacing())
        assert np.all(pet_ext > 0.85 * ct_ext) and np.all(pet_ext <= ct_ext)
        # realistic origins (LPS mm)
        assert ct.GetOrigin()[0] < -50 and ct.GetOrigin()[1] < -50 and ct.GetOrigin()[2] < -150
        # HU and SUV ranges
        hu = _arr(ct)
        assert hu.min() <= -950 and hu.max() > 700
        assert _arr(pet).min() >= 0.0


def test_centres_change_the_scanner() -> None:
    a = make_case(1, center=0)
    b = make_case(1, center=3)
    assert a.ct.GetSpacing() != b.ct.GetSpacing()
    assert a.pet.GetSpacing() != b.pet.GetSpacing()
    assert a.center == CENTERS[0] and b.center == CENTERS[3]


def test_determinism(cases: list[PhantomCase]) -> None:
    seed, center = CASES[0]
    again = make_case(seed, center=center)
    first = cases[0]
    for attr in ("ct", "pet", "label"):
        assert np.array_equal(_arr(getattr(first, attr)), _arr(getattr(again, attr)))
        assert getattr(first, attr).GetOrigin() == getattr(again, attr).GetOrigin()
    assert first.lesions == again.lesions
    assert _same_clinical(first.clinical, again.clinical)
    other = make_case(seed + 100, center=center)
    assert not np.array_equal(_arr(first.ct), _arr(other.ct))
    assert not np.array_equal(_arr(first.label), _arr(other.label))


def test_lesions_match_the_label(cases: list[PhantomCase]) -> None:
    full = np.ones((3, 3, 3), bool)
    n_nodes_seen = set()
    for case in cases:
        label = _arr(case.label)
        gtvp = [les for les in case.lesions if les.label == 1]
        gtvn = [les for les in case.lesions if les.label == 2]
        assert len(gtvp) == 1 and 0 <= len(gtvn) <= 3
        assert all(isinstance(les, Lesion) for les in case.lesions)
        n_nodes_seen.add(len(gtvn))
        # one primary component, one component per node even with 26-connectivity,
        # and no node touching the tumour or another node
        assert ndimage.label(label == 1, full)[1] == 1
        assert ndimage.label(label == 2, full)[1] == len(gtvn)
        assert ndimage.label(label > 0, full)[1] == 1 + len(gtvn)
        for les in case.lesions:
            idx = case.ct.TransformPhysicalPointToIndex(les.center_mm)
            assert label[idx[2], idx[1], idx[0]] == les.label
            assert 5.0 <= les.radius_mm <= 25.0
        assert 8.0 <= gtvp[0].radius_mm <= 25.0 and 5.0 <= gtvp[0].suv_max <= 20.0
        for node in gtvn:
            assert 5.0 <= node.radius_mm <= 15.0 and 3.0 <= node.suv_max <= 12.0
        # tumour slightly denser than muscle on CT
        hu = _arr(case.ct)
        assert np.median(hu[label == 1]) > 35
    assert len(n_nodes_seen) > 1


def test_pet_is_hot_in_the_primary(cases: list[PhantomCase]) -> None:
    for case in cases:
        pet = _pet_on_ct(case)
        background = _neck_soft_tissue_median(case, pet)
        assert 0.3 < background < 1.5
        label = _arr(case.label)
        assert pet[label == 1].max() > 3.0 * background
        gtvp = next(les for les in case.lesions if les.label == 1)
        if not gtvp.necrotic:
            i, j, k = case.ct.TransformPhysicalPointToIndex(gtvp.center_mm)
            assert pet[k, j, i] > 2.5 * background


def test_empty_case_has_only_physiological_uptake(empty_case: PhantomCase) -> None:
    assert empty_case.lesions == []
    assert not _arr(empty_case.label).any()
    pet = _pet_on_ct(empty_case)
    background = _neck_soft_tissue_median(empty_case, pet)
    nz = pet.shape[0]
    brain = pet[int(0.75 * nz) :]
    assert np.percentile(brain[brain > 0], 99) > 4.0 > 3.0 * background
    # tonsils / salivary glands: uptake well above background below the brain
    assert pet[int(0.3 * nz) : int(0.65 * nz)].max() > 2.0
    assert list(empty_case.clinical) == HECKTOR2025_COLUMNS


def test_clinical_row(cases: list[PhantomCase]) -> None:
    for case in cases:
        row = case.clinical
        assert list(row) == HECKTOR2025_COLUMNS
        assert row["PatientID"] == case.case_id
        assert row["Gender"] in ("M", "F")
        assert row["Relapse"] in (0, 1) and row["RFS"] >= 1
        assert row["M-stage"] in ("M0", "M1", "Mx")
        for key in ("Tobacco Consumption", "Alcohol Consumption", "HPV Status"):
            assert math.isnan(row[key]) or row[key] in (0.0, 1.0)
        ps = row["Performance Status"]
        assert math.isnan(ps) or ps in (0.0, 1.0, 2.0, 3.0, 4.0)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(HecktorInputError):
        make_case(0, center=len(CENTERS))
    with pytest.raises(HecktorInputError):
        write_cohort(tmp_path / "a", 1, centers=0)
    with pytest.raises(HecktorInputError):
        write_cohort(tmp_path / "b", 0)


def test_write_cohort(tmp_path: Path) -> None:
    out = tmp_path / "cohort"
    calls: list[tuple[int, int]] = []
    result = write_cohort(
        out, 2, seed=3, centers=2, n_empty=1, progress=lambda i, n: calls.append((i, n))
    )
    assert result == out
    assert calls == [(1, 3), (2, 3), (3, 3)]
    ids = ["CHUM-001", "CHUS-001", "CHUM-002"]
    images = sorted(p.name for p in (out / "imagesTr").iterdir())
    assert images == sorted([f"{i}__CT.nii.gz" for i in ids] + [f"{i}__PT.nii.gz" for i in ids])
    labels = sorted(p.name for p in (out / "labelsTr").iterdir())
    assert labels == sorted(f"{i}.nii.gz" for i in ids)

    with open(out / "clinical.csv", newline="", encoding="utf-8") as fh:
        table = list(csv.reader(fh))
    assert table[0] == HECKTOR2025_COLUMNS
    assert len(table) - 1 == 3
    assert [r[0] for r in table[1:]] == ids
    assert all(cell != "nan" for r in table for cell in r)

    meta = json.loads((out / "phantom.json").read_text(encoding="utf-8"))
    assert (meta["seed"], meta["n_cases"], meta["centers"], meta["n_empty"]) == (3, 2, 2, 1)
    assert "version" in meta
    assert [c["id"] for c in meta["cases"]] == ids
    assert meta["cases"][2]["empty"] and meta["cases"][2]["lesions"] == []
    first = meta["cases"][0]
    assert first["lesions"][0]["label"] == 1 and len(first["lesions"][0]["center_mm"]) == 3

    # files round-trip; the empty case has an empty label on the CT grid
    ct = sitk.ReadImage(str(out / "imagesTr" / "CHUM-002__CT.nii.gz"))
    lab = sitk.ReadImage(str(out / "labelsTr" / "CHUM-002.nii.gz"))
    assert lab.GetSize() == ct.GetSize() and not _arr(lab).any()
    assert lab.GetPixelID() == sitk.sitkUInt8 and ct.GetPixelID() == sitk.sitkInt16
    # the recorded per-case seed rebuilds the same case
    rebuilt = make_case(first["seed"], center=0, case_id="CHUM-001")
    written = sitk.ReadImage(str(out / "labelsTr" / "CHUM-001.nii.gz"))
    assert np.array_equal(_arr(rebuilt.label), _arr(written))
    assert rebuilt.clinical["RFS"] == int(table[1][HECKTOR2025_COLUMNS.index("RFS")])

    # never overwrite a cohort
    with pytest.raises(HecktorInputError):
        write_cohort(out, 2, seed=3, centers=2, n_empty=1)
    with pytest.raises(HecktorInputError):
        write_cohort(out, 1, seed=9, centers=1)


def test_clinical_row_reads_one_patient_and_refuses_a_table_without_ids(tmp_path):
    from napari_hecktor.data.clinical import clinical_row

    table = tmp_path / "clinical.csv"
    table.write_text("PatientID,Age,HPV Status\nCHUM-001,61,1\nCHUS-002,70,\n")
    assert clinical_row(table, "CHUM-001") == {"PatientID": "CHUM-001", "Age": 61,
                                                "HPV Status": 1.0}
    assert clinical_row(table, "HGJ-404") == {}
    table.write_text("PatientID,Age\nCHUM-001,62\n")  # edited: the cache must not hide it
    os.utime(table, (time.time() + 5, time.time() + 5))
    assert clinical_row(table, "CHUM-001")["Age"] == 62
    (tmp_path / "noid.csv").write_text("Patient,Age\nCHUM-001,61\n")
    with pytest.raises(HecktorInputError, match="no PatientID column"):
        clinical_row(tmp_path / "noid.csv", "CHUM-001")
    with pytest.raises(HecktorInputError, match="not found"):
        clinical_row(tmp_path / "missing.csv", "CHUM-001")
