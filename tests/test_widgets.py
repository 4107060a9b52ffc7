"""The dock widgets in a real napari viewer (Xvfb): segment -> CRF -> correct -> save."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from qtpy.QtCore import QTimer

from napari_hecktor.io.geometry import Geometry
from napari_hecktor.io.volumes import read_image
from napari_hecktor.models.card import ModelCard, save_model
from napari_hecktor.models.registry import TINY_CONFIGS, build_model
from napari_hecktor.segment.preprocess import make_recipe

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    torch.manual_seed(0)
    card = ModelCard(
        name="tiny-widget-test",
        architecture="mmpl",
        config=TINY_CONFIGS["mmpl"],
        preprocessing=make_recipe("pet_guided_roi", spacing_mm=3.0, roi_mm=[144, 144, 144],
                                  z_offset_mm=-60.0, interpolator="linear"),
        inference={"roi_size": [32, 32, 32], "overlap": 0.5, "thresholds": [0.5, 0.5],
                   "min_component_voxels": 5},
    )
    folder = tmp_path_factory.mktemp("model") / "tiny"
    return save_model(folder, build_model(card.architecture, card.config).eval(), card)


class Heartbeat:
    """A 10 ms QTimer on the GUI thread; the longest gap between ticks is the worst stall."""

    def __init__(self):
        self.last = time.perf_counter()
        self.gaps: list[tuple[float, float]] = []
        self.timer = QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(self._tick)
        self.timer.start()

    def _tick(self):
        now = time.perf_counter()
        self.gaps.append((now, now - self.last))
        self.last = now

    def stop(self, until: float) -> float:
        """The worst stall of the job itself (up to ``until``: its result arriving)."""
        self.timer.stop()
        return max((gap for end, gap in self.gaps if end <= until), default=0.0)


#: A stall this long means work on the GUI thread; scheduling noise on a busy 2-core
#: machine stays well below it (it reached 750 ms once under foreign load).
STALL_BOUND_S = 1.0


@pytest.fixture
def viewer_with_case(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-hecktor", "synthetic_case")
    return viewer


def _segment(viewer, qtbot, model, **settings):
    _, widget = viewer.window.add_plugin_dock_widget("napari-hecktor", "Segment")
    qtbot.waitUntil(lambda: not widget.warming.is_alive(), timeout=120_000)
    widget.models.value = []
    widget.folder.value = str(model)
    for name, value in settings.items():
        getattr(widget, name).value = value
    return widget


def test_segment_crf_correct_save(viewer_with_case, qtbot, tiny_model, tmp_path):
    viewer = viewer_with_case
    widget = _segment(viewer, qtbot, tiny_model)
    beat = Heartbeat()
    widget.run()
    qtbot.waitUntil(lambda: not widget.job.running, timeout=120_000)
    worst_stall = beat.stop(until=widget.job.returned_at)
    ct = viewer.layers["SAMPLE-001 CT"]
    pred = viewer.layers["SAMPLE-001 prediction"]
    # the maps are layers only on demand (each new layer stalls the GUI ~0.2 s)
    assert "SAMPLE-001 probability" not in viewer.layers
    widget.maps.value = True
    prob = viewer.layers["SAMPLE-001 probability"]
    unc = viewer.layers["SAMPLE-001 uncertainty"]
    probabilities = pred.metadata["hecktor"]["probabilities"]
    np.testing.assert_array_equal(prob.data, probabilities.max(axis=0))
    np.testing.assert_array_equal(unc.data, pred.metadata["hecktor"]["uncertainty"])
    for layer in (pred, prob, unc):
        assert layer.data.shape == ct.data.shape
        np.testing.assert_allclose(layer.scale, ct.scale)
        np.testing.assert_allclose(layer.translate, ct.translate)
    assert widget.used.value.startswith("cpu")
    # the job runs off the GUI thread (run on it, the stall is the whole job, seconds); the
    # 100 ms target itself is measured by benchmarks/bench_gui.py, not by a timed test
    assert worst_stall < STALL_BOUND_S, f"GUI thread stalled {worst_stall * 1000:.0f} ms"

    # a second run with other thresholds writes into the same layer: one Ctrl+Z undoes it
    first = np.array(pred.data)
    assert first.any(), "an untrained net still marks something at 0.5"
    widget.threshold_p.value = 0.95
    widget.threshold_n.value = 0.95
    widget.run()
    qtbot.waitUntil(lambda: not widget.job.running, timeout=120_000)
    assert not np.array_equal(pred.data, first)
    # the shown maps follow the new run (in the same layers); unticking removes them
    assert [la.name for la in viewer.layers if "probability" in la.name] == [prob.name]
    assert pred.metadata["hecktor"]["probabilities"] is not probabilities
    np.testing.assert_array_equal(prob.data,
                                  pred.metadata["hecktor"]["probabilities"].max(axis=0))
    widget.maps.value = False
    assert "SAMPLE-001 probability" not in viewer.layers
    assert "SAMPLE-001 uncertainty" not in viewer.layers
    pred.undo()
    np.testing.assert_array_equal(pred.data, first)

    # give the mask two known lesions: a "tumour" and a spurious island (false positive)
    with pred.block_history():
        pred.data_setitem(np.nonzero(np.asarray(pred.data) > 0), 0)
    truth = np.asarray(viewer.layers["SAMPLE-001 GTV"].data)
    with pred.block_history():
        pred.data_setitem(np.nonzero(truth == 1), 1)
        island = np.zeros(truth.shape, bool)
        island[5:8, 10:14, 10:14] = True
        pred.data_setitem(np.nonzero(island), 2)

    # CRF: run, see the change layer, accept (one undo step)
    _, crf = viewer.window.add_plugin_dock_widget("napari-hecktor", "CRF")
    before_crf = np.array(pred.data)
    crf.run()
    qtbot.waitUntil(lambda: not crf.job.running, timeout=120_000)
    assert "SAMPLE-001 CRF change" in viewer.layers
    crf.accept_result()
    assert "SAMPLE-001 CRF change" not in viewer.layers
    pred.undo()
    np.testing.assert_array_equal(pred.data, before_crf)

    # correct: the lesion table lists both lesions; delete the island
    _, correct = viewer.window.add_plugin_dock_widget("napari-hecktor", "Correct")
    correct.target.value = pred.name
    correct.refresh()
    labels_in_table = [row[0] for row in correct.table.value["data"]]
    assert sorted(labels_in_table) == ["GTVn", "GTVp"]
    row = labels_in_table.index("GTVn")
    correct.table.native.selectRow(row)
    correct.edit_selected(None)
    assert not np.any(np.asarray(pred.data)[island])
    correct.refresh()
    assert [r[0] for r in correct.table.value["data"]] == ["GTVp"]

    # paint one sphere voxel, then undo it
    before_paint = np.array(pred.data)
    correct.paint_label.value = "GTVn"
    correct.radius.value = 0.5
    correct.paint_sphere((2, 2, 2))
    assert pred.data[2, 2, 2] == 2
    pred.undo()
    np.testing.assert_array_equal(pred.data, before_paint)

    # ground-truth comparison: the corrected mask equals the GTVp truth
    correct.compare.value = True
    assert "SAMPLE-001 vs ground truth" in viewer.layers
    assert "Dice GTVp 1.000" in correct.metrics.value

    # save on the CT grid
    out = tmp_path / "corrected.nii.gz"
    pred.save(str(out), plugin="napari-hecktor")
    saved = read_image(out)
    assert Geometry.of(saved).matches(Geometry.from_dict(ct.metadata["hecktor"]["geometry"]))


def test_cancel_stops_segmentation_within_two_seconds(viewer_with_case, qtbot, tiny_model):
    viewer = viewer_with_case
    widget = _segment(viewer, qtbot, tiny_model, tta=True)
    widget.run()
    qtbot.waitUntil(lambda: widget.job.progress.value > 0, timeout=60_000)
    start = time.perf_counter()
    widget.job.cancel()
    qtbot.waitUntil(lambda: not widget.job.running, timeout=5_000)
    assert time.perf_counter() - start < 2.0
    assert "SAMPLE-001 prediction" not in viewer.layers
    assert widget.job.status.value == "cancelled"


def test_results_and_save(viewer_with_case, qtbot, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    viewer = viewer_with_case
    truth = viewer.layers["SAMPLE-001 GTV"]
    ct = viewer.layers["SAMPLE-001 CT"]
    geometry = Geometry.from_dict(ct.metadata["hecktor"]["geometry"])

    _, results = viewer.window.add_plugin_dock_widget("napari-hecktor", "Results")
    results.target.value = truth.name
    # the widget's background warm-up (parameter check, workers) ends on its own
    qtbot.waitUntil(lambda: not results.warming.is_alive(), timeout=120_000)
    beat = Heartbeat()
    results.run()
    qtbot.waitUntil(lambda: not results.job.running, timeout=300_000)
    worst_stall = beat.stop(until=results.job.shown_at)  # showing the result included
    assert results.stale.value == "up to date", results.job.status.value
    volume = float((np.asarray(truth.data) == 1).sum()) * geometry.voxel_volume_ml
    assert float(results.structures.data[0][0]) == pytest.approx(volume, abs=0.01)
    results.filter.value = "GTVp_PET_original_firstorder_Maximum"
    rows = results.radiomics.rows
    assert [row[0] for row in rows] == ["GTVp_PET_original_firstorder_Maximum"]
    assert results.radiomics.model.rowCount() == 1
    if results.prediction:
        assert "not for clinical use" in results.provenance.value
        assert not results.plot.pixmap().isNull()  # the Kaplan-Meier plot
        assert results.plot.pixmap().width() >= 300
    exported = results.export(tmp_path / "results.csv")
    assert "GTVp_SUVpeak" in exported.read_text().splitlines()[0]
    # the radiomics workers run niced: even on a busy 2-core machine the GUI gets the CPU
    # the job runs off the GUI thread (run on it, the stall is the whole job, seconds); the
    # 100 ms target itself is measured by benchmarks/bench_gui.py, not by a timed test
    assert worst_stall < STALL_BOUND_S, f"GUI thread stalled {worst_stall * 1000:.0f} ms"
    print(f"worst GUI stall during features: {worst_stall * 1000:.0f} ms")
    # an edit marks the values stale
    results.auto.value = False
    with truth.block_history():
        truth.data_setitem((np.array([0]), np.array([0]), np.array([0])), 2)
    assert results.stale.value.startswith("stale")

    _, save = viewer.window.add_plugin_dock_widget("napari-hecktor", "Save")
    save.target.value = truth.name
    save.folder.value = str(tmp_path / "out")
    saved = save._guarded(save.save_nifti)
    assert Geometry.of(read_image(saved)).matches(geometry)
    assert not save.seg.enabled  # the sample case is not DICOM
    save.autosave_now()
    qtbot.waitUntil(lambda: bool(list((tmp_path / "cache").rglob("SAMPLE-001_*.nii.gz"))),
                    timeout=30_000)


def test_a_wrong_model_folder_gives_one_message_and_changes_nothing(
    viewer_with_case, qtbot, tmp_path
):
    viewer = viewer_with_case
    names = [layer.name for layer in viewer.layers]
    (tmp_path / "not_a_model").mkdir()
    widget = _segment(viewer, qtbot, tmp_path / "not_a_model")
    widget.run()
    qtbot.waitUntil(lambda: not widget.job.running, timeout=60_000)
    assert widget.job.status.value.startswith("error:")
    assert "model_card.json is missing" in widget.job.status.value
    assert [layer.name for layer in viewer.layers] == names
    assert widget.job.run_button.enabled  # ready for another try


def test_segment_widget_shows_the_chosen_models_tuned_thresholds(make_napari_viewer):
    from napari_hecktor.models.card import read_card

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-hecktor", "Segment")
    for name in ("mmpl_demo", "normresse_demo"):
        widget.models.value = [name]
        expected = read_card(name).inference["thresholds"]
        assert (widget.threshold_p.value, widget.threshold_n.value) == pytest.approx(expected)
    assert read_card("mmpl_demo").inference["thresholds"] != [0.5, 0.5]  # the check can fail
