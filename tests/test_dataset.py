"""Discovery of HECKTOR 2021, 2022 and 2025 layouts, read-only."""

from __future__ import annotations

import shutil

import pytest
from conftest import digest

from napari_hecktor.errors import HecktorInputError
from napari_hecktor.io.case import load_case_files, open_path
from napari_hecktor.io.dataset import case_of_file, discover


def _layout_2022(root, small_case, ids=("CHUM-001", "CHUS-002")):
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i in ids:
        shutil.copy(small_case["ct"], root / "imagesTr" / f"{i}__CT.nii.gz")
        shutil.copy(small_case["pet"], root / "imagesTr" / f"{i}__PT.nii.gz")
        shutil.copy(small_case["label"], root / "labelsTr" / f"{i}.nii.gz")
    return root


def test_hecktor2022_layout(tmp_path, small_case):
    root = _layout_2022(tmp_path / "ds", small_case)
    before = digest(root)
    cases = discover(root)
    assert [c.case_id for c in cases] == ["CHUM-001", "CHUS-002"]
    assert all(c.layout == "hecktor2022" and c.pet and c.label for c in cases)
    case = load_case_files(cases[1])
    assert case.case_id == "CHUS-002" and case.label is not None
    assert digest(root) == before


def test_hecktor2025_layout(tmp_path, small_case):
    for i in ("MDA-010", "USZ-003"):
        d = tmp_path / "ds" / i
        d.mkdir(parents=True)
        shutil.copy(small_case["ct"], d / f"{i}__CT.nii.gz")
        shutil.copy(small_case["pet"], d / f"{i}__PT.nii.gz")
        shutil.copy(small_case["label"], d / f"{i}.nii.gz")
    cases = discover(tmp_path / "ds")
    assert [(c.case_id, c.layout) for c in cases] == [("MDA-010", "hecktor2025"),
                                                       ("USZ-003", "hecktor2025")]
    assert cases[0].label.name == "MDA-010.nii.gz"
    # a single patient folder is a dataset of one
    assert [c.case_id for c in discover(tmp_path / "ds" / "USZ-003")] == ["USZ-003"]


def test_hecktor2021_layout_reads_binary_gtvt_as_gtvp(tmp_path, small_case):
    import numpy as np

    d = tmp_path / "hecktor_nii"
    d.mkdir()
    shutil.copy(small_case["ct"], d / "CHGJ007_ct.nii.gz")
    shutil.copy(small_case["pet"], d / "CHGJ007_pt.nii.gz")
    shutil.copy(small_case["label"], d / "CHGJ007_gtvt.nii.gz")
    (files,) = discover(d)
    assert files.layout == "hecktor2021" and files.label_is_gtvt
    case = load_case_files(files)
    assert set(np.unique(case.label_array())) == {0, 1}


def test_opening_one_file_finds_its_partners(tmp_path, small_case):
    root = _layout_2022(tmp_path / "ds", small_case)
    pet = root / "imagesTr" / "CHUS-002__PT.nii.gz"
    files = case_of_file(pet)
    assert files.ct.name == "CHUS-002__CT.nii.gz"
    assert files.label == root / "labelsTr" / "CHUS-002.nii.gz"
    assert case_of_file(root / "labelsTr" / "CHUM-001.nii.gz").pet.name == "CHUM-001__PT.nii.gz"
    case, all_cases = open_path(root)
    assert case.case_id == "CHUM-001" and len(all_cases) == 2


def test_empty_and_unrecognised_folders_are_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(HecktorInputError, match="is empty"):
        discover(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("hello")
    with pytest.raises(HecktorInputError, match="no HECKTOR case found"):
        discover(tmp_path / "other")
