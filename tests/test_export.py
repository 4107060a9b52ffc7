"""DICOM-SEG / RTSTRUCT export, results files and the autosaver.

Peers that check our files independently: dciodvfy (dicom3tools) validates the DICOM
objects, highdicom and rt-utils read them back, plastimatch rasterises the RTSTRUCT.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_factory import write_series

from napari_hecktor.errors import HecktorInputError
from napari_hecktor.io.autosave import Autosaver
from napari_hecktor.io.case import Case, load_dicom_case
from napari_hecktor.io.dicom import find_series, read_series
from napari_hecktor.io.export import (
    read_dicom_seg,
    read_rtstruct,
    resolve_ct,
    write_dicom_seg,
    write_results_csv,
    write_results_json,
    write_rtstruct,
)
from napari_hecktor.io.geometry import Geometry

NZ = 12
GRIDS = {
    # name: (rows, columns, spacing x, y, z)
    "square": (32, 32, (0.9, 0.9, 3.0)),
    "nonsquare": (32, 40, (1.2, 0.8, 3.0)),  # rows != columns and x spacing != y spacing
}
ORIGIN = (-20.5, 13.25, -101.5)


def _labels(rows: int, cols: int) -> np.ndarray:
    """GTVp and GTVn blobs on different slices, asymmetric in z, y and x (flips show)."""
    z, y, x = np.mgrid[:NZ, :rows, :cols]
    labels = np.zeros((NZ, rows, cols), dtype=np.uint8)
    gtvp = ((y - 11) / 7.0) ** 2 + ((x - 12) / 9.0) ** 2 + ((z - 3.5) / 2.2) ** 2 < 1
    labels[gtvp] = 1
    labels[3, 10:13, 11:14] = 0  # a hole (necrotic core) on one slice
    labels[2, 4:6, 25] = 1  # a thin, diagonal-touching spur
    labels[2, 6, 26] = 1
    gtvn = ((y - 24) / 4.0) ** 2 + ((x - cols + 8) / 3.0) ** 2 + ((z - 8.2) / 1.6) ** 2 < 1
    labels[gtvn] = 2
    labels[9, 20, 5] = 2  # a single-voxel node
    return labels


def _write_study(folder: Path, rows: int, cols: int, spacing) -> list[Path]:
    """CT (shuffled files, slice k holds HU 10 * k in a corner) plus a PET series."""
    rng = np.random.default_rng(7)
    ct = rng.normal(40, 10, size=(NZ, rows, cols)).round()
    ct[:, 0, 0] = 10 * np.arange(NZ)
    paths = write_series(
        folder, ct, modality="CT", spacing_xyz=spacing, origin_xyz=ORIGIN, shuffle_seed=11
    )
    write_series(
        folder,
        rng.uniform(0.5, 5.0, size=(6, 12, 12)),
        modality="PT",
        spacing_xyz=(3.0, 3.0, 6.0),
        origin_xyz=(ORIGIN[0] - 2, ORIGIN[1] - 2, ORIGIN[2]),
        shuffle_seed=12,
        series_number=2,
    )
    return paths


@pytest.fixture(scope="module", params=sorted(GRIDS))
def study(request, tmp_path_factory) -> dict:
    """A DICOM folder (CT + PET), the CT files in z order and labels on the CT grid."""
    rows, cols, spacing = GRIDS[request.param]
    folder = tmp_path_factory.mktemp(f"dicom_{request.param}")
    paths = _write_study(folder, rows, cols, spacing)
    return {
        "name": request.param,
        "folder": folder,
        "paths": paths,
        "uids": [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths],
        "labels": _labels(rows, cols),
    }


@pytest.fixture
def square(tmp_path) -> dict:
    """A fresh square study (for tests that write next to the inputs)."""
    rows, cols, spacing = GRIDS["square"]
    paths = _write_study(tmp_path / "dicom", rows, cols, spacing)
    return {"folder": tmp_path / "dicom", "paths": paths, "labels": _labels(rows, cols)}


def _folder_hash(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def _dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """(error lines, warning lines) of dciodvfy; fail the test if it is not installed."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.fail(
            "dciodvfy (dicom3tools) is not installed: `apt-get install -y dicom3tools`; "
            "the DICOM validation cannot run."
        )
    result = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    lines = (result.stdout + result.stderr).splitlines()
    warnings = [line for line in lines if "Warning" in line]
    if warnings:
        print(f"dciodvfy warnings for {path.name}:", *warnings, sep="\n  ")
    return [line for line in lines if "Error" in line], warnings


def _plastimatch_masks(rtss: Path, ct_folder: Path, out: Path, *, xor: bool) -> dict:
    exe = shutil.which("plastimatch")
    if exe is None:
        pytest.fail("plastimatch is not installed: the independent RTSTRUCT check cannot run.")
    command = [exe, "convert", "--input", str(rtss), "--referenced-ct", str(ct_folder)]
    command += ["--output-prefix", str(out), "--prefix-format", "nii.gz"]
    if xor:
        command.append("--xor-contours")
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return {name: sitk.ReadImage(str(out / f"{name}.nii.gz")) for name in ("GTVp", "GTVn")}


# --------------------------------------------------------------------------- the CT grid


def test_labels_z_order_is_the_files_slice_order(study):
    """Our (z, y, x) grid: slice k = the k-th file along the normal, whatever the names."""
    series = [s for s in find_series(study["folder"]) if s.modality == "CT"][0]
    assert list(series.files) == study["paths"]
    ct = read_series(series)
    array = sitk.GetArrayFromImage(ct)
    assert array[:, 0, 0].tolist() == [10 * k for k in range(NZ)]
    first = pydicom.dcmread(study["paths"][0], stop_before_pixels=True)
    assert ct.GetOrigin() == pytest.approx([float(v) for v in first.ImagePositionPatient])
    reference = resolve_ct(study["folder"])
    assert reference.shape == study["labels"].shape
    assert reference.sop_instance_uids == study["uids"]
    assert Geometry.of(ct).matches(reference.geometry)


# --------------------------------------------------------------------------- DICOM-SEG


def test_dicom_seg_is_valid_and_lands_on_the_right_slices(study, tmp_path):
    import highdicom as hd

    labels = study["labels"]
    before = _folder_hash(study["folder"])
    out = write_dicom_seg(labels, study["folder"], tmp_path / "seg.dcm", model_label="fold0")
    assert _folder_hash(study["folder"]) == before

    errors, _ = _dciodvfy(out)
    assert not errors, "\n".join(errors)

    seg = hd.seg.segread(str(out))
    assert seg.SegmentationType == "BINARY"
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["GTVp", "GTVn"]
    assert [s.SegmentAlgorithmType for s in seg.SegmentSequence] == ["AUTOMATIC"] * 2
    types = [s.SegmentedPropertyTypeCodeSequence[0].CodeValue for s in seg.SegmentSequence]
    assert types == ["372087000", "14799000"]  # Neoplasm, Primary / Secondary (SCT)
    categories = {s.SegmentedPropertyCategoryCodeSequence[0].CodeValue for s in seg.SegmentSequence}
    assert categories == {"49755003"}  # Morphologically abnormal structure
    assert seg.SegmentSequence[1].AnatomicRegionSequence[0].CodeValue == "59441001"  # node

    # per slice, through the SOPInstanceUIDs of the files in z order
    pixels = seg.get_pixels_by_source_instance(study["uids"], segment_numbers=[1, 2])
    assert pixels.shape == (*labels.shape, 2)
    np.testing.assert_array_equal(pixels[..., 0] > 0, labels == 1)
    np.testing.assert_array_equal(pixels[..., 1] > 0, labels == 2)
    # each frame sits at its source slice's position, and only non-empty frames are stored
    positions = {
        uid: [float(v) for v in pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient]
        for uid, p in zip(study["uids"], study["paths"], strict=True)
    }
    stored = []
    for frame in seg.PerFrameFunctionalGroupsSequence:
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        ipp = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        assert ipp == pytest.approx(positions[uid])
        number = frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        stored.append((study["uids"].index(uid), number))
    expected = {(k, v) for v in (1, 2) for k in range(NZ) if (labels[k] == v).any()}
    assert set(stored) == expected and len(stored) == len(expected)

    np.testing.assert_array_equal(read_dicom_seg(out, study["folder"]), labels)


def test_dicom_seg_single_label_and_corrected(square, tmp_path):
    import highdicom as hd

    labels = np.where(square["labels"] == 2, 2, 0).astype(np.uint8)
    out = write_dicom_seg(labels, square["folder"], tmp_path / "seg.dcm", corrected=True)
    errors, _ = _dciodvfy(out)
    assert not errors, "\n".join(errors)
    seg = hd.seg.segread(str(out))
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["GTVn"]
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "SEMIAUTOMATIC"
    np.testing.assert_array_equal(read_dicom_seg(out, square["folder"]), labels)


# --------------------------------------------------------------------------- RTSTRUCT


def test_rtstruct_round_trips_and_leaves_the_inputs_alone(study, tmp_path):
    labels = study["labels"]
    folder = study["folder"]
    assert {s.modality for s in find_series(folder)} >= {"CT", "PT"}
    before = _folder_hash(folder)
    out = write_rtstruct(labels, folder, tmp_path / "rtss.dcm")
    assert _folder_hash(folder) == before

    errors, _ = _dciodvfy(out)
    assert not errors, "\n".join(errors)
    ds = pydicom.dcmread(out)
    assert [r.ROIName for r in ds.StructureSetROISequence] == ["GTVp", "GTVn"]
    assert {r.ROIGenerationAlgorithm for r in ds.StructureSetROISequence} == {"AUTOMATIC"}
    assert [list(r.ROIDisplayColor) for r in ds.ROIContourSequence] == [[255, 0, 0], [0, 0, 255]]
    assert {o.RTROIInterpretedType for o in ds.RTROIObservationsSequence} == {"GTV"}
    for roi, value in zip(ds.ROIContourSequence, (1, 2), strict=True):
        referenced = {
            c.ContourImageSequence[0].ReferencedSOPInstanceUID for c in roi.ContourSequence
        }
        slices = {study["uids"][k] for k in range(NZ) if (labels[k] == value).any()}
        assert referenced == slices

    # our reader (rt-utils loads, pixel-centre filling)
    back = read_rtstruct(out, folder)
    dice_ours = {name: _dice(back == v, labels == v) for v, name in ((1, "GTVp"), (2, "GTVn"))}
    assert min(dice_ours.values()) >= 0.95, dice_ours
    np.testing.assert_array_equal(back, labels)

    # plastimatch, independently: with --xor-contours (holes as holes) exact; by default
    # it ORs the contours of a slice, which fills the hole
    ct = read_series([s for s in find_series(folder) if s.modality == "CT"][0])
    results = {}
    for xor in (True, False):
        masks = _plastimatch_masks(out, folder, tmp_path / f"plm_{xor}", xor=xor)
        for value, name in ((1, "GTVp"), (2, "GTVn")):
            assert Geometry.of(masks[name]).matches(Geometry.of(ct), tol_mm=1e-3)
            array = sitk.GetArrayFromImage(masks[name]) > 0
            results[(name, xor)] = _dice(array, labels == value)
            if xor:
                np.testing.assert_array_equal(array, labels == value)
    print(f"{study['name']}: Dice ours {dice_ours}, plastimatch {results}")
    assert min(results.values()) >= 0.95, results


def test_rtstruct_rt_utils_own_reader(square, tmp_path):
    """rt-utils' get_roi_mask_by_name gives (rows, columns, slices sorted along the normal).

    Square images only: for Rows != Columns its reader allocates (Columns, Rows) slices.
    """
    from rt_utils import RTStructBuilder

    labels = square["labels"]
    out = write_rtstruct(labels, square["folder"], tmp_path / "rtss.dcm", corrected=True)
    assert pydicom.dcmread(out).StructureSetROISequence[0].ROIGenerationAlgorithm == (
        "SEMIAUTOMATIC"
    )
    ct_only = tmp_path / "ct_only"
    ct_only.mkdir()
    for path in square["paths"]:
        shutil.copy(path, ct_only / path.name)
    rtstruct = RTStructBuilder.create_from(str(ct_only), str(out))
    for value, name in ((1, "GTVp"), (2, "GTVn")):
        mask = rtstruct.get_roi_mask_by_name(name)  # (rows, columns, slices sorted by z)
        assert mask.shape == (labels.shape[1], labels.shape[2], NZ)
        dice = _dice(mask.transpose(2, 0, 1), labels == value)
        assert dice >= 0.95, (name, dice)


# --------------------------------------------------------------------------- guards


def test_export_needs_a_dicom_case(square, tmp_path):
    image = read_series([s for s in find_series(square["folder"]) if s.modality == "CT"][0])
    case = Case(case_id="X", ct=image, sources={"ct": str(tmp_path / "X__CT.nii.gz")})
    for writer in (write_dicom_seg, write_rtstruct):
        with pytest.raises(HecktorInputError, match="needs a case loaded from DICOM"):
            writer(square["labels"], case, tmp_path / "out.dcm")
    assert not (tmp_path / "out.dcm").exists()


def test_export_from_a_dicom_case(square, tmp_path):
    case = load_dicom_case(square["folder"])
    out = write_rtstruct(square["labels"], case, tmp_path / "rtss.dcm")
    np.testing.assert_array_equal(read_rtstruct(out, case), square["labels"])
    label_image = Geometry.of(case.ct).image_from_array(square["labels"])
    out = write_dicom_seg(label_image, case, tmp_path / "seg.dcm")
    np.testing.assert_array_equal(read_dicom_seg(out, square["folder"]), square["labels"])
    other = Case(case_id="Y", ct=sitk.Image(4, 4, 4, sitk.sitkInt16), layout="dicom",
                 sources={"ct": str(square["folder"])})  # fmt: skip
    with pytest.raises(HecktorInputError, match="not the CT of the loaded case"):
        write_dicom_seg(square["labels"], other, tmp_path / "seg2.dcm")


@pytest.mark.parametrize("writer", [write_dicom_seg, write_rtstruct])
def test_bad_masks_are_refused(writer, square, tmp_path):
    labels = square["labels"]
    cases = [
        (np.zeros_like(labels), "nothing to export"),
        (labels[:, :, :-1], "shape"),
        (labels[::-1].transpose(0, 2, 1)[:-1], "shape"),
        (np.where(labels == 1, 3, labels).astype(np.uint8), "outside 0"),
        (labels.astype(np.float32), "integer"),
    ]
    for bad, message in cases:
        with pytest.raises(HecktorInputError, match=message):
            writer(bad, square["folder"], tmp_path / "out.dcm")
    if writer is write_rtstruct:
        with pytest.raises(HecktorInputError, match="cannot add ROI"):
            writer(labels, square["folder"], tmp_path / "out.dcm", colors=((300, 0, 0), (0, 0, 9)))
    assert not list(tmp_path.glob("*.dcm")) and not list(tmp_path.glob(".hecktor-*"))


@pytest.mark.parametrize("writer", [write_dicom_seg, write_rtstruct])
def test_outputs_are_never_overwritten_by_accident(writer, square, tmp_path):
    folder, labels = square["folder"], square["labels"]
    existing = tmp_path / "out.dcm"
    existing.write_bytes(b"user data")
    with pytest.raises(HecktorInputError, match="already exists"):
        writer(labels, folder, existing)
    assert existing.read_bytes() == b"user data"
    writer(labels, folder, existing, overwrite=True)
    assert pydicom.dcmread(existing).Modality in ("SEG", "RTSTRUCT")

    ct_file = square["paths"][3]
    before = ct_file.read_bytes()
    with pytest.raises(HecktorInputError, match="input"):
        writer(labels, folder, ct_file, overwrite=True)
    assert ct_file.read_bytes() == before
    other = folder / "notes.txt"  # any existing file in the input folder is protected
    other.write_text("keep")
    with pytest.raises(HecktorInputError, match="input folder"):
        writer(labels, folder, other, overwrite=True)
    assert other.read_text() == "keep"

    # a new file next to the inputs is fine, and the folder still loads as before
    beside = writer(labels, folder, folder / "export.dcm")
    assert beside.exists()
    assert not [p for p in folder.iterdir() if p.name.startswith(".hecktor-")]
    assert resolve_ct(folder).sop_instance_uids == resolve_ct(square["paths"][0]).sop_instance_uids


def test_read_rtstruct_of_another_series_is_refused(square, tmp_path):
    out = write_rtstruct(square["labels"], square["folder"], tmp_path / "rtss.dcm")
    other = tmp_path / "other"
    rows, cols, spacing = GRIDS["square"]
    write_series(other, np.zeros((NZ, rows, cols)), modality="CT", spacing_xyz=spacing,
                 origin_xyz=ORIGIN)  # fmt: skip
    with pytest.raises(HecktorInputError, match="does not belong"):
        read_rtstruct(out, other)
    with pytest.raises(HecktorInputError, match="no ROI named"):
        read_rtstruct(out, square["folder"], names=("Tumour", "Nodes"))


# --------------------------------------------------------------------------- results


def test_results_json_and_csv(tmp_path):
    data = {"case": "CHUM-001", "dice": np.float32(0.8), "hd95": math.nan, "n": np.int64(3),
            "volumes_ml": np.array([1.5, np.inf]), "path": tmp_path}  # fmt: skip
    out = write_results_json(data, tmp_path / "r.json")
    text = out.read_text()
    assert "NaN" not in text and "Infinity" not in text
    loaded = json.loads(text)
    assert loaded["hd95"] is None and loaded["volumes_ml"] == [1.5, None]
    assert loaded["n"] == 3 and loaded["dice"] == pytest.approx(0.8)
    with pytest.raises(HecktorInputError, match="already exists"):
        write_results_json({"a": 1}, out)
    write_results_json({"a": 1}, out, overwrite=True)
    assert json.loads(out.read_text()) == {"a": 1}

    rows = [{"case": "A", "dice": 0.5, "hd95": math.nan}, {"case": "B", "extra": [1, 2]}]
    csv_path = write_results_csv(rows, tmp_path / "r.csv")
    lines = csv_path.read_text().splitlines()
    assert lines[0] == "case,dice,hd95,extra"
    assert lines[1] == "A,0.5,," and lines[2] == 'B,,,"[1, 2]"'
    write_results_csv({"case": "C"}, tmp_path / "one.csv")
    assert (tmp_path / "one.csv").read_text().splitlines() == ["case", "C"]

    source = tmp_path / "CHUM-001__CT.nii.gz"
    source.write_bytes(b"input")
    case = Case(case_id="CHUM-001", ct=sitk.Image(2, 2, 2, sitk.sitkInt16),
                sources={"ct": str(source)})  # fmt: skip
    for write in (write_results_csv, write_results_json):
        with pytest.raises(HecktorInputError, match="input file"):
            write({"a": 1}, source, protected=case, overwrite=True)
    assert source.read_bytes() == b"input"
    assert not list(tmp_path.glob(".hecktor-*"))


# --------------------------------------------------------------------------- autosave


@pytest.fixture
def ct_geometry() -> Geometry:
    return Geometry(size=(20, 16, 6), spacing=(0.9, 1.1, 3.0), origin=(-10.0, 5.0, -60.0),
                    direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))  # fmt: skip


def test_autosaver_versions_on_the_ct_grid(ct_geometry, tmp_path):
    saver = Autosaver("CHUM 001/a", ct_geometry, tmp_path / "autosave", keep=3)
    assert saver.latest() is None and saver.restore() is None
    labels = np.zeros(ct_geometry.shape, dtype=np.uint8)
    labels[2, 3:6, 4:9] = 1
    first = saver.save(labels)
    assert first.name.startswith("CHUM_001_a_") and first.name.endswith(".nii.gz")
    image = sitk.ReadImage(str(first))
    assert Geometry.of(image).matches(ct_geometry, tol_mm=1e-6)
    assert image.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), labels)

    assert saver.save(labels.copy()) == first  # unchanged: not saved again
    assert saver.versions() == [first]

    paths = []
    for k in range(5):
        labels[4, k, 0] = 2
        paths.append(saver.save(labels))
    assert saver.versions() == paths[-3:]  # rotation keeps 3, oldest removed
    assert saver.latest() == paths[-1]
    np.testing.assert_array_equal(saver.restore(), labels)
    assert not list((tmp_path / "autosave").glob(".hecktor-*"))

    # a new autosaver (the viewer was restarted) restores the last version, and saving the
    # restored labels does not add a version
    again = Autosaver("CHUM 001/a", ct_geometry, tmp_path / "autosave", keep=3)
    restored = again.restore()
    np.testing.assert_array_equal(restored, labels)
    assert again.save(restored) == paths[-1]
    # versions of another case in the same folder are not touched
    other = Autosaver("CHUM 001", ct_geometry, tmp_path / "autosave", keep=1)
    other.save(labels)
    other.save(np.zeros_like(labels))
    assert len(other.versions()) == 1 and again.versions() == paths[-3:]


def test_autosaver_guards(ct_geometry, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    saver = Autosaver("P1", ct_geometry)
    assert saver.folder == (tmp_path / "cache" / "napari-hecktor" / "autosave" / "P1").resolve()
    with pytest.raises(HecktorInputError, match="shape"):
        saver.save(np.zeros((2, 2, 2), dtype=np.uint8))
    with pytest.raises(HecktorInputError, match="outside"):
        saver.save(np.full(ct_geometry.shape, 300, dtype=np.int32))
    path = saver.save(np.ones(ct_geometry.shape, dtype=np.int32))  # napari int labels
    assert sitk.ReadImage(str(path)).GetPixelID() == sitk.sitkUInt8

    inputs = tmp_path / "case"
    inputs.mkdir()
    ct = inputs / "P1__CT.nii.gz"
    ct.write_bytes(b"x")
    sources = {"ct": str(ct), "pet": str(inputs / "P1__PT.nii.gz")}
    for folder in (inputs, inputs / "autosave"):
        with pytest.raises(HecktorInputError, match="inside the input folder"):
            Autosaver("P1", ct_geometry, folder, sources=sources)
    dicom_case = Case(case_id="P1", ct=sitk.Image(2, 2, 2, sitk.sitkInt16), layout="dicom",
                      sources={"ct": str(inputs), "pet": str(inputs)})  # fmt: skip
    with pytest.raises(HecktorInputError, match="inside the input folder"):
        Autosaver("P1", ct_geometry, inputs / "sub", sources=dicom_case)
    beside = Autosaver("P1", ct_geometry, tmp_path / "out" / "autosave", sources=dicom_case)
    assert beside.save(np.zeros(ct_geometry.shape, dtype=np.uint8)).exists()

    wrong = Geometry(size=(20, 16, 6), spacing=(1.0, 1.0, 3.0), origin=(0.0, 0.0, 0.0),
                     direction=ct_geometry.direction)  # fmt: skip
    with pytest.raises(HecktorInputError, match="not on this case's CT grid"):
        Autosaver("P1", wrong).restore()
