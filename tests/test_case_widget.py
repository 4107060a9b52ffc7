"""The Case dock widget in a real napari viewer (Xvfb): open, browse patients, autosave."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import digest, make_image

from napari_hecktor.display import labels_layer
from napari_hecktor.io.volumes import read_image

pytestmark = pytest.mark.gui

IDS = ("HN-A-001", "HN-A-002", "HN-B-003")


def _write_dataset(root: Path) -> Path:
    """A HECKTOR 2022 layout with three small cases; each has its own primary position."""
    rng = np.random.default_rng(0)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for k, case_id in enumerate(IDS):
        ct = rng.normal(40, 10, size=(20, 48, 40)).astype(np.int16)
        label = np.zeros(ct.shape, np.uint8)
        label[8:12, 10 + 8 * k:16 + 8 * k, 16:24] = 1
        pet = rng.uniform(0.5, 1.0, size=(20, 14, 12)).astype(np.float32)
        sitk.WriteImage(make_image(ct), str(root / "imagesTr" / f"{case_id}__CT.nii.gz"))
        sitk.WriteImage(make_image(pet, spacing=(4.0, 4.0, 3.0), origin=(-42.0, -37.0, -121.0)),
                        str(root / "imagesTr" / f"{case_id}__PT.nii.gz"))
        sitk.WriteImage(make_image(label), str(root / "labelsTr" / f"{case_id}.nii.gz"))
    return root


def _case_widget(viewer):
    _, widget = viewer.window.add_plugin_dock_widget("napari-hecktor", "Case")
    return widget


def _wait(qtbot, widget):
    qtbot.waitUntil(lambda: not widget.running, timeout=30_000)


def _shown_ids(viewer) -> set[str]:
    return {layer.metadata["hecktor"]["case_id"] for layer in viewer.layers
            if "hecktor" in layer.metadata}


def test_browse_a_dataset_and_autosave_the_outgoing_mask(
    make_napari_viewer, qtbot, tmp_path, monkeypatch
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = _write_dataset(tmp_path / "data")
    before = digest(root)
    viewer = make_napari_viewer()
    widget = _case_widget(viewer)
    widget.open_dataset(root)
    _wait(qtbot, widget)
    assert list(widget.patient.choices) == list(IDS)
    assert _shown_ids(viewer) == {IDS[0]}
    assert len(viewer.layers) == 3  # CT, PET, ground truth
    assert not widget.previous.enabled and widget.next.enabled
    truth = next(la for la in viewer.layers if la.metadata["hecktor"]["role"] == "label")
    assert truth.data[9, 11, 20] == 1 and truth.data[9, 19, 20] == 0
    # a corrected prediction of the first patient ...
    case = viewer.layers[0].metadata["hecktor"]["case"]
    edited = np.zeros(case.geometry.shape, np.uint8)
    edited[5:7, 5:7, 5:7] = 2
    data, kwargs, _ = labels_layer(case, edited, name=f"{IDS[0]} prediction", role="prediction")
    viewer.add_labels(data, **kwargs)
    # ... is autosaved when the next patient replaces it
    widget.next.changed.emit(True)
    _wait(qtbot, widget)
    assert widget.patient.value == IDS[1] and _shown_ids(viewer) == {IDS[1]}
    assert widget.previous.enabled and widget.next.enabled
    saved = sorted((tmp_path / "cache" / "napari-hecktor" / "autosave").rglob("*.nii.gz"))
    assert len(saved) == 1 and IDS[0] in saved[0].name
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_image(saved[0])), edited)
    # choosing a patient in the list opens it; the last one has no "next"
    widget.patient.value = IDS[2]
    _wait(qtbot, widget)
    assert _shown_ids(viewer) == {IDS[2]} and not widget.next.enabled
    truth = next(la for la in viewer.layers if la.metadata["hecktor"]["role"] == "label")
    assert truth.data[9, 27, 20] == 1
    assert digest(root) == before  # browsing never writes into the dataset


def test_open_a_file_pair_and_refuse_bad_input_without_changing_the_view(
    make_napari_viewer, qtbot, small_case, tmp_path
):
    viewer = make_napari_viewer()
    widget = _case_widget(viewer)
    widget.ct_file.value = small_case["ct"]
    widget.open_files()  # no PET chosen yet
    assert widget.status.value.startswith("error:") and len(viewer.layers) == 0
    widget.pet_file.value = small_case["pet"]
    widget.label_file.value = small_case["label"]
    widget.open_files()
    _wait(qtbot, widget)
    roles = [la.metadata["hecktor"]["role"] for la in viewer.layers]
    assert roles == ["ct", "pet", "label"]
    # a truncated PET: one clear message, the open case stays as it was
    broken = tmp_path / "broken__PT.nii.gz"
    broken.write_bytes(small_case["pet"].read_bytes()[:200])
    widget.pet_file.value = broken
    widget.open_files()
    _wait(qtbot, widget)
    assert widget.status.value.startswith("error:") and "broken__PT" in widget.status.value
    assert [la.metadata["hecktor"]["role"] for la in viewer.layers] == roles


def test_dataset_opened_from_the_file_menu_fills_the_patient_list(
    make_napari_viewer, qtbot, tmp_path
):
    root = _write_dataset(tmp_path / "data")
    viewer = make_napari_viewer()
    viewer.open(str(root), plugin="napari-hecktor")
    widget = _case_widget(viewer)
    assert list(widget.patient.choices) == list(IDS) and widget.patient.value == IDS[0]
    widget.step(+1)
    _wait(qtbot, widget)
    assert _shown_ids(viewer) == {IDS[1]}


def test_dicom_study_opens_and_saves_dicom_seg_and_rtstruct_from_the_widgets(
    make_napari_viewer, qtbot, tmp_path
):
    """Case widget opens a DICOM study; the Save widget writes SEG and RTSTRUCT that
    dciodvfy accepts and that read back to the mask."""
    from test_export import GRIDS, _dciodvfy, _dice, _labels, _write_study

    from napari_hecktor.io.export import read_dicom_seg, read_rtstruct

    rows, cols, spacing = GRIDS["square"]
    study = tmp_path / "study"
    _write_study(study, rows, cols, spacing)
    before = digest(study)
    viewer = make_napari_viewer()
    widget = _case_widget(viewer)
    widget.open_dataset(study)
    _wait(qtbot, widget)
    assert [la.metadata["hecktor"]["role"] for la in viewer.layers] == ["ct", "pet"]
    case = viewer.layers[0].metadata["hecktor"]["case"]
    assert case.layout == "dicom"
    mask = _labels(rows, cols)
    data, kwargs, _ = labels_layer(case, mask, name="corrected", role="prediction")
    viewer.add_labels(data, **kwargs)
    _, save = viewer.window.add_plugin_dock_widget("napari-hecktor", "Save")
    save.target.value = "corrected"
    save.folder.value = tmp_path / "out"
    (tmp_path / "out").mkdir()
    assert save.seg.enabled and save.rtstruct.enabled
    save.seg.changed.emit(True)
    save.rtstruct.changed.emit(True)
    (seg,) = (tmp_path / "out").glob("*_seg.dcm")
    (rtstruct,) = (tmp_path / "out").glob("*_rtstruct.dcm")
    assert (_dciodvfy(seg)[0], _dciodvfy(rtstruct)[0]) == ([], [])
    np.testing.assert_array_equal(read_dicom_seg(seg, study), mask)
    back = read_rtstruct(rtstruct, case)
    for value in (1, 2):
        assert _dice(back == value, mask == value) >= 0.95
    assert digest(study) == before
