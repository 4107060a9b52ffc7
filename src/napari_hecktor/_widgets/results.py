"""Results dock widget: PET metrics, radiomics, deep features, HPV and recurrence risk, KM plot.

Everything is computed by the core (``features.table.case_features_iter`` and
``outcome.train.predict_case``) in a background worker; edits to the mask mark the
values stale and, with auto-update on, recompute them after a pause.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    Label,
    LineEdit,
    PushButton,
    Table,
)
from qtpy.QtCore import QTimer
from qtpy.QtGui import QPixmap
from qtpy.QtWidgets import QLabel

from ..data.clinical import clinical_row
from ..features.pet_metrics import METRICS
from ..outcome.demo import DEMO_MODEL_DIR
from ._common import (
    JobPanel,
    MaskWidget,
    RowsTable,
    case_from_viewer,
    fill_table,
    preload,
    start_warm_up,
)

if TYPE_CHECKING:
    import napari

STRUCTURES = ("GTVp", "GTVn", "GTVall")
AUTO_UPDATE_MS = 2000


#: Worker processes for radiomics in the viewer (kept between runs).
RADIOMICS_WORKERS = 2


def clinical_row_or_empty(table: str | Path | None, case_id: str) -> dict[str, Any]:
    """This patient's clinical row; {} when no table is chosen or the file is gone."""
    if not table or not Path(table).is_file():
        return {}
    return clinical_row(table, case_id)


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


class ResultsWidget(MaskWidget):
    """Tumour figures and outcome predictions for the open case and its mask."""

    def __init__(self, viewer: napari.viewer.Viewer):
        preload("radiomics.featureextractor", "napari_hecktor.features.table",
                "napari_hecktor.outcome.train")
        from ..features.radiomics import warm_up

        # parameters checked, image names found and worker processes started now, in the
        # background, not in the first job
        self.warming = start_warm_up(warm_up, workers=RADIOMICS_WORKERS)
        self.viewer = viewer
        self.target = ComboBox(label="Mask", choices=self._mask_choices)
        self.clinical = FileEdit(label="Clinical CSV", mode="r", filter="*.csv", value="")
        self.outcome_model = FileEdit(label="Outcome model", mode="d",
                                      value=str(DEMO_MODEL_DIR))
        self.auto = CheckBox(label="Recompute after edits", value=True)
        self.job = JobPanel("Compute")
        self.stale = Label(value="not computed")
        self.structures = Table(value={"data": [], "columns": list(METRICS)})
        self.filter = LineEdit(label="Filter radiomics", value="")
        self.radiomics = RowsTable(["feature", "value"])
        self.copy = PushButton(text="Copy")
        self.export_button = PushButton(text="Export...")
        self.deep = Label(value="")
        self.outcome = Label(value="")
        self.provenance = Label(value="")
        self.plot = QLabel()  # the Kaplan-Meier PNG, drawn by the job (off the GUI thread)
        super().__init__(widgets=[
            self.target, self.clinical, self.outcome_model, self.auto, self.job, self.stale,
            self.structures, self.filter,
            Container(widgets=[self.copy, self.export_button], layout="horizontal", labels=False),
            self.deep, self.outcome, self.provenance,
        ])
        layout = self.native.layout()
        layout.insertWidget(layout.indexOf(self.filter.native) + 1, self.radiomics.native)
        layout.addWidget(self.plot)
        self.features: dict[str, Any] = {}
        self.prediction: dict[str, Any] = {}
        self._timer = QTimer(self.native)  # dies with the widget: no late timeouts
        self._timer.setSingleShot(True)
        self._timer.setInterval(AUTO_UPDATE_MS)
        self._timer.timeout.connect(self.run)
        self.job.run_button.changed.connect(self.run)
        self.filter.changed.connect(self._fill_radiomics)
        self.copy.changed.connect(self.copy_radiomics)
        self.export_button.changed.connect(self._ask_export)
        self._guess_clinical_table()
        self._follow_target()

    # --- inputs ---------------------------------------------------------------------------
    def _mask_edited(self, *_: Any) -> None:
        self.mark_stale()

    def _guess_clinical_table(self) -> None:
        """A HECKTOR dataset's clinical CSV next to the images, when there is one."""
        try:
            case = case_from_viewer(self.viewer)
        except Exception:  # no case open yet
            return
        for source in case.sources.values():
            for parent in Path(source).parents[:3]:
                candidate = parent / "clinical.csv"
                if candidate.is_file():
                    self.clinical.value = str(candidate)
                    return

    def mark_stale(self, *_: Any) -> None:
        self.stale.value = "stale: the mask changed since these values were computed"
        if self.auto.value:
            self._timer.start()

    # --- computing --------------------------------------------------------------------------
    def run(self, *_: Any) -> Any:
        """Compute features and predictions for the current mask in the background."""
        from ..features.table import case_features_iter
        from ..outcome.train import km_training_png, predict_case

        if self.job.running:
            self._timer.start()  # try again after the running job
            return None
        case = case_from_viewer(self.viewer)
        layer = self.viewer.layers[self.target.value]
        labels = np.array(layer.data, dtype=np.uint8)
        table = self.clinical.value
        model_dir = str(self.outcome_model.value or "")

        def job():
            features = yield from case_features_iter(case, labels, workers=RADIOMICS_WORKERS)
            prediction, plot = {}, b""
            if model_dir and Path(model_dir).is_dir():
                row = clinical_row_or_empty(table, case.case_id)
                prediction = predict_case({**row, **features}, model_dir)
                plot = km_training_png(model_dir, prediction.get("risk_group"))
            return features, prediction, plot

        self.stale.value = "computing..."
        return self.job.start(job, self.display_result)

    def display_result(self, result: tuple[dict, dict, bytes]) -> None:
        """Show a job's result: cheap GUI work only (tables by model/view, plot as a PNG)."""
        self.features, self.prediction, plot = result
        pixmap = QPixmap()
        pixmap.loadFromData(plot, "PNG")
        self.plot.setPixmap(pixmap)
        self.stale.value = "up to date"
        rows = [[_fmt(self.features.get(f"{s}_{m}")) for m in METRICS] for s in STRUCTURES]
        fill_table(self.structures, rows, list(METRICS), list(STRUCTURES))
        self._fill_radiomics()
        deep = [v for k, v in self.features.items() if k.startswith("deep_")]
        self.deep.value = (f"{len(deep)} deep features (mean {np.mean(deep):.3f})" if deep
                           else "deep features: none (no segmentation model given)")
        self._show_prediction()

    def _show_prediction(self) -> None:
        p = self.prediction
        if not p:
            self.outcome.value = "no outcome model"
            return
        unit = p.get("time_unit", "days")
        rfs = next((v for k, v in p.items() if k.startswith("expected_rfs")), float("nan"))
        self.outcome.value = (
            f"HPV probability {_fmt(p.get('hpv_probability'))} "
            f"(threshold {_fmt(p.get('hpv_threshold'))}: {p.get('hpv_call', '-')})\n"
            f"Recurrence risk score {_fmt(p.get('risk_score'))}, group {p.get('risk_group')}\n"
            f"Expected RFS {_fmt(rfs, 0)} {unit}"
        )
        self.provenance.value = f"model: {p.get('model')} - {p.get('label')}"

    # --- radiomics table --------------------------------------------------------------------
    def radiomics_rows(self) -> list[tuple[str, float]]:
        text = self.filter.value.strip().lower()
        skip = tuple(f"{s}_{m}" for s in STRUCTURES for m in METRICS)
        return [(k, v) for k, v in self.features.items()
                if k != "PatientID" and not k.startswith("deep_") and k not in skip
                and text in k.lower()]

    def _fill_radiomics(self, *_: Any) -> None:
        self.radiomics.set_rows([(k, _fmt(v, 4)) for k, v in self.radiomics_rows()])

    def export(self, path: str | Path) -> Path:
        """Write every computed value and prediction (one row) as CSV, or JSON by suffix."""
        from ..io.export import write_results_csv, write_results_json

        case = case_from_viewer(self.viewer)
        data = {**self.features, **{f"pred_{k}": v for k, v in self.prediction.items()}}
        writer = write_results_json if str(path).lower().endswith(".json") else write_results_csv
        return writer(data, path, protected=list(case.sources.values()))

    def _ask_export(self, *_: Any) -> None:
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getSaveFileName(self.native, "Export results", "",
                                              "CSV (*.csv);;JSON (*.json)")
        if path:
            self.export(path)

    def copy_radiomics(self, *_: Any) -> None:
        from qtpy.QtWidgets import QApplication

        text = "\n".join(f"{k}\t{v}" for k, v in self.radiomics_rows())
        QApplication.clipboard().setText(text)
